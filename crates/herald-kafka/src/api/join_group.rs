//! JoinGroup: enter the group and wait for the rebalance to complete.

use herald_broker::group::{GroupError, JoinRequest};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse, RequestHeader};

use super::str;
use crate::dispatch::Context;
use crate::errors::group_code;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let version = header.request_api_version;
    let requested_member = request.member_id.to_string();
    let join = JoinRequest {
        group_id: request.group_id.0.to_string(),
        member_id: requested_member.clone(),
        group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: format!("/{}", ctx.peer.ip()),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let empty_name = if version >= 7 { None } else { Some(str("")) };
    match ctx.broker.groups.join(join).await {
        Ok(joined) => {
            let members = joined
                .members
                .into_iter()
                .map(|m| {
                    let mut member = JoinGroupResponseMember::default()
                        .with_member_id(str(&m.member_id))
                        .with_metadata(m.metadata);
                    if version >= 5 {
                        member =
                            member.with_group_instance_id(m.group_instance_id.map(|s| str(&s)));
                    }
                    member
                })
                .collect();
            let mut r = JoinGroupResponse::default()
                .with_generation_id(joined.generation_id)
                .with_protocol_name(Some(str(&joined.protocol_name)))
                .with_leader(str(&joined.leader))
                .with_member_id(str(&joined.member_id))
                .with_members(members);
            if version >= 7 {
                r = r.with_protocol_type(Some(str(&joined.protocol_type)));
            }
            r
        }
        Err(e) => {
            let member_id = match &e {
                GroupError::MemberIdRequired(id) => id.clone(),
                _ => requested_member,
            };
            JoinGroupResponse::default()
                .with_error_code(group_code(&e))
                .with_generation_id(-1)
                .with_protocol_name(empty_name)
                .with_member_id(str(&member_id))
        }
    }
}
