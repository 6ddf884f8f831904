//! Accept loop and per-connection serving. Connections are accepted here, through the
//! listener's `ConnectionGate` (`connections_max`, `connections_max_per_ip`), and each
//! is handed as a plain byte stream to hyper's HTTP/2 server, so TLS can wrap the
//! stream later without touching the services.
//!
//! Insecure mode speaks HTTP/2 with prior knowledge (h2c), what the clients use with
//! `tls=false`. A connection must send the HTTP/2 preface within
//! `handshake_timeout_ms` (a silent client holds nothing for long); something else
//! (TLS, HTTP/1) is logged and closed. After that, hyper bounds a connection: at most
//! `streams_per_connection_max` calls at once, each message at most
//! `message_bytes_max` (tonic), request headers at most `HEADER_LIST_BYTES_MAX`, and
//! HTTP/2 PINGs every `keep_alive_interval_ms` close a peer that stops answering
//! within `keep_alive_timeout_ms`; flow control bounds what a client that does not
//! read can make Herald buffer.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_broker::{Broker, ConnectionGate};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tonic::codegen::{Service, http};
use tonic::service::Routes;

use crate::EventStoreConfig;
use crate::caller::Caller;
use crate::service::{self, NodeInfo};

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct EventStoreServer {
    listener: TcpListener,
    pub config: Arc<EventStoreConfig>,
    routes: Routes,
    /// Kept for services that are bound later (persistent subscriptions).
    _broker: Arc<Broker>,
}

impl EventStoreServer {
    pub async fn bind(
        mut config: EventStoreConfig,
        broker: Arc<Broker>,
    ) -> std::io::Result<EventStoreServer> {
        let listener = TcpListener::bind(config.listen).await?;
        config.listen = listener.local_addr()?;
        let node = NodeInfo {
            listen: config.listen,
            instance_id: ::uuid::Uuid::new_v4(),
        };
        let routes = service::routes(node, broker.clone(), config.message_bytes_max);
        Ok(EventStoreServer {
            listener,
            config: Arc::new(config),
            routes,
            _broker: broker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// Serve until the task is dropped or aborted.
    pub async fn run(self) {
        let gate = ConnectionGate::new(
            self.config.connections_max,
            self.config.connections_max_per_ip,
        );
        loop {
            let (socket, peer, permit) = gate.accept(&self.listener, "event store", || {}).await;
            let config = self.config.clone();
            let routes = self.routes.clone();
            tokio::spawn(async move {
                serve_connection(socket, peer, &config, routes).await;
                drop(permit);
            });
        }
    }
}

/// Serve one connection (any byte stream) until it closes.
pub async fn serve_connection<S>(
    mut io: S,
    peer: SocketAddr,
    config: &EventStoreConfig,
    routes: Routes,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut preface = [0u8; PREFACE.len()];
    let deadline = Duration::from_millis(config.handshake_timeout_ms);
    match tokio::time::timeout(deadline, io.read_exact(&mut preface)).await {
        Err(_) => {
            tracing::debug!(%peer, "event store connection closed: no HTTP/2 preface within {deadline:?}");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "event store connection closed before its HTTP/2 preface");
            return;
        }
        Ok(Ok(_)) if &preface != PREFACE => {
            tracing::warn!(%peer, "event store connection closed: {}", not_h2c(&preface));
            return;
        }
        Ok(Ok(_)) => {}
    }
    let io = TokioIo::new(Replayed {
        prefix: PREFACE,
        at: 0,
        inner: io,
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.streams_per_connection_max)
        .max_header_list_size(crate::HEADER_LIST_BYTES_MAX)
        .keep_alive_interval(Some(Duration::from_millis(config.keep_alive_interval_ms)))
        .keep_alive_timeout(Duration::from_millis(config.keep_alive_timeout_ms));
    let service =
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            let caller = Caller::of(&request, peer);
            request.extensions_mut().insert(caller);
            // `Routes` (an axum router) is always ready: no poll_ready needed.
            let mut routes = routes.clone();
            async move { routes.call(request).await }
        });
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!(%peer, error = %e, "event store connection ended with an error");
    }
}

/// Why the first bytes are not an h2c client, for the log line.
fn not_h2c(first: &[u8]) -> &'static str {
    match first {
        [0x16, 0x03, ..] => "TLS is not enabled on this listener (use tls=false)",
        [b'A'..=b'Z', ..] if first.windows(5).any(|w| w == b"HTTP/") => {
            "an HTTP/1 request; this port speaks gRPC over HTTP/2"
        }
        _ => "it did not start with the HTTP/2 preface",
    }
}

/// A stream whose first bytes were read already: they are handed out again first.
struct Replayed<S> {
    prefix: &'static [u8],
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let rest = &self.prefix[self.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
