//! ListTransactions: every transactional id, filtered by state, producer id and (v1)
//! how long its transaction has been open (`kafka-transactions.sh list`).

use herald_broker::now_ms;
use herald_broker::txn::TxnStatus;
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, RequestHeader, TransactionalId,
};

use super::str;
use crate::dispatch::Context;

const STATES: [TxnStatus; 6] = [
    TxnStatus::Empty,
    TxnStatus::Ongoing,
    TxnStatus::PrepareCommit,
    TxnStatus::PrepareAbort,
    TxnStatus::CompleteCommit,
    TxnStatus::CompleteAbort,
];

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let now = now_ms();
    let unknown: Vec<_> = request
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|s| s.name() == f.as_str()))
        .cloned()
        .collect();
    let states = ctx
        .broker
        .transactions()
        .all()
        .into_iter()
        .filter(|(_, s)| {
            request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|f| f.as_str() == s.status.name())
        })
        .filter(|(_, s)| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .contains(&ProducerId(s.producer_id))
        })
        .filter(|(_, s)| {
            // Only open transactions have a duration (Kafka's rule for the filter).
            request.duration_filter < 0
                || (s.status == TxnStatus::Ongoing
                    && now.saturating_sub(s.started_ms) >= request.duration_filter)
        })
        .map(|(id, s)| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str(&id)))
                .with_producer_id(ProducerId(s.producer_id))
                .with_transaction_state(str(s.status.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}
