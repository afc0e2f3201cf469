/* engage: capped exponential backoff with full jitter (AWS architecture blog's variant):
 * the n-th delay is uniform in [0, min(cap, base * 2^n)]. Ownership: plain value. */
#ifndef ENG_BACKOFF_H
#define ENG_BACKOFF_H

#include <stdint.h>

struct eng_backoff {
    int64_t base_us;
    int64_t cap_us;
    uint32_t attempt;
    uint64_t rng;                  /* xorshift state; tests seed it to get a known schedule */
    uint64_t (*random)(void *ctx); /* optional injected source; NULL uses rng */
    void *random_ctx;
};

/* Initializes with base and cap (microseconds) and a seed. */
void eng_backoff_init(struct eng_backoff *b, int64_t base_us, int64_t cap_us, uint64_t seed);

/* Returns the next delay in microseconds and advances the attempt counter. */
int64_t eng_backoff_next(struct eng_backoff *b);

/* The ceiling of the next delay (without jitter). */
int64_t eng_backoff_ceiling(const struct eng_backoff *b);

/* Back to the first attempt, after a success. */
void eng_backoff_reset(struct eng_backoff *b);

#endif
