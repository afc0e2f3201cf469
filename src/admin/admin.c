#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "../core/clock.h"
#include "../core/net.h"
#include "../core/buf.h"
#include "../core/log.h"
#include "admin.h"
#include "../core/metrics.h"

/* Abuse bounds (issue 8, item 7). A probe must get through while others hold connections:
 * one client address holds at most ADMIN_PER_IP_CONNECTIONS (MHD accepts and at once closes
 * the next), all together at most ADMIN_MAX_CONNECTIONS; a connection that sends nothing for
 * ADMIN_CONNECTION_TIMEOUT_S (idle, or headers trickling slower than that) is closed. A
 * request is a few hundred bytes, so each connection's memory is capped small. */
#define ADMIN_MAX_CONNECTIONS      256
#define ADMIN_PER_IP_CONNECTIONS   16
#define ADMIN_CONNECTION_TIMEOUT_S 3
#define ADMIN_CONNECTION_MEMORY    (16 * 1024)
/* A request's headers must be complete this long after its connection opened or the previous
 * answer was sent, however slowly they trickle in (which the inactivity timeout alone cannot
 * catch); a reaper thread shuts such connections down. */
#define ADMIN_HEADER_DEADLINE_US (5 * 1000000)
#define ADMIN_REAP_TICK_MS       250
#define READY_WHY_LEN            1024

/* One open connection, for the header deadline. The slot is freed (fd invalid) by MHD's
 * closed notification, which comes before MHD closes the socket, and the reaper shuts a
 * socket down only under the same lock: it never touches a descriptor MHD has let go. */
struct admin_conn {
    MHD_socket fd; /* MHD_INVALID_SOCKET: a free slot */
    bool waiting;  /* for a request's headers, since since_us */
    int64_t since_us;
};

struct eng_admin {
    struct MHD_Daemon *daemon;
    struct eng_admin_hooks hooks;
    uint16_t port;

    pthread_mutex_t lock; /* guards conns and stopping */
    pthread_cond_t cond;  /* CLOCK_MONOTONIC; wakes the reaper to stop */
    bool stopping;
    bool reaper_started;
    pthread_t reaper;
    struct admin_conn conns[ADMIN_MAX_CONNECTIONS];
};

static struct admin_conn *conn_slot(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

/* On MHD's thread: a connection opened or closed. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct eng_admin *a = cls;
    pthread_mutex_lock(&a->lock);
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (size_t i = 0; ci != NULL && i < ADMIN_MAX_CONNECTIONS; i++) {
            struct admin_conn *s = &a->conns[i];
            if (s->fd == MHD_INVALID_SOCKET) {
                s->fd = ci->connect_fd;
                s->waiting = true;
                s->since_us = eng_clock_mono_us();
                *socket_context = s;
                break;
            }
        }
    } else if (*socket_context != NULL) {
        struct admin_conn *s = *socket_context;
        s->fd = MHD_INVALID_SOCKET;
        s->waiting = false;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&a->lock);
}

/* On MHD's thread: the headers of a request are in (waiting = false), or its answer was
 * sent and the connection waits for the next request (waiting = true). */
static void conn_set_waiting(struct eng_admin *a, struct MHD_Connection *c, bool waiting)
{
    struct admin_conn *s = conn_slot(c);
    if (s == NULL)
        return;
    pthread_mutex_lock(&a->lock);
    s->waiting = waiting;
    s->since_us = eng_clock_mono_us();
    pthread_mutex_unlock(&a->lock);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)req_cls;
    (void)toe;
    conn_set_waiting(cls, c, true);
}

static void *reaper_main(void *arg)
{
    struct eng_admin *a = arg;
    pthread_mutex_lock(&a->lock);
    while (!a->stopping) {
        int64_t now = eng_clock_mono_us();
        for (size_t i = 0; i < ADMIN_MAX_CONNECTIONS; i++) {
            struct admin_conn *s = &a->conns[i];
            if (s->fd != MHD_INVALID_SOCKET && s->waiting &&
                now - s->since_us > ADMIN_HEADER_DEADLINE_US) {
                shutdown(s->fd, SHUT_RDWR); /* MHD sees the end and closes it */
                s->waiting = false;
            }
        }
        int64_t until = now + ADMIN_REAP_TICK_MS * 1000;
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000),
                              .tv_nsec = (long)(until % 1000000) * 1000};
        pthread_cond_timedwait(&a->cond, &a->lock, &ts);
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

int eng_admin_parse_addr(const char *host_port, char *host, size_t hostlen, uint16_t *port,
                         struct eng_error *err)
{
    if (host_port == NULL || host_port[0] == '\0')
        host_port = ENG_ADMIN_DEFAULT_ADDR;
    const char *h = host_port;
    size_t hl;
    const char *p;
    if (h[0] == '[') {
        const char *close = strchr(h, ']');
        if (close == NULL || close[1] != ':')
            goto bad;
        h++;
        hl = (size_t)(close - h);
        p = close + 2;
    } else {
        const char *colon = strrchr(h, ':');
        if (colon == NULL || memchr(h, ':', (size_t)(colon - h)) != NULL)
            goto bad; /* no port, or an IPv6 literal without brackets */
        hl = (size_t)(colon - h);
        p = colon + 1;
    }
    if (hl == 0 || hl >= hostlen)
        goto bad;
    long v = 0;
    size_t digits = 0;
    for (; p[digits] != '\0'; digits++) {
        if (p[digits] < '0' || p[digits] > '9' || digits >= 5)
            goto bad;
        v = v * 10 + (p[digits] - '0');
    }
    if (digits == 0 || v > 65535)
        goto bad;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (uint16_t)v;
    return 0;
bad:
    return eng_error_set(err, ENG_EINVAL, false,
                         "invalid admin address \"%.100s\": expected HOST:PORT or [IPV6]:PORT",
                         host_port);
}

/* Binds and listens on host:port; returns the socket, or -1 with errno-style *why set. */
static int listen_on(const char *host, uint16_t port, char *why, size_t whylen)
{
    struct addrinfo hints;
    struct addrinfo *res = NULL;
    char service[8];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(service, sizeof(service), "%u", (unsigned)port);
    int grc = getaddrinfo(host, service, &hints, &res);
    if (grc != 0) {
        snprintf(why, whylen, "%s", gai_strerror(grc));
        return -1;
    }
    int fd = -1;
    int saved = 0;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(why, whylen, "%s", strerror(saved));
    return fd;
}

/* libmicrohttpd's complaints, at most one line a second: under a flood of connections it
 * would write one per refused connection. Called on MHD's thread only. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    static int64_t last_us;
    static unsigned suppressed;
    (void)cls;
    int64_t now = eng_clock_mono_us();
    if (last_us != 0 && now - last_us < 1000000) {
        suppressed++;
        return;
    }
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\r\n")] = '\0';
    eng_warn("msg=\"admin http: %s\" suppressed_before=%u", line, suppressed);
    last_us = now;
    suppressed = 0;
}

/* Queues a response with body (len bytes). With owned, body was malloc'd and is taken. */
static enum MHD_Result reply(struct MHD_Connection *c, unsigned int status, const char *ctype,
                             char *body, size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned int status, const char *text)
{
    return reply(c, status, "text/plain; charset=utf-8", (char *)text, strlen(text), false);
}

static enum MHD_Result serve_metrics(struct MHD_Connection *c)
{
    struct eng_buf b = {0};
    eng_metrics_render(&b);
    if (b.overflow || b.data == NULL) {
        bool overflow = b.overflow;
        eng_buf_free(&b);
        return overflow ? reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics too large\n")
                        : reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", "", 0,
                                false);
    }
    /* The rendered text is handed to MHD, which frees it with free(). */
    return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, true);
}

static enum MHD_Result serve_ready(struct eng_admin *a, struct MHD_Connection *c)
{
    char why[READY_WHY_LEN];
    char body[READY_WHY_LEN + 16];
    why[0] = '\0';
    bool ready = a->hooks.ready == NULL || a->hooks.ready(a->hooks.ctx, why, sizeof(why));
    why[sizeof(why) - 1] = '\0';
    why[strcspn(why, "\r\n")] = '\0';
    if (ready)
        snprintf(body, sizeof(body), "ok%s%s\n", why[0] ? " " : "", why);
    else
        snprintf(body, sizeof(body), "not ready: %s\n", why[0] ? why : "(no reason given)");
    return reply_text(c, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, body);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    struct eng_admin *a = cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    conn_set_waiting(a, c, false);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    if (strcmp(url, "/metrics") == 0)
        return serve_metrics(c);
    if (strcmp(url, "/healthz") == 0)
        return reply_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0)
        return serve_ready(a, c);
    return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n");
}

struct eng_admin *eng_admin_start(const char *host_port, struct eng_admin_hooks hooks,
                                  struct eng_error *err)
{
    char host[256];
    char why[128];
    uint16_t port;
    if (host_port == NULL || host_port[0] == '\0')
        host_port = ENG_ADMIN_DEFAULT_ADDR;
    if (eng_admin_parse_addr(host_port, host, sizeof(host), &port, err) != 0)
        return NULL;
    int fd = listen_on(host, port, why, sizeof(why));
    if (fd < 0) {
        eng_error_set(err, ENG_EIO, false, "could not listen on \"%.100s\": %s", host_port, why);
        return NULL;
    }
    struct eng_admin *a = eng_calloc(1, sizeof(*a));
    a->hooks = hooks;
    a->port = eng_net_bound_port(fd);
    for (size_t i = 0; i < ADMIN_MAX_CONNECTIONS; i++)
        a->conns[i].fd = MHD_INVALID_SOCKET;
    pthread_mutex_init(&a->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cond, &ca);
    pthread_condattr_destroy(&ca);
    a->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_request, a, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, /* first, or MHD says so */
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)ADMIN_MAX_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)ADMIN_PER_IP_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)ADMIN_CONNECTION_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)ADMIN_CONNECTION_MEMORY, MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, a, MHD_OPTION_END);
    if (a->daemon != NULL && pthread_create(&a->reaper, NULL, reaper_main, a) == 0)
        a->reaper_started = true;
    if (a->daemon == NULL || !a->reaper_started) {
        if (a->daemon != NULL)
            MHD_stop_daemon(a->daemon); /* closes fd */
        else
            close(fd);
        pthread_cond_destroy(&a->cond);
        pthread_mutex_destroy(&a->lock);
        free(a);
        eng_error_set(err, ENG_EIO, false, "could not serve on \"%.100s\": libmicrohttpd failed",
                      host_port);
        return NULL;
    }
    /* fd is now owned by the daemon, which closes it on stop. */
    eng_info("msg=\"admin endpoint listening\" host=%s port=%u", host, (unsigned)a->port);
    return a;
}

uint16_t eng_admin_port(const struct eng_admin *a)
{
    return a->port;
}

void eng_admin_stop(struct eng_admin *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->lock);
    a->stopping = true;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->reaper, NULL); /* first: it must not shut down a socket MHD closes */
    MHD_stop_daemon(a->daemon);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->lock);
    free(a);
}
