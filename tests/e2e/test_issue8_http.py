"""Issue 8, item 5: a Retry-After holds every request to the API, and --http-rate spaces the
requests of the whole sink. Times are the mock's arrival times of each request (GET /log)."""

import lib
from test_http import Mock, dlq_pending, http_args
from test_pipeline import wait_streaming

# A request already sent when a 429 is answered still arrives just after it: no client can
# recall it. Such a request arrives within IN_FLIGHT_MS of the 429; a request sent after the
# 429 was read would arrive later, and must not before Retry-After has passed.
IN_FLIGHT_MS = 300


def test_item5_retry_after_holds_every_request(stack, db, engage, tmp_path):
    inflight = 4
    mock = Mock(engage, tmp_path, "--status-429-rate", "0.3", "--retry-after", "2")
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    proc = engage(*http_args(db, tmp_path, mock, "--http-batch", "1", "--http-inflight",
                             str(inflight)))
    wait_streaming(db, proc)
    db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms) "
            "SELECT 1, g, 1000 FROM generate_series(1, 12) g")
    lib.wait_for(lambda: mock.stats()["unique"] == 12, 180, interval=0.2,
                 what="12 events despite 429s")
    log = mock.log()
    holds = [e["mono_ms"] + e["duration_ms"] for e in log if e["status"] == 429]
    assert holds, "some requests must have been answered 429"
    early, inside_all = [], []
    for t in holds:
        inside = [e["mono_ms"] - t for e in log if t < e["mono_ms"] < t + 2000]
        inside_all += inside
        early += [d for d in inside if d > IN_FLIGHT_MS]
        assert len(inside) <= inflight - 1, (t, inside)  # only what was already in flight
    print(f"{len(holds)} answers 429 with Retry-After 2; {len(inside_all)} requests arrived "
          f"inside a window, at most {max(inside_all, default=0)} ms after the 429; "
          f"{len(early)} later than {IN_FLIGHT_MS} ms")
    assert not early, f"requests arrived {early} ms after a 429 with Retry-After 2 s"
    assert dlq_pending(db) == 0
    assert proc.stop() == 0


def test_item5_after_a_hold_one_request_goes_alone(stack, db, engage, tmp_path):
    """While the API keeps answering 429 with Retry-After 1, the sink sends one request per
    window (the one that finds out whether the limit still holds), not one per slot."""
    mock = Mock(engage, tmp_path, "--status-429-rate", "1", "--retry-after", "1")
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    proc = engage(*http_args(db, tmp_path, mock, "--http-batch", "1", "--http-inflight", "4",
                             "--http-max-attempts", "100"))
    wait_streaming(db, proc)
    db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms) "
            "SELECT 1, g, 1000 FROM generate_series(1, 12) g")

    def first_429():
        answered = [e["mono_ms"] + e["duration_ms"] for e in mock.log() if e["status"] == 429]
        return min(answered) if answered else None

    t0 = lib.wait_for(first_429, 30, what="a 429")
    lib.wait_for(lambda: max(e["mono_ms"] for e in mock.log()) > t0 + 4000, 30,
                 what="4 s of 429s")
    mock.control(clear=True)
    lib.wait_for(lambda: mock.stats()["unique"] == 12, 60, interval=0.2, what="12 events")
    later = sorted(e["mono_ms"] for e in mock.log() if t0 + IN_FLIGHT_MS < e["mono_ms"] < t0 + 4000)
    gaps = [b - a for a, b in zip(later, later[1:])]
    print(f"429 always, Retry-After 1, 4 in flight: {len(later)} requests in the 4 s after the "
          f"first 429, gaps {gaps} ms")
    assert 2 <= len(later) <= 5, later  # one per window (4 slots would send up to 16)
    assert all(g >= 900 for g in gaps), gaps
    assert proc.stop() == 0


def test_item5_http_rate_spaces_every_request(stack, db, engage, tmp_path):
    rate, n = 20, 60
    mock = Mock(engage, tmp_path)
    db.exec("INSERT INTO content VALUES (1, 'video', 300, 't')")
    proc = engage(*http_args(db, tmp_path, mock, "--http-batch", "1", "--http-inflight", "8",
                             "--http-rate", str(rate)))
    wait_streaming(db, proc)
    db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms) "
            f"SELECT 1, g, 1000 FROM generate_series(1, {n}) g")
    lib.wait_for(lambda: mock.stats()["unique"] == n, 60, interval=0.2, what=f"{n} events")
    t = sorted(e["mono_ms"] for e in mock.log())
    assert len(t) == n
    busiest = max(sum(1 for x in t[i:] if x < t[i] + 1000) for i in range(len(t)))
    span = (t[-1] - t[0]) / 1000
    print(f"--http-rate {rate}: {n} requests over {span:.2f} s, at most {busiest} in any second")
    # sent 50 ms apart: 20 in any second of sending; the mock's arrival times add the jitter
    # of its threads' scheduling, which can squeeze one or two more into a second
    assert busiest <= rate + 2, busiest
    assert span >= (n - 1) / rate * 0.9, span
    assert proc.stop() == 0


def test_item5_http_rate_is_checked(stack, db, tmp_path):
    import subprocess
    r = subprocess.run([str(lib.engage_binary()), "run", "--pg", db.uri, "--http",
                        "http://127.0.0.1:9", "--http-rate", "fast"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "--http-rate" in r.stderr, r.stderr
