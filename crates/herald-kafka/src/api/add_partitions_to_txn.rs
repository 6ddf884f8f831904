//! AddPartitionsToTxn (v0-3, as producers send it): the partitions a transaction will
//! write to. If any partition is unknown, none is added: that one answers
//! UNKNOWN_TOPIC_OR_PARTITION and the others OPERATION_NOT_ATTEMPTED, as in Kafka.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, RequestHeader,
};

use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let wanted: Vec<(String, i32)> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect();
    let unknown = |(topic, partition): &(String, i32)| {
        ctx.broker
            .topic(topic)
            .is_none_or(|t| t.partition(*partition).is_err())
    };
    let any_unknown = wanted.iter().any(unknown);
    let shared = if any_unknown {
        None
    } else {
        ctx.broker
            .add_partitions_to_txn(
                &ctx.who,
                request.v3_and_below_transactional_id.0.as_str(),
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
                &wanted,
            )
            .await
            .err()
            .inspect(
                |e| tracing::debug!(peer = %ctx.peer, error = %e, "AddPartitionsToTxn refused"),
            )
            .map(|e| broker_code(&e))
    };
    let results = request
        .v3_and_below_topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let results = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if any_unknown {
                        if unknown(&(name.clone(), *p)) {
                            ResponseError::UnknownTopicOrPartition.code()
                        } else {
                            ResponseError::OperationNotAttempted.code()
                        }
                    } else {
                        shared.unwrap_or(0)
                    };
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name)
                .with_results_by_partition(results)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}
