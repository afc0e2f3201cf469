#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "state.h"

bool eng_lsn_parse(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long hi = strtoull(s, &end, 16);
    if (end == s || *end != '/' || errno != 0 || hi > UINT32_MAX)
        return false;
    const char *lo_s = end + 1;
    unsigned long long lo = strtoull(lo_s, &end, 16);
    if (end == lo_s || *end != '\0' || errno != 0 || lo > UINT32_MAX)
        return false;
    *out = (uint64_t)hi << 32 | (uint64_t)lo;
    return true;
}

void eng_lsn_format(uint64_t lsn, char *out, size_t len)
{
    snprintf(out, len, "%" PRIX32 "/%" PRIX32, (uint32_t)(lsn >> 32), (uint32_t)lsn);
}

static void state_path(char *out, size_t len, const char *dir, const char *slot, const char *suffix)
{
    snprintf(out, len, "%s/%s.state%s", dir, slot, suffix);
}

int eng_pg_state_save(const char *dir, const char *slot, const struct eng_pg_state *st,
                      const struct eng_content_cache *cache, struct eng_error *err)
{
    char path[4096], tmp[4200], lsn[24];
    FILE *f = NULL;
    int rc = ENG_EIO;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return eng_error_set(err, rc, false, "could not create state directory \"%s\": %s", dir,
                             strerror(errno));
    state_path(path, sizeof(path), dir, slot, "");
    state_path(tmp, sizeof(tmp), dir, slot, ".tmp");
    f = fopen(tmp, "w");
    if (f == NULL) {
        eng_error_set(err, rc, false, "could not create \"%s\": %s", tmp, strerror(errno));
        goto fail;
    }
    eng_lsn_format(st->lsn, lsn, sizeof(lsn));
    fprintf(f, "engage-pg-state 1\nsystem_id %s\nslot %s\nlsn %s\n", st->system_id, slot, lsn);
    if (eng_content_cache_save(cache, f, err) != 0)
        goto fail;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        eng_error_set(err, rc, false, "could not write \"%s\": %s", tmp, strerror(errno));
        goto fail;
    }
    if (fclose(f) != 0) {
        f = NULL;
        eng_error_set(err, rc, false, "could not write \"%s\": %s", tmp, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        eng_error_set(err, rc, false, "could not rename \"%s\": %s", tmp, strerror(errno));
        goto fail;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd); /* make the rename durable */
        close(dfd);
    }
    return 0;
fail:
    if (f != NULL)
        fclose(f);
    unlink(tmp);
    return rc;
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
    state_path(path, sizeof(path), dir, slot, "");
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (errno == ENOENT)
            return 1;
        return eng_error_set(err, ENG_EIO, false, "could not open \"%s\": %s", path,
                             strerror(errno));
    }
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
