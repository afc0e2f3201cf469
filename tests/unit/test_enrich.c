/* Derived fields, the left join and the enriched JSON shape (DESIGN.md section 1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "enrich/enrich.h"

struct pct_case {
    int32_t duration_ms;
    int32_t length_seconds;
    bool duration_null, length_null;
    const char *seconds; /* expected JSON text */
    const char *pct;
};

/* Expected values computed by hand from the exact decimal quotient. */
static const struct pct_case pct_cases[] = {
    {7000, 300, false, false, "7.0", "0.02"},    /* the brief's example: 0.02333 */
    {1234, 100, false, false, "1.234", "0.01"},  /* 0.01234 */
    {5, 1, false, false, "0.005", "0.01"},       /* 0.005 exactly: half rounds up */
    {4, 1, false, false, "0.004", "0.0"},        /* 0.004 rounds down */
    {125, 10, false, false, "0.125", "0.01"},    /* 0.0125 */
    {1005, 100, false, false, "1.005", "0.01"},  /* 0.01005 */
    {1500, 100, false, false, "1.5", "0.02"},    /* 0.015 exactly: half up */
    {1499, 100, false, false, "1.499", "0.01"},  /* 0.01499 */
    {45000, 1000, false, false, "45.0", "0.05"}, /* 0.045 exactly (a double would give 0.04) */
    {300000, 300, false, false, "300.0", "1.0"}, /* whole */
    {600000, 300, false, false, "600.0", "2.0"}, /* more than the length */
    {0, 300, false, false, "0.0", "0.0"},
    {-5, 1, false, false, "-0.005", "-0.01"}, /* half away from zero, negative */
    {2147483647, 1, false, false, "2147483.647", "2147483.65"},
    {7000, 0, false, false, "7.0", NULL}, /* length 0: pct NULL */
    {7000, 0, false, true, NULL, NULL},   /* length NULL: both NULL (the brief's rule) */
    {7000, 300, false, true, NULL, NULL}, /* length NULL whatever the stale value */
    {0, 300, true, false, NULL, NULL},    /* duration NULL */
};

/* Issue 7 item 1 is the two "length NULL" rows below. */
static void test_derived_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(pct_cases) / sizeof(pct_cases[0]); i++) {
        const struct pct_case *c = &pct_cases[i];
        struct eng_event e = {0};
        e.duration_ms = c->duration_ms;
        e.length_seconds = c->length_seconds;
        if (c->duration_null)
            e.flags |= ENG_EV_DURATION_NULL;
        if (c->length_null)
            e.flags |= ENG_EV_LENGTH_NULL;
        eng_enrich_derive(&e);
        struct eng_buf b = {0};
        if (c->seconds == NULL) {
            assert_false(e.flags & ENG_EV_SECONDS_VALID);
        } else {
            assert_true(e.flags & ENG_EV_SECONDS_VALID);
            eng_put_decimal(&b, e.duration_ms, 3);
            assert_string_equal(b.data, c->seconds);
        }
        eng_buf_reset(&b);
        if (c->pct == NULL) {
            assert_false(e.flags & ENG_EV_PCT_VALID);
        } else {
            assert_true(e.flags & ENG_EV_PCT_VALID);
            eng_put_decimal(&b, e.pct_hundredths, 2);
            assert_string_equal(b.data, c->pct);
        }
        eng_buf_free(&b);
    }
}

static struct eng_text txt(const char *s)
{
    struct eng_text t = {s, s ? (uint32_t)strlen(s) : 0, s == NULL};
    return t;
}

static const char *enrich_one(struct eng_batch *b, struct eng_content_cache *cache,
                              const char *const vals[ENG_COL__COUNT])
{
    struct eng_text cols[ENG_COL__COUNT];
    for (int i = 0; i < ENG_COL__COUNT; i++)
        cols[i] = txt(vals[i]);
    struct eng_event *e = eng_batch_push(b);
    struct eng_error err;
    assert_int_equal(eng_event_from_text(b, e, cols, &err), 0);
    eng_enrich(b, e, cache);
    return eng_batch_json(b, e);
}

static void test_brief_example_json(void **state)
{
    (void)state;
    struct eng_content_cache *cache = eng_content_cache_create();
    struct eng_content video = {
        .content_id = 1, .content_type = "video", .type_len = 5, .length_seconds = 300};
    eng_content_cache_put(cache, &video);
    struct eng_batch *b = eng_batch_create(4);
    const char *vals[] = {"16", "1", "999", "play", "2026-01-08 14:21:52.123456", "7000", "web"};
    const char *json = enrich_one(b, cache, vals);
    const char *want = "{\"event_id\":16,\"content_id\":1,\"user_id\":999,\"event_type\":\"play\","
                       "\"event_ts\":\"2026-01-08 14:21:52\",\"duration_ms\":7000,\"device\":"
                       "\"web\",\"content_type\":\"video\",\"length_seconds\":300,"
                       "\"engagement_seconds\":7.0,\"engagement_pct\":0.02}";
    assert_int_equal(b->events[0].json.len, strlen(want));
    assert_memory_equal(json, want, strlen(want));
    assert_int_equal(b->jsonl.data[b->events[0].json.len], '\n');
    eng_batch_release(b);
    eng_content_cache_destroy(cache);
}

static void test_unknown_content_and_nulls(void **state)
{
    (void)state;
    struct eng_content_cache *cache = eng_content_cache_create();
    struct eng_batch *b = eng_batch_create(4);
    const char *vals[] = {"17", "42", NULL, NULL, "2026-01-08 00:00:00", NULL, "tv \"4k\"\n"};
    const char *json = enrich_one(b, cache, vals);
    const char *want = "{\"event_id\":17,\"content_id\":42,\"user_id\":null,\"event_type\":null,"
                       "\"event_ts\":\"2026-01-08 00:00:00\",\"duration_ms\":null,\"device\":"
                       "\"tv \\\"4k\\\"\\n\",\"content_type\":null,\"length_seconds\":null,"
                       "\"engagement_seconds\":null,\"engagement_pct\":null}";
    assert_memory_equal(json, want, strlen(want));
    assert_false(b->events[0].flags & ENG_EV_CONTENT_FOUND);
    /* Unknown content with a duration: no length, so both derived fields are NULL (the
     * brief: "If duration_ms or length_seconds is missing: both NULL"). */
    const char *vals2[] = {"18", "42", "5", "pause", "2026-01-08 00:00:01", "1500", "web"};
    json = enrich_one(b, cache, vals2);
    assert_non_null(strstr(json, "\"engagement_seconds\":null,\"engagement_pct\":null}"));
    eng_batch_release(b);
    eng_content_cache_destroy(cache);
}

static void test_bad_values_rejected(void **state)
{
    (void)state;
    static const char *const bad[][ENG_COL__COUNT] = {
        {"x1", "1", "1", "play", "2026-01-08 00:00:00", "1", "web"}, /* event_id */
        {"1", NULL, "1", "play", "2026-01-08 00:00:00", "1", "web"}, /* content_id null */
        {"1", "99999999999", "1", "play", "2026-01-08 00:00:00", "1", "web"},
        {"1", "1", "1", "play", "infinity", "1", "web"}, /* event_ts */
        {"1", "1", "1", "play", "2026-02-30 00:00:00", "1", "web"},
        {"1", "1", "1", "play", "2026-01-08 00:00:00", "1.5", "web"}, /* duration */
        {NULL, "1", "1", "play", "2026-01-08 00:00:00", "1", "web"},
    };
    struct eng_batch *b = eng_batch_create(16);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct eng_text cols[ENG_COL__COUNT];
        for (int k = 0; k < ENG_COL__COUNT; k++)
            cols[k] = txt(bad[i][k]);
        struct eng_event *e = eng_batch_push(b);
        struct eng_error err;
        eng_error_clear(&err);
        assert_int_equal(eng_event_from_text(b, e, cols, &err), ENG_EINVAL);
        assert_true(strlen(err.msg) > 0);
        eng_batch_pop(b);
    }
    assert_int_equal(b->n, 0);
    eng_batch_release(b);
}

/* Issue 7 item 9: one oversized row is refused whole, the batch is left as it was, the next
 * event is unaffected, and no JSON is ever cut. */
static void test_item9_oversized_row_refused_whole(void **state)
{
    (void)state;
    struct eng_content_cache *cache = eng_content_cache_create();
    struct eng_batch *b = eng_batch_create(16);
    const char *ok[] = {"1", "1", "1", "play", "2026-01-08 00:00:00", "1000", "web"};
    struct eng_text cols[ENG_COL__COUNT];
    for (int k = 0; k < ENG_COL__COUNT; k++)
        cols[k] = txt(ok[k]);
    struct eng_event *e;
    bool missed;
    struct eng_error err;
    assert_int_equal(eng_enrich_row(b, cols, cache, &e, &missed, &err), 0);
    uint32_t n = b->n;
    size_t jsonl = b->jsonl.len, strings = b->strings.len;

    /* More text than an event may carry. */
    size_t big = ENG_EVENT_MAX_TEXT + 1;
    char *text = malloc(big);
    memset(text, 'x', big);
    cols[ENG_COL_DEVICE] = (struct eng_text){text, (uint32_t)big, false};
    assert_int_equal(eng_enrich_row(b, cols, cache, &e, &missed, &err), ENG_EINVAL);
    assert_non_null(strstr(err.msg, "MiB one event may carry"));
    assert_int_equal(b->n, n);
    assert_int_equal(b->jsonl.len, jsonl);

    /* Under the text cap but over the JSON cap once escaped: control characters take six
     * bytes each (\u0001). */
    size_t ctl = ENG_EVENT_MAX_TEXT - 100;
    memset(text, 0x01, ctl);
    cols[ENG_COL_DEVICE] = (struct eng_text){text, (uint32_t)ctl, false};
    assert_int_equal(eng_enrich_row(b, cols, cache, &e, &missed, &err), ENG_EINVAL);
    assert_non_null(strstr(err.msg, "bytes of JSON"));
    assert_int_equal(b->n, n);
    assert_int_equal(b->jsonl.len, jsonl);
    assert_int_equal(b->strings.len, strings);
    assert_false(b->jsonl.overflow);

    /* 1 MB of quotes fits: 2 MB of JSON, delivered whole. */
    size_t mb = 1000000;
    memset(text, '"', mb);
    cols[ENG_COL_DEVICE] = (struct eng_text){text, (uint32_t)mb, false};
    assert_int_equal(eng_enrich_row(b, cols, cache, &e, &missed, &err), 0);
    assert_true(e->json.len > 2 * mb);
    assert_int_equal(eng_batch_json(b, e)[e->json.len - 1], '}');
    assert_int_equal(b->n, n + 1);

    /* A batch whose buffer overflowed is full, whatever its count. */
    b->jsonl.overflow = true;
    assert_true(eng_batch_full(b));
    b->jsonl.overflow = false;
    free(text);
    eng_batch_release(b);
    eng_content_cache_destroy(cache);
}

/* Issue 7 item 3: a column of a type engage would read wrongly is refused by name. */
static void test_item3_column_types(void **state)
{
    (void)state;
    struct eng_error err;
    assert_int_equal(eng_column_check("content", "length_seconds", 23, "integer", &err), 0);
    assert_int_equal(eng_column_check("content", "length_seconds", 21, "smallint", &err), 0);
    assert_int_equal(eng_column_check("content", "length_seconds", 1700, "numeric", &err),
                     ENG_EINVAL);
    assert_non_null(strstr(err.msg, "content.length_seconds has type numeric"));
    assert_int_equal(eng_column_check("content", "length_seconds", 25, "text", &err), ENG_EINVAL);
    assert_int_equal(eng_column_check("content", "content_id", 25, "text", &err), ENG_EINVAL);
    assert_int_equal(eng_column_check("content", "content_id", 20, "bigint", &err), ENG_EINVAL);
    assert_int_equal(eng_column_check("engagement_events", "event_ts", 1184, NULL, &err),
                     ENG_EINVAL);
    assert_int_equal(eng_column_check("engagement_events", "event_id", 20, "bigint", &err), 0);
    assert_int_equal(eng_column_check("engagement_events", "device", 1043, NULL, &err), 0);
    assert_int_equal(eng_column_check("content", "title", 25, "text", &err), 0); /* not read */
}

static void test_content_cache_roundtrip(void **state)
{
    (void)state;
    struct eng_content_cache *c = eng_content_cache_create();
    for (int32_t i = -5; i < 500; i++) {
        char type[32];
        int n = snprintf(type, sizeof(type), "t%d\n\"", i);
        struct eng_content r = {.content_id = i,
                                .content_type = type,
                                .type_len = (uint32_t)n,
                                .length_seconds = i * 3,
                                .length_null = i % 7 == 0,
                                .type_null = i % 11 == 0};
        eng_content_cache_put(c, &r);
    }
    eng_content_cache_remove(c, 3);
    FILE *f = tmpfile();
    assert_int_equal(eng_content_cache_save(c, f, NULL), 0);
    rewind(f);
    struct eng_content_cache *d = eng_content_cache_create();
    assert_int_equal(eng_content_cache_load(d, f, NULL), 0);
    assert_true(eng_content_cache_equal(c, d));
    assert_null(eng_content_cache_get(d, 3));
    /* A torn file (no "end") is rejected. */
    rewind(f);
    assert_int_equal(ftruncate(fileno(f), 200), 0);
    struct eng_error err;
    assert_int_equal(eng_content_cache_load(d, f, &err), ENG_EPROTO);
    assert_int_equal(eng_content_cache_count(d), 0);
    fclose(f);
    eng_content_cache_destroy(c);
    eng_content_cache_destroy(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_derived_table),
        cmocka_unit_test(test_brief_example_json),
        cmocka_unit_test(test_unknown_content_and_nulls),
        cmocka_unit_test(test_bad_values_rejected),
        cmocka_unit_test(test_content_cache_roundtrip),
        cmocka_unit_test(test_item9_oversized_row_refused_whole),
        cmocka_unit_test(test_item3_column_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
