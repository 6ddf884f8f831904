//! ListGroups: every known group (with members or committed offsets).

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{ListGroupsRequest, ListGroupsResponse, RequestHeader};

use super::{group_id, str};
use crate::dispatch::Context;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let version = header.request_api_version;
    let groups = ctx
        .broker
        .groups
        .list()
        .into_iter()
        .filter(|g| {
            request.states_filter.is_empty()
                || request
                    .states_filter
                    .iter()
                    .any(|s| s.as_str().eq_ignore_ascii_case(g.state.name()))
        })
        .filter(|_| {
            request.types_filter.is_empty()
                || request
                    .types_filter
                    .iter()
                    .any(|t| t.as_str().eq_ignore_ascii_case("classic"))
        })
        .map(|g| {
            let mut listed = ListedGroup::default()
                .with_group_id(group_id(&g.group_id))
                .with_protocol_type(str(&g.protocol_type));
            if version >= 4 {
                listed = listed.with_group_state(str(g.state.name()));
            }
            if version >= 5 {
                listed = listed.with_group_type(str("classic"));
            }
            listed
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
