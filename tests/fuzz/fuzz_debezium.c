/* Fuzz target for the Debezium JSON decoder, built by meson (tests/fuzz/meson.build) and run
 * for a bounded time by `make test` (meson test --suite fuzz) from the seeds in
 * tests/fuzz/corpus/debezium/ (messages written as Debezium 3.6.1 writes them, schemas on
 * and off, and recorded ones). By hand, longer:
 *   FUZZ_SECONDS=300 meson test -C build-asan --suite fuzz debezium
 * or with clang as a libFuzzer target: meson setup ... -Dlibfuzzer=true.
 *
 * The input is one Kafka record value, decoded from a heap block of exactly its size (so
 * ASan sees any overread) by a fresh decoder and again by one that has seen it before (its
 * schema part cached, only the payload parsed): both must give the same result. A decoded
 * row must be what eng_event_from_text takes: NUL-terminated texts, integers that parse,
 * event_ts that parses. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/pgtext.h"
#include "decode/debezium.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool text_is(const struct eng_text *a, const struct eng_text *b)
{
    if (a->null || b->null)
        return a->null == b->null;
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static void check_row(const struct eng_dbz_msg *m)
{
    const struct eng_text *c = m->cols;
    for (int i = 0; i < ENG_COL__COUNT; i++)
        check(c[i].null || (c[i].data != NULL && c[i].data[c[i].len] == '\0'));
    int64_t v64;
    int32_t v32;
    if (!c[ENG_COL_EVENT_ID].null)
        check(eng_parse_i64(c[ENG_COL_EVENT_ID].data, c[ENG_COL_EVENT_ID].len, &v64));
    if (!c[ENG_COL_EVENT_TS].null)
        check(eng_parse_timestamp(c[ENG_COL_EVENT_TS].data, c[ENG_COL_EVENT_TS].len, &v64));
    static const enum eng_event_col ints[] = {ENG_COL_CONTENT_ID, ENG_COL_USER_ID,
                                              ENG_COL_DURATION_MS};
    for (size_t i = 0; i < 3; i++)
        if (!c[ints[i]].null)
            check(eng_parse_i32(c[ints[i]].data, c[ints[i]].len, &v32));
    if (m->kind == ENG_DBZ_EVENT && m->op != 'd' && m->op != 't')
        check(!c[ENG_COL_EVENT_ID].null && !c[ENG_COL_EVENT_TS].null &&
              !c[ENG_COL_CONTENT_ID].null);
    check(m->content.content_type != NULL &&
          strlen(m->content.content_type) == m->content.type_len);
    check(m->kind != ENG_DBZ_IGNORED || m->reason != NULL);
}

static void check_same(const struct eng_dbz_msg *a, const struct eng_dbz_msg *b)
{
    check(a->kind == b->kind && a->op == b->op && a->lsn == b->lsn && a->tx_id == b->tx_id &&
          a->commit_time_us == b->commit_time_us && a->snapshot == b->snapshot);
    for (int i = 0; i < ENG_COL__COUNT; i++)
        check(text_is(&a->cols[i], &b->cols[i]));
    check(a->content.content_id == b->content.content_id &&
          a->content.type_null == b->content.type_null &&
          a->content.length_null == b->content.length_null &&
          a->content.length_seconds == b->content.length_seconds &&
          strcmp(a->content.content_type, b->content.content_type) == 0);
    check((a->reason == NULL) == (b->reason == NULL) &&
          (a->reason == NULL || strcmp(a->reason, b->reason) == 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL)
        abort();
    if (size > 0)
        memcpy(copy, data, size);
    struct eng_dbz_decoder *cold = eng_dbz_decoder_create();
    struct eng_dbz_decoder *warm = eng_dbz_decoder_create();
    struct eng_dbz_msg m1, m2;
    struct eng_error e1, e2;
    int rc1 = eng_dbz_decode(cold, copy, size, &m1, &e1);
    check(rc1 == 0 || rc1 == ENG_EPROTO || rc1 == ENG_EINVAL);
    int rc0 = eng_dbz_decode(warm, copy, size, &m2, &e2);
    int rc2 = eng_dbz_decode(warm, copy, size, &m2, &e2);
    check(rc0 == rc1 && rc2 == rc1);
    if (rc1 == 0) {
        check_row(&m1);
        check_same(&m1, &m2);
    } else {
        check(strcmp(e1.msg, e2.msg) == 0 && m1.kind == ENG_DBZ_IGNORED);
    }
    eng_dbz_decoder_destroy(cold);
    eng_dbz_decoder_destroy(warm);
    free(copy);
    return 0;
}
