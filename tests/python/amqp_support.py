"""Helpers for the AMQP 0-9-1 tests (test_amqp.py): pika connections with deadlines,
a pipelined publisher with publisher confirms, consuming a known number of messages,
a raw-socket probe, and a decoder that shows the wire type of every field-table value.

Everything has a deadline: a broker that stops answering fails a test, never hangs it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pika
import pytest
import pika.data
from pika.exceptions import ChannelClosedByBroker

# The broker the AMQP tests talk to: a fresh herald, or HERALD_TEST_AMQP_URL (a real
# RabbitMQ, to check the tests themselves).
EXTERNAL_URL = os.environ.get("HERALD_TEST_AMQP_URL")


def feature_marker(not_yet: dict[str, str]):
    """`feature(name)`: the marker naming the AMQP feature a test needs (select with
    -m "amqp(feature='x')"); a feature in `not_yet` is a strict xfail against herald."""
    def feature(name: str):
        mark = pytest.mark.amqp(feature=name)
        if name in not_yet and not EXTERNAL_URL:
            xfail = pytest.mark.xfail(strict=True, reason=f"not in Herald yet: {not_yet[name]}")
            return lambda test: xfail(mark(test))
        return mark
    return feature


def herald_url(broker) -> str:
    if broker.amqp_port is None:
        pytest.skip("this herald binary has no AMQP listener yet (`herald serve --help` does not "
                    "mention --amqp-listen); set HERALD_TEST_AMQP_URL to run these against another broker")
    return f"amqp://guest:guest@{broker.host}:{broker.amqp_port}/%2F"


@pytest.fixture
def amqp_url(request):
    """amqp://guest:guest@127.0.0.1:<port>/%2F of a fresh herald, or $HERALD_TEST_AMQP_URL."""
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    yield herald_url(request.getfixturevalue("broker"))

# Socket, handshake and blocking-call limits for every connection the tests open.
SOCKET_TIMEOUT_S = 10.0
STACK_TIMEOUT_S = 15.0


def params(url: str, **overrides) -> pika.URLParameters:
    p = pika.URLParameters(url)
    p.socket_timeout = SOCKET_TIMEOUT_S
    p.stack_timeout = STACK_TIMEOUT_S
    p.blocked_connection_timeout = 30
    p.connection_attempts = 1
    for k, v in overrides.items():
        setattr(p, k, v)
    return p


def connect(url: str, **overrides) -> pika.BlockingConnection:
    return pika.BlockingConnection(params(url, **overrides))


@contextlib.contextmanager
def channel(url: str, **overrides):
    """A blocking connection and one channel on it, closed afterwards."""
    conn = connect(url, **overrides)
    try:
        yield conn, conn.channel()
    finally:
        if conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


def host_port(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 5672


def raw_exchange(url: str, data: bytes, timeout_s: float = 10.0) -> tuple[bytes, str]:
    """Send `data` on a fresh TCP connection and read until the peer closes. Returns
    (bytes read, how it ended: 'eof' or 'reset'); fails if the peer keeps it open."""
    got = b""
    with socket.create_connection(host_port(url), timeout=timeout_s) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout_s
        while True:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                return got, "reset"
            except socket.timeout:
                raise AssertionError(f"peer still open {timeout_s}s after {data!r}; read {got!r}") from None
            if not chunk:
                return got, "eof"
            got += chunk


def passive_count(url: str, queue: str) -> int:
    """Ready messages in `queue` (queue.declare passive), on a connection of its own."""
    with channel(url) as (_conn, ch):
        return ch.queue_declare(queue, passive=True).method.message_count


def expect_channel_close(fn, code: int) -> ChannelClosedByBroker:
    """Run fn (an AMQP call on a channel) and require the broker to close that channel
    with `code`."""
    try:
        fn()
    except ChannelClosedByBroker as e:
        assert e.reply_code == code, f"channel closed with {e.reply_code} {e.reply_text!r}, expected {code}"
        return e
    raise AssertionError(f"expected the channel to be closed with {code}, the call succeeded")


@dataclass
class Delivery:
    method: pika.spec.Basic.Deliver
    properties: pika.BasicProperties
    body: bytes


def consume(conn: pika.BlockingConnection, ch, queue: str, count: int, timeout_s: float = 30.0,
            ack: bool = True, prefetch: int | None = 500, settle_s: float = 0.3) -> list[Delivery]:
    """Consume `queue` until `count` messages arrived (failing after timeout_s), then
    wait settle_s more and fail if any extra message arrives. With ack=True the
    messages are acked (multiple) as they come and all before returning; the consumer is
    cancelled either way (unacked ones stay unacked on the channel)."""
    got: list[Delivery] = []
    acked_upto = [0]
    if prefetch is not None:
        ch.basic_qos(prefetch_count=prefetch)

    def on_message(_ch, method, properties, body):
        got.append(Delivery(method, properties, body))
        if ack and len(got) % 100 == 0:
            _ch.basic_ack(method.delivery_tag, multiple=True)
            acked_upto[0] = method.delivery_tag

    tag = ch.basic_consume(queue, on_message, auto_ack=False)
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"consuming {queue}: {len(got)} of {count} messages after {timeout_s}s")
        conn.process_data_events(time_limit=0.1)
    settle = time.monotonic() + settle_s
    while time.monotonic() < settle:
        conn.process_data_events(time_limit=0.05)
    if ack and got and got[-1].method.delivery_tag > acked_upto[0]:
        ch.basic_ack(got[-1].method.delivery_tag, multiple=True)
    ch.basic_cancel(tag)
    assert len(got) == count, f"consuming {queue}: expected {count} messages, got {len(got)}"
    return got


def get_all(ch, queue: str, limit: int = 10_000) -> list[Delivery]:
    """basic.get (auto-ack) until the queue says empty."""
    out = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(Delivery(method, props, body))
    raise AssertionError(f"{queue} still not empty after {limit} basic.get")


@dataclass
class PublishResult:
    acked: list[int] = field(default_factory=list)  # publish sequence numbers, 1-based
    nacked: list[int] = field(default_factory=list)
    returned: list[tuple[int, str, bytes]] = field(default_factory=list)  # reply code, text, body
    # Everything in the order the client saw it: ("ack", seq), ("nack", seq),
    # ("return", body), ("multiple", delivery_tag) marks an ack/nack with multiple set.
    events: list[tuple] = field(default_factory=list)
    published: int = 0
    error: str | None = None


class _Publisher:
    def __init__(self, url, exchange, routing_key, bodies, properties, mandatory, window, timeout_s,
                 result):
        self.exchange = exchange
        self.routing_key = routing_key
        self.bodies = bodies
        self.properties = properties
        self.mandatory = mandatory
        self.window = window
        self.result = result if result is not None else PublishResult()
        self.unsettled: set[int] = set()
        self.ch = None
        self.conn = pika.SelectConnection(
            params(url),
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
        )
        self.conn.ioloop.call_later(timeout_s, self._on_timeout)
        self.timeout_s = timeout_s

    def run(self) -> PublishResult:
        self.conn.ioloop.start()
        return self.result

    def _on_open(self, conn):
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, _conn, err):
        self.result.error = f"connect failed: {err!r}"
        self.conn.ioloop.stop()

    def _on_closed(self, _conn, reason):
        if not self._done() and self.result.error is None:
            self.result.error = f"connection closed: {reason!r}"
        self.conn.ioloop.stop()

    def _on_timeout(self):
        if self.result.error is None:
            self.result.error = (f"timed out after {self.timeout_s}s: {self.result.published} published, "
                                 f"{len(self.result.acked)} acked, {len(self.result.nacked)} nacked")
        self._close()

    def _on_channel(self, ch):
        self.ch = ch
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(self._on_confirm, callback=lambda _frame: self._pump())

    def _on_channel_closed(self, _ch, reason):
        if not self._done() and self.result.error is None:
            self.result.error = f"channel closed: {reason!r}"
        self._close()

    def _on_return(self, _ch, method, _props, body):
        self.result.returned.append((method.reply_code, method.reply_text, body))
        self.result.events.append(("return", body))

    def _on_confirm(self, frame):
        m = frame.method
        kind = "ack" if isinstance(m, pika.spec.Basic.Ack) else "nack"
        if m.multiple:
            tags = sorted(t for t in self.unsettled if t <= m.delivery_tag)
            self.result.events.append(("multiple", m.delivery_tag))
        else:
            tags = [m.delivery_tag] if m.delivery_tag in self.unsettled else []
        if not tags:
            self.result.error = self.result.error or f"{kind} for unknown delivery tag {m.delivery_tag}"
        for t in tags:
            self.unsettled.discard(t)
            (self.result.acked if kind == "ack" else self.result.nacked).append(t)
            self.result.events.append((kind, t))
        self._pump()

    def _done(self) -> bool:
        return self.result.published == len(self.bodies) and not self.unsettled

    def _pump(self):
        if self.ch is None or not self.ch.is_open:
            return
        while self.result.published < len(self.bodies) and len(self.unsettled) < self.window:
            i = self.result.published
            props = self.properties(i) if callable(self.properties) else self.properties
            self.ch.basic_publish(self.exchange, self.routing_key, self.bodies[i], props, mandatory=self.mandatory)
            self.result.published += 1
            self.unsettled.add(self.result.published)
        if self._done():
            self._close()

    def _close(self):
        if self.conn.is_open:
            self.conn.close()
        elif self.conn.is_closed:
            self.conn.ioloop.stop()


def publish_confirmed(url: str, routing_key: str, bodies: list[bytes], exchange: str = "",
                      properties=None, mandatory: bool = False, window: int = 1000,
                      timeout_s: float = 60.0, result: PublishResult | None = None) -> PublishResult:
    """Publish `bodies` on one confirm-mode channel, up to `window` unconfirmed at once,
    and wait until each is acked or nacked, or the connection is lost (result.error
    says why). `properties` is a BasicProperties or a function of the message index.
    Pass `result` to watch progress from another thread."""
    return _Publisher(url, exchange, routing_key, bodies, properties, mandatory, window, timeout_s,
                      result).run()


PERSISTENT = pika.BasicProperties(delivery_mode=2)


# --- field tables with their wire types ---------------------------------------------

@contextlib.contextmanager
def raw_tables():
    """While active, every field table pika decodes is also kept as raw bytes (decode
    them with `typed_table`). pika itself decodes as usual."""
    original = pika.data.decode_table
    captured: list[bytes] = []

    def keep(encoded, offset):
        value, end = original(encoded, offset)
        captured.append(bytes(encoded[offset:end]))
        return value, end

    pika.data.decode_table = keep
    try:
        yield captured
    finally:
        pika.data.decode_table = original


@dataclass(frozen=True)
class Typed:
    """A field value with its AMQP type tag (RabbitMQ's/errata tags: 'l' = signed 64-bit
    long, 'I' = signed 32-bit, 'S' = long string, 'T' = timestamp, 'A' = array, 'F' = table)."""
    tag: str
    value: object


def _value(buf: bytes, off: int) -> tuple[Typed, int]:
    tag = chr(buf[off])
    off += 1
    fixed = {"t": ">B", "b": ">b", "B": ">B", "s": ">h", "U": ">h", "u": ">H", "I": ">i", "i": ">I",
             "l": ">q", "L": ">q", "f": ">f", "d": ">d", "T": ">Q"}
    if tag in fixed:
        fmt = fixed[tag]
        (v,) = struct.unpack_from(fmt, buf, off)
        return Typed(tag, bool(v) if tag == "t" else v), off + struct.calcsize(fmt)
    if tag == "D":
        scale = buf[off]
        (v,) = struct.unpack_from(">i", buf, off + 1)
        return Typed(tag, (scale, v)), off + 5
    if tag in "Sx":
        (n,) = struct.unpack_from(">I", buf, off)
        return Typed(tag, bytes(buf[off + 4: off + 4 + n])), off + 4 + n
    if tag == "A":
        (n,) = struct.unpack_from(">I", buf, off)
        off += 4
        end = off + n
        items = []
        while off < end:
            item, off = _value(buf, off)
            items.append(item)
        assert off == end, "array overran its length"
        return Typed(tag, items), off
    if tag == "F":
        (n,) = struct.unpack_from(">I", buf, off)
        return Typed(tag, typed_table(buf[off: off + 4 + n])), off + 4 + n
    if tag == "V":
        return Typed(tag, None), off
    raise AssertionError(f"unknown field type {tag!r} at offset {off - 1}")


def typed_table(raw: bytes) -> dict[str, Typed]:
    """Decode one encoded field table (4-byte length, then name/value pairs)."""
    (n,) = struct.unpack_from(">I", raw, 0)
    assert len(raw) == 4 + n, f"table length {n} but {len(raw) - 4} bytes"
    off, out = 4, {}
    while off < 4 + n:
        klen = raw[off]
        key = raw[off + 1: off + 1 + klen].decode()
        off += 1 + klen
        out[key], off = _value(raw, off)
    return out


def find_table(captured: list[bytes], key: str) -> dict[str, Typed]:
    """The last captured table that has `key` at its top level."""
    for raw in reversed(captured):
        t = typed_table(raw)
        if key in t:
            return t
    raise AssertionError(f"no decoded field table has {key!r}")
