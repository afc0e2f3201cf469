"""Issue 8, items 1-3: permanent faults stop engage, a failed start leaves no slot, and
/readyz covers the source and every sink.

Item 1: a wrong password (PostgreSQL, ClickHouse, Redis), a role without REPLICATION and a
missing database are refused by the server for good: after a short retry (a restarting
server may refuse briefly; ENG_DENIED_GRACE_US, 20 s) engage exits non-zero with a
runbook line, well within a minute.
Item 2: a start that fails after the slot was created drops it again.
Item 3: /readyz turns 503 within 10 s of PostgreSQL stopping and of the API refusing
connections, and 200 again after; engage_source_connected follows the source, and every
failed HTTP attempt counts in engage_sink_write_failures_total."""

import re
import secrets
import time
import urllib.parse

import pytest

import lib
from test_integrity import insert_events
from test_pipeline import metrics, run_args, slot_row, wait_streaming
from test_redis import readyz
from test_redis_loss import BareRedis

DENIED_DEADLINE = 60  # the bound: exit within a minute


def exits_denied(proc, pattern):
    t0 = time.monotonic()
    rc = proc.wait(DENIED_DEADLINE)
    took = time.monotonic() - t0
    assert rc not in (None, 0), f"engage kept running or exited 0:\n{proc.log_tail()}"
    log = proc.log_text()
    assert re.search(pattern, log), f"no /{pattern}/ in the log:\n{proc.log_tail()}"
    assert "runbook" in log, proc.log_tail()
    return took


def with_user(uri, user, password=None, dbname=None):
    p = urllib.parse.urlsplit(uri)
    cred = user + (f":{password}" if password else "")
    path = f"/{dbname}" if dbname else p.path
    return urllib.parse.urlunsplit((p.scheme, f"{cred}@{p.hostname}:{p.port}", path, p.query, ""))


@pytest.fixture
def pw_role(stack):
    """The role engage_pw (password 'right', LOGIN REPLICATION): scripts/stack.sh's
    pg_hba.conf asks it for a password on loopback."""
    lib.pg_exec(stack.pg_uri, "DROP ROLE IF EXISTS engage_pw")
    lib.pg_exec(stack.pg_uri, "CREATE ROLE engage_pw LOGIN REPLICATION SUPERUSER PASSWORD 'right'")
    yield "engage_pw"
    lib.pg_exec(stack.pg_uri, "DROP ROLE IF EXISTS engage_pw")


def test_item1_wrong_postgres_password_stops(stack, db, clean_sinks, engage, tmp_path, pw_role):
    env = stack.engage_env(with_user(db.uri, pw_role, "wrong"), sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    took = exits_denied(proc, r"password authentication failed")
    assert not slot_row(db), "a slot was created"
    print(f"wrong postgres password: exit after {took:.1f} s")


def test_item1_role_without_replication_stops(stack, db, clean_sinks, engage, tmp_path):
    role = "engage_norepl_" + secrets.token_hex(3)
    lib.pg_exec(stack.pg_uri, f"CREATE ROLE {role} LOGIN")
    try:
        env = stack.engage_env(with_user(db.uri, role), sinks=("clickhouse",))
        proc = engage(*run_args(db, tmp_path), env=env)
        exits_denied(proc, r"superuser or replication role.*ALTER ROLE name REPLICATION")
    finally:
        proc.stop()
        lib.pg_exec(stack.pg_uri, f"DROP ROLE {role}")


def test_item1_missing_database_stops(stack, db, clean_sinks, engage, tmp_path):
    env = stack.engage_env(with_user(db.uri, "postgres", dbname="no_such_db_" + secrets.token_hex(3)),
                           sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    exits_denied(proc, r"database \\?\"no_such_db_\w+\\?\" does not exist")


def test_item1_wrong_clickhouse_password_stops(stack, db, clean_sinks, engage, tmp_path):
    p = urllib.parse.urlsplit(stack.clickhouse_url)
    env = stack.engage_env(db.uri, sinks=())
    env["ENGAGE_CLICKHOUSE"] = f"http://default:wrong@{p.hostname}:{p.port}"
    proc = engage(*run_args(db, tmp_path), env=env)
    exits_denied(proc, r"(?i)password|authentication")


def test_item1_wrong_redis_password_stops(stack, db, engage, tmp_path):
    rdir = tmp_path / "redis"
    rdir.mkdir()
    redis = BareRedis(rdir, password="right")
    redis.start()
    try:
        env = {"ENGAGE_PG": db.uri, "ENGAGE_REDIS": f"redis://:wrong@127.0.0.1:{redis.port}"}
        proc = engage(*run_args(db, tmp_path), env=env)
        exits_denied(proc, r"WRONGPASS")
    finally:
        redis.close()


def test_item1_refused_connections_keep_retrying(stack, db, clean_sinks, engage, tmp_path):
    """Transient faults are not permanent ones: with ClickHouse's port refusing connections
    engage keeps retrying past the denied grace, and catches up when it is back."""
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    env["ENGAGE_CLICKHOUSE"] = f"http://127.0.0.1:{lib.free_port()}"
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    insert_events(db, 1)
    lib.wait_for(lambda: proc.log_text().count("sink write failed, retrying") >= 3, 30,
                 what="retries against the refusing port")
    deadline = time.monotonic() + 25  # past ENG_DENIED_GRACE_US
    lib.wait_for(lambda: time.monotonic() > deadline or not proc.alive(), 30, what="the grace to pass")
    assert proc.alive(), f"engage stopped on a refused connection:\n{proc.log_tail()}"


def test_item2_failed_start_leaves_no_slot(stack, db, clean_sinks, engage, tmp_path):
    """The state file cannot be written (its temporary file's name is taken by a
    directory): each start fails after creating the slot, and drops it again."""
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    state = tmp_path / "state"
    (state / f"{db.name}.state.tmp").mkdir(parents=True)
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    for i in range(3):
        proc = engage(*run_args(db, tmp_path), env=env, name=f"engage-{i}")
        rc = proc.wait(60)
        assert rc not in (None, 0), proc.log_tail()
        assert "dropped the replication slot this start created" in proc.log_text(), proc.log_tail()
        assert not slot_row(db), f"start {i} left its slot behind"


def test_item3_readyz_follows_postgres(stack, db, clean_sinks, engage, tmp_path):
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    proc = engage(*run_args(db, tmp_path), env=env)
    wait_streaming(db, proc)
    lib.wait_for(lambda: readyz(proc)[0] == 200, 30, what="/readyz 200 while streaming")
    assert metrics(proc)["engage_source_connected"] == 1
    stack.stop("pg")
    try:
        t0 = time.monotonic()
        lib.wait_for(lambda: readyz(proc)[0] == 503, 10, what="/readyz 503 after PostgreSQL stopped")
        print(f"/readyz 503 {time.monotonic() - t0:.2f} s after PostgreSQL stopped")
        status, body = readyz(proc)
        assert "source=" in body and "source=ok" not in body, body
        assert metrics(proc)["engage_source_connected"] == 0
    finally:
        stack.start("pg")
    lib.wait_for(lambda: readyz(proc)[0] == 200, 60, what="/readyz 200 once PostgreSQL is back")
    assert proc.stop() == 0, proc.log_tail()


def start_api(engage, tmp_path, port, name):
    """`engage mock-api` on a fixed port (so that it can come back on the same one)."""
    port_file = tmp_path / f"{name}.ports"
    api = engage("mock-api", "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file), name=name)
    lib.wait_for(port_file.exists, 20, what="the mock API to listen")
    return api


def test_item3_readyz_follows_the_api(stack, db, clean_sinks, engage, tmp_path):
    """The API's port refuses connections: within 10 s /readyz says http is failing and
    every failed attempt is counted as a sink failure; once the API is back, 200."""
    port = lib.free_port()
    api = start_api(engage, tmp_path, port, "mock-api")
    env = stack.engage_env(db.uri, sinks=("clickhouse",))
    env["ENGAGE_HTTP"] = f"http://127.0.0.1:{port}"
    proc = engage(*run_args(db, tmp_path, "--sinks", "clickhouse,http"), env=env)
    wait_streaming(db, proc)
    insert_events(db, 1)
    lib.wait_for(lambda: readyz(proc)[0] == 200, 30, what="/readyz 200 with the API up")

    assert api.stop() == 0
    insert_events(db, 1)
    t0 = time.monotonic()
    lib.wait_for(lambda: readyz(proc)[0] == 503, 10, what="/readyz 503 with the API refusing")
    print(f"/readyz 503 {time.monotonic() - t0:.2f} s after the API went away")
    status, body = readyz(proc)
    assert "http=http: " in body, body
    lib.wait_for(lambda: metrics(proc)['engage_sink_write_failures_total{sink="http"}'] >= 2, 10,
                 what="each failed attempt counted as a sink failure")

    start_api(engage, tmp_path, port, "mock-api-2")
    lib.wait_for(lambda: readyz(proc)[0] == 200, 60, what="/readyz 200 once the API is back")
    assert proc.stop() == 0, proc.log_tail()
