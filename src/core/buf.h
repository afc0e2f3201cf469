/* engage: a growable byte buffer with a hard cap.
 * Ownership: the buffer owns its bytes; eng_buf_free releases them, and a zeroed struct is
 * an empty buffer with the default cap. */
#ifndef ENG_BUF_H
#define ENG_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define ENG_BUF_DEFAULT_CAP ((size_t)1 << 30)

struct eng_buf {
    char *data;
    size_t len;
    size_t alloc;
    size_t cap;    /* 0 means ENG_BUF_DEFAULT_CAP */
    bool overflow; /* sticky: an append would have passed cap */
};

/* Makes room for n more bytes. Returns false (and sets overflow) past the cap. */
bool eng_buf_reserve(struct eng_buf *b, size_t n) ENG_MUSTCHECK;

/* Appends; on overflow nothing is appended and b->overflow is set, so a sequence of appends
 * can be checked once at the end. The data is always NUL-terminated after len. */
void eng_buf_append(struct eng_buf *b, const void *p, size_t n);
void eng_buf_puts(struct eng_buf *b, const char *s);
void eng_buf_putc(struct eng_buf *b, char c);
void eng_buf_printf(struct eng_buf *b, const char *fmt, ...) ENG_PRINTF(2, 3);
void eng_buf_put_i64(struct eng_buf *b, int64_t v);

/* Appends s as a JSON string literal, quotes included. Invalid UTF-8 bytes become U+FFFD so
 * the output is always valid JSON. */
void eng_buf_put_json_str(struct eng_buf *b, const char *s, size_t n);

/* Empties the buffer, keeping its allocation. */
void eng_buf_reset(struct eng_buf *b);
void eng_buf_free(struct eng_buf *b);

/* The letter of the two-character escape (backslash and the letter) that JSON and logfmt
 * share for c: '"', '\\', 'n', 'r', 't'; 0 when c has none of those. */
char eng_short_escape(unsigned char c);

#endif
