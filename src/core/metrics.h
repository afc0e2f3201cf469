/* engage: the process-wide metrics registry, rendered as Prometheus text.
 * Ownership: the registry owns every metric; pointers returned by the register calls stay
 * valid for the life of the process. Registration may happen from any thread; updates are
 * lock-free atomics. */
#ifndef ENG_METRICS_H
#define ENG_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "../core/buf.h"

struct eng_counter {
    atomic_uint_fast64_t v;
};

struct eng_gauge {
    atomic_int_fast64_t v;
};

#define ENG_HIST_BUCKETS 16

/* Latency histogram with fixed buckets in milliseconds (0.5 ms .. 60 s). */
struct eng_histogram {
    atomic_uint_fast64_t buckets[ENG_HIST_BUCKETS + 1]; /* the last is +Inf */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_us;
};

/* Returns the metric named name with the given labels (a Prometheus label list without
 * braces such as `sink="redis"`, or NULL), creating it on first use. help is the HELP text of
 * the metric family. The same name and labels always return the same pointer. */
struct eng_counter *eng_metrics_counter(const char *name, const char *labels, const char *help);
struct eng_gauge *eng_metrics_gauge(const char *name, const char *labels, const char *help);
struct eng_histogram *eng_metrics_histogram(const char *name, const char *labels, const char *help);

/* A gauge kept as an integer in units of 10^-decimals (decimals 0..9) and rendered in whole
 * units: set 1234 on one of 3 decimals and it renders 1.234. For base units (seconds) where
 * the value is measured finer (milliseconds). The same name and labels return the same
 * pointer; decimals is fixed at first registration. */
struct eng_gauge *eng_metrics_gauge_scaled(const char *name, const char *labels, const char *help,
                                           unsigned decimals);

static inline void eng_counter_add(struct eng_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}
static inline uint64_t eng_counter_get(struct eng_counter *c)
{
    return atomic_load_explicit(&c->v, memory_order_relaxed);
}
static inline void eng_gauge_set(struct eng_gauge *g, int64_t v)
{
    atomic_store_explicit(&g->v, v, memory_order_relaxed);
}
static inline void eng_gauge_add(struct eng_gauge *g, int64_t v)
{
    atomic_fetch_add_explicit(&g->v, v, memory_order_relaxed);
}
static inline int64_t eng_gauge_get(struct eng_gauge *g)
{
    return atomic_load_explicit(&g->v, memory_order_relaxed);
}

/* Records one observation of us microseconds. */
void eng_histogram_observe(struct eng_histogram *h, int64_t us);

/* The value below which fraction q (0..1) of observations fall, estimated from the buckets
 * (upper bound of the bucket), in microseconds; 0 when empty. */
int64_t eng_histogram_quantile_us(struct eng_histogram *h, double q);

/* Appends every metric in Prometheus text exposition format. */
void eng_metrics_render(struct eng_buf *out);

#endif
