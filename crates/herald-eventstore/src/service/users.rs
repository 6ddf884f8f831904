//! `Users`: KurrentDB's user management. Users come with the security work; until
//! then every method answers `UNIMPLEMENTED`.

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::proto::users::{
    ChangePasswordReq, ChangePasswordResp, CreateReq, CreateResp, DeleteReq, DeleteResp,
    DetailsReq, DetailsResp, DisableReq, DisableResp, EnableReq, EnableResp, ResetPasswordReq,
    ResetPasswordResp, UpdateReq, UpdateResp, users_server::Users,
};

const SERVICE: &str = "Users";

/// Checks who calls (so the answer is the same as it will be once users exist), then
/// refuses.
fn refuse<T, R>(request: &Request<T>) -> Result<Response<R>, Status> {
    crate::caller::principal(request)?;
    Err(crate::errors::not_implemented(SERVICE))
}

pub struct UsersService;

#[tonic::async_trait]
impl Users for UsersService {
    type DetailsStream = BoxStream<DetailsResp>;

    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        refuse(&request)
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        refuse(&request)
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        refuse(&request)
    }

    async fn disable(&self, request: Request<DisableReq>) -> Result<Response<DisableResp>, Status> {
        refuse(&request)
    }

    async fn enable(&self, request: Request<EnableReq>) -> Result<Response<EnableResp>, Status> {
        refuse(&request)
    }

    async fn details(
        &self,
        request: Request<DetailsReq>,
    ) -> Result<Response<Self::DetailsStream>, Status> {
        refuse(&request)
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordReq>,
    ) -> Result<Response<ChangePasswordResp>, Status> {
        refuse(&request)
    }

    async fn reset_password(
        &self,
        request: Request<ResetPasswordReq>,
    ) -> Result<Response<ResetPasswordResp>, Status> {
        refuse(&request)
    }
}
