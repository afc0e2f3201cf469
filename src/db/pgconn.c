/* engage: libpq connections and what their errors mean (see pgconn.h). */
#include <stdio.h>
#include <string.h>

#include "../core/log.h"
#include "pgconn.h"

/* A failed connection has no SQLSTATE in libpq, only the server's message: these are the
 * refusals of configuration (28P01, 28000, 3D000, 42501 and libpq's own), in the server's
 * English messages (engage's connections do not set lc_messages; a server configured for
 * another language makes them look transient, retried for ever as before). */
static bool connect_denied(const char *msg)
{
    static const char *const denied[] = {
        "password authentication failed",
        "authentication failed for user", /* peer, ident, ldap, ... */
        "no pg_hba.conf entry",
        "does not exist",                   /* role or database */
        "must be superuser or replication", /* replication without the REPLICATION attribute */
        "permission denied",
        "no password supplied",
        "password is required",
    };
    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
        if (strstr(msg, denied[i]) != NULL)
            return true;
    }
    return false;
}

/* Transient: the connection is gone or the server says so (class 08 connection exception,
 * 57P0x shutdown or cannot connect now, 40001 serialization, 40P01 deadlock, 53300 too many
 * connections, 55006 object in use: a slot still held by our previous connection). */
static bool sqlstate_transient(const char *state)
{
    return strncmp(state, "08", 2) == 0 || strncmp(state, "57P0", 4) == 0 ||
           strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
           strcmp(state, "53300") == 0 || strcmp(state, "55006") == 0;
}

/* Refused for reasons of configuration: authorization (class 28), no rights (42501), a
 * database that does not exist (3D000). */
static bool sqlstate_denied(const char *state)
{
    return strncmp(state, "28", 2) == 0 || strcmp(state, "42501") == 0 ||
           strcmp(state, "3D000") == 0;
}

static void one_line(char *dst, size_t cap, const char *src)
{
    size_t j = 0;
    for (size_t i = 0; src != NULL && src[i] != '\0' && j + 1 < cap; i++)
        dst[j++] = (src[i] == '\n' || src[i] == '\r' || src[i] == '\t') ? ' ' : src[i];
    while (j > 0 && dst[j - 1] == ' ')
        j--;
    dst[j] = '\0';
}

int eng_pg_error(struct eng_error *err, PGconn *c, const PGresult *res, const char *what)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res != NULL ? PQresultErrorMessage(res) : NULL;
    if (msg == NULL || *msg == '\0')
        msg = c != NULL ? PQerrorMessage(c) : "no connection";
    bool gone = c == NULL || PQstatus(c) != CONNECTION_OK;
    bool valid = state != NULL && strlen(state) == 5;
    bool denied = valid ? sqlstate_denied(state) : gone && connect_denied(msg);
    bool transient = !denied && (gone || !valid || sqlstate_transient(state));
    char line[240];
    one_line(line, sizeof(line), msg);
    int rc = eng_error_set(err,
                           denied      ? ENG_EDENIED
                           : transient ? ENG_EIO
                                       : ENG_EINVAL,
                           denied || transient, "%s: %s%s%s", what, line, valid ? " sqlstate=" : "",
                           valid ? state : "");
    if (denied) {
        size_t used = strlen(err->msg);
        snprintf(err->msg + used, sizeof(err->msg) - used,
                 " (runbook: check the user, password and database in the conninfo, ENGAGE_PG "
                 "or the password file, and the role's rights; a replication connection needs "
                 "ALTER ROLE name REPLICATION)");
    }
    return rc;
}

int eng_pg_fail(struct eng_error *err, PGconn *c, const char *what)
{
    return eng_pg_error(err, c, NULL, what);
}

PGresult *eng_pg_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                      struct eng_error *err, const char *what)
{
    PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    eng_pg_error(err, c, r, what);
    PQclear(r);
    return NULL;
}

static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *eng_pg_connect(const char *conninfo, const char *application, bool replication,
                       struct eng_error *err)
{
    /* Our defaults come first so that anything in the user's conninfo overrides them.
     * DateStyle ISO: engage reads timestamps as text (pgoutput and queries alike) and
     * writes them on as Debezium does, in ISO form whatever the server's default. */
    const char *keys[] = {"connect_timeout",
                          "application_name",
                          "options",
                          "dbname",
                          replication ? "replication" : NULL,
                          NULL};
    const char *vals[] = {"10", application, "-c DateStyle=ISO", conninfo, "database", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL)
        eng_die("out of memory in PQconnectdbParams");
    if (PQstatus(c) != CONNECTION_OK) {
        eng_pg_fail(err, c,
                    replication ? "could not open replication connection"
                                : "could not connect to PostgreSQL");
        PQfinish(c);
        return NULL;
    }
    /* "relation already exists, skipping" and the like are not worth a line on stderr. */
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    return c;
}
