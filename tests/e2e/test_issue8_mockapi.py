"""Issue 8, item 8: the mock API's control endpoint is only on its control listener, and
the memory its clients can make it hold is bounded per request and in total."""

import json
import os
import socket
import time
import urllib.error
import urllib.request

import lib
from test_http import Mock

MIB = 1 << 20


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def post(url, body, ctype="application/json"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_item8_post_control_on_the_api_listener_is_refused(engage, tmp_path):
    mock = Mock(engage, tmp_path)
    status, _ = post(mock.url + "/control", json.dumps({"fail_rate": 1}).encode())
    assert status == 404
    assert mock.get("/control")["fail_rate"] == 0  # nothing applied


def test_item8_control_only_on_the_control_listener_get(engage, tmp_path):
    mock = Mock(engage, tmp_path)
    try:
        urllib.request.urlopen(mock.url + "/control", timeout=5)
        raise AssertionError("GET /control answered on the API listener")
    except urllib.error.HTTPError as e:
        assert e.code == 404
    assert mock.control(fail_rate=1)["fail_rate"] == 1  # the control listener still works
    status, _ = post(mock.url + "/events", b'{"event_id":1}')
    assert status == 500


def open_upload(port, content_length):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % content_length)
    return s


def test_item8_unfinished_bodies_are_bounded(engage, tmp_path):
    # ASan's quarantine would keep freed buffers resident and blur the measure.
    env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"}
    port_file = tmp_path / "m.ports"
    proc = engage("mock-api", "--listen", "127.0.0.1:0", "--port-file", str(port_file), env=env,
                  name="mock-api")
    ports = lib.wait_for(lambda: port_file.exists() and json.loads(port_file.read_text()), 20,
                         what="the mock API to listen")
    api, ctl = ports["port"], f"http://127.0.0.1:{ports['control_port']}"

    def stats():
        with urllib.request.urlopen(ctl + "/stats", timeout=10) as r:
            return json.loads(r.read())

    chunk = b" " * MIB
    # a body past the cap per request is dropped as it comes, then answered 413
    big = open_upload(api, 40 * MIB)
    for _ in range(40):
        big.sendall(chunk)
    big.settimeout(30)
    assert big.recv(64).startswith(b"HTTP/1.1 413"), "a 40 MB body must be refused"
    big.close()
    lib.wait_for(lambda: stats()["body_bytes"] == 0, 30, what="the refused body to be released")

    before = rss_mib(proc.pid)
    socks = []
    try:
        # 24 requests announce 60 MB each and send 14 MB (under the 16 MiB cap per body), then
        # stall: 336 MB offered, of which the mock may hold 64 MiB (--max-body-total-mb).
        for _ in range(24):
            s = open_upload(api, 60 * MIB)
            for _ in range(14):
                s.sendall(chunk)
            socks.append(s)
        s = lib.wait_for(lambda: (lambda st: st["over_budget"] > 0 and st)(stats()), 30,
                         what="the body budget to be reached")
        grown = rss_mib(proc.pid) - before
        print(f"24 x 14 MB unfinished: body_bytes {s['body_bytes'] / MIB:.1f} MiB, "
              f"{s['over_budget']} over budget, RSS grew {grown:.0f} MiB")
        assert s["body_bytes"] <= 64 * MIB
        assert grown < 200, grown
    finally:
        for s in socks:
            s.close()
    # closed requests give their bytes back, and the API works again
    lib.wait_for(lambda: stats()["body_bytes"] == 0, 30, what="the bodies to be released")
    status, body = post(f"http://127.0.0.1:{api}/events", b'{"event_id":7}')
    assert status == 200, body
    assert proc.stop() == 0
