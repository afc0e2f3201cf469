/* Fuzz target: the config file (--config, `name = value` lines), then the checks that read
 * its values: integers, decimals and the --sinks list. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct eng_options o;
    memset(&o, 0, sizeof(o));
    if (eng_options_config_text(&o, (const char *)data, size, "fuzz") == 0) {
        int64_t v = 0;
        double d = 0;
        (void)eng_opt_int(&o, OPT_BATCH_EVENTS, 1, 1000000, &v);
        (void)eng_opt_int(&o, OPT_SEEN_TTL, 0, UINT32_MAX, &v);
        (void)eng_opt_double(&o, OPT_HTTP_RATE, 0, 1000000, &d);
        (void)eng_opt_sinks_valid(&o);
        (void)eng_opt_sink_enabled(&o, "redis");
    }
    eng_options_free(&o);
    return 0;
}
