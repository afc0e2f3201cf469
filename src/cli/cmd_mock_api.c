/* engage mock-api: the stand-in for the external HTTP API, with fault injection (see
 * src/mockapi/mockapi.h for the endpoints and the control JSON). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"
#include "../mockapi/mockapi.h"
#include "commands.h"

static const char usage[] =
    "usage: engage mock-api [--listen HOST:PORT] [options]\n"
    "\n"
    "The stand-in for the external HTTP API: POST /events takes one enriched event or a JSON\n"
    "array of them, dedupes by event_id and answers 200 {\"accepted\":N}.\n"
    "GET /stats, GET /events/ids, GET /events, GET /log, GET /healthz; GET|POST /control on\n"
    "the control listener only.\n"
    "\n"
    "  --listen HOST:PORT        API address (default 127.0.0.1:8000; port 0: any free port)\n"
    "  --control-listen HOST:PORT  control address, up even while the API is down\n"
    "                            (default: the API host, any free port; \"off\": none)\n"
    "  --port-file PATH          write {\"port\":N,\"control_port\":N} once listening\n"
    "  --seed N                  fault dice seed (default: from the clock)\n"
    "  --fail-rate F             fraction of POST /events answered --fail-status (500)\n"
    "  --fail-status N\n"
    "  --status-429-rate F       fraction answered 429 ...\n"
    "  --retry-after S           ... with Retry-After: S seconds\n"
    "  --retry-after-date        send Retry-After as an HTTP-date\n"
    "  --delay-ms N              delay every answer by N ms ...\n"
    "  --delay-jitter-ms N       ... plus uniform 0..N ms\n"
    "  --hang[=F]                never answer (fraction F, default 1); closed after\n"
    "  --hang-max-ms N           N ms (default 120000)\n"
    "  --reset[=F]               close with a TCP reset after reading the request\n"
    "  --reset-after-accept[=F]  record the events, then reset instead of answering\n"
    "  --down                    start with the API refusing connections ...\n"
    "  --down-ms N               ... for N ms (default: until POST /control {\"down\":false})\n"
    "  --require-token TOKEN     POST /events needs Authorization: Bearer TOKEN (else 401)\n"
    "  --log                     one log line per request\n"
    "  --log-size N              requests kept for GET /log (default 4096)\n"
    "  --max-events N            unique events kept (default 16777216; then 507)\n"
    "  --max-body-mb N           request body cap (default 16; then 413)\n"
    "  --max-body-total-mb N     request bodies held at once, all connections (default 64;\n"
    "                            a request that would pass it: 503)\n"
    "  --max-connections N       per listener (default 512, one thread each)\n"
    "  --log-level LEVEL         debug, info, warn or error\n"
    "  --help\n"
    "\n"
    "Faults change at run time: POST /control {\"fail_rate\":0.3}, {\"status_429_rate\":1,\n"
    "\"retry_after\":2}, {\"delay_ms\":3000}, {\"hang\":true}, {\"reset\":0.5}, {\"down\":true,\n"
    "\"down_ms\":5000}, {\"clear\":true}, {\"clear_stats\":true}, ... SIGTERM/SIGINT: exit 0.\n";

static int bad_value(const char *opt, const char *v)
{
    fprintf(stderr, "engage mock-api: invalid value \"%s\" for --%s\n", v, opt);
    return -1;
}

static int parse_double(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(d >= lo && d <= hi))
        return bad_value(opt, v);
    *out = d;
    return 0;
}

static int parse_i64(const char *opt, const char *v, long long lo, long long hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi)
        return bad_value(opt, v);
    *out = (int64_t)x;
    return 0;
}

/* Splits HOST:PORT (or [V6]:PORT) into host (copied into buf) and port. */
static int parse_addr(const char *opt, const char *v, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(v, ':');
    if (colon == NULL)
        return bad_value(opt, v);
    const char *h = v;
    size_t hl = (size_t)(colon - v);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0) {
        h = "127.0.0.1";
        hl = strlen(h);
    }
    if (hl >= cap)
        return bad_value(opt, v);
    memcpy(host, h, hl);
    host[hl] = '\0';
    int64_t p;
    if (parse_i64(opt, colon + 1, 0, 65535, &p) != 0)
        return -1;
    *port = (int)p;
    return 0;
}

static int write_port_file(const char *path, unsigned port, unsigned control_port)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -1;
    FILE *f = fopen(tmp, "we");
    if (f == NULL)
        return -1;
    fprintf(f, "{\"port\":%u,\"control_port\":%u}\n", port, control_port);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

enum {
    OPT_LISTEN = 256,
    OPT_CONTROL_LISTEN,
    OPT_PORT_FILE,
    OPT_SEED,
    OPT_FAIL_RATE,
    OPT_FAIL_STATUS,
    OPT_429_RATE,
    OPT_RETRY_AFTER,
    OPT_RETRY_AFTER_DATE,
    OPT_DELAY,
    OPT_JITTER,
    OPT_HANG,
    OPT_HANG_MAX,
    OPT_RESET,
    OPT_RESET_AFTER_ACCEPT,
    OPT_DOWN,
    OPT_DOWN_MS,
    OPT_TOKEN,
    OPT_LOG,
    OPT_LOG_SIZE,
    OPT_MAX_EVENTS,
    OPT_MAX_BODY_MB,
    OPT_MAX_BODY_TOTAL_MB,
    OPT_MAX_CONNECTIONS,
    OPT_LOG_LEVEL,
    OPT_HELP,
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"control-listen", required_argument, NULL, OPT_CONTROL_LISTEN},
    {"port-file", required_argument, NULL, OPT_PORT_FILE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"fail-rate", required_argument, NULL, OPT_FAIL_RATE},
    {"fail-status", required_argument, NULL, OPT_FAIL_STATUS},
    {"status-429-rate", required_argument, NULL, OPT_429_RATE},
    {"429-rate", required_argument, NULL, OPT_429_RATE},
    {"retry-after", required_argument, NULL, OPT_RETRY_AFTER},
    {"retry-after-date", no_argument, NULL, OPT_RETRY_AFTER_DATE},
    {"delay-ms", required_argument, NULL, OPT_DELAY},
    {"delay-jitter-ms", required_argument, NULL, OPT_JITTER},
    {"hang", optional_argument, NULL, OPT_HANG},
    {"hang-max-ms", required_argument, NULL, OPT_HANG_MAX},
    {"reset", optional_argument, NULL, OPT_RESET},
    {"reset-after-accept", optional_argument, NULL, OPT_RESET_AFTER_ACCEPT},
    {"down", no_argument, NULL, OPT_DOWN},
    {"down-ms", required_argument, NULL, OPT_DOWN_MS},
    {"require-token", required_argument, NULL, OPT_TOKEN},
    {"log", no_argument, NULL, OPT_LOG},
    {"log-size", required_argument, NULL, OPT_LOG_SIZE},
    {"max-events", required_argument, NULL, OPT_MAX_EVENTS},
    {"max-body-mb", required_argument, NULL, OPT_MAX_BODY_MB},
    {"max-body-total-mb", required_argument, NULL, OPT_MAX_BODY_TOTAL_MB},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* What the command line says: the mock's options and where to listen. */
struct mock_cli {
    struct eng_mockapi_options o;
    char host[256];
    char control_host[256];
    int port;
    int control_port;
    const char *port_file;
};

/* A rate whose value is optional: absent means always. */
static int parse_optional_rate(const char *opt, const char *arg, double *out)
{
    double d = 1;
    int rc = arg ? parse_double(opt, arg, 0, 1, &d) : 0;
    *out = d;
    return rc;
}

/* The options that set a fault. Returns 0, -1 on a bad value (said on stderr), or 1 when c is
 * not a fault option. */
static int take_fault_option(struct eng_mockapi_faults *f, int c, const char *arg)
{
    int64_t v;
    int rc;
    switch (c) {
    case OPT_FAIL_RATE:
        return parse_double("fail-rate", arg, 0, 1, &f->fail_rate);
    case OPT_FAIL_STATUS:
        rc = parse_i64("fail-status", arg, 100, 599, &v);
        f->fail_status = (int)v;
        return rc;
    case OPT_429_RATE:
        return parse_double("status-429-rate", arg, 0, 1, &f->status_429_rate);
    case OPT_RETRY_AFTER:
        return parse_i64("retry-after", arg, 0, 86400, &f->retry_after_s);
    case OPT_RETRY_AFTER_DATE:
        f->retry_after_date = true;
        return 0;
    case OPT_DELAY:
        return parse_i64("delay-ms", arg, 0, 3600000, &f->delay_ms);
    case OPT_JITTER:
        return parse_i64("delay-jitter-ms", arg, 0, 3600000, &f->delay_jitter_ms);
    case OPT_HANG:
        return parse_optional_rate("hang", arg, &f->hang_rate);
    case OPT_HANG_MAX:
        return parse_i64("hang-max-ms", arg, 1, 3600000, &f->hang_max_ms);
    case OPT_RESET:
        return parse_optional_rate("reset", arg, &f->reset_rate);
    case OPT_RESET_AFTER_ACCEPT:
        return parse_optional_rate("reset-after-accept", arg, &f->reset_after_accept_rate);
    case OPT_DOWN:
        f->down = true;
        return 0;
    case OPT_DOWN_MS:
        return parse_i64("down-ms", arg, 0, 86400000, &f->down_ms);
    case OPT_LOG:
        f->log = true;
        return 0;
    default:
        return 1;
    }
}

/* The options about listeners, limits and logging. Returns 0, -1 on a bad value (said on
 * stderr), or 1 when c is not one of them. */
static int take_server_option(struct mock_cli *cli, int c, const char *arg)
{
    struct eng_mockapi_options *o = &cli->o;
    int64_t v;
    int rc;
    switch (c) {
    case OPT_LISTEN:
        return parse_addr("listen", arg, cli->host, sizeof(cli->host), &cli->port);
    case OPT_CONTROL_LISTEN:
        if (strcmp(arg, "off") == 0) {
            cli->control_port = -1;
            return 0;
        }
        return parse_addr("control-listen", arg, cli->control_host, sizeof(cli->control_host),
                          &cli->control_port);
    case OPT_PORT_FILE:
        cli->port_file = arg;
        return 0;
    case OPT_SEED:
        rc = parse_i64("seed", arg, 0, INT64_MAX, &v);
        o->seed = (uint64_t)v;
        return rc;
    case OPT_TOKEN:
        o->require_token = arg;
        return 0;
    case OPT_LOG_SIZE:
        rc = parse_i64("log-size", arg, 1, 10000000, &v);
        o->log_size = (size_t)v;
        return rc;
    case OPT_MAX_EVENTS:
        rc = parse_i64("max-events", arg, 1, (long long)1 << 32, &v);
        o->max_events = (size_t)v;
        return rc;
    case OPT_MAX_BODY_MB:
        rc = parse_i64("max-body-mb", arg, 1, 4096, &v);
        o->max_body = (size_t)v << 20;
        return rc;
    case OPT_MAX_BODY_TOTAL_MB:
        rc = parse_i64("max-body-total-mb", arg, 1, 65536, &v);
        o->max_body_total = (size_t)v << 20;
        return rc;
    case OPT_MAX_CONNECTIONS:
        rc = parse_i64("max-connections", arg, 1, 10000, &v);
        o->max_connections = (unsigned)v;
        return rc;
    case OPT_LOG_LEVEL: {
        enum eng_log_level lvl;
        if (!eng_log_parse_level(arg, &lvl))
            return bad_value("log-level", arg);
        eng_log_set_level(lvl);
        return 0;
    }
    default:
        return 1;
    }
}

/* Reads the command line into cli. Returns -1 to go on, else the exit status: 0 after
 * --help, 2 on a usage error. */
static int parse_args(struct mock_cli *cli, int argc, char **argv)
{
    optind = 1;
    for (;;) {
        int c = getopt_long(argc, argv, "h", long_opts, NULL);
        if (c == -1)
            break;
        if (c == 'h' || c == OPT_HELP) {
            fputs(usage, stdout);
            return 0;
        }
        int rc = take_fault_option(&cli->o.faults, c, optarg);
        if (rc > 0)
            rc = take_server_option(cli, c, optarg);
        if (rc > 0)
            fputs(usage, stderr); /* not an option of ours */
        if (rc != 0)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "engage mock-api: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    cli->o.host = cli->host;
    cli->o.port = (uint16_t)cli->port;
    cli->o.control_host = cli->control_host[0] ? cli->control_host : NULL;
    cli->o.control_port = cli->control_port;
    return -1;
}

/* Runs the mock until SIGINT or SIGTERM. Returns the exit status. */
static int serve(const struct mock_cli *cli)
{
    /* Block the stop signals before any thread starts (threads inherit the mask), then wait
     * for them here: no handler runs in an arbitrary thread. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct eng_error err;
    eng_error_clear(&err);
    struct eng_mockapi *m = eng_mockapi_start(&cli->o, &err);
    if (m == NULL) {
        fprintf(stderr, "engage mock-api: %s\n", err.msg);
        return 1;
    }
    unsigned p = eng_mockapi_port(m), cp = eng_mockapi_control_port(m);
    eng_info("msg=\"mock-api listening\" addr=%s:%u control_port=%u down=%s", cli->host, p, cp,
             cli->o.faults.down ? "true" : "false");
    printf("listening port=%u control_port=%u\n", p, cp);
    fflush(stdout);
    if (cli->port_file != NULL && write_port_file(cli->port_file, p, cp) != 0) {
        fprintf(stderr, "engage mock-api: could not write \"%s\": %s\n", cli->port_file,
                strerror(errno));
        eng_mockapi_stop(m);
        return 1;
    }

    int sig = 0;
    while (sigwait(&stop, &sig) != 0)
        ;
    eng_info("msg=\"mock-api stopping\" signal=%d", sig);
    eng_mockapi_stop(m);
    return 0;
}

int eng_cmd_mock_api(int argc, char **argv)
{
    struct mock_cli cli = {.host = "127.0.0.1", .port = 8000};
    eng_mockapi_options_default(&cli.o);
    int status = parse_args(&cli, argc, argv);
    if (status >= 0)
        return status;
    return serve(&cli);
}
