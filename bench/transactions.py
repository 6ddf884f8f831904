#!/usr/bin/env python3
"""Transactions' cost, measured with confluent-kafka (librdkafka) against a fresh
release `herald serve` (flush = always): in the same run,

  1. idempotent produce, acks=all, COUNT records of SIZE bytes to one topic;
  2. transactional produce of the same, in transactions of TXN_RECORDS records
     (begin, produce, commit; each commit waits for its markers to be durable);
  3. consuming the transactional topic with isolation.level=read_uncommitted and then
     read_committed (the client drops aborted records and markers; none here).

Prints a Markdown table and one JSON line. Bounded: every phase has a deadline.

    .venv/bin/python bench/transactions.py                   # builds herald --release
    HERALD_BIN=target/release/herald COUNT=500000 .venv/bin/python bench/transactions.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
COUNT = int(os.environ.get("COUNT", "200000"))
SIZE = int(os.environ.get("SIZE", "1024"))
TXN_RECORDS = int(os.environ.get("TXN_RECORDS", "1000"))
PARTITIONS = int(os.environ.get("PARTITIONS", "1"))
PHASE_TIMEOUT_S = float(os.environ.get("PHASE_TIMEOUT_S", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_herald(data_dir: str) -> tuple[subprocess.Popen, str]:
    binary = os.environ.get("HERALD_BIN")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "-p", "herald", "--quiet"], cwd=REPO, check=True)
        binary = str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "herald")
    port = free_port()
    args = [binary, "serve", "--data-dir", data_dir, "--kafka-listen", f"127.0.0.1:{port}",
            "--http-listen", "off", "--amqp-listen", "off", "--registry-listen", "off",
            "--eventstore-listen", "off", "--flush", "always"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("herald did not start")


def produce(bootstrap: str, topic: str, transactional: bool) -> float:
    conf = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "batch.size": 1 << 20, "queue.buffering.max.messages": 1_000_000}
    if transactional:
        conf["transactional.id"] = f"bench-{time.time_ns()}"
    p = Producer(conf)
    value = b"x" * SIZE
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    if transactional:
        p.init_transactions(30)
    start = time.monotonic()
    sent = 0
    while sent < COUNT:
        if time.monotonic() > deadline:
            sys.exit("produce timed out")
        n = min(TXN_RECORDS, COUNT - sent)
        if transactional:
            p.begin_transaction()
        for i in range(n):
            while True:
                try:
                    p.produce(topic, value=value, key=str((sent + i) % 1000).encode())
                    break
                except BufferError:
                    p.poll(0.01)
        if transactional:
            p.commit_transaction(60)
        else:
            p.poll(0)
        sent += n
    if p.flush(PHASE_TIMEOUT_S) != 0:
        sys.exit("records left unsent")
    return COUNT / (time.monotonic() - start)


def consume(bootstrap: str, topic: str, isolation: str, expect: int) -> float:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time_ns()}",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    start = None
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while got < expect:
        if time.monotonic() > deadline:
            sys.exit(f"consume timed out at {got} of {expect}")
        msgs = c.consume(10_000, 1.0)
        if msgs and start is None:
            start = time.monotonic()
        got += sum(1 for m in msgs if not m.error())
    rate = got / (time.monotonic() - (start or time.monotonic()))
    c.close()
    return rate


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="herald-bench-txn-")
    proc, bootstrap = start_herald(data_dir)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in ("plain", "txn")]).values():
            f.result(30)
        load = os.getloadavg()[0]
        idempotent = produce(bootstrap, "plain", transactional=False)
        transactional = produce(bootstrap, "txn", transactional=True)
        uncommitted = consume(bootstrap, "txn", "read_uncommitted", COUNT)
        committed = consume(bootstrap, "txn", "read_committed", COUNT)
        result = {
            "count": COUNT, "size": SIZE, "txn_records": TXN_RECORDS, "partitions": PARTITIONS,
            "idempotent_produce_per_s": round(idempotent), "transactional_produce_per_s": round(transactional),
            "read_uncommitted_per_s": round(uncommitted), "read_committed_per_s": round(committed),
            "load_avg_1m_start": load, "load_avg_1m_end": os.getloadavg()[0],
        }
        print("| case | records/s |\n|---|---|")
        print(f"| idempotent produce, acks=all | {idempotent:,.0f} |")
        print(f"| transactional produce, {TXN_RECORDS:,} records per transaction | {transactional:,.0f} |")
        print(f"| consume read_uncommitted | {uncommitted:,.0f} |")
        print(f"| consume read_committed | {committed:,.0f} |")
        print(json.dumps(result))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
