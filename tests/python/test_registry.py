"""The schema registry (Confluent's REST API on its own listener) against the real
herald binary, driven by confluent-kafka's SchemaRegistryClient and its Avro
serializer/deserializer producing and consuming through Herald's Kafka port, plus raw
HTTP for the error shapes, content types and query flags the clients rely on.

Each test starts its own broker; the fixtures give it `--registry-listen` on a free port."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from herald_support import unique

pytestmark = pytest.mark.timeout(60)

V1 = """{"type": "record", "name": "OrderPlaced", "namespace": "shop",
 "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "int"}]}"""
# Backward compatible with V1: the new field has a default; amount is promoted to long.
V2 = """{"type": "record", "name": "OrderPlaced", "namespace": "shop",
 "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "long"},
            {"name": "currency", "type": "string", "default": "EUR"}]}"""
# Not backward compatible with V1: a new field without a default.
BAD = """{"type": "record", "name": "OrderPlaced", "namespace": "shop",
 "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "int"},
            {"name": "customer", "type": "string"}]}"""


class Registry:
    """A broker (with its registry listener on a free port) and clients for it."""

    def __init__(self, broker):
        self.broker = broker
        self.url = broker.registry_url
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def client(self) -> SchemaRegistryClient:
        # A fresh client: nothing answered from its cache.
        return SchemaRegistryClient({"url": self.url})

    def post(self, path: str, body: dict, **kw) -> httpx.Response:
        return self.http.post(path, json=body,
                              headers={"Content-Type": "application/vnd.schemaregistry.v1+json"}, **kw)


@pytest.fixture
def registry(broker):
    r = Registry(broker)
    yield r
    r.http.close()


def restart(registry: Registry, kill: bool = False) -> None:
    """Restart (or kill -9 and start) on the same data directory and ports."""
    if kill:
        registry.broker.kill()
        registry.broker.start()
    else:
        registry.broker.restart()


def test_avro_serializer_produces_and_deserializer_consumes_through_herald(registry):
    topic = unique("orders-avro")
    client = registry.client()
    serializer = AvroSerializer(client, V1)
    producer = Producer({"bootstrap.servers": registry.broker.bootstrap})
    sent = [{"order_id": f"ORD{i}", "amount": i * 10} for i in range(5)]
    for value in sent:
        producer.produce(topic, value=serializer(value, SerializationContext(topic, MessageField.VALUE)))
    assert producer.flush(10) == 0

    subject = f"{topic}-value"
    assert client.get_subjects() == [subject]
    latest = client.get_latest_version(subject)
    assert latest.version == 1 and latest.schema.schema_type == "AVRO"

    consumer = Consumer({"bootstrap.servers": registry.broker.bootstrap, "group.id": unique("g"),
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    # A fresh client: the deserializer must fetch the schema by id from Herald.
    deserializer = AvroDeserializer(registry.client())
    got = []
    deadline = time.monotonic() + 20
    while len(got) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        assert msg.value()[0] == 0, "Confluent wire format: magic byte 0"
        assert int.from_bytes(msg.value()[1:5], "big") == latest.schema_id
        got.append(deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE)))
    consumer.close()
    assert got == sent


def test_same_schema_same_id_across_subjects_and_whitespace(registry):
    client = registry.client()
    a = client.register_schema("a-value", Schema(V1, "AVRO"))
    again = registry.client().register_schema("a-value", Schema(V1, "AVRO"))
    # Same meaning, other whitespace and attribute order: same id.
    reordered = V1.replace('"type": "record", "name": "OrderPlaced"', '"name": "OrderPlaced", "type": "record"')
    other_subject = registry.client().register_schema("b-value", Schema(" ".join(reordered.split()), "AVRO"))
    assert a == again == other_subject
    assert client.get_versions("a-value") == [1]
    assert client.get_version("b-value", 1).schema_id == a
    # A different schema gets a different id.
    assert client.register_schema("a-value", Schema(V2, "AVRO")) != a
    # Lookup (POST /subjects/{s}) finds the version by schema.
    found = client.lookup_schema("a-value", Schema(V1, "AVRO"))
    assert (found.schema_id, found.version) == (a, 1)
    with pytest.raises(SchemaRegistryError) as e:
        client.lookup_schema("a-value", Schema(BAD, "AVRO"))
    assert (e.value.http_status_code, e.value.error_code) == (404, 40403)
    assert sorted(registry.http.get(f"/schemas/ids/{a}/subjects").json()) == ["a-value", "b-value"]
    assert registry.http.get(f"/schemas/ids/{a}/versions").json() == [
        {"subject": "a-value", "version": 1}, {"subject": "b-value", "version": 1}]


def test_use_latest_version_serializes_with_the_registered_schema(registry):
    topic = unique("latest")
    client = registry.client()
    client.register_schema(f"{topic}-value", Schema(V1, "AVRO"))
    v2 = client.register_schema(f"{topic}-value", Schema(V2, "AVRO"))
    serializer = AvroSerializer(client, None, conf={"auto.register.schemas": False, "use.latest.version": True})
    data = serializer({"order_id": "x", "amount": 5, "currency": "USD"},
                      SerializationContext(topic, MessageField.VALUE))
    assert int.from_bytes(data[1:5], "big") == v2
    value = AvroDeserializer(registry.client())(data, SerializationContext(topic, MessageField.VALUE))
    assert value == {"order_id": "x", "amount": 5, "currency": "USD"}


def test_incompatible_schema_is_refused_with_409_and_compatibility_levels_apply(registry):
    client = registry.client()
    client.register_schema("c-value", Schema(V1, "AVRO"))
    with pytest.raises(SchemaRegistryError) as e:
        client.register_schema("c-value", Schema(BAD, "AVRO"))
    assert (e.value.http_status_code, e.value.error_code) == (409, 409)
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in e.value.error_message
    assert "customer" in e.value.error_message

    assert client.test_compatibility("c-value", Schema(V2, "AVRO")) is True
    assert client.test_compatibility("c-value", Schema(BAD, "AVRO")) is False
    verbose = registry.post("/compatibility/subjects/c-value/versions/latest?verbose=True", {"schema": BAD}).json()
    assert verbose["is_compatible"] is False
    assert any("READER_FIELD_MISSING_DEFAULT_VALUE" in m for m in verbose["messages"])

    # FORWARD: the old schema must read the new: a new field without default is fine,
    # a removed field without default in the old one is not.
    assert client.set_compatibility("c-value", "FORWARD")["compatibility"] == "FORWARD"
    assert client.get_compatibility("c-value") == "FORWARD"
    assert client.register_schema("c-value", Schema(BAD, "AVRO")) > 0
    removed = """{"type": "record", "name": "OrderPlaced", "namespace": "shop",
                  "fields": [{"name": "order_id", "type": "string"}]}"""
    with pytest.raises(SchemaRegistryError) as e:
        client.register_schema("c-value", Schema(removed, "AVRO"))
    assert e.value.error_code == 409
    client.set_compatibility("c-value", "NONE")
    assert client.register_schema("c-value", Schema(removed, "AVRO")) > 0

    # Subject level falls back to global; global default is BACKWARD.
    assert registry.http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    nocfg = registry.http.get("/config/other-value")
    assert (nocfg.status_code, nocfg.json()["error_code"]) == (404, 40408)
    assert registry.http.get("/config/other-value?defaultToGlobal=TRUE").json() == {"compatibilityLevel": "BACKWARD"}
    bad = registry.http.put("/config", json={"compatibility": "SIDEWAYS"})
    assert (bad.status_code, bad.json()["error_code"]) == (422, 42203)


def test_transitive_modes_check_every_earlier_version_not_only_the_latest(registry):
    client = registry.client()
    def record(t):
        return Schema('{"type":"record","name":"R","fields":[{"name":"a","type":"%s"}]}' % t, "AVRO")
    # Versions 1-3: double, float, int (registered without checks).
    client.set_compatibility("f-value", "NONE")
    for t in ("double", "float", "int"):
        client.register_schema("f-value", record(t))
    # BACKWARD compares with the latest only: a long reader reads int data.
    client.set_compatibility("f-value", "BACKWARD")
    assert client.test_compatibility("f-value", record("long")) is True
    # BACKWARD_TRANSITIVE: a long reader cannot read versions 1-2's double/float data
    # (checking against `latest` alone still compares with one version).
    client.set_compatibility("f-value", "BACKWARD_TRANSITIVE")
    assert client.test_compatibility("f-value", record("long")) is True
    assert client.test_compatibility_all_versions("f-value", record("long")) is False
    with pytest.raises(SchemaRegistryError) as e:
        client.register_schema("f-value", record("long"))
    assert e.value.error_code == 409
    assert "oldSchemaVersion: 2" in e.value.error_message and "oldSchemaVersion: 1" in e.value.error_message
    assert "oldSchemaVersion: 3" not in e.value.error_message
    # FORWARD: the latest (int) reader cannot read long data; FULL needs both ways.
    client.set_compatibility("f-value", "FORWARD")
    assert client.test_compatibility("f-value", record("long")) is False
    client.set_compatibility("f-value", "FORWARD_TRANSITIVE")
    # Every earlier reader (double, float, int) reads int data.
    assert client.test_compatibility_all_versions("f-value", record("int")) is True
    client.set_compatibility("f-value", "FULL_TRANSITIVE")
    # ... but an int reader cannot read double data.
    assert client.test_compatibility_all_versions("f-value", record("int")) is False


def test_soft_and_permanent_delete_states_and_ids_are_kept(registry):
    client = registry.client()
    id1 = client.register_schema("d-value", Schema(V1, "AVRO"))
    id2 = client.register_schema("d-value", Schema(V2, "AVRO"))
    h = registry.http
    # Permanent before soft: 40407 / 40405.
    r = h.delete("/subjects/d-value/versions/1?permanent=true")
    assert (r.status_code, r.json()["error_code"]) == (404, 40407)
    r = h.delete("/subjects/d-value?permanent=true")
    assert (r.status_code, r.json()["error_code"]) == (404, 40405)
    assert h.delete("/subjects/d-value/versions/2").json() == 2
    r = h.delete("/subjects/d-value/versions/2")
    assert (r.status_code, r.json()["error_code"]) == (404, 40406)
    assert h.get("/subjects/d-value/versions").json() == [1]
    assert h.get("/subjects/d-value/versions?deleted=true").json() == [1, 2]
    assert h.get("/subjects/d-value/versions/2").json()["error_code"] == 40402
    assert h.get("/subjects/d-value/versions/2?deleted=true").json()["id"] == id2
    # Re-registering the soft-deleted schema keeps its id (a new version).
    assert registry.client().register_schema("d-value", Schema(V2, "AVRO")) == id2
    assert h.get("/subjects/d-value/versions").json() == [1, 3]
    assert h.delete("/subjects/d-value").json() == [1, 3]
    r = h.delete("/subjects/d-value")
    assert (r.status_code, r.json()["error_code"]) == (404, 40404)
    assert h.get("/subjects").json() == []
    assert h.get("/subjects?deleted=true").json() == ["d-value"]
    assert h.get(f"/schemas/ids/{id1}").status_code == 200
    assert h.delete("/subjects/d-value?permanent=true").json() == [1, 2, 3]
    r = h.get("/subjects/d-value/versions?deleted=true")
    assert (r.status_code, r.json()["error_code"]) == (404, 40401)
    r = h.get(f"/schemas/ids/{id1}")
    assert (r.status_code, r.json()) == (404, {"error_code": 40403, "message": f"Schema {id1} not found"})
    # After a permanent delete the same schema keeps its id; new schemas never reuse one.
    assert registry.client().register_schema("d-value", Schema(V1, "AVRO")) == id1
    assert registry.client().register_schema("d2-value", Schema(BAD, "AVRO")) > id2


def test_errors_have_confluents_codes_statuses_and_shape(registry):
    h = registry.http
    for path, status, code in [
        ("/subjects/none/versions", 404, 40401),
        ("/subjects/none/versions/1", 404, 40401),
        ("/subjects/none/versions/latest", 404, 40401),
        ("/schemas/ids/12345", 404, 40403),
        ("/subjects/x/versions/zero", 422, 42202),
        ("/subjects/x/versions/0", 422, 42202),
        ("/no/such/route", 404, 404),
    ]:
        r = h.get(path)
        body = r.json()
        assert (r.status_code, body["error_code"]) == (status, code), (path, body)
        assert set(body) == {"error_code", "message"}
    registry.client().register_schema("e-value", Schema(V1, "AVRO"))
    r = h.get("/subjects/e-value/versions/7")
    assert r.json() == {"error_code": 40402, "message": "Version 7 not found."}
    assert h.get("/subjects/none/versions").json()["message"] == "Subject 'none' not found."
    for body, code in [({"schema": "{not json"}, 42201), ({"schema": '{"type":"nope"}'}, 42201),
                       ({"schema": ""}, 42201), ({}, 42201),
                       ({"schema": '"int"', "schemaType": "XML"}, 42201)]:
        r = registry.post("/subjects/e-value/versions", body)
        assert (r.status_code, r.json()["error_code"]) == (422, code), body
    r = h.post("/subjects/e-value/versions", content=b"{", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error_code"]) == (400, 400)
    r = h.post("/subjects/e-value/versions", content=b"[1]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = h.post("/subjects/e-value/versions", content=b"{}", headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.json()["error_code"]) == (415, 415)
    r = h.delete("/schemas/types")
    assert (r.status_code, r.json()["error_code"]) == (405, 405)
    # Unknown fields are accepted; metadata and ruleSet are kept.
    body = {"schema": '"string"', "metadata": {"properties": {"owner": "team-a"}},
            "ruleSet": {"domainRules": []}, "somethingNew": 1}
    assert registry.post("/subjects/m-value/versions", body).status_code == 200
    got = h.get("/subjects/m-value/versions/1").json()
    assert got["metadata"] == {"properties": {"owner": "team-a"}} and got["ruleSet"] == {"domainRules": []}
    assert "schemaType" not in got  # AVRO is implied, as Confluent sends it


def test_content_types_are_accepted_and_sent(registry):
    for media in ["application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json", "application/json"]:
        r = registry.http.post("/subjects/ct-value/versions", content=b'{"schema": "\\"long\\""}',
                               headers={"Content-Type": media, "Accept": media})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media
    r = registry.http.get("/subjects", headers={"Accept": "*/*"})
    assert r.headers["content-type"] == "application/vnd.schemaregistry.v1+json"
    assert registry.http.get("/schemas/types").json() == ["AVRO", "JSON", "PROTOBUF"]
    assert registry.http.get("/subjects/ct-value/versions/latest/schema").json() == "long"
    assert registry.http.get("/").json() == {}


def test_modes_readonly_and_import(registry):
    h = registry.http
    client = registry.client()
    assert h.get("/mode").json() == {"mode": "READWRITE"}
    # IMPORT on a registry with subjects needs force.
    client.register_schema("i-value", Schema(V1, "AVRO"))
    r = h.put("/mode", json={"mode": "IMPORT"})
    assert (r.status_code, r.json()["error_code"]) == (422, 42205)
    assert h.put("/mode?force=true", json={"mode": "IMPORT"}).json() == {"mode": "IMPORT"}
    # In IMPORT mode an id and version are given and compatibility is not checked.
    r = registry.post("/subjects/imported-value/versions", {"schema": BAD, "id": 500, "version": 3})
    assert r.json() == {"id": 500}
    assert h.get("/subjects/imported-value/versions").json() == [3]
    r = registry.post("/subjects/other-value/versions", {"schema": V2, "id": 500})
    assert (r.status_code, r.json()["error_code"]) == (422, 42205)
    assert h.put("/mode", json={"mode": "READONLY"}).json() == {"mode": "READONLY"}
    r = registry.post("/subjects/i-value/versions", {"schema": V2})
    assert (r.status_code, r.json()["error_code"]) == (422, 42205)
    r = h.put("/mode", json={"mode": "SOMETIMES"})
    assert (r.status_code, r.json()["error_code"]) == (422, 42204)
    assert h.put("/mode", json={"mode": "READWRITE"}).status_code == 200
    # Ids handed out after an import never collide with imported ones.
    assert client.register_schema("i-value", Schema(V2, "AVRO")) > 500
    # Outside IMPORT mode an id in the request is refused.
    r = registry.post("/subjects/i-value/versions", {"schema": '"int"', "id": 900})
    assert (r.status_code, r.json()["error_code"]) == (422, 42205)


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_ids_versions_configs_and_modes_survive_restart(registry, kill):
    client = registry.client()
    id1 = client.register_schema("r-value", Schema(V1, "AVRO"))
    id2 = client.register_schema("r-value", Schema(V2, "AVRO"))
    client.set_compatibility("r-value", "FULL_TRANSITIVE")
    client.set_compatibility(None, "FORWARD")
    assert registry.http.delete("/subjects/r-value/versions/1").json() == 1
    assert registry.http.put("/mode/r-value", json={"mode": "READONLY"}).status_code == 200
    restart(registry, kill=kill)
    client = registry.client()
    assert registry.http.get("/subjects/r-value/versions?deleted=true").json() == [1, 2]
    assert registry.http.get("/subjects/r-value/versions").json() == [2]
    assert client.get_version("r-value", 2).schema_id == id2
    assert client.get_schema(id1).schema_str.startswith('{"type": "record"')
    assert client.get_compatibility("r-value") == "FULL_TRANSITIVE"
    assert registry.http.get("/config").json() == {"compatibilityLevel": "FORWARD"}
    assert registry.http.get("/mode/r-value").json() == {"mode": "READONLY"}
    registry.http.delete("/mode/r-value")
    # The id counter survived: a new schema gets a new id.
    assert client.register_schema("fresh-value", Schema(BAD, "AVRO")) == id2 + 1


def test_the_schemas_cli_registers_checks_and_deletes(registry, tmp_path):
    import subprocess

    from conftest import HERALD_BIN
    broker = registry.broker
    subject = unique("cli") + "-value"
    v1 = tmp_path / "v1.avsc"
    v1.write_text('{"type":"record","name":"Order","fields":[{"name":"id","type":"string"}]}')
    v2_ok = tmp_path / "v2.avsc"
    v2_ok.write_text('{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},'
                     '{"name":"note","type":"string","default":""}]}')
    v2_bad = tmp_path / "bad.avsc"
    v2_bad.write_text('{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}')

    def cli(*args, ok=True):
        r = subprocess.run([str(HERALD_BIN), "schemas", *args, "--registry", broker.registry_url],
                           capture_output=True, text=True, timeout=30)
        if ok:
            assert r.returncode == 0, r.stderr
        return r

    first = cli("register", subject, "-f", str(v1)).stdout.strip()
    assert first.isdigit()
    assert cli("register", subject, "-f", str(v1)).stdout.strip() == first
    assert subject in cli("list").stdout.split()
    assert cli("list", subject).stdout.split() == ["1"]
    assert json.loads(cli("get", subject).stdout)["id"] == int(first)
    assert "Order" in json.loads(cli("get", "--id", first).stdout)["schema"]
    assert cli("check", subject, "-f", str(v2_ok)).stdout.strip() == "compatible"
    bad = cli("check", subject, "-f", str(v2_bad), ok=False)
    assert bad.returncode == 1 and "incompatible" in bad.stderr, bad.stderr
    assert cli("config", subject, "--set", "full_transitive").stdout.strip() == "FULL_TRANSITIVE"
    assert cli("config", subject).stdout.strip() == "FULL_TRANSITIVE"
    assert cli("delete", subject).stdout.split() == ["1"]
    assert cli("delete", subject, "--permanent").stdout.split() == ["1"]
    missing = cli("get", subject, ok=False)
    assert missing.returncode != 0 and "not found" in missing.stderr.lower(), missing.stderr


def test_the_registry_api_under_schemathesis_never_answers_5xx(registry):
    import os
    import subprocess
    import sys
    from pathlib import Path

    broker = registry.broker
    reg = SchemaRegistryClient({"url": broker.registry_url})
    reg.register_schema("st-value", Schema('{"type":"record","name":"R","fields":[]}', "AVRO"))
    spec = httpx.get(f"{broker.registry_url}/openapi.json").json()
    assert "/subjects/{subject}/versions" in spec["paths"]
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "run", f"{broker.registry_url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "30", "--no-color", "--seed", "1",
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")},
    )
    assert result.returncode == 0, f"schemathesis found problems:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
