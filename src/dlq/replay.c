/* The dead-letter replay engine (replay.h).
 *
 * Rows are replayed in id order, a round (one write) at a time. The HTTP sink cut a write's
 * events into requests of request_size from the first; the rows one write parked share its
 * source position, and a round puts them into requests the same way: a new position starts
 * only where a request ends (the previous position's rows fill whole requests), and rounds
 * are cut at multiples of request_size. So parked events go out in the same requests, with
 * the same keys, as when the sink sent them (when the rows of every request of that write
 * are pending).
 *
 * Rows that still fail are re-parked onto their own rows (reason, last status and attempts
 * of the replay, parked_at = now()) and stay pending; rows the API acknowledged with a 2xx
 * are marked replayed. To know which is which, the writer parks what it cannot deliver in
 * the scratch table. Rows the API rejects (4xx but 408 and 429) do not stop the replay. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/buf.h"
#include "replay.h"

#define ROUND_EVENTS   1000
#define REASON_PREFIX  "replay: "
#define MAX_REASON_LEN 300

/* One replay: the options, the totals, and where the scan is. */
struct replay {
    struct eng_dlq *q;
    const struct eng_dlq_replay_options *opt;
    struct eng_dlq_replay_totals *t;
    bool *ids_seen;          /* parallel to opt->ids */
    uint32_t cap;            /* events per round: a multiple of the request size */
    int64_t after;           /* the last row consumed so far */
    int64_t left;            /* rows the limit still allows */
    int64_t round_retriable; /* failures of the last round that may pass on their own */
    int status;
};

/* One row taken into a round; rows[i] carries batch->events[i]. */
struct round_row {
    int64_t id;
    char *position;
    bool failed;
    char *reason; /* set when failed */
    int last_status, attempts;
};

struct round {
    struct replay *rp;
    uint32_t group_start; /* index of the first row of the current position */
    struct eng_batch *batch;
    struct round_row *rows;
    int64_t last_id;  /* the last row consumed (taken or refused) */
    int64_t consumed; /* rows consumed */
};

static void say(const struct replay *rp, const char *fmt, ...) ENG_PRINTF(2, 3);

static void say(const struct replay *rp, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    rp->opt->say(rp->opt->say_ctx, line);
}

static void mark_seen(struct replay *rp, int64_t id)
{
    for (size_t i = 0; i < rp->opt->nids; i++) {
        if (rp->opt->ids[i] == id)
            rp->ids_seen[i] = true;
    }
}

/* Why a dead-letter row of this origin is not something replay can send to the API. */
static const char *not_replayable_why(const char *origin)
{
    if (strcmp(origin, "source") == 0 || strcmp(origin, "backfill") == 0)
        return "bad input, not an event: fix the row at the source";
    if (strcmp(origin, ENG_DLQ_OUTBOX) == 0)
        return "it is in the HTTP sink's outbox, which engage run sends by itself";
    if (strcmp(origin, "clickhouse") == 0 || strcmp(origin, "redis") == 0)
        return "that sink refused the event for good (see its reason): fix the sink (its "
               "column or key), then backfill the event's time with --sinks set to it and "
               "discard the row";
    return "no event payload";
}

/* The origin whose rows are sent: the dead letters of the HTTP sink, or its outbox. */
static const char *replayed_origin(const struct eng_dlq_replay_options *opt)
{
    return opt->origin != NULL ? opt->origin : "http";
}

/* Appends the row's event to the round's batch. */
static void take_row(struct round *rr, const struct eng_dlq_row *r)
{
    struct eng_batch *b = rr->batch;
    struct eng_event *e = eng_batch_push(b);
    e->event_id = r->event_id;
    e->json.off = (uint32_t)b->jsonl.len;
    e->json.len = (uint32_t)r->payload_len;
    eng_buf_append(&b->jsonl, r->payload, r->payload_len);
    eng_buf_putc(&b->jsonl, '\n');
    struct round_row *row = &rr->rows[b->n - 1];
    memset(row, 0, sizeof(*row));
    row->id = r->id;
    row->position = eng_strdup(r->position);
}

/* Scan callback: takes rows into the round until it is full or the position changes. */
static bool gather(const struct eng_dlq_row *r, void *ctx)
{
    struct round *rr = ctx;
    struct eng_batch *b = rr->batch;
    bool http = strcmp(r->origin, replayed_origin(rr->rp->opt)) == 0 && r->event_id >= 0 &&
                r->payload_len > 0;
    if (http && b->n > 0 && strcmp(rr->rows[b->n - 1].position, r->position) != 0) {
        /* A new position: in this round only if the last one's rows fill whole requests. */
        if ((b->n - rr->group_start) % rr->rp->opt->request_size != 0)
            return false; /* not consumed: the next round starts here */
        rr->group_start = b->n;
    }
    rr->last_id = r->id;
    rr->consumed++;
    mark_seen(rr->rp, r->id);
    if (!http) {
        say(rr->rp, "row %lld (origin %s) is not replayed: %s", (long long)r->id, r->origin,
            not_replayable_why(r->origin));
        rr->rp->t->refused++;
        return true;
    }
    take_row(rr, r);
    return b->n < rr->rp->cap && !eng_batch_full(b);
}

/* Scan callback over the scratch table: what the writer could not deliver this round. */
static bool collect_failed(const struct eng_dlq_row *r, void *ctx)
{
    struct round *rr = ctx;
    for (uint32_t i = 0; i < rr->batch->n; i++) {
        struct round_row *row = &rr->rows[i];
        if (rr->batch->events[i].event_id != r->event_id || row->failed)
            continue;
        row->failed = true;
        row->reason = eng_strndup(r->reason, strnlen(r->reason, MAX_REASON_LEN));
        row->last_status = r->last_status;
        row->attempts = r->attempts;
    }
    return true;
}

static void round_free(struct round *rr)
{
    for (uint32_t i = 0; rr->batch != NULL && i < rr->batch->n; i++) {
        free(rr->rows[i].position);
        free(rr->rows[i].reason);
    }
    eng_batch_release(rr->batch);
    rr->batch = NULL;
    free(rr->rows);
    rr->rows = NULL;
}

/* The writer parks at once what the API rejected (4xx but 408 and 429); the rest was retried
 * until the budget ran out. */
static bool retriable_status(int status)
{
    return status == 0 || status == 408 || status == 429 || status >= 500;
}

/* The rows of one round, sorted out: those delivered, and the dead-letter items that re-park
 * the others on themselves. */
struct settlement {
    int64_t *ok_ids;
    size_t nok;
    struct eng_dlq_item *items;
    char **reasons;
    uint32_t nfailed;
    int64_t *moved_ids; /* failed rows parked under failed_origin: done in their own origin */
};

static void sort_out(struct round *rr, struct settlement *st)
{
    uint32_t n = rr->batch->n;
    st->ok_ids = eng_calloc(n, sizeof(*st->ok_ids));
    st->items = eng_calloc(n, sizeof(*st->items));
    st->reasons = eng_calloc(n, sizeof(*st->reasons));
    st->moved_ids = eng_calloc(n, sizeof(*st->moved_ids));
    const char *failed_origin = rr->rp->opt->failed_origin;
    for (uint32_t i = 0; i < n; i++) {
        struct round_row *row = &rr->rows[i];
        if (!row->failed) {
            st->ok_ids[st->nok++] = row->id;
            continue;
        }
        size_t len = strlen(REASON_PREFIX) + strlen(row->reason) + 1;
        char *reason = st->reasons[st->nfailed] = eng_malloc(len);
        snprintf(reason, len, "%s%s", REASON_PREFIX, row->reason);
        const struct eng_event *e = &rr->batch->events[i];
        st->moved_ids[st->nfailed] = row->id;
        st->items[st->nfailed++] = (struct eng_dlq_item){
            .origin = failed_origin != NULL ? failed_origin : "http",
            .position = row->position,
            .event_id = e->event_id,
            .reason = reason,
            .last_status = row->last_status,
            .attempts = row->attempts,
            .payload = eng_batch_json(rr->batch, e),
            .payload_len = e->json.len,
        };
        rr->rp->round_retriable += retriable_status(row->last_status);
    }
}

static void settlement_free(struct settlement *st)
{
    for (uint32_t i = 0; i < st->nfailed; i++)
        free(st->reasons[i]);
    free(st->reasons);
    free(st->items);
    free(st->ok_ids);
    free(st->moved_ids);
}

/* Settles one round after the write: reads what the writer parked in the scratch table,
 * re-parks those rows on themselves in the dead-letter table and marks the rest replayed.
 * Returns 0 or -1 (said why). */
static int settle_round(struct round *rr)
{
    struct replay *rp = rr->rp;
    struct eng_error err;
    struct eng_dlq_filter sf = {.pending_only = true};
    if (eng_dlq_scan(rp->opt->scratch, &sf, collect_failed, rr, &err) < 0) {
        say(rp, "could not read what failed: %s", err.msg);
        return -1;
    }
    rp->round_retriable = 0;
    struct settlement st = {0};
    sort_out(rr, &st);
    int rc = 0;
    /* Failed rows first: parking the same (origin, position, event_id) updates the row. */
    if (st.nfailed > 0 && eng_dlq_park(rp->q, st.items, st.nfailed, &err) != 0) {
        say(rp, "could not record the failures: %s", err.msg);
        rc = -1;
    }
    /* Moved to another origin: the rows they came from are done (the outbox row of an event
     * that became a dead letter). */
    if (rc == 0 && st.nfailed > 0 && rp->opt->failed_origin != NULL &&
        eng_dlq_mark_replayed(rp->q, st.moved_ids, st.nfailed, &err) != 0) {
        say(rp, "could not mark the rows moved: %s", err.msg);
        rc = -1;
    }
    if (rc == 0 && eng_dlq_mark_replayed(rp->q, st.ok_ids, st.nok, &err) != 0) {
        say(rp, "delivered %zu events but could not mark them: %s", st.nok, err.msg);
        rc = -1;
    }
    if (rc == 0 && st.nfailed > 0)
        say(rp, "%u events of position %s still fail (%s)", st.nfailed, st.items[0].position,
            st.items[0].reason);
    if (rc == 0) {
        rp->t->replayed += (int64_t)st.nok;
        rp->t->failed += st.nfailed;
    }
    settlement_free(&st);
    return rc;
}

static bool collect_scratch_id(const struct eng_dlq_row *r, void *ctx)
{
    struct eng_buf *ids = ctx;
    eng_buf_append(ids, &r->id, sizeof(r->id));
    return true;
}

/* Marks every pending scratch row read (replayed), so the next round sees only its own. */
static int clear_scratch(struct replay *rp)
{
    struct eng_error err;
    struct eng_buf ids = {0};
    struct eng_dlq_filter sf = {.pending_only = true};
    int rc = eng_dlq_scan(rp->opt->scratch, &sf, collect_scratch_id, &ids, &err) < 0 ? -1 : 0;
    if (rc == 0 && ids.len > 0)
        rc = eng_dlq_mark_replayed(rp->opt->scratch, (const int64_t *)(void *)ids.data,
                                   ids.len / sizeof(int64_t), &err);
    if (rc != 0)
        say(rp, "scratch table: %s", err.msg);
    eng_buf_free(&ids);
    return rc;
}

/* Writes the round's batch and settles it; sets rp->status when something failed. */
static void write_round(struct replay *rp, struct round *rr, uint64_t round_no)
{
    struct eng_error err;
    rr->batch->position = round_no; /* scratch rows of one round, apart from others */
    if (rp->opt->write(rp->opt->write_ctx, rr->batch, &err) != 0) {
        /* Not even parked in the scratch table: nothing is known delivered. */
        say(rp, "%s; %u events stay pending", err.msg, rr->batch->n);
        rp->t->failed += rr->batch->n;
        rp->status = 1;
        return;
    }
    int64_t before = rp->t->replayed;
    if (settle_round(rr) != 0 || clear_scratch(rp) != 0) {
        rp->status = 1;
    } else if (rp->t->replayed == before && rp->round_retriable > 0) {
        say(rp, "nothing of this round was delivered; stopping (run it again once the API "
                "takes events)");
        rp->status = 1;
    }
}

/* Gathers, writes and settles one round. Returns whether another round should follow. */
static bool replay_round(struct replay *rp, uint64_t round_no)
{
    const struct eng_dlq_replay_options *opt = rp->opt;
    struct eng_error err;
    struct round rr = {.rp = rp,
                       .batch = eng_batch_create(rp->cap),
                       .rows = eng_calloc(rp->cap, sizeof(struct round_row))};
    /* Without ids only http rows are candidates; with ids every row asked for is looked at,
     * so that a source row is refused out loud rather than skipped. */
    struct eng_dlq_filter f = {.origin = opt->ids ? opt->origin : replayed_origin(opt),
                               .ids = opt->ids,
                               .nids = opt->nids,
                               .pending_only = true,
                               .after_id = rp->after,
                               .limit = opt->limit > 0 && rp->left < rp->cap ? rp->left : rp->cap};
    int64_t seen = eng_dlq_scan(rp->q, &f, gather, &rr, &err);
    if (seen < 0) {
        say(rp, "%s", err.msg);
        rp->status = 1;
    } else if (rr.batch->n > 0) {
        write_round(rp, &rr, round_no);
    }
    rp->after = rr.last_id;
    rp->left -= rr.consumed;
    rp->t->complete = rp->status == 0 && (seen == 0 || rr.consumed == 0);
    round_free(&rr);
    return !rp->t->complete && rp->status == 0 && !(opt->limit > 0 && rp->left <= 0);
}

/* Says which of the requested rows were not seen pending; returns how many. */
static int64_t count_missing(const struct replay *rp)
{
    int64_t missing = 0;
    for (size_t i = 0; i < rp->opt->nids; i++) {
        if (!rp->ids_seen[i]) {
            say(rp, "row %lld is not pending (no such row, or already replayed)",
                (long long)rp->opt->ids[i]);
            missing++;
        }
    }
    return missing;
}

int eng_dlq_replay(struct eng_dlq *q, const struct eng_dlq_replay_options *opt,
                   struct eng_dlq_replay_totals *t)
{
    memset(t, 0, sizeof(*t));
    uint32_t size = opt->request_size;
    /* Cut rounds at multiples of the request size, so requests fall where the sink cut them. */
    struct replay rp = {.q = q,
                        .opt = opt,
                        .t = t,
                        .ids_seen = opt->nids ? eng_calloc(opt->nids, sizeof(bool)) : NULL,
                        .cap = size * (ROUND_EVENTS / size > 0 ? ROUND_EVENTS / size : 1),
                        .left = opt->limit};
    uint64_t round_no = 1;
    while (replay_round(&rp, round_no))
        round_no++;
    if (t->complete)
        t->missing = count_missing(&rp);
    if (t->failed > 0 || t->refused > 0 || t->missing > 0)
        rp.status = 1;
    free(rp.ids_seen);
    return rp.status;
}
