"""confluent-kafka (librdkafka) against herald: idempotent producer with every
compression codec, headers, manual commits, timestamp and watermark lookups,
the admin API and cluster metadata."""

from __future__ import annotations

import os
import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from herald_support import admin, create_topic, free_port, produce_and_confirm, read_partitions, unique, wait_until

pytestmark = pytest.mark.timeout(180)


def _messages(n: int):
    """Keys and values that catch mangling: binary, empty, null, compressible, random."""
    rnd = os.urandom
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            key, value = f"user-{i % 13}".encode(), f'{{"seq": {i}, "type": "OrderPlaced"}}'.encode()
        elif kind == 1:
            key, value = bytes([i % 256, 0, 255, 10, 13]), rnd(1 + i % 700)
        elif kind == 2:
            key, value = None, b"A" * (1000 + i)  # compressible
        elif kind == 3:
            key, value = b"", b""  # empty, not null
        elif kind == 4:
            key, value = f"tombstone-{i}".encode(), None  # null value
        else:
            key, value = "ключ-🙂".encode(), ("значение " * 40).encode()
        out.append((key, value))
    return out


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_idempotent_producer_each_codec_round_trips(broker, codec):
    topic = unique(f"codec-{codec}")
    create_topic(broker.bootstrap, topic, partitions=2)
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": codec,
        "linger.ms": 10,
        "batch.num.messages": 100,
    })
    messages = _messages(600)
    delivered = produce_and_confirm(producer, topic, messages)

    # Idempotence does not mean fewer records: every message got its own offset, and
    # the offsets of each partition are exactly 0..n-1.
    by_partition = {}
    for d in delivered:
        by_partition.setdefault(d.partition, []).append(d.offset)
    for p, offs in by_partition.items():
        assert sorted(offs) == list(range(len(offs))), f"partition {p}: acked offsets not 0..n-1"

    records = read_partitions(broker.bootstrap, topic, 2, expect_total=len(messages))
    assert len(records) == len(messages)
    stored = {(r.partition, r.offset): (r.key, r.value) for r in records}
    for d in delivered:
        assert stored[(d.partition, d.offset)] == (d.key, d.value), f"record at {d.partition}/{d.offset} differs"
    # Null and empty stay distinct.
    assert sum(1 for r in records if r.value is None) == sum(1 for _, v in messages if v is None)
    assert sum(1 for r in records if r.value == b"") == sum(1 for _, v in messages if v == b"")


def test_headers_round_trip(broker):
    topic = unique("headers")
    create_topic(broker.bootstrap, topic, partitions=1)
    binary = bytes(range(256))
    headers = [
        ("trace-id", b"abc123"),
        ("dup", b"first"),
        ("dup", b"second"),
        ("binary", binary),
        ("empty", b""),
        ("null", None),
        ("ünïcödé", "värde".encode()),
    ]
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [
        (b"k1", b"with headers", headers),
        (b"k2", b"without headers", None),
    ])
    records = read_partitions(broker.bootstrap, topic, 1, expect_total=2)
    assert [r.value for r in records] == [b"with headers", b"without headers"]
    # Order and duplicates are kept; a null header value stays null.
    assert records[0].headers == headers
    assert not records[1].headers


def test_manual_commit_and_committed(broker):
    topic, group = unique("manual"), unique("manual-grp")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(None, f"m{i}".encode()) for i in range(10)])

    conf = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    tp = TopicPartition(topic, 0)
    c1 = Consumer(conf)
    c1.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 4 and time.monotonic() < deadline:
        msg = c1.poll(0.5)
        if msg is None:
            continue
        assert not msg.error(), msg.error()
        got.append(msg)
    assert [m.value() for m in got] == [b"m0", b"m1", b"m2", b"m3"]
    # commit() without arguments stores the position after the last message returned.
    c1.commit(asynchronous=False)
    [committed] = c1.committed([tp], timeout=10)
    assert committed.offset == 4
    assert committed.error is None
    # An explicit commit with metadata is also read back.
    c1.commit(offsets=[TopicPartition(topic, 0, 6, metadata="half-way")], asynchronous=False)
    [committed] = c1.committed([tp], timeout=10)
    assert (committed.offset, committed.metadata) == (6, "half-way")
    c1.close()

    c2 = Consumer(conf)
    c2.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 4 and time.monotonic() < deadline:
        msg = c2.poll(0.5)
        if msg is None:
            continue
        assert not msg.error(), msg.error()
        got.append(msg)
    c2.close()
    assert [(m.offset(), m.value()) for m in got] == [(i, f"m{i}".encode()) for i in range(6, 10)]


def test_offsets_for_times_and_watermarks(broker):
    topic = unique("times")
    create_topic(broker.bootstrap, topic, partitions=1)
    base_ms = (int(time.time()) - 7200) * 1000
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
    for i in range(20):
        producer.produce(topic, value=f"t{i}".encode(), partition=0, timestamp=base_ms + i * 100)
        producer.flush(10)  # one batch per record so each has its own batch timestamp range
    assert producer.flush(10) == 0

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("times-grp"),
                  "enable.auto.commit": False})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        assert (low, high) == (0, 20)

        def lookup(ts):
            [r] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert r.error is None, r.error
            return r.offset

        assert lookup(base_ms) == 0
        assert lookup(base_ms + 1) == 1
        assert lookup(base_ms + 1050) == 11
        assert lookup(base_ms + 1900) == 19
        assert lookup(base_ms + 5000) == -1  # past every timestamp: no offset (OFFSET_END)

        # Fetching from the looked-up offset starts exactly there.
        c.assign([TopicPartition(topic, 0, lookup(base_ms + 1050))])
        msg = None
        deadline = time.monotonic() + 20
        while msg is None and time.monotonic() < deadline:
            msg = c.poll(0.5)
        assert msg is not None and not msg.error()
        assert (msg.offset(), msg.value(), msg.timestamp()[1]) == (11, b"t11", base_ms + 1100)
    finally:
        c.close()


def test_admin_create_with_config_describe_and_delete(broker):
    client = admin(broker.bootstrap)
    topic = unique("admin")
    fs = client.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                                        config={"cleanup.policy": "compact", "retention.ms": "86400000"})],
                              operation_timeout=10)
    fs[topic].result(timeout=20)

    md = client.list_topics(timeout=10)
    assert topic in md.topics
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]

    [res] = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    configs = res.result(timeout=20)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["retention.ms"].value == "86400000"

    fs = client.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=10)
    with pytest.raises(KafkaException) as err:
        fs[topic].result(timeout=20)
    assert err.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    fs = client.delete_topics([topic], operation_timeout=10)
    fs[topic].result(timeout=20)
    wait_until(lambda: topic not in client.list_topics(timeout=10).topics, 10,
               f"{topic} absent from metadata after delete")

    # Deleting it again is an error the client can see, not a silent success.
    fs = client.delete_topics([topic], operation_timeout=10)
    with pytest.raises(KafkaException) as err:
        fs[topic].result(timeout=20)
    assert err.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_list_and_describe_consumer_groups(broker):
    topic, group = unique("groups"), unique("grp")
    create_topic(broker.bootstrap, topic, partitions=2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(None, b"x")] * 4, partition=0)

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "client.id": "describe-me", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    client = admin(broker.bootstrap)
    try:
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) < 2:
            assert time.monotonic() < deadline, f"not assigned both partitions: {consumer.assignment()}"
            consumer.poll(0.2)
        consumer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)

        listed = client.list_consumer_groups(request_timeout=10).result(timeout=20)
        assert not listed.errors, listed.errors
        ids = {g.group_id: g for g in listed.valid}
        assert group in ids
        assert ids[group].is_simple_consumer_group is False

        # The older ListGroups + DescribeGroups path (AdminClient.list_groups).
        [legacy] = [g for g in client.list_groups(timeout=10) if g.id == group]
        assert legacy.protocol_type == "consumer"
        assert legacy.state == "Stable"
        assert [m.client_id for m in legacy.members] == ["describe-me"]

        desc = client.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
        assert desc.group_id == group
        assert desc.state == ConsumerGroupState.STABLE
        assert desc.coordinator.id == 1
        assert len(desc.members) == 1
        member = desc.members[0]
        assert member.client_id == "describe-me"
        assigned = sorted((tp.topic, tp.partition) for tp in member.assignment.topic_partitions)
        assert assigned == [(topic, 0), (topic, 1)]

        offsets = client.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])])[group].result(timeout=20)
        [tp] = offsets.topic_partitions
        assert (tp.topic, tp.partition, tp.offset) == (topic, 0, 3)
    finally:
        consumer.close()

    # After the only member leaves, the group is empty but its offsets remain.
    desc = client.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
    assert desc.state == ConsumerGroupState.EMPTY
    assert desc.members == []


def test_metadata_reports_broker_1_at_listen_address(broker):
    topic = unique("meta")
    create_topic(broker.bootstrap, topic, partitions=2)
    md = admin(broker.bootstrap).list_topics(timeout=10)
    assert set(md.brokers) == {1}
    b = md.brokers[1]
    assert (b.id, b.host, b.port) == (1, "127.0.0.1", broker.port)
    assert md.controller_id == 1
    for p in md.topics[topic].partitions.values():
        assert p.leader == 1
        assert p.replicas == [1]
        assert p.isrs == [1]


def test_metadata_reports_advertised_address(broker_factory):
    # Advertise a different spelling of the same address: clients must be sent there.
    port = free_port()
    b = broker_factory(extra_args=["--kafka-advertised", f"localhost:{port}"], port=port)
    md = admin(b.bootstrap).list_topics(timeout=10)
    assert {(x.id, x.host, x.port) for x in md.brokers.values()} == {(1, "localhost", port)}


def test_consumer_reads_from_beginning_by_assignment(broker):
    """OFFSET_BEGINNING via assign() reads the whole partition in order."""
    topic = unique("assign")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(None, f"{i}".encode()) for i in range(50)])
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 50 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(int(m.value()))
    c.close()
    assert got == list(range(50))


def test_large_message_round_trips(broker):
    """A value near the default 1 MB message size limit is stored and fetched whole."""
    topic = unique("large")
    create_topic(broker.bootstrap, topic, partitions=1)
    big = os.urandom(900_000)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(b"big", big), (b"small", b"after")])
    records = read_partitions(broker.bootstrap, topic, 1, expect_total=2)
    assert [(r.key, r.value) for r in records] == [(b"big", big), (b"small", b"after")]
