"""Small helpers shared by the integration tests: names, waiting, and thin
wrappers around confluent-kafka for producing and reading back whole partitions.

Everything here has a deadline: a broker that stops answering must fail a test,
never hang it.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


def free_port(avoid: tuple[int, ...] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and not one of `avoid`
    (the kernel may hand out a port it just gave and got back: a broker's Kafka and HTTP
    ports were once the same and it could not start)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate, timeout_s: float, message, interval_s: float = 0.1):
    """Poll `predicate` until it returns a truthy value; fail with `message` (a string,
    or a function making one, called only then) on timeout."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported if we time out
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout_s}s: {text}{detail}")
        time.sleep(interval_s)


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap: str, name: str, partitions: int = 1, config: dict | None = None) -> None:
    """Create a topic through the Kafka admin API and wait until it has leaders."""
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=15,
    )
    futures[name].result(timeout=20)

    def ready():
        md = client.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        return (
            t is not None
            and t.error is None
            and len(t.partitions) == partitions
            and all(p.leader == 1 for p in t.partitions.values())
        )

    wait_until(ready, 15, f"topic {name} visible with {partitions} partitions led by broker 1")


@dataclass
class Delivered:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list | None = None
    timestamp: tuple = field(default=(0, -1))


def produce_and_confirm(producer: Producer, topic: str, messages, timeout_s: float = 60.0,
                        partition: int | None = None) -> list[Delivered]:
    """Produce (key, value) or (key, value, headers) tuples and wait for every
    delivery report. Fails the test if any delivery failed."""
    delivered: list[Delivered] = []
    errors: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(f"{err} (key={msg.key()!r})")
        else:
            delivered.append(Delivered(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value()))

    count = 0
    for m in messages:
        key, value = m[0], m[1]
        kwargs = {"key": key, "value": value, "on_delivery": on_delivery}
        if len(m) > 2 and m[2] is not None:
            kwargs["headers"] = m[2]
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    remaining = producer.flush(timeout_s)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout_s}s"
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[:3]}"
    assert len(delivered) == count, f"{count} produced but {len(delivered)} delivery reports"
    return delivered


def watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("wm"), "enable.auto.commit": False})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in range(partitions)
        }
    finally:
        c.close()


def read_partitions(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0,
                    expect_total: int | None = None) -> list[Record]:
    """Read every record of `partitions` partitions of `topic` from offset 0 up to
    the current high watermark, by manual assignment (no group). Returns records
    in per-partition offset order."""
    marks = watermarks(bootstrap, topic, partitions)
    high = {p: hw for p, (_lo, hw) in marks.items()}
    if expect_total is not None:
        total = sum(high.values())
        assert total >= expect_total, f"high watermarks {high} sum to {total} < {expect_total} expected records"
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique("reader"),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    records: dict[int, list[Record]] = {p: [] for p in range(partitions)}
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        pending = {p for p in range(partitions) if high[p] > 0}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                got = {p: len(r) for p, r in records.items()}
                raise AssertionError(f"reading {topic}: timed out; got {got} records, high watermarks {high}")
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= high[msg.partition()]:
                        pending.discard(msg.partition())
                    continue
                raise KafkaException(msg.error())
            p = msg.partition()
            if msg.offset() >= high[p]:
                pending.discard(p)
                continue
            records[p].append(Record(msg.topic(), p, msg.offset(), msg.key(), msg.value(),
                                     msg.headers(), msg.timestamp()))
            if msg.offset() + 1 >= high[p]:
                pending.discard(p)
    finally:
        c.close()
    return [r for p in range(partitions) for r in records[p]]
