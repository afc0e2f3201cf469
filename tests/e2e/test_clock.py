"""Issue 7, item 11: the 10-minute top follows Redis's clock, not engage's.

engage runs with its wall clock shifted by libfaketime (an hour ahead, then five minutes
behind) while PostgreSQL and Redis keep the true time. The minute bucket of each event and
top:content:10m must be what they are with a right clock (computed here from PostgreSQL's
event times and Redis's TIME), and engage reports the skew as a warning and a metric."""

import datetime as dt
import os

import pytest

import lib
import redis_expect as rx
from test_integrity import insert_events
from test_pipeline import metrics, run_args, wait_streaming

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def skewed_env(stack, db, offset):
    env = stack.engage_env(db.uri, sinks=("redis",))
    env["LD_PRELOAD"] = LIBFAKETIME
    env["FAKETIME"] = offset
    # libfaketime is preloaded before the sanitizer's runtime; ASan must not refuse that.
    env["ASAN_OPTIONS"] = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "verify_asan_link_order=0"]))
    return env


@pytest.mark.parametrize("offset,skew_s", [("+1h", 3600), ("-5m", -300)])
def test_item11_top_window_follows_redis_clock(stack, db, clean_sinks, engage, tmp_path, offset, skew_s):
    assert os.path.exists(LIBFAKETIME), "faketime is not installed (scripts/deps.sh installs it)"
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't'), (2, 'podcast', 1200, 'p')")
    proc = engage(*run_args(db, tmp_path), env=skewed_env(stack, db, offset))
    wait_streaming(db, proc)
    insert_events(db, 7, content_id=1)
    insert_events(db, 3, content_id=2)
    rx.wait_applied(stack.redis_url, 10, 60, proc)

    m = metrics(proc)
    got_skew = m['engage_clock_skew_seconds{against="redis"}']
    assert abs(got_skew - skew_s) <= 5, f"skew metric {got_skew}, want about {skew_s}"
    proc.wait_for_log(r"level=warn msg=\"this machine's clock differs from redis's", 5)

    # What a right clock gives: PostgreSQL's event minutes, the window ending at Redis's now.
    r = lib.redis_client(stack.redis_url)
    sec, _ = r.time()
    now = dt.datetime.fromtimestamp(sec, dt.timezone.utc).replace(tzinfo=None)
    want_buckets = {}
    for minute, cid, n in db.query("SELECT to_char(event_ts, 'YYYYMMDDHH24MI'), content_id, count(*) "
                                   "FROM engagement_events GROUP BY 1, 2"):
        want_buckets.setdefault(minute, {})[str(cid)] = float(n)
    got_buckets = {k.rsplit(":", 1)[1]: dict(r.zrange(k, 0, -1, withscores=True))
                   for k in r.scan_iter("top:content:bucket:*")}
    assert got_buckets == want_buckets, f"buckets {got_buckets}, want {want_buckets}"
    top = dict(r.zrange("top:content:10m", 0, -1, withscores=True))
    windows = [rx.top_union(want_buckets, now - dt.timedelta(seconds=s)) for s in (0, rx.TOP_STALE_S)]
    assert top in windows and top == {"1": 7.0, "2": 3.0}, f"top:content:10m {top}, want {windows[0]}"
    assert proc.stop() == 0, proc.log_tail()
