/* engage: small pieces shared by the URL parsers of the sinks.
 * Ownership: eng_percent_decode returns a new string the caller frees. */
#ifndef ENG_URL_H
#define ENG_URL_H

#include <stddef.h>

/* The value of a hexadecimal digit (either case), or -1. */
int eng_hex_digit(int c);

/* Percent-decodes s[0..n) into a new NUL-terminated string; NULL on a bad escape or an
 * encoded NUL (which would silently cut a password short). */
char *eng_percent_decode(const char *s, size_t n);

#endif
