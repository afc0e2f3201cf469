#!/usr/bin/env python3
"""Records real pgoutput (protocol version 1) messages from a throwaway PostgreSQL 15.

Writes, next to this script:
  pgoutput_v1.hex         text-format columns ('n', 'u', 't')
  pgoutput_v1_binary.hex  the same changes decoded again with 'binary' 'true' ('b' columns)

Each message is one hex line, preceded by a '#' comment naming the step that produced it
and the message kind. The data is meant to be recorded once and committed: lsn, xid and
timestamps differ on every run, so the tests check them for consistency, not exact values.

Usage (as root, or as a user who can run PostgreSQL):
  tests/unit/data/record_pgoutput.py [--pgbin /usr/lib/postgresql/15/bin]

Needs only the PostgreSQL server binaries and psql; no Python driver.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = r"""
CREATE TYPE mood AS ENUM ('happy', 'meh', 'sad');
CREATE TABLE content (
    content_id int PRIMARY KEY,
    content_type text,
    length_seconds int NULL,
    title text
);
CREATE TABLE engagement_events (
    event_id bigserial PRIMARY KEY,
    content_id int,
    user_id int,
    event_type text,
    event_ts timestamp NOT NULL DEFAULT now(),
    duration_ms int NULL,
    device text
);
-- EXTERNAL storage: a large value is moved out of line uncompressed, so an UPDATE that
-- does not touch it sends it as 'u' (unchanged TOAST).
CREATE TABLE docs (id int PRIMARY KEY, body text, note text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
-- A custom type column (Type message) and REPLICA IDENTITY FULL ('O' old tuples).
CREATE TABLE reviews (id int PRIMARY KEY, content_id int, mood mood, comment text);
ALTER TABLE reviews REPLICA IDENTITY FULL;
CREATE PUBLICATION pub FOR ALL TABLES;
SELECT pg_replication_origin_create('upstream');
SELECT 'init' FROM pg_create_logical_replication_slot('slot', 'pgoutput');
"""

# (name, what it sends, description, sql). Each step runs in its own psql session. "tx" steps
# send one transaction, "msg" steps a non-transactional message, None steps nothing.
STEPS = [
    ("tx1", "tx", "insert two content rows, one with a NULL length",
     "INSERT INTO content VALUES (1, 'video', 120, 'Intro'), (2, 'podcast', NULL, 'Talk');"),
    ("tx2", "tx", "insert two engagement events, the second with NULL duration_ms and device",
     "INSERT INTO engagement_events"
     " (content_id, user_id, event_type, event_ts, duration_ms, device)"
     " VALUES (1, 42, 'play', '2024-01-02 03:04:05.123456', 1500, 'ios'),"
     " (2, 43, 'pause', '2024-01-02 03:04:06', NULL, NULL);"),
    ("tx3", "tx", "update a title (no old tuple), update a primary key ('K' old tuple),"
     " delete an event ('K')",
     "BEGIN;"
     " UPDATE content SET title = 'Intro v2' WHERE content_id = 1;"
     " UPDATE content SET content_id = 3 WHERE content_id = 2;"
     " DELETE FROM engagement_events WHERE event_id = 2;"
     " COMMIT;"),
    ("tx4", "tx", "insert a doc with a 10000-byte body stored out of line",
     "INSERT INTO docs VALUES (1, repeat('x', 10000), 'v1');"),
    ("tx5", "tx", "update the doc's note only: body is unchanged TOAST ('u')",
     "UPDATE docs SET note = 'v2' WHERE id = 1;"),
    ("tx6", "tx", "insert, update and delete a review (enum column: Type message;"
     " REPLICA IDENTITY FULL: 'O')",
     "BEGIN;"
     " INSERT INTO reviews VALUES (1, 1, 'happy', 'great');"
     " UPDATE reviews SET mood = 'sad' WHERE id = 1;"
     " DELETE FROM reviews WHERE id = 1;"
     " COMMIT;"),
    ("tx7", "tx", "transactional logical message",
     "SELECT 'm' FROM pg_logical_emit_message(true, 'engage', 'hello');"),
    ("msg8", "msg", "non-transactional logical message",
     "SELECT 'm' FROM pg_logical_emit_message(false, 'engage', 'bye');"),
    ("tx9", None, "add a column to engagement_events (sends nothing by itself)",
     "ALTER TABLE engagement_events ADD COLUMN country text;"),
    ("tx10", "tx", "insert an event after the ALTER: the Relation is re-sent mid-stream",
     "INSERT INTO engagement_events"
     " (content_id, user_id, event_type, event_ts, duration_ms, device, country)"
     " VALUES (3, 44, 'complete', '2024-01-02 03:05:00', 60000, 'web', 'NZ');"),
    ("tx11", "tx", "insert from a replication origin session (Origin message)",
     "SELECT 'o' FROM pg_replication_origin_session_setup('upstream');"
     " BEGIN;"
     " SELECT 'x' FROM pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-01 00:00:00+00');"
     " INSERT INTO content VALUES (10, 'article', NULL, 'From upstream');"
     " COMMIT;"
     " SELECT 'r' FROM pg_replication_origin_session_reset();"),
    ("tx12", "tx", "truncate two tables with CASCADE and RESTART IDENTITY",
     "TRUNCATE content, engagement_events RESTART IDENTITY CASCADE;"),
]

PEEK = ("SELECT lsn, xid, encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes("
        "'slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub',"
        " 'messages', 'true'{extra})")

KINDS = {
    "B": "Begin", "C": "Commit", "O": "Origin", "R": "Relation", "Y": "Type",
    "I": "Insert", "U": "Update", "D": "Delete", "T": "Truncate", "M": "Message",
}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, pgbin):
        self.pgbin = pgbin
        self.dir = tempfile.mkdtemp(prefix="engage-pgo-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.started = False
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run_pg(self, args):
        if self.as_root:
            args = ["runuser", "-u", "postgres", "--"] + args
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)

    def start(self):
        self._run_pg([os.path.join(self.pgbin, "initdb"), "-D", self.data, "-U", "postgres",
                      "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("wal_level = logical\n"
                    "max_replication_slots = 4\n"
                    "max_wal_senders = 4\n"
                    f"port = {self.port}\n"
                    "listen_addresses = ''\n"
                    f"unix_socket_directories = '{self.dir}'\n"
                    "fsync = off\n"
                    "timezone = 'UTC'\n")
        self._run_pg([os.path.join(self.pgbin, "pg_ctl"), "-D", self.data, "-w", "-t", "60",
                      "-l", os.path.join(self.dir, "log"), "start"])
        self.started = True

    def stop(self):
        if self.started:
            self._run_pg([os.path.join(self.pgbin, "pg_ctl"), "-D", self.data, "-w",
                          "-m", "fast", "stop"])
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql):
        out = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d", "postgres"],
            input=sql, text=True, check=True, capture_output=True)
        return [line.split("\t") for line in out.stdout.splitlines() if line]


def describe(hexdata):
    raw = bytes.fromhex(hexdata)
    kind = chr(raw[0])
    text = KINDS.get(kind, "unknown")
    if kind in "RY":
        # Relation: kind, oid, nspname\0, relname\0; Type: kind, oid, nspname\0, typname\0.
        parts = raw[5:].split(b"\0", 2)
        text += f" {parts[0].decode()}.{parts[1].decode()}"
    return f"{kind} {text}"


def record(server, extra):
    return server.psql(PEEK.format(extra=extra) + ";")


def attribute(rows):
    """Names the step of each row: steps run one after another, so the n-th transaction
    (xid) in the stream belongs to the n-th step that sends one."""
    senders = [s for s in STEPS if s[1] is not None]
    out, cur, last_xid = [], -1, None
    for _lsn, xid, data in rows:
        if xid == "0" or xid != last_xid:
            cur += 1
            if cur >= len(senders):
                raise RuntimeError("more transactions in the stream than steps that send")
            want = "msg" if xid == "0" else "tx"
            if senders[cur][1] != want:
                raise RuntimeError(f"step {senders[cur][0]} expected to send a {senders[cur][1]}")
            last_xid = xid
        out.append((senders[cur], data))
    if cur != len(senders) - 1:
        raise RuntimeError("some steps sent nothing")
    return out


def write(path, header, rows):
    with open(path, "w") as f:
        f.write(header)
        for (name, _sends, desc, _sql), data in attribute(rows):
            f.write(f"# {name}: {desc}: {describe(data)}\n{data}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pgbin", default="/usr/lib/postgresql/15/bin")
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()

    server = Server(args.pgbin)
    try:
        server.start()
        version = server.psql("SHOW server_version;")[0][0]
        server.psql(SETUP)
        for _name, _sends, _desc, sql in STEPS:
            server.psql(sql)

        header = ("# pgoutput protocol version 1 messages recorded from PostgreSQL "
                  f"{version} by record_pgoutput.py{{mode}}.\n"
                  "# One message per hex line; the comment before it names the step and kind.\n")
        text_rows = record(server, "")
        write(os.path.join(args.out, "pgoutput_v1.hex"), header.format(mode=""),
              text_rows)
        bin_rows = record(server, ", 'binary', 'true'")
        write(os.path.join(args.out, "pgoutput_v1_binary.hex"),
              header.format(mode=" with 'binary' 'true'"), bin_rows)
        print(f"recorded {len(text_rows)} + {len(bin_rows)} messages from PostgreSQL {version}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
