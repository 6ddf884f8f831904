"""Bad input on the AMQP port: each gets its documented exception (or the protocol
header and a close), the broker stays up, and other connections keep working."""
from __future__ import annotations

import os
import socket
import struct

import pika
import pika.frame
import pika.spec
import pytest

from amqp_support import channel, passive_count, publish_confirmed
from herald_support import unique

pytestmark = pytest.mark.timeout(120)

FRAME_END = b"\xce"


def _url(broker) -> str:
    if broker.amqp_port is None:
        pytest.skip("this herald binary has no AMQP listener")
    return f"amqp://guest:guest@{broker.host}:{broker.amqp_port}/%2F"


def _frame(kind: int, ch: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, ch, len(payload)) + payload + FRAME_END


def _method(ch: int, method) -> bytes:
    return pika.frame.Method(ch, method).marshal()


def _read_frame(s: socket.socket) -> tuple[int, int, bytes]:
    head = _recv_exact(s, 7)
    kind, ch, size = struct.unpack(">BHI", head)
    body = _recv_exact(s, size + 1)
    assert body[-1:] == FRAME_END
    return kind, ch, body[:-1]


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def _method_of(payload: bytes):
    class_id, method_id = struct.unpack(">HH", payload[:4])
    method = pika.spec.methods[(class_id << 16) | method_id]()
    method.decode(payload, 4)
    return method


def _open(broker) -> socket.socket:
    """A raw connection through connection.open-ok (frame_max 4096, no heartbeat)."""
    s = socket.create_connection((broker.host, broker.amqp_port), timeout=10)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    assert isinstance(_method_of(_read_frame(s)[2]), pika.spec.Connection.Start)
    s.sendall(_method(0, pika.spec.Connection.StartOk(
        client_properties={"product": "raw"}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US")))
    assert isinstance(_method_of(_read_frame(s)[2]), pika.spec.Connection.Tune)
    s.sendall(_method(0, pika.spec.Connection.TuneOk(channel_max=16, frame_max=4096, heartbeat=0)))
    s.sendall(_method(0, pika.spec.Connection.Open(virtual_host="/")))
    assert isinstance(_method_of(_read_frame(s)[2]), pika.spec.Connection.OpenOk)
    return s


def _expect_connection_close(s: socket.socket, code: int) -> str:
    while True:
        kind, ch, payload = _read_frame(s)
        if kind == 1 and ch == 0:
            method = _method_of(payload)
            assert isinstance(method, pika.spec.Connection.Close), method
            assert method.reply_code == code, (method.reply_code, method.reply_text)
            return method.reply_text


def _still_serving(url: str) -> None:
    queue = unique("alive")
    with channel(url) as (_c, ch):
        ch.queue_declare(queue)
    publish_confirmed(url, queue, [b"ok"])
    assert passive_count(url, queue) == 1


@pytest.mark.parametrize("case", ["oversized", "bad-end", "bad-type", "heartbeat-on-channel",
                                  "unopened-channel", "garbage-method", "body-without-publish"])
def test_bad_frames_get_their_exception_and_others_are_unaffected(broker, case):
    url = _url(broker)
    bystander = pika.BlockingConnection(pika.URLParameters(url))
    by_ch = bystander.channel()
    s = _open(broker)
    expected = {
        "oversized": (struct.pack(">BHI", 3, 1, 1 << 30), 501),
        "bad-end": (struct.pack(">BHI", 8, 0, 0) + b"\x00", 501),
        "bad-type": (_frame(9, 0, b""), 501),
        "heartbeat-on-channel": (_frame(8, 5, b""), 501),
        "unopened-channel": (_method(3, pika.spec.Queue.Declare(queue="x")), 504),
        "garbage-method": (_frame(1, 0, os.urandom(3)), 502),
        "body-without-publish": (_method(1, pika.spec.Channel.Open()) + _frame(3, 1, b"stray"), 505),
    }
    data, code = expected[case]
    s.sendall(data)
    if case == "body-without-publish":
        kind, _, payload = _read_frame(s)
        assert isinstance(_method_of(payload), pika.spec.Channel.OpenOk)
    text = _expect_connection_close(s, code)
    assert text, "an exception carries a reply text"
    s.close()
    # The bystander's connection and channel are untouched, and new ones work.
    by_ch.queue_declare(unique("bystander"))
    bystander.close()
    _still_serving(url)
    assert broker.proc.poll() is None


def test_random_bytes_and_truncated_frames_do_not_hurt_the_broker(broker):
    url = _url(broker)
    for seed in range(20):
        with socket.create_connection((broker.host, broker.amqp_port), timeout=5) as s:
            noise = os.urandom(64 + seed * 37)
            if seed % 2:
                noise = b"AMQP\x00\x00\x09\x01" + noise
            s.sendall(noise)
            s.settimeout(2)
            try:
                while s.recv(4096):
                    pass
            except (socket.timeout, ConnectionError):
                pass
    # A frame cut off mid-payload, then the socket closed.
    s = _open(broker)
    s.sendall(struct.pack(">BHI", 1, 0, 100) + b"\x00" * 10)
    s.close()
    _still_serving(url)
    assert broker.proc.poll() is None
