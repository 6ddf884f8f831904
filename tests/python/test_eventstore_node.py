"""The event store through KurrentDB's Node client, @kurrent/kurrentdb-client 1.3.1 from
npm (tests/js), unchanged. tests/js/eventstore_basic.js makes the calls and prints what
it saw as one JSON line (revisions and positions as decimal strings); this file starts
herald with the event store listener on a free port, runs the script, checks what the
client reported, and reads the same events back with the Python client
(kurrentdbclient), so the two clients agree on revisions and positions.

What the Node client does that the Python one does not: it asks ServerFeatures before
it appends (BatchAppend when listed, the unary Append when a call carries
credentials), reads through its Rust bridge (the `kurrentdb` crate's gRPC client) but
subscribes through grpc-js, and builds WrongExpectedVersionError from the append
response's body and from a Delete's status trailers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from kurrentdbclient import KurrentDBClient

from eventstore_support import CALL_TIMEOUT_S, eventstore_broker, target

pytestmark = pytest.mark.timeout(120)

JS_DIR = Path(__file__).resolve().parents[1] / "js"
# The script has its own 60 s deadline; this one catches a node that ignores it.
NODE_TIMEOUT_S = 90


def run_node_eventstore(script: str, url: str, **env_vars) -> dict:
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (JS_DIR / "node_modules" / "@kurrent" / "kurrentdb-client").is_dir(), (
        "run `npm ci` in tests/js (scripts/test.sh does)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["ES_URL"] = url
    env.update({k: str(v) for k, v in env_vars.items()})
    result = subprocess.run([node, script], cwd=JS_DIR, env=env, capture_output=True, text=True,
                            timeout=NODE_TIMEOUT_S)
    assert result.returncode == 0, (
        f"node {script} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    lines = result.stdout.strip().splitlines()
    assert lines, f"node {script} printed nothing; stderr:\n{result.stderr[-4000:]}"
    return json.loads(lines[-1])


@pytest.fixture
def es(broker_factory):
    return eventstore_broker(broker_factory)


def events(items: list) -> list:
    """The events of a subscription's list, without its 'caughtUp' marks."""
    return [i for i in items if i != "caughtUp"]


def ev(stream: str, revision: int, type_: str, n: int, position: int | str) -> dict:
    return {"stream": stream, "revision": str(revision), "type": type_, "data": {"n": n},
            "position": str(position)}


def wrong_version(stream: str, expected: str, actual: str) -> dict:
    return {"name": "WrongExpectedVersionError", "type": "wrong-expected-version", "streamName": stream,
            "expectedState": expected, "actualState": actual}


def test_node_client_append_read_subscribe_delete(es):
    tag = "t" + uuid.uuid4().hex[:10]
    stream, other = f"{tag}order-1", f"{tag}order-2"
    placed, paid, shipped, delivered = (f"{tag}Order{s}" for s in ("Placed", "Paid", "Shipped", "Delivered"))
    out = run_node_eventstore("eventstore_basic.js", f"kurrentdb://{target(es)}?tls=false", TAG=tag)

    # Appends: the result names the next expected revision and the position of the
    # append's last event (commit == prepare); one append's events are consecutive.
    first, second = out["first"], out["second"]
    assert (first["success"], first["nextExpectedRevision"]) == (True, "1")
    assert (second["success"], second["nextExpectedRevision"]) == (True, "2")
    for r in (first, second, out["unary"], out["liveAppend"], out["afterDelete"]):
        assert r["position"]["commit"] == r["position"]["prepare"], r
    p1 = int(first["position"]["commit"])
    p2 = int(second["position"]["commit"])
    assert p2 == p1 + 1
    assert out["unary"]["nextExpectedRevision"] == "0"
    assert int(out["unary"]["position"]["commit"]) == p2 + 1

    # Conflicts, from BatchAppend's and Append's bodies: expected and actual revisions.
    assert out["conflictExact"] == wrong_version(stream, "1", "2")
    assert out["conflictNoStream"] == wrong_version(stream, "no_stream", "2")
    assert out["unaryConflict"] == wrong_version(other, "5", "0")

    # Stream reads both ways, from a revision, and a missing stream.
    history = [ev(stream, 0, placed, 0, p1 - 1), ev(stream, 1, paid, 1, p1), ev(stream, 2, shipped, 2, p2)]
    assert out["forwards"] == history
    assert out["backwards"] == history[::-1][:2]
    assert out["fromRevision"] == [history[1]]
    assert out["missing"]["name"] == "StreamNotFoundError"
    assert out["missing"]["streamName"] == f"{tag}nothing-here"

    # $all filtered on event type: a prefix forwards (only this run's events, the
    # unrelated stream's included), a regex backwards (two of them, newest first).
    unrelated = ev(other, 0, f"{tag}Unrelated", 0, p2 + 1)
    assert out["all"] == [*history, unrelated]
    assert out["allRegex"] == [history[2], history[1]]

    # Catch-up subscription: the history, caught up, then the event appended after that.
    p_live = int(out["liveAppend"]["position"]["commit"])
    assert out["liveAppend"]["nextExpectedRevision"] == "3"
    live = ev(stream, 3, delivered, 3, p_live)
    assert out["subscription"] == [*history, "caughtUp", live]
    # From a revision it starts after that revision.
    assert events(out["subscriptionFromRevision"]) == [history[2], live]
    # $all subscription with an event-type regex: this run's Order* events only.
    assert events(out["allSubscription"]) == [*history, live]

    # Soft delete at the exact revision; the stream then reads as not found, and a
    # later append continues from the next revision. A delete's conflict comes as
    # status trailers, which the client reads the same way.
    assert int(out["deleted"]["position"]["commit"]) > p_live
    assert out["readDeleted"]["name"] == "StreamNotFoundError"
    assert out["deleteAgainExact"] == wrong_version(other, "7", "0")
    assert out["afterDelete"]["nextExpectedRevision"] == "4"
    p_after = int(out["afterDelete"]["position"]["commit"])
    assert out["readAfterDelete"] == [ev(stream, 4, placed, 4, p_after)]

    # Stream metadata: none at first, then what was set (custom fields kept), and a
    # read of the stream honours $maxCount (the last two of three events).
    capped = f"{tag}capped-1"
    assert out["metadataBefore"] == {"streamName": capped}
    assert (out["setMetadata"]["success"], out["setMetadata"]["nextExpectedRevision"]) == (True, "0")
    assert out["metadata"]["streamName"] == capped
    assert out["metadata"]["metadata"] == {"maxCount": 2, "owner": "billing"}
    assert [(e["revision"], e["data"]) for e in out["readCapped"]] == [("1", {"n": 1}), ("2", {"n": 2})]

    # Tombstone: reads and appends are refused for good.
    assert int(out["tombstoned"]["position"]["commit"]) > p_after
    assert out["readTombstoned"]["name"] == "StreamDeletedError"
    assert out["appendTombstoned"]["name"] == "StreamDeletedError"

    # The Python client sees what the Node client wrote, at the same revisions and positions.
    client = KurrentDBClient(f"kurrentdb://{target(es)}?tls=false")
    try:
        [after] = client.get_stream(stream, timeout=CALL_TIMEOUT_S)
        assert (after.stream_position, after.type, json.loads(after.data), after.commit_position) == (
            4, placed, {"n": 4}, p_after)
        seen = [(e.stream_name, e.stream_position, e.type, e.commit_position)
                for e in client.read_all(filter_include=[f"{tag}.*"], filter_by_stream_name=False,
                                         timeout=CALL_TIMEOUT_S)]
        assert seen == [(e["stream"], int(e["revision"]), e["type"], int(e["position"]))
                        for e in [*history, unrelated, live]] + [(stream, 4, placed, p_after)] + [
                            (capped, r, placed, int(out["readCapped"][0]["position"]) - 1 + r) for r in range(3)]
    finally:
        client.close()
