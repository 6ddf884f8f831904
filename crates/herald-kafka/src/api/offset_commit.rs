//! OffsetCommit: store a group's positions durably (the meta store commits before we
//! answer).

use herald_broker::group::OffsetCommit;
use herald_broker::now_ms;
use herald_meta::OffsetRecord;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, RequestHeader, TopicName,
};

use crate::dispatch::Context;
use crate::errors::{broker_code, group_code};

/// One partition of a commit: what to store, or the error code to answer.
type PartitionPlan = (i32, Result<OffsetCommit, i16>);

/// Kafka's offset.metadata.max.bytes default.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let now = now_ms();
    // Per partition: Ok(commit) to store, or an error code to report.
    let mut plan: Vec<(TopicName, Vec<PartitionPlan>)> = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let known = ctx.broker.topic(&name);
        let mut partitions = Vec::new();
        for p in &topic.partitions {
            let outcome = match &known {
                None => Err(broker_code(&herald_broker::BrokerError::UnknownTopic(
                    name.clone(),
                ))),
                Some(t) if t.partition(p.partition_index).is_err() => {
                    Err(kafka_protocol::ResponseError::UnknownTopicOrPartition.code())
                }
                Some(_)
                    if p.committed_metadata
                        .as_ref()
                        .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX) =>
                {
                    Err(kafka_protocol::ResponseError::OffsetMetadataTooLarge.code())
                }
                Some(_) => Ok(OffsetCommit {
                    topic: name.clone(),
                    partition: p.partition_index,
                    record: OffsetRecord {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_ms: now,
                    },
                }),
            };
            partitions.push((p.partition_index, outcome));
        }
        plan.push((topic.name.clone(), partitions));
    }
    let commits: Vec<OffsetCommit> = plan
        .iter()
        .flat_map(|(_, ps)| ps.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()))
        .collect();
    let group_error = ctx
        .broker
        .groups
        .commit_offsets(
            request.group_id.0.as_str(),
            request.generation_id_or_member_epoch,
            request.member_id.as_str(),
            commits,
        )
        .await
        .err()
        .map(|e| group_code(&e));
    let topics = plan
        .into_iter()
        .map(|(name, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, outcome)| {
                            let code = match outcome {
                                Err(code) => code,
                                Ok(_) => group_error.unwrap_or(0),
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
