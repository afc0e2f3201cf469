/* engage: the Kafka sink of `engage capture`. Each event of a batch is a ready message (the
 * capture source rendered its key and value); the sink produces them with an idempotent
 * producer (acks=all) to the partition the Java client's murmur2 partitioner picks for the
 * key, and acknowledges the batch only when the broker acknowledged every message of it.
 * Ownership: the sink owns its producer and copies of the strings it is given. */
#ifndef ENG_SINK_KAFKA_H
#define ENG_SINK_KAFKA_H

#include <stddef.h>

#include "../core/error.h"
#include "sink.h"

#define ENG_KAFKA_MAX_TOPICS  2
#define ENG_KAFKA_MAX_HEADERS 8
#define ENG_KAFKA_MAX_PROPS   64

struct eng_kafka_header {
    const char *name;
    const char *value;
};

struct eng_kafka_sink_options {
    const char *bootstrap;                    /* host:port[,host:port] */
    const char *topics[ENG_KAFKA_MAX_TOPICS]; /* indexed by eng_event.topic */
    size_t ntopics;
    /* A topic that does not exist is created with this many partitions (0: 1); content
     * topics (compact[i]) with cleanup.policy=compact. */
    int partitions;
    bool compact[ENG_KAFKA_MAX_TOPICS];
    /* Records of this topic (index; -1: none) are acknowledged before any record that
     * follows them in a batch goes to another topic: a reader of both topics that has seen
     * a later record of the other topic then finds them at or below that topic's high
     * watermark (capture: content changes before the events committed after them). */
    int barrier_topic;
    struct eng_kafka_header headers[ENG_KAFKA_MAX_HEADERS]; /* on every message, in order */
    size_t nheaders;
    /* librdkafka properties (-X key=value), applied after engage's own. */
    const char *props[ENG_KAFKA_MAX_PROPS];
    size_t nprops;
};

/* Checks the properties (a bad -X is an ENG_EINVAL naming it) and creates the sink; the
 * connection is made by open. NULL with err set on failure. */
struct eng_sink *eng_kafka_sink_create(const struct eng_kafka_sink_options *opt,
                                       struct eng_error *err);

/* A librdkafka configuration for bootstrap: its log lines go to engage's log, then the
 * "key=value" defaults (NULL-terminated) and the user's props are set in that order, so the
 * user's -X wins. NULL with ENG_EINVAL in err naming the property librdkafka refused.
 * Shared by the producer here and the consumer of the Kafka source. */
struct rd_kafka_conf_s;
struct rd_kafka_conf_s *eng_kafka_conf_new(const char *bootstrap, const char *const *defaults,
                                           const char *const *props, size_t nprops,
                                           struct eng_error *err);

#endif
