/* engage: the command line of the subcommands, from one table of options that says which
 * subcommands take each; a subcommand refuses the others. Values come from flags, then
 * ENGAGE_* environment variables, then an optional config file (--config or ENGAGE_CONFIG) of
 * `name = value` lines using the long option names; a variable or a file line for an option
 * the subcommand does not take is ignored (they serve every subcommand), a file line naming
 * no option is an error. The options only a subcommand's own command line gives (--ids,
 * --json, ...) have no variable. Ownership: every string in struct eng_options is owned by
 * it; eng_options_free releases them. */
#ifndef ENG_OPTIONS_H
#define ENG_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

enum eng_opt_id {
    OPT_PG,
    OPT_CLICKHOUSE,
    OPT_REDIS,
    OPT_HTTP,
    OPT_KAFKA,
    OPT_SINKS,
    OPT_SLOT,
    OPT_PUBLICATION,
    OPT_ADMIN_ADDR,
    OPT_STATE_DIR,
    OPT_BATCH_EVENTS,
    OPT_BATCH_MS,
    OPT_QUEUE_DEPTH,
    OPT_QUEUE_MB,
    OPT_CLICKHOUSE_INTERVAL_MS,
    OPT_LOG_LEVEL,
    OPT_SOURCE,
    OPT_HTTP_BATCH,
    OPT_HTTP_TIMEOUT_MS,
    OPT_HTTP_MAX_ATTEMPTS,
    OPT_HTTP_RETRY_BUDGET_MS,
    OPT_HTTP_INFLIGHT,
    OPT_HTTP_TOKEN_FILE,
    OPT_HTTP_RATE,
    OPT_DLQ_TABLE,
    OPT_SEEN_TTL,
    OPT_REDIS_CALL_EVENTS,
    OPT_CONFIG,
    OPT_START,
    OPT_END,
    OPT_ORIGIN,         /* dlq: rows of this origin */
    OPT_IDS,            /* dlq: these row ids */
    OPT_LIMIT,          /* dlq: at most N rows */
    OPT_ALL,            /* dlq list: every row (a flag) */
    OPT_PENDING,        /* dlq list: pending rows only (a flag) */
    OPT_JSON,           /* dlq list, status: JSON out (a flag) */
    OPT_GROUP,          /* run --source kafka: the consumer group */
    OPT_TOPIC,          /* run --source kafka: the events topic */
    OPT_CONTENT_TOPIC,  /* run --source kafka: the content topic ("" none) */
    OPT_SNAPSHOT_READS, /* run --source kafka: deliver op "r" too (a flag) */
    OPT_TOPIC_PREFIX,   /* capture: topic.prefix */
    OPT_KEY,            /* capture: content_id or primary */
    OPT_NO_SCHEMAS,     /* capture: the JSON converter's schemas off (a flag) */
    OPT_PARTITIONS,     /* capture: partitions of a topic it creates */
    OPT_KAFKA_PROPERTY, /* run, capture: -X key=value, repeatable (lines, in order) */
    OPT__COUNT
};

/* The subcommands that read their options here (mock-api has its own). */
enum eng_cmd_id {
    ENG_CMD_RUN,
    ENG_CMD_BACKFILL,
    ENG_CMD_DLQ_LIST,
    ENG_CMD_DLQ_REPLAY,
    ENG_CMD_DLQ_DISCARD,
    ENG_CMD_STATUS,
    ENG_CMD_TOP,
    ENG_CMD_CAPTURE,
    ENG_CMD__COUNT
};

struct eng_options {
    char *v[OPT__COUNT]; /* NULL when not given anywhere and no default */
    char **args;         /* positional arguments left after the options */
    int nargs;
};

/* Parses argv (argv[0] is the subcommand name) into o with the options cmd takes, filling
 * environment, config file and defaults for those. Returns 0, 1 when --help was asked (usage
 * printed), or -1 on an error (message and usage printed on stderr): an option cmd does not
 * take is one. */
int eng_options_parse(struct eng_options *o, enum eng_cmd_id cmd, int argc, char **argv,
                      const char *usage);

/* Whether subcommand cmd takes option id. */
bool eng_options_takes(enum eng_cmd_id cmd, enum eng_opt_id id);

/* The long name of option id, without the dashes ("http-batch"). */
const char *eng_opt_name(enum eng_opt_id id);

/* Whether flag id (an option without a value, such as --json) was given. */
bool eng_opt_flag(const struct eng_options *o, enum eng_opt_id id);

void eng_options_free(struct eng_options *o);

/* Reads config-file text (len bytes, not necessarily NUL-terminated) into the options not
 * set yet, as --config does with a file, for every subcommand at once; name is used in
 * messages. Returns 0 or -1 after printing why. For the fuzz target and the unit tests; any
 * thread. */
int eng_options_config_text(struct eng_options *o, const char *text, size_t len, const char *name);

/* The value of id, or NULL. */
const char *eng_opt(const struct eng_options *o, enum eng_opt_id id);

/* Parses an integer option into *out within [min, max]; prints an error and returns false
 * when it does not parse. A missing option keeps *out. */
bool eng_opt_int(const struct eng_options *o, enum eng_opt_id id, int64_t min, int64_t max,
                 int64_t *out);

/* Overwrites in place every secret in arg, so that `ps` shows `***` where it was: the password
 * of a URL's user:password@, and the value of any `password=` (libpq conninfo, a URL's query,
 * sslpassword=). The string keeps its length: the rest moves left and the freed bytes at its end
 * become NULs. Returns true when something was replaced. Any thread; arg is borrowed. */
bool eng_options_scrub_secrets(char *arg);

/* Checks --sinks: every name in the list is a sink this build has. Returns false after
 * printing a usage error. */
bool eng_opt_sinks_valid(const struct eng_options *o);

/* Parses a decimal option (e.g. "2.5") into *out within [min, max]; prints an error and returns
 * false when it does not parse. A missing option keeps *out. */
bool eng_opt_double(const struct eng_options *o, enum eng_opt_id id, double min, double max,
                    double *out);

/* True when sink name ("clickhouse", "redis", "http") is enabled: listed in --sinks, or, when
 * --sinks is absent, configured with a URL. */
bool eng_opt_sink_enabled(const struct eng_options *o, const char *name);

/* The lines of a repeatable option (--kafka-property / -X) as a NULL-terminated array of
 * copies, *n of them; free with eng_opt_lines_free. */
char **eng_opt_lines(const struct eng_options *o, enum eng_opt_id id, size_t *n);
void eng_opt_lines_free(char **lines);

#endif
