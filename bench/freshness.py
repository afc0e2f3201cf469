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

usage: bench/freshness.py [--bin build/engage] [--rates 1000,10000] [--duration 20]
                          [--tx-size 5] [--contents 10000] [--clickhouse]
                          [--baseline "ENGAGE ARGS"]
--baseline measures every rate first with engage run given those extra
arguments (e.g. "--queue-depth 8"), then with its defaults, in the same run on
the same servers, and prints both.
Starts its own servers on loopback (or reuses $ENGAGE_STACK_DIR; it then uses
Redis db 9, which it empties, and a new PostgreSQL database).
"""

import argparse
import os
import secrets
import selectors
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions
import psycopg2.extras

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import lib  # noqa: E402

REDIS_DB = 9


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


def run_load(uri, sub, rate, duration, tx_size, sessions, base, contents, tail_timeout=60):
    """Insert rate * duration events open loop from `sessions` asynchronous
    connections, all driven by this one thread together with the subscription
    (so both stamps come from the same loop, with no other thread to wait
    for), and keep reading until every event's two notifications arrived or
    tail_timeout passed. Returns ({content_id: [commit stamps in order]},
    achieved rate, worst lateness against the schedule, notifications index
    at the start)."""
    total = int(rate * duration)
    ntx = -(-total // tx_size)
    start_msgs = len(sub.parse())
    conns = []
    for _ in range(sessions):
        conn = psycopg2.connect(uri, async_=1)
        psycopg2.extras.wait_select(conn)
        conns.append(conn)
    sel = selectors.DefaultSelector()
    sel.register(sub.sock, selectors.EVENT_READ, None)
    idle = list(conns)
    busy = {}  # conn -> (cursor, content ids)
    commits = {}
    late = 0.0
    next_tx = 0
    t0 = time.perf_counter() + 0.2
    load_end = None
    tail_deadline = None
    mine, counted = 0, start_msgs  # notifications of this run's contents
    try:
        while True:
            now = time.perf_counter()
            # Send every transaction that is due, as far as connections allow.
            while next_tx < ntx and idle:
                due = t0 + next_tx * tx_size / rate
                if due > now:
                    break
                late = max(late, now - due)
                first = next_tx * tx_size
                last = min(first + tx_size, total)
                ids = [base + g % contents for g in range(first, last)]
                values = ",".join(f"({cid},{g % 100000},'play',{1000 + g % 600000},'web')"
                                  for g, cid in zip(range(first, last), ids))
                conn = idle.pop()
                cur = conn.cursor()
                cur.execute("INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
                            f"VALUES {values}")
                busy[conn] = (cur, ids)
                sel.register(conn.fileno(), selectors.EVENT_READ, conn)
                next_tx += 1
            # Parse as the chunks come (a little each turn: a long parse would delay stamps).
            msgs = sub.parse()
            mine += sum(1 for _, channel, _ in msgs[counted:]
                        if base <= int(channel.rsplit(":", 1)[1]) < base + contents)
            counted = len(msgs)
            if next_tx >= ntx and not busy:
                if load_end is None:
                    load_end = time.perf_counter()
                    tail_deadline = load_end + tail_timeout
                if mine >= 2 * total or time.perf_counter() > tail_deadline:
                    break
            if next_tx < ntx and idle:
                timeout = max(0.0, t0 + next_tx * tx_size / rate - time.perf_counter())
            else:
                timeout = 0.05
            events = sel.select(timeout)
            stamp = time.perf_counter()
            for key, _ in events:
                conn = key.data
                if conn is None:
                    sub.read(stamp)
                    continue
                state = conn.poll()
                if state == psycopg2.extensions.POLL_OK:
                    sel.unregister(conn.fileno())
                    cur, ids = busy.pop(conn)
                    cur.close()
                    for cid in ids:
                        commits.setdefault(cid, []).append(stamp)
                    idle.append(conn)
                elif state == psycopg2.extensions.POLL_WRITE:
                    sel.modify(conn.fileno(), selectors.EVENT_WRITE, conn)
                else:
                    sel.modify(conn.fileno(), selectors.EVENT_READ, conn)
    finally:
        sel.close()
        for conn in conns:
            conn.close()
    return commits, total / (load_end - t0), late, start_msgs


def measure(args, uri, rdb, sub, rate, base):
    contents = args.contents
    lib.pg_exec(uri, "INSERT INTO content SELECT g, 'video', 300, 'title' FROM generate_series(%s, %s) g",
                (base, base + contents - 1))
    sessions = max(2, min(16, rate // 500))
    commits, achieved, late, start = run_load(uri, sub, rate, args.duration, args.tx_size, sessions, base, contents)
    total = sum(len(v) for v in commits.values())
    keys = [f"content:count:{cid}" for cid in commits]
    got = sum(int(v or 0) for i in range(0, len(keys), 5000) for v in rdb.mget(keys[i:i + 5000]))
    seen = {"count": {}, "last": {}}
    for stamp, channel, event in sub.parse()[start:]:
        key = channel.split(":", 1)[1]
        kind, cid = key.rsplit(":", 1)[0], int(key.rsplit(":", 1)[1])
        if kind == "content:count" and event == "incrby":
            seen["count"].setdefault(cid, []).append(stamp)
        elif kind == "content:last" and event == "set":
            seen["last"].setdefault(cid, []).append(stamp)

    counts_ok = got == total
    results = {}
    for what in ("count", "last"):
        lat, unmatched = [], 0
        for cid, stamps in commits.items():
            notes = seen[what].get(cid, [])
            if len(notes) != len(stamps):
                unmatched += len(stamps)
                continue
            lat.extend(n - c for n, c in zip(notes, stamps))
        results[what] = (sorted(lat), unmatched)
    if args.dump:
        with open(f"{args.dump}.{rate}.csv", "w") as f:
            f.write("content_id,commit_s,count_ms,last_ms\n")
            t0 = min(min(v) for v in commits.values())
            for cid, stamps in commits.items():
                cn, ln = seen["count"].get(cid, []), seen["last"].get(cid, [])
                for i, c in enumerate(stamps):
                    cl = (cn[i] - c) * 1e3 if len(cn) == len(stamps) else float("nan")
                    ll = (ln[i] - c) * 1e3 if len(ln) == len(stamps) else float("nan")
                    f.write(f"{cid},{c - t0:.6f},{cl:.3f},{ll:.3f}\n")
    return {"rate": rate, "achieved": achieved, "late": late, "events": total, "counts_ok": counts_ok,
            "sessions": sessions, **results}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(lib.REPO_ROOT / "build" / "engage"))
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--tx-size", type=int, default=5)
    ap.add_argument("--contents", type=int, default=10_000)
    ap.add_argument("--clickhouse", action="store_true", help="run the ClickHouse sink beside Redis")
    ap.add_argument("--dump", help="write every event's latencies to DUMP.RATE.csv")
    ap.add_argument("--baseline", help="extra engage run arguments measured first, as a baseline")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    assert all(0 < r <= 20_000 for r in rates) and 0 < args.duration <= 60, "bounded load only"
    binary = Path(args.bin).resolve()

    reuse = os.environ.get("ENGAGE_STACK_DIR")
    own_stack = not (reuse and (Path(reuse) / "env").exists())
    stack_dir = tempfile.mkdtemp(prefix="engage-fresh-") if own_stack else reuse
    work = Path(tempfile.mkdtemp(prefix="engage-fresh-work-"))
    name = "fresh_" + secrets.token_hex(4)
    stack = proc = sub = uri = old_notify = None
    try:
        stack = lib.Stack.up(stack_dir) if own_stack else lib.Stack(stack_dir)
        uri = lib.pg_create_database(stack.pg_uri, name)
        redis_url = f"redis://127.0.0.1:{stack.redis_port}/{REDIS_DB}"
        rdb = lib.redis_client(redis_url)
        rdb.flushdb()
        old_notify = rdb.config_get("notify-keyspace-events")["notify-keyspace-events"]
        rdb.config_set("notify-keyspace-events", "K$")
        sub = Subscriber(stack.redis_port, REDIS_DB)

        env = {"ENGAGE_PG": uri, "ENGAGE_REDIS": redis_url}
        sinks = "redis"
        if args.clickhouse:
            env["ENGAGE_CLICKHOUSE"] = stack.clickhouse_url
            sinks = "redis,clickhouse"
        configs = [("defaults", [])]
        if args.baseline:
            configs.insert(0, (args.baseline, shlex.split(args.baseline)))
        measured = []
        for c, (label, extra) in enumerate(configs):
            slot = f"{name}_{c}"
            proc = lib.EngageProcess(["run", "--slot", slot, "--sinks", sinks, "--state-dir",
                                      str(work / f"state{c}"), "--log-level", "warn", *extra],
                                     env=env, log_dir=work, name=f"engage{c}", binary=binary).start()
            lib.wait_for(lambda: lib.pg_scalar(uri, "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                               (slot,)), 60, what="engage to stream")
            # Warm up: connections, the script, the first buckets.
            lib.pg_exec(uri, "INSERT INTO engagement_events(content_id, user_id) SELECT g, 1 FROM generate_series(1, 100) g")
            lib.wait_for(lambda: rdb.exists("content:count:100"), 30, what="the warm-up events")
            rows = []
            for i, rate in enumerate(rates):
                rows.append(measure(args, uri, rdb, sub, rate, base=1_000_000 * (len(rates) * c + i + 1)))
                if not proc.alive():
                    raise RuntimeError(f"engage exited:\n{proc.log_tail()}")
            proc.stop()
            proc = None
            lib.pg_exec(uri, "SELECT pg_drop_replication_slot(%s)", (slot,))
            rdb.flushdb()
            measured.append((label, rows))

        print(f"freshness: PostgreSQL commit -> visible in Redis (keyspace notification), engage {binary}")
        print(f"sinks={sinks} duration={args.duration:g}s tx_size={args.tx_size} contents={args.contents} "
              f"host_cpus={os.cpu_count()}")
        for label, rows in measured:
            print()
            print(f"engage run {label}:")
            head = f"{'rate/s':>7} {'achieved':>9} {'events':>7} {'key':<14} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'min ms':>7} {'<0':>4} {'unmatched':>9}"
            print(head)
            print("-" * len(head))
            for r in rows:
                for what in ("count", "last"):
                    lat, unmatched = r[what]
                    neg = sum(1 for x in lat if x < 0)
                    print(f"{r['rate']:>7} {r['achieved']:>9.0f} {r['events']:>7} {'content:' + what:<14} "
                          f"{percentile(lat, 50) * 1e3:>8.2f} {percentile(lat, 99) * 1e3:>8.2f} "
                          f"{(lat[-1] if lat else float('nan')) * 1e3:>8.2f} {(lat[0] if lat else float('nan')) * 1e3:>7.2f} "
                          f"{neg:>4} {unmatched:>9}")
            print()
            for r in rows:
                bar = 25 if r["rate"] <= 1000 else 100
                p99 = max(percentile(r[w][0], 99) for w in ("count", "last")) * 1e3
                print(f"{r['rate']}/s: p99 {p99:.1f} ms against a bar of {bar} ms: {'met' if p99 < bar else 'MISSED'}; "
                      f"counts exact: {'yes' if r['counts_ok'] else 'NO'}; sessions {r['sessions']}, "
                      f"worst schedule lateness {r['late'] * 1e3:.1f} ms")
    finally:
        if sub is not None:
            sub.close()
        if proc is not None:
            proc.stop()
        if stack is not None and uri is not None:
            lib.pg_drop_database(stack.pg_uri, name)
            try:
                rdb = lib.redis_client(f"redis://127.0.0.1:{stack.redis_port}/{REDIS_DB}")
                rdb.flushdb()
                if old_notify is not None:
                    rdb.config_set("notify-keyspace-events", old_notify)
            except Exception:  # noqa: BLE001 - best effort on a stack we did not start
                pass
        if own_stack:
            lib._run_stack("down", stack_dir, timeout=180)
            shutil.rmtree(stack_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
