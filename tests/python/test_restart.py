"""Durability across restarts: a clean SIGTERM restart keeps every record, topic,
config and committed offset; a kill -9 under load loses no acknowledged record and
serves nothing half-written; an idempotent producer carries on across a restart."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from herald_support import admin, create_topic, produce_and_confirm, read_partitions, unique, wait_until

pytestmark = pytest.mark.timeout(240)


def _consume_group(bootstrap, topic, group, want, timeout_s=30):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert not m.error(), m.error()
            got.append(m)
        if got:
            c.commit(asynchronous=False)
    finally:
        c.close()
    return got


def test_sigterm_restart_keeps_records_topics_and_configs(broker):
    topic = unique("durable")
    create_topic(broker.bootstrap, topic, partitions=3, config={"retention.ms": "604800000"})
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    messages = [(f"key-{i % 17}".encode(), f"value-{i}".encode()) for i in range(3000)]
    delivered = produce_and_confirm(producer, topic, messages)
    before = read_partitions(broker.bootstrap, topic, 3, expect_total=3000)

    code = broker.stop()
    assert code == 0, f"SIGTERM should shut down cleanly, exit code {code}:\n{broker.stderr_tail()}"
    broker.start()

    md = admin(broker.bootstrap).list_topics(timeout=10)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    client = admin(broker.bootstrap)
    [res] = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    assert res.result(timeout=20)["retention.ms"].value == "604800000"

    after = read_partitions(broker.bootstrap, topic, 3, expect_total=3000)
    assert [(r.partition, r.offset, r.key, r.value, r.timestamp) for r in after] == \
           [(r.partition, r.offset, r.key, r.value, r.timestamp) for r in before]
    assert {(d.partition, d.offset): (d.key, d.value) for d in delivered} == \
           {(r.partition, r.offset): (r.key, r.value) for r in after}

    # The log continues where it was: new records get the next offsets.
    more = produce_and_confirm(producer, topic, [(b"key-0", b"after-restart")])
    [d] = more
    assert d.offset == sum(1 for r in after if r.partition == d.partition)


def test_committed_offsets_survive_restart(broker):
    topic, group = unique("offsets"), unique("offsets-grp")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(None, f"r{i}".encode()) for i in range(20)])

    got = _consume_group(broker.bootstrap, topic, group, 7)
    assert [m.offset() for m in got] == list(range(7))

    assert broker.restart() == 0

    probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    [committed] = probe.committed([TopicPartition(topic, 0)], timeout=10)
    probe.close()
    assert committed.offset == 7

    got = _consume_group(broker.bootstrap, topic, group, 13)
    assert [(m.offset(), m.value()) for m in got] == [(i, f"r{i}".encode()) for i in range(7, 20)]


def test_idempotent_producer_continues_across_restart(broker):
    """The same idempotent producer keeps producing after the broker restarts: the
    broker must still accept its sequence numbers (producer state is recovered), and
    the log holds each record exactly once, in order."""
    topic = unique("idem-restart")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5})
    first = produce_and_confirm(producer, topic, [(None, f"{i}".encode()) for i in range(500)])
    assert broker.restart() == 0
    second = produce_and_confirm(producer, topic, [(None, f"{i}".encode()) for i in range(500, 1000)])
    assert [d.offset for d in first + second] == list(range(1000))
    records = read_partitions(broker.bootstrap, topic, 1, expect_total=1000)
    assert [int(r.value) for r in records] == list(range(1000))


class _LoadProducer:
    """Produces continuously from a thread and remembers every acknowledged record."""

    def __init__(self, bootstrap, topic):
        self.topic = topic
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 2,
            "enable.idempotence": False,
            "message.timeout.ms": 20000,
            "reconnect.backoff.max.ms": 500,
        })
        self.acked: dict[tuple[int, int], bytes] = {}
        self.failed = 0
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_delivery(self, err, msg):
        with self._lock:
            if err is None:
                self.acked[(msg.partition(), msg.offset())] = msg.value()
            else:
                self.failed += 1

    def _run(self):
        while not self._stop.is_set():
            value = f"load-{self.sent}-".encode() + b"p" * (self.sent % 200)
            try:
                self.producer.produce(self.topic, key=str(self.sent % 31).encode(), value=value,
                                      on_delivery=self._on_delivery)
                self.sent += 1
            except BufferError:
                pass
            self.producer.poll(0.001 if self.sent % 50 else 0.01)

    def acked_count(self):
        with self._lock:
            return len(self.acked)

    def start(self):
        self.thread.start()

    def finish(self, timeout_s=30):
        self._stop.set()
        self.thread.join(timeout=10)
        return self.producer.flush(timeout_s)


def test_kill9_under_load_loses_no_acknowledged_record(broker):
    topic = unique("crash")
    create_topic(broker.bootstrap, topic, partitions=3)
    load = _LoadProducer(broker.bootstrap, topic)
    load.start()
    wait_until(lambda: load.acked_count() >= 2000, 60, lambda: f"2000 acks before the crash (have {load.acked_count()})")

    broker.kill()
    acked_at_kill = load.acked_count()
    time.sleep(0.5)
    broker.start()
    # Records the producer retries after the restart are acknowledged too and count.
    wait_until(lambda: load.acked_count() >= acked_at_kill + 500, 60, "producing resumes after restart")
    remaining = load.finish()
    assert remaining == 0, f"{remaining} records neither delivered nor failed"

    print(f"acked {acked_at_kill} before kill -9, {len(load.acked)} in all; {load.failed} failed; "
          f"{load.sent} sent")
    records = read_partitions(broker.bootstrap, topic, 3, expect_total=len(load.acked))
    stored = {(r.partition, r.offset): r.value for r in records}
    missing = {k: v for k, v in load.acked.items() if stored.get(k) != v}
    assert not missing, (
        f"{len(missing)} of {len(load.acked)} acknowledged records missing or different after kill -9, "
        f"e.g. {sorted(missing.items())[:5]}")
    # Every stored record decodes (nothing half-written is served) and offsets are dense.
    for p in range(3):
        offs = [r.offset for r in records if r.partition == p]
        assert offs == list(range(len(offs))), f"partition {p}: offsets have holes after recovery"
    for r in records:
        assert r.value.startswith(b"load-"), f"garbage record at {r.partition}/{r.offset}: {r.value[:40]!r}"


def test_kill9_restart_keeps_group_offsets_and_topics(broker):
    topic, group = unique("crash-meta"), unique("crash-grp")
    create_topic(broker.bootstrap, topic, partitions=2, config={"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(b"k", f"v{i}".encode()) for i in range(10)], partition=1)
    got = _consume_group(broker.bootstrap, topic, group, 4)
    assert len(got) == 4

    broker.kill()
    broker.start()

    md = admin(broker.bootstrap).list_topics(timeout=10)
    assert sorted(md.topics[topic].partitions) == [0, 1]
    client = admin(broker.bootstrap)
    [res] = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    assert res.result(timeout=20)["cleanup.policy"].value == "compact"
    probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    [committed] = probe.committed([TopicPartition(topic, 1)], timeout=10)
    probe.close()
    assert committed.offset == 4, "a commit acknowledged before kill -9 must survive it"
    assert committed.error is None or committed.error.code() == KafkaError.NO_ERROR
