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
        }
    }
}
