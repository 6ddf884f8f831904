//! AlterReplicaLogDirs: moving a replica between log directories. Herald has one log
//! directory, so a move is refused with Kafka's own answer for a path that is not one
//! of the broker's log dirs, LOG_DIR_NOT_FOUND (a "move" to the directory a partition
//! is already in succeeds, as in Kafka), and a partition that does not exist gets
//! UNKNOWN_TOPIC_OR_PARTITION.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use kafka_protocol::messages::{
    AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, RequestHeader,
};

use crate::dispatch::Context;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: AlterReplicaLogDirsRequest,
) -> AlterReplicaLogDirsResponse {
    let data_dir = super::describe_log_dirs::log_dir(ctx);
    let mut results = Vec::new();
    for dir in &request.dirs {
        for topic in &dir.topics {
            let known = ctx.broker.topic(topic.name.0.as_str());
            let partitions = topic
                .partitions
                .iter()
                .map(|&index| {
                    let code = if known.as_ref().is_none_or(|t| t.partition(index).is_err()) {
                        ResponseError::UnknownTopicOrPartition.code()
                    } else if dir.path.as_str() == data_dir {
                        // Already there: nothing to move.
                        0
                    } else {
                        ResponseError::LogDirNotFound.code()
                    };
                    AlterReplicaLogDirPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(code)
                })
                .collect();
            results.push(
                AlterReplicaLogDirTopicResult::default()
                    .with_topic_name(topic.name.clone())
                    .with_partitions(partitions),
            );
        }
    }
    AlterReplicaLogDirsResponse::default().with_results(results)
}
