//! What a schema is to the registry: its type, its text, the references it imports, and
//! its parsed form (one per format). The parsed form gives the schema's identity (the
//! text two registrations must share to get the same id) and the compatibility check.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::avro::AvroSchema;
use crate::compat::Incompatibility;
use crate::json::JsonSchema;
use crate::protobuf::ProtobufSchema;

/// The formats a schema may be written in; `schemaType` omitted means AVRO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    #[default]
    Avro,
    Json,
    Protobuf,
}

impl SchemaType {
    /// The formats this registry accepts, as `GET /schemas/types` lists them.
    pub const SUPPORTED: &'static [SchemaType] =
        &[SchemaType::Avro, SchemaType::Json, SchemaType::Protobuf];

    pub fn parse(text: &str) -> Option<SchemaType> {
        match text.to_ascii_uppercase().as_str() {
            "AVRO" => Some(SchemaType::Avro),
            "JSON" => Some(SchemaType::Json),
            "PROTOBUF" => Some(SchemaType::Protobuf),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
            SchemaType::Protobuf => "PROTOBUF",
        }
    }
}

/// A schema another one imports: by the name the importer uses for it, and where it is
/// registered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

/// A schema as stored under its id. `metadata` and `rule_set` are kept as sent (data
/// contracts' rules are stored, not executed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSchema {
    #[serde(default)]
    pub schema_type: SchemaType,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_set: Option<Value>,
}

/// A schema parsed by its format's library, with what its references brought in.
#[derive(Debug)]
pub enum ParsedSchema {
    Avro(AvroSchema),
    Json(JsonSchema),
    Protobuf(ProtobufSchema),
}

impl ParsedSchema {
    /// Parse `text` of `schema_type`; `imports` are the referenced schemas (transitively,
    /// dependencies first) with the names the schema imports them by.
    pub fn parse(
        schema_type: SchemaType,
        text: &str,
        imports: &[(String, Arc<StoredSchema>)],
    ) -> Result<ParsedSchema, String> {
        match schema_type {
            SchemaType::Avro => AvroSchema::parse(text, imports).map(ParsedSchema::Avro),
            SchemaType::Json => JsonSchema::parse(text, imports).map(ParsedSchema::Json),
            SchemaType::Protobuf => {
                ProtobufSchema::parse(text, imports).map(ParsedSchema::Protobuf)
            }
        }
    }

    pub fn schema_type(&self) -> SchemaType {
        match self {
            ParsedSchema::Avro(_) => SchemaType::Avro,
            ParsedSchema::Json(_) => SchemaType::Json,
            ParsedSchema::Protobuf(_) => SchemaType::Protobuf,
        }
    }

    /// The text that decides identity: equal for schemas that differ only in whitespace
    /// or the order of JSON attributes; with `normalize`, also in notation that does not
    /// change meaning.
    pub fn canonical(&self, normalize: bool) -> String {
        match self {
            ParsedSchema::Avro(s) => s.canonical(normalize),
            ParsedSchema::Json(s) => s.canonical(normalize),
            ParsedSchema::Protobuf(s) => s.canonical(normalize),
        }
    }

    /// The schema in `format` (`?format=`), when the format has that form: Protobuf's
    /// `serialized` is the base64 `FileDescriptorProto`. `None`: the text as stored.
    pub fn formatted(&self, format: &str) -> Option<String> {
        match self {
            ParsedSchema::Protobuf(s) if format.eq_ignore_ascii_case("serialized") => {
                Some(s.serialized())
            }
            _ => None,
        }
    }

    /// What stops data written with `writer` from being read with `reader` (self).
    pub fn can_read(&self, writer: &ParsedSchema) -> Vec<Incompatibility> {
        match (self, writer) {
            (ParsedSchema::Avro(r), ParsedSchema::Avro(w)) => crate::compat::avro::check(r, w),
            (ParsedSchema::Json(r), ParsedSchema::Json(w)) => crate::compat::json::check(r, w),
            (ParsedSchema::Protobuf(r), ParsedSchema::Protobuf(w)) => {
                crate::compat::protobuf::check(r, w)
            }
            (r, w) => vec![Incompatibility::new(
                "TYPE_MISMATCH",
                "",
                format!(
                    "Incompatible because of different schema type: {} and {}",
                    r.schema_type().name(),
                    w.schema_type().name()
                ),
            )],
        }
    }
}

/// `value` as compact JSON with every object's keys in sorted order, whatever serde_json's
/// map type (the workspace turns on `preserve_order`).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*key).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let a: Value = serde_json::from_str(r#"{ "b": [1, {"y":1,"x":2}], "a": "s" }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"s","b":[1,{"x":2,"y":1}]}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":"s","b":[1,{"x":2,"y":1}]}"#);
    }
}
