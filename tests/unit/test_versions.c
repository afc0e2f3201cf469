/* The content as of an LSN (src/enrich/versions.h): an event read after a content change
 * that committed after it gets the row as it was at its own commit; memory is bounded by
 * forgetting the oldest changes. Expected rows follow from the order of commits alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "enrich/versions.h"

static struct eng_content row(int32_t id, const char *type, int32_t length)
{
    return (struct eng_content){.content_id = id,
                                .content_type = (char *)type,
                                .type_len = (uint32_t)strlen(type),
                                .length_seconds = length};
}

/* The row an event of content id committed at lsn is enriched with: NULL for none. */
static const struct eng_content *as_of(struct eng_versions *v, int32_t id, uint64_t lsn)
{
    const struct eng_content *r;
    if (eng_versions_as_of(v, id, lsn, &r))
        return r;
    return eng_content_cache_get(eng_versions_latest(v), id);
}

static void test_event_between_changes_gets_the_row_of_its_commit(void **state)
{
    (void)state;
    struct eng_versions *v = eng_versions_create(0);
    struct eng_content r1 = row(1, "video", 300), r2 = row(1, "clip", 10);
    eng_versions_put(v, 100, &r1); /* snapshot read at 100 */
    eng_versions_put(v, 200, &r2); /* updated at 200 */
    assert_null(as_of(v, 1, 50));  /* before the row existed */
    assert_int_equal(as_of(v, 1, 150)->length_seconds, 300);
    assert_string_equal(as_of(v, 1, 150)->content_type, "video");
    assert_int_equal(as_of(v, 1, 200)->length_seconds, 10); /* the change's own commit */
    assert_int_equal(as_of(v, 1, 250)->length_seconds, 10);
    assert_string_equal(as_of(v, 1, 250)->content_type, "clip");
    /* unknown LSN: the newest */
    assert_int_equal(as_of(v, 1, 0)->length_seconds, 10);
    eng_versions_destroy(v);
}

static void test_delete_and_clear_are_versions_too(void **state)
{
    (void)state;
    struct eng_versions *v = eng_versions_create(0);
    struct eng_content a = row(1, "video", 300), b = row(2, "article", 60);
    eng_versions_put(v, 10, &a);
    eng_versions_put(v, 20, &b);
    eng_versions_remove(v, 30, 1);
    eng_versions_clear(v, 40);
    assert_int_equal(as_of(v, 1, 25)->length_seconds, 300);
    assert_null(as_of(v, 1, 35));
    assert_int_equal(as_of(v, 2, 35)->length_seconds, 60);
    assert_null(as_of(v, 2, 45));
    assert_int_equal(eng_content_cache_count(eng_versions_latest(v)), 0);
    eng_versions_destroy(v);
}

static void test_contents_are_independent(void **state)
{
    (void)state;
    struct eng_versions *v = eng_versions_create(0);
    for (int32_t id = 1; id <= 1000; id++) {
        struct eng_content r = row(id, "t", id);
        eng_versions_put(v, (uint64_t)id * 10, &r);
    }
    for (int32_t id = 1; id <= 1000; id++) {
        struct eng_content r = row(id, "t", -id);
        eng_versions_put(v, 100000 + (uint64_t)id, &r);
    }
    for (int32_t id = 1; id <= 1000; id++) {
        assert_int_equal(as_of(v, id, 50000)->length_seconds, id);
        assert_int_equal(as_of(v, id, 200000)->length_seconds, -id);
        assert_null(as_of(v, id, (uint64_t)id * 10 - 1));
    }
    eng_versions_destroy(v);
}

/* Past the cap the oldest changes are forgotten: an event older than every change kept
 * gets the oldest row kept; the newest rows never change. */
static void test_cap_forgets_the_oldest(void **state)
{
    (void)state;
    struct eng_versions *v = eng_versions_create(3);
    for (int32_t k = 1; k <= 5; k++) {
        struct eng_content r = row(7, "t", k);
        eng_versions_put(v, (uint64_t)k * 100, &r);
    }
    assert_int_equal(eng_versions_kept(v), 3);
    /* kept: the changes at 300, 400, 500 (replacing lengths 2, 3, 4) */
    assert_int_equal(as_of(v, 7, 350)->length_seconds, 3);
    assert_int_equal(as_of(v, 7, 450)->length_seconds, 4);
    assert_int_equal(as_of(v, 7, 150)->length_seconds, 2); /* 1 is forgotten */
    assert_int_equal(as_of(v, 7, 600)->length_seconds, 5);
    eng_versions_destroy(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_between_changes_gets_the_row_of_its_commit),
        cmocka_unit_test(test_delete_and_clear_are_versions_too),
        cmocka_unit_test(test_contents_are_independent),
        cmocka_unit_test(test_cap_forgets_the_oldest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
