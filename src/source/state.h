/* engage: the state kept beside a PostgreSQL checkpoint: which server and slot it belongs
 * to, the position, and the content cache as of that position (so events replayed after a
 * restart are enriched exactly as they were the first time).
 * Ownership: the caller owns the cache passed in; nothing is retained. */
#ifndef ENG_STATE_H
#define ENG_STATE_H

#include <stdint.h>
#include <stdio.h>

#include "../core/durable.h"
#include "../core/error.h"
#include "../core/pgtext.h"
#include "../enrich/content.h"

struct eng_pg_state {
    char system_id[32]; /* IDENTIFY_SYSTEM's systemid, as text */
    uint64_t lsn;       /* every transaction ending at or before it is durable everywhere */
};

/* The confirm bound (DIR/<slot>.bound): a position at or past every flush LSN engage ever
 * sent for the slot, written before the flush LSN passes it. A slot whose confirmed
 * position is beyond it was not confirmed by engage (dropped and created again). Load
 * returns 0, 1 when there is no file, or an error. */
int eng_pg_bound_save(const char *dir, const char *slot, const struct eng_pg_state *bound,
                      struct eng_error *err) ENG_MUSTCHECK;
int eng_pg_bound_load(const char *dir, const char *slot, struct eng_pg_state *bound,
                      struct eng_error *err) ENG_MUSTCHECK;

/* Writes DIR/<slot>.state atomically and durably (temporary file, fsync, rename, fsync of
 * the directory), creating DIR if needed. */
int eng_pg_state_save(const char *dir, const char *slot, const struct eng_pg_state *st,
                      const struct eng_content_cache *cache, struct eng_error *err) ENG_MUSTCHECK;

/* Reads DIR/<slot>.state into st and cache. Returns 0, 1 when there is no such file, or an
 * error (a corrupt file is an error, never silently ignored). */
int eng_pg_state_load(const char *dir, const char *slot, struct eng_pg_state *st,
                      struct eng_content_cache *cache, struct eng_error *err) ENG_MUSTCHECK;

#endif
