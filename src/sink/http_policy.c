#include <string.h>
#include <strings.h>

#include "../core/pgtext.h"
#include "http_policy.h"

#define DAY_US ((int64_t)86400 * 1000000)

enum eng_http_outcome eng_http_classify(bool transport_error, long status)
{
    if (transport_error)
        return ENG_HTTP_RETRY;
    if (status >= 200 && status <= 299)
        return ENG_HTTP_DELIVERED;
    if (status == 408 || status == 429 || (status >= 500 && status <= 599))
        return ENG_HTTP_RETRY;
    return ENG_HTTP_REJECTED;
}

bool eng_http_breaker_failure(bool transport_error, long status)
{
    return transport_error || status == 408 || (status >= 500 && status <= 599);
}

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
    }
    return true;
}

static int64_t parse_uint(const char *s, size_t n)
{
    int64_t v = 0;
    for (size_t i = 0; i < n && v < 1000000000; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/* The fields of an HTTP-date as its tokens are read; -1 (month: 0) until seen. */
struct http_date {
    int64_t month, day, year, hh, mi, ss;
};

static bool is_date_separator(char c)
{
    return c == ' ' || c == ',' || c == '-' || c == '\t';
}

/* An hh:mm:ss token (8 characters). */
static bool take_time(struct http_date *d, const char *t)
{
    if (!all_digits(t, 2) || !all_digits(t + 3, 2) || !all_digits(t + 6, 2))
        return false;
    d->hh = parse_uint(t, 2);
    d->mi = parse_uint(t + 3, 2);
    d->ss = parse_uint(t + 6, 2);
    return true;
}

/* A number: the first is the day, the second the year, a third is an error. */
static bool take_number(struct http_date *d, const char *t, size_t n)
{
    if (n > 4)
        return false;
    if (d->day < 0)
        d->day = parse_uint(t, n);
    else if (d->year < 0)
        d->year = parse_uint(t, n);
    else
        return false;
    return true;
}

static void take_month(struct http_date *d, const char *t)
{
    static const char *const months[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                         "jul", "aug", "sep", "oct", "nov", "dec"};
    for (int i = 0; i < 12; i++) {
        if (strncasecmp(t, months[i], 3) == 0)
            d->month = i + 1;
    }
}

static bool take_token(struct http_date *d, const char *t, size_t n)
{
    if (n == 8 && t[2] == ':' && t[5] == ':')
        return take_time(d, t);
    if (all_digits(t, n))
        return take_number(d, t, n);
    if (n == 3)
        take_month(d, t);
    /* Anything else (weekday names, "GMT") carries no information we need. */
    return true;
}

static bool http_date_complete(const struct http_date *d)
{
    return d->month != 0 && d->day >= 1 && d->day <= 31 && d->year >= 0 && d->hh >= 0 &&
           d->hh <= 23 && d->mi <= 59 && d->ss <= 60;
}

/* Parses the three date forms of RFC 9110 section 5.6.7 by their tokens: a month name, an
 * hh:mm:ss token, and two numbers of which the first is the day and the second the year. */
static bool parse_http_date(const char *s, int64_t *epoch_s)
{
    struct http_date d = {.month = 0, .day = -1, .year = -1, .hh = -1, .mi = -1, .ss = -1};
    const char *p = s;
    while (*p != '\0') {
        while (is_date_separator(*p))
            p++;
        const char *t = p;
        while (*p != '\0' && !is_date_separator(*p))
            p++;
        size_t n = (size_t)(p - t);
        if (n == 0)
            break;
        if (!take_token(&d, t, n))
            return false;
    }
    if (!http_date_complete(&d))
        return false;
    if (d.year < 100) /* RFC 850's two-digit year */
        d.year += d.year < 70 ? 2000 : 1900;
    int64_t days = eng_days_from_civil(d.year, (unsigned)d.month, (unsigned)d.day);
    *epoch_s = days * 86400 + d.hh * 3600 + d.mi * 60 + d.ss;
    return true;
}

bool eng_http_parse_retry_after(const char *value, int64_t now_wall_us, int64_t *delay_us)
{
    if (value == NULL)
        return false;
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' ||
                     value[n - 1] == '\n'))
        n--;
    if (n == 0)
        return false;
    int64_t d;
    if (all_digits(value, n)) {
        int64_t s = n > 6 ? 86400 : parse_uint(value, n);
        d = s * 1000000;
    } else {
        char tmp[64];
        if (n >= sizeof(tmp))
            return false;
        memcpy(tmp, value, n);
        tmp[n] = '\0';
        int64_t epoch_s;
        if (!parse_http_date(tmp, &epoch_s))
            return false;
        d = epoch_s * 1000000 - now_wall_us;
    }
    if (d < 0)
        d = 0;
    if (d > DAY_US)
        d = DAY_US;
    *delay_us = d;
    return true;
}

void eng_http_retry_start(const struct eng_http_retry_policy *p, struct eng_http_retry *r,
                          int64_t now_us, uint64_t seed)
{
    eng_backoff_init(&r->backoff, p->base_us, p->cap_us, seed);
    r->backoff.random = p->random;
    r->backoff.random_ctx = p->random_ctx;
    r->attempts = 0;
    r->deadline_us = now_us + (p->budget_us > 0 ? p->budget_us : 0);
}

int64_t eng_http_retry_attempt(struct eng_http_retry *r, int64_t now_us, int64_t timeout_us)
{
    r->attempts++;
    int64_t left = r->deadline_us - now_us;
    int64_t t = timeout_us < left ? timeout_us : left;
    return t < 1000 ? 1000 : t;
}

static uint32_t max_attempts(const struct eng_http_retry_policy *p)
{
    return p->max_attempts > 0 ? p->max_attempts : 1;
}

int64_t eng_http_retry_next(const struct eng_http_retry_policy *p, struct eng_http_retry *r,
                            int64_t now_us, int64_t retry_after_us, enum eng_http_giveup *why)
{
    enum eng_http_giveup dummy;
    if (why == NULL)
        why = &dummy;
    *why = ENG_HTTP_GIVEUP_NONE;
    if (r->attempts >= max_attempts(p)) {
        *why = ENG_HTTP_GIVEUP_ATTEMPTS;
        return -1;
    }
    int64_t delay = eng_backoff_next(&r->backoff);
    if (retry_after_us > delay)
        delay = retry_after_us;
    int64_t at = now_us + delay;
    if (at > r->deadline_us - p->min_attempt_us) {
        *why = ENG_HTTP_GIVEUP_TIME;
        return -1;
    }
    return at;
}

bool eng_http_retry_alive(const struct eng_http_retry_policy *p, const struct eng_http_retry *r,
                          int64_t now_us)
{
    return r->attempts < max_attempts(p) && now_us <= r->deadline_us - p->min_attempt_us;
}

void eng_http_breaker_init(struct eng_http_breaker *b, uint32_t threshold, int64_t open_us)
{
    memset(b, 0, sizeof(*b));
    b->state = ENG_HTTP_BREAKER_CLOSED;
    b->threshold = threshold;
    b->open_us = open_us > 0 ? open_us : 0;
}

static void breaker_set(struct eng_http_breaker *b, enum eng_http_breaker_state s, int64_t now_us)
{
    b->state = s;
    b->transitions++;
    b->failures = 0;
    if (s == ENG_HTTP_BREAKER_OPEN)
        b->opened_at_us = now_us;
}

enum eng_http_breaker_grant eng_http_breaker_acquire(struct eng_http_breaker *b, int64_t now_us)
{
    if (b->threshold == 0)
        return ENG_HTTP_BREAKER_PASS;
    switch (b->state) {
    case ENG_HTTP_BREAKER_CLOSED:
        return ENG_HTTP_BREAKER_PASS;
    case ENG_HTTP_BREAKER_OPEN:
        if (now_us < b->opened_at_us + b->open_us)
            return ENG_HTTP_BREAKER_DENY;
        breaker_set(b, ENG_HTTP_BREAKER_HALF_OPEN, now_us);
        b->probe_in_flight = false;
        break;
    case ENG_HTTP_BREAKER_HALF_OPEN:
        break;
    }
    if (b->probe_in_flight)
        return ENG_HTTP_BREAKER_DENY;
    b->probe_in_flight = true;
    return ENG_HTTP_BREAKER_PROBE;
}

bool eng_http_breaker_record(struct eng_http_breaker *b, int64_t now_us, bool failure, bool probe)
{
    if (b->threshold == 0)
        return false;
    if (probe) {
        b->probe_in_flight = false;
        if (b->state != ENG_HTTP_BREAKER_HALF_OPEN)
            return false;
        breaker_set(b, failure ? ENG_HTTP_BREAKER_OPEN : ENG_HTTP_BREAKER_CLOSED, now_us);
        return true;
    }
    if (b->state != ENG_HTTP_BREAKER_CLOSED)
        return false; /* a late answer to a request sent before the breaker opened */
    if (!failure) {
        b->failures = 0;
        return false;
    }
    if (++b->failures < b->threshold)
        return false;
    breaker_set(b, ENG_HTTP_BREAKER_OPEN, now_us);
    return true;
}

int64_t eng_http_breaker_retry_at(const struct eng_http_breaker *b)
{
    if (b->threshold == 0 || b->state != ENG_HTTP_BREAKER_OPEN)
        return 0;
    return b->opened_at_us + b->open_us;
}

void eng_http_rate_init(struct eng_http_rate *r, double per_second, uint32_t burst)
{
    r->interval_us = 0;
    r->burst_us = 0;
    r->tat_us = 0;
    if (!(per_second > 0))
        return;
    double iv = 1e6 / per_second;
    r->interval_us = iv < 1 ? 1 : iv > 86400e6 ? (int64_t)86400e6 : (int64_t)iv;
    r->burst_us = (int64_t)(burst > 1 ? burst - 1 : 0) * r->interval_us;
}

int64_t eng_http_rate_ready_at(const struct eng_http_rate *r, int64_t now_us)
{
    if (r->interval_us == 0)
        return now_us;
    int64_t at = r->tat_us - r->burst_us;
    return at > now_us ? at : now_us;
}

void eng_http_rate_take(struct eng_http_rate *r, int64_t now_us)
{
    if (r->interval_us == 0)
        return;
    r->tat_us = (r->tat_us > now_us ? r->tat_us : now_us) + r->interval_us;
}
