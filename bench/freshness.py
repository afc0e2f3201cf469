#!/usr/bin/env python3
"""Freshness: how long after its PostgreSQL commit is an event visible in Redis?

Events are inserted at a steady rate (default 1,000/s, then 10,000/s, 20 s each)
into a database of their own, `engage run --sinks redis` (the release build,
--bin) streams them, and the time from each event's commit to the moment its
effect is visible in `content:count:{id}` and in `content:last:{id}` is
measured outside engage, in this one process, on one clock (time.perf_counter,
CLOCK_MONOTONIC), by one thread: a selector loop drives the inserting
connections (psycopg2 asynchronous mode) and the Redis subscription together,
and stamps whatever a wake-up of the loop finds ready. No thread waits for
another, so the two stamps have the same delay (one loop turn, well under a
millisecond).

- Commit time: a transaction is one autocommit multi-row INSERT (default 5
  events); the stamp of the loop turn that finds its reply is the commit time
  of its events. PostgreSQL has flushed the commit record before it replies,
  and on a busy 2-core machine the backend may be descheduled between the two
  while the walsender, engage and Redis go on, so a few events come out
  slightly negative (counted in the `<0` column; they are real, not clock
  error). Transactions are scheduled open loop (transaction j is due at t0 +
  j * size / rate, sent at once when behind, over up to 16 connections), so
  a slow consumer cannot slow the offered load; the achieved rate and the
  worst lateness against the schedule are printed.

- Visible time: Redis keyspace notifications (CONFIG SET
  notify-keyspace-events K$ on the bench's Redis, restored afterwards;
  PSUBSCRIBE to the content:count:* and content:last:* keys of the bench's
  db). Redis sends a script's notifications when the script has run, so the
  stamp is when the change became readable, plus one loopback hop.

- Which event a notification is for: event number g of the run gets
  content_id = base + g % contents (contents rows exist, so enrichment hits).
  A content is reused only every contents / rate seconds (10,000 contents:
  1 s at 10,000/s, 10 s at 1,000/s), much longer than the latencies measured,
  so the events of one content are applied one per script call, in commit
  order, and the i-th notification of content:count:{id} (INCRBY) and of
  content:last:{id} (SET) is the i-th event of that content. This is checked:
  a content with fewer notifications than events (two of its events applied
  in one call: a latency longer than the reuse interval) is reported as
  unmatched and its events are left out; the content:count values must add up
  to the events inserted ("counts exact").

The keys are those of DESIGN.md section 2; top:content:10m is rebuilt after
every batch as in production, over minute buckets holding up to `contents`
members each, so --contents also sets the cost of that rebuild.

- The floor: in the same run, before engage's slot exists, each rate is also
  measured with pg_recvlogical alone, on a slot of its own with the plugin
  test_decoding (not pgoutput: pgoutput's binary messages have no framing on
  pg_recvlogical's output, test_decoding writes one text line per row), its
  `-f -` output read by the same selector loop and stamped the same way; the
  i-th INSERT line of a content is its i-th event. That is commit -> received
  by the simplest consumer of the same WAL on the same servers: a floor that
  a consumer of logical replication can hardly beat. Its `<0` share is large:
  the walsender sends as soon as the commit record is flushed, often before
  the backend's reply reaches the bench.

- Resources of each rate phase (from the load's start until its last event is
  seen): engage's CPU seconds over the phase's wall seconds, the same for
  PostgreSQL (the postmaster's process tree), Redis, ClickHouse, the mock API,
  this bench and the whole host (ours and other users' processes: the
  machine may be shared); engage's peak RSS over the phase (VmHWM, reset through
  /proc/PID/clear_refs when the phase starts, read when it ends).

- --http runs the HTTP sink into `engage mock-api` beside Redis; after each
  rate the bench waits until the API holds the phase's events (distinct
  event_ids) and the outbox is empty, and prints how long after the load that
  was. The bars: p99 commit -> visible in Redis < 10 ms at 1,000/s and < 30 ms
  at 10,000/s with ClickHouse and HTTP running (--clickhouse --http); engage's
  peak RSS < 32 MiB at 10,000/s.

usage: bench/freshness.py [--bin build/engage] [--rates 1000,10000] [--duration 20]
                          [--tx-size 5] [--contents 10000] [--clickhouse] [--http]
                          [--no-floor] [--baseline "ENGAGE ARGS"]
--baseline measures every rate first with engage run given those extra
arguments (e.g. "--queue-depth 8"; leading NAME=VALUE words are set in engage's
environment instead, e.g. "MALLOC_MMAP_THRESHOLD_=131072"), then with its
defaults, in the same run on the same servers, and prints both.
Starts its own servers on loopback (or reuses $ENGAGE_STACK_DIR; it then uses
Redis db 9, which it empties, and a new PostgreSQL database).
"""

import argparse
import json
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg2
import psycopg2.extensions
import psycopg2.extras

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import lib  # noqa: E402
from backlog import CLK_TCK, PGBIN, cpu_seconds, dlq_pending, metrics, tree_cpu_seconds, vm_hwm_mib  # noqa: E402

REDIS_DB = 9
RSS_BAR_MIB = 32  # at 10,000/s
FLOOR = "floor: pg_recvlogical, test_decoding"


def p99_bar_ms(rate):
    """The bar of p99 commit -> visible in Redis, with ClickHouse and HTTP running."""
    return 10 if rate <= 1000 else 30 if rate <= 10000 else None


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


class Subscriber:
    """A raw RESP subscription. The load loop reads its socket and stamps each
    chunk; parse() turns the chunks into messages afterwards."""

    def __init__(self, port, db):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        patterns = [f"__keyspace@{db}__:content:count:*", f"__keyspace@{db}__:content:last:*"]
        self.sock.sendall(resp("PSUBSCRIBE", *patterns))
        self.sock.setblocking(False)
        self.chunks = []  # (stamp, bytes)
        self.messages = []  # parsed by parse()
        self._parsed_chunks, self._buf, self._pos = 0, b"", 0

    def read(self, stamp):
        """Reads what the socket holds, stamped with stamp."""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                raise RuntimeError("redis closed the subscription")
            self.chunks.append((stamp, data))

    def close(self):
        self.sock.close()

    def parse(self):
        """Parses the chunks that arrived since the last call; returns every
        pmessage so far as [(stamp, channel, event)]."""
        chunks = self.chunks[self._parsed_chunks:]
        self._parsed_chunks += len(chunks)
        for stamp, data in chunks:
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
            while True:
                msg, end = parse_resp(self._buf, self._pos)
                if msg is None:
                    break
                self._pos = end
                if isinstance(msg, list) and msg and msg[0] == b"pmessage":
                    self.messages.append((stamp, msg[2].decode(), msg[3].decode()))
        return self.messages

    @staticmethod
    def cid(item):
        return int(item[1].rsplit(":", 1)[1])

    @staticmethod
    def need(total):
        return 2 * total  # content:count and content:last


def resp(*args):
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def parse_resp(buf, pos):
    """One RESP value at buf[pos:]: (value, end) or (None, pos) if incomplete."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None, pos
    kind, line = buf[pos:pos + 1], buf[pos + 1:nl]
    if kind in (b"+", b"-", b":"):
        return line, nl + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return b"", nl + 2
        if len(buf) < nl + 2 + n + 2:
            return None, pos
        return buf[nl + 2:nl + 2 + n], nl + 2 + n + 2
    if kind == b"*":
        items, p = [], nl + 2
        for _ in range(int(line)):
            item, p2 = parse_resp(buf, p)
            if item is None and p2 == p:
                return None, pos
            items.append(item)
            p = p2
        return items, p
    raise ValueError(f"bad RESP at {pos}: {buf[pos:pos + 20]!r}")



INSERT_LINE = re.compile(rb"^table public\.engagement_events: INSERT: event_id\[bigint\]:\d+ "
                         rb"content_id\[integer\]:(\d+)", re.M)


class Recvlogical:
    """pg_recvlogical on a test_decoding slot of its own, writing to a pipe that
    the load loop reads and stamps like the subscription; parse() turns the
    chunks into [(stamp, content_id)] of engagement_events INSERT lines."""

    def __init__(self, uri, slot, work):
        self.uri, self.slot = uri, slot
        subprocess.run([PGBIN / "pg_recvlogical", "-d", uri, "--slot", slot, "--plugin", "test_decoding",
                        "--create-slot"], check=True)
        # Its stderr to a file: PostgreSQL 15's pg_recvlogical reports the end of a stream
        # it was told to stop (SIGINT) as an "unexpected termination".
        self.log_path = work / "pg_recvlogical.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([PGBIN / "pg_recvlogical", "-d", uri, "--slot", slot, "--start",
                                          "-o", "skip-empty-xacts=1", "-o", "include-xids=0", "-f", "-"],
                                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=log)
        self.sock = self.proc.stdout.fileno()
        os.set_blocking(self.sock, False)
        self.chunks = []  # (stamp, bytes)
        self.items = []  # (stamp, content_id)
        self._parsed, self._rest = 0, b""

    @property
    def pid(self):
        return self.proc.pid

    def read(self, stamp):
        while True:
            try:
                data = os.read(self.sock, 1 << 20)
            except BlockingIOError:
                return
            if not data:
                raise RuntimeError(f"pg_recvlogical exited ({self.proc.poll()}): "
                                   f"{self.log_path.read_text(errors='replace')}")
            self.chunks.append((stamp, data))

    def parse(self):
        """A line is stamped with the chunk that completes it."""
        chunks = self.chunks[self._parsed:]
        self._parsed += len(chunks)
        for stamp, data in chunks:
            buf = self._rest + data
            end = buf.rfind(b"\n") + 1
            self._rest = buf[end:]
            self.items.extend((stamp, int(m.group(1))) for m in INSERT_LINE.finditer(buf, 0, end))
        return self.items

    @staticmethod
    def cid(item):
        return item[1]

    @staticmethod
    def need(total):
        return total

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc.stdout.close()
        lib.wait_for(lambda: not lib.pg_scalar(self.uri, "SELECT active FROM pg_replication_slots "
                                                         "WHERE slot_name = %s", (self.slot,)), 30,
                     what="pg_recvlogical's slot to be released")
        lib.pg_exec(self.uri, "SELECT pg_drop_replication_slot(%s)", (self.slot,))


class Load:
    """Inserts rate * duration events open loop from `sessions` asynchronous
    connections, all driven by this one thread together with the watcher (the
    Redis subscription or pg_recvlogical's pipe: both stamps come from the
    same loop, with no other thread to wait for), and keeps reading until
    every event's items arrived or tail_timeout passed."""

    def __init__(self, uri, watcher, rate, duration, tx_size, sessions, base, contents):
        self.uri, self.watcher, self.rate, self.tx_size = uri, watcher, rate, tx_size
        self.sessions, self.base, self.contents = sessions, base, contents
        self.total = int(rate * duration)
        self.ntx = -(-self.total // tx_size)
        self.start_items = self.counted = len(watcher.parse())
        self.mine = 0  # the watcher's items of this run's contents
        self.commits = {}  # content_id -> [commit stamps in order]
        self.late = 0.0
        self.next_tx = 0
        self.idle, self.busy = [], {}  # busy: conn -> (cursor, content ids)
        self.sel = None
        self.t0 = None

    def _send_due(self, now):
        """Sends every transaction that is due, as far as connections allow."""
        while self.next_tx < self.ntx and self.idle:
            due = self.t0 + self.next_tx * self.tx_size / self.rate
            if due > now:
                return
            self.late = max(self.late, now - due)
            first = self.next_tx * self.tx_size
            last = min(first + self.tx_size, self.total)
            ids = [self.base + g % self.contents for g in range(first, last)]
            values = ",".join(f"({cid},{g % 100000},'play',{1000 + g % 600000},'web')"
                              for g, cid in zip(range(first, last), ids))
            conn = self.idle.pop()
            cur = conn.cursor()
            cur.execute("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
                        f"VALUES {values}")
            self.busy[conn] = (cur, ids)
            self.sel.register(conn.fileno(), selectors.EVENT_READ, conn)
            self.next_tx += 1

    def _count_mine(self):
        """Parses as the chunks come (a little each turn: a long parse would delay stamps)."""
        items = self.watcher.parse()
        self.mine += sum(1 for it in items[self.counted:]
                         if self.base <= self.watcher.cid(it) < self.base + self.contents)
        self.counted = len(items)

    def _on_ready(self, events, stamp):
        for key, _ in events:
            conn = key.data
            if conn is None:
                self.watcher.read(stamp)
                continue
            state = conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                self.sel.unregister(conn.fileno())
                cur, ids = self.busy.pop(conn)
                cur.close()
                for cid in ids:
                    self.commits.setdefault(cid, []).append(stamp)
                self.idle.append(conn)
            elif state == psycopg2.extensions.POLL_WRITE:
                self.sel.modify(conn.fileno(), selectors.EVENT_WRITE, conn)
            else:
                self.sel.modify(conn.fileno(), selectors.EVENT_READ, conn)

    def _loop(self, tail_timeout):
        load_end = tail_deadline = None
        while True:
            self._send_due(time.perf_counter())
            self._count_mine()
            if self.next_tx >= self.ntx and not self.busy:
                if load_end is None:
                    load_end = time.perf_counter()
                    tail_deadline = load_end + tail_timeout
                if self.mine >= self.watcher.need(self.total) or time.perf_counter() > tail_deadline:
                    return load_end
            if self.next_tx < self.ntx and self.idle:
                timeout = max(0.0, self.t0 + self.next_tx * self.tx_size / self.rate - time.perf_counter())
            else:
                timeout = 0.05
            events = self.sel.select(timeout)
            self._on_ready(events, time.perf_counter())

    def run(self, tail_timeout=60):
        """Returns (achieved rate, load end stamp)."""
        conns = []
        self.sel = selectors.DefaultSelector()
        try:
            for _ in range(self.sessions):
                conn = psycopg2.connect(self.uri, async_=1)
                psycopg2.extras.wait_select(conn)
                conns.append(conn)
            self.idle = list(conns)
            self.sel.register(self.watcher.sock, selectors.EVENT_READ, None)
            self.t0 = time.perf_counter() + 0.2
            load_end = self._loop(tail_timeout)
        finally:
            self.sel.close()
            for conn in conns:
                conn.close()
        return self.total / (load_end - self.t0), load_end


class Usage:
    """CPU seconds of the named processes over a phase, and engage's peak RSS in
    it: processes maps a name to (pid, whole tree?); 'engage' is reset at start."""

    def __init__(self, processes):
        self.processes = {k: v for k, v in processes.items() if v[0]}
        self.rss_reset = False
        engage = self.processes.get("engage")
        if engage is not None:
            try:
                with open(f"/proc/{engage[0]}/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                self.rss_reset = True
            except OSError:
                pass
        self.wall0 = time.monotonic()
        self.cpu0 = self._cpu()

    def _cpu(self):
        out = {name: (tree_cpu_seconds(pid) if tree else cpu_seconds(pid))
               for name, (pid, tree) in self.processes.items()}
        t = os.times()
        out["bench"] = t.user + t.system
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
        out["host"] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK
        return out

    def end(self):
        """{'wall': s, 'share': {name: CPU s / wall s}, 'rss': MiB or None, 'rss_reset': bool}."""
        wall = time.monotonic() - self.wall0
        cpu1 = self._cpu()
        share = {k: (cpu1[k] - self.cpu0[k]) / wall for k in cpu1}
        engage = self.processes.get("engage")
        return {"wall": wall, "share": share, "rss": vm_hwm_mib(engage[0]) if engage else None,
                "rss_reset": self.rss_reset}


def matched_latencies(commits, notes):
    """Sorted latencies of the contents whose items match their commits one to
    one, and the count of events left out."""
    lat, unmatched = [], 0
    for cid, stamps in commits.items():
        got = notes.get(cid, [])
        if len(got) != len(stamps):
            unmatched += len(stamps)
            continue
        lat.extend(n - c for n, c in zip(got, stamps))
    return sorted(lat), unmatched


def run_phase(args, uri, watcher, rate, base, processes):
    contents = args.contents
    lib.pg_exec(uri, "INSERT INTO content SELECT g, 'video', 300, 'title' FROM generate_series(%s, %s) g",
                (base, base + contents - 1))
    sessions = max(2, min(16, rate // 500))
    load = Load(uri, watcher, rate, args.duration, args.tx_size, sessions, base, contents)
    usage = Usage(processes)
    achieved, load_end = load.run()
    res = {"rate": rate, "achieved": achieved, "late": load.late, "sessions": sessions,
           "events": sum(len(v) for v in load.commits.values()), "usage": usage.end()}
    return load, res, load_end


def server_processes(stack):
    return {"postgres": (stack.pid("pg"), True), "redis": (stack.pid("redis"), True),
            "clickhouse": (stack.pid("clickhouse"), True)}


def measure_floor(args, ctx, recv, rate, base):
    processes = {"pg_recvlogical": (recv.pid, False), **server_processes(ctx.stack)}
    load, res, _ = run_phase(args, ctx.uri, recv, rate, base, processes)
    got = {}
    for stamp, cid in recv.parse()[load.start_items:]:
        got.setdefault(cid, []).append(stamp)
    res["recv"] = matched_latencies(load.commits, got)
    return res


def dump_csv(path, commits, seen):
    with open(path, "w") as f:
        f.write("content_id,commit_s,count_ms,last_ms\n")
        t0 = min(min(v) for v in commits.values())
        for cid, stamps in commits.items():
            cn, ln = seen["count"].get(cid, []), seen["last"].get(cid, [])
            for i, c in enumerate(stamps):
                cl = (cn[i] - c) * 1e3 if len(cn) == len(stamps) else float("nan")
                ll = (ln[i] - c) * 1e3 if len(ln) == len(stamps) else float("nan")
                f.write(f"{cid},{c - t0:.6f},{cl:.3f},{ll:.3f}\n")


def measure(args, run, rate, base):
    """One rate through engage; run holds uri, rdb, sub, processes and api."""
    api0 = run.api_unique() if run.api else 0
    parked0 = run.outbox_parked()
    load, res, load_end = run_phase(args, run.uri, run.sub, rate, base, run.processes)
    total = res["events"]
    keys = [f"content:count:{cid}" for cid in load.commits]
    got = sum(int(v or 0) for i in range(0, len(keys), 5000) for v in run.rdb.mget(keys[i:i + 5000]))
    seen = {"count": {}, "last": {}}
    for stamp, channel, event in run.sub.parse()[load.start_items:]:
        key = channel.split(":", 1)[1]
        kind, cid = key.rsplit(":", 1)[0], int(key.rsplit(":", 1)[1])
        if kind == "content:count" and event == "incrby":
            seen["count"].setdefault(cid, []).append(stamp)
        elif kind == "content:last" and event == "set":
            seen["last"].setdefault(cid, []).append(stamp)
    res["counts_ok"] = got == total
    for what in ("count", "last"):
        res[what] = matched_latencies(load.commits, seen[what])
    if args.dump:
        dump_csv(f"{args.dump}.{rate}.csv", load.commits, seen)
    if run.api:
        res["api"] = run.wait_api(api0 + total, load_end)
    res["outbox_parked"] = run.outbox_parked() - parked0
    return res


class Run:
    """One engage run (one configuration) and what its phases read: the
    database, Redis, the subscription, the mock API, the processes to account."""

    def __init__(self, ctx, proc):
        self.uri, self.rdb, self.sub, self.api, self.proc = ctx.uri, ctx.rdb, ctx.sub, ctx.api, proc
        self.processes = {"engage": (proc.pid, False), **server_processes(ctx.stack)}
        if ctx.api is not None:
            self.processes["mock-api"] = (ctx.api.proc.pid, False)

    def api_unique(self):
        with urllib.request.urlopen(self.api.url + "/stats", timeout=10) as resp:
            return int(json.loads(resp.read()).get("unique", 0))

    def outbox_parked(self):
        if self.api is None:
            return 0
        return int(metrics(self.proc.admin_addr).get('engage_dlq_parked_total{origin="outbox"}', 0))

    def wait_api(self, expected, load_end, timeout=120):
        """Until the API holds `expected` distinct events and the outbox is empty;
        {'ok', 'after_s' (since the load's end), 'unique'}."""
        unique = 0
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            unique = self.api_unique()
            if unique >= expected and dlq_pending(self.uri, True) == 0:
                return {"ok": unique == expected, "after_s": time.perf_counter() - load_end, "unique": unique,
                        "expected": expected}
            time.sleep(0.02)
        return {"ok": False, "after_s": float("nan"), "unique": unique, "expected": expected}


class MockApi:
    def __init__(self, work, binary):
        port_file = work / "mock-api.ports"
        self.proc = lib.EngageProcess(["mock-api", "--listen", "127.0.0.1:0", "--port-file", port_file,
                                       "--log-level", "warn"], log_dir=work, name="mock-api",
                                      binary=binary).start()
        ports = lib.wait_for(lambda: port_file.exists() and json.loads(port_file.read_text() or "null"), 30,
                             what="the mock API to listen")
        self.url = f"http://127.0.0.1:{ports['port']}"

    def stop(self):
        self.proc.stop()


def measure_floors(args, ctx, rates):
    """Every rate through pg_recvlogical alone, before engage's slot exists."""
    recv = Recvlogical(ctx.uri, f"{ctx.name}_floor", ctx.work)
    try:
        return {rate: measure_floor(args, ctx, recv, rate, base=100_000_000 + 1_000_000 * i)
                for i, rate in enumerate(rates)}
    finally:
        recv.close()


def split_env(words):
    """Leading NAME=VALUE words as an environment, and the rest."""
    env = {}
    while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def run_config(args, ctx, c, extra, rates):
    """Every rate through one engage run (configuration c) with extra arguments."""
    slot = f"{ctx.name}_{c}"
    env, extra = split_env(list(extra))
    proc = lib.EngageProcess(["run", "--slot", slot, "--sinks", ctx.sinks, "--state-dir",
                              str(ctx.work / f"state{c}"), "--log-level", "warn", *extra],
                             env={**ctx.env, **env}, log_dir=ctx.work, name=f"engage{c}",
                             binary=ctx.binary).start()
    try:
        lib.wait_for(lambda: lib.pg_scalar(ctx.uri, "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                           (slot,)), 60, what="engage to stream")
        run = Run(ctx, proc)
        api0 = run.api_unique() if ctx.api is not None else 0
        # Warm up: connections, the script, the first buckets.
        lib.pg_exec(ctx.uri, "INSERT INTO engagement_events(content_id, user_id) SELECT g, 1 FROM generate_series(1, 100) g")
        lib.wait_for(lambda: ctx.rdb.exists("content:count:100"), 30, what="the warm-up events")
        if ctx.api is not None:
            lib.wait_for(lambda: run.api_unique() >= api0 + 100, 60, what="the warm-up events in the API")
        rows = []
        for i, rate in enumerate(rates):
            rows.append(measure(args, run, rate, base=1_000_000 * (len(rates) * c + i + 1)))
            if not proc.alive():
                raise RuntimeError(f"engage exited:\n{proc.log_tail()}")
    finally:
        proc.stop()
    lib.pg_exec(ctx.uri, "SELECT pg_drop_replication_slot(%s)", (slot,))
    ctx.rdb.flushdb()
    return rows


def ms(x):
    return x * 1e3


def latency_line(rate, achieved, events, key, lat, unmatched):
    neg = sum(1 for x in lat if x < 0)
    lo, hi = (lat[0], lat[-1]) if lat else (float("nan"), float("nan"))
    return (f"{rate:>7} {achieved:>9.0f} {events:>7} {key:<38} {ms(percentile(lat, 50)):>8.2f} "
            f"{ms(percentile(lat, 99)):>8.2f} {ms(hi):>8.2f} {ms(lo):>7.2f} {neg:>4} {unmatched:>9}")


def print_latencies(rows, floors):
    head = (f"{'rate/s':>7} {'achieved':>9} {'events':>7} {'key':<38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'min ms':>7} {'<0':>4} {'unmatched':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for what in ("count", "last"):
            print(latency_line(r["rate"], r["achieved"], r["events"], "content:" + what, *r[what]))
        f = floors.get(r["rate"])
        if f is not None:
            print(latency_line(f["rate"], f["achieved"], f["events"], FLOOR, *f["recv"]))


def met(value, bar, unit):
    if bar is None:
        return "no bar"
    return f"bar < {bar:g} {unit}: {'met' if value < bar else 'MISSED'}"


def print_bars(rows, floors, sinks):
    full = "clickhouse" in sinks and "http" in sinks
    print(f"bars (p99 commit -> visible in Redis, the larger of content:count and content:last; set with "
          f"ClickHouse and HTTP running{'' if full else ', which this run does not: ' + sinks}):")
    for r in rows:
        p99 = ms(max(percentile(r[w][0], 99) for w in ("count", "last")))
        f = floors.get(r["rate"])
        floor = f", floor p99 {ms(percentile(f['recv'][0], 99)):.2f} ms" if f else ""
        rss = r["usage"]["rss"]
        line = (f"{r['rate']}/s: p99 {p99:.2f} ms{floor}: {met(p99, p99_bar_ms(r['rate']), 'ms')}; "
                f"engage peak RSS {rss:.1f} MiB: {met(rss, RSS_BAR_MIB if r['rate'] == 10000 else None, 'MiB')}; "
                f"counts exact: {'yes' if r['counts_ok'] else 'NO'}")
        if "api" in r:
            a = r["api"]
            line += (f"; API: {a['unique']} of {a['expected']} events, outbox empty, "
                     f"{ms(a['after_s']):.0f} ms after the load" if a["ok"] else
                     f"; API: {a['unique']} of {a['expected']} events: NOT ALL")
            line += f" ({r['outbox_parked']} went through the outbox)"
        print(line)
        print(f"    sessions {r['sessions']}, worst schedule lateness {ms(r['late']):.1f} ms"
              + (f"; floor's {ms(f['late']):.1f} ms" if f else ""))


def share(usage, name):
    v = usage["share"].get(name)
    return f"{v:>10.2f}" if v is not None else f"{'-':>10}"


def print_usage(rows, floors):
    names = [n for n in ("engage", "postgres", "redis", "clickhouse", "mock-api", "bench", "host")
             if any(n in r["usage"]["share"] for r in rows)]
    print("CPU share per phase (CPU seconds / wall seconds, 1.00 = one core; host: every process on "
          f"the host's {os.cpu_count()} cores, ours and others'); RSS: engage's peak resident memory "
          "in the phase (VmHWM)")
    head = f"{'rate/s':>7} {'consumer':<16} {'wall s':>7} " + " ".join(f"{n if n != 'engage' else 'consumer':>10}" for n in names) + f" {'RSS MiB':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        u = r["usage"]
        rss = f"{u['rss']:.1f}" + ("" if u["rss_reset"] else "*")
        print(f"{r['rate']:>7} {'engage':<16} {u['wall']:>7.1f} "
              + " ".join(share(u, n) for n in names) + f" {rss:>8}")
        f = floors.get(r["rate"])
        if f is not None:
            fu = f["usage"]
            print(f"{r['rate']:>7} {'pg_recvlogical':<16} {fu['wall']:>7.1f} "
                  + " ".join(share(fu, "pg_recvlogical" if n == "engage" else n) for n in names) + f" {'':>8}")
    if any(not r["usage"]["rss_reset"] for r in rows):
        print("* VmHWM could not be reset: the peak since engage started")


class Context:
    """The servers, the database and what every configuration shares."""

    def __init__(self, args, work):
        self.args, self.work, self.binary = args, work, Path(args.bin).resolve()
        self.name = "fresh_" + secrets.token_hex(4)
        reuse = os.environ.get("ENGAGE_STACK_DIR")
        self.own_stack = not (reuse and (Path(reuse) / "env").exists())
        self.stack_dir = tempfile.mkdtemp(prefix="engage-fresh-") if self.own_stack else reuse
        self.stack = self.uri = self.sub = self.api = self.old_notify = None

    def up(self):
        self.stack = lib.Stack.up(self.stack_dir) if self.own_stack else lib.Stack(self.stack_dir)
        self.uri = lib.pg_create_database(self.stack.pg_uri, self.name)
        redis_url = f"redis://127.0.0.1:{self.stack.redis_port}/{REDIS_DB}"
        self.rdb = lib.redis_client(redis_url)
        self.rdb.flushdb()
        self.old_notify = self.rdb.config_get("notify-keyspace-events")["notify-keyspace-events"]
        self.rdb.config_set("notify-keyspace-events", "K$")
        self.sub = Subscriber(self.stack.redis_port, REDIS_DB)
        self.env = {"ENGAGE_PG": self.uri, "ENGAGE_REDIS": redis_url}
        sinks = ["redis"]
        if self.args.clickhouse:
            self.env["ENGAGE_CLICKHOUSE"] = self.stack.clickhouse_url
            sinks.append("clickhouse")
        if self.args.http:
            self.api = MockApi(self.work, self.binary)
            self.env["ENGAGE_HTTP"] = self.api.url
            sinks.append("http")
        self.sinks = ",".join(sinks)

    def down(self):
        if self.sub is not None:
            self.sub.close()
        if self.api is not None:
            self.api.stop()
        if self.stack is not None and self.uri is not None:
            lib.pg_drop_database(self.stack.pg_uri, self.name)
            try:
                rdb = lib.redis_client(f"redis://127.0.0.1:{self.stack.redis_port}/{REDIS_DB}")
                rdb.flushdb()
                if self.old_notify is not None:
                    rdb.config_set("notify-keyspace-events", self.old_notify)
            except Exception:  # noqa: BLE001 - best effort on a stack we did not start
                pass
        if self.own_stack:
            lib._run_stack("down", self.stack_dir, timeout=180)
            shutil.rmtree(self.stack_dir, ignore_errors=True)


def report(args, ctx, floors, measured):
    print(f"freshness: PostgreSQL commit -> visible in Redis (keyspace notification), engage {ctx.binary}")
    print(f"sinks={ctx.sinks} duration={args.duration:g}s tx_size={args.tx_size} contents={args.contents} "
          f"host_cpus={os.cpu_count()} load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if floors:
        print(f"{FLOOR}: commit -> its INSERT line read from pg_recvlogical's stdout; plugin test_decoding "
              "(not pgoutput), a slot of its own, each rate run alone before engage's slot existed, same "
              "servers, same load generator")
    for label, rows in measured:
        print()
        print(f"engage run {label}:")
        print_latencies(rows, floors)
        print()
        print_bars(rows, floors, ctx.sinks)
        print()
        print_usage(rows, floors)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(lib.REPO_ROOT / "build" / "engage"))
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--tx-size", type=int, default=5)
    ap.add_argument("--contents", type=int, default=10_000)
    ap.add_argument("--clickhouse", action="store_true", help="run the ClickHouse sink beside Redis")
    ap.add_argument("--http", action="store_true", help="run the HTTP sink into engage mock-api beside Redis")
    ap.add_argument("--no-floor", action="store_true", help="do not measure pg_recvlogical's floor")
    ap.add_argument("--dump", help="write every event's latencies to DUMP.RATE.csv")
    ap.add_argument("--baseline", help="extra engage run arguments measured first, as a baseline")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    assert all(0 < r <= 20_000 for r in rates) and 0 < args.duration <= 60, "bounded load only"

    work = Path(tempfile.mkdtemp(prefix="engage-fresh-work-"))
    ctx = Context(args, work)
    try:
        ctx.up()
        floors = {} if args.no_floor else measure_floors(args, ctx, rates)
        configs = [("defaults", [])]
        if args.baseline:
            configs.insert(0, (args.baseline, shlex.split(args.baseline)))
        measured = [(label, run_config(args, ctx, c, extra, rates)) for c, (label, extra) in enumerate(configs)]
        report(args, ctx, floors, measured)
    finally:
        ctx.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
