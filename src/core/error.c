#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

int eng_error_set(struct eng_error *err, int code, bool retriable, const char *fmt, ...)
{
    if (err == NULL)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    err->code = code;
    err->retriable = retriable;
    return code;
}

void eng_error_clear(struct eng_error *err)
{
    if (err == NULL)
        return;
    err->code = ENG_OK;
    err->retriable = false;
    err->msg[0] = '\0';
}

void eng_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("engage: fatal: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

void *eng_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        eng_die("out of memory allocating %zu bytes", n);
    return p;
}

void *eng_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        eng_die("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *eng_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        eng_die("out of memory reallocating %zu bytes", n);
    return q;
}

char *eng_strdup(const char *s)
{
    return eng_strndup(s, strlen(s));
}

char *eng_strndup(const char *s, size_t n)
{
    char *p = eng_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}
