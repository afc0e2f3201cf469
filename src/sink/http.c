/* The external HTTP API sink.
 *
 * Policy when the API is slow or down. The pipeline gives every sink its own bounded queue
 * and thread, so this sink blocking in write() delays only itself. What this file adds is a
 * bound on how long one write() can block: every request of a batch gets a retry budget
 * (retry_budget_ms and max_attempts) that starts when write() starts; no attempt starts or
 * runs past it (attempt timeouts are cut to what is left), and whatever is not acknowledged
 * when the budget ends is parked in the dead-letter queue, after which write() returns 0 and
 * the pipeline may move the checkpoint. So an API that is down pins WAL for at most the
 * budget plus one DLQ transaction per batch, and nothing is dropped: an event is either
 * acknowledged by a 2xx or durably parked; if the DLQ itself cannot take it, write() fails
 * retriably and the batch is written again (requests already acknowledged are not resent).
 * A slow but working API gets the same treatment: what cannot be sent within the budget
 * (max_in_flight requests at a time) is parked rather than stalling the checkpoint.
 *
 * Requests: a batch is cut into requests of batch_size events, sent max_in_flight at a time
 * over curl multi with keep-alive connections. The Idempotency-Key depends only on the event
 * ids of a request ("ev-<id>", or "evs-<first>-<last>-<n>-<fnv1a of the ids>"), so a resend
 * after a retry, a crash or a replay carries the same key as the first delivery when the
 * request holds the same events: always from PostgreSQL (one order); from Kafka a request
 * after a restart may mix the partitions otherwise, and an event then comes again under
 * another key (the receiver dedupes by event_id, as the API contract says).
 *
 * Retries (decided in http_policy.c): 408, 429, 5xx, timeouts and connection errors are
 * retried after max(full-jitter capped exponential backoff, Retry-After); a Retry-After also
 * holds every request of the sink until it passes, since a rate limit is the API's, not a
 * request's; once it has passed, one request goes alone, and the others follow only after
 * an answer that is not another Retry-After. With opt.rate, a token bucket (one token,
 * refilled at the rate) spaces every request of the sink, retries included. Other 4xx
 * answers are parked at once. The circuit breaker opens after
 * breaker_failures consecutive failed requests; while it is open nothing is sent and waiting
 * requests spend their budget; after breaker_open_ms one probe request decides. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "../core/metrics.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/pgtext.h"
#include "http.h"
#include "http_policy.h"

#define RESP_KEEP  200 /* bytes of a response body kept for the DLQ reason */
#define MAX_STATUS 600
#define TOKEN_MAX  4096

#define SPILL_REASON                                                                               \
    "in the outbox: the sink's queue was full (the API is slower than the events arrive)"

enum req_state { REQ_WAITING, REQ_IN_FLIGHT, REQ_DONE, REQ_PARK };

struct http_req {
    uint32_t first; /* index of the first event in the batch */
    uint32_t n;
    enum req_state state;
    bool probe; /* the breaker's half-open probe */
    long last_status;
    int64_t next_at_us;
    struct eng_http_retry retry;
    struct eng_buf body; /* built at the first attempt, freed when the request is settled */
    char *reason;        /* set when parked (heap) */
    char key[80];
    char last_error[160];
};

struct http_slot {
    CURL *easy;
    struct http_req *req; /* NULL when free */
    struct curl_slist *headers;
    int64_t started_us;
    size_t resp_len;
    char resp[RESP_KEEP + 1];
    char errbuf[CURL_ERROR_SIZE];
};

struct http_sink {
    struct eng_sink base;
    struct eng_http_options opt;
    char *url;
    char *auth_header; /* "Authorization: Bearer ..." or NULL; wiped on destroy */
    struct eng_http_retry_policy policy;
    struct eng_http_breaker breaker;
    uint64_t rng;
    int64_t hold_until_us;
    bool after_hold; /* the last answer set a hold: one request at a time until another */
    struct eng_http_rate rate;

    pthread_mutex_t multi_lock; /* guards `multi` against eng_http_sink_cancel */
    CURLM *multi;
    struct http_slot *slots;
    atomic_bool cancelled;
    atomic_bool hurry; /* the pipeline's queue for this sink is full: spill what is left */

    /* The requests of the last failed write that were acknowledged, so that writing the same
     * batch again does not resend them. */
    uint64_t resume_seq;
    uint32_t resume_n;
    uint32_t resume_nreq;
    uint8_t *resume_done;

    struct eng_counter *m_events;
    struct eng_counter *m_retries;
    struct eng_counter *m_parked, *m_outbox;
    struct eng_counter *m_giveups;
    struct eng_counter *m_timeout;
    struct eng_counter *m_connect;
    struct eng_counter *m_transport;
    struct eng_counter *m_code[MAX_STATUS];
    struct eng_gauge *m_breaker;
    struct eng_histogram *m_latency;
};

void eng_http_options_default(struct eng_http_options *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->batch_size = 100;
    opt->max_in_flight = 4;
    opt->timeout_ms = 5000;
    opt->connect_timeout_ms = 0;
    opt->max_attempts = 8;
    opt->retry_budget_ms = 60000;
    opt->backoff_base_ms = 100;
    opt->backoff_cap_ms = 5000;
    opt->breaker_failures = 10;
    opt->breaker_open_ms = 5000;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static int64_t ms_to_us(int64_t ms)
{
    return ms * 1000;
}

/* ---- metrics ---------------------------------------------------------------------------- */

static const char *const requests_help = "HTTP sink requests by status code or transport error";

static struct eng_counter *code_counter(struct http_sink *s, long status)
{
    if (status < 100 || status >= MAX_STATUS)
        status = 0;
    if (s->m_code[status] == NULL) {
        char labels[32];
        snprintf(labels, sizeof(labels), "code=\"%ld\"", status);
        s->m_code[status] =
            eng_metrics_counter("engage_http_requests_total", labels, requests_help);
    }
    return s->m_code[status];
}

static void set_breaker_gauge(struct http_sink *s)
{
    eng_gauge_set(s->m_breaker, (int64_t)s->breaker.state);
}

/* ---- requests --------------------------------------------------------------------------- */

static const char *event_json(const struct eng_batch *b, const struct eng_event *e, size_t *len)
{
    const char *p = eng_batch_json(b, e);
    size_t n = e->json.len;
    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
        n--;
    *len = n;
    return p;
}

static void make_key(const struct eng_batch *b, struct http_req *r)
{
    const struct eng_event *ev = &b->events[r->first];
    if (r->n == 1) {
        snprintf(r->key, sizeof(r->key), "ev-%" PRId64, ev->event_id);
        return;
    }
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a over the ids, little-endian bytes */
    for (uint32_t i = 0; i < r->n; i++) {
        uint64_t id = (uint64_t)ev[i].event_id;
        for (int k = 0; k < 8; k++) {
            h ^= (id >> (8 * k)) & 0xffu;
            h *= 0x100000001b3ull;
        }
    }
    snprintf(r->key, sizeof(r->key), "evs-%" PRId64 "-%" PRId64 "-%" PRIu32 "-%016" PRIx64,
             ev[0].event_id, ev[r->n - 1].event_id, r->n, h);
}

static void build_body(const struct eng_batch *b, struct http_req *r, bool array)
{
    struct eng_buf *out = &r->body;
    eng_buf_reset(out);
    if (array)
        eng_buf_putc(out, '[');
    for (uint32_t i = 0; i < r->n; i++) {
        size_t len;
        const char *p = event_json(b, &b->events[r->first + i], &len);
        if (i > 0)
            eng_buf_putc(out, ',');
        eng_buf_append(out, p, len);
    }
    if (array)
        eng_buf_putc(out, ']');
    if (out->overflow)
        eng_die("http: request body over its cap");
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ctx)
{
    struct http_slot *sl = ctx;
    size_t n = size * nmemb;
    size_t room = RESP_KEEP - sl->resp_len;
    size_t take = n < room ? n : room;
    memcpy(sl->resp + sl->resp_len, p, take);
    sl->resp_len += take;
    sl->resp[sl->resp_len] = '\0';
    return n;
}

/* A response snippet fit for one line of a reason text. */
static void snippet(char *dst, size_t cap, const char *src, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[j++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    dst[j] = '\0';
}

static int setup_easy(struct http_sink *s, struct http_slot *sl)
{
    sl->easy = curl_easy_init();
    if (sl->easy == NULL)
        return -1;
    CURL *e = sl->easy;
    int bad = 0;
    bad |= curl_easy_setopt(e, CURLOPT_URL, s->url) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, sl) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, sl->errbuf) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, sl) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, "engage/0.1") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    return bad ? -1 : 0;
}

static int ensure_multi(struct http_sink *s, struct eng_error *err)
{
    if (s->multi != NULL)
        return 0;
    CURLM *m = curl_multi_init();
    if (m == NULL)
        return eng_error_set(err, ENG_EIO, true, "http: could not create a curl multi handle");
    long n = (long)s->opt.max_in_flight;
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, n);
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, n);
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, n);
    pthread_mutex_lock(&s->multi_lock);
    s->multi = m;
    pthread_mutex_unlock(&s->multi_lock);
    return 0;
}

static void start_attempt(struct http_sink *s, const struct eng_batch *b, struct http_req *r,
                          struct http_slot *sl, int64_t now, bool probe)
{
    if (r->body.len == 0)
        build_body(b, r, s->opt.batch_size > 1);
    int64_t timeout_us = eng_http_retry_attempt(&r->retry, now, ms_to_us(s->opt.timeout_ms));
    int64_t connect_us = ms_to_us(s->opt.connect_timeout_ms);
    if (connect_us > timeout_us)
        connect_us = timeout_us;
    if (r->retry.attempts > 1)
        eng_counter_add(s->m_retries, 1);

    char key_header[128];
    snprintf(key_header, sizeof(key_header), "Idempotency-Key: %s", r->key);
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "Content-Type: application/json");
    h = h ? curl_slist_append(h, "Expect:") : NULL; /* no 100-continue round trip */
    h = h ? curl_slist_append(h, key_header) : NULL;
    if (h != NULL && s->auth_header != NULL)
        h = curl_slist_append(h, s->auth_header);
    if (h == NULL)
        eng_die("out of memory building http headers");
    sl->headers = h;
    sl->req = r;
    sl->resp_len = 0;
    sl->resp[0] = '\0';
    sl->errbuf[0] = '\0';
    sl->started_us = now;
    curl_easy_setopt(sl->easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDS, r->body.data);
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body.len);
    curl_easy_setopt(sl->easy, CURLOPT_TIMEOUT_MS, (long)(timeout_us / 1000));
    curl_easy_setopt(sl->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_us / 1000));
    r->state = REQ_IN_FLIGHT;
    r->probe = probe;
    CURLMcode mc = curl_multi_add_handle(s->multi, sl->easy);
    if (mc != CURLM_OK) {
        /* Treated like a failed attempt by the caller's next pass: the request waits. */
        snprintf(r->last_error, sizeof(r->last_error), "curl: %s", curl_multi_strerror(mc));
        curl_slist_free_all(sl->headers);
        sl->headers = NULL;
        sl->req = NULL;
        r->state = REQ_WAITING;
        r->next_at_us = now + ms_to_us(s->opt.backoff_base_ms);
        if (probe)
            eng_http_breaker_record(&s->breaker, now, true, true);
    }
}

#define REASON_MAX 320

static void park(struct http_req *r, const char *reason)
{
    r->state = REQ_PARK;
    free(r->reason);
    r->reason = eng_strdup(reason);
    eng_buf_free(&r->body);
}

static void give_up(struct http_sink *s, struct http_req *r, const char *extra)
{
    char reason[REASON_MAX];
    const char *last = r->last_error[0] ? r->last_error : "never sent";
    snprintf(reason, sizeof(reason), "gave up after %u attempts: %s%s", r->retry.attempts, last,
             extra ? extra : "");
    park(r, reason);
    eng_counter_add(s->m_giveups, 1);
}

static void breaker_result(struct http_sink *s, int64_t now, bool failure, bool probe)
{
    enum eng_http_breaker_state before = s->breaker.state;
    if (!eng_http_breaker_record(&s->breaker, now, failure, probe))
        return;
    static const char *const names[] = {"closed", "open", "half-open"};
    if (s->breaker.state == ENG_HTTP_BREAKER_OPEN)
        eng_warn("msg=\"http circuit breaker opened\" from=%s open_ms=%lld", names[before],
                 (long long)s->opt.breaker_open_ms);
    else
        eng_info("msg=\"http circuit breaker %s\" from=%s", names[s->breaker.state], names[before]);
    set_breaker_gauge(s);
}

/* Takes the finished transfer off the multi handle and frees the slot for another request. */
static void release_slot(struct http_sink *s, struct http_slot *sl)
{
    curl_multi_remove_handle(s->multi, sl->easy);
    curl_slist_free_all(sl->headers);
    sl->headers = NULL;
    sl->req = NULL;
}

/* Counts one finished attempt: its latency, and its status code or transport error. */
static void count_attempt(struct http_sink *s, const struct http_slot *sl, CURLcode rc, long status,
                          int64_t now)
{
    eng_histogram_observe(s->m_latency, now - sl->started_us);
    if (rc == CURLE_OK)
        eng_counter_add(code_counter(s, status), 1);
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        eng_counter_add(s->m_timeout, 1);
    else if (rc == CURLE_COULDNT_CONNECT)
        eng_counter_add(s->m_connect, 1);
    else
        eng_counter_add(s->m_transport, 1);
}

/* Records why an attempt that may be retried failed (r->last_error) and reports it. */
static void note_failure(struct http_sink *s, struct http_req *r, const struct http_slot *sl,
                         CURLcode rc, long status, const char *snip, int64_t now)
{
    if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(r->last_error, sizeof(r->last_error), "timeout after %lld ms",
                 (long long)((now - sl->started_us) / 1000));
    else if (rc != CURLE_OK)
        snprintf(r->last_error, sizeof(r->last_error), "%.150s",
                 sl->errbuf[0] ? sl->errbuf : curl_easy_strerror(rc));
    else
        snprintf(r->last_error, sizeof(r->last_error), "HTTP %ld%s%.80s", status,
                 snip[0] ? ": " : "", snip);

    char report[sizeof(r->last_error) + 32];
    snprintf(report, sizeof(report), "http: %s", r->last_error);
    eng_sink_report(&s->base, false, report);
}

/* An answer's Retry-After (us, 0 when none) holds every request of the sink until it has
 * passed; an answer without one ends the one-at-a-time mode a previous hold started. */
static int64_t take_retry_after(struct http_sink *s, const struct http_slot *sl, int64_t now)
{
    int64_t retry_after = 0;
    struct curl_header *hdr = NULL;
    if (curl_easy_header(sl->easy, "Retry-After", 0, CURLH_HEADER, -1, &hdr) == CURLHE_OK &&
        eng_http_parse_retry_after(hdr->value, eng_clock_wall_us(), &retry_after) &&
        retry_after > 0) {
        if (now + retry_after > s->hold_until_us)
            s->hold_until_us = now + retry_after;
        s->after_hold = true;
        return retry_after;
    }
    s->after_hold = false;
    return 0;
}

/* Schedules the request's next attempt, or gives it up (to be parked) when the policy says
 * so. Returns true when it was given up. */
static bool retry_or_give_up(struct http_sink *s, struct http_req *r, int64_t now,
                             int64_t retry_after)
{
    enum eng_http_giveup why;
    int64_t next = eng_http_retry_next(&s->policy, &r->retry, now, retry_after, &why);
    if (next >= 0) {
        r->state = REQ_WAITING;
        r->next_at_us = next;
        return false;
    }
    char extra[96] = "";
    if (why == ENG_HTTP_GIVEUP_TIME && retry_after > 0)
        snprintf(extra, sizeof(extra), " (retry-after %llds is past the retry budget)",
                 (long long)(retry_after / 1000000));
    else if (why == ENG_HTTP_GIVEUP_TIME)
        snprintf(extra, sizeof(extra), " (retry budget of %lld ms spent)",
                 (long long)s->opt.retry_budget_ms);
    give_up(s, r, extra);
    return true;
}

static void delivered(struct http_sink *s, struct http_req *r)
{
    eng_sink_report(&s->base, true, NULL);
    r->state = REQ_DONE;
    eng_buf_free(&r->body);
    eng_counter_add(s->m_events, r->n);
}

static void rejected(struct http_req *r, long status, const char *snip)
{
    char reason[REASON_MAX];
    snprintf(reason, sizeof(reason), "rejected with HTTP %ld after %u attempts%s%s", status,
             r->retry.attempts, snip[0] ? ": " : "", snip);
    park(r, reason);
}

/* Settles one finished attempt; returns true when its request is settled (delivered or to be
 * parked), false when it waits for a retry. */
static bool finish_attempt(struct http_sink *s, struct http_slot *sl, CURLcode rc, int64_t now)
{
    struct http_req *r = sl->req;
    release_slot(s, sl);
    bool transport = rc != CURLE_OK;
    long status = 0;
    if (!transport)
        curl_easy_getinfo(sl->easy, CURLINFO_RESPONSE_CODE, &status);
    count_attempt(s, sl, rc, status, now);

    enum eng_http_outcome out = eng_http_classify(transport, status);
    bool probe = r->probe;
    r->probe = false;
    breaker_result(s, now, eng_http_breaker_failure(transport, status), probe);
    r->last_status = status;
    if (out == ENG_HTTP_DELIVERED) {
        delivered(s, r);
        return true;
    }
    char snip[RESP_KEEP + 1];
    snippet(snip, sizeof(snip), sl->resp, sl->resp_len);
    if (out == ENG_HTTP_REJECTED) {
        rejected(r, status, snip);
        return true;
    }
    note_failure(s, r, sl, rc, status, snip, now);
    int64_t retry_after = transport ? 0 : take_retry_after(s, sl, now);
    return retry_or_give_up(s, r, now, retry_after);
}

/* Stops every transfer in flight (cancel): their requests count as not delivered. */
static void abort_in_flight(struct http_sink *s, int64_t now)
{
    for (uint32_t i = 0; i < s->opt.max_in_flight; i++) {
        struct http_slot *sl = &s->slots[i];
        if (sl->req == NULL)
            continue;
        curl_multi_remove_handle(s->multi, sl->easy);
        curl_slist_free_all(sl->headers);
        sl->headers = NULL;
        if (sl->req->probe)
            breaker_result(s, now, true, true);
        sl->req->state = REQ_WAITING;
        sl->req = NULL;
    }
    set_breaker_gauge(s);
}

static struct http_slot *free_slot(struct http_sink *s)
{
    for (uint32_t i = 0; i < s->opt.max_in_flight; i++) {
        if (s->slots[i].req == NULL)
            return &s->slots[i];
    }
    return NULL;
}

/* Parks every REQ_PARK request's events in one DLQ transaction. */
static int park_all(struct http_sink *s, const struct eng_batch *b, struct http_req *reqs,
                    uint32_t nreq, struct eng_error *err)
{
    size_t n = 0;
    for (uint32_t i = 0; i < nreq; i++) {
        if (reqs[i].state == REQ_PARK)
            n += reqs[i].n;
    }
    if (n == 0)
        return 0;
    if (s->opt.dlq == NULL)
        return eng_error_set(err, ENG_EIO, true,
                             "http: %zu events could not be delivered and no dead-letter queue "
                             "is configured",
                             n);
    char position[40];
    eng_lsn_format(b->position, position, sizeof(position));
    struct eng_dlq_item *items = eng_calloc(n, sizeof(*items));
    size_t k = 0, outbox = 0;
    const char *example = NULL;
    for (uint32_t i = 0; i < nreq; i++) {
        struct http_req *r = &reqs[i];
        if (r->state != REQ_PARK)
            continue;
        if (example == NULL)
            example = r->reason;
        for (uint32_t j = 0; j < r->n; j++) {
            const struct eng_event *e = &b->events[r->first + j];
            struct eng_dlq_item *it = &items[k++];
            /* Spilled (the API is slower than the stream): the outbox, which `engage run`
             * drains by itself; anything else is a dead letter. */
            it->origin = strcmp(r->reason, SPILL_REASON) == 0 ? ENG_DLQ_OUTBOX : "http";
            outbox += it->origin[0] == 'o';
            it->position = position;
            it->event_id = e->event_id;
            it->reason = r->reason;
            it->last_status = (int)r->last_status;
            it->attempts = (int)r->retry.attempts;
            it->payload = event_json(b, e, &it->payload_len);
        }
    }
    int rc = eng_dlq_park(s->opt.dlq, items, n, err);
    free(items);
    if (rc != 0) {
        eng_warn("msg=\"http sink could not park undeliverable events\" events=%zu error=\"%s\"", n,
                 err ? err->msg : "");
        return rc;
    }
    eng_counter_add(s->m_parked, n - outbox);
    eng_counter_add(s->m_outbox, outbox);
    eng_warn("msg=\"http sink parked events in the dlq\" events=%zu position=%s reason=\"%s\"", n,
             position, example ? example : "");
    return 0;
}

static void remember_done(struct http_sink *s, const struct eng_batch *b, struct http_req *reqs,
                          uint32_t nreq)
{
    free(s->resume_done);
    s->resume_done = NULL;
    s->resume_seq = 0;
    if (b->seq == 0)
        return;
    s->resume_done = eng_calloc(nreq, 1);
    for (uint32_t i = 0; i < nreq; i++)
        s->resume_done[i] = reqs[i].state == REQ_DONE;
    s->resume_seq = b->seq;
    s->resume_n = b->n;
    s->resume_nreq = nreq;
}

/* One write's requests and how far they are. */
struct write_state {
    const struct eng_batch *b;
    struct http_req *reqs;
    uint32_t nreq;
    uint32_t open_reqs; /* neither delivered nor to be parked */
    uint32_t in_flight;
    uint32_t lo; /* every request before lo is settled */
};

/* Cuts the batch into requests of batch_size events, each with its key and retry budget;
 * those the last failed write of the same batch delivered are done already. */
static void plan_requests(struct http_sink *s, struct write_state *w)
{
    const struct eng_batch *b = w->b;
    const uint32_t bs = s->opt.batch_size;
    w->nreq = (b->n + bs - 1) / bs;
    w->reqs = eng_calloc(w->nreq, sizeof(*w->reqs));
    bool resume = s->resume_done != NULL && b->seq == s->resume_seq && b->n == s->resume_n &&
                  w->nreq == s->resume_nreq;
    int64_t now = eng_clock_mono_us();
    for (uint32_t i = 0; i < w->nreq; i++) {
        struct http_req *r = &w->reqs[i];
        r->first = i * bs;
        r->n = b->n - r->first < bs ? b->n - r->first : bs;
        make_key(b, r);
        eng_http_retry_start(&s->policy, &r->retry, now, xorshift(&s->rng));
        r->next_at_us = now;
        r->state = resume && s->resume_done[i] ? REQ_DONE : REQ_WAITING;
        w->open_reqs += r->state == REQ_WAITING;
    }
}

/* Others wait behind this write: park what is not acknowledged yet instead of retrying it
 * now. A request aborted in flight may have reached the API too; the replay carries the same
 * key. */
static void spill_open(struct http_sink *s, struct write_state *w)
{
    abort_in_flight(s, eng_clock_mono_us());
    w->in_flight = 0;
    for (uint32_t i = 0; i < w->nreq; i++) {
        struct http_req *r = &w->reqs[i];
        if (r->state != REQ_WAITING)
            continue;
        r->state = REQ_PARK;
        free(r->reason);
        r->reason = eng_strdup(SPILL_REASON);
        w->open_reqs--;
    }
}

/* No request can start now: every slot is busy, or the API asked us to wait and a request is
 * already out to find whether it still does. */
static bool start_blocked(const struct http_sink *s, const struct write_state *w)
{
    return w->in_flight == s->opt.max_in_flight || (s->after_hold && w->in_flight > 0);
}

static void wake_at(int64_t *wake, int64_t t)
{
    if (t < *wake)
        *wake = t;
}

enum start_result { START_LATER, START_DONE, START_DENIED };

/* Starts r now if the hold, the rate and the breaker let it; else lowers *wake to when it
 * may. */
static enum start_result try_start(struct http_sink *s, struct write_state *w, struct http_req *r,
                                   int64_t now, int64_t *wake)
{
    int64_t t = r->next_at_us > s->hold_until_us ? r->next_at_us : s->hold_until_us;
    int64_t rate_at = eng_http_rate_ready_at(&s->rate, now);
    if (rate_at > t)
        t = rate_at;
    if (t > now) {
        wake_at(wake, t);
        return START_LATER;
    }
    enum eng_http_breaker_grant g = eng_http_breaker_acquire(&s->breaker, now);
    set_breaker_gauge(s);
    if (g == ENG_HTTP_BREAKER_DENY) {
        int64_t retry_at = eng_http_breaker_retry_at(&s->breaker);
        if (retry_at > 0)
            wake_at(wake, retry_at);
        return START_DENIED;
    }
    start_attempt(s, w->b, r, free_slot(s), now, g == ENG_HTTP_BREAKER_PROBE);
    if (r->state == REQ_IN_FLIGHT) {
        w->in_flight++;
        eng_http_rate_take(&s->rate, now);
    }
    return START_DONE;
}

/* One scheduling pass: gives up the requests whose budget is spent and starts those that may
 * start. Returns when the next pass is due. */
static int64_t schedule(struct http_sink *s, struct write_state *w)
{
    int64_t now = eng_clock_mono_us();
    int64_t wake = now + 1000000;
    bool blocked = start_blocked(s, w);
    while (w->lo < w->nreq &&
           (w->reqs[w->lo].state == REQ_DONE || w->reqs[w->lo].state == REQ_PARK))
        w->lo++;
    for (uint32_t i = w->lo; i < w->nreq; i++) {
        struct http_req *r = &w->reqs[i];
        if (r->state != REQ_WAITING)
            continue;
        if (!eng_http_retry_alive(&s->policy, &r->retry, now)) {
            give_up(s, r,
                    s->breaker.state == ENG_HTTP_BREAKER_CLOSED
                        ? " (retry budget spent waiting to be sent)"
                        : " (retry budget spent while the circuit breaker was open)");
            w->open_reqs--;
            continue;
        }
        if (!blocked) {
            enum start_result sr = try_start(s, w, r, now, &wake);
            if (sr == START_LATER)
                continue;
            blocked = sr == START_DENIED || start_blocked(s, w);
            if (sr == START_DONE)
                continue;
        }
        /* Nothing more starts in this pass; the rest only needs its expiry check, which
         * cannot trigger before the (shared) deadline. */
        wake_at(&wake, r->retry.deadline_us - s->policy.min_attempt_us + 1);
        break;
    }
    return wake;
}

/* Settles every transfer curl finished; returns whether there was one. */
static bool collect_finished(struct http_sink *s, struct write_state *w)
{
    int running = 0;
    curl_multi_perform(s->multi, &running);
    bool settled_any = false;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        struct http_slot *sl = (struct http_slot *)(void *)priv;
        CURLcode result = msg->data.result;
        if (finish_attempt(s, sl, result, eng_clock_mono_us()))
            w->open_reqs--;
        w->in_flight--;
        settled_any = true;
    }
    return settled_any;
}

/* Waits for curl until wake (at most a second), or until hurry or cancel wakes it up. */
static void wait_until(struct http_sink *s, int64_t wake)
{
    int64_t wait_ms = (wake - eng_clock_mono_us() + 999) / 1000;
    if (wait_ms < 0)
        wait_ms = 0;
    if (wait_ms > 1000)
        wait_ms = 1000;
    curl_multi_poll(s->multi, NULL, 0, (int)wait_ms, NULL);
}

/* Sends the requests until each is delivered or to be parked. Returns 0, or ENG_ESTOPPED
 * when cancelled (what was delivered is remembered for the next write of the batch). */
static int run_requests(struct http_sink *s, struct write_state *w, struct eng_error *err)
{
    while (w->open_reqs > 0) {
        if (atomic_exchange(&s->hurry, false)) {
            spill_open(s, w);
            break;
        }
        if (atomic_load(&s->cancelled)) {
            abort_in_flight(s, eng_clock_mono_us());
            remember_done(s, w->b, w->reqs, w->nreq);
            return eng_error_set(err, ENG_ESTOPPED, true, "http: sink stopped during a write");
        }
        int64_t wake = schedule(s, w);
        if (w->open_reqs == 0)
            break;
        if (collect_finished(s, w))
            continue; /* schedule again before waiting */
        wait_until(s, wake);
    }
    return 0;
}

static int http_write(struct eng_sink *sink, const struct eng_batch *b, struct eng_error *err)
{
    struct http_sink *s = (struct http_sink *)sink;
    eng_error_clear(err);
    if (atomic_load(&s->cancelled))
        return eng_error_set(err, ENG_ESTOPPED, true, "http: sink stopped");
    if (b->n == 0)
        return 0;
    atomic_store(&s->hurry, false); /* a stale request; the pipeline repeats a live one */
    int rc = ensure_multi(s, err);
    if (rc != 0)
        return rc;

    struct write_state w = {.b = b};
    plan_requests(s, &w);
    rc = run_requests(s, &w, err);
    if (rc == 0) {
        rc = park_all(s, b, w.reqs, w.nreq, err);
        if (rc != 0) {
            remember_done(s, b, w.reqs, w.nreq);
        } else {
            free(s->resume_done);
            s->resume_done = NULL;
            s->resume_seq = 0;
        }
    }
    for (uint32_t i = 0; i < w.nreq; i++) {
        eng_buf_free(&w.reqs[i].body);
        free(w.reqs[i].reason);
    }
    free(w.reqs);
    return rc;
}

static int http_open(struct eng_sink *sink, struct eng_error *err)
{
    struct http_sink *s = (struct http_sink *)sink;
    eng_error_clear(err);
    return ensure_multi(s, err);
}

/* Drops the multi handle and with it every cached connection. */
static void http_close(struct eng_sink *sink)
{
    struct http_sink *s = (struct http_sink *)sink;
    pthread_mutex_lock(&s->multi_lock);
    CURLM *m = s->multi;
    s->multi = NULL;
    pthread_mutex_unlock(&s->multi_lock);
    if (m != NULL)
        curl_multi_cleanup(m);
}

static void http_destroy(struct eng_sink *sink)
{
    struct http_sink *s = (struct http_sink *)sink;
    http_close(sink);
    for (uint32_t i = 0; s->slots != NULL && i < s->opt.max_in_flight; i++) {
        if (s->slots[i].easy != NULL)
            curl_easy_cleanup(s->slots[i].easy);
        curl_slist_free_all(s->slots[i].headers);
    }
    free(s->slots);
    if (s->auth_header != NULL) {
        explicit_bzero(s->auth_header, strlen(s->auth_header));
        free(s->auth_header);
    }
    free(s->url);
    free(s->resume_done);
    pthread_mutex_destroy(&s->multi_lock);
    free(s);
}

/* The pipeline's queue for this sink is full: the API is slower than the events arrive.
 * Park the whole batch rather than hold back the source and the other sinks; `engage dlq
 * replay` sends it later. */
static void http_hurry(struct eng_sink *sink)
{
    struct http_sink *s = (struct http_sink *)sink;
    atomic_store(&s->hurry, true);
    pthread_mutex_lock(&s->multi_lock);
    if (s->multi != NULL)
        curl_multi_wakeup(s->multi);
    pthread_mutex_unlock(&s->multi_lock);
}

static int http_spill(struct eng_sink *sink, const struct eng_batch *b, struct eng_error *err)
{
    struct http_sink *s = (struct http_sink *)sink;
    eng_error_clear(err);
    if (b->n == 0)
        return 0;
    struct http_req whole = {
        .first = 0,
        .n = b->n,
        .state = REQ_PARK,
        .reason = eng_strdup(SPILL_REASON),
    };
    int rc = park_all(s, b, &whole, 1, err);
    free(whole.reason);
    return rc;
}

static const struct eng_sink_ops http_ops = {
    .name = "http",
    .open = http_open,
    .write = http_write,
    .close = http_close,
    .spill = http_spill,
    .hurry = http_hurry,
    .cancel = eng_http_sink_cancel,
    .destroy = http_destroy,
};

void eng_http_sink_cancel(struct eng_sink *sink)
{
    struct http_sink *s = (struct http_sink *)sink;
    atomic_store(&s->cancelled, true);
    pthread_mutex_lock(&s->multi_lock);
    if (s->multi != NULL)
        curl_multi_wakeup(s->multi);
    pthread_mutex_unlock(&s->multi_lock);
}

/* Reads the bearer token from the file, or from $ENGAGE_HTTP_TOKEN. *out is NULL when there
 * is none. The token never appears in a message. */
static int load_token(const char *file, char **out, struct eng_error *err)
{
    *out = NULL;
    char buf[TOKEN_MAX + 1];
    size_t n = 0;
    if (file != NULL && *file != '\0') {
        FILE *f = fopen(file, "re");
        if (f == NULL)
            return eng_error_set(err, ENG_EINVAL, false, "http: could not open token file \"%s\"",
                                 file);
        n = fread(buf, 1, TOKEN_MAX + 1, f);
        bool bad = ferror(f) != 0;
        fclose(f);
        if (bad || n > TOKEN_MAX) {
            explicit_bzero(buf, sizeof(buf));
            return eng_error_set(err, ENG_EINVAL, false,
                                 "http: could not read token file \"%s\" (or over %d bytes)", file,
                                 TOKEN_MAX);
        }
    } else {
        const char *env = getenv("ENGAGE_HTTP_TOKEN");
        if (env == NULL || *env == '\0')
            return 0;
        n = strlen(env);
        if (n > TOKEN_MAX)
            return eng_error_set(err, ENG_EINVAL, false, "http: ENGAGE_HTTP_TOKEN is too long");
        memcpy(buf, env, n);
    }
    while (n > 0 &&
           (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        n--;
    size_t start = 0;
    while (start < n && (buf[start] == ' ' || buf[start] == '\t'))
        start++;
    for (size_t i = start; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x21 || c == 0x7f) {
            explicit_bzero(buf, sizeof(buf));
            return eng_error_set(err, ENG_EINVAL, false,
                                 "http: the bearer token contains a space or control character");
        }
    }
    if (start == n)
        return file
                   ? eng_error_set(err, ENG_EINVAL, false, "http: token file \"%s\" is empty", file)
                   : 0;
    static const char prefix[] = "Authorization: Bearer ";
    char *h = eng_malloc(sizeof(prefix) + (n - start));
    memcpy(h, prefix, sizeof(prefix) - 1);
    memcpy(h + sizeof(prefix) - 1, buf + start, n - start);
    h[sizeof(prefix) - 1 + (n - start)] = '\0';
    explicit_bzero(buf, sizeof(buf));
    *out = h;
    return 0;
}

static int check_url(const char *url, struct eng_error *err)
{
    CURLU *u = curl_url();
    if (u == NULL)
        eng_die("out of memory in curl_url");
    char *scheme = NULL;
    int rc = 0;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
        rc = eng_error_set(err, ENG_EINVAL, false, "http: invalid url");
    else if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        rc = eng_error_set(err, ENG_EINVAL, false, "http: url scheme must be http or https");
    curl_free(scheme);
    curl_url_cleanup(u);
    return rc;
}

/* Copies opt (NULL: the defaults) into *o, checked, with the zeros that mean "derive it"
 * filled in. Returns 0 or -1 with err set. */
static int resolve_options(const struct eng_http_options *opt, struct eng_http_options *o,
                           struct eng_error *err)
{
    if (opt != NULL)
        *o = *opt;
    else
        eng_http_options_default(o);
    if (o->batch_size == 0 || o->max_in_flight == 0 || o->max_in_flight > 1024 ||
        o->timeout_ms <= 0 || o->retry_budget_ms <= 0 || o->backoff_base_ms <= 0 ||
        o->backoff_cap_ms < o->backoff_base_ms || o->breaker_open_ms < 0 ||
        o->connect_timeout_ms < 0 || !(o->rate >= 0))
        return eng_error_set(err, ENG_EINVAL, false, "http: invalid options");
    if (o->max_attempts == 0)
        o->max_attempts = 1;
    if (o->connect_timeout_ms == 0)
        o->connect_timeout_ms = o->timeout_ms < 5000 ? o->timeout_ms : 5000;
    return 0;
}

/* base_url (trailing '/' dropped) + "/events", checked; NULL with err set when it is not an
 * http(s) URL. The caller frees it. */
static char *events_url(const char *base_url, struct eng_error *err)
{
    size_t n = strlen(base_url);
    while (n > 0 && base_url[n - 1] == '/')
        n--;
    char *url = eng_malloc(n + sizeof("/events"));
    memcpy(url, base_url, n);
    memcpy(url + n, "/events", sizeof("/events"));
    if (check_url(url, err) != 0) {
        free(url);
        return NULL;
    }
    return url;
}

/* The retry policy, the breaker, the rate and the jitter seed from the options. */
static void init_policy(struct http_sink *s, const struct eng_http_options *o)
{
    s->rng = o->seed ? o->seed : (uint64_t)eng_clock_wall_us() ^ (uint64_t)(uintptr_t)s;
    if (s->rng == 0)
        s->rng = 0x9E3779B97F4A7C15ull;
    s->policy.max_attempts = o->max_attempts;
    s->policy.budget_us = ms_to_us(o->retry_budget_ms);
    s->policy.base_us = ms_to_us(o->backoff_base_ms);
    s->policy.cap_us = ms_to_us(o->backoff_cap_ms);
    /* An attempt with less than this left would only time out. */
    s->policy.min_attempt_us = ms_to_us(o->timeout_ms < 100 ? o->timeout_ms : 100);
    eng_http_breaker_init(&s->breaker, o->breaker_failures, ms_to_us(o->breaker_open_ms));
    eng_http_rate_init(&s->rate, o->rate, 1);
}

/* One curl easy handle per request in flight. Returns 0 or -1 with err set. */
static int setup_slots(struct http_sink *s, struct eng_error *err)
{
    s->slots = eng_calloc(s->opt.max_in_flight, sizeof(*s->slots));
    for (uint32_t i = 0; i < s->opt.max_in_flight; i++) {
        if (setup_easy(s, &s->slots[i]) != 0)
            return eng_error_set(err, ENG_EIO, false, "http: could not set up a curl handle");
    }
    return 0;
}

static void register_metrics(struct http_sink *s)
{
    s->m_events = eng_metrics_counter("engage_sink_events_total", "sink=\"http\"",
                                      "Events made durable, per sink");
    s->m_retries = eng_metrics_counter("engage_http_retries_total", NULL,
                                       "HTTP sink attempts that were retries");
    s->m_outbox = eng_metrics_counter("engage_dlq_parked_total", "origin=\"outbox\"",
                                      "Items parked in the dead-letter queue, per origin");
    s->m_parked = eng_metrics_counter("engage_dlq_parked_total", "origin=\"http\"",
                                      "Items parked in the dead-letter queue, per origin");
    s->m_giveups = eng_metrics_counter("engage_http_giveups_total", NULL,
                                       "HTTP sink requests given up after the retry budget");
    s->m_timeout =
        eng_metrics_counter("engage_http_requests_total", "code=\"timeout\"", requests_help);
    s->m_connect =
        eng_metrics_counter("engage_http_requests_total", "code=\"connect_error\"", requests_help);
    s->m_transport = eng_metrics_counter("engage_http_requests_total", "code=\"transport_error\"",
                                         requests_help);
    s->m_breaker = eng_metrics_gauge("engage_http_breaker_state", NULL,
                                     "HTTP sink circuit breaker: 0 closed, 1 open, 2 half-open");
    s->m_latency = eng_metrics_histogram("engage_http_request_duration_seconds", NULL,
                                         "HTTP sink request duration, per attempt");
    set_breaker_gauge(s);
}

struct eng_sink *eng_http_sink_create(const char *base_url, const struct eng_http_options *opt,
                                      struct eng_error *err)
{
    struct eng_http_options o;
    if (base_url == NULL || *base_url == '\0') {
        eng_error_set(err, ENG_EINVAL, false, "http: no url");
        return NULL;
    }
    if (resolve_options(opt, &o, err) != 0)
        return NULL;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        eng_error_set(err, ENG_EIO, false, "http: curl_global_init failed");
        return NULL;
    }
    char *url = events_url(base_url, err);
    char *auth = NULL;
    if (url == NULL || load_token(o.token_file, &auth, err) != 0) {
        free(url);
        return NULL;
    }

    struct http_sink *s = eng_calloc(1, sizeof(*s));
    s->base.ops = &http_ops;
    /* A write is acknowledged as a whole: one round of requests at most, so that a crash
     * re-sends no more than what was in flight. */
    s->base.merge_max_events = o.batch_size * o.max_in_flight;
    s->opt = o;
    s->opt.token_file = NULL; /* not kept: read once above */
    s->url = url;
    s->auth_header = auth;
    pthread_mutex_init(&s->multi_lock, NULL);
    atomic_init(&s->cancelled, false);
    init_policy(s, &o);
    if (setup_slots(s, err) != 0) {
        http_destroy(&s->base);
        return NULL;
    }
    register_metrics(s);
    eng_info("msg=\"http sink ready\" batch_size=%u max_in_flight=%u timeout_ms=%lld "
             "max_attempts=%u retry_budget_ms=%lld breaker_failures=%u rate=%g bearer=%s dlq=%s",
             o.batch_size, o.max_in_flight, (long long)o.timeout_ms, o.max_attempts,
             (long long)o.retry_budget_ms, o.breaker_failures, o.rate, auth ? "yes" : "no",
             o.dlq ? "yes" : "no");
    return &s->base;
}
