//! Metadata: brokers (just this one), the controller (this one), and topics with their
//! partitions. Naming an unknown topic creates it when auto-creation is on.

use herald_broker::{BrokerError, Topic};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, RequestHeader};

use super::{node, str, topic_name};
use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: MetadataRequest,
) -> MetadataResponse {
    let version = header.request_api_version;
    let broker = &ctx.broker;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let all = match &request.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let allow_create = version < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    if all {
        for topic in broker.topics() {
            topics.push(describe(ctx, version, &topic));
        }
    } else {
        for wanted in request.topics.unwrap_or_default() {
            let result = match &wanted.name {
                Some(name) => broker.topic_or_auto_create(name.0.as_str(), allow_create),
                None => broker
                    .topic_by_id(&wanted.topic_id)
                    .ok_or(BrokerError::UnknownTopicId(wanted.topic_id)),
            };
            match result {
                Ok(topic) => topics.push(describe(ctx, version, &topic)),
                Err(e) => {
                    let mut t = MetadataResponseTopic::default().with_error_code(broker_code(&e));
                    if let Some(name) = wanted.name {
                        t = t.with_name(Some(name));
                    }
                    if version >= 10 {
                        t = t.with_topic_id(wanted.topic_id);
                    }
                    topics.push(t);
                }
            }
        }
    }
    let mut response = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(node(ctx))
                .with_host(str(&ctx.config.advertised_host))
                .with_port(ctx.config.advertised_port),
        ])
        .with_topics(topics);
    if version >= 1 {
        response = response.with_controller_id(node(ctx));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(str(&broker.cluster_id)));
    }
    response
}

fn describe(ctx: &Context, version: i16, topic: &Topic) -> MetadataResponseTopic {
    let me = node(ctx);
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(me)
                .with_replica_nodes(vec![me])
                .with_isr_nodes(vec![me]);
            if version >= 7 {
                partition = partition.with_leader_epoch(0);
            }
            partition
        })
        .collect();
    let mut t = MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_partitions(partitions);
    if version >= 10 {
        t = t.with_topic_id(topic.id);
    }
    t
}
