//! OffsetFetch: a group's committed positions (-1 where none), for named partitions or
//! all of them; v8+ asks for several groups at once.

use herald_meta::OffsetRecord;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, RequestHeader};

use super::{str, topic_name};
use crate::dispatch::Context;

const UNSTABLE_OFFSET_COMMIT: i16 = kafka_protocol::ResponseError::UnstableOffsetCommit.code();

type Committed = Vec<((String, i32), Option<OffsetRecord>)>;
/// Committed offsets of one topic, by partition.
type TopicOffsets = (String, Vec<(i32, Option<OffsetRecord>)>);

fn lookup(ctx: &Context, group: &str, wanted: Option<Vec<(String, Vec<i32>)>>) -> Committed {
    match wanted {
        None => ctx.broker.groups.committed(group, None),
        Some(topics) => {
            let keys: Vec<(String, i32)> = topics
                .into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .collect();
            ctx.broker.groups.committed(group, Some(&keys))
        }
    }
}

/// Group the flat list back by topic, keeping first-seen order.
fn by_topic(committed: Committed) -> Vec<TopicOffsets> {
    let mut out: Vec<TopicOffsets> = Vec::new();
    for ((topic, partition), record) in committed {
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, ps)) => ps.push((partition, record)),
            None => out.push((topic, vec![(partition, record)])),
        }
    }
    out
}

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let version = header.request_api_version;
    // With require_stable (v7+), a partition with offsets of an unfinished transaction
    // answers UNSTABLE_OFFSET_COMMIT: the client retries until the transaction ends.
    let require_stable = request.require_stable;
    let unstable = |group: &str, topic: &str, partition: i32| {
        require_stable
            && ctx
                .broker
                .transactions()
                .pending_offset(group, topic, partition)
    };
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let group = g.group_id.0.as_str();
                let topics = by_topic(lookup(ctx, group, wanted))
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(topic_name(&topic))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|(index, record)| {
                                        if unstable(group, &topic, index) {
                                            return OffsetFetchResponsePartitions::default()
                                                .with_partition_index(index)
                                                .with_committed_offset(-1)
                                                .with_error_code(UNSTABLE_OFFSET_COMMIT);
                                        }
                                        let (offset, epoch, metadata) = fields(record);
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(index)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(str(&metadata)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let group = request.group_id.0.as_str();
    let topics = by_topic(lookup(ctx, group, wanted))
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(topic_name(&topic))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, record)| {
                            if unstable(group, &topic, index) {
                                return OffsetFetchResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_committed_offset(-1)
                                    .with_error_code(UNSTABLE_OFFSET_COMMIT);
                            }
                            let (offset, epoch, metadata) = fields(record);
                            let mut p = OffsetFetchResponsePartition::default()
                                .with_partition_index(index)
                                .with_committed_offset(offset)
                                .with_metadata(Some(str(&metadata)));
                            if version >= 5 {
                                p = p.with_committed_leader_epoch(epoch);
                            }
                            p
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

fn fields(record: Option<OffsetRecord>) -> (i64, i32, String) {
    match record {
        Some(r) => (r.offset, r.leader_epoch, r.metadata.unwrap_or_default()),
        None => (-1, -1, String::new()),
    }
}
