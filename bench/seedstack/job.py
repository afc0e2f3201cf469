#!/usr/bin/env python3
"""The brief's stream job, as a team using its stack would write it: PySpark Structured
Streaming reads the Debezium topic (JSON converter, schemas on), keeps op = "c", enriches
each micro-batch with the `content` table and writes the enriched events to ClickHouse,
Redis and the HTTP API from foreachBatch.

Bench code for bench/seedstack/run.py (the seed stack that engage replaces), not product
code. What it guarantees is what Spark's checkpoint gives: a micro-batch that failed or
was interrupted is run again from its Kafka offsets, so ClickHouse (ReplacingMergeTree)
and the API (Idempotency-Key, deduped by event_id) absorb a replay, while the Redis
counters and buckets of a replayed batch are counted twice (at-least-once); no seen-set
or transactional trick is added.

- Source: Kafka `subscribe` to the topic, startingOffsets earliest, 1 s processing-time
  trigger. The value is parsed with from_json against the payload part only (the schema
  part is skipped by the parser). Rows whose `payload.op` is not "c" (snapshot reads,
  updates, deletes, tombstones) are dropped, and so are events without a content_id
  (no sink can key them; counted in the log).
- Enrichment: `content` is read over JDBC from PostgreSQL at the start of every
  micro-batch (1,000-odd rows, one SELECT), so a batch sees the content as of the batch
  or later, never as of each event's commit. It is broadcast into a left join: an unknown
  content_id keeps the event with NULL content fields.
- Derived fields (DESIGN.md section 1), in Spark SQL on integers and decimals, never a
  double: engagement_seconds = duration_ms / 1000 as DECIMAL(12,3); engagement_pct in
  hundredths = (2|d| + |10 L|) div (2 |10 L|) with the sign of d * L (half away from zero
  on the exact ratio), as DECIMAL(12,2); both NULL when duration_ms or length_seconds is
  NULL, the pct NULL when length_seconds is 0. event_ts (MicroTimestamp) is formatted
  `yyyy-MM-dd HH:mm:ss` in UTC.
- Sinks, per partition of the batch (foreachPartition: Python workers), Redis first (the
  real-time one), then ClickHouse, then the API:
  Redis: content:count:{id} INCRBY, top:content:bucket:{YYYYMMDDHHMM} ZINCRBY + EXPIRE 900
  (events older than 900 s skip buckets), content:last:{id} SET EX 3600 through a small
  Lua script that keeps the stored event when it is newer (event_ts, then event_id);
  ClickHouse: one INSERT ... FORMAT JSONEachRow into engagement.events_enriched (created
  with engage's DDL if missing); API: POST {url}/events, arrays of --http-batch events
  (a single object when 1), Idempotency-Key ev-<id> / evs-<first>-<last>-<n>, retries on
  429/5xx/connection errors by urllib3's Retry.
  After the partitions, the driver rebuilds top:content:10m = ZUNIONSTORE of the 10
  minute buckets ending at the current UTC minute, EXPIRE 120.

usage: job.py --bootstrap H:P --topic T --jdbc URL --clickhouse URL --redis URL --http URL
              --checkpoint DIR --jars a.jar,b.jar [--master local[2]] [--trigger 1]
              [--http-batch 100]
"""

import argparse
import datetime
import os
import signal
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sinks  # noqa: E402

AFTER = StructType([
    StructField("event_id", LongType()),
    StructField("content_id", IntegerType()),
    StructField("user_id", IntegerType()),
    StructField("event_type", StringType()),
    StructField("event_ts", LongType()),  # io.debezium.time.MicroTimestamp
    StructField("duration_ms", IntegerType()),
    StructField("device", StringType()),
])
VALUE = StructType([StructField("payload", StructType([
    StructField("after", AFTER),
    StructField("op", StringType()),
]))])


def log(msg):
    print(f"seedstack-job {datetime.datetime.utcnow():%H:%M:%S.%f} {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="dbserver1.public.engagement_events")
    ap.add_argument("--jdbc", required=True, help="jdbc:postgresql://host:port/db")
    ap.add_argument("--jdbc-user", default="postgres")
    ap.add_argument("--jdbc-password", default="")
    ap.add_argument("--clickhouse", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--http", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--jars", required=True, help="comma-separated jar paths")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--trigger", type=float, default=1.0, help="seconds")
    ap.add_argument("--http-batch", type=int, default=100)
    args = ap.parse_args()

    sinks.ch_create_table(args.clickhouse)
    spark = (SparkSession.builder.appName("seedstack-engagement").master(args.master)
             .config("spark.jars", args.jars)
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    spark.sparkContext.addPyFile(os.path.join(HERE, "sinks.py"))
    log(f"spark {spark.version} up")

    raw = (spark.readStream.format("kafka")
           .option("kafka.bootstrap.servers", args.bootstrap)
           .option("subscribe", args.topic)
           .option("startingOffsets", "earliest")
           .load())
    events = (raw.select(F.from_json(F.col("value").cast("string"), VALUE).alias("v"))
              .where(F.col("v.payload.op") == "c")
              .select("v.payload.after.*"))

    cfg = {"redis": args.redis, "clickhouse": args.clickhouse, "http": args.http,
           "http_batch": max(1, args.http_batch)}
    jdbc_props = {"user": args.jdbc_user, "password": args.jdbc_password, "driver": "org.postgresql.Driver"}

    def process(batch, batch_id):
        t0 = time.monotonic()
        content = spark.read.jdbc(args.jdbc, "(SELECT content_id, content_type, length_seconds FROM content) c",
                                  properties=jdbc_props)
        d = F.col("duration_ms").cast("bigint")
        den = F.col("length_seconds").cast("bigint") * 10
        # NULLIF: the pct of a 0 length is NULL (masked below), never a division by zero
        q = F.expr("(2 * abs(cast(duration_ms as bigint)) + abs(cast(length_seconds as bigint) * 10))"
                   " div nullif(2 * abs(cast(length_seconds as bigint) * 10), 0)")
        hundredths = F.when((d < 0) != (den < 0), -q).otherwise(q)
        no_value = F.col("duration_ms").isNull() | F.col("length_seconds").isNull()
        ts = F.timestamp_micros(F.col("event_ts"))
        enriched = (batch.where(F.col("content_id").isNotNull())
                    .join(F.broadcast(content), "content_id", "left")
                    .select(
                        "event_id", "content_id", "user_id", "event_type",
                        F.date_format(ts, "yyyy-MM-dd HH:mm:ss").alias("event_ts"),
                        "duration_ms", "device", "content_type", "length_seconds",
                        F.when(no_value, None).otherwise(
                            (F.col("duration_ms").cast("decimal(12,0)") / F.lit(1000)).cast("decimal(12,3)")
                        ).alias("engagement_seconds"),
                        F.when(no_value | (F.col("length_seconds") == 0), None).otherwise(
                            (hundredths.cast("decimal(20,0)") / F.lit(100)).cast("decimal(12,2)")
                        ).alias("engagement_pct"),
                        F.date_format(ts, "yyyyMMddHHmm").alias("bucket"),
                    ))
        t1 = time.monotonic()
        enriched.foreachPartition(lambda rows: sinks.write_partition(cfg, rows))
        t2 = time.monotonic()
        sinks.rebuild_top(cfg)
        t3 = time.monotonic()
        log(f"batch {batch_id} done in {t3 - t0:.3f}s (plan and content schema {t1 - t0:.3f}s, "
            f"read, enrich and write {t2 - t1:.3f}s, top rebuild {t3 - t2:.3f}s)")

    query = (events.writeStream.foreachBatch(process)
             .option("checkpointLocation", args.checkpoint)
             .trigger(processingTime=f"{args.trigger} seconds")
             .start())
    log("query started")
    # SIGTERM: stop the query between two polls (the handler makes no py4j call: a call
    # from a signal handler while the main thread waits in one breaks py4j's connection).
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and query.isActive:
            query.awaitTermination(1)
        log("stopping")
        query.stop()
    finally:
        spark.stop()

if __name__ == "__main__":
    main()
