//! `Projections`: KurrentDB's JavaScript projections, which Herald does not run (out of
//! scope; `$ce-`, `$et-`, `$bc-` and `$streams` come from the broker's indexes
//! instead). Every method answers `UNIMPLEMENTED`.

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::proto::projections::{
    CreateReq, CreateResp, DeleteReq, DeleteResp, DisableReq, DisableResp, EnableReq, EnableResp,
    ResetReq, ResetResp, ResultReq, ResultResp, StateReq, StateResp, StatisticsReq, StatisticsResp,
    UpdateReq, UpdateResp, projections_server::Projections,
};
use crate::proto::shared::Empty;

const SERVICE: &str = "Projections";

/// Checks who calls (so the answer is the same as it will be once users exist), then
/// refuses.
fn refuse<T, R>(request: &Request<T>) -> Result<Response<R>, Status> {
    crate::caller::principal(request)?;
    Err(crate::errors::not_implemented(SERVICE))
}

pub struct ProjectionsService;

#[tonic::async_trait]
impl Projections for ProjectionsService {
    type StatisticsStream = BoxStream<StatisticsResp>;

    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        refuse(&request)
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        refuse(&request)
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        refuse(&request)
    }

    async fn statistics(
        &self,
        request: Request<StatisticsReq>,
    ) -> Result<Response<Self::StatisticsStream>, Status> {
        refuse(&request)
    }

    async fn disable(&self, request: Request<DisableReq>) -> Result<Response<DisableResp>, Status> {
        refuse(&request)
    }

    async fn enable(&self, request: Request<EnableReq>) -> Result<Response<EnableResp>, Status> {
        refuse(&request)
    }

    async fn reset(&self, request: Request<ResetReq>) -> Result<Response<ResetResp>, Status> {
        refuse(&request)
    }

    async fn state(&self, request: Request<StateReq>) -> Result<Response<StateResp>, Status> {
        refuse(&request)
    }

    async fn result(&self, request: Request<ResultReq>) -> Result<Response<ResultResp>, Status> {
        refuse(&request)
    }

    async fn restart_subsystem(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        refuse(&request)
    }
}
