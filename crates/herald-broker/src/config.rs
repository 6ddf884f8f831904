//! Broker settings. Every limit is named and has a unit in its name; the binary fills
//! these from flags, the TOML file and `HERALD_*` variables.

use std::collections::BTreeSet;
use std::path::PathBuf;

use herald_log::LogConfig;

/// When appended bytes are forced to disk, and so what an acknowledgement promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync before acknowledging acks=1/all and before consumers may read the data.
    /// Concurrent appends share one fsync (group commit). Nothing acknowledged is lost
    /// on a crash or power loss.
    Always,
    /// fsync every `interval_ms`; acknowledge and serve after the OS write. A crash of
    /// the machine (not of the process) can lose up to `interval_ms` of acknowledged data.
    Interval { interval_ms: u64 },
    /// Never fsync explicitly; the OS writes back when it likes (Kafka's default).
    Os,
}

impl FlushPolicy {
    /// Parse `always`, `os`, or `interval:<ms>` / a bare number of milliseconds.
    pub fn parse(text: &str) -> Result<FlushPolicy, String> {
        let text = text.trim();
        match text {
            "always" | "every-write" => return Ok(FlushPolicy::Always),
            "os" | "never" => return Ok(FlushPolicy::Os),
            _ => {}
        }
        let ms = text.strip_prefix("interval:").unwrap_or(text);
        match ms.parse::<u64>() {
            Ok(interval_ms) if interval_ms > 0 => Ok(FlushPolicy::Interval { interval_ms }),
            _ => Err(format!(
                "flush policy {text:?} is not one of: always, os, interval:<ms>"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub node_id: i32,
    /// Create a topic when a client names one that does not exist (Metadata, Produce).
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// Upper bound on partitions in one topic, so a typo cannot create a million directories.
    pub partitions_per_topic_max: u32,
    pub log: LogConfig,
    pub flush: FlushPolicy,
    /// How long a new group waits for more members before its first rebalance completes.
    pub group_initial_rebalance_delay_ms: u64,
    pub group_session_timeout_min_ms: i32,
    pub group_session_timeout_max_ms: i32,
    /// Upper bound on members in one consumer group.
    pub group_members_max: usize,
    /// Sealed-segment files kept open at once (process-wide; more are opened on demand
    /// and the least recently used closed).
    pub open_sealed_files_max: usize,
    /// Bytes of the meta store's page cache (redb's read and write cache; the stream
    /// index is most of what it holds on an event store).
    pub meta_cache_bytes: usize,
    /// Most events the event store's index may be behind the appends answered: an
    /// append past it waits for the indexer (it bounds the heads kept in memory for
    /// unindexed appends and how long a read waits for the index).
    pub eventstore_index_lag_max: u64,
    /// How often the cleaner looks for compacted partitions to clean (0: never).
    pub compaction_check_interval_ms: u64,
    /// Memory for the cleaner's key -> latest offset map; a dirty section with more
    /// keys is cleaned in several passes.
    pub compaction_map_bytes_max: usize,
    /// Default of the topic config `retention.ms`: how long data is kept (-1: forever).
    pub retention_ms: i64,
    /// Default of the topic config `retention.bytes`: bytes kept per partition (-1: no limit).
    pub retention_bytes: i64,
    /// How often the retention task looks for segments to delete.
    pub retention_check_interval_ms: u64,
    /// Topic configs whose broker-wide default the operator set (flag, environment or
    /// file) instead of leaving Herald's built-in value: DescribeConfigs reports those
    /// as STATIC_BROKER_CONFIG rather than DEFAULT_CONFIG.
    pub operator_topic_defaults: BTreeSet<&'static str>,
    /// Bytes of request and response buffers all front ends may hold at once (Kafka's
    /// `queued.max.request.bytes`, for responses too): past it, sockets wait.
    pub memory_budget_bytes: usize,
    /// Most bytes a compressed batch may decompress to: produce refuses more
    /// (MESSAGE_TOO_LARGE), readers step over stored batches that expand further.
    pub batch_decompressed_bytes_max: usize,
    /// Most bytes one record may take (its length): produce refuses more.
    pub record_bytes_max: usize,
    /// Longest transaction timeout a producer may ask for (Kafka's
    /// `transaction.max.timeout.ms`); a transaction open longer than its own timeout is
    /// aborted by the broker.
    pub transaction_max_timeout_ms: i32,
    /// How long a transactional id with no transaction open is remembered after its
    /// last use (Kafka's `transactional.id.expiration.ms`).
    pub transactional_id_expiration_ms: i64,
    /// Most transactional ids kept at once: InitProducerId for a new one past it is
    /// refused (POLICY_VIOLATION) until idle ones expire.
    pub transactional_ids_max: usize,
}

impl BrokerConfig {
    pub fn new(data_dir: PathBuf) -> BrokerConfig {
        BrokerConfig {
            data_dir,
            node_id: 1,
            auto_create_topics: true,
            default_partitions: 1,
            partitions_per_topic_max: 10_000,
            log: LogConfig::default(),
            flush: FlushPolicy::Always,
            group_initial_rebalance_delay_ms: 3_000,
            group_session_timeout_min_ms: 6_000,
            group_session_timeout_max_ms: 1_800_000,
            group_members_max: 1_000,
            open_sealed_files_max: herald_log::OPEN_SEALED_FILES_MAX_DEFAULT,
            meta_cache_bytes: herald_meta::META_CACHE_BYTES_DEFAULT,
            eventstore_index_lag_max: crate::streams::INDEX_LAG_EVENTS_MAX_DEFAULT,
            compaction_check_interval_ms: 15_000,
            compaction_map_bytes_max: 128 << 20,
            retention_ms: 604_800_000,
            retention_bytes: -1,
            retention_check_interval_ms: 30_000,
            operator_topic_defaults: BTreeSet::new(),
            memory_budget_bytes: crate::limits::MEMORY_BUDGET_BYTES_DEFAULT,
            batch_decompressed_bytes_max: crate::records::BATCH_DECOMPRESSED_BYTES_MAX_DEFAULT,
            record_bytes_max: crate::records::RECORD_BYTES_MAX_DEFAULT,
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 604_800_000,
            transactional_ids_max: 100_000,
        }
    }

    /// The broker-wide default of a topic config the broker has a setting for, with
    /// whether the operator set it; None for configs that only have Herald's default.
    pub fn topic_default(&self, name: &str) -> Option<(String, bool)> {
        let value = match name {
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "segment.bytes" => self.log.segment_bytes_max.to_string(),
            "segment.ms" => self.log.segment_ms_max.to_string(),
            _ => return None,
        };
        Some((value, self.operator_topic_defaults.contains(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_defaults_come_from_broker_settings() {
        let mut c = BrokerConfig::new(PathBuf::from("x"));
        assert_eq!(
            c.topic_default("retention.ms"),
            Some(("604800000".to_string(), false))
        );
        c.retention_bytes = 1_000;
        c.operator_topic_defaults.insert("retention.bytes");
        assert_eq!(
            c.topic_default("retention.bytes"),
            Some(("1000".to_string(), true))
        );
        assert_eq!(c.topic_default("cleanup.policy"), None);
    }

    #[test]
    fn flush_policy_parses() {
        assert_eq!(FlushPolicy::parse("always"), Ok(FlushPolicy::Always));
        assert_eq!(FlushPolicy::parse("os"), Ok(FlushPolicy::Os));
        assert_eq!(
            FlushPolicy::parse("interval:250"),
            Ok(FlushPolicy::Interval { interval_ms: 250 })
        );
        assert_eq!(
            FlushPolicy::parse("100"),
            Ok(FlushPolicy::Interval { interval_ms: 100 })
        );
        assert!(FlushPolicy::parse("interval:0").is_err());
        assert!(FlushPolicy::parse("sometimes").is_err());
    }
}
