/* The Debezium encoder against records Debezium 3.6.1 wrote (tests/fixtures/debezium/, its
 * README.md: the workload and the connector's settings). Every recorded record of both topics,
 * with and without the schema part, must come out byte for byte from the workload's rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/pgtext.h"
#include "decode/debezium_out.h"

#define FIXTURES ENG_TEST_DATA "/../../fixtures/debezium/"
#define MAXCOLS  8
#define N        NULL /* SQL NULL in the rows below */

/* ---- the contract: the workload's rows, as pgoutput sends them (text, DateStyle ISO) ---- */

struct change {
    char op;                     /* 'c','r','u','d'; 0 for a tombstone */
    const char *before[MAXCOLS]; /* op 'd' only: the replica identity (the primary key) */
    const char *after[MAXCOLS];
};

/* engagement_events: event_id, content_id, user_id, event_type, event_ts, duration_ms, device;
 * one entry per recorded offset. */
static const struct change event_changes[] = {
    {'r', {0}, {"1", "2001", "601", "view", "2026-01-01 12:00:00", "30000", "android"}},
    {'r', {0}, {"2", "2002", "602", "like", "2026-01-01 12:00:05.5", N, "ios"}},
    {'c', {0}, {"3", "2001", "601", "view", "2026-02-01 10:00:00", "30000", "android"}},
    {'c', {0}, {"4", "2002", "602", "click", "2026-02-01 10:00:01.123456", "1500", "ios"}},
    {'c', {0}, {"5", "2001", "603", "view", "2026-02-01 10:00:02", "1000", "web"}},
    {'c', {0}, {"6", "2003", "604", "play", "2026-02-01 10:00:03", "250000", "tv"}},
    {'c', {0}, {"7", "2002", "605", "view", "2026-02-01 10:00:04", "20", "web"}},
    {'c', {0}, {"8", "2003", N, N, "2026-02-01 10:00:05", N, N}},
    {'c',
     {0},
     {"9", "2001", "606", "vue \xc3\xa9", "2026-02-01 10:00:06", "7",
      "tablet \"\xc3\xa9\" \xe6\x97\xa5\xe6\x9c\xac \\ end"}},
    {'c', {0}, {"11", "2002", "608", "view", "1969-12-31 23:59:59.999999", "5", "old"}},
    {'c', {0}, {"12", "2002", "609", "view", "1900-01-01 00:00:00", "6", "older"}},
    {'c', {0}, {"13", N, "610", "view", "2026-02-01 10:00:08", "8", "web"}},
    {'u', {0}, {"3", "2001", "601", "view", "2026-02-01 10:00:00", "45000", "android-tv"}},
    {'u', {0}, {"5", "2003", "603", "view", "2026-02-01 10:00:02", "1000", "web"}},
    {'d', {"7", N, N, N, N, N, N}, {0}},
    {0, {0}, {0}},
    {'c', {0}, {"14", "2001", "611", "view", "2026-02-01 10:00:09", "9", "web"}},
    {'c', {0}, {"15", "9999", "0", "marker", "2026-02-01 10:00:10", "0", "marker-end"}},
};

/* content: content_id, content_type, length_seconds, title. */
static const struct change content_changes[] = {
    {'r', {0}, {"2001", "video", "120", "Intro to engage"}},
    {'r',
     {0},
     {"2002", "article", N,
      "\xc3\x9c"
      "ber na\xc3\xafve caf\xc3\xa9"}},
    {'r', {0}, {"2003", "podcast", "3600", N}},
    {'c', {0}, {"2004", "video", "60", "Short"}},
    {'u', {0}, {"2004", "video", "61", "Short, renamed"}},
    {'d', {"2004", N, N, N}, {0}},
    {0, {0}, {0}},
    {'u', {0}, {"2001", "video", "120", "Intro to engage (2nd ed.)"}},
    {'c', {0}, {"9999", "marker", "0", "marker"}},
};

/* The catalog facts (scripts/schema.sql), as the capture source reads them. */
struct catalog_col {
    const char *name;
    uint32_t oid;
    bool not_null, pkey;
    const char *default_expr; /* pg_get_expr(adbin, adrelid) */
};

static const struct catalog_col event_cols[] = {
    {"event_id", 20, true, true, "nextval('engagement_events_event_id_seq'::regclass)"},
    {"content_id", 23, false, false, NULL},
    {"user_id", 23, false, false, NULL},
    {"event_type", 25, false, false, NULL},
    {"event_ts", 1114, true, false, "now()"},
    {"duration_ms", 23, false, false, NULL},
    {"device", 25, false, false, NULL},
};

static const struct catalog_col content_cols[] = {
    {"content_id", 23, true, true, NULL},
    {"content_type", 25, false, false, NULL},
    {"length_seconds", 23, false, false, NULL},
    {"title", 25, false, false, NULL},
};

/* ---- the harness ------------------------------------------------------------------------- */

struct table_case {
    const char *name; /* "engagement_events" */
    const struct catalog_col *cols;
    uint16_t ncols;
    int key_col; /* message.key.columns, or -1 */
    const struct change *changes;
    size_t nchanges;
};

static const struct table_case events_case = {"engagement_events",
                                              event_cols,
                                              7,
                                              1,
                                              event_changes,
                                              sizeof(event_changes) / sizeof(event_changes[0])};
static const struct table_case content_case = {
    "content", content_cols,    4,
    -1,        content_changes, sizeof(content_changes) / sizeof(content_changes[0])};

static struct eng_dbz_schema *make_schema(const struct table_case *tc, bool schemas,
                                          struct eng_buf defaults[MAXCOLS])
{
    struct eng_dbz_col cols[MAXCOLS];
    for (uint16_t i = 0; i < tc->ncols; i++) {
        const struct catalog_col *c = &tc->cols[i];
        bool has = eng_dbz_default_json(c->oid, -1, c->not_null, c->default_expr, &defaults[i]);
        cols[i] = (struct eng_dbz_col){c->name,     c->oid,  -1,
                                       c->not_null, c->pkey, has ? defaults[i].data : NULL};
    }
    struct eng_dbz_table t = {"dbserver1", "engage", "public",    tc->name,
                              tc->ncols,   cols,     tc->key_col, schemas};
    struct eng_error err = {0};
    struct eng_dbz_schema *s = eng_dbz_schema_create(&t, &err);
    assert_non_null(s);
    return s;
}

static void fill_tuple(struct eng_pgo_tuple *t, struct eng_pgo_column *cols, uint16_t n,
                       const char *const *text)
{
    for (uint16_t i = 0; i < n; i++) {
        cols[i].kind = text[i] ? ENG_PGO_TEXT : ENG_PGO_NULL;
        cols[i].data = text[i];
        cols[i].len = text[i] ? (uint32_t)strlen(text[i]) : 0;
    }
    t->ncols = n;
    t->cols = cols;
}

/* The run-specific fields, taken from the recorded value. */
static void source_from_record(json_t *v, struct eng_dbz_source *src)
{
    json_t *payload = json_object_get(v, "payload") ? json_object_get(v, "payload") : v;
    json_t *s = json_object_get(payload, "source");
    assert_non_null(s);
    src->snapshot = json_string_value(json_object_get(s, "snapshot"));
    src->ts_us = json_integer_value(json_object_get(s, "ts_us"));
    src->has_tx_id = json_is_integer(json_object_get(s, "txId"));
    src->tx_id = json_integer_value(json_object_get(s, "txId"));
    src->has_lsn = json_is_integer(json_object_get(s, "lsn"));
    src->lsn = (uint64_t)json_integer_value(json_object_get(s, "lsn"));
    json_t *seq = json_loads(json_string_value(json_object_get(s, "sequence")), 0, NULL);
    assert_non_null(seq);
    json_t *first = json_array_get(seq, 0);
    src->has_last_commit = json_is_string(first);
    src->last_commit_lsn =
        first ? strtoull(json_string_value(first) ? json_string_value(first) : "0", NULL, 10) : 0;
    json_decref(seq);
    src->now_ns = json_integer_value(json_object_get(payload, "ts_ns"));
}

static void check_headers(json_t *rec)
{
    json_t *hs = json_object_get(rec, "headers");
    json_t *run = json_array_get(json_array_get(hs, 3), 1);
    struct eng_dbz_header h[ENG_DBZ_NHEADERS];
    eng_dbz_headers("dbserver1", json_string_value(run), h);
    assert_int_equal(json_array_size(hs), ENG_DBZ_NHEADERS);
    for (size_t i = 0; i < ENG_DBZ_NHEADERS; i++) {
        json_t *pair = json_array_get(hs, i);
        assert_string_equal(json_string_value(json_array_get(pair, 0)), h[i].name);
        assert_string_equal(json_string_value(json_array_get(pair, 1)), h[i].value);
    }
}

/* Encodes one recorded record's change and compares; a tombstone's key is the key of the
 * delete before it (last_key). Returns the number of records compared. */
static int check_record(const struct table_case *tc, const struct eng_dbz_schema *s, json_t *rec,
                        struct eng_buf *last_key)
{
    json_int_t offset = json_integer_value(json_object_get(rec, "offset"));
    assert_in_range(offset, 0, tc->nchanges - 1);
    const struct change *ch = &tc->changes[offset];
    const char *want_key = json_string_value(json_object_get(rec, "key"));
    json_t *jv = json_object_get(rec, "value");
    check_headers(rec);
    if (ch->op == 0) {
        assert_true(json_is_null(jv));
        assert_string_equal(last_key->data, want_key);
        return 1;
    }
    json_t *v = json_loads(json_string_value(jv), 0, NULL);
    assert_non_null(v);
    struct eng_dbz_source src;
    source_from_record(v, &src);
    struct eng_pgo_column bc[MAXCOLS], ac[MAXCOLS];
    struct eng_pgo_tuple bt, at;
    fill_tuple(&bt, bc, tc->ncols, ch->before);
    fill_tuple(&at, ac, tc->ncols, ch->after);
    struct eng_buf value = {0};
    struct eng_error err = {0};
    eng_buf_reset(last_key);
    int rc = eng_dbz_encode(s, &src, ch->op, ch->op == 'd' ? &bt : NULL, ch->op == 'd' ? NULL : &at,
                            last_key, &value, &err);
    assert_int_equal(rc, 0);
    if (strcmp(last_key->data, want_key) != 0 || strcmp(value.data, json_string_value(jv)) != 0)
        fprintf(stderr, "# %s offset %lld\n# want %s\n#      %s\n# got  %s\n#      %s\n", tc->name,
                (long long)offset, want_key, json_string_value(jv), last_key->data, value.data);
    assert_string_equal(last_key->data, want_key);
    assert_string_equal(value.data, json_string_value(jv));
    eng_buf_free(&value);
    json_decref(v);
    return 1;
}

static int check_file(const char *file, const struct table_case *tc, bool schemas)
{
    char path[512];
    snprintf(path, sizeof(path), "%s%s", FIXTURES, file);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    struct eng_buf defaults[MAXCOLS] = {0};
    struct eng_dbz_schema *s = make_schema(tc, schemas, defaults);
    struct eng_buf last_key = {0};
    char line[65536];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        json_error_t jerr;
        json_t *rec = json_loads(line, 0, &jerr);
        assert_non_null(rec);
        n += check_record(tc, s, rec, &last_key);
        json_decref(rec);
    }
    fclose(f);
    eng_buf_free(&last_key);
    eng_dbz_schema_destroy(s);
    for (int i = 0; i < MAXCOLS; i++)
        eng_buf_free(&defaults[i]);
    assert_int_equal((size_t)n, tc->nchanges);
    return n;
}

static void test_events_schema(void **state)
{
    (void)state;
    check_file("events_schema.jsonl", &events_case, true);
}

static void test_content_schema(void **state)
{
    (void)state;
    check_file("content_schema.jsonl", &content_case, true);
}

static void test_events_noschema(void **state)
{
    (void)state;
    check_file("events_noschema.jsonl", &events_case, false);
}

static void test_content_noschema(void **state)
{
    (void)state;
    check_file("content_noschema.jsonl", &content_case, false);
}

/* ---- types the workload does not have, against what Java wrote ------------------------------
 * Expected texts from Kafka's JsonConverter (Jackson 2.21, Java 17) and Debezium's
 * ZonedTimestamp; the schema layout from JsonConverter.asJsonSchema of Debezium's builders. */

static const struct eng_dbz_col type_cols[] = {
    {"b", 16, -1, false, true, NULL},     {"s", 21, -1, false, false, NULL},
    {"i", 23, -1, false, false, NULL},    {"l", 20, -1, false, false, NULL},
    {"f4", 700, -1, false, false, NULL},  {"f8", 701, -1, true, false, "0.0"},
    {"d", 1082, -1, false, false, NULL},  {"t3", 1114, 3, false, false, NULL},
    {"tz", 1184, -1, false, false, NULL}, {"u", 2950, -1, false, false, NULL},
    {"j", 3802, -1, false, false, NULL},  {"x", 25, -1, false, false, NULL},
};
#define NTYPES (sizeof(type_cols) / sizeof(type_cols[0]))

static struct eng_dbz_schema *type_schema(bool schemas)
{
    struct eng_dbz_table t = {"p", "db", "public", "t", NTYPES, type_cols, -1, schemas};
    struct eng_error err = {0};
    struct eng_dbz_schema *s = eng_dbz_schema_create(&t, &err);
    assert_non_null(s);
    return s;
}

/* Encodes one insert of text (NULL: SQL NULL) into value; returns eng_dbz_encode's rc. */
static int encode_types(const struct eng_dbz_schema *s, const char *const text[NTYPES],
                        struct eng_buf *value, struct eng_error *err)
{
    struct eng_pgo_column cols[NTYPES];
    struct eng_pgo_tuple row;
    fill_tuple(&row, cols, NTYPES, text);
    struct eng_dbz_source src = {"false", 0, false, 0, false, 0, false, 0, 0};
    struct eng_buf key = {0};
    int rc = eng_dbz_encode(s, &src, 'c', NULL, &row, &key, value, err);
    eng_buf_free(&key);
    return rc;
}

static void assert_after(const struct eng_buf *value, const char *want)
{
    const char *p = strstr(value->data, "\"after\":");
    assert_non_null(p);
    p += strlen("\"after\":");
    const char *end = strstr(p, ",\"source\":");
    assert_non_null(end);
    if (strlen(want) != (size_t)(end - p) || memcmp(p, want, strlen(want)) != 0)
        fprintf(stderr, "# want %s\n# got  %.*s\n", want, (int)(end - p), p);
    assert_int_equal(strlen(want), (size_t)(end - p));
    assert_memory_equal(p, want, strlen(want));
}

static void test_types(void **state)
{
    (void)state;
    struct eng_dbz_schema *s = type_schema(false);
    struct eng_buf v = {0};
    struct eng_error err = {0};
    static const char *const row1[NTYPES] = {
        "t",
        "-32768",
        "2147483647",
        "-9223372036854775808",
        "1.1",
        "1e+20",
        "2026-01-08",
        "2026-01-08 14:21:52.123",
        "2026-01-08 14:21:52.5+02",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{\"a\": 1}",
        "a\x01\x1f\b\f\n\r\t\"\\/\x7f\xc2\x80\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80"};
    assert_int_equal(encode_types(s, row1, &v, &err), 0);
    assert_after(&v, "{\"b\":true,\"s\":-32768,\"i\":2147483647,\"l\":-9223372036854775808,"
                     "\"f4\":1.1,\"f8\":1.0E20,\"d\":20461,\"t3\":1767882112123,"
                     "\"tz\":\"2026-01-08T12:21:52.5Z\","
                     "\"u\":\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\",\"j\":\"{\\\"a\\\": 1}\","
                     "\"x\":\"a\\u0001\\u001F\\b\\f\\n\\r\\t\\\"\\\\/\x7f\xc2\x80\xc3\xa9"
                     "\xe2\x80\xa8\\uD83D\\uDE00\"}");
    static const char *const row2[NTYPES] = {"f",
                                             "0",
                                             "-1",
                                             "0",
                                             "NaN",
                                             N,
                                             "1969-12-31",
                                             "1969-12-31 23:59:59.999",
                                             "2026-01-08 00:30:00-05:30",
                                             N,
                                             N,
                                             ""};
    eng_buf_reset(&v);
    assert_int_equal(encode_types(s, row2, &v, &err), 0);
    assert_after(&v, "{\"b\":false,\"s\":0,\"i\":-1,\"l\":0,\"f4\":\"NaN\",\"f8\":0.0,\"d\":-1,"
                     "\"t3\":-1,\"tz\":\"2026-01-08T06:00:00Z\",\"u\":null,\"j\":null,\"x\":\"\"}");
    static const char *const row3[NTYPES] = {
        N, N, N, N, "3.4028235e+38", "-Infinity", N, N, "2026-01-08 14:21:52.000123+00", N, N, N};
    eng_buf_reset(&v);
    assert_int_equal(encode_types(s, row3, &v, &err), 0);
    assert_after(&v, "{\"b\":null,\"s\":null,\"i\":null,\"l\":null,\"f4\":3.4028235E38,"
                     "\"f8\":\"-Infinity\",\"d\":null,\"t3\":null,"
                     "\"tz\":\"2026-01-08T14:21:52.000123Z\",\"u\":null,\"j\":null,\"x\":null}");
    eng_buf_free(&v);
    eng_dbz_schema_destroy(s);
}

/* Each field's schema as JsonConverter.asJsonSchema writes Debezium's builders. */
static void test_type_schema(void **state)
{
    (void)state;
    struct eng_dbz_schema *s = type_schema(true);
    struct eng_buf v = {0};
    struct eng_error err = {0};
    static const char *const nulls[NTYPES] = {0};
    assert_int_equal(encode_types(s, nulls, &v, &err), 0);
    static const char want[] =
        "{\"type\":\"struct\",\"fields\":[{\"type\":\"boolean\",\"optional\":true,\"field\":\"b\"},"
        "{\"type\":\"int16\",\"optional\":true,\"field\":\"s\"},"
        "{\"type\":\"int32\",\"optional\":true,\"field\":\"i\"},"
        "{\"type\":\"int64\",\"optional\":true,\"field\":\"l\"},"
        "{\"type\":\"float\",\"optional\":true,\"field\":\"f4\"},"
        "{\"type\":\"double\",\"optional\":false,\"default\":0.0,\"field\":\"f8\"},"
        "{\"type\":\"int32\",\"optional\":true,\"name\":\"io.debezium.time.Date\",\"version\":1,"
        "\"field\":\"d\"},"
        "{\"type\":\"int64\",\"optional\":true,\"name\":\"io.debezium.time.Timestamp\","
        "\"version\":1,\"field\":\"t3\"},"
        "{\"type\":\"string\",\"optional\":true,\"name\":\"io.debezium.time.ZonedTimestamp\","
        "\"version\":1,\"field\":\"tz\"},"
        "{\"type\":\"string\",\"optional\":true,\"name\":\"io.debezium.data.Uuid\",\"version\":1,"
        "\"field\":\"u\"},"
        "{\"type\":\"string\",\"optional\":true,\"name\":\"io.debezium.data.Json\",\"version\":1,"
        "\"field\":\"j\"},"
        "{\"type\":\"string\",\"optional\":true,\"field\":\"x\"}],"
        "\"optional\":true,\"name\":\"p.public.t.Value\",\"field\":\"before\"}";
    assert_non_null(strstr(v.data, want));
    eng_buf_free(&v);
    eng_dbz_schema_destroy(s);
}

static void expect_einval(const struct eng_dbz_schema *s, int col, const char *text)
{
    const char *row[NTYPES] = {0};
    row[col] = text;
    struct eng_buf v = {0};
    struct eng_error err = {0};
    assert_int_equal(encode_types(s, row, &v, &err), ENG_EINVAL);
    assert_non_null(strstr(err.msg, type_cols[col].name));
    eng_buf_free(&v);
}

static void test_refused_values(void **state)
{
    (void)state;
    struct eng_dbz_schema *s = type_schema(false);
    expect_einval(s, 0, "true"); /* pgoutput sends t/f */
    expect_einval(s, 1, "32768");
    expect_einval(s, 2, "1.5");
    expect_einval(s, 3, "9223372036854775808");
    expect_einval(s, 4, "1.5x");
    expect_einval(s, 5, "");
    expect_einval(s, 6, "2026-02-30");
    expect_einval(s, 7, "infinity");
    expect_einval(s, 8, "2026-01-08 14:21:52"); /* no offset */
    expect_einval(s, 11, "bad \xff utf-8");
    eng_dbz_schema_destroy(s);
}

static void test_unchanged_toast_and_binary(void **state)
{
    (void)state;
    struct eng_dbz_schema *s = type_schema(false);
    struct eng_pgo_column cols[NTYPES] = {0};
    for (size_t i = 0; i < NTYPES; i++)
        cols[i].kind = ENG_PGO_NULL;
    cols[11].kind = ENG_PGO_UNCHANGED;
    struct eng_pgo_tuple row = {NTYPES, cols};
    struct eng_dbz_source src = {"false", 0, false, 0, false, 0, false, 0, 0};
    struct eng_buf k = {0}, v = {0};
    struct eng_error err = {0};
    assert_int_equal(eng_dbz_encode(s, &src, 'u', NULL, &row, &k, &v, &err), 0);
    assert_non_null(strstr(v.data, "\"x\":\"__debezium_unavailable_value\"}"));
    cols[2].kind = ENG_PGO_UNCHANGED; /* an int column cannot be unchanged TOAST */
    assert_int_equal(eng_dbz_encode(s, &src, 'u', NULL, &row, &k, &v, &err), ENG_EINVAL);
    cols[2].kind = ENG_PGO_BINARY;
    assert_int_equal(eng_dbz_encode(s, &src, 'u', NULL, &row, &k, &v, &err), ENG_EINVAL);
    assert_int_equal(eng_dbz_encode(s, &src, 'x', NULL, &row, &k, &v, &err), ENG_EINVAL);
    assert_int_equal(eng_dbz_encode(s, &src, 'c', &row, &row, &k, &v, &err), ENG_EINVAL);
    assert_int_equal(eng_dbz_encode(s, &src, 'd', NULL, &row, &k, &v, &err), ENG_EINVAL);
    row.ncols = 3;
    assert_int_equal(eng_dbz_encode(s, &src, 'c', NULL, &row, &k, &v, &err), ENG_EINVAL);
    eng_buf_free(&k);
    eng_buf_free(&v);
    eng_dbz_schema_destroy(s);
}

static void expect_default(uint32_t oid, int32_t typmod, bool not_null, const char *expr,
                           const char *want)
{
    struct eng_buf out = {0};
    bool has = eng_dbz_default_json(oid, typmod, not_null, expr, &out);
    if (want == NULL) {
        assert_false(has);
        assert_int_equal(out.len, 0);
    } else {
        assert_true(has);
        assert_string_equal(out.data, want);
    }
    eng_buf_free(&out);
}

static void test_defaults(void **state)
{
    (void)state;
    expect_default(25, -1, false, "'view'::text", "\"view\"");
    expect_default(25, -1, false, "'it''s'::text", "\"it's\"");
    expect_default(23, -1, false, "'-1'::integer", "-1");
    expect_default(23, -1, true, "0", "0");
    expect_default(23, -1, false, "(-5)", "-5");
    expect_default(16, -1, false, "true", "true");
    expect_default(701, -1, false, "'1.5'::double precision", "1.5");
    expect_default(1114, -1, false, "'2026-01-01 00:00:00'::timestamp without time zone",
                   "1767225600000000");
    expect_default(20, -1, false, "nextval('s'::regclass)", NULL);
    expect_default(20, -1, true, "nextval('s'::regclass)", "0");
    expect_default(1184, -1, true, "now()", "\"1970-01-01T00:00:00Z\"");
    expect_default(25, -1, true, "gen_random_uuid()::text", "\"\"");
    expect_default(16, -1, true, "random() > 0.5", "false");
    expect_default(23, -1, true, NULL, NULL);
}

static void test_schema_refused(void **state)
{
    (void)state;
    struct eng_dbz_col cols[2] = {{"a", 23, -1, false, false, NULL},
                                  {"b", 23, -1, false, false, NULL}};
    struct eng_dbz_table t = {"p", "db", "public", "t", 2, cols, -1, true};
    struct eng_error err = {0};
    assert_null(eng_dbz_schema_create(&t, &err)); /* no primary key and no key column */
    assert_int_equal(err.code, ENG_EINVAL);
    t.key_col = 2;
    assert_null(eng_dbz_schema_create(&t, &err));
    t.key_col = 1;
    struct eng_dbz_schema *s = eng_dbz_schema_create(&t, &err);
    assert_non_null(s);
    eng_dbz_schema_destroy(s);
    eng_dbz_schema_destroy(NULL);
}

/* numeric, bytea and time: expected texts from JsonConverter with Debezium's Decimal,
 * VariableScaleDecimal (checked on 399 random numerics up to 60 digits), bytes and MicroTime. */
static const struct eng_dbz_col more_cols[] = {
    {"n", 1700, ((10 << 16) | 2) + 4, false, true, NULL},
    {"v", 1700, -1, false, false, NULL},
    {"by", 17, -1, false, false, NULL},
    {"tm", 1083, -1, false, false, NULL},
    {"t3", 1083, 3, true, false, NULL},
};
#define NMORE (sizeof(more_cols) / sizeof(more_cols[0]))

static void expect_more(const struct eng_dbz_schema *s, const char *const text[NMORE],
                        const char *want_after)
{
    struct eng_pgo_column cols[NMORE];
    struct eng_pgo_tuple row;
    fill_tuple(&row, cols, NMORE, text);
    struct eng_dbz_source src = {"false", 0, false, 0, false, 0, false, 0, 0};
    struct eng_buf k = {0}, v = {0};
    struct eng_error err = {0};
    int rc = eng_dbz_encode(s, &src, 'c', NULL, &row, &k, &v, &err);
    if (want_after == NULL) {
        assert_int_equal(rc, ENG_EINVAL);
    } else {
        assert_int_equal(rc, 0);
        assert_after(&v, want_after);
    }
    eng_buf_free(&k);
    eng_buf_free(&v);
}

static void test_numeric_bytea_time(void **state)
{
    (void)state;
    struct eng_dbz_table t = {"p", "db", "public", "t", NMORE, more_cols, -1, true};
    struct eng_error err = {0};
    struct eng_dbz_schema *s = eng_dbz_schema_create(&t, &err);
    assert_non_null(s);
    expect_more(s, (const char *[]){"1.50", "1.50", "\\x68656c6c6f", "14:21:52.5", "00:00:01"},
                "{\"n\":\"AJY=\",\"v\":{\"scale\":2,\"value\":\"AJY=\"},\"by\":\"aGVsbG8=\","
                "\"tm\":51712500000,\"t3\":1000}");
    expect_more(s, (const char *[]){"-128.00", "-94654.211370", "\\x", "00:00:00", N},
                "{\"n\":\"zgA=\",\"v\":{\"scale\":6,\"value\":\"6fYrWtY=\"},\"by\":\"\","
                "\"tm\":0,\"t3\":0}");
    expect_more(s, (const char *[]){"-0.01", "0.00", N, N, "23:59:59.999"},
                "{\"n\":\"/w==\",\"v\":{\"scale\":2,\"value\":\"AA==\"},\"by\":null,"
                "\"tm\":null,\"t3\":86399999}");
    expect_more(s, (const char *[]){"12345678.90", "-86186", N, N, N},
                "{\"n\":\"SZYC0g==\",\"v\":{\"scale\":0,\"value\":\"/q9W\"},\"by\":null,"
                "\"tm\":null,\"t3\":0}");
    expect_more(s, (const char *[]){"1.5", N, N, N, N}, /* the column's scale is padded */
                "{\"n\":\"AJY=\",\"v\":null,\"by\":null,\"tm\":null,\"t3\":0}");
    expect_more(s, (const char *[]){"1.505", N, N, N, N}, NULL);
    expect_more(s, (const char *[]){N, "NaN", N, N, N}, NULL);
    expect_more(s, (const char *[]){N, "1.", N, N, N}, NULL);
    expect_more(s, (const char *[]){N, N, "\\x6", N, N}, NULL);
    expect_more(s, (const char *[]){N, N, "hello", N, N}, NULL);
    expect_more(s, (const char *[]){N, N, N, "25:00:00", N}, NULL);
    struct eng_pgo_column cols[NMORE];
    struct eng_pgo_tuple row;
    static const char *const nulls[NMORE] = {0};
    fill_tuple(&row, cols, NMORE, nulls);
    struct eng_dbz_source src = {"false", 0, false, 0, false, 0, false, 0, 0};
    struct eng_buf k = {0}, v = {0};
    assert_int_equal(eng_dbz_encode(s, &src, 'c', NULL, &row, &k, &v, &err), 0);
    assert_non_null(strstr(
        v.data,
        "{\"type\":\"bytes\",\"optional\":true,\"name\":\"org.apache.kafka.connect.data.Decimal\","
        "\"version\":1,\"parameters\":{\"scale\":\"2\",\"connect.decimal.precision\":\"10\"},"
        "\"field\":\"n\"},{\"type\":\"struct\",\"fields\":[{\"type\":\"int32\",\"optional\":"
        "false,\"field\":\"scale\"},{\"type\":\"bytes\",\"optional\":false,\"field\":\"value\"}],"
        "\"optional\":true,\"name\":\"io.debezium.data.VariableScaleDecimal\",\"version\":1,"
        "\"doc\":\"Variable scaled decimal\",\"field\":\"v\"},{\"type\":\"bytes\",\"optional\":"
        "true,\"field\":\"by\"},{\"type\":\"int64\",\"optional\":true,\"name\":"
        "\"io.debezium.time.MicroTime\",\"version\":1,\"field\":\"tm\"},{\"type\":\"int32\","
        "\"optional\":false,\"name\":\"io.debezium.time.Time\",\"version\":1,\"field\":\"t3\"}"));
    eng_buf_free(&k);
    eng_buf_free(&v);
    eng_dbz_schema_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_schema),
        cmocka_unit_test(test_content_schema),
        cmocka_unit_test(test_events_noschema),
        cmocka_unit_test(test_content_noschema),
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_type_schema),
        cmocka_unit_test(test_refused_values),
        cmocka_unit_test(test_unchanged_toast_and_binary),
        cmocka_unit_test(test_numeric_bytea_time),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_schema_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
