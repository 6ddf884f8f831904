//! Heads of streams whose latest appends are durable but not indexed yet.
//!
//! An append is answered once durable; the indexer writes its rows a little later.
//! Until it does, the next append to the stream must still check its expected
//! revision against the truth, so each append notes here the head it leaves (last
//! revision and position, tombstone, the last append for retries, and for a
//! `$$<stream>` append the metadata it gives the described stream), with the offset
//! after it. An entry is dropped once the indexer has passed that offset, so the map
//! holds at most the streams of the appends between the index and the log's end, which
//! `eventstore_index_lag_max` bounds (an append past it waits for the indexer).
//!
//! Exactness: an entry is written under the stream's lock (before the lock is let
//! go) and removed only after the index rows covering it are committed. A writer looks
//! here first, then at the index: if it finds no entry, every append to the stream is
//! in the index already; if it finds one, it is the stream's newest (the writer holds
//! the stream's lock, so no later append exists).
//!
//! Reads do not look here: they wait until the index covers the log's durable end
//! as it was when they began (`Broker::stream_index_settled`), which includes every
//! append answered before them.

use std::collections::HashMap;

use super::StreamMeta;
use super::index::Head;
use crate::Broker;
use crate::streams::{EVENTSTORE_TOPIC, StreamResult};

/// What an append leaves in one stream, noted before it is answered.
#[derive(Debug, Clone)]
pub(crate) enum Note {
    /// Events `first..first + count` of `stream`, the first with id `first_id`; for a
    /// `$$<stream>` append with a `$metadata` event, what it makes the described
    /// stream's metadata.
    Events {
        stream: String,
        first: u64,
        count: u32,
        first_id: [u8; 16],
        described_meta: Option<(String, StreamMeta)>,
    },
    /// A tombstone of `stream`, whose head was `last` / `last_append`.
    Tombstone {
        stream: String,
        last: Option<u64>,
        last_append: Option<(u64, u32, [u8; 16])>,
    },
}

/// A stream's head as its newest unindexed append left it (its metadata apart).
#[derive(Debug, Clone)]
struct Tail {
    last: Option<u64>,
    last_position: u64,
    tombstoned: bool,
    last_append: Option<(u64, u32, [u8; 16])>,
    /// The offset after the append: indexed past it, the entry goes.
    until: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Unindexed {
    tails: HashMap<String, Tail>,
    /// Described stream -> its metadata from the newest unindexed `$metadata` event.
    metas: HashMap<String, (StreamMeta, i64)>,
}

impl Unindexed {
    /// Drop what the index now holds (everything below `indexed`).
    pub(crate) fn forget_below(&mut self, indexed: i64) {
        self.tails.retain(|_, t| t.until > indexed);
        self.metas.retain(|_, (_, until)| *until > indexed);
    }

    /// Entries held, for tests and reports.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tails.len() + self.metas.len()
    }
}

impl Broker {
    fn unindexed(&self) -> std::sync::MutexGuard<'_, Unindexed> {
        self.eventstore
            .unindexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The head of `stream` for an append holding its lock: the index's, with what
    /// unindexed appends changed (read in that order; see the module doc).
    pub(crate) fn write_head(&self, stream: &str) -> StreamResult<Head> {
        let (tail, meta) = {
            let u = self.unindexed();
            (u.tails.get(stream).cloned(), u.metas.get(stream).cloned())
        };
        let mut head = self.stream_head(stream)?;
        if let Some(t) = tail {
            head.last = t.last;
            head.last_position = t.last_position;
            head.tombstoned = t.tombstoned;
            head.last_append = t.last_append;
        }
        if let Some((meta, _)) = meta {
            head.meta = meta;
        }
        Ok(head)
    }

    /// Note the heads an append written at `base_offset` leaves (one note per record,
    /// in the batch's order, an `Events` note covering its events' records).
    pub(crate) fn note_unindexed(&self, base_offset: i64, notes: Vec<Note>) {
        let indexed = *self.eventstore.indexed.borrow();
        let mut u = self.unindexed();
        let mut offset = base_offset;
        for note in notes {
            match note {
                Note::Events {
                    stream,
                    first,
                    count,
                    first_id,
                    described_meta,
                } => {
                    offset += i64::from(count);
                    let tail = Tail {
                        last: Some(first + u64::from(count) - 1),
                        last_position: offset as u64,
                        tombstoned: false,
                        last_append: Some((first, count, first_id)),
                        until: offset,
                    };
                    u.tails.insert(stream, tail);
                    if let Some((described, meta)) = described_meta {
                        u.metas.insert(described, (meta, offset));
                    }
                }
                Note::Tombstone {
                    stream,
                    last,
                    last_append,
                } => {
                    offset += 1;
                    let tail = Tail {
                        last,
                        last_position: offset as u64,
                        tombstoned: true,
                        last_append,
                        until: offset,
                    };
                    u.tails.insert(stream, tail);
                }
            }
        }
        // The indexer forgets entries after each pass; one noted after the pass that
        // covered it would otherwise stay until the next.
        u.forget_below(indexed);
    }

    /// Wait until the index holds every append to `stream` noted so far (the caller
    /// holds the stream's lock, so none is added meanwhile).
    pub(crate) async fn settle_stream(&self, stream: &str) -> StreamResult<()> {
        let until = self.unindexed().tails.get(stream).map(|t| t.until);
        if let Some(until) = until {
            self.wait_indexed(until).await?;
        }
        Ok(())
    }

    /// Back-pressure: an append answered while the index is more than
    /// `eventstore_index_lag_max` events behind it waits for the indexer, so the
    /// unindexed heads, and how long a read may wait for the index, stay bounded.
    pub(crate) async fn keep_index_near(&self, end: i64) -> StreamResult<()> {
        let lag_max = i64::try_from(self.config.eventstore_index_lag_max).unwrap_or(i64::MAX);
        if end - *self.eventstore.indexed.borrow() > lag_max {
            self.wait_indexed(end - lag_max).await?;
        }
        Ok(())
    }

    /// Wait until the index covers the event store log's durable end as it is now, so
    /// a read that follows sees every append answered before it; returns the offset
    /// below which the log is indexed. Every read of the index goes through here.
    pub async fn stream_index_settled(&self) -> StreamResult<i64> {
        if let Some(topic) = self.topic(EVENTSTORE_TOPIC) {
            self.start_indexer();
            let end = topic.partition(0)?.high_watermark();
            self.wait_indexed(end).await?;
        }
        Ok(*self.eventstore.indexed.borrow())
    }
}
