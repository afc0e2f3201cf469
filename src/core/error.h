/* engage: errors that cross module boundaries.
 * Ownership: an eng_error is a plain value owned by the caller; nothing inside it is heap. */
#ifndef ENG_ERROR_H
#define ENG_ERROR_H

#include <stdbool.h>
#include <stddef.h>

#define ENG_MUSTCHECK    __attribute__((warn_unused_result))
#define ENG_PRINTF(f, a) __attribute__((format(printf, f, a)))

enum eng_errcode {
    ENG_OK = 0,
    ENG_EIO = -1,      /* a server or the network failed */
    ENG_EPROTO = -2,   /* a peer sent something we cannot decode */
    ENG_EINVAL = -3,   /* bad input or bad configuration */
    ENG_ENOMEM = -4,   /* a cap was reached */
    ENG_EAGAIN = -5,   /* try again later (timeout, queue full) */
    ENG_ESTOPPED = -6, /* shutdown was requested */
    ENG_EFATAL = -7,   /* cannot continue without an operator (dropped slot, ...) */
    /* A server refused us for a reason of configuration: authentication, rights, a missing
     * database. Retriable for a short while only (ENG_DENIED_GRACE_US: a server that is
     * starting or being reconfigured may refuse briefly), then fatal. */
    ENG_EDENIED = -8,
};

#define ENG_DENIED_GRACE_US INT64_C(20000000)

/* The error kept by a module or returned through an out-parameter: the code, whether the
 * operation may succeed when retried (decided where the error is understood), and a
 * lowercase message with no trailing period. */
struct eng_error {
    int code;
    bool retriable;
    char msg[512]; /* room for a runbook line */
};

/* Records an error in err (err may be NULL) and returns code, so that callers can write
 * `return eng_error_set(err, ENG_EIO, true, "...")`. */
int eng_error_set(struct eng_error *err, int code, bool retriable, const char *fmt, ...)
    ENG_PRINTF(4, 5);

/* Clears err to ENG_OK. */
void eng_error_clear(struct eng_error *err);

/* Aborts the process with a message: only for out of memory and broken invariants. */
_Noreturn void eng_die(const char *fmt, ...) ENG_PRINTF(1, 2);

/* malloc/calloc/realloc/strdup that die on out of memory. */
void *eng_malloc(size_t n);
void *eng_calloc(size_t n, size_t size);
void *eng_realloc(void *p, size_t n);
char *eng_strdup(const char *s);
char *eng_strndup(const char *s, size_t n);

#endif
