/* engage: strict parsing of PostgreSQL text-format values and formatting of timestamps.
 * Ownership: pure functions over borrowed, length-delimited (not NUL-terminated) input. */
#ifndef ENG_PGTEXT_H
#define ENG_PGTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses a decimal integer (optional leading '-', digits only, no spaces) that fits the
 * type. Returns false on anything else. */
bool eng_parse_i64(const char *s, size_t n, int64_t *out);
bool eng_parse_i32(const char *s, size_t n, int32_t *out);

/* Parses a `timestamp without time zone` in PostgreSQL's ISO output form
 * "YYYY-MM-DD HH:MM:SS[.f{1,6}]" (years 1..9999, as written with DateStyle ISO), taken as
 * UTC, into microseconds since the Unix epoch. Returns false on anything else (infinity,
 * BC dates, other DateStyles). */
bool eng_parse_timestamp(const char *s, size_t n, int64_t *out_us);

/* Writes "YYYY-MM-DD HH:MM:SS" (19 characters + NUL) for a UTC microsecond timestamp,
 * flooring to the second. out must hold 20 bytes. */
void eng_format_timestamp(int64_t us, char out[20]);

/* Writes "YYYYMMDDHHMM" (12 characters + NUL), the UTC minute of us. */
void eng_format_minute(int64_t us, char out[13]);

/* Days since 1970-01-01 of a proleptic Gregorian date, and its inverse. */
int64_t eng_days_from_civil(int64_t y, unsigned m, unsigned d);
void eng_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

/* Parses "X/X" into an LSN; formats one as PostgreSQL does ("16/B374D848"; out of at least
 * 20 bytes). */
bool eng_lsn_parse(const char *s, uint64_t *out);
void eng_lsn_format(uint64_t lsn, char *out, size_t len);

#endif
