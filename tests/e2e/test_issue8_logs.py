"""Issue 8, item 10: every line engage logs is logfmt, also through faults. A small logfmt
parser reads every line of runs through API faults (429 with Retry-After, 503s, the API
down and back), Redis down and back, hostile values, a row that is no event, a bad URL with quotes in it, a
second run refused by the state directory's lock, a stop, and a slot dropped under a
checkpoint. Every line must parse, start with ts=, level=, msg=; an LSN is printed as X/Y;
nothing is logged after `stopped`."""

import re

import lib
from test_http import Mock, http_args
from test_pipeline import run_args, wait_streaming

LEVELS = {"debug", "info", "warn", "error"}
ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def parse_logfmt(line):
    """[(key, value)] of one logfmt line; raises ValueError where it does not parse.
    key: bytes other than space, '=' and '"'; value: bare (no space, '"' or '='), or
    quoted with \\" \\\\ \\n \\r \\t \\xNN escapes; a key alone is allowed (value None)."""
    pairs, i, n = [], 0, len(line)
    while i < n:
        if line[i] == " ":
            if i + 1 < n and line[i + 1] == " ":
                raise ValueError(f"two spaces at {i}")
            i += 1
            continue
        m = re.compile(r'[^ ="\\\x00-\x1f]+').match(line, i)
        if not m:
            raise ValueError(f"no key at {i}: {line[i:i + 20]!r}")
        key, i = m.group(0), m.end()
        if i == n or line[i] == " ":
            pairs.append((key, None))
            continue
        if line[i] != "=":
            raise ValueError(f"{key}: expected = at {i}")
        i += 1
        if i < n and line[i] == '"':
            i += 1
            out = []
            while True:
                if i >= n:
                    raise ValueError(f"{key}: unterminated quote")
                c = line[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    e = line[i + 1:i + 2]
                    if e in ESCAPES:
                        out.append(ESCAPES[e])
                        i += 2
                    elif e == "x" and re.fullmatch(r"[0-9a-f]{2}", line[i + 2:i + 4]):
                        out.append(chr(int(line[i + 2:i + 4], 16)))
                        i += 4
                    else:
                        raise ValueError(f"{key}: bad escape at {i}")
                    continue
                if ord(c) < 0x20:
                    raise ValueError(f"{key}: control character in a value")
                out.append(c)
                i += 1
            if i < n and line[i] != " ":
                raise ValueError(f"{key}: text after the closing quote at {i}")
            pairs.append((key, "".join(out)))
        else:
            m = re.compile(r'[^ "=\x00-\x1f]*').match(line, i)
            i = m.end()
            if i < n and line[i] != " ":
                raise ValueError(f"{key}: bad bare value at {i}")
            pairs.append((key, m.group(0)))
    return pairs


def test_item10_the_parser_itself():
    assert parse_logfmt('ts=1 level=info msg="a \\"b\\"\\nc" k= x=y flag') == [
        ("ts", "1"), ("level", "info"), ("msg", 'a "b"\nc'), ("k", ""), ("x", "y"), ("flag", None)]
    for bad in ['msg="open', 'msg="invalid url "ftp://x": bad"', "msg=a b=c=d", 'k="a"b',
                'msg="a\\q"', "msg=\"a\nb\""]:
        try:
            pairs = parse_logfmt(bad)
        except ValueError:
            continue
        raise AssertionError(f"parsed {bad!r} as {pairs}")
    # logfmt, but no msg=: check_line refuses it
    try:
        check_line("t", "ts=1 level=info redis sink connected host=x")
    except AssertionError:
        pass
    else:
        raise AssertionError("a line without msg= passed")


def engage_lines(proc):
    """The lines engage wrote (the harness's own `### command` line left out)."""
    return [l for l in proc.log_text().split("\n") if l and not l.startswith("### ")]


def check_line(name, line):
    """The line's pairs as a dict; AssertionError unless it is logfmt that starts with ts=,
    level= and msg= and has no key twice."""
    try:
        pairs = parse_logfmt(line)
    except ValueError as e:
        raise AssertionError(f"{name}: not logfmt ({e}): {line!r}") from None
    keys = [k for k, _ in pairs]
    assert keys[:3] == ["ts", "level", "msg"], f"{name}: {line!r}"
    assert dict(pairs)["level"] in LEVELS, f"{name}: {line!r}"
    assert len(keys) == len(set(keys)), f"{name}: a key twice: {line!r}"
    return dict(pairs)


def check_lines(proc):
    lines = engage_lines(proc)
    assert lines, proc.name
    return [check_line(proc.name, l) for l in lines]


def test_item10_every_line_parses_through_faults(stack, db, clean_sinks, engage, tmp_path):
    mock = Mock(engage, tmp_path, "--log")
    db.exec("INSERT INTO content VALUES (1, 'video \"hd\"\\nline', 300, 't')")
    env = stack.engage_env(db.uri)
    env["ENGAGE_HTTP"] = mock.url
    args = run_args(db, tmp_path, "--http-batch", "1", "--http-retry-budget-ms", "3000",
                    "--http-max-attempts", "3")
    proc = engage(*args, env=env, name="run-1")
    wait_streaming(db, proc)

    def insert(n, device):
        db.exec("INSERT INTO engagement_events(content_id, user_id, duration_ms, device) "
                "SELECT 1, g, 1000, %s FROM generate_series(1, %s) g", (device, n))

    # hostile values, a 429 with Retry-After, 500s, the API down, a row that is no event
    mock.control(status_429_rate=1, retry_after=1)
    insert(2, 'we"b\n\\x')
    lib.wait_for(lambda: mock.stats()["status"].get("429", 0) >= 1, 30, what="a 429")
    mock.control(clear=True, fail_rate=1, fail_status=503)
    insert(2, "tv")
    lib.wait_for(lambda: mock.stats()["status"].get("503", 0) >= 2, 30, what="503s")
    mock.control(clear=True, down=True)
    insert(2, "app")
    db.exec("INSERT INTO engagement_events(content_id, user_id) VALUES (NULL, 1)")
    proc.wait_for_log(r"msg=\"bad input parked", 60)
    proc.wait_for_log(r"msg=\"http sink parked events", 60)  # the API stayed down past the budget
    mock.control(down=False)
    insert(2, "ok")
    lib.wait_for(lambda: mock.stats()["unique"] >= 2, 60, what="the API to get events again")
    # Redis down and back: the retry lines carry hiredis's error text
    stack.stop("redis")
    try:
        insert(1, "redis-down")
        proc.wait_for_log(r"msg=\"sink write failed, retrying\" sink=redis", 60)
    finally:
        stack.start("redis")
    proc.wait_for_log(r"msg=\"sink recovered\" sink=redis", 60)

    # a second run on the same state directory is refused, with a logfmt line
    second = engage(*args, env=env, name="run-refused")
    assert second.wait(timeout=30) == 1
    # a bad URL with quotes in it
    bad = engage(*run_args(db, tmp_path, "--state-dir", str(tmp_path / "other")),
                 env={**env, "ENGAGE_CLICKHOUSE": 'ftp://x"y\\z'}, name="bad-url")
    assert bad.wait(timeout=30) != 0

    assert proc.stop() == 0
    lines = check_lines(proc)
    assert lines[-1]["msg"] == "stopped", lines[-1]  # nothing after it, no `will retry`
    check_lines(second)
    bad_lines = check_lines(bad)
    assert any('ftp://x"y' in l["msg"] or 'ftp://x"y' in l.get("error", "") for l in bad_lines), \
        bad_lines

    # the slot dropped under a checkpoint: an error naming the checkpoint LSN as X/Y
    lib.wait_for(lambda: not db.scalar("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                       (db.name,)), 30, what="the slot to be released")
    db.exec("SELECT pg_drop_replication_slot(%s)", (db.name,))
    gone = engage(*args, env=env, name="slot-gone")
    assert gone.wait(timeout=60) != 0
    gone_lines = check_lines(gone)
    err = [l for l in gone_lines if l["level"] == "error" and "is gone" in l["msg"]]
    assert err and re.search(r"at [0-9A-F]+/[0-9A-F]+:", err[0]["msg"]), gone_lines
