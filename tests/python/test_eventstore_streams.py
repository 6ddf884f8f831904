"""The event store's Streams service (issue 13) through KurrentDB's own Python client,
kurrentdbclient, unchanged, and the `eventsourcing` library's KurrentDB persistence
module on top of it.

The whole module skips while the broker answers Streams.Append with UNIMPLEMENTED (one
probe append at module setup), so it can wait in the tree for the service and starts
running the day it lands.

What the tests hold herald to is what KurrentDB does as its clients see it, including
what kurrentdbclient's own test suite (run against real KurrentDB servers) asserts:
- expected revisions any / no_stream / stream_exists / exact; a conflict reports the
  current revision (WrongCurrentVersionError.actual_version, NO_STREAM for none);
- a retried append of the same event ids at the same expected revision succeeds with
  the original commit position and writes nothing (a prefix of the written events too;
  ids that only partly match are a conflict);
- an append's commit position is that of its last event, commit == prepare, and it is
  the position the event has in `$all` (herald: the record's offset + 1, so one
  append's events have consecutive positions);
- `$all` read forwards from a position includes the event at it; read backwards from a
  position it does not (kurrentdbclient's suite: "backwards here doesn't include event
  at commit position"); a catch-up subscription from a position or a revision starts
  after it;
- regex filters are searched, not fully matched (the client anchors them itself, and
  its default exclude filter `^(?!(\\$.+$|PersistentConfig\\d+$|Result$))` only works so);
- a soft-deleted stream reads as not found and continues from the next revision when
  appended to again; a tombstoned stream can never be read or written again;
- system streams hold links: read with resolve_links the event is the original (its
  stream, revision, id, position) and `link` the `$>` event in the system stream; read
  without it, the `$>` link events themselves, data `<revision>@<stream>`.

Every test uses its own streams and event types; the `$all` and system-stream tests
compare against positions taken at their start (one broker serves the module; the
crash test has its own).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import threading
import time
import uuid

import grpc
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from kurrentdbclient import DEFAULT_EXCLUDE_FILTER, Checkpoint, NewEvent, StreamState
from kurrentdbclient.exceptions import (
    KurrentDBClientError,
    NotFoundError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)
from kurrentdbclient.protos.v1 import shared_pb2

from eventstore_support import (
    CALL_TIMEOUT_S,
    HAVE_EVENTSOURCING,
    SUBSCRIPTION_TIMEOUT_S,
    connect,
    describe,
    eventstore_broker,
    log_end,
    module_eventstore_broker,
    new,
    read,
    read_all,
    read_or_empty,
    streams_unimplemented,
    supported_methods_class,
    tag,
    take,
    target,
    unique_stream,
    uri,
)
from herald_support import unique, wait_until

pytestmark = pytest.mark.timeout(90)

STREAMS_SERVICE = "event_store.client.streams.streams"
# kill -9 cycles of the crash test (each a fraction of a second of appends).
CRASH_CYCLES = int(os.environ.get("HERALD_ES_CRASH_CYCLES", "5"))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def es(tmp_path_factory):
    with module_eventstore_broker(tmp_path_factory) as b:
        yield b


@pytest.fixture(scope="module", autouse=True)
def streams_served(es):
    reason = streams_unimplemented(es)
    if reason:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def shared_broker_watch(request, es):
    """The shared broker must survive every test; on a failure show its log."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"----- herald log (shared event store broker, {es.log_path}) -----\n{es.stderr_tail(120)}")
    if not es.is_running():
        pytest.fail(f"the shared broker died during this test:\n{es.stderr_tail(120)}", pytrace=False)


@pytest.fixture
def client(es):
    c = connect(es)
    yield c
    c.close()


def append(client, stream, events, current_version):
    return client.append_to_stream(stream, current_version=current_version, events=events,
                                   timeout=CALL_TIMEOUT_S)


def as_path(path: str, events):
    """A list of events as the append path under test sends them: "single" sends one
    event per call (Streams.Append), "batch" sends a list (Streams.BatchAppend)."""
    if path == "single":
        assert len(events) == 1
        return events[0]
    return list(events)


def ids(events) -> list:
    return [e.id for e in events]


# ------------------------------------------------------------------ ServerFeatures


def test_server_features_list_the_streams_methods(es):
    answer_type = supported_methods_class()
    with grpc.insecure_channel(target(es)) as channel:
        call = channel.unary_unary(
            "/event_store.client.server_features.ServerFeatures/GetSupportedMethods",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=answer_type.FromString,
        )
        answer = call(shared_pb2.Empty(), timeout=CALL_TIMEOUT_S)
    streams = {m.method_name for m in answer.methods if m.service_name == STREAMS_SERVICE}
    # The Node and Rust clients use BatchAppend only when it is listed here.
    assert streams >= {"append", "batchappend", "read", "delete", "tombstone"}, streams


# ------------------------------------------------------------------ appends


@pytest.mark.parametrize("path", ["single", "batch"])
def test_every_expected_revision_kind_appends(client, path):
    stream = unique_stream("kinds")
    written = []
    positions = []
    for current_version in [StreamState.NO_STREAM, StreamState.ANY, StreamState.EXISTS, 2, StreamState.ANY]:
        e = new("Kind", json.dumps({"n": len(written)}).encode())
        positions.append(append(client, stream, as_path(path, [e]), current_version))
        written.append(e)
    # ANY also creates a stream.
    other = unique_stream("kinds")
    first = new("Kind")
    append(client, other, as_path(path, [first]), StreamState.ANY)

    got = read(client, stream)
    assert ids(got) == ids(written)
    assert [e.stream_position for e in got] == [0, 1, 2, 3, 4]
    assert [e.commit_position for e in got] == positions
    assert positions == sorted(positions) and len(set(positions)) == 5
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) == 4
    assert ids(read(client, other)) == [first.id]


@pytest.mark.parametrize("path", ["single", "batch"])
def test_conflicts_report_the_current_revision(client, path):
    stream = unique_stream("conflict")
    written = [new("Conflict"), new("Conflict")]
    append(client, stream, written, StreamState.NO_STREAM)  # revisions 0 and 1
    missing = unique_stream("conflict")

    cases = [
        (stream, StreamState.NO_STREAM, 1),    # no_stream, but it exists
        (stream, 0, 1),                        # an old revision
        (stream, 5, 1),                        # a revision it never had
        (missing, 0, StreamState.NO_STREAM),   # a revision of a stream that does not exist
        (missing, StreamState.EXISTS, StreamState.NO_STREAM),  # stream_exists, but it does not
    ]
    for name, expected, actual in cases:
        with pytest.raises(WrongCurrentVersionError) as e:
            append(client, name, as_path(path, [new("Refused")]), expected)
        assert e.value.actual_version == actual, (name == stream, expected, e.value)
        assert e.value.expected_version == expected

    # Nothing refused was written.
    got = read(client, stream)
    assert ids(got) == ids(written)
    with pytest.raises(NotFoundError):
        read(client, missing)
    assert client.get_current_version(missing, timeout=CALL_TIMEOUT_S) is StreamState.NO_STREAM


def test_a_retried_batch_append_is_idempotent(client):
    stream = unique_stream("idem")
    e1, e2, e3 = new("Idem", b'{"n":1}'), new("Idem", b'{"n":2}'), new("Idem", b'{"n":3}')
    first = append(client, stream, [e1, e2], StreamState.NO_STREAM)
    # The same ids at the same expected revision: success, the original position, no copy.
    assert append(client, stream, [e1, e2], StreamState.NO_STREAM) == first
    third = append(client, stream, [e3], 1)
    assert append(client, stream, [e3], 1) == third
    got = read(client, stream)
    assert ids(got) == [e1.id, e2.id, e3.id]
    # A prefix of what was written there is a retry too: the position of its last event.
    assert append(client, stream, [e1], StreamState.NO_STREAM) == got[0].commit_position
    assert append(client, stream, [e2, e3], 0) == third
    # Ids that only partly match what is there are a conflict, not a retry.
    with pytest.raises(WrongCurrentVersionError) as e:
        append(client, stream, [e2, e3, new("Idem")], 0)
    assert e.value.actual_version == 2
    assert ids(read(client, stream)) == [e1.id, e2.id, e3.id]
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) == 2


def test_a_retried_single_append_is_idempotent(client):
    stream = unique_stream("idem1")
    e1, e2, e3 = new("Idem"), new("Idem"), new("Idem")
    p1 = append(client, stream, e1, StreamState.NO_STREAM)
    assert append(client, stream, e1, StreamState.NO_STREAM) == p1
    p2 = append(client, stream, e2, 0)
    assert append(client, stream, e2, 0) == p2
    # With `any`, a retry of the last write is recognised too.
    p3 = append(client, stream, e3, StreamState.ANY)
    assert append(client, stream, e3, StreamState.ANY) == p3
    got = read(client, stream)
    assert ids(got) == [e1.id, e2.id, e3.id]
    assert [e.commit_position for e in got] == [p1, p2, p3]


def test_commit_positions_are_monotonic_consecutive_and_match_reads(client):
    t = tag()
    streams = [unique_stream(t) for _ in range(3)]
    batches = []  # (stream, events, position returned)
    for i, size in enumerate([1, 3, 2, 1, 3]):
        stream = streams[i % 3]
        events = [new(f"{t}Pos", json.dumps({"i": i, "j": j}).encode()) for j in range(size)]
        batches.append((stream, events, append(client, stream, events if size > 1 else events[0],
                                               StreamState.ANY)))
    returned = [p for _, _, p in batches]
    assert returned == sorted(returned) and len(set(returned)) == len(returned)

    by_id = {}
    for stream in streams:
        for e in read(client, stream):
            assert e.commit_position == e.prepare_position
            by_id[e.id] = e
    for stream, events, position in batches:
        got = [by_id[e.id] for e in events]
        # An append's position is its last event's; its events are consecutive in $all.
        assert got[-1].commit_position == position
        assert [g.commit_position for g in got] == list(range(position - len(events) + 1, position + 1))
        assert {g.stream_name for g in got} == {stream}

    first = by_id[batches[0][1][0].id].commit_position
    in_all = read_all(client, commit_position=first)
    assert [e.id for e in in_all] == [e.id for _, events, _ in batches for e in events]
    assert [e.commit_position for e in in_all] == [by_id[e.id].commit_position for e in in_all]
    assert client.get_commit_position(timeout=CALL_TIMEOUT_S) == returned[-1]


# ------------------------------------------------------------------ reading streams


def test_read_a_stream_forwards_and_backwards_from_a_revision_with_limits(client):
    stream = unique_stream("read")
    events = [new("Read", json.dumps({"n": i}).encode()) for i in range(10)]
    append(client, stream, events[:1], StreamState.NO_STREAM)
    append(client, stream, events[1:6], 0)
    append(client, stream, events[6:], 5)

    def revisions(**kw):
        got = read(client, stream, **kw)
        for e in got:
            assert e.id == events[e.stream_position].id and e.data == events[e.stream_position].data
        return [e.stream_position for e in got]

    assert revisions() == list(range(10))
    assert revisions(backwards=True) == list(range(9, -1, -1))
    assert revisions(stream_position=3) == list(range(3, 10))
    assert revisions(stream_position=3, limit=4) == [3, 4, 5, 6]
    assert revisions(limit=2) == [0, 1]
    assert revisions(stream_position=6, backwards=True) == [6, 5, 4, 3, 2, 1, 0]
    assert revisions(stream_position=6, backwards=True, limit=3) == [6, 5, 4]
    assert revisions(backwards=True, limit=1) == [9]
    assert revisions(stream_position=9) == [9]
    assert revisions(stream_position=10) == []  # past the end: empty, not "not found"
    assert revisions(stream_position=0, backwards=True) == [0]
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) == 9


def test_reading_a_missing_stream_is_not_found(client):
    stream = unique_stream("missing")
    for kw in [{}, {"backwards": True}, {"stream_position": 1}, {"stream_position": 1, "backwards": True},
               {"limit": 10}, {"backwards": True, "limit": 10}]:
        with pytest.raises(NotFoundError):
            read(client, stream, **kw)
    with pytest.raises(NotFoundError):
        list(client.read_stream(stream, timeout=CALL_TIMEOUT_S))
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) is StreamState.NO_STREAM
    assert client.get_stream_metadata(stream, timeout=CALL_TIMEOUT_S) == ({}, StreamState.NO_STREAM)


def test_event_fields_round_trip(client):
    stream = unique_stream("fields")
    binary = NewEvent(type="Binary.Event-v2", data=bytes(range(256)) + b"\x00tail",
                      metadata=b"\x00\xffnot json", content_type="application/octet-stream", id=uuid.uuid4())
    jsonish = NewEvent(type="JsonEvent", data=json.dumps({"k": "v", "n": [1, 2]}).encode(),
                       metadata=json.dumps({"$correlationId": str(uuid.uuid4())}).encode())
    empty = NewEvent(type="Empty", data=b"")
    before = datetime.datetime.now(datetime.timezone.utc)
    p1 = append(client, stream, binary, StreamState.NO_STREAM)
    p3 = append(client, stream, [jsonish, empty], 0)
    after = datetime.datetime.now(datetime.timezone.utc)

    got = read(client, stream)
    assert len(got) == 3
    for recorded, sent, revision in zip(got, [binary, jsonish, empty], range(3)):
        assert recorded.id == sent.id
        assert recorded.type == sent.type
        assert recorded.data == sent.data
        assert recorded.metadata == sent.metadata
        assert recorded.content_type == sent.content_type
        assert recorded.stream_name == stream
        assert recorded.stream_position == revision
        assert recorded.commit_position == recorded.prepare_position
        assert recorded.link is None
        # `created` is .NET ticks since the Unix epoch; it must be the append's time.
        assert recorded.recorded_at is not None
        assert before - datetime.timedelta(seconds=5) <= recorded.recorded_at <= after + datetime.timedelta(seconds=5)
    assert [e.commit_position for e in got] == [p1, p3 - 1, p3]
    # The same fields through $all.
    assert [(e.id, e.type, e.data, e.metadata, e.content_type, e.stream_name, e.stream_position)
            for e in read_all(client, commit_position=p1, limit=3)] == [
        (e.id, e.type, e.data, e.metadata, e.content_type, e.stream_name, e.stream_position) for e in got]


# ------------------------------------------------------------------ $all


def test_read_all_forwards_and_backwards_from_a_position(client):
    t = tag()
    a, b = unique_stream(t), unique_stream(t)
    a_events = [new(f"{t}A", json.dumps({"n": i}).encode()) for i in range(3)]
    b_events = [new(f"{t}B", json.dumps({"n": i}).encode()) for i in range(3)]
    pa = append(client, a, a_events, StreamState.NO_STREAM)
    pb = append(client, b, b_events, StreamState.NO_STREAM)
    a1, a2, a3 = a_events
    b1, b2, b3 = b_events
    start = read(client, a)[0].commit_position

    assert ids(read_all(client, commit_position=start)) == ids(a_events + b_events)
    # Forwards from a position includes the event at it.
    assert ids(read_all(client, commit_position=pa)) == [a3.id, b1.id, b2.id, b3.id]
    assert ids(read_all(client, commit_position=pb)) == [b3.id]
    assert ids(read_all(client, commit_position=start, limit=2)) == [a1.id, a2.id]
    assert ids(read_all(client, commit_position=pa, limit=3)) == [a3.id, b1.id, b2.id]
    # Backwards from the end, and from a position, which it does not include (KurrentDB).
    assert ids(read_all(client, backwards=True, limit=4)) == [b3.id, b2.id, b1.id, a3.id]
    assert ids(read_all(client, commit_position=pb, backwards=True, limit=3)) == [b2.id, b1.id, a3.id]
    assert ids(read_all(client, commit_position=pa, backwards=True, limit=2)) == [a2.id, a1.id]
    # What $all says of an event is what its stream says.
    in_all = read_all(client, commit_position=start, limit=6)
    in_streams = read(client, a) + read(client, b)
    assert [(e.stream_name, e.stream_position, e.commit_position) for e in in_all] == [
        (e.stream_name, e.stream_position, e.commit_position) for e in in_streams]
    assert client.get_commit_position(timeout=CALL_TIMEOUT_S) == pb


def test_read_all_filters_by_event_type_and_stream_name(client):
    t = tag()
    orders, invoices, other = f"{t}orders-1", f"{t}invoices-1", f"{t}other-1"
    written = [
        (orders, f"{t}Order.Created"), (orders, f"{t}Order.Shipped"), (invoices, f"{t}Invoice.Created"),
        (other, f"{t}Audit"), (orders, f"{t}Order.Created"), (invoices, f"{t}Invoice.Paid"),
    ]
    events = []
    start = None
    for stream, type_ in written:
        e = new(type_)
        p = append(client, stream, e, StreamState.ANY)
        start = start or p
        events.append((stream, e))

    def selected(**kw):
        return ids(read_all(client, commit_position=start, **kw))

    def where(pred):
        return [e.id for stream, e in events if pred(stream, e.type)]

    # Event type prefix (prefix=[...], empty regex).
    assert selected(filter_include=[f"{t}Order"], filter_by_prefix=True) == where(
        lambda s, ty: ty.startswith(f"{t}Order"))
    assert selected(filter_include=[f"{t}Invoice.", f"{t}Audit"], filter_by_prefix=True) == where(
        lambda s, ty: ty.startswith(f"{t}Invoice.") or ty == f"{t}Audit")
    # Event type regex: the client anchors it (^...$), so a bare prefix matches nothing.
    assert selected(filter_include=[f"{t}.*\\.Created"]) == where(lambda s, ty: ty.endswith(".Created"))
    assert selected(filter_include=[f"{t}Order"]) == []
    assert selected(filter_include=[f"{t}Invoice\\.(Created|Paid)"]) == where(lambda s, ty: "Invoice" in ty)
    assert selected(filter_exclude=(*DEFAULT_EXCLUDE_FILTER, f"{t}Order\\..*", f"{t}Audit")) == where(
        lambda s, ty: "Invoice" in ty)
    # Stream name prefix and regex.
    assert selected(filter_include=[f"{t}orders"], filter_by_stream_name=True, filter_by_prefix=True) == where(
        lambda s, ty: s == orders)
    assert selected(filter_include=[f"{t}(invoices|other)-1"], filter_by_stream_name=True) == where(
        lambda s, ty: s != orders)
    assert selected(filter_exclude=[r"\$.+", f"{t}orders-.*"], filter_by_stream_name=True) == where(
        lambda s, ty: s != orders)
    # Filters with a limit count matching events, backwards too.
    assert selected(filter_include=[f"{t}Order"], filter_by_prefix=True, limit=2) == where(
        lambda s, ty: ty.startswith(f"{t}Order"))[:2]
    backwards = ids(read_all(client, backwards=True, filter_include=[f"{t}Invoice"], filter_by_prefix=True))
    assert backwards == list(reversed(where(lambda s, ty: "Invoice" in ty)))


def test_a_plain_read_all_applies_the_default_exclude_filter(client):
    stream = unique_stream("defaultfilter")
    types = ["Visible", "$SystemLike", "PersistentConfig1", "Result", "ResultX", "NotResult"]
    events = [new(ty) for ty in types]
    append(client, stream, events, StreamState.NO_STREAM)
    start = read(client, stream)[0].commit_position
    # read_all() sends filter event_type regex ^(?!(\$.+$|PersistentConfig\d+$|Result$)).
    assert [e.type for e in read_all(client, commit_position=start)] == ["Visible", "ResultX", "NotResult"]
    assert [e.type for e in read_all(client, commit_position=start, filter_exclude=())] == types
    assert [e.type for e in read_all(client, backwards=True, limit=3)] == ["NotResult", "ResultX", "Visible"]
    assert client.get_commit_position(timeout=CALL_TIMEOUT_S) == read(client, stream)[-1].commit_position


# ------------------------------------------------------------------ catch-up subscriptions


def test_a_catch_up_subscription_to_a_stream_replays_then_goes_live(client):
    stream = unique_stream("substream")
    history = [new("Sub", json.dumps({"n": i}).encode()) for i in range(3)]
    append(client, stream, history, StreamState.NO_STREAM)
    sub = client.subscribe_to_stream(stream, include_caught_up=True, timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        assert sub.subscription_id
        got = take(sub, 4)
        assert describe(got)[3] == "CaughtUp", describe(got)
        assert ids(got[:3]) == ids(history)
        assert [e.stream_position for e in got[:3]] == [0, 1, 2]
        # Live: after it caught up. Another stream's events are not delivered.
        append(client, unique_stream("substream"), new("Sub"), StreamState.NO_STREAM)
        live = [new("Sub", b'{"live":1}'), new("Sub", b'{"live":2}')]
        p = append(client, stream, live, 2)
        got = take(sub, 2)
        assert ids(got) == ids(live), describe(got)
        assert [(e.stream_position, e.data) for e in got] == [(3, live[0].data), (4, live[1].data)]
        assert got[1].commit_position == p
    finally:
        sub.stop()


def test_a_catch_up_subscription_steps_over_more_than_a_page_hidden_by_max_age(client):
    # 600 events older than $maxAge, then one that is not: the hidden ones fill more than
    # a page of the server's reads, and the subscription must still reach the visible one.
    stream = unique_stream("subage")
    append(client, stream, [new("Old") for _ in range(600)], StreamState.NO_STREAM)
    client.set_stream_metadata(stream, metadata={"$maxAge": 1})
    time.sleep(1.5)
    fresh = new("Fresh")
    append(client, stream, fresh, 599)
    assert [e.stream_position for e in read(client, stream)] == [600]
    sub = client.subscribe_to_stream(stream, include_caught_up=True, timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        got = take(sub, 2)
        assert describe(got)[1] == "CaughtUp", describe(got)
        assert ids(got[:1]) == ids([fresh])
        assert got[0].stream_position == 600
    finally:
        sub.stop()


def test_a_stream_subscription_from_a_revision_starts_after_it(client):
    stream = unique_stream("subfrom")
    events = [new("From") for _ in range(3)]
    append(client, stream, events, StreamState.NO_STREAM)
    sub = client.subscribe_to_stream(stream, stream_position=1, timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        assert ids(take(sub, 1)) == [events[2].id]
        more = new("From")
        append(client, stream, more, 2)
        assert ids(take(sub, 1)) == [more.id]
    finally:
        sub.stop()

    # From the end: only what is appended after subscribing.
    sub = client.subscribe_to_stream(stream, from_end=True, include_caught_up=True,
                                     timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        assert describe(take(sub, 1)) == ["CaughtUp"]
        late = new("From")
        append(client, stream, late, 3)
        got = take(sub, 1)
        assert ids(got) == [late.id] and got[0].stream_position == 4
    finally:
        sub.stop()

    # A stream that does not exist yet: no error, its first event arrives.
    fresh = unique_stream("subfrom")
    sub = client.subscribe_to_stream(fresh, timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        first = new("From")
        append(client, fresh, first, StreamState.NO_STREAM)
        got = take(sub, 1)
        assert ids(got) == [first.id] and got[0].stream_position == 0
    finally:
        sub.stop()


def test_a_filtered_catch_up_subscription_to_all_replays_then_goes_live(client):
    t = tag()
    start = log_end(client)
    s1, s2 = unique_stream(t), unique_stream(t)
    history = [new(f"{t}Placed"), new(f"{t}Noise"), new(f"{t}Paid")]
    append(client, s1, history[:2], StreamState.NO_STREAM)
    append(client, s2, history[2], StreamState.NO_STREAM)
    sub = client.subscribe_to_all(commit_position=start, filter_include=[f"{t}P.*"], include_caught_up=True,
                                  timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        got = take(sub, 3)
        assert describe(got)[2] == "CaughtUp", describe(got)
        assert ids(got[:2]) == [history[0].id, history[2].id]
        live = [new(f"{t}Packed"), new(f"{t}Noise"), new(f"{t}Posted")]
        append(client, s1, live[0], 1)
        append(client, s2, live[1:], 0)
        got = take(sub, 2)
        assert ids(got) == [live[0].id, live[2].id], describe(got)
        assert [(e.stream_name, e.stream_position) for e in got] == [(s1, 2), (s2, 2)]
        assert got[0].commit_position < got[1].commit_position
    finally:
        sub.stop()


def test_a_subscription_to_all_from_a_position_starts_after_it(client):
    t = tag()
    stream = unique_stream(t)
    events = [new(f"{t}E") for _ in range(3)]
    p1 = append(client, stream, events[0], StreamState.NO_STREAM)
    append(client, stream, events[1:], 0)
    # Unfiltered but for the default exclude filter: nothing else is written meanwhile.
    sub = client.subscribe_to_all(commit_position=p1, timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        assert ids(take(sub, 2)) == ids(events[1:])
    finally:
        sub.stop()

    sub = client.subscribe_to_all(from_end=True, filter_include=[f"{t}.*"], include_caught_up=True,
                                  timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        assert describe(take(sub, 1)) == ["CaughtUp"]
        late = new(f"{t}Late")
        p = append(client, stream, late, 2)
        got = take(sub, 1)
        assert ids(got) == [late.id] and got[0].commit_position == p
    finally:
        sub.stop()


def test_a_filtered_subscription_to_all_sends_checkpoints(client):
    t = tag()
    start = log_end(client)
    stream = unique_stream(t)
    append(client, stream, [new(f"{t}Noise") for _ in range(20)], StreamState.NO_STREAM)
    end = log_end(client)
    # Nothing matches: the client asks for a checkpoint every window x multiplier events.
    sub = client.subscribe_to_all(commit_position=start, filter_include=[f"{t}Wanted"], include_checkpoints=True,
                                  window_size=5, checkpoint_interval_multiplier=1, timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        checkpoint = take(sub, 1)[0]
        assert isinstance(checkpoint, Checkpoint), describe([checkpoint])
        # A checkpoint is a position the subscriber may resume after without missing
        # anything: past its start, and not past what the server had examined.
        assert start < checkpoint.commit_position <= end
        assert checkpoint.prepare_position == checkpoint.commit_position
        wanted = new(f"{t}Wanted")
        p = append(client, stream, wanted, 19)
        got = take(sub, 1, skip_checkpoints=True)
        assert ids(got) == [wanted.id] and got[0].commit_position == p
    finally:
        sub.stop()


# ------------------------------------------------------------------ delete, tombstone


def test_soft_delete_then_reappend_continues_the_revisions(client):
    stream = unique_stream("softdel")
    old = [new("Old"), new("Old")]
    append(client, stream, old, StreamState.NO_STREAM)
    client.delete_stream(stream, current_version=1, timeout=CALL_TIMEOUT_S)
    with pytest.raises(NotFoundError):
        read(client, stream)
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) is StreamState.NO_STREAM
    # Deleting again with the same revision is accepted (KurrentDB).
    client.delete_stream(stream, current_version=1, timeout=CALL_TIMEOUT_S)
    with pytest.raises(WrongCurrentVersionError):
        append(client, stream, [new("New")], 0)

    first = new("New", b'{"n":1}')
    append(client, stream, [first], StreamState.NO_STREAM)
    got = read(client, stream)
    assert ids(got) == [first.id]
    assert got[0].stream_position == 2  # after the last revision before the delete
    second = new("New", b'{"n":2}')
    append(client, stream, second, 2)
    assert [(e.id, e.stream_position) for e in read(client, stream)] == [(first.id, 2), (second.id, 3)]
    assert [e.stream_position for e in read(client, stream, backwards=True)] == [3, 2]
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) == 3

    # Deleted again, with stream_exists.
    client.delete_stream(stream, current_version=StreamState.EXISTS, timeout=CALL_TIMEOUT_S)
    with pytest.raises(NotFoundError):
        read(client, stream)
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) is StreamState.NO_STREAM


def test_deleting_a_deleted_stream_expecting_it_exists_is_stream_deleted(client):
    # kurrentdbclient's suite against KurrentDB (test_stream_delete_expecting_stream_exists):
    # "Can't delete deleted stream, expecting stream exists, because it was deleted" =>
    # FAILED_PRECONDITION with "is deleted" in the message, not a WrongExpectedVersion.
    stream = unique_stream("deldel")
    append(client, stream, [new("D"), new("D")], StreamState.NO_STREAM)
    client.delete_stream(stream, current_version=StreamState.ANY, timeout=CALL_TIMEOUT_S)
    with pytest.raises(StreamIsDeletedError):
        client.delete_stream(stream, current_version=StreamState.EXISTS, timeout=CALL_TIMEOUT_S)
    with pytest.raises(NotFoundError):
        read(client, stream)


def test_delete_with_a_wrong_expected_revision_reports_the_current_one(client):
    stream = unique_stream("delwev")
    append(client, stream, [new("D"), new("D")], StreamState.NO_STREAM)
    with pytest.raises(WrongCurrentVersionError) as e:
        client.delete_stream(stream, current_version=0, timeout=CALL_TIMEOUT_S)
    assert e.value.actual_version == 1
    assert e.value.expected_version == 0
    with pytest.raises(WrongCurrentVersionError) as e:
        client.tombstone_stream(stream, current_version=7, timeout=CALL_TIMEOUT_S)
    assert e.value.actual_version == 1
    assert len(read(client, stream)) == 2  # nothing deleted


@pytest.mark.parametrize("expected", [0, StreamState.EXISTS, StreamState.NO_STREAM], ids=str)
def test_deleting_a_stream_that_never_existed_is_not_found(client, expected):
    # KurrentDB answers WrongExpectedVersion "... Actual version: -1", which the client
    # turns into NotFoundError; for no_stream too (kurrentdbclient's suite,
    # test_stream_delete_expecting_stream_exists, asserts exactly that).
    missing = unique_stream("delmissing")
    with pytest.raises(NotFoundError):
        client.delete_stream(missing, current_version=expected, timeout=CALL_TIMEOUT_S)
    if expected is not StreamState.NO_STREAM:
        with pytest.raises(NotFoundError):
            client.tombstone_stream(missing, current_version=expected, timeout=CALL_TIMEOUT_S)
    # Nothing was created by the refusal.
    append(client, missing, new("D"), StreamState.NO_STREAM)
    assert [e.stream_position for e in read(client, missing)] == [0]


def test_a_tombstoned_stream_can_never_be_read_or_written_again(client):
    stream = unique_stream("tomb")
    append(client, stream, [new("T"), new("T")], StreamState.NO_STREAM)
    client.tombstone_stream(stream, current_version=1, timeout=CALL_TIMEOUT_S)

    with pytest.raises(StreamIsDeletedError):
        read(client, stream)
    with pytest.raises(StreamIsDeletedError):
        read(client, stream, backwards=True, limit=1)
    with pytest.raises(StreamIsDeletedError):
        client.get_current_version(stream, timeout=CALL_TIMEOUT_S)
    # BatchAppend: StreamDeleted in the response body.
    for expected in (StreamState.ANY, StreamState.NO_STREAM, 1):
        with pytest.raises(StreamIsDeletedError):
            append(client, stream, [new("T")], expected)
    # Append: KurrentDB answers with the status FAILED_PRECONDITION "Event stream '<name>'
    # is deleted." (kurrentdbclient maps that by code alone, to FailedPreconditionError,
    # or to a plain KurrentDBClientError when the status carries rich details).
    with pytest.raises(KurrentDBClientError) as e:
        append(client, stream, new("T"), StreamState.ANY)
    assert "is deleted" in str(e.value) and not isinstance(e.value, WrongCurrentVersionError), repr(e.value)
    for expected in (1, StreamState.ANY):
        with pytest.raises(StreamIsDeletedError):
            client.tombstone_stream(stream, current_version=expected, timeout=CALL_TIMEOUT_S)
    with pytest.raises(StreamIsDeletedError):
        client.delete_stream(stream, current_version=StreamState.ANY, timeout=CALL_TIMEOUT_S)

    # A stream that never existed can be tombstoned with `any`, and is then deleted.
    never = unique_stream("tomb")
    client.tombstone_stream(never, current_version=StreamState.ANY, timeout=CALL_TIMEOUT_S)
    with pytest.raises(StreamIsDeletedError):
        append(client, never, [new("T")], StreamState.NO_STREAM)
    with pytest.raises(StreamIsDeletedError):
        read(client, never)


def test_the_metadata_of_a_tombstoned_stream_reads_as_deleted(client):
    # kurrentdbclient's suite against KurrentDB (test_stream_metadata_get_and_set): "Can't
    # get metadata after tombstoning stream, because stream is deleted" => reading
    # `$$<stream>` of a tombstoned stream fails with "is deleted" too.
    stream = unique_stream("tombmeta")
    append(client, stream, new("T"), StreamState.NO_STREAM)
    client.set_stream_metadata(stream, metadata={"owner": "x"}, current_version=StreamState.NO_STREAM)
    client.tombstone_stream(stream, current_version=StreamState.ANY, timeout=CALL_TIMEOUT_S)
    with pytest.raises(StreamIsDeletedError):
        client.get_stream_metadata(stream, timeout=CALL_TIMEOUT_S)


# ------------------------------------------------------------------ stream metadata


def test_stream_metadata_max_count_is_enforced_on_read(client):
    stream = unique_stream("maxcount")
    client.set_stream_metadata(stream, metadata={"$maxCount": 2}, current_version=StreamState.NO_STREAM)
    events = [new("M", json.dumps({"n": i}).encode()) for i in range(5)]
    append(client, stream, events[:3], StreamState.NO_STREAM)
    append(client, stream, events[3:], 2)
    assert [(e.stream_position, e.id) for e in read(client, stream)] == [(3, events[3].id), (4, events[4].id)]
    assert [e.stream_position for e in read(client, stream, stream_position=0)] == [3, 4]
    assert [e.stream_position for e in read(client, stream, backwards=True)] == [4, 3]
    assert [e.stream_position for e in read(client, stream, stream_position=2, backwards=True)] == []
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) == 4
    assert client.get_stream_metadata(stream, timeout=CALL_TIMEOUT_S) == ({"$maxCount": 2}, 0)
    # Raising the limit shows more again (nothing was removed, only hidden).
    client.set_stream_metadata(stream, metadata={"$maxCount": 4}, current_version=0)
    assert [e.stream_position for e in read(client, stream)] == [1, 2, 3, 4]


def test_stream_metadata_truncate_before_is_enforced_on_read(client):
    stream = unique_stream("tb")
    events = [new("TB") for _ in range(5)]
    append(client, stream, events, StreamState.NO_STREAM)
    client.set_stream_metadata(stream, metadata={"$tb": 3})
    assert [e.stream_position for e in read(client, stream)] == [3, 4]
    assert [e.stream_position for e in read(client, stream, stream_position=1, limit=1)] == [3]
    assert [e.stream_position for e in read(client, stream, backwards=True)] == [4, 3]
    more = new("TB")
    append(client, stream, more, 4)
    assert ids(read(client, stream)) == [events[3].id, events[4].id, more.id]


def test_stream_metadata_max_age_is_enforced_on_read(client):
    stream = unique_stream("maxage")
    client.set_stream_metadata(stream, metadata={"$maxAge": 1})
    old = new("Aged")
    append(client, stream, old, StreamState.NO_STREAM)
    time.sleep(2.2)
    fresh = new("Aged")
    append(client, stream, fresh, 0)
    assert ids(read_or_empty(client, stream)) == [fresh.id]
    assert client.get_current_version(stream, timeout=CALL_TIMEOUT_S) == 1


def test_custom_stream_metadata_round_trips_with_expected_versions(client):
    stream = unique_stream("meta")
    append(client, stream, new("Meta"), StreamState.NO_STREAM)
    start = log_end(client)
    metadata = {"$maxCount": 50, "owner": "team-a", "tags": ["x", "y"], "nested": {"n": 1, "ok": True}}
    client.set_stream_metadata(stream, metadata=metadata, current_version=StreamState.NO_STREAM)
    assert client.get_stream_metadata(stream, timeout=CALL_TIMEOUT_S) == (metadata, 0)
    changed = {**metadata, "owner": "team-b"}
    client.set_stream_metadata(stream, metadata=changed, current_version=0)
    assert client.get_stream_metadata(stream, timeout=CALL_TIMEOUT_S) == (changed, 1)
    with pytest.raises(WrongCurrentVersionError) as e:
        client.set_stream_metadata(stream, metadata=metadata, current_version=0)
    assert e.value.actual_version == 1
    assert client.get_stream_metadata(stream, timeout=CALL_TIMEOUT_S) == (changed, 1)
    # The metadata stream is an ordinary stream `$$<stream>` of `$metadata` events, in
    # $all (where the default exclude filter hides their type).
    meta_events = read(client, f"$${stream}")
    assert [(e.type, json.loads(e.data)) for e in meta_events] == [("$metadata", metadata), ("$metadata", changed)]
    in_all = [e for e in read_all(client, commit_position=start, filter_exclude=()) if e.stream_name == f"$${stream}"]
    assert ids(in_all) == ids(meta_events)
    assert [e for e in read_all(client, commit_position=start) if e.stream_name == f"$${stream}"] == []
    # The stream itself is untouched.
    assert len(read(client, stream)) == 1


# ------------------------------------------------------------------ system streams


def assert_links(client, system_stream: str, originals: list, *, filtered: bool = False):
    """`system_stream` links to `originals` (RecordedEvents read from their own streams),
    in order. filtered: the system stream has other entries too ($streams); compare
    only the links to `originals`' streams."""
    names = {e.stream_name for e in originals}
    resolved = read(client, system_stream, resolve_links=True)
    links = read(client, system_stream)
    if filtered:
        resolved = [e for e in resolved if e.stream_name in names]
        links = [e for e in links if e.data.decode(errors="replace").split("@", 1)[-1] in names]
    assert [(e.id, e.stream_name, e.stream_position, e.type, e.data) for e in resolved] == [
        (e.id, e.stream_name, e.stream_position, e.type, e.data) for e in originals], describe(resolved)
    assert [e.commit_position for e in resolved] == [e.commit_position for e in originals]
    # The link itself: a `$>` event of the system stream, at increasing revisions.
    assert all(e.link is not None and e.link.stream_name == system_stream and e.link.type == "$>"
               for e in resolved), [e.link for e in resolved]
    revisions = [e.link.stream_position for e in resolved]
    assert revisions == sorted(set(revisions))
    if not filtered:
        assert revisions == list(range(len(originals)))
    # Without resolve_links: the link events, data "<revision>@<stream>".
    assert [(e.stream_name, e.type, e.data) for e in links] == [
        (system_stream, "$>", f"{e.stream_position}@{e.stream_name}".encode()) for e in originals]
    assert [e.stream_position for e in links] == revisions
    if not filtered:
        last = read(client, system_stream, backwards=True, limit=1, resolve_links=True)
        assert ids(last) == [originals[-1].id]
        assert client.get_current_version(system_stream, timeout=CALL_TIMEOUT_S) == len(originals) - 1


def test_category_stream(client):
    cat = tag()
    s1, s2, s3, elsewhere = f"{cat}-1", f"{cat}-2", f"{cat}-x-y", f"{cat}x-1"
    for stream, n in [(s1, 1), (s2, 1), (elsewhere, 1), (s1, 2), (s3, 1)]:
        append(client, stream, [new("Cat") for _ in range(n)], StreamState.ANY)
    originals = sorted(read(client, s1) + read(client, s2) + read(client, s3), key=lambda e: e.commit_position)
    assert [e.stream_name for e in originals] == [s1, s2, s1, s1, s3]
    # The category is the part before the first '-': `{cat}-x-y` is in it, `{cat}x-1` is not.
    assert_links(client, f"$ce-{cat}", originals)
    assert [e.stream_name for e in read(client, f"$ce-{cat}x", resolve_links=True)] == [elsewhere]
    assert [e.stream_position for e in read(client, f"$ce-{cat}", resolve_links=True, stream_position=3)] == [2, 0]
    with pytest.raises(NotFoundError):
        read(client, f"$ce-{tag()}")


def test_event_type_stream(client):
    t = tag()
    a, b = unique_stream(t), unique_stream(t)
    append(client, a, [new(f"{t}Shipped"), new(f"{t}Other")], StreamState.NO_STREAM)
    append(client, b, new(f"{t}Shipped", b'{"b":1}'), StreamState.NO_STREAM)
    append(client, a, new(f"{t}Shipped", b'{"a":2}'), 1)
    originals = sorted([e for e in read(client, a) + read(client, b) if e.type == f"{t}Shipped"],
                       key=lambda e: e.commit_position)
    assert len(originals) == 3
    assert_links(client, f"$et-{t}Shipped", originals)
    assert_links(client, f"$et-{t}Other", [read(client, a)[1]])


def test_correlation_stream_gives_a_saga_chain_across_three_streams_in_order(client):
    t = tag()
    correlation = str(uuid.uuid4())
    order, payment, inventory = f"order-{t}", f"payment-{t}", f"inventory-{t}"

    def meta(causation, correlation_id=correlation):
        return json.dumps({"$correlationId": correlation_id, "$causationId": str(causation)}).encode()

    placed_id = uuid.uuid4()
    placed = NewEvent(type="OrderPlaced", data=b'{"sku":"x"}', metadata=meta(placed_id), id=placed_id)
    append(client, order, placed, StreamState.NO_STREAM)
    append(client, order, new("OrderNoted", metadata=b'{"note":"no correlation"}'), 0)
    captured = new("PaymentCaptured", metadata=meta(placed.id))
    append(client, payment, captured, StreamState.NO_STREAM)
    append(client, payment, new("PaymentAudited", metadata=meta(captured.id, str(uuid.uuid4()))), 0)
    reserved = new("InventoryReserved", metadata=meta(captured.id))
    append(client, inventory, reserved, StreamState.NO_STREAM)

    originals = [read(client, order)[0], read(client, payment)[0], read(client, inventory)[0]]
    assert ids(originals) == [placed.id, captured.id, reserved.id]
    assert_links(client, f"$bc-{correlation}", originals)
    # A subscriber to the chain sees the next step live.
    sub = client.subscribe_to_stream(f"$bc-{correlation}", stream_position=2, resolve_links=True,
                                     timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        shipped = new("OrderShipped", metadata=meta(reserved.id))
        append(client, order, shipped, 1)
        got = take(sub, 1)
        assert [(e.id, e.stream_name, e.stream_position) for e in got] == [(shipped.id, order, 2)]
    finally:
        sub.stop()


def test_correlation_stream_indexes_a_w3c_traceparent_trace_id(client):
    trace = uuid.uuid4().hex
    a, b = unique_stream("traced"), unique_stream("traced")
    for stream in (a, b):
        span = uuid.uuid4().hex[:16]
        append(client, stream, new("Traced", metadata=json.dumps({"traceparent": f"00-{trace}-{span}-01"}).encode()),
               StreamState.NO_STREAM)
    assert_links(client, f"$bc-{trace}", [read(client, a)[0], read(client, b)[0]])


def test_streams_stream_lists_each_new_stream_once_in_order(client):
    t = tag()
    names = [unique_stream(t) for _ in range(3)]
    append(client, names[0], new("S"), StreamState.NO_STREAM)
    append(client, names[1], [new("S"), new("S")], StreamState.NO_STREAM)
    append(client, names[0], new("S"), 0)  # not a new stream
    append(client, names[2], new("S"), StreamState.NO_STREAM)
    firsts = [read(client, n)[0] for n in names]
    assert_links(client, "$streams", firsts, filtered=True)


def test_a_category_subscription_goes_live(client):
    cat = tag()
    append(client, f"{cat}-1", new("C"), StreamState.NO_STREAM)
    sub = client.subscribe_to_stream(f"$ce-{cat}", resolve_links=True, include_caught_up=True,
                                     timeout=SUBSCRIPTION_TIMEOUT_S)
    try:
        got = take(sub, 2)
        assert describe(got)[1] == "CaughtUp" and got[0].stream_name == f"{cat}-1", describe(got)
        e = new("C")
        append(client, f"{cat}-2", e, StreamState.NO_STREAM)
        got = take(sub, 1)
        assert [(g.id, g.stream_name, g.link.stream_position if g.link else None) for g in got] == [
            (e.id, f"{cat}-2", 1)]
    finally:
        sub.stop()


# ------------------------------------------------------------------ concurrency


def test_eight_writers_race_on_one_stream_with_exact_revisions(es):
    stream = unique_stream("race")
    goal = 48  # revisions the stream reaches (it may overshoot by one batch)
    writers = 8
    wins = []  # (first revision, event ids, position, writer)
    conflicts = []
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(writers)

    def writer(i: int):
        c = connect(es)
        try:
            barrier.wait(10)
            known = -1  # the stream's last revision as this writer knows it
            while known < goal - 1:
                batch = [new("Raced", json.dumps({"w": i, "after": known}).encode()) for _ in range(1 + i % 2)]
                expected = StreamState.NO_STREAM if known < 0 else known
                try:
                    # Even writers use Append (one event), odd ones BatchAppend (two).
                    p = append(c, stream, batch[0] if len(batch) == 1 else batch, expected)
                except WrongCurrentVersionError as e:
                    actual = e.actual_version
                    if not isinstance(actual, int) or actual <= known:
                        with lock:
                            errors.append(f"writer {i} expected {expected}, told the stream is at {actual!r}")
                        return
                    with lock:
                        conflicts.append((i, expected, actual))
                    known = actual
                else:
                    with lock:
                        wins.append((known + 1, [e.id for e in batch], p, i))
                    known += len(batch)
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(f"writer {i}: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads), "a writer never finished"
    assert not errors, errors[:5]
    assert len(conflicts) >= writers - 1, "the writers never raced"

    client = connect(es)
    try:
        events = read(client, stream)
    finally:
        client.close()
    assert [e.stream_position for e in events] == list(range(len(events)))
    assert len({e.id for e in events}) == len(events), "an event was stored twice"
    assert len(events) >= goal
    # Exactly one append won each revision: the wins tile the stream with no gap or overlap.
    revision = 0
    for first, won_ids, position, i in sorted(wins):
        assert first == revision, f"writer {i} won revision {first} but the next free one was {revision}"
        assert [e.id for e in events[first:first + len(won_ids)]] == won_ids
        assert events[first + len(won_ids) - 1].commit_position == position
        revision += len(won_ids)
    assert revision == len(events), "the stream holds events no append was told it won"


def test_kill9_during_concurrent_appends_loses_nothing_acknowledged(broker_factory):
    b = eventstore_broker(broker_factory)
    t = tag()
    streams = [f"{t}-{i}" for i in range(4)]
    acked: dict[str, dict[int, tuple]] = {s: {} for s in streams}  # revision -> (id, data, position)
    rng = random.Random(13)

    setup = connect(b)
    tomb, soft = f"{t}tomb-1", f"{t}soft-1"
    append(setup, tomb, [new("T")], StreamState.NO_STREAM)
    setup.tombstone_stream(tomb, current_version=0, timeout=CALL_TIMEOUT_S)
    append(setup, soft, [new("S"), new("S")], StreamState.NO_STREAM)
    setup.delete_stream(soft, current_version=1, timeout=CALL_TIMEOUT_S)
    setup.close()

    def writer(stream: str, stop: threading.Event, uncertain: list, errors: list):
        c = connect(b)
        try:
            version = c.get_current_version(stream, timeout=CALL_TIMEOUT_S)
            known = -1 if version is StreamState.NO_STREAM else version
            while not stop.is_set():
                batch = [NewEvent(type="Crash", content_type="application/octet-stream",
                                  data=f"{stream}|{known + 1 + j}|".encode() + os.urandom(rng.randrange(1, 300)))
                         for j in range(rng.randrange(1, 4))]
                expected = StreamState.NO_STREAM if known < 0 else known
                try:
                    p = c.append_to_stream(stream, current_version=expected, events=batch, timeout=5)
                except WrongCurrentVersionError as e:
                    errors.append(f"{stream}: a lone writer got a conflict: {e!r}")
                    return
                except Exception:  # noqa: BLE001 - the kill; the batch may or may not be in
                    uncertain.append((stream, known + 1, batch))
                    return
                for j, e in enumerate(batch):
                    acked[stream][known + 1 + j] = (e.id, e.data, p - len(batch) + 1 + j)
                known += len(batch)
        except Exception as e:  # noqa: BLE001 - the kill before the first append
            if not stop.is_set():
                errors.append(f"{stream}: {e!r}")
        finally:
            c.close()

    def restart():
        b.start()
        c = connect(b)
        try:
            wait_until(lambda: c.get_current_version(streams[0], timeout=2) is not None, 30,
                       lambda: f"the event store did not answer after restart:\n{b.stderr_tail()}")
        finally:
            c.close()

    def verify(uncertain):
        c = connect(b)
        try:
            for stream in streams:
                events = read_or_empty(c, stream)
                assert [e.stream_position for e in events] == list(range(len(events))), stream
                by_revision = {e.stream_position: e for e in events}
                for revision, (id_, data, position) in acked[stream].items():
                    e = by_revision.get(revision)
                    assert e is not None, f"{stream}@{revision} was acknowledged and is gone"
                    assert (e.id, e.data, e.commit_position) == (id_, data, position), f"{stream}@{revision}"
                pending = [(first, batch) for s, first, batch in uncertain if s == stream]
                unacked = sorted(set(by_revision) - set(acked[stream]))
                for first, batch in pending:
                    present = [r for r in range(first, first + len(batch)) if r in by_revision]
                    assert present in ([], list(range(first, first + len(batch)))), (
                        f"{stream}: an append is half there after the crash: {present} of {first}..")
                    for j, e in enumerate(batch):
                        if present:
                            got = by_revision[first + j]
                            assert (got.id, got.data) == (e.id, e.data)
                            acked[stream][first + j] = (e.id, e.data, got.commit_position)
                            unacked.remove(first + j)
                assert unacked == [], f"{stream}: revisions {unacked} hold events nobody appended"
        finally:
            c.close()

    uncertain_total = 0
    for _cycle in range(CRASH_CYCLES):
        stop = threading.Event()
        uncertain: list = []
        errors: list = []
        threads = [threading.Thread(target=writer, args=(s, stop, uncertain, errors), daemon=True) for s in streams]
        for th in threads:
            th.start()
        time.sleep(rng.uniform(0.4, 0.9))
        b.kill()
        stop.set()
        for th in threads:
            th.join(20)
        assert not any(th.is_alive() for th in threads), "a writer hung after the kill"
        assert not errors, errors
        restart()
        verify(uncertain)
        uncertain_total += len(uncertain)
    total = sum(len(a) for a in acked.values())
    print(f"{CRASH_CYCLES} kill -9 cycles: {total} events acknowledged or found, "
          f"{uncertain_total} appends in flight at a kill")
    assert total >= 20 * CRASH_CYCLES, "too few appends acknowledged to prove anything"

    c = connect(b)
    try:
        # The index and the log agree: $all (the log) holds exactly what the streams say.
        in_all = read_all(c, filter_include=[f"{t}-"], filter_by_stream_name=True, filter_by_prefix=True)
        assert sorted((e.stream_name, e.stream_position, e.id, e.commit_position) for e in in_all) == sorted(
            (s, r, v[0], v[2]) for s in streams for r, v in acked[s].items())
        assert [e.commit_position for e in in_all] == sorted(e.commit_position for e in in_all)
        # Appends go on from where each stream was; deletes survived the crashes.
        for stream in streams:
            last = max(acked[stream], default=-1)
            append(c, stream, [new("After")], last if last >= 0 else StreamState.NO_STREAM)
            assert read(c, stream, backwards=True, limit=1)[0].stream_position == last + 1
        with pytest.raises(StreamIsDeletedError):
            read(c, tomb)
        with pytest.raises(StreamIsDeletedError):
            append(c, tomb, [new("T")], StreamState.ANY)
        with pytest.raises(NotFoundError):
            read(c, soft)
        append(c, soft, [new("S")], StreamState.NO_STREAM)
        assert [e.stream_position for e in read(c, soft)] == [2]
    finally:
        c.close()


# ------------------------------------------------------------------ other protocols, other libraries


def test_an_event_appended_over_grpc_is_a_kafka_record_of_the_eventstore_topic(es, client):
    stream = unique_stream("kafka")
    event = NewEvent(type="OrderPlaced", data=b'{"sku":"abc","qty":2}', metadata=b'{"m":1}')
    position = append(client, stream, event, StreamState.NO_STREAM)
    consumer = Consumer({"bootstrap.servers": es.bootstrap, "group.id": unique("es-kafka"),
                         "enable.auto.commit": False})
    try:
        topic = consumer.list_topics("eventstore", timeout=10).topics["eventstore"]
        assert topic.error is None and list(topic.partitions) == [0]
        # A $all position is the record's offset + 1.
        consumer.assign([TopicPartition("eventstore", 0, position - 1)])
        deadline = time.monotonic() + 15
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error():
                raise KafkaException(msg.error())
        assert msg is not None, "no record at the event's offset"
        assert (msg.offset(), msg.key(), msg.value()) == (position - 1, stream.encode(), event.data)
        values = [v for _k, v in (msg.headers() or [])]
        assert b"OrderPlaced" in values, msg.headers()
        assert str(event.id).encode() in values or event.id.bytes in values, msg.headers()
        assert b"application/json" in values and event.metadata in values, msg.headers()
    finally:
        consumer.close()


@pytest.mark.skipif(not HAVE_EVENTSOURCING, reason="eventsourcing / eventsourcing-kurrentdb not installed")
def test_eventsourcing_saves_reloads_and_refuses_a_concurrent_save(es, client):
    pytest.importorskip("eventsourcing_kurrentdb")
    from eventsourcing.persistence import IntegrityError

    from eventstore_support import Dog, TrainingSchool

    env = {"PERSISTENCE_MODULE": "eventsourcing_kurrentdb", "KURRENTDB_URI": uri(es)}
    name = unique("fido")
    app = TrainingSchool(env=env)
    other = TrainingSchool(env=env)
    try:
        n1 = app.register(name)
        n2 = app.add_trick(name, "roll over")
        # Reloaded by another application instance, from the store.
        assert other.details(name) == (name, ("roll over",))

        # Each save is a BatchAppend at the aggregate's version; its notification id is
        # the event's commit position.
        stream = str(Dog.create_id(name))
        events = read(client, stream)
        assert [e.stream_position for e in events] == [0, 1]
        assert [e.commit_position for e in events] == [n1, n2]
        assert {e.content_type for e in events} == {"application/octet-stream"}
        assert app.recorder.max_notification_id() == n2
        assert [n.id for n in app.recorder.select_notifications(start=n1, limit=10)] == [n1, n2]

        # Two copies of version 1; the first save wins, the second is refused.
        mine = app.repository.get(Dog.create_id(name))
        theirs = other.repository.get(Dog.create_id(name))
        mine.add_trick("play dead")
        app.save(mine)
        theirs.add_trick("sit")
        with pytest.raises(IntegrityError):
            other.save(theirs)
        third = TrainingSchool(env=env)
        try:
            assert third.details(name) == (name, ("roll over", "play dead"))
        finally:
            third.close()
        assert len(read(client, stream)) == 3
    finally:
        app.close()
        other.close()
