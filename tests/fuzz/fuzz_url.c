/* Fuzz target: every parser of a URL or address given on the command line, in the
 * environment or a config file: ClickHouse's http[s]:// URL, redis://, the admin HOST:PORT,
 * percent-decoding, and the scrub that hides passwords in argv (which must never grow the
 * string: it is rewritten in place). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "admin/admin.h"
#include "cli/options.h"
#include "core/url.h"
#include "sink/clickhouse.h"
#include "sink/redis.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    struct eng_error err;

    struct eng_clickhouse_url ch;
    if (eng_clickhouse_url_parse(s, &ch, &err) == 0) {
        if (ch.host == NULL || ch.endpoint == NULL || ch.display == NULL || ch.port <= 0 ||
            ch.port > 65535)
            abort();
        eng_clickhouse_url_free(&ch);
    }
    struct eng_redis_url r;
    if (eng_redis_url_parse(s, &r, &err) == 0) {
        if (r.host == NULL || r.port <= 0 || r.port > 65535 || r.db < 0)
            abort();
        eng_redis_url_free(&r);
    }
    char host[256];
    uint16_t port;
    if (eng_admin_parse_addr(s, host, sizeof(host), &port, &err) == 0 &&
        memchr(host, '\0', sizeof(host)) == NULL)
        abort();
    free(eng_percent_decode(s, strlen(s)));

    size_t before = strlen(s);
    eng_options_scrub_secrets(s);
    if (strlen(s) > before)
        abort();
    free(s);
    return 0;
}
