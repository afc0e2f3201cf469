#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../core/url.h"
#include "content.h"

/* Chained hash table; content tables are small (thousands to millions of rows) and change
 * rarely, so simplicity beats a cleverer layout. */
struct node {
    struct node *next;
    struct eng_content row;
};

struct eng_content_cache {
    struct node **buckets;
    uint32_t nbuckets; /* power of two */
    uint32_t count;
};

static uint32_t hash_id(int32_t id)
{
    uint32_t x = (uint32_t)id;
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

struct eng_content_cache *eng_content_cache_create(void)
{
    struct eng_content_cache *c = eng_calloc(1, sizeof(*c));
    c->nbuckets = 64;
    c->buckets = eng_calloc(c->nbuckets, sizeof(*c->buckets));
    return c;
}

static void node_free(struct node *n)
{
    free(n->row.content_type);
    free(n);
}

void eng_content_cache_clear(struct eng_content_cache *c)
{
    for (uint32_t i = 0; i < c->nbuckets; i++) {
        struct node *n = c->buckets[i];
        while (n != NULL) {
            struct node *next = n->next;
            node_free(n);
            n = next;
        }
        c->buckets[i] = NULL;
    }
    c->count = 0;
}

void eng_content_cache_destroy(struct eng_content_cache *c)
{
    if (c == NULL)
        return;
    eng_content_cache_clear(c);
    free(c->buckets);
    free(c);
}

static struct node **find_slot(const struct eng_content_cache *c, int32_t id)
{
    struct node **p = &c->buckets[hash_id(id) & (c->nbuckets - 1)];
    while (*p != NULL && (*p)->row.content_id != id)
        p = &(*p)->next;
    return p;
}

static void grow(struct eng_content_cache *c)
{
    uint32_t nb = c->nbuckets * 2;
    struct node **b = eng_calloc(nb, sizeof(*b));
    for (uint32_t i = 0; i < c->nbuckets; i++) {
        struct node *n = c->buckets[i];
        while (n != NULL) {
            struct node *next = n->next;
            uint32_t h = hash_id(n->row.content_id) & (nb - 1);
            n->next = b[h];
            b[h] = n;
            n = next;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

void eng_content_cache_put(struct eng_content_cache *c, const struct eng_content *row)
{
    struct node **p = find_slot(c, row->content_id);
    struct node *n = *p;
    if (n == NULL) {
        n = eng_calloc(1, sizeof(*n));
        *p = n;
        c->count++;
    } else {
        free(n->row.content_type);
    }
    n->row = *row;
    if (row->type_null || row->content_type == NULL) {
        n->row.type_null = true;
        n->row.type_len = 0;
        n->row.content_type = eng_strdup("");
    } else {
        n->row.content_type = eng_strndup(row->content_type, row->type_len);
    }
    if (c->count > c->nbuckets && c->nbuckets < (1u << 30))
        grow(c);
}

void eng_content_cache_remove(struct eng_content_cache *c, int32_t content_id)
{
    struct node **p = find_slot(c, content_id);
    struct node *n = *p;
    if (n == NULL)
        return;
    *p = n->next;
    node_free(n);
    c->count--;
}

const struct eng_content *eng_content_cache_get(const struct eng_content_cache *c,
                                                int32_t content_id)
{
    struct node *n = *find_slot(c, content_id);
    return n ? &n->row : NULL;
}

uint32_t eng_content_cache_count(const struct eng_content_cache *c)
{
    return c->count;
}

void eng_content_cache_each(const struct eng_content_cache *c,
                            bool (*fn)(const struct eng_content *row, void *ctx), void *ctx)
{
    for (uint32_t i = 0; i < c->nbuckets; i++) {
        for (struct node *n = c->buckets[i]; n != NULL; n = n->next) {
            if (!fn(&n->row, ctx))
                return;
        }
    }
}

static bool put_into(const struct eng_content *row, void *ctx)
{
    eng_content_cache_put(ctx, row);
    return true;
}

struct eng_content_cache *eng_content_cache_clone(const struct eng_content_cache *c)
{
    struct eng_content_cache *d = eng_content_cache_create();
    eng_content_cache_each(c, put_into, d);
    return d;
}

static bool row_equal(const struct eng_content *a, const struct eng_content *b)
{
    return a->content_id == b->content_id && a->type_null == b->type_null &&
           a->length_null == b->length_null &&
           (a->length_null || a->length_seconds == b->length_seconds) &&
           a->type_len == b->type_len && memcmp(a->content_type, b->content_type, a->type_len) == 0;
}

bool eng_content_cache_equal(const struct eng_content_cache *a, const struct eng_content_cache *b)
{
    if (a->count != b->count)
        return false;
    for (uint32_t i = 0; i < a->nbuckets; i++) {
        for (struct node *n = a->buckets[i]; n != NULL; n = n->next) {
            const struct eng_content *o = eng_content_cache_get(b, n->row.content_id);
            if (o == NULL || !row_equal(&n->row, o))
                return false;
        }
    }
    return true;
}

/* File format, one record per line:
 *   engage-content-cache 1 <count>
 *   <content_id> <length_seconds or N> <type: '-' for NULL, else '=' + hex bytes>
 *   end
 * Hex keeps any byte safe without an escaping scheme to get wrong. */
int eng_content_cache_save(const struct eng_content_cache *c, FILE *f, struct eng_error *err)
{
    static const char hex[] = "0123456789abcdef";
    fprintf(f, "engage-content-cache 1 %" PRIu32 "\n", c->count);
    for (uint32_t i = 0; i < c->nbuckets; i++) {
        for (struct node *n = c->buckets[i]; n != NULL; n = n->next) {
            const struct eng_content *r = &n->row;
            fprintf(f, "%" PRId32 " ", r->content_id);
            if (r->length_null)
                fputs("N ", f);
            else
                fprintf(f, "%" PRId32 " ", r->length_seconds);
            if (r->type_null) {
                fputc('-', f);
            } else {
                fputc('=', f);
                for (uint32_t k = 0; k < r->type_len; k++) {
                    unsigned char ch = (unsigned char)r->content_type[k];
                    fputc(hex[ch >> 4], f);
                    fputc(hex[ch & 15], f);
                }
            }
            fputc('\n', f);
        }
    }
    fputs("end\n", f);
    if (ferror(f))
        return eng_error_set(err, ENG_EIO, true, "could not write content cache");
    return 0;
}

/* The header line; sets *expect to the row count it announces. */
static bool read_header(FILE *f, char **line, size_t *cap, uint32_t *expect)
{
    static const char magic[] = "engage-content-cache 1 ";
    if (getline(line, cap, f) < 0 || strncmp(*line, magic, sizeof(magic) - 1) != 0)
        return false;
    char *hend;
    unsigned long ex = strtoul(*line + sizeof(magic) - 1, &hend, 10);
    if (*hend != '\n' || ex > UINT32_MAX)
        return false;
    *expect = (uint32_t)ex;
    return true;
}

/* "<content_id> ": returns what follows the space, or NULL. */
static const char *parse_row_id(const char *p, struct eng_content *r)
{
    char *end;
    long long id = strtoll(p, &end, 10);
    if (end == p || *end != ' ' || id < INT32_MIN || id > INT32_MAX)
        return NULL;
    r->content_id = (int32_t)id;
    return end + 1;
}

/* "<length_seconds or N> ": returns what follows the space, or NULL. */
static const char *parse_row_length(const char *p, struct eng_content *r)
{
    if (*p == 'N') {
        r->length_null = true;
        p++;
    } else {
        char *end;
        long long l = strtoll(p, &end, 10);
        if (end == p || l < INT32_MIN || l > INT32_MAX)
            return NULL;
        r->length_seconds = (int32_t)l;
        p = end;
    }
    return *p == ' ' ? p + 1 : NULL;
}

/* "-" or "=<hex bytes>". The bytes go to *type, which the caller frees (on failure too). */
static bool parse_row_type(const char *p, struct eng_content *r, char **type)
{
    if (*p == '-') {
        r->type_null = true;
        return true;
    }
    if (*p++ != '=')
        return false;
    size_t hl = strcspn(p, "\n");
    if (hl % 2 != 0)
        return false;
    *type = eng_malloc(hl / 2 + 1);
    for (size_t k = 0; k < hl / 2; k++) {
        int hi = eng_hex_digit(p[2 * k]), lo = eng_hex_digit(p[2 * k + 1]);
        if (hi < 0 || lo < 0)
            return false;
        (*type)[k] = (char)(hi << 4 | lo);
    }
    r->content_type = *type;
    r->type_len = (uint32_t)(hl / 2);
    return true;
}

/* One row line; r borrows *type, which the caller frees (on failure too). */
static bool parse_row(const char *line, struct eng_content *r, char **type)
{
    const char *p = parse_row_id(line, r);
    if (p != NULL)
        p = parse_row_length(p, r);
    return p != NULL && parse_row_type(p, r, type);
}

int eng_content_cache_load(struct eng_content_cache *c, FILE *f, struct eng_error *err)
{
    char *line = NULL;
    size_t cap = 0;
    uint32_t expect = 0, seen = 0;
    int rc = ENG_EPROTO;
    char *type = NULL;

    eng_content_cache_clear(c);
    if (!read_header(f, &line, &cap, &expect)) {
        eng_error_set(err, rc, false, "content cache file has no valid header");
        goto out;
    }
    while (getline(&line, &cap, f) >= 0) {
        if (strcmp(line, "end\n") == 0) {
            if (seen != expect) {
                eng_error_set(err, rc, false, "content cache file has %u rows, header says %u",
                              seen, expect);
                goto out;
            }
            rc = 0;
            goto out;
        }
        struct eng_content r = {0};
        if (!parse_row(line, &r, &type))
            goto bad;
        eng_content_cache_put(c, &r);
        free(type);
        type = NULL;
        seen++;
    }
    eng_error_set(err, rc, false, "content cache file is truncated");
    goto out;
bad:
    eng_error_set(err, rc, false, "content cache file has a malformed row %u", seen + 1);
out:
    free(type);
    free(line);
    if (rc != 0)
        eng_content_cache_clear(c);
    return rc;
}
