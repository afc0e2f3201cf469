/* engage run: PostgreSQL logical replication -> enrichment -> sinks. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "../admin/admin.h"
#include "../core/log.h"
#include "../pipeline/dlq.h"
#include "../pipeline/pipeline.h"
#include "../sink/clickhouse.h"
#include "../sink/http.h"
#include "../sink/redis.h"
#include "../sink/stdout.h"
#include "../source/pg.h"
#include "commands.h"
#include "options.h"

static const char usage[] =
    "usage: engage run --pg CONNINFO [--clickhouse URL] [--redis URL] [--http URL] [OPTIONS]\n"
    "\n"
    "Streams every new engagement_events row through the pgoutput plugin, enriches it with its\n"
    "content row and writes it to every configured sink, exactly once in effect.\n"
    "\n"
    "  --pg CONNINFO          libpq conninfo or URI                      (ENGAGE_PG)\n"
    "  --clickhouse URL       http://[user:pass@]host:port               (ENGAGE_CLICKHOUSE)\n"
    "  --redis URL            redis://[:pass@]host:port[/db]             (ENGAGE_REDIS)\n"
    "  --http URL             base URL of the external API               (ENGAGE_HTTP)\n"
    "  --sinks LIST           clickhouse,redis,http,stdout (default: every sink with a URL)\n"
    "  --slot NAME            replication slot (default engage_slot)\n"
    "  --publication NAME     publication (default engage_pub)\n"
    "  --state-dir DIR        checkpoint state (default ./engage-state)\n"
    "  --admin-addr HOST:PORT /metrics, /healthz, /readyz (default 127.0.0.1:9187; 'off')\n"
    "  --batch-events N       events per micro-batch (default 10000)\n"
    "  --batch-ms N           longest a batch stays open, ms (default 50)\n"
    "  --queue-depth N        batches queued per sink before the source waits (default 1024)\n"
    "  --queue-mb N           or megabytes of events queued, whichever first (default 128)\n"
    "  --clickhouse-interval-ms N  least time between two ClickHouse inserts; batches\n"
    "                         gather meanwhile (default 200; 0: insert at once)\n"
    "  --dlq-table NAME       dead-letter table in PostgreSQL (default engage_dlq)\n"
    "  --seen-ttl SECONDS     expiry of Redis's seen-set chunks (default 0: never)\n"
    "  --http-batch N         events per API request; 1 sends single objects (default 100)\n"
    "  --http-timeout-ms N    per-request timeout (default 5000)\n"
    "  --http-max-attempts N  attempts before an event is parked in the DLQ (default 8)\n"
    "  --http-retry-budget-ms N  longest one batch may retry before parking (default 60000)\n"
    "  --http-inflight N      concurrent API requests (default 4)\n"
    "  --http-token-file F    bearer token file (or ENGAGE_HTTP_TOKEN); never logged\n"
    "  --log-level LEVEL      debug, info, warn, error (default info)\n"
    "  --config FILE          `name = value` lines with these option names (ENGAGE_CONFIG)\n"
    "\n"
    "Every option can also be set as ENGAGE_<NAME> (upper case, '-' as '_').\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static bool ready_hook(void *ctx, char *why, size_t whylen)
{
    return eng_pipeline_healthy(ctx, why, whylen);
}

int eng_cmd_run(int argc, char **argv)
{
    struct eng_options o;
    struct eng_error err;
    struct eng_sink *sinks[8];
    size_t nsinks = 0;
    struct eng_pipeline *pipeline = NULL;
    struct eng_admin *admin = NULL;
    struct eng_dlq *dlq = NULL;
    int status = 1;
    struct eng_dlq *http_dlq = NULL;
    int64_t batch_events = 10000, batch_ms = 50, depth = 1024, queue_mb = 128, ch_interval_ms = 200,
            seen_ttl = 0;
    int64_t http_batch = 100, http_timeout = 5000, http_attempts = 8, http_budget = 60000;
    int64_t http_inflight = 4;

    eng_error_clear(&err);
    int prc = eng_options_parse(&o, argc, argv, usage);
    if (prc != 0) {
        eng_options_free(&o);
        return prc > 0 ? 0 : 2;
    }
    enum eng_log_level level;
    if (!eng_log_parse_level(eng_opt(&o, OPT_LOG_LEVEL), &level)) {
        fprintf(stderr, "engage: unknown log level \"%s\"\n", eng_opt(&o, OPT_LOG_LEVEL));
        status = 2;
        goto out;
    }
    eng_log_set_level(level);
    if (!eng_opt_int(&o, OPT_BATCH_EVENTS, 1, 1000000, &batch_events) ||
        !eng_opt_int(&o, OPT_BATCH_MS, 1, 60000, &batch_ms) ||
        !eng_opt_int(&o, OPT_QUEUE_DEPTH, 1, 1 << 20, &depth) ||
        !eng_opt_int(&o, OPT_QUEUE_MB, 1, 1 << 20, &queue_mb) ||
        !eng_opt_int(&o, OPT_CLICKHOUSE_INTERVAL_MS, 0, 60000, &ch_interval_ms) ||
        !eng_opt_int(&o, OPT_SEEN_TTL, 0, UINT32_MAX, &seen_ttl) ||
        !eng_opt_int(&o, OPT_HTTP_BATCH, 1, 10000, &http_batch) ||
        !eng_opt_int(&o, OPT_HTTP_TIMEOUT_MS, 1, 3600000, &http_timeout) ||
        !eng_opt_int(&o, OPT_HTTP_MAX_ATTEMPTS, 1, 1000, &http_attempts) ||
        !eng_opt_int(&o, OPT_HTTP_RETRY_BUDGET_MS, 1, 86400000, &http_budget) ||
        !eng_opt_int(&o, OPT_HTTP_INFLIGHT, 1, 256, &http_inflight)) {
        status = 2;
        goto out;
    }
    if (strcmp(eng_opt(&o, OPT_SOURCE), "pg") != 0) {
        fprintf(stderr, "engage: --source %s is not available in this build\n",
                eng_opt(&o, OPT_SOURCE));
        status = 2;
        goto out;
    }
    if (eng_opt(&o, OPT_PG) == NULL) {
        fprintf(stderr, "engage: --pg (or ENGAGE_PG) is required\n\n%s", usage);
        status = 2;
        goto out;
    }

    if (eng_opt_sink_enabled(&o, "clickhouse")) {
        if (eng_opt(&o, OPT_CLICKHOUSE) == NULL) {
            fprintf(stderr, "engage: the clickhouse sink needs --clickhouse URL\n");
            status = 2;
            goto out;
        }
        sinks[nsinks] = eng_clickhouse_sink_create(eng_opt(&o, OPT_CLICKHOUSE), &err);
        if (sinks[nsinks] == NULL)
            goto fail;
        sinks[nsinks]->min_write_interval_us = ch_interval_ms * 1000;
        nsinks++;
    }
    if (eng_opt_sink_enabled(&o, "redis")) {
        if (eng_opt(&o, OPT_REDIS) == NULL) {
            fprintf(stderr, "engage: the redis sink needs --redis URL\n");
            status = 2;
            goto out;
        }
        struct eng_redis_options ropt;
        eng_redis_options_init(&ropt);
        ropt.seen_ttl_s = (uint32_t)seen_ttl;
        sinks[nsinks] = eng_redis_sink_create(eng_opt(&o, OPT_REDIS), &ropt, &err);
        if (sinks[nsinks] == NULL)
            goto fail;
        nsinks++;
    }
    if (eng_opt_sink_enabled(&o, "http")) {
        if (eng_opt(&o, OPT_HTTP) == NULL) {
            fprintf(stderr, "engage: the http sink needs --http URL\n");
            status = 2;
            goto out;
        }
        struct eng_http_options hopt;
        eng_http_options_default(&hopt);
        hopt.batch_size = (uint32_t)http_batch;
        hopt.timeout_ms = http_timeout;
        hopt.max_attempts = (uint32_t)http_attempts;
        hopt.retry_budget_ms = http_budget;
        hopt.max_in_flight = (uint32_t)http_inflight;
        hopt.token_file = eng_opt(&o, OPT_HTTP_TOKEN_FILE);
        /* The sink thread parks through a dlq of its own (one connection per thread). */
        http_dlq = eng_dlq_create(eng_opt(&o, OPT_PG), eng_opt(&o, OPT_DLQ_TABLE));
        hopt.dlq = http_dlq;
        sinks[nsinks] = eng_http_sink_create(eng_opt(&o, OPT_HTTP), &hopt, &err);
        if (sinks[nsinks] == NULL)
            goto fail;
        nsinks++;
    }
    if (eng_opt_sink_enabled(&o, "stdout"))
        sinks[nsinks++] = eng_stdout_sink_create(1);
    if (nsinks == 0) {
        fprintf(stderr, "engage: no sink configured: give --clickhouse, --redis or --http\n");
        status = 2;
        goto out;
    }

    struct eng_pipeline_options popt = {.queue_depth = (uint32_t)depth,
                                        .queue_bytes = (size_t)queue_mb << 20};
    pipeline = eng_pipeline_create(sinks, nsinks, &popt, &err);
    nsinks = 0; /* now owned by the pipeline */
    if (pipeline == NULL)
        goto fail;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (strcmp(eng_opt(&o, OPT_ADMIN_ADDR), "off") != 0) {
        struct eng_admin_hooks hooks = {.ready = ready_hook, .ctx = pipeline};
        admin = eng_admin_start(eng_opt(&o, OPT_ADMIN_ADDR), hooks, &err);
        if (admin == NULL)
            goto fail;
    }
    dlq = eng_dlq_create(eng_opt(&o, OPT_PG), eng_opt(&o, OPT_DLQ_TABLE));
    if (eng_pipeline_start(pipeline, &err) != 0)
        goto fail;

    struct eng_pg_source_options sopt = {
        .conninfo = eng_opt(&o, OPT_PG),
        .slot = eng_opt(&o, OPT_SLOT),
        .publication = eng_opt(&o, OPT_PUBLICATION),
        .state_dir = eng_opt(&o, OPT_STATE_DIR),
        .batch_max_events = (uint32_t)batch_events,
        .batch_max_us = batch_ms * 1000,
        .status_interval_us = 10000000,
        .dlq = dlq,
    };
    eng_info("msg=\"starting\" sinks=%s", eng_opt(&o, OPT_SINKS) ? eng_opt(&o, OPT_SINKS) : "auto");
    if (eng_pg_source_run(&sopt, pipeline, &stop_requested, &err) != 0)
        goto fail;
    eng_info("msg=\"stopped\"");
    status = 0;
    goto out;
fail:
    eng_error("msg=\"%s\"", err.msg);
    status = 1;
out:
    for (size_t i = 0; i < nsinks; i++)
        eng_sink_destroy(sinks[i]);
    eng_admin_stop(admin); /* first: /readyz reads the pipeline */
    eng_pipeline_destroy(pipeline);
    eng_dlq_destroy(dlq);
    eng_dlq_destroy(http_dlq);
    eng_options_free(&o);
    return status;
}
