#!/usr/bin/env python3
"""engage against the brief's stack: the same workload driven into three stacks in turn, on
the same servers (one `stack.sh up DIR kafka connect`: PostgreSQL, Redis, ClickHouse, a
KRaft broker, Kafka Connect with Debezium), one table, a CSV and a PNG.

  brief    the brief's stack as bench/seedstack builds it: Debezium (Kafka Connect) ->
           Kafka (2 partitions, key content_id) -> PySpark Structured Streaming
           (bench/seedstack/job.py, local[2], 1 s trigger) -> ClickHouse, Redis, API
  direct   `engage run` (pgoutput slot) -> ClickHouse, Redis, API
  kafka    `engage capture` (2 partitions) -> Kafka -> `engage run --source kafka`
           -> ClickHouse, Redis, API

Each stack gets a database of its own with the same content rows, an `engage mock-api` of
its own as the API, and empty sinks (ClickHouse's table dropped, Redis flushed). The
workload, the latency markers, the poller, the CPU and memory readers and the sink checks
are bench/seedstack/run.py's own functions, imported (not copied); the Spark job is
bench/seedstack/job.py, launched as run.py launches it. Debezium's connector and Connect
are stopped after the brief's stack, the broker is stopped during engage direct and
started afresh for engage via Kafka (so its peak memory is its own run's).

Per stack:
- first event: the stack's processes are launched (brief: the connector is created and
  the Spark job launched at the same moment, the broker and the Connect worker already
  running; direct: `engage run`; kafka: capture, then the consumer as soon as capture
  streams, the broker running); as soon as the stack's replication slot is active one event is committed; the
  time from the launch until it is in Redis (content:last).
- --warmup s of unmeasured load at the first rate.
- per rate (default 100, 1,000, 10,000 events/s, --duration s each): run.py's open-loop
  generator (100 transactions a second of rate/100 events; every 5th transaction starts
  with a marker event) and its poller (MGET content:last of the outstanding markers every
  5 ms): PostgreSQL commit -> visible in Redis, p50/p99/max over the phase's markers
  (nearest rank). The phase ends when ClickHouse (count()), Redis (the content:count sum)
  and the API (/stats unique) all hold every event committed, or --bound s after the load
  stopped; then the markers still not seen count with their age at that moment, shown as
  ">" (a lower bound), and the row says the stack fell behind (it says so too when the
  sinks got the last events more than 10 s after the load stopped: a backlog built up).
- CPU: utime+stime (+ reaped children) of the stack's own process trees from the start of
  the load to the end of the phase, divided by the events delivered meanwhile, per
  million: brief = broker + Connect + the Spark tree (Python driver, JVM, Python workers);
  direct = engage run; kafka = capture + consumer + broker (engage's part printed too).
  The shared servers (PostgreSQL with its backends, the generator's included; Redis;
  ClickHouse; the mock API) are printed apart.
- sustained: --drain-events events inserted at once (INSERT ... SELECT, transactions of
  10,000, server-side) while the stack runs; events/s = events delivered into all three
  sinks (the least of the three counts) over the time from the first INSERT until every
  event is in all three, or until --drain-bound s (then a lower bound: "not drained").
- peak RSS: VmHWM summed over the stack's own processes at the end of its run.
- then run.py's sink checks (every event in ClickHouse FINAL, Redis and the API; every
  ClickHouse row's enrichment and derived fields against PostgreSQL's arithmetic; TTLs),
  when the stack drained.

Writes bench/compare-results.csv (one row per stack and phase) and
bench/compare-latency.png (p50 and p99 against rate, log scales, one colour per stack),
and prints the date, the machine (nproc, memory, load average) and the table.

Run with any python3: it runs bench/seedstack/run.sh --help once (which installs pyspark
and the Spark job's jars into ${ENGAGE_CACHE:-~/.cache/engage}), installs matplotlib into
the same virtual environment if missing, and runs itself there.

usage: bench/compare.py [--stacks brief,direct,kafka] [--rates 100,1000,10000]
                        [--duration 20] [--warmup 10] [--bound 60] [--drain-events 300000]
                        [--drain-bound 150] [--bin build/engage] [--csv PATH] [--png PATH]
                        [--no-check] [--keep]
"""

import argparse
import csv
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEED = HERE / "seedstack"
CACHE = Path(os.environ.get("ENGAGE_CACHE", Path.home() / ".cache" / "engage"))
VENV = CACHE / "seedstack-venv"
PYSPARK_VERSION = "4.2.0"  # bench/seedstack/run.sh's


def note(msg):
    print(f"compare {time.strftime('%H:%M:%S')}: {msg}", file=sys.stderr, flush=True)


def bootstrap():
    """Run in the seed stack's virtual environment (pyspark, redis, psycopg2, matplotlib)."""
    if Path(sys.prefix).resolve() == VENV.resolve() or os.environ.get("ENGAGE_COMPARE_IN_VENV"):
        return
    note("making sure the seed stack's virtual environment and jars are there (bench/seedstack/run.sh)")
    subprocess.run(["bash", str(SEED / "run.sh"), "--help"], check=True, stdout=subprocess.DEVNULL)
    py = VENV / "bin" / "python"
    if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        note("installing matplotlib into the seed stack's virtual environment (for the PNG)")
        if subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"]).returncode != 0:
            note("matplotlib did not install: the PNG will be made with gnuplot if there is one, else skipped")
    os.environ["ENGAGE_COMPARE_IN_VENV"] = "1"
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


def jars_dir():
    """The directory run.sh lays the Spark job's jars into: its key is the sha256 of pom.xml,
    run.sh and the pyspark version (run.sh's KEY); else the newest complete one."""
    key = hashlib.sha256((SEED / "pom.xml").read_bytes() + (SEED / "run.sh").read_bytes()
                         + f"{PYSPARK_VERSION}\n".encode()).hexdigest()[:12]
    d = CACHE / "seedstack" / f"jars-{key}"
    if (d / ".stamp").exists():
        return d
    done = sorted((p.parent for p in (CACHE / "seedstack").glob("jars-*/.stamp")), key=lambda p: p.stat().st_mtime)
    if not done:
        sys.exit("compare: no Spark jars laid out; run bench/seedstack/run.sh --help")
    return done[-1]


def import_seed():
    spec = importlib.util.spec_from_file_location("seedstack_run", SEED / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    bootstrap()

seed = import_seed()  # bench/seedstack/run.py: workload, markers, CPU and memory, checks
lib = seed.lib  # tests/e2e/lib.py

LABELS = {"brief": "brief's stack (Debezium -> Kafka -> Spark)", "direct": "engage direct",
          "kafka": "engage via Kafka (capture + run --source kafka)"}


def machine():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    la = os.getloadavg()
    return {"nproc": os.cpu_count(), "mem_gib": round(mem, 1), "load": f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}",
            "kernel": platform.release()}


# ------------------------------------------------------------ sinks: what is delivered


class Sinks:
    def __init__(self, stack, api_url, cids):
        self.ch = stack.clickhouse_url
        self.r = lib.redis_client(stack.redis_url)
        self.api_url = api_url
        self.cids = cids

    def counts(self):
        try:
            ch = int(lib.ch_query(self.ch, "SELECT count() FROM engagement.events_enriched")[0][0])
        except Exception:  # noqa: BLE001 - the table does not exist before the first write
            ch = 0
        redis = seed.redis_count_sum(self.r, self.cids)
        with urllib.request.urlopen(self.api_url + "/stats", timeout=10) as resp:
            api = int(json.loads(resp.read()).get("unique", 0))
        return {"clickhouse": ch, "redis": redis, "api": api}

    def delivered(self):
        return min(self.counts().values())

    def wait(self, total, deadline, alive):
        """Until every sink holds total events or the deadline (monotonic); (ok, delivered)."""
        while True:
            d = self.delivered()
            if d >= total:
                return True, d
            if time.monotonic() > deadline:
                return False, d
            alive()
            time.sleep(0.2)


# ------------------------------------------------------------ the three stacks


class Brief:
    """Debezium on Connect -> Kafka -> the seed stack's Spark job."""

    name = "brief"

    def __init__(self, env, uri, api_url, work):
        self.env, self.uri, self.api_url, self.work = env, uri, api_url, work
        self.slot = "cmp_brief_slot"
        self.spark = None
        self.log = None

    def prepare(self):
        lib.create_topic(self.env.kafka.bootstrap, seed.TOPIC, partitions=2)

    def launch(self):
        env, stack = self.env, self.env.stack
        config = lib.debezium_config(self.uri, slot=self.slot, publication="cmp_brief_pub",
                                     tables=("public.engagement_events",))
        lib.connector_create(env.kafka.connect_url, "cmp_brief", config)
        jars = sorted(str(p) for p in env.jars.glob("*.jar"))
        self.log = open(self.work / "spark.log", "wb")
        cmd = [sys.executable, str(SEED / "job.py"), "--bootstrap", env.kafka.bootstrap, "--topic", seed.TOPIC,
               "--jdbc", f"jdbc:postgresql://127.0.0.1:{stack.pg_port}/{urllib.parse.urlsplit(self.uri).path.lstrip('/')}",
               "--clickhouse", stack.clickhouse_url, "--redis", stack.redis_url, "--http", self.api_url,
               "--checkpoint", str(self.work / "checkpoint"), "--jars", ",".join(jars), "--http-batch", "100"]
        self.spark = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=self.work,
                                      env=dict(os.environ, SPARK_LOCAL_IP="127.0.0.1",
                                               PYSPARK_PYTHON=sys.executable))

    def slots(self):
        return [self.slot]

    def alive(self):
        if self.spark.poll() is not None:
            raise lib.GiveUp(f"the Spark job exited ({self.spark.returncode}):\n"
                             + (self.work / "spark.log").read_text(errors="replace")[-4000:])

    def roots(self):
        k = self.env.kafka
        return {"kafka": k.pid("kafka"), "connect": k.pid("connect"), "spark": self.spark.pid}

    def engage_roots(self):
        return {}

    def stop(self):
        if self.spark is not None and self.spark.poll() is None:
            self.spark.send_signal(signal.SIGTERM)
            try:
                self.spark.wait(60)
            except subprocess.TimeoutExpired:
                pass
        if self.spark is not None:
            try:
                os.killpg(self.spark.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.spark.wait(30)
        if self.log:
            self.log.close()
        try:
            lib.connector_delete(self.env.kafka.connect_url, "cmp_brief")
        except Exception as exc:  # noqa: BLE001
            note(f"connector delete: {exc}")


class Direct:
    """engage run: PostgreSQL -> ClickHouse, Redis, API."""

    name = "direct"

    def __init__(self, env, uri, api_url, work):
        self.env, self.uri, self.api_url, self.work = env, uri, api_url, work
        self.proc = None

    def prepare(self):
        pass

    def launch(self):
        s = self.env.stack
        self.proc = lib.EngageProcess(["run", "--pg", self.uri, "--clickhouse", s.clickhouse_url, "--redis",
                                       s.redis_url, "--http", self.api_url, "--slot", "cmp_direct_slot",
                                       "--state-dir", self.work / "state", "--log-level", "warn"],
                                      log_dir=self.work, name="engage-run", binary=self.env.binary).start()

    def slots(self):
        return ["cmp_direct_slot"]

    def alive(self):
        if not self.proc.alive():
            raise lib.GiveUp(f"engage run exited ({self.proc.returncode}):\n{self.proc.log_tail()}")

    def roots(self):
        return {"engage run": self.proc.pid}

    def engage_roots(self):
        return self.roots()

    def stop(self):
        if self.proc is not None:
            rc = self.proc.stop(30)
            if rc not in (0, None):
                note(f"engage run exited {rc}:\n{self.proc.log_tail(20)}")


class ViaKafka:
    """engage capture -> Kafka -> engage run --source kafka."""

    name = "kafka"

    def __init__(self, env, uri, api_url, work):
        self.env, self.uri, self.api_url, self.work = env, uri, api_url, work
        self.capture = self.consumer = None

    def prepare(self):
        pass

    def launch(self):
        s, k = self.env.stack, self.env.kafka
        self.capture = lib.EngageProcess(["capture", "--pg", self.uri, "--kafka", k.bootstrap, "--topic-prefix",
                                          "cmpk", "--slot", "cmp_kafka_cap", "--partitions", "2", "--state-dir",
                                          self.work / "capture-state", "--log-level", "info"],
                                         log_dir=self.work, name="engage-capture", binary=self.env.binary).start()
        # The consumer once capture streams (its topics exist then: a consumer subscribed to a
        # topic that does not exist yet would wait for a metadata refresh).
        self.capture.wait_for_log(r'msg="streaming"', 120, what="capture to stream")
        self.consumer = lib.EngageProcess(["run", "--source", "kafka", "--kafka", k.bootstrap, "--topic",
                                           "cmpk.public.engagement_events", "--group", "cmpk", "--pg", self.uri,
                                           "--clickhouse", s.clickhouse_url, "--redis", s.redis_url,
                                           "--http", self.api_url, "--state-dir", self.work / "consumer-state",
                                           "--log-level", "warn"],
                                          log_dir=self.work, name="engage-consumer", binary=self.env.binary).start()

    def slots(self):
        return ["cmp_kafka_cap"]

    def alive(self):
        for p in (self.capture, self.consumer):
            if not p.alive():
                raise lib.GiveUp(f"{p.name} exited ({p.returncode}):\n{p.log_tail()}")

    def roots(self):
        return {"capture": self.capture.pid, "consumer": self.consumer.pid, "kafka": self.env.kafka.pid("kafka")}

    def engage_roots(self):
        return {"capture": self.capture.pid, "consumer": self.consumer.pid}

    def stop(self):
        for p in (self.consumer, self.capture):
            if p is not None:
                rc = p.stop(30)
                if rc not in (0, None):
                    note(f"{p.name} exited {rc}:\n{p.log_tail(20)}")


SHORT = {"brief": "brief's stack", "direct": "engage direct", "kafka": "engage via Kafka"}
STACKS = {"brief": Brief, "direct": Direct, "kafka": ViaKafka}


# ------------------------------------------------------------ measuring one stack


# A rate the stack kept up with drains within moments of the load's end; one it did not
# leaves a backlog: more than this many seconds to deliver the rest counts as falling behind.
BEHIND_S = 10


def pct(values, p):
    """Nearest-rank percentile of [(seconds, censored)]: (ms, censored)."""
    if not values:
        return float("nan"), False
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k][0] * 1000, v[k][1]


def fmt_ms(ms, censored=False):
    if ms != ms:
        return "n/a"
    s = f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"
    return (">" if censored else "") + s


def drop_slot(uri, slot):
    try:
        lib.wait_for(lambda: not lib.pg_scalar(uri, "SELECT coalesce(bool_or(active), false) FROM "
                                                    "pg_replication_slots WHERE slot_name = %s", (slot,)),
                     60, what=f"slot {slot} inactive")
        lib.pg_exec(uri, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,))
    except Exception as exc:  # noqa: BLE001
        note(f"drop slot {slot}: {exc}")


DRAIN_SQL = """
INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device, event_ts)
SELECT CASE WHEN g %% 100 = 0 THEN {unknown} WHEN g %% 100 = 1 THEN {zero} ELSE 1 + (g::bigint * 7919) %% {contents} END,
       1 + g %% 100000, (ARRAY['play','pause','view','finish'])[g %% 4 + 1],
       CASE WHEN g %% 20 = 0 THEN NULL WHEN g %% 100 = 3 THEN -(g %% 600000) ELSE g %% 600000 END,
       (ARRAY['web','ios','android','tv'])[g %% 4 + 1], now() AT TIME ZONE 'UTC'
FROM generate_series(%s, %s) g
"""


def run_stack(env, kind, args, rates):
    """Measure one stack; returns (rows for the CSV, summary dict)."""
    stack = env.stack
    work = Path(tempfile.mkdtemp(prefix=f"engage-compare-{kind}-"))
    env.works.append(work)
    db = f"cmp_{kind}"
    uri = lib.pg_create_database(stack.pg_uri, db)
    lib.pg_exec(uri, f"""
        INSERT INTO content SELECT g, (ARRAY['video','article','podcast'])[g % 3 + 1],
               CASE WHEN g % 10 = 0 THEN NULL ELSE 30 + g END, 'title' FROM generate_series(1, {seed.CONTENTS}) g;
        INSERT INTO content VALUES ({seed.ZERO_LENGTH}, 'video', 0, 'zero');
        INSERT INTO content SELECT g, 'video', 60 + g % 500, 'marker'
               FROM generate_series({seed.MARKER_BASE}, {seed.MARKER_BASE + seed.MARKERS - 1}) g;""")
    lengths = {int(c): l for c, l in lib.pg_query(uri, "SELECT content_id, length_seconds FROM content")}
    cids = list(lengths) + [seed.UNKNOWN]
    lib.ch_reset(stack.clickhouse_url)
    lib.redis_reset(stack.redis_url)
    r = lib.redis_client(stack.redis_url)

    port_file = work / "mock-api.port"
    api = lib.EngageProcess(["mock-api", "--listen", "127.0.0.1:0", "--port-file", port_file],
                            log_dir=work, name="mock-api", binary=env.binary).start()
    lib.wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30, what="mock-api port file")
    api_url = f"http://127.0.0.1:{json.loads(port_file.read_text())['port']}"
    sinks = Sinks(stack, api_url, cids)

    s = STACKS[kind](env, uri, api_url, work)
    markers = None
    rows, summary = [], {"stack": kind, "first_event_s": float("nan"), "sustained": float("nan"),
                         "sustained_note": "", "peak_rss_mb": float("nan"), "engage_rss_mb": None,
                         "check": "not run", "phases": {}}
    try:
        s.prepare()
        pg = lib.pg_connect(uri)
        pg.autocommit = False
        rng = random.Random(42)  # the same workload for every stack
        markers = seed.Markers(stack.redis_url)

        # First event: launch, commit one event as soon as the slot is active, wait for it.
        t_launch = time.monotonic()
        s.launch()

        def slot_active():
            s.alive()
            return all(lib.pg_scalar(uri, "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots "
                                          "WHERE slot_name = %s", (sl,)) for sl in s.slots())

        lib.wait_for(slot_active, 300, interval=0.02, what=f"{kind}: the slot active")
        slot_s = time.monotonic() - t_launch
        first_cid = seed.MARKER_BASE
        ids, _, _ = seed.commit_events(pg, [seed.event_row(rng, first_cid, lengths)])

        def first_seen():
            s.alive()
            v = r.get(f"content:last:{first_cid}")
            return v is not None and json.loads(v)["event_id"] >= ids[0]

        lib.wait_for(first_seen, 300, interval=0.01, what=f"{kind}: the first event in Redis")
        summary["first_event_s"] = first = time.monotonic() - t_launch
        summary["slot_s"] = slot_s
        note(f"{kind}: slot active {slot_s:.2f}s after launch, first event in Redis {first:.2f}s after launch")
        total, cursor = 1, 1

        if args.warmup > 0:
            n, cursor, _ = seed.drive(pg, markers, rates[0], args.warmup, rng, lengths, cursor)
            total += n
            ok, _ = sinks.wait(total, time.monotonic() + 120, s.alive)
            lib.wait_for(lambda: markers.outstanding() == 0, 60, what="every warm-up marker seen")
            note(f"{kind}: warm-up {n} events at {rates[0]}/s, not measured (drained: {ok})")
        time.sleep(2)

        roots = s.roots()
        others = {"postgres": stack.pid("pg"), "redis": stack.pid("redis"), "clickhouse": stack.pid("clickhouse"),
                  "mock-api": api.pid}

        def phase_row(phase, n, achieved, late, c0, o0, d0, t0, ok, delivered, lat, extra):
            c1, o1 = seed.cpu_seconds(roots), seed.cpu_seconds(others)
            rss_parts = seed.vm_hwm_mb(roots)
            cpu = {k: c1[k] - c0[k] for k in c1}
            ocpu = {k: o1[k] - o0[k] for k in o1}
            moved = max(1, delivered - d0)
            p50, p50c = pct(lat, 50)
            p99, p99c = pct(lat, 99)
            mx, mxc = pct(lat, 100)
            row = {"stack": kind, "phase": phase, "events": n, "achieved_per_s": round(achieved),
                   "generator_late_ms": round(late * 1000), "drained": "yes" if ok else "no",
                   "delivered_in_window": delivered - d0, "window_s": round(time.monotonic() - t0, 1),
                   "markers": len(lat), "markers_unseen": sum(1 for _, c in lat if c),
                   "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "max_ms": round(mx, 1),
                   "p50_censored": p50c, "p99_censored": p99c, "max_censored": mxc,
                   "cpu_s_per_million": round(sum(cpu.values()) / moved * 1e6, 1),
                   "engage_cpu_s_per_million": (round(sum(cpu[k] for k in s.engage_roots()) / moved * 1e6, 1)
                                                if s.engage_roots() else ""),
                   **{f"cpu_{k}_s": round(v, 2) for k, v in cpu.items()},
                   **{f"server_{k}_s_per_million": round(v / moved * 1e6, 1) for k, v in ocpu.items()},
                   "peak_rss_mb": round(sum(rss_parts.values())),
                   **{f"rss_{k}_mb": round(v) for k, v in rss_parts.items()},
                   "load1": round(os.getloadavg()[0], 2), **extra}
            note(f"{kind} {phase}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("stack", "phase")))
            return row

        for rate in rates:
            markers.take()
            markers.phase = rate
            c0, o0 = seed.cpu_seconds(roots), seed.cpu_seconds(others)
            d0 = sinks.delivered()
            t0 = time.monotonic()
            n, cursor, late = seed.drive(pg, markers, rate, args.duration, rng, lengths, cursor)
            load_s = time.monotonic() - t0
            total += n
            ok, delivered = sinks.wait(total, time.monotonic() + args.bound, s.alive)
            if ok:  # the markers' last polls (the sinks hold every event: content:last is set)
                try:
                    lib.wait_for(lambda: markers.outstanding() == 0, 10, what="every marker seen")
                except lib.WaitTimeout:
                    pass
            now = time.monotonic()
            lat = [(x, False) for _, x in markers.take()]
            with markers.lock:
                lat += [(now - t, True) for _, (_, t) in markers.pending.items()]
                markers.pending.clear()
            behind = time.monotonic() - t0 - load_s
            row = phase_row(rate, n, n / load_s, late, c0, o0, d0, t0, ok, delivered, lat,
                            {"load_s": round(load_s, 1), "caught_up_after_load_s": round(behind, 1) if ok else ""})
            if ok and behind > BEHIND_S:
                row["note"] = f"fell behind during the load; caught up {behind:.0f}s after it stopped"
                note(f"{kind} {rate}/s: {row['note']}")
            if not ok:
                row["note"] = (f"fell behind: {delivered:,} of {total:,} events in all three sinks "
                               f"{args.bound:.0f}s after the load stopped")
                note(f"{kind} {rate}/s: {row['note']}")
            rows.append(row)
            time.sleep(2)

        # Sustained: a backlog inserted at once.
        c0, o0 = seed.cpu_seconds(roots), seed.cpu_seconds(others)
        d0 = sinks.delivered()
        t0 = time.monotonic()
        start = 1_000_000_000
        n = args.drain_events
        conn = lib.pg_connect(uri)  # autocommit: one transaction per INSERT
        try:
            with conn.cursor() as cur:
                sql = DRAIN_SQL.format(unknown=seed.UNKNOWN, zero=seed.ZERO_LENGTH, contents=seed.CONTENTS)
                for i in range(0, n, 10_000):
                    cur.execute(sql, (start + i, start + min(i + 10_000, n) - 1))
        finally:
            conn.close()
        insert_s = time.monotonic() - t0
        total += n
        ok, delivered = sinks.wait(total, t0 + args.drain_bound, s.alive)
        elapsed = time.monotonic() - t0
        moved = delivered - d0
        summary["sustained"] = moved / elapsed
        summary["sustained_note"] = "" if ok else f"not drained: {moved:,} in {elapsed:.0f}s"
        row = phase_row("drain", n, n / insert_s, 0.0, c0, o0, d0, t0, ok, delivered, [],
                        {"load_s": round(insert_s, 1), "sustained_per_s": round(moved / elapsed)})
        if not ok:
            row["note"] = (f"not drained: {delivered:,} of {total:,} events in all three sinks after "
                           f"{args.drain_bound:.0f}s")
        rows.append(row)
        note(f"{kind}: backlog of {n:,} inserted in {insert_s:.1f}s; {moved:,} delivered into all three sinks in "
             f"{elapsed:.1f}s: {moved / elapsed:,.0f}/s ({'drained' if ok else 'NOT drained'})")

        rss_parts = seed.vm_hwm_mb(roots)
        summary["peak_rss_mb"] = sum(rss_parts.values())
        summary["rss_parts"] = rss_parts
        if s.engage_roots() and set(s.engage_roots()) != set(roots):
            summary["engage_rss_mb"] = sum(v for k, v in rss_parts.items() if k in s.engage_roots())
        pg.close()

        if args.no_check:
            summary["check"] = "skipped"
        elif not ok:
            summary["check"] = "skipped (not drained)"
        else:
            time.sleep(2)
            problems = seed.check_sinks(stack, uri, r, api_url, cids, total)
            summary["check"] = "; ".join(problems) if problems else f"exact ({total:,} events)"
        note(f"{kind}: sink check: {summary['check']}")
    except Exception as exc:  # noqa: BLE001 - the other stacks still run; the row says what happened
        import traceback
        traceback.print_exc()
        summary["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        note(f"{kind}: FAILED: {summary['error']}")
    finally:
        if markers:
            markers.close()
        s.stop()
        api.stop()
        for sl in s.slots():
            drop_slot(uri, sl)
    summary["rows"] = rows
    return rows, summary


# ------------------------------------------------------------ output


def table(summaries, rates):
    hdr = ["stack"] + [f"{r:,}/s p50 / p99 / max ms" for r in rates] + [
        "sustained ev/s", "CPU s/M ev at 1,000/s", "CPU s/M ev, backlog", "peak RSS MB", "first event s"]
    out = []
    for s in summaries:
        by = {row["phase"]: row for row in s["rows"]}
        cells = [LABELS[s["stack"]]]
        for r in rates:
            row = by.get(r)
            if row is None:
                cells.append("n/a")
                continue
            t = " / ".join(fmt_ms(row[f"{k}_ms"], row[f"{k}_censored"]) for k in ("p50", "p99", "max"))
            if row["drained"] != "yes":
                t += " (fell behind, not caught up)"
            elif row.get("caught_up_after_load_s", 0) > BEHIND_S:
                t += f" (fell behind; caught up {row['caught_up_after_load_s']:.0f} s after the load)"
            cells.append(t)
        sus = s["sustained"]
        cells.append("n/a" if sus != sus else f"{sus:,.0f}" + (" (not drained)" if s["sustained_note"] else ""))
        r1k = by.get(1000)
        cells.append(f"{r1k['cpu_s_per_million']:,.0f}" if r1k else "n/a")
        dr = by.get("drain")
        cells.append(f"{dr['cpu_s_per_million']:,.0f}" if dr else "n/a")
        rss = s["peak_rss_mb"]
        cells.append("n/a" if rss != rss else f"{rss:,.0f}" + (
            f" (engage {s['engage_rss_mb']:,.0f})" if s.get("engage_rss_mb") else ""))
        cells.append(f"{s['first_event_s']:.2f}")
        out.append(cells)
    return hdr, out


def plot(summaries, rates, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if shutil.which("gnuplot"):
            return plot_gnuplot(summaries, rates, path)
        note("no matplotlib and no gnuplot: no PNG")
        return False
    colors = {"brief": "tab:red", "direct": "tab:blue", "kafka": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for s in summaries:
        by = {row["phase"]: row for row in s["rows"]}
        xs = [r for r in rates if r in by]
        if not xs:
            continue
        for k, style in (("p99", "-"), ("p50", "--")):
            ys = [max(by[r][f"{k}_ms"], 0.1) for r in xs]
            ax.plot(xs, ys, style, marker="o", color=colors[s["stack"]], label=f"{SHORT[s['stack']]} {k}")
            for x, y, r in zip(xs, ys, xs):
                if (by[r][f"{k}_censored"] or by[r]["drained"] != "yes"
                        or by[r].get("caught_up_after_load_s", 0) > BEHIND_S):
                    ax.annotate("fell behind" if k == "p99" else "", (x, y), textcoords="offset points",
                                xytext=(-30, 8), fontsize=8, color=colors[s["stack"]])
                    ax.plot([x], [y], marker="^", markersize=10, color=colors[s["stack"]])
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 4)  # room for the labels above the top line
    ax.set_xticks(rates)
    ax.set_xticklabels([f"{r:,}" for r in rates])
    ax.set_xlabel("events/s (open loop)")
    ax.set_ylabel("PostgreSQL commit -> visible in Redis, ms")
    ax.set_title("commit -> Redis latency, p50 (dashed) and p99 (solid)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return True


def plot_gnuplot(summaries, rates, path):
    tmp = Path(tempfile.mkdtemp(prefix="engage-compare-plot-"))
    plots = []
    for s in summaries:
        by = {row["phase"]: row for row in s["rows"]}
        data = tmp / f"{s['stack']}.dat"
        data.write_text("".join(f"{r} {max(by[r]['p50_ms'], 0.1)} {max(by[r]['p99_ms'], 0.1)}\n"
                                for r in rates if r in by))
        plots += [f"'{data}' using 1:3 with linespoints title '{LABELS[s['stack']]} p99'",
                  f"'{data}' using 1:2 with linespoints dt 2 title '{LABELS[s['stack']]} p50'"]
    script = (f"set terminal pngcairo size 880,550; set output '{path}'; set logscale xy; set grid;"
              "set xlabel 'events/s'; set ylabel 'commit -> Redis, ms'; plot " + ", ".join(plots))
    ok = subprocess.run(["gnuplot", "-e", script]).returncode == 0
    shutil.rmtree(tmp, ignore_errors=True)
    return ok


# ------------------------------------------------------------ main


class Env:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", default="brief,direct,kafka")
    ap.add_argument("--rates", default="100,1000,10000")
    ap.add_argument("--duration", type=float, default=20, help="seconds of load per rate")
    ap.add_argument("--warmup", type=float, default=10, help="seconds of unmeasured load first")
    ap.add_argument("--bound", type=float, default=60, help="longest wait for a rate's events after its load")
    ap.add_argument("--drain-events", type=int, default=300_000)
    ap.add_argument("--drain-bound", type=float, default=150)
    ap.add_argument("--bin", default=os.environ.get("ENGAGE_BIN", str(REPO / "build" / "engage")))
    ap.add_argument("--csv", default=str(HERE / "compare-results.csv"))
    ap.add_argument("--png", default=str(HERE / "compare-latency.png"))
    ap.add_argument("--no-check", action="store_true", help="skip the sink checks")
    ap.add_argument("--keep", action="store_true", help="leave the temporary directories")
    args = ap.parse_args()
    rates = [int(x) for x in args.rates.split(",")]
    kinds = args.stacks.split(",")
    assert all(k in STACKS for k in kinds), kinds
    assert all(0 < r <= 20_000 for r in rates) and 0 < args.duration <= 60, "bounded load only"

    started = datetime.datetime.now(datetime.timezone.utc)
    m0 = machine()
    env = Env()
    env.binary = Path(args.bin).resolve()
    env.jars = jars_dir()
    env.works = []
    stack_dir = tempfile.mkdtemp(prefix="engage-compare-")
    summaries = []
    try:
        t = time.monotonic()
        lib._run_stack("up", stack_dir, "kafka", "connect", timeout=900)
        stack_up_s = time.monotonic() - t
        env.stack = lib.Stack(stack_dir, owned=True)
        env.kafka = lib.KafkaStack(stack_dir)
        note(f"servers up in {stack_up_s:.1f}s ({stack_dir}): PostgreSQL, Redis, ClickHouse, the broker "
             f"{env.kafka.bootstrap}, Connect {env.kafka.connect_url}")
        for kind in kinds:
            if kind == "kafka" and not env.kafka.running("kafka"):
                t = time.monotonic()
                env.kafka.start("kafka")
                note(f"broker started afresh in {time.monotonic() - t:.1f}s")
            note(f"=== {LABELS[kind]}")
            rows, summary = run_stack(env, kind, args, rates)
            summaries.append(summary)
            if kind == "brief":  # Connect is the brief's alone; the broker starts afresh for engage's
                for svc in ("connect", "kafka"):
                    try:
                        env.kafka.stop(svc)
                    except Exception as exc:  # noqa: BLE001
                        note(f"stop {svc}: {exc}")
    finally:
        try:
            lib._run_stack("down", stack_dir, timeout=300)
        except Exception as exc:  # noqa: BLE001
            note(f"stack down: {exc}")
        if args.keep:
            note(f"kept {stack_dir} and {', '.join(map(str, env.works))}")
        else:
            shutil.rmtree(stack_dir, ignore_errors=True)
            for w in env.works:
                shutil.rmtree(w, ignore_errors=True)

    m1 = machine()
    rows = [row for s in summaries for row in s["rows"]]
    if rows:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    made_png = plot(summaries, rates, args.png) if rows else False

    print()
    print(f"engage against the brief's stack, {started:%Y-%m-%d %H:%M} UTC; machine: {m0['nproc']} CPUs, "
          f"{m0['mem_gib']} GiB, Linux {m0['kernel']}; load average (1/5/15 min) {m0['load']} at the start, "
          f"{m1['load']} at the end; engage {env.binary}")
    print(f"servers (stack.sh up DIR kafka connect) up in {stack_up_s:.1f}s; {args.duration:g}s per rate, "
          f"{args.warmup:g}s warm-up, backlog {args.drain_events:,} events")
    hdr, cells = table(summaries, rates)
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for c in cells:
        print("| " + " | ".join(c) + " |")
    print()
    print("per phase (CPU s/M ev: the stack's own processes; servers: shared, printed apart):")
    for row in rows:
        servers = ", ".join(f"{k[len('server_'):-len('_s_per_million')]} {v:,.0f}" for k, v in row.items()
                            if k.startswith("server_"))
        print(f"  {row['stack']:6} {str(row['phase']):>6}: {row['events']:>7,} events, achieved "
              f"{row['achieved_per_s']:,}/s (generator late up to {row['generator_late_ms']} ms), drained "
              f"{row['drained']} in {row['window_s']}s; markers {row['markers']} ({row['markers_unseen']} unseen); "
              f"CPU s/M ev {row['cpu_s_per_million']:,.0f}"
              + (f" (engage's {row['engage_cpu_s_per_million']:,.0f})" if row['engage_cpu_s_per_million'] != "" else "")
              + f"; servers s/M ev: {servers}; peak RSS {row['peak_rss_mb']:,} MB; load {row['load1']}"
              + (f"; {row['note']}" if row.get("note") else ""))
    for s in summaries:
        extra = f"; ERROR {s['error']}" if s.get("error") else ""
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in s.get("rss_parts", {}).items())
        print(f"  {s['stack']}: peak RSS MB {parts}; slot active {s.get('slot_s', float('nan')):.2f}s after launch; "
              f"sink check: {s['check']}{extra}")
    by = {s["stack"]: s for s in summaries}

    def at(kind, phase, key):
        for row in by.get(kind, {}).get("rows", []):
            if row["phase"] == phase:
                return row[key]
        return float("nan")

    if "brief" in by:
        for other in ("direct", "kafka"):
            if other not in by:
                continue
            p99 = at("brief", 1000, "p99_ms") / at(other, 1000, "p99_ms")
            cpu = at("brief", 1000, "cpu_s_per_million") / at(other, 1000, "cpu_s_per_million")
            cpud = at("brief", "drain", "cpu_s_per_million") / at(other, "drain", "cpu_s_per_million")
            mem = by["brief"]["peak_rss_mb"] / by[other]["peak_rss_mb"]
            print(f"ratios brief's / {LABELS[other]}: p99 at 1,000/s {p99:,.0f}x; CPU per million at 1,000/s "
                  f"{cpu:,.1f}x, on the backlog {cpud:,.1f}x; peak memory {mem:,.1f}x")
    print(f"results: {args.csv}" + (f"; chart: {args.png}" if made_png else ""))
    return 1 if any(s.get("error") for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
