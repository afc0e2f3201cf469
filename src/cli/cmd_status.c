/* engage status: the slot's lag, whether the running engage is ready, and the dead letters,
 * one `name value` line each, for a person or a script. */
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "../core/buf.h"
#include "../pipeline/dlq.h"
#include "../source/pgconn.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

static const char usage[] =
    "usage: engage status --pg CONNINFO [--slot NAME] [--admin-addr HOST:PORT] [--dlq-table NAME]\n"
    "\n"
    "Prints one `name value` line each: the replication slot (active, wal_status, confirmed\n"
    "position, lag in bytes behind the server's WAL), whether the engage serving\n"
    "--admin-addr is ready (and each sink's state), and the dead letters not yet replayed.\n"
    "\n"
    "  --pg CONNINFO          libpq conninfo or URI                      (ENGAGE_PG)\n"
    "  --slot NAME            replication slot (default engage_slot)\n"
    "  --admin-addr HOST:PORT the running engage's admin endpoint (default 127.0.0.1:9187)\n"
    "  --dlq-table NAME       dead-letter table (default engage_dlq)\n"
    "\n"
    "Exit status: 0 when the slot is healthy, engage is ready and nothing is parked; 1 when\n"
    "something needs attention (what, is on its line); 2 on a usage error.\n";

static size_t collect(char *data, size_t size, size_t n, void *ctx)
{
    eng_buf_append(ctx, data, size * n);
    return size * n;
}

/* GET http://addr/readyz: 200 ready, 503 not ready (the body says why), else not running. */
static bool check_engage(const char *addr)
{
    char url[300];
    snprintf(url, sizeof(url), "http://%s/readyz", addr);
    struct eng_buf body = {.cap = 4096};
    CURL *e = curl_easy_init();
    long code = 0;
    CURLcode rc = CURLE_FAILED_INIT;
    if (e != NULL) {
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 3000L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &body);
        rc = curl_easy_perform(e);
        if (rc == CURLE_OK)
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(e);
    }
    size_t len = body.len;
    while (len > 0 && (body.data[len - 1] == '\n' || body.data[len - 1] == '\r'))
        len--;
    bool ready = rc == CURLE_OK && code == 200;
    if (rc != CURLE_OK)
        printf("engage not running (no answer at %s: %s)\n", addr, curl_easy_strerror(rc));
    else
        printf("engage %s (%.*s)\n", ready ? "ready" : "not ready", (int)len,
               body.data ? body.data : "");
    eng_buf_free(&body);
    return ready;
}

static bool check_slot(const char *conninfo, const char *slot)
{
    struct eng_error err;
    eng_error_clear(&err);
    PGconn *c = eng_pg_connect(conninfo, false, &err);
    if (c == NULL) {
        printf("slot %s unknown (%s)\n", slot, err.msg);
        return false;
    }
    const char *params[] = {slot};
    PGresult *r = eng_pg_exec(c,
                              "SELECT active, coalesce(wal_status, 'unknown'), "
                              "coalesce(confirmed_flush_lsn::text, ''), "
                              "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), "
                              "confirmed_flush_lsn)::bigint, -1) "
                              "FROM pg_replication_slots WHERE slot_name = $1",
                              1, params, &err, "could not read the slot");
    bool ok = false;
    if (r == NULL) {
        printf("slot %s unknown (%s)\n", slot, err.msg);
    } else if (PQntuples(r) == 0) {
        printf("slot %s missing (engage run creates it; a slot that was there and is gone "
               "lost events: see the runbook in the log)\n",
               slot);
    } else {
        bool active = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        const char *wal = PQgetvalue(r, 0, 1);
        ok = strcmp(wal, "lost") != 0;
        printf("slot %s\n", slot);
        printf("slot_active %s\n", active ? "yes" : "no");
        printf("slot_wal_status %s\n", wal);
        printf("confirmed_flush_lsn %s\n", PQgetvalue(r, 0, 2));
        printf("lag_bytes %s\n", PQgetvalue(r, 0, 3));
    }
    PQclear(r);
    PQfinish(c);
    return ok;
}

int eng_cmd_status(int argc, char **argv)
{
    struct eng_options o;
    int prc = eng_options_parse(&o, argc, argv, usage);
    if (prc != 0) {
        eng_options_free(&o);
        return prc > 0 ? 0 : 2;
    }
    int status = 2;
    if (!eng_cli_log_level(&o))
        goto out;
    if (eng_opt(&o, OPT_PG) == NULL) {
        fprintf(stderr, "engage status: --pg (or ENGAGE_PG) is required\n\n%s", usage);
        goto out;
    }
    bool ok = check_slot(eng_opt(&o, OPT_PG), eng_opt(&o, OPT_SLOT));
    ok = check_engage(eng_opt(&o, OPT_ADMIN_ADDR)) && ok;

    struct eng_error err;
    eng_error_clear(&err);
    struct eng_dlq *q = eng_dlq_create(eng_opt(&o, OPT_PG), eng_opt(&o, OPT_DLQ_TABLE));
    int64_t pending = eng_dlq_pending(q, &err);
    eng_dlq_destroy(q);
    if (pending < 0)
        printf("dlq_pending unknown (%s)\n", err.msg);
    else
        printf("dlq_pending %lld\n", (long long)pending);
    ok = ok && pending == 0;
    status = ok ? 0 : 1;
out:
    eng_options_free(&o);
    return status;
}
