"""KafkaJS 2.2.4 (tests/js) against herald. The node scripts print one JSON line;
this file runs them and checks what they saw."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from herald_support import unique

pytestmark = pytest.mark.timeout(120)

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def run_node(script: str, broker, **env_vars) -> dict:
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (JS_DIR / "node_modules" / "kafkajs").is_dir(), "run `npm ci` in tests/js (scripts/test.sh does)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_BOOTSTRAP"] = broker.bootstrap
    env.update({k: str(v) for k, v in env_vars.items()})
    result = subprocess.run([node, script], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, (
        f"node {script} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}")
    lines = result.stdout.strip().splitlines()
    assert lines, f"node {script} printed nothing; stderr:\n{result.stderr[-4000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_kafkajs_seed_flow(broker, compression):
    count = 20
    out = run_node("seed_flow.js", broker, TOPIC=unique("js-orders"), GROUP=unique("js-grp"), COUNT=count,
                   COMPRESSION=compression)
    produced, consumed = out["produced"], out["consumed"]
    assert len(produced) == count
    assert all(p["error"] == 0 for p in produced)
    # Exactly the events sent, each once, at the offsets the producer was given.
    assert len(consumed) == count
    by_id = {c["value"]["event_id"]: c for c in consumed}
    assert len(by_id) == count
    for i, p in enumerate(produced):
        c = by_id[f"evt_{i}"]
        assert c["value"] == {"event_id": f"evt_{i}", "type": "OrderPlaced", "order_id": f"ORD{1000 + i}",
                              "user_id": f"user_{i % 5}", "amount": 10 + i / 100}
        assert c["key"] == f"user_{i % 5}"
        assert c["headers"] == {"source": "kafkajs"}
        assert (c["partition"], int(c["offset"])) == (p["partition"], int(p["offset"]))
    # Per partition, delivery follows offsets.
    for part in {c["partition"] for c in consumed}:
        offs = [int(c["offset"]) for c in consumed if c["partition"] == part]
        assert offs == sorted(offs)


def test_kafkajs_admin(broker):
    out = run_node("admin.js", broker, TOPIC=unique("js-admin"))
    assert out["created"] is True
    assert out["createdAgain"] is False, "creating an existing topic reports TOPIC_ALREADY_EXISTS"
    assert out["listedAfterCreate"] is True
    assert out["listedAfterDelete"] is False
    assert out["partitions"] == [
        {"partition": p, "leader": 1, "replicas": [1], "isr": [1]} for p in range(3)
    ]
    assert out["offsets"] == [
        {"partition": p, "low": "0", "high": str(p + 1), "offset": str(p + 1)} for p in range(3)
    ]


def test_confluent_schema_registry_js_registers_encodes_and_decodes(broker):
    """@kafkajs/confluent-schema-registry 3.9.0 against Herald's registry, with the topic
    validating schemas on produce: the same id for the same schema, Avro records through
    KafkaJS decoded back, a plain JSON value refused with INVALID_RECORD."""
    out = run_node("schema_registry.js", broker, TOPIC=unique("js-sr"), REGISTRY_URL=broker.registry_url)
    assert out["id"] == out["again"] == out["latest"]
    assert out["decoded"] == [{"order_id": "ORD1", "amount": 10.5}, {"order_id": "ORD2", "amount": 20.25}]
    assert out["refused"] == "INVALID_RECORD", out


def test_kafkajs_transactions_commit_abort_and_send_offsets(broker):
    out = run_node("transactions.js", broker, TOPIC=unique("js-txn"), OUT=unique("js-txn-out"),
                   GROUP=unique("js-txn-grp"))
    assert out["committedView"] == ["committed-1", "committed-2"]
    assert out["uncommittedView"] == ["aborted-1", "committed-1", "committed-2"]
    assert out["outView"] == ["copied-1", "copied-2"]
    assert out["groupOffset"] == "5"
