"""Hostile and broken bytes on the Kafka port. After each, the broker process must
still be up and serve a real client. Where the Kafka protocol says what a broker
answers (ApiVersions, in-order responses) the answer is checked byte for byte."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest
from confluent_kafka import Producer

from herald_support import produce_and_confirm, read_partitions, unique

pytestmark = pytest.mark.timeout(120)

API_VERSIONS = 18
UNSUPPORTED_VERSION = 35
# Requests every client in this suite needs; ApiVersions must list them all.
REQUIRED_APIS = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit",
    9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat",
    13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups",
    18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics", 22: "InitProducerId",
    32: "DescribeConfigs",
}


def frame(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
          client_id: bytes = b"bad-input-test", flexible_header: bool = False) -> bytes:
    header = struct.pack(">hhi", api_key, api_version, correlation_id)
    header += struct.pack(">h", len(client_id)) + client_id
    if flexible_header:
        header += b"\x00"  # no tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def connect(broker) -> socket.socket:
    s = socket.create_connection((broker.host, broker.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One response frame: (correlation id, rest of the body)."""
    (size,) = struct.unpack(">i", read_exact(s, 4))
    assert 4 <= size < 1 << 20, f"implausible response size {size}"
    payload = read_exact(s, size)
    return struct.unpack(">i", payload[:4])[0], payload[4:]


def closed_by_peer(s: socket.socket, timeout_s: float = 5.0) -> bool:
    """True if the broker closes the connection within the timeout (data it sends
    first, e.g. an error response, is read and ignored)."""
    s.settimeout(0.5)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not s.recv(65536):
                return True
        except socket.timeout:
            continue
        except OSError:  # reset, or not connected any more
            return True
    return False


def parse_api_versions_v0(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    error_code, count = struct.unpack(">hi", body[:6])
    apis = {}
    for i in range(count):
        key, lo, hi = struct.unpack(">hhh", body[6 + 6 * i: 12 + 6 * i])
        apis[key] = (lo, hi)
    return error_code, apis


def assert_healthy(broker):
    """The process is alive and a real client can still produce and fetch."""
    broker.assert_running()
    with connect(broker) as s:
        s.sendall(frame(API_VERSIONS, 0, 7))
        cid, body = read_response(s)
        assert cid == 7
        assert parse_api_versions_v0(body)[0] == 0
    topic = unique("healthy")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(b"k", b"still alive")], timeout_s=20)
    records = read_partitions(broker.bootstrap, topic, 1, timeout_s=20, expect_total=1)
    assert [r.value for r in records] == [b"still alive"]
    broker.assert_running()


def test_api_versions_v0_lists_required_apis(broker):
    with connect(broker) as s:
        s.sendall(frame(API_VERSIONS, 0, 12345))
        cid, body = read_response(s)
    assert cid == 12345
    error_code, apis = parse_api_versions_v0(body)
    assert error_code == 0
    missing = {name for key, name in REQUIRED_APIS.items() if key not in apis}
    assert not missing, f"ApiVersions does not list {sorted(missing)}"
    for key, (lo, hi) in apis.items():
        assert 0 <= lo <= hi, f"api {key}: bad range {lo}..{hi}"
    assert apis[API_VERSIONS][0] == 0


def test_api_versions_unsupported_version_gets_v0_error_response(broker):
    # KIP-511: a client newer than the broker sends an ApiVersions version the broker
    # does not know; the broker answers in v0 with UNSUPPORTED_VERSION and its
    # supported ranges, so the client can retry with a version both know.
    body = b"\x05herald" + b"\x041.0" + b"\x00"  # compact strings + empty tagged fields
    with connect(broker) as s:
        s.sendall(frame(API_VERSIONS, 127, 99, body, flexible_header=True))
        cid, resp = read_response(s)
    assert cid == 99
    error_code, apis = parse_api_versions_v0(resp)
    assert error_code == UNSUPPORTED_VERSION
    assert API_VERSIONS in apis
    assert_healthy(broker)


def test_pipelined_requests_answered_in_order(broker):
    with connect(broker) as s:
        s.sendall(b"".join(frame(API_VERSIONS, i % 3, 1000 + i) for i in range(50)))
        cids = [read_response(s)[0] for _ in range(50)]
    assert cids == [1000 + i for i in range(50)]


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(broker, seed):
    rnd = random.Random(seed)
    payload = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(16, 4096)))
    with connect(broker) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the broker may hang up before reading everything (EPIPE, ECONNRESET, ENOTCONN)
        assert closed_by_peer(s), "broker kept a connection open after garbage and EOF"
    assert_healthy(broker)


def test_huge_length_prefix_then_close(broker):
    with connect(broker) as s:
        s.sendall(struct.pack(">I", 0x7FFFFFFF))
    assert_healthy(broker)


def test_huge_length_prefix_is_refused_at_once(broker):
    # A frame claiming 2 GiB must be refused on sight, not buffered: otherwise a few
    # such connections exhaust the broker's memory.
    with connect(broker) as s:
        s.sendall(struct.pack(">I", 0x7FFFFFFF) + b"\x00" * 1024)
        assert closed_by_peer(s), "broker kept reading a 2 GiB frame instead of closing the connection"
    assert_healthy(broker)


@pytest.mark.parametrize("prefix", [b"\xff\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x00\x00\x00"],
                         ids=["minus-one", "int-min", "zero"])
def test_nonsense_length_prefix(broker, prefix):
    with connect(broker) as s:
        try:
            s.sendall(prefix + b"\x00" * 16)
        except OSError:
            pass  # already hung up
        assert closed_by_peer(s), f"broker kept the connection open after length prefix {prefix.hex()}"
    assert_healthy(broker)


def test_truncated_frame_then_close(broker):
    with connect(broker) as s:
        s.sendall(struct.pack(">i", 100) + b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00")
    assert_healthy(broker)


def test_truncated_frame_many_connections(broker):
    socks = []
    try:
        for i in range(100):
            s = connect(broker)
            s.sendall(struct.pack(">i", 100 + i) + bytes([i]) * 10)
            socks.append(s)
    finally:
        for s in socks:
            s.close()
    assert_healthy(broker)


def test_unknown_api_key(broker):
    with connect(broker) as s:
        s.sendall(frame(999, 0, 4242))
        s.settimeout(5)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            pytest.fail("no response and no close within 5 s after a request with unknown api key 999")
        if data:
            # If the broker answers rather than closing, it answers this request.
            while len(data) < 8:
                more = s.recv(65536)
                assert more, "connection closed mid-response"
                data += more
            (cid,) = struct.unpack(">i", data[4:8])
            assert cid == 4242
    assert_healthy(broker)


def test_known_api_with_garbage_body(broker):
    # Metadata v1 whose topic array claims 2^31-1 entries; then a Produce v3 cut short.
    for request in (frame(3, 1, 1, b"\x7f\xff\xff\xff"), frame(0, 3, 2, b"\xff\xff\x00")):
        with connect(broker) as s:
            s.sendall(request)
            s.settimeout(5)
            try:
                s.recv(65536)  # an error response or a close are both fine; a hang is not
            except ConnectionResetError:
                pass
            except socket.timeout:
                pytest.fail(f"no answer and no close for a malformed request {request[:12].hex()}")
    assert_healthy(broker)
