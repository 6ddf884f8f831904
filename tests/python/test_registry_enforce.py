"""Schemas enforced on produce (`confluent.value.schema.validation` and friends) against
the real herald binary: confluent-kafka's AvroSerializer passes, records without the
magic byte, with an unknown schema id, or with an id registered under another subject
are refused with INVALID_RECORD (and counted in /metrics); at the payload level a
payload that does not decode with its schema is refused too; with validation off the
same bytes are accepted. The HTTP produce path refuses the same way."""

from __future__ import annotations

import json
import struct

import httpx
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from herald_support import unique

pytestmark = pytest.mark.timeout(90)

ORDER = json.dumps({"type": "record", "name": "OrderPlaced", "namespace": "shop",
                    "fields": [{"name": "id", "type": "string"}, {"name": "total", "type": "long"}]})
OTHER = json.dumps({"type": "record", "name": "Refund", "namespace": "shop",
                    "fields": [{"name": "id", "type": "string"}]})


def make_topic(broker, configs: dict) -> str:
    topic = unique("enforced")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1, 1, config=configs)]).values():
        f.result(timeout=20)
    return topic


def produce(broker, topic: str, values: list) -> list:
    """The delivery error code of each value (None: stored)."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.send.max.retries": 0,
                  "linger.ms": 0, "batch.num.messages": 1})
    out: list = [None] * len(values)

    def report(i):
        def cb(err, _msg):
            out[i] = err.code() if err is not None else None
        return cb

    for i, v in enumerate(values):
        p.produce(topic, value=v, on_delivery=report(i))
        p.flush(20)
    return out


def avro_bytes(broker, topic: str, record: dict) -> bytes:
    ser = AvroSerializer(SchemaRegistryClient({"url": broker.registry_url}), ORDER)
    return ser(record, SerializationContext(topic, MessageField.VALUE))


def refusals(broker, topic: str) -> float:
    text = httpx.get(f"{broker.http_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("herald_schema_validation_refusals_total{") and f'topic="{topic}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_ids_are_checked_on_produce_and_refusals_counted(broker):
    topic = make_topic(broker, {"confluent.value.schema.validation": "true"})
    good = avro_bytes(broker, topic, {"id": "o-1", "total": 42})
    reg = SchemaRegistryClient({"url": broker.registry_url})
    other_id = reg.register_schema(unique("elsewhere") + "-value", Schema(OTHER, "AVRO"))
    unknown = b"\x00" + struct.pack(">I", 999_999) + b"\x02x"
    wrong_subject = b"\x00" + struct.pack(">I", other_id) + b"\x02x"
    codes = produce(broker, topic, [good, b"plain text", unknown, wrong_subject, b"", good])
    assert codes == [None, KafkaError.INVALID_RECORD, KafkaError.INVALID_RECORD,
                     KafkaError.INVALID_RECORD, KafkaError.INVALID_RECORD, None]
    assert refusals(broker, topic) == 4


def test_the_payload_level_decodes_with_the_schema(broker):
    topic = make_topic(broker, {"confluent.value.schema.validation": "true",
                                "herald.schema.validation.level": "payload"})
    good = avro_bytes(broker, topic, {"id": "o-1", "total": 42})
    truncated = good[:-1]
    trailing = good + b"\x00"
    codes = produce(broker, topic, [good, truncated, trailing])
    assert codes == [None, KafkaError.INVALID_RECORD, KafkaError.INVALID_RECORD]
    # At the id level the same malformed payload passes: only the id is checked.
    id_only = make_topic(broker, {"confluent.value.schema.validation": "true"})
    avro_bytes(broker, id_only, {"id": "x", "total": 1})  # registers under id_only-value
    assert produce(broker, id_only, [truncated]) == [None]


def test_validation_off_accepts_anything_and_can_be_turned_on(broker):
    topic = make_topic(broker, {})
    assert produce(broker, topic, [b"plain", b"\x00\x00\x00\x00\x01"]) == [None, None]
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource("topic", topic, set_config={"confluent.value.schema.validation": "true"})
    for f in admin.alter_configs([res]).values():
        f.result(timeout=20)
    assert produce(broker, topic, [b"plain"]) == [KafkaError.INVALID_RECORD]
    bad = ConfigResource("topic", topic, set_config={"herald.schema.validation.level": "strict"})
    with pytest.raises(Exception) as e:
        for f in admin.alter_configs([bad]).values():
            f.result(timeout=20)
    assert "INVALID_CONFIG" in str(e.value) or "must be id" in str(e.value)


def test_keys_and_record_name_strategy(broker):
    topic = make_topic(broker, {"confluent.key.schema.validation": "true",
                                "confluent.key.subject.name.strategy":
                                    "io.confluent.kafka.serializers.subject.RecordNameStrategy"})
    reg = SchemaRegistryClient({"url": broker.registry_url})
    sid = reg.register_schema("shop.OrderPlaced", Schema(ORDER, "AVRO"))
    key = b"\x00" + struct.pack(">I", sid) + b"\x06o-1\x54"
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.send.max.retries": 0})
    codes = []
    for k in (key, b"plain-key"):
        p.produce(topic, key=k, value=b"anything",
                  on_delivery=lambda err, _m: codes.append(err.code() if err else None))
        p.flush(20)
    assert codes == [None, KafkaError.INVALID_RECORD]


def test_http_produce_is_refused_the_same_way(broker):
    topic = make_topic(broker, {"confluent.value.schema.validation": "true"})
    r = httpx.post(f"{broker.http_url}/topics/{topic}/records",
                   json={"records": [{"value": "not avro"}]}, timeout=10)
    assert 400 <= r.status_code < 500, r.text
    assert "magic byte" in r.text


def test_an_amqp_publish_to_a_validating_queue_is_nacked(broker):
    import pika
    from pika.exceptions import NackError

    queue = unique("enforced-q")
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2F"))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        res = ConfigResource("topic", queue, set_config={"confluent.value.schema.validation": "true"})
        for f in admin.alter_configs([res]).values():
            f.result(timeout=20)
        with pytest.raises(NackError):
            ch.basic_publish("", queue, b"plain", pika.BasicProperties(delivery_mode=2))
        good = avro_bytes(broker, queue, {"id": "o-1", "total": 1})
        ch.basic_publish("", queue, good, pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()
    assert refusals(broker, queue) == 1
