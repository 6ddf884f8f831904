//! Accept loop and connection serving: the HTTP listener's limits, so slow or hostile
//! clients cannot hold the broker's memory or sockets.
//!
//! - Connections pass a `ConnectionGate` (`connections_max` in all,
//!   `connections_max_per_ip` from one address); a refused one is closed at once.
//! - A request head must arrive whole within `header_read_timeout_ms` of the first byte
//!   after the connection went idle (or of the accept, for the first request).
//! - A request body must arrive whole within `body_read_timeout_ms` of its head, else
//!   the request is answered 408 and the connection closed.
//! - A keep-alive connection with no request in progress is closed after
//!   `keep_alive_idle_ms`.
//! - A response that makes no progress into the socket for `send_timeout_ms` (the
//!   client stopped reading) closes the connection, dropping the response.
//!
//! hyper 1.12's own `header_read_timeout` starts when the connection begins waiting for
//! a head, also between keep-alive requests, so it would close idle connections after
//! the header timeout and make the idle timeout meaningless. It is turned off; a
//! per-connection watchdog enforces both, from what the socket reads and which requests
//! are in flight. The watchdog never closes a connection with a request in flight: SSE
//! tails and long polls run as long as they need.
//!
//! Each connection keeps hyper's adaptive read buffer (8 KiB to start), capped at
//! `HEADER_BYTES_MAX`, which also bounds a request head.
//!
//! Before hyper sees a connection, its first bytes (at most `sniff::SNIFF_BYTES_MAX`,
//! within the header timeout) tell a client of another protocol apart: a TLS
//! ClientHello, an AMQP header or a Kafka request is logged as such and closed without
//! an answer; anything else goes to hyper with those bytes read again first.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use herald_broker::{ConnectionGate, ConnectionPermit, MemoryPools, Reservation};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::metrics::ConnectionMetrics;
use crate::sniff::{self, Prefixed, Sniffed};

/// How long the one-line answer to a Kafka client on this port may take to be written.
const WRONG_PROTOCOL_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest read buffer of one connection, and so the largest request head (hyper's
/// default, ~400 KiB, would let 4096 slow clients hold 1.6 GB of heads).
pub const HEADER_BYTES_MAX: usize = 64 << 10;

/// The listener's limits, from `HttpConfig`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub body_read: Duration,
    pub keep_alive_idle: Duration,
    /// A response write that makes no progress this long closes the connection.
    pub send: Duration,
}

/// Request bodies and responses take their bytes from the broker's memory budget: a
/// body's announced length (or `body_bytes_max` when it is not announced) is reserved
/// from the request pool before the handler reads it, waiting while the pool is used
/// up; a response's bytes are counted in the response pool until it is written.
#[derive(Debug, Clone)]
pub struct BodyMemory {
    pub pools: MemoryPools,
    pub body_bytes_max: usize,
}

/// What the listener holds its connections to, and counts them in.
pub struct Limits {
    pub gate: Arc<ConnectionGate>,
    pub timeouts: Timeouts,
    pub metrics: ConnectionMetrics,
    pub memory: BodyMemory,
    /// Where Kafka is served, named when a Kafka client connects to this port.
    pub kafka_address: Option<Arc<str>>,
}

/// Accept until `shutdown` resolves, then tell every connection to finish (`stop`, which
/// also ends SSE tails) and wait until all have: requests in progress finish, idle
/// connections close at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: Arc<watch::Sender<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Every connection task holds a receiver; when all are dropped, all are done.
    let Limits {
        gate,
        timeouts,
        metrics,
        memory,
        kafka_address,
    } = limits;
    let (alive_tx, alive_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (socket, peer, permit) = tokio::select! {
            accepted = gate.accept(&listener, "HTTP", || metrics.connection_refused()) => accepted,
            () = &mut shutdown => break,
        };
        let connection = Connection {
            peer,
            router: router.clone(),
            timeouts,
            metrics: metrics.clone(),
            memory: memory.clone(),
            kafka_address: kafka_address.clone(),
            stop: stop.subscribe(),
        };
        let alive = alive_rx.clone();
        tokio::spawn(async move {
            connection.run(socket, permit).await;
            drop(alive);
        });
    }
    drop(listener);
    stop.send_replace(true);
    drop(alive_rx);
    alive_tx.closed().await;
    Ok(())
}

struct Connection {
    peer: SocketAddr,
    router: Router,
    timeouts: Timeouts,
    metrics: ConnectionMetrics,
    memory: BodyMemory,
    kafka_address: Option<Arc<str>>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, mut socket: TcpStream, permit: ConnectionPermit) {
        let open = self.metrics.connection_opened();
        let activity = Arc::new(Activity::new());
        if let Some(prefix) = self.sniff(&mut socket, &activity).await {
            self.serve_http(Prefixed::new(socket, prefix), activity)
                .await;
        }
        drop(open);
        drop(permit);
    }

    /// The connection's first bytes, if it is to be served as HTTP; None when it was
    /// closed: a client of another protocol (logged), one that went away, one that sent
    /// too little within the header timeout (which runs from the accept, as for any
    /// head), or a shutdown before it sent anything telling.
    async fn sniff(&self, socket: &mut TcpStream, activity: &Activity) -> Option<sniff::Prefix> {
        let mut stop = self.stop.clone();
        let sniffed = tokio::select! {
            sniffed = sniff::read_prefix(socket) => sniffed,
            expired = watchdog(activity, self.timeouts) => {
                self.closed(expired);
                return None;
            }
            _ = stop.wait_for(|stop| *stop) => return None,
        };
        let Sniffed::Decided { verdict, prefix } = sniffed else {
            return None;
        };
        let Some(line) = sniff::wrong_protocol(verdict, self.kafka_address.as_deref()) else {
            return Some(prefix);
        };
        let peer = self.peer;
        match verdict {
            sniff::Verdict::Kafka {
                api_key,
                api_version,
            } => {
                tracing::warn!(%peer, api_key, api_version, "{line}");
                let answer = sniff::kafka_answer(self.kafka_address.as_deref());
                let _ = tokio::time::timeout(WRONG_PROTOCOL_ANSWER_TIMEOUT, async {
                    socket.write_all(answer.as_bytes()).await?;
                    socket.shutdown().await
                })
                .await;
            }
            _ => tracing::warn!(%peer, "{line}"),
        }
        None
    }

    async fn serve_http(&self, socket: Prefixed<TcpStream>, activity: Arc<Activity>) {
        let mut stop = self.stop.clone();
        let io = TokioIo::new(Watched {
            inner: socket,
            activity: activity.clone(),
        });
        let service = {
            let activity = activity.clone();
            let router = self.router.clone();
            let metrics = self.metrics.clone();
            let (peer, body_read) = (self.peer, self.timeouts.body_read);
            let memory = self.memory.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let request_guard = InFlight::start(activity.clone());
                handle(
                    router.clone(),
                    request,
                    request_guard,
                    body_read,
                    peer,
                    metrics.clone(),
                    memory.clone(),
                )
            })
        };
        let mut builder = http1::Builder::new();
        builder
            .header_read_timeout(None)
            .max_buf_size(HEADER_BYTES_MAX);
        let mut conn = pin!(builder.serve_connection(io, service));
        let mut watchdog = pin!(watchdog(&activity, self.timeouts));
        let mut stalled = pin!(write_stall(&activity, self.timeouts.send));
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "HTTP connection ended with an error");
                    }
                    break;
                }
                _ = stop.wait_for(|stop| *stop), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                expired = &mut watchdog => {
                    self.closed(expired);
                    break;
                }
                expired = &mut stalled => {
                    self.closed(expired);
                    break;
                }
            }
        }
    }

    fn closed(&self, expired: Expired) {
        let peer = self.peer;
        match expired {
            Expired::HeaderRead => {
                tracing::warn!(%peer, timeout_ms = self.timeouts.header_read.as_millis() as u64, "closing HTTP connection: the request head did not arrive in time");
                self.metrics.closed_header_timeout();
            }
            Expired::KeepAliveIdle => {
                tracing::info!(%peer, idle_ms = self.timeouts.keep_alive_idle.as_millis() as u64, "closing idle HTTP connection");
                self.metrics.closed_idle();
            }
            Expired::SendStalled => {
                tracing::warn!(%peer, timeout_ms = self.timeouts.send.as_millis() as u64, "closing HTTP connection: a response made no progress (the client does not read)");
                self.metrics.closed_send_timeout();
            }
        }
    }
}

/// One request through the router; its body must arrive within `body_read` of now.
async fn handle(
    mut router: Router,
    request: Request<Incoming>,
    in_flight: InFlight,
    body_read: Duration,
    peer: SocketAddr,
    metrics: ConnectionMetrics,
    memory: BodyMemory,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let body_bytes = match request.body().size_hint().exact() {
        Some(0) => 0,
        Some(announced) => usize::try_from(announced)
            .unwrap_or(usize::MAX)
            .min(memory.body_bytes_max),
        None => memory.body_bytes_max,
    };
    let request_memory = if body_bytes > 0 {
        Some(memory.pools.requests.reserve(body_bytes).await)
    } else {
        None
    };
    let timed_out = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| DeadlineBody {
        inner,
        deadline: Instant::now() + body_read,
        sleep: None,
        timed_out: timed_out.clone(),
    });
    let response = match tower_service::Service::call(&mut router, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = if timed_out.load(Ordering::Acquire) {
        // Whatever the handler made of the failed read, the client hears why, and the
        // connection (its body half read) is not reused.
        let ms = body_read.as_millis() as u64;
        tracing::warn!(%peer, timeout_ms = ms, "HTTP request body did not arrive in time");
        metrics.body_timeout();
        let mut response = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_read_timeout",
            format!("the request body did not arrive within {ms} ms"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    } else {
        response
    };
    drop(request_memory);
    let response_bytes = response
        .body()
        .size_hint()
        .exact()
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    // Counted, not waited for: the response exists already.
    let response_memory = memory.pools.responses.count(response_bytes);
    Ok(response.map(|inner| ResponseBody {
        inner,
        _memory: response_memory,
        _in_flight: in_flight,
    }))
}

/// What a connection is doing, as far as its timeouts care.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for a request head: since the accept, or since the first byte that came
    /// after the connection went idle.
    AwaitingHead { since: Instant },
    /// No request in flight and nothing read since `since`.
    Idle { since: Instant },
    /// Requests handed to the router whose responses are not written yet.
    InFlight { requests: usize },
}

/// Shared by the socket (bytes read), the requests (started, ended) and the watchdog.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
    /// Since when a write has been waiting for the socket (None: not blocked).
    write_blocked: Mutex<Option<Instant>>,
    write_changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::AwaitingHead {
                since: Instant::now(),
            }),
            changed: Notify::new(),
            write_blocked: Mutex::new(None),
            write_changed: Notify::new(),
        }
    }

    /// A write returned Pending (the socket is full) or made progress.
    fn write_polled(&self, blocked: bool) {
        let mut since = self.write_blocked.lock().unwrap_or_else(|p| p.into_inner());
        match (blocked, *since) {
            (true, None) => {
                *since = Some(Instant::now());
                self.write_changed.notify_one();
            }
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    fn write_blocked_since(&self) -> Option<Instant> {
        *self.write_blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> Phase {
        *self.lock()
    }

    fn update(&self, next: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.lock();
        let was = *phase;
        *phase = next(was);
        if *phase != was {
            // One waiter (the watchdog); a permit is kept if it is not waiting yet.
            self.changed.notify_one();
        }
    }

    fn bytes_read(&self) {
        self.update(|phase| match phase {
            Phase::Idle { .. } => Phase::AwaitingHead {
                since: Instant::now(),
            },
            other => other,
        });
    }

    fn request_started(&self) {
        self.update(|phase| match phase {
            Phase::InFlight { requests } => Phase::InFlight {
                requests: requests + 1,
            },
            _ => Phase::InFlight { requests: 1 },
        });
    }

    fn request_ended(&self) {
        self.update(|phase| match phase {
            Phase::InFlight { requests } if requests > 1 => Phase::InFlight {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // A plain value: a panic elsewhere cannot leave it half-written.
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    HeaderRead,
    KeepAliveIdle,
    SendStalled,
}

/// Resolves when the connection has waited too long for a head or idled too long.
async fn watchdog(activity: &Activity, timeouts: Timeouts) -> Expired {
    loop {
        let (deadline, expired) = match activity.phase() {
            Phase::AwaitingHead { since } => (since + timeouts.header_read, Expired::HeaderRead),
            Phase::Idle { since } => (since + timeouts.keep_alive_idle, Expired::KeepAliveIdle),
            Phase::InFlight { .. } => {
                activity.changed.notified().await;
                continue;
            }
        };
        if Instant::now() >= deadline {
            return expired;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = activity.changed.notified() => {}
        }
    }
}

/// Resolves when one write has waited for the socket longer than `send`.
async fn write_stall(activity: &Activity, send: Duration) -> Expired {
    loop {
        let Some(since) = activity.write_blocked_since() else {
            activity.write_changed.notified().await;
            continue;
        };
        if Instant::now() >= since + send {
            return Expired::SendStalled;
        }
        tokio::time::sleep_until(since + send).await;
    }
}

/// A request counted in flight until its response body is written or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.request_started();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The router's response body, holding its request in flight.
struct ResponseBody {
    inner: Body,
    _memory: Reservation,
    _in_flight: InFlight,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails once its deadline passes, and says so in `timed_out`.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Made at the first wait, so bodies that are already here cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

#[derive(Debug)]
struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyReadTimeout {}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.timed_out.store(true, Ordering::Release);
        Poll::Ready(Some(Err(Box::new(BodyReadTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket (after the bytes sniffed from it), telling `Activity` when bytes arrive.
struct Watched {
    inner: Prefixed<TcpStream>,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.activity.write_polled(result.is_pending());
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.activity.write_polled(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.activity.write_polled(result.is_pending());
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn between(took: Duration, low_ms: u64, high_ms: u64) -> bool {
        took >= Duration::from_millis(low_ms) && took < Duration::from_millis(high_ms)
    }

    #[tokio::test]
    async fn watchdog_times_heads_and_idleness_apart_and_spares_requests() {
        let timeouts = Timeouts {
            header_read: Duration::from_millis(100),
            body_read: Duration::from_millis(100),
            keep_alive_idle: Duration::from_millis(400),
            send: Duration::from_secs(60),
        };
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(watchdog(&activity, timeouts).await, Expired::HeaderRead);
        assert!(between(start.elapsed(), 100, 300), "{:?}", start.elapsed());

        let activity = Arc::new(Activity::new());
        let request = InFlight::start(activity.clone());
        let dog = tokio::time::timeout(Duration::from_millis(800), watchdog(&activity, timeouts));
        assert!(dog.await.is_err(), "a request in flight is never timed out");
        drop(request);
        let start = Instant::now();
        assert_eq!(watchdog(&activity, timeouts).await, Expired::KeepAliveIdle);
        assert!(between(start.elapsed(), 400, 600), "{:?}", start.elapsed());

        // Bytes after idleness start the (shorter) head clock, even while the watchdog
        // already waits on the idle one.
        drop(InFlight::start(activity.clone()));
        let start = Instant::now();
        let bytes = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            activity.bytes_read();
            std::future::pending::<()>().await;
        };
        let expired = tokio::select! {
            expired = watchdog(&activity, timeouts) => expired,
            () = bytes => unreachable!(),
        };
        assert_eq!(expired, Expired::HeaderRead);
        assert!(between(start.elapsed(), 150, 350), "{:?}", start.elapsed());
    }
}
