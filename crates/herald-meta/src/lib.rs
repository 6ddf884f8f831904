//! The meta store: Herald's durable metadata (topics, committed consumer offsets, the
//! producer-id counter, the cluster id) in one embedded transactional database.
//!
//! Why a database and not hand-written files: every write here is small, must be atomic
//! (a commit of many partition offsets lands whole or not at all) and must survive a
//! crash mid-write. redb gives ACID transactions with fsync on commit, crash recovery and
//! MVCC readers; see ARCHITECTURE.md for why redb over fjall. Values are JSON so that a
//! field added later is read by old code and an old record by new code.
//!
//! The store knows nothing of Kafka or of the log: it keeps records the broker hands it.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

mod registry;
mod streams;
pub use registry::{RegistryTables, RegistryWrite};
pub use streams::StreamIndexWrite;

/// Topic name -> [`TopicRecord`] as JSON.
const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
/// (group, topic, partition) -> [`OffsetRecord`] as JSON.
const OFFSETS: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("offsets");
/// Small named values: the cluster id and the producer-id counter.
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
/// (topic, subscription) -> the subscription's settings, JSON chosen by the broker.
const SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("subscriptions");
/// (topic, subscription, partition) -> that partition's delivery state, bytes chosen by
/// the broker: its header (floor, scan position, counters), or, as stored before
/// [`QUEUE_ENTRIES`], the whole state (bounded by the subscription's `max_unacked`).
const QUEUE_STATE: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("queue_state");
/// (topic, subscription, partition, offset) -> one tracked record's delivery state,
/// bytes chosen by the broker: a commit writes only the entries that changed.
const QUEUE_ENTRIES: TableDefinition<(&str, &str, u32, i64), &[u8]> =
    TableDefinition::new("queue_entries");
/// (topic, message id) -> (partition, offset, published_ms) of the first publish.
const DEDUP: TableDefinition<(&str, &str), (i32, i64, i64)> = TableDefinition::new("dedup");
/// (published_ms, topic, message id): DEDUP in time order, for pruning expired ids.
const DEDUP_BY_TIME: TableDefinition<(i64, &str, &str), ()> = TableDefinition::new("dedup_by_time");
/// Expired message ids removed per dedup write, so a write's cost stays bounded.
pub const DEDUP_PRUNE_PER_WRITE: usize = 64;
/// (dead-letter topic, partition) -> the redrive floor: records below it were redriven.
const REDRIVE_FLOORS: TableDefinition<(&str, u32), i64> = TableDefinition::new("redrive_floors");

/// (kind, name) -> an AMQP definition (exchange, queue or binding), bytes chosen by
/// the broker.
const AMQP_DEFINITIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("amqp_definitions");

/// Transactional id -> the transaction coordinator's state of it, bytes chosen by the
/// broker.
const TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");

const CLUSTER_ID_KEY: &str = "cluster_id";
const NEXT_PRODUCER_ID_KEY: &str = "next_producer_id";

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("meta store: {0}")]
    Db(#[from] redb::Error),
    #[error("meta store: record {key:?} is not valid: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self {
                MetaError::Db(e.into())
            }
        }
    )*};
}
db_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type Result<T> = std::result::Result<T, MetaError>;

/// A topic as the broker created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Stable topic id (a UUID), returned to clients that address topics by id.
    pub id: [u8; 16],
    pub partitions: u32,
    /// Per-topic overrides of broker defaults, by Kafka config name.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub created_ms: i64,
}

/// A consumer group's committed position in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRecord {
    pub offset: i64,
    #[serde(default = "no_leader_epoch")]
    pub leader_epoch: i32,
    #[serde(default)]
    pub metadata: Option<String>,
    #[serde(default)]
    pub commit_ms: i64,
}

fn no_leader_epoch() -> i32 {
    -1
}

/// One committed offset, keyed by where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub record: OffsetRecord,
}

pub struct MetaStore {
    db: Database,
}

/// Default of `meta_cache_bytes`: redb's page cache. redb's own default (1 GiB) made
/// the cache most of a loaded event store's memory; 256 MiB keeps the hot part of a
/// million-stream index (heads and the newest leaves) while bounding the process.
pub const META_CACHE_BYTES_DEFAULT: usize = 256 << 20;

impl MetaStore {
    /// Open (or create) the store at `path` with the default page cache.
    pub fn open(path: &Path) -> Result<MetaStore> {
        MetaStore::open_with_cache(path, META_CACHE_BYTES_DEFAULT)
    }

    /// Open (or create) the store at `path` with a page cache of `cache_bytes`,
    /// creating its tables so reads never miss one.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<MetaStore> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(TOPICS)?;
        txn.open_table(OFFSETS)?;
        txn.open_table(SETTINGS)?;
        txn.open_table(SUBSCRIPTIONS)?;
        txn.open_table(QUEUE_STATE)?;
        txn.open_table(QUEUE_ENTRIES)?;
        txn.open_table(REDRIVE_FLOORS)?;
        txn.open_table(DEDUP)?;
        txn.open_table(DEDUP_BY_TIME)?;
        txn.open_table(AMQP_DEFINITIONS)?;
        txn.open_table(TRANSACTIONS)?;
        streams::create_tables(&txn)?;
        txn.commit()?;
        Ok(MetaStore { db })
    }

    /// The cluster id, made once and kept forever.
    pub fn cluster_id(&self, make: impl FnOnce() -> String) -> Result<String> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut table = txn.open_table(SETTINGS)?;
            let existing = table
                .get(CLUSTER_ID_KEY)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            match existing {
                Some(id) => id,
                None => {
                    let id = make();
                    table.insert(CLUSTER_ID_KEY, id.as_bytes())?;
                    id
                }
            }
        };
        txn.commit()?;
        Ok(id)
    }

    /// Reserve `count` producer ids and return the first. Ids are never handed out twice,
    /// even across restarts, because the counter moves in the same transaction.
    pub fn allocate_producer_ids(&self, count: i64) -> Result<i64> {
        let txn = self.db.begin_write()?;
        let first = {
            let mut table = txn.open_table(SETTINGS)?;
            let first = table
                .get(NEXT_PRODUCER_ID_KEY)?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(i64::from_be_bytes)
                .unwrap_or(0);
            let next = first.saturating_add(count.max(1));
            table.insert(NEXT_PRODUCER_ID_KEY, next.to_be_bytes().as_slice())?;
            first
        };
        txn.commit()?;
        Ok(first)
    }

    pub fn put_topic(&self, topic: &TopicRecord) -> Result<()> {
        let value = encode(topic);
        let txn = self.db.begin_write()?;
        txn.open_table(TOPICS)?
            .insert(topic.name.as_str(), value.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Replace a topic's config overrides (AlterConfigs). Returns false if the topic
    /// does not exist.
    pub fn update_topic_configs(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<bool> {
        self.update_topic(name, |record| record.configs = configs.clone())
    }

    /// Set a topic's partition count (CreatePartitions). Returns false if the topic
    /// does not exist.
    pub fn update_topic_partitions(&self, name: &str, partitions: u32) -> Result<bool> {
        self.update_topic(name, |record| record.partitions = partitions)
    }

    /// Change a topic's record, reading and writing it in one transaction so that
    /// nothing else in it can be lost. Returns false if the topic does not exist.
    fn update_topic(&self, name: &str, change: impl FnOnce(&mut TopicRecord)) -> Result<bool> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TOPICS)?;
            let existing = match table.get(name)? {
                Some(value) => Some(decode::<TopicRecord>(name, value.value())?),
                None => None,
            };
            let Some(mut record) = existing else {
                return Ok(false);
            };
            change(&mut record);
            let value = encode(&record);
            table.insert(name, value.as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Delete a topic and everything kept about it, in one transaction: offsets any group
    /// committed for it, its subscriptions and their delivery state, its redrive floors (as
    /// a dead-letter topic) and its remembered message ids. A topic created later under the
    /// same name starts clean.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(TOPICS)?.remove(name)?;
        txn.open_table(OFFSETS)?
            .retain(|(_, topic, _), _| topic != name)?;
        txn.open_table(SUBSCRIPTIONS)?
            .retain(|(topic, _), _| topic != name)?;
        txn.open_table(QUEUE_STATE)?
            .retain(|(topic, _, _), _| topic != name)?;
        txn.open_table(QUEUE_ENTRIES)?
            .retain(|(topic, _, _, _), _| topic != name)?;
        txn.open_table(REDRIVE_FLOORS)?
            .retain(|(topic, _), _| topic != name)?;
        txn.open_table(DEDUP)?
            .retain(|(topic, _), _| topic != name)?;
        txn.commit()?;
        Ok(())
    }

    pub fn topics(&self) -> Result<Vec<TopicRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOPICS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Store a group's offsets for many partitions atomically.
    pub fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, OffsetRecord)],
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OFFSETS)?;
            for (topic, partition, record) in offsets {
                let value = encode(record);
                table.insert((group, topic.as_str(), *partition), value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Forget some of a group's offsets (OffsetDelete), in one transaction.
    pub fn delete_offsets(&self, group: &str, partitions: &[(String, u32)]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OFFSETS)?;
            for (topic, partition) in partitions {
                table.remove((group, topic.as_str(), *partition))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Forget every offset of a group (DeleteGroups).
    pub fn delete_group(&self, group: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(OFFSETS)?.retain(|(g, _, _), _| g != group)?;
        txn.commit()?;
        Ok(())
    }

    /// Every committed offset of every group, for loading into memory at start-up.
    pub fn all_committed_offsets(&self) -> Result<Vec<CommittedOffset>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OFFSETS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (group, topic, partition) = key.value();
            let record = decode(&format!("{group}/{topic}/{partition}"), value.value())?;
            out.push(CommittedOffset {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
                record,
            });
        }
        Ok(out)
    }
}

/// One partition's queue state changes to write, as the broker encoded them.
pub struct QueueStateWrite<'a> {
    pub topic: &'a str,
    pub subscription: &'a str,
    pub partition: u32,
    /// Replaces the partition's header.
    pub header: &'a [u8],
    /// Entries to write (insert or replace), by offset.
    pub entries: &'a [(i64, Vec<u8>)],
    /// Delete every stored entry of the partition below this offset.
    pub remove_below: Option<i64>,
}

impl MetaStore {
    /// Create or replace a transactional id's state.
    pub fn put_transaction(&self, id: &str, state: &[u8]) -> Result<()> {
        self.complete_transaction(id, Some(state), &[])
    }

    /// Write a transactional id's state (`None` forgets it) and the group offsets its
    /// commit makes visible, in one transaction: a crash leaves both or neither.
    pub fn complete_transaction(
        &self,
        id: &str,
        state: Option<&[u8]>,
        offsets: &[(String, String, u32, OffsetRecord)],
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TRANSACTIONS)?;
            match state {
                Some(state) => {
                    table.insert(id, state)?;
                }
                None => {
                    table.remove(id)?;
                }
            }
            let mut table = txn.open_table(OFFSETS)?;
            for (group, topic, partition, record) in offsets {
                let value = encode(record);
                table.insert(
                    (group.as_str(), topic.as_str(), *partition),
                    value.as_slice(),
                )?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every transactional id's state, for the coordinator at start-up.
    pub fn transactions(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TRANSACTIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Create or replace a subscription's settings.
    pub fn put_subscription(&self, topic: &str, name: &str, settings: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SUBSCRIPTIONS)?
            .insert((topic, name), settings)?;
        txn.commit()?;
        Ok(())
    }

    /// Delete a subscription and all its delivery state in one transaction.
    pub fn delete_subscription(&self, topic: &str, name: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SUBSCRIPTIONS)?.remove((topic, name))?;
        txn.open_table(QUEUE_STATE)?
            .retain(|(t, n, _), _| !(t == topic && n == name))?;
        txn.open_table(QUEUE_ENTRIES)?.retain_in(
            (topic, name, 0u32, i64::MIN)..=(topic, name, u32::MAX, i64::MAX),
            |_, _| false,
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Write and delete AMQP definitions (kind, name) in one transaction.
    pub fn put_amqp_definitions(
        &self,
        puts: &[(&str, &str, &[u8])],
        deletes: &[(&str, &str)],
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(AMQP_DEFINITIONS)?;
            for (kind, name, value) in puts {
                table.insert((*kind, *name), *value)?;
            }
            for (kind, name) in deletes {
                table.remove((*kind, *name))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every AMQP definition of one kind: (name, bytes).
    pub fn amqp_definitions(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AMQP_DEFINITIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (k, name) = key.value();
            if k == kind {
                out.push((name.to_string(), value.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Every subscription: (topic, name, settings).
    pub fn subscriptions(&self) -> Result<Vec<(String, String, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SUBSCRIPTIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (topic, name) = key.value();
            out.push((topic.to_string(), name.to_string(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Write many partitions' queue state changes in one transaction (one fsync): the
    /// broker's group commit for acks, nacks and leases.
    pub fn put_queue_states(&self, writes: &[QueueStateWrite<'_>]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut headers = txn.open_table(QUEUE_STATE)?;
            let mut entries = txn.open_table(QUEUE_ENTRIES)?;
            for w in writes {
                let (t, s, p) = (w.topic, w.subscription, w.partition);
                headers.insert((t, s, p), w.header)?;
                if let Some(below) = w.remove_below {
                    entries.retain_in((t, s, p, i64::MIN)..(t, s, p, below), |_, _| false)?;
                }
                for (offset, entry) in w.entries {
                    entries.insert((t, s, p, *offset), entry.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The stored entries of one partition of a subscription: (offset, entry), in
    /// offset order.
    pub fn queue_entries(
        &self,
        topic: &str,
        name: &str,
        partition: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUE_ENTRIES)?;
        let mut out = Vec::new();
        for entry in
            table.range((topic, name, partition, i64::MIN)..=(topic, name, partition, i64::MAX))?
        {
            let (key, value) = entry?;
            out.push((key.value().3, value.value().to_vec()));
        }
        Ok(out)
    }

    /// The stored state of every partition of one subscription: (partition, state).
    pub fn queue_states(&self, topic: &str, name: &str) -> Result<Vec<(u32, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUE_STATE)?;
        let mut out = Vec::new();
        for entry in table.range((topic, name, 0u32)..=(topic, name, u32::MAX))? {
            let (key, value) = entry?;
            out.push((key.value().2, value.value().to_vec()));
        }
        Ok(out)
    }

    /// Set a dead-letter topic partition's redrive floor.
    pub fn put_redrive_floor(&self, topic: &str, partition: u32, floor: i64) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(REDRIVE_FLOORS)?
            .insert((topic, partition), floor)?;
        txn.commit()?;
        Ok(())
    }

    /// The first publish of `message_id` on `topic`: (partition, offset, published_ms).
    pub fn dedup_lookup(&self, topic: &str, message_id: &str) -> Result<Option<(i32, i64, i64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEDUP)?;
        Ok(table.get((topic, message_id))?.map(|v| v.value()))
    }

    /// Remember a publish of `message_id`, and forget up to [`DEDUP_PRUNE_PER_WRITE`] ids
    /// published before `expired_before_ms`.
    pub fn dedup_insert(
        &self,
        topic: &str,
        message_id: &str,
        at: (i32, i64, i64),
        expired_before_ms: i64,
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut ids = txn.open_table(DEDUP)?;
            let mut by_time = txn.open_table(DEDUP_BY_TIME)?;
            let mut expired = Vec::new();
            for entry in by_time
                .range((i64::MIN, "", "")..(expired_before_ms, "", ""))?
                .take(DEDUP_PRUNE_PER_WRITE)
            {
                let (key, _) = entry?;
                let (ms, t, id) = key.value();
                expired.push((ms, t.to_string(), id.to_string()));
            }
            for (ms, t, id) in &expired {
                by_time.remove((*ms, t.as_str(), id.as_str()))?;
                // Only if not published again since (then it has a newer time entry).
                if ids.get((t.as_str(), id.as_str()))?.map(|v| v.value().2) == Some(*ms) {
                    ids.remove((t.as_str(), id.as_str()))?;
                }
            }
            ids.insert((topic, message_id), at)?;
            by_time.insert((at.2, topic, message_id), ())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A dead-letter topic partition's redrive floor (0 if never redriven).
    pub fn redrive_floor(&self, topic: &str, partition: u32) -> Result<i64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDRIVE_FLOORS)?;
        Ok(table
            .get((topic, partition))?
            .map(|v| v.value())
            .unwrap_or(0))
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and integers to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| MetaError::Corrupt {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicRecord {
        TopicRecord {
            name: name.to_string(),
            id: [7; 16],
            partitions: 3,
            configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
            created_ms: 1,
        }
    }

    fn offset(offset: i64) -> OffsetRecord {
        OffsetRecord {
            offset,
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_ms: 5,
        }
    }

    fn state_write<'a>(
        topic: &'a str,
        name: &'a str,
        partition: u32,
        entries: &'a [(i64, Vec<u8>)],
        remove_below: Option<i64>,
    ) -> QueueStateWrite<'a> {
        QueueStateWrite {
            topic,
            subscription: name,
            partition,
            header: b"h",
            entries,
            remove_below,
        }
    }

    #[test]
    fn queue_entries_are_written_by_offset_and_removed_below_the_floor_and_with_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let five: Vec<(i64, Vec<u8>)> = (0..5).map(|o| (o, vec![o as u8])).collect();
        let two = [(1, b"x".to_vec())];
        store
            .put_queue_states(&[
                state_write("orders", "billing", 0, &five, None),
                state_write("orders", "billing", 1, &two, None),
                state_write("orders", "audit", 0, &two, None),
                state_write("ordersx", "billing", 0, &two, None),
            ])
            .unwrap();
        // Replace one, clear below 3 on partition 0 only.
        let again = [(4, b"y".to_vec())];
        store
            .put_queue_states(&[state_write("orders", "billing", 0, &again, Some(3))])
            .unwrap();
        let offsets = |t, n, p| -> Vec<(i64, Vec<u8>)> { store.queue_entries(t, n, p).unwrap() };
        assert_eq!(
            offsets("orders", "billing", 0),
            vec![(3, vec![3]), (4, b"y".to_vec())]
        );
        assert_eq!(offsets("orders", "billing", 1), two.to_vec());
        store.delete_subscription("orders", "billing").unwrap();
        assert!(offsets("orders", "billing", 0).is_empty());
        assert!(offsets("orders", "billing", 1).is_empty());
        assert_eq!(offsets("orders", "audit", 0), two.to_vec());
        store.delete_topic("orders").unwrap();
        assert!(offsets("orders", "audit", 0).is_empty());
        assert_eq!(offsets("ordersx", "billing", 0), two.to_vec());
    }

    #[test]
    fn topics_and_offsets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = MetaStore::open(&path).unwrap();
            store.put_topic(&topic("orders")).unwrap();
            store.put_topic(&topic("payments")).unwrap();
            store
                .commit_offsets(
                    "g1",
                    &[
                        ("orders".into(), 0, offset(10)),
                        ("orders".into(), 2, offset(3)),
                    ],
                )
                .unwrap();
            store
                .commit_offsets("g2", &[("payments".into(), 1, offset(4))])
                .unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        let names: Vec<_> = store
            .topics()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["orders", "payments"]);
        assert_eq!(store.topics().unwrap()[0], topic("orders"));
        let offsets = store.all_committed_offsets().unwrap();
        assert_eq!(offsets.len(), 3);
        assert_eq!(offsets[1].partition, 2);
        assert_eq!(offsets[1].record.offset, 3);
    }

    #[test]
    fn deleting_a_topic_deletes_its_offsets_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m")).unwrap();
        store.put_topic(&topic("orders")).unwrap();
        store.put_topic(&topic("payments")).unwrap();
        store
            .commit_offsets(
                "g",
                &[
                    ("orders".into(), 0, offset(1)),
                    ("payments".into(), 0, offset(2)),
                ],
            )
            .unwrap();
        store.delete_topic("orders").unwrap();
        assert_eq!(store.topics().unwrap().len(), 1);
        let left = store.all_committed_offsets().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].topic, "payments");
        store.delete_group("g").unwrap();
        assert!(store.all_committed_offsets().unwrap().is_empty());
    }

    #[test]
    fn topic_configs_are_updated_in_place_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let configs = BTreeMap::from([("retention.bytes".to_string(), "10".to_string())]);
        {
            let store = MetaStore::open(&path).unwrap();
            store.put_topic(&topic("orders")).unwrap();
            assert!(store.update_topic_configs("orders", &configs).unwrap());
            assert!(!store.update_topic_configs("missing", &configs).unwrap());
        }
        let store = MetaStore::open(&path).unwrap();
        let topics = store.topics().unwrap();
        assert_eq!(topics.len(), 1);
        assert_eq!(
            topics[0],
            TopicRecord {
                configs,
                ..topic("orders")
            }
        );
    }

    #[test]
    fn producer_ids_and_cluster_id_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        {
            let store = MetaStore::open(&path).unwrap();
            assert_eq!(store.allocate_producer_ids(1).unwrap(), 0);
            assert_eq!(store.allocate_producer_ids(10).unwrap(), 1);
            assert_eq!(store.cluster_id(|| "abc".into()).unwrap(), "abc");
        }
        let store = MetaStore::open(&path).unwrap();
        assert_eq!(store.allocate_producer_ids(1).unwrap(), 11);
        assert_eq!(store.cluster_id(|| "other".into()).unwrap(), "abc");
    }
}
