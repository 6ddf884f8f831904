//! AlterConfigs: replace a topic's config overrides with the given set (configs not
//! named return to their defaults). Broker configs are static (flags, environment,
//! file) and cannot be altered over the wire. IncrementalAlterConfigs shares
//! `alter_resource`.

use std::collections::BTreeMap;

use herald_broker::ConfigChange;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse, RequestHeader};

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::str;
use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let change = replace_all(
                resource
                    .configs
                    .iter()
                    .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))),
            );
            let (code, message) = alter_resource(
                ctx,
                resource.resource_type,
                &name,
                change,
                request.validate_only,
            );
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(code)
                .with_error_message(message.map(|m| str(&m)))
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// The new override set of an AlterConfigs resource: every name once, every value set.
fn replace_all(
    configs: impl Iterator<Item = (String, Option<String>)>,
) -> Result<ConfigChange, (i16, String)> {
    let mut map = BTreeMap::new();
    for (name, value) in configs {
        let Some(value) = value else {
            return Err((
                ResponseError::InvalidConfig.code(),
                format!("config {name} has a null value"),
            ));
        };
        if map.insert(name.clone(), value).is_some() {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("config {name} appears more than once"),
            ));
        }
    }
    Ok(ConfigChange::Replace(map))
}

/// Apply a change to one config resource: (error code, error message). Only topics
/// can be altered.
pub(crate) fn alter_resource(
    ctx: &Context,
    resource_type: i8,
    name: &str,
    change: Result<ConfigChange, (i16, String)>,
    validate_only: bool,
) -> (i16, Option<String>) {
    let outcome = match resource_type {
        RESOURCE_TOPIC => change.and_then(|change| {
            ctx.broker
                .alter_topic_configs(name, change, validate_only)
                .map(|_| ())
                .map_err(|e| (broker_code(&e), e.to_string()))
        }),
        RESOURCE_BROKER => Err((
            ResponseError::InvalidRequest.code(),
            "broker configs cannot be altered at run time; set them with herald serve's flags, HERALD_* variables or the config file".to_string(),
        )),
        other => Err((
            ResponseError::InvalidRequest.code(),
            format!("config resource type {other} is not supported (only topics, type 2)"),
        )),
    };
    match outcome {
        Ok(()) => (crate::errors::NONE, None),
        Err((code, message)) => {
            tracing::debug!(peer = %ctx.peer, resource = name, code, %message, "alter configs refused");
            (code, Some(message))
        }
    }
}
