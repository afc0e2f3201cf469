/* engage: rebuilding Redis from PostgreSQL after a loss (see redis_repair.h). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/metrics.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../dlq/dlq.h"
#include "../pipeline/pipeline.h"
#include "backfill.h"
#include "redis_repair.h"
#include "state.h"

#define MARK_FILE   "redis.mark"
#define MARK_HEADER "engage-redis-mark 1"
#define RETRY_US    INT64_C(5000000) /* after a rebuild that failed */

struct eng_redis_repair {
    char *conninfo, *dlq_table, *redis_url, *state_dir;
    struct eng_redis_options redis;
    uint32_t page_events;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a loss was reported, or quit */
    bool quit;
    bool pending;                          /* a rebuild into want_gen is needed */
    char want_gen[ENG_REDIS_GEN_LEN + 1];  /* the generation to rebuild */
    char known_gen[ENG_REDIS_GEN_LEN + 1]; /* complete, as redis.mark says ("" none) */
    char why[160];
    volatile sig_atomic_t stop; /* the running rebuild must stop (quit, or a newer loss) */

    struct eng_gauge *m_rebuilding;
    struct eng_counter *m_rebuilds;
};

static int write_mark(FILE *f, void *arg, struct eng_error *err)
{
    (void)err;
    fprintf(f, MARK_HEADER "\n%s\n", (const char *)arg);
    return 0;
}

/* Reads the generation in STATE_DIR/redis.mark into gen ("" when there is no file). */
static int read_mark(const char *dir, char *gen, struct eng_error *err)
{
    char path[4096], line[64];
    snprintf(path, sizeof(path), "%s/%s", dir, MARK_FILE);
    gen[0] = '\0';
    FILE *f;
    int orc = eng_durable_open(path, &f, err);
    if (orc != 0)
        return orc == 1 ? 0 : orc;
    bool ok = fgets(line, sizeof(line), f) != NULL && strcmp(line, MARK_HEADER "\n") == 0 &&
              fgets(line, sizeof(line), f) != NULL && strlen(line) == ENG_REDIS_GEN_LEN + 1 &&
              line[ENG_REDIS_GEN_LEN] == '\n';
    fclose(f);
    if (!ok)
        return eng_error_set(err, ENG_EINVAL, false,
                             "\"%s\" is not a redis mark engage wrote; remove it and engage "
                             "rebuilds redis from postgresql",
                             path);
    memcpy(gen, line, ENG_REDIS_GEN_LEN);
    gen[ENG_REDIS_GEN_LEN] = '\0';
    return 0;
}

/* Records gen as complete; with rep->mu held. */
static void record_complete(struct eng_redis_repair *rep, const char *gen)
{
    struct eng_error err;
    char copy[ENG_REDIS_GEN_LEN + 1];
    memcpy(copy, gen, sizeof(copy));
    if (eng_durable_replace(rep->state_dir, MARK_FILE, write_mark, copy, &err) != 0) {
        /* Not fatal: the next start finds the old generation and rebuilds once more. */
        eng_error("msg=\"could not record the redis generation\" error=\"%s\"", err.msg);
        return;
    }
    memcpy(rep->known_gen, gen, sizeof(rep->known_gen));
}

/* The Redis sinks' on_mark: called on a sink thread after each connection and each loss. */
static void on_mark(void *ctx, const char *gen, bool lost, const char *why)
{
    struct eng_redis_repair *rep = ctx;
    pthread_mutex_lock(&rep->mu);
    if (lost) {
        if (!rep->pending || strcmp(rep->want_gen, gen) != 0) {
            memcpy(rep->want_gen, gen, sizeof(rep->want_gen));
            snprintf(rep->why, sizeof(rep->why), "%s", why);
            rep->pending = true;
            rep->stop = 1; /* a rebuild into an older generation is wasted */
            eng_gauge_set(rep->m_rebuilding, 1);
            pthread_cond_broadcast(&rep->cv);
        }
    } else if (!rep->pending && strcmp(rep->known_gen, gen) != 0) {
        record_complete(rep, gen); /* the first connection to this Redis */
    }
    pthread_mutex_unlock(&rep->mu);
}

/* Writes every event of the table into Redis (generation gen) through a pipeline of one
 * Redis sink. Returns 0 when all of it is durable there. */
static int rebuild(struct eng_redis_repair *rep, struct eng_backfill_stats *st,
                   struct eng_error *err)
{
    struct eng_redis_options ropt = rep->redis;
    ropt.known_gen = NULL; /* take up the generation the live sink made */
    ropt.on_mark = on_mark;
    ropt.mark_ctx = rep;
    struct eng_sink *sink = eng_redis_sink_create(rep->redis_url, &ropt, err);
    if (sink == NULL)
        return err->code;
    struct eng_pipeline_options popt = {.dlq_conninfo = rep->conninfo, .dlq_table = rep->dlq_table};
    struct eng_pipeline *p = eng_pipeline_create(&sink, 1, &popt, err);
    if (p == NULL)
        return err->code;
    struct eng_dlq *dlq = eng_dlq_create(rep->conninfo, rep->dlq_table);
    int rc = eng_pipeline_start(p, err);
    if (rc == 0) {
        struct eng_backfill_options bopt = {.conninfo = rep->conninfo,
                                            .start = "-infinity",
                                            .end = "infinity",
                                            .page_events = rep->page_events,
                                            .dlq = dlq};
        rc = eng_backfill_run(&bopt, p, &rep->stop, st, err);
    }
    eng_pipeline_destroy(p);
    eng_dlq_destroy(dlq);
    return rc;
}

static void wait_us(struct eng_redis_repair *rep, int64_t us)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (us % 1000000) * 1000;
    ts.tv_sec += (time_t)(us / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (!rep->quit && pthread_cond_timedwait(&rep->cv, &rep->mu, &ts) != ETIMEDOUT) {
    }
}

static void *repair_main(void *arg)
{
    struct eng_redis_repair *rep = arg;
    pthread_mutex_lock(&rep->mu);
    for (;;) {
        while (!rep->quit && !rep->pending)
            pthread_cond_wait(&rep->cv, &rep->mu);
        if (rep->quit)
            break;
        char gen[ENG_REDIS_GEN_LEN + 1];
        memcpy(gen, rep->want_gen, sizeof(gen));
        rep->stop = 0;
        eng_warn("msg=\"rebuilding redis from postgresql; not ready until done\" why=\"%s\" "
                 "generation=%s",
                 rep->why, gen);
        pthread_mutex_unlock(&rep->mu);

        int64_t t0 = eng_clock_mono_us();
        struct eng_backfill_stats st = {0};
        struct eng_error err;
        eng_error_clear(&err);
        int rc = rebuild(rep, &st, &err);

        pthread_mutex_lock(&rep->mu);
        if (rep->quit)
            break;
        if (strcmp(rep->want_gen, gen) != 0)
            continue; /* lost again meanwhile: rebuild the newer generation */
        if (rc != 0) {
            eng_error("msg=\"rebuilding redis failed; trying again\" error=\"%s\" retry_s=%lld",
                      err.msg, (long long)(RETRY_US / 1000000));
            wait_us(rep, RETRY_US);
            continue;
        }
        record_complete(rep, gen);
        rep->pending = false;
        eng_gauge_set(rep->m_rebuilding, 0);
        eng_counter_add(rep->m_rebuilds, 1);
        eng_info("msg=\"redis rebuilt from postgresql\" events=%llu seconds=%.1f generation=%s",
                 (unsigned long long)st.events, (double)(eng_clock_mono_us() - t0) / 1e6, gen);
    }
    pthread_mutex_unlock(&rep->mu);
    return NULL;
}

struct eng_redis_repair *eng_redis_repair_create(const struct eng_redis_repair_options *opt,
                                                 struct eng_error *err)
{
    struct eng_redis_repair *rep = eng_calloc(1, sizeof(*rep));
    if (read_mark(opt->state_dir, rep->known_gen, err) != 0) {
        free(rep);
        return NULL;
    }
    rep->conninfo = eng_strdup(opt->conninfo);
    rep->dlq_table = opt->dlq_table ? eng_strdup(opt->dlq_table) : NULL;
    rep->redis_url = eng_strdup(opt->redis_url);
    rep->state_dir = eng_strdup(opt->state_dir);
    rep->redis = opt->redis;
    rep->page_events = opt->page_events ? opt->page_events : 10000;
    rep->m_rebuilding = eng_metrics_gauge(
        "engage_redis_rebuilding", NULL,
        "1 while engage rebuilds Redis from PostgreSQL after Redis lost what it wrote.");
    rep->m_rebuilds = eng_metrics_counter("engage_redis_rebuilds_total", NULL,
                                          "Rebuilds of Redis from PostgreSQL completed.");
    pthread_mutex_init(&rep->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rep->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&rep->thread, NULL, repair_main, rep) != 0)
        eng_die("could not start the redis repair thread");
    return rep;
}

void eng_redis_repair_attach(struct eng_redis_repair *rep, struct eng_redis_options *ropt)
{
    ropt->known_gen = rep->known_gen[0] != '\0' ? rep->known_gen : NULL;
    ropt->on_mark = on_mark;
    ropt->mark_ctx = rep;
}

bool eng_redis_repair_ready(struct eng_redis_repair *rep, char *why, size_t whylen)
{
    pthread_mutex_lock(&rep->mu);
    bool ready = !rep->pending;
    if (!ready)
        snprintf(why, whylen, "redis=rebuilding from postgresql (%s)", rep->why);
    pthread_mutex_unlock(&rep->mu);
    return ready;
}

void eng_redis_repair_destroy(struct eng_redis_repair *rep)
{
    if (rep == NULL)
        return;
    pthread_mutex_lock(&rep->mu);
    rep->quit = true;
    rep->stop = 1;
    pthread_cond_broadcast(&rep->cv);
    pthread_mutex_unlock(&rep->mu);
    pthread_join(rep->thread, NULL);
    pthread_cond_destroy(&rep->cv);
    pthread_mutex_destroy(&rep->mu);
    free(rep->conninfo);
    free(rep->dlq_table);
    free(rep->redis_url);
    free(rep->state_dir);
    free(rep);
}
