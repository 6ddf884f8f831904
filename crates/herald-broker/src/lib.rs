//! The broker: topics, partitions, consumer groups and producer ids, behind one async
//! API that every protocol front end calls. It knows nothing of sockets or wire formats;
//! it knows the log through `herald-log` and metadata through `herald-meta`.

mod add_partitions;
pub mod amqp;
pub mod cleaner;
pub mod config;
pub mod error;
pub mod exchange;
pub mod group;
pub mod limits;
pub mod partition;
mod principal;
pub mod producer;
pub mod queue;
pub mod records;
pub mod reencode;
pub mod schema_check;
pub mod streams;
#[cfg(test)]
mod test_util;
pub mod topic;
pub mod txn;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_meta::{MetaStore, TopicRecord};
use tokio::sync::watch;

pub use config::{BrokerConfig, FlushPolicy};

/// One partition of a consumer group's progress: see [`Broker::group_lag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
}
pub use error::{BrokerError, Result};
pub use group::{GroupCoordinator, GroupError};
pub use limits::{
    ConnectionGate, ConnectionPermit, MemoryBudget, MemoryPools, Refused, Reservation,
};
pub use partition::{Partition, PendingAppend, ReadResult, StartOffsetMove};
pub use principal::Principal;
pub use topic::{ConfigOp, ConfigSource, Topic};

/// A change of a topic's config overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// AlterConfigs: these become the topic's overrides; every other config returns
    /// to its default.
    Replace(BTreeMap<String, String>),
    /// IncrementalAlterConfigs: these changes, in order, on top of the overrides.
    Incremental(Vec<(String, ConfigOp)>),
}

/// Producer ids are reserved from the meta store in blocks so that InitProducerId does
/// not cost a database commit each time.
const PRODUCER_ID_BLOCK: i64 = 1_000;

/// Threads that open topics at start-up (recovery is mostly fsyncs and index rebuilds).
const STARTUP_THREADS: usize = 16;

/// Threads that close partitions at shutdown (each close is a few fsyncs).
const SHUTDOWN_THREADS: usize = 16;
/// Runs `Broker::enforce_retention` every `interval_ms` (on a blocking thread: it
/// fsyncs and deletes files) until the broker is gone.
async fn retention_task(broker: std::sync::Weak<Broker>, interval_ms: u64) {
    let period = Duration::from_millis(interval_ms.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let pass = tokio::task::spawn_blocking(move || broker.enforce_retention(now_ms()));
        if let Err(e) = pass.await {
            tracing::error!(error = %e, "retention pass failed");
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    meta: Arc<MetaStore>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    topics_by_id: RwLock<HashMap<uuid::Uuid, Arc<Topic>>>,
    /// Serialises topic creation and deletion (each touches disk and the meta store).
    topic_admin: std::sync::Mutex<()>,
    pub groups: Arc<GroupCoordinator>,
    data_changed: Arc<watch::Sender<u64>>,
    producer_ids: std::sync::Mutex<(i64, i64)>,
    queues: queue::Queues,
    /// AMQP queues, exchanges and bindings.
    amqp: amqp::AmqpState,
    /// The event store's stream locks and indexer.
    eventstore: streams::EventStore,
    /// Request and response buffers of every front end, broker-wide.
    memory: MemoryPools,
    /// How far batches may decompress; shared with every partition.
    record_bounds: Arc<records::RecordBounds>,
    /// The schema registry's record validator, once it is up (see `schema_check.rs`).
    validator: schema_check::ValidatorSlot,
    /// The transaction coordinator.
    txn: txn::Transactions,
    /// Held for the broker's lifetime: a second process on the same data directory
    /// would corrupt it.
    _data_dir_lock: std::fs::File,
}

impl Broker {
    /// The broker-wide budgets for request and response buffers.
    pub fn memory(&self) -> &MemoryPools {
        &self.memory
    }

    /// The meta store, for components that keep their own tables in it (the schema
    /// registry); topics, offsets and queue state stay the broker's to write.
    pub fn meta_store(&self) -> Arc<MetaStore> {
        self.meta.clone()
    }

    /// Times a reader (HTTP read, work queue, cleaner, ListOffsets by timestamp) stepped
    /// over a stored batch that decompresses past `batch_decompressed_bytes_max`.
    pub fn oversized_batches_skipped(&self) -> u64 {
        self.record_bounds.oversized_batches_skipped()
    }

    /// Open the data directory, recover every partition and start background tasks.
    /// Must run inside a tokio runtime.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        std::fs::create_dir_all(config.data_dir.join("log")).map_err(|e| {
            BrokerError::Storage(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let lock_path = config.data_dir.join(".lock");
        let data_dir_lock = std::fs::File::create(&lock_path).map_err(|e| {
            BrokerError::Storage(format!("cannot create {}: {e}", lock_path.display()))
        })?;
        data_dir_lock.try_lock().map_err(|_| {
            BrokerError::Storage(format!(
                "data directory {} is in use by another herald process",
                config.data_dir.display()
            ))
        })?;
        herald_log::set_open_sealed_files_max(config.open_sealed_files_max);
        let meta = Arc::new(MetaStore::open_with_cache(
            &config.data_dir.join("meta.redb"),
            config.meta_cache_bytes,
        )?);
        let cluster_id = meta.cluster_id(|| {
            // Kafka cluster ids are 22-character URL-safe base64 of 16 random bytes.
            let id = uuid::Uuid::new_v4();
            id.simple().to_string()[..22].to_string()
        })?;
        let groups = Arc::new(
            GroupCoordinator::new(&config, meta.clone())
                .map_err(|e| BrokerError::Storage(e.to_string()))?,
        );
        let data_changed = Arc::new(watch::Sender::new(0u64));
        let txn = txn::Transactions::open(meta.clone())?;
        let memory = MemoryPools::new(config.memory_budget_bytes);
        let record_bounds = Arc::new(records::RecordBounds::new(
            config.batch_decompressed_bytes_max,
            config.record_bytes_max,
        ));
        let broker = Arc::new(Broker {
            config,
            cluster_id,
            meta: meta.clone(),
            topics: RwLock::new(BTreeMap::new()),
            topics_by_id: RwLock::new(HashMap::new()),
            topic_admin: std::sync::Mutex::new(()),
            groups,
            data_changed,
            producer_ids: std::sync::Mutex::new((0, 0)),
            queues: queue::Queues::new(meta.clone()),
            amqp: amqp::AmqpState::new(),
            eventstore: streams::EventStore::new(),
            memory,
            record_bounds,
            validator: Default::default(),
            txn,
            _data_dir_lock: data_dir_lock,
        });
        let started = std::time::Instant::now();
        let records = broker.meta.topics()?;
        let count = records.len();
        for topic in broker.open_topics(&records)? {
            broker.insert_topic(topic);
        }
        tracing::info!(
            topics = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered topics"
        );
        let weak = Arc::downgrade(&broker.groups);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(group::GROUP_TICK_MS));
            loop {
                tick.tick().await;
                let Some(groups) = weak.upgrade() else { return };
                groups.tick();
            }
        });
        let _ = broker.eventstore.me.set(Arc::downgrade(&broker));
        broker.recover_stream_index()?;
        // Transactions a crash interrupted are finished in the background (their
        // markers are appends that wait for fsyncs); until then their partitions'
        // last stable offsets stay where they are, and an InitProducerId for such an
        // id finishes it itself.
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let Some(broker) = weak.upgrade() else { return };
            if let Err(e) = broker.recover_transactions().await {
                tracing::error!(error = %e, "cannot finish interrupted transactions; retrying each tick");
            }
            txn::spawn_tick(Arc::downgrade(&broker));
        });
        broker.load_subscriptions()?;
        broker.load_amqp()?;
        broker.release_persistent_leases();
        amqp::spawn_expiry(Arc::downgrade(&broker));
        queue::spawn_timer(Arc::downgrade(&broker));
        cleaner::spawn(Arc::downgrade(&broker));
        tokio::spawn(retention_task(
            Arc::downgrade(&broker),
            broker.config.retention_check_interval_ms,
        ));
        Ok(broker)
    }

    /// Give topics the schema registry's validator (once; later calls are ignored), so
    /// topics with schema validation on can check what is produced to them.
    pub fn set_record_validator(&self, validator: Arc<dyn schema_check::RecordValidator>) {
        let _ = self.validator.set(validator);
    }

    /// One retention pass over every topic whose cleanup.policy includes `delete`.
    /// Errors are logged per partition and do not stop the pass. Blocks on fsyncs.
    /// Returns how many segments were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> usize {
        let mut deleted = 0;
        for topic in self.topics() {
            let Some(limits) = topic.retention_limits(&self.config) else {
                continue;
            };
            for partition in &topic.partitions {
                match partition.enforce_retention(limits, now_ms) {
                    Ok(Some(moved)) => {
                        deleted += moved.deleted_segments;
                        tracing::info!(
                            topic = %topic.name,
                            partition = partition.index,
                            log_start_offset = moved.log_start_offset,
                            deleted_segments = moved.deleted_segments,
                            deleted_bytes = moved.deleted_bytes,
                            "retention deleted old segments"
                        );
                    }
                    Ok(None) | Err(BrokerError::ShuttingDown) => {}
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = partition.index, error = %e, "retention pass failed");
                    }
                }
            }
        }
        deleted
    }

    /// The log settings of a topic: the broker's, with its segment.* overrides.
    fn log_config_for(&self, configs: &BTreeMap<String, String>) -> herald_log::LogConfig {
        let mut log_config = self.config.log.clone();
        if let Some(v) = configs.get("segment.bytes").and_then(|v| v.parse().ok()) {
            log_config.segment_bytes_max = v;
        }
        if let Some(v) = configs.get("segment.ms").and_then(|v| v.parse().ok()) {
            log_config.segment_ms_max = v;
        }
        log_config
    }

    /// Change a topic's config overrides (AlterConfigs, IncrementalAlterConfigs). The
    /// result is validated as a whole, stored in the meta store, and takes effect
    /// without a restart: max.message.bytes and message.timestamp.type at the next
    /// produce, segment.* at the next roll, retention at the next retention pass.
    /// With `validate_only` nothing changes. Returns the topic as it is (or would be).
    pub fn alter_topic_configs(
        &self,
        name: &str,
        change: ConfigChange,
        validate_only: bool,
    ) -> Result<Arc<Topic>> {
        let _admin = self
            .topic_admin
            .lock()
            .map_err(|_| BrokerError::Storage("topic lock poisoned".into()))?;
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let configs = match change {
            ConfigChange::Replace(configs) => {
                topic::validate_configs(&configs)?;
                configs
            }
            ConfigChange::Incremental(ops) => topic::apply_config_ops(&topic.configs, &ops)?,
        };
        let log_config = self.log_config_for(&configs);
        log_config
            .validate()
            .map_err(|e| BrokerError::InvalidConfig {
                name: "segment.bytes".to_string(),
                value: log_config.segment_bytes_max.to_string(),
                reason: e.to_string(),
            })?;
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            partitions: topic.partitions.clone(),
            configs,
            validator: self.validator.clone(),
            txns: self.txn.view.clone(),
        });
        if validate_only {
            return Ok(updated);
        }
        if !self.meta.update_topic_configs(name, &updated.configs)? {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        for partition in &updated.partitions {
            partition.set_log_config(log_config.clone())?;
        }
        self.insert_topic(updated.clone());
        tracing::info!(topic = name, configs = ?updated.configs, "altered topic configs");
        Ok(updated)
    }

    /// The one log directory: every partition's directory is in it.
    pub fn log_dir(&self) -> PathBuf {
        self.config.data_dir.join("log")
    }

    fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.config
            .data_dir
            .join("log")
            .join(format!("{topic}-{partition}"))
    }

    fn open_topic(&self, record: &TopicRecord) -> Result<Arc<Topic>> {
        let name: Arc<str> = Arc::from(record.name.as_str());
        let log_config = self.log_config_for(&record.configs);
        let mut partitions = Vec::with_capacity(record.partitions as usize);
        for index in 0..record.partitions {
            partitions.push(self.open_partition(&name, index, &log_config)?);
        }
        Ok(Arc::new(Topic {
            name,
            id: uuid::Uuid::from_bytes(record.id),
            partitions,
            configs: record.configs.clone(),
            validator: self.validator.clone(),
            txns: self.txn.view.clone(),
        }))
    }

    fn open_partition(
        &self,
        topic: &Arc<str>,
        index: u32,
        log_config: &herald_log::LogConfig,
    ) -> Result<Arc<Partition>> {
        Partition::open(
            topic.clone(),
            index as i32,
            &self.partition_dir(topic, index),
            log_config.clone(),
            self.config.flush,
            self.data_changed.clone(),
            self.record_bounds.clone(),
        )
    }

    /// Open many topics at start-up. Recovery after a crash is mostly fsyncs and index
    /// rebuilds, so topics open on several threads, each inside the tokio runtime so
    /// partitions can start their flushers.
    fn open_topics(&self, records: &[TopicRecord]) -> Result<Vec<Arc<Topic>>> {
        let runtime = tokio::runtime::Handle::current();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let opened = std::sync::Mutex::new(Vec::with_capacity(records.len()));
        let threads = STARTUP_THREADS.min(records.len()).max(1);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let _runtime = runtime.enter();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(record) = records.get(i) else { return };
                        let result = self.open_topic(record);
                        let failed = result.is_err();
                        if let Ok(mut opened) = opened.lock() {
                            opened.push(result);
                        }
                        if failed {
                            // Stop early: the broker will not start anyway.
                            next.store(records.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        opened
            .into_inner()
            .map_err(|_| BrokerError::Storage("start-up lock poisoned".into()))?
            .into_iter()
            .collect()
    }

    fn insert_topic(&self, topic: Arc<Topic>) {
        if let Ok(mut by_id) = self.topics_by_id.write() {
            by_id.insert(topic.id, topic.clone());
        }
        if let Ok(mut topics) = self.topics.write() {
            topics.insert(topic.name.to_string(), topic);
        }
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().ok()?.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: &uuid::Uuid) -> Option<Arc<Topic>> {
        self.topics_by_id.read().ok()?.get(id).cloned()
    }

    /// A group's committed offsets with each partition's high watermark and the lag
    /// between them (never below 0); both are `None` for a partition that is gone.
    pub fn group_lag(&self, group_id: &str) -> Vec<PartitionLag> {
        self.groups
            .committed(group_id, None)
            .into_iter()
            .filter_map(|((topic, partition), record)| {
                let committed = record?.offset;
                let high_watermark = self
                    .topic(&topic)
                    .and_then(|t| t.partition(partition).ok().map(|p| p.high_watermark()));
                Some(PartitionLag {
                    lag: high_watermark.map(|hw| (hw - committed).max(0)),
                    topic,
                    partition,
                    committed,
                    high_watermark,
                })
            })
            .collect()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Create a topic; `partitions` of None means the broker default.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: Option<i64>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>> {
        topic::validate_topic_name(name)?;
        let count = partitions.unwrap_or(i64::from(self.config.default_partitions));
        let max = self.config.partitions_per_topic_max;
        if count < 1 || count > i64::from(max) {
            return Err(BrokerError::InvalidPartitions { count, max });
        }
        topic::validate_configs(&configs)?;
        let _admin = self
            .topic_admin
            .lock()
            .map_err(|_| BrokerError::Storage("topic lock poisoned".into()))?;
        if let Some(existing) = self.topic(name) {
            if validate_only {
                return Err(BrokerError::TopicExists(name.to_string()));
            }
            return Err(BrokerError::TopicExists(existing.name.to_string()));
        }
        let record = TopicRecord {
            name: name.to_string(),
            id: *uuid::Uuid::new_v4().as_bytes(),
            partitions: count as u32,
            configs,
            created_ms: now_ms(),
        };
        if validate_only {
            return Ok(Arc::new(Topic {
                name: Arc::from(name),
                id: uuid::Uuid::from_bytes(record.id),
                partitions: Vec::new(),
                configs: record.configs,
                validator: self.validator.clone(),
                txns: self.txn.view.clone(),
            }));
        }
        // Leftovers of a topic deleted before a crash must not leak into the new one.
        for index in 0..record.partitions {
            let dir = self.partition_dir(name, index);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    BrokerError::Storage(format!("cannot clear {}: {e}", dir.display()))
                })?;
            }
        }
        let topic = self.open_topic(&record)?;
        self.meta.put_topic(&record)?;
        self.insert_topic(topic.clone());
        tracing::info!(topic = name, partitions = count, "created topic");
        Ok(topic)
    }

    /// Create the topic if auto-creation is on and it does not exist.
    pub fn topic_or_auto_create(&self, name: &str, allow: bool) -> Result<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        if !(allow && self.config.auto_create_topics) {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        match self.create_topic(name, None, BTreeMap::new(), false) {
            Err(BrokerError::TopicExists(_)) => self
                .topic(name)
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_string())),
            other => other,
        }
    }

    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let _admin = self
            .topic_admin
            .lock()
            .map_err(|_| BrokerError::Storage("topic lock poisoned".into()))?;
        let topic = self
            .topics
            .write()
            .map_err(|_| BrokerError::Storage("topic lock poisoned".into()))?
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        if let Ok(mut by_id) = self.topics_by_id.write() {
            by_id.remove(&topic.id);
        }
        self.meta.delete_topic(name)?;
        self.groups.forget_topic(name);
        self.forget_subscriptions(name);
        for partition in &topic.partitions {
            if let Err(e) = partition.close() {
                tracing::warn!(topic = name, partition = partition.index, error = %e, "closing deleted partition");
            }
            let dir = self.partition_dir(name, partition.index as u32);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "removing deleted partition");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// A watch that changes whenever new data becomes visible in any partition.
    pub fn data_changes(&self) -> watch::Receiver<u64> {
        self.data_changed.subscribe()
    }

    /// A new idempotent producer id (epoch 0).
    pub fn allocate_producer_id(&self) -> Result<i64> {
        let mut ids = self
            .producer_ids
            .lock()
            .map_err(|_| BrokerError::Storage("producer id lock poisoned".into()))?;
        if ids.0 >= ids.1 {
            let first = self.meta.allocate_producer_ids(PRODUCER_ID_BLOCK)?;
            *ids = (first, first + PRODUCER_ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Flush every partition and mark it cleanly closed. Closing is mostly fsyncs, so
    /// partitions close on several threads at once.
    pub fn shutdown(&self) {
        let partitions: Vec<Arc<Partition>> = self
            .topics()
            .iter()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect();
        let threads = SHUTDOWN_THREADS.min(partitions.len()).max(1);
        let chunk = partitions.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for part in partitions.chunks(chunk) {
                scope.spawn(move || {
                    for partition in part {
                        if let Err(e) = partition.close() {
                            tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "closing partition");
                        }
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod retention_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// One batch of `count` records from an idempotent producer.
    fn batch(producer_id: i64, base_sequence: i32, count: i32) -> Vec<u8> {
        let records: Vec<_> = (0..count)
            .map(|i| kafka_protocol::records::Record {
                producer_id,
                producer_epoch: 0,
                ..test_util::record(&format!("k{i}"), Some(b"OrderPlaced"), 1_000 + i64::from(i))
            })
            .collect();
        test_util::batch(
            &records,
            base_sequence,
            kafka_protocol::records::Compression::None,
        )
    }

    #[tokio::test]
    async fn acknowledged_batches_are_readable_and_retries_are_not_appended_twice() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
        let topic = broker
            .create_topic("orders", Some(2), BTreeMap::new(), false)
            .unwrap();
        let p = topic.partition(1).unwrap();
        let first = p.append(&batch(7, 0, 3), false, 1 << 20, now_ms()).unwrap();
        let first = first.durable().await.unwrap();
        assert_eq!(first.base_offset, 0);
        // The same batch again (a producer retry) gets the original offset back.
        let retry = p.append(&batch(7, 0, 3), false, 1 << 20, now_ms()).unwrap();
        assert_eq!(retry.durable().await.unwrap().base_offset, 0);
        let next = p.append(&batch(7, 3, 2), false, 1 << 20, now_ms()).unwrap();
        assert_eq!(next.durable().await.unwrap().base_offset, 3);
        assert!(matches!(
            p.append(&batch(7, 9, 1), false, 1 << 20, now_ms()),
            Err(BrokerError::OutOfOrderSequence { .. })
        ));
        assert_eq!(p.high_watermark(), 5);
        let read = p.read(4, 1 << 20).unwrap();
        // Offset 4 is inside the second batch: the whole batch comes back.
        assert_eq!(
            herald_log::BatchHeader::parse(&read.records)
                .unwrap()
                .base_offset,
            3
        );
        assert!(matches!(
            p.read(6, 1024),
            Err(BrokerError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            p.append(&batch(-1, -1, 1), false, 10, now_ms()),
            Err(BrokerError::MessageTooLarge { max: 10, .. })
        ));
        assert_eq!(p.offset_for_timestamp(1_001).unwrap(), Some((1, 1_001)));
    }

    #[tokio::test]
    async fn a_produce_waiting_for_its_fsync_is_answered_when_the_partition_closes() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
        let topic = broker
            .create_topic("orders", Some(1), BTreeMap::new(), false)
            .unwrap();
        let p = topic.partition(0).unwrap();
        // No await between append and close: on this single-threaded runtime the
        // flusher cannot run first, so only `close` can answer the wait.
        let pending = p.append(&batch(5, 0, 2), false, 1 << 20, now_ms()).unwrap();
        p.close().unwrap();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), pending.durable())
            .await
            .expect("the wait for durability hung after close");
        assert_eq!(done.unwrap().base_offset, 0);
    }

    #[tokio::test]
    async fn state_survives_a_restart_and_the_data_dir_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::new(dir.path().to_path_buf());
        {
            let broker = Broker::open(config.clone()).unwrap();
            assert!(matches!(
                Broker::open(config.clone()),
                Err(BrokerError::Storage(m)) if m.contains("in use")
            ));
            let topic = broker
                .create_topic("orders", Some(1), BTreeMap::new(), false)
                .unwrap();
            let p = topic.partition(0).unwrap();
            p.append(&batch(3, 0, 4), false, 1 << 20, now_ms())
                .unwrap()
                .durable()
                .await
                .unwrap();
            broker.shutdown();
        }
        let broker = Broker::open(config).unwrap();
        let topic = broker.topic("orders").unwrap();
        let p = topic.partition(0).unwrap();
        assert_eq!(p.high_watermark(), 4);
        // Producer state was rebuilt from the log: a retry is still recognised.
        let retry = p.append(&batch(3, 0, 4), false, 1 << 20, now_ms()).unwrap();
        assert_eq!(retry.durable().await.unwrap().base_offset, 0);
        assert_eq!(p.high_watermark(), 4);
    }

    #[tokio::test]
    async fn topics_are_validated_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
        assert!(matches!(
            broker.create_topic("bad name", None, BTreeMap::new(), false),
            Err(BrokerError::InvalidTopic { .. })
        ));
        assert!(matches!(
            broker.create_topic("t", Some(0), BTreeMap::new(), false),
            Err(BrokerError::InvalidPartitions { count: 0, .. })
        ));
        let t = broker
            .create_topic("t", None, BTreeMap::new(), false)
            .unwrap();
        assert_eq!(t.partitions.len(), 1);
        assert!(matches!(
            broker.create_topic("t", None, BTreeMap::new(), false),
            Err(BrokerError::TopicExists(_))
        ));
        let id = t.id;
        drop(t);
        broker.delete_topic("t").unwrap();
        assert!(broker.topic("t").is_none());
        assert!(broker.topic_by_id(&id).is_none());
        assert!(!dir.path().join("log").join("t-0").exists());
    }
}
