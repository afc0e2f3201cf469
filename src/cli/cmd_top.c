/* engage top: the top content of the last 10 minutes (Redis's top:content:10m), once, or
 * refreshed every second while stdout is a terminal. */
#include <hiredis/hiredis.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../sink/redis.h"
#include "commands.h"
#include "options.h"
#include "sinks.h"

#define TOP_N 10

static const char usage[] =
    "usage: engage top --redis URL\n"
    "\n"
    "Shows the top content of the last 10 minutes from Redis (top:content:10m, which engage run\n"
    "rebuilds after every batch): rank, content_id, events. On a terminal it refreshes every\n"
    "second until q (or Ctrl-C) is pressed; otherwise it prints once.\n"
    "\n"
    "  --redis URL            redis://[:pass@]host:port[/db]             (ENGAGE_REDIS)\n"
    "  --config FILE          `name = value` lines with these option names (ENGAGE_CONFIG)\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* Prints the table; returns false when Redis could not be read. watch adds the screen clear
 * and the line that says how to quit. */
static bool show(redisContext *c, bool watch)
{
    redisReply *top = redisCommand(c, "ZREVRANGE top:content:10m 0 %d WITHSCORES", TOP_N - 1);
    redisReply *end = top != NULL ? redisCommand(c, "GET engage:top:end") : NULL;
    bool ok = top != NULL && end != NULL && top->type == REDIS_REPLY_ARRAY;
    if (!ok) {
        fprintf(stderr, "engage top: could not read top:content:10m: %s\n",
                top == NULL || end == NULL       ? c->errstr
                : top->type == REDIS_REPLY_ERROR ? top->str
                                                 : "unexpected reply");
        goto out;
    }
    if (watch)
        fputs("\033[H\033[2J", stdout);
    if (end->type == REDIS_REPLY_STRING && end->len == 12)
        printf("top content, the 10 minutes to %.4s-%.2s-%.2s %.2s:%.2s UTC\n", end->str,
               end->str + 4, end->str + 6, end->str + 8, end->str + 10);
    else
        printf("top content, the last 10 minutes\n");
    printf("%4s  %12s  %10s\n", "rank", "content_id", "events");
    for (size_t i = 0; i + 1 < top->elements; i += 2) {
        const redisReply *member = top->element[i], *score = top->element[i + 1];
        printf("%4zu  %12.*s  %10.*s\n", i / 2 + 1, (int)member->len, member->str, (int)score->len,
               score->str);
    }
    if (top->elements == 0)
        printf("(no events in the window)\n");
    if (watch)
        printf("\nrefreshed every second; q or Ctrl-C quits\n");
    fflush(stdout);
out:
    if (top != NULL)
        freeReplyObject(top);
    if (end != NULL)
        freeReplyObject(end);
    return ok;
}

/* The terminal on stdin, switched to reading single keys without echo while top watches, so
 * that q quits without Enter; restored before top returns. */
struct keys {
    bool raw;
    struct termios saved;
};

static void keys_open(struct keys *k)
{
    k->raw = false;
    if (isatty(STDIN_FILENO) != 1 || tcgetattr(STDIN_FILENO, &k->saved) != 0)
        return;
    struct termios t = k->saved;
    t.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    k->raw = tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0;
}

static void keys_close(struct keys *k)
{
    if (k->raw)
        tcsetattr(STDIN_FILENO, TCSANOW, &k->saved);
    k->raw = false;
}

/* Waits up to ms for a key on stdin (or just sleeps when stdin is not a terminal); returns
 * true when q or Q was pressed, or stdin reached its end. */
static bool wait_quit_key(const struct keys *k, int ms)
{
    if (!k->raw) {
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        return false;
    }
    struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0)
        return false;
    char ch;
    ssize_t n = read(STDIN_FILENO, &ch, 1);
    return n == 0 || (n == 1 && (ch == 'q' || ch == 'Q'));
}

int eng_cmd_top(int argc, char **argv)
{
    struct eng_options o;
    int prc = eng_options_parse(&o, ENG_CMD_TOP, argc, argv, usage);
    if (prc != 0) {
        eng_options_free(&o);
        return prc > 0 ? 0 : 2;
    }
    int status = 2;
    struct eng_redis_url url = {0};
    struct eng_error err;
    eng_error_clear(&err);
    redisContext *c = NULL;
    struct keys keys = {0};
    if (eng_opt(&o, OPT_REDIS) == NULL) {
        fprintf(stderr, "engage top: --redis (or ENGAGE_REDIS) is required\n\n%s", usage);
        goto out;
    }
    if (eng_redis_url_parse(eng_opt(&o, OPT_REDIS), &url, &err) != 0) {
        fprintf(stderr, "engage top: %s\n", err.msg);
        goto out;
    }
    status = 1;
    c = eng_redis_connect(&url, 2000, 5000, &err);
    if (c == NULL) {
        fprintf(stderr, "engage top: %s\n", err.msg);
        goto out;
    }
    bool watch = isatty(STDOUT_FILENO) == 1;
    eng_cli_catch_stop_signals(on_signal);
    if (watch)
        keys_open(&keys);
    do {
        if (!show(c, watch))
            goto out;
        for (int i = 0; watch && i < 10 && !stop_requested; i++) {
            if (wait_quit_key(&keys, 100))
                stop_requested = 1;
        }
    } while (watch && !stop_requested);
    status = 0;
out:
    keys_close(&keys);
    if (c != NULL)
        redisFree(c);
    eng_redis_url_free(&url);
    eng_options_free(&o);
    return status;
}
