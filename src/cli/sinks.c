#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/log.h"

#include "../sink/clickhouse.h"
#include "../sink/http.h"
#include "../sink/redis.h"
#include "../sink/stdout.h"
#include "../source/redis_repair.h"
#include "../dlq/outbox.h"
#include "../dlq/replay.h"
#include "sinks.h"

/* The sink's URL, or NULL after printing why it is missing. */
static const char *sink_url(const struct eng_options *o, const char *name, enum eng_opt_id id)
{
    const char *url = eng_opt(o, id);
    if (url == NULL)
        fprintf(stderr, "engage: the %s sink needs --%s URL\n", name, name);
    return url;
}

static void add_name(struct eng_cli_sinks *cs, const char *name)
{
    size_t used = strlen(cs->names);
    snprintf(cs->names + used, sizeof(cs->names) - used, "%s%s", used ? "," : "", name);
}

bool eng_cli_http_options(const struct eng_options *o, struct eng_http_options *out)
{
    /* Options not given keep the sink's defaults (eng_http_options_default). */
    eng_http_options_default(out);
    int64_t batch = out->batch_size, timeout = out->timeout_ms, attempts = out->max_attempts;
    int64_t budget = out->retry_budget_ms, inflight = out->max_in_flight;
    if (!eng_opt_int(o, OPT_HTTP_BATCH, 1, 10000, &batch) ||
        !eng_opt_int(o, OPT_HTTP_TIMEOUT_MS, 1, 3600000, &timeout) ||
        !eng_opt_int(o, OPT_HTTP_MAX_ATTEMPTS, 1, 1000, &attempts) ||
        !eng_opt_int(o, OPT_HTTP_RETRY_BUDGET_MS, 1, 86400000, &budget) ||
        !eng_opt_int(o, OPT_HTTP_INFLIGHT, 1, 256, &inflight) ||
        !eng_opt_double(o, OPT_HTTP_RATE, 0, 1000000, &out->rate))
        return false;
    out->batch_size = (uint32_t)batch;
    out->timeout_ms = timeout;
    out->max_attempts = (uint32_t)attempts;
    out->retry_budget_ms = budget;
    out->max_in_flight = (uint32_t)inflight;
    out->token_file = eng_opt(o, OPT_HTTP_TOKEN_FILE);
    return true;
}

bool eng_cli_log_level(const struct eng_options *o)
{
    enum eng_log_level level;
    if (!eng_log_parse_level(eng_opt(o, OPT_LOG_LEVEL), &level)) {
        fprintf(stderr, "engage: unknown log level \"%s\"\n", eng_opt(o, OPT_LOG_LEVEL));
        return false;
    }
    eng_log_set_level(level);
    return true;
}

void eng_cli_catch_stop_signals(void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The numbers the sinks and the pipeline take from the options. */
struct sink_numbers {
    int64_t depth, queue_mb, ch_interval_ms, seen_ttl, call_events;
};

/* The sinks created so far, in the order the pipeline gets them. */
struct sink_list {
    struct eng_sink *v[8];
    size_t n;
};

/* Reads the numbers and checks --sinks and the HTTP options (into *hopt); false after
 * printing a usage error. */
static bool read_numbers(const struct eng_options *o, struct sink_numbers *nums,
                         struct eng_http_options *hopt)
{
    *nums = (struct sink_numbers){
        .depth = 1024, .queue_mb = 128, .ch_interval_ms = 200, .call_events = 1000};
    return eng_opt_int(o, OPT_QUEUE_DEPTH, 1, 1 << 20, &nums->depth) &&
           eng_opt_int(o, OPT_QUEUE_MB, 1, 1 << 20, &nums->queue_mb) &&
           eng_opt_int(o, OPT_CLICKHOUSE_INTERVAL_MS, 0, 60000, &nums->ch_interval_ms) &&
           eng_opt_int(o, OPT_SEEN_TTL, 0, UINT32_MAX, &nums->seen_ttl) &&
           eng_opt_int(o, OPT_REDIS_CALL_EVENTS, 1, 100000, &nums->call_events) &&
           eng_cli_http_options(o, hopt) && eng_opt_sinks_valid(o);
}

/* Each add_* creates one sink into list (and names it in out); returns 0, 2 after printing a
 * usage error, or 1 with err set. */
static int add_clickhouse(const struct eng_options *o, const struct sink_numbers *nums,
                          struct sink_list *list, struct eng_cli_sinks *out, struct eng_error *err)
{
    const char *url = sink_url(o, "clickhouse", OPT_CLICKHOUSE);
    if (url == NULL)
        return 2;
    struct eng_sink *sink = eng_clickhouse_sink_create(url, err);
    if (sink == NULL)
        return 1;
    sink->min_write_interval_us = nums->ch_interval_ms * 1000;
    list->v[list->n++] = sink;
    add_name(out, "clickhouse");
    return 0;
}

static int add_redis(const struct eng_options *o, const struct sink_numbers *nums, bool streaming,
                     struct sink_list *list, struct eng_cli_sinks *out, struct eng_error *err)
{
    const char *url = sink_url(o, "redis", OPT_REDIS);
    if (url == NULL)
        return 2;
    struct eng_redis_options ropt;
    eng_redis_options_init(&ropt);
    ropt.seen_ttl_s = (uint32_t)nums->seen_ttl;
    ropt.max_events_per_call = (uint32_t)nums->call_events;
    if (streaming) {
        struct eng_redis_repair_options rr = {.conninfo = eng_opt(o, OPT_PG),
                                              .dlq_table = eng_opt(o, OPT_DLQ_TABLE),
                                              .redis_url = url,
                                              .redis = ropt,
                                              .state_dir = eng_opt(o, OPT_STATE_DIR)};
        out->redis_repair = eng_redis_repair_create(&rr, err);
        if (out->redis_repair == NULL)
            return 1;
        eng_redis_repair_attach(out->redis_repair, &ropt);
    }
    struct eng_sink *sink = eng_redis_sink_create(url, &ropt, err);
    if (sink == NULL)
        return 1;
    list->v[list->n++] = sink;
    add_name(out, "redis");
    return 0;
}

/* The outbox drainer's writer: its own HTTP sink, opened at the first round. */
static int outbox_write(void *ctx, const struct eng_batch *b, struct eng_error *err)
{
    struct eng_cli_sinks *cs = ctx;
    if (!cs->outbox_writer_open) {
        if (eng_sink_open(cs->outbox_writer, err) != 0)
            return -1;
        cs->outbox_writer_open = true;
    }
    return eng_sink_write(cs->outbox_writer, b, err);
}

static void outbox_cancel(void *ctx)
{
    struct eng_cli_sinks *cs = ctx;
    eng_http_sink_cancel(cs->outbox_writer);
}

/* Starts the drainer of the HTTP sink's outbox, with a sink of its own that parks what it
 * cannot deliver in the replay's scratch table. Returns 0 or 1 with err set. */
static int start_outbox(const struct eng_options *o, const char *url,
                        const struct eng_http_options *hopt, struct eng_cli_sinks *out,
                        struct eng_error *err)
{
    struct eng_http_options wopt = *hopt;
    out->outbox_scratch = eng_dlq_create(eng_opt(o, OPT_PG), ENG_DLQ_REPLAY_SCRATCH);
    wopt.dlq = out->outbox_scratch;
    out->outbox_writer = eng_http_sink_create(url, &wopt, err);
    if (out->outbox_writer == NULL)
        return 1;
    struct eng_outbox_options oo = {.conninfo = eng_opt(o, OPT_PG),
                                    .table = eng_opt(o, OPT_DLQ_TABLE),
                                    .request_size = hopt->batch_size,
                                    .write = outbox_write,
                                    .cancel = outbox_cancel,
                                    .ctx = out,
                                    .scratch = out->outbox_scratch};
    out->outbox = eng_outbox_start(&oo, err);
    return out->outbox != NULL ? 0 : 1;
}

static int add_http(const struct eng_options *o, struct eng_http_options *hopt, bool streaming,
                    struct sink_list *list, struct eng_cli_sinks *out, struct eng_error *err)
{
    const char *url = sink_url(o, "http", OPT_HTTP);
    if (url == NULL)
        return 2;
    /* The sink thread parks through a dlq of its own (one connection per thread). */
    out->http_dlq = eng_dlq_create(eng_opt(o, OPT_PG), eng_opt(o, OPT_DLQ_TABLE));
    hopt->dlq = out->http_dlq;
    struct eng_sink *sink = eng_http_sink_create(url, hopt, err);
    if (sink == NULL)
        return 1;
    list->v[list->n++] = sink;
    add_name(out, "http");
    return streaming ? start_outbox(o, url, hopt, out, err) : 0;
}

/* Creates every sink the options enable, in the order clickhouse, redis, http, stdout. */
static int add_sinks(const struct eng_options *o, const struct sink_numbers *nums,
                     struct eng_http_options *hopt, bool http_by_default, bool streaming,
                     struct sink_list *list, struct eng_cli_sinks *out, struct eng_error *err)
{
    int rc = 0;
    if (rc == 0 && eng_opt_sink_enabled(o, "clickhouse"))
        rc = add_clickhouse(o, nums, list, out, err);
    if (rc == 0 && eng_opt_sink_enabled(o, "redis"))
        rc = add_redis(o, nums, streaming, list, out, err);
    if (rc == 0 && eng_opt_sink_enabled(o, "http") &&
        (http_by_default || eng_opt(o, OPT_SINKS) != NULL))
        rc = add_http(o, hopt, streaming, list, out, err);
    if (rc == 0 && eng_opt_sink_enabled(o, "stdout")) {
        list->v[list->n++] = eng_stdout_sink_create(1);
        add_name(out, "stdout");
    }
    if (rc == 0 && list->n == 0) {
        fprintf(stderr, "engage: no sink configured: give --clickhouse, --redis or --http\n");
        rc = 2;
    }
    return rc;
}

/* Stops the outbox's drainer, then frees its sink and scratch table. */
static void outbox_release(struct eng_cli_sinks *cs)
{
    eng_outbox_stop(cs->outbox);
    cs->outbox = NULL;
    eng_sink_destroy(cs->outbox_writer);
    cs->outbox_writer = NULL;
    eng_dlq_destroy(cs->outbox_scratch);
    cs->outbox_scratch = NULL;
}

int eng_cli_sinks_create(const struct eng_options *o, bool http_by_default, bool streaming,
                         struct eng_cli_sinks *out, struct eng_error *err)
{
    struct sink_numbers nums;
    struct eng_http_options hopt;
    struct sink_list list = {.n = 0};
    memset(out, 0, sizeof(*out));
    if (!read_numbers(o, &nums, &hopt))
        return 2;
    int rc = add_sinks(o, &nums, &hopt, http_by_default, streaming, &list, out, err);
    if (rc != 0)
        goto fail;
    /* Events a sink refuses for good are parked in the dead-letter table under its name. */
    struct eng_pipeline_options popt = {.queue_depth = (uint32_t)nums.depth,
                                        .queue_bytes = (size_t)nums.queue_mb << 20,
                                        .dlq_conninfo = eng_opt(o, OPT_PG),
                                        .dlq_table = eng_opt(o, OPT_DLQ_TABLE)};
    out->pipeline = eng_pipeline_create(list.v, list.n, &popt, err);
    list.n = 0; /* now owned by the pipeline */
    if (out->pipeline != NULL)
        return 0;
    rc = 1;
fail:
    for (size_t i = 0; i < list.n; i++)
        eng_sink_destroy(list.v[i]);
    eng_dlq_destroy(out->http_dlq);
    out->http_dlq = NULL;
    eng_redis_repair_destroy(out->redis_repair);
    out->redis_repair = NULL;
    outbox_release(out);
    return rc;
}

bool eng_cli_sinks_ready(struct eng_cli_sinks *cs, char *why, size_t whylen)
{
    if (!eng_pipeline_healthy(cs->pipeline, why, whylen))
        return false;
    return cs->redis_repair == NULL || eng_redis_repair_ready(cs->redis_repair, why, whylen);
}

void eng_cli_sinks_destroy(struct eng_cli_sinks *cs)
{
    outbox_release(cs);
    eng_pipeline_destroy(cs->pipeline);
    cs->pipeline = NULL;
    eng_dlq_destroy(cs->http_dlq);
    cs->http_dlq = NULL;
    eng_redis_repair_destroy(cs->redis_repair); /* after the sinks that report to it */
    cs->redis_repair = NULL;
}

/* Takes the state directory's lock (flock on DIR/lock, created with the directory when
 * missing), so that a second engage on the same directory refuses at once instead of waiting
 * on the slot. Returns the descriptor that holds the lock until it is closed (or the process
 * ends), or -1 after logging why. */
int eng_cli_lock_state_dir(const char *dir)
{
    char path[4096];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        eng_error("msg=\"could not create the state directory\" dir=\"%s\" error=\"%s\"", dir,
                  strerror(errno));
        return -1;
    }
    if ((size_t)snprintf(path, sizeof(path), "%s/lock", dir) >= sizeof(path)) {
        eng_error("msg=\"state directory path too long\" dir=\"%s\"", dir);
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        eng_error("msg=\"could not open the state directory's lock\" path=\"%s\" error=\"%s\"",
                  path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char holder[32] = "";
        ssize_t n = pread(fd, holder, sizeof(holder) - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            eng_error("msg=\"the state directory is in use by another engage (runbook: stop that "
                      "one, or give this one its own --state-dir and --slot)\" dir=\"%s\" "
                      "holder_pid=%s",
                      dir, holder[0] ? holder : "unknown");
        else
            eng_error("msg=\"could not lock the state directory\" path=\"%s\" error=\"%s\"", path,
                      strerror(e));
        close(fd);
        return -1;
    }
    char pid[32];
    int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        eng_warn("msg=\"could not write the pid into the state directory's lock\" path=\"%s\"",
                 path); /* the lock holds all the same */
    return fd;
}
