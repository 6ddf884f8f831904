"""Retention, DeleteRecords and config changes against the real binary, with
confluent-kafka and kafka-python.

Every test runs its broker with a short retention check interval so that the
retention task acts within a fraction of a second; each wait has a deadline.
The property checked is always the same: after data is deleted, the earliest
offset is the new start, what lies below it is gone, what lies above it is whole,
consumers that point below it reset as `auto.offset.reset` says, producers go on,
and a restart keeps the start offset exactly.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)

from herald_support import (
    admin,
    create_topic,
    produce_and_confirm,
    read_partitions,
    unique,
    wait_until,
    watermarks,
)

pytestmark = pytest.mark.timeout(180)

# Retention runs this often in these tests (the default is 30 s).
CHECK_INTERVAL_ENV = {"HERALD_RETENTION_CHECK_INTERVAL_MS": "100"}
# How long a test waits for retention to act.
RETENTION_WAIT_S = 20


def low_high(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    return watermarks(bootstrap, topic, partition + 1)[partition]


def small_batch_producer(bootstrap: str) -> Producer:
    # Small batches, so a tiny segment.bytes holds several of them.
    return Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 0,
        "batch.num.messages": 5,
    })


def produce_at(producer: Producer, topic: str, values: list[bytes], timestamp_ms: int,
               keyed: bool = False) -> list[int]:
    """Produce values with an explicit CreateTime to partition 0; returns their offsets.
    With `keyed`, record i gets key b"key-<i>" (compacted topics refuse keyless records)."""
    offsets: list[int] = []
    errors: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    for i, v in enumerate(values):
        key = b"key-%d" % i if keyed else None
        producer.produce(topic, key=key, value=v, partition=0, timestamp=timestamp_ms, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors
    return sorted(offsets)


def first_offset_of_group(bootstrap: str, topic: str, group: str, reset: str, timeout_s: float = 30.0):
    """Join `group`, consume the first record after the committed offset (or after the
    reset) and return its offset; None if nothing arrives before the deadline."""
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": reset,
    })
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            return msg.offset()
        return None
    finally:
        c.close()


def commit(bootstrap: str, topic: str, group: str, offset: int) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        c.close()


def describe(bootstrap: str, topic: str) -> dict:
    client = admin(bootstrap)  # must outlive the future
    [future] = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return future.result(timeout=20)


def test_time_retention_deletes_old_segments_and_consumers_reset(broker_factory):
    broker = broker_factory(extra_env=CHECK_INTERVAL_ENV)
    topic = unique("ret-time")
    create_topic(broker.bootstrap, topic, config={"segment.bytes": "2048", "retention.ms": "3600000"})
    producer = small_batch_producer(broker.bootstrap)
    now = int(time.time() * 1000)
    old = produce_at(producer, topic, [b"old-%03d" % i + b"." * 100 for i in range(60)], now - 2 * 3600_000)
    new = produce_at(producer, topic, [b"new-%03d" % i + b"." * 100 for i in range(20)], now)
    assert old == list(range(60)) and new == list(range(60, 80))
    # Committed positions from before retention: one inside what will be deleted.
    commit(broker.bootstrap, topic, "g-earliest", 5)
    commit(broker.bootstrap, topic, "g-latest", 5)

    # Segments whose newest record is two hours old go (passes ran while the old
    # records were produced, too); the one holding offset 60 stays. A 2 KiB segment
    # holds at most 11 of these records, so the start ends between 49 and 60.
    wait_until(lambda: low_high(broker.bootstrap, topic)[0] >= 49, RETENTION_WAIT_S,
               lambda: f"retention deleted the old segments: {low_high(broker.bootstrap, topic)}")
    low, high = low_high(broker.bootstrap, topic)
    assert high == 80 and low <= 60, (low, high)
    time.sleep(0.5)  # more passes change nothing: the rest is young
    assert low_high(broker.bootstrap, topic) == (low, 80)

    records = read_partitions(broker.bootstrap, topic, 1)
    assert [r.offset for r in records] == list(range(low, 80))
    assert [r.value for r in records if r.value.startswith(b"new")] == \
        [b"new-%03d" % i + b"." * 100 for i in range(20)]
    assert all(r.value == b"old-%03d" % r.offset + b"." * 100 for r in records if r.offset < 60)

    # A consumer below the start gets OFFSET_OUT_OF_RANGE and resets per its policy.
    assert first_offset_of_group(broker.bootstrap, topic, "g-earliest", "earliest") == low
    producer.produce(topic, value=b"after", partition=0)
    assert producer.flush(30) == 0
    assert first_offset_of_group(broker.bootstrap, topic, "g-latest", "latest", timeout_s=3) is None
    # ("latest" went to the end: it sees only what is produced after it joined.)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("fresh"),
                  "auto.offset.reset": "latest", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 3)])  # below the start: reset to the end
        # The first fetch is refused and the consumer resets to the end (81) before
        # anything new is produced.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert c.poll(0.2) is None
        producer.produce(topic, value=b"tail", partition=0)
        assert producer.flush(10) == 0
        got = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and got is None:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                got = (msg.offset(), msg.value())
        assert got == (81, b"tail"), got
    finally:
        c.close()

    # The start offset is kept across a restart.
    broker.restart()
    assert low_high(broker.bootstrap, topic) == (low, 82)
    assert read_partitions(broker.bootstrap, topic, 1)[0].offset == low


def test_size_retention_from_the_broker_default(broker_factory):
    broker = broker_factory(extra_env={**CHECK_INTERVAL_ENV, "HERALD_RETENTION_BYTES": "4096"})
    topic = unique("ret-size")
    create_topic(broker.bootstrap, topic, config={"segment.bytes": "1024"})
    configs = describe(broker.bootstrap, topic)
    assert configs["retention.bytes"].value == "4096"
    assert configs["retention.bytes"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert configs["retention.ms"].value == "604800000"
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["segment.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value

    producer = small_batch_producer(broker.bootstrap)
    produce_and_confirm(producer, topic, [(None, b"%04d" % i + b"x" * 60) for i in range(300)], partition=0)
    # About 70 bytes a record: once trimmed to the limit, fewer than 100 are left.
    wait_until(lambda: (lambda lo, hi: hi - lo < 100)(*low_high(broker.bootstrap, topic)),
               RETENTION_WAIT_S, lambda: f"size retention trimmed the partition: {low_high(broker.bootstrap, topic)}")
    time.sleep(0.5)  # further passes change nothing
    low, high = low_high(broker.bootstrap, topic)
    assert high == 300
    records = read_partitions(broker.bootstrap, topic, 1)
    assert [r.offset for r in records] == list(range(low, 300))
    assert [r.value for r in records] == [b"%04d" % i + b"x" * 60 for i in range(low, 300)]
    # What remains is at least the limit, and less than the limit plus one segment.
    kept = sum(len(r.value) for r in records)
    assert kept < 4096 + 1024, f"{kept} record bytes kept"
    # Produce goes on; retention keeps trimming.
    produce_and_confirm(producer, topic, [(None, b"y" * 60) for _ in range(100)], partition=0)
    wait_until(lambda: low_high(broker.bootstrap, topic)[0] > low, RETENTION_WAIT_S,
               "retention trimmed the newly produced data too")


def test_compacted_topics_are_not_subject_to_retention(broker_factory):
    broker = broker_factory(extra_env=CHECK_INTERVAL_ENV)
    topic = unique("ret-compact")
    create_topic(broker.bootstrap, topic, config={
        "cleanup.policy": "compact", "retention.ms": "1", "retention.bytes": "1", "segment.bytes": "1024"})
    producer = small_batch_producer(broker.bootstrap)
    # Distinct keys: compaction has nothing to remove, so every record must stay.
    produce_at(producer, topic, [b"k" * 80 for _ in range(50)], int(time.time() * 1000) - 3600_000, keyed=True)
    time.sleep(1.0)
    assert low_high(broker.bootstrap, topic) == (0, 50)


def test_delete_records_with_confluent_admin(broker_factory):
    broker = broker_factory()
    topic = unique("delrec")
    create_topic(broker.bootstrap, topic, partitions=2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(None, b"v%d" % i) for i in range(30)], partition=0)
    client = admin(broker.bootstrap)

    [fut] = client.delete_records([TopicPartition(topic, 0, 10)], operation_timeout=10).values()
    assert fut.result(timeout=20).low_watermark == 10
    assert low_high(broker.bootstrap, topic) == (10, 30)
    records = read_partitions(broker.bootstrap, topic, 1)
    assert [(r.offset, r.value) for r in records] == [(i, b"v%d" % i) for i in range(10, 30)]

    # Never backwards: asking for a lower offset reports the current start.
    [fut] = client.delete_records([TopicPartition(topic, 0, 4)], operation_timeout=10).values()
    assert fut.result(timeout=20).low_watermark == 10

    # Above the high watermark: OFFSET_OUT_OF_RANGE, nothing changes.
    [fut] = client.delete_records([TopicPartition(topic, 0, 31)], operation_timeout=10).values()
    with pytest.raises(KafkaException) as err:
        fut.result(timeout=20)
    assert err.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    assert low_high(broker.bootstrap, topic) == (10, 30)

    # A consumer whose committed offset was deleted resets to the new start.
    commit(broker.bootstrap, topic, "delrec-g", 3)
    assert first_offset_of_group(broker.bootstrap, topic, "delrec-g", "earliest") == 10

    # The start offset lies inside the (only) segment and survives a clean restart...
    broker.restart()
    assert low_high(broker.bootstrap, topic) == (10, 30)
    # ...and a kill -9.
    client = admin(broker.bootstrap)
    [fut] = client.delete_records([TopicPartition(topic, 0, 17)], operation_timeout=10).values()
    assert fut.result(timeout=20).low_watermark == 17
    broker.kill()
    broker.start()
    assert low_high(broker.bootstrap, topic) == (17, 30)
    assert read_partitions(broker.bootstrap, topic, 1)[0].offset == 17

    # OFFSET_END (-1) deletes up to the high watermark; the other partition is untouched.
    client = admin(broker.bootstrap)
    [fut] = client.delete_records([TopicPartition(topic, 0, OFFSET_END)], operation_timeout=10).values()
    assert fut.result(timeout=20).low_watermark == 30
    assert low_high(broker.bootstrap, topic) == (30, 30)
    assert watermarks(broker.bootstrap, topic, 2)[1] == (0, 0)
    produce_and_confirm(producer, topic, [(None, b"later")], partition=0)
    assert [(r.offset, r.value) for r in read_partitions(broker.bootstrap, topic, 1)] == [(30, b"later")]


def test_delete_records_unknown_topic_or_partition(broker_factory):
    # librdkafka refuses unknown partitions itself (no leader), so kafka-python sends
    # the request straight to the broker.
    from kafka.admin import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError
    from kafka.structs import TopicPartition as KTopicPartition

    broker = broker_factory(extra_args=["--auto-create-topics", "false"])
    topic = unique("delrec-unknown")
    create_topic(broker.bootstrap, topic)
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        for tp in [KTopicPartition(topic, 5), KTopicPartition(unique("missing"), 0)]:
            with pytest.raises(UnknownTopicOrPartitionError):
                client.delete_records({tp: 0}, partition_leader_id=1)
    finally:
        client.close()
    assert low_high(broker.bootstrap, topic) == (0, 0)


def test_kafka_python_delete_records_and_offset_reset(broker_factory):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient
    from kafka.structs import TopicPartition as KTopicPartition

    broker = broker_factory()
    topic = unique("kp-delrec")
    create_topic(broker.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(20):
        producer.send(topic, value=b"m%d" % i, partition=0)
    producer.flush(30)
    producer.close()

    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        tp = KTopicPartition(topic, 0)
        result = client.delete_records({tp: 12})
        assert result[tp]["low_watermark"] == 12
    finally:
        client.close()

    def first_after_seek(reset: str):
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset=reset,
                                 enable_auto_commit=False, consumer_timeout_ms=3000)
        try:
            tp = KTopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 2)  # deleted: the fetch gets OFFSET_OUT_OF_RANGE
            for msg in consumer:
                return msg.offset, msg.value
            return consumer.position(tp), None
        finally:
            consumer.close()

    assert first_after_seek("earliest") == (12, b"m12")
    assert first_after_seek("latest") == (20, None)


def entry(name, value=None, op=AlterConfigOpType.SET):
    return ConfigEntry(name, value, incremental_operation=op)


def incremental(bootstrap, resource_type, name, entries, validate_only=False):
    client = admin(bootstrap)  # must outlive the future
    [fut] = client.incremental_alter_configs(
        [ConfigResource(resource_type, name, incremental_configs=entries)],
        validate_only=validate_only, request_timeout=15).values()
    return fut.result(timeout=20)


def test_incremental_alter_configs_with_confluent(broker_factory):
    broker = broker_factory(extra_env=CHECK_INTERVAL_ENV)
    topic = unique("alter")
    create_topic(broker.bootstrap, topic, config={"retention.ms": "3600000"})
    bootstrap = broker.bootstrap

    incremental(bootstrap, ResourceType.TOPIC, topic, [
        entry("retention.bytes", "1048576"),
        entry("retention.ms", op=AlterConfigOpType.DELETE),
        entry("cleanup.policy", "compact", AlterConfigOpType.APPEND),
    ])
    configs = describe(bootstrap, topic)
    assert configs["retention.bytes"].value == "1048576"
    assert configs["retention.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "604800000"
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["cleanup.policy"].value == "delete,compact"
    incremental(bootstrap, ResourceType.TOPIC, topic, [entry("cleanup.policy", "compact", AlterConfigOpType.SUBTRACT)])
    assert describe(bootstrap, topic)["cleanup.policy"].value == "delete"

    # validate_only checks but changes nothing.
    incremental(bootstrap, ResourceType.TOPIC, topic, [entry("retention.bytes", "5")], validate_only=True)
    assert describe(bootstrap, topic)["retention.bytes"].value == "1048576"

    def refused(resource_type, name, entries):
        with pytest.raises(KafkaException) as err:
            incremental(bootstrap, resource_type, name, entries)
        return err.value.args[0]

    for bad in ([entry("retention.mss", "1")],
                [entry("retention.ms", "soon")],
                [entry("retention.ms", "-7")],
                [entry("retention.ms", "5", AlterConfigOpType.APPEND)],
                [entry("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT)]):
        e = refused(ResourceType.TOPIC, topic, bad)
        assert e.code() == KafkaError.INVALID_CONFIG, (bad, e)
        assert e.str(), "the error carries a message"
    assert refused(ResourceType.TOPIC, unique("missing"), [entry("retention.ms", "1")]).code() == \
        KafkaError.UNKNOWN_TOPIC_OR_PART
    e = refused(ResourceType.BROKER, "1", [entry("log.retention.ms", "1")])
    assert e.code() == KafkaError.INVALID_REQUEST and "cannot be altered" in e.str()
    assert describe(bootstrap, topic)["retention.bytes"].value == "1048576"

    # Takes effect at once: max.message.bytes on the next produce...
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    produce_and_confirm(producer, topic, [(None, b"z" * 500)], partition=0)
    incremental(bootstrap, ResourceType.TOPIC, topic, [entry("max.message.bytes", "200")])
    errors = []
    producer.produce(topic, value=b"z" * 500, partition=0, on_delivery=lambda err, msg: errors.append(err))
    producer.flush(30)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors
    # ...and retention.ms at the next retention pass.
    incremental(bootstrap, ResourceType.TOPIC, topic, [entry("max.message.bytes", op=AlterConfigOpType.DELETE),
                                                       entry("retention.ms", "1000")])
    wait_until(lambda: low_high(bootstrap, topic) == (1, 1), RETENTION_WAIT_S,
               lambda: f"retention.ms=1000 emptied the partition: {low_high(bootstrap, topic)}")

    # Changes are stored: a restart keeps them.
    broker.restart()
    configs = describe(broker.bootstrap, topic)
    assert configs["retention.ms"].value == "1000"
    assert configs["retention.bytes"].value == "1048576"
    assert configs["max.message.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert low_high(broker.bootstrap, topic) == (1, 1)


def test_alter_configs_replaces_all_overrides(broker_factory):
    broker = broker_factory()
    topic = unique("alter-legacy")
    create_topic(broker.bootstrap, topic, config={"retention.ms": "3600000", "segment.bytes": "1048576"})
    client = admin(broker.bootstrap)
    with pytest.warns(DeprecationWarning):
        [fut] = client.alter_configs([ConfigResource(ResourceType.TOPIC, topic,
                                                     set_config={"message.timestamp.type": "LogAppendTime"})]).values()
    fut.result(timeout=20)
    configs = describe(broker.bootstrap, topic)
    assert configs["message.timestamp.type"].value == "LogAppendTime"
    assert configs["message.timestamp.type"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    # LogAppendTime applies to the next produce: the broker's clock, not the producer's.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_at(producer, topic, [b"stamped"], timestamp_ms=1_000)
    [record] = read_partitions(broker.bootstrap, topic, 1)
    ts_type, ts = record.timestamp
    assert ts_type == 2 and ts > 1_000_000_000_000, record.timestamp  # TIMESTAMP_LOG_APPEND_TIME

    with pytest.warns(DeprecationWarning):
        [fut] = client.alter_configs([ConfigResource(ResourceType.TOPIC, topic,
                                                     set_config={"segment.bytes": "12"})]).values()
    with pytest.raises(KafkaException) as err:
        fut.result(timeout=20)
    assert err.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe(broker.bootstrap, topic)["message.timestamp.type"].value == "LogAppendTime"


def test_kafka_python_alter_and_describe_configs(broker_factory):
    from kafka.admin import ConfigResource as KConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient

    broker = broker_factory()
    topic = unique("kp-alter")
    create_topic(broker.bootstrap, topic)
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        client.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic,
                                              configs={"retention.ms": "120000", "retention.bytes": "65536"})],
                             raise_on_unknown=False)
        configs = describe(broker.bootstrap, topic)
        assert configs["retention.ms"].value == "120000"
        assert configs["retention.bytes"].value == "65536"
        client.reset_configs([KConfigResource(ConfigResourceType.TOPIC, topic, configs=["retention.ms"])],
                             raise_on_unknown=False)
        configs = describe(broker.bootstrap, topic)
        assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
        assert configs["retention.bytes"].value == "65536"
    finally:
        client.close()


def test_create_topics_with_configs_reports_sources(broker_factory):
    broker = broker_factory(extra_env={"HERALD_RETENTION_MS": "86400000"})
    topic = unique("create-cfg")
    create_topic(broker.bootstrap, topic, config={"retention.bytes": "1000000", "cleanup.policy": "delete"})
    configs = describe(broker.bootstrap, topic)
    assert configs["retention.bytes"].value == "1000000"
    assert configs["retention.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "86400000"
    assert configs["retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    client = admin(broker.bootstrap)
    [fut] = client.describe_configs([ConfigResource(ResourceType.BROKER, "1")]).values()
    broker_configs = fut.result(timeout=20)
    assert broker_configs["log.retention.ms"].value == "86400000"
    assert broker_configs["log.retention.check.interval.ms"].value == "30000"


def test_beginning_offsets_follow_the_start(broker_factory):
    """OFFSET_BEGINNING and offsets_for_times never point below the start."""
    broker = broker_factory()
    topic = unique("begin")
    create_topic(broker.bootstrap, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    base = int(time.time() * 1000) - 60_000
    for i in range(10):
        produce_at(producer, topic, [b"t%d" % i], base + i * 1000)
    client = admin(broker.bootstrap)
    [fut] = client.delete_records([TopicPartition(topic, 0, 6)]).values()
    assert fut.result(timeout=20).low_watermark == 6
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("ts"), "enable.auto.commit": False})
    try:
        [found] = c.offsets_for_times([TopicPartition(topic, 0, base + 2_000)], timeout=10)
        assert found.offset == 6, found
        [found] = c.offsets_for_times([TopicPartition(topic, 0, base + 8_000)], timeout=10)
        assert found.offset == 8, found
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msg = None
        deadline = time.monotonic() + 15
        while msg is None and time.monotonic() < deadline:
            msg = c.poll(0.5)
        assert msg is not None and not msg.error() and msg.offset() == 6
    finally:
        c.close()
