//! DescribeProducers: the producers a partition knows (idempotent and transactional),
//! with the first offset of the transaction each has open there, which is how
//! `kafka-transactions.sh find-hanging` finds transactions no coordinator will end.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ProducerId, RequestHeader,
};

use super::str;
use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.broker.topic(t.name.0.as_str());
            let partitions = t
                .partition_indexes
                .iter()
                .map(|index| {
                    let found = match &topic {
                        Some(topic) => topic.partition(*index).cloned(),
                        None => Err(herald_broker::BrokerError::UnknownTopic(
                            t.name.0.to_string(),
                        )),
                    };
                    match found {
                        Err(e) => PartitionResponse::default()
                            .with_partition_index(*index)
                            .with_error_code(broker_code(&e))
                            .with_error_message(Some(str(&e.to_string()))),
                        Ok(partition) => PartitionResponse::default()
                            .with_partition_index(*index)
                            .with_active_producers(
                                partition
                                    .producers()
                                    .into_iter()
                                    .map(|(id, epoch, seq, open)| {
                                        ProducerState::default()
                                            .with_producer_id(ProducerId(id))
                                            .with_producer_epoch(i32::from(epoch))
                                            .with_last_sequence(seq)
                                            .with_last_timestamp(-1)
                                            .with_coordinator_epoch(-1)
                                            .with_current_txn_start_offset(open)
                                    })
                                    .collect(),
                            ),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
