#!/usr/bin/env python3
"""Writes deploy/grafana/engage.json, the Grafana dashboard: one panel or more for every
metric engage exports (tests/ops checks that, and that every query parses). Edit this file
and run it rather than editing the JSON: python3 deploy/grafana/make_dashboard.py"""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="engage", instance=~"$instance"'
panels = []
pid = [0]
y = [0]

def nid():
    pid[0] += 1
    return pid[0]

def row(title):
    panels.append({"type": "row", "title": title, "id": nid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1

x = [0]
def place(w, h):
    if x[0] + w > 24:
        x[0] = 0
        y[0] += h
    pos = {"h": h, "w": w, "x": x[0], "y": y[0]}
    x[0] += w
    return pos

def endrow(h):
    if x[0] != 0:
        y[0] += h
    x[0] = 0

def ts(title, targets, unit="short", desc="", w=8, h=8):
    panels.append({
        "type": "timeseries", "title": title, "id": nid(), "datasource": DS,
        "description": desc, "gridPos": place(w, h),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)],
    })

def stat(title, expr, unit="short", desc="", thresholds=None, w=4, h=4, mappings=None):
    steps = thresholds or [{"color": "green", "value": None}]
    panels.append({
        "type": "stat", "title": title, "id": nid(), "datasource": DS, "description": desc,
        "gridPos": place(w, h),
        "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "textMode": "auto"},
        "targets": [{"datasource": DS, "expr": expr, "refId": "A", "legendFormat": "{{instance}}"}],
    })

def red_above(v):
    return [{"color": "green", "value": None}, {"color": "red", "value": v}]

row("Overview")
stat("engage up", f'up{{{SEL}}}', desc="1 while Prometheus scrapes /metrics",
     thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
     mappings=[{"type": "value", "options": {"0": {"text": "DOWN"}, "1": {"text": "UP"}}}])
stat("Replication lag", f'max(engage_replication_lag_seconds{{{SEL}}})', "s",
     "Age of the oldest transaction not yet durable in every sink; 0 when caught up",
     thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 60},
                 {"color": "red", "value": 900}])
stat("WAL held", f'max(engage_replication_lag_bytes{{{SEL}}})', "bytes",
     "Server WAL end minus the flush LSN engage confirmed", thresholds=red_above(1073741824))
stat("Sinks not ready", f'count(engage_sink_ready{{{SEL}}} == 0) or vector(0)',
     desc="Sinks whose writes are failing (/readyz is 503)", thresholds=red_above(1))
stat("Events in /s", f'sum(rate(engage_source_events_total{{{SEL}}}[5m]))', "ops")
stat("Dead letters (1 h)",
     f'sum(increase({{__name__=~"engage_dlq_parked_total|engage_sink_parked_events_total|engage_source_bad_input_total", {SEL}}}[1h]))',
     desc="Rows parked in the dead-letter table in the last hour (engage dlq list)",
     thresholds=red_above(1))
endrow(4)

row("Source: PostgreSQL logical replication")
ts("Source connected", [(f'engage_source_connected{{{SEL}}}', "{{instance}}")], "short",
   "1 while the replication connection is up and streaming, 0 while it is not")
ts("Replication lag (seconds)", [(f'engage_replication_lag_seconds{{{SEL}}}', "{{instance}}")], "s",
   "Age of the oldest transaction decoded and not yet durable in every sink")
ts("Replication lag (bytes of WAL)", [(f'engage_replication_lag_bytes{{{SEL}}}', "{{instance}}")],
   "bytes", "Server WAL end minus the confirmed flush LSN: WAL the slot keeps")
ts("Confirmed flush LSN (WAL bytes confirmed /s)",
   [(f'rate(engage_confirmed_flush_lsn{{{SEL}}}[5m])', "{{instance}}")], "Bps",
   "How fast the checkpoint moves (engage_confirmed_flush_lsn is the LSN as a number)")
ts("Events and transactions /s",
   [(f'rate(engage_source_events_total{{{SEL}}}[5m])', "events {{instance}}"),
    (f'rate(engage_source_transactions_total{{{SEL}}}[5m])', "transactions {{instance}}")], "ops")
ts("Content changes, ignored changes /s",
   [(f'rate(engage_content_changes_total{{{SEL}}}[5m])', "content changes {{instance}}"),
    (f'rate(engage_source_ignored_changes_total{{{SEL}}}[5m])', "event updates/deletes (ignored) {{instance}}")],
   "ops")
ts("Bad input and enrichment misses /s",
   [(f'rate(engage_source_bad_input_total{{{SEL}}}[5m])', "bad input (parked) {{instance}}"),
    (f'rate(engage_enrich_misses_total{{{SEL}}}[5m])', "unknown content_id {{instance}}")], "ops")
ts("Batch age when closed (p50, p99)",
   [(f'histogram_quantile(0.5, sum by (le) (rate(engage_batch_close_age_seconds_bucket{{{SEL}}}[5m])))', "p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(engage_batch_close_age_seconds_bucket{{{SEL}}}[5m])))', "p99")],
   "s", "Age of a micro-batch when it was submitted to the sinks")
endrow(8)

row("Sinks")
ts("Sink ready", [(f'engage_sink_ready{{{SEL}}}', "{{sink}}")], "short",
   "1 while the sink writes, 0 while it fails")
ts("Events acknowledged /s", [(f'sum by (sink) (rate(engage_sink_acked_events_total{{{SEL}}}[5m]))', "{{sink}}")],
   "ops", "Events made durable by each sink")
ts("Batches acknowledged /s", [(f'sum by (sink) (rate(engage_sink_acked_batches_total{{{SEL}}}[5m]))', "{{sink}}")], "ops")
ts("Commit to sink ack (p50, p99)",
   [(f'histogram_quantile(0.5, sum by (sink, le) (rate(engage_sink_latency_seconds_bucket{{{SEL}}}[5m])))', "p50 {{sink}}"),
    (f'histogram_quantile(0.99, sum by (sink, le) (rate(engage_sink_latency_seconds_bucket{{{SEL}}}[5m])))', "p99 {{sink}}")],
   "s", "Source commit time to the sink's acknowledgement, per event")
ts("Write duration (p50, p99)",
   [(f'histogram_quantile(0.5, sum by (sink, le) (rate(engage_sink_write_seconds_bucket{{{SEL}}}[5m])))', "p50 {{sink}}"),
    (f'histogram_quantile(0.99, sum by (sink, le) (rate(engage_sink_write_seconds_bucket{{{SEL}}}[5m])))', "p99 {{sink}}")],
   "s", "One successful batch write")
ts("Queue (batches waiting)", [(f'engage_sink_queue_batches{{{SEL}}}', "{{sink}}")], "short",
   "A queue that stays up is a sink slower than the stream")
ts("Written events and batches /s",
   [(f'sum by (sink) (rate(engage_sink_events_total{{{SEL}}}[5m]))', "events {{sink}}"),
    (f'sum by (sink) (rate(engage_sink_batches_total{{{SEL}}}[5m]))', "batches {{sink}}")], "ops",
   "What the sinks sent (before acknowledgement)")
ts("Bytes written /s", [(f'sum by (sink) (rate(engage_sink_bytes_total{{{SEL}}}[5m]))', "{{sink}}")], "Bps")
ts("Errors and failed writes /s",
   [(f'sum by (sink) (rate(engage_sink_errors_total{{{SEL}}}[5m]))', "errors {{sink}}"),
    (f'sum by (sink) (rate(engage_sink_write_failures_total{{{SEL}}}[5m]))', "failed writes (retried) {{sink}}")],
   "ops")
ts("Skipped, spilled and parked",
   [(f'sum(rate(engage_sink_skipped_events_total{{{SEL}}}[5m]))', "redelivered events skipped /s"),
    (f'sum by (sink) (increase(engage_sink_spilled_batches_total{{{SEL}}}[1h]))', "batches spilled in 1 h {{sink}}"),
    (f'sum by (sink) (increase(engage_sink_parked_events_total{{{SEL}}}[1h]))', "events parked in 1 h {{sink}}")],
   "short")
ts("Redis: duplicates skipped /s", [(f'rate(engage_redis_duplicates_total{{{SEL}}}[5m])', "{{instance}}")],
   "ops", "Events the Redis script found already applied (replays, backfills)")
ts("Redis: lost data and rebuilds",
   [(f'increase(engage_redis_lost_total{{{SEL}}}[1h])', "Redis found without engage's writes, in 1 h"),
    (f'engage_redis_rebuilding{{{SEL}}}', "rebuilding from PostgreSQL (1)"),
    (f'increase(engage_redis_rebuilds_total{{{SEL}}}[1h])', "rebuilds completed in 1 h")], "short",
   "Redis restarted without its data: engage rebuilds its keys from PostgreSQL")
ts("Clock skew against Redis", [(f'engage_clock_skew_seconds{{{SEL}}}', "{{against}} {{instance}}")], "s",
   "This machine's wall clock minus the Redis server's (the top window follows Redis's clock)")
endrow(8)

row("Kafka: engage run --source kafka and engage capture")
ts("Consumer: assigned partitions", [(f'engage_kafka_assigned_partitions{{{SEL}}}', "{{instance}}")], "short",
   "Partitions of the events topic this group member owns; the members' sum is the topic's partitions")
ts("Consumer lag (records)",
   [(f'engage_kafka_consumer_lag{{{SEL}}}', "all owned partitions {{instance}}"),
    (f'engage_kafka_partition_lag{{{SEL}}}', "partition {{partition}} {{instance}}")], "short",
   "Records behind the high watermarks of the owned partitions")
ts("Consumer: records read /s", [(f'rate(engage_kafka_messages_total{{{SEL}}}[5m])', "{{instance}}")], "ops",
   "Records read from the events topic (events, and the updates, deletes and markers skipped)")
ts("Consumer: rebalances and content topic",
   [(f'increase(engage_kafka_revoked_batches_total{{{SEL}}}[1h])', "batches given up at a rebalance, in 1 h"),
    (f'increase(engage_kafka_content_sync_failures_total{{{SEL}}}[1h])', "went on without the content topic up to date, in 1 h")],
   "short", "A batch not durable 10 s after its partitions were revoked is read again by the new owner; "
   "a content sync failure is the broker not answering in time for the content topic's watermarks")
ts("Consumer: content versions kept", [(f'engage_kafka_content_versions{{{SEL}}}', "{{instance}}")], "short",
   "Content changes kept to enrich an event with its content as of its commit (at most 100,000)")
ts("Capture: changes and records /s",
   [(f'rate(engage_capture_changes_total{{{SEL}}}[5m])', "changes captured {{instance}}"),
    (f'rate(engage_capture_messages_produced_total{{{SEL}}}[5m])', "records acknowledged by the broker {{instance}}")],
   "ops", "Inserts, updates and deletes of the two tables captured from the slot, and the records the broker acknowledged")
ts("Capture: delivery failures /s",
   [(f'rate(engage_capture_delivery_failures_total{{{SEL}}}[5m])', "{{instance}}")], "ops",
   "Records the broker did not acknowledge; the batch is written again")
endrow(8)

row("External HTTP API")
ts("Requests /s by answer", [(f'sum by (code) (rate(engage_http_requests_total{{{SEL}}}[5m]))', "{{code}}")], "reqps")
ts("Retries and give-ups /s",
   [(f'rate(engage_http_retries_total{{{SEL}}}[5m])', "retries"),
    (f'rate(engage_http_giveups_total{{{SEL}}}[5m])', "give-ups (parked)")], "ops")
ts("Request duration (p50, p99)",
   [(f'histogram_quantile(0.5, sum by (le) (rate(engage_http_request_duration_seconds_bucket{{{SEL}}}[5m])))', "p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(engage_http_request_duration_seconds_bucket{{{SEL}}}[5m])))', "p99")], "s")
ts("Circuit breaker", [(f'engage_http_breaker_state{{{SEL}}}', "{{instance}}")], "short",
   "0 closed, 1 open, 2 half-open")
ts("Dead letters parked by the API sink (1 h)",
   [(f'sum by (origin) (increase(engage_dlq_parked_total{{{SEL}}}[1h]))', "{{origin}}")], "short")
endrow(8)

dash = {
    "__inputs": [],
    "title": "engage",
    "uid": "engage",
    "description": "engage: PostgreSQL -> ClickHouse, Redis and the HTTP API. One panel or more for every metric engage exports on /metrics.",
    "tags": ["engage", "cdc"],
    "timezone": "utc",
    "editable": True,
    "schemaVersion": 38,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        {"name": "instance", "type": "query", "datasource": DS, "label": "instance",
         "query": {"query": 'label_values(up{job="engage"}, instance)', "refId": "instance"},
         "definition": 'label_values(up{job="engage"}, instance)',
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}, "hide": 0},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
import os
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'engage.json')
with open(out, 'w') as f:
    json.dump(dash, f, indent=2)
    f.write('\n')
print(len(panels), "panels")
