//! The event store's indexes: for every stream (user streams, their `$$` metadata
//! streams and the system streams `$ce-`, `$et-`, `$bc-`, `$streams`), its head and
//! the log offset of each revision. The log is the truth: every event record carries
//! its stream and revision, so the broker can rebuild any of this from the log. It
//! writes here after the events are durable in the log, without an fsync of its own
//! (`durable: false`), and records how far the log is indexed in the same
//! transaction; after a crash the store comes back at its last durable commit and the
//! broker indexes the log again from the mark it finds.

use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::{MetaStore, Result};

/// Stream name -> its head (last revision, deletion state), bytes chosen by the broker.
const STREAM_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("stream_heads");
/// (stream name, revision) -> the log offset of that event (for a system stream, of
/// the event it links to).
const STREAM_EVENTS: TableDefinition<(&str, u64), i64> = TableDefinition::new("stream_events");
/// Small named values: how far the log is indexed.
const STREAM_MARKS: TableDefinition<&str, i64> = TableDefinition::new("stream_marks");

/// (event source: a stream name or `$all`, group) -> a persistent subscription's
/// definition, bytes chosen by the broker. Its delivery state is the work-queue state
/// of the subscription the definition names.
const PERSISTENT_SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("persistent_subscriptions");

const INDEXED_TO_KEY: &str = "indexed_to";

/// One index write: heads replaced, events added, and the log offset everything below
/// which is now indexed.
#[derive(Debug, Default, Clone)]
pub struct StreamIndexWrite {
    pub heads: Vec<(String, Vec<u8>)>,
    pub events: Vec<(String, u64, i64)>,
    pub indexed_to: i64,
}

/// Create the tables, so reads never miss one.
pub(crate) fn create_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(STREAM_HEADS)?;
    txn.open_table(STREAM_EVENTS)?;
    txn.open_table(STREAM_MARKS)?;
    txn.open_table(PERSISTENT_SUBSCRIPTIONS)?;
    Ok(())
}

impl MetaStore {
    /// The head of a stream, as the broker stored it.
    pub fn stream_head(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STREAM_HEADS)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// (revision, offset) of up to `max` events of a stream from revision `from`
    /// (inclusive), forwards (rising revisions) or backwards.
    pub fn stream_offsets(
        &self,
        name: &str,
        from: u64,
        forwards: bool,
        max: usize,
    ) -> Result<Vec<(u64, i64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STREAM_EVENTS)?;
        let mut out = Vec::new();
        if forwards {
            for row in table.range((name, from)..=(name, u64::MAX))? {
                if out.len() >= max {
                    break;
                }
                let (k, v) = row?;
                out.push((k.value().1, v.value()));
            }
        } else {
            for row in table.range((name, 0)..=(name, from))?.rev() {
                if out.len() >= max {
                    break;
                }
                let (k, v) = row?;
                out.push((k.value().1, v.value()));
            }
        }
        Ok(out)
    }

    /// How far the log is indexed: every event below this offset is in the index.
    pub fn stream_indexed_to(&self) -> Result<Option<i64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STREAM_MARKS)?;
        Ok(table.get(INDEXED_TO_KEY)?.map(|v| v.value()))
    }

    /// Write index entries in one transaction. Not `durable`: no fsync; the entries
    /// become durable with the next durable commit of the store (any of its writers,
    /// or [`MetaStore::sync`]), and are rebuilt from the log after a crash before it.
    pub fn put_stream_index(&self, write: &StreamIndexWrite, durable: bool) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)?;
        }
        {
            let mut heads = txn.open_table(STREAM_HEADS)?;
            for (name, head) in &write.heads {
                heads.insert(name.as_str(), head.as_slice())?;
            }
            let mut events = txn.open_table(STREAM_EVENTS)?;
            for (name, revision, offset) in &write.events {
                events.insert((name.as_str(), *revision), *offset)?;
            }
            txn.open_table(STREAM_MARKS)?
                .insert(INDEXED_TO_KEY, write.indexed_to)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Forget the whole index (it is then rebuilt from the log).
    pub fn clear_stream_index(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(STREAM_HEADS)?.retain(|_, _| false)?;
        txn.open_table(STREAM_EVENTS)?.retain(|_, _| false)?;
        txn.open_table(STREAM_MARKS)?.retain(|_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Make every earlier commit durable (one fsync).
    pub fn sync(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.commit()?;
        Ok(())
    }

    /// Store (or replace) a persistent subscription's definition, durably.
    pub fn put_persistent_subscription(&self, source: &str, group: &str, def: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(PERSISTENT_SUBSCRIPTIONS)?
            .insert((source, group), def)?;
        txn.commit()?;
        Ok(())
    }

    pub fn delete_persistent_subscription(&self, source: &str, group: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(PERSISTENT_SUBSCRIPTIONS)?
            .remove((source, group))?;
        txn.commit()?;
        Ok(())
    }

    /// Every persistent subscription as (source, group, definition), sorted.
    pub fn persistent_subscriptions(&self) -> Result<Vec<(String, String, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PERSISTENT_SUBSCRIPTIONS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (source, group) = k.value();
            out.push((source.to_string(), group.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// (streams, events) in the index, for reports.
    pub fn stream_index_counts(&self) -> Result<(u64, u64)> {
        let txn = self.db.begin_read()?;
        Ok((
            txn.open_table(STREAM_HEADS)?.len()?,
            txn.open_table(STREAM_EVENTS)?.len()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_writes_read_back_both_ways_and_survive_a_sync_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = MetaStore::open(&path).unwrap();
            assert_eq!(store.stream_indexed_to().unwrap(), None);
            let write = StreamIndexWrite {
                heads: vec![("order-1".into(), b"h1".to_vec())],
                events: (0..5)
                    .map(|r| ("order-1".into(), r, 10 + r as i64))
                    .collect(),
                indexed_to: 15,
            };
            store.put_stream_index(&write, false).unwrap();
            let other = StreamIndexWrite {
                heads: vec![("order-10".into(), b"h2".to_vec())],
                events: vec![("order-10".into(), 0, 15)],
                indexed_to: 16,
            };
            store.put_stream_index(&other, false).unwrap();
            assert_eq!(store.stream_head("order-1").unwrap(), Some(b"h1".to_vec()));
            assert_eq!(store.stream_head("order-2").unwrap(), None);
            assert_eq!(
                store.stream_offsets("order-1", 2, true, 2).unwrap(),
                vec![(2, 12), (3, 13)]
            );
            assert_eq!(
                store.stream_offsets("order-1", 3, false, 10).unwrap(),
                vec![(3, 13), (2, 12), (1, 11), (0, 10)]
            );
            assert_eq!(
                store.stream_offsets("order-1", u64::MAX, false, 1).unwrap(),
                vec![(4, 14)]
            );
            assert_eq!(store.stream_index_counts().unwrap(), (2, 6));
            store.sync().unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        assert_eq!(store.stream_indexed_to().unwrap(), Some(16));
        assert_eq!(
            store.stream_offsets("order-10", 0, true, 9).unwrap(),
            vec![(0, 15)]
        );
        store.clear_stream_index().unwrap();
        assert_eq!(store.stream_indexed_to().unwrap(), None);
        assert_eq!(store.stream_index_counts().unwrap(), (0, 0));
    }
}
