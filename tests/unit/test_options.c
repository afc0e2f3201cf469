/* Unit tests of the command line's pieces that read outside input: the argv scrub that hides
 * passwords from ps (issue 8, item 9), the --sinks check (item 4) and the config file text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cli/options.h"

/* Scrubs a copy of in and compares it with want (what ps shows: the string up to its first
 * NUL; the bytes freed at the end are NULs). */
static void scrubbed(const char *in, const char *want, bool changed)
{
    char buf[512];
    size_t n = strlen(in);
    memcpy(buf, in, n + 1);
    assert_int_equal(eng_options_scrub_secrets(buf), changed);
    assert_string_equal(buf, want);
    for (size_t i = strlen(buf); i < n; i++)
        assert_int_equal(buf[i], '\0'); /* never longer, the tail cleared */
}

static void test_scrub_urls(void **state)
{
    (void)state;
    scrubbed("postgresql://engage:s3cret@db:5432/app", "postgresql://engage:***@db:5432/app", true);
    scrubbed("redis://:hunter22@redis:6379/0", "redis://:***@redis:6379/0", true);
    scrubbed("http://default:p%40ss@ch:8123/", "http://default:***@ch:8123/", true);
    scrubbed("https://u:pwd1@api.example/x?password=tok&y=1",
             "https://u:***@api.example/x?password=***&y=1", true);
    scrubbed("--pg=postgresql://u:abcdef@h/d", "--pg=postgresql://u:***@h/d", true);
    /* a password shorter than the stars is not lengthened */
    scrubbed("redis://:ab@h", "redis://:**@h", true);
    /* nothing to hide */
    scrubbed("postgresql://engage@db:5432/app", "postgresql://engage@db:5432/app", false);
    scrubbed("redis://redis:6379/0", "redis://redis:6379/0", false);
    scrubbed("http://user@h:8123/path@x", "http://user@h:8123/path@x", false);
    scrubbed("--sinks", "--sinks", false);
}

static void test_scrub_conninfo(void **state)
{
    (void)state;
    scrubbed("host=db user=engage password=s3cret dbname=app",
             "host=db user=engage password=*** dbname=app", true);
    scrubbed("host=db password = 'a b\\'c' dbname=app", "host=db password = *** dbname=app", true);
    scrubbed("PASSWORD=x1234 sslpassword=k9876", "PASSWORD=*** sslpassword=***", true);
    scrubbed("password", "password", false);
    scrubbed("password=", "password=", false);
}

static struct eng_options parse(const char *config)
{
    struct eng_options o;
    memset(&o, 0, sizeof(o));
    assert_int_equal(eng_options_config_text(&o, config, strlen(config), "test"), 0);
    return o;
}

static void test_sinks_names(void **state)
{
    (void)state;
    /* silence the usage errors printed on stderr */
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    const char *good[] = {"sinks = clickhouse,redis,http,stdout\n", "sinks=redis\n", "\n"};
    const char *bad[] = {"sinks = redis,clickhous\n", "sinks = kafka\n", "sinks = redis,\n",
                         "sinks = ,redis\n", "sinks = REDIS\n"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct eng_options o = parse(good[i]);
        assert_true(eng_opt_sinks_valid(&o));
        eng_options_free(&o);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct eng_options o = parse(bad[i]);
        assert_false(eng_opt_sinks_valid(&o));
        eng_options_free(&o);
    }
    fclose(stderr);
    stderr = saved;
}

static void test_config_text(void **state)
{
    (void)state;
    struct eng_options o =
        parse("# comment\n  pg = host=db dbname=app  \nhttp-rate=2.5\r\nsinks = redis\n");
    assert_string_equal(eng_opt(&o, OPT_PG), "host=db dbname=app");
    assert_string_equal(eng_opt(&o, OPT_SINKS), "redis");
    double rate = 0;
    assert_true(eng_opt_double(&o, OPT_HTTP_RATE, 0, 1000000, &rate));
    assert_true(rate == 2.5);
    eng_options_free(&o);

    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    memset(&o, 0, sizeof(o));
    assert_int_equal(eng_options_config_text(&o, "no equals sign\n", 15, "test"), -1);
    eng_options_free(&o);
    assert_int_equal(eng_options_config_text(&o, "nosuch = 1\n", 11, "test"), -1);
    eng_options_free(&o);
    o = parse("http-rate = fast\n");
    assert_false(eng_opt_double(&o, OPT_HTTP_RATE, 0, 1000000, &rate));
    eng_options_free(&o);
    fclose(stderr);
    stderr = saved;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scrub_urls),
        cmocka_unit_test(test_scrub_conninfo),
        cmocka_unit_test(test_sinks_names),
        cmocka_unit_test(test_config_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
