//! CreateTopics: partitions and configs; single node, so replication factor is 1.

use std::collections::BTreeMap;

use herald_broker::{BrokerError, ConfigSource};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, RequestHeader};

use super::str;
use crate::dispatch::Context;
use crate::errors::broker_code;

/// DescribeConfigs/CreateTopics config source codes.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// The Kafka code of where a topic config's value comes from.
pub fn source_code(source: ConfigSource) -> i8 {
    match source {
        ConfigSource::TopicOverride => SOURCE_TOPIC,
        ConfigSource::StaticBroker => SOURCE_STATIC_BROKER,
        ConfigSource::Default => SOURCE_DEFAULT,
    }
}

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let version = header.request_api_version;
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        let outcome = create(ctx, &topic, request.validate_only);
        match outcome {
            Ok(created) => {
                if version >= 5 {
                    let configs = created
                        .all_configs(&ctx.broker.config)
                        .into_iter()
                        .map(|c| {
                            CreatableTopicConfigs::default()
                                .with_name(str(c.name))
                                .with_value(Some(str(&c.value)))
                                .with_config_source(source_code(c.source))
                        })
                        .collect();
                    result = result
                        .with_num_partitions(
                            created.partitions.len().max(partitions_wanted(ctx, &topic)) as i32,
                        )
                        .with_replication_factor(1)
                        .with_configs(Some(configs));
                }
                if version >= 7 {
                    result = result.with_topic_id(created.id);
                }
            }
            Err((code, message)) => {
                tracing::debug!(topic = %name, code, message = %message, "create topic refused");
                result = result
                    .with_error_code(code)
                    .with_error_message(Some(str(&message)));
                if version >= 5 {
                    result = result.with_num_partitions(-1).with_replication_factor(-1);
                }
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn partitions_wanted(
    ctx: &Context,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> usize {
    if !topic.assignments.is_empty() {
        topic.assignments.len()
    } else if topic.num_partitions > 0 {
        topic.num_partitions as usize
    } else {
        ctx.broker.config.default_partitions as usize
    }
}

fn create(
    ctx: &Context,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<std::sync::Arc<herald_broker::Topic>, (i16, String)> {
    let me = ctx.broker.config.node_id;
    if topic.replication_factor != -1
        && topic.replication_factor != 1
        && topic.assignments.is_empty()
    {
        return Err((
            ResponseError::InvalidReplicationFactor.code(),
            format!(
                "replication factor {} is larger than the 1 available broker",
                topic.replication_factor
            ),
        ));
    }
    if topic
        .assignments
        .iter()
        .any(|a| a.broker_ids.iter().any(|b| b.0 != me))
    {
        return Err((
            ResponseError::InvalidReplicaAssignment.code(),
            format!("replica assignments may only name broker {me}"),
        ));
    }
    let partitions = if !topic.assignments.is_empty() {
        Some(topic.assignments.len() as i64)
    } else if topic.num_partitions == -1 {
        None
    } else {
        Some(i64::from(topic.num_partitions))
    };
    let mut configs = BTreeMap::new();
    for c in &topic.configs {
        match &c.value {
            Some(v) => {
                configs.insert(c.name.to_string(), v.to_string());
            }
            None => {
                return Err((
                    ResponseError::InvalidConfig.code(),
                    format!("config {} has a null value", c.name.as_str()),
                ));
            }
        }
    }
    ctx.broker
        .create_topic(topic.name.0.as_str(), partitions, configs, validate_only)
        .map_err(|e: BrokerError| (broker_code(&e), e.to_string()))
}
