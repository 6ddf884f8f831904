//! The REST API: Confluent's paths, query flags, bodies and response shapes, each route
//! a translation into one `Registry` call.
//!
//! - Content types `application/vnd.schemaregistry.v1+json`,
//!   `application/vnd.schemaregistry+json` and `application/json` are accepted; the
//!   response takes the first of them the client's `Accept` allows.
//! - Query flags are read case-insensitively, names and values (`normalize=False`), and
//!   like Confluent's (Java's `Boolean.parseBoolean`) anything but `true` is false.
//! - Unknown body fields are ignored; `metadata` and `ruleSet` are stored.
//! - Every error is `{"error_code", "message"}` (see `error.rs`), also for unknown
//!   routes (404), wrong methods (405), bad media types (415), bodies too large (413)
//!   and bodies that are not JSON (400).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_broker::Principal;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::compat::Level;
use crate::error::{RegistryError, Result};
use crate::registry::{
    CONFIG_FIELDS, Config, Mode, Registry, SchemaRequest, VersionSpec, VersionView,
};
use crate::schema::{SchemaType, StoredSchema};

/// The media types the API speaks, in the order a response prefers them.
pub const MEDIA_TYPES: &[&str] = &[
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
];

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
}

pub fn router(registry: Arc<Registry>, request_bytes_max: usize) -> Router {
    let state = AppState { registry };
    Router::new()
        .route("/", get(root))
        .route("/openapi.json", get(openapi))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas", get(list_schemas))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(schema_text_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_config).put(put_config).delete(delete_config),
        )
        .route("/mode", get(get_global_mode).put(put_global_mode))
        .route(
            "/mode/{subject}",
            get(get_mode).put(put_mode).delete(delete_mode),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_one),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(request_bytes_max))
        .layer(middleware::from_fn(media_types))
        .with_state(state)
}

/// The API's OpenAPI 3 document (written by hand after Confluent's API; schemathesis
/// runs against it in the test suite).
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// JSON `body` with `status`; the media type is set by `media_types` on the way out.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(MEDIA_TYPES[0]),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "registry response did not serialise");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn ok<T: Serialize>(body: T) -> Response {
    json_response(StatusCode::OK, &body)
}

/// Refuse request media types the API does not speak; answer in the one `Accept` asks.
async fn media_types(request: Request, next: Next) -> Response {
    let has_body = matches!(*request.method(), Method::POST | Method::PUT);
    if has_body && let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let mime = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let accepted = MEDIA_TYPES.contains(&mime.as_str())
            || (mime.starts_with("application/") && mime.ends_with("+json"))
            || mime == "application/octet-stream";
        if !accepted {
            return RegistryError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "HTTP 415 Unsupported Media Type",
            )
            .into_response();
        }
    }
    let answer = response_media_type(
        request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let mut response = next.run(request).await;
    let mut ours = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == MEDIA_TYPES[0].as_bytes());
    if !ours && response.status().is_client_error() {
        // axum's own rejections (a path that is not UTF-8, say) are plain text: say the
        // same in Confluent's shape.
        let status = response.status();
        let text = axum::body::to_bytes(std::mem::take(response.body_mut()), 64 << 10)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        response = RegistryError::http(status, text).into_response();
        ours = true;
    }
    if ours {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(answer));
    }
    response
}

/// The first of our media types that `accept` allows (none named, or `*/*`: the first).
fn response_media_type(accept: &str) -> &'static str {
    let wanted: Vec<String> = accept
        .split(',')
        .filter_map(|part| part.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    for ours in MEDIA_TYPES {
        if wanted.iter().any(|w| w == ours) {
            return ours;
        }
    }
    MEDIA_TYPES[0]
}

async fn not_found() -> RegistryError {
    RegistryError::http(StatusCode::NOT_FOUND, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> RegistryError {
    RegistryError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        "HTTP 405 Method Not Allowed",
    )
}

async fn root() -> Response {
    ok(json!({}))
}

/// Query parameters, names lower-cased.
struct Flags(HashMap<String, String>);

impl Flags {
    fn from(query: Option<String>) -> Flags {
        let mut map = HashMap::new();
        for pair in query.as_deref().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(
                decode_component(k).to_ascii_lowercase(),
                decode_component(v),
            );
        }
        Flags(map)
    }

    fn flag(&self, name: &str) -> bool {
        self.0
            .get(&name.to_ascii_lowercase())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// Percent-decoding of one query component (`+` is a space); bad escapes stay as sent.
fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON object body, with Confluent's errors for what is not one.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = RegistryError;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                RegistryError::http(
                    status,
                    "Request body is larger than registry_request_bytes_max",
                )
            } else {
                RegistryError::http(StatusCode::BAD_REQUEST, e.body_text())
            }
        })?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            Some(_) => {
                return Err(RegistryError::http(
                    StatusCode::BAD_REQUEST,
                    "The request body must be a JSON object",
                ));
            }
            None => {
                return Err(RegistryError::http(
                    StatusCode::BAD_REQUEST,
                    "The request body is empty; expected a JSON object",
                ));
            }
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let status = if e.is_data() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            RegistryError::http(status, e.to_string())
        })
    }
}

/// Who calls: nobody authenticates yet, so everyone is anonymous.
fn principal() -> Principal {
    Principal::anonymous()
}

/// Run a registry change off the async threads: it waits for the meta store's fsync.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::store(format!("the registry task failed: {e}")))?
}

fn parse_id(text: &str) -> Result<u32> {
    text.parse::<u32>()
        .ok()
        .filter(|id| *id <= i32::MAX as u32)
        .ok_or_else(RegistryError::schema_not_found)
}

/// `schemaType` (omitted for AVRO, as Confluent does), `references` (omitted when
/// none), `metadata`, `ruleSet`.
fn schema_fields(out: &mut Map<String, Value>, schema: &StoredSchema) {
    if schema.schema_type != SchemaType::Avro {
        out.insert("schemaType".into(), json!(schema.schema_type.name()));
    }
    if !schema.references.is_empty() {
        out.insert("references".into(), json!(schema.references));
    }
    if let Some(m) = &schema.metadata {
        out.insert("metadata".into(), m.clone());
    }
    if let Some(r) = &schema.rule_set {
        out.insert("ruleSet".into(), r.clone());
    }
}

fn version_body(view: &VersionView) -> Value {
    let mut out = Map::new();
    out.insert("subject".into(), json!(view.subject));
    out.insert("version".into(), json!(view.version));
    out.insert("id".into(), json!(view.id));
    schema_fields(&mut out, &view.schema);
    out.insert("schema".into(), json!(view.schema.schema));
    if view.deleted {
        out.insert("deleted".into(), json!(true));
    }
    Value::Object(out)
}

async fn list_subjects(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let f = Flags::from(q);
    ok(s.registry.subjects(
        f.text("subjectPrefix").unwrap_or(""),
        f.flag("deleted"),
        f.flag("deletedOnly"),
    ))
}

async fn register(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response> {
    let normalize = Flags::from(q).flag("normalize");
    let registry = s.registry.clone();
    let (id, _version) =
        blocking(move || registry.register(&principal(), &subject, &request, normalize)).await?;
    Ok(ok(json!({ "id": id })))
}

async fn lookup(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response> {
    let f = Flags::from(q);
    let view = s.registry.lookup(
        &principal(),
        &subject,
        &request,
        f.flag("normalize"),
        f.flag("deleted"),
    )?;
    Ok(ok(version_body(&view)))
}

async fn delete_subject(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let permanent = Flags::from(q).flag("permanent");
    let registry = s.registry.clone();
    let versions =
        blocking(move || registry.delete_subject(&principal(), &subject, permanent)).await?;
    Ok(ok(versions))
}

async fn list_versions(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let f = Flags::from(q);
    Ok(ok(s.registry.versions(
        &subject,
        f.flag("deleted"),
        f.flag("deletedOnly"),
    )?))
}

async fn get_version(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let spec = VersionSpec::parse(&version)?;
    let f = Flags::from(q);
    let view = s.registry.version(&subject, spec, f.flag("deleted"))?;
    let mut body = version_body(&view);
    if let Some(format) = f.text("format") {
        body["schema"] = json!(s.registry.schema_text(view.id, Some(format))?);
    }
    Ok(ok(body))
}

async fn get_version_schema(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let spec = VersionSpec::parse(&version)?;
    let view = s
        .registry
        .version(&subject, spec, Flags::from(q).flag("deleted"))?;
    Ok(raw_schema(&view.schema.schema))
}

/// A schema's own text as the body (Confluent sends it as is, in its JSON media type).
fn raw_schema(text: &str) -> Response {
    let mut response = (StatusCode::OK, Body::from(text.to_string())).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(MEDIA_TYPES[0]),
    );
    response
}

async fn referenced_by(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    let spec = VersionSpec::parse(&version)?;
    Ok(ok(s.registry.referenced_by(&subject, spec)?))
}

async fn delete_version(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let spec = VersionSpec::parse(&version)?;
    let permanent = Flags::from(q).flag("permanent");
    let registry = s.registry.clone();
    let version =
        blocking(move || registry.delete_version(&principal(), &subject, spec, permanent)).await?;
    Ok(ok(version))
}

async fn list_schemas(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let f = Flags::from(q);
    let views = s.registry.schemas(
        f.text("subjectPrefix").unwrap_or(""),
        f.flag("deleted"),
        f.flag("latestOnly"),
    );
    ok(views.iter().map(version_body).collect::<Vec<_>>())
}

async fn schema_types() -> Response {
    ok(SchemaType::SUPPORTED
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>())
}

/// `?format=serialized` gives a Protobuf schema as the base64 descriptor the clients'
/// deserializers decode; other formats and types give the text as stored.
async fn schema_by_id(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let schema = s.registry.schema_by_id(id)?;
    let mut out = Map::new();
    schema_fields(&mut out, &schema);
    let text = s.registry.schema_text(id, Flags::from(q).text("format"))?;
    out.insert("schema".into(), json!(text));
    Ok(ok(Value::Object(out)))
}

async fn schema_text_by_id(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let id = parse_id(&id)?;
    s.registry.schema_by_id(id)?;
    let text = s.registry.schema_text(id, Flags::from(q).text("format"))?;
    Ok(raw_schema(&text))
}

async fn subjects_by_id(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let pairs = s
        .registry
        .versions_of_id(parse_id(&id)?, Flags::from(q).flag("deleted"))?;
    let mut subjects: Vec<String> = pairs.into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    Ok(ok(subjects))
}

async fn versions_by_id(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let pairs = s
        .registry
        .versions_of_id(parse_id(&id)?, Flags::from(q).flag("deleted"))?;
    Ok(ok(pairs
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect::<Vec<_>>()))
}

/// A config as GET shows it: `compatibilityLevel` and the other known fields.
fn config_body(config: &Config) -> Value {
    let mut out = Map::new();
    if let Some(level) = config.compatibility {
        out.insert("compatibilityLevel".into(), json!(level.name()));
    }
    for key in CONFIG_FIELDS {
        if let Some(v) = config.other.get(*key) {
            out.insert((*key).to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// A PUT /config body: `compatibility` (or `compatibilityLevel`) and the known fields;
/// returns the config and the body to answer with (Confluent echoes the request).
fn config_update(body: Map<String, Value>) -> Result<(Config, Value)> {
    let mut config = Config::default();
    let mut echo = Map::new();
    for (key, value) in body {
        if key == "compatibility" || key == "compatibilityLevel" {
            if value.is_null() {
                continue;
            }
            let level = value
                .as_str()
                .and_then(Level::parse)
                .ok_or_else(RegistryError::invalid_compatibility_level)?;
            config.compatibility = Some(level);
            echo.insert("compatibility".into(), json!(level.name()));
        } else if CONFIG_FIELDS.contains(&key.as_str()) && !value.is_null() {
            echo.insert(key.clone(), value.clone());
            config.other.insert(key, value);
        }
    }
    Ok((config, Value::Object(echo)))
}

async fn get_global_config(State(s): State<AppState>) -> Result<Response> {
    Ok(ok(config_body(&s.registry.config(None, true)?)))
}

async fn get_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let config = s
        .registry
        .config(Some(&subject), Flags::from(q).flag("defaultToGlobal"))?;
    Ok(ok(config_body(&config)))
}

async fn put_global_config(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response> {
    put_config_of(s, None, body).await
}

async fn put_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response> {
    put_config_of(s, Some(subject), body).await
}

async fn put_config_of(
    s: AppState,
    subject: Option<String>,
    body: Map<String, Value>,
) -> Result<Response> {
    let (config, echo) = config_update(body)?;
    let registry = s.registry.clone();
    blocking(move || registry.set_config(&principal(), subject.as_deref(), config)).await?;
    Ok(ok(echo))
}

async fn delete_global_config(State(s): State<AppState>) -> Result<Response> {
    let registry = s.registry.clone();
    let old = blocking(move || registry.delete_config(&principal(), None)).await?;
    Ok(ok(config_body(&old)))
}

async fn delete_config(State(s): State<AppState>, Path(subject): Path<String>) -> Result<Response> {
    let registry = s.registry.clone();
    let old = blocking(move || registry.delete_config(&principal(), Some(&subject))).await?;
    Ok(ok(config_body(&old)))
}

async fn get_global_mode(State(s): State<AppState>) -> Result<Response> {
    Ok(ok(json!({"mode": s.registry.mode(None, true)?.name()})))
}

async fn get_mode(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let mode = s
        .registry
        .mode(Some(&subject), Flags::from(q).flag("defaultToGlobal"))?;
    Ok(ok(json!({"mode": mode.name()})))
}

async fn put_global_mode(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response> {
    put_mode_of(s, None, Flags::from(q).flag("force"), body).await
}

async fn put_mode(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response> {
    put_mode_of(s, Some(subject), Flags::from(q).flag("force"), body).await
}

async fn put_mode_of(
    s: AppState,
    subject: Option<String>,
    force: bool,
    body: Map<String, Value>,
) -> Result<Response> {
    let text = body.get("mode").and_then(Value::as_str).unwrap_or("");
    let mode = Mode::parse(text).ok_or_else(|| RegistryError::invalid_mode(text))?;
    let registry = s.registry.clone();
    blocking(move || registry.set_mode(&principal(), subject.as_deref(), mode, force)).await?;
    Ok(ok(json!({"mode": mode.name()})))
}

async fn delete_mode(State(s): State<AppState>, Path(subject): Path<String>) -> Result<Response> {
    let registry = s.registry.clone();
    let old = blocking(move || registry.delete_mode(&principal(), &subject)).await?;
    Ok(ok(json!({"mode": old.name()})))
}

fn compatibility_body(messages: Vec<String>, verbose: bool) -> Response {
    let mut out = Map::new();
    out.insert("is_compatible".into(), json!(messages.is_empty()));
    if verbose {
        out.insert("messages".into(), json!(messages));
    }
    ok(Value::Object(out))
}

async fn check_all(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    RawQuery(q): RawQuery,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response> {
    let f = Flags::from(q);
    let messages = s
        .registry
        .check(&principal(), &subject, None, &request, f.flag("normalize"))?;
    Ok(compatibility_body(messages, f.flag("verbose")))
}

async fn check_one(
    State(s): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response> {
    let f = Flags::from(q);
    let spec = VersionSpec::parse(&version)?;
    let messages = s.registry.check(
        &principal(),
        &subject,
        Some(spec),
        &request,
        f.flag("normalize"),
    )?;
    Ok(compatibility_body(messages, f.flag("verbose")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_case_insensitive_and_decoded() {
        let f = Flags::from(Some(
            "Normalize=False&DELETED=TRUE&subjectPrefix=a%2Fb+c&x".into(),
        ));
        assert!(!f.flag("normalize"));
        assert!(f.flag("deleted"));
        assert_eq!(f.text("subjectprefix"), Some("a/b c"));
        assert!(!f.flag("x"));
        assert_eq!(decode_component("%"), "%");
        assert_eq!(decode_component("%zz%4"), "%zz%4");
    }

    #[test]
    fn responses_take_the_first_media_type_the_client_accepts() {
        assert_eq!(response_media_type(""), MEDIA_TYPES[0]);
        assert_eq!(response_media_type("*/*"), MEDIA_TYPES[0]);
        assert_eq!(response_media_type("application/json"), "application/json");
        assert_eq!(
            response_media_type("application/json, application/vnd.schemaregistry+json"),
            "application/vnd.schemaregistry+json"
        );
    }
}
