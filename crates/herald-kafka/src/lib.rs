//! The Kafka front end: accepts connections, frames and decodes requests with the
//! `kafka-protocol` crate, calls the broker, and encodes responses. It translates only:
//! every decision about data lives in `herald-broker`.
//!
//! Layout (one concept per file): `server` accepts and limits connections, `connection`
//! frames a socket and keeps responses in request order, `dispatch` routes a decoded
//! request to its handler in `api/` (one file per Kafka API), `versions` is the table of
//! what is implemented, `errors` maps broker errors onto Kafka codes, `metrics` is
//! request latency per API and the connection counts.

pub mod api;
pub mod connection;
pub mod dispatch;
pub mod errors;
pub mod metrics;
pub mod server;
pub mod versions;

use std::net::SocketAddr;

pub use metrics::KafkaMetrics;
pub use server::KafkaServer;

/// Kafka's default `connections.max.idle.ms`: 10 minutes.
pub const CONNECTIONS_MAX_IDLE_MS_DEFAULT: u64 = 600_000;
/// How long a response may wait for a socket that does not drain.
pub const SEND_TIMEOUT_MS_DEFAULT: u64 = herald_broker::limits::SEND_TIMEOUT_MS_DEFAULT;

/// Kafka's `max.request.partition.size.limit`: most partitions one DescribeTopicPartitions
/// answer lists (a client pages through the rest with its cursor).
pub const DESCRIBE_TOPIC_PARTITIONS_MAX_DEFAULT: usize = 2_000;

/// How long the bytes of one request may take to arrive.
pub const REQUEST_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Settings of the Kafka listener. Every limit is named and configurable.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub listen: SocketAddr,
    /// host:port returned in Metadata and FindCoordinator; defaults to the bound address.
    pub advertised_host: String,
    pub advertised_port: i32,
    /// Largest request frame accepted; a bigger length prefix closes the connection.
    pub request_bytes_max: usize,
    pub connections_max: usize,
    /// Upper bound on a fetch response, whatever the client asks for.
    pub fetch_bytes_max: usize,
    /// Requests read ahead of their responses on one connection (pipelining).
    pub in_flight_requests_max: usize,
    /// Upper bound on how long a fetch may long-poll.
    pub fetch_wait_ms_max: u64,
    /// Connections one client address may hold at once.
    pub connections_max_per_ip: usize,
    /// A connection with nothing in flight that sends nothing for this long is closed
    /// (Kafka's `connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// A response that makes no progress into the socket for this long closes the
    /// connection (a client that stopped reading; RabbitMQ's `send_timeout`).
    pub send_timeout_ms: u64,
    /// A request whose bytes do not all arrive this soon after its length closes the
    /// connection (its memory is reserved meanwhile).
    pub request_read_timeout_ms: u64,
    /// Where HTTP is served (host:port), named in the answer to an HTTP client that
    /// connects to the Kafka port; None when HTTP is off.
    pub http_address: Option<String>,
    /// Where AMQP is served (host:port), named in the log line for an AMQP client
    /// that connects to the Kafka port; None when AMQP is off.
    pub amqp_address: Option<String>,
    /// Most partitions one DescribeTopicPartitions answer lists, whatever the client
    /// asks for (Kafka's `max.request.partition.size.limit`).
    pub describe_topic_partitions_max: usize,
}

impl KafkaConfig {
    pub fn new(listen: SocketAddr) -> KafkaConfig {
        KafkaConfig {
            listen,
            advertised_host: listen.ip().to_string(),
            advertised_port: i32::from(listen.port()),
            request_bytes_max: 100 * 1024 * 1024,
            connections_max: 10_000,
            fetch_bytes_max: 55 * 1024 * 1024,
            in_flight_requests_max: 256,
            fetch_wait_ms_max: 30_000,
            connections_max_per_ip: herald_broker::limits::CONNECTIONS_MAX_PER_IP_DEFAULT,
            connections_max_idle_ms: CONNECTIONS_MAX_IDLE_MS_DEFAULT,
            send_timeout_ms: SEND_TIMEOUT_MS_DEFAULT,
            request_read_timeout_ms: REQUEST_READ_TIMEOUT_MS_DEFAULT,
            http_address: None,
            amqp_address: None,
            describe_topic_partitions_max: DESCRIBE_TOPIC_PARTITIONS_MAX_DEFAULT,
        }
    }
}
