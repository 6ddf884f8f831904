"""Persistent subscriptions (KurrentDB's competing consumers) through kurrentdbclient,
against the real herald binary: create / read / ack / nack (retry, park, skip) /
replay parked / info / list / update / delete, to a stream, to `$all` with a filter and
to a category, with several consumers and across a kill -9 of the broker.

Herald runs them on its work-queue engine, so the parked stream is real: parked events
are link events of `$persistentsubscription-<stream>::<group>-parked`.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid

import pytest
from kurrentdbclient import StreamState
from kurrentdbclient.exceptions import AlreadyExistsError, NotFoundError

from eventstore_support import (CALL_TIMEOUT_S, connect, eventstore_broker, module_eventstore_broker, new, read,
                                tag, unique_stream)

pytestmark = pytest.mark.timeout(120)

# How long a test waits for events a persistent subscription should deliver.
DELIVERY_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def es(tmp_path_factory):
    with module_eventstore_broker(tmp_path_factory) as b:
        yield b


@pytest.fixture
def client(es):
    c = connect(es)
    yield c
    c.close()


class Reader:
    """One consumer: a thread iterating the subscription into a queue, so a test can
    take events with a deadline, ack or nack them, and stop."""

    def __init__(self, sub, auto_ack: bool = False):
        self.sub = sub
        self.auto_ack = auto_ack
        self.events: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for event in self.sub:
                if self.auto_ack:
                    self.sub.ack(event)
                self.events.put(event)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.error = e

    def take(self, n: int, timeout: float = DELIVERY_TIMEOUT_S) -> list:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.events.get(timeout=left))
            except queue.Empty:
                break
        return out

    def nothing_more(self, wait: float = 1.5) -> bool:
        try:
            self.events.get(timeout=wait)
            return False
        except queue.Empty:
            return True

    def stop(self):
        self.sub.stop()
        self.thread.join(timeout=10)


def wait_connections(client, group, stream, n):
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        if len(client.get_subscription_info(group, stream, timeout=CALL_TIMEOUT_S).connections) == n:
            return
        time.sleep(0.05)
    pytest.fail(f"{n} consumers never connected to {stream}::{group}")


def append_events(client, stream, types, state=StreamState.ANY):
    return client.append_to_stream(stream, current_version=state,
                                   events=[new(t, data=f'{{"n":{i}}}'.encode()) for i, t in enumerate(types)],
                                   timeout=CALL_TIMEOUT_S)


def read_sub(client, group, stream=None, **kw):
    kw.setdefault("timeout", 60)
    if stream is None:
        return client.read_subscription_to_all(group, **kw)
    return client.read_subscription_to_stream(group, stream, **kw)


def test_three_consumers_share_a_stream_each_event_once(client):
    stream = unique_stream("orders")
    append_events(client, stream, ["OrderPlaced"] * 3)
    client.create_subscription_to_stream("workers", stream, consumer_strategy="RoundRobin",
                                         from_end=False, timeout=CALL_TIMEOUT_S)
    readers = [Reader(read_sub(client, "workers", stream), auto_ack=True) for _ in range(3)]
    try:
        wait_connections(client, "workers", stream, 3)
        append_events(client, stream, ["OrderPlaced"] * 27)
        got = {i: [] for i in range(3)}
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while sum(len(v) for v in got.values()) < 30 and time.monotonic() < deadline:
            for i, r in enumerate(readers):
                got[i].extend(r.take(30, timeout=0.2))
        positions = sorted(e.stream_position for v in got.values() for e in v)
        assert positions == list(range(30)), positions
        assert all(got[i] for i in range(3)), {i: len(v) for i, v in got.items()}
        # Live events after they caught up are shared too, and acked ones never come back.
        append_events(client, stream, ["OrderPlaced"] * 6)
        late = []
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while len(late) < 6 and time.monotonic() < deadline:
            for r in readers:
                late.extend(r.take(6, timeout=0.2))
        assert sorted(e.stream_position for e in late) == list(range(30, 36))
        assert all(r.nothing_more(1.0) for r in readers)
        assert all(e.retry_count == 0 for v in got.values() for e in v)
    finally:
        for r in readers:
            r.stop()


def test_nack_retry_redelivers_then_parks_after_max_retries_and_replay_brings_it_back(client):
    stream = unique_stream("payments")
    append_events(client, stream, ["PaymentCaptured", "PaymentCaptured"])
    client.create_subscription_to_stream("g", stream, max_retry_count=2, timeout=CALL_TIMEOUT_S)
    r = Reader(read_sub(client, "g", stream))
    try:
        first = r.take(2)
        assert [e.stream_position for e in first] == [0, 1]
        r.sub.ack(first[1])
        bad = first[0]
        seen = [bad.retry_count]
        for _ in range(2):
            r.sub.nack(bad, action="retry")
            (again,) = r.take(1)
            assert again.id == bad.id and again.stream_position == 0
            seen.append(again.retry_count)
            bad = again
        assert seen == [0, 1, 2]
        # The third failure is past max_retry_count=2: parked, not delivered again.
        r.sub.nack(bad, action="retry")
        assert r.nothing_more(1.5)
        parked = f"$persistentsubscription-{stream}::g-parked"
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        links = []
        while not links and time.monotonic() < deadline:
            try:
                links = read(client, parked, resolve_links=True)
            except NotFoundError:
                time.sleep(0.1)
        assert len(links) == 1
        assert links[0].id == bad.id and links[0].stream_name == stream  # resolved to the event
        assert links[0].link is not None and links[0].link.type == "$>"
        info = client.get_subscription_info("g", stream, timeout=CALL_TIMEOUT_S)
        assert info.parked_message_count == 1
        assert info.max_retry_count == 2
        # Replay: delivered again as new, and the parked stream is emptied.
        client.replay_parked_events("g", stream, timeout=CALL_TIMEOUT_S)
        (back,) = r.take(1)
        assert back.id == bad.id and back.retry_count == 0
        r.sub.ack(back)
        assert r.nothing_more(1.0)
        assert client.get_subscription_info("g", stream, timeout=CALL_TIMEOUT_S).parked_message_count == 0
    finally:
        r.stop()


def test_nack_park_and_skip(client):
    stream = unique_stream("inventory")
    append_events(client, stream, ["A", "B", "C"])
    client.create_subscription_to_stream("g", stream, timeout=CALL_TIMEOUT_S)
    r = Reader(read_sub(client, "g", stream))
    try:
        a, b, c = r.take(3)
        r.sub.nack(a, action="park")
        r.sub.nack(b, action="skip")
        r.sub.ack(c)
        assert r.nothing_more(1.5)
        parked = f"$persistentsubscription-{stream}::g-parked"
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        links = []
        while not links and time.monotonic() < deadline:
            try:
                links = read(client, parked)
            except NotFoundError:
                time.sleep(0.1)
        assert [link.type for link in links] == ["$>"]
        assert links[0].data == f"0@{stream}".encode()
    finally:
        r.stop()


def test_unacked_events_come_back_after_the_message_timeout(client):
    stream = unique_stream("slow")
    append_events(client, stream, ["E"])
    client.create_subscription_to_stream("g", stream, message_timeout=1.0, timeout=CALL_TIMEOUT_S)
    r = Reader(read_sub(client, "g", stream))
    try:
        (e,) = r.take(1)
        (again,) = r.take(1, timeout=10)
        assert again.id == e.id and again.retry_count == 1
        r.sub.ack(again)
        assert r.nothing_more(2.0)
    finally:
        r.stop()


def test_a_filtered_subscription_to_all_from_start(client):
    t = tag()
    s1, s2 = unique_stream("a"), unique_stream("b")
    append_events(client, s1, [f"{t}Placed", "Other", f"{t}Shipped"])
    append_events(client, s2, [f"{t}Placed", "Other"])
    client.create_subscription_to_all("g", filter_include=[f"{t}.*"], timeout=CALL_TIMEOUT_S)
    r = Reader(read_sub(client, "g"), auto_ack=True)
    try:
        got = r.take(3)
        assert sorted((e.stream_name, e.type) for e in got) == sorted(
            [(s1, f"{t}Placed"), (s1, f"{t}Shipped"), (s2, f"{t}Placed")])
        assert [e.commit_position for e in got] == sorted(e.commit_position for e in got)
        append_events(client, s2, [f"{t}Shipped", "Other"])
        (live,) = r.take(1)
        assert (live.stream_name, live.type) == (s2, f"{t}Shipped")
        assert r.nothing_more(1.0)
    finally:
        r.stop()


@pytest.mark.parametrize("resolve", [True, False])
def test_a_category_subscription_pins_streams(client, resolve):
    cat = tag()
    streams = [f"{cat}-{i}" for i in range(16)]
    client.create_subscription_to_stream("g", f"$ce-{cat}", resolve_links=resolve,
                                         consumer_strategy="Pinned", timeout=CALL_TIMEOUT_S)
    readers = [Reader(read_sub(client, "g", f"$ce-{cat}"), auto_ack=True) for _ in range(2)]
    try:
        wait_connections(client, "g", f"$ce-{cat}", 2)
        for s in streams:
            append_events(client, s, ["E"] * 2)
        got = []
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while len(got) < 32 and time.monotonic() < deadline:
            for i, r in enumerate(readers):
                got.extend((i, e) for e in r.take(32, timeout=0.2))
        assert len(got) == 32
        def origin(e):
            # Unresolved, the event is the link: "<revision>@<stream>".
            if resolve:
                return (e.stream_name, e.stream_position)
            revision, name = e.data.decode().split("@", 1)
            return (name, int(revision))
        assert sorted(origin(e) for _, e in got) == sorted((s, p) for s in streams for p in range(2))
        if resolve:
            assert all(e.link is not None and e.link.stream_name == f"$ce-{cat}" for _, e in got)
        else:
            assert all(e.type == "$>" and e.stream_name == f"$ce-{cat}" for _, e in got)
        owner = {}
        for i, e in got:
            owner.setdefault(origin(e)[0], set()).add(i)
        assert len(owner) == 16
        # Sixteen streams hashed over two consumers: both get some (all on one: 1 in 32,768).
        assert {i for i, _ in got} == {0, 1}
        assert all(len(v) == 1 for v in owner.values()), owner
    finally:
        for r in readers:
            r.stop()


def test_manage_create_exists_info_list_update_delete(client):
    stream = unique_stream("admin")
    append_events(client, stream, ["E"] * 3)
    client.create_subscription_to_stream("g", stream, stream_position=1, timeout=CALL_TIMEOUT_S)
    with pytest.raises(AlreadyExistsError):
        client.create_subscription_to_stream("g", stream, timeout=CALL_TIMEOUT_S)
    info = client.get_subscription_info("g", stream, timeout=CALL_TIMEOUT_S)
    assert (info.event_source, info.group_name, info.start_from) == (stream, "g", "1")
    assert info.consumer_strategy == "DispatchToSingle"
    assert stream in [i.event_source for i in client.list_subscriptions(timeout=CALL_TIMEOUT_S)]
    assert [i.group_name for i in client.list_subscriptions_to_stream(stream, timeout=CALL_TIMEOUT_S)] == ["g"]
    r = Reader(read_sub(client, "g", stream), auto_ack=True)
    try:
        assert [e.stream_position for e in r.take(2)] == [1, 2]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            info = client.get_subscription_info("g", stream, timeout=CALL_TIMEOUT_S)
            if info.connections and info.last_checkpointed_event_position == "2":
                break
            time.sleep(0.1)
        assert len(info.connections) == 1 and info.last_known_event_position == "2"
        assert info.last_checkpointed_event_position == "2"
    finally:
        r.stop()
    client.update_subscription_to_stream("g", stream, max_retry_count=3, timeout=CALL_TIMEOUT_S)
    assert client.get_subscription_info("g", stream, timeout=CALL_TIMEOUT_S).max_retry_count == 3
    client.delete_subscription("g", stream, timeout=CALL_TIMEOUT_S)
    with pytest.raises(NotFoundError):
        client.get_subscription_info("g", stream, timeout=CALL_TIMEOUT_S)
    with pytest.raises(NotFoundError):
        client.delete_subscription("g", stream, timeout=CALL_TIMEOUT_S)


def test_reading_a_missing_subscription_is_not_found(client):
    with pytest.raises(NotFoundError):
        sub = client.read_subscription_to_stream("nope", unique_stream("x"), timeout=CALL_TIMEOUT_S)
        next(iter(sub))


def test_acked_events_stay_acked_across_kill_9(broker_factory):
    es = eventstore_broker(broker_factory)
    client = connect(es)
    stream = unique_stream("durable")
    append_events(client, stream, ["E"] * 20)
    client.create_subscription_to_stream("g", stream, timeout=CALL_TIMEOUT_S)
    r = Reader(read_sub(client, "g", stream))
    events = r.take(20)
    assert len(events) == 20
    for e in events[:12]:
        r.sub.ack(e)
    # Acks are batched by the client; give them a moment to reach the broker.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if client.get_subscription_info("g", stream, timeout=CALL_TIMEOUT_S).last_checkpointed_event_position == "11":
            break
        time.sleep(0.1)
    es.kill()
    es.start()
    client.close()
    client2 = connect(es)
    try:
        r2 = Reader(read_sub(client2, "g", stream), auto_ack=True)
        try:
            again = r2.take(8)
            assert [e.stream_position for e in again] == list(range(12, 20))
            assert r2.nothing_more(1.5)
        finally:
            r2.stop()
    finally:
        client2.close()
