/* engage: the PostgreSQL logical replication source (pgoutput, libpq replication=database).
 * Ownership: the source borrows the pipeline and the dlq; it owns its connections, decoder
 * and content caches. One thread runs it. */
#ifndef ENG_SOURCE_PG_H
#define ENG_SOURCE_PG_H

#include <signal.h>
#include <stdint.h>

#include "../core/error.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"

struct eng_pg_source_options {
    const char *conninfo;       /* libpq conninfo or URI */
    const char *slot;           /* default engage_slot */
    const char *publication;    /* default engage_pub */
    const char *state_dir;      /* default ./engage-state */
    uint32_t batch_max_events;  /* default 10000 */
    int64_t batch_max_us;       /* default 50 ms */
    int64_t status_interval_us; /* default 10 s */
    struct eng_dlq *dlq;        /* where undecodable input is parked; required */
};

/* Streams until *stop becomes non-zero (then flushes the checkpoint and returns 0) or a
 * fatal condition (dropped or invalidated slot, changed server, unusable configuration:
 * returns ENG_EFATAL with err saying what to do). Connection failures are retried with
 * backoff inside. */
int eng_pg_source_run(const struct eng_pg_source_options *opt, struct eng_pipeline *p,
                      volatile sig_atomic_t *stop, struct eng_error *err);

#endif
