"""One log, many faces: what an AMQP publisher sends is a Kafka topic's records, what a
Kafka producer writes feeds AMQP consumers, and an AMQP queue is the shared subscription
`amqp` that the HTTP queue API drains; the HTTP API lists exchanges, queues and bindings."""
from __future__ import annotations

import time

import httpx
import pika
import pytest
from confluent_kafka import Consumer, Producer

from amqp_support import channel, get_all, publish_confirmed
from herald_support import produce_and_confirm, unique

pytestmark = pytest.mark.timeout(120)


def _url(broker) -> str:
    if broker.amqp_port is None:
        pytest.skip("this herald binary has no AMQP listener")
    return f"amqp://guest:guest@{broker.host}:{broker.amqp_port}/%2F"


def test_amqp_publish_is_read_by_a_kafka_consumer(broker):
    url = _url(broker)
    queue = unique("amqp-to-kafka")
    with channel(url) as (_c, ch):
        ch.queue_declare(queue, durable=True)
    bodies = [f"order-{i}".encode() for i in range(20)]
    publish_confirmed(url, queue, bodies, properties=pika.BasicProperties(
        delivery_mode=2, content_type="application/json", headers={"source": "checkout"}))
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"),
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([queue])
    got = []
    try:
        while len(got) < len(bodies):
            msg = consumer.poll(10)
            assert msg is not None, f"Kafka consumer got {len(got)} of {len(bodies)}"
            assert msg.error() is None, msg.error()
            got.append(msg)
    finally:
        consumer.close()
    assert [m.value() for m in got] == bodies
    headers = dict(got[0].headers())
    assert headers["content-type"] == b"application/json"
    assert headers["source"] == b"checkout"
    assert headers["amqp.routing-key"] == queue.encode()


def test_kafka_produce_feeds_an_amqp_consumer(broker):
    url = _url(broker)
    queue = unique("kafka-to-amqp")
    with channel(url) as (_c, ch):
        ch.queue_declare(queue, durable=True)
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        produce_and_confirm(producer, queue, [(b"k1", b"first"), (b"k2", b"second")])
        got = get_all(ch, queue)
    assert [d.body for d in got] == [b"first", b"second"]
    # A Kafka record's key is the message id; it is persistent, as the log is.
    assert got[0].properties.message_id == "k1"
    assert got[0].properties.delivery_mode == 2
    # Delivered as if published to the default exchange with the queue's name.
    assert (got[0].method.exchange, got[0].method.routing_key) == ("", queue)


def test_an_amqp_queue_is_drained_through_the_http_queue_api_and_listed(broker):
    url = _url(broker)
    queue, exchange = unique("amqp-http"), unique("x")
    with channel(url) as (_c, ch):
        ch.exchange_declare(exchange, "topic", durable=True)
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 100})
        ch.queue_bind(queue, exchange, "orders.#")
    publish_confirmed(url, "orders.eu.placed", [b"a", b"b", b"c"], exchange=exchange)
    http = httpx.Client(base_url=broker.http_url, timeout=10)
    subs = {(s["topic"], s["name"]) for s in http.get("/subscriptions").json()}
    assert (queue, "amqp") in subs
    got = http.post(f"/topics/{queue}/subscriptions/amqp/receive",
                    json={"max_records": 10}).json()["records"]
    assert sorted(r["value"] for r in got) == ["a", "b", "c"]
    acked = http.post(f"/topics/{queue}/subscriptions/amqp/ack",
                      json={"receipts": [r["receipt"] for r in got]})
    assert acked.status_code == 200, acked.text
    with channel(url) as (_c, ch):
        assert ch.queue_declare(queue, passive=True).method.message_count == 0
    queues = {q["name"]: q for q in http.get("/amqp/queues").json()}
    assert queues[queue]["topic"] == queue and queues[queue]["durable"]
    assert queues[queue]["arguments"] == {"x-max-length": 100}
    exchanges = {e["name"]: e for e in http.get("/amqp/exchanges").json()}
    assert exchanges[exchange]["kind"] == "topic"
    assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"} <= set(exchanges)
    bindings = http.get("/amqp/bindings").json()
    assert {"source": exchange, "destination_type": "queue", "destination": queue,
            "routing_key": "orders.#", "arguments": {}} in bindings


def test_a_stream_queue_is_a_kafka_topic_read_by_offset_from_both_sides(broker):
    """A stream queue's messages are the topic's records at the same offsets: an AMQP
    stream consumer from offset 2 gets what a Kafka producer and an AMQP publisher wrote,
    each with its offset in x-stream-offset; a Kafka consumer reads them all; acks
    remove nothing, so a second stream consumer from `first` reads everything again."""
    url = _url(broker)
    stream = unique("stream-both")
    with channel(url) as (_c, ch):
        ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
    publish_confirmed(url, stream, [b"amqp-0", b"amqp-1", b"amqp-2"],
                      properties=pika.BasicProperties(delivery_mode=2))
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    produce_and_confirm(producer, stream, [(b"k3", b"kafka-3"), (b"k4", b"kafka-4")])

    def read_stream(offset, n):
        got = []
        with channel(url) as (conn, ch):
            ch.basic_qos(prefetch_count=2)

            def on_message(channel_, method, props, body):
                got.append((props.headers["x-stream-offset"], body))
                channel_.basic_ack(method.delivery_tag)
            ch.basic_consume(stream, on_message, arguments={"x-stream-offset": offset})
            deadline = time.monotonic() + 10
            while len(got) < n and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
        return got

    want = [(0, b"amqp-0"), (1, b"amqp-1"), (2, b"amqp-2"), (3, b"kafka-3"), (4, b"kafka-4")]
    assert read_stream(2, 3) == want[2:]
    assert read_stream("first", 5) == want
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"),
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([stream])
    got = []
    try:
        while len(got) < 5:
            msg = consumer.poll(10)
            assert msg is not None and msg.error() is None, (got, msg and msg.error())
            got.append((msg.offset(), msg.value()))
    finally:
        consumer.close()
    assert got == want
