"""Each sink driven alone against the suite's real servers by its check program
(tests/sinkcheck/*.c): every key, row and request it produces is checked
exactly, including replays and injected faults. The programs exit 0 only when
every check passed."""

import os
import secrets
import subprocess
from pathlib import Path

import lib


def checker(name):
    path = lib.engage_binary().parent / "tests" / "sinkcheck" / name
    assert path.exists(), f"{path} is not built (meson builds it beside engage)"
    return str(path)


def run(args, env=None, timeout=600):
    proc = subprocess.run(args, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def test_clickhouse_sink_check(stack):
    out = run([checker("ch_sink_check"), stack.clickhouse_url])
    assert "FAIL" not in out


def test_redis_sink_check(stack):
    # Databases 5..7 of the suite's Redis, emptied before and by the check itself.
    client = lib.redis_client(stack.redis_url)
    for db in (5, 6, 7):
        client.execute_command("SELECT", db)
        client.flushdb()
    out = run([checker("redis_sink_check"), "--url", f"redis://127.0.0.1:{stack.redis_port}/5",
               "--ids", str(1 << 21)])
    assert "FAIL" not in out


def test_http_sink_check(stack):
    name = "engage_hc_" + secrets.token_hex(4)
    uri = lib.pg_create_database(stack.pg_uri, name, schema=False)
    try:
        out = run([checker("http_sink_check"), str(lib.engage_binary())],
                  env={"ENGAGE_TEST_PG": uri})
        assert "FAIL" not in out
    finally:
        lib.pg_drop_database(stack.pg_uri, name)
