/* engage: encoder of the Kafka records Debezium 3.6.1's PostgreSQL connector writes (the JSON
 * converter, with or without the schema part), from rows as pgoutput sends them.
 * Pure: rows in, key and value bytes out, no I/O (the other direction is debezium.h).
 * Ownership: an eng_dbz_schema owns copies of everything it was made from; the encoder
 * borrows its inputs for the call and appends to buffers the caller owns. */
#ifndef ENG_DEBEZIUM_OUT_H
#define ENG_DEBEZIUM_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/buf.h"
#include "../core/error.h"
#include "pgoutput.h"

/* Types as Debezium maps them (time.precision.mode=adaptive, decimal.handling.mode=precise,
 * binary.handling.mode=bytes: the defaults): int2/int4/int8 (oid) -> int16/int32/int64,
 * bool -> boolean, float4/float8 -> float/double (Java 17's layout, "1.0E-4"), text/varchar/
 * bpchar/name/char -> string, date -> int32 io.debezium.time.Date, timestamp -> int64
 * io.debezium.time.MicroTimestamp (timestamp(0..3): io.debezium.time.Timestamp, ms),
 * timestamptz -> string io.debezium.time.ZonedTimestamp (UTC, "2026-01-08T12:21:52.5Z"),
 * time -> int64 io.debezium.time.MicroTime (time(0..3): int32 io.debezium.time.Time),
 * numeric(p,s) -> bytes org.apache.kafka.connect.data.Decimal, numeric ->
 * io.debezium.data.VariableScaleDecimal, bytea -> bytes (base64), uuid, json/jsonb, xml ->
 * string with Debezium's logical name. Every other type is written as its text in a string,
 * where Debezium differs (timetz, interval, arrays, enums, money, bit, geometric, ...):
 * capture should refuse tables with such columns or accept the difference. Values Debezium
 * maps specially are refused (ENG_EINVAL): infinite dates and timestamps, numeric NaN.
 *
 * One column of a captured table: the relation message gives name, type_oid and typmod; the
 * rest is a catalog fact pgoutput does not send. The capture source reads it with
 *
 *   SELECT a.attname, a.atttypid, a.atttypmod, a.attnotnull,
 *          coalesce(a.attnum = ANY (i.indkey), false) AS pkey,
 *          pg_get_expr(d.adbin, d.adrelid) AS default_expr
 *   FROM pg_attribute a
 *   LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
 *   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 *   WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
 *   ORDER BY a.attnum
 *
 * (the order of pgoutput's columns: attnum, dropped and generated columns left out by the
 * server) and turns default_expr into default_json with eng_dbz_default_json. */
struct eng_dbz_col {
    const char *name;
    uint32_t type_oid;
    int32_t typmod;
    bool not_null;            /* pg_attribute.attnotnull: the field is "optional":false */
    bool pkey;                /* a column of the primary key (the default message key) */
    const char *default_json; /* the schema's "default" as JSON, or NULL for none */
};

struct eng_dbz_table {
    const char *prefix; /* topic.prefix, "dbserver1" */
    const char *db;     /* the database name (source.db) */
    const char *schema; /* "public" */
    const char *table;  /* "engagement_events" */
    uint16_t ncols;
    const struct eng_dbz_col *cols;
    int key_col;  /* message.key.columns: the one key column's index; -1: the primary key */
    bool schemas; /* the JSON converter's schemas.enable (key and value alike) */
};

struct eng_dbz_schema;

/* Builds the key and value schema JSON of t once (they are the same for every record of the
 * table) and keeps a copy of t. Returns NULL with err (ENG_EINVAL) when key_col is out of
 * range, or -1 and no column is flagged pkey. Dies on out of memory. */
struct eng_dbz_schema *eng_dbz_schema_create(const struct eng_dbz_table *t,
                                             struct eng_error *err) ENG_MUSTCHECK;

/* Frees it. NULL is a no-op. */
void eng_dbz_schema_destroy(struct eng_dbz_schema *s);

/* The run-specific part of a record (the "source" block and the envelope's times). What
 * Debezium 3.6.1 puts there (its PostgresStreamingChangeEventSource and
 * PostgresSnapshotChangeEventSource; consistent with every recorded record):
 * - streamed changes: snapshot "false"; ts_us the commit time of the transaction (pgoutput's
 *   Begin); tx_id its xid; lsn the start of the change's XLogData message; last_commit_lsn
 *   the end_lsn of the last Commit message received in this run (the Commit message's
 *   XLogData start), absent (sequence "[null,...]") until the first Commit of the run. Not
 *   the Begin's LSN: after a rolled-back transaction (which pgoutput does not send) the
 *   recording has "[\"26401800\",\"26402080\"]", the previous commit's end, not the
 *   transaction's first record.
 * - snapshot reads (op 'r'): one ts_us for every row (the clock when the snapshot took its
 *   position), tx_id txid_current() and lsn pg_current_wal_lsn() of the snapshot
 *   transaction, no last commit; snapshot "first" on the very first record, "true" on the
 *   others, "last_in_data_collection" on the last row of each table but the last table,
 *   "first_in_data_collection" on the first row of each table after the first, "last" on the
 *   very last record; tables in table.include.list order (events, then content).
 * - now_ns: the wall clock when the record is made (the envelope's ts_ms/ts_us/ts_ns). */
struct eng_dbz_source {
    const char *snapshot;     /* "false" (streamed), or one of the snapshot marks above */
    int64_t ts_us;            /* source.ts_ms/ts_us/ts_ns: the commit time (Unix us) */
    bool has_tx_id;           /* else txId is null */
    int64_t tx_id;            /* the transaction id (pgoutput's xid; a snapshot's txid) */
    bool has_lsn;             /* else lsn and sequence are null */
    uint64_t lsn;             /* the change's LSN */
    bool has_last_commit;     /* sequence's first element; null when false */
    uint64_t last_commit_lsn; /* the LSN of the last commit before this change */
    int64_t now_ns;           /* the envelope's ts_ms/ts_us/ts_ns: when the record was made */
};

/* Appends the record's key and value JSON, byte for byte what Debezium writes.
 * op: 'c' (insert: after), 'r' (snapshot read: after), 'u' (update: after, and before when
 * the server sent the old row: REPLICA IDENTITY FULL, or a changed key), 'd' (delete:
 * before). before and after have one column per table column, in pgoutput's text format
 * (timestamps as PostgreSQL prints them with DateStyle ISO); NULL where absent. A delete's
 * before under the default replica identity holds only the key columns, the others null;
 * a NULL in a NOT NULL column is written as the column's default, or the type's zero, as
 * Debezium does (a recorded delete's before has "event_ts":0).
 * The key comes from after (before for 'd'). Debezium writes a delete, a tombstone and a create
 * instead of an update only when before is present and the key changed: the caller's choice.
 * An unchanged TOASTed value ('u') becomes Debezium's placeholder "__debezium_unavailable_value".
 * After a delete Debezium writes a tombstone: the same key, a null value.
 * Returns 0; ENG_EINVAL with err when a value does not parse as its column's type or op is not
 * one of those; ENG_ENOMEM when a buffer reached its cap. On error the buffers hold partial
 * output: reset them. Any thread; the schema is only read. */
int eng_dbz_encode(const struct eng_dbz_schema *s, const struct eng_dbz_source *src, char op,
                   const struct eng_pgo_tuple *before, const struct eng_pgo_tuple *after,
                   struct eng_buf *key, struct eng_buf *value, struct eng_error *err) ENG_MUSTCHECK;

/* The schema's "default" JSON Debezium gives a column, from its default as pg_get_expr prints
 * it (NULL: none). A constant ("0", "'view'::text", "'-1'::integer", "true") becomes its value
 * in the column's JSON form; anything else (nextval(...), now(), a function call) gives the
 * type's zero on a NOT NULL column (0, 0.0, false, "", "1970-01-01T00:00:00Z": Debezium's
 * fallback; recorded for bigserial and `timestamp NOT NULL DEFAULT now()`, both "default":0)
 * and no default on a nullable one. Appends to out; returns whether there is a default. */
bool eng_dbz_default_json(uint32_t type_oid, int32_t typmod, bool not_null, const char *expr,
                          struct eng_buf *out);

/* The record headers Debezium writes, in this order (UTF-8 strings). */
#define ENG_DBZ_NHEADERS 4
struct eng_dbz_header {
    const char *name;
    const char *value;
};

/* Fills h with the four headers: the logical name is the prefix, the task "0", the connector
 * "postgresql", the run id a UUID that is new for each run (the caller's, borrowed). */
void eng_dbz_headers(const char *prefix, const char *run_id,
                     struct eng_dbz_header h[ENG_DBZ_NHEADERS]);

#endif
