#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "../core/metrics.h"
#include "../core/log.h"
#include "../core/pgtext.h"
#include "../core/url.h"
#include "clickhouse.h"

/* How much of an answer the sink keeps (only its start is ever shown in an error). */
#define RESP_CAP ((size_t)64 << 10)
/* How much of the server's message goes into an eng_error. */
#define EXCERPT_LEN 200
/* curl does not reuse a connection idle for longer than this: ClickHouse closes idle
 * keep-alive connections after keep_alive_timeout (3 s by default), and a request sent on a
 * connection the server is closing would fail. */
#define MAX_IDLE_CONN_S 2L

/* The columns the enriched JSON carries; open checks that the table has each of them. */
static const char *const columns[] = {
    "event_id",       "content_id",         "user_id",        "event_type",
    "event_ts",       "duration_ms",        "device",         "content_type",
    "length_seconds", "engagement_seconds", "engagement_pct",
};

/* The derived fields are Decimal, not Float64: 18.16 parses JSON numbers into Float64 without
 * correct rounding (0.02 stays 0.02, but 4.69 is stored as 4.6899999999999995), and the
 * brief's values are exact decimals. Decimal(12,3) holds every int4 duration in seconds;
 * Decimal(12,2) every percentage those give. See docs/clickhouse.md. */
static const char create_table_fmt[] =
    "CREATE TABLE IF NOT EXISTS %s." ENG_CLICKHOUSE_TABLE " ("
    "event_id Int64, content_id Int32, user_id Nullable(Int32), "
    "event_type Nullable(String), event_ts %s, duration_ms Nullable(Int32), "
    "device Nullable(String), content_type Nullable(String), "
    "length_seconds Nullable(Int32), engagement_seconds Nullable(Decimal(12, 3)), "
    "engagement_pct Nullable(Decimal(12, 2))) "
    "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_ts) "
    "ORDER BY (event_ts, content_id, event_id)";

/* event_ts: DateTime64(6) where the server has it (the microseconds, and 1900..2299), else
 * DateTime (seconds, 1970-01-01 00:00:00 to 2106-02-07 06:28:15). An event outside what the
 * column holds is parked for this sink, never stored as another time. */
#define TS_DATETIME64 "DateTime64(6, 'UTC')"
#define TS_DATETIME   "DateTime('UTC')"
#define US            INT64_C(1000000)

struct ch_sink {
    struct eng_sink base;
    bool ts64;                    /* the table's event_ts is a DateTime64: send microseconds */
    int64_t ts_min_us, ts_max_us; /* what the table's event_ts holds */
    char ts_type[64];
    struct eng_buf body; /* an insert that differs from the batch's own JSON lines */
    struct eng_clickhouse_url url;
    char *database;
    char *insert_url;
    uint32_t connect_timeout_ms;
    uint32_t timeout_ms;
    CURL *easy; /* NULL while closed */
    struct curl_slist *headers;
    struct eng_buf resp;
    char errbuf[CURL_ERROR_SIZE];
    struct eng_counter *m_events;
    struct eng_counter *m_batches;
    struct eng_counter *m_errors;
    struct eng_counter *m_bytes;
};

/* ---- curl setup ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static bool curl_ready(struct eng_error *err)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        eng_error_set(err, ENG_EIO, false, "clickhouse: curl_global_init failed: %s",
                      curl_easy_strerror(curl_init_rc));
        return false;
    }
    return true;
}

/* ---- URL parsing ---- */

/* Copies url to out with the password replaced by "***", for error messages. */
static void redact_url(const char *url, char *out, size_t outlen)
{
    const char *p = strstr(url, "://");
    const char *at = p != NULL ? strrchr(p + 3, '@') : NULL;
    if (at == NULL) {
        snprintf(out, outlen, "%s", url);
        return;
    }
    const char *ui = p + 3;
    const char *colon = memchr(ui, ':', (size_t)(at - ui));
    if (colon == NULL) {
        snprintf(out, outlen, "%s", url);
        return;
    }
    snprintf(out, outlen, "%.*s:***%s", (int)(colon - url), url, at);
}

static int url_fail(struct eng_clickhouse_url *u, struct eng_error *err, const char *shown,
                    const char *why)
{
    eng_clickhouse_url_free(u);
    return eng_error_set(err, ENG_EINVAL, false, "invalid clickhouse url \"%s\": %s", shown, why);
}

/* "http://" or "https://": returns what follows, or NULL. */
static const char *skip_scheme(const char *url, bool *tls)
{
    if (strncasecmp(url, "http://", 7) == 0)
        return url + 7;
    if (strncasecmp(url, "https://", 8) == 0) {
        *tls = true;
        return url + 8;
    }
    return NULL;
}

/* The user info before the last '@', if any: nothing after the host may contain one, and a
 * password with an unencoded '@', '/' or ':' still parses. Returns where the host starts, or
 * NULL on bad percent-encoding. */
static const char *parse_userinfo(const char *p, struct eng_clickhouse_url *out)
{
    const char *at = strrchr(p, '@');
    if (at == NULL)
        return p;
    const char *colon = memchr(p, ':', (size_t)(at - p));
    size_t ulen = colon != NULL ? (size_t)(colon - p) : (size_t)(at - p);
    out->user = eng_percent_decode(p, ulen);
    out->password =
        colon != NULL ? eng_percent_decode(colon + 1, (size_t)(at - colon - 1)) : eng_strdup("");
    if (out->user == NULL || out->password == NULL)
        return NULL;
    if (out->user[0] == '\0') {
        free(out->user);
        out->user = eng_strdup("default");
    }
    return at + 1;
}

/* "[v6 address]": returns what follows the ']', or NULL with *why. */
static const char *parse_ipv6_host(const char *h, struct eng_clickhouse_url *out, const char **why)
{
    const char *close = strchr(h, ']');
    if (close == NULL) {
        *why = "unterminated '[' in the host";
        return NULL;
    }
    for (const char *c = h + 1; c < close; c++) {
        if (!isxdigit((unsigned char)*c) && *c != ':' && *c != '.') {
            *why = "bad IPv6 address";
            return NULL;
        }
    }
    if (close == h + 1) {
        *why = "missing host";
        return NULL;
    }
    out->host = eng_strndup(h + 1, (size_t)(close - h - 1));
    return close + 1;
}

/* A host name or IPv4 address: returns what follows it, or NULL with *why. */
static const char *parse_name_host(const char *h, struct eng_clickhouse_url *out, const char **why)
{
    const char *q = h;
    while (isalnum((unsigned char)*q) || *q == '-' || *q == '.' || *q == '_')
        q++;
    if (q == h) {
        *why = "missing host";
        return NULL;
    }
    out->host = eng_strndup(h, (size_t)(q - h));
    return q;
}

/* The digits after ':': returns what follows them, or NULL when they are not a port. */
static const char *parse_port(const char *q, int *port)
{
    long v = 0;
    int digits = 0;
    while (isdigit((unsigned char)*q) && digits < 6) {
        v = v * 10 + (*q - '0');
        q++;
        digits++;
    }
    if (digits == 0 || digits > 5 || v < 1 || v > 65535 || isdigit((unsigned char)*q))
        return NULL;
    *port = (int)v;
    return q;
}

/* endpoint (what curl is given) and display (what logs show: no password). */
static void set_endpoint(struct eng_clickhouse_url *out, bool v6)
{
    const char *scheme = out->tls ? "https" : "http";
    const char *lb = v6 ? "[" : "";
    const char *rb = v6 ? "]" : "";
    size_t n = strlen(out->host) + 32;
    out->endpoint = eng_malloc(n);
    snprintf(out->endpoint, n, "%s://%s%s%s:%d/", scheme, lb, out->host, rb, out->port);
    n += out->user != NULL ? strlen(out->user) + 1 : 0;
    out->display = eng_malloc(n);
    snprintf(out->display, n, "%s://%s%s%s%s%s:%d/", scheme, out->user ? out->user : "",
             out->user ? "@" : "", lb, out->host, rb, out->port);
}

int eng_clickhouse_url_parse(const char *url, struct eng_clickhouse_url *out, struct eng_error *err)
{
    char shown[200];
    char why[96];
    const char *fail = NULL;
    memset(out, 0, sizeof(*out));
    if (url == NULL)
        url = "";
    redact_url(url, shown, sizeof(shown));

    const char *p = skip_scheme(url, &out->tls);
    if (p == NULL)
        return url_fail(out, err, shown, "expected http://[user:password@]host:port");
    const char *h = parse_userinfo(p, out);
    if (h == NULL)
        return url_fail(out, err, shown, "bad percent-encoding in the user info");
    bool v6 = *h == '[';
    const char *q = v6 ? parse_ipv6_host(h, out, &fail) : parse_name_host(h, out, &fail);
    if (q == NULL)
        return url_fail(out, err, shown, fail);
    out->port = out->tls ? 8443 : 8123;
    if (*q == ':') {
        q = parse_port(q + 1, &out->port);
        if (q == NULL)
            return url_fail(out, err, shown, "bad port");
    }
    if (*q == '/')
        q++;
    if (*q != '\0') {
        snprintf(why, sizeof(why), "unexpected \"%.40s\" after host:port", q);
        return url_fail(out, err, shown, why);
    }
    set_endpoint(out, v6);
    return 0;
}

void eng_clickhouse_url_free(struct eng_clickhouse_url *u)
{
    if (u == NULL)
        return;
    if (u->password != NULL)
        explicit_bzero(u->password, strlen(u->password));
    free(u->host);
    free(u->user);
    free(u->password);
    free(u->endpoint);
    free(u->display);
    memset(u, 0, sizeof(*u));
}

/* ---- error classification ---- */

int eng_clickhouse_exception_code(const char *body, size_t len)
{
    size_t i = 0;
    while (i < len && isspace((unsigned char)body[i]))
        i++;
    if (len - i < 7 || memcmp(body + i, "Code: ", 6) != 0)
        return 0;
    i += 6;
    int code = 0;
    int digits = 0;
    while (i < len && isdigit((unsigned char)body[i]) && digits < 6) {
        code = code * 10 + (body[i] - '0');
        i++;
        digits++;
    }
    return digits > 0 && digits < 6 ? code : 0;
}

bool eng_clickhouse_retriable(long http_status, int exception_code)
{
    /* Exceptions that depend only on the request: sending it again gets the same answer. */
    static const int deterministic[] = {
        6,   /* CANNOT_PARSE_TEXT */
        8,   /* THERE_IS_NO_COLUMN */
        16,  /* NO_SUCH_COLUMN_IN_TABLE */
        20,  /* NUMBER_OF_COLUMNS_DOESNT_MATCH */
        25,  /* CANNOT_PARSE_ESCAPE_SEQUENCE */
        26,  /* CANNOT_PARSE_QUOTED_STRING */
        27,  /* CANNOT_PARSE_INPUT_ASSERTION_FAILED */
        32,  /* ATTEMPT_TO_READ_AFTER_EOF (truncated row) */
        33,  /* CANNOT_READ_ALL_DATA */
        36,  /* BAD_ARGUMENTS */
        38,  /* CANNOT_PARSE_DATE */
        41,  /* CANNOT_PARSE_DATETIME */
        43,  /* ILLEGAL_TYPE_OF_ARGUMENT */
        44,  /* ILLEGAL_COLUMN */
        46,  /* UNKNOWN_FUNCTION */
        47,  /* UNKNOWN_IDENTIFIER */
        50,  /* UNKNOWN_TYPE */
        53,  /* TYPE_MISMATCH */
        62,  /* SYNTAX_ERROR */
        69,  /* ARGUMENT_OUT_OF_BOUND */
        70,  /* CANNOT_CONVERT_TYPE */
        72,  /* CANNOT_PARSE_NUMBER */
        73,  /* UNKNOWN_FORMAT */
        80,  /* INCORRECT_QUERY */
        115, /* UNKNOWN_SETTING */
        117, /* INCORRECT_DATA (JSONEachRow: unknown field, bad value) */
        130, /* CANNOT_READ_ARRAY_FROM_TEXT */
        131, /* TOO_LARGE_STRING_SIZE */
        164, /* READONLY */
        192, /* UNKNOWN_USER */
        193, /* WRONG_PASSWORD */
        194, /* REQUIRED_PASSWORD */
        195, /* IP_ADDRESS_NOT_ALLOWED */
        291, /* DATABASE_ACCESS_DENIED */
        321, /* VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE */
        349, /* CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN */
        376, /* CANNOT_PARSE_UUID */
        497, /* ACCESS_DENIED */
        516, /* AUTHENTICATION_FAILED */
    };
    /* UNKNOWN_TABLE, UNKNOWN_DATABASE: someone dropped them; open creates them again. */
    if (exception_code == 60 || exception_code == 81)
        return true;
    for (size_t i = 0; i < sizeof(deterministic) / sizeof(deterministic[0]); i++) {
        if (exception_code == deterministic[i])
            return false;
    }
    return http_status >= 500 || http_status == 408 || http_status == 429;
}

/* The start of the server's answer on one line: control characters and runs of blanks become
 * one space, and the noise of 18.16's format ("e.displayText() = ", ", e.what() = ...") is
 * dropped. */
static void excerpt(const char *body, size_t len, char *out, size_t outlen)
{
    static const char noise[] = ", e.what() = DB::Exception";
    static const char prefix_noise[] = "e.displayText() = ";
    size_t o = 0;
    bool space = true; /* drops leading blanks */
    for (size_t i = 0; i < len && o + 1 < outlen && o < EXCERPT_LEN; i++) {
        unsigned char c = (unsigned char)body[i];
        if (c < 0x20 || c == 0x7f || c == ' ') {
            if (!space)
                out[o++] = ' ';
            space = true;
            continue;
        }
        out[o++] = (char)c;
        space = false;
    }
    out[o] = '\0';
    char *tail = strstr(out, noise);
    if (tail != NULL)
        *tail = '\0';
    char *mid = strstr(out, prefix_noise);
    if (mid != NULL)
        memmove(mid, mid + strlen(prefix_noise), strlen(mid + strlen(prefix_noise)) + 1);
    o = strlen(out);
    while (o > 0 && out[o - 1] == ' ')
        out[--o] = '\0';
    if (out[0] == '\0')
        snprintf(out, outlen, "(empty answer)");
}

static int http_error(struct eng_error *err, const char *what, long status,
                      const struct eng_buf *resp)
{
    const char *body = resp->data != NULL ? resp->data : "";
    int code = eng_clickhouse_exception_code(body, resp->len);
    bool retriable = eng_clickhouse_retriable(status, code);
    char msg[EXCERPT_LEN + 1];
    excerpt(body, resp->len, msg, sizeof(msg));
    /* UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, IP_ADDRESS_NOT_ALLOWED,
     * DATABASE_ACCESS_DENIED, ACCESS_DENIED, AUTHENTICATION_FAILED; HTTP 401 and 403. */
    static const int denied[] = {192, 193, 194, 195, 291, 497, 516};
    bool is_denied = status == 401 || status == 403;
    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++)
        is_denied = is_denied || code == denied[i];
    if (is_denied)
        return eng_error_set(err, ENG_EDENIED, true, "clickhouse: %s failed: HTTP %ld: %s", what,
                             status, msg);
    return eng_error_set(err, retriable ? ENG_EIO : ENG_EINVAL, retriable,
                         "clickhouse: %s failed: HTTP %ld: %s", what, status, msg);
}

static int transport_error(struct eng_error *err, const char *what, const char *display,
                           CURLcode rc, const char *errbuf)
{
    const char *detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_BAD_FUNCTION_ARGUMENT:
        return eng_error_set(err, ENG_EINVAL, false, "clickhouse: %s on \"%s\" failed: %s", what,
                             display, detail);
    case CURLE_OPERATION_TIMEDOUT:
        return eng_error_set(err, ENG_EAGAIN, true, "clickhouse: %s on \"%s\" timed out: %s", what,
                             display, detail);
    default:
        return eng_error_set(err, ENG_EIO, true, "clickhouse: %s on \"%s\" failed: %s", what,
                             display, detail);
    }
}

/* ---- requests ---- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct eng_buf *b = userdata;
    size_t n = size * nmemb;
    eng_buf_append(b, ptr, n); /* past the cap the rest is dropped; overflow tells */
    return n;
}

/* A handle with everything but the URL and the body set; NULL if curl refuses an option. */
static CURL *easy_create(const struct eng_clickhouse_url *u, uint32_t connect_ms,
                         uint32_t timeout_ms, struct curl_slist *headers, char *errbuf)
{
    CURL *e = curl_easy_init();
    if (e == NULL)
        return NULL;
    bool bad = false;
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, "engage/0.1") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, MAX_IDLE_CONN_S) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms) != CURLE_OK;
    if (u->user != NULL) {
        /* Basic auth: 18.16 and current servers accept it as well as the X-ClickHouse-User /
         * X-ClickHouse-Key headers, and curl keeps the password out of any header list. */
        bad |= curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC) != CURLE_OK;
        bad |= curl_easy_setopt(e, CURLOPT_USERNAME, u->user) != CURLE_OK;
        bad |= curl_easy_setopt(e, CURLOPT_PASSWORD, u->password) != CURLE_OK;
    }
    if (bad) {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

static struct curl_slist *headers_create(void)
{
    /* No "Expect: 100-continue" round trip before large bodies. */
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    if (h == NULL)
        eng_die("out of memory building http headers");
    struct curl_slist *h2 = curl_slist_append(h, "Content-Type: text/plain; charset=utf-8");
    if (h2 == NULL)
        eng_die("out of memory building http headers");
    return h2;
}

/* POSTs body to url and collects the answer in resp. Returns 0 with *status set when an HTTP
 * answer came back, or a transport error. A reused connection found dead before anything was
 * received is retried once on a fresh one by curl itself. */
static int perform(CURL *e, const char *url, const char *display, const char *body, size_t len,
                   struct eng_buf *resp, char *errbuf, const char *what, long *status,
                   struct eng_error *err)
{
    errbuf[0] = '\0';
    *status = 0;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body); /* not copied: body outlives the call */
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, resp);
    CURLcode rc = curl_easy_perform(e);
    if (rc != CURLE_OK)
        return transport_error(err, what, display, rc, errbuf);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    return 0;
}

/* Runs sql (no input data) on the sink's connection; the answer is in s->resp. */
static int sink_sql(struct ch_sink *s, const char *sql, const char *what, struct eng_error *err)
{
    long status;
    eng_buf_reset(&s->resp);
    int rc = perform(s->easy, s->url.endpoint, s->url.display, sql, strlen(sql), &s->resp,
                     s->errbuf, what, &status, err);
    if (rc != 0)
        return rc;
    if (status != 200)
        return http_error(err, what, status, &s->resp);
    return 0;
}

/* In a TabSeparated answer of `name<TAB>type` lines, the type of column name (not
 * NUL-terminated, *typelen bytes), or NULL when the column is missing. */
static const char *column_type(const struct eng_buf *b, const char *name, size_t *typelen)
{
    size_t n = strlen(name);
    const char *p = b->data;
    const char *end = b->data + b->len;
    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (l > n && memcmp(p, name, n) == 0 && p[n] == '\t') {
            *typelen = l - n - 1;
            return p + n + 1;
        }
        p = nl != NULL ? nl + 1 : NULL;
    }
    return NULL;
}

/* True if the type (typelen bytes) contains word. */
static bool type_has(const char *type, size_t typelen, const char *word)
{
    size_t n = strlen(word);
    for (size_t i = 0; i + n <= typelen; i++) {
        if (memcmp(type + i, word, n) == 0)
            return true;
    }
    return false;
}

/* Advisory: a table that cannot collapse a replayed row breaks the exactly-once effect, but
 * an operator may have a reason (a Distributed table in front of replicated ones), so this
 * warns and does not refuse. */
static void check_engine(struct ch_sink *s)
{
    char sql[256];
    struct eng_error err;
    snprintf(sql, sizeof(sql),
             "SELECT engine, sorting_key FROM system.tables WHERE database = '%s' AND "
             "name = '" ENG_CLICKHOUSE_TABLE "' FORMAT TabSeparated",
             s->database);
    if (sink_sql(s, sql, "engine check", &err) != 0) {
        eng_debug("msg=\"clickhouse engine check skipped\" error=\"%s\"", err.msg);
        return;
    }
    const char *ans = s->resp.data != NULL ? s->resp.data : "";
    const char *tab = strchr(ans, '\t');
    size_t elen = tab != NULL ? (size_t)(tab - ans) : strcspn(ans, "\n");
    bool replacing = strstr(ans, "ReplacingMergeTree") != NULL &&
                     (size_t)(strstr(ans, "ReplacingMergeTree") - ans) < elen;
    bool keyed = tab != NULL && strstr(tab, "event_id") != NULL;
    if (!replacing || !keyed)
        eng_warn("msg=\"clickhouse table cannot collapse replayed rows: expect duplicates "
                 "after a restart\" table=%s." ENG_CLICKHOUSE_TABLE " engine=\"%.*s\"",
                 s->database, (int)elen, ans);
}

/* The range of the table's event_ts column. DateTime64's range depends on the server's
 * version (1925..2283 before 21.x's extension to 1900..2299): ask the server whether its
 * ends hold. */
static int ts_range(struct ch_sink *s, struct eng_error *err)
{
    s->ts64 = strstr(s->ts_type, "DateTime64") != NULL;
    if (!s->ts64) {
        /* DateTime is seconds in a UInt32, but 18.16 reads text only up to the end of 2105
         * (its date table's range): '2106-02-07 06:28:15' becomes 23295. Ask the server. */
        int rc = sink_sql(s,
                          "SELECT toUnixTimestamp(toDateTime('2106-02-07 06:28:15', 'UTC')) = "
                          "4294967295",
                          "DateTime range probe", err);
        if (rc != 0)
            return rc;
        bool full = s->resp.data != NULL && s->resp.data[0] == '1';
        s->ts_min_us = 0;
        s->ts_max_us = ((full ? INT64_C(4294967295) : INT64_C(4291747199)) + 1) * US - 1;
        return 0;
    }
    int rc = sink_sql(s,
                      "SELECT toString(toDateTime64('1900-01-01 00:00:00', 0, 'UTC')) = "
                      "'1900-01-01 00:00:00' AND toString(toDateTime64('2299-12-31 23:59:59', "
                      "0, 'UTC')) = '2299-12-31 23:59:59'",
                      "DateTime64 range probe", err);
    if (rc != 0)
        return rc;
    bool wide = s->resp.data != NULL && s->resp.data[0] == '1';
    const char *lo = wide ? "1900-01-01 00:00:00" : "1925-01-01 00:00:00";
    const char *hi = wide ? "2299-12-31 23:59:59" : "2283-11-11 00:00:00";
    if (!eng_parse_timestamp(lo, strlen(lo), &s->ts_min_us) ||
        !eng_parse_timestamp(hi, strlen(hi), &s->ts_max_us))
        eng_die("clickhouse: bad built-in DateTime64 range");
    s->ts_max_us += wide ? US - 1 : 0;
    return 0;
}

/* Appends e's JSON line to out, its event_ts with the microseconds when ts64. */
static void put_line(const struct ch_sink *s, const struct eng_batch *b, const struct eng_event *e,
                     struct eng_buf *out)
{
    const char *json = eng_batch_json(b, e);
    static const char key[] = "\"event_ts\":\"";
    const char *at = s->ts64 ? memmem(json, e->json.len, key, sizeof(key) - 1) : NULL;
    if (at == NULL) {
        eng_buf_append(out, json, e->json.len + 1); /* with its newline */
        return;
    }
    size_t head = (size_t)(at - json) + sizeof(key) - 1 + 19; /* through HH:MM:SS */
    int64_t frac = e->event_ts_us % US;
    char text[8];
    snprintf(text, sizeof(text), ".%06lld", (long long)(frac < 0 ? frac + US : frac));
    eng_buf_append(out, json, head);
    eng_buf_append(out, text, 7);
    eng_buf_append(out, json + head, e->json.len + 1 - head);
}

/* The insert's body: the batch's own JSON lines when every event fits the table as they
 * are; else a copy without the events the table cannot hold (parked, with the reason) and
 * with the microseconds for a DateTime64 column. NULL when nothing is left to insert. */
static const struct eng_buf *insert_body(struct ch_sink *s, const struct eng_batch *b,
                                         struct eng_buf *own, int *rc, struct eng_error *err)
{
    bool plain = !s->ts64;
    for (uint32_t i = 0; i < b->n && plain; i++)
        plain =
            b->events[i].event_ts_us >= s->ts_min_us && b->events[i].event_ts_us <= s->ts_max_us;
    *rc = 0;
    if (plain)
        return &b->jsonl;
    eng_buf_reset(own);
    for (uint32_t i = 0; i < b->n; i++) {
        const struct eng_event *e = &b->events[i];
        if (e->event_ts_us >= s->ts_min_us && e->event_ts_us <= s->ts_max_us) {
            put_line(s, b, e, own);
            continue;
        }
        char ts[20], lo[20], hi[20], reason[200];
        eng_format_timestamp(e->event_ts_us, ts);
        eng_format_timestamp(s->ts_min_us, lo);
        eng_format_timestamp(s->ts_max_us, hi);
        snprintf(reason, sizeof(reason),
                 "event_ts %s is outside what the clickhouse column %s holds (%s to %s)", ts,
                 s->ts_type, lo, hi);
        if (s->base.park == NULL) {
            *rc = eng_error_set(err, ENG_EINVAL, false, "clickhouse: %s", reason);
            return NULL;
        }
        *rc = s->base.park(&s->base, b, e, reason, err);
        if (*rc != 0)
            return NULL;
    }
    if (own->overflow) {
        *rc = eng_error_set(err, ENG_ENOMEM, false, "clickhouse: insert body over its cap");
        return NULL;
    }
    return own->len > 0 ? own : NULL;
}

/* CREATE DATABASE and CREATE TABLE, event_ts a DateTime64 where the server has one. */
static int create_schema(struct ch_sink *s, struct eng_error *err)
{
    char sql[1024];
    snprintf(sql, sizeof(sql), "CREATE DATABASE IF NOT EXISTS %s", s->database);
    int rc = sink_sql(s, sql, "create database", err);
    if (rc != 0)
        return rc;
    struct eng_error probe;
    bool has64 = sink_sql(s, "SELECT toDateTime64('2000-01-01 00:00:00', 6, 'UTC')",
                          "DateTime64 probe", &probe) == 0;
    snprintf(sql, sizeof(sql), create_table_fmt, s->database, has64 ? TS_DATETIME64 : TS_DATETIME);
    return sink_sql(s, sql, "create table", err);
}

/* Warns when a column's type differs from the one engage creates, and keeps event_ts's. */
static void note_column_type(struct ch_sink *s, const char *name, const char *type, size_t tl)
{
    /* A table made by an older engage (or by hand) may hold the derived fields as Float64
     * or event_ts in the server's zone: it still works, less exactly, so warn only. */
    bool derived = strncmp(name, "engagement_", 11) == 0;
    bool ts = strcmp(name, "event_ts") == 0;
    if ((derived && !type_has(type, tl, "Decimal")) || (ts && !type_has(type, tl, "UTC")))
        eng_warn("msg=\"clickhouse column differs from the one engage creates\" "
                 "table=%s." ENG_CLICKHOUSE_TABLE " column=%s type=\"%.*s\"",
                 s->database, name, (int)tl, type);
    if (ts) {
        /* TabSeparated escapes the quotes of DateTime('UTC'): drop the backslashes. */
        size_t o = 0;
        for (size_t k = 0; k < tl && o + 1 < sizeof(s->ts_type); k++) {
            if (type[k] != '\\')
                s->ts_type[o++] = type[k];
        }
        s->ts_type[o] = '\0';
    }
}

/* The table has every column the enriched JSON carries. */
static int check_columns(struct ch_sink *s, struct eng_error *err)
{
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "SELECT name, type FROM system.columns WHERE database = '%s' AND "
             "table = '" ENG_CLICKHOUSE_TABLE "' FORMAT TabSeparated",
             s->database);
    int rc = sink_sql(s, sql, "column check", err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < sizeof(columns) / sizeof(columns[0]); i++) {
        size_t tl = 0;
        const char *type = column_type(&s->resp, columns[i], &tl);
        if (type == NULL)
            return eng_error_set(err, ENG_EINVAL, false,
                                 "clickhouse: table %s." ENG_CLICKHOUSE_TABLE
                                 " has no column \"%s\": it predates engage or was changed "
                                 "(runbook: add the column, or drop the table and let engage "
                                 "create it, then backfill)",
                                 s->database, columns[i]);
        note_column_type(s, columns[i], type, tl);
    }
    return 0;
}

static int ch_open(struct eng_sink *base, struct eng_error *err)
{
    struct ch_sink *s = (struct ch_sink *)base;
    char version[64];
    int rc;

    if (s->easy == NULL) {
        s->easy = easy_create(&s->url, s->connect_timeout_ms, s->timeout_ms, s->headers, s->errbuf);
        if (s->easy == NULL) {
            rc = eng_error_set(err, ENG_EIO, true, "clickhouse: could not create a curl handle");
            goto fail;
        }
    }
    rc = sink_sql(s, "SELECT version()", "connect", err);
    if (rc != 0)
        goto fail;
    const char *ans = s->resp.data != NULL ? s->resp.data : "";
    snprintf(version, sizeof(version), "%.*s", (int)strcspn(ans, "\r\n"), ans);

    rc = create_schema(s, err);
    if (rc != 0)
        goto fail;
    rc = check_columns(s, err);
    if (rc != 0)
        goto fail;
    rc = ts_range(s, err);
    if (rc != 0)
        goto fail;
    check_engine(s);
    eng_info("msg=\"clickhouse sink ready\" url=%s table=%s." ENG_CLICKHOUSE_TABLE
             " server_version=%s",
             s->url.display, s->database, version);
    return 0;
fail:
    eng_counter_add(s->m_errors, 1);
    return rc;
}

static int ch_write(struct eng_sink *base, const struct eng_batch *b, struct eng_error *err)
{
    struct ch_sink *s = (struct ch_sink *)base;
    char what[64];
    long status;
    int rc;

    if (b->n == 0)
        return 0;
    if (s->easy == NULL)
        return eng_error_set(err, ENG_EIO, true, "clickhouse: write before open");
    if (b->jsonl.len == 0 || b->jsonl.data == NULL)
        return eng_error_set(err, ENG_EINVAL, false,
                             "clickhouse: batch of %u events has no rendered json", b->n);

    const struct eng_buf *body = insert_body(s, b, &s->body, &rc, err);
    if (rc != 0) {
        eng_counter_add(s->m_errors, 1);
        return rc;
    }
    if (body == NULL)
        return 0; /* every event was parked */
    snprintf(what, sizeof(what), "insert of %u events", b->n);
    eng_buf_reset(&s->resp);
    rc = perform(s->easy, s->insert_url, s->url.display, body->data, body->len, &s->resp, s->errbuf,
                 what, &status, err);
    if (rc == 0 && status != 200)
        rc = http_error(err, what, status, &s->resp);
    if (rc != 0) {
        eng_counter_add(s->m_errors, 1);
        return rc;
    }
    eng_counter_add(s->m_events, b->n);
    eng_counter_add(s->m_batches, 1);
    eng_counter_add(s->m_bytes, body->len);
    return 0;
}

static void ch_close(struct eng_sink *base)
{
    struct ch_sink *s = (struct ch_sink *)base;
    curl_easy_cleanup(s->easy); /* NULL is fine */
    s->easy = NULL;
}

static void ch_destroy(struct eng_sink *base)
{
    struct ch_sink *s = (struct ch_sink *)base;
    ch_close(base);
    curl_slist_free_all(s->headers);
    eng_buf_free(&s->resp);
    eng_buf_free(&s->body);
    eng_clickhouse_url_free(&s->url);
    free(s->database);
    free(s->insert_url);
    free(s);
}

static const struct eng_sink_ops ch_ops = {
    .name = "clickhouse",
    .open = ch_open,
    .write = ch_write,
    .close = ch_close,
    .destroy = ch_destroy,
};

void eng_clickhouse_options_init(struct eng_clickhouse_options *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->database = ENG_CLICKHOUSE_DEFAULT_DATABASE;
    opt->connect_timeout_ms = 5000;
    opt->timeout_ms = 60000;
}

static bool valid_identifier(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || isdigit((unsigned char)s[0]))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '_')
            return false;
    }
    return true;
}

struct eng_sink *eng_clickhouse_sink_create(const char *url, struct eng_error *err)
{
    return eng_clickhouse_sink_create_opt(url, NULL, err);
}

struct eng_sink *eng_clickhouse_sink_create_opt(const char *url,
                                                const struct eng_clickhouse_options *opt,
                                                struct eng_error *err)
{
    struct eng_clickhouse_options o;
    eng_clickhouse_options_init(&o);
    if (opt != NULL) {
        if (opt->database != NULL)
            o.database = opt->database;
        if (opt->connect_timeout_ms != 0)
            o.connect_timeout_ms = opt->connect_timeout_ms;
        if (opt->timeout_ms != 0)
            o.timeout_ms = opt->timeout_ms;
        o.skip_unknown_fields = opt->skip_unknown_fields;
    }
    if (!valid_identifier(o.database)) {
        eng_error_set(err, ENG_EINVAL, false, "clickhouse: bad database name \"%.64s\"",
                      o.database);
        return NULL;
    }
    if (!curl_ready(err))
        return NULL;

    struct ch_sink *s = eng_calloc(1, sizeof(*s));
    s->base.ops = &ch_ops;
    s->base.min_write_interval_us = 200000;
    if (eng_clickhouse_url_parse(url, &s->url, err) != 0)
        goto fail;
    s->database = eng_strdup(o.database);
    s->connect_timeout_ms = o.connect_timeout_ms;
    s->timeout_ms = o.timeout_ms;
    s->resp.cap = RESP_CAP;
    s->body.cap = ENG_BATCH_MAX_BYTES + ((size_t)8 << 20); /* a batch's lines plus 7 bytes each */
    s->headers = headers_create();

    struct eng_buf u = {0};
    eng_buf_printf(&u, "%s?query=INSERT%%20INTO%%20%s.%s%%20FORMAT%%20JSONEachRow%s",
                   s->url.endpoint, s->database, ENG_CLICKHOUSE_TABLE,
                   o.skip_unknown_fields ? "&input_format_skip_unknown_fields=1" : "");
    s->insert_url = u.data; /* now owned by s */

    s->m_events = eng_metrics_counter("engage_sink_events_total", "sink=\"clickhouse\"",
                                      "Events written to a sink.");
    s->m_batches = eng_metrics_counter("engage_sink_batches_total", "sink=\"clickhouse\"",
                                       "Batches written to a sink.");
    s->m_errors = eng_metrics_counter("engage_sink_errors_total", "sink=\"clickhouse\"",
                                      "Failed sink operations (connect or write).");
    s->m_bytes = eng_metrics_counter("engage_sink_bytes_total", "sink=\"clickhouse\"",
                                     "Bytes of event data written to a sink.");
    return &s->base;
fail:
    ch_destroy(&s->base);
    return NULL;
}

int eng_clickhouse_query(const char *url, const char *sql, struct eng_buf *out,
                         struct eng_error *err)
{
    struct eng_clickhouse_url u;
    struct eng_clickhouse_options o;
    struct eng_buf resp = {.cap = RESP_CAP};
    struct curl_slist *headers = NULL;
    char errbuf[CURL_ERROR_SIZE];
    char *qurl = NULL;
    CURL *e = NULL;
    long status;
    int rc;

    eng_clickhouse_options_init(&o);
    rc = eng_clickhouse_url_parse(url, &u, err);
    if (rc != 0)
        return rc;
    if (!curl_ready(err)) {
        rc = err != NULL ? err->code : ENG_EIO;
        goto out;
    }
    headers = headers_create();
    e = easy_create(&u, o.connect_timeout_ms, o.timeout_ms, headers, errbuf);
    if (e == NULL) {
        rc = eng_error_set(err, ENG_EIO, true, "clickhouse: could not create a curl handle");
        goto out;
    }
    size_t n = strlen(u.endpoint) + 32;
    qurl = eng_malloc(n);
    snprintf(qurl, n, "%s?wait_end_of_query=1", u.endpoint);

    if (out->overflow) {
        rc = eng_error_set(err, ENG_ENOMEM, false, "clickhouse: query buffer already full");
        goto out;
    }
    /* The answer goes to out directly; on failure it is moved out again for the message. */
    size_t start = out->len;
    rc = perform(e, qurl, u.display, sql, strlen(sql), out, errbuf, "query", &status, err);
    if (rc == 0 && status != 200) {
        eng_buf_append(&resp, out->data + start, out->len - start);
        rc = http_error(err, "query", status, &resp);
    } else if (rc == 0 && out->overflow) {
        rc = eng_error_set(err, ENG_ENOMEM, false,
                           "clickhouse: query answer does not fit in the buffer");
    }
    if (rc != 0) {
        out->overflow = false; /* set by this call's appends, if at all */
        out->len = start;
        if (out->data != NULL)
            out->data[start] = '\0';
    }
out:
    curl_easy_cleanup(e);
    curl_slist_free_all(headers);
    eng_buf_free(&resp);
    free(qurl);
    eng_clickhouse_url_free(&u);
    return rc;
}
