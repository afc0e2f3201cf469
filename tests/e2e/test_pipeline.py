"""engage run: PostgreSQL logical replication -> enrichment -> ClickHouse,
against real servers and the real binary (issue: direct pipeline)."""

import random
import threading
import time
import urllib.error
import urllib.request

import lib
import workload
from workload import Workload, check_clickhouse, lsn_int


def slot_row(db):
    """(active, confirmed_flush_lsn) of the test's slot, named after its database
    (slots are per server, databases per test)."""
    return db.query(
        "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (db.name,),
    )


def wait_streaming(db, proc, timeout=60):
    def ready():
        if not proc.alive():
            raise lib.GiveUp(f"engage exited with {proc.returncode}:\n{proc.log_tail()}")
        rows = slot_row(db)
        return rows and rows[0][0]

    lib.wait_for(ready, timeout, what="engage to create its slot and stream")


def ch_count(url):
    try:
        return int(lib.ch_query(url, "SELECT count() FROM engagement.events_enriched FINAL")[0][0])
    except lib.ClickHouseError:
        return 0  # table not created yet


def run_args(db, tmp_path, *extra):
    return ["run", "--slot", db.name, "--state-dir", str(tmp_path / "state"), *extra]


def metrics(proc):
    with urllib.request.urlopen(f"http://{proc.admin_addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_mixed_workload_lands_exactly_once(stack, db, clean_sinks, engage, tmp_path):
    wl = Workload(db.uri, seed=11)
    wl.setup_content()
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)

    wl.run(total=10_000, sessions=4)
    assert wl.content_updates > 10, "content rows must change while events stream"
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= len(wl.expected), 180,
                 interval=0.2, what="every event in ClickHouse")
    check_clickhouse(stack.clickhouse_url, wl.expected)

    misses = sum(1 for e in wl.expected.values() if e["content_id"] in workload.UNKNOWN_CONTENT)
    assert misses > 0
    m = metrics(proc)
    assert m["engage_enrich_misses_total"] == misses
    assert m['engage_source_events_total{source="pg"}'] == len(wl.expected)

    # The slot is confirmed up to the last transaction once everything is durable.
    last_tx = max(end for end, _ in wl.tx_end)
    lib.wait_for(lambda: lsn_int(slot_row(db)[0][1]) >= last_tx - 4096 or None, 30,
                 what="confirmed_flush_lsn to reach the last transaction")
    assert proc.stop() == 0, proc.log_tail()


def test_restart_keeps_content_as_of_commit(stack, db, clean_sinks, engage, tmp_path):
    """Events replayed after a restart are enriched with the content as it was
    at their commit, not as it is when engage restarts."""
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "VALUES (1, 999, 'play', 7000, 'web')")
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 1, 60, what="first event")
    assert proc.stop() == 0

    # While engage is down: an event, then a content change, then another event.
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "VALUES (1, 1, 'play', 3000, 'web')")
    db.exec("UPDATE content SET length_seconds = 10, content_type = 'clip' WHERE content_id = 1")
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "VALUES (1, 2, 'play', 3000, 'web')")
    proc = engage(*run_args(db, tmp_path), env=env)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 3, 60, what="three events")
    rows = lib.ch_query_json(stack.clickhouse_url,
                             "SELECT user_id, content_type, length_seconds, engagement_pct "
                             "FROM engagement.events_enriched FINAL ORDER BY event_id")
    assert rows == [
        {"user_id": 999, "content_type": "video", "length_seconds": 300, "engagement_pct": 0.02},
        {"user_id": 1, "content_type": "video", "length_seconds": 300, "engagement_pct": 0.01},
        {"user_id": 2, "content_type": "clip", "length_seconds": 10, "engagement_pct": 0.3},
    ]
    assert proc.stop() == 0


def test_sigkill_at_random_moments(stack, db, clean_sinks, engage, tmp_path):
    """kill -9 at least 5 times while events stream; ClickHouse ends with every
    event exactly once, and confirmed_flush_lsn never passes what ClickHouse
    holds (checked against each transaction's WAL position after commit)."""
    wl = Workload(db.uri, seed=22)
    wl.setup_content()
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)

    violations = []
    checks = [0]

    def check_confirmed_not_ahead():
        rows = slot_row(db)
        if not rows or rows[0][1] is None:
            return
        confirmed = lsn_int(rows[0][1])
        with wl.lock:
            covered = [ids for end, ids in wl.tx_end if end <= confirmed]
        if not covered:
            return
        try:
            present = {int(r[0]) for r in lib.ch_query(stack.clickhouse_url, "SELECT event_id FROM engagement.events_enriched")}
        except lib.ClickHouseError:
            present = set()
        for ids in covered:
            lost = [i for i in ids if i not in present]
            if lost:
                violations.append((rows[0][1], lost[:5]))
                return
        checks[0] += 1

    stop_monitor = threading.Event()

    def monitor():
        while not stop_monitor.is_set():
            check_confirmed_not_ahead()
            stop_monitor.wait(0.25)

    mon = threading.Thread(target=monitor)
    mon.start()
    # About 15 s of inserts (4 sessions, ~45 events a transaction, 0.2 s apart).
    join = wl.run(total=12_000, sessions=4, pace=0.2, background=True)
    rng = random.Random(5)
    kills = kills_while_streaming = 0
    try:
        while kills < 6:
            time.sleep(rng.uniform(0.3, 2.0))
            before = len(wl.expected)
            proc.kill()
            proc.wait(10)
            kills += 1
            if 0 < before < 12_000:
                kills_while_streaming += 1
            check_confirmed_not_ahead()
            proc = engage(*run_args(db, tmp_path), env=env, name=f"engage-after-kill-{kills}")
        join()
    finally:
        stop_monitor.set()
        mon.join()
    assert kills_while_streaming >= 5, f"only {kills_while_streaming} kills landed while events streamed"
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= len(wl.expected), 180,
                 interval=0.2, what="every event in ClickHouse after the kills")
    check_confirmed_not_ahead()
    assert not violations, f"confirmed_flush_lsn ran ahead of ClickHouse: {violations[:3]}"
    assert checks[0] > 5, "the monitor must have checked the invariant while streaming"
    check_clickhouse(stack.clickhouse_url, wl.expected)
    assert proc.stop() == 0, proc.log_tail()


def test_bad_input_is_parked_not_fatal(stack, db, clean_sinks, engage, tmp_path):
    """A row that does not make an event (NULL content_id) goes to the
    dead-letter table with its position and reason; the stream continues."""
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms) VALUES (NULL, 5, 100)")
    db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms) VALUES (1, 6, 100)")
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 1, 60, what="the good event")
    rows = db.query("SELECT origin, position, reason FROM engage_dlq")
    assert len(rows) == 1
    assert rows[0][0] == "source" and "content_id" in rows[0][2] and "/" in rows[0][1]
    assert metrics(proc)['engage_source_bad_input_total{source="pg"}'] == 1
    assert proc.alive()
    assert proc.stop() == 0


def test_clickhouse_outage_stalls_checkpoint_then_catches_up(stack, db, clean_sinks, engage, tmp_path):
    """ClickHouse down: engage keeps retrying, the slot is not confirmed past what
    ClickHouse holds, /readyz says why; once it is back every event lands once."""
    wl = Workload(db.uri, seed=33)
    wl.setup_content()
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    wl.run(total=500, sessions=2)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 500, 60, what="the first 500 events")
    stack.stop("clickhouse")
    try:
        held = lsn_int(slot_row(db)[0][1])
        wl2 = Workload(db.uri, seed=34)
        wl2.run(total=500, sessions=2)

        def not_ready():
            try:
                urllib.request.urlopen(f"http://{proc.admin_addr}/readyz", timeout=5)
                return False
            except urllib.error.HTTPError as e:
                return e.code == 503 and b"clickhouse" in e.read()
        lib.wait_for(not_ready, 30, what="/readyz to report the ClickHouse outage")
        # Everything written during the outage is beyond the held position.
        assert lsn_int(slot_row(db)[0][1]) <= min(end for end, _ in wl2.tx_end)
        assert lsn_int(slot_row(db)[0][1]) >= held
        assert proc.alive()
    finally:
        stack.start("clickhouse")
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 1000, 120, interval=0.2,
                 what="the events written during the outage")
    check_clickhouse(stack.clickhouse_url, {**wl.expected, **wl2.expected})
    assert proc.stop() == 0


def test_postgres_restart_reconnects_exactly(stack, db, clean_sinks, engage, tmp_path):
    """PostgreSQL restarts while events stream: engage reconnects from its
    checkpoint by itself and ClickHouse ends with every event once."""
    wl = Workload(db.uri, seed=44)
    wl.setup_content()
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    wl.run(total=2000, sessions=2)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= 1, 60, what="streaming to start")
    stack.restart("pg")
    wl2 = Workload(db.uri, seed=45)
    wl2.run(total=2000, sessions=2)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= 4000, 120, interval=0.2,
                 what="every event after the restart")
    check_clickhouse(stack.clickhouse_url, {**wl.expected, **wl2.expected})
    assert "source failed, reconnecting" in proc.log_text()
    assert proc.stop() == 0
