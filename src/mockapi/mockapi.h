/* engage: the stand-in for the external HTTP API (`engage mock-api`): accepts enriched events,
 * dedupes them by event_id, counts, and injects faults on request. Ownership: the server owns
 * everything it allocates and frees it in eng_mockapi_stop; options are copied at start.
 * Every function is thread-safe except stop, which must be the last call.
 *
 * Endpoints (on the API listener; the control listener serves all but POST /events, and stays
 * up while the API listener is down; /control is served on the control listener only, so a
 * client of the API cannot change the faults):
 *   POST /events        one event object or a JSON array of them, each with an integer
 *                       event_id; 200 {"accepted":N,"new":K,"duplicates":D}; 400 on malformed
 *                       JSON, 415 without Content-Type application/json, 401 when a token is
 *                       required and missing; faults apply here only
 *   GET  /stats         counters: received, unique, duplicates, requests, status{code:N}, ...
 *   GET  /events/ids    JSON array of the unique event ids received, ascending
 *   GET  /events        JSON array of the first body received for each event, in arrival order
 *   GET  /log           the last requests: [{seq,t_ms,mono_ms,idempotency_key,status,outcome,
 *                       n,ids,duration_ms}], oldest first; ?since=SEQ, ?limit=N
 *   GET  /control       the current faults; POST /control changes them (JSON, see below)
 *   GET  /healthz       200 ok
 *
 * Control JSON (every key optional; unknown keys are a 400 and nothing is applied):
 *   fail_rate 0..1, fail_status (default 500), status_429_rate 0..1, retry_after seconds,
 *   retry_after_date bool, delay_ms, delay_jitter_ms, hang (bool or 0..1), hang_max_ms,
 *   reset (bool or 0..1: close with RST after reading the request, nothing recorded),
 *   reset_after_accept (bool or 0..1: record, then close without answering: a lost ack),
 *   down bool (close the listening socket and every connection: clients see refusals),
 *   down_ms (with down: come back up after that long), log bool, seed, require_token
 *   (string or null), clear (bool: all faults off first), clear_stats (bool). */
#ifndef ENG_MOCKAPI_H
#define ENG_MOCKAPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"

struct eng_mockapi;

struct eng_mockapi_faults {
    double fail_rate;               /* fraction of POST /events answered fail_status */
    int fail_status;                /* 500 unless set */
    double status_429_rate;         /* fraction answered 429 */
    int64_t retry_after_s;          /* Retry-After sent with 429 (0: none) */
    bool retry_after_date;          /* send it as an HTTP-date instead of seconds */
    int64_t delay_ms;               /* every answer waits this long ... */
    int64_t delay_jitter_ms;        /* ... plus uniform [0, jitter] */
    double hang_rate;               /* fraction never answered (closed after hang_max_ms) */
    int64_t hang_max_ms;            /* 120000 unless set */
    double reset_rate;              /* fraction reset after reading the request */
    double reset_after_accept_rate; /* fraction recorded, then reset without an answer */
    bool down;                      /* refuse connections */
    int64_t down_ms;                /* with down: up again after this long (0: stay down) */
    bool log;                       /* one stderr line per request */
};

struct eng_mockapi_options {
    const char *host;          /* API listener address, default "127.0.0.1" */
    uint16_t port;             /* 0: an ephemeral port (see eng_mockapi_port) */
    const char *control_host;  /* NULL: host */
    int control_port;          /* 0: ephemeral; -1: no control listener */
    uint64_t seed;             /* fault dice; 0: from the clock */
    const char *require_token; /* when set, POST /events needs `Authorization: Bearer <it>` */
    size_t log_size;           /* request log ring entries, default 4096 */
    size_t max_events;         /* unique event ids kept, default 16M; past it: 507 */
    size_t max_stored_bytes;   /* event bodies kept for GET /events, default 256 MiB */
    size_t max_body;           /* request body cap, default 16 MiB; past it: 413 */
    size_t max_body_total;     /* bytes of request bodies held at once over every connection,
                                  default 64 MiB; a request that would pass it: 503 */
    unsigned max_connections;  /* default 512 (one thread each) */
    struct eng_mockapi_faults faults;
};

/* Fills o with the defaults (loopback, port 8000, ephemeral control port, no faults). */
void eng_mockapi_options_default(struct eng_mockapi_options *o);

/* Starts the listeners and their threads. Returns NULL with err set when an address cannot be
 * bound. faults.down starts with the API listener down. */
struct eng_mockapi *eng_mockapi_start(const struct eng_mockapi_options *o, struct eng_error *err);

/* The bound ports (the real ones when 0 was asked); control is 0 without a control listener. */
uint16_t eng_mockapi_port(const struct eng_mockapi *m);
uint16_t eng_mockapi_control_port(const struct eng_mockapi *m);

/* Applies a control JSON document as POST /control does. Returns 0 or ENG_EINVAL with err. */
int eng_mockapi_control(struct eng_mockapi *m, const char *json, size_t len, struct eng_error *err);

/* Stops the listeners (closing every connection), joins the threads and frees m. NULL is a
 * no-op. */
void eng_mockapi_stop(struct eng_mockapi *m);

#endif
