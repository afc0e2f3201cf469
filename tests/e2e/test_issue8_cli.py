"""Issue 8, items 4 and 9: the command line refuses what it cannot do, and hides secrets.

Item 4: an unknown name in --sinks is a usage error (exit 2), and a second `engage run` on a
state directory in use exits at once, without serving /readyz.
Item 9: passwords given on the command line (a URL's user:password@, a conninfo's or a
query's password=) are overwritten in engage's own argv, so `ps` shows *** instead."""

import subprocess
import urllib.request

import pytest

import lib
from test_pipeline import run_args, wait_streaming


def run_cli(*args, env=None, timeout=30):
    return subprocess.run([str(lib.engage_binary()), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("sinks,named", [("redis,clickhous", "clickhous"), ("kafka", "kafka"),
                                         ("redis,", '""'), ("stdout,REDIS", "REDIS")])
def test_item4_unknown_sink_is_a_usage_error(stack, db, sinks, named, tmp_path):
    for cmd in (run_args(db, tmp_path), ["backfill", "--start", "2020-01-01", "--end", "2021-01-01"]):
        r = run_cli(*cmd, "--pg", db.uri, "--redis", stack.redis_url, "--sinks", sinks)
        assert r.returncode == 2, (cmd, r.returncode, r.stdout, r.stderr)
        assert named in r.stderr and "--sinks" in r.stderr, r.stderr
    # nothing was started: no slot was created
    assert db.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                     (db.name,)) == 0


def test_item4_second_run_on_the_same_state_dir_refuses_at_once(stack, db, engage, tmp_path):
    first = engage(*run_args(db, tmp_path), "--pg", db.uri, "--sinks", "stdout", name="first")
    wait_streaming(db, first)
    second = engage("run", "--slot", db.name + "_2", "--state-dir", str(tmp_path / "state"),
                    "--pg", db.uri, "--sinks", "stdout", name="second")
    rc = second.wait(timeout=10)  # "at once": not after waiting on the slot
    assert rc == 1, second.log_tail()
    line = second.wait_for_log(r"level=error msg=\"the state directory is in use[^\n]*", 1).group(0)
    assert f"holder_pid={first.pid}" in line, line
    assert "runbook" in line, line
    with pytest.raises(OSError):  # it never served /readyz
        urllib.request.urlopen(f"http://{second.admin_addr}/readyz", timeout=2)
    # the refused start created no slot of its own, and the first one goes on
    assert db.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                     (db.name + "_2",)) == 0
    assert first.alive()
    assert first.stop() == 0
    # the lock goes with the process: a new run on the directory starts
    third = engage(*run_args(db, tmp_path), "--pg", db.uri, "--sinks", "stdout", name="third")
    third.wait_for_log(r"msg=\"streaming\"", 60)
    assert third.stop() == 0


def ps_args(pid):
    return subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                          text=True, timeout=10).stdout


SECRETS = ("s3cretPW", "qpw9", "hunter2x", "chPass77", "apiTok55")


@pytest.mark.parametrize("form", ["uri", "conninfo"])
def test_item9_ps_shows_no_secret(stack, db, engage, tmp_path, form):
    if form == "uri":
        pg = (f"postgresql://postgres:{SECRETS[0]}@127.0.0.1:{stack.pg_port}/{db.name}"
              f"?password={SECRETS[1]}&sslmode=disable")
    else:
        pg = (f"host=127.0.0.1 port={stack.pg_port} user=postgres password = '{SECRETS[0]} x\\'y' "
              f"dbname={db.name} sslpassword={SECRETS[1]}")
    redis = stack.redis_url.replace("redis://", f"redis://:{SECRETS[2]}@")
    ch = stack.clickhouse_url.replace("http://", f"http://default:{SECRETS[3]}@")
    proc = engage(*run_args(db, tmp_path), f"--pg={pg}", "--redis", redis, "--clickhouse", ch,
                  "--http", f"http://u:{SECRETS[4]}@127.0.0.1:9/api", "--sinks", "stdout")
    # the first log line comes after the scrub (main does it before any command runs)
    proc.wait_for_log(r"msg=\"admin endpoint listening\"", 30)
    shown = ps_args(proc.pid)
    cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read().decode(errors="replace")
    assert "--sinks" in shown and "stdout" in shown, shown  # it is the right process
    for secret in SECRETS:
        assert secret not in shown and secret not in cmdline, (secret, shown)
    assert shown.count("***") >= 5, shown
    assert f"127.0.0.1:{stack.pg_port}" in shown or f"port={stack.pg_port}" in shown, shown
    assert redis.replace(SECRETS[2], "***") in shown, shown
    assert ch.replace(SECRETS[3], "***") in shown, shown
    if form == "uri":
        # the command got the real values: it connected to PostgreSQL with them
        wait_streaming(db, proc)
    logged = [l for l in proc.log_text().splitlines() if not l.startswith("### ")]  # the harness's
    assert not any(s in l for l in logged for s in SECRETS), logged
    proc.stop()
