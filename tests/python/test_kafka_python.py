"""kafka-python (3.x) against herald: the user's seed snippet, the admin API,
per-key ordering, seeking and timestamp lookups, and committed group offsets."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from herald_support import unique, wait_until

pytestmark = pytest.mark.timeout(180)


def test_seed_snippet_runs_unchanged(broker):
    """The seed code from the user's notes, verbatim except for the address (and a
    consumer_timeout_ms so the loop ends). `localhost` stays on purpose: it may
    resolve to ::1 first while herald listens on 127.0.0.1."""
    bootstrap = f"localhost:{broker.port}"

    # ---- seed code (address changed; consumer_timeout_ms added; events collected) ----
    from kafka import KafkaProducer, KafkaConsumer  # noqa: F811 - as in the seed
    import json  # noqa: F811

    producer = KafkaProducer(bootstrap_servers=[bootstrap], value_serializer=lambda v: json.dumps(v).encode('utf-8'))
    event = {"event_id": "evt_12345", "type": "OrderPlaced", "order_id": "ORD789", "user_id": "user_456", "amount": 99.99}
    producer.send('orders', value=event, key=b'user_456')
    producer.flush()
    consumer = KafkaConsumer('orders', bootstrap_servers=[bootstrap], auto_offset_reset='earliest', enable_auto_commit=True, group_id='order-processor', value_deserializer=lambda m: json.loads(m.decode('utf-8')), consumer_timeout_ms=8000)
    received = []
    for message in consumer:
        event = message.value
        received.append(message)
    # ---- end of seed code ----

    sent = {"event_id": "evt_12345", "type": "OrderPlaced", "order_id": "ORD789", "user_id": "user_456", "amount": 99.99}
    assert len(received) == 1, f"expected exactly the one event, got {[(m.offset, m.value) for m in received]}"
    message = received[0]
    assert message.topic == 'orders'
    assert message.key == b'user_456'
    assert message.value == sent
    assert message.offset == 0
    consumer.close()  # auto-commit: the group's position is stored on close
    producer.close()

    admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap])
    try:
        offsets = admin.list_group_offsets('order-processor')['order-processor']
        committed = {tp: om.offset for tp, om in offsets.items()}
        assert committed == {TopicPartition('orders', message.partition): 1}, offsets
    finally:
        admin.close()


def test_admin_create_list_describe_delete(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    three, configured = unique("adm-three"), unique("adm-conf")
    try:
        admin.create_topics(
            [NewTopic(three, num_partitions=3, replication_factor=1),
             NewTopic(configured, num_partitions=1, replication_factor=1,
                      topic_configs={"retention.ms": "3600000", "cleanup.policy": "compact"})],
            timeout_ms=10000, wait_for_metadata=True)

        assert {three, configured} <= set(admin.list_topics())

        described = {t["name"]: t for t in admin.describe_topics([three, configured])}
        assert described[three]["error_code"] == 0
        parts = sorted(described[three]["partitions"], key=lambda p: p["partition_index"])
        assert [p["partition_index"] for p in parts] == [0, 1, 2]
        for p in parts:
            assert p["error_code"] == 0
            assert p["leader_id"] == 1
            assert p["replica_nodes"] == [1]
            assert p["isr_nodes"] == [1]
        assert len(described[configured]["partitions"]) == 1

        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, configured)],
                                         config_filter="all")
        topic_configs = configs["topic"][configured]
        assert topic_configs["retention.ms"]["value"] == "3600000"
        assert topic_configs["cleanup.policy"]["value"] == "compact"

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(three, num_partitions=3, replication_factor=1)], timeout_ms=10000)

        admin.delete_topics([three], timeout_ms=10000)
        wait_until(lambda: three not in admin.list_topics(), 10, f"{three} gone from list_topics after delete")
        assert configured in admin.list_topics()
    finally:
        admin.close()


def test_keyed_messages_keep_order_per_partition(broker):
    topic = unique("keyed")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)], wait_for_metadata=True)
    admin.close()

    keys = [f"customer-{i}".encode() for i in range(25)]
    per_key = 80
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    futures = []
    for seq in range(per_key):
        for key in keys:
            futures.append((key, seq, producer.send(topic, key=key, value=f"{key.decode()}|{seq}".encode())))
    producer.flush(timeout=60)
    acked = {}
    for key, seq, fut in futures:
        md = fut.get(timeout=30)
        acked[(key, seq)] = (md.partition, md.offset)
    producer.close()

    total = len(keys) * per_key
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=10000)
    tps = [TopicPartition(topic, p) for p in range(4)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got = []
    deadline = time.monotonic() + 60
    while len(got) < total and time.monotonic() < deadline:
        for tp, msgs in consumer.poll(timeout_ms=1000).items():
            got.extend(msgs)
    consumer.close()
    assert len(got) == total, f"consumed {len(got)} of {total}"

    partition_of_key = {}
    last_seq = {}
    offsets_by_partition = defaultdict(list)
    for m in got:
        key_name, seq = m.value.decode().split("|")
        assert key_name.encode() == m.key
        seq = int(seq)
        # A key always lands in one partition...
        assert partition_of_key.setdefault(m.key, m.partition) == m.partition, f"key {m.key} in two partitions"
        # ...and is read back in the order it was produced.
        assert seq == last_seq.get(m.key, -1) + 1, f"key {m.key}: seq {seq} after {last_seq.get(m.key)}"
        last_seq[m.key] = seq
        # The acknowledged offset is where the record really is.
        assert acked[(m.key, seq)] == (m.partition, m.offset)
        offsets_by_partition[m.partition].append(m.offset)
    for p, offs in offsets_by_partition.items():
        assert offs == list(range(len(offs))), f"partition {p} offsets not contiguous from 0"
    assert len(offsets_by_partition) > 1, "25 keys should spread over more than one of 4 partitions"


def test_seek_and_offsets_for_times(broker):
    topic = unique("seek")
    base_ms = (int(time.time()) - 3600) * 1000  # an hour ago, distinct from "now"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(10):
        producer.send(topic, value=f"v{i}".encode(), partition=0, timestamp_ms=base_ms + i * 1000)
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    wait_until(lambda: consumer.partitions_for_topic(topic), 10, "topic metadata")
    consumer.assign([tp])
    try:
        assert consumer.beginning_offsets([tp], timeout_ms=10000) == {tp: 0}
        assert consumer.end_offsets([tp], timeout_ms=10000) == {tp: 10}

        consumer.seek_to_end(tp)
        assert consumer.position(tp, timeout_ms=10000) == 10
        consumer.seek_to_beginning(tp)
        assert consumer.position(tp, timeout_ms=10000) == 0

        found = consumer.offsets_for_times({tp: base_ms + 3500}, timeout_ms=10000)[tp]
        assert found is not None
        assert (found.offset, found.timestamp) == (4, base_ms + 4000)
        exact = consumer.offsets_for_times({tp: base_ms}, timeout_ms=10000)[tp]
        assert (exact.offset, exact.timestamp) == (0, base_ms)
        assert consumer.offsets_for_times({tp: base_ms + 60_000}, timeout_ms=10000)[tp] is None

        consumer.seek(tp, found.offset)
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 6 and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=500).values():
                got.extend(msgs)
        assert [(m.offset, m.value, m.timestamp) for m in got] == [
            (i, f"v{i}".encode(), base_ms + i * 1000) for i in range(4, 10)
        ]
    finally:
        consumer.close()


def _drain(consumer, want, timeout_s=30):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            got.extend(msgs)
    return got


def test_group_resumes_from_committed_offsets(broker):
    topic, group = unique("resume"), unique("grp")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(10):
        producer.send(topic, value=f"first-{i}".encode(), partition=0)
    producer.flush(timeout=30)

    first = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                          auto_offset_reset="earliest", enable_auto_commit=True)
    got = _drain(first, 10)
    assert [m.value for m in got] == [f"first-{i}".encode() for i in range(10)]
    first.close()  # commits position 10

    tp = TopicPartition(topic, 0)
    # Committed offset is readable by anyone, before the next member joins.
    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    assert probe.committed(tp, timeout_ms=10000) == 10
    probe.close(autocommit=False)

    for i in range(5):
        producer.send(topic, value=f"second-{i}".encode(), partition=0)
    producer.flush(timeout=30)
    producer.close()

    second = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                           auto_offset_reset="earliest", enable_auto_commit=False)
    got = _drain(second, 5)
    # Give a re-read a chance to show up before asserting it did not happen.
    got += _drain(second, 1, timeout_s=2)
    assert [(m.offset, m.value) for m in got] == [(10 + i, f"second-{i}".encode()) for i in range(5)]

    # An explicit commit of a specific offset is read back exactly.
    second.commit({tp: OffsetAndMetadata(12, "checkpoint", -1)})
    assert second.committed(tp, timeout_ms=10000) == 12
    meta = second.committed(tp, metadata=True, timeout_ms=10000)
    assert (meta.offset, meta.metadata) == (12, "checkpoint")
    second.close(autocommit=False)

    third = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                          auto_offset_reset="earliest", enable_auto_commit=False)
    got = _drain(third, 3)
    assert [m.offset for m in got] == [12, 13, 14]
    third.close(autocommit=False)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_round_trip(broker, codec):
    topic = unique(f"kp-{codec}")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type=codec, linger_ms=20)
    values = [(f"event-{i}-" + "x" * (i % 300)).encode() for i in range(300)]
    for i, v in enumerate(values):
        producer.send(topic, key=str(i % 7).encode(), value=v, partition=0)
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = _drain(consumer, len(values))
    consumer.close()
    assert [(m.offset, m.key, m.value) for m in got] == [
        (i, str(i % 7).encode(), v) for i, v in enumerate(values)
    ]
