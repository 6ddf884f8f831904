//! The routes, their request and response types, and the OpenAPI document built from
//! them (utoipa), so the document cannot drift from the code.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_broker::BrokerError;
use herald_broker::group::GroupState;
use herald_broker::topic::{ConfigSource, Topic};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::metrics::method_label;
use crate::{queues, records, streams};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald HTTP API",
        description = "Health, metrics, topics, records, work-queue subscriptions, consumer groups and event store streams of a Herald broker."
    ),
    paths(
        health,
        ready,
        metrics,
        list_topics,
        create_topic,
        describe_topic,
        delete_topic,
        list_groups,
        describe_group,
        records::publish,
        records::read,
        crate::tail::tail,
        queues::list,
        queues::create,
        queues::describe,
        queues::update,
        queues::delete,
        queues::receive,
        queues::ack,
        queues::nack,
        queues::release,
        queues::extend,
        queues::dead_letters,
        queues::redrive,
        crate::amqp::exchanges,
        crate::amqp::queues,
        crate::amqp::bindings,
        streams::append,
        streams::read,
        streams::read_all,
        streams::delete,
        streams::get_metadata,
        streams::put_metadata,
        streams::subscribe::subscribe,
        streams::subscribe::subscribe_all
    ),
    components(schemas(
        ErrorBody,
        Health,
        Readiness,
        TopicSummary,
        NewTopic,
        TopicDetail,
        PartitionDetail,
        ConfigEntry,
        GroupSummary,
        GroupDetail,
        GroupMember,
        GroupOffset,
        records::PublishRequest,
        records::NewRecord,
        records::Encoding,
        records::KeyEncoding,
        records::PublishResponse,
        records::RecordPosition,
        records::ReadResponse,
        records::StoredRecord,
        queues::Start,
        queues::SettingsPatch,
        queues::NewSubscription,
        queues::Settings,
        queues::Stats,
        queues::SubscriptionDetail,
        queues::ReceiveRequest,
        queues::Delivery,
        queues::ReceiveResponse,
        queues::AckRequest,
        queues::ReceiptFailure,
        queues::AckResponse,
        queues::NackRequest,
        queues::NackResponse,
        queues::ReleaseRequest,
        queues::ExtendRequest,
        queues::ExtendResponse,
        queues::DeadLetter,
        queues::DeadLettersResponse,
        queues::RedriveResponse,
        crate::amqp::AmqpExchange,
        crate::amqp::AmqpQueue,
        crate::amqp::AmqpBinding,
        streams::ConflictBody,
        streams::EventJson,
        streams::LinkJson,
        streams::AppendRequest,
        streams::NewEventJson,
        streams::AppendResponse,
        streams::Direction,
        streams::StreamReadResponse,
        streams::AllReadResponse,
        streams::DeleteResponse,
        streams::MetadataResponse
    ))
)]
pub struct ApiDoc;

pub fn router(state: AppState, body_bytes_max: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/topics", get(list_topics).post(create_topic))
        .route("/topics/{name}", get(describe_topic).delete(delete_topic))
        .route("/topics/{name}/records", post(records::publish))
        .route(
            "/topics/{name}/partitions/{partition}/records",
            get(records::read),
        )
        .route(
            "/topics/{name}/partitions/{partition}/tail",
            get(crate::tail::tail),
        )
        .route("/subscriptions", get(queues::list))
        .route("/amqp/exchanges", get(crate::amqp::exchanges))
        .route("/amqp/queues", get(crate::amqp::queues))
        .route("/amqp/bindings", get(crate::amqp::bindings))
        .route("/topics/{topic}/subscriptions", post(queues::create))
        .route(
            "/topics/{topic}/subscriptions/{name}",
            get(queues::describe)
                .patch(queues::update)
                .delete(queues::delete),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}/receive",
            post(queues::receive),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}/ack",
            post(queues::ack),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}/nack",
            post(queues::nack),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}/release",
            post(queues::release),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}/extend",
            post(queues::extend),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}/dead-letters",
            get(queues::dead_letters),
        )
        .route(
            "/topics/{topic}/subscriptions/{name}/redrive",
            post(queues::redrive),
        )
        .route("/streams/$all", get(streams::read_all))
        .route(
            "/streams/$all/subscribe",
            get(streams::subscribe::subscribe_all),
        )
        .route(
            "/streams/{stream}",
            get(streams::read)
                .post(streams::append)
                .delete(streams::delete),
        )
        .route(
            "/streams/{stream}/metadata",
            get(streams::get_metadata).put(streams::put_metadata),
        )
        .route(
            "/streams/{stream}/subscribe",
            get(streams::subscribe::subscribe),
        )
        .route("/groups", get(list_groups))
        .route("/groups/{group_id}", get(describe_group))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .route_layer(middleware::from_fn_with_state(state.clone(), time_request))
        .with_state(state)
}

/// Records each request's latency under its route pattern in `http_latency`.
async fn time_request(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    state
        .http_latency
        .get_or_create(&crate::metrics::RouteLabels { method, route })
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` once the data directory is open and every listener is bound, else `starting`.
    pub status: String,
}

/// The broker takes traffic (503 until every listener is bound).
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, body = Readiness),
    (status = 503, body = Readiness)
))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    if state.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            Json(Readiness {
                status: "ready".into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "starting".into(),
            }),
        )
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
    (status = 500, body = ErrorBody)
))]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&state.broker, &state.http_latency, &state.metrics_hooks)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics_failed",
                e.to_string(),
            )
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(Serialize, ToSchema)]
pub struct TopicSummary {
    pub name: String,
    /// The topic's id, as Kafka clients see it.
    pub id: String,
    pub partitions: i32,
}

/// Every topic.
#[utoipa::path(get, path = "/topics", responses((status = 200, body = [TopicSummary])))]
async fn list_topics(State(state): State<AppState>) -> Json<Vec<TopicSummary>> {
    let mut topics: Vec<TopicSummary> = state
        .broker
        .topics()
        .iter()
        .map(|t| TopicSummary {
            name: t.name.to_string(),
            id: t.id.to_string(),
            partitions: t.partitions.len() as i32,
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Json(topics)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTopic {
    /// Letters, digits, `.`, `_` and `-`, at most 249 characters (Kafka's rule).
    #[schema(pattern = "^[a-zA-Z0-9._-]{1,249}$")]
    pub name: String,
    /// Number of partitions (default: the broker's `default_partitions`).
    #[schema(minimum = 1)]
    pub partitions: Option<i64>,
    /// Topic configs as in Kafka (`retention.ms`, `cleanup.policy`, ...).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// Create a topic; the answer describes it.
#[utoipa::path(post, path = "/topics", request_body = NewTopic, responses(
    (status = 201, body = TopicDetail),
    (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
    (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 500, body = ErrorBody)
))]
async fn create_topic(
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewTopic>,
) -> Result<(StatusCode, Json<TopicDetail>), ApiError> {
    let broker = state.broker.clone();
    let topic = tokio::task::spawn_blocking(move || {
        broker.create_topic(&new.name, new.partitions, new.configs, false)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(topic_error)?;
    Ok((StatusCode::CREATED, Json(topic_detail(&state, &topic))))
}

/// Delete a topic and its data.
#[utoipa::path(delete, path = "/topics/{name}",
    params(("name" = String, Path, description = "Topic name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn delete_topic(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(name) = name.map_err(records::path_rejection)?;
    let broker = state.broker.clone();
    tokio::task::spawn_blocking(move || broker.delete_topic(&name))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(topic_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn topic_error(error: BrokerError) -> ApiError {
    let message = error.to_string();
    match error {
        BrokerError::TopicExists(_) => ApiError::new(StatusCode::CONFLICT, "topic_exists", message),
        BrokerError::InvalidTopic { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_topic", message)
        }
        BrokerError::InvalidPartitions { .. } | BrokerError::PartitionsNotIncreased { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_partitions", message)
        }
        BrokerError::InvalidConfig { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_config", message)
        }
        other => records::broker_error(other),
    }
}

#[derive(Serialize, ToSchema)]
pub struct PartitionDetail {
    pub partition: i32,
    /// The oldest offset still readable.
    pub log_start_offset: i64,
    /// The offset the next committed record gets; readers see everything below it.
    pub high_watermark: i64,
    /// Bytes of log segments on disk.
    pub size_bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    /// `topic` (set on the topic), `broker` (the operator's default) or `default`.
    pub source: String,
}

#[derive(Serialize, ToSchema)]
pub struct TopicDetail {
    pub name: String,
    pub id: String,
    pub partitions: Vec<PartitionDetail>,
    pub configs: Vec<ConfigEntry>,
}

/// A topic's partitions (offsets, size) and configs with where each value comes from.
#[utoipa::path(get, path = "/topics/{name}",
    params(("name" = String, Path, description = "Topic name")),
    responses((status = 200, body = TopicDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn describe_topic(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<TopicDetail>, ApiError> {
    let Path(name) = name.map_err(records::path_rejection)?;
    let topic = records::find_topic(&state, &name)?;
    Ok(Json(topic_detail(&state, &topic)))
}

fn topic_detail(state: &AppState, topic: &Topic) -> TopicDetail {
    TopicDetail {
        name: topic.name.to_string(),
        id: topic.id.to_string(),
        partitions: topic
            .partitions
            .iter()
            .map(|p| PartitionDetail {
                partition: p.index,
                log_start_offset: p.log_start_offset(),
                high_watermark: p.high_watermark(),
                size_bytes: p.size_bytes(),
            })
            .collect(),
        configs: topic
            .all_configs(&state.broker.config)
            .into_iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value,
                source: match c.source {
                    ConfigSource::TopicOverride => "topic",
                    ConfigSource::StaticBroker => "broker",
                    ConfigSource::Default => "default",
                }
                .to_string(),
            })
            .collect(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct GroupSummary {
    pub group_id: String,
    /// Empty, PreparingRebalance, CompletingRebalance or Stable.
    pub state: String,
    pub protocol_type: String,
}

/// Every consumer group.
#[utoipa::path(get, path = "/groups", responses((status = 200, body = [GroupSummary])))]
async fn list_groups(State(state): State<AppState>) -> Json<Vec<GroupSummary>> {
    Json(
        state
            .broker
            .groups
            .list()
            .into_iter()
            .map(|g| GroupSummary {
                group_id: g.group_id,
                state: g.state.name().to_string(),
                protocol_type: g.protocol_type,
            })
            .collect(),
    )
}

#[derive(Serialize, ToSchema)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Serialize, ToSchema)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read.
    pub committed_offset: i64,
    /// Null when the topic or partition no longer exists.
    pub high_watermark: Option<i64>,
    /// high_watermark - committed_offset (never below 0); null with high_watermark.
    pub lag: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupDetail {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor the members agreed on (e.g. `range`), empty when none.
    pub protocol: String,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<GroupOffset>,
    /// Sum of every partition's lag.
    pub total_lag: i64,
}

/// A consumer group's members, committed offsets and lag per partition.
#[utoipa::path(get, path = "/groups/{group_id}",
    params(("group_id" = String, Path, description = "Consumer group id")),
    responses((status = 200, body = GroupDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn describe_group(
    State(state): State<AppState>,
    group_id: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupDetail>, ApiError> {
    let Path(group_id) = group_id.map_err(records::path_rejection)?;
    let broker = &state.broker;
    let description = broker
        .groups
        .describe(&group_id)
        .filter(|d| d.state != GroupState::Dead)
        .ok_or_else(|| {
            ApiError::not_found("unknown_group", format!("no consumer group {group_id:?}"))
        })?;
    let offsets: Vec<GroupOffset> = broker
        .group_lag(&group_id)
        .into_iter()
        .map(|p| GroupOffset {
            topic: p.topic,
            partition: p.partition,
            committed_offset: p.committed,
            high_watermark: p.high_watermark,
            lag: p.lag,
        })
        .collect();
    Ok(Json(GroupDetail {
        total_lag: offsets.iter().filter_map(|o| o.lag).sum(),
        group_id: description.group_id,
        state: description.state.name().to_string(),
        protocol_type: description.protocol_type,
        protocol: description.protocol_name,
        members: description
            .members
            .into_iter()
            .map(|m| GroupMember {
                member_id: m.member_id,
                group_instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
            })
            .collect(),
        offsets,
    }))
}
