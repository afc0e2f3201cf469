/* engage: the murmur2 hash and key partitioner of Kafka's Java client.
 * Ownership: pure functions over borrowed bytes; any thread. */
#ifndef ENG_MURMUR2_H
#define ENG_MURMUR2_H

#include <stddef.h>
#include <stdint.h>

/* MurmurHash2, 32-bit, seed 0x9747b28c, as org.apache.kafka.common.utils.Utils.murmur2
 * computes it over len bytes of key (Java's int arithmetic, so the result may be negative). */
int32_t eng_murmur2(const void *key, size_t len);

/* The partition Kafka's Java producer (BuiltInPartitioner, formerly DefaultPartitioner) picks
 * for a record whose serialized key is key: (murmur2 & 0x7fffffff) % npartitions. npartitions
 * must be positive; a keyless record is not placed this way. */
int32_t eng_kafka_partition(const void *key, size_t len, int32_t npartitions);

#endif
