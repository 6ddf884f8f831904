//! DescribeCluster: this node is the whole cluster and its controller.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse, RequestHeader};

use super::{node, str};
use crate::dispatch::Context;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut r = DescribeClusterResponse::default()
        .with_cluster_id(str(&ctx.broker.cluster_id))
        .with_controller_id(node(ctx))
        .with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(node(ctx))
                .with_host(str(&ctx.config.advertised_host))
                .with_port(ctx.config.advertised_port),
        ]);
    if header.request_api_version >= 1 {
        r = r.with_endpoint_type(1);
    }
    r
}
