//! `PersistentSubscriptions` (competing consumers). Not built yet: they will run on
//! the broker's shared-subscription engine; until then every method answers
//! `UNIMPLEMENTED`.

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::persistent_subscriptions::{
    CreateReq, CreateResp, DeleteReq, DeleteResp, GetInfoReq, GetInfoResp, ListReq, ListResp,
    ReadReq, ReadResp, ReplayParkedReq, ReplayParkedResp, UpdateReq, UpdateResp,
    persistent_subscriptions_server::PersistentSubscriptions,
};
use crate::proto::shared::Empty;

const SERVICE: &str = "PersistentSubscriptions";

/// Checks who calls (so the answer is the same as it will be once users exist), then
/// refuses.
fn refuse<T, R>(request: &Request<T>) -> Result<Response<R>, Status> {
    crate::caller::principal(request)?;
    Err(crate::errors::not_implemented(SERVICE))
}

pub struct PersistentSubscriptionsService;

#[tonic::async_trait]
impl PersistentSubscriptions for PersistentSubscriptionsService {
    type ReadStream = BoxStream<ReadResp>;

    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        refuse(&request)
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        refuse(&request)
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        refuse(&request)
    }

    async fn read(
        &self,
        request: Request<Streaming<ReadReq>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        refuse(&request)
    }

    async fn get_info(
        &self,
        request: Request<GetInfoReq>,
    ) -> Result<Response<GetInfoResp>, Status> {
        refuse(&request)
    }

    async fn replay_parked(
        &self,
        request: Request<ReplayParkedReq>,
    ) -> Result<Response<ReplayParkedResp>, Status> {
        refuse(&request)
    }

    async fn list(&self, request: Request<ListReq>) -> Result<Response<ListResp>, Status> {
        refuse(&request)
    }

    async fn restart_subsystem(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        refuse(&request)
    }
}
