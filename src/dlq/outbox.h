/* engage: the HTTP sink's outbox, drained by itself. When the API is slower than the stream,
 * the sink spills the events it cannot take in time into the dead-letter table under origin
 * ENG_DLQ_OUTBOX (so Redis and ClickHouse stay fresh); this drainer sends them on, oldest
 * first, as fast as the API takes them, with the same Idempotency-Keys (the replay engine,
 * replay.h), and moves what the API refuses or what fails past the retry budget to the dead
 * letters (origin "http"), which wait for `engage dlq replay`.
 *
 * Ownership: the drainer owns its thread and its connection to the table; the writer and
 * the scratch dlq are the caller's, used on the drainer's thread only while it runs. */
#ifndef ENG_DLQ_OUTBOX_H
#define ENG_DLQ_OUTBOX_H

#include <stdint.h>

#include "../core/error.h"
#include "../core/event.h"
#include "dlq.h"

struct eng_outbox_options {
    const char *conninfo;
    const char *table;     /* NULL: engage_dlq */
    uint32_t request_size; /* events per request of the writer */
    /* The writer (the caller's HTTP sink), which parks what it cannot deliver in scratch
     * (a dlq on ENG_DLQ_REPLAY_SCRATCH). */
    int (*write)(void *ctx, const struct eng_batch *b, struct eng_error *err);
    /* Makes a write in progress return early (optional; for stop). Any thread. */
    void (*cancel)(void *ctx);
    void *ctx;
    struct eng_dlq *scratch;
    int64_t idle_poll_us; /* how often an empty outbox is looked at (0: 1 s) */
};

struct eng_outbox;

/* Starts the drainer's thread. Returns NULL with err set if the thread cannot start. */
struct eng_outbox *eng_outbox_start(const struct eng_outbox_options *opt, struct eng_error *err);

/* Stops the thread (a write in progress is cancelled) and frees o. NULL is a no-op. */
void eng_outbox_stop(struct eng_outbox *o);

#endif
