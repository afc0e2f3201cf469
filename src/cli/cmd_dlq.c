/* engage dlq: list, replay and discard what the dead-letter table holds.
 *
 * Replay goes through the HTTP sink itself (eng_http_sink_create), so requests, keys and
 * retries are the sink's: the same --http-* options (flags, ENGAGE_* variables, config file,
 * with `engage run`'s defaults) give the same Idempotency-Key derivation. Rows are replayed
 * in id order, a round (one write) at a time. The sink cut a write's events into requests of
 * --http-batch from the first; the rows one write parked share its source position, and a
 * round puts them into requests the same way: a new position starts only where a request
 * ends (the previous position's rows fill whole requests), and rounds are cut at multiples
 * of --http-batch. So parked events go out in the same requests, with the same keys, as
 * when the sink sent them (when the rows of every request of that write are pending).
 *
 * Rows that still fail are re-parked onto their own rows (reason, last status and attempts
 * of the replay, parked_at = now()) and stay pending; rows the API acknowledged with a 2xx
 * are marked replayed. To know which is which, the sink parks what it cannot deliver in a
 * scratch dead-letter table of its own, a temporary table of the replay's session
 * (pg_temp.engage_dlq_replay): nothing outside the replay sees it, and it goes away with the
 * connection. A round in which nothing was delivered and something failed for a reason that
 * may pass (a timeout, a connection error, 408, 429, 5xx) ends the replay: the API is down
 * or overloaded, and the next rounds would only spend their retry budget too. Rows the API
 * rejects (other 4xx) do not stop it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"
#include "../core/pgtext.h"
#include "../dlq/dlq.h"
#include "../sink/http.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

#define SCRATCH_TABLE  "pg_temp.engage_dlq_replay"
#define ROUND_EVENTS   1000
#define REASON_PREFIX  "replay: "
#define MAX_REASON_LEN 300

static const char list_usage[] =
    "usage: engage dlq list [--pg CONNINFO] [--dlq-table T] [--origin O] [--pending | --all]\n"
    "                       [--ids 1,2,...] [--limit N] [--json]\n"
    "\n"
    "Shows the dead-letter rows, oldest first, one line each: id, parked at (UTC), origin,\n"
    "source position, event id, last HTTP status, attempts, reason. Origins: http (the API did\n"
    "not take the event), source (a streamed row that is not an event), backfill (a row a\n"
    "backfill read that is not an event), clickhouse or redis (an event that sink refuses for\n"
    "good). Replayed and discarded rows are marked.\n"
    "\n"
    "  --pg CONNINFO   libpq conninfo or URI (ENGAGE_PG)\n"
    "  --dlq-table T   the table (ENGAGE_DLQ_TABLE, default engage_dlq)\n"
    "  --origin O      only rows of origin O (http, source, backfill, clickhouse, redis)\n"
    "  --pending       only rows neither replayed nor discarded (the default)\n"
    "  --all           every row, replayed, discarded or not\n"
    "  --ids LIST      only these row ids\n"
    "  --limit N       at most N rows\n"
    "  --json          one JSON object per line, with the payload\n"
    "  --config FILE   `name = value` lines using the long option names (ENGAGE_CONFIG)\n";

static const char replay_usage[] =
    "usage: engage dlq replay [--pg CONNINFO] [--dlq-table T] [--http URL] [--ids 1,2,...]\n"
    "                         [--origin http] [--limit N] [--http-batch N] [...]\n"
    "\n"
    "Re-sends pending rows of origin http (their payload is the enriched event) to the API,\n"
    "through the HTTP sink: same requests, Idempotency-Key and retries as `engage run` with the\n"
    "same --http-* options. A row is marked replayed once the API answered 2xx for it. A row\n"
    "that still fails is re-parked on itself (new reason, status, attempts) and stays pending;\n"
    "the replay stops after a round in which nothing could be delivered. Rows of origin source\n"
    "(bad input) are not events the API can take: they are refused, never sent.\n"
    "Prints what it did; exits 0 when every selected row was delivered, 1 when some were not\n"
    "(failed, refused or not found), 2 on a usage error.\n"
    "\n"
    "  --pg CONNINFO          libpq conninfo or URI (ENGAGE_PG)\n"
    "  --http URL             base URL of the API (ENGAGE_HTTP)\n"
    "  --dlq-table T          the table (ENGAGE_DLQ_TABLE, default engage_dlq)\n"
    "  --ids LIST             only these row ids (default: every pending http row)\n"
    "  --origin http          the only origin that can be replayed\n"
    "  --limit N              at most N rows\n"
    "  --http-batch N         events per request, as for run (default 100)\n"
    "  --http-timeout-ms N    per-request timeout (default 5000)\n"
    "  --http-max-attempts N  attempts per request (default 8)\n"
    "  --http-retry-budget-ms N  longest one round may retry (default 60000)\n"
    "  --http-inflight N      concurrent requests (default 4)\n"
    "  --http-token-file F    bearer token file (or ENGAGE_HTTP_TOKEN); never printed\n"
    "  --config FILE          `name = value` lines using the long option names\n";

static const char discard_usage[] =
    "usage: engage dlq discard [--pg CONNINFO] [--dlq-table T] (--ids 1,2,... | --origin O)\n"
    "\n"
    "Marks pending rows discarded: the decision that they will never be delivered (a bad row\n"
    "fixed at the source, an event the API will never take). They stay in the table, shown by\n"
    "`engage dlq list --all`, and no longer count as pending, so `engage status` is well again.\n"
    "Parking the same event again makes its row pending again. Needs --ids, --origin or both\n"
    "(all the pending rows of that origin). Prints how many rows it discarded; exits 0, or 1\n"
    "when one of --ids was not a pending row, 2 on a usage error.\n"
    "\n"
    "  --pg CONNINFO   libpq conninfo or URI (ENGAGE_PG)\n"
    "  --dlq-table T   the table (ENGAGE_DLQ_TABLE, default engage_dlq)\n"
    "  --ids LIST      these row ids\n"
    "  --origin O      the rows of origin O (http, source, backfill, clickhouse, redis)\n"
    "  --config FILE   `name = value` lines using the long option names (ENGAGE_CONFIG)\n";

static const char dlq_usage[] =
    "usage: engage dlq list    [OPTIONS]   show the dead-letter rows\n"
    "       engage dlq replay  [OPTIONS]   re-send parked HTTP events to the API\n"
    "       engage dlq discard [OPTIONS]   give up on rows for good (they stop counting)\n"
    "\n"
    "`engage dlq list --help`, `engage dlq replay --help` and `engage dlq discard --help`\n"
    "describe the options.\n";

/* The options only dlq takes; the shared ones (--pg, --http, --http-*, --dlq-table, --config)
 * go through options.h, with the environment and the config file. */
struct dlq_args {
    const char *origin, *ids_text, *limit_text;
    bool all, pending, json;
    int64_t limit;
    int64_t *ids;
    size_t nids;
};

static bool parse_ids(struct dlq_args *a)
{
    const char *p = a->ids_text;
    size_t cap = 1;
    for (const char *c = p; *c; c++)
        cap += *c == ',';
    a->ids = eng_calloc(cap, sizeof(*a->ids));
    while (*p) {
        size_t n = strcspn(p, ",");
        if (!eng_parse_i64(p, n, &a->ids[a->nids]) || a->ids[a->nids] <= 0) {
            fprintf(stderr, "engage dlq: --ids takes row ids like 1,2,3, not \"%s\"\n",
                    a->ids_text);
            return false;
        }
        a->nids++;
        p += n;
        if (*p == ',')
            p++;
    }
    if (a->nids == 0) {
        fprintf(stderr, "engage dlq: --ids needs at least one row id\n");
        return false;
    }
    return true;
}

/* Takes dlq's own options out of argv (compacting it in place, *argc updated), so that what
 * is left can go to eng_options_parse. Returns false on a usage error (message printed). */
static bool take_own_options(int *argc, char **argv, struct dlq_args *a)
{
    static const struct {
        const char *name;
        bool has_arg;
    } own[] = {{"origin", true}, {"ids", true},      {"limit", true},
               {"all", false},   {"pending", false}, {"json", false}};
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            while (i < *argc)
                argv[out++] = argv[i++];
            break;
        }
        int which = -1;
        const char *value = NULL;
        for (size_t k = 0; k < sizeof(own) / sizeof(own[0]) && arg[0] == '-' && arg[1] == '-';
             k++) {
            size_t n = strlen(own[k].name);
            if (strncmp(arg + 2, own[k].name, n) != 0)
                continue;
            if (arg[2 + n] == '\0' || (arg[2 + n] == '=' && own[k].has_arg)) {
                which = (int)k;
                value = arg[2 + n] == '=' ? arg + 3 + n : NULL;
                break;
            }
        }
        if (which < 0) {
            argv[out++] = argv[i];
            continue;
        }
        if (own[which].has_arg && value == NULL) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "engage dlq: --%s needs a value\n", own[which].name);
                return false;
            }
            value = argv[++i];
        }
        switch (which) {
        case 0:
            a->origin = value;
            break;
        case 1:
            a->ids_text = value;
            break;
        case 2:
            a->limit_text = value;
            break;
        case 3:
            a->all = true;
            break;
        case 4:
            a->pending = true;
            break;
        default:
            a->json = true;
            break;
        }
    }
    argv[out] = NULL;
    *argc = out;
    if (a->all && a->pending) {
        fprintf(stderr, "engage dlq: --all and --pending exclude each other\n");
        return false;
    }
    if (a->limit_text != NULL &&
        (!eng_parse_i64(a->limit_text, strlen(a->limit_text), &a->limit) || a->limit < 1)) {
        fprintf(stderr, "engage dlq: --limit must be an integer >= 1, not \"%s\"\n", a->limit_text);
        return false;
    }
    if (a->ids_text != NULL && !parse_ids(a))
        return false;
    return true;
}

/* ---- list ------------------------------------------------------------------------------- */

static void put_json_field(struct eng_buf *b, const char *key, const char *v, size_t n)
{
    eng_buf_printf(b, ",\"%s\":", key);
    eng_buf_put_json_str(b, v, n);
}

static bool print_row(const struct eng_dlq_row *r, void *ctx)
{
    const struct dlq_args *a = ctx;
    if (a->json) {
        struct eng_buf b = {0};
        eng_buf_printf(&b, "{\"id\":%lld", (long long)r->id);
        put_json_field(&b, "parked_at", r->parked_at, strlen(r->parked_at));
        put_json_field(&b, "origin", r->origin, strlen(r->origin));
        put_json_field(&b, "position", r->position, strlen(r->position));
        if (r->event_id >= 0)
            eng_buf_printf(&b, ",\"event_id\":%lld", (long long)r->event_id);
        else
            eng_buf_puts(&b, ",\"event_id\":null");
        eng_buf_printf(&b, ",\"last_status\":%d,\"attempts\":%d,\"replayed\":%s,\"discarded\":%s",
                       r->last_status, r->attempts, r->replayed ? "true" : "false",
                       r->discarded ? "true" : "false");
        put_json_field(&b, "reason", r->reason, strlen(r->reason));
        put_json_field(&b, "payload", r->payload, r->payload_len);
        eng_buf_puts(&b, "}\n");
        fwrite(b.data, 1, b.len, stdout);
        eng_buf_free(&b);
    } else {
        char ev[24] = "-";
        if (r->event_id >= 0)
            snprintf(ev, sizeof(ev), "%lld", (long long)r->event_id);
        printf("%-8lld %s  %-6s %-12s %-10s %3d %3d%s  %s\n", (long long)r->id, r->parked_at,
               r->origin, r->position, ev, r->last_status, r->attempts,
               r->replayed ? " replayed" : r->discarded ? " discarded" : "", r->reason);
    }
    return true;
}

static int cmd_list(const struct dlq_args *a, struct eng_dlq *q)
{
    struct eng_error err;
    struct eng_dlq_filter f = {.origin = a->origin,
                               .ids = a->ids,
                               .nids = a->nids,
                               .pending_only = !a->all,
                               .limit = a->limit};
    if (!a->json)
        printf("%-8s %-19s  %-6s %-12s %-10s %3s %3s  %s\n", "id", "parked_at (UTC)", "origin",
               "position", "event_id", "st", "att", "reason");
    if (eng_dlq_scan(q, &f, print_row, (void *)a, &err) < 0) {
        fprintf(stderr, "engage dlq list: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* ---- discard ---------------------------------------------------------------------------- */

struct id_list {
    int64_t *v;
    size_t n, cap;
};

static bool collect_id(const struct eng_dlq_row *r, void *ctx)
{
    struct id_list *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = eng_realloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n++] = r->id;
    return true;
}

static int cmd_discard(const struct dlq_args *a, struct eng_dlq *q)
{
    if (a->ids == NULL && a->origin == NULL) {
        fprintf(stderr, "engage dlq discard: name the rows with --ids, --origin or both\n\n%s",
                discard_usage);
        return 2;
    }
    if (a->all) {
        fprintf(stderr, "engage dlq discard: only pending rows can be discarded (no --all)\n");
        return 2;
    }
    struct eng_error err;
    struct id_list pending = {0};
    struct eng_dlq_filter f = {.origin = a->origin,
                               .ids = a->ids,
                               .nids = a->nids,
                               .pending_only = true,
                               .limit = a->limit};
    int rc = 1;
    if (eng_dlq_scan(q, &f, collect_id, &pending, &err) < 0) {
        fprintf(stderr, "engage dlq discard: %s\n", err.msg);
        goto out;
    }
    int64_t done = eng_dlq_discard(q, pending.v, pending.n, &err);
    if (done < 0) {
        fprintf(stderr, "engage dlq discard: %s\n", err.msg);
        goto out;
    }
    printf("discarded %lld row%s\n", (long long)done, done == 1 ? "" : "s");
    rc = 0;
    /* Every id asked for must have been a pending row (of --origin, when given). */
    for (size_t i = 0; i < a->nids; i++) {
        bool found = false;
        for (size_t k = 0; k < pending.n && !found; k++)
            found = pending.v[k] == a->ids[i];
        if (!found) {
            fprintf(stderr, "engage dlq discard: row %lld is not a pending row%s%s\n",
                    (long long)a->ids[i], a->origin ? " of origin " : "",
                    a->origin ? a->origin : "");
            rc = 1;
        }
    }
    if (done != (int64_t)pending.n)
        rc = 1; /* replayed or discarded by someone else meanwhile */
out:
    free(pending.v);
    return rc;
}

/* ---- replay ----------------------------------------------------------------------------- */

/* One row taken into a round; rows[i] carries batch->events[i]. */
struct round_row {
    int64_t id;
    char *position;
    bool failed;
    char *reason; /* set when failed */
    int last_status, attempts;
};

struct round {
    const struct dlq_args *a;
    uint32_t cap; /* a multiple of the request size */
    uint32_t request_size;
    uint32_t group_start; /* index of the first row of the current position */
    struct eng_batch *batch;
    struct round_row *rows;
    int64_t last_id;  /* the last row consumed (taken or refused) */
    int64_t consumed; /* rows consumed */
    int64_t refused;  /* rows that are not http events */
    bool *ids_seen;   /* parallel to a->ids */
};

static void mark_seen(struct round *rr, int64_t id)
{
    for (size_t i = 0; i < rr->a->nids; i++) {
        if (rr->a->ids[i] == id)
            rr->ids_seen[i] = true;
    }
}

/* Scan callback: takes rows into the round until it is full or the position changes. */

/* Why a dead-letter row of this origin is not something replay can send to the API. */
static const char *not_replayable_why(const char *origin)
{
    if (strcmp(origin, "source") == 0 || strcmp(origin, "backfill") == 0)
        return "bad input, not an event: fix the row at the source";
    if (strcmp(origin, "clickhouse") == 0 || strcmp(origin, "redis") == 0)
        return "that sink refused the event for good (see its reason): fix the sink (its "
               "column or key), then backfill the event's time with --sinks set to it and "
               "discard the row";
    return "no event payload";
}
static bool gather(const struct eng_dlq_row *r, void *ctx)
{
    struct round *rr = ctx;
    struct eng_batch *b = rr->batch;
    bool http = strcmp(r->origin, "http") == 0 && r->event_id >= 0 && r->payload_len > 0;
    if (http && b->n > 0 && strcmp(rr->rows[b->n - 1].position, r->position) != 0) {
        /* A new position: in this round only if the last one's rows fill whole requests. */
        if ((b->n - rr->group_start) % rr->request_size != 0)
            return false; /* not consumed: the next round starts here */
        rr->group_start = b->n;
    }
    rr->last_id = r->id;
    rr->consumed++;
    mark_seen(rr, r->id);
    if (!http) {
        fprintf(stderr,
                "engage dlq replay: row %lld (origin %s) is not replayed: %s\n",
                (long long)r->id, r->origin, not_replayable_why(r->origin));
        rr->refused++;
        return true;
    }
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
    return b->n < rr->cap && !eng_batch_full(b);
}

/* Scan callback over the scratch table: what the sink could not deliver this round. */
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
}

struct replay_totals {
    int64_t replayed, failed, refused;
    int64_t round_retriable; /* failures of the last round that may pass on their own */
};

/* The sink parks at once what the API rejected (4xx but 408 and 429); the rest was retried
 * until the budget ran out. */
static bool retriable_status(int status)
{
    return status == 0 || status == 408 || status == 429 || status >= 500;
}

/* Settles one round after the sink's write: reads what it parked in the scratch table,
 * re-parks those rows on themselves in the dead-letter table and marks the rest replayed.
 * Returns 0 or -1 (message printed). */
static int settle_round(struct round *rr, struct eng_dlq *q, struct eng_dlq *scratch,
                        struct replay_totals *t)
{
    struct eng_error err;
    struct eng_dlq_filter sf = {.pending_only = true};
    if (eng_dlq_scan(scratch, &sf, collect_failed, rr, &err) < 0) {
        fprintf(stderr, "engage dlq replay: could not read what failed: %s\n", err.msg);
        return -1;
    }
    uint32_t n = rr->batch->n, nfailed = 0;
    t->round_retriable = 0;
    int64_t *ok_ids = eng_calloc(n, sizeof(*ok_ids));
    struct eng_dlq_item *items = eng_calloc(n, sizeof(*items));
    char **reasons = eng_calloc(n, sizeof(*reasons));
    size_t nok = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct round_row *row = &rr->rows[i];
        if (!row->failed) {
            ok_ids[nok++] = row->id;
            continue;
        }
        size_t len = strlen(REASON_PREFIX) + strlen(row->reason) + 1;
        reasons[nfailed] = eng_malloc(len);
        snprintf(reasons[nfailed], len, "%s%s", REASON_PREFIX, row->reason);
        struct eng_dlq_item *it = &items[nfailed];
        const struct eng_event *e = &rr->batch->events[i];
        it->origin = "http";
        it->position = row->position;
        it->event_id = e->event_id;
        it->reason = reasons[nfailed];
        it->last_status = row->last_status;
        it->attempts = row->attempts;
        it->payload = eng_batch_json(rr->batch, e);
        it->payload_len = e->json.len;
        nfailed++;
        t->round_retriable += retriable_status(row->last_status);
    }
    int rc = 0;
    /* Failed rows first: parking the same (origin, position, event_id) updates the row. */
    if (nfailed > 0 && eng_dlq_park(q, items, nfailed, &err) != 0) {
        fprintf(stderr, "engage dlq replay: could not record the failures: %s\n", err.msg);
        rc = -1;
    }
    if (rc == 0 && eng_dlq_mark_replayed(q, ok_ids, nok, &err) != 0) {
        fprintf(stderr, "engage dlq replay: delivered %zu events but could not mark them: %s\n",
                nok, err.msg);
        rc = -1;
    }
    if (rc == 0 && nfailed > 0) {
        fprintf(stderr, "engage dlq replay: %u events of position %s still fail (%s)\n", nfailed,
                items[0].position, items[0].reason);
    }
    if (rc == 0) {
        t->replayed += (int64_t)nok;
        t->failed += nfailed;
    }
    for (uint32_t i = 0; i < nfailed; i++)
        free(reasons[i]);
    free(reasons);
    free(items);
    free(ok_ids);
    return rc;
}

static bool collect_scratch_id(const struct eng_dlq_row *r, void *ctx)
{
    struct eng_buf *ids = ctx;
    eng_buf_append(ids, &r->id, sizeof(r->id));
    return true;
}

/* Marks every pending scratch row read (replayed), so the next round sees only its own. */
static int clear_scratch(struct eng_dlq *scratch)
{
    struct eng_error err;
    struct eng_buf ids = {0};
    struct eng_dlq_filter sf = {.pending_only = true};
    int rc = eng_dlq_scan(scratch, &sf, collect_scratch_id, &ids, &err) < 0 ? -1 : 0;
    if (rc == 0 && ids.len > 0)
        rc = eng_dlq_mark_replayed(scratch, (const int64_t *)(void *)ids.data,
                                   ids.len / sizeof(int64_t), &err);
    if (rc != 0)
        fprintf(stderr, "engage dlq replay: scratch table: %s\n", err.msg);
    eng_buf_free(&ids);
    return rc;
}

static int cmd_replay(const struct dlq_args *a, const struct eng_options *o, struct eng_dlq *q)
{
    struct eng_error err;
    if (a->all || a->json) {
        fprintf(stderr, "engage dlq replay: --all and --json are list options\n");
        return 2;
    }
    if (a->origin != NULL && strcmp(a->origin, "http") != 0) {
        fprintf(stderr,
                "engage dlq replay: only rows of origin \"http\" can be replayed; \"%s\" rows "
                "are not events the API can take (bad input: fix it at the source)\n",
                a->origin);
        return 2;
    }
    if (eng_opt(o, OPT_HTTP) == NULL) {
        fprintf(stderr, "engage dlq replay: --http URL (or ENGAGE_HTTP) is required\n");
        return 2;
    }
    struct eng_http_options hopt;
    if (!eng_cli_http_options(o, &hopt))
        return 2;

    /* The sink parks what still fails in the scratch table, a temporary table of its own
     * session; the rows are then re-parked on themselves in the real table. */
    struct eng_dlq *scratch = eng_dlq_create(eng_opt(o, OPT_PG), SCRATCH_TABLE);
    hopt.dlq = scratch;
    struct eng_sink *sink = eng_http_sink_create(eng_opt(o, OPT_HTTP), &hopt, &err);
    if (sink == NULL) {
        fprintf(stderr, "engage dlq replay: %s\n", err.msg);
        eng_dlq_destroy(scratch);
        return 2;
    }

    struct replay_totals t = {0};
    bool *ids_seen = a->nids ? eng_calloc(a->nids, sizeof(bool)) : NULL;
    /* Cut rounds at multiples of the request size, so requests fall where the sink cut them. */
    uint32_t cap =
        hopt.batch_size * (ROUND_EVENTS / hopt.batch_size > 0 ? ROUND_EVENTS / hopt.batch_size : 1);
    int64_t after = 0, left = a->limit;
    int status = 0;
    bool opened = false, complete = false;
    for (uint64_t round_no = 1;; round_no++) {
        struct round rr = {.a = a,
                           .cap = cap,
                           .request_size = hopt.batch_size,
                           .batch = eng_batch_create(cap),
                           .rows = eng_calloc(cap, sizeof(struct round_row)),
                           .ids_seen = ids_seen};
        /* Without --ids only http rows are candidates; with --ids every row asked for is
         * looked at, so that a source row is refused out loud rather than skipped. */
        struct eng_dlq_filter f = {.origin = a->ids ? a->origin : "http",
                                   .ids = a->ids,
                                   .nids = a->nids,
                                   .pending_only = true,
                                   .after_id = after,
                                   .limit = a->limit > 0 && left < cap ? left : cap};
        int64_t seen = eng_dlq_scan(q, &f, gather, &rr, &err);
        t.refused += rr.refused;
        if (seen < 0) {
            fprintf(stderr, "engage dlq replay: %s\n", err.msg);
            status = 1;
        } else if (rr.batch->n > 0) {
            rr.batch->position = round_no; /* scratch rows of one round, apart from others */
            int rc = 0;
            if (!opened) {
                rc = eng_sink_open(sink, &err);
                opened = rc == 0;
            }
            if (rc == 0)
                rc = eng_sink_write(sink, rr.batch, &err);
            if (rc != 0) {
                /* Not even parked in the scratch table: nothing is known delivered. */
                fprintf(stderr, "engage dlq replay: %s; %u events stay pending\n", err.msg,
                        rr.batch->n);
                t.failed += rr.batch->n;
                status = 1;
            } else {
                int64_t before = t.replayed;
                if (settle_round(&rr, q, scratch, &t) != 0 || clear_scratch(scratch) != 0)
                    status = 1;
                else if (t.replayed == before && t.round_retriable > 0) {
                    fprintf(stderr, "engage dlq replay: nothing of this round was delivered; "
                                    "stopping (run it again once the API takes events)\n");
                    status = 1;
                }
            }
        }
        after = rr.last_id;
        left -= rr.consumed;
        complete = status == 0 && (seen == 0 || rr.consumed == 0);
        bool more = !complete && status == 0 && !(a->limit > 0 && left <= 0);
        round_free(&rr);
        free(rr.rows);
        if (!more)
            break;
    }
    int64_t missing = 0;
    for (size_t i = 0; complete && i < a->nids; i++) {
        if (!ids_seen[i]) {
            fprintf(stderr,
                    "engage dlq replay: row %lld is not pending (no such row, or "
                    "already replayed)\n",
                    (long long)a->ids[i]);
            missing++;
        }
    }
    printf("replayed %lld events; %lld failed and stay pending; %lld rows refused (not http "
           "events)",
           (long long)t.replayed, (long long)t.failed, (long long)t.refused);
    if (a->nids > 0 && complete)
        printf("; %lld requested rows not pending", (long long)missing);
    printf("\n");
    if (t.failed > 0 || t.refused > 0 || missing > 0)
        status = 1;
    free(ids_seen);
    eng_sink_destroy(sink);
    eng_dlq_destroy(scratch);
    return status;
}

int eng_cmd_dlq(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "list") != 0 && strcmp(argv[1], "replay") != 0 &&
                      strcmp(argv[1], "discard") != 0)) {
        if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                          strcmp(argv[1], "help") == 0)) {
            fputs(dlq_usage, stdout);
            return 0;
        }
        if (argc >= 2)
            fprintf(stderr, "engage dlq: unknown subcommand \"%s\"\n", argv[1]);
        fputs(dlq_usage, stderr);
        return 2;
    }
    bool list = strcmp(argv[1], "list") == 0;
    bool discard = strcmp(argv[1], "discard") == 0;
    const char *usage = list ? list_usage : discard ? discard_usage : replay_usage;
    /* argv + 1 is the subcommand's argv: argv[0] "list" or "replay". A copy, since
     * take_own_options compacts it. */
    int sub_argc = argc - 1;
    char **sub_argv = eng_calloc((size_t)sub_argc + 1, sizeof(char *));
    memcpy(sub_argv, argv + 1, (size_t)sub_argc * sizeof(char *));
    sub_argv[0] = list      ? "engage dlq list" /* for getopt's messages */
                  : discard ? "engage dlq discard"
                            : "engage dlq replay";

    struct dlq_args a;
    memset(&a, 0, sizeof(a));
    struct eng_options o;
    memset(&o, 0, sizeof(o));
    int rc = 2;
    struct eng_dlq *q = NULL;
    if (!take_own_options(&sub_argc, sub_argv, &a)) {
        fputs(usage, stderr);
        goto out;
    }
    int prc = eng_options_parse(&o, sub_argc, sub_argv, usage);
    if (prc != 0) {
        rc = prc > 0 ? 0 : 2;
        goto out;
    }
    if (o.nargs > 0) {
        fprintf(stderr, "engage dlq %s: unexpected argument \"%s\"\n", argv[1], o.args[0]);
        goto out;
    }
    if (eng_opt(&o, OPT_PG) == NULL) {
        fprintf(stderr, "engage dlq %s: --pg CONNINFO (or ENGAGE_PG) is required\n", argv[1]);
        goto out;
    }
    /* The replay prints what it did itself; the sink's own warnings would speak of the
     * scratch table. */
    eng_log_set_level(list || discard ? ENG_LOG_WARN : ENG_LOG_ERROR);
    q = eng_dlq_create(eng_opt(&o, OPT_PG), eng_opt(&o, OPT_DLQ_TABLE));
    rc = list ? cmd_list(&a, q) : discard ? cmd_discard(&a, q) : cmd_replay(&a, &o, q);
out:
    eng_dlq_destroy(q);
    eng_options_free(&o);
    free(a.ids);
    free(sub_argv);
    return rc;
}
