//! Fetch: stored batches, served as they are on disk. Long-polls until `min_bytes` are
//! available or `max_wait_ms` passes; never answers early with less than `min_bytes`
//! unless a partition has an error. Fetch sessions are not kept (session id 0), so every
//! response lists every requested partition. A `read_committed` fetch stops at the last
//! stable offset and lists the aborted transactions its records overlap; the client
//! drops those records (and every fetch gets the control batches, as from Kafka).

use std::time::{Duration, Instant};

use herald_broker::partition::Isolation;
use herald_broker::{BrokerError, Reservation};
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, RequestHeader};

use crate::connection::{Outgoing, Reply};
use crate::dispatch::{Context, encode_response};
use crate::errors::broker_code;

/// One fetch may take at most this share of the memory budget (1/4), so several
/// consumers get full-size responses before any is cut down.
pub const BUDGET_SHARE_DIVISOR: usize = 4;

/// The fetch as a deferred response: nothing is read until the connection's writer
/// reaches it, so the response is built only for a socket that took everything before.
pub fn deferred(ctx: Context, header: RequestHeader, request: FetchRequest) -> Outgoing {
    Outgoing::Later(Box::pin(async move {
        let (response, mut memory) = handle(&ctx, &header, request).await;
        match encode_response(&header, ApiKey::Fetch, &response) {
            Ok(bytes) => {
                memory.resize(bytes.len());
                Some(Reply {
                    bytes,
                    memory: Some(memory),
                })
            }
            Err(e) => {
                // Nothing can be said in the request's own schema: the client's request
                // times out, as with a lost response.
                tracing::error!(peer = %ctx.peer, version = header.request_api_version, error = %e, "cannot encode fetch response");
                None
            }
        }
    }))
}

/// Read what the request asks for, long-polling for `min_bytes`, within a share of
/// the broker's memory budget. Under memory pressure the response is smaller (down to
/// one batch of one partition, sent whole as Kafka does) and is sent at once rather
/// than waiting for `min_bytes`. Returns the response with the memory it holds.
pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: FetchRequest,
) -> (FetchResponse, Reservation) {
    let version = header.request_api_version;
    let wait = Duration::from_millis(
        u64::try_from(request.max_wait_ms)
            .unwrap_or(0)
            .min(ctx.config.fetch_wait_ms_max),
    );
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let memory = &ctx.broker.memory().responses;
    let max_bytes = if version >= 3 {
        usize::try_from(request.max_bytes).unwrap_or(0)
    } else {
        usize::MAX
    }
    .min(ctx.config.fetch_bytes_max)
    .min(memory.total() / BUDGET_SHARE_DIVISOR);
    let mut changes = ctx.broker.data_changes();
    loop {
        changes.borrow_and_update();
        // Take what is free up to the share, without waiting: a fetch never blocks on
        // memory other connections hold (one batch is always read).
        let mut reserved = memory.reserve_up_to(max_bytes, 0).await;
        let cut_down = reserved.bytes() < max_bytes;
        let (responses, bytes, any_error) = read_all(ctx, version, &request, reserved.bytes());
        reserved.resize(bytes);
        let now = Instant::now();
        if min_bytes == 0
            || bytes >= min_bytes
            || any_error
            || now >= deadline
            || (cut_down && bytes > 0)
        {
            return (FetchResponse::default().with_responses(responses), reserved);
        }
        // Wait for new data anywhere. If none comes in time (or the broker is going
        // away), what was just read is the answer: nothing changed since.
        match tokio::time::timeout(deadline - now, changes.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                return (FetchResponse::default().with_responses(responses), reserved);
            }
        }
    }
}

fn read_all(
    ctx: &Context,
    version: i16,
    request: &FetchRequest,
    max_bytes: usize,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let isolation = if request.isolation_level == super::READ_COMMITTED {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    };
    let mut responses = Vec::with_capacity(request.topics.len());
    for wanted in &request.topics {
        let topic = if version >= 13 {
            ctx.broker
                .topic_by_id(&wanted.topic_id)
                .ok_or(BrokerError::UnknownTopicId(wanted.topic_id))
        } else {
            ctx.broker
                .topic(wanted.topic.0.as_str())
                .ok_or_else(|| BrokerError::UnknownTopic(wanted.topic.0.to_string()))
        };
        let mut partitions = Vec::with_capacity(wanted.partitions.len());
        for p in &wanted.partitions {
            let mut data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_aborted_transactions(Some(Vec::new()))
                .with_records(Some(bytes::Bytes::new()));
            let result = topic
                .as_ref()
                .map_err(broker_code)
                .and_then(|t| t.partition(p.partition).map_err(|e| broker_code(&e)));
            match result {
                Err(code) => {
                    any_error = true;
                    data = data.with_error_code(code);
                }
                Ok(partition) => {
                    // The first batch is always sent whole; after that stay within budget.
                    let budget = usize::try_from(p.partition_max_bytes)
                        .unwrap_or(0)
                        .min(max_bytes.saturating_sub(total));
                    let read = if budget == 0 && total > 0 {
                        Ok(None)
                    } else {
                        partition
                            .read_isolated(p.fetch_offset, budget.max(1), isolation)
                            .map(Some)
                    };
                    match read {
                        Ok(Some(r)) => {
                            total += r.records.len();
                            let aborted = (isolation == Isolation::ReadCommitted).then(|| {
                                r.aborted
                                    .iter()
                                    .map(|a| {
                                        AbortedTransaction::default()
                                            .with_producer_id(kafka_protocol::messages::ProducerId(
                                                a.producer_id,
                                            ))
                                            .with_first_offset(a.first_offset)
                                    })
                                    .collect()
                            });
                            data = data
                                .with_high_watermark(r.high_watermark)
                                .with_last_stable_offset(r.last_stable_offset)
                                .with_log_start_offset(r.log_start_offset)
                                .with_aborted_transactions(aborted.or(Some(Vec::new())))
                                .with_records(Some(r.records));
                        }
                        Ok(None) => {
                            data = data
                                .with_high_watermark(partition.high_watermark())
                                .with_last_stable_offset(partition.last_stable_offset())
                                .with_log_start_offset(partition.log_start_offset());
                        }
                        Err(e) => {
                            any_error = true;
                            data = data
                                .with_error_code(broker_code(&e))
                                .with_high_watermark(partition.high_watermark())
                                .with_last_stable_offset(partition.last_stable_offset())
                                .with_log_start_offset(partition.log_start_offset());
                        }
                    }
                }
            }
            if version < 5 {
                data = data.with_log_start_offset(-1);
            }
            if version >= 11 {
                data = data.with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1));
            }
            partitions.push(data);
        }
        let mut response = FetchableTopicResponse::default().with_partitions(partitions);
        if version >= 13 {
            response = response.with_topic_id(wanted.topic_id);
        } else {
            response = response.with_topic(wanted.topic.clone());
        }
        responses.push(response);
    }
    (responses, total, any_error)
}
