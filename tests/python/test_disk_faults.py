"""Disk faults: a write that fails (disk full, real or injected), an fsync that fails,
and a byte that rots in a sealed segment.

The promise under test: a failed write is answered with KAFKA_STORAGE_ERROR (56), the
broker stays up and keeps serving reads, nothing already stored changes and no torn
bytes are left in a segment, and writes resume once space is free. A failed fsync
fences the partition (no more writes until a restart, the high watermark stays put, so
no consumer sees what may not be on disk). Rotten bytes are never served.

Faults are injected through the test-only HERALD_FAULT_INJECT_FILE switch (see
crates/herald-log/src/fault.rs); the real disk-full test mounts a 20 MiB tmpfs and
is skipped where mounting is not permitted.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from conftest import Broker
from herald_support import create_topic, read_partitions, unique, wait_until, watermarks

pytestmark = pytest.mark.timeout(180)

FAULT_ENV = "HERALD_FAULT_INJECT_FILE"


def segment_batches(path: Path) -> list[tuple[int, int, int]]:
    """(position, base offset, total bytes) of every batch in a segment file, asserting
    that whole batches tile the file exactly: no torn bytes at its end."""
    data = path.read_bytes()
    batches, position = [], 0
    while position < len(data):
        assert len(data) - position >= 61, f"{path}: {len(data) - position} torn bytes at {position}"
        base_offset, length = struct.unpack_from(">qi", data, position)
        total = 12 + length
        assert position + total <= len(data), f"{path}: torn batch at {position}"
        batches.append((position, base_offset, total))
        position += total
    return batches


def check_segments_whole(data_dir: Path, topic: str, partition: int = 0) -> int:
    """Check every segment of a partition is whole batches; returns the batch count."""
    logs = sorted((data_dir / "log" / f"{topic}-{partition}").glob("*.log"))
    assert logs, f"no segments for {topic}-{partition} under {data_dir}"
    return sum(len(segment_batches(p)) for p in logs)


def strict_producer(bootstrap: str) -> Producer:
    """No retries, so a storage error reaches the delivery report as the broker sent it."""
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0,
                     "enable.idempotence": False, "linger.ms": 0, "message.timeout.ms": 20000})


def produce_one(producer: Producer, topic: str, value: bytes):
    """Produce one record and wait for its delivery report: (error or None, offset)."""
    result = {}

    def on_delivery(err, msg):
        result["err"], result["offset"] = err, msg.offset()

    producer.produce(topic, value=value, partition=0, on_delivery=on_delivery)
    producer.flush(30)
    assert "err" in result, "no delivery report within 30s"
    return result["err"], result["offset"]


def produce_ok(producer: Producer, topic: str, values: list[bytes]) -> list[int]:
    offsets = []
    for v in values:
        err, offset = produce_one(producer, topic, v)
        assert err is None, f"produce failed: {err}"
        offsets.append(offset)
    return offsets


def values_of(bootstrap: str, topic: str) -> list[bytes]:
    return [r.value for r in read_partitions(bootstrap, topic, 1, timeout_s=30)]


def test_a_failed_write_is_a_storage_error_leaves_no_torn_bytes_and_writes_resume(broker_factory, tmp_path):
    control = tmp_path / "fault-inject"
    broker = broker_factory(extra_env={FAULT_ENV: str(control)})
    topic = unique("write-fault")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = strict_producer(broker.bootstrap)
    before = [f"before-{i}".encode() * 3 for i in range(50)]
    assert produce_ok(producer, topic, before) == list(range(50))
    batches_before = check_segments_whole(broker.data_dir, topic)

    # The disk "fills" 20 bytes into the next write.
    control.write_text("write_fail_after_bytes:20\n")
    for i in range(3):
        err, _ = produce_one(producer, topic, b"doomed-%d" % i)
        assert err is not None and err.code() == KafkaError.KAFKA_STORAGE_ERROR, f"expected KAFKA_STORAGE_ERROR, got {err}"
    broker.assert_running()
    # Reads go on; nothing stored changed; the 20 bytes that landed were cut off again.
    assert values_of(broker.bootstrap, topic) == before
    assert check_segments_whole(broker.data_dir, topic) == batches_before
    assert watermarks(broker.bootstrap, topic, 1)[0][1] == 50

    # Space is back: writes resume at the next offset.
    control.write_text("")
    after = [f"after-{i}".encode() for i in range(20)]
    assert produce_ok(producer, topic, after) == list(range(50, 70))
    assert values_of(broker.bootstrap, topic) == before + after

    broker.kill()
    broker.start()
    assert values_of(broker.bootstrap, topic) == before + after
    assert "truncating a torn" not in broker.stderr_tail(400)


@pytest.mark.parametrize("flush", ["always", "interval:50"])
def test_a_failed_fsync_fences_the_partition_and_hides_what_it_did_not_cover(broker_factory, tmp_path, flush):
    control = tmp_path / "fault-inject"
    broker = broker_factory(extra_args=["--flush", flush], extra_env={FAULT_ENV: str(control)})
    topic = unique("fsync-fault")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = strict_producer(broker.bootstrap)
    durable = [f"durable-{i}".encode() for i in range(30)]
    produce_ok(producer, topic, durable)
    if flush != "always":
        time.sleep(0.3)  # let an interval fsync cover them

    control.write_text("fsync_fail\n")
    err, _ = produce_one(producer, topic, b"not-durable")
    if flush == "always":
        # acks=all waits for the fsync, which failed: the client is told, and the record,
        # though written to the page cache, is never shown to a consumer.
        assert err is not None and err.code() == KafkaError.KAFKA_STORAGE_ERROR, err
        time.sleep(0.5)
        assert watermarks(broker.bootstrap, topic, 1)[0][1] == 30
        assert values_of(broker.bootstrap, topic) == durable
    else:
        # `interval` acknowledges on the write; the failing fsync comes later.
        assert err is None, err
        wait_until(lambda: "fsync failed" in broker.stderr_tail(200), 10, "the interval fsync to fail")

    # Fenced: even with the fault gone, writes are refused until a restart, while reads go on.
    control.write_text("")
    err, _ = produce_one(producer, topic, b"refused")
    assert err is not None and err.code() == KafkaError.KAFKA_STORAGE_ERROR, err
    broker.assert_running()
    assert values_of(broker.bootstrap, topic)[:30] == durable

    broker.kill()
    broker.start()
    produce_ok(producer, topic, [b"after-restart"])
    got = values_of(broker.bootstrap, topic)
    assert got[:30] == durable and got[-1] == b"after-restart"


@pytest.mark.parametrize("where", ["middle", "tail"])
def test_a_rotten_byte_in_a_sealed_segment_is_never_served(broker_factory, where):
    """In the middle of a segment only a read can find it; in its tail, start-up finds
    it too, and reports it without refusing to start."""
    broker = broker_factory(extra_args=["--segment-bytes", "16384"])
    topic = unique("rot")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = strict_producer(broker.bootstrap)
    values = [f"record-{i:05d}-".encode() + b"x" * 60 for i in range(600)]
    produce_ok(producer, topic, values)
    assert broker.stop() == 0

    segments = sorted((broker.data_dir / "log" / f"{topic}-0").glob("*.log"))
    assert len(segments) >= 3, "expected several sealed segments"
    first = segments[0]
    batches = segment_batches(first)
    assert len(batches) > 10
    # Batch 3 is far from the segment's tail, which is all that a clean start re-checks.
    position, bad_offset, total = batches[3 if where == "middle" else -1]
    data = bytearray(first.read_bytes())
    # A byte of the last record's value ('x' -> 'X'): a client that does not check CRCs
    # (librdkafka's default) would decode it happily and hand out the wrong bytes.
    assert data[position + total - 5] == ord("x")
    data[position + total - 5] ^= 0x20
    first.write_bytes(bytes(data))
    broker.start()
    found_at_start = "corrupt batch in a sealed segment: it will not be served" in broker.stderr_tail(400)
    assert found_at_start == (where == "tail"), broker.stderr_tail(40)

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("rot"),
                         "enable.auto.commit": False, "fetch.error.backoff.ms": 100})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got, errors = [], []
    deadline = time.monotonic() + 6
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                errors.append(msg.error())
                continue
            got.append((msg.offset(), msg.value()))
    finally:
        consumer.close()
    # Everything before the rotten batch, nothing from it or after it (the consumer
    # cannot skip what it cannot decode).
    assert got == [(i, values[i]) for i in range(bad_offset)], (
        f"got offsets {[o for o, _ in got][:5]}..{[o for o, _ in got][-5:]}, rotten batch at {bad_offset}")
    # The client is told (CORRUPT_MESSAGE, which librdkafka calls INVALID_MSG), and so is
    # the operator.
    assert errors and all(e.code() == KafkaError.INVALID_MSG for e in errors), errors[:3]
    assert "corrupt batch in a sealed segment" in broker.stderr_tail(400)

    # A reader positioned past the rotten batch gets the rest.
    after = read_from(broker.bootstrap, topic, bad_offset + 1, len(values))
    first_after = after[0][0]
    assert first_after > bad_offset
    assert after == [(i, values[i]) for i in range(first_after, len(values))]


def read_from(bootstrap: str, topic: str, offset: int, end: int) -> list[tuple[int, bytes]]:
    """Records from `offset` on until `end`, skipping none; a fetch at an offset inside
    the rotten batch still fails, so start at a later batch if needed."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("rot-after"),
                         "enable.auto.commit": False, "fetch.error.backoff.ms": 100})
    got = []
    try:
        for start in range(offset, end):
            consumer.assign([TopicPartition(topic, 0, start)])
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                got.append((msg.offset(), msg.value()))
                if msg.offset() + 1 >= end:
                    return got
                deadline = time.monotonic() + 2
            if got:
                return got
    finally:
        consumer.close()
    return got


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 20 MiB tmpfs, or a skip saying why there cannot be one."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)],
                       check=True, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        pytest.skip(f"cannot mount a 20 MiB tmpfs for a real disk-full test (needs root or "
                    f"CAP_SYS_ADMIN): {str(detail).strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=20)


def test_a_full_disk_is_a_storage_error_and_writes_resume_when_space_is_freed(small_tmpfs, tmp_path):
    broker = Broker(data_dir=small_tmpfs / "data", log_path=tmp_path / "tmpfs-broker.log")
    broker.start()
    try:
        topic = unique("full")
        create_topic(broker.bootstrap, topic, partitions=1)
        producer = strict_producer(broker.bootstrap)
        produce_ok(producer, topic, [b"first"])
        # Leave about 1 MiB free, then fill it with 40 KiB records until the disk is full.
        stat = os.statvfs(small_tmpfs)
        filler = small_tmpfs / "filler"
        filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - (1 << 20)))
        acked = [b"first"]
        storage_error = None
        for i in range(200):
            value = f"fill-{i:04d}-".encode() + bytes([65 + i % 26]) * 40_000
            err, offset = produce_one(producer, topic, value)
            if err is not None:
                storage_error = err
                break
            assert offset == len(acked)
            acked.append(value)
        assert storage_error is not None, "the disk never filled up"
        assert storage_error.code() == KafkaError.KAFKA_STORAGE_ERROR, storage_error
        broker.assert_running()
        # Full, but still serving; nothing stored is damaged; no torn bytes on disk.
        assert values_of(broker.bootstrap, topic) == acked
        assert check_segments_whole(broker.data_dir, topic) == len(acked)
        err, _ = produce_one(producer, topic, b"y" * 40_000)
        assert err is not None and err.code() == KafkaError.KAFKA_STORAGE_ERROR, err

        filler.unlink()
        more = [f"after-{i}".encode() * 100 for i in range(20)]
        assert produce_ok(producer, topic, more) == list(range(len(acked), len(acked) + 20))
        broker.kill()
        broker.start()
        assert values_of(broker.bootstrap, topic) == acked + more
        print(f"disk full after {len(acked)} records; {len(more)} more after freeing space")
    finally:
        broker.stop()
