/* The content table as of an LSN (see versions.h): the newest rows in a content cache, and
 * per content the changes kept, oldest first, each with the row it replaced. */
#include <stdlib.h>
#include <string.h>

#include "../core/error.h"
#include "versions.h"

struct change {
    uint64_t lsn;
    bool had;                 /* a row existed before the change */
    struct eng_content prior; /* that row (content_type owned) */
};

/* The changes kept for one content, in the order read (which is LSN order: a content's
 * changes share a partition). */
struct history {
    int32_t content_id;
    bool used;
    struct change *v;
    uint32_t n, cap;
};

struct eng_versions {
    struct eng_content_cache *latest;
    struct history *slots; /* open addressing by content_id */
    size_t nslots, nused;
    int32_t *fifo; /* the content of every change kept, oldest first (a ring) */
    size_t fifo_head, fifo_n, fifo_cap;
    uint32_t max_changes;
};

struct eng_versions *eng_versions_create(uint32_t max_changes)
{
    struct eng_versions *v = eng_calloc(1, sizeof(*v));
    v->latest = eng_content_cache_create();
    v->max_changes = max_changes ? max_changes : 100000;
    v->nslots = 64;
    v->slots = eng_calloc(v->nslots, sizeof(*v->slots));
    v->fifo_cap = 64;
    v->fifo = eng_malloc(v->fifo_cap * sizeof(*v->fifo));
    return v;
}

static void change_free(struct change *c)
{
    free(c->prior.content_type);
}

void eng_versions_destroy(struct eng_versions *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->nslots; i++) {
        for (uint32_t k = 0; k < v->slots[i].n; k++)
            change_free(&v->slots[i].v[k]);
        free(v->slots[i].v);
    }
    free(v->slots);
    free(v->fifo);
    eng_content_cache_destroy(v->latest);
    free(v);
}

static size_t slot_of(size_t nslots, int32_t id)
{
    uint32_t h = (uint32_t)id * 2654435761u;
    return h & (nslots - 1);
}

static struct history *find(const struct eng_versions *v, int32_t id)
{
    for (size_t i = slot_of(v->nslots, id);; i = (i + 1) & (v->nslots - 1)) {
        if (!v->slots[i].used)
            return NULL;
        if (v->slots[i].content_id == id)
            return &v->slots[i];
    }
}

static void grow(struct eng_versions *v)
{
    struct history *old = v->slots;
    size_t n = v->nslots;
    v->nslots *= 2;
    v->slots = eng_calloc(v->nslots, sizeof(*v->slots));
    for (size_t i = 0; i < n; i++) {
        if (!old[i].used)
            continue;
        size_t k = slot_of(v->nslots, old[i].content_id);
        while (v->slots[k].used)
            k = (k + 1) & (v->nslots - 1);
        v->slots[k] = old[i];
    }
    free(old);
}

static struct history *find_or_add(struct eng_versions *v, int32_t id)
{
    struct history *h = find(v, id);
    if (h != NULL)
        return h;
    if ((v->nused + 1) * 10 > v->nslots * 7)
        grow(v);
    size_t i = slot_of(v->nslots, id);
    while (v->slots[i].used)
        i = (i + 1) & (v->nslots - 1);
    v->slots[i] = (struct history){.content_id = id, .used = true};
    v->nused++;
    return &v->slots[i];
}

/* Forgets the oldest change kept (of any content). */
static void forget_oldest(struct eng_versions *v)
{
    int32_t id = v->fifo[v->fifo_head];
    v->fifo_head = (v->fifo_head + 1) % v->fifo_cap;
    v->fifo_n--;
    struct history *h = find(v, id);
    change_free(&h->v[0]);
    memmove(h->v, h->v + 1, (h->n - 1) * sizeof(*h->v));
    h->n--;
}

static void fifo_push(struct eng_versions *v, int32_t id)
{
    if (v->fifo_n == v->fifo_cap) {
        size_t cap = 2 * v->fifo_cap;
        int32_t *f = eng_malloc(cap * sizeof(*f));
        for (size_t i = 0; i < v->fifo_n; i++)
            f[i] = v->fifo[(v->fifo_head + i) % v->fifo_cap];
        free(v->fifo);
        v->fifo = f;
        v->fifo_head = 0;
        v->fifo_cap = cap;
    }
    v->fifo[(v->fifo_head + v->fifo_n++) % v->fifo_cap] = id;
}

/* Keeps the row content_id has now as what a change at lsn replaced. */
static void remember(struct eng_versions *v, uint64_t lsn, int32_t id)
{
    if (lsn == 0)
        return;
    struct history *h = find_or_add(v, id);
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 2;
        h->v = eng_realloc(h->v, h->cap * sizeof(*h->v));
    }
    struct change *c = &h->v[h->n++];
    memset(c, 0, sizeof(*c));
    c->lsn = lsn;
    const struct eng_content *now = eng_content_cache_get(v->latest, id);
    c->had = now != NULL;
    if (now != NULL) {
        c->prior = *now;
        c->prior.content_type = eng_strndup(now->content_type, now->type_len);
    }
    fifo_push(v, id);
    while (v->fifo_n > v->max_changes)
        forget_oldest(v);
}

void eng_versions_put(struct eng_versions *v, uint64_t lsn, const struct eng_content *row)
{
    remember(v, lsn, row->content_id);
    eng_content_cache_put(v->latest, row);
}

void eng_versions_remove(struct eng_versions *v, uint64_t lsn, int32_t content_id)
{
    remember(v, lsn, content_id);
    eng_content_cache_remove(v->latest, content_id);
}

/* Each content a clear removes: remembered through a snapshot of the ids (the cache cannot
 * be walked while it changes). */
static bool collect_id(const struct eng_content *row, void *ctx)
{
    struct {
        int32_t *ids;
        size_t n, cap;
    } *acc = ctx;
    if (acc->n == acc->cap) {
        acc->cap = acc->cap ? 2 * acc->cap : 64;
        acc->ids = eng_realloc(acc->ids, acc->cap * sizeof(int32_t));
    }
    acc->ids[acc->n++] = row->content_id;
    return true;
}

void eng_versions_clear(struct eng_versions *v, uint64_t lsn)
{
    struct {
        int32_t *ids;
        size_t n, cap;
    } acc = {0};
    eng_content_cache_each(v->latest, collect_id, &acc);
    for (size_t i = 0; i < acc.n; i++)
        remember(v, lsn, acc.ids[i]);
    free(acc.ids);
    eng_content_cache_clear(v->latest);
}

const struct eng_content_cache *eng_versions_latest(const struct eng_versions *v)
{
    return v->latest;
}

bool eng_versions_as_of(const struct eng_versions *v, int32_t content_id, uint64_t lsn,
                        const struct eng_content **row)
{
    if (lsn == 0)
        return false;
    const struct history *h = find(v, content_id);
    for (uint32_t i = 0; h != NULL && i < h->n; i++) {
        if (h->v[i].lsn > lsn) {
            *row = h->v[i].had ? &h->v[i].prior : NULL;
            return true;
        }
    }
    return false;
}

uint64_t eng_versions_kept(const struct eng_versions *v)
{
    return v->fifo_n;
}
