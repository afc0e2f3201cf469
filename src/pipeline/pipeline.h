/* engage: the pipeline core. A source submits batches; every sink gets every batch, in
 * order, on its own thread through its own bounded queue; the durable position is the
 * lowest position every sink has acknowledged.
 * Ownership: the pipeline takes the sinks given to create and destroys them; submit takes
 * the caller's reference to the batch. Submit and the position getters may be called from
 * one source thread while the sink threads run. */
#ifndef ENG_PIPELINE_H
#define ENG_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/event.h"
#include "../sink/sink.h"

struct eng_pipeline_options {
    /* A sink's queue is full at queue_depth batches or queue_bytes of events, whichever
     * comes first (defaults 1024 and 128 MiB). Batches are shared by the sinks, so the
     * memory they hold is bounded by about queue_bytes plus one batch. */
    uint32_t queue_depth;
    size_t queue_bytes;
    int64_t backoff_base_us; /* sink retry backoff (default 100 ms) */
    int64_t backoff_cap_us;  /* (default 10 s) */
    /* A full queue of a sink that can spill holds the source this long before the sink is
     * told to hurry (default 500 ms). */
    int64_t spill_after_us;
    /* The dead-letter table for events a sink refuses for good (NULL conninfo: none, and a
     * sink's permanent error then stops the pipeline). */
    const char *dlq_conninfo;
    const char *dlq_table;
};

struct eng_pipeline;

/* Creates a pipeline over n sinks (taken). Returns NULL with err set if n == 0. */
struct eng_pipeline *eng_pipeline_create(struct eng_sink **sinks, size_t n,
                                         const struct eng_pipeline_options *opt,
                                         struct eng_error *err);

/* Sink progress across restarts. Reads path (if max_lsn > 0 and the file was written for the
 * same identity, e.g. "<system id> <slot>") for each sink's last durable event, ignoring
 * positions past max_lsn (the server's WAL end); from then on an event at or before a
 * sink's last durable one is not written to it again, and the file is rewritten after every
 * acknowledgement. So after a crash a sink gets again only what was in flight in it, not
 * everything after the slowest sink's checkpoint. Call before the first submit. */
void eng_pipeline_track_progress(struct eng_pipeline *p, const char *path, const char *identity,
                                 uint64_t max_lsn);

/* Starts one thread per sink. */
int eng_pipeline_start(struct eng_pipeline *p, struct eng_error *err) ENG_MUSTCHECK;

/* Queues the batch for every sink (takes the caller's reference). Blocks while any sink's
 * queue is full, for at most timeout_us; returns ENG_EAGAIN then (the batch is still the
 * caller's), so that a source can keep its connection alive while pushed back. Batch
 * positions must not decrease. */
int eng_pipeline_submit(struct eng_pipeline *p, struct eng_batch *b,
                        int64_t timeout_us) ENG_MUSTCHECK;

/* True (with err set to the cause) once a sink met an error that neither retrying nor
 * parking events can get past (a permanent error no event causes): the pipeline has stopped
 * and the source must stop with a non-zero exit. Any thread. */
bool eng_pipeline_failed(struct eng_pipeline *p, struct eng_error *err);

/* The position every sink has made durable (0 before the first ack). */
uint64_t eng_pipeline_durable_position(struct eng_pipeline *p);

/* The position of the last batch submitted (0 before the first). */
uint64_t eng_pipeline_submitted_position(struct eng_pipeline *p);

/* True when every submitted batch is durable in every sink. */
bool eng_pipeline_idle(struct eng_pipeline *p);

/* Waits until idle, for at most timeout_us; returns true if idle. */
bool eng_pipeline_wait_idle(struct eng_pipeline *p, int64_t timeout_us);

/* Sink health for /readyz and status: writes "name=ok" or "name=<last error>" per sink. */
bool eng_pipeline_healthy(struct eng_pipeline *p, char *why, size_t whylen);

/* The source says whether it is connected and streaming (source is a static name, why the
 * reason when not); from then on eng_pipeline_healthy covers it, and the gauge
 * engage_source_connected follows it. Any thread. */
void eng_pipeline_source_health(struct eng_pipeline *p, const char *source, bool ok,
                                const char *why);

/* Stops the sink threads after their current write; queued batches are abandoned (the
 * source redelivers them after the checkpoint). NULL is a no-op. */
void eng_pipeline_stop(struct eng_pipeline *p);
void eng_pipeline_destroy(struct eng_pipeline *p);

#endif
