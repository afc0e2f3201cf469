"""Issue 7, item 4: Redis loses what engage wrote, and engage repairs it by itself.

A Redis without persistence (no RDB, no AOF) is killed with SIGKILL mid-stream and started
again empty on the same port. Nobody runs a command: engage must notice on its next write
(engage:mark), say /readyz not ready, rebuild Redis from PostgreSQL, and only then be ready;
afterwards every Redis key is exactly what PostgreSQL's events make it (redis_expect.py,
computed from PostgreSQL and the workload, never from engage)."""

import subprocess
import threading
import time

import lib
import redis_expect as rx
from test_pipeline import metrics, run_args, wait_streaming
from test_redis import readyz
from workload import Workload


class BareRedis:
    """A redis-server of this test's own: no snapshot, no append-only file."""

    def __init__(self, dir, password=None):
        self.dir = dir
        self.port = lib.free_port()
        self.password = password
        self.url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{self.port}"
        self.proc = None
        self.log = open(dir / "redis.log", "ab")

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir),
             *(["--requirepass", self.password] if self.password else [])],
            stdout=self.log, stderr=subprocess.STDOUT)

        def answers():
            if self.proc.poll() is not None:
                raise lib.GiveUp(f"redis-server exited with {self.proc.returncode}")
            try:
                return lib.redis_client(self.url).ping()
            except Exception:
                return False

        lib.wait_for(answers, 20, what="redis-server to answer")

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.log.close()


def test_item4_redis_restarted_empty_is_rebuilt(stack, db, engage, tmp_path):
    rdir = tmp_path / "redis"
    rdir.mkdir()
    redis = BareRedis(rdir)
    redis.start()
    try:
        run_redis_loss(stack, db, engage, tmp_path, redis)
    finally:
        redis.close()


def run_redis_loss(stack, db, engage, tmp_path, redis):
    wl = Workload(db.uri, seed=74)
    wl.setup_content()
    env = {"ENGAGE_PG": db.uri, "ENGAGE_REDIS": redis.url}
    proc = engage(*run_args(db, tmp_path, "--sinks", "redis"), env=env)
    wait_streaming(db, proc)
    proc.wait_for_log(r"appendonly no", 30, what="the warning about a Redis without AOF")

    # The content table stays as it is: a rebuild enriches with the content rows as they are
    # when it runs (as a backfill does), the stream with those as of each commit.
    total = 8000
    join = wl.run(total=total, sessions=2, pace=0.01, background=True, update_content=False)
    lib.wait_for(lambda: rx.seen_count(redis.url) >= 3000, 120, interval=0.1,
                 what="3000 events in Redis before the kill")
    with wl.lock:
        before_kill = [i for _, ids in wl.tx_end for i in ids]
    redis.kill()
    redis.start()
    killed_at = time.monotonic()

    # Poll /readyz from the kill on. Once it has said not ready, every 200 must find every
    # event committed before the kill back in Redis.
    samples, stop = [], threading.Event()

    def poll():
        unready_seen = False
        while not stop.is_set():
            status, body = readyz(proc)
            if status != 200:
                unready_seen = True
                samples.append((time.monotonic() - killed_at, status, body.strip()))
            elif unready_seen:
                missing = rx.seen_missing(redis.url, before_kill)
                samples.append((time.monotonic() - killed_at, status, f"{len(missing)} missing"))
                if missing:
                    return
            stop.wait(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        join()
        rx.wait_applied(redis.url, total, 180, proc)
        lib.wait_for(lambda: readyz(proc)[0] == 200, 60, what="/readyz to say ready again")
    finally:
        stop.set()
        poller.join()

    unready = [s for s in samples if s[1] != 200]
    assert unready, "/readyz never said not ready after Redis lost its data"
    assert any("rebuilding" in s[2] for s in unready), f"/readyz never named the rebuild: {unready[:5]}"
    early = [s for s in samples if s[1] == 200 and s[2] != "0 missing"]
    assert not early, f"/readyz said ready before Redis was rebuilt: {early[:3]}"

    print(f"readyz samples after the kill: {len(samples)}; first {samples[:3]} last {samples[-2:]}")
    rx.check_redis(redis.url, db.uri, wl.expected)
    m = metrics(proc)
    assert m["engage_redis_lost_total"] >= 1
    assert m["engage_redis_rebuilds_total"] >= 1
    assert m["engage_redis_rebuilding"] == 0
    proc.wait_for_log(r"msg=\"redis rebuilt from postgresql\"", 5)
    assert proc.stop() == 0, proc.log_tail()


def test_item4_flush_while_stopped_and_replica_behind(stack, db, engage, tmp_path):
    """Two more ways to lose writes: Redis flushed while engage was stopped (the state
    directory remembers the generation it wrote), and a Redis whose write count went back
    (what a failover to a replica that missed writes looks like). Each time engage rebuilds
    and every key ends exact."""
    rdir = tmp_path / "redis"
    rdir.mkdir()
    redis = BareRedis(rdir)
    redis.start()
    try:
        wl = Workload(db.uri, seed=75)
        wl.setup_content()
        env = {"ENGAGE_PG": db.uri, "ENGAGE_REDIS": redis.url}
        args = run_args(db, tmp_path, "--sinks", "redis")
        proc = engage(*args, env=env)
        wait_streaming(db, proc)
        wl.run(total=2000, sessions=2, update_content=False)
        rx.wait_applied(redis.url, 2000, 120, proc)
        assert proc.stop() == 0, proc.log_tail()

        lib.redis_client(redis.url).flushall()
        proc = engage(*args, env=env, name="engage-after-flush")
        proc.wait_for_log(r"msg=\"redis lost what engage wrote\".*state directory says", 60)
        proc.wait_for_log(r"msg=\"redis rebuilt from postgresql\"", 120)
        lib.wait_for(lambda: readyz(proc)[0] == 200, 60, what="/readyz after the rebuild")
        rx.check_redis(redis.url, db.uri, wl.expected)

        # The write count goes back, as on a replica that missed the last writes.
        lib.redis_client(redis.url).hset("engage:mark", "seq", 0)
        wl.run(total=500, sessions=1, update_content=False)  # expected now holds 2500
        proc.wait_for_log(r"msg=\"redis lost what engage wrote\".*behind", 60)
        lib.wait_for(lambda: proc.log_text().count("msg=\"redis rebuilt from postgresql\"") >= 2,
                     120, what="the second rebuild")
        rx.wait_applied(redis.url, 2500, 120, proc)
        lib.wait_for(lambda: readyz(proc)[0] == 200, 60, what="/readyz after the second rebuild")
        rx.check_redis(redis.url, db.uri, wl.expected)
        assert proc.stop() == 0, proc.log_tail()
    finally:
        redis.close()
