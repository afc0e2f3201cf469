"""engage against the real thing (issue 10): a real Debezium 3.6.1 PostgreSQL
connector and `engage capture` capture the same workload at the same time,
from slots of their own, into topics of their own; then

  1. `engage run --source kafka` reads Debezium's topics into ClickHouse and
     Redis, then (sinks reset) capture's topics, then both producers' topics
     without schemas: each lands exactly PostgreSQL's truth, and the four sink
     snapshots are equal;
  2. capture's records equal Debezium's field by field (key bytes, value bytes,
     headers, partition, order), with only run-specific values masked (the
     times each producer read a change; the snapshot reads' own transaction
     and position), in both JSON converter forms (schemas on and off);
  3. on 6-partition events topics every content_id lands on the same
     partition in Debezium's topic and in capture's.

One module-scoped scenario runs the capture (four producers: Debezium and
capture, each with and without schemas) once; the tests read its topics.

The workload: 40 content rows and 40 old events exist before both start
(Debezium snapshots content only, snapshot.include.collection.list, as
capture does; the old events are deleted while events stream: delete records
that are not events), then events from 4 sessions with NULL durations and
lengths and unknown content while content rows change, updates of event rows,
rolled-back inserts, a transaction of events for a further 10 content_ids
(55 in all; some at the int32 edges) with text that JSON writers escape
differently (control characters, emoji, U+2028, empty, 3,000 bytes), and a content row inserted, updated and
deleted.
"""

import datetime as dt
import json
import re
import secrets
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import lib
import redis_expect as rx
import workload
from test_kafka_pipeline import not_events_meanwhile
from test_pipeline import ch_count, metrics
from workload import Workload, check_clickhouse

pytestmark = pytest.mark.kafka

FIXTURES = lib.REPO_ROOT / "tests" / "fixtures" / "debezium"
PARTITIONS = 6
EXTRA_CONTENT = [0, -1, 2147483647, -2147483648, 1006, 1007, 1008, 1009, 1010, 1011]
OLD_EVENTS = 40
# Values of the extra events that JSON writers are apt to write differently.
ODD_TEXTS = ["", "tab\there", "ctl \x01\x1f del \x7f", "emoji \U0001F600 \u00e9 \u65e5\u672c", "line\u2028sep",
             "</script> \\ \" / ' &", "x" * 3000]
ODD_USERS = [0, -1, 2147483647, -2147483648, None]
ODD_DURATIONS = [0, 1, 2147483647, None, 999]
DEBEZIUM_TOPIC = "dbz_"  # Debezium's topics: this + capture's topic names


def events_topic(prefix):
    return f"{prefix}.public.engagement_events"


def content_topic(prefix):
    return f"{prefix}.public.content"


def consume_all(bootstrap, topic, timeout=60):
    """lib.consume_all, but lines split at "\n" only: kcat -J writes U+2028 raw,
    and str.splitlines() would cut a message there."""
    if lib.topic_partitions(bootstrap, topic) == 0:
        return []
    proc = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in proc.stdout.decode().split("\n"):
        if line.strip():
            m = json.loads(line)
            flat = m.get("headers") or []
            out.append({"partition": m["partition"], "offset": m["offset"], "key": m.get("key"),
                        "value": m.get("payload"), "headers": [[flat[i], flat[i + 1]] for i in range(0, len(flat), 2)]})
    out.sort(key=lambda r: (r["partition"], r["offset"]))
    return out


def wait_for_messages(bootstrap, topic, count, timeout, what):
    return lib.wait_for(lambda: (lambda msgs: msgs if len(msgs) >= count else None)(consume_all(bootstrap, topic)),
                        timeout, interval=0.25, what=what)


class Scenario:
    """What the module's capture produced: db (uri, name), wl (Workload, with the
    extra events in wl.expected), counts (updates, deletes, rollbacks of event
    rows), prefixes {form: (debezium_prefix, capture_prefix)} with form "schema"
    or "noschema", messages {prefix: {"events": [...], "content": [...]}}."""


def _insert_extra_events(uri, wl):
    """One transaction of events for EXTRA_CONTENT (no content rows: unknown),
    their expected enriched form added to wl.expected."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    conn = lib.pg_connect(uri)
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            rows = []
            for i, cid in enumerate(EXTRA_CONTENT):
                cur.execute(
                    "INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
                    "VALUES (%s, %s, %s, %s, %s, %s) "
                    "RETURNING event_id, content_id, user_id, event_type, event_ts::text, duration_ms, device",
                    (cid, ODD_USERS[i % len(ODD_USERS)], ODD_TEXTS[i % len(ODD_TEXTS)],
                     now - dt.timedelta(seconds=i, microseconds=i), ODD_DURATIONS[i % len(ODD_DURATIONS)],
                     ODD_TEXTS[-1 - i % len(ODD_TEXTS)]))
                rows.append(cur.fetchone())
            cur.execute("SELECT count(*) FROM content WHERE content_id = ANY(%s)", (EXTRA_CONTENT,))
            assert cur.fetchone()[0] == 0
            cur.execute("COMMIT")
    finally:
        conn.close()
    for r in rows:
        wl.expected[r[0]] = workload.expected_event(r, None)


@pytest.fixture(scope="module")
def scenario(stack, connect, tmp_path_factory):
    logs = tmp_path_factory.mktemp("kafka-debezium")
    name = "engage_t_" + secrets.token_hex(6)
    uri = lib.pg_create_database(stack.pg_uri, name)
    tag = secrets.token_hex(4)
    # Debezium and capture use the same topic.prefix (it is in the keys' schema names,
    # which the partitioner hashes, and in source.name and the headers); Debezium's
    # topics are renamed by Kafka Connect's RegexRouter to DEBEZIUM_TOPIC + name.
    prefixes = {"schema": f"p{tag}s", "noschema": f"p{tag}n"}
    connectors, procs = [], []
    try:
        wl = Workload(uri, seed=53)
        wl.setup_content()
        lib.pg_exec(uri, "INSERT INTO engagement_events(content_id, user_id, duration_ms) "
                         f"SELECT 1, g, 1000 FROM generate_series(1, {OLD_EVENTS}) g")
        old = [r[0] for r in lib.pg_query(uri, "SELECT event_id FROM engagement_events")]
        for p in prefixes.values():
            for t in (events_topic(p), DEBEZIUM_TOPIC + events_topic(p)):
                lib.create_topic(connect.bootstrap, t, PARTITIONS)

        for form, p in prefixes.items():
            cname = f"dbz_{p}"
            config = lib.debezium_config(uri, topic_prefix=p, slot=f"{p}_dbz", publication=f"{p}_dbz",
                                         schemas=(form == "schema"),
                                         **{"snapshot.include.collection.list": "public.content",
                                            "transforms": "route",
                                            "transforms.route.type": "org.apache.kafka.connect.transforms.RegexRouter",
                                            "transforms.route.regex": "(.*)",
                                            "transforms.route.replacement": DEBEZIUM_TOPIC + "$1"})
            lib.connector_create(connect.connect_url, cname, config)
            connectors.append(cname)
            args = ["capture", "--pg", uri, "--kafka", connect.bootstrap, "--topic-prefix", p,
                    "--slot", f"{p}_cap", "--publication", f"{p}_cap",
                    "--state-dir", str(logs / f"state-{p}")]
            if form == "noschema":
                args.append("--no-schemas")
            procs.append(lib.EngageProcess(args, log_dir=logs, name=f"capture-{form}").start())
        for cname in connectors:
            lib.wait_connector_running(connect.connect_url, cname, timeout=180)
        for proc in procs:
            proc.wait_for_log(r'msg="streaming"', 120, what="capture to stream")
        # Debezium's snapshot of content is done when its content topic holds every row.
        for p in prefixes.values():
            wait_for_messages(connect.bootstrap, DEBEZIUM_TOPIC + content_topic(p), len(workload.KNOWN_CONTENT), timeout=180,
                                  what=f"Debezium's snapshot of content in {DEBEZIUM_TOPIC + content_topic(p)}")

        stop, counts = threading.Event(), {"updates": 0, "deletes": 0, "rollbacks": 0}
        noise = threading.Thread(target=not_events_meanwhile, args=(_Db(uri), old, stop, counts))
        started = time.monotonic()
        noise.start()
        try:
            wl.run(total=2_000, sessions=4, pace=0.15)
        finally:
            stop.set()
            noise.join()
        _insert_extra_events(uri, wl)
        # A content row no event refers to: created, changed, deleted (c, u, d and a tombstone).
        for sql in ("INSERT INTO content(content_id, content_type, length_seconds, title) "
                    "VALUES (5000, 'video', 10, 'gone \u00e9 \"soon\"')",
                    "UPDATE content SET length_seconds = NULL, title = NULL WHERE content_id = 5000",
                    "DELETE FROM content WHERE content_id = 5000"):
            lib.pg_exec(uri, sql)
        # A title stored out of line (TOAST) and an update that leaves it alone: pgoutput
        # sends it as "unchanged", which Debezium writes as its placeholder.
        lib.pg_exec(uri, "INSERT INTO content(content_id, content_type, length_seconds, title) "
                         "VALUES (5001, 'video', 10, %s)", (secrets.token_hex(10_000),))
        lib.pg_exec(uri, "UPDATE content SET length_seconds = 11 WHERE content_id = 5001")
        assert wl.content_updates > 10 and counts["updates"] > 10 and counts["deletes"] == OLD_EVENTS, (
            wl.content_updates, counts)
        assert lib.pg_scalar(uri, "SELECT count(*) FROM engagement_events") == len(wl.expected)

        # Every producer must write exactly this many records (a delete is followed by a tombstone).
        want = {"events": len(wl.expected) + counts["updates"] + 2 * counts["deletes"],
                "content": len(workload.KNOWN_CONTENT) + wl.content_updates + 6}
        messages = {}
        for p in prefixes.values():
            for who, t in (("debezium", DEBEZIUM_TOPIC), ("capture", "")):
                for what, topic in (("events", t + events_topic(p)), ("content", t + content_topic(p))):
                    msgs = wait_for_messages(connect.bootstrap, topic, want[what], timeout=240,
                                                 what=f"{want[what]} records in {topic}")
                    messages[(who, p, what)] = msgs
        s = Scenario()
        s.uri, s.name, s.wl, s.counts, s.want = uri, name, wl, counts, want
        s.prefixes, s.messages, s.bootstrap, s.logs = prefixes, messages, connect.bootstrap, logs
        s.workload_done = time.monotonic()
        s.capture_seconds = s.workload_done - started
        # Nothing beyond the expected count (a duplicate would show up here).
        for (who, p, what), msgs in messages.items():
            assert len(msgs) == want[what], f"{who} {p} {what}: {len(msgs)} records, want {want[what]}"
        yield s
    finally:
        for proc in procs:
            proc.stop()
        for cname in connectors:
            try:
                lib.connector_delete(connect.connect_url, cname)
            except Exception:  # noqa: BLE001 - the database drop below ends its session anyway
                pass
        lib.pg_drop_database(stack.pg_uri, name)


class _Db:
    """The slice of conftest's TestDatabase that not_events_meanwhile uses."""

    def __init__(self, uri):
        self.uri = uri


# ------------------------------------------------------------ test 1: sinks


def sink_snapshot(stack):
    """ClickHouse's rows (FINAL, by event_id) and Redis's keys with their values;
    what depends on when a write happened is left out: expiry times (only
    whether a key has one), the top-10 window and its end (rebuilt from the
    minute of the write; check_redis checks them), engage:mark (a random
    generation and a write count)."""
    rows = lib.ch_query_json(stack.clickhouse_url, "SELECT * FROM engagement.events_enriched FINAL ORDER BY event_id")
    redis = {}
    for k, (kind, value, expiry) in rx.snapshot(stack.redis_url).items():
        key = k.decode() if isinstance(k, bytes) else k
        if key in rx.TOP_KEYS or key == rx.MARK_KEY:
            value = "(masked)"
        redis[key] = (kind, value, expiry > 0)
    return rows, redis


def run_consumer(stack, scn, topic, tmp_path, name):
    """engage run --source kafka on an events topic (and the content topic
    beside it, engage's default) into clean sinks; waits
    until every event is in ClickHouse and Redis; returns (snapshot, metrics,
    seconds)."""
    lib.ch_reset(stack.clickhouse_url)
    lib.redis_reset(stack.redis_url)
    n = len(scn.wl.expected)
    t0 = time.monotonic()
    proc = lib.EngageProcess(
        ["run", "--source", "kafka", "--kafka", scn.bootstrap, "--topic", topic,
         "--group", f"g_{name}_{secrets.token_hex(3)}", "--pg", scn.uri,
         "--state-dir", str(tmp_path / f"state-{name}"),
         "--clickhouse", stack.clickhouse_url, "--redis", stack.redis_url],
        log_dir=tmp_path, name=name).start()
    try:
        def landed():
            if not proc.alive():
                raise lib.GiveUp(f"{name} exited ({proc.returncode}):\n{proc.log_tail()}")
            got = ch_count(stack.clickhouse_url)
            if got > n:
                raise lib.GiveUp(f"{got} rows in ClickHouse, more than the {n} events")
            return got == n

        lib.wait_for(landed, 240, interval=0.3, what=f"{n} events in ClickHouse from {topic}")
        rx.wait_applied(stack.redis_url, n, 120, proc=proc)
        seconds = time.monotonic() - t0
        m = metrics(proc)
        snap = sink_snapshot(stack)
        check_clickhouse(stack.clickhouse_url, scn.wl.expected)
        rx.check_redis(stack.redis_url, scn.uri, scn.wl.expected)
        assert proc.stop() == 0, proc.log_tail()
        return snap, m, seconds
    finally:
        proc.stop()


def test_debezium_and_capture_topics_land_the_same_sinks(stack, scenario, tmp_path):
    scn = scenario
    ps, pn = scn.prefixes["schema"], scn.prefixes["noschema"]
    n = len(scn.wl.expected)
    snaps, ms = {}, {}
    # The brief's pair (schemas on), then the schemas-off topics of both.
    runs = (("debezium", DEBEZIUM_TOPIC + events_topic(ps)), ("capture", events_topic(ps)),
            ("debezium-noschema", DEBEZIUM_TOPIC + events_topic(pn)), ("capture-noschema", events_topic(pn)))
    for who, topic in runs:
        snaps[who], ms[who], secs = run_consumer(stack, scn, topic, tmp_path, f"consumer-{who}")
        print(f"{who}: {n} events into ClickHouse and Redis in {secs:.1f} s")
        m = ms[who]
        assert m['engage_source_events_total{source="kafka"}'] == n, who
        assert m['engage_source_bad_input_total{source="kafka"}'] == 0, who
        # updates of event rows, deletes and their tombstones: read and skipped
        assert m['engage_source_ignored_changes_total{source="kafka"}'] == (
            scn.counts["updates"] + 2 * scn.counts["deletes"]), (who, m)

    rows_d, redis_d = snaps["debezium"]
    for who in [w for w, _ in runs[1:]]:
        rows_c, redis_c = snaps[who]
        assert len(rows_d) == len(rows_c) == n
        diff = [(a, b) for a, b in zip(rows_d, rows_c) if a != b]
        assert not diff, f"{len(diff)} ClickHouse rows differ; first: from debezium {diff[0][0]} from {who} {diff[0][1]}"
        assert sorted(redis_d) == sorted(redis_c), (
            f"Redis keys differ: only from debezium {sorted(set(redis_d) - set(redis_c))[:10]}, "
            f"only from {who} {sorted(set(redis_c) - set(redis_d))[:10]}")
        rdiff = [k for k in redis_d if redis_d[k] != redis_c[k]]
        assert not rdiff, (f"{len(rdiff)} Redis keys differ; first {rdiff[0]}: from debezium {redis_d[rdiff[0]]} "
                           f"from {who} {redis_c[rdiff[0]]}")


# ----------------------------------------------------- test 2: field by field

# Run-specific values: when each producer read the change (ts_*), and for
# snapshot reads the snapshot's transaction and position (each took a snapshot
# of its own). Streamed records come from the same WAL: their txId, lsn and
# sequence must be equal. (sequence's first element, Debezium's lastCommitLsn,
# differed until 407a261: engage wrote the first LSN of the record's own
# transaction; equal to Debezium's only where transactions do not interleave.)
TIME_FIELDS = re.compile(r'"(ts_ms|ts_us|ts_ns)":-?\d+')
SNAPSHOT_FIELDS = re.compile(r'"(txId|lsn)":(-?\d+|null)|"sequence":("(?:[^"\\]|\\.)*"|null)')
RUN_ID = "__debezium.context.runId"


def mask(value, snapshot):
    value = TIME_FIELDS.sub(lambda m: f'"{m.group(1)}":"(masked)"', value)
    if snapshot:
        value = SNAPSHOT_FIELDS.sub(lambda m: f'"{m.group(1) or "sequence"}":"(masked)"', value)
    return value


def payload(value):
    v = json.loads(value)
    return v["payload"] if "schema" in v and "payload" in v else v


def identity(table, rec):
    """(table, op, primary key) of a record; a tombstone is ("tombstone", key)."""
    if rec["value"] is None:
        return (table, "tombstone")
    p = payload(rec["value"])
    row = p["after"] if p["after"] is not None else p["before"]
    pk = row["event_id"] if table == "events" else row["content_id"]
    return (table, p["op"], pk)


def paired(msgs, table):
    """{(table, op, pk, n): record}: the n-th record of that identity in the
    order of (partition, offset); a tombstone takes the identity of the delete
    before it on its partition."""
    out, seen, last_delete = {}, Counter(), {}
    for rec in msgs:
        ident = identity(table, rec)
        if ident[1] == "tombstone":
            ident = (table, "tombstone", last_delete.get(rec["partition"]))
        elif ident[1] == "d":
            last_delete[rec["partition"]] = ident[2]
        k = ident + (seen[ident],)
        seen[ident] += 1
        out[k] = rec
    return out


def json_diff(a, b, path=""):
    """Field-level differences between two parsed JSON values: [(path, a, b)]."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        if list(a) != list(b) and set(a) == set(b):
            out.append((path + " (field order)", list(a), list(b)))
        for k in list(a) + [k for k in b if k not in a]:
            out += json_diff(a.get(k, "(absent)"), b.get(k, "(absent)"), f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_diff(x, y, f"{path}[{i}]")]
    return [] if (a == b and type(a) is type(b)) else [(path, a, b)]


def compare_records(d, c, ident):
    """Differences between Debezium's record d and capture's c: a list of
    strings (field, Debezium's value, engage's value)."""
    out = []
    if d["key"] != c["key"]:
        out.append(f"{ident} key: Debezium {d['key']!r} engage {c['key']!r}")
    if d["partition"] != c["partition"]:
        out.append(f"{ident} partition: Debezium {d['partition']} engage {c['partition']}")
    if (d["value"] is None) != (c["value"] is None):
        out.append(f"{ident} value: Debezium {d['value']!r:.200} engage {c['value']!r:.200}")
    elif d["value"] is not None:
        snapshot = ident[1] == "r"
        dv, cv = mask(d["value"], snapshot), mask(c["value"], snapshot)
        if dv != cv:
            fields = json_diff(json.loads(dv), json.loads(cv))
            if not fields:
                fields = [("(same JSON, other bytes)", dv[:300], cv[:300])]
            for path, a, b in fields:
                out.append(f"{ident} value {path}: Debezium {json.dumps(a, ensure_ascii=False)[:300]} "
                           f"engage {json.dumps(b, ensure_ascii=False)[:300]}")
    dh = [[n, "(masked)" if n == RUN_ID else v] for n, v in d["headers"]]
    ch = [[n, "(masked)" if n == RUN_ID else v] for n, v in c["headers"]]
    if dh != ch:
        out.append(f"{ident} headers: Debezium {dh} engage {ch}")
    return out


def report(problems):
    """The differences grouped by field, so that one systematic difference reads as one line."""
    by_field = defaultdict(list)
    for p in problems:
        field = re.sub(r"^\(.*?\) ", "", p).split(":")[0]
        by_field[field].append(p)
    return f"{len(problems)} differences between Debezium's and engage's records:\n" + "\n".join(
        f"{len(v)} x {f}; e.g. {v[0]}" for f, v in by_field.items())


def compare_topics(scn, form):
    """Every record of capture's two topics against Debezium's: (problems, Counter of
    (table, op) compared)."""
    p = scn.prefixes[form]
    problems, compared = [], Counter()
    for table in ("events", "content"):
        dm, cm = scn.messages[("debezium", p, table)], scn.messages[("capture", p, table)]
        dp, cp = paired(dm, table), paired(cm, table)
        only_d, only_c = sorted(set(dp) - set(cp), key=str), sorted(set(cp) - set(dp), key=str)
        if only_d or only_c:
            problems.append(f"{table}: records only from Debezium {only_d[:10]} ({len(only_d)}), "
                            f"only from engage {only_c[:10]} ({len(only_c)})")
        for ident in sorted(set(dp) & set(cp), key=str):
            compared[(table, ident[1])] += 1
            problems += compare_records(dp[ident], cp[ident], ident)
        # The same changes in the same order on every partition (commit order).
        for part in range(max([m["partition"] for m in dm + cm], default=0) + 1):
            do = [identity(table, m) for m in dm if m["partition"] == part]
            co = [identity(table, m) for m in cm if m["partition"] == part]
            if do != co:
                first = next((i for i, (a, b) in enumerate(zip(do, co)) if a != b), min(len(do), len(co)))
                problems.append(f"{table} partition {part}: order differs at offset {first}: Debezium "
                                f"{do[first:first + 3]} engage {co[first:first + 3]}")
    return problems, compared


@pytest.mark.parametrize("form", ["schema", "noschema"])
def test_capture_records_equal_debeziums_field_by_field(scenario, form):
    scn = scenario
    problems, compared = compare_topics(scn, form)
    print(f"{form}: compared {dict(compared)}")
    assert compared[("events", "c")] == len(scn.wl.expected), compared
    assert compared[("events", "u")] == scn.counts["updates"], compared
    assert compared[("events", "d")] == compared[("events", "tombstone")] == scn.counts["deletes"], compared
    assert compared[("content", "r")] == len(workload.KNOWN_CONTENT), compared
    assert compared[("content", "u")] == scn.wl.content_updates + 2, compared
    assert compared[("content", "c")] == 2, compared
    assert compared[("content", "d")] == compared[("content", "tombstone")] == 1, compared
    # the update that left the TOASTed title alone: Debezium's placeholder, engage's the same
    u = [m for m in scn.messages[("debezium", scn.prefixes[form], "content")]
         if m["value"] and payload(m["value"])["op"] == "u" and payload(m["value"])["after"]["content_id"] == 5001]
    assert len(u) == 1 and payload(u[0]["value"])["after"]["title"] == "__debezium_unavailable_value", u
    assert not problems, report(problems)


# -------------------------------------------------- test 3: key -> partition


def partitions_of(msgs):
    """{content_id: {partition}} of the events' records (c only)."""
    out = defaultdict(set)
    for m in msgs:
        if m["value"] is not None:
            p = payload(m["value"])
            if p["op"] == "c":
                out[p["after"]["content_id"]].add(m["partition"])
    return out


@pytest.mark.parametrize("form", ["schema", "noschema"])
def test_each_content_id_lands_on_debeziums_partition(scenario, form):
    scn = scenario
    p = scn.prefixes[form]
    dparts = partitions_of(scn.messages[("debezium", p, "events")])
    cparts = partitions_of(scn.messages[("capture", p, "events")])
    assert len(dparts) >= 50, f"only {len(dparts)} content_ids"
    assert sorted(dparts) == sorted(cparts)
    assert all(len(v) == 1 for v in dparts.values()), "Debezium put one content_id on two partitions"
    differ = {cid: (dparts[cid], cparts[cid]) for cid in dparts if dparts[cid] != cparts[cid]}
    assert not differ, f"{len(differ)} of {len(dparts)} content_ids on other partitions (Debezium, engage): {differ}"
    used = {next(iter(v)) for v in dparts.values()}
    assert used == set(range(PARTITIONS)), f"partitions used: {used}"
    if form == "noschema":
        # Without schemas the hashed key {"content_id":N} holds no prefix: the
        # recorded placement of tests/fixtures/debezium holds here too.
        recorded = {int(k): v for k, v in json.loads((FIXTURES / "partitions_6_noschema.json").read_text()).items()}
        common = sorted(set(recorded) & set(cparts))
        assert len(common) >= 10, common
        assert {c: recorded[c] for c in common} == {c: next(iter(cparts[c])) for c in common}
