/* engage: the state kept beside a PostgreSQL checkpoint: which server and slot it belongs
 * to, the position, and the content cache as of that position (so events replayed after a
 * restart are enriched exactly as they were the first time).
 * Ownership: the caller owns the cache passed in; nothing is retained. */
#ifndef ENG_STATE_H
#define ENG_STATE_H

#include <stdint.h>
#include <stdio.h>

#include "../core/error.h"
#include "../enrich/content.h"

struct eng_pg_state {
    char system_id[32]; /* IDENTIFY_SYSTEM's systemid, as text */
    uint64_t lsn;       /* every transaction ending at or before it is durable everywhere */
};

/* Writes one callback's output to DIR/NAME so that after a crash at any step either the old
 * or the new file is there, whole: a temporary file, fsync, rename, fsync of the directory
 * (created if needed). write returns 0 or an error; every state file goes through here. */
typedef int eng_file_writer(FILE *f, void *arg, struct eng_error *err);
int eng_durable_replace(const char *dir, const char *name, eng_file_writer *write, void *arg,
                        struct eng_error *err) ENG_MUSTCHECK;

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

/* Parses "X/X" and formats an LSN (buffer of at least 20 bytes). */
bool eng_lsn_parse(const char *s, uint64_t *out);
void eng_lsn_format(uint64_t lsn, char *out, size_t len);

#endif
