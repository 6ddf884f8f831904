//! Compatibility: whether a new schema may join a subject's versions, by the subject's
//! level. Each format has its own reader/writer rules (`avro.rs`, `json.rs`,
//! `protobuf.rs`); this file is what the levels mean, the same for every format:
//!
//! - BACKWARD: the new schema reads data written with the latest version;
//!   BACKWARD_TRANSITIVE: with every version.
//! - FORWARD: the latest version (every version, transitive) reads data written with
//!   the new schema.
//! - FULL: both; FULL_TRANSITIVE: both, with every version.
//! - NONE: anything goes.
//!
//! Soft-deleted versions take no part, as in Confluent's registry.

pub mod avro;
pub mod json;
pub mod protobuf;

use serde::{Deserialize, Serialize};

use crate::schema::ParsedSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub const DEFAULT: Level = Level::Backward;

    pub fn parse(text: &str) -> Option<Level> {
        Some(match text.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    /// (new schema reads old data, old schemas read new data)
    fn directions(self) -> (bool, bool) {
        match self {
            Level::None => (false, false),
            Level::Backward | Level::BackwardTransitive => (true, false),
            Level::Forward | Level::ForwardTransitive => (false, true),
            Level::Full | Level::FullTransitive => (true, true),
        }
    }
}

/// One reason two schemas are not compatible, in Confluent's terms: an error type
/// (Avro's SchemaCompatibility names, or the format's own), where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub error_type: &'static str,
    /// A JSON-pointer-like path into the schema, e.g. `/fields/1/type`.
    pub path: String,
    pub description: String,
    /// Confluent's `additionalInfo`: the field's name, or the types that differ; the
    /// path when nothing more telling is known.
    pub info: String,
}

impl Incompatibility {
    pub fn new(error_type: &'static str, path: &str, description: impl Into<String>) -> Self {
        Incompatibility {
            error_type,
            path: path.to_string(),
            description: description.into(),
            info: if path.is_empty() {
                "/".into()
            } else {
                path.to_string()
            },
        }
    }

    pub fn info(mut self, info: impl Into<String>) -> Self {
        self.info = info.into();
        self
    }
}

/// An earlier version a new schema is checked against.
pub struct Earlier<'a> {
    pub version: u32,
    pub text: &'a str,
    pub schema: &'a ParsedSchema,
}

/// The messages saying why `new` may not follow `earlier` (oldest first, soft-deleted
/// ones left out) at `level`; empty when it may. One group of messages per earlier
/// version that fails, shaped like Confluent's verbose output.
pub fn check(level: Level, new: &ParsedSchema, earlier: &[Earlier<'_>]) -> Vec<String> {
    let (backward, forward) = level.directions();
    if !backward && !forward {
        return Vec::new();
    }
    let against: &[Earlier<'_>] = if level.transitive() {
        earlier
    } else {
        match earlier.split_last() {
            Some((last, _)) => std::slice::from_ref(last),
            None => &[],
        }
    };
    let mut messages = Vec::new();
    // Newest first: the most relevant failure leads.
    for old in against.iter().rev() {
        let mut found = Vec::new();
        if backward {
            found.extend(
                new.can_read(old.schema)
                    .into_iter()
                    .map(|i| (i, "new", "old")),
            );
        }
        if forward {
            found.extend(
                old.schema
                    .can_read(new)
                    .into_iter()
                    .map(|i| (i, "old", "new")),
            );
        }
        if found.is_empty() {
            continue;
        }
        for (i, reader, writer) in found {
            let description = i
                .description
                .replace("{reader}", reader)
                .replace("{writer}", writer);
            messages.push(format!(
                "{{errorType:'{}', description:'{}', additionalInfo:'{}'}}",
                i.error_type, description, i.info
            ));
        }
        messages.push(format!("{{oldSchemaVersion: {}}}", old.version));
        messages.push(format!("{{oldSchema: '{}'}}", old.text));
        messages.push(format!(
            "{{validateFields: 'false', compatibility: '{}'}}",
            level.name()
        ));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaType;

    fn avro(text: &str) -> ParsedSchema {
        ParsedSchema::parse(SchemaType::Avro, text, &[]).unwrap()
    }

    fn rec(t: &str) -> String {
        format!(r#"{{"type":"record","name":"R","fields":[{{"name":"a","type":"{t}"}}]}}"#)
    }

    /// Which earlier versions fail, by level, for a new schema against versions
    /// double, float, int (oldest first).
    #[test]
    fn levels_pick_direction_and_versions() {
        let texts = [rec("double"), rec("float"), rec("int")];
        let parsed: Vec<ParsedSchema> = texts.iter().map(|t| avro(t)).collect();
        let earlier: Vec<Earlier<'_>> = parsed
            .iter()
            .zip(&texts)
            .enumerate()
            .map(|(i, (schema, text))| Earlier {
                version: i as u32 + 1,
                text,
                schema,
            })
            .collect();
        let failing = |level: Level, new: &str| -> Vec<u32> {
            let messages = check(level, &avro(&rec(new)), &earlier);
            let mut versions: Vec<u32> = messages
                .iter()
                .filter_map(|m| m.strip_prefix("{oldSchemaVersion: "))
                .filter_map(|m| m.trim_end_matches('}').parse().ok())
                .collect();
            versions.sort();
            versions
        };
        let cases: &[(Level, &str, &[u32])] = &[
            (Level::None, "string", &[]),
            (Level::Backward, "long", &[]),
            (Level::BackwardTransitive, "long", &[1, 2]),
            (Level::Backward, "string", &[3]),
            (Level::Forward, "long", &[3]),
            (Level::ForwardTransitive, "int", &[]),
            (Level::ForwardTransitive, "long", &[3]),
            (Level::Full, "int", &[]),
            (Level::FullTransitive, "int", &[1, 2]),
            (Level::FullTransitive, "double", &[2, 3]),
        ];
        for (level, new, expected) in cases {
            assert_eq!(&failing(*level, new), expected, "{level:?} with {new}");
        }
        assert!(check(Level::FullTransitive, &avro(&rec("int")), &[]).is_empty());
    }

    #[test]
    fn level_names_parse_in_any_case() {
        for level in [
            Level::None,
            Level::Backward,
            Level::BackwardTransitive,
            Level::Forward,
            Level::ForwardTransitive,
            Level::Full,
            Level::FullTransitive,
        ] {
            assert_eq!(Level::parse(&level.name().to_lowercase()), Some(level));
        }
        assert_eq!(Level::parse("sideways"), None);
    }
}
