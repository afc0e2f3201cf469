/* engage: the ClickHouse sink (analytics), over the HTTP interface, one INSERT per batch.
 * Ownership: the sink owns its curl handle and its copies of the URL parts; batches are
 * borrowed for the duration of one write; an eng_clickhouse_url owns its strings until
 * eng_clickhouse_url_free. */
#ifndef ENG_SINK_CLICKHOUSE_H
#define ENG_SINK_CLICKHOUSE_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/buf.h"
#include "sink.h"

/* The table, created by open when missing (DESIGN.md section 2). DateTime('UTC') pins the
 * column's time zone, so "YYYY-MM-DD HH:MM:SS" is read as UTC and toYYYYMM partitions by the
 * UTC month whatever the server's own time zone is (checked on 18.16 and meant for current
 * servers too: both accept this exact DDL). ReplacingMergeTree on a key containing event_id
 * collapses a redelivered row into its twin; exact counts read FINAL or uniqExact(event_id).
 * engagement_seconds and engagement_pct are Decimal(12,3) and Decimal(12,2): 18.16 parses
 * some JSON numbers into Float64 one ulp off (4.69 -> 4.6899999999999995). */
#define ENG_CLICKHOUSE_DEFAULT_DATABASE "engagement"
#define ENG_CLICKHOUSE_TABLE            "events_enriched"

/* Zero fields take the default written beside them. */
struct eng_clickhouse_options {
    const char *database;        /* "engagement": [A-Za-z_][A-Za-z0-9_]*, at most 64 bytes */
    uint32_t connect_timeout_ms; /* 5000 */
    uint32_t timeout_ms;         /* 60000: the whole request, upload and answer */
    /* Sets input_format_skip_unknown_fields=1 on inserts: JSON keys that the table lacks are
     * ignored instead of failing the batch. Off by default so that a table that drifted from
     * the event's shape stops the sink loudly rather than dropping a field silently. */
    bool skip_unknown_fields;
};

/* Fills opt with the defaults. */
void eng_clickhouse_options_init(struct eng_clickhouse_options *opt);

/* A parsed ClickHouse URL. user and password are NULL when the URL has no user info. */
struct eng_clickhouse_url {
    char *host; /* without the brackets of an IPv6 literal */
    int port;
    bool tls; /* https */
    char *user;
    char *password;
    char *endpoint; /* "http://host:port/" without credentials: what requests go to */
    char *display;  /* "http://user@host:port/": safe to log, never holds the password */
};

/* Parses `http[s]://[user[:password]@]host[:port][/]` (IPv6 hosts in brackets; user and
 * password percent-decoded; an empty user means "default"). Port defaults to 8123 (8443 for
 * https). Nothing may follow the optional '/'. On success fills out (free it with
 * eng_clickhouse_url_free) and returns 0; otherwise returns ENG_EINVAL (not retriable) and
 * out is left empty. Error messages never contain the password. Any thread. */
int eng_clickhouse_url_parse(const char *url, struct eng_clickhouse_url *out,
                             struct eng_error *err) ENG_MUSTCHECK;

/* Frees the strings of u (wiping the password first) and zeroes it; NULL and an empty
 * struct are fine. */
void eng_clickhouse_url_free(struct eng_clickhouse_url *u);

/* The ClickHouse exception code at the start of an error body ("Code: 117, ..."), or 0 when
 * the body does not start with one. Servers before 19.x send no X-ClickHouse-Exception-Code
 * header, so the body is the only place the code is found. */
int eng_clickhouse_exception_code(const char *body, size_t len);

/* Whether a failed request may succeed when sent again unchanged, from its HTTP status and
 * the server's exception code (0 if unknown). The status alone is not enough: 18.16 answers
 * 500 to a batch it cannot parse (Code 117, 27, ...), which no retry will fix. Rules: codes
 * that depend only on the request (parse errors, type mismatches, unknown columns, syntax,
 * authentication, readonly) are never retriable; an unknown table or database is, because
 * open creates them again; otherwise 5xx, 408 and 429 are retriable and other statuses not. */
bool eng_clickhouse_retriable(long http_status, int exception_code);

/* Creates a ClickHouse sink for url with default options, or with opt. Does not connect:
 * the pipeline calls open on the sink's thread. Returns NULL with err set (not retriable) on
 * a bad URL or bad options. Registers engage_sink_{events,batches,errors,bytes}_total
 * {sink="clickhouse"}.
 *
 * open checks the server (SELECT version()), creates the database and the table if missing
 * and checks that the table has every column the events carry (a missing one is not
 * retriable); it logs a warning when the engine is not a ReplacingMergeTree with event_id in
 * its sorting key, because replays would then leave duplicates.
 * write sends batch->jsonl as-is in one POST of `INSERT INTO <db>.events_enriched FORMAT
 * JSONEachRow` over a kept-alive connection (no copy; an empty batch sends nothing) and
 * returns 0 only on HTTP 200. Connection errors and timeouts are retriable (a connection the
 * server closed while idle is retried once at once on a new one); HTTP errors are classified
 * by eng_clickhouse_retriable and their message carries the start of the server's answer. */
struct eng_sink *eng_clickhouse_sink_create(const char *url, struct eng_error *err);
struct eng_sink *eng_clickhouse_sink_create_opt(const char *url,
                                                const struct eng_clickhouse_options *opt,
                                                struct eng_error *err);

/* Runs one query (POSTed as the body, with wait_end_of_query=1 so that a failure is reported
 * in the status, not in the middle of a 200 answer) and appends the answer to out (bounded
 * by out's cap). Returns 0 on HTTP 200, else an error classified as for write, with the
 * server's message. Its own connection, default timeouts; any thread. For one-off queries
 * such as `engage status`, not for a hot path. */
int eng_clickhouse_query(const char *url, const char *sql, struct eng_buf *out,
                         struct eng_error *err) ENG_MUSTCHECK;

#endif
