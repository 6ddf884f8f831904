//! Avro's schema resolution rules (the specification's "Schema Resolution", as Java's
//! `SchemaCompatibility` applies them, which is what Confluent's registry runs): can data
//! written with `writer` be read with `reader`?
//!
//! - same primitive; promotions int -> long, float, double; long -> float, double;
//!   float -> double; string <-> bytes;
//! - records: the reader's name equals the writer's (unqualified) or one of the reader's
//!   aliases is the writer's full name; each reader field is found in the writer by name
//!   or by one of its aliases and is readable, or has a default;
//! - enums: names as records; writer symbols the reader lacks need a reader default;
//! - fixed: names as records, same size; arrays and maps by their items and values;
//! - unions: every writer branch readable by the reader (a reader union: by one of its
//!   branches); a non-union writer readable by some reader branch.
//!
//! Logical types are their underlying type here (a `date` is an `int`), as in Avro.
//! Descriptions say `{reader}` / `{writer}`; the caller names them new or old.

use std::collections::HashSet;

use apache_avro::Schema;
use apache_avro::schema::{
    EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordSchema, UuidSchema,
};

use crate::avro::AvroSchema;
use crate::compat::Incompatibility;

pub fn check(reader: &AvroSchema, writer: &AvroSchema) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader,
        writer,
        visiting: HashSet::new(),
        found: Vec::new(),
    };
    checker.check(&reader.root, &writer.root, "");
    checker.found
}

/// A schema as resolution sees it: logical types as their underlying type.
#[derive(Clone, Copy)]
enum View<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
    Unknown,
}

impl View<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            View::Null => "NULL",
            View::Boolean => "BOOLEAN",
            View::Int => "INT",
            View::Long => "LONG",
            View::Float => "FLOAT",
            View::Double => "DOUBLE",
            View::Bytes => "BYTES",
            View::String => "STRING",
            View::Array(_) => "ARRAY",
            View::Map(_) => "MAP",
            View::Union(_) => "UNION",
            View::Record(_) => "RECORD",
            View::Enum(_) => "ENUM",
            View::Fixed(_) => "FIXED",
            View::Unknown => "UNKNOWN",
        }
    }
}

fn view<'a>(schemas: &'a AvroSchema, schema: &'a Schema) -> View<'a> {
    match schemas.resolve(schema) {
        Schema::Null => View::Null,
        Schema::Boolean => View::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => View::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => View::Long,
        Schema::Float => View::Float,
        Schema::Double => View::Double,
        Schema::Bytes | Schema::BigDecimal => View::Bytes,
        Schema::String => View::String,
        Schema::Array(a) => View::Array(&a.items),
        Schema::Map(m) => View::Map(&m.types),
        Schema::Union(u) => View::Union(u.variants()),
        Schema::Record(r) => View::Record(r),
        Schema::Enum(e) => View::Enum(e),
        Schema::Fixed(f) | Schema::Duration(f) => View::Fixed(f),
        Schema::Decimal(d) => match &d.inner {
            InnerDecimalSchema::Bytes => View::Bytes,
            InnerDecimalSchema::Fixed(f) => View::Fixed(f),
        },
        Schema::Uuid(UuidSchema::String) => View::String,
        Schema::Uuid(UuidSchema::Bytes) => View::Bytes,
        Schema::Uuid(UuidSchema::Fixed(f)) => View::Fixed(f),
        Schema::Ref { .. } => View::Unknown,
    }
}

struct Checker<'a> {
    reader: &'a AvroSchema,
    writer: &'a AvroSchema,
    /// Record pairs being checked further up: a recursive type is compatible with
    /// itself unless something else says otherwise.
    visiting: HashSet<(String, String)>,
    found: Vec<Incompatibility>,
}

impl<'a> Checker<'a> {
    /// Whether `reader` can read `writer`, recording why not.
    fn check(&mut self, reader: &'a Schema, writer: &'a Schema, path: &str) -> bool {
        let r = view(self.reader, reader);
        let w = view(self.writer, writer);
        if let View::Union(branches) = w {
            let mut ok = true;
            for (i, branch) in branches.iter().enumerate() {
                let branch_path = format!("{path}/{i}");
                let readable = match r {
                    View::Union(_) => self.readable_by_some_branch(reader, branch),
                    _ => self.check(reader, branch, &branch_path),
                };
                if !readable {
                    if matches!(r, View::Union(_)) {
                        self.found.push(Incompatibility::new(
                            "MISSING_UNION_BRANCH",
                            &branch_path,
                            format!(
                                "The {{reader}} schema is missing a type inside a union field at path '{branch_path}' in the {{writer}} schema"
                            ),
                        ));
                    }
                    ok = false;
                }
            }
            return ok;
        }
        if let View::Union(_) = r {
            if self.readable_by_some_branch(reader, writer) {
                return true;
            }
            self.found.push(Incompatibility::new(
                "MISSING_UNION_BRANCH",
                path,
                format!(
                    "The {{reader}} schema is missing a type inside a union field at path '{}' in the {{writer}} schema (reader union lacking writer type: {})",
                    display_path(path),
                    w.type_name()
                ),
            ));
            return false;
        }
        match (r, w) {
            (View::Null, View::Null)
            | (View::Boolean, View::Boolean)
            | (View::Int, View::Int)
            | (View::Long, View::Long | View::Int)
            | (View::Float, View::Float | View::Long | View::Int)
            | (View::Double, View::Double | View::Float | View::Long | View::Int)
            | (View::Bytes | View::String, View::Bytes | View::String) => true,
            (View::Array(ri), View::Array(wi)) => self.check(ri, wi, &format!("{path}/items")),
            (View::Map(rv), View::Map(wv)) => self.check(rv, wv, &format!("{path}/values")),
            (View::Record(rr), View::Record(wr)) => self.record(rr, wr, path),
            (View::Enum(re), View::Enum(we)) => self.enumeration(re, we, path),
            (View::Fixed(rf), View::Fixed(wf)) => {
                if !names_match(&rf.name, rf.aliases.as_deref(), &wf.name) {
                    self.name_mismatch(&rf.name, &wf.name, path);
                    return false;
                }
                if rf.size != wf.size {
                    self.found.push(Incompatibility::new(
                        "FIXED_SIZE_MISMATCH",
                        &format!("{path}/size"),
                        format!(
                            "The size of FIXED type field at path '{path}/size' in the {{reader}} schema ({}) does not match with the {{writer}} schema ({})",
                            rf.size, wf.size
                        ),
                    ));
                    return false;
                }
                true
            }
            (r, w) => {
                self.found.push(Incompatibility::new(
                    "TYPE_MISMATCH",
                    path,
                    format!(
                        "The type (path '{}') of a field in the {{reader}} schema does not match with the {{writer}} schema (reader type: {} not compatible with writer type: {})",
                        display_path(path),
                        r.type_name(),
                        w.type_name()
                    ),
                ).info(format!("reader type: {} not compatible with writer type: {}", r.type_name(), w.type_name())));
                false
            }
        }
    }

    /// Whether one branch of the reader union `reader` reads `writer`, without recording
    /// the failures of the branches that do not.
    fn readable_by_some_branch(&mut self, reader: &'a Schema, writer: &'a Schema) -> bool {
        let View::Union(branches) = view(self.reader, reader) else {
            return false;
        };
        let mut quiet = Checker {
            reader: self.reader,
            writer: self.writer,
            visiting: self.visiting.clone(),
            found: Vec::new(),
        };
        // Prefer the branch of the same kind (what resolution picks), then any.
        branches.iter().any(|branch| {
            quiet.found.clear();
            quiet.check(branch, writer, "") && quiet.found.is_empty()
        })
    }

    fn record(&mut self, reader: &'a RecordSchema, writer: &'a RecordSchema, path: &str) -> bool {
        if !names_match(&reader.name, reader.aliases.as_deref(), &writer.name) {
            self.name_mismatch(&reader.name, &writer.name, path);
            return false;
        }
        let pair = (reader.name.fullname(None), writer.name.fullname(None));
        if !self.visiting.insert(pair.clone()) {
            return true;
        }
        let mut ok = true;
        for (i, field) in reader.fields.iter().enumerate() {
            let field_path = format!("{path}/fields/{i}");
            let written = writer
                .fields
                .iter()
                .find(|w| w.name == field.name)
                .or_else(|| {
                    writer
                        .fields
                        .iter()
                        .find(|w| field.aliases.contains(&w.name))
                });
            match written {
                Some(w) => {
                    ok &= self.check(&field.schema, &w.schema, &format!("{field_path}/type"));
                }
                None if field.default.is_some() => {}
                None => {
                    self.found.push(Incompatibility::new(
                        "READER_FIELD_MISSING_DEFAULT_VALUE",
                        &field_path,
                        format!(
                            "The field '{}' at path '{field_path}' in the {{reader}} schema has no default value and is missing in the {{writer}} schema",
                            field.name
                        ),
                    ).info(field.name.clone()));
                    ok = false;
                }
            }
        }
        self.visiting.remove(&pair);
        ok
    }

    fn enumeration(&mut self, reader: &EnumSchema, writer: &EnumSchema, path: &str) -> bool {
        if !names_match(&reader.name, reader.aliases.as_deref(), &writer.name) {
            self.name_mismatch(&reader.name, &writer.name, path);
            return false;
        }
        let missing: Vec<&str> = writer
            .symbols
            .iter()
            .filter(|s| !reader.symbols.contains(s))
            .map(String::as_str)
            .collect();
        if missing.is_empty() || reader.default.is_some() {
            return true;
        }
        self.found.push(Incompatibility::new(
            "MISSING_ENUM_SYMBOLS",
            &format!("{path}/symbols"),
            format!(
                "The {{reader}} schema is missing enum symbols '[{}]' at path '{path}/symbols' in the {{writer}} schema",
                missing.join(", ")
            ),
        ).info(format!("[{}]", missing.join(", "))));
        false
    }

    fn name_mismatch(&mut self, reader: &Name, writer: &Name, path: &str) {
        self.found.push(Incompatibility::new(
            "NAME_MISMATCH",
            &format!("{path}/name"),
            format!(
                "The name of the schema has changed (path '{path}/name'): {{reader}} '{}', {{writer}} '{}'",
                reader.fullname(None),
                writer.fullname(None)
            ),
        ));
    }
}

/// Java's `schemaNameEquals`: unqualified names equal, or a reader alias is the writer's
/// full name.
fn names_match(
    reader: &Name,
    aliases: Option<&[apache_avro::schema::Alias]>,
    writer: &Name,
) -> bool {
    if reader.name() == writer.name() {
        return true;
    }
    let full = writer.fullname(None);
    aliases
        .unwrap_or_default()
        .iter()
        .any(|a| a.fullname(reader.namespace()) == full)
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AvroSchema {
        AvroSchema::parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn record(fields: &str) -> String {
        format!(r#"{{"type":"record","name":"R","namespace":"n","fields":[{fields}]}}"#)
    }

    /// (rule, reader, writer, the error types expected; empty: compatible)
    #[test]
    fn resolution_rules_one_by_one() {
        let int_a = record(r#"{"name":"a","type":"int"}"#);
        let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
            ("same primitive", r#""int""#.into(), r#""int""#.into(), vec![]),
            ("int -> long", r#""long""#.into(), r#""int""#.into(), vec![]),
            ("int -> float", r#""float""#.into(), r#""int""#.into(), vec![]),
            ("int -> double", r#""double""#.into(), r#""int""#.into(), vec![]),
            ("long -> float", r#""float""#.into(), r#""long""#.into(), vec![]),
            ("long -> double", r#""double""#.into(), r#""long""#.into(), vec![]),
            ("float -> double", r#""double""#.into(), r#""float""#.into(), vec![]),
            ("long -/-> int", r#""int""#.into(), r#""long""#.into(), vec!["TYPE_MISMATCH"]),
            ("double -/-> float", r#""float""#.into(), r#""double""#.into(), vec!["TYPE_MISMATCH"]),
            ("string -> bytes", r#""bytes""#.into(), r#""string""#.into(), vec![]),
            ("bytes -> string", r#""string""#.into(), r#""bytes""#.into(), vec![]),
            ("string -/-> int", r#""int""#.into(), r#""string""#.into(), vec!["TYPE_MISMATCH"]),
            ("boolean -/-> null", r#""null""#.into(), r#""boolean""#.into(), vec!["TYPE_MISMATCH"]),
            (
                "logical date is an int",
                r#"{"type":"int","logicalType":"date"}"#.into(),
                r#""int""#.into(),
                vec![],
            ),
            (
                "logical timestamp-millis reads int (as long)",
                r#"{"type":"long","logicalType":"timestamp-millis"}"#.into(),
                r#""int""#.into(),
                vec![],
            ),
            (
                "field added with default",
                record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#),
                int_a.clone(),
                vec![],
            ),
            (
                "field added without default",
                record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#),
                int_a.clone(),
                vec!["READER_FIELD_MISSING_DEFAULT_VALUE"],
            ),
            ("field removed", record(""), int_a.clone(), vec![]),
            (
                "field type promoted",
                record(r#"{"name":"a","type":"long"}"#),
                int_a.clone(),
                vec![],
            ),
            (
                "field type narrowed",
                int_a.clone(),
                record(r#"{"name":"a","type":"long"}"#),
                vec!["TYPE_MISMATCH"],
            ),
            (
                "field renamed with an alias",
                record(r#"{"name":"b","type":"int","aliases":["a"]}"#),
                int_a.clone(),
                vec![],
            ),
            (
                "field renamed without an alias",
                record(r#"{"name":"b","type":"int"}"#),
                int_a.clone(),
                vec!["READER_FIELD_MISSING_DEFAULT_VALUE"],
            ),
            (
                "record renamed",
                r#"{"type":"record","name":"S","namespace":"n","fields":[]}"#.into(),
                record(""),
                vec!["NAME_MISMATCH"],
            ),
            (
                "record renamed with an alias",
                r#"{"type":"record","name":"S","namespace":"n","aliases":["R"],"fields":[]}"#.into(),
                record(""),
                vec![],
            ),
            (
                "record namespace changed (unqualified names compare)",
                r#"{"type":"record","name":"R","namespace":"other","fields":[]}"#.into(),
                record(""),
                vec![],
            ),
            (
                "enum symbol added",
                r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#.into(),
                r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(),
                vec![],
            ),
            (
                "enum symbol removed",
                r#"{"type":"enum","name":"E","symbols":["A"]}"#.into(),
                r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(),
                vec!["MISSING_ENUM_SYMBOLS"],
            ),
            (
                "enum symbol removed, reader has a default",
                r#"{"type":"enum","name":"E","symbols":["A"],"default":"A"}"#.into(),
                r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(),
                vec![],
            ),
            (
                "fixed same size",
                r#"{"type":"fixed","name":"F","size":4}"#.into(),
                r#"{"type":"fixed","name":"F","size":4}"#.into(),
                vec![],
            ),
            (
                "fixed size changed",
                r#"{"type":"fixed","name":"F","size":8}"#.into(),
                r#"{"type":"fixed","name":"F","size":4}"#.into(),
                vec!["FIXED_SIZE_MISMATCH"],
            ),
            (
                "array items promoted",
                r#"{"type":"array","items":"long"}"#.into(),
                r#"{"type":"array","items":"int"}"#.into(),
                vec![],
            ),
            (
                "map values narrowed",
                r#"{"type":"map","values":"int"}"#.into(),
                r#"{"type":"map","values":"long"}"#.into(),
                vec!["TYPE_MISMATCH"],
            ),
            (
                "writer type now one branch of a reader union",
                r#"["null","int"]"#.into(),
                r#""int""#.into(),
                vec![],
            ),
            (
                "writer type promoted into a reader union",
                r#"["null","long"]"#.into(),
                r#""int""#.into(),
                vec![],
            ),
            (
                "reader union lacks the writer type",
                r#"["null","string"]"#.into(),
                r#""int""#.into(),
                vec!["MISSING_UNION_BRANCH"],
            ),
            (
                "writer union, reader reads every branch",
                r#"["null","string","long"]"#.into(),
                r#"["null","int"]"#.into(),
                vec![],
            ),
            (
                "writer union branch removed from the reader",
                r#"["null"]"#.into(),
                r#"["null","int"]"#.into(),
                vec!["MISSING_UNION_BRANCH"],
            ),
            (
                "writer union read by a plain reader",
                r#""long""#.into(),
                r#"["int","long"]"#.into(),
                vec![],
            ),
            (
                "writer union with a branch a plain reader cannot read",
                r#""long""#.into(),
                r#"["null","long"]"#.into(),
                vec!["TYPE_MISMATCH"],
            ),
            (
                "recursive record against itself",
                r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#.into(),
                r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#.into(),
                vec![],
            ),
            (
                "recursive record with a field added without default",
                r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]},{"name":"v","type":"int"}]}"#.into(),
                r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#.into(),
                vec!["READER_FIELD_MISSING_DEFAULT_VALUE"],
            ),
            (
                "nested record field type changed",
                record(r#"{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"string"}]}}"#),
                record(r#"{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"}]}}"#),
                vec!["TYPE_MISMATCH"],
            ),
        ];
        for (rule, reader, writer, expected) in cases {
            let found = check(&parse(&reader), &parse(&writer));
            let types: Vec<&str> = found.iter().map(|i| i.error_type).collect();
            assert_eq!(types, expected, "{rule}: {found:?}");
        }
    }

    #[test]
    fn failures_say_where() {
        let found = check(
            &parse(&record(
                r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#,
            )),
            &parse(&record(r#"{"name":"a","type":"string"}"#)),
        );
        let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, vec!["/fields/0/type", "/fields/1"]);
        assert_eq!(found[1].info, "b");
        assert!(found[0].info.contains("STRING"), "{:?}", found[0]);
    }
}
