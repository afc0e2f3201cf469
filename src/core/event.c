#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "event.h"

struct eng_batch *eng_batch_create(uint32_t cap)
{
    struct eng_batch *b = eng_calloc(1, sizeof(*b));
    b->cap = cap ? cap : 1;
    b->events = eng_calloc(b->cap, sizeof(*b->events));
    b->strings.cap = ENG_BATCH_MAX_BYTES;
    b->jsonl.cap = ENG_BATCH_MAX_BYTES;
    b->created_us = eng_clock_mono_us();
    atomic_init(&b->refs, 1);
    return b;
}

void eng_batch_retain(struct eng_batch *b)
{
    atomic_fetch_add(&b->refs, 1);
}

void eng_batch_release(struct eng_batch *b)
{
    if (b == NULL || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    free(b->events);
    eng_buf_free(&b->strings);
    eng_buf_free(&b->jsonl);
    free(b);
}

bool eng_batch_full(const struct eng_batch *b)
{
    /* Leave room for the largest event (ENG_EVENT_MAX_TEXT, ENG_EVENT_MAX_JSON); an
     * overflowed buffer (never expected: events are capped) is full too. */
    return b->n >= b->cap || b->strings.overflow || b->jsonl.overflow ||
           b->strings.len > ENG_BATCH_MAX_BYTES - ENG_BATCH_MARGIN ||
           b->jsonl.len > ENG_BATCH_MAX_BYTES - ENG_BATCH_MARGIN;
}

struct eng_event *eng_batch_push(struct eng_batch *b)
{
    if (b->n >= b->cap)
        eng_die("eng_batch_push on a full batch");
    struct eng_event *e = &b->events[b->n++];
    memset(e, 0, sizeof(*e));
    return e;
}

void eng_batch_pop(struct eng_batch *b)
{
    if (b->n == 0)
        eng_die("eng_batch_pop on an empty batch");
    b->n--;
}

struct eng_slice eng_batch_put_string(struct eng_batch *b, const char *s, size_t n)
{
    struct eng_slice sl = {(uint32_t)b->strings.len, (uint32_t)n};
    eng_buf_append(&b->strings, s, n);
    eng_buf_putc(&b->strings, '\0');
    return sl;
}

struct eng_batch *eng_batch_merge(struct eng_batch *const *bs, uint32_t n, uint32_t skip,
                                  uint32_t max)
{
    uint32_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += bs[i]->n;
    total = total > skip ? total - skip : 0;
    struct eng_batch *m = eng_batch_create(total < max ? total : max);
    m->created_us = bs[0]->created_us;
    for (uint32_t i = 0; i < n; i++) {
        const struct eng_batch *b = bs[i];
        uint32_t first = skip < b->n ? skip : b->n;
        skip -= first;
        uint32_t end = b->n - first <= max - m->n ? b->n : first + (max - m->n);
        /* jsonl holds the events' JSON in event order: the kept ones are a range of it. */
        size_t json_from = first < b->n ? b->events[first].json.off : b->jsonl.len;
        size_t json_to = end < b->n ? b->events[end].json.off : b->jsonl.len;
        uint32_t str_off = (uint32_t)m->strings.len;
        uint32_t json_off = (uint32_t)m->jsonl.len;
        if (first < end) {
            eng_buf_append(&m->strings, b->strings.data, b->strings.len);
            eng_buf_append(&m->jsonl, b->jsonl.data + json_from, json_to - json_from);
        }
        for (uint32_t k = first; k < end; k++) {
            struct eng_event *e = &m->events[m->n++];
            *e = b->events[k];
            e->event_type.off += str_off;
            e->device.off += str_off;
            e->content_type.off += str_off;
            e->key.off += str_off;
            e->json.off = e->json.off - (uint32_t)json_from + json_off;
        }
        m->seq = b->seq;
        m->position = b->position;
    }
    if (m->strings.overflow || m->jsonl.overflow)
        eng_die("eng_batch_merge past the batch byte cap");
    return m;
}

struct eng_batch *eng_batch_select(struct eng_batch *const *bs, uint32_t n,
                                   bool (*keep)(const struct eng_event *e, void *ctx), void *ctx)
{
    uint32_t total = 0;
    for (uint32_t j = 0; j < n; j++)
        total += bs[j]->n;
    struct eng_batch *m = eng_batch_create(total);
    m->created_us = n > 0 ? bs[0]->created_us : 0;
    for (uint32_t j = 0; j < n; j++) {
        const struct eng_batch *b = bs[j];
        /* Each batch's strings whole (its events' slices stay valid rebased), JSON per event. */
        uint32_t str_off = (uint32_t)m->strings.len;
        bool any = false;
        for (uint32_t i = 0; i < b->n; i++) {
            const struct eng_event *src = &b->events[i];
            if (!keep(src, ctx))
                continue;
            if (!any)
                eng_buf_append(&m->strings, b->strings.data, b->strings.len);
            any = true;
            struct eng_event *e = &m->events[m->n++];
            *e = *src;
            e->event_type.off += str_off;
            e->device.off += str_off;
            e->content_type.off += str_off;
            e->key.off += str_off;
            e->json.off = (uint32_t)m->jsonl.len;
            eng_buf_append(&m->jsonl, eng_batch_json(b, src), src->json.len);
            eng_buf_putc(&m->jsonl, '\n');
        }
        m->seq = b->seq;
        m->position = b->position;
    }
    if (m->strings.overflow || m->jsonl.overflow)
        eng_die("eng_batch_select past the batch byte cap");
    return m;
}
