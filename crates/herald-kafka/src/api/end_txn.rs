//! EndTxn: commit or abort a transaction. Answered once every partition's marker is
//! durable and the coordinator's Complete state (with the transaction's group offsets)
//! is stored.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId, RequestHeader};

use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: EndTxnRequest,
) -> EndTxnResponse {
    let code = match ctx
        .broker
        .end_txn(
            &ctx.who,
            request.transactional_id.0.as_str(),
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
        .await
    {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = %e, "EndTxn refused");
            broker_code(&e)
        }
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}
