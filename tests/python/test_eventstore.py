"""The event store front end: KurrentDB's gRPC clients against herald, unchanged
(kurrentdbclient 1.3.5 here).

The listener is off by default while the event store is being built, so every test
turns it on with `--eventstore-listen` on a free port. What works today is the
foundation: insecure HTTP/2 connections (`?tls=false`), Gossip (so discovery works),
ServerFeatures, and a prompt UNIMPLEMENTED with a message for everything else.
"""

from __future__ import annotations

import socket
import time
import uuid

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import GrpcError
from kurrentdbclient.protos.v1 import shared_pb2

from herald_support import free_port, wait_until

pytestmark = pytest.mark.timeout(60)

# Every call in these tests has a deadline: a hang fails a test, never stalls the run.
CALL_TIMEOUT_S = 5.0
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def eventstore_broker(broker_factory, *extra_args: str):
    port = free_port()
    b = broker_factory(extra_args=["--eventstore-listen", f"127.0.0.1:{port}", *extra_args])
    b.eventstore_port = port

    def listening():
        try:
            with socket.create_connection((b.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, 10, f"the event store listener on {port} never accepted")
    return b


@pytest.fixture
def es(broker_factory):
    return eventstore_broker(broker_factory)


def target(b) -> str:
    return f"{b.host}:{b.eventstore_port}"


def supported_methods_class():
    """ServerFeatures' answer type. kurrentdbclient does not ship serverfeatures_pb2
    (it never calls the service), so the two messages are declared here as in
    vendor/kurrentdb-protos/serverfeatures.proto."""
    f = descriptor_pb2.FileDescriptorProto(name="herald_test_serverfeatures.proto",
                                           package="herald_test.server_features", syntax="proto3")
    method = f.message_type.add(name="SupportedMethod")
    for number, name, label in [(1, "method_name", 1), (2, "service_name", 1), (3, "features", 3)]:
        method.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=label)
    methods = f.message_type.add(name="SupportedMethods")
    methods.field.add(name="methods", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=".herald_test.server_features.SupportedMethod", label=3)
    methods.field.add(name="event_store_server_version", number=2,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("herald_test.server_features.SupportedMethods"))


def test_the_listener_is_on_2113_by_default_and_can_be_turned_off(broker_factory):
    import subprocess

    from conftest import HERALD_BIN
    help_text = subprocess.run([str(HERALD_BIN), "serve", "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    assert "[default: 127.0.0.1:2113]" in help_text
    b = broker_factory(extra_args=["--eventstore-listen", "off"])
    wait_until(lambda: "herald is ready" in b.stderr_tail(), 10, "no ready line")
    assert "eventstore=off" in b.stderr_tail()


@pytest.mark.parametrize("scheme", ["kurrentdb", "esdb", "kdb"])
def test_a_client_connects_insecure_and_reads_one_leader_from_gossip(es, scheme):
    client = KurrentDBClient(f"{scheme}://{target(es)}?tls=false")
    try:
        assert client.connection_target == target(es)
        members = client.read_gossip()
        assert [(m.state, m.address, m.port) for m in members] == [
            ("NODE_STATE_LEADER", "127.0.0.1", es.eventstore_port)]
    finally:
        client.close()


@pytest.mark.parametrize("scheme", ["kurrentdb+discover", "esdb+discover"])
def test_discovery_through_gossip_picks_herald(es, scheme):
    # A discover scheme reads Gossip before anything else and connects to the leader.
    client = KurrentDBClient(f"{scheme}://{target(es)}?tls=false&MaxDiscoverAttempts=1")
    try:
        assert client.connection_target == target(es)
    finally:
        client.close()


def test_server_features_lists_only_what_is_implemented(es):
    answer_type = supported_methods_class()
    with grpc.insecure_channel(target(es)) as channel:
        call = channel.unary_unary(
            "/event_store.client.server_features.ServerFeatures/GetSupportedMethods",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=answer_type.FromString,
        )
        answer = call(shared_pb2.Empty(), timeout=CALL_TIMEOUT_S)
    methods = {(m.service_name, m.method_name) for m in answer.methods}
    assert methods == {
        ("event_store.client.server_features.serverfeatures", "getsupportedmethods"),
        ("event_store.client.gossip.gossip", "read"),
        ("event_store.client.streams.streams", "read"),
        ("event_store.client.streams.streams", "append"),
        ("event_store.client.streams.streams", "batchappend"),
        ("event_store.client.streams.streams", "delete"),
        ("event_store.client.streams.streams", "tombstone"),
        *{("event_store.client.persistent_subscriptions.persistentsubscriptions", m)
          for m in ("create", "update", "delete", "read", "getinfo", "replayparked", "list",
                    "restartsubsystem")},
    }
    # Clients parse it as a version (the Node client with semver).
    major, minor, patch = answer.event_store_server_version.split(".")
    assert major.isdigit() and minor.isdigit() and patch.isdigit()


def test_append_read_conflict_and_subscription_with_kurrentdbclient(es):
    """The Streams service as kurrentdbclient drives it: one event through Append, a
    list through BatchAppend, a conflict naming the current revision, reads both ways,
    a missing stream, $all, and a catch-up subscription that goes live."""
    from kurrentdbclient.exceptions import NotFoundError, WrongCurrentVersionError

    client = KurrentDBClient(f"kurrentdb://{target(es)}?tls=false")
    try:
        stream = f"order-{uuid.uuid4().hex[:8]}"
        first = client.append_to_stream(stream, current_version=StreamState.NO_STREAM,
                                        events=NewEvent(type="OrderPlaced", data=b'{"id": 1}'),
                                        timeout=CALL_TIMEOUT_S)
        second = client.append_to_stream(stream, current_version=0,
                                         events=[NewEvent(type="PaymentCaptured", data=b"p"),
                                                 NewEvent(type="OrderShipped", data=b"s")],
                                         timeout=CALL_TIMEOUT_S)
        assert second == first + 2
        with pytest.raises(WrongCurrentVersionError) as conflict:
            client.append_to_stream(stream, current_version=0,
                                    events=[NewEvent(type="Late", data=b"")], timeout=CALL_TIMEOUT_S)
        assert "is 2 not 0" in str(conflict.value)
        events = client.get_stream(stream, timeout=CALL_TIMEOUT_S)
        assert [(e.type, e.stream_position) for e in events] == [
            ("OrderPlaced", 0), ("PaymentCaptured", 1), ("OrderShipped", 2)]
        assert events[-1].commit_position == second
        assert [e.type for e in client.get_stream(stream, backwards=True, limit=2,
                                                  timeout=CALL_TIMEOUT_S)] == ["OrderShipped", "PaymentCaptured"]
        with pytest.raises(NotFoundError):
            client.get_stream(f"missing-{uuid.uuid4().hex[:8]}", timeout=CALL_TIMEOUT_S)
        ours = [e for e in client.read_all(timeout=CALL_TIMEOUT_S) if e.stream_name == stream]
        assert [e.commit_position for e in ours] == [first, first + 1, second]
        subscription = client.subscribe_to_stream(stream, include_caught_up=True, timeout=CALL_TIMEOUT_S)
        try:
            seen = iter(subscription)
            history = [next(seen) for _ in range(4)]
            assert [type(e).__name__ for e in history][-1] == "CaughtUp"
            client.append_to_stream(stream, current_version=StreamState.ANY,
                                    events=NewEvent(type="Live", data=b""), timeout=CALL_TIMEOUT_S)
            assert next(seen).type == "Live"
        finally:
            subscription.stop()
    finally:
        client.close()


@pytest.mark.parametrize("path, message", [
    ("/no.such.Service/Method", "Herald does not implement the gRPC method /no.such.Service/Method"),
    ("/event_store.client.projections.Projections/Create", "Herald does not implement Projections"),
    ("/event_store.client.operations.Operations/StartScavenge", "Herald does not implement Operations"),
    ("/event_store.client.users.Users/Details", "Herald does not implement Users"),
    ("/event_store.client.gossip.Gossip/NoSuchMethod", ""),
])
def test_anything_else_is_unimplemented_with_a_message(es, path, message):
    with grpc.insecure_channel(target(es)) as channel:
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary(path)(b"", timeout=CALL_TIMEOUT_S)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (e.value.details() or "") == message


def test_a_streaming_call_to_an_unimplemented_service_ends_instead_of_hanging(es):
    with grpc.insecure_channel(target(es)) as channel:
        call = channel.unary_stream("/event_store.client.projections.Projections/Statistics")
        responses = call(b"", timeout=CALL_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as e:
            next(responses)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert e.value.details() == "Herald does not implement Projections"


def test_a_persistent_read_that_does_not_start_with_its_options_is_refused(es):
    # Read is bidirectional: the client keeps its side open, and the answer still comes.
    with grpc.insecure_channel(target(es)) as channel:
        call = channel.stream_stream("/event_store.client.persistent_subscriptions.PersistentSubscriptions/Read")
        responses = call(iter([b""]), timeout=CALL_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as e:
            next(responses)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options" in e.value.details()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the broker closes `sock` within `seconds` (reading whatever it sends)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if sock.recv(4096) == b"":
                return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True
    return False


def test_silent_and_non_http2_clients_are_closed(broker_factory):
    b = eventstore_broker(broker_factory, "--eventstore-handshake-timeout-ms", "300")
    with socket.create_connection((b.host, b.eventstore_port)) as silent:
        assert closed_within(silent, 5), "a client that sends nothing must be closed"
    with socket.create_connection((b.host, b.eventstore_port)) as http1:
        http1.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_within(http1, 5)
    wait_until(lambda: "this port speaks gRPC over HTTP/2" in b.stderr_tail(), 5,
               "no log line naming the HTTP/1 client's mistake")


def test_connections_max_applies(broker_factory):
    b = eventstore_broker(broker_factory, "--connections-max", "2")
    held = []

    def admitted() -> socket.socket | None:
        # Admitted: the server answers the preface with its SETTINGS. (The listener
        # probe's own connection may still hold its place for a moment.)
        s = socket.create_connection((b.host, b.eventstore_port))
        s.sendall(H2_PREFACE)
        s.settimeout(CALL_TIMEOUT_S)
        try:
            if s.recv(9):
                return s
        except OSError:
            pass
        s.close()
        return None

    try:
        for _ in range(2):
            held.append(wait_until(admitted, 5, "a connection within connections_max was refused"))
        with socket.create_connection((b.host, b.eventstore_port)) as third:
            assert closed_within(third, 5), "a connection past connections_max must be refused"
        wait_until(lambda: "event store connection refused" in b.stderr_tail(), 5,
                   "no log line for the refused connection")
    finally:
        for s in held:
            s.close()
