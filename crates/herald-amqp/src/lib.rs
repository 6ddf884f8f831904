//! Herald's AMQP 0-9-1 front end: RabbitMQ's clients (pika, amqplib, lapin, Celery)
//! against the broker's log. It translates AMQP into broker calls and owns nothing the
//! broker should own: queues, exchanges, bindings and routing live in
//! `herald_broker::amqp`; a queue's messages are a topic's records, delivered through
//! a shared subscription of that topic (the work-queue engine).
//!
//! Files: `frame.rs` (framing, checked against frame_max before buffering),
//! `server.rs` (accept loop, connection limits), `connection.rs` (handshake, channels,
//! methods), `assembly.rs` (what messages in assembly hold, kept as it changes), `consumer.rs` (one task per `basic.consume`), `values.rs` (field values
//! between the codec and the broker).

mod assembly;
pub mod connection;
pub mod consumer;
pub mod frame;
pub mod metrics;
pub mod reply_to;
pub mod server;
pub mod values;

use std::net::SocketAddr;

pub use server::AmqpServer;

/// RabbitMQ's default frame_max.
pub const FRAME_MAX_DEFAULT: u32 = 131_072;
/// RabbitMQ's default channel_max.
pub const CHANNEL_MAX_DEFAULT: u16 = 2_047;
/// RabbitMQ's default heartbeat, seconds.
pub const HEARTBEAT_S_DEFAULT: u16 = 60;
/// How long a client has from connecting to `connection.open`.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default of `read_timeout_ms` (Kafka's `request_read_timeout_ms` default).
pub const READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default of `write_queue_bytes`.
pub const WRITE_QUEUE_BYTES_DEFAULT: usize = 4 << 20;
/// Largest message body accepted (RabbitMQ 4's default `max_message_size` is 16 MiB).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Unacknowledged deliveries one consumer may hold when it set no prefetch (0).
pub const UNACKED_PER_CONSUMER_MAX_DEFAULT: u32 = 1_000;
/// Consumers one channel may hold.
pub const CONSUMERS_PER_CHANNEL_MAX_DEFAULT: usize = 1_024;

#[derive(Debug, Clone)]
pub struct AmqpConfig {
    pub listen: SocketAddr,
    pub connections_max: usize,
    pub connections_max_per_ip: usize,
    /// Largest frame, header and end octet included; offered in `connection.tune`.
    pub frame_max: u32,
    /// Channels per connection; offered in `connection.tune`.
    pub channel_max: u16,
    /// Heartbeat offered in `connection.tune`; the client's tune-ok decides.
    pub heartbeat_s: u16,
    pub handshake_timeout_ms: u64,
    /// A write that makes no progress this long closes the connection.
    pub send_timeout_ms: u64,
    /// A frame that has started, and a message whose content header came, must arrive
    /// whole this soon (the listeners' `request_read_timeout_ms`); it also bounds the
    /// wait for memory for a message body.
    pub read_timeout_ms: u64,
    /// Bytes of frames one connection's writer queue holds at most (deliveries wait for
    /// room): what a client that stops reading costs the broker.
    pub write_queue_bytes: usize,
    pub message_bytes_max: usize,
    pub unacked_per_consumer_max: u32,
    pub consumers_per_channel_max: usize,
    /// The built-in user (loopback only until users come with the security work).
    pub default_user: String,
    pub default_pass: String,
}

impl AmqpConfig {
    pub fn new(listen: SocketAddr) -> AmqpConfig {
        AmqpConfig {
            listen,
            connections_max: 10_000,
            connections_max_per_ip: herald_broker::limits::CONNECTIONS_MAX_PER_IP_DEFAULT,
            frame_max: FRAME_MAX_DEFAULT,
            channel_max: CHANNEL_MAX_DEFAULT,
            heartbeat_s: HEARTBEAT_S_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            send_timeout_ms: herald_broker::limits::SEND_TIMEOUT_MS_DEFAULT,
            read_timeout_ms: READ_TIMEOUT_MS_DEFAULT,
            write_queue_bytes: WRITE_QUEUE_BYTES_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            unacked_per_consumer_max: UNACKED_PER_CONSUMER_MAX_DEFAULT,
            consumers_per_channel_max: CONSUMERS_PER_CHANNEL_MAX_DEFAULT,
            default_user: "guest".to_string(),
            default_pass: "guest".to_string(),
        }
    }
}
