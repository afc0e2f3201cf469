/* Parsing of PostgreSQL text values and timestamp formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/pgtext.h"

static bool ts(const char *s, int64_t *out)
{
    return eng_parse_timestamp(s, strlen(s), out);
}

static void test_timestamps(void **state)
{
    (void)state;
    int64_t us;
    assert_true(ts("1970-01-01 00:00:00", &us));
    assert_int_equal(us, 0);
    assert_true(ts("2026-01-08 14:21:52", &us));
    assert_int_equal(us, INT64_C(1767882112) * 1000000);
    assert_true(ts("2026-01-08 14:21:52.5", &us));
    assert_int_equal(us, INT64_C(1767882112) * 1000000 + 500000);
    assert_true(ts("2026-01-08 14:21:52.000001", &us));
    assert_int_equal(us % 1000000, 1);
    assert_true(ts("2024-02-29 23:59:59", &us));
    assert_true(ts("1969-12-31 23:59:59.999999", &us));
    assert_int_equal(us, -1);
    char out[20];
    eng_format_timestamp(us, out);
    assert_string_equal(out, "1969-12-31 23:59:59");
    char minute[13];
    assert_true(ts("2026-01-08 14:21:52.999", &us));
    eng_format_minute(us, minute);
    assert_string_equal(minute, "202601081421");

    static const char *const bad[] = {
        "",
        "infinity",
        "-infinity",
        "2026-01-08",
        "2026-01-08T14:21:52",
        "2026-13-01 00:00:00",
        "2026-02-29 00:00:00",
        "2026-01-08 24:00:00",
        "2026-01-08 14:21:52.",
        "0000-01-01 00:00:00",
        "2026-01-08 14:21:52.1234567",
        "2026-01-08 14:21:52+00",
        "2026-01-08 14:21:5x",
        "0044-03-15 00:00:00 BC",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(ts(bad[i], &us));
}

static void test_format_roundtrip(void **state)
{
    (void)state;
    /* Every day from 1900 to 2100 formats back to what it parsed from. */
    for (int64_t day = -25567; day < 47482; day += 1) {
        int64_t y;
        unsigned m, d;
        eng_civil_from_days(day, &y, &m, &d);
        assert_int_equal(eng_days_from_civil(y, m, d), day);
        int64_t us = day * 86400 * 1000000 + INT64_C(3723) * 1000000 + 7;
        char out[20];
        eng_format_timestamp(us, out);
        int64_t back;
        assert_true(eng_parse_timestamp(out, 19, &back));
        assert_int_equal(back, us - 7);
    }
}

static void test_integers(void **state)
{
    (void)state;
    int64_t v;
    int32_t w;
    assert_true(eng_parse_i64("9223372036854775807", 19, &v));
    assert_int_equal(v, INT64_MAX);
    assert_true(eng_parse_i64("-9223372036854775808", 20, &v));
    assert_true(v == INT64_MIN);
    assert_false(eng_parse_i64("9223372036854775808", 19, &v));
    assert_false(eng_parse_i64("", 0, &v));
    assert_false(eng_parse_i64("-", 1, &v));
    assert_false(eng_parse_i64(" 1", 2, &v));
    assert_false(eng_parse_i64("1e3", 3, &v));
    assert_false(eng_parse_i64("99999999999999999999", 20, &v));
    assert_true(eng_parse_i32("-2147483648", 11, &w));
    assert_int_equal(w, INT32_MIN);
    assert_false(eng_parse_i32("2147483648", 10, &w));
    /* Length-delimited: bytes after n are not read. */
    assert_true(eng_parse_i32("12345", 2, &w));
    assert_int_equal(w, 12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_format_roundtrip),
        cmocka_unit_test(test_integers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
