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
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "../core/net.h"
#include "mockapi_internal.h"

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
    return MHD_start_daemon(flags, 0, NULL, NULL, mock_on_request, l, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_NOTIFY_COMPLETED, mock_on_completed, l,
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

/* Copies the options, with defaults for those left 0 and the faults within their bounds; the
 * caller's strings are not kept. */
static void options_take(struct eng_mockapi *m, const struct eng_mockapi_options *o)
{
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
}

/* Everything but the listeners: the dice, the clocks, the store, the lock. */
static void state_init(struct eng_mockapi *m, uint64_t seed)
{
    m->rng = seed ? seed : ((uint64_t)eng_clock_wall_us() | 1);
    m->start_us = eng_clock_mono_us();
    if (m->faults.down && m->faults.down_ms > 0)
        m->up_at_us = m->start_us + m->faults.down_ms * 1000;
    m->api_fd = -1;
    m->control_fd = -1;
    m->api_l.m = m;
    m->control_l.m = m;
    m->control_l.control = true;
    m->ring = eng_calloc(m->opt.log_size, sizeof(*m->ring));
    mock_tab_alloc(m, 1024);
    m->arena.cap = m->opt.max_stored_bytes + 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cond, &ca);
    pthread_condattr_destroy(&ca);
}

/* Resolves the API address and settles its port, so that "down" and "up" reuse it. */
static int api_listener_prepare(struct eng_mockapi *m, const char *host, uint16_t port,
                                struct eng_error *err)
{
    if (resolve(host, port, &m->api_addr, &m->api_addrlen, err) != 0)
        return -1;
    m->port = port;
    if (m->port == 0) {
        /* Bind once to learn the port. */
        int fd = listen_on(&m->api_addr, m->api_addrlen, err);
        if (fd < 0)
            return -1;
        m->port = eng_net_bound_port(fd);
        set_port(&m->api_addr, m->port);
        close(fd);
    }
    return 0;
}

static int control_listener_start(struct eng_mockapi *m, const char *host, uint16_t port,
                                  struct eng_error *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (resolve(host, port, &ss, &len, err) != 0)
        return -1;
    m->control_fd = listen_on(&ss, len, err);
    if (m->control_fd < 0)
        return -1;
    m->control_port = eng_net_bound_port(m->control_fd);
    m->control = start_daemon(m, &m->control_l, m->control_fd, ss.ss_family);
    if (m->control == NULL)
        return eng_error_set(err, ENG_EIO, false, "could not start the control daemon");
    return 0;
}

struct eng_mockapi *eng_mockapi_start(const struct eng_mockapi_options *o, struct eng_error *err)
{
    struct eng_mockapi_options def;
    if (o == NULL) {
        eng_mockapi_options_default(&def);
        o = &def;
    }
    struct eng_mockapi *m = eng_calloc(1, sizeof(*m));
    options_take(m, o);
    state_init(m, o->seed);

    const char *host = o->host ? o->host : "127.0.0.1";
    if (api_listener_prepare(m, host, o->port, err) != 0)
        goto fail;
    if (!m->faults.down && api_up(m, err) != 0)
        goto fail;
    if (o->control_port >= 0 && control_listener_start(m, o->control_host ? o->control_host : host,
                                                       (uint16_t)o->control_port, err) != 0)
        goto fail;
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
