/* murmur2 and the key partitioner against Kafka's Java client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/murmur2.h"

#define FIXTURES ENG_TEST_DATA "/../../fixtures/debezium/"

/* The vectors of Kafka's UtilsTest.testMurmur2 (clients/src/test/.../utils/UtilsTest.java). */
static void test_kafka_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        int32_t hash;
    } v[] = {
        {"21", -973932308},
        {"foobar", -790332482},
        {"a-little-bit-long-string", -985981536},
        {"a-little-bit-longer-string", -1486304829},
        {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        assert_int_equal(eng_murmur2(v[i].key, strlen(v[i].key)), v[i].hash);
    static const char abc[] = {'a', 'b', 'c'};
    assert_int_equal(eng_murmur2(abc, sizeof(abc)), 479470107);
}

/* Every tail length (0..3 bytes past the last word) and bytes with the high bit set, which
 * Java sign-extends before masking with 0xff. */
static void test_tails_and_high_bytes(void **state)
{
    (void)state;
    assert_int_equal(eng_murmur2("", 0), 275646681);
    const unsigned char high[] = {0x80, 0xff, 0xfe, 0x81, 0xc3};
    /* Computed by Utils.murmur2 on (byte)0x80, (byte)0xff, (byte)0xfe, (byte)0x81, (byte)0xc3. */
    assert_int_equal(eng_murmur2(high, sizeof(high)), 1072503713);
}

static void test_partition(void **state)
{
    (void)state;
    /* toPositive(-973932308) = 1173551340; % 6 = 0 */
    assert_int_equal(eng_kafka_partition("21", 2, 6), (int32_t)((-973932308 & 0x7fffffff) % 6));
    assert_int_equal(eng_kafka_partition("abc", 3, 1), 0);
    for (int n = 1; n < 50; n++) {
        int32_t p = eng_kafka_partition("foobar", 6, n);
        assert_true(p >= 0 && p < n);
    }
}

/* Computed by Utils.murmur2 (kafka-clients 4.3.0) on bytes from java.util.Random(42): one of
 * each length from 0 to 39 bytes, so every tail. */
static void test_java_random_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *hex;
        int32_t hash;
    } v[] = {
        {"f78afe0de1bbe7ae28c0", -955700785},
        {"9a0c6117bd6743e7dc978573998e685e885cb361f86c974620bebfb01100b276545718c30f406c",
         -1725058300},
        {"f11059eb6fbce62655", 527004922},
        {"d6d9f9bf52d83deedc0bf66205835ccc16ad682d8c478a26f450279849599b56dd", 1859023584},
        {"f27f72d37f", -19342484},
        {"fa959d2832a46196d92c3046", 444275329},
        {"026cc4a45eb32f92829e8d14ee827c94edc935", -838334355},
        {"ce2972cc9b060b", -1626382943},
        {"f3a3a0", -992430090},
        {"", 275646681},
        {"283ed5021192ed6a754300c523675af9b6c4a514cacaa1b6a736738853ee067b87849adf0100",
         -1721602125},
        {"8c", -1326909658},
        {"bcc00bd26fae51303f23fba277b4e0602cbf7e5e9ba8ec22daa9395cbb3cb06feaf2", -225569708},
        {"b5bb127579092bb2831b0279bb", -1364736296},
        {"c6b52a321eac46580edde42d2e8a65f6", 1894489347},
        {"914f387b8934917ca07a548c5dcdc46ba917160239c103a2db67f4c18e", -1722509774},
        {"aa5db9501dfbfb1177b555921451ec577ca9fa5e105f6c4adb3d2fdfc7b360", 1020842743},
        {"a055", 1795461153},
        {"bba296a2c5a3adb1", 442304133},
        {"63b8ba17bbd0507fa7ea6bcaa20ffe06f6b4a9aba00c570946defa", 1595358431},
        {"4ae498753e94b1a77bed00447df0506566bd", 2112985333},
        {"a6a2df2212db756276353fd171756fa5bece42fa4c", 1189775913},
        {"49624d996480af482365ddf9cd937a9dacd9bb1373f1425c6a4f6ec6e604d75de8e56047", 1663846768},
        {"f4c5adf728f93cfceb618de7539f08e695970c580fbcc7ba9d299903", -508679031},
        {"8d8f41cf3a315f0490a680853957974d1cc1ccd5", -1096194364},
        {"2ebe5d95a628ad6cfee430b027e1cadd56106f8eab9ef77aef", -90218403},
        {"de2bd3926d76", -1549267481},
        {"843fc0a847e90e21831936", 1207250263},
        {"fe0ceb665454fe281c96010317cad0cc65a00b85f70fb7b9dfa8cb6ec9e8", -26672912},
        {"b5eabfd2254b7fa4362dacd979b16a6ccb", 1872098398},
        {"30175ab8a24290e7f29b4663937327a1d533e70340371a722b8c", 797426763},
        {"2b5e737501f2566cfc05c5204a87", 1360719285},
        {"81eea493d8bcb8d23ad53fba14177f43a8019798f834", -1748789727},
        {"6bef871bbd4b3ee273ef4ef1687f71", 155088027},
        {"a0facee9f2ddc433e541099d3f292f8b80b6189603d2f5a347503b29d26966ff", 1327642726},
        {"625f8d14884e564068d1b86a25b4db185e98658f03a790f098ecaa19a287390e05c15f9cf4", -1158054233},
        {"1c2e5fc7e82ea108d49452a82ce4ee2dcf1197bc959759", -1878708670},
        {"9986d4bd8eb7593e85e62c109f8acd32b385a251fa88ccb4", 1451006529},
        {"56c8ab09d97a46baf08d26d19c315c077a4b105d24cf03d043c92202b5de756217edfe", 1096832596},
        {"c2700abb", 2091990815},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        unsigned char bytes[64];
        size_t n = strlen(v[i].hex) / 2;
        for (size_t j = 0; j < n; j++) {
            unsigned x;
            assert_int_equal(sscanf(v[i].hex + 2 * j, "%2x", &x), 1);
            bytes[j] = (unsigned char)x;
        }
        assert_int_equal(eng_murmur2(bytes, n), v[i].hash);
    }
}

/* The content_id in a recorded key, with or without the schema part. */
static void key_content_id(const char *key, char *out, size_t cap)
{
    static const char with[] = "\"payload\":{\"content_id\":";
    static const char without[] = "{\"content_id\":";
    const char *id = strstr(key, with);
    id = id ? id + strlen(with) : key + strlen(without);
    snprintf(out, cap, "%.*s", (int)strcspn(id, "}"), id);
}

/* Where Debezium's producer put each record of a 6-partition topic (recorded with schemas on and
 * off): the partition of every record is eng_kafka_partition of its raw key bytes, and the
 * recorded {content_id: partition} map agrees. */
static void check_partitions(const char *records, const char *map_file)
{
    char path[512];
    snprintf(path, sizeof(path), "%s%s", FIXTURES, map_file);
    json_t *map = json_load_file(path, 0, NULL);
    assert_non_null(map);
    snprintf(path, sizeof(path), "%s%s", FIXTURES, records);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[65536], id[24];
    size_t mapped = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        json_t *rec = json_loads(line, 0, NULL);
        assert_non_null(rec);
        const char *key = json_string_value(json_object_get(rec, "key"));
        json_int_t part = json_integer_value(json_object_get(rec, "partition"));
        assert_non_null(key);
        assert_int_equal(eng_kafka_partition(key, strlen(key), 6), part);
        key_content_id(key, id, sizeof(id));
        json_t *want = json_object_get(map, id);
        if (want != NULL) { /* the marker's content_id is not in the map */
            assert_int_equal(json_integer_value(want), part);
            mapped++;
        }
        json_decref(rec);
    }
    fclose(f);
    assert_int_equal(mapped, json_object_size(map));
    json_decref(map);
}

static void test_debezium_partitions(void **state)
{
    (void)state;
    check_partitions("events_partitions_6.jsonl", "partitions_6.json");
    check_partitions("events_partitions_6_noschema.jsonl", "partitions_6_noschema.json");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kafka_vectors),       cmocka_unit_test(test_tails_and_high_bytes),
        cmocka_unit_test(test_partition),           cmocka_unit_test(test_java_random_vectors),
        cmocka_unit_test(test_debezium_partitions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
