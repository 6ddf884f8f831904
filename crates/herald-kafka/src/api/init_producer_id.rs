//! InitProducerId: a fresh producer id for an idempotent producer. Transactional ids are
//! refused until transactions are implemented.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, RequestHeader,
};

use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if request.transactional_id.is_some() {
        tracing::warn!(peer = %ctx.peer, "InitProducerId with a transactional id: transactions are not supported yet");
        return refused.with_error_code(ResponseError::UnsupportedVersion.code());
    }
    match ctx.broker.allocate_producer_id() {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => refused.with_error_code(broker_code(&e)),
    }
}
