/* engage: what `engage capture` makes of each change the PostgreSQL source hands over in
 * capture mode: the Kafka record Debezium's PostgreSQL connector would write for it (key,
 * value, and a tombstone after a delete), appended to the batch for the Kafka sink.
 * Ownership: the capture owns its catalog connection and the record schemas it built; it
 * is used by the source's thread only. */
#ifndef ENG_SOURCE_CAPTURE_H
#define ENG_SOURCE_CAPTURE_H

#include <stdbool.h>

#include "../core/error.h"
#include "pg.h"

/* eng_event.topic of the records (the Kafka sink's topic list is in this order). */
enum eng_capture_topic { ENG_CAPTURE_EVENTS = 0, ENG_CAPTURE_CONTENT = 1 };

struct eng_capture_options {
    const char *conninfo; /* for the catalog facts pgoutput does not send */
    const char *prefix;   /* topic.prefix (default dbserver1) */
    bool key_primary;     /* key engagement_events by event_id instead of content_id */
    bool schemas;         /* the JSON converter's schema part (default on) */
};

struct eng_capture;

struct eng_capture *eng_capture_create(const struct eng_capture_options *opt);
void eng_capture_destroy(struct eng_capture *c);

/* The hook for eng_pg_source_options.capture (ctx: the capture). */
int eng_capture_change(void *ctx, struct eng_batch *b, const struct eng_pg_change *ch,
                       struct eng_error *err);

/* The hook for eng_pg_capture.snapshot: the content table's rows in the slot's snapshot as
 * op "r" records (Debezium's snapshot; engagement_events' rows are not sent: like
 * snapshot.mode=no_data for them, older events go through `engage backfill`). */
int eng_capture_snapshot(void *ctx, PGconn *conn, const char *snapshot, uint64_t lsn,
                         uint32_t batch_max, struct eng_batch ***out, size_t *n,
                         struct eng_error *err);

/* "<prefix>.public.engagement_events" / "<prefix>.public.content" into out. */
void eng_capture_topic(const char *prefix, enum eng_capture_topic t, char *out, size_t outlen);

#endif
