//! FindCoordinator: this node coordinates every group (and would every transaction).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse, RequestHeader};
use kafka_protocol::protocol::StrBytes;

use super::{node, str};
use crate::dispatch::Context;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let version = header.request_api_version;
    let supported = matches!(request.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    let error = if supported {
        0
    } else {
        kafka_protocol::ResponseError::InvalidRequest.code()
    };
    let message = (!supported).then(|| {
        str(&format!(
            "coordinator key type {} is not supported",
            request.key_type
        ))
    });
    if version < 4 {
        let mut r = FindCoordinatorResponse::default().with_error_code(error);
        if supported {
            r = r
                .with_node_id(node(ctx))
                .with_host(str(&ctx.config.advertised_host))
                .with_port(ctx.config.advertised_port);
        } else {
            r = r
                .with_node_id(kafka_protocol::messages::BrokerId(-1))
                .with_port(-1);
        }
        if version >= 1 {
            r = r.with_error_message(message);
        }
        return r;
    }
    let coordinators = request
        .coordinator_keys
        .into_iter()
        .map(|key: StrBytes| {
            let c = Coordinator::default()
                .with_key(key)
                .with_error_code(error)
                .with_error_message(message.clone());
            if supported {
                c.with_node_id(node(ctx))
                    .with_host(str(&ctx.config.advertised_host))
                    .with_port(ctx.config.advertised_port)
            } else {
                c.with_node_id(kafka_protocol::messages::BrokerId(-1))
                    .with_port(-1)
            }
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}
