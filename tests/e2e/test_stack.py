"""Smoke tests of the stack and of the harness itself (no engage binary)."""

import signal
import sys

import pytest

import lib


def test_postgres_answers_with_logical_wal(stack):
    assert lib.pg_scalar(stack.pg_uri, "SELECT 1") == 1
    assert lib.pg_scalar(stack.pg_uri, "SHOW wal_level") == "logical"
    assert lib.pg_scalar(stack.pg_uri, "SHOW fsync") == "on"
    assert lib.pg_scalar(stack.pg_uri, "SHOW timezone") == "UTC"


def test_clickhouse_answers(stack):
    rows = lib.ch_query(stack.clickhouse_url, "SELECT version(), 1 + 1, NULL, 'a\\tb'")
    assert rows[0][1:] == ["2", None, "a\tb"]
    assert rows[0][0].split(".")[0].isdigit()
    assert lib.ch_query_json(stack.clickhouse_url, "SELECT toUInt8(7) AS x") == [{"x": 7}]


def test_redis_answers(stack):
    assert lib.redis_client(stack.redis_url).ping() is True


def test_db_fixture_gives_a_fresh_schema_and_drops_its_slots(stack, db):
    tables = {r[0] for r in db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"content", "engagement_events"}
    assert db.scalar("SELECT count(*) FROM engagement_events") == 0
    db.exec("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (db.name,))
    # teardown must drop the slot before the database; checked by the next test
    # through the absence of engage_t_ databases with slots.


def test_no_leftover_test_databases_or_slots(stack):
    leftovers = lib.pg_query(
        stack.pg_uri, "SELECT slot_name FROM pg_replication_slots WHERE database LIKE 'engage_t_%'"
    )
    assert leftovers == []


def test_clean_sinks_empties_clickhouse_and_redis(clean_sinks):
    s = clean_sinks
    assert lib.redis_client(s.redis_url).dbsize() == 0
    rows = lib.ch_query(s.clickhouse_url, "EXISTS TABLE engagement.events_enriched")
    assert rows in ([["0"]], [])


def test_redis_keeps_data_across_a_restart(stack, clean_sinks):
    r = lib.redis_client(stack.redis_url)
    r.set("engage:test:restart", "kept")
    stack.restart("redis")
    assert lib.wait_for(lambda: lib.redis_client(stack.redis_url).get("engage:test:restart"), 10,
                        what="the key after the restart") == "kept"


def test_wait_for_reports_what_it_waited_for():
    with pytest.raises(lib.WaitTimeout, match="the impossible"):
        lib.wait_for(lambda: False, 0.2, what="the impossible")


def test_engage_process_captures_log_and_signals(tmp_path):
    script = "import signal, sys, time\n" \
             "signal.signal(signal.SIGTERM, lambda *a: (print('got term', flush=True), sys.exit(0)))\n" \
             "print('ready', flush=True)\n" \
             "time.sleep(60)\n"
    proc = lib.EngageProcess(["-c", script], log_dir=tmp_path, name="fake", binary=sys.executable).start()
    proc.wait_for_log(r"(?m)^ready$", 10)
    proc.kill(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "got term" in proc.log_text()
    assert proc.admin_addr.startswith("127.0.0.1:")
