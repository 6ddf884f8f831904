//! `Monitoring.Stats`: KurrentDB's stats stream. Herald's figures are in `/metrics`
//! (Prometheus) on the HTTP listener; this answers `UNIMPLEMENTED`.

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::proto::monitoring::{StatsReq, StatsResp, monitoring_server::Monitoring};

const SERVICE: &str = "Monitoring";

/// Checks who calls (so the answer is the same as it will be once users exist), then
/// refuses.
fn refuse<T, R>(request: &Request<T>) -> Result<Response<R>, Status> {
    crate::caller::principal(request)?;
    Err(crate::errors::not_implemented(SERVICE))
}

pub struct MonitoringService;

#[tonic::async_trait]
impl Monitoring for MonitoringService {
    type StatsStream = BoxStream<StatsResp>;

    async fn stats(
        &self,
        request: Request<StatsReq>,
    ) -> Result<Response<Self::StatsStream>, Status> {
        refuse(&request)
    }
}
