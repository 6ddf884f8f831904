"""One consumer-group member for test_rebalance.py, run as its own process so the
test can SIGKILL it (a crashed member that never sends LeaveGroup).

usage: rebalance_worker.py BOOTSTRAP TOPIC GROUP NAME [PROCESS_MS]

PROCESS_MS (default 0) is how long "processing" one record takes; a slow member
is still busy when the test kills it, so it dies with uncommitted work.

Prints one JSON object per line on stdout, flushed at once:
  {"ev": "assign", "gen": G, "partitions": [...]}   on every assignment
  {"ev": "revoke", "gen": G, "partitions": [...]}
  {"ev": "msg", "gen": G, "p": P, "o": OFFSET, "v": VALUE}  after "processing" a record
  {"ev": "error", "error": "..."}
  {"ev": "closed"}                                   after a clean close (SIGTERM)

At-least-once: a record's offset is stored for the next auto-commit only after its
line was written, so a kill can duplicate records but never lose one. Offsets are
also committed when partitions are revoked, so a clean hand-over duplicates nothing.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException

bootstrap, topic, group, name = sys.argv[1:5]
process_s = (float(sys.argv[5]) if len(sys.argv) > 5 else 0.0) / 1000
stopping = False
generation = 0


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def on_sigterm(_signum, _frame):
    global stopping
    stopping = True


def on_assign(consumer, partitions):
    global generation
    generation += 1
    emit(ev="assign", gen=generation, partitions=sorted(p.partition for p in partitions))


def on_revoke(consumer, partitions):
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as e:
        if e.args[0].code() != KafkaError._NO_OFFSET:
            emit(ev="error", error=f"commit on revoke: {e}")
    emit(ev="revoke", gen=generation, partitions=sorted(p.partition for p in partitions))


signal.signal(signal.SIGTERM, on_sigterm)
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "client.id": name,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": True,
    "auto.commit.interval.ms": 500,
    "enable.auto.offset.store": False,
    "partition.assignment.strategy": "range",
})
consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
while not stopping:
    msg = consumer.poll(0.2)
    if msg is None:
        continue
    if msg.error():
        emit(ev="error", error=str(msg.error()))
        continue
    if process_s:
        time.sleep(process_s)
    emit(ev="msg", gen=generation, p=msg.partition(), o=msg.offset(), v=msg.value().decode())
    consumer.store_offsets(msg)
consumer.close()
emit(ev="closed")
