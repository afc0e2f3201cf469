/* Unit tests for the metrics registry and its Prometheus text rendering. The registry is
 * process-wide, so each test uses metric names of its own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/metrics.h"

static char *render(void)
{
    struct eng_buf b = {0};
    eng_metrics_render(&b);
    assert_false(b.overflow);
    assert_non_null(b.data);
    return b.data;
}

/* Asserts that text has line as one whole line. */
static void assert_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return;
    }
    fail_msg("line \"%s\" not found in:\n%s", line, text);
}

static const char *find_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return p;
    }
    return NULL;
}

static void test_counter(void **state)
{
    (void)state;
    struct eng_counter *c = eng_metrics_counter("t_counter_total", NULL, "A test counter.");
    /* the same name and labels give the same metric; NULL labels equal "" */
    assert_ptr_equal(c, eng_metrics_counter("t_counter_total", NULL, "ignored"));
    assert_ptr_equal(c, eng_metrics_counter("t_counter_total", "", NULL));
    eng_counter_add(c, 3);
    eng_counter_add(c, 39);
    assert_int_equal(eng_counter_get(c), 42);

    struct eng_counter *l = eng_metrics_counter("t_counter_total", "sink=\"x\"", NULL);
    assert_ptr_not_equal(c, l);
    eng_counter_add(l, 7);

    char *text = render();
    assert_line(text, "# HELP t_counter_total A test counter.");
    assert_line(text, "# TYPE t_counter_total counter");
    assert_line(text, "t_counter_total 42");
    assert_line(text, "t_counter_total{sink=\"x\"} 7");
    free(text);
}

static void test_gauge(void **state)
{
    (void)state;
    struct eng_gauge *g = eng_metrics_gauge("t_gauge", "q=\"1\"", "A test gauge.");
    eng_gauge_set(g, 10);
    eng_gauge_add(g, -25);
    assert_int_equal(eng_gauge_get(g), -15);
    char *text = render();
    assert_line(text, "# TYPE t_gauge gauge");
    assert_line(text, "t_gauge{q=\"1\"} -15");
    free(text);
}

/* A scaled gauge renders its integer in whole units, exactly: the base-unit rule (seconds)
 * without losing the milliseconds. */
static void test_gauge_scaled(void **state)
{
    (void)state;
    struct eng_gauge *g = eng_metrics_gauge_scaled("t_scaled_seconds", NULL, "Scaled.", 3);
    eng_gauge_set(g, 1234);
    char *text = render();
    assert_line(text, "t_scaled_seconds 1.234");
    free(text);
    eng_gauge_set(g, 5);
    text = render();
    assert_line(text, "t_scaled_seconds 0.005");
    free(text);
    eng_gauge_set(g, -30080);
    text = render();
    assert_line(text, "t_scaled_seconds -30.080");
    free(text);
    eng_gauge_set(g, 0);
    text = render();
    assert_line(text, "t_scaled_seconds 0.000");
    free(text);
}

static void test_histogram(void **state)
{
    (void)state;
    struct eng_histogram *h =
        eng_metrics_histogram("t_latency_seconds", "sink=\"ch\"", "A test histogram.");
    eng_histogram_observe(h, 100);       /* 0.1 ms: first bucket (le 0.0005) */
    eng_histogram_observe(h, 500);       /* exactly on the bound: still le 0.0005 */
    eng_histogram_observe(h, 3000);      /* 3 ms: le 0.005 */
    eng_histogram_observe(h, 3000000);   /* 3 s: le 5 */
    eng_histogram_observe(h, 120000000); /* 2 min: only +Inf */
    eng_histogram_observe(h, -5);        /* clamped to 0 */

    char *text = render();
    assert_line(text, "# TYPE t_latency_seconds histogram");
    /* buckets are cumulative and end with +Inf == count */
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"0.0005\"} 3");
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"0.001\"} 3");
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"0.002\"} 3");
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"0.005\"} 4");
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"2.5\"} 4");
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"5\"} 5");
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"60\"} 5");
    assert_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"+Inf\"} 6");
    assert_line(text, "t_latency_seconds_count{sink=\"ch\"} 6");
    /* 123.0036 s; compared with a tolerance, as %g may round it */
    const char *sum = strstr(text, "\nt_latency_seconds_sum{sink=\"ch\"} ");
    assert_non_null(sum);
    double sum_s = strtod(strchr(sum + 1, ' ') + 1, NULL);
    assert_true(sum_s > 123.0036 - 1e-3 && sum_s < 123.0036 + 1e-3);

    /* every bucket line is >= the one before it */
    const char *p = find_line(text, "t_latency_seconds_bucket{sink=\"ch\",le=\"0.0005\"} 3");
    unsigned long prev = 0;
    int lines = 0;
    while (p != NULL && strncmp(p, "t_latency_seconds_bucket{sink=\"ch\"", 34) == 0) {
        const char *sp = strchr(p, ' ');
        unsigned long v = strtoul(sp + 1, NULL, 10);
        assert_true(v >= prev);
        prev = v;
        lines++;
        p = strchr(p, '\n');
        p = p != NULL ? p + 1 : NULL;
    }
    assert_int_equal(lines, ENG_HIST_BUCKETS + 1);
    free(text);

    /* the quantile is the upper bound of the bucket holding it */
    assert_int_equal(eng_histogram_quantile_us(h, 0.0), 500);
    assert_int_equal(eng_histogram_quantile_us(h, 0.5), 5000); /* rank 3 is the 4th: 3 ms */
    struct eng_histogram *empty = eng_metrics_histogram("t_empty_seconds", NULL, "Empty.");
    assert_int_equal(eng_histogram_quantile_us(empty, 0.99), 0);
    text = render();
    assert_line(text, "t_empty_seconds_bucket{le=\"+Inf\"} 0");
    assert_line(text, "t_empty_seconds_count 0");
    free(text);
}

static void test_family_grouping(void **state)
{
    (void)state;
    /* registered interleaved: a, b, a again; a's series must render as one block */
    eng_counter_add(eng_metrics_counter("t_fam_a_total", "k=\"1\"", "Family a."), 1);
    eng_counter_add(eng_metrics_counter("t_fam_b_total", "k=\"1\"", "Family b."), 2);
    eng_counter_add(eng_metrics_counter("t_fam_a_total", "k=\"2\"", NULL), 3);
    eng_counter_add(eng_metrics_counter("t_fam_b_total", "k=\"2\"", NULL), 4);
    eng_counter_add(eng_metrics_counter("t_fam_a_total", "k=\"3\"", NULL), 5);

    char *text = render();
    const char *help_a = find_line(text, "# HELP t_fam_a_total Family a.");
    const char *type_a = find_line(text, "# TYPE t_fam_a_total counter");
    const char *a1 = find_line(text, "t_fam_a_total{k=\"1\"} 1");
    const char *a2 = find_line(text, "t_fam_a_total{k=\"2\"} 3");
    const char *a3 = find_line(text, "t_fam_a_total{k=\"3\"} 5");
    const char *help_b = find_line(text, "# HELP t_fam_b_total Family b.");
    const char *b1 = find_line(text, "t_fam_b_total{k=\"1\"} 2");
    const char *b2 = find_line(text, "t_fam_b_total{k=\"2\"} 4");
    assert_non_null(help_a);
    assert_non_null(type_a);
    assert_non_null(a1);
    assert_non_null(a2);
    assert_non_null(a3);
    assert_non_null(help_b);
    assert_non_null(b1);
    assert_non_null(b2);
    /* HELP and TYPE once per family, right before its series, which are contiguous */
    assert_true(help_a < type_a && type_a < a1 && a1 < a2 && a2 < a3);
    assert_true(a3 < help_b && help_b < b1 && b1 < b2);
    const char *next = strchr(a1, '\n') + 1;
    assert_ptr_equal(next, a2);
    next = strchr(a2, '\n') + 1;
    assert_ptr_equal(next, a3);
    assert_null(strstr(help_a + 1, "# HELP t_fam_a_total"));
    assert_null(strstr(help_b + 1, "# HELP t_fam_b_total"));
    free(text);
}

static void test_render_appends(void **state)
{
    (void)state;
    struct eng_buf b = {0};
    eng_buf_puts(&b, "prefix\n");
    eng_metrics_render(&b);
    assert_int_equal(strncmp(b.data, "prefix\n# HELP ", 14), 0);
    assert_int_equal(b.data[b.len - 1], '\n');
    eng_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter),        cmocka_unit_test(test_gauge),
        cmocka_unit_test(test_histogram),      cmocka_unit_test(test_family_grouping),
        cmocka_unit_test(test_render_appends), cmocka_unit_test(test_gauge_scaled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
