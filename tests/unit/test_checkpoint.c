/* The checkpoint (src/checkpoint) with a fake source and fake sinks, and the durable-replace
 * helper (src/core/durable.c) under a crash at every step (issue 9, item 2). Expected values
 * come from the contract in checkpoint.h and durable.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "checkpoint/checkpoint.h"
#include "core/durable.h"

/* ---- a fake source over fake sinks ---- */

#define NSINKS 3

struct fake {
    uint64_t sink_pos[NSINKS]; /* what each sink made durable */
    int fail_saves;            /* the next this many saves fail */
    int eagain_saves;          /* the next this many saves say "not yet" */
    uint64_t saved;            /* the last position saved */
    uint64_t acked[1000];      /* every acknowledgement, in order */
    size_t nacked;
    int saves, failed;
};

static uint64_t fake_durable(void *ctx)
{
    struct fake *f = ctx;
    uint64_t low = f->sink_pos[0];
    for (int i = 1; i < NSINKS; i++)
        low = f->sink_pos[i] < low ? f->sink_pos[i] : low;
    return low;
}

static int fake_save(void *ctx, uint64_t pos, struct eng_error *err)
{
    struct fake *f = ctx;
    f->saves++;
    if (f->eagain_saves > 0) {
        f->eagain_saves--;
        return ENG_EAGAIN;
    }
    if (f->fail_saves > 0) {
        f->fail_saves--;
        f->failed++;
        return eng_error_set(err, ENG_EIO, false, "disk full");
    }
    f->saved = pos;
    return 0;
}

static void fake_ack(void *ctx, uint64_t pos)
{
    struct fake *f = ctx;
    /* Never acknowledged before it was saved. */
    assert_int_equal(f->saved, pos);
    f->acked[f->nacked++] = pos;
}

static void make(struct eng_checkpoint *cp, struct fake *f, uint64_t start)
{
    memset(f, 0, sizeof(*f));
    const struct eng_checkpoint_ops ops = {fake_durable, fake_save, fake_ack, f};
    eng_checkpoint_init(cp, &ops, start);
}

static void test_ack_never_passes_the_lowest_sink(void **state)
{
    (void)state;
    struct eng_checkpoint cp;
    struct fake f;
    make(&cp, &f, 0);
    srand(7);
    for (int round = 0; round < 500; round++) {
        int i = rand() % NSINKS;
        f.sink_pos[i] += (uint64_t)(rand() % 5); /* sinks move on at their own pace */
        bool acked = eng_checkpoint_tick(&cp);
        uint64_t low = fake_durable(&f);
        assert_true(cp.acked <= low);
        if (acked)
            assert_int_equal(cp.acked, low);
    }
    for (size_t k = 1; k < f.nacked; k++)
        assert_true(f.acked[k] > f.acked[k - 1]); /* strictly forward */
    assert_true(f.nacked > 10);
}

static void test_no_ack_when_nothing_new(void **state)
{
    (void)state;
    struct eng_checkpoint cp;
    struct fake f;
    make(&cp, &f, 100); /* restored at 100 */
    f.sink_pos[0] = f.sink_pos[1] = f.sink_pos[2] = 100;
    assert_false(eng_checkpoint_tick(&cp));
    assert_int_equal(f.saves, 0);
    f.sink_pos[0] = f.sink_pos[1] = 150; /* one sink still at 100 */
    assert_false(eng_checkpoint_tick(&cp));
    assert_int_equal(f.nacked, 0);
}

static void test_failed_save_is_retried_before_any_ack(void **state)
{
    (void)state;
    struct eng_checkpoint cp;
    struct fake f;
    make(&cp, &f, 0);
    f.sink_pos[0] = f.sink_pos[1] = f.sink_pos[2] = 40;
    f.fail_saves = 3;
    for (int i = 0; i < 3; i++) {
        assert_false(eng_checkpoint_tick(&cp));
        assert_int_equal(cp.acked, 0);
    }
    assert_int_equal(cp.failed_saves, 3);
    assert_int_equal(f.nacked, 0);
    f.sink_pos[0] = f.sink_pos[1] = f.sink_pos[2] = 60; /* the sinks went on meanwhile */
    assert_true(eng_checkpoint_tick(&cp));
    assert_int_equal(f.saves, 4);
    assert_int_equal(cp.acked, 60);
    assert_int_equal(f.nacked, 1);
    assert_int_equal(cp.failed_saves, 0);
}

static void test_not_yet_is_not_a_failure(void **state)
{
    (void)state;
    struct eng_checkpoint cp;
    struct fake f;
    make(&cp, &f, 0);
    f.sink_pos[0] = f.sink_pos[1] = f.sink_pos[2] = 5;
    f.eagain_saves = 1;
    assert_false(eng_checkpoint_tick(&cp));
    assert_int_equal(cp.failed_saves, 0);
    assert_true(eng_checkpoint_tick(&cp));
    assert_int_equal(cp.acked, 5);
}

/* ---- durable replace under a crash at every step ---- */

static const char *crash_at;
static int writer_crash; /* 1: the writer dies half way through its output */

static void crash_hook(const char *step)
{
    if (crash_at != NULL && strcmp(step, crash_at) == 0)
        _exit(0); /* no atexit, no stdio flush: as abrupt as the process can end itself */
}

static int write_text(FILE *f, void *arg, struct eng_error *err)
{
    (void)err;
    const char *text = arg;
    if (writer_crash) {
        fwrite(text, 1, strlen(text) / 2, f);
        fflush(f);
        _exit(0);
    }
    fputs(text, f);
    return 0;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void crash_once(const char *dir, const char *step, int in_writer, const char *new_text)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        crash_at = step;
        writer_crash = in_writer;
        eng_durable_step_hook = crash_hook;
        struct eng_error err;
        int rc = eng_durable_replace(dir, "state", write_text, (void *)new_text, &err);
        _exit(rc == 0 ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
}

static void test_durable_replace_leaves_old_or_new(void **state)
{
    (void)state;
    char dir[] = "/tmp/engage-durable-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/state", dir);
    const char *old_text = "engage-test 1\nold old old old old old\nend\n";
    const char *new_text = "engage-test 1\nnew new new new new new new new\nend\n";
    struct eng_error err;
    assert_int_equal(eng_durable_replace(dir, "state", write_text, (void *)old_text, &err), 0);

    struct {
        const char *step;
        int in_writer;
        const char *want; /* what the file must hold after a crash there */
    } cases[] = {
        {"opened", 0, old_text},  /* before a byte was written */
        {NULL, 1, old_text},      /* half way through the writer */
        {"written", 0, old_text}, /* synced, not yet renamed */
        {"renamed", 0, new_text}, /* renamed, directory not yet synced */
        {"never", 0, new_text},   /* no crash */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(eng_durable_replace(dir, "state", write_text, (void *)old_text, &err), 0);
        crash_once(dir, cases[i].step, cases[i].in_writer, new_text);
        const char *got = slurp(path);
        assert_non_null(got);
        assert_string_equal(got, cases[i].want);
    }
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ack_never_passes_the_lowest_sink),
        cmocka_unit_test(test_no_ack_when_nothing_new),
        cmocka_unit_test(test_failed_save_is_retried_before_any_ack),
        cmocka_unit_test(test_not_yet_is_not_a_failure),
        cmocka_unit_test(test_durable_replace_leaves_old_or_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
