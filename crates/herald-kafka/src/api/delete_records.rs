//! DeleteRecords: move partitions' log start offsets forward (offset -1 means the high
//! watermark); whole segments below the new start are deleted. The response has no
//! error message field, so refusals are logged at debug level with their reason.

use std::sync::Arc;

use herald_broker::{BrokerError, Partition};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, RequestHeader};

use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for wanted in request.topics {
        let name = wanted.name.0.to_string();
        let topic = ctx.broker.topic(&name);
        let mut partitions = Vec::with_capacity(wanted.partitions.len());
        for p in wanted.partitions {
            let partition = topic
                .as_ref()
                .ok_or_else(|| BrokerError::UnknownTopic(name.clone()))
                .and_then(|t| t.partition(p.partition_index).cloned());
            let outcome = match partition {
                Ok(partition) => delete_before(partition, p.offset).await,
                Err(e) => Err(e),
            };
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(match outcome {
                Ok(low_watermark) => result.with_low_watermark(low_watermark),
                Err(e) => {
                    tracing::debug!(peer = %ctx.peer, topic = %name, partition = p.partition_index, offset = p.offset, error = %e, "delete records refused");
                    result.with_low_watermark(-1).with_error_code(broker_code(&e))
                }
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(wanted.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Runs on a blocking thread: moving the start offset fsyncs its checkpoint.
async fn delete_before(partition: Arc<Partition>, offset: i64) -> Result<i64, BrokerError> {
    tokio::task::spawn_blocking(move || partition.delete_records_before(offset))
        .await
        .map_err(|e| BrokerError::Storage(format!("delete records task failed: {e}")))?
}
