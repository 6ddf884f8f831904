//! One file per gRPC service of the protos. `routes` puts them all behind one router,
//! with an `UNIMPLEMENTED` answer naming the path for anything else.

pub mod gossip;
pub mod monitoring;
pub mod operations;
pub mod persistent;
pub mod projections;
pub mod server_features;
pub mod streams;
pub mod users;

use std::net::SocketAddr;

use tonic::service::Routes;

use crate::proto;

/// What every service may need to answer: fixed at bind time.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The address the listener is bound to (port 0 resolved).
    pub listen: SocketAddr,
    /// This process's instance id, as KurrentDB's gossip reports one per node start.
    pub instance_id: ::uuid::Uuid,
}

/// Every service, each limited to `message_bytes_max` per message both ways.
pub fn routes(
    node: NodeInfo,
    broker: std::sync::Arc<herald_broker::Broker>,
    message_bytes_max: usize,
) -> Routes {
    macro_rules! limited {
        ($server:expr) => {
            $server
                .max_decoding_message_size(message_bytes_max)
                .max_encoding_message_size(message_bytes_max)
        };
    }
    use proto::{
        gossip::gossip_server::GossipServer, monitoring::monitoring_server::MonitoringServer,
        operations::operations_server::OperationsServer,
        persistent_subscriptions::persistent_subscriptions_server::PersistentSubscriptionsServer,
        projections::projections_server::ProjectionsServer,
        server_features::server_features_server::ServerFeaturesServer,
        streams::streams_server::StreamsServer, users::users_server::UsersServer,
    };
    let routes = Routes::new(limited!(ServerFeaturesServer::new(
        server_features::ServerFeaturesService
    )))
    .add_service(limited!(GossipServer::new(gossip::GossipService::new(
        node
    ))))
    .add_service(limited!(StreamsServer::new(streams::StreamsService::new(
        broker.clone()
    ))))
    .add_service(limited!(PersistentSubscriptionsServer::new(
        persistent::PersistentSubscriptionsService::new(broker.clone())
    )))
    .add_service(limited!(ProjectionsServer::new(
        projections::ProjectionsService
    )))
    .add_service(limited!(OperationsServer::new(
        operations::OperationsService
    )))
    .add_service(limited!(UsersServer::new(users::UsersService)))
    .add_service(limited!(MonitoringServer::new(
        monitoring::MonitoringService
    )));
    // tonic's own fallback answers UNIMPLEMENTED with no message; say what was asked.
    Routes::from(routes.into_axum_router().fallback(unknown_path))
}

async fn unknown_path(
    uri: tonic::codegen::http::Uri,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    crate::errors::not_implemented(&format!("the gRPC method {}", uri.path())).into_http()
}
