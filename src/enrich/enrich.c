#include <stdio.h>
#include <string.h>

#include "../core/pgtext.h"
#include "enrich.h"

const char *const eng_event_col_names[ENG_COL__COUNT] = {
    "event_id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device",
};

#define OID_INT8      20
#define OID_INT2      21
#define OID_INT4      23
#define OID_TEXT      25
#define OID_BPCHAR    1042
#define OID_VARCHAR   1043
#define OID_TIMESTAMP 1114
#define INTS          {OID_INT4, OID_INT2, 0}, "integer or smallint"
#define TEXTS         {OID_TEXT, OID_VARCHAR, OID_BPCHAR}, "text, character varying or character"

const struct eng_column_rule eng_column_rules[] = {
    {"engagement_events", "event_id", {OID_INT8, OID_INT4, OID_INT2}, "bigint, integer or smallint"},
    {"engagement_events", "content_id", INTS},
    {"engagement_events", "user_id", INTS},
    {"engagement_events", "event_type", TEXTS},
    {"engagement_events", "event_ts", {OID_TIMESTAMP, 0, 0}, "timestamp without time zone"},
    {"engagement_events", "duration_ms", INTS},
    {"engagement_events", "device", TEXTS},
    {"content", "content_id", INTS},
    {"content", "content_type", TEXTS},
    {"content", "length_seconds", INTS},
};
const size_t eng_column_rule_count = sizeof(eng_column_rules) / sizeof(eng_column_rules[0]);

int eng_column_check(const char *table, const char *column, uint32_t type_oid,
                     const char *type_name, struct eng_error *err)
{
    for (size_t i = 0; i < eng_column_rule_count; i++) {
        const struct eng_column_rule *r = &eng_column_rules[i];
        if (strcmp(r->table, table) != 0 || strcmp(r->column, column) != 0)
            continue;
        for (size_t k = 0; k < 3 && r->oids[k] != 0; k++) {
            if (r->oids[k] == type_oid)
                return 0;
        }
        char shown[64];
        if (type_name != NULL)
            snprintf(shown, sizeof(shown), "%s", type_name);
        else
            snprintf(shown, sizeof(shown), "type oid %u", type_oid);
        return eng_error_set(err, ENG_EINVAL, false,
                             "column %s.%s has type %s, engage reads it as %s (runbook: ALTER "
                             "TABLE %s ALTER COLUMN %s TYPE %s, or fix the values first)",
                             table, column, shown, r->want, table, column,
                             strncmp(r->want, "timestamp", 9) == 0 ? "timestamp"
                             : r->want[0] == 't'                   ? "text"
                             : r->want[0] == 'b'                   ? "bigint"
                                                                   : "integer");
    }
    return 0;
}

static int bad_column(struct eng_error *err, enum eng_event_col col, const struct eng_text *v)
{
    char shown[40];
    size_t n = v->len < sizeof(shown) - 1 ? v->len : sizeof(shown) - 1;
    memcpy(shown, v->data, n);
    shown[n] = '\0';
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)shown[i] < 0x20 || (unsigned char)shown[i] >= 0x7f)
            shown[i] = '?';
    }
    return eng_error_set(err, ENG_EINVAL, false, "column \"%s\" has an invalid value \"%s%s\"",
                         eng_event_col_names[col], shown, v->len > n ? "..." : "");
}

int eng_event_from_text(struct eng_batch *b, struct eng_event *e,
                        const struct eng_text cols[ENG_COL__COUNT], struct eng_error *err)
{
    const struct eng_text *c = cols;
    if (c[ENG_COL_EVENT_ID].null || c[ENG_COL_EVENT_TS].null || c[ENG_COL_CONTENT_ID].null) {
        enum eng_event_col which = c[ENG_COL_EVENT_ID].null   ? ENG_COL_EVENT_ID
                                   : c[ENG_COL_EVENT_TS].null ? ENG_COL_EVENT_TS
                                                              : ENG_COL_CONTENT_ID;
        return eng_error_set(err, ENG_EINVAL, false, "column \"%s\" is null",
                             eng_event_col_names[which]);
    }
    if (!eng_parse_i64(c[ENG_COL_EVENT_ID].data, c[ENG_COL_EVENT_ID].len, &e->event_id))
        return bad_column(err, ENG_COL_EVENT_ID, &c[ENG_COL_EVENT_ID]);
    if (!eng_parse_i32(c[ENG_COL_CONTENT_ID].data, c[ENG_COL_CONTENT_ID].len, &e->content_id))
        return bad_column(err, ENG_COL_CONTENT_ID, &c[ENG_COL_CONTENT_ID]);
    if (!eng_parse_timestamp(c[ENG_COL_EVENT_TS].data, c[ENG_COL_EVENT_TS].len, &e->event_ts_us))
        return bad_column(err, ENG_COL_EVENT_TS, &c[ENG_COL_EVENT_TS]);
    if (c[ENG_COL_USER_ID].null)
        e->flags |= ENG_EV_USER_NULL;
    else if (!eng_parse_i32(c[ENG_COL_USER_ID].data, c[ENG_COL_USER_ID].len, &e->user_id))
        return bad_column(err, ENG_COL_USER_ID, &c[ENG_COL_USER_ID]);
    if (c[ENG_COL_DURATION_MS].null)
        e->flags |= ENG_EV_DURATION_NULL;
    else if (!eng_parse_i32(c[ENG_COL_DURATION_MS].data, c[ENG_COL_DURATION_MS].len,
                            &e->duration_ms))
        return bad_column(err, ENG_COL_DURATION_MS, &c[ENG_COL_DURATION_MS]);
    if (c[ENG_COL_EVENT_TYPE].null)
        e->flags |= ENG_EV_TYPE_NULL;
    else
        e->event_type =
            eng_batch_put_string(b, c[ENG_COL_EVENT_TYPE].data, c[ENG_COL_EVENT_TYPE].len);
    if (c[ENG_COL_DEVICE].null)
        e->flags |= ENG_EV_DEVICE_NULL;
    else
        e->device = eng_batch_put_string(b, c[ENG_COL_DEVICE].data, c[ENG_COL_DEVICE].len);
    if (b->strings.overflow)
        return eng_error_set(err, ENG_ENOMEM, true, "batch text buffer is full");
    return 0;
}

static int64_t abs64(int64_t v)
{
    return v < 0 ? -v : v;
}

void eng_enrich_derive(struct eng_event *e)
{
    e->flags &= ~(uint32_t)(ENG_EV_SECONDS_VALID | ENG_EV_PCT_VALID);
    e->pct_hundredths = 0;
    /* The brief: both are NULL when duration_ms or length_seconds is missing (an unknown
     * content row has no length); only the pct is NULL when the length is 0. */
    if (e->flags & (ENG_EV_DURATION_NULL | ENG_EV_LENGTH_NULL))
        return;
    e->flags |= ENG_EV_SECONDS_VALID;
    if (e->length_seconds == 0)
        return;
    /* pct = (duration_ms / 1000) / length_seconds, in hundredths:
     * duration_ms * 100 / (length_seconds * 1000) = duration_ms / (length_seconds * 10),
     * rounded half away from zero on the exact rational value. */
    int64_t num = e->duration_ms;
    int64_t den = (int64_t)e->length_seconds * 10;
    int64_t q = (2 * abs64(num) + abs64(den)) / (2 * abs64(den));
    e->pct_hundredths = ((num < 0) != (den < 0)) ? -q : q;
    e->flags |= ENG_EV_PCT_VALID;
}

void eng_put_decimal(struct eng_buf *out, int64_t n, unsigned scale)
{
    uint64_t pow = 1;
    for (unsigned i = 0; i < scale; i++)
        pow *= 10;
    uint64_t u = n < 0 ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;
    if (n < 0)
        eng_buf_putc(out, '-');
    eng_buf_put_i64(out, (int64_t)(u / pow));
    eng_buf_putc(out, '.');
    uint64_t frac = u % pow;
    char digits[20];
    unsigned nd = scale;
    for (unsigned i = scale; i-- > 0;) {
        digits[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    if (scale == 0) {
        digits[0] = '0';
        nd = 1;
    }
    eng_buf_append(out, digits, nd);
}

static void put_key(struct eng_buf *out, const char *key)
{
    eng_buf_puts(out, key);
}

static void put_opt_i32(struct eng_buf *out, bool null, int32_t v)
{
    if (null)
        eng_buf_puts(out, "null");
    else
        eng_buf_put_i64(out, v);
}

static void put_opt_str(struct eng_buf *out, const struct eng_batch *b, bool null,
                        struct eng_slice s)
{
    if (null)
        eng_buf_puts(out, "null");
    else
        eng_buf_put_json_str(out, eng_batch_str(b, s), s.len);
}

void eng_event_render_json(const struct eng_batch *b, const struct eng_event *e,
                           struct eng_buf *out)
{
    char ts[20];
    eng_format_timestamp(e->event_ts_us, ts);
    put_key(out, "{\"event_id\":");
    eng_buf_put_i64(out, e->event_id);
    put_key(out, ",\"content_id\":");
    eng_buf_put_i64(out, e->content_id);
    put_key(out, ",\"user_id\":");
    put_opt_i32(out, e->flags & ENG_EV_USER_NULL, e->user_id);
    put_key(out, ",\"event_type\":");
    put_opt_str(out, b, e->flags & ENG_EV_TYPE_NULL, e->event_type);
    put_key(out, ",\"event_ts\":\"");
    eng_buf_append(out, ts, 19);
    put_key(out, "\",\"duration_ms\":");
    put_opt_i32(out, e->flags & ENG_EV_DURATION_NULL, e->duration_ms);
    put_key(out, ",\"device\":");
    put_opt_str(out, b, e->flags & ENG_EV_DEVICE_NULL, e->device);
    put_key(out, ",\"content_type\":");
    put_opt_str(out, b, e->flags & ENG_EV_CTYPE_NULL, e->content_type);
    put_key(out, ",\"length_seconds\":");
    put_opt_i32(out, e->flags & ENG_EV_LENGTH_NULL, e->length_seconds);
    put_key(out, ",\"engagement_seconds\":");
    if (e->flags & ENG_EV_SECONDS_VALID)
        eng_put_decimal(out, e->duration_ms, 3);
    else
        eng_buf_puts(out, "null");
    put_key(out, ",\"engagement_pct\":");
    if (e->flags & ENG_EV_PCT_VALID)
        eng_put_decimal(out, e->pct_hundredths, 2);
    else
        eng_buf_puts(out, "null");
    eng_buf_putc(out, '}');
}

bool eng_enrich(struct eng_batch *b, struct eng_event *e, const struct eng_content_cache *cache)
{
    const struct eng_content *c = eng_content_cache_get(cache, e->content_id);
    e->flags &= ~(uint32_t)(ENG_EV_CONTENT_FOUND | ENG_EV_CTYPE_NULL | ENG_EV_LENGTH_NULL);
    if (c != NULL) {
        e->flags |= ENG_EV_CONTENT_FOUND;
        if (c->type_null)
            e->flags |= ENG_EV_CTYPE_NULL;
        else
            e->content_type = eng_batch_put_string(b, c->content_type, c->type_len);
        if (c->length_null)
            e->flags |= ENG_EV_LENGTH_NULL;
        else
            e->length_seconds = c->length_seconds;
    } else {
        e->flags |= ENG_EV_CTYPE_NULL | ENG_EV_LENGTH_NULL;
    }
    eng_enrich_derive(e);
    uint32_t off = (uint32_t)b->jsonl.len;
    eng_event_render_json(b, e, &b->jsonl);
    e->json.off = off;
    e->json.len = (uint32_t)(b->jsonl.len - off);
    eng_buf_putc(&b->jsonl, '\n');
    return c != NULL;
}

static void batch_rollback(struct eng_batch *b, uint32_t n, size_t strings, size_t jsonl)
{
    b->n = n;
    b->strings.len = strings;
    b->strings.overflow = false;
    b->jsonl.len = jsonl;
    b->jsonl.overflow = false;
}

int eng_enrich_row(struct eng_batch *b, const struct eng_text cols[ENG_COL__COUNT],
                   const struct eng_content_cache *cache, struct eng_event **out, bool *missed,
                   struct eng_error *err)
{
    size_t text = 0;
    for (int c = 0; c < ENG_COL__COUNT; c++)
        text += cols[c].null ? 0 : cols[c].len;
    int32_t cid;
    const struct eng_text *id = &cols[ENG_COL_CONTENT_ID];
    if (!id->null && eng_parse_i32(id->data, id->len, &cid)) {
        const struct eng_content *c = eng_content_cache_get(cache, cid);
        text += c != NULL && !c->type_null ? c->type_len : 0;
    }
    if (text > ENG_EVENT_MAX_TEXT)
        return eng_error_set(err, ENG_EINVAL, false,
                             "row carries %zu bytes of text with its content type, over the %zu "
                             "MiB one event may carry",
                             text, ENG_EVENT_MAX_TEXT >> 20);
    uint32_t n = b->n;
    size_t strings = b->strings.len, jsonl = b->jsonl.len;
    struct eng_event *e = eng_batch_push(b);
    int rc = eng_event_from_text(b, e, cols, err);
    if (rc != 0) {
        batch_rollback(b, n, strings, jsonl);
        return rc;
    }
    *missed = !eng_enrich(b, e, cache);
    if (b->strings.overflow || b->jsonl.overflow || e->json.len > ENG_EVENT_MAX_JSON) {
        size_t len = b->jsonl.overflow ? b->jsonl.len - jsonl : e->json.len;
        batch_rollback(b, n, strings, jsonl);
        return eng_error_set(err, ENG_EINVAL, false,
                             "enriched event is %s%zu bytes of JSON, over the %zu MiB cap",
                             len > ENG_EVENT_MAX_JSON ? "" : "more than ", len,
                             ENG_EVENT_MAX_JSON >> 20);
    }
    *out = e;
    return 0;
}
