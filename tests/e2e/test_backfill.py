"""engage backfill against the real servers (DESIGN.md section 3): events no slot
ever saw reach ClickHouse and Redis exactly; a second run changes nothing; a run
stopped by SIGTERM and then killed resumes where every sink had it; a backfill
beside a live `engage run` over the same events counts nothing twice.

Backfill enriches with the content table as it is when it starts (no history of
a content row is kept anywhere), so the expected events here are computed from
PostgreSQL's current content, except beside a live run, where content does not
change and both enrichments agree."""

import signal

import lib
import redis_expect as rx
from test_pipeline import ch_count, run_args, wait_streaming
from workload import Workload, check_clickhouse, expected_event

WHOLE = ("--start", "-infinity", "--end", "infinity")


def expected_now(db):
    """Every event of the database enriched with the content rows as they are now."""
    rows = db.query(
        "SELECT e.event_id, e.content_id, e.user_id, e.event_type, e.event_ts::text, e.duration_ms, "
        "e.device, c.content_id IS NOT NULL, c.content_type, c.length_seconds "
        "FROM engagement_events e LEFT JOIN content c USING (content_id)")
    return {r[0]: expected_event(r[:7], (r[8], r[9]) if r[7] else None) for r in rows}


def backfill_args(tmp_path, *extra):
    return ["backfill", *WHOLE, "--state-dir", str(tmp_path / "backfill-state"), *extra]


def resume_files(tmp_path):
    d = tmp_path / "backfill-state"
    return sorted(d.glob("backfill-*.state")) if d.exists() else []


def finish(proc, timeout=180):
    rc = proc.wait(timeout)
    assert rc == 0, f"backfill exited {rc}\n{proc.log_tail()}"
    return proc.log_text()


def unchanged(before, after):
    """Keys whose type, value or expiry differ, but the top window's (rebuilt by
    every write, and moved on if the minute turned) and engage:mark's (its call
    count goes on)."""
    assert sorted(after) == sorted(before), "keys appeared or vanished"
    return [k for k in before if k not in rx.TOP_KEYS + (rx.MARK_KEY,) and before[k] != after[k]]


def test_backfill_of_events_no_slot_saw(stack, db, clean_sinks, engage, tmp_path):
    wl = Workload(db.uri, seed=71)
    wl.setup_content()
    wl.run(total=6_000, sessions=4)  # no engage running: no slot sees these
    expected = expected_now(db)
    assert len(expected) == 6_000
    env = stack.engage_env(db.uri)

    log = finish(engage(*backfill_args(tmp_path, "--batch-events", "700"), env=env, name="backfill-1"))
    assert "msg=\"backfill done\" events=6000 parked=0" in log, log[-2000:]
    assert not resume_files(tmp_path), "a finished backfill leaves no resume point"
    check_clickhouse(stack.clickhouse_url, expected)
    rx.check_redis(stack.redis_url, db.uri, expected)

    # The same range again: every event redelivered, nothing changes.
    before = rx.snapshot(stack.redis_url)
    log = finish(engage(*backfill_args(tmp_path), env=env, name="backfill-2"))
    assert "msg=\"backfill done\" events=6000" in log and "resumed=no" in log, log[-2000:]
    changed = unchanged(before, rx.snapshot(stack.redis_url))
    assert not changed, f"a second backfill changed {len(changed)} Redis keys, e.g. {changed[:5]}"
    check_clickhouse(stack.clickhouse_url, expected)
    rx.check_redis(stack.redis_url, db.uri, expected)


def test_backfill_stopped_then_killed_resumes(stack, db, clean_sinks, engage, tmp_path):
    wl = Workload(db.uri, seed=72)
    wl.setup_content()
    wl.run(total=20_000, sessions=4)
    expected = expected_now(db)
    env = stack.engage_env(db.uri)
    # Small pages and a queue of 2 behind ClickHouse's 200 ms interval: about 10 pages a
    # second, so there is time to stop it half-way.
    slow = ("--batch-events", "100", "--queue-depth", "2")

    first = engage(*backfill_args(tmp_path, *slow), env=env, name="backfill-stopped")
    lib.wait_for(lambda: resume_files(tmp_path), 60, what="a first durable page")
    first.kill(signal.SIGTERM)
    assert first.wait(30) == 3, first.log_tail()
    assert "run the same command again to resume" in first.log_text()
    [path] = resume_files(tmp_path)
    point = path.read_text()

    second = engage(*backfill_args(tmp_path, *slow), env=env, name="backfill-killed")
    second.wait_for_log(r"resumed=yes", 30)
    lib.wait_for(lambda: path.exists() and path.read_text() != point, 60, what="the resume point to move")
    second.kill(signal.SIGKILL)
    assert second.wait(30) == -signal.SIGKILL
    assert ch_count(stack.clickhouse_url) < len(expected), "killed before the end"

    log = finish(engage(*backfill_args(tmp_path), env=env, name="backfill-resumed"))
    assert "resumed=yes" in log, log[-2000:]
    assert not resume_files(tmp_path)
    check_clickhouse(stack.clickhouse_url, expected)
    rx.check_redis(stack.redis_url, db.uri, expected)


def test_backfill_beside_a_live_run(stack, db, clean_sinks, engage, tmp_path):
    wl = Workload(db.uri, seed=73)
    wl.setup_content()
    env = stack.engage_env(db.uri)
    live = engage(*run_args(db, tmp_path), env=env, name="engage-run")
    wait_streaming(db, live)
    join = wl.run(total=5_000, sessions=4, pace=0.05, background=True, update_content=False)
    # Backfills over the whole range, one after the other, while the live run streams the
    # same events (and at least once after the last insert).
    overlapped = 0
    while overlapped == 0 or db.scalar("SELECT count(*) FROM engagement_events") < 5_000:
        total = db.scalar("SELECT count(*) FROM engagement_events")
        finish(engage(*backfill_args(tmp_path, "--batch-events", "250"), env=env))
        overlapped += 0 < total < 5_000
    assert overlapped >= 1, "a backfill must have run while events were inserted"
    join()
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) >= len(wl.expected), 120, interval=0.2,
                 what="every event in ClickHouse")
    rx.wait_applied(stack.redis_url, len(wl.expected), 120, live)
    finish(engage(*backfill_args(tmp_path), env=env, name="backfill-last"))
    assert live.alive(), live.log_tail()
    check_clickhouse(stack.clickhouse_url, wl.expected)
    rx.check_redis(stack.redis_url, db.uri, wl.expected)
    assert live.stop() == 0


def test_backfill_parks_rows_that_are_not_events(stack, db, clean_sinks, engage, tmp_path):
    """A row that is not an event (no content_id) is parked with a reason; the rest go on."""
    lib.pg_exec(db.uri, "INSERT INTO content VALUES (1, 'video', 300, 't')")
    lib.pg_exec(db.uri, "INSERT INTO engagement_events(content_id, user_id, event_ts, duration_ms) VALUES "
                        "(1, 1, '2026-01-01 10:00', 7000), (NULL, 2, '2026-01-01 10:01', 1), "
                        "(1, 3, '2026-01-01 10:02', NULL), (7, 4, '2026-01-01 10:03', 5)")
    bad_id = db.scalar("SELECT event_id FROM engagement_events WHERE content_id IS NULL")
    log = finish(engage("backfill", "--start", "2026-01-01", "--end", "2026-01-02", "--state-dir",
                        str(tmp_path / "bf"), env=stack.engage_env(db.uri)))
    assert "events=3 parked=1 content_misses=1" in log, log[-2000:]
    assert "bad row parked in the dead-letter queue" in log
    rows = db.query("SELECT origin, event_id, reason, payload FROM engage_dlq")
    assert len(rows) == 1 and rows[0][0] == "backfill" and rows[0][1] == bad_id, rows
    assert "content_id" in rows[0][2], rows
    assert ch_count(stack.clickhouse_url) == 3
    assert lib.redis_client(stack.redis_url).get("content:count:1") == "2"
