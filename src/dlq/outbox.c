/* The outbox drainer (outbox.h): a thread that replays the outbox's rows a slice at a time,
 * waits while the outbox is empty, and backs off while the API takes nothing. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "../core/backoff.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "outbox.h"
#include "replay.h"

/* Rows one replay call takes: the stop flag is looked at between calls. */
#define SLICE_ROWS 10000

struct eng_outbox {
    struct eng_outbox_options opt;
    struct eng_dlq *q;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_bool stop;
    struct eng_backoff backoff;
    struct eng_gauge *m_pending, *m_oldest;
    struct eng_counter *m_delivered, *m_moved;
};

static void say_log(void *ctx, const char *line)
{
    (void)ctx;
    eng_warn("msg=\"outbox\" detail=\"%s\"", line);
}

/* Sleeps us, or less when stopped. */
static void nap(struct eng_outbox *o, int64_t us)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ns = ts.tv_nsec + (us % 1000000) * 1000;
    ts.tv_sec += us / 1000000 + ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_mutex_lock(&o->lock);
    if (!atomic_load(&o->stop))
        pthread_cond_timedwait(&o->cond, &o->lock, &ts);
    pthread_mutex_unlock(&o->lock);
}

/* Replays one slice of the outbox. Returns the rows the API took. */
static int64_t drain_slice(struct eng_outbox *o)
{
    struct eng_dlq_replay_options r = {
        .origin = ENG_DLQ_OUTBOX,
        .failed_origin = "http",
        .limit = SLICE_ROWS,
        .request_size = o->opt.request_size,
        .scratch = o->opt.scratch,
        .write = o->opt.write,
        .write_ctx = o->opt.ctx,
        .say = say_log,
    };
    struct eng_dlq_replay_totals t;
    eng_dlq_replay(o->q, &r, &t);
    eng_counter_add(o->m_delivered, (uint64_t)t.replayed);
    eng_counter_add(o->m_moved, (uint64_t)t.failed);
    if (t.failed > 0)
        eng_warn("msg=\"outbox events moved to the dead letters\" events=%lld",
                 (long long)t.failed);
    return t.replayed;
}

static void *drain_main(void *arg)
{
    struct eng_outbox *o = arg;
    int64_t idle = o->opt.idle_poll_us > 0 ? o->opt.idle_poll_us : 1000000;
    while (!atomic_load(&o->stop)) {
        struct eng_error err;
        int64_t pending;
        double oldest_s;
        if (eng_dlq_origin_stats(o->q, ENG_DLQ_OUTBOX, &pending, &oldest_s, &err) != 0) {
            eng_warn("msg=\"outbox: could not read the table\" error=\"%s\"", err.msg);
            nap(o, eng_backoff_next(&o->backoff));
            continue;
        }
        eng_gauge_set(o->m_pending, pending);
        eng_gauge_set(o->m_oldest, (int64_t)(oldest_s * 1000));
        if (pending == 0) {
            eng_backoff_reset(&o->backoff);
            nap(o, idle);
        } else if (drain_slice(o) > 0) {
            eng_backoff_reset(&o->backoff);
        } else if (!atomic_load(&o->stop)) {
            nap(o, eng_backoff_next(&o->backoff)); /* the API takes nothing now */
        }
    }
    return NULL;
}

struct eng_outbox *eng_outbox_start(const struct eng_outbox_options *opt, struct eng_error *err)
{
    struct eng_outbox *o = eng_calloc(1, sizeof(*o));
    o->opt = *opt;
    o->q = eng_dlq_create(opt->conninfo, opt->table);
    eng_backoff_init(&o->backoff, 200000, 30000000, (uint64_t)eng_clock_mono_us());
    pthread_mutex_init(&o->lock, NULL);
    pthread_cond_init(&o->cond, NULL);
    o->m_pending = eng_metrics_gauge("engage_http_outbox_pending", NULL,
                                     "Events in the HTTP sink's outbox, not yet sent");
    o->m_oldest = eng_metrics_gauge_scaled("engage_http_outbox_oldest_seconds", NULL,
                                           "Age of the oldest event in the outbox", 3);
    o->m_delivered = eng_metrics_counter("engage_http_outbox_delivered_total", NULL,
                                         "Outbox events the API acknowledged");
    o->m_moved = eng_metrics_counter("engage_http_outbox_dead_total", NULL,
                                     "Outbox events refused or failed past the retry budget: "
                                     "moved to the dead letters");
    if (pthread_create(&o->thread, NULL, drain_main, o) != 0) {
        eng_error_set(err, ENG_EIO, false, "could not start the outbox thread");
        eng_dlq_destroy(o->q);
        free(o);
        return NULL;
    }
    return o;
}

void eng_outbox_stop(struct eng_outbox *o)
{
    if (o == NULL)
        return;
    pthread_mutex_lock(&o->lock);
    atomic_store(&o->stop, true);
    pthread_cond_broadcast(&o->cond);
    pthread_mutex_unlock(&o->lock);
    if (o->opt.cancel != NULL)
        o->opt.cancel(o->opt.ctx);
    pthread_join(o->thread, NULL);
    pthread_cond_destroy(&o->cond);
    pthread_mutex_destroy(&o->lock);
    eng_dlq_destroy(o->q);
    free(o);
}
