"""What Redis must hold after engage has applied a set of events, computed from
PostgreSQL and from the workload's expected events, never from engage (DESIGN.md
section 2; issue 3), and a snapshot of every key for replay comparisons.

  check_redis(url, db_uri, expected)  assert every key engage writes, exactly
  wait_applied(url, n, timeout)       wait until the seen-set holds n event ids
  snapshot(url)                       {key: (type, value, pexpiretime)} of every key

Ownership: every function opens and closes its own connections.
"""

import datetime as dt
import json

import redis as _redis

import lib
from workload import decimal_text

LAST_TTL = 3600
BUCKET_TTL = 900
TOP_TTL = 120
TOP_MINUTES = 10
SEEN_BITS = 20
SEEN_CHUNK_BYTES = (1 << SEEN_BITS) // 8
# The sink rebuilds top:content:10m after every batch, and an idle stream sends
# an empty batch every 30 s: the window read may lag the wall clock that much.
TOP_STALE_S = 40

# top:content:10m and the window end it was built for (engage:top:end), TTL 120 s.
TOP_KEYS = ("top:content:10m", "engage:top:end")
EXPECTED_KEYS = ("content:count:", "content:last:", "top:content:bucket:", "engage:seen:", "engage:last:")
# engage:mark: the generation of Redis's data and the script calls applied (loss detection), no TTL.
MARK_KEY = "engage:mark"


def bytes_client(url):
    """A redis-py client returning bytes (the seen-set chunks are binary)."""
    return _redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def expected_json_text(ev):
    """The exact text engage writes for an expected event (workload.expected_event):
    keys in the design's order, no spaces, UTF-8 as is, decimals as engage renders
    them (7000 ms -> 7.0, pct 0.02, 0 -> 0.0)."""
    parts = []
    for key, value in ev.items():
        if value is None:
            text = "null"
        elif key == "engagement_seconds":
            text = decimal_text(ev["duration_ms"], 3)
        elif key == "engagement_pct":
            text = decimal_text(round(value * 100), 2)
        else:
            text = json.dumps(value, ensure_ascii=False)
        parts.append(json.dumps(key) + ":" + text)
    return "{" + ",".join(parts) + "}"


def minute_name(t):
    return t.strftime("%Y%m%d%H%M")


def utc_now():
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def scan_keys(client, pattern="*"):
    return sorted(k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(match=pattern, count=1000))


def seen_count(url):
    """Number of event ids in the seen-set (bits set over every chunk)."""
    c = bytes_client(url)
    try:
        return sum(c.bitcount(k) for k in scan_keys(c, "engage:seen:*"))
    finally:
        c.close()


def wait_applied(url, n, timeout, proc=None):
    """Wait until the seen-set holds n ids: every event is applied (each script
    call sets its bits and applies their effects atomically). More than n is a
    failure at once."""

    def done():
        if proc is not None and not proc.alive():
            raise lib.GiveUp(f"engage exited with {proc.returncode}:\n{proc.log_tail()}")
        got = seen_count(url)
        if got > n:
            raise lib.GiveUp(f"{got} ids in the seen-set, more than the {n} events")
        return got == n

    lib.wait_for(done, timeout, interval=0.2, what=f"{n} events in Redis's seen-set")


def seen_bitmaps(event_ids):
    """{chunk: bytes} the seen-set must hold for these event ids (bit 0 is the
    most significant bit of byte 0, as SETBIT numbers them)."""
    chunks = {}
    for eid in event_ids:
        buf = chunks.setdefault(eid >> SEEN_BITS, bytearray(SEEN_CHUNK_BYTES))
        bit = eid & ((1 << SEEN_BITS) - 1)
        buf[bit >> 3] |= 0x80 >> (bit & 7)
    return {k: bytes(v) for k, v in chunks.items()}


def seen_missing(url, event_ids):
    """The ids among event_ids whose seen bit is not set (for monitors)."""
    want = seen_bitmaps(event_ids)
    c = bytes_client(url)
    try:
        have = {chunk: c.get(f"engage:seen:{chunk}") or b"" for chunk in want}
    finally:
        c.close()
    missing = []
    for eid in event_ids:
        data = have[eid >> SEEN_BITS]
        bit = eid & ((1 << SEEN_BITS) - 1)
        if (bit >> 3) >= len(data) or not data[bit >> 3] & (0x80 >> (bit & 7)):
            missing.append(eid)
    return missing


def pg_expectations(db_uri, now):
    """From PostgreSQL: counts per content_id, the newest event per content_id by
    (event_ts, event_id) with its event_ts in microseconds, and the per-minute
    counts of the events within the bucket TTL of `now` (naive UTC)."""
    counts = dict(lib.pg_query(db_uri, "SELECT content_id, count(*) FROM engagement_events GROUP BY 1"))
    newest = {
        cid: (eid, int(us))
        for cid, eid, us in lib.pg_query(
            db_uri,
            "SELECT DISTINCT ON (content_id) content_id, event_id, "
            "(extract(epoch FROM event_ts) * 1000000)::bigint "
            "FROM engagement_events ORDER BY content_id, event_ts DESC, event_id DESC",
        )
    }
    cutoff = now - dt.timedelta(seconds=BUCKET_TTL)
    # The sink cut off at the wall clock of each write, the check at `now`: no
    # event may lie where the two could disagree (the workload's late events
    # are 20-90 minutes old, the others at most 90 s).
    band = lib.pg_scalar(
        db_uri,
        "SELECT count(*) FROM engagement_events WHERE event_ts BETWEEN %s AND %s",
        (cutoff - dt.timedelta(minutes=3), cutoff + dt.timedelta(minutes=5)),
    )
    assert band == 0, f"{band} events lie near the bucket cut-off; the check cannot tell"
    late = lib.pg_scalar(db_uri, "SELECT count(*) FROM engagement_events WHERE event_ts < %s", (cutoff,))
    buckets = {}
    for minute, cid, n in lib.pg_query(
        db_uri,
        "SELECT to_char(event_ts, 'YYYYMMDDHH24MI'), content_id, count(*) FROM engagement_events "
        "WHERE event_ts >= %s GROUP BY 1, 2",
        (cutoff,),
    ):
        buckets.setdefault(minute, {})[str(cid)] = float(n)
    return counts, newest, buckets, late


def top_union(buckets, end):
    """ZUNIONSTORE of the TOP_MINUTES minute buckets ending at minute `end`."""
    union = {}
    for w in range(TOP_MINUTES):
        for member, score in buckets.get(minute_name(end - dt.timedelta(minutes=w)), {}).items():
            union[member] = union.get(member, 0.0) + score
    return union


def check_redis(url, db_uri, expected, require_late=True):
    """Assert that Redis holds exactly what engage must have written for the
    events of db_uri's engagement_events, whose enriched form is `expected`
    (event_id -> dict, as workload.Workload.expected)."""
    __tracebackhide__ = True
    now = utc_now()
    counts, newest, want_buckets, late = pg_expectations(db_uri, now)
    assert sum(counts.values()) == len(expected), "PostgreSQL and the workload disagree"
    if require_late:
        assert late > 0, "the workload must include events older than the bucket TTL"
    c = lib.redis_client(url)
    cb = bytes_client(url)
    try:
        keys = scan_keys(c)
        stray = [k for k in keys if not k.startswith(EXPECTED_KEYS) and k not in TOP_KEYS + (MARK_KEY,)]
        assert not stray, f"keys engage must not write: {stray[:10]}"

        # content:count:{id} = PostgreSQL's count per content_id; no TTL
        count_keys = [k for k in keys if k.startswith("content:count:")]
        got = dict(zip((int(k.rsplit(":", 1)[1]) for k in count_keys), map(int, c.mget(count_keys)))) if count_keys else {}
        diff = {cid: (counts.get(cid), got.get(cid)) for cid in set(counts) | set(got) if counts.get(cid) != got.get(cid)}
        assert not diff, f"content:count differs for {len(diff)} contents (pg, redis): {dict(list(diff.items())[:10])}"

        # content:last:{id} = the newest event's JSON, exactly; engage:last beside it
        last_keys = [k for k in keys if k.startswith("content:last:")]
        assert sorted(int(k.rsplit(":", 1)[1]) for k in last_keys) == sorted(newest), "content:last keys"
        order_keys = [k for k in keys if k.startswith("engage:last:")]
        assert sorted(int(k.rsplit(":", 1)[1]) for k in order_keys) == sorted(newest), "engage:last keys"
        bad = []
        for cid, (eid, ts_us) in sorted(newest.items()):
            text, order = c.get(f"content:last:{cid}"), c.get(f"engage:last:{cid}")
            want = expected[eid]
            if text is None or json.loads(text) != want or text != expected_json_text(want):
                bad.append((cid, eid, text))
            elif order != f"{ts_us}:{eid}":
                bad.append((cid, eid, f"engage:last={order!r}, want {ts_us}:{eid}"))
        assert not bad, (f"content:last differs for {len(bad)} contents; first: content {bad[0][0]} "
                         f"want event {bad[0][1]} {expected_json_text(expected[bad[0][1]])} got {bad[0][2]}")

        # top:content:bucket:{minute}: exactly the minutes within the TTL, exact scores
        bucket_keys = [k for k in keys if k.startswith("top:content:bucket:")]
        got_buckets = {k.rsplit(":", 1)[1]: dict(c.zrange(k, 0, -1, withscores=True)) for k in bucket_keys}
        assert sorted(got_buckets) == sorted(want_buckets), (
            f"bucket minutes: redis {sorted(got_buckets)} postgres {sorted(want_buckets)}")
        for minute, want in want_buckets.items():
            assert got_buckets[minute] == want, f"bucket {minute}: redis {got_buckets[minute]} postgres {want}"

        # top:content:10m = the union of the 10 minute buckets ending at the minute of its
        # last rebuild: now, or up to TOP_STALE_S before
        top = dict(c.zrange("top:content:10m", 0, -1, withscores=True))
        candidates = {minute_name(t): top_union(want_buckets, t) for t in (now - dt.timedelta(seconds=TOP_STALE_S), now)}
        assert top in candidates.values(), f"top:content:10m {top} is none of the windows {candidates}"
        assert top or not any(candidates.values()), "top:content:10m is empty"

        # TTLs within their bounds
        pipe = c.pipeline(transaction=False)
        for k in keys:
            pipe.ttl(k)
        ttls = dict(zip(keys, pipe.execute()))
        for k, ttl in ttls.items():
            if k.startswith(("content:count:", "engage:seen:")) or k == MARK_KEY:
                bound = None
            elif k.startswith(("content:last:", "engage:last:")):
                bound = LAST_TTL
            elif k.startswith("top:content:bucket:"):
                bound = BUCKET_TTL
            else:
                bound = TOP_TTL
            if bound is None:
                assert ttl == -1, f"{k} has a TTL ({ttl} s); it must not expire"
            else:
                assert 0 < ttl <= bound, f"{k} TTL {ttl} s, want within (0, {bound}]"

        # the seen-set: exactly the events' bits, chunks created whole
        want_seen = seen_bitmaps(expected)
        seen_keys = [k for k in keys if k.startswith("engage:seen:")]
        assert sorted(seen_keys) == sorted(f"engage:seen:{ch}" for ch in want_seen), "seen-set chunks"
        for ch, bits in want_seen.items():
            assert cb.get(f"engage:seen:{ch}") == bits, f"engage:seen:{ch} is not exactly the events' bits"
    finally:
        c.close()
        cb.close()


def snapshot(url):
    """Every key's (type, value, absolute expiry in ms or -1): for comparing
    Redis before and after a replay."""
    c = bytes_client(url)
    try:
        out = {}
        for k in scan_keys(c):
            kind = c.type(k).decode()
            if kind == "string":
                value = c.get(k)
            elif kind == "zset":
                value = tuple(c.zrange(k, 0, -1, withscores=True))
            elif kind == "hash":
                value = {f.decode(): v.decode() for f, v in c.hgetall(k).items()}
            else:
                value = ("unexpected type", kind)
            out[k] = (kind, value, c.execute_command("PEXPIRETIME", k))
        return out
    finally:
        c.close()

