"""The schema registry's JSON Schema and Protobuf formats against the real herald binary:
confluent-kafka's ProtobufSerializer (with an import, so references are exercised) and
JSONSerializer (with a reference) produce through Herald's Kafka port and the matching
deserializers consume, fetching every schema back from Herald; evolution under each
compatibility level, transitive levels checked against every earlier version.

The Protobuf message classes are built at test time from FileDescriptorProtos made here
(protobuf's descriptor_pool and message_factory): no generated code, no protoc."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from herald_support import unique

pytestmark = pytest.mark.timeout(60)

JSON_MEDIA = {"Content-Type": "application/vnd.schemaregistry.v1+json"}


@pytest.fixture
def registry(broker):
    http = httpx.Client(base_url=broker.registry_url, timeout=10)
    yield broker, http
    http.close()


def client_of(broker) -> SchemaRegistryClient:
    # A fresh client: nothing answered from its cache.
    return SchemaRegistryClient({"url": broker.registry_url})


def consume(broker, topic: str, count: int, decode) -> list:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"),
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        assert msg.value()[0] == 0, "Confluent wire format: magic byte 0"
        got.append(decode(msg.value(), SerializationContext(topic, MessageField.VALUE)))
    consumer.close()
    return got


# --- Protobuf -----------------------------------------------------------------------

def order_classes():
    """shop/customer.proto (Customer) and shop/order.proto (OrderPlaced, importing
    customer.proto and the well-known google/protobuf/timestamp.proto), as classes."""
    F = descriptor_pb2.FieldDescriptorProto
    customer = descriptor_pb2.FileDescriptorProto(name="shop/customer.proto", package="shop", syntax="proto3")
    c = customer.message_type.add(name="Customer")
    c.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    c.field.add(name="vip", number=2, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)

    order = descriptor_pb2.FileDescriptorProto(
        name="shop/order.proto", package="shop", syntax="proto3",
        dependency=["shop/customer.proto", "google/protobuf/timestamp.proto"])
    o = order.message_type.add(name="OrderPlaced")
    o.field.add(name="order_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    o.field.add(name="cents", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    o.field.add(name="customer", number=3, type=F.TYPE_MESSAGE, type_name=".shop.Customer",
                label=F.LABEL_OPTIONAL)
    o.field.add(name="at", number=4, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp",
                label=F.LABEL_OPTIONAL)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(customer)
    pool.Add(order)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.OrderPlaced")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Customer")))


def test_protobuf_serializer_with_an_import_produces_and_deserializer_consumes(registry):
    broker, http = registry
    OrderPlaced, Customer = order_classes()
    topic = unique("orders-pb")
    client = client_of(broker)
    serializer = ProtobufSerializer(OrderPlaced, client)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    sent = []
    for i in range(5):
        m = OrderPlaced(order_id=f"ORD{i}", cents=i * 100, customer=Customer(name=f"c{i}", vip=i % 2 == 0))
        m.at.FromSeconds(1_700_000_000 + i)
        sent.append(m)
        producer.produce(topic, value=serializer(m, SerializationContext(topic, MessageField.VALUE)))
    assert producer.flush(10) == 0

    # The import is its own subject, named by its path, and referenced; the well-known
    # timestamp.proto is built in, so neither registered nor referenced.
    subject = f"{topic}-value"
    assert sorted(client.get_subjects()) == sorted([subject, "shop/customer.proto"])
    latest = client.get_latest_version(subject)
    assert latest.schema.schema_type == "PROTOBUF"
    assert [(r.name, r.subject, r.version) for r in latest.schema.references] == [
        ("shop/customer.proto", "shop/customer.proto", 1)]
    assert http.get(f"/subjects/shop%2Fcustomer.proto/versions/1/referencedby").json() == [latest.schema_id]

    # A fresh client: the deserializer fetches the writer's schema and its import by id
    # and version, as base64 descriptors (?format=serialized).
    deserializer = ProtobufDeserializer(OrderPlaced, {}, client_of(broker))
    got = consume(broker, topic, len(sent), deserializer)
    assert [g.SerializeToString() for g in got] == [s.SerializeToString() for s in sent]
    assert got[3].customer.name == "c3" and got[3].at.seconds == 1_700_000_003

    # Registering again (a new serializer, a new client) gives the same id.
    again = ProtobufSerializer(OrderPlaced, client_of(broker))
    framed = again(sent[0], SerializationContext(topic, MessageField.VALUE))
    assert int.from_bytes(framed[1:5], "big") == latest.schema_id
    assert len(client.get_versions(subject)) == 1


PROTO_V1 = """syntax = "proto3";
package shop;
message Payment {
  string payment_id = 1;
  int32 cents = 2;
}
"""


def test_protobuf_text_and_its_serialized_descriptor_are_one_schema(registry):
    broker, http = registry
    r = http.post("/subjects/pay-value/versions", json={"schema": PROTO_V1, "schemaType": "PROTOBUF"},
                  headers=JSON_MEDIA)
    assert r.status_code == 200, r.text
    schema_id = r.json()["id"]
    # Without a format: the text as registered; serialized: the descriptor.
    assert http.get(f"/schemas/ids/{schema_id}").json()["schema"] == PROTO_V1.strip()
    serialized = http.get(f"/schemas/ids/{schema_id}?format=serialized").json()["schema"]
    fd = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(serialized))
    assert fd.package == "shop" and [f.name for f in fd.message_type[0].field] == ["payment_id", "cents"]
    versioned = http.get("/subjects/pay-value/versions/1?format=serialized").json()["schema"]
    assert versioned == serialized
    # The descriptor (in another subject), or the text laid out otherwise, is the same schema.
    r = http.post("/subjects/pay2-value/versions", json={"schema": serialized, "schemaType": "PROTOBUF"},
                  headers=JSON_MEDIA)
    assert r.json() == {"id": schema_id}
    spaced = PROTO_V1.replace("\n", "\n\n").replace("  ", "    ") + "// a comment\n"
    r = http.post("/subjects/pay-value", json={"schema": spaced, "schemaType": "PROTOBUF"}, headers=JSON_MEDIA)
    assert r.status_code == 200 and r.json()["id"] == schema_id


def test_bad_schemas_of_each_format_are_42201_saying_why(registry):
    _, http = registry
    for schema_type, text, expected in [
        ("PROTOBUF", "message {", "does not parse"),
        ("PROTOBUF", 'syntax = "proto3"; message M { Missing m = 1; }', "Missing"),
        ("PROTOBUF", 'syntax = "proto3"; import "nowhere.proto"; message M {}', "nowhere.proto"),
        ("JSON", "{not json", "not JSON"),
        ("JSON", '{"type": "nope"}', "not valid"),
        ("JSON", '{"$ref": "elsewhere.json"}', "elsewhere.json"),
        ("JSON", '{"$schema": "http://example.com/my-draft"}', "names no draft"),
    ]:
        r = http.post("/subjects/bad-value/versions", json={"schema": text, "schemaType": schema_type},
                      headers=JSON_MEDIA)
        assert (r.status_code, r.json()["error_code"]) == (422, 42201), (text, r.text)
        assert expected in r.json()["message"], (text, r.json())
    deep = '{"not":' * 5000 + "{}" + "}" * 5000
    r = http.post("/subjects/bad-value/versions", json={"schema": deep, "schemaType": "JSON"}, headers=JSON_MEDIA)
    assert r.json()["error_code"] == 42201
    assert http.get("/subjects").json() == []


# --- JSON Schema --------------------------------------------------------------------

ADDRESS = """{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
 "properties": {"city": {"type": "string"}, "zip": {"type": "string", "maxLength": 10}},
 "required": ["city"]}"""
ORDER = """{"$schema": "http://json-schema.org/draft-07/schema#", "title": "OrderPlaced",
 "type": "object",
 "properties": {"order_id": {"type": "string"}, "amount": {"type": "integer", "minimum": 0},
                "ship_to": {"$ref": "address.json"}},
 "required": ["order_id", "amount"]}"""


def test_json_serializer_with_a_reference_produces_and_deserializer_consumes(registry):
    broker, http = registry
    client = client_of(broker)
    address_id = client.register_schema("address", Schema(ADDRESS, "JSON"))
    topic = unique("orders-json")
    schema = Schema(ORDER, "JSON", [SchemaReference("address.json", "address", 1)])
    serializer = JSONSerializer(schema, client)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    sent = [{"order_id": f"ORD{i}", "amount": i, "ship_to": {"city": "Lyon", "zip": f"6900{i}"}}
            for i in range(5)]
    for value in sent:
        producer.produce(topic, value=serializer(value, SerializationContext(topic, MessageField.VALUE)))
    assert producer.flush(10) == 0
    # The serializer validates against the schema with its reference resolved.
    with pytest.raises(Exception):
        serializer({"order_id": "x", "amount": -1}, SerializationContext(topic, MessageField.VALUE))

    subject = f"{topic}-value"
    latest = client.get_latest_version(subject)
    assert latest.schema.schema_type == "JSON" and latest.schema_id != address_id
    assert [(r.name, r.subject, r.version) for r in latest.schema.references] == [("address.json", "address", 1)]

    # A fresh client, no schema given: the deserializer fetches the writer's by id.
    deserializer = JSONDeserializer(None, schema_registry_client=client_of(broker))
    assert consume(broker, topic, len(sent), deserializer) == sent

    # Key order and whitespace do not make another schema.
    reordered = Schema('{"required":["order_id","amount"],"type":"object","title":"OrderPlaced",'
                       '"properties":{"ship_to":{"$ref":"address.json"},"amount":{"minimum":0,"type":"integer"},'
                       '"order_id":{"type":"string"}},"$schema":"http://json-schema.org/draft-07/schema#"}',
                       "JSON", [SchemaReference("address.json", "address", 1)])
    assert client_of(broker).register_schema(subject, reordered) == latest.schema_id


# --- Evolution ----------------------------------------------------------------------

def json_obj(props: str, closed: bool = True, extra: str = "") -> str:
    tail = ',"additionalProperties":false' if closed else ""
    return '{"type":"object","properties":{%s}%s%s}' % (props, tail, extra)


def proto(fields: str) -> str:
    return 'syntax = "proto3"; package shop; message M { %s }' % fields


# (format, level, v1, a change the level accepts, a change it refuses, the rule named)
EVOLUTION = [
    ("JSON", "BACKWARD", json_obj('"a":{"type":"string"}'),
     json_obj('"a":{"type":"string"},"b":{"type":"integer"}'),
     json_obj('"b":{"type":"integer"}'), "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("JSON", "FORWARD", json_obj('"a":{"type":"string"}', closed=False, extra=',"required":["a"]'),
     json_obj('"a":{"type":"string"},"b":{"type":"integer"}', closed=False, extra=',"required":["a"]'),
     json_obj('"a":{"type":"string"}', closed=False), "REQUIRED_ATTRIBUTE_ADDED"),
    ("JSON", "FULL", json_obj('"a":{"type":"string"}'),
     json_obj('"a":{"type":"string","description":"the a"}'),
     json_obj('"a":{"type":"string"},"b":{"type":"integer"}'), "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    ("PROTOBUF", "BACKWARD", proto("string a = 1;"), proto("string a = 1; int64 b = 2;"),
     proto("int32 a = 1;"), "FIELD_SCALAR_KIND_CHANGED"),
    ("PROTOBUF", "FORWARD", proto("int32 a = 1;"), proto("int32 a = 1; string b = 2;"),
     proto("fixed32 a = 1;"), "FIELD_SCALAR_KIND_CHANGED"),
    ("PROTOBUF", "FULL", proto("int32 a = 1; string s = 2;"), proto("int64 a = 1; bytes s = 2;"),
     proto("int32 a = 1; message N {} N s = 2;"), "FIELD_KIND_CHANGED"),
]


@pytest.mark.parametrize("fmt,level,v1,good,bad,rule", EVOLUTION,
                         ids=[f"{e[0]}-{e[1]}" for e in EVOLUTION])
def test_each_level_accepts_compatible_and_refuses_incompatible_changes(registry, fmt, level, v1, good, bad, rule):
    broker, http = registry
    client = client_of(broker)
    subject = unique("evo") + "-value"
    client.set_compatibility(subject, level)
    client.register_schema(subject, Schema(v1, fmt))
    assert client.test_compatibility(subject, Schema(bad, fmt)) is False
    r = http.post(f"/compatibility/subjects/{subject}/versions/latest?verbose=true",
                  json={"schema": bad, "schemaType": fmt}, headers=JSON_MEDIA)
    assert r.json()["is_compatible"] is False and rule in " ".join(r.json()["messages"]), r.json()
    with pytest.raises(SchemaRegistryError) as e:
        client.register_schema(subject, Schema(bad, fmt))
    assert (e.value.http_status_code, e.value.error_code) == (409, 409)
    assert rule in e.value.error_message
    client.register_schema(subject, Schema(good, fmt))
    assert client.get_versions(subject) == [1, 2]


# (format, versions 1-3 registered without checks, a candidate compatible with version 3
# but not with version 1)
TRANSITIVE = [
    ("JSON", ['{"type":"string"}', '{"type":"number","maximum":5}', '{"type":"number","maximum":6}'],
     '{"type":"number","maximum":6,"description":"in euros"}'),
    ("PROTOBUF", [proto("string a = 1;"), proto("int32 a = 1;"), proto("uint32 a = 1;")],
     proto("int64 a = 1;")),
]


@pytest.mark.parametrize("fmt,versions,candidate", TRANSITIVE, ids=[t[0] for t in TRANSITIVE])
def test_transitive_levels_check_every_earlier_version(registry, fmt, versions, candidate):
    broker, _ = registry
    client = client_of(broker)
    subject = unique("trans") + "-value"
    client.set_compatibility(subject, "NONE")
    for text in versions:
        client.register_schema(subject, Schema(text, fmt))
    for plain, transitive in [("BACKWARD", "BACKWARD_TRANSITIVE"), ("FORWARD", "FORWARD_TRANSITIVE"),
                              ("FULL", "FULL_TRANSITIVE")]:
        client.set_compatibility(subject, plain)
        assert client.test_compatibility_all_versions(subject, Schema(candidate, fmt)) is True, plain
        client.set_compatibility(subject, transitive)
        assert client.test_compatibility_all_versions(subject, Schema(candidate, fmt)) is False, transitive
        with pytest.raises(SchemaRegistryError) as e:
            client.register_schema(subject, Schema(candidate, fmt))
        assert e.value.error_code == 409
        assert "oldSchemaVersion: 1" in e.value.error_message
        assert "oldSchemaVersion: 3" not in e.value.error_message
    client.set_compatibility(subject, "BACKWARD")
    client.register_schema(subject, Schema(candidate, fmt))
    assert client.get_versions(subject) == [1, 2, 3, 4]
