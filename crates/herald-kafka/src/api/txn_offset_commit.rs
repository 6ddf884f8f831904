//! TxnOffsetCommit: a consumer group's offsets committed inside a transaction, visible
//! (to OffsetFetch and so to consumers) only once the transaction commits.

use herald_broker::group::OffsetCommit;
use herald_broker::now_ms;
use herald_meta::OffsetRecord;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{RequestHeader, TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::offset_commit::OFFSET_METADATA_BYTES_MAX;
use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let now = now_ms();
    // A partition's own error (unknown, metadata too large), else the request's.
    let mut own: Vec<Vec<Option<i16>>> = Vec::with_capacity(request.topics.len());
    let mut commits = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let known = ctx.broker.topic(&name);
        let mut codes = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let code = if known
                .as_ref()
                .is_none_or(|t| t.partition(p.partition_index).is_err())
            {
                Some(ResponseError::UnknownTopicOrPartition.code())
            } else if p
                .committed_metadata
                .as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
            {
                Some(ResponseError::OffsetMetadataTooLarge.code())
            } else {
                commits.push(OffsetCommit {
                    topic: name.clone(),
                    partition: p.partition_index,
                    record: OffsetRecord {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_ms: now,
                    },
                });
                None
            };
            codes.push(code);
        }
        own.push(codes);
    }
    let shared = match ctx
        .broker
        .txn_offset_commit(
            &ctx.who,
            request.transactional_id.0.as_str(),
            request.producer_id.0,
            request.producer_epoch,
            request.group_id.0.as_str(),
            request.generation_id,
            request.member_id.as_str(),
            commits,
        )
        .await
    {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = %e, "TxnOffsetCommit refused");
            broker_code(&e)
        }
    };
    let topics = request
        .topics
        .into_iter()
        .zip(own)
        .map(|(t, codes)| {
            let partitions = t
                .partitions
                .iter()
                .zip(codes)
                .map(|(p, code)| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code.unwrap_or(shared))
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}
