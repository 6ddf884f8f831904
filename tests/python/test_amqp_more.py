"""AMQP 0-9-1, RabbitMQ's extensions beyond the basics of test_amqp.py: single active
consumer, queue expiry (x-expires), x-overflow reject-publish-dlx, stream queues and
direct reply-to, each with pika 1.4.4 as a RabbitMQ client uses them.

Same conventions as test_amqp.py: every test reaches the broker only through the
`amqp_url` fixture, a fresh herald's AMQP listener or, when HERALD_TEST_AMQP_URL is
set, that URL, so the file can be run against a real RabbitMQ to check the tests:

    HERALD_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F \\
        .venv/bin/python -m pytest tests/python/test_amqp_more.py

Each test is marked with the feature it needs (-m "amqp(feature='streams')").

What RabbitMQ does is the reference, quirks included (each is named where it is
tested): these tests passed against RabbitMQ 3.10.8 (Debian 12, classic queues unless
said otherwise) before herald had any of these features.

Every wait has a deadline. Timers (x-expires, stream timestamps) are checked with
margins of several times the interval; that something did NOT happen is checked by
waiting a clear multiple of the interval.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import datetime, timedelta, timezone

import pika
import pika.compat
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, UnroutableError

from amqp_support import (
    EXTERNAL_URL,
    amqp_url,  # noqa: F401 (a fixture)
    feature_marker,
    herald_url,
    Typed,
    channel,
    connect,
    expect_channel_close,
    find_table,
    get_all,
    publish_confirmed,
    raw_tables,
)
from herald_support import unique, wait_until

pytestmark = pytest.mark.timeout(60)


# Features Herald does not have yet: their tests are expected to fail against Herald,
# strictly, so the entry must go when the feature lands. They run normally against
# another broker (HERALD_TEST_AMQP_URL).
NOT_YET: dict[str, str] = {}


feature = feature_marker(NOT_YET)


def bodies(n: int, prefix: str = "m", start: int = 0) -> list[bytes]:
    return [f"{prefix}-{i:05d}".encode() for i in range(start, start + n)]


# --- helpers ---------------------------------------------------------------------------

def pump(conns, seconds: float) -> None:
    """Let every connection dispatch its deliveries for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)


def pump_until(conns, predicate, timeout_s: float, message) -> None:
    """Dispatch deliveries on every connection until predicate() holds; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout_s}s: {text}")
        for c in conns:
            c.process_data_events(time_limit=0.02)


def pump_until_settled(conns, predicate, timeout_s: float, message, settle_s: float = 0.3) -> None:
    """pump_until, then `settle_s` more, so that a delivery too many would have come."""
    pump_until(conns, predicate, timeout_s, message)
    pump(conns, settle_s)


def expect_connection_close(fn, code: int) -> ConnectionClosedByBroker:
    """Run fn and require the broker to close the whole connection with `code`."""
    try:
        fn()
    except ConnectionClosedByBroker as e:
        assert e.reply_code == code, f"connection closed with {e.reply_code} {e.reply_text!r}, expected {code}"
        return e
    except ChannelClosedByBroker as e:
        raise AssertionError(f"expected a connection close {code}, got a channel close "
                             f"{e.reply_code} {e.reply_text!r}") from None
    raise AssertionError(f"expected the connection to be closed with {code}, the call succeeded")


def closed_text(fn, code: int) -> str:
    """The reply text of the channel close `fn` must cause."""
    return expect_channel_close(fn, code).reply_text


class Consumer:
    """One basic.consume on a connection of its own, recording (body, redelivered,
    delivery tag, properties) and acking each delivery (unless ack=False)."""

    def __init__(self, url: str, queue: str, prefetch: int | None = 100, ack: bool = True,
                 auto_ack: bool = False, arguments: dict | None = None):
        self.conn = connect(url)
        self.ch = self.conn.channel()
        self.queue = queue
        self.ack = ack and not auto_ack
        self.got: list[tuple[bytes, bool, int, pika.BasicProperties]] = []
        self.methods: list = []
        if prefetch is not None:
            self.ch.basic_qos(prefetch_count=prefetch)
        self.tag = self.ch.basic_consume(queue, self._on_message, auto_ack=auto_ack, arguments=arguments)

    def _on_message(self, ch, method, props, body):
        self.got.append((body, method.redelivered, method.delivery_tag, props))
        self.methods.append(method)
        if self.ack:
            ch.basic_ack(method.delivery_tag)

    @property
    def bodies(self) -> list[bytes]:
        return [b for b, _r, _t, _p in self.got]

    @property
    def flagged(self) -> list[tuple[bytes, bool]]:
        """(body, redelivered) of each delivery."""
        return [(b, r) for b, r, _t, _p in self.got]

    def close(self) -> None:
        if self.conn.is_open:
            with contextlib.suppress(Exception):
                self.conn.close()


@contextlib.contextmanager
def consumers(url, queue, n, **kwargs):
    """n Consumers of `queue`, registered in order, each on its own connection."""
    made = []
    try:
        for _ in range(n):
            made.append(Consumer(url, queue, **kwargs))
        yield made
    finally:
        for c in made:
            c.close()


@contextlib.contextmanager
def fresh_queue(url, prefix: str, **declare):
    """A queue of its own, declared with `declare` (queue.declare's keywords) on a
    connection of its own, deleted afterwards (on another, as the test's may be gone)."""
    q = unique(prefix)
    with channel(url) as (_c, ch):
        ch.queue_declare(q, **declare)
    try:
        yield q
    finally:
        with channel(url) as (_c, ch):
            ch.queue_delete(q)


# --- 1. single active consumer ---------------------------------------------------------

SAC = {"x-single-active-consumer": True}


@feature("single-active-consumer")
def test_single_active_consumer_only_the_first_consumer_receives(amqp_url):
    """Even when the active consumer is at its prefetch limit, the waiting one gets nothing:
    the messages wait in the queue and go to the active consumer, in order, as it acks."""
    q = unique("q-sac")
    with channel(amqp_url) as (_c, ch):
        ok = ch.queue_declare(q, arguments=SAC).method
        assert (ok.message_count, ok.consumer_count) == (0, 0)
        with consumers(amqp_url, q, 2, prefetch=1, ack=False) as (first, second):
            conns = [first.conn, second.conn]
            r = publish_confirmed(amqp_url, q, bodies(5))
            assert sorted(r.acked) == [1, 2, 3, 4, 5], r
            pump_until(conns, lambda: first.got, 10, "a delivery to the first consumer")
            pump(conns, 0.5)
            assert (first.bodies, second.bodies) == (bodies(5)[:1], [])
            # Both are consumers of the queue, the 4 others are ready.
            ok = ch.queue_declare(q, passive=True).method
            assert (ok.message_count, ok.consumer_count) == (4, 2)
            for i in range(1, 5):
                first.ch.basic_ack(first.got[-1][2])
                pump_until(conns, lambda: len(first.got) > i, 10, f"delivery {i + 1} after an ack")
            pump(conns, 0.3)
            assert first.bodies == bodies(5) and second.bodies == []
            assert [t for _b, _r, t, _p in first.got] == [1, 2, 3, 4, 5]
            first.ch.basic_ack(5)
        ch.queue_delete(q)


@feature("single-active-consumer")
def test_single_active_consumer_cancel_hands_over_to_the_next_in_line(amqp_url):
    with fresh_queue(amqp_url, "q-sac-cancel", arguments=SAC) as q:
        with consumers(amqp_url, q, 3) as (first, second, third):
            conns = [first.conn, second.conn, third.conn]
            publish_confirmed(amqp_url, q, bodies(3))
            pump_until_settled(conns, lambda: len(first.got) >= 3, 10, lambda: f"first consumer got {first.bodies}")
            assert (first.bodies, second.bodies, third.bodies) == (bodies(3), [], [])

            first.ch.basic_cancel(first.tag)
            publish_confirmed(amqp_url, q, bodies(3, start=3))
            pump_until_settled(conns, lambda: len(second.got) >= 3, 10, lambda: f"second consumer got {second.bodies}")
            assert (first.bodies, second.bodies, third.bodies) == (bodies(3), bodies(3, start=3), [])

            # The third waited behind the second.
            second.ch.basic_cancel(second.tag)
            publish_confirmed(amqp_url, q, bodies(2, start=6))
            pump_until_settled(conns, lambda: len(third.got) >= 2, 10, lambda: f"third consumer got {third.bodies}")
            assert (first.bodies, second.bodies, third.bodies) == (bodies(3), bodies(3, start=3),
                                                                   bodies(2, start=6))
            assert all(not r for _b, r, _t, _p in first.got + second.got + third.got)


@feature("single-active-consumer")
def test_single_active_consumer_connection_close_redelivers_unacked_to_the_next(amqp_url):
    """The active consumer's connection goes with unacked messages: they go, in order and
    flagged redelivered, to the consumer registered next; then the next after that."""
    m = bodies(5)
    with fresh_queue(amqp_url, "q-sac-close", arguments=SAC) as q, channel(amqp_url) as (_c, ch):
        with consumers(amqp_url, q, 3, prefetch=10, ack=False) as (first, second, third):
            publish_confirmed(amqp_url, q, m[:4])
            pump_until([first.conn], lambda: len(first.got) >= 4, 10, lambda: f"first got {first.bodies}")
            first.ch.basic_ack(first.got[0][2])
            first.ch.basic_ack(first.got[1][2])
            conns = [second.conn, third.conn]
            pump(conns, 0.3)
            assert (second.bodies, third.bodies) == ([], [])
            first.conn.close()

            pump_until(conns, lambda: len(second.got) >= 2, 10, lambda: f"second got {second.flagged}")
            publish_confirmed(amqp_url, q, m[4:])
            pump_until_settled(conns, lambda: len(second.got) >= 3, 10, lambda: f"second got {second.flagged}")
            assert second.flagged == [(m[2], True), (m[3], True), (m[4], False)]
            assert third.got == []

            second.ch.basic_ack(second.got[0][2])  # m2
            second.conn.close()
            pump_until_settled([third.conn], lambda: len(third.got) >= 2, 10, lambda: f"third got {third.flagged}")
            assert third.flagged == [(m[3], True), (m[4], True)]
            third.ch.basic_ack(third.got[-1][2], multiple=True)
            wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 0, 5, "all acked")


@feature("single-active-consumer")
def test_single_active_consumer_declare_rules(amqp_url):
    q = unique("q-sac-rules")
    with channel(amqp_url) as (conn, ch):
        ch.queue_declare(q, arguments=SAC)
        # An exclusive consumer is refused on a single-active-consumer queue, even an idle one.
        text = closed_text(lambda: ch.basic_consume(q, lambda *a: None, exclusive=True), 403)
        assert text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use", text
        ch = conn.channel()
        assert ch.queue_declare(q, arguments=SAC).method.consumer_count == 0
        text = closed_text(lambda: ch.queue_declare(q), 406)
        assert text.startswith(f"PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue '{q}'")
        ch = conn.channel()
        text = closed_text(lambda: ch.queue_declare(q, arguments={"x-single-active-consumer": False}), 406)
        assert text.startswith("PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer'"), text
        for bad in ("yes", 1):
            ch = conn.channel()
            other = unique("q-sac-bad")
            text = closed_text(lambda: ch.queue_declare(other, arguments={"x-single-active-consumer": bad}), 406)
            assert text.startswith(f"PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue "
                                   f"'{other}'"), text
        conn.channel().queue_delete(q)


# --- 2. x-expires ----------------------------------------------------------------------

class QueueProbe:
    """Whether a queue exists, asked without touching it: a mandatory publish to it
    through the default exchange, returned (312 NO_ROUTE) once the queue is gone. A
    passive queue.declare would not do: RabbitMQ counts it as a use of the queue and
    restarts the expiry timer (test_queue_expiry_timer_restarts_on_use)."""

    def __init__(self, url):
        self.conn = connect(url)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def exists(self, q) -> bool:
        try:
            self.ch.basic_publish("", q, b"probe", mandatory=True)
            return True
        except UnroutableError as e:
            assert e.messages[0].method.reply_code == 312
            return False

    def wait_gone(self, q, timeout_s=10.0) -> float:
        start = time.monotonic()
        while self.exists(q):
            assert time.monotonic() - start < timeout_s, f"queue {q} still there after {timeout_s}s"
            time.sleep(0.05)
        return time.monotonic() - start

    def stays(self, q, seconds, keep_alive=lambda: None) -> None:
        """The queue exists for all of `seconds` (calling keep_alive() every 0.1 s)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            keep_alive()
            assert self.exists(q), f"queue {q} expired though it was in use"
            self.conn.process_data_events(time_limit=0.1)

    def close(self):
        if self.conn.is_open:
            self.conn.close()


def _assert_gone(url, q):
    with channel(url) as (_c, ch):
        text = closed_text(lambda: ch.queue_declare(q, passive=True), 404)
        assert text == f"NOT_FOUND - no queue '{q}' in vhost '/'", text


@feature("queue-expires")
def test_unused_queue_expires_with_its_messages(amqp_url):
    """Messages in it and publishes to it do not count as use."""
    q = unique("q-expires")
    probe = QueueProbe(amqp_url)
    try:
        with channel(amqp_url) as (_c, ch):
            ok = ch.queue_declare(q, arguments={"x-expires": 500}).method
            assert ok.queue == q
            r = publish_confirmed(amqp_url, q, bodies(3))
            assert sorted(r.acked) == [1, 2, 3]
        assert probe.exists(q)
        elapsed = probe.wait_gone(q)
        assert elapsed > 0.2, f"gone {elapsed:.3f}s after the publish, x-expires is 500 ms"
        _assert_gone(amqp_url, q)
    finally:
        probe.close()


@feature("queue-expires")
def test_x_expires_argument_is_validated(amqp_url):
    q = unique("q-expires-ok")
    with channel(amqp_url) as (conn, ch):
        for value, why in ((0, "{value_zero,0}"), (-1, "{value_negative,-1}"),
                           ("1000", '"expected integer, got longstr"')):
            other = unique("q-expires-bad")
            text = closed_text(lambda: ch.queue_declare(other, arguments={"x-expires": value}), 406)
            assert text == f"PRECONDITION_FAILED - invalid arg 'x-expires' for queue '{other}' in vhost '/': {why}"
            ch = conn.channel()
        ch.queue_declare(q, arguments={"x-expires": 60_000})
        text = closed_text(lambda: ch.queue_declare(q, arguments={"x-expires": 30_000}), 406)
        assert text.startswith(f"PRECONDITION_FAILED - inequivalent arg 'x-expires' for queue '{q}'"), text
        # A long value is fine too (pika sends 2**31 as a signed 64-bit long).
        ch = conn.channel()
        long_q = unique("q-expires-long")
        assert ch.queue_declare(long_q, arguments={"x-expires": 2 ** 31}).method.queue == long_q
        for name in (q, long_q):
            ch.queue_delete(name)
    # And a queue declared with an expiry of a minute is not deleted in a second.
    probe = QueueProbe(amqp_url)
    try:
        with channel(amqp_url) as (_c, ch):
            ch.queue_declare(q, arguments={"x-expires": 60_000})
            probe.stays(q, 1.0)
            ch.queue_delete(q)
    finally:
        probe.close()


@feature("queue-expires")
def test_queue_with_a_consumer_does_not_expire(amqp_url):
    q = unique("q-expires-consumed")
    probe = QueueProbe(amqp_url)
    try:
        with channel(amqp_url) as (_c, ch):
            ch.queue_declare(q, arguments={"x-expires": 300})
        # Consumed from another connection for 5x the expiry; then that consumer is cancelled.
        consumer = Consumer(amqp_url, q)
        try:
            probe.stays(q, 1.5, keep_alive=lambda: consumer.conn.process_data_events(time_limit=0))
            consumer.ch.basic_cancel(consumer.tag)
            probe.wait_gone(q)
        finally:
            consumer.close()
        _assert_gone(amqp_url, q)

        # Same when the consumer's connection closes.
        with channel(amqp_url) as (_c, ch):
            ch.queue_declare(q, arguments={"x-expires": 300})
        consumer = Consumer(amqp_url, q)
        probe.stays(q, 1.5, keep_alive=lambda: consumer.conn.process_data_events(time_limit=0))
        consumer.close()
        probe.wait_gone(q)
        _assert_gone(amqp_url, q)
    finally:
        probe.close()


@feature("queue-expires")
@pytest.mark.parametrize("use", ["redeclare", "passive-declare", "basic-get"])
def test_queue_expiry_timer_restarts_on_use(amqp_url, use):
    """Redeclaring (a passive declare too, in RabbitMQ) and basic.get (empty or not) each
    restart the x-expires timer: used every 0.1 s for 3x the expiry, the queue stays; left
    alone, it goes."""
    q = unique("q-expires-used")
    args = {"x-expires": 500}
    probe = QueueProbe(amqp_url)
    try:
        with channel(amqp_url) as (_c, ch):
            ch.queue_declare(q, arguments=args)
            publish_confirmed(amqp_url, q, [b"one"])
            got = []
            uses = {
                "redeclare": lambda: ch.queue_declare(q, arguments=args),
                "passive-declare": lambda: ch.queue_declare(q, passive=True),
                "basic-get": lambda: got.append(ch.basic_get(q, auto_ack=True)[2]),
            }
            probe.stays(q, 1.5, keep_alive=uses[use])
            if use == "basic-get":
                assert got[0] == b"one" and set(got[1:]) <= {None, b"probe"}, got[:5]
            probe.wait_gone(q)
        _assert_gone(amqp_url, q)
    finally:
        probe.close()


# --- 3. x-overflow reject-publish-dlx --------------------------------------------------

def _check_maxlen_death(typed, props, *, queue, exchange, routing_keys):
    """The x-death header of a message dead-lettered for overflow: reason maxlen, with the
    wire types of every dead-lettered message in RabbitMQ (see test_amqp._check_x_death)."""
    xd = typed["x-death"]
    assert xd.tag == "A" and len(xd.value) == 1 and xd.value[0].tag == "F", xd
    entry = xd.value[0].value
    assert entry["count"] == Typed("l", 1)
    assert entry["reason"] == Typed("S", b"maxlen")
    assert entry["queue"] == Typed("S", queue.encode())
    assert entry["exchange"] == Typed("S", exchange.encode())
    assert entry["routing-keys"] == Typed("A", [Typed("S", k.encode()) for k in routing_keys])
    assert entry["time"].tag == "T" and abs(entry["time"].value - time.time()) < 120, entry["time"]
    assert typed["x-first-death-queue"] == Typed("S", queue.encode())
    assert typed["x-first-death-reason"] == Typed("S", b"maxlen")
    assert typed["x-first-death-exchange"] == Typed("S", exchange.encode())
    death = props.headers["x-death"][0]
    assert (death["count"], death["reason"], death["queue"], death["exchange"], death["routing-keys"]) == (
        1, "maxlen", queue, exchange, routing_keys)
    return entry


def _dead_letters(ch, dlq, count, timeout_s=5.0):
    """basic.get `count` messages from dlq (waiting for them), with each one's x-death table."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count:
        with raw_tables() as captured:
            method, props, body = ch.basic_get(dlq, auto_ack=True)
        if method is None:
            assert time.monotonic() < deadline, f"{len(out)} of {count} dead-lettered to {dlq} after {timeout_s}s"
            time.sleep(0.05)
            continue
        out.append((method, props, body, find_table(captured, "x-death")))
    return out


@feature("reject-publish-dlx")
def test_reject_publish_dlx_nacks_and_dead_letters_the_rejected(amqp_url):
    dlx, dlq, q = unique("dlx"), unique("dlq"), unique("q-rpdlx")
    with channel(amqp_url) as (_c, ch):
        ch.exchange_declare(dlx, "fanout")
        ch.queue_declare(dlq)
        ch.queue_bind(dlq, dlx)
        ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-max-length": 2,
                                       "x-overflow": "reject-publish-dlx"})
        props = pika.BasicProperties(delivery_mode=2, message_id="id-7", headers={"app": "orders"})
        r = publish_confirmed(amqp_url, q, bodies(4), properties=props)
        assert r.error is None, r.error
        assert sorted(r.acked) == [1, 2] and sorted(r.nacked) == [3, 4], r.events
        assert [d.body for d in get_all(ch, q)] == bodies(4)[:2]
        # Nacked to the publisher and dead-lettered too, in publish order.
        dead = _dead_letters(ch, dlq, 2)
        assert [body for _m, _p, body, _t in dead] == bodies(4)[2:]
        for method, p, _body, typed in dead:
            assert (method.exchange, method.routing_key) == (dlx, q)
            assert p.delivery_mode == 2 and p.message_id == "id-7" and p.headers["app"] == "orders"
            entry = _check_maxlen_death(typed, p, queue=q, exchange="", routing_keys=[q])
            assert set(entry) == {"count", "reason", "queue", "time", "exchange", "routing-keys"}
        assert get_all(ch, dlq) == []
        # Room again: accepted, not dead-lettered.
        r = publish_confirmed(amqp_url, q, [b"later"])
        assert (r.acked, r.nacked) == ([1], [])
        assert [d.body for d in get_all(ch, q)] == [b"later"]
        time.sleep(0.3)
        assert get_all(ch, dlq) == []
        for name in (q, dlq):
            ch.queue_delete(name)
        ch.exchange_delete(dlx)


@feature("reject-publish-dlx")
def test_reject_publish_dlx_through_an_exchange_with_dead_letter_routing_key(amqp_url):
    """x-death names the exchange and routing key the message was published with; the
    dead-letter routing key replaces the key for the dead-letter exchange; the message's
    expiration moves into x-death as original-expiration. x-max-length-bytes counts body
    bytes. Plain reject-publish nacks without dead-lettering; reject-publish-dlx without a
    dead-letter exchange just nacks."""
    dlx, dlq, x = unique("dlx"), unique("dlq"), unique("x")
    q_len, q_bytes, q_plain, q_no_dlx = (unique(f"q-{n}") for n in ("len", "bytes", "plain", "nodlx"))
    with channel(amqp_url) as (_c, ch):
        ch.exchange_declare(dlx, "direct")
        ch.exchange_declare(x, "direct")
        ch.queue_declare(dlq)
        ch.queue_bind(dlq, dlx, "dead")
        dl = {"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"}
        ch.queue_declare(q_len, arguments={**dl, "x-max-length": 1, "x-overflow": "reject-publish-dlx"})
        ch.queue_declare(q_bytes, arguments={**dl, "x-max-length-bytes": 10, "x-overflow": "reject-publish-dlx"})
        ch.queue_declare(q_plain, arguments={**dl, "x-max-length": 1, "x-overflow": "reject-publish"})
        ch.queue_declare(q_no_dlx, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
        ch.queue_bind(q_len, x, "k")

        r = publish_confirmed(amqp_url, "k", [b"a", b"b"], exchange=x,
                              properties=pika.BasicProperties(delivery_mode=2, expiration="60000"))
        assert (sorted(r.acked), sorted(r.nacked)) == ([1], [2]), r.events
        ((method, props, body, typed),) = _dead_letters(ch, dlq, 1)
        assert (body, method.exchange, method.routing_key) == (b"b", dlx, "dead")
        entry = _check_maxlen_death(typed, props, queue=q_len, exchange=x, routing_keys=["k"])
        assert entry["original-expiration"] == Typed("S", b"60000")
        assert props.expiration is None

        for name in (q_plain, q_no_dlx):
            r = publish_confirmed(amqp_url, name, [b"kept", b"refused"], window=1)
            assert (r.acked, r.nacked) == ([1], [2]), (name, r.events)
            assert [d.body for d in get_all(ch, name)] == [b"kept"]
        time.sleep(0.3)
        assert get_all(ch, dlq) == []
        for name in (q_len, q_bytes, q_plain, q_no_dlx, dlq):
            ch.queue_delete(name)
        for name in (x, dlx):
            ch.exchange_delete(name)


@feature("max-length-bytes")
def test_reject_publish_dlx_counts_max_length_bytes(amqp_url):
    """x-max-length-bytes counts the body bytes of ready messages: 5 + 5 fill 10, the
    next is nacked and dead-lettered."""
    dlx, dlq, q_bytes = unique("dlx"), unique("dlq"), unique("q-bytes")
    with channel(amqp_url) as (_c, ch):
        ch.exchange_declare(dlx, "direct")
        ch.queue_declare(dlq)
        ch.queue_bind(dlq, dlx, "dead")
        dl = {"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"}
        ch.queue_declare(q_bytes, arguments={**dl, "x-max-length-bytes": 10, "x-overflow": "reject-publish-dlx"})
        try:
            r = publish_confirmed(amqp_url, q_bytes, [b"12345", b"67890", b"1"], window=1)
            assert (r.acked, r.nacked) == ([1, 2], [3]), r.events
            ((method, props, body, typed),) = _dead_letters(ch, dlq, 1)
            assert (body, method.routing_key) == (b"1", "dead")
            _check_maxlen_death(typed, props, queue=q_bytes, exchange="", routing_keys=[q_bytes])
        finally:
            for name in (q_bytes, dlq):
                ch.queue_delete(name)
            ch.exchange_delete(dlx)


@feature("max-length-bytes")
def test_max_length_bytes_counts_only_ready_messages(amqp_url):
    """x-max-length-bytes counts ready messages only: a delivered, unacked one does not
    count, so the queue takes another; requeued, it counts again (even past the limit,
    as a requeue is never refused) and the next publish is refused."""
    q = unique("q-ready-bytes")
    with channel(amqp_url) as (_c, ch):
        ch.queue_declare(q, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish"})
        try:
            r = publish_confirmed(amqp_url, q, [b"12345", b"67890"], window=1)
            assert (r.acked, r.nacked) == ([1, 2], []), r.events
            method, _props, body = ch.basic_get(q, auto_ack=False)
            assert body == b"12345"
            r = publish_confirmed(amqp_url, q, [b"abcde", b"f"], window=1)
            assert (r.acked, r.nacked) == ([1], [2]), r.events
            ch.basic_nack(method.delivery_tag, requeue=True)
            r = publish_confirmed(amqp_url, q, [b"g"], window=1)
            assert (r.acked, r.nacked) == ([], [1]), r.events
            assert sorted(d.body for d in get_all(ch, q)) == [b"12345", b"67890", b"abcde"]
        finally:
            ch.queue_delete(q)


@feature("max-length-bytes")
def test_max_length_bytes_drops_the_head_by_default(amqp_url):
    """Without x-overflow, a publish past x-max-length-bytes drops messages from the
    head until the ready bytes are within the limit: here one of three, then two more
    for a message that fills the limit alone."""
    q = unique("q-drop-bytes")
    with channel(amqp_url) as (_c, ch):
        ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
        try:
            r = publish_confirmed(amqp_url, q, [b"aaaa", b"bbbb", b"cccc"], window=1)
            assert (r.acked, r.nacked) == ([1, 2, 3], []), r.events
            wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 2, 5,
                       lambda: f"{ch.queue_declare(q, passive=True).method.message_count} messages ready")
            r = publish_confirmed(amqp_url, q, [b"0123456789"], window=1)
            assert (r.acked, r.nacked) == ([1], []), r.events
            wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 1, 5,
                       lambda: f"{ch.queue_declare(q, passive=True).method.message_count} messages ready")
            assert [d.body for d in get_all(ch, q)] == [b"0123456789"]
        finally:
            ch.queue_delete(q)


# --- 4. streams ------------------------------------------------------------------------

STREAM = {"x-queue-type": "stream"}


def stream(url, **extra_args):
    """A fresh stream (durable, as streams must be), deleted afterwards."""
    return fresh_queue(url, "s", durable=True, arguments={**STREAM, **extra_args})


def publish_one_by_one(url, s, items, properties=None) -> None:
    """Publish each body and wait for its confirm before the next."""
    with channel(url) as (_c, ch):
        ch.confirm_delivery()
        for body in items:
            ch.basic_publish("", s, body, properties)


def offsets_of(c: Consumer) -> list[int]:
    return [p.headers["x-stream-offset"] for _b, _r, _t, p in c.got]


@feature("streams")
def test_stream_declare_needs_a_durable_named_shared_queue(amqp_url):
    with channel(amqp_url) as (conn, ch):
        for kwargs, prop in ((dict(durable=False), "non-durable"),
                             (dict(durable=True, exclusive=True), "exclusive-owner"),
                             (dict(durable=True, auto_delete=True), "auto-delete")):
            s = unique("s-bad")
            text = closed_text(lambda: ch.queue_declare(s, arguments=STREAM, **kwargs), 406)
            assert text == f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{s}' in vhost '/'", text
            ch = conn.channel()
        text = closed_text(lambda: ch.queue_declare("", durable=True, arguments=STREAM), 406)
        assert text.startswith("PRECONDITION_FAILED - Cannot declare a server-named queue for type"), text

        s = unique("s")
        ch = conn.channel()
        ok = ch.queue_declare(s, durable=True, arguments=STREAM).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (s, 0, 0)
        assert ch.queue_declare(s, durable=True, arguments=STREAM).method.queue == s
        assert ch.queue_declare(s, passive=True).method.queue == s
        text = closed_text(lambda: ch.queue_declare(s, durable=True), 406)
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{s}' in vhost '/': "
                        "received none but current is the value 'stream' of type 'longstr'"), text
        ch = conn.channel()
        text = closed_text(lambda: ch.queue_declare(s, durable=True, arguments={"x-queue-type": "classic"}), 406)
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{s}' in vhost '/': "
                        "received 'classic' but current is 'stream'"), text
        conn.channel().queue_delete(s)


@feature("streams")
def test_stream_declare_arguments(amqp_url):
    """Retention (x-max-length-bytes, x-max-age with a unit Y M D h m s, and the segment
    size) is accepted; arguments of other queue types are not."""
    made = []
    with channel(amqp_url) as (conn, ch):
        for args in ({"x-max-length-bytes": 10_000_000}, {"x-max-age": "7D"}, {"x-max-age": "1h"},
                     {"x-max-age": "30m"}, {"x-max-age": "10s"}, {"x-max-age": "1Y"}, {"x-max-age": "2M"},
                     {"x-stream-max-segment-size-bytes": 1_000_000},
                     {"x-max-length-bytes": 2 ** 40, "x-max-age": "1D"}):
            s = unique("s")
            assert ch.queue_declare(s, durable=True, arguments={**STREAM, **args}).method.queue == s, args
            made.append(s)
        for age in ("10", "7d", "1H", "1x"):
            s = unique("s-bad")
            text = closed_text(lambda: ch.queue_declare(s, durable=True, arguments={**STREAM, "x-max-age": age}), 406)
            assert text == (f"PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{s}' in vhost '/': "
                            "invalid_max_age"), text
            ch = conn.channel()
        for arg, value in (("x-max-length", 10), ("x-overflow", "reject-publish"), ("x-dead-letter-exchange", "dlx"),
                           ("x-message-ttl", 1000), ("x-expires", 1000), ("x-single-active-consumer", True)):
            s = unique("s-bad")
            text = closed_text(lambda: ch.queue_declare(s, durable=True, arguments={**STREAM, arg: value}), 406)
            assert text == (f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{s}' in vhost '/' "
                            "of queue type rabbit_stream_queue"), text
            ch = conn.channel()
        for s in made:
            ch.queue_delete(s)


@feature("streams")
def test_stream_consume_needs_prefetch_and_manual_acks(amqp_url):
    """No prefetch (or only a global one): channel error 406. No-ack consume, basic.get and
    queue.purge: RabbitMQ closes the whole connection with 540 NOT_IMPLEMENTED."""
    with stream(amqp_url) as s:
        prefetch_text = f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{s}' in vhost '/''"
        with channel(amqp_url) as (conn, ch):
            assert closed_text(lambda: ch.basic_consume(s, lambda *a: None), 406) == prefetch_text
            ch = conn.channel()
            ch.basic_qos(prefetch_count=10, global_qos=True)
            assert closed_text(lambda: ch.basic_consume(s, lambda *a: None), 406) == prefetch_text
            ch = conn.channel()
            ch.basic_qos(prefetch_count=10)
            assert ch.basic_consume(s, lambda *a: None)
        for what, call in (
                ("automatic acknowledgement", lambda ch: ch.basic_consume(s, lambda *a: None, auto_ack=True)),
                ("basic.get", lambda ch: ch.basic_get(s)),
                ("queue.purge", lambda ch: ch.queue_purge(s))):
            with channel(amqp_url) as (conn, ch):
                ch.basic_qos(prefetch_count=10)
                e = expect_connection_close(lambda: call(ch), 540)
                assert e.reply_text == (f"NOT_IMPLEMENTED - {what} not supported by stream queues "
                                        f"queue '{s}' in vhost '/'"), e.reply_text
                assert conn.is_closed


@feature("streams")
def test_stream_offsets_first_numeric_last_next(amqp_url):
    """Each consumer reads from where x-stream-offset says; deliveries carry their offset in
    the x-stream-offset header (a signed 64-bit long). `last` is the start of the last
    chunk: with every message confirmed before the next is published, the last message."""
    m = bodies(7)
    with stream(amqp_url) as s:
        publish_one_by_one(amqp_url, s, m[:5])
        specs = {"first": "first", "zero": 0, "three": 3, "four-long": pika.compat.long(4), "last": "last",
                 "next": "next", "none": None, "five": 5}
        with raw_tables() as captured:
            cs = {k: Consumer(amqp_url, s, arguments=None if v is None else {"x-stream-offset": v})
                  for k, v in specs.items()}
            try:
                conns = [c.conn for c in cs.values()]
                before = {"first": m[:5], "zero": m[:5], "three": m[3:5], "four-long": m[4:5], "last": m[4:5],
                          "next": [], "none": [], "five": []}
                pump_until(conns, lambda: all(len(cs[k].got) >= len(v) for k, v in before.items()), 10,
                           lambda: {k: c.bodies for k, c in cs.items()})
                pump(conns, 0.3)
                assert {k: c.bodies for k, c in cs.items()} == before
                assert offsets_of(cs["first"]) == [0, 1, 2, 3, 4]
                assert offsets_of(cs["three"]) == [3, 4]
                assert offsets_of(cs["last"]) == [4]
                # Published while they are attached: every consumer gets them.
                r = publish_confirmed(amqp_url, s, m[5:])
                assert sorted(r.acked) == [1, 2], r
                after = {k: v + m[5:] for k, v in before.items()}
                pump_until(conns, lambda: all(len(cs[k].got) >= len(v) for k, v in after.items()), 10,
                           lambda: {k: c.bodies for k, c in cs.items()})
                pump(conns, 0.3)
                assert {k: c.bodies for k, c in cs.items()} == after
                assert offsets_of(cs["first"]) == list(range(7))
                assert offsets_of(cs["next"]) == offsets_of(cs["none"]) == offsets_of(cs["five"]) == [5, 6]
                for c in cs.values():
                    assert [t for _b, _r, t, _p in c.got] == list(range(1, len(c.got) + 1))
                    assert not any(r for _b, r, _t, _p in c.got)
                    assert all((d.exchange, d.routing_key) == ("", s) for d in c.methods)
            finally:
                for c in cs.values():
                    c.close()
        assert find_table(captured, "x-stream-offset")["x-stream-offset"].tag == "l"


@feature("streams")
def test_stream_offset_timestamp_and_interval(amqp_url):
    """x-stream-offset as an AMQP timestamp (pika sends a datetime as type T, whole
    seconds): from the first message published at or after it. As an interval string
    ("1s", "1h", "7D"): from now minus that. A timestamp in the future: only new ones."""
    old, new = bodies(3, "old"), bodies(3, "new")
    with stream(amqp_url) as s:
        publish_one_by_one(amqp_url, s, old)
        boundary = math.floor(time.time()) + 1  # after every old message
        while time.time() < boundary + 1.2:
            time.sleep(0.05)
        publish_one_by_one(amqp_url, s, new)

        def read(offset, expected):
            c = Consumer(amqp_url, s, arguments={"x-stream-offset": offset})
            try:
                pump_until_settled([c.conn], lambda: len(c.got) >= len(expected), 10, lambda: f"{offset!r}: {c.bodies}")
                return c.bodies
            finally:
                c.close()

        # Right away: the old ones are more than a second old, the new ones less.
        assert read("1s", new) == new
        assert read(datetime.fromtimestamp(boundary, timezone.utc), new) == new
        assert read(datetime.fromtimestamp(boundary - 3600, timezone.utc), old + new) == old + new
        assert read(datetime(2000, 1, 1, tzinfo=timezone.utc), old + new) == old + new
        assert read("1h", old + new) == old + new
        assert read("7D", old + new) == old + new
        future = Consumer(amqp_url, s, arguments={"x-stream-offset": datetime.now(timezone.utc) + timedelta(hours=1)})
        try:
            pump([future.conn], 0.5)
            assert future.got == []
            publish_one_by_one(amqp_url, s, [b"newest"])
            pump_until_settled([future.conn], lambda: future.got, 10, "the message published after attaching")
            assert future.bodies == [b"newest"] and offsets_of(future) == [6]
        finally:
            future.close()


@feature("streams")
def test_stream_offset_argument_is_validated(amqp_url):
    with stream(amqp_url) as s:
        with channel(amqp_url) as (_c, ch):
            ch.basic_qos(prefetch_count=10)
            text = closed_text(lambda: ch.basic_consume(s, lambda *a: None, arguments={"x-stream-offset": "60"}), 406)
            assert text == (f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{s}' in vhost '/': "
                            '{invalid_stream_offset_arg,{longstr,<<"60">>}}'), text


@feature("streams")
def test_stream_acks_do_not_remove_and_consumers_read_independently(amqp_url):
    m = bodies(5)
    props = pika.BasicProperties(content_type="text/plain", delivery_mode=2, message_id="id-1",
                                 correlation_id="c-1", headers={"k": "v"}, expiration="60000")
    with stream(amqp_url) as s:
        r = publish_confirmed(amqp_url, s, m, properties=props)
        assert r.error is None and sorted(r.acked) == [1, 2, 3, 4, 5] and r.nacked == [], r
        with consumers(amqp_url, s, 2, arguments={"x-stream-offset": "first"}) as (a, b):
            conns = [a.conn, b.conn]
            pump_until_settled(conns, lambda: len(a.got) >= 5 and len(b.got) >= 5, 10, lambda: (a.bodies, b.bodies))
            assert a.bodies == b.bodies == m
            p = a.got[0][3]
            assert (p.content_type, p.delivery_mode, p.message_id, p.correlation_id, p.expiration) == (
                "text/plain", 2, "id-1", "c-1", "60000")
            assert p.headers == {"k": "v", "x-stream-offset": 0}
            # Only one of them reads on, the other is not held back.
            a.ch.basic_cancel(a.tag)
            publish_confirmed(amqp_url, s, [b"more"])
            pump_until_settled(conns, lambda: len(b.got) >= 6, 10, lambda: b.bodies)
            assert (a.bodies, b.bodies) == (m, m + [b"more"])
        # Everything was acked, and a new consumer from the start still sees all of it.
        with consumers(amqp_url, s, 1, arguments={"x-stream-offset": "first"}) as (again,):
            pump_until_settled([again.conn], lambda: len(again.got) >= 6, 10, lambda: again.bodies)
            assert again.bodies == m + [b"more"] and offsets_of(again) == list(range(6))
        # An unacked delivery is not redelivered to the next consumer either: it reads by offset.
        with consumers(amqp_url, s, 1, ack=False, arguments={"x-stream-offset": 5}) as (unacked,):
            pump_until([unacked.conn], lambda: unacked.got, 10, "offset 5")
            unacked.conn.close()
        with consumers(amqp_url, s, 1, arguments={"x-stream-offset": 5}) as (after,):
            pump_until_settled([after.conn], lambda: after.got, 10, "offset 5 again")
            assert after.flagged == [(b"more", False)]


# A stream consumer at the end waits at most this long (consumer.rs RECEIVE_WAIT_MS)
# before it looks again without being woken.
STREAM_RECEIVE_WAIT_S = 1.0


@feature("streams")
def test_stream_consumers_at_the_end_are_woken_by_their_own_stream(amqp_url):
    """Consumers waiting at the end of a stream are woken by an append to their stream
    (its partition's high-watermark watch), well before their 1 s re-check, and each
    gets only its own stream's messages while another stream is written."""
    with stream(amqp_url) as s1, stream(amqp_url) as s2:
        with consumers(amqp_url, s1, 1, arguments={"x-stream-offset": "next"}) as (c1,), \
                consumers(amqp_url, s2, 1, arguments={"x-stream-offset": "next"}) as (c2,):
            conns = [c1.conn, c2.conn]
            pump(conns, 0.3)  # both attached and waiting
            waits = []
            with channel(amqp_url) as (_c, ch):
                ch.confirm_delivery()
                for i in range(5):
                    ch.basic_publish("", s2, f"other-{i}".encode())
                    ch.basic_publish("", s1, f"mine-{i}".encode())
                    t0 = time.monotonic()
                    pump_until(conns, lambda: len(c1.got) > i and len(c2.got) > i, 10,
                               lambda: (c1.bodies, c2.bodies))
                    waits.append(time.monotonic() - t0)
            pump(conns, 0.3)
            assert c1.bodies == [f"mine-{i}".encode() for i in range(5)]
            assert c2.bodies == [f"other-{i}".encode() for i in range(5)]
            assert max(waits) < STREAM_RECEIVE_WAIT_S / 2, (
                f"deliveries after their confirm took {[round(w, 3) for w in waits]} s: "
                "not woken by the append")


# --- 5. direct reply-to ----------------------------------------------------------------

REPLY_TO = "amq.rabbitmq.reply-to"


@feature("direct-reply-to")
def test_direct_reply_to_rpc_round_trip(amqp_url):
    server_q = unique("q-rpc")
    client = connect(amqp_url)
    try:
        cch = client.channel()
        cch.queue_declare(server_q)
        replies = []
        ctag = cch.basic_consume(REPLY_TO, lambda _c, m, p, b: replies.append((m, p, b)), auto_ack=True)
        cch.confirm_delivery()
        for i in range(3):
            cch.basic_publish("", server_q, f"request-{i}".encode(),
                              pika.BasicProperties(reply_to=REPLY_TO, correlation_id=f"corr-{i}"))

        # The server sees reply_to rewritten to a token naming the client's channel.
        with channel(amqp_url) as (_s, sch):
            requests = [sch.basic_get(server_q, auto_ack=True) for _ in range(3)]
        assert [body for _m, _p, body in requests] == [b"request-0", b"request-1", b"request-2"]
        assert [p.correlation_id for _m, p, _b in requests] == ["corr-0", "corr-1", "corr-2"]
        tokens = {p.reply_to for _m, p, _b in requests}
        assert len(tokens) == 1, f"one channel, one token: {tokens}"
        (token,) = tokens
        assert token.startswith(REPLY_TO + ".") and len(token) > len(REPLY_TO) + 1, token

        # It replies through the default exchange, routing key = the token.
        for _m, p, body in requests:
            r = publish_confirmed(amqp_url, token, [b"reply-to-" + body],
                                  properties=pika.BasicProperties(correlation_id=p.correlation_id,
                                                                  headers={"served-by": "test"}))
            assert (r.acked, r.nacked, r.returned, r.error) == ([1], [], [], None), r
        pump_until_settled([client], lambda: len(replies) >= 3, 10, lambda: f"replies {replies}")
        assert [b for _m, _p, b in replies] == [b"reply-to-request-0", b"reply-to-request-1", b"reply-to-request-2"]
        assert [p.correlation_id for _m, p, _b in replies] == ["corr-0", "corr-1", "corr-2"]
        assert all(p.headers == {"served-by": "test"} for _m, p, _b in replies)
        assert all((m.consumer_tag, m.exchange, m.routing_key, m.redelivered) == (ctag, "", token, False)
                   for m, _p, _b in replies)

        # Another channel of the same connection gets a token of its own.
        other = client.channel()
        other.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        other.confirm_delivery()
        other.basic_publish("", server_q, b"from the other channel", pika.BasicProperties(reply_to=REPLY_TO))
        with channel(amqp_url) as (_s, sch):
            _m, p, body = sch.basic_get(server_q, auto_ack=True)
            assert body == b"from the other channel"
            assert p.reply_to.startswith(REPLY_TO + ".") and p.reply_to != token
            sch.queue_delete(server_q)
    finally:
        if client.is_open:
            client.close()


@feature("direct-reply-to")
def test_direct_reply_to_consume_and_publish_rules(amqp_url):
    server_q = unique("q-rpc")
    with channel(amqp_url) as (conn, ch):
        ch.queue_declare(server_q)
        # The pseudo-queue can be declared (passive or not) but it is not a queue.
        for kwargs in (dict(passive=True), dict(), dict(durable=True)):
            ok = ch.queue_declare(REPLY_TO, **kwargs).method
            assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY_TO, 0, 1), kwargs
        no_queue = f"NOT_FOUND - no queue '{REPLY_TO}' in vhost '/'"
        assert closed_text(lambda: ch.basic_get(REPLY_TO), 404) == no_queue
        ch = conn.channel()
        assert closed_text(lambda: ch.queue_bind(REPLY_TO, "amq.direct", "k"), 404) == no_queue

        # Its consumer must be no-ack, and one per channel.
        ch = conn.channel()
        text = closed_text(lambda: ch.basic_consume(REPLY_TO, lambda *a: None), 406)
        assert text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"
        ch = conn.channel()
        tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True, consumer_tag="my-reply-consumer")
        assert tag == "my-reply-consumer"
        text = closed_text(lambda: ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True), 406)
        assert text == "PRECONDITION_FAILED - reply consumer already set"

        # reply_to=amq.rabbitmq.reply-to needs a reply consumer on the publishing channel:
        # not at all, on another channel, or after basic.cancel are all the same error, and
        # the request is not enqueued.
        no_consumer = "PRECONDITION_FAILED - fast reply consumer does not exist"
        request = pika.BasicProperties(reply_to=REPLY_TO)
        ch = conn.channel()
        ch.confirm_delivery()
        assert closed_text(lambda: ch.basic_publish("", server_q, b"no consumer", request), 406) == no_consumer
        conn.channel().basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ch = conn.channel()
        ch.confirm_delivery()
        assert closed_text(lambda: ch.basic_publish("", server_q, b"other channel", request), 406) == no_consumer
        ch = conn.channel()
        ch.confirm_delivery()
        tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ch.basic_publish("", server_q, b"while consuming", request)
        ch.basic_cancel(tag)
        # After a cancel the channel may consume again.
        tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ch.basic_publish("", server_q, b"consuming again", request)
        ch.basic_cancel(tag)
        assert closed_text(lambda: ch.basic_publish("", server_q, b"after cancel", request), 406) == no_consumer
        ch = conn.channel()
        assert [d.body for d in get_all(ch, server_q)] == [b"while consuming", b"consuming again"]
        ch.queue_delete(server_q)


@feature("direct-reply-to")
def test_direct_reply_to_reply_to_a_gone_requester_is_dropped(amqp_url):
    """A reply to a token whose channel has closed, or whose consumer was cancelled, or
    to a token that was never handed out: confirmed and dropped (basic.return 312 NO_ROUTE
    with mandatory); the replying channel stays open."""
    server_q = unique("q-rpc")
    with channel(amqp_url) as (_s, sch):
        sch.queue_declare(server_q)

        def token_of(ch, cancel_after=False):
            tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
            ch.confirm_delivery()
            ch.basic_publish("", server_q, b"request", pika.BasicProperties(reply_to=REPLY_TO))
            if cancel_after:
                ch.basic_cancel(tag)
            method, props, _body = sch.basic_get(server_q, auto_ack=True)
            assert method is not None
            return props.reply_to

        client, other = connect(amqp_url), connect(amqp_url)
        try:
            closed_channel = client.channel()
            gone_channel = token_of(closed_channel)
            closed_channel.close()
            cancelled = token_of(client.channel(), cancel_after=True)
            closed_connection = token_of(other.channel())
        finally:
            other.close()
        try:
            for token in (gone_channel, cancelled, closed_connection, REPLY_TO + ".never-issued", REPLY_TO):
                r = publish_confirmed(amqp_url, token, [b"late reply"])
                assert (r.acked, r.nacked, r.returned, r.error) == ([1], [], [], None), (token, r)
                r = publish_confirmed(amqp_url, token, [b"late reply"], mandatory=True)
                assert (r.acked, r.returned, r.error) == ([1], [(312, "NO_ROUTE", b"late reply")], None), (token, r)
        finally:
            client.close()
        sch.confirm_delivery()
        sch.basic_publish("", gone_channel, b"late reply")
        assert sch.is_open
        sch.queue_delete(server_q)


@feature("direct-reply-to")
def test_direct_reply_to_mandatory_reply_is_delivered_and_returned(amqp_url):
    """RabbitMQ's documented quirk: amq.rabbitmq.reply-to.* is not a queue, so a reply
    published with mandatory is delivered to the requester AND returned 312 NO_ROUTE to the
    replier (then confirmed)."""
    server_q = unique("q-rpc")
    client = connect(amqp_url)
    try:
        cch = client.channel()
        cch.queue_declare(server_q)
        replies = []
        cch.basic_consume(REPLY_TO, lambda _c, m, p, b: replies.append(b), auto_ack=True)
        cch.confirm_delivery()
        cch.basic_publish("", server_q, b"request", pika.BasicProperties(reply_to=REPLY_TO))
        with channel(amqp_url) as (_s, sch):
            _m, props, _b = sch.basic_get(server_q, auto_ack=True)
            sch.queue_delete(server_q)
        r = publish_confirmed(amqp_url, props.reply_to, [b"mandatory reply"], mandatory=True)
        assert r.error is None
        assert r.returned == [(312, "NO_ROUTE", b"mandatory reply")] and r.acked == [1], r
        assert [e for e in r.events if e[0] != "multiple"] == [("return", b"mandatory reply"), ("ack", 1)]
        pump_until_settled([client], lambda: replies, 10, "the reply")
        assert replies == [b"mandatory reply"]
    finally:
        if client.is_open:
            client.close()
