//! DescribeTransactions: a transactional id's state, producer, timeout and partitions
//! (what `kafka-transactions.sh describe` shows).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, RequestHeader,
};

use super::topic_name;
use crate::dispatch::Context;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let view = ctx.broker.transactions();
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| match view.state(id.0.as_str()) {
            None => TransactionState::default()
                .with_transactional_id(id)
                .with_error_code(ResponseError::TransactionalIdNotFound.code())
                .with_transaction_state(super::str(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1),
            Some(state) => {
                let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (topic, partition) in &state.partitions {
                    topics.entry(topic.as_str()).or_default().push(*partition);
                }
                TransactionState::default()
                    .with_transactional_id(id)
                    .with_transaction_state(super::str(state.status.name()))
                    .with_transaction_timeout_ms(state.timeout_ms)
                    .with_transaction_start_time_ms(state.started_ms)
                    .with_producer_id(ProducerId(state.producer_id))
                    .with_producer_epoch(state.epoch)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(t, ps)| {
                                TopicData::default()
                                    .with_topic(topic_name(t))
                                    .with_partitions(ps)
                            })
                            .collect(),
                    )
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
