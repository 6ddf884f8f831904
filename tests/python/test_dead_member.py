"""A consumer that dies (kill -9, no LeaveGroup) must not stall its group for the
rebalance timeout (300 s with kafka-python's and librdkafka's default
max.poll.interval.ms): the broker removes it once its session expires, in every
group state, so a new member is assigned within the dead one's session timeout plus
a few seconds. This is the seeds' "stop the consumer, run it again" flow.

The same with KafkaJS (tests/js/dead_member.js), for a member that is SIGKILLed,
SIGSTOPped (its connection stays open) or ends with process.exit() without
disconnecting; and with three members sharing six partitions, one killed mid-stream:
the survivors take over in time and the group processes every record exactly once,
except the one record the killed member processed without committing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from herald_support import create_topic, produce_and_confirm, unique, wait_until

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


# ---------------------------------------------------------------------------------------
# Shared by the tests below: JSON-line child processes, the HTTP view of a group.

JS_DIR = Path(__file__).resolve().parents[1] / "js"
# Within this of the death, the next member must be assigned and have its records. The
# rebalance timeouts the members send are far larger (120 s for KafkaJS, the 300 s
# default max.poll.interval.ms for kafka-python and librdkafka): a broker that waited
# for the dead member's rebalance timeout fails this bound.
TAKEOVER_WITHIN_S = SESSION_TIMEOUT_MS / 1000 + 10
JS_REBALANCE_TIMEOUT_MS = 120_000


class JsonLines:
    """A child process printing one JSON object per line; keeps every line with the
    time (monotonic) it arrived. Non-JSON lines are kept as {"ev": "garbage"}."""

    def __init__(self, argv: list[str], name: str, log_dir: Path, **popen):
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, text=True, **popen)
        self._events: list[tuple[float, dict]] = []
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
                self._events.append((time.monotonic(), event))

    def timed(self, ev: str | None = None) -> list[tuple[float, dict]]:
        with self._lock:
            return [(t, e) for t, e in self._events if ev is None or e["ev"] == ev]

    def events(self, ev: str | None = None) -> list[dict]:
        return [e for _, e in self.timed(ev)]

    def errors(self) -> list[dict]:
        return [e for e in self.events() if e["ev"] in ("error", "crash", "garbage")]

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def terminate(self, timeout_s: float = 20) -> int:
        """SIGTERM (a clean close, with LeaveGroup) and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # also ends a SIGSTOPped process
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self._stderr.close()

    def describe(self) -> str:
        return f"{self.name}: exit {self.proc.poll()}, last events {self.events()[-5:]}, stderr:\n{self.stderr_tail()}"


def group_detail(broker, group: str) -> dict:
    response = httpx.get(f"{broker.http_url}/groups/{group}", timeout=5)
    assert response.status_code == 200, f"GET /groups/{group}: {response.status_code} {response.text}"
    return response.json()


class GroupWatcher:
    """Samples GET /groups/{id} every 100 ms in a thread: (time, state, member ids,
    client ids), so a test can tell which states the group went through."""

    def __init__(self, broker, group: str):
        self.broker, self.group = broker, group
        self.samples: list[tuple[float, str, list[str], list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                d = group_detail(self.broker, self.group)
                self.samples.append((time.monotonic(), d["state"], [m["member_id"] for m in d["members"]],
                                     [m["client_id"] for m in d["members"]]))
            except Exception:  # noqa: BLE001 - a missed sample is not a failure
                pass
            self._stop.wait(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def states(self) -> list[tuple[str, list[str]]]:
        """The distinct (state, client ids) the group went through, in order."""
        out: list[tuple[str, list[str]]] = []
        for _, state, _, clients in self.samples:
            if not out or out[-1] != (state, sorted(clients)):
                out.append((state, sorted(clients)))
        return out


def session_expired_logged(broker, member_id: str) -> bool:
    text = broker.log_path.read_text(errors="replace")
    return any("session expired" in line and member_id in line for line in text.splitlines())


def _produce_spread(broker, topic: str, partitions: int, per_partition: int, prefix: str):
    """per_partition records into each partition; returns {(partition, offset): value}."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    out = {}
    for p in range(partitions):
        delivered = produce_and_confirm(
            producer, topic, [(None, f"{prefix}-{p}-{i}".encode()) for i in range(per_partition)], partition=p)
        out.update({(d.partition, d.offset): d.value.decode() for d in delivered})
    return out


# ---------------------------------------------------------------------------------------
# KafkaJS: the member dies without a LeaveGroup (SIGKILL, SIGSTOP, process.exit), the next
# KafkaJS member gets every partition and the records produced since, within the dead
# one's sessionTimeout plus a few seconds, although both ask for a 120 s rebalanceTimeout.


class NodeMember(JsonLines):
    """A tests/js/dead_member.js process."""

    def __init__(self, broker, topic: str, group: str, name: str, log_dir: Path):
        node = shutil.which("node")
        assert node, "node is not installed"
        assert (JS_DIR / "node_modules" / "kafkajs").is_dir(), "run `npm ci` in tests/js (scripts/test.sh does)"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(HERALD_BOOTSTRAP=broker.bootstrap, TOPIC=topic, GROUP=group, NAME=name,
                   SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS), REBALANCE_TIMEOUT_MS=str(JS_REBALANCE_TIMEOUT_MS))
        super().__init__([node, "dead_member.js"], name, log_dir, cwd=JS_DIR, env=env, stdin=subprocess.PIPE)

    def values(self) -> list[str]:
        return [e["v"] for e in self.events("msg")]

    def die(self, how: str) -> None:
        """End without a LeaveGroup: SIGKILL, SIGSTOP (the connection stays open), or
        process.exit() without disconnecting (the connection closes)."""
        if how == "sigkill":
            self.proc.kill()
            self.proc.wait(timeout=10)
        elif how == "sigstop":
            self.proc.send_signal(signal.SIGSTOP)
        elif how == "exit":
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
            assert self.proc.wait(timeout=10) == 0, self.describe()
        else:
            raise ValueError(how)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("death", ["sigkill", "sigstop", "exit"])
def test_a_kafkajs_member_dying_without_leave_group_does_not_stall_the_next_one(broker, tmp_path, death):
    topic, group = unique("js-orders"), unique("js-order-processor")
    create_topic(broker.bootstrap, topic, partitions=3)
    dead = NodeMember(broker, topic, group, "js-dead", tmp_path)
    members = [dead]
    watcher = None
    try:
        joined = wait_until(lambda: [e for e in dead.events("joined") if e["partitions"] == [0, 1, 2]], 30,
                            lambda: f"the first member gets all 3 partitions; {dead.describe()}")
        dead_id = joined[-1]["memberId"]
        # It processes and commits some records first.
        before = _produce_spread(broker, topic, 3, 5, "before")
        wait_until(lambda: sorted(dead.values()) == sorted(before.values()), 30,
                   lambda: f"the first member processes the first records; {dead.describe()}")
        wait_until(lambda: group_detail(broker, group)["total_lag"] == 0, 10,
                   lambda: f"its commits are visible: {group_detail(broker, group)}")

        dead.die(death)
        died_at = time.monotonic()
        time.sleep(0.3)  # a LeaveGroup, had one been sent, would have been handled by now
        detail = group_detail(broker, group)
        assert (detail["state"], [m["member_id"] for m in detail["members"]]) == ("Stable", [dead_id]), (
            f"after {death} the broker must still list the member (no LeaveGroup was sent): {detail}")

        watcher = GroupWatcher(broker, group)
        successor = NodeMember(broker, topic, group, "js-next", tmp_path)
        members.append(successor)
        after = _produce_spread(broker, topic, 3, 5, "after")
        wait_until(lambda: sorted(successor.values()) == sorted(after.values()),
                   max(1.0, died_at + TAKEOVER_WITHIN_S - time.monotonic()),
                   lambda: (f"the new member got every record produced after the {death} within "
                            f"{TAKEOVER_WITHIN_S}s (sessionTimeout {SESSION_TIMEOUT_MS} ms, rebalanceTimeout "
                            f"{JS_REBALANCE_TIMEOUT_MS} ms); group went through {watcher.states()}; "
                            f"{successor.describe()}"))
        received = successor.timed("msg")[-1][0] - died_at
        assigned_at, assigned = successor.timed("joined")[-1]
        watcher.stop()
        print(f"{death}: new member assigned {assigned_at - died_at:.1f}s and all records received "
              f"{received:.1f}s after the old one died; group states {watcher.states()}")

        assert assigned["partitions"] == [0, 1, 2]
        assert assigned_at - died_at < TAKEOVER_WITHIN_S
        # Each record produced after the death once, nothing the dead member committed.
        assert sorted(successor.values()) == sorted(after.values())
        # The new member's join waited on the dead one (the rebalance the fix is about),
        # and the broker ended it by the dead member's session, not a rebalance timeout.
        assert any(state == "PreparingRebalance" and dead_id in ids for _, state, ids, _ in watcher.samples), (
            f"the new member's rebalance never waited for the dead one: {watcher.states()}")
        assert session_expired_logged(broker, dead_id), f"no 'session expired' line for {dead_id} in the broker log"
        detail = group_detail(broker, group)
        assert (detail["state"], [m["member_id"] for m in detail["members"]]) == (
            "Stable", [assigned["memberId"]]), detail
        assert detail["total_lag"] == 0, detail
        assert not dead.errors() and not successor.errors(), (dead.describe(), successor.describe())
        assert successor.terminate() == 0, successor.describe()
        assert successor.events()[-1]["ev"] == "closed"
    finally:
        if watcher:
            watcher.stop()
        for m in members:
            m.kill()


# ---------------------------------------------------------------------------------------
# Three members, one killed mid-stream: the two survivors take every partition within the
# session timeout plus a few seconds, and the group processes every record exactly once,
# except the one record the killed member processed without committing.
#
# Each member processes one record at a time: "process" it (sleep), append "P partition
# offset value" to its own log file and fsync, commit offset + 1 synchronously, then
# append "C partition offset" (or "F partition offset error" if the commit failed). So a
# killed member has at most one record processed but not known committed. The victim is
# killed exactly there: after its 20th record is processed and fsynced it holds (sleeps)
# before committing, and the test kills it then. That record, and no other, must be
# processed twice (by the victim and by a survivor); every other record exactly once, and
# a survivor's commits must not fail.

THREE_WORKER = r'''
import json, os, signal, sys, time

client, bootstrap, topic, group, name, log_path, process_ms, session_ms, hold_after = sys.argv[1:10]
probe = process_ms == "probe"  # join, report the assignment, leave: process nothing
hold_after = int(hold_after)  # after this many records, stop before committing (0: never)
count = 0
process_s = 0.0 if probe else float(process_ms) / 1000
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
stopping = False


def on_sigterm(_signum, _frame):
    global stopping
    stopping = True


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def processed(p, o, v):
    global count
    if process_s:
        time.sleep(process_s)
    os.write(log, f"P {p} {o} {v}\n".encode())
    os.fsync(log)
    count += 1
    if count == hold_after:
        emit(ev="holding", p=p, o=o)  # processed, not committed: the test kills us now
        time.sleep(3600)


def commit_outcome(p, o, error=None):
    os.write(log, (f"C {p} {o}\n" if error is None else f"F {p} {o} {error!r}\n").encode())
    if error is not None:
        emit(ev="error", error=f"commit of {p}/{o}: {error!r}")


signal.signal(signal.SIGTERM, on_sigterm)
assigned = []

if client == "kafka-python":
    from kafka import ConsumerRebalanceListener, KafkaConsumer
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.structs import OffsetAndMetadata

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            emit(ev="revoke", partitions=sorted(tp.partition for tp in revoked))

        def on_partitions_assigned(self, partitions):
            assigned.append(partitions)
            emit(ev="assign", partitions=sorted(tp.partition for tp in partitions))

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, client_id=name, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=int(session_ms), heartbeat_interval_ms=1000,
        max_poll_records=5, partition_assignment_strategy=[RangePartitionAssignor],
    )
    consumer.subscribe([topic], listener=Listener())
    while not stopping and not (probe and any(assigned)):
        batch = consumer.poll(timeout_ms=200)
        if probe:
            continue
        for tp, records in batch.items():
            failed = False
            for r in records:
                processed(r.partition, r.offset, r.value.decode())
                try:
                    consumer.commit({tp: OffsetAndMetadata(r.offset + 1, None, -1)})
                    commit_outcome(r.partition, r.offset)
                except Exception as e:  # noqa: BLE001 - recorded, the test fails on it
                    commit_outcome(r.partition, r.offset, e)
                    failed = True
                    break
            if failed:
                break
else:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    def on_assign(_consumer, partitions):
        assigned.append(partitions)
        emit(ev="assign", partitions=sorted(tp.partition for tp in partitions))

    def on_revoke(_consumer, partitions):
        emit(ev="revoke", partitions=sorted(tp.partition for tp in partitions))

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "session.timeout.ms": int(session_ms), "heartbeat.interval.ms": 1000,
        "partition.assignment.strategy": "range",
    })
    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    while not stopping and not (probe and any(assigned)):
        msg = consumer.poll(0.2)
        if msg is None or probe:
            continue
        if msg.error():
            emit(ev="error", error=str(msg.error()))
            continue
        processed(msg.partition(), msg.offset(), msg.value().decode())
        try:
            result = consumer.commit(offsets=[TopicPartition(topic, msg.partition(), msg.offset() + 1)],
                                     asynchronous=False)
            errors = [tp.error for tp in result or [] if tp.error]
            if errors:
                raise KafkaException(errors[0])
            commit_outcome(msg.partition(), msg.offset())
        except KafkaException as e:
            commit_outcome(msg.partition(), msg.offset(), e)
consumer.close()
emit(ev="closed")
'''

THREE_PARTITIONS = 6
# Per-record processing time: the killed member is still busy when it dies.
THREE_PROCESS_MS = 10
VICTIM_HOLDS_AFTER = 20


class ThreeWorker(JsonLines):
    def __init__(self, client: str, broker, topic: str, group: str, name: str, log_dir: Path,
                 process_ms: str = str(THREE_PROCESS_MS), hold_after: int = 0):
        self.log_path = log_dir / f"{name}.processed"
        super().__init__(
            [sys.executable, "-c", THREE_WORKER, client, broker.bootstrap, topic, group, name,
             str(self.log_path), process_ms, str(SESSION_TIMEOUT_MS), str(hold_after)],
            name, log_dir, stdin=subprocess.DEVNULL)

    def assignment(self) -> set[int]:
        current: set[int] = set()
        for e in self.events():
            if e["ev"] == "assign":
                current = set(e["partitions"])
            elif e["ev"] == "revoke":
                current = set()
        return current

    def log(self) -> list[tuple]:
        """("P", partition, offset, value), ("C", partition, offset), ("F", partition, offset)."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            kind, p, o, *rest = line.split(" ", 3)
            out.append((kind, int(p), int(o), rest[0]) if kind == "P" else (kind, int(p), int(o)))
        return out

    def processed(self) -> list[tuple[int, int, str]]:
        return [(p, o, v) for kind, p, o, v in (e for e in self.log() if e[0] == "P")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", ["nothing", "a-member-joins"])
@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_three_members_one_killed_survivors_take_over_and_process_each_record_once(
        broker, tmp_path, client, then):
    """`then=a-member-joins`: right after the kill a fourth member joins (while the dead
    one's session is still running), is assigned, and leaves again. Its rebalance must not
    wait for the dead member's rebalance timeout (the 300 s default max.poll.interval.ms):
    the broker used to, so the survivors only took over after 300 s. With `then=nothing`
    the dead member expires while the group is Stable, which the broker always handled."""
    topic, group = unique("three"), unique("three-grp")
    create_topic(broker.bootstrap, topic, partitions=THREE_PARTITIONS)
    workers = [ThreeWorker(client, broker, topic, group, f"m{i}", tmp_path,
                           hold_after=VICTIM_HOLDS_AFTER if i == 1 else 0)
               for i in range(3)]
    everyone = list(workers)
    victim, survivors = workers[1], [workers[0], workers[2]]
    watcher = None

    def describe():
        return "\n".join(w.describe() for w in everyone) + f"\ngroup: {group_detail(broker, group)}"

    def own_all(members) -> bool:
        sets = [m.assignment() for m in members]
        return (all(sets) and sum(len(s) for s in sets) == THREE_PARTITIONS
                and set().union(*sets) == set(range(THREE_PARTITIONS)))

    def clients_in_group() -> list[str]:
        return sorted(m["client_id"] for m in group_detail(broker, group)["members"])

    try:
        wait_until(lambda: own_all(workers) and all(len(w.assignment()) == 2 for w in workers)
                   and clients_in_group() == ["m0", "m1", "m2"],
                   60, lambda: f"three members with two partitions each; {describe()}")
        victim_partitions = victim.assignment()

        produced = _produce_spread(broker, topic, THREE_PARTITIONS, 60, "before")
        held = wait_until(lambda: victim.events("holding"), 30,
                          lambda: f"the victim processes {VICTIM_HOLDS_AFTER} records; {describe()}")[0]
        held = (held["p"], held["o"])
        victim.kill()
        killed_at = time.monotonic()
        watcher = GroupWatcher(broker, group)
        left = {po for po in produced if po[0] in victim_partitions} - {(p, o) for p, o, _ in victim.processed()}
        assert left, "the victim had processed all its records before it was killed: kill earlier"
        if then == "a-member-joins":
            joiner = ThreeWorker(client, broker, topic, group, "m3-joins", tmp_path, process_ms="probe")
            everyone.append(joiner)
        produced.update(_produce_spread(broker, topic, THREE_PARTITIONS, 30, "after"))

        wait_until(lambda: own_all(survivors) and clients_in_group() == ["m0", "m2"]
                   and group_detail(broker, group)["state"] == "Stable",
                   max(1.0, killed_at + TAKEOVER_WITHIN_S - time.monotonic()),
                   lambda: (f"the two survivors own all {THREE_PARTITIONS} partitions within {TAKEOVER_WITHIN_S}s "
                            f"of the kill; group went through {watcher.states()}\n{describe()}"))
        took_over = time.monotonic() - killed_at
        if then == "a-member-joins":
            assert joiner.terminate() == 0 and joiner.events()[-1]["ev"] == "closed", joiner.describe()
            assert [e["partitions"] for e in joiner.events("assign") if e["partitions"]], joiner.describe()
            # Its join happened while the dead member was still in the group: the rebalance
            # that must not wait for the dead member's rebalance timeout.
            assert any(state == "PreparingRebalance" and "m1" in clients and "m3-joins" in clients
                       for _, state, _, clients in watcher.samples), watcher.states()

        def all_processed():
            return {(p, o) for w in survivors + [victim] for p, o, _ in w.processed()} >= produced.keys()

        wait_until(all_processed, 60, lambda: f"every record processed; {describe()}")
        watcher.stop()
        for s in survivors:
            assert s.terminate() == 0, s.describe()
        detail = group_detail(broker, group)
        assert detail["total_lag"] == 0 and len(detail["offsets"]) == THREE_PARTITIONS, detail
    finally:
        if watcher:
            watcher.stop()
        for w in everyone:
            w.kill()

    errors = {w.name: w.errors() for w in everyone if w.errors()}
    assert not errors, f"members reported errors (a survivor's failed commit is a duplicate): {errors}"

    # Each member saw what the log holds, each partition in offset order.
    for w in survivors + [victim]:
        last: dict[int, int] = {}
        for p, o, v in w.processed():
            assert produced.get((p, o)) == v, f"{w.name} processed {p}/{o}={v!r}, the log holds {produced.get((p, o))!r}"
            assert o > last.get(p, -1), f"{w.name} went back in partition {p}: {last[p]} then {o}"
            last[p] = o
    for w in survivors:
        kinds = Counter(kind for kind, *_ in w.log())
        assert kinds["F"] == 0 and kinds["C"] == kinds["P"], f"{w.name}: every commit must succeed: {kinds}"

    # The victim's window: processed (written + fsynced) but no acknowledged commit.
    victim_committed = {(p, o) for kind, p, o, *_ in victim.log() if kind == "C"}
    victim_unacked = {(p, o) for p, o, _ in victim.processed()} - victim_committed
    assert len(victim.processed()) == VICTIM_HOLDS_AFTER and victim_unacked == {held}, (
        f"the victim was killed with exactly {held} processed and uncommitted: {victim_unacked}")

    times = Counter((p, o) for w in survivors + [victim] for p, o, _ in w.processed())
    assert times.keys() == produced.keys(), "every produced record processed by the group, nothing else"
    twice = {po: n for po, n in times.items() if n > 1}
    assert twice == {held: 2}, (
        f"processed more than once (record: times): {twice}; exactly the killed member's uncommitted {held} "
        f"must be, twice: by it and by the survivor that took its partition")
    print(f"{client}, then {then}: survivors owned all partitions {took_over:.1f}s after the kill; "
          f"{len(produced)} records, victim processed {len(victim.processed())} "
          f"(held {held} uncommitted, redelivered {sorted(twice)}); "
          f"per member { {w.name: len(w.processed()) for w in survivors + [victim]} }")
