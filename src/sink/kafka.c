/* The Kafka sink: ready messages in, broker acknowledgements out.
 *
 * A write produces every message of the batch and waits for every delivery report. Reports
 * are matched to the write by a generation number carried as each message's opaque, so a
 * report that arrives after its write gave up (cancel, reconnect) counts for nothing. A batch
 * that was not wholly acknowledged is produced again: Kafka gets it at least once, like
 * from Debezium; consumers are idempotent by event_id. */
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../core/murmur2.h"
#include "kafka.h"

/* How long open waits for the broker's metadata and a topic's creation. */
#define META_TIMEOUT_MS 10000

struct kafka_sink {
    struct eng_sink base;              /* first: the pipeline sees a struct eng_sink */
    struct eng_kafka_sink_options opt; /* strings owned (copied) */
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt[ENG_KAFKA_MAX_TOPICS];
    int32_t npart[ENG_KAFKA_MAX_TOPICS];
    rd_kafka_headers_t *headers;
    /* The write in progress: its generation, messages not yet reported, and the first
     * failure reported. Touched on the sink's thread only (reports run inside poll). */
    uint32_t gen;
    uint64_t pending;
    rd_kafka_resp_err_t failed;
    uint32_t *too_large; /* events the broker refused as too large, parked after the write */
    size_t ntoo_large, cap_too_large;
    atomic_bool cancelled;
    struct eng_counter *m_produced, *m_failed;
};

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    enum eng_log_level l = level <= 3 ? ENG_LOG_ERROR : level <= 5 ? ENG_LOG_WARN : ENG_LOG_DEBUG;
    eng_log(l, "msg=\"librdkafka\" facility=%s detail=\"%s\"", fac, buf);
}

static int conf_set(rd_kafka_conf_t *conf, const char *kv, struct eng_error *err)
{
    const char *eq = strchr(kv, '=');
    if (eq == NULL || eq == kv)
        return eng_error_set(err, ENG_EINVAL, false, "kafka property \"%s\" is not key=value", kv);
    char key[256];
    size_t klen = (size_t)(eq - kv);
    if (klen >= sizeof(key))
        return eng_error_set(err, ENG_EINVAL, false, "kafka property name too long");
    memcpy(key, kv, klen);
    key[klen] = '\0';
    char errstr[256];
    if (rd_kafka_conf_set(conf, key, eq + 1, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
        return eng_error_set(err, ENG_EINVAL, false, "kafka property %s: %s", key, errstr);
    return 0;
}

rd_kafka_conf_t *eng_kafka_conf_new(const char *bootstrap, const char *const *defaults,
                                    const char *const *props, size_t nprops, struct eng_error *err)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, on_log);
    char errstr[256];
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        eng_error_set(err, ENG_EINVAL, false, "kafka bootstrap \"%s\": %s", bootstrap, errstr);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    for (size_t i = 0; defaults != NULL && defaults[i] != NULL; i++) {
        if (conf_set(conf, defaults[i], err) != 0)
            eng_die("engage's own kafka default is refused: %s", err->msg);
    }
    for (size_t i = 0; i < nprops; i++) {
        if (conf_set(conf, props[i], err) != 0) {
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    return conf;
}

/* ---- delivery ---- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    struct kafka_sink *k = opaque;
    uint64_t tag = (uint64_t)(uintptr_t)m->_private;
    if ((uint32_t)(tag >> 32) != k->gen)
        return; /* a report for a write that already gave up */
    k->pending--;
    if (m->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
        if (k->ntoo_large == k->cap_too_large) {
            k->cap_too_large = k->cap_too_large ? 2 * k->cap_too_large : 16;
            k->too_large = eng_realloc(k->too_large, k->cap_too_large * sizeof(uint32_t));
        }
        k->too_large[k->ntoo_large++] = (uint32_t)tag;
    } else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        eng_counter_add(k->m_failed, 1);
        if (k->failed == RD_KAFKA_RESP_ERR_NO_ERROR)
            k->failed = m->err;
    } else {
        eng_counter_add(k->m_produced, 1);
    }
}

static const char *const producer_defaults[] = {
    "enable.idempotence=true", /* implies acks=all and ordered retries */
    "acks=all",
    "linger.ms=5",
    /* Debezium's records with their schema part are about 3.8 KB and alike: lz4 makes the
     * log 23 times smaller and capture 2.9 times faster (bench/kafka.py); every client
     * reads it transparently. -X compression.type=none restores Debezium's default. */
    "compression.type=lz4",
    "message.timeout.ms=300000",
    "socket.keepalive.enable=true",
    "allow.auto.create.topics=false", /* open creates them, with their partition count */
    NULL,
};

/* ---- topics ---- */

static int create_topic(struct kafka_sink *k, size_t i, struct eng_error *err)
{
    char errstr[256];
    int parts = k->opt.partitions > 0 ? k->opt.partitions : 1;
    rd_kafka_NewTopic_t *nt =
        rd_kafka_NewTopic_new(k->opt.topics[i], parts, -1, errstr, sizeof(errstr));
    if (nt == NULL)
        return eng_error_set(err, ENG_EINVAL, false, "topic %s: %s", k->opt.topics[i], errstr);
    if (k->opt.compact[i])
        rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->rk);
    rd_kafka_CreateTopics(k->rk, &nt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, META_TIMEOUT_MS);
    int rc = 0;
    const rd_kafka_CreateTopics_result_t *res = ev ? rd_kafka_event_CreateTopics_result(ev) : NULL;
    if (res == NULL) {
        rc = eng_error_set(err, ENG_EIO, true, "topic %s: no answer to its creation",
                           k->opt.topics[i]);
    } else {
        size_t n;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &n);
        rd_kafka_resp_err_t e =
            n == 1 ? rd_kafka_topic_result_error(tr[0]) : RD_KAFKA_RESP_ERR__FAIL;
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            rc = eng_error_set(err, ENG_EIO, true, "could not create topic %s: %s",
                               k->opt.topics[i], rd_kafka_err2str(e));
        else if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
            eng_info("msg=\"created topic\" topic=%s partitions=%d", k->opt.topics[i], parts);
    }
    if (ev != NULL)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    return rc;
}

/* The topic's partition count from the broker's metadata (0: the topic does not exist). */
static int partition_count(struct kafka_sink *k, size_t i, int32_t *n, struct eng_error *err)
{
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t e = rd_kafka_metadata(k->rk, 0, k->rkt[i], &md, META_TIMEOUT_MS);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return eng_error_set(err, ENG_EIO, true, "kafka metadata for %s: %s", k->opt.topics[i],
                             rd_kafka_err2str(e));
    *n = 0;
    if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        *n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    return 0;
}

static int open_topic(struct kafka_sink *k, size_t i, struct eng_error *err)
{
    k->rkt[i] = rd_kafka_topic_new(k->rk, k->opt.topics[i], NULL);
    int rc = partition_count(k, i, &k->npart[i], err);
    if (rc == 0 && k->npart[i] == 0) {
        rc = create_topic(k, i, err);
        int64_t deadline = eng_clock_mono_us() + META_TIMEOUT_MS * INT64_C(1000);
        while (rc == 0 && k->npart[i] == 0 && eng_clock_mono_us() < deadline)
            rc = partition_count(k, i, &k->npart[i], err);
        if (rc == 0 && k->npart[i] == 0)
            rc = eng_error_set(err, ENG_EIO, true, "topic %s has no partitions yet",
                               k->opt.topics[i]);
    }
    return rc;
}

/* ---- the sink ---- */

static void kafka_close(struct eng_sink *s)
{
    struct kafka_sink *k = (struct kafka_sink *)s;
    if (k->rk == NULL)
        return;
    k->gen++; /* whatever is still reported belongs to no write */
    rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(k->rk, 0);
    for (size_t i = 0; i < k->opt.ntopics; i++) {
        if (k->rkt[i] != NULL)
            rd_kafka_topic_destroy(k->rkt[i]);
        k->rkt[i] = NULL;
    }
    rd_kafka_destroy(k->rk);
    k->rk = NULL;
}

static int kafka_open(struct eng_sink *s, struct eng_error *err)
{
    struct kafka_sink *k = (struct kafka_sink *)s;
    rd_kafka_conf_t *conf =
        eng_kafka_conf_new(k->opt.bootstrap, producer_defaults, k->opt.props, k->opt.nprops, err);
    if (conf == NULL)
        return err->code;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, k);
    char errstr[256];
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (k->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return eng_error_set(err, ENG_EINVAL, false, "kafka producer: %s", errstr);
    }
    for (size_t i = 0; i < k->opt.ntopics; i++) {
        int rc = open_topic(k, i, err);
        if (rc != 0) {
            kafka_close(s);
            return rc;
        }
    }
    return 0;
}

/* Produces one message; waits while librdkafka's queue is full. */
static int produce(struct kafka_sink *k, const struct eng_batch *b, uint32_t idx,
                   struct eng_error *err)
{
    const struct eng_event *e = &b->events[idx];
    void *tag = (void *)(uintptr_t)(((uint64_t)k->gen << 32) | idx);
    const char *key = eng_batch_str(b, e->key);
    bool tomb = (e->flags & ENG_EV_TOMBSTONE) != 0;
    int32_t part = eng_kafka_partition(key, e->key.len, k->npart[e->topic]);
    for (;;) {
        rd_kafka_headers_t *h = rd_kafka_headers_copy(k->headers);
        rd_kafka_resp_err_t rc = rd_kafka_producev(
            k->rk, RD_KAFKA_V_RKT(k->rkt[e->topic]), RD_KAFKA_V_PARTITION(part),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY((void *)key, e->key.len),
            RD_KAFKA_V_VALUE(tomb ? NULL : (void *)eng_batch_json(b, e), tomb ? 0 : e->json.len),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(tag), RD_KAFKA_V_END);
        if (rc == RD_KAFKA_RESP_ERR_NO_ERROR) {
            k->pending++;
            return 0;
        }
        rd_kafka_headers_destroy(h);
        if (rc != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return eng_error_set(err, ENG_EIO, true, "kafka produce to %s: %s",
                                 k->opt.topics[e->topic], rd_kafka_err2str(rc));
        if (atomic_load(&k->cancelled))
            return eng_error_set(err, ENG_EAGAIN, true, "cancelled");
        rd_kafka_poll(k->rk, 10);
    }
}

/* Parks the messages the broker refused for what they are (too large), so that the rest
 * can go on; any other failure fails the write. */
static int check_failed(struct kafka_sink *k, const struct eng_batch *b, struct eng_error *err)
{
    rd_kafka_resp_err_t e = k->failed;
    for (size_t i = 0; e == RD_KAFKA_RESP_ERR_NO_ERROR && i < k->ntoo_large; i++) {
        if (k->base.park == NULL)
            return eng_error_set(err, ENG_EINVAL, false,
                                 "a message is larger than the broker takes and there is no "
                                 "dead-letter table (runbook: raise message.max.bytes)");
        int rc = k->base.park(&k->base, b, &b->events[k->too_large[i]],
                              "message larger than the broker takes (message.max.bytes)", err);
        if (rc != 0)
            return rc;
    }
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    rd_kafka_resp_err_t fatal = rd_kafka_fatal_error(k->rk, NULL, 0);
    return eng_error_set(err, ENG_EIO, true, "kafka delivery failed: %s%s", rd_kafka_err2str(e),
                         fatal ? " (producer fenced: reconnecting)" : "");
}

/* Waits until every record produced by this write was reported. */
static int wait_reported(struct kafka_sink *k, struct eng_error *err)
{
    while (k->pending > 0) {
        if (atomic_load(&k->cancelled))
            return eng_error_set(err, ENG_EAGAIN, true, "cancelled");
        rd_kafka_poll(k->rk, 100);
    }
    return 0;
}

static int kafka_write(struct eng_sink *s, const struct eng_batch *b, struct eng_error *err)
{
    struct kafka_sink *k = (struct kafka_sink *)s;
    k->gen++;
    k->pending = 0;
    k->failed = RD_KAFKA_RESP_ERR_NO_ERROR;
    k->ntoo_large = 0;
    bool barrier = false; /* a barrier-topic record is not yet reported */
    for (uint32_t i = 0; i < b->n; i++) {
        const struct eng_event *e = &b->events[i];
        if (e->topic >= k->opt.ntopics)
            eng_die("kafka sink: event for topic %u of %zu", e->topic, k->opt.ntopics);
        if (barrier && e->topic != k->opt.barrier_topic) {
            int rc = wait_reported(k, err);
            if (rc != 0)
                return rc;
            barrier = false;
        }
        int rc = produce(k, b, i, err);
        if (rc != 0)
            return rc;
        barrier = barrier || e->topic == k->opt.barrier_topic;
    }
    int rc = wait_reported(k, err);
    return rc != 0 ? rc : check_failed(k, b, err);
}

static void kafka_cancel(struct eng_sink *s)
{
    atomic_store(&((struct kafka_sink *)s)->cancelled, true);
}

static void kafka_destroy(struct eng_sink *s)
{
    struct kafka_sink *k = (struct kafka_sink *)s;
    kafka_close(s);
    rd_kafka_headers_destroy(k->headers);
    free(k->too_large);
    free((char *)k->opt.bootstrap);
    for (size_t i = 0; i < k->opt.ntopics; i++)
        free((char *)k->opt.topics[i]);
    for (size_t i = 0; i < k->opt.nprops; i++)
        free((char *)k->opt.props[i]);
    free(k);
}

static const struct eng_sink_ops kafka_ops = {
    .name = "kafka",
    .open = kafka_open,
    .write = kafka_write,
    .close = kafka_close,
    .cancel = kafka_cancel,
    .destroy = kafka_destroy,
};

struct eng_sink *eng_kafka_sink_create(const struct eng_kafka_sink_options *opt,
                                       struct eng_error *err)
{
    rd_kafka_conf_t *conf =
        eng_kafka_conf_new(opt->bootstrap, producer_defaults, opt->props, opt->nprops, err);
    if (conf == NULL)
        return NULL;
    rd_kafka_conf_destroy(conf);
    struct kafka_sink *k = eng_calloc(1, sizeof(*k));
    k->base.ops = &kafka_ops;
    /* A write keeps a copy of each record in librdkafka until the broker acknowledged it:
     * 10,000 Debezium records (about 38 MB with their schemas) rather than the pipeline's
     * 50,000 bound the memory that waits on the broker. */
    k->base.merge_max_events = 10000;
    k->opt = *opt;
    k->opt.bootstrap = eng_strdup(opt->bootstrap);
    for (size_t i = 0; i < opt->ntopics; i++)
        k->opt.topics[i] = eng_strdup(opt->topics[i]);
    for (size_t i = 0; i < opt->nprops; i++)
        k->opt.props[i] = eng_strdup(opt->props[i]);
    k->headers = rd_kafka_headers_new(opt->nheaders);
    for (size_t i = 0; i < opt->nheaders; i++)
        rd_kafka_header_add(k->headers, opt->headers[i].name, -1, opt->headers[i].value, -1);
    k->opt.nheaders = 0; /* the strings are not kept: the headers hold copies */
    k->m_produced = eng_metrics_counter("engage_capture_messages_produced_total", "",
                                        "Messages the broker acknowledged");
    k->m_failed = eng_metrics_counter("engage_capture_delivery_failures_total", "",
                                      "Messages whose delivery failed (produced again)");
    return &k->base;
}
