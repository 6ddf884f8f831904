//! One AMQP connection over any byte stream: the handshake (protocol header, start,
//! SASL PLAIN/AMQPLAIN, tune, open), then the method loop over its channels. Frames
//! are read by this task; everything it and its consumers send goes through one
//! bounded queue to a writer task (heartbeats when idle, `send_timeout_ms` when the
//! client stops reading), so a client that never reads stops its own consumers, not
//! the broker.
//!
//! Errors follow the spec and RabbitMQ: soft errors (403, 404, 405, 406) close the
//! channel with `channel.close` and leave the connection up; hard errors (501..541)
//! send `connection.close` and end the connection after its close-ok (or a short
//! wait). Every exception is logged with the peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{
    AMQPClass, access, basic, channel as chan, confirm, connection as conn, exchange, queue,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Bytes, BytesMut};
use herald_broker::amqp::{AmqpError, DeclareExchange, DeclareQueue, Message, Published, codes};
use herald_broker::{Broker, PendingAppend, Principal};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::AmqpConfig;
use crate::assembly::Assembly;
use crate::consumer::{
    ChannelShared, ConsumerTask, Out, Outgoing, Settle, SettleTx, delivery_frames,
};
use crate::frame::{self, FRAME_MIN_SIZE, FrameReader, PROTOCOL_HEADER, RawFrame, Read};
use crate::metrics::{AmqpMetrics, Held};
use crate::reply_to::{self, ReplyTo};
use crate::values::{short, table_to_broker};

/// Frames (encoded) queued for the writer; the reader and consumers wait beyond it.
const WRITE_QUEUE: usize = 256;
/// Publishes waiting for their confirm, per channel; the reader waits beyond it.
const CONFIRM_QUEUE: usize = 4_096;
/// After sending connection.close, how long to wait for close-ok.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Writes gathered into one socket write.
const WRITE_BATCH_BYTES: usize = 64 << 10;

pub struct Connection {
    config: Arc<AmqpConfig>,
    broker: Arc<Broker>,
    metrics: AmqpMetrics,
    peer: SocketAddr,
    reply_to: ReplyTo,
}

/// A connection exception: code, text, and the method that caused it.
struct Hard {
    code: u16,
    text: String,
    class_id: u16,
    method_id: u16,
}

impl Hard {
    fn new(code: u16, text: impl Into<String>) -> Hard {
        Hard {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }
}

/// What the handshake settled.
struct Tuned {
    frame_max: usize,
    channel_max: u16,
    heartbeat: Option<Duration>,
    user: String,
    cancel_notify: bool,
}

impl Connection {
    pub fn new(
        config: Arc<AmqpConfig>,
        broker: Arc<Broker>,
        metrics: AmqpMetrics,
        peer: SocketAddr,
        reply_to: ReplyTo,
    ) -> Connection {
        Connection {
            config,
            broker,
            metrics,
            peer,
            reply_to,
        }
    }

    pub async fn run<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let _held = self.metrics.connection();
        let (read, mut write) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read);
        let handshake = Duration::from_millis(self.config.handshake_timeout_ms);
        let tuned = match tokio::time::timeout(handshake, self.handshake(&mut reader, &mut write))
            .await
        {
            Ok(Ok(tuned)) => tuned,
            Ok(Err(Some(hard))) => {
                self.metrics.exception();
                tracing::warn!(peer = %self.peer, code = hard.code, "AMQP handshake refused: {}", hard.text);
                let close = close_frame(&hard);
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    write.write_all(&close).await?;
                    write.flush().await
                })
                .await;
                // The client answers close-ok (or closes); either ends it.
                let _ =
                    tokio::time::timeout(CLOSE_WAIT, reader.next(FRAME_MIN_SIZE as usize)).await;
                return;
            }
            Ok(Err(None)) => return,
            Err(_) => {
                tracing::warn!(peer = %self.peer, "AMQP handshake not finished within handshake_timeout_ms; closed");
                return;
            }
        };
        let connection_id = self.broker.amqp_connection_id();
        let (tx, rx) = mpsc::channel::<Outgoing>(WRITE_QUEUE);
        let write_bytes = Arc::new(Semaphore::new(self.config.write_queue_bytes));
        let out = Out::new(tx, write_bytes.clone(), self.config.write_queue_bytes);
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let settler = tokio::spawn(crate::consumer::settle_task(
            self.broker.clone(),
            self.metrics.clone(),
            settle_rx,
        ));
        let send_timeout = Duration::from_millis(self.config.send_timeout_ms);
        let (writer_done_tx, writer_done) = tokio::sync::oneshot::channel::<()>();
        let peer = self.peer;
        let writer = tokio::spawn(async move {
            write_loop(
                write,
                rx,
                write_bytes.clone(),
                tuned.heartbeat,
                send_timeout,
                peer,
            )
            .await;
            // Whoever waits for room in the queue learns the connection is gone.
            write_bytes.close();
            let _ = writer_done_tx.send(());
        });
        tracing::debug!(peer = %self.peer, user = %tuned.user, "AMQP connection open");
        let mut session = Session {
            config: self.config.clone(),
            broker: self.broker.clone(),
            metrics: self.metrics.clone(),
            peer: self.peer,
            principal: Principal::user(&tuned.user),
            connection_id,
            frame_max: tuned.frame_max,
            channel_max: tuned.channel_max,
            cancel_notify: tuned.cancel_notify,
            out,
            settle: settle_tx,
            settle_pending: false,
            channels: HashMap::new(),
            assembly: Assembly::default(),
            reply_to: self.reply_to.clone(),
        };
        session.run(&mut reader, tuned.heartbeat, writer_done).await;
        session.close_all_channels();
        let Session { out, settle, .. } = session;
        drop(settle);
        let _ = settler.await;
        self.broker.amqp_connection_closed(connection_id).await;
        drop(out);
        let _ = tokio::time::timeout(CLOSE_WAIT, writer).await;
    }

    /// Protocol header through open-ok. `Err(None)`: the peer went away or spoke
    /// another protocol (answered as the spec says); `Err(Some)`: refused with a close.
    async fn handshake<R, W>(
        &self,
        reader: &mut FrameReader<R>,
        write: &mut W,
    ) -> Result<Tuned, Option<Hard>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let header = reader.protocol_header().await.map_err(|_| None)?;
        let Some(header) = header else {
            return Err(None);
        };
        if header != PROTOCOL_HEADER {
            let what = if header.starts_with(b"GET ") || header.starts_with(b"POST") {
                "an HTTP request"
            } else if header[0] == 0x16 && header[1] == 0x03 {
                "a TLS ClientHello (TLS is not enabled on this AMQP listener)"
            } else if header.starts_with(b"AMQP") {
                "an AMQP protocol header of another version (Herald speaks AMQP 0-9-1)"
            } else {
                "bytes that are not an AMQP 0-9-1 protocol header"
            };
            tracing::warn!(peer = %self.peer, "AMQP port got {what}; answered with the 0-9-1 header and closed");
            let _ = write.write_all(&PROTOCOL_HEADER).await;
            let _ = write.shutdown().await;
            return Err(None);
        }
        let start = conn::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: LongString::from("PLAIN AMQPLAIN"),
            locales: LongString::from("en_US"),
        };
        send_now(
            write,
            frame::method(0, AMQPClass::Connection(conn::AMQPMethod::Start(start))),
        )
        .await?;
        let start_ok = match self.handshake_method(reader).await? {
            AMQPClass::Connection(conn::AMQPMethod::StartOk(ok)) => ok,
            _ => {
                return Err(Some(Hard::new(
                    codes::COMMAND_INVALID,
                    "COMMAND_INVALID - expected 'connection.start_ok'",
                )));
            }
        };
        let cancel_notify = capability(&start_ok.client_properties, "consumer_cancel_notify");
        let user = self.authenticate(&start_ok)?;
        let tune = conn::Tune {
            channel_max: self.config.channel_max,
            frame_max: self.config.frame_max,
            heartbeat: self.config.heartbeat_s,
        };
        send_now(
            write,
            frame::method(0, AMQPClass::Connection(conn::AMQPMethod::Tune(tune))),
        )
        .await?;
        let tune_ok = match self.handshake_method(reader).await? {
            AMQPClass::Connection(conn::AMQPMethod::TuneOk(ok)) => ok,
            _ => {
                return Err(Some(Hard::new(
                    codes::COMMAND_INVALID,
                    "COMMAND_INVALID - expected 'connection.tune_ok'",
                )));
            }
        };
        let frame_max = match tune_ok.frame_max {
            0 => self.config.frame_max,
            n if n > self.config.frame_max => {
                return Err(Some(Hard::new(
                    codes::NOT_ALLOWED,
                    format!(
                        "NOT_ALLOWED - failed to negotiate connection parameters: frame_max={n} > {} max size",
                        self.config.frame_max
                    ),
                )));
            }
            n if n < FRAME_MIN_SIZE => {
                return Err(Some(Hard::new(
                    codes::NOT_ALLOWED,
                    format!(
                        "NOT_ALLOWED - failed to negotiate connection parameters: frame_max={n} < {FRAME_MIN_SIZE} min size"
                    ),
                )));
            }
            n => n,
        };
        let channel_max = match (tune_ok.channel_max, self.config.channel_max) {
            (0, 0) => u16::MAX,
            (0, ours) => ours,
            (theirs, 0) => theirs,
            (theirs, ours) => theirs.min(ours),
        };
        let heartbeat =
            (tune_ok.heartbeat > 0).then(|| Duration::from_secs(u64::from(tune_ok.heartbeat)));
        let open = match self.handshake_method(reader).await? {
            AMQPClass::Connection(conn::AMQPMethod::Open(open)) => open,
            _ => {
                return Err(Some(Hard::new(
                    codes::COMMAND_INVALID,
                    "COMMAND_INVALID - expected 'connection.open'",
                )));
            }
        };
        if open.virtual_host.as_str() != "/" {
            return Err(Some(Hard::new(
                codes::NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - vhost {} not found",
                    open.virtual_host.as_str()
                ),
            )));
        }
        send_now(
            write,
            frame::method(
                0,
                AMQPClass::Connection(conn::AMQPMethod::OpenOk(conn::OpenOk {})),
            ),
        )
        .await?;
        Ok(Tuned {
            frame_max: frame_max as usize,
            channel_max,
            heartbeat,
            user,
            cancel_notify,
        })
    }

    /// The next method on channel 0 during the handshake (heartbeats skipped).
    async fn handshake_method<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
    ) -> Result<AMQPClass, Option<Hard>> {
        loop {
            match reader
                .next(FRAME_MIN_SIZE.max(self.config.frame_max) as usize)
                .await
            {
                Ok(Read::Frame(RawFrame {
                    kind: frame::FRAME_HEARTBEAT,
                    ..
                })) => continue,
                Ok(Read::Frame(RawFrame {
                    kind: frame::FRAME_METHOD,
                    channel: 0,
                    payload,
                })) => {
                    return frame::decode_method(&payload).map_err(|e| {
                        Some(Hard::new(
                            codes::SYNTAX_ERROR,
                            format!("SYNTAX_ERROR - {e}"),
                        ))
                    });
                }
                Ok(Read::Frame(_)) => {
                    return Err(Some(Hard::new(
                        codes::UNEXPECTED_FRAME,
                        "UNEXPECTED_FRAME - expected a method on channel 0",
                    )));
                }
                Ok(Read::Invalid(error)) => {
                    return Err(Some(Hard::new(
                        codes::FRAME_ERROR,
                        format!("FRAME_ERROR - {error}"),
                    )));
                }
                Ok(Read::Eof | Read::Truncated) | Err(_) => return Err(None),
            }
        }
    }

    fn authenticate(&self, start_ok: &conn::StartOk) -> Result<String, Option<Hard>> {
        let mechanism = start_ok.mechanism.as_str();
        let credentials = match mechanism {
            "PLAIN" => {
                // [authzid] NUL authcid NUL passwd
                let mut parts = start_ok.response.as_bytes().split(|b| *b == 0);
                let _authzid = parts.next();
                match (parts.next(), parts.next()) {
                    (Some(user), Some(pass)) => Some((user.to_vec(), pass.to_vec())),
                    _ => None,
                }
            }
            "AMQPLAIN" => amqplain(start_ok.response.as_bytes()),
            other => {
                return Err(Some(Hard::new(
                    codes::ACCESS_REFUSED,
                    format!(
                        "ACCESS_REFUSED - unsupported authentication mechanism '{other}' (use PLAIN or AMQPLAIN)"
                    ),
                )));
            }
        };
        let refused = || {
            Some(Hard::new(
                codes::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ),
            ))
        };
        let Some((user, pass)) = credentials else {
            return Err(refused());
        };
        let user = String::from_utf8_lossy(&user).into_owned();
        if user != self.config.default_user || pass != self.config.default_pass.as_bytes() {
            tracing::warn!(peer = %self.peer, user = %user, "AMQP login refused: wrong user name or password");
            return Err(refused());
        }
        if !self.peer.ip().is_loopback() {
            tracing::warn!(peer = %self.peer, user = %user, "AMQP login refused: the built-in user may only connect from loopback");
            return Err(refused());
        }
        Ok(user)
    }
}

/// AMQPLAIN's response: a field table without its length prefix.
fn amqplain(response: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut framed = (response.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let text = |key: &str| match table.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.as_bytes().to_vec()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().as_bytes().to_vec()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

fn capability(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for name in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "exchange_exchange_bindings",
        "per_consumer_qos",
        "authentication_failure_close",
        "connection.blocked",
    ] {
        caps.insert(name.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("Herald"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("cluster_name".into(), text("herald"));
    props.insert(
        "information".into(),
        text("Herald event broker: one log, many faces"),
    );
    props
}

async fn send_now<W: AsyncWrite + Unpin>(write: &mut W, bytes: Bytes) -> Result<(), Option<Hard>> {
    write.write_all(&bytes).await.map_err(|_| None)?;
    write.flush().await.map_err(|_| None)
}

fn close_frame(hard: &Hard) -> Bytes {
    frame::method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
            reply_code: hard.code,
            reply_text: short(&hard.text),
            class_id: hard.class_id,
            method_id: hard.method_id,
        })),
    )
}

/// Sends what the reader and consumers queue, gathering small frames into one write;
/// a heartbeat when nothing was sent for half the heartbeat interval.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::Receiver<Outgoing>,
    write_bytes: Arc<Semaphore>,
    heartbeat: Option<Duration>,
    send_timeout: Duration,
    peer: SocketAddr,
) {
    let mut buf = BytesMut::new();
    loop {
        let heartbeat_frame = || Outgoing {
            bytes: Bytes::from_static(&frame::HEARTBEAT),
            charge: 0,
        };
        let first = match heartbeat {
            Some(every) => match tokio::time::timeout(every / 2, rx.recv()).await {
                Ok(next) => next,
                Err(_) => Some(heartbeat_frame()),
            },
            None => rx.recv().await,
        };
        let Some(first) = first else { break };
        let mut charged = first.charge as usize;
        buf.extend_from_slice(&first.bytes);
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    charged += next.charge as usize;
                    buf.extend_from_slice(&next.bytes);
                }
                Err(_) => break,
            }
        }
        match tokio::time::timeout(send_timeout, write.write_all(&buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(%peer, "AMQP client stopped reading for send_timeout_ms; closed");
                return;
            }
        }
        // Written: the bytes are the kernel's now.
        write_bytes.add_permits(charged);
        buf.clear();
        if buf.capacity() > 4 * WRITE_BATCH_BYTES {
            buf = BytesMut::new();
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        write.flush().await?;
        write.shutdown().await
    })
    .await;
}

/// A publish in assembly: the method, then the content header, then body frames.
/// Taken out of its channel only with `end`, which keeps the session's `Assembly` true.
struct Incoming {
    /// The body's bytes, taken from the broker-wide request pool at the content header
    /// (the reader waits for them: a client cannot hold more than the pool).
    _memory: Vec<herald_broker::limits::Reservation>,
    /// When its basic.publish came: the whole message must follow within
    /// `read_timeout_ms`.
    started: Instant,
    publish: basic::Publish,
    header: Option<frame::ContentHeader>,
    body: BytesMut,
    /// The first body frame, kept without a copy when it is the whole body.
    single: Option<Bytes>,
}

impl Incoming {
    /// Taken out of channel `id` (whole, refused or dropped with its channel).
    fn end(&self, id: u16, assembly: &mut Assembly) {
        assembly.end(id, self.started, !self._memory.is_empty());
    }
}

struct Consumer {
    stop: watch::Sender<bool>,
    gate: Arc<std::sync::Mutex<bool>>,
    queue: String,
    slot: u64,
    /// Its own prefetch window and the window's current size.
    window: Arc<Semaphore>,
    window_size: usize,
}

impl Consumer {
    /// A new prefetch: more room at once; less room as deliveries in hand are settled
    /// (permits held by unsettled deliveries are not taken back).
    fn resize_window(&mut self, size: usize) {
        if size > self.window_size {
            self.window.add_permits(size - self.window_size);
        } else {
            // Permits held by deliveries cannot be forgotten now: they come back when
            // those settle, an overshoot of at most one window.
            let _ = self.window.forget_permits(self.window_size - size);
        }
        self.window_size = size;
    }

    /// Stop the consumer: after this returns it enqueues no more deliveries.
    fn halt(&self) {
        if let Ok(mut stopped) = self.gate.lock() {
            *stopped = true;
        }
        let _ = self.stop.send(true);
    }
}

struct Channel {
    _held: Held,
    /// Set after this side sent channel.close: everything but close/close-ok is dropped.
    closing: bool,
    incoming: Option<Incoming>,
    /// Confirm mode: the next publish sequence number and the confirm task's queue.
    confirm: Option<(u64, ConfirmTx)>,
    shared: Arc<ChannelShared>,
    consumers: HashMap<String, Consumer>,
    /// basic.qos: per consumer (global false) for consumers created after it.
    consumer_prefetch: u16,
    /// basic.qos with global: shared by the channel's consumers.
    channel_window: Option<Arc<Semaphore>>,
    last_queue: Option<String>,
    /// Direct reply-to: the channel's reply consumer (token, consumer tag).
    reply: Option<(String, String)>,
}

/// What a binding method binds: a queue (queue.bind) or an exchange (exchange.bind).
enum BindTo {
    Queue(String),
    Exchange(String),
}

/// The rest of a binding method: the source exchange, the key and the arguments.
struct BindingChange<'a> {
    source: &'a str,
    routing_key: &'a str,
    arguments: &'a FieldTable,
    /// Bind, or unbind.
    bind: bool,
    nowait: bool,
}

impl<'a> BindingChange<'a> {
    fn new(
        source: &'a amq_protocol::types::ShortString,
        routing_key: &'a amq_protocol::types::ShortString,
        arguments: &'a FieldTable,
    ) -> BindingChange<'a> {
        BindingChange {
            source: source.as_str(),
            routing_key: routing_key.as_str(),
            arguments,
            bind: true,
            nowait: false,
        }
    }

    fn bind(self, bind: bool, nowait: bool) -> BindingChange<'a> {
        BindingChange {
            bind,
            nowait,
            ..self
        }
    }
}

type PendingAppends = Vec<PendingAppend>;
/// What a confirm waits for: the publish's sequence number, its appends (None: not
/// stored or refused by a full queue: a nack), and the drop-head queues to trim once
/// they are durable, before the ack.
struct Confirm {
    tag: u64,
    appends: Option<PendingAppends>,
    trim: Vec<String>,
}

type ConfirmTx = mpsc::Sender<Confirm>;

struct Session {
    config: Arc<AmqpConfig>,
    broker: Arc<Broker>,
    metrics: AmqpMetrics,
    peer: SocketAddr,
    principal: Principal,
    connection_id: u64,
    frame_max: usize,
    channel_max: u16,
    cancel_notify: bool,
    out: Out,
    settle: SettleTx,
    /// Settle work was queued since the last barrier.
    settle_pending: bool,
    channels: HashMap<u16, Channel>,
    /// The channels' messages in assembly, kept as they change (checked every frame).
    assembly: Assembly,
    reply_to: ReplyTo,
}

/// What handling a frame asks of the loop.
enum Next {
    Continue,
    /// The client closed (we answered close-ok) or went away.
    End,
    Hard(Hard),
}

/// A channel exception for the method being handled.
struct Soft(AmqpError);

impl From<AmqpError> for Soft {
    fn from(e: AmqpError) -> Soft {
        Soft(e)
    }
}

impl Session {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        heartbeat: Option<Duration>,
        mut writer_done: tokio::sync::oneshot::Receiver<()>,
    ) {
        // RabbitMQ closes after two missed heartbeats.
        let silence_max = heartbeat.map(|h| h * 2);
        let read_timeout = Duration::from_millis(self.config.read_timeout_ms);
        // The reader wakes at least this often to look at the clocks below (reading a
        // frame is cancel-safe: what arrived stays buffered).
        let tick = silence_max.map_or(read_timeout, |s| s.min(read_timeout));
        let mut last_frame = Instant::now();
        loop {
            let read = tokio::select! {
                read = tokio::time::timeout(tick, reader.next(self.frame_max)) => read.ok(),
                _ = &mut writer_done => return,
            };
            let now = Instant::now();
            let next = match read {
                None => {
                    if silence_max.is_some_and(|max| now - last_frame >= max) {
                        tracing::warn!(peer = %self.peer, "missed heartbeats from the AMQP client; closed");
                        return;
                    }
                    if reader.buffered() > 0 && now - last_frame >= read_timeout {
                        tracing::warn!(peer = %self.peer, "AMQP frame not finished within request_read_timeout_ms; closed");
                        return;
                    }
                    match self.late_message(now, read_timeout) {
                        Some(hard) => Next::Hard(hard),
                        None => continue,
                    }
                }
                Some(Err(_)) | Some(Ok(Read::Eof)) => return,
                Some(Ok(Read::Truncated)) => {
                    tracing::warn!(peer = %self.peer, "AMQP client closed the connection inside a frame");
                    return;
                }
                Some(Ok(Read::Invalid(error))) => Next::Hard(Hard::new(
                    codes::FRAME_ERROR,
                    format!("FRAME_ERROR - {error}"),
                )),
                Some(Ok(Read::Frame(raw))) => {
                    last_frame = now;
                    match self.late_message(now, read_timeout) {
                        Some(hard) => Next::Hard(hard),
                        None => self.frame(raw).await,
                    }
                }
            };
            match next {
                Next::Continue => {}
                Next::End => return,
                Next::Hard(hard) => {
                    self.hard_close(reader, hard).await;
                    return;
                }
            }
        }
    }

    /// A message whose basic.publish came longer ago than `read_timeout` and is not
    /// whole yet: its connection is closed (its reserved memory goes with it).
    fn late_message(&self, now: Instant, read_timeout: Duration) -> Option<Hard> {
        let (started, id) = self.assembly.oldest()?;
        (now - started >= read_timeout).then(|| {
            Hard::new(
                codes::RESOURCE_ERROR,
                format!(
                    "RESOURCE_ERROR - the message on channel {id} did not arrive whole within request_read_timeout_ms"
                ),
            )
        })
    }

    async fn hard_close<R: AsyncRead + Unpin>(&mut self, reader: &mut FrameReader<R>, hard: Hard) {
        self.metrics.exception();
        tracing::warn!(peer = %self.peer, code = hard.code, "AMQP connection exception: {}", hard.text);
        self.close_all_channels();
        if !self.out.send(close_frame(&hard)).await {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            loop {
                match reader.next(self.frame_max).await {
                    Ok(Read::Frame(RawFrame {
                        kind: frame::FRAME_METHOD,
                        channel: 0,
                        payload,
                    })) => {
                        if let Ok(AMQPClass::Connection(
                            conn::AMQPMethod::CloseOk(_) | conn::AMQPMethod::Close(_),
                        )) = frame::decode_method(&payload)
                        {
                            return;
                        }
                    }
                    Ok(Read::Frame(_)) => {}
                    _ => return,
                }
            }
        })
        .await;
    }

    async fn frame(&mut self, raw: RawFrame) -> Next {
        match raw.kind {
            frame::FRAME_HEARTBEAT => {
                if raw.channel != 0 {
                    return Next::Hard(Hard::new(
                        codes::FRAME_ERROR,
                        "FRAME_ERROR - heartbeat frame on a non-zero channel",
                    ));
                }
                Next::Continue
            }
            frame::FRAME_METHOD => {
                let method = match frame::decode_method(&raw.payload) {
                    Ok(method) => method,
                    Err(e) => {
                        return Next::Hard(Hard::new(
                            codes::SYNTAX_ERROR,
                            format!("SYNTAX_ERROR - {e}"),
                        ));
                    }
                };
                if raw.channel == 0 {
                    return self.connection_method(method).await;
                }
                self.channel_method(raw.channel, method).await
            }
            frame::FRAME_HEADER | frame::FRAME_BODY => self.content(raw).await,
            other => Next::Hard(Hard::new(
                codes::FRAME_ERROR,
                format!("FRAME_ERROR - unknown frame type {other}"),
            )),
        }
    }

    async fn connection_method(&mut self, method: AMQPClass) -> Next {
        match method {
            AMQPClass::Connection(conn::AMQPMethod::Close(close)) => {
                tracing::debug!(peer = %self.peer, code = close.reply_code, "AMQP client closed the connection");
                self.close_all_channels();
                self.out
                    .send(frame::method(
                        0,
                        AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                    ))
                    .await;
                Next::End
            }
            AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)) => Next::End,
            AMQPClass::Connection(
                conn::AMQPMethod::Blocked(_) | conn::AMQPMethod::Unblocked(_),
            ) => Next::Continue,
            AMQPClass::Connection(conn::AMQPMethod::UpdateSecret(_)) => {
                self.out
                    .send(frame::method(
                        0,
                        AMQPClass::Connection(conn::AMQPMethod::UpdateSecretOk(
                            conn::UpdateSecretOk {},
                        )),
                    ))
                    .await;
                Next::Continue
            }
            other => Next::Hard(hard_for(
                codes::COMMAND_INVALID,
                format!("COMMAND_INVALID - {} on channel 0", method_name(&other)),
                &other,
            )),
        }
    }

    async fn channel_method(&mut self, id: u16, method: AMQPClass) -> Next {
        if let AMQPClass::Channel(chan::AMQPMethod::Open(_)) = method {
            if self.channels.contains_key(&id) {
                return Next::Hard(hard_for(
                    codes::CHANNEL_ERROR,
                    "CHANNEL_ERROR - second 'channel.open' seen",
                    &method,
                ));
            }
            if id > self.channel_max {
                return Next::Hard(hard_for(
                    codes::NOT_ALLOWED,
                    format!(
                        "NOT_ALLOWED - number of channels opened ({id}) has reached the negotiated channel_max ({})",
                        self.channel_max
                    ),
                    &method,
                ));
            }
            self.channels.insert(
                id,
                Channel {
                    _held: self.metrics.channel(),
                    closing: false,
                    incoming: None,
                    confirm: None,
                    shared: Arc::new(ChannelShared::default()),
                    consumers: HashMap::new(),
                    consumer_prefetch: 0,
                    channel_window: None,
                    last_queue: None,
                    reply: None,
                },
            );
            self.reply(
                id,
                AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
            )
            .await;
            return Next::Continue;
        }
        let Some(channel) = self.channels.get_mut(&id) else {
            return Next::Hard(hard_for(
                codes::CHANNEL_ERROR,
                "CHANNEL_ERROR - expected 'channel.open'",
                &method,
            ));
        };
        if channel.closing {
            if let AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) = method {
                self.channels.remove(&id);
            } else if let AMQPClass::Channel(chan::AMQPMethod::Close(_)) = method {
                self.channels.remove(&id);
                self.reply(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                )
                .await;
            }
            return Next::Continue;
        }
        if channel.incoming.is_some() {
            return Next::Hard(hard_for(
                codes::UNEXPECTED_FRAME,
                format!(
                    "UNEXPECTED_FRAME - expected content header for class 60, got {}",
                    method_name(&method)
                ),
                &method,
            ));
        }
        let ids = (method_class_id(&method), method_id(&method));
        match self.method(id, method).await {
            Ok(next) => next,
            Err(Soft(error)) if error.is_hard() => Next::Hard(Hard {
                code: error.code,
                text: error.text,
                class_id: ids.0,
                method_id: ids.1,
            }),
            Err(Soft(error)) => {
                self.soft_close(id, error, ids).await;
                Next::Continue
            }
        }
    }

    async fn soft_close(&mut self, id: u16, error: AmqpError, (class_id, method_id): (u16, u16)) {
        self.metrics.exception();
        tracing::info!(peer = %self.peer, channel = id, code = error.code, "AMQP channel exception: {}", error.text);
        self.close_channel(id, true);
        self.reply(
            id,
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: error.code,
                reply_text: short(&error.text),
                class_id,
                method_id,
            })),
        )
        .await;
    }

    async fn reply(&self, channel: u16, method: AMQPClass) {
        self.out.send(frame::method(channel, method)).await;
    }

    /// The reply to a method, unless the client asked for none (`nowait`).
    async fn reply_unless(&self, nowait: bool, channel: u16, method: AMQPClass) {
        if !nowait {
            self.reply(channel, method).await;
        }
    }

    /// Stop a channel's consumers and put its unsettled deliveries back. With
    /// `keep`, the channel stays (closing) until the client's close-ok.
    fn close_channel(&mut self, id: u16, keep: bool) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        for (_, consumer) in channel.consumers.drain() {
            consumer.halt();
            let broker = self.broker.clone();
            tokio::spawn(async move { broker.amqp_cancel(&consumer.queue, consumer.slot).await });
        }
        let receipts: Vec<String> = channel
            .shared
            .take_all()
            .into_iter()
            .map(|u| u.receipt)
            .collect();
        if !receipts.is_empty() {
            self.settle_pending = true;
            let _ = self.settle.send(Settle::Release(receipts));
        }
        if let Some((token, _)) = channel.reply.take() {
            self.reply_to.remove(&token);
        }
        if let Some(incoming) = channel.incoming.take() {
            incoming.end(id, &mut self.assembly);
        }
        channel.closing = true;
        if !keep {
            self.channels.remove(&id);
        }
    }

    fn close_all_channels(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.close_channel(id, false);
        }
    }

    fn channel(&mut self, id: u16) -> &mut Channel {
        // Callers run only for a channel that exists (checked in channel_method).
        self.channels
            .get_mut(&id)
            .expect("channel checked by the caller")
    }

    /// The queue a method names, or the channel's last declared queue when empty.
    fn queue_name(&mut self, id: u16, name: &str) -> Result<String, Soft> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.channel(id).last_queue.clone().ok_or_else(|| {
            Soft(AmqpError::new(
                codes::NOT_FOUND,
                "NOT_FOUND - no previously declared queue",
            ))
        })
    }

    /// Wait until every ack, nack and reject sent so far is settled, so the methods
    /// after them (get, purge, delete, declare...) see their outcome, as they would in
    /// RabbitMQ. Acks and publishes themselves do not wait.
    async fn settled(&mut self) {
        if !std::mem::take(&mut self.settle_pending) {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.settle.send(Settle::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    async fn method(&mut self, id: u16, method: AMQPClass) -> Result<Next, Soft> {
        let who = self.principal.clone();
        if !matches!(
            method,
            AMQPClass::Basic(
                basic::AMQPMethod::Ack(_)
                    | basic::AMQPMethod::Nack(_)
                    | basic::AMQPMethod::Reject(_)
                    | basic::AMQPMethod::Publish(_)
            )
        ) {
            self.settled().await;
        }
        let conn = self.connection_id;
        match method {
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                self.close_channel(id, false);
                self.reply(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                )
                .await;
            }
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => {}
            AMQPClass::Channel(chan::AMQPMethod::Flow(flow)) => {
                self.reply(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk {
                        active: flow.active,
                    })),
                )
                .await;
            }
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.reply(
                    id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                )
                .await;
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
                self.broker
                    .amqp_declare_exchange(
                        &who,
                        DeclareExchange {
                            name: d.exchange.as_str().to_string(),
                            kind: d.kind.as_str().to_string(),
                            passive: d.passive,
                            durable: d.durable,
                            auto_delete: d.auto_delete,
                            internal: d.internal,
                            arguments: table_to_broker(&d.arguments),
                        },
                    )
                    .await?;
                self.reply_unless(
                    d.nowait,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                )
                .await;
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => {
                self.broker
                    .amqp_delete_exchange(&who, d.exchange.as_str(), d.if_unused)
                    .await?;
                self.reply_unless(
                    d.nowait,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                )
                .await;
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
                let to = BindTo::Exchange(b.destination.to_string());
                let change = BindingChange::new(&b.source, &b.routing_key, &b.arguments);
                self.change_binding(id, to, change.bind(true, b.nowait))
                    .await?;
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => {
                let to = BindTo::Exchange(b.destination.to_string());
                let change = BindingChange::new(&b.source, &b.routing_key, &b.arguments);
                self.change_binding(id, to, change.bind(false, b.nowait))
                    .await?;
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(d))
                if d.queue.as_str() == reply_to::PSEUDO_QUEUE =>
            {
                // The pseudo-queue exists for everyone; it holds nothing.
                self.reply_unless(
                    d.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: short(reply_to::PSEUDO_QUEUE),
                        message_count: 0,
                        // As RabbitMQ answers.
                        consumer_count: 1,
                    })),
                )
                .await;
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                let declared = self
                    .broker
                    .amqp_declare_queue(
                        &who,
                        conn,
                        DeclareQueue {
                            name: d.queue.as_str().to_string(),
                            passive: d.passive,
                            durable: d.durable,
                            exclusive: d.exclusive,
                            auto_delete: d.auto_delete,
                            arguments: table_to_broker(&d.arguments),
                            // A message and its properties (one frame at most) fit.
                            record_bytes_max: Some(
                                self.config.message_bytes_max.saturating_add(self.frame_max),
                            ),
                        },
                    )
                    .await?;
                self.channel(id).last_queue = Some(declared.name.clone());
                self.reply_unless(
                    d.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: short(&declared.name),
                        message_count: declared.messages,
                        consumer_count: declared.consumers,
                    })),
                )
                .await;
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
                let to = BindTo::Queue(self.queue_name(id, b.queue.as_str())?);
                let change = BindingChange::new(&b.exchange, &b.routing_key, &b.arguments);
                self.change_binding(id, to, change.bind(true, b.nowait))
                    .await?;
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                // queue.unbind has no nowait: it is always answered.
                let to = BindTo::Queue(self.queue_name(id, b.queue.as_str())?);
                let change = BindingChange::new(&b.exchange, &b.routing_key, &b.arguments);
                self.change_binding(id, to, change.bind(false, false))
                    .await?;
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                let name = self.queue_name(id, p.queue.as_str())?;
                let count = self.broker.amqp_purge_queue(&who, conn, &name).await?;
                self.reply_unless(
                    p.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: count,
                    })),
                )
                .await;
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
                let name = self.queue_name(id, d.queue.as_str())?;
                let count = self
                    .broker
                    .amqp_delete_queue(&who, conn, &name, d.if_unused, d.if_empty)
                    .await?;
                self.reply_unless(
                    d.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: count,
                    })),
                )
                .await;
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                if q.prefetch_count > 0 && q.global {
                    self.channel(id).channel_window =
                        Some(Arc::new(Semaphore::new(usize::from(q.prefetch_count))));
                } else if q.global {
                    self.channel(id).channel_window = None;
                } else {
                    // Per consumer: for consumers to come, and (as Celery and kombu
                    // expect when the server is not RabbitMQ 3.3+, and as the spec
                    // reads) for the channel's consumers now too.
                    let unacked_max = self.config.unacked_per_consumer_max as usize;
                    let channel = self.channel(id);
                    channel.consumer_prefetch = q.prefetch_count;
                    let size = match q.prefetch_count {
                        0 => unacked_max,
                        n => usize::from(n),
                    };
                    for consumer in channel.consumers.values_mut() {
                        consumer.resize_window(size);
                    }
                }
                self.reply(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                )
                .await;
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => {
                return self.consume(id, c).await;
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                let tag = c.consumer_tag.as_str().to_string();
                if self
                    .channel(id)
                    .reply
                    .as_ref()
                    .is_some_and(|(_, t)| *t == tag)
                    && let Some((token, _)) = self.channel(id).reply.take()
                {
                    self.reply_to.remove(&token);
                }
                if let Some(consumer) = self.channel(id).consumers.remove(&tag) {
                    consumer.halt();
                    self.broker
                        .amqp_cancel(&consumer.queue, consumer.slot)
                        .await;
                }
                self.reply_unless(
                    c.nowait,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: short(&tag),
                    })),
                )
                .await;
            }
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                // channel_method refused a method while a message was in assembly.
                let started = Instant::now();
                self.assembly.begin(id, started);
                self.channel(id).incoming = Some(Incoming {
                    _memory: Vec::new(),
                    started,
                    publish: p,
                    header: None,
                    body: BytesMut::new(),
                    single: None,
                });
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
                let name = self.queue_name(id, g.queue.as_str())?;
                self.get(id, &name, g.no_ack).await?;
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                let taken = self.settle_tags(id, a.delivery_tag, a.multiple)?;
                self.settle_pending = true;
                let _ = self.settle.send(Settle::Ack(taken));
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                let taken = self.settle_tags(id, n.delivery_tag, n.multiple)?;
                self.requeue_or_reject(taken, n.requeue);
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => {
                let taken = self.settle_tags(id, r.delivery_tag, false)?;
                self.requeue_or_reject(taken, r.requeue);
            }
            AMQPClass::Basic(basic::AMQPMethod::Recover(_)) => {
                self.recover(id);
                self.reply(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                )
                .await;
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(_)) => self.recover(id),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.channel(id).confirm.is_none() {
                    let (tx, rx) = mpsc::channel(CONFIRM_QUEUE);
                    tokio::spawn(confirm_task(id, rx, self.out.clone(), self.broker.clone()));
                    self.channel(id).confirm = Some((1, tx));
                }
                self.reply_unless(
                    s.nowait,
                    id,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                )
                .await;
            }
            AMQPClass::Tx(_) => {
                return Err(Soft(AmqpError::new(
                    codes::NOT_IMPLEMENTED,
                    "NOT_IMPLEMENTED - transactions (tx.*) are not supported; use publisher confirms",
                )));
            }
            other => {
                return Err(Soft(AmqpError::new(
                    codes::COMMAND_INVALID,
                    format!(
                        "COMMAND_INVALID - {} is not a client method",
                        method_name(&other)
                    ),
                )));
            }
        }
        Ok(Next::Continue)
    }

    /// queue.bind/unbind and exchange.bind/unbind: one broker call and its answer.
    async fn change_binding(
        &mut self,
        id: u16,
        to: BindTo,
        change: BindingChange<'_>,
    ) -> Result<(), Soft> {
        let BindingChange {
            source,
            routing_key,
            arguments,
            bind,
            nowait,
        } = change;
        let arguments = table_to_broker(arguments);
        let answer = match &to {
            BindTo::Queue(name) => {
                self.broker
                    .amqp_bind_queue(
                        &self.principal,
                        self.connection_id,
                        name,
                        source,
                        routing_key,
                        arguments,
                        bind,
                    )
                    .await?;
                AMQPClass::Queue(if bind {
                    queue::AMQPMethod::BindOk(queue::BindOk {})
                } else {
                    queue::AMQPMethod::UnbindOk(queue::UnbindOk {})
                })
            }
            BindTo::Exchange(destination) => {
                self.broker
                    .amqp_bind_exchange(
                        &self.principal,
                        destination,
                        source,
                        routing_key,
                        arguments,
                        bind,
                    )
                    .await?;
                AMQPClass::Exchange(if bind {
                    exchange::AMQPMethod::BindOk(exchange::BindOk {})
                } else {
                    exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})
                })
            }
        };
        self.reply_unless(nowait, id, answer).await;
        Ok(())
    }

    fn settle_tags(&mut self, id: u16, tag: u64, multiple: bool) -> Result<Vec<String>, Soft> {
        match self.channel(id).shared.take(tag, multiple) {
            Some(taken) => Ok(taken.into_iter().map(|u| u.receipt).collect()),
            None => Err(Soft(AmqpError::new(
                codes::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
            ))),
        }
    }

    fn requeue_or_reject(&mut self, receipts: Vec<String>, requeue: bool) {
        self.settle_pending = true;
        let op = if requeue {
            Settle::Release(receipts)
        } else {
            Settle::Reject {
                receipts,
                reason: "rejected",
            }
        };
        let _ = self.settle.send(op);
    }

    fn recover(&mut self, id: u16) {
        let receipts: Vec<String> = self
            .channel(id)
            .shared
            .take_all()
            .into_iter()
            .map(|u| u.receipt)
            .collect();
        if !receipts.is_empty() {
            self.settle_pending = true;
            let _ = self.settle.send(Settle::Release(receipts));
        }
    }

    async fn consume(&mut self, id: u16, c: basic::Consume) -> Result<Next, Soft> {
        if c.queue.as_str() == reply_to::PSEUDO_QUEUE {
            return self.consume_replies(id, c).await;
        }
        let name = self.queue_name(id, c.queue.as_str())?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", crate::values::random_suffix(22))
        } else {
            c.consumer_tag.as_str().to_string()
        };
        if self.channel(id).consumers.contains_key(&tag) {
            return Ok(Next::Hard(Hard {
                code: codes::NOT_ALLOWED,
                text: format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
                class_id: 60,
                method_id: 20,
            }));
        }
        if self.channel(id).consumers.len() >= self.config.consumers_per_channel_max {
            return Err(Soft(AmqpError::new(
                codes::RESOURCE_ERROR,
                format!(
                    "RESOURCE_ERROR - a channel holds at most {} consumers (amqp_consumers_per_channel_max)",
                    self.config.consumers_per_channel_max
                ),
            )));
        }
        let slot =
            self.broker
                .amqp_consume(&self.principal, self.connection_id, &name, c.exclusive)?;
        let stream_next = if slot.stream {
            match self.stream_start(id, &name, &slot, &c) {
                Ok(next) => Some(next),
                Err(error) => {
                    self.broker.amqp_cancel(&name, slot.id).await;
                    return Err(error);
                }
            }
        } else {
            None
        };
        self.reply_unless(
            c.nowait,
            id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            })),
        )
        .await;
        let unacked_max = self.config.unacked_per_consumer_max as usize;
        let Some(channel) = self.channels.get_mut(&id) else {
            return Ok(Next::Continue);
        };
        let per_consumer = match channel.consumer_prefetch {
            0 => unacked_max,
            n => usize::from(n),
        };
        let window = Arc::new(Semaphore::new(per_consumer));
        let mut windows = vec![window.clone()];
        if let Some(window) = &channel.channel_window {
            windows.push(window.clone());
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let gate = Arc::new(std::sync::Mutex::new(false));
        let task = ConsumerTask {
            broker: self.broker.clone(),
            metrics: self.metrics.clone(),
            channel: id,
            tag: Arc::from(tag.as_str()),
            queue: Arc::from(name.as_str()),
            topic: Arc::from(slot.topic.as_str()),
            no_ack: c.no_ack,
            counts_deliveries: slot.counts_deliveries,
            ttl_ms: slot.ttl_ms,
            windows,
            gather_min: ConsumerTask::gatherer(per_consumer),
            shared: channel.shared.clone(),
            out: self.out.clone(),
            settle: self.settle.clone(),
            frame_max: self.frame_max,
            stop: stop_rx,
            gate: gate.clone(),
            cancel_notify: self.cancel_notify,
            slot: slot.id,
            active: slot.active.clone(),
            stream_next,
        };
        channel.consumers.insert(
            tag,
            Consumer {
                stop: stop_tx,
                gate,
                queue: name,
                slot: slot.id,
                window,
                window_size: per_consumer,
            },
        );
        tokio::spawn(task.run());
        Ok(Next::Continue)
    }

    /// A stream consumer's first offset. As in RabbitMQ it must ack manually and have
    /// a prefetch (acks are its credit).
    fn stream_start(
        &mut self,
        id: u16,
        name: &str,
        slot: &herald_broker::amqp::ConsumerSlot,
        c: &basic::Consume,
    ) -> Result<i64, Soft> {
        if c.no_ack {
            return Err(Soft(herald_broker::amqp::stream_unsupported(
                "automatic acknowledgement",
                name,
            )));
        }
        // A global prefetch does not count: each stream consumer needs its own credit.
        if self.channel(id).consumer_prefetch == 0 {
            return Err(Soft(AmqpError::new(
                codes::PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{name}' in vhost '/''"
                ),
            )));
        }
        let arguments = table_to_broker(&c.arguments);
        Ok(self
            .broker
            .amqp_stream_start(name, &slot.topic, arguments.get("x-stream-offset"))?)
    }

    /// basic.consume of `amq.rabbitmq.reply-to`: the channel's reply consumer (no-ack,
    /// one per channel, as RabbitMQ requires).
    async fn consume_replies(&mut self, id: u16, c: basic::Consume) -> Result<Next, Soft> {
        if !c.no_ack {
            return Err(Soft(AmqpError::new(
                codes::PRECONDITION_FAILED,
                "PRECONDITION_FAILED - reply consumer cannot acknowledge",
            )));
        }
        if self.channel(id).reply.is_some() {
            return Err(Soft(AmqpError::new(
                codes::PRECONDITION_FAILED,
                "PRECONDITION_FAILED - reply consumer already set",
            )));
        }
        let tag = if c.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", crate::values::random_suffix(22))
        } else {
            c.consumer_tag.as_str().to_string()
        };
        let shared = self.channel(id).shared.clone();
        let token = self.reply_to.register(reply_to::ReplyTarget {
            out: self.out.clone(),
            channel: id,
            consumer_tag: Arc::from(tag.as_str()),
            shared,
            frame_max: self.frame_max,
        });
        self.channel(id).reply = Some((token, tag.clone()));
        self.reply_unless(
            c.nowait,
            id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            })),
        )
        .await;
        Ok(Next::Continue)
    }

    async fn get(&mut self, id: u16, name: &str, no_ack: bool) -> Result<(), Soft> {
        let who = self.principal.clone();
        let (slot, messages) = self
            .broker
            .amqp_queue_for_get(&who, self.connection_id, name)?;
        let topic = slot.topic.clone();
        let got = self
            .broker
            .receive(&topic, herald_broker::amqp::AMQP_SUBSCRIPTION, 1, 0)
            .await
            .map_err(|e| Soft(AmqpError::from_broker(&e)))?;
        let mut got = got.into_iter();
        let record = loop {
            match got.next() {
                Some(record)
                    if herald_broker::amqp::is_expired(
                        &record,
                        slot.ttl_ms,
                        herald_broker::now_ms(),
                    ) =>
                {
                    let _ = self.broker.amqp_reject(&record.receipt, "expired").await;
                    // Look again: the next one may be fresh.
                    let again = self
                        .broker
                        .receive(&topic, herald_broker::amqp::AMQP_SUBSCRIPTION, 1, 0)
                        .await
                        .map_err(|e| Soft(AmqpError::from_broker(&e)))?;
                    got = again.into_iter();
                }
                other => break other,
            }
        };
        let Some(record) = record else {
            self.reply(
                id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            )
            .await;
            return Ok(());
        };
        let redelivered = record.delivery_count > 1;
        let shared = self.channel(id).shared.clone();
        let tag = if no_ack {
            shared.next_tag()
        } else {
            shared.register(
                record.receipt.clone(),
                Arc::from(topic.as_str()),
                None,
                Vec::new(),
            )
        };
        let info = herald_broker::amqp::delivery_info(&record).or_queue(name);
        let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: tag,
            redelivered,
            exchange: short(&info.exchange),
            routing_key: short(&info.routing_key),
            message_count: messages.saturating_sub(1),
        }));
        self.metrics.delivered(redelivered);
        self.out
            .send(delivery_frames(
                id,
                method,
                &record,
                self.frame_max,
                slot.counts_deliveries,
                None,
            ))
            .await;
        if no_ack {
            let _ = self.settle.send(Settle::Ack(vec![record.receipt]));
        }
        Ok(())
    }

    /// Content header and body frames of the publish in assembly on their channel.
    async fn content(&mut self, raw: RawFrame) -> Next {
        let message_bytes_max = self.config.message_bytes_max;
        let Some(channel) = self.channels.get_mut(&raw.channel) else {
            return Next::Hard(Hard::new(
                codes::CHANNEL_ERROR,
                "CHANNEL_ERROR - expected 'channel.open'",
            ));
        };
        if channel.closing {
            return Next::Continue;
        }
        let Some(incoming) = channel.incoming.as_mut() else {
            return Next::Hard(Hard::new(
                codes::UNEXPECTED_FRAME,
                format!(
                    "UNEXPECTED_FRAME - {} frame received on channel {} without a basic.publish",
                    kind_name(raw.kind),
                    raw.channel
                ),
            ));
        };
        if raw.kind == frame::FRAME_HEADER {
            if incoming.header.is_some() {
                return Next::Hard(Hard::new(
                    codes::UNEXPECTED_FRAME,
                    "UNEXPECTED_FRAME - a second content header for one basic.publish",
                ));
            }
            let header = match frame::decode_content_header(&raw.payload) {
                Ok(header) => header,
                Err(e) => {
                    return Next::Hard(Hard::new(
                        codes::SYNTAX_ERROR,
                        format!("SYNTAX_ERROR - {e}"),
                    ));
                }
            };
            if header.class_id != frame::BASIC_CLASS {
                return Next::Hard(Hard::new(
                    codes::FRAME_ERROR,
                    format!("FRAME_ERROR - content header for class {}", header.class_id),
                ));
            }
            if header.body_size > message_bytes_max as u64 {
                let size = header.body_size;
                if let Some(incoming) = channel.incoming.take() {
                    incoming.end(raw.channel, &mut self.assembly);
                }
                let error = AmqpError::new(
                    codes::PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - message size {size} is larger than configured max size {message_bytes_max}"
                    ),
                );
                self.soft_close(raw.channel, error, (60, 40)).await;
                return Next::Continue;
            }
            let complete = header.body_size == 0;
            incoming.header = Some(header);
            if !complete {
                return Next::Continue;
            }
        } else {
            let Some(header) = &incoming.header else {
                return Next::Hard(Hard::new(
                    codes::UNEXPECTED_FRAME,
                    "UNEXPECTED_FRAME - body frame before the content header",
                ));
            };
            let have = incoming.single.as_ref().map_or(0, Bytes::len) + incoming.body.len();
            if (have + raw.payload.len()) as u64 > header.body_size {
                return Next::Hard(Hard::new(
                    codes::FRAME_ERROR,
                    "FRAME_ERROR - body frames longer than the content header's body size",
                ));
            }
            // The bytes that came, from the broker-wide request pool (a header alone
            // holds nothing). The wait is bounded: a connection whose earlier bodies
            // hold the pool cannot wait for itself forever.
            let pool = self.broker.memory().requests.clone();
            let wanted = raw.payload.len().min(pool.total());
            let reservation = match pool.try_reserve(wanted) {
                Some(reservation) => Some(reservation),
                // Another of this connection's messages in assembly holds memory: the
                // reader must not wait for memory its own connection holds.
                None if self.assembly.others_hold(!incoming._memory.is_empty()) => None,
                None => {
                    let wait = Duration::from_millis(self.config.read_timeout_ms);
                    tokio::time::timeout(wait, pool.reserve(wanted)).await.ok()
                }
            };
            let Some(reservation) = reservation else {
                return Next::Hard(Hard::new(
                    codes::RESOURCE_ERROR,
                    format!(
                        "RESOURCE_ERROR - no memory for the message body on channel {} (memory_budget_bytes is in use)",
                        raw.channel
                    ),
                ));
            };
            if incoming._memory.is_empty() {
                self.assembly.hold();
            }
            incoming._memory.push(reservation);
            if have == 0 && raw.payload.len() as u64 == header.body_size {
                incoming.single = Some(raw.payload);
            } else {
                if let Some(first) = incoming.single.take() {
                    incoming.body.extend_from_slice(&first);
                }
                incoming.body.extend_from_slice(&raw.payload);
            }
            let have = incoming.single.as_ref().map_or(0, Bytes::len) + incoming.body.len();
            if (have as u64) < header.body_size {
                return Next::Continue;
            }
        }
        let Some(incoming) = channel.incoming.take() else {
            return Next::Continue;
        };
        incoming.end(raw.channel, &mut self.assembly);
        self.publish(raw.channel, incoming).await
    }

    async fn publish(&mut self, id: u16, incoming: Incoming) -> Next {
        let Incoming {
            _memory,
            publish,
            header,
            body,
            single,
            ..
        } = incoming;
        let Some(header) = header else {
            return Next::Continue;
        };
        let body = single.unwrap_or_else(|| body.freeze());
        let mut header = header;
        if publish.exchange.as_str().is_empty()
            && publish
                .routing_key
                .as_str()
                .starts_with(reply_to::TOKEN_PREFIX)
        {
            return self.publish_reply(id, &publish, &header, &body).await;
        }
        if header
            .properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == reply_to::PSEUDO_QUEUE)
        {
            // A request: its reply-to becomes the token of this channel's reply consumer.
            let Some((token, _)) = self.channel(id).reply.clone() else {
                let error = AmqpError::new(
                    codes::PRECONDITION_FAILED,
                    "PRECONDITION_FAILED - fast reply consumer does not exist",
                );
                self.soft_close(id, error, (60, 40)).await;
                return Next::Continue;
            };
            header.properties = header.properties.clone().with_reply_to(short(&token));
            header.raw_properties = frame::encode_properties(&header.properties);
        }
        let message = Message {
            exchange: publish.exchange.as_str().to_string(),
            routing_key: publish.routing_key.as_str().to_string(),
            headers: header
                .properties
                .headers()
                .as_ref()
                .map(table_to_broker)
                .unwrap_or_default(),
            expiration: header
                .properties
                .expiration()
                .as_ref()
                .map(|e| e.as_str().to_string()),
            raw_properties: header.raw_properties.clone(),
            content_type: header
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str().to_string()),
            message_id: header
                .properties
                .message_id()
                .as_ref()
                .map(|c| c.as_str().to_string()),
            body: body.clone(),
        };
        let outcome = self.broker.amqp_publish(&self.principal, &message);
        let channel = self.channel(id);
        let tag = match &mut channel.confirm {
            Some((next, _)) => {
                let tag = *next;
                *next += 1;
                Some(tag)
            }
            None => None,
        };
        let published = match outcome {
            Ok(published) => published,
            Err(error) if error.code == codes::INTERNAL_ERROR => {
                // Not stored: a nack when confirms are on, and the channel stays.
                tracing::warn!(peer = %self.peer, "AMQP publish not stored: {}", error.text);
                if let (Some(tag), Some((_, tx))) = (tag, &self.channel(id).confirm) {
                    let _ = tx
                        .send(Confirm {
                            tag,
                            appends: None,
                            trim: Vec::new(),
                        })
                        .await;
                }
                return Next::Continue;
            }
            Err(error) => {
                let hard = error.is_hard();
                if hard {
                    return Next::Hard(Hard {
                        code: error.code,
                        text: error.text,
                        class_id: 60,
                        method_id: 40,
                    });
                }
                self.soft_close(id, error, (60, 40)).await;
                return Next::Continue;
            }
        };
        self.metrics.published(published.routed);
        if publish.mandatory && !published.routed {
            let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: codes::NO_ROUTE,
                reply_text: short("NO_ROUTE"),
                exchange: publish.exchange.clone(),
                routing_key: publish.routing_key.clone(),
            }));
            let mut out = BytesMut::new();
            out.extend_from_slice(&frame::method(id, method));
            frame::content(&mut out, id, &header.raw_properties, &body, self.frame_max);
            self.out.send(out.freeze()).await;
        }
        let Published {
            appends,
            rejected,
            trim,
            ..
        } = published;
        match (tag, &self.channel(id).confirm) {
            (Some(tag), Some((_, tx))) => {
                let outcome = Confirm {
                    tag,
                    appends: (!rejected).then_some(appends),
                    trim,
                };
                let _ = tx.send(outcome).await;
            }
            _ if !trim.is_empty() => {
                // Drop-head once the new message is durable (and so counted).
                let broker = self.broker.clone();
                tokio::spawn(async move {
                    for append in appends {
                        let _ = append.durable().await;
                    }
                    for queue in trim {
                        broker.amqp_trim(&queue).await;
                    }
                });
            }
            _ => {}
        }
        Next::Continue
    }
}

impl Session {
    /// A reply to a direct reply-to token: straight to the requesting channel, never
    /// stored. Confirmed at once; a token whose channel is gone is unroutable.
    async fn publish_reply(
        &mut self,
        id: u16,
        publish: &basic::Publish,
        header: &frame::ContentHeader,
        body: &Bytes,
    ) -> Next {
        let outcome =
            self.reply_to
                .deliver(publish.routing_key.as_str(), &header.raw_properties, body);
        if outcome == reply_to::Replied::Dropped {
            tracing::warn!(peer = %self.peer, "direct reply-to: the requester stopped reading; reply dropped");
        }
        self.metrics
            .published(outcome == reply_to::Replied::Delivered);
        // A token is not a queue: RabbitMQ returns a mandatory reply as unroutable even
        // when it delivered it.
        if publish.mandatory {
            let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: codes::NO_ROUTE,
                reply_text: short("NO_ROUTE"),
                exchange: publish.exchange.clone(),
                routing_key: publish.routing_key.clone(),
            }));
            let mut out = BytesMut::new();
            out.extend_from_slice(&frame::method(id, method));
            frame::content(&mut out, id, &header.raw_properties, body, self.frame_max);
            self.out.send(out.freeze()).await;
        }
        let channel = self.channel(id);
        if let Some((next, tx)) = &mut channel.confirm {
            let tag = *next;
            *next += 1;
            let _ = tx
                .send(Confirm {
                    tag,
                    appends: Some(Vec::new()),
                    trim: Vec::new(),
                })
                .await;
        }
        Next::Continue
    }
}

/// Confirms in publish order: each waits until its appends are durable (one fsync
/// covers everything that arrived while the previous one ran), and runs of
/// consecutive acks go out as one `basic.ack` with `multiple`.
async fn confirm_task(
    channel: u16,
    mut rx: mpsc::Receiver<Confirm>,
    out: Out,
    broker: Arc<Broker>,
) {
    while let Some(first) = rx.recv().await {
        // A run of consecutive acks: (first tag, last tag).
        let mut run: Option<(u64, u64)> = None;
        let mut next = Some(first);
        while let Some(Confirm { tag, appends, trim }) = next.take() {
            if durable(appends).await {
                for queue in trim {
                    broker.amqp_trim(&queue).await;
                }
                run = Some(run.map_or((tag, tag), |(start, _)| (start, tag)));
            } else {
                if let Some(done) = run.take()
                    && !ack_run(&out, channel, done).await
                {
                    return;
                }
                if !send_confirm(&out, channel, tag, false, false).await {
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(done) = run
            && !ack_run(&out, channel, done).await
        {
            return;
        }
    }
}

/// One `basic.ack` for tags `start..=end`: `multiple` only when it covers more than
/// one (RabbitMQ acks a single confirm with multiple false).
async fn ack_run(out: &Out, channel: u16, (start, end): (u64, u64)) -> bool {
    send_confirm(out, channel, end, end > start, true).await
}

async fn durable(appends: Option<PendingAppends>) -> bool {
    let Some(appends) = appends else {
        return false;
    };
    for append in appends {
        if append.durable().await.is_err() {
            return false;
        }
    }
    true
}

async fn send_confirm(out: &Out, channel: u16, tag: u64, multiple: bool, ack: bool) -> bool {
    let method = if ack {
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        }))
    } else {
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag,
            multiple,
            requeue: false,
        }))
    };
    out.send(frame::method(channel, method)).await
}

fn hard_for(code: u16, text: impl Into<String>, method: &AMQPClass) -> Hard {
    Hard {
        code,
        text: text.into(),
        class_id: method_class_id(method),
        method_id: method_id(method),
    }
}

fn method_class_id(method: &AMQPClass) -> u16 {
    method.get_amqp_class_id()
}

fn method_id(method: &AMQPClass) -> u16 {
    method.get_amqp_method_id()
}

fn method_name(method: &AMQPClass) -> String {
    format!("method {}.{}", method_class_id(method), method_id(method))
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        frame::FRAME_HEADER => "content header",
        frame::FRAME_BODY => "content body",
        _ => "unexpected",
    }
}
