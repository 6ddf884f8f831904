//! Route one request frame to its handler and encode the response.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use herald_broker::Broker;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::KafkaConfig;
use crate::api;
use crate::connection::Outgoing;
use crate::versions;

/// What every handler may use: the broker, listener settings, who is asking.
pub struct Context {
    pub broker: Arc<Broker>,
    pub config: Arc<KafkaConfig>,
    pub peer: SocketAddr,
}

const UNSUPPORTED_VERSION: i16 = 35;

pub async fn handle_frame(ctx: &Context, frame: Bytes) -> Outgoing {
    // The caller guarantees at least 8 bytes.
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let peer = ctx.peer;

    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        tracing::warn!(%peer, api_key = api_key_raw, "unknown API key");
        return Outgoing::Ready(error_frame(correlation_id, UNSUPPORTED_VERSION));
    };
    let Some(range) = versions::supported(api_key) else {
        tracing::warn!(%peer, api = ?api_key, version, "API not implemented");
        return Outgoing::Ready(error_frame(correlation_id, UNSUPPORTED_VERSION));
    };
    if version < range.min || version > range.max {
        if api_key == ApiKey::ApiVersions {
            return api::api_versions::unsupported_version(correlation_id);
        }
        tracing::warn!(%peer, api = ?api_key, version, "unsupported API version");
        return Outgoing::Ready(error_frame(correlation_id, UNSUPPORTED_VERSION));
    }
    if api_key == ApiKey::Produce && version < versions::PRODUCE_VERSION_MIN_DECODED {
        tracing::warn!(%peer, version, "closing connection: Produce v0-v2 (message format v0/v1) is not supported");
        return Outgoing::Close;
    }

    let mut body = frame;
    let header = match RequestHeader::decode(&mut body, api_key.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%peer, api = ?api_key, version, error = %e, "closing connection: malformed request header");
            return Outgoing::Close;
        }
    };

    macro_rules! call {
        ($module:ident) => {{
            let request = match Decodable::decode(&mut body, version) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%peer, api = ?api_key, version, error = %e, "closing connection: malformed request");
                    return Outgoing::Close;
                }
            };
            let response = api::$module::handle(ctx, &header, request).await;
            respond(&header, api_key, &response)
        }};
    }

    match api_key {
        ApiKey::Produce => {
            let request = match Decodable::decode(&mut body, version) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%peer, version, error = %e, "closing connection: malformed produce request");
                    return Outgoing::Close;
                }
            };
            api::produce::handle(ctx, header, request)
        }
        ApiKey::Fetch => call!(fetch),
        ApiKey::ListOffsets => call!(list_offsets),
        ApiKey::Metadata => call!(metadata),
        ApiKey::OffsetCommit => call!(offset_commit),
        ApiKey::OffsetFetch => call!(offset_fetch),
        ApiKey::FindCoordinator => call!(find_coordinator),
        ApiKey::JoinGroup => call!(join_group),
        ApiKey::Heartbeat => call!(heartbeat),
        ApiKey::LeaveGroup => call!(leave_group),
        ApiKey::SyncGroup => call!(sync_group),
        ApiKey::DescribeGroups => call!(describe_groups),
        ApiKey::ListGroups => call!(list_groups),
        ApiKey::ApiVersions => call!(api_versions),
        ApiKey::CreateTopics => call!(create_topics),
        ApiKey::DeleteTopics => call!(delete_topics),
        ApiKey::InitProducerId => call!(init_producer_id),
        ApiKey::DescribeConfigs => call!(describe_configs),
        ApiKey::DeleteGroups => call!(delete_groups),
        ApiKey::DescribeCluster => call!(describe_cluster),
        other => {
            tracing::warn!(%peer, api = ?other, "API not implemented");
            Outgoing::Ready(error_frame(correlation_id, UNSUPPORTED_VERSION))
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
