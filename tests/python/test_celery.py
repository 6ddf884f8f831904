"""Celery (5.7, kombu's py-amqp transport) against herald's AMQP 0-9-1 listener, with
Celery's defaults: a real worker process (`celery worker --pool=solo`) consumes the
tasks a client in the test process sends with `task.delay(...)`. There is no result
backend: every task appends JSON lines to a runs file (see celery_app.py), and the
tests judge by that file, by the worker's log and, on herald, by the queue's stats
(`GET /topics/<queue>/subscriptions/amqp`: ready `depth` and unacked `in_flight`).

A stock worker uses much more of AMQP than a task queue: it declares the direct
exchange and durable queue of its task queue, `basic.qos` + `basic.consume` +
`basic.ack`, the fanout `celery.pidbox` exchange with an auto-delete queue
`<worker>@<host>.celery.pidbox` (remote control; the name is not a valid topic name,
so herald maps it to `amqp.<...>.<hash>`), reply queues on the direct
`reply.celery.pidbox` exchange, and the topic exchange `celeryev` (events, mingle,
gossip, heartbeats) with auto-delete queues carrying `x-message-ttl` / `x-expires`.
Nothing of that is turned off here.

Like test_amqp.py, the tests that do not kill the broker also run against another
broker, to check the tests themselves:

    HERALD_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672// \\
        .venv/bin/python -m pytest tests/python/test_celery.py
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from celery_app import make_app
from herald_support import unique, wait_until

pytestmark = pytest.mark.timeout(90)

EXTERNAL_URL = os.environ.get("HERALD_TEST_AMQP_URL")
HERE = Path(__file__).resolve().parent
# A worker must log "ready." this soon after it was started (mingle alone waits 1 s).
WORKER_READY_S = 30.0
# After SIGTERM (warm shutdown) a worker must have exited this soon, else it is killed.
WORKER_STOP_S = 15.0


def _herald_url(broker) -> str:
    if broker.amqp_port is None:
        pytest.skip("this herald binary has no AMQP listener (`herald serve --help` does not "
                    "mention --amqp-listen)")
    # kombu's URL: the path after the first '/' is the virtual host, so '//' is '/'.
    return f"amqp://guest:guest@{broker.host}:{broker.amqp_port}//"


class Worker:
    """`python -m celery -A celery_app worker --pool=solo --concurrency=1 -Q <queue>`,
    its output in a log file; SIGTERM (warm shutdown) when stopped."""

    def __init__(self, url: str, queue: str, runs: Path, log_path: Path, name: str):
        self.url, self.queue, self.runs, self.log_path, self.name = url, queue, runs, log_path, name
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "celery_app", "worker",
                "--pool=solo", "--concurrency=1", "-Q", self.queue,
                "-n", f"{self.name}@%h", "--loglevel=INFO"]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HERALD_", "CELERY_"))}
        env.update(
            PYTHONPATH=os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PYTHONUNBUFFERED="1",
            CELERY_TEST_BROKER_URL=self.url,
            CELERY_TEST_QUEUE=self.queue,
            CELERY_TEST_RUNS=str(self.runs),
        )
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=env, cwd=self.log_path.parent,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     start_new_session=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no worker log: {e}>"

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"celery worker exited with code {self.proc.returncode}:\n{self.tail()}")

    def wait_ready(self, timeout_s: float = WORKER_READY_S) -> None:
        def ready():
            self.assert_running()
            return f"{self.name}@" in self.log() and " ready." in self.log()
        wait_until(ready, timeout_s, lambda: f"worker {self.name} ready; log:\n{self.tail()}", interval_s=0.05)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def error_lines(self) -> list[str]:
        """ERROR / CRITICAL records of the worker's log, and tracebacks."""
        return [line for line in self.log().splitlines()
                if "ERROR/" in line or "CRITICAL/" in line or line.startswith("Traceback")]


class CeleryRig:
    """One test's Celery: the broker URL, a queue, the runs file, the worker(s) and a
    client app. Everything started here is stopped at teardown."""

    def __init__(self, url: str, tmp_path: Path, broker=None, queue: str | None = None):
        self.url = url
        self.broker = broker  # herald's Broker, or None against an external broker
        self.tmp_path = tmp_path
        self.queue = queue or unique("celery-tasks")
        self.runs = tmp_path / "runs.jsonl"
        self.workers: list[Worker] = []
        self.client = make_app(url, self.queue)
        # A file a held task waits for (celery_app.late): created before workers stop.
        self.hold_path: Path | None = None

    def task(self, name: str):
        return self.client.tasks[f"celery_app.{name}"]

    def worker(self, start: bool = True) -> Worker:
        n = len(self.workers)
        w = Worker(self.url, self.queue, self.runs, self.tmp_path / f"worker{n}.log",
                   name=f"w{n}-{uuid.uuid4().hex[:6]}")
        self.workers.append(w)
        if start:
            w.start()
            w.wait_ready()
        return w

    def events(self) -> list[dict]:
        if not self.runs.exists():
            return []
        return [json.loads(line) for line in self.runs.read_text().splitlines() if line.strip()]

    def done(self, task: str) -> list[dict]:
        """The task's completed runs, in order."""
        return [e for e in self.events() if e["event"] == "done" and e["task"] == task]

    def stats(self) -> dict:
        """herald's view of the queue: ready `depth`, unacked `in_flight`, ..."""
        assert self.broker is not None
        r = httpx.get(f"{self.broker.http_url}/topics/{self.queue}/subscriptions/amqp", timeout=10)
        r.raise_for_status()
        return r.json()["stats"]

    def wait_settled(self, timeout_s: float = 20.0) -> None:
        """Until the queue holds nothing: none ready, none delivered and unacked (herald's
        stats; against an external broker, a short pause instead)."""
        if self.broker is None:
            time.sleep(1.0)
            return
        wait_until(lambda: (s := self.stats())["depth"] == 0 and s["in_flight"] == 0, timeout_s,
                   lambda: f"queue {self.queue} drained and acked: {self.stats()}")

    def close(self, failed: bool) -> None:
        if self.hold_path is not None:
            self.hold_path.touch()
        with contextlib.suppress(Exception):
            self.client.close()
        for w in self.workers:
            code = w.stop()
            if failed:
                print(f"----- celery worker {w.name} (exit {code}), {w.log_path} -----\n{w.tail(150)}")
        if failed:
            print(f"----- runs file {self.runs} -----")
            for e in self.events()[-200:]:
                print(json.dumps(e, sort_keys=True))


def _rig(request, tmp_path, herald_only: bool):
    queue = getattr(request, "param", None)  # indirect parametrization names the queue
    if EXTERNAL_URL:
        if herald_only:
            pytest.skip("kills the broker: runs only against herald, not HERALD_TEST_AMQP_URL")
        r = CeleryRig(EXTERNAL_URL, tmp_path, queue=queue)
    else:
        broker = request.getfixturevalue("broker")
        r = CeleryRig(_herald_url(broker), tmp_path, broker=broker, queue=queue)
    yield r
    call = getattr(request.node, "rep_call", None)
    r.close(failed=call is not None and call.failed)


@pytest.fixture
def rig(request, tmp_path):
    """A CeleryRig on a fresh herald (or $HERALD_TEST_AMQP_URL); its queue is a fresh
    name unless the test names one with indirect parametrization."""
    yield from _rig(request, tmp_path, herald_only=False)


@pytest.fixture
def herald_rig(request, tmp_path):
    """A CeleryRig on herald only: for the tests that kill the broker."""
    yield from _rig(request, tmp_path, herald_only=True)


def broker_problems(broker) -> list[str]:
    """WARN and ERROR lines of herald's log for its current run."""
    if broker is None:
        return []
    return [line for line in broker.stderr_tail(100_000).splitlines()
            if " WARN " in line or " ERROR " in line or "panicked" in line]


def counts(events: list[dict]) -> collections.Counter:
    return collections.Counter(e["arg"] for e in events)


# --- 1. a worker runs every task once ---------------------------------------------------

@pytest.mark.parametrize("rig", ["celery"], indirect=True)
def test_worker_runs_every_task_exactly_once_in_order(rig):
    """Celery's default queue `celery` (direct exchange `celery`), a stock worker: 50
    tasks sent with delay() run exactly once each, in the order sent (one queue is one
    partition), none flagged redelivered; the queue ends empty with nothing unacked;
    neither the worker nor herald logs an error or warning on the way."""
    n = 50
    worker = rig.worker()
    record = rig.task("record")
    for i in range(n):
        record.delay(i)
    wait_until(lambda: len(rig.done("record")) >= n, 30,
               lambda: f"{n} tasks done ({len(rig.done('record'))} so far)")
    rig.wait_settled()
    done = rig.done("record")
    assert [e["arg"] for e in done] == list(range(n)), "each task once, in the order sent"
    assert not [e for e in done if e["redelivered"]], "no task was flagged redelivered"
    assert len({e["pid"] for e in done}) == 1, "one worker process ran them all"
    # The worker logs an ack just after handing it to the socket: wait for the last line.
    wait_until(lambda: len([e for e in rig.events() if e["event"] == "ack"]) >= n, 5, "every ack logged")
    acks = [e for e in rig.events() if e["event"] == "ack"]
    assert sorted(int(e["argsrepr"].strip("(,)")) for e in acks) == list(range(n)), "each task acked once"
    worker.assert_running()
    assert worker.error_lines() == [], "the worker logged errors"
    assert broker_problems(rig.broker) == [], "herald logged warnings or errors"


# --- 2. retries ---------------------------------------------------------------------------

def _attempts(rig: CeleryRig, task: str) -> list[dict]:
    return [e for e in rig.events() if e["event"] == "attempt" and e["task"] == task]


def test_failing_tasks_are_retried_until_they_succeed_or_give_up(rig):
    """self.retry(countdown=0.5, max_retries=2) and autoretry_for=(RuntimeError,): each
    task fails twice and succeeds on its third attempt (retries 0, 1, 2), the retries at
    least the countdown apart (a retry is a new message the worker publishes with an ETA
    and holds unacked until then). A task that always fails gives up after 3 attempts and
    is not run again: the queue settles empty with nothing unacked."""
    worker = rig.worker()
    rig.task("retry_then_succeed").delay("r")
    rig.task("autoretry_then_succeed").delay("a")
    rig.task("always_fails").delay("f")

    def finished():
        return (len(rig.done("retry_then_succeed")) >= 1 and len(rig.done("autoretry_then_succeed")) >= 1
                and len(_attempts(rig, "always_fails")) >= 3)
    wait_until(finished, 30, lambda: f"retries finished; runs so far: {rig.events()}")
    rig.wait_settled()
    time.sleep(1.0)  # a 4th attempt of always_fails would come 0.3 s after the 3rd

    for task in ("retry_then_succeed", "autoretry_then_succeed"):
        attempts = _attempts(rig, task)
        assert [e["attempt"] for e in attempts] == [0, 1, 2], f"{task}: three attempts, retries 0, 1, 2"
        gaps = [b["t"] - a["t"] for a, b in zip(attempts, attempts[1:])]
        assert all(g >= 0.45 for g in gaps), f"{task}: retries at least countdown=0.5 s apart, got {gaps}"
        assert [e["attempt"] for e in rig.done(task)] == [2], f"{task}: succeeded once, on the 3rd attempt"
    assert [e["attempt"] for e in _attempts(rig, "always_fails")] == [0, 1, 2], \
        "always_fails: 3 attempts, then Celery gives up"
    log = worker.log()
    assert log.count("celery_app.retry_then_succeed[") >= 3 and "retry: Retry in 0.5s" in log, log[-3000:]
    assert "celery_app.always_fails[" in log and "ValueError" in log, "the final failure is logged"
    worker.assert_running()
    assert broker_problems(rig.broker) == [], "herald logged warnings or errors"


# --- 3. kill -9 of the broker with acks_late tasks ---------------------------------------

@pytest.mark.timeout(60)
def test_kill9_broker_mid_run_worker_and_client_reconnect_at_least_once(herald_rig):
    """acks_late tasks (acked after they ran). 30 are sent; task 10 holds the worker (solo
    pool) until the test lets it go. Celery does not ack a task the moment it returns
    (the worker's event loop sends the ack on its next turn, so a few finished tasks may
    still be unacked while task 10 runs): the worker logs each basic.ack it sends, and the
    test waits until herald's stats count exactly those acks (ready + unacked = 30 - acks
    sent). Then herald is killed with -9, restarted on the same ports and data, and task
    10 is let go: its ack can only go to the dead connection. The worker reconnects, and
    the same client app (its pooled connection dead) sends tasks 30..49. Precisely:

    - nothing is lost: each of the 50 tasks ran to the end at least once;
    - a task whose ack was sent and counted before the kill ran exactly once;
    - the deliveries unacked at the kill (`in_flight`: task 10, the finished tasks whose
      ack was still queued in the worker, the prefetched ones; at most Celery's prefetch
      of 4) are redelivered once after the restart, flagged `redelivered`; task 10 and
      the finished-but-unacked ones ran exactly twice, a prefetched one once or twice
      (twice only if the worker still ran it from the dead socket's buffer);
    - every other task ran exactly once: one sent after the restart is not flagged
      redelivered; one sent before but never delivered may be (RabbitMQ 3.10 flags every
      message it recovers after a crash: "may have been delivered").

    The assertions after the restart pass against RabbitMQ 3.10.8 (killed with -9 the
    same way, its counts from rabbitmqctl).
    """
    rig = herald_rig
    broker = rig.broker
    n_before, held, n = 30, 10, 50
    rig.hold_path = rig.tmp_path / "go"
    worker = rig.worker()
    late = rig.task("late")
    for i in range(n_before):
        late.delay(i, hold_until=str(rig.hold_path) if i == held else None)

    def started(i, events):
        return any(e["event"] == "start" and e["arg"] == i for e in events)
    wait_until(lambda: started(held, rig.events()), 20, lambda: f"task {held} started; runs: {rig.events()}")
    # The worker is stuck in task `held` now: no more acks can leave it.
    before = rig.events()
    acked = {int(e["argsrepr"].strip("(,)")) for e in before if e["event"] == "ack"}
    wait_until(lambda: (s := rig.stats())["depth"] + s["in_flight"] == n_before - len(acked), 10,
               lambda: f"herald counts the {len(acked)} acks the worker sent: {rig.stats()}")
    at_kill = rig.stats()
    delivered = len(acked) + at_kill["in_flight"]  # deliveries go in queue order
    outstanding = set(range(delivered)) - acked
    finished = {e["arg"] for e in before if e["event"] == "done"}
    assert finished == set(range(held)), f"tasks 0..{held - 1} finished before task {held}: {sorted(finished)}"
    assert acked <= finished and held in outstanding, (acked, outstanding)
    assert at_kill["in_flight"] <= 4, f"Celery's prefetch is 4 (concurrency 1 x 4): {at_kill}"

    broker.kill()
    broker.restart()  # the same data directory and ports
    rig.hold_path.touch()
    for i in range(n_before, n):
        late.delay(i)  # the client's pooled connection died with the broker: kombu reconnects

    def all_ran_and_settled():
        done = counts(rig.done("late"))
        if not all(done[i] >= 1 for i in range(n)):
            return False
        s = rig.stats()
        return s["depth"] == 0 and s["in_flight"] == 0

    def not_settled():
        done = counts(rig.done("late"))
        never = [i for i in range(n) if not done[i]]
        not_again = [i for i in sorted(outstanding & (finished | {held})) if done[i] < 2]
        return (f"every task ran and the queue settled. Never ran: {never}; unacked at the kill "
                f"({sorted(outstanding)}) but not run again: {not_again}; herald's stats now: "
                f"{rig.stats()} (deliveries the kill left unacked must be ready again after the "
                f"restart, as RabbitMQ requeues them, not stay leased)")
    wait_until(all_ran_and_settled, 25, not_settled, interval_s=0.2)
    time.sleep(0.5)  # nothing more may run now; a stray duplicate would show

    done = rig.done("late")
    flags = {i: [e["redelivered"] for e in done if e["arg"] == i] for i in range(n)}
    assert not [i for i in range(n) if not flags[i]], f"lost: {[i for i in range(n) if not flags[i]]}"
    assert set(counts(done)) == set(range(n))
    for i in sorted(acked):
        assert flags[i] == [False], f"task {i} was acked before the kill, yet ran {flags[i]}"
    worker.assert_running()
    log = worker.log()
    assert "Connection to broker lost" in log, "the worker saw the broker go"
    connections = log.count("Connected to amqp://")
    assert connections >= 2, "and connected again"
    # Usually the worker connects once more after the restart. Under CPU load kombu
    # sometimes drops its fresh connection too, right after the first deliveries
    # ("RecoverableConnectionError: Socket was disconnected": kombu's reader finds its
    # connection object closed; the broker logged no error and closed nothing); each such
    # connection may take what was unacked when it went once more, flagged. So a task may
    # run `extra` more times, never unflagged after its first run.
    extra = connections - 2
    for i in range(n):
        assert all(flags[i][1:]), f"task {i}: a run after its first must be flagged redelivered: {flags[i]}"
    for i in sorted(outstanding):
        ran_before = bool(flags[i]) and flags[i][0] is False  # before the restart, unflagged
        redone = len(flags[i]) - ran_before
        ok = (ran_before or (i not in finished and i != held)) and 1 <= redone <= 1 + extra
        assert ok, f"task {i} was unacked at the kill: runs flagged redelivered {flags[i]} ({connections} connections)"
    for i in sorted(set(range(n_before)) - outstanding - acked):
        # Never delivered before the kill: once. Its flag may be set (the spec's "may have
        # been delivered"; RabbitMQ 3.10 flags every message it recovers after a crash).
        assert 1 <= len(flags[i]) <= 1 + extra, \
            f"task {i} was not delivered before the kill, yet ran {flags[i]} ({connections} connections)"
    for i in range(n_before, n):
        assert flags[i][0] is False and len(flags[i]) <= 1 + extra, \
            f"task {i} was sent after the restart, yet ran {flags[i]} ({connections} connections)"
    print(f"acked before the kill: {sorted(acked)}; unacked at the kill: {sorted(outstanding)}; "
          f"runs of those: {[(i, flags[i]) for i in sorted(outstanding)]}")


# --- 4. remote control and events, Celery's defaults -------------------------------------

def test_remote_control_and_events_work_with_defaults(rig):
    """What a stock worker runs besides tasks: broadcast remote control over the fanout
    `celery.pidbox` exchange with replies on `reply.celery.pidbox` (ping, active_queues,
    enable_events), and events on the topic exchange `celeryev` (an event receiver's
    auto-delete queue, bound with '#'): worker heartbeats, and task events once
    enable_events was broadcast."""
    worker = rig.worker()
    app = rig.client
    replies = app.control.ping(timeout=5.0, limit=1)
    assert replies == [{f"{worker.name}@{os.uname().nodename}": {"ok": "pong"}}], replies
    queues = app.control.inspect(timeout=5.0, limit=1).active_queues()
    assert [q["name"] for q in queues[f"{worker.name}@{os.uname().nodename}"]] == [rig.queue], queues

    seen: list[dict] = []
    stop = threading.Event()
    ready = threading.Event()

    def receive():
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": seen.append})
            ready.set()
            for _ in recv.itercapture(limit=None, timeout=0.5, wakeup=False):
                if stop.is_set():
                    break

    def run_receiver():
        while not stop.is_set():
            try:
                receive()
            except TimeoutError:  # socket.timeout between events: keep listening
                continue

    t = threading.Thread(target=run_receiver, daemon=True)
    t.start()
    try:
        assert ready.wait(10), "event receiver connected"
        wait_until(lambda: any(e.get("type") == "worker-heartbeat" for e in seen), 10,
                   lambda: f"a worker-heartbeat event (every 2 s); got {[e.get('type') for e in seen]}")
        assert app.control.enable_events(reply=True, timeout=5.0, limit=1) == [
            {f"{worker.name}@{os.uname().nodename}": {"ok": "task events enabled"}}]
        rig.task("record").delay("evented")
        wait_until(lambda: {"task-received", "task-started", "task-succeeded"} <= {e.get("type") for e in seen},
                   10, lambda: f"task events; got {sorted({e.get('type') for e in seen})}")
    finally:
        stop.set()
        t.join(timeout=5)
    assert [e["arg"] for e in rig.done("record")] == ["evented"]
    worker.assert_running()
    assert worker.error_lines() == [], "the worker logged errors"
    assert broker_problems(rig.broker) == [], "herald logged warnings or errors"


# --- 5. ETA / countdown tasks do not hold back the queue ---------------------------------

def test_countdown_tasks_beyond_the_prefetch_do_not_block_ready_tasks(rig):
    """A worker holds a countdown (ETA) task unacked until it is due, and raises its
    prefetch with `basic.qos` for each one so that ready tasks keep flowing (Celery's
    QoS.increment_eventually; the default prefetch is 4). Six tasks with countdown=6 s,
    more than the prefetch, then one plain task: the plain one runs at once (RabbitMQ
    3.10: in 0.04 s), not after the countdowns; the countdown tasks run once each, not
    before they are due."""
    worker = rig.worker()
    record = rig.task("record")
    countdown = 6.0
    t0 = time.time()
    for i in range(6):
        record.apply_async((f"eta-{i}",), countdown=countdown)
    record.delay("now")
    wait_until(lambda: any(e["arg"] == "now" for e in rig.done("record")), countdown + 5,
               lambda: f"the plain task ran; runs: {rig.done('record')}")
    waited = next(e["t"] for e in rig.done("record") if e["arg"] == "now") - t0
    wait_until(lambda: len(rig.done("record")) >= 7, countdown + 10,
               lambda: f"the countdown tasks ran; runs: {rig.done('record')}")
    rig.wait_settled()
    done = rig.done("record")
    assert sorted(e["arg"] for e in done) == sorted(["now", *(f"eta-{i}" for i in range(6))]), done
    early = [(e["arg"], round(e["t"] - t0, 2)) for e in done if e["arg"] != "now" and e["t"] - t0 < countdown - 0.2]
    assert not early, f"countdown tasks ran before they were due: {early}"
    assert waited < 3.0, (
        f"the plain task waited {waited:.2f} s behind {len(done) - 1} countdown tasks: the worker "
        f"raised its prefetch with basic.qos (prefetch_count 4 -> 5 -> ... -> 10, global=false, "
        f"since the server is not RabbitMQ 3.3-3.x) but its consumer kept the prefetch of 4")
    worker.assert_running()
