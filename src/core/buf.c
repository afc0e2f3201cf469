#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

bool eng_buf_reserve(struct eng_buf *b, size_t n)
{
    size_t cap = b->cap ? b->cap : ENG_BUF_DEFAULT_CAP;
    if (b->overflow || n > cap || b->len > cap - n) {
        b->overflow = true;
        return false;
    }
    size_t need = b->len + n + 1; /* room for the NUL */
    if (need <= b->alloc)
        return true;
    size_t alloc = b->alloc ? b->alloc : 256;
    while (alloc < need)
        alloc *= 2;
    b->data = eng_realloc(b->data, alloc);
    b->alloc = alloc;
    return true;
}

void eng_buf_append(struct eng_buf *b, const void *p, size_t n)
{
    if (!eng_buf_reserve(b, n))
        return;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void eng_buf_puts(struct eng_buf *b, const char *s)
{
    eng_buf_append(b, s, strlen(s));
}

void eng_buf_putc(struct eng_buf *b, char c)
{
    eng_buf_append(b, &c, 1);
}

void eng_buf_printf(struct eng_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !eng_buf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void eng_buf_put_i64(struct eng_buf *b, int64_t v)
{
    char tmp[24];
    char *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    eng_buf_append(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if it is invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

void eng_buf_put_json_str(struct eng_buf *b, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    /* Worst case is 6 bytes per input byte; reserve once for the common path. */
    if (!eng_buf_reserve(b, n + 2))
        return;
    eng_buf_putc(b, '"');
    size_t run = 0; /* start of the pending run of bytes that need no escaping */
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        size_t seq = c >= 0x80 ? utf8_seq_len(s + i, n - i) : 0;
        if (seq > 0) {
            i += seq;
            continue;
        }
        eng_buf_append(b, s + run, i - run);
        char esc[8];
        size_t elen = 2;
        esc[0] = '\\';
        esc[1] = eng_short_escape(c);
        if (esc[1] == 0 && (c == '\b' || c == '\f')) {
            esc[1] = c == '\b' ? 'b' : 'f';
        } else if (esc[1] == 0 && c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        } else if (esc[1] == 0) { /* an invalid UTF-8 byte */
            memcpy(esc, "\\ufffd", 6);
            elen = 6;
        }
        eng_buf_append(b, esc, elen);
        i++;
        run = i;
    }
    eng_buf_append(b, s + run, n - run);
    eng_buf_putc(b, '"');
}

char eng_short_escape(unsigned char c)
{
    switch (c) {
    case '"':
        return '"';
    case '\\':
        return '\\';
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    default:
        return 0;
    }
}

void eng_buf_reset(struct eng_buf *b)
{
    b->len = 0;
    b->overflow = false;
    if (b->data)
        b->data[0] = '\0';
}

void eng_buf_free(struct eng_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->alloc = 0;
    b->overflow = false;
}
