/* engage: one binary, thin subcommands over libengage. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

static const char usage[] =
    "engage: stream engagement events from PostgreSQL to ClickHouse, Redis and an HTTP API\n"
    "\n"
    "usage: engage [COMMAND] [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  run        PostgreSQL logical replication -> sinks (the default)\n"
    "  backfill   a time range of engagement_events -> sinks (--start T --end T)\n"
    "  dlq        list and replay the dead-letter table (dlq list, dlq replay)\n"
    "  status     the slot's lag, whether engage is ready, the dead letters\n"
    "  top        the top content of the last 10 minutes, from Redis\n"
    "  mock-api   a stand-in for the external HTTP API, for tests and demos\n"
    "\n"
    "`engage COMMAND --help` describes each command's options.\n";

struct command {
    const char *name;
    int (*fn)(int, char **);
};

static const struct command commands[] = {
    {"run", eng_cmd_run},       {"backfill", eng_cmd_backfill}, {"dlq", eng_cmd_dlq},
    {"status", eng_cmd_status}, {"top", eng_cmd_top},           {"mock-api", eng_cmd_mock_api},
};

int main(int argc, char **argv)
{
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
    /* No command: run, with argv[0] standing in for the command name. */
    return eng_cmd_run(argc, argv);
}
