/* engage: the HTTP sink's decisions without I/O: which answers are retried, when the next
 * attempt of a request may start, Retry-After parsing, and the circuit breaker. Time is
 * passed in by the caller (`now` arguments) and randomness comes from an injectable source,
 * so unit tests can drive every schedule. Ownership: every struct here is a plain value owned
 * by its caller; nothing allocates. Not thread-safe: one sink thread uses one set. */
#ifndef ENG_HTTP_POLICY_H
#define ENG_HTTP_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/backoff.h"

/* What to do with the events of a request after one attempt. */
enum eng_http_outcome {
    ENG_HTTP_DELIVERED, /* 2xx: acknowledged */
    ENG_HTTP_RETRY,     /* 408, 429, 5xx, timeout, connection error: try again later */
    ENG_HTTP_REJECTED,  /* any other status: retrying cannot help, park at once */
};

/* Classifies one attempt. transport_error is true when no HTTP answer arrived (connection
 * refused or reset, timeout, empty reply); status is ignored then. */
enum eng_http_outcome eng_http_classify(bool transport_error, long status);

/* Whether the attempt counts as a failure for the circuit breaker: transport errors, 408 and
 * 5xx. A 429 does not (the API is up and tells us when to come back, which Retry-After and
 * the sink-wide hold already honour), nor does any other answer. */
bool eng_http_breaker_failure(bool transport_error, long status);

/* Parses a Retry-After value, either delay-seconds or an HTTP-date (IMF-fixdate, RFC 850 or
 * asctime form), into a delay from now_wall_us (UTC microseconds) in microseconds, never
 * negative and capped at one day. Returns false when the value is neither. */
bool eng_http_parse_retry_after(const char *value, int64_t now_wall_us, int64_t *delay_us);

/* The retry policy shared by every request of a sink. */
struct eng_http_retry_policy {
    uint32_t max_attempts; /* attempts per request, the first included; 0 is taken as 1 */
    int64_t budget_us;     /* total time from the start of a request's budget */
    int64_t base_us;       /* backoff: the n-th retry waits uniform [0, min(cap, base*2^n)] */
    int64_t cap_us;
    int64_t min_attempt_us;        /* no attempt starts with less than this left of the budget */
    uint64_t (*random)(void *ctx); /* injected random source; NULL: xorshift seeded per request */
    void *random_ctx;
};

/* One request's retry state. */
struct eng_http_retry {
    struct eng_backoff backoff;
    uint32_t attempts;   /* attempts started so far */
    int64_t deadline_us; /* end of the budget: start + budget_us */
};

enum eng_http_giveup {
    ENG_HTTP_GIVEUP_NONE,
    ENG_HTTP_GIVEUP_ATTEMPTS, /* max_attempts reached */
    ENG_HTTP_GIVEUP_TIME,     /* the next attempt could not start within the budget */
};

/* Starts a request's budget at now_us. seed feeds the per-request xorshift when the policy
 * has no injected random source. */
void eng_http_retry_start(const struct eng_http_retry_policy *p, struct eng_http_retry *r,
                          int64_t now_us, uint64_t seed);

/* Records that an attempt starts at now_us and returns the timeout it may use: timeout_us cut
 * to what is left of the budget (at least 1 ms), so no attempt outlives the budget. */
int64_t eng_http_retry_attempt(struct eng_http_retry *r, int64_t now_us, int64_t timeout_us);

/* After a failed attempt at now_us: returns the earliest time the next attempt may start,
 * now + max(full-jitter backoff, retry_after_us), or -1 to give up, with the reason in *why
 * (why may be NULL). retry_after_us is the server's Retry-After as a delay, or 0. */
int64_t eng_http_retry_next(const struct eng_http_retry_policy *p, struct eng_http_retry *r,
                            int64_t now_us, int64_t retry_after_us, enum eng_http_giveup *why);

/* Whether a request that is waiting (for a slot, a hold or the breaker) can still start an
 * attempt at now_us within its budget and attempt count. */
bool eng_http_retry_alive(const struct eng_http_retry_policy *p, const struct eng_http_retry *r,
                          int64_t now_us);

/* The circuit breaker: closed -> open after `threshold` consecutive failed requests; while
 * open nothing is sent; after open_us it turns half-open and lets exactly one probe through;
 * the probe's success closes it, its failure opens it again for open_us. */
enum eng_http_breaker_state {
    ENG_HTTP_BREAKER_CLOSED = 0,
    ENG_HTTP_BREAKER_OPEN = 1,
    ENG_HTTP_BREAKER_HALF_OPEN = 2,
};

struct eng_http_breaker {
    enum eng_http_breaker_state state;
    uint32_t threshold; /* 0 disables the breaker (always closed) */
    int64_t open_us;
    uint32_t failures; /* consecutive, while closed */
    int64_t opened_at_us;
    bool probe_in_flight;
    uint64_t transitions; /* state changes so far (for logs and tests) */
};

/* What eng_http_breaker_acquire grants. */
enum eng_http_breaker_grant {
    ENG_HTTP_BREAKER_DENY = 0,  /* do not send now (see eng_http_breaker_retry_at) */
    ENG_HTTP_BREAKER_PASS = 1,  /* closed: send */
    ENG_HTTP_BREAKER_PROBE = 2, /* half-open: send this one request as the probe */
};

void eng_http_breaker_init(struct eng_http_breaker *b, uint32_t threshold, int64_t open_us);

/* Asks to send one request at now_us; turns open into half-open once open_us has passed. A
 * PROBE grant must be followed by eng_http_breaker_record(..., probe=true). */
enum eng_http_breaker_grant eng_http_breaker_acquire(struct eng_http_breaker *b, int64_t now_us);

/* Records the result of a request granted PASS (probe=false) or PROBE (probe=true). Results of
 * requests sent while closed that arrive after the breaker opened change nothing. Returns
 * true when the state changed. */
bool eng_http_breaker_record(struct eng_http_breaker *b, int64_t now_us, bool failure, bool probe);

/* When open: the time the half-open probe becomes possible; otherwise 0. */
int64_t eng_http_breaker_retry_at(const struct eng_http_breaker *b);

/* A request rate limit shared by every request of a sink (--http-rate), as a token bucket of
 * `burst` tokens refilled at `per_second` (kept as GCRA: the time the next request conforms).
 * A rate of 0 is no limit. */
struct eng_http_rate {
    int64_t interval_us; /* 1 s / rate; 0: unlimited */
    int64_t burst_us;    /* (burst - 1) * interval: how far ahead of the schedule may be spent */
    int64_t tat_us;      /* theoretical arrival time of the next request */
};

/* per_second 0 (or less) disables the limit; burst is taken as at least 1. */
void eng_http_rate_init(struct eng_http_rate *r, double per_second, uint32_t burst);

/* The earliest time a request may start (<= now_us when one may start now). */
int64_t eng_http_rate_ready_at(const struct eng_http_rate *r, int64_t now_us);

/* Spends one token for a request starting at now_us. */
void eng_http_rate_take(struct eng_http_rate *r, int64_t now_us);

#endif
