/* engage: the enriched event and the batch that carries events from a source to the sinks.
 * Ownership: a batch owns its events and every byte they point to; once submitted to the
 * pipeline it is immutable and shared by the sink threads through a reference count. */
#ifndef ENG_EVENT_H
#define ENG_EVENT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

/* A byte range inside one of the batch's buffers (offsets, so the buffers may grow). */
struct eng_slice {
    uint32_t off;
    uint32_t len;
};

enum eng_event_flags {
    ENG_EV_USER_NULL = 1u << 0,
    ENG_EV_TYPE_NULL = 1u << 1,
    ENG_EV_DURATION_NULL = 1u << 2,
    ENG_EV_DEVICE_NULL = 1u << 3,
    ENG_EV_CONTENT_FOUND = 1u << 4, /* a content row joined */
    ENG_EV_CTYPE_NULL = 1u << 5,    /* content_type NULL (or no content row) */
    ENG_EV_LENGTH_NULL = 1u << 6,   /* length_seconds NULL (or no content row) */
    ENG_EV_SECONDS_VALID = 1u << 7, /* engagement_seconds is not NULL */
    ENG_EV_PCT_VALID = 1u << 8,     /* engagement_pct is not NULL */
    ENG_EV_TOMBSTONE = 1u << 9,     /* capture: a message with a key and no value */
};

/* One engagement event, enriched. Text fields are slices of batch->strings; json is a slice
 * of batch->jsonl, the enriched event exactly as DESIGN.md section 1 writes it. */
struct eng_event {
    int64_t event_id;
    int64_t event_ts_us;    /* timestamp without time zone, taken as UTC, microseconds */
    int64_t commit_time_us; /* source commit time (for end-to-end latency), 0 if unknown */
    /* Where the event stands in the source's order: its transaction's commit LSN and its
     * place among that transaction's events. txn_lsn 0: the source has no such order. */
    uint64_t txn_lsn;
    uint32_t txn_seq;
    /* Which of the source's independent orders the event is in: 0 for PostgreSQL (one
     * order); the partition for Kafka, where (txn_lsn, txn_seq) = (offset + 1, 0) orders
     * the events of one partition only. */
    uint32_t stream;
    int32_t content_id;
    int32_t user_id;
    int32_t duration_ms;
    int32_t length_seconds;
    int64_t pct_hundredths; /* engagement_pct * 100, rounded half away from zero */
    uint32_t flags;
    struct eng_slice event_type;
    struct eng_slice device;
    struct eng_slice content_type;
    struct eng_slice json;
    /* capture (engage capture): the event is a change message for Kafka; json is its value,
     * key a slice of strings, topic which of the sink's topics it goes to. */
    struct eng_slice key;
    uint8_t topic;
};

/* True when e comes after the event at (lsn, seq) in the source's order (of e's stream). */
static inline bool eng_event_after(const struct eng_event *e, uint64_t lsn, uint32_t seq)
{
    return e->txn_lsn > lsn || (e->txn_lsn == lsn && e->txn_seq > seq);
}

/* A micro-batch. Events are in source order. `position` is what the source may confirm
 * once this batch and every batch before it are durable in every sink (for PostgreSQL the
 * end_lsn of the last transaction completed in or before this batch). */
struct eng_batch {
    uint64_t seq; /* assigned by the pipeline, 1, 2, ... */
    uint64_t position;
    int64_t created_us;
    uint32_t n;
    uint32_t cap;
    struct eng_event *events;
    struct eng_buf strings; /* text fields */
    struct eng_buf jsonl;   /* every event's json, each followed by '\n' */
    atomic_int refs;
};

/* Creates an empty batch for at most cap events (and at most ENG_BATCH_MAX_BYTES of text). */
struct eng_batch *eng_batch_create(uint32_t cap);

#define ENG_BATCH_MAX_BYTES ((size_t)256 << 20)

/* What one event may carry: its row's text columns with its content type at most
 * ENG_EVENT_MAX_TEXT bytes, its enriched JSON at most ENG_EVENT_MAX_JSON (text escapes to at
 * most 6 bytes a byte). A larger row is parked with the reason, never cut. A batch is full
 * while less room than the worst event is left (ENG_BATCH_MARGIN). */
#define ENG_EVENT_MAX_TEXT ((size_t)4 << 20)
#define ENG_EVENT_MAX_JSON ((size_t)16 << 20)
#define ENG_BATCH_MARGIN   ((size_t)32 << 20)

/* Drops one reference (the creator holds the first); frees the batch at zero. NULL is a no-op. */
void eng_batch_release(struct eng_batch *b);
void eng_batch_retain(struct eng_batch *b);

/* True when no more events fit (count or bytes). */
bool eng_batch_full(const struct eng_batch *b);

/* Appends a zeroed event and returns it; the caller must have checked eng_batch_full. */
struct eng_event *eng_batch_push(struct eng_batch *b);

/* Drops the last event pushed (after an enrichment or encoding failure). */
void eng_batch_pop(struct eng_batch *b);

/* A new batch holding the events of bs[0..n) in order, from the one after the first skip
 * and at most max of them (text and JSON copied, slices rebased), with the last batch's seq
 * and position: one write for several queued batches, or a part of one. The inputs are
 * borrowed. */
struct eng_batch *eng_batch_merge(struct eng_batch *const *bs, uint32_t n, uint32_t skip,
                                  uint32_t max);

/* A new batch of the events of bs[0..n) that keep(e, ctx) accepts, in order (text and JSON
 * copied, slices rebased), with the last batch's seq and position. The inputs are borrowed. */
struct eng_batch *eng_batch_select(struct eng_batch *const *bs, uint32_t n,
                                   bool (*keep)(const struct eng_event *e, void *ctx), void *ctx);

/* Copies text into batch->strings and returns its slice. */
struct eng_slice eng_batch_put_string(struct eng_batch *b, const char *s, size_t n);

/* Pointer to a slice of strings / of jsonl (valid until the buffer grows). */
static inline const char *eng_batch_str(const struct eng_batch *b, struct eng_slice s)
{
    return b->strings.data + s.off;
}
static inline const char *eng_batch_json(const struct eng_batch *b, const struct eng_event *e)
{
    return b->jsonl.data + e->json.off;
}

#endif
