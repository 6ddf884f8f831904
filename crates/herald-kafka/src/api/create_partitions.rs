//! CreatePartitions: grow topics to a new partition count. Single node: a manual
//! assignment is accepted only when it places each new partition on this broker alone.

use std::collections::HashSet;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, RequestHeader};

use super::str;
use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    // Kafka answers every occurrence of a topic named twice with INVALID_REQUEST.
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> = request
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.as_str()))
        .map(|t| t.name.0.to_string())
        .collect();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let outcome = if duplicated.contains(topic.name.0.as_str()) {
            Err((
                ResponseError::InvalidRequest.code(),
                format!("topic {} is named more than once", topic.name.0.as_str()),
            ))
        } else {
            grow(ctx, topic, request.validate_only).await
        };
        let mut result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        if let Err((code, message)) = outcome {
            tracing::debug!(topic = %topic.name.0.as_str(), code, message = %message, "create partitions refused");
            result = result
                .with_error_code(code)
                .with_error_message(Some(str(&message)));
        }
        results.push(result);
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn grow(
    ctx: &Context,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let name = topic.name.0.as_str();
    if let Some(assignments) = &topic.assignments {
        check_assignments(ctx, name, topic.count, assignments)?;
    }
    ctx.broker
        .create_partitions(name, i64::from(topic.count), validate_only)
        .await
        .map(|_| ())
        .map_err(|e| (broker_code(&e), e.to_string()))
}

/// A manual assignment must name one replica list per new partition, each exactly
/// this broker: anything else asks for replicas a single node cannot place.
fn check_assignments(
    ctx: &Context,
    name: &str,
    count: i32,
    assignments: &[kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment],
) -> Result<(), (i16, String)> {
    let invalid = |message: String| Err((ResponseError::InvalidReplicaAssignment.code(), message));
    let me = ctx.broker.config.node_id;
    let current = ctx
        .broker
        .topic(name)
        .map(|t| t.partitions.len() as i64)
        .ok_or((
            ResponseError::UnknownTopicOrPartition.code(),
            format!("topic {name:?} does not exist"),
        ))?;
    let added = i64::from(count) - current;
    if added > 0 && assignments.len() as i64 != added {
        return invalid(format!(
            "increasing the number of partitions by {added} but {} assignments provided",
            assignments.len()
        ));
    }
    for a in assignments {
        if a.broker_ids.len() != 1 || a.broker_ids[0].0 != me {
            let ids: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
            return invalid(format!(
                "replica assignment {ids:?}: this single-node broker can only place a partition on broker {me} alone"
            ));
        }
    }
    Ok(())
}
