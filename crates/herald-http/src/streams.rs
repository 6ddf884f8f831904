//! The event store over HTTP/JSON: append with an expected revision, read a stream (a
//! category `$ce-x`, an event type `$et-x` are streams too) or `$all`, delete or
//! tombstone, stream metadata, and Server-Sent Events subscriptions (`subscribe.rs`).
//! What these mean lives in `herald_broker::streams`, shared with the gRPC front end,
//! so an event appended here is the event a KurrentDB client reads there; this file
//! only translates JSON and query strings into those calls and their answers back.
//!
//! `$all` shares the `/streams/{stream}` routes (a stream named `$all` cannot be
//! written, so the name is free): `GET /streams/$all` reads it, `GET
//! /streams/$all/subscribe` follows it. Either `$all` or `%24all` in the URL.

pub(crate) mod subscribe;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use herald_broker::streams::{
    APPEND_EVENTS_MAX, AllFilter, Appended, Expected, FilterOn, METADATA_TYPE, NewEvent, ReadEvent,
    ReadFrom, RecordedEvent, StreamError, StreamRead,
};
use herald_broker::{BrokerError, Principal};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::body::{JsonBody, parse_object};
use crate::error::{ApiError, ErrorBody};
use crate::records::{bad_request, broker_error, path_rejection, query_rejection};

/// The stream name that means every event in log order.
pub const ALL_STREAM: &str = "$all";
/// Events a read returns when it does not say (`count`).
pub const READ_COUNT_DEFAULT: u64 = 100;
/// Most events asked of the broker per step of a read.
const READ_PAGE_EVENTS: u64 = 100;
/// Events of `$all` one filtered read step looks at, so a filter that matches little
/// still answers (with where to go on from) instead of scanning the whole log.
const ALL_EXAMINE_PER_STEP: usize = 4_096;
/// Events of `$all` one request looks at in all, for the same reason.
const ALL_EXAMINE_PER_REQUEST: usize = 100_000;
/// KurrentDB's old HTTP API's header for an expected version (-2 any, -1 no stream,
/// -4 stream exists, n the revision).
pub const EXPECTED_VERSION_HEADER: &str = "es-expectedversion";
/// KurrentDB's old HTTP API's header that makes a delete a tombstone.
pub const HARD_DELETE_HEADER: &str = "es-harddelete";

/// What a route answers when the broker refuses: an error body, or a conflict body
/// that also says what the stream's revision is.
#[derive(Debug)]
pub enum Refusal {
    Api(ApiError),
    /// Boxed: a conflict is rare and its body large next to an error's.
    Conflict(Box<ConflictBody>),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Api(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Api(e) => e.into_response(),
            Refusal::Conflict(body) => (StatusCode::CONFLICT, Json(body)).into_response(),
        }
    }
}

/// 409: the stream is not as the request expected.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictBody {
    /// `wrong_expected_version`.
    pub error: String,
    pub message: String,
    pub stream: String,
    /// What the request expected, as it may be written in a request.
    #[schema(value_type = Value)]
    pub expected_revision: serde_json::Value,
    /// The stream's last revision; null when it has no events.
    pub current_revision: Option<u64>,
}

/// A broker refusal as an HTTP answer.
pub(crate) fn stream_error(e: StreamError) -> Refusal {
    let message = e.to_string();
    match e {
        StreamError::WrongExpectedVersion {
            stream,
            expected,
            current,
        } => Refusal::Conflict(Box::new(ConflictBody {
            error: "wrong_expected_version".into(),
            message,
            stream,
            expected_revision: expected_json(expected),
            current_revision: current,
        })),
        StreamError::Deleted(_) => {
            ApiError::new(StatusCode::GONE, "stream_deleted", message).into()
        }
        StreamError::BadRequest(_) => bad_request("invalid_request", message).into(),
        StreamError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "append_too_large", message).into()
        }
        StreamError::SubscriptionExists { .. } => {
            ApiError::new(StatusCode::CONFLICT, "subscription_exists", message).into()
        }
        StreamError::SubscriptionNotFound { .. } => {
            ApiError::not_found("subscription_not_found", message).into()
        }
        StreamError::MaximumSubscribers { .. } => {
            ApiError::new(StatusCode::CONFLICT, "maximum_subscribers", message).into()
        }
        StreamError::Broker(BrokerError::ShuttingDown) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message).into()
        }
        StreamError::Broker(b) => {
            tracing::warn!(error = %b, "event store call over HTTP failed");
            broker_error(b).into()
        }
    }
}

fn expected_json(e: Expected) -> serde_json::Value {
    match e {
        Expected::Any => "any".into(),
        Expected::NoStream => "no_stream".into(),
        Expected::StreamExists => "stream_exists".into(),
        Expected::Revision(r) => r.into(),
    }
}

/// An expected revision written as a name (`any`, `no_stream`, `stream_exists`) or a
/// number (a revision, or KurrentDB's -2 any, -1 no stream, -4 stream exists).
fn parse_expected(text: &str) -> Option<Expected> {
    match text.trim() {
        "any" => Some(Expected::Any),
        "no_stream" => Some(Expected::NoStream),
        "stream_exists" => Some(Expected::StreamExists),
        other => match other.parse::<i64>().ok()? {
            -2 => Some(Expected::Any),
            -1 => Some(Expected::NoStream),
            -4 => Some(Expected::StreamExists),
            n => u64::try_from(n).ok().map(Expected::Revision),
        },
    }
}

fn bad_expected(field: &str, given: &str) -> ApiError {
    bad_request(
        "invalid_expected_revision",
        format!(
            "{field} {given:?} is not an expected revision: any, no_stream, stream_exists, a \
             revision (0 or more) or -2/-1/-4"
        ),
    )
}

/// The expected revision from the body, the query and the `ES-ExpectedVersion` header
/// (`any` when none says); two that disagree are a bad request.
fn expected_from(
    body: Option<&serde_json::Value>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Expected, ApiError> {
    let mut found: Vec<(&str, Expected)> = Vec::new();
    if let Some(v) = body {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(bad_expected("expected_revision", &other.to_string())),
        };
        let e = parse_expected(&text).ok_or_else(|| bad_expected("expected_revision", &text))?;
        found.push(("the body's expected_revision", e));
    }
    if let Some(q) = query {
        let e = parse_expected(q).ok_or_else(|| bad_expected("expected_revision", q))?;
        found.push(("the query's expected_revision", e));
    }
    if let Some(h) = headers.get(EXPECTED_VERSION_HEADER) {
        let text = h.to_str().unwrap_or("(not text)");
        let e = parse_expected(text).ok_or_else(|| bad_expected("ES-ExpectedVersion", text))?;
        found.push(("ES-ExpectedVersion", e));
    }
    match found.as_slice() {
        [] => Ok(Expected::Any),
        [(_, first), rest @ ..] => match rest.iter().find(|(_, e)| e != first) {
            None => Ok(*first),
            Some((other, _)) => Err(bad_request(
                "invalid_expected_revision",
                format!("{} and {other} disagree", found[0].0),
            )),
        },
    }
}

/// A stream name from the path, checked as the broker checks it.
fn stream_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(stream) = path.map_err(path_rejection)?;
    herald_broker::streams::check_stream_name(&stream)
        .map_err(|e| bad_request("invalid_stream", e.to_string()))?;
    Ok(stream)
}

fn who() -> Principal {
    Principal::anonymous()
}

// ------------------------------------------------------------------ events as JSON

/// An event as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventJson {
    pub stream: String,
    /// Its revision in `stream` (0 for the first event).
    pub revision: u64,
    /// Its position in `$all` (commit and prepare position alike).
    pub position: u64,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub content_type: String,
    /// The data as JSON, when the content type is JSON and the data parses.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub data: Option<Box<RawValue>>,
    /// The data in standard base64, when it is not given as `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// The custom metadata as JSON, when it parses (absent when there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub metadata: Option<Box<RawValue>>,
    /// The custom metadata in base64, when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_base64: Option<String>,
    /// When it was appended (RFC 3339, UTC, milliseconds).
    pub created: String,
    pub created_ms: i64,
    /// For an event read through a system stream (`$ce-`, `$et-`, `$bc-`, `$streams`)
    /// with `resolve_links`: the link that led to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkJson>,
}

/// The link event of a system stream that points at an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkJson {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
}

fn is_json_content_type(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json")
}

/// `bytes` as raw JSON if they are JSON text, else None.
fn as_json(bytes: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(bytes).ok()?;
    RawValue::from_string(text.to_string()).ok()
}

pub(crate) fn event_json(e: &RecordedEvent, link: Option<&RecordedEvent>) -> EventJson {
    let data = if is_json_content_type(&e.content_type) {
        as_json(&e.data)
    } else {
        None
    };
    let data_base64 = data.is_none().then(|| BASE64.encode(&e.data));
    let (metadata, metadata_base64) = if e.custom_metadata.is_empty() {
        (None, None)
    } else {
        match as_json(&e.custom_metadata) {
            Some(m) => (Some(m), None),
            None => (None, Some(BASE64.encode(&e.custom_metadata))),
        }
    };
    EventJson {
        stream: e.stream.clone(),
        revision: e.revision,
        position: e.position,
        id: e.id.hyphenated().to_string(),
        event_type: e.event_type.clone(),
        content_type: e.content_type.clone(),
        data,
        data_base64,
        metadata,
        metadata_base64,
        created: rfc3339_ms(e.created_ms),
        created_ms: e.created_ms,
        link: link.map(|l| LinkJson {
            stream: l.stream.clone(),
            revision: l.revision,
            position: l.position,
        }),
    }
}

/// A stream read's event: the event, and the link it was reached through, if any.
pub(crate) fn read_event_json(e: &ReadEvent) -> EventJson {
    event_json(&e.event, e.link.as_ref())
}

/// The revision a stream read's event has in the stream read (a link's in a system
/// stream), where the next read goes on from.
pub(crate) fn read_revision(e: &ReadEvent) -> u64 {
    e.link.as_ref().map_or(e.event.revision, |l| l.revision)
}

/// Bytes an event costs a response (data and metadata, roughly twice that in base64).
fn event_bytes(e: &RecordedEvent) -> usize {
    e.data.len() + e.custom_metadata.len()
}

/// How many events to ask the broker for next so that a page holds about `bytes` of
/// event data. The broker hands back whole pages and an event may be megabytes, so a
/// page is sized from the largest event of the last one; the first is one event.
pub(crate) fn page_events(bytes: usize, largest: Option<usize>, max: u64) -> u64 {
    match largest {
        None => 1,
        Some(largest) => (bytes / largest.max(1)).clamp(1, max.max(1) as usize) as u64,
    }
}

/// The largest event of a page, for [`page_events`]; None for an empty page.
pub(crate) fn largest_event<'a>(events: impl Iterator<Item = &'a RecordedEvent>) -> Option<usize> {
    events.map(event_bytes).max()
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, with milliseconds.
fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let millis = ms.rem_euclid(1_000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        s / 3_600,
        s % 3_600 / 60,
        s % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ------------------------------------------------------------------ append

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    /// `any` (default), `no_stream`, `stream_exists`, or the stream's current revision.
    /// The `ES-ExpectedVersion` header or `?expected_revision=` may say it instead.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub expected_revision: Option<serde_json::Value>,
    /// The events, appended together or not at all (at most 10000).
    pub events: Vec<NewEventJson>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEventJson {
    /// A UUID; generated when absent. An append retried with the same ids where the
    /// first put them writes nothing and answers as the first did.
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Any JSON value, stored as the JSON text sent (content type `application/json`).
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub data: Option<Box<RawValue>>,
    /// Data bytes in standard base64 instead (content type
    /// `application/octet-stream` unless given).
    pub data_base64: Option<String>,
    /// Custom metadata: any JSON value, stored as the JSON text sent.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub metadata: Option<Box<RawValue>>,
    /// Custom metadata bytes in standard base64 instead.
    pub metadata_base64: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExpectedQuery {
    /// As the body's `expected_revision` (the `ES-ExpectedVersion` header also works).
    pub expected_revision: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppendResponse {
    /// The stream's revision after the append (its last event's); null for an empty
    /// append to a stream with no events.
    pub current_revision: Option<u64>,
    /// The last event's position in `$all`.
    pub position: u64,
}

fn new_event(i: usize, e: NewEventJson) -> Result<NewEvent, ApiError> {
    let field = |name: &str| format!("events[{i}].{name}");
    let id = match &e.id {
        None => uuid::Uuid::new_v4(),
        Some(text) => uuid::Uuid::parse_str(text).map_err(|err| {
            bad_request(
                "invalid_event",
                format!("{}: {text:?} is not a UUID: {err}", field("id")),
            )
        })?,
    };
    if e.event_type.is_empty() {
        return Err(bad_request(
            "invalid_event",
            format!("{} is empty", field("type")),
        ));
    }
    let base64 = |name: &str, text: &str| {
        BASE64.decode(text).map(Bytes::from).map_err(|err| {
            bad_request(
                "invalid_event",
                format!("{} is not standard base64: {err}", field(name)),
            )
        })
    };
    let (data, default_type) = match (e.data, e.data_base64) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "invalid_event",
                format!(
                    "{} and {} are both given",
                    field("data"),
                    field("data_base64")
                ),
            ));
        }
        (Some(json), None) => (
            Bytes::from(json.get().as_bytes().to_vec()),
            "application/json",
        ),
        (None, Some(text)) => (base64("data_base64", &text)?, "application/octet-stream"),
        (None, None) => (Bytes::new(), "application/octet-stream"),
    };
    let custom_metadata = match (e.metadata, e.metadata_base64) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "invalid_event",
                format!(
                    "{} and {} are both given",
                    field("metadata"),
                    field("metadata_base64")
                ),
            ));
        }
        (Some(json), None) => Bytes::from(json.get().as_bytes().to_vec()),
        (None, Some(text)) => base64("metadata_base64", &text)?,
        (None, None) => Bytes::new(),
    };
    let content_type = e
        .content_type
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| default_type.to_string());
    Ok(NewEvent {
        id,
        event_type: e.event_type,
        content_type,
        custom_metadata,
        data,
    })
}

/// Append events to a stream if it is as expected.
#[utoipa::path(post, path = "/streams/{stream}",
    params(("stream" = String, Path, description = "Stream name (at most 1024 bytes)"), ExpectedQuery,
        ("ES-ExpectedVersion" = Option<String>, Header, description = "Expected revision, as KurrentDB's HTTP API took it")),
    request_body = AppendRequest,
    responses(
        (status = 201, body = AppendResponse, description = "Appended (or a retry of the same event ids, which writes nothing)"),
        (status = 200, body = AppendResponse, description = "An append of no events: the stream is as expected"),
        (status = 400, body = ErrorBody), (status = 409, body = ConflictBody),
        (status = 410, body = ErrorBody, description = "The stream is tombstoned"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 503, body = ErrorBody)
    ))]
pub async fn append(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ExpectedQuery>, QueryRejection>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<AppendRequest>,
) -> Result<(StatusCode, Json<AppendResponse>), Refusal> {
    let stream = stream_path(path)?;
    let Query(query) = query.map_err(query_rejection)?;
    let expected = expected_from(
        request.expected_revision.as_ref(),
        query.expected_revision.as_deref(),
        &headers,
    )?;
    if request.events.len() > APPEND_EVENTS_MAX {
        return Err(bad_request(
            "invalid_request",
            format!(
                "events holds {} events; one append takes at most {APPEND_EVENTS_MAX}",
                request.events.len()
            ),
        )
        .into());
    }
    let events = request
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| new_event(i, e))
        .collect::<Result<Vec<_>, _>>()?;
    let empty = events.is_empty();
    let appended = state
        .broker
        .stream_append(&who(), &stream, expected, events)
        .await
        .map_err(stream_error)?;
    if empty {
        let (current, _) = state
            .broker
            .stream_revision(&stream)
            .await
            .map_err(stream_error)?;
        return Ok((
            StatusCode::OK,
            Json(AppendResponse {
                current_revision: current,
                position: appended.position,
            }),
        ));
    }
    Ok((StatusCode::CREATED, Json(appended_json(appended))))
}

fn appended_json(a: Appended) -> AppendResponse {
    AppendResponse {
        current_revision: Some(a.current_revision),
        position: a.position,
    }
}

// ------------------------------------------------------------------ reads

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Forwards,
    Backwards,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadStreamQuery {
    /// `start`, `end` or a revision (default: `start` forwards, `end` backwards).
    pub from: Option<String>,
    #[param(inline)]
    pub direction: Option<Direction>,
    /// Most events to return (default 100, at most `http_read_records_max`). A response
    /// also stops at about `http_read_bytes_max` bytes of event data.
    pub count: Option<u64>,
    /// Read a system stream's links as the events they point at, each with its `link`
    /// (default true, as KurrentDB's HTTP API did); false: the `$>` link events.
    pub resolve_links: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamReadResponse {
    pub stream: String,
    pub events: Vec<EventJson>,
    /// Where to read on from (`from=` with the same direction); null when the read
    /// reached the stream's end (forwards) or start (backwards).
    pub next_revision: Option<u64>,
}

/// `start`, `end` or a number: what `from` or `position` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    Start,
    End,
    At(u64),
}

pub(crate) fn parse_from(field: &str, text: Option<&str>) -> Result<Option<Point>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    match text {
        "start" => Ok(Some(Point::Start)),
        "end" => Ok(Some(Point::End)),
        n => n.parse::<u64>().map(|n| Some(Point::At(n))).map_err(|_| {
            bad_request(
                "invalid_query",
                format!("{field} {n:?} is not start, end or a number"),
            )
        }),
    }
}

fn check_count(state: &AppState, count: Option<u64>) -> Result<u64, ApiError> {
    let count = count.unwrap_or(READ_COUNT_DEFAULT);
    let max = state.limits.read_records_max as u64;
    if count == 0 || count > max {
        return Err(bad_request(
            "invalid_count",
            format!("count must be between 1 and {max} (http_read_records_max)"),
        ));
    }
    Ok(count)
}

/// Read a stream, forwards or backwards. `GET /streams/$all` reads `$all` instead
/// (see that route for its parameters).
#[utoipa::path(get, path = "/streams/{stream}",
    params(("stream" = String, Path, description = "Stream name; `$ce-<category>`, `$et-<type>`, `$bc-<correlation id>` and `$streams` are system streams of links"),
        ReadStreamQuery),
    responses(
        (status = 200, body = StreamReadResponse),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such stream (never written, or soft-deleted)"),
        (status = 410, body = ErrorBody, description = "The stream is tombstoned")
    ))]
pub async fn read(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, Refusal> {
    let stream = stream_path(path)?;
    if stream == ALL_STREAM {
        let Query(query) = Query::try_from_uri(&uri).map_err(query_rejection)?;
        return Ok(read_all_json(&state, query).await?.into_response());
    }
    let Query(query) = Query::<ReadStreamQuery>::try_from_uri(&uri).map_err(query_rejection)?;
    Ok(read_stream_json(&state, stream, query)
        .await?
        .into_response())
}

async fn read_stream_json(
    state: &AppState,
    stream: String,
    query: ReadStreamQuery,
) -> Result<Json<StreamReadResponse>, Refusal> {
    let count = check_count(state, query.count)?;
    let forwards = query.direction.unwrap_or_default() == Direction::Forwards;
    let resolve_links = query.resolve_links.unwrap_or(true);
    let mut cursor = match parse_from("from", query.from.as_deref())? {
        None if forwards => ReadFrom::Start,
        None => ReadFrom::End,
        Some(Point::Start) => ReadFrom::Start,
        Some(Point::End) => ReadFrom::End,
        Some(Point::At(r)) => ReadFrom::Revision(r),
    };
    let broker = &state.broker;
    let (last, _) = broker
        .stream_revision(&stream)
        .await
        .map_err(stream_error)?;
    let bytes_max = state.limits.read_bytes_max;
    let mut events = Vec::new();
    let mut bytes = 0usize;
    // Where the next read would start; None once the end (or start) is reached.
    let mut next = None;
    let mut largest = None;
    loop {
        let left = count - events.len() as u64;
        let asked = page_events(
            bytes_max.saturating_sub(bytes).max(1),
            largest,
            left.min(READ_PAGE_EVENTS),
        );
        let page = match broker
            .stream_read(&who(), &stream, cursor, forwards, asked, resolve_links)
            .await
        {
            Ok(StreamRead::Events(page)) => page,
            Ok(StreamRead::NotFound) if events.is_empty() => {
                return Err(ApiError::not_found(
                    "stream_not_found",
                    format!("no stream named {stream:?}"),
                )
                .into());
            }
            // Deleted while we read: what was read stands.
            Ok(StreamRead::NotFound) => break,
            Err(e) => return Err(stream_error(e)),
        };
        let Some(last_read) = page.last().map(read_revision) else {
            break;
        };
        largest = largest_event(page.iter().map(|e| &e.event)).or(largest);
        let mut full = false;
        for e in &page {
            if !events.is_empty() && (bytes >= bytes_max || events.len() as u64 >= count) {
                full = true;
                next = Some(read_revision(e));
                break;
            }
            bytes += event_bytes(&e.event);
            events.push(read_event_json(e));
        }
        if full {
            break;
        }
        let more = if forwards {
            last.is_some_and(|l| last_read < l)
        } else {
            last_read > 0
        };
        let step = if forwards {
            last_read + 1
        } else {
            last_read.saturating_sub(1)
        };
        if !more {
            break;
        }
        if events.len() as u64 >= count || bytes >= bytes_max {
            next = Some(step);
            break;
        }
        cursor = ReadFrom::Revision(step);
    }
    Ok(Json(StreamReadResponse {
        stream,
        events,
        next_revision: next,
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadAllQuery {
    /// `start`, `end` or a position (default: `start` forwards, `end` backwards).
    /// Forwards the read includes the event at the position; backwards it reads the
    /// events before it, so `next_position` continues either way.
    pub position: Option<String>,
    #[param(inline)]
    pub direction: Option<Direction>,
    /// Most events to return (default 100, at most `http_read_records_max`).
    pub count: Option<u64>,
    /// Only events of streams starting with one of these (comma-separated).
    pub stream_prefix: Option<String>,
    /// Only events of streams matching this regular expression (searched, not anchored).
    pub stream_regex: Option<String>,
    /// Only events whose type starts with one of these (comma-separated).
    pub type_prefix: Option<String>,
    /// Only events whose type matches this regular expression.
    pub type_regex: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllReadResponse {
    pub events: Vec<EventJson>,
    /// Where to read on from (`position=` with the same direction).
    pub next_position: u64,
    /// The read reached the end of `$all` (forwards) or its start (backwards); a read
    /// from `next_position` forwards then waits for nothing: it answers what came since.
    pub end: bool,
}

/// The filter a `$all` read or subscription asks for (one of stream or type).
pub(crate) fn all_filter(
    stream_prefix: Option<&str>,
    stream_regex: Option<&str>,
    type_prefix: Option<&str>,
    type_regex: Option<&str>,
) -> Result<Option<AllFilter>, ApiError> {
    let prefixes = |p: Option<&str>| -> Vec<String> {
        p.map(|p| {
            p.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    };
    let by_stream = stream_prefix.is_some() || stream_regex.is_some();
    let by_type = type_prefix.is_some() || type_regex.is_some();
    let (on, prefix, regex, field) = match (by_stream, by_type) {
        (false, false) => return Ok(None),
        (true, true) => {
            return Err(bad_request(
                "invalid_filter",
                "filter on stream names (stream_prefix, stream_regex) or on event types \
                 (type_prefix, type_regex), not both",
            ));
        }
        (true, false) => (FilterOn::StreamName, stream_prefix, stream_regex, "stream"),
        (false, true) => (FilterOn::EventType, type_prefix, type_regex, "type"),
    };
    AllFilter::new(on, prefixes(prefix), regex.unwrap_or_default())
        .map(Some)
        .map_err(|e| {
            bad_request(
                "invalid_filter",
                format!("{field}_prefix/{field}_regex: {e}"),
            )
        })
}

/// Read `$all`, the events of every stream in the order they were appended (stream
/// metadata events `$metadata` too), optionally filtered.
#[utoipa::path(get, path = "/streams/$all", params(ReadAllQuery),
    responses((status = 200, body = AllReadResponse), (status = 400, body = ErrorBody)))]
pub async fn read_all(
    State(state): State<AppState>,
    query: Result<Query<ReadAllQuery>, QueryRejection>,
) -> Result<Json<AllReadResponse>, Refusal> {
    let Query(query) = query.map_err(query_rejection)?;
    read_all_json(&state, query).await
}

async fn read_all_json(
    state: &AppState,
    query: ReadAllQuery,
) -> Result<Json<AllReadResponse>, Refusal> {
    let count = usize::try_from(check_count(state, query.count)?).unwrap_or(usize::MAX);
    let forwards = query.direction.unwrap_or_default() == Direction::Forwards;
    let filter = all_filter(
        query.stream_prefix.as_deref(),
        query.stream_regex.as_deref(),
        query.type_prefix.as_deref(),
        query.type_regex.as_deref(),
    )?;
    let end_position = state
        .broker
        .stream_index_settled()
        .await
        .map_err(stream_error)? as u64
        + 1;
    let from = parse_from("position", query.position.as_deref())?;
    let mut position = match (from, forwards) {
        (None | Some(Point::Start), true) => 0,
        (Some(Point::End), true) => {
            return Ok(Json(AllReadResponse {
                events: Vec::new(),
                next_position: end_position,
                end: true,
            }));
        }
        (Some(Point::Start), false) => {
            return Ok(Json(AllReadResponse {
                events: Vec::new(),
                next_position: 0,
                end: true,
            }));
        }
        // The broker reads backwards from the end for 0.
        (None | Some(Point::End), false) => 0,
        (Some(Point::At(0)), false) => {
            return Ok(Json(AllReadResponse {
                events: Vec::new(),
                next_position: 0,
                end: true,
            }));
        }
        (Some(Point::At(p)), _) => p,
    };
    let bytes_max = state.limits.read_bytes_max;
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut examined = 0usize;
    let mut end = false;
    let mut largest = None;
    while events.len() < count && bytes < bytes_max && examined < ALL_EXAMINE_PER_REQUEST {
        let asked = page_events(
            bytes_max - bytes,
            largest,
            (count - events.len()).min(READ_PAGE_EVENTS as usize) as u64,
        );
        let page = state
            .broker
            .read_all(
                &who(),
                position,
                forwards,
                asked as usize,
                ALL_EXAMINE_PER_STEP.min(ALL_EXAMINE_PER_REQUEST - examined),
                filter.as_ref(),
            )
            .await
            .map_err(stream_error)?;
        largest = largest_event(page.events.iter()).or(largest);
        examined += ALL_EXAMINE_PER_STEP;
        let mut cut = None;
        for e in &page.events {
            if !events.is_empty() && bytes >= bytes_max {
                // Forwards the next read includes this event; backwards it reads the
                // events before the last one sent.
                cut = Some(if forwards {
                    e.position
                } else {
                    events.last().map_or(position, |l: &EventJson| l.position)
                });
                break;
            }
            bytes += event_bytes(e);
            events.push(event_json(e, None));
        }
        if let Some(next) = cut {
            position = next;
            break;
        }
        let stalled = page.next == position;
        position = page.next;
        if page.end || stalled || (!forwards && position <= 1) {
            end = page.end || !forwards;
            break;
        }
    }
    Ok(Json(AllReadResponse {
        events,
        next_position: position,
        end,
    }))
}

// ------------------------------------------------------------------ delete

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// `any` (default), `stream_exists` or the stream's current revision.
    pub expected_revision: Option<String>,
    /// true: tombstone (the stream can never be written or read again; the
    /// `ES-HardDelete: true` header says the same). false (default): soft delete (the
    /// stream reads as missing until its next append, which continues its revisions).
    pub hard: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteResponse {
    /// Position of the record that deleted the stream.
    pub position: u64,
}

/// Soft-delete or tombstone a stream.
#[utoipa::path(delete, path = "/streams/{stream}",
    params(("stream" = String, Path, description = "Stream name"), DeleteQuery,
        ("ES-ExpectedVersion" = Option<String>, Header, description = "Expected revision")),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 400, body = ErrorBody), (status = 409, body = ConflictBody),
        (status = 410, body = ErrorBody, description = "Already tombstoned (or soft-deleted, expecting it exists)")
    ))]
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<DeleteResponse>, Refusal> {
    let stream = stream_path(path)?;
    let Query(query) = query.map_err(query_rejection)?;
    let expected = expected_from(None, query.expected_revision.as_deref(), &headers)?;
    let hard_header = match headers.get(HARD_DELETE_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) if v.eq_ignore_ascii_case("true") => Some(true),
        Some(Ok(v)) if v.eq_ignore_ascii_case("false") => Some(false),
        Some(_) => {
            return Err(
                bad_request("invalid_request", "ES-HardDelete must be true or false").into(),
            );
        }
    };
    let hard = query.hard.or(hard_header).unwrap_or(false);
    let position = state
        .broker
        .stream_delete(&who(), &stream, expected, hard)
        .await
        .map_err(stream_error)?;
    Ok(Json(DeleteResponse { position }))
}

// ------------------------------------------------------------------ metadata

#[derive(Debug, Serialize, ToSchema)]
pub struct MetadataResponse {
    pub stream: String,
    /// The revision of the metadata's event in `$$<stream>`; null when the stream has
    /// never had metadata.
    pub metadata_revision: Option<u64>,
    /// The metadata (`$maxCount`, `$maxAge` in seconds, `$tb`, `$acl`, and any custom
    /// fields); `{}` when there is none, null if the stored metadata is not JSON.
    #[schema(value_type = Value)]
    pub metadata: Option<Box<RawValue>>,
}

/// A stream's metadata: the last `$metadata` event of `$$<stream>`.
#[utoipa::path(get, path = "/streams/{stream}/metadata",
    params(("stream" = String, Path, description = "Stream name")),
    responses(
        (status = 200, body = MetadataResponse),
        (status = 400, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "The stream is tombstoned")
    ))]
pub async fn get_metadata(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<MetadataResponse>, Refusal> {
    let stream = stream_path(path)?;
    let meta_stream = metadata_stream(&stream)?;
    let read = state
        .broker
        .stream_read(&who(), &meta_stream, ReadFrom::End, false, 1, false)
        .await
        .map_err(stream_error)?;
    let last = match read {
        StreamRead::Events(events) => events.into_iter().next(),
        StreamRead::NotFound => None,
    };
    Ok(Json(match last {
        None => MetadataResponse {
            stream,
            metadata_revision: None,
            metadata: RawValue::from_string("{}".into()).ok(),
        },
        Some(e) => MetadataResponse {
            stream,
            metadata_revision: Some(e.event.revision),
            metadata: as_json(&e.event.data),
        },
    }))
}

fn metadata_stream(stream: &str) -> Result<String, ApiError> {
    if stream == ALL_STREAM || stream.starts_with("$$") {
        return Err(bad_request(
            "invalid_stream",
            format!("{stream:?} has no metadata stream of its own"),
        ));
    }
    let meta_stream = format!("$${stream}");
    herald_broker::streams::check_stream_name(&meta_stream)
        .map_err(|e| bad_request("invalid_stream", e.to_string()))?;
    Ok(meta_stream)
}

/// The fields of stream metadata the event store reads, which must be whole numbers
/// of 0 or more (KurrentDB ignores them otherwise; Herald says so instead).
const METADATA_NUMBER_FIELDS: [&str; 4] = ["$maxCount", "$maxAge", "$tb", "$cacheControl"];

/// Set a stream's metadata: the body (a JSON object) becomes the `$metadata` event
/// appended to `$$<stream>`, replacing the metadata before it.
#[utoipa::path(put, path = "/streams/{stream}/metadata",
    params(("stream" = String, Path, description = "Stream name"), ExpectedQuery,
        ("ES-ExpectedVersion" = Option<String>, Header, description = "Expected revision of `$$<stream>`")),
    request_body(content = Object, description = "The metadata, e.g. {\"$maxCount\": 100}"),
    responses(
        (status = 200, body = AppendResponse, description = "The revision and position of the metadata event"),
        (status = 400, body = ErrorBody), (status = 409, body = ConflictBody),
        (status = 410, body = ErrorBody), (status = 415, body = ErrorBody)
    ))]
pub async fn put_metadata(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ExpectedQuery>, QueryRejection>,
    headers: HeaderMap,
    JsonBody(metadata): JsonBody<Box<RawValue>>,
) -> Result<Json<AppendResponse>, Refusal> {
    let stream = stream_path(path)?;
    let meta_stream = metadata_stream(&stream)?;
    let Query(query) = query.map_err(query_rejection)?;
    let expected = expected_from(None, query.expected_revision.as_deref(), &headers)?;
    let fields: serde_json::Map<String, serde_json::Value> =
        parse_object(metadata.get().as_bytes())?;
    for name in METADATA_NUMBER_FIELDS {
        if let Some(v) = fields
            .get(name)
            .filter(|v| !v.is_null() && v.as_u64().is_none())
        {
            return Err(bad_request(
                "invalid_metadata",
                format!("{name} must be a whole number of 0 or more, not {v}"),
            )
            .into());
        }
    }
    let event = NewEvent {
        id: uuid::Uuid::new_v4(),
        event_type: METADATA_TYPE.into(),
        content_type: "application/json".into(),
        custom_metadata: Bytes::new(),
        data: Bytes::from(metadata.get().as_bytes().to_vec()),
    };
    let appended = state
        .broker
        .stream_append(&who(), &meta_stream, expected, vec![event])
        .await
        .map_err(stream_error)?;
    Ok(Json(appended_json(appended)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn pages_hold_about_the_bytes_asked_for() {
        assert_eq!(page_events(1 << 20, None, 100), 1);
        assert_eq!(page_events(1 << 20, Some(100), 100), 100);
        assert_eq!(page_events(1 << 20, Some(300_000), 100), 3);
        assert_eq!(page_events(1 << 20, Some(4 << 20), 100), 1);
        assert_eq!(page_events(1 << 20, Some(0), 7), 7);
        assert_eq!(page_events(0, Some(10), 0), 1);
    }

    #[test]
    fn expected_revisions_by_name_and_number() {
        assert_eq!(parse_expected("any"), Some(Expected::Any));
        assert_eq!(parse_expected("-2"), Some(Expected::Any));
        assert_eq!(parse_expected("no_stream"), Some(Expected::NoStream));
        assert_eq!(parse_expected("-1"), Some(Expected::NoStream));
        assert_eq!(
            parse_expected("stream_exists"),
            Some(Expected::StreamExists)
        );
        assert_eq!(parse_expected("-4"), Some(Expected::StreamExists));
        assert_eq!(parse_expected("7"), Some(Expected::Revision(7)));
        for bad in ["-3", "", "seven", "1.5", "Any"] {
            assert_eq!(parse_expected(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn disagreeing_expected_revisions_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_VERSION_HEADER, "-1".parse().unwrap());
        let body = serde_json::json!("no_stream");
        assert_eq!(
            expected_from(Some(&body), None, &headers).ok(),
            Some(Expected::NoStream)
        );
        let e = expected_from(Some(&serde_json::json!(3)), None, &headers).unwrap_err();
        assert_eq!(e.code, "invalid_expected_revision");
        let e = expected_from(Some(&serde_json::json!(true)), None, &HeaderMap::new()).unwrap_err();
        assert_eq!(e.code, "invalid_expected_revision");
    }

    #[test]
    fn data_is_json_only_for_a_json_content_type() {
        let mut e = RecordedEvent {
            stream: "order-1".into(),
            revision: 0,
            position: 1,
            id: uuid::Uuid::nil(),
            event_type: "OrderPlaced".into(),
            content_type: "application/json; charset=utf-8".into(),
            custom_metadata: Bytes::from_static(b"\x00"),
            data: Bytes::from_static(br#"{"total": 5}"#),
            created_ms: 0,
        };
        let j = event_json(&e, None);
        assert_eq!(
            j.data.map(|d| d.get().to_string()),
            Some(r#"{"total": 5}"#.into())
        );
        assert_eq!(j.metadata_base64.as_deref(), Some("AA=="));
        e.content_type = "application/octet-stream".into();
        let j = event_json(&e, None);
        assert!(j.data.is_none());
        assert_eq!(j.data_base64.as_deref(), Some("eyJ0b3RhbCI6IDV9"));
    }
}
