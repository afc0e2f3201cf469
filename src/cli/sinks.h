/* engage: the sinks and the pipeline that `run` and `backfill` build from the shared
 * options. Ownership: struct eng_cli_sinks owns the pipeline (and through it the sinks) and
 * the HTTP sink's dead-letter connection; eng_cli_sinks_destroy releases them. */
#ifndef ENG_CLI_SINKS_H
#define ENG_CLI_SINKS_H

#include <stdbool.h>

#include "../core/error.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"
#include "../sink/http.h"
#include "options.h"

struct eng_cli_sinks {
    struct eng_pipeline *pipeline;
    struct eng_dlq *http_dlq;
    /* With streaming and an HTTP sink: the outbox drainer, its own HTTP sink and the scratch
     * table that sink parks in. */
    struct eng_outbox *outbox;
    struct eng_sink *outbox_writer;
    bool outbox_writer_open;
    struct eng_dlq *outbox_scratch;
    struct eng_redis_repair *redis_repair; /* NULL unless rebuild_redis and a Redis sink */
    char names[64];                        /* "clickhouse,redis": for the log */
};

/* Creates every sink the options enable (a sink listed in --sinks, or, without --sinks, every
 * sink with a URL; the HTTP sink without --sinks only when http_by_default) and a pipeline
 * over them, not started. With streaming (engage run), Redis is rebuilt from PostgreSQL
 * whenever the Redis sink finds it lost what engage wrote (src/source/redis_repair.h), and
 * the HTTP sink's outbox is drained by a thread of its own (src/dlq/outbox.h). Returns 0; 2
 * after printing a usage error; 1 with err set. */
int eng_cli_sinks_create(const struct eng_options *o, bool http_by_default, bool streaming,
                         struct eng_cli_sinks *out, struct eng_error *err) ENG_MUSTCHECK;

/* Ready when the pipeline is healthy and Redis is not being rebuilt; otherwise false with
 * the reason in why. Any thread. */
bool eng_cli_sinks_ready(struct eng_cli_sinks *cs, char *why, size_t whylen);

/* Fills the HTTP sink's options from --http-batch, --http-timeout-ms, --http-max-attempts,
 * --http-retry-budget-ms, --http-inflight, --http-rate and --http-token-file; what is not
 * given keeps the sink's defaults (eng_http_options_default), dlq is left NULL. Returns
 * false after printing a usage error. */
bool eng_cli_http_options(const struct eng_options *o, struct eng_http_options *out);

/* Sets the log level from --log-level; false after printing a usage error. */
bool eng_cli_log_level(const struct eng_options *o);

/* Calls handler on SIGTERM and SIGINT, and ignores SIGPIPE. */
void eng_cli_catch_stop_signals(void (*handler)(int));

/* Stops and frees the pipeline, its sinks and the dead-letter connection. */
void eng_cli_sinks_destroy(struct eng_cli_sinks *cs);

/* Takes the state directory's lock (flock on DIR/lock, created with the directory when
 * missing), so that a second engage on the same directory refuses at once instead of waiting
 * on the slot. Returns the descriptor that holds the lock until it is closed (or the process
 * ends), or -1 after logging why. */
int eng_cli_lock_state_dir(const char *dir);

#endif
