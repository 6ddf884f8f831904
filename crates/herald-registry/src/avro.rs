//! Avro schemas, parsed by `apache-avro` (names resolved, defaults checked) with the
//! schemas they reference available by name.
//!
//! Identity is the schema's JSON with sorted attributes and no whitespace, so it keeps
//! docs, defaults and custom properties (Avro's Parsing Canonical Form drops defaults,
//! which would give two schemas that read data differently one id). With `normalize`,
//! notation that means the same is also made equal: `{"type": "int"}` is `"int"`.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use serde_json::Value;

use crate::schema::{SchemaType, StoredSchema, canonical_json};

#[derive(Debug)]
pub struct AvroSchema {
    pub root: Schema,
    /// Every named type (record, enum, fixed) by full name, from the schema and its
    /// references: what a `Schema::Ref` points at.
    pub named: HashMap<String, Schema>,
    json: Value,
}

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

impl AvroSchema {
    pub fn parse(
        text: &str,
        imports: &[(String, Arc<StoredSchema>)],
    ) -> Result<AvroSchema, String> {
        let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let imported: Vec<&str> = imports
            .iter()
            .filter(|(_, s)| s.schema_type == SchemaType::Avro)
            .map(|(_, s)| s.schema.as_str())
            .collect();
        let (root, schemata) = if imported.is_empty() {
            (Schema::parse(&json).map_err(|e| e.to_string())?, Vec::new())
        } else {
            Schema::parse_str_with_list(text, &imported).map_err(|e| e.to_string())?
        };
        let mut named = HashMap::new();
        for schema in schemata.iter().chain(std::iter::once(&root)) {
            collect_named(schema, &mut named);
        }
        Ok(AvroSchema { root, named, json })
    }

    pub fn canonical(&self, normalize: bool) -> String {
        if normalize {
            canonical_json(&normalized(&self.json))
        } else {
            canonical_json(&self.json)
        }
    }

    /// The definition a schema stands for: itself, or what its `Ref` names.
    pub fn resolve<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.named.get(&name.fullname(None)).unwrap_or(schema),
            other => other,
        }
    }
}

fn collect_named(schema: &Schema, into: &mut HashMap<String, Schema>) {
    match schema {
        Schema::Record(r) => {
            into.insert(r.name.fullname(None), schema.clone());
            for field in &r.fields {
                collect_named(&field.schema, into);
            }
        }
        Schema::Enum(e) => {
            into.insert(e.name.fullname(None), schema.clone());
        }
        Schema::Fixed(f) => {
            into.insert(f.name.fullname(None), schema.clone());
        }
        Schema::Array(a) => collect_named(&a.items, into),
        Schema::Map(m) => collect_named(&m.types, into),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_named(v, into);
            }
        }
        _ => {}
    }
}

/// The same schema in its plainest notation: a primitive type written as an object with
/// only `type` becomes the type's name.
fn normalized(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::String(t)) = map.get("type")
                && PRIMITIVES.contains(&t.as_str())
            {
                return Value::String(t.clone());
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), normalized(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AvroSchema {
        AvroSchema::parse(text, &[]).unwrap()
    }

    #[test]
    fn identity_ignores_whitespace_and_attribute_order_but_keeps_defaults() {
        let a = parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#,
        );
        let b = parse(
            r#"{ "name": "R", "type": "record",
                 "fields": [ {"default": 1, "type": "int", "name": "a"} ] }"#,
        );
        let c = parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":2}]}"#,
        );
        assert_eq!(a.canonical(false), b.canonical(false));
        assert_ne!(a.canonical(false), c.canonical(false));
    }

    #[test]
    fn normalize_makes_plain_and_object_notation_equal() {
        let a =
            parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"int"}}]}"#);
        let b = parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#);
        assert_ne!(a.canonical(false), b.canonical(false));
        assert_eq!(a.canonical(true), b.canonical(true));
    }

    #[test]
    fn bad_schemas_are_errors() {
        for bad in [
            "",
            "{",
            r#"{"type":"record","name":"R"}"#,
            r#"{"type":"nope"}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Missing"}]}"#,
            &format!("{}1{}", "[".repeat(500), "]".repeat(500)),
        ] {
            assert!(AvroSchema::parse(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_bring_their_named_types() {
        let address = Arc::new(StoredSchema {
            schema_type: SchemaType::Avro,
            schema: r#"{"type":"record","name":"Address","namespace":"acme","fields":[{"name":"city","type":"string"}]}"#.into(),
            references: vec![],
            metadata: None,
            rule_set: None,
        });
        let text = r#"{"type":"record","name":"Customer","namespace":"acme","fields":[{"name":"home","type":"acme.Address"}]}"#;
        assert!(AvroSchema::parse(text, &[]).is_err());
        let parsed = AvroSchema::parse(text, &[("acme.Address".into(), address)]).unwrap();
        assert!(parsed.named.contains_key("acme.Address"));
        assert!(parsed.named.contains_key("acme.Customer"));
    }
}
