/* engage dlq: list, replay and discard what the dead-letter table holds.
 *
 * Replay goes through the HTTP sink itself (eng_http_sink_create), so requests, keys and
 * retries are the sink's: the same --http-* options (flags, ENGAGE_* variables, config file,
 * with `engage run`'s defaults) give the same Idempotency-Key derivation. The engine that
 * chooses the rows, cuts the rounds and settles them is src/dlq/replay.c; this file gives it
 * the sink as its writer, with the sink parking what it cannot deliver in the engine's
 * scratch table (a temporary table of the replay's session). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"
#include "../core/pgtext.h"
#include "../dlq/dlq.h"
#include "../dlq/replay.h"
#include "../sink/http.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

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
    "  --origin O      only rows of origin O (http, source, backfill, clickhouse, redis,\n"
    "                  kafka; or outbox: events on their way to a slow API, left out\n"
    "                  otherwise)\n"
    "  --pending       only rows neither replayed nor discarded (the default)\n"
    "  --all           every row, replayed, discarded or not\n"
    "  --ids LIST      only these row ids\n"
    "  --limit N       at most N rows\n"
    "  --json          one JSON object per line, with the payload\n"
    "  --config FILE   `name = value` lines using the long option names (ENGAGE_CONFIG)\n";

static const char replay_usage[] =
    "usage: engage dlq replay [--pg CONNINFO] [--dlq-table T] [--http URL] [--ids 1,2,...]\n"
    "                         [--origin http|outbox] [--limit N] [--http-batch N] [...]\n"
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
    "  --origin http|outbox   what is replayed: the dead letters (default), or the outbox\n"
    "                         (which engage run drains by itself)\n"
    "  --limit N              at most N rows\n"
    "  --http-batch N         events per request, as for run (default 100)\n"
    "  --http-timeout-ms N    per-request timeout (default 5000)\n"
    "  --http-max-attempts N  attempts per request (default 8)\n"
    "  --http-retry-budget-ms N  longest one round may retry (default 60000)\n"
    "  --http-inflight N      concurrent requests (default 4)\n"
    "  --http-rate R          requests per second to the API (default 0: no limit)\n"
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
    "  --origin O      the rows of origin O (http, source, backfill, clickhouse, redis, kafka)\n"
    "  --config FILE   `name = value` lines using the long option names (ENGAGE_CONFIG)\n";

static const char dlq_usage[] =
    "usage: engage dlq list    [OPTIONS]   show the dead-letter rows\n"
    "       engage dlq replay  [OPTIONS]   re-send parked HTTP events to the API\n"
    "       engage dlq discard [OPTIONS]   give up on rows for good (they stop counting)\n"
    "\n"
    "`engage dlq list --help`, `engage dlq replay --help` and `engage dlq discard --help`\n"
    "describe the options.\n";

/* The options of the dlq subcommands, read from struct eng_options. */
struct dlq_args {
    const char *origin;
    bool all, json;
    int64_t limit;
    int64_t *ids;
    size_t nids;
};

static bool parse_ids(struct dlq_args *a, const char *text)
{
    const char *p = text;
    size_t cap = 1;
    for (const char *c = p; *c; c++)
        cap += *c == ',';
    a->ids = eng_calloc(cap, sizeof(*a->ids));
    while (*p) {
        size_t n = strcspn(p, ",");
        if (!eng_parse_i64(p, n, &a->ids[a->nids]) || a->ids[a->nids] <= 0) {
            fprintf(stderr, "engage dlq: --ids takes row ids like 1,2,3, not \"%s\"\n", text);
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

/* Reads the dlq options out of o. Returns false on a usage error (message printed). */
static bool dlq_args_read(const struct eng_options *o, struct dlq_args *a)
{
    a->origin = eng_opt(o, OPT_ORIGIN);
    a->all = eng_opt_flag(o, OPT_ALL);
    a->json = eng_opt_flag(o, OPT_JSON);
    if (a->all && eng_opt_flag(o, OPT_PENDING)) {
        fprintf(stderr, "engage dlq: --all and --pending exclude each other\n");
        return false;
    }
    const char *limit = eng_opt(o, OPT_LIMIT);
    if (limit != NULL && (!eng_parse_i64(limit, strlen(limit), &a->limit) || a->limit < 1)) {
        fprintf(stderr, "engage dlq: --limit must be an integer >= 1, not \"%s\"\n", limit);
        return false;
    }
    const char *ids = eng_opt(o, OPT_IDS);
    return ids == NULL || parse_ids(a, ids);
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
               r->replayed    ? " replayed"
               : r->discarded ? " discarded"
                              : "",
               r->reason);
    }
    return true;
}

static int cmd_list(const struct dlq_args *a, struct eng_dlq *q)
{
    struct eng_error err;
    /* The outbox is not dead letters: listed when asked for by origin, ids or --all. */
    bool outbox = a->origin != NULL || a->ids != NULL || a->all;
    struct eng_dlq_filter f = {.origin = a->origin,
                               .not_origin = outbox ? NULL : ENG_DLQ_OUTBOX,
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

/* ---- replay ---------------------------------------------------------------------------- */

/* The replay's writer: the HTTP sink, opened at the first round. */
struct replay_writer {
    struct eng_sink *sink;
    bool opened;
};

static int write_through_sink(void *ctx, const struct eng_batch *b, struct eng_error *err)
{
    struct replay_writer *w = ctx;
    if (!w->opened) {
        if (eng_sink_open(w->sink, err) != 0)
            return -1;
        w->opened = true;
    }
    return eng_sink_write(w->sink, b, err);
}

static void say_replay(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "engage dlq replay: %s\n", line);
}

/* The replay's own usage errors: exit status 2 after saying why, or 0. */
static int replay_usage_error(const struct dlq_args *a, const struct eng_options *o)
{
    if (a->origin != NULL && strcmp(a->origin, "http") != 0 &&
        strcmp(a->origin, ENG_DLQ_OUTBOX) != 0) {
        fprintf(stderr,
                "engage dlq replay: only rows of origin \"http\" (or \"outbox\") can be "
                "replayed; \"%s\" rows are not events the API can take (bad input: fix it at "
                "the source)\n",
                a->origin);
        return 2;
    }
    if (eng_opt(o, OPT_HTTP) == NULL) {
        fprintf(stderr, "engage dlq replay: --http URL (or ENGAGE_HTTP) is required\n");
        return 2;
    }
    return 0;
}

static void print_replay_totals(const struct dlq_args *a, const struct eng_dlq_replay_totals *t)
{
    printf("replayed %lld events; %lld failed and stay pending; %lld rows refused (not http "
           "events)",
           (long long)t->replayed, (long long)t->failed, (long long)t->refused);
    if (a->nids > 0 && t->complete)
        printf("; %lld requested rows not pending", (long long)t->missing);
    printf("\n");
}

static int cmd_replay(const struct dlq_args *a, const struct eng_options *o, struct eng_dlq *q)
{
    struct eng_error err;
    struct eng_http_options hopt;
    int rc = replay_usage_error(a, o);
    if (rc != 0 || !eng_cli_http_options(o, &hopt))
        return 2;
    /* The sink parks what still fails in the scratch table, a temporary table of its own
     * session; the engine re-parks the rows on themselves in the real table. */
    struct eng_dlq *scratch = eng_dlq_create(eng_opt(o, OPT_PG), ENG_DLQ_REPLAY_SCRATCH);
    hopt.dlq = scratch;
    struct replay_writer w = {.sink = eng_http_sink_create(eng_opt(o, OPT_HTTP), &hopt, &err)};
    if (w.sink == NULL) {
        fprintf(stderr, "engage dlq replay: %s\n", err.msg);
        eng_dlq_destroy(scratch);
        return 2;
    }
    bool outbox = a->origin != NULL && strcmp(a->origin, ENG_DLQ_OUTBOX) == 0;
    struct eng_dlq_replay_options ropt = {.origin = a->origin,
                                          .failed_origin = outbox ? "http" : NULL,
                                          .ids = a->ids,
                                          .nids = a->nids,
                                          .limit = a->limit,
                                          .request_size = hopt.batch_size,
                                          .scratch = scratch,
                                          .write = write_through_sink,
                                          .write_ctx = &w,
                                          .say = say_replay};
    struct eng_dlq_replay_totals t;
    rc = eng_dlq_replay(q, &ropt, &t);
    print_replay_totals(a, &t);
    eng_sink_destroy(w.sink);
    eng_dlq_destroy(scratch);
    return rc;
}

/* ---- the command ------------------------------------------------------------------------ */

/* Which dlq subcommand argv[1] names; false (usage printed, *rc set) when none. */
static bool pick_subcommand(int argc, char **argv, enum eng_cmd_id *cmd, int *rc)
{
    static const struct {
        const char *name;
        enum eng_cmd_id cmd;
    } subs[] = {{"list", ENG_CMD_DLQ_LIST},
                {"replay", ENG_CMD_DLQ_REPLAY},
                {"discard", ENG_CMD_DLQ_DISCARD}};
    for (size_t i = 0; argc >= 2 && i < sizeof(subs) / sizeof(subs[0]); i++) {
        if (strcmp(argv[1], subs[i].name) == 0) {
            *cmd = subs[i].cmd;
            return true;
        }
    }
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0)) {
        fputs(dlq_usage, stdout);
        *rc = 0;
        return false;
    }
    if (argc >= 2)
        fprintf(stderr, "engage dlq: unknown subcommand \"%s\"\n", argv[1]);
    fputs(dlq_usage, stderr);
    *rc = 2;
    return false;
}

static int run_subcommand(enum eng_cmd_id cmd, const struct dlq_args *a,
                          const struct eng_options *o)
{
    /* The replay prints what it did itself; the sink's own warnings would speak of the
     * scratch table. */
    eng_log_set_level(cmd == ENG_CMD_DLQ_REPLAY ? ENG_LOG_ERROR : ENG_LOG_WARN);
    struct eng_dlq *q = eng_dlq_create(eng_opt(o, OPT_PG), eng_opt(o, OPT_DLQ_TABLE));
    int rc = cmd == ENG_CMD_DLQ_LIST     ? cmd_list(a, q)
             : cmd == ENG_CMD_DLQ_REPLAY ? cmd_replay(a, o, q)
                                         : cmd_discard(a, q);
    eng_dlq_destroy(q);
    return rc;
}

int eng_cmd_dlq(int argc, char **argv)
{
    enum eng_cmd_id cmd;
    int rc = 2;
    if (!pick_subcommand(argc, argv, &cmd, &rc))
        return rc;
    const char *usage = cmd == ENG_CMD_DLQ_LIST     ? list_usage
                        : cmd == ENG_CMD_DLQ_REPLAY ? replay_usage
                                                    : discard_usage;
    /* argv + 1 is the subcommand's argv: argv[0] "list", "replay" or "discard". */
    struct dlq_args a = {0};
    struct eng_options o;
    int prc = eng_options_parse(&o, cmd, argc - 1, argv + 1, usage);
    if (prc != 0) {
        rc = prc > 0 ? 0 : 2;
        goto out;
    }
    if (!dlq_args_read(&o, &a)) {
        fputs(usage, stderr);
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
    rc = run_subcommand(cmd, &a, &o);
out:
    eng_options_free(&o);
    free(a.ids);
    return rc;
}
