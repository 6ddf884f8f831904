//! The JSON request body extractor every route uses. Unlike axum's `Json`, it takes only
//! a JSON *object* (serde would also fill a struct from an array, `[null, null]`), and its
//! rejections are the API's own JSON errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body that must be a JSON object sent as `application/json` (or `+json`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with content-type application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            let status = e.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "invalid_body"
            };
            ApiError::new(status, code, e.body_text())
        })?;
        parse_object(&bytes).map(JsonBody)
    }
}

/// `bytes` as a `T`, if they are a JSON object; 400 `invalid_json` saying why not.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", m);
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(invalid("the body must be a JSON object".into())),
        None => return Err(invalid("the body is empty; expected a JSON object".into())),
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: Option<u8>,
        b: Option<u8>,
    }

    #[test]
    fn only_objects_are_bodies() {
        assert!(parse_object::<Two>(b" {\"a\": 1}").is_ok());
        for bad in [
            &b"[null, null]"[..],
            b"null",
            b"",
            b"  ",
            b"{\"a\": \"x\"}",
            b"{",
        ] {
            let e = parse_object::<Two>(bad).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_json")
            );
        }
    }
}
