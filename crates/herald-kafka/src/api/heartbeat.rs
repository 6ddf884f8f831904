//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse, RequestHeader};

use crate::dispatch::Context;
use crate::errors::group_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let result = ctx.broker.groups.heartbeat(
        request.group_id.0.as_str(),
        request.generation_id,
        request.member_id.as_str(),
    );
    HeartbeatResponse::default().with_error_code(result.err().map(|e| group_code(&e)).unwrap_or(0))
}
