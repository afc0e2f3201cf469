/* Batches: merging queued batches into one write, or a part of one, keeps every event's
 * text and JSON, and the JSON lines hold exactly the events kept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/event.h"

static struct eng_batch *batch_of(int64_t first, uint32_t n, uint64_t position)
{
    struct eng_batch *b = eng_batch_create(n);
    for (uint32_t i = 0; i < n; i++) {
        struct eng_event *e = eng_batch_push(b);
        char text[64];
        e->event_id = first + i;
        int len = snprintf(text, sizeof(text), "type%lld", (long long)e->event_id);
        e->event_type = eng_batch_put_string(b, text, (size_t)len);
        len = snprintf(text, sizeof(text), "{\"event_id\":%lld}", (long long)e->event_id);
        e->json = (struct eng_slice){(uint32_t)b->jsonl.len, (uint32_t)len};
        eng_buf_append(&b->jsonl, text, (size_t)len);
        eng_buf_putc(&b->jsonl, '\n');
    }
    b->position = position;
    return b;
}

/* Checks that m holds the events first..first+n-1, text, JSON and JSON lines. */
static void check(const struct eng_batch *m, int64_t first, uint32_t n)
{
    char want[4096], text[64];
    size_t used = 0;
    assert_int_equal(m->n, n);
    for (uint32_t i = 0; i < n; i++) {
        const struct eng_event *e = &m->events[i];
        assert_int_equal(e->event_id, first + i);
        snprintf(text, sizeof(text), "type%lld", (long long)e->event_id);
        assert_string_equal(eng_batch_str(m, e->event_type), text);
        snprintf(text, sizeof(text), "{\"event_id\":%lld}", (long long)e->event_id);
        assert_int_equal(e->json.len, strlen(text));
        assert_memory_equal(eng_batch_json(m, e), text, e->json.len);
        used += (size_t)snprintf(want + used, sizeof(want) - used, "%s\n", text);
    }
    assert_int_equal(m->jsonl.len, used);
    assert_memory_equal(m->jsonl.data, want, m->jsonl.len);
}

static void test_merge_skip_and_max(void **state)
{
    (void)state;
    struct eng_batch *bs[3] = {batch_of(1, 3, 10), batch_of(4, 0, 20), batch_of(4, 4, 30)};
    const struct {
        uint32_t skip, max;
        int64_t first;
        uint32_t n;
    } cases[] = {
        {0, UINT32_MAX, 1, 7}, {2, UINT32_MAX, 3, 5}, {3, UINT32_MAX, 4, 4},
        {5, UINT32_MAX, 6, 2}, {0, 2, 1, 2},          {1, 3, 2, 3},
        {2, 4, 3, 4},          {6, 5, 7, 1},          {7, UINT32_MAX, 8, 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct eng_batch *m = eng_batch_merge(bs, 3, cases[c].skip, cases[c].max);
        check(m, cases[c].first, cases[c].n);
        assert_int_equal(m->position, 30);
        eng_batch_release(m);
    }
    for (int i = 0; i < 3; i++)
        eng_batch_release(bs[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_skip_and_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
