/* engage dlq: list and replay what the dead-letter table holds. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"
#include "../core/pgtext.h"
#include "../pipeline/dlq.h"
#include "../sink/http.h"
#include "commands.h"

static const char usage[] =
    "usage: engage dlq list   [--pg CONNINFO] [--dlq-table T] [--origin O] [--all] [--limit N]\n"
    "                         [--json]\n"
    "       engage dlq replay [--pg CONNINFO] [--dlq-table T] --http URL [--ids 1,2,...]\n"
    "                         [--limit N] [--http-batch N] [--http-timeout-ms N]\n"
    "\n"
    "list    shows the rows not yet replayed (--all: every row), oldest first: id, parked at\n"
    "        (UTC), origin, source position, event id, last HTTP status, attempts, reason.\n"
    "replay  re-sends parked HTTP events (their payload is the enriched event) to the API with\n"
    "        the same Idempotency-Key the sink uses, and marks each row replayed once the API\n"
    "        acknowledged it. Rows that still fail stay pending. Rows parked by the source (bad\n"
    "        input) are not events the API can take: they are listed, never replayed.\n"
    "\n"
    "  --pg CONNINFO       (ENGAGE_PG)          --dlq-table NAME   (default engage_dlq)\n"
    "  --http URL          (ENGAGE_HTTP)        --origin NAME      http or source\n"
    "  --ids LIST          comma-separated row ids (default: every pending http row)\n"
    "  --limit N           at most N rows       --json             one JSON object per row\n";

struct dlq_args {
    const char *pg, *http, *table, *origin, *ids_text;
    int64_t limit, http_batch, http_timeout_ms;
    bool all, json;
    int64_t *ids;
    size_t nids;
};

static const char *env_or(const char *v, const char *env)
{
    const char *e = getenv(env);
    return v != NULL ? v : (e != NULL && *e != '\0' ? e : NULL);
}

static bool parse_int(const char *name, const char *s, int64_t min, int64_t *out)
{
    if (!eng_parse_i64(s, strlen(s), out) || *out < min) {
        fprintf(stderr, "engage dlq: --%s must be an integer >= %lld, not \"%s\"\n", name,
                (long long)min, s);
        return false;
    }
    return true;
}

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
    return a->nids > 0;
}

/* Returns 0, 1 for --help, 2 for a usage error. */
static int parse_args(int argc, char **argv, struct dlq_args *a)
{
    static const struct option longopts[] = {
        {"pg", required_argument, NULL, 'p'},
        {"http", required_argument, NULL, 'u'},
        {"dlq-table", required_argument, NULL, 't'},
        {"origin", required_argument, NULL, 'o'},
        {"ids", required_argument, NULL, 'i'},
        {"limit", required_argument, NULL, 'l'},
        {"http-batch", required_argument, NULL, 'b'},
        {"http-timeout-ms", required_argument, NULL, 'T'},
        {"all", no_argument, NULL, 'a'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof(*a));
    a->http_batch = 100;
    a->http_timeout_ms = 5000;
    optind = 1;
    for (;;) {
        int c = getopt_long(argc, argv, "h", longopts, NULL);
        if (c == -1)
            break;
        switch (c) {
        case 'p':
            a->pg = optarg;
            break;
        case 'u':
            a->http = optarg;
            break;
        case 't':
            a->table = optarg;
            break;
        case 'o':
            a->origin = optarg;
            break;
        case 'i':
            a->ids_text = optarg;
            break;
        case 'l':
            if (!parse_int("limit", optarg, 1, &a->limit))
                return 2;
            break;
        case 'b':
            if (!parse_int("http-batch", optarg, 1, &a->http_batch))
                return 2;
            break;
        case 'T':
            if (!parse_int("http-timeout-ms", optarg, 1, &a->http_timeout_ms))
                return 2;
            break;
        case 'a':
            a->all = true;
            break;
        case 'j':
            a->json = true;
            break;
        case 'h':
            fputs(usage, stdout);
            return 1;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    a->pg = env_or(a->pg, "ENGAGE_PG");
    a->http = env_or(a->http, "ENGAGE_HTTP");
    a->table = env_or(a->table, "ENGAGE_DLQ_TABLE");
    if (a->pg == NULL) {
        fprintf(stderr, "engage dlq: --pg (or ENGAGE_PG) is required\n");
        return 2;
    }
    if (a->ids_text != NULL && !parse_ids(a))
        return 2;
    return 0;
}

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
        eng_buf_printf(&b, ",\"last_status\":%d,\"attempts\":%d,\"replayed\":%s", r->last_status,
                       r->attempts, r->replayed ? "true" : "false");
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
               r->replayed ? " replayed" : "", r->reason);
    }
    return true;
}

static int cmd_list(struct dlq_args *a, struct eng_dlq *q)
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
    if (eng_dlq_scan(q, &f, print_row, a, &err) < 0) {
        fprintf(stderr, "engage dlq: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* Rows of one replay round, gathered by the scan callback. */
struct replay_round {
    struct eng_batch *batch;
    int64_t *ids;
    int64_t last_id;
    size_t refused;
};

static bool gather(const struct eng_dlq_row *r, void *ctx)
{
    struct replay_round *rr = ctx;
    rr->last_id = r->id;
    if (strcmp(r->origin, "http") != 0 || r->event_id < 0 || r->payload_len == 0) {
        fprintf(stderr,
                "engage dlq: row %lld (origin %s) is not an event the API can take; not "
                "replayed\n",
                (long long)r->id, r->origin);
        rr->refused++;
        return true;
    }
    struct eng_batch *b = rr->batch;
    struct eng_event *e = eng_batch_push(b);
    e->event_id = r->event_id;
    e->json.off = (uint32_t)b->jsonl.len;
    e->json.len = (uint32_t)r->payload_len;
    eng_buf_append(&b->jsonl, r->payload, r->payload_len);
    eng_buf_putc(&b->jsonl, '\n');
    rr->ids[b->n - 1] = r->id;
    return !eng_batch_full(b);
}

static int cmd_replay(struct dlq_args *a, struct eng_dlq *q)
{
    struct eng_error err;
    if (a->http == NULL) {
        fprintf(stderr, "engage dlq replay: --http URL (or ENGAGE_HTTP) is required\n");
        return 2;
    }
    if (a->origin != NULL && strcmp(a->origin, "http") != 0) {
        fprintf(stderr,
                "engage dlq replay: only rows of origin \"http\" can be replayed; "
                "\"%s\" rows are bad input to fix at the source\n",
                a->origin);
        return 2;
    }
    struct eng_http_options hopt;
    eng_http_options_default(&hopt);
    hopt.batch_size = (uint32_t)a->http_batch;
    hopt.timeout_ms = a->http_timeout_ms;
    hopt.dlq = NULL; /* a failure leaves the rows pending instead of parking them twice */
    struct eng_sink *sink = eng_http_sink_create(a->http, &hopt, &err);
    if (sink == NULL) {
        fprintf(stderr, "engage dlq replay: %s\n", err.msg);
        return 2;
    }
    const uint32_t round_cap = 1000;
    int64_t after = 0, replayed = 0, failed = 0, refused = 0, left = a->limit;
    int status = 0;
    for (;;) {
        struct replay_round rr = {.batch = eng_batch_create(round_cap),
                                  .ids = eng_calloc(round_cap, sizeof(int64_t))};
        struct eng_dlq_filter f = {.ids = a->ids,
                                   .nids = a->nids,
                                   .pending_only = true,
                                   .after_id = after,
                                   .limit = a->limit > 0 && left < round_cap ? left : round_cap};
        int64_t seen = eng_dlq_scan(q, &f, gather, &rr, &err);
        refused += (int64_t)rr.refused;
        int rc = 0;
        if (seen > 0 && rr.batch->n > 0)
            rc = eng_sink_open(sink, &err) == 0 ? eng_sink_write(sink, rr.batch, &err) : -1;
        if (seen < 0 || rc != 0) {
            fprintf(stderr, "engage dlq replay: %s\n", err.msg);
            failed += rr.batch->n;
            status = 1;
        } else if (rr.batch->n > 0) {
            if (eng_dlq_mark_replayed(q, rr.ids, rr.batch->n, &err) != 0) {
                fprintf(stderr, "engage dlq replay: delivered but could not mark: %s\n", err.msg);
                status = 1;
            }
            replayed += rr.batch->n;
        }
        eng_batch_release(rr.batch);
        free(rr.ids);
        if (seen <= 0 || status != 0)
            break;
        after = rr.last_id;
        left -= seen;
        if (a->limit > 0 && left <= 0)
            break;
    }
    printf("replayed %lld events; %lld failed and stay pending; %lld rows refused (not http "
           "events)\n",
           (long long)replayed, (long long)failed, (long long)refused);
    eng_sink_destroy(sink);
    return status;
}

int eng_cmd_dlq(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "list") != 0 && strcmp(argv[1], "replay") != 0)) {
        if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
            fputs(usage, stdout);
            return 0;
        }
        fputs(usage, stderr);
        return 2;
    }
    struct dlq_args a;
    int rc = parse_args(argc - 1, argv + 1, &a);
    if (rc != 0) {
        free(a.ids);
        return rc == 1 ? 0 : rc;
    }
    eng_log_set_level(ENG_LOG_WARN);
    struct eng_dlq *q = eng_dlq_create(a.pg, a.table);
    rc = strcmp(argv[1], "list") == 0 ? cmd_list(&a, q) : cmd_replay(&a, q);
    eng_dlq_destroy(q);
    free(a.ids);
    return rc;
}
