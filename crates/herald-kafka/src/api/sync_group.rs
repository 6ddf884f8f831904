//! SyncGroup: the leader hands in assignments; every member gets its own.

use kafka_protocol::messages::{RequestHeader, SyncGroupRequest, SyncGroupResponse};

use super::str;
use crate::dispatch::Context;
use crate::errors::group_code;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let version = header.request_api_version;
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let result = ctx
        .broker
        .groups
        .sync(
            request.group_id.0.as_str(),
            request.generation_id,
            request.member_id.as_str(),
            assignments,
        )
        .await;
    match result {
        Ok(synced) => {
            let mut r = SyncGroupResponse::default().with_assignment(synced.assignment);
            if version >= 5 {
                r = r
                    .with_protocol_type(Some(str(&synced.protocol_type)))
                    .with_protocol_name(Some(str(&synced.protocol_name)));
            }
            r
        }
        Err(e) => SyncGroupResponse::default().with_error_code(group_code(&e)),
    }
}
