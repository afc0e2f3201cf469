/* engage: one log line per thing worth knowing, logfmt (key=value), to stderr.
 * Ownership: nothing is retained; never pass a password or token.
 *
 * A format reads `msg="what happened" key=%s other="%s" n=%d`: the literal text of the
 * format is written as it is, and every string argument is escaped where it lands, so that a
 * value holding quotes, backslashes, spaces or newlines cannot break the line:
 * - inside a quoted value (the %s sits between quotes in the format), `"` and `\` are written
 *   as `\"` and `\\`, and control characters as `\n`, `\r`, `\t` or `\xNN`;
 * - outside quotes, a value that is empty or holds a space, `=`, `"`, `\` or a control
 *   character is written quoted as a whole, escaped the same way.
 * Numbers are written as printf writes them; a string's precision (%.*s) is honoured, its
 * width ignored. A line longer than the buffer is cut, its open
 * quote closed and `truncated=true` appended. Every line starts with ts= and level=, then the
 * format, which must start with msg=. */
#ifndef ENG_LOG_H
#define ENG_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "error.h"

enum eng_log_level { ENG_LOG_DEBUG, ENG_LOG_INFO, ENG_LOG_WARN, ENG_LOG_ERROR };

/* Sets the lowest level written (default INFO). Call before threads start. */
void eng_log_set_level(enum eng_log_level level);

/* Parses "debug", "info", "warn" or "error"; returns false on anything else. */
bool eng_log_parse_level(const char *s, enum eng_log_level *out);

/* Writes `ts=... level=... <fmt with escaped values>` as one line; thread-safe (one write per
 * line). */
void eng_log(enum eng_log_level level, const char *fmt, ...) ENG_PRINTF(2, 3);

/* Formats fmt and its arguments with eng_log's escaping into out (cap > 32 bytes), NUL
 * terminated, without the ts= and level= prefix or a newline. Returns the length written. For
 * tests and for eng_log itself; any thread. */
size_t eng_log_format(char *out, size_t cap, const char *fmt, ...) ENG_PRINTF(3, 4);
size_t eng_log_vformat(char *out, size_t cap, const char *fmt, va_list ap) ENG_PRINTF(3, 0);

#define eng_debug(...) eng_log(ENG_LOG_DEBUG, __VA_ARGS__)
#define eng_info(...)  eng_log(ENG_LOG_INFO, __VA_ARGS__)
#define eng_warn(...)  eng_log(ENG_LOG_WARN, __VA_ARGS__)
#define eng_error(...) eng_log(ENG_LOG_ERROR, __VA_ARGS__)

#endif
