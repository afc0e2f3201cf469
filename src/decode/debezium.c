/* engage: decoder of Debezium PostgreSQL connector JSON messages. See debezium.h for the
 * ownership rules and what is accepted.
 *
 * The value is checked before jansson sees it (size cap, nesting depth: jansson recurses up
 * to 2048 levels, which overflows a small thread stack), parsed once, and read through
 * lookups that name the field and what was found in every error. Texts are copied into the
 * decoder's scratch before the parse tree is freed, so nothing of jansson's outlives a call. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../core/pgtext.h"
#include "debezium.h"

/* Microseconds of 0001-01-01 00:00:00 and of 9999-12-31 23:59:59.999999 (UTC): the years
 * eng_parse_timestamp accepts. */
#define TS_MIN_US (INT64_C(-62135596800000000))
#define TS_MAX_US (INT64_C(253402300800000000) - 1)

/* Scratch kept between calls; a larger one (after a big row) is given back. */
#define SCRATCH_KEEP ((size_t)64 << 10)

/* The schema parts seen last. The JSON converter writes the same schema part before every
 * payload of a topic, byte for byte, and parsing it is five sixths of the work: a value that
 * starts with `{"schema":` and a schema part seen before is parsed from its payload on. */
#define SCHEMA_CACHE     4
#define SCHEMA_CACHE_MAX ((size_t)64 << 10) /* bytes of one cached schema part */

struct schema_entry {
    char *text; /* the schema part as written, NULL for a free entry */
    size_t len;
    json_t *tree; /* its parse */
    uint64_t used;
};

struct eng_dbz_decoder {
    char num[ENG_COL__COUNT][24]; /* integer columns in decimal */
    char ts[32];                  /* event_ts as "YYYY-MM-DD HH:MM:SS.ffffff" */
    char table[128];              /* a table name taken from the schema name */
    char empty[1];                /* content_type of a NULL content type */
    char *text;                   /* copies of the row's strings */
    size_t text_cap;
    struct schema_entry schemas[SCHEMA_CACHE];
    uint64_t tick;
};

enum ts_unit { TS_US, TS_NS, TS_MS, TS_BAD };

/* What one decode is working on. */
struct dec {
    struct eng_dbz_decoder *d;
    json_t *schema;      /* the envelope's schema object, or NULL */
    json_t *payload;     /* the envelope's payload object */
    const char *rowname; /* "after" or "before" */
    char op;
    struct eng_dbz_msg *out;
    struct eng_error *err;
};

struct eng_dbz_decoder *eng_dbz_decoder_create(void)
{
    return eng_calloc(1, sizeof(struct eng_dbz_decoder));
}

void eng_dbz_decoder_destroy(struct eng_dbz_decoder *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < SCHEMA_CACHE; i++) {
        free(d->schemas[i].text);
        json_decref(d->schemas[i].tree);
    }
    free(d->text);
    free(d);
}

/* ---- describing what was found, for error messages ------------------------------------- */

struct what {
    char s[96];
};

/* At most cap-1 bytes of s, cut on a UTF-8 character boundary, control characters, quotes
 * and backslashes as '?': an error message stays one line of valid UTF-8 (the DLQ stores it
 * in a text column). */
static void snippet(const char *s, size_t n, char *out, size_t cap)
{
    size_t k = n < cap - 1 ? n : cap - 1;
    if (k < n)
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = c < 0x20 || c == 0x7F || c == '"' || c == '\\' ? '?' : (char)c;
    }
    out[k] = '\0';
}

static const char *describe(const json_t *v, struct what *w)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING: {
        char shown[41];
        size_t n = json_string_length(v);
        snippet(json_string_value(v), n, shown, sizeof(shown));
        snprintf(w->s, sizeof(w->s), "the string \"%s%s\"", shown, n >= sizeof(shown) ? "..." : "");
        return w->s;
    }
    case JSON_INTEGER:
        snprintf(w->s, sizeof(w->s), "the integer %" JSON_INTEGER_FORMAT, json_integer_value(v));
        return w->s;
    case JSON_REAL:
        snprintf(w->s, sizeof(w->s), "the real number %.17g", json_real_value(v));
        return w->s;
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    default:
        return "null";
    }
}

static int bad(struct dec *x, int code, const char *fmt, ...) ENG_PRINTF(3, 4);

static int bad(struct dec *x, int code, const char *fmt, ...)
{
    char msg[sizeof(x->err->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return eng_error_set(x->err, code, false, "debezium message: %s", msg);
}

/* ---- checks before parsing ------------------------------------------------------------- */

/* False when arrays and objects nest deeper than max (brackets inside strings do not count;
 * malformed JSON is left to jansson). */
static bool depth_ok(const unsigned char *p, size_t n, unsigned max)
{
    unsigned depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                return false;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return true;
}

/* ---- the source block ------------------------------------------------------------------ */

/* An optional integer member of obj: absent or null leaves *v; else it must be an integer
 * in [min, max]. */
static int opt_int(struct dec *x, const json_t *obj, const char *key, json_int_t min,
                   json_int_t max, json_int_t *v)
{
    const json_t *j = json_object_get(obj, key);
    if (j == NULL || json_is_null(j))
        return 0;
    struct what w;
    if (!json_is_integer(j) || json_integer_value(j) < min || json_integer_value(j) > max)
        return bad(x, ENG_EPROTO,
                   "source.%s is %s, not an integer in [%" JSON_INTEGER_FORMAT
                   ", %" JSON_INTEGER_FORMAT "]",
                   key, describe(j, &w), min, max);
    *v = json_integer_value(j);
    return 0;
}

static int read_snapshot(struct dec *x, const json_t *src)
{
    const json_t *j = json_object_get(src, "snapshot");
    struct what w;
    if (j == NULL || json_is_null(j))
        return 0;
    if (json_is_boolean(j)) /* Debezium before 1.x wrote a boolean */
        x->out->snapshot = json_is_true(j);
    else if (json_is_string(j))
        x->out->snapshot = strcmp(json_string_value(j), "false") != 0;
    else
        return bad(x, ENG_EPROTO, "source.snapshot is %s, not a string", describe(j, &w));
    return 0;
}

/* Reads lsn, txId, the commit time and snapshot; *table is source.table or NULL. */
static int read_source(struct dec *x, const char **table)
{
    const json_t *src = json_object_get(x->payload, "source");
    struct what w;
    *table = NULL;
    if (src == NULL || json_is_null(src))
        return 0;
    if (!json_is_object(src))
        return bad(x, ENG_EPROTO, "\"source\" is %s, not an object", describe(src, &w));
    json_int_t lsn = 0, txid = -1, ts_us = 0, ts_ms = 0;
    int rc = opt_int(x, src, "lsn", 0, INT64_MAX, &lsn);
    if (rc == 0)
        rc = opt_int(x, src, "txId", 0, INT64_MAX, &txid);
    if (rc == 0)
        rc = opt_int(x, src, "ts_us", INT64_MIN, INT64_MAX, &ts_us);
    if (rc == 0 && ts_us == 0) /* Debezium before 2.x wrote ts_ms only */
        rc = opt_int(x, src, "ts_ms", INT64_MIN / 1000, INT64_MAX / 1000, &ts_ms);
    if (rc == 0)
        rc = read_snapshot(x, src);
    if (rc != 0)
        return rc;
    x->out->lsn = (uint64_t)lsn;
    x->out->tx_id = txid;
    x->out->commit_time_us = ts_us != 0 ? ts_us : ts_ms * 1000;
    const json_t *t = json_object_get(src, "table");
    if (t != NULL && !json_is_null(t) && !json_is_string(t))
        return bad(x, ENG_EPROTO, "source.table is %s, not a string", describe(t, &w));
    *table = json_string_value(t);
    return 0;
}

static const char *schema_name(const json_t *schema)
{
    return json_string_value(json_object_get(schema, "name"));
}

/* The table named by the envelope schema's name "<prefix>.<schema>.<table>.Envelope". */
static const char *table_from_schema(struct dec *x)
{
    static const char suffix[] = ".Envelope";
    const char *name = schema_name(x->schema);
    size_t n = name != NULL ? strlen(name) : 0;
    if (n <= sizeof(suffix) - 1 || strcmp(name + n - (sizeof(suffix) - 1), suffix) != 0)
        return NULL;
    n -= sizeof(suffix) - 1;
    size_t start = n;
    while (start > 0 && name[start - 1] != '.')
        start--;
    if (start == n || n - start >= sizeof(x->d->table))
        return NULL;
    memcpy(x->d->table, name + start, n - start);
    x->d->table[n - start] = '\0';
    return x->d->table;
}

/* ---- column values ---------------------------------------------------------------------- */

static struct eng_text text_of(const char *s, size_t n)
{
    return (struct eng_text){.data = s, .len = (uint32_t)n, .null = false};
}

static int get_int(struct dec *x, const json_t *v, const char *col, int64_t min, int64_t max,
                   int64_t *out)
{
    struct what w;
    if (!json_is_integer(v))
        return bad(x, ENG_EINVAL, "%s.%s is %s, not an integer", x->rowname, col, describe(v, &w));
    json_int_t i = json_integer_value(v);
    if (i < min || i > max)
        return bad(x, ENG_EINVAL, "%s.%s is %" JSON_INTEGER_FORMAT ", outside %s", x->rowname, col,
                   i, max == INT32_MAX ? "the int32 range" : "the int64 range");
    *out = i;
    return 0;
}

static int put_int(struct dec *x, enum eng_event_col c, const json_t *v, int64_t min, int64_t max)
{
    int64_t i = 0;
    int rc = get_int(x, v, eng_event_col_names[c], min, max, &i);
    if (rc != 0)
        return rc;
    int n = snprintf(x->d->num[c], sizeof(x->d->num[c]), "%" PRId64, i);
    x->out->cols[c] = text_of(x->d->num[c], (size_t)n);
    return 0;
}

/* A string column; its text stays in the parse tree until own_texts copies it. */
static int get_text(struct dec *x, const json_t *v, const char *col, struct eng_text *t)
{
    struct what w;
    if (!json_is_string(v))
        return bad(x, ENG_EINVAL, "%s.%s is %s, not a string", x->rowname, col, describe(v, &w));
    size_t n = json_string_length(v);
    if (n > ENG_EVENT_MAX_TEXT)
        return bad(x, ENG_EINVAL, "%s.%s is %zu bytes, over the %zu-byte cap", x->rowname, col, n,
                   ENG_EVENT_MAX_TEXT);
    *t = text_of(json_string_value(v), n);
    return 0;
}

/* The unit of an integer event_ts, from the row's field schema when there is one. */
static enum ts_unit ts_unit(struct dec *x, const char **name)
{
    *name = NULL;
    const json_t *fields = json_object_get(x->schema, "fields");
    for (size_t i = 0; i < json_array_size(fields); i++) {
        const json_t *f = json_array_get(fields, i);
        const char *fname = json_string_value(json_object_get(f, "field"));
        if (fname == NULL || strcmp(fname, x->rowname) != 0)
            continue;
        const json_t *cols = json_object_get(f, "fields");
        for (size_t k = 0; k < json_array_size(cols); k++) {
            const json_t *c = json_array_get(cols, k);
            const char *cname = json_string_value(json_object_get(c, "field"));
            if (cname == NULL || strcmp(cname, "event_ts") != 0)
                continue;
            *name = schema_name(c);
            if (*name == NULL)
                return TS_BAD;
            if (strcmp(*name, "io.debezium.time.MicroTimestamp") == 0)
                return TS_US;
            if (strcmp(*name, "io.debezium.time.NanoTimestamp") == 0)
                return TS_NS;
            if (strcmp(*name, "io.debezium.time.Timestamp") == 0 ||
                strcmp(*name, "org.apache.kafka.connect.data.Timestamp") == 0)
                return TS_MS;
            return TS_BAD;
        }
    }
    return TS_US; /* no schema, or it does not describe the column: Debezium's default */
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Writes "YYYY-MM-DD HH:MM:SS[.f]" (fraction without trailing zeros) for us in range. */
static size_t format_ts(int64_t us, char out[32])
{
    eng_format_timestamp(us, out);
    int64_t frac = us - floor_div(us, 1000000) * 1000000;
    size_t n = 19;
    if (frac == 0)
        return n;
    char digits[7];
    snprintf(digits, sizeof(digits), "%06" PRId64, frac);
    size_t nd = 6;
    while (digits[nd - 1] == '0')
        nd--;
    out[n++] = '.';
    memcpy(out + n, digits, nd);
    n += nd;
    out[n] = '\0';
    return n;
}

/* An integer event_ts in its unit, to microseconds; false when out of range. */
static bool ts_to_us(json_int_t v, enum ts_unit unit, int64_t *us)
{
    if (unit == TS_NS)
        *us = floor_div(v, 1000);
    else if (unit == TS_MS && __builtin_mul_overflow(v, 1000, us))
        return false;
    else if (unit == TS_US)
        *us = v;
    return *us >= TS_MIN_US && *us <= TS_MAX_US;
}

/* An ISO-8601 timestamp in UTC ("2026-01-08T14:21:52.123456Z", 'T' or ' ', up to nine
 * fraction digits (floored to microseconds), then nothing, 'Z', "+00" or "+00:00"). */
static bool iso_to_us(const char *s, size_t n, int64_t *us)
{
    char buf[32];
    if (n < 19)
        return false;
    memcpy(buf, s, 19);
    if (buf[10] == 'T')
        buf[10] = ' ';
    size_t p = 19, b = 19;
    if (p < n && s[p] == '.') {
        size_t k = 0;
        while (p + 1 + k < n && s[p + 1 + k] >= '0' && s[p + 1 + k] <= '9')
            k++;
        if (k == 0 || k > 9)
            return false;
        buf[b++] = '.';
        memcpy(buf + b, s + p + 1, k < 6 ? k : 6);
        b += k < 6 ? k : 6;
        p += 1 + k;
    }
    const char *zone = s + p;
    size_t zn = n - p;
    bool utc = zn == 0 || (zn == 1 && zone[0] == 'Z') || (zn == 3 && memcmp(zone, "+00", 3) == 0) ||
               (zn == 6 && memcmp(zone, "+00:00", 6) == 0);
    return utc && eng_parse_timestamp(buf, b, us);
}

static int put_ts(struct dec *x, const json_t *v)
{
    struct what w;
    const char *name;
    int64_t us = 0;
    if (json_is_string(v)) {
        if (!iso_to_us(json_string_value(v), json_string_length(v), &us))
            return bad(x, ENG_EINVAL,
                       "%s.event_ts is %s, not a UTC timestamp YYYY-MM-DDTHH:MM:SS[.ffffff][Z] "
                       "in years 1..9999",
                       x->rowname, describe(v, &w));
    } else if (!json_is_integer(v)) {
        return bad(x, ENG_EINVAL, "%s.event_ts is %s, not an integer or an ISO-8601 string",
                   x->rowname, describe(v, &w));
    } else {
        enum ts_unit unit = ts_unit(x, &name);
        if (unit == TS_BAD)
            return bad(x, ENG_EINVAL,
                       "%s.event_ts is an integer whose schema name is %s%s%s, not a "
                       "Debezium or Kafka Connect timestamp",
                       x->rowname, name ? "\"" : "", name ? name : "missing", name ? "\"" : "");
        if (!ts_to_us(json_integer_value(v), unit, &us))
            return bad(x, ENG_EINVAL, "%s.event_ts %s (%s) is outside years 1..9999", x->rowname,
                       describe(v, &w),
                       unit == TS_NS   ? "nanoseconds"
                       : unit == TS_MS ? "milliseconds"
                                       : "microseconds");
    }
    size_t n = format_ts(us, x->d->ts);
    x->out->cols[ENG_COL_EVENT_TS] = text_of(x->d->ts, n);
    return 0;
}

/* ---- rows ------------------------------------------------------------------------------ */

/* The row object of the op: "after" for c/r/u, "before" for d. */
static int get_row(struct dec *x, const json_t **row)
{
    struct what w;
    x->rowname = x->op == 'd' ? "before" : "after";
    *row = json_object_get(x->payload, x->rowname);
    if (*row == NULL)
        return bad(x, ENG_EPROTO, "op \"%c\" has no \"%s\"", x->op, x->rowname);
    if (!json_is_object(*row))
        return bad(x, ENG_EPROTO, "\"%s\" of op \"%c\" is %s, not an object", x->rowname, x->op,
                   describe(*row, &w));
    return 0;
}

/* A column of the row. Returns 1 when it has a value (in *v), 0 when it is NULL, or an
 * error: a required column must be there and not null; for c/r/u every column must be
 * there (Debezium writes NULLs as null), for d (whose "before" may hold only the key)
 * missing ones are NULL. */
static int column(struct dec *x, const json_t *row, const char *col, bool required,
                  const json_t **v)
{
    *v = json_object_get(row, col);
    if (*v == NULL && (required || x->op != 'd'))
        return bad(x, ENG_EINVAL, "%s has no column \"%s\"", x->rowname, col);
    if (*v == NULL || json_is_null(*v)) {
        if (required)
            return bad(x, ENG_EINVAL, "%s.%s is null", x->rowname, col);
        return 0;
    }
    return 1;
}

/* event_id always; event_ts and content_id only for what becomes an event (c, r): an
 * update or delete is skipped whatever its values, so it is never parked for them. */
static bool event_col_required(struct dec *x, enum eng_event_col c)
{
    if (c == ENG_COL_EVENT_ID)
        return true;
    return (x->op == 'c' || x->op == 'r') && (c == ENG_COL_EVENT_TS || c == ENG_COL_CONTENT_ID);
}

static int event_col(struct dec *x, const json_t *row, enum eng_event_col c)
{
    const char *name = eng_event_col_names[c];
    const json_t *v;
    int rc = column(x, row, name, event_col_required(x, c), &v);
    if (rc <= 0)
        return rc;
    switch (c) {
    case ENG_COL_EVENT_ID:
        return put_int(x, c, v, INT64_MIN, INT64_MAX);
    case ENG_COL_EVENT_TS:
        return put_ts(x, v);
    case ENG_COL_EVENT_TYPE:
    case ENG_COL_DEVICE:
        return get_text(x, v, name, &x->out->cols[c]);
    default:
        return put_int(x, c, v, INT32_MIN, INT32_MAX);
    }
}

static int decode_event(struct dec *x)
{
    const json_t *row;
    x->out->kind = ENG_DBZ_EVENT;
    x->out->op = x->op;
    if (x->op == 't')
        return 0;
    int rc = get_row(x, &row);
    for (int c = 0; rc == 0 && c < ENG_COL__COUNT; c++)
        rc = event_col(x, row, (enum eng_event_col)c);
    return rc;
}

static int decode_content(struct dec *x)
{
    struct eng_content *ct = &x->out->content;
    const json_t *row, *v;
    int64_t i = 0;
    x->out->kind = ENG_DBZ_CONTENT;
    x->out->op = x->op;
    if (x->op == 't')
        return 0;
    int rc = get_row(x, &row);
    if (rc == 0 && (rc = column(x, row, "content_id", true, &v)) > 0)
        rc = get_int(x, v, "content_id", INT32_MIN, INT32_MAX, &i);
    if (rc != 0)
        return rc;
    ct->content_id = (int32_t)i;
    if (x->op == 'd')
        return 0;
    struct eng_text type = {.null = true};
    rc = column(x, row, "content_type", false, &v);
    if (rc > 0)
        rc = get_text(x, v, "content_type", &type);
    if (rc < 0)
        return rc;
    ct->type_null = type.null;
    ct->content_type = (char *)type.data; /* copied by own_texts */
    ct->type_len = type.len;
    rc = column(x, row, "length_seconds", false, &v);
    ct->length_null = rc == 0;
    if (rc > 0 && (rc = get_int(x, v, "length_seconds", INT32_MIN, INT32_MAX, &i)) == 0)
        ct->length_seconds = (int32_t)i;
    return rc < 0 ? rc : 0;
}

/* ---- the envelope ---------------------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = s != NULL ? strlen(s) : 0, k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A payload without "op": a heartbeat, a transaction marker or a schema change. */
static int decode_no_op(struct dec *x)
{
    const char *status = json_string_value(json_object_get(x->payload, "status"));
    x->out->kind = ENG_DBZ_IGNORED;
    if (ends_with(schema_name(x->schema), ".Heartbeat") ||
        (json_object_size(x->payload) == 1 && json_object_get(x->payload, "ts_ms") != NULL))
        x->out->reason = "heartbeat";
    else if (status != NULL && (strcmp(status, "BEGIN") == 0 || strcmp(status, "END") == 0))
        x->out->reason = "transaction marker";
    else if (json_object_get(x->payload, "ddl") != NULL ||
             json_object_get(x->payload, "tableChanges") != NULL)
        x->out->reason = "schema change";
    else
        return bad(x, ENG_EPROTO,
                   "payload has no \"op\" and is no heartbeat, transaction "
                   "marker or schema change");
    return 0;
}

static int decode_payload(struct dec *x)
{
    struct what w;
    const json_t *op = json_object_get(x->payload, "op");
    if (op == NULL)
        return decode_no_op(x);
    const char *s = json_string_value(op);
    if (s == NULL)
        return bad(x, ENG_EPROTO, "\"op\" is %s, not a string", describe(op, &w));
    if (json_string_length(op) != 1 || strchr("crudtm", s[0]) == NULL)
        return bad(x, ENG_EPROTO, "\"op\" is %s, not one of c, r, u, d, t, m", describe(op, &w));
    x->op = s[0];
    const char *table;
    int rc = read_source(x, &table);
    if (rc != 0)
        return rc;
    x->out->kind = ENG_DBZ_IGNORED;
    if (x->op == 'm') {
        x->out->reason = "logical decoding message (op m)";
        return 0;
    }
    if (table == NULL)
        table = table_from_schema(x);
    if (table == NULL)
        return bad(x, ENG_EPROTO,
                   "no source.table and no envelope schema name: the table "
                   "is unknown");
    if (strcmp(table, "engagement_events") == 0)
        return decode_event(x);
    if (strcmp(table, "content") == 0)
        return decode_content(x);
    x->out->reason = "a table other than engagement_events and content";
    return 0;
}

/* {"schema":schema,"payload":payload}; schema may be NULL (absent). */
static int decode_envelope(struct dec *x, json_t *schema, json_t *payload)
{
    struct what w;
    if (payload == NULL)
        return bad(x, ENG_EPROTO, "\"schema\" without \"payload\"");
    if (!json_is_object(payload))
        return bad(x, ENG_EPROTO, "\"payload\" is %s, not an object", describe(payload, &w));
    if (schema != NULL && !json_is_object(schema) && !json_is_null(schema))
        return bad(x, ENG_EPROTO, "\"schema\" is %s, not an object", describe(schema, &w));
    x->payload = payload;
    x->schema = json_is_object(schema) ? schema : NULL;
    return decode_payload(x);
}

static int decode_root(struct dec *x, json_t *root)
{
    struct what w;
    if (!json_is_object(root))
        return bad(x, ENG_EPROTO, "value is %s, not a JSON object", describe(root, &w));
    json_t *schema = json_object_get(root, "schema");
    json_t *payload = json_object_get(root, "payload");
    if (schema != NULL || payload != NULL)
        return decode_envelope(x, schema, payload);
    x->payload = root; /* a bare payload (schemas.enable=false) */
    return decode_payload(x);
}

/* ---- the schema cache ------------------------------------------------------------------ */

static const char SCHEMA_HEAD[] = "{\"schema\":";
static const char PAYLOAD_HEAD[] = ",\"payload\":";
#define SCHEMA_HEAD_LEN  (sizeof(SCHEMA_HEAD) - 1)
#define PAYLOAD_HEAD_LEN (sizeof(PAYLOAD_HEAD) - 1)

/* The length of the object at p (valid JSON: the parse succeeded), or 0. */
static size_t object_len(const char *p, size_t n)
{
    unsigned depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if ((c == ']' || c == '}') && --depth == 0) {
            return i + 1;
        }
    }
    return 0;
}

/* After a full parse of value: remembers its schema part when it is written as the JSON
 * converter writes it, `{"schema":{...},"payload":`, replacing the least recently used. */
static void cache_schema(struct eng_dbz_decoder *d, const char *value, size_t len, json_t *root)
{
    json_t *schema = json_object_get(root, "schema");
    if (!json_is_object(schema) || len < SCHEMA_HEAD_LEN ||
        memcmp(value, SCHEMA_HEAD, SCHEMA_HEAD_LEN) != 0)
        return;
    const char *s = value + SCHEMA_HEAD_LEN;
    size_t n = object_len(s, len - SCHEMA_HEAD_LEN);
    if (n == 0 || n > SCHEMA_CACHE_MAX || len - SCHEMA_HEAD_LEN - n < PAYLOAD_HEAD_LEN ||
        memcmp(s + n, PAYLOAD_HEAD, PAYLOAD_HEAD_LEN) != 0)
        return;
    struct schema_entry *e = &d->schemas[0];
    for (size_t i = 1; i < SCHEMA_CACHE; i++)
        if (d->schemas[i].used < e->used)
            e = &d->schemas[i];
    free(e->text);
    json_decref(e->tree);
    e->text = eng_malloc(n);
    memcpy(e->text, s, n);
    e->len = n;
    e->tree = json_incref(schema);
    e->used = ++d->tick;
}

/* The payload of value parsed alone when its schema part is in the cache (*schema set to
 * it), else NULL: then the whole value is parsed. Any failure here falls back to the full
 * parse, so both paths accept and refuse the same values with the same messages. */
static json_t *parse_cached(struct eng_dbz_decoder *d, const char *value, size_t len,
                            json_t **schema)
{
    if (len < SCHEMA_HEAD_LEN || memcmp(value, SCHEMA_HEAD, SCHEMA_HEAD_LEN) != 0 ||
        value[len - 1] != '}')
        return NULL;
    const char *s = value + SCHEMA_HEAD_LEN;
    size_t room = len - SCHEMA_HEAD_LEN - 1;
    for (size_t i = 0; i < SCHEMA_CACHE; i++) {
        struct schema_entry *e = &d->schemas[i];
        if (e->text == NULL || e->len + PAYLOAD_HEAD_LEN > room ||
            memcmp(s, e->text, e->len) != 0 ||
            memcmp(s + e->len, PAYLOAD_HEAD, PAYLOAD_HEAD_LEN) != 0)
            continue;
        const char *p = s + e->len + PAYLOAD_HEAD_LEN;
        size_t pn = room - e->len - PAYLOAD_HEAD_LEN;
        /* the cached part was within the depth limit at its place: the payload adds to 1 */
        if (!depth_ok((const unsigned char *)p, pn, ENG_DBZ_MAX_DEPTH - 1))
            return NULL;
        json_error_t jerr;
        json_t *payload = json_loadb(p, pn, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (payload != NULL) {
            e->used = ++d->tick;
            *schema = e->tree;
        }
        return payload;
    }
    return NULL;
}

/* Copies the row's strings out of the parse tree into the scratch. */
static void own_texts(struct eng_dbz_decoder *d, struct eng_dbz_msg *out)
{
    static const enum eng_event_col text_cols[] = {ENG_COL_EVENT_TYPE, ENG_COL_DEVICE};
    size_t need = out->content.type_len + 1;
    for (size_t i = 0; i < 2; i++)
        need += out->cols[text_cols[i]].len + 1;
    if (need > d->text_cap || (d->text_cap > SCRATCH_KEEP && need <= SCRATCH_KEEP)) {
        size_t cap = need > SCRATCH_KEEP ? need : SCRATCH_KEEP;
        free(d->text);
        d->text = eng_malloc(cap);
        d->text_cap = cap;
    }
    char *p = d->text;
    for (size_t i = 0; i < 2; i++) {
        struct eng_text *t = &out->cols[text_cols[i]];
        if (t->null)
            continue;
        memcpy(p, t->data, t->len);
        p[t->len] = '\0';
        t->data = p;
        p += t->len + 1;
    }
    if (out->kind != ENG_DBZ_CONTENT || out->content.type_null) {
        out->content.content_type = d->empty;
        return;
    }
    memcpy(p, out->content.content_type, out->content.type_len);
    p[out->content.type_len] = '\0';
    out->content.content_type = p;
}

static void reset_row(struct eng_dbz_decoder *d, struct eng_dbz_msg *out)
{
    out->kind = ENG_DBZ_IGNORED;
    out->op = 0;
    out->reason = NULL;
    for (int c = 0; c < ENG_COL__COUNT; c++)
        out->cols[c] = (struct eng_text){.data = NULL, .len = 0, .null = true};
    memset(&out->content, 0, sizeof(out->content));
    d->empty[0] = '\0';
    out->content.content_type = d->empty;
    out->content.type_null = true;
    out->content.length_null = true;
}

/* Ends a decode whose parse is tree: the texts copied out, the tree freed. */
static int finish(struct dec *x, int rc, json_t *tree)
{
    if (rc == 0)
        own_texts(x->d, x->out);
    json_decref(tree);
    if (rc != 0)
        reset_row(x->d, x->out);
    return rc;
}

int eng_dbz_decode(struct eng_dbz_decoder *d, const void *value, size_t len,
                   struct eng_dbz_msg *out, struct eng_error *err)
{
    struct dec x = {.d = d, .out = out, .err = err};
    reset_row(d, out);
    out->lsn = 0;
    out->tx_id = -1;
    out->commit_time_us = 0;
    out->snapshot = false;
    if (value == NULL) {
        out->kind = ENG_DBZ_TOMBSTONE;
        return 0;
    }
    if (len == 0)
        return bad(&x, ENG_EPROTO, "empty value (a tombstone is a null value)");
    if (len > ENG_DBZ_MAX_VALUE)
        return bad(&x, ENG_EPROTO, "value of %zu bytes is over the %zu-byte cap", len,
                   ENG_DBZ_MAX_VALUE);
    json_t *schema = NULL;
    json_t *payload = parse_cached(d, value, len, &schema);
    if (payload != NULL)
        return finish(&x, decode_envelope(&x, schema, payload), payload);
    if (!depth_ok(value, len, ENG_DBZ_MAX_DEPTH))
        return bad(&x, ENG_EPROTO, "value nests arrays and objects more than %d deep",
                   ENG_DBZ_MAX_DEPTH);
    json_error_t jerr;
    json_t *root = json_loadb(value, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        /* jansson quotes the token it stopped at, which may be any bytes: ASCII only */
        for (char *p = jerr.text; *p != '\0'; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7F)
                *p = '?';
        return bad(&x, ENG_EPROTO, "value is not JSON engage reads: %s (byte %d)", jerr.text,
                   jerr.position);
    }
    cache_schema(d, value, len, root);
    return finish(&x, decode_root(&x, root), root);
}
