//! Protobuf schemas: `.proto` text, or the base64 `FileDescriptorProto` that
//! confluent-kafka's Python ProtobufSerializer registers (`serialized_pb` of the message's
//! file; each import it registers as a schema of its own, referenced by the import's
//! path, except the well-known `google/protobuf/*`, `google/type/*` and `confluent/*`
//! files, which it skips). Both are compiled by `protox` (no protoc) with the referenced
//! schemas as the files they import by name and `google/protobuf/*` built in, so a
//! schema that does not compile, or imports what it does not reference, is a 42201.
//!
//! Identity is the compiled file's descriptor, without its file name, source positions
//! and derived JSON names, so `.proto` text and its serialized descriptor, or two texts
//! differing in whitespace, comments or notation, get one id; `normalize` also orders
//! fields by number.
//!
//! `serialized()` is what `?format=serialized` answers with: the base64 descriptor the
//! Python deserializer decodes (it fetches every schema that way), whichever form was
//! registered.
//!
//! Bounds: protox's parser nests messages at most 31 deep and prost decodes at most 100
//! deep; `NESTING_MAX` bounds the other brackets of a `.proto` text (option values)
//! before it is parsed.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use prost::Message as _;
use prost_reflect::{DescriptorPool, FileDescriptor};
use prost_types::{DescriptorProto, FileDescriptorProto};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use crate::schema::{SchemaType, StoredSchema};

/// Deepest `{`/`[`/`<` nesting a `.proto` text may have.
pub const NESTING_MAX: usize = 64;

/// The file name a schema compiles under when it has none of its own.
const ROOT_NAME: &str = "schema.proto";
const ROOT_NAME_ALT: &str = "herald-schema.proto";

#[derive(Debug)]
pub struct ProtobufSchema {
    pub pool: DescriptorPool,
    pub file: FileDescriptor,
}

impl ProtobufSchema {
    pub fn parse(
        text: &str,
        imports: &[(String, Arc<StoredSchema>)],
    ) -> Result<ProtobufSchema, String> {
        let mut files: HashMap<String, File> = HashMap::new();
        for (name, stored) in imports {
            if stored.schema_type != SchemaType::Protobuf {
                return Err(format!(
                    "the reference '{name}' is a {} schema, not PROTOBUF",
                    stored.schema_type.name()
                ));
            }
            let file = to_file(name, &stored.schema)
                .map_err(|e| format!("the referenced schema '{name}': {e}"))?;
            files.insert(name.clone(), file);
        }
        let root_name = match descriptor(text) {
            Some(d) => d
                .name
                .clone()
                .filter(|n| !n.is_empty() && !files.contains_key(n)),
            None => None,
        }
        .unwrap_or_else(|| {
            if files.contains_key(ROOT_NAME) {
                ROOT_NAME_ALT.to_string()
            } else {
                ROOT_NAME.to_string()
            }
        });
        let root = to_file(&root_name, text)?;
        files.insert(root_name.clone(), root);

        let mut resolver = ChainFileResolver::new();
        resolver.add(Files(files));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler
            .open_file(&root_name)
            .map_err(|e| format!("the schema does not compile: {}", error_text(&e)))?;
        let pool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(&root_name)
            .ok_or("the schema compiled to no file")?;
        Ok(ProtobufSchema { pool, file })
    }

    /// The root file's descriptor as the deserializers want it: no source positions.
    fn proto(&self) -> FileDescriptorProto {
        FileDescriptorProto {
            source_code_info: None,
            ..self.file.file_descriptor_proto().clone()
        }
    }

    pub fn canonical(&self, normalize: bool) -> String {
        let mut proto = self.proto();
        proto.name = None;
        for message in &mut proto.message_type {
            plain(message, normalize);
        }
        STANDARD.encode(proto.encode_to_vec())
    }

    /// The base64 `FileDescriptorProto` (`?format=serialized`).
    pub fn serialized(&self) -> String {
        STANDARD.encode(self.proto().encode_to_vec())
    }
}

/// Leave out what compilers derive (JSON names) and, with `normalize`, order fields by
/// number. Message nesting is bounded (see the module doc).
fn plain(message: &mut DescriptorProto, normalize: bool) {
    for field in &mut message.field {
        field.json_name = None;
    }
    if normalize {
        message.field.sort_by_key(|f| f.number);
    }
    for nested in &mut message.nested_type {
        plain(nested, normalize);
    }
}

/// `text` as a serialized descriptor, if it is one (base64 of a `FileDescriptorProto`).
/// `.proto` text is never valid base64 (it has spaces, `;` and `{`).
fn descriptor(text: &str) -> Option<FileDescriptorProto> {
    let compact: String = text.split_ascii_whitespace().collect();
    if compact.is_empty()
        || !compact
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return None;
    }
    let bytes = STANDARD.decode(compact.as_bytes()).ok()?;
    FileDescriptorProto::decode(bytes.as_slice()).ok()
}

/// A schema's text as the file `name` the compiler opens.
fn to_file(name: &str, text: &str) -> Result<File, String> {
    if let Some(mut proto) = descriptor(text) {
        proto.name = Some(name.to_string());
        return Ok(File::from_file_descriptor_proto(proto));
    }
    nesting_within_bounds(text)?;
    File::from_source(name, text)
        .map_err(|e| format!("the schema does not parse: {}", error_text(&e)))
}

/// protox's errors are diagnostics: the message, then where.
fn error_text(error: &protox::Error) -> String {
    let mut text = error.to_string();
    if let Some(file) = error.file() {
        text = format!("{text} (in {file})");
    }
    text
}

/// Refuse, before parsing, bracket nesting deeper than `NESTING_MAX`, outside string
/// literals and comments.
fn nesting_within_bounds(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'{' | b'[' | b'<' => {
                depth += 1;
                if depth > NESTING_MAX {
                    return Err(format!(
                        "the schema nests brackets more than {NESTING_MAX} deep"
                    ));
                }
            }
            b'}' | b']' | b'>' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The referenced schemas and the schema itself, by the names they are imported by.
struct Files(HashMap<String, File>);

impl FileResolver for Files {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| protox::Error::file_not_found(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"
        syntax = "proto3";
        package acme;
        import "google/protobuf/timestamp.proto";
        message Order {
          string id = 1;   // the order's id
          int64 cents = 2;
          google.protobuf.Timestamp at = 3;
        }
    "#;

    fn stored(text: &str) -> Arc<StoredSchema> {
        Arc::new(StoredSchema {
            schema_type: SchemaType::Protobuf,
            schema: text.into(),
            references: vec![],
            metadata: None,
            rule_set: None,
        })
    }

    #[test]
    fn text_and_its_serialized_descriptor_are_one_schema() {
        let text = ProtobufSchema::parse(ORDER, &[]).unwrap();
        let serialized = text.serialized();
        let back = ProtobufSchema::parse(&serialized, &[]).unwrap();
        assert_eq!(text.canonical(false), back.canonical(false));
        let spaced = ProtobufSchema::parse(
            &ORDER.replace("  ", "    ").replace("// the order's id", ""),
            &[],
        )
        .unwrap();
        assert_eq!(text.canonical(false), spaced.canonical(false));
        let other = ProtobufSchema::parse(&ORDER.replace("cents = 2", "cents = 4"), &[]).unwrap();
        assert_ne!(text.canonical(false), other.canonical(false));
    }

    #[test]
    fn normalize_orders_fields_by_number() {
        let a = ProtobufSchema::parse(
            "syntax = \"proto3\"; message M { int32 a = 1; int32 b = 2; }",
            &[],
        )
        .unwrap();
        let b = ProtobufSchema::parse(
            "syntax = \"proto3\"; message M { int32 b = 2; int32 a = 1; }",
            &[],
        )
        .unwrap();
        assert_ne!(a.canonical(false), b.canonical(false));
        assert_eq!(a.canonical(true), b.canonical(true));
    }

    #[test]
    fn imports_are_references() {
        let customer =
            stored("syntax = \"proto3\"; package acme; message Customer { string name = 1; }");
        let text = "syntax = \"proto3\"; package acme; import \"customer.proto\"; message Order { Customer by = 1; }";
        let e = ProtobufSchema::parse(text, &[]).unwrap_err();
        assert!(e.contains("customer.proto"), "{e}");
        let parsed =
            ProtobufSchema::parse(text, &[("customer.proto".into(), customer.clone())]).unwrap();
        assert!(parsed.pool.get_message_by_name("acme.Customer").is_some());
        // The same import given as a serialized descriptor.
        let serialized = ProtobufSchema::parse(&customer.schema, &[])
            .unwrap()
            .serialized();
        assert!(
            ProtobufSchema::parse(text, &[("customer.proto".into(), stored(&serialized))]).is_ok()
        );
    }

    #[test]
    fn bad_schemas_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("message {", "does not parse"),
            (
                "syntax = \"proto3\"; message M { Missing m = 1; }",
                "does not compile",
            ),
            (
                "syntax = \"proto3\"; message M { int32 a = 1; int32 b = 1; }",
                "does not compile",
            ),
            ("bm90IGEgZGVzY3JpcHRvcg==", "does not parse"),
        ];
        for (text, expected) in cases {
            let e = ProtobufSchema::parse(text, &[]).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let deep = format!(
            "syntax = \"proto3\"; message M {{ option (x) = {}{}; }}",
            "{ a: ".repeat(5000),
            "}".repeat(5000)
        );
        let e = ProtobufSchema::parse(&deep, &[]).unwrap_err();
        assert!(e.contains("nests brackets"), "{e}");
        let nested = format!("{}{}", "message M { ".repeat(100), "}".repeat(100));
        assert!(ProtobufSchema::parse(&nested, &[]).is_err());
    }
}
