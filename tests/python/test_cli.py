"""The `herald` CLI client subcommands, end to end against a running broker.
What the CLI does is cross-checked with confluent-kafka, and the other way round."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from conftest import HERALD_BIN
from herald_support import admin, create_topic, produce_and_confirm, read_partitions, unique, wait_until

pytestmark = pytest.mark.timeout(120)


def herald(broker, *args, stdin: str | None = None, env_bootstrap: bool = False,
           timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    argv = [str(HERALD_BIN), *args]
    if env_bootstrap:
        env["HERALD_BOOTSTRAP"] = broker.bootstrap
    else:
        argv += ["--bootstrap", broker.bootstrap]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=timeout_s)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"`{' '.join(result.args)}` exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result.stdout


def test_topics_create_list_describe_delete(broker):
    topic = unique("cli-topic")
    ok(herald(broker, "topics", "create", topic, "--partitions", "3", "--config", "retention.ms=123456789"))

    md = admin(broker.bootstrap).list_topics(timeout=10)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    client = admin(broker.bootstrap)
    [res] = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    assert res.result(timeout=20)["retention.ms"].value == "123456789"

    other = unique("cli-other")
    create_topic(broker.bootstrap, other, partitions=1)
    listed = ok(herald(broker, "topics", "list")).split()
    assert topic in listed and other in listed

    described = ok(herald(broker, "topics", "describe", topic))
    assert topic in described
    assert "123456789" in described, "describe should show the topic's non-default config"
    # Either a partition count or one row per partition.
    per_partition_rows = [line for line in described.splitlines()
                          if re.search(r"(?i)\bpartition\b\W*\d", line)]
    assert re.search(r"(?i)partitions?\W*3\b", described) or len(per_partition_rows) >= 3, described

    missing = herald(broker, "topics", "describe", unique("no-such-topic"))
    assert missing.returncode != 0, "describing a missing topic should fail"

    again = herald(broker, "topics", "create", topic, "--partitions", "3")
    assert again.returncode != 0, "creating an existing topic should fail"
    assert again.stderr.strip(), "and say why on stderr"

    ok(herald(broker, "topics", "delete", topic))
    wait_until(lambda: topic not in admin(broker.bootstrap).list_topics(timeout=10).topics, 10,
               "topic deleted by the CLI is gone")
    assert topic not in ok(herald(broker, "topics", "list")).split()


def test_bootstrap_from_environment(broker):
    topic = unique("cli-env")
    ok(herald(broker, "topics", "create", topic, "--partitions", "1", env_bootstrap=True))
    assert topic in ok(herald(broker, "topics", "list", env_bootstrap=True)).split()


def test_produce_lines_with_keys_and_headers(broker):
    topic = unique("cli-produce")
    create_topic(broker.bootstrap, topic, partitions=1)
    lines = ["user-1:OrderPlaced 1", "user-2:OrderPlaced:with:colons", "user-1:OrderShipped 1"]
    ok(herald(broker, "produce", topic, "--key-separator", ":", "--header", "source=cli",
              "--header", "trace=abc", stdin="\n".join(lines) + "\n"))
    records = read_partitions(broker.bootstrap, topic, 1, expect_total=3)
    assert [(r.key, r.value) for r in records] == [
        (b"user-1", b"OrderPlaced 1"),
        (b"user-2", b"OrderPlaced:with:colons"),  # split at the first separator only
        (b"user-1", b"OrderShipped 1"),
    ]
    for r in records:
        assert r.headers == [("source", b"cli"), ("trace", b"abc")]


def test_produce_plain_lines(broker):
    topic = unique("cli-plain")
    create_topic(broker.bootstrap, topic, partitions=1)
    lines = [f'{{"event": "OrderPlaced", "n": {i}}}' for i in range(100)]
    ok(herald(broker, "produce", topic, stdin="\n".join(lines) + "\n"))
    records = read_partitions(broker.bootstrap, topic, 1, expect_total=100)
    assert [r.value.decode() for r in records] == lines
    assert all(r.key is None for r in records)


def test_consume_from_beginning_with_count(broker):
    topic = unique("cli-consume")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(None, f"event-{i}".encode()) for i in range(10)])
    out = ok(herald(broker, "consume", topic, "--from-beginning", "--count", "10"))
    assert out.splitlines() == [f"event-{i}" for i in range(10)]
    out = ok(herald(broker, "consume", topic, "--from-beginning", "--count", "3"))
    assert out.splitlines() == ["event-0", "event-1", "event-2"]


def test_consume_with_group_commits_and_groups_describe_shows_lag(broker):
    topic, group = unique("cli-group"), unique("cli-grp")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    produce_and_confirm(producer, topic, [(None, f"e{i}".encode()) for i in range(5)])

    out = ok(herald(broker, "consume", topic, "--group", group, "--from-beginning", "--count", "3"))
    assert out.splitlines() == ["e0", "e1", "e2"]

    # The group's position is committed: a plain Kafka client sees it...
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    [committed] = c.committed([TopicPartition(topic, 0)], timeout=10)
    c.close()
    assert committed.offset == 3

    # ...and the CLI lists and describes it: committed 3, end 5, lag 2.
    assert group in ok(herald(broker, "groups", "list")).split()
    described = ok(herald(broker, "groups", "describe", group))
    rows = [line for line in described.splitlines() if topic in line]
    assert rows, described
    numbers = [int(n) for n in re.findall(r"(?<![\w-])\d+(?![\w-])", rows[0].replace(topic, " "))]
    it = iter(numbers)
    assert all(n in it for n in (0, 3, 5, 2)), f"expected partition 0, committed 3, end 5, lag 2 in: {rows[0]!r}"

    # The next consume in the group resumes where the last one stopped.
    out = ok(herald(broker, "consume", topic, "--group", group, "--count", "2"))
    assert out.splitlines() == ["e3", "e4"]


def test_cli_errors_when_broker_unreachable():
    unreachable = subprocess.run(
        [str(HERALD_BIN), "topics", "list", "--bootstrap", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=90,
        env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")})
    assert unreachable.returncode != 0
    assert unreachable.stderr.strip()


def test_bench_produce_then_consume_reports_what_the_broker_stored(broker):
    import json

    topic = unique("cli-bench")
    out = ok(herald(broker, "bench", "produce", "--topic", topic, "--partitions", "3", "--producers", "2",
                    "--count", "3000", "--message-bytes", "100", "--batch-bytes", "1000", "--json"))
    produced = json.loads(out)
    # Whole batches of 10 records: 3000 exactly, all acknowledged, latencies measured.
    assert produced["records"] == 3000 and produced["errors"] == 0
    assert produced["bytes"] == 300_000
    assert 0 < produced["latency"]["p50_ms"] <= produced["latency"]["max_ms"]
    # The broker holds exactly what the bench says it sent.
    client = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g")})
    per_partition = [client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3)]
    client.close()
    # Each request carries a batch for every partition (as a Kafka producer's does), and
    # each producer cycles through all of them: 100 batches of 10 on each.
    assert per_partition == [1000, 1000, 1000], per_partition
    consumed = json.loads(ok(herald(broker, "bench", "consume", "--topic", topic, "--json")))
    assert consumed["records"] == 3000 and consumed["bytes"] == 300_000 and consumed["errors"] == 0
    # --batch-size is records per batch; a count it does not divide still sends exactly
    # --count (the last batches are short).
    odd = json.loads(ok(herald(broker, "bench", "produce", "--topic", topic, "--producers", "3",
                               "--count", "1000", "--message-bytes", "100", "--batch-size", "7", "--json")))
    assert odd["records"] == 1000 and odd["errors"] == 0
    client = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g")})
    stored = sum(client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3))
    client.close()
    assert stored == 4000
    # Several consumers share the partitions and together read every record once.
    shared = json.loads(ok(herald(broker, "bench", "consume", "--topic", topic, "--consumers", "3", "--json")))
    assert shared["records"] == 4000 and shared["bytes"] == 400_000 and shared["errors"] == 0
    capped = json.loads(ok(herald(broker, "bench", "consume", "--topic", topic, "--consumers", "2",
                                  "--count", "500", "--fetch-bytes", "2000", "--json")))
    assert 500 <= capped["records"] < 4000, capped
    crowded = herald(broker, "bench", "consume", "--topic", topic, "--consumers", "4")
    assert crowded.returncode != 0 and "more than the 3 partitions" in crowded.stderr
    missing = herald(broker, "bench", "consume", "--topic", unique("nosuch"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_bench_end_to_end_delivers_every_acked_record_and_samples_the_broker(broker):
    import json

    topic = unique("cli-e2e")
    # Records already in the topic are not counted: the consumer starts at the log end.
    ok(herald(broker, "bench", "produce", "--topic", topic, "--partitions", "2", "--count", "50",
              "--message-bytes", "64", "--json"))
    out = ok(herald(broker, "bench", "e2e", "--topic", topic, "--producers", "2", "--consumers", "2",
                    "--count", "2000", "--rate", "4000", "--linger-ms", "5", "--batch-size", "50",
                    "--message-bytes", "64", "--acks", "all", "--broker-pid", str(broker.pid), "--json"))
    # --json: the whole of stdout is one JSON object (no progress bar in it).
    report = json.loads(out)
    assert report["mode"] == "end-to-end"
    assert report["records"] == 2000 and report["errors"] == 0 and report["records_per_sec"] > 0
    e2e = report["end_to_end"]
    assert e2e["received"] == 2000 and e2e["missing"] == 0 and e2e["records_per_sec"] > 0
    lat = e2e["latency"]
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p99.9_ms"] <= lat["max_ms"]
    ack = report["latency"]
    assert 0 < ack["p50_ms"] <= ack["p99_ms"] <= ack["max_ms"]
    # Paced at 4,000 records/s, 2,000 records cannot take much less than half a second.
    assert report["seconds"] >= 0.4
    rss = report["broker_rss_mb"]
    assert 0 < rss["min"] <= rss["max"] and rss["samples"] >= 1
    # A value too short to carry the send time is refused with a clear message.
    short = herald(broker, "bench", "e2e", "--topic", topic, "--message-bytes", "4", "--count", "10")
    assert short.returncode != 0 and "at least 8" in short.stderr
    # At most one consumer per partition.
    crowded = herald(broker, "bench", "e2e", "--topic", topic, "--consumers", "3", "--count", "10")
    assert crowded.returncode != 0 and "more than the 2 partitions" in crowded.stderr
    # acks=1, compressed, one consumer, text output: the same counts hold.
    text = ok(herald(broker, "bench", "e2e", "--topic", topic, "--count", "500", "--rate", "0",
                     "--acks", "1", "--compression", "lz4", "--message-bytes", "100"))
    assert "received 500 records" in text and " 0 acknowledged records missing" in text
    assert "end-to-end latency ms: p50" in text


def queue_cli(broker, *args, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`herald queue ...` against the broker's HTTP API (set through HERALD_HTTP)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_HTTP"] = broker.http_url
    return subprocess.run([str(HERALD_BIN), "queue", *args], capture_output=True, text=True,
                          env=env, timeout=timeout_s)


def test_queue_retry_dead_letter_and_redrive_from_the_cli(broker):
    topic = unique("cli-queue")
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    produce_and_confirm(producer, topic, [(b"order-1", b'{"type":"OrderPlaced","id":1}')])
    created = ok(queue_cli(broker, "create", topic, "billing", "--max-deliveries", "2",
                           "--backoff-base-ms", "50", "--backoff-jitter", "0"))
    assert "max_deliveries: 2" in created and f"{topic}.billing.dlq" in created, created

    for attempt in (1, 2):
        lines = ok(queue_cli(broker, "receive", topic, "billing", "--wait-ms", "5000")).splitlines()
        assert len(lines) == 1, lines
        record = json.loads(lines[0])
        assert record["delivery_count"] == attempt and record["key"] == "order-1"
        assert record["value"] == {"type": "OrderPlaced", "id": 1}
        said = ok(queue_cli(broker, "nack", topic, "billing", record["receipt"], "--error", f"declined {attempt}"))
        assert ("dead-lettered" in said) == (attempt == 2), said

    dead = [json.loads(line) for line in ok(queue_cli(broker, "dlq", topic, "billing")).splitlines()]
    assert len(dead) == 1 and dead[0]["headers"]["herald-dlq-last-error"] == "declined 2", dead
    listed = ok(queue_cli(broker, "list"))
    assert re.search(rf"{re.escape(topic)}\s+billing\s+0\s+0\s+0\s+1\s", listed), listed
    assert "moved 1 " in ok(queue_cli(broker, "redrive", topic, "billing"))
    assert ok(queue_cli(broker, "dlq", topic, "billing")) == ""

    again = json.loads(ok(queue_cli(broker, "receive", topic, "billing", "--wait-ms", "5000")))
    assert again["delivery_count"] == 1 and again["key"] == "order-1"
    assert "acked 1" in ok(queue_cli(broker, "ack", topic, "billing", again["receipt"]))
    stale = queue_cli(broker, "ack", topic, "billing", again["receipt"], "not-a-receipt")
    assert stale.returncode != 0 and "not_leased" in stale.stderr and "invalid_receipt" in stale.stderr, stale.stderr
    missing = queue_cli(broker, "stats", topic, "nosuch")
    assert missing.returncode != 0 and "unknown_subscription" in missing.stderr, missing.stderr


def amqp_cli(broker, *args, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`herald amqp ...` against the broker's HTTP API, named with --http."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run([str(HERALD_BIN), "amqp", *args, "--http", broker.http_url],
                          capture_output=True, text=True, env=env, timeout=timeout_s)


def test_amqp_exchanges_queues_and_bindings_from_the_cli(broker):
    """What pika declared, as `herald amqp` lists it: tables, and with --json the HTTP
    API's own answer (GET /amqp/...)."""
    import httpx
    import pika

    if broker.amqp_port is None:
        pytest.skip("this herald binary has no AMQP listener")
    q, ex = unique("cli-amqp-q"), unique("cli-amqp-ex")
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.amqp_port))
    try:
        ch = conn.channel()
        ch.exchange_declare(ex, "topic", durable=True)
        ch.queue_declare(q, durable=True, arguments={"x-message-ttl": 60000})
        ch.queue_bind(q, ex, "orders.#")
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish(ex, "orders.placed", f"OrderPlaced {i}".encode())
        consumer = conn.channel()
        consumer.basic_qos(prefetch_count=1)
        consumer.basic_consume(q, lambda *a: None)
        wait_until(lambda: any(x["name"] == q and x["consumers"] == 1
                               for x in httpx.get(f"{broker.http_url}/amqp/queues").json()), 10,
                   "the consumer never showed in GET /amqp/queues")

        exchanges = ok(amqp_cli(broker, "exchanges"))
        assert exchanges.splitlines()[0].split() == ["NAME", "TYPE", "DURABLE", "AUTO-DELETE", "INTERNAL",
                                                     "ARGUMENTS"], exchanges
        assert re.search(rf"^{re.escape(ex)}\s+topic\s+true\s+false\s+false$", exchanges, re.M), exchanges
        assert re.search(r"^\(AMQP default\)\s+direct\s+true", exchanges, re.M), exchanges
        assert re.search(r"^amq\.fanout\s+fanout\s", exchanges, re.M), exchanges

        queues = ok(amqp_cli(broker, "queues"))
        # Three ready, one of them leased to the consumer (prefetch 1): two ready.
        row = re.search(rf"^{re.escape(q)}\s+{re.escape(q)}\s+(\d+)\s+1\s+true\s+false\s+false\s+"
                        r'\{"x-message-ttl":60000\}$', queues, re.M)
        assert row and row.group(1) in ("2", "3"), queues

        bindings = ok(amqp_cli(broker, "bindings"))
        assert re.search(rf"^{re.escape(ex)}\s+{re.escape(q)}\s+queue\s+orders\.#$", bindings, re.M), bindings

        # Definitions as the API has them (queue counts may move between two calls).
        for what in ("exchanges", "bindings"):
            listed = json.loads(ok(amqp_cli(broker, what, "--json")))
            assert listed == httpx.get(f"{broker.http_url}/amqp/{what}").json(), what
        queue = next(x for x in json.loads(ok(amqp_cli(broker, "queues", "--json"))) if x["name"] == q)
        assert (queue["topic"], queue["durable"], queue["consumers"], queue["arguments"]) == (
            q, True, 1, {"x-message-ttl": 60000}), queue
    finally:
        conn.close()

    unreachable = subprocess.run([str(HERALD_BIN), "amqp", "queues", "--http", "127.0.0.1:1"],
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode != 0 and "cannot reach the HTTP API" in unreachable.stderr, unreachable.stderr


def test_bootstrap_takes_a_host_name(broker):
    # "localhost" may resolve to ::1 first, where nothing listens: every address is tried.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    topic = unique("cli-hostname")
    result = subprocess.run(
        [str(HERALD_BIN), "topics", "create", topic, "--bootstrap", f"localhost:{broker.port}"],
        capture_output=True, text=True, env=env, timeout=60)
    ok(result)
    assert topic in ok(herald(broker, "topics", "list"))


def test_the_cli_pointed_at_the_http_port_says_so(broker):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    result = subprocess.run(
        [str(HERALD_BIN), "topics", "list", "--bootstrap", f"127.0.0.1:{broker.http_port}"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "speaks HTTP, not Kafka" in result.stderr, result.stderr


def test_changing_commands_confirm_and_errors_read_as_words(broker):
    topic = unique("cli-words")
    created = ok(herald(broker, "topics", "create", topic, "--partitions", "3"))
    assert created.strip() == f"created topic {topic} with 3 partitions"
    produced = ok(herald(broker, "produce", topic, stdin="a\nb\n"))
    assert produced.strip() == f"produced 2 events to {topic}"

    again = herald(broker, "topics", "create", topic)
    assert again.returncode != 0
    # One layer of context, then the broker's reason with the Kafka error's name.
    assert again.stderr.strip() == (
        f'herald: cannot create topic {topic}: topic "{topic}" already exists (TopicAlreadyExists)'), again.stderr
    too_many = herald(broker, "topics", "create", unique("cli-big"), "--partitions", "20000")
    assert too_many.returncode != 0
    assert "1 to 10000 partitions" in too_many.stderr and "partitions_per_topic_max" in too_many.stderr, \
        too_many.stderr
    wrong_partition = herald(broker, "produce", topic, "--partition", "7", stdin="x\n")
    assert wrong_partition.returncode != 0
    assert "3 partitions, 0 to 2; there is no partition 7" in wrong_partition.stderr, wrong_partition.stderr
    for result in (again, too_many, wrong_partition):
        assert ".." not in result.stderr, f"Rust range notation in {result.stderr!r}"

    deleted = ok(herald(broker, "topics", "delete", topic))
    assert deleted.strip() == f"deleted topic {topic} and its events"


def _bench_until(broker, stop, *bench_args):
    """Start a long `herald bench`, let it measure for a moment, call `stop(process)`,
    return (exit code, stdout, stderr)."""
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    process = subprocess.Popen(
        [str(HERALD_BIN), "bench", *bench_args, "--bootstrap", broker.bootstrap, "--quiet",
         "--duration-secs", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(2.5)
    assert process.poll() is None, "the bench ended before it was stopped"
    stop(process)
    stdout, stderr = process.communicate(timeout=30)
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("mode", ["produce", "end-to-end"])
def test_bench_interrupted_prints_what_it_measured(broker, mode):
    import signal

    args = [mode, "--topic", unique("cli-bench-int"), "--count", "1000000000", "--message-bytes", "100"]
    if mode == "end-to-end":
        args += ["--rate", "2000"]
    code, stdout, stderr = _bench_until(broker, lambda p: p.send_signal(signal.SIGINT), *args)
    assert code != 0, "an interrupted run must not look like a finished one"
    assert "partial report, the run stopped early: interrupted (Ctrl-C)" in stdout, stdout + stderr
    records = int(re.search(r"^(\d+) records", stdout, re.M).group(1))
    assert records > 0, stdout


def test_bench_reports_a_lost_broker(broker):
    topic = unique("cli-bench-lost")
    create_topic(broker.bootstrap, topic, partitions=1)
    code, stdout, stderr = _bench_until(
        broker, lambda p: broker.kill(), "produce", "--topic", topic, "--count", "1000000000",
        "--message-bytes", "100", "--json")
    assert code != 0
    report = json.loads(stdout)
    assert report["stopped"] and report["stopped"].startswith("lost the broker"), report
    assert report["records"] > 0, report
    assert "stopped early: lost the broker" in stderr, stderr
