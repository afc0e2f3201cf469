/* engage: state files that survive a crash at any moment (see durable.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "durable.h"

void (*eng_durable_step_hook)(const char *step);

static void step(const char *name)
{
    if (eng_durable_step_hook != NULL)
        eng_durable_step_hook(name);
}

int eng_durable_replace(const char *dir, const char *name, eng_file_writer *write, void *arg,
                        struct eng_error *err)
{
    char path[4096], tmp[4200];
    FILE *f = NULL;
    int rc = ENG_EIO;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return eng_error_set(err, rc, false, "could not create state directory \"%s\": %s", dir,
                             strerror(errno));
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name);
    f = fopen(tmp, "w");
    if (f == NULL) {
        eng_error_set(err, rc, false, "could not create \"%s\": %s", tmp, strerror(errno));
        goto fail;
    }
    step("opened");
    if (write(f, arg, err) != 0)
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
    step("written");
    if (rename(tmp, path) != 0) {
        eng_error_set(err, rc, false, "could not rename \"%s\": %s", tmp, strerror(errno));
        goto fail;
    }
    step("renamed");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0 || fsync(dfd) != 0) { /* the rename is durable only with the directory */
        eng_error_set(err, rc, false, "could not sync directory \"%s\": %s", dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return rc;
    }
    close(dfd);
    return 0;
fail:
    if (f != NULL)
        fclose(f);
    unlink(tmp);
    return rc;
}

int eng_durable_open(const char *path, FILE **f, struct eng_error *err)
{
    *f = fopen(path, "r");
    if (*f != NULL)
        return 0;
    if (errno == ENOENT)
        return 1;
    return eng_error_set(err, ENG_EIO, false, "could not open \"%s\": %s", path, strerror(errno));
}
