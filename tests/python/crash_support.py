"""The crash-safety loop shared by tests/python/test_crash.py and scripts/crash-test.sh.

One broker on a fixed data directory is killed with SIGKILL at random moments while
several idempotent producers (confluent-kafka, acks=all) write to several partitions,
a consumer tails the topic, and another consumer commits offsets synchronously. After
every restart the whole topic is read back and checked:

- every acknowledged record is at the offset its delivery report gave, byte for byte;
- every stored record decodes and its value's own checksum is right (nothing torn or
  half-written is served);
- offsets are dense from 0 to the high watermark (no holes, no duplicates), and no
  record was stored twice (the idempotent producers' retries across a crash are
  recognised as duplicates);
- every record the tailing consumer saw before the crash is still there (nothing a
  consumer saw is taken back);
- the committed offset is at least the last commit the broker acknowledged.

Values are `<producer>-<seq>-<filler>|<crc32 hex>` so a reader can tell a sound value
from garbage without knowing what was sent.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from herald_support import create_topic, read_partitions, unique, wait_until

FILLER = b"abcdefghijklmnopqrstuvwxyz0123456789"


def make_value(producer: int, seq: int) -> bytes:
    filler = (FILLER * 12)[: (seq * 37) % 400]
    body = f"{producer}-{seq}-".encode() + filler
    return body + b"|" + f"{zlib.crc32(body):08x}".encode()


def value_is_sound(value: bytes | None) -> bool:
    if not value or b"|" not in value:
        return False
    body, _, crc = value.rpartition(b"|")
    try:
        return int(crc, 16) == zlib.crc32(body)
    except ValueError:
        return False


class Load:
    """Producers, a tailing consumer and an offset committer, all running across kills."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, producers: int,
                 records_per_s: int, group: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.group = group
        self.lock = threading.Lock()
        self.acked: dict[tuple[int, int], bytes] = {}
        self.double_acks: list[str] = []
        self.failed_deliveries = 0
        self.seen: dict[tuple[int, int], bytes] = {}
        self.unsound_seen: list[str] = []
        self.committed_ack = 0  # highest commit the broker acknowledged
        self.commit_attempted = 0
        self.stop = threading.Event()
        self.errors: list[str] = []
        pause_s = producers / records_per_s
        self.threads = [threading.Thread(target=self._produce, args=(i, pause_s), daemon=True)
                        for i in range(producers)]
        self.threads.append(threading.Thread(target=self._tail, daemon=True))
        self.threads.append(threading.Thread(target=self._commit, daemon=True))
        self.producers: list[Producer] = []

    def start(self):
        for t in self.threads:
            t.start()

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def snapshot(self):
        with self.lock:
            return dict(self.acked), dict(self.seen), self.committed_ack

    def _guard(self, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - surfaced by finish()
            self.errors.append(f"{threading.current_thread().name}: {e!r}")

    def _produce(self, index: int, pause_s: float):
        self._guard(lambda: self._produce_loop(index, pause_s))

    def _produce_loop(self, index: int, pause_s: float):
        producer = Producer({
            "bootstrap.servers": self.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            "reconnect.backoff.ms": 20,
            "log_level": 2,  # the refused connections while the broker is down are expected
            "reconnect.backoff.max.ms": 200,
            "retry.backoff.ms": 50,
            "retry.backoff.max.ms": 200,
        })
        self.producers.append(producer)

        def on_delivery(err, msg):
            with self.lock:
                if err is not None:
                    self.failed_deliveries += 1
                    return
                key = (msg.partition(), msg.offset())
                old = self.acked.get(key)
                if old is not None and old != msg.value():
                    self.double_acks.append(f"{key}: {old[:30]!r} and {msg.value()[:30]!r}")
                self.acked[key] = msg.value()

        seq = 0
        while not self.stop.is_set():
            value = make_value(index, seq)
            try:
                producer.produce(self.topic, value=value, key=str(seq).encode(),
                                 partition=(seq + index) % self.partitions, on_delivery=on_delivery)
                seq += 1
            except BufferError:
                pass
            producer.poll(pause_s)

    def _tail(self):
        self._guard(self._tail_loop)

    def _tail_loop(self):
        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": unique("tail"),
            "enable.auto.commit": False,
            "reconnect.backoff.ms": 20,
            "log_level": 2,  # the refused connections while the broker is down are expected
            "reconnect.backoff.max.ms": 200,
            "fetch.wait.max.ms": 100,
        })
        c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)])
        try:
            while not self.stop.is_set():
                msg = c.poll(0.1)
                if msg is None or msg.error():
                    continue
                key = (msg.partition(), msg.offset())
                with self.lock:
                    if not value_is_sound(msg.value()):
                        self.unsound_seen.append(f"{key}: {msg.value()[:40]!r}")
                    self.seen[key] = msg.value()
        finally:
            c.close()

    def _commit(self):
        self._guard(self._commit_loop)

    def _commit_loop(self):
        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "enable.auto.commit": False,
            "reconnect.backoff.ms": 20,
            "log_level": 2,  # the refused connections while the broker is down are expected
            "reconnect.backoff.max.ms": 200,
        })
        try:
            while not self.stop.is_set():
                with self.lock:
                    self.commit_attempted += 1
                    n = self.commit_attempted
                try:
                    c.commit(offsets=[TopicPartition(self.topic, 0, n)], asynchronous=False)
                except KafkaException:
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.committed_ack = max(self.committed_ack, n)
                time.sleep(0.01)
        finally:
            c.close()

    def finish(self, timeout_s: float = 60) -> int:
        """Stop producing and wait for every outstanding delivery report."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        return sum(p.flush(timeout_s) for p in self.producers)


@dataclass
class Figures:
    cycles: int = 0
    acked: int = 0
    verified: int = 0
    stored: int = 0
    seen: int = 0
    failed_deliveries: int = 0
    committed: int = 0
    seconds: float = 0.0
    kills_at_s: list = field(default_factory=list)

    def line(self) -> str:
        return (f"crash loop: {self.cycles} kill -9 cycles in {self.seconds:.1f}s; "
                f"{self.acked} records acknowledged, every one verified at its offset after every "
                f"later crash ({self.verified} record checks), {self.stored} records stored, "
                f"{self.seen} seen by the tailing consumer (none taken back), "
                f"{self.failed_deliveries} deliveries failed (not acknowledged), "
                f"last acknowledged commit {self.committed} (never lost)")


def committed_offset(bootstrap: str, topic: str, group: str) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [tp] = probe.committed([TopicPartition(topic, 0)], timeout=15)
    finally:
        probe.close()
    if tp.error is not None:
        raise AssertionError(f"OffsetFetch failed: {tp.error}")
    return tp.offset


def verify(broker, load: Load, acked: dict, seen: dict, committed_ack: int, cycle: int) -> int:
    """Check the topic against what was acknowledged and seen before the kill; returns
    the number of records stored."""
    where = f"after kill -9 #{cycle}"
    records = read_partitions(broker.bootstrap, load.topic, load.partitions, timeout_s=90)
    stored: dict[tuple[int, int], bytes] = {}
    for p in range(load.partitions):
        offsets = [r.offset for r in records if r.partition == p]
        assert offsets == list(range(len(offsets))), (
            f"{where}: partition {p} offsets are not dense from 0: "
            f"first break near {next((i for i, o in enumerate(offsets) if o != i), None)}")
    for r in records:
        assert value_is_sound(r.value), f"{where}: unsound record at {r.partition}/{r.offset}: {r.value[:60]!r}"
        stored[(r.partition, r.offset)] = r.value
    wrong = {k: v for k, v in acked.items() if stored.get(k) != v}
    assert not wrong, (
        f"{where}: {len(wrong)} of {len(acked)} acknowledged records missing or different, e.g. "
        + "; ".join(f"{k}: acked {v[:30]!r}, stored {stored.get(k, b'<none>')[:30]!r}"
                    for k, v in sorted(wrong.items())[:5]))
    taken_back = {k: v for k, v in seen.items() if stored.get(k) != v}
    assert not taken_back, (
        f"{where}: {len(taken_back)} records a consumer had seen are gone or different, e.g. "
        f"{sorted(taken_back.items())[:3]}")
    values = [r.value for r in records]
    dupes = len(values) - len(set(values))
    assert dupes == 0, f"{where}: {dupes} records are stored twice (idempotent retries appended again)"
    committed = committed_offset(broker.bootstrap, load.topic, load.group) if committed_ack else 0
    assert committed >= committed_ack, (
        f"{where}: committed offset {committed} is below the last acknowledged commit {committed_ack}")
    return len(records)


def run_crash_loop(broker_factory, cycles: int, flush: str = "always", partitions: int = 4,
                   producers: int = 3, records_per_s: int = 1500, segment_bytes: int = 256 * 1024,
                   kill_after_s=(0.2, 1.2), seed: int | None = None, log=print) -> Figures:
    rng = random.Random(seed)
    broker = broker_factory(extra_args=["--flush", flush, "--segment-bytes", str(segment_bytes),
                                        "--default-partitions", str(partitions)])
    topic, group = unique("crashloop"), unique("crashloop-grp")
    create_topic(broker.bootstrap, topic, partitions=partitions)
    load = Load(broker.bootstrap, topic, partitions, producers, records_per_s, group)
    figures = Figures()
    started = time.monotonic()
    load.start()
    try:
        for cycle in range(1, cycles + 1):
            before = load.acked_count()
            wait_until(lambda: load.acked_count() > before or load.errors, 60,
                       lambda: f"cycle {cycle}: no record acknowledged after the restart; {load.errors}")
            assert not load.errors, load.errors
            time.sleep(rng.uniform(*kill_after_s))
            broker.kill()
            acked, seen, committed_ack = load.snapshot()
            broker.start()
            stored = verify(broker, load, acked, seen, committed_ack, cycle)
            figures.cycles = cycle
            figures.acked = len(acked)
            figures.verified += len(acked)
            figures.stored = stored
            figures.seen = len(seen)
            figures.committed = committed_ack
            if cycle % 10 == 0 or cycle == cycles:
                log(f"  cycle {cycle}/{cycles}: {len(acked)} acknowledged, {stored} stored, "
                    f"{time.monotonic() - started:.0f}s")
    finally:
        remaining = load.finish()
    assert remaining == 0, f"{remaining} records neither delivered nor failed at the end"
    assert not load.errors, load.errors
    with load.lock:
        assert not load.double_acks, f"one offset acknowledged for two records: {load.double_acks[:3]}"
        assert not load.unsound_seen, f"a consumer was served unsound records: {load.unsound_seen[:3]}"
        figures.failed_deliveries = load.failed_deliveries
    # A last check covers the records acknowledged after the final restart.
    acked, seen, committed_ack = load.snapshot()
    figures.stored = verify(broker, load, acked, seen, committed_ack, cycles)
    figures.acked = len(acked)
    figures.verified += len(acked)
    figures.seconds = time.monotonic() - started
    return figures
