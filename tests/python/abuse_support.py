"""Helpers for test_abuse.py: Kafka requests encoded by hand (Fetch v4, Produce v7,
ApiVersions v0, Metadata v1, a RecordBatch v2 with a streamed zstd payload and its
CRC-32C), the broker's resident memory, its /metrics, and an ordinary client's
produce-and-consume round trip.

Everything here talks to 127.0.0.1 only and has a deadline.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import threading
import time

import httpx
import zstandard
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from herald_support import create_topic, produce_and_confirm, read_partitions, unique

MiB = 1 << 20
KiB = 1 << 10

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_VERSIONS = 18

# Kafka error codes the bomb tests accept.
MESSAGE_TOO_LARGE = 10
INVALID_RECORD = 87
CORRUPT_MESSAGE = 2

COMPRESSION_ZSTD = 4


# ----------------------------------------------------------------------------- wire


def kstring(s: str | bytes | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">h", len(b)) + b


def frame(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
          client_id: bytes = b"abuse-test") -> bytes:
    """A request with a v1 (non-flexible) header: size, key, version, correlation id,
    nullable client id, then the body."""
    payload = struct.pack(">hhi", api_key, api_version, correlation_id) + kstring(client_id) + body
    return struct.pack(">i", len(payload)) + payload


def fetch_v4(correlation_id: int, topic: str, partition: int = 0, offset: int = 0,
             max_bytes: int = 50 * MiB, partition_max_bytes: int = 50 * MiB,
             max_wait_ms: int = 0, min_bytes: int = 1, isolation_level: int = 0) -> bytes:
    body = struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, isolation_level)
    body += struct.pack(">i", 1) + kstring(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, partition_max_bytes)
    return frame(API_FETCH, 4, correlation_id, body)


def api_versions_v0(correlation_id: int) -> bytes:
    return frame(API_VERSIONS, 0, correlation_id)


def metadata_v1(correlation_id: int, topics: list[str] | None = None) -> bytes:
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(kstring(t) for t in topics)
    return frame(API_METADATA, 1, correlation_id, body)


def produce_v7(correlation_id: int, topic: str, partition: int, records: bytes,
               acks: int = -1, timeout_ms: int = 30000) -> bytes:
    """Produce v7 (the first version a Kafka broker takes zstd in; same layout as v3)."""
    body = kstring(None) + struct.pack(">hi", acks, timeout_ms)
    body += struct.pack(">i", 1) + kstring(topic)
    body += struct.pack(">i", 1) + struct.pack(">i", partition) + struct.pack(">i", len(records)) + records
    return frame(API_PRODUCE, 7, correlation_id, body)


class Reader:
    """Reads whole bytes off a socket, with the socket's own timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def exact(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self.sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ConnectionError(f"connection closed after {got} of {n} bytes")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def response(self, size_max: int = 256 * MiB) -> tuple[int, bytes]:
        """One response frame: (correlation id, body after the v0 response header)."""
        (size,) = struct.unpack(">i", self.exact(4))
        assert 4 <= size <= size_max, f"implausible response size {size}"
        payload = self.exact(size)
        return struct.unpack(">i", payload[:4])[0], payload[4:]


class Cursor:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def bytes_(self) -> bytes | None:
        n = self.take(">i")
        if n < 0:
            return None
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


def parse_fetch_v4(body: bytes) -> list[dict]:
    """[{topic, partition, error_code, high_watermark, records_bytes}] of a Fetch v4 response."""
    c = Cursor(body)
    c.take(">i")  # throttle_time_ms
    out = []
    for _ in range(c.take(">i")):
        topic = c.string()
        for _ in range(c.take(">i")):
            partition, error_code, high, _lso = c.take(">ihqq")
            aborted = c.take(">i")
            for _ in range(max(aborted, 0)):
                c.take(">qq")
            records = c.bytes_()
            out.append({"topic": topic, "partition": partition, "error_code": error_code,
                        "high_watermark": high, "records_bytes": len(records or b"")})
    return out


def parse_produce_v7(body: bytes) -> list[dict]:
    """[{topic, partition, error_code, base_offset}] of a Produce v3..v7 response."""
    c = Cursor(body)
    out = []
    for _ in range(c.take(">i")):
        topic = c.string()
        for _ in range(c.take(">i")):
            partition, error_code, base_offset, _append_time, _log_start = c.take(">ihqqq")
            out.append({"topic": topic, "partition": partition, "error_code": error_code,
                        "base_offset": base_offset})
    return out


def parse_api_versions_v0(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    c = Cursor(body)
    error_code = c.take(">h")
    apis = {}
    for _ in range(c.take(">i")):
        key, lo, hi = c.take(">hhh")
        apis[key] = (lo, hi)
    return error_code, apis


def connect(broker, port: int | None = None, rcvbuf: int | None = None, timeout_s: float = 10.0) -> socket.socket:
    """A TCP connection to the broker's Kafka port (or `port`) on 127.0.0.1; `rcvbuf`
    is set before connecting so the window the kernel offers stays small."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout_s)
    s.connect((broker.host, port or broker.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send_some(sock: socket.socket, data: bytes, timeout_s: float) -> int:
    """Send as much of `data` as the peer takes within `timeout_s`; returns the bytes
    sent. A broker that stops reading a socket (back-pressure) is not an error here."""
    sock.settimeout(0.2)
    sent, deadline = 0, time.monotonic() + timeout_s
    view = memoryview(data)
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(view[sent:sent + 65536])
        except (socket.timeout, BlockingIOError):
            continue
        except OSError:
            break
    return sent


def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """True once the peer closed (EOF or reset) within `timeout_s`; data is discarded."""
    deadline = time.monotonic() + timeout_s
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# ---------------------------------------------------------------------- record batch


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def varint(n: int) -> bytes:
    """Zig-zag varint (Kafka record fields)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def record_head(offset_delta: int, key: bytes | None, value_len: int) -> bytes:
    """A record up to (not including) its value bytes; the caller appends `value_len`
    value bytes and then `b"\\x00"` (no headers)."""
    body = b"\x00" + varint(0) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(value_len)
    length = len(body) + value_len + 1
    return varint(length) + body


def zstd_zero_records(count: int, value_bytes: int, keys: list[bytes] | None = None,
                      chunk: int = 4 * MiB) -> bytes:
    """`count` records of `value_bytes` zero bytes each, zstd-compressed as one stream,
    without ever holding the uncompressed bytes (one `chunk` of zeros at a time)."""
    zeros = bytes(min(chunk, max(value_bytes, 1)))
    comp = zstandard.ZstdCompressor(level=1).compressobj()
    out = []
    for i in range(count):
        out.append(comp.compress(record_head(i, keys[i] if keys else None, value_bytes)))
        left = value_bytes
        while left > 0:
            n = min(left, len(zeros))
            out.append(comp.compress(zeros[:n] if n < len(zeros) else zeros))
            left -= n
        out.append(comp.compress(b"\x00"))
    out.append(comp.flush())
    return b"".join(out)


def record_batch(records: bytes, count: int, compression: int = 0, timestamp_ms: int | None = None) -> bytes:
    """A RecordBatch v2 (magic 2) holding `count` records already encoded (and
    compressed as `compression` says) in `records`."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    after_crc = struct.pack(">hiqqqhii", compression, count - 1, ts, ts, -1, -1, -1, count) + records
    crc = crc32c(after_crc)
    # batch length counts everything after the length field itself.
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", 0, batch_length, 0, 2, crc) + after_crc


def plain_records(values: list[bytes], key: bytes | None = None) -> bytes:
    return b"".join(record_head(i, key, len(v)) + v + b"\x00" for i, v in enumerate(values))


def produce_raw(broker, topic: str, batch: bytes, timeout_s: float = 60.0) -> dict:
    """Send one Produce v7 with `batch` to partition 0 on a fresh connection and read
    the answer: {error_code, base_offset, ...}; a broker that closes the connection
    instead is {"closed": True}."""
    s = connect(broker, timeout_s=timeout_s)
    try:
        s.sendall(produce_v7(7, topic, 0, batch))
        try:
            corr, body = Reader(s).response()
        except (ConnectionError, OSError) as e:
            return {"closed": True, "error": repr(e)}
        assert corr == 7, corr
        (part,) = parse_produce_v7(body)
        return part
    finally:
        s.close()


# ---------------------------------------------------------------------- the broker


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit toward `want` (never above the hard limit);
    brokers started afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssWatch:
    """Samples the broker's RSS every `interval_s` in a thread, remembering the peak.
    If it ever passes `kill_above` the broker is killed (SIGKILL) at once: this machine
    is shared, and an unbounded broker must fail the test, not take the host down."""

    def __init__(self, broker, kill_above: int = 4096 * MiB, interval_s: float = 0.05):
        self.broker, self.kill_above, self.interval_s = broker, kill_above, interval_s
        self.pid = broker.proc.pid
        self.peak = self.start = rss_bytes(self.pid)
        self.killed_at: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    def __enter__(self) -> "RssWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = rss_bytes(self.pid)
            except (OSError, RuntimeError):
                return
            self.peak = max(self.peak, rss)
            if rss > self.kill_above:
                self.killed_at = rss
                self.broker.kill()
                return
            self._stop.wait(self.interval_s)

    def now(self) -> int:
        return rss_bytes(self.pid)

    def check(self) -> None:
        assert self.killed_at is None, (
            f"broker RSS reached {self.killed_at / MiB:.0f} MiB (> {self.kill_above / MiB:.0f} MiB); killed it")


def metrics(broker, timeout_s: float = 10.0) -> dict[str, float]:
    """/metrics as {sample name: value summed over its labels}."""
    response = httpx.get(f"{broker.http_url}/metrics", timeout=timeout_s)
    assert response.status_code == 200, response.text[:500]
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def wait_budget_free(broker, timeout_s: float = 15.0) -> dict[str, float]:
    """Wait until herald_memory_budget_used_bytes is 0; returns the last metrics."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, float] = {}
    while True:
        last = metrics(broker)
        assert "herald_memory_budget_used_bytes" in last, (
            "no herald_memory_budget_used_bytes in /metrics: "
            f"{sorted(k for k in last if 'memory' in k)}")
        if last["herald_memory_budget_used_bytes"] == 0:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"herald_memory_budget_used_bytes still {last['herald_memory_budget_used_bytes']:.0f} "
                f"{timeout_s}s after the abusive clients went away")
        time.sleep(0.2)


def fill_topic(broker, topic: str, total_bytes: int, message_bytes: int = 256 * KiB,
               timeout_s: float = 90.0) -> int:
    """Write about `total_bytes` of record values to partition 0 of `topic` quickly
    (confluent-kafka, large values, big batches; the topic is created here with a
    max.message.bytes that takes them). Returns the record count."""
    create_topic(broker.bootstrap, topic, 1, {"max.message.bytes": str(16 * MiB)})
    count = max(1, total_bytes // message_bytes)
    value = os.urandom(message_bytes)  # incompressible; the same for every record
    p = Producer({
        "bootstrap.servers": broker.bootstrap,
        "linger.ms": 20,
        "batch.size": 4 * MiB,
        "message.max.bytes": 8 * MiB,
        "queue.buffering.max.kbytes": 256 * 1024,
        "acks": "all",
    })
    produce_and_confirm(p, topic, ((None, value) for _ in range(count)), timeout_s=timeout_s, partition=0)
    return count


def round_trip(broker, records: int = 200, timeout_s: float = 60.0) -> float:
    """An ordinary confluent-kafka client: produce `records` to a new topic and read
    them all back. Returns the seconds it took; fails if it took over `timeout_s`."""
    start = time.monotonic()
    topic = unique("ordinary")
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                  "message.timeout.ms": int(timeout_s * 1000)})
    sent = [(f"k{i}".encode(), f"ordinary-{i}".encode()) for i in range(records)]
    produce_and_confirm(p, topic, sent, timeout_s=timeout_s)
    got = read_partitions(broker.bootstrap, topic, 1, timeout_s=timeout_s, expect_total=records)
    assert [(r.key, r.value) for r in got] == sent, f"read back {len(got)} records, not the {records} sent"
    elapsed = time.monotonic() - start
    assert elapsed < timeout_s, f"ordinary round trip of {records} records took {elapsed:.1f}s"
    return elapsed


class Background:
    """Run a function in a thread until `stop` is set; exceptions are kept and
    re-raised by join()."""

    def __init__(self, target, *args, name: str = "abuse"):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.result = None

        def run():
            try:
                self.result = target(self.stop, *args)
            except BaseException as e:  # noqa: BLE001 - re-raised in join
                self.error = e

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def join(self, timeout_s: float = 30.0):
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop within {timeout_s}s"
        if self.error is not None:
            raise self.error
        return self.result
