#!/usr/bin/env python3
"""Backlog throughput: N events already in WAL, how fast does each consumer
drain them? Measured in one run on one stack, so the figures compare as ratios:

  pg_recvlogical  the same pgoutput stream (same publication) into /dev/null:
                  the floor set by PostgreSQL's decoding and the network
  engage stdout   decode + enrich + JSON, written to /dev/null
  engage clickhouse  the whole pipeline into ClickHouse (count() reached)
  engage clickhouse + redis  both sinks hold every event
  engage clickhouse + redis + http  every sink holds every event: the ClickHouse
                  count, the content:count:* sum, the mock API's distinct
                  events, and the HTTP sink's outbox (rows of origin 'outbox'
                  in engage_dlq not yet replayed) empty

Each engage row has a slot of its own, made before the backlog is written.
ClickHouse's table is dropped before each row that writes to it. Each row with
Redis has a Redis database of its own, left alone after its slot was made: an
engage whose Redis was flushed under it sees a loss (its engage:mark is gone)
and rebuilds Redis from the whole table (src/source/redis_repair.c), which is
not what this bench measures. Beside
each engage row: the peak resident memory of the engage process (VmHWM, read
from /proc just before it is stopped) and its CPU seconds (utime + stime);
beside pg_recvlogical the same (VmHWM sampled every 10 ms while it runs, CPU
from wait4()). The mock API's own memory and CPU
are printed apart. The all-sinks row is checked for exactness at the end
(ClickHouse FINAL count, Redis counts, the API's event ids against
PostgreSQL's, nothing pending in the outbox or the dead letters); a wrong
result exits non-zero.

usage: bench/backlog.py [--events N] [--bin build/engage] [--timeline] [--engage-args "ARGS"]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import lib  # noqa: E402
from benchstack import bench_stack  # noqa: E402

PGBIN = Path("/usr/lib/postgresql/15/bin")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTENT_IDS = range(1, 1101)  # the workload's content_id = 1 + (g * 7919) % 1100
RATIO_BAR = 0.7  # all sinks against the faster pg_recvlogical run
RSS_BAR_MIB = 64  # engage's peak RSS draining the backlog into all sinks
DEADLINE_S = 1800
ALL = "engage -> ClickHouse + Redis + HTTP (mock-api)"


# ------------------------------------------------------------ /proc (freshness.py uses these too)


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()


def cpu_seconds(pid):
    """utime + stime of one process, in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_mib(pid):
    """Peak resident set (VmHWM) of one process, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tree_cpu_seconds(root):
    """utime + stime of root and every descendant, with their reaped children
    (cutime + cstime), in seconds; 0 for a root that is gone. A child that the
    root reaps while /proc is read would be counted in neither: the scan is
    done again when the root's cutime + cstime moved meanwhile."""
    for _ in range(20):
        try:
            reaped = _stat_fields(root)[13:15] if root else None
        except OSError:
            return 0.0
        total = _tree_ticks(root)
        try:
            if (_stat_fields(root)[13:15] if root else None) == reaped:
                break
        except OSError:
            return 0.0
    return total / CLK_TCK


def _tree_ticks(root):
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = _stat_fields(d)
        except (OSError, ValueError):
            continue
        table[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root] if root else []
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
            todo += children.get(pid, [])
    return total


def servers_cpu(stack):
    """{service: CPU seconds so far} of PostgreSQL, ClickHouse and Redis."""
    return {s: tree_cpu_seconds(stack.pid(s)) for s in ("pg", "clickhouse", "redis")}


# ------------------------------------------------------------ the stack's state


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Bench:
    """What every row needs: the stack, the database, the binary, the mock API."""

    def __init__(self, stack, uri, work, binary, events, extra=()):
        self.stack, self.uri, self.work, self.binary, self.events = stack, uri, work, binary, events
        self.extra = list(extra)  # more `engage run` arguments for every timed row
        self.redis = None  # the current row's Redis database (use_row)
        self.end_lsn = None
        self.api = self.api_url = None

    def redis_url(self, slot):
        return f"redis://127.0.0.1:{self.stack.redis_port}/{REDIS_DBS.get(slot, 0)}"

    def use_row(self, slot):
        self.redis = lib.redis_client(self.redis_url(slot))

    def env(self, sinks, slot):
        env = {"ENGAGE_PG": self.uri}
        if "clickhouse" in sinks:
            env["ENGAGE_CLICKHOUSE"] = self.stack.clickhouse_url
        if "redis" in sinks:
            env["ENGAGE_REDIS"] = self.redis_url(slot)
        if "http" in sinks:
            env["ENGAGE_HTTP"] = self.api_url
        return env

    def start_api(self):
        port_file = self.work / "mock-api.ports"
        self.api = lib.EngageProcess(["mock-api", "--listen", "127.0.0.1:0", "--port-file", port_file,
                                      "--log-level", "warn"], log_dir=self.work, name="mock-api",
                                     binary=self.binary).start()
        ports = lib.wait_for(lambda: port_file.exists() and json.loads(port_file.read_text() or "null"), 30,
                             what="the mock API to listen")
        self.api_url = f"http://127.0.0.1:{ports['port']}"

    def api_get(self, path, timeout=30):
        with urllib.request.urlopen(self.api_url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def ch_count(self, final=False):
        try:
            return int(lib.ch_query(self.stack.clickhouse_url, "SELECT count() FROM engagement.events_enriched"
                                    + (" FINAL" if final else ""))[0][0])
        except lib.ClickHouseError:  # the table appears with engage's start
            return 0

    def redis_sum(self):
        keys = [f"content:count:{c}" for c in CONTENT_IDS]
        return sum(int(v or 0) for v in self.redis.mget(keys))

    def dlq_pending(self, outbox):
        return dlq_pending(self.uri, outbox)

    def slot_lsn(self, slot):
        return lsn_int(lib.pg_scalar(self.uri, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                               "WHERE slot_name = %s", (slot,)))

    def reset_clickhouse(self):
        lib.ch_reset(self.stack.clickhouse_url)


def dlq_pending(uri, outbox):
    """Pending rows of the outbox (outbox=True) or the dead letters (every other origin)."""
    where = "origin = 'outbox'" if outbox else "origin <> 'outbox'"
    try:
        return int(lib.pg_scalar(uri, "SELECT count(*) FROM engage_dlq WHERE replayed_at IS NULL "
                                      f"AND discarded_at IS NULL AND {where}"))
    except Exception as exc:  # noqa: BLE001 - the table appears with the first parked row
        if "engage_dlq" in str(exc) and "does not exist" in str(exc):
            return 0
        raise


def metrics(admin_addr):
    """{name{labels}: value} of engage's /metrics."""
    out = {}
    with urllib.request.urlopen(f"http://{admin_addr}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


# ------------------------------------------------------------ setup


# (row name, slot, sinks); the slots are made by a short engage run with the same sinks.
ENGAGE_ROWS = [
    ("engage -> stdout (/dev/null)", "bench_stdout", "stdout"),
    ("engage -> ClickHouse", "engage_slot", "clickhouse"),
    ("engage -> ClickHouse + Redis", "bench_ch_redis", "clickhouse,redis"),
    (ALL, "bench_all", "clickhouse,redis,http"),
]
REDIS_DBS = {"bench_ch_redis": 1, "bench_all": 2}  # emptied once, before the slots are made


def make_slots(b):
    lib.redis_client(b.stack.redis_url).flushall()
    for name, slot, sinks in ENGAGE_ROWS:
        p = lib.EngageProcess(["run", "--slot", slot, "--sinks", sinks, "--state-dir", str(b.work / slot),
                               "--log-level", "warn"], env=b.env(sinks, slot), log_dir=b.work,
                              name=f"setup-{slot}", binary=b.binary).start()
        lib.wait_for(lambda: lib.pg_scalar(b.uri, "SELECT count(*) FROM pg_replication_slots "
                                                  "WHERE active AND slot_name = %s", (slot,)) == 1,
                     60, what=f"the slot of {name}")
        assert p.stop() == 0, p.log_tail()
    for slot in ("bench_recv_1", "bench_recv_2"):
        subprocess.run([PGBIN / "pg_recvlogical", "-d", b.uri, "--slot", slot, "--plugin", "pgoutput",
                        "--create-slot"], check=True)


def write_backlog(b):
    t0 = time.monotonic()
    batch = 10_000
    for start in range(0, b.events, batch):
        n = min(batch, b.events - start)
        lib.pg_exec(b.uri, "INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
                           "SELECT 1 + ((g::bigint * 7919) %% 1100)::int, g %% 100000, (ARRAY['play','pause','finish'])[g %% 3 + 1], "
                           "now() - make_interval(secs => g %% 3600), CASE WHEN g %% 10 = 0 THEN NULL ELSE g %% 600000 END, "
                           "(ARRAY['web','ios','android','tv'])[g %% 4 + 1] FROM generate_series(%s, %s) g",
                    (start, start + n - 1))
    b.end_lsn = lib.pg_scalar(b.uri, "SELECT pg_current_wal_lsn()::text")
    print(f"backlog: {b.events} events in {-(-b.events // batch)} transactions, written in "
          f"{time.monotonic() - t0:.1f}s; WAL end {b.end_lsn}", flush=True)


# ------------------------------------------------------------ the rows


def row(secs, rss=None, cpu=None, servers=None, detail=""):
    return {"secs": secs, "rss": rss, "cpu": cpu, "servers": servers, "detail": detail}


def servers_delta(b, before):
    after = servers_cpu(b.stack)
    return sum(after[k] - before[k] for k in after)


def recvlogical(b, slot):
    """pg_recvlogical over the backlog into /dev/null; its RSS and CPU from wait4()."""
    s0 = servers_cpu(b.stack)
    t0 = time.monotonic()
    p = subprocess.Popen([PGBIN / "pg_recvlogical", "-d", b.uri, "--slot", slot, "--start",
                          "-o", "proto_version=1", "-o", "publication_names=engage_pub",
                          "--endpos", b.end_lsn, "-f", "/dev/null", "--no-loop"])
    # wait4's ru_maxrss would count the forking Python's pages before exec: VmHWM is
    # sampled instead, every 10 ms until it exits (it is flat once streaming).
    rss = 0.0
    while True:
        try:
            rss = max(rss, vm_hwm_mib(p.pid))
        except OSError:
            pass
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.01)
    secs = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, f"pg_recvlogical exited {p.returncode}"
    return row(secs, rss, ru.ru_utime + ru.ru_stime, servers_delta(b, s0))


def engage_stdout(b, slot):
    s0 = servers_cpu(b.stack)
    t0 = time.monotonic()
    with open(os.devnull, "wb") as devnull:
        sp = subprocess.Popen([b.binary, "run", "--slot", slot, "--sinks", "stdout",
                               "--state-dir", str(b.work / slot), "--log-level", "warn",
                               "--admin-addr", "off", *b.extra], env={**os.environ, "ENGAGE_PG": b.uri},
                              stdout=devnull)
        lib.wait_for(lambda: b.slot_lsn(slot) >= lsn_int(b.end_lsn), DEADLINE_S, interval=0.05,
                     what="engage stdout to reach the end")
        secs = time.monotonic() - t0
        rss, cpu = vm_hwm_mib(sp.pid), cpu_seconds(sp.pid)
        sp.terminate()
        assert sp.wait(30) == 0
    return row(secs, rss, cpu, servers_delta(b, s0))


def wait_all(waiters, t0, proc, on_poll=None, interval=0.1):
    """Polls each (label, predicate) until it holds; {label: seconds after t0}.
    A predicate is not asked again once it held."""
    reached = {}
    while len(reached) < len(waiters):
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.returncode}):\n{proc.log_tail()}")
        if time.monotonic() - t0 > DEADLINE_S:
            raise lib.WaitTimeout(f"after {DEADLINE_S}s only {sorted(reached)} of {[w for w, _ in waiters]}\n"
                                  f"{proc.log_tail()}")
        for label, pred in waiters:
            if label not in reached and pred():
                reached[label] = time.monotonic() - t0
        if on_poll is not None:
            on_poll(time.monotonic() - t0, proc)
        time.sleep(interval)
    return reached


def engage_sinks(b, slot, sinks, waiters, on_poll=None, on_done=None):
    """engage run into sinks until every waiter holds; then the checkpoint, VmHWM,
    CPU, and on_done(proc) before it is stopped."""
    s0 = servers_cpu(b.stack)
    t0 = time.monotonic()
    p = lib.EngageProcess(["run", "--slot", slot, "--sinks", sinks, "--state-dir", str(b.work / slot),
                           "--log-level", "warn", *b.extra], env=b.env(sinks, slot), log_dir=b.work, name=slot,
                          binary=b.binary).start()
    try:
        reached = wait_all(waiters, t0, p, on_poll)
        secs = max(reached.values())
        lib.wait_for(lambda: b.slot_lsn(slot) >= lsn_int(b.end_lsn) - 1_000_000, 120,
                     what="the checkpoint to follow")
        extra = on_done(p) if on_done is not None else ""
        rss, cpu = vm_hwm_mib(p.pid), cpu_seconds(p.pid)
    finally:
        rc = p.stop()
    assert rc == 0, f"engage exited {rc}\n{p.log_tail()}"
    detail = ", ".join(f"{k} {v:.2f}s" for k, v in reached.items()) if len(reached) > 1 else ""
    return row(secs, rss, cpu, servers_delta(b, s0), "; ".join(x for x in (detail, extra) if x))


def check_ch_redis(b, failures, what):
    final = b.ch_count(final=True)
    if final != b.events:
        failures.append(f"{what}: ClickHouse FINAL count {final}, expected {b.events}")
    total = sum(int(b.redis.get(k) or 0) for k in b.redis.scan_iter("content:count:*", count=2000))
    if total != b.events:
        failures.append(f"{what}: Redis content:count:* sum {total}, expected {b.events}")


def check_api(b, failures):
    lo, hi, n = lib.pg_query(b.uri, "SELECT min(event_id), max(event_id), count(*) FROM engagement_events")[0]
    ids = b.api_get("/events/ids", timeout=120)
    if n != b.events or hi - lo + 1 != n:
        failures.append(f"PostgreSQL holds {n} events, ids {lo}..{hi}: not the workload")
    elif ids != list(range(lo, hi + 1)):
        failures.append(f"the API holds {len(ids)} distinct events, not PostgreSQL's {n} (ids {lo}..{hi})")
    for outbox, what in ((True, "outbox"), (False, "dead letters")):
        pending = b.dlq_pending(outbox)
        if pending:
            failures.append(f"{pending} events pending in the {what}")


class AllSinks:
    """The all-sinks row's waiters and what it watches on the way: when the API
    got its first event, the outbox gauge's peak, and (--timeline) every sink's
    progress every few seconds."""

    def __init__(self, b, timeline):
        self.b, self.timeline = b, timeline
        self.first_api = None
        self.api_done = False
        self.peak_outbox = 0
        self.samples = []
        self._next_metrics = self._next_sample = 0.0
        self.t0 = time.monotonic()

    def api_all(self):
        unique = int(self.b.api_get("/stats").get("unique", 0))
        if unique and self.first_api is None:
            self.first_api = time.monotonic() - self.t0
        self.api_done = unique >= self.b.events
        return self.api_done

    def waiters(self):
        """The outbox is asked only once the API holds every event (it is empty
        before the first spill too)."""
        n = self.b.events
        return [("ClickHouse", lambda: self.b.ch_count() >= n),
                ("Redis", lambda: self.b.redis_sum() >= n),
                ("API", self.api_all),
                ("outbox empty", lambda: self.api_done and self.b.dlq_pending(True) == 0)]

    def poll(self, secs, proc):
        if secs >= self._next_metrics:
            self._next_metrics = secs + 1
            try:
                m = metrics(proc.admin_addr)
            except OSError:
                return
            self.peak_outbox = max(self.peak_outbox, int(m.get("engage_http_outbox_pending", 0)))
            if self.timeline and secs >= self._next_sample:
                self._next_sample = secs + 5
                stats = self.b.api_get("/stats")
                analyzes = lib.pg_scalar(self.b.uri, "SELECT coalesce(sum(autoanalyze_count + analyze_count), 0) "
                                                     "FROM pg_stat_user_tables WHERE relname = 'engage_dlq'")
                self.samples.append((secs, self.b.ch_count(), self.b.redis_sum(), stats.get("unique", 0),
                                     stats.get("received", 0), int(m.get("engage_http_outbox_pending", 0)),
                                     int(m.get('engage_dlq_parked_total{origin="outbox"}', 0)), int(analyzes)))

    def done(self, proc):
        m = metrics(proc.admin_addr)
        parked = int(m.get('engage_dlq_parked_total{origin="outbox"}', 0))
        delivered = int(m.get("engage_http_outbox_delivered_total", 0))
        return (f"API's first event {self.first_api or float('nan'):.2f}s; outbox: {parked} events parked, "
                f"{delivered} delivered from it, gauge peak {self.peak_outbox}")


def all_sinks(b, slot, sinks, timeline, failures):
    w = AllSinks(b, timeline)
    r = engage_sinks(b, slot, sinks, w.waiters(), on_poll=w.poll, on_done=w.done)
    stats = b.api_get("/stats")
    r["detail"] += (f"; API received {stats.get('received')}, unique {stats.get('unique')}, "
                    f"duplicates {stats.get('duplicates')}")
    check_ch_redis(b, failures, "all sinks")
    check_api(b, failures)
    if w.samples:
        print("\nall sinks, every 5 s (dlq_analyzes: ANALYZE runs of engage_dlq so far, autovacuum's or others'):")
        print("".join(f"{h:>14}" for h in ("t/s", "clickhouse", "redis", "api_unique", "api_received",
                                            "outbox_gauge", "outbox_parked", "dlq_analyzes")))
        for s in w.samples:
            print("".join(f"{x:14.1f}" if isinstance(x, float) else f"{x:14d}" for x in s))
    return r


def run_rows(b, timeline, failures):
    results = {"pg_recvlogical -> /dev/null (1st)": recvlogical(b, "bench_recv_1")}
    for name, slot, sinks in ENGAGE_ROWS:
        if sinks == "stdout":
            results[name] = engage_stdout(b, slot)
            continue
        b.reset_clickhouse()
        b.use_row(slot)
        if "http" in sinks:
            results[name] = all_sinks(b, slot, sinks, timeline, failures)
        elif "redis" in sinks:
            results[name] = engage_sinks(b, slot, sinks, [("ClickHouse", lambda: b.ch_count() >= b.events),
                                                          ("Redis", lambda: b.redis_sum() >= b.events)])
            check_ch_redis(b, failures, name)
        else:
            results[name] = engage_sinks(b, slot, sinks, [("ClickHouse", lambda: b.ch_count() >= b.events)])
            final = b.ch_count(final=True)
            if final != b.events:
                failures.append(f"{name}: ClickHouse FINAL count {final}, expected {b.events}")
    results["pg_recvlogical -> /dev/null (2nd)"] = recvlogical(b, "bench_recv_2")
    return results


def report(b, results):
    def num(x, fmt):
        return format(x, fmt) if x is not None else "-"

    base = min(results["pg_recvlogical -> /dev/null (1st)"]["secs"], results["pg_recvlogical -> /dev/null (2nd)"]["secs"])
    print()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    print(f"(baseline: the faster pg_recvlogical run, {base:.2f}s; RSS = peak resident memory of the consumer "
          "process; CPU = its CPU seconds; servers = PostgreSQL + ClickHouse + Redis CPU seconds meanwhile)")
    print(f"{'consumer':48} {'seconds':>8} {'events/s':>10} {'vs pg_recvlogical':>18} {'RSS MiB':>8} "
          f"{'CPU s':>7} {'servers':>8}")
    for name, r in results.items():
        print(f"{name:48} {r['secs']:8.2f} {b.events / r['secs']:10,.0f} {base / r['secs']:17.2f}x "
              f"{num(r['rss'], '8.1f')} {num(r['cpu'], '7.2f')} {num(r['servers'], '8.2f')}")
    for name, r in results.items():
        if r["detail"]:
            print(f"  {name}: {r['detail']}")
    print(f"  mock-api (not in engage's figures): peak RSS {vm_hwm_mib(b.api.pid):.1f} MiB, "
          f"CPU {cpu_seconds(b.api.pid):.2f}s")
    a = results[ALL]
    ratio = base / a["secs"]
    print()
    print(f"bar: all sinks >= {RATIO_BAR}x pg_recvlogical: {ratio:.2f}x: {'met' if ratio >= RATIO_BAR else 'MISSED'}")
    print(f"bar: engage's peak RSS into all sinks < {RSS_BAR_MIB} MiB: {a['rss']:.1f} MiB: "
          f"{'met' if a['rss'] < RSS_BAR_MIB else 'MISSED'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--bin", default=str(lib.REPO_ROOT / "build" / "engage"))
    ap.add_argument("--timeline", action="store_true", help="print every sink's progress every 5 s (all sinks)")
    ap.add_argument("--engage-args", default="", help="more engage run arguments for every timed row, "
                                                      "e.g. \"--queue-mb 16\"")
    args = ap.parse_args()
    with bench_stack() as (stack, uri, work):
        b = Bench(stack, uri, work, Path(args.bin).resolve(), args.events, shlex.split(args.engage_args))
        if b.extra:
            print(f"every engage row runs with {shlex.join(b.extra)}")
        b.start_api()
        try:
            make_slots(b)
            write_backlog(b)
            failures = []
            results = run_rows(b, args.timeline, failures)
            report(b, results)
        finally:
            b.api.stop()
    if failures:
        print("\nWRONG RESULT:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"exact: every sink of the all-sinks row holds the {args.events} events once")


if __name__ == "__main__":
    main()
