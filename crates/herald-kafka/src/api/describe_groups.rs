//! DescribeGroups: state, protocol and members of each group.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, RequestHeader};

use super::str;
use crate::dispatch::Context;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let version = header.request_api_version;
    let groups = request
        .groups
        .into_iter()
        .map(|id| match ctx.broker.groups.describe(id.0.as_str()) {
            Some(d) => DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(str(d.state.name()))
                .with_protocol_type(str(&d.protocol_type))
                .with_protocol_data(str(&d.protocol_name))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            let mut member = DescribedGroupMember::default()
                                .with_member_id(str(&m.member_id))
                                .with_client_id(str(&m.client_id))
                                .with_client_host(str(&m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment);
                            if version >= 4 {
                                member = member
                                    .with_group_instance_id(m.group_instance_id.map(|s| str(&s)));
                            }
                            member
                        })
                        .collect(),
                ),
            None => {
                let mut g = DescribedGroup::default()
                    .with_group_id(id)
                    .with_group_state(str("Dead"));
                if version >= 6 {
                    g = g
                        .with_error_code(kafka_protocol::ResponseError::GroupIdNotFound.code())
                        .with_error_message(Some(str("the group does not exist")));
                }
                g
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
