//! InitProducerId: a fresh producer id for an idempotent producer, or, with a
//! transactional id, that id's producer id at a new epoch (fencing older instances).

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
    let result = match &request.transactional_id {
        Some(id) => {
            let expected = (request.producer_id.0 >= 0)
                .then_some((request.producer_id.0, request.producer_epoch));
            ctx.broker
                .init_transactional_producer(
                    &ctx.who,
                    id.0.as_str(),
                    request.transaction_timeout_ms,
                    expected,
                )
                .await
        }
        None => ctx.broker.allocate_producer_id().map(|id| (id, 0)),
    };
    match result {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = %e, "InitProducerId refused");
            refused.with_error_code(broker_code(&e))
        }
    }
}
