//! `Streams`: append, read, subscribe, delete, tombstone, batch append. Not built
//! yet: every method answers `UNIMPLEMENTED` until the broker's stream semantics
//! (the streams index, expected revisions, reads, catch-up subscriptions) land; the
//! rows of `features::SUPPORTED` go in with them.

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp, streams_server::Streams,
};

const SERVICE: &str = "Streams";

/// Checks who calls (so the answer is the same as it will be once users exist), then
/// refuses.
fn refuse<T, R>(request: &Request<T>) -> Result<Response<R>, Status> {
    crate::caller::principal(request)?;
    Err(crate::errors::not_implemented(SERVICE))
}

pub struct StreamsService;

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = BoxStream<ReadResp>;
    type BatchAppendStream = BoxStream<BatchAppendResp>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        refuse(&request)
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        refuse(&request)
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        refuse(&request)
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        refuse(&request)
    }

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        refuse(&request)
    }
}
