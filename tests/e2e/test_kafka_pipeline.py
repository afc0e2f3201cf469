"""Kafka, both ends (issue 10): `engage capture` writes Debezium's records to a
real broker, `engage run --source kafka` reads them into ClickHouse, Redis and
the API; every sink is checked value by value against PostgreSQL, as the
direct path's tests do.

Each test has topics of its own (the prefix is its database's name), a slot
of its own for capture and a consumer group of its own."""

import json
import subprocess
import threading

import lib
import redis_expect as rx
from test_http import Mock, assert_all_delivered
from test_pipeline import ch_count, metrics
from workload import Workload, check_clickhouse


class KafkaPath:
    """capture and consumers for one test: topics prefix.public.engagement_events
    and prefix.public.content, slot <db>_cap, group prefix."""

    def __init__(self, stack, kafka, db, engage, tmp_path, partitions=1):
        self.stack, self.kafka, self.db, self.engage, self.tmp = stack, kafka, db, engage, tmp_path
        self.prefix = db.name
        self.topic = f"{self.prefix}.public.engagement_events"
        self.partitions = partitions
        self.captures = 0
        self.consumers = 0

    def capture(self, *extra, name=None):
        self.captures += 1
        return self.engage("capture", "--pg", self.db.uri, "--kafka", self.kafka.bootstrap,
                           "--topic-prefix", self.prefix, "--slot", f"{self.db.name}_cap",
                           "--state-dir", str(self.tmp / "capture-state"),
                           "--partitions", str(self.partitions), *extra,
                           name=name or f"capture-{self.captures}")

    def consumer(self, *extra, mock=None, state=None, name=None, sinks=("clickhouse", "redis")):
        self.consumers += 1
        args = ["run", "--source", "kafka", "--kafka", self.kafka.bootstrap, "--topic", self.topic,
                "--group", self.prefix, "--pg", self.db.uri,
                "--state-dir", str(self.tmp / (state or f"consumer-{self.consumers}"))]
        if "clickhouse" in sinks:
            args += ["--clickhouse", self.stack.clickhouse_url]
        if "redis" in sinks:
            args += ["--redis", self.stack.redis_url]
        if mock is not None:
            args += ["--http", mock.url]
        return self.engage(*args, *extra, name=name or f"consumer-{self.consumers}")

    def wait_capturing(self, proc, timeout=90):
        proc.wait_for_log(r'msg="streaming"', timeout, what="capture to stream")


def not_events_meanwhile(db, old, stop, counts):
    """Changes that are not events, while events stream: updates of event rows
    (to the same values, so PostgreSQL's rows stay what the sinks must hold),
    deletes of rows that existed before capture started, and transactions that
    insert events and roll back."""
    old = list(old)
    conn = lib.pg_connect(db.uri)
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("UPDATE engagement_events SET device = device WHERE event_id = "
                            "(SELECT max(event_id) FROM engagement_events)")
                counts["updates"] += cur.rowcount
                if old:
                    cur.execute("DELETE FROM engagement_events WHERE event_id = %s", (old.pop(),))
                    counts["deletes"] += cur.rowcount
                cur.execute("BEGIN")
                cur.execute("INSERT INTO engagement_events(content_id, user_id, duration_ms) "
                            "VALUES (1, 1, 1), (2, 2, 2)")
                cur.execute("ROLLBACK")
                counts["rollbacks"] += 1
                stop.wait(0.02)
            for event_id in old:  # the rest, so that PostgreSQL holds the workload only
                cur.execute("DELETE FROM engagement_events WHERE event_id = %s", (event_id,))
                counts["deletes"] += cur.rowcount
    finally:
        conn.close()


def test_capture_and_consumer_deliver_the_mixed_workload_exactly(stack, kafka, db, clean_sinks,
                                                                 engage, tmp_path):
    wl = Workload(db.uri, seed=31)
    wl.setup_content()
    # Rows present before capture starts are not captured (no_data for events):
    # deleted while the workload runs, they make delete records that are not events.
    db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms) "
            "SELECT 1, g, 1000 FROM generate_series(1, 40) g")
    old = [r[0] for r in db.query("SELECT event_id FROM engagement_events")]
    k = KafkaPath(stack, kafka, db, engage, tmp_path, partitions=3)
    cap = k.capture()
    k.wait_capturing(cap)
    mock = Mock(engage, tmp_path)
    con = k.consumer(mock=mock)

    stop, counts = threading.Event(), {"updates": 0, "deletes": 0, "rollbacks": 0}
    noise = threading.Thread(target=not_events_meanwhile, args=(db, old, stop, counts))
    noise.start()
    try:
        wl.run(total=8_000, sessions=4)
    finally:
        stop.set()
        noise.join()
    assert wl.content_updates > 10, "content rows must change while events stream"
    assert counts["updates"] > 10 and counts["deletes"] == 40 and counts["rollbacks"] > 10, counts

    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= len(wl.expected), 240, interval=0.5,
                 what="every event in ClickHouse")
    check_clickhouse(stack.clickhouse_url, wl.expected)
    rx.wait_applied(stack.redis_url, len(wl.expected), 120, proc=con)
    rx.check_redis(stack.redis_url, db.uri, wl.expected)
    assert_all_delivered(db, mock, set(wl.expected))

    m = metrics(con)
    assert m['engage_source_events_total{source="kafka"}'] == len(wl.expected)
    assert m['engage_source_ignored_changes_total{source="kafka"}'] >= (
        counts["updates"] + 2 * counts["deletes"])  # a delete and its tombstone
    assert m['engage_source_bad_input_total{source="kafka"}'] == 0
    # engage status covers both: the consumer's partitions and lag, capture's slot and records
    # (the lag gauge is sampled every second: it reaches 0 within one sample of the end)
    lib.wait_for(lambda: status(db, "--source", "kafka", "--admin-addr", con.admin_addr)
                 ["kafka"]["engage_kafka_consumer_lag"] == 0, 10, what="the consumer lag gauge at 0")
    st = status(db, "--source", "kafka", "--admin-addr", con.admin_addr)
    assert st["ok"] and st["slot"]["state"] == "none", st
    assert st["kafka"]["engage_kafka_assigned_partitions"] == 3
    assert st["kafka"]["engage_kafka_consumer_lag"] == 0
    assert sum(v for name, v in st["kafka"].items() if name.startswith("engage_kafka_partition_lag")) == 0
    st = status(db, "--slot", f"{db.name}_cap", "--admin-addr", cap.admin_addr)
    assert st["slot"]["state"] == "ok" and st["engage"]["state"] == "ready", st
    assert st["kafka"]["engage_capture_messages_produced_total"] >= len(wl.expected)
    assert st["kafka"]["engage_capture_delivery_failures_total"] == 0
    assert cap.stop() == 0, cap.log_tail()
    assert con.stop() == 0, con.log_tail()


def status(db, *args):
    out = subprocess.run([str(lib.engage_binary()), "status", "--pg", db.uri, "--json", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)
