#!/usr/bin/env python3
"""The order saga on Herald's event store, with KurrentDB's own Python client.

    OrderPlaced -> PaymentCaptured -> InventoryReserved -> OrderConfirmed
                                   \\-> InventoryReservationFailed -> PaymentRefunded -> OrderCancelled

Three event-sourced aggregates, each a stream: `order-<id>`, `payment-<id>` (one per
order) and `inventory-<sku>`. Each service is a catch-up subscription to `$all` filtered
by event type; it loads the aggregate the event concerns from its stream, decides, and
appends the next step with the exact expected revision it loaded (a concurrent writer
makes the append fail and the handler loads again). The id of every event a handler
writes is uuid5 of the event that caused it, so a handler that sees an event twice (a
restart without its checkpoint) writes nothing new: the aggregate already holds that
event, and an append repeated after a lost answer is recognised by the broker by id.
Every event carries `$correlationId` (the saga's: the OrderPlaced event's id) and
`$causationId` (the event it answers), so the broker's `$bc-<correlation id>` stream
is the saga's trace. An orders summary (the CQRS read side) is built by its own
catch-up subscription.

    python examples/order-saga/saga.py --start-broker      # a fresh herald, temp dir
    python examples/order-saga/saga.py --url 'kurrentdb://127.0.0.1:2113?tls=false'

Exits non-zero when the outcome is not the expected one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kurrentdbclient import CaughtUp, KurrentDBClient, NewEvent, RecordedEvent, StreamState
from kurrentdbclient.exceptions import NotFoundError, WrongCurrentVersionError

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every call has a deadline: a broker that stops answering fails the run, never hangs it.
CALL_TIMEOUT_S = 10.0
# How long the whole saga may take to settle before the run counts as failed.
SETTLE_TIMEOUT_S = 60.0
# How long a started broker may take to accept connections.
BROKER_START_TIMEOUT_S = 30.0
# Attempts of one handler step when another writer moved the aggregate meanwhile.
CONFLICT_RETRIES_MAX = 5
# The namespace of the deterministic (idempotent) event ids.
SAGA_NAMESPACE = uuid.UUID("7a1b6b8e-5f0c-4d2e-9a43-0c3f2f1d9e55")

ORDER_PLACED = "OrderPlaced"
PAYMENT_CAPTURED = "PaymentCaptured"
INVENTORY_RESERVED = "InventoryReserved"
INVENTORY_RESERVATION_FAILED = "InventoryReservationFailed"
PAYMENT_REFUNDED = "PaymentRefunded"
ORDER_CONFIRMED = "OrderConfirmed"
ORDER_CANCELLED = "OrderCancelled"
INVENTORY_STOCKED = "InventoryStocked"

CONFIRMED_CHAIN = [ORDER_PLACED, PAYMENT_CAPTURED, INVENTORY_RESERVED, ORDER_CONFIRMED]
CANCELLED_CHAIN = [ORDER_PLACED, PAYMENT_CAPTURED, INVENTORY_RESERVATION_FAILED, PAYMENT_REFUNDED,
                   ORDER_CANCELLED]


# --- events ---------------------------------------------------------------------------

def caused_id(next_type: str, cause: RecordedEvent) -> uuid.UUID:
    """The id of the event `next_type` written in answer to `cause`: the same every time."""
    return uuid.uuid5(SAGA_NAMESPACE, f"{next_type}:{cause.id}")


def new_event(type_: str, data: dict, *, event_id: uuid.UUID, correlation_id: str,
              causation_id: str) -> NewEvent:
    metadata = {"$correlationId": correlation_id, "$causationId": causation_id}
    return NewEvent(type=type_, data=json.dumps(data).encode(), metadata=json.dumps(metadata).encode(),
                    id=event_id)


def answer(type_: str, data: dict, cause: RecordedEvent) -> NewEvent:
    """The next step of the saga, caused by `cause`, in its correlation (and its run: the
    broker may hold other runs' sagas)."""
    return new_event(type_, {"run": body(cause)["run"], **data}, event_id=caused_id(type_, cause), correlation_id=correlation_of(cause),
                     causation_id=str(cause.id))


def body(event: RecordedEvent) -> dict:
    return json.loads(event.data)


def correlation_of(event: RecordedEvent) -> str:
    return json.loads(event.metadata or b"{}")["$correlationId"]


# --- aggregates: state folded from a stream, and the revision it was read at -----------

@dataclass
class Aggregate:
    stream: str
    # The revision of the last event folded in; NO_STREAM before the first.
    version: int | StreamState = StreamState.NO_STREAM
    event_ids: set[uuid.UUID] = field(default_factory=set)

    def apply(self, event: RecordedEvent) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, client: KurrentDBClient, stream: str, **kw) -> Aggregate:
        aggregate = cls(stream, **kw)
        try:
            events = client.get_stream(stream, timeout=CALL_TIMEOUT_S)
        except NotFoundError:
            events = ()
        for e in events:
            aggregate.apply(e)
            aggregate.event_ids.add(e.id)
            aggregate.version = e.stream_position
        return aggregate

    def save(self, client: KurrentDBClient, event: NewEvent) -> bool:
        """Append `event` expecting exactly the version this was loaded at; False when the
        aggregate already holds it (the handler saw its cause before)."""
        if event.id in self.event_ids:
            return False
        client.append_to_stream(self.stream, events=event, current_version=self.version,
                                timeout=CALL_TIMEOUT_S)
        return True


@dataclass
class Order(Aggregate):
    status: str = "new"

    def apply(self, event):
        self.status = {ORDER_PLACED: "placed", ORDER_CONFIRMED: "confirmed",
                       ORDER_CANCELLED: "cancelled"}.get(event.type, self.status)


@dataclass
class Payment(Aggregate):
    captured: int = 0
    refunded: int = 0

    def apply(self, event):
        if event.type == PAYMENT_CAPTURED:
            self.captured += body(event)["amount"]
        elif event.type == PAYMENT_REFUNDED:
            self.refunded += body(event)["amount"]


@dataclass
class Inventory(Aggregate):
    on_hand: int = 0
    # orderId -> reserved quantity, or 0 for a refused reservation.
    decided: dict[str, int] = field(default_factory=dict)

    def apply(self, event):
        data = body(event)
        if event.type == INVENTORY_STOCKED:
            self.on_hand += data["quantity"]
        elif event.type == INVENTORY_RESERVED:
            self.on_hand -= data["quantity"]
            self.decided[data["orderId"]] = data["quantity"]
        elif event.type == INVENTORY_RESERVATION_FAILED:
            self.decided[data["orderId"]] = 0


# --- the services: one handler per event type they react to -----------------------------

def capture_payment(client, placed: RecordedEvent) -> None:
    """Payment service, on OrderPlaced: capture the order's amount."""
    order = body(placed)
    payment = Payment.load(client, f"payment-{order['orderId']}")
    if payment.captured:
        return
    payment.save(client, answer(PAYMENT_CAPTURED, {**order}, placed))


def reserve_inventory(client, captured: RecordedEvent) -> None:
    """Inventory service, on PaymentCaptured: reserve the order's items, or refuse."""
    order = body(captured)
    inventory = Inventory.load(client, f"inventory-{order['sku']}")
    if order["orderId"] in inventory.decided:
        return
    if inventory.on_hand >= order["quantity"]:
        event = answer(INVENTORY_RESERVED, {**order}, captured)
    else:
        event = answer(INVENTORY_RESERVATION_FAILED, {**order, "onHand": inventory.on_hand}, captured)
    inventory.save(client, event)


def refund_payment(client, failed: RecordedEvent) -> None:
    """Payment service, on InventoryReservationFailed: the compensation."""
    order = body(failed)
    payment = Payment.load(client, f"payment-{order['orderId']}")
    if payment.refunded:
        return
    payment.save(client, answer(PAYMENT_REFUNDED, {"orderId": order["orderId"], "amount": order["amount"]},
                                failed))


def confirm_order(client, reserved: RecordedEvent) -> None:
    """Order service, on InventoryReserved."""
    order_id = body(reserved)["orderId"]
    order = Order.load(client, f"order-{order_id}")
    if order.status == "placed":
        order.save(client, answer(ORDER_CONFIRMED, {"orderId": order_id}, reserved))


def cancel_order(client, refunded: RecordedEvent) -> None:
    """Order service, on PaymentRefunded."""
    order_id = body(refunded)["orderId"]
    order = Order.load(client, f"order-{order_id}")
    if order.status == "placed":
        order.save(client, answer(ORDER_CANCELLED, {"orderId": order_id, "reason": "out of stock"}, refunded))


HANDLERS = {
    ORDER_PLACED: capture_payment,
    PAYMENT_CAPTURED: reserve_inventory,
    INVENTORY_RESERVATION_FAILED: refund_payment,
    INVENTORY_RESERVED: confirm_order,
    PAYMENT_REFUNDED: cancel_order,
}


class Subscriber(threading.Thread):
    """A catch-up subscription to `$all` for some event types, from a position, calling
    `on_event` for each of them in `$all` order. Records failures for the main thread."""

    def __init__(self, name: str, client: KurrentDBClient, types: list[str], on_event, *,
                 from_position: int | None, run_tag: str):
        super().__init__(name=name, daemon=True)
        self.client, self.on_event, self.run_tag = client, on_event, run_tag
        self.subscription = client.subscribe_to_all(
            commit_position=from_position, filter_include=types, include_caught_up=True,
            timeout=SETTLE_TIMEOUT_S * 4)
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self.seen = 0

    def run(self):
        try:
            for item in self.subscription:
                if isinstance(item, CaughtUp):
                    self.caught_up.set()
                    continue
                # Only this run's events: the broker may hold other runs.
                if not body(item).get("run") == self.run_tag:
                    continue
                self.seen += 1
                self.handle(item)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            if not self.stopping:
                self.error = e

    stopping = False

    def handle(self, event: RecordedEvent) -> None:
        for _ in range(CONFLICT_RETRIES_MAX):
            try:
                self.on_event(self.client, event)
                return
            except WrongCurrentVersionError:
                continue  # another writer moved the aggregate: load it again
        raise RuntimeError(f"{self.name}: {event.type} {event.id} conflicted {CONFLICT_RETRIES_MAX} times")

    def stop(self):
        self.stopping = True
        self.subscription.stop()


def dispatch(client, event: RecordedEvent) -> None:
    HANDLERS[event.type](client, event)


# --- the read model ------------------------------------------------------------------------

class OrdersSummary:
    """orderId -> {status, amount, paid, refunded, sku}: what a UI would query."""

    def __init__(self):
        self.orders: dict[str, dict] = {}
        self.lock = threading.Lock()

    def apply(self, _client, event: RecordedEvent) -> None:
        data = body(event)
        with self.lock:
            row = self.orders.setdefault(data["orderId"], {"status": "?", "paid": 0, "refunded": 0})
            if event.type == ORDER_PLACED:
                row.update(status="placed", amount=data["amount"], sku=data["sku"])
            elif event.type == PAYMENT_CAPTURED:
                row.update(status="paid", paid=row["paid"] + data["amount"])
            elif event.type == INVENTORY_RESERVED:
                row.update(status="reserved")
            elif event.type == INVENTORY_RESERVATION_FAILED:
                row.update(status="out of stock")
            elif event.type == PAYMENT_REFUNDED:
                row.update(status="refunded", refunded=row["refunded"] + data["amount"])
            elif event.type in (ORDER_CONFIRMED, ORDER_CANCELLED):
                row.update(status="confirmed" if event.type == ORDER_CONFIRMED else "cancelled")

    def settled(self, order_ids) -> bool:
        with self.lock:
            return all(self.orders.get(o, {}).get("status") in ("confirmed", "cancelled") for o in order_ids)

    def snapshot(self) -> dict[str, dict]:
        with self.lock:
            return {k: dict(v) for k, v in self.orders.items()}


# --- the run ---------------------------------------------------------------------------------

@dataclass
class Plan:
    run: str
    stock: dict[str, int]
    orders: list[dict]

    def expected(self) -> dict[str, str]:
        """orderId -> confirmed/cancelled, deciding in placement order as the one inventory
        service does (it sees PaymentCaptured events in `$all` order)."""
        left = dict(self.stock)
        out = {}
        for o in self.orders:
            if left[o["sku"]] >= o["quantity"]:
                left[o["sku"]] -= o["quantity"]
                out[o["orderId"]] = "confirmed"
            else:
                out[o["orderId"]] = "cancelled"
        return out


def make_plan(count: int) -> Plan:
    """`count` orders over three products; stock runs out for two of them, so some
    orders fail inventory and are refunded."""
    run = uuid.uuid4().hex[:8]
    skus = [f"widget{run}", f"gadget{run}", f"gizmo{run}"]
    stock = {skus[0]: 5, skus[1]: 3, skus[2]: 1000}
    orders = []
    for i in range(count):
        sku = skus[i % 3]
        quantity = 1 + i % 4
        orders.append({"run": run, "orderId": f"{run}n{i}", "customer": f"customer{i % 5}", "sku": sku,
                       "quantity": quantity, "amount": 1250 * quantity})
    return Plan(run, stock, orders)


def place_orders(client: KurrentDBClient, plan: Plan) -> dict[str, str]:
    """Stock the products, then place each order (a new order stream: NO_STREAM expected).
    Returns orderId -> correlation id."""
    for sku, quantity in plan.stock.items():
        event_id = uuid.uuid4()
        client.append_to_stream(f"inventory-{sku}", current_version=StreamState.NO_STREAM, timeout=CALL_TIMEOUT_S,
                                events=new_event(INVENTORY_STOCKED, {"run": plan.run, "sku": sku, "quantity": quantity},
                                                 event_id=event_id, correlation_id=str(event_id),
                                                 causation_id=str(event_id)))
    correlations = {}
    for order in plan.orders:
        event_id = uuid.uuid4()
        correlations[order["orderId"]] = str(event_id)
        client.append_to_stream(f"order-{order['orderId']}", current_version=StreamState.NO_STREAM,
                                timeout=CALL_TIMEOUT_S,
                                events=new_event(ORDER_PLACED, order, event_id=event_id,
                                                 correlation_id=str(event_id), causation_id=str(event_id)))
    return correlations


def trace(client: KurrentDBClient, correlation_id: str) -> list[RecordedEvent]:
    """The saga of one order as the broker indexed it: `$bc-<correlation id>`, resolved."""
    return list(client.get_stream(f"$bc-{correlation_id}", resolve_links=True, timeout=CALL_TIMEOUT_S))


def user_event_count(client: KurrentDBClient, run: str) -> int:
    return sum(1 for e in client.read_all(timeout=CALL_TIMEOUT_S) if body_or_empty(e).get("run") == run)


def body_or_empty(e: RecordedEvent) -> dict:
    try:
        value = json.loads(e.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def start_services(client, run: str, from_position: int | None, summary: OrdersSummary | None):
    subs = [Subscriber(f"{t}-handler", client, [t], dispatch, from_position=from_position, run_tag=run)
            for t in HANDLERS]
    if summary is not None:
        types = [ORDER_PLACED, PAYMENT_CAPTURED, INVENTORY_RESERVED, INVENTORY_RESERVATION_FAILED,
                 PAYMENT_REFUNDED, ORDER_CONFIRMED, ORDER_CANCELLED]
        subs.append(Subscriber("orders-summary", client, types, summary.apply, from_position=from_position,
                               run_tag=run))
    for s in subs:
        s.start()
    return subs


def check_subscribers(subs) -> None:
    for s in subs:
        if s.error is not None:
            raise RuntimeError(f"{s.name} failed: {s.error!r}") from s.error


def wait_for(predicate, subs, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        check_subscribers(subs)
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def run_saga(url: str, count: int, verbose: bool) -> list[str]:
    """Run `count` orders through the saga; the mismatches found (empty: all as expected)."""
    client = KurrentDBClient(url)
    problems: list[str] = []
    try:
        plan = make_plan(count)
        start = client.get_commit_position(filter_exclude=(), timeout=CALL_TIMEOUT_S) or None
        summary = OrdersSummary()
        subs = start_services(client, plan.run, start, summary)
        started = time.monotonic()
        correlations = place_orders(client, plan)
        order_ids = [o["orderId"] for o in plan.orders]
        wait_for(lambda: summary.settled(order_ids), subs, SETTLE_TIMEOUT_S, f"{count} orders to settle")
        settle_s = time.monotonic() - started
        for s in subs:
            s.stop()

        expected = plan.expected()
        rows = summary.snapshot()
        print(f"{count} orders settled in {settle_s:.2f} s (run {plan.run})")
        print(f"{'order':<14} {'sku':<16} {'qty':>3} {'amount':>7} {'paid':>6} {'refunded':>8}  status")
        for o in plan.orders:
            row = rows[o["orderId"]]
            print(f"{o['orderId']:<14} {o['sku']:<16} {o['quantity']:>3} {o['amount']:>7} {row['paid']:>6} "
                  f"{row['refunded']:>8}  {row['status']}")
            if row["status"] != expected[o["orderId"]]:
                problems.append(f"order {o['orderId']}: {row['status']}, expected {expected[o['orderId']]}")
            want_refund = o["amount"] if expected[o["orderId"]] == "cancelled" else 0
            if row["paid"] != o["amount"] or row["refunded"] != want_refund:
                problems.append(f"order {o['orderId']}: paid {row['paid']} refunded {row['refunded']}, "
                                f"expected {o['amount']} and {want_refund}")

        # The traces: every order's $bc- stream is its chain, each event caused by the one before.
        shown = set()
        for o in plan.orders:
            chain = trace(client, correlations[o["orderId"]])
            types = [e.type for e in chain]
            want = CONFIRMED_CHAIN if expected[o["orderId"]] == "confirmed" else CANCELLED_CHAIN
            if types != want:
                problems.append(f"order {o['orderId']}: $bc- chain {types}, expected {want}")
                continue
            for before, after in zip(chain, chain[1:]):
                if json.loads(after.metadata)["$causationId"] != str(before.id):
                    problems.append(f"order {o['orderId']}: {after.type} not caused by {before.type}")
            outcome = expected[o["orderId"]]
            if verbose or outcome not in shown:
                shown.add(outcome)
                print(f"\n$bc-{correlations[o['orderId']]} ({outcome}):")
                for e in chain:
                    print(f"  {e.link.stream_position if e.link else '?':>3}  {e.stream_name:<32} {e.type:<28} "
                          f"caused by {json.loads(e.metadata)['$causationId'][:8]}")

        # Inventory as the aggregates tell it.
        for sku, stocked in plan.stock.items():
            reserved = sum(o["quantity"] for o in plan.orders if o["sku"] == sku and expected[o["orderId"]] == "confirmed")
            inventory = Inventory.load(client, f"inventory-{sku}")
            if inventory.on_hand != stocked - reserved:
                problems.append(f"inventory-{sku}: {inventory.on_hand} on hand, expected {stocked - reserved}")

        # Idempotency: the services restarted without checkpoints see every event again.
        before = user_event_count(client, plan.run)
        replay = start_services(client, plan.run, start, None)
        wait_for(lambda: all(s.caught_up.is_set() for s in replay), replay, SETTLE_TIMEOUT_S,
                 "the replaying services to catch up")
        # A subscriber handles each event before it reads the next, so caught up is handled.
        for s in replay:
            s.stop()
        check_subscribers(replay)
        # And an append repeated after a lost answer: same event id, same expected revision.
        first = plan.orders[0]
        placed = client.get_stream(f"order-{first['orderId']}", timeout=CALL_TIMEOUT_S)[0]
        retry = answer(PAYMENT_CAPTURED, {**first}, placed)
        client.append_to_stream(f"payment-{first['orderId']}", events=retry, current_version=StreamState.NO_STREAM,
                                timeout=CALL_TIMEOUT_S)
        after = user_event_count(client, plan.run)
        replayed = sum(s.seen for s in replay)
        print(f"\nreplayed {replayed} events through the services again, retried one append: "
              f"{before} events before, {after} after")
        if after != before:
            problems.append(f"replay wrote {after - before} duplicate events")
        if replayed == 0:
            problems.append("the replay saw no events")
    finally:
        client.close()
    return problems


# --- a fresh broker --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def herald_binary() -> Path:
    """$HERALD_BIN, else a built release or debug binary, else `cargo build --release`."""
    if os.environ.get("HERALD_BIN"):
        return Path(os.environ["HERALD_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
    for profile in ("release", "debug"):
        if (target / profile / "herald").exists():
            return target / profile / "herald"
    subprocess.run(["cargo", "build", "--release", "-p", "herald"], cwd=REPO_ROOT, check=True)
    return target / "release" / "herald"


class FreshBroker:
    """`herald serve` on free ports with a temporary data directory, removed afterwards."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="order-saga-"))
        self.port = free_port()
        kafka = free_port()
        self.log = open(self.dir / "herald.log", "wb")
        self.process = subprocess.Popen(
            [str(herald_binary()), "serve", "--data-dir", str(self.dir / "data"),
             "--kafka-listen", f"127.0.0.1:{kafka}", "--http-listen", "off", "--amqp-listen", "off",
             "--registry-listen", "off", "--eventstore-listen", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"herald exited with {self.process.returncode}: {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"herald did not listen on {self.port} within {BROKER_START_TIMEOUT_S}s")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"kurrentdb://127.0.0.1:{self.port}?tls=false&DefaultDeadline={int(CALL_TIMEOUT_S)}"

    def tail(self) -> str:
        self.log.flush()
        return (self.dir / "herald.log").read_text(errors="replace")[-2000:]

    def close(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--start-broker", action="store_true",
                       help="start a fresh herald on free ports with a temporary data dir")
    where.add_argument("--url", help="a running event store, e.g. kurrentdb://127.0.0.1:2113?tls=false")
    parser.add_argument("--orders", type=int, default=12, help="orders to place (default 12)")
    parser.add_argument("--verbose", action="store_true", help="print every order's trace")
    args = parser.parse_args()
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    broker = FreshBroker() if args.start_broker else None
    try:
        problems = run_saga(broker.url if broker else args.url, args.orders, args.verbose)
    except Exception as e:  # noqa: BLE001 - any failure is a failed run, said plainly
        print(f"\nFAILED: {e!r}", file=sys.stderr)
        if broker:
            print(broker.tail(), file=sys.stderr)
        return 1
    finally:
        if broker:
            broker.close()
    if problems:
        print("\nMISMATCH:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print("\nall orders as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
