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
            "kafka": self.dir / "kafka" / "kafka.pid",
            "connect": self.dir / "connect" / "connect.pid",
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


# ------------------------------------------------------------------- Kafka
#
# The broker and Kafka Connect that scripts/stack.sh starts with
# `start DIR kafka` / `start DIR connect` (conftest's kafka and connect
# fixtures). Produce and consume go through kcat; topics are created with
# Kafka's own TopicCommand (a JVM start, about 1 s); connectors through
# Connect's REST API.

class KafkaStack:
    """The Kafka broker (and Kafka Connect, once started) of a Stack's dir.

    Attributes: dir, bootstrap ("127.0.0.1:PORT"), connect_url
    ("http://127.0.0.1:PORT", None until Connect runs). stop/start/restart
    ("kafka" or "connect") keep the port: bootstrap stays valid.
    """

    def __init__(self, dir):
        self.dir = Path(dir)
        self.bootstrap = None
        self.connect_url = None
        self.reload()

    def reload(self):
        env = read_env_file(self.dir / "env")
        self.bootstrap = env.get("KAFKA_BOOTSTRAP")
        self.connect_url = env.get("CONNECT_URL")
        return self

    def running(self, service="kafka"):
        return subprocess.run(
            ["bash", str(STACK_SH), "status", str(self.dir)], capture_output=True, text=True, timeout=60
        ).stdout.count(f"{service} running") == 1

    def start(self, service="kafka", timeout=300):
        _run_stack("start", self.dir, service, timeout=timeout)
        return self.reload()

    def stop(self, service="kafka", timeout=180):
        _run_stack("stop", self.dir, service, timeout=timeout)

    def restart(self, service="kafka", timeout=300):
        _run_stack("restart", self.dir, service, timeout=timeout)
        return self.reload()

    def pid(self, service="kafka"):
        try:
            return int((self.dir / service / f"{service}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def file_tail(path, lines=40):
    """The last lines of a text file ("" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            tail = f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail)


KAFKA_INSTALL_SH = REPO_ROOT / "scripts" / "kafka" / "install.sh"
KAFKA_TOOLS_LOG4J = REPO_ROOT / "scripts" / "kafka" / "log4j2-tools.properties"
DEBEZIUM_CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"

_kafka_home = None


def kafka_home():
    """The directory scripts/kafka/install.sh laid out (lib/, plugins/);
    installs it first if missing."""
    global _kafka_home
    if _kafka_home is None:
        out = subprocess.run(
            ["bash", str(KAFKA_INSTALL_SH), "--home"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, timeout=900, check=True,
        )
        _kafka_home = Path(out.stdout.strip())
    return _kafka_home


def kafka_tool(main_class, *args, timeout=120):
    """Run a Kafka command-line class (e.g. org.apache.kafka.tools.TopicCommand)
    on the stack's classpath; return its stdout. Raises RuntimeError with its
    output on a non-zero exit."""
    cmd = [
        "java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
        f"-Dlog4j2.configurationFile={KAFKA_TOOLS_LOG4J}",
        "-cp", str(kafka_home() / "lib" / "*"), main_class, *[str(a) for a in args],
    ]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{main_class} {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def create_topic(bootstrap, name, partitions=1, config=None, timeout=120):
    """Create a topic (replication factor 1) and wait until its metadata
    shows every partition. config: topic settings, e.g. {"retention.ms": 1000}."""
    args = ["--bootstrap-server", bootstrap, "--create", "--topic", name,
            "--partitions", partitions, "--replication-factor", 1]
    for k, v in (config or {}).items():
        args += ["--config", f"{k}={v}"]
    kafka_tool("org.apache.kafka.tools.TopicCommand", *args, timeout=timeout)
    wait_for(lambda: topic_partitions(bootstrap, name) == partitions, 30, interval=0.1,
             what=f"topic {name} with {partitions} partitions")


def delete_topic(bootstrap, name, timeout=120):
    kafka_tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap,
               "--delete", "--topic", name, timeout=timeout)


def kafka_metadata(bootstrap, topic=None, timeout=10):
    """The broker's metadata as kcat -L -J prints it (a dict); topic limits it
    to one topic."""
    cmd = ["kcat", "-L", "-J", "-b", bootstrap, "-m", str(timeout)]
    if topic:
        cmd += ["-t", topic]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 10)
    if proc.returncode != 0:
        raise RuntimeError(f"kcat -L -b {bootstrap} failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def topic_partitions(bootstrap, topic):
    """How many partitions topic has (0 if it does not exist)."""
    for t in kafka_metadata(bootstrap, topic).get("topics", []):
        if t.get("topic") == topic and not t.get("error"):
            return len(t.get("partitions", []))
    return 0


def produce(bootstrap, topic, value, key=None, headers=(), partition=None, timeout=30):
    """Produce one message with kcat (value and key: str, bytes or None;
    value None is a tombstone; headers: (name, value) pairs). partition
    None: the partitioner's choice (kcat's is librdkafka's
    consistent_random, not Java's murmur2)."""
    import tempfile

    def text(x):
        return x.decode() if isinstance(x, bytes) else x

    cmd = ["kcat", "-P", "-b", bootstrap, "-t", topic]
    if partition is not None:
        cmd += ["-p", str(partition)]
    for k, v in headers:
        cmd += ["-H", f"{k}={v}"]
    stdin, path = b"", None
    if value is None:
        # "KEY<US>" on stdin; -Z makes the empty value (and an empty key) NULL.
        cmd += ["-Z", "-K", "\x1f"]
        stdin = ((text(key) or "") + "\x1f\n").encode()
    else:
        if key is not None:
            cmd += ["-k", text(key)]
        fd, path = tempfile.mkstemp(prefix="engage-kcat-")
        with os.fdopen(fd, "wb") as f:
            f.write(value.encode() if isinstance(value, str) else value)
        cmd.append(path)  # a file is sent whole as one message
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    finally:
        if path:
            os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"kcat -P -t {topic} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")


def consume_all(bootstrap, topic, timeout=60):
    """Every message now in topic, from the beginning of each partition to
    its end, as dicts {partition, offset, key, value, headers, timestamp}:
    key and value are the message's bytes decoded as UTF-8 (None for NULL),
    headers a list of [name, value] pairs in order. Sorted by (partition,
    offset). A topic that does not exist gives []."""
    if topic_partitions(bootstrap, topic) == 0:
        return []
    proc = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kcat -C -t {topic} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    out = []
    # split on \n only: str.splitlines() also splits at U+2028, which kcat writes raw
    for line in proc.stdout.decode().split("\n"):
        if not line.strip():
            continue
        m = json.loads(line)
        flat = m.get("headers") or []
        out.append({
            "partition": m["partition"],
            "offset": m["offset"],
            "key": m.get("key"),
            "value": m.get("payload"),
            "headers": [[flat[i], flat[i + 1]] for i in range(0, len(flat), 2)],
            "timestamp": m.get("ts"),
        })
    out.sort(key=lambda r: (r["partition"], r["offset"]))
    return out


def wait_for_messages(bootstrap, topic, count, timeout=60, what=None):
    """Wait until topic holds at least count messages; return them all."""
    return wait_for(
        lambda: (lambda msgs: msgs if len(msgs) >= count else None)(consume_all(bootstrap, topic)),
        timeout, interval=0.25, what=what or f"{count} messages in {topic}",
    )


# --------------------------------------------------------- Kafka Connect


class ConnectError(RuntimeError):
    pass


def _connect_request(connect_url, method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(connect_url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
            return json.loads(text) if text.strip() else None
    except urllib.error.HTTPError as exc:
        raise ConnectError(f"Connect {method} {path}: {exc.code} {exc.read().decode(errors='replace').strip()}") from None


def connector_create(connect_url, name, config, timeout=30):
    """POST /connectors; return Connect's answer (the connector's info)."""
    return _connect_request(connect_url, "POST", "/connectors", {"name": name, "config": config}, timeout)


def connector_delete(connect_url, name, timeout=30):
    """DELETE /connectors/NAME; a connector that does not exist is no error."""
    try:
        _connect_request(connect_url, "DELETE", f"/connectors/{urllib.parse.quote(name)}", timeout=timeout)
    except ConnectError as exc:
        if " 404 " not in str(exc):
            raise


def connector_status(connect_url, name, timeout=30):
    """GET /connectors/NAME/status as a dict."""
    return _connect_request(connect_url, "GET", f"/connectors/{urllib.parse.quote(name)}/status", timeout=timeout)


def connectors(connect_url):
    """The names of the connectors that run on the worker."""
    return _connect_request(connect_url, "GET", "/connectors")


def wait_connector_running(connect_url, name, timeout=60):
    """Wait until the connector and all its tasks (at least one) are
    RUNNING; return the status. A FAILED connector or task ends the wait
    at once with its trace."""

    def running():
        st = connector_status(connect_url, name)
        states = [st["connector"]] + st.get("tasks", [])
        for s in states:
            if s.get("state") == "FAILED":
                raise GiveUp(f"connector {name} failed: {s.get('trace', '')[:4000]}")
        if st["connector"]["state"] == "RUNNING" and st.get("tasks") and all(
            t["state"] == "RUNNING" for t in st["tasks"]
        ):
            return st
        return None

    return wait_for(running, timeout, interval=0.2, what=f"connector {name} to run")


def debezium_config(pg_uri, topic_prefix="dbserver1", slot="debezium_slot", publication="debezium_pub",
                    schemas=True, tables=("public.engagement_events", "public.content"),
                    key_columns="public.engagement_events:content_id", **extra):
    """The Debezium PostgreSQL connector's config for the database of pg_uri,
    as the brief sets it up: pgoutput, topic.prefix, the two tables, the
    event's key content_id, the JSON converter for key and value with
    (schemas=True) or without the schema part. slot and publication default
    to names engage does not use (engage_slot / engage_pub); give each
    connector on one server a slot of its own. extra: more settings, with
    "_" for "." in their names (snapshot_mode="never") or through a dict
    passed as **{"snapshot.mode": "never"}."""
    parts = urllib.parse.urlsplit(pg_uri)
    schemas = "true" if schemas else "false"
    config = {
        "connector.class": DEBEZIUM_CONNECTOR_CLASS,
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": parts.hostname or "127.0.0.1",
        "database.port": str(parts.port or 5432),
        "database.user": urllib.parse.unquote(parts.username or "postgres"),
        "database.password": urllib.parse.unquote(parts.password or ""),
        "database.dbname": parts.path.lstrip("/") or "postgres",
        "topic.prefix": topic_prefix,
        "table.include.list": ",".join(tables),
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "filtered",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": schemas,
        "value.converter.schemas.enable": schemas,
    }
    if key_columns:
        config["message.key.columns"] = key_columns
    for k, v in extra.items():
        config[k if "." in k else k.replace("_", ".")] = str(v)
    return config
