#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

enum metric_kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

struct metric {
    struct metric *next;
    enum metric_kind kind;
    char *name;
    char *labels; /* may be empty */
    char *help;
    unsigned decimals; /* gauges: the value is in units of 10^-decimals */
    union {
        struct eng_counter counter;
        struct eng_gauge gauge;
        struct eng_histogram hist;
    } u;
};

/* Upper bounds of the histogram buckets, microseconds. */
static const int64_t bucket_le_us[ENG_HIST_BUCKETS] = {
    500,    1000,   2000,    5000,    10000,   25000,    50000,    100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metric *registry_head;
static struct metric **registry_tail = &registry_head;

static struct metric *lookup(enum metric_kind kind, const char *name, const char *labels,
                             const char *help)
{
    if (labels == NULL)
        labels = "";
    pthread_mutex_lock(&registry_lock);
    struct metric *m;
    for (m = registry_head; m != NULL; m = m->next) {
        if (strcmp(m->name, name) == 0 && strcmp(m->labels, labels) == 0)
            break;
    }
    if (m == NULL) {
        m = eng_calloc(1, sizeof(*m));
        m->kind = kind;
        m->name = eng_strdup(name);
        m->labels = eng_strdup(labels);
        m->help = eng_strdup(help ? help : "");
        /* Insert after the last metric of the same family, so each family renders as one
         * block with one HELP and TYPE line. */
        struct metric **at = registry_tail;
        for (struct metric **p = &registry_head; *p != NULL; p = &(*p)->next) {
            if (strcmp((*p)->name, name) == 0)
                at = &(*p)->next;
        }
        m->next = *at;
        *at = m;
        if (m->next == NULL)
            registry_tail = &m->next;
    } else if (m->kind != kind) {
        eng_die("metric \"%s\" registered with two kinds", name);
    }
    pthread_mutex_unlock(&registry_lock);
    return m;
}

struct eng_counter *eng_metrics_counter(const char *name, const char *labels, const char *help)
{
    return &lookup(KIND_COUNTER, name, labels, help)->u.counter;
}

struct eng_gauge *eng_metrics_gauge(const char *name, const char *labels, const char *help)
{
    return &lookup(KIND_GAUGE, name, labels, help)->u.gauge;
}

struct eng_gauge *eng_metrics_gauge_scaled(const char *name, const char *labels, const char *help,
                                           unsigned decimals)
{
    if (decimals > 9)
        eng_die("metric \"%s\": at most 9 decimals", name);
    struct metric *m = lookup(KIND_GAUGE, name, labels, help);
    pthread_mutex_lock(&registry_lock); /* render reads it under the lock */
    m->decimals = decimals;
    pthread_mutex_unlock(&registry_lock);
    return &m->u.gauge;
}

struct eng_histogram *eng_metrics_histogram(const char *name, const char *labels, const char *help)
{
    return &lookup(KIND_HISTOGRAM, name, labels, help)->u.hist;
}

void eng_histogram_observe(struct eng_histogram *h, int64_t us)
{
    if (us < 0)
        us = 0;
    int i = 0;
    while (i < ENG_HIST_BUCKETS && us > bucket_le_us[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)us, memory_order_relaxed);
}

int64_t eng_histogram_quantile_us(struct eng_histogram *h, double q)
{
    uint64_t total = atomic_load(&h->count);
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total);
    uint64_t seen = 0;
    for (int i = 0; i < ENG_HIST_BUCKETS; i++) {
        seen += atomic_load(&h->buckets[i]);
        if (seen > rank)
            return bucket_le_us[i];
    }
    return bucket_le_us[ENG_HIST_BUCKETS - 1];
}

static void render_name(struct eng_buf *out, const struct metric *m, const char *suffix,
                        const char *extra_label)
{
    eng_buf_puts(out, m->name);
    eng_buf_puts(out, suffix);
    bool any = m->labels[0] != '\0' || extra_label != NULL;
    if (!any)
        return;
    eng_buf_putc(out, '{');
    eng_buf_puts(out, m->labels);
    if (extra_label != NULL) {
        if (m->labels[0] != '\0')
            eng_buf_putc(out, ',');
        eng_buf_puts(out, extra_label);
    }
    eng_buf_putc(out, '}');
}

void eng_metrics_render(struct eng_buf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&registry_lock);
    const char *last_family = "";
    for (struct metric *m = registry_head; m != NULL; m = m->next) {
        if (strcmp(m->name, last_family) != 0) {
            eng_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
                           type_names[m->kind]);
            last_family = m->name;
        }
        switch (m->kind) {
        case KIND_COUNTER:
            render_name(out, m, "", NULL);
            eng_buf_printf(out, " %llu\n", (unsigned long long)eng_counter_get(&m->u.counter));
            break;
        case KIND_GAUGE: {
            int64_t v = eng_gauge_get(&m->u.gauge);
            render_name(out, m, "", NULL);
            if (m->decimals == 0) {
                eng_buf_printf(out, " %lld\n", (long long)v);
                break;
            }
            int64_t unit = 1;
            for (unsigned i = 0; i < m->decimals; i++)
                unit *= 10;
            /* In integers, so 1234 renders "1.234", never 1.2339999 */
            uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            eng_buf_printf(out, " %s%llu.%0*llu\n", v < 0 ? "-" : "",
                           (unsigned long long)(mag / (uint64_t)unit), (int)m->decimals,
                           (unsigned long long)(mag % (uint64_t)unit));
            break;
        }
        case KIND_HISTOGRAM: {
            uint64_t cum = 0;
            for (int i = 0; i <= ENG_HIST_BUCKETS; i++) {
                char le[48];
                cum += atomic_load(&m->u.hist.buckets[i]);
                if (i < ENG_HIST_BUCKETS)
                    snprintf(le, sizeof(le), "le=\"%g\"", (double)bucket_le_us[i] / 1e6);
                else
                    snprintf(le, sizeof(le), "le=\"+Inf\"");
                render_name(out, m, "_bucket", le);
                eng_buf_printf(out, " %llu\n", (unsigned long long)cum);
            }
            render_name(out, m, "_sum", NULL);
            eng_buf_printf(out, " %.17g\n", (double)atomic_load(&m->u.hist.sum_us) / 1e6);
            render_name(out, m, "_count", NULL);
            eng_buf_printf(out, " %llu\n", (unsigned long long)atomic_load(&m->u.hist.count));
            break;
        }
        }
    }
    pthread_mutex_unlock(&registry_lock);
}
