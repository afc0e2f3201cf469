/* engage: decoder for PostgreSQL's pgoutput logical replication protocol, version 1.
 * Pure: bytes in, messages out, no I/O (the shape of hiredis's reader).
 * Ownership: the decoder owns its relation map; a decoded message borrows the input buffer
 * (column values point into it) and the decoder (relation pointers, column arrays) and is
 * valid until the next eng_pgo_decode call or eng_pgo_decoder_destroy. */
#ifndef ENG_PGOUTPUT_H
#define ENG_PGOUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"

enum eng_pgo_kind {
    ENG_PGO_BEGIN = 'B',
    ENG_PGO_COMMIT = 'C',
    ENG_PGO_ORIGIN = 'O',
    ENG_PGO_RELATION = 'R',
    ENG_PGO_TYPE = 'Y',
    ENG_PGO_INSERT = 'I',
    ENG_PGO_UPDATE = 'U',
    ENG_PGO_DELETE = 'D',
    ENG_PGO_TRUNCATE = 'T',
    ENG_PGO_MESSAGE = 'M',
};

/* Column value kinds as pgoutput sends them. */
enum eng_pgo_colkind {
    ENG_PGO_NULL = 'n',
    ENG_PGO_UNCHANGED = 'u', /* unchanged TOASTed value: not sent */
    ENG_PGO_TEXT = 't',
    ENG_PGO_BINARY = 'b',
};

struct eng_pgo_column {
    char kind;        /* enum eng_pgo_colkind */
    uint32_t len;     /* bytes of data (TEXT/BINARY) */
    const char *data; /* into the input buffer; NOT NUL-terminated */
};

struct eng_pgo_tuple {
    uint16_t ncols;
    struct eng_pgo_column *cols;
};

struct eng_pgo_attr {
    uint8_t flags; /* 1 = part of the replica identity key */
    char *name;
    uint32_t type_oid;
    int32_t typmod;
};

struct eng_pgo_relation {
    uint32_t oid;
    char *nspname;
    char *relname;
    char replident;
    uint16_t natts;
    struct eng_pgo_attr *attrs;
};

struct eng_pgo_msg {
    char kind; /* enum eng_pgo_kind */
    union {
        struct {
            uint64_t final_lsn;
            int64_t commit_time; /* microseconds since 2000-01-01 (PostgreSQL epoch) */
            uint32_t xid;
        } begin;
        struct {
            uint8_t flags;
            uint64_t commit_lsn;
            uint64_t end_lsn;
            int64_t commit_time;
        } commit;
        struct {
            uint64_t lsn;
            const char *name; /* NUL-terminated, into the input */
        } origin;
        const struct eng_pgo_relation *relation; /* RELATION: the stored (new) definition */
        struct {
            uint32_t oid;
            const char *nspname;
            const char *name;
        } type;
        struct {
            const struct eng_pgo_relation *rel; /* NULL if no RELATION was seen for relid */
            uint32_t relid;
            struct eng_pgo_tuple newtup;
        } insert;
        struct {
            const struct eng_pgo_relation *rel;
            uint32_t relid;
            char oldkind; /* 0, 'K' (key columns) or 'O' (whole old row) */
            struct eng_pgo_tuple oldtup;
            struct eng_pgo_tuple newtup;
        } update;
        struct {
            const struct eng_pgo_relation *rel;
            uint32_t relid;
            char oldkind; /* 'K' or 'O' */
            struct eng_pgo_tuple oldtup;
        } del;
        struct {
            uint32_t nrelids;
            uint8_t options;        /* 1 = CASCADE, 2 = RESTART IDENTITY */
            const uint32_t *relids; /* decoded into the decoder's storage */
        } truncate;
        struct {
            uint8_t flags; /* 1 = transactional */
            uint64_t lsn;
            const char *prefix; /* NUL-terminated, into the input */
            uint32_t len;
            const char *content; /* len bytes, into the input; NOT NUL-terminated */
        } message;
    } u;
};

struct eng_pgo_decoder;

/* Creates a decoder with an empty relation map. */
struct eng_pgo_decoder *eng_pgo_decoder_create(void);

/* Frees the decoder and its relation map. NULL is a no-op. */
void eng_pgo_decoder_destroy(struct eng_pgo_decoder *d);

/* Decodes one pgoutput message (the payload of one XLogData 'w' message), which must be
 * consumed exactly: trailing bytes are an error. A RELATION message replaces the stored
 * definition for its oid (earlier pointers to it become invalid). A tuple for a known relation
 * must have one column per attribute. Returns 0, or ENG_EPROTO with err set on truncated,
 * oversized or garbage input, or ENG_ENOMEM when the relation map is at its cap (2^20
 * relations); on error *out is zeroed but for kind, and the decoder is left as it was.
 * One thread at a time per decoder. */
int eng_pgo_decode(struct eng_pgo_decoder *d, const uint8_t *buf, size_t len,
                   struct eng_pgo_msg *out, struct eng_error *err) ENG_MUSTCHECK;

/* The stored relation for oid, or NULL; valid until the next eng_pgo_decode call. */
const struct eng_pgo_relation *eng_pgo_relation_find(const struct eng_pgo_decoder *d, uint32_t oid);

/* Converts a PostgreSQL-epoch timestamp (microseconds since 2000-01-01) to Unix microseconds. */
static inline int64_t eng_pgo_time_to_unix_us(int64_t pg_us)
{
    return pg_us + INT64_C(946684800000000);
}

#endif
