/* engage: the external HTTP API sink (DESIGN.md sections 2 and 5): POST {url}/events with an
 * Idempotency-Key, retries within a budget, a circuit breaker, and the dead-letter queue for
 * what cannot be delivered. Ownership: the sink copies every option it keeps (strings
 * included) except `dlq`, which it borrows: the dlq must outlive the sink and must not be
 * used by another thread while the sink's write runs. */
#ifndef ENG_SINK_HTTP_H
#define ENG_SINK_HTTP_H

#include <stdint.h>

#include "../core/error.h"
#include "../dlq/dlq.h"
#include "sink.h"

struct eng_http_options {
    uint32_t batch_size;        /* events per request: 1 = a JSON object, >1 = a JSON array */
    uint32_t max_in_flight;     /* concurrent requests (keep-alive connections) */
    int64_t timeout_ms;         /* per request, connect included */
    int64_t connect_timeout_ms; /* 0: min(timeout_ms, 5000) */
    uint32_t max_attempts;      /* per request, the first included */
    int64_t retry_budget_ms;    /* total time one write may spend on a request */
    int64_t backoff_base_ms;    /* full-jitter exponential backoff between attempts */
    int64_t backoff_cap_ms;
    uint32_t breaker_failures; /* consecutive failed requests that open the breaker; 0 = off */
    int64_t breaker_open_ms;   /* how long it stays open before one half-open probe */
    const char *token_file;    /* bearer token file; NULL: $ENGAGE_HTTP_TOKEN; neither: none */
    struct eng_dlq *dlq;       /* borrowed; NULL: undeliverable events fail the write instead */
    uint64_t seed;             /* jitter seed; 0: from the clock */
    double rate;               /* requests per second over all in flight (retries included);
                                  0: no limit. Requests are spaced 1/rate apart, no burst */
};

/* Fills opt with the defaults, the one set the command line documents and relies on: 100
 * events per request, 4 in flight, timeout 5 s, 8 attempts, retry budget 60 s, backoff
 * 100 ms .. 5 s, breaker 10 failures / 5 s, no rate limit, token from the environment, no
 * dlq. */
void eng_http_options_default(struct eng_http_options *opt);

/* Creates the sink posting to base_url + "/events" (a trailing '/' of base_url is ignored).
 * opt NULL means the defaults. Returns NULL with err set on a bad URL, an unreadable token
 * file or an invalid option. Reads the token once, here; it is sent as
 * `Authorization: Bearer ...` and never logged. */
struct eng_sink *eng_http_sink_create(const char *base_url, const struct eng_http_options *opt,
                                      struct eng_error *err);

/* Makes the write running on the sink's thread (or the next one) stop early and return
 * ENG_ESTOPPED (retriable: nothing it had not finished counts as delivered). Sticky. Any
 * thread may call it; safe against a concurrent write, not against destroy. */
void eng_http_sink_cancel(struct eng_sink *s);

/* The sink's write contract, beyond sink.h:
 * - returns 0 only when every event of the batch was acknowledged with a 2xx by the API or
 *   parked in the dlq; otherwise a retriable error (the dlq was unreachable, cancel) or a
 *   non-retriable one (the dlq refused the rows), and nothing counts as delivered, though the
 *   requests already acknowledged are not sent again when the same batch is written next;
 * - one call takes at most about retry_budget_ms plus the time to park in the dlq: no
 *   attempt starts, or runs, past the budget. */

#endif
