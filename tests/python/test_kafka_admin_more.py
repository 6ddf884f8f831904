"""Issue 15, items 2-5, against the real herald binary with confluent-kafka and
kafka-python: CreatePartitions (records stay, new partitions take data, a group
rebalances onto them, a restart keeps them, Kafka's error codes), per-record produce
errors (KIP-467: only the bad records fail with INVALID_RECORD), topic
`compression.type` (batches stored in the topic's codec, read back by a consumer), and
the admin calls tools and UIs make (offsets of several groups, deleting and altering a
group's offsets, log dirs, leader election, DescribeTopicPartitions, group listing by
state and type, `message.format.version`)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    ElectionType,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic
from kafka import KafkaAdminClient, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.admin import NewPartitions as KNewPartitions
from kafka.errors import (
    InvalidPartitionsError,
    InvalidRecordError,
    KafkaError as KPythonError,
)
from kafka.structs import OffsetAndMetadata

from herald_support import admin, create_topic, produce_and_confirm, read_partitions, unique, wait_until

pytestmark = pytest.mark.timeout(180)

INVALID_PARTITIONS = 37
INVALID_REPLICA_ASSIGNMENT = 39
UNKNOWN_TOPIC_OR_PARTITION = 3
ELECTION_NOT_NEEDED = 84
GROUP_SUBSCRIBED_TO_TOPIC = 86
LOG_DIR_NOT_FOUND = 57

# Kafka's codec ids in a batch's attributes, by compression.type.
CODEC_IDS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def partition_count(bootstrap: str, topic: str) -> int:
    md = admin(bootstrap).list_topics(topic=topic, timeout=10)
    return len(md.topics[topic].partitions)


def future_error(future) -> KafkaError | None:
    try:
        future.result(timeout=20)
        return None
    except KafkaException as e:
        return e.args[0]


def kp_admin(broker) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)


def stored_codecs(data_dir: Path, topic: str, partition: int) -> list[int]:
    """The codec of every batch stored in a partition's segments, read from disk: base
    offset (8), length (4), leader epoch (4), magic (1), CRC (4), then attributes."""
    codecs = []
    for segment in sorted((data_dir / "log" / f"{topic}-{partition}").glob("*.log")):
        data = segment.read_bytes()
        at = 0
        while at + 61 <= len(data):
            (length,) = struct.unpack_from(">i", data, at + 8)
            if length <= 0:
                break
            (attributes,) = struct.unpack_from(">h", data, at + 21)
            codecs.append(attributes & 0x07)
            at += 12 + length
    return codecs


# --- CreatePartitions -------------------------------------------------------------


def test_create_partitions_keeps_records_takes_new_data_and_survives_restart(broker):
    topic = unique("grow")
    create_topic(broker.bootstrap, topic, partitions=2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    before = produce_and_confirm(producer, topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(40)])
    client = admin(broker.bootstrap)

    # Kafka's errors: not larger, unknown topic, an assignment elsewhere.
    err = future_error(client.create_partitions([NewPartitions(topic, 2)])[topic])
    assert err is not None and err.code() == INVALID_PARTITIONS, err
    err = future_error(client.create_partitions([NewPartitions(topic, 1)])[topic])
    assert err is not None and err.code() == INVALID_PARTITIONS, err
    missing = unique("missing")
    err = future_error(client.create_partitions([NewPartitions(missing, 3)])[missing])
    assert err is not None and err.code() == UNKNOWN_TOPIC_OR_PARTITION, err
    err = future_error(client.create_partitions([NewPartitions(topic, 3, replica_assignment=[[2]])])[topic])
    assert err is not None and err.code() == INVALID_REPLICA_ASSIGNMENT, err
    assert "single-node" in err.str(), err.str()
    # validate_only checks and changes nothing.
    assert future_error(client.create_partitions([NewPartitions(topic, 6)], validate_only=True)[topic]) is None
    assert partition_count(broker.bootstrap, topic) == 2

    # A trivial single-node assignment is accepted; then a plain count.
    assert future_error(client.create_partitions([NewPartitions(topic, 3, replica_assignment=[[1]])])[topic]) is None
    assert future_error(client.create_partitions([NewPartitions(topic, 5)])[topic]) is None
    wait_until(lambda: partition_count(broker.bootstrap, topic) == 5, 15, "metadata shows 5 partitions")

    # A new producer (the old one's metadata is up to a refresh interval behind).
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    added = produce_and_confirm(producer, topic, [(b"new", f"p{p}".encode()) for p in range(2, 5) for _ in range(3)])
    # produce_and_confirm sends with a key; pin partitions explicitly too.
    for p in range(2, 5):
        produce_and_confirm(producer, topic, [(b"pinned", f"pinned-{p}".encode())], partition=p)
    records = read_partitions(broker.bootstrap, topic, 5)
    stored = {(r.partition, r.offset): r.value for r in records}
    for d in before:
        assert stored[(d.partition, d.offset)] == d.value, f"record moved or changed: {d}"
    for p in range(2, 5):
        assert any(r.partition == p and r.value == f"pinned-{p}".encode() for r in records), p
    assert len(records) == 40 + len(added) + 3

    broker.restart()
    assert partition_count(broker.bootstrap, topic) == 5
    again = read_partitions(broker.bootstrap, topic, 5)
    assert [(r.partition, r.offset, r.value) for r in again] == [(r.partition, r.offset, r.value) for r in records]


def test_create_partitions_with_kafka_python(broker):
    topic = unique("grow-kp")
    create_topic(broker.bootstrap, topic, partitions=1)
    client = kp_admin(broker)
    try:
        client.create_partitions({topic: KNewPartitions(total_count=4)})
        wait_until(lambda: partition_count(broker.bootstrap, topic) == 4, 15, "4 partitions")
        with pytest.raises(InvalidPartitionsError):
            client.create_partitions({topic: KNewPartitions(total_count=3)})
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        sent = [producer.send(topic, value=b"x", partition=3).get(timeout=20) for _ in range(3)]
        producer.close()
        assert [m.partition for m in sent] == [3, 3, 3]
        assert [m.offset for m in sent] == [0, 1, 2]
    finally:
        client.close()


def test_a_consumer_group_rebalances_onto_added_partitions(broker):
    topic = unique("grow-group")
    group = unique("g")
    create_topic(broker.bootstrap, topic, partitions=2)
    assigned: list[set] = []
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "topic.metadata.refresh.interval.ms": 500,
        "session.timeout.ms": 10000,
    })
    consumer.subscribe([topic], on_assign=lambda c, ps: assigned.append({p.partition for p in ps}))
    try:
        wait_until(lambda: consumer.poll(0.2) is None and assigned and assigned[-1] == {0, 1}, 30,
                   lambda: f"first assignment {assigned}")
        client = admin(broker.bootstrap)
        assert future_error(client.create_partitions([NewPartitions(topic, 4)])[topic]) is None
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        wait_until(lambda: len(producer.list_topics(topic, timeout=5).topics[topic].partitions) == 4, 15,
                   "the producer sees 4 partitions")
        produce_and_confirm(producer, topic, [(b"k", b"on-2")], partition=2)
        produce_and_confirm(producer, topic, [(b"k", b"on-3")], partition=3)
        seen: set = set()

        def got_new():
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                seen.add((msg.partition(), msg.value()))
            return {(2, b"on-2"), (3, b"on-3")} <= seen

        wait_until(got_new, 60, lambda: f"records of the new partitions; seen {seen}, assignments {assigned}")
        assert assigned[-1] == {0, 1, 2, 3}
    finally:
        consumer.close()


def test_a_work_queue_delivers_from_added_partitions(broker):
    """The queue engine sees new partitions (HTTP work-queue API)."""
    import requests

    topic = unique("grow-queue")
    create_topic(broker.bootstrap, topic, partitions=1)
    base = broker.http_url
    r = requests.post(f"{base}/topics/{topic}/subscriptions", json={"name": "workers"}, timeout=10)
    assert r.status_code == 201, r.text
    client = admin(broker.bootstrap)
    assert future_error(client.create_partitions([NewPartitions(topic, 3)])[topic]) is None
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    produce_and_confirm(producer, topic, [(b"job", b"late")], partition=2)
    r = requests.post(f"{base}/topics/{topic}/subscriptions/workers/receive",
                      json={"max_records": 10, "wait_ms": 3000}, timeout=15)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert [(m["partition"], m["value"]) for m in records] == [(2, "late")], records


# --- Per-record produce errors (KIP-467) -------------------------------------------


def test_keyless_records_on_a_compacted_topic_fail_alone(broker):
    topic = unique("kip467")
    create_topic(broker.bootstrap, topic, config={"cleanup.policy": "compact"})
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "linger.ms": 500,  # one batch for all six
        "message.send.max.retries": 0,
        "enable.idempotence": False,
    })
    reports: dict[int, KafkaError | None] = {}
    for i in range(6):
        key = None if i in (1, 4) else f"k{i}".encode()
        producer.produce(topic, key=key, value=f"v{i}".encode(), partition=0,
                         on_delivery=lambda err, msg, i=i: reports.__setitem__(i, err))
    assert producer.flush(30) == 0
    codes = {i: (e.code() if e else None) for i, e in sorted(reports.items())}
    # librdkafka fails the named records with INVALID_RECORD and the rest of the batch
    # with its own "an invalid record in the same batch" error.
    assert codes[1] == codes[4] == KafkaError.INVALID_RECORD, codes
    for i in (0, 2, 3, 5):
        assert codes[i] == KafkaError._INVALID_DIFFERENT_RECORD, codes
    # The good ones go through once resent on their own; nothing bad was stored.
    produce_and_confirm(producer, topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in (0, 2, 3, 5)], partition=0)
    assert [r.value for r in read_partitions(broker.bootstrap, topic, 1)] == [b"v0", b"v2", b"v3", b"v5"]


def test_kafka_python_surfaces_the_record_error(broker):
    topic = unique("kip467-kp")
    create_topic(broker.bootstrap, topic, config={"cleanup.policy": "compact"})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=500, retries=0,
                             enable_idempotence=False)
    futures = [producer.send(topic, key=None if i == 2 else b"k", value=b"v", partition=0) for i in range(4)]
    producer.flush(30)
    errors = []
    for f in futures:
        try:
            f.get(timeout=20)
            errors.append(None)
        except KPythonError as e:
            errors.append(e)
    producer.close()
    assert isinstance(errors[2], InvalidRecordError), errors
    assert "without key" in str(errors[2]), errors[2]
    for i in (0, 1, 3):
        assert errors[i] is not None and not isinstance(errors[i], InvalidRecordError), errors
        assert "invalid records" in str(errors[i]), errors[i]


# --- compression.type -------------------------------------------------------------


@pytest.mark.parametrize("codec", ["uncompressed", "gzip", "snappy", "lz4", "zstd"])
def test_topic_compression_type_recompresses_on_append(broker, codec):
    topic = unique(f"codec-{codec}")
    configs = {"compression.type": codec}
    level = {"gzip": ("compression.gzip.level", "1"), "lz4": ("compression.lz4.level", "12"),
             "zstd": ("compression.zstd.level", "10")}.get(codec)
    if level:
        configs[level[0]] = level[1]
    create_topic(broker.bootstrap, topic, config=configs)
    messages = [(f"k{i}".encode(), (f"OrderPlaced {i} " * 20).encode()) for i in range(300)]
    # Batches in every other codec (and the same one) from the producer.
    for producer_codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": producer_codec,
                      "enable.idempotence": True, "linger.ms": 20})
        produce_and_confirm(p, topic, messages[:60], partition=0)
        messages = messages[60:] + messages[:60]
    got = read_partitions(broker.bootstrap, topic, 1)
    assert len(got) == 300 and all(r.value.startswith(b"OrderPlaced") for r in got)
    codecs = set(stored_codecs(broker.data_dir, topic, 0))
    assert codecs == {CODEC_IDS[codec]}, codecs
    client = admin(broker.bootstrap)
    described = client.describe_configs([ConfigResource("topic", topic)])
    entries = list(described.values())[0].result(timeout=20)
    assert entries["compression.type"].value == codec
    if level:
        assert entries[level[0]].value == level[1]


def test_compression_type_is_alterable_and_checked(broker):
    topic = unique("codec-alter")
    create_topic(broker.bootstrap, topic)
    client = admin(broker.bootstrap)
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "gzip"})
    produce_and_confirm(p, topic, [(b"a", b"x" * 500)], partition=0)
    res = ConfigResource("topic", topic, set_config={"compression.type": "lz4"})
    for f in client.alter_configs([res]).values():
        f.result(timeout=20)
    produce_and_confirm(p, topic, [(b"b", b"y" * 500)], partition=0)
    kp = kp_admin(broker)
    try:
        from kafka.admin import ConfigResource as KConfigResource, ConfigResourceType

        kp.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic,
                                          configs={"compression.type": "zstd", "compression.zstd.level": "5"})],
                         incremental=True)
    finally:
        kp.close()
    produce_and_confirm(p, topic, [(b"c", b"z" * 500)], partition=0)
    # The producer's codec is kept (producer), then lz4, then zstd: stored as each came.
    assert stored_codecs(broker.data_dir, topic, 0) == [1, 3, 4]
    bad = ConfigResource("topic", topic, set_config={"compression.type": "brotli"})
    with pytest.raises(KafkaException) as e:
        for f in client.alter_configs([bad]).values():
            f.result(timeout=20)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    bad = ConfigResource("topic", topic, set_config={"compression.gzip.level": "12"})
    with pytest.raises(KafkaException):
        for f in client.alter_configs([bad]).values():
            f.result(timeout=20)
    assert [r.value[:1] for r in read_partitions(broker.bootstrap, topic, 1)] == [b"x", b"y", b"z"]


def test_message_format_version_is_accepted_and_ignored(broker):
    topic = unique("mfv")
    create_topic(broker.bootstrap, topic, config={"message.format.version": "0.10.2"})
    client = admin(broker.bootstrap)
    described = client.describe_configs([ConfigResource("topic", topic)])
    entries = list(described.values())[0].result(timeout=20)
    assert entries["message.format.version"].value == "0.10.2"
    # Stored batches stay message format v2 (magic 2) whatever the setting says.
    p = Producer({"bootstrap.servers": broker.bootstrap})
    produce_and_confirm(p, topic, [(b"k", b"v")], partition=0)
    data = next((broker.data_dir / "log" / f"{topic}-0").glob("*.log")).read_bytes()
    assert data[16] == 2
    bad = unique("mfv-bad")
    futures = client.create_topics([NewTopic(bad, 1, 1, config={"message.format.version": "soon"})])
    err = future_error(futures[bad])
    assert err is not None and err.code() == KafkaError.INVALID_CONFIG


# --- Admin calls of tools and UIs ---------------------------------------------------


def _commit(broker, group: str, topic: str, offsets: dict[int, int]) -> None:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def test_group_offsets_of_many_groups_altered_and_deleted(broker):
    topic = unique("offsets")
    other = unique("other")
    create_topic(broker.bootstrap, topic, partitions=3)
    create_topic(broker.bootstrap, other, partitions=1)
    groups = [unique("g") for _ in range(3)]
    for n, g in enumerate(groups):
        _commit(broker, g, topic, {0: 10 + n, 1: 20 + n})
    _commit(broker, groups[0], other, {0: 7})

    # confluent-kafka asks one group per call (librdkafka's limit); every group answers.
    client = admin(broker.bootstrap)
    for n, g in enumerate(groups):
        futures = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)])
        got = futures[g].result(timeout=20)
        offsets = {(tp.topic, tp.partition): tp.offset for tp in got.topic_partitions}
        assert offsets[(topic, 0)] == 10 + n and offsets[(topic, 1)] == 20 + n, offsets

    # kafka-python sends one OffsetFetch v8 for all groups.
    kp = kp_admin(broker)
    try:
        many = kp.list_group_offsets(groups + [unique("never")])
        for n, g in enumerate(groups):
            assert many[g][KTopicPartition(topic, 1)].offset == 20 + n, many[g]
        # Named partitions, one never committed (-1).
        named = kp.list_group_offsets({groups[1]: [KTopicPartition(topic, 0), KTopicPartition(topic, 2)]})
        assert named[groups[1]][KTopicPartition(topic, 0)].offset == 11

        # AlterConsumerGroupOffsets from both clients: the admin form of OffsetCommit.
        altered = client.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
            groups[2], [TopicPartition(topic, 0, 99), TopicPartition(topic, 2, 5)])])
        res = altered[groups[2]].result(timeout=20)
        assert all(tp.error is None for tp in res.topic_partitions), res.topic_partitions
        kp.alter_group_offsets(groups[1], {KTopicPartition(topic, 2): OffsetAndMetadata(42, "", -1)})
        after = kp.list_group_offsets(groups[1:])
        assert after[groups[2]][KTopicPartition(topic, 0)].offset == 99
        assert after[groups[1]][KTopicPartition(topic, 2)].offset == 42

        # DeleteConsumerGroupOffsets: some partitions of an idle group.
        deleted = kp.delete_group_offsets(groups[0], [KTopicPartition(topic, 0), KTopicPartition(other, 0)])
        assert all(e.errno == 0 for e in deleted.values()), deleted
        left = kp.list_group_offsets(groups[0])[groups[0]]
        assert KTopicPartition(topic, 0) not in left and KTopicPartition(other, 0) not in left, left
        assert left[KTopicPartition(topic, 1)].offset == 20
        # A group that does not exist.
        with pytest.raises(KPythonError) as e:
            kp.delete_group_offsets(unique("nobody"), [KTopicPartition(topic, 0)])
        assert "GroupIdNotFound" in type(e.value).__name__ or "GROUP_ID_NOT_FOUND" in str(e.value)
    finally:
        kp.close()

    broker.restart()
    kp = kp_admin(broker)
    try:
        left = kp.list_group_offsets(groups[0])[groups[0]]
        assert KTopicPartition(topic, 0) not in left and left[KTopicPartition(topic, 1)].offset == 20
    finally:
        kp.close()


def test_offsets_of_a_live_group_are_refused_for_its_topics(broker):
    topic = unique("live")
    spare = unique("spare")
    create_topic(broker.bootstrap, topic)
    create_topic(broker.bootstrap, spare)
    group = unique("live-g")
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    kp = kp_admin(broker)
    try:
        produce_and_confirm(Producer({"bootstrap.servers": broker.bootstrap}), topic, [(b"k", b"v")])
        wait_until(lambda: (m := consumer.poll(0.2)) is not None and m.error() is None, 30, "a record")
        consumer.commit(asynchronous=False)
        refused = kp.delete_group_offsets(group, [KTopicPartition(topic, 0)])
        assert refused[KTopicPartition(topic, 0)].errno == GROUP_SUBSCRIBED_TO_TOPIC, refused
        assert kp.list_group_offsets(group)[group][KTopicPartition(topic, 0)].offset == 1
        # confluent-kafka's admin commit is refused while the group has members, as in
        # Kafka (UNKNOWN_MEMBER_ID: the commit names no member), per partition or whole.
        client = admin(broker.bootstrap)
        altered = client.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 0)])])
        try:
            res = altered[group].result(timeout=20)
            codes = [tp.error.code() if tp.error else None for tp in res.topic_partitions]
        except KafkaException as e:
            codes = [e.args[0].code()]
        assert codes == [KafkaError.UNKNOWN_MEMBER_ID], codes
        # A topic the members are not subscribed to may go (nothing committed: a success).
        deleted = kp.delete_group_offsets(group, [KTopicPartition(spare, 0)])
        assert all(e.errno == 0 for e in deleted.values()), deleted
    finally:
        consumer.close()
        kp.close()


def test_groups_listed_by_state_and_type(broker):
    topic = unique("states")
    create_topic(broker.bootstrap, topic)
    idle = unique("idle")
    _commit(broker, idle, topic, {0: 1})
    live = unique("live")
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": live, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    client = admin(broker.bootstrap)
    try:
        def listed(**kwargs):
            result = client.list_consumer_groups(request_timeout=10, **kwargs).result(timeout=20)
            return {g.group_id: g for g in result.valid}

        wait_until(lambda: consumer.poll(0.2) is None and live in listed(states={ConsumerGroupState.STABLE}),
                   30, "the live group is Stable")
        stable = listed(states={ConsumerGroupState.STABLE})
        assert live in stable and idle not in stable
        empty = listed(states={ConsumerGroupState.EMPTY})
        assert idle in empty and live not in empty
        classic = listed(types={ConsumerGroupType.CLASSIC})
        assert {idle, live} <= set(classic)
        assert classic[live].type == ConsumerGroupType.CLASSIC
        assert not ({idle, live} & set(listed(types={ConsumerGroupType.CONSUMER})))
        kp = kp_admin(broker)
        try:
            groups = kp.list_groups(states_filter=["Stable"])
            names = [g[0] if isinstance(g, tuple) else g.get("group_id", g) for g in groups]
            assert live in str(names) and idle not in str(names)
        finally:
            kp.close()
    finally:
        consumer.close()


def test_describe_topics_topic_partitions_and_log_dirs(broker):
    topic = unique("describe")
    create_topic(broker.bootstrap, topic, partitions=3)
    produce_and_confirm(Producer({"bootstrap.servers": broker.bootstrap}), topic,
                        [(b"k", b"v" * 1000)] * 20, partition=1)
    client = admin(broker.bootstrap)
    described = client.describe_topics(TopicCollection([topic]))[topic].result(timeout=20)
    assert [p.id for p in described.partitions] == [0, 1, 2]
    assert all(p.leader.id == 1 and [r.id for r in p.replicas] == [1] for p in described.partitions)

    kp = kp_admin(broker)
    try:
        # DescribeTopicPartitions (API 75), paged two partitions at a time.
        page = kp.describe_topic_partitions([topic], response_partition_limit=2)
        [first] = page["topics"]
        assert first["name"] == topic and first["error_code"] == 0
        assert [p["partition_index"] for p in first["partitions"]] == [0, 1]
        assert all(p["leader_id"] == 1 and p["replica_nodes"] == [1] for p in first["partitions"])
        cursor = page["next_cursor"]
        assert cursor == {"topic_name": topic, "partition_index": 2}, cursor
        rest = kp.describe_topic_partitions([topic], response_partition_limit=2, cursor=cursor)
        assert [p["partition_index"] for p in rest["topics"][0]["partitions"]] == [2]
        assert rest["next_cursor"] is None

        dirs = kp.describe_log_dirs({topic: [0, 1, 2]})
        text = str(dirs)
        assert str(broker.data_dir / "log") in text, text
        assert topic in text

        # ElectLeaders: the only replica already leads.
        elected = client.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, 0)]).result(timeout=20)
        [(tp, err)] = list(elected.items())
        assert tp.partition == 0 and err is not None and err.code() == ELECTION_NOT_NEEDED, elected
        # A partition that does not exist.
        elected = client.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, 9)]).result(timeout=20)
        [(tp, err)] = list(elected.items())
        assert err is not None and err.code() == UNKNOWN_TOPIC_OR_PARTITION

        # AlterReplicaLogDirs: there is no other log dir to move to.
        from kafka.structs import TopicPartitionReplica

        moved = kp.alter_replica_log_dirs({TopicPartitionReplica(topic, 0, 1): "/elsewhere"})
        assert "LogDirNotFound" in str(moved) or str(LOG_DIR_NOT_FOUND) in str(moved), moved
    finally:
        kp.close()


def test_kafkajs_create_partitions_and_group_offsets(broker):
    from test_kafkajs import run_node

    topic = unique("js-grow")
    out = run_node("admin_more.js", broker, TOPIC=topic, GROUP=unique("js-g"))
    assert out["partitions"] == [0, 1, 2, 3], out
    assert out["refused"] == "INVALID_PARTITIONS", out
    assert out["sent"] == [{"partition": 3, "error": 0, "offset": "0"}], out
    fetched = {p["partition"]: p["offset"] for p in out["fetched"]}
    assert fetched[3] == "1" and fetched[0] == "0", out
    # resetOffsets earliest: KafkaJS commits its "earliest" marker (-2) for every
    # partition, new ones included, and its consumers resolve it (as against Kafka).
    assert {p["partition"]: p["offset"] for p in out["reset"]} == {0: "-2", 1: "-2", 2: "-2", 3: "-2"}, out
