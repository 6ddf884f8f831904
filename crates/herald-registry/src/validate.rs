//! Produce-time schema validation: the broker's [`RecordValidator`] backed by this
//! registry (see `herald_broker::schema_check`). A record's key or value must be in the
//! Confluent wire format (magic byte 0, a 4-byte big-endian schema id, for Protobuf the
//! message indexes, then the payload) with a schema id registered under the subject the
//! topic's strategy names; at the `payload` level the payload must also decode with that
//! schema (Avro datum with nothing left over, JSON valid against the JSON Schema,
//! Protobuf a message of the indexed type).

use std::sync::Arc;

use herald_broker::schema_check::{RecordValidator, Rule, SubjectStrategy};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::registry::Registry;
use crate::schema::ParsedSchema;

/// The wire format's first byte.
const MAGIC: u8 = 0;
/// Most Protobuf message indexes a payload may give (nesting depth).
const MESSAGE_INDEXES_MAX: usize = 64;

pub struct Validator {
    registry: Arc<Registry>,
    /// Refusals by topic.
    refusals: Family<Vec<(String, String)>, Counter>,
}

impl Validator {
    pub fn new(registry: Arc<Registry>) -> Validator {
        Validator {
            registry,
            refusals: Family::default(),
        }
    }

    /// Register the refusal counter for `/metrics`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "herald_schema_validation_refusals",
            "Records refused on produce by schema validation, per topic",
            self.refusals.clone(),
        );
    }

    fn check(&self, topic: &str, rule: &Rule, bytes: &[u8]) -> Result<(), String> {
        let (&magic, rest) = bytes
            .split_first()
            .ok_or("is empty: no schema registry magic byte")?;
        if magic != MAGIC {
            return Err(format!(
                "does not start with the schema registry's magic byte 0 (it starts with {magic:#04x})"
            ));
        }
        let id_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("ends before its 4-byte schema id")?;
        let id = u32::from_be_bytes(id_bytes);
        let payload = &rest[4..];
        let parsed = self
            .registry
            .parsed_schema(id)
            .map_err(|_| format!("names schema id {id}, which is not registered"))?;
        let (indexes, payload) = match parsed.as_ref() {
            ParsedSchema::Protobuf(_) => message_indexes(payload)?,
            _ => (Vec::new(), payload),
        };
        let subject = subject(topic, rule, &parsed, &indexes)?;
        let registered = self
            .registry
            .versions_of_id(id, false)
            .map_err(|_| format!("names schema id {id}, which is not registered"))?;
        if !registered.iter().any(|(s, _)| *s == subject) {
            return Err(format!(
                "names schema id {id}, which is not registered under subject {subject}"
            ));
        }
        if rule.payload {
            decode(&parsed, &indexes, payload)
                .map_err(|e| format!("does not match schema {id} ({subject}): {e}"))?;
        }
        Ok(())
    }
}

impl RecordValidator for Validator {
    fn validate(&self, topic: &str, rule: &Rule, bytes: Option<&[u8]>) -> Result<(), String> {
        match bytes {
            None => Err("is null: no schema id".to_string()),
            Some(b) => self.check(topic, rule, b),
        }
    }

    fn refused(&self, topic: &str) {
        self.refusals
            .get_or_create(&vec![("topic".to_string(), topic.to_string())])
            .inc();
    }
}

/// The subject the rule's strategy names for this record.
fn subject(
    topic: &str,
    rule: &Rule,
    parsed: &ParsedSchema,
    indexes: &[i64],
) -> Result<String, String> {
    let part = if rule.is_key { "key" } else { "value" };
    Ok(match rule.strategy {
        SubjectStrategy::TopicName => format!("{topic}-{part}"),
        SubjectStrategy::RecordName => record_name(parsed, indexes)?,
        SubjectStrategy::TopicRecordName => format!("{topic}-{}", record_name(parsed, indexes)?),
    })
}

/// The record type's full name, as Confluent's record name strategies take it.
fn record_name(parsed: &ParsedSchema, indexes: &[i64]) -> Result<String, String> {
    match parsed {
        ParsedSchema::Avro(s) => match &s.root {
            apache_avro::Schema::Record(r) => Ok(r.name.fullname(None)),
            apache_avro::Schema::Enum(e) => Ok(e.name.fullname(None)),
            apache_avro::Schema::Fixed(f) => Ok(f.name.fullname(None)),
            _ => Err(
                "has an Avro schema that is not a named type (record name strategies need one)"
                    .into(),
            ),
        },
        ParsedSchema::Json(s) => s
            .document()
            .get("title")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                "has a JSON Schema without a title (record name strategies need one)".into()
            }),
        ParsedSchema::Protobuf(s) => message(s, indexes).map(|m| m.full_name().to_string()),
    }
}

/// The message a Protobuf payload's indexes name: the first top-level message for an
/// empty list (Confluent writes a single 0 for it), else the path of indexes.
fn message(
    s: &crate::protobuf::ProtobufSchema,
    indexes: &[i64],
) -> Result<prost_reflect::MessageDescriptor, String> {
    let path: &[i64] = if indexes.is_empty() { &[0] } else { indexes };
    let pick = |list: Vec<prost_reflect::MessageDescriptor>, i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| list.into_iter().nth(i))
            .ok_or_else(|| format!("names message index {i}, which the schema does not have"))
    };
    let mut current = pick(s.file.messages().collect(), path[0])?;
    for &i in &path[1..] {
        current = pick(current.child_messages().collect(), i)?;
    }
    Ok(current)
}

/// Confluent's Protobuf message indexes: a zigzag varint count, then that many zigzag
/// varints (a count of 0 means the first message). Returns them and the payload after.
fn message_indexes(bytes: &[u8]) -> Result<(Vec<i64>, &[u8]), String> {
    let (count, mut rest) = zigzag(bytes).ok_or("ends inside its Protobuf message indexes")?;
    let count = usize::try_from(count)
        .ok()
        .filter(|c| *c <= MESSAGE_INDEXES_MAX)
        .ok_or_else(|| format!("gives {count} Protobuf message indexes"))?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (i, after) = zigzag(rest).ok_or("ends inside its Protobuf message indexes")?;
        out.push(i);
        rest = after;
    }
    Ok((out, rest))
}

fn zigzag(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let mut value: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((decoded, &bytes[i + 1..]));
        }
    }
    None
}

fn decode(parsed: &ParsedSchema, indexes: &[i64], payload: &[u8]) -> Result<(), String> {
    match parsed {
        ParsedSchema::Avro(s) => {
            let mut reader = payload;
            let named: Vec<&apache_avro::Schema> = s.named.values().collect();
            apache_avro::reader::datum::GenericDatumReader::builder(&s.root)
                .writer_schemata(named)
                .and_then(|b| b.build())
                .and_then(|r| r.read_value(&mut reader))
                .map_err(|e| format!("not an Avro datum of the schema: {e}"))?;
            if !reader.is_empty() {
                return Err(format!("{} bytes left after the Avro datum", reader.len()));
            }
            Ok(())
        }
        ParsedSchema::Json(s) => {
            let value: serde_json::Value =
                serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
            match jsonschema::validator_for(s.document()) {
                Ok(v) => match v.iter_errors(&value).next() {
                    None => Ok(()),
                    Some(e) => Err(format!("at {}: {e}", e.instance_path())),
                },
                // A schema whose references the validator cannot resolve on its own: the
                // payload is only checked to be JSON.
                Err(_) => Ok(()),
            }
        }
        ParsedSchema::Protobuf(s) => {
            let descriptor = message(s, indexes)?;
            prost_reflect::DynamicMessage::decode(descriptor, payload)
                .map(|_| ())
                .map_err(|e| format!("not a Protobuf message of the schema: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_indexes_read_as_confluent_writes_them() {
        // A single 0 (the first message) is written as count 0.
        assert_eq!(message_indexes(&[0, 9]).unwrap(), (vec![], &[9u8][..]));
        // [1, 2]: count 2 (zigzag 4), 1 (2), 2 (4).
        assert_eq!(
            message_indexes(&[4, 2, 4, 7]).unwrap(),
            (vec![1, 2], &[7u8][..])
        );
        assert!(message_indexes(&[0x80]).is_err());
        assert!(message_indexes(&[200, 1]).is_err());
    }
}
