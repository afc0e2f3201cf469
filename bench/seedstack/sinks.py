"""The seed stack's sink writers, run in Spark's Python workers (foreachPartition) and in
the driver. A module of its own, shipped with SparkContext.addPyFile, so that the functions
are pickled by reference and each worker process keeps its connections across batches.
See job.py for what is written where."""

import datetime
import json
import sys
import time
import urllib.parse

LAST_TTL, BUCKET_TTL, TOP_TTL, TOP_MINUTES = 3600, 900, 120, 10

# content:last keeps the newest event of its content: (event_ts, event_id) of the stored
# JSON against the offered one. event_ts is "YYYY-MM-DD HH:MM:SS", so text order is time order.
LAST_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and c.event_ts and c.event_id then
    if c.event_ts > ARGV[1] or (c.event_ts == ARGV[1] and tonumber(c.event_id) >= tonumber(ARGV[2])) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return 1
"""

CH_DDL = (
    "CREATE TABLE IF NOT EXISTS engagement.events_enriched ("
    "event_id Int64, content_id Int32, user_id Nullable(Int32), "
    "event_type Nullable(String), event_ts {ts}, duration_ms Nullable(Int32), "
    "device Nullable(String), content_type Nullable(String), "
    "length_seconds Nullable(Int32), engagement_seconds Nullable(Decimal(12, 3)), "
    "engagement_pct Nullable(Decimal(12, 2))) "
    "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_ts) "
    "ORDER BY (event_ts, content_id, event_id)"
)

FIELDS = ("event_id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device",
          "content_type", "length_seconds", "engagement_seconds", "engagement_pct")


def ch_endpoint(url):
    """ClickHouse's HTTP endpoint and its auth parameters from http://[user:pass@]host:port."""
    p = urllib.parse.urlsplit(url)
    params = {}
    if p.username:
        params["user"] = urllib.parse.unquote(p.username)
    if p.password:
        params["password"] = urllib.parse.unquote(p.password)
    return f"{p.scheme}://{p.hostname}:{p.port or 8123}/", params


def ch_sql(url, sql):
    import requests
    endpoint, params = ch_endpoint(url)
    r = requests.post(endpoint, params=params, data=sql.encode(), timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"ClickHouse {r.status_code}: {r.text.strip()[:500]}")
    return r.text


def ch_create_table(url):
    ch_sql(url, "CREATE DATABASE IF NOT EXISTS engagement")
    try:
        ch_sql(url, "SELECT toDateTime64('2000-01-01 00:00:00', 6, 'UTC')")
        ts = "DateTime64(6, 'UTC')"
    except RuntimeError:
        ts = "DateTime('UTC')"  # 18.16
    ch_sql(url, CH_DDL.format(ts=ts))


def dec_text(d):
    """A Decimal as engage writes it: no exponent, trailing zeros dropped but one digit
    after the point (7.000 -> 7.0, 1.230 -> 1.23)."""
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0")
        if s.endswith("."):
            s += "0"
    else:
        s += ".0"
    return s


def event_json(row):
    """The enriched event, one JSON object, the fields in DESIGN.md's order."""
    parts = []
    for f in FIELDS:
        v = row[f]
        if v is None:
            text = "null"
        elif f in ("engagement_seconds", "engagement_pct"):
            text = dec_text(v)
        elif isinstance(v, str):
            text = json.dumps(v, ensure_ascii=False)
        else:
            text = str(int(v))
        parts.append(f'"{f}":{text}')
    return "{" + ",".join(parts) + "}"


_clients = {}  # per Python worker (workers are reused): connections kept across batches


def clients(cfg):
    if "redis" not in _clients:
        import redis
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        r = redis.Redis.from_url(cfg["redis"], socket_timeout=30)
        _clients["redis"] = r
        _clients["last"] = r.register_script(LAST_LUA)
        ch = requests.Session()
        _clients["ch"] = ch
        api = requests.Session()
        retry = Retry(total=8, backoff_factor=0.2, status_forcelist=(429, 500, 502, 503, 504),
                      allowed_methods=None, respect_retry_after_header=True)
        api.mount("http://", HTTPAdapter(max_retries=retry))
        api.mount("https://", HTTPAdapter(max_retries=retry))
        _clients["api"] = api
    return _clients


def write_partition(cfg, rows):
    rows = list(rows)
    if not rows:
        return
    t0 = time.monotonic()
    c = clients(cfg)
    events = [(row, event_json(row)) for row in rows]

    # Redis: counts and buckets aggregated per content, last = the newest of the partition
    # offered through the compare-and-set script.
    cutoff = (datetime.datetime.utcnow() - datetime.timedelta(seconds=BUCKET_TTL)).strftime("%Y-%m-%d %H:%M:%S")
    counts, buckets, last = {}, {}, {}
    for row, js in events:
        cid = row["content_id"]
        counts[cid] = counts.get(cid, 0) + 1
        if row["event_ts"] >= cutoff:
            z = buckets.setdefault(row["bucket"], {})
            z[cid] = z.get(cid, 0) + 1
        best = last.get(cid)
        if best is None or (row["event_ts"], row["event_id"]) > (best[0]["event_ts"], best[0]["event_id"]):
            last[cid] = (row, js)
    pipe = c["redis"].pipeline(transaction=False)
    for cid, n in counts.items():
        pipe.incrby(f"content:count:{cid}", n)
    for bucket, z in buckets.items():
        key = f"top:content:bucket:{bucket}"
        for cid, n in z.items():
            pipe.zincrby(key, n, cid)
        pipe.expire(key, BUCKET_TTL)
    for cid, (row, js) in last.items():
        c["last"](keys=[f"content:last:{cid}"], args=[row["event_ts"], row["event_id"], js, LAST_TTL],
                  client=pipe)
    pipe.execute()
    t1 = time.monotonic()

    # ClickHouse: one insert of the partition's events.
    endpoint, params = ch_endpoint(cfg["clickhouse"])
    params = dict(params, query="INSERT INTO engagement.events_enriched FORMAT JSONEachRow")
    body = ("\n".join(js for _, js in events) + "\n").encode()
    r = c["ch"].post(endpoint, params=params, data=body, timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"ClickHouse insert {r.status_code}: {r.text.strip()[:500]}")
    t2 = time.monotonic()

    # The API: requests of http_batch events with an Idempotency-Key of their ids.
    n = cfg["http_batch"]
    for i in range(0, len(events), n):
        chunk = events[i:i + n]
        ids = [row["event_id"] for row, _ in chunk]
        if n == 1:
            key, body = f"ev-{ids[0]}", chunk[0][1]
        else:
            key, body = f"evs-{ids[0]}-{ids[-1]}-{len(ids)}", "[" + ",".join(js for _, js in chunk) + "]"
        r = c["api"].post(cfg["http"].rstrip("/") + "/events", data=body.encode(), timeout=30,
                          headers={"Content-Type": "application/json", "Idempotency-Key": key})
        if r.status_code // 100 != 2:
            raise RuntimeError(f"API {r.status_code}: {r.text.strip()[:300]}")
    t3 = time.monotonic()
    print(f"seedstack-worker partition of {len(events)} events: redis {t1 - t0:.3f}s (JSON included), "
          f"clickhouse {t2 - t1:.3f}s, api {t3 - t2:.3f}s", file=sys.stderr, flush=True)



def rebuild_top(cfg):
    """top:content:10m = the 10 minute buckets ending at the current UTC minute, TTL 120 s."""
    r = clients(cfg)["redis"]
    now = datetime.datetime.utcnow()
    keys = [f"top:content:bucket:{(now - datetime.timedelta(minutes=k)):%Y%m%d%H%M}" for k in range(TOP_MINUTES)]
    pipe = r.pipeline(transaction=True)
    pipe.zunionstore("top:content:10m", keys)
    pipe.expire("top:content:10m", TOP_TTL)
    pipe.execute()
