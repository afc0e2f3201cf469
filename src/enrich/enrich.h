/* engage: turning a source row into an enriched event: the left join with the content
 * cache, the derived fields of DESIGN.md section 1, and the one JSON shape every sink gets.
 * Ownership: events live in their batch; nothing here allocates outside the batch. */
#ifndef ENG_ENRICH_H
#define ENG_ENRICH_H

#include "../core/event.h"
#include "content.h"

/* A source column value as text: data/len, or null. */
struct eng_text {
    const char *data;
    uint32_t len;
    bool null;
};

/* The engagement_events columns a source hands over, in text form. */
enum eng_event_col {
    ENG_COL_EVENT_ID,
    ENG_COL_CONTENT_ID,
    ENG_COL_USER_ID,
    ENG_COL_EVENT_TYPE,
    ENG_COL_EVENT_TS,
    ENG_COL_DURATION_MS,
    ENG_COL_DEVICE,
    ENG_COL__COUNT
};

/* Column names as in the source table, indexed by enum eng_event_col. */
extern const char *const eng_event_col_names[ENG_COL__COUNT];

/* The source tables' columns engage reads and the types it reads them as (pg_type OIDs).
 * Only exact conversions are accepted: smallint for integer, varchar/char for text. */
struct eng_column_rule {
    const char *table;
    const char *column;
    uint32_t oids[3]; /* accepted types, 0-terminated */
    const char *want; /* the accepted types, as PostgreSQL names them */
};
extern const struct eng_column_rule eng_column_rules[];
extern const size_t eng_column_rule_count;

/* Checks one column of a source table against eng_column_rules: 0 when engage does not
 * read it or its type is accepted, else a fatal ENG_EINVAL naming the column, its type
 * (type_name, may be NULL) and the expected ones, with a runbook line. */
int eng_column_check(const char *table, const char *column, uint32_t type_oid,
                     const char *type_name, struct eng_error *err) ENG_MUSTCHECK;

/* Fills e (pushed on b) from text columns. Returns 0, or ENG_EINVAL with err saying which
 * column did not parse (event_id and event_ts must be present; content_id must not be NULL,
 * since every sink keys on it). */
int eng_event_from_text(struct eng_batch *b, struct eng_event *e,
                        const struct eng_text cols[ENG_COL__COUNT],
                        struct eng_error *err) ENG_MUSTCHECK;

/* Joins e with its content row (cache may give none: left join), computes the derived
 * fields and appends the enriched JSON to b->jsonl (setting e->json). Returns true when a
 * content row was found. */
bool eng_enrich(struct eng_batch *b, struct eng_event *e, const struct eng_content_cache *cache);

/* One source row to one enriched event at the end of b: eng_event_from_text, then
 * eng_enrich, within the caps of one event (ENG_EVENT_MAX_TEXT, ENG_EVENT_MAX_JSON). The
 * caller has checked eng_batch_full. Returns 0 with *out the event (*missed set when no
 * content row joined), or ENG_EINVAL when the row is not an event engage can deliver, with
 * the reason in err and b exactly as before the call: the caller parks the row. */
int eng_enrich_row(struct eng_batch *b, const struct eng_text cols[ENG_COL__COUNT],
                   const struct eng_content_cache *cache, struct eng_event **out, bool *missed,
                   struct eng_error *err) ENG_MUSTCHECK;

/* The derived fields alone (used by eng_enrich; exposed for tests): sets
 * ENG_EV_SECONDS_VALID and ENG_EV_PCT_VALID and pct_hundredths from duration_ms and
 * length_seconds, in integer arithmetic, half away from zero. */
void eng_enrich_derive(struct eng_event *e);

/* Appends the decimal text of n / 10^scale with trailing zeros trimmed but at least one
 * fraction digit ("7.0", "1.234", "0.02", "-0.005"). */
void eng_put_decimal(struct eng_buf *out, int64_t n, unsigned scale);

/* Appends the enriched JSON of e (without newline). */
void eng_event_render_json(const struct eng_batch *b, const struct eng_event *e,
                           struct eng_buf *out);

#endif
