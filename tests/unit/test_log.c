/* Unit tests for the logfmt formatter (issue 8, item 10). The expected lines are written
 * from logfmt's rules (key=value pairs separated by spaces; a value with a space, '=', '"',
 * '\' or a control character is quoted, and inside quotes '"' and '\' are backslash-escaped
 * and control characters written as \n, \r, \t or \xNN), not copied from output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/log.h"

static char out[2048];

#define FMT(...) (eng_log_format(out, sizeof(out), __VA_ARGS__), out)

static void test_plain_values(void **state)
{
    (void)state;
    assert_string_equal(FMT("msg=\"started\" n=%d slot=%s", 5, "engage_slot"),
                        "msg=\"started\" n=5 slot=engage_slot");
    assert_string_equal(
        FMT("msg=\"x\" a=%lld b=%u c=%zu d=%.2f e=%x", -7LL, 3u, (size_t)12, 0.125, 255u),
        "msg=\"x\" a=-7 b=3 c=12 d=0.12 e=ff");
    assert_string_equal(FMT("msg=\"x\" w=%*d p=%.*s pct=100%%", 4, 7, 3, "abcdef"),
                        "msg=\"x\" w=\"   7\" p=abc pct=100%");
}

/* The line the issue quotes: a value with quotes inside a quoted msg. */
static void test_quotes_inside_quoted_value(void **state)
{
    (void)state;
    assert_string_equal(FMT("msg=\"%s\"", "invalid clickhouse url \"ftp://x\": bad scheme"),
                        "msg=\"invalid clickhouse url \\\"ftp://x\\\": bad scheme\"");
    assert_string_equal(FMT("msg=\"failed\" error=\"%s\"", "C:\\dir"),
                        "msg=\"failed\" error=\"C:\\\\dir\"");
}

static void test_newlines_and_controls(void **state)
{
    (void)state;
    assert_string_equal(FMT("msg=\"x\" error=\"%s\"", "line one\nline two\r\tend\x01"),
                        "msg=\"x\" error=\"line one\\nline two\\r\\tend\\x01\"");
    /* a raw newline in the format itself never reaches the line either */
    assert_string_equal(FMT("msg=\"a\nb\""), "msg=\"a\\nb\"");
}

static void test_unquoted_value_quoted_when_needed(void **state)
{
    (void)state;
    assert_string_equal(FMT("msg=\"x\" host=%s", "a b"), "msg=\"x\" host=\"a b\"");
    assert_string_equal(FMT("msg=\"x\" k=%s", "a=b"), "msg=\"x\" k=\"a=b\"");
    assert_string_equal(FMT("msg=\"x\" k=%s", ""), "msg=\"x\" k=\"\"");
    assert_string_equal(FMT("msg=\"x\" k=%s", "say \"hi\""), "msg=\"x\" k=\"say \\\"hi\\\"\"");
    assert_string_equal(FMT("msg=\"x\" k=%s", "a\nb"), "msg=\"x\" k=\"a\\nb\"");
    assert_string_equal(FMT("msg=\"x\" k=%s next=1", "a\\b"), "msg=\"x\" k=\"a\\\\b\" next=1");
}

/* A line longer than the buffer: cut, the open quote closed, truncated=true appended. */
static void test_truncation_keeps_the_line_valid(void **state)
{
    (void)state;
    char small[48]; /* room for 30 bytes of the format, then the tail */
    char big[200];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';

    size_t n = eng_log_format(small, sizeof(small), "msg=\"x\" error=\"%s\"", big);
    assert_string_equal(small, "msg=\"x\" error=\"aaaaaaaaaaaaaaa\" truncated=true");
    assert_int_equal(n, strlen(small));

    /* a value quoted by the formatter (it has a space) is closed too */
    big[5] = ' ';
    eng_log_format(small, sizeof(small), "msg=\"x\" v=%s", big);
    assert_string_equal(small, "msg=\"x\" v=\"aaaaa aaaaaaaaaaaaa\" truncated=true");

    /* an escape sequence is never split: \" needs 2 bytes where 1 is left */
    memset(big, '"', sizeof(big) - 1);
    eng_log_format(small, sizeof(small), "msg=\"x\" error=\"%s\"", big);
    assert_string_equal(small, "msg=\"x\" error=\"\\\"\\\"\\\"\\\"\\\"\\\"\\\"\" truncated=true");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_values),
        cmocka_unit_test(test_quotes_inside_quoted_value),
        cmocka_unit_test(test_newlines_and_controls),
        cmocka_unit_test(test_unquoted_value_quoted_when_needed),
        cmocka_unit_test(test_truncation_keeps_the_line_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
