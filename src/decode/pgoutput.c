/* engage: pgoutput protocol version 1 decoder. See pgoutput.h for the ownership rules.
 *
 * Every read goes through struct rd, which checks the remaining length first, so no input
 * can make the decoder read out of bounds. A message must be consumed exactly: bytes left
 * over mean we have lost sync with the server, which is as bad as a short message. Errors
 * leave the decoder as it was (a bad Relation message does not touch the map). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "pgoutput.h"

/* MaxTupleAttributeNumber in PostgreSQL: no tuple or relation has more columns. */
#define PGO_MAX_COLS 1664
/* Caps on the decoder's storage; each is far past what a real stream sends. */
#define PGO_MAX_RELATIONS       ((size_t)1 << 20)
#define PGO_MAX_TRUNCATE_RELIDS ((uint32_t)1 << 20)

/* Fixed sizes of the fields a count multiplies: the least one column or attribute takes. */
#define PGO_MIN_COL_BYTES  1  /* kind */
#define PGO_MIN_ATTR_BYTES 10 /* flags, "" name, type oid, typmod */

struct eng_pgo_decoder {
    struct eng_pgo_relation **rels; /* sorted by oid */
    size_t nrels;
    size_t rels_alloc;
    struct eng_pgo_column *cols[2]; /* [0] old tuple, [1] new tuple; reused across calls */
    uint16_t cols_alloc[2];
    uint32_t *relids; /* TRUNCATE relids; reused across calls */
    uint32_t relids_alloc;
};

/* A bounds-checked big-endian reader over one message. The first failure records an error
 * naming the message kind and the offset of the field that did not fit. */
struct rd {
    const uint8_t *p;
    size_t len;
    size_t off;
    const char *what; /* "insert", "relation", ... */
    struct eng_error *err;
};

static size_t rd_left(const struct rd *r)
{
    return r->len - r->off;
}

static bool rd_need(struct rd *r, size_t n)
{
    if (n <= rd_left(r))
        return true;
    eng_error_set(r->err, ENG_EPROTO, false, "truncated %s message at offset %zu", r->what, r->off);
    return false;
}

static bool rd_u8(struct rd *r, uint8_t *v)
{
    if (!rd_need(r, 1))
        return false;
    *v = r->p[r->off];
    r->off += 1;
    return true;
}

static bool rd_u16(struct rd *r, uint16_t *v)
{
    if (!rd_need(r, 2))
        return false;
    const uint8_t *q = r->p + r->off;
    *v = (uint16_t)((unsigned)q[0] << 8 | (unsigned)q[1]);
    r->off += 2;
    return true;
}

static bool rd_u32(struct rd *r, uint32_t *v)
{
    if (!rd_need(r, 4))
        return false;
    const uint8_t *q = r->p + r->off;
    *v = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | (uint32_t)q[3];
    r->off += 4;
    return true;
}

static bool rd_u64(struct rd *r, uint64_t *v)
{
    uint32_t hi, lo;
    if (!rd_u32(r, &hi) || !rd_u32(r, &lo))
        return false;
    *v = (uint64_t)hi << 32 | lo;
    return true;
}

static bool rd_i32(struct rd *r, int32_t *v)
{
    uint32_t u;
    if (!rd_u32(r, &u))
        return false;
    *v = (int32_t)u; /* two's complement on every target we build for */
    return true;
}

static bool rd_i64(struct rd *r, int64_t *v)
{
    uint64_t u;
    if (!rd_u64(r, &u))
        return false;
    *v = (int64_t)u;
    return true;
}

/* A NUL-terminated string inside the message; *s points into the input. */
static bool rd_str(struct rd *r, const char **s, size_t *n)
{
    const uint8_t *start = r->p + r->off;
    const uint8_t *nul = rd_left(r) > 0 ? memchr(start, '\0', rd_left(r)) : NULL;
    if (nul == NULL) {
        eng_error_set(r->err, ENG_EPROTO, false, "unterminated string in %s message at offset %zu",
                      r->what, r->off);
        return false;
    }
    *s = (const char *)start;
    *n = (size_t)(nul - start);
    r->off += *n + 1;
    return true;
}

static bool rd_bytes(struct rd *r, size_t n, const char **s)
{
    if (!rd_need(r, n))
        return false;
    *s = (const char *)(r->p + r->off);
    r->off += n;
    return true;
}

/* A column or attribute count: at most PGO_MAX_COLS and no more than the remaining bytes
 * could hold at min_bytes each, so a flipped bit cannot make us allocate or loop for long. */
static bool rd_count(struct rd *r, uint16_t *n, size_t min_bytes)
{
    size_t at = r->off;
    if (!rd_u16(r, n))
        return false;
    if (*n > PGO_MAX_COLS || (size_t)*n * min_bytes > rd_left(r)) {
        eng_error_set(r->err, ENG_EPROTO, false, "bad column count %u in %s message at offset %zu",
                      (unsigned)*n, r->what, at);
        return false;
    }
    return true;
}

static void relation_free(struct eng_pgo_relation *rel)
{
    if (rel == NULL)
        return;
    for (uint16_t i = 0; rel->attrs != NULL && i < rel->natts; i++)
        free(rel->attrs[i].name);
    free(rel->attrs);
    free(rel->nspname);
    free(rel->relname);
    free(rel);
}

struct eng_pgo_decoder *eng_pgo_decoder_create(void)
{
    return eng_calloc(1, sizeof(struct eng_pgo_decoder));
}

void eng_pgo_decoder_destroy(struct eng_pgo_decoder *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->nrels; i++)
        relation_free(d->rels[i]);
    free(d->rels);
    free(d->cols[0]);
    free(d->cols[1]);
    free(d->relids);
    free(d);
}

/* Index of oid in d->rels, or where it would be inserted (*found says which). */
static size_t relation_index(const struct eng_pgo_decoder *d, uint32_t oid, bool *found)
{
    size_t lo = 0, hi = d->nrels;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->rels[mid]->oid < oid)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < d->nrels && d->rels[lo]->oid == oid;
    return lo;
}

const struct eng_pgo_relation *eng_pgo_relation_find(const struct eng_pgo_decoder *d, uint32_t oid)
{
    bool found;
    size_t i = relation_index(d, oid, &found);
    return found ? d->rels[i] : NULL;
}

/* Stores rel (taking it), replacing any definition with the same oid. */
static int relation_store(struct eng_pgo_decoder *d, struct eng_pgo_relation *rel,
                          struct eng_error *err)
{
    bool found;
    size_t i = relation_index(d, rel->oid, &found);
    if (found) {
        relation_free(d->rels[i]);
        d->rels[i] = rel;
        return 0;
    }
    if (d->nrels == PGO_MAX_RELATIONS) {
        relation_free(rel);
        return eng_error_set(err, ENG_ENOMEM, false, "relation map is full (%zu relations)",
                             PGO_MAX_RELATIONS);
    }
    if (d->nrels == d->rels_alloc) {
        size_t n = d->rels_alloc ? d->rels_alloc * 2 : 16;
        d->rels = eng_realloc(d->rels, n * sizeof(*d->rels));
        d->rels_alloc = n;
    }
    memmove(d->rels + i + 1, d->rels + i, (d->nrels - i) * sizeof(*d->rels));
    d->rels[i] = rel;
    d->nrels++;
    return 0;
}

static int decode_relation(struct eng_pgo_decoder *d, struct rd *r, struct eng_pgo_msg *out)
{
    struct eng_pgo_relation *rel = eng_calloc(1, sizeof(*rel));
    const char *s;
    size_t n;
    uint8_t replident;
    uint16_t natts;

    if (!rd_u32(r, &rel->oid) || !rd_str(r, &s, &n))
        goto fail;
    rel->nspname = eng_strndup(s, n);
    if (!rd_str(r, &s, &n))
        goto fail;
    rel->relname = eng_strndup(s, n);
    size_t at = r->off;
    if (!rd_u8(r, &replident))
        goto fail;
    if (replident != 'd' && replident != 'n' && replident != 'f' && replident != 'i') {
        eng_error_set(r->err, ENG_EPROTO, false,
                      "unknown replica identity 0x%02x in relation message at offset %zu",
                      (unsigned)replident, at);
        goto fail;
    }
    rel->replident = (char)replident;
    if (!rd_count(r, &natts, PGO_MIN_ATTR_BYTES))
        goto fail;
    rel->attrs = eng_calloc(natts, sizeof(*rel->attrs));
    for (uint16_t i = 0; i < natts; i++) {
        struct eng_pgo_attr *a = &rel->attrs[i];
        if (!rd_u8(r, &a->flags) || !rd_str(r, &s, &n))
            goto fail;
        a->name = eng_strndup(s, n);
        rel->natts = (uint16_t)(i + 1); /* so relation_free frees this name on failure */
        if (!rd_u32(r, &a->type_oid) || !rd_i32(r, &a->typmod))
            goto fail;
    }
    rel->natts = natts;
    if (rd_left(r) != 0) {
        eng_error_set(r->err, ENG_EPROTO, false, "trailing bytes in relation message at offset %zu",
                      r->off);
        goto fail;
    }
    /* The map is touched only now, so a bad message leaves the old definition in place. */
    const struct eng_pgo_relation *stored = rel;
    int rc = relation_store(d, rel, r->err);
    rel = NULL; /* now owned by the map (or freed if it was full) */
    if (rc != 0)
        return rc;
    out->u.relation = stored;
    return 0;

fail:
    relation_free(rel);
    return ENG_EPROTO;
}

/* Reads one TupleData into the decoder's column array `which` (0 old, 1 new). */
static bool decode_tuple(struct eng_pgo_decoder *d, struct rd *r, int which,
                         const struct eng_pgo_relation *rel, struct eng_pgo_tuple *tup)
{
    uint16_t ncols;
    size_t at = r->off;
    if (!rd_count(r, &ncols, PGO_MIN_COL_BYTES))
        return false;
    /* Columns are matched to attributes by position: a count that differs from the
     * relation's means we are out of sync, and would let a consumer index past attrs. */
    if (rel != NULL && ncols != rel->natts) {
        eng_error_set(r->err, ENG_EPROTO, false,
                      "%s message at offset %zu has %u columns but relation %u has %u", r->what, at,
                      (unsigned)ncols, rel->oid, (unsigned)rel->natts);
        return false;
    }
    if (ncols > d->cols_alloc[which]) {
        /* Grow in steps up to the PostgreSQL maximum, which is the cap. */
        uint16_t n = d->cols_alloc[which] ? d->cols_alloc[which] : 16;
        while (n < ncols)
            n = (uint16_t)(n * 2 > PGO_MAX_COLS ? PGO_MAX_COLS : n * 2);
        free(d->cols[which]);
        d->cols[which] = eng_calloc(n, sizeof(struct eng_pgo_column));
        d->cols_alloc[which] = n;
    }
    for (uint16_t i = 0; i < ncols; i++) {
        struct eng_pgo_column *c = &d->cols[which][i];
        uint8_t kind;
        uint32_t len;
        at = r->off;
        if (!rd_u8(r, &kind))
            return false;
        c->kind = (char)kind;
        c->len = 0;
        c->data = NULL;
        switch (kind) {
        case ENG_PGO_NULL:
        case ENG_PGO_UNCHANGED:
            break;
        case ENG_PGO_TEXT:
        case ENG_PGO_BINARY:
            if (!rd_u32(r, &len) || !rd_bytes(r, len, &c->data))
                return false;
            c->len = len;
            break;
        default:
            eng_error_set(r->err, ENG_EPROTO, false,
                          "unknown column kind 0x%02x in %s message at offset %zu", (unsigned)kind,
                          r->what, at);
            return false;
        }
    }
    tup->ncols = ncols;
    tup->cols = d->cols[which];
    return true;
}

/* Reads the tuple marker byte ('N', 'K' or 'O'). */
static bool rd_marker(struct rd *r, uint8_t *m, const char *allowed)
{
    size_t at = r->off;
    if (!rd_u8(r, m))
        return false;
    if (*m == 0 || strchr(allowed, *m) == NULL) {
        eng_error_set(r->err, ENG_EPROTO, false,
                      "unexpected tuple marker 0x%02x in %s message at offset %zu", (unsigned)*m,
                      r->what, at);
        return false;
    }
    return true;
}

static int decode_change(struct eng_pgo_decoder *d, struct rd *r, struct eng_pgo_msg *out)
{
    uint32_t relid;
    uint8_t m;
    if (!rd_u32(r, &relid))
        return ENG_EPROTO;
    const struct eng_pgo_relation *rel = eng_pgo_relation_find(d, relid);

    switch (out->kind) {
    case ENG_PGO_INSERT:
        out->u.insert.relid = relid;
        out->u.insert.rel = rel;
        if (!rd_marker(r, &m, "N") || !decode_tuple(d, r, 1, rel, &out->u.insert.newtup))
            return ENG_EPROTO;
        break;
    case ENG_PGO_UPDATE:
        out->u.update.relid = relid;
        out->u.update.rel = rel;
        if (!rd_marker(r, &m, "KON"))
            return ENG_EPROTO;
        if (m != 'N') {
            out->u.update.oldkind = (char)m;
            if (!decode_tuple(d, r, 0, rel, &out->u.update.oldtup) || !rd_marker(r, &m, "N"))
                return ENG_EPROTO;
        }
        if (!decode_tuple(d, r, 1, rel, &out->u.update.newtup))
            return ENG_EPROTO;
        break;
    case ENG_PGO_DELETE:
        out->u.del.relid = relid;
        out->u.del.rel = rel;
        if (!rd_marker(r, &m, "KO"))
            return ENG_EPROTO;
        out->u.del.oldkind = (char)m;
        if (!decode_tuple(d, r, 0, rel, &out->u.del.oldtup))
            return ENG_EPROTO;
        break;
    default:
        eng_die("decode_change called for message kind 0x%02x", (unsigned)(uint8_t)out->kind);
    }
    return 0;
}

static int decode_truncate(struct eng_pgo_decoder *d, struct rd *r, struct eng_pgo_msg *out)
{
    uint32_t n;
    if (!rd_u32(r, &n))
        return ENG_EPROTO;
    size_t at = r->off - 4;
    if (!rd_u8(r, &out->u.truncate.options))
        return ENG_EPROTO;
    if (n > PGO_MAX_TRUNCATE_RELIDS)
        return eng_error_set(r->err, ENG_EPROTO, false,
                             "bad relation count %u in truncate message at offset %zu", n, at);
    /* Checked before allocating, so the storage never outgrows the input. */
    if (!rd_need(r, (size_t)n * 4))
        return ENG_EPROTO;
    if (n > d->relids_alloc) {
        uint32_t alloc = d->relids_alloc ? d->relids_alloc : 16;
        while (alloc < n)
            alloc *= 2; /* n <= 2^20, so no overflow */
        free(d->relids);
        d->relids = eng_calloc(alloc, sizeof(*d->relids));
        d->relids_alloc = alloc;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!rd_u32(r, &d->relids[i]))
            return ENG_EPROTO;
    }
    out->u.truncate.nrelids = n;
    out->u.truncate.relids = d->relids;
    return 0;
}

static const char *kind_name(uint8_t kind)
{
    switch (kind) {
    case ENG_PGO_BEGIN:
        return "begin";
    case ENG_PGO_COMMIT:
        return "commit";
    case ENG_PGO_ORIGIN:
        return "origin";
    case ENG_PGO_RELATION:
        return "relation";
    case ENG_PGO_TYPE:
        return "type";
    case ENG_PGO_INSERT:
        return "insert";
    case ENG_PGO_UPDATE:
        return "update";
    case ENG_PGO_DELETE:
        return "delete";
    case ENG_PGO_TRUNCATE:
        return "truncate";
    case ENG_PGO_MESSAGE:
        return "message";
    default:
        return NULL;
    }
}

static int decode_begin(struct rd *r, struct eng_pgo_msg *out)
{
    bool ok = rd_u64(r, &out->u.begin.final_lsn) && rd_i64(r, &out->u.begin.commit_time) &&
              rd_u32(r, &out->u.begin.xid);
    return ok ? 0 : ENG_EPROTO;
}

static int decode_commit(struct rd *r, struct eng_pgo_msg *out)
{
    bool ok = rd_u8(r, &out->u.commit.flags) && rd_u64(r, &out->u.commit.commit_lsn) &&
              rd_u64(r, &out->u.commit.end_lsn) && rd_i64(r, &out->u.commit.commit_time);
    return ok ? 0 : ENG_EPROTO;
}

static int decode_origin(struct rd *r, struct eng_pgo_msg *out)
{
    size_t n;
    bool ok = rd_u64(r, &out->u.origin.lsn) && rd_str(r, &out->u.origin.name, &n);
    return ok ? 0 : ENG_EPROTO;
}

static int decode_type(struct rd *r, struct eng_pgo_msg *out)
{
    size_t n;
    bool ok = rd_u32(r, &out->u.type.oid) && rd_str(r, &out->u.type.nspname, &n) &&
              rd_str(r, &out->u.type.name, &n);
    return ok ? 0 : ENG_EPROTO;
}

static int decode_message(struct rd *r, struct eng_pgo_msg *out)
{
    const char *s;
    size_t n;
    uint32_t len;
    if (!rd_u8(r, &out->u.message.flags) || !rd_u64(r, &out->u.message.lsn) ||
        !rd_str(r, &out->u.message.prefix, &n) || !rd_u32(r, &len) || !rd_bytes(r, len, &s))
        return ENG_EPROTO;
    out->u.message.len = len;
    out->u.message.content = s;
    return 0;
}

int eng_pgo_decode(struct eng_pgo_decoder *d, const uint8_t *buf, size_t len,
                   struct eng_pgo_msg *out, struct eng_error *err)
{
    memset(out, 0, sizeof(*out));
    if (buf == NULL || len == 0)
        return eng_error_set(err, ENG_EPROTO, false, "empty pgoutput message");
    const char *what = kind_name(buf[0]);
    if (what == NULL)
        return eng_error_set(err, ENG_EPROTO, false, "unknown message type 0x%02x",
                             (unsigned)buf[0]);

    struct rd r = {.p = buf, .len = len, .off = 1, .what = what, .err = err};
    int rc;
    out->kind = (char)buf[0];

    switch (buf[0]) {
    case ENG_PGO_BEGIN:
        rc = decode_begin(&r, out);
        break;
    case ENG_PGO_COMMIT:
        rc = decode_commit(&r, out);
        break;
    case ENG_PGO_ORIGIN:
        rc = decode_origin(&r, out);
        break;
    case ENG_PGO_RELATION:
        /* Checks its own trailing bytes: it must not store a relation it then rejects. */
        rc = decode_relation(d, &r, out);
        break;
    case ENG_PGO_TYPE:
        rc = decode_type(&r, out);
        break;
    case ENG_PGO_INSERT:
    case ENG_PGO_UPDATE:
    case ENG_PGO_DELETE:
        rc = decode_change(d, &r, out);
        break;
    case ENG_PGO_TRUNCATE:
        rc = decode_truncate(d, &r, out);
        break;
    case ENG_PGO_MESSAGE:
        rc = decode_message(&r, out);
        break;
    default:
        eng_die("kind_name and eng_pgo_decode disagree on 0x%02x", (unsigned)buf[0]);
    }

    if (rc == 0 && rd_left(&r) != 0)
        rc = eng_error_set(err, ENG_EPROTO, false, "trailing bytes in %s message at offset %zu",
                           what, r.off);
    if (rc != 0) {
        int kind = out->kind;
        memset(out, 0, sizeof(*out));
        out->kind = (char)kind;
    }
    return rc;
}
