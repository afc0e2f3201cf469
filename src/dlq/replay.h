/* engage: replaying dead-letter rows of origin http, a round (one write) at a time, through a
 * writer the caller supplies (the HTTP sink: `engage dlq replay`). The engine chooses the
 * rows and cuts the rounds so that the writer sees the same requests, hence the same
 * Idempotency-Keys, as when the rows were first sent; it settles each round: rows the writer
 * could not deliver (it parked them in the scratch dead-letter table) are re-parked on
 * themselves in the real table and stay pending, the others are marked replayed.
 * Ownership: everything is borrowed for the call; one thread. */
#ifndef ENG_DLQ_REPLAY_H
#define ENG_DLQ_REPLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/event.h"
#include "dlq.h"

/* The scratch table a writer should park in: a temporary table of its own session, so that
 * nothing outside the replay sees it and it goes away with the connection. */
#define ENG_DLQ_REPLAY_SCRATCH "pg_temp.engage_dlq_replay"

struct eng_dlq_replay_options {
    const char *origin; /* NULL or "http": the dead letters; ENG_DLQ_OUTBOX: the outbox */
    /* Where rows that still fail go: NULL, back onto themselves (pending, as before); else
     * parked anew under this origin (the outbox's failures become "http" dead letters) and
     * the rows they came from are marked done. */
    const char *failed_origin;
    const int64_t *ids; /* NULL: every pending http row; else these rows, whatever origin */
    size_t nids;
    int64_t limit;         /* at most this many rows; 0: no limit */
    uint32_t request_size; /* events per request of the writer (>= 1) */
    /* Where the writer parks what it cannot deliver (ENG_DLQ_REPLAY_SCRATCH, pending rows
     * only); read and cleared after every round. */
    struct eng_dlq *scratch;
    /* Writes one round: returns 0 when every event was delivered or parked in scratch, else
     * an error (nothing of the round counts as delivered). */
    int (*write)(void *ctx, const struct eng_batch *b, struct eng_error *err);
    void *write_ctx;
    /* Called with one line (no newline) for each thing worth saying: a row refused, a round
     * that failed, rows still failing, a requested row not pending. */
    void (*say)(void *ctx, const char *line);
    void *say_ctx;
};

struct eng_dlq_replay_totals {
    int64_t replayed; /* rows the API acknowledged, now marked replayed */
    int64_t failed;   /* rows that still fail and stay pending */
    int64_t refused;  /* rows that are not http events (never sent) */
    int64_t missing;  /* of opt->ids, rows not pending (counted only when complete) */
    bool complete;    /* every selected row was looked at */
};

/* Replays the pending rows of q that opt selects, in id order. A round in which nothing was
 * delivered and something failed for a reason that may pass (a timeout, a connection error,
 * 408, 429, 5xx) ends the replay: the API is down or overloaded. Fills *t; returns 0 when
 * every selected row was delivered, 1 when some were not (failed, refused, not found) or the
 * replay stopped early. */
int eng_dlq_replay(struct eng_dlq *q, const struct eng_dlq_replay_options *opt,
                   struct eng_dlq_replay_totals *t);

#endif
