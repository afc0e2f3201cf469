/* redis_sink_check: drives the Redis sink against a real redis-server and checks every key it
 * writes exactly, against a model computed here from the events themselves.
 *
 *   redis_sink_check [--url redis://host:port[/db]] [--redis-server PATH] [--ids N]
 *
 * Without --url it starts its own redis-server on a free loopback port in a temporary
 * directory and stops it at exit (only that process). With --url it uses databases db, db+1
 * and db+2 of that server, which must be empty, and empties them again at the end.
 * --ids sets how many sequential event ids the seen-set memory measurement writes (default
 * 4 * 2^20). Exit status 0 when every check passed.
 *
 * Build (ASan+UBSan, the project's warning flags), from the repository root:
 *   gcc -std=c17 -D_GNU_SOURCE -Wall -Wextra -Wpedantic -Werror -Wshadow -Wstrict-prototypes \
 *       -Wmissing-prototypes -Wformat=2 -Wconversion -Wno-sign-conversion -Wimplicit-fallthrough \
 *       -Werror=vla -fsanitize=address,undefined -fno-sanitize-recover=all -Isrc \
 *       -o redis_sink_check tests/sinkcheck/redis_sink_check.c src/sink/redis.c \
 *       src/core/{error,log,buf,event}.c src/admin/metrics.c -lhiredis -lpthread
 * For the timings, build the same with -O2 and no sanitizers. */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/metrics.h"
#include "core/clock.h"
#include "sink/redis.h"

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static _Noreturn void die(const char *msg)
{
    fprintf(stderr, "redis_sink_check: %s\n", msg);
    exit(2);
}

/* ---- the redis-server we start (and only that one is ever stopped) ---- */

static pid_t server_pid = -1;
static char server_dir[64];

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        die("cannot find a free port");
    close(fd);
    return ntohs(a.sin_port);
}

static void stop_server(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        int64_t deadline = eng_clock_mono_us() + 10 * 1000000;
        while (waitpid(server_pid, NULL, WNOHANG) == 0) {
            if (eng_clock_mono_us() > deadline) {
                kill(server_pid, SIGKILL);
                waitpid(server_pid, NULL, 0);
                break;
            }
            sleep_ms(10);
        }
        server_pid = -1;
    }
    if (server_dir[0] != '\0') {
        DIR *d = opendir(server_dir);
        struct dirent *de;
        char path[512];
        while (d != NULL && (de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", server_dir, de->d_name);
            unlink(path);
        }
        if (d != NULL)
            closedir(d);
        rmdir(server_dir);
        server_dir[0] = '\0';
    }
}

/* Starts redis-server on a free port; retries with another port if it lost a race for one. */
static int start_server(const char *bin)
{
    snprintf(server_dir, sizeof(server_dir), "/tmp/engage-redis-XXXXXX");
    if (mkdtemp(server_dir) == NULL)
        die("mkdtemp failed");
    atexit(stop_server);
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = free_port();
        char portstr[16], logfile[128];
        snprintf(portstr, sizeof(portstr), "%d", port);
        snprintf(logfile, sizeof(logfile), "%s/redis.log", server_dir);
        pid_t pid = fork();
        if (pid < 0)
            die("fork failed");
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the check */
            execlp(bin, bin, "--port", portstr, "--bind", "127.0.0.1", "--dir", server_dir,
                   "--save", "", "--appendonly", "no", "--logfile", logfile, "--daemonize", "no",
                   (char *)NULL);
            _exit(127);
        }
        server_pid = pid;
        int64_t deadline = eng_clock_mono_us() + 10 * 1000000;
        while (eng_clock_mono_us() < deadline) {
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                server_pid = -1;
                break; /* exited: port taken or binary missing */
            }
            struct timeval tv = {1, 0};
            redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
            if (c != NULL && c->err == 0) {
                redisReply *r = redisCommand(c, "PING");
                bool ok = r != NULL && r->type == REDIS_REPLY_STATUS;
                freeReplyObject(r);
                redisFree(c);
                if (ok)
                    return port;
            } else if (c != NULL) {
                redisFree(c);
            }
            sleep_ms(10);
        }
        if (server_pid > 0) {
            stop_server();
            die("redis-server did not answer within 10 s");
        }
    }
    die("could not start redis-server (see its log in the temporary directory)");
}

/* ---- a checking connection ---- */

static redisContext *check_conn;

static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(check_conn, fmt, ap);
    va_end(ap);
    if (r == NULL) {
        fprintf(stderr, "check connection: %s\n", check_conn->errstr);
        exit(2);
    }
    return r;
}

static long long cmd_int(const char *fmt, const char *arg)
{
    redisReply *r = cmd(fmt, arg);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -999999;
    if (r->type == REDIS_REPLY_ERROR)
        fprintf(stderr, "reply error: %s\n", r->str);
    freeReplyObject(r);
    return v;
}

static void select_db(int db)
{
    redisReply *r = cmd("SELECT %d", db);
    if (r->type == REDIS_REPLY_ERROR)
        die("SELECT failed");
    freeReplyObject(r);
}

/* ---- batches and the model ---- */

static int64_t fake_now;

static int64_t now_fn(void)
{
    return fake_now;
}

struct mev {
    int64_t id;
    int64_t ts;
    int32_t cid;
    bool bucket; /* counted in a bucket when first applied */
    char *json;
};

static struct mev *model;
static size_t model_n, model_cap;
static int64_t *idset; /* open addressing, -1 empty */
static size_t idset_cap;

static bool idset_add(int64_t id)
{
    if ((model_n + 1) * 2 > idset_cap) {
        size_t ncap = idset_cap ? idset_cap * 2 : 1024;
        int64_t *n = eng_malloc(ncap * sizeof(*n));
        for (size_t i = 0; i < ncap; i++)
            n[i] = -1;
        for (size_t i = 0; i < idset_cap; i++) {
            if (idset[i] < 0)
                continue;
            size_t h = ((uint64_t)idset[i] * 0x9E3779B97F4A7C15u) & (ncap - 1);
            while (n[h] >= 0)
                h = (h + 1) & (ncap - 1);
            n[h] = idset[i];
        }
        free(idset);
        idset = n;
        idset_cap = ncap;
    }
    size_t h = ((uint64_t)id * 0x9E3779B97F4A7C15u) & (idset_cap - 1);
    while (idset[h] >= 0) {
        if (idset[h] == id)
            return false;
        h = (h + 1) & (idset_cap - 1);
    }
    idset[h] = id;
    return true;
}

/* Formats a UTC time as the JSON's event_ts or, with minute, as a bucket name. */
static void fmt_ts(int64_t ts_us, char *out, size_t n, bool minute)
{
    time_t t = (time_t)(ts_us >= 0 ? ts_us / 1000000 : -((-ts_us + 999999) / 1000000));
    struct tm tm;
    gmtime_r(&t, &tm);
    if (minute)
        strftime(out, n, "%Y%m%d%H%M", &tm);
    else
        strftime(out, n, "%Y-%m-%d %H:%M:%S", &tm);
}

/* Appends one event with a realistic enriched JSON. */
static void add_event(struct eng_batch *b, int64_t id, int32_t cid, int64_t ts_us)
{
    struct eng_event *e = eng_batch_push(b);
    e->event_id = id;
    e->content_id = cid;
    e->event_ts_us = ts_us;
    e->user_id = (int32_t)(id % 1000);
    e->duration_ms = 7000;
    e->length_seconds = 300;
    char ts[32];
    fmt_ts(ts_us, ts, sizeof(ts), false);
    uint32_t off = (uint32_t)b->jsonl.len;
    eng_buf_printf(&b->jsonl,
                   "{\"event_id\":%lld,\"content_id\":%d,\"user_id\":%d,\"event_type\":\"play\","
                   "\"event_ts\":\"%s\",\"duration_ms\":7000,\"device\":\"web\","
                   "\"content_type\":\"video\",\"length_seconds\":300,"
                   "\"engagement_seconds\":7.0,\"engagement_pct\":0.02}",
                   (long long)id, cid, e->user_id, ts);
    e->json.off = off;
    e->json.len = (uint32_t)(b->jsonl.len - off);
    eng_buf_putc(&b->jsonl, '\n');
}

/* Records what writing b at fake_now must have changed (the first copy of an id counts). */
static void model_apply(const struct eng_batch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        const struct eng_event *e = &b->events[i];
        if (!idset_add(e->event_id))
            continue;
        if (model_n == model_cap) {
            model_cap = model_cap ? model_cap * 2 : 256;
            model = eng_realloc(model, model_cap * sizeof(*model));
        }
        struct mev *m = &model[model_n++];
        m->id = e->event_id;
        m->ts = e->event_ts_us;
        m->cid = e->content_id;
        m->bucket = e->event_ts_us >= fake_now - 900LL * 1000000;
        m->json = eng_strndup(eng_batch_json(b, e), e->json.len);
    }
}

static void model_reset(void)
{
    for (size_t i = 0; i < model_n; i++)
        free(model[i].json);
    model_n = 0;
    free(idset);
    idset = NULL;
    idset_cap = 0;
}

static int cmp_cid_order(const void *pa, const void *pb)
{
    const struct mev *a = pa, *b = pb;
    if (a->cid != b->cid)
        return a->cid < b->cid ? -1 : 1;
    if (a->ts != b->ts)
        return a->ts < b->ts ? -1 : 1;
    return a->id < b->id ? -1 : (a->id > b->id);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- key listing and dumps ---- */

struct keylist {
    char **k;
    size_t n, cap;
};

static void keylist_add(struct keylist *l, const char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->k = eng_realloc(l->k, l->cap * sizeof(*l->k));
    }
    l->k[l->n++] = eng_strdup(s);
}

static void keylist_free(struct keylist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->k[i]);
    free(l->k);
    memset(l, 0, sizeof(*l));
}

static void scan_keys(struct keylist *out)
{
    char cursor[32] = "0";
    do {
        redisReply *r = cmd("SCAN %s COUNT 1000", cursor);
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2)
            die("bad SCAN reply");
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            keylist_add(out, r->element[1]->element[i]->str);
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    qsort(out->k, out->n, sizeof(*out->k), cmp_str);
}

struct dump {
    struct keylist keys;
    char **val; /* DUMP payload */
    size_t *len;
    long long *pttl;
};

static void take_dump(struct dump *d)
{
    memset(d, 0, sizeof(*d));
    scan_keys(&d->keys);
    d->val = eng_calloc(d->keys.n, sizeof(*d->val));
    d->len = eng_calloc(d->keys.n, sizeof(*d->len));
    d->pttl = eng_calloc(d->keys.n, sizeof(*d->pttl));
    for (size_t i = 0; i < d->keys.n; i++) {
        redisReply *r = cmd("DUMP %s", d->keys.k[i]);
        if (r->type == REDIS_REPLY_STRING) {
            d->val[i] = eng_malloc(r->len);
            memcpy(d->val[i], r->str, r->len);
            d->len[i] = r->len;
        }
        freeReplyObject(r);
        d->pttl[i] = cmd_int("PTTL %s", d->keys.k[i]);
    }
}

static void free_dump(struct dump *d)
{
    for (size_t i = 0; i < d->keys.n; i++)
        free(d->val[i]);
    free(d->val);
    free(d->len);
    free(d->pttl);
    keylist_free(&d->keys);
}

/* Nothing but the TTLs of top:content:10m and engage:top:end (after every batch) and the call
 * count in engage:mark may differ; no TTL may have been refreshed by a replay. */
static void compare_dumps(const struct dump *a, const struct dump *b, const char *what)
{
    CHECK(a->keys.n == b->keys.n, "%s: %zu keys before, %zu after", what, a->keys.n, b->keys.n);
    size_t n = a->keys.n < b->keys.n ? a->keys.n : b->keys.n;
    for (size_t i = 0; i < n; i++) {
        CHECK(strcmp(a->keys.k[i], b->keys.k[i]) == 0, "%s: key %s became %s", what, a->keys.k[i],
              b->keys.k[i]);
        if (strcmp(a->keys.k[i], "engage:mark") != 0) /* its call count goes on */
            CHECK(a->len[i] == b->len[i] && memcmp(a->val[i], b->val[i], a->len[i]) == 0,
                  "%s: value of %s changed", what, a->keys.k[i]);
        if (strcmp(a->keys.k[i], "top:content:10m") != 0 &&
            strcmp(a->keys.k[i], "engage:top:end") != 0)
            CHECK(b->pttl[i] <= a->pttl[i], "%s: ttl of %s refreshed (%lld -> %lld)", what,
                  a->keys.k[i], a->pttl[i], b->pttl[i]);
    }
}

/* ---- the exact check of every key against the model ---- */

static char *reply_str(redisReply *r)
{
    return r->type == REDIS_REPLY_STRING ? eng_strndup(r->str, r->len) : NULL;
}

struct zent {
    char member[16];
    long long score;
};

static int cmp_zent(const void *a, const void *b)
{
    return strcmp(((const struct zent *)a)->member, ((const struct zent *)b)->member);
}

/* Compares a ZSET with expected entries (sorted here). */
static void check_zset(const char *key, struct zent *want, size_t n)
{
    qsort(want, n, sizeof(*want), cmp_zent);
    redisReply *r = cmd("ZRANGE %s 0 -1 WITHSCORES", key);
    size_t got = r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
    CHECK(got == n, "%s: %zu members, want %zu", key, got, n);
    struct zent *g = eng_calloc(got + 1, sizeof(*g));
    for (size_t i = 0; i < got; i++) {
        snprintf(g[i].member, sizeof(g[i].member), "%s", r->element[2 * i]->str);
        g[i].score = strtoll(r->element[2 * i + 1]->str, NULL, 10);
    }
    freeReplyObject(r);
    qsort(g, got, sizeof(*g), cmp_zent);
    for (size_t i = 0; i < n && i < got; i++) {
        CHECK(strcmp(g[i].member, want[i].member) == 0 && g[i].score == want[i].score,
              "%s: member %s score %lld, want %s %lld", key, g[i].member, g[i].score,
              want[i].member, want[i].score);
    }
    free(g);
}

static void check_ttl(const char *key, long long lo_ms, long long hi_ms)
{
    long long t = cmd_int("PTTL %s", key);
    CHECK(t >= lo_ms && t <= hi_ms, "%s: pttl %lld not in [%lld, %lld]", key, t, lo_ms, hi_ms);
}

struct bent {
    char minute[13];
    int32_t cid;
};

static int cmp_bent(const void *pa, const void *pb)
{
    const struct bent *a = pa, *b = pb;
    int c = strcmp(a->minute, b->minute);
    if (c != 0)
        return c;
    return a->cid < b->cid ? -1 : (a->cid > b->cid);
}

/* Checks every key of the selected database against the model, with the top window of the
 * last write (made at fake_now) and the given seen-set TTL. */
static void check_all(const char *stage, uint32_t seen_ttl_s)
{
    struct keylist want = {0};
    char key[128];
    qsort(model, model_n, sizeof(*model), cmp_cid_order);

    /* per content: count, last (the maximum by (ts, id): the end of its run) */
    for (size_t i = 0; i < model_n;) {
        size_t j = i;
        while (j < model_n && model[j].cid == model[i].cid)
            j++;
        const struct mev *last = &model[j - 1];
        int32_t cid = model[i].cid;

        snprintf(key, sizeof(key), "content:count:%d", cid);
        keylist_add(&want, key);
        redisReply *r = cmd("GET %s", key);
        char *v = reply_str(r);
        freeReplyObject(r);
        CHECK(v != NULL && strtoll(v, NULL, 10) == (long long)(j - i), "%s: %s = %s, want %zu",
              stage, key, v ? v : "(nil)", j - i);
        free(v);
        CHECK(cmd_int("PTTL %s", key) == -1, "%s: %s has a ttl", stage, key);

        snprintf(key, sizeof(key), "content:last:%d", cid);
        keylist_add(&want, key);
        r = cmd("GET %s", key);
        v = reply_str(r);
        freeReplyObject(r);
        CHECK(v != NULL && strcmp(v, last->json) == 0, "%s: %s = %s, want %s", stage, key,
              v ? v : "(nil)", last->json);
        free(v);
        check_ttl(key, 3500000, 3600000);

        snprintf(key, sizeof(key), "engage:last:%d", cid);
        keylist_add(&want, key);
        r = cmd("GET %s", key);
        v = reply_str(r);
        freeReplyObject(r);
        char ord[64];
        snprintf(ord, sizeof(ord), "%lld:%lld", (long long)last->ts, (long long)last->id);
        CHECK(v != NULL && strcmp(v, ord) == 0, "%s: %s = %s, want %s", stage, key, v ? v : "(nil)",
              ord);
        free(v);
        check_ttl(key, 3500000, 3600000);
        i = j;
    }

    /* buckets: (minute, cid) runs */
    struct bent *be = eng_calloc(model_n + 1, sizeof(*be));
    size_t nb = 0;
    for (size_t i = 0; i < model_n; i++) {
        if (!model[i].bucket)
            continue;
        fmt_ts(model[i].ts, be[nb].minute, sizeof(be[nb].minute), true);
        be[nb++].cid = model[i].cid;
    }
    qsort(be, nb, sizeof(*be), cmp_bent);
    struct zent *z = eng_calloc(model_n + 1, sizeof(*z));
    for (size_t i = 0; i < nb;) {
        size_t nz = 0;
        size_t j = i;
        while (j < nb && strcmp(be[j].minute, be[i].minute) == 0) {
            size_t k = j;
            while (k < nb && strcmp(be[k].minute, be[i].minute) == 0 && be[k].cid == be[j].cid)
                k++;
            snprintf(z[nz].member, sizeof(z[nz].member), "%d", be[j].cid);
            z[nz++].score = (long long)(k - j);
            j = k;
        }
        snprintf(key, sizeof(key), "top:content:bucket:%s", be[i].minute);
        keylist_add(&want, key);
        check_zset(key, z, nz);
        check_ttl(key, 890000, 900000);
        i = j;
    }

    /* top:content:10m: the 10 minutes ending at the wall-clock minute of the last write */
    char win[10][13];
    for (int w = 0; w < 10; w++)
        fmt_ts(fake_now - (int64_t)w * 60000000, win[w], sizeof(win[w]), true);
    size_t nz = 0;
    for (size_t i = 0; i < nb; i++) {
        bool in = false;
        for (int w = 0; w < 10; w++)
            in = in || strcmp(be[i].minute, win[w]) == 0;
        if (!in)
            continue;
        char m[16];
        snprintf(m, sizeof(m), "%d", be[i].cid);
        size_t k = 0;
        while (k < nz && strcmp(z[k].member, m) != 0)
            k++;
        if (k == nz) {
            snprintf(z[nz].member, sizeof(z[nz].member), "%s", m);
            z[nz++].score = 0;
        }
        z[k].score++;
    }
    if (nz > 0) {
        keylist_add(&want, "top:content:10m");
        keylist_add(&want, "engage:top:end");
        check_zset("top:content:10m", z, nz);
        check_ttl("top:content:10m", 110000, 120000);
        check_ttl("engage:top:end", 110000, 120000);
    }
    free(z);
    free(be);

    /* seen-set: every id's bit, nothing else set */
    long long bits_want = (long long)model_n;
    long long bits = 0;
    for (size_t i = 0; i < model_n; i++) {
        snprintf(key, sizeof(key), "engage:seen:%lld", (long long)(model[i].id >> 20));
        bool have = false;
        for (size_t k = 0; k < want.n; k++)
            have = have || strcmp(want.k[k], key) == 0;
        if (!have) {
            keylist_add(&want, key);
            bits += cmd_int("BITCOUNT %s", key);
            long long len = cmd_int("STRLEN %s", key);
            CHECK(len == 131072, "%s: %s is %lld bytes, want 131072 (created whole)", stage, key,
                  len);
            if (seen_ttl_s == 0)
                CHECK(cmd_int("PTTL %s", key) == -1, "%s: %s has a ttl", stage, key);
            else
                check_ttl(key, (long long)seen_ttl_s * 1000 - 10000, (long long)seen_ttl_s * 1000);
        }
        redisReply *r = cmd("GETBIT %s %lld", key, (long long)(model[i].id & 0xFFFFF));
        CHECK(r->integer == 1, "%s: bit of event %lld not set", stage, (long long)model[i].id);
        freeReplyObject(r);
    }
    CHECK(bits == bits_want, "%s: %lld bits set in the seen-set, want %lld", stage, bits,
          bits_want);

    /* engage:mark: the generation and the calls applied (every connection makes it) */
    keylist_add(&want, "engage:mark");
    CHECK(cmd_int("PTTL %s", "engage:mark") == -1, "%s: engage:mark has a ttl", stage);

    /* exactly these keys, no others */
    qsort(want.k, want.n, sizeof(*want.k), cmp_str);
    struct keylist got = {0};
    scan_keys(&got);
    CHECK(got.n == want.n, "%s: %zu keys in redis, want %zu", stage, got.n, want.n);
    for (size_t i = 0; i < got.n && i < want.n; i++)
        CHECK(strcmp(got.k[i], want.k[i]) == 0, "%s: key %s, want %s", stage, got.k[i], want.k[i]);
    printf("ok   %s (%zu events, %zu keys checked)\n", stage, model_n, got.n);
    keylist_free(&got);
    keylist_free(&want);
}

/* ---- the scenario ---- */

static void write_ok(struct eng_sink *s, const struct eng_batch *b, const char *what)
{
    struct eng_error err;
    eng_error_clear(&err);
    int rc = eng_sink_write(s, b, &err);
    CHECK(rc == 0, "%s: write failed: %s", what, err.msg);
}

static void open_ok(struct eng_sink *s)
{
    struct eng_error err;
    eng_error_clear(&err);
    if (eng_sink_open(s, &err) != 0) {
        fprintf(stderr, "open failed: %s\n", err.msg);
        exit(2);
    }
}

static void db_url(char *out, size_t n, const char *host, int port, const char *auth, int db)
{
    snprintf(out, n, "redis://%s%s:%d/%d", auth, host, port, db);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : (x > y);
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    const char *bin = "redis-server";
    long long n_ids = 4LL << 20;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--url") == 0 && i + 1 < argc)
            url = argv[++i];
        else if (strcmp(argv[i], "--redis-server") == 0 && i + 1 < argc)
            bin = argv[++i];
        else if (strcmp(argv[i], "--ids") == 0 && i + 1 < argc)
            n_ids = strtoll(argv[++i], NULL, 10);
        else
            die("usage: redis_sink_check [--url redis://host:port[/db]] "
                "[--redis-server PATH] [--ids N]");
    }

    struct eng_redis_url u = {0};
    struct eng_error err;
    char host[64] = "127.0.0.1";
    int port, db = 0;
    bool own = url == NULL;
    if (own) {
        port = start_server(bin);
    } else {
        if (eng_redis_url_parse(url, &u, &err) != 0)
            die(err.msg);
        if (u.password != NULL)
            die("--url with a password is not supported by the check");
        snprintf(host, sizeof(host), "%s", u.host);
        port = u.port;
        db = u.db;
        eng_redis_url_free(&u);
    }
    struct timeval tv = {5, 0};
    check_conn = redisConnectWithTimeout(host, port, tv);
    if (check_conn == NULL || check_conn->err != 0)
        die("cannot connect the check connection");
    for (int d = db; d < db + 3; d++) {
        select_db(d);
        redisReply *r = cmd("DBSIZE");
        if (r->integer != 0)
            die("the databases the check uses (db, db+1, db+2) must be empty");
        freeReplyObject(r);
    }
    select_db(db);
    printf("redis at %s:%d db %d (%s)\n", host, port, db, own ? "started by the check" : "given");

    char sink_url[160];
    db_url(sink_url, sizeof(sink_url), host, port, "", db);
    struct eng_redis_options opt;
    eng_redis_options_init(&opt);
    opt.now_us = now_fn;
    struct eng_sink *s = eng_redis_sink_create(sink_url, &opt, &err);
    if (s == NULL)
        die(err.msg);
    open_ok(s);
    struct eng_counter *m_dup = eng_metrics_counter("engage_redis_duplicates_total", NULL, NULL);
    struct eng_counter *m_events =
        eng_metrics_counter("engage_sink_events_total", "sink=\"redis\"", NULL);
    struct eng_counter *m_errors =
        eng_metrics_counter("engage_sink_errors_total", "sink=\"redis\"", NULL);

    /* T0: now, mid-minute, so that every "minute ago" below is an unambiguous bucket */
    const int64_t S = 1000000, M = 60 * S;
    int64_t t0 = eng_clock_wall_us() / M * M + 30 * S;
    fake_now = t0;

    /* Batch A */
    struct eng_batch *a = eng_batch_create(200);
    add_event(a, 101, 1, t0 - 30 * S);
    add_event(a, 102, 1, t0 - 90 * S);
    add_event(a, 103, 1, t0 - 5 * M);
    add_event(a, 101, 1, t0 - 30 * S); /* the same event twice in one batch */
    add_event(a, 201, 2, t0 - 10 * S);
    add_event(a, 205, 2, t0 - 10 * S); /* same ts: the larger id is last */
    add_event(a, 203, 2, t0 - 10 * S);
    add_event(a, 305, 3, t0 - 12 * M); /* a bucket outside the 10-minute window */
    add_event(a, 310, 3, t0 - 20 * M); /* older than the bucket ttl: no bucket; not last */
    add_event(a, 401, 4, t0 + 2 * M);  /* ahead of the clock: last, outside the window */
    add_event(a, 402, 4, t0 - 1 * S);
    add_event(a, 601, 6, t0 - 3 * S + 900000); /* microseconds decide, not the id */
    add_event(a, 602, 6, t0 - 3 * S + 100000);
    add_event(a, 0, 7, t0 - 2 * M);             /* event id 0 */
    add_event(a, (1 << 20) - 1, 7, t0 - 2 * M); /* chunk boundaries */
    add_event(a, 1 << 20, 8, t0 - 2 * M);
    add_event(a, (5LL << 20) + 3, 8, t0 - 4 * M);
    add_event(a, (1LL << 40) + 7, -7, t0 - 7 * M); /* negative content id, far chunk */
    add_event(a, (1LL << 53) - 1, 9, t0 - 9 * M);  /* the largest id accepted */
    for (int i = 0; i < 60; i++)                   /* content 5 leads the top */
        add_event(a, 5000 + i, 5, t0 - (i % 10) * M - (i % 7) * S);
    model_apply(a);
    write_ok(s, a, "batch a");
    check_all("batch a", 0);

    /* Batch B, one minute later: late events, ties, partial replay */
    fake_now = t0 + 61 * S;
    struct eng_batch *b = eng_batch_create(200);
    add_event(b, 150, 1, t0 - 2 * M);          /* late and older: counted, not last */
    add_event(b, 210, 2, t0 + 50 * S);         /* newer: last */
    add_event(b, 320, 3, t0 - 16 * M);         /* older than the bucket ttl now */
    add_event(b, 600, 6, t0 - 3 * S + 900000); /* same ts as 601, smaller id: not last */
    add_event(b, 603, 6, t0 - 3 * S + 900000); /* same ts as 601, larger id: last */
    add_event(b, 101, 1, t0 - 30 * S);         /* already applied */
    add_event(b, 205, 2, t0 - 10 * S);         /* already applied */
    add_event(b, 5000, 5, t0);                 /* already applied */
    model_apply(b);
    uint64_t dup0 = eng_counter_get(m_dup);
    write_ok(s, b, "batch b");
    CHECK(eng_counter_get(m_dup) - dup0 == 3, "batch b: %llu duplicates, want 3",
          (unsigned long long)(eng_counter_get(m_dup) - dup0));
    check_all("batch b", 0);

    /* Replay both: nothing may change (the top is rebuilt to the same value). */
    struct dump before, after;
    take_dump(&before);
    dup0 = eng_counter_get(m_dup);
    write_ok(s, a, "replay a");
    write_ok(s, b, "replay b");
    take_dump(&after);
    compare_dumps(&before, &after, "replay a+b");
    CHECK(eng_counter_get(m_dup) - dup0 == a->n + b->n, "replay: %llu duplicates, want %u",
          (unsigned long long)(eng_counter_get(m_dup) - dup0), a->n + b->n);
    free_dump(&before);
    free_dump(&after);
    printf("ok   replay of a and b changes nothing\n");

    /* An empty batch only rebuilds the top. */
    struct eng_batch *empty = eng_batch_create(1);
    cmd_int("DEL %s", "top:content:10m");
    write_ok(s, empty, "empty batch");
    check_all("empty batch rebuilds top", 0);

    /* NOSCRIPT: the script is reloaded by itself. */
    freeReplyObject(cmd("SCRIPT FLUSH"));
    struct eng_batch *c = eng_batch_create(10);
    add_event(c, 700, 1, t0 + 40 * S); /* newer: last of content 1 */
    model_apply(c);
    write_ok(s, c, "after script flush");
    check_all("after script flush", 0);

    /* A 10k batch, split in calls of 1000, 2000 of its ids already applied. */
    struct eng_batch *d = eng_batch_create(10000);
    for (int i = 0; i < 10000; i++) {
        int64_t id = i < 2000 ? 5000 + (i % 60) : 10000000 + i;
        if (i < 2000 && i >= 60)
            id = 10000000 + 10000 + i; /* fresh, but sent before the repeats below */
        add_event(d, id, (int32_t)(1 + i % 50), t0 + 61 * S - (i % 600) * S);
    }
    model_apply(d);
    dup0 = eng_counter_get(m_dup);
    write_ok(s, d, "10k batch");
    CHECK(eng_counter_get(m_dup) - dup0 == 60, "10k batch: %llu duplicates, want 60",
          (unsigned long long)(eng_counter_get(m_dup) - dup0));
    check_all("10k batch in 10 calls", 0);
    take_dump(&before);
    write_ok(s, d, "10k replay");
    take_dump(&after);
    compare_dumps(&before, &after, "10k replay");
    free_dump(&before);
    free_dump(&after);
    printf("ok   replay of the 10k batch changes nothing\n");

    /* Connection loss: the write fails retriably, open again, write again, exact. */
    freeReplyObject(cmd("CLIENT KILL TYPE normal SKIPME yes"));
    struct eng_batch *e = eng_batch_create(10);
    add_event(e, 800, 2, t0 + 55 * S);
    add_event(e, 801, 11, t0);
    uint64_t err0 = eng_counter_get(m_errors);
    eng_error_clear(&err);
    int rc = eng_sink_write(s, e, &err);
    CHECK(rc != 0 && err.retriable, "write on a killed connection: rc %d retriable %d (%s)", rc,
          err.retriable, err.msg);
    CHECK(eng_counter_get(m_errors) > err0, "errors metric not incremented");
    eng_sink_close(s);
    rc = eng_sink_write(s, e, &err);
    CHECK(rc != 0 && err.retriable, "write while closed must fail retriably");
    open_ok(s);
    model_apply(e);
    write_ok(s, e, "after reconnect");
    check_all("after a killed connection", 0);

    /* Nothing listening: open fails retriably. */
    char dead_url[96];
    db_url(dead_url, sizeof(dead_url), "127.0.0.1", free_port(), "", 0);
    struct eng_sink *dead = eng_redis_sink_create(dead_url, NULL, &err);
    eng_error_clear(&err);
    rc = eng_sink_open(dead, &err);
    CHECK(rc == ENG_EIO && err.retriable, "open without a server: rc %d retriable %d", rc,
          err.retriable);
    eng_sink_destroy(dead);
    printf("ok   connection loss and refused connection are retriable\n");

    uint64_t events_total = eng_counter_get(m_events);

    /* Edge cases in db+1: seen-set TTL, a deleted content:last, script errors, bad ids. */
    select_db(db + 1);
    model_reset();
    db_url(sink_url, sizeof(sink_url), host, port, "", db + 1);
    struct eng_redis_options opt2 = opt;
    opt2.seen_ttl_s = 86400;
    opt2.max_events_per_call = 3;
    struct eng_sink *s2 = eng_redis_sink_create(sink_url, &opt2, &err);
    open_ok(s2);
    fake_now = t0;
    struct eng_batch *f = eng_batch_create(20);
    for (int i = 0; i < 10; i++)
        add_event(f, 900 + i, 1 + i % 2, t0 - i * S);
    model_apply(f);
    write_ok(s2, f, "seen ttl");
    check_all("seen-set ttl option, 3 events per call", 86400);

    cmd_int("DEL %s", "content:last:1"); /* an operator deletes it: the companion yields */
    struct eng_batch *g = eng_batch_create(2);
    add_event(g, 950, 1, t0 - 50 * M);
    write_ok(s2, g, "after delete");
    redisReply *r = cmd("GET content:last:1");
    CHECK(r->type == REDIS_REPLY_STRING && strstr(r->str, "\"event_id\":950,") != NULL,
          "a deleted content:last is written again by an older event");
    freeReplyObject(r);

    freeReplyObject(cmd("SET content:count:77 abc"));
    struct eng_batch *h = eng_batch_create(2);
    add_event(h, 960, 77, t0);
    eng_error_clear(&err);
    rc = eng_sink_write(s2, h, &err);
    CHECK(rc != 0 && !err.retriable && strstr(err.msg, "not an integer") != NULL,
          "script error: rc %d retriable %d msg %s", rc, err.retriable, err.msg);
    printf("     script error reported as: %s\n", err.msg);
    open_ok(s2); /* a fatal error left the connection usable; open again anyway */
    struct eng_batch *bad = eng_batch_create(2);
    add_event(bad, 1LL << 53, 1, t0);
    rc = eng_sink_write(s2, bad, &err);
    CHECK(rc == ENG_EINVAL && !err.retriable, "event id 2^53 must be refused");
    eng_batch_release(bad);
    bad = eng_batch_create(2);
    add_event(bad, -1, 1, t0);
    rc = eng_sink_write(s2, bad, &err);
    CHECK(rc == ENG_EINVAL && !err.retriable, "event id -1 must be refused");
    eng_batch_release(bad);
    printf("ok   deleted last, script error, ids outside [0, 2^53)\n");

    /* OOM (maxmemory reached, noeviction): refused before any write, retriable. */
    if (own) {
        freeReplyObject(cmd("CONFIG SET maxmemory-policy noeviction"));
        struct dump d0, d1;
        take_dump(&d0);
        freeReplyObject(cmd("CONFIG SET maxmemory 1"));
        struct eng_batch *oom = eng_batch_create(4);
        add_event(oom, 970, 1, t0);
        add_event(oom, 971, 3, t0);
        eng_error_clear(&err);
        rc = eng_sink_write(s2, oom, &err);
        freeReplyObject(cmd("CONFIG SET maxmemory 0"));
        CHECK(rc != 0 && err.retriable && strstr(err.msg, "OOM") != NULL,
              "oom: rc %d retriable %d msg %s", rc, err.retriable, err.msg);
        take_dump(&d1);
        compare_dumps(&d0, &d1, "oom");
        free_dump(&d0);
        free_dump(&d1);
        open_ok(s2);
        write_ok(s2, oom, "after oom");
        /* content 1: 5 events of f, 950, 970; content 3: 971 */
        r = cmd("MGET content:count:1 content:count:3");
        CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                  r->element[0]->type == REDIS_REPLY_STRING &&
                  strcmp(r->element[0]->str, "7") == 0 &&
                  r->element[1]->type == REDIS_REPLY_STRING && strcmp(r->element[1]->str, "1") == 0,
              "after oom: counts of contents 1 and 3 are not 7 and 1");
        freeReplyObject(r);
        eng_batch_release(oom);
        printf("ok   an oom server refuses the whole call (retriable, nothing changed)\n");
    }

    /* AUTH, on our own server only. */
    if (own) {
        freeReplyObject(cmd("CONFIG SET requirepass %s", "s3cr%t"));
        const char *auths[] = {":s3cr%25t@", "default:s3cr%25t@", "s3cr%25t@", ":wrong@", ""};
        const bool ok[] = {true, true, true, false, false};
        for (int i = 0; i < 5; i++) {
            db_url(sink_url, sizeof(sink_url), host, port, auths[i], db + 1);
            struct eng_sink *sa = eng_redis_sink_create(sink_url, NULL, &err);
            eng_error_clear(&err);
            rc = eng_sink_open(sa, &err);
            CHECK((rc == 0) == ok[i], "auth %s: rc %d (%s)", auths[i], rc, err.msg);
            if (!ok[i])
                CHECK(!err.retriable && strstr(err.msg, "s3cr") == NULL,
                      "auth failure must be fatal and not echo the password: %s", err.msg);
            eng_sink_destroy(sa);
        }
        freeReplyObject(cmd("CONFIG SET requirepass %s", ""));
        printf("ok   auth with password, user:password, and a wrong password (fatal)\n");
    }
    eng_sink_destroy(s2);

    /* Measurement in db+2: seen-set memory for sequential ids, time per 10k batch. */
    select_db(db + 2);
    model_reset();
    db_url(sink_url, sizeof(sink_url), host, port, "", db + 2);
    struct eng_sink *s3 = eng_redis_sink_create(sink_url, &opt, &err);
    open_ok(s3);
    fake_now = t0;
    size_t nbatches = (size_t)((n_ids + 9999) / 10000);
    int64_t *times = eng_calloc(nbatches, sizeof(*times));
    int64_t *rtimes = eng_calloc(nbatches, sizeof(*rtimes));
    struct eng_batch **keep = eng_calloc(nbatches, sizeof(*keep));
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < nbatches; k++) {
            struct eng_batch *bt = keep[k];
            if (bt == NULL) {
                bt = eng_batch_create(10000);
                for (long long id = (long long)k * 10000;
                     id < (long long)(k + 1) * 10000 && id < n_ids; id++)
                    add_event(bt, id, (int32_t)(id % 100), t0 - (id % 600) * S);
            }
            int64_t st = eng_clock_mono_us();
            write_ok(s3, bt, "measurement");
            (pass == 0 ? times : rtimes)[k] = eng_clock_mono_us() - st;
            if (k < 20 && pass == 0)
                keep[k] = bt; /* replayed in pass 2 */
            else if (keep[k] == NULL)
                eng_batch_release(bt);
            if (pass == 1 && k + 1 >= 20)
                break;
        }
    }
    long long seen_bytes = 0, seen_strlen = 0, chunks = 0, bits = 0;
    for (long long ch = 0; ch <= (n_ids - 1) >> 20; ch++) {
        char key[64];
        snprintf(key, sizeof(key), "engage:seen:%lld", ch);
        r = cmd("MEMORY USAGE %s SAMPLES 0", key);
        seen_bytes += r->integer;
        freeReplyObject(r);
        seen_strlen += cmd_int("STRLEN %s", key);
        bits += cmd_int("BITCOUNT %s", key);
        chunks++;
    }
    CHECK(bits == n_ids, "measurement: %lld bits set, want %lld", bits, n_ids);
    long long counted = 0;
    for (int cid = 0; cid < 100; cid++) {
        char key[64];
        snprintf(key, sizeof(key), "content:count:%d", cid);
        r = cmd("GET %s", key);
        counted += r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
        freeReplyObject(r);
    }
    CHECK(counted == n_ids, "measurement: counts sum to %lld, want %lld", counted, n_ids);
    qsort(times, nbatches, sizeof(*times), cmp_i64);
    size_t nr = nbatches < 20 ? nbatches : 20;
    qsort(rtimes, nr, sizeof(*rtimes), cmp_i64);
    int64_t sum = 0;
    for (size_t k = 0; k < nbatches; k++)
        sum += times[k];
    printf("seen-set: %lld sequential ids in %lld keys: MEMORY USAGE %lld bytes (STRLEN %lld),"
           " %.1f KiB per 1,000,000 ids\n",
           n_ids, chunks, seen_bytes, seen_strlen, (double)seen_bytes / (double)n_ids * 1e6 / 1024);
    printf("write of a 10k-event batch (100 contents, ~230-byte json, 10 calls): mean %.1f ms, "
           "p50 %.1f ms, p99 %.1f ms, max %.1f ms over %zu batches\n",
           (double)sum / (double)nbatches / 1000, (double)times[nbatches / 2] / 1000,
           (double)times[nbatches * 99 / 100] / 1000, (double)times[nbatches - 1] / 1000, nbatches);
    printf("replay of a 10k-event batch (all duplicates): p50 %.1f ms, max %.1f ms over %zu\n",
           (double)rtimes[nr / 2] / 1000, (double)rtimes[nr - 1] / 1000, nr);
    for (size_t k = 0; k < nbatches; k++)
        eng_batch_release(keep[k]);
    free(keep);
    free(times);
    free(rtimes);
    eng_sink_destroy(s3);

    if (!own) {
        for (int dd = db; dd < db + 3; dd++) {
            select_db(dd);
            freeReplyObject(cmd("FLUSHDB"));
        }
    }
    printf("metrics: events_total %llu (before the measurement)\n",
           (unsigned long long)events_total);
    eng_sink_destroy(s);
    eng_batch_release(a);
    eng_batch_release(b);
    eng_batch_release(c);
    eng_batch_release(d);
    eng_batch_release(e);
    eng_batch_release(f);
    eng_batch_release(g);
    eng_batch_release(h);
    eng_batch_release(empty);
    model_reset();
    free(model);
    redisFree(check_conn);
    if (failures != 0) {
        printf("FAILED: %d checks\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
