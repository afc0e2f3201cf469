#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/metrics.h"
#include "../core/backoff.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/durable.h"
#include "../core/pgtext.h"
#include "../dlq/dlq.h"
#include "pipeline.h"

/* Events one batch may have parked by a sink before the sink is taken to be broken rather
 * than the events bad: past it the pipeline stops instead of parking everything. */
#define MAX_PARKED_PER_BATCH 1000

/* Caps on what one write may merge of the batches waiting for a sink. */
#define MERGE_MAX_EVENTS 50000
#define MERGE_MAX_BYTES  ((size_t)64 << 20)

/* Where a sink is in one stream of the source's order. */
struct done_pos {
    uint32_t stream;
    uint64_t lsn;
    uint32_t seq;
};

struct sink_lane {
    struct eng_pipeline *p;
    struct eng_sink *sink;
    pthread_t thread;
    bool started;
    /* ring of queued batches, guarded by p->lock */
    struct eng_batch **ring;
    uint32_t head, count;
    size_t bytes;            /* of the queued batches */
    bool hurried;            /* the source waited spill_after_us on this full queue */
    struct eng_batch **take; /* the batches of the write in progress (this thread only) */
    pthread_cond_t not_empty;
    /* acknowledged state, guarded by p->lock */
    uint64_t acked_seq;
    uint64_t acked_position;
    /* Per stream (eng_event.stream), the last event this sink made durable (eng_event_after
     * order): an event at or before it is a redelivery, not written again. From the progress
     * file after a restart. Written by the lane's thread (and track_progress before start)
     * under p->lock. */
    struct done_pos *done;
    uint32_t ndone, capdone;
    /* Events of the write in progress, for a sink that groups events into requests (one with
     * merge_max_events): kept in the progress file, so that the first write after a restart
     * is the interrupted one again, cut the same way (the same requests, the same keys). */
    uint32_t inflight_n;
    uint32_t replay_n; /* from the file: the first write after the restart has this many */
    bool healthy;
    char last_error[sizeof(((struct eng_error *)0)->msg)];
    struct eng_dlq *dlq;     /* this lane's own connection to the dead-letter table, or NULL */
    uint32_t parked;         /* events parked while writing the current batch */
    int64_t denied_since_us; /* first of the ENG_EDENIED failures in a row (0: none) */
    /* metrics */
    struct eng_counter *m_batches, *m_events, *m_failures, *m_spilled, *m_parked;
    struct eng_histogram *m_latency, *m_write;
    struct eng_gauge *m_queue, *m_ready;
};

struct eng_pipeline {
    pthread_mutex_t lock;
    pthread_cond_t not_full; /* a lane popped */
    pthread_cond_t acked;    /* a lane acknowledged */
    struct sink_lane *lanes;
    size_t nlanes;
    uint32_t depth;
    size_t queue_bytes;
    int64_t backoff_base_us, backoff_cap_us;
    uint64_t next_seq;
    uint64_t submitted_position;
    int64_t spill_after_us;
    int64_t blocked_since_us; /* when submit first found a full queue; 0: not blocked */
    bool stopping;
    atomic_bool failed;
    struct eng_error failure; /* the first permanent error, guarded by lock */
    /* The source's connection, as it reports it (guarded by lock); NULL name: no source has
     * reported, and readiness is the sinks' alone. */
    const char *source_name;
    bool source_ok;
    char source_error[200];
    struct eng_gauge *m_source_connected;
    struct eng_histogram *m_batch_size;
    struct eng_counter *m_skipped;
    /* The progress file, rewritten after every acknowledgement (NULL: not kept). */
    pthread_mutex_t progress_lock; /* serializes writers of the file; taken before p->lock */
    char *progress_path;
    char *progress_identity;
};

/* Every condition variable here waits on the monotonic clock: a step of the wall clock must
 * not stretch or cut a backoff. */
static void cond_init(pthread_cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
}

static void deadline_from_now(struct timespec *ts, int64_t us)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    int64_t ns = ts->tv_nsec + (us % 1000000) * 1000;
    ts->tv_sec += (time_t)(us / 1000000 + ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

static void lane_set_health(struct sink_lane *l, bool ok, const char *msg);

/* A sink's report of one attempt inside a write (see eng_sink.report). */
static void lane_report(struct eng_sink *s, bool ok, const char *why)
{
    struct sink_lane *l = s->report_ctx;
    if (!ok)
        eng_counter_add(l->m_failures, 1);
    if (ok != l->healthy || !ok)
        lane_set_health(l, ok, ok ? "" : why);
}

static int lane_park(struct eng_sink *s, const struct eng_batch *b, const struct eng_event *e,
                     const char *reason, struct eng_error *err)
{
    struct sink_lane *l = s->park_ctx;
    char pos[48], lsn[24];
    eng_lsn_format(e->txn_lsn, lsn, sizeof(lsn));
    snprintf(pos, sizeof(pos), "%s#%u", lsn, e->txn_seq);
    int rc = eng_dlq_park_one(l->dlq, s->ops->name, pos, e->event_id, reason, eng_batch_json(b, e),
                              e->json.len, err);
    if (rc != 0)
        return rc;
    l->parked++;
    eng_counter_add(l->m_parked, 1);
    eng_warn("msg=\"event parked: the sink cannot hold it\" sink=%s event_id=%lld reason=\"%s\"",
             s->ops->name, (long long)e->event_id, reason);
    return 0;
}

struct eng_pipeline *eng_pipeline_create(struct eng_sink **sinks, size_t n,
                                         const struct eng_pipeline_options *opt,
                                         struct eng_error *err)
{
    if (n == 0) {
        eng_error_set(err, ENG_EINVAL, false, "no sink is configured");
        return NULL;
    }
    struct eng_pipeline *p = eng_calloc(1, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    cond_init(&p->not_full);
    cond_init(&p->acked);
    p->depth = opt && opt->queue_depth ? opt->queue_depth : 1024;
    p->queue_bytes = opt && opt->queue_bytes ? opt->queue_bytes : (size_t)128 << 20;
    p->backoff_base_us = opt && opt->backoff_base_us ? opt->backoff_base_us : 100000;
    p->backoff_cap_us = opt && opt->backoff_cap_us ? opt->backoff_cap_us : 10000000;
    p->next_seq = 1;
    p->spill_after_us = opt && opt->spill_after_us ? opt->spill_after_us : 500000;
    pthread_mutex_init(&p->progress_lock, NULL);
    p->m_skipped = eng_metrics_counter("engage_sink_skipped_events_total", NULL,
                                       "Redelivered events a sink had already made durable");
    p->m_source_connected =
        eng_metrics_gauge("engage_source_connected", NULL,
                          "1 while the source is connected and streaming, 0 while it is not");
    p->m_batch_size = eng_metrics_histogram("engage_batch_close_age_seconds", NULL,
                                            "Age of a batch when it was submitted");
    p->lanes = eng_calloc(n, sizeof(*p->lanes));
    p->nlanes = n;
    for (size_t i = 0; i < n; i++) {
        struct sink_lane *l = &p->lanes[i];
        char labels[64];
        l->p = p;
        l->sink = sinks[i];
        sinks[i] = NULL; /* now owned by the pipeline */
        l->ring = eng_calloc(p->depth, sizeof(*l->ring));
        l->take = eng_calloc(p->depth, sizeof(*l->take));
        l->healthy = true;
        l->sink->report = lane_report;
        l->sink->report_ctx = l;
        cond_init(&l->not_empty);
        if (opt != NULL && opt->dlq_conninfo != NULL) {
            l->dlq = eng_dlq_create(opt->dlq_conninfo, opt->dlq_table);
            l->sink->park = lane_park;
            l->sink->park_ctx = l;
        }
        snprintf(labels, sizeof(labels), "sink=\"%s\"", l->sink->ops->name);
        l->m_batches = eng_metrics_counter("engage_sink_acked_batches_total", labels,
                                           "Batches made durable by the sink");
        l->m_events = eng_metrics_counter("engage_sink_acked_events_total", labels,
                                          "Events made durable by the sink");
        l->m_failures = eng_metrics_counter("engage_sink_write_failures_total", labels,
                                            "Failed write attempts (retried)");
        l->m_spilled = eng_metrics_counter("engage_sink_spilled_batches_total", labels,
                                           "Batches parked instead of written (queue full)");
        l->m_parked = eng_metrics_counter("engage_sink_parked_events_total", labels,
                                          "Events the sink refused for good, parked in the "
                                          "dead-letter table");
        l->m_latency = eng_metrics_histogram("engage_sink_latency_seconds", labels,
                                             "Source commit to sink ack, per event");
        l->m_write = eng_metrics_histogram("engage_sink_write_seconds", labels,
                                           "Duration of one successful batch write");
        l->m_queue =
            eng_metrics_gauge("engage_sink_queue_batches", labels, "Batches waiting for the sink");
        l->m_ready = eng_metrics_gauge("engage_sink_ready", labels,
                                       "1 while the sink writes, 0 while it is failing (/readyz)");
        eng_gauge_set(l->m_ready, 1);
    }
    return p;
}

/* Memory a queued batch holds, as far as the queue's byte cap is concerned. */
static size_t batch_bytes(const struct eng_batch *b)
{
    return (size_t)b->n * sizeof(*b->events) + b->jsonl.len + b->strings.len;
}

static bool lane_full(const struct eng_pipeline *p, const struct sink_lane *l)
{
    return l->count >= p->depth || l->bytes >= p->queue_bytes;
}

/* Sleeps for us unless the pipeline stops first. Returns false if stopping. */
static bool lane_sleep(struct sink_lane *l, int64_t us)
{
    struct eng_pipeline *p = l->p;
    struct timespec ts;
    deadline_from_now(&ts, us);
    pthread_mutex_lock(&p->lock);
    while (!p->stopping) {
        if (pthread_cond_timedwait(&l->not_empty, &p->lock, &ts) == ETIMEDOUT)
            break;
    }
    bool go_on = !p->stopping;
    pthread_mutex_unlock(&p->lock);
    return go_on;
}

static void lane_set_health(struct sink_lane *l, bool ok, const char *msg)
{
    pthread_mutex_lock(&l->p->lock);
    l->healthy = ok;
    snprintf(l->last_error, sizeof(l->last_error), "%s", msg);
    pthread_mutex_unlock(&l->p->lock);
    eng_gauge_set(l->m_ready, ok ? 1 : 0);
}

/* Stops the pipeline for good: a sink met an error no retry and no parking gets past. */
static void pipeline_fail(struct eng_pipeline *p, const char *sink, const struct eng_error *err)
{
    pthread_mutex_lock(&p->lock);
    if (!atomic_load(&p->failed)) {
        eng_error_set(&p->failure, ENG_EFATAL, false, "%s sink: %s", sink, err->msg);
        atomic_store(&p->failed, true);
    }
    p->stopping = true;
    for (size_t i = 0; i < p->nlanes; i++)
        pthread_cond_broadcast(&p->lanes[i].not_empty);
    pthread_cond_broadcast(&p->not_full);
    pthread_cond_broadcast(&p->acked);
    pthread_mutex_unlock(&p->lock);
    eng_error("msg=\"sink failed permanently; stopping\" sink=%s error=\"%s\"", sink, err->msg);
}

/* TRY_BROKEN: the sink itself cannot work (it cannot be opened for good, or its server has
 * refused us for configuration reasons for longer than ENG_DENIED_GRACE_US): no event is at
 * fault and the pipeline stops. */
enum { TRY_DURABLE, TRY_REFUSED, TRY_STOPPED, TRY_BROKEN };

/* Writes b (or spills it) until it is durable, retrying retriable errors with backoff.
 * TRY_REFUSED: the sink refused it with an error that retrying cannot change (err set). */
static int lane_try(struct sink_lane *l, bool *open, struct eng_backoff *bo,
                    const struct eng_batch *b, bool spill, struct eng_error *err)
{
    const char *name = l->sink->ops->name;
    for (;;) {
        eng_error_clear(err);
        int rc = 0;
        bool open_failed = false;
        if (!*open) {
            rc = eng_sink_open(l->sink, err);
            if (rc == 0)
                *open = true;
            open_failed = rc != 0;
        }
        if (rc == 0) {
            int64_t t0 = eng_clock_mono_us();
            rc = spill ? l->sink->ops->spill(l->sink, b, err) : eng_sink_write(l->sink, b, err);
            if (rc == 0) {
                eng_histogram_observe(l->m_write, eng_clock_mono_us() - t0);
                if (!l->healthy) {
                    eng_info("msg=\"sink recovered\" sink=%s", name);
                    lane_set_health(l, true, "");
                }
                eng_backoff_reset(bo);
                l->denied_since_us = 0;
                return TRY_DURABLE;
            }
        }
        eng_counter_add(l->m_failures, 1);
        lane_set_health(l, false, err->msg);
        if (*open) {
            eng_sink_close(l->sink);
            *open = false;
        }
        if (err->code == ENG_EDENIED) {
            int64_t now = eng_clock_mono_us();
            if (l->denied_since_us == 0)
                l->denied_since_us = now;
            if (now - l->denied_since_us > ENG_DENIED_GRACE_US)
                return TRY_BROKEN;
        } else {
            l->denied_since_us = 0;
        }
        if (!err->retriable)
            return open_failed ? TRY_BROKEN : TRY_REFUSED;
        int64_t delay = eng_backoff_next(bo);
        if (!lane_sleep(l, delay))
            return TRY_STOPPED;
        eng_warn("msg=\"sink write failed, retrying\" sink=%s retry_in_ms=%lld error=\"%s\"", name,
                 (long long)(delay / 1000), err->msg);
    }
}

/* b[lo, hi) was refused for good: writes what the sink takes and parks the events it
 * refuses, found by halving. A single refused event is parked only if the sink still opens
 * (else the sink, not the event, is at fault). */
static int lane_split(struct sink_lane *l, bool *open, struct eng_backoff *bo,
                      const struct eng_batch *b, uint32_t lo, uint32_t hi, struct eng_error *err)
{
    if (l->parked >= MAX_PARKED_PER_BATCH)
        return TRY_REFUSED;
    struct eng_batch *part = eng_batch_merge((struct eng_batch *const *)&b, 1, lo, hi - lo);
    int rc = lane_try(l, open, bo, part, false, err);
    if (rc == TRY_REFUSED) {
        if (hi - lo > 1) {
            uint32_t mid = lo + (hi - lo) / 2;
            rc = lane_split(l, open, bo, b, lo, mid, err);
            if (rc == TRY_DURABLE)
                rc = lane_split(l, open, bo, b, mid, hi, err);
        } else {
            /* One event the sink refuses. If the sink cannot even open, it is the sink. */
            char reason[sizeof(err->msg)];
            memcpy(reason, err->msg, sizeof(reason));
            struct eng_error oerr;
            eng_error_clear(&oerr);
            int orc = *open ? 0 : eng_sink_open(l->sink, &oerr);
            if (orc == 0) {
                *open = true;
                rc = l->sink->park(l->sink, part, &part->events[0], reason, err) == 0 ? TRY_DURABLE
                                                                                      : TRY_REFUSED;
            } else {
                *err = oerr;
            }
        }
    }
    eng_batch_release(part);
    return rc;
}

/* Writes b (or spills it, when spill is set) until it is durable or the pipeline stops.
 * An error that retrying cannot change is met by parking the events that cause it; one
 * that no event causes stops the pipeline. Returns true if durable. */
static bool lane_deliver(struct sink_lane *l, bool *open, struct eng_backoff *bo,
                         const struct eng_batch *b, bool spill)
{
    struct eng_error err;
    l->parked = 0;
    int rc = lane_try(l, open, bo, b, spill, &err);
    if (rc == TRY_REFUSED && !spill && b->n > 0 && l->sink->park != NULL) {
        eng_warn("msg=\"sink refused a write for good; looking for the events that cause it\" "
                 "sink=%s events=%u error=\"%s\"",
                 l->sink->ops->name, b->n, err.msg);
        rc = lane_split(l, open, bo, b, 0, b->n, &err);
        if (rc == TRY_REFUSED && l->parked >= MAX_PARKED_PER_BATCH)
            eng_error_set(&err, ENG_EFATAL, false,
                          "refused %u events of one batch: the sink, not the events, is at "
                          "fault (last: %s)",
                          l->parked, err.msg);
    }
    if (rc == TRY_BROKEN) {
        struct eng_error why = err;
        eng_error_set(&err, ENG_EFATAL, false,
                      "%s (runbook: the %s sink cannot work as configured: check its URL, user, "
                      "password and rights, then start engage again)",
                      why.msg, l->sink->ops->name);
    }
    if (rc == TRY_REFUSED || rc == TRY_BROKEN)
        pipeline_fail(l->p, l->sink->ops->name, &err);
    return rc == TRY_DURABLE;
}

static const struct done_pos *done_find(const struct sink_lane *l, uint32_t stream)
{
    for (uint32_t i = 0; i < l->ndone; i++) {
        if (l->done[i].stream == stream)
            return &l->done[i];
    }
    return NULL;
}

/* Moves the sink's position in e's stream up to e (never back). With p->lock held. */
static void done_advance(struct sink_lane *l, uint32_t stream, uint64_t lsn, uint32_t seq)
{
    struct done_pos *d = (struct done_pos *)done_find(l, stream);
    if (d == NULL) {
        if (l->ndone == l->capdone) {
            l->capdone = l->capdone ? 2 * l->capdone : 4;
            l->done = eng_realloc(l->done, l->capdone * sizeof(*l->done));
        }
        d = &l->done[l->ndone++];
        *d = (struct done_pos){.stream = stream};
    }
    if (lsn > d->lsn || (lsn == d->lsn && seq > d->seq)) {
        d->lsn = lsn;
        d->seq = seq;
    }
}

/* True when the sink made e durable already: it gets it again only after a restart, a
 * reconnect or a rebalance. */
static bool lane_has(const struct sink_lane *l, const struct eng_event *e)
{
    if (e->txn_lsn == 0)
        return false;
    const struct done_pos *d = done_find(l, e->stream);
    return d != NULL && d->lsn != 0 && !eng_event_after(e, d->lsn, d->seq);
}

/* How many of the first events of bs[0..n) the sink has (all of them, with all_of set). */
static uint32_t redelivered(const struct sink_lane *l, struct eng_batch *const *bs, uint32_t n,
                            bool all_of)
{
    uint32_t count = 0;
    if (l->ndone == 0)
        return 0;
    for (uint32_t j = 0; j < n; j++) {
        for (uint32_t i = 0; i < bs[j]->n; i++) {
            bool has = lane_has(l, &bs[j]->events[i]);
            if (!has && !all_of)
                return count;
            count += has;
        }
    }
    return count;
}

/* Events of q the sink still needs. */
static uint32_t fresh_events(const struct sink_lane *l, struct eng_batch *q)
{
    return q->n - redelivered(l, &q, 1, true);
}

static uint32_t fresh_queued(const struct eng_pipeline *p, const struct sink_lane *l)
{
    uint32_t n = 0;
    for (uint32_t k = 0; k < l->count; k++)
        n += fresh_events(l, l->ring[(l->head + k) % p->depth]);
    return n;
}

/* The event at index i of bs[0..n) taken as one sequence, or NULL past the end. */
static const struct eng_event *event_at(struct eng_batch *const *bs, uint32_t n, uint32_t i)
{
    for (uint32_t j = 0; j < n; j++) {
        if (i < bs[j]->n)
            return &bs[j]->events[i];
        i -= bs[j]->n;
    }
    return NULL;
}

static const struct eng_event *last_event(struct eng_batch *const *bs, uint32_t n)
{
    for (uint32_t j = n; j-- > 0;) {
        if (bs[j]->n > 0)
            return &bs[j]->events[bs[j]->n - 1];
    }
    return NULL;
}

static int write_progress(FILE *f, void *arg, struct eng_error *err)
{
    const struct eng_buf *text = arg;
    if (fwrite(text->data, 1, text->len, f) != text->len)
        return eng_error_set(err, ENG_EIO, true, "short write");
    return 0;
}

/* Rewrites the progress file with every sink's last durable event, through the one
 * durable-replace helper (a crash leaves the old or the new file, whole). It is written
 * after the acknowledgement, so it is never ahead of a sink; a save that fails costs
 * redeliveries after a restart (written again idempotently), never events. */
static void progress_save(struct eng_pipeline *p)
{
    pthread_mutex_lock(&p->progress_lock);
    if (p->progress_path == NULL) {
        pthread_mutex_unlock(&p->progress_lock);
        return;
    }
    struct eng_buf text = {.cap = 64 << 10};
    char line[256];
    snprintf(line, sizeof(line), "engage-sink-progress 1\nidentity %s\n", p->progress_identity);
    eng_buf_puts(&text, line);
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->nlanes; i++) {
        const struct sink_lane *l = &p->lanes[i];
        for (uint32_t k = 0; k < l->ndone; k++) {
            const struct done_pos *d = &l->done[k];
            if (d->lsn == 0)
                continue;
            /* stream 0 (PostgreSQL) without the stream field: the format it always had */
            snprintf(line, sizeof(line), "sink %s %" PRIX64 " %" PRIu32 " %" PRIu32,
                     l->sink->ops->name, d->lsn, d->seq, l->inflight_n);
            eng_buf_puts(&text, line);
            if (d->stream != 0)
                eng_buf_printf(&text, " %" PRIu32, d->stream);
            eng_buf_putc(&text, '\n');
        }
    }
    pthread_mutex_unlock(&p->lock);

    char *dir = eng_strdup(p->progress_path);
    char *slash = strrchr(dir, '/');
    const char *name = slash != NULL ? slash + 1 : dir;
    if (slash != NULL)
        *slash = '\0';
    struct eng_error err;
    if (eng_durable_replace(slash != NULL ? dir : ".", name, write_progress, &text, &err) != 0)
        eng_warn("msg=\"could not write the sink progress file\" path=\"%s\" error=\"%s\"",
                 p->progress_path, err.msg);
    free(dir);
    eng_buf_free(&text);
    pthread_mutex_unlock(&p->progress_lock);
}

/* "sink NAME LSN SEQ INFLIGHT[ STREAM]\n": LSN in hex, the others in decimal. */
static bool parse_progress_line(const char *line, char *name, size_t namelen, uint64_t *lsn,
                                uint32_t *seq, uint32_t *inflight, uint32_t *stream)
{
    if (strncmp(line, "sink ", 5) != 0)
        return false;
    const char *s = line + 5;
    size_t n = strcspn(s, " ");
    if (n == 0 || n >= namelen || s[n] != ' ')
        return false;
    memcpy(name, s, n);
    name[n] = '\0';
    s += n + 1;
    char *end;
    errno = 0;
    unsigned long long l = strtoull(s, &end, 16);
    if (end == s || *end != ' ' || errno != 0)
        return false;
    s = end + 1;
    unsigned long q = strtoul(s, &end, 10);
    if (end == s || *end != ' ' || errno != 0 || q > UINT32_MAX)
        return false;
    s = end + 1;
    unsigned long w = strtoul(s, &end, 10);
    if (end == s || (*end != '\n' && *end != ' ') || errno != 0 || w > UINT32_MAX)
        return false;
    unsigned long st = 0;
    if (*end == ' ') {
        s = end + 1;
        st = strtoul(s, &end, 10);
        if (end == s || *end != '\n' || errno != 0 || st > UINT32_MAX)
            return false;
    }
    *stream = (uint32_t)st;
    *lsn = l;
    *seq = (uint32_t)q;
    *inflight = (uint32_t)w;
    return true;
}

void eng_pipeline_track_progress(struct eng_pipeline *p, const char *path, const char *identity,
                                 uint64_t max_lsn)
{
    FILE *f = max_lsn > 0 ? fopen(path, "r") : NULL;
    if (f != NULL) {
        char line[512], want[300];
        snprintf(want, sizeof(want), "identity %s\n", identity);
        bool ours = fgets(line, sizeof(line), f) != NULL &&
                    strcmp(line, "engage-sink-progress 1\n") == 0 &&
                    fgets(line, sizeof(line), f) != NULL && strcmp(line, want) == 0;
        if (!ours)
            eng_warn("msg=\"sink progress file ignored: not this server's and slot's\" "
                     "path=\"%s\"",
                     path);
        while (ours && fgets(line, sizeof(line), f) != NULL) {
            char name[64];
            uint64_t lsn;
            uint32_t seq, inflight, stream;
            if (!parse_progress_line(line, name, sizeof(name), &lsn, &seq, &inflight, &stream)) {
                eng_warn("msg=\"sink progress file: line ignored\" path=\"%s\"", path);
                continue;
            }
            if (lsn > max_lsn) {
                /* Past what the server has written: not this server's history. */
                eng_warn("msg=\"sink progress ignored: ahead of the server\" sink=%s", name);
                continue;
            }
            pthread_mutex_lock(&p->lock);
            for (size_t i = 0; i < p->nlanes; i++) {
                if (strcmp(p->lanes[i].sink->ops->name, name) == 0) {
                    done_advance(&p->lanes[i], stream, lsn, seq);
                    p->lanes[i].replay_n = inflight;
                }
            }
            pthread_mutex_unlock(&p->lock);
        }
        fclose(f);
    }
    pthread_mutex_lock(&p->progress_lock);
    free(p->progress_path);
    free(p->progress_identity);
    p->progress_path = eng_strdup(path);
    p->progress_identity = eng_strdup(identity);
    pthread_mutex_unlock(&p->progress_lock);
}

/* The events of bs[0..n) are durable in the sink: its position in each of their streams
 * moves up to them, and the file says so. */
static void lane_set_done(struct sink_lane *l, struct eng_batch *const *bs, uint32_t n)
{
    pthread_mutex_lock(&l->p->lock);
    for (uint32_t j = 0; j < n; j++) {
        for (uint32_t i = 0; i < bs[j]->n; i++) {
            const struct eng_event *e = &bs[j]->events[i];
            if (e->txn_lsn != 0)
                done_advance(l, e->stream, e->txn_lsn, e->txn_seq);
        }
    }
    l->inflight_n = 0;
    pthread_mutex_unlock(&l->p->lock);
    progress_save(l->p);
}

static void lane_set_inflight(struct sink_lane *l, uint32_t n)
{
    pthread_mutex_lock(&l->p->lock);
    l->inflight_n = n;
    pthread_mutex_unlock(&l->p->lock);
    progress_save(l->p);
}

/* True (and the hurry consumed) when the lane should spill: the source waited too long on
 * it, or its queue is full. */
static bool lane_take_hurry(struct sink_lane *l)
{
    pthread_mutex_lock(&l->p->lock);
    bool hurry = l->hurried || lane_full(l->p, l);
    l->hurried = false;
    pthread_mutex_unlock(&l->p->lock);
    return hurry;
}

/* Makes the events of take[0..k) durable in the sink (or spills them), but the first skip,
 * which it has already. A sink with merge_max_events gets a larger batch in parts of that
 * size, its progress recorded after each, so that a crash re-sends no more than one part.
 * Returns true when all is durable, false if stopping. */
static bool lane_write_parts(struct sink_lane *l, bool *open, struct eng_backoff *bo,
                             struct eng_batch *const *take, uint32_t k, uint32_t events, bool spill,
                             uint32_t skip)
{
    uint32_t part = l->sink->merge_max_events;
    const struct eng_event *first = event_at(take, k, skip);
    bool ordered = !spill && part > 0 && first != NULL && first->txn_lsn != 0;
    if (!ordered)
        part = UINT32_MAX; /* parts need the source's order to record progress by */
    /* After a restart the interrupted write comes first, with as many events as it had
     * (batches without events, such as a transaction that only changed content, wait). */
    uint32_t cut = part;
    if (ordered && l->replay_n > 0) {
        cut = l->replay_n;
        l->replay_n = 0;
    }
    for (;;) {
        bool whole = events - skip <= cut;
        struct eng_batch *w = k == 1 && skip == 0 && whole
                                  ? take[0]
                                  : eng_batch_merge(take, k, skip, whole ? UINT32_MAX : cut);
        if (ordered)
            lane_set_inflight(l, w->n);
        bool durable = lane_deliver(l, open, bo, w, spill);
        if (durable && spill) /* from the start, or the rest after a hurry between parts */
            eng_counter_add(l->m_spilled, 1);
        if (durable && !whole)
            lane_set_done(l, &w, 1);
        if (w != take[0])
            eng_batch_release(w);
        if (!durable || whole)
            return durable;
        skip += cut;
        cut = part;
        /* Hurried (or full) between two parts: the rest of the batch is parked at once,
         * rather than each part after another hurry. */
        if (!spill && l->sink->ops->spill != NULL && lane_take_hurry(l)) {
            spill = true;
            ordered = false;
            cut = UINT32_MAX;
        }
    }
}

static bool keep_fresh(const struct eng_event *e, void *ctx)
{
    return !lane_has(ctx, e);
}

/* Makes the events of take[0..k) durable in the sink, but those it has already: with one
 * stream (PostgreSQL) they are the first ones; with several (Kafka partitions) they may be
 * anywhere, and the others are written as one batch of their own. */
static bool lane_write(struct sink_lane *l, bool *open, struct eng_backoff *bo,
                       struct eng_batch *const *take, uint32_t k, uint32_t events, bool spill)
{
    uint32_t skip = redelivered(l, take, k, false);
    uint32_t has = skip < events && l->ndone > 1 ? redelivered(l, take, k, true) : skip;
    eng_counter_add(l->p->m_skipped, has);
    if (has > 0 && has == events)
        return true;
    if (has == skip)
        return lane_write_parts(l, open, bo, take, k, events, spill, skip);
    struct eng_batch *fresh = eng_batch_select(take, k, keep_fresh, l);
    bool durable = lane_write_parts(l, open, bo, &fresh, 1, fresh->n, spill, 0);
    eng_batch_release(fresh);
    return durable;
}

/* With p->lock held: waits until the lane has something to write and may write it (the
 * sink's least interval between writes has passed or its queue is full; after a restart,
 * the interrupted write's events are queued again). False when the pipeline stops. */
static bool lane_wait_work(struct sink_lane *l, int64_t last_write_us)
{
    struct eng_pipeline *p = l->p;
    while (l->count == 0 && !p->stopping)
        pthread_cond_wait(&l->not_empty, &p->lock);
    /* A sink that wants fewer, larger writes lets batches gather until its interval has
     * passed, unless its queue is full (the source waits then). */
    int64_t next_write_us = last_write_us + l->sink->min_write_interval_us;
    while (!p->stopping && !lane_full(p, l) && eng_clock_mono_us() < next_write_us) {
        struct timespec ts;
        deadline_from_now(&ts, next_write_us - eng_clock_mono_us());
        (void)pthread_cond_timedwait(&l->not_empty, &p->lock, &ts);
    }
    /* After a restart the interrupted write goes again, whole: give the source a moment to
     * queue its events again. */
    int64_t replay_until = eng_clock_mono_us() + 5000000;
    while (l->replay_n > 0 && !p->stopping && !lane_full(p, l) &&
           fresh_queued(p, l) < l->replay_n && eng_clock_mono_us() < replay_until) {
        struct timespec ts;
        deadline_from_now(&ts, 10000);
        (void)pthread_cond_timedwait(&l->not_empty, &p->lock, &ts);
    }
    return !p->stopping;
}

/* One write's worth of queued batches (with p->lock held). Batches stay queued until
 * acknowledged; only the lane's thread removes them, so those taken can be read after the
 * lock is dropped. */
struct lane_take {
    uint32_t k;    /* batches: l->take[0..k) */
    size_t events; /* in them */
    size_t bytes;
    bool spill; /* park them instead of writing them */
};

static void lane_take_batches(struct sink_lane *l, struct lane_take *t)
{
    struct eng_pipeline *p = l->p;
    /* A full queue means this sink is holding the source back, and a hurried one that it
     * has held it back too long: a sink that can spill parks all that waits instead of
     * writing it, so the source goes on at once. */
    t->spill = l->sink->ops->spill != NULL && (l->hurried || lane_full(p, l));
    l->hurried = false;
    /* Every batch that waits behind the head goes in the same write: a sink whose cost is
     * per request (a ClickHouse INSERT) keeps up by writing more at once. */
    size_t max_events = MERGE_MAX_EVENTS;
    if (!t->spill && l->sink->merge_max_events > 0)
        max_events = l->sink->merge_max_events;
    size_t fresh = 0;
    t->k = 0;
    t->events = t->bytes = 0;
    while (t->k < l->count) {
        struct eng_batch *q = l->ring[(l->head + t->k) % p->depth];
        uint32_t qf = fresh_events(l, q);
        /* (The interrupted write is taken whole, however the source cut its batches.) */
        if (t->k > 0 && fresh >= l->replay_n &&
            (fresh + qf > max_events || t->bytes + batch_bytes(q) > MERGE_MAX_BYTES))
            break;
        l->take[t->k++] = q;
        t->events += q->n;
        fresh += qf;
        t->bytes += batch_bytes(q);
    }
}

/* The write of t is durable: metrics, the sink's progress on file (before the
 * acknowledgement is visible, so that whoever waits for the pipeline to be idle also finds
 * the file current), then the batches leave the queue. */
static void lane_ack(struct sink_lane *l, const struct lane_take *t)
{
    struct eng_pipeline *p = l->p;
    struct eng_batch **take = l->take;
    int64_t now = eng_clock_wall_us();
    for (uint32_t j = 0; j < t->k; j++) {
        for (uint32_t i = 0; i < take[j]->n; i++) {
            if (take[j]->events[i].commit_time_us > 0)
                eng_histogram_observe(l->m_latency, now - take[j]->events[i].commit_time_us);
        }
    }
    eng_counter_add(l->m_batches, 1);
    eng_counter_add(l->m_events, t->events);
    const struct eng_event *last = last_event(take, t->k);
    if (last != NULL && last->txn_lsn != 0)
        lane_set_done(l, take, t->k);

    struct eng_batch *b = take[t->k - 1];
    pthread_mutex_lock(&p->lock);
    for (uint32_t j = 0; j < t->k; j++) {
        l->ring[l->head] = NULL;
        l->head = (l->head + 1) % p->depth;
    }
    l->count -= t->k;
    l->bytes -= t->bytes;
    l->acked_seq = b->seq;
    l->acked_position = b->position;
    eng_gauge_set(l->m_queue, l->count);
    pthread_cond_broadcast(&p->not_full);
    pthread_cond_broadcast(&p->acked);
    pthread_mutex_unlock(&p->lock);
    for (uint32_t j = 0; j < t->k; j++)
        eng_batch_release(take[j]);
}

static void *lane_main(void *arg)
{
    struct sink_lane *l = arg;
    struct eng_pipeline *p = l->p;
    struct eng_backoff bo;
    bool open = false;
    eng_backoff_init(&bo, p->backoff_base_us, p->backoff_cap_us,
                     (uint64_t)eng_clock_mono_us() ^ (uint64_t)(uintptr_t)l);
    int64_t last_write_us = 0;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        if (!lane_wait_work(l, last_write_us)) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        struct lane_take t;
        lane_take_batches(l, &t);
        pthread_mutex_unlock(&p->lock);

        last_write_us = eng_clock_mono_us();
        if (!lane_write(l, &open, &bo, l->take, t.k, (uint32_t)t.events, t.spill))
            break;
        lane_ack(l, &t);
    }
    if (open)
        eng_sink_close(l->sink);
    return NULL;
}

int eng_pipeline_start(struct eng_pipeline *p, struct eng_error *err)
{
    for (size_t i = 0; i < p->nlanes; i++) {
        int rc = pthread_create(&p->lanes[i].thread, NULL, lane_main, &p->lanes[i]);
        if (rc != 0)
            return eng_error_set(err, ENG_EIO, false, "could not start sink thread: %s",
                                 strerror(rc));
        p->lanes[i].started = true;
    }
    return 0;
}

static bool all_have_room(const struct eng_pipeline *p)
{
    for (size_t i = 0; i < p->nlanes; i++) {
        if (lane_full(p, &p->lanes[i]))
            return false;
    }
    return true;
}

int eng_pipeline_submit(struct eng_pipeline *p, struct eng_batch *b, int64_t timeout_us)
{
    int64_t deadline = eng_clock_mono_us() + timeout_us;
    pthread_mutex_lock(&p->lock);
    while (!all_have_room(p) && !p->stopping) {
        /* A sink that can spill is told to hurry once the source has waited spill_after_us
         * (over one or more calls), so it never holds the others back much longer. */
        int64_t now = eng_clock_mono_us();
        if (now >= deadline)
            break;
        if (p->blocked_since_us == 0)
            p->blocked_since_us = now;
        int64_t hurry_at = p->blocked_since_us + p->spill_after_us;
        int64_t wake = deadline;
        if (now >= hurry_at) {
            for (size_t i = 0; i < p->nlanes; i++) {
                struct sink_lane *l = &p->lanes[i];
                if (lane_full(p, l) && l->sink->ops->hurry != NULL) {
                    l->hurried = true;
                    l->sink->ops->hurry(l->sink);
                }
            }
        } else if (hurry_at < wake) {
            wake = hurry_at;
        }
        struct timespec ts;
        deadline_from_now(&ts, wake - now);
        (void)pthread_cond_timedwait(&p->not_full, &p->lock, &ts);
    }
    if (p->stopping || !all_have_room(p)) {
        int rc = p->stopping ? ENG_ESTOPPED : ENG_EAGAIN;
        pthread_mutex_unlock(&p->lock);
        return rc;
    }
    if (b->position < p->submitted_position)
        eng_die("batch position went backwards");
    /* Observed before the lanes get the batch: a lane may release it at once. */
    eng_histogram_observe(p->m_batch_size, eng_clock_mono_us() - b->created_us);
    p->blocked_since_us = 0;
    for (size_t i = 0; i < p->nlanes; i++)
        p->lanes[i].hurried = false; /* the source goes on: no reason left to spill */
    b->seq = p->next_seq++;
    p->submitted_position = b->position;
    for (size_t i = 0; i < p->nlanes; i++) {
        struct sink_lane *l = &p->lanes[i];
        if (i > 0)
            eng_batch_retain(b); /* the caller's reference goes to the first lane */
        l->ring[(l->head + l->count) % p->depth] = b;
        l->count++;
        l->bytes += batch_bytes(b);
        eng_gauge_set(l->m_queue, l->count);
        pthread_cond_signal(&l->not_empty);
    }
    pthread_mutex_unlock(&p->lock);
    return 0;
}

bool eng_pipeline_failed(struct eng_pipeline *p, struct eng_error *err)
{
    if (!atomic_load(&p->failed))
        return false;
    pthread_mutex_lock(&p->lock);
    if (err != NULL)
        *err = p->failure;
    pthread_mutex_unlock(&p->lock);
    return true;
}

uint64_t eng_pipeline_durable_position(struct eng_pipeline *p)
{
    pthread_mutex_lock(&p->lock);
    uint64_t pos = UINT64_MAX;
    for (size_t i = 0; i < p->nlanes; i++) {
        if (p->lanes[i].acked_position < pos)
            pos = p->lanes[i].acked_position;
    }
    pthread_mutex_unlock(&p->lock);
    return pos;
}

uint64_t eng_pipeline_submitted_position(struct eng_pipeline *p)
{
    pthread_mutex_lock(&p->lock);
    uint64_t pos = p->submitted_position;
    pthread_mutex_unlock(&p->lock);
    return pos;
}

static bool idle_locked(const struct eng_pipeline *p)
{
    for (size_t i = 0; i < p->nlanes; i++) {
        if (p->lanes[i].acked_seq + 1 != p->next_seq)
            return false;
    }
    return true;
}

bool eng_pipeline_idle(struct eng_pipeline *p)
{
    pthread_mutex_lock(&p->lock);
    bool idle = idle_locked(p);
    pthread_mutex_unlock(&p->lock);
    return idle;
}

bool eng_pipeline_wait_idle(struct eng_pipeline *p, int64_t timeout_us)
{
    struct timespec ts;
    deadline_from_now(&ts, timeout_us);
    pthread_mutex_lock(&p->lock);
    while (!idle_locked(p) && !p->stopping) {
        if (pthread_cond_timedwait(&p->acked, &p->lock, &ts) == ETIMEDOUT)
            break;
    }
    bool idle = idle_locked(p);
    pthread_mutex_unlock(&p->lock);
    return idle;
}

void eng_pipeline_source_health(struct eng_pipeline *p, const char *source, bool ok,
                                const char *why)
{
    pthread_mutex_lock(&p->lock);
    p->source_name = source;
    p->source_ok = ok;
    snprintf(p->source_error, sizeof(p->source_error), "%s", ok ? "" : why);
    eng_gauge_set(p->m_source_connected, ok ? 1 : 0);
    pthread_mutex_unlock(&p->lock);
}

bool eng_pipeline_healthy(struct eng_pipeline *p, char *why, size_t whylen)
{
    bool ok = true;
    size_t used = 0;
    if (whylen > 0)
        why[0] = '\0';
    pthread_mutex_lock(&p->lock);
    if (p->source_name != NULL) {
        ok = p->source_ok;
        int w = snprintf(why, whylen, "source=%s", p->source_ok ? "ok" : p->source_error);
        used += w > 0 ? (size_t)w : 0;
    }
    for (size_t i = 0; i < p->nlanes; i++) {
        struct sink_lane *l = &p->lanes[i];
        ok = ok && l->healthy;
        if (used < whylen) {
            int w = snprintf(why + used, whylen - used, "%s%s=%s", used ? " " : "",
                             l->sink->ops->name, l->healthy ? "ok" : l->last_error);
            used += w > 0 ? (size_t)w : 0;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return ok;
}

void eng_pipeline_stop(struct eng_pipeline *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    for (size_t i = 0; i < p->nlanes; i++)
        pthread_cond_broadcast(&p->lanes[i].not_empty);
    pthread_cond_broadcast(&p->not_full);
    pthread_cond_broadcast(&p->acked);
    pthread_mutex_unlock(&p->lock);
    for (size_t i = 0; i < p->nlanes; i++) {
        if (p->lanes[i].sink->ops->cancel != NULL)
            p->lanes[i].sink->ops->cancel(p->lanes[i].sink);
    }
    for (size_t i = 0; i < p->nlanes; i++) {
        if (p->lanes[i].started) {
            pthread_join(p->lanes[i].thread, NULL);
            p->lanes[i].started = false;
        }
    }
}

void eng_pipeline_destroy(struct eng_pipeline *p)
{
    if (p == NULL)
        return;
    eng_pipeline_stop(p);
    for (size_t i = 0; i < p->nlanes; i++) {
        struct sink_lane *l = &p->lanes[i];
        for (uint32_t k = 0; k < l->count; k++)
            eng_batch_release(l->ring[(l->head + k) % p->depth]);
        free(l->ring);
        free(l->take);
        free(l->done);
        pthread_cond_destroy(&l->not_empty);
        eng_sink_destroy(l->sink);
        eng_dlq_destroy(l->dlq);
    }
    free(p->lanes);
    free(p->progress_path);
    free(p->progress_identity);
    pthread_mutex_destroy(&p->progress_lock);
    pthread_cond_destroy(&p->not_full);
    pthread_cond_destroy(&p->acked);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
