/* engage: one log line per thing worth knowing, key=value, to stderr.
 * Ownership: nothing is retained; never pass a password or token. */
#ifndef ENG_LOG_H
#define ENG_LOG_H

#include "error.h"

enum eng_log_level { ENG_LOG_DEBUG, ENG_LOG_INFO, ENG_LOG_WARN, ENG_LOG_ERROR };

/* Sets the lowest level written (default INFO). Call before threads start. */
void eng_log_set_level(enum eng_log_level level);

/* Parses "debug", "info", "warn" or "error"; returns false on anything else. */
bool eng_log_parse_level(const char *s, enum eng_log_level *out);

/* Writes `ts=... level=... <msg>` as one line; thread-safe (one write per line). */
void eng_log(enum eng_log_level level, const char *fmt, ...) ENG_PRINTF(2, 3);

#define eng_debug(...) eng_log(ENG_LOG_DEBUG, __VA_ARGS__)
#define eng_info(...)  eng_log(ENG_LOG_INFO, __VA_ARGS__)
#define eng_warn(...)  eng_log(ENG_LOG_WARN, __VA_ARGS__)
#define eng_error(...) eng_log(ENG_LOG_ERROR, __VA_ARGS__)

#endif
