/* engage: the Kafka source (`engage run --source kafka`). Consumes the events topic that
 * Debezium or `engage capture` writes, as one member of a consumer group, enriches each
 * insert with the content cache and feeds the pipeline; the content topic, read whole by
 * every member, keeps the cache current. Offsets are stored only once every sink made the
 * events before them durable. Ownership: the source borrows the pipeline and the dlq; it
 * owns its consumers, decoder and content cache. One thread runs it. */
#ifndef ENG_SOURCE_KAFKA_H
#define ENG_SOURCE_KAFKA_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"

struct eng_kafka_source_options {
    const char *bootstrap;     /* host:port[,host:port] */
    const char *group;         /* consumer group (default engage) */
    const char *topic;         /* events (default dbserver1.public.engagement_events) */
    const char *content_topic; /* content (NULL: the events topic's prefix + ".content";
                                  "": none) */
    const char *conninfo;      /* PostgreSQL: the content table is read at start (NULL: not) */
    const char *const *props;  /* librdkafka properties (-X key=value), after engage's own */
    size_t nprops;
    uint32_t batch_max_events; /* default 10000 */
    int64_t batch_max_us;      /* default 50 ms */
    bool snapshot_reads;       /* deliver op "r" (snapshot reads) as events too */
    /* Where each sink's progress per partition is kept (NULL: not kept), so that after a
     * crash a sink is not sent again what it already had (src/pipeline/pipeline.h). */
    const char *state_dir;
    struct eng_dlq *dlq; /* where messages that do not decode are parked; required */
};

/* Consumes until *stop becomes non-zero (then stores and commits what is durable and
 * returns 0) or a fatal condition (returns ENG_EFATAL with err saying what to do). Broker
 * outages are waited out inside. */
int eng_kafka_source_run(const struct eng_kafka_source_options *opt, struct eng_pipeline *p,
                         volatile sig_atomic_t *stop, struct eng_error *err);

#endif
