//! The indexer: one task per broker that reads the event store topic behind the
//! appends, in offset order, and writes each stream's head and revisions, and the
//! system streams, to the meta store (see the module doc of `streams`).

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use herald_meta::StreamIndexWrite;
use kafka_protocol::records::Record;
use serde::{Deserialize, Serialize};

use super::{
    DELETED_TRUNCATE_BEFORE, EVENTSTORE_TOPIC, METADATA_HEADER, METADATA_TYPE, REVISION_HEADER,
    StreamError, StreamMeta, StreamResult, TOMBSTONE_TYPE, TYPE_HEADER, category, described_stream,
};
use crate::Broker;
use crate::error::{BrokerError, Result};
use crate::partition::Partition;
use crate::records::StoredBatch;

/// Bytes read from the log per step while indexing.
const INDEX_READ_BYTES: usize = 1 << 20;
/// Most events indexed in one meta store transaction.
const INDEX_EVENTS_PER_WRITE: usize = 20_000;
/// How often the index is made durable (its writes do not fsync; see the module doc).
const INDEX_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What the index keeps per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Head {
    /// Revision of the last event; None before the first.
    pub last: Option<u64>,
    /// Position of the last record that changed the stream (event or tombstone).
    pub last_position: u64,
    pub tombstoned: bool,
    /// From the stream's `$$<stream>` metadata stream.
    pub meta: StreamMeta,
    /// (first revision, events, first event id) of the last append, for retries.
    pub last_append: Option<(u64, u32, [u8; 16])>,
}

const HEAD_POSTCARD_V1: u8 = 1;

fn encode_head(head: &Head) -> Result<Vec<u8>> {
    postcard::to_extend(head, vec![HEAD_POSTCARD_V1])
        .map_err(|e| BrokerError::Storage(format!("cannot encode a stream head: {e}")))
}

fn decode_head(bytes: &[u8]) -> Result<Head> {
    match bytes.split_first() {
        Some((&HEAD_POSTCARD_V1, rest)) => postcard::from_bytes(rest)
            .map_err(|e| BrokerError::Storage(format!("stream head: {e}"))),
        _ => Err(BrokerError::Storage("stream head: unknown format".into())),
    }
}

impl Broker {
    /// The indexed head of a stream (default: no events).
    pub(crate) fn stream_head(&self, stream: &str) -> StreamResult<Head> {
        match self.meta.stream_head(stream).map_err(meta_error)? {
            Some(bytes) => Ok(decode_head(&bytes)?),
            None => Ok(Head::default()),
        }
    }

    /// Start the indexer once the event store topic exists (at start-up, or when the
    /// first append creates it): first it indexes what the log holds past the stored
    /// mark.
    pub(crate) fn start_indexer(&self) {
        use std::sync::atomic::Ordering;
        if self.eventstore.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.eventstore.me.get().cloned() else {
            self.eventstore.started.store(false, Ordering::SeqCst);
            return;
        };
        tokio::spawn(run(me));
    }

    /// At start-up, before anything is served: index what the log holds past the
    /// stored mark (after a crash, what the index had not made durable), then start
    /// the indexer.
    pub(crate) fn recover_stream_index(&self) -> Result<()> {
        let Some(topic) = self.topic(EVENTSTORE_TOPIC) else {
            return Ok(());
        };
        let partition = topic.partition(0)?;
        let started = Instant::now();
        let mut from = self.index_start(partition)?;
        let first = from;
        let hw = partition.high_watermark();
        while from < hw {
            let to = self.index_range(partition, from, hw)?;
            if to == from {
                break;
            }
            from = to;
        }
        if from > first {
            self.meta.sync().map_err(meta_error)?;
            tracing::info!(
                from = first,
                to = from,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "indexed the event store's log past the stored mark"
            );
        }
        self.eventstore.indexed.send_replace(from);
        self.eventstore
            .recovered
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.start_indexer();
        Ok(())
    }

    /// Where indexing starts: the stored mark, checked against the log. A mark past the
    /// log's end (the log lost records the index had: a disk fault) rebuilds the index.
    fn index_start(&self, partition: &Partition) -> Result<i64> {
        let end = partition.high_watermark();
        let start = partition.log_start_offset();
        let mark = self.meta.stream_indexed_to().map_err(meta_error)?;
        Ok(match mark {
            Some(m) if m > end => {
                tracing::warn!(
                    mark = m,
                    log_end = end,
                    "the event store index is ahead of its log; rebuilding it from the log"
                );
                self.meta.clear_stream_index().map_err(meta_error)?;
                start
            }
            Some(m) => m.max(start),
            None => start,
        })
    }

    /// Index `[from, to)` of the log; returns where it got to.
    fn index_range(&self, partition: &Partition, from: i64, to: i64) -> Result<i64> {
        let mut batch = Pending::default();
        let mut next = from;
        while next < to && batch.events.len() < INDEX_EVENTS_PER_WRITE {
            let read = partition.read(next, INDEX_READ_BYTES)?;
            if read.records.is_empty() {
                break;
            }
            let before = next;
            for stored in partition.stored_batches(read.records, "event store index") {
                let decoded = match stored? {
                    StoredBatch::Oversized { header, .. } => {
                        next = next.max(header.last_offset() + 1);
                        continue;
                    }
                    StoredBatch::Decoded(d) => d,
                };
                let mut previous: Option<(String, u64)> = None;
                for view in decoded.records() {
                    let view = view?;
                    if view.offset < next || view.offset >= to {
                        continue;
                    }
                    let record = decoded.record(&view)?;
                    previous = self.index_record(&mut batch, &record, previous)?;
                    next = view.offset + 1;
                }
                next = next.max((decoded.header.last_offset() + 1).min(to));
            }
            if next == before {
                break;
            }
        }
        if next > from {
            let write = batch.into_write(next)?;
            self.meta
                .put_stream_index(&write, false)
                .map_err(meta_error)?;
        }
        Ok(next)
    }

    /// Index one record. `previous` is the (stream, revision) of the record before it
    /// in the same batch (one append), for the stream's last append.
    fn index_record(
        &self,
        pending: &mut Pending,
        record: &Record,
        previous: Option<(String, u64)>,
    ) -> Result<Option<(String, u64)>> {
        let offset = record.offset;
        let Some(stream) = record
            .key
            .as_ref()
            .and_then(|k| std::str::from_utf8(k).ok())
        else {
            return Ok(None);
        };
        let Some(revision) =
            header_str(record, REVISION_HEADER).and_then(|r| r.parse::<u64>().ok())
        else {
            return Ok(None);
        };
        let event_type = header_str(record, TYPE_HEADER).unwrap_or_default();
        let head = pending.head(self, stream)?;
        if head.tombstoned {
            return Ok(None);
        }
        if revision == DELETED_TRUNCATE_BEFORE && event_type == TOMBSTONE_TYPE {
            head.tombstoned = true;
            head.last_position = offset as u64 + 1;
            return Ok(None);
        }
        let expected = head.last.map_or(0, |l| l + 1);
        if revision != expected {
            tracing::warn!(
                stream,
                revision,
                expected,
                offset,
                "a record of the event store topic out of its stream's order (not written by the event store?): not indexed"
            );
            return Ok(None);
        }
        head.last = Some(revision);
        head.last_position = offset as u64 + 1;
        let id = header_str(record, super::ID_HEADER)
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .unwrap_or_default();
        head.last_append = match (&previous, head.last_append) {
            (Some((s, r)), Some((first, count, first_id))) if s == stream && *r + 1 == revision => {
                Some((first, count + 1, first_id))
            }
            _ => Some((revision, 1, *id.as_bytes())),
        };
        pending.events.push((stream.to_string(), revision, offset));
        if let Some(described) = described_stream(stream)
            && event_type == METADATA_TYPE
        {
            let meta = StreamMeta::parse(record.value.as_deref().unwrap_or_default());
            pending.head(self, described)?.meta = meta;
        }
        if !stream.starts_with('$') {
            if let Some(c) = category(stream) {
                pending.link(self, &format!("$ce-{c}"), offset)?;
            }
            if !event_type.is_empty() {
                pending.link(self, &format!("$et-{event_type}"), offset)?;
            }
            for id in correlation_ids(record) {
                pending.link(self, &format!("$bc-{id}"), offset)?;
            }
            if revision == 0 {
                pending.link(self, "$streams", offset)?;
            }
        }
        Ok(Some((stream.to_string(), revision)))
    }
}

/// What one index write gathers: heads as they now are, and new events.
#[derive(Default)]
struct Pending {
    heads: HashMap<String, Head>,
    events: Vec<(String, u64, i64)>,
}

impl Pending {
    fn head(&mut self, broker: &Broker, stream: &str) -> Result<&mut Head> {
        if !self.heads.contains_key(stream) {
            let head = broker.stream_head(stream).map_err(|e| match e {
                StreamError::Broker(b) => b,
                other => BrokerError::Storage(other.to_string()),
            })?;
            self.heads.insert(stream.to_string(), head);
        }
        self.heads
            .get_mut(stream)
            .ok_or_else(|| BrokerError::Storage("stream head vanished".into()))
    }

    /// Add the event at `offset` to system stream `name`.
    fn link(&mut self, broker: &Broker, name: &str, offset: i64) -> Result<()> {
        let head = self.head(broker, name)?;
        let seq = head.last.map_or(0, |l| l + 1);
        head.last = Some(seq);
        head.last_position = offset as u64 + 1;
        self.events.push((name.to_string(), seq, offset));
        Ok(())
    }

    fn into_write(self, indexed_to: i64) -> Result<StreamIndexWrite> {
        let mut heads = Vec::with_capacity(self.heads.len());
        for (name, head) in self.heads {
            heads.push((name, encode_head(&head)?));
        }
        Ok(StreamIndexWrite {
            heads,
            events: self.events,
            indexed_to,
        })
    }
}

/// The correlation ids an event is linked under in `$bc-`: its metadata's
/// `$correlationId`, and the trace id of a W3C `traceparent` there.
fn correlation_ids(record: &Record) -> Vec<String> {
    let Some(meta) = header_bytes(record, METADATA_HEADER) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(meta) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(id) = map.get("$correlationId").and_then(|v| v.as_str())
        && !id.is_empty()
    {
        out.push(id.to_string());
    }
    if let Some(trace) = map
        .get("traceparent")
        .and_then(|v| v.as_str())
        .and_then(|t| t.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        && !out.iter().any(|o| o == trace)
    {
        out.push(trace.to_string());
    }
    out
}

pub(crate) fn header_bytes<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(k, _)| &***k == name)
        .and_then(|(_, v)| v.as_deref())
}

pub(crate) fn header_str<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    header_bytes(record, name).and_then(|b| std::str::from_utf8(b).ok())
}

fn meta_error(e: herald_meta::MetaError) -> BrokerError {
    BrokerError::Storage(e.to_string())
}

/// The indexer task: index what is past the mark, then follow the log.
async fn run(broker: Weak<Broker>) {
    let mut data = match broker.upgrade() {
        Some(b) => b.data_changes(),
        None => return,
    };
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut started = false;
    loop {
        let Some(b) = broker.upgrade() else { return };
        #[cfg(test)]
        if b.eventstore
            .indexer_paused
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            drop(b);
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let Some(topic) = b.topic(EVENTSTORE_TOPIC) else {
            b.eventstore
                .started
                .store(false, std::sync::atomic::Ordering::SeqCst);
            return;
        };
        let step = {
            let b = b.clone();
            let topic = topic.clone();
            let sync = unsynced && last_sync.elapsed() >= INDEX_SYNC_INTERVAL;
            tokio::task::spawn_blocking(move || -> Result<(bool, bool)> {
                let partition = topic.partition(0)?;
                let mut from = *b.eventstore.indexed.borrow();
                if !started
                    && !b
                        .eventstore
                        .recovered
                        .swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    // A topic created since start-up: its first index pass.
                    from = b.index_start(partition)?;
                    b.eventstore.indexed.send_replace(from);
                }
                let hw = partition.high_watermark();
                let mut moved = false;
                if from < hw {
                    let to = b.index_range(partition, from, hw)?;
                    if to > from {
                        b.eventstore.indexed.send_replace(to);
                        b.eventstore
                            .unindexed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .forget_below(to);
                        moved = true;
                    }
                }
                if sync {
                    b.meta.sync().map_err(meta_error)?;
                }
                Ok((moved, sync))
            })
            .await
        };
        started = true;
        match step {
            Ok(Ok((moved, synced))) => {
                if synced {
                    last_sync = Instant::now();
                    unsynced = false;
                }
                if moved {
                    unsynced = true;
                    continue;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "event store index pass failed; retrying");
                drop(b);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => return,
        }
        drop(topic);
        drop(b);
        let _ = tokio::time::timeout(Duration::from_millis(200), data.changed()).await;
    }
}
