/* engage: the durable dead-letter queue, a table in PostgreSQL (engage_dlq by default).
 * Anything engage cannot deliver or cannot decode is parked here with its position and a
 * reason, never dropped. Ownership: the dlq owns its own libpq connection; one dlq object is
 * used by one thread at a time (each thread that parks creates its own). */
#ifndef ENG_DLQ_H
#define ENG_DLQ_H

#include <stddef.h>
#include <stdint.h>

#include <stdbool.h>

#include "../core/error.h"

struct eng_dlq;

/* The origin of the HTTP sink's outbox: events spilled because the API was slower than the
 * stream, on their way to the API rather than dead letters; `engage run` drains them by
 * itself (outbox.h). */
#define ENG_DLQ_OUTBOX "outbox"

/* One parked item. `origin` says who parked it: "source" (bad input), "http" (gave up), ...
 * `position` is the source position as text (an LSN such as "0/16B3748", or
 * "topic/partition/offset"). event_id is -1 when the input did not decode to an event.
 * Parking the same (origin, position, event_id) twice updates the row instead of adding one,
 * so replays after a crash do not multiply entries. */
struct eng_dlq_item {
    const char *origin;
    const char *position;
    int64_t event_id;
    const char *reason;
    int last_status; /* HTTP status or 0 */
    int attempts;
    const void *payload; /* the event JSON, or the raw undecodable bytes */
    size_t payload_len;
};

/* Creates a dlq writing to table (NULL: "engage_dlq") through conninfo; connects lazily and
 * creates the table if missing on first use. */
struct eng_dlq *eng_dlq_create(const char *conninfo, const char *table);
void eng_dlq_destroy(struct eng_dlq *q);

/* Parks n items durably (one transaction). Returns 0 or an error (retriable if the server is
 * unreachable: the caller must not ack what it failed to park). */
int eng_dlq_park(struct eng_dlq *q, const struct eng_dlq_item *items, size_t n,
                 struct eng_error *err) ENG_MUSTCHECK;

/* Parks one item: eng_dlq_park of {origin, position, event_id, reason, payload}. */
int eng_dlq_park_one(struct eng_dlq *q, const char *origin, const char *position, int64_t event_id,
                     const char *reason, const void *payload, size_t len,
                     struct eng_error *err) ENG_MUSTCHECK;

/* Rows of origin still pending, and the age in seconds of the oldest (0 when none);
 * 0, or an error. */
int eng_dlq_origin_stats(struct eng_dlq *q, const char *origin, int64_t *pending, double *oldest_s,
                         struct eng_error *err) ENG_MUSTCHECK;

/* Number of rows neither replayed nor discarded, the outbox's ("outbox": events on their way
 * to the API, not dead letters) left out; or -1 on error. */
int64_t eng_dlq_pending(struct eng_dlq *q, struct eng_error *err);

/* One parked row as read back. Strings are owned by the row until the callback returns. */
struct eng_dlq_row {
    int64_t id;
    const char *parked_at; /* "YYYY-MM-DD HH:MM:SS+00" */
    const char *origin;
    const char *position;
    int64_t event_id; /* -1 when NULL */
    const char *reason;
    int last_status;
    int attempts;
    const char *payload; /* raw bytes */
    size_t payload_len;
    bool replayed;
    bool discarded;
};

/* Which rows a scan returns, in id order. */
struct eng_dlq_filter {
    const char *origin;     /* NULL: any */
    const char *not_origin; /* NULL: none left out */
    const int64_t *ids;     /* NULL: any */
    size_t nids;
    bool pending_only; /* neither replayed nor discarded */
    int64_t after_id;  /* id > after_id (for paging) */
    int64_t limit;     /* 0: no limit */
};

/* Calls fn for every row that matches, stopping early when fn returns false. Returns the
 * number of rows visited, or -1 with err set. */
int64_t eng_dlq_scan(struct eng_dlq *q, const struct eng_dlq_filter *f,
                     bool (*fn)(const struct eng_dlq_row *row, void *ctx), void *ctx,
                     struct eng_error *err);

/* Sets discarded_at = now() on those of the given ids that are pending: an operator's decision
 * that they will never be delivered (they stay in the table, no longer pending; parking the
 * same item again makes it pending again). Returns the number of rows discarded, or -1. */
int64_t eng_dlq_discard(struct eng_dlq *q, const int64_t *ids, size_t n,
                        struct eng_error *err) ENG_MUSTCHECK;

/* Sets replayed_at = now() on the given ids (after the API acknowledged them). */
int eng_dlq_mark_replayed(struct eng_dlq *q, const int64_t *ids, size_t n,
                          struct eng_error *err) ENG_MUSTCHECK;

#endif
