/* engage run: PostgreSQL logical replication -> enrichment -> sinks. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../admin/admin.h"
#include "../core/log.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"
#include "../source/kafka.h"
#include "../source/pg.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

static const char usage[] =
    "usage: engage run --pg CONNINFO [--clickhouse URL] [--redis URL] [--http URL] [OPTIONS]\n"
    "       engage run --source kafka --kafka BOOTSTRAP --pg CONNINFO [SINKS] [OPTIONS]\n"
    "\n"
    "Streams every new engagement_events row through the pgoutput plugin, enriches it with its\n"
    "content row and writes it to every configured sink, exactly once in effect. With\n"
    "--source kafka it reads the rows from the topic Debezium or `engage capture` writes\n"
    "instead, as one member of a consumer group (start several to share the partitions).\n"
    "\n"
    "  --pg CONNINFO          libpq conninfo or URI                      (ENGAGE_PG)\n"
    "  --clickhouse URL       http://[user:pass@]host:port               (ENGAGE_CLICKHOUSE)\n"
    "  --redis URL            redis://[:pass@]host:port[/db]             (ENGAGE_REDIS)\n"
    "  --http URL             base URL of the external API               (ENGAGE_HTTP)\n"
    "  --sinks LIST           clickhouse,redis,http,stdout (default: every sink with a URL)\n"
    "  --source pg|kafka      where events come from (default pg)                 (ENGAGE_SOURCE)\n"
    "  --kafka BOOTSTRAP      host:port[,host:port] of the brokers                (ENGAGE_KAFKA)\n"
    "  --group G              kafka: consumer group (default engage)\n"
    "  --topic T              kafka: events topic (default dbserver1.public.engagement_events)\n"
    "  --content-topic T      kafka: content topic, read whole by every member (default the\n"
    "                         events topic's prefix + .content; \"\" for none)\n"
    "  --snapshot-reads       kafka: deliver snapshot reads (op \"r\") as events too\n"
    "  -X, --kafka-property K=V  a librdkafka property (TLS, SASL, ...); repeatable\n"
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
    "  --redis-call-events N  events per Redis script call (default 1000; larger is faster\n"
    "                         when catching up, but holds Redis longer per call)\n"
    "  --http-batch N         events per API request; 1 sends single objects (default 100)\n"
    "  --http-timeout-ms N    per-request timeout (default 5000)\n"
    "  --http-max-attempts N  attempts before an event is parked in the DLQ (default 8)\n"
    "  --http-retry-budget-ms N  longest one batch may retry before parking (default 60000)\n"
    "  --http-inflight N      concurrent API requests (default 4)\n"
    "  --http-rate R          requests per second to the API, all in flight together, for\n"
    "                         an API with a published limit (default 0: no limit)\n"
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
    return eng_cli_sinks_ready(ctx, why, whylen);
}

/* Checks what run needs beyond each option's own parse; false after printing a usage
 * error. */
static bool check_run_options(const struct eng_options *o, int64_t *batch_events, int64_t *batch_ms)
{
    if (!eng_cli_log_level(o) || !eng_opt_int(o, OPT_BATCH_EVENTS, 1, 1000000, batch_events) ||
        !eng_opt_int(o, OPT_BATCH_MS, 1, 60000, batch_ms))
        return false;
    const char *source = eng_opt(o, OPT_SOURCE);
    if (strcmp(source, "pg") != 0 && strcmp(source, "kafka") != 0) {
        fprintf(stderr, "engage: --source must be pg or kafka, not \"%s\"\n", source);
        return false;
    }
    if (strcmp(source, "kafka") == 0 && eng_opt(o, OPT_KAFKA) == NULL) {
        fprintf(stderr, "engage: --source kafka needs --kafka (or ENGAGE_KAFKA)\n\n%s", usage);
        return false;
    }
    if (eng_opt(o, OPT_PG) == NULL) {
        fprintf(stderr, "engage: --pg (or ENGAGE_PG) is required\n\n%s", usage);
        return false;
    }
    return eng_opt_sinks_valid(o);
}

/* What one run holds, released by run_release in the reverse order. */
struct run {
    struct eng_options o;
    struct eng_cli_sinks cs;
    struct eng_admin *admin;
    struct eng_dlq *dlq; /* the source's, for rows that are not events */
    int lock_fd;
    int64_t batch_events, batch_ms;
};

/* Starts the admin endpoint (unless --admin-addr off), the source's dead-letter table and the
 * pipeline. Returns 0 or -1 with err set. */
static int run_start(struct run *r, struct eng_error *err)
{
    eng_cli_catch_stop_signals(on_signal);
    if (strcmp(eng_opt(&r->o, OPT_ADMIN_ADDR), "off") != 0) {
        struct eng_admin_hooks hooks = {.ready = ready_hook, .ctx = &r->cs};
        r->admin = eng_admin_start(eng_opt(&r->o, OPT_ADMIN_ADDR), hooks, err);
        if (r->admin == NULL)
            return -1;
    }
    r->dlq = eng_dlq_create(eng_opt(&r->o, OPT_PG), eng_opt(&r->o, OPT_DLQ_TABLE));
    return eng_pipeline_start(r->cs.pipeline, err);
}

/* Consumes the Kafka topic until stopped. Returns 0 or -1 with err set. */
static int run_kafka(struct run *r, struct eng_error *err)
{
    size_t nprops;
    char **props = eng_opt_lines(&r->o, OPT_KAFKA_PROPERTY, &nprops);
    struct eng_kafka_source_options kopt = {
        .bootstrap = eng_opt(&r->o, OPT_KAFKA),
        .group = eng_opt(&r->o, OPT_GROUP),
        .topic = eng_opt(&r->o, OPT_TOPIC),
        .content_topic = eng_opt(&r->o, OPT_CONTENT_TOPIC),
        .conninfo = eng_opt(&r->o, OPT_PG),
        .props = (const char *const *)props,
        .nprops = nprops,
        .batch_max_events = (uint32_t)r->batch_events,
        .batch_max_us = r->batch_ms * 1000,
        .snapshot_reads = eng_opt_flag(&r->o, OPT_SNAPSHOT_READS),
        .state_dir = eng_opt(&r->o, OPT_STATE_DIR),
        .dlq = r->dlq,
    };
    eng_info("msg=\"starting\" source=kafka sinks=%s", r->cs.names);
    int rc = eng_kafka_source_run(&kopt, r->cs.pipeline, &stop_requested, err);
    eng_opt_lines_free(props);
    return rc != 0 ? -1 : 0;
}

/* Streams from the slot until stopped. Returns 0 or -1 with err set. */
static int run_stream(struct run *r, struct eng_error *err)
{
    if (strcmp(eng_opt(&r->o, OPT_SOURCE), "kafka") == 0)
        return run_kafka(r, err);
    struct eng_pg_source_options sopt = {
        .conninfo = eng_opt(&r->o, OPT_PG),
        .slot = eng_opt(&r->o, OPT_SLOT),
        .publication = eng_opt(&r->o, OPT_PUBLICATION),
        .state_dir = eng_opt(&r->o, OPT_STATE_DIR),
        .batch_max_events = (uint32_t)r->batch_events,
        .batch_max_us = r->batch_ms * 1000,
        .status_interval_us = 10000000,
        .dlq = r->dlq,
    };
    eng_info("msg=\"starting\" sinks=%s", r->cs.names);
    return eng_pg_source_run(&sopt, r->cs.pipeline, &stop_requested, err) != 0 ? -1 : 0;
}

static void run_release(struct run *r, int status)
{
    eng_admin_stop(r->admin); /* first: /readyz reads the pipeline */
    eng_cli_sinks_destroy(&r->cs);
    eng_dlq_destroy(r->dlq);
    eng_options_free(&r->o);
    if (r->lock_fd >= 0) {
        close(r->lock_fd);
        /* last, after every thread has ended: nothing is logged after it */
        if (status == 0)
            eng_info("msg=\"stopped\"");
    }
}

int eng_cmd_run(int argc, char **argv)
{
    struct run r = {.lock_fd = -1, .batch_events = 10000, .batch_ms = 50};
    struct eng_error err;
    eng_error_clear(&err);
    int prc = eng_options_parse(&r.o, ENG_CMD_RUN, argc, argv, usage);
    if (prc != 0) {
        eng_options_free(&r.o);
        return prc > 0 ? 0 : 2;
    }
    int status = 2;
    if (!check_run_options(&r.o, &r.batch_events, &r.batch_ms))
        goto out;
    status = 1;
    r.lock_fd = eng_cli_lock_state_dir(eng_opt(&r.o, OPT_STATE_DIR));
    if (r.lock_fd < 0)
        goto out;
    int crc = eng_cli_sinks_create(&r.o, true, true, &r.cs, &err);
    if (crc != 0) {
        status = crc;
        if (crc == 2)
            goto out;
        goto fail;
    }
    if (run_start(&r, &err) != 0 || run_stream(&r, &err) != 0)
        goto fail;
    status = 0;
    goto out;
fail:
    eng_error("msg=\"%s\"", err.msg);
    status = 1;
out:
    run_release(&r, status);
    return status;
}
