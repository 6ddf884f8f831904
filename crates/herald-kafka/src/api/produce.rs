//! Produce: validate and append each partition's batches now, in request order, then
//! answer once they are durable (acks=1/all) or not at all (acks=0).

use std::sync::Arc;

use herald_broker::{BrokerError, PendingAppend, Topic, now_ms};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestHeader, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::str;
use crate::connection::{Outgoing, Reply};
use crate::dispatch::{Context, respond};
use crate::errors::broker_code;

struct PartitionOutcome {
    index: i32,
    result: Result<PendingAppend, BrokerError>,
}

/// What the response needs of one topic. Owned copies: the decoded request's strings
/// are slices of the request frame, and keeping one would keep the whole frame (its
/// records) alive until the fsync.
struct TopicOutcome {
    name: TopicName,
    topic_id: uuid::Uuid,
    partitions: Vec<PartitionOutcome>,
}

pub fn handle(ctx: &Context, header: RequestHeader, request: ProduceRequest) -> Outgoing {
    let acks = request.acks;
    let now = now_ms();
    let mut outcomes = Vec::with_capacity(request.topic_data.len());
    for mut topic_data in request.topic_data {
        let topic = resolve(ctx, &topic_data);
        let partitions = std::mem::take(&mut topic_data.partition_data)
            .into_iter()
            .map(|p| PartitionOutcome {
                index: p.index,
                result: append(&topic, p.index, p.records.as_deref(), acks, now),
            })
            .collect();
        outcomes.push(TopicOutcome {
            name: TopicName(StrBytes::from_string(topic_data.name.0.to_string())),
            topic_id: topic_data.topic_id,
            partitions,
        });
    }
    for outcome in &outcomes {
        for p in &outcome.partitions {
            if let Err(e) = &p.result {
                tracing::debug!(peer = %ctx.peer, topic = %outcome.name.0.as_str(), partition = p.index, error = %e, "produce refused");
            }
        }
    }
    if acks == 0 {
        return Outgoing::Later(Box::pin(async { None }));
    }
    let version = header.request_api_version;
    // Only what the response header needs (the client id would pin the frame too).
    let header = RequestHeader::default()
        .with_request_api_key(header.request_api_key)
        .with_request_api_version(version)
        .with_correlation_id(header.correlation_id);
    Outgoing::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let mut partition_responses = Vec::with_capacity(outcome.partitions.len());
            for p in outcome.partitions {
                let result = match p.result {
                    Ok(pending) => pending.durable().await,
                    Err(e) => Err(e),
                };
                partition_responses.push(partition_response(version, p.index, result));
            }
            let mut t = TopicProduceResponse::default()
                .with_name(outcome.name)
                .with_partition_responses(partition_responses);
            if version >= 13 {
                t = t.with_topic_id(outcome.topic_id);
            }
            responses.push(t);
        }
        let response = ProduceResponse::default().with_responses(responses);
        match respond(&header, ApiKey::Produce, &response) {
            Outgoing::Ready(bytes) => Some(Reply::from(bytes)),
            _ => None,
        }
    }))
}

fn resolve(
    ctx: &Context,
    data: &kafka_protocol::messages::produce_request::TopicProduceData,
) -> Result<Arc<Topic>, BrokerError> {
    if data.name.0.is_empty() && !data.topic_id.is_nil() {
        return ctx
            .broker
            .topic_by_id(&data.topic_id)
            .ok_or(BrokerError::UnknownTopicId(data.topic_id));
    }
    ctx.broker.topic_or_auto_create(data.name.0.as_str(), true)
}

fn append(
    topic: &Result<Arc<Topic>, BrokerError>,
    partition: i32,
    records: Option<&[u8]>,
    acks: i16,
    now: i64,
) -> Result<PendingAppend, BrokerError> {
    let topic = match topic {
        Ok(t) => t,
        // The topic's error repeats for each of its partitions.
        Err(e) => {
            return Err(match e {
                BrokerError::UnknownTopicId(id) => BrokerError::UnknownTopicId(*id),
                BrokerError::UnknownTopic(name) => BrokerError::UnknownTopic(name.clone()),
                BrokerError::InvalidTopic { name, reason } => BrokerError::InvalidTopic {
                    name: name.clone(),
                    reason: reason.clone(),
                },
                other => BrokerError::Storage(other.to_string()),
            });
        }
    };
    if !matches!(acks, -1..=1) {
        return Err(BrokerError::InvalidRequiredAcks(acks));
    }
    let records = records.ok_or_else(|| BrokerError::InvalidRecord("records are null".into()))?;
    topic.append(partition, records, now)
}

fn partition_response(
    version: i16,
    index: i32,
    result: Result<PendingAppend, BrokerError>,
) -> PartitionProduceResponse {
    match result {
        Ok(done) => {
            let mut r = PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(done.base_offset)
                .with_log_append_time_ms(done.log_append_time_ms);
            if version >= 5 {
                r = r.with_log_start_offset(done.log_start_offset);
            }
            r
        }
        Err(e) => {
            let mut r = PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(broker_code(&e))
                .with_base_offset(-1);
            if version >= 8 {
                r = r.with_error_message(Some(str(&e.to_string())));
                if let BrokerError::InvalidRecords(refused) = &e {
                    r = r.with_record_errors(record_errors(refused));
                }
            }
            r
        }
    }
}

/// KIP-467's per-record errors: the client fails these records with the broker's
/// reason and the rest of the batch with its own "another record" error.
fn record_errors(refused: &herald_broker::error::RecordErrors) -> Vec<BatchIndexAndErrorMessage> {
    refused
        .records
        .iter()
        .map(|(index, why)| {
            BatchIndexAndErrorMessage::default()
                .with_batch_index(*index)
                .with_batch_index_error_message(Some(str(why)))
        })
        .collect()
}
