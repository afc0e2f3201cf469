/* engage capture: PostgreSQL logical replication -> Kafka, as Debezium's PostgreSQL connector
 * writes it. The PostgreSQL source in capture mode, one Kafka sink, the same checkpoint: the
 * slot's flush LSN is confirmed only after the broker acknowledged every record up to it. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../admin/admin.h"
#include "../core/log.h"
#include "../decode/debezium_out.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"
#include "../sink/kafka.h"
#include "../source/capture.h"
#include "../source/pg.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

static const char usage[] =
    "usage: engage capture --pg CONNINFO --kafka BOOTSTRAP [OPTIONS]\n"
    "\n"
    "A drop-in for Debezium's PostgreSQL connector: every insert, update and delete of\n"
    "engagement_events and content, from the replication slot to the topics\n"
    "PREFIX.public.engagement_events and PREFIX.public.content in Debezium's JSON envelope\n"
    "(with a tombstone after each delete), keyed by content_id and partitioned as Kafka's Java\n"
    "client does. A slot's position is confirmed only once the broker acknowledged every record\n"
    "before it. Changes are captured from the slot's creation on (Debezium's\n"
    "snapshot.mode=no_data); older rows go through `engage backfill`.\n"
    "\n"
    "  --pg CONNINFO          libpq conninfo or URI                      (ENGAGE_PG)\n"
    "  --kafka BOOTSTRAP      host:port[,host:port] of the brokers       (ENGAGE_KAFKA)\n"
    "  --topic-prefix P       Debezium's topic.prefix (default dbserver1)\n"
    "  --key content_id|primary  engagement_events' record key (default content_id, the\n"
    "                         brief's partition key; primary: event_id, Debezium's default)\n"
    "  --no-schemas           the JSON converter's schemas.enable=false form\n"
    "  --partitions N         partitions of a topic capture creates (default 1)\n"
    "  -X, --kafka-property K=V  a librdkafka property (TLS, SASL, ...); repeatable\n"
    "  --slot NAME            replication slot (default engage_capture)\n"
    "  --publication NAME     publication (default engage_pub)\n"
    "  --state-dir DIR        checkpoint state (default ./engage-capture-state)\n"
    "  --admin-addr HOST:PORT /metrics, /healthz, /readyz (default 127.0.0.1:9188; 'off')\n"
    "  --batch-events N       records per micro-batch (default 10000)\n"
    "  --batch-ms N           longest a batch stays open, ms (default 50)\n"
    "  --queue-depth N        batches queued before the source waits (default 1024)\n"
    "  --queue-mb N           or megabytes queued, whichever first (default 32)\n"
    "  --dlq-table NAME       dead-letter table in PostgreSQL (default engage_dlq)\n"
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

/* What one capture holds, released by capture_release. */
struct capture_run {
    struct eng_options o;
    struct eng_pipeline *pipeline;
    struct eng_capture *capture;
    struct eng_admin *admin;
    struct eng_dlq *dlq;
    char **props;
    size_t nprops;
    int lock_fd;
    int64_t batch_events, batch_ms, partitions, depth, queue_mb;
    char topics[2][300];
    char run_id[40];
};

static bool ready_hook(void *ctx, char *why, size_t whylen)
{
    return eng_pipeline_healthy(ctx, why, whylen);
}

static bool check_options(struct capture_run *c)
{
    const struct eng_options *o = &c->o;
    if (!eng_cli_log_level(o) || !eng_opt_int(o, OPT_BATCH_EVENTS, 1, 1000000, &c->batch_events) ||
        !eng_opt_int(o, OPT_BATCH_MS, 1, 60000, &c->batch_ms) ||
        !eng_opt_int(o, OPT_PARTITIONS, 1, 100000, &c->partitions) ||
        !eng_opt_int(o, OPT_QUEUE_DEPTH, 1, 1000000, &c->depth) ||
        !eng_opt_int(o, OPT_QUEUE_MB, 1, 65536, &c->queue_mb))
        return false;
    const char *key = eng_opt(o, OPT_KEY);
    if (strcmp(key, "content_id") != 0 && strcmp(key, "primary") != 0) {
        fprintf(stderr, "engage: --key must be content_id or primary, not \"%s\"\n", key);
        return false;
    }
    if (eng_opt(o, OPT_PG) == NULL || eng_opt(o, OPT_KAFKA) == NULL) {
        fprintf(stderr, "engage: --pg and --kafka (or ENGAGE_PG, ENGAGE_KAFKA) are required\n\n%s",
                usage);
        return false;
    }
    return true;
}

/* A version 4 UUID for Debezium's runId header: new for each run. */
static void new_run_id(char *out, size_t outlen)
{
    unsigned char r[16] = {0};
    FILE *f = fopen("/dev/urandom", "rb");
    if (f == NULL || fread(r, 1, sizeof(r), f) != sizeof(r))
        eng_die("could not read /dev/urandom");
    fclose(f);
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(out, outlen, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
             r[14], r[15]);
}

/* The Kafka sink and the pipeline over it. Returns 0 or 1 with err set. */
static int make_pipeline(struct capture_run *c, struct eng_error *err)
{
    const char *prefix = eng_opt(&c->o, OPT_TOPIC_PREFIX);
    struct eng_kafka_sink_options k = {
        .bootstrap = eng_opt(&c->o, OPT_KAFKA),
        .ntopics = 2,
        .partitions = (int)c->partitions,
        .compact = {false, true},
        .barrier_topic = ENG_CAPTURE_CONTENT,
    };
    for (int t = 0; t < 2; t++) {
        eng_capture_topic(prefix, (enum eng_capture_topic)t, c->topics[t], sizeof(c->topics[t]));
        k.topics[t] = c->topics[t];
    }
    struct eng_dbz_header h[ENG_DBZ_NHEADERS];
    new_run_id(c->run_id, sizeof(c->run_id));
    eng_dbz_headers(prefix, c->run_id, h);
    for (size_t i = 0; i < ENG_DBZ_NHEADERS; i++)
        k.headers[k.nheaders++] = (struct eng_kafka_header){h[i].name, h[i].value};
    c->props = eng_opt_lines(&c->o, OPT_KAFKA_PROPERTY, &c->nprops);
    if (c->nprops > ENG_KAFKA_MAX_PROPS)
        return eng_error_set(err, ENG_EINVAL, false, "more than %d kafka properties",
                             ENG_KAFKA_MAX_PROPS),
               1;
    for (size_t i = 0; i < c->nprops; i++)
        k.props[k.nprops++] = c->props[i];
    struct eng_sink *sink = eng_kafka_sink_create(&k, err);
    if (sink == NULL)
        return 1;
    struct eng_pipeline_options popt = {.queue_depth = (uint32_t)c->depth,
                                        .queue_bytes = (size_t)c->queue_mb << 20,
                                        .dlq_conninfo = eng_opt(&c->o, OPT_PG),
                                        .dlq_table = eng_opt(&c->o, OPT_DLQ_TABLE)};
    c->pipeline = eng_pipeline_create(&sink, 1, &popt, err);
    return c->pipeline != NULL ? 0 : 1;
}

static int capture_start(struct capture_run *c, struct eng_error *err)
{
    eng_cli_catch_stop_signals(on_signal);
    if (make_pipeline(c, err) != 0)
        return -1;
    if (strcmp(eng_opt(&c->o, OPT_ADMIN_ADDR), "off") != 0) {
        struct eng_admin_hooks hooks = {.ready = ready_hook, .ctx = c->pipeline};
        c->admin = eng_admin_start(eng_opt(&c->o, OPT_ADMIN_ADDR), hooks, err);
        if (c->admin == NULL)
            return -1;
    }
    c->dlq = eng_dlq_create(eng_opt(&c->o, OPT_PG), eng_opt(&c->o, OPT_DLQ_TABLE));
    struct eng_capture_options copt = {
        .conninfo = eng_opt(&c->o, OPT_PG),
        .prefix = eng_opt(&c->o, OPT_TOPIC_PREFIX),
        .key_primary = strcmp(eng_opt(&c->o, OPT_KEY), "primary") == 0,
        .schemas = !eng_opt_flag(&c->o, OPT_NO_SCHEMAS),
    };
    c->capture = eng_capture_create(&copt);
    return eng_pipeline_start(c->pipeline, err) != 0 ? -1 : 0;
}

static int capture_stream(struct capture_run *c, struct eng_error *err)
{
    struct eng_pg_capture hook = {
        .change = eng_capture_change, .snapshot = eng_capture_snapshot, .ctx = c->capture};
    struct eng_pg_source_options sopt = {
        .conninfo = eng_opt(&c->o, OPT_PG),
        .slot = eng_opt(&c->o, OPT_SLOT),
        .publication = eng_opt(&c->o, OPT_PUBLICATION),
        .state_dir = eng_opt(&c->o, OPT_STATE_DIR),
        .batch_max_events = (uint32_t)c->batch_events,
        .batch_max_us = c->batch_ms * 1000,
        .status_interval_us = 10000000,
        .dlq = c->dlq,
        .capture = &hook,
    };
    eng_info("msg=\"capturing\" topics=%s,%s run_id=%s", c->topics[0], c->topics[1], c->run_id);
    return eng_pg_source_run(&sopt, c->pipeline, &stop_requested, err) != 0 ? -1 : 0;
}

static void capture_release(struct capture_run *c, int status)
{
    eng_admin_stop(c->admin);
    eng_pipeline_destroy(c->pipeline);
    eng_capture_destroy(c->capture);
    eng_dlq_destroy(c->dlq);
    eng_opt_lines_free(c->props);
    eng_options_free(&c->o);
    if (c->lock_fd >= 0) {
        close(c->lock_fd);
        if (status == 0)
            eng_info("msg=\"stopped\"");
    }
}

int eng_cmd_capture(int argc, char **argv)
{
    struct capture_run c = {.lock_fd = -1,
                            .batch_events = 10000,
                            .batch_ms = 50,
                            .partitions = 1,
                            .depth = 1024,
                            .queue_mb = 128};
    struct eng_error err;
    eng_error_clear(&err);
    int prc = eng_options_parse(&c.o, ENG_CMD_CAPTURE, argc, argv, usage);
    if (prc != 0) {
        eng_options_free(&c.o);
        return prc > 0 ? 0 : 2;
    }
    int status = 2;
    if (!check_options(&c))
        goto out;
    status = 1;
    c.lock_fd = eng_cli_lock_state_dir(eng_opt(&c.o, OPT_STATE_DIR));
    if (c.lock_fd < 0)
        goto out;
    if (capture_start(&c, &err) != 0 || capture_stream(&c, &err) != 0) {
        eng_error("msg=\"%s\"", err.msg);
        goto out;
    }
    status = 0;
out:
    capture_release(&c, status);
    return status;
}
