#!/usr/bin/env bash
# make demo: start a local stack (PostgreSQL, ClickHouse, Redis on free loopback ports in a
# temporary directory) and the mock external API, run `engage run` into all three sinks,
# insert sample events (the brief's example among them), and show what each sink received.
# Everything is stopped at the end; ENGAGE_DEMO_KEEP=1 leaves the stack running.
set -euo pipefail
engage=$(realpath "${1:-build/engage}")
top=$(cd "$(dirname "$0")/.." && pwd)
demo=demo
# shellcheck source=scripts/demo_common.sh
source "$top/scripts/demo_common.sh"

echo "== starting PostgreSQL 15, ClickHouse and Redis in $dir/stack"
mkdir -p "$dir/stack"
bash "$top/scripts/stack.sh" up "$dir/stack" | tail -n 3
# shellcheck disable=SC1091
source "$dir/stack/env"
api_port=$(free_port)
export ENGAGE_HTTP="http://127.0.0.1:$api_port"
export ENGAGE_ADMIN_ADDR="127.0.0.1:$(free_port)"

start_mock_api "$ENGAGE_HTTP" "$api_port"

psql -q "$ENGAGE_PG" <<'SQL'
-- Two events from yesterday, before engage ever ran: no slot will stream them.
INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) VALUES
  (3, 500, 'play', now() at time zone 'utc' - interval '1 day', 60000, 'web'),
  (1, 501, 'play', now() at time zone 'utc' - interval '1 day', 150000, 'tv');
SQL

echo "== engage run --pg ... --clickhouse ... --redis ... --http ..."
"$engage" run --state-dir "$dir/state" >"$dir/engage.log" 2>&1 &
engage_pid=$!
pids=("$engage_pid" "${pids[@]}")
slot_active() { test "$(psql -tAq "$ENGAGE_PG" -c "SELECT count(*) FROM pg_replication_slots WHERE active")" = 1; }
wait_until "engage to create its replication slot" 30 slot_active

echo "== inserting sample events"
psql -q "$ENGAGE_PG" <<'SQL'
INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) VALUES
  (1, 999, 'play',   now() at time zone 'utc' - interval '2 minutes', 7000, 'web'),
  (1, 1000, 'pause', now() at time zone 'utc' - interval '1 minute', 1234, 'ios'),
  (2, 1001, 'play',  now() at time zone 'utc', 5000, 'android'),
  (3, 1002, 'finish', now() at time zone 'utc', 1800000, 'tv'),
  (42, 1003, 'play', now() at time zone 'utc', NULL, 'web');
SQL
ch_count() { curl -s "$ENGAGE_CLICKHOUSE" --data-binary 'SELECT count() FROM engagement.events_enriched FINAL'; }
ch_has() { test "$(ch_count)" = "$1"; }
wait_until "ClickHouse to hold the 5 new events" 30 ch_has 5
api_has_5() { curl -s "$ENGAGE_HTTP/stats" | grep -q '"unique":5'; }
wait_until "the API to receive the 5 events" 30 api_has_5

echo "== engage backfill --start '-infinity' --end now: the 2 events from before the slot (the"
echo "   streamed events in the range are delivered again and change nothing)"
"$engage" backfill --start '-infinity' --end "$(date -u '+%Y-%m-%d %H:%M:%S')" \
    --state-dir "$dir/state" 2>>"$dir/backfill.log" | sed 's/^/  /'
wait_until "ClickHouse to hold all 7 events" 30 ch_has 7

echo
echo "== ClickHouse: SELECT * FROM engagement.events_enriched FINAL"
curl -s "$ENGAGE_CLICKHOUSE" --data-binary \
    'SELECT * FROM engagement.events_enriched FINAL ORDER BY event_id FORMAT PrettyCompactNoEscapes'
cat <<'EOF'
  7 rows: the 5 events streamed as they were inserted, and events 1 and 2 from yesterday,
  which existed before engage's slot and came through the backfill.
  Event 5: its content has no length_seconds, so the derived fields are NULL.
  Event 7: content_id 42 has no row in `content`. The event is still delivered, with the
  content fields and the derived ones NULL, and counted in engage_enrich_misses_total.
EOF
echo
echo "== Redis"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
for k in $(rcli --scan --pattern 'content:count:*' | sort); do echo "$k = $(rcli get "$k")"; done
echo "content:last:1 = $(rcli get content:last:1)"
echo "top:content:10m (content_id score) = $(rcli zrevrange top:content:10m 0 -1 withscores | paste -sd' ')"
cat <<'EOF'
  content:count:1 is 3: every event of content 1, yesterday's included. top:content:10m gives
  content 1 only 2: it counts the last 10 minutes of event time, and yesterday's event is
  older than the minute buckets' 15-minute TTL, so it touches no bucket.
EOF
echo
echo "== external API (mock): GET /stats"
curl -s "$ENGAGE_HTTP/stats"; echo
cat <<'EOF'
  The API received 5 events, ClickHouse and Redis 7: the backfill writes to ClickHouse and
  Redis only, unless --sinks names the API too (engage backfill --sinks clickhouse,redis,http).
EOF
echo
echo "== engage /metrics (excerpt)"
curl -s "http://$ENGAGE_ADMIN_ADDR/metrics" | grep -E '^engage_(source_events|sink_acked_events|enrich_misses)' || true
echo
echo "== engage status"
"$engage" status || true
echo
echo "== engage top"
"$engage" top | cat
echo
if [ -n "${ENGAGE_DEMO_KEEP:-}" ]; then
    echo "demo: done; logs in $dir (engage.log, mock-api.log, backfill.log, stack/)"
else
    echo "demo: done; the stack and its logs in $dir are removed now (ENGAGE_DEMO_KEEP=1 keeps them)"
fi
