/* What the mock received: the table of unique event ids (open addressing, grown at half
 * full), the first body of each event (one line each in an arena with a cap), the ring of
 * the last requests, the counters, and the GET endpoints that read them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "mockapi_internal.h"

static const char *const outcome_names[] = {"answered", "reset", "hang", "lost_ack", "closed"};

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; s != NULL && *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return s == NULL ? 0 : h;
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

void mock_tab_alloc(struct eng_mockapi *m, size_t cap)
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
    mock_tab_alloc(m, old_cap * 2);
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].id == EMPTY_ID)
            continue;
        *tab_find(m, old[i].id) = old[i];
        m->tab_n++;
    }
    free(old);
}

void mock_clear_stats_locked(struct eng_mockapi *m)
{
    free(m->tab);
    mock_tab_alloc(m, 1024);
    eng_buf_reset(&m->arena);
    m->ring_next = m->ring_n = 0;
    m->received = m->duplicates = m->requests = m->events_rejected = m->invalid = 0;
    m->key_mismatches = m->body_mismatches = m->missing_key = m->resets = m->hangs = 0;
    m->lost_acks = m->arrays = m->bytes = m->not_stored = m->max_in_flight = m->max_batch = 0;
    m->unauthorized = m->full = m->over_budget = 0;
    memset(m->status_count, 0, sizeof(m->status_count));
}

/* ---- recording -------------------------------------------------------------------------- */

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

/* Keeps the first body of a new event as one arena line, while the arena has room. */
static void store_body(struct eng_mockapi *m, struct id_entry *e, const char *body, size_t blen)
{
    e->off = NOT_STORED;
    e->len = 0;
    if (m->arena.len + blen + 1 > m->opt.max_stored_bytes || memchr(body, '\0', blen)) {
        m->not_stored++;
        return;
    }
    size_t at = m->arena.len;
    eng_buf_append(&m->arena, body, blen);
    for (size_t k = at; k < m->arena.len; k++) {
        if (m->arena.data[k] == '\n' || m->arena.data[k] == '\r')
            m->arena.data[k] = ' ';
    }
    eng_buf_putc(&m->arena, '\n');
    e->off = (uint32_t)at;
    e->len = (uint32_t)blen;
}

/* Records one event; returns true when it is new. Called with the lock held. */
static bool record_event(struct eng_mockapi *m, int64_t id, uint64_t keyhash, const char *body,
                         size_t blen)
{
    m->received++;
    if ((m->tab_n + 1) * 2 > m->tab_cap)
        tab_grow(m);
    struct id_entry *e = tab_find(m, id);
    if (e->id == id) {
        m->duplicates++;
        if (e->keyhash != keyhash)
            m->key_mismatches++;
        if (e->off != NOT_STORED && !same_body(m->arena.data + e->off, e->len, body, blen))
            m->body_mismatches++;
        return false;
    }
    e->id = id;
    e->keyhash = keyhash;
    store_body(m, e, body, blen);
    m->tab_n++;
    return true;
}

bool mock_record_events(struct eng_mockapi *m, const struct req_ctx *rc, const struct parsed *p,
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
        if (record_event(m, p->ids[i], keyhash, body, p->spans[i].len))
            fresh++;
        else
            dups++;
    }
    if (lost_ack)
        m->lost_acks++;
    pthread_mutex_unlock(&m->lock);
    *fresh_out = fresh;
    *dups_out = dups;
    return true;
}

void mock_log_request(struct eng_mockapi *m, const struct req_ctx *rc, const char *key, int status,
                      enum outcome oc, uint32_t n, const int64_t *ids, uint32_t n_ids)
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

/* ---- GET endpoints ---------------------------------------------------------------------- */

static void set_count(json_t *j, const char *name, uint64_t v)
{
    json_object_set_new(j, name, json_integer((json_int_t)v));
}

static json_t *status_counts_json(const struct eng_mockapi *m)
{
    json_t *st = json_object();
    for (int i = 0; i < 600; i++) {
        if (m->status_count[i] == 0)
            continue;
        char code[16];
        snprintf(code, sizeof(code), "%d", i);
        set_count(st, code, m->status_count[i]);
    }
    return st;
}

enum MHD_Result mock_get_stats(struct eng_mockapi *m, struct MHD_Connection *c)
{
    json_t *j = json_object();
    pthread_mutex_lock(&m->lock);
    set_count(j, "received", m->received);
    set_count(j, "unique", m->tab_n);
    set_count(j, "duplicates", m->duplicates);
    set_count(j, "requests", m->requests);
    json_object_set_new(j, "status", status_counts_json(m));
    set_count(j, "events_rejected", m->events_rejected);
    set_count(j, "resets", m->resets);
    set_count(j, "hangs", m->hangs);
    set_count(j, "lost_acks", m->lost_acks);
    set_count(j, "invalid", m->invalid);
    set_count(j, "unauthorized", m->unauthorized);
    set_count(j, "missing_idempotency_key", m->missing_key);
    set_count(j, "key_mismatches", m->key_mismatches);
    set_count(j, "body_mismatches", m->body_mismatches);
    set_count(j, "array_requests", m->arrays);
    set_count(j, "max_batch", m->max_batch);
    set_count(j, "bytes", m->bytes);
    set_count(j, "bodies_not_stored", m->not_stored);
    set_count(j, "in_flight", m->in_flight);
    set_count(j, "max_in_flight", m->max_in_flight);
    set_count(j, "body_bytes", m->body_bytes);
    set_count(j, "over_budget", m->over_budget);
    json_object_set_new(j, "down", json_boolean(!m->api_up));
    json_object_set_new(j, "faults", mock_faults_json(&m->faults, m->require_token));
    pthread_mutex_unlock(&m->lock);
    return mock_respond_json(c, MHD_HTTP_OK, j);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

enum MHD_Result mock_get_ids(struct eng_mockapi *m, struct MHD_Connection *c)
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
    return mock_respond(c, MHD_HTTP_OK, &b, "application/json", NULL);
}

enum MHD_Result mock_get_events(struct eng_mockapi *m, struct MHD_Connection *c)
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
    return mock_respond(c, MHD_HTTP_OK, &b, "application/json", NULL);
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

static json_t *log_entry_json(const struct log_entry *e)
{
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
    return o;
}

enum MHD_Result mock_get_log(struct eng_mockapi *m, struct MHD_Connection *c)
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
        json_array_append_new(arr, log_entry_json(e));
    }
    pthread_mutex_unlock(&m->lock);
    return mock_respond_json(c, MHD_HTTP_OK, arr);
}
