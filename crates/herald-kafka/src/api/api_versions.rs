//! ApiVersions: what this broker implements. A request at a version we do not know gets
//! UNSUPPORTED_VERSION with a v0 body listing our ranges, so the client can retry at one.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader};

use crate::dispatch::{Context, encode_response};
use crate::versions::SUPPORTED;

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect()
}

pub async fn handle(
    _ctx: &Context,
    _header: &RequestHeader,
    _request: ApiVersionsRequest,
) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(api_keys())
}

/// The v0-format answer to an ApiVersions request at a version we do not know.
pub fn unsupported_version(correlation_id: i32) -> bytes::Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(0)
        .with_correlation_id(correlation_id);
    let response = ApiVersionsResponse::default()
        .with_error_code(kafka_protocol::ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys());
    encode_response(&header, ApiKey::ApiVersions, &response)
        .unwrap_or_else(|_| crate::dispatch::error_frame(correlation_id, response.error_code))
}
