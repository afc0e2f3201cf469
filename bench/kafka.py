#!/usr/bin/env python3
"""Kafka mode's throughput, both ends, each beside a baseline measured in the same run on
the same stack (PostgreSQL, ClickHouse, Redis and a KRaft broker of its own):

  capture   N events already in WAL (transactions of 10,000), read through a replication
            slot created before the insert. `engage capture` turns them into Debezium
            records in PREFIX.public.engagement_events and is timed until its slot's
            confirmed_flush_lsn reaches the insert's end (it confirms only what the broker
            acknowledged); the time the topic first holds N records is printed too.
            Baseline: pg_recvlogical on a twin slot (same publication, pgoutput) into
            /dev/null up to the same LSN, run before and after capture (the faster run
            is the baseline, as in backlog.py).
  consumer  the N records capture wrote are the backlog: `engage run --source kafka`
            drains them into ClickHouse and Redis, timed until both sinks acknowledged N
            events (engage_sink_acked_events_total; then checked: count() FINAL = N and
            N bits in Redis's seen-set). Baseline: `kcat -C -e -o beginning` reading the
            same topic into /dev/null, run before and after engage.

For each engage process: its peak RSS (VmHWM) and the CPU seconds every process of the
stack spent during its phase (/proc utime+stime of each server and its children), which
says where the time goes on a 2-core machine where all of them share the cores.

usage: bench/kafka.py [--events N] [--partitions P] [--bin build/engage] [--perf DIR]
                      [--also OPTS] [--capture-also OPTS]
  --perf DIR  also `perf record -g` each engage process during its phase into DIR
              (slows it down a little: use its profile, not its figures)
  --also OPTS another consumer run after the first, with these options added (ClickHouse and
              Redis emptied before it, a group of its own), e.g. --also "-X fetch.wait.max.ms=10"
  --capture-also OPTS  another capture run after the first, with these options added, on a slot
              of its own created with the others (same position) and topics of its own
"""

import argparse
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import lib  # noqa: E402
import redis_expect as rx  # noqa: E402
from benchstack import bench_stack  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def topic_bytes(kafka, topic):
    """Bytes of topic's partitions' log directories on the broker's disk."""
    total = 0
    for d in (kafka.dir / "kafka").rglob(f"{topic}-*"):
        if d.is_dir() and d.name.rsplit("-", 1)[0] == topic:
            total += sum(f.stat().st_size for f in d.iterdir() if f.suffix == ".log")
    return total


def topic_records(bootstrap, topic, partitions):
    """Records in topic: the sum of its partitions' end offsets (nothing is deleted)."""
    args = ["kcat", "-Q", "-b", bootstrap]
    for p in range(partitions):
        args += ["-t", f"{topic}:{p}:-1"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
    total = 0
    for line in out.splitlines():
        # "TOPIC [P] offset N"
        parts = line.split()
        if len(parts) >= 4 and parts[-2] == "offset":
            total += int(parts[-1])
    return total


class CpuMeter:
    """CPU seconds of named process trees (a root pid and its descendants, plus what
    the root reaped), sampled at start and stop."""

    def __init__(self, roots):
        self.roots = {name: pid for name, pid in roots.items() if pid}

    @staticmethod
    def _stat(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            return None
        fields = s[s.rindex(")") + 2:].split()
        # fields[0] is state (field 3); utime 14, stime 15, cutime 16, cstime 17, ppid 4
        return int(fields[1]), sum(int(x) for x in fields[11:15])

    def sample(self):
        ppid, cpu = {}, {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = self._stat(int(d))
                if st:
                    ppid[int(d)], cpu[int(d)] = st
        children = {}
        for pid, pp in ppid.items():
            children.setdefault(pp, []).append(pid)
        out = {}
        for name, root in self.roots.items():
            total, todo = 0, [root]
            while todo:
                pid = todo.pop()
                total += cpu.get(pid, 0)
                todo += children.get(pid, [])
            out[name] = total / CLK_TCK
        return out

    def start(self):
        self._t0, self._s0 = time.monotonic(), self.sample()
        return self

    def stop(self):
        s1 = self.sample()
        self.wall = time.monotonic() - self._t0
        self.used = {k: s1.get(k, 0) - self._s0.get(k, 0) for k in self._s0}
        return self

    def line(self):
        parts = [f"{k} {v:.1f}s" for k, v in sorted(self.used.items(), key=lambda kv: -kv[1]) if v >= 0.05]
        return f"CPU over {self.wall:.1f}s wall (2 cores: {2 * self.wall:.1f} CPU-s available): " + ", ".join(parts)


def perf_start(perf_dir, pid, name):
    if not perf_dir:
        return None
    Path(perf_dir).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["perf", "record", "-q", "-g", "-F", "499", "-p", str(pid),
                             "-o", str(Path(perf_dir) / f"{name}.data")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_stop(p):
    if p is not None:
        p.send_signal(2)
        p.wait(60)


def table(title, unit, results, base_keys, n):
    base = min(results[k] for k in base_keys)
    print()
    print(title)
    w = max(len(k) for k in results)
    print(f"{'':{w}} {'seconds':>8} {unit + '/s':>12} {'vs baseline':>12}")
    for name, secs in results.items():
        print(f"{name:{w}} {secs:8.2f} {n / secs:12,.0f} {base / secs:11.2f}x")
    print(f"(baseline: the faster of the {len(base_keys)} runs, {base:.2f}s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--bin", default=str(lib.REPO_ROOT / "build" / "engage"))
    ap.add_argument("--perf", default=None)
    ap.add_argument("--capture-also", default=None, help="a second capture run with these extra options, "
                    "on a slot and topics of its own, e.g. \"-X compression.type=lz4\"")
    ap.add_argument("--also", default=None, help="a second consumer run with these extra options, "
                    "e.g. \"-X fetch.wait.max.ms=10\" (sinks emptied before it)")
    args = ap.parse_args()
    binary = Path(args.bin).resolve()
    n = args.events
    prefix = "bench"
    topic = f"{prefix}.public.engagement_events"
    with bench_stack() as (stack, uri, work):
        kafka = lib.KafkaStack(stack.dir).start("kafka")
        bootstrap = kafka.bootstrap
        roots = {"engage": None, "postgres": stack.pid("pg"), "kafka": kafka.pid("kafka"),
                 "clickhouse": stack.pid("clickhouse"), "redis": stack.pid("redis")}

        # capture's slot (with the publication and the topics, and the 1,000 content rows
        # as snapshot reads), then twin slots for pg_recvlogical, all before the backlog.
        # A capture run with --capture-also gets a slot and topics of its own.
        captures = [("capture", "bench_cap", prefix, [], "engage capture -> Kafka")]
        if args.capture_also:
            captures.append(("capture_also", "bench_cap_also", prefix + "_also", shlex.split(args.capture_also),
                             f"  the same with {args.capture_also}"))

        def capture(name, slot, pfx, extra):
            return lib.EngageProcess(
                ["capture", "--pg", uri, "--kafka", bootstrap, "--topic-prefix", pfx,
                 "--slot", slot, "--state-dir", work / f"{name}-state",
                 "--partitions", args.partitions, "--log-level", "info", *extra],
                log_dir=work, name=name, binary=binary)

        for name, slot, pfx, extra, _ in captures:
            p = capture(name, slot, pfx, extra).start()
            p.wait_for_log(r'msg="streaming"', 120, what="capture to stream")
            lib.wait_for(lambda: topic_records(bootstrap, f"{pfx}.public.content", args.partitions) >= 1000,
                         60, what="the content snapshot in its topic")
            assert p.stop() == 0, p.log_tail()
        for slot in ("bench_recv_1", "bench_recv_2"):
            subprocess.run([PG_BIN / "pg_recvlogical", "-d", uri, "--slot", slot, "--plugin", "pgoutput",
                            "--create-slot"], check=True)
        start_lsns = lib.pg_query(uri, "SELECT slot_name, confirmed_flush_lsn::text FROM pg_replication_slots "
                                       "ORDER BY slot_name")
        print(f"slots before the backlog: {', '.join(f'{s} {l}' for s, l in start_lsns)}")

        t0 = time.monotonic()
        batch = 10_000
        for start in range(0, n, batch):
            k = min(batch, n - start)
            lib.pg_exec(uri, "INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
                             "SELECT 1 + ((g::bigint * 7919) %% 1100)::int, g %% 100000, (ARRAY['play','pause','finish'])[g %% 3 + 1], "
                             "now() - make_interval(secs => g %% 3600), CASE WHEN g %% 10 = 0 THEN NULL ELSE g %% 600000 END, "
                             "(ARRAY['web','ios','android','tv'])[g %% 4 + 1] FROM generate_series(%s, %s) g",
                        (start, start + k - 1))
        end_lsn = lib.pg_scalar(uri, "SELECT pg_current_wal_lsn()::text")
        print(f"backlog: {n} events in {(n + batch - 1) // batch} transactions, written in "
              f"{time.monotonic() - t0:.1f}s; WAL end {end_lsn}; topic {topic}, {args.partitions} partition(s)")

        def recvlogical(slot):
            t0 = time.monotonic()
            subprocess.run([PG_BIN / "pg_recvlogical", "-d", uri, "--slot", slot, "--start",
                            "-o", "proto_version=1", "-o", "publication_names=engage_pub", "-P", "pgoutput",
                            "--endpos", end_lsn, "-f", "/dev/null", "--no-loop"], check=True)
            return time.monotonic() - t0

        def slot_lsn(slot):
            return lsn_int(lib.pg_scalar(uri, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                              "WHERE slot_name = %s", (slot,)))

        notes = []
        # ---------------------------------------------------------------- capture
        cap_results = {}
        cap_results["pg_recvlogical -> /dev/null (1st)"] = recvlogical("bench_recv_1")

        end = lsn_int(end_lsn)
        cap_stats = []

        def capture_phase(name, slot, pfx, extra, label):
            ev_topic = f"{pfx}.public.engagement_events"
            p = capture(name, slot, pfx, extra)
            meter = CpuMeter(roots)
            t0 = time.monotonic()
            p.start()
            meter.roots["engage"] = p.pid
            meter.start()
            perf = perf_start(args.perf, p.pid, name)
            t_topic = None
            deadline = t0 + 1800
            while True:
                now = time.monotonic()
                if t_topic is None and topic_records(bootstrap, ev_topic, args.partitions) >= n:
                    t_topic = now - t0
                if slot_lsn(slot) >= end:
                    t_slot = time.monotonic() - t0
                    break
                if not p.alive():
                    raise SystemExit(f"capture exited\n{p.log_tail()}")
                if now > deadline:
                    raise SystemExit(f"capture did not reach {end_lsn} in 1800s\n{p.log_tail()}")
                time.sleep(0.05)
            if t_topic is None:
                lib.wait_for(lambda: topic_records(bootstrap, ev_topic, args.partitions) >= n, 120,
                             interval=0.05, what=f"{n} records in {ev_topic}")
                t_topic = time.monotonic() - t0
            meter.stop()
            perf_stop(perf)
            rss = vm_hwm_kb(p.pid)
            m = metrics(p.admin_addr)
            assert p.stop() == 0, p.log_tail()
            records = topic_records(bootstrap, ev_topic, args.partitions)
            assert records == n, f"{records} records in {ev_topic}, expected {n}"
            cap_results[f"{label} (topic holds N records)"] = t_topic
            cap_results[f"{label} (slot confirmed at end)"] = t_slot
            cap_stats.append((label, rss, meter.line()))
            notes.append(f"{label.strip()}: engage_capture_messages_produced_total "
                         f"{m.get('engage_capture_messages_produced_total', 0):.0f}, delivery failures "
                         f"{m.get('engage_capture_delivery_failures_total', 0):.0f}; topic's log on disk "
                         f"{topic_bytes(kafka, ev_topic) / 1e6:,.0f} MB")

        for c in captures:
            capture_phase(*c)
        cap_results["pg_recvlogical -> /dev/null (2nd)"] = recvlogical("bench_recv_2")

        # --------------------------------------------------------------- consumer
        def kcat():
            t0 = time.monotonic()
            with open(os.devnull, "wb") as devnull:
                subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-e", "-o", "beginning", "-q"],
                               stdout=devnull, check=True, stdin=subprocess.DEVNULL)
            return time.monotonic() - t0

        con_results = {}
        con_results["kcat -C -> /dev/null (1st)"] = kcat()
        ch_key = 'engage_sink_acked_events_total{sink="clickhouse"}'
        rd_key = 'engage_sink_acked_events_total{sink="redis"}'

        def consume(group, extra, label):
            """One consumer from an empty ClickHouse and Redis, timed until both sinks
            acknowledged n events; returns (peak RSS kB, CPU line, note)."""
            lib.ch_reset(stack.clickhouse_url)
            lib.redis_reset(stack.redis_url)
            p = lib.EngageProcess(["run", "--source", "kafka", "--kafka", bootstrap, "--topic", topic,
                                   "--group", group, "--pg", uri, "--state-dir", work / f"{group}-state",
                                   "--clickhouse", stack.clickhouse_url, "--redis", stack.redis_url,
                                   "--log-level", "info", *extra],
                                  log_dir=work, name=group, binary=binary)
            meter = CpuMeter(roots)
            t0 = time.monotonic()
            p.start()
            meter.roots["engage"] = p.pid
            meter.start()
            perf = perf_start(args.perf, p.pid, group)

            def drained():
                if not p.alive():
                    raise lib.GiveUp(f"consumer exited\n{p.log_tail()}")
                try:
                    m = metrics(p.admin_addr)
                except OSError:
                    return False
                return m.get(ch_key, 0) >= n and m.get(rd_key, 0) >= n

            lib.wait_for(drained, 3600, interval=0.05, what="both sinks to acknowledge the backlog")
            con_results[label] = time.monotonic() - t0
            meter.stop()
            perf_stop(perf)
            rss = vm_hwm_kb(p.pid)
            t_acked = time.monotonic()
            try:
                lib.wait_for(lambda: metrics(p.admin_addr).get("engage_kafka_consumer_lag") == 0, 30,
                             interval=0.05, what="consumer lag 0")
                lag_note = f"consumer lag 0 {time.monotonic() - t_acked:.2f}s after both sinks acked"
            except lib.WaitTimeout:
                lag_note = f"consumer lag still {metrics(p.admin_addr).get('engage_kafka_consumer_lag')} 30s after"
            m = metrics(p.admin_addr)
            final = int(lib.ch_query(stack.clickhouse_url, "SELECT count() FROM engagement.events_enriched FINAL")[0][0])
            seen = rx.seen_count(stack.redis_url)
            src_events = m.get('engage_source_events_total{source="kafka"}', 0)
            sync_failed = m.get("engage_kafka_content_sync_failures_total", 0)
            assert p.stop() == 0, p.log_tail()
            note = (f"{label}: count() FINAL {final}, seen-set bits {seen}, {lag_note}, "
                    f"enrich misses {m.get('engage_enrich_misses_total', 0):.0f}, source events {src_events:.0f}, "
                    f"content sync failures {sync_failed:.0f}")
            assert final == n and seen == n, (final, seen)
            return rss, meter.line(), note

        runs = [("bench", [], "engage run --source kafka -> ClickHouse + Redis")]
        if args.also:
            runs.append(("bench_also", shlex.split(args.also), f"  the same with {args.also}"))
        con_stats = []
        for group, extra, label in runs:
            rss, cpu, note = consume(group, extra, label)
            con_stats.append((label, rss, cpu))
            notes.append(note)
        con_results["kcat -C -> /dev/null (2nd)"] = kcat()

        table(f"== capture: {n:,} events from WAL to Kafka ({args.partitions} partition(s))", "events",
              cap_results, ["pg_recvlogical -> /dev/null (1st)", "pg_recvlogical -> /dev/null (2nd)"], n)
        for label, rss, cpu in cap_stats:
            print(f"{label.strip()}: peak RSS (VmHWM) {rss / 1024:.1f} MiB; {cpu}")
        table(f"== consumer: {n:,} records drained from Kafka ({args.partitions} partition(s))", "events",
              con_results, ["kcat -C -> /dev/null (1st)", "kcat -C -> /dev/null (2nd)"], n)
        for label, rss, cpu in con_stats:
            print(f"{label.strip()}: peak RSS (VmHWM) {rss / 1024:.1f} MiB; {cpu}")
        print()
        for line in notes:
            print(line)


if __name__ == "__main__":
    main()
