#!/usr/bin/env python3
"""Backlog throughput: N events already in WAL, how fast does each consumer
drain them? Measured in one run on one stack, so the figures compare as ratios:

  pg_recvlogical  the same pgoutput stream (same publication) into /dev/null:
                  the floor set by PostgreSQL's decoding and the network
  engage stdout   decode + enrich + JSON, written to /dev/null
  engage clickhouse  the whole pipeline into ClickHouse (FINAL count reached)

usage: bench/backlog.py [--events N] [--bin build/engage]
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


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--bin", default=str(lib.REPO_ROOT / "build" / "engage"))
    args = ap.parse_args()
    binary = Path(args.bin).resolve()
    with bench_stack() as (stack, uri, work):
        # The slots exist before the backlog is written: engage creates its own
        # (and the publication), pg_recvlogical gets a twin.
        env = {"ENGAGE_PG": uri, "ENGAGE_CLICKHOUSE": stack.clickhouse_url}
        p = lib.EngageProcess(["run", "--state-dir", str(work / "state"), "--log-level", "warn"],
                              env=env, log_dir=work, name="setup", binary=binary).start()
        lib.wait_for(lambda: lib.pg_scalar(uri, "SELECT count(*) FROM pg_replication_slots WHERE active") == 1,
                     60, what="engage's slot")
        assert p.stop() == 0
        p = lib.EngageProcess(["run", "--slot", "bench_stdout", "--sinks", "stdout", "--state-dir",
                               str(work / "state"), "--log-level", "warn"],
                              env={"ENGAGE_PG": uri}, log_dir=work, name="setup-stdout", binary=binary).start()
        lib.wait_for(lambda: lib.pg_scalar(uri, "SELECT count(*) FROM pg_replication_slots WHERE active") == 1,
                     60, what="engage's stdout slot")
        assert p.stop() == 0
        pgbin = Path("/usr/lib/postgresql/15/bin")
        for slot in ("bench_recv_1", "bench_recv_2"):
            subprocess.run([pgbin / "pg_recvlogical", "-d", uri, "--slot", slot, "--plugin", "pgoutput",
                            "--create-slot"], check=True)

        t0 = time.monotonic()
        batch = 10_000
        for start in range(0, args.events, batch):
            n = min(batch, args.events - start)
            lib.pg_exec(uri, "INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
                             "SELECT 1 + ((g::bigint * 7919) %% 1100)::int, g %% 100000, (ARRAY['play','pause','finish'])[g %% 3 + 1], "
                             "now() - make_interval(secs => g %% 3600), CASE WHEN g %% 10 = 0 THEN NULL ELSE g %% 600000 END, "
                             "(ARRAY['web','ios','android','tv'])[g %% 4 + 1] FROM generate_series(%s, %s) g",
                        (start, start + n - 1))
        end_lsn = lib.pg_scalar(uri, "SELECT pg_current_wal_lsn()::text")
        print(f"backlog: {args.events} events in {args.events // batch} transactions, written in "
              f"{time.monotonic() - t0:.1f}s; WAL end {end_lsn}")

        def recvlogical(slot):
            t0 = time.monotonic()
            subprocess.run([pgbin / "pg_recvlogical", "-d", uri, "--slot", slot, "--start",
                            "-o", "proto_version=1", "-o", "publication_names=engage_pub",
                            "--endpos", end_lsn, "-f", "/dev/null", "--no-loop"], check=True)
            return time.monotonic() - t0

        def slot_at_end(slot):
            lsn = lib.pg_scalar(uri, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                     "WHERE slot_name = %s", (slot,))
            return lsn_int(lsn) >= lsn_int(end_lsn)

        # Each consumer decodes the same WAL through its own slot. The first to run pays for
        # reading the WAL into the page cache, so pg_recvlogical runs first and last and the
        # faster of its two runs is the baseline.
        results = {}
        results["pg_recvlogical -> /dev/null (1st)"] = recvlogical("bench_recv_1")

        t0 = time.monotonic()
        with open(os.devnull, "wb") as devnull:
            sp = subprocess.Popen([binary, "run", "--slot", "bench_stdout", "--sinks", "stdout",
                                   "--state-dir", str(work / "state"), "--log-level", "warn",
                                   "--admin-addr", "off"], env={**os.environ, "ENGAGE_PG": uri},
                                  stdout=devnull)
            lib.wait_for(lambda: slot_at_end("bench_stdout"), 1800, interval=0.05,
                         what="engage stdout to reach the end")
            results["engage -> stdout (/dev/null)"] = time.monotonic() - t0
            sp.terminate()
            assert sp.wait(30) == 0

        t0 = time.monotonic()
        p = lib.EngageProcess(["run", "--state-dir", str(work / "state"), "--log-level", "warn"],
                              env=env, log_dir=work, name="clickhouse", binary=binary).start()
        lib.wait_for(lambda: int(lib.ch_query(stack.clickhouse_url,
                     "SELECT count() FROM engagement.events_enriched")[0][0]) >= args.events,
                     1800, interval=0.1, what="the backlog in ClickHouse")
        results["engage -> ClickHouse"] = time.monotonic() - t0
        lib.wait_for(lambda: lsn_int(lib.pg_scalar(uri, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                                        "WHERE slot_name = 'engage_slot'")) >= lsn_int(end_lsn) - 1_000_000,
                     120, what="the checkpoint to follow")
        assert p.stop() == 0
        final = int(lib.ch_query(stack.clickhouse_url, "SELECT count() FROM engagement.events_enriched FINAL")[0][0])
        assert final == args.events, final
        results["pg_recvlogical -> /dev/null (2nd)"] = recvlogical("bench_recv_2")

        print()
        print(f"{'consumer':36} {'seconds':>8} {'events/s':>12} {'vs pg_recvlogical':>18}")
        base = min(results["pg_recvlogical -> /dev/null (1st)"], results["pg_recvlogical -> /dev/null (2nd)"])
        print(f"(baseline: the faster pg_recvlogical run, {base:.2f}s)")
        for name, secs in results.items():
            print(f"{name:36} {secs:8.2f} {args.events / secs:12,.0f} {base / secs:17.2f}x")



if __name__ == "__main__":
    main()
