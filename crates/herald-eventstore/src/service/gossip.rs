//! `Gossip.Read`: Herald is one node, the leader, always alive. Clients connecting
//! with a discovery scheme (`kurrentdb+discover://`, `esdb+discover://`) read it to
//! pick a node; the others may read it too.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use crate::proto::gossip::{ClusterInfo, EndPoint, MemberInfo, gossip_server::Gossip, member_info};
use crate::proto::shared::Empty;
use crate::service::NodeInfo;

pub struct GossipService {
    node: NodeInfo,
}

impl GossipService {
    pub fn new(node: NodeInfo) -> GossipService {
        GossipService { node }
    }

    /// The one member: this node at the address the listener is bound to. Bound to
    /// an unspecified address (0.0.0.0, ::), it reports the host the client used
    /// (the request's authority), which is the one address known to reach it.
    fn member(&self, authority_host: Option<&str>) -> MemberInfo {
        let listen = self.node.listen;
        let address = match authority_host {
            Some(host) if listen.ip().is_unspecified() => host.to_string(),
            _ => listen.ip().to_string(),
        };
        MemberInfo {
            // KurrentDB sends the structured form here.
            instance_id: Some(crate::uuid::to_proto(self.node.instance_id, true)),
            time_stamp: ticks_since_unix_epoch(SystemTime::now()),
            state: member_info::VNodeState::Leader as i32,
            is_alive: true,
            http_end_point: Some(EndPoint {
                address,
                port: u32::from(listen.port()),
            }),
        }
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, request: Request<Empty>) -> Result<Response<ClusterInfo>, Status> {
        let _principal = crate::caller::principal(&request)?;
        let host = request
            .extensions()
            .get::<crate::caller::Caller>()
            .and_then(|c| c.authority_host.as_deref());
        Ok(Response::new(ClusterInfo {
            members: vec![self.member(host)],
        }))
    }
}

/// .NET ticks (100 ns) since the Unix epoch, the unit of KurrentDB's gossip
/// `time_stamp`; 0 for a clock before 1970.
fn ticks_since_unix_epoch(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(listen: &str) -> GossipService {
        GossipService::new(NodeInfo {
            listen: listen.parse().unwrap(),
            instance_id: ::uuid::Uuid::nil(),
        })
    }

    #[test]
    fn one_live_leader_at_the_listen_address() {
        let m = node("127.0.0.1:2113").member(Some("example.test"));
        assert_eq!(m.state, member_info::VNodeState::Leader as i32);
        assert!(m.is_alive);
        let end = m.http_end_point.unwrap();
        assert_eq!((end.address.as_str(), end.port), ("127.0.0.1", 2113));
        // Bound to every address: the one the client reached it by.
        let m = node("0.0.0.0:2113").member(Some("broker.internal"));
        assert_eq!(m.http_end_point.unwrap().address, "broker.internal");
        assert!(ticks_since_unix_epoch(SystemTime::now()) > 16_000_000_000_000_000);
    }
}
