"""Issue 7: no silent wrong data, no silent loss. Each test names the item it
proves; every one ends in one of the three allowed ways: the sink holds
PostgreSQL's value, the event is parked with a reason, or engage stops with a
non-zero exit and a runbook line."""

import re
import secrets

import lib
from test_pipeline import ch_count, metrics, run_args, slot_row, wait_streaming


def insert_events(db, n, content_id=1, duration=1000):
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "SELECT %s, g, 'play', %s, 'web' FROM generate_series(1, %s) g",
            (content_id, duration, n))


def exits_with_runbook(proc, pattern, timeout=60):
    """engage stops by itself, non-zero, with a line naming the fault and a runbook."""
    rc = proc.wait(timeout)
    assert rc not in (None, 0), f"engage should have stopped with an error:\n{proc.log_tail()}"
    log = proc.log_text()
    assert re.search(pattern, log), f"no /{pattern}/ in the log:\n{proc.log_tail()}"
    assert "runbook" in log, proc.log_tail()
    return log


def test_item3_column_of_wrong_type_is_refused(stack, db, clean_sinks, engage, tmp_path):
    """A content.length_seconds of type numeric would silently become NULL: engage
    refuses to start, naming the column, its type and the expected one, and
    creates no slot."""
    db.exec("ALTER TABLE content ALTER COLUMN length_seconds TYPE numeric")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    log = exits_with_runbook(proc, r"content\.length_seconds has type numeric")
    assert "integer or smallint" in log
    assert slot_row(db) == []


def test_item3_smallint_is_read_exactly(stack, db, clean_sinks, engage, tmp_path):
    """An exact conversion (smallint for integer) is accepted and read as is."""
    db.exec("ALTER TABLE content ALTER COLUMN length_seconds TYPE smallint")
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    insert_events(db, 1, duration=7000)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 1, 60, what="the event")
    rows = lib.ch_query(stack.clickhouse_url, "SELECT length_seconds, toString(engagement_pct) "
                        "FROM engagement.events_enriched FINAL")
    assert rows == [["300", "0.02"]]
    assert proc.stop() == 0


def test_item5_recreated_slot_is_refused(stack, db, clean_sinks, engage, tmp_path):
    """The slot dropped while engage was stopped and created again under the same
    name: the events in between would be lost, so engage refuses to stream."""
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    insert_events(db, 10)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 10, 60, what="ten events")
    assert proc.stop() == 0

    lib.wait_for(lambda: not slot_row(db)[0][0], 30, what="the slot to be released")
    db.exec("SELECT pg_drop_replication_slot(%s)", (db.name,))
    insert_events(db, 500)  # these would be lost
    db.exec("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (db.name,))
    insert_events(db, 5)

    proc = engage(*run_args(db, tmp_path), env=env)
    exits_with_runbook(proc, r"not the slot the checkpoint came from")
    assert "backfill" in proc.log_text()
    assert ch_count(stack.clickhouse_url) == 10


def test_item6_state_file_ahead_of_server_is_refused(stack, db, clean_sinks, engage, tmp_path):
    """A state file whose checkpoint is past the server's WAL end (edited, or copied
    from another deployment) is refused instead of confirmed to the slot."""
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    insert_events(db, 3)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 3, 60, what="three events")
    assert proc.stop() == 0
    confirmed_before = slot_row(db)[0][1]

    state = tmp_path / "state" / f"{db.name}.state"
    text = state.read_text()
    state.write_text(re.sub(r"^lsn .*$", "lsn 7F/3D000000", text, count=1, flags=re.M))
    insert_events(db, 4)
    proc = engage(*run_args(db, tmp_path), env=env)
    exits_with_runbook(proc, r"ahead of the server's WAL end")
    assert slot_row(db)[0][1] == confirmed_before, "nothing may be confirmed"


def test_item8_key_of_wrong_type_parks_its_events_only(stack, db, clean_sinks, engage, tmp_path):
    """content:count:5 overwritten with a list: the script checks every key before it
    writes, the events of content 5 are parked for the redis sink with the reason,
    every other event is counted exactly, and engage keeps running."""
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't'), (5, 'clip', 10, 't')")
    r = lib.redis_client(stack.redis_url)
    r.rpush("content:count:5", "not a count")
    env = stack.engage_env(db.uri, sinks=("clickhouse", "redis"))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "SELECT CASE WHEN g % 10 = 0 THEN 5 ELSE 1 END, g, 'play', 1000, 'web' "
            "FROM generate_series(1, 200) g")
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 200, 60, what="every event in ClickHouse")

    def parked():
        rows = db.query("SELECT count(*) FROM engage_dlq WHERE origin = 'redis'")
        return rows[0][0] == 20 or None

    lib.wait_for(parked, 60, what="the 20 events of content 5 parked for redis")
    reasons = db.query("SELECT DISTINCT reason FROM engage_dlq WHERE origin = 'redis'")
    assert len(reasons) == 1 and "content:count:5 holds a list" in reasons[0][0], reasons
    ids = {row[0] for row in db.query("SELECT event_id FROM engage_dlq WHERE origin = 'redis'")}
    assert ids == {g for g in range(1, 201) if g % 10 == 0}
    assert int(r.get("content:count:1")) == 180
    assert r.lrange("content:count:5", 0, -1) == ["not a count"]
    # Nothing of content 5 was applied: its seen bits are not set.
    for event_id in ids:
        assert r.getbit("engage:seen:0", event_id) == 0
    assert metrics(proc)['engage_sink_parked_events_total{sink="redis"}'] == 20
    assert proc.alive()
    assert proc.stop() == 0


def test_item8_permanent_error_no_event_causes_stops_engage(stack, db, clean_sinks, engage,
                                                           tmp_path):
    """A ClickHouse table missing a column is no event's fault: engage stops with a
    non-zero exit and says what to do, instead of retrying for ever."""
    lib.ch_exec(stack.clickhouse_url, "CREATE DATABASE IF NOT EXISTS engagement")
    lib.ch_exec(stack.clickhouse_url,
                "CREATE TABLE engagement.events_enriched (event_id Int64, event_ts DateTime) "
                "ENGINE = MergeTree ORDER BY event_id")
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    insert_events(db, 3)
    log = exits_with_runbook(proc, r"has no column", timeout=90)
    assert "sink failed permanently" in log


def test_item9_oversized_row_is_parked_and_the_rest_flows(stack, db, clean_sinks, engage, tmp_path):
    """A 45 MB text value of control characters (270 MB of JSON) is parked with its
    reason; the events before and after it reach every sink, and no truncated JSON
    is ever written."""
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse", "redis"))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    insert_events(db, 5)
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "VALUES (1, 42, 'play', 1000, repeat(chr(1), 45000000))")
    insert_events(db, 30)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 35, 120, what="the 35 other events")
    rows = db.query("SELECT origin, event_id, reason FROM engage_dlq")
    assert len(rows) == 1, rows
    assert rows[0][0] == "source" and rows[0][1] == 6 and "MiB" in rows[0][2], rows
    r = lib.redis_client(stack.redis_url)
    assert int(r.get("content:count:1")) == 35
    import json
    last = json.loads(r.get("content:last:1"))
    assert last["event_id"] == 36
    assert proc.alive()
    assert proc.stop() == 0


def test_item7_server_replacement_runbook(stack, db, clean_sinks, engage, tmp_path):
    """A new PostgreSQL server whose event ids start again at 1: engage refuses the old
    server's checkpoint with a runbook, and following docs/runbook.md step by step (renumber
    the new server's events past the largest id in the sinks, move the sequence, remove the
    slot's files, run, backfill) ends with every event of both servers once in every sink,
    none taken for a replay of another."""
    from conftest import TestDatabase
    from redis_expect import seen_count

    new_name = "engage_t_" + secrets.token_hex(6)
    new = TestDatabase(db.name, lib.pg_create_database(stack.pg_uri, new_name))  # slot = db.name
    try:
        content = "INSERT INTO content VALUES (1, 'video', 300, 't'), (2, 'podcast', 1200, 'p')"
        db.exec(content)
        new.exec(content)
        env = stack.engage_env(db.uri, sinks=("clickhouse", "redis"))
        proc = engage(*run_args(db, tmp_path), env=env)
        wait_streaming(db, proc)
        insert_events(db, 300, content_id=1)
        lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 300 and seen_count(stack.redis_url) == 300,
                     60, what="the old server's 300 events in both sinks")
        assert proc.stop() == 0

        # The old server goes away; its replacement already took 200 events, ids 1..200.
        lib.wait_for(lambda: not slot_row(db)[0][0], 30, what="the slot to be released")
        db.exec("SELECT pg_drop_replication_slot(%s)", (db.name,))
        insert_events(new, 200, content_id=2)
        state = tmp_path / "state"
        text = (state / f"{db.name}.state").read_text()  # another server's identifier, as on a new one
        (state / f"{db.name}.state").write_text(re.sub(r"^system_id .*$", "system_id 7000000000000000001",
                                                       text, count=1, flags=re.M))
        new_env = stack.engage_env(new.uri, sinks=("clickhouse", "redis"))
        proc = engage(*run_args(db, tmp_path), env=new_env, name="engage-new-server")
        log = exits_with_runbook(proc, r"state file belongs to server 7000000000000000001")
        assert "docs/runbook.md" in log

        # docs/runbook.md, "A new PostgreSQL server", steps 2-5.
        m = int(lib.ch_query(stack.clickhouse_url, "SELECT max(event_id) FROM engagement.events_enriched")[0][0])
        assert m == 300
        new.exec("BEGIN; UPDATE engagement_events SET event_id = event_id + %s WHERE event_id <= %s; "
                 "SELECT setval('engagement_events_event_id_seq', greatest((SELECT max(event_id) "
                 "FROM engagement_events), %s)); COMMIT", (m, m, m))
        for suffix in ("state", "bound", "sinks"):
            (state / f"{db.name}.{suffix}").unlink()
        proc = engage(*run_args(db, tmp_path), env=new_env, name="engage-after-runbook")
        wait_streaming(new, proc)
        backfill = engage("backfill", "--start", "-infinity", "--end", "infinity", "--state-dir",
                          str(state), "--sinks", "clickhouse,redis", env=new_env, name="backfill")
        assert backfill.wait(120) == 0, backfill.log_tail()
        insert_events(new, 100, content_id=1)  # and the stream goes on

        lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 600 and seen_count(stack.redis_url) == 600,
                     60, what="600 events in both sinks")
        want = sorted(tuple(map(str, r)) for src in (db, new) for r in src.query(
            "SELECT event_id, content_id, user_id FROM engagement_events"))
        got = sorted(tuple(r) for r in lib.ch_query(
            stack.clickhouse_url, "SELECT event_id, content_id, user_id FROM engagement.events_enriched FINAL"))
        assert got == want, "ClickHouse does not hold exactly the events of both servers"
        r = lib.redis_client(stack.redis_url)
        assert (r.get("content:count:1"), r.get("content:count:2")) == ("400", "200")
        assert proc.stop() == 0, proc.log_tail()
    finally:
        lib.pg_drop_database(stack.pg_uri, new_name)


def test_item10_failed_state_save_holds_the_checkpoint(stack, db, clean_sinks, engage, tmp_path):
    """A content change must be on file before the flush LSN passes it (events replayed
    after a crash are enriched as they were the first time). While the state file cannot
    be written, the slot is not confirmed past the change, and the save is tried again
    until it works; then the file holds the new row and the slot moves on."""
    from workload import lsn_int

    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    insert_events(db, 3)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 3, 60, what="three events")

    blocker = tmp_path / "state" / f"{db.name}.state.tmp"
    blocker.mkdir()  # the save's temporary file cannot be created, even by root
    db.exec("UPDATE content SET length_seconds = 777 WHERE content_id = 1")
    change_lsn = lsn_int(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
    insert_events(db, 5)
    lib.wait_for(lambda: ch_count(stack.clickhouse_url) == 8, 60, what="the later events in ClickHouse")
    lib.wait_for(lambda: proc.log_text().count("could not save state; checkpoint held") >= 2, 60,
                 what="the save to fail and be tried again")
    confirmed = lsn_int(slot_row(db)[0][1])
    assert confirmed < change_lsn, "the slot was confirmed past a content change that is not on file"

    blocker.rmdir()
    lib.wait_for(lambda: lsn_int(slot_row(db)[0][1]) >= change_lsn, 60,
                 what="the slot to move past the change once the save works")
    text = (tmp_path / "state" / f"{db.name}.state").read_text()
    assert re.search(r"^1 777 ", text, re.M), f"the state file lacks the new row:\n{text}"
    assert proc.stop() == 0, proc.log_tail()
