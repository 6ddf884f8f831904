//! Accept loop and connection serving on hyper's HTTP/1 server, with the listener's
//! limits: connections pass the broker's `ConnectionGate` (`connections_max` in all,
//! `connections_max_per_ip` from one address), a request head must arrive within
//! `header_read_timeout_ms` (hyper's timer, which also closes a keep-alive connection
//! idle that long; clients reconnect), a request must be read and answered within
//! `request_timeout_ms` (408), and a body's bytes are reserved from the broker's request
//! pool before it is read. `serve_connection` takes any byte stream, so tests (and a
//! TLS layer later) need no socket.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use herald_broker::{ConnectionGate, MemoryPools};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::RegistryError;

/// Largest request head (and read buffer) of one connection.
pub const HEADER_BYTES_MAX: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_read: Duration,
    pub request: Duration,
    pub request_bytes_max: usize,
    pub memory: MemoryPools,
}

/// Accept until `shutdown` resolves; then connections finish the request in progress
/// and close, and this returns when all have.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    gate: Arc<ConnectionGate>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, alive_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (socket, _peer, permit) = tokio::select! {
            accepted = gate.accept(&listener, "schema registry", || {}) => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let limits = limits.clone();
        let stop = stop_rx.clone();
        let alive = alive_rx.clone();
        tokio::spawn(async move {
            serve_connection(socket, router, limits, stop).await;
            drop(permit);
            drop(alive);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_rx);
    alive_tx.closed().await;
}

/// Serve HTTP/1 requests from `io` until the client closes, a timeout fires, or `stop`
/// turns true (then the request in progress finishes first).
pub async fn serve_connection<S>(
    io: S,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_read = limits.header_read;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        handle(router.clone(), request, limits.clone())
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Some(header_read))
        .max_buf_size(HEADER_BYTES_MAX);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "schema registry connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn handle(
    router: Router,
    request: Request<Incoming>,
    limits: ConnectionLimits,
) -> Result<axum::response::Response, std::convert::Infallible> {
    // An announced body over the limit is refused before a byte of it is read.
    if request
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n > limits.request_bytes_max as u64)
    {
        return Ok(RegistryError::http(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body is larger than registry_request_bytes_max ({} bytes)",
                limits.request_bytes_max
            ),
        )
        .into_response());
    }
    let body_bytes = match request.body().size_hint().exact() {
        Some(n) => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(limits.request_bytes_max),
        None => limits.request_bytes_max,
    };
    let reservation = if body_bytes > 0 {
        Some(limits.memory.requests.reserve(body_bytes).await)
    } else {
        None
    };
    let mut router = router;
    let call = tower_service::Service::call(&mut router, request);
    let response = match tokio::time::timeout(limits.request, call).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            let ms = limits.request.as_millis() as u64;
            RegistryError::http(
                StatusCode::REQUEST_TIMEOUT,
                format!("The request was not read and answered within {ms} ms"),
            )
            .into_response()
        }
    };
    drop(reservation);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The listener's serving works over any byte stream; bad input is a 4xx JSON error.
    #[tokio::test]
    async fn serves_any_byte_stream_and_answers_bad_input_with_4xx() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(herald_meta::MetaStore::open(&dir.path().join("meta.redb")).unwrap());
        let registry =
            Arc::new(crate::Registry::open(meta, crate::RegistryLimits::default()).unwrap());
        let limits = ConnectionLimits {
            header_read: Duration::from_secs(5),
            request: Duration::from_secs(5),
            request_bytes_max: 1024,
            memory: MemoryPools::new(1 << 20),
        };
        let requests: &[(&str, &str)] = &[
            ("GET /subjects HTTP/1.1\r\nhost: x\r\n\r\n", "HTTP/1.1 200"),
            (
                "POST /subjects/s/versions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n{\"a\":",
                "HTTP/1.1 400",
            ),
            (
                "POST /subjects/s/versions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2000\r\n\r\n",
                "HTTP/1.1 413",
            ),
            (
                "GET /schemas/ids/99999999999 HTTP/1.1\r\nhost: x\r\n\r\n",
                "HTTP/1.1 404",
            ),
            (
                "GET /subjects/%ff/versions HTTP/1.1\r\nhost: x\r\n\r\n",
                "HTTP/1.1 4",
            ),
        ];
        for (request, expected) in requests {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (_stop_tx, stop) = watch::channel(false);
            let task = tokio::spawn(serve_connection(
                server,
                crate::http::router(registry.clone(), limits.request_bytes_max),
                limits.clone(),
                stop,
            ));
            let (mut read, mut write) = tokio::io::split(client);
            write.write_all(request.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with(expected), "{request:?} -> {text}");
            if !text.starts_with("HTTP/1.1 200") {
                assert!(text.contains("\"error_code\""), "{text}");
            }
            drop(write);
            drop(read);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
