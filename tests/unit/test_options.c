/* Unit tests of the command line's pieces that read outside input: the argv scrub that hides
 * passwords from ps (issue 8, item 9), the --sinks check (item 4), the config file text, and
 * each subcommand's own options (issue 9, item 4). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/options.h"
#include "sink/http.h"

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

/* ---- each subcommand's options ------------------------------------------------------------ */

#define MAX_ARGS 16

/* Parses args (NULL-terminated, the subcommand name first) for cmd; returns what
 * eng_options_parse returned, with what it printed on stderr in errtext. */
static int parse_cmd(enum eng_cmd_id cmd, const char *const *args, struct eng_options *o,
                     char *errtext, size_t errcap)
{
    char *argv[MAX_ARGS + 1];
    char copies[MAX_ARGS][128];
    int argc = 0;
    for (; args[argc] != NULL; argc++) {
        assert_true(argc < MAX_ARGS);
        snprintf(copies[argc], sizeof(copies[argc]), "%s", args[argc]);
        argv[argc] = copies[argc];
    }
    argv[argc] = NULL;
    FILE *saved = stderr;
    FILE *capture = tmpfile();
    assert_non_null(capture);
    stderr = capture;
    int rc = eng_options_parse(o, cmd, argc, argv, "usage\n");
    stderr = saved;
    rewind(capture);
    size_t n = fread(errtext, 1, errcap - 1, capture);
    errtext[n] = '\0';
    fclose(capture);
    return rc;
}

static void refused(enum eng_cmd_id cmd, const char *const *args, const char *named)
{
    struct eng_options o;
    char text[4096];
    assert_int_equal(parse_cmd(cmd, args, &o, text, sizeof(text)), -1);
    assert_non_null(strstr(text, named));
    eng_options_free(&o);
}

static void accepted(enum eng_cmd_id cmd, const char *const *args)
{
    struct eng_options o;
    char text[4096];
    assert_int_equal(parse_cmd(cmd, args, &o, text, sizeof(text)), 0);
    assert_string_equal(text, "");
    eng_options_free(&o);
}

static void test_foreign_options_refused(void **state)
{
    (void)state;
    refused(ENG_CMD_STATUS, (const char *const[]){"status", "--clickhouse-interval-ms", "5", NULL},
            "--clickhouse-interval-ms is not an option of engage status");
    refused(ENG_CMD_TOP, (const char *const[]){"top", "--http", "x", NULL},
            "--http is not an option of engage top");
    refused(ENG_CMD_TOP, (const char *const[]){"top", "--http=x", NULL},
            "--http is not an option of engage top");
    refused(ENG_CMD_DLQ_DISCARD, (const char *const[]){"discard", "--all", NULL},
            "--all is not an option of engage dlq discard");
    refused(ENG_CMD_DLQ_REPLAY, (const char *const[]){"replay", "--json", NULL},
            "--json is not an option of engage dlq replay");
    refused(ENG_CMD_BACKFILL, (const char *const[]){"backfill", "--slot", "s", NULL},
            "--slot is not an option of engage backfill");
    refused(ENG_CMD_RUN, (const char *const[]){"run", "--ids", "1", NULL},
            "--ids is not an option of engage run");
    refused(ENG_CMD_RUN, (const char *const[]){"run", "--no-such", NULL},
            "unknown option --no-such");
    refused(ENG_CMD_RUN, (const char *const[]){"run", "--pg", NULL}, "--pg needs a value");
    refused(ENG_CMD_STATUS, (const char *const[]){"status", "--json=yes", NULL},
            "--json takes no value");
}

/* capture and run --source kafka: -X and --kafka-property repeat and keep their order;
 * capture has a slot, state directory and admin port of its own by default, so it runs
 * beside run on one machine; sink options are not capture's. */
static void test_kafka_options(void **state)
{
    (void)state;
    struct eng_options o;
    char text[256];
    const char *const args[] = {"capture",          "--pg", "p",  "--kafka", "k:1", "-X", "a=1",
                                "--kafka-property", "b=2",  "-X", "c=3",     NULL};
    assert_int_equal(parse_cmd(ENG_CMD_CAPTURE, args, &o, text, sizeof(text)), 0);
    size_t n;
    char **lines = eng_opt_lines(&o, OPT_KAFKA_PROPERTY, &n);
    assert_int_equal(n, 3);
    assert_string_equal(lines[0], "a=1");
    assert_string_equal(lines[1], "b=2");
    assert_string_equal(lines[2], "c=3");
    assert_null(lines[3]);
    eng_opt_lines_free(lines);
    assert_string_equal(eng_opt(&o, OPT_SLOT), "engage_capture");
    assert_string_equal(eng_opt(&o, OPT_STATE_DIR), "engage-capture-state");
    assert_string_equal(eng_opt(&o, OPT_ADMIN_ADDR), "127.0.0.1:9188");
    assert_string_equal(eng_opt(&o, OPT_TOPIC_PREFIX), "dbserver1");
    assert_string_equal(eng_opt(&o, OPT_KEY), "content_id");
    eng_options_free(&o);

    const char *const run[] = {"run", "--source", "kafka", "--kafka", "k:1", NULL};
    assert_int_equal(parse_cmd(ENG_CMD_RUN, run, &o, text, sizeof(text)), 0);
    assert_string_equal(eng_opt(&o, OPT_SLOT), "engage_slot");
    assert_string_equal(eng_opt(&o, OPT_STATE_DIR), "engage-state");
    assert_string_equal(eng_opt(&o, OPT_TOPIC), "dbserver1.public.engagement_events");
    assert_string_equal(eng_opt(&o, OPT_GROUP), "engage");
    lines = eng_opt_lines(&o, OPT_KAFKA_PROPERTY, &n);
    assert_int_equal(n, 0);
    eng_opt_lines_free(lines);
    eng_options_free(&o);

    refused(ENG_CMD_CAPTURE, (const char *const[]){"capture", "--redis", "r", NULL},
            "--redis is not an option of engage capture");
    refused(ENG_CMD_BACKFILL, (const char *const[]){"backfill", "-X", "a=1", NULL},
            "unknown option -X");
    refused(ENG_CMD_CAPTURE, (const char *const[]){"capture", "-X", NULL}, "-X needs a value");
    refused(ENG_CMD_RUN, (const char *const[]){"run", "--topic-prefix", "p", NULL},
            "--topic-prefix is not an option of engage run");
}

static void test_own_options_accepted(void **state)
{
    (void)state;
    accepted(ENG_CMD_RUN, (const char *const[]){"run", "--clickhouse-interval-ms", "5",
                                                "--http-rate", "2", "--batch-ms", "9", NULL});
    accepted(ENG_CMD_BACKFILL, (const char *const[]){"backfill", "--start", "a", "--end", "b",
                                                     "--http-batch", "3", NULL});
    accepted(ENG_CMD_DLQ_LIST, (const char *const[]){"list", "--all", "--json", "--ids", "1,2",
                                                     "--origin", "http", "--limit", "3", NULL});
    accepted(ENG_CMD_DLQ_REPLAY, (const char *const[]){"replay", "--http", "u", "--http-rate", "1",
                                                       "--limit", "3", NULL});
    accepted(ENG_CMD_DLQ_DISCARD,
             (const char *const[]){"discard", "--ids", "1", "--origin", "source", NULL});
    accepted(ENG_CMD_STATUS,
             (const char *const[]){"status", "--json", "--slot", "s", "--log-level", "warn", NULL});
    accepted(ENG_CMD_TOP, (const char *const[]){"top", "--redis", "redis://h", NULL});

    struct eng_options o;
    char text[256];
    const char *const args[] = {"status", "--json", "--slot=s", NULL};
    assert_int_equal(parse_cmd(ENG_CMD_STATUS, args, &o, text, sizeof(text)), 0);
    assert_true(eng_opt_flag(&o, OPT_JSON));
    assert_false(eng_opt_flag(&o, OPT_ALL));
    assert_string_equal(eng_opt(&o, OPT_SLOT), "s");
    assert_string_equal(eng_opt(&o, OPT_ADMIN_ADDR), "127.0.0.1:9187"); /* its default */
    assert_null(eng_opt(&o, OPT_QUEUE_DEPTH)); /* not status's: no default either */
    eng_options_free(&o);
}

/* Every subcommand takes --config; every option with a variable belongs to some subcommand;
 * the HTTP sink's options are the same three places. */
static void test_table(void **state)
{
    (void)state;
    for (int c = 0; c < ENG_CMD__COUNT; c++)
        assert_true(eng_options_takes((enum eng_cmd_id)c, OPT_CONFIG));
    for (int i = 0; i < OPT__COUNT; i++) {
        bool someone = false;
        for (int c = 0; c < ENG_CMD__COUNT; c++)
            someone = someone || eng_options_takes((enum eng_cmd_id)c, (enum eng_opt_id)i);
        assert_true(someone);
    }
    const enum eng_opt_id http[] = {OPT_HTTP,
                                    OPT_HTTP_BATCH,
                                    OPT_HTTP_TIMEOUT_MS,
                                    OPT_HTTP_MAX_ATTEMPTS,
                                    OPT_HTTP_RETRY_BUDGET_MS,
                                    OPT_HTTP_INFLIGHT,
                                    OPT_HTTP_TOKEN_FILE,
                                    OPT_HTTP_RATE};
    for (size_t i = 0; i < sizeof(http) / sizeof(http[0]); i++) {
        assert_true(eng_options_takes(ENG_CMD_RUN, http[i]));
        assert_true(eng_options_takes(ENG_CMD_BACKFILL, http[i]));
        assert_true(eng_options_takes(ENG_CMD_DLQ_REPLAY, http[i]));
        assert_false(eng_options_takes(ENG_CMD_STATUS, http[i]));
        assert_false(eng_options_takes(ENG_CMD_TOP, http[i]));
    }
}

/* A variable for an option the subcommand does not take is ignored; one it takes is read. */
static void test_env_of_other_commands_ignored(void **state)
{
    (void)state;
    setenv("ENGAGE_CLICKHOUSE_INTERVAL_MS", "5", 1);
    setenv("ENGAGE_SLOT", "from_env", 1);
    struct eng_options o;
    char text[256];
    assert_int_equal(
        parse_cmd(ENG_CMD_STATUS, (const char *const[]){"status", NULL}, &o, text, sizeof(text)),
        0);
    assert_null(eng_opt(&o, OPT_CLICKHOUSE_INTERVAL_MS));
    assert_string_equal(eng_opt(&o, OPT_SLOT), "from_env");
    eng_options_free(&o);
    assert_int_equal(
        parse_cmd(ENG_CMD_RUN, (const char *const[]){"run", NULL}, &o, text, sizeof(text)), 0);
    assert_string_equal(eng_opt(&o, OPT_CLICKHOUSE_INTERVAL_MS), "5");
    eng_options_free(&o);
    unsetenv("ENGAGE_CLICKHOUSE_INTERVAL_MS");
    unsetenv("ENGAGE_SLOT");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A config line for an option of another subcommand is ignored (one file serves run and
 * status); a line naming no option, or one only a command line gives, is an error. */
static void test_config_per_command(void **state)
{
    (void)state;
    char path[] = "/tmp/engage-test-options-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    const char *const args[] = {"status", "--config", path, NULL};
    struct eng_options o;
    char text[512];

    write_file(path, "pg = host=db\nclickhouse-interval-ms = 5\nhttp-batch = 7\nslot = s1\n");
    assert_int_equal(parse_cmd(ENG_CMD_STATUS, args, &o, text, sizeof(text)), 0);
    assert_string_equal(eng_opt(&o, OPT_PG), "host=db");
    assert_string_equal(eng_opt(&o, OPT_SLOT), "s1");
    assert_null(eng_opt(&o, OPT_CLICKHOUSE_INTERVAL_MS));
    assert_null(eng_opt(&o, OPT_HTTP_BATCH));
    eng_options_free(&o);

    write_file(path, "pg = host=db\nno-such = 1\n");
    assert_int_equal(parse_cmd(ENG_CMD_STATUS, args, &o, text, sizeof(text)), -1);
    assert_non_null(strstr(text, "unknown option \"no-such\""));
    eng_options_free(&o);

    write_file(path, "json = 1\n");
    assert_int_equal(parse_cmd(ENG_CMD_STATUS, args, &o, text, sizeof(text)), -1);
    assert_non_null(strstr(text, "unknown option \"json\""));
    eng_options_free(&o);
    unlink(path);
}

/* One set of HTTP defaults: the sink's, which the command line documents; the option table
 * has none of its own, so an option not given leaves the sink's default. */
static void test_http_defaults(void **state)
{
    (void)state;
    struct eng_http_options h;
    eng_http_options_default(&h);
    assert_int_equal(h.batch_size, 100);
    assert_int_equal(h.max_in_flight, 4);
    assert_int_equal(h.retry_budget_ms, 60000);
    assert_int_equal(h.timeout_ms, 5000);
    assert_int_equal(h.max_attempts, 8);
    assert_true(h.rate == 0);

    struct eng_options o;
    char text[256];
    assert_int_equal(
        parse_cmd(ENG_CMD_RUN, (const char *const[]){"run", NULL}, &o, text, sizeof(text)), 0);
    const enum eng_opt_id http[] = {OPT_HTTP_BATCH,        OPT_HTTP_TIMEOUT_MS,
                                    OPT_HTTP_MAX_ATTEMPTS, OPT_HTTP_RETRY_BUDGET_MS,
                                    OPT_HTTP_INFLIGHT,     OPT_HTTP_RATE};
    for (size_t i = 0; i < sizeof(http) / sizeof(http[0]); i++)
        assert_null(eng_opt(&o, http[i]));
    eng_options_free(&o);
}

extern char **environ;

/* The tests set the ENGAGE_* variables they need: none from the caller's shell. */
static void clear_engage_env(void)
{
    for (size_t i = 0; environ[i] != NULL;) {
        if (strncmp(environ[i], "ENGAGE_", 7) != 0) {
            i++;
            continue;
        }
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)strcspn(environ[i], "="), environ[i]);
        unsetenv(name);
    }
}

int main(void)
{
    clear_engage_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scrub_urls),
        cmocka_unit_test(test_scrub_conninfo),
        cmocka_unit_test(test_sinks_names),
        cmocka_unit_test(test_config_text),
        cmocka_unit_test(test_foreign_options_refused),
        cmocka_unit_test(test_own_options_accepted),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_env_of_other_commands_ignored),
        cmocka_unit_test(test_config_per_command),
        cmocka_unit_test(test_http_defaults),
        cmocka_unit_test(test_kafka_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
