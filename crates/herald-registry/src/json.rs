//! JSON Schema schemas (drafts 4, 6, 7, 2019-09 and 2020-12), checked by the
//! `jsonschema` crate against their draft's meta-schema and compiled with the schemas
//! they reference, then read into the model the compatibility rules walk (`Node`).
//!
//! References: Confluent's `references` name other subjects' schemas, and a `$ref` to
//! that name (`"$ref": "customer.json#/$defs/Address"`) resolves to the referenced
//! schema, as confluent-kafka's JSONSerializer resolves it. Nothing is fetched from the
//! network: a `$ref` to anything else is a 42201.
//!
//! Identity is the JSON with sorted keys and no whitespace (`canonical_json`), so key
//! order and layout do not change the id; everything else (titles, defaults, custom
//! keywords) does.
//!
//! Bounds: the text is at most `schema_bytes_max` and serde_json refuses nesting deeper
//! than 128, which bounds every recursion over one document; `NODES_MAX` bounds the model
//! (a `$ref` target is built once, however often it is referred to).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::schema::{SchemaType, StoredSchema, canonical_json};

/// Most model nodes one schema (with its references) may have: far above any real
/// event schema, and what keeps a schema made of overlapping `$ref` targets from
/// costing quadratic time.
pub const NODES_MAX: usize = 200_000;

/// The `$schema` URIs accepted, as the drafts publish them (with or without `#`, http or
/// https); none means draft 7, as Confluent's registry assumes.
const DRAFTS: &[(&str, jsonschema::Draft)] = &[
    ("json-schema.org/draft-04/schema", jsonschema::Draft::Draft4),
    ("json-schema.org/draft-06/schema", jsonschema::Draft::Draft6),
    ("json-schema.org/draft-07/schema", jsonschema::Draft::Draft7),
    (
        "json-schema.org/draft/2019-09/schema",
        jsonschema::Draft::Draft201909,
    ),
    (
        "json-schema.org/draft/2020-12/schema",
        jsonschema::Draft::Draft202012,
    ),
];

/// The base a relative `$ref` is resolved against when the schema has no `$id`
/// (the `jsonschema` crate's default).
const DEFAULT_BASE: &str = "json-schema:///";

#[derive(Debug)]
pub struct JsonSchema {
    pub root: Node,
    /// `$ref` targets by the index a `Kind::Ref` holds.
    pub defs: Vec<Node>,
    json: Value,
}

/// A schema as the compatibility rules see it, in the shape Confluent's rules (over the
/// everit library's model) use: one kind per node, with its annotations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Node {
    pub meta: Meta,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Meta {
    pub id: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub default: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    AllOf,
    AnyOf,
    OneOf,
}

impl Criterion {
    pub fn name(self) -> &'static str {
        match self {
            Criterion::AllOf => "allOf",
            Criterion::AnyOf => "anyOf",
            Criterion::OneOf => "oneOf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Kind {
    /// `true`, `{}`, or only annotations: anything is valid.
    #[default]
    Empty,
    /// `false`: nothing is valid.
    False,
    /// A `$ref`, by index into `JsonSchema::defs`.
    Ref(usize),
    Combined(Criterion, Vec<Node>),
    Not(Box<Node>),
    Enum(Vec<Value>),
    Const(Value),
    String(StringNode),
    Number(NumberNode),
    Boolean,
    Null,
    Object(ObjectNode),
    Array(ArrayNode),
}

impl Kind {
    /// The kind's class, as Confluent compares classes (integer and number are one).
    pub fn class(&self) -> &'static str {
        match self {
            Kind::Empty => "empty",
            Kind::False => "false",
            Kind::Ref(_) => "ref",
            Kind::Combined(..) => "combined",
            Kind::Not(_) => "not",
            Kind::Enum(_) => "enum",
            Kind::Const(_) => "const",
            Kind::String(_) => "string",
            Kind::Number(_) => "number",
            Kind::Boolean => "boolean",
            Kind::Null => "null",
            Kind::Object(_) => "object",
            Kind::Array(_) => "array",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StringNode {
    pub min_length: Option<f64>,
    pub max_length: Option<f64>,
    pub pattern: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct NumberNode {
    pub integer: bool,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: Option<f64>,
    pub exclusive_maximum: Option<f64>,
    pub multiple_of: Option<f64>,
}

/// `additionalProperties` / `additionalItems`: absent or `true` permits anything,
/// `false` nothing, a schema what it allows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Additional {
    pub permits: bool,
    pub schema: Option<Box<Node>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectNode {
    pub properties: Vec<(String, Node)>,
    pub required: Vec<String>,
    pub additional: Additional,
    pub pattern_properties: Vec<(String, Node)>,
    pub min_properties: Option<f64>,
    pub max_properties: Option<f64>,
    pub dependency_arrays: Vec<(String, Vec<String>)>,
    pub dependency_schemas: Vec<(String, Node)>,
}

impl ObjectNode {
    pub fn property(&self, name: &str) -> Option<&Node> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// Open: any property not named is allowed, whatever it holds.
    pub fn is_open(&self) -> bool {
        self.pattern_properties.is_empty()
            && self.additional.schema.is_none()
            && self.additional.permits
    }

    /// The schema a property not named must match, in a partially open model: the
    /// first pattern property that matches its name, else `additionalProperties`.
    pub fn schema_for_unnamed(&self, name: &str) -> Option<&Node> {
        for (pattern, schema) in &self.pattern_properties {
            let matches = regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map(|r| r.is_match(name))
                .unwrap_or(false);
            if matches {
                return Some(schema);
            }
        }
        self.additional.schema.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ArrayNode {
    /// `items` as one schema for every item.
    pub all_items: Option<Box<Node>>,
    /// `items` as a list (`prefixItems` in 2020-12): one schema per position.
    pub item_list: Vec<Node>,
    pub additional: Additional,
    pub min_items: Option<f64>,
    pub max_items: Option<f64>,
    pub unique_items: bool,
}

impl ArrayNode {
    pub fn is_open(&self) -> bool {
        self.additional.permits && self.additional.schema.is_none()
    }
}

impl JsonSchema {
    /// The schema document as registered.
    pub fn document(&self) -> &Value {
        &self.json
    }

    pub fn parse(
        text: &str,
        imports: &[(String, Arc<StoredSchema>)],
    ) -> Result<JsonSchema, String> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
        if !json.is_object() && !json.is_boolean() {
            return Err("a JSON Schema is an object or a boolean".into());
        }
        let draft = draft_of(&json)?;
        let mut docs: Vec<Doc> = Vec::with_capacity(imports.len() + 1);
        docs.push(Doc {
            name: String::new(),
            id: id_of(&json),
            value: json.clone(),
        });
        for (name, stored) in imports {
            if stored.schema_type != SchemaType::Json {
                return Err(format!(
                    "the reference '{name}' is a {} schema, not JSON",
                    stored.schema_type.name()
                ));
            }
            let value: Value = serde_json::from_str(&stored.schema)
                .map_err(|e| format!("the referenced schema '{name}' is not JSON: {e}"))?;
            docs.push(Doc {
                name: name.clone(),
                id: id_of(&value),
                value,
            });
        }
        validate(&docs, draft)?;
        let (root, defs) = Builder::build(&docs, draft)?;
        Ok(JsonSchema { root, defs, json })
    }

    pub fn canonical(&self, _normalize: bool) -> String {
        canonical_json(&self.json)
    }

    /// The node a `Ref` stands for (itself when it is not one).
    pub fn resolve<'a>(&'a self, node: &'a Node) -> &'a Node {
        let mut node = node;
        // A chain of refs to refs ends within defs.len() steps unless it is a cycle,
        // which stands for nothing: read it as the empty schema.
        for _ in 0..=self.defs.len() {
            match node.kind {
                Kind::Ref(i) => match self.defs.get(i) {
                    Some(target) => node = target,
                    None => return &EMPTY,
                },
                _ => return node,
            }
        }
        &EMPTY
    }
}

static EMPTY: Node = Node {
    meta: Meta {
        id: None,
        title: None,
        description: None,
        default: None,
    },
    kind: Kind::Empty,
};

struct Doc {
    /// The reference name ("" for the schema itself).
    name: String,
    id: Option<String>,
    value: Value,
}

fn id_of(value: &Value) -> Option<String> {
    let map = value.as_object()?;
    map.get("$id")
        .or_else(|| map.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn draft_of(json: &Value) -> Result<jsonschema::Draft, String> {
    let Some(uri) = json.get("$schema") else {
        return Ok(jsonschema::Draft::Draft7);
    };
    let uri = uri
        .as_str()
        .ok_or("\"$schema\" must be a string naming a JSON Schema draft")?;
    let bare = uri
        .trim_end_matches('#')
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    DRAFTS
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|(_, draft)| *draft)
        .ok_or_else(|| {
            format!(
                "\"$schema\" {uri:?} names no draft this registry knows (drafts 4, 6, 7, 2019-09, 2020-12)"
            )
        })
}

/// The URIs a referenced document answers to: its name as given, resolved against the
/// default base and the root's `$id`, and its own `$id`.
fn uris_of(doc: &Doc, root_id: Option<&str>) -> Vec<String> {
    let mut uris = Vec::new();
    if doc.name.contains("://") || doc.name.starts_with("urn:") {
        uris.push(doc.name.clone());
    } else {
        uris.push(format!(
            "{DEFAULT_BASE}{}",
            doc.name.trim_start_matches('/')
        ));
        if let Some(base) = root_id
            && base.contains("://")
            && let Some(slash) = base.rfind('/')
        {
            uris.push(format!("{}{}", &base[..=slash], doc.name));
        }
    }
    if let Some(id) = &doc.id
        && (id.contains("://") || id.starts_with("urn:"))
        && !uris.contains(id)
    {
        uris.push(id.clone());
    }
    uris
}

/// Check the schema against its draft's meta-schema and compile it, with its references
/// and nothing from outside, so a `$ref` that resolves to nothing is an error.
fn validate(docs: &[Doc], draft: jsonschema::Draft) -> Result<(), String> {
    let root = &docs[0].value;
    let meta = match draft {
        jsonschema::Draft::Draft4 => jsonschema::draft4::meta::validate(root),
        jsonschema::Draft::Draft6 => jsonschema::draft6::meta::validate(root),
        jsonschema::Draft::Draft7 => jsonschema::draft7::meta::validate(root),
        jsonschema::Draft::Draft201909 => jsonschema::draft201909::meta::validate(root),
        _ => jsonschema::draft202012::meta::validate(root),
    };
    meta.map_err(|e| format!("the schema is not valid {}: {e}", draft_name(draft)))?;
    let root_id = docs[0].id.as_deref();
    let mut resources = Vec::new();
    for doc in &docs[1..] {
        for uri in uris_of(doc, root_id) {
            resources.push((uri, jsonschema::Resource::from_contents(doc.value.clone())));
        }
    }
    let registry = jsonschema::Registry::new()
        .extend(resources)
        .and_then(|b| b.prepare())
        .map_err(|e| format!("the schema's references do not resolve: {e}"))?;
    jsonschema::options()
        .with_draft(draft)
        .with_registry(&registry)
        .build(root)
        .map(|_| ())
        .map_err(|e| format!("the schema does not compile: {e}"))
}

fn draft_name(draft: jsonschema::Draft) -> &'static str {
    match draft {
        jsonschema::Draft::Draft4 => "draft-04",
        jsonschema::Draft::Draft6 => "draft-06",
        jsonschema::Draft::Draft7 => "draft-07",
        jsonschema::Draft::Draft201909 => "draft 2019-09",
        _ => "draft 2020-12",
    }
}

const OBJECT_KEYWORDS: &[&str] = &[
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
];
const ARRAY_KEYWORDS: &[&str] = &[
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "uniqueItems",
];
const STRING_KEYWORDS: &[&str] = &["minLength", "maxLength", "pattern"];
const NUMBER_KEYWORDS: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];

/// Builds the model: the root, then each `$ref` target once, from a queue (so refs add
/// no recursion beyond one document's nesting).
struct Builder<'a> {
    docs: &'a [Doc],
    draft: jsonschema::Draft,
    targets: HashMap<(usize, String), usize>,
    queue: VecDeque<(usize, String)>,
    nodes: usize,
}

impl<'a> Builder<'a> {
    fn build(docs: &'a [Doc], draft: jsonschema::Draft) -> Result<(Node, Vec<Node>), String> {
        let mut b = Builder {
            docs,
            draft,
            targets: HashMap::new(),
            queue: VecDeque::new(),
            nodes: 0,
        };
        let root = b.node(0, &docs[0].value)?;
        let mut defs: Vec<Node> = Vec::new();
        while let Some((doc, pointer)) = b.queue.pop_front() {
            let value = docs[doc]
                .value
                .pointer(&pointer)
                .ok_or_else(|| format!("$ref target '{pointer}' is not in the schema"))?;
            let node = b.node(doc, value)?;
            defs.push(node);
        }
        Ok((root, defs))
    }

    fn node(&mut self, doc: usize, value: &'a Value) -> Result<Node, String> {
        self.nodes += 1;
        if self.nodes > NODES_MAX {
            return Err(format!(
                "the schema has more than {NODES_MAX} subschemas (counting each $ref target once)"
            ));
        }
        let map = match value {
            Value::Bool(true) => return Ok(Node::default()),
            Value::Bool(false) => {
                return Ok(Node {
                    kind: Kind::False,
                    ..Node::default()
                });
            }
            Value::Object(map) => map,
            // The meta-schema check has refused anything else.
            _ => return Ok(Node::default()),
        };
        let meta = Meta {
            id: map
                .get("$id")
                .or_else(|| map.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string),
            title: map.get("title").and_then(Value::as_str).map(str::to_string),
            description: map
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            default: map.get("default").cloned(),
        };
        let mut parts: Vec<Node> = Vec::new();
        if let Some(Value::String(reference)) = map.get("$ref") {
            let target = self.reference(doc, reference)?;
            let ref_node = Node {
                kind: Kind::Ref(target),
                ..Node::default()
            };
            // Before 2019-09 a $ref's siblings are ignored.
            if matches!(
                self.draft,
                jsonschema::Draft::Draft4 | jsonschema::Draft::Draft6 | jsonschema::Draft::Draft7
            ) {
                return Ok(Node {
                    meta,
                    kind: ref_node.kind,
                });
            }
            parts.push(ref_node);
        }
        if let Some(Value::Array(values)) = map.get("enum") {
            parts.push(Node {
                kind: Kind::Enum(values.clone()),
                ..Node::default()
            });
        }
        if let Some(value) = map.get("const") {
            parts.push(Node {
                kind: Kind::Const(value.clone()),
                ..Node::default()
            });
        }
        if let Some(not) = map.get("not") {
            parts.push(Node {
                kind: Kind::Not(Box::new(self.node(doc, not)?)),
                ..Node::default()
            });
        }
        for (keyword, criterion) in [
            ("allOf", Criterion::AllOf),
            ("anyOf", Criterion::AnyOf),
            ("oneOf", Criterion::OneOf),
        ] {
            if let Some(Value::Array(subs)) = map.get(keyword) {
                let mut nodes = Vec::with_capacity(subs.len());
                for sub in subs {
                    nodes.push(self.node(doc, sub)?);
                }
                parts.push(Node {
                    kind: Kind::Combined(criterion, nodes),
                    ..Node::default()
                });
            }
        }
        let types: Vec<&str> = match map.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if types.is_empty() {
            let has = |keys: &[&str]| keys.iter().any(|k| map.contains_key(*k));
            for (keys, t) in [
                (OBJECT_KEYWORDS, "object"),
                (ARRAY_KEYWORDS, "array"),
                (STRING_KEYWORDS, "string"),
                (NUMBER_KEYWORDS, "number"),
            ] {
                if has(keys) {
                    parts.push(self.typed(doc, map, t)?);
                }
            }
        } else if types.len() == 1 {
            parts.push(self.typed(doc, map, types[0])?);
        } else {
            let mut nodes = Vec::with_capacity(types.len());
            for t in types {
                nodes.push(self.typed(doc, map, t)?);
            }
            parts.push(Node {
                kind: Kind::Combined(Criterion::AnyOf, nodes),
                ..Node::default()
            });
        }
        let kind = match parts.len() {
            0 => Kind::Empty,
            1 => parts.pop().map(|p| p.kind).unwrap_or_default(),
            _ => Kind::Combined(Criterion::AllOf, parts),
        };
        Ok(Node { meta, kind })
    }

    fn typed(&mut self, doc: usize, map: &'a Map<String, Value>, t: &str) -> Result<Node, String> {
        let kind = match t {
            "string" => Kind::String(StringNode {
                min_length: number(map, "minLength"),
                max_length: number(map, "maxLength"),
                pattern: map
                    .get("pattern")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }),
            "integer" | "number" => Kind::Number(self.number_node(map, t == "integer")),
            "boolean" => Kind::Boolean,
            "null" => Kind::Null,
            "object" => Kind::Object(self.object(doc, map)?),
            "array" => Kind::Array(self.array(doc, map)?),
            // The meta-schema check has refused any other type name.
            _ => Kind::Empty,
        };
        Ok(Node {
            kind,
            ..Node::default()
        })
    }

    fn number_node(&self, map: &Map<String, Value>, integer: bool) -> NumberNode {
        let mut n = NumberNode {
            integer,
            minimum: number(map, "minimum"),
            maximum: number(map, "maximum"),
            exclusive_minimum: number(map, "exclusiveMinimum"),
            exclusive_maximum: number(map, "exclusiveMaximum"),
            multiple_of: number(map, "multipleOf"),
        };
        // Draft 4: exclusiveMaximum/Minimum are flags on maximum/minimum.
        if map.get("exclusiveMaximum") == Some(&Value::Bool(true)) {
            n.exclusive_maximum = n.maximum.take();
        }
        if map.get("exclusiveMinimum") == Some(&Value::Bool(true)) {
            n.exclusive_minimum = n.minimum.take();
        }
        n
    }

    fn object(&mut self, doc: usize, map: &'a Map<String, Value>) -> Result<ObjectNode, String> {
        let mut o = ObjectNode {
            min_properties: number(map, "minProperties"),
            max_properties: number(map, "maxProperties"),
            ..ObjectNode::default()
        };
        if let Some(Value::Object(props)) = map.get("properties") {
            for (name, schema) in props {
                o.properties.push((name.clone(), self.node(doc, schema)?));
            }
        }
        if let Some(Value::Array(required)) = map.get("required") {
            o.required = required
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
        }
        if let Some(Value::Object(patterns)) = map.get("patternProperties") {
            for (pattern, schema) in patterns {
                o.pattern_properties
                    .push((pattern.clone(), self.node(doc, schema)?));
            }
        }
        o.additional = self.additional(doc, map.get("additionalProperties"))?;
        let mut dependencies: Vec<(&String, &'a Value)> = Vec::new();
        for keyword in ["dependencies", "dependentRequired", "dependentSchemas"] {
            if let Some(Value::Object(deps)) = map.get(keyword) {
                dependencies.extend(deps.iter());
            }
        }
        for (name, dep) in dependencies {
            match dep {
                Value::Array(names) => o.dependency_arrays.push((
                    name.clone(),
                    names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                )),
                schema => o
                    .dependency_schemas
                    .push((name.clone(), self.node(doc, schema)?)),
            }
        }
        Ok(o)
    }

    fn array(&mut self, doc: usize, map: &'a Map<String, Value>) -> Result<ArrayNode, String> {
        let mut a = ArrayNode {
            min_items: number(map, "minItems"),
            max_items: number(map, "maxItems"),
            unique_items: map.get("uniqueItems") == Some(&Value::Bool(true)),
            ..ArrayNode::default()
        };
        let modern = self.draft == jsonschema::Draft::Draft202012;
        let (list, rest) = if modern {
            (map.get("prefixItems"), map.get("items"))
        } else {
            (map.get("items"), map.get("additionalItems"))
        };
        match list {
            Some(Value::Array(items)) => {
                for item in items {
                    a.item_list.push(self.node(doc, item)?);
                }
                a.additional = self.additional(doc, rest)?;
            }
            Some(schema) if !modern => {
                a.all_items = Some(Box::new(self.node(doc, schema)?));
                a.additional = Additional {
                    permits: true,
                    schema: None,
                };
            }
            _ => {
                if modern && let Some(schema) = rest {
                    a.all_items = Some(Box::new(self.node(doc, schema)?));
                }
                a.additional = Additional {
                    permits: true,
                    schema: None,
                };
            }
        }
        Ok(a)
    }

    fn additional(&mut self, doc: usize, value: Option<&'a Value>) -> Result<Additional, String> {
        Ok(match value {
            None | Some(Value::Bool(true)) => Additional {
                permits: true,
                schema: None,
            },
            Some(Value::Bool(false)) => Additional {
                permits: false,
                schema: None,
            },
            Some(schema) => Additional {
                permits: true,
                schema: Some(Box::new(self.node(doc, schema)?)),
            },
        })
    }

    /// The def index of what `reference` (in document `doc`) points at, queued to be
    /// built the first time.
    fn reference(&mut self, doc: usize, reference: &str) -> Result<usize, String> {
        let (uri, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let target_doc = if uri.is_empty() {
            doc
        } else {
            self.document(uri)
                .ok_or_else(|| format!("$ref '{reference}' names no schema among the references"))?
        };
        let pointer = if fragment.is_empty() || fragment.starts_with('/') {
            percent_decode(fragment)
        } else {
            // A plain-name fragment: the subschema with that $anchor.
            anchor(&self.docs[target_doc].value, fragment, "")
                .ok_or_else(|| format!("$ref '{reference}' names no $anchor '{fragment}'"))?
        };
        let key = (target_doc, pointer);
        if let Some(i) = self.targets.get(&key) {
            return Ok(*i);
        }
        if self.docs[target_doc].value.pointer(&key.1).is_none() {
            return Err(format!("$ref '{reference}' points at nothing"));
        }
        let i = self.targets.len();
        self.targets.insert(key.clone(), i);
        self.queue.push_back(key);
        Ok(i)
    }

    fn document(&self, uri: &str) -> Option<usize> {
        let root_id = self.docs[0].id.as_deref();
        self.docs.iter().enumerate().skip(1).find_map(|(i, d)| {
            let named = d.name == uri
                || uri.ends_with(&format!("/{}", d.name))
                || d.id.as_deref() == Some(uri)
                || uris_of(d, root_id).iter().any(|u| u == uri);
            named.then_some(i)
        })
    }
}

fn number(map: &Map<String, Value>, key: &str) -> Option<f64> {
    map.get(key).and_then(Value::as_f64)
}

/// JSON pointer escapes in a URI fragment (`%25` and friends).
fn percent_decode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON pointer of the subschema whose `$anchor` is `name`.
fn anchor(value: &Value, name: &str, at: &str) -> Option<String> {
    match value {
        Value::Object(map) => {
            if map.get("$anchor").and_then(Value::as_str) == Some(name) {
                return Some(at.to_string());
            }
            map.iter().find_map(|(k, v)| {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                anchor(v, name, &format!("{at}/{escaped}"))
            })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| anchor(v, name, &format!("{at}/{i}"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(text: &str) -> Arc<StoredSchema> {
        Arc::new(StoredSchema {
            schema_type: SchemaType::Json,
            schema: text.into(),
            references: vec![],
            metadata: None,
            rule_set: None,
        })
    }

    #[test]
    fn every_draft_parses_and_unknown_drafts_are_refused() {
        for uri in [
            "http://json-schema.org/draft-04/schema#",
            "http://json-schema.org/draft-06/schema#",
            "http://json-schema.org/draft-07/schema#",
            "https://json-schema.org/draft/2019-09/schema",
            "https://json-schema.org/draft/2020-12/schema",
        ] {
            let text = format!(r#"{{"$schema":"{uri}","type":"object"}}"#);
            assert!(JsonSchema::parse(&text, &[]).is_ok(), "{uri}");
        }
        let e = JsonSchema::parse(r#"{"$schema":"http://example.com/mine"}"#, &[]).unwrap_err();
        assert!(e.contains("names no draft"), "{e}");
    }

    #[test]
    fn bad_schemas_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "not JSON"),
            ("{", "not JSON"),
            ("[1]", "object or a boolean"),
            (r#"{"type":"nope"}"#, "not valid"),
            (r#"{"type":"object","minProperties":-1}"#, "not valid"),
            (r#"{"$ref":"other.json"}"#, "other.json"),
            (r##"{"$ref":"#/definitions/Missing"}"##, "does not exist"),
        ];
        for (text, expected) in cases {
            let e = JsonSchema::parse(text, &[]).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let deep = format!("{}{}", r#"{"not":"#.repeat(300), "}".repeat(300));
        assert!(JsonSchema::parse(&deep, &[]).is_err());
    }

    #[test]
    fn identity_ignores_whitespace_and_key_order() {
        let a = JsonSchema::parse(
            r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}}}"#,
            &[],
        )
        .unwrap();
        let b = JsonSchema::parse(
            r#"{ "properties": { "b": {"type": "integer"}, "a": {"type": "string"} },
                 "type": "object" }"#,
            &[],
        )
        .unwrap();
        let c = JsonSchema::parse(r#"{"type":"object","properties":{"a":{"type":"string","default":"x"},"b":{"type":"integer"}}}"#, &[]).unwrap();
        assert_eq!(a.canonical(false), b.canonical(false));
        assert_ne!(a.canonical(false), c.canonical(false));
    }

    #[test]
    fn references_resolve_by_name() {
        let address = stored(
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#,
        );
        let text = r#"{"type":"object","properties":{"home":{"$ref":"address.json"}}}"#;
        assert!(JsonSchema::parse(text, &[]).is_err());
        let parsed = JsonSchema::parse(text, &[("address.json".into(), address)]).unwrap();
        let Kind::Object(o) = &parsed.root.kind else {
            panic!("{:?}", parsed.root)
        };
        let home = parsed.resolve(o.property("home").unwrap());
        assert!(matches!(&home.kind, Kind::Object(h) if h.required == ["city"]));
    }

    #[test]
    fn recursive_refs_build_once() {
        let text = r##"{"$defs":{"node":{"type":"object","properties":{"next":{"$ref":"#/$defs/node"}}}},"$ref":"#/$defs/node","$schema":"https://json-schema.org/draft/2020-12/schema"}"##;
        let parsed = JsonSchema::parse(text, &[]).unwrap();
        assert_eq!(parsed.defs.len(), 1);
    }
}
