//! Herald's event store front end: KurrentDB's (EventStoreDB's) gRPC API, for its
//! clients (kurrentdbclient, the `eventsourcing` library, @kurrent/kurrentdb-client and
//! the others) unchanged. It translates gRPC calls into broker calls and owns nothing
//! the broker should own: stream revisions, indexes, deletes and subscriptions belong in
//! `herald_broker`, so the HTTP API gets the same semantics.
//!
//! Files: `proto.rs` (the code generated from `vendor/kurrentdb-protos`), `server.rs`
//! (accept loop through the connection gate, the HTTP/2 preface deadline, per-connection
//! limits), `caller.rs` (who makes each request), `features.rs` (the table of what is
//! implemented, which `ServerFeatures` answers from), `errors.rs` (the statuses Herald
//! answers with), `uuid.rs` (KurrentDB's two UUID encodings), and `service/`, one file
//! per gRPC service.
//!
//! `Gossip`, `ServerFeatures`, `Streams` and `PersistentSubscriptions` are real; every
//! other service of the protos (projections, operations, users, monitoring) is served
//! and answers `UNIMPLEMENTED` with a message naming it, so a client gets an error at
//! once, never a hang.

pub mod caller;
pub mod errors;
pub mod features;
pub mod proto;
pub mod server;
pub mod service;
pub mod uuid;

use std::net::SocketAddr;

pub use server::EventStoreServer;

/// Where `herald serve` listens for KurrentDB's clients unless told otherwise: its
/// port, on loopback only.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:2113";

/// Largest gRPC message read or written: gRPC's own default and what clients accept
/// by default, and four times KurrentDB's default largest append (1 MiB).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 4 << 20;
/// Concurrent HTTP/2 streams (calls) on one connection: KurrentDB's (Kestrel's)
/// default. A client multiplexes all its calls, subscriptions included, over one
/// connection, so this is also how many subscriptions one client can hold open.
pub const STREAMS_PER_CONNECTION_MAX_DEFAULT: u32 = 100;
/// How long a new connection has to send the HTTP/2 preface.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// HTTP/2 PING interval on a connection, and how long its answer may take before the
/// connection is closed: KurrentDB's defaults (`KeepAliveInterval`, `KeepAliveTimeout`).
pub const KEEP_ALIVE_INTERVAL_MS_DEFAULT: u64 = 10_000;
pub const KEEP_ALIVE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Largest block of request headers (HPACK-decoded) one call may send.
pub const HEADER_LIST_BYTES_MAX: u32 = 16 << 10;

#[derive(Debug, Clone)]
pub struct EventStoreConfig {
    pub listen: SocketAddr,
    pub connections_max: usize,
    pub connections_max_per_ip: usize,
    pub message_bytes_max: usize,
    pub streams_per_connection_max: u32,
    pub handshake_timeout_ms: u64,
    pub keep_alive_interval_ms: u64,
    pub keep_alive_timeout_ms: u64,
}

impl EventStoreConfig {
    pub fn new(listen: SocketAddr) -> EventStoreConfig {
        EventStoreConfig {
            listen,
            connections_max: 10_000,
            connections_max_per_ip: herald_broker::limits::CONNECTIONS_MAX_PER_IP_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            streams_per_connection_max: STREAMS_PER_CONNECTION_MAX_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            keep_alive_interval_ms: KEEP_ALIVE_INTERVAL_MS_DEFAULT,
            keep_alive_timeout_ms: KEEP_ALIVE_TIMEOUT_MS_DEFAULT,
        }
    }
}
