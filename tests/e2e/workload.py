"""The mixed workload every end-to-end test drives through PostgreSQL, and the
expected enriched events computed from PostgreSQL independently of engage.

Several sessions insert events concurrently in transactions of mixed sizes
(so event_id order differs from commit order), with NULL durations, unknown
content ids, late events, and content rows updated while events stream.

How the expected content is known without trusting engage: each event
transaction first reads the content rows it references with FOR SHARE. A
concurrent UPDATE of such a row then waits for the event transaction to
commit (and an update that committed first is what FOR SHARE returns), so the
row read is exactly the content as of the event's commit.
"""

import datetime as dt
import random
import threading
import time
from fractions import Fraction

import lib

KNOWN_CONTENT = range(1, 41)        # rows in the content table
UNKNOWN_CONTENT = range(1001, 1006)  # never in the content table
TYPES = ["video", "article", "podcast", "short", None]
EVENT_TYPES = ["play", "pause", "finish", "like", "share", None]
DEVICES = ["web", "ios", "android", "tv", None, "b\u00e4d \"dev\"\n"]
TX_SIZES = [1, 1, 1, 2, 3, 5, 10, 20, 50, 100, 300]


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _round_half_away(q):
    """Round a Fraction to hundredths, half away from zero; return hundredths."""
    sign = -1 if q < 0 else 1
    q = abs(q) * 100
    whole, rem = divmod(q.numerator, q.denominator)
    if 2 * rem >= q.denominator:
        whole += 1
    return sign * whole


def decimal_text(n, scale):
    """The engagement JSON's decimal form: trailing zeros trimmed, >=1 digit."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    whole, frac = divmod(n, 10 ** scale)
    digits = str(frac).rjust(scale, "0").rstrip("0") or "0"
    return f"{sign}{whole}.{digits}"


def expected_event(row, content):
    """The enriched event (DESIGN.md section 1) as a dict of JSON values, for
    an events row and the content row (content_type, length_seconds) or None."""
    event_id, content_id, user_id, event_type, event_ts, duration_ms, device = row
    ctype, length = content if content is not None else (None, None)
    seconds = pct = None
    # The brief: both NULL when duration_ms or length_seconds is missing; pct NULL at 0.
    if duration_ms is not None and length is not None:
        seconds = float(decimal_text(duration_ms, 3))
        if length != 0:
            pct = float(decimal_text(_round_half_away(Fraction(duration_ms, 1000 * length)), 2))
    return {
        "event_id": event_id,
        "content_id": content_id,
        "user_id": user_id,
        "event_type": event_type,
        "event_ts": event_ts[:19],
        "duration_ms": duration_ms,
        "device": device,
        "content_type": ctype,
        "length_seconds": length,
        "engagement_seconds": seconds,
        "engagement_pct": pct,
    }


class Workload:
    def __init__(self, uri, seed=1, late_fraction=0.05):
        self.uri = uri
        self.rng = random.Random(seed)
        self.late_fraction = late_fraction
        self.expected = {}      # event_id -> expected enriched event
        self.tx_end = []        # (wal insert lsn after commit, [event ids])
        self.lock = threading.Lock()
        self.errors = []
        self.content_updates = 0

    def setup_content(self):
        conn = lib.pg_connect(self.uri)
        with conn.cursor() as cur:
            for cid in KNOWN_CONTENT:
                length = [300, 0, None, 45, 1800, 1, 7][cid % 7]
                cur.execute(
                    "INSERT INTO content(content_id, content_type, length_seconds, title) "
                    "VALUES (%s, %s, %s, %s)",
                    (cid, TYPES[cid % len(TYPES)], length, f"title {cid}"),
                )
        conn.close()

    def _event_ts(self, rng):
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        if rng.random() < self.late_fraction:
            back = dt.timedelta(minutes=rng.uniform(20, 90))  # older than the bucket TTL
        else:
            back = dt.timedelta(seconds=rng.uniform(0, 90))
        return (now - back).isoformat(sep=" ")

    def _one_tx(self, cur, rng, size):
        events = []
        for _ in range(size):
            cid = rng.choice(KNOWN_CONTENT) if rng.random() > 0.06 else rng.choice(UNKNOWN_CONTENT)
            duration = None if rng.random() < 0.1 else rng.choice([0, 5, 125, 1005, 1500, 7000, rng.randint(1, 3_600_000)])
            events.append((cid, rng.randint(1, 100_000), rng.choice(EVENT_TYPES), self._event_ts(rng), duration, rng.choice(DEVICES)))
        ids = sorted({e[0] for e in events})
        cur.execute("BEGIN")
        cur.execute(
            "SELECT content_id, content_type, length_seconds FROM content "
            "WHERE content_id = ANY(%s) ORDER BY content_id FOR SHARE",
            (ids,),
        )
        content = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
        args = ",".join(cur.mogrify("(%s,%s,%s,%s,%s,%s)", e).decode() for e in events)
        cur.execute(
            "INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
            f"VALUES {args} RETURNING event_id, content_id, user_id, event_type, event_ts::text, duration_ms, device"
        )
        rows = cur.fetchall()
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0, 0.005))  # let other sessions commit in between
        cur.execute("COMMIT")
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        after = lsn_int(cur.fetchone()[0])
        with self.lock:
            for r in rows:
                self.expected[r[0]] = expected_event(r, content.get(r[1]))
            self.tx_end.append((after, [r[0] for r in rows]))

    def _session(self, seed, quota, pace):
        rng = random.Random(seed)
        conn = lib.pg_connect(self.uri)
        try:
            with conn.cursor() as cur:
                done = 0
                while done < quota:
                    size = min(rng.choice(TX_SIZES), quota - done)
                    self._one_tx(cur, rng, size)
                    done += size
                    if pace:
                        time.sleep(rng.uniform(0, 2 * pace))
        except Exception as exc:  # noqa: BLE001 - surfaced by run()
            self.errors.append(exc)
        finally:
            conn.close()

    def _updater(self, stop, seed):
        rng = random.Random(seed)
        conn = lib.pg_connect(self.uri)
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cid = rng.choice(KNOWN_CONTENT)
                    cur.execute(
                        "UPDATE content SET length_seconds = %s, content_type = %s WHERE content_id = %s",
                        (rng.choice([None, 0, 1, 60, 300, 1800, rng.randint(1, 10000)]), rng.choice(TYPES), cid),
                    )
                    self.content_updates += 1
                    time.sleep(rng.uniform(0.005, 0.03))
        except Exception as exc:  # noqa: BLE001
            self.errors.append(exc)
        finally:
            conn.close()

    def run(self, total, sessions=4, pace=0.0, background=False, update_content=True):
        """Insert `total` events from `sessions` concurrent sessions while a
        further session updates content rows (unless update_content is false).
        pace: mean seconds between a session's transactions (0 = as fast as
        possible). With background, returns a join() callable instead of waiting."""
        stop = threading.Event()
        before = len(self.expected)
        updater = threading.Thread(target=self._updater, args=(stop, self.rng.random()))
        if update_content:
            updater.start()
        quotas = [total // sessions + (1 if i < total % sessions else 0) for i in range(sessions)]
        threads = [threading.Thread(target=self._session, args=(self.rng.random(), q, pace)) for q in quotas]
        for t in threads:
            t.start()

        def join():
            for t in threads:
                t.join()
            stop.set()
            if update_content:
                updater.join()
            if self.errors:
                raise self.errors[0]
            assert len(self.expected) == before + total, (len(self.expected), before, total)
            return self

        return join if background else join()


def check_clickhouse(url, expected):
    """Assert that ClickHouse holds exactly one row per expected event, with
    exactly the expected fields."""
    rows = lib.ch_query_json(url, "SELECT * FROM engagement.events_enriched FINAL ORDER BY event_id")
    got = {}
    for r in rows:
        r["event_id"] = int(r["event_id"])  # 64-bit integers come quoted
        assert r["event_id"] not in got, f"event {r['event_id']} twice after FINAL"
        got[r["event_id"]] = r
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing, f"{len(missing)} events missing from ClickHouse, e.g. {missing[:10]}"
    assert not extra, f"{len(extra)} unexpected events in ClickHouse, e.g. {extra[:10]}"
    mismatches = []
    for event_id, want in expected.items():
        have = {k: got[event_id].get(k) for k in want}
        if have != want:
            mismatches.append((want, have))
    assert not mismatches, f"{len(mismatches)} rows differ; first: expected {mismatches[0][0]} got {mismatches[0][1]}"
    total, unique = lib.ch_query(url, "SELECT count(), uniqExact(event_id) FROM engagement.events_enriched FINAL")[0]
    assert int(total) == int(unique) == len(expected)
