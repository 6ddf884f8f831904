//! Herald's schema registry: Confluent Schema Registry's REST API, served by the broker
//! binary on its own listener (default 127.0.0.1:8081), so `schema.registry.url`
//! settings of confluent-kafka, the Java client or @kafkajs/confluent-schema-registry
//! work unchanged.
//!
//! - `registry.rs`: subjects, versions, ids, configs and modes, kept in memory and
//!   written through to the meta store (`herald-meta`'s registry tables);
//! - `schema.rs`, `avro.rs`: schemas and their formats (parsed by `apache-avro`), and
//!   identity (the normalised text that decides whether two registrations are one schema);
//! - `compat/`: the compatibility levels (`mod.rs`) and each format's rules (`avro.rs`);
//! - `http.rs`: the routes; `error.rs`: Confluent's error codes; `server.rs`: the
//!   listener and its limits.

pub mod avro;
pub mod compat;
pub mod error;
pub mod http;
pub mod json;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod server;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_broker::limits::CONNECTIONS_MAX_PER_IP_DEFAULT;
use herald_broker::{Broker, ConnectionGate};
use tokio::net::TcpListener;

pub use error::RegistryError;
pub use registry::{Registry, RegistryLimits, SCHEMA_BYTES_MAX_DEFAULT};

/// Default listener, Confluent Schema Registry's port.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8081";
/// Largest request body by default.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Most registry connections open at once by default.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// How long a request head may take, and a keep-alive connection may idle.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// How long a request may take to be read and answered.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub listen: SocketAddr,
    /// Largest request body; more is 413.
    pub request_bytes_max: usize,
    /// Largest schema text; more is 42201.
    pub schema_bytes_max: usize,
    pub connections_max: usize,
    pub connections_max_per_ip: usize,
    pub header_read_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

impl RegistryConfig {
    pub fn new(listen: SocketAddr) -> RegistryConfig {
        RegistryConfig {
            listen,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            schema_bytes_max: SCHEMA_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_max_per_ip: CONNECTIONS_MAX_PER_IP_DEFAULT,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
        }
    }
}

pub struct RegistryServer {
    listener: TcpListener,
    router: axum::Router,
    gate: Arc<ConnectionGate>,
    limits: server::ConnectionLimits,
    registry: Arc<Registry>,
}

impl RegistryServer {
    /// Load the registry from the broker's meta store and bind the listener.
    pub async fn bind(
        config: &RegistryConfig,
        broker: Arc<Broker>,
    ) -> std::io::Result<RegistryServer> {
        let limits = RegistryLimits {
            schema_bytes_max: config.schema_bytes_max,
        };
        let registry =
            Arc::new(Registry::open(broker.meta_store(), limits).map_err(std::io::Error::other)?);
        let listener = TcpListener::bind(config.listen).await?;
        let ms = |v: u64| Duration::from_millis(v.max(1));
        Ok(RegistryServer {
            listener,
            router: http::router(registry.clone(), config.request_bytes_max),
            gate: ConnectionGate::new(config.connections_max, config.connections_max_per_ip),
            limits: server::ConnectionLimits {
                header_read: ms(config.header_read_timeout_ms),
                request: ms(config.request_timeout_ms),
                request_bytes_max: config.request_bytes_max,
                memory: broker.memory().clone(),
            },
            registry,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The registry itself (for produce-time checks and tests).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Serve until `shutdown` resolves and open connections have finished.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        server::serve(self.listener, self.router, self.gate, self.limits, shutdown).await
    }
}
