/* engage: clocks. Monotonic time for deadlines and latency within the process, wall time
 * (UTC microseconds since the Unix epoch) for anything compared with a server's time. */
#ifndef ENG_CLOCK_H
#define ENG_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t eng_clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t eng_clock_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
