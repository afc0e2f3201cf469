#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stdout.h"

struct stdout_sink {
    struct eng_sink base; /* first: the pipeline sees a struct eng_sink */
    int fd;
};

static int stdout_open(struct eng_sink *s, struct eng_error *err)
{
    (void)s;
    (void)err;
    return 0;
}

static int stdout_write(struct eng_sink *s, const struct eng_batch *b, struct eng_error *err)
{
    struct stdout_sink *o = (struct stdout_sink *)s;
    size_t off = 0;
    while (off < b->jsonl.len) {
        ssize_t w = write(o->fd, b->jsonl.data + off, b->jsonl.len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            /* Only what was not written is retried by the next attempt: the whole batch is
             * written again, and lines already out are duplicated, as at-least-once allows. */
            return eng_error_set(err, ENG_EIO, errno != EPIPE, "could not write: %s",
                                 strerror(errno));
        }
        off += (size_t)w;
    }
    return 0;
}

static void stdout_close(struct eng_sink *s)
{
    (void)s;
}

static void stdout_destroy(struct eng_sink *s)
{
    free(s);
}

static const struct eng_sink_ops stdout_ops = {
    .name = "stdout",
    .open = stdout_open,
    .write = stdout_write,
    .close = stdout_close,
    .destroy = stdout_destroy,
};

struct eng_sink *eng_stdout_sink_create(int fd)
{
    struct stdout_sink *o = eng_calloc(1, sizeof(*o));
    o->base.ops = &stdout_ops;
    o->fd = fd;
    return &o->base;
}
