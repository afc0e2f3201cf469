#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/pgtext.h"
#include "debezium_out.h"

#define DBZ_VERSION     "3.6.1.Final"
#define DBZ_UNAVAILABLE "__debezium_unavailable_value"

/* The JSON of the io.debezium.connector.postgresql.Source schema, as the JSON converter writes
 * it (the field order is the payload's order). */
static const char source_schema[] =
    "{\"type\":\"struct\",\"fields\":["
    "{\"type\":\"string\",\"optional\":false,\"field\":\"version\"},"
    "{\"type\":\"string\",\"optional\":false,\"field\":\"connector\"},"
    "{\"type\":\"string\",\"optional\":false,\"field\":\"name\"},"
    "{\"type\":\"int64\",\"optional\":false,\"field\":\"ts_ms\"},"
    "{\"type\":\"string\",\"optional\":true,\"name\":\"io.debezium.data.Enum\",\"version\":1,"
    "\"parameters\":{\"allowed\":\"true,first,first_in_data_collection,last_in_data_collection,"
    "last,false,incremental\"},\"default\":\"false\",\"field\":\"snapshot\"},"
    "{\"type\":\"string\",\"optional\":false,\"field\":\"db\"},"
    "{\"type\":\"string\",\"optional\":true,\"field\":\"sequence\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"ts_us\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"ts_ns\"},"
    "{\"type\":\"string\",\"optional\":false,\"field\":\"schema\"},"
    "{\"type\":\"string\",\"optional\":false,\"field\":\"table\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"txId\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"lsn\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"xmin\"},"
    "{\"type\":\"string\",\"optional\":true,\"field\":\"origin\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"origin_lsn\"}],"
    "\"optional\":false,\"name\":\"io.debezium.connector.postgresql.Source\",\"version\":1,"
    "\"field\":\"source\"}";

/* The envelope's fields after source. */
static const char envelope_tail_schema[] =
    "{\"type\":\"struct\",\"fields\":["
    "{\"type\":\"string\",\"optional\":false,\"field\":\"id\"},"
    "{\"type\":\"int64\",\"optional\":false,\"field\":\"total_order\"},"
    "{\"type\":\"int64\",\"optional\":false,\"field\":\"data_collection_order\"}],"
    "\"optional\":true,\"name\":\"event.block\",\"version\":1,\"field\":\"transaction\"},"
    "{\"type\":\"string\",\"optional\":false,\"field\":\"op\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"ts_ms\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"ts_us\"},"
    "{\"type\":\"int64\",\"optional\":true,\"field\":\"ts_ns\"}";

enum vkind {
    V_INT16,
    V_INT32,
    V_INT64,
    V_BOOL,
    V_FLOAT32,
    V_FLOAT64,
    V_STRING,
    V_TS_MICRO, /* timestamp(4..6) and timestamp: io.debezium.time.MicroTimestamp */
    V_TS_MILLI, /* timestamp(0..3): io.debezium.time.Timestamp */
    V_DATE,
    V_TSTZ,
    V_TIME_MICRO, /* time and time(4..6): io.debezium.time.MicroTime */
    V_TIME_MILLI, /* time(0..3): io.debezium.time.Time */
    V_BYTES,      /* bytea (binary.handling.mode=bytes): base64 */
    V_DECIMAL,    /* numeric(p,s) (decimal.handling.mode=precise): Connect's Decimal */
    V_VARDECIMAL, /* numeric: io.debezium.data.VariableScaleDecimal */
};

/* How Debezium (time.precision.mode=adaptive, the default) maps a PostgreSQL type. */
struct coltype {
    const char *type;
    const char *name; /* the logical type, or NULL */
    enum vkind kind;
};

enum {
    OID_BOOL = 16,
    OID_CHAR = 18,
    OID_NAME = 19,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_TEXT = 25,
    OID_OID = 26,
    OID_JSON = 114,
    OID_XML = 142,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_BPCHAR = 1042,
    OID_VARCHAR = 1043,
    OID_BYTEA = 17,
    OID_DATE = 1082,
    OID_TIME = 1083,
    OID_NUMERIC = 1700,
    OID_TIMESTAMP = 1114,
    OID_TIMESTAMPTZ = 1184,
    OID_UUID = 2950,
    OID_JSONB = 3802,
};

static struct coltype col_type(uint32_t oid, int32_t typmod)
{
    switch (oid) {
    case OID_BOOL:
        return (struct coltype){"boolean", NULL, V_BOOL};
    case OID_INT2:
        return (struct coltype){"int16", NULL, V_INT16};
    case OID_INT4:
        return (struct coltype){"int32", NULL, V_INT32};
    case OID_INT8:
    case OID_OID:
        return (struct coltype){"int64", NULL, V_INT64};
    case OID_FLOAT4:
        return (struct coltype){"float", NULL, V_FLOAT32};
    case OID_FLOAT8:
        return (struct coltype){"double", NULL, V_FLOAT64};
    case OID_DATE:
        return (struct coltype){"int32", "io.debezium.time.Date", V_DATE};
    case OID_TIMESTAMP:
        if (typmod >= 0 && typmod <= 3)
            return (struct coltype){"int64", "io.debezium.time.Timestamp", V_TS_MILLI};
        return (struct coltype){"int64", "io.debezium.time.MicroTimestamp", V_TS_MICRO};
    case OID_TIMESTAMPTZ:
        return (struct coltype){"string", "io.debezium.time.ZonedTimestamp", V_TSTZ};
    case OID_TIME:
        if (typmod >= 0 && typmod <= 3)
            return (struct coltype){"int32", "io.debezium.time.Time", V_TIME_MILLI};
        return (struct coltype){"int64", "io.debezium.time.MicroTime", V_TIME_MICRO};
    case OID_BYTEA:
        return (struct coltype){"bytes", NULL, V_BYTES};
    case OID_NUMERIC:
        if (typmod >= 4)
            return (struct coltype){"bytes", "org.apache.kafka.connect.data.Decimal", V_DECIMAL};
        return (struct coltype){"struct", "io.debezium.data.VariableScaleDecimal", V_VARDECIMAL};
    case OID_UUID:
        return (struct coltype){"string", "io.debezium.data.Uuid", V_STRING};
    case OID_JSON:
    case OID_JSONB:
        return (struct coltype){"string", "io.debezium.data.Json", V_STRING};
    case OID_XML:
        return (struct coltype){"string", "io.debezium.data.Xml", V_STRING};
    default: /* text, varchar, bpchar, name, char; and every type not mapped: its text */
        return (struct coltype){"string", NULL, V_STRING};
    }
}

struct eng_dbz_schema {
    struct eng_buf key_head;   /* {"schema":...,"payload": (empty without schemas) */
    struct eng_buf value_head; /* the same for the value */
    struct eng_buf src_head;   /* "source":{"version":...,"name":"<prefix>","ts_ms": */
    struct eng_buf src_db;     /* ,"db":"<db>","sequence": */
    struct eng_buf src_mid;    /* ,"schema":"<schema>","table":"<table>","txId": */
    char **field;              /* per column: "<name>": */
    char **null_json;          /* per column: what a NULL is written as (see fallback_json) */
    enum vkind *kind;
    int32_t *typmod;
    int *key_cols; /* the key's columns */
    int nkey;
    uint16_t ncols;
    bool schemas;
};

/* ---- JSON strings as Jackson writes them ---------------------------------------------- */

/* Code point of the valid UTF-8 sequence at s (at most n bytes) and its length; 0 when it
 * is not valid UTF-8. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t len;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        *cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        *cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        *cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        *cp = (*cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && *cp < 0x800) || (len == 4 && (*cp < 0x10000 || *cp > 0x10FFFF)) ||
        (*cp >= 0xD800 && *cp <= 0xDFFF))
        return 0;
    return len;
}

static void put_u_escape(struct eng_buf *b, uint32_t unit)
{
    static const char hex[] = "0123456789ABCDEF";
    char e[6] = {'\\',          'u', hex[unit >> 12 & 15], hex[unit >> 8 & 15], hex[unit >> 4 & 15],
                 hex[unit & 15]};
    eng_buf_append(b, e, sizeof(e));
}

/* One character that needs escaping under Jackson's defaults: the two-character escapes
 * (engage's, plus \b and \f), other control characters as \u00XX with upper-case hex, and
 * characters past U+FFFF as an escaped surrogate pair. */
static void put_jackson_escape(struct eng_buf *b, uint32_t cp)
{
    char c = eng_short_escape((unsigned char)cp);
    if (cp < 0x80 && c == 0 && (cp == '\b' || cp == '\f'))
        c = cp == '\b' ? 'b' : 'f';
    if (cp < 0x80 && c != 0) {
        char e[2] = {'\\', c};
        eng_buf_append(b, e, 2);
    } else if (cp < 0x10000) {
        put_u_escape(b, cp);
    } else {
        put_u_escape(b, 0xD800 + ((cp - 0x10000) >> 10));
        put_u_escape(b, 0xDC00 + ((cp - 0x10000) & 0x3FF));
    }
}

/* Appends s as Jackson writes a Java string (the Kafka JSON converter's defaults): unlike
 * eng_buf_put_json_str, upper-case hex, \b and \f, surrogate pairs escaped; other non-ASCII
 * raw. Returns false on invalid UTF-8 (PostgreSQL's JDBC driver refuses it too). */
static bool put_jackson_str(struct eng_buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t run = 0, i = 0;
    eng_buf_putc(b, '"');
    while (i < n) {
        uint32_t cp;
        size_t len = utf8_decode(s + i, n - i, &cp);
        if (len == 0)
            return false;
        if (cp >= 0x20 && cp != '"' && cp != '\\' && cp < 0x10000) {
            i += len;
            continue;
        }
        eng_buf_append(b, s + run, i - run);
        put_jackson_escape(b, cp);
        i += len;
        run = i;
    }
    eng_buf_append(b, s + run, n - run);
    eng_buf_putc(b, '"');
    return true;
}

/* ---- values ------------------------------------------------------------------------------ */

/* Copies the text into a NUL-terminated scratch of cap bytes; false when it does not fit. */
static bool to_cstr(const struct eng_pgo_column *c, char *out, size_t cap)
{
    if (c->len >= cap)
        return false;
    memcpy(out, c->data, c->len);
    out[c->len] = '\0';
    return true;
}

/* The decimal digits of a float and the power of ten of the first: d[0].d[1]... x 10^exp10. */
struct fdigits {
    char d[24];
    size_t nd;
    int exp10;
};

/* Strips trailing zeros (keeping one digit). */
static void fdigits_trim(struct fdigits *f)
{
    while (f->nd > 1 && f->d[f->nd - 1] == '0')
        f->nd--;
}

/* The shortest digits that read back as v (> 0; as a float when single). */
static void shortest_digits(double v, bool single, struct fdigits *f)
{
    char e[40];
    for (int prec = 0; prec <= 17; prec++) {
        snprintf(e, sizeof(e), "%.*e", prec, v);
        double back = strtod(e, NULL);
        if (single ? (float)back == (float)v : back == v)
            break;
    }
    /* Java writes two digits where one is enough for a subnormal (4.9E-324, 1.4E-45). */
    if (e[1] == 'e' && (single ? v < FLT_MIN : v < DBL_MIN))
        snprintf(e, sizeof(e), "%.1e", v);
    const char *p = e;
    f->nd = 0;
    for (; *p != 'e'; p++)
        if (*p != '.')
            f->d[f->nd++] = *p;
    f->exp10 = atoi(p + 1);
    fdigits_trim(f);
}

/* Java 17's FloatingDecimal takes another path for an integer below 2^63 past the type's
 * precision (2^24 for float, 2^53 for double): it prints the integer, rounding off a number of
 * low digits taken from a table by the power of two of the ulp, which can be more digits than
 * the shortest (Float.toString(2.57756902E9f) is "2.57756902E9", not "2.577569E9").
 * Returns false when v (> 0) is not such a value. */
static bool java_long_digits(double v, bool single, struct fdigits *f)
{
    static const int insignificant[] = {
        0,  0,  0,  0,  1,  1,  1,  2,  2,  2,  3,  3,  3,  3,  4,  4,  4,  5,  5,  5,  6,  6,
        6,  6,  7,  7,  7,  8,  8,  8,  9,  9,  9,  9,  10, 10, 10, 11, 11, 11, 12, 12, 12, 12,
        13, 13, 13, 14, 14, 14, 15, 15, 15, 15, 16, 16, 16, 17, 17, 17, 18, 18, 18, 19};
    int nsig = single ? 24 : 53;
    int bin_exp = ilogb(v);
    if (v != floor(v) || bin_exp > 62 || bin_exp <= nsig)
        return false;
    uint64_t lv = (uint64_t)v;
    int drop = bin_exp - nsig - 1 < (int)(sizeof(insignificant) / sizeof(insignificant[0]))
                   ? insignificant[bin_exp - nsig - 1]
                   : 0;
    uint64_t pow10 = 1;
    for (int i = 0; i < drop; i++)
        pow10 *= 10;
    uint64_t residue = lv % pow10;
    lv /= pow10;
    if (drop > 0 && residue >= pow10 / 2)
        lv++;
    int n = snprintf(f->d, sizeof(f->d), "%" PRIu64, lv);
    f->nd = (size_t)n;
    f->exp10 = n - 1 + drop;
    fdigits_trim(f);
    return true;
}

/* Lays the digits out as Java's Double.toString / Float.toString do: plain between 10^-3 and
 * 10^7 ("0.001", "123.456", "100.0"), else computerized scientific ("1.0E-4", "1.0E7"). */
static void put_java_layout(struct eng_buf *b, const struct fdigits *f)
{
    int x = f->exp10;
    if (x < -3 || x >= 7) {
        eng_buf_putc(b, f->d[0]);
        eng_buf_putc(b, '.');
        if (f->nd > 1)
            eng_buf_append(b, f->d + 1, f->nd - 1);
        else
            eng_buf_putc(b, '0');
        eng_buf_printf(b, "E%d", x);
    } else if (x < 0) {
        eng_buf_puts(b, "0.");
        for (int i = -1; i > x; i--)
            eng_buf_putc(b, '0');
        eng_buf_append(b, f->d, f->nd);
    } else {
        for (int i = 0; i <= x; i++)
            eng_buf_putc(b, (size_t)i < f->nd ? f->d[i] : '0');
        eng_buf_putc(b, '.');
        if (f->nd > (size_t)x + 1)
            eng_buf_append(b, f->d + x + 1, f->nd - (size_t)x - 1);
        else
            eng_buf_putc(b, '0');
    }
}

/* Writes v as Jackson does through Java 17's Double.toString / Float.toString. Checked against
 * them on 35,000 random values of every magnitude: one differed, the subnormal 1e-323 (Java
 * "1.0E-323", here "9.9E-324"): Java's digits for the few subnormals below 1e-322 (float: 1e-44)
 * are not always reproduced. Java 19 and later print the shortest digits everywhere, which
 * differs from Java 17 on the large integers and subnormals handled above. */
static void put_java_float(struct eng_buf *b, double v, bool single)
{
    if (v == 0) {
        eng_buf_puts(b, signbit(v) ? "-0.0" : "0.0");
        return;
    }
    struct fdigits f;
    if (!java_long_digits(fabs(v), single, &f))
        shortest_digits(fabs(v), single, &f);
    if (v < 0)
        eng_buf_putc(b, '-');
    put_java_layout(b, &f);
}

/* float4/float8 text ("1.5", "1e+20", "NaN", "Infinity", "-Infinity"). Jackson writes the
 * non-finite ones as strings. */
static bool put_float(struct eng_buf *b, const struct eng_pgo_column *c, bool single)
{
    char s[64], *end;
    if (!to_cstr(c, s, sizeof(s)) || c->len == 0)
        return false;
    if (strcmp(s, "NaN") == 0 || strcmp(s, "Infinity") == 0 || strcmp(s, "-Infinity") == 0) {
        eng_buf_printf(b, "\"%s\"", s);
        return true;
    }
    double v = single ? (double)strtof(s, &end) : strtod(s, &end);
    if (*end != '\0' || !isfinite(v))
        return false;
    put_java_float(b, v, single);
    return true;
}

static bool put_int(struct eng_buf *b, const struct eng_pgo_column *c, int64_t lo, int64_t hi)
{
    int64_t v;
    if (!eng_parse_i64(c->data, c->len, &v) || v < lo || v > hi)
        return false;
    eng_buf_put_i64(b, v);
    return true;
}

/* "YYYY-MM-DD" as days since 1970-01-01. */
static bool parse_date(const struct eng_pgo_column *c, int64_t *days)
{
    char ts[20];
    int64_t us;
    if (c->len != 10)
        return false;
    memcpy(ts, c->data, 10);
    memcpy(ts + 10, " 00:00:00", 9);
    if (!eng_parse_timestamp(ts, 19, &us))
        return false;
    *days = us / INT64_C(86400000000);
    return true;
}

/* The UTC offset at the end of a timestamptz ("+00", "-05:30", "+05:30:15"), in seconds; pos
 * is where its sign is. */
static bool parse_offset(const char *s, size_t n, size_t *pos, int64_t *secs)
{
    size_t i = n;
    while (i > 19 && s[i - 1] != '+' && s[i - 1] != '-')
        i--;
    if (i <= 19)
        return false;
    *pos = i - 1;
    int64_t part[3] = {0, 0, 0};
    int np = 0;
    while (i < n && np < 3) {
        if (n - i < 2 || !eng_parse_i64(s + i, 2, &part[np]))
            return false;
        np++;
        i += 2;
        if (i < n && s[i++] != ':')
            return false;
    }
    if (i != n || np == 0)
        return false;
    *secs = (part[0] * 3600 + part[1] * 60 + part[2]) * (s[*pos] == '-' ? -1 : 1);
    return true;
}

/* timestamptz text ("2026-01-08 14:21:52.5+02") as Debezium's ZonedTimestamp writes it: ISO-8601
 * in UTC, the fraction without trailing zeros ("2026-01-08T12:21:52.5Z"). */
static bool put_tstz(struct eng_buf *b, const struct eng_pgo_column *c)
{
    size_t pos;
    int64_t off, us;
    if (!parse_offset(c->data, c->len, &pos, &off) || !eng_parse_timestamp(c->data, pos, &us))
        return false;
    us -= off * 1000000;
    if (us < INT64_C(-62135596800000000) || us >= INT64_C(253402300800000000))
        return false; /* out of years 1..9999 in UTC */
    char ts[20];
    eng_format_timestamp(us, ts);
    ts[10] = 'T';
    eng_buf_putc(b, '"');
    eng_buf_append(b, ts, 19);
    int64_t frac = ((us % 1000000) + 1000000) % 1000000;
    if (frac != 0) {
        char f[8];
        int len = snprintf(f, sizeof(f), ".%06d", (int)frac);
        while (f[len - 1] == '0')
            len--;
        eng_buf_append(b, f, (size_t)len);
    }
    eng_buf_puts(b, "Z\"");
    return true;
}

static int64_t floor_div(int64_t a, int64_t d)
{
    return a / d - (a % d != 0 && (a < 0) != (d < 0));
}

/* numeric's typmod: the scale (PostgreSQL 15 allows negative ones) and the precision. */
static int numeric_scale(int32_t typmod)
{
    return (((typmod - 4) & 0x7ff) ^ 1024) - 1024;
}

static int numeric_precision(int32_t typmod)
{
    return ((typmod - 4) >> 16) & 0xffff;
}

/* Appends n bytes as standard base64 with padding (Connect's bytes in JSON). */
static void put_base64(struct eng_buf *b, const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        char q[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63], i + 1 < n ? tab[v >> 6 & 63] : '=',
                     i + 2 < n ? tab[v & 63] : '='};
        eng_buf_append(b, q, 4);
    }
}

#define DEC_MAX_DIGITS 1000 /* a numeric with more digits is refused */
#define DEC_MAX_BYTES  (DEC_MAX_DIGITS / 2 + 2)

/* The decimal digits as Java's BigInteger.toByteArray writes the integer (negated when neg):
 * big-endian two's complement, as few bytes as hold the sign. Returns the length. */
static size_t unscaled_bytes(const char *digits, size_t nd, bool neg, unsigned char *out)
{
    unsigned char mag[DEC_MAX_BYTES]; /* little-endian magnitude */
    size_t len = 0;
    for (size_t k = 0; k < nd; k++) {
        unsigned carry = (unsigned)(digits[k] - '0');
        for (size_t i = 0; i < len; i++) {
            unsigned v = mag[i] * 10u + carry;
            mag[i] = (unsigned char)v;
            carry = v >> 8;
        }
        if (carry != 0)
            mag[len++] = (unsigned char)carry;
    }
    if (len == 0)
        mag[len++] = 0;
    else if (neg) {
        unsigned carry = 1;
        for (size_t i = 0; i < len; i++) {
            unsigned v = (unsigned char)~mag[i] + carry;
            mag[i] = (unsigned char)v;
            carry = v >> 8;
        }
    }
    bool top_set = (mag[len - 1] & 0x80) != 0;
    if (neg != top_set && !(neg && len == 1 && mag[0] == 0))
        mag[len++] = neg ? 0xff : 0x00;
    for (size_t i = 0; i < len; i++)
        out[i] = mag[len - 1 - i];
    return len;
}

/* numeric text ("-12.50") as Debezium writes it under decimal.handling.mode=precise: the
 * unscaled integer's bytes in base64, at the column's scale (Decimal) or the text's
 * (VariableScaleDecimal: {"scale":2,"value":"..."}). NaN and infinities have no such form. */
static bool put_decimal(struct eng_buf *b, const struct eng_pgo_column *c, enum vkind kind,
                        int32_t typmod)
{
    char digits[DEC_MAX_DIGITS + 1];
    size_t nd = 0, i = 0, nfrac = 0;
    bool neg = c->len > 0 && c->data[0] == '-', point = false;
    for (i = neg; i < c->len; i++) {
        char ch = c->data[i];
        if (ch == '.' && !point && i > (size_t)neg) {
            point = true;
            continue;
        }
        if (ch < '0' || ch > '9' || nd == DEC_MAX_DIGITS)
            return false;
        digits[nd++] = ch;
        nfrac += point;
    }
    int scale = kind == V_DECIMAL ? numeric_scale(typmod) : (int)nfrac;
    if (nd == 0 || (point && nfrac == 0) || scale < (int)nfrac)
        return false;
    for (; (int)nfrac < scale; nfrac++) {
        if (nd == DEC_MAX_DIGITS)
            return false;
        digits[nd++] = '0';
    }
    unsigned char bytes[DEC_MAX_BYTES + 1];
    size_t n = unscaled_bytes(digits, nd, neg, bytes);
    if (kind == V_VARDECIMAL)
        eng_buf_printf(b, "{\"scale\":%d,\"value\":", scale);
    eng_buf_putc(b, '"');
    put_base64(b, bytes, n);
    eng_buf_putc(b, '"');
    if (kind == V_VARDECIMAL)
        eng_buf_putc(b, '}');
    return true;
}

/* bytea text in the hex format ("\x0a0b") as base64. */
static bool put_bytea(struct eng_buf *b, const struct eng_pgo_column *c)
{
    if (c->len < 2 || c->data[0] != '\\' || c->data[1] != 'x' || c->len % 2 != 0)
        return false;
    size_t n = (c->len - 2) / 2;
    unsigned char *bytes = eng_malloc(n + 1);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        int64_t v = 0;
        for (int k = 0; k < 2; k++) {
            char h = c->data[2 + 2 * i + k];
            int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
            ok = ok && d >= 0;
            v = v * 16 + d;
        }
        bytes[i] = (unsigned char)v;
    }
    if (ok) {
        eng_buf_putc(b, '"');
        put_base64(b, bytes, n);
        eng_buf_putc(b, '"');
    }
    free(bytes);
    return ok;
}

/* time text ("14:21:52.5") as microseconds since midnight. */
static bool parse_time(const struct eng_pgo_column *c, int64_t *us)
{
    char ts[32] = "1970-01-01 ";
    if (c->len < 8 || c->len > 15)
        return false;
    memcpy(ts + 11, c->data, c->len);
    return eng_parse_timestamp(ts, 11 + c->len, us);
}

/* The temporal kinds: integers (days, ms, us since the epoch or midnight) but for timestamptz. */
static bool put_temporal(struct eng_buf *b, enum vkind kind, const struct eng_pgo_column *c)
{
    int64_t v;
    bool ok;
    switch (kind) {
    case V_TSTZ:
        return put_tstz(b, c);
    case V_DATE:
        ok = parse_date(c, &v);
        break;
    case V_TIME_MICRO:
    case V_TIME_MILLI:
        ok = parse_time(c, &v);
        v = kind == V_TIME_MICRO ? v : v / 1000;
        break;
    default: /* V_TS_MICRO, V_TS_MILLI */
        ok = eng_parse_timestamp(c->data, c->len, &v);
        v = kind == V_TS_MICRO ? v : floor_div(v, 1000);
        break;
    }
    if (ok)
        eng_buf_put_i64(b, v);
    return ok;
}

static bool put_text_value(struct eng_buf *b, enum vkind kind, int32_t typmod,
                           const struct eng_pgo_column *c)
{
    switch (kind) {
    case V_INT16:
        return put_int(b, c, INT16_MIN, INT16_MAX);
    case V_INT32:
        return put_int(b, c, INT32_MIN, INT32_MAX);
    case V_INT64:
        return put_int(b, c, INT64_MIN, INT64_MAX);
    case V_BOOL:
        if (c->len != 1 || (c->data[0] != 't' && c->data[0] != 'f'))
            return false;
        eng_buf_puts(b, c->data[0] == 't' ? "true" : "false");
        return true;
    case V_FLOAT32:
    case V_FLOAT64:
        return put_float(b, c, kind == V_FLOAT32);
    case V_TS_MICRO:
    case V_TS_MILLI:
    case V_DATE:
    case V_TSTZ:
    case V_TIME_MICRO:
    case V_TIME_MILLI:
        return put_temporal(b, kind, c);
    case V_BYTES:
        return put_bytea(b, c);
    case V_DECIMAL:
    case V_VARDECIMAL:
        return put_decimal(b, c, kind, typmod);
    case V_STRING:
    default:
        return put_jackson_str(b, c->data, c->len);
    }
}

/* Debezium's converters give a NOT NULL column that has no value the schema's default, or
 * this fallback (a NULL in a delete's before image under the default replica identity; a
 * default expression that is not a constant, such as nextval(...) or now()). */
static const char *fallback_json(enum vkind kind)
{
    switch (kind) {
    case V_BOOL:
        return "false";
    case V_FLOAT32:
    case V_FLOAT64:
        return "0.0";
    case V_STRING:
    case V_BYTES:
        return "\"\"";
    case V_DECIMAL:
        return "\"AA==\"";
    case V_VARDECIMAL:
        return "{\"scale\":0,\"value\":\"AA==\"}";
    case V_TSTZ:
        return "\"1970-01-01T00:00:00Z\"";
    default:
        return "0";
    }
}

static int put_value(struct eng_buf *b, const struct eng_dbz_schema *s, int i,
                     const struct eng_pgo_column *c, struct eng_error *err)
{
    const char *why = NULL;
    if (c->kind == ENG_PGO_NULL)
        eng_buf_puts(b, s->null_json[i]);
    else if (c->kind == ENG_PGO_UNCHANGED && s->kind[i] == V_STRING)
        eng_buf_puts(b, "\"" DBZ_UNAVAILABLE "\"");
    else if (c->kind != ENG_PGO_TEXT)
        why = "not in text format";
    else if (!put_text_value(b, s->kind[i], s->typmod[i], c))
        why = "does not parse as its type";
    if (why == NULL)
        return 0;
    /* field[i] is "\"name\":" */
    return eng_error_set(err, ENG_EINVAL, false, "debezium encoder: column %.*s: value %s",
                         (int)strlen(s->field[i]) - 1, s->field[i], why);
}

/* ---- the schema, built once per table ---------------------------------------------------- */

static void put_field_schema(struct eng_buf *b, const struct eng_dbz_col *c, bool optional)
{
    struct coltype t = col_type(c->type_oid, c->typmod);
    eng_buf_printf(b, "{\"type\":\"%s\",", t.type);
    if (t.kind == V_VARDECIMAL)
        eng_buf_puts(b, "\"fields\":[{\"type\":\"int32\",\"optional\":false,\"field\":\"scale\"},"
                        "{\"type\":\"bytes\",\"optional\":false,\"field\":\"value\"}],");
    eng_buf_printf(b, "\"optional\":%s", optional ? "true" : "false");
    if (t.name != NULL)
        eng_buf_printf(b, ",\"name\":\"%s\",\"version\":1", t.name);
    if (t.kind == V_VARDECIMAL)
        eng_buf_puts(b, ",\"doc\":\"Variable scaled decimal\"");
    if (t.kind == V_DECIMAL)
        eng_buf_printf(b, ",\"parameters\":{\"scale\":\"%d\",\"connect.decimal.precision\":\"%d\"}",
                       numeric_scale(c->typmod), numeric_precision(c->typmod));
    if (c->default_json != NULL) {
        eng_buf_puts(b, ",\"default\":");
        eng_buf_puts(b, c->default_json);
    }
    eng_buf_puts(b, ",\"field\":");
    (void)put_jackson_str(b, c->name, strlen(c->name));
    eng_buf_putc(b, '}');
}

/* "<prefix>.<schema>.<table>.<suffix>" as a JSON string. */
static void put_schema_name(struct eng_buf *b, const struct eng_dbz_table *t, const char *suffix)
{
    struct eng_buf name = {0};
    eng_buf_printf(&name, "%s.%s.%s.%s", t->prefix, t->schema, t->table, suffix);
    (void)put_jackson_str(b, name.data, name.len);
    eng_buf_free(&name);
}

static void put_row_schema(struct eng_buf *b, const struct eng_dbz_table *t, const char *field)
{
    eng_buf_puts(b, "{\"type\":\"struct\",\"fields\":[");
    for (uint16_t i = 0; i < t->ncols; i++) {
        if (i > 0)
            eng_buf_putc(b, ',');
        put_field_schema(b, &t->cols[i], !t->cols[i].not_null);
    }
    eng_buf_puts(b, "],\"optional\":true,\"name\":");
    put_schema_name(b, t, "Value");
    eng_buf_printf(b, ",\"field\":\"%s\"}", field);
}

static void build_value_head(struct eng_dbz_schema *s, const struct eng_dbz_table *t)
{
    struct eng_buf *b = &s->value_head;
    eng_buf_puts(b, "{\"schema\":{\"type\":\"struct\",\"fields\":[");
    put_row_schema(b, t, "before");
    eng_buf_putc(b, ',');
    put_row_schema(b, t, "after");
    eng_buf_putc(b, ',');
    eng_buf_puts(b, source_schema);
    eng_buf_putc(b, ',');
    eng_buf_puts(b, envelope_tail_schema);
    eng_buf_puts(b, "],\"optional\":false,\"name\":");
    put_schema_name(b, t, "Envelope");
    eng_buf_puts(b, ",\"version\":2},\"payload\":");
}

static void build_key_head(struct eng_dbz_schema *s, const struct eng_dbz_table *t)
{
    struct eng_buf *b = &s->key_head;
    eng_buf_puts(b, "{\"schema\":{\"type\":\"struct\",\"fields\":[");
    for (int k = 0; k < s->nkey; k++) {
        const struct eng_dbz_col *c = &t->cols[s->key_cols[k]];
        if (k > 0)
            eng_buf_putc(b, ',');
        put_field_schema(b, c, !c->not_null);
    }
    eng_buf_puts(b, "],\"optional\":false,\"name\":");
    put_schema_name(b, t, "Key");
    eng_buf_puts(b, "},\"payload\":");
}

static void build_source(struct eng_dbz_schema *s, const struct eng_dbz_table *t)
{
    eng_buf_puts(&s->src_head, "\"source\":{\"version\":\"" DBZ_VERSION
                               "\",\"connector\":\"postgresql\",\"name\":");
    (void)put_jackson_str(&s->src_head, t->prefix, strlen(t->prefix));
    eng_buf_puts(&s->src_head, ",\"ts_ms\":");
    eng_buf_puts(&s->src_db, ",\"db\":");
    (void)put_jackson_str(&s->src_db, t->db, strlen(t->db));
    eng_buf_puts(&s->src_db, ",\"sequence\":");
    eng_buf_puts(&s->src_mid, ",\"schema\":");
    (void)put_jackson_str(&s->src_mid, t->schema, strlen(t->schema));
    eng_buf_puts(&s->src_mid, ",\"table\":");
    (void)put_jackson_str(&s->src_mid, t->table, strlen(t->table));
    eng_buf_puts(&s->src_mid, ",\"txId\":");
}

static bool pick_key(struct eng_dbz_schema *s, const struct eng_dbz_table *t)
{
    s->key_cols = eng_calloc(t->ncols ? t->ncols : 1, sizeof(int));
    if (t->key_col >= 0) {
        if (t->key_col >= t->ncols)
            return false;
        s->key_cols[s->nkey++] = t->key_col;
        return true;
    }
    for (int i = 0; i < t->ncols; i++)
        if (t->cols[i].pkey)
            s->key_cols[s->nkey++] = i;
    return s->nkey > 0;
}

struct eng_dbz_schema *eng_dbz_schema_create(const struct eng_dbz_table *t, struct eng_error *err)
{
    struct eng_dbz_schema *s = eng_calloc(1, sizeof(*s));
    s->ncols = t->ncols;
    s->schemas = t->schemas;
    if (!pick_key(s, t)) {
        eng_error_set(err, ENG_EINVAL, false,
                      "debezium encoder: table \"%s.%s\" has no message key column", t->schema,
                      t->table);
        eng_dbz_schema_destroy(s);
        return NULL;
    }
    s->field = eng_calloc(t->ncols ? t->ncols : 1, sizeof(char *));
    s->null_json = eng_calloc(t->ncols ? t->ncols : 1, sizeof(char *));
    s->kind = eng_calloc(t->ncols ? t->ncols : 1, sizeof(enum vkind));
    s->typmod = eng_calloc(t->ncols ? t->ncols : 1, sizeof(int32_t));
    for (uint16_t i = 0; i < t->ncols; i++) {
        const struct eng_dbz_col *c = &t->cols[i];
        struct eng_buf f = {0};
        (void)put_jackson_str(&f, c->name, strlen(c->name));
        eng_buf_putc(&f, ':');
        s->field[i] = f.data; /* now owned by s */
        s->kind[i] = col_type(c->type_oid, c->typmod).kind;
        s->typmod[i] = c->typmod;
        s->null_json[i] = eng_strdup(!c->not_null              ? "null"
                                     : c->default_json != NULL ? c->default_json
                                                               : fallback_json(s->kind[i]));
    }
    if (t->schemas) {
        build_value_head(s, t);
        build_key_head(s, t);
    }
    build_source(s, t);
    return s;
}

void eng_dbz_schema_destroy(struct eng_dbz_schema *s)
{
    if (s == NULL)
        return;
    for (uint16_t i = 0; s->field != NULL && i < s->ncols; i++) {
        free(s->field[i]);
        free(s->null_json[i]);
    }
    free(s->field);
    free(s->null_json);
    free(s->kind);
    free(s->typmod);
    free(s->key_cols);
    eng_buf_free(&s->key_head);
    eng_buf_free(&s->value_head);
    eng_buf_free(&s->src_head);
    eng_buf_free(&s->src_db);
    eng_buf_free(&s->src_mid);
    free(s);
}

/* ---- records ----------------------------------------------------------------------------- */

static int put_row(struct eng_buf *b, const struct eng_dbz_schema *s,
                   const struct eng_pgo_tuple *row, struct eng_error *err)
{
    if (row == NULL) {
        eng_buf_puts(b, "null");
        return 0;
    }
    if (row->ncols != s->ncols)
        return eng_error_set(err, ENG_EINVAL, false,
                             "debezium encoder: a row of %u columns for a table of %u",
                             (unsigned)row->ncols, (unsigned)s->ncols);
    eng_buf_putc(b, '{');
    for (int i = 0; i < s->ncols; i++) {
        if (i > 0)
            eng_buf_putc(b, ',');
        eng_buf_puts(b, s->field[i]);
        int rc = put_value(b, s, i, &row->cols[i], err);
        if (rc != 0)
            return rc;
    }
    eng_buf_putc(b, '}');
    return 0;
}

static void put_source(struct eng_buf *b, const struct eng_dbz_schema *s,
                       const struct eng_dbz_source *src)
{
    eng_buf_append(b, s->src_head.data, s->src_head.len);
    eng_buf_put_i64(b, floor_div(src->ts_us, 1000));
    eng_buf_puts(b, ",\"snapshot\":");
    (void)put_jackson_str(b, src->snapshot, strlen(src->snapshot));
    eng_buf_append(b, s->src_db.data, s->src_db.len);
    if (src->has_lsn && src->has_last_commit)
        eng_buf_printf(b, "\"[\\\"%" PRIu64 "\\\",\\\"%" PRIu64 "\\\"]\"", src->last_commit_lsn,
                       src->lsn);
    else if (src->has_lsn)
        eng_buf_printf(b, "\"[null,\\\"%" PRIu64 "\\\"]\"", src->lsn);
    else
        eng_buf_puts(b, "null");
    eng_buf_puts(b, ",\"ts_us\":");
    eng_buf_put_i64(b, src->ts_us);
    eng_buf_puts(b, ",\"ts_ns\":");
    eng_buf_put_i64(b, src->ts_us * 1000);
    eng_buf_append(b, s->src_mid.data, s->src_mid.len);
    if (src->has_tx_id)
        eng_buf_put_i64(b, src->tx_id);
    else
        eng_buf_puts(b, "null");
    eng_buf_puts(b, ",\"lsn\":");
    if (src->has_lsn)
        eng_buf_printf(b, "%" PRIu64, src->lsn);
    else
        eng_buf_puts(b, "null");
    eng_buf_puts(b, ",\"xmin\":null,\"origin\":null,\"origin_lsn\":null}");
}

static int put_value_json(struct eng_buf *b, const struct eng_dbz_schema *s,
                          const struct eng_dbz_source *src, char op,
                          const struct eng_pgo_tuple *before, const struct eng_pgo_tuple *after,
                          struct eng_error *err)
{
    eng_buf_append(b, s->value_head.data, s->value_head.len);
    eng_buf_puts(b, "{\"before\":");
    int rc = put_row(b, s, before, err);
    if (rc != 0)
        return rc;
    eng_buf_puts(b, ",\"after\":");
    rc = put_row(b, s, after, err);
    if (rc != 0)
        return rc;
    eng_buf_putc(b, ',');
    put_source(b, s, src);
    eng_buf_printf(b, ",\"transaction\":null,\"op\":\"%c\",\"ts_ms\":", op);
    eng_buf_put_i64(b, floor_div(src->now_ns, 1000000));
    eng_buf_puts(b, ",\"ts_us\":");
    eng_buf_put_i64(b, floor_div(src->now_ns, 1000));
    eng_buf_puts(b, ",\"ts_ns\":");
    eng_buf_put_i64(b, src->now_ns);
    eng_buf_putc(b, '}');
    if (s->schemas)
        eng_buf_putc(b, '}');
    return 0;
}

static int put_key_json(struct eng_buf *b, const struct eng_dbz_schema *s,
                        const struct eng_pgo_tuple *row, struct eng_error *err)
{
    if (row->ncols != s->ncols)
        return eng_error_set(err, ENG_EINVAL, false,
                             "debezium encoder: a row of %u columns for a table of %u",
                             (unsigned)row->ncols, (unsigned)s->ncols);
    eng_buf_append(b, s->key_head.data, s->key_head.len);
    eng_buf_putc(b, '{');
    for (int k = 0; k < s->nkey; k++) {
        int i = s->key_cols[k];
        if (k > 0)
            eng_buf_putc(b, ',');
        eng_buf_puts(b, s->field[i]);
        int rc = put_value(b, s, i, &row->cols[i], err);
        if (rc != 0)
            return rc;
    }
    eng_buf_putc(b, '}');
    if (s->schemas)
        eng_buf_putc(b, '}');
    return 0;
}

int eng_dbz_encode(const struct eng_dbz_schema *s, const struct eng_dbz_source *src, char op,
                   const struct eng_pgo_tuple *before, const struct eng_pgo_tuple *after,
                   struct eng_buf *key, struct eng_buf *value, struct eng_error *err)
{
    bool ok = (op == 'c' || op == 'r') ? after != NULL && before == NULL
              : op == 'u'              ? after != NULL
              : op == 'd'              ? before != NULL && after == NULL
                                       : false;
    if (!ok)
        return eng_error_set(err, ENG_EINVAL, false,
                             "debezium encoder: op '%c' with the wrong rows (before %s, after %s)",
                             op, before ? "given" : "absent", after ? "given" : "absent");
    int rc = put_key_json(key, s, op == 'd' ? before : after, err);
    if (rc == 0)
        rc = put_value_json(value, s, src, op, before, after, err);
    if (rc == 0 && (key->overflow || value->overflow))
        rc = eng_error_set(err, ENG_ENOMEM, false, "debezium encoder: record over the buffer cap");
    return rc;
}

void eng_dbz_headers(const char *prefix, const char *run_id,
                     struct eng_dbz_header h[ENG_DBZ_NHEADERS])
{
    h[0] = (struct eng_dbz_header){"__debezium.context.connectorLogicalName", prefix};
    h[1] = (struct eng_dbz_header){"__debezium.context.taskId", "0"};
    h[2] = (struct eng_dbz_header){"__debezium.context.connectorName", "postgresql"};
    h[3] = (struct eng_dbz_header){"__debezium.context.runId", run_id};
}

/* ---- column defaults --------------------------------------------------------------------- */

/* The literal of a constant default as pg_get_expr prints it: "0", "(-1)", "'view'::text",
 * "'2026-01-01 00:00:00'::timestamp without time zone", "true". Copies it, unquoted, into
 * out; false for anything else (function calls such as nextval(...) or now()). */
static bool default_literal(const char *expr, struct eng_buf *out)
{
    size_t n = strlen(expr);
    const char *cast = strstr(expr, "::");
    if (cast != NULL)
        n = (size_t)(cast - expr);
    if (n >= 2 && expr[0] == '(' && expr[n - 1] == ')') {
        expr++;
        n -= 2;
    }
    if (n == 0 || memchr(expr, '(', n) != NULL)
        return false;
    if (expr[0] != '\'') {
        eng_buf_append(out, expr, n);
        return true;
    }
    for (size_t i = 1; i < n; i++) {
        if (expr[i] == '\'' && i + 1 < n && expr[i + 1] == '\'')
            i++;
        else if (expr[i] == '\'')
            return i == n - 1;
        eng_buf_putc(out, expr[i]);
    }
    return false;
}

bool eng_dbz_default_json(uint32_t type_oid, int32_t typmod, bool not_null, const char *expr,
                          struct eng_buf *out)
{
    if (expr == NULL)
        return false;
    struct eng_buf lit = {0};
    bool ok = default_literal(expr, &lit);
    if (ok && type_oid == OID_BOOL && lit.len > 1) /* true/false print as such */
        lit.len = 1;
    if (ok) {
        struct eng_pgo_column c = {ENG_PGO_TEXT, (uint32_t)lit.len, lit.data ? lit.data : ""};
        size_t mark = out->len;
        ok = put_text_value(out, col_type(type_oid, typmod).kind, typmod, &c);
        if (!ok)
            out->len = mark;
    }
    eng_buf_free(&lit);
    if (!ok && not_null) {
        eng_buf_puts(out, fallback_json(col_type(type_oid, typmod).kind));
        ok = true;
    }
    return ok;
}
