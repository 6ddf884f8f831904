"""Kafka transactions (KIP-98) against the real binary, with confluent-kafka
(librdkafka) and kafka-python: commit and abort, read_committed against
read_uncommitted, fencing of an older instance, the broker's abort of a transaction
past its timeout, offsets committed in a transaction, and the admin views."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CONSUME_TIMEOUT_S = 30.0


def _topic(broker, partitions=1) -> str:
    name = f"tx-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(15)
    return name


def _producer(broker, txn_id: str, **extra) -> Producer:
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "transactional.id": txn_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(20)
    return p


def _consume_all(broker, topic: str, isolation: str, expect: int, partitions=1) -> list:
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while time.monotonic() < deadline and len(out) < expect:
        msg = c.poll(0.5)
        if msg is None or msg.error():
            continue
        out.append(msg.value())
    # Nothing more comes: wait a little past the expected count.
    extra_deadline = time.monotonic() + 1.5
    while time.monotonic() < extra_deadline:
        msg = c.poll(0.3)
        if msg is not None and not msg.error():
            out.append(msg.value())
    c.close()
    return out


def test_commit_and_abort_with_confluent_kafka(broker):
    topic = _topic(broker, partitions=2)
    p = _producer(broker, "tx-commit-abort")
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=str(i).encode(), value=f"committed-{i}".encode(), partition=i % 2)
    p.commit_transaction(20)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, key=str(i).encode(), value=f"aborted-{i}".encode(), partition=i % 2)
    p.flush(10)
    p.abort_transaction(20)
    p.begin_transaction()
    p.produce(topic, key=b"last", value=b"committed-last", partition=0)
    p.commit_transaction(20)

    committed = _consume_all(broker, topic, "read_committed", 11, partitions=2)
    assert sorted(committed) == sorted([f"committed-{i}".encode() for i in range(10)] + [b"committed-last"])
    everything = _consume_all(broker, topic, "read_uncommitted", 16, partitions=2)
    assert len(everything) == 16
    assert sum(v.startswith(b"aborted-") for v in everything) == 5


def test_read_committed_waits_for_the_commit(broker):
    topic = _topic(broker)
    p = _producer(broker, "tx-wait")
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, value=f"v{i}".encode())
    p.flush(10)
    # Open transaction: read_committed sees nothing, read_uncommitted sees the data.
    assert _consume_all(broker, topic, "read_committed", 1) == []
    assert len(_consume_all(broker, topic, "read_uncommitted", 3)) == 3
    # ListOffsets: "latest" is the high watermark for read_uncommitted, the last
    # stable offset (before the open transaction) for read_committed.
    for isolation, high_expected in (("read_uncommitted", 3), ("read_committed", 0)):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "lso-probe",
                      "isolation.level": isolation})
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        c.close()
        assert (low, high) == (0, high_expected), isolation
    p.commit_transaction(20)
    assert len(_consume_all(broker, topic, "read_committed", 3)) == 3


def test_a_new_instance_fences_the_old_one(broker):
    topic = _topic(broker)
    old = _producer(broker, "tx-fence")
    old.begin_transaction()
    old.produce(topic, value=b"zombie")
    old.flush(10)
    new = _producer(broker, "tx-fence")
    # The old instance's open transaction was aborted; its commit is fenced.
    with pytest.raises(KafkaException) as info:
        old.produce(topic, value=b"zombie-2")
        old.commit_transaction(20)
    err = info.value.args[0]
    assert err.fatal() or "fenced" in err.str().lower(), err
    new.begin_transaction()
    new.produce(topic, value=b"alive")
    new.commit_transaction(20)
    assert _consume_all(broker, topic, "read_committed", 1) == [b"alive"]


def test_an_abandoned_transaction_is_aborted_after_its_timeout(broker):
    topic = _topic(broker)
    p = _producer(broker, "tx-timeout", **{"transaction.timeout.ms": 2000})
    p.begin_transaction()
    p.produce(topic, value=b"abandoned")
    p.flush(10)
    # The producer goes away without ending its transaction.
    del p
    committed_after = Producer({"bootstrap.servers": broker.bootstrap})
    committed_after.produce(topic, value=b"plain")
    committed_after.flush(10)
    deadline = time.monotonic() + 20
    got = []
    while time.monotonic() < deadline:
        got = _consume_all(broker, topic, "read_committed", 1)
        if got:
            break
    assert got == [b"plain"], "the LSO moved past the aborted transaction"


def test_offsets_in_a_transaction_commit_with_it(broker):
    src = _topic(broker)
    dst = _topic(broker)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(20):
        plain.produce(src, key=str(i).encode(), value=f"in-{i}".encode())
    plain.flush(10)

    group = f"eos-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([src])
    p = _producer(broker, "tx-eos")
    seen = 0
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while seen < 20 and time.monotonic() < deadline:
        msgs = consumer.consume(10, 1.0)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            continue
        p.begin_transaction()
        for m in msgs:
            p.produce(dst, key=m.key(), value=m.value().replace(b"in-", b"out-"))
        p.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 20
        )
        p.commit_transaction(20)
        seen += len(msgs)
    consumer.close()
    assert seen == 20
    check = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    committed = check.committed([TopicPartition(src, 0)], timeout=10)
    assert committed[0].offset == 20
    check.close()
    out = _consume_all(broker, dst, "read_committed", 20)
    assert sorted(out) == sorted(f"out-{i}".encode() for i in range(20))


def test_kafka_python_transactional_producer(broker):
    kafka = pytest.importorskip("kafka")
    topic = _topic(broker)
    p = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="tx-kafka-python")
    p.init_transactions()
    p.begin_transaction()
    p.send(topic, b"kp-committed")
    p.commit_transaction()
    p.begin_transaction()
    p.send(topic, b"kp-aborted")
    p.flush()
    p.abort_transaction()
    p.close()
    assert _consume_all(broker, topic, "read_committed", 1) == [b"kp-committed"]
    assert len(_consume_all(broker, topic, "read_uncommitted", 2)) == 2


def test_other_faces_see_committed_records_only(broker):
    """HTTP reads and work queues on a topic written by transactions: the committed
    records, never an aborted one or a marker, and nothing of an open transaction."""
    import httpx

    topic = _topic(broker)
    base = broker.http_url
    r = httpx.post(f"{base}/topics/{topic}/subscriptions", json={"name": "workers"})
    assert r.status_code == 201, r.text
    p = _producer(broker, "tx-faces")
    p.begin_transaction()
    p.produce(topic, value=b"c1")
    p.produce(topic, value=b"c2")
    p.commit_transaction(20)
    p.begin_transaction()
    p.produce(topic, value=b"a1")
    p.flush(10)
    p.abort_transaction(20)
    p.begin_transaction()
    p.produce(topic, value=b"c3")
    p.commit_transaction(20)
    p.begin_transaction()
    p.produce(topic, value=b"open")
    p.flush(10)

    read = httpx.get(f"{base}/topics/{topic}/partitions/0/records", params={"offset": 0}).json()
    assert [x["value"] for x in read["records"]] == ["c1", "c2", "c3"]
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 3 and time.monotonic() < deadline:
        body = httpx.post(f"{base}/topics/{topic}/subscriptions/workers/receive",
                          json={"max_records": 10, "wait_ms": 500}).json()
        got += body["records"]
    assert [d["value"] for d in got] == ["c1", "c2", "c3"]
    # Nothing else is work: not the abort, not the markers, not the open transaction.
    body = httpx.post(f"{base}/topics/{topic}/subscriptions/workers/receive",
                      json={"max_records": 10, "wait_ms": 300}).json()
    assert body["records"] == []
    p.commit_transaction(20)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        body = httpx.post(f"{base}/topics/{topic}/subscriptions/workers/receive",
                          json={"max_records": 10, "wait_ms": 500}).json()
        if body["records"]:
            break
    assert [d["value"] for d in body["records"]] == ["open"]


def test_transaction_admin_calls_with_kafka_python(broker):
    """What kafka-transactions.sh does (list, describe, describe-producers,
    find-hanging, abort), through kafka-python's admin client."""
    kafka = pytest.importorskip("kafka")
    admin_mod = pytest.importorskip("kafka.admin")
    admin = kafka.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    if not hasattr(admin, "list_transactions"):
        admin.close()
        pytest.skip("this kafka-python has no transaction admin calls")
    topic = _topic(broker)
    p = _producer(broker, "tx-admin")
    p.begin_transaction()
    p.produce(topic, value=b"open-one")
    p.flush(10)

    listed = [t for txns in admin.list_transactions().values() for t in txns]
    assert [(t.transactional_id, t.state.value) for t in listed] == [("tx-admin", "Ongoing")]
    ongoing = admin.list_transactions(state_filters=["Ongoing"])
    assert sum(len(v) for v in ongoing.values()) == 1
    assert sum(len(v) for v in admin.list_transactions(state_filters=["CompleteCommit"]).values()) == 0

    described = admin.describe_transactions(["tx-admin"])["tx-admin"]
    assert described.state.value == "Ongoing"
    assert {(tp.topic, tp.partition) for tp in described.topic_partitions} == {(topic, 0)}
    assert described.transaction_timeout_ms == 60000 and described.transaction_start_time_ms > 0

    tp = kafka.TopicPartition(topic, 0)
    producers = admin.describe_producers([tp])[tp].active_producers
    assert len(producers) == 1
    open_producer = producers[0]
    assert open_producer.producer_id == described.producer_id
    assert open_producer.current_transaction_start_offset == 0
    assert admin.find_hanging_transactions() == []

    # An administrator aborts the transaction in the partition: its record is never
    # read as committed and the last stable offset moves on.
    spec = admin_mod.AbortTransactionSpec(topic_partition=tp, producer_id=open_producer.producer_id,
                                          producer_epoch=open_producer.producer_epoch)
    admin.abort_transaction(spec)
    after = admin.describe_producers([tp])[tp].active_producers
    assert after[0].current_transaction_start_offset == -1
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(topic, value=b"plain")
    plain.flush(10)
    assert _consume_all(broker, topic, "read_committed", 1) == [b"plain"]
    admin.close()
