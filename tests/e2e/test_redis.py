"""engage run --redis: the real-time keys against a real Redis and the real
binary (issue 3): exact after the mixed workload, after kill -9 loops, after a
full replay of every event, and across a Redis restart. Expectations come from
PostgreSQL and the workload (redis_expect.py), never from engage."""

import random
import threading
import time
import urllib.error
import urllib.request

import lib
import redis_expect as rx
from test_pipeline import ch_count, metrics, run_args, slot_row, wait_streaming
from workload import Workload, check_clickhouse, lsn_int


def wait_confirmed(db, wl, timeout=30):
    """Wait until the slot is confirmed up to the workload's last transaction:
    engage has nothing more in flight for it."""
    last_tx = max(end for end, _ in wl.tx_end)
    lib.wait_for(lambda: lsn_int(slot_row(db)[0][1]) >= last_tx - 4096 or None, timeout,
                 what="confirmed_flush_lsn to reach the last transaction")


def test_mixed_workload_redis_exact(stack, db, clean_sinks, engage, tmp_path):
    wl = Workload(db.uri, seed=61)
    wl.setup_content()
    proc = engage(*run_args(db, tmp_path), env=stack.engage_env(db.uri, sinks=("redis",)))
    wait_streaming(db, proc)

    wl.run(total=10_000, sessions=4)
    assert wl.content_updates > 10, "content rows must change while events stream"
    rx.wait_applied(stack.redis_url, len(wl.expected), 120, proc)
    wait_confirmed(db, wl)
    rx.check_redis(stack.redis_url, db.uri, wl.expected)

    m = metrics(proc)
    assert m['engage_sink_events_total{sink="redis"}'] == len(wl.expected)
    assert m["engage_redis_duplicates_total"] == 0
    assert proc.stop() == 0, proc.log_tail()


def test_sigkill_while_streaming_redis_exact(stack, db, clean_sinks, engage, tmp_path):
    """kill -9 at least 5 times while events stream, ClickHouse beside Redis:
    both end exact, and the slot is never confirmed past an event that Redis
    has not applied."""
    wl = Workload(db.uri, seed=62)
    wl.setup_content()
    env = stack.engage_env(db.uri)
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)

    violations, checks = [], [0]

    def check_confirmed_not_ahead():
        rows = slot_row(db)
        if not rows or rows[0][1] is None:
            return
        confirmed = lsn_int(rows[0][1])
        with wl.lock:
            covered = [i for end, ids in wl.tx_end if end <= confirmed for i in ids]
        if not covered:
            return
        lost = rx.seen_missing(stack.redis_url, covered)
        if lost:
            violations.append((rows[0][1], lost[:5]))
        checks[0] += 1

    stop_monitor = threading.Event()

    def monitor():
        while not stop_monitor.is_set():
            check_confirmed_not_ahead()
            stop_monitor.wait(0.25)

    mon = threading.Thread(target=monitor)
    mon.start()
    total = 12_000
    join = wl.run(total=total, sessions=4, pace=0.2, background=True)
    rng = random.Random(7)
    kills = kills_while_streaming = 0
    try:
        while kills < 6:
            # Kill only once engage has had time to apply something since the restart.
            time.sleep(rng.uniform(0.4, 2.0))
            before = len(wl.expected)
            proc.kill()
            proc.wait(10)
            kills += 1
            if 0 < before < total:
                kills_while_streaming += 1
            proc = engage(*run_args(db, tmp_path), env=env, name=f"engage-after-kill-{kills}")
        join()
    finally:
        stop_monitor.set()
        mon.join()
    assert kills_while_streaming >= 5, f"only {kills_while_streaming} kills landed while events streamed"
    rx.wait_applied(stack.redis_url, len(wl.expected), 180, proc)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= len(wl.expected), 180,
                 interval=0.2, what="every event in ClickHouse after the kills")
    wait_confirmed(db, wl)
    check_confirmed_not_ahead()
    assert not violations, f"confirmed_flush_lsn ran ahead of Redis: {violations[:3]}"
    assert checks[0] > 5, "the monitor must have checked the invariant while streaming"
    rx.check_redis(stack.redis_url, db.uri, wl.expected)
    check_clickhouse(stack.clickhouse_url, wl.expected)
    assert proc.stop() == 0, proc.log_tail()


def test_replay_of_every_event_changes_nothing(stack, db, clean_sinks, engage, tmp_path):
    """A second slot created before the workload redelivers every event through
    a second engage: not one Redis value or expiry changes (top:content:10m is
    rebuilt, to the same value, with a fresh TTL)."""
    wl = Workload(db.uri, seed=63)
    wl.setup_content()
    env = stack.engage_env(db.uri, sinks=("redis",))
    replay_slot = db.name + "_replay"
    replay_args = ["run", "--slot", replay_slot, "--state-dir", str(tmp_path / "state-replay")]

    # The replay slot and its checkpoint (content cache included) exist before any event.
    replayer = engage(*replay_args, env=env, name="engage-replay-setup")
    lib.wait_for(lambda: db.scalar("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                   (replay_slot,)), 60, what="the replay slot")
    assert replayer.stop() == 0, replayer.log_tail()

    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    wl.run(total=6_000, sessions=4)
    rx.wait_applied(stack.redis_url, len(wl.expected), 120, proc)
    wait_confirmed(db, wl)
    assert proc.stop() == 0, proc.log_tail()
    rx.check_redis(stack.redis_url, db.uri, wl.expected)
    before = rx.snapshot(stack.redis_url)

    replayer = engage(*replay_args, env=env, name="engage-replay")

    def replayed():
        if not replayer.alive():
            raise lib.GiveUp(f"replay engage exited:\n{replayer.log_tail()}")
        return metrics(replayer).get("engage_redis_duplicates_total", 0) >= len(wl.expected)

    lib.wait_for(replayed, 120, interval=0.2, what="every event redelivered to Redis")
    m = metrics(replayer)
    assert m["engage_redis_duplicates_total"] == len(wl.expected)
    assert m['engage_sink_events_total{sink="redis"}'] == len(wl.expected)
    assert replayer.stop() == 0, replayer.log_tail()
    after = rx.snapshot(stack.redis_url)

    assert sorted(after) == sorted(before), (
        f"keys appeared {sorted(set(after) - set(before))[:10]} or vanished {sorted(set(before) - set(after))[:10]}")
    # top:content:10m and its window end are rebuilt after each batch: their TTL is
    # refreshed, and when the wall-clock minute turned between the two runs the window
    # moved on, so their values may too (check_redis below holds them to the buckets).
    minute_turned = after["engage:top:end"][1] != before["engage:top:end"][1]
    if minute_turned:
        assert after["engage:top:end"][1] > before["engage:top:end"][1]
    changed = []
    for key, (kind, value, expiry) in before.items():
        a_kind, a_value, a_expiry = after[key]
        if key == rx.MARK_KEY:  # the generation stays, the call count goes on
            assert a_value["gen"] == value["gen"], "engage:mark's generation changed"
            continue
        if key in ("top:content:10m", "engage:top:end"):
            a_expiry = expiry
            if minute_turned:
                a_value = value
        if (kind, value, expiry) != (a_kind, a_value, a_expiry):
            changed.append((key, (kind, value, expiry), (a_kind, a_value, a_expiry)))
    assert not changed, f"{len(changed)} keys changed by the replay; first: {changed[0]}"
    rx.check_redis(stack.redis_url, db.uri, wl.expected)


def readyz(proc):
    try:
        with urllib.request.urlopen(f"http://{proc.admin_addr}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_redis_restart_mid_stream(stack, db, clean_sinks, engage, tmp_path):
    """Redis stops while events stream: /readyz reports it and the checkpoint
    does not pass what Redis held; Redis returns and engage reconnects by itself and ends exact in
    both sinks."""
    wl = Workload(db.uri, seed=64)
    wl.setup_content()
    proc = engage(*run_args(db, tmp_path), env=stack.engage_env(db.uri))
    wait_streaming(db, proc)
    total = 6_000
    join = wl.run(total=total, sessions=3, pace=0.15, background=True)
    joined = False
    try:
        lib.wait_for(lambda: rx.seen_count(stack.redis_url) >= 300, 60, what="events in Redis")
        stack.stop("redis")
        # Everything Redis applied was committed before it stopped, so while it is down
        # the checkpoint may catch up to, but never pass, the WAL position of now.
        wal_at_stop = lsn_int(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        try:
            def redis_unready():
                status, body = readyz(proc)
                return status == 503 and "redis=" in body and "redis=ok" not in body and body
            lib.wait_for(redis_unready, 30, what="/readyz to report the Redis outage")
            # More events commit; none of them is confirmed while Redis is down (README: a
            # sink that cannot write holds the checkpoint, and the stream once its queue is full).
            committed = len(wl.expected)
            lib.wait_for(lambda: len(wl.expected) >= min(committed + 300, total), 30,
                         what="more events to commit while Redis is down")
            assert max(end for end, _ in wl.tx_end) > wal_at_stop
            confirmed = lsn_int(slot_row(db)[0][1])
            assert confirmed <= wal_at_stop, "the checkpoint passed what Redis could have applied"
            assert len(wl.expected) < total, "the outage must fall while events stream"
            assert proc.alive()
        finally:
            stack.start("redis")
        join()
        joined = True
    finally:
        if not joined:  # a failed check: let the sessions end before the database is dropped
            try:
                join()
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                pass
    rx.wait_applied(stack.redis_url, len(wl.expected), 120, proc)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= len(wl.expected), 120, interval=0.2,
                 what="every event in ClickHouse")
    wait_confirmed(db, wl)
    rx.check_redis(stack.redis_url, db.uri, wl.expected)
    check_clickhouse(stack.clickhouse_url, wl.expected)
    lib.wait_for(lambda: readyz(proc)[0] == 200, 30, what="/readyz to recover")
    assert proc.stop() == 0, proc.log_tail()
