"""Kafka, both ends, under faults (issue 10): `engage capture` and
`engage run --source kafka` killed with SIGKILL at random moments while events
stream, a consumer group that loses a member and gains one under load, and the
broker itself stopped for half a minute. Every test ends with ClickHouse, Redis
and the API checked value by value against PostgreSQL, as the direct path's
tests do.

The capture side's invariant is watched while it runs (ConfirmedMonitor): the
capture slot's confirmed_flush_lsn never passes what the broker acknowledged,
i.e. every workload transaction whose WAL end is at or below the confirmed
position has all its events in the events topic.

Events stream for as long as a test's faults take (Feed: Workload.run in the
background, chunk after chunk), so that every kill lands mid-stream however
slow the machine is; the counts are a few thousand events a test."""

import json
import random
import subprocess
import threading
import time

import lib
import redis_expect as rx
from test_http import Mock, assert_all_delivered
from test_kafka_pipeline import KafkaPath
from test_pipeline import ch_count, metrics
from workload import Workload, check_clickhouse, lsn_int

ASSIGNED = "engage_kafka_assigned_partitions"
EVENTS = 'engage_source_events_total{source="kafka"}'


# ------------------------------------------------------------------ helpers


def cap_confirmed(db):
    """The capture slot's (<db>_cap) confirmed_flush_lsn as an integer, or None."""
    v = db.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                  (f"{db.name}_cap",))
    return lsn_int(v) if v else None


def metric(proc, name, default=0.0):
    """One value of proc's /metrics (default when absent or unreachable)."""
    try:
        return metrics(proc).get(name, default)
    except OSError:
        return default


def event_id_of(value):
    """The event_id of an events-topic record's value (Debezium's JSON with or
    without the schema part), or None for a tombstone or a record without after."""
    if value is None:
        return None
    v = json.loads(value)
    p = v["payload"] if isinstance(v, dict) and "schema" in v and "payload" in v else v
    after = p.get("after") if isinstance(p, dict) else None
    return int(after["event_id"]) if after and after.get("event_id") is not None else None


class TopicIds:
    """The event ids in a topic, read incrementally (lib.consume_all's kcat, per
    partition from the next offset not yet read): Kafka never changes what it
    acknowledged, so what was read stays true. ids: every event id seen;
    at[partition]: [(offset, event_id)] in offset order."""

    def __init__(self, bootstrap, topic):
        self.bootstrap, self.topic = bootstrap, topic
        self.next = {}
        self.at = {}
        self.ids = set()
        self.records = 0

    def refresh(self, timeout=30):
        """Reads every partition up to its end now; raises when the broker does not answer."""
        parts = lib.topic_partitions(self.bootstrap, self.topic)
        for p in range(parts):
            start = self.next.get(p, 0)
            proc = subprocess.run(
                ["kcat", "-C", "-b", self.bootstrap, "-t", self.topic, "-p", str(p), "-o", str(start),
                 "-e", "-J", "-q", "-m", "10", "-X", "fetch.wait.max.ms=5"],  # EOF at once, not after 0.5 s
                stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"kcat -C -t {self.topic} -p {p} failed: {proc.stderr.decode(errors='replace')}")
            for line in proc.stdout.decode().split("\n"):  # not splitlines(): U+2028 may be in a value
                if not line.strip():
                    continue
                m = json.loads(line)
                if m["offset"] < start:
                    continue
                start = m["offset"] + 1
                eid = event_id_of(m.get("payload"))
                self.at.setdefault(p, []).append((m["offset"], eid))
                self.records += 1
                if eid is not None:
                    self.ids.add(eid)
            self.next[p] = start
        return self

    def ids_below(self, ends):
        """The event ids at offsets below ends[partition] (a partition's end at some moment)."""
        return {eid for p, recs in self.at.items() for off, eid in recs
                if eid is not None and off < ends.get(p, 0)}


class ConfirmedMonitor:
    """A thread that checks, every interval, that the capture slot's confirmed
    position never passes what the events topic holds: confirmed_flush_lsn is
    read first, the topic after, and every workload transaction whose WAL end
    (wl.tx_end, taken after its commit) is at or below it must have all its
    events in the topic. A broker that does not answer skips the topic part;
    the confirmed positions are kept (samples) for checks after the fact."""

    def __init__(self, db, wl, topic, interval=0.25):
        self.db, self.wl, self.topic, self.interval = db, wl, topic, interval
        self.violations = []
        self.checks = 0
        self.samples = []  # (monotonic time, confirmed)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.lock = threading.Lock()

    def check(self):
        with self.lock:
            confirmed = cap_confirmed(self.db)
            if confirmed is None:
                return
            self.samples.append((time.monotonic(), confirmed))
            with self.wl.lock:
                covered = [(end, ids) for end, ids in self.wl.tx_end if end <= confirmed]
            if not covered:
                return
            try:
                present = self.topic.refresh().ids
            except Exception:  # noqa: BLE001 - the broker is down: confirmed is kept in samples
                self.errors += 1
                return
            for end, ids in covered:
                lost = [i for i in ids if i not in present]
                if lost:
                    self.violations.append((confirmed, end, lost[:5]))
                    return
            self.checks += 1

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - PostgreSQL busy: the next round checks again
                self.errors += 1
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(60)

    def assert_held(self):
        __tracebackhide__ = True
        assert not self.violations, (
            f"capture's confirmed_flush_lsn ran ahead of the events topic ({len(self.violations)} times); "
            f"first (confirmed, tx end, event ids not in the topic): {self.violations[:3]}")
        assert self.checks > 5, f"the monitor must have checked the invariant while streaming ({self.checks})"


class Feed:
    """The mixed workload streaming in the background until stop(): wl.run(...,
    background=True) chunk after chunk, so that events keep coming for as long
    as a test's faults take. chunks counts the chunks finished."""

    def __init__(self, wl, chunk=400, sessions=4, pace=0.2):
        self.wl, self.chunk, self.sessions, self.pace = wl, chunk, sessions, pace
        self.chunks = 0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        try:
            while not self._stop.is_set():
                self.wl.run(total=self.chunk, sessions=self.sessions, pace=self.pace, background=True)()
                self.chunks += 1
        except Exception as exc:  # noqa: BLE001 - raised by stop()
            self.error = exc

    def start(self):
        self._thread.start()
        return self

    def streaming(self):
        return self._thread.is_alive() and not self._stop.is_set()

    def inserted(self):
        with self.wl.lock:
            return len(self.wl.expected)

    def wait_more(self, n, timeout=60):
        """Wait until n more events were inserted than now."""
        start = self.inserted()
        lib.wait_for(lambda: self.inserted() >= start + n, timeout, interval=0.05,
                     what=f"{n} more events inserted")

    def stop(self):
        self._stop.set()
        self._thread.join(300)
        assert not self._thread.is_alive(), "the workload did not finish"
        if self.error is not None:
            raise self.error
        return self.wl


def wait_sinks_exact(stack, db, wl, mock, consumers, timeout=240):
    """ClickHouse, Redis and the API end with exactly the workload's events."""
    __tracebackhide__ = True
    n = len(wl.expected)

    def in_clickhouse():
        for c in consumers:
            if not c.alive():
                raise lib.GiveUp(f"{c.name} exited with {c.returncode}:\n{c.log_tail()}")
        return ch_count(stack.clickhouse_url) >= n

    lib.wait_for(in_clickhouse, timeout, interval=0.5, what=f"all {n} events in ClickHouse")
    check_clickhouse(stack.clickhouse_url, wl.expected)
    rx.wait_applied(stack.redis_url, n, 120)
    rx.check_redis(stack.redis_url, db.uri, wl.expected)
    assert_all_delivered(db, mock, set(wl.expected))


def assert_durable(stack, mock, ids, where):
    """Every event of ids is in ClickHouse, in Redis's seen-set and at the API."""
    __tracebackhide__ = True
    try:
        in_ch = {int(r[0]) for r in lib.ch_query(stack.clickhouse_url,
                                                 "SELECT event_id FROM engagement.events_enriched")}
    except lib.ClickHouseError:
        in_ch = set()
    not_ch = sorted(ids - in_ch)
    not_redis = sorted(rx.seen_missing(stack.redis_url, sorted(ids)))
    not_api = sorted(ids - mock.ids())
    assert not (not_ch or not_redis or not_api), (
        f"{where}: events behind them are not durable: {len(not_ch)} not in ClickHouse (e.g. {not_ch[:5]}), "
        f"{len(not_redis)} not in Redis (e.g. {not_redis[:5]}), {len(not_api)} not at the API (e.g. {not_api[:5]})")


def wait_delivering(proc, more=1, timeout=60):
    """Wait until the consumer proc has read `more` events more than now (it owns
    partitions and events flow through it)."""
    start = metric(proc, EVENTS)

    def flowing():
        if not proc.alive():
            raise lib.GiveUp(f"{proc.name} exited with {proc.returncode}:\n{proc.log_tail()}")
        return metric(proc, EVENTS) >= start + more

    lib.wait_for(flowing, timeout, interval=0.1, what=f"{proc.name} to read {more} more events")


def wait_assigned(procs, check, timeout, what):
    def ok():
        for p in procs:
            if not p.alive():
                raise lib.GiveUp(f"{p.name} exited with {p.returncode}:\n{p.log_tail()}")
        values = [metric(p, ASSIGNED, -1) for p in procs]
        return values if check(values) else None

    return lib.wait_for(ok, timeout, interval=0.2, what=what)


def group_offsets(bootstrap, group):
    """{(topic, partition): (committed offset or None, log-end offset)} from Kafka's
    ConsumerGroupCommand --describe."""
    out = lib.kafka_tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                         "--bootstrap-server", bootstrap, "--describe", "--group", group)
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0] == group and f[2].isdigit():
            cur = None if f[3] == "-" else int(f[3])
            rows[(f[1], int(f[2]))] = (cur, int(f[4]))
    return rows


def redelivered_with_another_key(log):
    """[(event id, first key, a later key)] of the events the API accepted under
    more than one Idempotency-Key (from the mock's /log)."""
    first, out = {}, []
    for e in sorted(log, key=lambda e: e["seq"]):
        if e["status"] != 200:
            continue
        for i in e["ids"]:
            k = first.setdefault(i, e["idempotency_key"])
            if k != e["idempotency_key"]:
                out.append((i, k, e["idempotency_key"]))
    return out


def hw_checkpoint(kafka, topic):
    """The high watermark of each partition of topic in the stopped broker's
    replication-offset-checkpoint (written at its clean shutdown)."""
    lines = (kafka.dir / "kafka" / "data" / "replication-offset-checkpoint").read_text().splitlines()
    ends = {}
    for line in lines[2:]:
        name, part, off = line.rsplit(" ", 2)
        if name == topic:
            ends[int(part)] = int(off)
    return ends


# ------------------------------------------------------------------- tests


def test_capture_sigkill_loop(stack, kafka, db, clean_sinks, engage, tmp_path):
    """kill -9 capture at least 5 times while events stream and it produces them
    (a random moment after its records reach the broker again), restarting it
    each time, with a consumer running throughout:
    ClickHouse, Redis and the API end exact (Kafka may hold some records twice,
    the consumer makes them one), and the capture slot's confirmed position
    never passes what the events topic holds (checked every 0.25 s and after
    every kill)."""
    wl = Workload(db.uri, seed=41)
    wl.setup_content()
    k = KafkaPath(stack, kafka, db, engage, tmp_path, partitions=3)
    cap = k.capture()
    k.wait_capturing(cap)
    mock = Mock(engage, tmp_path)
    con = k.consumer(mock=mock)
    mon = ConfirmedMonitor(db, wl, TopicIds(kafka.bootstrap, k.topic)).start()
    feed = Feed(wl, chunk=400, sessions=4, pace=0.2).start()
    rng = random.Random(7)
    kills, at_kill = 0, []
    try:
        while kills < 6:
            k.wait_capturing(cap)
            # It produces again: at least one more transaction reached the broker after it started.
            start = metric(cap, "engage_capture_messages_produced_total")
            lib.wait_for(lambda: metric(cap, "engage_capture_messages_produced_total") > start or
                         not cap.alive(), 60, interval=0.05, what=f"{cap.name} to produce")
            assert cap.alive(), cap.log_tail()
            time.sleep(rng.uniform(0.3, 2.5))  # a random moment, not a wait for a condition
            produced = metric(cap, "engage_capture_messages_produced_total")
            streaming = feed.streaming()
            cap.kill()
            cap.wait(10)
            kills += 1
            at_kill.append((produced, streaming, cap_confirmed(db)))
            mon.check()
            cap = k.capture(name=f"capture-after-kill-{kills}")
        k.wait_capturing(cap)
        feed.wait_more(200)
    finally:
        feed.stop()
    try:
        wait_sinks_exact(stack, db, wl, mock, [con])
        # Capture confirms up to the last transaction once the broker has it all.
        last_tx = max(end for end, _ in wl.tx_end)
        lib.wait_for(lambda: (cap_confirmed(db) or 0) >= last_tx - 4096, 60,
                     what="the capture slot confirmed up to the last transaction")
        mon.check()
    finally:
        mon.stop()
    print(f"\ncapture killed {kills} times: {len(wl.expected)} events, {mon.topic.records} records in "
          f"the events topic ({len(mon.topic.ids)} distinct events); monitor: {mon.checks} checks of "
          f"{len(mon.samples)} samples; "
          f"at each kill (produced, workload streaming, confirmed): {at_kill}")
    assert sum(1 for produced, streaming, _ in at_kill if produced > 0 and streaming) >= 5, at_kill
    mon.assert_held()
    assert mon.topic.ids == set(wl.expected)
    assert metric(con, 'engage_source_bad_input_total{source="kafka"}') == 0
    assert cap.stop() == 0, cap.log_tail()
    assert con.stop() == 0, con.log_tail()


def test_consumer_sigkill_loop(stack, kafka, db, clean_sinks, engage, tmp_path):
    """kill -9 the consumer at least 5 times while it delivers (requests at the API
    in flight), restarting it each time (same state directory), with capture
    running throughout: ClickHouse, Redis and the API end exact. The API's
    duplicates stay within one round in flight per kill:
    duplicates <= kills x --http-inflight x --http-batch (here 5 x 4 x 50 = 1000),
    each with its first body (its Idempotency-Key may differ, docs/kafka.md).
    At every kill the group's committed offsets do not pass what every sink
    holds; after the last consumer stops cleanly they equal the end of every
    partition of the events topic."""
    wl = Workload(db.uri, seed=42)
    wl.setup_content()
    k = KafkaPath(stack, kafka, db, engage, tmp_path, partitions=3)
    cap = k.capture()
    k.wait_capturing(cap)
    mock = Mock(engage, tmp_path, "--delay-ms", "5", "--delay-jitter-ms", "20")
    inflight, batch = 4, 50
    http = ("--http-inflight", str(inflight), "--http-batch", str(batch))
    con = k.consumer(*http, mock=mock, state="consumer")
    topic = TopicIds(kafka.bootstrap, k.topic)
    feed = Feed(wl, chunk=300, sessions=3, pace=0.3).start()
    rng = random.Random(8)
    kills, at_kill = 0, []
    try:
        while kills < 5:
            wait_delivering(con, more=50, timeout=120)
            time.sleep(rng.uniform(0.1, 1.0))  # a random moment, not a wait for a condition
            lib.wait_for(lambda: mock.stats()["in_flight"] > 0, 30, interval=0.002,
                         what="requests in flight")
            streaming = feed.streaming()
            read = metric(con, EVENTS)
            con.kill()
            con.wait(10)
            kills += 1
            lib.wait_for(lambda: mock.stats()["in_flight"] == 0, 10, interval=0.01,
                         what="the mock to finish the dead consumer's requests")
            # What the next member will read again: the API's events at or past the committed offsets.
            held = mock.ids()
            committed = {p: cur or 0 for (t, p), (cur, _) in group_offsets(kafka.bootstrap, k.prefix).items()
                         if t == k.topic}
            done = topic.refresh().ids_below(committed)
            # The committed offsets never pass what every sink holds (the next member starts there).
            assert_durable(stack, mock, done, f"committed offsets {committed} at kill {kills + 1}")
            again = held - done
            at_kill.append((streaming, len(again), mock.stats()["duplicates"], int(read),
                            sum(committed.values())))
            con = k.consumer(*http, mock=mock, state="consumer", name=f"consumer-after-kill-{kills}")
        wait_delivering(con, more=50, timeout=120)
    finally:
        feed.stop()
    wait_sinks_exact(stack, db, wl, mock, [con])
    assert all(a[0] for a in at_kill), at_kill
    assert con.stop() == 0, con.log_tail()
    offsets = group_offsets(kafka.bootstrap, k.prefix)
    parts = lib.topic_partitions(kafka.bootstrap, k.topic)
    mine = {p: v for (t, p), v in offsets.items() if t == k.topic}
    assert sorted(mine) == list(range(parts)), offsets
    behind = {p: v for p, v in mine.items() if v[0] != v[1]}
    assert not behind, f"committed offsets are not the end of the topic (partition: (committed, end)): {behind}"
    assert sum(end for _, end in mine.values()) >= len(wl.expected)
    assert cap.stop() == 0, cap.log_tail()

    s = mock.stats()
    rekeyed = redelivered_with_another_key(mock.log())
    print(f"\nconsumer killed {kills} times: {len(wl.expected)} events; API: {s['received']} received, "
          f"{s['unique']} unique, {s['duplicates']} duplicates (bound {kills * inflight * batch}); "
          f"at each kill (at the API past the committed offsets, duplicates so far, events the killed "
          f"consumer had read, committed offsets in all): "
          f"{[a[1:] for a in at_kill]}; {s['key_mismatches']} redeliveries "
          f"under another Idempotency-Key (e.g. {rekeyed[:2]}), {s['body_mismatches']} with another body")
    bound = kills * inflight * batch
    assert s["duplicates"] <= bound, (
        f"{s['duplicates']} duplicates at the API after {kills} kills: more than one round of "
        f"{inflight} x {batch} in flight per kill ({bound}); at each kill, events at the API past the "
        f"group's committed offsets and the duplicates so far: {[a[1:3] for a in at_kill]}")
    # A redelivery carries the first delivery's body. Its Idempotency-Key may differ: the
    # partitions interleave differently after a restart, so the request that carries it is
    # another (docs/kafka.md; the API contract dedupes by event_id).
    assert s["body_mismatches"] == 0, s


def test_consumer_group_scale_out(stack, kafka, db, clean_sinks, engage, tmp_path):
    """A 6-partition events topic and two consumers in one group: both own
    partitions; one is killed with SIGKILL mid-stream and the other takes over
    all 6; a third joins while events stream (a rebalance under load) and the two
    share the 6. ClickHouse, Redis and the API are exact after each step."""
    wl = Workload(db.uri, seed=43)
    wl.setup_content()
    k = KafkaPath(stack, kafka, db, engage, tmp_path, partitions=6)
    cap = k.capture()
    k.wait_capturing(cap)
    assert lib.topic_partitions(kafka.bootstrap, k.topic) == 6
    mock = Mock(engage, tmp_path)
    a = k.consumer(mock=mock, state="member-a", name="member-a")
    b = k.consumer(mock=mock, state="member-b", name="member-b")
    assert a.admin_addr != b.admin_addr
    wait_assigned([a, b], lambda v: all(x > 0 for x in v) and sum(v) == 6, 90,
                  "both members to own partitions")

    feed = Feed(wl, chunk=400, sessions=4, pace=0.2).start()
    try:
        wait_delivering(a, more=100)
        wait_delivering(b, more=100)
        time.sleep(random.Random(9).uniform(0.1, 1.0))  # a random moment, not a wait for a condition
        a.kill()
        a.wait(10)
        took = time.monotonic()
        wait_assigned([b], lambda v: v == [6], 90, "the surviving member to own all 6 partitions")
        took = time.monotonic() - took
        wait_delivering(b, more=200)
    finally:
        wl1 = len(feed.stop().expected)
    wait_sinks_exact(stack, db, wl, mock, [b])

    feed = Feed(wl, chunk=400, sessions=4, pace=0.2).start()
    try:
        wait_delivering(b, more=100)
        c = k.consumer(mock=mock, state="member-c", name="member-c")
        shares = wait_assigned([b, c], lambda v: all(x > 0 for x in v) and sum(v) == 6, 90,
                               "the joining member to get its share")
        wait_delivering(c, more=100)
        wait_delivering(b, more=100)
    finally:
        feed.stop()
    wait_sinks_exact(stack, db, wl, mock, [b, c])
    m_b, m_c = metrics(b), metrics(c)
    print(f"\nscale-out: {wl1} events before the kill was taken over ({took:.1f} s to own all 6), "
          f"{len(wl.expected)} in all; after the join: {shares}; revoked batches "
          f"b={m_b.get('engage_kafka_revoked_batches_total')} c={m_c.get('engage_kafka_revoked_batches_total')}")
    assert [m_b[ASSIGNED], m_c[ASSIGNED]] == shares
    assert c.stop() == 0, c.log_tail()
    assert b.stop() == 0, b.log_tail()
    assert cap.stop() == 0, cap.log_tail()


def test_broker_outage(stack, kafka, db, clean_sinks, engage, tmp_path):
    """The broker stops while capture and a consumer run and events stream; inserts
    go on for 30 s; the broker starts again on its port. Both processes recover by
    themselves (neither is restarted) and ClickHouse, Redis and the API end exact.
    The capture slot's confirmed position never passes what the broker
    acknowledged, and while the broker is down it stays within the transactions
    that reached Kafka before it stopped (the high watermarks of the broker's
    clean shutdown, from its replication-offset-checkpoint)."""
    wl = Workload(db.uri, seed=44)
    wl.setup_content()
    k = KafkaPath(stack, kafka, db, engage, tmp_path, partitions=3)
    cap = k.capture()
    k.wait_capturing(cap)
    mock = Mock(engage, tmp_path)
    con = k.consumer(mock=mock)
    topic = TopicIds(kafka.bootstrap, k.topic)
    mon = ConfirmedMonitor(db, wl, topic).start()
    feed = Feed(wl, chunk=300, sessions=3, pace=0.3).start()
    outage = []
    try:
        wait_delivering(con, more=200)
        with mon.lock:  # what the broker held a moment before it stops
            pre_stop = set(topic.refresh().ids)
        stopped = False
        try:
            kafka.stop()
            stopped = True
            t0 = time.monotonic()
            ends = hw_checkpoint(kafka, k.topic)
            before = feed.inserted()
            # 30 s of inserts with the broker down; the processes must stay up.
            while time.monotonic() - t0 < 30:
                assert cap.alive(), cap.log_tail()
                assert con.alive(), con.log_tail()
                c = cap_confirmed(db)
                outage.append(c)
                time.sleep(0.25)
            during = feed.inserted() - before
        finally:
            if stopped or not kafka.running("kafka"):
                kafka.start()
        outage.append(cap_confirmed(db))  # the broker is back, but nothing was produced before this
        # Recovery by themselves: capture produces again and the consumer reads new events.
        start = metric(cap, "engage_capture_messages_produced_total")
        lib.wait_for(lambda: metric(cap, "engage_capture_messages_produced_total") > start, 120,
                     interval=0.2, what="capture to produce after the broker came back")
        wait_delivering(con, more=during, timeout=180)
        feed.wait_more(200)
    finally:
        feed.stop()
    try:
        wait_sinks_exact(stack, db, wl, mock, [con])
        mon.check()
    finally:
        mon.stop()

    assert cap.alive() and con.alive(), "neither process may have exited"
    assert during > 100, f"only {during} events inserted while the broker was down"
    assert sorted(ends) == [0, 1, 2], f"high watermarks at the shutdown: {ends}"
    topic.refresh()
    before_stop = topic.ids_below(ends)
    # The checkpoint is the broker's at its shutdown, not an older one.
    assert pre_stop <= before_stop, f"{len(pre_stop - before_stop)} events read before the stop are past {ends}"
    held = max(c for c in outage if c is not None)
    with wl.lock:
        covered = [(end, ids) for end, ids in wl.tx_end if end <= held]
    lost = [(end, [i for i in ids if i not in before_stop][:5]) for end, ids in covered
            if any(i not in before_stop for i in ids)]
    print(f"\nbroker outage: {during} events inserted while it was down, {len(wl.expected)} in all; "
          f"the broker held {sum(ends.values())} records at its shutdown ({len(before_stop)} events); "
          f"confirmed during the outage {min(c for c in outage if c)}..{held}; monitor: {mon.checks} checks, "
          f"{len(mon.samples)} samples, {mon.errors} without an answer")
    assert not lost, (f"while the broker was down the slot was confirmed to {held}, past transactions "
                      f"that had not reached Kafka: {lost[:3]}")
    mon.assert_held()
    with wl.lock:
        assert any(end > held for end, _ in wl.tx_end), "some transactions must be past the held position"
    assert metric(con, 'engage_source_bad_input_total{source="kafka"}') == 0
    assert cap.stop() == 0, cap.log_tail()
    assert con.stop() == 0, con.log_tail()
