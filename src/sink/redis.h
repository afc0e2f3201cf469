/* engage: the Redis sink (real-time counters, newest event per content, rolling top).
 * Ownership: the sink owns its connection and its copy of the URL; batches are borrowed for
 * the duration of one write; an eng_redis_url owns its strings until eng_redis_url_free. */
#ifndef ENG_SINK_REDIS_H
#define ENG_SINK_REDIS_H

#include <stdbool.h>
#include <stdint.h>

#include "sink.h"

/* Keys written (DESIGN.md section 2; the names are the product's interface):
 *   content:last:{content_id}           enriched event JSON of the newest event, TTL last_ttl
 *   content:count:{content_id}          events counted, no TTL
 *   top:content:bucket:{YYYYMMDDHHMM}   ZSET content_id -> events in that UTC minute,
 *                                       TTL bucket_ttl (refreshed on each increment)
 *   top:content:10m                     ZUNIONSTORE of the top_minutes latest buckets, TTL top_ttl
 * and, for the sink's own bookkeeping, under a prefix of their own:
 *   engage:seen:{event_id >> 20}        bitmap, bit event_id & (2^20 - 1): events applied
 *   engage:last:{content_id}            "event_ts_us:event_id" of the value in content:last
 *   engage:mark                         hash: gen (the generation of this data) and seq (script
 *                                       calls applied), checked by every call: see redis.c
 *   engage:top:end                      the window end top:content:10m was built for: while it
 *                                       holds, a batch adds its increments to the union instead
 *                                       of rebuilding it (cost per batch, not per content) */

#define ENG_REDIS_MAX_TOP_MINUTES 60
#define ENG_REDIS_GEN_LEN         16 /* hex digits of a generation of Redis's data */

/* Zero fields take the default written beside them, except seen_ttl_s (0: never expires). */
struct eng_redis_options {
    uint32_t last_ttl_s;          /* 3600 */
    uint32_t bucket_ttl_s;        /* 900 */
    uint32_t top_ttl_s;           /* 120 */
    uint32_t seen_ttl_s;          /* 0 = the seen-set never expires (the default) */
    uint32_t top_minutes;         /* 10, at most ENG_REDIS_MAX_TOP_MINUTES */
    uint32_t connect_timeout_ms;  /* 2000 */
    uint32_t command_timeout_ms;  /* 10000 */
    uint32_t max_events_per_call; /* 1000: a batch is applied in calls of at most this many */
    /* Wall clock in UTC microseconds, used for the bucket cut-off and the top window;
     * NULL means eng_clock_wall_us. Tests inject a fixed clock. */
    int64_t (*now_us)(void);
    /* The generation of Redis's data (engage:mark) the state directory last knew complete, or
     * NULL: a Redis found with another generation, or none, lost what engage wrote. */
    const char *known_gen;
    /* Called on the sink's thread after every connection and after a loss with the
     * generation the sink now writes into; lost is true (and why says how) when Redis no
     * longer holds what engage wrote. NULL: a loss is only logged. */
    void (*on_mark)(void *ctx, const char *gen, bool lost, const char *why);
    void *mark_ctx;
};

/* Fills opt with the defaults. */
void eng_redis_options_init(struct eng_redis_options *opt);

/* A parsed redis:// URL. user and password are NULL when absent. */
struct eng_redis_url {
    char *host;
    int port;
    int db;
    char *user;
    char *password;
};

/* Parses `redis://[[user]:password@]host[:port][/db]` (also `redis://password@host`, as
 * redis-cli reads it; IPv6 hosts in brackets; user and password percent-decoded). Port
 * defaults to 6379, db to 0. On success fills out (free it with eng_redis_url_free) and
 * returns 0; otherwise returns ENG_EINVAL (not retriable) and out is left empty. Error
 * messages never contain the password. Any thread. */
int eng_redis_url_parse(const char *url, struct eng_redis_url *out,
                        struct eng_error *err) ENG_MUSTCHECK;

/* Frees the strings of u and zeroes it; NULL and an empty struct are fine. */
void eng_redis_url_free(struct eng_redis_url *u);

struct redisContext;

/* Connects to u (AUTH and SELECT as the URL says). Returns the connection (the caller frees
 * it with redisFree) or NULL with err set. Any thread; for the sink and for one-off readers
 * such as `engage top`. */
struct redisContext *eng_redis_connect(const struct eng_redis_url *u, uint32_t connect_timeout_ms,
                                       uint32_t command_timeout_ms, struct eng_error *err);

/* Creates a Redis sink for url with opt (NULL: defaults). Does not connect: the pipeline
 * calls open on the sink's thread. Returns NULL with err set (not retriable) on a bad URL or
 * bad options. Registers the metrics engage_sink_{events,batches,errors}_total{sink="redis"}
 * and engage_redis_duplicates_total.
 *
 * write applies each batch through one Lua script (EVALSHA; reloaded on NOSCRIPT) per slice
 * of at most max_events_per_call events; every call is atomic and idempotent by event_id,
 * so a batch may be written again after any failure, including a connection lost after the
 * script ran. An empty batch only rebuilds top:content:10m. Connection loss, timeouts and
 * busy/loading/OOM/read-only servers are retriable (the connection is dropped and open must
 * be called again); script errors, bad replies and event ids outside [0, 2^53) are not. */
struct eng_sink *eng_redis_sink_create(const char *url, const struct eng_redis_options *opt,
                                       struct eng_error *err);

#endif
