"""Issue 7, what it must show 2: edge values. Rows with every nullable column NULL
in turn, timestamps at and past the ends of what each sink's types hold (with and
without microseconds), extreme durations, hostile text and 1 MB values, unknown
content, content with NULL and zero lengths. Afterwards every sink holds, for
every event, exactly PostgreSQL's values (ClickHouse by query, Redis by its JSON,
the API by what it received), or a dead-letter row naming that sink (or the
source, for all of them) with a reason, and nothing else.

Each event has a content_id of its own, so content:last:{content_id} is that
event's JSON in Redis."""

import calendar
import datetime as dt
import json
from decimal import Decimal

import lib
import redis_expect as rx
import workload
from test_http import Mock
from test_pipeline import run_args, wait_streaming

TIMESTAMPS = [
    "1900-01-01 00:00:00", "1969-12-31 23:59:59", "1969-12-31 23:59:59.999999",
    "1970-01-01 00:00:00", "1970-01-01 00:00:00.000001", "2026-01-08 14:21:52.123456",
    "2106-02-07 06:28:15", "2106-02-07 06:28:15.5", "2106-02-07 06:28:16",
    "2299-12-31 23:59:59", "2299-12-31 23:59:59.999999", "9999-12-31 23:59:59",
    "9999-12-31 23:59:59.999999",
]
TEXTS = [
    'he said "hi"', "back\\slash \\\\ two", "line1\nline2\r\n", "ctl \x01\x02\x1f\x7f end",
    "sep \u2028 and \u2029", '{"event_id":1,"x":[null]}', "ß 漢字 🙂", "", " ",
    "x" * 1_000_000, '"' * 200_000 + "\\" * 200_000,
]
DURATIONS = [None, 0, 1, -1, -5, 999, 1234, 2147483647, -2147483648]

# content kinds: (content_type, length_seconds), or None for no content row
KINDS = [("video", 300), ("clip", None), ("short", 0), (None, 60), ("neg", -7), None]


def build_rows():
    """(content_id, user_id, event_type, event_ts, duration_ms, device, kind) rows."""
    rows = []
    base = dict(user_id=7, event_type="play", event_ts="2026-01-08 14:21:52", duration_ms=7000,
                device="web", kind=0)
    for col in ("user_id", "event_type", "duration_ms", "device"):
        rows.append({**base, col: None})
    for ts in TIMESTAMPS:
        rows.append({**base, "event_ts": ts})
    for d in DURATIONS:
        for kind in range(len(KINDS)):
            rows.append({**base, "duration_ms": d, "kind": kind})
    for t in TEXTS:
        rows.append({**base, "device": t, "event_type": t[:1000]})
    rows.append({**base, "user_id": -2147483648})
    rows.append({**base, "user_id": 2147483647})
    return rows


def ch_rows(url):
    text = lib._ch_request(url,
                           "SELECT event_id, content_id, user_id, event_type, toUnixTimestamp(event_ts) "
                           "AS event_ts, duration_ms, device, content_type, length_seconds, "
                           "toString(engagement_seconds) AS engagement_seconds, "
                           "toString(engagement_pct) AS engagement_pct FROM "
                           "engagement.events_enriched FINAL FORMAT JSONEachRow", 60)
    # Int64 comes quoted (output_format_json_quote_64bit_integers)
    return {int(r["event_id"]): r for r in map(json.loads, filter(None, text.split("\n")))}


def same_in_clickhouse(got, want):
    """ClickHouse's row against the expected event, value by value (Decimals as text)."""
    for key, value in want.items():
        g = got[key]
        if key in ("engagement_seconds", "engagement_pct"):
            if value is None:
                if g not in (None, "\\N", "NULL"):
                    return f"{key}: {g!r} != NULL"
                continue
            if Decimal(g) != Decimal(str(value)):
                return f"{key}: {g!r} != {value!r}"
        elif key == "event_ts":
            # By value: 18.16 prints the epoch itself as 0000-00-00 00:00:00.
            epoch = calendar.timegm(dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S").timetuple())
            if int(g) != epoch:
                return f"{key}: {g!r} != {value!r} ({epoch})"
        elif key in ("event_id", "content_id", "user_id", "duration_ms", "length_seconds"):
            if (None if g is None else int(g)) != value:
                return f"{key}: {g!r} != {value!r}"
        elif g != value:
            return f"{key}: {str(g)[:60]!r} != {str(value)[:60]!r}"
    return None


def test_edge_values_reach_every_sink_or_are_parked(stack, db, clean_sinks, engage, tmp_path):
    mock = Mock(engage, tmp_path)
    rows = build_rows()
    for i, r in enumerate(rows):
        kind = KINDS[r["kind"]]
        cid = 10_000 + i
        r["content_id"] = cid
        if kind is not None:
            db.exec("INSERT INTO content(content_id, content_type, length_seconds) VALUES (%s, %s, %s)",
                    (cid, kind[0], kind[1]))
    env = stack.engage_env(db.uri, sinks=("clickhouse", "redis"))
    env["ENGAGE_HTTP"] = mock.url
    proc = engage(*run_args(db, tmp_path, "--http-batch", "1"), env=env)
    wait_streaming(db, proc)
    for r in rows:
        db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, "
                "duration_ms, device) VALUES (%(content_id)s, %(user_id)s, %(event_type)s, "
                "%(event_ts)s, %(duration_ms)s, %(device)s)", r)
    # One row that is no event (content_id NULL) is parked by the source for every sink.
    db.exec("INSERT INTO engagement_events(content_id, user_id) VALUES (NULL, 1)")

    pg = db.query("SELECT e.event_id, e.content_id, e.user_id, e.event_type, e.event_ts::text, "
                  "e.duration_ms, e.device, c.content_type, c.length_seconds, "
                  "c.content_id IS NOT NULL FROM engagement_events e "
                  "LEFT JOIN content c USING (content_id) ORDER BY e.event_id")
    expected = {}
    for (eid, cid, uid, et, ts, dur, dev, ctype, length, found) in pg:
        if cid is None:
            continue
        expected[eid] = workload.expected_event((eid, cid, uid, et, ts, dur, dev),
                                                (ctype, length) if found else None)
    no_event = [row[0] for row in pg if row[1] is None]
    assert len(expected) == len(rows) and len(no_event) == 1

    def parked(origin):
        try:
            return {r[0]: r[1] for r in db.query(
                "SELECT event_id, reason FROM engage_dlq WHERE origin = %s", (origin,))}
        except Exception:  # noqa: BLE001 - the table appears with the first parked row
            return {}

    def settled():
        ch = ch_rows(stack.clickhouse_url)
        api = mock.stats()
        return (len(ch) + len(parked("clickhouse")) == len(expected)
                and api["unique"] + len(parked("http")) == len(expected)) or None

    lib.wait_for(settled, 180, interval=0.5, what="every event in every sink or parked")

    # Source: only the row that is no event.
    source = parked("source")
    assert list(source) == no_event and "content_id" in source[no_event[0]], source

    # ClickHouse: the exact values, or parked with the reason (18.16's DateTime holds
    # 1970-01-01 00:00:00 to 2106-02-07 06:28:15 and no microseconds: the README says so).
    ch = ch_rows(stack.clickhouse_url)
    ch_parked = parked("clickhouse")
    assert set(ch) | set(ch_parked) == set(expected) and not set(ch) & set(ch_parked)
    # 18.16 reads DateTime text only up to 2105-12-31 23:59:59 ('2106-02-07 06:28:15'
    # becomes 23295 there); a current server holds up to 2106-02-07 06:28:15.
    version = lib.ch_query(stack.clickhouse_url, "SELECT version()")[0][0]
    last = "2105-12-31 23:59:59" if version.startswith("18.") else "2106-02-07 06:28:15"
    for eid, reason in ch_parked.items():
        assert "outside what the clickhouse column DateTime" in reason, reason
        assert "\\" not in reason, reason
        ts = expected[eid]["event_ts"]
        assert not ("1970-01-01 00:00:00" <= ts <= last), ts
    for eid, got in ch.items():
        diff = same_in_clickhouse(got, expected[eid])
        assert diff is None, f"event {eid}: {diff}"
    assert len(ch_parked) == (10 if version.startswith("18.") else 8), sorted(e["event_ts"] for e in (expected[i] for i in ch_parked))

    # Redis: content:last of every event's own content is exactly its JSON; every count 1.
    r = lib.redis_client(stack.redis_url)
    for eid, want in expected.items():
        cid = want["content_id"]
        assert r.get(f"content:last:{cid}") == rx.expected_json_text(want), f"event {eid}"
        assert r.get(f"content:count:{cid}") == "1"
    assert parked("redis") == {}

    # The API: what it received, by value.
    got = {e["event_id"]: e for e in mock.get("/events")}
    assert parked("http") == {}
    assert set(got) == set(expected)
    for eid, want in expected.items():
        assert got[eid] == want, f"event {eid}"
    assert proc.alive()
    assert proc.stop() == 0
