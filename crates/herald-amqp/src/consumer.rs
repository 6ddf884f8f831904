//! What a channel shares with its consumer tasks: the delivery tags it handed out and
//! not yet settled (each holding its prefetch permits), and the consumer task itself
//! (one per `basic.consume`), which leases records from the queue's subscription and
//! writes `basic.deliver` frames.
//!
//! A consumer is told to stop through a watch flag, never aborted: a lease it got is
//! either delivered (and then tracked here until settled) or released, so no record
//! waits out a lease for a consumer that is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use amq_protocol::protocol::{AMQPClass, basic};
use bytes::{Bytes, BytesMut};
use herald_broker::amqp::{AMQP_SUBSCRIPTION, delivery_info};
use herald_broker::queue::{Leases, ReceivedRecord};
use herald_broker::{Broker, BrokerError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::frame;
use crate::metrics::AmqpMetrics;
use crate::values::short;

/// How long one lease call waits for a record before looking at the stop flag again.
const RECEIVE_WAIT_MS: u64 = 1_000;
/// Records one lease call takes at most (bounded by the consumer's free prefetch, and
/// by the write queue's bytes over the size of recent records).
const RECEIVE_BATCH_MAX: usize = 256;
/// Records the first lease call takes at most, before record sizes are known.
const RECEIVE_BATCH_FIRST: usize = 16;
/// How long a consumer whose prefetch window was full waits, once it has room for a
/// few records, for acks to free more before it leases (see `ConsumerTask::deliver`).
const DELIVER_GATHER_US: u64 = 1_000;
/// A consumer gathers room only with a prefetch of at least this many (a smaller one,
/// such as an RPC worker's prefetch 1, gets each record at once).
const GATHER_PREFETCH_MIN: usize = 8;
/// What a delivery's frames add to its body and headers, about (method, content
/// header, frame overheads), for the write queue's byte count.
const DELIVERY_OVERHEAD_BYTES: usize = 256;
/// Bytes of whole batches one stream read takes from the log at most.
const STREAM_READ_BYTES: usize = 1 << 20;

/// A delivery not yet acked, nacked or rejected.
pub struct Unsettled {
    pub receipt: String,
    pub topic: Arc<str>,
    /// The consumer it went to (None for basic.get).
    pub consumer: Option<Arc<str>>,
    /// Returned to the prefetch windows when the delivery is settled.
    _permits: Vec<OwnedSemaphorePermit>,
}

#[derive(Default)]
pub struct Tags {
    next: u64,
    pub unsettled: BTreeMap<u64, Unsettled>,
}

/// Shared by a channel and its consumers.
#[derive(Default)]
pub struct ChannelShared {
    pub tags: Mutex<Tags>,
}

impl ChannelShared {
    /// A new delivery tag for `receipt` (tags start at 1).
    pub fn register(
        &self,
        receipt: String,
        topic: Arc<str>,
        consumer: Option<Arc<str>>,
        permits: Vec<OwnedSemaphorePermit>,
    ) -> u64 {
        let Ok(mut tags) = self.tags.lock() else {
            return 0;
        };
        tags.next += 1;
        let tag = tags.next;
        tags.unsettled.insert(
            tag,
            Unsettled {
                receipt,
                topic,
                consumer,
                _permits: permits,
            },
        );
        tag
    }

    /// A tag for a delivery that needs no settling (no-ack consumers).
    pub fn next_tag(&self) -> u64 {
        match self.tags.lock() {
            Ok(mut tags) => {
                tags.next += 1;
                tags.next
            }
            Err(_) => 0,
        }
    }

    /// Take the deliveries `tag` names: just it, or with `multiple` every one up to it
    /// (tag 0 with multiple: all). None when a single tag is not outstanding.
    pub fn take(&self, tag: u64, multiple: bool) -> Option<Vec<Unsettled>> {
        let mut tags = self.tags.lock().ok()?;
        if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            let keys: Vec<u64> = tags.unsettled.range(..=upto).map(|(k, _)| *k).collect();
            if keys.is_empty() && tag != 0 {
                return None;
            }
            Some(
                keys.into_iter()
                    .filter_map(|k| tags.unsettled.remove(&k))
                    .collect(),
            )
        } else {
            tags.unsettled.remove(&tag).map(|u| vec![u])
        }
    }

    /// Every unsettled delivery (channel closing, basic.recover).
    pub fn take_all(&self) -> Vec<Unsettled> {
        match self.tags.lock() {
            Ok(mut tags) => std::mem::take(&mut tags.unsettled).into_values().collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Settling work, done in order by the connection's settle task.
pub enum Settle {
    Ack(Vec<String>),
    /// Back to the queue now (requeue, a closed channel, recover).
    Release(Vec<String>),
    /// Rejected without requeue: dead-lettered when the queue has a dead-letter
    /// exchange, dropped otherwise.
    Reject {
        receipts: Vec<String>,
        reason: &'static str,
    },
    /// Answered once everything queued before it is settled.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

pub type SettleTx = mpsc::UnboundedSender<Settle>;

/// The connection's settle task: acks and releases in the order the client sent them,
/// each batch of acks covered by one commit of the work-queue engine.
pub async fn settle_task(
    broker: Arc<Broker>,
    metrics: AmqpMetrics,
    mut rx: mpsc::UnboundedReceiver<Settle>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut acks: Vec<String> = Vec::new();
        for mut op in batch {
            // Stream deliveries have no receipt: nothing to settle but their permits.
            match &mut op {
                Settle::Ack(r) | Settle::Release(r) => r.retain(|r| !r.is_empty()),
                Settle::Reject { receipts, .. } => receipts.retain(|r| !r.is_empty()),
                Settle::Barrier(_) => {}
            }
            match op {
                Settle::Ack(receipts) => acks.extend(receipts),
                other => {
                    flush_acks(&broker, &metrics, &mut acks).await;
                    match other {
                        Settle::Release(receipts) => {
                            metrics.requeued(receipts.len() as u64);
                            for receipt in receipts {
                                if let Err(error) = broker.amqp_requeue(&receipt).await {
                                    tracing::debug!(%error, "release of an AMQP delivery");
                                }
                            }
                        }
                        Settle::Reject { receipts, reason } => {
                            metrics.rejected(receipts.len() as u64);
                            for receipt in receipts {
                                if let Err(error) = broker.amqp_reject(&receipt, reason).await {
                                    tracing::warn!(%error, "reject of an AMQP delivery");
                                }
                            }
                        }
                        Settle::Barrier(done) => {
                            let _ = done.send(());
                        }
                        Settle::Ack(_) => {}
                    }
                }
            }
        }
        flush_acks(&broker, &metrics, &mut acks).await;
    }
}

async fn flush_acks(broker: &Broker, metrics: &AmqpMetrics, acks: &mut Vec<String>) {
    if acks.is_empty() {
        return;
    }
    metrics.acked(acks.len() as u64);
    for outcome in broker.ack_many(acks).await {
        if let Err(error) = outcome {
            tracing::debug!(%error, "ack of an AMQP delivery");
        }
    }
    acks.clear();
}

/// Frames on their way to the connection's writer, and how many of the connection's
/// write-queue bytes they hold (given back once written).
pub struct Outgoing {
    pub bytes: Bytes,
    pub charge: u32,
}

/// Writes frames to the connection's writer. The queue is bounded in frames and in
/// bytes (`amqp_write_queue_bytes`): a client that stops reading holds at most that
/// much of the broker's memory in waiting deliveries (a frame bigger than the whole
/// bound waits for the queue to be empty).
#[derive(Clone)]
pub struct Out {
    tx: mpsc::Sender<Outgoing>,
    bytes: Arc<Semaphore>,
    bytes_max: usize,
}

impl Out {
    pub fn new(tx: mpsc::Sender<Outgoing>, bytes: Arc<Semaphore>, bytes_max: usize) -> Out {
        Out {
            tx,
            bytes,
            bytes_max,
        }
    }

    /// Wait for room for `len` bytes; None once the connection is gone.
    pub async fn charge(&self, len: usize) -> Option<u32> {
        let n = len.clamp(1, self.bytes_max.max(1)) as u32;
        self.bytes.acquire_many(n).await.ok()?.forget();
        Some(n)
    }

    /// Room for `len` bytes now, or None.
    pub fn try_charge(&self, len: usize) -> Option<u32> {
        let n = len.clamp(1, self.bytes_max.max(1)) as u32;
        self.bytes.try_acquire_many(n).ok()?.forget();
        Some(n)
    }

    /// Give back a charge that was not used.
    pub fn refund(&self, charge: u32) {
        self.bytes.add_permits(charge as usize);
    }

    pub async fn send(&self, bytes: Bytes) -> bool {
        let Some(charge) = self.charge(bytes.len()).await else {
            return false;
        };
        self.tx.send(Outgoing { bytes, charge }).await.is_ok()
    }

    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    pub fn sender(&self) -> &mpsc::Sender<Outgoing> {
        &self.tx
    }
}

/// The frames of one delivery (`basic.deliver` or `basic.get-ok`, content header,
/// body frames).
pub fn delivery_frames(
    channel: u16,
    method: AMQPClass,
    record: &ReceivedRecord,
    frame_max: usize,
    counts_deliveries: bool,
    stream_offset: Option<i64>,
) -> Bytes {
    let info = delivery_info(record);
    let body = record.value.clone().unwrap_or_default();
    let mut out = BytesMut::new();
    out.extend_from_slice(&frame::method(channel, method));
    let delivery_count = (counts_deliveries && record.delivery_count > 1)
        .then(|| i64::from(record.delivery_count) - 1);
    let plain =
        info.deaths.entries.is_empty() && delivery_count.is_none() && stream_offset.is_none();
    let properties = match (&info.raw_properties, plain) {
        (Some(raw), true) => raw.clone(),
        (raw, _) => {
            let mut properties = raw
                .as_ref()
                .and_then(|raw| {
                    amq_protocol::protocol::basic::parse_properties(&raw[..])
                        .ok()
                        .map(|(_, p)| p)
                })
                .unwrap_or_else(|| crate::values::kafka_properties(record));
            if !info.deaths.entries.is_empty() {
                properties = crate::values::with_deaths(properties, &info.deaths);
            }
            let added = [
                ("x-delivery-count", delivery_count),
                ("x-stream-offset", stream_offset),
            ];
            if added.iter().any(|(_, v)| v.is_some()) {
                let mut headers = properties.headers().clone().unwrap_or_default();
                for (name, value) in added {
                    if let Some(value) = value {
                        headers.insert(
                            name.into(),
                            amq_protocol::types::AMQPValue::LongLongInt(value),
                        );
                    }
                }
                properties = properties.with_headers(headers);
            }
            frame::encode_properties(&properties)
        }
    };
    frame::content(&mut out, channel, &properties, &body, frame_max);
    out.freeze()
}

pub struct ConsumerTask {
    pub broker: Arc<Broker>,
    pub metrics: AmqpMetrics,
    pub channel: u16,
    pub tag: Arc<str>,
    /// The queue's name (the routing key of records a Kafka producer wrote).
    pub queue: Arc<str>,
    pub topic: Arc<str>,
    pub no_ack: bool,
    pub counts_deliveries: bool,
    pub ttl_ms: Option<i64>,
    pub windows: Vec<Arc<Semaphore>>,
    /// Free prefetch slots worth gathering before a lease when the window was full
    /// (0: never wait); see [`ConsumerTask::gatherer`].
    pub gather_min: usize,
    pub shared: Arc<ChannelShared>,
    pub out: Out,
    pub settle: SettleTx,
    pub frame_max: usize,
    pub stop: watch::Receiver<bool>,
    /// True once the consumer is cancelled; see the delivery loop.
    pub gate: Arc<Mutex<bool>>,
    /// The client understands a broker-sent basic.cancel.
    pub cancel_notify: bool,
    /// Its slot on the queue, and, on a single-active-consumer queue, which slot may
    /// receive now.
    pub slot: u64,
    pub active: Option<watch::Receiver<u64>>,
    /// A stream queue's consumer: the next offset it reads (no leases; acks only give
    /// back prefetch credit).
    pub stream_next: Option<i64>,
}

impl ConsumerTask {
    /// `gather_min` for a consumer whose own prefetch is `prefetch`: a quarter of it.
    pub fn gatherer(prefetch: usize) -> usize {
        if prefetch >= GATHER_PREFETCH_MIN {
            prefetch / 4
        } else {
            0
        }
    }

    pub async fn run(mut self) {
        let _held = self.metrics.consumer();
        self.deliver().await;
        if self.active.is_some() {
            // Its leases are given back by now: the next consumer starts from them,
            // in queue order.
            self.broker.amqp_active_done(&self.queue, self.slot);
        }
    }

    async fn deliver(&mut self) {
        // Records leased at once: as many as about fill the write queue's bytes, judged
        // by the last batch (a few to begin with), so leased-but-unsent records of a
        // consumer that cannot send stay within about that bound too.
        let mut batch_max = RECEIVE_BATCH_FIRST;
        loop {
            if *self.stop.borrow() {
                return;
            }
            if !self.wait_until_active().await {
                return;
            }
            // One permit from every window first (waiting), then as many more as
            // every window has free right now.
            let (first, waited) = match self.try_acquire() {
                Some(permits) => (permits, false),
                None => match self.acquire_one().await {
                    Some(permits) => (permits, true),
                    None => return,
                },
            };
            let mut grants = vec![first];
            self.take_free(&mut grants, batch_max);
            if waited && grants.len() < self.gather_min {
                // The window was full and acks free it one at a time: the client holds
                // a quarter of its prefetch or more, so a moment's wait costs it
                // nothing, and one lease then covers the acks that came meanwhile
                // instead of one lease, log read and wake-up per ack.
                tokio::time::sleep(std::time::Duration::from_micros(DELIVER_GATHER_US)).await;
                self.take_free(&mut grants, batch_max);
            }
            let got = match self.stream_next {
                Some(next) => self.read_stream(next, grants.len()).await,
                None => {
                    let stop = self.stop.clone();
                    self.broker
                        .receive_while(
                            &self.topic,
                            AMQP_SUBSCRIPTION,
                            grants.len(),
                            RECEIVE_WAIT_MS,
                            // Unacked deliveries are requeued at startup (as RabbitMQ
                            // does), so a delivery need not wait for an fsync.
                            Leases::WrittenBehind,
                            || !*stop.borrow(),
                        )
                        .await
                }
            };
            let records = match got {
                Ok(records) => records,
                Err(BrokerError::UnknownSubscription { .. } | BrokerError::UnknownTopic(_)) => {
                    // The queue was deleted under the consumer: tell the client,
                    // unless the consumer was cancelled meanwhile (its channel id
                    // may already belong to a new channel).
                    if self.cancel_notify
                        && let Ok(slot) = self.out.sender().reserve().await
                        && let Ok(stopped) = self.gate.lock()
                        && !*stopped
                    {
                        let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: short(&self.tag),
                            nowait: true,
                        }));
                        slot.send(Outgoing {
                            bytes: frame::method(self.channel, cancel),
                            charge: 0,
                        });
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, "AMQP consumer cannot lease records");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            if *self.stop.borrow() {
                self.release(records.into_iter().map(|r| r.receipt).collect())
                    .await;
                return;
            }
            if !records.is_empty() {
                let bytes: usize = records
                    .iter()
                    .map(|r| r.value.as_ref().map_or(0, Bytes::len) + DELIVERY_OVERHEAD_BYTES)
                    .sum();
                let average = (bytes / records.len()).max(1);
                batch_max = (self.out.bytes_max() / average).clamp(1, RECEIVE_BATCH_MAX);
            }
            let mut records = records.into_iter();
            while let Some(record) = records.next() {
                let permits = grants.pop().unwrap_or_default();
                if herald_broker::amqp::is_expired(&record, self.ttl_ms, herald_broker::now_ms()) {
                    // Past its TTL: dead-lettered (or dropped), never delivered.
                    drop(permits);
                    let _ = self.settle.send(Settle::Reject {
                        receipts: vec![record.receipt],
                        reason: "expired",
                    });
                    continue;
                }
                let redelivered = record.delivery_count > 1;
                // A slot in the writer's queue first (this may wait), then, under the
                // gate, the stop check, the tag and the enqueue: a cancel-ok or
                // channel close the reader sends after flipping the gate can never be
                // overtaken by a delivery of this consumer.
                // Room in the write queue's bytes for about this delivery (the charge
                // travels with the frames and is given back once they are written).
                let size = record.value.as_ref().map_or(0, Bytes::len)
                    + record
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                        .sum::<usize>()
                    + DELIVERY_OVERHEAD_BYTES;
                let charge = self.out.charge(size).await;
                let slot = match charge {
                    Some(_) => self.out.sender().reserve().await.ok(),
                    None => None,
                };
                let (Some(charge), Some(slot)) = (charge, slot) else {
                    let mut rest: Vec<String> = records.map(|r| r.receipt).collect();
                    rest.push(record.receipt);
                    self.release(rest).await;
                    return;
                };
                let info = delivery_info(&record).or_queue(&self.queue);
                let halted = 'gate: {
                    let Ok(stopped) = self.gate.lock() else {
                        return;
                    };
                    if *stopped {
                        break 'gate true;
                    }
                    let tag = if self.no_ack {
                        self.shared.next_tag()
                    } else {
                        self.shared.register(
                            record.receipt.clone(),
                            self.topic.clone(),
                            Some(self.tag.clone()),
                            permits,
                        )
                    };
                    let deliver = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                        consumer_tag: short(&self.tag),
                        delivery_tag: tag,
                        redelivered,
                        exchange: short(&info.exchange),
                        routing_key: short(&info.routing_key),
                    }));
                    slot.send(Outgoing {
                        bytes: delivery_frames(
                            self.channel,
                            deliver,
                            &record,
                            self.frame_max,
                            self.counts_deliveries,
                            self.stream_next.is_some().then_some(record.offset),
                        ),
                        charge,
                    });
                    false
                };
                if halted {
                    self.out.refund(charge);
                    let mut rest: Vec<String> = records.map(|r| r.receipt).collect();
                    rest.push(record.receipt);
                    self.release(rest).await;
                    return;
                }
                self.metrics.delivered(redelivered);
                if self.no_ack {
                    let _ = self.settle.send(Settle::Ack(vec![record.receipt]));
                }
            }
        }
    }

    /// Up to `max` records of a stream queue from offset `next` (waiting up to
    /// RECEIVE_WAIT_MS for more when at the end); moves the consumer's offset past them.
    /// They carry no receipt: there is no lease to settle.
    async fn read_stream(
        &mut self,
        next: i64,
        max: usize,
    ) -> Result<Vec<ReceivedRecord>, BrokerError> {
        let Some(topic) = self.broker.topic(&self.topic) else {
            return Err(BrokerError::UnknownTopic(self.topic.to_string()));
        };
        let partition = topic.partition(0)?.clone();
        // This partition's appends only: an append anywhere else does not wake it.
        let mut changes = partition.high_watermark_changes();
        // Retention may have removed what the consumer was to read next.
        let mut from = next.max(partition.log_start_offset());
        if from >= partition.high_watermark() {
            let wait = tokio::time::sleep(std::time::Duration::from_millis(RECEIVE_WAIT_MS));
            tokio::pin!(wait);
            while from >= partition.high_watermark() {
                tokio::select! {
                    _ = &mut wait => break,
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = self.stop.wait_for(|stop| *stop) => break,
                }
                if self.broker.topic(&self.topic).is_none() {
                    return Err(BrokerError::UnknownTopic(self.topic.to_string()));
                }
                from = from.max(partition.log_start_offset());
            }
        }
        let read = match partition.records_from(
            from,
            partition.high_watermark(),
            max,
            STREAM_READ_BYTES,
            "amqp stream",
        ) {
            Ok(read) => read,
            Err(BrokerError::OffsetOutOfRange { log_start, .. }) => {
                self.stream_next = Some(log_start);
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        for skipped in &read.skipped {
            tracing::warn!(topic = %self.topic, first = skipped.first_offset, last = skipped.last_offset, "AMQP stream consumer stepped over a batch: {}", skipped.reason);
        }
        self.stream_next = Some(read.next.max(from));
        Ok(read
            .records
            .into_iter()
            .map(|r| ReceivedRecord {
                partition: 0,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                receipt: String::new(),
                delivery_count: 1,
            })
            .collect())
    }

    /// On a single-active-consumer queue, wait for this consumer's turn. False when
    /// it was stopped meanwhile.
    async fn wait_until_active(&mut self) -> bool {
        let slot = self.slot;
        let Some(active) = self.active.as_mut() else {
            return true;
        };
        tokio::select! {
            turn = active.wait_for(|id| *id == slot) => turn.is_ok(),
            _ = self.stop.wait_for(|stop| *stop) => false,
        }
    }

    async fn acquire_one(&mut self) -> Option<Vec<OwnedSemaphorePermit>> {
        let mut permits = Vec::with_capacity(self.windows.len());
        for window in &self.windows {
            let window = window.clone();
            tokio::select! {
                permit = window.acquire_owned() => permits.push(permit.ok()?),
                _ = self.stop.wait_for(|stop| *stop) => return None,
            }
        }
        Some(permits)
    }

    /// Add to `grants` the permits free right now, up to `max` grants.
    fn take_free(&self, grants: &mut Vec<Vec<OwnedSemaphorePermit>>, max: usize) {
        while grants.len() < max {
            match self.try_acquire() {
                Some(more) => grants.push(more),
                None => break,
            }
        }
    }

    fn try_acquire(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let mut permits = Vec::with_capacity(self.windows.len());
        for window in &self.windows {
            permits.push(window.clone().try_acquire_owned().ok()?);
        }
        Some(permits)
    }

    /// Give back records this consumer leased but never delivered (it was stopped,
    /// or its connection went): uncounted, so they are not flagged redelivered. Done
    /// before the task ends, so whoever reads the queue next finds them in order.
    async fn release(&self, receipts: Vec<String>) {
        for receipt in receipts.iter().filter(|r| !r.is_empty()) {
            if let Err(error) = self.broker.unlease(receipt).await {
                tracing::debug!(%error, "giving back an undelivered lease");
            }
        }
    }
}
