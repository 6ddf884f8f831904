//! `Operations` (scavenge, shutdown, node priority, ...): KurrentDB's admin calls.
//! Herald has no scavenge (retention and compaction are topic configs) and is shut
//! down by a signal, so every method answers `UNIMPLEMENTED`.

use tonic::{Request, Response, Status};

use crate::proto::operations::{
    ScavengeResp, SetNodePriorityReq, StartScavengeReq, StopScavengeReq,
    operations_server::Operations,
};
use crate::proto::shared::Empty;

const SERVICE: &str = "Operations";

/// Checks who calls (so the answer is the same as it will be once users exist), then
/// refuses.
fn refuse<T, R>(request: &Request<T>) -> Result<Response<R>, Status> {
    crate::caller::principal(request)?;
    Err(crate::errors::not_implemented(SERVICE))
}

pub struct OperationsService;

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn start_scavenge(
        &self,
        request: Request<StartScavengeReq>,
    ) -> Result<Response<ScavengeResp>, Status> {
        refuse(&request)
    }

    async fn stop_scavenge(
        &self,
        request: Request<StopScavengeReq>,
    ) -> Result<Response<ScavengeResp>, Status> {
        refuse(&request)
    }

    async fn shutdown(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        refuse(&request)
    }

    async fn merge_indexes(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        refuse(&request)
    }

    async fn resign_node(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        refuse(&request)
    }

    async fn set_node_priority(
        &self,
        request: Request<SetNodePriorityReq>,
    ) -> Result<Response<Empty>, Status> {
        refuse(&request)
    }

    async fn restart_persistent_subscriptions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Empty>, Status> {
        refuse(&request)
    }
}
