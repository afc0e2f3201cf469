/* A small stand-alone fuzzing driver for compilers without libFuzzer (gcc): it runs every
 * seed of the corpus through LLVMFuzzerTestOneInput, then random mutations of them (bit and
 * byte flips, inserted, deleted and repeated ranges, splices of two inputs) for a bounded
 * time, under the sanitizers the target is built with. No coverage feedback: it finds what
 * mutation near the seeds finds, cheaply, on every `make test`. With clang, meson builds the
 * targets with -fsanitize=fuzzer instead and this file is not used.
 *
 *   fuzz_X [-max_total_time=S] [-runs=N] [-seed=N] [-max_len=N] [CORPUS_FILE_OR_DIR...]
 *
 * $FUZZ_SECONDS, when set, overrides -max_total_time (make test FUZZ_SECONDS=60 fuzzes
 * longer without a new meson setup).
 * Corpus files: NAME.hex holds one input per line as hex, NAME.lines one input per line,
 * any other file is one input. A failing input is written to $FUZZ_ARTIFACT_DIR (default
 * the working directory) as crash-<target>-<pid> before the sanitizer's report ends the run.
 * The target's own messages on stderr are discarded; the sanitizers report on the real
 * stderr. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* From the sanitizers' runtime when the build has one (sanitizer/common_interface_defs.h);
 * weak, so that a build without sanitizers links too (then a crash is just a crash). */
void __sanitizer_set_report_fd(void *fd) __attribute__((weak));
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_POOL 4096

struct input {
    uint8_t *p;
    size_t n;
};

static struct input pool[MAX_POOL];
static size_t npool, nseeds;
static size_t max_len = 4096;
static const uint8_t *cur;
static size_t cur_n;
static const char *target = "fuzz";
static int report_fd = 2;

static void add(const uint8_t *p, size_t n)
{
    if (npool == MAX_POOL)
        return;
    if (n > max_len)
        n = max_len;
    pool[npool].p = malloc(n ? n : 1);
    if (pool[npool].p == NULL)
        abort();
    memcpy(pool[npool].p, p, n);
    pool[npool].n = n;
    npool++;
}

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static void load_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        dprintf(report_fd, "%s: cannot open %s\n", target, path);
        exit(2);
    }
    size_t len = strlen(path);
    bool hex = len > 4 && strcmp(path + len - 4, ".hex") == 0;
    bool lines = len > 6 && strcmp(path + len - 6, ".lines") == 0;
    if (!hex && !lines) {
        uint8_t *buf = malloc(max_len ? max_len : 1);
        if (buf == NULL)
            abort();
        size_t n = fread(buf, 1, max_len, f);
        add(buf, n);
        free(buf);
        fclose(f);
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (line[0] == '#' || (hex && n == 0))
            continue;
        if (lines) {
            add((const uint8_t *)line, (size_t)n);
            continue;
        }
        size_t m = 0;
        for (ssize_t i = 0; i + 1 < n; i += 2) {
            int hi = hexval(line[i]), lo = hexval(line[i + 1]);
            if (hi < 0 || lo < 0)
                break;
            line[m++] = (char)(hi << 4 | lo);
        }
        add((const uint8_t *)line, m);
    }
    free(line);
    fclose(f);
}

static void load(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        dprintf(report_fd, "%s: no such corpus %s\n", target, path);
        exit(2);
    }
    if (!S_ISDIR(st.st_mode)) {
        load_file(path);
        return;
    }
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.') {
            char sub[4096];
            snprintf(sub, sizeof(sub), "%s/%s", path, names[i]->d_name);
            load(sub);
        }
        free(names[i]);
    }
    free(names);
}

static uint64_t rng;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static size_t below(size_t n)
{
    return n ? (size_t)(next() % n) : 0;
}

/* One mutation of buf (n bytes, room for max_len); returns the new length. */
static size_t mutate(uint8_t *buf, size_t n)
{
    static const char *const tokens[] = {
        "\"", "\\", "'",    "%", "%00", "%zz", ":",           "@",    "/",   "[",         "]",  "=",
        "#",  "\n", "\r\n", " ", "0",   "-1",  "99999999999", "\xff", "GMT", "password=", "://"};
    switch (below(8)) {
    case 0: /* flip a bit */
        if (n)
            buf[below(n)] ^= (uint8_t)(1u << below(8));
        return n;
    case 1: /* set a byte */
        if (n)
            buf[below(n)] = (uint8_t)next();
        return n;
    case 2: { /* delete a range */
        if (n == 0)
            return n;
        size_t at = below(n), len = 1 + below(n - at < 16 ? n - at : 16);
        memmove(buf + at, buf + at + len, n - at - len);
        return n - len;
    }
    case 3: { /* insert random bytes */
        size_t len = 1 + below(8);
        if (n + len > max_len)
            return n;
        size_t at = below(n + 1);
        memmove(buf + at + len, buf + at, n - at);
        for (size_t i = 0; i < len; i++)
            buf[at + i] = (uint8_t)next();
        return n + len;
    }
    case 4: { /* repeat a range */
        if (n == 0)
            return n;
        size_t at = below(n), len = 1 + below(n - at);
        if (n + len > max_len)
            return n;
        size_t to = below(n + 1);
        uint8_t tmp[4096];
        if (len > sizeof(tmp))
            return n;
        memcpy(tmp, buf + at, len);
        memmove(buf + to + len, buf + to, n - to);
        memcpy(buf + to, tmp, len);
        return n + len;
    }
    case 5: { /* splice with another input */
        const struct input *o = &pool[below(npool)];
        size_t keep = below(n + 1), from = below(o->n + 1), len = o->n - from;
        if (keep + len > max_len)
            len = max_len - keep;
        memcpy(buf + keep, o->p + from, len);
        return keep + len;
    }
    case 6: { /* insert a token */
        const char *t = tokens[below(sizeof(tokens) / sizeof(tokens[0]))];
        size_t len = strlen(t), at = below(n + 1);
        if (n + len > max_len)
            return n;
        memmove(buf + at + len, buf + at, n - at);
        memcpy(buf + at, t, len);
        return n + len;
    }
    default: /* change a digit or truncate */
        for (size_t tries = 0; tries < 8 && n; tries++) {
            size_t at = below(n);
            if (buf[at] >= '0' && buf[at] <= '9') {
                buf[at] = (uint8_t)('0' + below(10));
                return n;
            }
        }
        return below(n + 1);
    }
}

static void run(const uint8_t *p, size_t n)
{
    /* a copy of exactly n bytes on the heap, so that ASan sees any overread */
    uint8_t *copy = malloc(n ? n : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, p, n);
    cur = copy;
    cur_n = n;
    LLVMFuzzerTestOneInput(copy, n);
    cur = NULL;
    free(copy);
}

static void on_death(void)
{
    if (cur == NULL)
        return;
    const char *dir = getenv("FUZZ_ARTIFACT_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/crash-%s-%ld", dir ? dir : ".", target, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, cur, cur_n);
        (void)w;
        close(fd);
    }
    dprintf(report_fd, "%s: the failing input (%zu bytes) is in %s\n", target, cur_n, path);
}

/* A target's own check failed (abort): save the input too, then die of the signal. */
static void on_abort(int sig)
{
    on_death();
    signal(sig, SIG_DFL);
    raise(sig);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double max_time = 5;
    long long runs = -1;
    uint64_t seed = 0;
    const char *slash = strrchr(argv[0], '/');
    target = slash ? slash + 1 : argv[0];

    /* stderr to /dev/null for the target's own messages; the sanitizers keep the real one */
    report_fd = dup(2);
    int devnull = open("/dev/null", O_WRONLY);
    if (report_fd < 0 || devnull < 0 || dup2(devnull, 2) < 0)
        return 2;
    close(devnull);
    if (__sanitizer_set_report_fd != NULL)
        __sanitizer_set_report_fd((void *)(intptr_t)report_fd);
    if (__sanitizer_set_death_callback != NULL)
        __sanitizer_set_death_callback(on_death);
    signal(SIGABRT, on_abort);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "-max_total_time=", 16) == 0)
            max_time = atof(a + 16);
        else if (strncmp(a, "-runs=", 6) == 0)
            runs = atoll(a + 6);
        else if (strncmp(a, "-seed=", 6) == 0)
            seed = strtoull(a + 6, NULL, 10);
        else if (strncmp(a, "-max_len=", 9) == 0) {
            max_len = strtoull(a + 9, NULL, 10);
            if (max_len == 0 || max_len > 4096)
                max_len = 4096;
        } else if (a[0] == '-')
            dprintf(report_fd, "%s: ignoring %s\n", target, a);
        else
            load(a);
    }
    const char *env_s = getenv("FUZZ_SECONDS");
    if (env_s != NULL && *env_s != '\0')
        max_time = atof(env_s);
    if (npool == 0)
        add((const uint8_t *)"", 0);
    nseeds = npool;
    rng = seed ? seed : ((uint64_t)time(NULL) << 20 ^ (uint64_t)getpid()) | 1;
    dprintf(report_fd, "%s: %zu seeds, seed=%llu (rerun with -seed=N), up to %.0f s\n", target,
            nseeds, (unsigned long long)rng, max_time);

    for (size_t i = 0; i < nseeds; i++)
        run(pool[i].p, pool[i].n);

    uint8_t *buf = malloc(max_len ? max_len : 1);
    if (buf == NULL)
        abort();
    double t0 = now_s(), end = t0 + max_time;
    long long done = 0;
    while (runs < 0 || done < runs) {
        if ((done & 63) == 0 && now_s() >= end)
            break;
        const struct input *base = &pool[below(npool)];
        size_t n = base->n;
        memcpy(buf, base->p, n);
        size_t k = 1 + below(4);
        for (size_t j = 0; j < k; j++)
            n = mutate(buf, n);
        run(buf, n);
        if (below(64) == 0)
            add(buf, n); /* keep some mutants as bases: reach further from the seeds */
        done++;
    }
    dprintf(report_fd, "%s: %lld runs in %.1f s, no failure\n", target, done + (long long)nseeds,
            now_s() - t0);
    free(buf);
    for (size_t i = 0; i < npool; i++)
        free(pool[i].p);
    return 0;
}
