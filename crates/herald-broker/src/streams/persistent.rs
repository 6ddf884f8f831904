//! Persistent subscriptions (KurrentDB's competing consumers) on the work-queue engine.
//!
//! A persistent subscription `(source, group)` is a shared subscription of the event
//! store topic (`queue/`), filtered to its source: one stream (records keyed by its
//! name), a category (`$ce-x`: keys starting `x-`), an event type (`$et-x`), a
//! correlation id (`$bc-x`), first events (`$streams`) or `$all` with an optional
//! stream-name or event-type filter. So leases (the message timeout), retries (a nack
//! or a timeout counts a failure), parking (the engine's dead-lettering, written as a
//! link event to `$persistentsubscription-<source>::<group>-parked`) and durable
//! delivery state are the queue engine's, not a second engine. What lives here is the
//! definition (stored in the meta store), the consumers of one group and how events are
//! dealt to them (round robin, dispatch to single, pinned by stream or correlation id),
//! each consumer bounded by the buffer size it asked for.
//!
//! One task per group with consumers (the pump) leases as many events as the consumers
//! have free slots and deals them out; acks and nacks go to the engine by receipt. A
//! consumer that goes away gives its events back at once (they are redelivered to the
//! others), and at start-up every lease is given back, as KurrentDB retries in-flight
//! messages when a subscriber drops.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::Record;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use super::read::{link_event, recorded};
use super::{
    EVENTSTORE_TOPIC, Expected, LINK_TYPE, NewEvent, RecordedEvent, StreamError, StreamResult,
    TYPE_HEADER, check_stream_name,
};
use crate::error::BrokerError;
use crate::queue::filter::{FilterField, RecordFilter};
use crate::queue::settings::{LEASE_MS_MAX, MAX_UNACKED_MAX};
use crate::queue::{Leases, ReceivedRecord, StartPosition, SubscriptionSettings};
use crate::streams::read::FilterOn;
use crate::{Broker, Principal, now_ms};

/// The event source name of a subscription to `$all`.
pub const ALL_SOURCE: &str = "$all";
/// Largest buffer a consumer may ask for (events in flight to it at once).
pub const CONSUMER_BUFFER_MAX: usize = 10_000;
/// Most parked events one replay puts back.
pub const REPLAY_PARKED_MAX: u64 = MAX_UNACKED_MAX as u64;
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 1_024;
/// How long the pump waits for events before it looks at its consumers again.
const PUMP_WAIT_MS: u64 = 250;

/// How events are dealt to a group's consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Strategy {
    /// Each event to the next consumer with room, in turn.
    #[default]
    RoundRobin,
    /// Every event to the first consumer until its buffer is full, then the next.
    DispatchToSingle,
    /// The events of one stream always to the same consumer (while the set of
    /// consumers stays the same).
    Pinned,
    /// As `Pinned`, by the event's `$correlationId` (its stream when it has none).
    PinnedByCorrelation,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "RoundRobin",
            Strategy::DispatchToSingle => "DispatchToSingle",
            Strategy::Pinned => "Pinned",
            Strategy::PinnedByCorrelation => "PinnedByCorrelation",
        }
    }

    pub fn parse(name: &str) -> Option<Strategy> {
        [
            Strategy::RoundRobin,
            Strategy::DispatchToSingle,
            Strategy::Pinned,
            Strategy::PinnedByCorrelation,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StartFrom {
    Start,
    #[default]
    End,
    /// A revision of the source stream.
    Revision(u64),
    /// A `$all` position (its event included).
    Position(u64),
}

/// A `$all` subscription's filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFilter {
    pub on: FilterOn,
    pub prefixes: Vec<String>,
    pub regex: String,
}

/// A persistent subscription's settings, as KurrentDB names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistentSettings {
    pub resolve_links: bool,
    pub extra_statistics: bool,
    /// Retries after the first delivery before an event is parked.
    pub max_retry_count: u32,
    pub min_checkpoint_count: u32,
    pub max_checkpoint_count: u32,
    /// 0: any number.
    pub max_subscriber_count: u32,
    pub live_buffer_size: u32,
    pub read_batch_size: u32,
    pub history_buffer_size: u32,
    /// 0: no timeout.
    pub message_timeout_ms: u64,
    pub checkpoint_after_ms: u64,
    pub strategy: Strategy,
    pub start: StartFrom,
}

impl Default for PersistentSettings {
    fn default() -> Self {
        PersistentSettings {
            resolve_links: false,
            extra_statistics: false,
            max_retry_count: 10,
            min_checkpoint_count: 10,
            max_checkpoint_count: 1_000,
            max_subscriber_count: 0,
            live_buffer_size: 500,
            read_batch_size: 20,
            history_buffer_size: 500,
            message_timeout_ms: 30_000,
            checkpoint_after_ms: 2_000,
            strategy: Strategy::RoundRobin,
            start: StartFrom::End,
        }
    }
}

impl PersistentSettings {
    /// The lease a delivery gets: the message timeout (0, none, is the longest lease).
    fn lease_ms(&self) -> u64 {
        match self.message_timeout_ms {
            0 => LEASE_MS_MAX,
            ms => ms,
        }
    }

    fn validate(&self) -> StreamResult<()> {
        let bad = |m: &str| Err(StreamError::BadRequest(m.to_string()));
        if self.live_buffer_size == 0 || self.read_batch_size == 0 || self.history_buffer_size == 0
        {
            return bad(
                "live buffer size, read batch size and history buffer size must be positive",
            );
        }
        if self.message_timeout_ms > LEASE_MS_MAX {
            return bad("message timeout must be at most 43200000 ms (12 hours)");
        }
        if self.min_checkpoint_count > self.max_checkpoint_count {
            return bad("min checkpoint count must not be above max checkpoint count");
        }
        Ok(())
    }
}

/// A persistent subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentDef {
    /// A stream name, or [`ALL_SOURCE`].
    pub source: String,
    pub group: String,
    /// Only for `$all`.
    pub filter: Option<SourceFilter>,
    pub settings: PersistentSettings,
    /// The work-queue subscription of the event store topic that carries it.
    pub queue: String,
}

impl PersistentDef {
    /// `<source>::<group>`, as KurrentDB names a subscription to its clients.
    pub fn id(&self) -> String {
        format!("{}::{}", self.source, self.group)
    }

    /// Where events that failed too often (or were nacked with park) go, as links.
    pub fn parked_stream(&self) -> String {
        parked_stream(&self.source, &self.group)
    }

    fn record_filter(&self) -> StreamResult<Option<RecordFilter>> {
        let by = |on: FilterField, exact: Option<String>, prefixes: Vec<String>, regex: String| {
            Some(RecordFilter {
                on,
                exact,
                prefixes,
                regex,
            })
        };
        let type_field = || FilterField::Header(TYPE_HEADER.to_string());
        let s = &self.source;
        Ok(if s == ALL_SOURCE {
            self.filter.as_ref().and_then(|f| {
                let on = match f.on {
                    FilterOn::StreamName => FilterField::Key,
                    FilterOn::EventType => type_field(),
                };
                (!f.prefixes.is_empty() || !f.regex.is_empty())
                    .then(|| by(on, None, f.prefixes.clone(), f.regex.clone()))
                    .flatten()
            })
        } else if let Some(c) = s.strip_prefix("$ce-") {
            by(FilterField::Key, None, vec![format!("{c}-")], String::new())
        } else if let Some(t) = s.strip_prefix("$et-") {
            by(type_field(), Some(t.to_string()), Vec::new(), String::new())
        } else if let Some(id) = s.strip_prefix("$bc-") {
            // The correlation id is a field of the event's JSON metadata.
            let regex = format!(r#""\$correlationId"\s*:\s*"{}""#, fancy_regex::escape(id));
            by(
                FilterField::Header(super::METADATA_HEADER.to_string()),
                None,
                Vec::new(),
                regex,
            )
        } else if s == "$streams" {
            by(
                FilterField::Header(super::REVISION_HEADER.to_string()),
                Some("0".into()),
                Vec::new(),
                String::new(),
            )
        } else if s.starts_with('$') && super::described_stream(s).is_none() {
            return Err(StreamError::BadRequest(format!(
                "'{s}' is a system stream Herald has no index for: persistent subscriptions \
                 take user streams, $$<stream>, $ce-, $et-, $bc-, $streams and $all"
            )));
        } else {
            Some(RecordFilter::key(s))
        })
    }

    fn queue_settings(&self) -> StreamResult<SubscriptionSettings> {
        let s = &self.settings;
        let lease_ms = s.lease_ms();
        let window = (s.live_buffer_size as usize)
            .saturating_add(s.history_buffer_size as usize)
            .saturating_add(s.read_batch_size as usize)
            .clamp(1, MAX_UNACKED_MAX);
        Ok(SubscriptionSettings {
            lease_ms,
            max_deliveries: s.max_retry_count.saturating_add(1),
            // KurrentDB retries at once.
            backoff_base_ms: 0,
            backoff_factor: 1.0,
            backoff_max_ms: 0,
            backoff_jitter: 0.0,
            dead_letter_topic: None,
            ordered_by_key: false,
            start: StartPosition::Earliest,
            max_unacked: window,
            filter: self.record_filter()?,
            dead_letter_stream: Some(self.parked_stream()),
        })
    }
}

/// `$persistentsubscription-<source>::<group>-parked`.
pub fn parked_stream(source: &str, group: &str) -> String {
    format!("$persistentsubscription-{source}::{group}-parked")
}

/// What a consumer asks of an event it was given back (a nack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackAction {
    /// Park it now (to the parked stream).
    Park,
    /// Retry it (counts a failure; parked once it has failed too often).
    Retry,
    /// Done with it without handling it.
    Skip,
    /// Give it back and end this consumer's subscription.
    Stop,
}

/// One event dealt to a consumer.
#[derive(Debug, Clone)]
pub struct PersistentEvent {
    /// For a system-stream source, `event` is the link unless links are resolved
    /// (then `event` is the target and `link` the link), as stream reads give them.
    pub event: RecordedEvent,
    pub link: Option<RecordedEvent>,
    /// Times it was dealt before (0 on the first delivery).
    pub retry_count: u32,
}

impl PersistentEvent {
    /// The id a consumer acks it by (the link's when there is one).
    pub fn ack_id(&self) -> uuid::Uuid {
        self.link.as_ref().map_or(self.event.id, |l| l.id)
    }
}

/// What a consumer's channel carries.
#[derive(Debug)]
pub enum Delivery {
    Event(Box<PersistentEvent>),
    /// The subscription ended for this consumer (deleted, stopped, or the broker is
    /// shutting down), with why.
    End(String),
}

/// A subscription's state for `GetInfo` / `List`.
#[derive(Debug, Clone)]
pub struct PersistentInfo {
    pub def: PersistentDef,
    pub connections: Vec<ConnectionInfo>,
    /// Events dealt out since the broker started.
    pub total_items: u64,
    pub in_flight: u64,
    /// Events waiting to be dealt (tracked or not yet read from the log).
    pub outstanding: u64,
    /// Events waiting for a retry.
    pub retry_buffer: u64,
    pub parked: u64,
    /// The source's last event: a revision for a stream, `C:<p>/P:<p>` for `$all`.
    pub last_known: String,
    /// Everything before this point is done, in the same form.
    pub last_checkpointed: String,
}

#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub name: String,
    pub user: String,
    pub total_items: u64,
    pub in_flight: u64,
    pub available_slots: u64,
}

/// The live consumers of one persistent subscription.
pub(crate) struct Hub {
    def: Mutex<PersistentDef>,
    state: Mutex<HubState>,
    /// Woken when a consumer joins, leaves, or frees a slot.
    wake: Notify,
}

#[derive(Default)]
struct HubState {
    consumers: Vec<Slot>,
    next_id: u64,
    /// Where round robin goes next.
    turn: usize,
    pump_running: bool,
    total_items: u64,
}

struct Slot {
    id: u64,
    name: String,
    user: String,
    tx: mpsc::Sender<Delivery>,
    capacity: usize,
    /// ack id -> receipts of its deliveries (the same id twice is possible).
    in_flight: HashMap<uuid::Uuid, Vec<InFlight>>,
    in_flight_count: usize,
    /// Pinned events waiting for this consumer's room.
    pending: VecDeque<(PersistentEvent, String)>,
    total_items: u64,
}

struct InFlight {
    receipt: String,
    deadline_ms: i64,
}

impl Slot {
    fn free(&self) -> usize {
        self.capacity
            .saturating_sub(self.in_flight_count + self.pending.len())
    }

    /// Hand `event` to this consumer; false if it is gone.
    fn send(&mut self, event: PersistentEvent, receipt: String, lease_ms: u64) -> bool {
        let id = event.ack_id();
        if self.tx.try_send(Delivery::Event(Box::new(event))).is_err() {
            return false;
        }
        self.in_flight.entry(id).or_default().push(InFlight {
            receipt,
            deadline_ms: now_ms().saturating_add(lease_ms as i64),
        });
        self.in_flight_count += 1;
        self.total_items += 1;
        true
    }

    fn take(&mut self, id: &uuid::Uuid) -> Option<String> {
        let list = self.in_flight.get_mut(id)?;
        let first = (!list.is_empty()).then(|| list.remove(0))?;
        if list.is_empty() {
            self.in_flight.remove(id);
        }
        self.in_flight_count = self.in_flight_count.saturating_sub(1);
        Some(first.receipt)
    }

    /// Forget deliveries whose lease ran out (the engine hands them out again).
    fn expire(&mut self, now: i64) {
        let before: usize = self.in_flight_count;
        self.in_flight.retain(|_, list| {
            list.retain(|f| f.deadline_ms > now);
            !list.is_empty()
        });
        self.in_flight_count = self.in_flight.values().map(Vec::len).sum();
        debug_assert!(self.in_flight_count <= before);
    }
}

/// One consumer of a persistent subscription (a `Read` call). Dropping it gives its
/// unacked events back.
pub struct PersistentConsumer {
    broker: Arc<Broker>,
    hub: Arc<Hub>,
    id: u64,
    /// Behind a lock so one task can wait for events while another acks.
    rx: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    subscription_id: String,
}

impl PersistentConsumer {
    /// `<source>::<group>`, for the confirmation message.
    pub fn subscription_id(&self) -> &str {
        &self.subscription_id
    }

    /// The next event, or why the subscription ended.
    pub async fn next(&self) -> Delivery {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .unwrap_or_else(|| Delivery::End("the persistent subscription ended".into()))
    }

    /// The events with these ack ids are handled.
    pub async fn ack(&self, ids: &[uuid::Uuid]) {
        let receipts = self.take(ids);
        for result in self.broker.ack_many(&receipts).await {
            if let Err(e) = result {
                // A late ack (its lease ran out and it was dealt again) is not an error
                // for the client: KurrentDB ignores it too.
                tracing::debug!(error = %e, "persistent subscription ack not applied");
            }
        }
    }

    /// The events with these ack ids were not handled: do `action` with them.
    pub async fn nack(&self, ids: &[uuid::Uuid], action: NackAction, reason: &str) {
        let receipts = self.take(ids);
        let def = self.hub.def();
        for receipt in receipts {
            let done = match action {
                NackAction::Skip => self.broker.ack(&receipt).await,
                NackAction::Retry => self
                    .broker
                    .nack(&receipt, Some(reason.to_string()))
                    .await
                    .map(|_| ()),
                NackAction::Stop => self.broker.release(&receipt).await,
                NackAction::Park => self.broker.park(&def, &receipt, reason).await,
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "persistent subscription nack not applied");
            }
        }
        if action == NackAction::Stop {
            self.hub
                .end(self.id, "stopped by the consumer's nack".into());
        }
    }

    fn take(&self, ids: &[uuid::Uuid]) -> Vec<String> {
        let mut receipts = Vec::with_capacity(ids.len());
        {
            let mut state = self.hub.lock();
            if let Some(slot) = state.consumers.iter_mut().find(|s| s.id == self.id) {
                receipts.extend(ids.iter().filter_map(|id| slot.take(id)));
                // Room for pinned events that waited for it.
                let (_, lease_ms) = self.hub.dealing();
                while slot.in_flight_count < slot.capacity
                    && let Some((event, receipt)) = slot.pending.pop_front()
                {
                    if !slot.send(event, receipt, lease_ms) {
                        break;
                    }
                }
            }
        }
        self.hub.wake.notify_one();
        receipts
    }
}

impl Drop for PersistentConsumer {
    fn drop(&mut self) {
        let receipts = self.hub.leave(self.id);
        if receipts.is_empty() {
            return;
        }
        let broker = self.broker.clone();
        tokio::spawn(async move {
            for r in receipts {
                // Back to the others at once (not a failure of the event).
                let _ = broker.release(&r).await;
            }
        });
    }
}

impl Hub {
    fn new(def: PersistentDef) -> Hub {
        Hub {
            def: Mutex::new(def),
            state: Mutex::new(HubState::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn def(&self) -> PersistentDef {
        self.def.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The strategy and lease of its settings, without copying the definition (asked
    /// per event dealt).
    fn dealing(&self) -> (Strategy, u64) {
        let def = self.def.lock().unwrap_or_else(|p| p.into_inner());
        (def.settings.strategy, def.settings.lease_ms())
    }

    fn has_consumers(&self) -> bool {
        !self.lock().consumers.is_empty()
    }

    /// Remove a consumer; returns the receipts it still held (pending ones included).
    fn leave(&self, id: u64) -> Vec<String> {
        let mut state = self.lock();
        let Some(i) = state.consumers.iter().position(|s| s.id == id) else {
            return Vec::new();
        };
        let slot = state.consumers.remove(i);
        drop(state);
        self.wake.notify_one();
        slot.in_flight
            .into_values()
            .flatten()
            .map(|f| f.receipt)
            .chain(slot.pending.into_iter().map(|(_, r)| r))
            .collect()
    }

    /// Tell one consumer (or, with `u64::MAX`, all) that its subscription ended.
    fn end(&self, id: u64, why: String) {
        for slot in self.lock().consumers.iter() {
            if id == u64::MAX || slot.id == id {
                let _ = slot.tx.try_send(Delivery::End(why.clone()));
            }
        }
    }

    /// Free slots the pump may lease for, as the strategy deals them.
    fn free(&self) -> usize {
        let now = now_ms();
        let mut state = self.lock();
        for slot in state.consumers.iter_mut() {
            slot.expire(now);
        }
        state.consumers.iter().map(Slot::free).sum()
    }

    /// Deal one event; returns its receipt back if no consumer could take it.
    fn deal(&self, event: PersistentEvent, receipt: String) -> Option<String> {
        let (strategy, lease_ms) = self.dealing();
        let mut state = self.lock();
        let n = state.consumers.len();
        if n == 0 {
            return Some(receipt);
        }
        let pick = match strategy {
            Strategy::RoundRobin => (0..n)
                .map(|k| (state.turn + k) % n)
                .find(|&i| state.consumers[i].free() > 0),
            Strategy::DispatchToSingle => (0..n).find(|&i| state.consumers[i].free() > 0),
            Strategy::Pinned | Strategy::PinnedByCorrelation => {
                let key = match strategy {
                    Strategy::PinnedByCorrelation => {
                        correlation_id(&event.event).unwrap_or_else(|| origin_stream(&event.event))
                    }
                    _ => origin_stream(&event.event),
                };
                let mut h = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut h);
                let i = (h.finish() % n as u64) as usize;
                let slot = &mut state.consumers[i];
                if slot.in_flight_count >= slot.capacity {
                    slot.pending.push_back((event, receipt));
                    state.total_items += 1;
                    return None;
                }
                Some(i)
            }
        };
        let Some(i) = pick.or(Some(state.turn % n)) else {
            return Some(receipt);
        };
        state.turn = i + 1;
        state.total_items += 1;
        if state.consumers[i].send(event, receipt.clone(), lease_ms) {
            None
        } else {
            Some(receipt)
        }
    }
}

/// The stream an event was written to: for an unresolved link (`$>`, data
/// `<revision>@<stream>`), the stream it points into, so pinning by stream keeps a
/// category's streams apart whether links are resolved or not.
fn origin_stream(e: &RecordedEvent) -> String {
    if e.event_type == LINK_TYPE
        && let Some((_, stream)) = parse_link(&e.data)
    {
        return stream;
    }
    e.stream.clone()
}

fn correlation_id(e: &RecordedEvent) -> Option<String> {
    let meta: serde_json::Value = serde_json::from_slice(&e.custom_metadata).ok()?;
    meta.get("$correlationId")?.as_str().map(str::to_string)
}

impl Broker {
    fn persistent_hub(&self, def: &PersistentDef) -> Arc<Hub> {
        let mut hubs = self
            .eventstore
            .persistent
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        hubs.entry((def.source.clone(), def.group.clone()))
            .or_insert_with(|| Arc::new(Hub::new(def.clone())))
            .clone()
    }

    fn persistent_def(&self, source: &str, group: &str) -> StreamResult<PersistentDef> {
        self.persistent_defs()?
            .into_iter()
            .find(|d| d.source == source && d.group == group)
            .ok_or_else(|| StreamError::SubscriptionNotFound {
                stream: source.to_string(),
                group: group.to_string(),
            })
    }

    fn persistent_defs(&self) -> StreamResult<Vec<PersistentDef>> {
        let rows = self
            .meta
            .persistent_subscriptions()
            .map_err(|e| BrokerError::Storage(e.to_string()))?;
        let mut out = Vec::with_capacity(rows.len());
        for (source, group, bytes) in rows {
            match serde_json::from_slice::<PersistentDef>(&bytes) {
                Ok(def) => out.push(def),
                Err(e) => {
                    tracing::warn!(source, group, "unreadable persistent subscription: {e}")
                }
            }
        }
        Ok(out)
    }

    /// Create a persistent subscription.
    pub async fn persistent_create(
        &self,
        _who: &Principal,
        source: &str,
        group: &str,
        filter: Option<SourceFilter>,
        settings: PersistentSettings,
    ) -> StreamResult<()> {
        check_group(group)?;
        if source != ALL_SOURCE {
            check_stream_name(source)?;
        }
        settings.validate()?;
        let topic = self.eventstore_topic()?;
        // A start at a revision is looked up in the index.
        self.stream_index_settled().await?;
        let _admin = self.eventstore.persistent_admin.lock().await;
        if self.persistent_def(source, group).is_ok() {
            return Err(StreamError::SubscriptionExists {
                stream: source.to_string(),
                group: group.to_string(),
            });
        }
        let mut def = PersistentDef {
            source: source.to_string(),
            group: group.to_string(),
            filter: if source == ALL_SOURCE { filter } else { None },
            settings,
            queue: String::new(),
        };
        def.queue = queue_name(&def);
        let queue_settings = def.queue_settings()?;
        let partition = topic.partition(0)?;
        let start = match def.settings.start {
            StartFrom::Start => partition.log_start_offset(),
            StartFrom::End => partition.high_watermark(),
            StartFrom::Position(p) => (p as i64).saturating_sub(1).max(0),
            StartFrom::Revision(r) if source == ALL_SOURCE => {
                return Err(StreamError::BadRequest(format!(
                    "a subscription to $all starts at a position, not revision {r}"
                )));
            }
            StartFrom::Revision(r) => self
                .meta
                .stream_offsets(source, r, true, 1)
                .map_err(|e| BrokerError::Storage(e.to_string()))?
                .first()
                .map_or(partition.high_watermark(), |(_, o)| *o),
        };
        self.create_subscription_at(EVENTSTORE_TOPIC, &def.queue, queue_settings, Some(start))
            .await?;
        self.store_persistent_def(&def)?;
        tracing::info!(
            source,
            group,
            queue = def.queue,
            "created persistent subscription"
        );
        Ok(())
    }

    fn store_persistent_def(&self, def: &PersistentDef) -> StreamResult<()> {
        let bytes = serde_json::to_vec(def)
            .map_err(|e| BrokerError::Storage(format!("persistent subscription: {e}")))?;
        self.meta
            .put_persistent_subscription(&def.source, &def.group, &bytes)
            .map_err(|e| BrokerError::Storage(e.to_string()))?;
        Ok(())
    }

    /// Replace a subscription's settings (its source, filter and start stay).
    pub async fn persistent_update(
        &self,
        _who: &Principal,
        source: &str,
        group: &str,
        settings: PersistentSettings,
    ) -> StreamResult<()> {
        settings.validate()?;
        let _admin = self.eventstore.persistent_admin.lock().await;
        let mut def = self.persistent_def(source, group)?;
        def.settings = PersistentSettings {
            start: def.settings.start,
            ..settings
        };
        self.update_subscription(EVENTSTORE_TOPIC, &def.queue, def.queue_settings()?)
            .await?;
        self.store_persistent_def(&def)?;
        let hub = self.persistent_hub(&def);
        *hub.def.lock().unwrap_or_else(|p| p.into_inner()) = def;
        hub.wake.notify_one();
        Ok(())
    }

    /// Delete a subscription: its consumers are told, its delivery state goes (its
    /// parked stream stays readable).
    pub async fn persistent_delete(
        &self,
        _who: &Principal,
        source: &str,
        group: &str,
    ) -> StreamResult<()> {
        let _admin = self.eventstore.persistent_admin.lock().await;
        let def = self.persistent_def(source, group)?;
        let hub = self
            .eventstore
            .persistent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(source.to_string(), group.to_string()));
        if let Some(hub) = hub {
            hub.end(u64::MAX, "the persistent subscription was deleted".into());
        }
        match self.delete_subscription(EVENTSTORE_TOPIC, &def.queue).await {
            Ok(()) | Err(BrokerError::UnknownSubscription { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.meta
            .delete_persistent_subscription(source, group)
            .map_err(|e| BrokerError::Storage(e.to_string()))?;
        Ok(())
    }

    pub async fn persistent_info(
        &self,
        _who: &Principal,
        source: &str,
        group: &str,
    ) -> StreamResult<PersistentInfo> {
        self.stream_index_settled().await?;
        let def = self.persistent_def(source, group)?;
        self.info_of(def)
    }

    /// Every subscription, or those of one source.
    pub async fn persistent_list(
        &self,
        _who: &Principal,
        source: Option<&str>,
    ) -> StreamResult<Vec<PersistentInfo>> {
        self.stream_index_settled().await?;
        self.persistent_defs()?
            .into_iter()
            .filter(|d| source.is_none_or(|s| d.source == s))
            .map(|d| self.info_of(d))
            .collect()
    }

    fn info_of(&self, def: PersistentDef) -> StreamResult<PersistentInfo> {
        let stats = self.subscription_stats(EVENTSTORE_TOPIC, &def.queue)?;
        let hub = self
            .eventstore
            .persistent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(def.source.clone(), def.group.clone()))
            .cloned();
        let (connections, total_items) = match &hub {
            Some(hub) => {
                let state = hub.lock();
                (
                    state
                        .consumers
                        .iter()
                        .map(|s| ConnectionInfo {
                            name: s.name.clone(),
                            user: s.user.clone(),
                            total_items: s.total_items,
                            in_flight: s.in_flight_count as u64,
                            available_slots: s.free() as u64,
                        })
                        .collect(),
                    state.total_items,
                )
            }
            None => (Vec::new(), 0),
        };
        let parked = self.parked_count(&def.parked_stream())?;
        let floor = self.subscription_floor(EVENTSTORE_TOPIC, &def.queue, 0)?;
        let (last_known, last_checkpointed) = if def.source == ALL_SOURCE {
            let end = self
                .topic(EVENTSTORE_TOPIC)
                .and_then(|t| t.partition(0).ok().map(|p| p.high_watermark()))
                .unwrap_or(0);
            let p = |o: i64| format!("C:{o}/P:{o}");
            (p(end), p(floor))
        } else {
            let head = self.stream_head(&def.source)?;
            let checkpoint = self
                .revision_before(&def.source, floor)?
                .map_or(String::new(), |r| r.to_string());
            (
                head.last.map_or(String::new(), |r| r.to_string()),
                checkpoint,
            )
        };
        Ok(PersistentInfo {
            def,
            connections,
            total_items,
            in_flight: stats.in_flight,
            outstanding: stats.depth,
            retry_buffer: stats.delayed,
            parked,
            last_known,
            last_checkpointed,
        })
    }

    /// Events in a parked stream not replayed yet.
    fn parked_count(&self, parked: &str) -> StreamResult<u64> {
        let head = self.stream_head(parked)?;
        Ok(match head.last {
            Some(last) => (last + 1).saturating_sub(head.meta.truncate_before.unwrap_or(0)),
            None => 0,
        })
    }

    /// The revision of `stream`'s last event below log offset `offset`.
    fn revision_before(&self, stream: &str, offset: i64) -> StreamResult<Option<u64>> {
        let head = self.stream_head(stream)?;
        let Some(last) = head.last else {
            return Ok(None);
        };
        let offset_of = |r: u64| -> StreamResult<Option<i64>> {
            Ok(self
                .meta
                .stream_offsets(stream, r, true, 1)
                .map_err(|e| BrokerError::Storage(e.to_string()))?
                .first()
                .filter(|(rev, _)| *rev == r)
                .map(|(_, o)| *o))
        };
        // Offsets rise with revisions: find the last revision below `offset`.
        let (mut lo, mut hi) = (0u64, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match offset_of(mid)? {
                Some(o) if o < offset => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo.checked_sub(1))
    }

    /// Put parked events back into the subscription (at most `stop_at`, oldest
    /// first); they leave the parked stream (its `$tb` moves past them). Returns how
    /// many.
    pub async fn persistent_replay_parked(
        &self,
        _who: &Principal,
        source: &str,
        group: &str,
        stop_at: Option<u64>,
    ) -> StreamResult<u64> {
        self.stream_index_settled().await?;
        let def = self.persistent_def(source, group)?;
        let parked = def.parked_stream();
        let head = self.stream_head(&parked)?;
        let Some(_) = head.last else {
            return Ok(0);
        };
        let from = head.meta.truncate_before.unwrap_or(0);
        let max = stop_at.unwrap_or(REPLAY_PARKED_MAX).min(REPLAY_PARKED_MAX);
        let links = self.read_stream_events(&parked, super::ReadFrom::Revision(from), true, max)?;
        let Some(last) = links.last().map(|l| l.revision) else {
            return Ok(0);
        };
        let mut offsets = Vec::with_capacity(links.len());
        for link in &links {
            if let Some(offset) = self.link_target_offset(link)? {
                offsets.push(offset);
            }
        }
        let revived = self
            .revive(EVENTSTORE_TOPIC, &def.queue, 0, &offsets)
            .await?;
        self.set_truncate_before(&parked, last + 1).await?;
        if let Some(hub) = self
            .eventstore
            .persistent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(source.to_string(), group.to_string()))
        {
            hub.wake.notify_one();
        }
        Ok(revived as u64)
    }

    /// The log offset of the event a `$>` link points at.
    fn link_target_offset(&self, link: &RecordedEvent) -> StreamResult<Option<i64>> {
        let Some((revision, stream)) = parse_link(&link.data) else {
            return Ok(None);
        };
        Ok(self
            .meta
            .stream_offsets(&stream, revision, true, 1)
            .map_err(|e| BrokerError::Storage(e.to_string()))?
            .first()
            .filter(|(r, _)| *r == revision)
            .map(|(_, o)| *o))
    }

    /// Connect a consumer to a persistent subscription; events come on its channel.
    pub fn persistent_connect(
        self: &Arc<Self>,
        who: &Principal,
        source: &str,
        group: &str,
        buffer_size: usize,
        connection_name: &str,
    ) -> StreamResult<PersistentConsumer> {
        let def = self.persistent_def(source, group)?;
        if buffer_size == 0 || buffer_size > CONSUMER_BUFFER_MAX {
            return Err(StreamError::BadRequest(format!(
                "buffer size {buffer_size}: use 1 to {CONSUMER_BUFFER_MAX}"
            )));
        }
        let hub = self.persistent_hub(&def);
        let id = {
            let mut state = hub.lock();
            let max = def.settings.max_subscriber_count as usize;
            if max > 0 && state.consumers.len() >= max {
                return Err(StreamError::MaximumSubscribers {
                    stream: source.to_string(),
                    group: group.to_string(),
                });
            }
            state.next_id += 1;
            let id = state.next_id;
            let (tx, rx) = mpsc::channel(buffer_size + 1);
            state.consumers.push(Slot {
                id,
                name: connection_name.to_string(),
                user: who.name.clone(),
                tx,
                capacity: buffer_size,
                in_flight: HashMap::new(),
                in_flight_count: 0,
                pending: VecDeque::new(),
                total_items: 0,
            });
            let start = !state.pump_running;
            state.pump_running = true;
            drop(state);
            if start {
                tokio::spawn(pump(self.clone(), hub.clone()));
            }
            hub.wake.notify_one();
            (id, rx)
        };
        let (id, rx) = id;
        Ok(PersistentConsumer {
            broker: self.clone(),
            hub,
            id,
            rx: tokio::sync::Mutex::new(rx),
            subscription_id: def.id(),
        })
    }

    /// Park one event now: a link to it in the parked stream, then done.
    pub(crate) async fn park(
        &self,
        def: &PersistentDef,
        receipt: &str,
        reason: &str,
    ) -> crate::error::Result<()> {
        if let Some(record) = self.record_for_receipt(receipt)? {
            self.park_record(&def.parked_stream(), &record, reason)
                .await?;
        }
        self.ack(receipt).await
    }

    /// Append a link to `record`'s event to `parked` (the queue engine's dead-letter
    /// step for persistent subscriptions). A record that is not an event is not parked.
    pub(crate) async fn park_record(
        &self,
        parked: &str,
        record: &Record,
        reason: &str,
    ) -> crate::error::Result<()> {
        let Some(event) = recorded(record) else {
            tracing::warn!(
                parked,
                offset = record.offset,
                "a record that is not an event cannot be parked; dropped"
            );
            return Ok(());
        };
        let metadata = serde_json::json!({ "$reason": reason }).to_string();
        let link = NewEvent {
            id: uuid::Uuid::new_v4(),
            event_type: LINK_TYPE.to_string(),
            content_type: "application/octet-stream".to_string(),
            custom_metadata: Bytes::from(metadata),
            data: Bytes::from(format!("{}@{}", event.revision, event.stream)),
        };
        match self.append_events(parked, Expected::Any, vec![link]).await {
            Ok(_) => Ok(()),
            Err(StreamError::Broker(e)) => Err(e),
            Err(e) => Err(BrokerError::Storage(format!("cannot park: {e}"))),
        }
    }

    /// Give back every lease of every persistent subscription (their consumers died
    /// with the last run); called at start-up.
    pub(crate) fn release_persistent_leases(&self) {
        let Ok(defs) = self.persistent_defs() else {
            return;
        };
        for def in defs {
            if let Err(e) = self.release_all_leases(EVENTSTORE_TOPIC, &def.queue) {
                tracing::warn!(queue = def.queue, error = %e, "persistent subscription leases");
            }
        }
    }

    /// The event a leased record holds, as a consumer of `def` sees it.
    fn persistent_event(&self, def: &PersistentDef, r: &ReceivedRecord) -> Option<PersistentEvent> {
        let record = Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: r.offset,
            sequence: -1,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        kafka_protocol::protocol::StrBytes::from_string(k.clone()),
                        v.clone(),
                    )
                })
                .collect(),
            delete_horizon: false,
        };
        let event = recorded(&record)?;
        let retry_count = r.delivery_count.saturating_sub(1);
        let system = super::is_system_stream(&def.source);
        if !system {
            return Some(PersistentEvent {
                event,
                link: None,
                retry_count,
            });
        }
        let revision = self
            .revision_before(&def.source, r.offset + 1)
            .ok()
            .flatten()
            .unwrap_or(0);
        let link = link_event(&def.source, revision, &event);
        Some(if def.settings.resolve_links {
            PersistentEvent {
                event,
                link: Some(link),
                retry_count,
            }
        } else {
            PersistentEvent {
                event: link,
                link: None,
                retry_count,
            }
        })
    }
}

/// The pump of one group: lease what its consumers have room for, deal it out.
async fn pump(broker: Arc<Broker>, hub: Arc<Hub>) {
    loop {
        let wanted = {
            let mut state = hub.lock();
            if state.consumers.is_empty() {
                state.pump_running = false;
                return;
            }
            drop(state);
            hub.free()
        };
        if wanted == 0 {
            tokio::select! {
                _ = hub.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(PUMP_WAIT_MS)) => {}
            }
            continue;
        }
        let def = hub.def();
        let watch = hub.clone();
        let got = broker
            .receive_while(
                EVENTSTORE_TOPIC,
                &def.queue,
                wanted,
                PUMP_WAIT_MS,
                Leases::WrittenBehind,
                || watch.has_consumers(),
            )
            .await;
        let records = match got {
            Ok(records) => records,
            Err(BrokerError::UnknownSubscription { .. } | BrokerError::UnknownTopic(_)) => {
                hub.end(u64::MAX, "the persistent subscription was deleted".into());
                let mut state = hub.lock();
                state.pump_running = false;
                return;
            }
            Err(BrokerError::ShuttingDown) => {
                hub.end(u64::MAX, "the server is shutting down".into());
                hub.lock().pump_running = false;
                return;
            }
            Err(e) => {
                tracing::warn!(group = def.group, source = def.source, error = %e, "persistent subscription read");
                tokio::time::sleep(Duration::from_millis(PUMP_WAIT_MS)).await;
                continue;
            }
        };
        let mut back = Vec::new();
        let mut skip = Vec::new();
        for r in &records {
            match broker.persistent_event(&def, r) {
                Some(event) => {
                    if let Some(receipt) = hub.deal(event, r.receipt.clone()) {
                        back.push(receipt);
                    }
                }
                // Not an event (a record another protocol wrote): nothing to deliver.
                None => skip.push(r.receipt.clone()),
            }
        }
        for r in back {
            let _ = broker.release(&r).await;
        }
        for r in broker.ack_many(&skip).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "skipping a non-event record");
            }
        }
    }
}

/// `<revision>@<stream>`.
fn parse_link(data: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(data).ok()?;
    let (revision, stream) = text.split_once('@')?;
    Some((revision.parse().ok()?, stream.to_string()))
}

fn check_group(group: &str) -> StreamResult<()> {
    if group.is_empty() {
        return Err(StreamError::BadRequest("the group name is empty".into()));
    }
    if group.len() > GROUP_NAME_BYTES_MAX {
        return Err(StreamError::BadRequest(format!(
            "group name of {} bytes; at most {GROUP_NAME_BYTES_MAX}",
            group.len()
        )));
    }
    Ok(())
}

/// A work-queue subscription name for `def`: readable where the names allow it, made
/// unique by a random suffix (the definition keeps it).
fn queue_name(def: &PersistentDef) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect()
    };
    format!(
        "ps.{}.{}.{:08x}",
        clean(&def.source),
        clean(&def.group),
        rand::random::<u32>()
    )
}
