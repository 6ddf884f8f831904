//! Errors as values. Every failure a caller can act on has its own variant; Kafka
//! error codes keep their protocol name (`UnknownTopicOrPartition`, ...) so a message
//! printed to a user can be looked up in Kafka's documentation.

use std::io;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Records that cannot be encoded are the caller's to fix.
impl From<herald_records::EncodeError> for Error {
    fn from(error: herald_records::EncodeError) -> Error {
        Error::InvalidArgument(error.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is the error's `source()`, shown by `{:#}` with anyhow.
    #[error("cannot connect to {addr}")]
    Connect { addr: String, source: io::Error },

    #[error("connection to {addr} failed: {reason}")]
    ConnectionClosed { addr: String, reason: String },

    #[error("{api:?} request to {addr} got no response within {timeout_ms} ms")]
    Timeout {
        addr: String,
        api: ApiKey,
        timeout_ms: u64,
    },

    #[error("broker at {addr} does not support {api:?} (client supports versions {client})")]
    UnsupportedApi {
        addr: String,
        api: ApiKey,
        client: String,
    },

    #[error("cannot encode {api:?} v{version} request: {message}")]
    Encode {
        api: ApiKey,
        version: i16,
        message: String,
    },

    #[error("cannot decode {api:?} v{version} response from {addr}: {message}")]
    Decode {
        addr: String,
        api: ApiKey,
        version: i16,
        message: String,
    },

    #[error("response frame of {bytes} bytes from {addr} exceeds the limit of {bytes_max} bytes")]
    FrameTooLarge {
        addr: String,
        bytes: usize,
        bytes_max: usize,
    },

    /// The broker answered with a Kafka error code. The broker's own message, when
    /// it sent one, already says what failed, so it stands alone; without one the
    /// context says what was asked.
    #[error("{}", kafka_display(context, *code, message.as_deref()))]
    Kafka {
        context: String,
        code: ResponseError,
        message: Option<String>,
    },

    #[error("invalid record batch in {topic}-{partition}: {message}")]
    Records {
        topic: String,
        partition: i32,
        message: String,
    },

    /// The broker's answer was well formed but not what the request asked for.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),

    /// The caller asked for something that cannot work (empty topic name, no partitions...).
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// Builds an error from a Kafka error code, or `None` when the code says success.
    pub fn from_code(code: i16, context: impl Into<String>, message: Option<&str>) -> Option<Self> {
        ResponseError::try_from_code(code).map(|code| Error::Kafka {
            context: context.into(),
            code,
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        })
    }

    /// The Kafka error code, when the broker sent one.
    pub fn kafka_code(&self) -> Option<ResponseError> {
        match self {
            Error::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying the same request again (after refreshing metadata) may succeed.
    /// Timeouts are not retriable here: the request may have taken effect.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka { code, .. } => code.is_retriable(),
            Error::ConnectionClosed { .. } | Error::Connect { .. } => true,
            _ => false,
        }
    }
}

fn kafka_display(context: &str, code: ResponseError, message: Option<&str>) -> String {
    match message {
        Some(message) => format!("{message} ({code})"),
        None => format!("{context}: {code}"),
    }
}

/// `Ok(())` for code 0, the Kafka error otherwise.
pub(crate) fn check(
    code: i16,
    context: impl FnOnce() -> String,
    message: Option<&str>,
) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    match Error::from_code(code, context(), message) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
