/* Tests for the pgoutput decoder on bytes recorded from PostgreSQL 15 by
 * data/record_pgoutput.py, then on every truncation of them and on corrupted input.
 * Each message is decoded from a heap copy of exactly its length, so ASan sees any read
 * past its end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "decode/pgoutput.h"

#ifndef ENG_TEST_DATA
#error "ENG_TEST_DATA must name the directory of the recorded data"
#endif

/* PostgreSQL-epoch microseconds of 2024-01-01 00:00:00 UTC, the origin timestamp tx11 sets. */
#define PG_TS_2024_01_01 INT64_C(757382400000000)
/* ... of 2024-01-02 03:04:05.123456, the first event's event_ts (binary stream). */
#define PG_TS_EVENT1 INT64_C(757479845123456)
/* Unix microseconds of 2023-01-01 and 2100-01-01: a recorded commit time lies between. */
#define UNIX_US_2023 INT64_C(1672531200000000)
#define UNIX_US_2100 INT64_C(4102444800000000)

#define OID_INT8      20
#define OID_INT4      23
#define OID_TEXT      25
#define OID_TIMESTAMP 1114

struct rec {
    uint8_t *data; /* exactly len bytes */
    size_t len;
    char *what; /* the comment line before it */
};

struct recording {
    struct rec *msgs;
    size_t n;
};

static struct recording text_rec, binary_rec;

/* ---- loading the recorded hex files ---------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void rec_free(struct recording *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->msgs[i].data);
        free(r->msgs[i].what);
    }
    free(r->msgs);
    r->msgs = NULL;
    r->n = 0;
}

static int rec_load(struct recording *r, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", ENG_TEST_DATA, name);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "cannot open \"%s\"\n", path);
        return -1;
    }
    char *line = NULL, *what = NULL;
    size_t cap = 0, alloc = 0;
    ssize_t n;
    int rc = -1;
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        if (line[0] == '#') {
            free(what);
            what = strdup(line);
            continue;
        }
        if (n % 2 != 0)
            goto out;
        if (r->n == alloc) {
            alloc = alloc ? alloc * 2 : 64;
            r->msgs = realloc(r->msgs, alloc * sizeof(*r->msgs));
        }
        struct rec *m = &r->msgs[r->n];
        m->len = (size_t)n / 2;
        m->data = malloc(m->len);
        m->what = what ? what : strdup("?");
        what = NULL;
        r->n++;
        for (size_t i = 0; i < m->len; i++) {
            int hi = hexval(line[2 * i]), lo = hexval(line[2 * i + 1]);
            if (hi < 0 || lo < 0)
                goto out;
            m->data[i] = (uint8_t)(hi << 4 | lo);
        }
    }
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bad hex line in \"%s\"\n", path);
    free(what);
    free(line);
    fclose(f);
    return rc;
}

static int setup(void **state)
{
    (void)state;
    if (rec_load(&text_rec, "pgoutput_v1.hex") != 0 ||
        rec_load(&binary_rec, "pgoutput_v1_binary.hex") != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rec_free(&text_rec);
    rec_free(&binary_rec);
    return 0;
}

/* ---- walking a recorded stream --------------------------------------------------------- */

struct stream {
    const struct recording *rec;
    size_t i;
    struct eng_pgo_decoder *d;
    struct eng_pgo_msg msg;
    struct eng_error err;
    /* the open transaction and the last committed one */
    uint32_t xid, last_xid;
    uint64_t final_lsn, last_end_lsn;
    int64_t commit_time;
    int ntx;
};

static void stream_open(struct stream *s, const struct recording *rec)
{
    memset(s, 0, sizeof(*s));
    s->rec = rec;
    s->d = eng_pgo_decoder_create();
    assert_non_null(s->d);
}

static void stream_close(struct stream *s)
{
    assert_int_equal(s->i, s->rec->n); /* every recorded message was checked */
    eng_pgo_decoder_destroy(s->d);
}

/* Decodes the next recorded message and checks its kind. */
static const struct eng_pgo_msg *next(struct stream *s, char kind)
{
    assert_true(s->i < s->rec->n);
    const struct rec *m = &s->rec->msgs[s->i++];
    int rc = eng_pgo_decode(s->d, m->data, m->len, &s->msg, &s->err);
    if (rc != 0)
        fail_msg("%s: %s", m->what, s->err.msg);
    if (s->msg.kind != kind)
        fail_msg("%s: kind '%c', want '%c'", m->what, s->msg.kind, kind);
    return &s->msg;
}

static void begin(struct stream *s)
{
    const struct eng_pgo_msg *m = next(s, ENG_PGO_BEGIN);
    assert_int_not_equal(m->u.begin.xid, 0);
    assert_true(m->u.begin.xid > s->last_xid);
    assert_true(m->u.begin.final_lsn > s->last_end_lsn);
    s->xid = m->u.begin.xid;
    s->final_lsn = m->u.begin.final_lsn;
    s->commit_time = m->u.begin.commit_time;
}

static void commit(struct stream *s)
{
    const struct eng_pgo_msg *m = next(s, ENG_PGO_COMMIT);
    assert_int_equal(m->u.commit.flags, 0);
    assert_int_equal(m->u.commit.commit_lsn, s->final_lsn);
    assert_true(m->u.commit.end_lsn > m->u.commit.commit_lsn);
    assert_true(m->u.commit.commit_time == s->commit_time);
    s->last_xid = s->xid;
    s->last_end_lsn = m->u.commit.end_lsn;
    s->ntx++;
}

/* A commit time recorded by the server now (not set by an origin). */
static void assert_recent(int64_t pg_us)
{
    int64_t unix_us = eng_pgo_time_to_unix_us(pg_us);
    assert_true(unix_us > UNIX_US_2023);
    assert_true(unix_us < UNIX_US_2100);
}

static void assert_col(const struct eng_pgo_tuple *t, int i, char kind, const char *text)
{
    assert_true(i < t->ncols);
    const struct eng_pgo_column *c = &t->cols[i];
    if (c->kind != kind)
        fail_msg("column %d: kind '%c', want '%c'", i, c->kind, kind);
    if (text == NULL) {
        assert_int_equal(c->len, 0);
        assert_null(c->data);
        return;
    }
    assert_int_equal(c->len, strlen(text));
    assert_memory_equal(c->data, text, c->len);
}

/* A tuple of text columns; NULL is a NULL column, "\x01u" an unchanged TOAST value. */
#define UNCHANGED "\x01u"
static void assert_tuple(const struct eng_pgo_tuple *t, int ncols, ...)
{
    assert_int_equal(t->ncols, ncols);
    va_list ap;
    va_start(ap, ncols);
    for (int i = 0; i < ncols; i++) {
        const char *v = va_arg(ap, const char *);
        if (v == NULL)
            assert_col(t, i, ENG_PGO_NULL, NULL);
        else if (strcmp(v, UNCHANGED) == 0)
            assert_col(t, i, ENG_PGO_UNCHANGED, NULL);
        else
            assert_col(t, i, ENG_PGO_TEXT, v);
    }
    va_end(ap);
}

struct attr_want {
    const char *name;
    uint32_t type_oid; /* 0: check against the caller's custom type */
    uint8_t flags;
};

static const struct eng_pgo_relation *relation(struct stream *s, const char *name, char replident,
                                               int natts, const struct attr_want *want,
                                               uint32_t custom)
{
    const struct eng_pgo_relation *rel = next(s, ENG_PGO_RELATION)->u.relation;
    assert_non_null(rel);
    assert_true(rel->oid >= 16384); /* FirstNormalObjectId: a user table */
    assert_string_equal(rel->nspname, "public");
    assert_string_equal(rel->relname, name);
    assert_int_equal(rel->replident, replident);
    assert_int_equal(rel->natts, natts);
    for (int i = 0; i < natts; i++) {
        assert_string_equal(rel->attrs[i].name, want[i].name);
        assert_int_equal(rel->attrs[i].type_oid, want[i].type_oid ? want[i].type_oid : custom);
        assert_int_equal(rel->attrs[i].typmod, -1);
        assert_int_equal(rel->attrs[i].flags, want[i].flags);
    }
    assert_ptr_equal(eng_pgo_relation_find(s->d, rel->oid), rel);
    return rel;
}

static const struct attr_want content_attrs[] = {
    {"content_id", OID_INT4, 1},
    {"content_type", OID_TEXT, 0},
    {"length_seconds", OID_INT4, 0},
    {"title", OID_TEXT, 0},
};

static const struct attr_want events_attrs[] = {
    {"event_id", OID_INT8, 1},   {"content_id", OID_INT4, 0},    {"user_id", OID_INT4, 0},
    {"event_type", OID_TEXT, 0}, {"event_ts", OID_TIMESTAMP, 0}, {"duration_ms", OID_INT4, 0},
    {"device", OID_TEXT, 0},     {"country", OID_TEXT, 0},
};

static const struct attr_want docs_attrs[] = {
    {"id", OID_INT4, 1},
    {"body", OID_TEXT, 0},
    {"note", OID_TEXT, 0},
};

/* REPLICA IDENTITY FULL: every column is part of the identity. */
static const struct attr_want reviews_attrs[] = {
    {"id", OID_INT4, 1},
    {"content_id", OID_INT4, 1},
    {"mood", 0, 1},
    {"comment", OID_TEXT, 1},
};

/* ---- the recorded streams -------------------------------------------------------------- */

static void test_recorded_text_stream(void **state)
{
    (void)state;
    struct stream s;
    const struct eng_pgo_msg *m;
    stream_open(&s, &text_rec);

    /* tx1: two content rows, the second with a NULL length */
    begin(&s);
    assert_recent(s.commit_time);
    uint32_t content = relation(&s, "content", 'd', 4, content_attrs, 0)->oid;
    m = next(&s, ENG_PGO_INSERT);
    assert_int_equal(m->u.insert.relid, content);
    assert_non_null(m->u.insert.rel);
    assert_int_equal(m->u.insert.rel->oid, content);
    assert_tuple(&m->u.insert.newtup, 4, "1", "video", "120", "Intro");
    m = next(&s, ENG_PGO_INSERT);
    assert_tuple(&m->u.insert.newtup, 4, "2", "podcast", NULL, "Talk");
    commit(&s);

    /* tx2: two events */
    begin(&s);
    uint32_t events = relation(&s, "engagement_events", 'd', 7, events_attrs, 0)->oid;
    m = next(&s, ENG_PGO_INSERT);
    assert_int_equal(m->u.insert.relid, events);
    assert_tuple(&m->u.insert.newtup, 7, "1", "1", "42", "play", "2024-01-02 03:04:05.123456",
                 "1500", "ios");
    m = next(&s, ENG_PGO_INSERT);
    assert_tuple(&m->u.insert.newtup, 7, "2", "2", "43", "pause", "2024-01-02 03:04:06", NULL,
                 NULL);
    commit(&s);

    /* tx3: update without and with a key change, delete by key */
    begin(&s);
    m = next(&s, ENG_PGO_UPDATE);
    assert_int_equal(m->u.update.relid, content);
    assert_int_equal(m->u.update.oldkind, 0);
    assert_int_equal(m->u.update.oldtup.ncols, 0);
    assert_tuple(&m->u.update.newtup, 4, "1", "video", "120", "Intro v2");
    m = next(&s, ENG_PGO_UPDATE);
    assert_int_equal(m->u.update.oldkind, 'K');
    assert_tuple(&m->u.update.oldtup, 4, "2", NULL, NULL, NULL);
    assert_tuple(&m->u.update.newtup, 4, "3", "podcast", NULL, "Talk");
    m = next(&s, ENG_PGO_DELETE);
    assert_int_equal(m->u.del.relid, events);
    assert_int_equal(m->u.del.oldkind, 'K');
    assert_tuple(&m->u.del.oldtup, 7, "2", NULL, NULL, NULL, NULL, NULL, NULL);
    commit(&s);

    /* tx4: a 10000-byte value stored out of line */
    begin(&s);
    uint32_t docs = relation(&s, "docs", 'd', 3, docs_attrs, 0)->oid;
    m = next(&s, ENG_PGO_INSERT);
    assert_int_equal(m->u.insert.relid, docs);
    char body[10001];
    memset(body, 'x', 10000);
    body[10000] = '\0';
    assert_tuple(&m->u.insert.newtup, 3, "1", body, "v1");
    commit(&s);

    /* tx5: the untouched body arrives as unchanged TOAST */
    begin(&s);
    m = next(&s, ENG_PGO_UPDATE);
    assert_int_equal(m->u.update.relid, docs);
    assert_int_equal(m->u.update.oldkind, 0);
    assert_tuple(&m->u.update.newtup, 3, "1", UNCHANGED, "v2");
    commit(&s);

    /* tx6: an enum column (Type message) on a REPLICA IDENTITY FULL table */
    begin(&s);
    m = next(&s, ENG_PGO_TYPE);
    uint32_t mood = m->u.type.oid;
    assert_true(mood >= 16384);
    assert_string_equal(m->u.type.nspname, "public");
    assert_string_equal(m->u.type.name, "mood");
    uint32_t reviews = relation(&s, "reviews", 'f', 4, reviews_attrs, mood)->oid;
    m = next(&s, ENG_PGO_INSERT);
    assert_int_equal(m->u.insert.relid, reviews);
    assert_tuple(&m->u.insert.newtup, 4, "1", "1", "happy", "great");
    m = next(&s, ENG_PGO_UPDATE);
    assert_int_equal(m->u.update.oldkind, 'O');
    assert_tuple(&m->u.update.oldtup, 4, "1", "1", "happy", "great");
    assert_tuple(&m->u.update.newtup, 4, "1", "1", "sad", "great");
    m = next(&s, ENG_PGO_DELETE);
    assert_int_equal(m->u.del.oldkind, 'O');
    assert_tuple(&m->u.del.oldtup, 4, "1", "1", "sad", "great");
    commit(&s);

    /* tx7: a transactional logical message */
    begin(&s);
    m = next(&s, ENG_PGO_MESSAGE);
    assert_int_equal(m->u.message.flags, 1);
    assert_true(m->u.message.lsn > 0);
    assert_true(m->u.message.lsn <= s.final_lsn);
    assert_string_equal(m->u.message.prefix, "engage");
    assert_int_equal(m->u.message.len, 5);
    assert_memory_equal(m->u.message.content, "hello", 5);
    commit(&s);

    /* msg8: a non-transactional one, outside any transaction */
    m = next(&s, ENG_PGO_MESSAGE);
    assert_int_equal(m->u.message.flags, 0);
    assert_true(m->u.message.lsn > s.last_end_lsn);
    assert_string_equal(m->u.message.prefix, "engage");
    assert_int_equal(m->u.message.len, 3);
    assert_memory_equal(m->u.message.content, "bye", 3);

    /* tx10: after ALTER TABLE the Relation is re-sent and replaces the stored one */
    begin(&s);
    const struct eng_pgo_relation *rel = relation(&s, "engagement_events", 'd', 8, events_attrs, 0);
    assert_int_equal(rel->oid, events);
    m = next(&s, ENG_PGO_INSERT);
    assert_ptr_equal(m->u.insert.rel, eng_pgo_relation_find(s.d, events));
    assert_int_equal(m->u.insert.rel->natts, 8);
    assert_tuple(&m->u.insert.newtup, 8, "3", "3", "44", "complete", "2024-01-02 03:05:00", "60000",
                 "web", "NZ");
    commit(&s);

    /* tx11: from a replication origin; the commit time is the origin's */
    begin(&s);
    assert_true(s.commit_time == PG_TS_2024_01_01);
    m = next(&s, ENG_PGO_ORIGIN);
    assert_int_equal(m->u.origin.lsn, 0xABCDEF);
    assert_string_equal(m->u.origin.name, "upstream");
    m = next(&s, ENG_PGO_INSERT);
    assert_int_equal(m->u.insert.relid, content);
    assert_tuple(&m->u.insert.newtup, 4, "10", "article", NULL, "From upstream");
    commit(&s);

    /* tx12: TRUNCATE content, engagement_events RESTART IDENTITY CASCADE */
    begin(&s);
    assert_recent(s.commit_time);
    assert_int_equal(relation(&s, "content", 'd', 4, content_attrs, 0)->oid, content);
    assert_int_equal(relation(&s, "engagement_events", 'd', 8, events_attrs, 0)->oid, events);
    m = next(&s, ENG_PGO_TRUNCATE);
    assert_int_equal(m->u.truncate.options, 3);
    assert_int_equal(m->u.truncate.nrelids, 2);
    assert_int_equal(m->u.truncate.relids[0], content);
    assert_int_equal(m->u.truncate.relids[1], events);
    commit(&s);

    assert_int_equal(s.ntx, 10);
    stream_close(&s);
}

static uint64_t be(const struct eng_pgo_column *c)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < c->len; i++)
        v = v << 8 | (uint8_t)c->data[i];
    return v;
}

static void assert_bin(const struct eng_pgo_tuple *t, int i, uint32_t len, uint64_t v)
{
    assert_true(i < t->ncols);
    assert_int_equal(t->cols[i].kind, ENG_PGO_BINARY);
    assert_int_equal(t->cols[i].len, len);
    assert_int_equal(be(&t->cols[i]), v);
}

static void assert_bin_str(const struct eng_pgo_tuple *t, int i, const char *v)
{
    assert_true(i < t->ncols);
    assert_int_equal(t->cols[i].kind, ENG_PGO_BINARY);
    assert_int_equal(t->cols[i].len, strlen(v));
    assert_memory_equal(t->cols[i].data, v, strlen(v));
}

/* The same changes decoded with 'binary' 'true': columns arrive as 'b' in each type's
 * binary send format (big-endian integers, timestamps as PostgreSQL-epoch microseconds). */
static void test_recorded_binary_stream(void **state)
{
    (void)state;
    assert_int_equal(binary_rec.n, text_rec.n);
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();
    struct eng_pgo_msg m;
    struct eng_error err;
    int ninsert = 0, nunchanged = 0;
    for (size_t i = 0; i < binary_rec.n; i++) {
        const struct rec *r = &binary_rec.msgs[i];
        if (eng_pgo_decode(d, r->data, r->len, &m, &err) != 0)
            fail_msg("%s: %s", r->what, err.msg);
        assert_int_equal(m.kind, text_rec.msgs[i].data[0]);
        if (m.kind == ENG_PGO_UPDATE && m.u.update.newtup.ncols == 3 &&
            m.u.update.newtup.cols[1].kind == ENG_PGO_UNCHANGED)
            nunchanged++;
        if (m.kind != ENG_PGO_INSERT || m.u.insert.rel == NULL ||
            strcmp(m.u.insert.rel->relname, "engagement_events") != 0)
            continue;
        const struct eng_pgo_tuple *t = &m.u.insert.newtup;
        if (ninsert == 0) {
            assert_int_equal(t->ncols, 7);
            assert_bin(t, 0, 8, 1);
            assert_bin(t, 1, 4, 1);
            assert_bin(t, 2, 4, 42);
            assert_bin_str(t, 3, "play");
            assert_bin(t, 4, 8, (uint64_t)PG_TS_EVENT1);
            assert_bin(t, 5, 4, 1500);
            assert_bin_str(t, 6, "ios");
        } else if (ninsert == 1) {
            assert_bin(t, 2, 4, 43);
            assert_col(t, 5, ENG_PGO_NULL, NULL);
            assert_col(t, 6, ENG_PGO_NULL, NULL);
        }
        ninsert++;
    }
    assert_int_equal(ninsert, 3);
    assert_int_equal(nunchanged, 1);
    eng_pgo_decoder_destroy(d);
}

/* ---- truncation ------------------------------------------------------------------------ */

static int decode_copy(struct eng_pgo_decoder *d, const uint8_t *p, size_t len,
                       struct eng_pgo_msg *m, struct eng_error *err)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (len)
        memcpy(copy, p, len);
    int rc = eng_pgo_decode(d, copy, len, m, err);
    free(copy);
    return rc;
}

/* Every proper prefix of every recorded message fails cleanly, and the full message still
 * decodes right after: a failed decode leaves the decoder (relation map) as it was. */
static void check_prefixes(const struct recording *rec)
{
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();
    struct eng_pgo_msg m;
    struct eng_error err;
    for (size_t i = 0; i < rec->n; i++) {
        const struct rec *r = &rec->msgs[i];
        for (size_t k = 0; k < r->len; k++) {
            eng_error_clear(&err);
            int rc = decode_copy(d, r->data, k, &m, &err);
            if (rc != ENG_EPROTO)
                fail_msg("%s: prefix of %zu bytes returned %d", r->what, k, rc);
            assert_int_equal(err.code, ENG_EPROTO);
            assert_false(err.retriable);
            assert_true(err.msg[0] != '\0');
        }
        if (eng_pgo_decode(d, r->data, r->len, &m, &err) != 0)
            fail_msg("%s: after its prefixes: %s", r->what, err.msg);
    }
    eng_pgo_decoder_destroy(d);
}

static void test_prefixes_fail(void **state)
{
    (void)state;
    check_prefixes(&text_rec);
    check_prefixes(&binary_rec);
}

/* ---- hand-made errors ------------------------------------------------------------------ */

static void expect_error(struct eng_pgo_decoder *d, const uint8_t *p, size_t len, const char *want)
{
    struct eng_pgo_msg m;
    struct eng_error err;
    eng_error_clear(&err);
    assert_int_equal(decode_copy(d, p, len, &m, &err), ENG_EPROTO);
    assert_int_equal(err.code, ENG_EPROTO);
    assert_string_equal(err.msg, want);
}

/* The first recorded Relation message for relname. */
static const struct rec *find_relation(const char *relname)
{
    for (size_t i = 0; i < text_rec.n; i++) {
        const struct rec *r = &text_rec.msgs[i];
        size_t nsp = 5 + strlen("public") + 1;
        if (r->data[0] == 'R' && r->len > nsp + strlen(relname) &&
            strcmp((const char *)r->data + nsp, relname) == 0)
            return r;
    }
    fail_msg("no recorded relation \"%s\"", relname);
    return NULL;
}

static void test_error_messages(void **state)
{
    (void)state;
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();

    expect_error(d, (const uint8_t *)"", 0, "empty pgoutput message");
    expect_error(d, (const uint8_t *)"z", 1, "unknown message type 0x7a");
    static const uint8_t stream_start[] = {'S', 0, 0, 0, 1, 1};
    expect_error(d, stream_start, sizeof(stream_start), "unknown message type 0x53");

    /* relid 0x4007, 'N', 4 columns, the first 't' of length 1 with its byte missing */
    static const uint8_t short_insert[] = {'I', 0, 0, 0x40, 7, 'N', 0, 4, 't', 0, 0, 0, 1};
    expect_error(d, short_insert, sizeof(short_insert), "truncated insert message at offset 13");
    static const uint8_t huge_len[] = {'I', 0,   0,    0x40, 7,    'N',  0,
                                       1,   'b', 0xff, 0xff, 0xff, 0xff, 'x'};
    expect_error(d, huge_len, sizeof(huge_len), "truncated insert message at offset 13");
    static const uint8_t too_many_cols[] = {'I', 0, 0, 0x40, 7, 'N', 0x06, 0x81, 'n'};
    expect_error(d, too_many_cols, sizeof(too_many_cols),
                 "bad column count 1665 in insert message at offset 6");
    /* 1664 columns (the PostgreSQL maximum) decode; 1665, with the bytes for them, do not */
    uint8_t wide[8 + 1665];
    memcpy(wide, (const uint8_t[]){'I', 0, 0, 0x40, 7, 'N', 0x06, 0x80}, 8);
    memset(wide + 8, 'n', 1665);
    struct eng_pgo_msg wm;
    struct eng_error werr;
    assert_int_equal(decode_copy(d, wide, 8 + 1664, &wm, &werr), 0);
    assert_int_equal(wm.u.insert.newtup.ncols, 1664);
    assert_int_equal(wm.u.insert.newtup.cols[1663].kind, ENG_PGO_NULL);
    wide[7] = 0x81;
    expect_error(d, wide, sizeof(wide), "bad column count 1665 in insert message at offset 6");
    static const uint8_t negative_cols[] = {'I', 0, 0, 0x40, 7, 'N', 0xff, 0xff, 'n'};
    expect_error(d, negative_cols, sizeof(negative_cols),
                 "bad column count 65535 in insert message at offset 6");
    /* 3 columns claimed, 2 bytes left: cannot hold them */
    static const uint8_t cols_vs_bytes[] = {'I', 0, 0, 0x40, 7, 'N', 0, 3, 'n', 'n'};
    expect_error(d, cols_vs_bytes, sizeof(cols_vs_bytes),
                 "bad column count 3 in insert message at offset 6");
    static const uint8_t bad_kind[] = {'I', 0, 0, 0x40, 7, 'N', 0, 2, 'n', 'q'};
    expect_error(d, bad_kind, sizeof(bad_kind),
                 "unknown column kind 0x71 in insert message at offset 9");
    static const uint8_t bad_marker[] = {'I', 0, 0, 0x40, 7, 'K', 0, 1, 'n'};
    expect_error(d, bad_marker, sizeof(bad_marker),
                 "unexpected tuple marker 0x4b in insert message at offset 5");
    static const uint8_t delete_new[] = {'D', 0, 0, 0x40, 7, 'N', 0, 1, 'n'};
    expect_error(d, delete_new, sizeof(delete_new),
                 "unexpected tuple marker 0x4e in delete message at offset 5");
    static const uint8_t update_two_old[] = {'U', 0, 0, 0x40, 7, 'K', 0, 1, 'n', 'O', 0, 1, 'n'};
    expect_error(d, update_two_old, sizeof(update_two_old),
                 "unexpected tuple marker 0x4f in update message at offset 9");
    static const uint8_t trailing[] = {'I', 0, 0, 0x40, 7, 'N', 0, 1, 'n', 0};
    expect_error(d, trailing, sizeof(trailing), "trailing bytes in insert message at offset 9");
    static const uint8_t unterminated[] = {'O', 0, 0, 0, 0, 0, 0, 0, 1, 'a', 'b'};
    expect_error(d, unterminated, sizeof(unterminated),
                 "unterminated string in origin message at offset 9");
    static const uint8_t bad_ident[] = {'R', 0, 0, 0x40, 7, 'p', 0, 't', 0, 'z', 0, 0};
    expect_error(d, bad_ident, sizeof(bad_ident),
                 "unknown replica identity 0x7a in relation message at offset 9");
    static const uint8_t many_relids[] = {'T', 0, 0x10, 0, 1, 0, 0, 0, 0, 1};
    expect_error(d, many_relids, sizeof(many_relids),
                 "bad relation count 1048577 in truncate message at offset 1");
    static const uint8_t short_relids[] = {'T', 0, 0, 0, 2, 0, 0, 0, 0, 1};
    expect_error(d, short_relids, sizeof(short_relids), "truncated truncate message at offset 6");
    static const uint8_t short_message[] = {'M', 1,   0, 0, 0, 0, 0, 0,  0,
                                            1,   'p', 0, 0, 0, 0, 9, 'a'};
    expect_error(d, short_message, sizeof(short_message), "truncated message message at offset 16");

    /* Once the relation is known, a tuple must have one column per attribute. */
    const struct rec *content = find_relation("content");
    struct eng_pgo_msg m;
    struct eng_error err;
    assert_int_equal(eng_pgo_decode(d, content->data, content->len, &m, &err), 0);
    uint32_t oid = m.u.relation->oid;
    uint8_t three_cols[] = {'I', 0, 0, 0, 0, 'N', 0, 3, 'n', 'n', 'n'};
    three_cols[1] = (uint8_t)(oid >> 24);
    three_cols[2] = (uint8_t)(oid >> 16);
    three_cols[3] = (uint8_t)(oid >> 8);
    three_cols[4] = (uint8_t)oid;
    char want[128];
    snprintf(want, sizeof(want), "insert message at offset 6 has 3 columns but relation %u has 4",
             oid);
    expect_error(d, three_cols, sizeof(three_cols), want);
    /* ... while an unknown relation's tuple is decoded as sent, with rel NULL */
    three_cols[4] ^= 0x80;
    assert_int_equal(decode_copy(d, three_cols, sizeof(three_cols), &m, &err), 0);
    assert_null(m.u.insert.rel);
    assert_int_equal(m.u.insert.newtup.ncols, 3);

    eng_pgo_decoder_destroy(d);
}

/* A Relation message that fails half way leaves the stored definition alone, and one that
 * succeeds replaces it (the old pointer is gone, the new one is found). */
static void test_relation_replace_is_atomic(void **state)
{
    (void)state;
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();
    struct eng_pgo_msg m;
    struct eng_error err;
    const struct rec *r7 = find_relation("engagement_events"); /* 7 attributes */
    assert_int_equal(eng_pgo_decode(d, r7->data, r7->len, &m, &err), 0);
    uint32_t oid = m.u.relation->oid;
    assert_int_equal(m.u.relation->natts, 7);

    /* the 8-attribute definition recorded after ALTER TABLE */
    const struct rec *r8 = NULL;
    for (size_t i = 0; i < text_rec.n; i++) {
        if (text_rec.msgs[i].data[0] == 'R' && text_rec.msgs[i].len > r7->len)
            r8 = &text_rec.msgs[i];
    }
    assert_non_null(r8);

    /* ... with a garbage byte at the end: rejected only after every field was parsed */
    uint8_t *bad = malloc(r8->len + 1);
    memcpy(bad, r8->data, r8->len);
    bad[r8->len] = 0;
    assert_int_equal(eng_pgo_decode(d, bad, r8->len + 1, &m, &err), ENG_EPROTO);
    char want[96];
    snprintf(want, sizeof(want), "trailing bytes in relation message at offset %zu", r8->len);
    assert_string_equal(err.msg, want);
    free(bad);
    const struct eng_pgo_relation *rel = eng_pgo_relation_find(d, oid);
    assert_non_null(rel);
    assert_int_equal(rel->natts, 7);
    assert_string_equal(rel->attrs[6].name, "device");

    assert_int_equal(eng_pgo_decode(d, r8->data, r8->len, &m, &err), 0);
    assert_ptr_equal(m.u.relation, eng_pgo_relation_find(d, oid));
    assert_int_equal(m.u.relation->natts, 8);
    assert_string_equal(m.u.relation->attrs[7].name, "country");
    assert_null(eng_pgo_relation_find(d, oid + 1));

    eng_pgo_decoder_destroy(NULL);
    eng_pgo_decoder_destroy(d);
}

/* Many relations arriving in scrambled oid order, some re-sent: each is found by its oid
 * with its latest definition, and absent oids are not. */
static void test_relation_map_many(void **state)
{
    (void)state;
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();
    struct eng_pgo_msg m;
    struct eng_error err;
    enum { N = 3000 };
    static char ident[N]; /* the replica identity last sent for oid 16384 + 2k */
    /* relation "r<oid>" with no attributes; replica identity 'n' the second time */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < N; i++) {
            uint32_t oid = 16384 + 2 * ((i * 7919) % N); /* even oids, scrambled order */
            char name[16];
            int n = snprintf(name, sizeof(name), "r%u", oid);
            uint8_t msg[32] = {'R',
                               (uint8_t)(oid >> 24),
                               (uint8_t)(oid >> 16),
                               (uint8_t)(oid >> 8),
                               (uint8_t)oid,
                               'p',
                               0};
            memcpy(msg + 7, name, (size_t)n + 1);
            size_t len = 7 + (size_t)n + 1;
            msg[len++] = pass == 0 ? 'd' : 'n';
            msg[len++] = 0;
            msg[len++] = 0;
            if (pass == 1 && i % 2 == 0)
                continue;
            assert_int_equal(decode_copy(d, msg, len, &m, &err), 0);
            assert_int_equal(m.u.relation->oid, oid);
            ident[(oid - 16384) / 2] = (char)msg[len - 3];
        }
    }
    for (uint32_t k = 0; k < N; k++) {
        uint32_t oid = 16384 + 2 * k;
        const struct eng_pgo_relation *rel = eng_pgo_relation_find(d, oid);
        assert_non_null(rel);
        assert_int_equal(rel->oid, oid);
        char name[16];
        snprintf(name, sizeof(name), "r%u", oid);
        assert_string_equal(rel->relname, name);
        assert_string_equal(rel->nspname, "p");
        assert_int_equal(rel->replident, ident[k]);
        assert_null(eng_pgo_relation_find(d, oid + 1));
    }
    assert_null(eng_pgo_relation_find(d, 0));
    assert_null(eng_pgo_relation_find(d, UINT32_MAX));
    eng_pgo_decoder_destroy(d);
}

/* ---- corrupted input ------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64*: deterministic, so a failure reproduces */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static size_t rng_below(size_t n)
{
    return (size_t)(rng() % n);
}

static void check_tuple_bounds(const struct eng_pgo_tuple *t, const uint8_t *p, size_t len,
                               const struct eng_pgo_relation *rel)
{
    assert_true(t->ncols <= 1664);
    if (rel != NULL && t->ncols > 0)
        assert_int_equal(t->ncols, rel->natts);
    for (uint16_t i = 0; i < t->ncols; i++) {
        const struct eng_pgo_column *c = &t->cols[i];
        if (c->kind == ENG_PGO_TEXT || c->kind == ENG_PGO_BINARY) {
            assert_true((const uint8_t *)c->data >= p);
            assert_true(c->len <= len);
            assert_true((const uint8_t *)c->data + c->len <= p + len);
        } else {
            assert_true(c->kind == ENG_PGO_NULL || c->kind == ENG_PGO_UNCHANGED);
        }
    }
}

/* Decodes corrupted input: it must fail with ENG_EPROTO or succeed with a result that
 * stays inside the input. */
static int fuzz_one(struct eng_pgo_decoder *d, const uint8_t *src, size_t len)
{
    uint8_t *p = malloc(len ? len : 1);
    if (len)
        memcpy(p, src, len);
    struct eng_pgo_msg m;
    struct eng_error err;
    int rc = eng_pgo_decode(d, p, len, &m, &err);
    if (rc != 0 && rc != ENG_EPROTO)
        fail_msg("decode returned %d: %s", rc, err.msg);
    if (rc == 0) {
        assert_int_equal(m.kind, p[0]);
        switch (m.kind) {
        case ENG_PGO_INSERT:
            check_tuple_bounds(&m.u.insert.newtup, p, len, m.u.insert.rel);
            break;
        case ENG_PGO_UPDATE:
            check_tuple_bounds(&m.u.update.oldtup, p, len, m.u.update.rel);
            check_tuple_bounds(&m.u.update.newtup, p, len, m.u.update.rel);
            break;
        case ENG_PGO_DELETE:
            check_tuple_bounds(&m.u.del.oldtup, p, len, m.u.del.rel);
            break;
        case ENG_PGO_RELATION:
            assert_ptr_equal(m.u.relation, eng_pgo_relation_find(d, m.u.relation->oid));
            for (uint16_t i = 0; i < m.u.relation->natts; i++)
                assert_non_null(m.u.relation->attrs[i].name);
            break;
        case ENG_PGO_TRUNCATE:
            assert_true((size_t)m.u.truncate.nrelids * 4 <= len);
            break;
        case ENG_PGO_MESSAGE:
            assert_true((const uint8_t *)m.u.message.content + m.u.message.len <= p + len);
            break;
        default:
            break;
        }
    }
    free(p);
    return rc;
}

static void test_random_garbage(void **state)
{
    (void)state;
    static const char kinds[] = "BCORYIUDTM";
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();
    uint8_t buf[96];
    int ok = 0;
    rng_state = UINT64_C(0x9E3779B97F4A7C15);
    for (int iter = 0; iter < 50000; iter++) {
        size_t len = rng_below(sizeof(buf) + 1);
        for (size_t i = 0; i < len; i++) {
            /* small values make plausible counts, lengths and column kinds */
            uint64_t x = rng();
            buf[i] = (x & 3) == 0   ? (uint8_t) "ntub\0NKO"[(x >> 2) & 7]
                     : (x & 3) == 1 ? 0
                                    : (uint8_t)(x >> 8);
        }
        if (len > 0 && iter % 4 != 0)
            buf[0] = (uint8_t)kinds[rng_below(sizeof(kinds) - 1)];
        if (fuzz_one(d, buf, len) == 0)
            ok++;
    }
    /* mostly garbage is rejected, but some short Begin/Type/Origin-like input decodes */
    assert_true(ok > 0);
    assert_true(ok < 50000);
    eng_pgo_decoder_destroy(d);
}

/* Flips bits in, overwrites bytes of and cuts recorded messages. One decoder throughout,
 * so flipped Relation messages keep changing the map under the other messages. */
static void test_bit_flips(void **state)
{
    (void)state;
    const struct recording *recs[] = {&text_rec, &binary_rec};
    struct eng_pgo_decoder *d = eng_pgo_decoder_create();
    rng_state = UINT64_C(0xD1B54A32D192ED03);
    int iters = 0, rejected = 0;
    for (int pass = 0; pass < 150; pass++) {
        for (size_t ri = 0; ri < 2; ri++) {
            for (size_t i = 0; i < recs[ri]->n; i++) {
                const struct rec *r = &recs[ri]->msgs[i];
                /* keep the stream's relations in the map most of the time */
                if (r->data[0] == 'R' && (int)rng_below(2) == 0)
                    assert_int_equal(fuzz_one(d, r->data, r->len), 0);
                uint8_t *p = malloc(r->len);
                memcpy(p, r->data, r->len);
                size_t len = r->len;
                int nflips = 1 + (int)rng_below(4);
                for (int f = 0; f < nflips; f++) {
                    size_t at = rng_below(len);
                    if (rng_below(3) == 0)
                        p[at] = (uint8_t)rng();
                    else
                        p[at] ^= (uint8_t)(1u << rng_below(8));
                }
                if (rng_below(8) == 0)
                    len = rng_below(len + 1);
                if (fuzz_one(d, p, len) != 0)
                    rejected++;
                iters++;
                free(p);
            }
        }
    }
    assert_true(iters > 10000);
    assert_true(rejected > 0);
    eng_pgo_decoder_destroy(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recorded_text_stream),
        cmocka_unit_test(test_recorded_binary_stream),
        cmocka_unit_test(test_prefixes_fail),
        cmocka_unit_test(test_error_messages),
        cmocka_unit_test(test_relation_replace_is_atomic),
        cmocka_unit_test(test_relation_map_many),
        cmocka_unit_test(test_random_garbage),
        cmocka_unit_test(test_bit_flips),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
