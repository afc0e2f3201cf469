#!/usr/bin/env python3
"""Seen-set memory: what Redis spends per million events on engage:seen:*, the
bitmap that makes the Redis sink idempotent (DESIGN.md section 4), measured
through the real binary.

N events (default 2^21) with consecutive event ids starting at 2^20 (so they
fill exactly N / 2^20 chunks of 2^20 ids) are inserted into a database of
their own; `engage run --sinks redis` applies them; once the seen-set holds
all N ids, the chunks' MEMORY USAGE (what the allocator holds for each key,
header and dict entry included) is summed and divided by N. Also printed: the
raw bits (128 KiB per 2^20 ids) and what Redis's used_memory grew by for the
whole run (every key engage writes, for scale).

The figure holds for dense ids (a bigserial with few gaps). Each chunk costs
the same whether one id or 2^20 ids of its range are set, so sparse ids (large
sequence gaps, ids shared with other tables) cost up to one chunk per event.

usage: bench/seen_memory.py [--bin build/engage] [--events N]
Starts its own servers on loopback (or reuses $ENGAGE_STACK_DIR; it then uses
Redis db 8, which it empties, and a new PostgreSQL database).
"""

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import lib  # noqa: E402

REDIS_DB = 8
CHUNK_IDS = 1 << 20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(lib.REPO_ROOT / "build" / "engage"))
    ap.add_argument("--events", type=int, default=1 << 21)
    args = ap.parse_args()
    assert 0 < args.events <= 8 << 20, "bounded load only"
    binary = Path(args.bin).resolve()

    reuse = os.environ.get("ENGAGE_STACK_DIR")
    own_stack = not (reuse and (Path(reuse) / "env").exists())
    stack_dir = tempfile.mkdtemp(prefix="engage-seen-") if own_stack else reuse
    work = Path(tempfile.mkdtemp(prefix="engage-seen-work-"))
    name = "seenmem_" + secrets.token_hex(4)
    stack = proc = uri = None
    try:
        stack = lib.Stack.up(stack_dir) if own_stack else lib.Stack(stack_dir)
        uri = lib.pg_create_database(stack.pg_uri, name)
        lib.pg_exec(uri, "INSERT INTO content SELECT g, 'video', 300, 'title' FROM generate_series(1, 100) g")
        lib.pg_exec(uri, f"ALTER SEQUENCE engagement_events_event_id_seq RESTART WITH {CHUNK_IDS}")
        redis_url = f"redis://127.0.0.1:{stack.redis_port}/{REDIS_DB}"
        rdb = lib.redis_client(redis_url)
        rdb.flushdb()
        used_before = rdb.info("memory")["used_memory"]

        proc = lib.EngageProcess(["run", "--slot", name, "--sinks", "redis", "--state-dir", str(work / "state"),
                                  "--log-level", "warn"], env={"ENGAGE_PG": uri, "ENGAGE_REDIS": redis_url},
                                 log_dir=work, name="engage", binary=binary).start()
        lib.wait_for(lambda: lib.pg_scalar(uri, "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                           (name,)), 60, what="engage to stream")
        t0 = time.monotonic()
        step = 100_000
        for first in range(0, args.events, step):
            lib.pg_exec(uri, "INSERT INTO engagement_events(content_id, user_id, event_type, duration_ms, device) "
                             "SELECT 1 + g %% 100, g %% 100000, 'play', 1000 + g %% 600000, 'web' "
                             "FROM generate_series(%s, %s) g", (first, min(first + step, args.events) - 1))
        lo, hi = lib.pg_query(uri, "SELECT min(event_id), max(event_id) FROM engagement_events")[0]
        assert (lo, hi) == (CHUNK_IDS, CHUNK_IDS + args.events - 1), f"ids {lo}..{hi} are not consecutive"

        def keys():
            return sorted(rdb.scan_iter(match="engage:seen:*", count=1000))

        def applied():
            if not proc.alive():
                raise lib.GiveUp(f"engage exited:\n{proc.log_tail()}")
            return sum(rdb.bitcount(k) for k in keys()) == args.events

        lib.wait_for(applied, 600, interval=0.5, what=f"{args.events} ids in the seen-set")
        elapsed = time.monotonic() - t0
        chunks = keys()
        usage = sum(rdb.memory_usage(k, samples=0) for k in chunks)
        raw = sum(rdb.strlen(k) for k in chunks)
        used_after = rdb.info("memory")["used_memory"]

        per_million = usage / args.events * 1e6
        print(f"seen-set memory, measured through {binary} (engage run --sinks redis)")
        print(f"events: {args.events:,} with consecutive ids {lo}..{hi}, applied in {elapsed:.1f} s "
              f"({args.events / elapsed:,.0f} events/s)")
        print()
        print(f"| {'measure':<44} | {'bytes':>11} | {'per 1,000,000 events':>21} |")
        print(f"| {'-' * 44} | {'-' * 11}:| {'-' * 21}:|")
        print(f"| {f'MEMORY USAGE of {len(chunks)} engage:seen:* chunks':<44} | {usage:>11,} | "
              f"{per_million / 1024:>17.1f} KiB |")
        print(f"| {'raw bits (STRLEN)':<44} | {raw:>11,} | {raw / args.events * 1e6 / 1024:>17.1f} KiB |")
        print(f"| {'used_memory growth, every key of the run':<44} | {used_after - used_before:>11,} | "
              f"{(used_after - used_before) / args.events * 1e6 / 1024:>17.1f} KiB |")
        print()
        print(f"seen-set: {per_million / 1024:.1f} KiB per million events "
              f"({per_million * 1000 / 1024 ** 2:.0f} MiB per billion), no expiry by default")
    finally:
        if proc is not None:
            proc.stop()
        if stack is not None and uri is not None:
            lib.pg_drop_database(stack.pg_uri, name)
            try:
                lib.redis_client(f"redis://127.0.0.1:{stack.redis_port}/{REDIS_DB}").flushdb()
            except Exception:  # noqa: BLE001 - best effort on a stack we did not start
                pass
        if own_stack:
            lib._run_stack("down", stack_dir, timeout=180)
            shutil.rmtree(stack_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
