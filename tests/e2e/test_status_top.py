"""engage status and engage top (DESIGN.md section 6) against a running engage and the
real servers: status reports the slot, readiness and the dead letters, and its exit
status follows them; top prints exactly what top:content:10m holds, in order."""

import subprocess

import lib
import redis_expect as rx
from test_pipeline import run_args, wait_streaming
from test_redis import wait_confirmed
from workload import Workload, lsn_int


def engage_cli(*args, env=None, timeout=60):
    return subprocess.run([str(lib.engage_binary()), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def fields(stdout):
    """{name: rest of the line} of `name value` lines."""
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


def test_status_follows_the_pipeline(stack, db, clean_sinks, engage, tmp_path):
    wl = Workload(db.uri, seed=81)
    wl.setup_content()
    proc = engage(*run_args(db, tmp_path), env=stack.engage_env(db.uri))
    wait_streaming(db, proc)
    wl.run(total=2_000, sessions=2)
    rx.wait_applied(stack.redis_url, len(wl.expected), 120, proc)
    wait_confirmed(db, wl)
    status_args = ("status", "--pg", db.uri, "--slot", db.name, "--admin-addr", proc.admin_addr)

    def confirmed():
        return lsn_int(db.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                 "WHERE slot_name = %s", (db.name,)))

    before = confirmed()
    r = engage_cli(*status_args)
    after = confirmed()
    f = fields(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f["slot"] == db.name and f["slot_active"] == "yes", r.stdout
    assert f["slot_wal_status"] in ("reserved", "extended"), r.stdout
    assert before <= lsn_int(f["confirmed_flush_lsn"]) <= after, r.stdout
    assert int(f["lag_bytes"]) >= 0, r.stdout
    assert f["engage"].startswith("ready") and "clickhouse=ok redis=ok" in f["engage"], r.stdout
    assert f["dlq_pending"] == "0", r.stdout

    # A parked row and a stopped engage both need attention.
    assert proc.stop() == 0
    # (The walsender releases the slot a moment after engage exits.)
    lib.wait_for(lambda: not db.scalar("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                       (db.name,)), 30, what="the slot to be released")
    lib.pg_exec(db.uri, "INSERT INTO engagement_events(content_id, user_id) VALUES (NULL, 1)")  # not an event
    r = engage_cli(*status_args)
    f = fields(r.stdout)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f["slot_active"] == "no" and f["engage"].startswith("not running"), r.stdout
    proc = engage(*run_args(db, tmp_path), env=stack.engage_env(db.uri), name="engage-2")
    lib.wait_for(lambda: fields(engage_cli("status", "--pg", db.uri, "--slot", db.name, "--admin-addr",
                                           proc.admin_addr).stdout).get("dlq_pending") == "1", 60,
                 what="the bad row to be parked")
    r = engage_cli("status", "--pg", db.uri, "--slot", db.name, "--admin-addr", proc.admin_addr)
    assert r.returncode == 1 and fields(r.stdout)["engage"].startswith("ready"), r.stdout
    assert engage_cli("status", "--pg", db.uri, "--slot", "no_such_slot", "--admin-addr",
                      proc.admin_addr).returncode == 1
    assert proc.stop() == 0


def test_top_prints_the_window(stack, db, clean_sinks, engage, tmp_path):
    wl = Workload(db.uri, seed=82)
    wl.setup_content()
    proc = engage(*run_args(db, tmp_path), env=stack.engage_env(db.uri, sinks=("redis",)))
    wait_streaming(db, proc)
    wl.run(total=3_000, sessions=2)
    rx.wait_applied(stack.redis_url, len(wl.expected), 120, proc)
    c = lib.redis_client(stack.redis_url)
    # (A quiet stream rebuilds the window every 30 s: read it before and after.)
    want_before = c.zrevrange("top:content:10m", 0, 9, withscores=True)
    r = engage_cli("top", "--redis", stack.redis_url)
    want_after = c.zrevrange("top:content:10m", 0, 9, withscores=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("top content, the 10 minutes to "), r.stdout
    rows = [line.split() for line in lines[2:]]
    got = [(int(cid), float(n)) for _, cid, n in rows]
    assert len(rows) == 10, r.stdout
    assert got in ([(int(m), s) for m, s in want_before], [(int(m), s) for m, s in want_after]), r.stdout
    assert [int(rank) for rank, _, _ in rows] == list(range(1, 11))
    assert proc.stop() == 0
    assert engage_cli("top", "--redis", "redis://127.0.0.1:1").returncode == 1
