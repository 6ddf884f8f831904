"""Exactly-once through broker crashes: a consume-transform-produce loop (confluent-kafka,
read_committed from topic A, write topic B and commit A's offsets in the same
transaction) over 50,000 records, with every 5th transaction aborted on purpose and
the broker killed with SIGKILL three times at random moments. Afterwards a
read_committed consumer of B sees every record of A exactly once, in order per key, and
no record of an aborted transaction; a read_uncommitted consumer sees the aborted ones
too."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

RECORDS = 50_000
KEYS = 200
PARTITIONS = 4
BATCH = 500
KILLS = int(os.environ.get("EOS_KILLS", "3"))
# The whole loop must finish within this (it takes ~30-60 s on the 2-core VM).
DEADLINE_S = 300
TXN_TIMEOUT_S = 20


def _create(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        f.result(15)


def _read(bootstrap: str, topic: str, isolation: str, at_least: int) -> list:
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"check-{uuid.uuid4().hex[:6]}",
        "isolation.level": isolation,
        "enable.auto.commit": False,
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out = []
    idle_since = time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        msgs = [m for m in c.consume(1000, 0.5) if not m.error()]
        out += [(m.key(), m.value()) for m in msgs]
        if msgs:
            idle_since = time.monotonic()
        elif len(out) >= at_least and time.monotonic() - idle_since > 2.0:
            break
    c.close()
    return out


class Loop:
    """The transactional processor, rebuilt (fencing its predecessor) after any error."""

    def __init__(self, bootstrap: str, src: str, dst: str, group: str):
        self.bootstrap, self.src, self.dst, self.group = bootstrap, src, dst, group
        self.transactions = 0
        self.aborted_on_purpose = 0
        self.recoveries = 0
        self.consumer = None
        self.producer = None

    def _connect(self) -> None:
        self.producer = Producer({
            "bootstrap.servers": self.bootstrap,
            "transactional.id": f"eos-{self.group}",
            "transaction.timeout.ms": TXN_TIMEOUT_S * 1000,
            "linger.ms": 5,
            "message.timeout.ms": TXN_TIMEOUT_S * 1000,
        })
        self.producer.init_transactions(30)
        self.consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
        tps = [TopicPartition(self.src, p) for p in range(PARTITIONS)]
        committed = self.consumer.committed(tps, timeout=30)
        start = [TopicPartition(self.src, tp.partition, max(tp.offset, 0)) for tp in committed]
        self.consumer.assign(start)

    def _drop(self) -> None:
        for closer in (lambda: self.consumer and self.consumer.close(),):
            try:
                closer()
            except Exception:  # noqa: BLE001 - the broker may be down
                pass
        self.consumer = None
        self.producer = None

    def done(self) -> int:
        """Records of A whose offsets are committed."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            tps = c.committed([TopicPartition(self.src, p) for p in range(PARTITIONS)], timeout=30)
            return sum(max(tp.offset, 0) for tp in tps)
        finally:
            c.close()

    def step(self) -> bool:
        """One transaction; False when nothing was left to read."""
        if self.producer is None:
            self._connect()
        msgs = [m for m in self.consumer.consume(BATCH, 1.0) if not m.error()]
        if not msgs:
            return False
        self.transactions += 1
        if self.transactions % 20 == 0:
            print(f"txn {self.transactions} recoveries {self.recoveries}", flush=True)
        abort = self.transactions % 5 == 0
        self.producer.begin_transaction()
        for m in msgs:
            self.producer.produce(self.dst, key=m.key(), value=b"out-" + m.value())
        if abort:
            self.producer.flush(30)
            self.producer.abort_transaction(30)
            self.aborted_on_purpose += 1
            # Process the same records again, as an application that aborted would.
            self._drop()
            return True
        positions = self.consumer.position(self.consumer.assignment())
        self.producer.send_offsets_to_transaction(
            positions, self.consumer.consumer_group_metadata(), 30)
        self.producer.commit_transaction(30)
        return True

    def run(self, total: int, deadline: float, also=lambda: True) -> None:
        while time.monotonic() < deadline:
            try:
                if not self.step() and self.done() >= total and also():
                    return
            except KafkaException as e:
                if e.args[0].code() == KafkaError._INVALID_ARG:
                    raise
                print(f"recovering after: {e}", flush=True)
                self.recoveries += 1
                self._drop()
                time.sleep(0.5)
            if self.producer is None:
                try:
                    if self.done() >= total and also():
                        return
                except KafkaException:
                    time.sleep(0.5)
        raise AssertionError(f"the loop did not finish: {self.transactions} transactions")


def test_consume_transform_produce_is_exactly_once_through_kill_9(broker):
    src, dst = f"eos-a-{uuid.uuid4().hex[:6]}", f"eos-b-{uuid.uuid4().hex[:6]}"
    _create(broker.bootstrap, src, dst)
    plain = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "acks": "all"})
    for i in range(RECORDS):
        plain.produce(src, key=f"k{i % KEYS}".encode(), value=f"{i:06d}".encode())
        if i % 10_000 == 0:
            plain.poll(0)
    assert plain.flush(60) == 0

    kills = []

    def killer(stop: threading.Event) -> None:
        rng = random.Random()
        for _ in range(KILLS):
            if stop.wait(rng.uniform(0.5, 2.5)):
                return
            broker.kill()
            kills.append(loop.transactions)
            broker.start()

    stop = threading.Event()
    thread = threading.Thread(target=killer, args=(stop,), daemon=True)
    loop = Loop(broker.bootstrap, src, dst, f"eos-{uuid.uuid4().hex[:6]}")
    thread.start()
    try:
        # Runs until all of A is processed and every kill happened (a kill after the
        # end would test nothing).
        loop.run(RECORDS, time.monotonic() + DEADLINE_S, also=lambda: len(kills) == KILLS)
    finally:
        stop.set()
        thread.join(60)
    assert len(kills) == KILLS, "the broker was killed three times"
    assert kills[-1] < loop.transactions, f"kills at transactions {kills}: all while the loop ran"
    assert loop.aborted_on_purpose >= 5

    committed = _read(broker.bootstrap, dst, "read_committed", RECORDS)
    values = [v for _, v in committed]
    assert len(values) == RECORDS, f"{len(values)} records in B, {len(set(values))} distinct"
    assert set(values) == {f"out-{i:06d}".encode() for i in range(RECORDS)}
    per_key = defaultdict(list)
    for k, v in committed:
        per_key[k].append(int(v[4:]))
    for k, seq in per_key.items():
        assert seq == sorted(seq), f"key {k!r} out of order"

    everything = _read(broker.bootstrap, dst, "read_uncommitted", RECORDS + 1)
    assert len(everything) > RECORDS, "the aborted transactions' records are in the log"
    print(f"transactions={loop.transactions} aborted={loop.aborted_on_purpose} "
          f"recoveries={loop.recoveries} kills_at={kills} uncommitted={len(everything)}")
