/* engage: the admin HTTP endpoint (libmicrohttpd, one internal thread):
 *   GET /metrics  Prometheus text exposition of the metrics registry
 *   GET /healthz  200 "ok" while the process runs
 *   GET /readyz   200 when the ready hook says so, else 503 with its reason
 * Ownership: the endpoint owns its listening socket and its thread; hooks.ctx is borrowed and
 * must stay valid until eng_admin_stop returns. */
#ifndef ENG_ADMIN_H
#define ENG_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"

#define ENG_ADMIN_DEFAULT_ADDR "127.0.0.1:9187"

struct eng_admin_hooks {
    /* Whether the process is ready; writes a short reason (one line, also written when ready,
     * e.g. "clickhouse=ok redis=ok") to why. Called on the endpoint's thread, concurrently with
     * the rest of the process: it must be thread-safe. NULL means always ready. */
    bool (*ready)(void *ctx, char *why, size_t whylen);
    void *ctx;
};

struct eng_admin;

/* Parses "HOST:PORT" ("127.0.0.1:9187", "[::1]:9187", "localhost:0"; NULL or "" means
 * ENG_ADMIN_DEFAULT_ADDR) into host (without brackets, NUL-terminated, at most hostlen - 1
 * bytes) and port (0 = any free port). Returns 0 or ENG_EINVAL with err set. Any thread. */
int eng_admin_parse_addr(const char *host_port, char *host, size_t hostlen, uint16_t *port,
                         struct eng_error *err) ENG_MUSTCHECK;

/* Listens on host_port and serves on an internal thread. Returns NULL with err set (not
 * retriable) on a bad address or when the address cannot be bound, e.g.
 * `could not listen on "127.0.0.1:9187": Address already in use`. */
struct eng_admin *eng_admin_start(const char *host_port, struct eng_admin_hooks hooks,
                                  struct eng_error *err);

/* The port actually bound (useful with port 0). */
uint16_t eng_admin_port(const struct eng_admin *a);

/* Stops serving, waits for the thread and closes the socket. NULL is a no-op. */
void eng_admin_stop(struct eng_admin *a);

#endif
