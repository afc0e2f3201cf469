/* libmicrohttpd's side of the mock: one req_ctx per request, its body taken within the
 * request's own cap and the total over every connection, then the request routed to its
 * endpoint; and the responses every endpoint sends. */
#include <stdlib.h>
#include <string.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "mockapi_internal.h"

/* ---- responses -------------------------------------------------------------------------- */

enum MHD_Result mock_respond(struct MHD_Connection *c, unsigned status, struct eng_buf *buf,
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
    return mock_respond(c, status, &b, "application/json", NULL);
}

enum MHD_Result mock_respond_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
    struct eng_buf b = {0};
    eng_buf_puts(&b, "{\"error\":");
    eng_buf_put_json_str(&b, msg, strlen(msg));
    eng_buf_puts(&b, "}\n");
    return mock_respond(c, status, &b, "application/json", NULL);
}

enum MHD_Result mock_respond_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (s == NULL)
        eng_die("out of memory in json_dumps");
    struct eng_buf b = {0};
    eng_buf_puts(&b, s);
    eng_buf_putc(&b, '\n');
    free(s);
    return mock_respond(c, status, &b, "application/json", NULL);
}

/* ---- request bodies --------------------------------------------------------------------- */

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

/* ---- routing ---------------------------------------------------------------------------- */

static enum MHD_Result get_healthz(struct eng_mockapi *m, struct MHD_Connection *c)
{
    (void)m;
    return respond_text(c, MHD_HTTP_OK, "{\"ok\":true}");
}

/* The GET endpoints both listeners serve. */
static const struct get_route {
    const char *path;
    enum MHD_Result (*get)(struct eng_mockapi *m, struct MHD_Connection *c);
} get_routes[] = {
    {"/stats", mock_get_stats}, {"/events/ids", mock_get_ids}, {"/events", mock_get_events},
    {"/log", mock_get_log},     {"/healthz", get_healthz},
};

static const struct get_route *find_get_route(const char *url)
{
    for (size_t i = 0; i < sizeof(get_routes) / sizeof(get_routes[0]); i++) {
        if (strcmp(url, get_routes[i].path) == 0)
            return &get_routes[i];
    }
    return NULL;
}

static enum MHD_Result respond_faults(struct eng_mockapi *m, struct MHD_Connection *c)
{
    pthread_mutex_lock(&m->lock);
    json_t *j = mock_faults_json(&m->faults, m->require_token);
    pthread_mutex_unlock(&m->lock);
    return mock_respond_json(c, MHD_HTTP_OK, j);
}

/* /control: on the control listener only, so a client of the API cannot change the faults. */
static enum MHD_Result route_control(struct listener *l, struct MHD_Connection *c,
                                     struct req_ctx *rc, bool get, bool post)
{
    struct eng_mockapi *m = l->m;
    if (!l->control)
        return mock_respond_error(c, MHD_HTTP_NOT_FOUND,
                                  "/control is on the control listener only");
    if (get)
        return respond_faults(m, c);
    if (!post)
        return mock_respond_error(c, 404, "not on the control listener");
    if (rc->too_big)
        return mock_respond_error(c, 413, "control body too large");
    struct eng_error err;
    if (eng_mockapi_control(m, rc->body.data ? rc->body.data : "", rc->body.len, &err) != 0)
        return mock_respond_error(c, MHD_HTTP_BAD_REQUEST, err.msg);
    return respond_faults(m, c);
}

/* A complete request, to its endpoint. */
static enum MHD_Result route(struct listener *l, struct MHD_Connection *c, struct req_ctx *rc,
                             const char *url, const char *method)
{
    bool get = strcmp(method, "GET") == 0;
    bool post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/events") == 0 && post && !l->control)
        return mock_post_events(l->m, c, rc);
    const struct get_route *r = find_get_route(url);
    if (r != NULL && get)
        return r->get(l->m, c);
    if (strcmp(url, "/control") == 0)
        return route_control(l, c, rc, get, post);
    if (r != NULL)
        return mock_respond_error(c, l->control ? 404 : MHD_HTTP_METHOD_NOT_ALLOWED,
                                  l->control ? "not on the control listener"
                                             : "method not allowed");
    return mock_respond_error(c, MHD_HTTP_NOT_FOUND, "not found");
}

static struct req_ctx *req_ctx_create(struct listener *l)
{
    struct eng_mockapi *m = l->m;
    struct req_ctx *rc = eng_calloc(1, sizeof(*rc));
    rc->t0_us = eng_clock_mono_us();
    rc->body.cap = l->control ? CONTROL_MAX_BODY : m->opt.max_body;
    if (!l->control) {
        pthread_mutex_lock(&m->lock);
        m->active++;
        pthread_mutex_unlock(&m->lock);
        rc->counted_active = true;
    }
    return rc;
}

enum MHD_Result mock_on_request(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct listener *l = cls;
    struct req_ctx *rc = *con_cls;
    if (rc == NULL) {
        *con_cls = req_ctx_create(l);
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        body_take(l->m, rc, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rc->over_budget)
        return mock_respond_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "mock-api holds too many request bodies (max_body_total)");
    return route(l, c, rc, url, method);
}

void mock_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
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
