"""The Celery application test_celery.py runs against herald's AMQP listener.

The worker (`python -m celery -A celery_app worker ...`, a subprocess) and the client
(the test process, `make_app(...)` and `task.delay(...)`) build the same app: the
worker from environment variables, the client by calling `make_app` directly.

Every task writes one JSON line per event to the file $CELERY_TEST_RUNS (the worker's
side; the client never runs a task), so a test sees exactly what ran, how often, on
which attempt and whether the broker flagged the delivery as redelivered. No result
backend: effects are observed through that file only.

Celery's defaults are kept on purpose (remote control, events, mingle, gossip,
heartbeats all on): the tests check that herald copes with everything a stock worker
does, not just the task queue. Only the broker connection retries are made generous
and fast, for the kill -9 test.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery

# Where a held task (see `late`) waits for the test's go-ahead, at most this long.
HOLD_MAX_S = 30.0


def log_event(**fields) -> None:
    """Append one JSON line to $CELERY_TEST_RUNS (a single O_APPEND write: whole lines)."""
    fields.setdefault("t", time.time())
    fields.setdefault("pid", os.getpid())
    line = (json.dumps(fields, sort_keys=True) + "\n").encode()
    fd = os.open(os.environ["CELERY_TEST_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _redelivered(task) -> bool:
    return bool((task.request.delivery_info or {}).get("redelivered"))


def make_app(broker_url: str, queue: str) -> Celery:
    app = Celery("celery_app", broker=broker_url, set_as_current=False)
    app.conf.update(
        # Every task of this app goes to (and the worker consumes) `queue`: a direct
        # exchange of the same name, as Celery declares for any queue it creates.
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        # No result backend: the tasks' effects are in the runs file.
        task_ignore_result=True,
        # Keep reconnecting through a broker restart (the worker's first attempt is at
        # once, then 2 s, 4 s, ... apart: kombu's fixed schedule).
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=1000,
        broker_connection_timeout=4,
        # The client's publishes retry across a reconnect too.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 50, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.5},
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=True,
    )

    @app.task(shared=False, name="celery_app.record")
    def record(x):
        """Appends its argument: the plain task."""
        log_event(event="done", task="record", arg=x, redelivered=_redelivered(record))

    @app.task(shared=False, name="celery_app.retry_then_succeed", bind=True, max_retries=2)
    def retry_then_succeed(self, key):
        """Fails its first two attempts with self.retry(countdown=0.5), then succeeds."""
        attempt = self.request.retries
        log_event(event="attempt", task="retry_then_succeed", arg=key, attempt=attempt)
        if attempt < 2:
            raise self.retry(countdown=0.5, max_retries=2)
        log_event(event="done", task="retry_then_succeed", arg=key, attempt=attempt)

    @app.task(shared=False, name="celery_app.autoretry_then_succeed", bind=True,
              autoretry_for=(RuntimeError,), retry_kwargs={"max_retries": 2, "countdown": 0.5},
              retry_backoff=False, retry_jitter=False)
    def autoretry_then_succeed(self, key):
        """Raises RuntimeError on its first two attempts (autoretry_for), then succeeds."""
        attempt = self.request.retries
        log_event(event="attempt", task="autoretry_then_succeed", arg=key, attempt=attempt)
        if attempt < 2:
            raise RuntimeError(f"attempt {attempt} of {key} fails on purpose")
        log_event(event="done", task="autoretry_then_succeed", arg=key, attempt=attempt)

    @app.task(shared=False, name="celery_app.always_fails", bind=True, max_retries=2)
    def always_fails(self, key):
        """Fails every attempt: after max_retries=2 retries Celery gives up (3 attempts)."""
        attempt = self.request.retries
        log_event(event="attempt", task="always_fails", arg=key, attempt=attempt)
        raise self.retry(exc=ValueError(f"{key} always fails"), countdown=0.3)

    @app.task(shared=False, name="celery_app.late", bind=True, acks_late=True)
    def late(self, x, hold_until=None):
        """acks_late: acked only after it returned. With `hold_until` (a path), the first
        run waits for that file to exist (at most HOLD_MAX_S) before it finishes, so a
        test can kill the broker while exactly this task is in flight."""
        redelivered = _redelivered(self)
        log_event(event="start", task="late", arg=x, redelivered=redelivered)
        if hold_until:
            deadline = time.monotonic() + HOLD_MAX_S
            while not os.path.exists(hold_until) and time.monotonic() < deadline:
                time.sleep(0.02)
        log_event(event="done", task="late", arg=x, redelivered=redelivered)

    return app


def _log_acks() -> None:
    """In the worker: log every basic.ack Celery hands to py-amqp (an "ack" line with the
    task's argument and the delivery tag), so a test knows which acks were sent before
    it killed the broker, not only which tasks ran."""
    from kombu.message import Message

    original = Message.ack

    def ack(self, multiple=False):
        original(self, multiple=multiple)  # raises if the connection is gone: then no line
        headers = self.headers or {}
        log_event(event="ack", task=str(headers.get("task", "")).removeprefix("celery_app."),
                  argsrepr=headers.get("argsrepr"), tag=self.delivery_tag, multiple=multiple)

    Message.ack = ack


def _worker_app() -> Celery | None:
    url = os.environ.get("CELERY_TEST_BROKER_URL")
    if not url:
        return None
    _log_acks()
    return make_app(url, os.environ["CELERY_TEST_QUEUE"])


# `celery -A celery_app worker` looks for `app` here.
app = _worker_app()
