//! LeaveGroup: members leave at once, so the others rebalance without waiting for a
//! session timeout.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse, RequestHeader};

use crate::dispatch::Context;
use crate::errors::group_code;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let version = header.request_api_version;
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let results = match ctx
        .broker
        .groups
        .leave(request.group_id.0.as_str(), &leaving)
    {
        Ok(r) => r,
        Err(e) => return LeaveGroupResponse::default().with_error_code(group_code(&e)),
    };
    if version < 3 {
        let code = results
            .first()
            .and_then(|r| r.as_ref().err())
            .map(group_code)
            .unwrap_or(0);
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let members = request
        .members
        .into_iter()
        .zip(results)
        .map(|(m, r)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(r.err().map(|e| group_code(&e)).unwrap_or(0))
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}
