/* engage: state files that survive a crash at any moment. Ownership: nothing is retained. */
#ifndef ENG_CORE_DURABLE_H
#define ENG_CORE_DURABLE_H

#include <stdio.h>

#include "error.h"

/* Writes one callback's output to DIR/NAME so that after a crash at any step either the old
 * or the new file is there, whole: a temporary file, fsync, rename, fsync of the directory
 * (created if needed). write returns 0 or an error; every state file goes through here. */
typedef int eng_file_writer(FILE *f, void *arg, struct eng_error *err);
int eng_durable_replace(const char *dir, const char *name, eng_file_writer *write, void *arg,
                        struct eng_error *err) ENG_MUSTCHECK;

/* Opens a state file for reading: 0 with *f set, 1 when there is no such file, or an
 * error naming the path. */
int eng_durable_open(const char *path, FILE **f, struct eng_error *err) ENG_MUSTCHECK;

/* For tests only (NULL in engage): called between the steps, with "opened", "written"
 * (synced and closed, not yet renamed) and "renamed" (not yet the directory synced), so a
 * test can end the process there as a crash would. */
extern void (*eng_durable_step_hook)(const char *step);

#endif
