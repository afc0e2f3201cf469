/* engage: the libpq helpers the sources share. Ownership: results and connections
 * returned are the caller's (PQclear, PQfinish). */
#ifndef ENG_SOURCE_PGCONN_H
#define ENG_SOURCE_PGCONN_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "../core/error.h"
#include "../enrich/content.h"

/* Sets err from the connection's last error ("what: message"), retriable; returns its code. */
int eng_pg_fail(struct eng_error *err, PGconn *c, const char *what);

/* Runs a command (with text parameters) that returns no rows or rows; returns the result or
 * NULL with err set, retriable when the connection failed (SQLSTATE 08, 57P). */
PGresult *eng_pg_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                      struct eng_error *err, const char *what);

/* Connects as application "engage" (a replication=database connection when replication);
 * returns NULL with err set. */
PGconn *eng_pg_connect(const char *conninfo, bool replication, struct eng_error *err);

/* Checks that engagement_events and content have every column engage reads, each of a type
 * it reads exactly (eng_column_rules); a fatal ENG_EINVAL naming the column otherwise. */
int eng_pg_check_schema(PGconn *c, struct eng_error *err) ENG_MUSTCHECK;

/* Replaces the cache with the content table, read in one REPEATABLE READ transaction (in
 * the exported snapshot when snapshot is not NULL). */
int eng_pg_load_content(PGconn *c, const char *snapshot, struct eng_content_cache *cache,
                        struct eng_error *err) ENG_MUSTCHECK;

#endif
