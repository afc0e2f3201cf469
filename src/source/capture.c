/* engage capture's records: one Debezium record per change (see capture.h).
 *
 * The record schema of a table needs catalog facts the replication stream does not carry
 * (NOT NULL, defaults, the primary key); they are read once per relation and read again
 * when the relation's columns change (a new Relation message after ALTER TABLE). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/pgtext.h"
#include "../db/pgconn.h"
#include "../decode/debezium_out.h"
#include "capture.h"

/* A table's record schema and the relation shape it was built for. */
struct table {
    uint32_t oid;
    uint16_t natts;
    uint32_t *types; /* the relation's column types, to notice a change */
    enum eng_capture_topic topic;
    struct eng_dbz_schema *schema;
};

struct eng_capture {
    struct eng_capture_options opt; /* strings owned */
    char *db;                       /* the database's name (source.db) */
    PGconn *conn;                   /* catalog reads; opened when first needed */
    struct table *tables;
    size_t ntables;
    struct eng_buf key, value;
};

void eng_capture_topic(const char *prefix, enum eng_capture_topic t, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s.public.%s", prefix,
             t == ENG_CAPTURE_EVENTS ? "engagement_events" : "content");
}

struct eng_capture *eng_capture_create(const struct eng_capture_options *opt)
{
    struct eng_capture *c = eng_calloc(1, sizeof(*c));
    c->opt = *opt;
    c->opt.conninfo = eng_strdup(opt->conninfo);
    c->opt.prefix = eng_strdup(opt->prefix ? opt->prefix : "dbserver1");
    c->key.cap = ENG_EVENT_MAX_JSON;
    c->value.cap = ENG_EVENT_MAX_JSON;
    return c;
}

static void table_free(struct table *t)
{
    free(t->types);
    eng_dbz_schema_destroy(t->schema);
}

void eng_capture_destroy(struct eng_capture *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->ntables; i++)
        table_free(&c->tables[i]);
    free(c->tables);
    PQfinish(c->conn);
    eng_buf_free(&c->key);
    eng_buf_free(&c->value);
    free(c->db);
    free((char *)c->opt.conninfo);
    free((char *)c->opt.prefix);
    free(c);
}

/* ---- the catalog ---- */

static const char columns_sql[] =
    "SELECT a.attname, a.atttypid, a.atttypmod, a.attnotnull, "
    "       coalesce(a.attnum = ANY (i.indkey), false), pg_get_expr(d.adbin, d.adrelid) "
    "FROM pg_attribute a "
    "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped "
    "  AND a.attgenerated = '' "
    "ORDER BY a.attnum";

static int connect_catalog(struct eng_capture *c, struct eng_error *err)
{
    if (c->conn != NULL && PQstatus(c->conn) == CONNECTION_OK)
        return 0;
    PQfinish(c->conn);
    c->conn = eng_pg_connect(c->opt.conninfo, "engage-capture", false, err);
    if (c->conn == NULL)
        return err->code;
    free(c->db);
    c->db = eng_strdup(PQdb(c->conn));
    return 0;
}

/* The schema for rel from the catalog's columns (which must be the relation's). */
static struct eng_dbz_schema *schema_from(struct eng_capture *c, const struct eng_pgo_relation *rel,
                                          enum eng_capture_topic topic, PGresult *r,
                                          struct eng_error *err)
{
    int n = PQntuples(r);
    if (n != rel->natts) {
        eng_error_set(err, ENG_EAGAIN, true,
                      "table %s has %d columns in the catalog and %d in the stream (changed "
                      "meanwhile?)",
                      rel->relname, n, rel->natts);
        return NULL;
    }
    struct eng_dbz_col *cols = eng_calloc((size_t)n + 1, sizeof(*cols));
    struct eng_buf *defaults = eng_calloc((size_t)n + 1, sizeof(*defaults));
    int key_col = -1;
    for (int i = 0; i < n; i++) {
        cols[i].name = rel->attrs[i].name;
        cols[i].type_oid = rel->attrs[i].type_oid;
        cols[i].typmod = rel->attrs[i].typmod;
        cols[i].not_null = PQgetvalue(r, i, 3)[0] == 't';
        cols[i].pkey = PQgetvalue(r, i, 4)[0] == 't';
        const char *expr = PQgetisnull(r, i, 5) ? NULL : PQgetvalue(r, i, 5);
        if (eng_dbz_default_json(cols[i].type_oid, cols[i].typmod, cols[i].not_null, expr,
                                 &defaults[i]))
            cols[i].default_json = defaults[i].data; /* buffers stay NUL-terminated */
        if (topic == ENG_CAPTURE_EVENTS && !c->opt.key_primary &&
            strcmp(rel->attrs[i].name, "content_id") == 0)
            key_col = i;
    }
    struct eng_dbz_table t = {
        .prefix = c->opt.prefix,
        .db = c->db,
        .schema = rel->nspname,
        .table = rel->relname,
        .ncols = (uint16_t)n,
        .cols = cols,
        .key_col = key_col,
        .schemas = c->opt.schemas,
    };
    struct eng_dbz_schema *s = eng_dbz_schema_create(&t, err);
    for (int i = 0; i < n; i++)
        eng_buf_free(&defaults[i]);
    free(defaults);
    free(cols);
    return s;
}

static bool same_shape(const struct table *t, const struct eng_pgo_relation *rel)
{
    if (t->natts != rel->natts)
        return false;
    for (uint16_t i = 0; i < t->natts; i++) {
        if (t->types[i] != rel->attrs[i].type_oid)
            return false;
    }
    return true;
}

/* The table entry for rel, built from the catalog on first use or after a change. */
static struct table *table_for(struct eng_capture *c, const struct eng_pgo_relation *rel,
                               struct eng_error *err)
{
    struct table *t = NULL;
    for (size_t i = 0; i < c->ntables && t == NULL; i++)
        t = c->tables[i].oid == rel->oid ? &c->tables[i] : NULL;
    if (t != NULL && same_shape(t, rel))
        return t;
    if (connect_catalog(c, err) != 0)
        return NULL;
    char oid[16];
    snprintf(oid, sizeof(oid), "%u", rel->oid);
    const char *params[1] = {oid};
    PGresult *r = eng_pg_exec(c->conn, columns_sql, 1, params, err, "could not read the columns");
    if (r == NULL)
        return NULL;
    enum eng_capture_topic topic =
        strcmp(rel->relname, "content") == 0 ? ENG_CAPTURE_CONTENT : ENG_CAPTURE_EVENTS;
    struct eng_dbz_schema *schema = schema_from(c, rel, topic, r, err);
    PQclear(r);
    if (schema == NULL)
        return NULL;
    if (t == NULL) {
        c->tables = eng_realloc(c->tables, (c->ntables + 1) * sizeof(*c->tables));
        t = &c->tables[c->ntables++];
    } else {
        table_free(t);
    }
    t->oid = rel->oid;
    t->natts = rel->natts;
    t->types = eng_malloc(((size_t)rel->natts + 1) * sizeof(uint32_t));
    for (uint16_t i = 0; i < rel->natts; i++)
        t->types[i] = rel->attrs[i].type_oid;
    t->topic = topic;
    t->schema = schema;
    return t;
}

/* ---- records ---- */

/* Appends one record (value NULL: a tombstone) to b. */
static void push_record(struct eng_batch *b, enum eng_capture_topic topic,
                        const struct eng_buf *key, const struct eng_buf *value)
{
    struct eng_event *e = eng_batch_push(b);
    e->topic = (uint8_t)topic;
    e->key = eng_batch_put_string(b, key->data, key->len);
    if (value == NULL) {
        e->flags |= ENG_EV_TOMBSTONE;
        e->json = (struct eng_slice){(uint32_t)b->jsonl.len, 0};
        return;
    }
    e->json.off = (uint32_t)b->jsonl.len;
    e->json.len = (uint32_t)value->len;
    eng_buf_append(&b->jsonl, value->data, value->len);
    eng_buf_putc(&b->jsonl, '\n');
}

int eng_capture_change(void *ctx, struct eng_batch *b, const struct eng_pg_change *ch,
                       struct eng_error *err)
{
    struct eng_capture *c = ctx;
    struct table *t = table_for(c, ch->rel, err);
    if (t == NULL)
        return err->code;
    struct eng_dbz_source src = {
        .snapshot = "false",
        .ts_us = ch->commit_time_us,
        .has_tx_id = true,
        .tx_id = ch->xid,
        .has_lsn = true,
        .lsn = ch->lsn,
        .has_last_commit = ch->last_commit_lsn != 0,
        .last_commit_lsn = ch->last_commit_lsn,
        .now_ns = eng_clock_wall_us() * 1000,
    };
    eng_buf_reset(&c->key);
    eng_buf_reset(&c->value);
    int rc =
        eng_dbz_encode(t->schema, &src, ch->op, ch->before, ch->after, &c->key, &c->value, err);
    if (rc != 0)
        return rc;
    push_record(b, t->topic, &c->key, &c->value);
    if (ch->op == 'd')
        push_record(b, t->topic, &c->key, NULL); /* Debezium's tombstone after a delete */
    return 0;
}

/* ---- the snapshot of a new slot ---- */

/* The relation of a query's columns (the content table read whole), for its schema. */
static void relation_of(PGresult *r, uint32_t oid, struct eng_pgo_relation *rel,
                        struct eng_pgo_attr *attrs)
{
    rel->oid = oid;
    rel->nspname = (char *)"public";
    rel->relname = (char *)"content";
    rel->natts = (uint16_t)PQnfields(r);
    rel->attrs = attrs;
    for (int i = 0; i < rel->natts; i++) {
        attrs[i].name = PQfname(r, i);
        attrs[i].type_oid = PQftype(r, i);
        attrs[i].typmod = PQfmod(r, i);
    }
}

/* Debezium's source.snapshot of the i-th of n snapshot records of the one table sent. */
static const char *snapshot_mark(int i, int n)
{
    return i == n - 1 ? "last" : i == 0 ? "first" : "true";
}

/* Encodes the rows of r as op "r" records into batches of at most batch_max. */
static int snapshot_rows(struct eng_capture *c, struct table *t, PGresult *r, uint64_t lsn,
                         int64_t txid, uint32_t batch_max, struct eng_batch ***out, size_t *n,
                         struct eng_error *err)
{
    int64_t now_us = eng_clock_wall_us(); /* one time for the whole snapshot, as Debezium */
    int rows = PQntuples(r), ncols = PQnfields(r);
    struct eng_pgo_column *cols = eng_calloc((size_t)ncols + 1, sizeof(*cols));
    struct eng_pgo_tuple tup = {.ncols = (uint16_t)ncols, .cols = cols};
    struct eng_batch *b = NULL;
    int rc = 0;
    for (int i = 0; i < rows && rc == 0; i++) {
        for (int k = 0; k < ncols; k++) {
            bool null = PQgetisnull(r, i, k);
            cols[k] = (struct eng_pgo_column){.kind = null ? ENG_PGO_NULL : ENG_PGO_TEXT,
                                              .len = (uint32_t)PQgetlength(r, i, k),
                                              .data = PQgetvalue(r, i, k)};
        }
        struct eng_dbz_source src = {.snapshot = snapshot_mark(i, rows),
                                     .ts_us = now_us,
                                     .has_tx_id = true,
                                     .tx_id = txid,
                                     .has_lsn = true,
                                     .lsn = lsn,
                                     .now_ns = eng_clock_wall_us() * 1000};
        eng_buf_reset(&c->key);
        eng_buf_reset(&c->value);
        rc = eng_dbz_encode(t->schema, &src, 'r', NULL, &tup, &c->key, &c->value, err);
        if (rc != 0)
            break;
        if (b == NULL || b->n >= batch_max || eng_batch_full(b)) {
            b = eng_batch_create(batch_max);
            *out = eng_realloc(*out, (*n + 1) * sizeof(**out));
            (*out)[(*n)++] = b;
        }
        push_record(b, t->topic, &c->key, &c->value);
    }
    free(cols);
    return rc;
}

int eng_capture_snapshot(void *ctx, PGconn *conn, const char *snapshot, uint64_t lsn,
                         uint32_t batch_max, struct eng_batch ***out, size_t *n,
                         struct eng_error *err)
{
    struct eng_capture *c = ctx;
    *out = NULL;
    *n = 0;
    if (connect_catalog(c, err) != 0)
        return err->code;
    char sql[160];
    snprintf(sql, sizeof(sql), "SET TRANSACTION SNAPSHOT '%s'", snapshot);
    const char *steps[] = {"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", sql};
    for (size_t i = 0; i < 2; i++) {
        PGresult *r = eng_pg_exec(conn, steps[i], 0, NULL, err, "could not start the snapshot");
        if (r == NULL)
            goto fail;
        PQclear(r);
    }
    /* Debezium's snapshot records carry the snapshot transaction's id and the WAL position
     * when it ran (not the slot's consistent point). */
    PGresult *x = eng_pg_exec(conn,
                              "SELECT txid_current(), pg_current_wal_lsn()::text, "
                              "'public.content'::regclass::oid",
                              0, NULL, err, "could not read the snapshot's transaction");
    if (x == NULL)
        goto fail;
    int64_t txid = strtoll(PQgetvalue(x, 0, 0), NULL, 10);
    uint64_t wal = lsn;
    eng_lsn_parse(PQgetvalue(x, 0, 1), &wal);
    uint32_t oid = (uint32_t)strtoul(PQgetvalue(x, 0, 2), NULL, 10);
    PQclear(x);
    PGresult *r = eng_pg_exec(conn, "SELECT * FROM public.content ORDER BY content_id", 0, NULL,
                              err, "could not read content");
    if (r == NULL)
        goto fail;
    struct eng_pgo_attr *attrs = eng_calloc((size_t)PQnfields(r) + 1, sizeof(*attrs));
    struct eng_pgo_relation rel;
    relation_of(r, oid, &rel, attrs);
    struct table *t = table_for(c, &rel, err);
    int rc = t == NULL ? err->code : snapshot_rows(c, t, r, wal, txid, batch_max, out, n, err);
    int rows = PQntuples(r);
    free(attrs);
    PQclear(r);
    PQclear(PQexec(conn, "COMMIT"));
    if (rc == 0)
        eng_info("msg=\"snapshot of content\" rows=%d", rows);
    return rc;
fail:
    PQclear(PQexec(conn, "ROLLBACK"));
    return err->code;
}
