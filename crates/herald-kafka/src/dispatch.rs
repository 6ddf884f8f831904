//! One request frame: `decode` it (pure, no broker: what the fuzz target drives), then
//! `apply` it by calling its handler in `api/`, and encode the response.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use herald_broker::Broker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::KafkaConfig;
use crate::api;
use crate::connection::Outgoing;
use crate::versions;

/// What every handler may use: the broker, listener settings, who is asking.
#[derive(Clone)]
pub struct Context {
    pub broker: Arc<Broker>,
    pub config: Arc<KafkaConfig>,
    pub peer: SocketAddr,
    /// Who is calling (anonymous until the Kafka listener authenticates).
    pub who: herald_broker::Principal,
}

const UNSUPPORTED_VERSION: i16 = 35;

/// Smallest valid request: api key, api version, correlation id.
pub const REQUEST_HEADER_BYTES_MIN: usize = 8;

macro_rules! requests {
    ($($variant:ident($request:ty) => $module:ident),* $(,)?) => {
        /// A decoded request of an API this broker implements.
        #[derive(Debug)]
        pub enum Request {
            /// Produce is applied in two steps (append now, answer when durable).
            Produce(ProduceRequest),
            /// Fetch reads the log only when its response is next to be written.
            Fetch(FetchRequest),
            $($variant($request),)*
        }

        fn decode_body(api_key: ApiKey, body: &mut Bytes, version: i16) -> anyhow::Result<Request> {
            match api_key {
                ApiKey::Produce => Ok(Request::Produce(Decodable::decode(body, version)?)),
                ApiKey::Fetch => Ok(Request::Fetch(Decodable::decode(body, version)?)),
                $(ApiKey::$variant => Ok(Request::$variant(Decodable::decode(body, version)?)),)*
                other => anyhow::bail!("{other:?} is not implemented"),
            }
        }

        async fn apply(ctx: &Context, header: RequestHeader, request: Request) -> Outgoing {
            match request {
                Request::Produce(request) => api::produce::handle(ctx, header, request),
                Request::Fetch(request) => api::fetch::deferred(ctx.clone(), header, request),
                $(Request::$variant(request) => {
                    let response = api::$module::handle(ctx, &header, request).await;
                    respond(&header, ApiKey::$variant, &response)
                })*
            }
        }
    };
}

requests! {
    ListOffsets(ListOffsetsRequest) => list_offsets,
    Metadata(MetadataRequest) => metadata,
    OffsetCommit(OffsetCommitRequest) => offset_commit,
    OffsetFetch(OffsetFetchRequest) => offset_fetch,
    FindCoordinator(FindCoordinatorRequest) => find_coordinator,
    JoinGroup(JoinGroupRequest) => join_group,
    Heartbeat(HeartbeatRequest) => heartbeat,
    LeaveGroup(LeaveGroupRequest) => leave_group,
    SyncGroup(SyncGroupRequest) => sync_group,
    DescribeGroups(DescribeGroupsRequest) => describe_groups,
    ListGroups(ListGroupsRequest) => list_groups,
    ApiVersions(ApiVersionsRequest) => api_versions,
    CreateTopics(CreateTopicsRequest) => create_topics,
    DeleteTopics(DeleteTopicsRequest) => delete_topics,
    InitProducerId(InitProducerIdRequest) => init_producer_id,
    DescribeConfigs(DescribeConfigsRequest) => describe_configs,
    DeleteGroups(DeleteGroupsRequest) => delete_groups,
    DescribeCluster(DescribeClusterRequest) => describe_cluster,
    DeleteRecords(DeleteRecordsRequest) => delete_records,
    AlterConfigs(AlterConfigsRequest) => alter_configs,
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest) => incremental_alter_configs,
    AddPartitionsToTxn(AddPartitionsToTxnRequest) => add_partitions_to_txn,
    AddOffsetsToTxn(AddOffsetsToTxnRequest) => add_offsets_to_txn,
    EndTxn(EndTxnRequest) => end_txn,
    TxnOffsetCommit(TxnOffsetCommitRequest) => txn_offset_commit,
    DescribeTransactions(DescribeTransactionsRequest) => describe_transactions,
    ListTransactions(ListTransactionsRequest) => list_transactions,
    DescribeProducers(DescribeProducersRequest) => describe_producers,
    WriteTxnMarkers(WriteTxnMarkersRequest) => write_txn_markers,
    CreatePartitions(CreatePartitionsRequest) => create_partitions,
    OffsetDelete(OffsetDeleteRequest) => offset_delete,
    DescribeLogDirs(DescribeLogDirsRequest) => describe_log_dirs,
    AlterReplicaLogDirs(AlterReplicaLogDirsRequest) => alter_replica_log_dirs,
    ElectLeaders(ElectLeadersRequest) => elect_leaders,
    DescribeTopicPartitions(DescribeTopicPartitionsRequest) => describe_topic_partitions,
}

/// Why a frame was not decoded, and what to send back.
#[derive(Debug)]
pub enum Rejected {
    /// Answer with this (an error frame or ApiVersions' v0 error body) and go on.
    Answer { bytes: Bytes, reason: String },
    /// The frame is malformed: close the connection.
    Close { reason: String },
}

/// Decode a whole request frame (without its length prefix). Never panics.
pub fn decode(frame: Bytes) -> Result<(RequestHeader, Request), Rejected> {
    if frame.len() < REQUEST_HEADER_BYTES_MIN {
        return Err(Rejected::Close {
            reason: format!("request of {} bytes is shorter than a header", frame.len()),
        });
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let answer = |reason: String| Rejected::Answer {
        bytes: error_frame(correlation_id, UNSUPPORTED_VERSION),
        reason,
    };
    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        return Err(answer(format!("unknown API key {api_key_raw}")));
    };
    let Some(range) = versions::supported(api_key) else {
        return Err(answer(format!("{api_key:?} is not implemented")));
    };
    if version < range.min || version > range.max {
        if api_key == ApiKey::ApiVersions {
            return Err(Rejected::Answer {
                bytes: api::api_versions::unsupported_version(correlation_id),
                reason: format!("ApiVersions v{version} is not supported"),
            });
        }
        return Err(answer(format!("{api_key:?} v{version} is not supported")));
    }
    if api_key == ApiKey::Produce && version < versions::PRODUCE_VERSION_MIN_DECODED {
        return Err(Rejected::Close {
            reason: format!("Produce v{version} (message format v0/v1) is not supported"),
        });
    }
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, api_key.request_header_version(version))
        .map_err(|e| Rejected::Close {
            reason: format!("malformed {api_key:?} v{version} request header: {e}"),
        })?;
    let request = decode_body(api_key, &mut body, version).map_err(|e| Rejected::Close {
        reason: format!("malformed {api_key:?} v{version} request: {e}"),
    })?;
    Ok((header, request))
}

pub async fn handle_frame(ctx: &Context, frame: Bytes) -> Outgoing {
    match decode(frame) {
        Ok((header, request)) => apply(ctx, header, request).await,
        Err(Rejected::Answer { bytes, reason }) => {
            tracing::warn!(peer = %ctx.peer, %reason, "request refused");
            Outgoing::Ready(bytes)
        }
        Err(Rejected::Close { reason }) => {
            tracing::warn!(peer = %ctx.peer, %reason, "closing connection");
            Outgoing::Close
        }
    }
}

/// Encode a response with its header and length prefix.
pub fn respond<T: Encodable>(header: &RequestHeader, api_key: ApiKey, response: &T) -> Outgoing {
    match encode_response(header, api_key, response) {
        Ok(bytes) => Outgoing::Ready(bytes),
        Err(e) => {
            tracing::error!(api = ?api_key, version = header.request_api_version, error = %e, "cannot encode response; closing connection");
            Outgoing::Close
        }
    }
}

pub fn encode_response<T: Encodable>(
    header: &RequestHeader,
    api_key: ApiKey,
    response: &T,
) -> anyhow::Result<Bytes> {
    let version = header.request_api_version;
    let header_version = api_key.response_header_version(version);
    let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
    let size = response_header.compute_size(header_version)? + response.compute_size(version)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(i32::try_from(size)?);
    response_header.encode(&mut buf, header_version)?;
    response.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

/// A response for a request we cannot answer in its own schema: a v0 header and an
/// error code, which is what Kafka sends for an unsupported ApiVersions request.
pub fn error_frame(correlation_id: i32, error_code: i16) -> Bytes {
    let mut buf = BytesMut::with_capacity(10);
    buf.put_i32(6);
    buf.put_i32(correlation_id);
    buf.put_i16(error_code);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(api_key: i16, version: i16, rest: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(api_key);
        b.put_i16(version);
        b.put_i32(7);
        b.extend_from_slice(rest);
        b.freeze()
    }

    #[test]
    fn an_unknown_api_is_answered_with_unsupported_version() {
        match decode(frame(999, 0, &[])) {
            Err(Rejected::Answer { bytes, .. }) => {
                assert_eq!(&bytes[..], &[0, 0, 0, 6, 0, 0, 0, 7, 0, 35]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_array_count_is_malformed_not_an_allocation() {
        // Metadata v1: client id null, then a topic array claiming i32::MAX entries.
        let mut rest = vec![0xff, 0xff];
        rest.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decode(frame(3, 1, &rest)),
            Err(Rejected::Close { .. })
        ));
    }

    #[test]
    fn short_and_truncated_frames_are_rejected() {
        assert!(matches!(
            decode(Bytes::from_static(&[0, 3])),
            Err(Rejected::Close { .. })
        ));
        assert!(matches!(
            decode(frame(3, 12, &[])),
            Err(Rejected::Close { .. })
        ));
        assert!(matches!(
            decode(frame(0, 1, &[])),
            Err(Rejected::Close { .. })
        ));
    }

    #[test]
    fn api_versions_at_a_future_version_gets_the_v0_error_body() {
        match decode(frame(18, 99, &[])) {
            Err(Rejected::Answer { bytes, .. }) => {
                // length, correlation id, then error code 35 in the v0 body.
                assert_eq!(&bytes[4..8], &7i32.to_be_bytes());
                assert_eq!(&bytes[8..10], &35i16.to_be_bytes());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_api_versions_request_decodes() {
        // v3 uses the flexible header v2: client id (nullable string), tagged fields; body:
        // compact strings for software name/version and tagged fields.
        let mut rest = vec![0xff, 0xff, 0];
        rest.extend_from_slice(&[2, b'x', 2, b'1', 0]);
        assert!(matches!(
            decode(frame(18, 3, &rest)),
            Ok((_, Request::ApiVersions(_)))
        ));
    }
}
