//! AMQP 0-9-1's model on the log, so that every front end (the AMQP listener, the HTTP
//! API) routes and queues the same way: a semantic lives here once.
//!
//! - An AMQP queue `Q` is the topic `Q` (created with one partition when missing, so
//!   order is the queue's order; an existing topic is used as it is) and the shared
//!   subscription [`AMQP_SUBSCRIPTION`] of it: leases, redelivery, durable delivery
//!   state are the work-queue engine's. A name that is not a valid topic name (`@`,
//!   longer than 249 bytes) gets a topic `amqp.<sanitised>.<hash>`; the mapping is stored.
//! - A published message becomes one record per queue it is routed to: the body is
//!   the value; the exchange, routing key and the properties as the client sent them
//!   (raw bytes, see [`PROPERTIES_HEADER`]) are record headers, and so are string
//!   headers and the content type, for Kafka consumers.
//! - Exchanges and bindings are definitions (`exchange.rs` does the routing), stored in
//!   the meta store with the queues; non-durable ones do not survive a restart, as in
//!   RabbitMQ.
//!
//! Errors carry RabbitMQ's reply codes and texts ([`AmqpError`]), so front ends send
//! them verbatim.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::exchange::{Table, Value};
use crate::queue::{ReceivedRecord, StartPosition, SubscriptionSettings};
use crate::{Broker, PendingAppend, Principal, now_ms};

/// The subscription of a queue's topic that AMQP consumers share.
pub const AMQP_SUBSCRIPTION: &str = "amqp";
/// Record header with the message's properties exactly as the publisher encoded them
/// (flags and values): delivered back unchanged to AMQP consumers.
pub const PROPERTIES_HEADER: &str = "amqp.properties";
pub const EXCHANGE_HEADER: &str = "amqp.exchange";
pub const ROUTING_KEY_HEADER: &str = "amqp.routing-key";
/// A dead-lettered message's deaths (postcard of [`Deaths`]); the
/// front end turns them into `x-death` and `x-first-death-*` on delivery.
pub const DEATHS_HEADER: &str = "amqp.deaths";
/// When a message with a per-message `expiration` expires (epoch ms, decimal).
pub const EXPIRES_AT_HEADER: &str = "amqp.expires-at";
/// The per-message `expiration` as the publisher set it.
pub const EXPIRATION_HEADER: &str = "amqp.expiration";
/// Queues the expiry sweep looks at per pass, and messages per queue.
const EXPIRY_SWEEP_BATCH: usize = 100;
/// How often expired messages are looked for in queues with a TTL.
pub const EXPIRY_SWEEP_MS: u64 = 200;
/// The content type, also as a plain header for Kafka consumers.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// Unacked deliveries a queue's subscription tracks per partition.
pub const QUEUE_UNACKED_MAX: usize = 10_000;
/// An AMQP delivery's lease: RabbitMQ's default `consumer_timeout` (30 minutes). A
/// consumer holding a message longer gets it taken back (redelivered).
pub const DELIVERY_LEASE_MS: u64 = 30 * 60 * 1000;
/// Queues one broker holds (each is a topic).
pub const QUEUES_MAX: usize = 100_000;

/// AMQP reply codes (the spec's constants).
pub mod codes {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// An AMQP exception: the reply code and RabbitMQ's reply text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
}

impl AmqpError {
    pub fn new(code: u16, text: impl Into<String>) -> AmqpError {
        AmqpError {
            code,
            text: text.into(),
        }
    }

    /// Connection-level (closes the connection) rather than channel-level.
    pub fn is_hard(&self) -> bool {
        !matches!(
            self.code,
            codes::CONTENT_TOO_LARGE
                | codes::NO_ROUTE
                | codes::NO_CONSUMERS
                | codes::ACCESS_REFUSED
                | codes::NOT_FOUND
                | codes::RESOURCE_LOCKED
                | codes::PRECONDITION_FAILED
        )
    }

    /// A storage or internal failure of the broker underneath.
    pub fn from_broker(error: &BrokerError) -> AmqpError {
        AmqpError::new(codes::INTERNAL_ERROR, format!("INTERNAL_ERROR - {error}"))
    }

    fn not_found_queue(name: &str) -> AmqpError {
        AmqpError::new(
            codes::NOT_FOUND,
            format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
        )
    }

    fn locked(name: &str) -> AmqpError {
        AmqpError::new(
            codes::RESOURCE_LOCKED,
            format!(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'. \
                 It could be originally declared on another connection or the exclusive property value \
                 does not match that of the original declaration."
            ),
        )
    }
}

pub type AmqpResult<T> = std::result::Result<T, AmqpError>;

impl From<crate::exchange::ExchangeError> for AmqpError {
    fn from(e: crate::exchange::ExchangeError) -> AmqpError {
        AmqpError::new(e.code(), e.to_string())
    }
}

/// A queue as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    pub topic: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Table,
    /// The declare created the topic: deleting the queue deletes it.
    pub owns_topic: bool,
}

/// What `queue.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct DeclareQueue {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Table,
    /// The largest record the queue's topic must take (the front end's largest
    /// message plus its properties); the topic's `max.message.bytes` when the declare
    /// creates it.
    pub record_bytes_max: Option<usize>,
}

/// What `exchange.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct DeclareExchange {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

/// `queue.declare-ok`'s fields.
#[derive(Debug, Clone)]
pub struct QueueOk {
    pub name: String,
    pub messages: u32,
    pub consumers: u32,
}

/// A published message, as a front end assembled it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// The properties' header table (headers exchanges route on it).
    pub headers: Table,
    pub expiration: Option<String>,
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    /// The properties as encoded by the publisher.
    pub raw_properties: Bytes,
    pub body: Bytes,
}

/// The appends a publish made (one per queue it reached), not yet durable.
pub struct Published {
    pub appends: Vec<PendingAppend>,
    pub routed: bool,
    /// A queue at its `x-max-length` with `x-overflow` reject-publish refused it: the
    /// publisher's confirm is a nack.
    pub rejected: bool,
    /// Queues past their length limit with drop-head: [`Broker::amqp_trim`] them.
    pub trim: Vec<String>,
}

/// What a queue at its length limit does with one more message.
enum Overflow {
    DropHead,
    RejectPublish,
    /// Refused and dead-lettered (reason `maxlen`).
    RejectPublishDlx,
}

/// A consumer's place on a queue, from [`Broker::amqp_consume`].
#[derive(Debug, Clone)]
pub struct ConsumerSlot {
    pub id: u64,
    pub topic: String,
    /// Redeliveries carry `x-delivery-count` (quorum queues and queues with a
    /// delivery limit, as in RabbitMQ).
    pub counts_deliveries: bool,
    /// The queue's `x-message-ttl`: a record older than this is not delivered.
    pub ttl_ms: Option<i64>,
    /// `x-single-active-consumer`: the slot id that may receive now; a consumer waits
    /// until it is its own.
    pub active: Option<tokio::sync::watch::Receiver<u64>>,
    /// A stream queue: the consumer reads the log from its own offset; acks only
    /// return prefetch credit.
    pub stream: bool,
}

/// One entry of RabbitMQ's `x-death`: how often a message died in one queue for one
/// reason, when it last did, and where it had been published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    pub queue: String,
    pub reason: String,
    pub count: i64,
    pub time_s: u64,
    pub exchange: String,
    pub routing_keys: Vec<String>,
    /// The message's own `expiration`, moved here when it expired (RabbitMQ's
    /// `original-expiration`; the delivered message has none, so it expires once).
    pub original_expiration: Option<String>,
}

/// A dead-lettered message's history: every (queue, reason) it died for, newest
/// first, and where it died the first time (RabbitMQ's `x-first-death-*`, set once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deaths {
    pub entries: Vec<Death>,
    pub first_reason: String,
    pub first_queue: String,
    pub first_exchange: String,
}

/// What a delivery needs from a stored record.
#[derive(Debug, Clone, Default)]
pub struct DeliveryInfo {
    pub exchange: String,
    pub routing_key: String,
    pub raw_properties: Option<Bytes>,
    pub deaths: Deaths,
}

impl DeliveryInfo {
    /// A record no AMQP publisher wrote (a Kafka or HTTP producer did) is delivered as
    /// if published to the default exchange with the queue's name as routing key.
    pub fn or_queue(mut self, queue: &str) -> DeliveryInfo {
        if self.raw_properties.is_none() && self.exchange.is_empty() && self.routing_key.is_empty()
        {
            self.routing_key = queue.to_string();
        }
        self
    }
}

/// The exchange, routing key and raw properties a record carries (a record a Kafka
/// producer wrote has none: exchange "" and its topic's queue name).
pub fn delivery_info(record: &ReceivedRecord) -> DeliveryInfo {
    let mut info = DeliveryInfo::default();
    for (name, value) in &record.headers {
        let Some(value) = value else { continue };
        match name.as_str() {
            PROPERTIES_HEADER => info.raw_properties = Some(value.clone()),
            EXCHANGE_HEADER => info.exchange = String::from_utf8_lossy(value).into_owned(),
            ROUTING_KEY_HEADER => info.routing_key = String::from_utf8_lossy(value).into_owned(),
            DEATHS_HEADER => info.deaths = postcard::from_bytes(value).unwrap_or_default(),
            _ => {}
        }
    }
    info
}

struct QueueState {
    def: QueueDef,
    /// The connection an exclusive queue belongs to.
    owner: Option<u64>,
    /// Consumer slot -> (connection, exclusive).
    consumers: BTreeMap<u64, (u64, bool)>,
    /// A message with a per-message `expiration` was routed here: the expiry sweep
    /// looks at this queue (it always does for a queue with `x-message-ttl`).
    expiring: bool,
    /// When the queue was last declared, read with basic.get or left by its last
    /// consumer: with `x-expires`, it is deleted that long after this while unused.
    last_used_ms: i64,
    /// `x-single-active-consumer`: the consumer slot that may receive (0: none); the
    /// oldest registered consumer, the next one when it goes.
    active: Option<tokio::sync::watch::Sender<u64>>,
    /// With `x-max-length-bytes`: (partition, offset, body bytes) of messages appended
    /// here that may not be durable yet, which the queue's ready bytes (counted up to
    /// the high watermark) do not hold. Entries below the high watermark are dropped
    /// when next counted, so this holds about one group commit's publishes.
    unflushed: Vec<(i32, i64, u64)>,
}

impl QueueState {
    fn new(def: QueueDef, owner: Option<u64>) -> QueueState {
        QueueState {
            expiring: def.arguments.contains_key("x-message-ttl"),
            active: single_active(&def).then(|| tokio::sync::watch::channel(0).0),
            unflushed: Vec::new(),
            def,
            owner,
            consumers: BTreeMap::new(),
            last_used_ms: now_ms(),
        }
    }

    /// Past its `x-expires`: no consumer, and unused for that long.
    fn expired(&self, now_ms: i64) -> bool {
        self.consumers.is_empty()
            && self
                .def
                .arguments
                .get("x-expires")
                .and_then(int_value)
                .is_some_and(|ms| now_ms.saturating_sub(self.last_used_ms) >= ms)
    }
}

/// The queues by name, and which of them have an `x-expires`, kept together so the
/// expiry sweep (every 200 ms) looks at those queues only. Read through `Deref`;
/// changed only through the methods below, which keep the two in step.
#[derive(Default)]
struct Queues {
    all: BTreeMap<String, QueueState>,
    /// Names of the queues with an `x-expires` (fixed at declare: a redeclare with
    /// other arguments is refused).
    with_expires: BTreeSet<String>,
}

impl std::ops::Deref for Queues {
    type Target = BTreeMap<String, QueueState>;

    fn deref(&self) -> &Self::Target {
        &self.all
    }
}

impl Queues {
    fn insert(&mut self, name: String, queue: QueueState) {
        if queue.def.arguments.contains_key("x-expires") {
            self.with_expires.insert(name.clone());
        } else {
            self.with_expires.remove(&name);
        }
        self.all.insert(name, queue);
    }

    fn remove(&mut self, name: &str) -> Option<QueueState> {
        self.with_expires.remove(name);
        self.all.remove(name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut QueueState> {
        self.all.get_mut(name)
    }

    /// The queues past their `x-expires` at `now_ms`; costs the queues with one.
    fn expired(&self, now_ms: i64) -> Vec<String> {
        self.with_expires
            .iter()
            .filter(|name| self.all.get(*name).is_some_and(|q| q.expired(now_ms)))
            .cloned()
            .collect()
    }
}

impl FromIterator<(String, QueueState)> for Queues {
    fn from_iter<I: IntoIterator<Item = (String, QueueState)>>(iter: I) -> Queues {
        let mut queues = Queues::default();
        for (name, queue) in iter {
            queues.insert(name, queue);
        }
        queues
    }
}

/// The broker's AMQP definitions in memory (the meta store has the durable ones).
pub(crate) struct AmqpState {
    queues: RwLock<Queues>,
    /// Topic -> queue name, for settling a receipt (which names the topic).
    by_topic: RwLock<std::collections::HashMap<String, String>>,
    exchanges: RwLock<crate::exchange::Exchanges>,
    /// Serialises definition changes (each touches the meta store, some the topics).
    admin: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

const KIND_QUEUE: &str = "queue";
const KIND_EXCHANGE: &str = "exchange";
const KIND_BINDING: &str = "binding";

impl AmqpState {
    pub(crate) fn new() -> AmqpState {
        AmqpState {
            queues: RwLock::new(Queues::default()),
            by_topic: RwLock::new(std::collections::HashMap::new()),
            exchanges: RwLock::new(crate::exchange::Exchanges::new()),
            admin: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
        }
    }
}

fn poisoned() -> AmqpError {
    AmqpError::new(codes::INTERNAL_ERROR, "INTERNAL_ERROR - lock poisoned")
}

/// The topic a queue name maps to.
pub fn topic_for_queue(name: &str) -> String {
    if crate::topic::validate_topic_name(name).is_ok() && !name.starts_with("__") {
        return name.to_string();
    }
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    if clean.is_empty() {
        clean.push('q');
    }
    format!("amqp.{clean}.{:016x}", fnv1a(name.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// The arguments RabbitMQ compares when a queue is declared again.
const EQUIVALENT_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-delivery-limit",
    "x-single-active-consumer",
    "x-queue-type",
    "x-max-priority",
];

fn inequivalent(name: &str, what: &str, received: &str, current: &str) -> AmqpError {
    AmqpError::new(
        codes::PRECONDITION_FAILED,
        format!(
            "PRECONDITION_FAILED - inequivalent arg '{what}' for queue '{name}' in vhost '/': received {received} but current is {current}"
        ),
    )
}

/// A value as RabbitMQ shows it in an inequivalent-argument error.
fn value_text(value: Option<&Value>) -> String {
    let plain = match value {
        None => return "none".to_string(),
        Some(Value::Str(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(v) => match int_value(v) {
            Some(n) => n.to_string(),
            None => format!("{v:?}"),
        },
    };
    let kind = value.map(Value::type_name).unwrap_or("void");
    format!("the value '{plain}' of type '{kind}'")
}

fn queue_settings(arguments: &Table) -> SubscriptionSettings {
    let delivery_limit = arguments
        .get("x-delivery-limit")
        .and_then(int_value)
        .and_then(|n| u32::try_from(n).ok());
    SubscriptionSettings {
        lease_ms: DELIVERY_LEASE_MS,
        // AMQP requeues do not count as failures; only expired leases would.
        max_deliveries: delivery_limit.map_or(u32::MAX, |n| n.saturating_add(1)),
        backoff_base_ms: 0,
        backoff_factor: 1.0,
        backoff_max_ms: 0,
        backoff_jitter: 0.0,
        dead_letter_topic: None,
        ordered_by_key: false,
        start: StartPosition::Latest,
        max_unacked: QUEUE_UNACKED_MAX,
        filter: None,
        dead_letter_stream: None,
    }
}

fn int_value(value: &Value) -> Option<i64> {
    match value {
        Value::I8(v) => Some(i64::from(*v)),
        Value::U8(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I32(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I64(v) => Some(*v),
        _ => None,
    }
}

fn server_named() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let suffix: String = (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("amq.gen-{suffix}")
}

impl Broker {
    /// A new id for an AMQP connection (exclusive queues and consumers name it).
    pub fn amqp_connection_id(&self) -> u64 {
        self.amqp.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Restore durable definitions at startup; transient queues (and their topics,
    /// when they made them) are deleted, as RabbitMQ loses them at a restart.
    pub(crate) fn load_amqp(&self) -> crate::Result<()> {
        let mut transient = Vec::new();
        let mut queues = BTreeMap::new();
        for (name, def) in self.stored_definitions::<QueueDef>(KIND_QUEUE)? {
            if def.durable && !def.exclusive {
                // The x-expires timer starts again at a restart, as in RabbitMQ.
                queues.insert(name, QueueState::new(def, None));
            } else {
                transient.push(def);
            }
        }
        let exchanges: Vec<crate::exchange::ExchangeDef> = self
            .stored_definitions(KIND_EXCHANGE)?
            .into_iter()
            .map(|(_, def)| def)
            .collect();
        let bindings: Vec<crate::exchange::Binding> = self
            .stored_definitions(KIND_BINDING)?
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let mut deletes: Vec<(String, String)> = Vec::new();
        for def in &transient {
            deletes.push((KIND_QUEUE.to_string(), def.name.clone()));
            if def.owns_topic
                && self.topic(&def.topic).is_some()
                && let Err(e) = self.delete_topic(&def.topic)
            {
                tracing::warn!(topic = %def.topic, error = %e, "cannot delete a transient AMQP queue's topic");
            }
        }
        let restored =
            crate::exchange::Exchanges::restore(exchanges, queues.keys().cloned(), bindings);
        // Bindings naming a queue or exchange that did not survive go too.
        for b in &restored.dropped {
            deletes.push((KIND_BINDING.to_string(), binding_key(b)));
        }
        let deletes_ref: Vec<(&str, &str)> = deletes
            .iter()
            .map(|(k, n)| (k.as_str(), n.as_str()))
            .collect();
        self.meta.put_amqp_definitions(&[], &deletes_ref)?;
        if let Ok(mut ex) = self.amqp.exchanges.write() {
            *ex = restored.exchanges;
        }
        // Unacked deliveries died with their connections: ready again, redelivered.
        for q in queues.values().filter(|q| !is_stream(&q.def)) {
            match self.release_all_leases(&q.def.topic, AMQP_SUBSCRIPTION) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(queue = %q.def.name, requeued = n, "AMQP deliveries unacked at the last stop are ready again")
                }
                Err(e) => {
                    tracing::warn!(queue = %q.def.name, error = %e, "cannot requeue unacked AMQP deliveries")
                }
            }
        }
        if let Ok(mut by_topic) = self.amqp.by_topic.write() {
            *by_topic = queues
                .iter()
                .map(|(name, q)| (q.def.topic.clone(), name.clone()))
                .collect();
        }
        if let Ok(mut q) = self.amqp.queues.write() {
            *q = queues.into_iter().collect();
        }
        Ok(())
    }

    /// The stored definitions of one kind (queue, exchange, binding) by key; one that
    /// cannot be decoded is logged and skipped, so the others still load.
    fn stored_definitions<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
    ) -> crate::Result<Vec<(String, T)>> {
        let mut decoded = Vec::new();
        for (key, bytes) in self.meta.amqp_definitions(kind)? {
            match postcard::from_bytes::<T>(&bytes) {
                Ok(def) => decoded.push((key, def)),
                Err(e) => {
                    tracing::warn!(kind, key = %key, error = %e, "unreadable AMQP definition; skipped")
                }
            }
        }
        Ok(decoded)
    }

    fn persist(
        &self,
        puts: &[(&str, String, Vec<u8>)],
        deletes: &[(&str, String)],
    ) -> AmqpResult<()> {
        let puts: Vec<(&str, &str, &[u8])> = puts
            .iter()
            .map(|(k, n, v)| (*k, n.as_str(), v.as_slice()))
            .collect();
        let deletes: Vec<(&str, &str)> = deletes.iter().map(|(k, n)| (*k, n.as_str())).collect();
        self.meta
            .put_amqp_definitions(&puts, &deletes)
            .map_err(|e| AmqpError::from_broker(&BrokerError::from(e)))
    }

    pub async fn amqp_declare_queue(
        &self,
        _who: &Principal,
        connection: u64,
        req: DeclareQueue,
    ) -> AmqpResult<QueueOk> {
        let _admin = self.amqp.admin.lock().await;
        if req.passive {
            if req.name.is_empty() {
                return Err(AmqpError::not_found_queue(""));
            }
            let ok = self.queue_ok(&req.name, Some(connection))?;
            // A passive declare is a use too (RabbitMQ restarts x-expires on it).
            self.touch_queue(&req.name);
            return Ok(ok);
        }
        let name = if req.name.is_empty() {
            server_named()
        } else {
            req.name.clone()
        };
        if name.starts_with("amq.") && !req.name.is_empty() {
            return Err(AmqpError::new(
                codes::ACCESS_REFUSED,
                format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let existing = self
            .amqp
            .queues
            .read()
            .map_err(|_| poisoned())?
            .get(&name)
            .map(|q| (q.def.clone(), q.owner));
        if let Some((def, owner)) = existing {
            if let Some(owner) = owner
                && owner != connection
            {
                return Err(AmqpError::locked(&name));
            }
            for (what, received, current) in [
                ("durable", req.durable, def.durable),
                ("auto_delete", req.auto_delete, def.auto_delete),
                ("exclusive", req.exclusive, def.exclusive),
            ] {
                if received != current {
                    return Err(inequivalent(
                        &name,
                        what,
                        &received.to_string(),
                        &current.to_string(),
                    ));
                }
            }
            for arg in EQUIVALENT_ARGS {
                let (a, b) = (req.arguments.get(*arg), def.arguments.get(*arg));
                let same = match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => {
                        a == b || int_value(a).is_some() && int_value(a) == int_value(b)
                    }
                    // A classic queue may be declared without x-queue-type again.
                    (None, Some(Value::Str(t))) | (Some(Value::Str(t)), None)
                        if *arg == "x-queue-type" =>
                    {
                        t == "classic"
                    }
                    _ => false,
                };
                if !same {
                    let (received, current) = match (a, b) {
                        // RabbitMQ names the two queue types plainly.
                        (Some(Value::Str(x)), Some(Value::Str(y))) if *arg == "x-queue-type" => {
                            (format!("'{x}'"), format!("'{y}'"))
                        }
                        _ => (value_text(a), value_text(b)),
                    };
                    return Err(inequivalent(&name, arg, &received, &current));
                }
            }
            self.touch_queue(&name);
            return self.queue_ok(&name, Some(connection));
        }
        validate_queue_arguments(&name, &req.arguments)?;
        if self.amqp.queues.read().map_err(|_| poisoned())?.len() >= QUEUES_MAX {
            return Err(AmqpError::new(
                codes::RESOURCE_ERROR,
                format!("RESOURCE_ERROR - the broker holds at most {QUEUES_MAX} AMQP queues"),
            ));
        }
        let stream = req.arguments.get("x-queue-type").and_then(Value::as_str) == Some("stream");
        if stream && req.name.is_empty() {
            return Err(AmqpError::new(
                codes::PRECONDITION_FAILED,
                "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue",
            ));
        }
        let mut configs = if stream {
            check_stream_declare(&name, &req)?
        } else {
            BTreeMap::new()
        };
        if let Some(bytes) = req.record_bytes_max {
            configs.insert("max.message.bytes".to_string(), bytes.to_string());
        }
        let topic = topic_for_queue(&name);
        let owns_topic = self.topic(&topic).is_none();
        if owns_topic {
            self.create_topic(&topic, Some(1), configs, false)
                .map_err(|e| AmqpError::from_broker(&e))?;
        }
        let settings = queue_settings(&req.arguments);
        let subscribed = if stream {
            // Read by offset, never leased: no subscription.
            Ok(())
        } else {
            self.create_subscription(&topic, AMQP_SUBSCRIPTION, settings.clone())
                .await
                .map(|_| ())
        };
        match subscribed {
            Ok(_) => {}
            Err(BrokerError::SubscriptionExists { .. }) => {
                // Left by a queue deleted while its subscription lived on (or declared
                // by hand over HTTP): adopt it with the queue's settings.
                self.update_subscription(&topic, AMQP_SUBSCRIPTION, settings)
                    .await
                    .map_err(|e| AmqpError::from_broker(&e))?;
            }
            Err(e) => return Err(AmqpError::from_broker(&e)),
        }
        let def = QueueDef {
            name: name.clone(),
            topic,
            durable: req.durable,
            exclusive: req.exclusive,
            auto_delete: req.auto_delete,
            arguments: req.arguments,
            owns_topic,
        };
        let bytes = postcard::to_stdvec(&def).unwrap_or_default();
        self.persist(&[(KIND_QUEUE, name.clone(), bytes)], &[])?;
        if let Ok(mut ex) = self.amqp.exchanges.write() {
            ex.add_queue(&name);
        }
        if let Ok(mut by_topic) = self.amqp.by_topic.write() {
            by_topic.insert(def.topic.clone(), name.clone());
        }
        self.amqp.queues.write().map_err(|_| poisoned())?.insert(
            name.clone(),
            QueueState::new(def, req.exclusive.then_some(connection)),
        );
        tracing::info!(queue = %name, "declared AMQP queue");
        Ok(QueueOk {
            name,
            messages: 0,
            consumers: 0,
        })
    }

    /// A queue's declare-ok (it must exist and not be another connection's).
    fn queue_ok(&self, name: &str, connection: Option<u64>) -> AmqpResult<QueueOk> {
        let (topic, consumers) = {
            let queues = self.amqp.queues.read().map_err(|_| poisoned())?;
            let q = queues
                .get(name)
                .ok_or_else(|| AmqpError::not_found_queue(name))?;
            if let (Some(owner), Some(connection)) = (q.owner, connection)
                && owner != connection
            {
                return Err(AmqpError::locked(name));
            }
            (q.def.topic.clone(), q.consumers.len())
        };
        let messages = match self.subscription_stats(&topic, AMQP_SUBSCRIPTION) {
            Ok(stats) => stats.depth,
            // A stream queue has no subscription: what its log holds.
            Err(_) => self
                .topic(&topic)
                .map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (p.high_watermark() - p.log_start_offset()).max(0) as u64)
                        .sum()
                })
                .unwrap_or(0),
        };
        Ok(QueueOk {
            name: name.to_string(),
            messages: u32::try_from(messages).unwrap_or(u32::MAX),
            consumers: u32::try_from(consumers).unwrap_or(u32::MAX),
        })
    }

    /// Where basic.get leases from: the queue's slot (id 0) and its ready count.
    pub fn amqp_queue_for_get(
        &self,
        _who: &Principal,
        connection: u64,
        name: &str,
    ) -> AmqpResult<(ConsumerSlot, u32)> {
        let ok = self.queue_ok(name, Some(connection))?;
        self.touch_queue(name);
        let queues = self.amqp.queues.read().map_err(|_| poisoned())?;
        let q = queues
            .get(name)
            .ok_or_else(|| AmqpError::not_found_queue(name))?;
        if is_stream(&q.def) {
            return Err(stream_unsupported("basic.get", name));
        }
        let slot = ConsumerSlot {
            id: 0,
            topic: q.def.topic.clone(),
            counts_deliveries: counts_deliveries(&q.def),
            ttl_ms: queue_ttl(&q.def),
            active: None,
            stream: false,
        };
        Ok((slot, ok.messages))
    }

    /// The definition of the queue stored in `topic`.
    fn queue_of_topic(&self, topic: &str) -> Option<QueueDef> {
        let name = self.amqp.by_topic.read().ok()?.get(topic)?.clone();
        Some(self.amqp.queues.read().ok()?.get(&name)?.def.clone())
    }

    fn queue_is_stream(&self, name: &str) -> bool {
        self.amqp
            .queues
            .read()
            .map(|q| q.get(name).is_some_and(|q| is_stream(&q.def)))
            .unwrap_or(false)
    }

    /// Where a stream consumer starts, from its `x-stream-offset`: `first`, `last`
    /// (the last stored batch), `next` (the default), an offset, a timestamp, or an
    /// interval back from now ("1h").
    pub fn amqp_stream_start(
        &self,
        queue: &str,
        topic: &str,
        spec: Option<&Value>,
    ) -> AmqpResult<i64> {
        let partition = self
            .topic(topic)
            .ok_or_else(|| AmqpError::from_broker(&BrokerError::UnknownTopic(topic.to_string())))?
            .partition(0)
            .map_err(|e| AmqpError::from_broker(&e))?
            .clone();
        let (start, end) = (partition.log_start_offset(), partition.high_watermark());
        let at_time = |ms: i64| -> AmqpResult<i64> {
            Ok(partition
                .offset_for_timestamp(ms)
                .map_err(|e| AmqpError::from_broker(&e))?
                .map_or(end, |(offset, _)| offset))
        };
        let invalid = || {
            let shown = match spec {
                Some(Value::Str(s)) => format!("{{longstr,<<\"{s}\">>}}"),
                Some(v) => format!("{{{},{}}}", v.type_name(), value_text(Some(v))),
                None => "none".to_string(),
            };
            AmqpError::new(
                codes::PRECONDITION_FAILED,
                format!(
                    "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{queue}' in vhost '/': {{invalid_stream_offset_arg,{shown}}}"
                ),
            )
        };
        match spec {
            None => Ok(end),
            Some(Value::Str(s)) => match s.as_str() {
                "first" => Ok(start),
                "next" => Ok(end),
                "last" => {
                    if end <= start {
                        return Ok(end);
                    }
                    let read = partition
                        .read(end - 1, 0)
                        .map_err(|e| AmqpError::from_broker(&e))?;
                    Ok(herald_log::BatchHeader::parse(&read.records)
                        .map(|h| h.base_offset.max(start))
                        .unwrap_or(end - 1))
                }
                interval => {
                    let ms = parse_age_ms(interval).ok_or_else(invalid)?;
                    at_time(now_ms().saturating_sub(ms))
                }
            },
            Some(Value::Timestamp(secs)) => at_time(
                i64::try_from(*secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            ),
            Some(v) => match int_value(v) {
                Some(n) => Ok(n.clamp(start, end)),
                None => Err(invalid()),
            },
        }
    }

    /// Restart a queue's `x-expires` timer.
    fn touch_queue(&self, name: &str) {
        if let Ok(mut queues) = self.amqp.queues.write()
            && let Some(q) = queues.get_mut(name)
        {
            q.last_used_ms = now_ms();
        }
    }

    /// Delete the queues unused for their `x-expires` (part of the expiry sweep).
    pub async fn amqp_expire_queues(&self) {
        let now = now_ms();
        let expired = match self.amqp.queues.read() {
            Ok(queues) => queues.expired(now),
            Err(_) => return,
        };
        if expired.is_empty() {
            return;
        }
        let _admin = self.amqp.admin.lock().await;
        for name in expired {
            // Looked at again under the admin lock: a declare or consumer may have come.
            let still = self
                .amqp
                .queues
                .read()
                .map(|q| q.get(&name).is_some_and(|q| q.expired(now_ms())))
                .unwrap_or(false);
            if still {
                match self.remove_queue(&name).await {
                    Ok(()) => {
                        tracing::info!(queue = %name, "AMQP queue unused for its x-expires; deleted")
                    }
                    Err(e) => {
                        tracing::warn!(queue = %name, error = %e, "cannot delete an expired AMQP queue")
                    }
                }
            }
        }
    }

    fn queue_topic(&self, name: &str) -> AmqpResult<String> {
        self.amqp
            .queues
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .map(|q| q.def.topic.clone())
            .ok_or_else(|| AmqpError::not_found_queue(name))
    }

    pub async fn amqp_delete_queue(
        &self,
        _who: &Principal,
        connection: u64,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> AmqpResult<u32> {
        let _admin = self.amqp.admin.lock().await;
        let ok = match self.queue_ok(name, Some(connection)) {
            Ok(ok) => ok,
            // Deleting a queue that does not exist is fine, as in RabbitMQ.
            Err(e) if e.code == codes::NOT_FOUND => return Ok(0),
            Err(e) => return Err(e),
        };
        if if_unused && ok.consumers > 0 {
            return Err(AmqpError::new(
                codes::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - queue '{name}' in vhost '/' in use"),
            ));
        }
        if if_empty && ok.messages > 0 {
            return Err(AmqpError::new(
                codes::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - queue '{name}' in vhost '/' is not empty"),
            ));
        }
        self.remove_queue(name).await?;
        Ok(ok.messages)
    }

    /// Drop a queue: its bindings, its subscription, and its topic if the declare
    /// made it. Caller holds the admin lock.
    async fn remove_queue(&self, name: &str) -> AmqpResult<()> {
        let Some(state) = self
            .amqp
            .queues
            .write()
            .map_err(|_| poisoned())?
            .remove(name)
        else {
            return Ok(());
        };
        if let Ok(mut by_topic) = self.amqp.by_topic.write() {
            by_topic.remove(&state.def.topic);
        }
        let removed = match self.amqp.exchanges.write() {
            Ok(mut ex) => ex.remove_queue(name),
            Err(_) => return Err(poisoned()),
        };
        let mut deletes = vec![(KIND_QUEUE, name.to_string())];
        deletes.extend(
            removed
                .bindings
                .iter()
                .map(|b| (KIND_BINDING, binding_key(b))),
        );
        deletes.extend(removed.exchanges.iter().map(|e| (KIND_EXCHANGE, e.clone())));
        self.persist(&[], &deletes)?;
        let topic = state.def.topic;
        if let Err(e) = self.delete_subscription(&topic, AMQP_SUBSCRIPTION).await
            && !matches!(e, BrokerError::UnknownSubscription { .. })
        {
            tracing::warn!(queue = %name, error = %e, "cannot delete an AMQP queue's subscription");
        }
        if state.def.owns_topic
            && let Err(e) = self.delete_topic(&topic)
            && !matches!(e, BrokerError::UnknownTopic(_))
        {
            tracing::warn!(queue = %name, error = %e, "cannot delete an AMQP queue's topic");
        }
        tracing::info!(queue = %name, "deleted AMQP queue");
        Ok(())
    }

    pub async fn amqp_purge_queue(
        &self,
        _who: &Principal,
        connection: u64,
        name: &str,
    ) -> AmqpResult<u32> {
        self.queue_ok(name, Some(connection))?;
        if self.queue_is_stream(name) {
            return Err(stream_unsupported("queue.purge", name));
        }
        let topic = self.queue_topic(name)?;
        let purged = self
            .purge_subscription(&topic, AMQP_SUBSCRIPTION)
            .await
            .map_err(|e| AmqpError::from_broker(&e))?;
        Ok(u32::try_from(purged).unwrap_or(u32::MAX))
    }

    /// Register a consumer on a queue.
    pub fn amqp_consume(
        &self,
        _who: &Principal,
        connection: u64,
        name: &str,
        exclusive: bool,
    ) -> AmqpResult<ConsumerSlot> {
        let mut queues = self.amqp.queues.write().map_err(|_| poisoned())?;
        let q = queues
            .get_mut(name)
            .ok_or_else(|| AmqpError::not_found_queue(name))?;
        if let Some(owner) = q.owner
            && owner != connection
        {
            return Err(AmqpError::locked(name));
        }
        let held_exclusively = q.consumers.values().any(|(_, ex)| *ex);
        // A single-active-consumer queue takes no exclusive consumer at all.
        if held_exclusively || (exclusive && (!q.consumers.is_empty() || q.active.is_some())) {
            return Err(AmqpError::new(
                codes::ACCESS_REFUSED,
                format!("ACCESS_REFUSED - queue '{name}' in vhost '/' in exclusive use"),
            ));
        }
        let id = self.amqp.next_id.fetch_add(1, Ordering::Relaxed);
        q.consumers.insert(id, (connection, exclusive));
        let active = q.active.as_ref().map(|active| {
            if *active.borrow() == 0 {
                active.send_replace(id);
            }
            active.subscribe()
        });
        Ok(ConsumerSlot {
            id,
            topic: q.def.topic.clone(),
            counts_deliveries: counts_deliveries(&q.def),
            ttl_ms: queue_ttl(&q.def),
            active,
            stream: is_stream(&q.def),
        })
    }

    /// A consumer went away (cancel, channel or connection closed). An auto-delete
    /// queue goes with its last consumer.
    pub async fn amqp_cancel(&self, name: &str, slot: u64) {
        let delete = match self.amqp.queues.write() {
            Ok(mut queues) => match queues.get_mut(name) {
                Some(q) => {
                    let removed = q.consumers.remove(&slot).is_some();
                    if removed && q.consumers.is_empty() {
                        q.last_used_ms = now_ms();
                    }
                    // A single active consumer hands over when its task has ended
                    // (amqp_active_done), after it gave back what it had leased.
                    removed && q.consumers.is_empty() && q.def.auto_delete
                }
                None => false,
            },
            Err(_) => false,
        };
        if delete {
            let _admin = self.amqp.admin.lock().await;
            let still_unused = self
                .amqp
                .queues
                .read()
                .map(|q| q.get(name).is_some_and(|q| q.consumers.is_empty()))
                .unwrap_or(false);
            if still_unused && let Err(e) = self.remove_queue(name).await {
                tracing::warn!(queue = %name, error = %e, "cannot auto-delete an AMQP queue");
            }
        }
    }

    /// A single-active-consumer queue's consumer task ended (after it gave back its
    /// undelivered leases): if it was the active one, the oldest other consumer takes
    /// over.
    pub fn amqp_active_done(&self, name: &str, slot: u64) {
        if let Ok(queues) = self.amqp.queues.read()
            && let Some(q) = queues.get(name)
            && let Some(active) = &q.active
            && *active.borrow() == slot
        {
            let next = q.consumers.keys().copied().find(|id| *id != slot);
            active.send_replace(next.unwrap_or(0));
        }
    }

    /// A connection closed: its exclusive queues are deleted.
    pub async fn amqp_connection_closed(&self, connection: u64) {
        let owned: Vec<String> = match self.amqp.queues.read() {
            Ok(queues) => queues
                .iter()
                .filter(|(_, q)| q.owner == Some(connection))
                .map(|(name, _)| name.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        if owned.is_empty() {
            return;
        }
        let _admin = self.amqp.admin.lock().await;
        for name in owned {
            if let Err(e) = self.remove_queue(&name).await {
                tracing::warn!(queue = %name, error = %e, "cannot delete an exclusive AMQP queue");
            }
        }
    }

    /// A delivery given back (nack or reject with requeue, a closed channel): to the
    /// queue again, unless the queue has `x-delivery-limit` and the message was
    /// delivered more often than that: then it is dead-lettered with reason
    /// `delivery_limit` (or dropped), as a RabbitMQ quorum queue does.
    pub async fn amqp_requeue(&self, receipt: &str) -> crate::Result<()> {
        let (topic, _) = crate::queue::receipt_subscription(receipt)?;
        let limit = self
            .queue_of_topic(&topic)
            .and_then(|def| def.arguments.get("x-delivery-limit").and_then(int_value));
        let attempt = crate::queue::receipt_attempt(receipt).unwrap_or(0);
        match limit {
            Some(limit) if i64::from(attempt) > limit => {
                self.amqp_reject(receipt, "delivery_limit").await
            }
            _ => self.release(receipt).await,
        }
    }

    /// A delivery rejected without requeue (or nacked), or expired: the queue is done
    /// with it. With `x-dead-letter-exchange` a copy is published there first (durable
    /// before the original is acked: at least once), carrying its deaths; without one
    /// it is dropped, as in RabbitMQ.
    pub async fn amqp_reject(&self, receipt: &str, reason: &str) -> crate::Result<()> {
        let (topic, _) = crate::queue::receipt_subscription(receipt)?;
        let def = self.queue_of_topic(&topic);
        if let Some(def) = def
            && let Some(dlx) = def
                .arguments
                .get("x-dead-letter-exchange")
                .and_then(Value::as_str)
                .map(str::to_string)
            && let Some(record) = self.record_for_receipt(receipt)?
        {
            match self.dead_letter_record(&def, record, &dlx, reason) {
                Ok(appends) => {
                    for append in appends {
                        append.durable().await?;
                    }
                }
                Err(error) => {
                    // An unusable dead-letter exchange drops the message, as RabbitMQ
                    // does; said once per message so it is not silent.
                    tracing::warn!(queue = %def.name, exchange = %dlx, "cannot dead-letter: {}", error.text);
                }
            }
        }
        self.ack(receipt).await
    }

    /// Publish `record` (from queue `def`) to its dead-letter exchange with one more
    /// death: RabbitMQ's `x-death` entry for (queue, reason) gets its count raised and
    /// moves to the front, or a new one is put first.
    fn dead_letter_record(
        &self,
        def: &QueueDef,
        mut record: Record,
        dlx: &str,
        reason: &str,
    ) -> AmqpResult<Vec<PendingAppend>> {
        let text = |record: &Record, name: &str| {
            record
                .headers
                .get(&StrBytes::from_string(name.to_string()))
                .and_then(|v| v.as_ref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let exchange = text(&record, EXCHANGE_HEADER).unwrap_or_default();
        let routing_key = text(&record, ROUTING_KEY_HEADER).unwrap_or_else(|| def.name.clone());
        let mut deaths: Deaths = record
            .headers
            .get(&StrBytes::from_static_str(DEATHS_HEADER))
            .and_then(|v| v.as_ref())
            .and_then(|v| postcard::from_bytes(v).ok())
            .unwrap_or_default();
        if deaths.entries.is_empty() {
            deaths.first_reason = reason.to_string();
            deaths.first_queue = def.name.clone();
            deaths.first_exchange = exchange.clone();
        }
        let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
        // An expiration dies with the message: the copy does not expire again.
        record
            .headers
            .shift_remove(&StrBytes::from_static_str(EXPIRES_AT_HEADER));
        let original_expiration = record
            .headers
            .shift_remove(&StrBytes::from_static_str(EXPIRATION_HEADER))
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        match deaths
            .entries
            .iter()
            .position(|d| d.queue == def.name && d.reason == reason)
        {
            Some(i) => {
                let mut death = deaths.entries.remove(i);
                death.count += 1;
                death.time_s = now_s;
                deaths.entries.insert(0, death);
            }
            None => deaths.entries.insert(
                0,
                Death {
                    queue: def.name.clone(),
                    reason: reason.to_string(),
                    count: 1,
                    time_s: now_s,
                    exchange: exchange.clone(),
                    routing_keys: vec![routing_key.clone()],
                    original_expiration,
                },
            ),
        }
        let dl_key = def
            .arguments
            .get("x-dead-letter-routing-key")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(routing_key);
        let headers = self.amqp_headers_of(&record);
        let queues = self
            .amqp
            .exchanges
            .read()
            .map_err(|_| poisoned())?
            .route(dlx, &dl_key, &headers)?
            .queues;
        record.headers.insert(
            StrBytes::from_static_str(DEATHS_HEADER),
            Some(Bytes::from(
                postcard::to_stdvec(&deaths).unwrap_or_default(),
            )),
        );
        record.headers.insert(
            StrBytes::from_static_str(EXCHANGE_HEADER),
            Some(Bytes::from(dlx.to_string().into_bytes())),
        );
        record.headers.insert(
            StrBytes::from_static_str(ROUTING_KEY_HEADER),
            Some(Bytes::from(dl_key.clone().into_bytes())),
        );
        // Never back into the queue it died in with the same reason forever: RabbitMQ
        // drops a message that would cycle without a rejection in between.
        let topics: Vec<String> = {
            let all = self.amqp.queues.read().map_err(|_| poisoned())?;
            queues
                .iter()
                .filter_map(|q| all.get(q).map(|q| q.def.topic.clone()))
                .collect()
        };
        let batch =
            crate::queue::encode_batch(vec![record]).map_err(|e| AmqpError::from_broker(&e))?;
        let now = now_ms();
        let mut appends = Vec::new();
        for topic in topics {
            let Some(t) = self.topic(&topic) else {
                continue;
            };
            appends.push(
                t.append(0, &batch, now)
                    .map_err(|e| AmqpError::from_broker(&e))?,
            );
        }
        Ok(appends)
    }

    /// The AMQP headers table a stored record carries, for headers-exchange routing of
    /// a dead letter: its string headers (the raw properties are the front end's).
    fn amqp_headers_of(&self, record: &Record) -> Table {
        record
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("amqp."))
            .filter_map(|(k, v)| {
                let v = v.as_ref()?;
                Some((
                    k.to_string(),
                    Value::Str(String::from_utf8_lossy(v).into_owned()),
                ))
            })
            .collect()
    }

    pub async fn amqp_declare_exchange(
        &self,
        _who: &Principal,
        req: DeclareExchange,
    ) -> AmqpResult<()> {
        let DeclareExchange {
            name,
            kind,
            passive,
            durable,
            auto_delete,
            internal,
            arguments,
        } = req;
        let name = name.as_str();
        let _admin = self.amqp.admin.lock().await;
        let mut ex = self.amqp.exchanges.write().map_err(|_| poisoned())?;
        if passive {
            return ex
                .declare_passive(name)
                .map(|_| ())
                .map_err(AmqpError::from);
        }
        let def = crate::exchange::ExchangeDef {
            name: name.to_string(),
            kind: crate::exchange::ExchangeKind::parse(&kind)?,
            durable,
            auto_delete,
            internal,
            arguments,
        };
        let created = ex.declare(def.clone())?;
        if created && durable {
            let bytes = postcard::to_stdvec(&def).unwrap_or_default();
            drop(ex);
            self.persist(&[(KIND_EXCHANGE, name.to_string(), bytes)], &[])?;
        }
        Ok(())
    }

    pub async fn amqp_delete_exchange(
        &self,
        _who: &Principal,
        name: &str,
        if_unused: bool,
    ) -> AmqpResult<()> {
        let _admin = self.amqp.admin.lock().await;
        let removed = self
            .amqp
            .exchanges
            .write()
            .map_err(|_| poisoned())?
            .delete(name, if_unused)?;
        let mut deletes = vec![(KIND_EXCHANGE, name.to_string())];
        deletes.extend(
            removed
                .bindings
                .iter()
                .map(|b| (KIND_BINDING, binding_key(b))),
        );
        deletes.extend(removed.exchanges.iter().map(|e| (KIND_EXCHANGE, e.clone())));
        self.persist(&[], &deletes)
    }

    /// Bind (or with `bind` false, unbind) a queue to an exchange.
    #[allow(clippy::too_many_arguments)]
    pub async fn amqp_bind_queue(
        &self,
        _who: &Principal,
        connection: u64,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Table,
        bind: bool,
    ) -> AmqpResult<()> {
        self.queue_ok(queue, Some(connection))?;
        let binding = crate::exchange::Binding {
            source: exchange.to_string(),
            destination: crate::exchange::Destination::Queue(queue.to_string()),
            routing_key: routing_key.to_string(),
            arguments,
        };
        self.change_binding(binding, bind).await
    }

    /// Bind (or unbind) exchange `destination` to exchange `source`.
    pub async fn amqp_bind_exchange(
        &self,
        _who: &Principal,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: Table,
        bind: bool,
    ) -> AmqpResult<()> {
        let binding = crate::exchange::Binding {
            source: source.to_string(),
            destination: crate::exchange::Destination::Exchange(destination.to_string()),
            routing_key: routing_key.to_string(),
            arguments,
        };
        self.change_binding(binding, bind).await
    }

    async fn change_binding(
        &self,
        binding: crate::exchange::Binding,
        bind: bool,
    ) -> AmqpResult<()> {
        let _admin = self.amqp.admin.lock().await;
        let mut ex = self.amqp.exchanges.write().map_err(|_| poisoned())?;
        if bind {
            ex.bind(&binding)?;
            drop(ex);
            let bytes = postcard::to_stdvec(&binding).unwrap_or_default();
            self.persist(&[(KIND_BINDING, binding_key(&binding), bytes)], &[])
        } else {
            let removed = ex.unbind(&binding)?;
            drop(ex);
            let mut deletes = vec![(KIND_BINDING, binding_key(&binding))];
            deletes.extend(removed.exchanges.into_iter().map(|e| (KIND_EXCHANGE, e)));
            self.persist(&[], &deletes)
        }
    }

    /// Route a message and append it to every queue it reaches. Appends are made in
    /// call order (a channel's publishes stay in order); their durability is awaited
    /// by the caller (publisher confirms).
    pub fn amqp_publish(&self, _who: &Principal, message: &Message) -> AmqpResult<Published> {
        let routed = self
            .amqp
            .exchanges
            .read()
            .map_err(|_| poisoned())?
            .route(&message.exchange, &message.routing_key, &message.headers)?
            .queues;
        let expiring = message
            .expiration
            .as_deref()
            .and_then(|e| e.trim().parse::<i64>().ok())
            .filter(|ms| *ms >= 0);
        let mut rejected = false;
        let mut trim = Vec::new();
        // (topic, the queue's name if it counts unflushed bytes for x-max-length-bytes)
        let mut topics: Vec<(String, Option<String>)> = Vec::new();
        let mut dead: Vec<QueueDef> = Vec::new();
        {
            let mut queues = self.amqp.queues.write().map_err(|_| poisoned())?;
            for name in &routed {
                let Some(q) = queues.get_mut(name) else {
                    continue;
                };
                if expiring.is_some() {
                    q.expiring = true;
                }
                match self.over_length(q, message.body.len() as u64) {
                    Some(Overflow::RejectPublish) => {
                        rejected = true;
                        continue;
                    }
                    Some(Overflow::RejectPublishDlx) => {
                        rejected = true;
                        dead.push(q.def.clone());
                        continue;
                    }
                    Some(Overflow::DropHead) => trim.push(name.clone()),
                    None => {}
                }
                let counts_bytes =
                    !is_stream(&q.def) && q.def.arguments.contains_key("x-max-length-bytes");
                topics.push((q.def.topic.clone(), counts_bytes.then(|| name.clone())));
            }
        }
        let now = now_ms();
        let expires_at = expiring.map(|ms| now.saturating_add(ms));
        let mut appends = Vec::with_capacity(topics.len());
        // reject-publish-dlx: the refused message goes to the queue's dead-letter
        // exchange, as if it had died there for `maxlen`.
        for def in dead {
            if let Some(dlx) = def
                .arguments
                .get("x-dead-letter-exchange")
                .and_then(Value::as_str)
            {
                let record = message_record(message, expires_at);
                match self.dead_letter_record(&def, record, dlx, "maxlen") {
                    Ok(more) => appends.extend(more),
                    Err(error) => {
                        tracing::warn!(queue = %def.name, exchange = %dlx, "cannot dead-letter: {}", error.text)
                    }
                }
            }
        }
        if topics.is_empty() {
            return Ok(Published {
                appends,
                routed: !routed.is_empty(),
                rejected,
                trim,
            });
        }
        let batch = crate::queue::encode_batch(vec![message_record(message, expires_at)])
            .map_err(|e| AmqpError::from_broker(&e))?;
        let mut unflushed = Vec::new();
        for (topic, counts_bytes) in topics {
            let Some(t) = self.topic(&topic) else {
                continue;
            };
            let partition = if t.partitions.len() <= 1 {
                0
            } else {
                (fnv1a(message.routing_key.as_bytes()) % t.partitions.len() as u64) as i32
            };
            let append = t
                .append(partition, &batch, now)
                .map_err(|e| AmqpError::from_broker(&e))?;
            if let Some(name) = counts_bytes {
                unflushed.push((name, partition, append.base_offset));
            }
            appends.push(append);
        }
        if !unflushed.is_empty() {
            let mut queues = self.amqp.queues.write().map_err(|_| poisoned())?;
            for (name, partition, offset) in unflushed {
                if let Some(q) = queues.get_mut(&name) {
                    q.unflushed
                        .push((partition, offset, message.body.len() as u64));
                }
            }
        }
        Ok(Published {
            appends,
            routed: true,
            rejected,
            trim,
        })
    }

    /// Whether one more message of `body_bytes` would take queue `q` past `x-max-length`
    /// / `x-max-length-bytes` (ready messages and their body bytes, as RabbitMQ counts
    /// them: the queue is full when the message would make either count exceed its
    /// limit), and what then.
    fn over_length(&self, q: &mut QueueState, body_bytes: u64) -> Option<Overflow> {
        let def = &q.def;
        if is_stream(def) {
            // A stream's length limits are retention, not overflow.
            return None;
        }
        let max = def.arguments.get("x-max-length").and_then(int_value);
        let max_bytes = def.arguments.get("x-max-length-bytes").and_then(int_value);
        if max.is_none() && max_bytes.is_none() {
            return None;
        }
        let full_by_count = max.is_some_and(|max| {
            // Ready messages, counting those appended but not durable yet (a
            // pipelined publisher's burst).
            let pending: i64 = self
                .topic(&def.topic)
                .map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (p.log_end_offset() - p.high_watermark()).max(0))
                        .sum()
                })
                .unwrap_or(0);
            let depth = self
                .subscription_stats(&def.topic, AMQP_SUBSCRIPTION)
                .map(|s| s.depth)
                .unwrap_or(0) as i64
                + pending;
            depth >= max
        });
        let full = full_by_count
            || max_bytes.is_some_and(|max| {
                let max = u64::try_from(max).unwrap_or(0);
                self.queue_ready_bytes(q, max)
                    .is_some_and(|ready| ready.saturating_add(body_bytes) > max)
            });
        if !full {
            return None;
        }
        match q.def.arguments.get("x-overflow").and_then(Value::as_str) {
            Some("reject-publish") => Some(Overflow::RejectPublish),
            Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
            _ => Some(Overflow::DropHead),
        }
    }

    /// Body bytes of queue `q`'s ready messages, counting those appended but not
    /// durable yet, counted until past `enough`; None if they cannot be counted now
    /// (the queue then takes the message: a limit never refuses on a guess).
    fn queue_ready_bytes(&self, q: &mut QueueState, enough: u64) -> Option<u64> {
        let (ready, high_watermarks) = self
            .subscription_ready_bytes(&q.def.topic, AMQP_SUBSCRIPTION, enough)
            .map_err(|e| tracing::warn!(queue = %q.def.name, error = %e, "cannot count the queue's bytes"))
            .ok()?;
        let below = |p: i32, o: i64| {
            usize::try_from(p)
                .ok()
                .and_then(|p| high_watermarks.get(p))
                .is_some_and(|hw| o < *hw)
        };
        q.unflushed.retain(|(p, o, _)| !below(*p, *o));
        Some(ready + q.unflushed.iter().map(|(_, _, b)| b).sum::<u64>())
    }

    /// Drop messages from the head of a queue past its `x-max-length` (drop-head):
    /// dead-lettered with reason `maxlen` when the queue has a dead-letter exchange.
    pub async fn amqp_trim(&self, name: &str) {
        let Some(def) = self
            .amqp
            .queues
            .read()
            .ok()
            .and_then(|q| q.get(name).map(|q| q.def.clone()))
        else {
            return;
        };
        let max = def.arguments.get("x-max-length").and_then(int_value);
        let max_bytes = def
            .arguments
            .get("x-max-length-bytes")
            .and_then(int_value)
            .map(|b| u64::try_from(b).unwrap_or(0));
        loop {
            let depth = self
                .subscription_stats(&def.topic, AMQP_SUBSCRIPTION)
                .map(|s| s.depth)
                .unwrap_or(0) as i64;
            let mut over = max.map_or(0, |max| {
                usize::try_from(depth - max)
                    .unwrap_or(0)
                    .min(EXPIRY_SWEEP_BATCH)
            });
            if over == 0
                && let Some(max_bytes) = max_bytes
                && self
                    .subscription_ready_bytes(&def.topic, AMQP_SUBSCRIPTION, max_bytes)
                    .is_ok_and(|(ready, _)| ready > max_bytes)
            {
                // Past the byte limit: drop the head one message at a time.
                over = 1;
            }
            if over == 0 {
                return;
            }
            let Ok(head) = self.receive(&def.topic, AMQP_SUBSCRIPTION, over, 0).await else {
                return;
            };
            if head.is_empty() {
                return;
            }
            for record in head {
                if let Err(e) = self.amqp_reject(&record.receipt, "maxlen").await {
                    tracing::warn!(queue = %name, error = %e, "cannot drop the head of a full queue");
                    return;
                }
            }
        }
    }

    /// One pass of the expiry sweep: in every queue with a TTL (or that took a message
    /// with an expiration), expired messages at the head are dead-lettered with reason
    /// `expired` (or dropped) even when nobody consumes. Others looked at are given
    /// back uncounted.
    pub async fn amqp_expire(&self) {
        let queues: Vec<(String, String, Option<i64>)> = match self.amqp.queues.read() {
            Ok(q) => q
                .values()
                .filter(|q| q.expiring)
                .map(|q| (q.def.name.clone(), q.def.topic.clone(), queue_ttl(&q.def)))
                .collect(),
            Err(_) => return,
        };
        for (name, topic, ttl) in queues {
            let Ok(head) = self
                .receive(&topic, AMQP_SUBSCRIPTION, EXPIRY_SWEEP_BATCH, 0)
                .await
            else {
                continue;
            };
            let now = now_ms();
            for record in head {
                let outcome = if is_expired(&record, ttl, now) {
                    self.amqp_reject(&record.receipt, "expired").await
                } else {
                    self.unlease(&record.receipt).await
                };
                if let Err(e) = outcome {
                    tracing::warn!(queue = %name, error = %e, "expiry sweep");
                }
            }
        }
    }

    /// Exchanges, for listings.
    pub fn amqp_exchanges(&self) -> Vec<crate::exchange::ExchangeDef> {
        self.amqp
            .exchanges
            .read()
            .map(|ex| ex.exchanges().cloned().collect())
            .unwrap_or_default()
    }

    /// Bindings, for listings.
    pub fn amqp_bindings(&self) -> Vec<crate::exchange::Binding> {
        self.amqp
            .exchanges
            .read()
            .map(|ex| ex.bindings())
            .unwrap_or_default()
    }

    /// Queues with their ready and consumer counts, for listings.
    pub fn amqp_queues(&self) -> Vec<(QueueDef, QueueOk)> {
        let names: Vec<String> = self
            .amqp
            .queues
            .read()
            .map(|q| q.keys().cloned().collect())
            .unwrap_or_default();
        names
            .into_iter()
            .filter_map(|name| {
                let def = self.amqp.queues.read().ok()?.get(&name)?.def.clone();
                let ok = self.queue_ok(&name, None).ok()?;
                Some((def, ok))
            })
            .collect()
    }
}

fn queue_ttl(def: &QueueDef) -> Option<i64> {
    def.arguments.get("x-message-ttl").and_then(int_value)
}

/// Whether a stored message has outlived its queue's TTL or its own expiration.
pub fn is_expired(record: &ReceivedRecord, queue_ttl_ms: Option<i64>, now_ms: i64) -> bool {
    let by_queue = queue_ttl_ms.map(|ttl| record.timestamp.saturating_add(ttl));
    let by_message = record
        .headers
        .iter()
        .find(|(k, _)| k == EXPIRES_AT_HEADER)
        .and_then(|(_, v)| v.as_ref())
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
    match (by_queue, by_message) {
        (None, None) => false,
        (a, b) => now_ms >= a.unwrap_or(i64::MAX).min(b.unwrap_or(i64::MAX)),
    }
}

fn is_stream(def: &QueueDef) -> bool {
    def.arguments.get("x-queue-type").and_then(Value::as_str) == Some("stream")
}

/// What a stream queue refuses; RabbitMQ closes the connection for it.
pub fn stream_unsupported(what: &str, name: &str) -> AmqpError {
    AmqpError::new(
        codes::NOT_IMPLEMENTED,
        format!(
            "NOT_IMPLEMENTED - {what} not supported by stream queues queue '{name}' in vhost '/'"
        ),
    )
}

/// A stream queue must be durable, not exclusive, not auto-delete (as in RabbitMQ).
/// Its `x-max-age` and `x-max-length-bytes` become the topic's retention.
fn check_stream_declare(name: &str, req: &DeclareQueue) -> AmqpResult<BTreeMap<String, String>> {
    let invalid = |what: &str| {
        AmqpError::new(
            codes::PRECONDITION_FAILED,
            format!(
                "PRECONDITION_FAILED - invalid property '{what}' for queue '{name}' in vhost '/'"
            ),
        )
    };
    if !req.durable {
        return Err(invalid("non-durable"));
    }
    if req.exclusive {
        return Err(invalid("exclusive-owner"));
    }
    if req.auto_delete {
        return Err(invalid("auto-delete"));
    }
    let mut configs = BTreeMap::new();
    // validate_queue_arguments checked x-max-age.
    if let Some(ms) = req
        .arguments
        .get("x-max-age")
        .and_then(Value::as_str)
        .and_then(parse_age_ms)
    {
        configs.insert("retention.ms".to_string(), ms.to_string());
    }
    if let Some(bytes) = req.arguments.get("x-max-length-bytes").and_then(int_value) {
        configs.insert("retention.bytes".to_string(), bytes.to_string());
    }
    Ok(configs)
}

/// RabbitMQ's `x-max-age` and interval `x-stream-offset` form: a count and a unit,
/// Y(ears), M(onths), D(ays), h, m or s ("7D", "12h").
pub fn parse_age_ms(text: &str) -> Option<i64> {
    let unit = text.chars().last()?;
    let count: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let unit_ms: i64 = match unit {
        'Y' => 365 * 86_400_000,
        'M' => 30 * 86_400_000,
        'D' => 86_400_000,
        'h' => 3_600_000,
        'm' => 60_000,
        's' => 1_000,
        _ => return None,
    };
    (count >= 0).then(|| count.saturating_mul(unit_ms))
}

fn single_active(def: &QueueDef) -> bool {
    matches!(
        def.arguments.get("x-single-active-consumer"),
        Some(Value::Bool(true))
    )
}

fn counts_deliveries(def: &QueueDef) -> bool {
    def.arguments.contains_key("x-delivery-limit")
        || def.arguments.get("x-queue-type").and_then(Value::as_str) == Some("quorum")
}

/// RabbitMQ's checks of a new queue's arguments, with its texts.
fn validate_queue_arguments(name: &str, arguments: &Table) -> AmqpResult<()> {
    let invalid = |arg: &str, why: String| {
        AmqpError::new(
            codes::PRECONDITION_FAILED,
            format!(
                "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{name}' in vhost '/': {why}"
            ),
        )
    };
    if let Some(kind) = arguments.get("x-queue-type") {
        match kind.as_str() {
            Some("classic" | "quorum" | "stream") => {}
            _ => {
                return Err(invalid(
                    "x-queue-type",
                    format!("{} (classic, quorum or stream)", value_text(Some(kind))),
                ));
            }
        }
    }
    for arg in [
        "x-message-ttl",
        "x-expires",
        "x-max-length",
        "x-max-length-bytes",
        "x-delivery-limit",
    ] {
        let Some(v) = arguments.get(arg) else {
            continue;
        };
        match int_value(v) {
            None => {
                return Err(invalid(
                    arg,
                    format!("\"expected integer, got {}\"", v.type_name()),
                ));
            }
            Some(n) if n < 0 => return Err(invalid(arg, format!("{{value_negative,{n}}}"))),
            Some(0) if arg == "x-expires" => return Err(invalid(arg, "{value_zero,0}".into())),
            Some(_) => {}
        }
    }
    if let Some(v) = arguments.get("x-single-active-consumer")
        && !matches!(v, Value::Bool(_))
    {
        return Err(invalid(
            "x-single-active-consumer",
            format!("{{unacceptable_type,{}}}", v.type_name()),
        ));
    }
    if arguments.get("x-queue-type").and_then(Value::as_str) == Some("stream") {
        // What only other queue types have.
        for arg in [
            "x-max-length",
            "x-overflow",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-message-ttl",
            "x-expires",
            "x-single-active-consumer",
            "x-delivery-limit",
            "x-max-priority",
        ] {
            if arguments.contains_key(arg) {
                return Err(AmqpError::new(
                    codes::PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{name}' in vhost '/' of queue type rabbit_stream_queue"
                    ),
                ));
            }
        }
        if let Some(age) = arguments.get("x-max-age")
            && age.as_str().and_then(parse_age_ms).is_none()
        {
            return Err(invalid("x-max-age", "invalid_max_age".into()));
        }
    }
    Ok(())
}

/// The meta-store key of a binding: every field, so equal bindings share a key.
fn binding_key(b: &crate::exchange::Binding) -> String {
    let (kind, dest) = match &b.destination {
        crate::exchange::Destination::Queue(q) => ("q", q.as_str()),
        crate::exchange::Destination::Exchange(e) => ("e", e.as_str()),
    };
    let args = serde_json::to_string(&b.arguments).unwrap_or_default();
    format!(
        "{}\u{0}{kind}\u{0}{dest}\u{0}{}\u{0}{args}",
        b.source, b.routing_key
    )
}

/// The record a published message is stored as (see the module doc for its headers).
fn message_record(message: &Message, expires_at: Option<i64>) -> Record {
    let mut headers = indexmap_headers(message);
    if let Some(at) = expires_at {
        headers.insert(
            StrBytes::from_static_str(EXPIRES_AT_HEADER),
            Some(Bytes::from(at.to_string().into_bytes())),
        );
        if let Some(expiration) = &message.expiration {
            headers.insert(
                StrBytes::from_static_str(EXPIRATION_HEADER),
                Some(Bytes::from(expiration.clone().into_bytes())),
            );
        }
    }
    headers.shrink_to_fit();
    Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now_ms(),
        key: message
            .message_id
            .as_ref()
            .map(|id| Bytes::from(id.clone().into_bytes())),
        value: Some(message.body.clone()),
        headers,
        delete_horizon: false,
    }
}

fn indexmap_headers(
    message: &Message,
) -> kafka_protocol::indexmap::IndexMap<StrBytes, Option<Bytes>> {
    let mut headers = kafka_protocol::indexmap::IndexMap::new();
    headers.insert(
        StrBytes::from_static_str(PROPERTIES_HEADER),
        Some(message.raw_properties.clone()),
    );
    headers.insert(
        StrBytes::from_static_str(EXCHANGE_HEADER),
        Some(Bytes::from(message.exchange.clone().into_bytes())),
    );
    headers.insert(
        StrBytes::from_static_str(ROUTING_KEY_HEADER),
        Some(Bytes::from(message.routing_key.clone().into_bytes())),
    );
    if let Some(ct) = &message.content_type {
        headers.insert(
            StrBytes::from_static_str(CONTENT_TYPE_HEADER),
            Some(Bytes::from(ct.clone().into_bytes())),
        );
    }
    for (name, value) in &message.headers {
        if let Some(text) = value.as_str()
            && !name.starts_with("amqp.")
        {
            headers.insert(
                StrBytes::from_string(name.clone()),
                Some(Bytes::from(text.to_string().into_bytes())),
            );
        }
    }
    headers
}

/// The task that runs [`Broker::amqp_expire`] every [`EXPIRY_SWEEP_MS`].
pub(crate) fn spawn_expiry(broker: std::sync::Weak<Broker>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(EXPIRY_SWEEP_MS));
        loop {
            tick.tick().await;
            let Some(b) = broker.upgrade() else { return };
            b.amqp_expire().await;
            b.amqp_expire_queues().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(timestamp: i64, headers: Vec<(&str, &str)>) -> ReceivedRecord {
        ReceivedRecord {
            partition: 0,
            offset: 0,
            timestamp,
            key: None,
            value: None,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), Some(Bytes::from(v.to_string()))))
                .collect(),
            receipt: String::new(),
            delivery_count: 1,
        }
    }

    #[test]
    fn queue_names_map_to_valid_distinct_topics() {
        assert_eq!(topic_for_queue("notifications"), "notifications");
        let celery = topic_for_queue("celery@host.celery.pidbox");
        assert!(
            crate::topic::validate_topic_name(&celery).is_ok(),
            "{celery}"
        );
        assert!(celery.starts_with("amqp.celery_host.celery.pidbox."));
        // Names that sanitise alike still get their own topics.
        assert_ne!(topic_for_queue("a@b"), topic_for_queue("a#b"));
        let long = "q".repeat(300);
        assert!(crate::topic::validate_topic_name(&topic_for_queue(&long)).is_ok());
        assert!(topic_for_queue("").starts_with("amqp.q."));
    }

    #[test]
    fn expiry_takes_the_earlier_of_queue_ttl_and_message_expiration() {
        let plain = record(1_000, vec![]);
        assert!(!is_expired(&plain, None, i64::MAX));
        assert!(!is_expired(&plain, Some(500), 1_499));
        assert!(is_expired(&plain, Some(500), 1_500));
        let expiring = record(1_000, vec![(EXPIRES_AT_HEADER, "1200")]);
        assert!(!is_expired(&expiring, None, 1_199));
        assert!(is_expired(&expiring, None, 1_200));
        assert!(is_expired(&expiring, Some(10_000), 1_200));
        // A header that is not a number does not expire the message.
        let bad = record(1_000, vec![(EXPIRES_AT_HEADER, "soon")]);
        assert!(!is_expired(&bad, None, i64::MAX));
    }

    #[test]
    fn reply_codes_split_channel_and_connection_errors() {
        assert!(!AmqpError::new(codes::NOT_FOUND, "").is_hard());
        assert!(!AmqpError::new(codes::PRECONDITION_FAILED, "").is_hard());
        assert!(!AmqpError::new(codes::RESOURCE_LOCKED, "").is_hard());
        assert!(AmqpError::new(codes::FRAME_ERROR, "").is_hard());
        assert!(AmqpError::new(codes::NOT_ALLOWED, "").is_hard());
        assert!(AmqpError::new(codes::INTERNAL_ERROR, "").is_hard());
    }

    fn queue_state(name: &str, expires_ms: Option<i64>, last_used_ms: i64) -> QueueState {
        let mut arguments = Table::new();
        if let Some(ms) = expires_ms {
            arguments.insert("x-expires".into(), Value::I64(ms));
        }
        let def = QueueDef {
            name: name.into(),
            topic: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments,
            owns_topic: true,
        };
        let mut q = QueueState::new(def, None);
        q.last_used_ms = last_used_ms;
        q
    }

    #[test]
    fn the_expiry_sweep_looks_at_queues_with_x_expires_only() {
        let mut queues: Queues = (0..1_000)
            .map(|i| {
                (
                    format!("plain-{i}"),
                    queue_state(&format!("plain-{i}"), None, 0),
                )
            })
            .collect();
        assert!(queues.with_expires.is_empty());
        queues.insert("short".into(), queue_state("short", Some(100), 1_000));
        queues.insert("long".into(), queue_state("long", Some(10_000), 1_000));
        assert_eq!(queues.with_expires.len(), 2);
        assert!(queues.expired(1_099).is_empty());
        assert_eq!(queues.expired(1_100), ["short"]);
        assert_eq!(queues.expired(11_000), ["long", "short"]);
        // A consumer holds it; the timer counts from its last use.
        queues
            .get_mut("short")
            .unwrap()
            .consumers
            .insert(1, (1, false));
        assert_eq!(queues.expired(11_000), ["long"]);
        assert!(queues.remove("long").is_some());
        assert_eq!(queues.with_expires.len(), 1);
        assert!(queues.expired(i64::MAX).is_empty());
        assert_eq!(queues.len(), 1_001);
        // A name declared again without x-expires (after a delete) leaves the set.
        queues.insert("short".into(), queue_state("short", None, 0));
        assert!(queues.with_expires.is_empty());
    }
}
