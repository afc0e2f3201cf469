/* engage: the content table as of a given LSN, for a source that reads content changes and
 * events from two streams that share no order (the Kafka source: two topics).
 *
 * The cache holds every change read (the newest row of each content); each change also
 * keeps the row it replaced, so an event committed before a change that was read already is
 * enriched with the row as it was at the event's commit. Old changes are forgotten past a
 * cap (oldest first), so memory stays bounded: an event older than every change kept for its
 * content then gets the oldest row kept.
 *
 * Ownership: the versions own their cache and every row they keep; a row returned by
 * eng_versions_as_of is valid until the next call that changes the versions. One thread. */
#ifndef ENG_ENRICH_VERSIONS_H
#define ENG_ENRICH_VERSIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "content.h"

struct eng_versions;

/* max_changes: how many changes are kept for looking back (0: 100000). */
struct eng_versions *eng_versions_create(uint32_t max_changes);
void eng_versions_destroy(struct eng_versions *v);

/* Applies a change committed at lsn (0: unknown; then it cannot be looked past). */
void eng_versions_put(struct eng_versions *v, uint64_t lsn, const struct eng_content *row);
void eng_versions_remove(struct eng_versions *v, uint64_t lsn, int32_t content_id);
void eng_versions_clear(struct eng_versions *v, uint64_t lsn);

/* The newest rows (what every change read so far made of the table). */
const struct eng_content_cache *eng_versions_latest(const struct eng_versions *v);

/* True when the row of content_id as of lsn differs from the newest one; then *row is it
 * (NULL: no row at lsn). lsn 0 (unknown) is never looked back from. */
bool eng_versions_as_of(const struct eng_versions *v, int32_t content_id, uint64_t lsn,
                        const struct eng_content **row);

/* Changes kept for looking back (for a gauge). */
uint64_t eng_versions_kept(const struct eng_versions *v);

#endif
