"""Helpers for engage's end-to-end tests: the stack, the three servers'
clients, the engage binary as a process, and waiting with a deadline.

Ownership: a Stack started here (Stack.up) is stopped by whoever started it;
an EngageProcess owns its child process and log file until stop()/kill().
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg2
import psycopg2.extensions
import redis as _redis

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_SH = REPO_ROOT / "scripts" / "stack.sh"
SCHEMA_SQL = REPO_ROOT / "scripts" / "schema.sql"

Redis = _redis.Redis


# ------------------------------------------------------------------ waiting


class WaitTimeout(AssertionError):
    """wait_for's deadline passed; an AssertionError so pytest shows it as
    a test failure with its message."""


class GiveUp(Exception):
    """Raised by a wait_for predicate that knows the wait is hopeless (the
    process it waits on has exited): wait_for lets it through at once."""


def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """Call predicate() until it returns a truthy value, and return that value.

    An exception from predicate counts as "not yet" (the table may not exist
    yet, the server may be restarting); the last one is in the message if the
    deadline passes. GiveUp and WaitTimeout pass through at once. Raises
    WaitTimeout after `timeout` seconds.
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this loop
    deadline = time.monotonic() + timeout
    last_value, last_exc = None, None
    while True:
        try:
            last_value = predicate()
            last_exc = None
            if last_value:
                return last_value
        except (GiveUp, WaitTimeout):
            raise
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout}s waiting for {what}; last value: {last_value!r}"
            if last_exc is not None:
                msg += f"; last error: {type(last_exc).__name__}: {last_exc}"
            raise WaitTimeout(msg)
        time.sleep(interval)


def free_port():
    """A TCP port on 127.0.0.1 that is free right now (another process may
    still take it before you bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- stack


def read_env_file(path):
    """Parse a file of `export NAME=VALUE` lines (as stack.sh writes them)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        name, _, value = line[len("export "):].partition("=")
        parts = shlex.split(value)
        env[name] = parts[0] if parts else ""
    return env


class Stack:
    """PostgreSQL, Redis and ClickHouse started by scripts/stack.sh in `dir`.

    Attributes: dir, env (DIR/env as a dict), pg_uri (database `engage`),
    clickhouse_url, redis_url, pg_port, redis_port, ch_http_port, ch_tcp_port,
    owned (True when this object started the stack and down() stops it).
    """

    SERVICES = ("pg", "redis", "clickhouse")

    def __init__(self, dir, owned=False):
        self.dir = Path(dir)
        self.owned = owned
        self.env = read_env_file(self.dir / "env")
        self.pg_uri = self.env["ENGAGE_PG"]
        self.clickhouse_url = self.env["ENGAGE_CLICKHOUSE"]
        self.redis_url = self.env["ENGAGE_REDIS"]
        self.pg_port = int(self.env["PGPORT"])
        self.redis_port = int(self.env["REDIS_PORT"])
        self.ch_http_port = int(self.env["CH_HTTP_PORT"])
        self.ch_tcp_port = int(self.env["CH_TCP_PORT"])

    @classmethod
    def up(cls, dir, timeout=180):
        """Run `stack.sh up dir` and return the Stack (owned)."""
        _run_stack("up", dir, timeout=timeout)
        return cls(dir, owned=True)

    def down(self, timeout=180):
        """Run `stack.sh down`; safe to call twice."""
        _run_stack("down", self.dir, timeout=timeout)

    def stop(self, service, timeout=120):
        """Stop one service ("pg", "redis" or "clickhouse"), cleanly."""
        _run_stack("stop", self.dir, service, timeout=timeout)

    def start(self, service, timeout=120):
        """Start one service again on the port it had."""
        _run_stack("start", self.dir, service, timeout=timeout)

    def restart(self, service, timeout=120):
        _run_stack("restart", self.dir, service, timeout=timeout)

    def pid(self, service):
        """The pid of a running service (e.g. to kill -9 it), or None."""
        path = {
            "pg": self.dir / "pg" / "data" / "postmaster.pid",
            "redis": self.dir / "redis" / "redis.pid",
            "clickhouse": self.dir / "ch" / "ch.pid",
        }[service]
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pg_uri_for(self, dbname):
        """The libpq URI of another database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{dbname}"

    def engage_env(self, pg_uri=None, sinks=("clickhouse", "redis")):
        """ENGAGE_* variables pointing engage at this stack (and at pg_uri,
        default the `engage` database) for the given sinks."""
        env = {"ENGAGE_PG": pg_uri or self.pg_uri}
        if "clickhouse" in sinks:
            env["ENGAGE_CLICKHOUSE"] = self.clickhouse_url
        if "redis" in sinks:
            env["ENGAGE_REDIS"] = self.redis_url
        return env

    def check(self):
        """Raise unless all three servers answer."""
        pg_query(self.pg_uri, "SELECT 1")
        ch_query(self.clickhouse_url, "SELECT 1")
        redis_client(self.redis_url).ping()


def _run_stack(cmd, dir, *args, timeout):
    proc = subprocess.run(
        ["bash", str(STACK_SH), cmd, str(dir), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stack.sh {cmd} {dir} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}")
    return proc.stdout


# -------------------------------------------------------------- PostgreSQL


def pg_connect(uri, **kwargs):
    """A psycopg2 connection in autocommit mode; the caller closes it."""
    conn = psycopg2.connect(uri, connect_timeout=10, **kwargs)
    conn.autocommit = True
    return conn


def pg_exec(uri, sql, params=None):
    """Run one statement (or several without params) in autocommit; return
    the row count."""
    conn = pg_connect(uri)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount
    finally:
        conn.close()


def pg_query(uri, sql, params=None):
    """Run a query; return its rows as a list of tuples."""
    conn = pg_connect(uri)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def pg_scalar(uri, sql, params=None):
    rows = pg_query(uri, sql, params)
    return rows[0][0] if rows else None


def pg_create_database(server_uri, dbname, schema=True):
    """CREATE DATABASE dbname (with scripts/schema.sql applied); return its URI."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", dbname):
        raise ValueError(f"bad database name {dbname!r}")
    pg_exec(server_uri, f"CREATE DATABASE {dbname}")
    uri = _with_dbname(server_uri, dbname)
    if schema:
        pg_exec(uri, SCHEMA_SQL.read_text())
    return uri


def pg_drop_database(server_uri, dbname, timeout=30):
    """Drop dbname: end its sessions and walsenders, drop its replication
    slots (a database with slots cannot be dropped), then the database."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", dbname):
        raise ValueError(f"bad database name {dbname!r}")

    def slots_gone():
        pg_query(
            server_uri,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        pg_query(
            server_uri,
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE database = %s AND active_pid IS NOT NULL",
            (dbname,),
        )
        pg_query(
            server_uri,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active",
            (dbname,),
        )
        return pg_scalar(server_uri, "SELECT count(*) FROM pg_replication_slots WHERE database = %s", (dbname,)) == 0

    wait_for(slots_gone, timeout, interval=0.1, what=f"replication slots of {dbname} to be dropped")
    wait_for(
        lambda: pg_exec(server_uri, f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)") is not None,
        timeout,
        interval=0.1,
        what=f"DROP DATABASE {dbname}",
    )


def _with_dbname(uri, dbname):
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))


# -------------------------------------------------------------- ClickHouse


class ClickHouseError(RuntimeError):
    pass


def _ch_request(url, sql, timeout):
    parts = urllib.parse.urlsplit(url)
    query = {}
    # user:pass@ in the URL becomes the user/password parameters that every
    # ClickHouse version, 18.16 included, understands.
    if parts.username:
        query["user"] = urllib.parse.unquote(parts.username)
    if parts.password:
        query["password"] = urllib.parse.unquote(parts.password)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    endpoint = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", urllib.parse.urlencode(query), ""))
    req = urllib.request.Request(endpoint, data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise ClickHouseError(f"ClickHouse {exc.code}: {exc.read().decode(errors='replace').strip()}") from None


_TSV_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\\\": "\\", "\\0": "\0", "\\'": "'", "\\b": "\b", "\\f": "\f", "\\r": "\r"}


def _tsv_field(field):
    if field == "\\N":
        return None
    return re.sub(r"\\.", lambda m: _TSV_ESCAPES.get(m.group(0), m.group(0)[1]), field)


def ch_query(url, sql, timeout=30):
    """Run a query over ClickHouse HTTP; return rows as lists of strings
    (TabSeparated, unescaped; NULL as None). Do not put FORMAT in sql."""
    text = _ch_request(url, sql + "\nFORMAT TabSeparated", timeout)
    return [[_tsv_field(f) for f in line.split("\t")] for line in text.splitlines()]


def ch_query_json(url, sql, timeout=30):
    """Run a query; return rows as dicts (JSONEachRow). Note: 18.16 quotes
    64-bit integers as strings by default."""
    text = _ch_request(url, sql + "\nFORMAT JSONEachRow", timeout)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ch_exec(url, sql, timeout=60):
    """Run a statement that returns nothing (DDL, INSERT ... VALUES)."""
    _ch_request(url, sql, timeout)


def ch_reset(url):
    """Drop the table engage writes, so the next test starts empty."""
    ch_exec(url, "DROP TABLE IF EXISTS engagement.events_enriched")


# ------------------------------------------------------------------- Redis


def redis_client(url):
    """A redis-py client (str replies) for a redis:// URL."""
    return Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5)


def redis_reset(url):
    redis_client(url).flushall()


# ------------------------------------------------------------------ engage


def engage_binary():
    """Path of the engage binary: $ENGAGE_BIN, default build/engage."""
    path = Path(os.environ.get("ENGAGE_BIN", REPO_ROOT / "build" / "engage"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


class EngageProcess:
    """The engage binary run as a child process, its stdout and stderr in a
    log file.

    env: variables set on top of the test's environment, from which every
    ENGAGE_* variable is first removed (a developer's sourced DIR/env must not
    leak into a test). Unless env or args name one, ENGAGE_ADMIN_ADDR gets a
    free port so that concurrent processes do not collide on 9187; it is in
    self.admin_addr.
    """

    def __init__(self, args, env=None, log_dir=".", name="engage", binary=None):
        self.args = [str(a) for a in args]
        self.name = name
        self.binary = Path(binary) if binary else engage_binary()
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc = None
        self._log = None
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
        child_env.update({k: str(v) for k, v in (env or {}).items()})
        if "ENGAGE_ADMIN_ADDR" not in child_env and "--admin-addr" not in self.args:
            child_env["ENGAGE_ADMIN_ADDR"] = f"127.0.0.1:{free_port()}"
        self.admin_addr = child_env.get("ENGAGE_ADMIN_ADDR")
        self.env = child_env

    def start(self):
        if not self.binary.exists():
            raise FileNotFoundError(f"engage binary not found at {self.binary} (build it or set ENGAGE_BIN)")
        self._log = open(self.log_path, "ab")
        self._log.write(f"### {self.binary} {shlex.join(self.args)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [str(self.binary), *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Send sig (default SIGKILL) to the process if it still runs."""
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """Wait for exit; return the exit code (negative: killed by a signal).
        Raises WaitTimeout, with the log's tail, if it still runs after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                f"{self.name} (pid {self.pid}) still running after {timeout}s\n{self.log_tail()}"
            ) from None

    def stop(self, timeout=15):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._close_log()
        return self.proc.returncode

    def _close_log(self):
        if self._log is not None and not self._log.closed:
            self._log.close()

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=60):
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def wait_for_log(self, pattern, timeout, what=None):
        """Wait until the log matches the regex pattern; return the match."""
        rx = re.compile(pattern)

        def found():
            if not self.alive() and not rx.search(self.log_text()):
                raise GiveUp(f"{self.name} exited ({self.returncode}) before logging /{pattern}/")
            return rx.search(self.log_text())

        try:
            return wait_for(found, timeout, what=what or f"{self.name} to log /{pattern}/")
        except (GiveUp, WaitTimeout) as exc:
            raise WaitTimeout(f"{exc}\n{self.log_tail()}") from None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
