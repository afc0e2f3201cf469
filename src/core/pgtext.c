#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "pgtext.h"

bool eng_parse_i64(const char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (n > 0 && s[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i == n || n - i > 19)
        return false;
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    /* 19 digits cannot overflow uint64; check the int64 range. */
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return false;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)v;
    }
    return true;
}

bool eng_parse_i32(const char *s, size_t n, int32_t *out)
{
    int64_t v;
    if (!eng_parse_i64(s, n, &v) || v < INT32_MIN || v > INT32_MAX)
        return false;
    *out = (int32_t)v;
    return true;
}

/* Howard Hinnant's days_from_civil / civil_from_days. */
int64_t eng_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3u : 9u)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void eng_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yy + (*m <= 2);
}

static bool digits(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

static bool leap(unsigned y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

struct civil_time {
    unsigned y, mo, d, h, mi, sec;
};

/* "YYYY-MM-DD hh:mm:ss": the separators in place and every field digits. */
static bool parse_civil_fields(const char *s, struct civil_time *t)
{
    if (s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' || s[16] != ':')
        return false;
    return digits(s, 4, &t->y) && digits(s + 5, 2, &t->mo) && digits(s + 8, 2, &t->d) &&
           digits(s + 11, 2, &t->h) && digits(s + 14, 2, &t->mi) && digits(s + 17, 2, &t->sec);
}

/* What follows the seconds: nothing, or ".f" to ".ffffff"; as microseconds. */
static bool parse_fraction_us(const char *s, size_t n, unsigned *frac)
{
    *frac = 0;
    if (n == 0)
        return true;
    size_t fn = n - 1;
    if (s[0] != '.' || fn < 1 || fn > 6 || !digits(s + 1, fn, frac))
        return false;
    for (size_t i = fn; i < 6; i++)
        *frac *= 10;
    return true;
}

static bool valid_civil(const struct civil_time *t)
{
    static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (t->y < 1 || t->mo < 1 || t->mo > 12 || t->d < 1 || t->h > 23 || t->mi > 59 || t->sec > 59)
        return false;
    return t->d <= mdays[t->mo - 1] + (t->mo == 2 && leap(t->y));
}

bool eng_parse_timestamp(const char *s, size_t n, int64_t *out_us)
{
    struct civil_time t;
    unsigned frac;
    if (n < 19 || !parse_civil_fields(s, &t) || !parse_fraction_us(s + 19, n - 19, &frac) ||
        !valid_civil(&t))
        return false;
    int64_t days = eng_days_from_civil(t.y, t.mo, t.d);
    *out_us = (days * 86400 + (int64_t)t.h * 3600 + (int64_t)t.mi * 60 + t.sec) * 1000000 + frac;
    return true;
}

static void split(int64_t us, int64_t *days, unsigned *secs)
{
    int64_t s = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000); /* floor */
    int64_t dd = s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
    *days = dd;
    *secs = (unsigned)(s - dd * 86400);
}

static void put2(char *p, unsigned v)
{
    p[0] = (char)('0' + v / 10 % 10);
    p[1] = (char)('0' + v % 10);
}

void eng_format_timestamp(int64_t us, char out[20])
{
    int64_t days, y;
    unsigned secs, m, d;
    split(us, &days, &secs);
    eng_civil_from_days(days, &y, &m, &d);
    unsigned yy = y < 0 ? 0 : y > 9999 ? 9999 : (unsigned)y;
    put2(out, yy / 100);
    put2(out + 2, yy % 100);
    out[4] = '-';
    put2(out + 5, m);
    out[7] = '-';
    put2(out + 8, d);
    out[10] = ' ';
    put2(out + 11, secs / 3600);
    out[13] = ':';
    put2(out + 14, secs / 60 % 60);
    out[16] = ':';
    put2(out + 17, secs % 60);
    out[19] = '\0';
}

void eng_format_minute(int64_t us, char out[13])
{
    char ts[20];
    eng_format_timestamp(us, ts);
    /* "YYYY-MM-DD HH:MM:SS" -> "YYYYMMDDHHMM" */
    const int pick[12] = {0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15};
    for (int i = 0; i < 12; i++)
        out[i] = ts[pick[i]];
    out[12] = '\0';
}

bool eng_lsn_parse(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long hi = strtoull(s, &end, 16);
    if (end == s || *end != '/' || errno != 0 || hi > UINT32_MAX)
        return false;
    const char *lo_s = end + 1;
    unsigned long long lo = strtoull(lo_s, &end, 16);
    if (end == lo_s || *end != '\0' || errno != 0 || lo > UINT32_MAX)
        return false;
    *out = (uint64_t)hi << 32 | (uint64_t)lo;
    return true;
}

void eng_lsn_format(uint64_t lsn, char *out, size_t len)
{
    snprintf(out, len, "%" PRIX32 "/%" PRIX32, (uint32_t)(lsn >> 32), (uint32_t)lsn);
}
