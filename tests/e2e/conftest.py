"""pytest fixtures for engage's end-to-end tests.

  stack        (session)  the servers: reuses $ENGAGE_STACK_DIR if DIR/env
                          exists there, else starts a stack in a temp dir and
                          stops it at the end ($ENGAGE_KEEP_STACK=1 keeps the dir)
  kafka        (session)  the stack's Kafka broker (stack.sh start DIR kafka,
                          once; also in a reused $ENGAGE_STACK_DIR):
                          a lib.KafkaStack, .bootstrap = "127.0.0.1:PORT"
  connect      (session)  Kafka Connect with the Debezium plugin, on that
                          broker: the same lib.KafkaStack, .connect_url set
  db           (function) a fresh PostgreSQL database with scripts/schema.sql
  clean_sinks  (function) drops engagement.events_enriched, FLUSHALL on Redis
  engage       (function) factory: engage(*args, env=None, name="engage")
                          starts the binary; every process is stopped after
                          the test and its log tail is added to a failure report
"""

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

import lib


@pytest.fixture(scope="session")
def stack():
    reuse = os.environ.get("ENGAGE_STACK_DIR")
    if reuse and (Path(reuse) / "env").exists():
        s = lib.Stack(reuse, owned=False)
        s.check()
        yield s
        return

    dir = tempfile.mkdtemp(prefix="engage-stack-")
    s = None
    try:
        s = lib.Stack.up(dir)
        yield s
    finally:
        # down even when up failed half way: it stops whatever runs in dir.
        lib._run_stack("down", dir, timeout=180)
        if not os.environ.get("ENGAGE_KEEP_STACK"):
            shutil.rmtree(dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka(stack):
    """The broker, started in the stack's dir on first use; stopped with the
    stack (an owned stack's down), left running in a reused one."""
    k = lib.KafkaStack(stack.dir)
    if not (k.bootstrap and k.running("kafka")):
        k.start("kafka")
    return k


@pytest.fixture(scope="session")
def connect(kafka):
    """Kafka Connect (standalone, no connectors) on the kafka fixture's broker."""
    if not (kafka.connect_url and kafka.running("connect")):
        kafka.start("connect")
    return kafka


class TestDatabase:
    """A database of its own for one test. name, uri; exec/query/scalar run
    SQL on it (see lib.pg_exec / lib.pg_query)."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, name, uri):
        self.name = name
        self.uri = uri

    def exec(self, sql, params=None):
        return lib.pg_exec(self.uri, sql, params)

    def query(self, sql, params=None):
        return lib.pg_query(self.uri, sql, params)

    def scalar(self, sql, params=None):
        return lib.pg_scalar(self.uri, sql, params)


@pytest.fixture
def db(stack):
    name = "engage_t_" + secrets.token_hex(6)
    uri = lib.pg_create_database(stack.pg_uri, name)
    try:
        yield TestDatabase(name, uri)
    finally:
        lib.pg_drop_database(stack.pg_uri, name)


@pytest.fixture
def clean_sinks(stack):
    """Empty ClickHouse's engagement.events_enriched and Redis before the test."""
    lib.ch_reset(stack.clickhouse_url)
    lib.redis_reset(stack.redis_url)
    return stack


@pytest.fixture
def engage(request, tmp_path):
    procs = []
    request.node._engage_procs = procs

    def start(*args, env=None, name=None):
        name = name or f"engage-{len(procs) + 1}"
        proc = lib.EngageProcess(list(args), env=env, log_dir=tmp_path, name=name)
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in getattr(item, "_engage_procs", []):
            report.sections.append((f"engage log: {proc.name} ({report.when})", proc.log_tail()))
        k = item.funcargs.get("kafka") or item.funcargs.get("connect") if hasattr(item, "funcargs") else None
        for service in ("kafka", "connect") if isinstance(k, lib.KafkaStack) else ():
            tail = lib.file_tail(k.dir / service / f"{service}.log", 40)
            if tail:
                report.sections.append((f"{service} log ({report.when})", tail))
