"""A consumer that dies (kill -9, no LeaveGroup) must not stall its group for the
rebalance timeout (300 s with kafka-python's and librdkafka's default
max.poll.interval.ms): the broker removes it once its session expires, in every
group state, so a new member is assigned within the dead one's session timeout plus
a few seconds. This is the seeds' "stop the consumer, run it again" flow.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from herald_support import create_topic, unique

SESSION_TIMEOUT_MS = 6_000
# Session timeout, the broker's once-a-second check, the client's own rejoin and poll
# pacing: well under the 300 s the group used to wait.
ASSIGNED_WITHIN_S = SESSION_TIMEOUT_MS / 1000 + 15

MEMBER = textwrap.dedent(
    """
    import sys
    from kafka import KafkaConsumer
    bootstrap, topic, group = sys.argv[1:4]
    consumer = KafkaConsumer(
        topic, group_id=group, bootstrap_servers=bootstrap,
        session_timeout_ms=%d, heartbeat_interval_ms=1000, auto_offset_reset="earliest",
    )
    while True:
        consumer.poll(timeout_ms=200)
        if consumer.assignment():
            print("assigned", flush=True)
            break
    while True:
        consumer.poll(timeout_ms=200)
    """
    % SESSION_TIMEOUT_MS
)


def start_member(bootstrap: str, topic: str, group: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", MEMBER, bootstrap, topic, group],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "assigned", f"the first member was never assigned: {line!r}"
    return proc


def kafka_python_assigned(bootstrap: str, topic: str, group: str) -> float:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, group_id=group, bootstrap_servers=bootstrap,
        session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=1000,
        auto_offset_reset="earliest",
    )
    start = time.monotonic()
    try:
        while time.monotonic() - start < 120:
            consumer.poll(timeout_ms=200)
            if consumer.assignment():
                return time.monotonic() - start
        pytest.fail("the new kafka-python member was not assigned within 120 s")
    finally:
        consumer.close()


def confluent_assigned(bootstrap: str, topic: str, group: str) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group,
        "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 1000,
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic])
    start = time.monotonic()
    try:
        while time.monotonic() - start < 120:
            consumer.poll(0.2)
            if consumer.assignment():
                return time.monotonic() - start
        pytest.fail("the new confluent-kafka member was not assigned within 120 s")
    finally:
        consumer.close()


@pytest.mark.parametrize("successor", [kafka_python_assigned, confluent_assigned],
                         ids=["kafka-python", "confluent-kafka"])
def test_a_killed_member_does_not_stall_the_next_one(broker, successor):
    topic, group = unique("orders"), unique("order-processor")
    create_topic(broker.bootstrap, topic, partitions=3)
    dead = start_member(broker.bootstrap, topic, group)
    dead.kill()
    dead.wait(timeout=10)
    took = successor(broker.bootstrap, topic, group)
    print(f"new member assigned {took:.1f}s after the old one was killed")
    assert took < ASSIGNED_WITHIN_S, (
        f"the new member waited {took:.1f}s for the dead one (session timeout "
        f"{SESSION_TIMEOUT_MS} ms)"
    )
