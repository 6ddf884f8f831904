//! ElectLeaders: this single node leads every partition and is each one's only (so
//! preferred) replica, so no election is ever needed: named partitions that exist get
//! ELECTION_NOT_NEEDED, as Kafka answers for a partition already led by its preferred
//! replica, and a request for all partitions (null) elects nothing and lists nothing,
//! as Kafka's controller does.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, RequestHeader};

use super::str;
use crate::dispatch::Context;

/// Kafka's election types: preferred replica, unclean.
const ELECTION_TYPES: [i8; 2] = [0, 1];

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let Some(topics) = request.topic_partitions else {
        return ElectLeadersResponse::default();
    };
    let valid_type = ELECTION_TYPES.contains(&request.election_type);
    let results = topics
        .into_iter()
        .map(|t| {
            let known = ctx.broker.topic(t.topic.0.as_str());
            let partition_result = t
                .partitions
                .iter()
                .map(|&index| {
                    let (code, message) = if !valid_type {
                        (
                            ResponseError::InvalidRequest.code(),
                            format!("unknown election type {}", request.election_type),
                        )
                    } else if known.as_ref().is_some_and(|k| k.partition(index).is_ok()) {
                        (
                            ResponseError::ElectionNotNeeded.code(),
                            "the partition is led by its only replica".to_string(),
                        )
                    } else {
                        (
                            ResponseError::UnknownTopicOrPartition.code(),
                            format!("{}-{index} does not exist", t.topic.0.as_str()),
                        )
                    };
                    PartitionResult::default()
                        .with_partition_id(index)
                        .with_error_code(code)
                        .with_error_message(Some(str(&message)))
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(t.topic)
                .with_partition_result(partition_result)
        })
        .collect();
    ElectLeadersResponse::default().with_replica_election_results(results)
}
