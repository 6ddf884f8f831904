"""Helpers shared by the event store tests (KurrentDB's gRPC clients against herald):
a broker shared by a whole test module, connecting, short reads with deadlines,
collecting from catch-up subscriptions with a bounded wait, and the `eventsourcing`
aggregate the persistence test saves.

The listener itself is started as test_eventstore.py starts it (imported from there,
not copied): `--eventstore-listen 127.0.0.1:<free port>`, then wait until it accepts.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from kurrentdbclient import CaughtUp, Checkpoint, FellBehind, KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import DeadlineExceededError, GrpcError, NotFoundError

from conftest import Broker
from test_eventstore import eventstore_broker, supported_methods_class, target

__all__ = ["eventstore_broker", "supported_methods_class", "target"]

# Every call has a deadline, so a server that stops answering fails a test, never hangs it.
CALL_TIMEOUT_S = 10.0
# How long a catch-up subscription may take to deliver what a test waits for.
SUBSCRIPTION_TIMEOUT_S = 15.0


def uri(b) -> str:
    # DefaultDeadline is the deadline kurrentdbclient puts on appends, deletes and
    # metadata writes when the call gives none (reads get theirs explicitly).
    return f"kurrentdb://{target(b)}?tls=false&DefaultDeadline={int(CALL_TIMEOUT_S)}"


def connect(b) -> KurrentDBClient:
    return KurrentDBClient(uri(b))


def unique_stream(prefix: str) -> str:
    """`<prefix>-<hex>`: its category (the part before the first '-') is `prefix`."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def tag() -> str:
    """A token no other test uses, without '-' (so it can be a category or a type prefix)."""
    return "t" + uuid.uuid4().hex[:10]


def new(type_: str, data: bytes = b"{}", **kw) -> NewEvent:
    return NewEvent(type=type_, data=data, **kw)


def read(client: KurrentDBClient, stream: str, **kw) -> list:
    """get_stream with a deadline; raises NotFoundError / StreamIsDeletedError as the client does."""
    return list(client.get_stream(stream, timeout=CALL_TIMEOUT_S, **kw))


def read_or_empty(client: KurrentDBClient, stream: str, **kw) -> list:
    try:
        return read(client, stream, **kw)
    except NotFoundError:
        return []


def read_all(client: KurrentDBClient, **kw) -> list:
    return list(client.read_all(timeout=CALL_TIMEOUT_S, **kw))


def log_end(client: KurrentDBClient) -> int:
    """The position of the last record of `$all`, system events included (0 if empty)."""
    return client.get_commit_position(filter_exclude=(), timeout=CALL_TIMEOUT_S)


def describe(items) -> list[str]:
    out = []
    for e in items:
        if isinstance(e, CaughtUp):
            out.append("CaughtUp")
        elif isinstance(e, Checkpoint):
            out.append(f"Checkpoint@{e.commit_position}")
        elif isinstance(e, FellBehind):
            out.append("FellBehind")
        else:
            out.append(f"{e.stream_name}@{e.stream_position}:{e.type}@{e.commit_position}")
    return out


def take(subscription, n: int, *, skip_checkpoints: bool = False) -> list:
    """The next `n` items of a catch-up subscription (events, and CaughtUp/Checkpoint when
    the subscription was asked for them). The subscription's own deadline bounds the wait;
    running into it fails with what had arrived."""
    got = []
    try:
        for item in subscription:
            if skip_checkpoints and isinstance(item, Checkpoint):
                continue
            got.append(item)
            if len(got) == n:
                return got
    except DeadlineExceededError as e:
        raise AssertionError(f"subscription deadline passed waiting for {n} items; got {describe(got)}") from e
    raise AssertionError(f"subscription ended after {describe(got)}; wanted {n} items")


def streams_unimplemented(b) -> str | None:
    """None when the broker serves Streams.Append; else why the Streams tests must skip."""
    client = connect(b)
    try:
        client.append_to_stream(unique_stream("heraldprobe"), current_version=StreamState.NO_STREAM,
                                events=new("HeraldProbe"), timeout=CALL_TIMEOUT_S)
    except GrpcError as e:
        if "UNIMPLEMENTED" in str(e):
            return ("the broker's event store does not serve Streams.Append yet (UNIMPLEMENTED): "
                    "these tests run once the Streams service lands")
        raise
    finally:
        client.close()
    return None


@contextlib.contextmanager
def module_eventstore_broker(tmp_path_factory, *extra_args: str) -> Iterator[Broker]:
    """One broker with the event store listener for a whole module (tests use unique
    stream names and positions taken at their start). A broker that died on its own
    fails the module's last test at teardown."""
    root = tmp_path_factory.mktemp("eventstore")
    made: list[Broker] = []

    def factory(extra_args=None, **_ignored) -> Broker:
        b = Broker(data_dir=root / f"data{len(made)}", log_path=root / f"broker{len(made)}.log",
                   extra_args=extra_args)
        made.append(b)
        b.start()
        return b

    try:
        yield eventstore_broker(factory, *extra_args)
    finally:
        crashed = [f"broker {b.bootstrap} exited with code {b.proc.returncode}:\n{b.stderr_tail(120)}"
                   for b in made if b.died_unexpectedly()]
        for b in made:
            b.stop()
        if crashed:
            pytest.fail("herald died during the module:\n" + "\n\n".join(crashed), pytrace=False)


# ------------------------------------------------------------------ eventsourcing
# The aggregate and application the `eventsourcing` test saves. They live at module
# level because eventsourcing records `module:Class` topics and resolves them on load.
try:
    from dataclasses import dataclass
    from uuid import NAMESPACE_URL, UUID, uuid5

    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    HAVE_EVENTSOURCING = True
except ImportError:  # pragma: no cover - installed from tests/requirements.txt
    HAVE_EVENTSOURCING = False

if HAVE_EVENTSOURCING:

    class Dog(Aggregate):
        INITIAL_VERSION = 0  # KurrentDB streams start at revision 0

        @staticmethod
        def create_id(name: str) -> UUID:
            return uuid5(NAMESPACE_URL, f"/herald-tests/dogs/{name}")

        @dataclass(frozen=True)
        class Registered(Aggregate.Created):
            name: str

        @dataclass(frozen=True)
        class TrickAdded(Aggregate.Event):
            trick: str

        @event(Registered)
        def __init__(self, name: str) -> None:
            self.name = name
            self.tricks: list[str] = []

        @event(TrickAdded)
        def add_trick(self, trick: str) -> None:
            self.tricks.append(trick)

    class TrainingSchool(Application):
        def register(self, name: str) -> int:
            recordings = self.save(Dog(name))
            return recordings[-1].notification.id

        def add_trick(self, name: str, trick: str) -> int:
            dog = self.repository.get(Dog.create_id(name))
            dog.add_trick(trick)
            return self.save(dog)[-1].notification.id

        def details(self, name: str) -> tuple[str, tuple[str, ...]]:
            dog = self.repository.get(Dog.create_id(name))
            return dog.name, tuple(dog.tricks)
