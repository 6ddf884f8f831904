//! Framing over one byte stream: a 4-byte big-endian length, then the request.
//! Requests are read and handled in order; each produces an `Outgoing` that the writer
//! task sends in that same order. A produce request appends before the next request is
//! read (so an idempotent producer's batches keep their order) but waits for its fsync
//! in the writer's queue, so a pipelining producer's requests share fsyncs.
//!
//! What bounds a connection's memory, whatever the client does:
//! - at most `in_flight_requests_max` requests wait for their responses; past that the
//!   socket is not read;
//! - a request's bytes are reserved from the broker's `MemoryBudget` before they are
//!   read (the socket is not read while the budget is used up), must arrive within
//!   `request_read_timeout_ms`, and are returned once nothing holds the frame any more
//!   (a deferred fetch: when its response is ready);
//! - a fetch is a deferred `Later`: it reads the log only when the writer reaches it,
//!   i.e. once every earlier response was handed to the socket, so a client that does
//!   not read holds at most one fetch response, and that within its budget share;
//! - a response that makes no progress for `send_timeout_ms` closes the connection, and
//!   so does `connections_max_idle_ms` with nothing in flight and nothing sent;
//! - when the client goes away, the writer is aborted at once: pending long-polls,
//!   fsync waits and queued responses are dropped with their memory.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use herald_broker::{Broker, Reservation};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::KafkaConfig;
use crate::dispatch::{self, Context, REQUEST_HEADER_BYTES_MIN};
use crate::metrics::KafkaMetrics;

/// Small responses are gathered into one write of up to this many bytes.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// A response ready to write, with the memory it holds until it is written.
pub struct Reply {
    pub bytes: Bytes,
    pub memory: Option<Reservation>,
}

impl From<Bytes> for Reply {
    fn from(bytes: Bytes) -> Reply {
        Reply {
            bytes,
            memory: None,
        }
    }
}

/// A response in the making, in request order.
pub enum Outgoing {
    Ready(Bytes),
    /// Resolves to the response, or to None when none is sent (acks=0). Polled only
    /// when the writer reaches it: work that builds a large response belongs here.
    Later(Pin<Box<dyn Future<Output = Option<Reply>> + Send>>),
    /// Close the connection after everything before it is written.
    Close,
}

pub struct Connection<S> {
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<KafkaConfig>,
    metrics: KafkaMetrics,
}

/// A response on its way to the writer, with what its latency is measured from and
/// the request's memory (a deferred fetch's), returned once the response is ready.
struct Timed {
    outgoing: Outgoing,
    api_key: i16,
    arrived: Instant,
    request_memory: Option<Reservation>,
}

/// How the reading half ended.
enum ReadEnd {
    /// The client went away (EOF, reset) or sent garbage: drop everything now.
    Gone,
    /// A request asked to close (malformed): write what came before it first.
    Close,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    pub fn new(
        stream: S,
        peer: SocketAddr,
        broker: Arc<Broker>,
        config: Arc<KafkaConfig>,
        metrics: KafkaMetrics,
    ) -> Connection<S> {
        Connection {
            stream,
            peer,
            broker,
            config,
            metrics,
        }
    }

    pub async fn run(self) {
        let peer = self.peer;
        let (mut reader, writer) = tokio::io::split(self.stream);
        let (tx, rx) = mpsc::channel::<Timed>(self.config.in_flight_requests_max.max(1));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let send_timeout = Duration::from_millis(self.config.send_timeout_ms.max(1));
        let mut writer_task = tokio::spawn(write_responses(
            writer,
            rx,
            peer,
            self.metrics.clone(),
            in_flight.clone(),
            send_timeout,
        ));
        let context = Context {
            broker: self.broker,
            config: self.config.clone(),
            peer,
            who: herald_broker::Principal::anonymous(),
        };
        let reading = read_requests(&mut reader, &context, &tx, &in_flight, &self.metrics);
        let end = tokio::select! {
            end = reading => end,
            // The writer stopped (the socket failed or stalled): stop reading too.
            _ = &mut writer_task => return,
        };
        drop(tx);
        match end {
            ReadEnd::Gone => writer_task.abort(),
            ReadEnd::Close => {
                let _ = writer_task.await;
            }
        }
    }
}

async fn read_requests<R: AsyncRead + Unpin>(
    reader: &mut R,
    context: &Context,
    tx: &mpsc::Sender<Timed>,
    in_flight: &AtomicUsize,
    metrics: &KafkaMetrics,
) -> ReadEnd {
    let peer = context.peer;
    let config = &context.config;
    let idle = Duration::from_millis(config.connections_max_idle_ms.max(1));
    let request_read_timeout = Duration::from_millis(config.request_read_timeout_ms.max(1));
    let memory = &context.broker.memory().requests;
    loop {
        let mut length = [0u8; 4];
        let mut got = 0;
        while got < length.len() {
            match read_some(reader, &mut length[got..], idle, in_flight).await {
                Ok(0) => {
                    if got > 0 {
                        tracing::debug!(%peer, "connection closed inside a length prefix");
                    }
                    return ReadEnd::Gone;
                }
                Ok(n) => got += n,
                Err(ReadError::Idle | ReadError::Slow) => {
                    tracing::info!(%peer, idle_ms = config.connections_max_idle_ms, "closing idle connection");
                    metrics.closed_idle();
                    return ReadEnd::Gone;
                }
                Err(ReadError::Io(e)) => {
                    tracing::debug!(%peer, error = %e, "read failed");
                    return ReadEnd::Gone;
                }
            }
        }
        let prefix = length;
        let length = i32::from_be_bytes(length);
        let Ok(length) = usize::try_from(length) else {
            tracing::warn!(%peer, length, "closing connection: negative request length");
            return ReadEnd::Gone;
        };
        if length < REQUEST_HEADER_BYTES_MIN || length > config.request_bytes_max {
            return match other_protocol(&prefix) {
                Some(Other::Http) => {
                    tracing::warn!(%peer, "an HTTP client connected to the Kafka port; answered 400");
                    answer_and_close(tx, in_flight, http_on_kafka_port(config)).await
                }
                Some(Other::Amqp) => {
                    // The header is 8 bytes: answer once all of it came, since closing
                    // with bytes unread resets the connection and can lose the answer.
                    match read_header_rest(reader, request_read_timeout).await {
                        HeaderRest::Whole => {}
                        HeaderRest::Late => {
                            tracing::info!(%peer, timeout_ms = config.request_read_timeout_ms, "an AMQP protocol header on the Kafka port did not arrive whole in time");
                        }
                        HeaderRest::Gone => {
                            tracing::debug!(%peer, "connection closed inside an AMQP protocol header");
                            return ReadEnd::Gone;
                        }
                    }
                    match &config.amqp_address {
                        Some(amqp) => {
                            tracing::warn!(%peer, "an AMQP client connected to the Kafka port; AMQP 0-9-1 is served at {amqp}; answered with the AMQP protocol header and closed")
                        }
                        None => {
                            tracing::warn!(%peer, "an AMQP client connected to the Kafka port; the AMQP listener is turned off on this broker; answered with the AMQP protocol header and closed")
                        }
                    }
                    // What an AMQP server answers a header it will not serve: the
                    // version it speaks, then a close (clients report a protocol error).
                    answer_and_close(tx, in_flight, Bytes::from_static(b"AMQP\x00\x00\x09\x01"))
                        .await
                }
                Some(Other::Tls) => {
                    tracing::warn!(%peer, "a TLS ClientHello on the Kafka port: TLS is not enabled on this listener");
                    ReadEnd::Gone
                }
                None => {
                    tracing::warn!(%peer, length, max = config.request_bytes_max, "closing connection: request length out of bounds");
                    ReadEnd::Gone
                }
            };
        }
        let (frame, request_memory) = match read_frame(reader, length, memory, request_read_timeout)
            .await
        {
            Ok(read) => read,
            Err(ReadError::Idle | ReadError::Slow) => {
                tracing::warn!(%peer, length, timeout_ms = config.request_read_timeout_ms, "closing connection: the request did not arrive in time");
                metrics.closed_idle();
                return ReadEnd::Gone;
            }
            Err(ReadError::Io(e)) => {
                tracing::warn!(%peer, length, error = %e, "closing connection: truncated request");
                return ReadEnd::Gone;
            }
        };
        let arrived = Instant::now();
        // The frame holds at least a request header (checked above): api key first.
        let api_key = match frame.get(0..2) {
            Some(&[hi, lo]) => i16::from_be_bytes([hi, lo]),
            _ => -1,
        };
        let outgoing = dispatch::handle_frame(context, frame.freeze()).await;
        let close = matches!(outgoing, Outgoing::Close);
        // A fetch waiting for its turn holds its decoded request, whose strings are
        // slices of the frame: its bytes stay reserved until its response is ready.
        // Every other request is done with its frame by now (produce keeps no slice of
        // it while it waits for the fsync), so its memory returns at once.
        let request_memory =
            (api_key == kafka_protocol::messages::ApiKey::Fetch as i16).then_some(request_memory);
        let timed = Timed {
            outgoing,
            api_key,
            arrived,
            request_memory,
        };
        in_flight.fetch_add(1, Ordering::AcqRel);
        if tx.send(timed).await.is_err() {
            return ReadEnd::Gone;
        }
        if close {
            return ReadEnd::Close;
        }
    }
}

/// A client of another protocol, told apart by its first four bytes (which, read as a
/// Kafka length, are far out of bounds).
#[derive(Debug, PartialEq, Eq)]
enum Other {
    Http,
    Amqp,
    Tls,
}

/// How the rest of an AMQP protocol header (the 4 bytes after `AMQP`) arrived.
#[derive(Debug, PartialEq, Eq)]
enum HeaderRest {
    Whole,
    /// Not within the read timeout: answered all the same.
    Late,
    /// The client closed (or the read failed) first: nobody to answer.
    Gone,
}

/// Read the rest of an AMQP protocol header, `AMQP_HEADER_REST_BYTES`, within
/// `deadline`.
async fn read_header_rest<R: AsyncRead + Unpin>(reader: &mut R, deadline: Duration) -> HeaderRest {
    let mut rest = [0u8; AMQP_HEADER_REST_BYTES];
    match tokio::time::timeout(deadline, reader.read_exact(&mut rest)).await {
        Ok(Ok(_)) => HeaderRest::Whole,
        Ok(Err(_)) => HeaderRest::Gone,
        Err(_) => HeaderRest::Late,
    }
}

/// An AMQP protocol header is `AMQP` and 4 bytes (0, 0, 9, 1 for 0-9-1).
const AMQP_HEADER_REST_BYTES: usize = 4;

/// A client of another protocol: one answer in that protocol, then a close, through
/// the writer like any response.
async fn answer_and_close(
    tx: &mpsc::Sender<Timed>,
    in_flight: &AtomicUsize,
    answer: Bytes,
) -> ReadEnd {
    for outgoing in [Outgoing::Ready(answer), Outgoing::Close] {
        let timed = Timed {
            outgoing,
            api_key: -1,
            arrived: Instant::now(),
            request_memory: None,
        };
        in_flight.fetch_add(1, Ordering::AcqRel);
        if tx.send(timed).await.is_err() {
            return ReadEnd::Gone;
        }
    }
    ReadEnd::Close
}

fn other_protocol(prefix: &[u8; 4]) -> Option<Other> {
    const METHODS: [&[u8; 4]; 10] = [
        b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"CONN", b"TRAC", b"PRI ",
    ];
    if METHODS.contains(&prefix) {
        return Some(Other::Http);
    }
    if prefix == b"AMQP" {
        return Some(Other::Amqp);
    }
    // A TLS handshake record: type 22, version 3.x.
    if prefix[0] == 0x16 && prefix[1] == 0x03 && prefix[2] <= 0x04 {
        return Some(Other::Tls);
    }
    None
}

/// A one-line answer for an HTTP client on the Kafka port, naming where HTTP is.
fn http_on_kafka_port(config: &KafkaConfig) -> Bytes {
    let body = match &config.http_address {
        Some(http) => format!(
            "This is Herald's Kafka port ({}); the HTTP API is served at http://{http}/\n",
            config.listen
        ),
        None => format!(
            "This is Herald's Kafka port ({}); the HTTP API is turned off on this broker\n",
            config.listen
        ),
    };
    Bytes::from(format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    ))
}

enum ReadError {
    /// Nothing arrived for the idle time while nothing was in flight.
    Idle,
    /// A request's bytes did not all arrive within `request_read_timeout_ms`.
    Slow,
    Io(std::io::Error),
}

/// One read (cancel-safe), giving up after `idle` without bytes unless responses are
/// still owed: a long-poll or a response the client is slow to take is not idleness.
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    idle: Duration,
    in_flight: &AtomicUsize,
) -> Result<usize, ReadError> {
    loop {
        match tokio::time::timeout(idle, reader.read(buf)).await {
            Ok(result) => return result.map_err(ReadError::Io),
            Err(_) if in_flight.load(Ordering::Acquire) > 0 => continue,
            Err(_) => return Err(ReadError::Idle),
        }
    }
}

/// Read exactly `length` bytes into a new buffer. The whole length is reserved from the
/// memory budget first (as Kafka's memory pool does: the socket is not read until it
/// fits, and a request in progress never waits for memory, so requests cannot hold
/// each other up half-read), and the request must arrive within `deadline`, so a
/// client that announces a large request and trickles it holds the budget only so long.
/// The buffer is not zeroed: the socket fills it.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    length: usize,
    memory: &Arc<herald_broker::MemoryBudget>,
    deadline: Duration,
) -> Result<(BytesMut, Reservation), ReadError> {
    let reservation = memory.reserve(length).await;
    let read = async {
        let mut frame = BytesMut::with_capacity(length);
        while frame.len() < length {
            let wanted = (length - frame.len()) as u64;
            if (&mut *reader).take(wanted).read_buf(&mut frame).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(frame)
    };
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Err(ReadError::Slow),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Ok(Ok(frame)) => Ok((frame, reservation)),
    }
}

async fn write_responses<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<Timed>,
    peer: SocketAddr,
    metrics: KafkaMetrics,
    in_flight: Arc<AtomicUsize>,
    send_timeout: Duration,
) {
    let mut out = Out {
        writer,
        buf: Vec::new(),
        timeout: send_timeout,
    };
    let failed = |stall: Stall| match stall {
        Stall::Timeout => {
            tracing::warn!(%peer, timeout_ms = send_timeout.as_millis() as u64, "closing connection: a response made no progress (the client does not read)");
            metrics.closed_send_timeout();
        }
        Stall::Io(e) => tracing::debug!(%peer, error = %e, "write failed"),
    };
    while let Some(Timed {
        outgoing,
        api_key,
        arrived,
        request_memory,
    }) = rx.recv().await
    {
        let reply = match outgoing {
            Outgoing::Ready(bytes) => Some(Reply::from(bytes)),
            Outgoing::Later(mut future) => match poll_once(future.as_mut()) {
                Some(ready) => ready,
                None => {
                    // Not ready (a produce waiting for its fsync, a fetch long-polling):
                    // send what is already written first, or those responses would wait
                    // for it too.
                    if let Err(stall) = out.flush().await {
                        return failed(stall);
                    }
                    future.await
                }
            },
            Outgoing::Close => break,
        };
        metrics.observe(api_key, arrived);
        // The request is answered: its memory is not held while the client reads.
        drop(request_memory);
        if let Some(reply) = reply
            && let Err(stall) = out.send(&reply.bytes).await
        {
            return failed(stall);
        }
        in_flight.fetch_sub(1, Ordering::AcqRel);
        // Batch small responses into one write; flush when nothing else is queued.
        if rx.is_empty()
            && let Err(stall) = out.flush().await
        {
            return failed(stall);
        }
    }
    if out.flush().await.is_ok() {
        let _ = tokio::time::timeout(send_timeout, out.writer.shutdown()).await;
    }
}

/// Why a write gave up.
enum Stall {
    /// One write made no progress for the send timeout.
    Timeout,
    Io(std::io::Error),
}

/// The writing half with its batching buffer, which holds small responses until a
/// flush and is freed after one, so an idle connection keeps no buffer.
struct Out<W> {
    writer: W,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Stall> {
        if self.buf.len() + bytes.len() > WRITE_BUFFER_BYTES {
            self.write_buffered().await?;
        }
        if bytes.len() >= WRITE_BUFFER_BYTES {
            write_all(&mut self.writer, bytes, self.timeout).await
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    async fn flush(&mut self) -> Result<(), Stall> {
        self.write_buffered().await?;
        self.buf = Vec::new();
        match tokio::time::timeout(self.timeout, self.writer.flush()).await {
            Err(_) => Err(Stall::Timeout),
            Ok(result) => result.map_err(Stall::Io),
        }
    }

    async fn write_buffered(&mut self) -> Result<(), Stall> {
        let result = write_all(&mut self.writer, &self.buf, self.timeout).await;
        self.buf.clear();
        result
    }
}

/// Write all of `bytes`, failing when one write makes no progress for `timeout`.
async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut bytes: &[u8],
    timeout: Duration,
) -> Result<(), Stall> {
    while !bytes.is_empty() {
        match tokio::time::timeout(timeout, writer.write(bytes)).await {
            Err(_) => return Err(Stall::Timeout),
            Ok(Err(e)) => return Err(Stall::Io(e)),
            Ok(Ok(0)) => return Err(Stall::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => bytes = &bytes[n..],
        }
    }
    Ok(())
}

/// Poll a future once without registering interest; `None` if it is not ready yet.
/// Awaiting it afterwards polls it again with the task's real waker.
fn poll_once<T>(future: Pin<&mut (dyn Future<Output = T> + Send)>) -> Option<T> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_protocols_are_told_apart_by_their_first_bytes() {
        assert_eq!(other_protocol(b"GET "), Some(Other::Http));
        assert_eq!(other_protocol(b"POST"), Some(Other::Http));
        assert_eq!(other_protocol(b"AMQP"), Some(Other::Amqp));
        assert_eq!(other_protocol(&[0x16, 0x03, 0x01, 0x02]), Some(Other::Tls));
        assert_eq!(other_protocol(&[0, 0, 0, 42]), None);
        assert_eq!(other_protocol(&[0x7f, 0xff, 0xff, 0xff]), None);
    }

    #[tokio::test]
    async fn the_rest_of_an_amqp_header_is_read_before_the_answer() {
        let deadline = Duration::from_millis(200);
        // Sent in two pieces, as a slow client might.
        let (mut client, mut server) = tokio::io::duplex(64);
        let reading = tokio::spawn(async move { read_header_rest(&mut server, deadline).await });
        client.write_all(&[0, 0]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&[9, 1]).await.unwrap();
        assert_eq!(reading.await.unwrap(), HeaderRest::Whole);

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0, 0]).await.unwrap();
        assert_eq!(
            read_header_rest(&mut server, deadline).await,
            HeaderRest::Late
        );
        drop(client);

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0]).await.unwrap();
        drop(client);
        assert_eq!(
            read_header_rest(&mut server, deadline).await,
            HeaderRest::Gone
        );
    }
    use std::sync::atomic::AtomicBool;

    fn timed(outgoing: Outgoing) -> Timed {
        Timed {
            outgoing,
            api_key: 0,
            arrived: Instant::now(),
            request_memory: None,
        }
    }

    fn writer<W: AsyncWrite + Unpin + Send + 'static>(
        socket: W,
        rx: mpsc::Receiver<Timed>,
        send_timeout: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        tokio::spawn(write_responses(
            socket,
            rx,
            peer,
            KafkaMetrics::default(),
            Arc::new(AtomicUsize::new(8)),
            send_timeout,
        ))
    }

    /// A response that is ready must reach the client even while the next one waits
    /// (for an fsync, say): otherwise pipelined acks stall behind each other.
    #[tokio::test]
    async fn ready_responses_are_sent_before_waiting_on_a_later_one() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::channel(8);
        tx.send(timed(Outgoing::Ready(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        tx.send(timed(Outgoing::Later(Box::pin(std::future::pending()))))
            .await
            .unwrap();
        let writer = writer(server, rx, Duration::from_secs(60));
        let mut client = client;
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the ready response was held back behind the pending one")
            .unwrap();
        assert_eq!(&got, b"first");
        writer.abort();
    }

    /// A client that does not read holds one response: the next `Later` (a fetch) is
    /// not even started, and the connection is closed after the send timeout.
    #[tokio::test]
    async fn a_socket_that_does_not_drain_stops_the_next_response_and_times_out() {
        let (client, server) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(8);
        tx.send(timed(Outgoing::Ready(Bytes::from(vec![7u8; 1 << 20]))))
            .await
            .unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        tx.send(timed(Outgoing::Later(Box::pin(async move {
            flag.store(true, Ordering::SeqCst);
            Some(Reply::from(Bytes::from_static(b"fetch")))
        }))))
        .await
        .unwrap();
        let writer = writer(server, rx, Duration::from_millis(200));
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("a stalled socket must be given up after the send timeout")
            .unwrap();
        assert!(
            !started.load(Ordering::SeqCst),
            "the fetch was built while the socket was full"
        );
        drop(client);
    }

    #[tokio::test]
    async fn frames_arrive_whole_across_partial_reads_and_truncation_is_an_error() {
        let memory = herald_broker::MemoryBudget::new(1 << 20);
        let (mut client, mut server) = tokio::io::duplex(4);
        let sender = tokio::spawn(async move {
            client.write_all(b"0123456789abc").await.unwrap();
        });
        let second = Duration::from_secs(10);
        let (frame, reserved) = read_frame(&mut server, 10, &memory, second)
            .await
            .ok()
            .unwrap();
        assert_eq!(&frame[..], b"0123456789");
        assert_eq!(memory.used(), 10);
        drop(reserved);
        assert_eq!(memory.used(), 0);
        sender.await.unwrap();
        let err = read_frame(&mut server, 10, &memory, second).await.err();
        assert!(
            matches!(err, Some(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        );
    }

    #[tokio::test]
    async fn a_trickled_request_is_given_up_after_the_read_timeout() {
        let memory = herald_broker::MemoryBudget::new(1 << 20);
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"012").await.unwrap();
        let err = read_frame(&mut server, 100, &memory, Duration::from_millis(100))
            .await
            .err();
        assert!(matches!(err, Some(ReadError::Slow)));
        assert_eq!(memory.used(), 0, "the reservation went with the request");
    }
}
