"""Work queues over HTTP: shared subscriptions on a topic (create, receive with a lease,
ack, nack, release, extend, dead letters, redrive, delayed delivery, publish dedup,
stats and metrics), driven with httpx against a real broker, as the README's
"Work queues" section describes them.

Timing is asserted only as lower bounds (a retry or a delayed record never comes
early, a lease is never cut short); upper bounds are deadlines that fail a test
instead of hanging it, generous enough for a loaded 2-core CI machine.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from herald_support import unique

pytestmark = pytest.mark.timeout(240)

# Clock granularity between the test's clock and the broker's (both whole
# milliseconds, on the same machine): a lower bound may be missed by this much.
CLOCK_TOLERANCE_S = 0.020
CLOCK_TOLERANCE_MS = 20

DLQ_HEADERS = {
    "herald-dlq-source-topic",
    "herald-dlq-source-partition",
    "herald-dlq-source-offset",
    "herald-dlq-subscription",
    "herald-dlq-delivery-count",
    "herald-dlq-last-error",
    "herald-dlq-first-delivery-at",
    "herald-dlq-dead-lettered-at",
}
DELIVERY_FIELDS = {"partition", "offset", "timestamp_ms", "key", "key_encoding", "value",
                   "value_encoding", "headers", "receipt", "delivery_count"}
STATS_FIELDS = {"depth", "in_flight", "delayed", "dead_lettered", "redeliveries", "expired_leases",
                "lost_to_retention", "bad_deliver_at", "dead_letter_depth"}
DEFAULT_SETTINGS = {
    "lease_ms": 30000,
    "max_deliveries": 5,
    "backoff_base_ms": 1000,
    "backoff_factor": 2.0,
    "backoff_max_ms": 300000,
    "backoff_jitter": 0.2,
    "dead_letter_topic": None,
    "ordered_by_key": False,
    "start": "earliest",
    "max_unacked": 1000,
}


def _describe(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url} -> {response.status_code} {response.text[:500]}"


class Herald:
    """An httpx client on one broker's HTTP port. Every 5xx answer it ever gets is
    remembered, and the `herald` fixture fails the test on any of them, so a server
    error cannot hide behind a test that only looked at other fields."""

    def __init__(self, base_url: str, server_errors: list[str] | None = None):
        self.base_url = base_url
        self.server_errors = server_errors if server_errors is not None else []
        self.client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(60.0),
                                   event_hooks={"response": [self._check]})

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 500:
            response.read()
            self.server_errors.append(_describe(response))

    def fork(self) -> "Herald":
        """Another client (its own connection pool, e.g. for a thread) on the same broker."""
        return Herald(self.base_url, self.server_errors)

    def close(self) -> None:
        self.client.close()

    def reconnect(self) -> None:
        """New connections (after the broker restarted on the same port)."""
        self.client.close()
        self.client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(60.0),
                                   event_hooks={"response": [self._check]})

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.client.request(method, path, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs):
        response = self.request(method, path, **kwargs)
        assert response.status_code == status, _describe(response)
        return response.json() if response.content else None

    def create_topic(self, partitions: int = 1, prefix: str = "q") -> str:
        topic = unique(prefix)
        self.ok("POST", "/topics", 201, json={"name": topic, "partitions": partitions})
        return topic

    def publish(self, topic: str, records: list[dict], **extra) -> list[dict]:
        body = self.ok("POST", f"/topics/{topic}/records", json={"records": records, **extra})
        assert len(body["offsets"]) == len(records), body
        return body["offsets"]

    def high_watermarks(self, topic: str) -> list[int]:
        return [p["high_watermark"] for p in self.ok("GET", f"/topics/{topic}")["partitions"]]

    def subscribe(self, topic: str, name: str = "workers", **settings) -> "Sub":
        detail = self.ok("POST", f"/topics/{topic}/subscriptions", 201, json={"name": name, **settings})
        assert (detail["topic"], detail["name"]) == (topic, name), detail
        for field, value in settings.items():
            assert detail["settings"][field] == value, (field, detail)
        return Sub(self, topic, name)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        response = self.request("GET", "/metrics")
        assert response.status_code == 200, _describe(response)
        samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


class Sub:
    """One subscription's routes."""

    def __init__(self, herald: Herald, topic: str, name: str):
        self.herald, self.topic, self.name = herald, topic, name

    @property
    def path(self) -> str:
        return f"/topics/{self.topic}/subscriptions/{self.name}"

    def on(self, herald: Herald) -> "Sub":
        return Sub(herald, self.topic, self.name)

    def detail(self) -> dict:
        return self.herald.ok("GET", self.path)

    def stats(self) -> dict:
        stats = self.detail()["stats"]
        assert set(stats) == STATS_FIELDS, stats
        return stats

    def receive(self, max_records: int = 1, wait_ms: int = 0) -> list[dict]:
        body = self.herald.ok("POST", f"{self.path}/receive",
                              json={"max_records": max_records, "wait_ms": wait_ms})
        for d in body["records"]:
            assert set(d) == DELIVERY_FIELDS, d
        return body["records"]

    def receive_until(self, count: int, timeout_s: float = 20.0, max_records: int = 100) -> list[dict]:
        """Long-poll until `count` deliveries arrived in all; fails on timeout. Returns
        exactly what arrived (which may be more than `count` if a batch overshoots)."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{self.name}: only {len(got)} of {count} deliveries within {timeout_s}s: {got}"
            got += self.receive(max_records=min(max_records, count - len(got)),
                                wait_ms=int(min(5000, max(1, left * 1000))))
        return got

    def ack(self, receipts: list[str]) -> dict:
        return self.herald.ok("POST", f"{self.path}/ack", json={"receipts": receipts})

    def ack_all(self, deliveries: list[dict]) -> None:
        body = self.ack([d["receipt"] for d in deliveries])
        assert body == {"acked": len(deliveries), "failed": []}, body

    def nack(self, receipt: str, error: str | None = None) -> httpx.Response:
        body = {"receipt": receipt} if error is None else {"receipt": receipt, "error": error}
        return self.herald.request("POST", f"{self.path}/nack", json=body)

    def nack_ok(self, receipt: str, error: str | None = None) -> bool:
        response = self.nack(receipt, error)
        assert response.status_code == 200, _describe(response)
        body = response.json()
        assert set(body) == {"dead_lettered"} and isinstance(body["dead_lettered"], bool), body
        return body["dead_lettered"]

    def dead_letters(self, max_records: int = 100) -> dict:
        return self.herald.ok("GET", f"{self.path}/dead-letters", params={"max_records": max_records})

    def redrive(self) -> int:
        body = self.herald.ok("POST", f"{self.path}/redrive")
        assert set(body) == {"moved"}, body
        return body["moved"]


@pytest.fixture
def herald(broker):
    h = Herald(broker.http_url)
    yield h
    h.close()
    assert not h.server_errors, "the broker answered with 5xx:\n" + "\n".join(h.server_errors)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error(response: httpx.Response, status: int, codes=None) -> None:
    """The response is `status` with a JSON error body `{"error", "message"}` whose code is
    `codes` (a string or a tuple of acceptable ones; None: any code the contract leaves open)."""
    codes = (codes,) if isinstance(codes, str) else codes
    assert response.status_code == status, (codes, _describe(response))
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], _describe(response)
    assert isinstance(body.get("message"), str) and body["message"], _describe(response)
    assert codes is None or body["error"] in codes, (codes, _describe(response))


# ---------------------------------------------------------------------------------


def test_subscription_crud_settings_listing_and_start_latest(herald):
    topic = herald.create_topic(2)
    created = herald.ok("POST", f"/topics/{topic}/subscriptions", 201, json={"name": "workers"})
    assert created == {
        "topic": topic, "name": "workers", "dead_letter_topic": f"{topic}.workers.dlq",
        "settings": DEFAULT_SETTINGS, "stats": {field: 0 for field in STATS_FIELDS},
    }
    sub = Sub(herald, topic, "workers")
    assert sub.detail() == created

    # PATCH changes the fields it names; the others keep their values.
    patched = herald.ok("PATCH", sub.path, json={"lease_ms": 1234, "dead_letter_topic": f"{topic}-custom-dlq"})
    assert patched["settings"] == {**DEFAULT_SETTINGS, "lease_ms": 1234, "dead_letter_topic": f"{topic}-custom-dlq"}
    assert patched["dead_letter_topic"] == f"{topic}-custom-dlq"
    again = herald.ok("PATCH", sub.path, json={"max_deliveries": 2})
    assert again["settings"] == {**patched["settings"], "max_deliveries": 2}
    assert sub.detail()["settings"] == again["settings"]
    # The contract changed PUT to PATCH: PUT is a wrong method, not an update.
    put = herald.request("PUT", sub.path, json={"lease_ms": 99})
    _error(put, 405, "method_not_allowed")
    assert sub.detail()["settings"]["lease_ms"] == 1234

    # GET /subscriptions lists all topics' subscriptions sorted by topic, then name.
    other = herald.create_topic(1, prefix="a-q")  # sorts before `topic`
    for t, n in [(topic, "zeta"), (other, "beta"), (other, "alpha"), (topic, "alpha")]:
        herald.subscribe(t, n)
    listed = [(s["topic"], s["name"]) for s in herald.ok("GET", "/subscriptions") if s["topic"] in (topic, other)]
    assert listed == sorted(listed) == [(other, "alpha"), (other, "beta"), (topic, "alpha"),
                                        (topic, "workers"), (topic, "zeta")], listed
    assert all(set(s) == {"topic", "name", "dead_letter_topic", "settings", "stats"}
               for s in herald.ok("GET", "/subscriptions"))

    # DELETE: 204, then gone everywhere; a second DELETE is 404.
    assert herald.request("DELETE", sub.path).status_code == 204
    _error(herald.request("GET", sub.path), 404, "unknown_subscription")
    _error(herald.request("DELETE", sub.path), 404, "unknown_subscription")
    assert (topic, "workers") not in [(s["topic"], s["name"]) for s in herald.ok("GET", "/subscriptions")]

    # start=latest skips what was published before the subscription existed.
    herald.publish(other, [{"value": {"n": 0}}, {"value": {"n": 1}}])
    latest = herald.subscribe(other, "latest", start="latest")
    assert latest.stats()["depth"] == 0
    assert latest.receive(max_records=10) == []
    herald.publish(other, [{"value": {"n": 2}}])
    [d] = latest.receive_until(1)
    assert (d["offset"], d["value"], d["delivery_count"]) == (2, {"n": 2}, 1)
    # An earliest subscription created at the same moment sees all three.
    assert sorted(d["offset"] for d in herald.subscribe(other, "earliest").receive_until(3)) == [0, 1, 2]


def test_poison_record_reaches_the_dlq_after_exactly_max_deliveries(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, max_deliveries=3, backoff_base_ms=50, backoff_factor=2.0,
                           backoff_jitter=0.0, lease_ms=30000)
    published_ms = _now_ms()
    [pos] = herald.publish(topic, [{"key": "order-7", "value": {"id": 7, "poison": True},
                                    "headers": {"trace-id": "abc-123"}}])
    assert pos["duplicate"] is False

    receipts = []
    for attempt in (1, 2, 3):
        [d] = sub.receive_until(1)
        assert (d["partition"], d["offset"]) == (pos["partition"], pos["offset"]), d
        assert d["delivery_count"] == attempt, f"delivery {attempt} counted {d['delivery_count']}"
        assert (d["key"], d["key_encoding"], d["value"], d["value_encoding"]) == \
               ("order-7", "string", {"id": 7, "poison": True}, "json")
        assert d["headers"] == {"trace-id": "abc-123"}
        assert d["receipt"] not in receipts, "each delivery gets a new receipt"
        receipts.append(d["receipt"])
        dead = sub.nack_ok(d["receipt"], error=f"boom on attempt {attempt}")
        assert dead is (attempt == 3), f"nack {attempt} of 3 answered dead_lettered={dead}"
        stats = sub.stats()
        assert stats["dead_lettered"] == (1 if attempt == 3 else 0), stats

    # Never handed out again.
    assert sub.receive(max_records=10, wait_ms=500) == []
    stats = sub.stats()
    assert stats == {**stats, "depth": 0, "in_flight": 0, "delayed": 0, "dead_lettered": 1,
                     "redeliveries": 2, "dead_letter_depth": 1, "expired_leases": 0}, stats
    # A receipt of a dead-lettered record acts no more.
    _error(sub.nack(receipts[-1], "again"), 409, "not_leased")

    listing = sub.dead_letters()
    dlq = f"{topic}.workers.dlq"
    assert listing["dead_letter_topic"] == dlq
    [letter] = listing["records"]
    assert set(letter) == DELIVERY_FIELDS - {"receipt", "delivery_count"}, letter
    assert (letter["partition"], letter["offset"]) == (0, 0), "the first record of a new 1-partition DLQ topic"
    headers = letter["headers"]
    assert set(headers) == DLQ_HEADERS | {"trace-id"}, headers
    assert headers["trace-id"] == "abc-123", "the original headers are kept"
    assert headers["herald-dlq-source-topic"] == topic
    assert headers["herald-dlq-source-partition"] == str(pos["partition"])
    assert headers["herald-dlq-source-offset"] == str(pos["offset"])
    assert headers["herald-dlq-subscription"] == "workers"
    assert headers["herald-dlq-delivery-count"] == "3"
    assert headers["herald-dlq-last-error"] == "boom on attempt 3"
    first, dead_at = int(headers["herald-dlq-first-delivery-at"]), int(headers["herald-dlq-dead-lettered-at"])
    assert first >= published_ms - CLOCK_TOLERANCE_MS, (first, published_ms)
    # Two retries waited 50 + 100 ms between the first delivery and the third failure.
    assert dead_at - first >= 150, (first, dead_at)
    assert (letter["key"], letter["value"], letter["value_encoding"]) == ("order-7", {"id": 7, "poison": True}, "json")

    # The DLQ is an ordinary topic: readable like any other.
    read = herald.ok("GET", f"/topics/{dlq}/partitions/0/records")
    [stored] = read["records"]
    assert (stored["key"], stored["value"], stored["headers"]) == (letter["key"], letter["value"], headers)


def test_backoff_before_each_retry_grows_by_the_factor(herald):
    topic = herald.create_topic(1)
    base_ms, factor, max_deliveries = 200, 2.0, 4
    sub = herald.subscribe(topic, max_deliveries=max_deliveries, backoff_base_ms=base_ms,
                           backoff_factor=factor, backoff_jitter=0.0, lease_ms=60000)
    herald.publish(topic, [{"key": "k", "value": {"n": 1}}])
    [record] = sub.receive_until(1)
    offset = record["offset"]

    gaps: list[tuple[float, float]] = []  # (configured backoff, observed gap) in seconds
    checked_early = 0
    for failure in range(1, max_deliveries + 1):
        assert record["delivery_count"] == failure, record
        backoff_s = base_ms * factor ** (failure - 1) / 1000
        nacked_at = time.monotonic()
        dead = sub.nack_ok(record["receipt"], error=f"fail {failure}")
        if failure == max_deliveries:
            assert dead, "the max_deliveries-th nack must dead-letter"
            break
        assert not dead, f"nack {failure} of {max_deliveries} dead-lettered"

        # An immediate receive while the backoff runs hands out nothing, and the record
        # counts as delayed. (Checked only if both answers came before the retry time;
        # on a machine that slow the record may legitimately be ready.)
        early = sub.receive(max_records=1, wait_ms=0)
        received_at = time.monotonic()
        stats = sub.stats()
        stats_at = time.monotonic()
        if early:
            assert received_at - nacked_at >= backoff_s - CLOCK_TOLERANCE_S, \
                f"retry {failure} came {received_at - nacked_at:.3f}s after the nack, backoff {backoff_s}s"
        if stats_at - nacked_at < backoff_s - CLOCK_TOLERANCE_S:
            assert early == [], f"retry {failure} handed out during its {backoff_s}s backoff: {early}"
            assert (stats["delayed"], stats["depth"], stats["in_flight"]) == (1, 0, 0), stats
            checked_early += 1

        if not early:
            early = sub.receive_until(1, timeout_s=20)
            received_at = time.monotonic()
        [record] = early
        assert record["offset"] == offset
        gap = received_at - nacked_at
        assert gap >= backoff_s - CLOCK_TOLERANCE_S, \
            f"retry {failure} came {gap:.3f}s after the nack, before its backoff of {backoff_s}s"
        gaps.append((backoff_s, gap))

    assert [b for b, _ in gaps] == [0.2, 0.4, 0.8]
    assert all(gap >= bound - CLOCK_TOLERANCE_S for bound, gap in gaps), gaps
    assert checked_early >= 1, f"no immediate receive answered within a backoff (gaps {gaps}); machine too slow"
    [letter] = sub.dead_letters()["records"]
    assert letter["headers"]["herald-dlq-delivery-count"] == str(max_deliveries)
    assert letter["headers"]["herald-dlq-last-error"] == f"fail {max_deliveries}"
    assert sub.stats()["redeliveries"] == max_deliveries - 1


def test_an_expired_lease_redelivers_and_the_old_receipt_is_stale(herald):
    topic = herald.create_topic(1)
    lease_ms = 500
    sub = herald.subscribe(topic, lease_ms=lease_ms, backoff_base_ms=10, backoff_jitter=0.0)
    herald.publish(topic, [{"key": "slow", "value": {"job": "slow"}}])
    asked_at = time.monotonic()
    [first] = sub.receive_until(1)
    assert first["delivery_count"] == 1
    stats = sub.stats()
    if time.monotonic() - asked_at < lease_ms / 1000 - CLOCK_TOLERANCE_S:
        assert (stats["in_flight"], stats["depth"], stats["expired_leases"]) == (1, 0, 0), stats

    # Not acked: the lease runs out and the same record comes back.
    [second] = sub.receive_until(1, timeout_s=10)
    again_at = time.monotonic()
    assert (second["partition"], second["offset"], second["delivery_count"]) == \
           (first["partition"], first["offset"], 2), second
    assert second["receipt"] != first["receipt"]
    assert again_at - asked_at >= lease_ms / 1000 - CLOCK_TOLERANCE_S, \
        f"redelivered {again_at - asked_at:.3f}s after the receive, lease {lease_ms} ms"
    # Keep the new lease from running out too while the old receipt is tried.
    herald.ok("POST", f"{sub.path}/extend", json={"receipt": second["receipt"], "lease_ms": 30000})

    # The old receipt acts no more, while the new one is leased.
    old = sub.ack([first["receipt"]])
    assert old["acked"] == 0 and len(old["failed"]) == 1, old
    assert old["failed"][0]["receipt"] == first["receipt"]
    assert old["failed"][0]["error"] in ("stale_receipt", "not_leased"), old
    assert old["failed"][0]["message"], old
    _error(sub.nack(first["receipt"], "late"), 409, ("stale_receipt", "not_leased"))

    assert sub.ack([second["receipt"]]) == {"acked": 1, "failed": []}
    # Acked is final: the same receipt again is not leased.
    twice = sub.ack([second["receipt"]])
    assert twice["acked"] == 0 and [f["error"] for f in twice["failed"]] == ["not_leased"], twice
    stats = sub.stats()
    assert stats["expired_leases"] >= 1 and stats["redeliveries"] >= 1, stats
    assert (stats["depth"], stats["in_flight"], stats["delayed"], stats["dead_lettered"]) == (0, 0, 0, 0), stats


def test_release_is_not_a_failure_and_extend_keeps_the_lease(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, lease_ms=500, max_deliveries=1, backoff_base_ms=10, backoff_jitter=0.0)
    herald.publish(topic, [{"value": {"n": 1}}])
    [d1] = sub.receive_until(1)
    assert herald.request("POST", f"{sub.path}/release", json={"receipt": d1["receipt"]}).status_code == 204
    # Released, not failed: with max_deliveries 1 a failure would have dead-lettered it.
    [d2] = sub.receive_until(1)
    assert (d2["offset"], d2["delivery_count"]) == (d1["offset"], 2)
    assert sub.stats()["dead_lettered"] == 0
    _error(herald.request("POST", f"{sub.path}/release", json={"receipt": d1["receipt"]}), 409,
           ("stale_receipt", "not_leased"))

    before_ms = _now_ms()
    extended = herald.ok("POST", f"{sub.path}/extend", json={"receipt": d2["receipt"], "lease_ms": 5000})
    assert set(extended) == {"lease_deadline_ms"}
    assert extended["lease_deadline_ms"] >= before_ms + 5000 - CLOCK_TOLERANCE_MS, (extended, before_ms)
    # Past the original 500 ms lease the record is still leased, not redelivered.
    time.sleep(0.8)
    assert sub.receive(max_records=1, wait_ms=0) == []
    stats = sub.stats()
    assert (stats["in_flight"], stats["expired_leases"], stats["dead_lettered"]) == (1, 0, 0), stats
    assert sub.ack([d2["receipt"]]) == {"acked": 1, "failed": []}
    _error(herald.request("POST", f"{sub.path}/extend", json={"receipt": d2["receipt"]}), 409, "not_leased")


def test_ordered_by_key_holds_later_records_of_a_key_until_the_earlier_is_done(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, ordered_by_key=True, backoff_base_ms=100, backoff_jitter=0.0, lease_ms=30000)
    herald.publish(topic, [{"key": "a", "value": "a1"}, {"key": "a", "value": "a2"},
                           {"key": "b", "value": "b1"}, {"value": "n1"}, {"value": "n2"}])
    first = sub.receive(max_records=10)
    # a2 waits for a1; keyless records are not ordered.
    assert sorted(d["value"] for d in first) == ["a1", "b1", "n1", "n2"], first
    a1 = next(d for d in first if d["value"] == "a1")
    sub.ack_all([d for d in first if d is not a1])
    assert sub.nack_ok(a1["receipt"], "retry me") is False
    # While a1 waits for its retry, a2 is still held back.
    [again] = sub.receive_until(1)
    assert (again["value"], again["delivery_count"]) == ("a1", 2), again
    assert sub.receive(max_records=10) == []
    sub.ack_all([again])
    [a2] = sub.receive_until(1)
    assert (a2["value"], a2["delivery_count"]) == ("a2", 1)
    sub.ack_all([a2])


def test_max_unacked_bounds_what_one_partition_hands_out(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, max_unacked=2, lease_ms=30000)
    herald.publish(topic, [{"value": i} for i in range(5)])
    got = sub.receive(max_records=10)
    assert [d["value"] for d in got] == [0, 1], got
    assert sub.receive(max_records=10) == [], "more than max_unacked records tracked at once"
    sub.ack_all(got[:1])
    more = sub.receive_until(1)
    assert [d["value"] for d in more] == [2], more
    sub.ack_all(got[1:] + more)
    rest = sub.receive_until(2)
    assert [d["value"] for d in rest] == [3, 4]
    sub.ack_all(rest)
    stats = sub.stats()
    assert (stats["depth"], stats["in_flight"]) == (0, 0), stats


def test_four_workers_consume_ten_thousand_records_without_losing_any(herald):
    total, workers, fail_count = 10_000, 4, 5
    topic = herald.create_topic(4)
    for start in range(0, total, 1000):
        offsets = herald.publish(topic, [{"value": {"id": i}, "partition": i % 4}
                                         for i in range(start, start + 1000)])
        assert all(o["duplicate"] is False for o in offsets)
    assert sum(herald.high_watermarks(topic)) == total
    sub = herald.subscribe(topic, lease_ms=60000, max_deliveries=5, backoff_base_ms=50, backoff_jitter=0.0)
    assert sub.stats()["depth"] == total

    lock = threading.Lock()
    delivery_counts: dict[int, list[int]] = defaultdict(list)  # id -> delivery_count of each hand-out
    acked: dict[int, int] = defaultdict(int)
    nacked: set[int] = set()
    errors: list[BaseException] = []
    done = threading.Event()
    deadline = time.monotonic() + 120

    def work(index: int) -> None:
        h = herald.fork()
        s = sub.on(h)
        try:
            while not done.is_set():
                assert time.monotonic() < deadline, f"worker {index}: not done after 120 s ({len(acked)} acked)"
                batch = s.receive(max_records=100, wait_ms=500)
                assert len(batch) <= 100, f"asked for 100, got {len(batch)}"
                nacked_here = False
                to_ack: list[tuple[int, str]] = []
                for d in batch:
                    record_id = d["value"]["id"]
                    with lock:
                        delivery_counts[record_id].append(d["delivery_count"])
                    # Worker 0 is flaky: it fails the first new record of each of its
                    # first few batches, once.
                    if index == 0 and not nacked_here and d["delivery_count"] == 1 and len(nacked) < fail_count:
                        assert s.nack_ok(d["receipt"], error="deliberate failure") is False
                        with lock:
                            nacked.add(record_id)
                        nacked_here = True
                        continue
                    to_ack.append((record_id, d["receipt"]))
                if to_ack:
                    body = s.ack([r for _, r in to_ack])
                    assert body == {"acked": len(to_ack), "failed": []}, f"worker {index}: {body}"
                    with lock:
                        for record_id, _ in to_ack:
                            acked[record_id] += 1
                        if len(acked) == total:
                            done.set()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
            errors.append(e)
            done.set()
        finally:
            h.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline + 30 - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a worker is stuck"
    if errors:
        raise errors[0]

    assert len(nacked) == fail_count, nacked
    assert set(acked) == set(range(total)), f"{total - len(acked)} records never acked"
    assert all(n == 1 for n in acked.values()), {i: n for i, n in acked.items() if n != 1}
    redelivered = {i for i, counts in delivery_counts.items() if len(counts) > 1}
    assert redelivered == nacked, f"duplicates beyond the deliberate failures: {sorted(redelivered - nacked)[:20]}"
    assert all(delivery_counts[i] == [1, 2] for i in nacked), {i: delivery_counts[i] for i in nacked}
    assert sum(len(c) for c in delivery_counts.values()) == total + fail_count
    stats = sub.stats()
    assert stats == {**stats, "depth": 0, "in_flight": 0, "delayed": 0, "dead_lettered": 0,
                     "redeliveries": fail_count, "expired_leases": 0}, stats
    assert sub.receive(max_records=100, wait_ms=200) == []


def test_a_delayed_record_is_not_delivered_before_its_time(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, lease_ms=30000)
    deliver_at = _now_ms() + 1500
    # The delayed record comes first in the log, so offset order alone would hand it out.
    herald.publish(topic, [{"key": "later", "value": {"when": "later"}, "deliver_at": deliver_at},
                           {"key": "now", "value": {"when": "now"}}])
    got = sub.receive(max_records=10, wait_ms=0)
    assert [d["key"] for d in got] == ["now"], f"only the undelayed record is ready: {got}"
    sub.ack_all(got)
    stats = sub.stats()
    if _now_ms() < deliver_at - CLOCK_TOLERANCE_MS:
        assert (stats["delayed"], stats["depth"], stats["in_flight"]) == (1, 0, 0), stats

    late = sub.receive_until(1, timeout_s=15)
    arrived_ms = _now_ms()
    assert [d["key"] for d in late] == ["later"]
    assert arrived_ms >= deliver_at - CLOCK_TOLERANCE_MS, \
        f"delivered {deliver_at - arrived_ms} ms before its deliver_at"
    assert late[0]["delivery_count"] == 1 and late[0]["value"] == {"when": "later"}
    assert late[0]["headers"].get("herald-deliver-at") == str(deliver_at), late[0]["headers"]
    sub.ack_all(late)
    stats = sub.stats()
    assert (stats["delayed"], stats["depth"], stats["in_flight"], stats["bad_deliver_at"]) == (0, 0, 0, 0), stats

    # A deliver-at header that is not a number is delivered at once and counted.
    herald.publish(topic, [{"key": "bad", "value": 1, "headers": {"herald-deliver-at": "soon"}}])
    [bad] = sub.receive_until(1, timeout_s=5)
    assert bad["key"] == "bad"
    sub.ack_all([bad])
    assert sub.stats()["bad_deliver_at"] == 1

    # delay_ms counts from when the broker took the record.
    sent_ms = _now_ms()
    herald.publish(topic, [{"key": "relative", "value": 2, "delay_ms": 1200}])
    assert sub.receive(max_records=10, wait_ms=0) == [] or _now_ms() >= sent_ms + 1200 - CLOCK_TOLERANCE_MS
    [relative] = sub.receive_until(1, timeout_s=15)
    assert _now_ms() >= sent_ms + 1200 - CLOCK_TOLERANCE_MS
    assert int(relative["headers"]["herald-deliver-at"]) >= sent_ms + 1200
    sub.ack_all([relative])


def test_restart_mid_lease_loses_nothing_and_redelivers_nothing_acked(broker, herald):
    topic = herald.create_topic(1)
    lease_ms = 2000
    settings = {"lease_ms": lease_ms, "max_deliveries": 3, "backoff_base_ms": 50, "backoff_factor": 3.0,
                "backoff_max_ms": 60000, "backoff_jitter": 0.0, "max_unacked": 500, "ordered_by_key": False}
    sub = herald.subscribe(topic, **settings)
    before = sub.detail()
    herald.publish(topic, [{"key": f"k{i}", "value": {"id": i}} for i in range(20)])

    leased_at = time.monotonic()
    first = sub.receive_until(10, max_records=10)
    assert len(first) == 10 and all(d["delivery_count"] == 1 for d in first), first
    acked = {d["value"]["id"] for d in first[::2]}
    unacked = {d["value"]["id"] for d in first[1::2]}
    sub.ack_all(first[::2])

    assert broker.restart() == 0, broker.stderr_tail()
    herald.reconnect()

    after = sub.detail()
    assert (after["settings"], after["dead_letter_topic"]) == (before["settings"], before["dead_letter_topic"])
    assert after["settings"] == {**DEFAULT_SETTINGS, **settings}

    seen: dict[int, dict] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 15:
        assert time.monotonic() < deadline, f"after the restart only {sorted(seen)} came back"
        batch = sub.receive(max_records=20, wait_ms=3000)
        arrived = time.monotonic()
        for d in batch:
            record_id = d["value"]["id"]
            assert record_id not in acked, f"record {record_id} was acked before the restart, delivered again: {d}"
            assert record_id not in seen, f"record {record_id} delivered twice after the restart"
            seen[record_id] = {**d, "arrived": arrived}
        # Acked at once, so no lease runs out while the test waits for the others.
        if batch:
            sub.ack_all(batch)
    rest = set(range(20)) - acked - unacked
    assert set(seen) == unacked | rest
    for i in unacked:
        assert seen[i]["delivery_count"] == 2, seen[i]
        assert seen[i]["arrived"] - leased_at >= lease_ms / 1000 - CLOCK_TOLERANCE_S, \
            f"record {i} came back {seen[i]['arrived'] - leased_at:.3f}s after its lease began, lease {lease_ms} ms"
    assert all(seen[i]["delivery_count"] == 1 for i in rest)
    assert len(acked | set(seen)) == 20

    assert sub.receive(max_records=20, wait_ms=300) == []
    stats = sub.stats()
    assert stats == {**stats, "depth": 0, "in_flight": 0, "delayed": 0, "dead_lettered": 0}, stats
    assert stats["expired_leases"] == 5, stats


def test_kill_9_mid_work_loses_nothing_and_redelivers_nothing_acked(broker, herald):
    """A worker acks as fast as it can while the broker is killed (SIGKILL) at random
    moments, five times. An ack the broker answered is durable: that record is never
    delivered again. Nothing is lost: every record is acked in the end. An ack whose
    answer the kill cut off may or may not have landed: that record may come back
    (at least once) or not, but it is never left undone."""
    import random

    rng = random.Random(20261201)
    topic = herald.create_topic(2)
    sub = herald.subscribe(topic, lease_ms=1500, max_deliveries=1000, backoff_base_ms=10,
                           backoff_jitter=0.0)
    # Enough work that at least 3 of the 5 kills (0.2-0.6 s apart) land mid-work.
    total = 4000
    for start in range(0, total, 100):
        herald.publish(topic, [{"key": f"k{i}", "value": {"id": i}} for i in range(start, start + 100)])
    confirmed: set[int] = set()
    in_doubt: set[int] = set()
    delivered_after_ack: list[dict] = []

    def work() -> None:
        """Receive and ack until the connection breaks (the kill) or nothing is left."""
        while True:
            response = herald.request("POST", f"{sub.path}/receive", json={"max_records": 7, "wait_ms": 200})
            assert response.status_code == 200, _describe(response)
            batch = response.json()["records"]
            if not batch:
                return
            delivered_after_ack.extend(d for d in batch if d["value"]["id"] in confirmed)
            ids = {d["value"]["id"] for d in batch}
            in_doubt.update(ids)
            response = herald.request("POST", f"{sub.path}/ack",
                                      json={"receipts": [d["receipt"] for d in batch]})
            assert response.status_code == 200, _describe(response)
            body = response.json()
            # A failure here can only be a lease that ran out.
            assert all(f["error"] in ("stale_receipt", "not_leased") for f in body["failed"]), body
            failed = {f["receipt"] for f in body["failed"]}
            confirmed.update(d["value"]["id"] for d in batch if d["receipt"] not in failed)
            in_doubt.difference_update(ids)

    kills = interrupted = 0
    for _ in range(5):
        killer = threading.Timer(rng.uniform(0.2, 0.6), broker.kill)
        killer.start()
        try:
            work()
        except httpx.TransportError:
            interrupted += 1
        killer.join()  # if the work ran out first, the kill still comes, between calls
        assert not broker.is_running()
        kills += 1
        broker.start()
        herald.reconnect()
        assert not delivered_after_ack, f"acked records delivered again: {delivered_after_ack[:5]}"
    assert kills == 5 and interrupted >= 3, (kills, interrupted)

    # Drain: what was leased at a kill comes back once its lease (1.5 s) runs out.
    deadline = time.monotonic() + 60
    while True:
        work()
        stats = sub.stats()
        if (stats["depth"], stats["in_flight"], stats["delayed"]) == (0, 0, 0):
            break
        assert time.monotonic() < deadline, f"records never finished: {stats}"
        time.sleep(0.1)
    assert not delivered_after_ack, f"acked records delivered again: {delivered_after_ack[:5]}"
    # Nothing lost: every record was acked with an answer, or its ack was cut off by a
    # kill and it did not come back because that ack had landed.
    assert set(range(total)) - confirmed <= in_doubt, sorted(set(range(total)) - confirmed - in_doubt)[:20]
    assert stats["dead_lettered"] == 0, stats
    assert sub.receive(max_records=100, wait_ms=2000) == []


def test_redrive_moves_dead_letters_back_as_new_work(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, max_deliveries=1, backoff_jitter=0.0)
    originals = [
        {"key": "a", "value": {"n": 1}, "headers": {"source": "checkout", "attempt": "x"}},
        {"key": "b", "value": "plain text", "value_encoding": "string", "headers": {"source": "billing"}},
        {"value": {"n": 3}},
    ]
    herald.publish(topic, originals)
    first = sub.receive_until(3)
    assert sorted(d["offset"] for d in first) == [0, 1, 2]
    for d in first:
        assert sub.nack_ok(d["receipt"], error=f"bad {d['offset']}") is True
    letters = sub.dead_letters()["records"]
    assert sorted(int(r["headers"]["herald-dlq-source-offset"]) for r in letters) == [0, 1, 2]
    assert sub.stats()["dead_letter_depth"] == 3

    assert sub.redrive() == 3
    assert sub.dead_letters()["records"] == []
    stats = sub.stats()
    assert (stats["dead_letter_depth"], stats["dead_lettered"]) == (0, 3), stats

    again = sub.receive_until(3)
    # New records at the end of the source log, handed out as new work.
    assert sorted(d["offset"] for d in again) == [3, 4, 5]
    assert all(d["delivery_count"] == 1 and d["partition"] == 0 for d in again)
    old = {d["key"]: d for d in first}
    for d in again:
        o = old[d["key"]]
        assert (d["key_encoding"], d["value"], d["value_encoding"], d["headers"]) == \
               (o["key_encoding"], o["value"], o["value_encoding"], o["headers"]), (d, o)
        assert not any(h.startswith("herald-dlq-") for h in d["headers"]), d["headers"]
    assert {d["key"]: d["headers"] for d in again} == {"a": {"source": "checkout", "attempt": "x"},
                                                       "b": {"source": "billing"}, None: {}}
    assert {d["key"]: d["value"] for d in again} == {"a": {"n": 1}, "b": "plain text", None: {"n": 3}}
    sub.ack_all(again)

    assert sub.redrive() == 0, "a second redrive has nothing left to move"
    assert herald.high_watermarks(topic) == [6]
    assert sub.receive(max_records=10, wait_ms=300) == []


def test_publish_dedup_by_message_id_within_the_window(herald):
    topic = herald.create_topic(3)
    record = {"key": "user-1", "value": {"order": 1}, "message_id": "msg-1"}
    [first] = herald.publish(topic, [record])
    assert first["duplicate"] is False
    [second] = herald.publish(topic, [{**record, "value": {"order": "changed"}}])
    assert second == {"partition": first["partition"], "offset": first["offset"], "duplicate": True}
    assert sum(herald.high_watermarks(topic)) == 1, "the duplicate was appended"

    # Another id is new; the same id twice in one request is stored once.
    [other] = herald.publish(topic, [{**record, "message_id": "msg-2"}])
    assert other["duplicate"] is False and (other["partition"], other["offset"]) != \
           (first["partition"], first["offset"])
    pair = herald.publish(topic, [{"key": "user-2", "value": 1, "message_id": "msg-3"},
                                  {"key": "user-2", "value": 2, "message_id": "msg-3"}])
    assert pair[0]["duplicate"] is False
    assert pair[1] == {"partition": pair[0]["partition"], "offset": pair[0]["offset"], "duplicate": True}
    assert sum(herald.high_watermarks(topic)) == 3

    # Outside the window the id is new again.
    herald.publish(topic, [{"key": "user-3", "value": "w1", "message_id": "msg-w"}], dedup_window_ms=300)
    time.sleep(0.6)
    [later] = herald.publish(topic, [{"key": "user-3", "value": "w2", "message_id": "msg-w"}],
                             dedup_window_ms=300)
    assert later["duplicate"] is False
    assert sum(herald.high_watermarks(topic)) == 5

    sub = herald.subscribe(topic)
    got = sub.receive_until(5)
    assert sorted(str(d["value"]) for d in got) == sorted(["{'order': 1}", "{'order': 1}", "1", "w1", "w2"])
    assert sorted(d["headers"]["herald-message-id"] for d in got) == ["msg-1", "msg-2", "msg-3", "msg-w", "msg-w"]
    assert sub.receive(max_records=10, wait_ms=200) == []


def test_bad_requests_get_json_4xx_errors(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, lease_ms=30000)
    other = herald.subscribe(topic, "other", lease_ms=30000)
    base = f"/topics/{topic}/subscriptions"
    missing_topic = unique("nosuch")
    herald.publish(topic, [{"value": {"n": i}} for i in range(3)])
    post = lambda path, body: herald.request("POST", path, content=body,  # noqa: E731
                                             headers={"content-type": "application/json"})

    # Unknown topics and subscriptions.
    _error(herald.request("POST", f"/topics/{missing_topic}/subscriptions", json={"name": "w"}), 404, "unknown_topic")
    for method, suffix, body in [("GET", "", None), ("PATCH", "", {"lease_ms": 5}), ("DELETE", "", None),
                                 ("POST", "/receive", {}), ("POST", "/ack", {"receipts": ["x"]}),
                                 ("GET", "/dead-letters", None), ("POST", "/redrive", None)]:
        _error(herald.request(method, f"{base}/nosuch{suffix}", json=body), 404, "unknown_subscription")
        _error(herald.request(method, f"/topics/{missing_topic}/subscriptions/w{suffix}", json=body), 404,
               ("unknown_topic", "unknown_subscription"))
    _error(herald.request("POST", f"{base}/nosuch/nack", json={"receipt": f"v1:{topic}:nosuch:0:0:1"}), 404,
           "unknown_subscription")

    # Create: duplicate, invalid settings and names, malformed bodies.
    _error(herald.request("POST", base, json={"name": "workers"}), 409, "subscription_exists")
    for bad in [{"lease_ms": 0}, {"lease_ms": 43_200_001}, {"max_deliveries": 0}, {"backoff_factor": 0.5},
                {"backoff_jitter": 1.5}, {"backoff_base_ms": 5000, "backoff_max_ms": 100}, {"max_unacked": 0},
                {"max_unacked": 100_001}]:
        _error(herald.request("POST", base, json={"name": unique("w"), **bad}), 400, "invalid_subscription")
    for name in ["bad name!", "", "a:b", "x" * 250]:
        _error(herald.request("POST", base, json={"name": name}), 400, "invalid_subscription")
    _error(post(base, "{not json"), 400, "invalid_json")
    for body in ['{"lease_ms": 5}', '{"name": "w", "lease_ms": "soon"}', '{"name": "w", "lease_ms": -5}',
                 '{"name": "w", "start": "middle"}']:
        _error(post(base, body), 400, ("invalid_json", "invalid_subscription"))
    # Invalid settings in a PATCH change nothing.
    _error(herald.request("PATCH", sub.path, json={"lease_ms": 0}), 400, "invalid_subscription")
    _error(herald.request("PATCH", sub.path, json={"backoff_factor": 0.5}), 400, "invalid_subscription")
    assert sub.detail()["settings"]["lease_ms"] == 30000
    names = [s["name"] for s in herald.ok("GET", "/subscriptions") if s["topic"] == topic]
    assert names == ["other", "workers"], f"a refused create left something behind: {names}"

    # Receive limits.
    for body in [{"max_records": 0}, {"max_records": 5000}, {"max_records": 1001}, {"wait_ms": 20001},
                 {"wait_ms": -1}]:
        _error(herald.request("POST", f"{sub.path}/receive", json=body), 400)
    _error(post(f"{sub.path}/receive", "{oops"), 400, "invalid_json")
    # An empty body takes the defaults (one record, no wait).
    empty = herald.request("POST", f"{sub.path}/receive", content=b"")
    assert empty.status_code == 200, _describe(empty)
    [leased] = empty.json()["records"]
    [theirs] = other.receive()

    # Receipts: garbage, another subscription's, empty or oversized lists, bad bodies.
    for route in ("nack", "release", "extend"):
        _error(herald.request("POST", f"{sub.path}/{route}", json={"receipt": "not-a-receipt"}), 400,
               "invalid_receipt")
        _error(herald.request("POST", f"{sub.path}/{route}", json={"receipt": theirs["receipt"]}), 400,
               "invalid_receipt")
        _error(post(f"{sub.path}/{route}", "{oops"), 400, "invalid_json")
        _error(herald.request("POST", f"{sub.path}/{route}", json={}), 400, ("invalid_json", "invalid_receipt"))
    mixed = sub.ack(["not-a-receipt", theirs["receipt"], f"v1:{unique('t')}:workers:0:0:1"])
    assert mixed["acked"] == 0 and [f["error"] for f in mixed["failed"]] == ["invalid_receipt"] * 3, mixed
    _error(herald.request("POST", f"{sub.path}/ack", json={"receipts": []}), 400)
    _error(herald.request("POST", f"{sub.path}/ack", json={"receipts": ["x"] * 1001}), 400)
    _error(post(f"{sub.path}/ack", "{oops"), 400, "invalid_json")
    _error(herald.request("POST", f"{sub.path}/ack", json={"receipt": leased["receipt"]}), 400, "invalid_json")
    _error(herald.request("POST", f"{sub.path}/extend", json={"receipt": leased["receipt"], "lease_ms": 0}),
           400)
    _error(herald.request("GET", f"{sub.path}/dead-letters", params={"max_records": 0}), 400)

    # None of that touched the leases: both records are still leased to their owners.
    assert sub.ack([leased["receipt"]]) == {"acked": 1, "failed": []}
    assert other.ack([theirs["receipt"]]) == {"acked": 1, "failed": []}
    # Settling a finished record is a conflict, not a server error.
    _error(sub.nack(leased["receipt"], "late"), 409, "not_leased")
    _error(herald.request("POST", f"{sub.path}/release", json={"receipt": leased["receipt"]}), 409, "not_leased")
    _error(herald.request("POST", f"{sub.path}/extend", json={"receipt": leased["receipt"]}), 409, "not_leased")
    # A receipt for an offset this subscription never handed out.
    never = f"v1:{topic}:workers:0:2:1"
    assert sub.ack([never])["failed"][0]["error"] in ("not_leased", "invalid_receipt")
    assert herald.ok("GET", "/health") == {"status": "ok"}



def test_metrics_show_each_subscriptions_figures(herald):
    topic = herald.create_topic(1)
    sub = herald.subscribe(topic, max_deliveries=1, lease_ms=60000, backoff_jitter=0.0)
    herald.publish(topic, [{"value": {"n": i}} for i in range(5)])
    herald.publish(topic, [{"value": {"n": "later"}, "deliver_at": _now_ms() + 3_600_000}])
    herald.subscribe(topic, "idle", start="latest")  # nothing for it yet

    leased = sub.receive(max_records=2)
    assert sorted(d["offset"] for d in leased) == [0, 1]
    dead = next(d for d in leased if d["offset"] == 0)
    assert sub.nack_ok(dead["receipt"], "bad") is True

    expected = {  # offsets 2-4 ready, 1 leased, 5 delayed an hour, 0 dead-lettered
        "herald_subscription_depth": 3,
        "herald_subscription_in_flight": 1,
        "herald_subscription_delayed": 1,
        "herald_subscription_dead_lettered_total": 1,
        "herald_subscription_redeliveries_total": 0,
        "herald_subscription_expired_leases_total": 0,
        "herald_subscription_dlq_depth": 1,
    }
    stats = sub.stats()
    assert (stats["depth"], stats["in_flight"], stats["delayed"], stats["dead_lettered"],
            stats["dead_letter_depth"]) == (3, 1, 1, 1, 1), stats
    metrics = herald.metrics()
    labels = (("subscription", "workers"), ("topic", topic))
    got = {name: metrics.get((name, labels)) for name in expected}
    assert got == expected, f"metrics {got} != what the test did {expected}"
    idle_labels = (("subscription", "idle"), ("topic", topic))
    assert metrics.get(("herald_subscription_depth", idle_labels)) == 0
    assert metrics.get(("herald_subscription_in_flight", idle_labels)) == 0

    # They move with the work.
    sub.ack_all([d for d in leased if d["offset"] == 1])
    assert sub.redrive() == 1
    metrics = herald.metrics()
    assert metrics.get(("herald_subscription_in_flight", labels)) == 0
    assert metrics.get(("herald_subscription_dlq_depth", labels)) == 0
    assert metrics.get(("herald_subscription_depth", labels)) == 4  # 2-4 and the redriven copy
    assert metrics.get(("herald_subscription_dead_lettered_total", labels)) == 1
    # The idle subscription (start=latest) also sees the redriven record as new work.
    assert metrics.get(("herald_subscription_depth", idle_labels)) == 1


def test_subscription_routes_hold_their_openapi_contract_under_schemathesis(herald, tmp_path):
    """Schemathesis on the receive/ack/nack/release/extend/dead-letters/redrive routes of
    one real subscription (path parameters pinned, so requests reach the queue instead
    of a 404): no 5xx, every answer matches the OpenAPI document."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    topic = herald.create_topic(2, prefix="st-queue")
    herald.publish(topic, [{"key": f"k{i % 7}", "value": {"n": i}} for i in range(200)])
    # Leases of 1 ms and no backoff keep records cycling back, so a long-poll receive
    # finds work at once instead of waiting out its wait_ms; enough deliveries that
    # nothing is dead-lettered by accident (the DLQ routes get their own record below).
    herald.subscribe(topic, name="st", lease_ms=1, backoff_base_ms=0, backoff_max_ms=0,
                     max_deliveries=1_000_000)
    # A dead letter for the DLQ routes to list and redrive (as the broker writes them).
    herald.ok("POST", "/topics", 201, json={"name": f"{topic}.st.dlq", "partitions": 1})
    herald.publish(f"{topic}.st.dlq", [{"key": "k0", "value": {"n": -1}, "headers": {
        "herald-dlq-source-topic": topic, "herald-dlq-source-partition": "1",
        "herald-dlq-last-error": "boom"}}])
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.topic" = "{topic}"\n"path.name" = "st"\n')
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "--config-file", str(config), "run",
         f"{herald.base_url}/openapi.json", "--checks", "all", "--max-examples", "25",
         "--no-color", "--seed", "1", "--request-timeout", "60",
         "--include-path-regex", "^/topics/\\{topic\\}/subscriptions/\\{name\\}/",
         # As in test_http.py: schema-valid requests the API rightly refuses (a receipt
         # that is not one) cannot be expressed in a schema.
         "--exclude-checks", "positive_data_acceptance"],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")},
    )
    assert result.returncode == 0, f"schemathesis found problems:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert "Operations:       7 selected" in result.stdout, result.stdout[-3000:]


def test_a_subscription_and_kafka_consumers_read_the_same_records(herald, broker):
    """Acking in a subscription removes nothing: a Kafka consumer group reads every record
    of the topic afterwards, byte for byte, and Kafka producers' records with a
    herald-deliver-at header are delayed for the subscription like HTTP ones."""
    import json as jsonlib

    from confluent_kafka import Consumer, Producer

    topic = herald.create_topic(2, prefix="q-kafka")
    sub = herald.subscribe(topic, name="workers")
    herald.publish(topic, [{"key": f"k{i}", "value": {"n": i}} for i in range(20)])
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    later = _now_ms() + 1500
    producer.produce(topic, key=b"delayed", value=b'{"n": 20}',
                     headers=[("herald-deliver-at", str(later).encode())])
    assert producer.flush(30) == 0
    got = sub.receive_until(20)
    assert sorted(d["value"]["n"] for d in got) == list(range(20)), got
    sub.ack_all(got)
    [delayed] = sub.receive_until(1, timeout_s=20)
    assert _now_ms() >= later - CLOCK_TOLERANCE_MS and delayed["key"] == "delayed", delayed
    sub.ack_all([delayed])

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values = []
    deadline = time.monotonic() + 60
    while len(values) < 21 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            values.append(jsonlib.loads(message.value())["n"])
    consumer.close()
    assert sorted(values) == list(range(21)), values
