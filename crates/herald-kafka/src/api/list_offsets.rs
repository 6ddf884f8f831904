//! ListOffsets: earliest (-2), latest (-1), or the first offset at or after a timestamp.

use herald_broker::{BrokerError, Partition};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, RequestHeader};

use super::READ_COMMITTED;
use crate::dispatch::Context;
use crate::errors::broker_code;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let version = header.request_api_version;
    // read_committed (v2+): "latest" is the last stable offset.
    let committed = version >= 2 && request.isolation_level == READ_COMMITTED;
    let mut topics = Vec::with_capacity(request.topics.len());
    for wanted in request.topics {
        let topic = ctx.broker.topic(wanted.name.0.as_str());
        let mut partitions = Vec::with_capacity(wanted.partitions.len());
        for p in wanted.partitions {
            let mut response = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let found = topic
                .as_ref()
                .ok_or_else(|| BrokerError::UnknownTopic(wanted.name.0.to_string()))
                .and_then(|t| t.partition(p.partition_index).cloned())
                .and_then(|partition| lookup(&partition, p.timestamp, committed));
            match found {
                Ok(Some((offset, timestamp))) => {
                    response = response.with_offset(offset).with_timestamp(timestamp);
                    if version >= 4 {
                        response = response.with_leader_epoch(0);
                    }
                }
                Ok(None) => {}
                Err(e) => response = response.with_error_code(broker_code(&e)),
            }
            partitions.push(response);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(wanted.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

fn lookup(
    partition: &Partition,
    timestamp: i64,
    committed: bool,
) -> Result<Option<(i64, i64)>, BrokerError> {
    match timestamp {
        LATEST if committed => Ok(Some((partition.last_stable_offset(), -1))),
        LATEST => Ok(Some((partition.high_watermark(), -1))),
        EARLIEST | EARLIEST_LOCAL => Ok(Some((partition.log_start_offset(), -1))),
        MAX_TIMESTAMP => partition.max_timestamp_offset(),
        t if t >= 0 => partition.offset_for_timestamp(t),
        other => Err(BrokerError::InvalidRequest(format!(
            "unsupported ListOffsets timestamp {other}"
        ))),
    }
}
