//! One TCP connection to one broker, able to carry many requests at once.
//!
//! Kafka answers requests on a connection in the order it received them, each answer
//! tagged with the request's correlation id. So the connection is split in two tasks:
//! a writer that drains a queue of encoded frames onto the socket (batching whatever
//! is queued into one flush), and a reader that reads response frames and hands each
//! to the caller waiting on its correlation id. Callers never touch the socket, so a
//! caller that gives up (timeout, dropped future) cannot leave half a frame behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{
    Decodable, HeaderVersion, Request, StrBytes, VersionRange, encode_request_header_into_buffer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Largest response frame accepted. Fetch responses are bounded by the fetch's
/// `max_bytes`; anything beyond this is a broken or hostile peer.
pub const FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Default bound on requests sent but not yet answered on one connection.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 64;

/// Socket buffer sizes for the reader and the writer.
const SOCKET_BUFFER_BYTES: usize = 64 * 1024;

/// The ApiVersions version tried first: flexible, and understood by Kafka 2.4 and later.
const API_VERSIONS_VERSION_PREFERRED: i16 = 3;

#[derive(Clone, Debug)]
pub struct ConnectionOptions {
    /// Sent in every request header; brokers show it in logs and group descriptions.
    pub client_id: String,
    /// How long a request may wait for its response unless the call says otherwise.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests sent but not answered; further sends wait for a slot.
    pub in_flight_requests_max: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            client_id: "herald".to_owned(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            in_flight_requests_max: IN_FLIGHT_REQUESTS_MAX,
        }
    }
}

/// A connection to one broker, with the API versions both sides speak.
pub struct Connection {
    addr: String,
    client_id: StrBytes,
    request_timeout: Duration,
    /// Per API key: the broker's range intersected with this crate's.
    versions: HashMap<i16, VersionRange>,
    next_correlation_id: AtomicI32,
    frames: mpsc::Sender<Bytes>,
    in_flight: Semaphore,
    waiters: Arc<Waiters>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer stops by itself once `frames` is dropped; the reader would wait
        // on the socket until the broker closes it.
        self.reader.abort();
        self.writer.abort();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Connection {
    /// Connects with default options and negotiates API versions.
    pub async fn connect(addr: &str) -> Result<Connection> {
        Self::connect_with(addr, &ConnectionOptions::default()).await
    }

    pub async fn connect_with(addr: &str, options: &ConnectionOptions) -> Result<Connection> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer within {} ms",
                        options.connect_timeout.as_millis()
                    ),
                ))
            })?
            .map_err(connect_error)?;
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true).map_err(connect_error)?;

        let mut connection = Self::start(addr, stream, options);
        connection.negotiate_versions().await?;
        tracing::debug!(addr, apis = connection.versions.len(), "connected");
        Ok(connection)
    }

    fn start(addr: &str, stream: TcpStream, options: &ConnectionOptions) -> Connection {
        let in_flight_requests_max = options.in_flight_requests_max.max(1);
        let (read_half, write_half) = stream.into_split();
        let (frames_tx, frames_rx) = mpsc::channel(in_flight_requests_max);
        let waiters = Arc::new(Waiters::default());
        let reader = tokio::spawn(read_loop(read_half, Arc::clone(&waiters)));
        let writer = tokio::spawn(write_loop(write_half, frames_rx, Arc::clone(&waiters)));
        Connection {
            addr: addr.to_owned(),
            client_id: StrBytes::from_string(options.client_id.clone()),
            request_timeout: options.request_timeout,
            versions: HashMap::new(),
            next_correlation_id: AtomicI32::new(0),
            frames: frames_tx,
            in_flight: Semaphore::new(in_flight_requests_max),
            waiters,
            reader,
            writer,
        }
    }

    /// Asks the broker which versions it speaks and keeps, per API, the range both
    /// sides support. Brokers that do not know the preferred ApiVersions version
    /// answer with an error (or a v0 body); v0 is understood by every broker.
    async fn negotiate_versions(&mut self) -> Result<()> {
        let preferred = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("herald-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let timeout = self.request_timeout;
        let response = match self
            .request(&preferred, API_VERSIONS_VERSION_PREFERRED, timeout)
            .await
        {
            Ok(response) if response.error_code == 0 => response,
            Ok(_) | Err(Error::Decode { .. }) => {
                self.request(&ApiVersionsRequest::default(), 0, timeout)
                    .await?
            }
            Err(error) => return Err(error),
        };
        crate::error::check(
            response.error_code,
            || format!("ApiVersions from {}", self.addr),
            None,
        )?;
        self.versions = negotiated_versions(&response);
        Ok(())
    }

    /// The broker address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the socket has failed or been closed by the broker.
    pub fn is_closed(&self) -> bool {
        self.waiters.lock().closed.is_some()
    }

    /// Whether both sides speak some version of `api`.
    pub fn supports(&self, api: ApiKey) -> bool {
        self.versions.contains_key(&(api as i16))
    }

    /// The versions of `api` both sides speak.
    pub fn version_range(&self, api: ApiKey) -> Option<VersionRange> {
        self.versions.get(&(api as i16)).copied()
    }

    /// The highest version of `R` both sides speak.
    pub fn version_of<R: Request>(&self) -> Result<i16> {
        self.version_at_most::<R>(i16::MAX)
    }

    /// The highest version of `R` both sides speak that is at most `max`: for callers
    /// that can only fill a request's fields up to some version.
    pub fn version_at_most<R: Request>(&self, max: i16) -> Result<i16> {
        let api = api_key::<R>()?;
        let ours = R::VERSIONS.intersect(&VersionRange {
            min: R::VERSIONS.min,
            max,
        });
        self.versions
            .get(&R::KEY)
            .map(|both| both.intersect(&ours))
            .filter(|both| !both.is_empty())
            .map(|both| both.max)
            .ok_or_else(|| Error::UnsupportedApi {
                addr: self.addr.clone(),
                api,
                client: ours.to_string(),
            })
    }

    /// Sends `request` at the highest common version and waits for its response.
    pub async fn send<R: Request>(&self, request: &R) -> Result<R::Response> {
        let version = self.version_of::<R>()?;
        self.request(request, version, self.request_timeout).await
    }

    /// Sends `request` at `version` (see [`Connection::version_of`]).
    pub async fn send_version<R: Request>(&self, request: &R, version: i16) -> Result<R::Response> {
        self.request(request, version, self.request_timeout).await
    }

    /// Like [`Connection::send_version`] for requests the broker may hold longer than
    /// the default timeout (JoinGroup waits for the whole group, Fetch long-polls).
    pub async fn send_with_timeout<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        self.request(request, version, timeout).await
    }

    /// Queues a request the broker will not answer (Produce with acks=0). Returns once
    /// the frame is queued; [`Connection::flush`] waits until it has been processed.
    pub async fn send_without_response<R: Request>(&self, request: &R, version: i16) -> Result<()> {
        let correlation_id = self.next_correlation_id();
        let frame = self.encode_frame(request, version, correlation_id)?;
        self.frames
            .send(frame)
            .await
            .map_err(|_| self.closed_error())
    }

    /// Waits until every request queued before this call has been handled by the
    /// broker: Kafka handles a connection's requests in order, so the answer to one
    /// more request proves the earlier ones were read and applied. (A broker that
    /// shows records only once durable, like Herald, may show unacknowledged ones a
    /// moment later.)
    pub async fn flush(&self) -> Result<()> {
        self.request(&ApiVersionsRequest::default(), 0, self.request_timeout)
            .await
            .map(|_| ())
    }

    async fn request<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let api = api_key::<R>()?;
        match tokio::time::timeout(timeout, self.roundtrip(request, version)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                addr: self.addr.clone(),
                api,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    async fn roundtrip<R: Request>(&self, request: &R, version: i16) -> Result<R::Response> {
        let api = api_key::<R>()?;
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| self.closed_error())?;
        let correlation_id = self.next_correlation_id();
        let frame = self.encode_frame(request, version, correlation_id)?;

        let (reply_tx, reply_rx) = oneshot::channel();
        let waiter = Waiter {
            header_version: R::Response::header_version(version),
            reply: reply_tx,
        };
        // Registered before the frame is queued, so the reader always finds it.
        let _registration = self
            .waiters
            .register(correlation_id, waiter)
            .map_err(|reason| Error::ConnectionClosed {
                addr: self.addr.clone(),
                reason,
            })?;
        self.frames
            .send(frame)
            .await
            .map_err(|_| self.closed_error())?;

        let mut body = match reply_rx.await {
            Ok(Ok(body)) => body,
            Ok(Err(reason)) => {
                return Err(Error::ConnectionClosed {
                    addr: self.addr.clone(),
                    reason,
                });
            }
            Err(_) => return Err(self.closed_error()),
        };
        R::Response::decode(&mut body, version).map_err(|error| Error::Decode {
            addr: self.addr.clone(),
            api,
            version,
            message: format!("{error:#}"),
        })
    }

    fn next_correlation_id(&self) -> i32 {
        // Wrapping is fine: ids only need to be unique among requests in flight.
        self.next_correlation_id.fetch_add(1, Ordering::Relaxed)
    }

    fn encode_frame<R: Request>(
        &self,
        request: &R,
        version: i16,
        correlation_id: i32,
    ) -> Result<Bytes> {
        let api = api_key::<R>()?;
        let encode_error = |error: String| Error::Encode {
            api,
            version,
            message: error,
        };
        if version < R::VERSIONS.min || version > R::VERSIONS.max {
            return Err(encode_error(format!(
                "this client supports versions {}",
                R::VERSIONS
            )));
        }
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let body_bytes = request
            .compute_size(version)
            .map_err(|error| encode_error(format!("{error:#}")))?;
        let mut frame = BytesMut::with_capacity(4 + 64 + body_bytes);
        frame.put_i32(0); // length, filled in below
        encode_request_header_into_buffer(&mut frame, &header)
            .map_err(|error| encode_error(format!("{error:#}")))?;
        request
            .encode(&mut frame, version)
            .map_err(|error| encode_error(format!("{error:#}")))?;
        let length = i32::try_from(frame.len() - 4)
            .map_err(|_| encode_error(format!("request of {} bytes is too large", frame.len())))?;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        Ok(frame.freeze())
    }

    fn closed_error(&self) -> Error {
        let reason = self
            .waiters
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned());
        Error::ConnectionClosed {
            addr: self.addr.clone(),
            reason,
        }
    }
}

fn api_key<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY)
        .map_err(|_| Error::InvalidArgument(format!("unknown Kafka API key {}", R::KEY)))
}

/// Per API: the broker's range intersected with this crate's; APIs with no common
/// version are left out.
fn negotiated_versions(response: &ApiVersionsResponse) -> HashMap<i16, VersionRange> {
    response
        .api_keys
        .iter()
        .filter_map(|api| {
            let key = ApiKey::try_from(api.api_key).ok()?;
            let broker = VersionRange {
                min: api.min_version,
                max: api.max_version,
            };
            let both = broker.intersect(&key.valid_versions());
            (!both.is_empty()).then_some((api.api_key, both))
        })
        .collect()
}

/// A caller waiting for the response with one correlation id.
struct Waiter {
    header_version: i16,
    /// The response body (after the header), or why the connection failed.
    reply: oneshot::Sender<std::result::Result<Bytes, String>>,
}

#[derive(Default)]
struct Waiters {
    state: Mutex<WaitersState>,
}

#[derive(Default)]
struct WaitersState {
    /// Why the connection stopped working; no new request is accepted once set.
    closed: Option<String>,
    waiting: HashMap<i32, Waiter>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, WaitersState> {
        // A panic while holding this lock cannot leave the map inconsistent (each
        // critical section is a single insert or remove), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fails with the reason the connection closed, if it has.
    fn register(
        &self,
        correlation_id: i32,
        waiter: Waiter,
    ) -> std::result::Result<Registration<'_>, String> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        state.waiting.insert(correlation_id, waiter);
        Ok(Registration {
            waiters: self,
            correlation_id,
        })
    }

    fn take(&self, correlation_id: i32) -> Option<Waiter> {
        self.lock().waiting.remove(&correlation_id)
    }

    /// Marks the connection failed and wakes every waiting caller with the reason.
    fn close(&self, reason: String) {
        let waiting = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(reason.clone());
            }
            std::mem::take(&mut state.waiting)
        };
        for (_, waiter) in waiting {
            let _ = waiter.reply.send(Err(reason.clone()));
        }
    }
}

/// Removes a waiter whose caller stopped waiting (timeout, dropped future), so a late
/// response is discarded instead of kept forever.
struct Registration<'a> {
    waiters: &'a Waiters,
    correlation_id: i32,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.waiters.take(self.correlation_id);
    }
}

async fn write_loop(
    write_half: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Bytes>,
    waiters: Arc<Waiters>,
) {
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, write_half);
    while let Some(frame) = frames.recv().await {
        let mut result = writer.write_all(&frame).await;
        // Everything already queued goes out with the same flush.
        while result.is_ok() {
            match frames.try_recv() {
                Ok(frame) => result = writer.write_all(&frame).await,
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = writer.flush().await;
        }
        if let Err(error) = result {
            tracing::debug!(%error, "write to broker failed");
            waiters.close(format!("write failed: {error}"));
            return;
        }
    }
}

async fn read_loop(read_half: OwnedReadHalf, waiters: Arc<Waiters>) {
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, read_half);
    let reason = loop {
        match read_frame(&mut reader).await {
            Ok(frame) => {
                if let Err(reason) = dispatch(&waiters, frame) {
                    break reason;
                }
            }
            Err(reason) => break reason,
        }
    };
    tracing::debug!(%reason, "connection to broker closed");
    waiters.close(reason);
}

/// What a server that answered with these first bytes speaks, if it is not Kafka: an
/// HTTP status line, or a TLS record (an alert or handshake, TLS 1.0 to 1.3).
pub fn not_kafka(prefix: &[u8; 4]) -> Option<&'static str> {
    if prefix == b"HTTP" {
        return Some("HTTP");
    }
    if matches!(prefix[0], 0x15 | 0x16) && prefix[1] == 0x03 && prefix[2] <= 0x04 {
        return Some("TLS");
    }
    None
}

async fn read_frame(reader: &mut BufReader<OwnedReadHalf>) -> std::result::Result<Bytes, String> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("closed by the broker".to_owned());
        }
        Err(error) => return Err(format!("read failed: {error}")),
    }
    if let Some(protocol) = not_kafka(&prefix) {
        return Err(format!(
            "that port speaks {protocol}, not Kafka: point --bootstrap at the Kafka listener \
             (9092 by default)"
        ));
    }
    let length = i32::from_be_bytes(prefix);
    let length = usize::try_from(length).map_err(|_| format!("negative frame length {length}"))?;
    if length > FRAME_BYTES_MAX {
        return Err(format!(
            "response frame of {length} bytes exceeds the limit of {FRAME_BYTES_MAX} bytes"
        ));
    }
    let mut frame = BytesMut::zeroed(length);
    reader
        .read_exact(&mut frame)
        .await
        .map_err(|error| format!("read failed mid-frame: {error}"))?;
    Ok(frame.freeze())
}

/// Hands one response frame to its waiter. A frame for nobody (its caller gave up)
/// is dropped; a frame that cannot be parsed breaks the stream, so it closes it.
fn dispatch(waiters: &Waiters, mut frame: Bytes) -> std::result::Result<(), String> {
    if frame.len() < 4 {
        return Err(format!(
            "response frame of {} bytes has no header",
            frame.len()
        ));
    }
    let correlation_id = (&frame[..4]).get_i32();
    let Some(waiter) = waiters.take(correlation_id) else {
        tracing::debug!(correlation_id, "dropping response nobody waits for");
        return Ok(());
    };
    match ResponseHeader::decode(&mut frame, waiter.header_version) {
        Ok(_) => {
            let _ = waiter.reply.send(Ok(frame));
            Ok(())
        }
        Err(error) => {
            let reason = format!("bad response header: {error:#}");
            let _ = waiter.reply.send(Err(reason.clone()));
            Err(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    #[test]
    fn negotiation_intersects_broker_and_client_ranges() {
        let response = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(ApiKey::Metadata as i16)
                .with_min_version(0)
                .with_max_version(99),
            ApiVersion::default()
                .with_api_key(ApiKey::Produce as i16)
                .with_min_version(0)
                .with_max_version(2), // below this crate's minimum of 3
            ApiVersion::default()
                .with_api_key(999)
                .with_min_version(0)
                .with_max_version(1),
        ]);
        let versions = negotiated_versions(&response);
        assert_eq!(versions.len(), 1);
        assert_eq!(
            versions[&(ApiKey::Metadata as i16)],
            ApiKey::Metadata.valid_versions()
        );
    }
}
