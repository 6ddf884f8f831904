//! Work queues: shared subscriptions over a topic (the idea of Kafka's KIP-932 share
//! groups). Records stay in the log, readable by Kafka consumers; a subscription tracks
//! each record's delivery (lease, ack, nack with backoff, dead-lettering) per partition.
//!
//! Files: `settings.rs` (what a subscription is configured with), `state.rs` (the pure
//! per-partition state machine), `commit.rs` (group commit of state to the meta store),
//! this file (the IO shell: reading the log, leasing, dead-letter publishing).
//!
//! A stored batch that decompresses past `batch_decompressed_bytes_max` cannot be read
//! without holding more than the bound, so the queue steps over its records (logged with
//! topic, partition and offsets, counted in the broker's oversized-batches counter) as it
//! steps over compaction gaps; a record of such a batch that was tracked before the bound
//! was lowered is finished undelivered (`PartitionQueue::abandon`) instead of leased,
//! retried or dead-lettered. This is, with retention, the one way a subscription passes a
//! record without an ack or a dead letter. It was chosen over stalling the partition
//! (one bad batch would block every record behind it for good) and over a dead-letter
//! copy (the copy would need the record, which is what cannot be read). The records stay
//! in the log: raising the bound and reading from the logged offset gets them back.
//! Produce refuses such batches, so only batches stored before the bound was set, or
//! lowered, can be met here.

pub mod commit;
pub mod dedup;
pub mod filter;
pub mod settings;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use herald_records::{Compression, EncodeError};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::{BrokerError, Result};
use crate::partition::Partition;
use crate::records::StoredBatch;
use crate::{Broker, now_ms};
pub use dedup::{MESSAGE_ID_HEADER, PublishOutcome};
pub use settings::{StartPosition, SubscriptionSettings};
pub(crate) use state::Changes;
use state::{Entry, Header, PartitionQueue, Refusal};

/// Header holding a record's earliest delivery time, epoch milliseconds as a decimal string.
pub const DELIVER_AT_HEADER: &str = "herald-deliver-at";
/// Every header a dead-lettered copy gains starts with this; redrive drops them.
pub const DLQ_HEADER_PREFIX: &str = "herald-dlq-";
/// The topic a dead-lettered record came from.
pub const DLQ_SOURCE_TOPIC_HEADER: &str = "herald-dlq-source-topic";
/// The partition of the source topic it came from (redrive puts it back there).
pub const DLQ_SOURCE_PARTITION_HEADER: &str = "herald-dlq-source-partition";
/// Bytes read from the log per step (after the first batch, always read whole) when
/// filling a subscription's window, fetching leased records and listing dead letters.
/// Small because every step decodes all it read: at 1 MiB a receive of 5 records
/// decoded up to a MiB of neighbours (0.65 ms more broker CPU per receive + ack).
pub const QUEUE_READ_BYTES: usize = 64 << 10;
/// Bytes read per record wanted when filling a window or fetching leased records (a
/// read returns whole batches, at least one), so a few records cost a few records'
/// reads, not `QUEUE_READ_BYTES`.
const FILL_BYTES_PER_RECORD: usize = 512;
/// Most log bytes one receive scans past records its subscription's filter does not
/// take, before it lets others at the partition (and tries again at once).
const FILL_SCAN_BYTES_MAX: usize = 4 << 20;
/// Records one receive call may return at most.
pub const RECEIVE_MAX_RECORDS: usize = 1_000;
/// Longest long-poll wait a receive may ask for.
pub const RECEIVE_WAIT_MAX_MS: u64 = 20_000;
/// How often the broker's timer expires leases and retries dead-lettering.
pub const QUEUE_TICK_MS: u64 = 100;

/// Whether a receive's leases are durable before its records are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leases {
    /// Written to the meta store first: a lease (and the delivery count it raised)
    /// survives a restart, as an HTTP receiver's receipt does.
    Durable,
    /// Queued for the next group commit without waiting for it: for readers whose
    /// leases are given back at startup anyway (AMQP deliveries die with their
    /// connection, see `release_all_leases`), so handing a record out does not wait for
    /// an fsync. A crash within that commit's time (about one fsync) loses only the
    /// delivery counts it held: such a record comes back with the count it had before.
    WrittenBehind,
}

/// One record handed out by `receive`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    #[serde(skip)]
    pub key: Option<Bytes>,
    #[serde(skip)]
    pub value: Option<Bytes>,
    #[serde(skip)]
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Opaque; names the subscription, partition, offset and delivery attempt.
    pub receipt: String,
    /// How many times this record has been handed out, this time included.
    pub delivery_count: u32,
}

/// Cheap counters of one subscription (summed over partitions).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Ready to hand out now (tracked records plus records not read from the log yet).
    pub depth: u64,
    pub in_flight: u64,
    /// Waiting for a delay or a retry backoff.
    pub delayed: u64,
    pub dead_lettered: u64,
    pub redeliveries: u64,
    /// Leases that expired (each also a failed delivery).
    pub expired_leases: u64,
    pub lost_to_retention: u64,
    pub bad_deliver_at: u64,
}

pub(crate) struct Subscription {
    /// Set when deleted: the committer no longer writes its state.
    deleted: std::sync::atomic::AtomicBool,
    /// Set at load and after a failed dead-letter append: the timer looks for records
    /// waiting for their dead-letter copy.
    recover: std::sync::atomic::AtomicBool,
    topic: String,
    name: String,
    settings: RwLock<SubscriptionSettings>,
    /// The settings' filter, compiled (None: every record).
    filter: RwLock<Option<Arc<filter::CompiledFilter>>>,
    /// One state per partition of the topic; grows (never shrinks) when CreatePartitions
    /// adds partitions, so readers take a snapshot with `slots`.
    partitions: RwLock<Vec<Arc<Mutex<PartitionQueue>>>>,
    /// Woken when records may have become ready (acks, releases, new data).
    changed: Notify,
}

/// All subscriptions of a broker, and the group-commit writer of their state.
pub(crate) struct Queues {
    subs: RwLock<BTreeMap<(String, String), Arc<Subscription>>>,
    commit: Arc<commit::GroupCommit>,
    /// Serialises create/delete/update of subscriptions.
    admin: tokio::sync::Mutex<()>,
    /// Serialises dedup publishes (see `dedup.rs`).
    dedup: tokio::sync::Mutex<()>,
    /// Serialises redrives, so two at once cannot both move the same dead letters.
    redrive: tokio::sync::Mutex<()>,
}

impl Queues {
    pub(crate) fn new(meta: Arc<herald_meta::MetaStore>) -> Queues {
        Queues {
            subs: RwLock::new(BTreeMap::new()),
            commit: commit::GroupCommit::spawn(meta),
            admin: tokio::sync::Mutex::new(()),
            dedup: tokio::sync::Mutex::new(()),
            redrive: tokio::sync::Mutex::new(()),
        }
    }
}

/// A parsed receipt handle.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Receipt {
    topic: String,
    name: String,
    partition: i32,
    offset: i64,
    attempt: u32,
}

impl Receipt {
    fn encode(&self) -> String {
        // Topic and subscription names cannot hold ':' (validated), so this splits back.
        format!(
            "v1:{}:{}:{}:{}:{}",
            self.topic, self.name, self.partition, self.offset, self.attempt
        )
    }

    fn parse(s: &str) -> Result<Receipt> {
        let bad = || BrokerError::InvalidReceipt(s.chars().take(200).collect());
        let parts: Vec<&str> = s.split(':').collect();
        let [v, topic, name, partition, offset, attempt] = parts.as_slice() else {
            return Err(bad());
        };
        if *v != "v1" {
            return Err(bad());
        }
        Ok(Receipt {
            topic: topic.to_string(),
            name: name.to_string(),
            partition: partition.parse().map_err(|_| bad())?,
            offset: offset.parse().map_err(|_| bad())?,
            attempt: attempt.parse().map_err(|_| bad())?,
        })
    }
}

/// How many times the record a receipt names had been handed out when it was (1 on
/// the first delivery); None if it is not a receipt.
pub fn receipt_attempt(receipt: &str) -> Option<u32> {
    Receipt::parse(receipt).ok().map(|r| r.attempt)
}

/// The (topic, subscription) a receipt handle was issued by; `InvalidReceipt` if it is
/// not one.
pub fn receipt_subscription(receipt: &str) -> Result<(String, String)> {
    Receipt::parse(receipt).map(|r| (r.topic, r.name))
}

fn refusal(r: Refusal, receipt: &str) -> BrokerError {
    let receipt = receipt.to_string();
    match r {
        Refusal::NotTracked => BrokerError::ReceiptNotLeased {
            receipt,
            reason: "the record is already acked or dead-lettered".into(),
        },
        Refusal::NotLeased => BrokerError::ReceiptNotLeased {
            receipt,
            reason: "the lease expired".into(),
        },
        Refusal::Stale { current_attempt } => BrokerError::StaleReceipt {
            receipt,
            current_attempt,
        },
        Refusal::NeverIssued => BrokerError::InvalidReceipt(receipt),
    }
}

fn key_hash(key: Option<&Bytes>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    key.map(|k| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    })
}

/// When a record may first be delivered; None for no (or a bad) deliver-at header.
fn deliver_at(record: &Record) -> std::result::Result<Option<i64>, ()> {
    match header(record, DELIVER_AT_HEADER) {
        None => Ok(None),
        Some(None) => Err(()),
        Some(Some(v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map(Some)
            .ok_or(()),
    }
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a Option<Bytes>> {
    record
        .headers
        .iter()
        .find(|(k, _)| &***k == name)
        .map(|(_, v)| v)
}

/// What the log holds at one offset, for a queue reader.
enum AtOffset {
    Record(Box<Record>),
    /// In a batch past the decompression bound (logged and counted).
    Oversized,
    /// Compacted away or never there.
    Missing,
}

fn record_at(partition: &Partition, offset: i64, reader: &'static str) -> Result<AtOffset> {
    let read = partition.read(offset, 1)?;
    for batch in partition.stored_batches(read.records, reader) {
        match batch? {
            StoredBatch::Oversized { header, .. } => {
                if (header.base_offset..=header.last_offset()).contains(&offset) {
                    return Ok(AtOffset::Oversized);
                }
            }
            StoredBatch::Decoded(decoded) => {
                for view in decoded.records() {
                    let view = view?;
                    if view.offset == offset {
                        return Ok(AtOffset::Record(Box::new(decoded.record(&view)?)));
                    }
                }
            }
        }
    }
    Ok(AtOffset::Missing)
}

impl Broker {
    /// The record a receipt names (its topic, partition and offset), read from the log;
    /// None when retention, compaction or the decompression bound took it.
    pub(crate) fn record_for_receipt(&self, receipt: &str) -> Result<Option<Record>> {
        let r = Receipt::parse(receipt)?;
        let topic = self
            .topic(&r.topic)
            .ok_or_else(|| BrokerError::UnknownTopic(r.topic.clone()))?;
        let partition = topic.partition(r.partition)?;
        Ok(match record_at(partition, r.offset, "dead-lettering")? {
            AtOffset::Record(record) => Some(*record),
            AtOffset::Oversized | AtOffset::Missing => None,
        })
    }

    /// Load every subscription's settings and state; called from `Broker::open`.
    pub(crate) fn load_subscriptions(&self) -> Result<()> {
        for (topic, name, bytes) in self.meta.subscriptions()? {
            let settings: SubscriptionSettings = serde_json::from_slice(&bytes)
                .map_err(|e| BrokerError::Storage(format!("subscription {topic}/{name}: {e}")))?;
            let Some(t) = self.topic(&topic) else {
                tracing::warn!(topic, name, "subscription of a missing topic ignored");
                continue;
            };
            let mut parts: Vec<PartitionQueue> = t
                .partitions
                .iter()
                .map(|p| PartitionQueue::new(p.log_start_offset()))
                .collect();
            for (p, state) in self.meta.queue_states(&topic, &name)? {
                let Some(slot) = parts.get_mut(p as usize) else {
                    continue;
                };
                let bad = |e: String| {
                    BrokerError::Storage(format!("queue state {topic}/{name}/{p}: {e}"))
                };
                *slot = match decode_state(&state).map_err(bad)? {
                    Stored::Header(header) => {
                        let mut entries = BTreeMap::new();
                        for (offset, bytes) in self.meta.queue_entries(&topic, &name, p)? {
                            entries.insert(offset, decode_entry(&bytes).map_err(bad)?);
                        }
                        PartitionQueue::from_stored(header, entries)
                    }
                    Stored::Whole(mut q) => {
                        // Stored whole before entries had rows of their own: the next
                        // commit writes every entry and the header in the new form.
                        q.restore();
                        q.mark_all_changed();
                        q
                    }
                };
            }
            self.insert_subscription(topic, name, settings, parts);
        }
        Ok(())
    }

    fn insert_subscription(
        &self,
        topic: String,
        name: String,
        settings: SubscriptionSettings,
        parts: Vec<PartitionQueue>,
    ) {
        let sub = new_subscription(topic.clone(), name.clone(), settings, parts);
        if let Ok(mut subs) = self.queues.subs.write() {
            subs.insert((topic, name), sub);
        }
    }

    /// Give every subscription of `topic` a state for each partition it lacks (those
    /// CreatePartitions added), starting at the partition's log start: everything in a
    /// new partition came after the subscription. Stored before it returns; a crash
    /// before that is the same to `load_subscriptions`, which gives every partition of
    /// the topic a state. Idempotent, so concurrent calls are harmless.
    pub(crate) async fn grow_subscriptions(&self, topic: &crate::Topic) -> Result<()> {
        let _admin = self.queues.admin.lock().await;
        let subs: Vec<Arc<Subscription>> = self
            .queues
            .subs
            .read()
            .map(|s| {
                s.iter()
                    .filter(|((t, _), _)| **t == *topic.name)
                    .map(|(_, sub)| sub.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut writes: Vec<commit::Write> = Vec::new();
        for sub in subs {
            let added = {
                let mut slots = sub.partitions.write().map_err(|_| poisoned())?;
                let before = slots.len();
                for partition in topic.partitions.iter().skip(before) {
                    let q = PartitionQueue::new(partition.log_start_offset());
                    slots.push(Arc::new(Mutex::new(q)));
                }
                before..slots.len()
            };
            for index in added {
                writes.push((sub.clone(), index as u32));
            }
            sub.changed.notify_waiters();
        }
        if !writes.is_empty() {
            self.queues.commit.submit(writes).await?;
        }
        Ok(())
    }

    /// Drop the subscriptions of a deleted topic from memory (`delete_topic` removed
    /// their stored state with the topic's); the committer skips them from now on.
    pub(crate) fn forget_subscriptions(&self, topic: &str) {
        let Ok(mut subs) = self.queues.subs.write() else {
            return;
        };
        subs.retain(|(t, _), sub| {
            let keep = t != topic;
            if !keep {
                sub.deleted.store(true, std::sync::atomic::Ordering::SeqCst);
                sub.changed.notify_waiters();
            }
            keep
        });
    }

    fn subscription(&self, topic: &str, name: &str) -> Result<Arc<Subscription>> {
        self.queues
            .subs
            .read()
            .ok()
            .and_then(|s| s.get(&(topic.to_string(), name.to_string())).cloned())
            .ok_or_else(|| BrokerError::UnknownSubscription {
                topic: topic.to_string(),
                name: name.to_string(),
            })
    }

    /// Create a subscription on an existing topic.
    pub async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: SubscriptionSettings,
    ) -> Result<SubscriptionSettings> {
        self.create_subscription_at(topic, name, settings, None)
            .await
    }

    /// [`Broker::create_subscription`] starting at `start_offset` in every partition
    /// (kept within the log) instead of where the settings' start position says.
    pub(crate) async fn create_subscription_at(
        &self,
        topic: &str,
        name: &str,
        settings: SubscriptionSettings,
        start_offset: Option<i64>,
    ) -> Result<SubscriptionSettings> {
        crate::topic::validate_topic_name(name).map_err(|_| {
            BrokerError::InvalidSubscription(format!("name {name:?}: use 1-249 of [a-zA-Z0-9._-]"))
        })?;
        settings.validate()?;
        // The topic is read under the lock, so a CreatePartitions that grows the
        // subscriptions (under the same lock) cannot slip between the two.
        let _admin = self.queues.admin.lock().await;
        let t = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        if self.subscription(topic, name).is_ok() {
            return Err(BrokerError::SubscriptionExists {
                topic: topic.to_string(),
                name: name.to_string(),
            });
        }
        let parts: Vec<PartitionQueue> = t
            .partitions
            .iter()
            .map(|p| match (start_offset, settings.start) {
                (Some(o), _) => {
                    PartitionQueue::new(o.clamp(p.log_start_offset(), p.high_watermark()))
                }
                (None, StartPosition::Earliest) => PartitionQueue::new(p.log_start_offset()),
                (None, StartPosition::Latest) => PartitionQueue::new(p.high_watermark()),
            })
            .collect();
        let sub = new_subscription(topic.to_string(), name.to_string(), settings.clone(), parts);
        let writes: Vec<commit::Write> = (0..sub.partition_count())
            .map(|i| (sub.clone(), i as u32))
            .collect();
        self.queues.commit.submit(writes).await?;
        self.meta.put_subscription(
            topic,
            name,
            &serde_json::to_vec(&settings).unwrap_or_default(),
        )?;
        if let Ok(mut subs) = self.queues.subs.write() {
            subs.insert((topic.to_string(), name.to_string()), sub);
        }
        tracing::info!(topic, name, "created subscription");
        Ok(settings)
    }

    pub fn subscription_settings(&self, topic: &str, name: &str) -> Result<SubscriptionSettings> {
        let sub = self.subscription(topic, name)?;
        Ok(sub.settings.read().map(|s| s.clone()).unwrap_or_default())
    }

    /// Every subscription as (topic, name, settings), sorted.
    pub fn list_subscriptions(&self) -> Vec<(String, String, SubscriptionSettings)> {
        self.queues
            .subs
            .read()
            .map(|s| {
                s.values()
                    .map(|sub| {
                        (
                            sub.topic.clone(),
                            sub.name.clone(),
                            sub.settings.read().map(|s| s.clone()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replace a subscription's settings (the start position is ignored: it only
    /// matters at creation). Leases already handed out keep their deadlines.
    pub async fn update_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: SubscriptionSettings,
    ) -> Result<SubscriptionSettings> {
        settings.validate()?;
        let _admin = self.queues.admin.lock().await;
        let sub = self.subscription(topic, name)?;
        self.meta.put_subscription(
            topic,
            name,
            &serde_json::to_vec(&settings).unwrap_or_default(),
        )?;
        if let Ok(mut s) = sub.settings.write() {
            *s = settings.clone();
        }
        if let Ok(mut f) = sub.filter.write() {
            *f = compile_filter(&settings);
        }
        sub.changed.notify_waiters();
        Ok(settings)
    }

    pub async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()> {
        let _admin = self.queues.admin.lock().await;
        let sub = self.subscription(topic, name)?;
        if let Ok(mut subs) = self.queues.subs.write() {
            subs.remove(&(topic.to_string(), name.to_string()));
        }
        // The committer skips it from now on; the barrier below waits for a commit
        // that may still hold it.
        sub.deleted.store(true, std::sync::atomic::Ordering::SeqCst);
        // Queued state writes of this subscription land before the delete.
        self.queues.commit.submit(Vec::new()).await?;
        self.meta.delete_subscription(topic, name)?;
        Ok(())
    }

    /// Lease up to `max_records` records. With `wait_ms`, wait up to that long (bounded by
    /// `RECEIVE_WAIT_MAX_MS`) for at least one. Leases are durable before this returns.
    pub async fn receive(
        &self,
        topic: &str,
        name: &str,
        max_records: usize,
        wait_ms: u64,
    ) -> Result<Vec<ReceivedRecord>> {
        self.receive_while(topic, name, max_records, wait_ms, Leases::Durable, || true)
            .await
    }

    /// [`Broker::receive`] for a reader that may stop wanting records while it waits
    /// (an AMQP consumer whose connection closed): `wanted` is asked before every
    /// attempt to lease, so nothing is leased for a reader that is gone.
    pub async fn receive_while(
        &self,
        topic: &str,
        name: &str,
        max_records: usize,
        wait_ms: u64,
        leases: Leases,
        wanted: impl Fn() -> bool,
    ) -> Result<Vec<ReceivedRecord>> {
        let sub = self.subscription(topic, name)?;
        let max_records = max_records.clamp(1, RECEIVE_MAX_RECORDS);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(RECEIVE_WAIT_MAX_MS));
        let mut data = self.data_changes();
        loop {
            let notified = sub.changed.notified();
            data.borrow_and_update();
            if !wanted() {
                return Ok(Vec::new());
            }
            let (got, more) = self.receive_once(&sub, max_records, leases).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            if more {
                // A filter stepped over a long stretch of the log: go on at once.
                tokio::task::yield_now().await;
                continue;
            }
            // Wake for new data, acks/releases, or the next ready time (bounded by a tick
            // so delays and expiries are seen without a precise timer).
            let tick = Duration::from_millis(QUEUE_TICK_MS);
            tokio::select! {
                _ = notified => {}
                _ = data.changed() => {}
                _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + tick)) => {}
            }
        }
    }

    async fn receive_once(
        &self,
        sub: &Arc<Subscription>,
        max_records: usize,
        leases: Leases,
    ) -> Result<(Vec<ReceivedRecord>, bool)> {
        let settings = sub.settings.read().map(|s| s.clone()).unwrap_or_default();
        let policy = settings.policy();
        let topic = self
            .topic(&sub.topic)
            .ok_or_else(|| BrokerError::UnknownTopic(sub.topic.clone()))?;
        let mut out = Vec::new();
        let mut writes = Vec::new();
        let mut leased_by_partition: Vec<(i32, Vec<(i64, u32)>)> = Vec::new();
        let now = now_ms();
        let mut dead: Vec<(i32, i64)> = Vec::new();
        // A filtered scan stopped with more of the log to look at.
        let mut more = false;
        // The topic is never behind the subscription (partitions are added to the topic
        // first), but a topic read before a CreatePartitions may be.
        let slots = sub.slots();
        for (index, slot) in slots.iter().take(topic.partitions.len()).enumerate() {
            if out.len() >= max_records {
                break;
            }
            let partition = topic.partition(index as i32)?;
            let mut q = slot.lock().map_err(|_| poisoned())?;
            q.truncate_below(partition.log_start_offset());
            for o in q.expire(now, &policy, |f| settings.retry_at_ms(now, f)) {
                dead.push((index as i32, o));
            }
            // Tracked records first; the log is read only when they are not enough, so
            // an ack that frees one slot does not cost a read of the log.
            let want = max_records - out.len();
            let mut got = q.lease(now, want, &policy);
            if got.len() < want && q.room(&policy) > 0 {
                more |= fill_window(sub, index, partition, &mut q, &policy)?;
                got.extend(q.lease(now, want - got.len(), &policy));
            }
            if !got.is_empty() || !dead.is_empty() {
                writes.push((sub.clone(), index as u32));
            }
            if !got.is_empty() {
                leased_by_partition.push((index as i32, got.clone()));
                out.extend(got);
            }
        }
        if !writes.is_empty() {
            // Expired leases are durable before their dead-letter copies are written.
            if leases == Leases::Durable || !dead.is_empty() {
                self.queues.commit.submit(writes).await?;
            } else {
                drop(self.queues.commit.enqueue(writes));
            }
        }
        for (p, o) in dead {
            if let Err(e) = self.dead_letter(sub, p, o).await {
                sub.recover.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
        }
        let mut records = Vec::new();
        // Leased records whose batch is now past the bound (lowered since they were tracked).
        let mut unreadable: Vec<(i32, i64)> = Vec::new();
        for (p, got) in leased_by_partition {
            let partition = topic.partition(p)?;
            let mut wanted: BTreeMap<i64, u32> = got.into_iter().collect();
            let mut from = wanted.keys().next().copied().unwrap_or(0);
            while !wanted.is_empty() {
                let bytes =
                    QUEUE_READ_BYTES.min(wanted.len().saturating_mul(FILL_BYTES_PER_RECORD));
                let read = partition.read(from, bytes)?;
                if read.records.is_empty() {
                    break;
                }
                for batch in partition.stored_batches(read.records, "work queue") {
                    let decoded = match batch? {
                        StoredBatch::Oversized { header, .. } => {
                            let last = header.last_offset();
                            from = from.max(last.saturating_add(1));
                            let inside: Vec<i64> = wanted
                                .range(header.base_offset..=last)
                                .map(|(o, _)| *o)
                                .collect();
                            for o in inside {
                                wanted.remove(&o);
                                unreadable.push((p, o));
                            }
                            continue;
                        }
                        StoredBatch::Decoded(decoded) => decoded,
                    };
                    for view in decoded.records() {
                        let view = view?;
                        from = from.max(view.offset + 1);
                        if let Some(attempt) = wanted.remove(&view.offset) {
                            let r = decoded.record(&view)?;
                            records.push(ReceivedRecord {
                                partition: p,
                                offset: r.offset,
                                timestamp: r.timestamp,
                                receipt: Receipt {
                                    topic: sub.topic.clone(),
                                    name: sub.name.clone(),
                                    partition: p,
                                    offset: r.offset,
                                    attempt,
                                }
                                .encode(),
                                delivery_count: attempt,
                                headers: r
                                    .headers
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.clone()))
                                    .collect(),
                                key: r.key,
                                value: r.value,
                            });
                        }
                    }
                }
                if let Some(next) = wanted.keys().next() {
                    from = from.max(*next);
                }
            }
        }
        if !unreadable.is_empty() {
            self.abandon(sub, &unreadable).await?;
        }
        Ok((records, more))
    }

    /// Value bytes of the records of a subscription waiting to be handed out (what AMQP's
    /// `x-max-length-bytes` limits), counted until past `enough`; and, per partition,
    /// the high watermark the count went up to (records appended after it are not in
    /// it). Each record's value is counted from the log once ahead of the scan (the
    /// partition keeps the count), so a call costs what was appended since the last one;
    /// the first after a restart reads the backlog, up to `enough` bytes.
    pub fn subscription_ready_bytes(
        &self,
        topic: &str,
        name: &str,
        enough: u64,
    ) -> Result<(u64, Vec<i64>)> {
        let sub = self.subscription(topic, name)?;
        let t = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        let mut total = 0u64;
        let slots = sub.slots();
        let mut high_watermarks = Vec::with_capacity(slots.len());
        for (index, slot) in slots.iter().take(t.partitions.len()).enumerate() {
            let partition = t.partition(index as i32)?;
            let hw = partition.high_watermark();
            high_watermarks.push(hw);
            let mut q = slot.lock().map_err(|_| poisoned())?;
            q.truncate_below(partition.log_start_offset());
            for o in q.unsized_available() {
                let bytes = match record_at(partition, o, "max-length-bytes")? {
                    AtOffset::Record(r) => value_len(&r),
                    AtOffset::Oversized | AtOffset::Missing => 0,
                };
                q.set_value_bytes(o, bytes);
            }
            loop {
                let tail = q.tail();
                if tail.counted_to >= hw || total + q.ready_value_bytes() > enough {
                    break;
                }
                let read = partition.records_from(
                    tail.counted_to,
                    hw,
                    RECEIVE_MAX_RECORDS,
                    QUEUE_READ_BYTES,
                    "max-length-bytes",
                )?;
                if read.next <= tail.counted_to {
                    break;
                }
                let bytes = read.records.iter().map(|r| u64::from(value_len(r))).sum();
                q.count_tail(read.next, bytes);
            }
            total += q.ready_value_bytes();
        }
        Ok((total, high_watermarks))
    }

    /// Finish tracked records that can no longer be read within the bound (see the
    /// module doc), durably.
    async fn abandon(&self, sub: &Arc<Subscription>, offsets: &[(i32, i64)]) -> Result<()> {
        let mut writes = Vec::new();
        for &(p, o) in offsets {
            sub.slot(p)?.lock().map_err(|_| poisoned())?.abandon(o);
            tracing::warn!(
                topic = sub.topic,
                subscription = sub.name,
                partition = p,
                offset = o,
                "record's batch is past batch_decompressed_bytes_max: finished undelivered"
            );
            writes.push((sub.clone(), p as u32));
        }
        writes.dedup_by(|a, b| a.1 == b.1);
        self.queues.commit.submit(writes).await?;
        sub.changed.notify_waiters();
        Ok(())
    }

    fn locate(&self, receipt: &str) -> Result<(Arc<Subscription>, Receipt)> {
        let r = Receipt::parse(receipt)?;
        let sub = self.subscription(&r.topic, &r.name)?;
        if r.partition < 0 || r.partition as usize >= sub.partition_count() {
            return Err(BrokerError::InvalidReceipt(receipt.to_string()));
        }
        Ok((sub, r))
    }

    /// Apply `f` to the receipt's partition state and queue the new state for the next
    /// group commit; the caller awaits the returned wait before answering.
    #[allow(clippy::type_complexity)]
    fn begin_transition<T>(
        &self,
        receipt: &str,
        f: impl FnOnce(
            &mut PartitionQueue,
            &Receipt,
            &SubscriptionSettings,
        ) -> std::result::Result<T, Refusal>,
    ) -> Result<(Arc<Subscription>, Receipt, T, commit::Wait)> {
        let (sub, r) = self.locate(receipt)?;
        let settings = sub.settings.read().map(|s| s.clone()).unwrap_or_default();
        let slot = sub.slot(r.partition)?;
        let mut q = slot.lock().map_err(|_| poisoned())?;
        let value = f(&mut q, &r, &settings).map_err(|e| refusal(e, receipt))?;
        // Queued under the partition lock so snapshots are written in order.
        let wait = self
            .queues
            .commit
            .enqueue(vec![(sub.clone(), r.partition as u32)]);
        drop(q);
        Ok((sub, r, value, wait))
    }

    #[allow(clippy::type_complexity)]
    async fn transition<T>(
        &self,
        receipt: &str,
        f: impl FnOnce(
            &mut PartitionQueue,
            &Receipt,
            &SubscriptionSettings,
        ) -> std::result::Result<T, Refusal>,
    ) -> Result<(Arc<Subscription>, Receipt, T)> {
        let (sub, r, value, wait) = self.begin_transition(receipt, f)?;
        commit::wait(wait).await?;
        sub.changed.notify_waiters();
        Ok((sub, r, value))
    }

    /// The record is done. Returns once that is durable.
    pub async fn ack(&self, receipt: &str) -> Result<()> {
        self.transition(receipt, |q, r, _| q.ack(r.offset, r.attempt))
            .await
            .map(|_| ())
    }

    /// Ack many receipts; each gets its own outcome. All are queued before any is
    /// awaited, so one group commit covers them.
    pub async fn ack_many(&self, receipts: &[String]) -> Vec<Result<()>> {
        let begun: Vec<_> = receipts
            .iter()
            .map(|r| self.begin_transition(r, |q, r, _| q.ack(r.offset, r.attempt)))
            .collect();
        let mut out = Vec::with_capacity(begun.len());
        for b in begun {
            out.push(match b {
                Ok((sub, _, (), wait)) => {
                    let done = commit::wait(wait).await;
                    sub.changed.notify_waiters();
                    done
                }
                Err(e) => Err(e),
            });
        }
        out
    }

    /// The delivery failed: redeliver after the backoff, or dead-letter the record once it
    /// has failed `max_deliveries` times. Returns true if it was dead-lettered.
    pub async fn nack(&self, receipt: &str, error: Option<String>) -> Result<bool> {
        let now = now_ms();
        let error = error.map(|e| e.chars().take(settings::LAST_ERROR_CHARS_MAX).collect());
        let (sub, r, dead) = self
            .transition(receipt, |q, r, s| {
                q.nack(r.offset, r.attempt, error, &s.policy(), |f| {
                    s.retry_at_ms(now, f)
                })
            })
            .await?;
        if dead && let Err(e) = self.dead_letter(&sub, r.partition, r.offset).await {
            sub.recover.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
        Ok(dead)
    }

    /// Put the record back now; not counted as a failed delivery (its delivery count,
    /// which counts hand-outs, still grows when it is handed out again).
    pub async fn release(&self, receipt: &str) -> Result<()> {
        let now = now_ms();
        self.transition(receipt, |q, r, _| q.release(r.offset, r.attempt, now))
            .await
            .map(|_| ())
    }

    /// Put every leased record of a subscription back (queued for the next commit):
    /// for AMQP queues at startup, whose unacked deliveries died with their
    /// connections, as RabbitMQ requeues them. Returns how many.
    pub(crate) fn release_all_leases(&self, topic: &str, name: &str) -> Result<usize> {
        let sub = self.subscription(topic, name)?;
        let now = now_ms();
        let mut released = 0;
        let mut writes = Vec::new();
        for (index, slot) in sub.slots().iter().enumerate() {
            let mut q = slot.lock().map_err(|_| poisoned())?;
            let n = q.release_all(now);
            if n > 0 {
                released += n;
                writes.push((sub.clone(), index as u32));
            }
        }
        if !writes.is_empty() {
            drop(self.queues.commit.enqueue(writes));
        }
        Ok(released)
    }

    /// Give a leased record back as if it had not been handed out (its delivery count
    /// does not grow): for readers that looked without delivering.
    pub async fn unlease(&self, receipt: &str) -> Result<()> {
        self.transition(receipt, |q, r, _| q.unlease(r.offset, r.attempt))
            .await
            .map(|_| ())
    }

    /// Set the lease to end `lease_ms` from now (the subscription's lease if None).
    /// Returns the new deadline in epoch milliseconds.
    pub async fn extend_lease(&self, receipt: &str, lease_ms: Option<u64>) -> Result<i64> {
        let now = now_ms();
        let (_, _, deadline) = self
            .transition(receipt, |q, r, s| {
                let ms = lease_ms.unwrap_or(s.lease_ms).min(settings::LEASE_MS_MAX) as i64;
                let deadline = now.saturating_add(ms);
                q.extend(r.offset, r.attempt, deadline).map(|_| deadline)
            })
            .await?;
        Ok(deadline)
    }

    /// Copy a record that failed `max_deliveries` times to the dead-letter topic, then
    /// mark it done. A crash between the two copies it again after restart (at least
    /// once); a record someone else is copying right now is left to them.
    async fn dead_letter(
        &self,
        sub: &Arc<Subscription>,
        partition: i32,
        offset: i64,
    ) -> Result<()> {
        let slot = sub.slot(partition)?;
        let Some(entry) = slot
            .lock()
            .map_err(|_| poisoned())?
            .claim_dead_letter(offset)
        else {
            return Ok(());
        };
        let written = self.write_dead_letter(sub, partition, offset, entry).await;
        slot.lock()
            .map_err(|_| poisoned())?
            .release_dead_letter(offset);
        written
    }

    /// The copy itself, for the caller holding the record's claim.
    async fn write_dead_letter(
        &self,
        sub: &Arc<Subscription>,
        partition: i32,
        offset: i64,
        entry: state::Entry,
    ) -> Result<()> {
        let settings = sub.settings.read().map(|s| s.clone()).unwrap_or_default();
        let dlq_name = settings.dead_letter_topic(&sub.topic, &sub.name);
        let source = self
            .topic(&sub.topic)
            .ok_or_else(|| BrokerError::UnknownTopic(sub.topic.clone()))?;
        let mut record = match record_at(source.partition(partition)?, offset, "dead letter")? {
            AtOffset::Record(record) => *record,
            AtOffset::Missing => return Ok(()),
            AtOffset::Oversized => return self.abandon(sub, &[(partition, offset)]).await,
        };
        if let Some(stream) = &settings.dead_letter_stream {
            let reason = entry
                .last_error
                .as_deref()
                .unwrap_or("max retry count reached");
            self.park_record(stream, &record, reason).await?;
            return self.finish_dead_letter(sub, partition, offset).await;
        }
        let now = now_ms();
        let mut add = |k: &str, v: String| {
            record
                .headers
                .insert(StrBytes::from_string(k.to_string()), Some(Bytes::from(v)));
        };
        add(DLQ_SOURCE_TOPIC_HEADER, sub.topic.clone());
        add(DLQ_SOURCE_PARTITION_HEADER, partition.to_string());
        add("herald-dlq-source-offset", offset.to_string());
        add("herald-dlq-subscription", sub.name.clone());
        add("herald-dlq-delivery-count", entry.deliveries.to_string());
        add(
            "herald-dlq-last-error",
            entry.last_error.clone().unwrap_or_default(),
        );
        add(
            "herald-dlq-first-delivery-at",
            entry.first_delivery_ms.unwrap_or(now).to_string(),
        );
        add("herald-dlq-dead-lettered-at", now.to_string());
        let dlq = match self.topic(&dlq_name) {
            Some(t) => t,
            None => match self.create_topic(&dlq_name, Some(1), BTreeMap::new(), false) {
                Err(BrokerError::TopicExists(_)) => self
                    .topic(&dlq_name)
                    .ok_or_else(|| BrokerError::UnknownTopic(dlq_name.clone()))?,
                other => other?,
            },
        };
        let dlq_partition = (offset.rem_euclid(dlq.partitions.len().max(1) as i64)) as i32;
        dlq.append(dlq_partition, &encode_batch(vec![record])?, now)?
            .durable()
            .await?;
        self.finish_dead_letter(sub, partition, offset).await
    }

    /// The dead-letter copy is durable: the record is done.
    async fn finish_dead_letter(
        &self,
        sub: &Arc<Subscription>,
        partition: i32,
        offset: i64,
    ) -> Result<()> {
        let wait = {
            let slot = sub.slot(partition)?;
            let mut q = slot.lock().map_err(|_| poisoned())?;
            q.dead_lettered(offset);
            self.queues
                .commit
                .enqueue(vec![(sub.clone(), partition as u32)])
        };
        commit::wait(wait).await?;
        sub.changed.notify_waiters();
        Ok(())
    }

    /// Hand records already finished (below the scan) out again, as new: an event
    /// store's replay of parked events. Offsets not in the log any more, or still
    /// tracked, are left alone. Durable before it returns; returns how many.
    pub(crate) async fn revive(
        &self,
        topic: &str,
        name: &str,
        partition: i32,
        offsets: &[i64],
    ) -> Result<usize> {
        let sub = self.subscription(topic, name)?;
        let t = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        let start = t.partition(partition)?.log_start_offset();
        let slot = sub
            .slot(partition)
            .map_err(|_| BrokerError::InvalidReceipt(format!("partition {partition}")))?;
        let mut revived = 0;
        {
            let mut q = slot.lock().map_err(|_| poisoned())?;
            for &o in offsets {
                if o >= start && q.revive(o) {
                    revived += 1;
                }
            }
        }
        if revived > 0 {
            self.queues
                .commit
                .submit(vec![(sub.clone(), partition as u32)])
                .await?;
            sub.changed.notify_waiters();
        }
        Ok(revived)
    }

    /// The offset below which every record of the partition is finished.
    pub fn subscription_floor(&self, topic: &str, name: &str, partition: i32) -> Result<i64> {
        let sub = self.subscription(topic, name)?;
        let slot = sub
            .slot(partition)
            .map_err(|_| BrokerError::InvalidReceipt(format!("partition {partition}")))?;
        Ok(slot.lock().map_err(|_| poisoned())?.floor)
    }

    /// Drop every record of the subscription that is not handed out now (AMQP's
    /// queue.purge): the records stay in the log, the subscription moves past them.
    /// Returns how many; durable before it returns.
    pub async fn purge_subscription(&self, topic: &str, name: &str) -> Result<u64> {
        let sub = self.subscription(topic, name)?;
        let t = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        let mut purged = 0;
        let mut writes = Vec::new();
        for (index, slot) in sub.slots().iter().take(t.partitions.len()).enumerate() {
            let end = t.partition(index as i32)?.high_watermark();
            let mut q = slot.lock().map_err(|_| poisoned())?;
            purged += q.purge(end);
            writes.push((sub.clone(), index as u32));
        }
        self.queues.commit.submit(writes).await?;
        Ok(purged)
    }

    /// Counters of one subscription; reads memory only.
    pub fn subscription_stats(&self, topic: &str, name: &str) -> Result<SubscriptionStats> {
        let sub = self.subscription(topic, name)?;
        let t = self.topic(topic);
        let now = now_ms();
        let mut s = SubscriptionStats::default();
        for (i, slot) in sub.slots().iter().enumerate() {
            let q = slot.lock().map_err(|_| poisoned())?;
            let c = q.counts(now);
            let hw = t
                .as_ref()
                .and_then(|t| t.partition(i as i32).ok())
                .map(|p| p.high_watermark())
                .unwrap_or(q.scan_next);
            s.depth += c.available + (hw - q.scan_next).max(0) as u64;
            s.in_flight += c.in_flight;
            s.delayed += c.delayed;
            s.dead_lettered += q.dead_lettered;
            s.redeliveries += q.redeliveries;
            s.expired_leases += q.expired_leases;
            s.lost_to_retention += q.lost_to_retention;
            s.bad_deliver_at += q.bad_deliver_at;
        }
        Ok(s)
    }

    /// One timer pass: expire leases, dead-letter what failed too often (also records
    /// left half dead-lettered by a crash). Cost is proportional to what expired.
    pub async fn queue_tick(&self) -> Result<()> {
        let subs: Vec<Arc<Subscription>> = self
            .queues
            .subs
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        let now = now_ms();
        for sub in subs {
            let settings = sub.settings.read().map(|s| s.clone()).unwrap_or_default();
            let policy = settings.policy();
            let mut dead = Vec::new();
            let mut writes = Vec::new();
            // Records left half dead-lettered (a restart, a failed append) are looked for
            // only when flagged, not on every tick.
            let recover = sub.recover.swap(false, std::sync::atomic::Ordering::SeqCst);
            for (i, slot) in sub.slots().iter().enumerate() {
                let mut q = slot.lock().map_err(|_| poisoned())?;
                let expired_before = q.expired_leases;
                let mut d = q.expire(now, &policy, |f| settings.retry_at_ms(now, f));
                if recover {
                    d.extend(q.dead_lettering());
                    d.sort_unstable();
                    d.dedup();
                }
                let changed = !d.is_empty() || q.expired_leases != expired_before;
                dead.extend(d.into_iter().map(|o| (i as i32, o)));
                if changed {
                    writes.push((sub.clone(), i as u32));
                }
            }
            if !writes.is_empty() {
                self.queues.commit.submit(writes).await?;
            }
            for (p, o) in dead {
                if let Err(e) = self.dead_letter(&sub, p, o).await {
                    sub.recover.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Records in a dead-letter topic from its redrive floor on, at most `max_records`.
    pub fn list_dead_letters(
        &self,
        dlq_topic: &str,
        max_records: usize,
    ) -> Result<Vec<ReceivedRecord>> {
        let t = self
            .topic(dlq_topic)
            .ok_or_else(|| BrokerError::UnknownTopic(dlq_topic.to_string()))?;
        let mut out = Vec::new();
        for p in &t.partitions {
            let index = p.index;
            let mut from = self
                .meta
                .redrive_floor(dlq_topic, index as u32)?
                .max(p.log_start_offset());
            while from < p.high_watermark() && out.len() < max_records {
                let read = p.read(from, QUEUE_READ_BYTES)?;
                if read.records.is_empty() {
                    break;
                }
                for batch in p.stored_batches(read.records, "dead letter list") {
                    let decoded = match batch? {
                        StoredBatch::Oversized { header, .. } => {
                            from = from.max(header.last_offset().saturating_add(1));
                            continue;
                        }
                        StoredBatch::Decoded(decoded) => decoded,
                    };
                    for view in decoded.records() {
                        let view = view?;
                        if view.offset < from || out.len() >= max_records {
                            continue;
                        }
                        from = view.offset + 1;
                        let r = decoded.record(&view)?;
                        out.push(ReceivedRecord {
                            partition: index,
                            offset: r.offset,
                            timestamp: r.timestamp,
                            receipt: String::new(),
                            delivery_count: 0,
                            headers: r
                                .headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.clone()))
                                .collect(),
                            key: r.key,
                            value: r.value,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Records of a dead-letter topic not redriven yet (0 if the topic does not exist).
    pub fn dead_letter_depth(&self, dlq_topic: &str) -> Result<u64> {
        let Some(t) = self.topic(dlq_topic) else {
            return Ok(0);
        };
        let mut depth = 0u64;
        for p in &t.partitions {
            let floor = self
                .meta
                .redrive_floor(dlq_topic, p.index as u32)?
                .max(p.log_start_offset());
            depth += (p.high_watermark() - floor).max(0) as u64;
        }
        Ok(depth)
    }

    /// Move every record of a dead-letter topic above its redrive floor back to its
    /// source topic (original key, value and headers; the `herald-dlq-*` headers are
    /// dropped), then raise the floor. Returns how many were moved. A crash between the
    /// publish and the floor moves them again (at least once).
    pub async fn redrive(&self, dlq_topic: &str) -> Result<u64> {
        let _serial = self.queues.redrive.lock().await;
        let t = self
            .topic(dlq_topic)
            .ok_or_else(|| BrokerError::UnknownTopic(dlq_topic.to_string()))?;
        let mut moved = 0u64;
        for p in &t.partitions {
            let index = p.index;
            let hw = p.high_watermark();
            let mut from = self
                .meta
                .redrive_floor(dlq_topic, index as u32)?
                .max(p.log_start_offset());
            while from < hw {
                let read = p.read(from, QUEUE_READ_BYTES)?;
                if read.records.is_empty() {
                    break;
                }
                // One batch per source partition per read step, all awaited together
                // (one fsync round), then the floor: a crash re-moves one step at most.
                let step_start = from;
                let mut batches: BTreeMap<(String, i32), (Arc<crate::topic::Topic>, Vec<Record>)> =
                    BTreeMap::new();
                for batch in p.stored_batches(read.records, "redrive") {
                    let decoded = match batch? {
                        StoredBatch::Oversized { header, .. } => {
                            // Not movable within the bound: left in the dead-letter log.
                            from = from.max(header.last_offset().saturating_add(1));
                            continue;
                        }
                        StoredBatch::Decoded(decoded) => decoded,
                    };
                    for view in decoded.records() {
                        let view = view?;
                        if view.offset < from || view.offset >= hw {
                            continue;
                        }
                        let mut r = decoded.record(&view)?;
                        from = r.offset + 1;
                        let text = |name| {
                            header(&r, name)
                                .and_then(|v| v.as_ref())
                                .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
                        };
                        let source_partition: i32 = text(DLQ_SOURCE_PARTITION_HEADER)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let Some((name, source)) = text(DLQ_SOURCE_TOPIC_HEADER)
                            .and_then(|name| self.topic(&name).map(|t| (name, t)))
                        else {
                            tracing::warn!(
                                dlq_topic,
                                offset = r.offset,
                                "redrive: source topic gone; skipped"
                            );
                            continue;
                        };
                        r.headers.retain(|k, _| !k.starts_with(DLQ_HEADER_PREFIX));
                        let sp = source_partition.clamp(0, source.partitions.len() as i32 - 1);
                        batches
                            .entry((name, sp))
                            .or_insert_with(|| (source, Vec::new()))
                            .1
                            .push(r);
                    }
                }
                let now = now_ms();
                let mut pending = Vec::with_capacity(batches.len());
                for ((_, sp), (source, records)) in batches {
                    moved += records.len() as u64;
                    pending.push(source.append(sp, &encode_batch(records)?, now)?);
                }
                for appended in pending {
                    appended.durable().await?;
                }
                self.meta.put_redrive_floor(dlq_topic, index as u32, from)?;
                if from == step_start {
                    // Nothing readable at or after the floor below the high watermark.
                    break;
                }
            }
        }
        Ok(moved)
    }
}

/// Track records from the log until the window is full or the log's end is reached.
///
/// With a filter, records that do not pass are stepped over; the scan then stops after
/// `FILL_SCAN_BYTES_MAX` read, so a filter that passes little does not hold the
/// partition's lock for a whole log. Returns true when it stopped for that with more to
/// scan.
fn fill_window(
    sub: &Subscription,
    index: usize,
    partition: &Partition,
    q: &mut PartitionQueue,
    policy: &state::Policy,
) -> Result<bool> {
    // Committed data only: stop at the last stable offset (an open transaction).
    let hw = partition.last_stable_offset();
    let filter = sub.filter.read().ok().and_then(|f| f.clone());
    let mut scanned = 0usize;
    while q.room(policy) > 0 && q.scan_next < hw {
        if scanned >= FILL_SCAN_BYTES_MAX {
            return Ok(true);
        }
        // About what the room holds, so a window with room for a few records does not
        // decode a whole read's worth of neighbours.
        let bytes = if filter.is_some() {
            QUEUE_READ_BYTES
        } else {
            QUEUE_READ_BYTES.min(q.room(policy).saturating_mul(FILL_BYTES_PER_RECORD))
        };
        let read = partition.read(q.scan_next, bytes)?;
        scanned += read.records.len();
        if read.records.is_empty() {
            break;
        }
        let before = q.scan_next;
        'batches: for batch in partition.stored_batches(read.records, "work queue") {
            let decoded = match batch? {
                StoredBatch::Oversized { header, .. } => {
                    // Stepped over (see the module doc); the partition logged it.
                    if header.base_offset < hw {
                        q.skip_to(header.last_offset().saturating_add(1));
                    }
                    continue;
                }
                StoredBatch::Decoded(decoded) => decoded,
            };
            let h = &decoded.header;
            if h.is_control()
                || (h.is_transactional() && partition.is_aborted(h.producer_id, h.base_offset))
            {
                // A transaction marker, or an aborted transaction's records: not work.
                if h.base_offset < hw && h.last_offset() >= q.scan_next {
                    q.skip_to(h.last_offset().saturating_add(1));
                }
                continue;
            }
            for view in decoded.records() {
                let view = view?;
                if view.offset < q.scan_next || view.offset >= hw {
                    continue;
                }
                if q.room(policy) == 0 {
                    break 'batches;
                }
                let r = decoded.record(&view)?;
                if let Some(f) = &filter
                    && !f.passes(&r)
                {
                    q.skip_to(r.offset + 1);
                    continue;
                }
                let not_before = match deliver_at(&r) {
                    Ok(at) => at.unwrap_or(0),
                    Err(()) => {
                        q.bad_deliver_at += 1;
                        tracing::warn!(
                            topic = sub.topic,
                            partition = index,
                            offset = r.offset,
                            "bad {DELIVER_AT_HEADER} header; delivering now"
                        );
                        0
                    }
                };
                q.track_sized(
                    r.offset,
                    key_hash(r.key.as_ref()),
                    not_before,
                    value_len(&r),
                );
            }
        }
        if q.scan_next == before {
            // Only records below scan_next in what was read (a batch boundary
            // or compaction gap): step over to the end of what was read.
            break;
        }
    }
    Ok(false)
}

/// Encode records from a non-idempotent producer, numbered from 0. Every sequence is
/// -1, so `offset - sequence` differs per record and the encoder
/// ([`herald_records::encode_records`]) writes each record as a batch of its own.
pub(crate) fn encode_batch(records: Vec<Record>) -> Result<Vec<u8>> {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| Record {
            offset: i as i64,
            sequence: -1,
            producer_id: -1,
            producer_epoch: -1,
            transactional: false,
            control: false,
            timestamp_type: TimestampType::Creation,
            ..r
        })
        .collect();
    let encoded = herald_records::encode_records(&records, Compression::None).map_err(|e| {
        BrokerError::InvalidRecord(match e {
            EncodeError::Codec(e) => format!("cannot encode record: {e}"),
            e => e.to_string(),
        })
    })?;
    Ok(encoded.to_vec())
}

/// The settings' filter ready to run; one that no longer compiles (stored by another
/// version) lets every record through, said in the log.
fn compile_filter(settings: &SubscriptionSettings) -> Option<Arc<filter::CompiledFilter>> {
    let f = settings.filter.as_ref()?;
    match f.compile() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!(error = %e, "subscription filter does not compile; not filtering");
            None
        }
    }
}

fn new_subscription(
    topic: String,
    name: String,
    settings: SubscriptionSettings,
    parts: Vec<PartitionQueue>,
) -> Arc<Subscription> {
    let compiled = compile_filter(&settings);
    Arc::new(Subscription {
        deleted: std::sync::atomic::AtomicBool::new(false),
        recover: std::sync::atomic::AtomicBool::new(true),
        topic,
        name,
        settings: RwLock::new(settings),
        filter: RwLock::new(compiled),
        partitions: RwLock::new(parts.into_iter().map(|q| Arc::new(Mutex::new(q))).collect()),
        changed: Notify::new(),
    })
}

impl Subscription {
    /// The partition states as they are now (CreatePartitions may add more later).
    fn slots(&self) -> Vec<Arc<Mutex<PartitionQueue>>> {
        self.partitions
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    fn partition_count(&self) -> usize {
        self.partitions.read().map(|p| p.len()).unwrap_or(0)
    }

    /// One partition's state; `UnknownPartition` past the end.
    fn slot(&self, partition: i32) -> Result<Arc<Mutex<PartitionQueue>>> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.partitions.read().ok()?.get(i).cloned())
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: self.topic.clone(),
                partition,
            })
    }

    /// The partition's changes since the last snapshot (see `state::Changes`); None
    /// once deleted. Taken changes are given back with `unsnapshot` when their commit
    /// fails, so no change is lost from the store.
    pub(crate) fn snapshot(&self, partition: u32) -> std::result::Result<Option<Changes>, String> {
        if self.deleted.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        let Ok(slot) = self.slot(partition as i32) else {
            return Ok(None);
        };
        let mut q = slot
            .lock()
            .map_err(|_| "queue state lock poisoned".to_string())?;
        Ok(Some(q.take_changes()))
    }

    /// Changes from `snapshot` that were not stored.
    pub(crate) fn unsnapshot(&self, partition: u32, changes: &Changes) {
        if let Ok(slot) = self.slot(partition as i32)
            && let Ok(mut q) = slot.lock()
        {
            q.untake_changes(changes);
        }
    }
}

/// The first byte of a partition state stored whole (up to `max_unacked` entries,
/// rewritten at every commit): postcard follows. Read only, from stores written before
/// entries had rows of their own.
const STATE_POSTCARD_V1: u8 = 1;
/// The first byte of a partition's stored header (`state::Header`, postcard); its
/// entries are rows of their own, one per tracked record (`ENTRY_POSTCARD_V1`).
const HEADER_POSTCARD_V2: u8 = 2;
/// The first byte of one stored entry (`state::Entry`, postcard).
const ENTRY_POSTCARD_V1: u8 = 1;

/// A partition's stored state as read back.
enum Stored {
    Header(Header),
    Whole(PartitionQueue),
}

/// Encoded entries, by offset.
type EncodedEntries = Vec<(i64, Vec<u8>)>;

/// A snapshot's changes in the meta store's form: (header, entries by offset).
pub(crate) fn encode_changes(
    changes: &Changes,
) -> std::result::Result<(Vec<u8>, EncodedEntries), postcard::Error> {
    let header = postcard::to_extend(&changes.header, vec![HEADER_POSTCARD_V2])?;
    let entries = changes
        .entries
        .iter()
        .map(|(o, e)| postcard::to_extend(e, vec![ENTRY_POSTCARD_V1]).map(|b| (*o, b)))
        .collect::<std::result::Result<_, _>>()?;
    Ok((header, entries))
}

/// Read a stored partition state: a header (its entries are read separately), or a
/// whole state as older stores hold it: postcard after its version byte, or JSON
/// (which starts with `{`).
fn decode_state(bytes: &[u8]) -> std::result::Result<Stored, String> {
    match bytes.split_first() {
        Some((&HEADER_POSTCARD_V2, rest)) => postcard::from_bytes(rest)
            .map(Stored::Header)
            .map_err(|e| e.to_string()),
        Some((&STATE_POSTCARD_V1, rest)) => postcard::from_bytes(rest)
            .map(Stored::Whole)
            .map_err(|e| e.to_string()),
        Some((b'{', _)) => serde_json::from_slice(bytes)
            .map(Stored::Whole)
            .map_err(|e| e.to_string()),
        Some((first, _)) => Err(format!("unknown state format (first byte {first:#04x})")),
        None => Err("empty state".to_string()),
    }
}

fn decode_entry(bytes: &[u8]) -> std::result::Result<Entry, String> {
    match bytes.split_first() {
        Some((&ENTRY_POSTCARD_V1, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((first, _)) => Err(format!("unknown entry format (first byte {first:#04x})")),
        None => Err("empty entry".to_string()),
    }
}

fn value_len(record: &Record) -> u32 {
    record
        .value
        .as_ref()
        .map_or(0, |v| u32::try_from(v.len()).unwrap_or(u32::MAX))
}

fn poisoned() -> BrokerError {
    BrokerError::Storage("queue state lock poisoned".into())
}

/// Spawn the broker's queue timer (one task per broker).
pub(crate) fn spawn_timer(broker: std::sync::Weak<Broker>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(QUEUE_TICK_MS));
        loop {
            tick.tick().await;
            let Some(b) = broker.upgrade() else { return };
            if let Err(e) = b.queue_tick().await {
                tracing::warn!(error = %e, "queue timer pass failed");
            }
        }
    });
}
