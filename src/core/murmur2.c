#include "murmur2.h"

#define MURMUR2_SEED UINT32_C(0x9747b28c)
#define MURMUR2_M    UINT32_C(0x5bd1e995)

/* Little-endian 32-bit word at p. */
static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Java computes in signed int with wrap-around and logical shifts (>>>): the same bits as
 * unsigned 32-bit arithmetic here. The length is Java's int, so it is taken modulo 2^32. */
int32_t eng_murmur2(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint32_t h = MURMUR2_SEED ^ (uint32_t)len;
    size_t nblocks = len / 4;
    for (size_t i = 0; i < nblocks; i++) {
        uint32_t k = le32(p + 4 * i);
        k *= MURMUR2_M;
        k ^= k >> 24;
        k *= MURMUR2_M;
        h = h * MURMUR2_M ^ k;
    }
    const unsigned char *tail = p + 4 * nblocks;
    switch (len & 3) {
    case 3:
        h ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        h ^= tail[0];
        h *= MURMUR2_M;
        break;
    default:
        break;
    }
    h ^= h >> 13;
    h *= MURMUR2_M;
    h ^= h >> 15;
    return (int32_t)h;
}

int32_t eng_kafka_partition(const void *key, size_t len, int32_t npartitions)
{
    uint32_t positive = (uint32_t)eng_murmur2(key, len) & UINT32_C(0x7fffffff);
    return (int32_t)(positive % (uint32_t)npartitions);
}
