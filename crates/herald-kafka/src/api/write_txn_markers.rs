//! WriteTxnMarkers (v1): in Kafka the coordinator's call to partition leaders; here
//! only administrators send it (`kafka-transactions.sh abort`, kafka-python's
//! `abort_transaction`), to end a hanging transaction in a partition. Herald's own
//! coordinator writes its markers directly.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{RequestHeader, WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut markers = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in marker.topics {
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for index in &topic.partition_indexes {
                let code = match ctx
                    .broker
                    .write_txn_marker(
                        &ctx.who,
                        topic.name.0.as_str(),
                        *index,
                        marker.producer_id.0,
                        marker.producer_epoch,
                        marker.transaction_result,
                    )
                    .await
                {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::debug!(peer = %ctx.peer, error = %e, "WriteTxnMarkers refused");
                        broker_code(&e)
                    }
                };
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(*index)
                        .with_error_code(code),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}
