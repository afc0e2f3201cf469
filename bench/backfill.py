#!/usr/bin/env python3
"""Backfill throughput: N events in the table, read back in (event_ts, event_id)
order. Measured in one run on one stack, so the figures compare as ratios:

  psql COPY     the same rows in the same order, keyset-free, into /dev/null:
                the floor set by PostgreSQL reading and sorting the range
  engage stdout backfill pages + enrich + JSON, written to /dev/null
  engage clickhouse, redis, both
                the whole backfill into each sink alone, then both (exit 0: every
                page durable); Redis also with run's 1,000 events per script call

Each row: seconds, events/s, COPY's time over the row's (vs COPY), the row's time over
COPY's (x COPY: the bar is ClickHouse + Redis within 4x), and engage's peak RSS.

usage: bench/backfill.py [--events N] [--bin build/engage]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import lib  # noqa: E402
from benchstack import bench_stack  # noqa: E402

COLUMNS = "event_id, content_id, user_id, event_type, event_ts, duration_ms, device"
BOTH = "engage backfill -> ClickHouse + Redis"
BAR = 4.0  # the bar: the whole backfill within 4x of COPY


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--bin", default=str(lib.REPO_ROOT / "build" / "engage"))
    args = ap.parse_args()
    binary = Path(args.bin).resolve()
    with bench_stack() as (stack, uri, work):
        t0 = time.monotonic()
        lib.pg_exec(uri, "INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
                         "SELECT 1 + ((g::bigint * 7919) %% 1100)::int, g %% 100000, (ARRAY['play','pause','finish'])[g %% 3 + 1], "
                         "timestamp '2026-01-01' + make_interval(secs => (g::bigint * 7) %% 2592000), "
                         "CASE WHEN g %% 10 = 0 THEN NULL ELSE g %% 600000 END, "
                         "(ARRAY['web','ios','android','tv'])[g %% 4 + 1] FROM generate_series(1, %s) g",
                    (args.events,))
        lib.pg_exec(uri, "VACUUM ANALYZE engagement_events")
        print(f"backfill: {args.events} events over 30 days of event_ts, written in {time.monotonic() - t0:.1f}s")
        rng = ("--start", "2026-01-01", "--end", "2026-02-01")
        results = {}

        def copy_out():
            t0 = time.monotonic()
            with open(os.devnull, "wb") as devnull:
                subprocess.run(["psql", "-q", uri, "-c",
                                f"COPY (SELECT {COLUMNS} FROM engagement_events WHERE event_ts >= '2026-01-01' "
                                "AND event_ts < '2026-02-01' ORDER BY event_ts, event_id) TO STDOUT"],
                               check=True, stdout=devnull)
            return time.monotonic() - t0

        peak_mib = {}

        def backfill(name, sinks, env, *extra):
            t0 = time.monotonic()
            with open(os.devnull, "wb") as devnull, open(work / f"{name}.log", "wb") as log:
                proc = subprocess.Popen([binary, "backfill", *rng, "--sinks", sinks, "--state-dir",
                                         str(work / name), "--log-level", "warn", *extra],
                                        env={**os.environ, **env}, stdout=devnull, stderr=log)
                # wait4's rusage: the peak RSS of engage itself (ru_maxrss, KiB on Linux)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
            secs = time.monotonic() - t0
            assert proc.returncode == 0, (work / f"{name}.log").read_text()
            peak_mib[name] = usage.ru_maxrss / 1024
            return secs

        # COPY runs first and last (the first run pays for reading the table into the
        # page cache); the faster of the two is the baseline.
        results["psql COPY ... ORDER BY -> /dev/null (1st)"] = copy_out()
        rows = {}  # result name -> the backfill's name, for its peak RSS
        rows["engage backfill -> stdout (/dev/null)"] = "stdout"
        results["engage backfill -> stdout (/dev/null)"] = backfill("stdout", "stdout", {"ENGAGE_PG": uri})
        sinks_env = {"ENGAGE_PG": uri, "ENGAGE_CLICKHOUSE": stack.clickhouse_url, "ENGAGE_REDIS": stack.redis_url}
        # Each sink alone into an empty server, then both together into empty servers.
        rows["engage backfill -> ClickHouse"] = "ch"
        results["engage backfill -> ClickHouse"] = backfill("ch", "clickhouse", sinks_env)
        rows["engage backfill -> Redis"] = "redis"
        results["engage backfill -> Redis"] = backfill("redis", "redis", sinks_env)
        lib.redis_reset(stack.redis_url)
        # run's default: calls that hold Redis a few ms each, at the price of throughput
        rows["engage backfill -> Redis, 1000 per call"] = "redis1k"
        results["engage backfill -> Redis, 1000 per call"] = backfill(
            "redis1k", "redis", sinks_env, "--redis-call-events", "1000")
        lib.ch_reset(stack.clickhouse_url)
        lib.redis_reset(stack.redis_url)
        rows[BOTH] = "sinks"
        results[BOTH] = backfill("sinks", "clickhouse,redis", sinks_env)
        final = int(lib.ch_query(stack.clickhouse_url, "SELECT count() FROM engagement.events_enriched FINAL")[0][0])
        assert final == args.events, final
        counted = sum(int(v) for v in lib.redis_client(stack.redis_url).mget(
            [f"content:count:{c}" for c in range(1, 1101)]) if v is not None)
        assert counted == args.events, counted
        results["psql COPY ... ORDER BY -> /dev/null (2nd)"] = copy_out()

        print()
        print(f"{'reader':44} {'seconds':>8} {'events/s':>12} {'vs COPY':>8} {'x COPY':>7} "
              f"{'peak RSS':>9}")
        base = min(results["psql COPY ... ORDER BY -> /dev/null (1st)"],
                   results["psql COPY ... ORDER BY -> /dev/null (2nd)"])
        print(f"(baseline: the faster COPY run, {base:.2f}s)")
        for name, secs in results.items():
            rss = f"{peak_mib[rows[name]]:6.0f} MiB" if name in rows else ""
            print(f"{name:44} {secs:8.2f} {args.events / secs:12,.0f} {base / secs:7.2f}x "
                  f"{secs / base:6.2f}x {rss:>9}")
        both = results[BOTH] / base
        print(f"bar: ClickHouse + Redis within {BAR:g}x of COPY: {both:.2f}x, "
              f"{'met' if both <= BAR else 'missed'}")
        print(f"ClickHouse FINAL count {final}, Redis content:count total {counted}: exact")



if __name__ == "__main__":
    main()
