//! Protobuf compatibility, as Confluent's registry decides it: the differences between
//! the writer's schema (`original`) and the reader's (`update`) are listed by type, and
//! the change is compatible when every type is in `COMPATIBLE`. The rules follow the wire
//! format (fields are numbers, not names):
//!
//! - fields are matched by number: adding or removing an optional field, or renaming
//!   one, is compatible; adding or removing a proto2 `required` field is not;
//! - a field's type may change within a wire-compatible group: int32, int64, uint32,
//!   uint64, bool and enums; sint32 and sint64; string and bytes; fixed32 and sfixed32;
//!   fixed64 and sfixed64; anything else (and scalar <-> message <-> map) is not;
//! - a message-typed field keeps its type's name (without the package) and the type is
//!   compared in turn;
//! - oneofs: adding or removing one, or adding a field to one, is compatible; moving one
//!   existing field into a new oneof is compatible, moving several, or moving one into a
//!   oneof with existing fields, is not; removing a field from a oneof is not;
//! - messages and enums: adding is compatible, removing a message or changing the
//!   package is not, reordering (message indexes are per schema id) is compatible;
//!   enum values may change freely.
//!
//! Bounds: message nesting is bounded by the parser; recursion through message-typed
//! fields is guarded by a visited set of message pairs, `DEPTH_MAX` and `STEPS_MAX`;
//! past them the check reports an incompatibility and stops.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use prost_reflect::{
    Cardinality, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, OneofDescriptor,
};

use crate::compat::Incompatibility;
use crate::protobuf::ProtobufSchema;

pub const DEPTH_MAX: usize = 256;
pub const STEPS_MAX: usize = 200_000;

pub const COMPATIBLE: &[&str] = &[
    "MESSAGE_ADDED",
    "MESSAGE_MOVED",
    "ENUM_ADDED",
    "ENUM_REMOVED",
    "ENUM_CONST_ADDED",
    "ENUM_CONST_CHANGED",
    "ENUM_CONST_REMOVED",
    "FIELD_ADDED",
    "FIELD_REMOVED",
    "FIELD_NAME_CHANGED",
    "FIELD_STRING_OR_BYTES_LABEL_CHANGED",
    "ONEOF_ADDED",
    "ONEOF_REMOVED",
    "ONEOF_FIELD_ADDED",
];

/// What stops `reader` from reading data written with `writer`.
pub fn check(reader: &ProtobufSchema, writer: &ProtobufSchema) -> Vec<Incompatibility> {
    let mut ctx = Ctx {
        path: Vec::new(),
        diffs: Vec::new(),
        visiting: HashSet::new(),
        steps: 0,
        depth: 0,
    };
    if writer.file.package_name() != reader.file.package_name() {
        ctx.add("PACKAGE_CHANGED");
    }
    ctx.types(
        writer.file.messages().collect(),
        writer.file.enums().collect(),
        reader.file.messages().collect(),
        reader.file.enums().collect(),
    );
    ctx.diffs
        .into_iter()
        .filter(|d| !compatible(d.0))
        .map(|(kind, path)| Incompatibility::new(kind, &path, describe(kind, &path)).info(path))
        .collect()
}

fn compatible(kind: &str) -> bool {
    COMPATIBLE.contains(&kind)
}

fn describe(kind: &str, path: &str) -> String {
    let what = match kind {
        "PACKAGE_CHANGED" => "the {reader} schema has another package than the {writer} schema",
        "MESSAGE_REMOVED" => "the {reader} schema lacks a message of the {writer} schema",
        "FIELD_KIND_CHANGED" => {
            "a field changed between scalar, message and map in the {reader} schema"
        }
        "FIELD_SCALAR_KIND_CHANGED" => {
            "a field's scalar type changed to one that is not wire-compatible"
        }
        "FIELD_NAMED_TYPE_CHANGED" => "a field's message type changed",
        "REQUIRED_FIELD_ADDED" => "the {reader} schema adds a required field",
        "REQUIRED_FIELD_REMOVED" => "the {reader} schema removes a required field",
        "ONEOF_FIELD_REMOVED" => "the {reader} schema removes a field from a oneof",
        "MULTIPLE_FIELDS_MOVED_TO_ONEOF" => "several existing fields moved into one oneof",
        "FIELD_MOVED_TO_EXISTING_ONEOF" => "an existing field moved into a oneof that has fields",
        "SCHEMA_TOO_COMPLEX" => "the schemas are too large or deep to compare",
        _ => "the {reader} schema cannot read all data of the {writer} schema",
    };
    format!("{what} ({kind} at {path})")
}

type Diff = (&'static str, String);

struct Ctx {
    path: Vec<String>,
    diffs: Vec<Diff>,
    visiting: HashSet<(String, String)>,
    steps: usize,
    depth: usize,
}

impl Ctx {
    fn add(&mut self, kind: &'static str) {
        let path = format!("#/{}", self.path.join("/"));
        self.diffs.push((kind, path));
    }

    fn enter(&mut self, segment: impl Into<String>) {
        self.path.push(segment.into());
    }

    fn leave(&mut self) {
        self.path.pop();
    }

    fn types(
        &mut self,
        o_messages: Vec<MessageDescriptor>,
        o_enums: Vec<EnumDescriptor>,
        u_messages: Vec<MessageDescriptor>,
        u_enums: Vec<EnumDescriptor>,
    ) {
        let index = |ms: &[MessageDescriptor]| -> BTreeMap<String, (usize, MessageDescriptor)> {
            ms.iter()
                .enumerate()
                .map(|(i, m)| (m.name().to_string(), (i, m.clone())))
                .collect()
        };
        let om = index(&o_messages);
        let um = index(&u_messages);
        let names: BTreeSet<&String> = om.keys().chain(um.keys()).collect();
        for name in names {
            self.enter(name.clone());
            match (om.get(name), um.get(name)) {
                (Some((_, o)), None) if !o.is_map_entry() => self.add("MESSAGE_REMOVED"),
                (None, Some((_, u))) if !u.is_map_entry() => self.add("MESSAGE_ADDED"),
                // A map's entry type is compared as the map field's key and value.
                (Some((_, o)), Some((_, u))) if o.is_map_entry() && u.is_map_entry() => {}
                (Some((oi, o)), Some((ui, u))) => {
                    self.message(o, u);
                    if oi != ui {
                        self.add("MESSAGE_MOVED");
                    }
                }
                _ => {}
            }
            self.leave();
        }
        let oe: BTreeMap<String, EnumDescriptor> = o_enums
            .into_iter()
            .map(|e| (e.name().to_string(), e))
            .collect();
        let ue: BTreeMap<String, EnumDescriptor> = u_enums
            .into_iter()
            .map(|e| (e.name().to_string(), e))
            .collect();
        let names: BTreeSet<&String> = oe.keys().chain(ue.keys()).collect();
        for name in names {
            self.enter(name.clone());
            match (oe.get(name), ue.get(name)) {
                (Some(_), None) => self.add("ENUM_REMOVED"),
                (None, Some(_)) => self.add("ENUM_ADDED"),
                (Some(o), Some(u)) => self.enumeration(o, u),
                (None, None) => {}
            }
            self.leave();
        }
    }

    fn enumeration(&mut self, o: &EnumDescriptor, u: &EnumDescriptor) {
        let by_number = |e: &EnumDescriptor| -> BTreeMap<i32, String> {
            e.values()
                .map(|v| (v.number(), v.name().to_string()))
                .collect()
        };
        let (ov, uv) = (by_number(o), by_number(u));
        let numbers: BTreeSet<&i32> = ov.keys().chain(uv.keys()).collect();
        for n in numbers {
            self.enter(n.to_string());
            match (ov.get(n), uv.get(n)) {
                (Some(_), None) => self.add("ENUM_CONST_REMOVED"),
                (None, Some(_)) => self.add("ENUM_CONST_ADDED"),
                (Some(a), Some(b)) if a != b => self.add("ENUM_CONST_CHANGED"),
                _ => {}
            }
            self.leave();
        }
    }

    fn message(&mut self, o: &MessageDescriptor, u: &MessageDescriptor) {
        self.steps += 1;
        if self.steps > STEPS_MAX || self.depth >= DEPTH_MAX {
            return self.add("SCHEMA_TOO_COMPLEX");
        }
        let key = (o.full_name().to_string(), u.full_name().to_string());
        if self.visiting.insert(key.clone()) {
            self.depth += 1;
            self.fields(o, u);
            self.depth -= 1;
            self.visiting.remove(&key);
        }
        self.types(
            o.child_messages().collect(),
            o.child_enums().collect(),
            u.child_messages().collect(),
            u.child_enums().collect(),
        );
    }

    fn fields(&mut self, o: &MessageDescriptor, u: &MessageDescriptor) {
        let oneofs = |m: &MessageDescriptor| -> BTreeMap<String, OneofDescriptor> {
            m.oneofs()
                .filter(|x| !x.is_synthetic())
                .map(|x| (x.name().to_string(), x))
                .collect()
        };
        let in_real_oneof = |f: &FieldDescriptor| -> Option<String> {
            f.containing_oneof()
                .filter(|x| !x.is_synthetic())
                .map(|x| x.name().to_string())
        };
        let mut o_top: BTreeMap<u32, FieldDescriptor> = BTreeMap::new();
        let mut o_oneof_of: BTreeMap<u32, String> = BTreeMap::new();
        let o_all: BTreeMap<u32, FieldDescriptor> = o.fields().map(|f| (f.number(), f)).collect();
        for f in o.fields() {
            match in_real_oneof(&f) {
                Some(name) => {
                    o_oneof_of.insert(f.number(), name);
                }
                None => {
                    o_top.insert(f.number(), f);
                }
            }
        }
        let u_all: BTreeMap<u32, FieldDescriptor> = u.fields().map(|f| (f.number(), f)).collect();
        let mut u_top: BTreeMap<u32, FieldDescriptor> = BTreeMap::new();
        let mut u_oneof_of: BTreeMap<u32, String> = BTreeMap::new();
        for f in u.fields() {
            match in_real_oneof(&f) {
                Some(name) => {
                    u_oneof_of.insert(f.number(), name);
                }
                None => {
                    u_top.insert(f.number(), f);
                }
            }
        }

        let o_oneofs = oneofs(o);
        let u_oneofs = oneofs(u);
        for (name, oneof) in &u_oneofs {
            self.enter(name.clone());
            let mut moved = 0;
            let mut existing = 0;
            for f in oneof.fields() {
                // A top-level field moved here is not also a removed field.
                if o_top.remove(&f.number()).is_some() {
                    moved += 1;
                } else if o_oneof_of.contains_key(&f.number()) {
                    existing += 1;
                }
            }
            if moved > 1 {
                self.add("MULTIPLE_FIELDS_MOVED_TO_ONEOF");
            } else if moved == 1 && existing > 0 {
                self.add("FIELD_MOVED_TO_EXISTING_ONEOF");
            }
            self.leave();
        }
        let names: BTreeSet<&String> = o_oneofs.keys().chain(u_oneofs.keys()).collect();
        for name in names {
            self.enter(name.clone());
            match (o_oneofs.get(name), u_oneofs.get(name)) {
                (Some(_), None) => self.add("ONEOF_REMOVED"),
                (None, Some(_)) => self.add("ONEOF_ADDED"),
                (Some(a), Some(b)) => {
                    let of = |x: &OneofDescriptor| -> BTreeMap<u32, FieldDescriptor> {
                        x.fields().map(|f| (f.number(), f)).collect()
                    };
                    let (af, bf) = (of(a), of(b));
                    let numbers: BTreeSet<&u32> = af.keys().chain(bf.keys()).collect();
                    for n in numbers {
                        self.enter(n.to_string());
                        match (af.get(n), bf.get(n)) {
                            // Moved elsewhere is not removed: only a field gone from
                            // the whole message is.
                            (Some(_), None) if !u_all.contains_key(n) => {
                                self.add("ONEOF_FIELD_REMOVED")
                            }
                            (None, Some(_)) => self.add("ONEOF_FIELD_ADDED"),
                            (Some(x), Some(y)) => self.field(x, y),
                            _ => {}
                        }
                        self.leave();
                    }
                }
                (None, None) => {}
            }
            self.leave();
        }

        let numbers: BTreeSet<u32> = o_top.keys().chain(u_top.keys()).copied().collect();
        for n in numbers {
            self.enter(n.to_string());
            match (o_top.get(&n), u_top.get(&n)) {
                (Some(f), None) => self.add(if f.cardinality() == Cardinality::Required {
                    "REQUIRED_FIELD_REMOVED"
                } else {
                    "FIELD_REMOVED"
                }),
                (None, Some(f)) => self.add(if f.cardinality() == Cardinality::Required {
                    "REQUIRED_FIELD_ADDED"
                } else {
                    "FIELD_ADDED"
                }),
                (Some(x), Some(y)) => self.field(x, y),
                (None, None) => {}
            }
            self.leave();
        }

        // Fields whose oneof membership changed are compared by number too.
        for (n, x) in &o_all {
            let Some(y) = u_all.get(n) else { continue };
            let (a, b) = (o_oneof_of.get(n), u_oneof_of.get(n));
            if (a.is_none() && b.is_none()) || (a.is_some() && a == b) {
                continue;
            }
            self.enter(n.to_string());
            self.field(x, y);
            self.leave();
        }
    }

    fn field(&mut self, o: &FieldDescriptor, u: &FieldDescriptor) {
        if o.name() != u.name() {
            self.add("FIELD_NAME_CHANGED");
        }
        self.kinds(&o.kind(), o.is_map(), &u.kind(), u.is_map());
    }

    fn kinds(&mut self, o: &Kind, o_map: bool, u: &Kind, u_map: bool) {
        let class = |k: &Kind, map: bool| match k {
            _ if map => "map",
            Kind::Message(_) => "message",
            _ => "scalar",
        };
        if class(o, o_map) != class(u, u_map) {
            return self.add("FIELD_KIND_CHANGED");
        }
        match (o, u) {
            (Kind::Message(a), Kind::Message(b)) if o_map => {
                let (ak, av) = (a.map_entry_key_field(), a.map_entry_value_field());
                let (bk, bv) = (b.map_entry_key_field(), b.map_entry_value_field());
                self.kinds(&ak.kind(), false, &bk.kind(), false);
                self.kinds(&av.kind(), av.is_map(), &bv.kind(), bv.is_map());
            }
            (Kind::Message(a), Kind::Message(b)) => {
                if local_name(a) != local_name(b) {
                    return self.add("FIELD_NAMED_TYPE_CHANGED");
                }
                // Compared in a context of its own, at the type's name.
                let saved_path = std::mem::replace(
                    &mut self.path,
                    local_name(a).split('.').map(str::to_string).collect(),
                );
                let saved = std::mem::take(&mut self.diffs);
                self.message(a, b);
                let found = std::mem::replace(&mut self.diffs, saved);
                self.path = saved_path;
                let ok = found.iter().all(|d| compatible(d.0));
                self.diffs.extend(found);
                if !ok {
                    self.add("FIELD_NAMED_TYPE_CHANGED");
                }
            }
            _ => {
                if scalar_group(o) != scalar_group(u) {
                    self.add("FIELD_SCALAR_KIND_CHANGED");
                }
            }
        }
    }
}

/// A message's name within its package (`Outer.Inner`).
fn local_name(m: &MessageDescriptor) -> String {
    let package = m.package_name();
    let full = m.full_name();
    match full.strip_prefix(package).and_then(|s| s.strip_prefix('.')) {
        Some(local) if !package.is_empty() => local.to_string(),
        _ => full.to_string(),
    }
}

/// The wire-compatible groups of scalars (the protobuf guide's "Updating a message").
fn scalar_group(kind: &Kind) -> &'static str {
    match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool | Kind::Enum(_) => {
            "varint"
        }
        Kind::Sint32 | Kind::Sint64 => "zigzag",
        Kind::String | Kind::Bytes => "length-delimited",
        Kind::Fixed32 | Kind::Sfixed32 => "fixed32",
        Kind::Fixed64 | Kind::Sfixed64 => "fixed64",
        Kind::Float => "float",
        Kind::Double => "double",
        Kind::Message(_) => "message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ProtobufSchema {
        ProtobufSchema::parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn p3(body: &str) -> String {
        format!("syntax = \"proto3\"; package acme; {body}")
    }

    fn m(fields: &str) -> String {
        p3(&format!("message M {{ {fields} }}"))
    }

    /// (rule, writer = old, reader = new, incompatible difference types; empty:
    /// compatible).
    #[test]
    fn rules_one_by_one() {
        let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
            ("same schema", m("int32 a = 1;"), m("int32 a = 1;"), vec![]),
            (
                "field added",
                m("int32 a = 1;"),
                m("int32 a = 1; string b = 2;"),
                vec![],
            ),
            (
                "field removed",
                m("int32 a = 1; string b = 2;"),
                m("int32 a = 1;"),
                vec![],
            ),
            (
                "field renamed",
                m("int32 a = 1;"),
                m("int32 b = 1;"),
                vec![],
            ),
            (
                "int32 -> int64",
                m("int32 a = 1;"),
                m("int64 a = 1;"),
                vec![],
            ),
            (
                "int64 -> uint32",
                m("int64 a = 1;"),
                m("uint32 a = 1;"),
                vec![],
            ),
            (
                "uint64 -> bool",
                m("uint64 a = 1;"),
                m("bool a = 1;"),
                vec![],
            ),
            (
                "sint32 -> sint64",
                m("sint32 a = 1;"),
                m("sint64 a = 1;"),
                vec![],
            ),
            (
                "string -> bytes",
                m("string a = 1;"),
                m("bytes a = 1;"),
                vec![],
            ),
            (
                "fixed32 -> sfixed32",
                m("fixed32 a = 1;"),
                m("sfixed32 a = 1;"),
                vec![],
            ),
            (
                "fixed64 -> sfixed64",
                m("fixed64 a = 1;"),
                m("sfixed64 a = 1;"),
                vec![],
            ),
            (
                "int32 -> sint32",
                m("int32 a = 1;"),
                m("sint32 a = 1;"),
                vec!["FIELD_SCALAR_KIND_CHANGED"],
            ),
            (
                "int32 -> string",
                m("int32 a = 1;"),
                m("string a = 1;"),
                vec!["FIELD_SCALAR_KIND_CHANGED"],
            ),
            (
                "float -> double",
                m("float a = 1;"),
                m("double a = 1;"),
                vec!["FIELD_SCALAR_KIND_CHANGED"],
            ),
            (
                "fixed32 -> fixed64",
                m("fixed32 a = 1;"),
                m("fixed64 a = 1;"),
                vec!["FIELD_SCALAR_KIND_CHANGED"],
            ),
            (
                "enum -> int32",
                p3("enum E { E0 = 0; } message M { E a = 1; }"),
                m("int32 a = 1;"),
                vec![],
            ),
            (
                "field number changed",
                m("int32 a = 1;"),
                m("int32 a = 2;"),
                vec![],
            ),
            (
                "scalar -> message",
                p3("message N {} message M { int32 a = 1; }"),
                p3("message N {} message M { N a = 1; }"),
                vec!["FIELD_KIND_CHANGED"],
            ),
            (
                "scalar -> map",
                m("int32 a = 1;"),
                m("map<string, int32> a = 1;"),
                vec!["FIELD_KIND_CHANGED"],
            ),
            (
                "map value widened",
                m("map<string, int32> a = 1;"),
                m("map<string, int64> a = 1;"),
                vec![],
            ),
            (
                "map value changed",
                m("map<string, int32> a = 1;"),
                m("map<string, string> a = 1;"),
                vec!["FIELD_SCALAR_KIND_CHANGED"],
            ),
            (
                "message type renamed",
                p3("message N {} message M { N a = 1; }"),
                p3("message O {} message M { O a = 1; }"),
                vec!["MESSAGE_REMOVED", "FIELD_NAMED_TYPE_CHANGED"],
            ),
            (
                "incompatible change inside a field's message type",
                p3("message N { int32 x = 1; } message M { N a = 1; }"),
                p3("message N { string x = 1; } message M { N a = 1; }"),
                vec![
                    "FIELD_SCALAR_KIND_CHANGED",
                    "FIELD_SCALAR_KIND_CHANGED",
                    "FIELD_NAMED_TYPE_CHANGED",
                ],
            ),
            (
                "proto2 required field added",
                "syntax = \"proto2\"; message M { optional int32 a = 1; }".into(),
                "syntax = \"proto2\"; message M { optional int32 a = 1; required int32 b = 2; }"
                    .into(),
                vec!["REQUIRED_FIELD_ADDED"],
            ),
            (
                "proto2 required field removed",
                "syntax = \"proto2\"; message M { optional int32 a = 1; required int32 b = 2; }"
                    .into(),
                "syntax = \"proto2\"; message M { optional int32 a = 1; }".into(),
                vec!["REQUIRED_FIELD_REMOVED"],
            ),
            (
                "proto3 optional is not a oneof",
                m("int32 a = 1;"),
                m("optional int32 a = 1;"),
                vec![],
            ),
            (
                "one field moved into a new oneof",
                m("int32 a = 1; int32 b = 2;"),
                m("int32 b = 2; oneof o { int32 a = 1; }"),
                vec![],
            ),
            (
                "two fields moved into a new oneof",
                m("int32 a = 1; int32 b = 2;"),
                m("oneof o { int32 a = 1; int32 b = 2; }"),
                vec!["MULTIPLE_FIELDS_MOVED_TO_ONEOF"],
            ),
            (
                "a field moved into an existing oneof",
                m("int32 a = 1; oneof o { int32 b = 2; }"),
                m("oneof o { int32 a = 1; int32 b = 2; }"),
                vec!["FIELD_MOVED_TO_EXISTING_ONEOF"],
            ),
            (
                "a field added to a oneof",
                m("oneof o { int32 a = 1; }"),
                m("oneof o { int32 a = 1; int32 b = 2; }"),
                vec![],
            ),
            (
                "a field removed from a oneof",
                m("oneof o { int32 a = 1; int32 b = 2; }"),
                m("oneof o { int32 a = 1; }"),
                vec!["ONEOF_FIELD_REMOVED"],
            ),
            (
                "a field moved out of a oneof",
                m("oneof o { int32 a = 1; int32 b = 2; }"),
                m("int32 b = 2; oneof o { int32 a = 1; }"),
                vec![],
            ),
            (
                "a oneof removed",
                m("oneof o { int32 a = 1; }"),
                m(""),
                vec![],
            ),
            (
                "a type changed in a renamed oneof",
                m("oneof o { int32 a = 1; }"),
                m("oneof p { string a = 1; }"),
                vec!["FIELD_SCALAR_KIND_CHANGED"],
            ),
            (
                "package renamed",
                m("int32 a = 1;"),
                m("int32 a = 1;").replace("package acme", "package other"),
                vec!["PACKAGE_CHANGED"],
            ),
            (
                "message added",
                m("int32 a = 1;"),
                p3("message M { int32 a = 1; } message N {}"),
                vec![],
            ),
            (
                "message removed",
                p3("message M { int32 a = 1; } message N {}"),
                m("int32 a = 1;"),
                vec!["MESSAGE_REMOVED"],
            ),
            (
                "messages reordered",
                p3("message M {} message N {}"),
                p3("message N {} message M {}"),
                vec![],
            ),
            (
                "enum values changed",
                p3("enum E { A = 0; B = 1; }"),
                p3("enum E { A = 0; C = 2; }"),
                vec![],
            ),
            (
                "nested message field changed",
                m("message I { int32 x = 1; } I i = 1;"),
                m("message I { double x = 1; } I i = 1;"),
                vec![
                    "FIELD_SCALAR_KIND_CHANGED",
                    "FIELD_SCALAR_KIND_CHANGED",
                    "FIELD_NAMED_TYPE_CHANGED",
                ],
            ),
            (
                "recursive messages compare without end",
                p3("message T { T next = 1; int32 v = 2; }"),
                p3("message T { T next = 1; int64 v = 2; }"),
                vec![],
            ),
        ];
        let mut failures = Vec::new();
        for (rule, writer, reader, expected) in &cases {
            let mut found: Vec<&str> = check(&parse(reader), &parse(writer))
                .iter()
                .map(|i| i.error_type)
                .collect();
            found.sort_unstable();
            let mut expected = expected.clone();
            expected.sort_unstable();
            if found != expected {
                failures.push(format!("{rule}: expected {expected:?}, found {found:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn failures_say_where() {
        let found = check(&parse(&m("string a = 1;")), &parse(&m("int32 a = 1;")));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "#/M/1");
    }
}
