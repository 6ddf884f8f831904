//! IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT (the last two only for
//! list configs such as cleanup.policy) on a topic's config overrides.

use std::collections::BTreeSet;

use herald_broker::{ConfigChange, ConfigOp};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, RequestHeader,
};

use super::alter_configs::alter_resource;
use super::str;
use crate::dispatch::Context;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let (code, message) = alter_resource(
                ctx,
                resource.resource_type,
                &name,
                changes(&resource.configs),
                request.validate_only,
            );
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(code)
                .with_error_message(message.map(|m| str(&m)))
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The operations of one resource, each config named at most once (as Kafka requires).
fn changes(configs: &[AlterableConfig]) -> Result<ConfigChange, (i16, String)> {
    let mut seen = BTreeSet::new();
    let mut ops = Vec::with_capacity(configs.len());
    for c in configs {
        let name = c.name.to_string();
        if !seen.insert(name.clone()) {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("config {name} appears more than once"),
            ));
        }
        let value = || {
            c.value.as_ref().map(|v| v.to_string()).ok_or_else(|| {
                (
                    ResponseError::InvalidConfig.code(),
                    format!("config {name} has a null value"),
                )
            })
        };
        let op = match c.config_operation {
            OP_SET => ConfigOp::Set(value()?),
            OP_DELETE => ConfigOp::Delete,
            OP_APPEND => ConfigOp::Append(value()?),
            OP_SUBTRACT => ConfigOp::Subtract(value()?),
            other => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    format!(
                        "config operation {other} for {name} is not one of SET (0), DELETE (1), APPEND (2), SUBTRACT (3)"
                    ),
                ));
            }
        };
        ops.push((name, op));
    }
    Ok(ConfigChange::Incremental(ops))
}
