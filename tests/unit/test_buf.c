/* The capped buffer and JSON string escaping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"

static const char *json(struct eng_buf *b, const char *s, size_t n)
{
    eng_buf_reset(b);
    eng_buf_put_json_str(b, s, n);
    return b->data;
}

static void test_json_escaping(void **state)
{
    (void)state;
    struct eng_buf b = {0};
    assert_string_equal(json(&b, "plain", 5), "\"plain\"");
    assert_string_equal(json(&b, "a\"b\\c", 5), "\"a\\\"b\\\\c\"");
    assert_string_equal(json(&b, "\n\r\t\b\f", 5), "\"\\n\\r\\t\\b\\f\"");
    assert_string_equal(json(&b, "\x01\x1f", 2), "\"\\u0001\\u001f\"");
    assert_string_equal(json(&b, "a\0b", 3), "\"a\\u0000b\"");
    assert_string_equal(json(&b, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14),
                        "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    /* Invalid UTF-8 (lone continuation, overlong, surrogate, truncated) becomes U+FFFD. */
    assert_string_equal(json(&b, "\x80", 1), "\"\\ufffd\"");
    assert_string_equal(json(&b, "\xc0\xaf", 2), "\"\\ufffd\\ufffd\"");
    assert_string_equal(json(&b, "\xed\xa0\x80", 3), "\"\\ufffd\\ufffd\\ufffd\"");
    assert_string_equal(json(&b, "x\xe2\x82", 3), "\"x\\ufffd\\ufffd\"");
    eng_buf_free(&b);
}

static void test_cap(void **state)
{
    (void)state;
    struct eng_buf b = {.cap = 10};
    eng_buf_puts(&b, "0123456789");
    assert_false(b.overflow);
    assert_int_equal(b.len, 10);
    eng_buf_putc(&b, 'x');
    assert_true(b.overflow);
    assert_int_equal(b.len, 10);
    eng_buf_reset(&b);
    assert_false(b.overflow);
    eng_buf_put_i64(&b, INT64_MIN);
    assert_true(b.overflow); /* 20 characters do not fit in 10 */
    b.cap = 0;
    eng_buf_reset(&b);
    eng_buf_put_i64(&b, INT64_MIN);
    assert_string_equal(b.data, "-9223372036854775808");
    eng_buf_reset(&b);
    eng_buf_printf(&b, "%s=%d", "k", 42);
    assert_string_equal(b.data, "k=42");
    eng_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
