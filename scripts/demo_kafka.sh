#!/usr/bin/env bash
# make demo-kafka: the Kafka path end to end. Starts a local stack with a Kafka broker
# (PostgreSQL, ClickHouse, Redis and a KRaft broker on free loopback ports in a temporary
# directory: `stack.sh up DIR kafka`) and the mock external API; runs `engage capture`
# (PostgreSQL's slot -> Debezium JSON records in Kafka) and `engage run --source kafka`
# (the topic -> ClickHouse, Redis and the API); inserts sample events, updates a content row
# between two of them, and shows what each sink received and a few records of the topic.
# Everything is stopped at the end; ENGAGE_DEMO_KEEP=1 leaves the stack running.
set -euo pipefail
engage=$(realpath "${1:-build/engage}")
top=$(cd "$(dirname "$0")/.." && pwd)
demo=demo-kafka
# shellcheck source=scripts/demo_common.sh
source "$top/scripts/demo_common.sh"

echo "== starting PostgreSQL 15, ClickHouse, Redis and a Kafka broker (KRaft) in $dir/stack"
mkdir -p "$dir/stack"
bash "$top/scripts/stack.sh" up "$dir/stack" kafka | tail -n 4
# shellcheck disable=SC1091
source "$dir/stack/env"
prefix=demo
topic="$prefix.public.engagement_events"
api_port=$(free_port)
api="http://127.0.0.1:$api_port"
capture_admin="127.0.0.1:$(free_port)"
consumer_admin="127.0.0.1:$(free_port)"

start_mock_api "$api" "$api_port"

echo "== engage capture --pg ... --kafka $KAFKA_BOOTSTRAP --topic-prefix $prefix --partitions 3"
"$engage" capture --pg "$ENGAGE_PG" --kafka "$KAFKA_BOOTSTRAP" --topic-prefix "$prefix" \
    --partitions 3 --slot demo_capture --state-dir "$dir/capture-state" \
    --admin-addr "$capture_admin" >"$dir/capture.log" 2>&1 &
capture_pid=$!
pids=("$capture_pid" "${pids[@]}")
wait_until "capture to stream" 60 grep -q 'msg="streaming"' "$dir/capture.log"
echo "   capture created slot demo_capture and the topics $prefix.public.engagement_events and"
echo "   $prefix.public.content (3 partitions each), and wrote the 3 content rows as snapshot reads (op r)"

echo "== engage run --source kafka --kafka $KAFKA_BOOTSTRAP --topic $topic --group demo ..."
"$engage" run --source kafka --kafka "$KAFKA_BOOTSTRAP" --topic "$topic" --group demo \
    --pg "$ENGAGE_PG" --clickhouse "$ENGAGE_CLICKHOUSE" --redis "$ENGAGE_REDIS" --http "$api" \
    --state-dir "$dir/consumer-state" --admin-addr "$consumer_admin" >"$dir/consumer.log" 2>&1 &
consumer_pid=$!
pids=("$consumer_pid" "${pids[@]}")
assigned() { curl -s "http://$consumer_admin/metrics" | grep -qE '^engage_kafka_assigned_partitions(\{[^}]*\})? [1-9]'; }
wait_until "the consumer to join its group and get partitions" 60 assigned

echo "== inserting sample events; content 2 gets its length between two of its events"
psql -q "$ENGAGE_PG" <<'SQL'
INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) VALUES
  (1, 999, 'play',   now() at time zone 'utc' - interval '2 minutes', 7000, 'web'),
  (1, 1000, 'pause', now() at time zone 'utc' - interval '1 minute', 1234, 'ios'),
  (2, 1001, 'play',  now() at time zone 'utc', 5000, 'android'),
  (3, 1002, 'finish', now() at time zone 'utc', 1800000, 'tv'),
  (42, 1003, 'play', now() at time zone 'utc', NULL, 'web');
UPDATE content SET length_seconds = 600, title = 'Now with a length' WHERE content_id = 2;
INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) VALUES
  (2, 1004, 'finish', now() at time zone 'utc', 600000, 'web');
SQL
ch_count() { curl -s "$ENGAGE_CLICKHOUSE" --data-binary 'SELECT count() FROM engagement.events_enriched FINAL'; }
ch_has() { test "$(ch_count)" = "$1"; }
wait_until "ClickHouse to hold the 6 events" 60 ch_has 6
api_has_6() { curl -s "$api/stats" | grep -q '"unique":6'; }
wait_until "the API to receive the 6 events" 60 api_has_6
redis_has_6() { test "$(redis-cli -p "$REDIS_PORT" get content:count:2)" = 2; }
wait_until "Redis to count content 2's two events" 60 redis_has_6

echo
echo "== Kafka: kcat -C -t $topic -o beginning -e -J (one line a record)"
printf 'partition\toffset\tkey.content_id\top\tevent_id\tvalue bytes\n'
kcat -C -b "$KAFKA_BOOTSTRAP" -t "$topic" -o beginning -e -q -J |
    jq -r '[.partition, .offset, (.key | fromjson | .payload.content_id),
            (.payload | fromjson | .payload.op), (.payload | fromjson | .payload.after.event_id),
            (.payload | length)] | @tsv' | sort -n -k1,1 -k2,2
echo "-- the value of event 6's record, its payload part (the schema part, most of its bytes, left out):"
kcat -C -b "$KAFKA_BOOTSTRAP" -t "$topic" -o beginning -e -q -J |
    jq -s -c 'map(.payload | fromjson | .payload) | max_by(.after.event_id) |
              {op, before, after, source: (.source | {connector, name, db, table, lsn, txId})}'
echo "-- the headers of one record (capture writes the same ones on each):"
kcat -C -b "$KAFKA_BOOTSTRAP" -t "$topic" -o beginning -e -q -c 1 -f '%h\n'
echo
echo "== Kafka: $prefix.public.content (the snapshot reads, then the update)"
kcat -C -b "$KAFKA_BOOTSTRAP" -t "$prefix.public.content" -o beginning -e -q -J |
    jq -s -c 'sort_by(.ts, .partition, .offset) | .[] | {partition} + (.payload | fromjson | .payload |
              {op, after: (.after | {content_id, length_seconds, title})})'
cat <<'EOF'
  Records are keyed by content_id (the brief's partition key) and placed on the partition
  Kafka's Java client would pick for the key's bytes (murmur2), so one content's events stay
  in order; these four keys happen to hash to the same partition of the three.
EOF

echo
echo "== ClickHouse: SELECT * FROM engagement.events_enriched FINAL"
curl -s "$ENGAGE_CLICKHOUSE" --data-binary \
    'SELECT * FROM engagement.events_enriched FINAL ORDER BY event_id FORMAT PrettyCompactNoEscapes'
cat <<'EOF'
  Event 3 has content 2 as it was when the event committed (no length: the derived fields
  are NULL); event 6, committed after the update, has the new length. The consumer keeps
  every version of a content row from the content topic, by LSN.
  Event 5: content_id 42 has no row in `content`; the event is delivered with the content
  fields NULL and counted in engage_enrich_misses_total.
EOF
echo
echo "== Redis"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
for k in $(rcli --scan --pattern 'content:count:*' | sort); do echo "$k = $(rcli get "$k")"; done
echo "content:last:2 = $(rcli get content:last:2)"
echo "top:content:10m (content_id score) = $(rcli zrevrange top:content:10m 0 -1 withscores | paste -sd' ')"
echo
echo "== external API (mock): GET /stats"
curl -s "$api/stats"
echo
echo
echo "== engage capture /metrics (excerpt)"
curl -s "http://$capture_admin/metrics" | grep -E '^engage_(capture_|confirmed_flush_lsn|replication_lag_bytes)' || true
echo
echo "== engage run --source kafka /metrics (excerpt)"
curl -s "http://$consumer_admin/metrics" |
    grep -E '^engage_(source_events|sink_acked_events|enrich_misses|kafka_consumer_lag|kafka_assigned_partitions|kafka_content_versions)' || true
echo
echo "== the consumer's lag per partition, once every sink acknowledged (offsets are stored"
echo "   only after that)"
curl -s "http://$consumer_admin/metrics" | grep -E '^engage_kafka_partition_lag' || true
echo
if [ -n "${ENGAGE_DEMO_KEEP:-}" ]; then
    echo "demo-kafka: done; logs in $dir (capture.log, consumer.log, mock-api.log, stack/)"
else
    echo "demo-kafka: done; the stack and its logs in $dir are removed now (ENGAGE_DEMO_KEEP=1 keeps them)"
fi
