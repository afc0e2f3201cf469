/* The pipeline core with fake sinks: the durable position is the lowest every sink
 * acknowledged, queues push back at their batch and byte caps, queued batches are merged up
 * to a sink's cap in order, failed writes are retried, and a sink that can spill parks what
 * waits once it has held the source back. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/clock.h"
#include "core/error.h"
#include "pipeline/pipeline.h"

/* A sink that records what it was given. While its gate is closed a write waits. */
struct fake_sink {
    struct eng_sink base;
    pthread_mutex_t m;
    pthread_cond_t c;
    bool gate_closed;
    int fail_next; /* writes that fail (retriably) before one succeeds */
    uint32_t writes, spills, max_write_events;
    uint32_t sizes[16]; /* of the first writes */
    uint64_t written, spilled;
    int64_t last_id; /* ids must arrive in increasing order */
    bool in_order;
    bool in_write;
};

static int fake_open(struct eng_sink *s, struct eng_error *err)
{
    (void)s;
    (void)err;
    return 0;
}

static void fake_close(struct eng_sink *s)
{
    (void)s;
}

static void record(struct fake_sink *f, const struct eng_batch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        if (b->events[i].event_id <= f->last_id)
            f->in_order = false;
        f->last_id = b->events[i].event_id;
    }
}

static int fake_write(struct eng_sink *s, const struct eng_batch *b, struct eng_error *err)
{
    struct fake_sink *f = (struct fake_sink *)s;
    pthread_mutex_lock(&f->m);
    f->in_write = true;
    pthread_cond_broadcast(&f->c);
    while (f->gate_closed)
        pthread_cond_wait(&f->c, &f->m);
    f->in_write = false;
    int rc = 0;
    if (f->fail_next > 0) {
        f->fail_next--;
        rc = eng_error_set(err, ENG_EIO, true, "fake failure");
    } else {
        record(f, b);
        if (f->writes < 16)
            f->sizes[f->writes] = b->n;
        f->writes++;
        f->written += b->n;
        if (b->n > f->max_write_events)
            f->max_write_events = b->n;
    }
    pthread_cond_broadcast(&f->c);
    pthread_mutex_unlock(&f->m);
    return rc;
}

static int fake_spill(struct eng_sink *s, const struct eng_batch *b, struct eng_error *err)
{
    (void)err;
    struct fake_sink *f = (struct fake_sink *)s;
    pthread_mutex_lock(&f->m);
    record(f, b);
    f->spills++;
    f->spilled += b->n;
    pthread_cond_broadcast(&f->c);
    pthread_mutex_unlock(&f->m);
    return 0;
}

static void fake_open_gate(struct fake_sink *f)
{
    pthread_mutex_lock(&f->m);
    f->gate_closed = false;
    pthread_cond_broadcast(&f->c);
    pthread_mutex_unlock(&f->m);
}

/* Hurry: the write in progress ends (a real sink would park what it has not delivered). */
static void fake_hurry(struct eng_sink *s)
{
    fake_open_gate((struct fake_sink *)s);
}

static void fake_destroy(struct eng_sink *s)
{
    struct fake_sink *f = (struct fake_sink *)s;
    pthread_mutex_destroy(&f->m);
    pthread_cond_destroy(&f->c);
    free(f);
}

static const struct eng_sink_ops fake_ops = {
    .name = "fake",
    .open = fake_open,
    .write = fake_write,
    .close = fake_close,
    .destroy = fake_destroy,
};

static const struct eng_sink_ops spilling_ops = {
    .name = "spilling",
    .open = fake_open,
    .write = fake_write,
    .close = fake_close,
    .spill = fake_spill,
    .hurry = fake_hurry,
    .destroy = fake_destroy,
};

static struct fake_sink *fake_create(const struct eng_sink_ops *ops, bool gate_closed)
{
    struct fake_sink *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->base.ops = ops;
    pthread_mutex_init(&f->m, NULL);
    pthread_cond_init(&f->c, NULL);
    f->gate_closed = gate_closed;
    f->in_order = true;
    return f;
}

/* Waits up to 5 s for the sink to have done something. */
static void wait_for(struct fake_sink *f, bool (*cond)(const struct fake_sink *))
{
    int64_t deadline = eng_clock_mono_us() + 5000000;
    pthread_mutex_lock(&f->m);
    while (!cond(f) && eng_clock_mono_us() < deadline) {
        pthread_mutex_unlock(&f->m);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&f->m);
    }
    bool ok = cond(f);
    pthread_mutex_unlock(&f->m);
    assert_true(ok);
}

static bool is_in_write(const struct fake_sink *f)
{
    return f->in_write;
}

/* A batch of n events with ids first.., ending at position pos. */
static struct eng_batch *make_batch(int64_t first, uint32_t n, uint64_t pos)
{
    struct eng_batch *b = eng_batch_create(n);
    for (uint32_t i = 0; i < n; i++)
        eng_batch_push(b)->event_id = first + i;
    b->position = pos;
    return b;
}

static struct eng_pipeline *start(struct fake_sink **fs, size_t n,
                                  const struct eng_pipeline_options *opt)
{
    struct eng_sink *sinks[4];
    for (size_t i = 0; i < n; i++)
        sinks[i] = &fs[i]->base;
    struct eng_error err;
    struct eng_pipeline *p = eng_pipeline_create(sinks, n, opt, &err);
    assert_non_null(p);
    assert_int_equal(eng_pipeline_start(p, &err), 0);
    return p;
}

static void test_durable_is_the_lowest_ack(void **state)
{
    (void)state;
    struct fake_sink *fs[2] = {fake_create(&fake_ops, false), fake_create(&fake_ops, true)};
    struct fake_sink *slow = fs[1];
    struct eng_pipeline *p = start(fs, 2, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            eng_pipeline_submit(p, make_batch(i * 10 + 1, 10, (uint64_t)(i + 1) * 100), 1000000),
            0);
    wait_for(slow, is_in_write);
    assert_false(eng_pipeline_wait_idle(p, 50000));
    assert_int_equal(eng_pipeline_durable_position(p), 0);
    assert_int_equal(eng_pipeline_submitted_position(p), 300);

    fake_open_gate(slow);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(eng_pipeline_durable_position(p), 300);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(fs[i]->written, 30);
        assert_true(fs[i]->in_order);
    }
    eng_pipeline_destroy(p);
}

static void test_full_queue_pushes_back(void **state)
{
    (void)state;
    struct fake_sink *f = fake_create(&fake_ops, true);
    struct eng_pipeline_options opt = {.queue_depth = 3};
    struct eng_pipeline *p = start(&f, 1, &opt);
    for (int i = 0; i < 3; i++)
        assert_int_equal(eng_pipeline_submit(p, make_batch(i + 1, 1, (uint64_t)i + 1), 1000000), 0);
    struct eng_batch *b = make_batch(4, 1, 4);
    assert_int_equal(eng_pipeline_submit(p, b, 20000), ENG_EAGAIN);
    fake_open_gate(f);
    assert_int_equal(eng_pipeline_submit(p, b, 5000000), 0); /* the batch was still ours */
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(f->written, 4);
    eng_pipeline_destroy(p);
}

static void test_byte_cap_pushes_back(void **state)
{
    (void)state;
    struct fake_sink *f = fake_create(&fake_ops, true);
    /* 1000 events are over a 1-byte cap: the first batch fills the queue on its own, and
     * is still accepted, so a batch larger than the cap never deadlocks. */
    struct eng_pipeline_options opt = {.queue_bytes = 1};
    struct eng_pipeline *p = start(&f, 1, &opt);
    assert_int_equal(eng_pipeline_submit(p, make_batch(1, 1000, 1), 1000000), 0);
    struct eng_batch *b = make_batch(1001, 1, 2);
    assert_int_equal(eng_pipeline_submit(p, b, 20000), ENG_EAGAIN);
    fake_open_gate(f);
    assert_int_equal(eng_pipeline_submit(p, b, 5000000), 0);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(f->written, 1001);
    eng_pipeline_destroy(p);
}

static void test_queued_batches_merge_up_to_the_sink_cap(void **state)
{
    (void)state;
    struct fake_sink *f = fake_create(&fake_ops, true);
    f->base.merge_max_events = 4;
    struct eng_pipeline *p = start(&f, 1, NULL);
    assert_int_equal(eng_pipeline_submit(p, make_batch(1, 1, 1), 1000000), 0);
    wait_for(f, is_in_write); /* the first write holds batch 1 alone */
    for (int i = 2; i <= 10; i++)
        assert_int_equal(eng_pipeline_submit(p, make_batch(i, 1, (uint64_t)i), 1000000), 0);
    fake_open_gate(f);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(f->written, 10);
    assert_int_equal(f->writes, 4); /* 1, then 4 + 4 + 1 */
    assert_int_equal(f->max_write_events, 4);
    assert_true(f->in_order);
    assert_int_equal(eng_pipeline_durable_position(p), 10);
    eng_pipeline_destroy(p);
}

static void test_failed_writes_are_retried(void **state)
{
    (void)state;
    struct fake_sink *f = fake_create(&fake_ops, false);
    f->fail_next = 2;
    struct eng_pipeline_options opt = {.backoff_base_us = 1000, .backoff_cap_us = 2000};
    struct eng_pipeline *p = start(&f, 1, &opt);
    assert_int_equal(eng_pipeline_submit(p, make_batch(1, 5, 7), 1000000), 0);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(f->fail_next, 0);
    assert_int_equal(f->written, 5);
    assert_int_equal(eng_pipeline_durable_position(p), 7);
    eng_pipeline_destroy(p);
}

struct submitter {
    struct eng_pipeline *p;
    struct eng_batch *b;
    int rc;
};

static void *submit_thread(void *arg)
{
    struct submitter *s = arg;
    s->rc = eng_pipeline_submit(s->p, s->b, 5000000);
    return NULL;
}

static void test_a_sink_that_holds_the_source_back_spills(void **state)
{
    (void)state;
    struct fake_sink *fs[2] = {fake_create(&fake_ops, false), fake_create(&spilling_ops, true)};
    struct fake_sink *api = fs[1];
    struct eng_pipeline_options opt = {.queue_depth = 2, .spill_after_us = 10000};
    struct eng_pipeline *p = start(fs, 2, &opt);
    assert_int_equal(eng_pipeline_submit(p, make_batch(1, 1, 1), 1000000), 0);
    wait_for(api, is_in_write);
    assert_int_equal(eng_pipeline_submit(p, make_batch(2, 1, 2), 1000000), 0);

    /* The queue is full: this submit waits, hurries the sink after 10 ms, and the sink
     * parks what waits instead of writing it. */
    struct submitter s = {.p = p, .b = make_batch(3, 1, 3)};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, submit_thread, &s), 0);
    pthread_join(t, NULL);
    assert_int_equal(s.rc, 0);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_true(api->spills >= 1);
    assert_int_equal(api->written + api->spilled, 3);
    assert_true(api->written <= 2); /* batch 1, released by the hurry, maybe batch 3 */
    assert_true(api->in_order);
    assert_int_equal(fs[0]->written, 3);
    assert_int_equal(eng_pipeline_durable_position(p), 3);
    eng_pipeline_destroy(p);
}

/* Events of transactions committing at lsns[i], two events each, ids from first. */
static struct eng_batch *make_txn_batch(int64_t first, const uint64_t *lsns, uint32_t ntx)
{
    struct eng_batch *b = eng_batch_create(2 * ntx);
    for (uint32_t t = 0; t < ntx; t++) {
        for (uint32_t i = 0; i < 2; i++) {
            struct eng_event *e = eng_batch_push(b);
            e->event_id = first++;
            e->txn_lsn = lsns[t];
            e->txn_seq = i;
        }
    }
    b->position = lsns[ntx - 1] + 8;
    return b;
}

static char *read_text(const char *path)
{
    static char text[1024];
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

/* Runs one pipeline over a fresh fake sink that tracks progress in path, submits the
 * transactions, and returns how many events the sink was given. */
static uint64_t run_with_progress(const char *path, const char *identity, uint64_t max_lsn,
                                  const uint64_t *lsns, uint32_t ntx)
{
    struct fake_sink *f = fake_create(&fake_ops, false);
    struct eng_pipeline *p = start(&f, 1, NULL);
    eng_pipeline_track_progress(p, path, identity, max_lsn);
    assert_int_equal(eng_pipeline_submit(p, make_txn_batch(1, lsns, ntx), 1000000), 0);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(eng_pipeline_durable_position(p), lsns[ntx - 1] + 8);
    uint64_t written = f->written;
    assert_true(f->in_order);
    eng_pipeline_destroy(p);
    return written;
}

static void test_progress_spares_a_sink_what_it_has(void **state)
{
    (void)state;
    char path[] = "/tmp/engage-progress-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    const uint64_t lsns[] = {0x100, 0x200, 0x300};

    /* No file yet: everything is written; the file then names the last event. */
    assert_int_equal(run_with_progress(path, "sys slot", 0x1000, lsns, 2), 4);
    assert_string_equal(read_text(path), "engage-sink-progress 1\nidentity sys slot\n"
                                         "sink fake 200 1 0\n");
    /* Redelivered from the start with one more transaction: only the new one is written. */
    assert_int_equal(run_with_progress(path, "sys slot", 0x1000, lsns, 3), 2);
    assert_string_equal(read_text(path), "engage-sink-progress 1\nidentity sys slot\n"
                                         "sink fake 300 1 0\n");
    /* Another server or slot, or a position the server has not reached: not trusted. */
    assert_int_equal(run_with_progress(path, "other slot", 0x1000, lsns, 3), 6);
    assert_int_equal(run_with_progress(path, "other slot", 0x2ff, lsns, 3), 6);
    assert_int_equal(run_with_progress(path, "other slot", 0, lsns, 3), 6); /* a new slot */
    unlink(path);
}

/* Events of two streams (Kafka partitions) interleaved: stream s has offsets 1..counts[s]. */
static struct eng_batch *make_stream_batch(const uint32_t counts[2], uint64_t position)
{
    struct eng_batch *b = eng_batch_create(counts[0] + counts[1]);
    int64_t id = 1;
    for (uint32_t i = 1; i <= counts[0] || i <= counts[1]; i++) {
        for (uint32_t st = 0; st < 2; st++) {
            if (i > counts[st])
                continue;
            struct eng_event *e = eng_batch_push(b);
            e->event_id = id++;
            e->stream = st;
            e->txn_lsn = i;
        }
    }
    b->position = position;
    return b;
}

static uint64_t run_streams(const char *path, const uint32_t counts[2], uint64_t position)
{
    struct fake_sink *f = fake_create(&fake_ops, false);
    struct eng_pipeline *p = start(&f, 1, NULL);
    eng_pipeline_track_progress(p, path, "kafka t g", UINT64_MAX);
    assert_int_equal(eng_pipeline_submit(p, make_stream_batch(counts, position), 1000000), 0);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    uint64_t written = f->written;
    assert_true(f->in_order);
    eng_pipeline_destroy(p);
    return written;
}

/* With several streams the events a sink has are not a prefix: after a restart each stream
 * is sent from where that sink's own progress in it ends, and no further back. */
static void test_progress_per_stream(void **state)
{
    (void)state;
    char path[] = "/tmp/engage-progress-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    assert_int_equal(run_streams(path, (const uint32_t[2]){4, 4}, 1), 8);
    assert_string_equal(read_text(path), "engage-sink-progress 1\nidentity kafka t g\n"
                                         "sink fake 4 0 0\nsink fake 4 0 0 1\n");
    /* Read again from further back, with more of each: only offsets 5, 6 of stream 0 and 5
     * of stream 1 are new, interleaved with what the sink has. */
    assert_int_equal(run_streams(path, (const uint32_t[2]){6, 5}, 2), 3);
    assert_string_equal(read_text(path), "engage-sink-progress 1\nidentity kafka t g\n"
                                         "sink fake 6 0 0\nsink fake 5 0 0 1\n");
    unlink(path);
}

static void test_a_large_batch_goes_in_parts(void **state)
{
    (void)state;
    char path[] = "/tmp/engage-progress-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    struct fake_sink *f = fake_create(&fake_ops, false);
    f->base.merge_max_events = 4;
    f->fail_next = 1; /* the first part is written twice */
    struct eng_pipeline_options opt = {.backoff_base_us = 1000, .backoff_cap_us = 2000};
    struct eng_pipeline *p = start(&f, 1, &opt);
    eng_pipeline_track_progress(p, path, "sys slot", 0);
    const uint64_t lsns[] = {0x100, 0x200, 0x300, 0x400, 0x500};
    assert_int_equal(eng_pipeline_submit(p, make_txn_batch(1, lsns, 5), 1000000), 0);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(f->written, 10);
    assert_int_equal(f->writes, 3); /* 4 + 4 + 2 */
    assert_int_equal(f->max_write_events, 4);
    assert_true(f->in_order);
    assert_string_equal(read_text(path), "engage-sink-progress 1\nidentity sys slot\n"
                                         "sink fake 500 1 0\n");
    eng_pipeline_destroy(p);
    unlink(path);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A restart after a write of 3 events was interrupted: that write goes again first, with
 * the same 3 events (so a sink that groups them into requests groups them the same way),
 * even though the source queues them again one transaction at a time; then the rest. */
static void test_the_interrupted_write_goes_again_whole(void **state)
{
    (void)state;
    char path[] = "/tmp/engage-progress-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, "engage-sink-progress 1\nidentity sys slot\nsink fake 100 1 3\n");
    struct fake_sink *f = fake_create(&fake_ops, false);
    f->base.merge_max_events = 4;
    struct eng_pipeline *p = start(&f, 1, NULL);
    eng_pipeline_track_progress(p, path, "sys slot", 0x1000);
    const uint64_t lsns[] = {0x100, 0x200, 0x300, 0x400, 0x500};
    /* Redelivered one transaction at a time, as a source catching up may, after a batch
     * without events (a transaction that only changed content). */
    struct eng_batch *empty = eng_batch_create(1);
    empty->position = 0x50;
    assert_int_equal(eng_pipeline_submit(p, empty, 1000000), 0);
    for (uint32_t t = 0; t < 5; t++)
        assert_int_equal(eng_pipeline_submit(p, make_txn_batch(1 + 2 * t, &lsns[t], 1), 1000000),
                         0);
    assert_true(eng_pipeline_wait_idle(p, 10000000));
    assert_int_equal(f->written, 8);          /* the first transaction was durable already */
    assert_int_equal(f->sizes[0], 3);         /* 0x200 x2, 0x300 #0: the interrupted write */
    assert_int_equal(f->max_write_events, 4); /* then parts of the sink's size at most */
    assert_true(f->in_order);
    assert_string_equal(read_text(path), "engage-sink-progress 1\nidentity sys slot\n"
                                         "sink fake 500 1 0\n");
    eng_pipeline_destroy(p);
    unlink(path);
}

/* A sink that writes a large batch in parts and is hurried during the first part parks the
 * rest of the batch at once, rather than part by part. */
static void test_a_hurried_sink_parks_the_rest_of_a_large_batch(void **state)
{
    (void)state;
    struct fake_sink *fs[2] = {fake_create(&fake_ops, false), fake_create(&spilling_ops, true)};
    struct fake_sink *api = fs[1];
    api->base.merge_max_events = 1;
    struct eng_pipeline_options opt = {.queue_depth = 2, .spill_after_us = 10000};
    struct eng_pipeline *p = start(fs, 2, &opt);
    const uint64_t lsns[] = {0x100, 0x200, 0x300, 0x400, 0x500};
    assert_int_equal(eng_pipeline_submit(p, make_txn_batch(1, lsns, 5), 1000000), 0);
    wait_for(api, is_in_write); /* the first part, event 1 */
    const uint64_t more[] = {0x600};
    assert_int_equal(eng_pipeline_submit(p, make_txn_batch(11, more, 1), 1000000), 0);
    struct submitter sub = {.p = p, .b = make_txn_batch(13, (const uint64_t[]){0x700}, 1)};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, submit_thread, &sub), 0);
    pthread_join(t, NULL);
    assert_int_equal(sub.rc, 0);
    assert_true(eng_pipeline_wait_idle(p, 5000000));
    assert_int_equal(api->written + api->spilled, 14);
    /* The first part (event 1) was written; the other 9 events of the large batch were parked
     * in one go; the two small batches after it were written, unless the lane was hurried
     * again before it took them. */
    assert_true(api->spilled >= 9);
    assert_true(api->spills <= 2);
    assert_true(api->in_order);
    eng_pipeline_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durable_is_the_lowest_ack),
        cmocka_unit_test(test_full_queue_pushes_back),
        cmocka_unit_test(test_byte_cap_pushes_back),
        cmocka_unit_test(test_queued_batches_merge_up_to_the_sink_cap),
        cmocka_unit_test(test_failed_writes_are_retried),
        cmocka_unit_test(test_a_sink_that_holds_the_source_back_spills),
        cmocka_unit_test(test_progress_spares_a_sink_what_it_has),
        cmocka_unit_test(test_progress_per_stream),
        cmocka_unit_test(test_a_large_batch_goes_in_parts),
        cmocka_unit_test(test_the_interrupted_write_goes_again_whole),
        cmocka_unit_test(test_a_hurried_sink_parks_the_rest_of_a_large_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
