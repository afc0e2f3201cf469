#!/usr/bin/env python3
"""Record what a real Debezium PostgreSQL connector writes to Kafka, as test
fixtures in tests/fixtures/debezium/ (see the README.md written there).

    python3 scripts/kafka/record_fixtures.py [--out DIR] [--keep]

Each recording runs on a fresh stack of its own (scripts/stack.sh up TMP kafka
connect: PostgreSQL, a KRaft broker, Connect with the Debezium plugin), so the
topics start empty and the database "engage" starts from scripts/schema.sql.
Four recordings:

  schema     JSON converter with schemas  -> events_schema.jsonl, content_schema.jsonl
  noschema   JSON converter, no schemas   -> events_noschema.jsonl, content_noschema.jsonl
  part6      the events topic created with 6 partitions before the connector
             starts, 50 content_ids, schemas on -> partitions_6.json
             (+ events_partitions_6.jsonl); partitions_6_noschema.json the same
             with schemas off

Every line of a .jsonl is {"topic","partition","offset","key","value","headers"}:
key and value are the message's bytes as the broker holds them (UTF-8 text,
null for a NULL key or value, e.g. a tombstone), checked byte for byte against
a raw (non-JSON) kcat read; headers is [[name, value], ...] in order. Re-runnable:
the output files are rewritten. Takes about a minute.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import lib  # noqa: E402

TOPIC_PREFIX = "dbserver1"
EVENTS_TOPIC = f"{TOPIC_PREFIX}.public.engagement_events"
CONTENT_TOPIC = f"{TOPIC_PREFIX}.public.content"
CONNECTOR = "engage-fixtures"
SLOT = "debezium_fixtures"
PUBLICATION = "debezium_fixtures_pub"
MARKER_DEVICE = "marker-end"
MARKER_CONTENT = 9999


def log(msg):
    print(f"record_fixtures: {msg}", file=sys.stderr, flush=True)


class TempStack:
    """A stack of its own in a temp dir, with kafka and connect."""

    def __init__(self, keep):
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="engage-fixtures-")

    def __enter__(self):
        t0 = time.monotonic()
        lib._run_stack("up", self.dir, "kafka", "connect", timeout=300)
        self.env = lib.read_env_file(Path(self.dir) / "env")
        self.pg = self.env["ENGAGE_PG"]
        self.bootstrap = self.env["KAFKA_BOOTSTRAP"]
        self.connect = self.env["CONNECT_URL"]
        log(f"stack up in {time.monotonic() - t0:.1f}s in {self.dir}")
        return self

    def __exit__(self, *exc):
        lib._run_stack("down", self.dir, timeout=300)
        if self.keep:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def sql(uri, *statements):
    """Run statements in one transaction (COMMIT at the end)."""
    conn = lib.pg_connect(uri)
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            for st in statements:
                if isinstance(st, tuple):
                    cur.execute(*st)
                else:
                    cur.execute(st)
        conn.commit()
    finally:
        conn.close()


def rolled_back(uri, *statements):
    conn = lib.pg_connect(uri)
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            for st in statements:
                cur.execute(st)
        conn.rollback()
    finally:
        conn.close()


EV = "INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) VALUES "


def before_connector(uri):
    """Rows present when the connector starts: its snapshot (op "r")."""
    sql(uri,
        "INSERT INTO content VALUES (2001, 'video', 120, 'Intro to engage'), "
        "(2002, 'article', NULL, 'Über naïve café'), (2003, 'podcast', 3600, NULL)")
    sql(uri,
        EV + "(2001, 601, 'view', '2026-01-01 12:00:00', 30000, 'android'), "
        "(2002, 602, 'like', '2026-01-01 12:00:05.5', NULL, 'ios')")


def workload(uri):
    """The streamed part; each step its own transaction unless said. The
    comments are the README's list (the step numbers are its "steps")."""
    steps = []

    def step(what, fn, *args):
        fn(uri, *args)
        steps.append(what)

    step("1 single-row insert", sql, EV + "(2001, 601, 'view', '2026-02-01 10:00:00', 30000, 'android')")
    step("2 single-row insert, event_ts with microseconds", sql,
         EV + "(2002, 602, 'click', '2026-02-01 10:00:01.123456', 1500, 'ios')")
    step("3 multi-row transaction (3 inserts, one txId)", sql,
         EV + "(2001, 603, 'view', '2026-02-01 10:00:02', 1000, 'web')",
         EV + "(2003, 604, 'play', '2026-02-01 10:00:03', 250000, 'tv')",
         EV + "(2002, 605, 'view', '2026-02-01 10:00:04', 20, 'web')")
    step("4 NULL user_id, event_type, duration_ms and device", sql,
         EV + "(2003, NULL, NULL, '2026-02-01 10:00:05', NULL, NULL)")
    step("5 non-ASCII text and a quote and a backslash in device", sql,
         (EV + "(2001, 606, %s, '2026-02-01 10:00:06', 7, %s)", ("vue é", 'tablet "é" 日本 \\ end')))
    step("6 rolled-back transaction (writes nothing)", rolled_back,
         EV + "(2001, 607, 'view', '2026-02-01 10:00:07', 1, 'rolled-back')")
    step("7 event_ts before 1970 (1969-12-31 23:59:59.999999 and 1900-01-01)", sql,
         EV + "(2002, 608, 'view', '1969-12-31 23:59:59.999999', 5, 'old')",
         EV + "(2002, 609, 'view', '1900-01-01 00:00:00', 6, 'older')")
    step("8 NULL content_id (the message key's column)", sql,
         EV + "(NULL, 610, 'view', '2026-02-01 10:00:08', 8, 'web')")
    step("9 UPDATE of an event (default replica identity: before is null)", sql,
         "UPDATE engagement_events SET duration_ms = 45000, device = 'android-tv' "
         "WHERE content_id = 2001 AND user_id = 601 AND event_ts = '2026-02-01 10:00:00'")
    step("10 UPDATE that changes an event's content_id (its message key)", sql,
         "UPDATE engagement_events SET content_id = 2003 WHERE user_id = 603")
    step("11 DELETE of an event (before: the primary key only; then a tombstone)", sql,
         "DELETE FROM engagement_events WHERE user_id = 605")
    step("12 content INSERT", sql, "INSERT INTO content VALUES (2004, 'video', 60, 'Short')")
    step("13 content UPDATE", sql, "UPDATE content SET title = 'Short, renamed', length_seconds = 61 WHERE content_id = 2004")
    step("14 content DELETE (then a tombstone)", sql, "DELETE FROM content WHERE content_id = 2004")
    step("15 an event and a content change in one transaction", sql,
         "UPDATE content SET title = 'Intro to engage (2nd ed.)' WHERE content_id = 2001",
         EV + "(2001, 611, 'view', '2026-02-01 10:00:09', 9, 'web')")
    step("16 TRUNCATE content", sql, "TRUNCATE content")
    step("17 marker: content 9999 and an event with device 'marker-end' in one transaction (the recorder waits for both)",
         sql, f"INSERT INTO content VALUES ({MARKER_CONTENT}, 'marker', 0, 'marker')",
         EV + f"({MARKER_CONTENT}, 0, 'marker', '2026-02-01 10:00:10', 0, '{MARKER_DEVICE}')")
    return steps


def raw_read(bootstrap, topic):
    """{(partition, offset): (key bytes or None, value bytes or None)} from
    kcat's non-JSON output: a length-prefixed frame per message."""
    proc = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
         "-f", "%p %o %K %S\n%k%s"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=True,
    )
    data, pos, out = proc.stdout, 0, {}
    while pos < len(data):
        nl = data.index(b"\n", pos)
        p, o, klen, vlen = (int(x) for x in data[pos:nl].split(b" "))
        pos = nl + 1
        key = None if klen < 0 else data[pos:pos + klen]
        pos += max(klen, 0)
        value = None if vlen < 0 else data[pos:pos + vlen]
        pos += max(vlen, 0)
        out[(p, o)] = (key, value)
    return out


def records(bootstrap, topic):
    """The topic's messages as fixture lines, checked against the raw bytes."""
    msgs = lib.consume_all(bootstrap, topic)
    raw = raw_read(bootstrap, topic)
    if len(raw) != len(msgs):
        raise RuntimeError(f"{topic}: {len(msgs)} messages in JSON, {len(raw)} raw")
    lines = []
    for m in msgs:
        rk, rv = raw[(m["partition"], m["offset"])]
        for name, got, want in (("key", m["key"], rk), ("value", m["value"], rv)):
            if (got is None) != (want is None) or (got is not None and got.encode() != want):
                raise RuntimeError(f"{topic} {m['partition']}/{m['offset']}: {name} differs between kcat -J and raw")
        lines.append({"topic": topic, "partition": m["partition"], "offset": m["offset"],
                      "key": m["key"], "value": m["value"], "headers": m["headers"]})
    return lines


def write_jsonl(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    log(f"wrote {path} ({len(lines)} lines)")


def start_connector(st, schemas):
    config = lib.debezium_config(st.pg, topic_prefix=TOPIC_PREFIX, slot=SLOT, publication=PUBLICATION,
                                 schemas=schemas)
    t0 = time.monotonic()
    lib.connector_create(st.connect, CONNECTOR, config)
    lib.wait_connector_running(st.connect, CONNECTOR, timeout=120)
    log(f"connector running in {time.monotonic() - t0:.1f}s")
    return config


def has_marker(bootstrap, topic, needle):
    return any(m["value"] and needle in m["value"] for m in lib.consume_all(bootstrap, topic))


def record_main(schemas, keep):
    with TempStack(keep) as st:
        before_connector(st.pg)
        config = start_connector(st, schemas)
        # the snapshot: 3 content rows and 2 events
        lib.wait_for_messages(st.bootstrap, CONTENT_TOPIC, 3, timeout=120)
        lib.wait_for_messages(st.bootstrap, EVENTS_TOPIC, 2, timeout=120)
        steps = workload(st.pg)
        lib.wait_for(lambda: has_marker(st.bootstrap, EVENTS_TOPIC, MARKER_DEVICE), 120, interval=0.5,
                     what="the marker event")
        lib.wait_for(lambda: has_marker(st.bootstrap, CONTENT_TOPIC, '"marker"'), 120, interval=0.5,
                     what="the marker content row")
        time.sleep(2)  # nothing should follow the marker; give a stray message the time to show
        ev = records(st.bootstrap, EVENTS_TOPIC)
        co = records(st.bootstrap, CONTENT_TOPIC)
        topics = sorted(t["topic"] for t in lib.kafka_metadata(st.bootstrap)["topics"])
        lib.connector_delete(st.connect, CONNECTOR)
        return ev, co, config, steps, topics


def record_partitions(schemas, keep):
    with TempStack(keep) as st:
        lib.create_topic(st.bootstrap, EVENTS_TOPIC, 6)
        config = start_connector(st, schemas)
        ids = list(range(1001, 1046)) + [0, 1, 7, 2147483647, -1]
        sql(st.pg, *[EV + f"({cid}, 1, 'view', '2026-03-01 00:00:00', 1, 'p6')" for cid in ids])
        sql(st.pg, EV + f"({MARKER_CONTENT}, 0, 'marker', '2026-03-01 00:00:01', 0, '{MARKER_DEVICE}')")
        lib.wait_for(lambda: has_marker(st.bootstrap, EVENTS_TOPIC, MARKER_DEVICE), 120, interval=0.5,
                     what="the marker event")
        lines = records(st.bootstrap, EVENTS_TOPIC)
        placed = {}
        for line in lines:
            value = json.loads(line["value"])
            after = (value.get("payload", value))["after"]
            if after["content_id"] == MARKER_CONTENT:
                continue
            placed[str(after["content_id"])] = line["partition"]
        placed = dict(sorted(placed.items(), key=lambda kv: int(kv[0])))
        if len(placed) != len(ids):
            raise RuntimeError(f"expected {len(ids)} content_ids, got {len(placed)}")
        lib.connector_delete(st.connect, CONNECTOR)
        return placed, lines, config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "debezium"))
    ap.add_argument("--keep", action="store_true", help="keep the temp stacks' directories")
    ap.add_argument("--only", choices=["main", "partitions"], help="record only one part")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    if args.only and (out / "recording.json").exists():  # a partial run keeps the other part's notes
        meta = json.loads((out / "recording.json").read_text())
    if args.only in (None, "main"):
        for schemas, suffix in ((True, "schema"), (False, "noschema")):
            ev, co, config, steps, topics = record_main(schemas, args.keep)
            write_jsonl(out / f"events_{suffix}.jsonl", ev)
            write_jsonl(out / f"content_{suffix}.jsonl", co)
            meta[suffix] = {"config": config, "steps": steps, "topics": topics}
    if args.only in (None, "partitions"):
        for schemas, suffix in ((True, ""), (False, "_noschema")):
            placed, lines, config = record_partitions(schemas, args.keep)
            with open(out / f"partitions_6{suffix}.json", "w") as f:
                json.dump(placed, f, indent=1, sort_keys=False)
                f.write("\n")
            log(f"wrote {out / f'partitions_6{suffix}.json'}")
            write_jsonl(out / f"events_partitions_6{suffix}.jsonl", lines)
            meta["partitions_6" + suffix] = {"config": config}
    with open(out / "recording.json", "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
