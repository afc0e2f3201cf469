/* engage: the content cache, content_id -> the content row's enrichment columns.
 * Ownership: the cache owns its entries and their strings; a pointer returned by get stays
 * valid until the next put/remove/clear of the same cache. Not thread-safe: each cache is
 * used by one thread (the source's), and snapshots are taken by cloning. */
#ifndef ENG_CONTENT_H
#define ENG_CONTENT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "../core/error.h"

struct eng_content {
    int32_t content_id;
    bool type_null;
    bool length_null;
    int32_t length_seconds;
    uint32_t type_len;
    char *content_type; /* NUL-terminated; "" when type_null */
};

/* A change to the content table, as decoded from the stream. */
enum eng_content_op { ENG_CONTENT_PUT, ENG_CONTENT_REMOVE, ENG_CONTENT_CLEAR };

struct eng_content_cache;

struct eng_content_cache *eng_content_cache_create(void);
void eng_content_cache_destroy(struct eng_content_cache *c);

/* Inserts or replaces the row for c->content_id (the strings are copied). */
void eng_content_cache_put(struct eng_content_cache *c, const struct eng_content *row);
void eng_content_cache_remove(struct eng_content_cache *c, int32_t content_id);
void eng_content_cache_clear(struct eng_content_cache *c);

/* The row for content_id, or NULL. */
const struct eng_content *eng_content_cache_get(const struct eng_content_cache *c,
                                                int32_t content_id);
uint32_t eng_content_cache_count(const struct eng_content_cache *c);

/* Calls fn for every row (in no particular order) until it returns false. The cache must
 * not change meanwhile. */
void eng_content_cache_each(const struct eng_content_cache *c,
                            bool (*fn)(const struct eng_content *row, void *ctx), void *ctx);

/* A deep copy. */
struct eng_content_cache *eng_content_cache_clone(const struct eng_content_cache *c);

/* True when both hold the same rows (for tests). */
bool eng_content_cache_equal(const struct eng_content_cache *a, const struct eng_content_cache *b);

/* Writes / reads the cache in a line-oriented text form (one row per line, strings
 * escaped) framed by a header and a row count, so a torn file is detected. */
int eng_content_cache_save(const struct eng_content_cache *c, FILE *f, struct eng_error *err);
int eng_content_cache_load(struct eng_content_cache *c, FILE *f,
                           struct eng_error *err) ENG_MUSTCHECK;

#endif
