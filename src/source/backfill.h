/* engage: backfill, a time range of engagement_events read from the table and written
 * through the same enrichment and sinks as the stream. Ownership: the backfill borrows the
 * pipeline and the dlq; it owns its connection and content cache. One thread runs it. */
#ifndef ENG_SOURCE_BACKFILL_H
#define ENG_SOURCE_BACKFILL_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "../core/error.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"

struct eng_backfill_options {
    const char *conninfo;
    const char *start;     /* event_ts >= start (any text PostgreSQL reads as a timestamp) */
    const char *end;       /* event_ts < end */
    uint32_t page_events;  /* rows per query and per batch (default 10000) */
    const char *state_dir; /* where the resume file lives (NULL: not resumable) */
    bool progress;         /* a progress line on stderr (for a terminal) */
    struct eng_dlq *dlq;   /* where rows that are not events are parked; required */
};

struct eng_backfill_stats {
    uint64_t events; /* written through the sinks by this run */
    uint64_t parked; /* rows that were not events, parked in the dead-letter table */
    uint64_t misses; /* events without a content row */
    uint64_t total;  /* events in the range when this run started (after a resume point) */
    bool resumed;    /* started after the resume file's position */
};

/* Reads the rows with start <= event_ts < end in (event_ts, event_id) order, a page at a
 * time (keyset pagination), enriches each with the content table as it is when the
 * backfill starts, and submits each page to the pipeline (which must be started). The
 * position of the last page every sink made durable is kept in a resume file, so a run
 * that is stopped or fails goes on from there when started again with the same range; the
 * file is removed when the range is done. Returns 0 when every event of the range is
 * durable in every sink, ENG_ESTOPPED when *stop was set first (progress saved), or an
 * error. Connection failures are retried with backoff inside. */
int eng_backfill_run(const struct eng_backfill_options *opt, struct eng_pipeline *p,
                     volatile sig_atomic_t *stop, struct eng_backfill_stats *stats,
                     struct eng_error *err);

#endif
