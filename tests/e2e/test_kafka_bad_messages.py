"""`engage run --source kafka` on malformed Debezium messages (issue 10,
DESIGN.md section 5: bad input never crashes; the message goes to the DLQ with
its position and a reason, a metric counts it, the stream continues).

One topic of the test's own, one partition, created to take a 10 MB value.
Bad messages of many kinds are produced with kcat interleaved with good ones
(op c records of tests/fixtures/debezium, schemas on and off, each with an
event_id of its own) and with records that are not events but not bad either
(tombstones, heartbeats, transaction markers, op u/d/r/m, another table): the
consumer must park each bad message exactly once in engage_dlq (origin
"source", position "topic/partition/offset" at the offset it was produced at,
a reason naming what was wrong, the message's bytes), deliver every good one
to ClickHouse and Redis, skip the rest without parking them, count each kind in
its metric and stay alive; restarted, it reads on from where it stopped:
nothing parked twice, nothing delivered twice.
"""

import copy
import datetime as dt
import hashlib
import json
import os
import random
import re
import subprocess
import tempfile
import urllib.request
from collections import Counter

import pytest

import lib
import redis_expect as rx
import workload
from test_pipeline import ch_count, metrics
from workload import check_clickhouse

pytestmark = pytest.mark.kafka

FIXTURES = lib.REPO_ROOT / "tests" / "fixtures" / "debezium"
MAX_MESSAGE = 20_000_000  # the topic's max.message.bytes, and kcat's message.max.bytes
GOOD_ID_BASE = 7_000_000_000  # event_ids of the good messages (beyond int32: a bigint)


# ------------------------------------------------------------------ kcat


def produce(bootstrap, topic, value, key=None):
    """Produce one message to partition 0 with kcat; value bytes (any bytes,
    b"" an empty value) or None (a tombstone). lib.produce sends a value from a
    file, which kcat skips when empty, and with kcat's 1 MB message cap."""
    cmd = ["kcat", "-P", "-b", bootstrap, "-t", topic, "-p", "0",
           "-X", f"message.max.bytes={MAX_MESSAGE}"]
    if value is None or value == b"":
        # "KEY<US>" on stdin: the empty value is NULL with -Z, an empty message without.
        cmd += ["-K", "\x1f"] + (["-Z"] if value is None else [])
        proc = subprocess.run(cmd, input=((key or "") + "\x1f\n").encode(), capture_output=True, timeout=60)
    else:
        if key is not None:
            cmd += ["-k", key]
        fd, path = tempfile.mkstemp(prefix="engage-kcat-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            proc = subprocess.run(cmd + [path], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        finally:
            os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"kcat -P -t {topic} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")


def offsets_and_sizes(bootstrap, topic):
    """[(offset, value size or -1 for NULL)] of partition 0, read raw (binary-safe)."""
    proc = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
                           "-X", f"fetch.message.max.bytes={MAX_MESSAGE}", "-f", "%o %S\\n"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [tuple(int(x) for x in line.split()) for line in proc.stdout.decode().splitlines() if line.strip()]


# -------------------------------------------------------------- messages


def fixture_records(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def good_sources():
    """The op c records of the fixtures whose event engage takes (content_id
    set, event_ts within ClickHouse's DateTime64 range past 1970): (key, parsed
    value, schemas on)."""
    out = []
    for name, schema in (("events_schema.jsonl", True), ("events_noschema.jsonl", False)):
        for r in fixture_records(name):
            if r["value"] is None:
                continue
            v = json.loads(r["value"])
            p = v["payload"] if schema else v
            if p["op"] == "c" and p["after"]["content_id"] is not None and p["after"]["event_ts"] > 0:
                out.append((r["key"], v, schema))
    return out


def fixture_value(name, pred):
    """The first record of a fixture file whose parsed value satisfies pred: (key, value text)."""
    for r in fixture_records(name):
        if r["value"] is not None and pred(json.loads(r["value"])):
            return r["key"], r["value"]
    raise LookupError(name)


BASE_KEY, BASE_TEXT = fixture_value("events_noschema.jsonl", lambda v: v["op"] == "c" and v["after"]["event_id"] == 4)
SCHEMA_KEY, SCHEMA_TEXT = fixture_value("events_schema.jsonl",
                                        lambda v: v["payload"]["op"] == "c" and v["payload"]["after"]["event_id"] == 4)


def base():
    return json.loads(BASE_TEXT)


def with_(path_value_pairs=(), drop=(), obj=None):
    """The base record (noschema) with fields set ((path, value), path a tuple)
    and removed (paths), as bytes."""
    v = copy.deepcopy(obj) if obj is not None else base()
    for path, value in path_value_pairs:
        d = v
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    for path in drop:
        d = v
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return dumps(v)


def schema_with(payload_pairs):
    """The schemas-on record with payload fields set."""
    v = json.loads(SCHEMA_TEXT)
    return with_([(("payload",) + p, x) for p, x in payload_pairs], obj=v)


def big_device(size):
    """A valid record whose device is `size` bytes."""
    return with_([(("after", "device"), "d" * size)])


def bad_messages():
    """[(kind, value bytes, regex the park reason must match)]: each must be
    refused as input. Parking reasons are engage's words; the regexes ask that
    the reason names the field or what was wrong."""
    good_text = BASE_TEXT.encode()
    nul_raw = good_text.replace(b'"device":"ios"', b'"device":"i\x00s"')
    assert nul_raw != good_text
    cases = [
        ("not JSON", b"hello, this is not JSON", r"not JSON"),
        ("truncated", good_text[: len(good_text) // 2], r"not JSON"),
        ("truncated after a cached schema part", SCHEMA_TEXT.encode()[:-40], r"not JSON"),
        ("empty value", b"", r"empty value"),
        ("whitespace only", b"   \n ", r"not JSON"),
        ("array at the top level", b'[{"op":"c"}]', r"array.*not a JSON object"),
        ("string at the top level", b'"c"', r"not JSON|not a JSON object"),
        ("JSON null text (not a tombstone)", b"null", r"null.*not a JSON object|not JSON"),
        ("trailing bytes after the object", good_text + b"xyz", r"not JSON"),
        ("invalid escape", good_text.replace(b'"ios"', b'"i\\qs"'), r"not JSON"),
        ("invalid UTF-8 in a string", good_text.replace(b'"ios"', b'"i\xff\xfes"'), r"not JSON|UTF-8"),
        ("lone surrogate escape", good_text.replace(b'"ios"', b'"\\ud800"'), r"not JSON|[Uu]nicode|surrogate"),
        ("raw NUL byte in a string", nul_raw, r"not JSON"),
        ("escaped NUL in a string", good_text.replace(b'"ios"', b'"i\\u0000s"'), r"not JSON|u0000|NUL"),
        ("100000 nested arrays", b"[" * 100_000, r"nests"),
        ("objects nested 70 deep in after", with_([(("after", "device"), json.loads("{\"a\":" * 70 + "1" + "}" * 70))]),
         r"nests"),
        ("duplicate key", good_text.replace(b'"op":"c"', b'"op":"c","op":"c"'), r"not JSON|duplicate"),
        ("10 MB value", big_device(10 << 20), r"over the .*cap"),
        ("4 MiB + 1 byte string", big_device((4 << 20) + 1), r"device.*cap|over the .*cap"),
        ("payload null", b'{"schema":null,"payload":null}', r"payload.*null"),
        ("payload an array", b'{"schema":null,"payload":[]}', r"payload.*array"),
        ("schema without payload", b'{"schema":{"type":"struct"}}', r"payload"),
        ("schema a number", with_(obj={"schema": 5, "payload": base()}), r"schema.*integer|schema.*not an object"),
        ("missing after (op c)", with_(drop=[("after",)]), r"after"),
        ("after null (op c)", with_([(("after",), None)]), r"after"),
        ("after an array (op c)", with_([(("after",), [1, 2])]), r"after.*array"),
        ("op unknown", with_([(("op",), "x")]), r"op"),
        ("op a number", with_([(("op",), 1)]), r"op.*integer"),
        ("op two letters", with_([(("op",), "cc")]), r"op"),
        ("no op, not a heartbeat or marker", with_(drop=[("op",)]), r"op"),
        ("source a string", with_([(("source",), "pg")]), r"source"),
        ("source.table a number", with_([(("source", "table"), 5)]), r"table"),
        ("no table anywhere", with_(drop=[("source",)]), r"table"),
        # (a boolean snapshot is what Debezium before 1.x wrote: taken)
        ("source.snapshot a number", with_([(("source", "snapshot"), 5)]), r"snapshot"),
        ("source.lsn a string", with_([(("source", "lsn"), "0/16B3748")]), r"lsn"),
        ("source.txId negative", with_([(("source", "txId"), -5)]), r"txId"),
        ("missing event_id", with_(drop=[("after", "event_id")]), r"event_id"),
        ("event_id null", with_([(("after", "event_id"), None)]), r"event_id"),
        ("event_id a string", with_([(("after", "event_id"), "12")]), r"event_id.*string"),
        ("event_id a float", with_([(("after", "event_id"), 1.5)]), r"event_id.*real"),
        ("event_id past int64", good_text.replace(b'"event_id":4', b'"event_id":99999999999999999999999'),
         r"not JSON|event_id"),
        ("huge exponent", good_text.replace(b'"duration_ms":1500', b'"duration_ms":1e400'), r"not JSON|duration_ms"),
        ("content_id past int32", with_([(("after", "content_id"), 2147483648)]), r"content_id.*int32"),
        ("content_id below int32", with_([(("after", "content_id"), -2147483649)]), r"content_id.*int32"),
        ("content_id null (as Debezium writes a NULL column)", with_([(("after", "content_id"), None)]), r"content_id"),
        ("user_id past int32", with_([(("after", "user_id"), 4294967296)]), r"user_id.*int32"),
        ("duration_ms a string", with_([(("after", "duration_ms"), "abc")]), r"duration_ms.*string"),
        ("duration_ms true", with_([(("after", "duration_ms"), True)]), r"duration_ms.*true"),
        ("event_type a number", with_([(("after", "event_type"), 5)]), r"event_type.*not a string"),
        ("device an object", with_([(("after", "device"), {})]), r"device.*object"),
        ("event_ts a float", with_([(("after", "event_ts"), 1769940001123456.5)]), r"event_ts"),
        ("event_ts garbage string", with_([(("after", "event_ts"), "yesterday at noon")]), r"event_ts"),
        ("event_ts null", with_([(("after", "event_ts"), None)]), r"event_ts"),
        ("event_ts past year 9999", with_([(("after", "event_ts"), 10 ** 18)]), r"event_ts"),
        ("event_ts garbage string, schemas on (cached schema part)",
         schema_with([(("after", "event_ts"), "2026-13-45 99:99")]), r"event_ts"),
        ("delete without before", with_([(("op",), "d"), (("before",), None), (("after",), None)]), r"before"),
        ("content row with a string content_id",
         with_([(("source", "table"), "content"),
                (("after",), {"content_id": "x", "content_type": "video", "length_seconds": 1, "title": "t"})]),
         r"content_id.*string"),
    ]
    kinds = [c[0] for c in cases]
    assert len(set(kinds)) == len(kinds)
    return cases


def skipped_messages():
    """[(kind, key, value or None)]: not events and not bad (counted in
    engage_source_ignored_changes_total, never parked)."""
    ts = int(dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    heartbeat_schema = {"type": "struct", "fields": [{"type": "int64", "optional": False, "field": "ts_ms"}],
                        "optional": False, "name": "__debezium-heartbeat.dbserver1.Heartbeat"}
    marker = {"status": "BEGIN", "id": "571:53195832", "ts_ms": ts, "event_count": None, "data_collections": None}
    end = dict(marker, status="END", event_count=2,
               data_collections=[{"data_collection": "public.engagement_events", "event_count": 2}])
    u_key, u_text = fixture_value("events_noschema.jsonl", lambda v: v["op"] == "u")
    us_key, us_text = fixture_value("events_schema.jsonl", lambda v: v["payload"]["op"] == "u")
    d_key, d_text = fixture_value("events_noschema.jsonl", lambda v: v["op"] == "d")
    ds_key, ds_text = fixture_value("events_schema.jsonl", lambda v: v["payload"]["op"] == "d")
    r_key, r_text = fixture_value("events_noschema.jsonl", lambda v: v["op"] == "r")
    other = base()
    other["source"]["table"] = "orders"
    other["after"] = {"order_id": 1}
    message = base()
    message.update(op="m", before=None, after=None)
    message["message"] = {"prefix": "p", "content": "aGk="}
    return [
        ("tombstone", d_key, None),
        ("heartbeat", '{"serverName":"dbserver1"}', dumps({"ts_ms": ts})),
        ("heartbeat, schemas on", None, dumps({"schema": heartbeat_schema, "payload": {"ts_ms": ts}})),
        ("transaction BEGIN", '{"id":"571:53195832"}', dumps(marker)),
        ("transaction END", '{"id":"571:53195832"}', dumps(end)),
        ("op u", u_key, u_text.encode()),
        ("op u, schemas on", us_key, us_text.encode()),
        ("op d", d_key, d_text.encode()),
        ("op d, schemas on", ds_key, ds_text.encode()),
        ("op r (snapshot read, not delivered by default)", r_key, r_text.encode()),
        ("another table", None, dumps(other)),
        ("op m (logical decoding message)", None, dumps(message)),
    ]


def good_messages(first_id, count=24):
    """count (key, value bytes, expected enriched event) from the fixtures' op c
    records, taken in turn, event_ids first_id, first_id + 1, ..."""
    out = []
    srcs = good_sources()
    for i in range(count):
        key, v, schema = srcs[i % len(srcs)]
        v = copy.deepcopy(v)
        p = v["payload"] if schema else v
        eid = first_id + i
        p["after"]["event_id"] = eid
        a = p["after"]
        ts = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=a["event_ts"])
        row = (eid, a["content_id"], a["user_id"], a["event_type"], ts.isoformat(sep=" "), a["duration_ms"],
               a["device"])
        out.append((key, dumps(v), workload.expected_event(row, None)))
    return out


# ---------------------------------------------------------------- checks


def dlq_rows(db):
    return db.query("SELECT position, origin, event_id, reason, payload, parked_at FROM engage_dlq ORDER BY id")


def check_redis_counts(url, expected):
    """content:count:{id} of the good events, and nothing counted twice."""
    want = Counter(ev["content_id"] for ev in expected.values())
    c = lib.redis_client(url)
    try:
        got = {int(k.rsplit(":", 1)[1]): int(c.get(k)) for k in c.scan_iter("content:count:*")}
    finally:
        c.close()
    assert got == dict(want), f"content:count: redis {got} want {dict(want)}"
    assert rx.seen_count(url) == len(expected)


def consumer(engage, kafka, stack, db, topic, group, tmp_path, name):
    return engage("run", "--source", "kafka", "--kafka", kafka.bootstrap, "--topic", topic, "--content-topic", "",
                  "--group", group, "--pg", db.uri, "--state-dir", str(tmp_path / "consumer-state"),
                  "--clickhouse", stack.clickhouse_url, "--redis", stack.redis_url, name=name)


def wait_settled(stack, db, proc, n_good, n_parked):
    """Wait until ClickHouse holds n_good events, Redis's seen-set n_good, and the
    DLQ n_parked rows; more than that fails at once."""

    def settled():
        if not proc.alive():
            raise lib.GiveUp(f"{proc.name} exited ({proc.returncode}):\n{proc.log_tail()}")
        got = ch_count(stack.clickhouse_url)
        try:
            parked = db.scalar("SELECT count(*) FROM engage_dlq")
        except Exception:  # noqa: BLE001 - the table is created on the first park
            parked = 0
        if got > n_good or parked > n_parked:
            raise lib.GiveUp(f"{got} events in ClickHouse (want {n_good}), {parked} parked (want {n_parked})")
        return got == n_good and parked == n_parked

    lib.wait_for(settled, 180, interval=0.3, what=f"{n_good} events delivered and {n_parked} parked")
    rx.wait_applied(stack.redis_url, n_good, 60, proc=proc)


def test_bad_messages_are_parked_once_and_the_stream_goes_on(stack, kafka, db, clean_sinks, engage, tmp_path):
    topic = f"bad_{db.name}"
    lib.create_topic(kafka.bootstrap, topic, 1, config={"max.message.bytes": MAX_MESSAGE})
    bad = bad_messages()
    skipped = skipped_messages()
    good = good_messages(GOOD_ID_BASE)
    assert len(bad) >= 30 and len(good) >= 20

    # bad, good-or-skipped, bad, ...: the stream alternates until every list is used up.
    plan = []  # (what, kind, key, value, expected)
    fillers = [("good", None, k, v, e) for k, v, e in good] + [("skipped", kind, k, v, None) for kind, k, v in skipped]
    random.Random(7).shuffle(fillers)
    for i in range(max(len(bad), len(fillers))):
        if i < len(bad):
            kind, value, why = bad[i]
            plan.append(("bad", kind, "k", value, why))
        if i < len(fillers):
            plan.append(fillers[i])
    for what, kind, key, value, _ in plan:
        produce(kafka.bootstrap, topic, value, key=key)
    # Each message at the offset of its place in the plan, whole.
    layout = offsets_and_sizes(kafka.bootstrap, topic)
    assert layout == [(i, -1 if p[3] is None else len(p[3])) for i, p in enumerate(plan)], "produced layout"

    expected = {e["event_id"]: e for what, _, _, _, e in plan if what == "good"}
    n_bad = len(bad)
    group = f"g_{db.name}"
    proc = consumer(engage, kafka, stack, db, topic, group, tmp_path, "consumer-1")
    wait_settled(stack, db, proc, len(expected), n_bad)
    assert proc.alive()
    lib.wait_for(lambda: _healthz(proc), 10, what="/healthz to answer 200")

    # The DLQ: one row per bad message, at its offset, with a reason and its bytes.
    rows = dlq_rows(db)
    by_pos = Counter(r[0] for r in rows)
    assert all(n == 1 for n in by_pos.values()), f"parked twice: {[p for p, n in by_pos.items() if n > 1]}"
    want_pos = {f"{topic}/0/{i}": p for i, p in enumerate(plan) if p[0] == "bad"}
    assert set(by_pos) == set(want_pos), (
        f"parked but not bad: {sorted(set(by_pos) - set(want_pos))}; "
        f"bad but not parked: {[(pos, want_pos[pos][1]) for pos in sorted(set(want_pos) - set(by_pos))]}")
    problems = []
    for position, origin, event_id, reason, payload, _ in rows:
        _, kind, _, value, why = want_pos[position]
        if origin != "source":
            problems.append(f"{kind}: origin {origin!r}")
        if not re.search(why, reason or ""):
            problems.append(f"{kind}: reason {reason!r} does not match /{why}/")
        if payload is None or hashlib.sha256(bytes(payload)).digest() != hashlib.sha256(value).digest():
            problems.append(f"{kind}: payload of {0 if payload is None else len(payload)} bytes is not the "
                            f"message's {len(value)}")
    assert not problems, "\n".join(problems)
    print("\n".join(f"  {want_pos[r[0]][1]:<58} {r[0]:<40} {r[3]}" for r in rows))

    # The good ones: every value, exactly once.
    check_clickhouse(stack.clickhouse_url, expected)
    check_redis_counts(stack.redis_url, expected)
    m = metrics(proc)
    assert m['engage_source_bad_input_total{source="kafka"}'] == n_bad
    assert m['engage_source_events_total{source="kafka"}'] == len(expected)
    assert m['engage_source_ignored_changes_total{source="kafka"}'] == len(skipped)
    assert proc.stop() == 0, proc.log_tail()

    # Restarted: it reads on from its committed offsets. One more bad message and one
    # more good one show it consumes; nothing before them is read again.
    parked_at = {r[0]: r[5] for r in rows}
    more_bad = b'{"op":"c","after":'
    more_good = good_messages(GOOD_ID_BASE + 1000, count=1)[0]
    produce(kafka.bootstrap, topic, more_bad, key="k")
    produce(kafka.bootstrap, topic, more_good[1], key=more_good[0])
    expected[more_good[2]["event_id"]] = more_good[2]
    proc2 = consumer(engage, kafka, stack, db, topic, group, tmp_path, "consumer-2")
    wait_settled(stack, db, proc2, len(expected), n_bad + 1)
    rows2 = dlq_rows(db)
    by_pos2 = Counter(r[0] for r in rows2)
    assert all(n == 1 for n in by_pos2.values())
    assert set(by_pos2) == set(want_pos) | {f"{topic}/0/{len(plan)}"}
    reparked = [r[0] for r in rows2 if r[0] in parked_at and r[5] != parked_at[r[0]]]
    assert not reparked, f"parked again after the restart: {reparked}"
    check_clickhouse(stack.clickhouse_url, expected)
    check_redis_counts(stack.redis_url, expected)
    raw = int(lib.ch_query(stack.clickhouse_url, "SELECT count() FROM engagement.events_enriched")[0][0])
    assert raw == len(expected), f"{raw} rows before FINAL: delivered again after the restart"
    m2 = metrics(proc2)
    assert m2['engage_source_bad_input_total{source="kafka"}'] == 1, m2
    assert m2['engage_source_events_total{source="kafka"}'] == 1, m2
    assert m2.get('engage_source_ignored_changes_total{source="kafka"}', 0) == 0, m2
    assert proc2.stop() == 0, proc2.log_tail()


def _healthz(proc):
    with urllib.request.urlopen(f"http://{proc.admin_addr}/healthz", timeout=5) as r:
        return r.status == 200
