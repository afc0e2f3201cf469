"""The project's own Kafka stack (scripts/stack.sh kafka / connect,
scripts/kafka/install.sh): a broker that kcat can produce to and consume
from, a broker restart on the same port, and a real Debezium connector that
captures a row from PostgreSQL."""

import json
import secrets

import lib


def test_produce_consume_round_trip(kafka):
    topic = "stack_rt_" + secrets.token_hex(4)
    lib.create_topic(kafka.bootstrap, topic, 3)
    assert lib.topic_partitions(kafka.bootstrap, topic) == 3
    lib.produce(kafka.bootstrap, topic, 'é 日本 "q" \\ \nline 2', key="k1",
                headers=[("h1", "v1"), ("h2", "")], partition=2)
    lib.produce(kafka.bootstrap, topic, None, key="k1", partition=2)
    lib.produce(kafka.bootstrap, topic, "no key", partition=0)
    msgs = lib.consume_all(kafka.bootstrap, topic)
    got = [(m["partition"], m["offset"], m["key"], m["value"], m["headers"]) for m in msgs]
    assert got == [
        (0, 0, None, "no key", []),
        (2, 0, "k1", 'é 日本 "q" \\ \nline 2', [["h1", "v1"], ["h2", ""]]),
        (2, 1, "k1", None, []),
    ]
    assert lib.consume_all(kafka.bootstrap, "no_such_topic_" + secrets.token_hex(4)) == []


def test_broker_restart_keeps_port_and_data(kafka):
    topic = "stack_restart_" + secrets.token_hex(4)
    lib.produce(kafka.bootstrap, topic, "before", partition=0)
    bootstrap, pid = kafka.bootstrap, kafka.pid("kafka")
    kafka.stop("kafka")
    assert not kafka.running("kafka")
    kafka.start("kafka")
    assert kafka.bootstrap == bootstrap
    assert kafka.pid("kafka") != pid
    lib.produce(kafka.bootstrap, topic, "after", partition=0)
    assert [m["value"] for m in lib.consume_all(kafka.bootstrap, topic)] == ["before", "after"]


def test_debezium_captures_an_insert(connect, db):
    tag = secrets.token_hex(4)
    name, prefix = f"dbz_{tag}", f"dbz{tag}"
    config = lib.debezium_config(db.uri, topic_prefix=prefix, slot=f"dbz_slot_{tag}",
                                 publication=f"dbz_pub_{tag}", schemas=False)
    lib.connector_create(connect.connect_url, name, config)
    try:
        lib.wait_connector_running(connect.connect_url, name, timeout=120)
        db.exec("INSERT INTO engagement_events(content_id, user_id, event_type, event_ts, duration_ms, device) "
                "VALUES (2001, 601, 'view', '2026-02-01 10:00:01.123456', 30000, 'android')")
        topic = f"{prefix}.public.engagement_events"
        msgs = lib.wait_for_messages(connect.bootstrap, topic, 1, timeout=120)
        assert json.loads(msgs[0]["key"]) == {"content_id": 2001}
        value = json.loads(msgs[0]["value"])
        assert value["op"] == "c"
        assert value["after"] == {"event_id": 1, "content_id": 2001, "user_id": 601, "event_type": "view",
                                  "event_ts": 1769940001123456, "duration_ms": 30000, "device": "android"}
        assert value["source"]["db"] == db.name and value["source"]["snapshot"] == "false"
        assert [h[0] for h in msgs[0]["headers"]][:2] == ["__debezium.context.connectorLogicalName",
                                                          "__debezium.context.taskId"]
    finally:
        lib.connector_delete(connect.connect_url, name)
