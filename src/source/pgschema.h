/* engage: what the source and the backfill read from PostgreSQL besides the stream: the
 * columns of the tables engage reads, and the content table. Ownership: the caller owns the
 * connection and the cache. */
#ifndef ENG_SOURCE_PGSCHEMA_H
#define ENG_SOURCE_PGSCHEMA_H

#include <libpq-fe.h>

#include "../core/error.h"
#include "../enrich/content.h"

/* Checks that engagement_events and content have every column engage reads, each of a type
 * it reads exactly (eng_column_rules); a fatal ENG_EINVAL naming the column otherwise. */
int eng_pg_check_schema(PGconn *c, struct eng_error *err) ENG_MUSTCHECK;

/* Replaces the cache with the content table, read in one REPEATABLE READ transaction (in
 * the exported snapshot when snapshot is not NULL). */
int eng_pg_load_content(PGconn *c, const char *snapshot, struct eng_content_cache *cache,
                        struct eng_error *err) ENG_MUSTCHECK;

#endif
