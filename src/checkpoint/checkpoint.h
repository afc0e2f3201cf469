/* engage: the checkpoint, one for every source. It owns "the position every sink made
 * durable" as far as the source is concerned: on each tick it reads that position, has the
 * source save what must be on file before the position may be acknowledged (the PostgreSQL
 * source: the content cache and the confirm bound; the backfill: its resume key), and only
 * once that save succeeded has the source acknowledge it upstream (the flush LSN, Kafka
 * offsets; nothing for a backfill). A save that fails holds the acknowledgement and is tried
 * again on the next tick; the acknowledged position never passes the durable one.
 * Ownership: the checkpoint borrows the callbacks' context; it allocates nothing. One
 * thread (the source's) calls it. */
#ifndef ENG_CHECKPOINT_H
#define ENG_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/error.h"

struct eng_checkpoint_ops {
    /* The lowest position every sink has made durable (eng_pipeline_durable_position). */
    uint64_t (*durable)(void *ctx);
    /* Makes durable whatever must be on file before pos is acknowledged (pos is after the
     * last acknowledged position). 0, or an error: nothing is acknowledged then. */
    int (*save)(void *ctx, uint64_t pos, struct eng_error *err);
    /* Tells upstream that everything up to pos is durable. */
    void (*ack)(void *ctx, uint64_t pos);
    void *ctx;
};

struct eng_checkpoint {
    struct eng_checkpoint_ops ops;
    uint64_t acked;        /* the last position acknowledged */
    uint32_t failed_saves; /* saves failed in a row */
    struct eng_error last_error;
};

/* Starts at acked (the position restored from the state files, 0 for none). */
void eng_checkpoint_init(struct eng_checkpoint *cp, const struct eng_checkpoint_ops *ops,
                         uint64_t acked);

/* Moves the acknowledged position to the durable one when that is ahead: save, then ack.
 * Returns true when something was acknowledged; a failed save is logged (the first of a run
 * of failures) and false is returned with the position held. */
bool eng_checkpoint_tick(struct eng_checkpoint *cp);

#endif
