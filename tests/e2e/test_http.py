"""The external HTTP API sink through the real binary against `engage mock-api`
(issue: HTTP sink, mock API, retries, breaker, dead-letter queue), and the
`engage dlq list` / `engage dlq replay` subcommands."""

import json
import random
import statistics
import subprocess
import time
import urllib.request

import pytest

import lib
import redis_expect as rx
from test_pipeline import metrics, run_args, slot_row, wait_streaming
from workload import Workload, lsn_int


class Mock:
    """`engage mock-api` as a process; its control port answers even while the
    API itself is down."""

    def __init__(self, engage, tmp_path, *flags, name="mock-api"):
        port_file = tmp_path / f"{name}.ports"
        self.proc = engage("mock-api", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                           "--seed", "7", "--log-size", "200000", *flags, name=name)
        ports = lib.wait_for(lambda: port_file.exists() and json.loads(port_file.read_text()), 20,
                             what="the mock API to listen")
        self.url = f"http://127.0.0.1:{ports['port']}"
        self.ctl = f"http://127.0.0.1:{ports['control_port']}"

    def get(self, path):
        with urllib.request.urlopen(self.ctl + path, timeout=10) as r:
            return json.loads(r.read())

    def stats(self):
        return self.get("/stats")

    def control(self, **faults):
        req = urllib.request.Request(self.ctl + "/control", data=json.dumps(faults).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def ids(self):
        return set(self.get("/events/ids"))

    def log(self):
        return self.get("/log?limit=200000")


def http_args(db, tmp_path, mock, *extra):
    return run_args(db, tmp_path, "--pg", db.uri, "--sinks", "http", "--http", mock.url, *extra)


def dlq(db, *args, timeout=120):
    """`engage dlq ARGS --pg db` as a finished process (stdout, stderr, returncode)."""
    return subprocess.run([str(lib.engage_binary()), "dlq", *args, "--pg", db.uri],
                          capture_output=True, text=True, timeout=timeout)


def pg_ids(db):
    return {r[0] for r in db.query("SELECT event_id FROM engagement_events")}


def dlq_pending(db, origin="dead"):
    """Pending rows: the dead letters (every origin but the outbox), or those of one origin."""
    where = "origin <> 'outbox'" if origin == "dead" else "origin = %s"
    try:
        return db.scalar(f"SELECT count(*) FROM engage_dlq WHERE replayed_at IS NULL AND {where}",
                         None if origin == "dead" else (origin,))
    except Exception:  # noqa: BLE001 - the table appears with the first parked row
        return 0


def outbox_pending(db):
    return dlq_pending(db, "outbox")


def parked_ids(db):
    if not dlq_pending(db):
        return set()
    return {r[0] for r in db.query("SELECT event_id FROM engage_dlq WHERE replayed_at IS NULL "
                                   "AND origin <> 'outbox'")}


def settle(db, mock, expected_ids, timeout=120):
    """Wait until every event is at the API or pending in the dead letters, and the outbox
    (which engage run drains by itself) is empty."""
    lib.wait_for(lambda: expected_ids <= (mock.ids() | parked_ids(db)) and not outbox_pending(db),
                 timeout, interval=0.2, what="every event delivered or parked, the outbox empty")


def replay_parked(db, mock, *extra):
    """`engage dlq replay` whatever was parked (spilled under load, or past the budget)."""
    if not dlq_pending(db):
        return 0
    rep = dlq(db, "replay", "--http", mock.url, *extra, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    return int(rep.stdout.split()[1])


def assert_all_delivered(db, mock, expected_ids, *replay_args):
    """Every event reached the API: directly, or from the DLQ by a replay. Returns
    the number of events replayed."""
    settle(db, mock, expected_ids)
    replayed = replay_parked(db, mock, *replay_args)
    assert mock.ids() == expected_ids, (len(mock.ids()), len(expected_ids))
    assert dlq_pending(db) == 0
    return replayed


def by_key(log):
    keys = {}
    for entry in log:
        keys.setdefault(entry["idempotency_key"], []).append(entry)
    for entries in keys.values():
        entries.sort(key=lambda e: e["seq"])
    return keys


# ------------------------------------------------------------ (1) exact delivery


def test_every_event_delivered_with_the_enriched_body(stack, db, clean_sinks, engage, tmp_path):
    mock = Mock(engage, tmp_path)
    wl = Workload(db.uri, seed=101)
    wl.setup_content()
    # A queue deep enough that a burst on a loaded machine never spills to the DLQ: this
    # test is about what arrives, and expects it all from the sink itself.
    proc = engage(*http_args(db, tmp_path, mock, "--queue-depth", "64"))
    wait_streaming(db, proc)
    wl.run(total=3000, sessions=4)
    assert wl.content_updates > 0
    lib.wait_for(lambda: mock.stats()["unique"] == 3000, 120, interval=0.2,
                 what="3000 unique events at the API")
    # Exact: the API's unique ids are PostgreSQL's events, and nothing is parked.
    assert mock.ids() == pg_ids(db) == set(wl.expected)
    assert dlq_pending(db) == 0
    bodies = {b["event_id"]: b for b in mock.get("/events")}
    mismatches = [(wl.expected[i], bodies[i]) for i in wl.expected if bodies[i] != wl.expected[i]]
    assert not mismatches, f"{len(mismatches)} bodies differ; first {mismatches[0]}"
    s = mock.stats()
    assert s["missing_idempotency_key"] == 0, s
    assert s["key_mismatches"] == 0 and s["body_mismatches"] == 0, s
    print(f"3000 events: {s['requests']} requests, {s['received']} received, "
          f"{s['duplicates']} duplicates, largest request {s['max_batch']} events")
    assert proc.stop() == 0


# ------------------------------------------------------------ (2) injected faults


def test_thirty_percent_500s(stack, db, clean_sinks, engage, tmp_path):
    mock = Mock(engage, tmp_path, "--fail-rate", "0.3")
    wl = Workload(db.uri, seed=102)
    wl.setup_content()
    proc = engage(*http_args(db, tmp_path, mock, "--http-batch", "10", "--queue-depth", "64"))
    wait_streaming(db, proc)
    wl.run(total=1000, sessions=2)
    settle(db, mock, set(wl.expected))
    direct = len(mock.ids())
    replayed = assert_all_delivered(db, mock, set(wl.expected), "--http-batch", "10")
    s = mock.stats()
    keys = by_key(mock.log())
    recovered = sum(1 for es in keys.values()
                    if es[0]["status"] == 500 and es[-1]["status"] == 200)
    print(f"30% 500s: {s['status']}; {recovered} requests answered 500 then 200 under the same "
          f"key; {direct} events delivered by the sink, {replayed} spilled and replayed")
    assert s["status"].get("500", 0) > 30, s["status"]
    assert recovered > 20
    # The retries deliver: at most a spill's worth goes through the DLQ.
    assert direct >= 900, (direct, replayed)
    assert s["key_mismatches"] == 0 and s["body_mismatches"] == 0, s
    assert proc.stop() == 0


def test_429_retry_after_is_honoured(stack, db, clean_sinks, engage, tmp_path):
    mock = Mock(engage, tmp_path, "--status-429-rate", "0.3", "--retry-after", "2")
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    proc = engage(*http_args(db, tmp_path, mock, "--http-batch", "1"))
    wait_streaming(db, proc)
    # One transaction, one batch: the test is about the retry schedule, not spilling.
    db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms) "
            "SELECT 1, g, 1000 FROM generate_series(1, 20) g")
    lib.wait_for(lambda: mock.stats()["unique"] == 20, 120, interval=0.2, what="20 events despite 429s")
    gaps = []
    for entries in by_key(mock.log()).values():
        for prev, nxt in zip(entries, entries[1:]):
            if prev["status"] == 429:
                gaps.append(nxt["mono_ms"] - prev["mono_ms"])
    assert gaps, "some requests must have been answered 429"
    print(f"429 with Retry-After 2: {len(gaps)} retries after a 429, gaps {min(gaps)}..{max(gaps)} ms")
    assert min(gaps) >= 2000, f"a retry came {min(gaps)} ms after a 429 with Retry-After 2"
    assert dlq_pending(db) == 0
    assert proc.stop() == 0


def test_answers_slower_than_the_timeout(stack, db, clean_sinks, engage, tmp_path):
    """Answers take 300..900 ms against a 600 ms timeout: the sink gives up on the slow
    ones and sends them again under the same key (the mock recorded some of them before
    its late answer, so those come twice)."""
    mock = Mock(engage, tmp_path, "--delay-ms", "300", "--delay-jitter-ms", "600")
    wl = Workload(db.uri, seed=103)
    wl.setup_content()
    proc = engage(*http_args(db, tmp_path, mock, "--http-batch", "20", "--http-timeout-ms", "600",
                             "--http-inflight", "8"))
    wait_streaming(db, proc)
    wl.run(total=600, sessions=2)
    settle(db, mock, set(wl.expected))
    timeouts = metrics(proc).get('engage_http_requests_total{code="timeout"}', 0)
    replayed = assert_all_delivered(db, mock, set(wl.expected), "--http-batch", "20")
    s = mock.stats()
    late = sum(1 for e in mock.log() if e["duration_ms"] >= 600)
    print(f"timeouts: {timeouts:.0f} requests timed out, {late} answered after 600 ms, "
          f"{s['duplicates']} duplicate events, {replayed} replayed")
    assert timeouts > 0 and late > 0
    assert s["duplicates"] > 0, "a timed-out request the mock recorded must be resent"
    assert s["key_mismatches"] == 0 and s["body_mismatches"] == 0, s
    assert proc.stop() == 0


def test_connection_reset_after_the_request(stack, db, clean_sinks, engage, tmp_path):
    """The API resets the connection after reading the request: before recording it
    (--reset) or after (--reset-after-accept, a lost acknowledgement)."""
    mock = Mock(engage, tmp_path, "--reset=0.15", "--reset-after-accept=0.15")
    wl = Workload(db.uri, seed=106)
    wl.setup_content()
    proc = engage(*http_args(db, tmp_path, mock, "--http-batch", "10"))
    wait_streaming(db, proc)
    wl.run(total=600, sessions=2)
    settle(db, mock, set(wl.expected))
    replayed = assert_all_delivered(db, mock, set(wl.expected), "--http-batch", "10")
    s = mock.stats()
    print(f"resets: {s['resets']} before recording, {s['lost_acks']} after (lost acks), "
          f"{s['duplicates']} duplicate events, {replayed} replayed")
    assert s["resets"] > 0 and s["lost_acks"] > 0, s
    assert s["duplicates"] > 0, "a lost acknowledgement must be resent"
    assert s["key_mismatches"] == 0 and s["body_mismatches"] == 0, s
    assert proc.stop() == 0


def test_api_down_past_the_budget_then_dlq_replay(stack, db, clean_sinks, engage, tmp_path):
    """The API is down for longer than the retry budget: events are parked, the slot
    moves on; replays while the API still fails leave the rows pending (re-parked with
    the replay's reason), replays once it is back deliver them, each exactly once."""
    mock = Mock(engage, tmp_path, "--down")
    wl = Workload(db.uri, seed=104)
    wl.setup_content()
    http = ("--http-batch", "10")
    proc = engage(*http_args(db, tmp_path, mock, *http, "--http-retry-budget-ms", "2000",
                             "--http-max-attempts", "4"))
    wait_streaming(db, proc)
    t0 = time.monotonic()
    wl.run(total=400, sessions=2)
    lib.wait_for(lambda: dlq_pending(db) == 400, 60, interval=0.1, what="400 events parked in the DLQ")
    parked_after = time.monotonic() - t0
    # The checkpoint moved on: a down API pins WAL only for the retry budget.
    last_tx = max(end for end, _ in wl.tx_end)
    lib.wait_for(lambda: lsn_int(slot_row(db)[0][1]) >= last_tx - 4096, 30,
                 what="the slot to be confirmed past the parked events")
    confirmed_after = time.monotonic() - t0
    m = metrics(proc)
    print(f"API down, budget 2 s: 400 parked {parked_after:.1f} s after the first insert, slot "
          f"confirmed past them at {confirmed_after:.1f} s; giveups {m.get('engage_http_giveups_total')}, "
          f"breaker state {m.get('engage_http_breaker_state')}")

    # Spilled while the lane was full, they went to the outbox, whose drainer meets the same
    # down API: past the retry budget they become dead letters like the rest.
    lib.wait_for(lambda: outbox_pending(db) == 0, 120, what="the outbox to give up on a down API")
    listing = dlq(db, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    # Parked after the retry budget (by the sink or the outbox's drainer): "http" rows.
    assert len(rows) == 400 and all(r["origin"] == "http" for r in rows)
    assert {r["event_id"] for r in rows} == set(wl.expected)
    assert all(json.loads(r["payload"]) == wl.expected[r["event_id"]] for r in rows)
    text = dlq(db, "list", "--limit", "5")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 6, text.stdout
    assert "http" in text.stdout

    # Still down: nothing is delivered, every row stays pending with the replay's reason.
    ids_before = {r["event_id"]: r["id"] for r in rows}
    down = dlq(db, "replay", "--http", mock.url, *http, "--http-retry-budget-ms", "500")
    assert down.returncode == 1, down.stdout + down.stderr
    assert "replayed 0 events" in down.stdout and "stopping" in down.stderr, down.stdout + down.stderr
    assert dlq_pending(db) == 400
    again = {r[0]: r[1] for r in db.query("SELECT event_id, id FROM engage_dlq WHERE replayed_at IS NULL")}
    assert again == ids_before  # re-parked on the same rows, not added
    assert db.scalar("SELECT count(*) FROM engage_dlq WHERE reason LIKE 'replay: %'") >= 1
    print(f"replay while down: {down.stdout.strip()}\n{down.stderr.strip()}")

    # Back, but rejecting about half the requests with a 400: those rows stay pending,
    # the others are marked replayed; what the API holds is exactly the replayed rows.
    mock.control(down=False, fail_rate=0.5, fail_status=400)
    half = dlq(db, "replay", "--http", mock.url, *http)
    assert half.returncode == 1, half.stdout + half.stderr
    replayed = {r[0] for r in db.query("SELECT event_id FROM engage_dlq WHERE replayed_at IS NOT NULL")}
    pending = db.query("SELECT event_id, last_status, reason FROM engage_dlq WHERE replayed_at IS NULL")
    print(f"replay against 50% 400s: {half.stdout.strip()}\n{half.stderr.strip()[:600]}")
    assert 0 < len(replayed) < 400 and len(replayed) + len(pending) == 400
    assert mock.ids() == replayed
    assert all(st == 400 and reason.startswith("replay: rejected with HTTP 400") for _, st, reason in pending)

    # A few rows by id, then the rest.
    mock.control(clear=True)
    some = sorted(db.query("SELECT id FROM engage_dlq WHERE replayed_at IS NULL ORDER BY id LIMIT 3"))
    rep = dlq(db, "replay", "--http", mock.url, *http, "--ids", ",".join(str(r[0]) for r in some))
    assert rep.returncode == 0 and "replayed 3 events" in rep.stdout, rep.stdout + rep.stderr
    rep = dlq(db, "replay", "--http", mock.url, *http)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert mock.ids() == set(wl.expected)
    assert dlq_pending(db) == 0
    assert mock.stats()["key_mismatches"] == 0
    assert len(dlq(db, "list").stdout.splitlines()) == 1  # the header: nothing pending
    assert len(dlq(db, "list", "--all").stdout.splitlines()) == 401
    # Replaying again sends nothing: every row is marked.
    again = dlq(db, "replay", "--http", mock.url)
    assert again.returncode == 0 and "replayed 0 events" in again.stdout
    assert proc.stop() == 0


def test_source_rows_are_listed_not_replayed(stack, db, clean_sinks, engage, tmp_path):
    mock = Mock(engage, tmp_path)
    proc = engage(*http_args(db, tmp_path, mock))
    wait_streaming(db, proc)
    db.exec("INSERT INTO engagement_events(content_id, user_id) VALUES (NULL, 1)")
    lib.wait_for(lambda: dlq_pending(db) == 1, 30, what="the bad row parked")
    out = dlq(db, "list", "--origin", "source")
    assert out.returncode == 0 and "source" in out.stdout and "content_id" in out.stdout, out.stdout
    assert len(dlq(db, "list", "--origin", "http").stdout.splitlines()) == 1
    row_id = db.scalar("SELECT id FROM engage_dlq")
    rep = dlq(db, "replay", "--http", mock.url, "--ids", str(row_id))
    assert rep.returncode == 1
    assert "is not replayed: bad input, not an event" in rep.stderr, rep.stderr
    assert "replayed 0 events" in rep.stdout and "1 rows refused" in rep.stdout
    rep = dlq(db, "replay", "--http", mock.url, "--origin", "source")
    assert rep.returncode == 2 and "only rows of origin \"http\"" in rep.stderr
    # Without --ids a replay does not touch source rows at all.
    rep = dlq(db, "replay", "--http", mock.url)
    assert rep.returncode == 0 and "replayed 0 events" in rep.stdout, rep.stdout + rep.stderr
    assert dlq_pending(db) == 1 and mock.stats()["received"] == 0
    assert proc.stop() == 0


# ------------------------------------------------------------ (3) independence


def _freshness(db, stack, r, rng, count, ids):
    """Inserts `count` events one by one; for each, the seconds from before its INSERT
    until Redis (content:count and content:last) and ClickHouse show it."""
    redis_s, ch_s = [], []
    for _ in range(count):
        cid = rng.randint(1, 10)
        before = int(r.get(f"content:count:{cid}") or 0)
        t0 = time.monotonic()
        event_id = db.query("INSERT INTO engagement_events(content_id, user_id, duration_ms) "
                            "VALUES (%s, 1, 1000) RETURNING event_id", (cid,))[0][0]
        ids.add(event_id)
        seen = {}

        def visible():
            now = time.monotonic()
            if "redis" not in seen:
                last = r.get(f"content:last:{cid}")
                if int(r.get(f"content:count:{cid}") or 0) > before and last and \
                        json.loads(last)["event_id"] == event_id:
                    seen["redis"] = now - t0
            if "ch" not in seen:
                n = lib.ch_query(stack.clickhouse_url, "SELECT count() FROM engagement.events_enriched "
                                 f"WHERE event_id = {event_id}")[0][0]
                if int(n) == 1:
                    seen["ch"] = now - t0
            return len(seen) == 2
        lib.wait_for(visible, 10, interval=0.005, what=f"event {event_id} in Redis and ClickHouse")
        redis_s.append(seen["redis"])
        ch_s.append(seen["ch"])
        time.sleep(rng.uniform(0.1, 0.3))  # events arrive faster than a 2 s API takes them
    return redis_s, ch_s


def _summary(xs):
    xs = sorted(xs)
    slow = sum(1 for x in xs if x > 0.25)
    return (f"p50 {statistics.median(xs) * 1000:.0f} ms, p90 {xs[int(len(xs) * 0.9)] * 1000:.0f} ms, "
            f"max {xs[-1] * 1000:.0f} ms, {slow}/{len(xs)} over 250 ms")


def test_slow_api_does_not_slow_redis_or_clickhouse(stack, db, clean_sinks, engage, tmp_path):
    """First with a quick API, then with one that answers after 2 s per request: each
    event must reach Redis and ClickHouse within 1.5 s of its commit while the HTTP
    sink lags far behind."""
    mock = Mock(engage, tmp_path)
    db.exec("INSERT INTO content SELECT g, 'video', 300, 't' FROM generate_series(1, 10) g")
    env = stack.engage_env(db.uri, sinks=("clickhouse", "redis"))
    http = ("--http-batch", "1", "--http-inflight", "1")  # 2 s API: 0.5 events/s
    proc = engage(*run_args(db, tmp_path, "--http", mock.url, *http), env=env)
    wait_streaming(db, proc)
    r = lib.redis_client(stack.redis_url)
    rng = random.Random(3)
    ids = set()
    quick_redis, quick_ch = _freshness(db, stack, r, rng, 15, ids)
    lib.wait_for(lambda: mock.ids() == ids, 30, what="the quick API to have every event")

    mock.control(delay_ms=2000)
    slow_redis, slow_ch = _freshness(db, stack, r, rng, 40, ids)
    behind = len((ids - mock.ids()) | parked_ids(db))
    m = metrics(proc)
    spilled = m.get('engage_sink_spilled_batches_total{sink="http"}', 0)
    print(f"\nquick API: Redis {_summary(quick_redis)}; ClickHouse {_summary(quick_ch)}")
    print(f"2 s API:   Redis {_summary(slow_redis)}; ClickHouse {_summary(slow_ch)}")
    print(f"2 s API: when the last event was in Redis, {behind} of {len(ids)} events had not reached "
          f"the API or were parked; {spilled:.0f} batches spilled, {dlq_pending(db)} events parked")
    assert behind >= 20, "the HTTP sink must lag for this test to mean anything"
    assert max(slow_redis) < 1.5 and max(slow_ch) < 1.5, (max(slow_redis), max(slow_ch))
    # And the API still gets every event, from the queue or through the DLQ.
    mock.control(delay_ms=0)
    assert_all_delivered(db, mock, pg_ids(db), *http)
    assert proc.stop() == 0


def test_full_queue_spills_to_the_outbox_which_drains_itself(stack, db, clean_sinks, engage,
                                                              tmp_path):
    """A queue of 4 batches in front of an API that takes 2 s a request: the queue fills,
    the source waits 500 ms, the HTTP sink spills what waits into the outbox, Redis gets
    every event meanwhile; once the API is quick again the outbox drains by itself, oldest
    first, under the keys the events would have had: every event reaches the API without
    anyone running a command, and nothing is a dead letter."""
    mock = Mock(engage, tmp_path, "--delay-ms", "2000")
    wl = Workload(db.uri, seed=107)
    wl.setup_content()
    env = stack.engage_env(db.uri, sinks=("redis",))
    # Batches of at most 40 events: 400 events make at least 10 batches, so the queue of 4
    # fills however the machine's load lets the source cut them (one run on a loaded machine
    # gathered them into so few batches that it never filled).
    proc = engage(*run_args(db, tmp_path, "--sinks", "redis,http", "--http", mock.url, "--queue-depth", "4",
                            "--http-batch", "1", "--http-inflight", "1", "--batch-events", "40"), env=env)
    wait_streaming(db, proc)
    wl.run(total=400, sessions=2, pace=0.01)
    t_inserted = time.monotonic()
    rx.wait_applied(stack.redis_url, len(wl.expected), 60, proc)
    redis_s = time.monotonic() - t_inserted
    lib.wait_for(lambda: metrics(proc).get('engage_sink_spilled_batches_total{sink="http"}', 0) >= 1, 60,
                 what="the HTTP sink to spill")
    # While the API is slow the outbox holds them, and status says so without calling them
    # dead letters.
    st = json.loads(subprocess.run([str(lib.engage_binary()), "status", "--pg", db.uri, "--json",
                                    "--admin-addr", proc.admin_addr],
                                   capture_output=True, text=True, timeout=60).stdout)
    assert st["dlq"]["pending"] == 0, st
    assert st["outbox"]["pending"] is not None, st
    listed = dlq(db, "list", "--json")
    assert listed.returncode == 0 and listed.stdout.strip() == "", listed.stdout  # no dead letters
    # The API gets quick again: the outbox drains by itself.
    mock.control(delay_ms=0)
    t_quick = time.monotonic()
    lib.wait_for(lambda: mock.ids() == set(wl.expected), 120, interval=0.2,
                 what="every event at the API, from the queue and the outbox")
    drained_s = time.monotonic() - t_quick
    lib.wait_for(lambda: outbox_pending(db) == 0, 30, what="the outbox rows marked sent")
    m = metrics(proc)
    spilled = m['engage_dlq_parked_total{origin="outbox"}']
    end = mock.stats()
    print(f"\noutbox: {spilled:.0f} events spilled, {m['engage_http_outbox_delivered_total']:.0f} "
          f"delivered from it by itself {drained_s:.1f} s after the API was quick again; every "
          f"event in Redis {redis_s:.2f} s after the last insert")
    assert spilled > 0
    assert m["engage_http_outbox_delivered_total"] == spilled
    assert m["engage_http_outbox_pending"] == 0 or outbox_pending(db) == 0
    assert dlq_pending(db) == 0, "a slow but healthy API makes no dead letters"
    # Without spilling Redis would wait for the API, 2 s a request: minutes for 400 events.
    # Each spill holds the source 500 ms first; 15 s leaves room for a loaded machine.
    assert redis_s < 15, f"Redis waited {redis_s:.1f} s for the HTTP sink"
    assert end["key_mismatches"] == 0 and end["body_mismatches"] == 0, end
    rx.check_redis(stack.redis_url, db.uri, wl.expected, require_late=False)
    assert proc.stop() == 0


# ------------------------------------------------------------ (4) crash


@pytest.mark.parametrize("batch", [1, 10])
def test_sigkill_with_requests_in_flight(stack, db, clean_sinks, engage, tmp_path, batch):
    """kill -9 while requests are in flight, five times, restarting each time. Every
    event reaches the API; an event comes twice only if the mock had it at a kill while
    it was not yet behind the slot's confirmed position, no more than one round of
    requests per kill (the sink's own progress spares the rest), and every second
    delivery carries the first one's key and body: with arrays too, since the write a
    kill interrupted is the first one sent again, cut into the same requests."""
    mock = Mock(engage, tmp_path, "--delay-ms", "5", "--delay-jitter-ms", "25")
    wl = Workload(db.uri, seed=105)
    wl.setup_content()
    inflight = 8
    http = ("--http-batch", str(batch), "--http-inflight", str(inflight))
    args = http_args(db, tmp_path, mock, *http)
    proc = engage(*args)
    wait_streaming(db, proc)
    rng = random.Random(9)
    at_kill = []  # (ids the mock held, slot's confirmed LSN) after each kill
    for k in range(5):
        # Each kill has events of its own streaming while it waits for requests in flight:
        # one workload for all five ran dry on a loaded machine before the last kill came.
        join = wl.run(total=400, sessions=2, pace=0.5, background=True)
        time.sleep(rng.uniform(0.5, 1.5))  # a random moment, not a wait for a condition
        lib.wait_for(lambda: mock.stats()["in_flight"] > 0, 20, interval=0.002, what="requests in flight")
        proc.kill()
        proc.wait(10)
        lib.wait_for(lambda: mock.stats()["in_flight"] == 0, 10, interval=0.01,
                     what="the mock to finish the dead process's requests")
        at_kill.append((mock.ids(), lsn_int(slot_row(db)[0][1])))
        proc = engage(*args, name=f"engage-after-kill-{k + 1}")
        join()
    settle(db, mock, set(wl.expected))
    s = mock.stats()
    deliveries = {}
    for e in mock.log():
        if e["status"] == 200:
            assert len(e["ids"]) == e["n"], "the mock's log must hold every id of a request"
            for i in e["ids"]:
                deliveries[i] = deliveries.get(i, 0) + 1
    dups = {i for i, n in deliveries.items() if n > 1}
    allowed = set()
    for held, confirmed in at_kill:
        done = {i for end, tx in wl.tx_end if end <= confirmed for i in tx}
        allowed |= held - done
    parked = dlq_pending(db)
    replayed = assert_all_delivered(db, mock, set(wl.expected), *http)
    end = mock.stats()
    print(f"\n--http-batch {batch}: after 5 kills: {s['received']} received, {s['unique']} unique, "
          f"{len(dups)} events twice; {len(allowed)} were at the API but not confirmed at a kill; "
          f"{parked} parked and replayed; key mismatches {end['key_mismatches']}")
    assert len(at_kill) == 5 and len(wl.expected) == 2000
    assert dups <= allowed, f"duplicates outside what was in flight: {sorted(dups - allowed)[:10]}"
    # The HTTP sink keeps its own progress: after a kill it re-sends at most the write it
    # had in progress, one round of --http-inflight requests of --http-batch events.
    assert len(dups) <= 5 * inflight * batch, f"{len(dups)} duplicates: more than 5 kills x one round"
    assert s["duplicates"] == sum(n - 1 for n in deliveries.values())
    assert s["unique"] + parked >= len(wl.expected) and replayed == parked
    # Duplicates are redeliveries: the same key and the same body every time, replays included.
    keys = {}
    log = mock.log()
    for e in log:
        for i in e["ids"]:
            keys.setdefault(i, set()).add(e["idempotency_key"])
    rekeyed = sorted(i for i, k in keys.items() if len(k) > 1)
    requests = [(e["seq"], e["idempotency_key"], e["n"], e["ids"]) for e in log
                if rekeyed and set(e["ids"]) & set(rekeyed[:1])]
    assert end["key_mismatches"] == 0 and end["body_mismatches"] == 0, (end, rekeyed[:10], requests)
    assert proc.stop() == 0
