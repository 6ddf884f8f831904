//! DescribeTopicPartitions (KIP-966, API 75): what Metadata says of topics, paged by
//! partitions: at most `response_partition_limit` (capped by the listener's
//! `describe_topic_partitions_max`) partitions per answer, and a cursor to go on from.
//! Topics come in name order; an empty list means every topic. Never auto-creates.

use std::sync::Arc;

use herald_broker::Topic;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, RequestHeader,
};

use super::{node, topic_name};
use crate::dispatch::Context;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let max = ctx.config.describe_topic_partitions_max.max(1);
    let limit = match usize::try_from(request.response_partition_limit) {
        Ok(n) if n > 0 => n.min(max),
        _ => max,
    };
    // Name order, from the cursor's topic on.
    let mut wanted: Vec<(String, Option<Arc<Topic>>)> = if request.topics.is_empty() {
        ctx.broker
            .topics()
            .into_iter()
            .map(|t| (t.name.to_string(), Some(t)))
            .collect()
    } else {
        let mut names: Vec<String> = request
            .topics
            .iter()
            .map(|t| t.name.0.to_string())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let topic = ctx.broker.topic(&n);
                (n, topic)
            })
            .collect()
    };
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    let (cursor_topic, cursor_partition) = match &request.cursor {
        Some(c) => (Some(c.topic_name.0.to_string()), c.partition_index.max(0)),
        None => (None, 0),
    };
    if let Some(from) = &cursor_topic {
        wanted.retain(|(n, _)| n >= from);
    }
    let me = node(ctx);
    let mut remaining = limit;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    let mut wanted = wanted.into_iter().peekable();
    while let Some((name, topic)) = wanted.next() {
        let Some(topic) = topic else {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    .with_name(Some(topic_name(&name))),
            );
            continue;
        };
        let start = if cursor_topic.as_deref() == Some(name.as_str()) {
            cursor_partition as usize
        } else {
            0
        };
        let partitions: Vec<_> = topic
            .partitions
            .iter()
            .skip(start)
            .take(remaining)
            .map(|p| {
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(p.index)
                    .with_leader_id(me)
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![me])
                    .with_isr_nodes(vec![me])
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
            })
            .collect();
        remaining -= partitions.len();
        let shown_to = start + partitions.len();
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(topic_name(&name)))
                .with_topic_id(topic.id)
                .with_partitions(partitions),
        );
        if shown_to < topic.partitions.len() {
            next_cursor = Some((name, shown_to as i32));
            break;
        }
        if remaining == 0 {
            if let Some((next, _)) = wanted.peek() {
                next_cursor = Some((next.clone(), 0));
            }
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor.map(|(t, p)| {
            Cursor::default()
                .with_topic_name(topic_name(&t))
                .with_partition_index(p)
        }))
}
