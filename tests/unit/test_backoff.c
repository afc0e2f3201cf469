/* Capped exponential backoff with full jitter, with an injected random source. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/backoff.h"

static uint64_t always_max(void *ctx)
{
    (void)ctx;
    return UINT64_MAX;
}

static uint64_t always_zero(void *ctx)
{
    (void)ctx;
    return 0;
}

static void test_schedule(void **state)
{
    (void)state;
    struct eng_backoff b;
    eng_backoff_init(&b, 100, 1000, 1);
    const int64_t ceilings[] = {100, 200, 400, 800, 1000, 1000, 1000};
    for (size_t i = 0; i < sizeof(ceilings) / sizeof(ceilings[0]); i++) {
        assert_int_equal(eng_backoff_ceiling(&b), ceilings[i]);
        int64_t d = eng_backoff_next(&b);
        assert_true(d >= 0 && d <= ceilings[i]);
    }
    eng_backoff_reset(&b);
    assert_int_equal(eng_backoff_ceiling(&b), 100);
}

static void test_injected_random(void **state)
{
    (void)state;
    struct eng_backoff b;
    eng_backoff_init(&b, 100, 1000, 1);
    b.random = always_zero;
    assert_int_equal(eng_backoff_next(&b), 0);
    b.random = always_max;
    /* UINT64_MAX % (200 + 1) */
    assert_int_equal(eng_backoff_next(&b), (int64_t)(UINT64_MAX % 201));
    /* Thousands of attempts never overflow and stay under the cap. */
    for (int i = 0; i < 10000; i++)
        assert_true(eng_backoff_next(&b) <= 1000);
}

static void test_jitter_spreads(void **state)
{
    (void)state;
    /* Full jitter: over many draws both halves of [0, ceiling] are used. */
    struct eng_backoff b;
    eng_backoff_init(&b, 1000, 1000, 12345);
    int low = 0, high = 0;
    for (int i = 0; i < 1000; i++) {
        int64_t d = eng_backoff_next(&b);
        if (d < 500)
            low++;
        else
            high++;
    }
    assert_true(low > 300 && high > 300);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_injected_random),
        cmocka_unit_test(test_jitter_spreads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
