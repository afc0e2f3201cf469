"""What the throughput benchmarks share: their own stack on loopback in a temporary
directory, a database `bench` with 1,000 content rows, and a work directory, all removed
afterwards.

    with bench_stack() as (stack, uri, work):
        ...
"""

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import lib  # noqa: E402


@contextlib.contextmanager
def bench_stack():
    stack_dir = tempfile.mkdtemp(prefix="engage-bench-")
    work = Path(tempfile.mkdtemp(prefix="engage-bench-work-"))
    try:
        stack = lib.Stack.up(stack_dir)
        uri = lib.pg_create_database(stack.pg_uri, "bench")
        lib.pg_exec(uri, "INSERT INTO content SELECT g, (ARRAY['video','article','podcast'])[g % 3 + 1], "
                         "CASE WHEN g % 10 = 0 THEN NULL ELSE 30 + g END, 'title' FROM generate_series(1, 1000) g")
        lib.ch_reset(stack.clickhouse_url)
        lib.redis_reset(stack.redis_url)
        yield stack, uri, work
    finally:
        lib._run_stack("down", stack_dir, timeout=180)
        shutil.rmtree(stack_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
