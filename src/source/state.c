#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "state.h"

struct state_file {
    const char *slot;
    const struct eng_pg_state *st;
    const struct eng_content_cache *cache;
};

static int write_state(FILE *f, void *arg, struct eng_error *err)
{
    const struct state_file *sf = arg;
    char lsn[24];
    eng_lsn_format(sf->st->lsn, lsn, sizeof(lsn));
    fprintf(f, "engage-pg-state 1\nsystem_id %s\nslot %s\nlsn %s\n", sf->st->system_id, sf->slot,
            lsn);
    return eng_content_cache_save(sf->cache, f, err);
}

int eng_pg_state_save(const char *dir, const char *slot, const struct eng_pg_state *st,
                      const struct eng_content_cache *cache, struct eng_error *err)
{
    char name[300];
    struct state_file sf = {slot, st, cache};
    snprintf(name, sizeof(name), "%s.state", slot);
    return eng_durable_replace(dir, name, write_state, &sf, err);
}

static int write_bound(FILE *f, void *arg, struct eng_error *err)
{
    const struct eng_pg_state *st = arg;
    char lsn[24];
    (void)err;
    eng_lsn_format(st->lsn, lsn, sizeof(lsn));
    fprintf(f, "engage-pg-confirm-bound 1\nsystem_id %s\nlsn %s\n", st->system_id, lsn);
    return 0;
}

int eng_pg_bound_save(const char *dir, const char *slot, const struct eng_pg_state *bound,
                      struct eng_error *err)
{
    char name[300];
    snprintf(name, sizeof(name), "%s.bound", slot);
    return eng_durable_replace(dir, name, write_bound, (void *)bound, err);
}

/* Reads one "key value" line; value is the rest of the line without the newline. */
static bool read_kv(FILE *f, const char *key, char *val, size_t vlen)
{
    char line[512];
    size_t klen = strlen(key);
    if (fgets(line, sizeof(line), f) == NULL)
        return false;
    size_t n = strcspn(line, "\n");
    line[n] = '\0';
    if (strncmp(line, key, klen) != 0 || line[klen] != ' ' || n - klen - 1 >= vlen)
        return false;
    memcpy(val, line + klen + 1, n - klen);
    return true;
}

int eng_pg_state_load(const char *dir, const char *slot, struct eng_pg_state *st,
                      struct eng_content_cache *cache, struct eng_error *err)
{
    char path[4096], magic[32], sysid[64], slotname[256], lsn[64];
    snprintf(path, sizeof(path), "%s/%s.state", dir, slot);
    FILE *f;
    int orc = eng_durable_open(path, &f, err);
    if (orc != 0)
        return orc;
    int rc = ENG_EPROTO;
    if (fgets(magic, sizeof(magic), f) == NULL || strcmp(magic, "engage-pg-state 1\n") != 0 ||
        !read_kv(f, "system_id", sysid, sizeof(sysid)) ||
        !read_kv(f, "slot", slotname, sizeof(slotname)) || !read_kv(f, "lsn", lsn, sizeof(lsn)) ||
        strlen(sysid) >= sizeof(st->system_id) || strcmp(slotname, slot) != 0 ||
        !eng_lsn_parse(lsn, &st->lsn)) {
        eng_error_set(err, rc, false, "state file \"%s\" is corrupt (bad header)", path);
        goto out;
    }
    memcpy(st->system_id, sysid, strlen(sysid) + 1); /* length checked above */
    if (eng_content_cache_load(cache, f, err) != 0) {
        char inner[sizeof(err->msg)];
        memcpy(inner, err ? err->msg : "", err ? sizeof(inner) : 1);
        eng_error_set(err, rc, false, "state file \"%s\" is corrupt: %s", path, inner);
        goto out;
    }
    rc = 0;
out:
    fclose(f);
    return rc;
}

int eng_pg_bound_load(const char *dir, const char *slot, struct eng_pg_state *bound,
                      struct eng_error *err)
{
    char path[4096], magic[40], sysid[64], lsn[64];
    snprintf(path, sizeof(path), "%s/%s.bound", dir, slot);
    FILE *f;
    int orc = eng_durable_open(path, &f, err);
    if (orc != 0)
        return orc;
    int rc = 0;
    if (fgets(magic, sizeof(magic), f) == NULL ||
        strcmp(magic, "engage-pg-confirm-bound 1\n") != 0 ||
        !read_kv(f, "system_id", sysid, sizeof(sysid)) || !read_kv(f, "lsn", lsn, sizeof(lsn)) ||
        strlen(sysid) >= sizeof(bound->system_id) || !eng_lsn_parse(lsn, &bound->lsn))
        rc = eng_error_set(err, ENG_EPROTO, false, "state file \"%s\" is corrupt", path);
    else
        memcpy(bound->system_id, sysid, strlen(sysid) + 1);
    fclose(f);
    return rc;
}
