/* The HTTP sink against the real `mock-api` binary and a real PostgreSQL (for the DLQ), with
 * the mock's injected faults: clean delivery (single objects and arrays), 30% 500s, 429 with
 * Retry-After 2 (seconds and HTTP-date), answers slower than the timeout, resets and lost
 * acks, an API down for longer than the retry budget (DLQ rows, re-park idempotent, later
 * redelivery), the circuit breaker's request count, 4xx parked at once, the DLQ unreachable
 * or refusing rows (the write fails; the same sink resends only what was not acknowledged),
 * a hanging API and cancel, and the bearer token.
 *
 * usage: http_sink_check MOCK_BIN   (runs `MOCK_BIN mock-api --listen 127.0.0.1:0 ...`)
 * env:   ENGAGE_TEST_PG   libpq conninfo of a scratch database (required)
 * Exits 0 when every check passed, 1 otherwise, 77 when ENGAGE_TEST_PG is not set. */
#include <inttypes.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "core/metrics.h"
#include "core/clock.h"
#include "core/log.h"
#include "dlq/dlq.h"
#include "sink/http.h"

static int failures;
static const char *pg_conninfo;
static PGconn *pg;
static char api_url[64], ctl_url[64];
static pid_t mock_pid;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static void note(const char *fmt, ...) ENG_PRINTF(1, 2);
static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("# ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- the mock, over plain HTTP ---------------------------------------------------------- */

static size_t collect(char *p, size_t size, size_t nmemb, void *ctx)
{
    eng_buf_append(ctx, p, size * nmemb);
    return size * nmemb;
}

static json_t *http_json(const char *url, const char *post_body, long *status)
{
    CURL *c = curl_easy_init();
    struct eng_buf out = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (post_body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post_body);
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    if (status != NULL)
        *status = rc == CURLE_OK ? code : -1;
    json_t *j = rc == CURLE_OK && out.data ? json_loadb(out.data, out.len, 0, NULL) : NULL;
    eng_buf_free(&out);
    return j;
}

static void mock_control(const char *json)
{
    char url[128];
    snprintf(url, sizeof(url), "%s/control", ctl_url);
    long status;
    json_t *j = http_json(url, json, &status);
    CHECK(status == 200, "control %s answered %ld", json, status);
    json_decref(j);
}

static json_t *mock_get(const char *path)
{
    char url[160];
    snprintf(url, sizeof(url), "%s%s", ctl_url, path);
    long status;
    json_t *j = http_json(url, NULL, &status);
    CHECK(j != NULL && status == 200, "GET %s answered %ld", path, status);
    return j;
}

static int64_t stat_int(const char *name)
{
    json_t *s = mock_get("/stats");
    int64_t v = (int64_t)json_integer_value(json_object_get(s, name));
    json_decref(s);
    return v;
}

static int64_t stat_status(const char *code)
{
    json_t *s = mock_get("/stats");
    int64_t v = (int64_t)json_integer_value(json_object_get(json_object_get(s, "status"), code));
    json_decref(s);
    return v;
}

/* A fresh mock state for a scenario: no faults, no events, no log. */
static void mock_reset(void)
{
    mock_control("{\"clear\":true,\"clear_stats\":true,\"down\":false,\"require_token\":null}");
}

static int start_mock(const char *bin)
{
    char dir[] = "/tmp/engage-sinkcheck-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return -1;
    char port_file[128];
    snprintf(port_file, sizeof(port_file), "%s/ports.json", dir);
    mock_pid = fork();
    if (mock_pid == 0) {
        char *const args[] = {(char *)bin,   "mock-api", "--listen", "127.0.0.1:0",
                              "--port-file", port_file,  "--seed",   "42",
                              "--log-level", "warn",     NULL};
        execv(bin, args);
        _exit(127);
    }
    int64_t deadline = eng_clock_mono_us() + 10 * 1000000;
    json_t *ports = NULL;
    while (ports == NULL && eng_clock_mono_us() < deadline) {
        ports = json_load_file(port_file, 0, NULL);
        if (ports == NULL)
            sleep_ms(20);
    }
    unlink(port_file);
    rmdir(dir);
    if (ports == NULL)
        return -1;
    snprintf(api_url, sizeof(api_url), "http://127.0.0.1:%lld",
             (long long)json_integer_value(json_object_get(ports, "port")));
    snprintf(ctl_url, sizeof(ctl_url), "http://127.0.0.1:%lld",
             (long long)json_integer_value(json_object_get(ports, "control_port")));
    json_decref(ports);
    return 0;
}

/* ---- events ----------------------------------------------------------------------------- */

static void event_json(struct eng_buf *b, int64_t id)
{
    eng_buf_printf(b,
                   "{\"event_id\":%" PRId64 ",\"content_id\":%d,\"user_id\":999,"
                   "\"event_type\":\"play\",\"event_ts\":\"2026-01-08 14:21:52\","
                   "\"duration_ms\":7000,\"device\":\"web\",\"content_type\":\"video\","
                   "\"length_seconds\":300,\"engagement_seconds\":7.0,\"engagement_pct\":0.02}",
                   id, (int)(id % 7) + 1);
}

static struct eng_batch *make_batch(int64_t first_id, uint32_t n, uint64_t seq)
{
    struct eng_batch *b = eng_batch_create(n);
    b->seq = seq;
    b->position = ((uint64_t)1 << 32) | (uint64_t)(0x1000 + seq);
    for (uint32_t i = 0; i < n; i++) {
        struct eng_event *e = eng_batch_push(b);
        e->event_id = first_id + i;
        e->json.off = (uint32_t)b->jsonl.len;
        event_json(&b->jsonl, e->event_id);
        e->json.len = (uint32_t)(b->jsonl.len - e->json.off);
        eng_buf_putc(&b->jsonl, '\n');
    }
    return b;
}

/* The mock holds exactly ids first..first+n-1 and each body is the event we sent. */
static void check_delivered(int64_t first, uint32_t n, const char *what)
{
    json_t *ids = mock_get("/events/ids");
    size_t got = json_array_size(ids);
    CHECK(got == n, "%s: mock has %zu unique ids, want %u", what, got, n);
    bool exact = got == n;
    for (size_t i = 0; exact && i < got; i++)
        exact = json_integer_value(json_array_get(ids, i)) == first + (int64_t)i;
    CHECK(exact, "%s: mock ids are not exactly %" PRId64 "..%" PRId64, what, first, first + n - 1);
    json_decref(ids);

    json_t *bodies = mock_get("/events");
    size_t same = 0;
    for (size_t i = 0; i < json_array_size(bodies); i++) {
        json_t *got_ev = json_array_get(bodies, i);
        int64_t id = (int64_t)json_integer_value(json_object_get(got_ev, "event_id"));
        struct eng_buf want = {0};
        event_json(&want, id);
        json_t *want_ev = json_loads(want.data, 0, NULL);
        same += json_equal(got_ev, want_ev) == 1;
        json_decref(want_ev);
        eng_buf_free(&want);
    }
    CHECK(same == n, "%s: %zu of %u bodies equal the events sent", what, same, n);
    json_decref(bodies);
    CHECK(stat_int("key_mismatches") == 0, "%s: a duplicate carried a different key", what);
    CHECK(stat_int("body_mismatches") == 0, "%s: a duplicate carried a different body", what);
    CHECK(stat_int("missing_idempotency_key") == 0, "%s: a request had no key", what);
}

/* ---- the DLQ table ---------------------------------------------------------------------- */

static int64_t sql_int(const char *fmt, ...) ENG_PRINTF(1, 2);
static int64_t sql_int(const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(pg, sql);
    int64_t v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fprintf(stderr, "sql failed: %s: %s", sql, PQerrorMessage(pg));
    PQclear(r);
    return v;
}

static void sql_exec(const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fprintf(stderr, "sql failed: %s: %s", sql, PQerrorMessage(pg));
    PQclear(r);
}

/* ---- the sink --------------------------------------------------------------------------- */

static struct eng_http_options opts(struct eng_dlq *dlq)
{
    struct eng_http_options o;
    eng_http_options_default(&o);
    o.batch_size = 1; /* the scenarios count requests per event */
    o.max_in_flight = 8;
    o.dlq = dlq;
    o.seed = 7;
    o.timeout_ms = 2000;
    o.backoff_base_ms = 20;
    o.backoff_cap_ms = 500;
    o.max_attempts = 20;
    o.retry_budget_ms = 20000;
    return o;
}

static struct eng_sink *sink(const struct eng_http_options *o)
{
    struct eng_error err;
    struct eng_sink *s = eng_http_sink_create(api_url, o, &err);
    if (s == NULL) {
        fprintf(stderr, "could not create the sink: %s\n", err.msg);
        exit(1);
    }
    return s;
}

struct timed {
    int rc;
    struct eng_error err;
    int64_t took_ms;
};

static struct timed write_batch(struct eng_sink *s, const struct eng_batch *b)
{
    struct timed t;
    int64_t t0 = eng_clock_mono_us();
    t.rc = eng_sink_write(s, b, &t.err);
    t.took_ms = (eng_clock_mono_us() - t0) / 1000;
    return t;
}

struct bg {
    struct eng_sink *s;
    const struct eng_batch *b;
    struct timed t;
    pthread_t th;
};

static void *bg_main(void *arg)
{
    struct bg *g = arg;
    g->t = write_batch(g->s, g->b);
    return NULL;
}

static uint64_t counter(const char *name, const char *labels)
{
    return eng_counter_get(eng_metrics_counter(name, labels, ""));
}

static int64_t breaker_gauge(void)
{
    return eng_gauge_get(eng_metrics_gauge("engage_http_breaker_state", NULL, ""));
}

/* ---- scenarios -------------------------------------------------------------------------- */

static void scenario_clean(struct eng_dlq *dlq)
{
    uint32_t sizes[] = {1, 50};
    for (int k = 0; k < 2; k++) {
        mock_reset();
        struct eng_http_options o = opts(dlq);
        o.batch_size = sizes[k];
        struct eng_sink *s = sink(&o);
        struct eng_batch *b = make_batch(1000, 2000, 1);
        struct timed t = write_batch(s, b);
        CHECK(t.rc == 0, "clean batch %u: write failed: %s", sizes[k], t.err.msg);
        check_delivered(1000, 2000, sizes[k] == 1 ? "clean/single" : "clean/array");
        int64_t req = stat_int("requests");
        CHECK(req == (sizes[k] == 1 ? 2000 : 40), "clean: %" PRId64 " requests", req);
        CHECK(stat_int("duplicates") == 0, "clean: duplicates");
        if (sizes[k] > 1)
            CHECK(stat_int("max_batch") == 50 && stat_int("array_requests") == 40,
                  "clean/array: arrays of 50 expected");
        note("clean: batch_size=%u 2000 events in %lld ms (%lld events/s), %" PRId64 " requests",
             sizes[k], (long long)t.took_ms,
             (long long)(t.took_ms > 0 ? 2000 * 1000 / t.took_ms : 0), req);
        /* Same batch again: same keys, the mock counts duplicates, nothing new. */
        t = write_batch(s, b);
        CHECK(t.rc == 0, "clean rewrite failed: %s", t.err.msg);
        CHECK(stat_int("unique") == 2000 && stat_int("duplicates") == 2000,
              "rewrite: unique %" PRId64 " duplicates %" PRId64, stat_int("unique"),
              stat_int("duplicates"));
        CHECK(stat_int("key_mismatches") == 0, "rewrite carried different keys");
        eng_batch_release(b);
        eng_sink_destroy(s);
    }
}

static void scenario_500s(struct eng_dlq *dlq)
{
    mock_reset();
    mock_control("{\"fail_rate\":0.3}");
    struct eng_http_options o = opts(dlq);
    struct eng_sink *s = sink(&o);
    uint64_t retries0 = counter("engage_http_retries_total", NULL);
    struct eng_batch *b = make_batch(10000, 1000, 1);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == 0, "500s: write failed: %s", t.err.msg);
    check_delivered(10000, 1000, "30% 500s");
    int64_t n500 = stat_status("500"), n200 = stat_status("200");
    uint64_t retries = counter("engage_http_retries_total", NULL) - retries0;
    CHECK(n200 == 1000, "500s: %" PRId64 " answers 200", n200);
    CHECK(n500 > 200 && n500 < 700, "500s: %" PRId64 " answers 500 for 1000 events at 30%%", n500);
    CHECK(retries == (uint64_t)n500, "500s: %llu retries for %" PRId64 " failures",
          (unsigned long long)retries, n500);
    CHECK(sql_int("SELECT count(*) FROM dlq_check") == 0, "500s: something was parked");
    note("30%% 500s: 1000 events delivered in %lld ms, %" PRId64 " 500s, %llu retries",
         (long long)t.took_ms, n500, (unsigned long long)retries);
    eng_batch_release(b);
    eng_sink_destroy(s);
}

/* For every request answered 429, the next attempt with the same key arrived no earlier than
 * min_ms later (the mock's monotonic ms are truncated, hence the 1 ms of slack). */
static int64_t min_gap_after_429(void)
{
    json_t *log = mock_get("/log");
    int64_t min_gap = INT64_MAX;
    for (size_t i = 0; i < json_array_size(log); i++) {
        json_t *e = json_array_get(log, i);
        if (json_integer_value(json_object_get(e, "status")) != 429)
            continue;
        const char *key = json_string_value(json_object_get(e, "idempotency_key"));
        int64_t t = (int64_t)json_integer_value(json_object_get(e, "mono_ms"));
        for (size_t k = i + 1; k < json_array_size(log); k++) {
            json_t *f = json_array_get(log, k);
            const char *fk = json_string_value(json_object_get(f, "idempotency_key"));
            if (key && fk && strcmp(key, fk) == 0) {
                int64_t gap = (int64_t)json_integer_value(json_object_get(f, "mono_ms")) - t;
                min_gap = gap < min_gap ? gap : min_gap;
                break;
            }
        }
    }
    json_decref(log);
    return min_gap;
}

static void scenario_429(struct eng_dlq *dlq, bool date)
{
    mock_reset();
    mock_control(date ? "{\"status_429_rate\":1,\"retry_after\":2,\"retry_after_date\":true}"
                      : "{\"status_429_rate\":1,\"retry_after\":2}");
    struct eng_http_options o = opts(dlq);
    o.batch_size = 5;
    struct eng_sink *s = sink(&o);
    struct eng_batch *b = make_batch(20000, 20, 1);
    struct bg g = {.s = s, .b = b};
    pthread_create(&g.th, NULL, bg_main, &g);
    /* Let every request meet two 429s, then lift the limit. */
    int64_t deadline = eng_clock_mono_us() + 15 * 1000000;
    while (stat_status("429") < 8 && eng_clock_mono_us() < deadline)
        sleep_ms(50);
    mock_control("{\"status_429_rate\":0}");
    pthread_join(g.th, NULL);
    CHECK(g.t.rc == 0, "429: write failed: %s", g.t.err.msg);
    check_delivered(20000, 20, date ? "429 (date)" : "429");
    int64_t gap = min_gap_after_429();
    CHECK(gap >= 1999 && gap != INT64_MAX, "429: a retry came %" PRId64 " ms after a 429", gap);
    CHECK(breaker_gauge() == 0, "429s must not open the breaker");
    note("429 + Retry-After 2%s: %" PRId64 " 429s, shortest wait before a retry %" PRId64
         " ms, write took %lld ms",
         date ? " (HTTP-date)" : "", stat_status("429"), gap, (long long)g.t.took_ms);
    eng_batch_release(b);
    eng_sink_destroy(s);
}

static void scenario_slow(struct eng_dlq *dlq)
{
    /* Half of the answers come after the 600 ms timeout: those time out on the client, yet
     * the mock records them; the retry is a duplicate with the same key. */
    mock_reset();
    mock_control("{\"delay_ms\":300,\"delay_jitter_ms\":600}");
    struct eng_http_options o = opts(dlq);
    o.timeout_ms = 600;
    o.max_in_flight = 32;
    o.breaker_failures = 0;
    struct eng_sink *s = sink(&o);
    uint64_t to0 = counter("engage_http_requests_total", "code=\"timeout\"");
    struct eng_batch *b = make_batch(30000, 200, 1);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == 0, "slow: write failed: %s", t.err.msg);
    sleep_ms(1000); /* the mock records late answers after their delay */
    check_delivered(30000, 200, "slow answers");
    uint64_t timeouts = counter("engage_http_requests_total", "code=\"timeout\"") - to0;
    CHECK(timeouts > 20, "slow: only %llu timeouts", (unsigned long long)timeouts);
    CHECK(stat_int("duplicates") > 0, "slow: timed-out answers should show up as duplicates");
    note("delay 300..900 ms, timeout 600 ms: 200 events in %lld ms, %llu timeouts, %" PRId64
         " duplicates on the mock, all with their first key",
         (long long)t.took_ms, (unsigned long long)timeouts, stat_int("duplicates"));
    eng_batch_release(b);
    eng_sink_destroy(s);

    /* Always slower than the timeout: given up after the budget, parked with the reason. */
    mock_reset();
    mock_control("{\"delay_ms\":1500}");
    o = opts(dlq);
    o.timeout_ms = 400;
    o.max_attempts = 3;
    o.retry_budget_ms = 5000;
    o.breaker_failures = 0;
    s = sink(&o);
    b = make_batch(31000, 10, 2);
    sql_exec("TRUNCATE dlq_check");
    t = write_batch(s, b);
    CHECK(t.rc == 0, "too slow: write failed: %s", t.err.msg);
    CHECK(sql_int("SELECT count(*) FROM dlq_check WHERE origin = 'http' AND attempts = 3 AND "
                  "last_status = 0 AND reason LIKE 'gave up after 3 attempts: timeout after%%'") ==
              10,
          "too slow: want 10 rows given up after 3 timeouts");
    note("always slower than the timeout: 10 events parked after 3 attempts in %lld ms",
         (long long)t.took_ms);
    eng_batch_release(b);
    eng_sink_destroy(s);
    sleep_ms(1600);
}

static void scenario_resets(struct eng_dlq *dlq)
{
    mock_reset();
    mock_control("{\"reset\":0.3,\"reset_after_accept\":0.2}");
    struct eng_http_options o = opts(dlq);
    o.breaker_failures = 0;
    struct eng_sink *s = sink(&o);
    uint64_t te0 = counter("engage_http_requests_total", "code=\"transport_error\"");
    struct eng_batch *b = make_batch(40000, 500, 1);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == 0, "resets: write failed: %s", t.err.msg);
    check_delivered(40000, 500, "resets");
    int64_t resets = stat_int("resets"), lost = stat_int("lost_acks");
    uint64_t te = counter("engage_http_requests_total", "code=\"transport_error\"") - te0;
    CHECK(resets > 50 && lost > 30, "resets: %" PRId64 " resets, %" PRId64 " lost acks", resets,
          lost);
    /* libcurl re-sends a request once by itself when a reused keep-alive connection dies
     * before any byte of the answer, so the sink sees at most one error per mock reset. */
    CHECK(te > 0 && te <= (uint64_t)(resets + lost), "resets: %llu transport errors for %" PRId64,
          (unsigned long long)te, resets + lost);
    CHECK(stat_int("duplicates") == lost, "resets: duplicates %" PRId64 " != lost acks %" PRId64,
          stat_int("duplicates"), lost);
    note("30%% resets + 20%% lost acks: 500 events in %lld ms, %" PRId64 " resets, %" PRId64
         " lost acks -> %" PRId64 " duplicates, same keys; %llu transport errors seen",
         (long long)t.took_ms, resets, lost, stat_int("duplicates"), (unsigned long long)te);
    eng_batch_release(b);
    eng_sink_destroy(s);
}

static void scenario_down(struct eng_dlq *dlq)
{
    mock_reset();
    sql_exec("TRUNCATE dlq_check");
    mock_control("{\"down\":true}");
    sleep_ms(200);
    struct eng_http_options o = opts(dlq);
    o.batch_size = 10;
    o.retry_budget_ms = 3000;
    o.breaker_failures = 3;
    o.breaker_open_ms = 500;
    struct eng_sink *s = sink(&o);
    uint64_t conn0 = counter("engage_http_requests_total", "code=\"connect_error\"");
    uint64_t parked0 = counter("engage_dlq_parked_total", "origin=\"http\"");
    struct eng_batch *b = make_batch(50000, 100, 1);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == 0, "down: write failed: %s", t.err.msg);
    CHECK(t.took_ms >= 2800 && t.took_ms <= 4000, "down: write took %lld ms for a 3000 ms budget",
          (long long)t.took_ms);
    uint64_t conn = counter("engage_http_requests_total", "code=\"connect_error\"") - conn0;
    int64_t rows = sql_int("SELECT count(*) FROM dlq_check WHERE origin = 'http' AND "
                           "replayed_at IS NULL AND reason LIKE 'gave up after %%'");
    CHECK(rows == 100, "down: %" PRId64 " rows parked, want 100", rows);
    CHECK(sql_int("SELECT count(DISTINCT event_id) FROM dlq_check WHERE event_id BETWEEN 50000 "
                  "AND 50099") == 100,
          "down: parked ids are not 50000..50099");
    CHECK(sql_int("SELECT count(*) FROM dlq_check WHERE position = '1/1001'") == 100,
          "down: position is not the batch LSN");
    CHECK(counter("engage_dlq_parked_total", "origin=\"http\"") - parked0 == 100,
          "down: parked metric");
    struct eng_error err;
    CHECK(eng_dlq_pending(dlq, &err) == 100, "down: pending %s", err.msg);
    /* The payload is the event JSON as sent. */
    PGresult *r = PQexec(pg, "SELECT convert_from(payload, 'UTF8') FROM dlq_check "
                             "WHERE event_id = 50042");
    struct eng_buf want = {0};
    event_json(&want, 50042);
    CHECK(PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), want.data) == 0,
          "down: payload is not the event json");
    PQclear(r);
    eng_buf_free(&want);
    note("down beyond budget: 100 events parked in %lld ms (budget 3000), %llu connection "
         "attempts with the breaker (3 failures, 500 ms open)",
         (long long)t.took_ms, (unsigned long long)conn);
    CHECK(conn < 40, "down: %llu connection attempts: the breaker should hold them back",
          (unsigned long long)conn);

    /* Parked again (a replay after a crash): same rows, refreshed. */
    sql_exec("UPDATE dlq_check SET replayed_at = now()");
    t = write_batch(s, b);
    CHECK(t.rc == 0, "down again: write failed: %s", t.err.msg);
    CHECK(sql_int("SELECT count(*) FROM dlq_check") == 100, "re-park added rows");
    CHECK(sql_int("SELECT count(*) FROM dlq_check WHERE replayed_at IS NULL") == 100,
          "re-park must mark the rows pending again");

    /* Back up: the same events are delivered (what `engage dlq replay` will do). */
    mock_control("{\"down\":false}");
    int64_t deadline = eng_clock_mono_us() + 5000000;
    long st = 0;
    while (eng_clock_mono_us() < deadline) {
        char url[128];
        snprintf(url, sizeof(url), "%s/healthz", api_url);
        json_decref(http_json(url, NULL, &st));
        if (st == 200)
            break;
        sleep_ms(50);
    }
    sleep_ms(600); /* let the breaker's open period pass */
    t = write_batch(s, b);
    CHECK(t.rc == 0, "up: write failed: %s", t.err.msg);
    check_delivered(50000, 100, "after down");
    CHECK(breaker_gauge() == 0, "breaker should be closed after a good probe");
    eng_batch_release(b);
    eng_sink_destroy(s);
}

static void scenario_breaker(struct eng_dlq *dlq)
{
    /* Every answer is a 500; without a breaker this sink would send ~60 requests in 3 s. */
    mock_reset();
    sql_exec("TRUNCATE dlq_check");
    mock_control("{\"fail_rate\":1}");
    struct eng_http_options o = opts(dlq);
    o.max_in_flight = 1;
    o.max_attempts = 1000;
    o.retry_budget_ms = 3000;
    o.backoff_base_ms = 10;
    o.backoff_cap_ms = 50;
    o.breaker_failures = 5;
    o.breaker_open_ms = 1000;
    struct eng_sink *s = sink(&o);
    struct eng_batch *b = make_batch(60000, 1, 1);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == 0, "breaker: write failed: %s", t.err.msg);
    int64_t req = stat_int("requests");
    /* 5 failures, then one probe per second: 5 + 2 or 3. */
    CHECK(req >= 6 && req <= 9, "breaker: %" PRId64 " requests in 3 s", req);
    CHECK(breaker_gauge() == 1, "breaker: gauge %" PRId64 ", want open", breaker_gauge());
    CHECK(sql_int("SELECT count(*) FROM dlq_check WHERE last_status = 500 AND "
                  "reason LIKE 'gave up after %% attempts: HTTP 500%%'") == 1,
          "breaker: the event should be parked with status 500");
    note("breaker (5 failures, 1 s open): %" PRId64 " requests in %lld ms against an API "
         "answering 500",
         req, (long long)t.took_ms);
    eng_batch_release(b);
    eng_sink_destroy(s);
}

static void scenario_rejected(struct eng_dlq *dlq)
{
    /* A 400 is not retried: parked at once with the status and the API's message. */
    mock_reset();
    sql_exec("TRUNCATE dlq_check");
    mock_control("{\"fail_rate\":1,\"fail_status\":400}");
    struct eng_http_options o = opts(dlq);
    o.batch_size = 4;
    struct eng_sink *s = sink(&o);
    struct eng_batch *b = make_batch(70000, 8, 1);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == 0, "400: write failed: %s", t.err.msg);
    CHECK(stat_int("requests") == 2, "400: %" PRId64 " requests, want 2 (no retry)",
          stat_int("requests"));
    CHECK(sql_int("SELECT count(*) FROM dlq_check WHERE last_status = 400 AND attempts = 1 AND "
                  "reason LIKE 'rejected with HTTP 400%%injected failure%%'") == 8,
          "400: want 8 rows rejected");
    eng_batch_release(b);
    eng_sink_destroy(s);
}

static void scenario_dlq_unreachable(void)
{
    /* Half the requests get a 400 (to be parked) and the DLQ's server is unreachable: the
     * write fails retriably. A new sink with a working DLQ then delivers the batch; the
     * requests acknowledged the first time come again with the same keys. */
    mock_reset();
    mock_control("{\"fail_rate\":0.5,\"fail_status\":400}");
    struct eng_dlq *bad = eng_dlq_create("host=/nonexistent-dir-for-engage port=1", "dlq_check");
    struct eng_http_options o = opts(bad);
    struct eng_sink *s = sink(&o);
    struct eng_batch *b = make_batch(80000, 40, 77);
    struct timed t = write_batch(s, b);
    CHECK(t.rc != 0 && t.err.retriable, "unreachable dlq: rc %d retriable %d (%s)", t.rc,
          t.err.retriable, t.err.msg);
    int64_t delivered = stat_status("200"), rejected = stat_status("400");
    CHECK(delivered + rejected == 40 && rejected > 5, "unreachable dlq: %" PRId64 "/%" PRId64,
          delivered, rejected);
    note("dlq unreachable: write failed retriably (\"%s\")", t.err.msg);
    eng_sink_destroy(s);
    eng_dlq_destroy(bad);

    mock_control("{\"fail_rate\":0}");
    struct eng_dlq *good = eng_dlq_create(pg_conninfo, "dlq_check");
    o = opts(good);
    s = sink(&o);
    t = write_batch(s, b);
    CHECK(t.rc == 0, "dlq back: write failed: %s", t.err.msg);
    check_delivered(80000, 40, "after dlq outage");
    CHECK(stat_int("duplicates") == delivered, "after dlq outage: %" PRId64 " duplicates",
          stat_int("duplicates"));
    eng_sink_destroy(s);
    eng_dlq_destroy(good);
    eng_batch_release(b);
}

static void scenario_resume(void)
{
    /* The same sink writes the same batch again after a failed write: only the requests that
     * were not acknowledged are sent. The first write fails because the DLQ table has the
     * wrong shape (a non-retriable error); it is dropped before the second write, and the
     * same dlq object creates it properly. */
    mock_reset();
    sql_exec("DROP TABLE IF EXISTS dlq_resume");
    sql_exec("CREATE TABLE dlq_resume (id int)");
    struct eng_dlq *q = eng_dlq_create(pg_conninfo, "dlq_resume");
    mock_control("{\"fail_rate\":0.5,\"fail_status\":422}");
    struct eng_http_options o = opts(q);
    struct eng_sink *s = sink(&o);
    struct eng_batch *b = make_batch(90000, 40, 99);
    struct timed t = write_batch(s, b);
    CHECK(t.rc != 0 && !t.err.retriable, "wrong dlq table: rc %d retriable %d (%s)", t.rc,
          t.err.retriable, t.err.msg);
    int64_t ok = stat_status("200"), bad = stat_status("422");
    CHECK(ok + bad == 40 && ok > 5 && bad > 5, "resume: %" PRId64 " ok, %" PRId64 " 422", ok, bad);
    note("dlq refusing rows: write failed, not retriable (\"%s\")", t.err.msg);

    sql_exec("DROP TABLE dlq_resume");
    mock_control("{\"fail_rate\":0}");
    int64_t req0 = stat_int("requests");
    t = write_batch(s, b);
    CHECK(t.rc == 0, "resume: write failed: %s", t.err.msg);
    CHECK(stat_int("requests") - req0 == bad,
          "resume: %" PRId64 " requests resent, want only the %" PRId64 " not acknowledged",
          stat_int("requests") - req0, bad);
    CHECK(stat_int("duplicates") == 0, "resume: duplicates");
    check_delivered(90000, 40, "resume");
    note("resume: after a failed write, the rewrite sent only the %" PRId64
         " unacknowledged requests",
         bad);
    eng_sink_destroy(s);
    eng_dlq_destroy(q);
    eng_batch_release(b);
    sql_exec("DROP TABLE IF EXISTS dlq_resume");
}

static void scenario_hang_cancel(struct eng_dlq *dlq)
{
    /* The API never answers: each attempt ends at the timeout; cancel (shutdown) makes the
     * write return at once, retriably, and leaves nothing marked as delivered. */
    mock_reset();
    mock_control("{\"hang\":true,\"hang_max_ms\":10000}");
    struct eng_http_options o = opts(dlq);
    o.timeout_ms = 300;
    struct eng_sink *s = sink(&o);
    struct eng_batch *b = make_batch(97000, 4, 1);
    struct bg g = {.s = s, .b = b};
    pthread_create(&g.th, NULL, bg_main, &g);
    int64_t deadline = eng_clock_mono_us() + 10 * 1000000;
    while (stat_int("hangs") < 8 && eng_clock_mono_us() < deadline)
        sleep_ms(20);
    int64_t t0 = eng_clock_mono_us();
    eng_http_sink_cancel(s);
    pthread_join(g.th, NULL);
    int64_t stop_ms = (eng_clock_mono_us() - t0) / 1000;
    CHECK(g.t.rc == ENG_ESTOPPED && g.t.err.retriable, "cancel: rc %d (%s)", g.t.rc, g.t.err.msg);
    CHECK(stop_ms < 200, "cancel: write took %" PRId64 " ms to stop", stop_ms);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == ENG_ESTOPPED, "cancel is sticky");
    CHECK(stat_int("unique") == 0, "hang: nothing may be recorded");
    note("hang: %" PRId64 " attempts timed out at 300 ms; cancel stopped the write in %" PRId64
         " ms",
         stat_int("hangs"), stop_ms);
    eng_sink_destroy(s);
    eng_batch_release(b);
    mock_control("{\"hang\":false}");
}

static void scenario_token(struct eng_dlq *dlq)
{
    mock_reset();
    mock_control("{\"require_token\":\"s3cret-token\"}");
    struct eng_http_options o = opts(dlq);
    setenv("ENGAGE_HTTP_TOKEN", "s3cret-token", 1);
    struct eng_sink *s = sink(&o);
    unsetenv("ENGAGE_HTTP_TOKEN");
    struct eng_batch *b = make_batch(95000, 5, 1);
    struct timed t = write_batch(s, b);
    CHECK(t.rc == 0 && stat_status("200") == 5, "token from env: %s", t.err.msg);
    eng_sink_destroy(s);

    char path[] = "/tmp/engage-token-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, "s3cret-token\n", 13) == 13, "token file");
    close(fd);
    o.token_file = path;
    s = sink(&o);
    t = write_batch(s, b);
    CHECK(t.rc == 0 && stat_status("200") == 10, "token from file: %s", t.err.msg);
    eng_sink_destroy(s);
    unlink(path);

    /* No token: 401, parked at once. */
    sql_exec("TRUNCATE dlq_check");
    o.token_file = NULL;
    s = sink(&o);
    t = write_batch(s, b);
    CHECK(t.rc == 0 && stat_int("unauthorized") == 5, "no token: %s", t.err.msg);
    CHECK(sql_int("SELECT count(*) FROM dlq_check WHERE last_status = 401") == 5,
          "no token: 5 rows with 401");
    eng_sink_destroy(s);
    eng_batch_release(b);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: http_sink_check MOCK_BIN\n");
        return 2;
    }
    pg_conninfo = getenv("ENGAGE_TEST_PG");
    if (pg_conninfo == NULL || *pg_conninfo == '\0') {
        fprintf(stderr, "ENGAGE_TEST_PG is not set: skipped\n");
        return 77;
    }
    eng_log_set_level(ENG_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pg = PQconnectdb(pg_conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to ENGAGE_TEST_PG: %s", PQerrorMessage(pg));
        return 1;
    }
    sql_exec("SET client_min_messages = warning");
    sql_exec("DROP TABLE IF EXISTS dlq_check");
    if (start_mock(argv[1]) != 0) {
        fprintf(stderr, "mock-api did not start\n");
        return 1;
    }
    note("mock-api at %s (control %s)", api_url, ctl_url);

    struct eng_dlq *dlq = eng_dlq_create(pg_conninfo, "dlq_check");
    struct eng_error err;
    CHECK(eng_dlq_pending(dlq, &err) == 0, "fresh dlq: %s", err.msg); /* creates the table */

    scenario_clean(dlq);
    scenario_500s(dlq);
    scenario_429(dlq, false);
    scenario_429(dlq, true);
    scenario_slow(dlq);
    scenario_resets(dlq);
    scenario_down(dlq);
    scenario_breaker(dlq);
    scenario_rejected(dlq);
    scenario_dlq_unreachable();
    scenario_resume();
    scenario_hang_cancel(dlq);
    scenario_token(dlq);

    eng_dlq_destroy(dlq);
    kill(mock_pid, SIGTERM);
    int status = 0;
    waitpid(mock_pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mock-api exit status %d on SIGTERM",
          status);
    PQfinish(pg);
    curl_global_cleanup();
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
