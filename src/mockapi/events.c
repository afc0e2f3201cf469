/* POST /events: the body parsed into event ids and the text of each event, the fault dice
 * rolled once per request, and the request answered (or reset, or left hanging) as they fell.
 * Faults come first, then the checks a well-behaved client passes (token, size, type, JSON),
 * then the events are recorded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "mockapi_internal.h"

static uint64_t rng_next(struct eng_mockapi *m)
{
    uint64_t x = m->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    m->rng = x;
    return x;
}

/* Uniform in [0, 1). */
static double rng_unit(struct eng_mockapi *m)
{
    return (double)(rng_next(m) >> 11) / 9007199254740992.0;
}

/* Waits until the monotonic time at_us, unless the epoch moves on or the mock stops first.
 * Returns true when the full wait elapsed. Called without the lock. */
static bool wait_until(struct eng_mockapi *m, int64_t at_us, uint64_t epoch)
{
    pthread_mutex_lock(&m->lock);
    while (m->epoch == epoch && !m->stopping && eng_clock_mono_us() < at_us) {
        struct timespec ts = mono_deadline(at_us);
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    }
    bool ok = m->epoch == epoch && !m->stopping;
    pthread_mutex_unlock(&m->lock);
    return ok;
}

static void bump(struct eng_mockapi *m, uint64_t *counter)
{
    pthread_mutex_lock(&m->lock);
    (*counter)++;
    pthread_mutex_unlock(&m->lock);
}

/* ---- the body --------------------------------------------------------------------------- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* From the first character of an array element, the index of the ',' or ']' that ends it,
 * or n. */
static size_t element_end(const char *p, size_t n, size_t i)
{
    int depth = 0;
    bool in_str = false;
    for (; i < n; i++) {
        char ch = p[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = false;
            continue;
        }
        if (ch == '"')
            in_str = true;
        else if (ch == '{' || ch == '[')
            depth++;
        else if (ch == '}' || ch == ']') {
            if (depth == 0)
                break;
            depth--;
        } else if (ch == ',' && depth == 0)
            break;
    }
    return i;
}

/* [start, end) without the white space at either end. */
static struct span trimmed(const char *p, size_t start, size_t end)
{
    while (start < end && is_ws(p[start]))
        start++;
    while (end > start && is_ws(p[end - 1]))
        end--;
    return (struct span){.off = start, .len = end - start};
}

/* Splits a valid JSON array into the text of its top-level elements. */
static size_t split_array(const char *p, size_t n, struct span *out, size_t max)
{
    size_t i = 0, k = 0;
    while (i < n && is_ws(p[i]))
        i++;
    i++; /* '[' */
    while (i < n && k < max) {
        while (i < n && is_ws(p[i]))
            i++;
        if (i >= n || p[i] == ']')
            break;
        size_t start = i;
        i = element_end(p, n, i);
        out[k++] = trimmed(p, start, i);
        if (i < n && p[i] == ',')
            i++;
    }
    return k;
}

static void parse_events(const struct req_ctx *rc, struct parsed *p)
{
    memset(p, 0, sizeof(*p));
    json_error_t jerr;
    p->root = json_loadb(rc->body.data ? rc->body.data : "", rc->body.len, 0, &jerr);
    if (p->root == NULL) {
        snprintf(p->error, sizeof(p->error), "malformed json: %s (line %d column %d)", jerr.text,
                 jerr.line, jerr.column);
        return;
    }
    p->array = json_is_array(p->root);
    p->n = p->array ? (uint32_t)json_array_size(p->root) : 1;
    p->ids = eng_calloc(p->n + 1, sizeof(*p->ids));
    p->spans = eng_calloc(p->n + 1, sizeof(*p->spans));
    for (uint32_t i = 0; i < p->n; i++) {
        json_t *ev = p->array ? json_array_get(p->root, i) : p->root;
        json_t *id = json_is_object(ev) ? json_object_get(ev, "event_id") : NULL;
        if (!json_is_integer(id) || json_integer_value(id) == EMPTY_ID) {
            snprintf(p->error, sizeof(p->error),
                     "%s%u: expected an object with an integer event_id",
                     p->array ? "element " : "body", p->array ? i : 0);
            p->n = i; /* the ids before it are still worth logging */
            return;
        }
        p->ids[i] = (int64_t)json_integer_value(id);
    }
    if (p->array) {
        size_t k = split_array(rc->body.data, rc->body.len, p->spans, p->n);
        if (k != p->n)
            eng_die("mock-api: split %zu elements of an array of %u", k, p->n);
    } else {
        p->spans[0] = trimmed(rc->body.data, 0, rc->body.len);
    }
}

static bool content_type_json(struct MHD_Connection *c)
{
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ct == NULL)
        return false;
    static const char want[] = "application/json";
    return strncasecmp(ct, want, sizeof(want) - 1) == 0 &&
           (ct[sizeof(want) - 1] == '\0' || ct[sizeof(want) - 1] == ';' ||
            ct[sizeof(want) - 1] == ' ');
}

static bool authorized(struct MHD_Connection *c, const char *token)
{
    if (token == NULL)
        return true;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    return auth != NULL && strncmp(auth, "Bearer ", 7) == 0 && strcmp(auth + 7, token) == 0;
}

/* ---- the answer ------------------------------------------------------------------------- */

/* The dice of one request, rolled under the lock against the faults as they were then. */
struct dice {
    struct eng_mockapi_faults f;
    uint64_t epoch;
    int64_t delay_ms;
    bool hang, reset, r429, fail, lost_ack;
    char *token; /* the bearer token required then (owned), or NULL */
};

/* How a request ended. */
struct answer {
    enum MHD_Result ret;
    unsigned status; /* 0 when nothing was answered */
    enum outcome oc;
};

/* Counts the request as received and in flight, and rolls its dice. */
static void roll_dice(struct eng_mockapi *m, const struct req_ctx *rc, struct dice *d)
{
    pthread_mutex_lock(&m->lock);
    d->f = m->faults;
    d->epoch = m->epoch;
    m->requests++;
    m->bytes += rc->body.len;
    if (++m->in_flight > m->max_in_flight)
        m->max_in_flight = m->in_flight;
    d->delay_ms = d->f.delay_ms;
    if (d->f.delay_jitter_ms > 0)
        d->delay_ms += (int64_t)(rng_next(m) % (uint64_t)(d->f.delay_jitter_ms + 1));
    d->hang = rng_unit(m) < d->f.hang_rate;
    d->reset = rng_unit(m) < d->f.reset_rate;
    d->r429 = rng_unit(m) < d->f.status_429_rate;
    d->fail = rng_unit(m) < d->f.fail_rate;
    d->lost_ack = rng_unit(m) < d->f.reset_after_accept_rate;
    d->token = m->require_token ? eng_strdup(m->require_token) : NULL;
    pthread_mutex_unlock(&m->lock);
}

static void log_events(struct eng_mockapi *m, const struct req_ctx *rc, const char *key, int status,
                       enum outcome oc, const struct parsed *p)
{
    int64_t none = 0;
    mock_log_request(m, rc, key, status, oc, p->n, p->ids ? p->ids : &none, p->ids ? p->n : 0);
}

/* Closes the connection with a TCP reset instead of an answer. */
static enum MHD_Result reset_connection(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci != NULL) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    return MHD_NO;
}

static void retry_after_value(const struct eng_mockapi_faults *f, char *out, size_t cap)
{
    if (!f->retry_after_date) {
        snprintf(out, cap, "%lld", (long long)f->retry_after_s);
        return;
    }
    /* An HTTP-date has one-second resolution: round up so the client waits at least
     * retry_after seconds. */
    int64_t now_us = eng_clock_wall_us();
    time_t t = (time_t)((now_us + 999999) / 1000000 + f->retry_after_s);
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
             mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static enum MHD_Result respond_rate_limited(struct MHD_Connection *c,
                                            const struct eng_mockapi_faults *f)
{
    char ra[64];
    retry_after_value(f, ra, sizeof(ra));
    struct eng_buf b = {0};
    eng_buf_puts(&b, "{\"error\":\"rate limited\"}\n");
    return mock_respond(c, 429, &b, "application/json", f->retry_after_s > 0 ? ra : NULL);
}

/* Answers {"error":msg} with status; returns true, for the callers' `return`. */
static bool answer_error(struct MHD_Connection *c, struct answer *a, unsigned status,
                         const char *msg)
{
    a->status = status;
    a->ret = mock_respond_error(c, status, msg);
    return true;
}

/* Acts on the dice: a delay the listener's going down cut short, a hang, a reset, a 429 or an
 * injected failure. Returns true when one of them ended the request. */
static bool inject_fault(struct eng_mockapi *m, struct MHD_Connection *c, const struct req_ctx *rc,
                         const struct parsed *p, const char *key, const struct dice *d,
                         struct answer *a)
{
    if (d->delay_ms > 0 && !wait_until(m, rc->t0_us + d->delay_ms * 1000, d->epoch)) {
        a->oc = OUT_CLOSED; /* the listener went down meanwhile */
        a->ret = MHD_NO;
        return true;
    }
    if (d->hang) {
        /* Logged when the hang starts, so that tests see it while it lasts. */
        bump(m, &m->hangs);
        log_events(m, rc, key, 0, OUT_HANG, p);
        wait_until(m, eng_clock_mono_us() + d->f.hang_max_ms * 1000, d->epoch);
        a->oc = OUT_HANG;
        a->ret = MHD_NO;
        return true;
    }
    if (d->reset) {
        bump(m, &m->resets);
        a->oc = OUT_RESET;
        a->ret = reset_connection(c);
        return true;
    }
    if (d->r429) {
        a->status = 429;
        a->ret = respond_rate_limited(c, &d->f);
        return true;
    }
    if (d->fail)
        return answer_error(c, a, (unsigned)d->f.fail_status, "injected failure");
    return false;
}

/* The checks a request no fault ended must pass. Returns true when it was refused. */
static bool refuse_request(struct eng_mockapi *m, struct MHD_Connection *c,
                           const struct req_ctx *rc, const struct parsed *p, const char *token,
                           struct answer *a)
{
    if (!authorized(c, token)) {
        bump(m, &m->unauthorized);
        return answer_error(c, a, 401, "missing or wrong bearer token");
    }
    if (rc->too_big)
        return answer_error(c, a, 413, p->error);
    if (!content_type_json(c))
        return answer_error(c, a, 415, "Content-Type must be application/json");
    if (p->error[0] != '\0') {
        bump(m, &m->invalid);
        return answer_error(c, a, 400, p->error);
    }
    return false;
}

/* Records the events, then answers 200 (or, as the dice said, loses the answer). */
static void accept_events(struct eng_mockapi *m, struct MHD_Connection *c, const struct req_ctx *rc,
                          const struct parsed *p, const char *key, bool lost_ack, struct answer *a)
{
    uint32_t fresh = 0, dups = 0;
    if (!mock_record_events(m, rc, p, key, lost_ack, &fresh, &dups)) {
        answer_error(c, a, 507, "mock-api is full (--max-events)");
        return;
    }
    if (lost_ack) {
        a->oc = OUT_LOST_ACK;
        a->ret = reset_connection(c);
        return;
    }
    struct eng_buf b = {0};
    eng_buf_printf(&b, "{\"accepted\":%u,\"new\":%u,\"duplicates\":%u}\n", p->n, fresh, dups);
    a->status = 200;
    a->ret = mock_respond(c, a->status, &b, "application/json", NULL);
}

enum MHD_Result mock_post_events(struct eng_mockapi *m, struct MHD_Connection *c,
                                 struct req_ctx *rc)
{
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    struct parsed p;
    if (rc->too_big) {
        memset(&p, 0, sizeof(p));
        snprintf(p.error, sizeof(p.error), "request body too large");
    } else {
        parse_events(rc, &p);
    }
    struct dice d;
    roll_dice(m, rc, &d);

    struct answer a = {.ret = MHD_NO, .status = 0, .oc = OUT_ANSWERED};
    if (!inject_fault(m, c, rc, &p, key, &d, &a) && !refuse_request(m, c, rc, &p, d.token, &a))
        accept_events(m, c, rc, &p, key, d.lost_ack, &a);

    pthread_mutex_lock(&m->lock);
    if (a.status != 200)
        m->events_rejected += p.n;
    m->in_flight--;
    pthread_mutex_unlock(&m->lock);
    if (a.oc != OUT_HANG) /* a hang was logged when it started */
        log_events(m, rc, key, (int)a.status, a.oc, &p);
    json_decref(p.root);
    free(p.ids);
    free(p.spans);
    free(d.token);
    return a.ret;
}
