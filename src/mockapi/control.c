/* The fault settings: the control document (POST /control, eng_mockapi_control) and how the
 * faults are shown. A document is checked whole before anything is applied: one bad key and
 * the faults stay as they were. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "mockapi_internal.h"

json_t *mock_faults_json(const struct eng_mockapi_faults *f, const char *token)
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

/* The control keys that set one field of struct eng_mockapi_faults. */
enum fault_kind { FAULT_RATE, FAULT_I64, FAULT_STATUS, FAULT_BOOL };

static const struct fault_key {
    const char *name;
    enum fault_kind kind;
    size_t off; /* of the field in struct eng_mockapi_faults */
    int64_t lo, hi;
} fault_keys[] = {
#define F(field) offsetof(struct eng_mockapi_faults, field)
    {"fail_rate", FAULT_RATE, F(fail_rate), 0, 0},
    {"fail_status", FAULT_STATUS, F(fail_status), 100, 599},
    {"status_429_rate", FAULT_RATE, F(status_429_rate), 0, 0},
    {"retry_after", FAULT_I64, F(retry_after_s), 0, 86400},
    {"retry_after_date", FAULT_BOOL, F(retry_after_date), 0, 0},
    {"delay_ms", FAULT_I64, F(delay_ms), 0, 3600000},
    {"delay_jitter_ms", FAULT_I64, F(delay_jitter_ms), 0, 3600000},
    {"hang", FAULT_RATE, F(hang_rate), 0, 0},
    {"hang_max_ms", FAULT_I64, F(hang_max_ms), 0, 3600000},
    {"reset", FAULT_RATE, F(reset_rate), 0, 0},
    {"reset_after_accept", FAULT_RATE, F(reset_after_accept_rate), 0, 0},
    {"down", FAULT_BOOL, F(down), 0, 0},
    {"down_ms", FAULT_I64, F(down_ms), 0, 86400000},
    {"log", FAULT_BOOL, F(log), 0, 0},
#undef F
};

static int set_fault(struct eng_mockapi_faults *f, const struct fault_key *k, json_t *v,
                     struct eng_error *err)
{
    void *field = (char *)f + k->off; /* of the type k->kind says */
    int *status = field;
    int64_t i64 = 0; /* (gcc -O3 cannot see get_int sets it on success) */
    int rc;
    switch (k->kind) {
    case FAULT_RATE:
        return get_rate(v, k->name, field, err);
    case FAULT_I64:
        return get_int(v, k->name, k->lo, k->hi, field, err);
    case FAULT_STATUS:
        rc = get_int(v, k->name, k->lo, k->hi, &i64, err);
        if (rc == 0)
            *status = (int)i64;
        return rc;
    case FAULT_BOOL:
        return get_bool(v, k->name, field, err);
    }
    eng_die("mock-api: fault key \"%s\" of no kind", k->name);
}

/* A control document as read, before it is applied. */
struct control_doc {
    struct eng_mockapi_faults f; /* the faults it leaves */
    bool clear_stats;
    bool has_seed;
    int64_t seed;
    bool has_token;
    char *token; /* owned; NULL: no token required */
    bool has_down;
};

/* "clear": every fault on requests off first; "down" and "log" say themselves. */
static int take_clear(json_t *root, struct eng_mockapi_faults *f, struct eng_error *err)
{
    json_t *clear = json_object_get(root, "clear");
    bool on = false;
    if (clear == NULL)
        return 0;
    int rc = get_bool(clear, "clear", &on, err);
    if (rc == 0 && on) {
        bool was_down = f->down, was_log = f->log;
        memset(f, 0, sizeof(*f));
        f->fail_status = 500;
        f->hang_max_ms = 120000;
        f->down = was_down;
        f->log = was_log;
    }
    return rc;
}

static int take_token(struct control_doc *doc, json_t *v, struct eng_error *err)
{
    doc->has_token = true;
    if (json_is_null(v)) {
        doc->token = NULL;
        return 0;
    }
    if (json_is_string(v) && json_string_length(v) > 0) {
        doc->token = eng_strdup(json_string_value(v));
        return 0;
    }
    return eng_error_set(err, ENG_EINVAL, false, "require_token must be a string or null");
}

static int take_key(struct control_doc *doc, const char *key, json_t *v, struct eng_error *err)
{
    if (strcmp(key, "clear") == 0)
        return 0; /* taken first, by take_clear */
    if (strcmp(key, "seed") == 0) {
        doc->has_seed = true;
        return get_int(v, key, 0, INT64_MAX / 2, &doc->seed, err);
    }
    if (strcmp(key, "require_token") == 0)
        return take_token(doc, v, err);
    if (strcmp(key, "clear_stats") == 0)
        return get_bool(v, key, &doc->clear_stats, err);
    if (strcmp(key, "down") == 0)
        doc->has_down = true;
    for (size_t i = 0; i < sizeof(fault_keys) / sizeof(fault_keys[0]); i++) {
        if (strcmp(key, fault_keys[i].name) == 0)
            return set_fault(&doc->f, &fault_keys[i], v, err);
    }
    return eng_error_set(err, ENG_EINVAL, false, "unknown control key \"%s\"", key);
}

/* Applies a document read whole; called with the lock held. Takes doc->token. */
static void apply_locked(struct eng_mockapi *m, struct control_doc *doc, bool has_down_ms)
{
    const struct eng_mockapi_faults *f = &doc->f;
    m->faults = *f;
    if (doc->has_seed)
        m->rng = doc->seed ? (uint64_t)doc->seed : 0x9E3779B97F4A7C15ull;
    if (doc->has_token) {
        free(m->require_token);
        m->require_token = doc->token;
        doc->token = NULL;
    }
    if (doc->clear_stats)
        mock_clear_stats_locked(m);
    if (doc->has_down || has_down_ms)
        m->up_at_us = (f->down && f->down_ms > 0) ? eng_clock_mono_us() + f->down_ms * 1000 : 0;
    pthread_cond_broadcast(&m->cond);
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
    struct control_doc doc = {.f = m->faults};
    int rc = take_clear(root, &doc.f, err);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (rc != 0)
            break;
        rc = take_key(&doc, key, v, err);
    }
    if (rc == 0)
        apply_locked(m, &doc, json_object_get(root, "down_ms") != NULL);
    pthread_mutex_unlock(&m->lock);
    free(doc.token);
    json_decref(root);
    if (rc == 0)
        eng_info("msg=\"mock-api control\" body=%.*s", (int)(len > 400 ? 400 : len), text);
    return rc;
}
