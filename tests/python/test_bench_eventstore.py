"""`herald bench eventstore` against the real binary: the three phases report what was
appended, and what the bench wrote is there for kurrentdbclient to read back at the
revisions the bench checked; the load mode reports the data dir; bad input is refused."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import HERALD_BIN
from eventstore_support import connect, eventstore_broker, read

pytestmark = pytest.mark.timeout(120)

RUN_TIMEOUT_S = 90


def bench(b, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HERALD_BIN), "bench", "eventstore", "--url", f"http://{b.host}:{b.eventstore_port}",
                           "--json", *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def test_phases_append_read_and_catch_up(broker_factory):
    b = eventstore_broker(broker_factory)
    done = bench(b, "--count", "2000", "--writers", "2", "--in-flight", "2", "--batch", "10",
                 "--read-events", "500", "--reads", "5", "--broker-pid", str(b.pid))
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["append"]["events"] == 2000 and r["append"]["appends"] == 200 and r["append"]["errors"] == 0
    assert r["read"]["reads"] == 5 and r["read"]["events"] == 500
    # Everything in $all, the bench's 2000 events at least.
    assert r["catch_up_all"]["events"] >= 2000
    assert r["broker_rss_mb"]["samples"] >= 1
    # The stream the bench read holds 500 events at revisions 0..499, as a real client sees it.
    client = connect(b)
    try:
        events = read(client, r["read"]["stream"])
    finally:
        client.close()
    assert [e.stream_position for e in events] == list(range(500))
    assert {e.type for e in events} == {"BenchEvent"}


def test_load_reports_the_data_dir(broker_factory):
    b = eventstore_broker(broker_factory)
    done = bench(b, "--streams", "300", "--events-per-stream", "5", "--writers", "2", "--data-dir",
                 str(b.data_dir))
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["load"] is True and r["append"]["events"] == 1500 and r["append"]["appends"] == 300
    sizes = r["data_dir_bytes"]
    assert sizes["meta_apparent"] > 0 and sizes["log_apparent"] > 1500 * 100


@pytest.mark.parametrize("args, message", [
    (["--url", "https://127.0.0.1:2113"], "only plain http://"),
    (["--url", "http://127.0.0.1:1"], "cannot connect to the event store"),
    (["--batch", "0"], "--batch"),
])
def test_bad_input_is_refused(args, message):
    done = subprocess.run([str(HERALD_BIN), "bench", "eventstore", *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
