/* The mock external API over libmicrohttpd, one thread per connection, so that a delayed or
 * hanging request never holds up another.
 *
 * "down" really refuses: the listening socket is ours (passed to MHD), and going down
 * quiesces the daemon, closes that socket (new connects get ECONNREFUSED), then stops the
 * daemon, which closes every open keep-alive connection. Coming up binds the same port again.
 * The transitions run on a manager thread, since a connection thread (POST /control) cannot
 * stop the daemon it runs in; the control listener stays up meanwhile.
 *
 * Delays and hangs wait on a condition variable with a deadline, and every down/stop bumps an
 * epoch that wakes them, so stopping never waits for a 120 s hang. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "../core/net.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "mockapi.h"

#define LOG_IDS    16 /* event ids kept per logged request (the first ones) */
#define CONTROL_MAX_BODY ((size_t)64 << 10) /* a control document is a few hundred bytes */
#define NOT_STORED UINT32_MAX
#define EMPTY_ID   INT64_MIN

enum outcome { OUT_ANSWERED, OUT_RESET, OUT_HANG, OUT_LOST_ACK, OUT_CLOSED };
static const char *const outcome_names[] = {"answered", "reset", "hang", "lost_ack", "closed"};

struct log_entry {
    uint64_t seq;
    int64_t t_ms;    /* wall clock, ms since the epoch, when the request arrived */
    int64_t mono_ms; /* monotonic, ms since the mock started */
    int64_t duration_ms;
    int status; /* 0 when nothing was answered */
    enum outcome outcome;
    uint32_t n;
    uint32_t n_ids;
    int64_t ids[LOG_IDS];
    char key[96];
};

struct id_entry {
    int64_t id; /* EMPTY_ID: free slot */
    uint64_t keyhash;
    uint32_t off; /* body in the arena, NOT_STORED when over the cap */
    uint32_t len;
};

struct listener {
    struct eng_mockapi *m;
    bool control;
};

struct eng_mockapi {
    struct eng_mockapi_options opt;
    char *require_token;

    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; wakes delays, hangs and the manager */
    struct eng_mockapi_faults faults;
    uint64_t rng;
    uint64_t epoch; /* bumped when the API listener goes down or the mock stops */
    bool stopping;
    int64_t up_at_us; /* when down with down_ms: the monotonic time to come back */
    int64_t start_us;

    /* API listener: owned by the manager thread (and start/stop). */
    struct listener api_l, control_l;
    struct MHD_Daemon *api;
    int api_fd;
    bool api_up;
    struct sockaddr_storage api_addr;
    socklen_t api_addrlen;
    uint16_t port;
    struct MHD_Daemon *control;
    int control_fd;
    uint16_t control_port;
    pthread_t manager;
    bool manager_started;
    unsigned active; /* requests being handled on the API listener */
    size_t body_bytes; /* request bodies held now, all connections (<= opt.max_body_total) */
    uint64_t over_budget; /* requests refused 503 because of max_body_total */

    /* Received events. */
    struct id_entry *tab;
    size_t tab_cap; /* power of two */
    size_t tab_n;
    struct eng_buf arena; /* first bodies, one per line */

    struct log_entry *ring;
    size_t ring_next;
    size_t ring_n;
    uint64_t seq;

    uint64_t received, duplicates, requests, events_rejected, invalid, key_mismatches,
        body_mismatches, missing_key, resets, hangs, lost_acks, arrays, bytes, not_stored,
        in_flight, max_in_flight, max_batch, unauthorized, full;
    uint64_t status_count[600];
};

struct req_ctx {
    struct eng_buf body;
    size_t reserved; /* bytes of m->body_bytes this request holds */
    bool over_budget; /* max_body_total was reached while its body came in */
    bool too_big;
    bool counted_active;
    int64_t t0_us;
};

/* ---- small helpers ---------------------------------------------------------------------- */

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

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; s != NULL && *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return s == NULL ? 0 : h;
}

static struct timespec mono_deadline(int64_t at_us)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(at_us / 1000000);
    ts.tv_nsec = (long)(at_us % 1000000) * 1000;
    return ts;
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

void eng_mockapi_options_default(struct eng_mockapi_options *o)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 8000;
    o->control_port = 0;
    o->log_size = 4096;
    o->max_events = (size_t)16 << 20;
    o->max_stored_bytes = (size_t)256 << 20;
    o->max_body = (size_t)16 << 20;
    o->max_body_total = (size_t)64 << 20;
    o->max_connections = 512;
    o->faults.fail_status = 500;
    o->faults.hang_max_ms = 120000;
}

/* ---- the id table ----------------------------------------------------------------------- */

static size_t slot_of(int64_t id, size_t cap)
{
    uint64_t h = (uint64_t)id * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (cap - 1);
}

static struct id_entry *tab_find(struct eng_mockapi *m, int64_t id)
{
    size_t i = slot_of(id, m->tab_cap);
    while (m->tab[i].id != EMPTY_ID && m->tab[i].id != id)
        i = (i + 1) & (m->tab_cap - 1);
    return &m->tab[i];
}

static void tab_alloc(struct eng_mockapi *m, size_t cap)
{
    m->tab = eng_malloc(cap * sizeof(*m->tab));
    for (size_t i = 0; i < cap; i++)
        m->tab[i].id = EMPTY_ID;
    m->tab_cap = cap;
    m->tab_n = 0;
}

static void tab_grow(struct eng_mockapi *m)
{
    struct id_entry *old = m->tab;
    size_t old_cap = m->tab_cap;
    tab_alloc(m, old_cap * 2);
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].id == EMPTY_ID)
            continue;
        *tab_find(m, old[i].id) = old[i];
        m->tab_n++;
    }
    free(old);
}

/* ---- responses -------------------------------------------------------------------------- */

/* Queues a response taking buf's bytes. */
static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, struct eng_buf *buf,
                               const char *ctype, const char *retry_after)
{
    if (buf->overflow)
        eng_die("mock-api: response over its cap");
    size_t len = buf->len;
    void *data = buf->data ? buf->data : eng_strdup("");
    buf->data = NULL;
    buf->len = buf->alloc = 0;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (retry_after != NULL)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned status, const char *json)
{
    struct eng_buf b = {0};
    eng_buf_puts(&b, json);
    eng_buf_putc(&b, '\n');
    return respond(c, status, &b, "application/json", NULL);
}

static enum MHD_Result respond_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
    struct eng_buf b = {0};
    eng_buf_puts(&b, "{\"error\":");
    eng_buf_put_json_str(&b, msg, strlen(msg));
    eng_buf_puts(&b, "}\n");
    return respond(c, status, &b, "application/json", NULL);
}

static enum MHD_Result respond_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (s == NULL)
        eng_die("out of memory in json_dumps");
    struct eng_buf b = {0};
    eng_buf_puts(&b, s);
    eng_buf_putc(&b, '\n');
    free(s);
    return respond(c, status, &b, "application/json", NULL);
}

/* ---- faults and control ----------------------------------------------------------------- */

static json_t *faults_json(const struct eng_mockapi_faults *f, const char *token)
{
    json_t *j = json_object();
    json_object_set_new(j, "fail_rate", json_real(f->fail_rate));
    json_object_set_new(j, "fail_status", json_integer(f->fail_status));
    json_object_set_new(j, "status_429_rate", json_real(f->status_429_rate));
    json_object_set_new(j, "retry_after", json_integer(f->retry_after_s));
    json_object_set_new(j, "retry_after_date", json_boolean(f->retry_after_date));
    json_object_set_new(j, "delay_ms", json_integer(f->delay_ms));
    json_object_set_new(j, "delay_jitter_ms", json_integer(f->delay_jitter_ms));
    json_object_set_new(j, "hang", json_real(f->hang_rate));
    json_object_set_new(j, "hang_max_ms", json_integer(f->hang_max_ms));
    json_object_set_new(j, "reset", json_real(f->reset_rate));
    json_object_set_new(j, "reset_after_accept", json_real(f->reset_after_accept_rate));
    json_object_set_new(j, "down", json_boolean(f->down));
    json_object_set_new(j, "down_ms", json_integer(f->down_ms));
    json_object_set_new(j, "log", json_boolean(f->log));
    json_object_set_new(j, "require_token", json_boolean(token != NULL));
    return j;
}

static int get_rate(json_t *v, const char *key, double *out, struct eng_error *err)
{
    if (json_is_boolean(v)) {
        *out = json_is_true(v) ? 1.0 : 0.0;
        return 0;
    }
    if (!json_is_number(v))
        return eng_error_set(err, ENG_EINVAL, false, "%s must be a number or a boolean", key);
    double d = json_number_value(v);
    if (!(d >= 0.0 && d <= 1.0))
        return eng_error_set(err, ENG_EINVAL, false, "%s must be within 0..1", key);
    *out = d;
    return 0;
}

static int get_int(json_t *v, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   struct eng_error *err)
{
    if (!json_is_number(v))
        return eng_error_set(err, ENG_EINVAL, false, "%s must be a number", key);
    double d = json_number_value(v);
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
        return eng_error_set(err, ENG_EINVAL, false, "%s must be an integer within %lld..%lld", key,
                             (long long)lo, (long long)hi);
    *out = (int64_t)d;
    return 0;
}

static int get_bool(json_t *v, const char *key, bool *out, struct eng_error *err)
{
    if (!json_is_boolean(v))
        return eng_error_set(err, ENG_EINVAL, false, "%s must be a boolean", key);
    *out = json_is_true(v);
    return 0;
}

static void clear_stats_locked(struct eng_mockapi *m)
{
    free(m->tab);
    tab_alloc(m, 1024);
    eng_buf_reset(&m->arena);
    m->ring_next = m->ring_n = 0;
    m->received = m->duplicates = m->requests = m->events_rejected = m->invalid = 0;
    m->key_mismatches = m->body_mismatches = m->missing_key = m->resets = m->hangs = 0;
    m->lost_acks = m->arrays = m->bytes = m->not_stored = m->max_in_flight = m->max_batch = 0;
    m->unauthorized = m->full = m->over_budget = 0;
    memset(m->status_count, 0, sizeof(m->status_count));
}

int eng_mockapi_control(struct eng_mockapi *m, const char *text, size_t len, struct eng_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (root == NULL)
        return eng_error_set(err, ENG_EINVAL, false, "malformed json: %s (line %d column %d)",
                             jerr.text, jerr.line, jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return eng_error_set(err, ENG_EINVAL, false, "control body must be a JSON object");
    }
    pthread_mutex_lock(&m->lock);
    struct eng_mockapi_faults f = m->faults;
    bool clear_stats = false, has_seed = false, has_token = false, has_down = false;
    int64_t seed = 0;
    char *token = NULL;
    int rc = 0;
    json_t *clear = json_object_get(root, "clear");
    if (clear != NULL && (rc = get_bool(clear, "clear", &clear_stats, err)) == 0 && clear_stats) {
        bool was_down = f.down, was_log = f.log;
        memset(&f, 0, sizeof(f));
        f.fail_status = 500;
        f.hang_max_ms = 120000;
        /* "clear" is about faults on requests; "down" and "log" say themselves. */
        f.down = was_down;
        f.log = was_log;
    }
    clear_stats = false;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (rc != 0)
            break;
        int64_t i64;
        if (strcmp(key, "clear") == 0)
            continue;
        else if (strcmp(key, "fail_rate") == 0)
            rc = get_rate(v, key, &f.fail_rate, err);
        else if (strcmp(key, "fail_status") == 0) {
            rc = get_int(v, key, 100, 599, &i64, err);
            f.fail_status = (int)i64;
        } else if (strcmp(key, "status_429_rate") == 0)
            rc = get_rate(v, key, &f.status_429_rate, err);
        else if (strcmp(key, "retry_after") == 0)
            rc = get_int(v, key, 0, 86400, &f.retry_after_s, err);
        else if (strcmp(key, "retry_after_date") == 0)
            rc = get_bool(v, key, &f.retry_after_date, err);
        else if (strcmp(key, "delay_ms") == 0)
            rc = get_int(v, key, 0, 3600000, &f.delay_ms, err);
        else if (strcmp(key, "delay_jitter_ms") == 0)
            rc = get_int(v, key, 0, 3600000, &f.delay_jitter_ms, err);
        else if (strcmp(key, "hang") == 0)
            rc = get_rate(v, key, &f.hang_rate, err);
        else if (strcmp(key, "hang_max_ms") == 0)
            rc = get_int(v, key, 0, 3600000, &f.hang_max_ms, err);
        else if (strcmp(key, "reset") == 0)
            rc = get_rate(v, key, &f.reset_rate, err);
        else if (strcmp(key, "reset_after_accept") == 0)
            rc = get_rate(v, key, &f.reset_after_accept_rate, err);
        else if (strcmp(key, "down") == 0) {
            rc = get_bool(v, key, &f.down, err);
            has_down = true;
        } else if (strcmp(key, "down_ms") == 0)
            rc = get_int(v, key, 0, 86400000, &f.down_ms, err);
        else if (strcmp(key, "log") == 0)
            rc = get_bool(v, key, &f.log, err);
        else if (strcmp(key, "seed") == 0) {
            rc = get_int(v, key, 0, INT64_MAX / 2, &seed, err);
            has_seed = true;
        } else if (strcmp(key, "require_token") == 0) {
            has_token = true;
            if (json_is_null(v))
                token = NULL;
            else if (json_is_string(v) && json_string_length(v) > 0)
                token = eng_strdup(json_string_value(v));
            else
                rc =
                    eng_error_set(err, ENG_EINVAL, false, "require_token must be a string or null");
        } else if (strcmp(key, "clear_stats") == 0)
            rc = get_bool(v, key, &clear_stats, err);
        else
            rc = eng_error_set(err, ENG_EINVAL, false, "unknown control key \"%s\"", key);
    }
    if (rc == 0) {
        m->faults = f;
        if (has_seed)
            m->rng = seed ? (uint64_t)seed : 0x9E3779B97F4A7C15ull;
        if (has_token) {
            free(m->require_token);
            m->require_token = token;
            token = NULL;
        }
        if (clear_stats)
            clear_stats_locked(m);
        if (has_down || json_object_get(root, "down_ms") != NULL)
            m->up_at_us = (f.down && f.down_ms > 0) ? eng_clock_mono_us() + f.down_ms * 1000 : 0;
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
    free(token);
    json_decref(root);
    if (rc == 0)
        eng_info("msg=\"mock-api control\" body=%.*s", (int)(len > 400 ? 400 : len), text);
    return rc;
}

/* ---- GET endpoints ---------------------------------------------------------------------- */

static enum MHD_Result get_stats(struct eng_mockapi *m, struct MHD_Connection *c)
{
    json_t *j = json_object();
    json_t *st = json_object();
    pthread_mutex_lock(&m->lock);
    json_object_set_new(j, "received", json_integer((json_int_t)m->received));
    json_object_set_new(j, "unique", json_integer((json_int_t)m->tab_n));
    json_object_set_new(j, "duplicates", json_integer((json_int_t)m->duplicates));
    json_object_set_new(j, "requests", json_integer((json_int_t)m->requests));
    for (int i = 0; i < 600; i++) {
        if (m->status_count[i] == 0)
            continue;
        char code[16];
        snprintf(code, sizeof(code), "%d", i);
        json_object_set_new(st, code, json_integer((json_int_t)m->status_count[i]));
    }
    json_object_set_new(j, "status", st);
    json_object_set_new(j, "events_rejected", json_integer((json_int_t)m->events_rejected));
    json_object_set_new(j, "resets", json_integer((json_int_t)m->resets));
    json_object_set_new(j, "hangs", json_integer((json_int_t)m->hangs));
    json_object_set_new(j, "lost_acks", json_integer((json_int_t)m->lost_acks));
    json_object_set_new(j, "invalid", json_integer((json_int_t)m->invalid));
    json_object_set_new(j, "unauthorized", json_integer((json_int_t)m->unauthorized));
    json_object_set_new(j, "missing_idempotency_key", json_integer((json_int_t)m->missing_key));
    json_object_set_new(j, "key_mismatches", json_integer((json_int_t)m->key_mismatches));
    json_object_set_new(j, "body_mismatches", json_integer((json_int_t)m->body_mismatches));
    json_object_set_new(j, "array_requests", json_integer((json_int_t)m->arrays));
    json_object_set_new(j, "max_batch", json_integer((json_int_t)m->max_batch));
    json_object_set_new(j, "bytes", json_integer((json_int_t)m->bytes));
    json_object_set_new(j, "bodies_not_stored", json_integer((json_int_t)m->not_stored));
    json_object_set_new(j, "in_flight", json_integer((json_int_t)m->in_flight));
    json_object_set_new(j, "max_in_flight", json_integer((json_int_t)m->max_in_flight));
    json_object_set_new(j, "body_bytes", json_integer((json_int_t)m->body_bytes));
    json_object_set_new(j, "over_budget", json_integer((json_int_t)m->over_budget));
    json_object_set_new(j, "down", json_boolean(!m->api_up));
    json_object_set_new(j, "faults", faults_json(&m->faults, m->require_token));
    pthread_mutex_unlock(&m->lock);
    return respond_json(c, MHD_HTTP_OK, j);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static enum MHD_Result get_ids(struct eng_mockapi *m, struct MHD_Connection *c)
{
    pthread_mutex_lock(&m->lock);
    size_t n = 0;
    int64_t *ids = eng_malloc((m->tab_n + 1) * sizeof(*ids));
    for (size_t i = 0; i < m->tab_cap; i++) {
        if (m->tab[i].id != EMPTY_ID)
            ids[n++] = m->tab[i].id;
    }
    pthread_mutex_unlock(&m->lock);
    qsort(ids, n, sizeof(*ids), cmp_i64);
    struct eng_buf b = {0};
    eng_buf_putc(&b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            eng_buf_putc(&b, ',');
        eng_buf_put_i64(&b, ids[i]);
    }
    eng_buf_puts(&b, "]\n");
    free(ids);
    return respond(c, MHD_HTTP_OK, &b, "application/json", NULL);
}

static enum MHD_Result get_events(struct eng_mockapi *m, struct MHD_Connection *c)
{
    struct eng_buf b = {0};
    eng_buf_putc(&b, '[');
    pthread_mutex_lock(&m->lock);
    const char *p = m->arena.data;
    const char *end = p + m->arena.len;
    bool first = true;
    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            nl = end;
        if (!first)
            eng_buf_putc(&b, ',');
        eng_buf_append(&b, p, (size_t)(nl - p));
        first = false;
        p = nl + 1;
    }
    pthread_mutex_unlock(&m->lock);
    eng_buf_puts(&b, "]\n");
    return respond(c, MHD_HTTP_OK, &b, "application/json", NULL);
}

static bool query_u64(struct MHD_Connection *c, const char *name, uint64_t *out)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    if (v == NULL || *v == '\0')
        return false;
    char *e;
    errno = 0;
    unsigned long long x = strtoull(v, &e, 10);
    if (errno != 0 || *e != '\0')
        return false;
    *out = x;
    return true;
}

static enum MHD_Result get_log(struct eng_mockapi *m, struct MHD_Connection *c)
{
    uint64_t since = 0, limit = UINT64_MAX;
    query_u64(c, "since", &since);
    query_u64(c, "limit", &limit);
    json_t *arr = json_array();
    pthread_mutex_lock(&m->lock);
    size_t cap = m->opt.log_size;
    size_t first = (m->ring_next + cap - m->ring_n) % cap;
    size_t skip = 0;
    /* Keep the newest `limit` entries after `since`. */
    size_t eligible = 0;
    for (size_t k = 0; k < m->ring_n; k++)
        eligible += m->ring[(first + k) % cap].seq > since;
    if (limit < eligible)
        skip = eligible - (size_t)limit;
    for (size_t k = 0; k < m->ring_n; k++) {
        const struct log_entry *e = &m->ring[(first + k) % cap];
        if (e->seq <= since)
            continue;
        if (skip > 0) {
            skip--;
            continue;
        }
        json_t *ids = json_array();
        for (uint32_t i = 0; i < e->n_ids; i++)
            json_array_append_new(ids, json_integer(e->ids[i]));
        json_t *o = json_object();
        json_object_set_new(o, "seq", json_integer((json_int_t)e->seq));
        json_object_set_new(o, "t_ms", json_integer(e->t_ms));
        json_object_set_new(o, "mono_ms", json_integer(e->mono_ms));
        json_object_set_new(o, "idempotency_key", e->key[0] ? json_string(e->key) : json_null());
        json_object_set_new(o, "status", json_integer(e->status));
        json_object_set_new(o, "outcome", json_string(outcome_names[e->outcome]));
        json_object_set_new(o, "n", json_integer(e->n));
        json_object_set_new(o, "ids", ids);
        json_object_set_new(o, "duration_ms", json_integer(e->duration_ms));
        json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&m->lock);
    return respond_json(c, MHD_HTTP_OK, arr);
}

/* ---- POST /events ----------------------------------------------------------------------- */

struct span {
    size_t off;
    size_t len;
};

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
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
        size_t end = i;
        while (end > start && is_ws(p[end - 1]))
            end--;
        out[k].off = start;
        out[k].len = end - start;
        k++;
        if (i < n && p[i] == ',')
            i++;
    }
    return k;
}

/* Compares body text ignoring the line breaks the arena turns into spaces. */
static bool same_body(const char *stored, size_t slen, const char *p, size_t n)
{
    if (slen != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char a = stored[i], b = p[i];
        if (b == '\n' || b == '\r')
            b = ' ';
        if (a != b)
            return false;
    }
    return true;
}

static void log_request(struct eng_mockapi *m, const struct req_ctx *rc, const char *key,
                        int status, enum outcome oc, uint32_t n, const int64_t *ids, uint32_t n_ids)
{
    int64_t now = eng_clock_mono_us();
    bool log;
    pthread_mutex_lock(&m->lock);
    struct log_entry *e = &m->ring[m->ring_next];
    memset(e, 0, sizeof(*e));
    e->seq = ++m->seq;
    e->t_ms = (eng_clock_wall_us() - (now - rc->t0_us)) / 1000;
    e->mono_ms = (rc->t0_us - m->start_us) / 1000;
    e->duration_ms = (now - rc->t0_us) / 1000;
    e->status = status;
    e->outcome = oc;
    e->n = n;
    e->n_ids = n_ids < LOG_IDS ? n_ids : LOG_IDS;
    memcpy(e->ids, ids, e->n_ids * sizeof(*ids));
    snprintf(e->key, sizeof(e->key), "%s", key ? key : "");
    m->ring_next = (m->ring_next + 1) % m->opt.log_size;
    if (m->ring_n < m->opt.log_size)
        m->ring_n++;
    if (status > 0 && status < 600)
        m->status_count[status]++;
    log = m->faults.log;
    pthread_mutex_unlock(&m->lock);
    if (log)
        eng_info("msg=\"mock request\" method=POST path=/events status=%d outcome=%s n=%u "
                 "key=%.80s first_id=%lld ms=%lld",
                 status, outcome_names[oc], n, key ? key : "-",
                 n_ids > 0 ? (long long)ids[0] : -1LL, (long long)((now - rc->t0_us) / 1000));
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

/* The parsed body of a POST /events: the event ids and the text of each event. */
struct parsed {
    json_t *root;
    bool array;
    uint32_t n;
    int64_t *ids;
    struct span *spans;
    char error[300]; /* set when the body is not acceptable */
};

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
        size_t s = 0, e = rc->body.len;
        while (s < e && is_ws(rc->body.data[s]))
            s++;
        while (e > s && is_ws(rc->body.data[e - 1]))
            e--;
        p->spans[0].off = s;
        p->spans[0].len = e - s;
    }
}

/* Records the events of an accepted request. Returns false when the mock is full. */
static bool record_events(struct eng_mockapi *m, const struct req_ctx *rc, const struct parsed *p,
                          const char *key, bool lost_ack, uint32_t *fresh_out, uint32_t *dups_out)
{
    uint64_t keyhash = fnv1a(key);
    uint32_t fresh = 0, dups = 0;
    pthread_mutex_lock(&m->lock);
    if (m->tab_n + p->n > m->opt.max_events) {
        m->full++;
        pthread_mutex_unlock(&m->lock);
        return false;
    }
    if (key == NULL)
        m->missing_key++;
    if (p->array)
        m->arrays++;
    if (p->n > m->max_batch)
        m->max_batch = p->n;
    for (uint32_t i = 0; i < p->n; i++) {
        const char *body = rc->body.data + p->spans[i].off;
        size_t blen = p->spans[i].len;
        m->received++;
        if ((m->tab_n + 1) * 2 > m->tab_cap)
            tab_grow(m);
        struct id_entry *e = tab_find(m, p->ids[i]);
        if (e->id == p->ids[i]) {
            dups++;
            m->duplicates++;
            if (e->keyhash != keyhash)
                m->key_mismatches++;
            if (e->off != NOT_STORED && !same_body(m->arena.data + e->off, e->len, body, blen))
                m->body_mismatches++;
            continue;
        }
        fresh++;
        e->id = p->ids[i];
        e->keyhash = keyhash;
        e->off = NOT_STORED;
        e->len = 0;
        if (m->arena.len + blen + 1 <= m->opt.max_stored_bytes && !memchr(body, '\0', blen)) {
            size_t at = m->arena.len;
            eng_buf_append(&m->arena, body, blen);
            for (size_t k = at; k < m->arena.len; k++) {
                if (m->arena.data[k] == '\n' || m->arena.data[k] == '\r')
                    m->arena.data[k] = ' ';
            }
            eng_buf_putc(&m->arena, '\n');
            e->off = (uint32_t)at;
            e->len = (uint32_t)blen;
        } else {
            m->not_stored++;
        }
        m->tab_n++;
    }
    if (lost_ack)
        m->lost_acks++;
    pthread_mutex_unlock(&m->lock);
    *fresh_out = fresh;
    *dups_out = dups;
    return true;
}

static void bump(struct eng_mockapi *m, uint64_t *counter)
{
    pthread_mutex_lock(&m->lock);
    (*counter)++;
    pthread_mutex_unlock(&m->lock);
}

static enum MHD_Result post_events(struct eng_mockapi *m, struct MHD_Connection *c,
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

    /* Roll the dice for this request. */
    pthread_mutex_lock(&m->lock);
    struct eng_mockapi_faults f = m->faults;
    uint64_t epoch = m->epoch;
    m->requests++;
    m->bytes += rc->body.len;
    if (++m->in_flight > m->max_in_flight)
        m->max_in_flight = m->in_flight;
    int64_t delay_ms = f.delay_ms;
    if (f.delay_jitter_ms > 0)
        delay_ms += (int64_t)(rng_next(m) % (uint64_t)(f.delay_jitter_ms + 1));
    bool hang = rng_unit(m) < f.hang_rate;
    bool reset = rng_unit(m) < f.reset_rate;
    bool r429 = rng_unit(m) < f.status_429_rate;
    bool fail = rng_unit(m) < f.fail_rate;
    bool lost_ack = rng_unit(m) < f.reset_after_accept_rate;
    char *token = m->require_token ? eng_strdup(m->require_token) : NULL;
    pthread_mutex_unlock(&m->lock);

    enum MHD_Result ret;
    unsigned status = 0;
    enum outcome oc = OUT_ANSWERED;

    if (delay_ms > 0 && !wait_until(m, rc->t0_us + delay_ms * 1000, epoch)) {
        oc = OUT_CLOSED; /* the listener went down meanwhile */
        ret = MHD_NO;
        goto done;
    }
    if (hang) {
        /* Logged when the hang starts, so that tests see it while it lasts. */
        bump(m, &m->hangs);
        int64_t none = 0;
        log_request(m, rc, key, 0, OUT_HANG, p.n, p.ids ? p.ids : &none, p.ids ? p.n : 0);
        wait_until(m, eng_clock_mono_us() + f.hang_max_ms * 1000, epoch);
        oc = OUT_HANG;
        ret = MHD_NO;
        goto done;
    }
    if (reset) {
        bump(m, &m->resets);
        oc = OUT_RESET;
        ret = reset_connection(c);
        goto done;
    }
    if (r429) {
        char ra[64];
        retry_after_value(&f, ra, sizeof(ra));
        struct eng_buf b = {0};
        eng_buf_puts(&b, "{\"error\":\"rate limited\"}\n");
        status = 429;
        ret = respond(c, status, &b, "application/json", f.retry_after_s > 0 ? ra : NULL);
        goto done;
    }
    if (fail) {
        status = (unsigned)f.fail_status;
        ret = respond_error(c, status, "injected failure");
        goto done;
    }
    if (token != NULL) {
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        if (auth == NULL || strncmp(auth, "Bearer ", 7) != 0 || strcmp(auth + 7, token) != 0) {
            bump(m, &m->unauthorized);
            status = 401;
            ret = respond_error(c, status, "missing or wrong bearer token");
            goto done;
        }
    }
    if (rc->too_big) {
        status = 413;
        ret = respond_error(c, status, p.error);
        goto done;
    }
    if (!content_type_json(c)) {
        status = 415;
        ret = respond_error(c, status, "Content-Type must be application/json");
        goto done;
    }
    if (p.error[0] != '\0') {
        bump(m, &m->invalid);
        status = 400;
        ret = respond_error(c, status, p.error);
        goto done;
    }
    uint32_t fresh = 0, dups = 0;
    if (!record_events(m, rc, &p, key, lost_ack, &fresh, &dups)) {
        status = 507;
        ret = respond_error(c, status, "mock-api is full (--max-events)");
        goto done;
    }
    if (lost_ack) {
        oc = OUT_LOST_ACK;
        ret = reset_connection(c);
        goto done;
    }
    struct eng_buf b = {0};
    eng_buf_printf(&b, "{\"accepted\":%u,\"new\":%u,\"duplicates\":%u}\n", p.n, fresh, dups);
    status = 200;
    ret = respond(c, status, &b, "application/json", NULL);

done:
    pthread_mutex_lock(&m->lock);
    if (status != 200)
        m->events_rejected += p.n;
    m->in_flight--;
    pthread_mutex_unlock(&m->lock);
    int64_t none = 0;
    if (oc != OUT_HANG)
        log_request(m, rc, key, (int)status, oc, p.n, p.ids ? p.ids : &none, p.ids ? p.n : 0);
    json_decref(p.root);
    free(p.ids);
    free(p.spans);
    free(token);
    return ret;
}

/* ---- dispatch --------------------------------------------------------------------------- */

/* Gives back the body bytes rc holds against max_body_total and frees its body. */
static void body_release(struct eng_mockapi *m, struct req_ctx *rc)
{
    if (rc->reserved > 0) {
        pthread_mutex_lock(&m->lock);
        m->body_bytes -= rc->reserved;
        pthread_mutex_unlock(&m->lock);
        rc->reserved = 0;
    }
    eng_buf_free(&rc->body);
}

/* Takes n bytes of body into rc, within its own cap and the total over every connection; past
 * either, the body is dropped and the request marked (answered 413 or 503 once complete). */
static void body_take(struct eng_mockapi *m, struct req_ctx *rc, const char *p, size_t n)
{
    if (rc->too_big || rc->over_budget)
        return;
    if (n > rc->body.cap - rc->body.len) {
        rc->too_big = true;
        body_release(m, rc);
        return;
    }
    pthread_mutex_lock(&m->lock);
    bool fits = n <= m->opt.max_body_total - m->body_bytes;
    if (fits)
        m->body_bytes += n;
    else
        m->over_budget++;
    pthread_mutex_unlock(&m->lock);
    if (!fits) {
        rc->over_budget = true;
        body_release(m, rc);
        return;
    }
    rc->reserved += n;
    eng_buf_append(&rc->body, p, n);
    if (rc->body.overflow) {
        rc->too_big = true;
        body_release(m, rc);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct listener *l = cls;
    struct eng_mockapi *m = l->m;
    struct req_ctx *rc = *con_cls;
    if (rc == NULL) {
        rc = eng_calloc(1, sizeof(*rc));
        rc->t0_us = eng_clock_mono_us();
        rc->body.cap = l->control ? CONTROL_MAX_BODY : m->opt.max_body;
        if (!l->control) {
            pthread_mutex_lock(&m->lock);
            m->active++;
            pthread_mutex_unlock(&m->lock);
            rc->counted_active = true;
        }
        *con_cls = rc;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        body_take(m, rc, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rc->over_budget)
        return respond_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                             "mock-api holds too many request bodies (max_body_total)");

    bool get = strcmp(method, "GET") == 0;
    bool post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/events") == 0 && post && !l->control)
        return post_events(m, c, rc);
    if (strcmp(url, "/stats") == 0 && get)
        return get_stats(m, c);
    if (strcmp(url, "/events/ids") == 0 && get)
        return get_ids(m, c);
    if (strcmp(url, "/events") == 0 && get)
        return get_events(m, c);
    if (strcmp(url, "/log") == 0 && get)
        return get_log(m, c);
    if (strcmp(url, "/healthz") == 0 && get)
        return respond_text(c, MHD_HTTP_OK, "{\"ok\":true}");
    if (strcmp(url, "/control") == 0 && !l->control)
        return respond_error(c, MHD_HTTP_NOT_FOUND, "/control is on the control listener only");
    if (strcmp(url, "/control") == 0 && get) {
        pthread_mutex_lock(&m->lock);
        json_t *j = faults_json(&m->faults, m->require_token);
        pthread_mutex_unlock(&m->lock);
        return respond_json(c, MHD_HTTP_OK, j);
    }
    if (strcmp(url, "/control") == 0 && post) {
        struct eng_error err;
        if (rc->too_big)
            return respond_error(c, 413, "control body too large");
        if (eng_mockapi_control(m, rc->body.data ? rc->body.data : "", rc->body.len, &err) != 0)
            return respond_error(c, MHD_HTTP_BAD_REQUEST, err.msg);
        pthread_mutex_lock(&m->lock);
        json_t *j = faults_json(&m->faults, m->require_token);
        pthread_mutex_unlock(&m->lock);
        return respond_json(c, MHD_HTTP_OK, j);
    }
    if (strcmp(url, "/events") == 0 || strcmp(url, "/stats") == 0 ||
        strcmp(url, "/events/ids") == 0 || strcmp(url, "/log") == 0 ||
        strcmp(url, "/control") == 0 || strcmp(url, "/healthz") == 0)
        return respond_error(c, l->control ? 404 : MHD_HTTP_METHOD_NOT_ALLOWED,
                             l->control ? "not on the control listener" : "method not allowed");
    return respond_error(c, MHD_HTTP_NOT_FOUND, "not found");
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    (void)toe;
    struct listener *l = cls;
    struct req_ctx *rc = *con_cls;
    if (rc == NULL)
        return;
    if (rc->counted_active) {
        pthread_mutex_lock(&l->m->lock);
        l->m->active--;
        pthread_cond_broadcast(&l->m->cond);
        pthread_mutex_unlock(&l->m->lock);
    }
    body_release(l->m, rc);
    free(rc);
    *con_cls = NULL;
}

/* ---- listeners -------------------------------------------------------------------------- */

static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len,
                   struct eng_error *err)
{
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = getaddrinfo(host, portstr, &hints, &res);
    if (g != 0 || res == NULL)
        return eng_error_set(err, ENG_EINVAL, false, "could not resolve \"%s\": %s", host,
                             gai_strerror(g));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int listen_on(const struct sockaddr_storage *ss, socklen_t len, struct eng_error *err)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return eng_error_set(err, ENG_EIO, true, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, 512) != 0) {
        int e = errno;
        close(fd);
        return eng_error_set(err, ENG_EIO, e == EADDRINUSE, "could not listen: %s", strerror(e));
    }
    return fd;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static struct MHD_Daemon *start_daemon(struct eng_mockapi *m, struct listener *l, int fd,
                                       int family)
{
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                     MHD_USE_POLL;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    return MHD_start_daemon(flags, 0, NULL, NULL, on_request, l, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, l,
                            MHD_OPTION_CONNECTION_LIMIT, m->opt.max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                            MHD_OPTION_THREAD_STACK_SIZE, (size_t)512 * 1024, MHD_OPTION_END);
}

/* Brings the API listener up on its port. Called by start and the manager, without the lock. */
static int api_up(struct eng_mockapi *m, struct eng_error *err)
{
    int fd = -1;
    /* The port was ours a moment ago; a TIME_WAIT or a racing bind may hold it briefly. */
    for (int i = 0; i < 50; i++) {
        fd = listen_on(&m->api_addr, m->api_addrlen, err);
        if (fd >= 0 || !(err && err->retriable))
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (fd < 0)
        return -1;
    struct MHD_Daemon *d = start_daemon(m, &m->api_l, fd, m->api_addr.ss_family);
    if (d == NULL) {
        close(fd);
        return eng_error_set(err, ENG_EIO, true, "could not start the http daemon");
    }
    if (m->port == 0) {
        m->port = eng_net_bound_port(fd);
        set_port(&m->api_addr, m->port);
    }
    pthread_mutex_lock(&m->lock);
    m->api = d;
    m->api_fd = fd;
    m->api_up = true;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* Takes the API listener down: refuses new connections at once, lets answers being sent
 * finish (briefly), then closes every connection. Called without the lock. */
static void api_down(struct eng_mockapi *m)
{
    pthread_mutex_lock(&m->lock);
    struct MHD_Daemon *d = m->api;
    int fd = m->api_fd;
    m->api = NULL;
    m->api_fd = -1;
    m->api_up = false;
    m->epoch++; /* delayed and hanging requests give up now */
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (d == NULL)
        return;
    /* After a successful quiesce the listening socket is ours to close; otherwise MHD keeps
     * it and closes it when stopped. */
    if (MHD_quiesce_daemon(d) != MHD_INVALID_SOCKET)
        close(fd);
    int64_t until = eng_clock_mono_us() + 500000;
    pthread_mutex_lock(&m->lock);
    while (m->active > 0 && eng_clock_mono_us() < until) {
        struct timespec ts = mono_deadline(until);
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
    }
    pthread_mutex_unlock(&m->lock);
    MHD_stop_daemon(d);
}

static void *manager_main(void *arg)
{
    struct eng_mockapi *m = arg;
    pthread_mutex_lock(&m->lock);
    while (!m->stopping) {
        int64_t now = eng_clock_mono_us();
        if (m->faults.down && m->up_at_us > 0 && now >= m->up_at_us) {
            m->faults.down = false;
            m->up_at_us = 0;
        }
        bool want_up = !m->faults.down;
        if (want_up != m->api_up) {
            pthread_mutex_unlock(&m->lock);
            if (want_up) {
                struct eng_error err;
                if (api_up(m, &err) == 0)
                    eng_info("msg=\"mock-api up\" port=%u", (unsigned)m->port);
                else
                    eng_error("msg=\"mock-api could not come back up\" port=%u error=\"%s\"",
                              (unsigned)m->port, err.msg);
            } else {
                api_down(m);
                eng_info("msg=\"mock-api down\" port=%u", (unsigned)m->port);
            }
            pthread_mutex_lock(&m->lock);
            if (want_up && !m->api_up) {
                /* Bind failed: try again in a second. */
                struct timespec ts = mono_deadline(eng_clock_mono_us() + 1000000);
                pthread_cond_timedwait(&m->cond, &m->lock, &ts);
            }
            continue;
        }
        if (m->faults.down && m->up_at_us > 0) {
            struct timespec ts = mono_deadline(m->up_at_us);
            pthread_cond_timedwait(&m->cond, &m->lock, &ts);
        } else {
            pthread_cond_wait(&m->cond, &m->lock);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

struct eng_mockapi *eng_mockapi_start(const struct eng_mockapi_options *o, struct eng_error *err)
{
    struct eng_mockapi_options def;
    if (o == NULL) {
        eng_mockapi_options_default(&def);
        o = &def;
    }
    struct eng_mockapi *m = eng_calloc(1, sizeof(*m));
    m->opt = *o;
    m->opt.host = NULL;
    m->opt.control_host = NULL;
    m->opt.require_token = NULL;
    if (m->opt.log_size == 0)
        m->opt.log_size = 4096;
    if (m->opt.max_events == 0)
        m->opt.max_events = (size_t)16 << 20;
    if (m->opt.max_body == 0)
        m->opt.max_body = (size_t)16 << 20;
    if (m->opt.max_body_total == 0)
        m->opt.max_body_total = (size_t)64 << 20;
    if (m->opt.max_connections == 0)
        m->opt.max_connections = 512;
    if (m->opt.max_stored_bytes > UINT32_MAX - 1)
        m->opt.max_stored_bytes = UINT32_MAX - 1;
    m->require_token = o->require_token ? eng_strdup(o->require_token) : NULL;
    m->faults = o->faults;
    if (m->faults.fail_status < 100 || m->faults.fail_status > 599)
        m->faults.fail_status = 500;
    if (m->faults.hang_max_ms <= 0)
        m->faults.hang_max_ms = 120000;
    m->rng = o->seed ? o->seed : ((uint64_t)eng_clock_wall_us() | 1);
    m->start_us = eng_clock_mono_us();
    if (m->faults.down && m->faults.down_ms > 0)
        m->up_at_us = m->start_us + m->faults.down_ms * 1000;
    m->api_fd = -1;
    m->control_fd = -1;
    m->api_l.m = m;
    m->control_l.m = m;
    m->control_l.control = true;
    m->ring = eng_calloc(m->opt.log_size, sizeof(*m->ring));
    tab_alloc(m, 1024);
    m->arena.cap = m->opt.max_stored_bytes + 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cond, &ca);
    pthread_condattr_destroy(&ca);

    const char *host = o->host ? o->host : "127.0.0.1";
    if (resolve(host, o->port, &m->api_addr, &m->api_addrlen, err) != 0)
        goto fail;
    m->port = o->port;
    if (m->port == 0) {
        /* Bind once to learn the port, so that "down" and "up" reuse it. */
        int fd = listen_on(&m->api_addr, m->api_addrlen, err);
        if (fd < 0)
            goto fail;
        m->port = eng_net_bound_port(fd);
        set_port(&m->api_addr, m->port);
        close(fd);
    }
    if (!m->faults.down && api_up(m, err) != 0)
        goto fail;
    if (o->control_port >= 0) {
        struct sockaddr_storage ss;
        socklen_t len;
        const char *ch = o->control_host ? o->control_host : host;
        if (resolve(ch, (uint16_t)o->control_port, &ss, &len, err) != 0)
            goto fail;
        m->control_fd = listen_on(&ss, len, err);
        if (m->control_fd < 0)
            goto fail;
        m->control_port = eng_net_bound_port(m->control_fd);
        m->control = start_daemon(m, &m->control_l, m->control_fd, ss.ss_family);
        if (m->control == NULL) {
            eng_error_set(err, ENG_EIO, false, "could not start the control daemon");
            goto fail;
        }
    }
    if (pthread_create(&m->manager, NULL, manager_main, m) != 0) {
        eng_error_set(err, ENG_EIO, false, "could not start the manager thread");
        goto fail;
    }
    m->manager_started = true;
    return m;
fail:
    eng_mockapi_stop(m);
    return NULL;
}

uint16_t eng_mockapi_port(const struct eng_mockapi *m)
{
    return m->port;
}

uint16_t eng_mockapi_control_port(const struct eng_mockapi *m)
{
    return m->control_port;
}

void eng_mockapi_stop(struct eng_mockapi *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    m->stopping = true;
    m->epoch++;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (m->manager_started)
        pthread_join(m->manager, NULL);
    api_down(m);
    if (m->control != NULL)
        MHD_stop_daemon(m->control); /* closes control_fd */
    else if (m->control_fd >= 0)
        close(m->control_fd);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m->tab);
    eng_buf_free(&m->arena);
    free(m->ring);
    free(m->require_token);
    free(m);
}
