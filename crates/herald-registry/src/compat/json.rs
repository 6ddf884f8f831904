//! JSON Schema compatibility, as Confluent's registry decides it: the differences
//! between the schema data was written with (`original`, the writer) and the schema
//! that reads it (`update`, the reader) are listed, each of a type, and the change is
//! compatible when every difference's type is in `COMPATIBLE` (the names are
//! Confluent's, so a verbose check reads the same as theirs). The rules, in short:
//!
//! - content models: an object is *open* when it has no `patternProperties` and
//!   `additionalProperties` is absent or `true`; *closed* when it is `false`;
//!   *partially open* when a schema governs the properties not named. Adding a
//!   property to an open model is incompatible (old data may hold anything under that
//!   name) unless its schema is empty; adding one to a closed model is compatible
//!   unless it is required without a default; removing one is compatible from an open
//!   model, incompatible from a closed one; a partially open model must cover the
//!   property added or removed. Array items by position follow the same rules.
//! - `additionalProperties`: allowing more is compatible, less is not;
//! - `required`: removing is compatible, adding is not unless the property has a default;
//! - types: the same type, integer -> number, or a type -> a union (`anyOf`/`oneOf`,
//!   or a type list) that has it is compatible; anything else is `TYPE_CHANGED`;
//! - enums: extended is compatible, narrowed or changed is not;
//! - ranges (`minimum`, `maximum`, exclusive ones, `minLength`, `maxLength`,
//!   `minItems`, `maxItems`, `minProperties`, `maxProperties`, `multipleOf`): relaxing or
//!   removing is compatible, adding or tightening is not; `pattern` may only be removed;
//! - `allOf`/`anyOf`/`oneOf`: subschemas are matched pairwise (a maximum matching of
//!   compatible pairs must cover the smaller side); a sum type may grow, a product type
//!   may shrink; `anyOf` may replace `allOf`/`oneOf`; `not` reverses the comparison.
//!
//! Bounds: recursion follows the schema (serde_json caps one document's nesting at 128)
//! and `$ref`s, guarded by `DEPTH_MAX`, a visited set for cycles and `STEPS_MAX` for
//! schemas whose refs fan out; a schema past them is reported incompatible, never
//! walked further.

use std::collections::HashSet;

use serde_json::Value;

use crate::compat::Incompatibility;
use crate::json::{
    Additional, ArrayNode, Criterion, JsonSchema, Kind, Node, NumberNode, ObjectNode, StringNode,
};

/// Deepest comparison (subschemas within subschemas, through refs).
pub const DEPTH_MAX: usize = 256;
/// Most subschema comparisons one check may make.
pub const STEPS_MAX: usize = 200_000;

/// The difference types that do not break a reader of old data.
pub const COMPATIBLE: &[&str] = &[
    "ID_CHANGED",
    "DESCRIPTION_CHANGED",
    "TITLE_CHANGED",
    "DEFAULT_CHANGED",
    "SCHEMA_REMOVED",
    "TYPE_EXTENDED",
    "MAX_LENGTH_INCREASED",
    "MAX_LENGTH_REMOVED",
    "MIN_LENGTH_DECREASED",
    "MIN_LENGTH_REMOVED",
    "PATTERN_REMOVED",
    "MAXIMUM_INCREASED",
    "MAXIMUM_REMOVED",
    "MINIMUM_DECREASED",
    "MINIMUM_REMOVED",
    "EXCLUSIVE_MAXIMUM_INCREASED",
    "EXCLUSIVE_MAXIMUM_REMOVED",
    "EXCLUSIVE_MINIMUM_DECREASED",
    "EXCLUSIVE_MINIMUM_REMOVED",
    "MULTIPLE_OF_REDUCED",
    "MULTIPLE_OF_REMOVED",
    "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED",
    "REQUIRED_ATTRIBUTE_REMOVED",
    "DEPENDENCY_ARRAY_NARROWED",
    "DEPENDENCY_ARRAY_REMOVED",
    "DEPENDENCY_SCHEMA_REMOVED",
    "MAX_PROPERTIES_INCREASED",
    "MAX_PROPERTIES_REMOVED",
    "MIN_PROPERTIES_DECREASED",
    "MIN_PROPERTIES_REMOVED",
    "ADDITIONAL_PROPERTIES_ADDED",
    "ADDITIONAL_PROPERTIES_EXTENDED",
    "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
    "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL",
    "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
    "PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL",
    "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL",
    "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "MAX_ITEMS_INCREASED",
    "MAX_ITEMS_REMOVED",
    "MIN_ITEMS_DECREASED",
    "MIN_ITEMS_REMOVED",
    "UNIQUE_ITEMS_REMOVED",
    "ADDITIONAL_ITEMS_ADDED",
    "ADDITIONAL_ITEMS_EXTENDED",
    "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
    "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL",
    "ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL",
    "ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL",
    "ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "ENUM_ARRAY_EXTENDED",
    "COMBINED_TYPE_EXTENDED",
    "PRODUCT_TYPE_NARROWED",
    "SUM_TYPE_EXTENDED",
    "NOT_TYPE_NARROWED",
];

/// What stops `reader` from reading data valid for `writer`.
pub fn check(reader: &JsonSchema, writer: &JsonSchema) -> Vec<Incompatibility> {
    let mut ctx = Ctx {
        original: writer,
        update: reader,
        path: Vec::new(),
        diffs: Vec::new(),
        visiting: HashSet::new(),
        steps: 0,
        depth: 0,
    };
    ctx.compare(Some(&writer.root), Some(&reader.root));
    ctx.diffs
        .into_iter()
        .filter(|d| !compatible(d.0))
        .map(|(kind, path)| Incompatibility::new(kind, &path, describe(kind, &path)).info(path))
        .collect()
}

fn compatible(kind: &str) -> bool {
    COMPATIBLE.contains(&kind)
}

fn all_compatible(diffs: &[Diff]) -> bool {
    diffs.iter().all(|d| compatible(d.0))
}

/// What a difference means, for `?verbose=true`; `{reader}`/`{writer}` are named by the
/// caller (new / old).
fn describe(kind: &str, path: &str) -> String {
    let what = match kind {
        "TYPE_CHANGED" => "the {reader} schema has another type than the {writer} schema",
        "TYPE_NARROWED" => "the {reader} schema narrows the type of the {writer} schema",
        "SCHEMA_ADDED" => "the {reader} schema adds a constraint the {writer} schema does not have",
        "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" => {
            "the {reader} schema adds a property that the {writer} schema's open content model may already hold with any value"
        }
        "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL" => {
            "the {reader} schema has a closed content model and drops a property the {writer} schema has"
        }
        "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
        | "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL" => {
            "the property is not covered by the partially open content model"
        }
        "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL" | "REQUIRED_ATTRIBUTE_ADDED" => {
            "the {reader} schema requires a property, without a default, that the {writer} schema does not"
        }
        "ADDITIONAL_PROPERTIES_REMOVED" | "ADDITIONAL_PROPERTIES_NARROWED" => {
            "the {reader} schema allows fewer additional properties than the {writer} schema"
        }
        "ENUM_ARRAY_NARROWED" | "ENUM_ARRAY_CHANGED" => {
            "the {reader} schema lacks enum values the {writer} schema allows"
        }
        "COMBINED_TYPE_SUBSCHEMAS_CHANGED" => {
            "the subschemas of the {reader} schema do not each match one of the {writer} schema"
        }
        "SCHEMA_TOO_COMPLEX" => "the schemas are too large or deep to compare",
        k if k.ends_with("_ADDED") => "the {reader} schema adds a constraint",
        k if k.ends_with("_DECREASED") || k.ends_with("_INCREASED") => {
            "the {reader} schema tightens a bound of the {writer} schema"
        }
        _ => "the {reader} schema cannot read all data of the {writer} schema",
    };
    format!("{what} ({kind} at {path})")
}

type Diff = (&'static str, String);

struct Ctx<'a> {
    original: &'a JsonSchema,
    update: &'a JsonSchema,
    path: Vec<String>,
    diffs: Vec<Diff>,
    /// (original, update) node pairs being compared further up: a recursive schema is
    /// compatible with itself unless something else says otherwise.
    visiting: HashSet<(usize, usize)>,
    steps: usize,
    depth: usize,
}

impl<'a> Ctx<'a> {
    fn add(&mut self, kind: &'static str) {
        let path = format!("#/{}", self.path.join("/"));
        self.diffs.push((kind, path));
    }

    fn add_at(&mut self, attribute: &str, kind: &'static str) {
        self.path.push(attribute.to_string());
        self.add(kind);
        self.path.pop();
    }

    fn enter(&mut self, segment: impl Into<String>) {
        self.path.push(segment.into());
    }

    fn leave(&mut self) {
        self.path.pop();
    }

    /// The differences `f` finds, kept apart from this context's.
    fn sub(&mut self, f: impl FnOnce(&mut Self)) -> Vec<Diff> {
        let saved = std::mem::take(&mut self.diffs);
        f(self);
        std::mem::replace(&mut self.diffs, saved)
    }

    fn compare(&mut self, original: Option<&'a Node>, update: Option<&'a Node>) {
        let (original, update) = match (original, update) {
            (None, None) => return,
            (None, Some(_)) => return self.add("SCHEMA_ADDED"),
            (Some(_), None) => return self.add("SCHEMA_REMOVED"),
            (Some(o), Some(u)) => (o, u),
        };
        self.steps += 1;
        if self.steps > STEPS_MAX || self.depth >= DEPTH_MAX {
            return self.add("SCHEMA_TOO_COMPLEX");
        }
        self.depth += 1;
        self.compare_resolved(self.original.resolve(original), self.update.resolve(update));
        self.depth -= 1;
    }

    fn compare_resolved(&mut self, original: &'a Node, update: &'a Node) {
        match (&original.kind, &update.kind) {
            (o, Kind::Combined(criterion, subs)) if !matches!(o, Kind::Combined(..)) => {
                if subs.len() == 1 {
                    let found = self.sub(|c| c.compare(Some(original), Some(&subs[0])));
                    if all_compatible(&found) {
                        self.diffs.extend(found);
                        return;
                    }
                } else if matches!(criterion, Criterion::AnyOf | Criterion::OneOf) {
                    for sub in subs {
                        let found = self.sub(|c| c.compare(Some(original), Some(sub)));
                        if all_compatible(&found) {
                            self.diffs.extend(found);
                            self.add("SUM_TYPE_EXTENDED");
                            return;
                        }
                    }
                }
            }
            (Kind::Combined(_, subs), u) if !matches!(u, Kind::Combined(..)) && subs.len() == 1 => {
                let found = self.sub(|c| c.compare(Some(&subs[0]), Some(update)));
                if all_compatible(&found) {
                    self.diffs.extend(found);
                    return;
                }
            }
            _ => {}
        }
        if original.kind.class() != update.kind.class() {
            if matches!(original.kind, Kind::False) || matches!(update.kind, Kind::Empty) {
                return;
            }
            return self.add("TYPE_CHANGED");
        }
        let key = (
            original as *const Node as usize,
            update as *const Node as usize,
        );
        if !self.visiting.insert(key) {
            return;
        }
        if original.meta.id != update.meta.id {
            self.add("ID_CHANGED");
        }
        if original.meta.title != update.meta.title {
            self.add("TITLE_CHANGED");
        }
        if original.meta.description != update.meta.description {
            self.add("DESCRIPTION_CHANGED");
        }
        if original.meta.default != update.meta.default {
            self.add("DEFAULT_CHANGED");
        }
        match (&original.kind, &update.kind) {
            (Kind::String(o), Kind::String(u)) => self.string(o, u),
            (Kind::Number(o), Kind::Number(u)) => self.number(o, u),
            (Kind::Enum(o), Kind::Enum(u)) => self.enumeration(o, u),
            (Kind::Const(o), Kind::Const(u)) if o != u => {
                self.add_at("const", "ENUM_ARRAY_CHANGED")
            }
            (Kind::Combined(oc, os), Kind::Combined(uc, us)) => self.combined(*oc, os, *uc, us),
            (Kind::Not(o), Kind::Not(u)) => {
                self.enter("not");
                // Reversed: what the new schema refuses must be refused by the old.
                let found = self.sub(|c| c.compare(Some(u), Some(o)));
                self.add(if all_compatible(&found) {
                    "NOT_TYPE_NARROWED"
                } else {
                    "NOT_TYPE_EXTENDED"
                });
                self.leave();
            }
            (Kind::Object(o), Kind::Object(u)) => self.object(o, u),
            (Kind::Array(o), Kind::Array(u)) => self.array(o, u),
            _ => {}
        }
        self.visiting.remove(&key);
    }

    /// A numeric bound: `looser_up` says whether a larger value allows more.
    #[allow(clippy::too_many_arguments)]
    fn bound(
        &mut self,
        attribute: &str,
        original: Option<f64>,
        update: Option<f64>,
        added: &'static str,
        removed: &'static str,
        increased: &'static str,
        decreased: &'static str,
    ) {
        match (original, update) {
            (None, Some(_)) => self.add_at(attribute, added),
            (Some(_), None) => self.add_at(attribute, removed),
            (Some(o), Some(u)) if o < u => self.add_at(attribute, increased),
            (Some(o), Some(u)) if o > u => self.add_at(attribute, decreased),
            _ => {}
        }
    }

    fn string(&mut self, o: &StringNode, u: &StringNode) {
        self.bound(
            "maxLength",
            o.max_length,
            u.max_length,
            "MAX_LENGTH_ADDED",
            "MAX_LENGTH_REMOVED",
            "MAX_LENGTH_INCREASED",
            "MAX_LENGTH_DECREASED",
        );
        self.bound(
            "minLength",
            o.min_length,
            u.min_length,
            "MIN_LENGTH_ADDED",
            "MIN_LENGTH_REMOVED",
            "MIN_LENGTH_INCREASED",
            "MIN_LENGTH_DECREASED",
        );
        match (&o.pattern, &u.pattern) {
            (None, Some(_)) => self.add_at("pattern", "PATTERN_ADDED"),
            (Some(_), None) => self.add_at("pattern", "PATTERN_REMOVED"),
            (Some(a), Some(b)) if a != b => self.add_at("pattern", "PATTERN_CHANGED"),
            _ => {}
        }
    }

    fn number(&mut self, o: &NumberNode, u: &NumberNode) {
        self.bound(
            "maximum",
            o.maximum,
            u.maximum,
            "MAXIMUM_ADDED",
            "MAXIMUM_REMOVED",
            "MAXIMUM_INCREASED",
            "MAXIMUM_DECREASED",
        );
        self.bound(
            "minimum",
            o.minimum,
            u.minimum,
            "MINIMUM_ADDED",
            "MINIMUM_REMOVED",
            "MINIMUM_INCREASED",
            "MINIMUM_DECREASED",
        );
        self.bound(
            "exclusiveMaximum",
            o.exclusive_maximum,
            u.exclusive_maximum,
            "EXCLUSIVE_MAXIMUM_ADDED",
            "EXCLUSIVE_MAXIMUM_REMOVED",
            "EXCLUSIVE_MAXIMUM_INCREASED",
            "EXCLUSIVE_MAXIMUM_DECREASED",
        );
        self.bound(
            "exclusiveMinimum",
            o.exclusive_minimum,
            u.exclusive_minimum,
            "EXCLUSIVE_MINIMUM_ADDED",
            "EXCLUSIVE_MINIMUM_REMOVED",
            "EXCLUSIVE_MINIMUM_INCREASED",
            "EXCLUSIVE_MINIMUM_DECREASED",
        );
        match (o.multiple_of, u.multiple_of) {
            (None, Some(_)) => self.add_at("multipleOf", "MULTIPLE_OF_ADDED"),
            (Some(_), None) => self.add_at("multipleOf", "MULTIPLE_OF_REMOVED"),
            (Some(a), Some(b)) if a != b => {
                let divides = |x: f64, y: f64| y != 0.0 && (x / y).fract() == 0.0;
                self.add_at(
                    "multipleOf",
                    if divides(b, a) {
                        "MULTIPLE_OF_EXPANDED"
                    } else if divides(a, b) {
                        "MULTIPLE_OF_REDUCED"
                    } else {
                        "MULTIPLE_OF_CHANGED"
                    },
                );
            }
            _ => {}
        }
        if o.integer != u.integer {
            self.add(if o.integer {
                "TYPE_EXTENDED"
            } else {
                "TYPE_NARROWED"
            });
        }
    }

    fn enumeration(&mut self, o: &[Value], u: &[Value]) {
        let has_all = |big: &[Value], small: &[Value]| small.iter().all(|v| big.contains(v));
        if has_all(u, o) && has_all(o, u) {
            return;
        }
        self.add_at(
            "enum",
            if has_all(u, o) {
                "ENUM_ARRAY_EXTENDED"
            } else if has_all(o, u) {
                "ENUM_ARRAY_NARROWED"
            } else {
                "ENUM_ARRAY_CHANGED"
            },
        );
    }

    fn combined(&mut self, oc: Criterion, os: &'a [Node], uc: Criterion, us: &'a [Node]) {
        let changed = if oc == uc {
            None
        } else if uc == Criterion::AnyOf
            || (uc == Criterion::OneOf && os.len() == 1)
            || (uc == Criterion::AllOf && os.len() == 1 && us.len() == 1)
        {
            Some("COMBINED_TYPE_EXTENDED")
        } else {
            Some("COMBINED_TYPE_CHANGED")
        };
        if let Some(kind) = changed {
            self.add(kind);
            if kind == "COMBINED_TYPE_CHANGED" {
                return;
            }
        }
        let os = distinct(os);
        let us = distinct(us);
        if os.len() != us.len() {
            let grew = os.len() < us.len();
            self.add(match (uc == Criterion::AllOf, grew) {
                (true, true) => "PRODUCT_TYPE_EXTENDED",
                (true, false) => "PRODUCT_TYPE_NARROWED",
                (false, true) => "SUM_TYPE_EXTENDED",
                (false, false) => "SUM_TYPE_NARROWED",
            });
        }
        // Which pairs are compatible, and what each found.
        let mut edges: Vec<Vec<Option<Vec<Diff>>>> = Vec::with_capacity(os.len());
        for (i, o) in os.iter().enumerate() {
            self.enter(format!("{}/{i}", oc.name()));
            let mut row = Vec::with_capacity(us.len());
            for u in &us {
                let found = self.sub(|c| c.compare(Some(o), Some(u)));
                row.push(all_compatible(&found).then_some(found));
            }
            edges.push(row);
            self.leave();
        }
        let matching = maximum_matching(&edges, us.len());
        let mut matched = 0;
        for (j, i) in matching.iter().enumerate() {
            if let Some(i) = i
                && let Some(Some(found)) = edges.get(*i).and_then(|row| row.get(j))
            {
                self.diffs.extend(found.iter().cloned());
                matched += 1;
            }
        }
        if matched < os.len().min(us.len()) {
            self.add("COMBINED_TYPE_SUBSCHEMAS_CHANGED");
        }
    }

    fn object(&mut self, o: &'a ObjectNode, u: &'a ObjectNode) {
        self.enter("required");
        for (name, _) in &o.properties {
            if u.property(name).is_none() {
                continue;
            }
            let was = o.required.contains(name);
            let is = u.required.contains(name);
            if was && !is {
                self.add_at(name, "REQUIRED_ATTRIBUTE_REMOVED");
            } else if !was && is {
                let has_default = u.property(name).is_some_and(|p| p.meta.default.is_some());
                self.add_at(
                    name,
                    if has_default {
                        "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED"
                    } else {
                        "REQUIRED_ATTRIBUTE_ADDED"
                    },
                );
            }
        }
        self.leave();

        self.enter("properties");
        let mut names: Vec<&'a String> = o.properties.iter().map(|(n, _)| n).collect();
        names.extend(
            u.properties
                .iter()
                .map(|(n, _)| n)
                .filter(|n| o.property(n).is_none()),
        );
        for name in names {
            self.enter(name.clone());
            match (o.property(name), u.property(name)) {
                (Some(os), None) => self.property_removed(os, u, name),
                (None, Some(us)) => self.property_added(o, us, u, name),
                (os, us) => self.compare(os, us),
            }
            self.leave();
        }
        self.leave();

        self.enter("dependencies");
        let mut keys: Vec<&'a String> = o.dependency_arrays.iter().map(|(k, _)| k).collect();
        keys.extend(u.dependency_arrays.iter().map(|(k, _)| k));
        keys.dedup();
        for key in keys {
            let find = |n: &'a ObjectNode| {
                n.dependency_arrays
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v)
            };
            let kind = match (find(o), find(u)) {
                (Some(_), None) => Some("DEPENDENCY_ARRAY_REMOVED"),
                (None, Some(_)) => Some("DEPENDENCY_ARRAY_ADDED"),
                (Some(a), Some(b)) => {
                    let has_all = |x: &[String], y: &[String]| y.iter().all(|v| x.contains(v));
                    if has_all(a, b) && has_all(b, a) {
                        None
                    } else if has_all(b, a) {
                        Some("DEPENDENCY_ARRAY_EXTENDED")
                    } else if has_all(a, b) {
                        Some("DEPENDENCY_ARRAY_NARROWED")
                    } else {
                        Some("DEPENDENCY_ARRAY_CHANGED")
                    }
                }
                (None, None) => None,
            };
            if let Some(kind) = kind {
                self.add_at(key, kind);
            }
        }
        let mut keys: Vec<&'a String> = o.dependency_schemas.iter().map(|(k, _)| k).collect();
        keys.extend(u.dependency_schemas.iter().map(|(k, _)| k));
        keys.dedup();
        for key in keys {
            let find = |n: &'a ObjectNode| {
                n.dependency_schemas
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v)
            };
            self.enter(key.clone());
            match (find(o), find(u)) {
                (Some(_), None) => self.add("DEPENDENCY_SCHEMA_REMOVED"),
                (None, Some(_)) => self.add("DEPENDENCY_SCHEMA_ADDED"),
                (a, b) => self.compare(a, b),
            }
            self.leave();
        }
        self.leave();

        self.enter("additionalProperties");
        self.additional(
            &o.additional,
            &u.additional,
            [
                "ADDITIONAL_PROPERTIES_ADDED",
                "ADDITIONAL_PROPERTIES_REMOVED",
                "ADDITIONAL_PROPERTIES_NARROWED",
                "ADDITIONAL_PROPERTIES_EXTENDED",
            ],
        );
        self.leave();

        self.bound(
            "maxProperties",
            o.max_properties,
            u.max_properties,
            "MAX_PROPERTIES_ADDED",
            "MAX_PROPERTIES_REMOVED",
            "MAX_PROPERTIES_INCREASED",
            "MAX_PROPERTIES_DECREASED",
        );
        self.bound(
            "minProperties",
            o.min_properties,
            u.min_properties,
            "MIN_PROPERTIES_ADDED",
            "MIN_PROPERTIES_REMOVED",
            "MIN_PROPERTIES_INCREASED",
            "MIN_PROPERTIES_DECREASED",
        );
    }

    /// `kinds`: permits added, permits removed, schema added (narrowed), schema removed
    /// (extended).
    fn additional(&mut self, o: &'a Additional, u: &'a Additional, kinds: [&'static str; 4]) {
        if o.permits != u.permits {
            self.add(if u.permits { kinds[0] } else { kinds[1] });
        } else {
            match (&o.schema, &u.schema) {
                (None, Some(_)) => self.add(kinds[2]),
                (Some(_), None) => self.add(kinds[3]),
                (a, b) => self.compare(a.as_deref(), b.as_deref()),
            }
        }
    }

    /// A property of the writer's that the reader does not name: only the reader's
    /// content model decides.
    fn property_removed(&mut self, original: &'a Node, update: &'a ObjectNode, name: &str) {
        if update.is_open() {
            return self.add("PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL");
        }
        if let Some(partial) = update.schema_for_unnamed(name) {
            let found = self.sub(|c| c.compare(Some(original), Some(partial)));
            let ok = all_compatible(&found);
            self.diffs.extend(found);
            return self.add(if ok {
                "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
            } else {
                "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
            });
        }
        if matches!(self.original.resolve(original).kind, Kind::False) {
            self.add("PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL");
        } else {
            self.add("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL");
        }
    }

    /// A property the reader names that the writer does not: only the writer's content
    /// model decides.
    fn property_added(
        &mut self,
        original: &'a ObjectNode,
        added: &'a Node,
        update: &'a ObjectNode,
        name: &str,
    ) {
        if original.is_open() {
            return self.add(if matches!(self.update.resolve(added).kind, Kind::Empty) {
                "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL"
            } else {
                "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
            });
        }
        if let Some(partial) = original.schema_for_unnamed(name) {
            let found = self.sub(|c| c.compare(Some(partial), Some(added)));
            let ok = all_compatible(&found);
            self.diffs.extend(found);
            self.add(if ok {
                "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
            } else {
                "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
            });
        }
        if update.required.iter().any(|r| r == name) {
            self.add(if added.meta.default.is_some() {
                "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL"
            } else {
                "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"
            });
        } else {
            self.add("OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL");
        }
    }

    fn array(&mut self, o: &'a ArrayNode, u: &'a ArrayNode) {
        self.enter("items");
        self.compare(o.all_items.as_deref(), u.all_items.as_deref());
        self.leave();

        let common = o.item_list.len().min(u.item_list.len());
        for i in 0..common {
            self.enter(format!("items/{i}"));
            self.compare(o.item_list.get(i), u.item_list.get(i));
            self.leave();
        }
        for (i, item) in o.item_list.iter().enumerate().skip(common) {
            self.enter(format!("items/{i}"));
            if u.is_open() {
                self.add("ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL");
            } else if let Some(partial) = u.additional.schema.as_deref() {
                let found = self.sub(|c| c.compare(Some(item), Some(partial)));
                let ok = all_compatible(&found);
                self.diffs.extend(found);
                self.add(if ok {
                    "ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                } else {
                    "ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                });
            } else if matches!(self.original.resolve(item).kind, Kind::False) {
                self.add("ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL");
            } else {
                self.add("ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL");
            }
            self.leave();
        }
        for (i, item) in u.item_list.iter().enumerate().skip(common) {
            self.enter(format!("items/{i}"));
            if o.is_open() {
                self.add(if matches!(self.update.resolve(item).kind, Kind::Empty) {
                    "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL"
                } else {
                    "ITEM_ADDED_TO_OPEN_CONTENT_MODEL"
                });
            } else if let Some(partial) = o.additional.schema.as_deref() {
                let found = self.sub(|c| c.compare(Some(partial), Some(item)));
                let ok = all_compatible(&found);
                self.diffs.extend(found);
                self.add(if ok {
                    "ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                } else {
                    "ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                });
            } else {
                self.add("ITEM_ADDED_TO_CLOSED_CONTENT_MODEL");
            }
            self.leave();
        }

        self.enter("additionalItems");
        self.additional(
            &o.additional,
            &u.additional,
            [
                "ADDITIONAL_ITEMS_ADDED",
                "ADDITIONAL_ITEMS_REMOVED",
                "ADDITIONAL_ITEMS_NARROWED",
                "ADDITIONAL_ITEMS_EXTENDED",
            ],
        );
        self.leave();

        self.bound(
            "maxItems",
            o.max_items,
            u.max_items,
            "MAX_ITEMS_ADDED",
            "MAX_ITEMS_REMOVED",
            "MAX_ITEMS_INCREASED",
            "MAX_ITEMS_DECREASED",
        );
        self.bound(
            "minItems",
            o.min_items,
            u.min_items,
            "MIN_ITEMS_ADDED",
            "MIN_ITEMS_REMOVED",
            "MIN_ITEMS_INCREASED",
            "MIN_ITEMS_DECREASED",
        );
        if o.unique_items != u.unique_items {
            self.add_at(
                "uniqueItems",
                if o.unique_items {
                    "UNIQUE_ITEMS_REMOVED"
                } else {
                    "UNIQUE_ITEMS_ADDED"
                },
            );
        }
    }
}

/// The subschemas with duplicates left out (Confluent compares them as a set).
fn distinct(nodes: &[Node]) -> Vec<&Node> {
    let mut out: Vec<&Node> = Vec::with_capacity(nodes.len());
    for n in nodes {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// A maximum matching in the bipartite graph whose edge (i, j) is `edges[i][j]` being
/// Some, by augmenting paths (Kuhn); returns, per right vertex, its left partner.
fn maximum_matching<T>(edges: &[Vec<Option<T>>], right: usize) -> Vec<Option<usize>> {
    fn augment<T>(
        i: usize,
        edges: &[Vec<Option<T>>],
        seen: &mut [bool],
        partner: &mut [Option<usize>],
    ) -> bool {
        for j in 0..partner.len() {
            if seen[j] || !edges[i].get(j).is_some_and(Option::is_some) {
                continue;
            }
            seen[j] = true;
            let free = match partner[j] {
                None => true,
                Some(k) => augment(k, edges, seen, partner),
            };
            if free {
                partner[j] = Some(i);
                return true;
            }
        }
        false
    }
    let mut partner = vec![None; right];
    for i in 0..edges.len() {
        let mut seen = vec![false; right];
        augment(i, edges, &mut seen, &mut partner);
    }
    partner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> JsonSchema {
        JsonSchema::parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn obj(properties: &str, extra: &str) -> String {
        format!(r#"{{"type":"object","properties":{{{properties}}}{extra}}}"#)
    }

    /// (rule, writer = old schema, reader = new schema, incompatible difference types
    /// expected; empty: compatible). BACKWARD: the new schema reads the old data.
    #[test]
    fn rules_one_by_one() {
        let a_str = r#""a":{"type":"string"}"#;
        let b_int = r#""b":{"type":"integer"}"#;
        let closed = r#","additionalProperties":false"#;
        let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
            ("same schema", obj(a_str, ""), obj(a_str, ""), vec![]),
            ("anything to the empty schema", obj(a_str, ""), "{}".into(), vec![]),
            ("the empty schema to a constraint", "{}".into(), obj(a_str, ""), vec!["TYPE_CHANGED"]),
            ("false to anything", "false".into(), r#"{"type":"string"}"#.into(), vec![]),
            // Content models.
            (
                "property added to an open content model",
                obj(a_str, ""),
                obj(&format!("{a_str},{b_int}"), ""),
                vec!["PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"],
            ),
            (
                "property with an empty schema added to an open content model",
                obj(a_str, ""),
                obj(&format!(r#"{a_str},"b":{{}}"#), ""),
                vec![],
            ),
            (
                "optional property added to a closed content model",
                obj(a_str, closed),
                obj(&format!("{a_str},{b_int}"), closed),
                vec![],
            ),
            (
                "required property added to a closed content model",
                obj(a_str, closed),
                obj(&format!("{a_str},{b_int}"), &format!(r#"{closed},"required":["b"]"#)),
                vec!["REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"],
            ),
            (
                "required property with a default added to a closed content model",
                obj(a_str, closed),
                obj(
                    &format!(r#"{a_str},"b":{{"type":"integer","default":0}}"#),
                    &format!(r#"{closed},"required":["b"]"#),
                ),
                vec![],
            ),
            (
                "property removed from an open content model",
                obj(&format!("{a_str},{b_int}"), ""),
                obj(a_str, ""),
                vec![],
            ),
            (
                "property removed from a closed content model",
                obj(&format!("{a_str},{b_int}"), closed),
                obj(a_str, closed),
                vec!["PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"],
            ),
            (
                "property added, covered by a partially open content model",
                obj(a_str, r#","additionalProperties":{"type":"integer"}"#),
                obj(&format!("{a_str},{b_int}"), r#","additionalProperties":{"type":"integer"}"#),
                vec![],
            ),
            (
                "property added, not covered by a partially open content model",
                obj(a_str, r#","additionalProperties":{"type":"integer"}"#),
                obj(&format!(r#"{a_str},"b":{{"type":"string"}}"#), r#","additionalProperties":{"type":"integer"}"#),
                vec!["TYPE_CHANGED", "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"],
            ),
            (
                "property added, covered by a matching patternProperties",
                obj(a_str, r#","patternProperties":{"^b":{"type":"integer"}}"#),
                obj(&format!("{a_str},{b_int}"), r#","patternProperties":{"^b":{"type":"integer"}}"#),
                vec![],
            ),
            (
                "property removed, covered by a partially open content model",
                obj(&format!("{a_str},{b_int}"), r#","additionalProperties":{"type":"number"}"#),
                obj(a_str, r#","additionalProperties":{"type":"number"}"#),
                vec![],
            ),
            // additionalProperties.
            ("additionalProperties allowed", obj(a_str, closed), obj(a_str, ""), vec![]),
            (
                "additionalProperties refused",
                obj(a_str, ""),
                obj(a_str, closed),
                vec!["ADDITIONAL_PROPERTIES_REMOVED"],
            ),
            (
                "additionalProperties narrowed to a schema",
                obj(a_str, ""),
                obj(a_str, r#","additionalProperties":{"type":"string"}"#),
                vec!["ADDITIONAL_PROPERTIES_NARROWED"],
            ),
            (
                "additionalProperties extended from a schema",
                obj(a_str, r#","additionalProperties":{"type":"string"}"#),
                obj(a_str, ""),
                vec![],
            ),
            // required.
            ("required removed", obj(a_str, r#","required":["a"]"#), obj(a_str, ""), vec![]),
            (
                "required added",
                obj(a_str, ""),
                obj(a_str, r#","required":["a"]"#),
                vec!["REQUIRED_ATTRIBUTE_ADDED"],
            ),
            (
                "required added to a property with a default",
                obj(r#""a":{"type":"string","default":"x"}"#, ""),
                obj(r#""a":{"type":"string","default":"x"}"#, r#","required":["a"]"#),
                vec![],
            ),
            // Types.
            ("integer to number", r#"{"type":"integer"}"#.into(), r#"{"type":"number"}"#.into(), vec![]),
            (
                "number to integer",
                r#"{"type":"number"}"#.into(),
                r#"{"type":"integer"}"#.into(),
                vec!["TYPE_NARROWED"],
            ),
            (
                "string to integer",
                r#"{"type":"string"}"#.into(),
                r#"{"type":"integer"}"#.into(),
                vec!["TYPE_CHANGED"],
            ),
            (
                "a type widened to a type list",
                r#"{"type":"string"}"#.into(),
                r#"{"type":["string","null"]}"#.into(),
                vec![],
            ),
            (
                "a type list narrowed to one type",
                r#"{"type":["string","null"]}"#.into(),
                r#"{"type":"string"}"#.into(),
                vec!["TYPE_CHANGED"],
            ),
            (
                "a property's type changed",
                obj(a_str, ""),
                obj(r#""a":{"type":"boolean"}"#, ""),
                vec!["TYPE_CHANGED"],
            ),
            // Enums.
            ("enum extended", r#"{"enum":["a","b"]}"#.into(), r#"{"enum":["a","b","c"]}"#.into(), vec![]),
            (
                "enum narrowed",
                r#"{"enum":["a","b"]}"#.into(),
                r#"{"enum":["a"]}"#.into(),
                vec!["ENUM_ARRAY_NARROWED"],
            ),
            (
                "enum changed",
                r#"{"enum":["a","b"]}"#.into(),
                r#"{"enum":["a","c"]}"#.into(),
                vec!["ENUM_ARRAY_CHANGED"],
            ),
            ("const changed", r#"{"const":1}"#.into(), r#"{"const":2}"#.into(), vec!["ENUM_ARRAY_CHANGED"]),
            // Numeric ranges.
            ("maximum added", r#"{"type":"number"}"#.into(), r#"{"type":"number","maximum":9}"#.into(), vec!["MAXIMUM_ADDED"]),
            ("maximum increased", r#"{"type":"number","maximum":9}"#.into(), r#"{"type":"number","maximum":10}"#.into(), vec![]),
            ("maximum decreased", r#"{"type":"number","maximum":9}"#.into(), r#"{"type":"number","maximum":8}"#.into(), vec!["MAXIMUM_DECREASED"]),
            ("maximum removed", r#"{"type":"number","maximum":9}"#.into(), r#"{"type":"number"}"#.into(), vec![]),
            ("minimum decreased", r#"{"type":"number","minimum":1}"#.into(), r#"{"type":"number","minimum":0}"#.into(), vec![]),
            ("minimum increased", r#"{"type":"number","minimum":1}"#.into(), r#"{"type":"number","minimum":2}"#.into(), vec!["MINIMUM_INCREASED"]),
            ("exclusiveMaximum increased", r#"{"type":"number","exclusiveMaximum":5}"#.into(), r#"{"type":"number","exclusiveMaximum":6}"#.into(), vec![]),
            ("exclusiveMinimum increased", r#"{"type":"number","exclusiveMinimum":5}"#.into(), r#"{"type":"number","exclusiveMinimum":6}"#.into(), vec!["EXCLUSIVE_MINIMUM_INCREASED"]),
            ("multipleOf reduced", r#"{"type":"integer","multipleOf":4}"#.into(), r#"{"type":"integer","multipleOf":2}"#.into(), vec![]),
            ("multipleOf expanded", r#"{"type":"integer","multipleOf":2}"#.into(), r#"{"type":"integer","multipleOf":4}"#.into(), vec!["MULTIPLE_OF_EXPANDED"]),
            ("multipleOf added", r#"{"type":"integer"}"#.into(), r#"{"type":"integer","multipleOf":4}"#.into(), vec!["MULTIPLE_OF_ADDED"]),
            // String lengths and patterns.
            ("maxLength increased", r#"{"type":"string","maxLength":5}"#.into(), r#"{"type":"string","maxLength":6}"#.into(), vec![]),
            ("maxLength decreased", r#"{"type":"string","maxLength":5}"#.into(), r#"{"type":"string","maxLength":4}"#.into(), vec!["MAX_LENGTH_DECREASED"]),
            ("maxLength added", r#"{"type":"string"}"#.into(), r#"{"type":"string","maxLength":4}"#.into(), vec!["MAX_LENGTH_ADDED"]),
            ("minLength decreased", r#"{"type":"string","minLength":2}"#.into(), r#"{"type":"string","minLength":1}"#.into(), vec![]),
            ("minLength increased", r#"{"type":"string","minLength":2}"#.into(), r#"{"type":"string","minLength":3}"#.into(), vec!["MIN_LENGTH_INCREASED"]),
            ("pattern removed", r#"{"type":"string","pattern":"^a"}"#.into(), r#"{"type":"string"}"#.into(), vec![]),
            ("pattern added", r#"{"type":"string"}"#.into(), r#"{"type":"string","pattern":"^a"}"#.into(), vec!["PATTERN_ADDED"]),
            ("pattern changed", r#"{"type":"string","pattern":"^a"}"#.into(), r#"{"type":"string","pattern":"^b"}"#.into(), vec!["PATTERN_CHANGED"]),
            // Arrays.
            (
                "array items' type widened",
                r#"{"type":"array","items":{"type":"integer"}}"#.into(),
                r#"{"type":"array","items":{"type":"number"}}"#.into(),
                vec![],
            ),
            (
                "array items' type changed",
                r#"{"type":"array","items":{"type":"integer"}}"#.into(),
                r#"{"type":"array","items":{"type":"string"}}"#.into(),
                vec!["TYPE_CHANGED"],
            ),
            (
                "array items constrained where they were not",
                r#"{"type":"array"}"#.into(),
                r#"{"type":"array","items":{"type":"string"}}"#.into(),
                vec!["SCHEMA_ADDED"],
            ),
            ("maxItems increased", r#"{"type":"array","maxItems":2}"#.into(), r#"{"type":"array","maxItems":3}"#.into(), vec![]),
            ("minItems increased", r#"{"type":"array","minItems":2}"#.into(), r#"{"type":"array","minItems":3}"#.into(), vec!["MIN_ITEMS_INCREASED"]),
            ("uniqueItems added", r#"{"type":"array"}"#.into(), r#"{"type":"array","uniqueItems":true}"#.into(), vec!["UNIQUE_ITEMS_ADDED"]),
            ("uniqueItems removed", r#"{"type":"array","uniqueItems":true}"#.into(), r#"{"type":"array"}"#.into(), vec![]),
            (
                "tuple item added to an open tuple",
                r#"{"type":"array","items":[{"type":"string"}]}"#.into(),
                r#"{"type":"array","items":[{"type":"string"},{"type":"integer"}]}"#.into(),
                vec!["ITEM_ADDED_TO_OPEN_CONTENT_MODEL"],
            ),
            (
                "tuple item added to a closed tuple",
                r#"{"type":"array","items":[{"type":"string"}],"additionalItems":false}"#.into(),
                r#"{"type":"array","items":[{"type":"string"},{"type":"integer"}],"additionalItems":false}"#.into(),
                vec![],
            ),
            (
                "tuple item removed from a closed tuple",
                r#"{"type":"array","items":[{"type":"string"},{"type":"integer"}],"additionalItems":false}"#.into(),
                r#"{"type":"array","items":[{"type":"string"}],"additionalItems":false}"#.into(),
                vec!["ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL"],
            ),
            // Combined types.
            (
                "oneOf extended",
                r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                r#"{"oneOf":[{"type":"string"},{"type":"integer"},{"type":"boolean"}]}"#.into(),
                vec![],
            ),
            (
                "oneOf narrowed",
                r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                r#"{"oneOf":[{"type":"string"}]}"#.into(),
                vec!["SUM_TYPE_NARROWED"],
            ),
            (
                "anyOf member changed",
                r#"{"anyOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                r#"{"anyOf":[{"type":"string"},{"type":"boolean"}]}"#.into(),
                vec!["COMBINED_TYPE_SUBSCHEMAS_CHANGED"],
            ),
            (
                "oneOf to anyOf",
                r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                r#"{"anyOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                vec![],
            ),
            (
                "anyOf to oneOf",
                r#"{"anyOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                vec!["COMBINED_TYPE_CHANGED"],
            ),
            (
                "allOf narrowed",
                r#"{"allOf":[{"type":"string"},{"maxLength":5}]}"#.into(),
                r#"{"allOf":[{"type":"string"}]}"#.into(),
                vec![],
            ),
            (
                "allOf extended",
                r#"{"allOf":[{"type":"string"}]}"#.into(),
                r#"{"allOf":[{"type":"string"},{"maxLength":5}]}"#.into(),
                vec!["PRODUCT_TYPE_EXTENDED"],
            ),
            (
                "a type to a oneOf that has it",
                r#"{"type":"string"}"#.into(),
                r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#.into(),
                vec![],
            ),
            (
                "not narrowed",
                r#"{"not":{"type":"string"}}"#.into(),
                r#"{"not":{"type":"string","maxLength":3}}"#.into(),
                vec![],
            ),
            (
                "not extended",
                r#"{"not":{"type":"string","maxLength":3}}"#.into(),
                r#"{"not":{"type":"string"}}"#.into(),
                vec!["NOT_TYPE_EXTENDED"],
            ),
            // Annotations never matter.
            (
                "title, description and default changed",
                r#"{"type":"string","title":"a","description":"b","default":"c"}"#.into(),
                r#"{"type":"string","title":"x","description":"y","default":"z"}"#.into(),
                vec![],
            ),
            // References are followed.
            (
                "a change behind a $ref",
                r##"{"definitions":{"n":{"type":"integer"}},"type":"object","properties":{"a":{"$ref":"#/definitions/n"}}}"##.into(),
                r##"{"definitions":{"n":{"type":"string"}},"type":"object","properties":{"a":{"$ref":"#/definitions/n"}}}"##.into(),
                vec!["TYPE_CHANGED"],
            ),
            (
                "recursive schemas compare without end",
                r##"{"definitions":{"t":{"type":"object","properties":{"next":{"$ref":"#/definitions/t"}}}},"$ref":"#/definitions/t"}"##.into(),
                r##"{"definitions":{"t":{"type":"object","properties":{"next":{"$ref":"#/definitions/t"}}}},"$ref":"#/definitions/t"}"##.into(),
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
        let old = parse(&obj(r#""a":{"type":"string"}"#, ""));
        let new = parse(&obj(r#""a":{"type":"string"},"b":{"type":"integer"}"#, ""));
        let found = check(&new, &old);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "#/properties/b");
        assert!(found[0].description.contains("open content model"));
    }

    #[test]
    fn fan_out_through_refs_is_bounded() {
        // Each definition refers to the next twice: 2^40 paths, compared within
        // STEPS_MAX steps and refused, not walked.
        let mut defs = Vec::new();
        for i in 0..40 {
            defs.push(format!(
                r##""d{i}":{{"type":"object","properties":{{"x":{{"$ref":"#/definitions/d{n}"}},"y":{{"$ref":"#/definitions/d{n}"}}}}}}"##,
                n = i + 1
            ));
        }
        defs.push(r#""d40":{"type":"string"}"#.into());
        let text = format!(
            r##"{{"definitions":{{{}}},"$ref":"#/definitions/d0"}}"##,
            defs.join(",")
        );
        let other = text.replace(r#""d40":{"type":"string"}"#, r#""d40":{"type":"integer"}"#);
        let found = check(&parse(&other), &parse(&text));
        assert!(!found.is_empty());
    }
}
