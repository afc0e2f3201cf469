/* engage: decoder of the Debezium PostgreSQL connector's JSON messages (Kafka JSON converter,
 * with or without the schema part) for the tables engagement_events and content.
 * Pure: bytes in, one decoded row out, no I/O (the shape of pgoutput.h).
 * Ownership: the decoder owns a reusable scratch; a decoded message's text (cols[].data,
 * content.content_type) points into it and is valid until the next eng_dbz_decode call or
 * eng_dbz_decoder_destroy. The input is borrowed for the call only. */
#ifndef ENG_DEBEZIUM_H
#define ENG_DEBEZIUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/event.h"
#include "../enrich/enrich.h"

/* The largest value decoded: room for a row whose text is at the event cap
 * (ENG_EVENT_MAX_TEXT) plus the envelope. A larger value is refused before it is parsed. */
#define ENG_DBZ_MAX_VALUE (ENG_EVENT_MAX_TEXT + ((size_t)64 << 10))

/* Nesting deeper than this is refused before parsing (a Debezium envelope with its schema
 * part nests 7 deep; jansson alone would recurse 2048 levels, too deep for a small stack). */
#define ENG_DBZ_MAX_DEPTH 64

enum eng_dbz_kind {
    ENG_DBZ_EVENT,     /* a row of engagement_events: op and cols set */
    ENG_DBZ_CONTENT,   /* a row of content: op and content set */
    ENG_DBZ_TOMBSTONE, /* NULL value (after a delete): nothing to do */
    ENG_DBZ_IGNORED,   /* heartbeat, transaction marker, schema change, other table, op "m":
                          nothing to do; reason says which */
};

struct eng_dbz_msg {
    enum eng_dbz_kind kind;
    char op;                /* 'c','r','u','d','t' (0 for TOMBSTONE and IGNORED) */
    uint64_t lsn;           /* source.lsn, 0 if absent */
    int64_t tx_id;          /* source.txId, -1 if absent */
    int64_t commit_time_us; /* source.ts_us (or ts_ms*1000), 0 if absent */
    bool snapshot;          /* source.snapshot is "true"/"first"/"last"/... (not "false") */
    /* ENG_DBZ_EVENT: the row (after for c/r/u, before for d; all null for t) as text
     * columns, exactly what eng_event_from_text parses: integers in decimal, event_ts as
     * "YYYY-MM-DD HH:MM:SS[.ffffff]" (UTC, fraction without trailing zeros, none when 0).
     * Each data is NUL-terminated. */
    struct eng_text cols[ENG_COL__COUNT];
    /* ENG_DBZ_CONTENT: the row (after for c/r/u; for d only content_id is meaningful; for t
     * nothing: the whole table was emptied). content_type is "" when type_null. */
    struct eng_content content;
    const char *reason; /* ENG_DBZ_IGNORED: why (a static string) */
};

struct eng_dbz_decoder;

/* Creates a decoder (dies on out of memory). Besides its scratch it keeps the last 4
 * distinct schema parts it decoded (each at most 64 KiB, with their parse), so that a
 * value whose schema part is byte for byte one of them is parsed from its payload on. */
struct eng_dbz_decoder *eng_dbz_decoder_create(void);

/* Frees the decoder and its scratch. NULL is a no-op. */
void eng_dbz_decoder_destroy(struct eng_dbz_decoder *d);

/* Decodes one Kafka record value: `{"schema":...,"payload":{...}}` or the bare payload.
 * value NULL (len ignored) is a tombstone. The table comes from source.table (any schema;
 * without "source", from the envelope schema's name "<prefix>.<schema>.<table>.Envelope").
 * For c/r/u every column engage reads must be present in "after" (JSON null allowed where
 * the column may be NULL; event_id, event_ts and content_id must not be null); for d
 * "before" must hold the primary key. Integers must be JSON integers in their column's
 * range; event_ts is an integer in the unit its field schema names (io.debezium.time.
 * MicroTimestamp, NanoTimestamp (floored to microseconds), Timestamp or Kafka Connect's
 * Timestamp (milliseconds); microseconds when the schema part is off or does not describe
 * the column) or, in case time.precision.mode or a converter made it one, an ISO-8601
 * string in UTC ("2026-01-08T14:21:52.123456Z": 'T' or ' ', up to 9 fraction digits
 * floored to microseconds, then 'Z', "+00", "+00:00" or nothing), years 1..9999.
 * IGNORED reasons: "heartbeat", "transaction marker", "schema change", "logical decoding
 * message (op m)", "a table other than engagement_events and content".
 * Duplicate keys, \u0000, invalid UTF-8, trailing bytes, nesting deeper than
 * ENG_DBZ_MAX_DEPTH and values over ENG_DBZ_MAX_VALUE are refused.
 * Returns 0, or ENG_EPROTO (not a Debezium message: not JSON, wrong envelope, unknown op)
 * or ENG_EINVAL (a column value engage cannot take), never retriable, with err saying which
 * field and what was found: the caller parks the message. On error out->kind is
 * ENG_DBZ_IGNORED with every column null; lsn, tx_id, commit_time_us and snapshot are set
 * when source was read before the failure. One thread at a time per decoder. */
int eng_dbz_decode(struct eng_dbz_decoder *d, const void *value, size_t len,
                   struct eng_dbz_msg *out, struct eng_error *err) ENG_MUSTCHECK;

#endif
