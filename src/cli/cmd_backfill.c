/* engage backfill: a time range of engagement_events -> enrichment -> sinks. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "../source/backfill.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

static const char usage[] =
    "usage: engage backfill --pg CONNINFO --start T --end T [--clickhouse URL] [--redis URL]\n"
    "                       [--sinks LIST] [OPTIONS]\n"
    "\n"
    "Writes the events with start <= event_ts < end through the same enrichment and sinks as\n"
    "`engage run`, in (event_ts, event_id) order, a page at a time. Safe to run twice or while\n"
    "`run` is live (every sink is idempotent by event_id). Stopped (SIGINT/SIGTERM) or failed,\n"
    "the same command resumes after the last page every sink made durable.\n"
    "\n"
    "  --start T, --end T     the range of event_ts, any timestamp PostgreSQL reads\n"
    "                         ('2026-01-08 14:00', '2026-01-08T14:00:00')     (ENGAGE_START/END)\n"
    "  --pg CONNINFO          libpq conninfo or URI                      (ENGAGE_PG)\n"
    "  --clickhouse URL       http://[user:pass@]host:port               (ENGAGE_CLICKHOUSE)\n"
    "  --redis URL            redis://[:pass@]host:port[/db]             (ENGAGE_REDIS)\n"
    "  --http URL             base URL of the external API; used only when --sinks names it\n"
    "  --sinks LIST           clickhouse,redis,http,stdout (default: ClickHouse and Redis,\n"
    "                         those with a URL)\n"
    "  --batch-events N       rows per page and per batch (default 10000)\n"
    "  --state-dir DIR        where the resume point is kept (default ./engage-state)\n"
    "  --clickhouse-interval-ms N  least time between two inserts (default 0: at once)\n"
    "  --redis-call-events N  events per Redis script call (default 25000; each call holds\n"
    "                         Redis for about 35 ms: less for a live Redis that must stay\n"
    "                         responsive, at the price of a slower backfill)\n"
    "  --queue-depth N, --queue-mb N, --seen-ttl SECONDS, --http-* , --dlq-table NAME\n"
    "                         as for `engage run`\n"
    "  --log-level LEVEL      debug, info, warn, error (default info)\n"
    "  --config FILE          `name = value` lines with these option names (ENGAGE_CONFIG)\n"
    "\n"
    "On a terminal, a progress line on stderr: events done of the total, rate, time left. At\n"
    "the end, one summary line on stdout (`backfill done: ...` or `backfill stopped: ...`).\n"
    "\n"
    "Exit status: 0 when the whole range is durable in every sink, 1 on an error, 2 on a usage\n"
    "error, 3 when stopped before the end (run it again to resume).\n";

static volatile sig_atomic_t stop_requested;

/* The line a person or a script reads at the end, whether or not stderr is a terminal. */
static void print_summary(const char *what, const struct eng_backfill_stats *st, int64_t us,
                          const char *sinks)
{
    double secs = (double)us / 1e6;
    printf("backfill %s: %llu events in %.1f s (%.0f/s) to %s; %llu parked in the dead-letter "
           "table, %llu without a content row%s\n",
           what, (unsigned long long)st->events, secs, secs > 0 ? (double)st->events / secs : 0.0,
           sinks, (unsigned long long)st->parked, (unsigned long long)st->misses,
           st->resumed ? "; resumed from an earlier run" : "");
    fflush(stdout);
}

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int eng_cmd_backfill(int argc, char **argv)
{
    struct eng_options o;
    struct eng_error err;
    struct eng_cli_sinks cs = {0};
    struct eng_dlq *dlq = NULL;
    int status = 1;
    int64_t page = 10000;

    eng_error_clear(&err);
    int prc = eng_options_parse(&o, ENG_CMD_BACKFILL, argc, argv, usage);
    if (prc != 0) {
        eng_options_free(&o);
        return prc > 0 ? 0 : 2;
    }
    if (!eng_cli_log_level(&o)) {
        status = 2;
        goto out;
    }
    if (!eng_opt_int(&o, OPT_BATCH_EVENTS, 1, 100000, &page)) {
        status = 2;
        goto out;
    }
    if (eng_opt(&o, OPT_PG) == NULL || eng_opt(&o, OPT_START) == NULL ||
        eng_opt(&o, OPT_END) == NULL) {
        fprintf(stderr, "engage: backfill needs --pg, --start and --end\n\n%s", usage);
        status = 2;
        goto out;
    }
    int crc = eng_cli_sinks_create(&o, false, false, &cs, &err);
    if (crc == 2) {
        status = 2;
        goto out;
    }
    if (crc != 0)
        goto fail;

    eng_cli_catch_stop_signals(on_signal);

    dlq = eng_dlq_create(eng_opt(&o, OPT_PG), eng_opt(&o, OPT_DLQ_TABLE));
    if (eng_pipeline_start(cs.pipeline, &err) != 0)
        goto fail;
    struct eng_backfill_options bopt = {
        .conninfo = eng_opt(&o, OPT_PG),
        .start = eng_opt(&o, OPT_START),
        .end = eng_opt(&o, OPT_END),
        .page_events = (uint32_t)page,
        .state_dir = eng_opt(&o, OPT_STATE_DIR),
        .progress = isatty(STDERR_FILENO) == 1,
        .dlq = dlq,
    };
    struct eng_backfill_stats st = {0};
    eng_info("msg=\"starting backfill\" sinks=%s", cs.names);
    int64_t started = eng_clock_mono_us();
    int rc = eng_backfill_run(&bopt, cs.pipeline, &stop_requested, &st, &err);
    if (rc == ENG_ESTOPPED) {
        eng_warn("msg=\"%s\" events=%llu", err.msg, (unsigned long long)st.events);
        print_summary("stopped (run it again to resume)", &st, eng_clock_mono_us() - started,
                      cs.names);
        status = 3;
        goto out;
    }
    if (rc != 0)
        goto fail;
    eng_info("msg=\"backfill done\" events=%llu parked=%llu content_misses=%llu resumed=%s",
             (unsigned long long)st.events, (unsigned long long)st.parked,
             (unsigned long long)st.misses, st.resumed ? "yes" : "no");
    print_summary("done", &st, eng_clock_mono_us() - started, cs.names);
    status = 0;
    goto out;
fail:
    eng_error("msg=\"%s\"", err.msg);
    status = 1;
out:
    eng_cli_sinks_destroy(&cs);
    eng_dlq_destroy(dlq);
    eng_options_free(&o);
    return status;
}
