//! OffsetDelete (the admin's DeleteConsumerGroupOffsets): forget a group's offsets for
//! some partitions. The broker refuses topics its live consumer group is subscribed
//! to; reading a member's subscription is this front end's part (Kafka's consumer
//! protocol blob).

use bytes::{Buf, Bytes};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, OffsetDeleteRequest, OffsetDeleteResponse, RequestHeader,
};
use kafka_protocol::protocol::{Decodable, Message};

use crate::dispatch::Context;
use crate::errors::group_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let mut wanted: Vec<(String, i32)> = Vec::new();
    // Partitions of unknown topics are answered here; the rest go to the coordinator.
    let mut unknown: Vec<(String, i32)> = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let known = ctx.broker.topic(&name);
        for p in &topic.partitions {
            let exists = known
                .as_ref()
                .is_some_and(|t| t.partition(p.partition_index).is_ok());
            if exists {
                wanted.push((name.clone(), p.partition_index));
            } else {
                unknown.push((name.clone(), p.partition_index));
            }
        }
    }
    let outcome = ctx
        .broker
        .groups
        .delete_offsets(request.group_id.0.as_str(), &wanted, &subscribed_topics)
        .await;
    let results = match outcome {
        Ok(results) => results,
        Err(e) => {
            return OffsetDeleteResponse::default().with_error_code(group_code(&e));
        }
    };
    let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
    let codes = results
        .into_iter()
        .map(|(key, r)| (key, r.err().map_or(0, |e| group_code(&e))))
        .chain(
            unknown
                .into_iter()
                .map(|key| (key, ResponseError::UnknownTopicOrPartition.code())),
        );
    for ((topic, partition), code) in codes {
        let p = OffsetDeleteResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(super::topic_name(&topic))
                    .with_partitions(vec![p]),
            ),
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}

/// The topics of a consumer-protocol subscription; None if it does not parse.
fn subscribed_topics(metadata: &Bytes) -> Option<Vec<String>> {
    let mut buf = metadata.clone();
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    if version < 0 {
        return None;
    }
    let version = version.min(ConsumerProtocolSubscription::VERSIONS.max);
    let subscription = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    Some(subscription.topics.iter().map(|t| t.to_string()).collect())
}
