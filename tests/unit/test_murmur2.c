/* murmur2 and the key partitioner against Kafka's Java client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/murmur2.h"

/* The vectors of Kafka's UtilsTest.testMurmur2 (clients/src/test/.../utils/UtilsTest.java). */
static void test_kafka_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        int32_t hash;
    } v[] = {
        {"21", -973932308},
        {"foobar", -790332482},
        {"a-little-bit-long-string", -985981536},
        {"a-little-bit-longer-string", -1486304829},
        {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        assert_int_equal(eng_murmur2(v[i].key, strlen(v[i].key)), v[i].hash);
    static const char abc[] = {'a', 'b', 'c'};
    assert_int_equal(eng_murmur2(abc, sizeof(abc)), 479470107);
}

/* Every tail length (0..3 bytes past the last word) and bytes with the high bit set, which
 * Java sign-extends before masking with 0xff. */
static void test_tails_and_high_bytes(void **state)
{
    (void)state;
    assert_int_equal(eng_murmur2("", 0), 275646681);
    const unsigned char high[] = {0x80, 0xff, 0xfe, 0x81, 0xc3};
    /* Computed by Utils.murmur2 on (byte)0x80, (byte)0xff, (byte)0xfe, (byte)0x81, (byte)0xc3. */
    assert_int_equal(eng_murmur2(high, sizeof(high)), 1072503713);
}

static void test_partition(void **state)
{
    (void)state;
    /* toPositive(-973932308) = 1173551340; % 6 = 0 */
    assert_int_equal(eng_kafka_partition("21", 2, 6), (int32_t)((-973932308 & 0x7fffffff) % 6));
    assert_int_equal(eng_kafka_partition("abc", 3, 1), 0);
    for (int n = 1; n < 50; n++) {
        int32_t p = eng_kafka_partition("foobar", 6, n);
        assert_true(p >= 0 && p < n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kafka_vectors),
        cmocka_unit_test(test_tails_and_high_bytes),
        cmocka_unit_test(test_partition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
