//! Herald's HTTP front end (axum): `/health`, `/ready`, Prometheus `/metrics`, read-only
//! views of topics and consumer groups, and the OpenAPI document of all of it at
//! `/openapi.json`. It translates only: every figure comes from `herald-broker`.
//!
//! Errors are JSON `{"error": code, "message": text}` with a 4xx/5xx status, also for
//! unknown routes and wrong methods.
//!
//! The listener bounds its connections and how long a client may take to send a
//! request (see `server`), so slow or hostile clients cannot hold memory or sockets.
//! A TLS, AMQP or Kafka client that connects to it is logged as such and closed
//! (see `sniff`).

mod amqp;
mod body;
mod error;
mod metrics;
mod queues;
mod records;
mod routes;
mod server;
mod sniff;
mod streams;
mod tail;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use herald_broker::limits::CONNECTIONS_MAX_PER_IP_DEFAULT;
use herald_broker::{Broker, ConnectionGate};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use metrics::MetricsHook;
pub use routes::ApiDoc;
pub use server::HEADER_BYTES_MAX;

/// Largest request body the API accepts.
pub const BODY_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// Most records one publish request may carry.
pub const PUBLISH_RECORDS_MAX_DEFAULT: usize = 10_000;
/// Most records one read may return.
pub const READ_RECORDS_MAX_DEFAULT: usize = 10_000;
/// Bytes of stored batches one read step takes from the log.
pub const READ_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Most HTTP connections open at once.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// How long a request head may take to arrive whole.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// How long a request body may take to arrive whole, from its head.
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// How long a keep-alive connection may wait for its next request.
pub const KEEP_ALIVE_IDLE_MS_DEFAULT: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub body_bytes_max: usize,
    pub limits: HttpLimits,
    /// Most connections open at once; more are closed as they arrive.
    pub connections_max: usize,
    /// Most connections open at once from one client address.
    pub connections_max_per_ip: usize,
    /// A request head must arrive whole this long after its first byte (after the
    /// accept, for a connection's first request), else the connection is closed.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive whole this long after its head, else 408 and close.
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request in progress is closed after this long.
    pub keep_alive_idle_ms: u64,
    /// A response write that makes no progress this long closes the connection.
    pub send_timeout_ms: u64,
    /// Where Kafka is served (host:port), named in the log line when a Kafka client
    /// connects to the HTTP port; None when not known.
    pub kafka_address: Option<String>,
}

/// Bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub publish_records_max: usize,
    pub read_records_max: usize,
    pub read_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            publish_records_max: PUBLISH_RECORDS_MAX_DEFAULT,
            read_records_max: READ_RECORDS_MAX_DEFAULT,
            read_bytes_max: READ_BYTES_MAX_DEFAULT,
        }
    }
}

impl HttpConfig {
    pub fn new(listen: SocketAddr) -> HttpConfig {
        HttpConfig {
            listen,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            limits: HttpLimits::default(),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_max_per_ip: CONNECTIONS_MAX_PER_IP_DEFAULT,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            body_read_timeout_ms: BODY_READ_TIMEOUT_MS_DEFAULT,
            keep_alive_idle_ms: KEEP_ALIVE_IDLE_MS_DEFAULT,
            send_timeout_ms: herald_broker::limits::SEND_TIMEOUT_MS_DEFAULT,
            kafka_address: None,
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// Set once every listener is bound: `/ready` answers 200 from then on.
    pub ready: Arc<AtomicBool>,
    pub limits: Arc<HttpLimits>,
    /// Where the next keyless record without a partition goes (round robin).
    pub next_partition: Arc<AtomicU32>,
    /// Turns true when the server shuts down, so endless responses (SSE tails) end and
    /// graceful shutdown does not wait on them.
    pub shutdown: Arc<watch::Sender<bool>>,
    /// Latency histograms per HTTP method and route, shown by `/metrics`.
    pub http_latency: metrics::RouteLatency,
    /// Metrics kept elsewhere (the Kafka front end's), added to every scrape.
    pub metrics_hooks: Arc<Vec<MetricsHook>>,
}

impl AppState {
    pub fn new(broker: Arc<Broker>, limits: HttpLimits) -> AppState {
        AppState {
            broker,
            ready: Arc::new(AtomicBool::new(false)),
            limits: Arc::new(limits),
            next_partition: Arc::new(AtomicU32::new(0)),
            shutdown: Arc::new(watch::Sender::new(false)),
            http_latency: metrics::route_latency(),
            metrics_hooks: Arc::new(Vec::new()),
        }
    }
}

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    ready: Arc<AtomicBool>,
    shutdown: Arc<watch::Sender<bool>>,
    gate: Arc<ConnectionGate>,
    timeouts: server::Timeouts,
    connections: metrics::ConnectionMetrics,
    memory: server::BodyMemory,
    kafka_address: Option<Arc<str>>,
}

impl HttpServer {
    /// Bind the listener; `metrics_hooks` add other components' metrics to `/metrics`.
    pub async fn bind(
        config: &HttpConfig,
        broker: Arc<Broker>,
        metrics_hooks: Vec<MetricsHook>,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let connections = metrics::ConnectionMetrics::default();
        let mut hooks = metrics_hooks;
        let shown = connections.clone();
        hooks.push(Arc::new(move |registry| shown.register(registry)));
        let memory = server::BodyMemory {
            pools: broker.memory().clone(),
            body_bytes_max: config.body_bytes_max,
        };
        let mut state = AppState::new(broker, config.limits.clone());
        state.metrics_hooks = Arc::new(hooks);
        let ready = state.ready.clone();
        let shutdown = state.shutdown.clone();
        // A zero would make the listener refuse or close everything: at least 1.
        let ms = |v: u64| Duration::from_millis(v.max(1));
        Ok(HttpServer {
            listener,
            router: routes::router(state, config.body_bytes_max),
            ready,
            shutdown,
            gate: ConnectionGate::new(config.connections_max, config.connections_max_per_ip),
            timeouts: server::Timeouts {
                header_read: ms(config.header_read_timeout_ms),
                body_read: ms(config.body_read_timeout_ms),
                keep_alive_idle: ms(config.keep_alive_idle_ms),
                send: ms(config.send_timeout_ms),
            },
            connections,
            memory,
            kafka_address: config.kafka_address.as_deref().map(Arc::from),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Mark the broker ready (all listeners bound); `/ready` says so from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Serve until `shutdown` resolves; requests in progress then finish, live tails
    /// end and idle connections close.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(
            self.listener,
            self.router,
            server::Limits {
                gate: self.gate,
                timeouts: self.timeouts,
                metrics: self.connections,
                memory: self.memory,
                kafka_address: self.kafka_address,
            },
            self.shutdown,
            shutdown,
        )
        .await
    }
}

/// The router on its own, for tests that call it without a socket.
pub fn router(state: AppState, body_bytes_max: usize) -> Router {
    routes::router(state, body_bytes_max)
}
