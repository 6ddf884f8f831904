//! The event store: named streams of events with optimistic concurrency, on the log.
//!
//! Every event is a record of one topic with one partition, [`EVENTSTORE_TOPIC`], so
//! `$all` is that partition in offset order and an event's position is its offset + 1
//! (0 never names an event: it is "the start"). The record's key is the stream name,
//! its value the event data, and headers carry the event's id, type, content type,
//! custom metadata and revision in its stream, so the log alone says what every stream
//! holds. Kafka consumers read the topic like any other; records written there by
//! other protocols are not events (they have no revision) and are stepped over.
//!
//! The index (`index.rs`: stream -> head, (stream, revision) -> offset, and the system
//! streams `$ce-`, `$et-`, `$bc-`, `$streams`) is built by one task that reads the log
//! behind the appends, in offset order, and writes the meta store without an fsync of
//! its own. An append is answered once its events are durable in the log, before they
//! are indexed: until the indexer passes them, the heads they leave (`unindexed.rs`)
//! answer the next append's expected-revision check, and every read first waits until
//! the index covers the log's durable end as it was when the read began, so a read
//! sees every append answered before it. At start-up the same task indexes whatever
//! the log holds past the mark the meta store kept, so after a crash index and log
//! agree again before anything is served.
//!
//! Appends to one stream are serialised by that stream's lock (held from the
//! expected-revision check until the append is durable and its head is noted, so the
//! next append to the stream sees it); appends to different streams never wait for
//! each other's lock and share fsyncs through the log's group commit.

mod index;
pub mod persistent;
mod read;
mod unindexed;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::BrokerError;
use crate::{Broker, Principal, now_ms};
pub use read::{AllFilter, AllRead, FilterOn, ReadEvent, ReadFrom, StreamRead, is_system_stream};

/// The topic every event is a record of.
pub const EVENTSTORE_TOPIC: &str = "eventstore";
/// Longest stream name, in bytes (KurrentDB does not bound it; a name is a key in
/// every index row, so Herald does).
pub const STREAM_NAME_BYTES_MAX: usize = 1_024;
/// Most events one append may carry.
pub const APPEND_EVENTS_MAX: usize = 10_000;
/// The event type of a tombstone, as KurrentDB names it.
pub const TOMBSTONE_TYPE: &str = "$streamDeleted";
/// The event type of a stream metadata event (in `$$<stream>`).
pub const METADATA_TYPE: &str = "$metadata";
/// The event type of a link event (system streams hold links to events).
pub const LINK_TYPE: &str = "$>";
/// `$tb` of a soft-deleted stream, until its next append.
pub const DELETED_TRUNCATE_BEFORE: u64 = i64::MAX as u64;

/// Record headers of an event.
pub const ID_HEADER: &str = "es-id";
pub const TYPE_HEADER: &str = "es-type";
pub const CONTENT_TYPE_HEADER: &str = "es-content-type";
pub const METADATA_HEADER: &str = "es-metadata";
pub const REVISION_HEADER: &str = "es-revision";

/// What an append expects of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Any,
    NoStream,
    StreamExists,
    Revision(u64),
}

impl Expected {
    /// KurrentDB's number for it (as its error messages give it).
    pub fn as_number(self) -> i64 {
        match self {
            Expected::Any => -2,
            Expected::NoStream => -1,
            Expected::StreamExists => -4,
            Expected::Revision(r) => r as i64,
        }
    }
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: uuid::Uuid,
    pub event_type: String,
    pub content_type: String,
    pub custom_metadata: Bytes,
    pub data: Bytes,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: String,
    pub revision: u64,
    /// Offset + 1 in the event store topic (commit and prepare position alike).
    pub position: u64,
    pub id: uuid::Uuid,
    pub event_type: String,
    pub content_type: String,
    pub custom_metadata: Bytes,
    pub data: Bytes,
    pub created_ms: i64,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's revision after it (its last event's).
    pub current_revision: u64,
    /// Its last event's position.
    pub position: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "WrongExpectedVersion. Stream: {stream}, Expected version: {}, Actual version: {}",
        expected.as_number(),
        current.map_or(-1, |c| c as i64)
    )]
    WrongExpectedVersion {
        stream: String,
        expected: Expected,
        /// None: the stream has no events.
        current: Option<u64>,
    },
    #[error("Event stream '{0}' is deleted.")]
    Deleted(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("append of {bytes} bytes is over the most one append may carry ({max})")]
    TooLarge { bytes: usize, max: usize },
    #[error("Subscription group {group} on stream {stream} exists.")]
    SubscriptionExists { stream: String, group: String },
    #[error("Subscription group '{group}' on stream '{stream}' does not exist.")]
    SubscriptionNotFound { stream: String, group: String },
    #[error("Maximum subscriptions reached on {stream}::{group}.")]
    MaximumSubscribers { stream: String, group: String },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub type StreamResult<T> = std::result::Result<T, StreamError>;

/// A stream's metadata as KurrentDB defines it (`$$<stream>`'s last `$metadata`
/// event); what reads enforce.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub max_count: Option<u64>,
    pub max_age_s: Option<u64>,
    pub truncate_before: Option<u64>,
}

impl StreamMeta {
    /// Read from a `$metadata` event's JSON; fields of the wrong type are ignored, as
    /// KurrentDB ignores them.
    pub fn parse(data: &[u8]) -> StreamMeta {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(data) else {
            return StreamMeta::default();
        };
        let number = |k: &str| map.get(k).and_then(serde_json::Value::as_u64);
        StreamMeta {
            max_count: number("$maxCount"),
            max_age_s: number("$maxAge"),
            truncate_before: number("$tb"),
        }
    }

    pub fn soft_deleted(&self) -> bool {
        self.truncate_before == Some(DELETED_TRUNCATE_BEFORE)
    }
}

/// Default of `eventstore_index_lag_max`: about one index write's worth of events
/// (a read waits at most that long for the index).
pub const INDEX_LAG_EVENTS_MAX_DEFAULT: u64 = 20_000;

/// The event store's shared state: per-stream locks and the indexer's progress.
pub(crate) struct EventStore {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Heads left by durable appends the indexer has not passed yet.
    unindexed: Mutex<unindexed::Unindexed>,
    /// The offset below which the log is indexed (the indexer's progress).
    indexed: watch::Sender<i64>,
    /// The indexer task is running (it starts with the event store topic).
    started: std::sync::atomic::AtomicBool,
    /// Serialises creating the topic.
    create: Mutex<()>,
    /// The start-up index pass ran (or there was nothing to recover).
    recovered: std::sync::atomic::AtomicBool,
    /// The broker, for the indexer task it starts.
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<Broker>>,
    /// Persistent subscriptions with consumers (or that had some), by (source, group).
    persistent: Mutex<HashMap<(String, String), Arc<persistent::Hub>>>,
    /// Serialises create, update and delete of persistent subscriptions.
    persistent_admin: tokio::sync::Mutex<()>,
    /// Tests hold the indexer back with this, to see appends answered before it ran.
    #[cfg(test)]
    pub(crate) indexer_paused: std::sync::atomic::AtomicBool,
}

impl EventStore {
    pub(crate) fn new() -> EventStore {
        EventStore {
            locks: Mutex::new(HashMap::new()),
            unindexed: Mutex::new(unindexed::Unindexed::default()),
            indexed: watch::Sender::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
            create: Mutex::new(()),
            recovered: std::sync::atomic::AtomicBool::new(false),
            me: std::sync::OnceLock::new(),
            persistent: Mutex::new(HashMap::new()),
            persistent_admin: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            indexer_paused: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Check a stream name a client gave.
pub fn check_stream_name(name: &str) -> StreamResult<()> {
    if name.is_empty() {
        return Err(StreamError::BadRequest("the stream name is empty".into()));
    }
    if name.len() > STREAM_NAME_BYTES_MAX {
        return Err(StreamError::BadRequest(format!(
            "stream name of {} bytes is over the longest Herald takes ({STREAM_NAME_BYTES_MAX})",
            name.len()
        )));
    }
    Ok(())
}

/// The category of a stream (the part before the first `-`), if it has one.
pub fn category(stream: &str) -> Option<&str> {
    stream
        .split_once('-')
        .map(|(c, _)| c)
        .filter(|c| !c.is_empty())
}

/// The stream a `$$<stream>` metadata stream describes.
pub fn described_stream(stream: &str) -> Option<&str> {
    stream.strip_prefix("$$").filter(|s| !s.is_empty())
}

impl Broker {
    /// Append `events` to `stream` if it is as `expected`. Answered once the events are
    /// durable (reads that start after the answer see them). A retry of an append that
    /// succeeded (the same event ids where the first put them) succeeds again without
    /// a second copy.
    pub async fn stream_append(
        &self,
        _who: &Principal,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> StreamResult<Appended> {
        check_stream_name(stream)?;
        if stream.starts_with('$') && described_stream(stream).is_none() {
            return Err(StreamError::BadRequest(format!(
                "'{stream}' is a system stream: Herald writes it"
            )));
        }
        self.append_events(stream, expected, events).await
    }

    /// [`Broker::stream_append`] to any stream, system streams Herald writes itself
    /// (a persistent subscription's parked stream) included.
    pub(crate) async fn append_events(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> StreamResult<Appended> {
        check_stream_name(stream)?;
        if events.len() > APPEND_EVENTS_MAX {
            return Err(StreamError::BadRequest(format!(
                "{} events in one append; at most {APPEND_EVENTS_MAX}",
                events.len()
            )));
        }
        let topic = self.eventstore_topic()?;
        let lock = self.stream_lock(stream);
        let guard = lock.lock().await;
        let head = self.write_head(stream)?;
        if head.tombstoned {
            return Err(StreamError::Deleted(stream.to_string()));
        }
        let current = head.last;
        if let Some(done) = self
            .already_appended(stream, &head, expected, &events)
            .await?
        {
            return Ok(done);
        }
        let matches = match expected {
            Expected::Any => true,
            Expected::NoStream => current.is_none() || head.meta.soft_deleted(),
            Expected::StreamExists => current.is_some() && !head.meta.soft_deleted(),
            Expected::Revision(r) => current == Some(r),
        };
        if !matches {
            return Err(StreamError::WrongExpectedVersion {
                stream: stream.to_string(),
                expected,
                current,
            });
        }
        if events.is_empty() {
            // Nothing to write: the stream is as expected.
            return Ok(Appended {
                current_revision: current.unwrap_or(0),
                position: head.last_position,
            });
        }
        let now = now_ms();
        let first = current.map_or(0, |c| c + 1);
        let mut records = Vec::with_capacity(events.len() + 1);
        let mut notes = Vec::with_capacity(2);
        let mut _meta_guard = None;
        if head.meta.soft_deleted() {
            // Undelete: the stream shows the events from this append on.
            let (guard, record, note) = self.truncate_before_record(stream, first, now).await?;
            _meta_guard = Some(guard);
            records.push(record);
            notes.push(note);
        }
        for (i, e) in events.iter().enumerate() {
            records.push(event_record(stream, first + i as u64, e, now));
        }
        let count = records.len() as i64;
        let batch = encode_one_batch(records)?;
        let max = topic.max_message_bytes();
        if batch.len() > max {
            return Err(StreamError::TooLarge {
                bytes: batch.len(),
                max,
            });
        }
        // What the described stream's metadata becomes (the last `$metadata` event of
        // an append to `$$<stream>`), as the indexer will read it.
        let described_meta = described_stream(stream).and_then(|d| {
            events
                .iter()
                .rev()
                .find(|e| e.event_type == METADATA_TYPE)
                .map(|e| (d.to_string(), StreamMeta::parse(&e.data)))
        });
        notes.push(unindexed::Note::Events {
            stream: stream.to_string(),
            first,
            count: events.len() as u32,
            first_id: *events[0].id.as_bytes(),
            described_meta,
        });
        let append = topic.append(0, &batch, now)?;
        let last_offset = append.base_offset + count - 1;
        self.note_unindexed(append.base_offset, notes);
        append.durable().await?;
        self.keep_index_near(last_offset + 1).await?;
        drop(guard);
        Ok(Appended {
            current_revision: first + events.len() as u64 - 1,
            position: last_offset as u64 + 1,
        })
    }

    /// Soft delete (`tombstone` false: the stream reads as missing until its next
    /// append, which continues its revisions) or tombstone (never written or read
    /// again). Returns the position of the record that did it.
    pub async fn stream_delete(
        &self,
        _who: &Principal,
        stream: &str,
        expected: Expected,
        tombstone: bool,
    ) -> StreamResult<u64> {
        check_stream_name(stream)?;
        if stream.starts_with('$') {
            return Err(StreamError::BadRequest(format!(
                "'{stream}' is a system stream: it cannot be deleted"
            )));
        }
        let topic = self.eventstore_topic()?;
        let lock = self.stream_lock(stream);
        let guard = lock.lock().await;
        let head = self.write_head(stream)?;
        if head.tombstoned || (head.meta.soft_deleted() && expected == Expected::StreamExists) {
            return Err(StreamError::Deleted(stream.to_string()));
        }
        // As KurrentDB: a stream that never had events cannot be deleted expecting
        // anything but `any` (not even "no stream").
        let matches = match expected {
            Expected::Any => true,
            Expected::NoStream => false,
            Expected::StreamExists => head.last.is_some(),
            Expected::Revision(r) => head.last == Some(r),
        };
        if !matches {
            return Err(StreamError::WrongExpectedVersion {
                stream: stream.to_string(),
                expected,
                current: head.last,
            });
        }
        let now = now_ms();
        let mut _meta_guard = None;
        let (record, note) = if tombstone {
            let record = event_record(
                stream,
                DELETED_TRUNCATE_BEFORE,
                &NewEvent {
                    id: uuid::Uuid::new_v4(),
                    event_type: TOMBSTONE_TYPE.into(),
                    content_type: "application/octet-stream".into(),
                    custom_metadata: Bytes::new(),
                    data: Bytes::new(),
                },
                now,
            );
            let note = unindexed::Note::Tombstone {
                stream: stream.to_string(),
                last: head.last,
                last_append: head.last_append,
            };
            (record, note)
        } else {
            let (guard, record, note) = self
                .truncate_before_record(stream, DELETED_TRUNCATE_BEFORE, now)
                .await?;
            _meta_guard = Some(guard);
            (record, note)
        };
        let batch = encode_one_batch(vec![record])?;
        let append = topic.append(0, &batch, now)?;
        let offset = append.base_offset;
        self.note_unindexed(offset, vec![note]);
        append.durable().await?;
        self.keep_index_near(offset + 1).await?;
        drop(guard);
        Ok(offset as u64 + 1)
    }

    /// A `$metadata` event for `$$<stream>` that sets its `$tb` and keeps the rest of
    /// its metadata, with that metadata stream's lock: hold it until the record is
    /// durable and noted, so no append to `$$<stream>` takes the same revision. (Locks
    /// are always taken stream first, then its metadata stream.)
    async fn truncate_before_record(
        &self,
        stream: &str,
        truncate_before: u64,
        now: i64,
    ) -> StreamResult<(tokio::sync::OwnedMutexGuard<()>, Record, unindexed::Note)> {
        let meta_stream = format!("$${stream}");
        let guard = self.stream_lock(&meta_stream).lock_owned().await;
        // The metadata is read from the index: wait for it to hold the metadata
        // stream's last append (rare: metadata changes seldom).
        self.settle_stream(&meta_stream).await?;
        let mut meta = self.stream_metadata_json(stream)?;
        meta.insert("$tb".into(), serde_json::Value::from(truncate_before));
        let revision = self.stream_head(&meta_stream)?.last.map_or(0, |c| c + 1);
        let data = Bytes::from(serde_json::Value::Object(meta).to_string());
        let id = uuid::Uuid::new_v4();
        let note = unindexed::Note::Events {
            stream: meta_stream.clone(),
            first: revision,
            count: 1,
            first_id: *id.as_bytes(),
            described_meta: Some((stream.to_string(), StreamMeta::parse(&data))),
        };
        let record = event_record(
            &meta_stream,
            revision,
            &NewEvent {
                id,
                event_type: METADATA_TYPE.into(),
                content_type: "application/json".into(),
                custom_metadata: Bytes::new(),
                data,
            },
            now,
        );
        Ok((guard, record, note))
    }

    /// Set `stream`'s `$tb` (keeping the rest of its metadata), durably.
    pub(crate) async fn set_truncate_before(
        &self,
        stream: &str,
        truncate_before: u64,
    ) -> StreamResult<()> {
        let topic = self.eventstore_topic()?;
        let now = now_ms();
        let (guard, record, note) = self
            .truncate_before_record(stream, truncate_before, now)
            .await?;
        let append = topic.append(0, &encode_one_batch(vec![record])?, now)?;
        let offset = append.base_offset;
        self.note_unindexed(offset, vec![note]);
        append.durable().await?;
        self.keep_index_near(offset + 1).await?;
        drop(guard);
        Ok(())
    }

    /// The stream's current metadata as JSON (an empty object if it has none).
    fn stream_metadata_json(
        &self,
        stream: &str,
    ) -> StreamResult<serde_json::Map<String, serde_json::Value>> {
        let meta_stream = format!("$${stream}");
        let read = self.read_stream_events(&meta_stream, ReadFrom::End, false, 1)?;
        Ok(read
            .first()
            .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.data).ok())
            .and_then(|v| match v {
                serde_json::Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// The appended result if `events` were already appended by an earlier call
    /// (same ids where that call put them), else None.
    async fn already_appended(
        &self,
        stream: &str,
        head: &index::Head,
        expected: Expected,
        events: &[NewEvent],
    ) -> StreamResult<Option<Appended>> {
        let Some(first_new) = events.first() else {
            return Ok(None);
        };
        let first = match expected {
            Expected::Revision(r) => r + 1,
            Expected::NoStream => 0,
            // With `any` (or stream_exists), only a repeat of the last append is known.
            Expected::Any | Expected::StreamExists => match head.last_append {
                Some((first, count, id))
                    if id == *first_new.id.as_bytes() && count as usize == events.len() =>
                {
                    first
                }
                _ => return Ok(None),
            },
        };
        let Some(last) = head.last else {
            return Ok(None);
        };
        let end = first + events.len() as u64 - 1;
        if end > last {
            return Ok(None);
        }
        // The stored events are read from the index: wait for it to hold this
        // stream's appends (only retries get here).
        self.settle_stream(stream).await?;
        let stored =
            self.read_stream_events(stream, ReadFrom::Revision(first), true, events.len() as u64)?;
        if stored.len() != events.len() || stored.iter().zip(events).any(|(s, e)| s.id != e.id) {
            return Ok(None);
        }
        let position = stored.last().map_or(0, |e| e.position);
        Ok(Some(Appended {
            current_revision: end,
            position,
        }))
    }

    fn stream_lock(&self, stream: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .eventstore
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Forget locks nobody holds or waits for, so the map stays the size of the
        // appends in flight, not of the streams ever written.
        if locks.len() > 1_024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(stream.to_string()).or_default().clone()
    }

    /// The event store topic, created (one partition, kept forever) on first use.
    pub(crate) fn eventstore_topic(&self) -> StreamResult<Arc<crate::Topic>> {
        if let Some(t) = self.topic(EVENTSTORE_TOPIC) {
            self.start_indexer();
            return Ok(t);
        }
        let _creating = self
            .eventstore
            .create
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let topic = match self.topic(EVENTSTORE_TOPIC) {
            Some(t) => t,
            None => self.create_topic(
                EVENTSTORE_TOPIC,
                Some(1),
                [
                    ("retention.ms".to_string(), "-1".to_string()),
                    ("retention.bytes".to_string(), "-1".to_string()),
                    ("cleanup.policy".to_string(), "delete".to_string()),
                ]
                .into(),
                false,
            )?,
        };
        self.start_indexer();
        Ok(topic)
    }

    /// Wait until the log is indexed up to `offset` (exclusive).
    pub(crate) async fn wait_indexed(&self, offset: i64) -> StreamResult<()> {
        let mut rx = self.eventstore.indexed.subscribe();
        rx.wait_for(|i| *i >= offset)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        Ok(())
    }

    /// The log offset below which every event is indexed, and a watch of it.
    pub fn stream_index_progress(&self) -> watch::Receiver<i64> {
        self.eventstore.indexed.subscribe()
    }
}

/// Encode an append's records as ONE record batch, so the log stores it whole or not
/// at all (a torn write loses the whole batch at recovery, never part of an append).
/// Sequences follow the offsets, which keeps the encoder from starting a new batch.
fn encode_one_batch(records: Vec<Record>) -> StreamResult<Vec<u8>> {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| Record {
            offset: i as i64,
            sequence: i as i32,
            ..r
        })
        .collect();
    herald_records::encode_records(&records, herald_records::Compression::None)
        .map(|b| b.to_vec())
        .map_err(|e| StreamError::BadRequest(format!("cannot encode the events: {e}")))
}

fn event_record(stream: &str, revision: u64, e: &NewEvent, now: i64) -> Record {
    let mut headers = kafka_protocol::indexmap::IndexMap::new();
    let mut put = |k: &'static str, v: Bytes| {
        headers.insert(StrBytes::from_static_str(k), Some(v));
    };
    put(ID_HEADER, Bytes::from(e.id.hyphenated().to_string()));
    put(TYPE_HEADER, Bytes::from(e.event_type.clone()));
    put(CONTENT_TYPE_HEADER, Bytes::from(e.content_type.clone()));
    if !e.custom_metadata.is_empty() {
        put(METADATA_HEADER, e.custom_metadata.clone());
    }
    put(REVISION_HEADER, Bytes::from(revision.to_string()));
    Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now,
        key: Some(Bytes::from(stream.to_string())),
        value: Some(e.data.clone()),
        headers,
        delete_horizon: false,
    }
}

#[cfg(test)]
mod tests;
