/* engage: one binary, thin subcommands over libengage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/error.h"
#include "commands.h"
#include "options.h"

static const char usage[] =
    "engage: stream engagement events from PostgreSQL to ClickHouse, Redis and an HTTP API\n"
    "\n"
    "usage: engage COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  run        PostgreSQL logical replication -> sinks (`engage --pg ...` alone runs it too)\n"
    "  capture    PostgreSQL -> Kafka, as Debezium's PostgreSQL connector writes it\n"
    "  backfill   a time range of engagement_events -> sinks (--start T --end T)\n"
    "  dlq        the dead-letter table: dlq list, dlq replay, dlq discard\n"
    "  status     the slot's lag, whether engage is ready, the dead letters\n"
    "  top        the top content of the last 10 minutes, from Redis\n"
    "  mock-api   a stand-in for the external HTTP API, for tests and demos\n"
    "\n"
    "`engage COMMAND --help` describes each command's options; `man engage` all of them.\n";

struct command {
    const char *name;
    int (*fn)(int, char **);
};

static const struct command commands[] = {
    {"run", eng_cmd_run},         {"backfill", eng_cmd_backfill}, {"dlq", eng_cmd_dlq},
    {"status", eng_cmd_status},   {"top", eng_cmd_top},           {"mock-api", eng_cmd_mock_api},
    {"capture", eng_cmd_capture},
};

static int dispatch(int argc, char **argv)
{
    /* Nothing at all: the commands, not run's complaint about a missing --pg. */
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc >= 2 && argv[1][0] != '-') {
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
            if (strcmp(argv[1], commands[i].name) == 0)
                return commands[i].fn(argc - 1, argv + 1);
        }
        fprintf(stderr, "engage: unknown command \"%s\"\n\n%s", argv[1], usage);
        return 2;
    }
    /* Options and no command: run, with argv[0] standing in for the command name. */
    return eng_cmd_run(argc, argv);
}

/* The commands read a copy of argv; the original, which is what `ps` shows every user of the
 * machine, has its passwords overwritten with *** before any command runs. */
int main(int argc, char **argv)
{
    char **copy = calloc((size_t)argc + 1, sizeof(*copy));
    if (copy == NULL)
        abort();
    for (int i = 0; i < argc; i++)
        copy[i] = eng_strdup(argv[i]);
    for (int i = 1; i < argc; i++)
        eng_options_scrub_secrets(argv[i]);
    int status = dispatch(argc, copy);
    for (int i = 0; i < argc; i++)
        free(copy[i]);
    free(copy);
    return status;
}
