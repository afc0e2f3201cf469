/* engage: rebuilding Redis from PostgreSQL after Redis lost what engage wrote to it.
 *
 * The Redis sink notices a loss on the first call after it (engage:mark, see
 * src/sink/redis.c) and reports it here; this module then writes every event of the table
 * into Redis again through a backfill of its own (a pipeline with one Redis sink). The
 * seen-set was lost together with the counts, so the rebuild is exact, also while the
 * stream goes on writing (the seen-set makes the two idempotent). Until the rebuild is
 * done, eng_redis_repair_ready says no. The generation of Redis's data known to be
 * complete is kept in STATE_DIR/redis.mark, so a restart in the middle of a rebuild
 * rebuilds again.
 *
 * Ownership: the repair owns its thread, its pipeline while a rebuild runs, and copies of
 * the strings it is given. One repair per process. */
#ifndef ENG_SOURCE_REDIS_REPAIR_H
#define ENG_SOURCE_REDIS_REPAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../sink/redis.h"

struct eng_redis_repair_options {
    const char *conninfo;  /* PostgreSQL, where engagement_events is */
    const char *dlq_table; /* NULL: engage_dlq */
    const char *redis_url;
    struct eng_redis_options redis; /* the live sink's options (copied) */
    const char *state_dir;
    uint32_t page_events; /* rows per page of the rebuild (0: 10000) */
};

struct eng_redis_repair;

/* Reads STATE_DIR/redis.mark and starts the repair's thread (idle until a loss). Returns
 * NULL with err set when the file cannot be read. */
struct eng_redis_repair *eng_redis_repair_create(const struct eng_redis_repair_options *opt,
                                                 struct eng_error *err);

/* Sets known_gen, on_mark and mark_ctx of ropt, so that a Redis sink created with it
 * reports its generation and any loss to rep. */
void eng_redis_repair_attach(struct eng_redis_repair *rep, struct eng_redis_options *ropt);

/* True when no rebuild is pending or running; otherwise false with the reason in why. Any
 * thread. */
bool eng_redis_repair_ready(struct eng_redis_repair *rep, char *why, size_t whylen);

/* Stops a rebuild in progress (it starts again with the next process) and frees rep. The
 * sinks attached must be destroyed first. */
void eng_redis_repair_destroy(struct eng_redis_repair *rep);

#endif
