#!/usr/bin/env python3
"""The brief's own stack, end to end, measured: PostgreSQL -> Debezium (Kafka Connect) ->
Kafka -> PySpark Structured Streaming (job.py) -> ClickHouse, Redis, HTTP API.
Run through bench/seedstack/run.sh, which installs what is missing and runs this file in
the bench's virtual environment.

Steps: `stack.sh up DIR kafka connect` in a temporary directory (PostgreSQL, Redis,
ClickHouse, a KRaft broker, Kafka Connect with the Debezium plugin); a database `seed`
with scripts/schema.sql and content rows; `engage mock-api` as the API; the topic
dbserver1.public.engagement_events created with --partitions partitions (key content_id);
the Debezium connector (tests/e2e/lib.py's debezium_config: pgoutput, schemas on,
message.key.columns content_id, only public.engagement_events) and a wait until its slot
is active; then the Spark job (local[2], 1 s trigger) and the workload. Afterwards every
sink is checked against PostgreSQL and everything is stopped.

Measured:
- first_event_s: one event is committed the moment the Spark job is launched (the stack
  and the connector are already streaming); the time from the launch until that event is
  in Redis (content:last). This is the job's start-up (JVM, SparkSession, Kafka source,
  first batch) plus one trip through the pipeline. The stack's own start-up (stack.sh up,
  connector running and streaming) is printed beside it, and the sum of the three (cold
  start: nothing running to first event delivered).
- Then --warmup seconds of load at the first rate, not measured (Spark's first batches
  are slow: JIT, code generation, Python workers), so the phases see its steady state.
- Commit -> visible in Redis, per rate (open loop: a transaction every 10 ms holding
  rate/100 events, so 100/s = 1 event per transaction, 1,000/s = 10; event_ts is set to
  now() in UTC). Every 5th transaction starts with a marker event: a content_id of a
  pool of 600 marker contents, used in turn (a marker content is reused only after 30 s
  at the 20 markers/s). Its commit time is when COMMIT returned to the generator
  (time.monotonic); a poller thread in the same process MGETs content:last:{id} of the
  outstanding markers every 5 ms, and the marker is visible when the stored event_id is
  >= its own (events of one content are in order on one partition, and content:last keeps
  the newest). Latency = first poll that sees it - commit time; resolution ~5 ms.
  p50/p99/max over the markers of the phase (nearest rank).
- CPU: utime+stime (+ reaped children) from /proc/PID/stat of the broker, Connect and the
  Spark process tree (the Python driver, the spark-submit JVM, Python workers), from the
  start of a phase's load until Redis's content:count values add up to every event
  committed so far (the phase drained), divided by the phase's events, per million.
  PostgreSQL, Redis, ClickHouse and the mock API are printed apart (shared with engage).
- Peak RSS: VmHWM summed over the same processes, read at the end of each phase (VmHWM
  is the peak since the process started, so a later phase includes earlier peaks).

Writes CSV (stack,rate,p50_ms,p99_ms,max_ms,cpu_s_per_million,peak_rss_mb,first_event_s)
to --csv (default bench/seedstack/results.csv) and prints a table.

usage: run.py --jars-dir DIR [--rates 100,1000] [--duration 30] [--warmup 15] [--partitions 2]
              [--http-batch 100] [--bin build/engage] [--csv PATH] [--keep]
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg2.extras

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import lib  # noqa: E402

TOPIC = "dbserver1.public.engagement_events"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTENTS = 1000  # ordinary content rows 1..1000 (every 10th has a NULL length)
ZERO_LENGTH = 1500  # a content row whose length is 0 (pct NULL)
UNKNOWN = 999999  # no content row: left join, content fields NULL
MARKER_BASE, MARKERS = 2001, 600
TX_PER_S = 100
MARKER_EVERY = 5


def note(msg):
    print(f"seedstack: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


# ------------------------------------------------------------ processes


def proc_table():
    """{pid: (ppid, cpu ticks incl. reaped children)} of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        out[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return out


def tree(root, table):
    children = {}
    for pid, (pp, _) in table.items():
        children.setdefault(pp, []).append(pid)
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            pids.append(pid)
            todo += children.get(pid, [])
    return pids


def cpu_seconds(roots):
    table = proc_table()
    return {name: sum(table[p][1] for p in tree(root, table)) / CLK_TCK for name, root in roots.items()}


def vm_hwm_mb(roots):
    """{name: MB}: VmHWM summed over each root's process tree."""
    table = proc_table()
    out = {}
    for name, root in roots.items():
        total = 0
        for pid in tree(root, table):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        out[name] = total / 1024
    return out


# ------------------------------------------------------------ workload


class Markers:
    """Marker events committed and not yet seen in content:last; a poller thread."""

    def __init__(self, redis_url):
        self.r = lib.redis_client(redis_url)
        self.lock = threading.Lock()
        self.pending = {}  # event_id -> (cid, commit_t)
        self.latencies = []  # (event_id, seconds)
        self.wall = {}  # event_id -> (phase, commit wall-clock time): for commit -> Kafka
        self.phase = "warm-up"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def add(self, event_id, cid, commit_t, commit_wall):
        with self.lock:
            self.pending[event_id] = (cid, commit_t)
            self.wall[event_id] = (self.phase, commit_wall)

    def run(self):
        while not self.stop.is_set():
            with self.lock:
                items = list(self.pending.items())
            if items:
                values = self.r.mget([f"content:last:{cid}" for _, (cid, _) in items])
                now = time.monotonic()
                seen = []
                for (eid, (cid, t)), v in zip(items, values):
                    if v is not None and json.loads(v)["event_id"] >= eid:
                        seen.append((eid, now - t))
                if seen:
                    with self.lock:
                        for eid, lat in seen:
                            self.pending.pop(eid, None)
                        self.latencies += seen
            time.sleep(0.005)

    def take(self):
        with self.lock:
            out, self.latencies = self.latencies, []
            return out

    def outstanding(self):
        with self.lock:
            return len(self.pending)

    def close(self):
        self.stop.set()
        self.thread.join(5)


def event_row(rng, cid, lengths):
    """(content_id, user_id, event_type, duration_ms, device): a mix of NULL durations,
    exact half-hundredth ties and ordinary values."""
    length = lengths.get(cid)
    roll = rng.random()
    if roll < 0.05:
        duration = None
    elif roll < 0.15 and length:
        duration = 5 * length * (2 * rng.randrange(0, 40) + 1)  # pct exactly k.5 hundredths
    else:
        duration = rng.randrange(0, 600000)
    return (cid, rng.randrange(1, 100000), rng.choice(("play", "pause", "view", "finish")), duration,
            rng.choice(("web", "ios", "android", "tv")))


def commit_events(conn, rows):
    """One transaction; returns (event_ids in row order, commit time)."""
    with conn.cursor() as cur:
        ids = psycopg2.extras.execute_values(
            cur,
            "INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device, event_ts) "
            "VALUES %s RETURNING event_id",
            rows, template="(%s, %s, %s, %s, %s, now() AT TIME ZONE 'UTC')", fetch=True)
    conn.commit()
    return [i[0] for i in ids], time.monotonic(), time.time()


def drive(conn, markers, rate, duration, rng, lengths, marker_cursor):
    """Open-loop load: a transaction every 1/TX_PER_S s with rate/TX_PER_S events; every
    MARKER_EVERY-th starts with a marker. Returns (events, marker_cursor, worst lateness)."""
    per_tx = max(1, rate // TX_PER_S)
    txs = int(duration * TX_PER_S)
    t0 = time.monotonic()
    events, late = 0, 0.0
    for j in range(txs):
        due = t0 + j / TX_PER_S
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            late = max(late, now - due)
        rows = []
        marker = j % MARKER_EVERY == 0
        if marker:
            cid = MARKER_BASE + marker_cursor % MARKERS
            marker_cursor += 1
            rows.append(event_row(rng, cid, lengths))
        while len(rows) < per_tx:
            roll = rng.random()
            cid = UNKNOWN if roll < 0.01 else ZERO_LENGTH if roll < 0.02 else rng.randrange(1, CONTENTS + 1)
            rows.append(event_row(rng, cid, lengths))
        ids, t, wall = commit_events(conn, rows)
        if marker:
            markers.add(ids[0], rows[0][0], t, wall)
        events += len(rows)
    return events, marker_cursor, late


def batch_times(log_path):
    """Durations (s) of the job's micro-batches so far, from its log."""
    import re
    text = Path(log_path).read_text(errors="replace")
    return [float(x) for x in re.findall(r"seedstack-job \S+ batch \d+ done in ([0-9.]+)s", text)]


def batch_parts(log_path, skip):
    """Median (plan, read+enrich+write, top) seconds of the batches after the first skip."""
    import re
    rows = re.findall(r"batch \d+ done in [0-9.]+s \(plan and content schema ([0-9.]+)s, "
                      r"read, enrich and write ([0-9.]+)s, top rebuild ([0-9.]+)s\)",
                      Path(log_path).read_text(errors="replace"))[skip:]
    return [percentile(sorted(float(r[i]) for r in rows), 50) for i in range(3)]


def commit_to_kafka(bootstrap, wall):
    """{phase: [seconds]} from each marker's commit (wall clock) to its Kafka record's
    timestamp (CreateTime: when Connect's producer made it), read back with kcat."""
    import re
    proc = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", TOPIC, "-e", "-q", "-f", "%T %s\n"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    rx = re.compile(rb'^(\d+) .*?"after":\{"event_id":(\d+),')
    out = {}
    for line in proc.stdout.splitlines():
        m = rx.match(line)
        if m and int(m.group(2)) in wall:
            phase, t = wall[int(m.group(2))]
            out.setdefault(phase, []).append(int(m.group(1)) / 1000 - t)
    return out


def redis_count_sum(r, cids):
    total = 0
    cids = list(cids)
    for i in range(0, len(cids), 1000):
        total += sum(int(v) for v in r.mget([f"content:count:{c}" for c in cids[i:i + 1000]]) if v is not None)
    return total


def wait_drained(r, cids, expected, timeout, what):
    t0 = time.monotonic()
    while True:
        got = redis_count_sum(r, cids)
        if got >= expected:
            return got
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: Redis counts add up to {got}, expected {expected} after {timeout}s")
        time.sleep(0.1)


# ------------------------------------------------------------ checks


def check_sinks(stack, uri, r, api_url, cids, total):
    """Every sink got every event, and ClickHouse's rows are enriched as DESIGN.md says."""
    problems = []
    ch = stack.clickhouse_url
    rows = lib.ch_query(ch, "SELECT count(), uniqExact(event_id) FROM engagement.events_enriched FINAL")
    ch_count, ch_unique = int(rows[0][0]), int(rows[0][1])
    raw = int(lib.ch_query(ch, "SELECT count() FROM engagement.events_enriched")[0][0])
    redis_sum = redis_count_sum(r, cids)
    with urllib.request.urlopen(api_url + "/stats", timeout=10) as resp:
        stats = json.loads(resp.read())
    note(f"check: PostgreSQL {total} events; ClickHouse count() FINAL {ch_count}, uniqExact {ch_unique}, "
         f"rows {raw}; Redis content:count sum {redis_sum}; API /stats {stats}")
    if ch_count != total or ch_unique != total:
        problems.append(f"ClickHouse has {ch_count} rows FINAL / {ch_unique} unique, PostgreSQL {total}")
    if redis_sum != total:
        problems.append(f"Redis content:count adds up to {redis_sum}, PostgreSQL {total}")
    if stats.get("unique") != total:
        problems.append(f"API unique {stats.get('unique')}, PostgreSQL {total}")

    # Enrichment and derived fields against PostgreSQL's own exact arithmetic (numeric
    # round() is half away from zero).
    want = {}
    for row in lib.pg_query(uri, """
            SELECT e.event_id, e.content_id, to_char(e.event_ts, 'YYYY-MM-DD HH24:MI:SS'), c.content_type,
                   c.length_seconds,
                   CASE WHEN e.duration_ms IS NULL OR c.length_seconds IS NULL THEN NULL
                        ELSE (e.duration_ms::numeric / 1000)::text END,
                   CASE WHEN e.duration_ms IS NULL OR c.length_seconds IS NULL OR c.length_seconds = 0 THEN NULL
                        ELSE round(e.duration_ms::numeric / (c.length_seconds::numeric * 1000), 2)::text END
            FROM engagement_events e LEFT JOIN content c USING (content_id)"""):
        want[int(row[0])] = row[1:]
    got = lib.ch_query(ch, "SELECT event_id, content_id, toString(event_ts), content_type, length_seconds, "
                           "toString(engagement_seconds), toString(engagement_pct) "
                           "FROM engagement.events_enriched FINAL")

    def norm(v):
        if v is None:
            return None
        if "." in v:
            v = v.rstrip("0").rstrip(".")
        return v

    bad = 0
    for row in got:
        eid = int(row[0])
        w = want.get(eid)
        g = (int(row[1]), row[2], row[3], None if row[4] is None else int(row[4]), norm(row[5]), norm(row[6]))
        g = (g[0], g[1][:19]) + g[2:]  # DateTime64(6) prints microseconds
        if w is None or g != (w[0], w[1], w[2], w[3], norm(w[4]), norm(w[5])):
            bad += 1
            if bad <= 5:
                note(f"check: event {eid}: ClickHouse {g}, PostgreSQL {w}")
    if bad:
        problems.append(f"{bad} ClickHouse rows differ from PostgreSQL's enrichment")

    # TTLs of the four keys.
    ttl_last = r.ttl(f"content:last:{MARKER_BASE}")
    buckets = list(r.scan_iter("top:content:bucket:*", count=1000))
    ttl_bucket = max((r.ttl(k) for k in buckets), default=None)
    ttl_top = r.ttl("top:content:10m")
    note(f"check: TTLs content:last {ttl_last}s, newest bucket <= {ttl_bucket}s ({len(buckets)} buckets), "
         f"top:content:10m {ttl_top}s ({r.zcard('top:content:10m')} members)")
    if not (0 < ttl_last <= 3600) or ttl_bucket is None or not (0 < ttl_bucket <= 900) or not (0 < ttl_top <= 120):
        problems.append("a Redis key lacks its TTL")
    bucket_total = sum(int(s) for k in buckets for _, s in r.zrange(k, 0, -1, withscores=True))
    if bucket_total != total:
        problems.append(f"the minute buckets hold {bucket_total} events, expected {total}")
    return problems


# ------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jars-dir", required=True)
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--duration", type=float, default=30, help="seconds of load per rate")
    ap.add_argument("--warmup", type=float, default=15, help="seconds of unmeasured load first")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--http-batch", type=int, default=100)
    ap.add_argument("--bin", default=str(REPO / "build" / "engage"))
    ap.add_argument("--csv", default=str(HERE / "results.csv"))
    ap.add_argument("--keep", action="store_true", help="leave the temporary directories")
    args = ap.parse_args()
    rates = [int(x) for x in args.rates.split(",")]
    jars = sorted(str(p) for p in Path(args.jars_dir).glob("*.jar"))
    if not jars:
        sys.exit(f"seedstack: no jars in {args.jars_dir}")

    stack_dir = tempfile.mkdtemp(prefix="engage-seedstack-")
    work = Path(tempfile.mkdtemp(prefix="engage-seedstack-work-"))
    spark = api = None
    spark_log = None
    markers = None
    failed = []
    try:
        t = time.monotonic()
        lib._run_stack("up", stack_dir, "kafka", "connect", timeout=900)
        stack_up_s = time.monotonic() - t
        stack = lib.Stack(stack_dir, owned=True)
        kafka = lib.KafkaStack(stack_dir)
        note(f"stack up in {stack_up_s:.1f}s ({stack_dir}); broker {kafka.bootstrap}, Connect {kafka.connect_url}")

        uri = lib.pg_create_database(stack.pg_uri, "seed")
        lib.pg_exec(uri, f"""
            INSERT INTO content SELECT g, (ARRAY['video','article','podcast'])[g % 3 + 1],
                   CASE WHEN g % 10 = 0 THEN NULL ELSE 30 + g END, 'title' FROM generate_series(1, {CONTENTS}) g;
            INSERT INTO content VALUES ({ZERO_LENGTH}, 'video', 0, 'zero');
            INSERT INTO content SELECT g, 'video', 60 + g % 500, 'marker'
                   FROM generate_series({MARKER_BASE}, {MARKER_BASE + MARKERS - 1}) g;""")
        lengths = {int(c): l for c, l in lib.pg_query(uri, "SELECT content_id, length_seconds FROM content")}
        cids = list(lengths) + [UNKNOWN]
        lib.ch_reset(stack.clickhouse_url)
        lib.redis_reset(stack.redis_url)
        r = lib.redis_client(stack.redis_url)

        port_file = work / "mock-api.port"
        api = lib.EngageProcess(["mock-api", "--listen", "127.0.0.1:0", "--port-file", port_file],
                                log_dir=work, name="mock-api", binary=args.bin).start()
        lib.wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30, what="mock-api port file")
        api_url = f"http://127.0.0.1:{json.loads(port_file.read_text())['port']}"

        t = time.monotonic()
        lib.create_topic(kafka.bootstrap, TOPIC, partitions=args.partitions)
        config = lib.debezium_config(uri, slot="seed_slot", publication="seed_pub",
                                     tables=("public.engagement_events",))
        lib.connector_create(kafka.connect_url, "seed", config)
        lib.wait_connector_running(kafka.connect_url, "seed", timeout=120)
        lib.wait_for(lambda: lib.pg_scalar(stack.pg_uri, "SELECT active FROM pg_replication_slots "
                                                         "WHERE slot_name = 'seed_slot'"), 120, interval=0.1,
                     what="Debezium's slot to be active")
        connector_s = time.monotonic() - t
        note(f"Debezium streaming {connector_s:.1f}s after the connector was created")

        pg = lib.pg_connect(uri)
        pg.autocommit = False
        rng = random.Random(42)
        markers = Markers(stack.redis_url)

        # The Spark job, and the first event committed at its launch.
        jdbc = f"jdbc:postgresql://127.0.0.1:{stack.pg_port}/seed"
        venv_python = sys.executable
        spark_log = open(work / "spark.log", "wb")
        cmd = [venv_python, str(HERE / "job.py"), "--bootstrap", kafka.bootstrap, "--topic", TOPIC,
               "--jdbc", jdbc, "--clickhouse", stack.clickhouse_url, "--redis", stack.redis_url,
               "--http", api_url, "--checkpoint", str(work / "checkpoint"), "--jars", ",".join(jars),
               "--http-batch", str(args.http_batch)]
        t_launch = time.monotonic()
        spark = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=spark_log, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=work)
        first_cid = MARKER_BASE
        ids, _, _ = commit_events(pg, [event_row(rng, first_cid, lengths)])
        total = 1
        marker_cursor = 1

        def first_seen():
            if spark.poll() is not None:
                raise lib.GiveUp(f"the Spark job exited ({spark.returncode}); see {work / 'spark.log'}")
            v = r.get(f"content:last:{first_cid}")
            return v is not None and json.loads(v)["event_id"] >= ids[0]

        try:
            lib.wait_for(first_seen, 300, interval=0.01, what="the first event in Redis")
        except (lib.GiveUp, lib.WaitTimeout):
            print((work / "spark.log").read_text(errors="replace")[-6000:], file=sys.stderr)
            raise
        first_event_s = time.monotonic() - t_launch
        note(f"first event in Redis {first_event_s:.2f}s after the Spark job was launched")
        # Warm-up, not measured: the job's first batches are slow (JIT, code generation,
        # Python workers starting); the phases measure its steady state.
        if args.warmup > 0:
            n, marker_cursor, _ = drive(pg, markers, rates[0], args.warmup, rng, lengths, marker_cursor)
            total += n
            wait_drained(r, cids, total, 300, "warm-up")
            lib.wait_for(lambda: markers.outstanding() == 0, 30, what="every warm-up marker seen")
            note(f"warm-up: {n} events at {rates[0]}/s, not measured")
        time.sleep(3)

        roots = {"kafka": kafka.pid("kafka"), "connect": kafka.pid("connect"), "spark": spark.pid}
        others = {"postgres": stack.pid("pg"), "redis": stack.pid("redis"), "clickhouse": stack.pid("clickhouse"),
                  "mock-api": api.pid}
        results = []
        seen_batches = len(batch_times(work / "spark.log"))
        for rate in rates:
            markers.take()
            markers.phase = rate
            c0, o0 = cpu_seconds(roots), cpu_seconds(others)
            t0 = time.monotonic()
            n, marker_cursor, late = drive(pg, markers, rate, args.duration, rng, lengths, marker_cursor)
            load_s = time.monotonic() - t0
            total += n
            wait_drained(r, cids, total, 300, f"rate {rate}")
            drain_s = time.monotonic() - t0 - load_s
            lib.wait_for(lambda: markers.outstanding() == 0, 30, what="every marker seen")
            c1, o1 = cpu_seconds(roots), cpu_seconds(others)
            rss_parts = vm_hwm_mb(roots)
            rss = sum(rss_parts.values())
            lat = sorted(x for _, x in markers.take())
            cpu = {k: c1[k] - c0[k] for k in c1}
            ocpu = {k: o1[k] - o0[k] for k in o1}
            pipeline_cpu = sum(cpu.values())
            row = {
                "stack": "debezium-kafka-spark", "rate": rate,
                "p50_ms": round(percentile(lat, 50) * 1000, 1), "p99_ms": round(percentile(lat, 99) * 1000, 1),
                "max_ms": round(lat[-1] * 1000, 1) if lat else float("nan"),
                "cpu_s_per_million": round(pipeline_cpu / n * 1e6, 1),
                "peak_rss_mb": round(rss), "first_event_s": round(first_event_s, 2),
            }
            results.append(row)
            note(f"rate {rate}/s: {n} events in {load_s:.1f}s (achieved {n / load_s:.0f}/s, worst lateness "
                 f"{late * 1000:.0f} ms), drained {drain_s:.1f}s after; {len(lat)} markers; "
                 f"CPU s " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()) +
                 "; outside the pipeline " + ", ".join(f"{k} {v:.1f}" for k, v in ocpu.items()) +
                 "; peak RSS MB " + ", ".join(f"{k} {v:.0f}" for k, v in rss_parts.items()))
            bt = sorted(batch_times(work / "spark.log")[seen_batches:])
            parts = batch_parts(work / "spark.log", seen_batches)
            seen_batches += len(bt)
            note(f"rate {rate}/s: {len(bt)} micro-batches, foreachBatch took median {percentile(bt, 50):.2f}s, "
                 f"max {bt[-1] if bt else float('nan'):.2f}s (medians: plan and content schema {parts[0]:.2f}s, "
                 f"read, enrich and write {parts[1]:.2f}s, top rebuild {parts[2]:.3f}s); load average {os.getloadavg()[0]:.2f} "
                 f"(the machine is shared: other processes count in the latencies, not in the CPU)")
            time.sleep(3)

        kafka_lat = commit_to_kafka(kafka.bootstrap, markers.wall)
        for rate in rates:
            lat = sorted(kafka_lat.get(rate, []))
            note(f"rate {rate}/s: commit -> Kafka record (Debezium; the record's CreateTime against the commit's "
                 f"wall clock, {len(lat)} markers): p50 {percentile(lat, 50) * 1000:.0f} ms, "
                 f"p99 {percentile(lat, 99) * 1000:.0f} ms, max {lat[-1] * 1000 if lat else float('nan'):.0f} ms")

        # Every sink got every event (the last batch's top rebuild included).
        time.sleep(2)
        failed = check_sinks(stack, uri, r, api_url, cids, total)

        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(results[0]))
            w.writeheader()
            w.writerows(results)
        print()
        print(f"Brief's stack (Debezium 3.6.1 on Connect 4.3.0, Kafka 4.3.0 KRaft, PySpark 4.2.0 local[2], "
              f"1 s trigger, {args.partitions} partitions)")
        print(f"stack up {stack_up_s:.1f}s; connector streaming {connector_s:.1f}s; "
              f"first event {first_event_s:.2f}s after launching the Spark job "
              f"(cold start to first event: {stack_up_s + connector_s + first_event_s:.1f}s)")
        hdr = ("rate/s", "p50 ms", "p99 ms", "max ms", "CPU s/M ev", "peak RSS MB", "first ev s")
        print("  ".join(f"{h:>11}" for h in hdr))
        for row in results:
            print("  ".join(f"{v:>11}" for v in (row["rate"], row["p50_ms"], row["p99_ms"], row["max_ms"],
                                                 row["cpu_s_per_million"], row["peak_rss_mb"],
                                                 row["first_event_s"])))
        print(f"results: {args.csv}")
        if failed:
            print("SINK CHECK FAILED:\n  " + "\n  ".join(failed))
        else:
            print(f"sinks: all {total} events in ClickHouse (FINAL), Redis counts and the API; enrichment "
                  "matches PostgreSQL")
        pg.close()
    finally:
        if markers:
            markers.close()
        if spark is not None and spark.poll() is None:
            spark.send_signal(signal.SIGTERM)  # the job stops its query and SparkSession
            try:
                spark.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(spark.pid, signal.SIGKILL)  # its own session: the JVM and workers it started
                spark.wait(30)
        if spark is not None:
            try:
                os.killpg(spark.pid, signal.SIGKILL)  # leftovers of the job's session, if any
            except ProcessLookupError:
                pass
        if spark_log:
            spark_log.close()
        if api is not None:
            api.stop()
        try:
            lib._run_stack("down", stack_dir, timeout=300)
        except Exception as exc:  # noqa: BLE001
            note(f"stack down: {exc}")
        if args.keep:
            note(f"kept {stack_dir} and {work}")
        else:
            shutil.rmtree(stack_dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
