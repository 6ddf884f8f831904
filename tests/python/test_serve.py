"""`herald serve` as an operator runs it: settings from flags, HERALD_* variables
and a TOML file; clean shutdown on SIGTERM and SIGINT; a clear failure, not a
hang, when it cannot start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest
from confluent_kafka import KafkaError, Producer

from conftest import HERALD_BIN
from herald_support import admin, create_topic, unique

pytestmark = pytest.mark.timeout(120)


def _auto_create(bootstrap: str, topic: str):
    """Ask for metadata of `topic` the way a producer does (auto-creation allowed)."""
    p = Producer({"bootstrap.servers": bootstrap, "allow.auto.create.topics": True})
    return p.list_topics(topic=topic, timeout=10).topics[topic]


def test_default_partitions_from_environment(broker_factory):
    b = broker_factory(extra_env={"HERALD_DEFAULT_PARTITIONS": "5"})
    topic = unique("env-parts")
    meta = _auto_create(b.bootstrap, topic)
    assert meta.error is None
    assert sorted(meta.partitions) == [0, 1, 2, 3, 4]


def test_settings_from_toml_config_file(broker_factory, tmp_path):
    config = tmp_path / "herald.toml"
    config.write_text("default_partitions = 3\n")
    b = broker_factory(extra_args=["--config", str(config)])
    topic = unique("toml-parts")
    meta = _auto_create(b.bootstrap, topic)
    assert meta.error is None
    assert sorted(meta.partitions) == [0, 1, 2]


def test_auto_create_can_be_turned_off(broker_factory):
    b = broker_factory(extra_env={"HERALD_AUTO_CREATE_TOPICS": "false"})
    topic = unique("no-auto")
    meta = _auto_create(b.bootstrap, topic)
    assert meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert topic not in admin(b.bootstrap).list_topics(timeout=10).topics

    # Producing to it fails instead of creating it.
    p = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 5000,
                  "topic.metadata.propagation.max.ms": 1000})
    errors = []
    p.produce(topic, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(15)
    assert len(errors) == 1 and errors[0] is not None, "produce to a missing topic must fail"
    assert topic not in admin(b.bootstrap).list_topics(timeout=10).topics

    # Explicit creation still works.
    create_topic(b.bootstrap, topic, partitions=2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_down_cleanly(broker, sig):
    # Signal it as soon as the port accepts: the handlers are installed before the
    # listener is bound, so even a signal during start-up shuts down cleanly.
    broker.send_signal(sig)
    try:
        code = broker.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"herald still running 15 s after {sig.name}")
    assert code == 0, f"exit code {code} after {sig.name}:\n{broker.stderr_tail()}"
    # The port is released.
    with socket.socket() as s:
        s.bind(("127.0.0.1", broker.port))


def _serve_expecting_failure(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    try:
        return subprocess.run([str(HERALD_BIN), "serve", "--data-dir", str(tmp_path / "data"), *args],
                              capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`herald serve {' '.join(args)}` should fail at once, but kept running")


def test_port_in_use_fails_fast(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve_expecting_failure(tmp_path, "--kafka-listen", f"127.0.0.1:{port}")
    assert result.returncode != 0
    assert str(port) in result.stderr, f"the error should name the address:\n{result.stderr}"


def test_bad_listen_address_fails_fast(tmp_path):
    result = _serve_expecting_failure(tmp_path, "--kafka-listen", "not-an-address")
    assert result.returncode != 0
    assert result.stderr.strip()


def test_logs_written_to_a_file_have_no_colour_codes(broker):
    from herald_support import wait_until

    wait_until(lambda: b"herald is ready" in broker.log_path.read_bytes(), 10,
               "the broker never logged that it is ready")
    text = broker.log_path.read_bytes()
    assert b"\x1b[" not in text, "ANSI colour codes in a log that is not a terminal"


def test_log_format_json_writes_one_object_per_line(broker_factory):
    import json as _json

    from herald_support import wait_until

    b = broker_factory(extra_args=["--log-format", "json"])
    wait_until(lambda: "herald is ready" in b.log_path.read_text(), 10,
               "the broker never logged that it is ready")
    # The harness writes its own "===== start" line before each run.
    lines = [l for l in b.log_path.read_text().splitlines()
             if l.strip() and not l.startswith("=====")]
    assert lines, "no log lines"
    events = [_json.loads(l) for l in lines]
    ready = [e for e in events if e.get("fields", {}).get("message") == "herald is ready"]
    assert ready and ready[0]["level"] == "INFO", events


def test_http_on_the_kafka_port_is_told_where_http_is(broker):
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    text = answer.decode()
    assert text.startswith("HTTP/1.1 400"), text
    assert f"http://127.0.0.1:{broker.http_port}/" in text, text
    # The broker is still serving Kafka clients.
    admin(broker.bootstrap).list_topics(timeout=10)


def test_an_amqp_client_on_the_kafka_port_is_logged_as_such(broker):
    """The whole 8-byte protocol header is read before the answer (closing with bytes
    unread would reset the connection and lose it): sent at once, or in two pieces
    with nothing answered in between."""
    from herald_support import wait_until

    header = b"AMQP\x00\x00\x09\x01"

    def read_to_close(s: socket.socket) -> bytes:
        answer = b""
        while chunk := s.recv(4096):  # a reset raises: the answer must come whole
            answer += chunk
        return answer

    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        s.sendall(header)
        answer = read_to_close(s)
    # An AMQP server's answer to a header it will not serve: its version, then a close.
    assert answer == header, answer

    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        s.sendall(header[:4])
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            early = s.recv(4096)
            raise AssertionError(f"answered after half the header: {early!r}")
        s.settimeout(10)
        s.sendall(header[4:])
        answer = read_to_close(s)
    assert answer == header, answer
    line = f"an AMQP client connected to the Kafka port; AMQP 0-9-1 is served at 127.0.0.1:{broker.amqp_port}"
    wait_until(lambda: line in broker.log_path.read_text(), 10,
               f"the AMQP client was not logged with where AMQP is: {line!r}")
