/* engage: the sink interface. A sink is an ops table plus this base struct embedded first
 * in the sink's own struct. Ownership: the pipeline owns every sink it is given and calls
 * destroy; a sink borrows each batch for the duration of one write call. */
#ifndef ENG_SINK_H
#define ENG_SINK_H

#include "../core/error.h"
#include "../core/event.h"

struct eng_sink;

struct eng_sink_ops {
    const char *name;
    /* Connects and prepares (creates tables, loads scripts). Called on the sink's own thread
     * before the first write and again after a retriable failure; returns 0 or an error. */
    int (*open)(struct eng_sink *s, struct eng_error *err);
    /* Makes every event of the batch durable in the sink, idempotently by event_id: the same
     * batch may be written again after a crash or a failed call. Returns 0 only when all of
     * it is durable. Called on the sink's own thread only. */
    int (*write)(struct eng_sink *s, const struct eng_batch *b, struct eng_error *err);
    /* Drops the connection after a failure (open is called again before the next write). */
    void (*close)(struct eng_sink *s);
    /* Optional (NULL: the sink never spills): instead of writing, parks the whole batch
     * somewhere durable (the dead-letter queue) and returns 0 once that is done. The
     * pipeline calls it instead of write when the sink's queue is full, so that a sink which
     * cannot keep up (an external API) never holds back the others. */
    int (*spill)(struct eng_sink *s, const struct eng_batch *b, struct eng_error *err);
    /* Optional, with spill: the sink's queue is full, so the write in progress should end
     * soon by spilling what it has not delivered yet. Called from the source's thread. */
    void (*hurry)(struct eng_sink *s);
    /* Optional (NULL: none): makes a write in progress on the sink's thread return early
     * with a retriable error, for shutdown. Any thread. */
    void (*cancel)(struct eng_sink *s);
    /* Frees the sink. */
    void (*destroy)(struct eng_sink *s);
};

struct eng_sink {
    const struct eng_sink_ops *ops;
    /* The most events one write may carry when the pipeline merges queued batches (0: the
     * pipeline's cap). A sink that acknowledges a write as a whole sets it to what it can
     * have in flight at once, so that a crash re-sends no more than that. */
    uint32_t merge_max_events;
    /* The least time from the start of one write to the start of the next (0: none). A sink
     * whose server pays per write (a ClickHouse part, merged later in the background) sets
     * it so that queued batches go in fewer, larger writes; a full queue writes at once. */
    int64_t min_write_interval_us;
    /* Set by the pipeline before the first open (NULL: nowhere to park, the write must fail
     * instead): parks event e of b, which this sink cannot hold (a value outside what its
     * store can represent), in the dead-letter table under the sink's name with the reason.
     * Returns 0 once it is durable there. The sink's own thread only. */
    int (*park)(struct eng_sink *s, const struct eng_batch *b, const struct eng_event *e,
                const char *reason, struct eng_error *err);
    void *park_ctx;
    /* Set by the pipeline before the first open (NULL: nobody listens): a sink that retries
     * inside one write (the HTTP sink) reports each failed attempt (ok false, why) and each
     * success, so that readiness and engage_sink_write_failures_total see a failing server
     * while the write goes on. The sink's own thread only. */
    void (*report)(struct eng_sink *s, bool ok, const char *why);
    void *report_ctx;
};

static inline void eng_sink_report(struct eng_sink *s, bool ok, const char *why)
{
    if (s->report != NULL)
        s->report(s, ok, why);
}

static inline int eng_sink_open(struct eng_sink *s, struct eng_error *err)
{
    return s->ops->open(s, err);
}
static inline int eng_sink_write(struct eng_sink *s, const struct eng_batch *b,
                                 struct eng_error *err)
{
    return s->ops->write(s, b, err);
}
static inline void eng_sink_close(struct eng_sink *s)
{
    s->ops->close(s);
}
static inline void eng_sink_destroy(struct eng_sink *s)
{
    if (s != NULL)
        s->ops->destroy(s);
}

#endif
