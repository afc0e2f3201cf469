"""The operator's side of engage (issue 12) through the real binary and servers: the command
list with no arguments, `top` quitting on q in a terminal, `status --json`, `dlq discard`,
the backfill progress line in a terminal and its summary everywhere, and /metrics as
Prometheus's own linter and the alerts see it (`promtool check metrics`, the lag in seconds
at start, after an idle stream, and while a sink holds the checkpoint)."""

import json
import os
import pty
import re
import select
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import lib
from test_http import Mock
from test_pipeline import metrics, run_args, wait_streaming

REPO = Path(__file__).resolve().parents[2]


def cli(*args, env=None, timeout=60):
    child = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    child.update(env or {})
    return subprocess.run([str(lib.engage_binary()), *args], capture_output=True, text=True,
                          timeout=timeout, env=child)


class Pty:
    """engage run in a pseudo-terminal: what it wrote, keys sent to it, its exit."""

    def __init__(self, *args, env=None, cwd=None):
        child = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
        child.update(env or {})
        child["TERM"] = "xterm"
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: nothing of the test's state survives the exec
            if cwd:
                os.chdir(cwd)
            os.execve(str(lib.engage_binary()), ["engage", *args], child)
        self.out = b""
        self.status = None

    def read(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    return
                if not data:
                    return
                self.out += data

    def text(self):
        return self.out.decode(errors="replace")

    def wait_text(self, pattern, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if re.search(pattern, self.text()):
                return
            if self.exited():
                break
            self.read(0.1)
        raise AssertionError(f"no {pattern!r} on the terminal:\n{self.text()[-2000:]}")

    def send(self, data):
        os.write(self.fd, data)

    def exited(self):
        if self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(st)
        return self.status is not None

    def wait(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read(0.05)
            if self.exited():
                self.read(0.2)
                return self.status
        raise AssertionError(f"still running after {timeout}s:\n{self.text()[-2000:]}")

    def close(self):
        if not self.exited():
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


# ------------------------------------------------------------------------------ commands


def test_no_arguments_lists_the_commands():
    r = cli()
    assert r.returncode == 2
    assert r.stdout == ""
    assert "commands:" in r.stderr and "is required" not in r.stderr, r.stderr
    for cmd in ("run", "backfill", "dlq", "status", "top", "mock-api"):
        assert re.search(rf"^  {cmd} ", r.stderr, re.M), f"{cmd} not listed:\n{r.stderr}"
    # options without a command still mean run
    r = cli("--slot", "x")
    assert r.returncode == 2 and "--pg (or ENGAGE_PG) is required" in r.stderr, r.stderr


def test_top_quits_on_q_in_a_terminal(stack, clean_sinks):
    t = Pty("top", "--redis", stack.redis_url)
    try:
        t.wait_text(r"q or Ctrl-C quits", 15)
        t.read(1.5)
        assert not t.exited(), "top left by itself:\n" + t.text()
        assert t.text().count("top content") >= 2, "top did not refresh:\n" + t.text()
        t.send(b"x")  # another key does nothing
        t.read(0.5)
        assert not t.exited()
        sent = time.monotonic()
        t.send(b"q")
        assert t.wait(5) == 0
        assert time.monotonic() - sent < 1.5, "q took more than a refresh to quit"
    finally:
        t.close()


def test_top_without_a_terminal_prints_once(stack, clean_sinks):
    r = cli("top", "--redis", stack.redis_url, timeout=20)
    assert r.returncode == 0
    assert "q or Ctrl-C" not in r.stdout and r.stdout.count("top content") == 1, r.stdout


# ---------------------------------------------------------------------- status and dlq


def test_status_json_and_dlq_discard(stack, db, clean_sinks, engage, tmp_path):
    proc = engage(*run_args(db, tmp_path), env=stack.engage_env(db.uri))
    wait_streaming(db, proc)
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "VALUES (1, 1, 'play', 1000, 'web')")
    status = ("status", "--pg", db.uri, "--slot", db.name, "--admin-addr", proc.admin_addr, "--json")

    def status_json(expect_ok):
        r = cli(*status)
        doc = json.loads(r.stdout)
        assert r.returncode == (0 if expect_ok else 1), r.stdout + r.stderr
        assert doc["ok"] is expect_ok
        return doc

    lib.wait_for(lambda: cli(*status).returncode == 0, 60, what="status to say all is well")
    doc = status_json(True)
    assert doc["slot"]["name"] == db.name and doc["slot"]["state"] == "ok"
    assert doc["slot"]["active"] is True and isinstance(doc["slot"]["lag_bytes"], int)
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", doc["slot"]["confirmed_flush_lsn"])
    assert doc["engage"]["state"] == "ready" and "redis=ok" in doc["engage"]["detail"]
    assert doc["dlq"] == {"pending": 0, "error": None}

    # two rows that are not events: parked, status says so, text and JSON alike
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "VALUES (NULL, 2, 'play', 1, 'web'), (NULL, 3, 'play', 1, 'web')")
    lib.wait_for(lambda: cli(*status).returncode == 1, 60, what="status to see the dead letters")
    doc = status_json(False)
    assert doc["dlq"]["pending"] == 2
    text = cli(*status[:-1])
    assert text.returncode == 1 and "dlq_pending 2" in text.stdout

    rows = [json.loads(l) for l in cli("dlq", "list", "--pg", db.uri, "--json").stdout.splitlines()]
    assert [r["origin"] for r in rows] == ["source", "source"]
    first, second = rows[0]["id"], rows[1]["id"]

    r = cli("dlq", "discard", "--pg", db.uri)
    assert r.returncode == 2 and "--ids, --origin or both" in r.stderr
    r = cli("dlq", "discard", "--pg", db.uri, "--ids", f"{first},999999")
    assert r.returncode == 1 and r.stdout == "discarded 1 row\n", r.stdout + r.stderr
    assert "999999 is not a pending row" in r.stderr
    assert status_json(False)["dlq"]["pending"] == 1
    r = cli("dlq", "discard", "--pg", db.uri, "--origin", "http")
    assert r.returncode == 0 and r.stdout == "discarded 0 rows\n"
    r = cli("dlq", "discard", "--pg", db.uri, "--origin", "source")
    assert r.returncode == 0 and r.stdout == "discarded 1 row\n", r.stdout + r.stderr
    doc = status_json(True)
    assert doc["dlq"]["pending"] == 0

    listed = cli("dlq", "list", "--pg", db.uri, "--json").stdout
    assert listed == ""
    rows = [json.loads(l) for l in cli("dlq", "list", "--pg", db.uri, "--all", "--json").stdout.splitlines()]
    assert [(r["id"], r["discarded"], r["replayed"]) for r in rows] == [(first, True, False), (second, True, False)]
    assert " discarded " in cli("dlq", "list", "--pg", db.uri, "--all").stdout
    # a discarded row cannot be discarded twice
    r = cli("dlq", "discard", "--pg", db.uri, "--ids", str(second))
    assert r.returncode == 1 and r.stdout == "discarded 0 rows\n"


# ------------------------------------------------------------------------------- backfill


def test_backfill_progress_in_a_terminal_and_summary_everywhere(stack, db, clean_sinks, tmp_path):
    n = 30_000
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
            "SELECT 1 + g %% 3, g, 'play', timestamp '2026-01-01' + g * interval '1 second', 1000, 'web' "
            "FROM generate_series(1, %s) g", (n,))
    env = stack.engage_env(db.uri, sinks=("redis",))
    args = ("backfill", "--start", "2025-01-01", "--end", "2027-01-01", "--batch-events", "1000",
            "--log-level", "warn")
    t = Pty(*args, "--state-dir", str(tmp_path / "s1"), env=env)
    try:
        assert t.wait(120) == 0, t.text()
    finally:
        t.close()
    lines = [l.strip() for l in re.split(r"[\r\n]+", t.text()) if l.strip()]
    progress = [l for l in lines if l.startswith("backfill: ")]
    pat = re.compile(r"backfill: +(\d+\.\d)%  (\d+) of (\d+) rows  (\d+)/s  ETA (\d+:\d\d(:\d\d)?|--:--)$")
    assert progress, t.text()
    for l in progress:
        assert pat.match(l), l
    last = pat.match(progress[-1])
    assert last.group(1) == "100.0" and int(last.group(2)) == n and int(last.group(3)) == n, progress[-1]
    assert last.group(5) == "0:00"
    done = [l for l in lines if l.startswith("backfill done: ")]
    assert len(done) == 1 and done[0].startswith(f"backfill done: {n} events in "), lines[-3:]
    assert "to redis" in done[0]

    # not a terminal: no progress line, the same summary on stdout
    r = cli(*args, "--state-dir", str(tmp_path / "s2"), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "backfill: " not in r.stderr and "\r" not in r.stderr
    assert r.stdout.startswith(f"backfill done: {n} events in ") and r.stdout.count("\n") == 1, r.stdout


# -------------------------------------------------------------------------------- metrics


def scrape(proc):
    with urllib.request.urlopen(f"http://{proc.admin_addr}/metrics", timeout=5) as r:
        return r.read().decode()


def test_metrics_pass_promtool_and_the_lag_is_right(stack, db, clean_sinks, engage, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (scripts/deps.sh installs it)"
    mock = Mock(engage, tmp_path)
    env = stack.engage_env(db.uri)
    env["ENGAGE_HTTP"] = mock.url
    proc = engage(*run_args(db, tmp_path, "--http-batch", "10", "--http-retry-budget-ms", "600000",
                            "--http-max-attempts", "1000"),
                  env=env)
    wait_streaming(db, proc)

    # before any transaction: 0, not the age of the epoch
    m = metrics(proc)
    assert m["engage_replication_lag_seconds"] == 0, m["engage_replication_lag_seconds"]
    assert "engage_replication_lag_milliseconds" not in m
    for sink in ("clickhouse", "redis", "http"):
        assert m[f'engage_sink_ready{{sink="{sink}"}}'] == 1

    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "SELECT 1, g, 'play', 1000, 'web' FROM generate_series(1, 500) g")
    lib.wait_for(lambda: all(metrics(proc).get(f'engage_sink_acked_events_total{{sink="{s}"}}') == 500
                             for s in ("clickhouse", "redis", "http")), 60, what="every sink to ack")
    lib.wait_for(lambda: metrics(proc)["engage_replication_lag_seconds"] == 0, 10,
                 what="the lag to be 0 once caught up")

    text = scrape(proc)
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr
    # every family engage exported here is on the dashboard
    dashboard = (REPO / "deploy" / "grafana" / "engage.json").read_text()
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert families and not [f for f in families if f not in dashboard]

    # a sink that holds the checkpoint makes the lag grow; it falls to 0 when it lets go
    mock.control(down=True)
    db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
            "VALUES (1, 9, 'play', 1000, 'web')")
    lib.wait_for(lambda: metrics(proc)["engage_replication_lag_seconds"] >= 3, 30,
                 what="the lag to grow while the API is down")
    lag = metrics(proc)["engage_replication_lag_seconds"]
    assert 3 <= lag < 60, lag
    mock.control(down=False)
    lib.wait_for(lambda: metrics(proc)["engage_replication_lag_seconds"] == 0, 60,
                 what="the lag to return to 0")

    # idle and caught up past the 30 s heartbeat: still 0 (it read 30 s before)
    time.sleep(35)
    m = metrics(proc)
    assert m["engage_replication_lag_seconds"] == 0, m["engage_replication_lag_seconds"]
    assert m["engage_replication_lag_bytes"] < 1_000_000
