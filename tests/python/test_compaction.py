"""Log compaction with a real client: a compacted topic ends up with exactly the
latest value per key (tombstones kept within delete.retention.ms) at the offsets
they were produced at, a consumer group reads it, a keyless record is refused with
INVALID_RECORD, and the compacted state survives a restart.

The broker checks every 200 ms and segments are 4 KiB, so cleaning takes seconds.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer

from herald_support import create_topic, produce_and_confirm, read_partitions, unique, wait_until

pytestmark = pytest.mark.timeout(180)

INVALID_RECORD = 87
CLEANER_ENV = {"HERALD_COMPACTION_CHECK_INTERVAL_MS": "200"}
COMPACT_CONFIG = {"cleanup.policy": "compact", "segment.bytes": "4096", "min.cleanable.dirty.ratio": "0.1"}


def _producer(bootstrap: str) -> Producer:
    # One record per batch keeps every batch far below segment.bytes.
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                     "batch.num.messages": 1})


def _history(keys: int = 5, updates: int = 600):
    """Many updates to a few keys, two of them deleted along the way, then unique
    filler keys so that every update lands in a sealed (cleanable) segment."""
    messages = []
    for i in range(updates):
        messages.append((f"account-{i % keys}".encode(), f"balance-{i}".encode()))
        if i == updates // 2:
            messages.append((b"account-3", None))
    messages.append((b"account-4", None))
    messages += [(f"filler-{i}".encode(), b"x" * 20) for i in range(80)]
    return messages


def _latest(messages) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    for key, value in messages:
        latest[key] = value
    return latest


def _compacted_view(bootstrap: str, topic: str):
    records = read_partitions(bootstrap, topic, 1)
    return [(r.offset, r.key, r.value) for r in records]


def test_compacted_topic_keeps_latest_value_per_key(broker_factory):
    broker = broker_factory(extra_env=CLEANER_ENV)
    topic = unique("balances")
    create_topic(broker.bootstrap, topic, config=COMPACT_CONFIG)
    messages = _history()
    delivered = produce_and_confirm(_producer(broker.bootstrap), topic, messages)
    offset_of = {(d.key, d.value): d.offset for d in delivered}
    expected = _latest(messages)
    expected_offsets = {k: offset_of[(k, v)] for k, v in expected.items()}

    def compacted():
        view = _compacted_view(broker.bootstrap, topic)
        return view if len(view) == len(expected) else None

    view = wait_until(compacted, 60, lambda: f"{topic} compacted to {len(expected)} records; "
                      f"now {len(_compacted_view(broker.bootstrap, topic))}")
    # Exactly the latest value of every key, tombstones included, at its original offset.
    assert {key: value for _, key, value in view} == expected
    assert {key: offset for offset, key, _ in view} == expected_offsets
    offsets = [offset for offset, _, _ in view]
    assert offsets == sorted(set(offsets)), "offsets must increase"
    assert offsets[-1] == len(messages) - 1, "the log end offset is unchanged"
    assert any(b - a > 1 for a, b in zip(offsets, offsets[1:])), "compaction leaves gaps"
    assert expected[b"account-4"] is None and expected[b"account-3"] is not None

    # A consumer group reads the compacted topic from the start and commits.
    group = unique("cg")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    got = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(got) < len(expected) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert not m.error(), m.error()
            got.append((m.offset(), m.key(), m.value()))
        c.commit(asynchronous=False)
        committed = c.committed(c.assignment(), timeout=10)
    finally:
        c.close()
    assert got == view
    assert committed[0].offset == len(messages)

    # A restart keeps the compacted state (and the cleaner finds nothing to undo).
    assert broker.stop() == 0
    broker.start()
    assert _compacted_view(broker.bootstrap, topic) == view


def test_record_without_key_is_refused_on_compacted_topic(broker_factory):
    broker = broker_factory(extra_env=CLEANER_ENV)
    topic = unique("keyed")
    create_topic(broker.bootstrap, topic, config=COMPACT_CONFIG)
    producer = _producer(broker.bootstrap)
    errors = []
    producer.produce(topic, value=b"no key", on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].code() == INVALID_RECORD, errors[0]
    # (librdkafka shows its own text for the code, not the broker's message.)
    # Keyed records are fine, and nothing of the refused one was stored.
    [d] = produce_and_confirm(producer, topic, [(b"k", b"v")])
    assert d.offset == 0
