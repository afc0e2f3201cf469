/* Unit tests for the ClickHouse sink's URL parser, error classification and option checks
 * (no network). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sink/clickhouse.h"

static void parse_ok(const char *url, const char *host, int port, bool tls, const char *user,
                     const char *password, const char *endpoint, const char *display)
{
    struct eng_clickhouse_url u;
    struct eng_error err;
    eng_error_clear(&err);
    int rc = eng_clickhouse_url_parse(url, &u, &err);
    if (rc != 0)
        fail_msg("\"%s\": %s", url, err.msg);
    assert_string_equal(u.host, host);
    assert_int_equal(u.port, port);
    assert_int_equal(u.tls, tls);
    if (user == NULL)
        assert_null(u.user);
    else
        assert_string_equal(u.user, user);
    if (password == NULL)
        assert_null(u.password);
    else
        assert_string_equal(u.password, password);
    assert_string_equal(u.endpoint, endpoint);
    assert_string_equal(u.display, display);
    if (password != NULL && strlen(password) >= 4) /* short ones occur by chance */
        assert_null(strstr(u.display, password));
    eng_clickhouse_url_free(&u);
    assert_null(u.host);
    assert_null(u.password);
}

/* Fails to parse, with a message containing want and never the secret. */
static void parse_bad(const char *url, const char *want, const char *secret)
{
    struct eng_clickhouse_url u;
    struct eng_error err;
    eng_error_clear(&err);
    assert_int_equal(eng_clickhouse_url_parse(url, &u, &err), ENG_EINVAL);
    assert_int_equal(err.code, ENG_EINVAL);
    assert_false(err.retriable);
    if (strstr(err.msg, want) == NULL)
        fail_msg("\"%s\": message \"%s\" lacks \"%s\"", url, err.msg, want);
    if (secret != NULL && strstr(err.msg, secret) != NULL)
        fail_msg("\"%s\": message \"%s\" leaks the password", url, err.msg);
    assert_null(u.host);
    assert_null(u.user);
    assert_null(u.password);
    assert_null(u.endpoint);
}

static void test_no_auth(void **state)
{
    (void)state;
    parse_ok("http://127.0.0.1:8123", "127.0.0.1", 8123, false, NULL, NULL,
             "http://127.0.0.1:8123/", "http://127.0.0.1:8123/");
    parse_ok("http://localhost:18123/", "localhost", 18123, false, NULL, NULL,
             "http://localhost:18123/", "http://localhost:18123/");
    parse_ok("HTTP://ch-1.example_host.internal", "ch-1.example_host.internal", 8123, false, NULL,
             NULL, "http://ch-1.example_host.internal:8123/",
             "http://ch-1.example_host.internal:8123/");
    parse_ok("https://ch:8443/", "ch", 8443, true, NULL, NULL, "https://ch:8443/",
             "https://ch:8443/");
    parse_ok("https://ch", "ch", 8443, true, NULL, NULL, "https://ch:8443/", "https://ch:8443/");
}

static void test_auth(void **state)
{
    (void)state;
    parse_ok("http://eng:secret@127.0.0.1:8123", "127.0.0.1", 8123, false, "eng", "secret",
             "http://127.0.0.1:8123/", "http://eng@127.0.0.1:8123/");
    parse_ok("http://eng:secret@127.0.0.1:8123/", "127.0.0.1", 8123, false, "eng", "secret",
             "http://127.0.0.1:8123/", "http://eng@127.0.0.1:8123/");
    /* no password: an empty one */
    parse_ok("http://reader@h:1", "h", 1, false, "reader", "", "http://h:1/", "http://reader@h:1/");
    /* no user: the default user */
    parse_ok("http://:pw@h:2", "h", 2, false, "default", "pw", "http://h:2/",
             "http://default@h:2/");
    /* percent-encoding, and raw ':' '@' '/' in the password (the last '@' ends it) */
    parse_ok("http://us%40er:p%3Aw%2F%25@h:3", "h", 3, false, "us@er", "p:w/%", "http://h:3/",
             "http://us@er@h:3/");
    parse_ok("http://u:s3cr:et@x/@h:4/", "h", 4, false, "u", "s3cr:et@x/", "http://h:4/",
             "http://u@h:4/");
}

static void test_ipv6(void **state)
{
    (void)state;
    parse_ok("http://[::1]:8123", "::1", 8123, false, NULL, NULL, "http://[::1]:8123/",
             "http://[::1]:8123/");
    parse_ok("http://u:p@[fe80::1:2]/", "fe80::1:2", 8123, false, "u", "p",
             "http://[fe80::1:2]:8123/", "http://u@[fe80::1:2]:8123/");
}

static void test_bad(void **state)
{
    (void)state;
    parse_bad("", "expected http://", NULL);
    parse_bad("127.0.0.1:8123", "expected http://", NULL);
    parse_bad("tcp://h:9000", "expected http://", NULL);
    parse_bad("clickhouse://u:hunter2@h:9000", "expected http://", "hunter2");
    parse_bad("http://", "missing host", NULL);
    parse_bad("http://:8123", "missing host", NULL);
    parse_bad("http://u:hunter2@", "missing host", "hunter2");
    parse_bad("http://u:hunter2@:8123", "missing host", "hunter2");
    parse_bad("http://h:0", "bad port", NULL);
    parse_bad("http://h:65536", "bad port", NULL);
    parse_bad("http://h:123456", "bad port", NULL);
    parse_bad("http://h:", "bad port", NULL);
    parse_bad("http://h:80x", "unexpected \"x\"", NULL);
    parse_bad("http://u:hunter2@h:-1", "bad port", "hunter2");
    parse_bad("http://h:8123/db", "unexpected \"db\"", NULL);
    parse_bad("http://h:8123/?database=x", "unexpected", NULL);
    parse_bad("http://h:8123//", "unexpected", NULL);
    parse_bad("http://h 1:8123", "unexpected", NULL);
    parse_bad("http://[::1:8123", "unterminated", NULL);
    parse_bad("http://[]:8123", "missing host", NULL);
    parse_bad("http://[zz::1]:8123", "bad IPv6", NULL);
    parse_bad("http://u:hunter%2@h:1", "percent-encoding", "hunter");
    parse_bad("http://u:a%00b@h:1", "percent-encoding", NULL);
    /* the URL shown in the message has its password masked */
    parse_bad("http://u:hunter2@h:99999", "u:***@h:99999", "hunter2");
}

static void test_free_empty(void **state)
{
    (void)state;
    struct eng_clickhouse_url u;
    memset(&u, 0, sizeof(u));
    eng_clickhouse_url_free(&u);
    eng_clickhouse_url_free(NULL);
}

static void test_exception_code(void **state)
{
    (void)state;
    const char *old = "Code: 117, e.displayText() = DB::Exception: Unknown field found";
    const char *cur = "Code: 62. DB::Exception: Syntax error: failed at position 1";
    assert_int_equal(eng_clickhouse_exception_code(old, strlen(old)), 117);
    assert_int_equal(eng_clickhouse_exception_code(cur, strlen(cur)), 62);
    assert_int_equal(eng_clickhouse_exception_code("\n  Code: 241, x", 15), 241);
    assert_int_equal(eng_clickhouse_exception_code("Code: 60", 8), 60);
    assert_int_equal(eng_clickhouse_exception_code("Code: ", 6), 0);
    assert_int_equal(eng_clickhouse_exception_code("Code: x", 7), 0);
    assert_int_equal(eng_clickhouse_exception_code("Code: 1234567", 13), 0);
    assert_int_equal(eng_clickhouse_exception_code("<html>502 Bad Gateway", 21), 0);
    assert_int_equal(eng_clickhouse_exception_code("", 0), 0);
    /* the length bounds the read, not a NUL */
    assert_int_equal(eng_clickhouse_exception_code("Code: 117", 7), 1);
}

static void test_retriable(void **state)
{
    (void)state;
    /* 18.16 answers 500 to data it cannot parse: not worth retrying */
    assert_false(eng_clickhouse_retriable(500, 117));
    assert_false(eng_clickhouse_retriable(500, 27));
    assert_false(eng_clickhouse_retriable(400, 62));
    assert_false(eng_clickhouse_retriable(401, 193));
    assert_false(eng_clickhouse_retriable(403, 516));
    assert_false(eng_clickhouse_retriable(500, 349));
    /* server trouble is */
    assert_true(eng_clickhouse_retriable(500, 241)); /* memory limit */
    assert_true(eng_clickhouse_retriable(500, 252)); /* too many parts */
    assert_true(eng_clickhouse_retriable(503, 202)); /* too many simultaneous queries */
    assert_true(eng_clickhouse_retriable(500, 0));
    assert_true(eng_clickhouse_retriable(502, 0)); /* a proxy in front */
    assert_true(eng_clickhouse_retriable(504, 0));
    assert_true(eng_clickhouse_retriable(429, 0));
    assert_true(eng_clickhouse_retriable(408, 0));
    /* a dropped table or database comes back with the next open */
    assert_true(eng_clickhouse_retriable(404, 60));
    assert_true(eng_clickhouse_retriable(404, 81));
    /* other client errors are not */
    assert_false(eng_clickhouse_retriable(400, 0));
    assert_false(eng_clickhouse_retriable(404, 0));
    assert_false(eng_clickhouse_retriable(411, 0));
    assert_false(eng_clickhouse_retriable(301, 0));
}

static void test_create_checks(void **state)
{
    (void)state;
    struct eng_error err;
    struct eng_clickhouse_options opt;

    eng_clickhouse_options_init(&opt);
    assert_string_equal(opt.database, "engagement");
    assert_int_equal(opt.connect_timeout_ms, 5000);
    assert_int_equal(opt.timeout_ms, 60000);
    assert_false(opt.skip_unknown_fields);

    /* a bad URL fails at create, not at open, and the password stays out of the message */
    eng_error_clear(&err);
    assert_null(eng_clickhouse_sink_create("http://u:hunter2@h:99999", &err));
    assert_int_equal(err.code, ENG_EINVAL);
    assert_false(err.retriable);
    assert_null(strstr(err.msg, "hunter2"));

    /* the database name goes into SQL unquoted: only plain identifiers */
    opt.database = "engagement; DROP TABLE x";
    eng_error_clear(&err);
    assert_null(eng_clickhouse_sink_create_opt("http://h:8123", &opt, &err));
    assert_int_equal(err.code, ENG_EINVAL);
    assert_non_null(strstr(err.msg, "database"));
    opt.database = "";
    assert_null(eng_clickhouse_sink_create_opt("http://h:8123", &opt, &err));
    opt.database = "1abc";
    assert_null(eng_clickhouse_sink_create_opt("http://h:8123", &opt, &err));

    /* create does not connect; an empty batch is written without a request (nothing listens
     * on port 1); destroy without open is fine */
    opt.database = "engage_test_2";
    struct eng_sink *s = eng_clickhouse_sink_create_opt("http://127.0.0.1:1/", &opt, &err);
    assert_non_null(s);
    assert_string_equal(s->ops->name, "clickhouse");
    struct eng_batch *b = eng_batch_create(4);
    eng_error_clear(&err);
    assert_int_equal(eng_sink_write(s, b, &err), 0);
    /* a non-empty batch before open is a retriable error, not a crash */
    struct eng_event *e = eng_batch_push(b);
    e->event_id = 1;
    eng_buf_puts(&b->jsonl, "{\"event_id\":1}\n");
    e->json.len = (uint32_t)b->jsonl.len - 1;
    assert_int_not_equal(eng_sink_write(s, b, &err), 0);
    assert_true(err.retriable);
    eng_batch_release(b);
    eng_sink_close(s); /* closing a closed sink is fine */
    eng_sink_destroy(s);
    eng_sink_destroy(NULL);
}

static void test_query_bad_url(void **state)
{
    (void)state;
    struct eng_buf out = {0};
    struct eng_error err;
    eng_error_clear(&err);
    assert_int_equal(eng_clickhouse_query("nope", "SELECT 1", &out, &err), ENG_EINVAL);
    assert_int_equal(out.len, 0);
    eng_buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_auth),       cmocka_unit_test(test_auth),
        cmocka_unit_test(test_ipv6),          cmocka_unit_test(test_bad),
        cmocka_unit_test(test_free_empty),    cmocka_unit_test(test_exception_code),
        cmocka_unit_test(test_retriable),     cmocka_unit_test(test_create_checks),
        cmocka_unit_test(test_query_bad_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
