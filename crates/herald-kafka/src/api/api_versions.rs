//! ApiVersions: what this broker implements. A request at a version we do not know gets
//! UNSUPPORTED_VERSION with a v0 body listing our ranges, so the client can retry at one.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader};

use crate::connection::Outgoing;
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

pub fn unsupported_version(correlation_id: i32) -> Outgoing {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(0)
        .with_correlation_id(correlation_id);
    let response = ApiVersionsResponse::default()
        .with_error_code(kafka_protocol::ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys());
    match encode_response(&header, ApiKey::ApiVersions, &response) {
        Ok(bytes) => Outgoing::Ready(bytes),
        Err(_) => Outgoing::Close,
    }
}
