#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/error.h"
#include "../core/pgtext.h"
#include "options.h"

/* Which subcommands take an option: one bit per enum eng_cmd_id. */
#define RUN     (1u << ENG_CMD_RUN)
#define BACKFIL (1u << ENG_CMD_BACKFILL)
#define LIST    (1u << ENG_CMD_DLQ_LIST)
#define REPLAY  (1u << ENG_CMD_DLQ_REPLAY)
#define DISCARD (1u << ENG_CMD_DLQ_DISCARD)
#define STATUS  (1u << ENG_CMD_STATUS)
#define TOP     (1u << ENG_CMD_TOP)
#define CAPTURE (1u << ENG_CMD_CAPTURE)
#define DLQ     (LIST | REPLAY | DISCARD)
#define SINKS   (RUN | BACKFIL)          /* what eng_cli_sinks_create reads */
#define STREAM  (RUN | CAPTURE)          /* the replication stream's and Kafka's options */
#define HTTP    (RUN | BACKFIL | REPLAY) /* the HTTP sink's options */
#define ALL_CMD ((1u << ENG_CMD__COUNT) - 1)

struct opt_def {
    const char *name;
    const char *env; /* NULL: on the command line only (not from the environment or a file) */
    const char *def;
    bool flag;     /* takes no value; "1" when given */
    unsigned cmds; /* the subcommands that take it */
};

/* The one table of options: name, variable, default, and which subcommands take it. A
 * subcommand refuses the others (usage error); their variables and config lines are ignored,
 * since one environment or file may serve several subcommands. The HTTP sink's options have
 * no default here: eng_http_options_default holds them. */
static const struct opt_def defs[OPT__COUNT] = {
    [OPT_PG] = {"pg", "ENGAGE_PG", NULL, false, SINKS | DLQ | STATUS | CAPTURE},
    [OPT_CLICKHOUSE] = {"clickhouse", "ENGAGE_CLICKHOUSE", NULL, false, SINKS},
    [OPT_REDIS] = {"redis", "ENGAGE_REDIS", NULL, false, SINKS | TOP},
    [OPT_HTTP] = {"http", "ENGAGE_HTTP", NULL, false, HTTP},
    [OPT_KAFKA] = {"kafka", "ENGAGE_KAFKA", NULL, false, STREAM},
    [OPT_SINKS] = {"sinks", "ENGAGE_SINKS", NULL, false, SINKS},
    [OPT_SLOT] = {"slot", "ENGAGE_SLOT", "engage_slot", false, STREAM | STATUS},
    [OPT_PUBLICATION] = {"publication", "ENGAGE_PUBLICATION", "engage_pub", false, STREAM},
    [OPT_ADMIN_ADDR] = {"admin-addr", "ENGAGE_ADMIN_ADDR", "127.0.0.1:9187", false,
                        STREAM | STATUS},
    [OPT_STATE_DIR] = {"state-dir", "ENGAGE_STATE_DIR", "engage-state", false, SINKS | CAPTURE},
    [OPT_BATCH_EVENTS] = {"batch-events", "ENGAGE_BATCH_EVENTS", "10000", false, SINKS | CAPTURE},
    [OPT_BATCH_MS] = {"batch-ms", "ENGAGE_BATCH_MS", "50", false, STREAM},
    [OPT_QUEUE_DEPTH] = {"queue-depth", "ENGAGE_QUEUE_DEPTH", "1024", false, SINKS | CAPTURE},
    [OPT_QUEUE_MB] = {"queue-mb", "ENGAGE_QUEUE_MB", "128", false, SINKS | CAPTURE},
    [OPT_CLICKHOUSE_INTERVAL_MS] = {"clickhouse-interval-ms", "ENGAGE_CLICKHOUSE_INTERVAL_MS",
                                    "200", false, SINKS},
    [OPT_LOG_LEVEL] = {"log-level", "ENGAGE_LOG_LEVEL", "info", false, SINKS | STATUS | CAPTURE},
    [OPT_SOURCE] = {"source", "ENGAGE_SOURCE", "pg", false, RUN | STATUS},
    [OPT_HTTP_BATCH] = {"http-batch", "ENGAGE_HTTP_BATCH", NULL, false, HTTP},
    [OPT_HTTP_TIMEOUT_MS] = {"http-timeout-ms", "ENGAGE_HTTP_TIMEOUT_MS", NULL, false, HTTP},
    [OPT_HTTP_MAX_ATTEMPTS] = {"http-max-attempts", "ENGAGE_HTTP_MAX_ATTEMPTS", NULL, false, HTTP},
    [OPT_HTTP_RETRY_BUDGET_MS] = {"http-retry-budget-ms", "ENGAGE_HTTP_RETRY_BUDGET_MS", NULL,
                                  false, HTTP},
    [OPT_HTTP_INFLIGHT] = {"http-inflight", "ENGAGE_HTTP_INFLIGHT", NULL, false, HTTP},
    [OPT_HTTP_TOKEN_FILE] = {"http-token-file", "ENGAGE_HTTP_TOKEN_FILE", NULL, false, HTTP},
    [OPT_HTTP_RATE] = {"http-rate", "ENGAGE_HTTP_RATE", NULL, false, HTTP},
    [OPT_DLQ_TABLE] = {"dlq-table", "ENGAGE_DLQ_TABLE", "engage_dlq", false,
                       SINKS | DLQ | STATUS | CAPTURE},
    [OPT_SEEN_TTL] = {"seen-ttl", "ENGAGE_SEEN_TTL", "0", false, SINKS},
    [OPT_REDIS_CALL_EVENTS] = {"redis-call-events", "ENGAGE_REDIS_CALL_EVENTS", "1000", false,
                               SINKS},
    [OPT_CONFIG] = {"config", "ENGAGE_CONFIG", NULL, false, ALL_CMD},
    [OPT_START] = {"start", "ENGAGE_START", NULL, false, BACKFIL},
    [OPT_END] = {"end", "ENGAGE_END", NULL, false, BACKFIL},
    [OPT_ORIGIN] = {"origin", NULL, NULL, false, DLQ},
    [OPT_IDS] = {"ids", NULL, NULL, false, DLQ},
    [OPT_LIMIT] = {"limit", NULL, NULL, false, LIST | REPLAY},
    [OPT_ALL] = {"all", NULL, NULL, true, LIST},
    [OPT_PENDING] = {"pending", NULL, NULL, true, LIST},
    [OPT_JSON] = {"json", NULL, NULL, true, LIST | STATUS},
    [OPT_GROUP] = {"group", "ENGAGE_GROUP", "engage", false, RUN},
    [OPT_TOPIC] = {"topic", "ENGAGE_TOPIC", "dbserver1.public.engagement_events", false, RUN},
    [OPT_CONTENT_TOPIC] = {"content-topic", "ENGAGE_CONTENT_TOPIC", NULL, false, RUN},
    [OPT_SNAPSHOT_READS] = {"snapshot-reads", NULL, NULL, true, RUN},
    [OPT_TOPIC_PREFIX] = {"topic-prefix", "ENGAGE_TOPIC_PREFIX", "dbserver1", false, CAPTURE},
    [OPT_KEY] = {"key", "ENGAGE_KEY", "content_id", false, CAPTURE},
    [OPT_NO_SCHEMAS] = {"no-schemas", NULL, NULL, true, CAPTURE},
    [OPT_PARTITIONS] = {"partitions", "ENGAGE_PARTITIONS", "1", false, CAPTURE},
    [OPT_KAFKA_PROPERTY] = {"kafka-property", NULL, NULL, false, STREAM},
};

/* Where a subcommand's default differs from the table's: capture runs beside run on one
 * machine, so it has a slot, a state directory and an admin port of its own. */
static const struct {
    enum eng_opt_id id;
    enum eng_cmd_id cmd;
    const char *def;
} cmd_defaults[] = {
    {OPT_SLOT, ENG_CMD_CAPTURE, "engage_capture"},
    {OPT_STATE_DIR, ENG_CMD_CAPTURE, "engage-capture-state"},
    {OPT_ADMIN_ADDR, ENG_CMD_CAPTURE, "127.0.0.1:9188"},
    /* capture's events are Debezium records of about 3.8 KB: 32 MB queue 8,000 of them */
    {OPT_QUEUE_MB, ENG_CMD_CAPTURE, "32"},
    /* backfill has a backlog, not a stream: the sinks write as fast as they take it (an insert
     * that waits for the interval only holds ClickHouse back), and Redis in calls that share
     * more of their per-content work (each holds Redis for about 35 ms; two calls per write of
     * the pipeline's 50,000 events, the second sent while the first runs) */
    {OPT_CLICKHOUSE_INTERVAL_MS, ENG_CMD_BACKFILL, "0"},
    {OPT_REDIS_CALL_EVENTS, ENG_CMD_BACKFILL, "25000"},
};

static const char *default_for(enum eng_cmd_id cmd, int id)
{
    for (size_t i = 0; i < sizeof(cmd_defaults) / sizeof(cmd_defaults[0]); i++) {
        if ((int)cmd_defaults[i].id == id && cmd_defaults[i].cmd == cmd)
            return cmd_defaults[i].def;
    }
    return defs[id].def;
}

static const char *const cmd_names[ENG_CMD__COUNT] = {
    [ENG_CMD_RUN] = "run",
    [ENG_CMD_BACKFILL] = "backfill",
    [ENG_CMD_DLQ_LIST] = "dlq list",
    [ENG_CMD_DLQ_REPLAY] = "dlq replay",
    [ENG_CMD_DLQ_DISCARD] = "dlq discard",
    [ENG_CMD_STATUS] = "status",
    [ENG_CMD_TOP] = "top",
    [ENG_CMD_CAPTURE] = "capture",
};

bool eng_options_takes(enum eng_cmd_id cmd, enum eng_opt_id id)
{
    return (defs[id].cmds & (1u << cmd)) != 0;
}

const char *eng_opt_name(enum eng_opt_id id)
{
    return defs[id].name;
}

bool eng_opt_flag(const struct eng_options *o, enum eng_opt_id id)
{
    return o->v[id] != NULL;
}

const char *eng_opt(const struct eng_options *o, enum eng_opt_id id)
{
    return o->v[id];
}

static int find_opt(const char *name, size_t len)
{
    for (int i = 0; i < OPT__COUNT; i++) {
        if (strlen(defs[i].name) == len && strncmp(defs[i].name, name, len) == 0)
            return i;
    }
    return -1;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

/* Sets option id from line `key = val` of a config file, unless it is set already or the
 * subcommands in cmds do not take it. Returns false when key names no option a file may set. */
static bool config_line(struct eng_options *o, unsigned cmds, const char *key, const char *val)
{
    int id = find_opt(key, strlen(key));
    if (id < 0 || id == OPT_CONFIG || defs[id].env == NULL)
        return false;
    if ((defs[id].cmds & cmds) != 0 && o->v[id] == NULL)
        o->v[id] = eng_strdup(val);
    return true;
}

/* Fills options not yet set from the lines of f (path names it in messages), for the
 * subcommands in cmds. */
static int read_config_stream(struct eng_options *o, unsigned cmds, FILE *f, const char *path)
{
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            fprintf(stderr, "engage: %s:%d: expected \"name = value\"\n", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        if (!config_line(o, cmds, key, val)) {
            fprintf(stderr, "engage: %s:%d: unknown option \"%s\"\n", path, lineno, key);
            rc = -1;
            break;
        }
    }
    free(line);
    return rc;
}

/* Fills options not yet set from the config file. */
static int read_config(struct eng_options *o, unsigned cmds, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "engage: could not open config file \"%s\": %s\n", path, strerror(errno));
        return -1;
    }
    int rc = read_config_stream(o, cmds, f, path);
    fclose(f);
    return rc;
}

int eng_options_config_text(struct eng_options *o, const char *text, size_t len, const char *name)
{
    if (len == 0)
        return 0; /* fmemopen refuses an empty buffer; an empty file sets nothing */
    FILE *f = fmemopen((void *)(uintptr_t)text, len, "r");
    if (f == NULL) {
        fprintf(stderr, "engage: could not read config \"%s\": %s\n", name, strerror(errno));
        return -1;
    }
    int rc = read_config_stream(o, ALL_CMD, f, name);
    fclose(f);
    return rc;
}

/* The getopt table of the options cmd takes, and --help; n is OPT__COUNT + 2. */
static void build_longopts(enum eng_cmd_id cmd, struct option *longopts)
{
    int n = 0;
    for (int i = 0; i < OPT__COUNT; i++) {
        if (eng_options_takes(cmd, (enum eng_opt_id)i))
            longopts[n++] = (struct option){
                defs[i].name, defs[i].flag ? no_argument : required_argument, NULL, 1000 + i};
    }
    longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[n] = (struct option){NULL, 0, NULL, 0};
}

/* Says what is wrong with the argument getopt refused: a short option (short_opt), or arg, a
 * long one as given ("--name" or "--name=value"), which lacked its value when missing. */
static void bad_option(enum eng_cmd_id cmd, const char *arg, int short_opt, bool missing)
{
    const char *name = cmd_names[cmd];
    if (short_opt != 0) {
        fprintf(stderr, "engage %s: unknown option -%c\n", name, short_opt);
        return;
    }
    int len = (int)strcspn(arg, "=");
    int id = strncmp(arg, "--", 2) == 0 ? find_opt(arg + 2, (size_t)len - 2) : -1;
    if (missing)
        fprintf(stderr, "engage %s: option %.*s needs a value\n", name, len, arg);
    else if (id >= 0 && eng_options_takes(cmd, (enum eng_opt_id)id))
        fprintf(stderr, "engage %s: option %.*s takes no value\n", name, len, arg);
    else if (id >= 0)
        fprintf(stderr, "engage %s: %.*s is not an option of engage %s (see engage %s --help)\n",
                name, len, arg, name, name);
    else
        fprintf(stderr, "engage %s: unknown option %.*s\n", name, len, arg);
}

/* Appends line to the newline-separated list *list. */
static void add_line(char **list, const char *line)
{
    size_t old = *list ? strlen(*list) : 0;
    char *s = eng_realloc(*list, old + strlen(line) + 2);
    if (old > 0)
        s[old++] = '\n';
    strcpy(s + old, line);
    *list = s;
}

/* Reads the flags of argv into o. Returns 0, 1 after printing usage for --help, or -1 after
 * printing a usage error. */
static int parse_argv(struct eng_options *o, enum eng_cmd_id cmd, int argc, char **argv,
                      const char *usage)
{
    struct option longopts[OPT__COUNT + 2];
    build_longopts(cmd, longopts);
    bool kafka = eng_options_takes(cmd, OPT_KAFKA_PROPERTY); /* -X key=value */
    optind = 1;
    opterr = 0; /* bad_option says it, naming the subcommand */
    for (;;) {
        int c = getopt_long(argc, argv, kafka ? ":hX:" : ":h", longopts, NULL);
        if (c == -1)
            break;
        if (c == 'h') {
            fputs(usage, stdout);
            return 1;
        }
        if (c == 'X' || c == 1000 + OPT_KAFKA_PROPERTY) {
            add_line(&o->v[OPT_KAFKA_PROPERTY], optarg);
            continue;
        }
        if (c < 1000 || c >= 1000 + OPT__COUNT) {
            bool is_long = c == ':' || optopt == 0 || optopt >= 1000;
            bad_option(cmd, argv[optind - 1], is_long ? 0 : optopt, c == ':');
            fprintf(stderr, "\n%s", usage);
            return -1;
        }
        free(o->v[c - 1000]);
        o->v[c - 1000] = eng_strdup(defs[c - 1000].flag ? "1" : optarg);
    }
    o->args = argv + optind;
    o->nargs = argc - optind;
    return 0;
}

int eng_options_parse(struct eng_options *o, enum eng_cmd_id cmd, int argc, char **argv,
                      const char *usage)
{
    memset(o, 0, sizeof(*o));
    int rc = parse_argv(o, cmd, argc, argv, usage);
    if (rc != 0)
        return rc;
    unsigned mine = 1u << cmd;
    for (int i = 0; i < OPT__COUNT; i++) {
        const char *env = defs[i].env ? getenv(defs[i].env) : NULL;
        if ((defs[i].cmds & mine) && o->v[i] == NULL && env != NULL && *env != '\0')
            o->v[i] = eng_strdup(env);
    }
    if (o->v[OPT_CONFIG] != NULL && read_config(o, mine, o->v[OPT_CONFIG]) != 0)
        return -1;
    for (int i = 0; i < OPT__COUNT; i++) {
        const char *def = default_for(cmd, i);
        if ((defs[i].cmds & mine) && o->v[i] == NULL && def != NULL)
            o->v[i] = eng_strdup(def);
    }
    return 0;
}

void eng_options_free(struct eng_options *o)
{
    for (int i = 0; i < OPT__COUNT; i++) {
        free(o->v[i]);
        o->v[i] = NULL;
    }
}

bool eng_opt_int(const struct eng_options *o, enum eng_opt_id id, int64_t min, int64_t max,
                 int64_t *out)
{
    const char *s = o->v[id];
    if (s == NULL)
        return true;
    int64_t v;
    if (!eng_parse_i64(s, strlen(s), &v) || v < min || v > max) {
        fprintf(stderr, "engage: --%s must be an integer from %lld to %lld, not \"%s\"\n",
                defs[id].name, (long long)min, (long long)max, s);
        return false;
    }
    *out = v;
    return true;
}

bool eng_opt_double(const struct eng_options *o, enum eng_opt_id id, double min, double max,
                    double *out)
{
    const char *s = o->v[id];
    if (s == NULL)
        return true;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !(v >= min && v <= max)) {
        fprintf(stderr, "engage: --%s must be a number from %g to %g, not \"%s\"\n", defs[id].name,
                min, max, s);
        return false;
    }
    *out = v;
    return true;
}

/* Replaces s[start, end) by "***" (fewer stars when the secret is shorter: the string must
 * not grow); returns the index just after the stars. */
static size_t scrub_span(char *s, size_t start, size_t end)
{
    size_t len = strlen(s), n = end - start, stars = n < 3 ? n : 3;
    memset(s + start, '*', stars);
    memmove(s + start + stars, s + end, len - end);
    memset(s + len - (n - stars), '\0', n - stars);
    return start + stars;
}

/* scheme://user:password@host: the password is between the first ':' of the authority and
 * its last '@'. Returns true when there was one to hide. */
static bool scrub_url_password(char *arg)
{
    char *scheme = strstr(arg, "://");
    if (scheme == NULL)
        return false;
    char *auth = scheme + 3;
    size_t alen = strcspn(auth, "/?#");
    char *at = NULL;
    for (size_t i = 0; i < alen; i++) {
        if (auth[i] == '@')
            at = auth + i;
    }
    char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon == NULL || at <= colon + 1)
        return false;
    scrub_span(arg, (size_t)(colon + 1 - arg), (size_t)(at - arg));
    return true;
}

static size_t skip_blanks(const char *s, size_t i)
{
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    return i;
}

/* The end of the value that starts at arg[i]: a conninfo-quoted one ('...', with \' and \\
 * escapes) or one up to a blank, '&' or '#'. */
static size_t value_end(const char *arg, size_t i)
{
    if (arg[i] != '\'') {
        while (arg[i] != '\0' && arg[i] != ' ' && arg[i] != '\t' && arg[i] != '&' && arg[i] != '#')
            i++;
        return i;
    }
    i++;
    while (arg[i] != '\0' && arg[i] != '\'') {
        if (arg[i] == '\\' && arg[i + 1] != '\0')
            i++;
        i++;
    }
    return arg[i] == '\'' ? i + 1 : i;
}

/* password=value, password = 'quoted value', ?password=value&...: every value hidden.
 * Returns true when there was one. */
static bool scrub_password_params(char *arg)
{
    bool changed = false;
    size_t pos = 0;
    for (;;) {
        const char *p = strcasestr(arg + pos, "password");
        if (p == NULL)
            break;
        size_t i = skip_blanks(arg, (size_t)(p - arg) + strlen("password"));
        if (arg[i] != '=') {
            pos = i;
            continue;
        }
        size_t start = skip_blanks(arg, i + 1);
        size_t end = value_end(arg, start);
        if (end > start) {
            pos = scrub_span(arg, start, end);
            changed = true;
        } else {
            pos = end;
        }
    }
    return changed;
}

bool eng_options_scrub_secrets(char *arg)
{
    bool url = scrub_url_password(arg);
    bool params = scrub_password_params(arg);
    return url || params;
}

bool eng_opt_sinks_valid(const struct eng_options *o)
{
    static const char *const known[] = {"clickhouse", "redis", "http", "stdout"};
    const char *list = o->v[OPT_SINKS];
    if (list == NULL)
        return true;
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        bool ok = false;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            ok = ok || (strlen(known[i]) == len && strncmp(p, known[i], len) == 0);
        if (!ok) {
            if (len == 5 && strncmp(p, "kafka", 5) == 0)
                fprintf(stderr, "engage: --sinks: the kafka sink is not built in this version; "
                                "sinks are clickhouse, redis, http, stdout\n");
            else
                fprintf(stderr,
                        "engage: --sinks: unknown sink \"%.*s\"; sinks are clickhouse, "
                        "redis, http, stdout\n",
                        (int)len, p);
            return false;
        }
        p += len;
        if (*p == '\0')
            return true;
        p++; /* the comma: an empty name after it is refused too */
    }
}

bool eng_opt_sink_enabled(const struct eng_options *o, const char *name)
{
    const char *list = o->v[OPT_SINKS];
    if (list == NULL) {
        if (strcmp(name, "clickhouse") == 0)
            return o->v[OPT_CLICKHOUSE] != NULL;
        if (strcmp(name, "redis") == 0)
            return o->v[OPT_REDIS] != NULL;
        if (strcmp(name, "http") == 0)
            return o->v[OPT_HTTP] != NULL;
        return false;
    }
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len;
        if (*p == ',')
            p++;
    }
    return false;
}

char **eng_opt_lines(const struct eng_options *o, enum eng_opt_id id, size_t *n)
{
    const char *s = o->v[id];
    size_t count = 0;
    for (const char *p = s; p != NULL && *p != '\0'; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : "")
        count++;
    char **lines = eng_calloc(count + 1, sizeof(*lines));
    const char *p = s;
    for (size_t i = 0; i < count; i++) {
        size_t len = strcspn(p, "\n");
        lines[i] = eng_strndup(p, len);
        p += len + (p[len] == '\n');
    }
    *n = count;
    return lines;
}

void eng_opt_lines_free(char **lines)
{
    for (size_t i = 0; lines != NULL && lines[i] != NULL; i++)
        free(lines[i]);
    free(lines);
}
