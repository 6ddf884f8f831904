//! DescribeConfigs: a topic's effective configs with their source; the broker's main
//! settings.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse, RequestHeader};

use super::create_topics::{SOURCE_STATIC_BROKER, source_code};
use super::str;
use crate::dispatch::Context;

/// Config resource types (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs).
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let version = header.request_api_version;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let wanted = |config: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == config))
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entry = |config: &str, value: String, source: i8, doc: &str| {
                let mut e = DescribeConfigsResourceResult::default()
                    .with_name(str(config))
                    .with_value(Some(str(&value)))
                    .with_config_source(source);
                if version >= 3 && request.include_documentation {
                    e = e.with_documentation(Some(str(doc)));
                }
                e
            };
            match resource.resource_type {
                RESOURCE_TOPIC => match ctx.broker.topic(&name) {
                    Some(topic) => result.with_configs(
                        topic
                            .all_configs(&ctx.broker.config)
                            .into_iter()
                            .filter(|c| wanted(c.name))
                            .map(|c| entry(c.name, c.value, source_code(c.source), c.doc))
                            .collect(),
                    ),
                    None => result
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str(&format!("topic {name:?} does not exist")))),
                },
                RESOURCE_BROKER => {
                    let config = &ctx.broker.config;
                    let settings = [
                        (
                            "num.partitions",
                            config.default_partitions.to_string(),
                            "partitions of an auto-created topic",
                        ),
                        (
                            "auto.create.topics.enable",
                            config.auto_create_topics.to_string(),
                            "create topics on first use",
                        ),
                        (
                            "log.segment.bytes",
                            config.log.segment_bytes_max.to_string(),
                            "segment size before rolling",
                        ),
                        (
                            "log.roll.ms",
                            config.log.segment_ms_max.to_string(),
                            "segment age before rolling",
                        ),
                        (
                            "log.retention.ms",
                            config.retention_ms.to_string(),
                            "default retention.ms of topics",
                        ),
                        (
                            "log.retention.bytes",
                            config.retention_bytes.to_string(),
                            "default retention.bytes of topics",
                        ),
                        (
                            "log.retention.check.interval.ms",
                            config.retention_check_interval_ms.to_string(),
                            "how often retention runs",
                        ),
                        (
                            "group.initial.rebalance.delay.ms",
                            config.group_initial_rebalance_delay_ms.to_string(),
                            "first rebalance delay",
                        ),
                        (
                            "group.min.session.timeout.ms",
                            config.group_session_timeout_min_ms.to_string(),
                            "smallest session timeout",
                        ),
                        (
                            "group.max.session.timeout.ms",
                            config.group_session_timeout_max_ms.to_string(),
                            "largest session timeout",
                        ),
                    ];
                    result.with_configs(
                        settings
                            .into_iter()
                            .filter(|(n, _, _)| wanted(n))
                            .map(|(n, v, d)| {
                                entry(n, v, SOURCE_STATIC_BROKER, d).with_read_only(true)
                            })
                            .collect(),
                    )
                }
                other => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str(&format!(
                        "resource type {other} is not supported"
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
