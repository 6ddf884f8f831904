//! Herald's HTTP front end (axum): `/health`, `/ready`, Prometheus `/metrics`, read-only
//! views of topics and consumer groups, and the OpenAPI document of all of it at
//! `/openapi.json`. It translates only: every figure comes from `herald-broker`.
//!
//! Errors are JSON `{"error": code, "message": text}` with a 4xx/5xx status, also for
//! unknown routes and wrong methods.

mod body;
mod error;
mod metrics;
mod queues;
mod records;
mod routes;
mod tail;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use axum::Router;
use herald_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use metrics::MetricsHook;
pub use routes::ApiDoc;

/// Largest request body the API accepts.
pub const BODY_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// Most records one publish request may carry.
pub const PUBLISH_RECORDS_MAX_DEFAULT: usize = 10_000;
/// Most records one read may return.
pub const READ_RECORDS_MAX_DEFAULT: usize = 10_000;
/// Bytes of stored batches one read step takes from the log.
pub const READ_BYTES_MAX_DEFAULT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub body_bytes_max: usize,
    pub limits: HttpLimits,
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
}

impl HttpServer {
    /// Bind the listener; `metrics_hooks` add other components' metrics to `/metrics`.
    pub async fn bind(
        config: &HttpConfig,
        broker: Arc<Broker>,
        metrics_hooks: Vec<MetricsHook>,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let mut state = AppState::new(broker, config.limits.clone());
        state.metrics_hooks = Arc::new(metrics_hooks);
        let ready = state.ready.clone();
        let shutdown = state.shutdown.clone();
        Ok(HttpServer {
            listener,
            router: routes::router(state, config.body_bytes_max),
            ready,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Mark the broker ready (all listeners bound); `/ready` says so from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Serve until `shutdown` resolves; requests in progress then finish and live tails
    /// end.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = self.shutdown;
        let shutdown = async move {
            shutdown.await;
            stop.send_replace(true);
        };
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The router on its own, for tests that call it without a socket.
pub fn router(state: AppState, body_bytes_max: usize) -> Router {
    routes::router(state, body_bytes_max)
}
