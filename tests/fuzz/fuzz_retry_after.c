/* Fuzz target: Retry-After as the API sends it, delay-seconds or an HTTP-date in any of its
 * three forms, against several clocks. A delay is never negative and never past a day. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sink/http_policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    static const int64_t clocks[] = {0, 784111777000000LL, 1709251200000000LL, 4102444800000000LL,
                                     INT64_MAX / 2};
    for (size_t i = 0; i < sizeof(clocks) / sizeof(clocks[0]); i++) {
        int64_t d = -1;
        if (eng_http_parse_retry_after(s, clocks[i], &d) && (d < 0 || d > 86400LL * 1000000))
            abort();
    }
    free(s);
    return 0;
}
