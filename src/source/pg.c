/* The PostgreSQL source: publication and slot set-up, the replication stream, the content
 * cache kept in commit order, micro-batching on transaction boundaries, and the checkpoint.
 *
 * Invariants (see docs/exactly-once.md):
 * - the flush LSN sent to the server is always a position every sink made durable;
 * - the state file holds the content cache as of its LSN and is written before any flush
 *   LSN past a content change is sent, so a restart enriches replayed events as before. */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include "../checkpoint/checkpoint.h"
#include "../core/metrics.h"
#include "../core/backoff.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/durable.h"
#include "../core/pgtext.h"
#include "../core/log.h"
#include "../decode/pgoutput.h"
#include "../enrich/enrich.h"
#include "pg.h"
#include "../db/pgconn.h"
#include "pgschema.h"
#include "state.h"

enum rel_role { REL_OTHER, REL_EVENTS, REL_CONTENT };

struct relmap {
    uint32_t oid;
    enum rel_role role;
    int ev[ENG_COL__COUNT];  /* attribute index per event column, -1 if absent */
    int c_id, c_type, c_len; /* content columns */
};

/* A content change waiting until its transaction is durable everywhere. */
struct content_change {
    uint64_t end_lsn;
    enum eng_content_op op;
    struct eng_content row; /* content_type owned */
};

struct change_list {
    struct content_change *v;
    size_t n, cap;
};

/* How long a quiet stream goes without an (empty) batch to the sinks. */
#define HEARTBEAT_US INT64_C(30000000)

/* (position, commit time of its oldest transaction) of submitted batches not yet confirmed,
 * for the lag in seconds. When it is full the newest entry is moved forward instead, which
 * keeps the oldest commit time and so never under-states the lag. */
#define LAG_RING 64

struct pgsrc {
    const struct eng_pg_source_options *opt;
    struct eng_pipeline *p;
    volatile sig_atomic_t *stop;
    PGconn *conn; /* ordinary connection: set-up, snapshot */
    PGconn *repl; /* replication connection */
    struct eng_pgo_decoder *dec;
    struct eng_content_cache *live;    /* as of the last decoded change */
    struct eng_content_cache *durable; /* as of the checkpoint */
    char system_id[32];
    uint64_t server_xlogpos; /* IDENTIFY_SYSTEM's WAL flush position */
    bool caches_ready;
    bool streaming; /* the replication connection is in COPY mode */

    struct relmap *rels;
    size_t nrels;

    bool in_tx;
    int64_t tx_commit_us;
    uint64_t tx_final_lsn; /* the open transaction's commit LSN (from Begin) */
    uint32_t tx_xid;
    uint64_t prev_commit_lsn;      /* capture: the commit LSN of the last transaction decoded */
    uint64_t tx_begin_lsn;         /* capture: where the open transaction's Begin was read */
    uint32_t tx_events;            /* events of the open transaction so far */
    struct change_list tx_changes; /* content changes of the open transaction */
    struct change_list pending;    /* committed, not yet durable */

    struct eng_batch *batch;
    int64_t batch_deadline; /* 0: nothing waiting */
    int64_t last_submit_us;
    uint64_t last_end_lsn; /* end of the last transaction decoded */
    int64_t last_commit_us;
    int64_t batch_commit_us; /* commit time of the open batch's first transaction; 0: none */
    uint64_t submitted_pos;

    struct eng_checkpoint cp; /* cp.acked: the flush LSN confirmed */
    uint64_t keepalive_end;   /* while a keepalive is handled: the server's sent position */
    uint64_t sent_confirmed;
    uint64_t state_lsn;
    bool state_dirty;       /* the durable cache changed and is not on file yet */
    uint64_t confirm_bound; /* on file: no flush LSN is sent past it */
    int64_t bound_saved_us;
    uint64_t received_lsn;
    uint64_t server_wal_end;
    int64_t last_status_us;
    struct {
        uint64_t pos;
        int64_t commit_us;
    } lag[LAG_RING];
    unsigned lag_head, lag_count;

    struct eng_counter *m_events, *m_bad, *m_misses, *m_tx, *m_ignored, *m_content, *m_captured;
    struct eng_gauge *m_lag_bytes, *m_lag_seconds, *m_confirmed;
};

/* ---- small helpers ---- */

static uint64_t be64(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u[i];
    return v;
}

static void put_be64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (char)(v & 0xff);
        v >>= 8;
    }
}

static bool valid_identifier(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 63)
        return false;
    for (const char *c = s; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
            return false;
    }
    return true;
}

static void change_list_push(struct change_list *l, const struct content_change *c)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = eng_realloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n++] = *c;
}

static void change_list_clear(struct change_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].row.content_type);
    l->n = 0;
}

static void apply_change(struct eng_content_cache *c, const struct content_change *ch)
{
    switch (ch->op) {
    case ENG_CONTENT_PUT:
        eng_content_cache_put(c, &ch->row);
        break;
    case ENG_CONTENT_REMOVE:
        eng_content_cache_remove(c, ch->row.content_id);
        break;
    case ENG_CONTENT_CLEAR:
        eng_content_cache_clear(c);
        break;
    }
}

/* ---- set-up ---- */

static int check_server(struct pgsrc *s, struct eng_error *err)
{
    PGresult *r = eng_pg_exec(s->conn, "SELECT current_setting('wal_level')", 0, NULL, err,
                              "could not read wal_level");
    if (r == NULL)
        return err->code;
    bool logical = strcmp(PQgetvalue(r, 0, 0), "logical") == 0;
    PQclear(r);
    if (!logical)
        return eng_error_set(err, ENG_EFATAL, false,
                             "wal_level is not \"logical\" (runbook: set wal_level = logical in "
                             "postgresql.conf and restart PostgreSQL)");
    return 0;
}

static int ensure_publication(struct pgsrc *s, struct eng_error *err)
{
    const char *pub = s->opt->publication;
    const char *params[] = {pub};
    PGresult *r = eng_pg_exec(s->conn,
                              "SELECT tablename FROM pg_publication_tables WHERE pubname = $1 AND "
                              "tablename IN ('engagement_events', 'content')",
                              1, params, err, "could not read publication");
    if (r == NULL)
        return err->code;
    int have = PQntuples(r);
    PQclear(r);
    if (have == 2)
        return 0;
    r = eng_pg_exec(s->conn, "SELECT 1 FROM pg_publication WHERE pubname = $1", 1, params, err,
                    "could not read publication");
    if (r == NULL)
        return err->code;
    bool exists = PQntuples(r) > 0;
    PQclear(r);
    if (exists)
        return eng_error_set(err, ENG_EFATAL, false,
                             "publication \"%s\" does not include both engagement_events and "
                             "content (runbook: ALTER PUBLICATION %s ADD TABLE ...)",
                             pub, pub);
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE PUBLICATION %s FOR TABLE engagement_events, content", pub);
    r = eng_pg_exec(s->conn, sql, 0, NULL, err, "could not create publication");
    if (r == NULL)
        return err->code;
    PQclear(r);
    eng_info("msg=\"created publication\" publication=%s", pub);
    return 0;
}

static int identify_system(struct pgsrc *s, struct eng_error *err)
{
    PGresult *r = PQexec(s->repl, "IDENTIFY_SYSTEM");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) < 3) {
        PQclear(r);
        return eng_pg_fail(err, s->repl, "IDENTIFY_SYSTEM failed");
    }
    char sysid[32];
    snprintf(sysid, sizeof(sysid), "%s", PQgetvalue(r, 0, 0));
    if (!eng_lsn_parse(PQgetvalue(r, 0, 2), &s->server_xlogpos))
        s->server_xlogpos = 0;
    PQclear(r);
    if (s->system_id[0] != '\0' && strcmp(sysid, s->system_id) != 0)
        return eng_error_set(err, ENG_EFATAL, false,
                             "server system identifier changed from %s to %s: this is not the "
                             "server the checkpoint belongs to (runbook for a replaced server, "
                             "docs/runbook.md: renumber its events past the largest event_id "
                             "the sinks hold and set its sequence past it, remove the slot's "
                             ".state, .bound and .sinks files, run, then backfill everything)",
                             s->system_id, sysid);
    memcpy(s->system_id, sysid, sizeof(sysid));
    return 0;
}

static int save_state(struct pgsrc *s, uint64_t lsn, struct eng_error *err)
{
    struct eng_pg_state st;
    snprintf(st.system_id, sizeof(st.system_id), "%s", s->system_id);
    st.lsn = lsn;
    int rc = eng_pg_state_save(s->opt->state_dir, s->opt->slot, &st, s->durable, err);
    if (rc == 0)
        s->state_lsn = lsn;
    return rc;
}

static int save_bound(struct pgsrc *s, uint64_t lsn, struct eng_error *err)
{
    struct eng_pg_state b;
    snprintf(b.system_id, sizeof(b.system_id), "%s", s->system_id);
    b.lsn = lsn;
    int rc = eng_pg_bound_save(s->opt->state_dir, s->opt->slot, &b, err);
    if (rc == 0)
        s->confirm_bound = lsn;
    return rc;
}

/* A checkpoint that cannot be this server's and slot's history is refused, never streamed
 * from: one ahead of the server's WAL (an edited or copied file) would confirm WAL engage
 * never read, and a slot confirmed past the bound engage keeps was not confirmed by engage
 * (dropped and created again), so the events in between never reached the sinks. */
static int check_checkpoint(struct pgsrc *s, const struct eng_pg_state *st, bool exists,
                            uint64_t confirmed_flush, struct eng_error *err)
{
    char a[24], b[24];
    struct eng_pg_state bound = {0};
    int brc = eng_pg_bound_load(s->opt->state_dir, s->opt->slot, &bound, err);
    if (brc < 0) {
        char why[sizeof(err->msg)];
        memcpy(why, err->msg, sizeof(why));
        return eng_error_set(err, ENG_EFATAL, false,
                             "%s (runbook: remove it; the next start writes it again)", why);
    }
    uint64_t ahead = st->lsn;
    if (brc == 0 && strcmp(bound.system_id, s->system_id) == 0 && bound.lsn > ahead)
        ahead = bound.lsn;
    if (s->server_xlogpos != 0 && ahead > s->server_xlogpos) {
        eng_lsn_format(ahead, a, sizeof(a));
        eng_lsn_format(s->server_xlogpos, b, sizeof(b));
        return eng_error_set(err, ENG_EFATAL, false,
                             "checkpoint %s in state directory \"%s\" is ahead of the server's "
                             "WAL end %s: it is not this server's history (runbook: use the "
                             "state directory of this deployment, or remove %s.state and "
                             "%s.bound and backfill from the time engage last ran)",
                             a, s->opt->state_dir, b, s->opt->slot, s->opt->slot);
    }
    if (brc != 0) {
        eng_info("msg=\"no confirm bound on file yet; written from now on\" slot=%s", s->opt->slot);
        return 0;
    }
    s->confirm_bound = bound.lsn;
    if (exists && confirmed_flush > bound.lsn) {
        eng_lsn_format(confirmed_flush, a, sizeof(a));
        eng_lsn_format(bound.lsn, b, sizeof(b));
        return eng_error_set(err, ENG_EFATAL, false,
                             "replication slot \"%s\" is confirmed at %s, past anything engage "
                             "confirmed (%s): it is not the slot the checkpoint came from "
                             "(dropped and created again?) and the events in between never "
                             "reached the sinks (runbook: note the time engage last ran, remove "
                             "%s.state and %s.bound from the state directory, start engage, and "
                             "run engage backfill from that time)",
                             s->opt->slot, a, b, s->opt->slot, s->opt->slot);
    }
    return 0;
}

/* Drops the slot this start has just created, when what must follow its creation failed: a
 * start that fails must not leave a slot behind pinning WAL. */
static void drop_new_slot(struct pgsrc *s)
{
    char sql[160];
    snprintf(sql, sizeof(sql), "DROP_REPLICATION_SLOT %s", s->opt->slot);
    PGresult *r = PQexec(s->repl, sql);
    if (PQresultStatus(r) == PGRES_COMMAND_OK)
        eng_info("msg=\"dropped the replication slot this start created\" slot=%s", s->opt->slot);
    else
        eng_error("msg=\"could not drop the replication slot this start created; drop it by "
                  "hand\" slot=%s error=\"%s\"",
                  s->opt->slot, PQerrorMessage(s->repl));
    PQclear(r);
    eng_content_cache_clear(s->durable);
}

/* Reads the slot's row: *exists, and its confirmed position. A slot of another plugin or
 * database, or one the server invalidated, is fatal. */
static int read_slot(struct pgsrc *s, bool *exists, uint64_t *confirmed_flush,
                     struct eng_error *err)
{
    const char *slot = s->opt->slot;
    const char *params[] = {slot};
    PGresult *r = eng_pg_exec(s->conn,
                              "SELECT plugin, database = current_database(), confirmed_flush_lsn, "
                              "wal_status FROM pg_replication_slots WHERE slot_name = $1",
                              1, params, err, "could not read replication slots");
    if (r == NULL)
        return err->code;
    *exists = PQntuples(r) == 1;
    *confirmed_flush = 0;
    if (!*exists) {
        PQclear(r);
        return 0;
    }
    bool pgoutput = strcmp(PQgetvalue(r, 0, 0), "pgoutput") == 0;
    bool same_db = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    bool lost = strcmp(PQgetvalue(r, 0, 3), "lost") == 0;
    if (!PQgetisnull(r, 0, 2))
        eng_lsn_parse(PQgetvalue(r, 0, 2), confirmed_flush);
    PQclear(r);
    if (!pgoutput || !same_db)
        return eng_error_set(err, ENG_EFATAL, false,
                             "replication slot \"%s\" exists but is not a pgoutput slot of "
                             "this database (runbook: choose another --slot)",
                             slot);
    if (lost)
        return eng_error_set(err, ENG_EFATAL, false,
                             "replication slot \"%s\" was invalidated (wal_status lost): "
                             "WAL it needed is gone and events were lost (runbook: drop the "
                             "slot and the state file, start again, and backfill the gap)",
                             slot);
    return 0;
}

/* The checkpoint on file, checked against this server and slot (the caches of a first
 * session). Without a state file for an existing slot, the content is read as it is now. */
static int restore_checkpoint(struct pgsrc *s, bool exists, uint64_t confirmed_flush,
                              struct eng_error *err)
{
    const char *slot = s->opt->slot;
    struct eng_pg_state st = {0};
    int lrc = eng_pg_state_load(s->opt->state_dir, slot, &st, s->durable, err);
    if (lrc < 0) {
        struct eng_error why = *err;
        return eng_error_set(err, ENG_EFATAL, false,
                             "%s (runbook: move the file aside to rebuild the cache from the "
                             "content table)",
                             why.msg);
    }
    if (lrc == 0) {
        if (strcmp(st.system_id, s->system_id) != 0)
            return eng_error_set(err, ENG_EFATAL, false,
                                 "state file belongs to server %s, this is server %s "
                                 "(runbook for a replaced server, docs/runbook.md: renumber "
                                 "its events past the largest event_id the sinks hold and "
                                 "set its sequence past it, remove %s/%s.state, .bound and "
                                 ".sinks, run, then backfill everything)",
                                 st.system_id, s->system_id, s->opt->state_dir, slot);
        if (!exists)
            return eng_error_set(err, ENG_EFATAL, false,
                                 "replication slot \"%s\" is gone but a checkpoint exists "
                                 "at %" PRIX32 "/%" PRIX32 ": events after it may be lost "
                                 "(runbook: remove the state file to start a new slot, then "
                                 "backfill from the checkpoint's time)",
                                 slot, (uint32_t)(st.lsn >> 32), (uint32_t)st.lsn);
        if (check_checkpoint(s, &st, exists, confirmed_flush, err) != 0)
            return err->code;
        s->state_lsn = st.lsn;
        s->cp.acked = st.lsn > confirmed_flush ? st.lsn : confirmed_flush;
        /* The restored position is sent as the flush LSN before anything else: the bound on
         * file must cover it first (a state file written past the bound by an engage before
         * this fix, or a bound lost with a crash). */
        if (s->cp.acked > s->confirm_bound && save_bound(s, s->cp.acked, err) != 0)
            return err->code;
        eng_info("msg=\"restored checkpoint\" slot=%s content_rows=%u", slot,
                 eng_content_cache_count(s->durable));
    } else if (exists) {
        eng_warn("msg=\"no state file for an existing slot; loading content as it is now, "
                 "so events replayed from the slot may be enriched with newer content\" "
                 "slot=%s dir=%s",
                 slot, s->opt->state_dir);
        if (eng_pg_load_content(s->conn, NULL, s->durable, err) != 0)
            return err->code;
        s->cp.acked = confirmed_flush;
        if (save_state(s, confirmed_flush, err) != 0 || save_bound(s, confirmed_flush, err) != 0)
            return err->code;
    }
    return 0;
}

/* ---- capture's snapshot ---- */

static void snapshot_marker(const struct pgsrc *s, char *path, size_t len)
{
    snprintf(path, len, "%s/%s.snapshot", s->opt->state_dir, s->opt->slot);
}

static int write_nothing(FILE *f, void *arg, struct eng_error *err)
{
    (void)arg;
    (void)err;
    return fputs("snapshot in progress\n", f) < 0 ? ENG_EIO : 0;
}

/* Before a capture creates its slot: the mark that its snapshot is not durable yet. */
static int mark_snapshot(struct pgsrc *s, struct eng_error *err)
{
    if (s->opt->capture == NULL || s->opt->capture->snapshot == NULL)
        return 0;
    char name[300];
    snprintf(name, sizeof(name), "%s.snapshot", s->opt->slot);
    return eng_durable_replace(s->opt->state_dir, name, write_nothing, NULL, err);
}

/* A capture killed before its snapshot was durable left a slot whose first rows are not
 * all in Kafka: refuse rather than stream on without them. */
static int check_snapshot_mark(struct pgsrc *s, bool slot_exists, struct eng_error *err)
{
    char path[4096];
    snapshot_marker(s, path, sizeof(path));
    if (s->opt->capture == NULL || access(path, F_OK) != 0)
        return 0;
    if (!slot_exists) {
        unlink(path);
        return 0;
    }
    return eng_error_set(err, ENG_EFATAL, false,
                         "the initial snapshot of slot \"%s\" did not finish (runbook: drop the "
                         "slot with SELECT pg_drop_replication_slot('%s'), remove %s and start "
                         "again; consumers dedupe what is sent twice)",
                         s->opt->slot, s->opt->slot, path);
}

/* Capture: the rows of the slot's snapshot to the sinks, durable before anything streams. */
static int submit_snapshot(struct pgsrc *s, const char *snapshot, uint64_t lsn,
                           struct eng_error *err)
{
    const struct eng_pg_capture *cap = s->opt->capture;
    if (cap == NULL || cap->snapshot == NULL)
        return 0;
    struct eng_batch **bs = NULL;
    size_t n = 0;
    int rc =
        cap->snapshot(cap->ctx, s->conn, snapshot, lsn, s->opt->batch_max_events, &bs, &n, err);
    size_t i = 0;
    for (; rc == 0 && i < n; i++) {
        bs[i]->position = lsn;
        while ((rc = eng_pipeline_submit(s->p, bs[i], 100000)) == ENG_EAGAIN && !*s->stop)
            ;
    }
    for (size_t k = rc == 0 ? n : i - 1; k < n; k++)
        eng_batch_release(bs[k]);
    free(bs);
    while (rc == 0 && !eng_pipeline_wait_idle(s->p, 100000)) {
        if (*s->stop || eng_pipeline_failed(s->p, err))
            return *s->stop ? ENG_ESTOPPED : err->code;
    }
    if (rc != 0)
        return rc == ENG_EAGAIN ? ENG_ESTOPPED : rc;
    char path[4096];
    snapshot_marker(s, path, sizeof(path));
    unlink(path);
    eng_info("msg=\"snapshot sent\" slot=%s batches=%zu", s->opt->slot, n);
    return 0;
}

/* Creates the slot and reads the content table in its exported snapshot, so that the cache
 * is exactly the one of the slot's first position; saves both before anything streams.
 * When that fails the slot is dropped again. */
static int create_slot(struct pgsrc *s, struct eng_error *err)
{
    const char *slot = s->opt->slot;
    char sql[160];
    if (mark_snapshot(s, err) != 0)
        return err->code;
    snprintf(sql, sizeof(sql), "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput EXPORT_SNAPSHOT", slot);
    PGresult *r = PQexec(s->repl, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        int rc = eng_pg_error(err, s->repl, r, "could not create replication slot");
        PQclear(r);
        return rc;
    }
    uint64_t consistent = 0;
    eng_lsn_parse(PQgetvalue(r, 0, 1), &consistent);
    char snapshot[64];
    snprintf(snapshot, sizeof(snapshot), "%s", PQgetvalue(r, 0, 2));
    PQclear(r);
    /* The snapshot stays valid while the replication connection runs no other command. */
    if (eng_pg_load_content(s->conn, snapshot, s->durable, err) != 0 ||
        save_state(s, consistent, err) != 0 || save_bound(s, consistent, err) != 0 ||
        submit_snapshot(s, snapshot, consistent, err) != 0) {
        drop_new_slot(s);
        return err->code;
    }
    s->cp.acked = consistent;
    eng_info("msg=\"created replication slot\" slot=%s content_rows=%u", slot,
             eng_content_cache_count(s->durable));
    return 0;
}

/* Makes sure the slot exists (creating it, with its snapshot's content, if this is a fresh
 * start) and that the caches belong to the checkpoint. Sets *start to the position to
 * stream from. */
static int prepare_slot(struct pgsrc *s, uint64_t *start, struct eng_error *err)
{
    bool exists = false;
    uint64_t confirmed_flush = 0;
    if (read_slot(s, &exists, &confirmed_flush, err) != 0 ||
        check_snapshot_mark(s, exists, err) != 0)
        return err->code;
    if (!s->caches_ready && restore_checkpoint(s, exists, confirmed_flush, err) != 0)
        return err->code;
    if (!exists) {
        if (s->caches_ready)
            return eng_error_set(err, ENG_EFATAL, false,
                                 "replication slot \"%s\" disappeared while streaming (runbook: "
                                 "find who dropped it; remove the state file and backfill the "
                                 "gap)",
                                 s->opt->slot);
        if (create_slot(s, err) != 0)
            return err->code;
    }
    if (!s->caches_ready) {
        /* Each sink's own progress, so that after a crash it is not sent again what it
         * already has (a new slot starts with none). */
        char path[4096], identity[300];
        snprintf(path, sizeof(path), "%s/%s.sinks", s->opt->state_dir, s->opt->slot);
        snprintf(identity, sizeof(identity), "%s %s", s->system_id, s->opt->slot);
        eng_pipeline_track_progress(s->p, path, identity, exists ? s->server_xlogpos : 0);
        s->caches_ready = true;
    }
    eng_content_cache_destroy(s->live);
    s->live = eng_content_cache_clone(s->durable);
    *start = s->cp.acked;
    return 0;
}

/* ---- relations ---- */

static struct relmap *relmap_get(struct pgsrc *s, uint32_t oid)
{
    for (size_t i = 0; i < s->nrels; i++) {
        if (s->rels[i].oid == oid)
            return &s->rels[i];
    }
    return NULL;
}

/* A table engage reads whose column changed type while streaming (ALTER TABLE) would be
 * read wrongly from here on: stop with the column named instead. */
static int relation_check(const struct eng_pgo_relation *rel, struct eng_error *err)
{
    const char *table = strcmp(rel->relname, "engagement_events") == 0 ? "engagement_events"
                        : strcmp(rel->relname, "content") == 0         ? "content"
                                                                       : NULL;
    for (int i = 0; table != NULL && i < rel->natts; i++) {
        if (eng_column_check(table, rel->attrs[i].name, rel->attrs[i].type_oid, NULL, err) != 0)
            return ENG_EFATAL;
    }
    return 0;
}

static void relmap_update(struct pgsrc *s, const struct eng_pgo_relation *rel)
{
    struct relmap *m = relmap_get(s, rel->oid);
    if (m == NULL) {
        s->rels = eng_realloc(s->rels, (s->nrels + 1) * sizeof(*s->rels));
        m = &s->rels[s->nrels++];
    }
    memset(m, 0, sizeof(*m));
    m->oid = rel->oid;
    m->role = strcmp(rel->relname, "engagement_events") == 0 ? REL_EVENTS
              : strcmp(rel->relname, "content") == 0         ? REL_CONTENT
                                                             : REL_OTHER;
    for (int c = 0; c < ENG_COL__COUNT; c++)
        m->ev[c] = -1;
    m->c_id = m->c_type = m->c_len = -1;
    for (int i = 0; i < rel->natts; i++) {
        const char *name = rel->attrs[i].name;
        for (int c = 0; c < ENG_COL__COUNT; c++) {
            if (strcmp(name, eng_event_col_names[c]) == 0)
                m->ev[c] = i;
        }
        if (strcmp(name, "content_id") == 0)
            m->c_id = i;
        else if (strcmp(name, "content_type") == 0)
            m->c_type = i;
        else if (strcmp(name, "length_seconds") == 0)
            m->c_len = i;
    }
}

static struct eng_text col_text(const struct eng_pgo_tuple *t, int idx)
{
    struct eng_text v = {NULL, 0, true};
    if (idx >= 0 && idx < t->ncols && t->cols[idx].kind == ENG_PGO_TEXT) {
        v.data = t->cols[idx].data;
        v.len = t->cols[idx].len;
        v.null = false;
    }
    return v;
}

/* ---- batches and checkpoint ---- */

static void send_status(struct pgsrc *s, bool force)
{
    int64_t now = eng_clock_mono_us();
    if (!force && s->cp.acked == s->sent_confirmed &&
        now - s->last_status_us < s->opt->status_interval_us)
        return;
    char msg[34];
    msg[0] = 'r';
    put_be64(msg + 1, s->received_lsn > s->cp.acked ? s->received_lsn : s->cp.acked);
    put_be64(msg + 9, s->cp.acked);
    put_be64(msg + 17, s->cp.acked);
    put_be64(msg + 25, (uint64_t)(eng_clock_wall_us() - INT64_C(946684800000000)));
    msg[33] = 0;
    if (PQputCopyData(s->repl, msg, sizeof(msg)) <= 0 || PQflush(s->repl) != 0) {
        eng_warn("msg=\"could not send standby status\" error=\"%s\"", PQerrorMessage(s->repl));
        return;
    }
    s->sent_confirmed = s->cp.acked;
    s->last_status_us = now;
    eng_gauge_set(s->m_confirmed, (int64_t)s->cp.acked);
}

/* Least time between two writes of the confirm bound while the stream moves. */
#define BOUND_INTERVAL_US INT64_C(200000)

/* True when a flush LSN of lsn may be sent: the confirm bound on file is at or past it, or
 * has just been written so (up to the server's WAL end, so that a busy stream writes it a few
 * times a second, not at every tick). */
/* Makes sure the confirm bound on file covers lsn (written at most every BOUND_INTERVAL_US,
 * past the server's WAL end, so that it rarely needs writing). 0, ENG_EAGAIN while the last
 * write is too recent, or an error. */
static int bound_cover(struct pgsrc *s, uint64_t lsn, struct eng_error *err)
{
    if (lsn <= s->confirm_bound)
        return 0;
    int64_t now = eng_clock_mono_us();
    if (now - s->bound_saved_us < BOUND_INTERVAL_US)
        return ENG_EAGAIN;
    struct eng_pg_state b;
    snprintf(b.system_id, sizeof(b.system_id), "%s", s->system_id);
    b.lsn = s->server_wal_end > lsn ? s->server_wal_end : lsn;
    s->bound_saved_us = now;
    int rc = eng_pg_bound_save(s->opt->state_dir, s->opt->slot, &b, err);
    if (rc == 0)
        s->confirm_bound = b.lsn;
    return rc;
}

/* ---- checkpoint (src/checkpoint): what the replication source saves and acknowledges ---- */

static bool batch_waiting(const struct pgsrc *s);

/* What every sink made durable. While a keepalive is handled (keepalive_end set: the
 * position up to which the server has sent everything) and nothing is in flight, everything
 * the server sent is durable, so an idle slot may confirm that and never hold WAL. */
static uint64_t cp_durable(void *ctx)
{
    struct pgsrc *s = ctx;
    uint64_t durable = eng_pipeline_durable_position(s->p);
    if (s->keepalive_end > durable && !s->in_tx && !batch_waiting(s) && s->pending.n == 0 &&
        !s->state_dirty && eng_pipeline_idle(s->p) && durable >= s->submitted_pos)
        durable = s->keepalive_end;
    return durable;
}

/* Before lsn is confirmed: the content changes that became durable go into the durable cache
 * and the cache on file (a save that failed is tried again on the next tick: the changes
 * already left the pending list), and the confirm bound covers lsn. */
static int cp_save(void *ctx, uint64_t lsn, struct eng_error *err)
{
    struct pgsrc *s = ctx;
    /* The bound first: the state file's position is sent as the flush LSN at the next start,
     * so it must never pass the bound on file (a kill in between would leave a slot
     * confirmed past the bound, which the next start takes for a re-created slot). */
    int brc = bound_cover(s, lsn, err);
    if (brc != 0)
        return brc;
    size_t k = 0;
    while (k < s->pending.n && s->pending.v[k].end_lsn <= lsn) {
        apply_change(s->durable, &s->pending.v[k]);
        k++;
    }
    if (k > 0) {
        for (size_t i = 0; i < k; i++)
            free(s->pending.v[i].row.content_type);
        memmove(s->pending.v, s->pending.v + k, (s->pending.n - k) * sizeof(*s->pending.v));
        s->pending.n -= k;
        s->state_dirty = true;
    }
    if (s->state_dirty) {
        int rc = save_state(s, lsn, err);
        if (rc != 0)
            return rc;
        s->state_dirty = false;
    }
    return 0;
}

static void cp_ack(void *ctx, uint64_t lsn)
{
    (void)lsn; /* s->cp.acked holds it */
    send_status(ctx, true);
}

/* Moves the checkpoint to what every sink made durable, and the lag gauges with it. */
static void checkpoint_tick(struct pgsrc *s)
{
    eng_checkpoint_tick(&s->cp);
    while (s->lag_count > 0 && s->lag[s->lag_head].pos <= s->cp.acked) {
        s->lag_head = (s->lag_head + 1) % LAG_RING;
        s->lag_count--;
    }
    /* The age of the oldest transaction not yet durable everywhere: 0 once all that was
     * decoded is confirmed (an idle, caught-up stream), and growing while a sink holds it. */
    if (s->lag_count > 0) {
        int64_t age_ms = (eng_clock_wall_us() - s->lag[s->lag_head].commit_us) / 1000;
        eng_gauge_set(s->m_lag_seconds, age_ms > 0 ? age_ms : 0);
    } else {
        eng_gauge_set(s->m_lag_seconds, 0);
    }
    if (s->server_wal_end > s->cp.acked)
        eng_gauge_set(s->m_lag_bytes, (int64_t)(s->server_wal_end - s->cp.acked));
    else
        eng_gauge_set(s->m_lag_bytes, 0);
}

/* Submits the open batch, keeping the connection alive while the sinks push back.
 * Returns 0, or ENG_ESTOPPED when asked to stop. */
static int flush_batch(struct pgsrc *s)
{
    struct eng_batch *b = s->batch;
    uint64_t position = s->last_end_lsn;
    b->position = position;
    /* After a successful submit the batch belongs to the sinks: not a byte of it is read
     * here again. */
    for (;;) {
        int rc = eng_pipeline_submit(s->p, b, 100000);
        if (rc == 0)
            break;
        if (rc == ENG_ESTOPPED || *s->stop)
            return ENG_ESTOPPED;
        checkpoint_tick(s);
        send_status(s, false);
    }
    /* Only a batch that ends a transaction not yet recorded counts: a heartbeat or the part
     * of a large transaction carries no commit of its own. */
    if (position > s->submitted_pos && s->batch_commit_us != 0) {
        if (s->lag_count < LAG_RING) {
            unsigned at = (s->lag_head + s->lag_count) % LAG_RING;
            s->lag[at].pos = position;
            s->lag[at].commit_us = s->batch_commit_us;
            s->lag_count++;
        } else {
            s->lag[(s->lag_head + LAG_RING - 1) % LAG_RING].pos = position;
        }
        s->batch_commit_us = 0;
    }
    s->submitted_pos = position;
    s->last_submit_us = eng_clock_mono_us();
    s->batch = eng_batch_create(s->opt->batch_max_events);
    s->batch_deadline = 0;
    checkpoint_tick(s);
    return 0;
}

static bool batch_waiting(const struct pgsrc *s)
{
    return s->batch->n > 0 || s->last_end_lsn > s->submitted_pos;
}

/* ---- change handling ---- */

static int park_bad(struct pgsrc *s, uint64_t lsn, int64_t event_id, const char *reason,
                    const void *payload, size_t len, struct eng_error *err)
{
    char pos[24];
    eng_lsn_format(lsn, pos, sizeof(pos));
    eng_counter_add(s->m_bad, 1);
    eng_warn("msg=\"bad input parked in the dead-letter queue\" lsn=%s reason=\"%s\"", pos, reason);
    return eng_dlq_park_one(s->opt->dlq, "source", pos, event_id, reason, payload, len, err);
}

/* The row as a JSON object of column texts, for the dead-letter queue. */
static void row_json(const struct eng_pgo_relation *rel, const struct eng_pgo_tuple *t,
                     struct eng_buf *out)
{
    eng_buf_putc(out, '{');
    for (int i = 0; i < t->ncols; i++) {
        if (i > 0)
            eng_buf_putc(out, ',');
        const char *name = rel && i < rel->natts ? rel->attrs[i].name : "?";
        eng_buf_put_json_str(out, name, strlen(name));
        eng_buf_putc(out, ':');
        if (t->cols[i].kind == ENG_PGO_TEXT)
            eng_buf_put_json_str(out, t->cols[i].data, t->cols[i].len);
        else
            eng_buf_puts(out, "null");
    }
    eng_buf_putc(out, '}');
}

static int on_event_insert(struct pgsrc *s, const struct relmap *m,
                           const struct eng_pgo_relation *rel, const struct eng_pgo_tuple *t,
                           uint64_t lsn, struct eng_error *err)
{
    if (eng_batch_full(s->batch)) {
        int rc = flush_batch(s);
        if (rc != 0)
            return rc;
    }
    struct eng_text cols[ENG_COL__COUNT];
    for (int c = 0; c < ENG_COL__COUNT; c++)
        cols[c] = col_text(t, m->ev[c]);
    struct eng_event *e;
    bool missed;
    struct eng_error perr;
    eng_error_clear(&perr);
    if (eng_enrich_row(s->batch, cols, s->live, &e, &missed, &perr) != 0) {
        int64_t id = -1;
        if (!cols[ENG_COL_EVENT_ID].null)
            eng_parse_i64(cols[ENG_COL_EVENT_ID].data, cols[ENG_COL_EVENT_ID].len, &id);
        struct eng_buf payload = {.cap = ENG_EVENT_MAX_JSON};
        row_json(rel, t, &payload);
        if (payload.overflow) /* a dead letter is a row of the table: keep it bounded */
            eng_buf_reset(&payload);
        int rc = park_bad(s, lsn, id, perr.msg, payload.data, payload.len, err);
        eng_buf_free(&payload);
        return rc;
    }
    e->commit_time_us = s->tx_commit_us;
    e->txn_lsn = s->tx_final_lsn;
    e->txn_seq = s->tx_events++;
    if (missed)
        eng_counter_add(s->m_misses, 1);
    eng_counter_add(s->m_events, 1);
    if (s->batch_deadline == 0)
        s->batch_deadline = eng_clock_mono_us() + s->opt->batch_max_us;
    return 0;
}

static void on_content_row(struct pgsrc *s, const struct relmap *m, const struct eng_pgo_tuple *t,
                           bool remove)
{
    struct eng_text id = col_text(t, m->c_id);
    struct content_change ch = {.op = remove ? ENG_CONTENT_REMOVE : ENG_CONTENT_PUT};
    if (id.null || !eng_parse_i32(id.data, id.len, &ch.row.content_id))
        return;
    if (!remove) {
        const struct eng_content *old = eng_content_cache_get(s->live, ch.row.content_id);
        bool type_unchanged =
            m->c_type >= 0 && m->c_type < t->ncols && t->cols[m->c_type].kind == ENG_PGO_UNCHANGED;
        if (type_unchanged && old != NULL) {
            ch.row.type_null = old->type_null;
            ch.row.content_type = eng_strndup(old->content_type, old->type_len);
            ch.row.type_len = old->type_len;
        } else {
            struct eng_text ty = col_text(t, m->c_type);
            ch.row.type_null = ty.null;
            ch.row.content_type = ty.null ? NULL : eng_strndup(ty.data, ty.len);
            ch.row.type_len = ty.null ? 0 : ty.len;
        }
        struct eng_text len = col_text(t, m->c_len);
        ch.row.length_null = len.null || !eng_parse_i32(len.data, len.len, &ch.row.length_seconds);
    }
    apply_change(s->live, &ch);
    change_list_push(&s->tx_changes, &ch);
    eng_counter_add(s->m_content, 1);
}

/* Capture mode: a change of a captured table to the capture's hook; a row it cannot take is
 * parked like an event that does not enrich. */
static int on_capture(struct pgsrc *s, const struct eng_pgo_relation *rel, uint32_t relid, char op,
                      const struct eng_pgo_tuple *before, const struct eng_pgo_tuple *after,
                      uint64_t lsn, struct eng_error *err)
{
    const struct relmap *m = relmap_get(s, relid);
    if (rel == NULL || m == NULL || m->role == REL_OTHER)
        return 0;
    if (eng_batch_full(s->batch) || s->batch->n + 2 > s->batch->cap) {
        int rc = flush_batch(s);
        if (rc != 0)
            return rc;
    }
    struct eng_pg_change ch = {
        .rel = rel,
        .op = op,
        .before = before,
        .after = after,
        .lsn = lsn,
        .xid = s->tx_xid,
        .commit_time_us = s->tx_commit_us,
        .last_commit_lsn = s->prev_commit_lsn,
    };
    struct eng_error perr;
    eng_error_clear(&perr);
    int rc = s->opt->capture->change(s->opt->capture->ctx, s->batch, &ch, &perr);
    if (rc != 0 && perr.retriable) {
        *err = perr;
        return rc;
    }
    if (rc != 0) {
        struct eng_buf payload = {.cap = ENG_EVENT_MAX_JSON};
        row_json(rel, after != NULL ? after : before, &payload);
        if (payload.overflow)
            eng_buf_reset(&payload);
        rc = park_bad(s, lsn, -1, perr.msg, payload.data, payload.len, err);
        eng_buf_free(&payload);
        return rc;
    }
    eng_counter_add(s->m_captured, 1);
    if (s->batch_deadline == 0)
        s->batch_deadline = eng_clock_mono_us() + s->opt->batch_max_us;
    return 0;
}

static int on_capture_message(struct pgsrc *s, const struct eng_pgo_msg *msg, uint64_t lsn,
                              struct eng_error *err)
{
    switch (msg->kind) {
    case ENG_PGO_INSERT:
        return on_capture(s, msg->u.insert.rel, msg->u.insert.relid, 'c', NULL,
                          &msg->u.insert.newtup, lsn, err);
    case ENG_PGO_UPDATE:
        return on_capture(s, msg->u.update.rel, msg->u.update.relid, 'u',
                          msg->u.update.oldkind ? &msg->u.update.oldtup : NULL,
                          &msg->u.update.newtup, lsn, err);
    case ENG_PGO_DELETE:
        return on_capture(s, msg->u.del.rel, msg->u.del.relid, 'd', &msg->u.del.oldtup, NULL, lsn,
                          err);
    default: /* TRUNCATE is not captured (see docs/kafka.md) */
        return 0;
    }
}

static int on_message(struct pgsrc *s, const struct eng_pgo_msg *msg, uint64_t lsn,
                      struct eng_error *err)
{
    const struct relmap *m;
    switch (msg->kind) {
    case ENG_PGO_BEGIN:
        s->in_tx = true;
        s->tx_commit_us = eng_pgo_time_to_unix_us(msg->u.begin.commit_time);
        s->tx_final_lsn = msg->u.begin.final_lsn;
        s->tx_xid = msg->u.begin.xid;
        s->tx_events = 0;
        change_list_clear(&s->tx_changes);
        return 0;
    case ENG_PGO_COMMIT:
        s->in_tx = false;
        s->last_end_lsn = msg->u.commit.end_lsn;
        s->prev_commit_lsn = msg->u.commit.end_lsn;
        s->last_commit_us = s->tx_commit_us;
        if (s->batch_commit_us == 0)
            s->batch_commit_us = s->tx_commit_us;
        for (size_t i = 0; i < s->tx_changes.n; i++) {
            s->tx_changes.v[i].end_lsn = msg->u.commit.end_lsn;
            change_list_push(&s->pending, &s->tx_changes.v[i]);
        }
        s->tx_changes.n = 0; /* ownership of the rows moved to pending */
        eng_counter_add(s->m_tx, 1);
        if (s->batch_deadline == 0)
            s->batch_deadline = eng_clock_mono_us() + s->opt->batch_max_us;
        return 0;
    case ENG_PGO_RELATION:
        if (relation_check(msg->u.relation, err) != 0)
            return err->code;
        relmap_update(s, msg->u.relation);
        return 0;
    case ENG_PGO_INSERT:
        m = relmap_get(s, msg->u.insert.relid);
        if (m == NULL || m->role == REL_OTHER)
            return 0;
        if (m->role == REL_CONTENT) {
            on_content_row(s, m, &msg->u.insert.newtup, false);
            return 0;
        }
        return on_event_insert(s, m, msg->u.insert.rel, &msg->u.insert.newtup, lsn, err);
    case ENG_PGO_UPDATE:
        m = relmap_get(s, msg->u.update.relid);
        if (m != NULL && m->role == REL_CONTENT) {
            /* A changed key arrives as the old key plus the new row. */
            if (msg->u.update.oldkind != 0)
                on_content_row(s, m, &msg->u.update.oldtup, true);
            on_content_row(s, m, &msg->u.update.newtup, false);
        } else {
            eng_counter_add(s->m_ignored, 1); /* updates of events are not events */
        }
        return 0;
    case ENG_PGO_DELETE:
        m = relmap_get(s, msg->u.del.relid);
        if (m != NULL && m->role == REL_CONTENT)
            on_content_row(s, m, &msg->u.del.oldtup, true);
        else
            eng_counter_add(s->m_ignored, 1);
        return 0;
    case ENG_PGO_TRUNCATE:
        for (uint32_t i = 0; i < msg->u.truncate.nrelids; i++) {
            m = relmap_get(s, msg->u.truncate.relids[i]);
            if (m != NULL && m->role == REL_CONTENT) {
                struct content_change ch = {.op = ENG_CONTENT_CLEAR};
                apply_change(s->live, &ch);
                change_list_push(&s->tx_changes, &ch);
            }
        }
        return 0;
    default: /* ORIGIN, TYPE, MESSAGE: nothing to do */
        return 0;
    }
}

static int on_copy_data(struct pgsrc *s, const char *buf, int len, struct eng_error *err)
{
    if (len < 1)
        return eng_error_set(err, ENG_EPROTO, true, "empty replication message");
    if (buf[0] == 'k') {
        if (len < 18)
            return eng_error_set(err, ENG_EPROTO, true, "short keepalive message");
        uint64_t wal_end = be64(buf + 1);
        bool reply = buf[17] != 0;
        s->server_wal_end = wal_end;
        s->keepalive_end = wal_end; /* an idle slot confirms it (cp_durable) */
        checkpoint_tick(s);
        s->keepalive_end = 0;
        send_status(s, reply);
        return 0;
    }
    if (buf[0] != 'w')
        return eng_error_set(err, ENG_EPROTO, true, "unexpected replication message 0x%02x",
                             (unsigned char)buf[0]);
    if (len < 25)
        return eng_error_set(err, ENG_EPROTO, true, "short XLogData message");
    uint64_t start = be64(buf + 1);
    uint64_t wal_end = be64(buf + 9);
    if (wal_end > s->received_lsn)
        s->received_lsn = wal_end;
    s->server_wal_end = wal_end;
    struct eng_pgo_msg msg;
    struct eng_error derr;
    eng_error_clear(&derr);
    if (eng_pgo_decode(s->dec, (const uint8_t *)buf + 25, (size_t)len - 25, &msg, &derr) != 0) {
        char reason[sizeof(derr.msg) + 40];
        snprintf(reason, sizeof(reason), "could not decode pgoutput message: %s", derr.msg);
        return park_bad(s, start, -1, reason, buf + 25, (size_t)len - 25, err);
    }
    bool change = msg.kind == ENG_PGO_INSERT || msg.kind == ENG_PGO_UPDATE ||
                  msg.kind == ENG_PGO_DELETE || msg.kind == ENG_PGO_TRUNCATE;
    if (change && s->opt->capture != NULL)
        return on_capture_message(s, &msg, start, err);
    return on_message(s, &msg, start, err);
}

/* ---- the session ---- */

static void session_reset(struct pgsrc *s)
{
    PQfinish(s->repl);
    s->repl = NULL;
    s->streaming = false;
    PQfinish(s->conn);
    s->conn = NULL;
    eng_pgo_decoder_destroy(s->dec);
    s->dec = NULL;
    free(s->rels);
    s->rels = NULL;
    s->nrels = 0;
    s->in_tx = false;
    change_list_clear(&s->tx_changes);
    eng_batch_release(s->batch);
    s->batch = NULL;
    s->batch_commit_us = 0;
}

static int wait_readable(PGconn *c, int64_t timeout_us)
{
    int fd = PQsocket(c);
    if (fd < 0)
        return -1;
    fd_set rfds;
    FD_ZERO(&rfds);
    FD_SET(fd, &rfds);
    struct timeval tv = {(time_t)(timeout_us / 1000000), (suseconds_t)(timeout_us % 1000000)};
    int rc = select(fd + 1, &rfds, NULL, NULL, &tv);
    return rc < 0 && errno != EINTR ? -1 : 0;
}

/* Submits the open batch when its deadline has passed. 0, or ENG_ESTOPPED. */
static int flush_if_due(struct pgsrc *s)
{
    if (s->batch_deadline != 0 && eng_clock_mono_us() >= s->batch_deadline && batch_waiting(s))
        return flush_batch(s) != 0 ? ENG_ESTOPPED : 0;
    return 0;
}

/* Nothing to read: closes the batch (latency stays low when the stream is quiet), sends a
 * heartbeat batch after a quiet while (the sinks refresh what expires by time, Redis's
 * top:content:10m), moves the checkpoint, and waits for data or the batch deadline. */
static int on_idle(struct pgsrc *s, struct eng_error *err)
{
    bool quiet_long = !s->in_tx && !batch_waiting(s) &&
                      eng_clock_mono_us() - s->last_submit_us >= HEARTBEAT_US &&
                      eng_pipeline_idle(s->p);
    if (((batch_waiting(s) && !s->in_tx) || quiet_long) && flush_batch(s) != 0)
        return ENG_ESTOPPED;
    checkpoint_tick(s);
    send_status(s, false);
    int64_t wait = 100000;
    if (s->batch_deadline != 0) {
        int64_t left = s->batch_deadline - eng_clock_mono_us();
        wait = left < 0 ? 0 : left < wait ? left : wait;
    }
    if ((wait > 0 && wait_readable(s->repl, wait) != 0) || PQconsumeInput(s->repl) == 0)
        return eng_pg_fail(err, s->repl, "replication connection failed");
    return flush_if_due(s);
}

static int stream_ended(struct pgsrc *s, struct eng_error *err)
{
    PGresult *r = PQgetResult(s->repl);
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    msg[strcspn(msg, "\n")] = '\0';
    PQclear(r);
    return eng_error_set(err, ENG_EIO, true, "replication stream ended: %s", msg);
}

static int stream(struct pgsrc *s, struct eng_error *err)
{
    unsigned since_tick = 0;
    for (;;) {
        if (*s->stop || eng_pipeline_failed(s->p, NULL))
            return ENG_ESTOPPED;
        char *buf = NULL;
        int n = PQgetCopyData(s->repl, &buf, 1);
        int rc;
        if (n == 0)
            rc = on_idle(s, err);
        else if (n == -1)
            rc = stream_ended(s, err);
        else if (n < 0)
            rc = eng_pg_fail(err, s->repl, "replication connection failed");
        else {
            rc = on_copy_data(s, buf, n, err);
            PQfreemem(buf);
            if (rc == 0)
                rc = flush_if_due(s);
            if (rc == 0 && ++since_tick >= 256) {
                since_tick = 0;
                checkpoint_tick(s);
                send_status(s, false);
            }
        }
        if (rc != 0)
            return rc;
    }
}

static int session(struct pgsrc *s, struct eng_error *err)
{
    uint64_t start = 0;
    s->conn = eng_pg_connect(s->opt->conninfo, "engage", false, err);
    if (s->conn == NULL)
        return err->code;
    s->repl = eng_pg_connect(s->opt->conninfo, "engage", true, err);
    if (s->repl == NULL)
        return err->code;
    if (check_server(s, err) != 0 || eng_pg_check_schema(s->conn, err) != 0 ||
        identify_system(s, err) != 0 || ensure_publication(s, err) != 0 ||
        prepare_slot(s, &start, err) != 0)
        return err->code;
    PQfinish(s->conn); /* not needed while streaming */
    s->conn = NULL;

    char sql[256], lsn[24];
    eng_lsn_format(start, lsn, sizeof(lsn));
    snprintf(sql, sizeof(sql),
             "START_REPLICATION SLOT %s LOGICAL %s (proto_version '1', publication_names '%s')",
             s->opt->slot, lsn, s->opt->publication);
    PGresult *r = PQexec(s->repl, sql);
    s->streaming = PQresultStatus(r) == PGRES_COPY_BOTH;
    if (!s->streaming) {
        /* 55006 (the slot is held by another process, or by our previous connection not yet
         * gone) is transient; a statement the server refuses is not. */
        int rc = eng_pg_error(err, s->repl, r, "could not start replication");
        PQclear(r);
        if (rc == ENG_EINVAL)
            err->code = ENG_EFATAL;
        return err->code;
    }
    PQclear(r);
    eng_info("msg=\"streaming\" slot=%s publication=%s from=%s", s->opt->slot, s->opt->publication,
             lsn);
    eng_pipeline_source_health(s->p, "pg", true, NULL);
    s->dec = eng_pgo_decoder_create();
    s->batch = eng_batch_create(s->opt->batch_max_events);
    s->batch_deadline = 0;
    s->last_end_lsn = s->submitted_pos = start;
    s->sent_confirmed = 0; /* send our position right away */
    send_status(s, true);
    return stream(s, err);
}

/* After a failed session: wait until everything submitted is durable, so that the caches
 * and the checkpoint agree, then stream again from the checkpoint. */
static bool drain(struct pgsrc *s)
{
    while (!*s->stop) {
        if (eng_pipeline_wait_idle(s->p, 200000)) {
            checkpoint_tick(s);
            /* Changes of transactions that were never submitted come again in the replay. */
            change_list_clear(&s->pending);
            return true;
        }
    }
    return false;
}

static void register_metrics(struct pgsrc *s)
{
    s->m_events = eng_metrics_counter("engage_source_events_total", "source=\"pg\"",
                                      "Events read from the source");
    s->m_bad = eng_metrics_counter("engage_source_bad_input_total", "source=\"pg\"",
                                   "Input parked in the dead-letter queue as undecodable");
    s->m_misses = eng_metrics_counter("engage_enrich_misses_total", NULL,
                                      "Events whose content_id has no content row");
    s->m_tx = eng_metrics_counter("engage_source_transactions_total", "source=\"pg\"",
                                  "Transactions decoded");
    s->m_ignored = eng_metrics_counter("engage_source_ignored_changes_total", "source=\"pg\"",
                                       "Updates and deletes of events (not events)");
    if (s->opt->capture != NULL) /* the metric exists only where it can move */
        s->m_captured = eng_metrics_counter("engage_capture_changes_total", NULL,
                                            "Changes captured as Kafka records (engage capture)");
    s->m_content = eng_metrics_counter("engage_content_changes_total", NULL,
                                       "Changes to the content table applied to the cache");
    s->m_lag_bytes = eng_metrics_gauge("engage_replication_lag_bytes", NULL,
                                       "Server WAL end minus the confirmed flush LSN");
    s->m_lag_seconds = eng_metrics_gauge_scaled("engage_replication_lag_seconds", NULL,
                                                "Age of the oldest transaction decoded and not yet "
                                                "durable in every sink (0 when caught up)",
                                                3);
    s->m_confirmed =
        eng_metrics_gauge("engage_confirmed_flush_lsn", NULL, "Flush LSN last sent to the server");
}

/* A refusal for configuration reasons (ENG_EDENIED) is retried for ENG_DENIED_GRACE_US from
 * the first of a run of them, then it is fatal. */
static bool denied_too_long(int rc, int64_t *since)
{
    if (rc != ENG_EDENIED) {
        *since = 0;
        return false;
    }
    int64_t now = eng_clock_mono_us();
    if (*since == 0)
        *since = now;
    return now - *since > ENG_DENIED_GRACE_US;
}

/* Sleeps delay microseconds in slices, so a stop request ends it early; false when stopped. */
static bool sleep_unless_stopped(int64_t delay, volatile sig_atomic_t *stop)
{
    int64_t until = eng_clock_mono_us() + delay;
    for (int64_t left = delay; !*stop && left > 0; left = until - eng_clock_mono_us()) {
        struct timespec ts = {0, (long)(left < 50000 ? left : 50000) * 1000};
        nanosleep(&ts, NULL);
    }
    return !*stop;
}

/* Gives the sinks a moment to finish what is in flight, confirms it, and frees the source. */
static void shut_down(struct pgsrc *s)
{
    if (s->streaming) {
        (void)eng_pipeline_wait_idle(s->p, 5000000);
        s->bound_saved_us = 0; /* the confirm bound may be written once more right away */
        checkpoint_tick(s);
        send_status(s, true);
    }
    session_reset(s);
    change_list_clear(&s->pending);
    free(s->pending.v);
    free(s->tx_changes.v);
    eng_content_cache_destroy(s->live);
    eng_content_cache_destroy(s->durable);
}

int eng_pg_source_run(const struct eng_pg_source_options *opt, struct eng_pipeline *p,
                      volatile sig_atomic_t *stop, struct eng_error *err)
{
    if (!valid_identifier(opt->slot) || !valid_identifier(opt->publication))
        return eng_error_set(err, ENG_EINVAL, false,
                             "slot and publication names must be lowercase letters, digits and "
                             "underscores (at most 63)");
    struct pgsrc s = {.opt = opt, .p = p, .stop = stop};
    const struct eng_checkpoint_ops cp_ops = {cp_durable, cp_save, cp_ack, &s};
    eng_checkpoint_init(&s.cp, &cp_ops, 0);
    s.durable = eng_content_cache_create();
    s.live = eng_content_cache_create();
    register_metrics(&s);
    struct eng_backoff bo;
    eng_backoff_init(&bo, 200000, 10000000, (uint64_t)eng_clock_mono_us());
    int rc = 0;
    int64_t denied_since = 0; /* first of the ENG_EDENIED failures in a row */
    eng_pipeline_source_health(p, "pg", false, "connecting");
    for (;;) {
        eng_error_clear(err);
        rc = session(&s, err);
        eng_pipeline_source_health(p, "pg", false, rc == 0 ? "stopped" : err->msg);
        if (eng_pipeline_failed(p, err)) {
            rc = ENG_EFATAL;
            break;
        }
        if (rc == ENG_ESTOPPED || *stop) {
            rc = 0;
            break;
        }
        if (denied_too_long(rc, &denied_since)) {
            rc = ENG_EFATAL;
            break;
        }
        if (rc == ENG_EFATAL || (rc != 0 && !err->retriable))
            break;
        if (s.submitted_pos > s.cp.acked)
            eng_backoff_reset(&bo); /* we made progress in that session */
        int64_t delay = eng_backoff_next(&bo);
        eng_warn("msg=\"source failed, reconnecting\" retry_in_ms=%lld error=\"%s\"",
                 (long long)(delay / 1000), err->msg);
        session_reset(&s);
        if (!drain(&s))
            break;
        if (!sleep_unless_stopped(delay, stop))
            break;
    }
    shut_down(&s);
    if (rc != ENG_EFATAL && eng_pipeline_failed(p, err))
        rc = ENG_EFATAL; /* a sink failed for good while shutting down */
    return rc == 0 || rc == ENG_ESTOPPED || (*stop && rc != ENG_EFATAL) ? 0 : rc;
}
