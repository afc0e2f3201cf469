/* Unit tests for the Redis sink's URL parser and option checks (no network). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sink/redis.h"

static void parse_ok(const char *url, const char *host, int port, int db, const char *user,
                     const char *password)
{
    struct eng_redis_url u;
    struct eng_error err;
    eng_error_clear(&err);
    int rc = eng_redis_url_parse(url, &u, &err);
    if (rc != 0)
        fail_msg("\"%s\": %s", url, err.msg);
    assert_string_equal(u.host, host);
    assert_int_equal(u.port, port);
    assert_int_equal(u.db, db);
    if (user == NULL)
        assert_null(u.user);
    else
        assert_string_equal(u.user, user);
    if (password == NULL)
        assert_null(u.password);
    else
        assert_string_equal(u.password, password);
    eng_redis_url_free(&u);
    assert_null(u.host);
}

/* Fails to parse, with a message containing want and never the secret. */
static void parse_bad(const char *url, const char *want, const char *secret)
{
    struct eng_redis_url u;
    struct eng_error err;
    eng_error_clear(&err);
    assert_int_equal(eng_redis_url_parse(url, &u, &err), ENG_EINVAL);
    assert_int_equal(err.code, ENG_EINVAL);
    assert_false(err.retriable);
    if (strstr(err.msg, want) == NULL)
        fail_msg("\"%s\": message \"%s\" lacks \"%s\"", url, err.msg, want);
    if (secret != NULL && strstr(err.msg, secret) != NULL)
        fail_msg("\"%s\": message \"%s\" leaks the password", url, err.msg);
    assert_null(u.host);
    assert_null(u.user);
    assert_null(u.password);
}

static void test_plain(void **state)
{
    (void)state;
    parse_ok("redis://127.0.0.1:6379", "127.0.0.1", 6379, 0, NULL, NULL);
    parse_ok("redis://localhost:7000/", "localhost", 7000, 0, NULL, NULL);
    parse_ok("redis://localhost", "localhost", 6379, 0, NULL, NULL);
    parse_ok("redis://localhost/3", "localhost", 6379, 3, NULL, NULL);
    parse_ok("redis://h:1/15", "h", 1, 15, NULL, NULL);
    parse_ok("REDIS://h:65535/0", "h", 65535, 0, NULL, NULL);
}

static void test_auth(void **state)
{
    (void)state;
    parse_ok("redis://:secret@h:6380/2", "h", 6380, 2, NULL, "secret");
    parse_ok("redis://alice:secret@h:6380", "h", 6380, 0, "alice", "secret");
    /* redis-cli reads userinfo without a colon as the password */
    parse_ok("redis://secret@h", "h", 6379, 0, NULL, "secret");
    parse_ok("redis://alice:@h", "h", 6379, 0, "alice", NULL);
    parse_ok("redis://:@h", "h", 6379, 0, NULL, NULL);
    /* percent-decoding, and a password holding ':' and (leniently) '@' */
    parse_ok("redis://al%69ce:p%40ss%3Aw%2fd@h:1", "h", 1, 0, "alice", "p@ss:w/d");
    parse_ok("redis://:a:b@h", "h", 6379, 0, NULL, "a:b");
    parse_ok("redis://:a@b@h:9", "h", 9, 0, NULL, "a@b");
}

static void test_ipv6(void **state)
{
    (void)state;
    parse_ok("redis://[::1]:6390/1", "::1", 6390, 1, NULL, NULL);
    parse_ok("redis://:pw@[fe80::1]", "fe80::1", 6379, 0, NULL, "pw");
    parse_bad("redis://[::1", "ipv6", NULL);
    parse_bad("redis://[]:1", "ipv6", NULL);
    parse_bad("redis://[::1]x", "ipv6", NULL);
}

static void test_bad(void **state)
{
    (void)state;
    parse_bad("http://h:1", "redis://", NULL);
    parse_bad("", "redis://", NULL);
    parse_bad("rediss://h:1", "tls", NULL);
    parse_bad("redis://", "missing host", NULL);
    parse_bad("redis://:6379", "missing host", NULL);
    parse_bad("redis://:hunter2@:6379", "missing host", "hunter2");
    parse_bad("redis://h:0", "bad port", NULL);
    parse_bad("redis://h:65536", "bad port", NULL);
    parse_bad("redis://h:", "bad port", NULL);
    parse_bad("redis://h:12a", "bad port", NULL);
    parse_bad("redis://:hunter2@h:x", "bad port", "hunter2");
    parse_bad("redis://h:1/x", "bad database", NULL);
    parse_bad("redis://h:1/-1", "bad database", NULL);
    parse_bad("redis://h:1/1/2", "bad database", NULL);
    parse_bad("redis://h:1/99999999999", "bad database", NULL);
    parse_bad("redis://h:1?db=2", "query", NULL);
    parse_bad("redis://h:1/0#x", "query", NULL);
    parse_bad("redis://:hunter%2@h", "bad escape in the password", "hunter");
    parse_bad("redis://:hunter%00@h", "bad escape in the password", "hunter");
    parse_bad("redis://b%zz:pw@h", "bad escape in the user", "pw");
    parse_bad(NULL, "redis://", NULL);
}

static void test_free_empty(void **state)
{
    (void)state;
    struct eng_redis_url u;
    memset(&u, 0, sizeof(u));
    eng_redis_url_free(&u);
    eng_redis_url_free(NULL);
}

static void test_create_checks(void **state)
{
    (void)state;
    struct eng_error err;
    struct eng_redis_options opt;

    /* a bad URL fails at create, not at open */
    eng_error_clear(&err);
    assert_null(eng_redis_sink_create("redis://:pw@h:99999", NULL, &err));
    assert_int_equal(err.code, ENG_EINVAL);
    assert_false(err.retriable);

    /* a top window longer than the buckets live cannot be built */
    eng_redis_options_init(&opt);
    opt.top_minutes = 20;
    assert_null(eng_redis_sink_create("redis://h", &opt, &err));
    assert_non_null(strstr(err.msg, "bucket ttl"));
    opt.top_minutes = ENG_REDIS_MAX_TOP_MINUTES + 1;
    opt.bucket_ttl_s = 86400;
    assert_null(eng_redis_sink_create("redis://h", &opt, &err));

    /* create does not connect; destroy without open is fine */
    struct eng_sink *s = eng_redis_sink_create("redis://127.0.0.1:1/3", NULL, &err);
    assert_non_null(s);
    assert_string_equal(s->ops->name, "redis");
    eng_sink_destroy(s);
    eng_sink_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),      cmocka_unit_test(test_auth),
        cmocka_unit_test(test_ipv6),       cmocka_unit_test(test_bad),
        cmocka_unit_test(test_free_empty), cmocka_unit_test(test_create_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
