/* Fuzz target for the pgoutput decoder, built by meson (tests/fuzz/meson.build) and run for
 * a bounded time by `make test` (meson test --suite fuzz) from the recorded messages in
 * tests/unit/data/pgoutput_v1*.hex. By hand, longer:
 *   FUZZ_SECONDS=300 meson test -C build-asan --suite fuzz pgoutput
 * or with clang as a libFuzzer target: meson setup ... -Dlibfuzzer=true.
 *
 * The input is decoded twice: once whole, as one message (so the recorded messages are
 * good seeds), then as a sequence of messages, each prefixed by a 2-byte big-endian length,
 * on one decoder, so that Relation messages change the map under later messages. Every
 * message is copied to a heap block of exactly its size, so ASan sees any overread. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decode/pgoutput.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode_one(struct eng_pgo_decoder *d, const uint8_t *p, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL)
        abort();
    if (len > 0)
        memcpy(copy, p, len);
    struct eng_pgo_msg m;
    struct eng_error err;
    int rc = eng_pgo_decode(d, copy, len, &m, &err);
    if (rc != 0 && rc != ENG_EPROTO)
        abort();
    if (rc == 0 && m.kind == ENG_PGO_RELATION &&
        eng_pgo_relation_find(d, m.u.relation->oid) != m.u.relation)
        abort();
    if (rc == 0 && m.kind == ENG_PGO_INSERT && m.u.insert.rel != NULL &&
        m.u.insert.newtup.ncols != m.u.insert.rel->natts)
        abort();
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();
    decode_one(d, data, size);

    size_t off = 0;
    while (size - off >= 2) {
        size_t len = (size_t)data[off] << 8 | data[off + 1];
        off += 2;
        if (len > size - off)
            len = size - off;
        decode_one(d, data + off, len);
        off += len;
    }
    eng_pgo_decoder_destroy(d);
    return 0;
}
