#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"

static enum eng_log_level min_level = ENG_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

#define TAIL         " truncated=true"
#define TAIL_RESERVE (sizeof(TAIL) + 1) /* the tail and a closing quote */

void eng_log_set_level(enum eng_log_level level)
{
    min_level = level;
}

bool eng_log_parse_level(const char *s, enum eng_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum eng_log_level)i;
            return true;
        }
    }
    return false;
}

/* A bounded line: an escape sequence is added whole or not at all (plain text may be cut),
 * and once something does not fit nothing more is added, so a cut never splits an escape. `room`
 * keeps TAIL_RESERVE free for the closing quote and the truncation mark. */
struct line {
    char *p;
    size_t len, room;
    bool full;
    bool quoted; /* the text so far ends inside a quoted value */
};

static void put(struct line *l, const char *s, size_t n)
{
    if (l->full)
        return;
    if (n > l->room - l->len) {
        l->full = true;
        return;
    }
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

/* Like put, but text that needs no escaping may be cut: what fits is written. */
static void put_cut(struct line *l, const char *s, size_t n)
{
    if (l->full)
        return;
    size_t fit = l->room - l->len;
    if (n > fit) {
        put(l, s, fit);
        l->full = true;
        return;
    }
    put(l, s, n);
}

static bool needs_escape(unsigned char c)
{
    return c == '"' || c == '\\' || c < 0x20 || c == 0x7f;
}

static void put_escaped(struct line *l, const char *s, size_t n)
{
    size_t run = 0; /* bytes before i that need no escape, written in one piece */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!needs_escape(c)) {
            run++;
            continue;
        }
        put_cut(l, s + i - run, run);
        run = 0;
        char esc[5];
        size_t elen = 2;
        esc[0] = '\\';
        esc[1] = eng_short_escape(c);
        if (esc[1] == 0) {
            esc[1] = 'x';
            esc[2] = "0123456789abcdef"[c >> 4];
            esc[3] = "0123456789abcdef"[c & 15];
            elen = 4;
        }
        put(l, esc, elen);
    }
    put_cut(l, s + n - run, run);
}

/* Literal text of the format: written as is, but a control character (never meant to reach
 * a line) is escaped; quotes open and close quoted values. */
static void put_literal(struct line *l, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' && i + 1 < n) {
            put(l, s + i, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            put_escaped(l, s + i, 1);
        } else {
            if (c == '"' && !l->full)
                l->quoted = !l->quoted;
            put(l, s + i, 1);
        }
    }
}

/* A string argument: escaped inside quotes; outside, quoted when it has to be. */
static void put_value(struct line *l, const char *s, size_t n)
{
    if (l->quoted) {
        put_escaped(l, s, n);
        return;
    }
    bool quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++) {
        unsigned char c = (unsigned char)s[i];
        quote = c == ' ' || c == '=' || needs_escape(c);
    }
    if (!quote) {
        put(l, s, n);
        return;
    }
    /* While inside the quotes, a cut must close them (see eng_log_vformat's end). */
    put(l, "\"", 1);
    if (!l->full)
        l->quoted = true;
    put_escaped(l, s, n);
    put(l, "\"", 1);
    if (!l->full)
        l->quoted = false;
}

/* One conversion spec of the format, as printf reads it. */
struct spec {
    char text[32]; /* "%-08.3lld" */
    size_t len;
    bool star_width, star_prec, has_prec;
    int prec;
    char length[3]; /* "", "h", "hh", "l", "ll", "j", "z", "t", "L" */
    char conv;
};

/* Parses the spec at fmt (just after '%'); returns the bytes read, 0 if it is not one this
 * function knows (the format attribute makes that a compile-time error at the call sites). */
static size_t parse_spec(const char *fmt, struct spec *sp)
{
    const char *p = fmt;
    memset(sp, 0, sizeof(*sp));
    while (*p != '\0' && strchr("-+ #0", *p) != NULL)
        p++;
    if (*p == '*') {
        sp->star_width = true;
        p++;
    } else {
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == '.') {
        sp->has_prec = true;
        p++;
        if (*p == '*') {
            sp->star_prec = true;
            p++;
        } else {
            int v = 0;
            while (*p >= '0' && *p <= '9') {
                if (v < 100000)
                    v = v * 10 + (*p - '0');
                p++;
            }
            sp->prec = v;
        }
    }
    size_t ll = 0;
    while (*p != '\0' && strchr("hljztL", *p) != NULL && ll < 2)
        sp->length[ll++] = *p++;
    if (*p == '\0' || strchr("diouxXcsfFeEgGaAp%", *p) == NULL)
        return 0;
    sp->conv = *p++;
    size_t n = (size_t)(p - fmt);
    if (n + 2 > sizeof(sp->text))
        return 0;
    sp->text[0] = '%';
    memcpy(sp->text + 1, fmt, n);
    sp->text[n + 1] = '\0';
    sp->len = n + 1;
    return n;
}

/* Formats a number with spec (the star arguments already read) into tmp. */
static int format_number(char *tmp, size_t cap, const struct spec *sp, int w, int pr, va_list *ap)
{
    /* The spec text holds '*' where a star was: hand printf the value read for it. */
#define FMT1(T)                                                                                    \
    (sp->star_width && sp->star_prec ? snprintf(tmp, cap, sp->text, w, pr, va_arg(*ap, T))         \
     : sp->star_width                ? snprintf(tmp, cap, sp->text, w, va_arg(*ap, T))             \
     : sp->star_prec                 ? snprintf(tmp, cap, sp->text, pr, va_arg(*ap, T))            \
                                     : snprintf(tmp, cap, sp->text, va_arg(*ap, T)))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    const char *len = sp->length;
    int rc;
    switch (sp->conv) {
    case 'd':
    case 'i':
        if (strcmp(len, "l") == 0)
            rc = FMT1(long);
        else if (strcmp(len, "ll") == 0)
            rc = FMT1(long long);
        else if (strcmp(len, "j") == 0)
            rc = FMT1(intmax_t);
        else if (strcmp(len, "z") == 0)
            rc = FMT1(ssize_t);
        else if (strcmp(len, "t") == 0)
            rc = FMT1(ptrdiff_t);
        else
            rc = FMT1(int); /* hh and h are promoted to int */
        break;
    case 'o':
    case 'u':
    case 'x':
    case 'X':
        if (strcmp(len, "l") == 0)
            rc = FMT1(unsigned long);
        else if (strcmp(len, "ll") == 0)
            rc = FMT1(unsigned long long);
        else if (strcmp(len, "j") == 0)
            rc = FMT1(uintmax_t);
        else if (strcmp(len, "z") == 0)
            rc = FMT1(size_t);
        else if (strcmp(len, "t") == 0)
            rc = FMT1(ptrdiff_t);
        else
            rc = FMT1(unsigned);
        break;
    case 'c':
        rc = FMT1(int);
        break;
    case 'p':
        rc = FMT1(void *);
        break;
    default: /* floating point */
        if (strcmp(len, "L") == 0)
            rc = FMT1(long double);
        else
            rc = FMT1(double);
        break;
    }
#pragma GCC diagnostic pop
#undef FMT1
    return rc;
}

size_t eng_log_vformat(char *out, size_t cap, const char *fmt, va_list ap)
{
    struct line l = {.p = out, .room = cap - TAIL_RESERVE - 1};
    va_list args;
    va_copy(args, ap);
    const char *p = fmt;
    while (*p != '\0' && !l.full) {
        const char *pct = strchr(p, '%');
        size_t lit = pct ? (size_t)(pct - p) : strlen(p);
        put_literal(&l, p, lit);
        p += lit;
        if (*p != '%')
            break;
        struct spec sp;
        size_t n = parse_spec(p + 1, &sp);
        if (n == 0) { /* unknown: write the rest as text, read no more arguments */
            put_literal(&l, p, strlen(p));
            break;
        }
        p += 1 + n;
        if (sp.conv == '%') {
            put(&l, "%", 1);
            continue;
        }
        int w = sp.star_width ? va_arg(args, int) : 0;
        int pr = sp.star_prec ? va_arg(args, int) : sp.prec;
        if (sp.conv == 's') {
            const char *s = va_arg(args, const char *);
            if (s == NULL)
                s = "(null)";
            size_t slen = sp.has_prec && pr >= 0 ? strnlen(s, (size_t)pr) : strlen(s);
            put_value(&l, s, slen);
            continue;
        }
        char tmp[128];
        int m = format_number(tmp, sizeof(tmp), &sp, w, pr, &args);
        if (m > 0)
            put_value(&l, tmp, (size_t)m < sizeof(tmp) ? (size_t)m : sizeof(tmp) - 1);
    }
    va_end(args);
    if (l.full) {
        /* room excluded the reserve: the closing quote and the tail always fit */
        if (l.quoted)
            out[l.len++] = '"';
        memcpy(out + l.len, TAIL, sizeof(TAIL) - 1);
        l.len += sizeof(TAIL) - 1;
    }
    out[l.len] = '\0';
    return l.len;
}

size_t eng_log_format(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t n = eng_log_vformat(out, cap, fmt, ap);
    va_end(ap);
    return n;
}

void eng_log(enum eng_log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level]);
    if (n < 0 || (size_t)n >= sizeof(line) / 2)
        return; /* cannot happen: the prefix is about 40 bytes */
    va_list ap;
    va_start(ap, fmt);
    size_t len = (size_t)n + eng_log_vformat(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    line[len++] = '\n';
    /* One write(2) per line so that lines from several threads never interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
