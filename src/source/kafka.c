/* The Kafka source: a consumer group member on the events topic, a reader of the whole
 * content topic, micro-batches, and offsets stored after the sinks' acknowledgement.
 *
 * Invariants (see docs/kafka.md):
 * - an offset is stored (and so committed) only when every event before it in its
 *   partition is durable in every sink: each submitted batch carries the next offset of
 *   every partition it read, and batches become durable in order;
 * - a revoked partition's offsets that are not durable by the time it is given up are
 *   dropped, never stored later: the partition's new owner reads them again (the sinks are
 *   idempotent by event_id);
 * - the content cache holds every content change read from the content topic, which is
 *   read to its end at start and drained before every events message, so an event is
 *   enriched with its content as of its commit or later, never earlier than what that
 *   topic held when the event was read. */
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/backoff.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../core/pgtext.h"
#include "../db/pgconn.h"
#include "../decode/debezium.h"
#include "../enrich/enrich.h"
#include "../enrich/versions.h"
#include "../sink/kafka.h"
#include "kafka.h"
#include "pgschema.h"

/* How long a revoked assignment waits for its in-flight batches to become durable before
 * they are given up (the new owner reads them again). */
#define REVOKE_WAIT_US INT64_C(10000000)
/* How long a stop waits for in-flight batches before the last commit. */
#define STOP_WAIT_US     INT64_C(10000000)
#define LAG_EVERY_US     INT64_C(1000000)
#define CONTENT_RETRY_US INT64_C(5000000)
/* Records taken from the consumer at once: the content topic is brought up to date once for
 * all of them. */
#define GROUP_MAX 1024
/* How long bringing the content topic up to date may take before events go on without it. */
#define CONTENT_SYNC_MS 5000

/* The next offset of each partition a batch read. */
struct offsets {
    struct {
        int32_t partition;
        int64_t next;
    } * v;
    size_t n, cap;
};

/* A submitted batch not yet durable everywhere. */
struct inflight {
    uint64_t position;
    struct offsets offs;
};

struct ksrc {
    const struct eng_kafka_source_options *opt;
    struct eng_pipeline *p;
    volatile sig_atomic_t *stop;
    char content_topic[256];
    rd_kafka_t *rk; /* the group member on the events topic */
    rd_kafka_t *rc; /* the content topic's reader (assigned every partition, no group) */
    /* Asks the content topic's high watermarks: a handle that fetches nothing, so that its
     * requests do not wait behind a long-polling fetch on the same connection (they did:
     * 500 ms each, 2,000 events a second). */
    rd_kafka_t *rq;
    bool content_assigned;
    int32_t content_parts;
    int64_t *content_next; /* per content partition: the next offset to apply */
    int64_t content_retry_at;
    rd_kafka_topic_partition_list_t *assigned; /* events partitions owned now */
    uint32_t assign_gen;                       /* changes with every rebalance */
    struct eng_dbz_decoder *dec;
    struct eng_versions *content;         /* every content change read, with what it replaced */
    struct eng_content_cache *as_of;      /* one row: the content of an event read late */
    rd_kafka_message_t *group[GROUP_MAX]; /* records polled together */

    struct eng_batch *batch;
    int64_t batch_deadline; /* 0: nothing waiting */
    struct offsets open;    /* offsets read into the open batch */
    struct inflight *q;     /* FIFO of submitted batches */
    size_t qhead, qn, qcap;
    uint64_t next_position;
    int64_t lag_at;
    bool fatal;
    struct eng_error fatal_err;

    struct eng_counter *m_messages, *m_events, *m_bad, *m_misses, *m_skipped, *m_content;
    struct eng_counter *m_dropped, *m_sync_failed;
    struct eng_gauge *m_assigned, *m_lag, *m_versions;
};

static void sleep_us(int64_t us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* ---- offsets ---- */

static void offsets_note(struct offsets *o, int32_t partition, int64_t next)
{
    for (size_t i = 0; i < o->n; i++) {
        if (o->v[i].partition == partition) {
            if (next > o->v[i].next)
                o->v[i].next = next;
            return;
        }
    }
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 8;
        o->v = eng_realloc(o->v, o->cap * sizeof(*o->v));
    }
    o->v[o->n].partition = partition;
    o->v[o->n].next = next;
    o->n++;
}

static void offsets_merge(struct offsets *into, const struct offsets *from)
{
    for (size_t i = 0; i < from->n; i++)
        offsets_note(into, from->v[i].partition, from->v[i].next);
}

static bool owned(const struct ksrc *s, int32_t partition)
{
    return s->assigned != NULL &&
           rd_kafka_topic_partition_list_find(s->assigned, s->opt->topic, partition) != NULL;
}

/* Stores the offsets of every batch that is durable everywhere now. */
static void store_durable(struct ksrc *s)
{
    uint64_t durable = eng_pipeline_durable_position(s->p);
    struct offsets done = {0};
    while (s->qn > 0 && s->q[s->qhead].position <= durable) {
        struct inflight *f = &s->q[s->qhead];
        offsets_merge(&done, &f->offs);
        free(f->offs.v);
        s->qhead = (s->qhead + 1) % s->qcap;
        s->qn--;
    }
    if (done.n == 0)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)done.n);
    for (size_t i = 0; i < done.n; i++) {
        if (owned(s, done.v[i].partition))
            rd_kafka_topic_partition_list_add(l, s->opt->topic, done.v[i].partition)->offset =
                done.v[i].next;
    }
    free(done.v);
    if (l->cnt > 0) {
        rd_kafka_resp_err_t e = rd_kafka_offsets_store(s->rk, l);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            eng_debug("msg=\"offsets not stored\" error=\"%s\"", rd_kafka_err2str(e));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* Forgets every offset not yet stored: the partitions are no longer ours. */
static void drop_inflight(struct ksrc *s)
{
    size_t dropped = s->qn;
    for (; s->qn > 0; s->qn--) {
        free(s->q[s->qhead].offs.v);
        s->qhead = (s->qhead + 1) % s->qcap;
    }
    s->open.n = 0;
    if (dropped > 0)
        eng_counter_add(s->m_dropped, dropped);
}

/* ---- batches ---- */

static void queue_push(struct ksrc *s, uint64_t position)
{
    if (s->qn == s->qcap) {
        size_t cap = s->qcap ? 2 * s->qcap : 64;
        struct inflight *q = eng_malloc(cap * sizeof(*q));
        for (size_t i = 0; i < s->qn; i++)
            q[i] = s->q[(s->qhead + i) % s->qcap];
        free(s->q);
        s->q = q;
        s->qhead = 0;
        s->qcap = cap;
    }
    struct inflight *f = &s->q[(s->qhead + s->qn++) % s->qcap];
    f->position = position;
    f->offs = s->open;
    s->open = (struct offsets){0};
}

/* Submits the open batch (if it holds events or offsets), waiting at most wait_us for room
 * (forever when negative, until stopped). Returns 0, ENG_EAGAIN when it did not fit in time
 * (the batch is dropped with its offsets: they are read again), or ENG_ESTOPPED. */
static int flush_batch(struct ksrc *s, int64_t wait_us)
{
    if (s->batch->n == 0 && s->open.n == 0)
        return 0;
    struct eng_batch *b = s->batch;
    b->position = ++s->next_position;
    int64_t until = wait_us < 0 ? INT64_MAX : eng_clock_mono_us() + wait_us;
    for (;;) {
        int rc = eng_pipeline_submit(s->p, b, 100000);
        if (rc == 0)
            break;
        if (rc == ENG_ESTOPPED || *s->stop)
            return ENG_ESTOPPED;
        store_durable(s);
        if (eng_clock_mono_us() >= until) {
            s->next_position--;
            eng_batch_release(b);
            s->batch = eng_batch_create(s->opt->batch_max_events);
            s->open.n = 0;
            s->batch_deadline = 0;
            return ENG_EAGAIN;
        }
    }
    queue_push(s, b->position);
    s->batch = eng_batch_create(s->opt->batch_max_events);
    s->batch_deadline = 0;
    store_durable(s);
    return 0;
}

/* ---- messages ---- */

static int park(struct ksrc *s, const char *topic, int32_t partition, int64_t offset,
                int64_t event_id, const char *reason, const void *payload, size_t len,
                struct eng_error *err)
{
    char pos[320];
    snprintf(pos, sizeof(pos), "%s/%" PRId32 "/%" PRId64, topic, partition, offset);
    eng_counter_add(s->m_bad, 1);
    eng_warn("msg=\"bad message parked in the dead-letter queue\" position=%s reason=\"%s\"", pos,
             reason);
    struct eng_backoff bo;
    eng_backoff_init(&bo, 100000, 5000000, (uint64_t)offset);
    while (eng_dlq_park_one(s->opt->dlq, "source", pos, event_id, reason, payload, len, err) != 0) {
        if (!err->retriable || *s->stop)
            return err->code;
        eng_warn("msg=\"could not park, retrying\" error=\"%s\"", err->msg);
        sleep_us(eng_backoff_next(&bo));
    }
    return 0;
}

static int park_message(struct ksrc *s, const rd_kafka_message_t *m, int64_t event_id,
                        const char *reason, struct eng_error *err)
{
    return park(s, rd_kafka_topic_name(m->rkt), m->partition, m->offset, event_id, reason,
                m->payload, m->len, err);
}

static void apply_content(struct ksrc *s, const struct eng_dbz_msg *d)
{
    eng_counter_add(s->m_content, 1);
    if (d->op == 't')
        eng_versions_clear(s->content, d->lsn);
    else if (d->op == 'd')
        eng_versions_remove(s->content, d->lsn, d->content.content_id);
    else
        eng_versions_put(s->content, d->lsn, &d->content);
    eng_gauge_set(s->m_versions, (int64_t)eng_versions_kept(s->content));
}

/* The content as of the event's commit: the newest rows, unless the content topic already
 * brought a change committed after the event. */
static const struct eng_content_cache *content_for(struct ksrc *s, const struct eng_dbz_msg *d)
{
    const struct eng_text *id = &d->cols[ENG_COL_CONTENT_ID];
    int32_t cid;
    const struct eng_content *row;
    if (id->null || !eng_parse_i32(id->data, id->len, &cid) ||
        !eng_versions_as_of(s->content, cid, d->lsn, &row))
        return eng_versions_latest(s->content);
    eng_content_cache_clear(s->as_of);
    if (row != NULL)
        eng_content_cache_put(s->as_of, row);
    return s->as_of;
}

static int on_event(struct ksrc *s, const rd_kafka_message_t *m, const struct eng_dbz_msg *d,
                    struct eng_error *err)
{
    struct eng_event *e;
    bool missed;
    struct eng_error perr;
    eng_error_clear(&perr);
    if (eng_enrich_row(s->batch, d->cols, content_for(s, d), &e, &missed, &perr) != 0) {
        int64_t id = -1;
        if (!d->cols[ENG_COL_EVENT_ID].null)
            eng_parse_i64(d->cols[ENG_COL_EVENT_ID].data, d->cols[ENG_COL_EVENT_ID].len, &id);
        return park_message(s, m, id, perr.msg, err);
    }
    e->commit_time_us = d->commit_time_us;
    /* The partition's own order: what each sink has of it is kept per partition. */
    e->stream = (uint32_t)m->partition;
    e->txn_lsn = (uint64_t)m->offset + 1;
    e->txn_seq = 0;
    if (missed)
        eng_counter_add(s->m_misses, 1);
    eng_counter_add(s->m_events, 1);
    return 0;
}

/* One record of the events topic: decoded, delivered, skipped or parked. */
static int on_record(struct ksrc *s, const rd_kafka_message_t *m, struct eng_error *err)
{
    if (eng_batch_full(s->batch)) {
        int rc = flush_batch(s, -1);
        if (rc != 0)
            return rc;
    }
    eng_counter_add(s->m_messages, 1);
    offsets_note(&s->open, m->partition, m->offset + 1);
    if (s->batch_deadline == 0)
        s->batch_deadline = eng_clock_mono_us() + s->opt->batch_max_us;
    struct eng_dbz_msg d;
    struct eng_error derr;
    eng_error_clear(&derr);
    if (eng_dbz_decode(s->dec, m->payload, m->len, &d, &derr) != 0)
        return park_message(s, m, -1, derr.msg, err);
    if (d.kind == ENG_DBZ_EVENT && (d.op == 'c' || (d.op == 'r' && s->opt->snapshot_reads)))
        return on_event(s, m, &d, err);
    if (d.kind == ENG_DBZ_CONTENT)
        apply_content(s, &d);
    else
        eng_counter_add(s->m_skipped, 1); /* updates, deletes, tombstones, markers */
    return 0;
}

/* ---- the content topic ---- */

static int on_content_record(struct ksrc *s, const rd_kafka_message_t *m, struct eng_error *err)
{
    if (m->partition >= 0 && m->partition < s->content_parts)
        s->content_next[m->partition] = m->offset + 1;
    struct eng_dbz_msg d;
    struct eng_error derr;
    eng_error_clear(&derr);
    if (eng_dbz_decode(s->dec, m->payload, m->len, &d, &derr) != 0)
        return park_message(s, m, -1, derr.msg, err);
    if (d.kind == ENG_DBZ_CONTENT)
        apply_content(s, &d);
    return 0;
}

/* Assigns every partition of the content topic from its beginning, once it exists. */
static void content_assign(struct ksrc *s)
{
    if (s->rc == NULL || s->content_assigned || eng_clock_mono_us() < s->content_retry_at)
        return;
    s->content_retry_at = eng_clock_mono_us() + CONTENT_RETRY_US;
    rd_kafka_topic_t *t = rd_kafka_topic_new(s->rc, s->content_topic, NULL);
    const struct rd_kafka_metadata *md;
    if (rd_kafka_metadata(s->rc, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
            md->topics[0].partition_cnt > 0) {
            int n = md->topics[0].partition_cnt;
            rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
            for (int i = 0; i < n; i++)
                rd_kafka_topic_partition_list_add(l, s->content_topic, i)->offset =
                    RD_KAFKA_OFFSET_BEGINNING;
            rd_kafka_assign(s->rc, l);
            rd_kafka_topic_partition_list_destroy(l);
            s->content_parts = n;
            s->content_next = eng_calloc((size_t)n, sizeof(int64_t));
            s->content_assigned = true;
            eng_info("msg=\"reading the content topic\" topic=%s partitions=%d", s->content_topic,
                     n);
        }
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(t);
}

/* The high watermark of every content partition now, into hw; false when the broker did
 * not answer in time. */
static bool content_watermarks(struct ksrc *s, int64_t *hw)
{
    for (int32_t p = 0; p < s->content_parts; p++) {
        int64_t lo;
        if (rd_kafka_query_watermark_offsets(s->rq, s->content_topic, p, &lo, &hw[p],
                                             CONTENT_SYNC_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
            return false;
    }
    return true;
}

static bool content_caught_up(const struct ksrc *s, const int64_t *hw)
{
    for (int32_t p = 0; p < s->content_parts; p++) {
        if (s->content_next[p] < hw[p])
            return false;
    }
    return true;
}

/* Applies every content change the topic holds now: its high watermarks are asked after the
 * events at hand were read, and capture acknowledges a content change before it produces
 * the events committed after it, so every change committed before those events is applied
 * when this returns 0. When the broker does not answer in time the events go on with what
 * was read (counted in engage_kafka_content_sync_failures_total). */
static int content_sync(struct ksrc *s, struct eng_error *err)
{
    content_assign(s);
    if (!s->content_assigned)
        return 0;
    int64_t *hw = eng_malloc((size_t)s->content_parts * sizeof(int64_t));
    bool ok = content_watermarks(s, hw);
    int64_t deadline = eng_clock_mono_us() + CONTENT_SYNC_MS * INT64_C(1000);
    int rc = 0;
    while (ok && rc == 0 && !content_caught_up(s, hw)) {
        if (*s->stop) {
            rc = ENG_ESTOPPED;
            break;
        }
        if (eng_clock_mono_us() > deadline) {
            ok = false;
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->rc, 100);
        if (m == NULL)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
            rc = on_content_record(s, m, err);
        else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            eng_warn("msg=\"content topic\" error=\"%s\"", rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
    }
    if (!ok)
        eng_counter_add(s->m_sync_failed, 1);
    free(hw);
    return rc;
}

/* ---- group membership ---- */

static void on_revoke(struct ksrc *s, rd_kafka_topic_partition_list_t *parts)
{
    /* What was read before the revocation is submitted (a partition's new owner may get
     * it again) and given a bounded time to become durable; what is not durable then is
     * forgotten, never stored after the partitions are gone. */
    if (flush_batch(s, REVOKE_WAIT_US) == 0)
        eng_pipeline_wait_idle(s->p, REVOKE_WAIT_US);
    store_durable(s);
    rd_kafka_resp_err_t e = rd_kafka_commit(s->rk, NULL, 0);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        eng_warn("msg=\"commit on revoke failed\" error=\"%s\"", rd_kafka_err2str(e));
    drop_inflight(s);
    eng_info("msg=\"partitions revoked\" count=%d", parts->cnt);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct ksrc *s = opaque;
    bool coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    s->assign_gen++;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (coop) {
            rd_kafka_error_t *x = rd_kafka_incremental_assign(rk, parts);
            if (x != NULL)
                rd_kafka_error_destroy(x);
        } else {
            rd_kafka_assign(rk, parts);
        }
        eng_info("msg=\"partitions assigned\" count=%d", parts->cnt);
    } else {
        on_revoke(s, parts);
        if (coop) {
            rd_kafka_error_t *x = rd_kafka_incremental_unassign(rk, parts);
            if (x != NULL)
                rd_kafka_error_destroy(x);
        } else {
            rd_kafka_assign(rk, NULL);
        }
    }
    if (s->assigned != NULL)
        rd_kafka_topic_partition_list_destroy(s->assigned);
    s->assigned = NULL;
    rd_kafka_assignment(rk, &s->assigned);
    eng_gauge_set(s->m_assigned, s->assigned ? s->assigned->cnt : 0);
}

static void on_error(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    struct ksrc *s = opaque;
    rd_kafka_resp_err_t e = code;
    if (e == RD_KAFKA_RESP_ERR__FATAL) {
        char why[256];
        rd_kafka_fatal_error(rk, why, sizeof(why));
        eng_error_set(&s->fatal_err, ENG_EFATAL, false, "kafka consumer: %s", why);
        s->fatal = true;
        return;
    }
    if (e == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || e == RD_KAFKA_RESP_ERR__TRANSPORT)
        eng_pipeline_source_health(s->p, "kafka", false, reason);
    eng_warn("msg=\"kafka\" error=\"%s\" detail=\"%s\"", rd_kafka_err2name(e), reason);
}

/* ---- set-up ---- */

static const char *const consumer_defaults[] = {
    "enable.auto.offset.store=false", /* stored after the sinks' acknowledgement */
    "enable.auto.commit=true",
    "auto.commit.interval.ms=1000",
    "auto.offset.reset=earliest",
    "enable.partition.eof=false",
    "session.timeout.ms=10000",
    "heartbeat.interval.ms=1000",
    "max.poll.interval.ms=300000",
    /* (queued.max.messages.kbytes stays librdkafka's 64 MB: 16 MB cut the peak RSS from 166
     * to 55 MiB and the drain from 23,000 to 6,000 records a second, bench/kafka.py.) */
    NULL,
};

static const char *const reader_defaults[] = {
    "enable.auto.commit=false",
    "enable.partition.eof=true",
    "group.id=engage-content-reader", /* required by librdkafka; never joined or committed */
    NULL,
};

static rd_kafka_t *new_consumer(struct ksrc *s, const char *const *defaults, bool member,
                                struct eng_error *err)
{
    rd_kafka_conf_t *conf =
        eng_kafka_conf_new(s->opt->bootstrap, defaults, s->opt->props, s->opt->nprops, err);
    if (conf == NULL)
        return NULL;
    char errstr[256];
    if (member) {
        const char *group = s->opt->group ? s->opt->group : "engage";
        rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr));
        rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
        rd_kafka_conf_set_error_cb(conf, on_error);
    }
    rd_kafka_conf_set_opaque(conf, s);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        eng_error_set(err, ENG_EINVAL, false, "kafka consumer: %s", errstr);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

static bool put_base(const struct eng_content *row, void *ctx)
{
    eng_versions_put(ctx, 0, row);
    return true;
}

/* The content table as PostgreSQL holds it now, for when there is no content topic (a
 * Debezium that captures only the events table): events are enriched with the content as
 * of engage's start then, not as of their commit. */
static int load_content_table(struct ksrc *s, struct eng_error *err)
{
    struct eng_backoff bo;
    eng_backoff_init(&bo, 200000, 5000000, 1);
    for (;;) {
        PGconn *c = eng_pg_connect(s->opt->conninfo, "engage-kafka", false, err);
        struct eng_content_cache *table = eng_content_cache_create();
        int rc = c == NULL ? err->code : eng_pg_load_content(c, NULL, table, err);
        PQfinish(c);
        if (rc == 0) {
            eng_content_cache_each(table, put_base, s->content);
            eng_info("msg=\"no content topic: content as the table holds it now\" rows=%u",
                     eng_content_cache_count(table));
        }
        eng_content_cache_destroy(table);
        if (rc == 0)
            return 0;
        if (!err->retriable || *s->stop)
            return rc;
        eng_warn("msg=\"could not read the content table, retrying\" error=\"%s\"", err->msg);
        sleep_us(eng_backoff_next(&bo));
    }
}

static void content_topic_name(struct ksrc *s)
{
    const char *t = s->opt->topic;
    if (s->opt->content_topic != NULL) {
        snprintf(s->content_topic, sizeof(s->content_topic), "%s", s->opt->content_topic);
        return;
    }
    const char *dot = strrchr(t, '.');
    int prefix = dot ? (int)(dot - t) : 0;
    snprintf(s->content_topic, sizeof(s->content_topic), "%.*s%scontent", prefix, t,
             dot ? "." : "");
}

static void register_metrics(struct ksrc *s)
{
    s->m_messages = eng_metrics_counter("engage_kafka_messages_total", NULL,
                                        "Records read from the events topic");
    s->m_events = eng_metrics_counter("engage_source_events_total", "source=\"kafka\"",
                                      "Events read from the source");
    s->m_bad = eng_metrics_counter("engage_source_bad_input_total", "source=\"kafka\"",
                                   "Input parked in the dead-letter queue (did not decode)");
    s->m_misses =
        eng_metrics_counter("engage_enrich_misses_total", NULL, "Events without a content row");
    s->m_skipped = eng_metrics_counter("engage_source_ignored_changes_total", "source=\"kafka\"",
                                       "Records that are not events (updates, deletes, "
                                       "tombstones, heartbeats, markers)");
    s->m_content = eng_metrics_counter("engage_content_changes_total", NULL,
                                       "Content changes applied to the cache");
    s->m_dropped = eng_metrics_counter("engage_kafka_revoked_batches_total", NULL,
                                       "Batches whose offsets were given up with their "
                                       "partitions (read again by the new owner)");
    s->m_assigned = eng_metrics_gauge("engage_kafka_assigned_partitions", NULL,
                                      "Partitions of the events topic this member owns");
    s->m_sync_failed = eng_metrics_counter("engage_kafka_content_sync_failures_total", NULL,
                                           "Times events went on without the content topic "
                                           "brought up to date (the broker did not answer)");
    s->m_versions = eng_metrics_gauge("engage_kafka_content_versions", NULL,
                                      "Content changes kept to enrich events read late");
    s->m_lag = eng_metrics_gauge("engage_kafka_consumer_lag", NULL,
                                 "Records behind the high watermark, summed over the "
                                 "partitions this member owns");
}

/* The consumer lag per owned partition and in all, from the watermarks librdkafka keeps. */
static void update_lag(struct ksrc *s)
{
    int64_t now = eng_clock_mono_us();
    if (now < s->lag_at || s->assigned == NULL)
        return;
    s->lag_at = now + LAG_EVERY_US;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(s->assigned);
    rd_kafka_position(s->rk, l);
    int64_t total = 0;
    for (int i = 0; i < l->cnt; i++) {
        int64_t lo, hi;
        if (rd_kafka_get_watermark_offsets(s->rk, s->opt->topic, l->elems[i].partition, &lo, &hi) !=
                RD_KAFKA_RESP_ERR_NO_ERROR ||
            hi < 0)
            continue;
        int64_t pos = l->elems[i].offset >= 0 ? l->elems[i].offset : lo;
        int64_t lag = hi > pos ? hi - pos : 0;
        char labels[48];
        snprintf(labels, sizeof(labels), "partition=\"%d\"", l->elems[i].partition);
        eng_gauge_set(eng_metrics_gauge("engage_kafka_partition_lag", labels,
                                        "Records behind the high watermark, per partition"),
                      lag);
        total += lag;
    }
    eng_gauge_set(s->m_lag, total);
    rd_kafka_topic_partition_list_destroy(l);
}

/* The content topic, read whole before the first event; or, without one, the table. */
static int setup_content(struct ksrc *s, struct eng_error *err)
{
    if (s->content_topic[0] != '\0') {
        s->rc = new_consumer(s, reader_defaults, false, err);
        s->rq = s->rc != NULL ? new_consumer(s, reader_defaults, false, err) : NULL;
        if (s->rq == NULL)
            return err->code;
        content_assign(s);
        if (s->content_assigned)
            return content_sync(s, err);
        eng_warn("msg=\"the content topic does not exist (yet)\" topic=%s", s->content_topic);
    }
    if (s->opt->conninfo != NULL)
        return load_content_table(s, err);
    return 0;
}

/* Each sink's progress per partition, in STATE_DIR/kafka-GROUP.sinks for this topic. A
 * topic deleted and created again under the same name starts its offsets anew: remove the
 * file then (docs/kafka.md). */
static void track_progress(struct ksrc *s)
{
    if (s->opt->state_dir == NULL)
        return;
    const char *group = s->opt->group ? s->opt->group : "engage";
    char path[4096], identity[600];
    snprintf(path, sizeof(path), "%s/kafka-%s.sinks", s->opt->state_dir, group);
    snprintf(identity, sizeof(identity), "kafka %s %s", s->opt->topic, group);
    eng_pipeline_track_progress(s->p, path, identity, UINT64_MAX);
}

static int setup(struct ksrc *s, struct eng_error *err)
{
    content_topic_name(s);
    s->content = eng_versions_create(0);
    s->as_of = eng_content_cache_create();
    s->dec = eng_dbz_decoder_create();
    s->batch = eng_batch_create(s->opt->batch_max_events);
    register_metrics(s);
    int rc = setup_content(s, err);
    if (rc != 0)
        return rc;
    track_progress(s);
    s->rk = new_consumer(s, consumer_defaults, true, err);
    if (s->rk == NULL)
        return err->code;
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, s->opt->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(s->rk, t);
    rd_kafka_topic_partition_list_destroy(t);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return eng_error_set(err, ENG_EINVAL, false, "subscribe to %s: %s", s->opt->topic,
                             rd_kafka_err2str(e));
    eng_info("msg=\"consuming\" topic=%s group=%s content_topic=%s", s->opt->topic,
             s->opt->group ? s->opt->group : "engage",
             s->content_topic[0] ? s->content_topic : "none");
    return 0;
}

/* ---- the loop ---- */

/* Takes what the consumer has: waits up to timeout_ms for the first record, then takes
 * those already fetched. Records polled before a rebalance are dropped (their partitions may
 * be someone else's now). Returns how many are in s->group; *caught_up says whether every
 * record fetched was taken. */
static size_t gather(struct ksrc *s, int timeout_ms, bool *caught_up)
{
    size_t n = 0;
    *caught_up = false;
    for (;;) {
        uint32_t gen = s->assign_gen;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->rk, n == 0 ? timeout_ms : 0);
        if (gen != s->assign_gen) {
            for (size_t i = 0; i < n; i++)
                rd_kafka_message_destroy(s->group[i]);
            n = 0;
        }
        if (m == NULL) {
            *caught_up = true;
            return n;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                eng_warn("msg=\"kafka\" error=\"%s\"", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            return n;
        }
        s->group[n++] = m;
        if (n == GROUP_MAX)
            return n;
    }
}

static int poll_once(struct ksrc *s, struct eng_error *err)
{
    int64_t now = eng_clock_mono_us();
    int timeout_ms = 100;
    if (s->batch_deadline != 0)
        timeout_ms = s->batch_deadline > now ? (int)((s->batch_deadline - now + 999) / 1000) : 0;
    bool caught_up;
    size_t n = gather(s, timeout_ms, &caught_up);
    int rc = 0;
    if (n > 0) {
        eng_pipeline_source_health(s->p, "kafka", true, NULL);
        rc = content_sync(s, err);
    }
    for (size_t i = 0; i < n; i++) {
        if (rc == 0 && owned(s, s->group[i]->partition))
            rc = on_record(s, s->group[i], err);
        rd_kafka_message_destroy(s->group[i]);
    }
    /* A batch closes when full, when old, or as soon as the consumer has taken everything
     * fetched (caught up: waiting longer only adds latency). */
    if (rc == 0 && (eng_batch_full(s->batch) || (n > 0 && caught_up) ||
                    (s->batch_deadline != 0 && eng_clock_mono_us() >= s->batch_deadline)))
        rc = flush_batch(s, -1);
    store_durable(s);
    update_lag(s);
    return rc;
}

static void shut_down(struct ksrc *s)
{
    if (s->rk != NULL) {
        if (flush_batch(s, STOP_WAIT_US) == 0)
            eng_pipeline_wait_idle(s->p, STOP_WAIT_US);
        store_durable(s);
        rd_kafka_commit(s->rk, NULL, 0);
        rd_kafka_consumer_close(s->rk);
        rd_kafka_destroy(s->rk);
    }
    if (s->rq != NULL)
        rd_kafka_destroy(s->rq);
    if (s->rc != NULL) {
        rd_kafka_consumer_close(s->rc);
        rd_kafka_destroy(s->rc);
    }
    if (s->assigned != NULL)
        rd_kafka_topic_partition_list_destroy(s->assigned);
    drop_inflight(s);
    free(s->q);
    free(s->open.v);
    eng_batch_release(s->batch);
    eng_dbz_decoder_destroy(s->dec);
    eng_versions_destroy(s->content);
    eng_content_cache_destroy(s->as_of);
    free(s->content_next);
}

int eng_kafka_source_run(const struct eng_kafka_source_options *opt, struct eng_pipeline *p,
                         volatile sig_atomic_t *stop, struct eng_error *err)
{
    struct ksrc s = {.opt = opt, .p = p, .stop = stop};
    eng_pipeline_source_health(p, "kafka", false, "connecting");
    int rc = setup(&s, err);
    while (rc == 0 && !*stop) {
        if (s.fatal) {
            *err = s.fatal_err;
            rc = err->code;
            break;
        }
        if (eng_pipeline_failed(p, err)) {
            rc = ENG_EFATAL;
            break;
        }
        rc = poll_once(&s, err);
    }
    if (rc == ENG_ESTOPPED)
        rc = 0;
    eng_pipeline_source_health(p, "kafka", false, rc == 0 ? "stopped" : err->msg);
    shut_down(&s);
    return rc;
}
