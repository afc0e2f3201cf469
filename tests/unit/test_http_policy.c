/* Unit tests of the HTTP sink's pure policy: classification, the retry schedule (full jitter,
 * cap, Retry-After as a lower bound, the budget), Retry-After parsing and the circuit breaker.
 * Time is a fake clock the tests move by hand; randomness comes from injected sources. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sink/http_policy.h"

#define MS  1000LL
#define SEC 1000000LL

/* A random source returning scripted values in turn. */
struct script {
    const uint64_t *v;
    size_t n;
    size_t i;
};

static uint64_t scripted(void *ctx)
{
    struct script *s = ctx;
    uint64_t x = s->v[s->i % s->n];
    s->i++;
    return x;
}

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

static struct eng_http_retry_policy policy(uint32_t attempts, int64_t budget_us)
{
    struct eng_http_retry_policy p = {
        .max_attempts = attempts,
        .budget_us = budget_us,
        .base_us = 100 * MS,
        .cap_us = 1 * SEC,
        .min_attempt_us = 0,
    };
    return p;
}

static void test_classify(void **state)
{
    (void)state;
    assert_int_equal(eng_http_classify(false, 200), ENG_HTTP_DELIVERED);
    assert_int_equal(eng_http_classify(false, 204), ENG_HTTP_DELIVERED);
    assert_int_equal(eng_http_classify(false, 408), ENG_HTTP_RETRY);
    assert_int_equal(eng_http_classify(false, 429), ENG_HTTP_RETRY);
    assert_int_equal(eng_http_classify(false, 500), ENG_HTTP_RETRY);
    assert_int_equal(eng_http_classify(false, 503), ENG_HTTP_RETRY);
    assert_int_equal(eng_http_classify(false, 599), ENG_HTTP_RETRY);
    assert_int_equal(eng_http_classify(false, 400), ENG_HTTP_REJECTED);
    assert_int_equal(eng_http_classify(false, 401), ENG_HTTP_REJECTED);
    assert_int_equal(eng_http_classify(false, 404), ENG_HTTP_REJECTED);
    assert_int_equal(eng_http_classify(false, 413), ENG_HTTP_REJECTED);
    assert_int_equal(eng_http_classify(false, 301), ENG_HTTP_REJECTED);
    assert_int_equal(eng_http_classify(true, 0), ENG_HTTP_RETRY);
    assert_int_equal(eng_http_classify(true, 200), ENG_HTTP_RETRY);

    assert_true(eng_http_breaker_failure(true, 0));
    assert_true(eng_http_breaker_failure(false, 500));
    assert_true(eng_http_breaker_failure(false, 408));
    assert_false(eng_http_breaker_failure(false, 429));
    assert_false(eng_http_breaker_failure(false, 400));
    assert_false(eng_http_breaker_failure(false, 200));
}

/* The schedule's ceiling: base, 2 base, 4 base, ... then the cap; every delay within it. */
static void test_backoff_ceiling_and_cap(void **state)
{
    (void)state;
    struct eng_http_retry_policy p = policy(100, 1000 * SEC);
    p.random = always_max;
    struct eng_http_retry r;
    int64_t now = 5 * SEC;
    eng_http_retry_start(&p, &r, now, 1);
    /* The ceiling doubles from base up to the cap; each delay is the source's value reduced
     * into [0, ceiling]. */
    const int64_t want[] = {100 * MS, 200 * MS, 400 * MS, 800 * MS, 1 * SEC, 1 * SEC, 1 * SEC};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int64_t ceiling = eng_backoff_ceiling(&r.backoff);
        assert_int_equal(ceiling, want[i]);
        eng_http_retry_attempt(&r, now, 10 * SEC);
        int64_t at = eng_http_retry_next(&p, &r, now, 0, NULL);
        assert_true(at >= now);
        assert_true(at - now <= want[i]);
        assert_int_equal(at - now, (int64_t)(UINT64_MAX % (uint64_t)(want[i] + 1)));
        now = at;
    }
}

/* Full jitter: the delay is uniform over [0, ceiling]; scripted values land where expected. */
static void test_backoff_full_jitter_scripted(void **state)
{
    (void)state;
    const uint64_t vals[] = {0, 100 * MS, 200 * MS + 1, 123456789};
    struct script sc = {vals, 4, 0};
    struct eng_http_retry_policy p = policy(100, 1000 * SEC);
    p.random = scripted;
    p.random_ctx = &sc;
    struct eng_http_retry r;
    eng_http_retry_start(&p, &r, 0, 1);
    eng_http_retry_attempt(&r, 0, SEC);
    assert_int_equal(eng_http_retry_next(&p, &r, 0, 0, NULL), 0); /* 0 % 100001 */
    eng_http_retry_attempt(&r, 0, SEC);
    assert_int_equal(eng_http_retry_next(&p, &r, 0, 0, NULL), 100 * MS); /* ceiling 200 ms */
    eng_http_retry_attempt(&r, 0, SEC);
    /* ceiling 400 ms: 200001 % 400001 */
    assert_int_equal(eng_http_retry_next(&p, &r, 0, 0, NULL), 200 * MS + 1);
    eng_http_retry_attempt(&r, 0, SEC);
    /* ceiling 800 ms */
    assert_int_equal(eng_http_retry_next(&p, &r, 0, 0, NULL), 123456789 % (800 * MS + 1));
    assert_int_equal(sc.i, 4);
}

/* With the built-in generator the delays spread over the whole range: some near 0, some near
 * the ceiling, mean near half of it (full jitter, not "equal jitter"). */
static void test_backoff_full_jitter_spread(void **state)
{
    (void)state;
    struct eng_http_retry_policy p = policy(2, 1000 * SEC);
    p.cap_us = 100 * MS;
    int64_t lo = INT64_MAX, hi = 0, sum = 0;
    const int n = 20000;
    for (int i = 0; i < n; i++) {
        struct eng_http_retry r;
        eng_http_retry_start(&p, &r, 0, (uint64_t)i * 7919 + 1);
        eng_http_retry_attempt(&r, 0, SEC);
        int64_t d = eng_http_retry_next(&p, &r, 0, 0, NULL);
        assert_true(d >= 0 && d <= 100 * MS);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        sum += d;
    }
    assert_true(lo < 2 * MS);
    assert_true(hi > 98 * MS);
    int64_t mean = sum / n;
    assert_true(mean > 45 * MS && mean < 55 * MS);
}

static void test_retry_after_is_lower_bound(void **state)
{
    (void)state;
    struct eng_http_retry_policy p = policy(10, 60 * SEC);
    p.random = always_zero; /* the jittered delay alone would be 0 */
    struct eng_http_retry r;
    int64_t now = 1000 * SEC;
    eng_http_retry_start(&p, &r, now, 1);
    eng_http_retry_attempt(&r, now, SEC);
    assert_int_equal(eng_http_retry_next(&p, &r, now, 2 * SEC, NULL), now + 2 * SEC);

    /* A larger backoff wins over a smaller Retry-After. */
    p.random = always_max;
    eng_http_retry_start(&p, &r, now, 1);
    for (int i = 0; i < 4; i++) {
        eng_http_retry_attempt(&r, now, SEC);
        eng_http_retry_next(&p, &r, now, 0, NULL);
    }
    eng_http_retry_attempt(&r, now, SEC);
    int64_t ceiling = eng_backoff_ceiling(&r.backoff);
    assert_int_equal(ceiling, 1 * SEC);
    int64_t at = eng_http_retry_next(&p, &r, now, 1 * MS, NULL);
    assert_int_equal(at - now, (int64_t)(UINT64_MAX % (uint64_t)(ceiling + 1)));
}

static void test_giveup_attempts_and_time(void **state)
{
    (void)state;
    enum eng_http_giveup why;
    struct eng_http_retry_policy p = policy(3, 60 * SEC);
    p.random = always_zero;
    struct eng_http_retry r;
    eng_http_retry_start(&p, &r, 0, 1);
    for (int i = 0; i < 2; i++) {
        eng_http_retry_attempt(&r, 0, SEC);
        assert_int_equal(eng_http_retry_next(&p, &r, 0, 0, &why), 0);
        assert_int_equal(why, ENG_HTTP_GIVEUP_NONE);
        assert_true(eng_http_retry_alive(&p, &r, 0));
    }
    eng_http_retry_attempt(&r, 0, SEC);
    assert_int_equal(eng_http_retry_next(&p, &r, 0, 0, &why), -1);
    assert_int_equal(why, ENG_HTTP_GIVEUP_ATTEMPTS);
    assert_int_equal(r.attempts, 3);
    assert_false(eng_http_retry_alive(&p, &r, 0));

    /* A Retry-After past the budget gives up at once instead of waiting for nothing. */
    p = policy(10, 5 * SEC);
    p.random = always_zero;
    eng_http_retry_start(&p, &r, 0, 1);
    eng_http_retry_attempt(&r, 0, SEC);
    assert_int_equal(eng_http_retry_next(&p, &r, 1 * SEC, 10 * SEC, &why), -1);
    assert_int_equal(why, ENG_HTTP_GIVEUP_TIME);

    /* min_attempt_us: no attempt starts with less than that left of the budget. */
    p.min_attempt_us = 500 * MS;
    eng_http_retry_start(&p, &r, 0, 1);
    eng_http_retry_attempt(&r, 0, SEC);
    assert_int_equal(eng_http_retry_next(&p, &r, 0, 4500 * MS, &why), 4500 * MS);
    eng_http_retry_attempt(&r, 4500 * MS, SEC);
    assert_int_equal(eng_http_retry_next(&p, &r, 4500 * MS, 1, &why), -1);
    assert_int_equal(why, ENG_HTTP_GIVEUP_TIME);
    assert_true(eng_http_retry_alive(&p, &r, 4500 * MS));
    assert_false(eng_http_retry_alive(&p, &r, 4500 * MS + 1));
}

static void test_attempt_timeout_cut_to_budget(void **state)
{
    (void)state;
    struct eng_http_retry_policy p = policy(10, 10 * SEC);
    struct eng_http_retry r;
    eng_http_retry_start(&p, &r, 100 * SEC, 1);
    assert_int_equal(r.deadline_us, 110 * SEC);
    assert_int_equal(eng_http_retry_attempt(&r, 100 * SEC, 3 * SEC), 3 * SEC);
    assert_int_equal(eng_http_retry_attempt(&r, 108 * SEC, 3 * SEC), 2 * SEC);
    assert_int_equal(eng_http_retry_attempt(&r, 110 * SEC, 3 * SEC), 1 * MS); /* floor */
    assert_int_equal(r.attempts, 3);
}

static void test_parse_retry_after(void **state)
{
    (void)state;
    int64_t d = -1;
    const int64_t t = 784111777LL * SEC; /* Sun, 06 Nov 1994 08:49:37 GMT */
    assert_true(eng_http_parse_retry_after("2", 0, &d));
    assert_int_equal(d, 2 * SEC);
    assert_true(eng_http_parse_retry_after("  120 \r\n", 0, &d));
    assert_int_equal(d, 120 * SEC);
    assert_true(eng_http_parse_retry_after("0", 0, &d));
    assert_int_equal(d, 0);
    assert_true(eng_http_parse_retry_after("99999999999", 0, &d));
    assert_int_equal(d, 86400 * SEC); /* capped at a day */

    assert_true(eng_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", t - 10 * SEC, &d));
    assert_int_equal(d, 10 * SEC);
    assert_true(eng_http_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", t - 3 * SEC, &d));
    assert_int_equal(d, 3 * SEC);
    assert_true(eng_http_parse_retry_after("Sun Nov  6 08:49:37 1994", t - 500 * MS, &d));
    assert_int_equal(d, 500 * MS);
    /* A date in the past means "now". */
    assert_true(eng_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", t + 60 * SEC, &d));
    assert_int_equal(d, 0);
    /* A date after a leap day, to exercise the calendar arithmetic. */
    assert_true(
        eng_http_parse_retry_after("Fri, 01 Mar 2024 00:00:02 GMT", 1709251200LL * SEC, &d));
    assert_int_equal(d, 2 * SEC);

    assert_false(eng_http_parse_retry_after("", 0, &d));
    assert_false(eng_http_parse_retry_after("-1", 0, &d));
    assert_false(eng_http_parse_retry_after("soon", 0, &d));
    assert_false(eng_http_parse_retry_after("1.5", 0, &d));
    assert_false(eng_http_parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", 0, &d));
    assert_false(eng_http_parse_retry_after("Sun, 06 Nov 1994 25:49:37 GMT", 0, &d));
    assert_false(eng_http_parse_retry_after(NULL, 0, &d));
}

static void test_breaker_transitions(void **state)
{
    (void)state;
    struct eng_http_breaker b;
    int64_t clock = 1000 * SEC; /* the injected clock */
    eng_http_breaker_init(&b, 3, 5 * SEC);
    assert_int_equal(b.state, ENG_HTTP_BREAKER_CLOSED);

    /* Two failures, then a success: the count restarts. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(eng_http_breaker_acquire(&b, clock), ENG_HTTP_BREAKER_PASS);
        assert_false(eng_http_breaker_record(&b, clock, true, false));
    }
    assert_false(eng_http_breaker_record(&b, clock, false, false));
    assert_int_equal(b.failures, 0);
    for (int i = 0; i < 2; i++)
        assert_false(eng_http_breaker_record(&b, clock, true, false));
    assert_int_equal(b.state, ENG_HTTP_BREAKER_CLOSED);

    /* The third consecutive failure opens it. */
    clock += 1 * SEC;
    assert_true(eng_http_breaker_record(&b, clock, true, false));
    assert_int_equal(b.state, ENG_HTTP_BREAKER_OPEN);
    assert_int_equal(eng_http_breaker_retry_at(&b), clock + 5 * SEC);

    /* Open: nothing passes until open_us has passed; late answers change nothing. */
    assert_int_equal(eng_http_breaker_acquire(&b, clock), ENG_HTTP_BREAKER_DENY);
    assert_int_equal(eng_http_breaker_acquire(&b, clock + 5 * SEC - 1), ENG_HTTP_BREAKER_DENY);
    assert_false(eng_http_breaker_record(&b, clock + 1, false, false));
    assert_false(eng_http_breaker_record(&b, clock + 1, true, false));
    assert_int_equal(b.state, ENG_HTTP_BREAKER_OPEN);

    /* Half-open: exactly one probe. */
    clock += 5 * SEC;
    assert_int_equal(eng_http_breaker_acquire(&b, clock), ENG_HTTP_BREAKER_PROBE);
    assert_int_equal(b.state, ENG_HTTP_BREAKER_HALF_OPEN);
    assert_int_equal(eng_http_breaker_retry_at(&b), 0);
    assert_int_equal(eng_http_breaker_acquire(&b, clock), ENG_HTTP_BREAKER_DENY);
    assert_int_equal(eng_http_breaker_acquire(&b, clock + 60 * SEC), ENG_HTTP_BREAKER_DENY);

    /* The probe fails: open again, for a full period from the failure. */
    clock += 2 * SEC;
    assert_true(eng_http_breaker_record(&b, clock, true, true));
    assert_int_equal(b.state, ENG_HTTP_BREAKER_OPEN);
    assert_int_equal(eng_http_breaker_retry_at(&b), clock + 5 * SEC);
    assert_int_equal(eng_http_breaker_acquire(&b, clock + 4 * SEC), ENG_HTTP_BREAKER_DENY);

    /* Next probe succeeds: closed, and requests pass freely again. */
    clock += 5 * SEC;
    assert_int_equal(eng_http_breaker_acquire(&b, clock), ENG_HTTP_BREAKER_PROBE);
    assert_true(eng_http_breaker_record(&b, clock, false, true));
    assert_int_equal(b.state, ENG_HTTP_BREAKER_CLOSED);
    assert_int_equal(b.failures, 0);
    assert_int_equal(eng_http_breaker_acquire(&b, clock), ENG_HTTP_BREAKER_PASS);
    assert_int_equal(eng_http_breaker_acquire(&b, clock), ENG_HTTP_BREAKER_PASS);
    /* closed->open, open->half, half->open, open->half, half->closed */
    assert_int_equal(b.transitions, 5);
}

static void test_breaker_disabled(void **state)
{
    (void)state;
    struct eng_http_breaker b;
    eng_http_breaker_init(&b, 0, 5 * SEC);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(eng_http_breaker_acquire(&b, i), ENG_HTTP_BREAKER_PASS);
        assert_false(eng_http_breaker_record(&b, i, true, false));
    }
    assert_int_equal(b.state, ENG_HTTP_BREAKER_CLOSED);
}

/* Issue 8, item 5: --http-rate spaces the requests of the whole sink. */
static void test_rate_spaces_requests(void **state)
{
    (void)state;
    struct eng_http_rate r;
    eng_http_rate_init(&r, 4, 1); /* 4 per second: one every 250 ms, no burst */
    int64_t now = 10 * SEC;
    assert_int_equal(eng_http_rate_ready_at(&r, now), now); /* the first goes at once */
    eng_http_rate_take(&r, now);
    assert_int_equal(eng_http_rate_ready_at(&r, now), now + 250 * MS);
    assert_int_equal(eng_http_rate_ready_at(&r, now + 100 * MS), now + 250 * MS);
    eng_http_rate_take(&r, now + 250 * MS);
    assert_int_equal(eng_http_rate_ready_at(&r, now + 250 * MS), now + 500 * MS);
    /* an idle time earns no burst: after 10 s, one at once, the next 250 ms later */
    now += 10 * SEC;
    assert_int_equal(eng_http_rate_ready_at(&r, now), now);
    eng_http_rate_take(&r, now);
    assert_int_equal(eng_http_rate_ready_at(&r, now), now + 250 * MS);

    /* in any second at most `rate` requests start, taking each as soon as allowed */
    eng_http_rate_init(&r, 20, 1);
    int64_t t = 0, starts[100];
    for (int i = 0; i < 100; i++) {
        t = eng_http_rate_ready_at(&r, t);
        starts[i] = t;
        eng_http_rate_take(&r, t);
    }
    for (int i = 20; i < 100; i++)
        assert_true(starts[i] - starts[i - 20] >= SEC);

    /* a burst of 3, then the rate */
    eng_http_rate_init(&r, 10, 3);
    now = 50 * SEC;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(eng_http_rate_ready_at(&r, now), now);
        eng_http_rate_take(&r, now);
    }
    assert_int_equal(eng_http_rate_ready_at(&r, now), now + 100 * MS);

    /* 0 is no limit */
    eng_http_rate_init(&r, 0, 1);
    eng_http_rate_take(&r, now);
    eng_http_rate_take(&r, now);
    assert_int_equal(eng_http_rate_ready_at(&r, now), now);
    eng_http_rate_init(&r, 0.5, 1); /* one every 2 s */
    eng_http_rate_take(&r, now);
    assert_int_equal(eng_http_rate_ready_at(&r, now), now + 2 * SEC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_backoff_ceiling_and_cap),
        cmocka_unit_test(test_backoff_full_jitter_scripted),
        cmocka_unit_test(test_backoff_full_jitter_spread),
        cmocka_unit_test(test_retry_after_is_lower_bound),
        cmocka_unit_test(test_giveup_attempts_and_time),
        cmocka_unit_test(test_attempt_timeout_cut_to_budget),
        cmocka_unit_test(test_parse_retry_after),
        cmocka_unit_test(test_breaker_transitions),
        cmocka_unit_test(test_breaker_disabled),
        cmocka_unit_test(test_rate_spaces_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
