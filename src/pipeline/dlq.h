/* engage: the durable dead-letter queue, a table in PostgreSQL (engage_dlq by default).
 * Anything engage cannot deliver or cannot decode is parked here with its position and a
 * reason, never dropped. Ownership: the dlq owns its own libpq connection; one dlq object is
 * used by one thread at a time (each thread that parks creates its own). */
#ifndef ENG_DLQ_H
#define ENG_DLQ_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"

struct eng_dlq;

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

/* Number of rows not yet replayed, or -1 on error. */
int64_t eng_dlq_pending(struct eng_dlq *q, struct eng_error *err);

#endif
