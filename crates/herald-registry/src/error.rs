//! Confluent Schema Registry's error shape and codes: `{"error_code": 40401, "message":
//! "Subject 'x' not found."}`. The HTTP status is the code's first three digits (40401
//! is a 404, 42201 a 422, 50001 a 500); codes of three digits are the status itself.
//! Clients (confluent-kafka, the Java client, @kafkajs/confluent-schema-registry) branch
//! on `error_code`, so codes and statuses follow Confluent's exactly; messages follow
//! Confluent's wording where clients or users are known to match on them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const SUBJECT_NOT_FOUND: u32 = 40401;
pub const VERSION_NOT_FOUND: u32 = 40402;
pub const SCHEMA_NOT_FOUND: u32 = 40403;
pub const SUBJECT_SOFT_DELETED: u32 = 40404;
pub const SUBJECT_NOT_SOFT_DELETED: u32 = 40405;
pub const VERSION_SOFT_DELETED: u32 = 40406;
pub const VERSION_NOT_SOFT_DELETED: u32 = 40407;
pub const SUBJECT_COMPATIBILITY_NOT_CONFIGURED: u32 = 40408;
pub const SUBJECT_MODE_NOT_CONFIGURED: u32 = 40409;
pub const INCOMPATIBLE_SCHEMA: u32 = 409;
pub const INVALID_SCHEMA: u32 = 42201;
pub const INVALID_VERSION: u32 = 42202;
pub const INVALID_COMPATIBILITY_LEVEL: u32 = 42203;
pub const INVALID_MODE: u32 = 42204;
pub const OPERATION_NOT_PERMITTED: u32 = 42205;
pub const REFERENCE_EXISTS: u32 = 42206;
pub const STORE_ERROR: u32 = 50001;

/// One refused request: Confluent's code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    pub error_code: u32,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, RegistryError>;

impl RegistryError {
    pub fn new(error_code: u32, message: impl Into<String>) -> RegistryError {
        RegistryError {
            error_code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        let status = if self.error_code < 1000 {
            self.error_code
        } else {
            self.error_code / 100
        };
        u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn subject_not_found(subject: &str) -> RegistryError {
        RegistryError::new(SUBJECT_NOT_FOUND, format!("Subject '{subject}' not found."))
    }

    pub fn version_not_found(version: u32) -> RegistryError {
        RegistryError::new(VERSION_NOT_FOUND, format!("Version {version} not found."))
    }

    pub fn schema_not_found() -> RegistryError {
        RegistryError::new(SCHEMA_NOT_FOUND, "Schema not found")
    }

    pub fn schema_id_not_found(id: u32) -> RegistryError {
        RegistryError::new(SCHEMA_NOT_FOUND, format!("Schema {id} not found"))
    }

    pub fn subject_soft_deleted(subject: &str) -> RegistryError {
        RegistryError::new(
            SUBJECT_SOFT_DELETED,
            format!(
                "Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    pub fn subject_not_soft_deleted(subject: &str) -> RegistryError {
        RegistryError::new(
            SUBJECT_NOT_SOFT_DELETED,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }

    pub fn version_soft_deleted(subject: &str, version: u32) -> RegistryError {
        RegistryError::new(
            VERSION_SOFT_DELETED,
            format!(
                "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    pub fn version_not_soft_deleted(subject: &str, version: u32) -> RegistryError {
        RegistryError::new(
            VERSION_NOT_SOFT_DELETED,
            format!(
                "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
            ),
        )
    }

    pub fn invalid_schema(why: impl std::fmt::Display) -> RegistryError {
        RegistryError::new(INVALID_SCHEMA, format!("Invalid schema: {why}"))
    }

    pub fn invalid_version(text: &str) -> RegistryError {
        RegistryError::new(
            INVALID_VERSION,
            format!(
                "The specified version '{text}' is not a valid version id. Allowed values are \
                 between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }

    pub fn invalid_compatibility_level() -> RegistryError {
        RegistryError::new(
            INVALID_COMPATIBILITY_LEVEL,
            "Invalid compatibility level. Valid values are none, backward, forward, full, \
             backward_transitive, forward_transitive, and full_transitive",
        )
    }

    pub fn invalid_mode(text: &str) -> RegistryError {
        RegistryError::new(
            INVALID_MODE,
            format!(
                "Invalid mode {text}. Valid values are READWRITE, READONLY, READONLY_OVERRIDE, IMPORT"
            ),
        )
    }

    pub fn not_permitted(message: impl Into<String>) -> RegistryError {
        RegistryError::new(OPERATION_NOT_PERMITTED, message)
    }

    pub fn store(e: impl std::fmt::Display) -> RegistryError {
        RegistryError::new(
            STORE_ERROR,
            format!("Error while storing the schema registry's state: {e}"),
        )
    }

    /// A request error of the HTTP layer (unknown route, bad body): the status as code.
    pub fn http(status: StatusCode, message: impl Into<String>) -> RegistryError {
        RegistryError::new(u32::from(status.as_u16()), message)
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (error code {})", self.message, self.error_code)
    }
}

impl std::error::Error for RegistryError {}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error_code: u32,
    message: &'a str,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_code: self.error_code,
            message: &self.message,
        };
        crate::http::json_response(self.status(), &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_first_three_digits_of_the_code() {
        for (code, status) in [
            (SUBJECT_NOT_FOUND, 404),
            (VERSION_SOFT_DELETED, 404),
            (INCOMPATIBLE_SCHEMA, 409),
            (INVALID_SCHEMA, 422),
            (REFERENCE_EXISTS, 422),
            (STORE_ERROR, 500),
            (415, 415),
        ] {
            assert_eq!(RegistryError::new(code, "x").status().as_u16(), status);
        }
    }
}
