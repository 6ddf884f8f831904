"""Consumer-group rebalancing: members joining, leaving cleanly, and dying.

Three member processes share a 6-partition topic. 10,000 keyed events are
produced in three phases; between them one member closes (LeaveGroup) and later
another is SIGKILLed (its session must time out). The survivors must take over
every partition, every event must be processed at least once, duplicates may
only come from the partitions of the killed member, and each member must see
each partition's records in log order (so per-key order is kept).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Producer

from herald_support import create_topic, produce_and_confirm, read_partitions, unique, wait_until

WORKER = Path(__file__).with_name("rebalance_worker.py")
PARTITIONS = 6
KEYS = 100
SEQS = 100  # per key: 10,000 events
# Per-record processing time in the members: slow enough that the killed member
# still has processed-but-uncommitted records, so redelivery is exercised.
PROCESS_MS = 2


class Worker:
    """A rebalance_worker.py process and everything it has printed so far."""

    def __init__(self, bootstrap: str, topic: str, group: str, name: str, log_dir: Path):
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), bootstrap, topic, group, name, str(PROCESS_MS)],
            stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, text=True,
        )
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"ev": "garbage", "line": line}
            with self._lock:
                self.events.append(event)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def assignment(self) -> set[int]:
        current: set[int] = set()
        for e in self.snapshot():
            if e["ev"] == "assign":
                current = set(e["partitions"])
            elif e["ev"] == "revoke":
                current = set()
        return current

    def messages(self) -> list[dict]:
        return [e for e in self.snapshot() if e["ev"] == "msg"]

    def errors(self) -> list[dict]:
        return [e for e in self.snapshot() if e["ev"] in ("error", "garbage")]

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM: the worker closes its consumer, which leaves the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def stderr_tail(self) -> str:
        self._stderr.flush()
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-20:])


def _events(start_seq: int, end_seq: int):
    # Interleave keys so every partition receives a steady mix of keys.
    for seq in range(start_seq, end_seq):
        for k in range(KEYS):
            key = f"k{k:03d}"
            yield key.encode(), f"{key}:{seq}".encode()


@pytest.mark.timeout(300)
def test_group_members_leave_and_die_without_losing_events(broker, tmp_path):
    topic, group = unique("rebalance"), unique("rebalance-grp")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)
    workers = [Worker(broker.bootstrap, topic, group, f"w{i}", tmp_path) for i in range(3)]
    a, b, c = workers

    def describe():
        return {w.name: (sorted(w.assignment()), len(w.messages()), w.proc.poll(), w.stderr_tail())
                for w in workers}

    def consumed_values() -> set[str]:
        return {m["v"] for w in workers for m in w.messages()}

    try:
        def evenly_assigned(members, each):
            sets = [m.assignment() for m in members]
            return all(len(s) == each for s in sets) and set().union(*sets) == set(range(PARTITIONS))

        wait_until(lambda: evenly_assigned(workers, 2), 60, lambda: f"3 members with 2 partitions each {describe()}")
        assert not any(w.errors() for w in workers), describe()

        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                             "acks": "all", "linger.ms": 5})

        # Phase 1: all three members consume.
        produce_and_confirm(producer, topic, _events(0, 34))
        wait_until(lambda: len(consumed_values()) == 34 * KEYS, 60, lambda: f"phase 1 fully consumed {describe()}")
        assert all(w.messages() for w in workers), "every member should have processed records"

        # Phase 2: `a` leaves cleanly; b and c split its partitions.
        a.stop()
        assert a.proc.returncode == 0, a.stderr_tail()
        assert a.snapshot()[-1]["ev"] == "closed"
        wait_until(lambda: evenly_assigned([b, c], 3), 60, lambda: f"after a leaves: b and c with 3 partitions each {describe()}")
        produce_and_confirm(producer, topic, _events(34, 67))
        wait_until(lambda: len(consumed_values()) == 67 * KEYS, 60, lambda: f"phase 2 fully consumed {describe()}")

        # Phase 3: `b` dies mid-stream without leaving; c must take everything.
        b_before = len(b.messages())
        produce_and_confirm(producer, topic, _events(67, SEQS))
        wait_until(lambda: len(b.messages()) >= b_before + 300, 30, lambda: f"b processing phase 3 {describe()}")
        b_partitions_at_kill = b.assignment()
        b.kill()
        assert b_partitions_at_kill, "b owned partitions when it was killed"
        wait_until(lambda: c.assignment() == set(range(PARTITIONS)), 60,
                   lambda: f"c owns all partitions after b's session timed out {describe()}")
        wait_until(lambda: len(consumed_values()) == KEYS * SEQS, 90, lambda: f"all 10,000 events consumed {describe()}")
        c.stop()
        assert c.proc.returncode == 0, c.stderr_tail()
    finally:
        for w in workers:
            w.kill()

    errors = {w.name: w.errors() for w in workers if w.errors()}
    assert not errors, f"workers reported errors: {errors}"

    # The log itself: exactly the 10,000 events, each key in one partition, in order.
    log = read_partitions(broker.bootstrap, topic, PARTITIONS, expect_total=KEYS * SEQS)
    assert len(log) == KEYS * SEQS, "idempotent producer: no duplicates or losses in the log"
    at_offset = {(r.partition, r.offset): r.value.decode() for r in log}
    partition_of_key: dict[str, int] = {}
    last_seq: dict[str, int] = {}
    for r in log:
        key, seq = r.value.decode().split(":")
        assert partition_of_key.setdefault(key, r.partition) == r.partition
        assert int(seq) == last_seq.get(key, -1) + 1, f"log order broken for {key} at {r.partition}/{r.offset}"
        last_seq[key] = int(seq)

    # Nothing missing: at-least-once across a clean leave and a crash.
    expected = {f"k{k:03d}:{s}" for k in range(KEYS) for s in range(SEQS)}
    assert consumed_values() == expected

    times_processed = Counter(m["v"] for w in workers for m in w.messages())
    duplicated = {v for v, n in times_processed.items() if n > 1}
    print(f"processed {sum(times_processed.values())} records for {len(times_processed)} events; "
          f"{len(duplicated)} redelivered; killed member owned {sorted(b_partitions_at_kill)}; "
          f"per member: { {w.name: len(w.messages()) for w in workers} }")
    dup_partitions = {partition_of_key[v.split(":")[0]] for v in duplicated}
    assert dup_partitions <= b_partitions_at_kill, (
        f"duplicates in partitions {sorted(dup_partitions - b_partitions_at_kill)} that the killed member "
        f"did not own ({len(duplicated)} duplicated events); clean hand-overs must not re-deliver")

    for w in workers:
        # Within one assignment a member reads each partition sequentially, exactly
        # what the log holds.
        runs = defaultdict(list)
        for m in w.messages():
            runs[(m["gen"], m["p"])].append(m)
        for (gen, p), msgs in runs.items():
            offsets = [m["o"] for m in msgs]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), (
                f"{w.name} gen {gen} partition {p}: offsets not consecutive: {offsets[:20]}...")
            for m in msgs:
                assert at_offset[(p, m["o"])] == m["v"], f"{w.name}: value at {p}/{m['o']} differs from the log"
        # Per-key order as the member processed it, ignoring redelivered duplicates.
        last_seq_seen: dict[str, int] = {}
        for m in w.messages():
            if m["v"] in duplicated:
                continue
            key, seq = m["v"].split(":")
            assert int(seq) > last_seq_seen.get(key, -1), (
                f"{w.name}: {key} went from {last_seq_seen[key]} back to {seq}")
            last_seq_seen[key] = int(seq)
