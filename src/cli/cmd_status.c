/* engage status: the slot's lag, whether the running engage is ready, and the dead letters,
 * one `name value` line each for a person, or one JSON object (--json) for a script. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/buf.h"
#include "../dlq/dlq.h"
#include "../db/pgconn.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

static const char usage[] =
    "usage: engage status --pg CONNINFO [--slot NAME] [--admin-addr HOST:PORT] [--dlq-table NAME]\n"
    "                     [--source pg|kafka] [--json]\n"
    "\n"
    "Prints one `name value` line each: the replication slot (active, wal_status, confirmed\n"
    "position, lag in bytes behind the server's WAL), whether the engage serving\n"
    "--admin-addr is ready (and each sink's state), its Kafka figures (a consumer's assigned\n"
    "partitions and lag per partition; capture's records produced and delivery failures), and\n"
    "the dead letters not yet replayed or discarded, and the HTTP sink's outbox (events on\n"
    "their way to a slower API: how many, how old the oldest). With --json, one JSON object with "
    "the\n"
    "same facts instead. For `engage capture`, give its slot and admin address (--slot\n"
    "engage_capture --admin-addr 127.0.0.1:9188); for a consumer (--source kafka) there is no\n"
    "slot to check.\n"
    "\n"
    "  --pg CONNINFO          libpq conninfo or URI                      (ENGAGE_PG)\n"
    "  --source pg|kafka      what the engage at --admin-addr reads (default pg)\n"
    "  --slot NAME            replication slot (default engage_slot)\n"
    "  --admin-addr HOST:PORT the running engage's admin endpoint (default 127.0.0.1:9187)\n"
    "  --dlq-table NAME       dead-letter table (default engage_dlq)\n"
    "  --json                 one JSON object on stdout\n"
    "  --log-level LEVEL      debug, info, warn, error (default info)\n"
    "  --config FILE          `name = value` lines with these option names (ENGAGE_CONFIG)\n"
    "\n"
    "Exit status: 0 when the slot is healthy, engage is ready and nothing is parked; 1 when\n"
    "something needs attention (what, is on its line; `engage dlq list` shows dead letters,\n"
    "`engage dlq replay` or `engage dlq discard` clears them); 2 on a usage error.\n";

/* What status found; strings are owned by the struct (freed by report_free). */
struct report {
    const char *slot;
    const char *slot_state; /* "ok", "missing", "lost" or "unknown" */
    char *slot_error;       /* when unknown */
    bool slot_active;
    char *wal_status, *confirmed_flush_lsn;
    long long lag_bytes; /* -1: unknown */
    const char *admin_addr;
    const char *engage_state; /* "ready", "not ready" or "not running" */
    char *engage_detail;
    long long dlq_pending; /* -1: unknown */
    char *dlq_error;
    long long outbox_pending; /* -1: unknown */
    double outbox_oldest_s;
    struct eng_buf kafka; /* the engage's engage_kafka_* and engage_capture_* metric lines */
};

static void report_free(struct report *r)
{
    free(r->slot_error);
    free(r->wal_status);
    free(r->confirmed_flush_lsn);
    free(r->engage_detail);
    free(r->dlq_error);
    eng_buf_free(&r->kafka);
}

static size_t collect(char *data, size_t size, size_t n, void *ctx)
{
    eng_buf_append(ctx, data, size * n);
    return size * n;
}

/* GET http://addr/path into body; the status code, or 0 with *rc set when there was no
 * answer. */
static long http_get(const char *addr, const char *path, struct eng_buf *body, CURLcode *rc)
{
    char url[300];
    snprintf(url, sizeof(url), "http://%s%s", addr, path);
    CURL *e = curl_easy_init();
    long code = 0;
    *rc = CURLE_FAILED_INIT;
    if (e != NULL) {
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 3000L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, body);
        *rc = curl_easy_perform(e);
        if (*rc == CURLE_OK)
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(e);
    }
    return code;
}

/* The Kafka lines of the engage's /metrics (a consumer's partitions and lag, capture's
 * records), `name value` each. */
static void read_kafka_metrics(struct report *rep)
{
    struct eng_buf body = {.cap = 4 << 20};
    CURLcode rc;
    if (http_get(rep->admin_addr, "/metrics", &body, &rc) == 200 && body.len > 0) {
        eng_buf_putc(&body, '\0');
        char *save = NULL;
        for (char *line = strtok_r(body.data, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            if (strncmp(line, "engage_kafka_", 13) == 0 ||
                strncmp(line, "engage_capture_", 15) == 0) {
                eng_buf_puts(&rep->kafka, line);
                eng_buf_putc(&rep->kafka, '\n');
            }
        }
    }
    eng_buf_free(&body);
}

/* GET http://addr/readyz: 200 ready, 503 not ready (the body says why), else not running. */
static bool check_engage(struct report *rep)
{
    struct eng_buf body = {.cap = 4096};
    CURLcode rc;
    long code = http_get(rep->admin_addr, "/readyz", &body, &rc);
    if (rc == CURLE_OK)
        read_kafka_metrics(rep);
    size_t len = body.len;
    while (len > 0 && (body.data[len - 1] == '\n' || body.data[len - 1] == '\r'))
        len--;
    bool ready = rc == CURLE_OK && code == 200;
    if (rc != CURLE_OK) {
        rep->engage_state = "not running";
        rep->engage_detail = eng_strdup(curl_easy_strerror(rc));
    } else {
        rep->engage_state = ready ? "ready" : "not ready";
        rep->engage_detail = eng_strndup(body.data ? body.data : "", len);
    }
    eng_buf_free(&body);
    return ready;
}

static bool check_slot(const char *conninfo, struct report *rep)
{
    struct eng_error err;
    eng_error_clear(&err);
    rep->lag_bytes = -1;
    rep->slot_state = "unknown";
    PGconn *c = eng_pg_connect(conninfo, "engage-status", false, &err);
    if (c == NULL) {
        rep->slot_error = eng_strdup(err.msg);
        return false;
    }
    const char *params[] = {rep->slot};
    PGresult *r = eng_pg_exec(c,
                              "SELECT active, coalesce(wal_status, 'unknown'), "
                              "coalesce(confirmed_flush_lsn::text, ''), "
                              "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), "
                              "confirmed_flush_lsn)::bigint, -1) "
                              "FROM pg_replication_slots WHERE slot_name = $1",
                              1, params, &err, "could not read the slot");
    bool ok = false;
    if (r == NULL) {
        rep->slot_error = eng_strdup(err.msg);
    } else if (PQntuples(r) == 0) {
        rep->slot_state = "missing";
    } else {
        rep->slot_active = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        rep->wal_status = eng_strdup(PQgetvalue(r, 0, 1));
        rep->confirmed_flush_lsn = eng_strdup(PQgetvalue(r, 0, 2));
        rep->lag_bytes = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
        ok = strcmp(rep->wal_status, "lost") != 0;
        rep->slot_state = ok ? "ok" : "lost";
    }
    PQclear(r);
    PQfinish(c);
    return ok;
}

static void print_text(const struct report *r)
{
    if (strcmp(r->slot_state, "none") == 0) {
        printf("slot none (the engage at %s reads Kafka)\n", r->admin_addr);
    } else if (strcmp(r->slot_state, "unknown") == 0) {
        printf("slot %s unknown (%s)\n", r->slot, r->slot_error);
    } else if (strcmp(r->slot_state, "missing") == 0) {
        printf("slot %s missing (engage run creates it; a slot that was there and is gone "
               "lost events: see the runbook in the log)\n",
               r->slot);
    } else {
        printf("slot %s\n", r->slot);
        printf("slot_active %s\n", r->slot_active ? "yes" : "no");
        printf("slot_wal_status %s\n", r->wal_status);
        printf("confirmed_flush_lsn %s\n", r->confirmed_flush_lsn);
        printf("lag_bytes %lld\n", r->lag_bytes);
    }
    if (strcmp(r->engage_state, "not running") == 0)
        printf("engage not running (no answer at %s: %s)\n", r->admin_addr, r->engage_detail);
    else
        printf("engage %s (%s)\n", r->engage_state, r->engage_detail);
    if (r->kafka.len > 0)
        fwrite(r->kafka.data, 1, r->kafka.len, stdout);
    if (r->dlq_pending < 0)
        printf("dlq_pending unknown (%s)\n", r->dlq_error);
    else
        printf("dlq_pending %lld\n", r->dlq_pending);
    if (r->outbox_pending >= 0)
        printf("outbox_pending %lld\noutbox_oldest_seconds %.3f\n", r->outbox_pending,
               r->outbox_oldest_s);
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static void print_json(const struct report *r, bool ok)
{
    json_t *slot = json_object();
    json_object_set_new(slot, "name", json_string(r->slot));
    json_object_set_new(slot, "state", json_string(r->slot_state));
    bool found = strcmp(r->slot_state, "ok") == 0 || strcmp(r->slot_state, "lost") == 0;
    json_object_set_new(slot, "active", found ? json_boolean(r->slot_active) : json_null());
    json_object_set_new(slot, "wal_status", str_or_null(r->wal_status));
    json_object_set_new(slot, "confirmed_flush_lsn", str_or_null(r->confirmed_flush_lsn));
    json_object_set_new(slot, "lag_bytes",
                        found && r->lag_bytes >= 0 ? json_integer(r->lag_bytes) : json_null());
    json_object_set_new(slot, "error", str_or_null(r->slot_error));

    json_t *eng = json_object();
    json_object_set_new(eng, "admin_addr", json_string(r->admin_addr));
    json_object_set_new(eng, "state", json_string(r->engage_state));
    json_object_set_new(eng, "detail", str_or_null(r->engage_detail));

    json_t *dlq = json_object();
    json_object_set_new(dlq, "pending",
                        r->dlq_pending >= 0 ? json_integer(r->dlq_pending) : json_null());
    json_object_set_new(dlq, "error", str_or_null(r->dlq_error));
    json_t *outbox = json_object();
    json_object_set_new(outbox, "pending",
                        r->outbox_pending >= 0 ? json_integer(r->outbox_pending) : json_null());
    json_object_set_new(outbox, "oldest_seconds",
                        r->outbox_pending >= 0 ? json_real(r->outbox_oldest_s) : json_null());

    json_t *kafka = json_object();
    for (size_t at = 0; at < r->kafka.len;) {
        const char *line = r->kafka.data + at;
        size_t len = strcspn(line, "\n");
        const char *sp = memrchr(line, ' ', len);
        if (sp != NULL) {
            char *name = eng_strndup(line, (size_t)(sp - line));
            json_object_set_new(kafka, name, json_real(strtod(sp + 1, NULL)));
            free(name);
        }
        at += len + 1;
    }

    json_t *root = json_object();
    json_object_set_new(root, "ok", json_boolean(ok));
    json_object_set_new(root, "kafka", kafka);
    json_object_set_new(root, "slot", slot);
    json_object_set_new(root, "engage", eng);
    json_object_set_new(root, "dlq", dlq);
    json_object_set_new(root, "outbox", outbox);
    char *text = json_dumps(root, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (text != NULL)
        printf("%s\n", text);
    free(text);
    json_decref(root);
}

int eng_cmd_status(int argc, char **argv)
{
    struct eng_options o;
    struct report rep = {.lag_bytes = -1, .dlq_pending = -1, .outbox_pending = -1};
    int prc = eng_options_parse(&o, ENG_CMD_STATUS, argc, argv, usage);
    if (prc != 0) {
        eng_options_free(&o);
        return prc > 0 ? 0 : 2;
    }
    bool json = eng_opt_flag(&o, OPT_JSON);
    int status = 2;
    if (!eng_cli_log_level(&o))
        goto out;
    if (eng_opt(&o, OPT_PG) == NULL) {
        fprintf(stderr, "engage status: --pg (or ENGAGE_PG) is required\n\n%s", usage);
        goto out;
    }
    if (o.nargs > 0) {
        fprintf(stderr, "engage status: unexpected argument \"%s\"\n\n%s", o.args[0], usage);
        goto out;
    }
    rep.slot = eng_opt(&o, OPT_SLOT);
    rep.admin_addr = eng_opt(&o, OPT_ADMIN_ADDR);
    rep.kafka.cap = 1 << 20;
    bool kafka_source = strcmp(eng_opt(&o, OPT_SOURCE), "kafka") == 0;
    if (!kafka_source && strcmp(eng_opt(&o, OPT_SOURCE), "pg") != 0) {
        fprintf(stderr, "engage status: --source must be pg or kafka\n\n%s", usage);
        goto out;
    }
    bool ok = true;
    if (kafka_source)
        rep.slot_state = "none";
    else
        ok = check_slot(eng_opt(&o, OPT_PG), &rep);
    ok = check_engage(&rep) && ok;

    struct eng_error err;
    eng_error_clear(&err);
    struct eng_dlq *q = eng_dlq_create(eng_opt(&o, OPT_PG), eng_opt(&o, OPT_DLQ_TABLE));
    int64_t pending = eng_dlq_pending(q, &err);
    int64_t outbox = -1;
    if (pending >= 0 &&
        eng_dlq_origin_stats(q, ENG_DLQ_OUTBOX, &outbox, &rep.outbox_oldest_s, &err) != 0)
        outbox = -1;
    rep.outbox_pending = outbox;
    eng_dlq_destroy(q);
    rep.dlq_pending = pending;
    if (pending < 0)
        rep.dlq_error = eng_strdup(err.msg);
    ok = ok && pending == 0;
    if (json)
        print_json(&rep, ok);
    else
        print_text(&rep);
    status = ok ? 0 : 1;
out:
    report_free(&rep);
    eng_options_free(&o);
    return status;
}
