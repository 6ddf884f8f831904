"""Abusive AMQP 0-9-1 clients on loopback, like test_abuse.py does for Kafka and HTTP:
each case runs a hostile client against a broker of its own (small limits passed as
flags so it runs fast) and checks that the broker's memory stays bounded, that what
the abuse held is given back when it goes away, and that ordinary clients keep being
served meanwhile.

Cases: consumers that never read their deliveries (small messages, and large ones);
a publisher that never reads its confirms; many channels each holding a half-sent
message body (the request pool), and a disconnect in the middle of the body;
handshake tricklers and a frame header that claims 4 GB; a partial frame after the
handshake; thousands of channels each with a message in assembly; hundreds of idle
connections (memory per connection); consumers of large messages that hang up
mid-delivery.

The hostile clients speak AMQP on raw sockets (`Raw` below: protocol header, start-ok
PLAIN guest/guest, tune-ok, open; methods encoded with pika.spec); the ordinary ones
are pika. Everything talks to 127.0.0.1 only, has a deadline, and closes its sockets.
Figures (RSS, KiB per connection, close times) are printed (`pytest -s`) and appended
to the broker's log, which conftest prints when a test fails.

Bounds asserted (so that a failure says what was promised):
- NON_READER_BYTES: what one consumer that never reads may make the broker hold: its
  writer queue (amqp_write_queue_bytes, 4 MiB by default) plus one leased batch (sized
  from recent records to about the same bytes, consumer.rs).
- POOL_RSS_SLACK: RSS above the memory budget a full request pool may cost (bodies in
  assembly cost 2-3x their bytes in RSS: the body buffer grows by doubling from empty,
  and the allocator keeps freed pages a while).
- RSS_BACK_SLACK: how close to its baseline RSS must come back once the abuse ended.
- IDLE_BYTES_PER_CONNECTION_MAX: RSS per idle AMQP connection.
- Timeouts: send_timeout_ms (2 s here) for clients that stop reading; the 10 s
  handshake timeout (amqp_handshake_timeout_ms); two missed heartbeats when the client
  asked for heartbeats; request_read_timeout_ms for a frame or a message that does not
  arrive whole.

Written against the broker as it was (five strict xfails: a writer queue counted in
frames, a reader waiting for pool memory its own connection held, body memory
reserved at the content header, no frame-read timeout, queue topics limited to 1 MiB
records); those defects are fixed and the cases pass.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import selectors
import socket
import struct
import threading
import time

import httpx
import pika
import pika.frame
import pika.spec
import pytest

from abuse_support import (
    KiB,
    MiB,
    Background,
    RssWatch,
    api_versions_v0,
    closed_by_peer,
    metrics,
    raise_nofile,
    rss_bytes,
    send_some,
    wait_budget_free,
)
from abuse_support import Reader as KafkaReader
from abuse_support import connect as kafka_connect
from amqp_support import channel, passive_count, publish_confirmed
from herald_support import unique, wait_until
from test_abuse import close_all, note, wait_rss_down

pytestmark = pytest.mark.timeout(120)

MEMORY_BUDGET = 64 * MiB
REQUEST_POOL = MEMORY_BUDGET // 2  # MemoryPools::new: half for requests, half for responses
SEND_TIMEOUT_MS = 2000
# Past this the watcher kills the broker on the spot (the machine is shared).
RSS_KILL = 2048 * MiB

# Herald's internals the bounds are computed from (crates/herald-amqp).
WRITE_QUEUE = 256  # connection.rs: encoded frames queued for the writer task
RECEIVE_BATCH_MAX = 256  # consumer.rs: records one lease call takes
HANDSHAKE_TIMEOUT_S = 10.0  # lib.rs HANDSHAKE_TIMEOUT_MS_DEFAULT; `herald serve` has no flag for it
FRAME_MAX = 131072  # lib.rs FRAME_MAX_DEFAULT (amqp_frame_max)

SMALL_MESSAGE_MAX = 64 * KiB
NON_READER_BYTES = (WRITE_QUEUE + RECEIVE_BATCH_MAX) * SMALL_MESSAGE_MAX  # 32 MiB
POOL_RSS_SLACK = 64 * MiB  # so the bound is twice the budget
IDLE_BYTES_PER_CONNECTION_MAX = 32 * KiB

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
DELIVER = (60, 60)  # basic.deliver (class, method)

STOPPED_READING = "AMQP client stopped reading for send_timeout_ms"


# ----------------------------------------------------------------------------- wire


def amqp_url(broker) -> str:
    if broker.amqp_port is None:
        pytest.skip("this herald binary has no AMQP listener")
    return f"amqp://guest:guest@{broker.host}:{broker.amqp_port}/%2F"


def method_frame(ch: int, method) -> bytes:
    return pika.frame.Method(ch, method).marshal()


def decode_method(payload: bytes):
    class_id, method_id = struct.unpack_from(">HH", payload)
    m = pika.spec.methods[(class_id << 16) | method_id]()
    m.decode(payload, 4)
    return m


def content_header(ch: int, body_size: int) -> bytes:
    return pika.frame.Header(ch, body_size, pika.spec.BasicProperties()).marshal()


def body_frames(ch: int, data: bytes, frame_max: int = FRAME_MAX) -> bytes:
    step = frame_max - 8
    return b"".join(pika.frame.Body(ch, data[i:i + step]).marshal() for i in range(0, len(data), step))


def publish_frames(ch: int, routing_key: str, body: bytes, announced: int | None = None,
                   exchange: str = "", mandatory: bool = False) -> bytes:
    """basic.publish, a content header announcing `announced` (default len(body)) bytes,
    and `body` in frames of at most frame_max."""
    out = method_frame(ch, pika.spec.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                   mandatory=mandatory))
    out += content_header(ch, len(body) if announced is None else announced)
    return out + body_frames(ch, body)


class Raw:
    """One AMQP connection on a raw socket, blocking with a timeout: the hostile side."""

    def __init__(self, broker, rcvbuf: int | None = None, timeout_s: float = 10.0):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connecting, so the window the kernel offers stays small.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout_s)
        s.connect((broker.host, broker.amqp_port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.port = s.getsockname()[1]
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 7:
                kind, ch, size = struct.unpack_from(">BHI", self.buf)
                if len(self.buf) >= size + 8:
                    payload = bytes(self.buf[7:7 + size])
                    end = self.buf[7 + size]
                    del self.buf[:size + 8]
                    assert end == FRAME_END, f"frame does not end with 0xCE: {end:#x}"
                    return kind, ch, payload
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buf += chunk

    def method(self):
        """The next method frame (heartbeats and content frames skipped): (channel, method)."""
        while True:
            kind, ch, payload = self.frame()
            if kind == FRAME_METHOD:
                return ch, decode_method(payload)

    def expect(self, cls):
        _ch, m = self.method()
        assert isinstance(m, cls), f"expected {cls.NAME}, got {m!r}"
        return m

    def handshake(self, heartbeat: int = 0, channel_max: int = 0, frame_max: int = 0):
        """Protocol header through open-ok; returns the broker's connection.tune."""
        self.send(AMQP_HEADER)
        self.expect(pika.spec.Connection.Start)
        self.send(method_frame(0, pika.spec.Connection.StartOk(
            client_properties={"product": "herald-abuse"}, mechanism="PLAIN",
            response="\0guest\0guest", locale="en_US")))
        tune = self.expect(pika.spec.Connection.Tune)
        self.send(method_frame(0, pika.spec.Connection.TuneOk(
            channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat))
            + method_frame(0, pika.spec.Connection.Open(virtual_host="/")))
        self.expect(pika.spec.Connection.OpenOk)
        return tune

    def open_channels(self, ids) -> None:
        ids = list(ids)
        self.send(b"".join(method_frame(i, pika.spec.Channel.Open()) for i in ids))
        for _ in ids:
            self.expect(pika.spec.Channel.OpenOk)

    def call(self, ch: int, method, reply_cls):
        self.send(method_frame(ch, method))
        return self.expect(reply_cls)

    def close(self, reset: bool = False) -> None:
        try:
            if reset:  # leave with a RST rather than a FIN
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


def raw_open(broker, **kw) -> Raw:
    handshake = {k: kw.pop(k) for k in ("heartbeat", "channel_max", "frame_max") if k in kw}
    r = Raw(broker, **kw)
    r.handshake(**handshake)
    return r


def raw_consumer(broker, queue: str, no_ack: bool, prefetch: int | None = None,
                 rcvbuf: int | None = 4096) -> Raw:
    """A raw connection with one consumer of `queue` on channel 1; it reads nothing
    after consume-ok unless the caller does."""
    r = raw_open(broker, rcvbuf=rcvbuf)
    r.open_channels([1])
    if prefetch is not None:
        r.call(1, pika.spec.Basic.Qos(prefetch_count=prefetch), pika.spec.Basic.QosOk)
    r.call(1, pika.spec.Basic.Consume(queue=queue, consumer_tag="abuser", no_ack=no_ack),
           pika.spec.Basic.ConsumeOk)
    return r


def drain_count_deliveries(r: Raw, timeout_s: float) -> tuple[int, bool]:
    """Read `r` until the broker closes it, counting the basic.deliver method frames that
    arrived whole (their content may be cut off at the end). Returns (deliveries, closed)."""
    deliveries = 0
    buf, pos = bytes(r.buf), 0
    r.sock.settimeout(0.5)
    deadline = time.monotonic() + timeout_s
    while True:
        while len(buf) - pos >= 7:
            kind, _ch, size = struct.unpack_from(">BHI", buf, pos)
            if len(buf) - pos < size + 8:
                break
            if kind == FRAME_METHOD and struct.unpack_from(">HH", buf, pos + 7) == DELIVER:
                deliveries += 1
            pos += size + 8
        if time.monotonic() > deadline:
            return deliveries, False
        try:
            chunk = r.sock.recv(1 << 20)
        except socket.timeout:
            continue
        except OSError:
            return deliveries, True
        if not chunk:
            return deliveries, True
        buf, pos = buf[pos:] + chunk, 0


# ------------------------------------------------------------------ the broker side


def start(broker_factory, *more: str, send_timeout_ms: int = SEND_TIMEOUT_MS):
    b = broker_factory(["--memory-budget-bytes", str(MEMORY_BUDGET),
                        "--send-timeout-ms", str(send_timeout_ms), *more])
    amqp_url(b)  # skips without an AMQP listener
    return b


RSS_BACK_SLACK = 24 * MiB


def wait_rss_near(broker, baseline: int, slack: int, timeout_s: float = 10.0, nudge=None) -> int:
    """RSS must come back to within `slack` of `baseline` (sharper than wait_rss_down's
    96 MiB, which is more than these abuses hold at all). `nudge` (an ordinary request)
    runs between samples: the allocator hands freed pages back when its threads next
    allocate, which on an idle broker can take ~10 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        rss = rss_bytes(broker.pid)
        if rss <= baseline + slack:
            return rss
        assert time.monotonic() < deadline, (
            f"RSS {rss / MiB:.0f} MiB not back within {slack / MiB:.0f} MiB of {baseline / MiB:.0f} MiB "
            f"{timeout_s:.0f}s after the abuse ended")
        if nudge is not None:
            nudge()
        time.sleep(0.2)


def still_open(socks: list[socket.socket], timeout_s: float) -> list[socket.socket]:
    """Wait up to `timeout_s` for the peer to close each of `socks` (what they receive is
    discarded); returns the ones still open then."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    left = set(socks)
    deadline = time.monotonic() + timeout_s
    try:
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                s = key.fileobj
                try:
                    closed = not s.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    closed = True
                if closed:
                    sel.unregister(s)
                    left.discard(s)
    finally:
        sel.close()
    return [s for s in socks if s in left]


def logged_for(broker, text: str, port: int) -> bool:
    """Whether the broker logged `text` on a line naming the client port `port`."""
    pattern = re.compile(r"peer=127\.0\.0\.1:%d\b" % port)
    with open(broker.log_path, errors="replace") as f:
        return any(text in line and pattern.search(line) for line in f)


def count_logged(broker, text: str) -> int:
    with open(broker.log_path, errors="replace") as f:
        return sum(text in line for line in f)


def budget_used(broker) -> float:
    return metrics(broker)["herald_memory_budget_used_bytes"]


def declare(url: str, *queues: str, arguments: dict | None = None) -> None:
    with channel(url) as (_conn, ch):
        for q in queues:
            ch.queue_declare(q, arguments=arguments)


def amqp_round_trip(url: str, queue: str) -> float:
    """An ordinary pika client: connect, publish one message with a confirm, get it back.
    Returns the seconds it took."""
    t0 = time.monotonic()
    body = os.urandom(16) + b"-bystander"
    with channel(url) as (_conn, ch):
        ch.confirm_delivery()
        ch.basic_publish("", queue, body)  # returns once confirmed; raises on a nack
        method, _props, got = ch.basic_get(queue, auto_ack=True)
    assert method is not None and got == body, f"round trip on {queue} got {got!r}"
    return time.monotonic() - t0


def timed(fn, timeout_s: float):
    """Run fn in a daemon thread for at most timeout_s: (seconds, None) when it returned,
    (None, error) when it raised, (None, 'still waiting') when it had not returned."""
    out: dict = {}

    def run():
        t0 = time.monotonic()
        try:
            fn()
            out["s"] = time.monotonic() - t0
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            out["e"] = repr(e)[:300]

    t = threading.Thread(target=run, name="timed", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return None, f"still waiting after {timeout_s}s"
    return out.get("s"), out.get("e")


def bystander_loop(stop, url: str, queue: str, pause_s: float = 0.05) -> list[tuple[float, float]]:
    """Ordinary round trips until `stop`: [(finished at, seconds)]."""
    trips = []
    while not stop.is_set():
        seconds = amqp_round_trip(url, queue)
        trips.append((time.monotonic(), seconds))
        stop.wait(pause_s)
    return trips


@contextlib.contextmanager
def preconditions():
    """A test's setup: in an xfail(raises=AssertionError) test a failed setup assertion
    must not pass for the expected defect, so it is raised as a RuntimeError."""
    try:
        yield
    except AssertionError as e:
        raise RuntimeError(f"precondition failed: {e}") from e


def mixed_bodies(total: int, seed: int) -> list[bytes]:
    """Incompressible bodies of 1 KiB..64 KiB adding up to about `total` bytes."""
    rnd = random.Random(seed)
    blob = os.urandom(SMALL_MESSAGE_MAX)
    out, size = [], 0
    while size < total:
        n = rnd.randint(KiB, SMALL_MESSAGE_MAX)
        out.append(blob[:n])
        size += n
    return out


# ------------------------------------------------- 1. consumers that never read


FILL_PER_QUEUE = 40 * 1000 * 1000


def test_consumers_that_never_read_are_bounded_closed_and_lose_nothing(broker_factory):
    broker = start(broker_factory)
    url = amqp_url(broker)
    auto_q, manual_q, by_q = unique("never-auto"), unique("never-manual"), unique("bystander")
    declare(url, auto_q, manual_q, by_q)
    auto_bodies, manual_bodies = mixed_bodies(FILL_PER_QUEUE, 1), mixed_bodies(FILL_PER_QUEUE, 2)
    t0 = time.monotonic()
    for q, bodies in ((auto_q, auto_bodies), (manual_q, manual_bodies)):
        r = publish_confirmed(url, q, bodies, timeout_s=60)
        assert r.error is None and len(r.acked) == len(bodies), (r.error, len(r.acked), len(r.nacked))
    volume = sum(map(len, auto_bodies)) + sum(map(len, manual_bodies))
    note(broker, f"never-read: {len(auto_bodies)} + {len(manual_bodies)} messages of 1..64 KiB, "
                 f"{volume / MiB:.0f} MiB, published with confirms in {time.monotonic() - t0:.1f}s")
    amqp_round_trip(url, by_q)
    baseline = rss_bytes(broker.pid)

    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        opened = time.monotonic()
        auto = raw_consumer(broker, auto_q, no_ack=True)
        manual = raw_consumer(broker, manual_q, no_ack=False, prefetch=65535)
        bystander = Background(bystander_loop, url, by_q, name="bystander")
        closed_at: dict[str, float] = {}
        try:
            deadline = opened + SEND_TIMEOUT_MS / 1000 + 10
            while len(closed_at) < 2 and time.monotonic() < deadline:
                for name, r in (("auto", auto), ("manual", manual)):
                    if name not in closed_at and logged_for(broker, STOPPED_READING, r.port):
                        closed_at[name] = time.monotonic() - opened
                time.sleep(0.1)
            watch.check()
        finally:
            trips = bystander.join(timeout_s=30)
        stuck_until = opened + min(closed_at.values(), default=0)
        during = [s for done, s in trips if done <= stuck_until]
        note(broker, f"never-read: closed by send_timeout after {closed_at} s (send_timeout_ms "
                     f"{SEND_TIMEOUT_MS}); RSS baseline {baseline / MiB:.0f} MiB, peak {watch.peak / MiB:.0f} MiB "
                     f"(+{(watch.peak - baseline) / MiB:.0f} MiB, bound {2 * NON_READER_BYTES / MiB:.0f} MiB); "
                     f"bystander round trips {len(trips)} ({len(during)} while both were stuck), slowest "
                     f"{max((s for _, s in trips), default=0):.2f}s")
        assert set(closed_at) == {"auto", "manual"}, (
            f"non-readers not closed {SEND_TIMEOUT_MS / 1000 + 10:.0f}s after they stopped reading: "
            f"only {closed_at} logged {STOPPED_READING!r}")
        assert watch.peak - baseline < 2 * NON_READER_BYTES, (
            f"two never-reading consumers grew the broker by {(watch.peak - baseline) / MiB:.0f} MiB "
            f"(bound {2 * NON_READER_BYTES / MiB:.0f} MiB; the queues hold {volume / MiB:.0f} MiB)")
        assert during, "no bystander round trip completed while the non-readers were stuck"
        assert max(s for _, s in trips) < 3.0, f"a bystander round trip took {max(s for _, s in trips):.2f}s"

        # Their sockets are closed: what the kernel still held arrives, then EOF.
        got_auto, eof_auto = drain_count_deliveries(auto, timeout_s=10)
        assert eof_auto, "the no-ack non-reader's socket was not closed"
        assert closed_by_peer(manual.sock, timeout_s=10), "the manual-ack non-reader's socket was not closed"
        auto.close()
        manual.close()
        broker.assert_running()
        after = wait_rss_down(broker, watch, baseline)

    # Manual acks: every unacked delivery is back in the queue (redelivered).
    ready_manual = wait_until(lambda: (n := passive_count(url, manual_q)) == len(manual_bodies) and n, 10,
                              lambda: f"manual-ack queue holds {passive_count(url, manual_q)} of "
                                      f"{len(manual_bodies)} after its consumer was closed")
    with channel(url) as (_conn, ch):
        method, _props, body = ch.basic_get(manual_q, auto_ack=False)
        assert method.redelivered and body == manual_bodies[0], (method, len(body))
        ch.basic_nack(method.delivery_tag, requeue=True)
    # No-ack: deliveries count as settled once queued for the writer, so what sat in the
    # writer queue when the connection was cut is gone (automatic ack allows it); the rest is in
    # the queue or reached the client.
    ready_auto = passive_count(url, auto_q)
    lost = len(auto_bodies) - ready_auto - got_auto
    note(broker, f"never-read: after close RSS {after / MiB:.0f} MiB; manual-ack queue {ready_manual}/"
                 f"{len(manual_bodies)} ready; no-ack queue {ready_auto} ready + {got_auto} received by the "
                 f"client of {len(auto_bodies)} ({lost} dropped from the writer queue)")
    assert 0 <= lost <= WRITE_QUEUE + 80, (
        f"no-ack: {lost} deliveries neither in the queue nor received (writer queue holds {WRITE_QUEUE})")
    assert ready_auto > 0, "the no-ack non-reader drained the whole queue into the broker's memory"
    assert got_auto + lost >= 100, f"the no-ack non-reader was sent only {got_auto + lost} messages: no abuse"
    amqp_round_trip(url, by_q)


LARGE_MESSAGE = 1000 * KiB  # under the topic's default max.message.bytes (1 MiB)
LARGE_COUNT = 200


def test_consumer_of_large_messages_that_never_reads_stays_within_the_budget(broker_factory):
    broker = start(broker_factory, send_timeout_ms=5000)
    url = amqp_url(broker)
    q = unique("never-large")
    declare(url, q)
    r = publish_confirmed(url, q, [os.urandom(LARGE_MESSAGE)] * LARGE_COUNT, window=16, timeout_s=60)
    with preconditions():
        assert r.error is None and len(r.acked) == LARGE_COUNT, (r.error, len(r.acked), len(r.nacked))
    time.sleep(0.5)
    baseline = rss_bytes(broker.pid)
    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        opened = time.monotonic()
        c = raw_consumer(broker, q, no_ack=True)
        try:
            # Until it is closed, or has shown it grows past the bound, or 8 s passed.
            while (time.monotonic() - opened < 8 and not logged_for(broker, STOPPED_READING, c.port)
                   and watch.peak - baseline < MEMORY_BUDGET + POOL_RSS_SLACK + 32 * MiB):
                time.sleep(0.1)
            watched = time.monotonic() - opened
            closed = logged_for(broker, STOPPED_READING, c.port)
        finally:
            c.close()
        watch.check()
    note(broker, f"never-read large: {LARGE_COUNT} x {LARGE_MESSAGE // KiB} KiB in the queue; RSS baseline "
                 f"{baseline / MiB:.0f} MiB, peak {watch.peak / MiB:.0f} MiB (+{(watch.peak - baseline) / MiB:.0f} "
                 f"MiB; budget {MEMORY_BUDGET / MiB:.0f} MiB) within {watched:.1f}s of its consume-ok"
                 f"{' (then closed by send_timeout)' if closed else ''}")
    assert watch.peak - baseline < MEMORY_BUDGET + POOL_RSS_SLACK, (
        f"one never-reading consumer grew the broker by {(watch.peak - baseline) / MiB:.0f} MiB "
        f"(memory budget {MEMORY_BUDGET / MiB:.0f} MiB)")


# ------------------------------------------- 2. a publisher that never reads confirms


def pipeline_unread(stop, r: Raw, frames: bytes, progress: list, pause_s: float = 0.0) -> dict:
    """Send `frames` over and over on `r` as fast as the broker takes them (pausing
    `pause_s` after each send), never reading, until `stop` or an error; progress gets
    (time, total bytes sent) samples."""
    view, pos, sent = memoryview(frames), 0, 0
    r.sock.settimeout(0.2)
    out = {"error": None}
    while not stop.is_set():
        try:
            n = r.sock.send(view[pos:])
        except socket.timeout:
            progress.append((time.monotonic(), sent))
            continue
        except OSError as e:
            out["error"] = repr(e)
            out["error_at"] = time.monotonic()
            break
        sent += n
        pos = (pos + n) % len(frames)
        progress.append((time.monotonic(), sent))
        if pause_s:
            stop.wait(pause_s)
    out["sent"] = sent
    return out


def longest_stall(progress: list, until: float) -> float:
    """The longest stretch (seconds) before `until` in which no byte was sent."""
    best, last_t, last_sent = 0.0, None, None
    for t, sent in progress:
        if t > until:
            break
        if last_sent is None or sent > last_sent:
            last_t, last_sent = t, sent
        else:
            best = max(best, t - last_t)
    return best


UNREAD_CONFIRMS_S = 8.0


def test_publisher_that_never_reads_its_confirms(broker_factory):
    """Confirms of consecutive durable publishes coalesce into one basic.ack `multiple`
    per fsync, so an unread confirm stream is a few bytes per fsync: that publisher is
    read at full speed and neither stalled nor closed while the test runs (what waits is
    in kernel socket buffers, not the broker). When every publish gets a confirm frame
    of its own (nacks from a full reject-publish queue) or a basic.return with its body
    (mandatory, unroutable), the unread stream fills the socket: the broker stops reading
    that publisher (back-pressure through CONFIRM_QUEUE and WRITE_QUEUE) and closes it
    after send_timeout_ms."""
    broker = start(broker_factory)
    url = amqp_url(broker)
    plain_q, full_q, by_q = unique("confirms"), unique("full"), unique("bystander")
    declare(url, plain_q, by_q)
    declare(url, full_q, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    amqp_round_trip(url, by_q)
    baseline = rss_bytes(broker.pid)

    def confirming(routing_key: str, size: int, mandatory: bool = False) -> tuple[Raw, bytes]:
        r = raw_open(broker, rcvbuf=4096)
        r.open_channels([1])
        r.call(1, pika.spec.Confirm.Select(), pika.spec.Confirm.SelectOk)
        one = publish_frames(1, routing_key, b"c" * size, mandatory=mandatory) if size else (
            method_frame(1, pika.spec.Basic.Publish(exchange="", routing_key=routing_key)) + content_header(1, 0))
        return r, one * max(1, (256 * KiB) // len(one))

    acks, acks_frames = confirming(plain_q, KiB)
    nacks, nacks_frames = confirming(full_q, 0)  # smallest publish: most nacks per byte
    returns, returns_frames = confirming("nowhere-" + unique("x"), KiB, mandatory=True)
    progress = {"acks": [], "nacks": [], "returns": []}
    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        t0 = time.monotonic()
        # The acks publisher is held to a few MB/s (it is not stalled, but it would take
        # the broker's CPU from the nacks publisher, which has ~4 MB of 21-byte nacks to
        # queue up before its socket is full).
        runs = {name: Background(pipeline_unread, r, frames, progress[name], pause, name=f"unread-{name}")
                for name, r, frames, pause in (("acks", acks, acks_frames, 0.1),
                                               ("nacks", nacks, nacks_frames, 0.0),
                                               ("returns", returns, returns_frames, 0.0))}
        bystander = Background(bystander_loop, url, by_q, 0.25, name="bystander")
        closed_at: dict[str, float] = {}
        try:
            deadline = t0 + max(UNREAD_CONFIRMS_S, SEND_TIMEOUT_MS / 1000 + 28)
            while time.monotonic() < deadline:
                for name, r in (("nacks", nacks), ("returns", returns), ("acks", acks)):
                    if name not in closed_at and logged_for(broker, STOPPED_READING, r.port):
                        closed_at[name] = time.monotonic()
                if {"nacks", "returns"} <= set(closed_at) and time.monotonic() - t0 >= UNREAD_CONFIRMS_S:
                    break
                time.sleep(0.1)
            watch.check()
            acks_alive = runs["acks"].thread.is_alive()
        finally:
            results = {name: run.join(timeout_s=15) for name, run in runs.items()}
            trips = bystander.join(timeout_s=30)
            close_all([acks.sock, nacks.sock, returns.sock])
        end = time.monotonic()
        sent_last = [s for t, s in progress["acks"] if t >= end - 3.0]
        acks_recent = (max(sent_last) - min(sent_last)) if sent_last else 0
        stalls = {name: longest_stall(progress[name], closed_at.get(name, end)) for name in progress}
        note(broker, "unread confirms: " + "; ".join(
            f"{name}: sent {results[name]['sent'] / MiB:.1f} MiB, "
            + (f"closed by send_timeout after {closed_at[name] - t0:.1f}s" if name in closed_at else "not closed")
            + f", longest stall {stalls[name]:.1f}s" for name in progress)
            + f"; acks publisher sent {acks_recent / MiB:.1f} MiB in its last 3s; RSS baseline "
              f"{baseline / MiB:.0f} MiB, peak {watch.peak / MiB:.0f} MiB; bystander round trips {len(trips)}, "
              f"slowest {max((s for _, s in trips), default=0):.2f}s")
        # Coalesced acks: read at full speed, neither stalled nor closed.
        assert "acks" not in closed_at and acks_alive and results["acks"]["error"] is None, (
            f"the acks publisher was closed: {results['acks']}")
        assert acks_recent > 256 * KiB, (
            f"the acks publisher got only {acks_recent} bytes in during its last 3s: stalled")
        assert results["acks"]["sent"] > 2 * MiB, results["acks"]
        # One frame per publish: stalled by back-pressure, then closed by send_timeout.
        for name in ("nacks", "returns"):
            assert name in closed_at, (
                f"the {name} publisher was not closed by send_timeout_ms ({results[name]}, "
                f"{(closed_at.get(name, end) - t0):.1f}s)")
            assert stalls[name] >= 1.0, f"the {name} publisher was never stalled before its close ({stalls[name]:.2f}s)"
        assert watch.peak - baseline < 48 * MiB, (
            f"unread confirms grew the broker by {(watch.peak - baseline) / MiB:.0f} MiB")
        assert trips and max(s for _, s in trips) < 3.0, f"bystander round trips: {trips}"
    broker.assert_running()
    amqp_round_trip(url, by_q)


# ------------------------------------ 3. half-sent bodies on many channels (the pool)


CHANNEL_MAX = 64
BIG_BODY = 8 * MiB  # under amqp_message_bytes_max (16 MiB); REQUEST_POOL holds exactly 4


def half_bodies(r: Raw, queue: str, channels, announced: int, sent: int, timeout_s: float = 1.0) -> tuple[int, int]:
    """On each channel: basic.publish, a content header announcing `announced` bytes,
    and `sent` bytes of the body; stops at the first channel the broker does not read
    within `timeout_s`. Returns (channels fully sent, bytes sent)."""
    part = os.urandom(sent)
    done, total = 0, 0
    for ch in channels:
        data = publish_frames(ch, queue, part, announced=announced)
        n = send_some(r.sock, data, timeout_s=timeout_s)
        total += n
        if n < len(data):
            break
        done += 1
    return done, total


def test_half_sent_bodies_are_bounded_by_the_request_pool(broker_factory):
    broker = start(broker_factory, "--amqp-channel-max", str(CHANNEL_MAX))
    url = amqp_url(broker)
    q = unique("half")
    declare(url, q)
    amqp_round_trip(url, q)

    # Channel 65 is refused as documented (530 NOT_ALLOWED closes the connection).
    r = raw_open(broker, channel_max=65535)
    r.send(b"".join(method_frame(i, pika.spec.Channel.Open()) for i in range(1, CHANNEL_MAX + 2)))
    for _ in range(CHANNEL_MAX):
        r.expect(pika.spec.Channel.OpenOk)
    close = r.expect(pika.spec.Connection.Close)
    r.close()
    assert close.reply_code == 530 and "channel_max" in close.reply_text, close
    note(broker, f"half-sent: channel {CHANNEL_MAX + 1} -> {close.reply_code} {close.reply_text}")

    # (a) Three bodies of 8 MiB sent but for their last byte (they fit the pool), then a
    # reset mid-body: the pool and the memory come back.
    baseline = rss_bytes(broker.pid)
    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        a = raw_open(broker)
        a.open_channels(range(1, 4))
        done, sent = half_bodies(a, q, range(1, 4), BIG_BODY, BIG_BODY - 1, timeout_s=5)
        assert done == 3, f"the broker stopped reading after {sent} bytes of three bodies that fit the pool"
        # The pool holds the bytes that came (reserved as body frames arrive).
        held = wait_until(lambda: (u := budget_used(broker)) >= 3 * (BIG_BODY - 1) and u, 5,
                          lambda: f"budget used {budget_used(broker)}, not the three bodies' bytes")
        time.sleep(0.5)
        holding = rss_bytes(broker.pid)
        a.close(reset=True)
        t_reset = time.monotonic()
        wait_budget_free(broker, timeout_s=10)
        wait_rss_down(broker, watch, baseline)
        # The pool is back at 0 (above); RSS comes down too, though the allocator may
        # keep some of the freed body buffers' pages (wait_rss_down's slack).
        after_a = rss_bytes(broker.pid)
        back_after = time.monotonic() - t_reset
    note(broker, f"half-sent: 3 x {BIG_BODY // MiB} MiB announced, {sent / MiB:.0f} MiB sent: budget "
                 f"{held / MiB:.0f} MiB held, RSS {baseline / MiB:.0f} -> {holding / MiB:.0f} MiB "
                 f"({(holding - baseline) / max(sent, 1):.1f} x the body bytes); after a reset mid-body budget 0, "
                 f"RSS {after_a / MiB:.0f} MiB {back_after:.1f}s later")

    # (b) Two connections x 64 channels, each an 8 MiB body announced and sent but for
    # its last byte: the broker stops reading them once the pool is full.
    baseline = rss_bytes(broker.pid)
    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        abusers = [raw_open(broker) for _ in range(2)]
        for ab in abusers:
            ab.open_channels(range(1, CHANNEL_MAX + 1))
        try:
            outcome = [half_bodies(ab, q, range(1, CHANNEL_MAX + 1), BIG_BODY, BIG_BODY - 1) for ab in abusers]
            time.sleep(1.0)
            watch.check()
            used = budget_used(broker)
            m = metrics(broker)
            note(broker, f"half-sent: 2 x {CHANNEL_MAX} channels of {BIG_BODY // MiB} MiB bodies: (channels, bytes) "
                         f"taken by the broker and the kernel {outcome}; request pool {used / MiB:.1f} of "
                         f"{REQUEST_POOL / MiB:.0f} MiB, waits {m['herald_memory_budget_waits_total']:.0f}; "
                         f"RSS baseline {baseline / MiB:.0f} MiB, peak {watch.peak / MiB:.0f} MiB "
                         f"(+{(watch.peak - baseline) / MiB:.0f}, budget {MEMORY_BUDGET / MiB:.0f} MiB)")
            assert used <= REQUEST_POOL, (
                f"request pool used {used / MiB:.1f} MiB (pool {REQUEST_POOL / MiB:.0f} MiB)")
            # A connection whose bodies in assembly hold memory and need more than is
            # free is closed (506), never left waiting for memory it holds itself.
            assert count_logged(broker, "RESOURCE_ERROR - no memory for the message body") >= 1
            assert watch.peak - baseline < MEMORY_BUDGET + POOL_RSS_SLACK, (
                f"bodies in assembly grew the broker by {(watch.peak - baseline) / MiB:.0f} MiB "
                f"(budget {MEMORY_BUDGET / MiB:.0f} MiB)")
            broker.assert_running()
        finally:
            # They stay wedged (see test_disconnect_mid_body_gives_the_request_pool_back).
            close_all([ab.sock for ab in abusers])


def many_half_bodies_then_disconnect(broker, q: str) -> tuple[float, float]:
    """One connection, 64 channels, each an 8 MiB body announced and half sent; its
    reader ends up waiting for pool memory. Then it resets. Returns (budget held, RSS peak)."""
    ab = raw_open(broker)
    ab.open_channels(range(1, CHANNEL_MAX + 1))
    try:
        half_bodies(ab, q, range(1, CHANNEL_MAX + 1), BIG_BODY, BIG_BODY // 2)
        # The pool fills; the next body frame of the same connection that needs memory
        # closes it (506: it must not wait for memory it holds itself).
        held = 0.0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            held = max(held, budget_used(broker))
            time.sleep(0.05)
    finally:
        ab.close(reset=True)
    return held, rss_bytes(broker.pid)


def test_disconnect_mid_body_gives_the_request_pool_back(broker_factory):
    broker = start(broker_factory, "--amqp-channel-max", str(CHANNEL_MAX))
    url = amqp_url(broker)
    q = unique("half")
    declare(url, q)
    with preconditions():
        amqp_round_trip(url, q)
    baseline = rss_bytes(broker.pid)
    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        with preconditions():
            held, _rss = many_half_bodies_then_disconnect(broker, q)
        note(broker, f"disconnect mid-body: {held / MiB:.0f} MiB of the request pool held by one connection's "
                     f"half-sent bodies, then it reset")
        try:
            wait_budget_free(broker, timeout_s=5)
        finally:
            note(broker, f"disconnect mid-body: 5s after the reset the request pool holds "
                         f"{budget_used(broker) / MiB:.0f} MiB; RSS {rss_bytes(broker.pid) / MiB:.0f} MiB "
                         f"(baseline {baseline / MiB:.0f}, peak {watch.peak / MiB:.0f} MiB)")
        wait_rss_down(broker, watch, baseline)

    seconds, error = timed(lambda: amqp_round_trip(url, q), 10)
    assert seconds is not None, f"an ordinary publish after the abuser left: {error}"


def test_announced_bodies_do_not_stall_other_clients(broker_factory):
    broker = start(broker_factory)
    url = amqp_url(broker)
    q = unique("announced")
    declare(url, q)
    q_http = unique("announced-http")  # its own queue: the AMQP probe must not get its record
    declare(url, q_http)

    def kafka_api_versions():
        s = kafka_connect(broker, timeout_s=5)
        try:
            s.sendall(api_versions_v0(1))
            assert KafkaReader(s).response()[0] == 1
        finally:
            s.close()

    def http_publish():
        r = httpx.post(f"{broker.http_url}/topics/{q_http}/records", json={"records": [{"value": "over http"}]},
                       timeout=5)
        assert r.status_code == 200, r.text[:300]

    with preconditions():  # each probe works before the abuse
        amqp_round_trip(url, q)
        kafka_api_versions()
        http_publish()
    ab = raw_open(broker)
    try:
        ab.open_channels(range(1, 5))
        ab.send(b"".join(method_frame(ch, pika.spec.Basic.Publish(exchange="", routing_key=q))
                         + content_header(ch, BIG_BODY) for ch in range(1, 5)))
        # A content header reserves nothing: only body bytes that came hold memory.
        time.sleep(0.5)
        held = budget_used(broker)
        assert held < MiB, f"four 8 MiB content headers with no body hold {held / MiB:.1f} MiB of the pool"

        # The three probes at once, each with 5 s.
        probes: dict[str, tuple] = {}
        threads = [threading.Thread(target=lambda n=n, f=f: probes.update({n: timed(f, 5)}), daemon=True)
                   for n, f in (("amqp", lambda: amqp_round_trip(url, q)), ("kafka", kafka_api_versions),
                                ("http", http_publish))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(7)
        outcome = {n: probes.get(n, (None, "no answer")) for n in ("amqp", "kafka", "http")}
        note(broker, f"announced bodies: 4 content headers of {BIG_BODY // MiB} MiB, no body byte: request pool "
                     f"{held / MiB:.0f}/{REQUEST_POOL / MiB:.0f} MiB held; an ordinary AMQP publish+get, a Kafka "
                     f"ApiVersions, an HTTP publish: " + "; ".join(
                         f"{n} {s:.2f}s" if s is not None else f"{n} {e}" for n, (s, e) in outcome.items()))
    finally:
        ab.close()
    for name, (seconds, error) in outcome.items():
        assert seconds is not None and seconds < 5, f"an ordinary {name} request waited for the abuser: {error}"


def test_a_body_under_amqp_message_bytes_max_is_stored(broker_factory):
    broker = start(broker_factory)
    url = amqp_url(broker)
    q = unique("big-body")
    declare(url, q)
    r = publish_confirmed(url, q, [os.urandom(BIG_BODY)], timeout_s=30)
    note(broker, f"big body: one {BIG_BODY // MiB} MiB publish -> acked {r.acked}, nacked {r.nacked}, {r.error}")
    assert r.acked == [1] and not r.nacked, (r.acked, r.nacked, r.error)


# ------------------------------------------------------------------ 4. tricklers


def test_handshake_tricklers_and_oversized_frames_are_cut_off(broker_factory):
    """No setting bounds the handshake from `herald serve`: AmqpConfig.handshake_timeout_ms
    is the built-in 10 s (crates/herald/src/config.rs does not map it)."""
    broker = start(broker_factory)
    url = amqp_url(broker)
    q = unique("trickle")
    declare(url, q)
    amqp_round_trip(url, q)
    baseline = rss_bytes(broker.pid)
    results: dict[str, object] = {}

    def trickle_bytes():
        # The protocol header and a valid start-ok, one byte a second.
        s = socket.create_connection((broker.host, broker.amqp_port), timeout=5)
        t0 = time.monotonic()
        data = AMQP_HEADER + method_frame(0, pika.spec.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"))
        s.settimeout(1.0)
        i = 0
        try:
            while time.monotonic() - t0 < HANDSHAKE_TIMEOUT_S + 6:
                try:
                    s.send(data[i:i + 1])
                    i += 1
                    if not s.recv(65536):
                        break
                except socket.timeout:
                    continue
                except OSError:
                    break
            else:
                results["trickle"] = None
                return
            results["trickle"] = time.monotonic() - t0
            results["trickle_bytes"] = i
        finally:
            s.close()

    def silent_after(prefix: bytes, name: str):
        s = socket.create_connection((broker.host, broker.amqp_port), timeout=5)
        t0 = time.monotonic()
        try:
            if prefix:
                s.sendall(prefix)
            closed = closed_by_peer(s, HANDSHAKE_TIMEOUT_S + 6)
            results[name] = time.monotonic() - t0 if closed else None
        finally:
            s.close()

    def heartbeat_then_partial():
        r = raw_open(broker, heartbeat=1)
        t0 = time.monotonic()
        try:
            r.send(struct.pack(">BHI", FRAME_METHOD, 0, 1000))
            closed = closed_by_peer(r.sock, 10)
            results["heartbeat"] = time.monotonic() - t0 if closed else None
        finally:
            r.close()

    def oversized(in_handshake: bool):
        name = "4GB-handshake" if in_handshake else "4GB"
        if in_handshake:
            r = Raw(broker)
            r.send(AMQP_HEADER)
            r.expect(pika.spec.Connection.Start)
        else:
            r = raw_open(broker)
        try:
            t0 = time.monotonic()
            r.send(struct.pack(">BHI", FRAME_METHOD, 0, 0xFFFFFFF0))
            close = r.expect(pika.spec.Connection.Close)
            answered = time.monotonic() - t0
            # Now stream 100 MB more of the claimed frame: the broker has let go of it.
            streamed = send_some(r.sock, bytes(100 * 1000 * 1000), timeout_s=5)
            results[name] = (close.reply_code, close.reply_text, answered, streamed)
        finally:
            r.close()

    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        workers = [threading.Thread(target=f, args=a, daemon=True) for f, a in (
            (trickle_bytes, ()),
            (silent_after, (b"", "silent")),
            (silent_after, (AMQP_HEADER, "header-only")),
            (silent_after, (AMQP_HEADER + struct.pack(">BHI", FRAME_METHOD, 0, 300), "frame-header")),
            (heartbeat_then_partial, ()),
            (oversized, (False,)),
            (oversized, (True,)),
        )]
        for w in workers:
            w.start()
        time.sleep(3)
        by = amqp_round_trip(url, q)
        for w in workers:
            w.join(HANDSHAKE_TIMEOUT_S + 12)
        watch.check()
    note(broker, f"tricklers: {results}; bystander round trip {by:.2f}s while they ran; RSS baseline "
                 f"{baseline / MiB:.0f} MiB, peak {watch.peak / MiB:.0f} MiB")
    for name in ("trickle", "silent", "header-only", "frame-header"):
        closed = results.get(name)
        assert closed is not None, f"{name}: not closed {HANDSHAKE_TIMEOUT_S + 6:.0f}s after connecting"
        assert HANDSHAKE_TIMEOUT_S - 2 <= closed <= HANDSHAKE_TIMEOUT_S + 4, (
            f"{name}: closed after {closed:.1f}s (handshake timeout {HANDSHAKE_TIMEOUT_S:.0f}s)")
    assert count_logged(broker, "AMQP handshake not finished within handshake_timeout_ms") >= 4
    # Heartbeats on: a partial frame is cut off after two missed heartbeats (1 s each).
    assert results.get("heartbeat") is not None and results["heartbeat"] <= 6, results.get("heartbeat")
    assert count_logged(broker, "missed heartbeats from the AMQP client") >= 1
    for name in ("4GB", "4GB-handshake"):
        code, text, answered, streamed = results[name]
        assert code == 501 and "frame_max" in text, (name, code, text)
        assert answered < 3.0, f"{name}: connection.close came {answered:.1f}s after the header"
        assert streamed < 50 * 1000 * 1000, f"{name}: the broker took {streamed} more bytes of the refused frame"
    assert watch.peak - baseline < 16 * MiB, (
        f"tricklers and refused 4 GB frames grew the broker by {(watch.peak - baseline) / MiB:.0f} MiB")
    broker.assert_running()


PARTIAL_FRAMES = 100
REQUEST_READ_TIMEOUT_MS = 2000


def test_partial_frame_after_the_handshake_is_cut_off(broker_factory):
    broker = start(broker_factory, "--request-read-timeout-ms", str(REQUEST_READ_TIMEOUT_MS))
    amqp_url(broker)
    with preconditions():
        raw_open(broker).close()
    time.sleep(0.5)
    rss0 = rss_bytes(broker.pid)
    conns: list[Raw] = []
    try:
        with preconditions():
            for _ in range(PARTIAL_FRAMES):
                r = raw_open(broker, heartbeat=0)
                r.send(struct.pack(">BHI", FRAME_METHOD, 0, FRAME_MAX - 8) + bytes(FRAME_MAX - 9))
                conns.append(r)
        t0 = time.monotonic()
        time.sleep(1.0)
        per_conn = (rss_bytes(broker.pid) - rss0) / PARTIAL_FRAMES
        deadline = t0 + REQUEST_READ_TIMEOUT_MS / 1000 + 4
        open_ = still_open([r.sock for r in conns], deadline - time.monotonic())
        note(broker, f"partial frame: {PARTIAL_FRAMES} connections, each {FRAME_MAX - 1} bytes of a "
                     f"{FRAME_MAX}-byte frame, heartbeats off: {per_conn / KiB:.0f} KiB RSS each; "
                     f"{len(open_)} still open {deadline - t0:.0f}s later")
        assert not open_, f"{len(open_)} of {PARTIAL_FRAMES} partial frames still held {deadline - t0:.0f}s on"
    finally:
        close_all([r.sock for r in conns])


MANY_CHANNELS = 4000


def test_many_channels_each_with_a_message_in_assembly(broker_factory):
    """One connection with thousands of channels, each with a message whose body is
    half sent, then finished in the other order: every message is stored, the
    connection and other clients keep working, and a message left unfinished on one
    of the channels still closes the connection after request_read_timeout_ms (the
    reader's per-frame checks are counts kept as messages start and end, not a scan
    of the channels, connection.rs / assembly.rs). Not a timing test."""
    broker = start(broker_factory, "--amqp-channel-max", str(MANY_CHANNELS),
                   "--request-read-timeout-ms", str(REQUEST_READ_TIMEOUT_MS))
    url = amqp_url(broker)
    q, bystander = unique("many-channels"), unique("bystander")
    declare(url, q, bystander)
    ids = range(1, MANY_CHANNELS + 1)
    body = os.urandom(64)
    r = raw_open(broker, channel_max=MANY_CHANNELS)
    try:
        r.open_channels(ids)
        r.send(b"".join(method_frame(ch, pika.spec.Basic.Publish(routing_key=q))
                        + content_header(ch, len(body)) + body_frames(ch, body[:32]) for ch in ids))
        # The first half of every body holds request-pool memory; no connection of
        # its own is refused for another channel's memory.
        amqp_round_trip(url, bystander)
        r.send(b"".join(body_frames(ch, body[32:]) for ch in reversed(ids)))
        wait_until(lambda: passive_count(url, q) == MANY_CHANNELS, 30,
                   lambda: f"{passive_count(url, q)} of {MANY_CHANNELS} messages stored")
        # The connection still answers on its first and last channels.
        for ch in (1, MANY_CHANNELS):
            r.call(ch, pika.spec.Basic.Qos(prefetch_count=1), pika.spec.Basic.QosOk)
        note(broker, f"many channels: {MANY_CHANNELS} channels, a message in assembly on each, all stored")

        # One more message, left unfinished on the last channel: the connection is
        # closed for it once request_read_timeout_ms passed.
        t0 = time.monotonic()
        r.send(method_frame(MANY_CHANNELS, pika.spec.Basic.Publish(routing_key=q))
               + content_header(MANY_CHANNELS, len(body)) + body_frames(MANY_CHANNELS, body[:32]))
        r.sock.settimeout(REQUEST_READ_TIMEOUT_MS / 1000 + 5)
        close = r.expect(pika.spec.Connection.Close)
        waited = time.monotonic() - t0
        assert close.reply_code == 506 and f"channel {MANY_CHANNELS}" in close.reply_text, close
        assert waited >= REQUEST_READ_TIMEOUT_MS / 1000 * 0.9, f"closed after {waited:.1f}s"
    finally:
        r.close()
    amqp_round_trip(url, bystander)
    assert passive_count(url, q) == MANY_CHANNELS
    broker.assert_running()


# ------------------------------------------------------------- 5. idle connections


IDLE_CONNECTIONS = 500


def test_idle_amqp_connections_cost_a_few_kib_each(broker_factory):
    limit = raise_nofile(8000)
    if limit < 2 * IDLE_CONNECTIONS + 200:
        pytest.skip(f"open-file limit {limit} is too low for {IDLE_CONNECTIONS} idle connections")
    broker = start(broker_factory)
    url = amqp_url(broker)
    q = unique("idle")
    declare(url, q)
    amqp_round_trip(url, q)

    def open_idle(n: int) -> list[Raw]:
        out = []
        for _ in range(n):
            r = raw_open(broker, heartbeat=0)
            r.open_channels([1])
            out.append(r)
        return out

    warm = open_idle(50)
    time.sleep(0.5)
    close_all([r.sock for r in warm])
    wait_until(lambda: metrics(broker).get("herald_amqp_connections", 1) == 0, 10, "warm-up connections not let go")
    time.sleep(0.5)
    idle: list[Raw] = []
    try:
        rss0 = rss_bytes(broker.pid)
        t0 = time.monotonic()
        idle = open_idle(IDLE_CONNECTIONS)
        opened = time.monotonic() - t0
        wait_until(lambda: metrics(broker).get("herald_amqp_connections", 0) >= IDLE_CONNECTIONS, 10,
                   "the broker does not count the idle connections")
        time.sleep(1.0)
        rss1 = rss_bytes(broker.pid)
        per_conn = (rss1 - rss0) / IDLE_CONNECTIONS
        trip = amqp_round_trip(url, q)
        m = metrics(broker)
        note(broker, f"idle: {IDLE_CONNECTIONS} AMQP connections (handshake + one channel each) opened in "
                     f"{opened:.1f}s: RSS {rss0 / MiB:.1f} -> {rss1 / MiB:.1f} MiB, {per_conn / KiB:.1f} KiB per "
                     f"connection (bound {IDLE_BYTES_PER_CONNECTION_MAX // KiB} KiB); gauges connections "
                     f"{m.get('herald_amqp_connections')}, channels {m.get('herald_amqp_channels')}; "
                     f"ordinary round trip meanwhile {trip:.2f}s")
        assert per_conn < IDLE_BYTES_PER_CONNECTION_MAX, (
            f"{per_conn / KiB:.1f} KiB of RSS per idle AMQP connection (bound {IDLE_BYTES_PER_CONNECTION_MAX // KiB} KiB)")
        assert trip < 3.0
    finally:
        close_all([r.sock for r in idle])
    wait_until(lambda: metrics(broker).get("herald_amqp_connections", 1) == 0, 15,
               "the broker did not let go of the idle connections after they closed")
    broker.assert_running()


# ----------------------------------------------- 6. hang up in the middle of a delivery


MID_MESSAGES = 40
MID_MESSAGE_BYTES = 512 * KiB
MID_CLIENTS = 12


def test_consumers_that_hang_up_mid_delivery(broker_factory):
    broker = start(broker_factory)
    url = amqp_url(broker)
    q, by_q = unique("mid"), unique("bystander")
    declare(url, q, by_q)
    bodies = [bytes([i]) * 16 + os.urandom(MID_MESSAGE_BYTES - 16) for i in range(MID_MESSAGES)]
    r = publish_confirmed(url, q, bodies, window=16, timeout_s=60)
    assert r.error is None and len(r.acked) == MID_MESSAGES, (r.error, len(r.acked), len(r.nacked))
    amqp_round_trip(url, by_q)
    baseline = rss_bytes(broker.pid)
    partial = 0
    with RssWatch(broker, kill_above=RSS_KILL) as watch:
        trips = []
        for i in range(MID_CLIENTS):
            c = raw_consumer(broker, q, no_ack=False, prefetch=10 if i % 2 else 0, rcvbuf=None if i % 3 else 8192)
            try:
                got, deadline = 0, time.monotonic() + 10
                c.sock.settimeout(1.0)
                want = (i % 4 + 1) * 300 * KiB  # inside the first..fourth message
                while got < want and time.monotonic() < deadline:
                    try:
                        chunk = c.sock.recv(min(65536, want - got))
                    except socket.timeout:
                        continue
                    if not chunk:
                        break
                    got += len(chunk)
                partial += got >= want
            finally:
                c.close(reset=i % 2 == 0)
            trips.append(amqp_round_trip(url, by_q))
        watch.check()
        broker.assert_running()
        ready = wait_until(lambda: (n := passive_count(url, q)) == MID_MESSAGES and n, 10,
                           lambda: f"{passive_count(url, q)} of {MID_MESSAGES} messages ready after the hang-ups")
        after = wait_rss_down(broker, watch, baseline)
    note(broker, f"mid-delivery: {MID_CLIENTS} consumers hung up inside {MID_MESSAGE_BYTES // KiB} KiB deliveries "
                 f"({partial} got that far); {ready}/{MID_MESSAGES} ready again; RSS baseline {baseline / MiB:.0f} "
                 f"MiB, peak {watch.peak / MiB:.0f} MiB, after {after / MiB:.0f} MiB; bystander round trips "
                 f"slowest {max(trips):.2f}s")
    assert partial >= MID_CLIENTS - 2, f"only {partial} of {MID_CLIENTS} consumers got into a delivery"
    assert max(trips) < 3.0, f"a bystander round trip took {max(trips):.2f}s"
    assert watch.peak - baseline < MEMORY_BUDGET, f"broker RSS grew by {(watch.peak - baseline) / MiB:.0f} MiB"
    # Every message is still there, whole, in order, and the ones in flight are redelivered.
    with channel(url) as (_conn, ch):
        got = []
        for _ in range(MID_MESSAGES):
            method, _props, body = ch.basic_get(q, auto_ack=True)
            assert method is not None, f"queue empty after {len(got)} messages"
            got.append((method.redelivered, body))
        assert ch.basic_get(q, auto_ack=True)[0] is None
    assert [b for _, b in got] == bodies, "messages changed or reordered by the hang-ups"
    assert got[0][0], "the first message was in flight at every hang-up but is not flagged redelivered"
