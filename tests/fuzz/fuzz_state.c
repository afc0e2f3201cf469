/* Fuzz target: the state files engage reads back after a restart, which a crash, a full disk
 * or a person may have left in any shape: the checkpoint with its content cache
 * (STATE_DIR/<slot>.state), the confirm bound (<slot>.bound) and the LSN text in them. The
 * input is written as both files in a private directory and loaded; a load either fails with
 * an error or fills what it promises. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "enrich/content.h"
#include "source/state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

static void put(const char *name, const uint8_t *data, size_t size)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
}

static void cleanup(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/fuzz.state", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/fuzz.bound", dir);
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0') {
        /* in memory when the machine has it: the target writes two files per input */
        snprintf(dir, sizeof(dir), "/dev/shm/engage-fuzz-state.XXXXXX");
        if (mkdtemp(dir) == NULL) {
            snprintf(dir, sizeof(dir), "/tmp/engage-fuzz-state.XXXXXX");
            if (mkdtemp(dir) == NULL)
                abort();
        }
        atexit(cleanup);
    }
    put("fuzz.state", data, size);
    put("fuzz.bound", data, size);
    struct eng_error err;
    struct eng_pg_state st;
    memset(&st, 0, sizeof(st));
    struct eng_content_cache *cache = eng_content_cache_create();
    int rc = eng_pg_state_load(dir, "fuzz", &st, cache, &err);
    if (rc == 0 && memchr(st.system_id, '\0', sizeof(st.system_id)) == NULL)
        abort();
    eng_content_cache_destroy(cache);
    memset(&st, 0, sizeof(st));
    if (eng_pg_bound_load(dir, "fuzz", &st, &err) == 0 &&
        memchr(st.system_id, '\0', sizeof(st.system_id)) == NULL)
        abort();

    char text[64];
    size_t n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
    memcpy(text, data, n);
    text[n] = '\0';
    uint64_t lsn;
    if (eng_lsn_parse(text, &lsn)) {
        char back[32];
        eng_lsn_format(lsn, back, sizeof(back));
        uint64_t again;
        if (!eng_lsn_parse(back, &again) || again != lsn)
            abort();
    }
    return 0;
}
