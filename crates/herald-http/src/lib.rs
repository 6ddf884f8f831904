//! Herald's HTTP front end (axum): `/health`, `/ready`, Prometheus `/metrics`, read-only
//! views of topics and consumer groups, and the OpenAPI document of all of it at
//! `/openapi.json`. It translates only: every figure comes from `herald-broker`.
//!
//! Errors are JSON `{"error": code, "message": text}` with a 4xx/5xx status, also for
//! unknown routes and wrong methods.

mod error;
mod metrics;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use herald_broker::Broker;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use routes::ApiDoc;

/// Largest request body the API accepts (the read-only API takes none today).
pub const BODY_BYTES_MAX_DEFAULT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub body_bytes_max: usize,
}

impl HttpConfig {
    pub fn new(listen: SocketAddr) -> HttpConfig {
        HttpConfig {
            listen,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// Set once every listener is bound: `/ready` answers 200 from then on.
    pub ready: Arc<AtomicBool>,
}

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    ready: Arc<AtomicBool>,
}

impl HttpServer {
    pub async fn bind(config: &HttpConfig, broker: Arc<Broker>) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let ready = Arc::new(AtomicBool::new(false));
        let state = AppState {
            broker,
            ready: ready.clone(),
        };
        Ok(HttpServer {
            listener,
            router: routes::router(state, config.body_bytes_max),
            ready,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Mark the broker ready (all listeners bound); `/ready` says so from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Serve until `shutdown` resolves; requests in progress then finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The router on its own, for tests that call it without a socket.
pub fn router(state: AppState, body_bytes_max: usize) -> Router {
    routes::router(state, body_bytes_max)
}
