/* The dead-letter queue over libpq.
 *
 * The table, created on first use (under an advisory lock, so that several threads or
 * processes creating it at once do not trip over each other):
 *
 *   id bigserial PRIMARY KEY, parked_at timestamptz NOT NULL DEFAULT now(), origin text,
 *   position text, event_id bigint (NULL when the input did not decode to an event),
 *   reason text, last_status int, attempts int, payload bytea, replayed_at timestamptz NULL,
 *   discarded_at timestamptz NULL (added to a table of an earlier engage when missing)
 *   UNIQUE INDEX ON (origin, position, coalesce(event_id, -1))
 *
 * A row is pending while both replayed_at and discarded_at are NULL. Parking is
 * INSERT ... ON CONFLICT DO UPDATE on that index: parking the same item again (a replay after
 * a crash) refreshes the row (reason, attempts, payload, parked_at) and marks it pending again
 * (replayed_at and discarded_at NULL), since that delivery failed too.
 *
 * n items are parked in one transaction, sent in libpq pipeline mode in chunks (one round
 * trip per chunk instead of one per item; chunks keep the unread results bounded so neither
 * side blocks on a full socket buffer). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "../core/buf.h"
#include "../core/log.h"
#include "../db/pgconn.h"
#include "dlq.h"

#define PARK_CHUNK 256
#define PARK_STMT  "eng_dlq_park"

struct eng_dlq {
    char *conninfo;
    char *table;     /* as given, for messages */
    char *table_sql; /* quoted identifier(s), set once connected */
    char *index_sql; /* quoted index name */
    PGconn *conn;
    bool ready; /* table exists and the statement is prepared on conn */
};

struct eng_dlq *eng_dlq_create(const char *conninfo, const char *table)
{
    struct eng_dlq *q = eng_calloc(1, sizeof(*q));
    q->conninfo = eng_strdup(conninfo ? conninfo : "");
    q->table = eng_strdup(table && *table ? table : "engage_dlq");
    return q;
}

static void drop_conn(struct eng_dlq *q)
{
    if (q->conn != NULL)
        PQfinish(q->conn);
    q->conn = NULL;
    q->ready = false;
}

void eng_dlq_destroy(struct eng_dlq *q)
{
    if (q == NULL)
        return;
    drop_conn(q);
    free(q->conninfo);
    free(q->table);
    free(q->table_sql);
    free(q->index_sql);
    free(q);
}

/* Sets err from a failed result (res may be NULL) and drops the connection, so the next call
 * starts from a fresh one whatever state the failure left this one in. */
static int fail(struct eng_dlq *q, const PGresult *res, const char *what, struct eng_error *err)
{
    char subject[160];
    snprintf(subject, sizeof(subject), "dlq: could not %s \"%s\"", what, q->table);
    eng_pg_error(err, q->conn, res, subject);
    drop_conn(q);
    if (!err->retriable)
        err->code = ENG_EFATAL;
    return err->code;
}

/* Quotes a possibly schema-qualified name ("s.t") part by part. */
static char *quote_qualified(PGconn *conn, const char *name, const char *suffix)
{
    struct eng_buf b = {0};
    const char *part = name;
    for (;;) {
        const char *dot = strchr(part, '.');
        size_t n = dot ? (size_t)(dot - part) : strlen(part);
        char *tmp = eng_strndup(part, n);
        if (dot == NULL && suffix != NULL) {
            char *t2 = eng_malloc(n + strlen(suffix) + 1);
            memcpy(t2, tmp, n);
            memcpy(t2 + n, suffix, strlen(suffix) + 1);
            free(tmp);
            tmp = t2;
        }
        char *quoted = PQescapeIdentifier(conn, tmp, strlen(tmp));
        free(tmp);
        if (quoted == NULL) {
            eng_buf_free(&b);
            return NULL;
        }
        eng_buf_puts(&b, quoted);
        PQfreemem(quoted);
        if (dot == NULL)
            break;
        /* An index lives in its table's schema: CREATE INDEX takes an unqualified name. */
        if (suffix == NULL)
            eng_buf_putc(&b, '.');
        else
            eng_buf_reset(&b);
        part = dot + 1;
    }
    char *out = eng_strndup(b.data ? b.data : "", b.len);
    eng_buf_free(&b);
    return out;
}

static int exec_ok(struct eng_dlq *q, const char *sql, const char *what, struct eng_error *err)
{
    PGresult *res = PQexec(q->conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        int rc = fail(q, res, what, err);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    return 0;
}

/* Connects (if needed) and quotes the table's name for SQL. */
static int connect_and_name(struct eng_dlq *q, struct eng_error *err)
{
    if (q->conn == NULL) {
        q->conn = eng_pg_connect(q->conninfo, "engage-dlq", false, err);
        if (q->conn == NULL) {
            struct eng_error why = *err;
            return eng_error_set(err, why.code, why.retriable, "dlq \"%s\": %s", q->table, why.msg);
        }
    }
    if (q->table_sql == NULL) {
        q->table_sql = quote_qualified(q->conn, q->table, NULL);
        q->index_sql = quote_qualified(q->conn, q->table, "_dedup_idx");
        if (q->table_sql == NULL || q->index_sql == NULL) {
            free(q->table_sql);
            free(q->index_sql);
            q->table_sql = q->index_sql = NULL;
            drop_conn(q);
            return eng_error_set(err, ENG_EINVAL, false, "dlq: bad table name \"%s\"", q->table);
        }
    }
    return 0;
}

/* Creates the table and its dedup index if missing (under an advisory lock, so that two
 * engage processes starting at once do not race), and adds discarded_at to an older one. */
static int create_table(struct eng_dlq *q, struct eng_error *err)
{
    char *table_lit = PQescapeLiteral(q->conn, q->table_sql, strlen(q->table_sql));
    if (table_lit == NULL)
        eng_die("out of memory in PQescapeLiteral");
    struct eng_buf sql = {0};
    /* discarded_at came later: added when missing, and only then, since ALTER TABLE takes a
     * lock that would queue every reader of the table behind it. */
    eng_buf_printf(&sql,
                   "BEGIN; SELECT pg_advisory_xact_lock(hashtext('engage_dlq_create'));"
                   "CREATE TABLE IF NOT EXISTS %s ("
                   "id bigserial PRIMARY KEY,"
                   "parked_at timestamptz NOT NULL DEFAULT now(),"
                   "origin text NOT NULL,"
                   "position text NOT NULL,"
                   "event_id bigint,"
                   "reason text NOT NULL,"
                   "last_status int NOT NULL DEFAULT 0,"
                   "attempts int NOT NULL DEFAULT 0,"
                   "payload bytea,"
                   "replayed_at timestamptz NULL,"
                   "discarded_at timestamptz NULL);"
                   "CREATE UNIQUE INDEX IF NOT EXISTS %s ON %s "
                   "(origin, position, (coalesce(event_id, -1)));"
                   "DO $engage_dlq$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute"
                   " WHERE attrelid = %s::regclass AND attname = 'discarded_at'"
                   " AND NOT attisdropped) THEN EXECUTE 'ALTER TABLE ' || %s::regclass::text"
                   " || ' ADD COLUMN discarded_at timestamptz NULL'; END IF; END $engage_dlq$;"
                   "COMMIT",
                   q->table_sql, q->index_sql, q->table_sql, table_lit, table_lit);
    PQfreemem(table_lit);
    int rc = exec_ok(q, sql.data, "create", err);
    eng_buf_free(&sql);
    return rc;
}

/* Prepares the park statement (an upsert: parking again updates the row). */
static int prepare_park(struct eng_dlq *q, struct eng_error *err)
{
    struct eng_buf sql = {0};
    eng_buf_printf(&sql,
                   "INSERT INTO %s AS d (origin, position, event_id, reason, last_status,"
                   " attempts, payload) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                   " ON CONFLICT (origin, position, (coalesce(event_id, -1))) DO UPDATE SET"
                   " parked_at = now(), reason = EXCLUDED.reason,"
                   " last_status = EXCLUDED.last_status, attempts = EXCLUDED.attempts,"
                   " payload = EXCLUDED.payload, replayed_at = NULL, discarded_at = NULL",
                   q->table_sql);
    PGresult *res = PQprepare(q->conn, PARK_STMT, sql.data, 0, NULL);
    eng_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        int rc = fail(q, res, "prepare insert into", err);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    return 0;
}

/* Connects if needed, creates the table and prepares the park statement. */
static int ensure_ready(struct eng_dlq *q, struct eng_error *err)
{
    if (q->conn != NULL && PQstatus(q->conn) != CONNECTION_OK)
        drop_conn(q);
    if (q->ready)
        return 0;
    int rc = connect_and_name(q, err);
    if (rc == 0)
        rc = create_table(q, err);
    if (rc == 0)
        rc = prepare_park(q, err);
    if (rc == 0)
        q->ready = true;
    return rc;
}

/* Sends one chunk of inserts followed by a sync point and reads their results. */
static int park_chunk(struct eng_dlq *q, const struct eng_dlq_item *items, size_t n,
                      struct eng_error *err)
{
    char id[24], status[16], attempts[16];
    for (size_t i = 0; i < n; i++) {
        const struct eng_dlq_item *it = &items[i];
        snprintf(status, sizeof(status), "%d", it->last_status);
        snprintf(attempts, sizeof(attempts), "%d", it->attempts);
        const char *vals[7];
        int lens[7] = {0};
        int fmts[7] = {0, 0, 0, 0, 0, 0, 1};
        vals[0] = it->origin ? it->origin : "unknown";
        vals[1] = it->position ? it->position : "";
        if (it->event_id >= 0) {
            snprintf(id, sizeof(id), "%lld", (long long)it->event_id);
            vals[2] = id;
        } else {
            vals[2] = NULL;
        }
        vals[3] = it->reason ? it->reason : "";
        vals[4] = status;
        vals[5] = attempts;
        vals[6] = it->payload ? (const char *)it->payload : "";
        lens[6] = it->payload ? (int)it->payload_len : 0;
        if (!PQsendQueryPrepared(q->conn, PARK_STMT, 7, vals, lens, fmts, 0))
            return fail(q, NULL, "send insert into", err);
    }
    if (!PQpipelineSync(q->conn))
        return fail(q, NULL, "sync insert into", err);
    /* Each query yields its result then NULL; the sync point yields PGRES_PIPELINE_SYNC. */
    int rc = 0;
    for (;;) {
        PGresult *res = PQgetResult(q->conn);
        if (res == NULL) {
            if (PQstatus(q->conn) != CONNECTION_OK)
                return rc ? rc : fail(q, NULL, "insert into", err);
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            break;
        }
        if (st != PGRES_COMMAND_OK && rc == 0) {
            /* The first error explains; later queries only report PGRES_PIPELINE_ABORTED.
             * Keep reading up to the sync point so the connection stays usable for the
             * rollback (fail() drops it anyway). */
            struct eng_error tmp;
            char subject[160];
            snprintf(subject, sizeof(subject), "dlq: could not insert into \"%s\"", q->table);
            rc = eng_pg_error(&tmp, q->conn, res, subject);
            if (!tmp.retriable)
                rc = tmp.code = ENG_EFATAL;
            if (err != NULL)
                *err = tmp;
        }
        PQclear(res);
    }
    if (rc != 0)
        drop_conn(q);
    return rc;
}

int eng_dlq_park(struct eng_dlq *q, const struct eng_dlq_item *items, size_t n,
                 struct eng_error *err)
{
    eng_error_clear(err);
    if (n == 0)
        return 0;
    int rc = ensure_ready(q, err);
    if (rc != 0)
        return rc;
    /* An explicit transaction around the chunks: sync points inside a BEGIN block do not
     * commit, so the n items become durable together at COMMIT or not at all. */
    rc = exec_ok(q, "BEGIN", "begin on", err);
    if (rc != 0)
        return rc;
    if (!PQenterPipelineMode(q->conn))
        return fail(q, NULL, "enter pipeline mode for", err);
    for (size_t i = 0; i < n && rc == 0; i += PARK_CHUNK)
        rc = park_chunk(q, items + i, n - i < PARK_CHUNK ? n - i : PARK_CHUNK, err);
    if (rc != 0)
        return rc; /* the connection was dropped: the server rolls the transaction back */
    if (!PQexitPipelineMode(q->conn))
        return fail(q, NULL, "leave pipeline mode for", err);
    rc = exec_ok(q, "COMMIT", "commit into", err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        eng_debug("msg=\"parked\" origin=%s position=%s event_id=%lld attempts=%d status=%d",
                  items[i].origin ? items[i].origin : "unknown",
                  items[i].position ? items[i].position : "", (long long)items[i].event_id,
                  items[i].attempts, items[i].last_status);
    }
    return 0;
}

int64_t eng_dlq_pending(struct eng_dlq *q, struct eng_error *err)
{
    eng_error_clear(err);
    if (ensure_ready(q, err) != 0)
        return -1;
    struct eng_buf sql = {0};
    eng_buf_printf(&sql,
                   "SELECT count(*) FROM %s WHERE replayed_at IS NULL AND discarded_at IS NULL "
                   "AND origin <> 'outbox'",
                   q->table_sql);
    PGresult *res = PQexec(q->conn, sql.data);
    eng_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        fail(q, res, "count rows of", err);
        PQclear(res);
        return -1;
    }
    int64_t v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

int eng_dlq_origin_stats(struct eng_dlq *q, const char *origin, int64_t *pending, double *oldest_s,
                         struct eng_error *err)
{
    eng_error_clear(err);
    if (ensure_ready(q, err) != 0)
        return err->code;
    struct eng_buf sql = {0};
    eng_buf_printf(&sql,
                   "SELECT count(*), coalesce(extract(epoch FROM now() - min(parked_at)), 0) "
                   "FROM %s WHERE replayed_at IS NULL AND discarded_at IS NULL AND origin = $1",
                   q->table_sql);
    const char *params[1] = {origin};
    PGresult *res = PQexecParams(q->conn, sql.data, 1, NULL, params, NULL, NULL, 0);
    eng_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        fail(q, res, "count rows of", err);
        PQclear(res);
        return err->code;
    }
    *pending = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    *oldest_s = strtod(PQgetvalue(res, 0, 1), NULL);
    PQclear(res);
    return 0;
}

/* "{1,2,3}" for an int8[] parameter. */
static void ids_array(struct eng_buf *out, const int64_t *ids, size_t n)
{
    eng_buf_putc(out, '{');
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            eng_buf_putc(out, ',');
        eng_buf_put_i64(out, ids[i]);
    }
    eng_buf_putc(out, '}');
}

int64_t eng_dlq_scan(struct eng_dlq *q, const struct eng_dlq_filter *f,
                     bool (*fn)(const struct eng_dlq_row *row, void *ctx), void *ctx,
                     struct eng_error *err)
{
    eng_error_clear(err);
    if (ensure_ready(q, err) != 0)
        return -1;
    struct eng_buf sql = {0}, ids = {0}, after = {0}, limit = {0};
    ids_array(&ids, f->ids, f->ids ? f->nids : 0);
    eng_buf_put_i64(&after, f->after_id);
    eng_buf_put_i64(&limit, f->limit > 0 ? f->limit : INT64_MAX);
    eng_buf_printf(&sql,
                   "SELECT id, to_char(parked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),"
                   " origin, position, coalesce(event_id, -1), reason, coalesce(last_status, 0),"
                   " attempts, payload, replayed_at IS NOT NULL, discarded_at IS NOT NULL FROM %s"
                   " WHERE ($1::text IS NULL OR origin = $1)"
                   " AND ($2::bool OR id = ANY($3::int8[]))"
                   " AND (NOT $4::bool OR (replayed_at IS NULL AND discarded_at IS NULL))"
                   " AND id > $5::int8"
                   " AND ($7::text IS NULL OR origin <> $7)"
                   " ORDER BY id LIMIT $6::int8",
                   q->table_sql);
    const char *params[7] = {
        f->origin,  f->ids ? "f" : "t", ids.data,     f->pending_only ? "t" : "f",
        after.data, limit.data,         f->not_origin};
    /* Text results except the payload (column 8), which comes back raw. */
    PGresult *res = PQexecParams(q->conn, sql.data, 7, NULL, params, NULL, NULL, 1);
    eng_buf_free(&sql);
    eng_buf_free(&ids);
    eng_buf_free(&after);
    eng_buf_free(&limit);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fail(q, res, "read", err);
        PQclear(res);
        return -1;
    }
    /* Binary results: every column is in its binary form; convert the few we need. */
    int64_t visited = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        struct eng_dlq_row row;
        const unsigned char *v;
        uint64_t u = 0;
        v = (const unsigned char *)PQgetvalue(res, i, 0);
        for (int k = 0; k < 8; k++)
            u = u << 8 | v[k];
        row.id = (int64_t)u;
        row.parked_at = PQgetvalue(res, i, 1);
        row.origin = PQgetvalue(res, i, 2);
        row.position = PQgetvalue(res, i, 3);
        v = (const unsigned char *)PQgetvalue(res, i, 4);
        u = 0;
        for (int k = 0; k < 8; k++)
            u = u << 8 | v[k];
        row.event_id = (int64_t)u;
        row.reason = PQgetvalue(res, i, 5);
        uint32_t w = 0;
        v = (const unsigned char *)PQgetvalue(res, i, 6);
        for (int k = 0; k < 4; k++)
            w = w << 8 | v[k];
        row.last_status = (int)(int32_t)w;
        w = 0;
        v = (const unsigned char *)PQgetvalue(res, i, 7);
        for (int k = 0; k < 4 && !PQgetisnull(res, i, 7); k++)
            w = w << 8 | v[k];
        row.attempts = (int)(int32_t)w;
        row.payload = PQgetisnull(res, i, 8) ? "" : PQgetvalue(res, i, 8);
        row.payload_len = PQgetisnull(res, i, 8) ? 0 : (size_t)PQgetlength(res, i, 8);
        row.replayed = *PQgetvalue(res, i, 9) != 0;
        row.discarded = *PQgetvalue(res, i, 10) != 0;
        visited++;
        if (!fn(&row, ctx))
            break;
    }
    PQclear(res);
    return visited;
}

int64_t eng_dlq_discard(struct eng_dlq *q, const int64_t *ids, size_t n, struct eng_error *err)
{
    eng_error_clear(err);
    if (n == 0)
        return 0;
    if (ensure_ready(q, err) != 0)
        return -1;
    struct eng_buf sql = {0}, arr = {0};
    ids_array(&arr, ids, n);
    eng_buf_printf(&sql,
                   "UPDATE %s SET discarded_at = now() WHERE id = ANY($1::int8[])"
                   " AND replayed_at IS NULL AND discarded_at IS NULL",
                   q->table_sql);
    const char *params[1] = {arr.data};
    PGresult *res = PQexecParams(q->conn, sql.data, 1, NULL, params, NULL, NULL, 0);
    eng_buf_free(&sql);
    eng_buf_free(&arr);
    int64_t done = -1;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        fail(q, res, "discard rows in", err);
    else
        done = strtoll(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return done;
}

int eng_dlq_mark_replayed(struct eng_dlq *q, const int64_t *ids, size_t n, struct eng_error *err)
{
    eng_error_clear(err);
    if (n == 0)
        return 0;
    if (ensure_ready(q, err) != 0)
        return err->code;
    struct eng_buf sql = {0}, arr = {0};
    ids_array(&arr, ids, n);
    eng_buf_printf(&sql, "UPDATE %s SET replayed_at = now() WHERE id = ANY($1::int8[])",
                   q->table_sql);
    const char *params[1] = {arr.data};
    PGresult *res = PQexecParams(q->conn, sql.data, 1, NULL, params, NULL, NULL, 0);
    eng_buf_free(&sql);
    eng_buf_free(&arr);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = fail(q, res, "mark replayed rows in", err);
    PQclear(res);
    return rc;
}

int eng_dlq_park_one(struct eng_dlq *q, const char *origin, const char *position, int64_t event_id,
                     const char *reason, const void *payload, size_t len, struct eng_error *err)
{
    struct eng_dlq_item item = {
        .origin = origin,
        .position = position,
        .event_id = event_id,
        .reason = reason,
        .payload = payload,
        .payload_len = len,
    };
    return eng_dlq_park(q, &item, 1, err);
}
