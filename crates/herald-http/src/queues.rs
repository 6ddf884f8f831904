//! Work queues over HTTP: shared subscriptions on a topic (create, receive with a lease,
//! ack, nack, release, extend, dead letters, redrive, stats). The semantics live in
//! `herald_broker::queue`; this file only translates JSON to those calls and back.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_broker::BrokerError;
use herald_broker::queue::{
    RECEIVE_MAX_RECORDS, RECEIVE_WAIT_MAX_MS, ReceivedRecord, StartPosition, SubscriptionSettings,
    SubscriptionStats, receipt_subscription,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::body::{JsonBody, parse_object};
use crate::error::{ApiError, ErrorBody};
use crate::records::{
    StoredRecord, bad_request, broker_error, find_topic, path_rejection, query_rejection,
    stored_record,
};

/// Where a new subscription starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// From the oldest record still in the log.
    Earliest,
    /// From records published after the subscription was created.
    Latest,
}

impl From<Start> for StartPosition {
    fn from(s: Start) -> StartPosition {
        match s {
            Start::Earliest => StartPosition::Earliest,
            Start::Latest => StartPosition::Latest,
        }
    }
}

impl From<StartPosition> for Start {
    fn from(s: StartPosition) -> Start {
        match s {
            StartPosition::Earliest => Start::Earliest,
            StartPosition::Latest => Start::Latest,
        }
    }
}

/// Settings of a subscription. On create, absent fields take the defaults shown; on
/// update (PATCH), absent fields keep their current values.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SettingsPatch {
    /// Visibility timeout: a leased record comes back after this long without an ack
    /// (default 30000, at most 43200000).
    #[schema(minimum = 1, maximum = 43_200_000)]
    pub lease_ms: Option<u64>,
    /// Failed deliveries (nacks and expired leases) before the record is dead-lettered
    /// (default 5).
    #[schema(minimum = 1)]
    pub max_deliveries: Option<u32>,
    /// First retry delay (default 1000).
    pub backoff_base_ms: Option<u64>,
    /// Each further retry waits this many times longer (default 2, at least 1).
    #[schema(minimum = 1)]
    pub backoff_factor: Option<f64>,
    /// Longest retry delay (default 300000, at least backoff_base_ms).
    pub backoff_max_ms: Option<u64>,
    /// Up to this fraction of a delay is added at random (default 0.2, 0..=1).
    #[schema(minimum = 0, maximum = 1)]
    pub backoff_jitter: Option<f64>,
    /// Where dead letters go (default `<topic>.<subscription>.dlq`, created on first use).
    pub dead_letter_topic: Option<String>,
    /// Records with the same key are never leased at the same time (default false).
    pub ordered_by_key: Option<bool>,
    /// Where a new subscription starts: `earliest` (default) or `latest`. Only at create.
    pub start: Option<Start>,
    /// Records tracked (leased, waiting for a retry) per partition before receive hands
    /// out no more (default 1000, at most 100000).
    #[schema(minimum = 1, maximum = 100_000)]
    pub max_unacked: Option<usize>,
    /// Fields that are not settings (serde's `deny_unknown_fields` does not work through
    /// `flatten`, which `NewSubscription` needs); refused by `check_fields`.
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
}

impl SettingsPatch {
    /// 400 `invalid_json` naming the first field that is not a setting.
    fn check_fields(&self) -> Result<(), ApiError> {
        match self.unknown.keys().next() {
            None => Ok(()),
            Some(field) => Err(bad_request(
                "invalid_json",
                format!("unknown field {field:?}: not a subscription setting"),
            )),
        }
    }

    fn apply(self, mut s: SubscriptionSettings) -> SubscriptionSettings {
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(v) = self.$field { s.$field = v; } )*};
        }
        set!(
            lease_ms,
            max_deliveries,
            backoff_base_ms,
            backoff_factor,
            backoff_max_ms,
            backoff_jitter,
            ordered_by_key,
            max_unacked
        );
        if let Some(start) = self.start {
            s.start = start.into();
        }
        if self.dead_letter_topic.is_some() {
            s.dead_letter_topic = self.dead_letter_topic;
        }
        s
    }
}

/// A new subscription: its name and any settings.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewSubscription {
    /// Letters, digits, `.`, `_` and `-`, at most 249 characters.
    #[schema(pattern = "^[a-zA-Z0-9._-]{1,249}$")]
    pub name: String,
    #[serde(flatten)]
    pub settings: SettingsPatch,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Settings {
    pub lease_ms: u64,
    pub max_deliveries: u32,
    pub backoff_base_ms: u64,
    pub backoff_factor: f64,
    pub backoff_max_ms: u64,
    pub backoff_jitter: f64,
    /// Null when the default `<topic>.<subscription>.dlq` is used.
    pub dead_letter_topic: Option<String>,
    pub ordered_by_key: bool,
    pub start: Start,
    pub max_unacked: usize,
}

impl From<SubscriptionSettings> for Settings {
    fn from(s: SubscriptionSettings) -> Settings {
        Settings {
            lease_ms: s.lease_ms,
            max_deliveries: s.max_deliveries,
            backoff_base_ms: s.backoff_base_ms,
            backoff_factor: s.backoff_factor,
            backoff_max_ms: s.backoff_max_ms,
            backoff_jitter: s.backoff_jitter,
            dead_letter_topic: s.dead_letter_topic,
            ordered_by_key: s.ordered_by_key,
            start: s.start.into(),
            max_unacked: s.max_unacked,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Records ready to hand out now (including ones not read from the log yet).
    pub depth: u64,
    /// Records leased and not yet acked, nacked or expired.
    pub in_flight: u64,
    /// Records waiting for their deliver-at time or a retry backoff.
    pub delayed: u64,
    /// Records moved to the dead-letter topic so far.
    pub dead_lettered: u64,
    /// Deliveries after the first, so far.
    pub redeliveries: u64,
    /// Leases that ran out (each counts as a failed delivery).
    pub expired_leases: u64,
    /// Records removed by retention before the subscription handed them out.
    pub lost_to_retention: u64,
    /// Records whose `herald-deliver-at` header was not a number (delivered at once).
    pub bad_deliver_at: u64,
    /// Records in the dead-letter topic not redriven yet.
    pub dead_letter_depth: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionDetail {
    pub topic: String,
    pub name: String,
    /// The topic dead letters go to.
    pub dead_letter_topic: String,
    pub settings: Settings,
    pub stats: Stats,
}

fn stats(s: SubscriptionStats, dead_letter_depth: u64) -> Stats {
    Stats {
        depth: s.depth,
        in_flight: s.in_flight,
        delayed: s.delayed,
        dead_lettered: s.dead_lettered,
        redeliveries: s.redeliveries,
        expired_leases: s.expired_leases,
        lost_to_retention: s.lost_to_retention,
        bad_deliver_at: s.bad_deliver_at,
        dead_letter_depth,
    }
}

fn detail(
    state: &AppState,
    topic: &str,
    name: &str,
    settings: SubscriptionSettings,
) -> Result<SubscriptionDetail, ApiError> {
    let broker = &state.broker;
    let dead_letter_topic = settings.dead_letter_topic(topic, name);
    let counts = broker
        .subscription_stats(topic, name)
        .map_err(broker_error)?;
    let dead_letter_depth = broker
        .dead_letter_depth(&dead_letter_topic)
        .map_err(broker_error)?;
    Ok(SubscriptionDetail {
        topic: topic.to_string(),
        name: name.to_string(),
        dead_letter_topic,
        settings: settings.into(),
        stats: stats(counts, dead_letter_depth),
    })
}

/// A JSON body that may also be empty (then every field takes its default).
fn optional_json<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_object(body)
}

type SubPath = Result<Path<(String, String)>, PathRejection>;

/// Every subscription of every topic.
#[utoipa::path(get, path = "/subscriptions", responses(
    (status = 200, body = [SubscriptionDetail]), (status = 500, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
) -> Result<Json<Vec<SubscriptionDetail>>, ApiError> {
    let mut out = Vec::new();
    for (topic, name, settings) in state.broker.list_subscriptions() {
        match detail(&state, &topic, &name, settings) {
            Ok(d) => out.push(d),
            // Deleted between the listing and the stats: leave it out.
            Err(e) if e.code == "unknown_subscription" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json(out))
}

/// Create a shared subscription on a topic.
#[utoipa::path(post, path = "/topics/{topic}/subscriptions",
    params(("topic" = String, Path, description = "Topic name")),
    request_body = NewSubscription,
    responses(
        (status = 201, body = SubscriptionDetail),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 500, body = ErrorBody)
    ))]
pub async fn create(
    State(state): State<AppState>,
    topic: Result<Path<String>, PathRejection>,
    JsonBody(new): JsonBody<NewSubscription>,
) -> Result<(StatusCode, Json<SubscriptionDetail>), ApiError> {
    let Path(topic) = topic.map_err(path_rejection)?;
    new.settings.check_fields()?;
    find_topic(&state, &topic)?;
    let settings = new.settings.apply(SubscriptionSettings::default());
    let settings = state
        .broker
        .create_subscription(&topic, &new.name, settings)
        .await
        .map_err(broker_error)?;
    let detail = detail(&state, &topic, &new.name, settings)?;
    Ok((StatusCode::CREATED, Json(detail)))
}

/// A subscription's settings and counters.
#[utoipa::path(get, path = "/topics/{topic}/subscriptions/{name}",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    responses((status = 200, body = SubscriptionDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn describe(
    State(state): State<AppState>,
    path: SubPath,
) -> Result<Json<SubscriptionDetail>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    let settings = state
        .broker
        .subscription_settings(&topic, &name)
        .map_err(broker_error)?;
    Ok(Json(detail(&state, &topic, &name, settings)?))
}

/// Change some of a subscription's settings; leases already handed out keep their
/// deadlines. `start` is ignored (it only matters at creation).
#[utoipa::path(patch, path = "/topics/{topic}/subscriptions/{name}",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    request_body = SettingsPatch,
    responses((status = 200, body = SubscriptionDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    path: SubPath,
    JsonBody(patch): JsonBody<SettingsPatch>,
) -> Result<Json<SubscriptionDetail>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    patch.check_fields()?;
    let broker = &state.broker;
    let current = broker
        .subscription_settings(&topic, &name)
        .map_err(broker_error)?;
    let settings = broker
        .update_subscription(&topic, &name, patch.apply(current))
        .await
        .map_err(broker_error)?;
    Ok(Json(detail(&state, &topic, &name, settings)?))
}

/// Delete a subscription and its delivery state (the topic's records stay).
#[utoipa::path(delete, path = "/topics/{topic}/subscriptions/{name}",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, path: SubPath) -> Result<StatusCode, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    state
        .broker
        .delete_subscription(&topic, &name)
        .await
        .map_err(broker_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveRequest {
    /// Most records to lease (default 1, at most 1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_records: Option<usize>,
    /// Wait up to this long for at least one record (default 0, at most 20000).
    #[schema(minimum = 0, maximum = 20000)]
    pub wait_ms: Option<u64>,
}

/// A leased record: the stored record, where it is, and how to settle it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub partition: i32,
    #[serde(flatten)]
    pub record: StoredRecord,
    /// Give this to ack, nack, release or extend. Only the newest delivery's receipt works.
    pub receipt: String,
    /// Times this record was handed out, this one included.
    pub delivery_count: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiveResponse {
    pub records: Vec<Delivery>,
}

fn consumed(r: ReceivedRecord) -> (i32, StoredRecord, String, u32) {
    let record = stored_record(herald_records::ConsumedRecord {
        offset: r.offset,
        timestamp_ms: r.timestamp,
        key: r.key,
        value: r.value,
        headers: r.headers,
    });
    (r.partition, record, r.receipt, r.delivery_count)
}

/// Lease up to `max_records` records; each must then be acked, nacked, released or
/// extended before its lease runs out. The body may be empty.
#[utoipa::path(post, path = "/topics/{topic}/subscriptions/{name}/receive",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    request_body(content = Option<ReceiveRequest>, description = "May be empty"),
    responses((status = 200, body = ReceiveResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    path: SubPath,
    body: Bytes,
) -> Result<Json<ReceiveResponse>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    let request: ReceiveRequest = optional_json(&body)?;
    let max_records = request.max_records.unwrap_or(1);
    if !(1..=RECEIVE_MAX_RECORDS).contains(&max_records) {
        return Err(bad_request(
            "invalid_max_records",
            format!("max_records must be between 1 and {RECEIVE_MAX_RECORDS}"),
        ));
    }
    let wait_ms = request.wait_ms.unwrap_or(0);
    if wait_ms > RECEIVE_WAIT_MAX_MS {
        return Err(bad_request(
            "invalid_wait_ms",
            format!("wait_ms must be at most {RECEIVE_WAIT_MAX_MS}"),
        ));
    }
    // A long poll ends early when the server shuts down.
    let mut shutdown = state.shutdown.subscribe();
    let received = tokio::select! {
        r = state.broker.receive(&topic, &name, max_records, wait_ms) => r.map_err(broker_error)?,
        _ = shutdown.wait_for(|stop| *stop) => Vec::new(),
    };
    let records = received
        .into_iter()
        .map(|r| {
            let (partition, record, receipt, delivery_count) = consumed(r);
            Delivery {
                partition,
                record,
                receipt,
                delivery_count,
            }
        })
        .collect();
    Ok(Json(ReceiveResponse { records }))
}

/// 400 `invalid_receipt` unless `receipt` was issued by subscription `name` of `topic`.
fn check_receipt(topic: &str, name: &str, receipt: &str) -> Result<(), ApiError> {
    let (t, n) = receipt_subscription(receipt).map_err(broker_error)?;
    if t == topic && n == name {
        return Ok(());
    }
    Err(bad_request(
        "invalid_receipt",
        format!("receipt {receipt:?} belongs to subscription {n:?} of topic {t:?}"),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Receipts of records that are done (1 to 1000).
    #[schema(min_items = 1, max_items = 1000)]
    pub receipts: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptFailure {
    pub receipt: String,
    /// `invalid_receipt`, `stale_receipt` (handed out again since) or `not_leased` (the
    /// lease ran out, or the record is already acked or dead-lettered).
    pub error: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AckResponse {
    /// How many receipts were acked.
    pub acked: usize,
    /// The receipts that were not, and why.
    pub failed: Vec<ReceiptFailure>,
}

/// Mark records done. Each receipt succeeds or fails on its own; the answer comes once
/// the acks are durable.
#[utoipa::path(post, path = "/topics/{topic}/subscriptions/{name}/ack",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    request_body = AckRequest,
    responses((status = 200, body = AckResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn ack(
    State(state): State<AppState>,
    path: SubPath,
    JsonBody(request): JsonBody<AckRequest>,
) -> Result<Json<AckResponse>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    if !(1..=RECEIVE_MAX_RECORDS).contains(&request.receipts.len()) {
        return Err(bad_request(
            "invalid_receipts",
            format!("receipts must hold 1 to {RECEIVE_MAX_RECORDS} receipts"),
        ));
    }
    state
        .broker
        .subscription_settings(&topic, &name)
        .map_err(broker_error)?;
    let mut failed = Vec::new();
    let mut valid = Vec::with_capacity(request.receipts.len());
    for receipt in request.receipts {
        match check_receipt(&topic, &name, &receipt) {
            Ok(()) => valid.push(receipt),
            Err(e) => failed.push(ReceiptFailure {
                receipt,
                error: e.code.to_string(),
                message: e.message,
            }),
        }
    }
    let outcomes = state.broker.ack_many(&valid).await;
    let mut acked = 0;
    for (receipt, outcome) in valid.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => acked += 1,
            Err(e) => {
                let e = broker_error(e);
                if e.status.is_server_error() {
                    return Err(e);
                }
                failed.push(ReceiptFailure {
                    receipt,
                    error: e.code.to_string(),
                    message: e.message,
                });
            }
        }
    }
    Ok(Json(AckResponse { acked, failed }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub receipt: String,
    /// Why the work failed; kept as the dead letter's `herald-dlq-last-error` header
    /// (at most 4096 characters are kept).
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NackResponse {
    /// True when this was the last allowed failure and the record went to the
    /// dead-letter topic; false when it will be redelivered after the backoff.
    pub dead_lettered: bool,
}

/// The work failed: redeliver after the subscription's backoff, or dead-letter the
/// record once it has failed `max_deliveries` times.
#[utoipa::path(post, path = "/topics/{topic}/subscriptions/{name}/nack",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    request_body = NackRequest,
    responses((status = 200, body = NackResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub async fn nack(
    State(state): State<AppState>,
    path: SubPath,
    JsonBody(request): JsonBody<NackRequest>,
) -> Result<Json<NackResponse>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    check_receipt(&topic, &name, &request.receipt)?;
    let dead_lettered = state
        .broker
        .nack(&request.receipt, request.error)
        .await
        .map_err(broker_error)?;
    Ok(Json(NackResponse { dead_lettered }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub receipt: String,
}

/// Put a record back now without counting a failure (e.g. a worker shutting down).
#[utoipa::path(post, path = "/topics/{topic}/subscriptions/{name}/release",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    request_body = ReleaseRequest,
    responses((status = 204), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    path: SubPath,
    JsonBody(request): JsonBody<ReleaseRequest>,
) -> Result<StatusCode, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    check_receipt(&topic, &name, &request.receipt)?;
    state
        .broker
        .release(&request.receipt)
        .await
        .map_err(broker_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub receipt: String,
    /// The lease ends this long from now (default: the subscription's lease_ms).
    #[schema(minimum = 1, maximum = 43_200_000)]
    pub lease_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExtendResponse {
    /// When the lease now ends, ms since the epoch.
    pub lease_deadline_ms: i64,
}

/// Keep working on a record: its lease ends `lease_ms` from now.
#[utoipa::path(post, path = "/topics/{topic}/subscriptions/{name}/extend",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    request_body = ExtendRequest,
    responses((status = 200, body = ExtendResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub async fn extend(
    State(state): State<AppState>,
    path: SubPath,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> Result<Json<ExtendResponse>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    if request.lease_ms == Some(0) {
        return Err(bad_request(
            "invalid_lease_ms",
            "lease_ms must be at least 1",
        ));
    }
    check_receipt(&topic, &name, &request.receipt)?;
    let lease_deadline_ms = state
        .broker
        .extend_lease(&request.receipt, request.lease_ms)
        .await
        .map_err(broker_error)?;
    Ok(Json(ExtendResponse { lease_deadline_ms }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Most records to return (default 100, at most `http_read_records_max`).
    #[param(minimum = 1)]
    pub max_records: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub partition: i32,
    #[serde(flatten)]
    pub record: StoredRecord,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersResponse {
    pub dead_letter_topic: String,
    /// Records not redriven yet, oldest first per partition.
    pub records: Vec<DeadLetter>,
}

fn dead_letter_topic(state: &AppState, topic: &str, name: &str) -> Result<String, ApiError> {
    let settings = state
        .broker
        .subscription_settings(topic, name)
        .map_err(broker_error)?;
    Ok(settings.dead_letter_topic(topic, name))
}

/// The subscription's dead letters not redriven yet, with the `herald-dlq-*` headers
/// that say where each came from and why it failed.
#[utoipa::path(get, path = "/topics/{topic}/subscriptions/{name}/dead-letters",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name"), DeadLetterQuery),
    responses((status = 200, body = DeadLettersResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    path: SubPath,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<DeadLettersResponse>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    let Query(query) = query.map_err(query_rejection)?;
    let max_records = query.max_records.unwrap_or(100);
    if max_records == 0 || max_records > state.limits.read_records_max {
        return Err(bad_request(
            "invalid_max_records",
            format!(
                "max_records must be between 1 and {} (http_read_records_max)",
                state.limits.read_records_max
            ),
        ));
    }
    let dlq = dead_letter_topic(&state, &topic, &name)?;
    let records = match state.broker.list_dead_letters(&dlq, max_records) {
        Ok(records) => records,
        Err(BrokerError::UnknownTopic(_)) => Vec::new(),
        Err(e) => return Err(broker_error(e)),
    };
    let records = records
        .into_iter()
        .map(|r| {
            let (partition, record, _, _) = consumed(r);
            DeadLetter { partition, record }
        })
        .collect();
    Ok(Json(DeadLettersResponse {
        dead_letter_topic: dlq,
        records,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveResponse {
    /// Records published back to their source topics.
    pub moved: u64,
}

/// Publish every dead letter not redriven yet back to its source topic and partition
/// (original key, value and headers), where subscriptions receive it as a new record.
/// The dead-letter topic keeps its copies for replay.
#[utoipa::path(post, path = "/topics/{topic}/subscriptions/{name}/redrive",
    params(("topic" = String, Path, description = "Topic name"),
        ("name" = String, Path, description = "Subscription name")),
    responses((status = 200, body = RedriveResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 500, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn redrive(
    State(state): State<AppState>,
    path: SubPath,
) -> Result<Json<RedriveResponse>, ApiError> {
    let Path((topic, name)) = path.map_err(path_rejection)?;
    let dlq = dead_letter_topic(&state, &topic, &name)?;
    let moved = match state.broker.redrive(&dlq).await {
        Ok(moved) => moved,
        Err(BrokerError::UnknownTopic(t)) if t == dlq => 0,
        Err(e) => return Err(broker_error(e)),
    };
    Ok(Json(RedriveResponse { moved }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_sets_only_the_fields_it_names() {
        let patch: SettingsPatch =
            serde_json::from_str(r#"{"lease_ms": 5, "dead_letter_topic": "x"}"#).unwrap();
        let s = patch.apply(SubscriptionSettings::default());
        assert_eq!(s.lease_ms, 5);
        assert_eq!(s.dead_letter_topic.as_deref(), Some("x"));
        assert_eq!(
            s.max_deliveries,
            SubscriptionSettings::default().max_deliveries
        );
    }

    #[test]
    fn a_new_subscription_refuses_unknown_fields() {
        let ok: NewSubscription =
            serde_json::from_str(r#"{"name": "w", "max_deliveries": 3}"#).unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.settings.max_deliveries),
            ("w", Some(3))
        );
        assert!(ok.settings.check_fields().is_ok());
        let typo: NewSubscription = serde_json::from_str(r#"{"name": "w", "lease": 3}"#).unwrap();
        assert_eq!(
            typo.settings.check_fields().unwrap_err().code,
            "invalid_json"
        );
        let patch: SettingsPatch = serde_json::from_str(r#"{"name": "w"}"#).unwrap();
        assert!(patch.check_fields().is_err(), "a patch cannot rename");
        let nameless = serde_json::from_str::<NewSubscription>(r#"{"lease_ms": 3}"#);
        assert!(nameless.is_err());
    }

    #[test]
    fn an_empty_body_is_the_defaults_and_garbage_is_invalid_json() {
        let empty: ReceiveRequest = optional_json(&Bytes::from_static(b" \n")).unwrap();
        assert_eq!((empty.max_records, empty.wait_ms), (None, None));
        let err = optional_json::<ReceiveRequest>(&Bytes::from_static(b"{oops")).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
    }
}
