/* Backfill. Pages come from keyset pagination in (event_ts, event_id) order:
 *
 *   WHERE event_ts >= $start AND event_ts < $end AND (event_ts, event_id) > ($ts, $id)
 *   ORDER BY event_ts, event_id LIMIT $n
 *
 * so a page query costs the same wherever it is in the range (given an index on
 * (event_ts, event_id); without one each page sorts the range). The key of a page's last
 * row is kept as PostgreSQL's own text, so it is handed back exactly.
 *
 * Each page is one batch whose position is its page number. A page's key becomes the
 * resume point once every sink made the page durable (the pipeline's durable position),
 * written to STATE_DIR/backfill-<hash of the range>.state; so a stopped run resumes after
 * the last durable page and redelivers at most what was in flight, which the sinks absorb
 * (ClickHouse collapses twins, Redis's seen-set, the API's dedupe by event_id).
 *
 * Enrichment uses the content table as it is when the backfill starts: the history of a
 * content row is not kept anywhere, so an event is enriched as of now, not as of its
 * commit (docs/backfill.md). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../core/backoff.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/pgtext.h"
#include "../enrich/enrich.h"
#include "backfill.h"
#include "../checkpoint/checkpoint.h"
#include "../core/durable.h"
#include "../db/pgconn.h"
#include "pgschema.h"

#define KEY_TEXT_MAX 64 /* a timestamp's or a bigint's text */

/* A position in the range: the last row of a page. */
struct page_key {
    char ts[KEY_TEXT_MAX];
    char id[KEY_TEXT_MAX];
};

/* A submitted page not yet durable everywhere. */
struct pending_page {
    uint64_t page;
    struct page_key key;
};

struct backfill {
    const struct eng_backfill_options *opt;
    struct eng_pipeline *p;
    volatile sig_atomic_t *stop;
    struct eng_backfill_stats *stats;
    PGconn *conn;
    struct eng_content_cache *cache;
    char start[KEY_TEXT_MAX], end[KEY_TEXT_MAX]; /* as PostgreSQL normalizes them */
    char state_path[4096];
    char state_name[40];      /* backfill-<hash of the range>.state */
    struct page_key after;    /* the last row submitted (before the first row at the start) */
    bool in_flight;           /* the query for the page after the one in hand was sent */
    uint64_t pages;           /* submitted */
    struct eng_checkpoint cp; /* cp.acked: the last page saved as the resume point */
    struct pending_page *pending;
    size_t npending, cap_pending;
    int64_t started_us, last_progress_us;
};

static int connect_and_prepare(struct backfill *b, struct eng_error *err)
{
    PQfinish(b->conn);
    b->in_flight = false;
    b->conn = eng_pg_connect(b->opt->conninfo, "engage-backfill", false, err);
    if (b->conn == NULL)
        return err->code;
    /* Timestamps come back as 'YYYY-MM-DD HH:MM:SS[.ffffff]', whatever the server's default. */
    PGresult *r =
        eng_pg_exec(b->conn, "SET DateStyle = ISO", 0, NULL, err, "could not set DateStyle");
    if (r == NULL)
        return err->code;
    PQclear(r);
    return eng_pg_check_schema(b->conn, err);
}

/* Normalizes the range through PostgreSQL (so any timestamp text it reads works, and the
 * resume file names the range the same way however it was typed). */
static int read_range(struct backfill *b, struct eng_error *err)
{
    const char *params[] = {b->opt->start, b->opt->end};
    PGresult *r = eng_pg_exec(b->conn,
                              "SELECT $1::timestamp::text, $2::timestamp::text, "
                              "$1::timestamp < $2::timestamp",
                              2, params, err, "could not read --start and --end as timestamps");
    if (r == NULL)
        return err->code;
    snprintf(b->start, sizeof(b->start), "%s", PQgetvalue(r, 0, 0));
    snprintf(b->end, sizeof(b->end), "%s", PQgetvalue(r, 0, 1));
    bool ordered = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
    PQclear(r);
    if (!ordered)
        return eng_error_set(err, ENG_EINVAL, false,
                             "the range is empty: --start %s is not before --end %s", b->start,
                             b->end);
    return 0;
}

static uint64_t fnv1a(const char *s, uint64_t h)
{
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Reads the resume file if it is for this range. */
static void load_resume(struct backfill *b)
{
    FILE *f = fopen(b->state_path, "r");
    if (f == NULL)
        return;
    char line[2][256];
    bool ok = true;
    for (int i = 0; i < 2 && ok; i++) {
        ok = fgets(line[i], sizeof(line[i]), f) != NULL;
        if (ok)
            line[i][strcspn(line[i], "\n")] = '\0';
    }
    fclose(f);
    char want[200];
    snprintf(want, sizeof(want), "engage-backfill 1 %s|%s", b->start, b->end);
    char *tab = ok ? strchr(line[1], '\t') : NULL;
    if (!ok || strcmp(line[0], want) != 0 || strncmp(line[1], "after ", 6) != 0 || tab == NULL) {
        eng_warn("msg=\"backfill resume file ignored: not for this range\" path=\"%s\"",
                 b->state_path);
        return;
    }
    *tab = '\0';
    const char *ts = line[1] + 6, *idtext = tab + 1;
    int64_t id;
    if (ts[0] == '\0' || strlen(ts) >= KEY_TEXT_MAX || strlen(idtext) >= KEY_TEXT_MAX ||
        !eng_parse_i64(idtext, strlen(idtext), &id)) {
        eng_warn("msg=\"backfill resume file ignored: corrupt\" path=\"%s\"", b->state_path);
        return;
    }
    memcpy(b->after.ts, ts, strlen(ts) + 1); /* lengths checked above */
    memcpy(b->after.id, idtext, strlen(idtext) + 1);
    b->stats->resumed = true;
}

struct resume_text {
    const struct backfill *b;
    const struct page_key *key;
};

static int write_resume(FILE *f, void *arg, struct eng_error *err)
{
    const struct resume_text *r = arg;
    (void)err;
    fprintf(f, "engage-backfill 1 %s|%s\nafter %s\t%s\n", r->b->start, r->b->end, r->key->ts,
            r->key->id);
    return 0;
}

/* ---- checkpoint (src/checkpoint): the resume point of the last page every sink has ---- */

static uint64_t cp_durable(void *ctx)
{
    return eng_pipeline_durable_position(((struct backfill *)ctx)->p);
}

/* The last page at or before page (there is one: page is past the last saved). */
static size_t pages_upto(const struct backfill *b, uint64_t page)
{
    size_t k = 0;
    while (k < b->npending && b->pending[k].page <= page)
        k++;
    return k;
}

/* Writes the resume point through the durable-replace helper (a crash leaves the old or the
 * new file, whole). A save that fails holds the point and is tried again. */
static int cp_save(void *ctx, uint64_t page, struct eng_error *err)
{
    struct backfill *b = ctx;
    size_t k = pages_upto(b, page);
    if (b->opt->state_dir == NULL || k == 0)
        return 0;
    struct resume_text r = {b, &b->pending[k - 1].key};
    return eng_durable_replace(b->opt->state_dir, b->state_name, write_resume, &r, err);
}

static void cp_ack(void *ctx, uint64_t page)
{
    struct backfill *b = ctx;
    size_t k = pages_upto(b, page);
    memmove(b->pending, b->pending + k, (b->npending - k) * sizeof(*b->pending));
    b->npending -= k;
}

static void checkpoint(struct backfill *b)
{
    eng_checkpoint_tick(&b->cp);
}

static void show_progress(struct backfill *b, bool last)
{
    if (!b->opt->progress)
        return;
    int64_t now = eng_clock_mono_us();
    if (!last && now - b->last_progress_us < 200000)
        return;
    b->last_progress_us = now;
    double secs = (double)(now - b->started_us) / 1e6;
    uint64_t done = b->stats->events + b->stats->parked; /* rows of the range seen */
    double pct = b->stats->total ? 100.0 * (double)done / (double)b->stats->total : 100.0;
    double rate = secs > 0 ? (double)done / secs : 0.0;
    /* Time left at the rate so far; unknown until something was done. */
    char eta[32] = "--:--";
    if (done >= b->stats->total) {
        snprintf(eta, sizeof(eta), "0:00");
    } else if (rate > 0) {
        uint64_t left = (uint64_t)((double)(b->stats->total - done) / rate + 0.5);
        if (left >= 3600)
            snprintf(eta, sizeof(eta), "%" PRIu64 ":%02u:%02u", left / 3600,
                     (unsigned)(left / 60 % 60), (unsigned)(left % 60));
        else
            snprintf(eta, sizeof(eta), "%u:%02u", (unsigned)(left / 60), (unsigned)(left % 60));
    }
    fprintf(stderr, "\rbackfill: %5.1f%%  %" PRIu64 " of %" PRIu64 " rows  %.0f/s  ETA %s   ",
            pct > 100.0 ? 100.0 : pct, done, b->stats->total, rate, eta);
    if (last)
        fputc('\n', stderr);
    fflush(stderr);
}

/* The row as a JSON object of column texts, for the dead-letter queue. */
static void row_json(const PGresult *r, int row, struct eng_buf *out)
{
    eng_buf_putc(out, '{');
    for (int c = 0; c < PQnfields(r); c++) {
        if (c > 0)
            eng_buf_putc(out, ',');
        const char *name = PQfname(r, c);
        eng_buf_put_json_str(out, name, strlen(name));
        eng_buf_putc(out, ':');
        if (PQgetisnull(r, row, c))
            eng_buf_puts(out, "null");
        else
            eng_buf_put_json_str(out, PQgetvalue(r, row, c), (size_t)PQgetlength(r, row, c));
    }
    eng_buf_putc(out, '}');
}

static int park_row(struct backfill *b, const PGresult *r, int row, const char *reason,
                    struct eng_error *err)
{
    struct eng_buf payload = {.cap = ENG_EVENT_MAX_JSON};
    row_json(r, row, &payload);
    if (payload.overflow) /* the row stays in the table; the dead letter names it */
        eng_buf_reset(&payload);
    int64_t id = -1;
    if (!PQgetisnull(r, row, ENG_COL_EVENT_ID))
        eng_parse_i64(PQgetvalue(r, row, ENG_COL_EVENT_ID),
                      (size_t)PQgetlength(r, row, ENG_COL_EVENT_ID), &id);
    eng_warn("msg=\"bad row parked in the dead-letter queue\" event_id=%lld reason=\"%s\"",
             (long long)id, reason);
    int rc = eng_dlq_park_one(b->opt->dlq, "backfill", "backfill", id, reason, payload.data,
                              payload.len, err);
    eng_buf_free(&payload);
    if (rc == 0)
        b->stats->parked++;
    return rc;
}

/* Sends the query for the page after key; its result is read by recv_page. The next page's
 * query goes out as soon as a page has arrived, so that PostgreSQL reads it while this
 * page is enriched and submitted (a page query waited for, then the page processed, left
 * each side idle half the time). Returns 0 or an error with err set. */
static int send_page(struct backfill *b, const struct page_key *key, struct eng_error *err)
{
    char limit[16];
    snprintf(limit, sizeof(limit), "%u", b->opt->page_events);
    const char *params[] = {b->start, b->end, key->ts, key->id, limit};
    if (PQsendQueryParams(b->conn,
                          "SELECT event_id, content_id, user_id, event_type, event_ts, "
                          "duration_ms, device FROM engagement_events WHERE event_ts >= "
                          "$1::timestamp AND event_ts < $2::timestamp AND (event_ts, event_id) > "
                          "($3::timestamp, $4::bigint) ORDER BY event_ts, event_id LIMIT $5::int",
                          5, NULL, params, NULL, NULL, 0) != 1)
        return eng_pg_fail(err, b->conn, "could not read engagement_events");
    b->in_flight = true;
    return 0;
}

/* The result of the query send_page sent: the page (0 rows at the end) or NULL with err
 * set. */
static PGresult *recv_page(struct backfill *b, struct eng_error *err)
{
    b->in_flight = false;
    PGresult *page = NULL, *r;
    while ((r = PQgetResult(b->conn)) != NULL) {
        if (page == NULL)
            page = r;
        else
            PQclear(r);
    }
    if (page == NULL) {
        eng_pg_fail(err, b->conn, "could not read engagement_events");
        return NULL;
    }
    if (PQresultStatus(page) != PGRES_TUPLES_OK) {
        eng_pg_error(err, b->conn, page, "could not read engagement_events");
        PQclear(page);
        return NULL;
    }
    return page;
}

/* Turns a page's rows into a batch of enriched events; rows that are not events are parked. */
static int page_batch(struct backfill *b, const PGresult *r, struct eng_batch **out,
                      struct eng_error *err)
{
    int n = PQntuples(r);
    struct eng_batch *batch = eng_batch_create((uint32_t)n);
    for (int i = 0; i < n; i++) {
        struct eng_text cols[ENG_COL__COUNT];
        for (int c = 0; c < ENG_COL__COUNT; c++) {
            cols[c].null = PQgetisnull(r, i, c);
            cols[c].data = PQgetvalue(r, i, c);
            cols[c].len = (uint32_t)PQgetlength(r, i, c);
        }
        struct eng_event *e;
        bool missed;
        struct eng_error perr;
        eng_error_clear(&perr);
        if (eng_enrich_row(batch, cols, b->cache, &e, &missed, &perr) != 0) {
            if (park_row(b, r, i, perr.msg, err) != 0) {
                eng_batch_release(batch);
                return err->code;
            }
            continue;
        }
        if (missed)
            b->stats->misses++;
    }
    *out = batch;
    return 0;
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Sleeps the backoff's next delay (waking for a stop) and reconnects. */
static void reconnect_later(struct backfill *b, struct eng_backoff *bo, const char *why)
{
    int64_t delay = eng_backoff_next(bo);
    eng_warn("msg=\"backfill query failed, will retry\" retry_in_ms=%lld error=\"%s\"",
             (long long)(delay / 1000), why);
    for (int64_t slept = 0; slept < delay && !*b->stop; slept += 50000)
        sleep_us(delay - slept < 50000 ? delay - slept : 50000);
    struct eng_error err;
    eng_error_clear(&err);
    if (!*b->stop && connect_and_prepare(b, &err) != 0)
        eng_warn("msg=\"backfill reconnect failed\" error=\"%s\"", err.msg);
}

/* Keyset pages need an index that leads with (event_ts, event_id); without one every page
 * sorts the rest of the range. Says so once, with the statement that fixes it. */
static void warn_without_index(struct backfill *b)
{
    struct eng_error err;
    PGresult *r = eng_pg_exec(b->conn,
                              "SELECT 1 FROM pg_index i "
                              "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = "
                              "i.indkey[0] "
                              "JOIN pg_attribute b ON b.attrelid = i.indrelid AND b.attnum = "
                              "i.indkey[1] "
                              "WHERE i.indrelid = 'engagement_events'::regclass "
                              "AND a.attname = 'event_ts' AND b.attname = 'event_id'",
                              0, NULL, &err, "could not read the table's indexes");
    if (r == NULL)
        return;
    if (PQntuples(r) == 0)
        eng_warn("msg=\"engagement_events has no index on (event_ts, event_id): each page sorts "
                 "the rest of the range (runbook: CREATE INDEX CONCURRENTLY ON "
                 "engagement_events (event_ts, event_id))\"");
    PQclear(r);
}

static int count_range(struct backfill *b, struct eng_error *err)
{
    const char *params[] = {b->start, b->end, b->after.ts, b->after.id};
    PGresult *r = eng_pg_exec(b->conn,
                              "SELECT count(*) FROM engagement_events WHERE event_ts >= "
                              "$1::timestamp AND event_ts < $2::timestamp AND (event_ts, event_id) "
                              "> ($3::timestamp, $4::bigint)",
                              4, params, err, "could not count the range");
    if (r == NULL)
        return err->code;
    int64_t total = 0;
    const char *v = PQgetvalue(r, 0, 0);
    (void)eng_parse_i64(v, strlen(v), &total);
    b->stats->total = total > 0 ? (uint64_t)total : 0;
    PQclear(r);
    return 0;
}

/* Submits the page, keeping the resume point moving while the sinks push back. */
static int submit_page(struct backfill *b, struct eng_batch *batch, const struct page_key *key)
{
    uint32_t n = batch->n;
    batch->position = b->pages + 1;
    for (;;) {
        int rc = eng_pipeline_submit(b->p, batch, 100000);
        if (rc == 0)
            break;
        if (rc == ENG_ESTOPPED || *b->stop) {
            eng_batch_release(batch);
            return ENG_ESTOPPED;
        }
        checkpoint(b);
        show_progress(b, false);
    }
    b->pages++;
    if (b->npending == b->cap_pending) {
        b->cap_pending = b->cap_pending ? 2 * b->cap_pending : 64;
        b->pending = eng_realloc(b->pending, b->cap_pending * sizeof(*b->pending));
    }
    b->pending[b->npending].page = b->pages;
    b->pending[b->npending].key = *key;
    b->npending++;
    b->after = *key;
    b->stats->events += n;
    checkpoint(b);
    show_progress(b, false);
    return 0;
}

/* Waits until every submitted page is durable; after a stop, for at most 5 s. */
static bool drain(struct backfill *b)
{
    int64_t deadline = 0;
    while (!eng_pipeline_wait_idle(b->p, 200000)) {
        if (eng_pipeline_failed(b->p, NULL))
            return false;
        checkpoint(b);
        show_progress(b, false);
        if (*b->stop && deadline == 0)
            deadline = eng_clock_mono_us() + 5000000;
        if (deadline != 0 && eng_clock_mono_us() > deadline)
            return false;
    }
    checkpoint(b);
    return true;
}

/* The resume file of this range (named after it), read when there is one. */
static int open_resume(struct backfill *b, struct eng_error *err)
{
    const char *dir = b->opt->state_dir;
    if (dir == NULL)
        return 0;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return eng_error_set(err, ENG_EIO, false, "could not create state directory \"%s\": %s",
                             dir, strerror(errno));
    char range[2 * KEY_TEXT_MAX + 2];
    snprintf(range, sizeof(range), "%s|%s", b->start, b->end);
    snprintf(b->state_name, sizeof(b->state_name), "backfill-%016" PRIx64 ".state",
             fnv1a(range, 0xcbf29ce484222325ull));
    snprintf(b->state_path, sizeof(b->state_path), "%s/%s", dir, b->state_name);
    load_resume(b);
    return 0;
}

/* Connects, reads the range, the content table and the resume point, counts the rows. */
static int start_backfill(struct backfill *b, struct eng_error *err)
{
    int rc = connect_and_prepare(b, err);
    if (rc == 0)
        rc = read_range(b, err);
    if (rc == 0)
        rc = eng_pg_load_content(b->conn, NULL, b->cache, err);
    if (rc == 0)
        rc = open_resume(b, err);
    if (rc != 0)
        return rc;
    warn_without_index(b);
    rc = count_range(b, err);
    if (rc != 0)
        return rc;
    eng_info("msg=\"backfill starting\" start=\"%s\" end=\"%s\" events=%" PRIu64 " resumed=%s "
             "after_ts=\"%s\"",
             b->start, b->end, b->stats->total, b->stats->resumed ? "yes" : "no",
             b->stats->resumed ? b->after.ts : "");
    b->started_us = eng_clock_mono_us();
    return 0;
}

enum page_outcome { PAGE_MORE, PAGE_LAST, PAGE_STOPPED, PAGE_FAILED };

/* Reads, enriches and submits the next page (a failed read is retried after a backoff). */
static enum page_outcome next_page(struct backfill *b, struct eng_backoff *bo,
                                   struct eng_error *err)
{
    PGresult *r = NULL;
    if (b->in_flight || send_page(b, &b->after, err) == 0)
        r = recv_page(b, err);
    if (r == NULL) {
        if (!err->retriable)
            return PAGE_FAILED;
        reconnect_later(b, bo, err->msg);
        return PAGE_MORE;
    }
    eng_backoff_reset(bo);
    int n = PQntuples(r);
    if (n == 0) {
        PQclear(r);
        return PAGE_LAST;
    }
    struct page_key key;
    snprintf(key.ts, sizeof(key.ts), "%s", PQgetvalue(r, n - 1, ENG_COL_EVENT_TS));
    snprintf(key.id, sizeof(key.id), "%s", PQgetvalue(r, n - 1, ENG_COL_EVENT_ID));
    /* The next page is read meanwhile; a failure to send shows when it is read. */
    struct eng_error serr;
    if ((uint32_t)n == b->opt->page_events && send_page(b, &key, &serr) != 0)
        b->in_flight = false;
    struct eng_batch *batch = NULL;
    int rc = page_batch(b, r, &batch, err);
    PQclear(r);
    if (rc != 0)
        return PAGE_FAILED;
    if (submit_page(b, batch, &key) != 0)
        return PAGE_STOPPED;
    return (uint32_t)n < b->opt->page_events ? PAGE_LAST : PAGE_MORE;
}

int eng_backfill_run(const struct eng_backfill_options *opt, struct eng_pipeline *p,
                     volatile sig_atomic_t *stop, struct eng_backfill_stats *stats,
                     struct eng_error *err)
{
    /* Before every row: no event_id is the smallest bigint (bigserial starts at 1). */
    struct backfill b = {.opt = opt,
                         .p = p,
                         .stop = stop,
                         .stats = stats,
                         .after = {"-infinity", "-9223372036854775808"}};
    const struct eng_checkpoint_ops cp_ops = {cp_durable, cp_save, cp_ack, &b};
    eng_checkpoint_init(&b.cp, &cp_ops, 0);
    struct eng_backoff bo;
    memset(stats, 0, sizeof(*stats));
    eng_backoff_init(&bo, 200000, 10000000, (uint64_t)eng_clock_mono_us());
    b.cache = eng_content_cache_create();
    int rc = start_backfill(&b, err);
    if (rc != 0)
        goto out;

    enum page_outcome o = PAGE_MORE;
    while (!*stop && o == PAGE_MORE)
        o = next_page(&b, &bo, err);
    if (o == PAGE_FAILED) {
        rc = err->code;
        goto out;
    }
    bool durable = drain(&b);
    show_progress(&b, true);
    if (o == PAGE_LAST && durable) {
        if (opt->state_dir != NULL)
            unlink(b.state_path); /* done: a second run starts over */
        rc = 0;
    } else if (eng_pipeline_failed(b.p, err)) {
        rc = ENG_EFATAL; /* a sink failed for good: err says which and why */
    } else {
        rc = eng_error_set(err, ENG_ESTOPPED, false,
                           "backfill stopped; run the same command again to resume");
    }
out:
    PQfinish(b.conn);
    eng_content_cache_destroy(b.cache);
    free(b.pending);
    return rc;
}
