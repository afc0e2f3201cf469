/* engage: the PostgreSQL logical replication source (pgoutput, libpq replication=database).
 * Ownership: the source borrows the pipeline and the dlq; it owns its connections, decoder
 * and content caches. One thread runs it. */
#ifndef ENG_SOURCE_PG_H
#define ENG_SOURCE_PG_H

#include <signal.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "../core/error.h"
#include "../decode/pgoutput.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"

/* One change of a captured table, for capture mode. */
struct eng_pg_change {
    const struct eng_pgo_relation *rel;
    char op;                            /* 'c' insert, 'u' update, 'd' delete */
    const struct eng_pgo_tuple *before; /* NULL when the server sent no old row */
    const struct eng_pgo_tuple *after;  /* NULL for a delete */
    uint64_t lsn;                       /* the change's own LSN */
    uint32_t xid;
    int64_t commit_time_us;   /* Unix microseconds */
    uint64_t last_commit_lsn; /* Debezium's sequence[0] (lastCommitLsn): the end LSN of the
                                 last Commit read in this run; 0 (null) before the first */
};

/* Capture mode (engage capture): instead of being enriched, every insert, update and delete
 * of engagement_events and content is handed to change, which appends what it makes of it
 * to b (at most two events; b has room for them). change returns 0, a retriable error (the
 * session is retried), or a non-retriable one with the reason (the row is parked). */
struct eng_pg_capture {
    int (*change)(void *ctx, struct eng_batch *b, const struct eng_pg_change *ch,
                  struct eng_error *err);
    /* Optional: when the slot is created, the rows present in its exported snapshot (a
     * name for SET TRANSACTION SNAPSHOT, usable on conn while the source waits) as batches
     * of at most batch_max records at the slot's first position lsn; *out is an array of
     * *n batches, the caller's. They are durable before anything streams; a start that
     * finds them unfinished (STATE_DIR/SLOT.snapshot) refuses (runbook in the message). */
    int (*snapshot)(void *ctx, PGconn *conn, const char *snapshot, uint64_t lsn, uint32_t batch_max,
                    struct eng_batch ***out, size_t *n, struct eng_error *err);
    void *ctx;
};

struct eng_pg_source_options {
    const char *conninfo;                 /* libpq conninfo or URI */
    const char *slot;                     /* default engage_slot */
    const char *publication;              /* default engage_pub */
    const char *state_dir;                /* default ./engage-state */
    uint32_t batch_max_events;            /* default 10000 */
    int64_t batch_max_us;                 /* default 50 ms */
    int64_t status_interval_us;           /* default 10 s */
    struct eng_dlq *dlq;                  /* where undecodable input is parked; required */
    const struct eng_pg_capture *capture; /* NULL: run (enrich events) */
};

/* Streams until *stop becomes non-zero (then flushes the checkpoint and returns 0) or a
 * fatal condition (dropped or invalidated slot, changed server, unusable configuration:
 * returns ENG_EFATAL with err saying what to do). Connection failures are retried with
 * backoff inside. */
int eng_pg_source_run(const struct eng_pg_source_options *opt, struct eng_pipeline *p,
                      volatile sig_atomic_t *stop, struct eng_error *err);

#endif
