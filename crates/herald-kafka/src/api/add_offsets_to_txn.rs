//! AddOffsetsToTxn: the transaction will commit a consumer group's offsets.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, RequestHeader};

use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let code = match ctx
        .broker
        .add_offsets_to_txn(
            &ctx.who,
            request.transactional_id.0.as_str(),
            request.producer_id.0,
            request.producer_epoch,
            request.group_id.0.as_str(),
        )
        .await
    {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = %e, "AddOffsetsToTxn refused");
            broker_code(&e)
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}
