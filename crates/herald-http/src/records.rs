//! Publishing and reading records over HTTP. Published records become one Kafka
//! RecordBatch v2 per partition, appended through the same broker path as a Kafka
//! producer's (and acknowledged only once durable under the flush policy), so Kafka
//! consumers read them; a key picks its partition with Kafka's murmur2, so HTTP and
//! Kafka producers agree. Reads decode stored batches whatever their compression,
//! within the broker's `batch_decompressed_bytes_max`: a stored batch that expands past
//! it is stepped over (logged and counted by the broker) and named in the response's
//! `skipped`, so a read goes on past it instead of failing or holding gigabytes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use std::sync::Arc;

use herald_broker::BrokerError;
use herald_broker::partition::Partition;
use herald_broker::topic::Topic;
use herald_records::partitioner::partition_for_key;
use herald_records::{Compression, ConsumedRecord, ProduceRecord, encode_record_batch};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};

/// How a key or value is written in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The bytes are the JSON text of the value exactly as sent (`{"a": 1}` is stored as
    /// those 8 bytes).
    #[default]
    Json,
    /// The value is a string; its UTF-8 bytes are stored as they are.
    String,
    /// The value is a string of standard base64; the decoded bytes are stored.
    Base64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// The record key, a string (UTF-8) unless `key_encoding` is `base64`. Records with
    /// the same key go to the same partition (Kafka's murmur2 partitioner).
    pub key: Option<String>,
    #[serde(default)]
    pub key_encoding: KeyEncoding,
    /// Any JSON value; how it becomes bytes is `value_encoding`. Absent or null: a null
    /// value (a tombstone on a compacted topic).
    #[serde(default)]
    #[schema(value_type = Option<Value>, required = false)]
    pub value: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub value_encoding: Encoding,
    /// Header name -> UTF-8 value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Write to this partition instead of choosing one.
    #[serde(default, deserialize_with = "integral")]
    pub partition: Option<i32>,
    /// Creation time in ms since the UNIX epoch (default: now).
    #[serde(default, deserialize_with = "integral")]
    pub timestamp_ms: Option<i64>,
    /// Do not hand this record to a subscription before this time (ms since the UNIX
    /// epoch). Stored as the header `herald-deliver-at` (decimal text), so Kafka
    /// producers can set the same thing.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0)]
    pub deliver_at: Option<i64>,
    /// Do not hand this record to a subscription for this many ms after the broker takes
    /// it (SQS's `DelaySeconds`, RabbitMQ's `x-delay`): stored as `herald-deliver-at` =
    /// now + delay_ms. At most one of `deliver_at` and `delay_ms`.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0)]
    pub delay_ms: Option<i64>,
    /// The publisher's id for this message (1 to 256 bytes): if a record with this id was
    /// published to the topic within `dedup_window_ms`, this one is not appended again.
    /// Stored as the header `herald-message-id`.
    pub message_id: Option<String>,
}

use herald_broker::queue::dedup::DEDUP_WINDOW_MS_MAX;
use herald_broker::queue::{DELIVER_AT_HEADER, MESSAGE_ID_HEADER};

/// The record's headers: the ones sent, then `deliver_at` and `message_id` as headers.
/// Sending one of those fields and the same header at once is ambiguous, so refused.
fn record_headers(
    record: &NewRecord,
    index: usize,
) -> Result<Vec<(String, Option<Bytes>)>, ApiError> {
    let mut headers: Vec<(String, Option<Bytes>)> = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone().into_bytes()))))
        .collect();
    let deliver_at = match (record.deliver_at, record.delay_ms) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "invalid_deliver_at",
                format!("records[{index}] sets both deliver_at and delay_ms; give one"),
            ));
        }
        (_, Some(delay_ms)) if delay_ms < 0 => {
            return Err(bad_request(
                "invalid_deliver_at",
                format!("records[{index}].delay_ms must not be negative"),
            ));
        }
        (_, Some(delay_ms)) => Some(herald_broker::now_ms().saturating_add(delay_ms)),
        (Some(at), None) if at < 0 => {
            return Err(bad_request(
                "invalid_deliver_at",
                format!("records[{index}].deliver_at must be ms since the epoch, not negative"),
            ));
        }
        (at, None) => at,
    };
    let fields = [
        (
            "deliver_at",
            DELIVER_AT_HEADER,
            deliver_at.map(|ms| ms.to_string()),
        ),
        ("message_id", MESSAGE_ID_HEADER, record.message_id.clone()),
    ];
    for (field, header, value) in fields {
        let Some(value) = value else { continue };
        if record.headers.contains_key(header) {
            return Err(bad_request(
                "duplicate_header",
                format!("records[{index}] sets both {field} and the header {header:?}"),
            ));
        }
        headers.push((header.to_string(), Some(Bytes::from(value.into_bytes()))));
    }
    Ok(headers)
}

/// An optional integer that also accepts a JSON number with no fraction (`5.0`), as
/// JSON Schema's `integer` does.
fn integral<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = match (number.as_i64(), number.as_f64()) {
        (Some(i), _) => i,
        // ±2^63 (what i64::MIN/MAX round to as f64) are already out of range.
        (None, Some(f)) if f.fract() == 0.0 && f > i64::MIN as f64 && f < i64::MAX as f64 => {
            f as i64
        }
        _ => return Err(D::Error::custom(format!("{number} is not a whole number"))),
    };
    T::try_from(whole)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{whole} is out of range")))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyEncoding {
    #[default]
    String,
    Base64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    #[schema(min_items = 1)]
    pub records: Vec<NewRecord>,
    /// How long a `message_id` is remembered: a record whose id was published to this
    /// topic within the window is not appended again (default 300000 = 5 minutes, at
    /// most 7 days).
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 604_800_000)]
    pub dedup_window_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordPosition {
    pub partition: i32,
    pub offset: i64,
    /// True when the record's `message_id` was already published within the dedup
    /// window: nothing was appended, and `partition`/`offset` are the first copy's.
    pub duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    /// Where each record went, in request order.
    pub offsets: Vec<RecordPosition>,
}

pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

pub fn query_rejection(rejection: QueryRejection) -> ApiError {
    bad_request("invalid_query", rejection.body_text())
}

pub fn path_rejection(rejection: PathRejection) -> ApiError {
    bad_request("invalid_path", rejection.body_text())
}

/// A broker error as an HTTP status and code.
pub fn broker_error(error: BrokerError) -> ApiError {
    let message = error.to_string();
    match error {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownTopicId(_) => {
            ApiError::not_found("unknown_topic", message)
        }
        BrokerError::UnknownPartition { .. } => ApiError::not_found("unknown_partition", message),
        BrokerError::OffsetOutOfRange { .. } => ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "offset_out_of_range",
            message,
        ),
        BrokerError::MessageTooLarge { .. }
        | BrokerError::BatchDecompressedTooLarge { .. }
        | BrokerError::RecordTooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "records_too_large", message)
        }
        BrokerError::InvalidRecord(_)
        | BrokerError::InvalidRecords(_)
        | BrokerError::CorruptBatch(_)
        | BrokerError::InvalidRequest(_) => bad_request("invalid_record", message),
        BrokerError::ShuttingDown => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
        }
        BrokerError::InvalidTopic { .. } => bad_request("invalid_topic", message),
        BrokerError::UnknownSubscription { .. } => {
            ApiError::not_found("unknown_subscription", message)
        }
        BrokerError::SubscriptionExists { .. } => {
            ApiError::new(StatusCode::CONFLICT, "subscription_exists", message)
        }
        BrokerError::InvalidSubscription(_) => bad_request("invalid_subscription", message),
        BrokerError::InvalidReceipt(_) => bad_request("invalid_receipt", message),
        BrokerError::StaleReceipt { .. } => {
            ApiError::new(StatusCode::CONFLICT, "stale_receipt", message)
        }
        BrokerError::ReceiptNotLeased { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_leased", message)
        }
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", message),
    }
}

fn value_bytes(record: &NewRecord, index: usize) -> Result<Option<Bytes>, ApiError> {
    let Some(value) = &record.value else {
        return Ok(None);
    };
    let text = || {
        serde_json::from_str::<String>(value.get()).map_err(|_| {
            bad_request(
                "invalid_value",
                format!(
                    "records[{index}].value must be a string with value_encoding {:?}",
                    record.value_encoding
                ),
            )
        })
    };
    let bytes = match record.value_encoding {
        Encoding::Json => value.get().as_bytes().to_vec(),
        Encoding::String => text()?.into_bytes(),
        Encoding::Base64 => BASE64.decode(text()?).map_err(|e| {
            bad_request(
                "invalid_base64",
                format!("records[{index}].value is not valid base64: {e}"),
            )
        })?,
    };
    Ok(Some(Bytes::from(bytes)))
}

fn key_bytes(record: &NewRecord, index: usize) -> Result<Option<Bytes>, ApiError> {
    let Some(key) = &record.key else {
        return Ok(None);
    };
    match record.key_encoding {
        KeyEncoding::String => Ok(Some(Bytes::from(key.clone().into_bytes()))),
        KeyEncoding::Base64 => BASE64
            .decode(key)
            .map(|k| Some(Bytes::from(k)))
            .map_err(|e| {
                bad_request(
                    "invalid_base64",
                    format!("records[{index}].key is not valid base64: {e}"),
                )
            }),
    }
}

/// Append records to a topic; answers once they are durable (as acks=all would).
#[utoipa::path(post, path = "/topics/{name}/records",
    params(("name" = String, Path, description = "Topic name")),
    request_body = PublishRequest,
    responses(
        (status = 200, body = PublishResponse),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)
    ))]
pub async fn publish(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    JsonBody(request): JsonBody<PublishRequest>,
) -> Result<Json<PublishResponse>, ApiError> {
    let Path(name) = name.map_err(path_rejection)?;
    if request.records.is_empty() {
        return Err(bad_request(
            "no_records",
            "records must hold at least one record",
        ));
    }
    if request.records.len() > state.limits.publish_records_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!(
                "{} records in one request; at most {} (http_publish_records_max)",
                request.records.len(),
                state.limits.publish_records_max
            ),
        ));
    }
    if let Some(window) = request.dedup_window_ms
        && window > DEDUP_WINDOW_MS_MAX
    {
        return Err(bad_request(
            "invalid_dedup_window",
            format!("dedup_window_ms must be at most {DEDUP_WINDOW_MS_MAX} (7 days)"),
        ));
    }
    let topic = find_topic(&state, &name)?;
    let partitions = topic.partitions.len() as i32;
    // Records grouped by partition, remembering each one's place in the request; records
    // with a message id go one by one through the broker's dedup check.
    let mut by_partition: BTreeMap<i32, Vec<(usize, ProduceRecord)>> = BTreeMap::new();
    let mut deduped: Vec<(usize, i32, ProduceRecord)> = Vec::new();
    for (index, record) in request.records.iter().enumerate() {
        let key = key_bytes(record, index)?;
        let partition = match (record.partition, &key) {
            (Some(p), _) if (0..partitions).contains(&p) => p,
            (Some(p), _) => {
                return Err(ApiError::not_found(
                    "unknown_partition",
                    format!(
                        "records[{index}].partition {p}: topic {name:?} has {partitions} partitions, 0 to {}",
                        partitions - 1
                    ),
                ));
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => {
                (state.next_partition.fetch_add(1, Ordering::Relaxed) % partitions as u32) as i32
            }
        };
        let produce = ProduceRecord {
            key,
            value: value_bytes(record, index)?,
            headers: record_headers(record, index)?,
            timestamp_ms: record.timestamp_ms,
        };
        if record.message_id.is_some() {
            deduped.push((index, partition, produce));
        } else {
            by_partition
                .entry(partition)
                .or_default()
                .push((index, produce));
        }
    }
    let now = herald_broker::now_ms();
    let mut offsets: Vec<Option<RecordPosition>> =
        (0..request.records.len()).map(|_| None).collect();
    // Append every partition's batch first, then wait for all of them: one fsync
    // round can cover them all.
    let mut pending = Vec::with_capacity(by_partition.len());
    for (partition, records) in &by_partition {
        let only: Vec<ProduceRecord> = records.iter().map(|(_, r)| r.clone()).collect();
        let batch = encode_record_batch(&only, Compression::None, now)
            .map_err(|e| bad_request("invalid_record", e.to_string()))?;
        let appended = topic
            .append(*partition, &batch, now)
            .map_err(broker_error)?;
        pending.push((*partition, appended));
    }
    for (partition, appended) in pending {
        let durable = appended.durable().await.map_err(broker_error)?;
        for (n, (index, _)) in by_partition[&partition].iter().enumerate() {
            offsets[*index] = Some(RecordPosition {
                partition,
                offset: durable.base_offset + n as i64,
                duplicate: false,
            });
        }
    }
    for (index, partition, record) in deduped {
        let id = request.records[index]
            .message_id
            .clone()
            .unwrap_or_default();
        let batch = encode_record_batch(&[record], Compression::None, now)
            .map_err(|e| bad_request("invalid_record", e.to_string()))?;
        let outcome = state
            .broker
            .publish_dedup(&name, partition, &batch, &id, request.dedup_window_ms)
            .await
            .map_err(broker_error)?;
        offsets[index] = Some(RecordPosition {
            partition: outcome.partition,
            offset: outcome.offset,
            duplicate: outcome.duplicate,
        });
    }
    Ok(Json(PublishResponse {
        offsets: offsets.into_iter().flatten().collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// First offset to read (default: the log start). Ignored with `timestamp_ms`.
    pub offset: Option<i64>,
    /// Read from the first record with a timestamp at or after this (ms since the epoch).
    pub timestamp_ms: Option<i64>,
    /// Most records to return (default 100, at most `http_read_records_max`).
    #[param(minimum = 1)]
    pub max_records: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoredRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    /// UTF-8 text, or base64 when `key_encoding` says so; null for no key.
    pub key: Option<String>,
    pub key_encoding: KeyEncoding,
    /// The value as JSON when its bytes are JSON text (sent exactly as stored, keys in
    /// their order), else a UTF-8 string, else base64 (see `value_encoding`); null for a
    /// null value.
    #[schema(value_type = Option<Value>)]
    pub value: Option<Box<serde_json::value::RawValue>>,
    pub value_encoding: Encoding,
    /// Header name -> value (UTF-8, else base64 prefixed with `base64:`).
    pub headers: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadResponse {
    pub records: Vec<StoredRecord>,
    /// Where to read next.
    pub next_offset: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Stored batches this read stepped over because they decompress past the broker's
    /// `batch_decompressed_bytes_max` (omitted when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedBatch>,
}

/// Offsets a read stepped over: their batch is too big to decompress within the bound.
/// The records are still in the log (raising the bound makes them readable).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SkippedBatch {
    pub first_offset: i64,
    pub last_offset: i64,
    pub reason: String,
}

/// What [`read_records`] got.
pub(crate) struct RecordsRead {
    pub records: Vec<StoredRecord>,
    /// Where to read next.
    pub next: i64,
    pub skipped: Vec<SkippedBatch>,
}

/// Records read as the broker hands bytes to any consumer, so the same record reads
/// the same here and in a Kafka client.
pub(crate) fn stored_record(r: ConsumedRecord) -> StoredRecord {
    let (key, key_encoding) = match r.key {
        None => (None, KeyEncoding::String),
        Some(k) => match std::str::from_utf8(&k) {
            Ok(text) => (Some(text.to_string()), KeyEncoding::String),
            Err(_) => (Some(BASE64.encode(&k)), KeyEncoding::Base64),
        },
    };
    let (value, value_encoding) = match r.value {
        None => (None, Encoding::Json),
        Some(v) => {
            let json_string = |text: &str| serde_json::value::to_raw_value(text).ok();
            match std::str::from_utf8(&v) {
                Ok(text) => match serde_json::value::RawValue::from_string(text.to_string()) {
                    Ok(json) => (Some(json), Encoding::Json),
                    Err(_) => (json_string(text), Encoding::String),
                },
                Err(_) => (json_string(&BASE64.encode(&v)), Encoding::Base64),
            }
        }
    };
    let headers = r
        .headers
        .into_iter()
        .map(|(name, value)| {
            let value = value.map(|v| match std::str::from_utf8(&v) {
                Ok(text) => text.to_string(),
                Err(_) => format!("base64:{}", BASE64.encode(&v)),
            });
            (name, value)
        })
        .collect();
    StoredRecord {
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key,
        key_encoding,
        value,
        value_encoding,
        headers,
    }
}

/// Up to `max_records` records of `partition` from offset `from`, none at or past
/// `high_watermark`, and the offset to read next ([`Partition::records_from`]); a batch
/// past the decompression bound is stepped over and reported in `skipped`.
pub(crate) fn read_records(
    partition: &Partition,
    from: i64,
    high_watermark: i64,
    max_records: usize,
    read_bytes_max: usize,
) -> Result<RecordsRead, ApiError> {
    let read = partition
        .records_from(
            from,
            high_watermark,
            max_records,
            read_bytes_max,
            "http read",
        )
        .map_err(|e| match e {
            // What decoding a stored batch can fail with: the log holds bad bytes.
            e @ (BrokerError::CorruptLog(_)
            | BrokerError::InvalidRecord(_)
            | BrokerError::RecordTooLarge { .. }
            | BrokerError::BatchDecompressedTooLarge { .. }) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_records",
                format!("{}-{}: {e}", partition.topic, partition.index),
            ),
            e => broker_error(e),
        })?;
    Ok(RecordsRead {
        records: read
            .records
            .into_iter()
            .map(|r| stored_record(ConsumedRecord::from(r)))
            .collect(),
        next: read.next,
        skipped: read
            .skipped
            .into_iter()
            .map(|s| SkippedBatch {
                first_offset: s.first_offset,
                last_offset: s.last_offset,
                reason: s.reason,
            })
            .collect(),
    })
}

/// The topic named `name`, or 404 `unknown_topic`.
pub fn find_topic(state: &AppState, name: &str) -> Result<Arc<Topic>, ApiError> {
    state
        .broker
        .topic(name)
        .ok_or_else(|| ApiError::not_found("unknown_topic", format!("no topic named {name:?}")))
}

/// 416 `offset_out_of_range` unless `offset` is in `log_start_offset..=high_watermark`
/// (the high watermark itself is readable: it yields nothing yet).
pub fn check_readable(
    offset: i64,
    log_start_offset: i64,
    high_watermark: i64,
) -> Result<(), ApiError> {
    if (log_start_offset..=high_watermark).contains(&offset) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "offset_out_of_range",
        format!(
            "offset {offset} is outside the readable range, {log_start_offset} to {high_watermark}"
        ),
    ))
}

/// Read committed records of one partition from an offset or a timestamp.
#[utoipa::path(get, path = "/topics/{name}/partitions/{partition}/records",
    params(
        ("name" = String, Path, description = "Topic name"),
        ("partition" = i32, Path, description = "Partition index"),
        ReadQuery
    ),
    responses(
        (status = 200, body = ReadResponse),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 416, body = ErrorBody), (status = 500, body = ErrorBody)
    ))]
pub async fn read(
    State(state): State<AppState>,
    path: Result<Path<(String, i32)>, PathRejection>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<ReadResponse>, ApiError> {
    let Path((name, partition)) = path.map_err(path_rejection)?;
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
    let topic = find_topic(&state, &name)?;
    let p = topic.partition(partition).map_err(broker_error)?.clone();
    let high_watermark = p.high_watermark();
    let log_start_offset = p.log_start_offset();
    let from = match (query.timestamp_ms, query.offset) {
        (Some(ts), _) => match p.offset_for_timestamp(ts).map_err(broker_error)? {
            Some((offset, _)) => offset,
            None => high_watermark,
        },
        (None, Some(offset)) => offset,
        (None, None) => log_start_offset,
    };
    check_readable(from, log_start_offset, high_watermark)?;
    let read = read_records(
        &p,
        from,
        high_watermark,
        max_records,
        state.limits.read_bytes_max,
    )?;
    Ok(Json(ReadResponse {
        records: read.records,
        next_offset: read.next,
        skipped: read.skipped,
        high_watermark,
        log_start_offset,
    }))
}

/// The record bodies kept only to let a test build values without a broker.
#[cfg(test)]
mod tests {
    use super::*;

    fn zstd_batch(count: usize, value_bytes: usize, with_header: bool) -> Bytes {
        let records: Vec<ProduceRecord> = (0..count)
            .map(|i| ProduceRecord {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'0'; value_bytes])),
                headers: if with_header {
                    vec![("trace".to_string(), Some(Bytes::from_static(b"t1")))]
                } else {
                    Vec::new()
                },
                timestamp_ms: Some(1_000),
            })
            .collect();
        encode_record_batch(&records, Compression::Zstd, 1_000).unwrap()
    }

    #[tokio::test]
    async fn a_read_steps_over_a_stored_batch_past_a_lowered_bound_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = herald_broker::BrokerConfig::new(dir.path().to_path_buf());
        config.compaction_check_interval_ms = 0;
        config.flush = herald_broker::FlushPolicy::Os;
        {
            let broker = herald_broker::Broker::open(config.clone()).unwrap();
            let topic = broker
                .create_topic("t", Some(1), BTreeMap::new(), false)
                .unwrap();
            // Offsets 0-1, then 2-4 expanding to 6 MiB, then 5-6.
            for batch in [
                zstd_batch(2, 10, true),
                zstd_batch(3, 2 << 20, false),
                zstd_batch(2, 10, false),
            ] {
                topic.append(0, &batch, 1_000).unwrap();
            }
            broker.shutdown();
        }
        config.batch_decompressed_bytes_max = 1 << 20;
        let broker = loop {
            match herald_broker::Broker::open(config.clone()) {
                Ok(b) => break b,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let p = broker.topic("t").unwrap().partition(0).unwrap().clone();
        let read = read_records(&p, 0, p.high_watermark(), 100, 1 << 20).unwrap();
        let offsets: Vec<i64> = read.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 5, 6]);
        assert_eq!(read.next, 7);
        assert_eq!(read.records[0].headers["trace"].as_deref(), Some("t1"));
        assert_eq!(
            read.records[1].value.as_ref().unwrap().get(),
            "\"0000000000\""
        );
        assert_eq!(read.skipped.len(), 1);
        let s = &read.skipped[0];
        assert_eq!((s.first_offset, s.last_offset), (2, 4));
        assert!(
            s.reason.contains("batch_decompressed_bytes_max"),
            "{}",
            s.reason
        );
        assert_eq!(broker.oversized_batches_skipped(), 1);
        // A read stopping short of the batch does not touch it; one starting inside it
        // steps over the rest.
        let short = read_records(&p, 0, p.high_watermark(), 2, 1 << 20).unwrap();
        assert_eq!(
            (short.records.len(), short.next, short.skipped.len()),
            (2, 2, 0)
        );
        let inside = read_records(&p, 3, p.high_watermark(), 100, 1 << 20).unwrap();
        assert_eq!(inside.skipped[0].first_offset, 3);
        assert_eq!(inside.records[0].offset, 5);
    }

    fn record(value: serde_json::Value, encoding: Encoding) -> NewRecord {
        NewRecord {
            key: None,
            key_encoding: KeyEncoding::String,
            value: Some(serde_json::value::to_raw_value(&value).unwrap()),
            value_encoding: encoding,
            headers: BTreeMap::new(),
            partition: None,
            timestamp_ms: None,
            deliver_at: None,
            delay_ms: None,
            message_id: None,
        }
    }

    #[test]
    fn broker_errors_map_to_statuses_and_stable_codes() {
        let cases = [
            (
                BrokerError::UnknownTopic("t".into()),
                StatusCode::NOT_FOUND,
                "unknown_topic",
            ),
            (
                BrokerError::UnknownPartition {
                    topic: "t".into(),
                    partition: 9,
                },
                StatusCode::NOT_FOUND,
                "unknown_partition",
            ),
            (
                BrokerError::OffsetOutOfRange {
                    offset: 5,
                    log_start: 0,
                    log_end: 3,
                },
                StatusCode::RANGE_NOT_SATISFIABLE,
                "offset_out_of_range",
            ),
            (
                BrokerError::MessageTooLarge { bytes: 10, max: 5 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "records_too_large",
            ),
            (
                BrokerError::BatchDecompressedTooLarge { max: 5 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "records_too_large",
            ),
            (
                BrokerError::RecordTooLarge { bytes: 10, max: 5 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "records_too_large",
            ),
            (
                BrokerError::InvalidRecord("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid_record",
            ),
            (
                BrokerError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
            ),
        ];
        for (error, status, code) in cases {
            let text = error.to_string();
            let api = broker_error(error);
            assert_eq!((api.status, api.code), (status, code), "{text}");
            assert_eq!(api.message, text);
        }
    }

    #[test]
    fn deliver_at_and_message_id_become_headers() {
        let mut r = record(serde_json::json!(1), Encoding::Json);
        r.deliver_at = Some(1_700_000_000_123);
        r.message_id = Some("order-7".into());
        r.headers.insert("trace".into(), "t1".into());
        let headers = record_headers(&r, 0).unwrap();
        let text: Vec<(String, String)> = headers
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.unwrap().to_vec()).unwrap()))
            .collect();
        assert_eq!(
            text,
            vec![
                ("trace".to_string(), "t1".to_string()),
                (DELIVER_AT_HEADER.to_string(), "1700000000123".to_string()),
                (MESSAGE_ID_HEADER.to_string(), "order-7".to_string()),
            ]
        );
        r.headers.insert(MESSAGE_ID_HEADER.into(), "x".into());
        assert_eq!(record_headers(&r, 0).unwrap_err().code, "duplicate_header");
        r.headers.clear();
        r.deliver_at = Some(-1);
        assert_eq!(
            record_headers(&r, 0).unwrap_err().code,
            "invalid_deliver_at"
        );
    }

    #[test]
    fn delay_ms_becomes_a_deliver_at_header_from_now() {
        let mut r = record(serde_json::json!(1), Encoding::Json);
        r.delay_ms = Some(60_000);
        let before = herald_broker::now_ms();
        let headers = record_headers(&r, 0).unwrap();
        let after = herald_broker::now_ms();
        let [(name, Some(value))] = headers.as_slice() else {
            panic!("one header expected: {headers:?}");
        };
        assert_eq!(name, DELIVER_AT_HEADER);
        let at: i64 = std::str::from_utf8(value).unwrap().parse().unwrap();
        assert!((before + 60_000..=after + 60_000).contains(&at), "{at}");
        r.delay_ms = Some(-5);
        assert_eq!(
            record_headers(&r, 0).unwrap_err().code,
            "invalid_deliver_at"
        );
        r.delay_ms = Some(5);
        r.deliver_at = Some(1);
        assert_eq!(
            record_headers(&r, 0).unwrap_err().code,
            "invalid_deliver_at"
        );
    }

    #[test]
    fn values_become_bytes_by_their_encoding() {
        let json = record(serde_json::json!({"a": 1}), Encoding::Json);
        assert_eq!(
            value_bytes(&json, 0).unwrap().unwrap(),
            Bytes::from_static(b"{\"a\":1}")
        );
        let text = record(serde_json::json!("hi"), Encoding::String);
        assert_eq!(
            value_bytes(&text, 0).unwrap().unwrap(),
            Bytes::from_static(b"hi")
        );
        let b64 = record(serde_json::json!("AAEC"), Encoding::Base64);
        assert_eq!(
            value_bytes(&b64, 0).unwrap().unwrap(),
            Bytes::from_static(&[0, 1, 2])
        );
        let bad = record(serde_json::json!("***"), Encoding::Base64);
        assert_eq!(value_bytes(&bad, 3).unwrap_err().code, "invalid_base64");
        let wrong = record(serde_json::json!(5), Encoding::String);
        assert_eq!(value_bytes(&wrong, 0).unwrap_err().code, "invalid_value");
    }

    #[test]
    fn stored_values_read_back_as_json_text_or_base64() {
        let read = |v: &'static [u8]| {
            stored_record(ConsumedRecord {
                offset: 0,
                timestamp_ms: 0,
                key: Some(Bytes::from_static(&[0xff])),
                value: Some(Bytes::from_static(v)),
                headers: vec![],
            })
        };
        let json = read(b"{\"a\":1}");
        assert_eq!(json.value_encoding, Encoding::Json);
        assert_eq!(json.key_encoding, KeyEncoding::Base64);
        assert_eq!(read(b"plain text").value_encoding, Encoding::String);
        assert_eq!(read(&[0xff, 0x00]).value_encoding, Encoding::Base64);
    }
}
