#include <stddef.h>

#include "backoff.h"

void eng_backoff_init(struct eng_backoff *b, int64_t base_us, int64_t cap_us, uint64_t seed)
{
    b->base_us = base_us > 0 ? base_us : 1;
    b->cap_us = cap_us > b->base_us ? cap_us : b->base_us;
    b->attempt = 0;
    b->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
    b->random = NULL;
    b->random_ctx = NULL;
}

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

int64_t eng_backoff_ceiling(const struct eng_backoff *b)
{
    int64_t c = b->base_us;
    for (uint32_t i = 0; i < b->attempt && c < b->cap_us; i++)
        c *= 2;
    return c < b->cap_us ? c : b->cap_us;
}

int64_t eng_backoff_next(struct eng_backoff *b)
{
    int64_t ceiling = eng_backoff_ceiling(b);
    uint64_t r = b->random ? b->random(b->random_ctx) : xorshift64(&b->rng);
    if (b->attempt < 63)
        b->attempt++;
    return (int64_t)(r % ((uint64_t)ceiling + 1));
}

void eng_backoff_reset(struct eng_backoff *b)
{
    b->attempt = 0;
}
