/* engage: libpq connections and what their errors mean, for every module that talks to
 * PostgreSQL (the replication source, the backfill, the dead-letter table, the CLI).
 * Ownership: results and connections returned are the caller's (PQclear, PQfinish). */
#ifndef ENG_DB_PGCONN_H
#define ENG_DB_PGCONN_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "../core/error.h"

/* The one classifier of PostgreSQL errors. Sets err from res (or, when res is NULL, from the
 * connection's last error) as "what: message sqlstate=XXXXX" and returns its code:
 *   ENG_EDENIED, retriable: refused for configuration (authentication, rights, a missing
 *     database; for a failed connection read from the server's message), with a runbook;
 *   ENG_EIO, retriable: the connection is gone, or a transient SQLSTATE (08, 57P0x, 40001,
 *     40P01, 53300, 55006);
 *   ENG_EINVAL, not retriable: anything else (the statement itself is wrong). */
int eng_pg_error(struct eng_error *err, PGconn *c, const PGresult *res, const char *what);

/* eng_pg_error for the connection's last error (res NULL); returns its code. */
int eng_pg_fail(struct eng_error *err, PGconn *c, const char *what);

/* Runs a command (with text parameters) that returns no rows or rows; returns the result or
 * NULL with err set by eng_pg_error. */
PGresult *eng_pg_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                      struct eng_error *err, const char *what);

/* Connects as application_name application (a replication=database connection when
 * replication), with a 10 s connect timeout the conninfo may override and notices silenced;
 * returns NULL with err set by eng_pg_error. */
PGconn *eng_pg_connect(const char *conninfo, const char *application, bool replication,
                       struct eng_error *err);

#endif
