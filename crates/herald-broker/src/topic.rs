//! Topics: a name, a stable id, partitions, and per-topic configs.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_log::RetentionLimits;

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::partition::{Partition, PendingAppend};

/// Kafka's rule: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

pub fn validate_topic_name(name: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(BrokerError::InvalidTopic {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are not allowed");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return invalid("the name is longer than 249 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return invalid(&format!(
            "character {c:?} is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// A topic config Herald knows: its Kafka name, its default, and how to check a value.
pub struct ConfigSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    check: fn(&str) -> std::result::Result<(), String>,
}

fn long_at_least(min: i64) -> impl Fn(&str) -> std::result::Result<(), String> {
    move |v| match v.parse::<i64>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(format!("must be an integer >= {min}")),
    }
}

fn one_of(allowed: &'static [&'static str]) -> impl Fn(&str) -> std::result::Result<(), String> {
    move |v| {
        if allowed.contains(&v) {
            Ok(())
        } else {
            Err(format!("must be one of {}", allowed.join(", ")))
        }
    }
}

/// A codec level: an integer in `levels`, or -1 (the codec's default) when `minus_one`.
fn level_in(
    v: &str,
    levels: std::ops::RangeInclusive<i64>,
    minus_one: bool,
) -> std::result::Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if levels.contains(&n) || (minus_one && n == -1) => Ok(()),
        _ => Err(format!(
            "must be an integer from {} to {}{}",
            levels.start(),
            levels.end(),
            if minus_one { ", or -1" } else { "" }
        )),
    }
}

/// A Kafka version as `message.format.version` takes it: `0.10.0`, `2.8`, `3.0-IV1`.
fn check_version(v: &str) -> std::result::Result<(), String> {
    let (numbers, iv) = match v.split_once("-IV") {
        Some((n, iv)) => (n, Some(iv)),
        None => (v, None),
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    let numeric = |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    if (2..=4).contains(&parts.len()) && parts.iter().all(|p| numeric(p)) && iv.is_none_or(numeric)
    {
        Ok(())
    } else {
        Err("must be a Kafka version such as 2.8 or 3.0-IV1".to_string())
    }
}

macro_rules! spec {
    ($name:expr, $default:expr, $doc:expr, $check:expr) => {
        ConfigSpec {
            name: $name,
            default: $default,
            doc: $doc,
            check: |v| ($check)(v),
        }
    };
}

/// Every topic config Herald accepts. Unknown names are refused with INVALID_CONFIG.
pub const TOPIC_CONFIGS: &[ConfigSpec] = &[
    spec!(
        "cleanup.policy",
        "delete",
        "delete (retention deletes old segments), compact (keeps the latest record per key; see README), or compact,delete",
        |v: &str| {
            let mut parts: Vec<&str> = v.split(',').map(str::trim).collect();
            parts.sort();
            match parts.as_slice() {
                ["delete"] | ["compact"] | ["compact", "delete"] => Ok(()),
                _ => Err("must be delete, compact or compact,delete".to_string()),
            }
        }
    ),
    spec!(
        "retention.ms",
        "604800000",
        "how long to keep data, in ms (-1: forever); whole closed segments older than this are deleted",
        long_at_least(-1)
    ),
    spec!(
        "retention.bytes",
        "-1",
        "bytes per partition to keep (-1: no limit); the oldest segments beyond it are deleted",
        long_at_least(-1)
    ),
    spec!(
        "delete.retention.ms",
        "86400000",
        "how long tombstones stay in a compacted topic",
        long_at_least(0)
    ),
    spec!(
        "min.cleanable.dirty.ratio",
        "0.5",
        "compact a partition once this share of its sealed bytes is not yet cleaned",
        |v: &str| match v.parse::<f64>() {
            Ok(n) if (0.0..=1.0).contains(&n) => Ok(()),
            _ => Err("must be a number between 0 and 1".to_string()),
        }
    ),
    spec!(
        "segment.bytes",
        "1073741824",
        "segment file size before rolling",
        |v: &str| match v.parse::<i64>() {
            // A segment holds at least one batch header; index positions are u32.
            Ok(n) if (herald_log::BATCH_HEADER_BYTES as i64..=i64::from(u32::MAX)).contains(&n) => {
                Ok(())
            }
            _ => Err(format!(
                "must be an integer between {} and 4294967295",
                herald_log::BATCH_HEADER_BYTES
            )),
        }
    ),
    spec!(
        "segment.ms",
        "604800000",
        "segment age before rolling",
        long_at_least(1)
    ),
    spec!(
        "max.message.bytes",
        "1048588",
        "largest record batch accepted",
        |v: &str| match v.parse::<i64>() {
            Ok(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(()),
            _ => Err("must be an integer between 0 and 2147483647".to_string()),
        }
    ),
    spec!(
        "message.timestamp.type",
        "CreateTime",
        "CreateTime keeps the producer's timestamp; LogAppendTime stamps the broker's",
        one_of(&["CreateTime", "LogAppendTime"])
    ),
    spec!(
        "compression.type",
        "producer",
        "producer keeps each batch's codec; uncompressed, gzip, snappy, lz4 or zstd: a batch that arrives in another codec is recompressed into this one before it is stored",
        one_of(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"])
    ),
    spec!(
        "compression.gzip.level",
        "-1",
        "gzip level (1-9, -1: the default, 6) of batches recompressed into gzip",
        |v: &str| level_in(v, crate::reencode::GZIP_LEVELS, true)
    ),
    spec!(
        "compression.lz4.level",
        "9",
        "lz4 level (1-17) of batches recompressed into lz4",
        |v: &str| level_in(v, crate::reencode::LZ4_LEVELS, false)
    ),
    spec!(
        "compression.zstd.level",
        "3",
        "zstd level (-131072-22) of batches recompressed into zstd",
        |v: &str| level_in(v, crate::reencode::ZSTD_LEVELS, false)
    ),
    spec!(
        "message.format.version",
        "3.0-IV1",
        "accepted and ignored, as Kafka 3.x does: every batch is stored in message format v2 (v0/v1 are refused)",
        check_version
    ),
    spec!(
        "confluent.value.schema.validation",
        "false",
        "true: refuse records whose value is not in the schema registry's wire format with a schema id registered under the topic's subject",
        crate::schema_check::check_bool
    ),
    spec!(
        "confluent.key.schema.validation",
        "false",
        "true: the same for record keys",
        crate::schema_check::check_bool
    ),
    spec!(
        "confluent.value.subject.name.strategy",
        "TopicNameStrategy",
        "how a value's subject is named: TopicNameStrategy (<topic>-value), RecordNameStrategy (the record type's full name) or TopicRecordNameStrategy (<topic>-<type>)",
        crate::schema_check::check_strategy
    ),
    spec!(
        "confluent.key.subject.name.strategy",
        "TopicNameStrategy",
        "the same for keys (<topic>-key)",
        crate::schema_check::check_strategy
    ),
    spec!(
        "herald.schema.validation.level",
        "id",
        "with schema validation on: id (the schema id is registered under the subject) or payload (the payload is also decoded with that schema)",
        crate::schema_check::check_level
    ),
    spec!(
        "min.insync.replicas",
        "1",
        "single node: always 1",
        one_of(&["1"])
    ),
];

pub fn config_spec(name: &str) -> Option<&'static ConfigSpec> {
    TOPIC_CONFIGS.iter().find(|s| s.name == name)
}

/// Configs whose value is a comma-separated list: the only ones IncrementalAlterConfigs
/// may APPEND to or SUBTRACT from.
pub const LIST_CONFIGS: &[&str] = &["cleanup.policy"];

/// One change of IncrementalAlterConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    Set(String),
    /// Remove the override: the default applies again.
    Delete,
    /// Add items to a list config (its current value, or its default).
    Append(String),
    /// Remove items from a list config.
    Subtract(String),
}

/// A topic's overrides after `ops`, every name known and every value valid.
pub fn apply_config_ops(
    current: &BTreeMap<String, String>,
    ops: &[(String, ConfigOp)],
) -> Result<BTreeMap<String, String>> {
    let mut configs = current.clone();
    for (name, op) in ops {
        let invalid = |value: &str, reason: String| BrokerError::InvalidConfig {
            name: name.clone(),
            value: value.to_string(),
            reason,
        };
        let spec = config_spec(name)
            .ok_or_else(|| invalid("", "unknown or unsupported topic config".to_string()))?;
        let list_items = |value: &str| -> Result<Vec<String>> {
            if !LIST_CONFIGS.contains(&spec.name) {
                return Err(invalid(
                    value,
                    "APPEND and SUBTRACT apply only to list configs (cleanup.policy)".to_string(),
                ));
            }
            let base = configs.get(spec.name).map_or(spec.default, String::as_str);
            Ok(split_list(base))
        };
        match op {
            ConfigOp::Set(value) => {
                configs.insert(name.clone(), value.clone());
            }
            ConfigOp::Delete => {
                configs.remove(name);
            }
            ConfigOp::Append(value) => {
                let mut items = list_items(value)?;
                for item in split_list(value) {
                    if !items.contains(&item) {
                        items.push(item);
                    }
                }
                configs.insert(name.clone(), items.join(","));
            }
            ConfigOp::Subtract(value) => {
                let removed = split_list(value);
                let items: Vec<String> = list_items(value)?
                    .into_iter()
                    .filter(|item| !removed.contains(item))
                    .collect();
                configs.insert(name.clone(), items.join(","));
            }
        }
    }
    validate_configs(&configs)?;
    Ok(configs)
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Where a config value comes from, as DescribeConfigs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic (CreateTopics, AlterConfigs).
    TopicOverride,
    /// The broker-wide default, set by the operator (flag, environment, file).
    StaticBroker,
    /// Herald's built-in default.
    Default,
}

/// Check a set of overrides: every name known, every value valid.
pub fn validate_configs(configs: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in configs {
        let spec = config_spec(name).ok_or_else(|| BrokerError::InvalidConfig {
            name: name.clone(),
            value: value.clone(),
            reason: "unknown or unsupported topic config".to_string(),
        })?;
        (spec.check)(value).map_err(|reason| BrokerError::InvalidConfig {
            name: name.clone(),
            value: value.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// One config value of a topic and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue {
    pub name: &'static str,
    pub value: String,
    /// Not a topic override (`source` says which default).
    pub is_default: bool,
    pub source: ConfigSource,
    pub doc: &'static str,
}

pub struct Topic {
    pub name: Arc<str>,
    pub id: uuid::Uuid,
    pub partitions: Vec<Arc<Partition>>,
    pub configs: BTreeMap<String, String>,
    /// The schema registry's validator, shared by every topic (see `schema_check.rs`).
    pub validator: crate::schema_check::ValidatorSlot,
    /// The transaction coordinator's states, for transactional produce checks.
    pub txns: Arc<crate::txn::TxnView>,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Result<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: self.name.to_string(),
                partition: index,
            })
    }

    /// The effective value of a config: the override, else Herald's default.
    pub fn config(&self, name: &str) -> Option<String> {
        if let Some(v) = self.configs.get(name) {
            return Some(v.clone());
        }
        config_spec(name).map(|s| s.default.to_string())
    }

    /// Every config with its effective value: the topic's override, else the broker's
    /// default (for settings the broker has), else Herald's default.
    pub fn all_configs(&self, broker: &BrokerConfig) -> Vec<ConfigValue> {
        TOPIC_CONFIGS
            .iter()
            .map(|spec| {
                let (value, source) = match self.configs.get(spec.name) {
                    Some(v) => (v.clone(), ConfigSource::TopicOverride),
                    None => match broker.topic_default(spec.name) {
                        Some((v, true)) => (v, ConfigSource::StaticBroker),
                        Some((v, false)) => (v, ConfigSource::Default),
                        None => (spec.default.to_string(), ConfigSource::Default),
                    },
                };
                ConfigValue {
                    name: spec.name,
                    value,
                    is_default: source != ConfigSource::TopicOverride,
                    source,
                    doc: spec.doc,
                }
            })
            .collect()
    }

    /// What retention may delete in this topic's partitions; None when its
    /// cleanup.policy does not include `delete` (compacted topics keep their data).
    pub fn retention_limits(&self, broker: &BrokerConfig) -> Option<RetentionLimits> {
        let policy = self.config("cleanup.policy").unwrap_or_default();
        if !split_list(&policy).iter().any(|p| p == "delete") {
            return None;
        }
        let effective = |name: &str| -> Option<i64> {
            let value = match self.configs.get(name) {
                Some(v) => v.clone(),
                None => broker.topic_default(name)?.0,
            };
            // Validated when set; a value that does not parse means "keep".
            value.parse::<i64>().ok().filter(|n| *n >= 0)
        };
        Some(RetentionLimits {
            retention_ms: effective("retention.ms"),
            retention_bytes: effective("retention.bytes").map(|n| n as u64),
        })
    }

    /// The codec `compression.type` stores batches in, with its level; None for
    /// `producer` (each batch keeps its own).
    pub fn stored_codec(&self) -> Option<crate::reencode::Codec> {
        let name = self.config("compression.type")?;
        let level_config = match name.as_str() {
            "gzip" => "compression.gzip.level",
            "lz4" => "compression.lz4.level",
            "zstd" => "compression.zstd.level",
            _ => "",
        };
        // Validated when set; -1 (gzip's default) and anything unparsable mean the
        // codec's default.
        let level = self
            .configs
            .get(level_config)
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|l| !(name == "gzip" && *l == -1));
        crate::reencode::Codec::from_config(&name, level)
    }

    pub fn log_append_time(&self) -> bool {
        self.config("message.timestamp.type").as_deref() == Some("LogAppendTime")
    }

    pub fn max_message_bytes(&self) -> usize {
        self.config("max.message.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1_048_588)
    }

    /// `cleanup.policy` includes `compact`.
    pub fn compacted(&self) -> bool {
        self.config("cleanup.policy")
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "compact"))
    }

    /// How long the cleaner keeps tombstones after it first cleaned them.
    pub fn delete_retention_ms(&self) -> i64 {
        self.config("delete.retention.ms")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(86_400_000)
    }

    pub fn min_cleanable_dirty_ratio(&self) -> f64 {
        self.config("min.cleanable.dirty.ratio")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.5)
    }

    /// Append a producer's batches to one partition, with this topic's rules
    /// (timestamp type, size limit, keys required when compacted) and the broker's
    /// bounds (a compressed batch may not decompress past `batch_decompressed_bytes_max`,
    /// no record may pass `record_bytes_max`). The bounds are checked by streaming the
    /// records through a small buffer: compressed produce costs decompression CPU, no memory.
    pub fn append(&self, partition: i32, records: &[u8], now_ms: i64) -> Result<PendingAppend> {
        let index = partition;
        let partition = self.partition(partition)?;
        let compacted = self.compacted();
        let bounded = records.len() <= self.max_message_bytes()
            && crate::records::needs_check(records, partition.bounds(), compacted);
        // Schema validation is off unless a topic override turns it on (the defaults are
        // false), so most appends skip even building the rules.
        let rules = if crate::schema_check::configured(&self.configs) {
            crate::schema_check::rules(|name| self.config(name))
        } else {
            Vec::new()
        };
        let validated = bounded || !rules.is_empty();
        if validated {
            // Validate first so a corrupt batch gets CORRUPT_MESSAGE, not a bound error.
            herald_log::validate_batches(records)?;
        }
        if bounded {
            crate::records::check_produced(records, partition.bounds(), compacted)?;
        }
        if !rules.is_empty() {
            crate::schema_check::check(&self.validator, &self.name, &rules, records)?;
        }
        // A topic with its own codec stores batches in it (checked above as they came).
        // A batch over max.message.bytes as it came is refused as it came (as Kafka
        // does), not recompressed first.
        let recompressed = match self.stored_codec() {
            Some(codec) if records.len() <= self.max_message_bytes() => {
                if !validated {
                    herald_log::validate_batches(records)?;
                }
                crate::reencode::recompress(
                    records,
                    codec,
                    partition.bounds().batch_decompressed_bytes_max,
                )?
            }
            _ => None,
        };
        partition.append_with(
            recompressed.as_deref().unwrap_or(records),
            self.log_append_time(),
            self.max_message_bytes(),
            now_ms,
            &|header| self.txns.verify_produce(&self.name, index, header),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders").is_ok());
        assert!(validate_topic_name("a.b_c-D9").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("with space").is_err());
        assert!(validate_topic_name("slash/es").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }

    #[test]
    fn configs_are_checked_by_name_and_value() {
        let ok = BTreeMap::from([
            ("retention.ms".to_string(), "1000".to_string()),
            ("cleanup.policy".to_string(), "delete,compact".to_string()),
        ]);
        assert!(validate_configs(&ok).is_ok());
        let unknown = BTreeMap::from([("retention.mss".to_string(), "1".to_string())]);
        assert!(matches!(
            validate_configs(&unknown),
            Err(BrokerError::InvalidConfig { .. })
        ));
        let bad = BTreeMap::from([("retention.ms".to_string(), "soon".to_string())]);
        assert!(validate_configs(&bad).is_err());
        let bad = BTreeMap::from([("segment.bytes".to_string(), "10".to_string())]);
        assert!(validate_configs(&bad).is_err());
    }

    #[test]
    fn codecs_levels_and_message_format_version_are_checked() {
        let ok = |name: &str, value: &str| {
            validate_configs(&BTreeMap::from([(name.to_string(), value.to_string())])).is_ok()
        };
        for codec in ["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"] {
            assert!(ok("compression.type", codec), "{codec}");
        }
        assert!(!ok("compression.type", "brotli"));
        assert!(ok("compression.gzip.level", "-1") && ok("compression.gzip.level", "9"));
        assert!(!ok("compression.gzip.level", "0") && !ok("compression.gzip.level", "10"));
        assert!(ok("compression.lz4.level", "17") && !ok("compression.lz4.level", "-1"));
        assert!(ok("compression.zstd.level", "-131072") && ok("compression.zstd.level", "22"));
        assert!(!ok("compression.zstd.level", "23"));
        for v in ["0.10.0", "2.8", "3.0-IV1", "0.11.0.2"] {
            assert!(ok("message.format.version", v), "{v}");
        }
        for v in ["", "3", "three", "3.0-IV", "1.2.3.4.5"] {
            assert!(!ok("message.format.version", v), "{v}");
        }
        let gzip_default = topic_with(&[("compression.type", "gzip")]);
        assert_eq!(
            gzip_default.stored_codec(),
            Some(crate::reencode::Codec {
                id: crate::reencode::CODEC_GZIP,
                level: None
            })
        );
        assert_eq!(topic_with(&[]).stored_codec(), None);
    }

    fn set(name: &str, value: &str) -> (String, ConfigOp) {
        (name.to_string(), ConfigOp::Set(value.to_string()))
    }

    #[test]
    fn config_ops_set_delete_append_and_subtract() {
        let current = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        let ops = [
            set("retention.bytes", "5000"),
            ("retention.ms".to_string(), ConfigOp::Delete),
            (
                "cleanup.policy".to_string(),
                ConfigOp::Append("compact".into()),
            ),
        ];
        let next = apply_config_ops(&current, &ops).unwrap();
        assert_eq!(
            next,
            BTreeMap::from([
                ("retention.bytes".to_string(), "5000".to_string()),
                ("cleanup.policy".to_string(), "delete,compact".to_string()),
            ])
        );
        let ops = [(
            "cleanup.policy".to_string(),
            ConfigOp::Subtract("delete".into()),
        )];
        let next = apply_config_ops(&next, &ops).unwrap();
        assert_eq!(next["cleanup.policy"], "compact");
        // Subtracting the last item leaves an invalid (empty) policy.
        let ops = [(
            "cleanup.policy".to_string(),
            ConfigOp::Subtract("compact".into()),
        )];
        assert!(matches!(
            apply_config_ops(&next, &ops),
            Err(BrokerError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn config_ops_refuse_unknown_names_bad_values_and_appends_to_scalars() {
        let none = BTreeMap::new();
        for ops in [
            vec![set("retention.mss", "1")],
            vec![("no.such".to_string(), ConfigOp::Delete)],
            vec![set("retention.ms", "-2")],
            vec![set("message.timestamp.type", "Yesterday")],
            vec![("retention.ms".to_string(), ConfigOp::Append("5".into()))],
            vec![("segment.ms".to_string(), ConfigOp::Subtract("5".into()))],
        ] {
            match apply_config_ops(&none, &ops) {
                Err(BrokerError::InvalidConfig { reason, .. }) => assert!(!reason.is_empty()),
                other => panic!("{ops:?}: {other:?}"),
            }
        }
    }

    fn topic_with(configs: &[(&str, &str)]) -> Topic {
        Topic {
            txns: Default::default(),
            name: Arc::from("t"),
            id: uuid::Uuid::nil(),
            partitions: Vec::new(),
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            validator: Default::default(),
        }
    }

    #[test]
    fn effective_configs_fall_back_to_broker_defaults_with_their_source() {
        let mut broker = BrokerConfig::new("x".into());
        broker.retention_bytes = 4096;
        broker.operator_topic_defaults.insert("retention.bytes");
        let topic = topic_with(&[("retention.ms", "60000")]);
        let by_name = |name: &str| {
            topic
                .all_configs(&broker)
                .into_iter()
                .find(|c| c.name == name)
                .unwrap()
        };
        let ms = by_name("retention.ms");
        assert_eq!(
            (ms.value.as_str(), ms.source),
            ("60000", ConfigSource::TopicOverride)
        );
        let bytes = by_name("retention.bytes");
        assert_eq!(
            (bytes.value.as_str(), bytes.source),
            ("4096", ConfigSource::StaticBroker)
        );
        assert!(bytes.is_default);
        let seg = by_name("segment.bytes");
        assert_eq!(seg.value, broker.log.segment_bytes_max.to_string());
        assert_eq!(seg.source, ConfigSource::Default);
        assert_eq!(
            topic.retention_limits(&broker),
            Some(RetentionLimits {
                retention_ms: Some(60_000),
                retention_bytes: Some(4096)
            })
        );
        let forever = topic_with(&[("retention.ms", "-1"), ("retention.bytes", "-1")]);
        assert_eq!(
            forever.retention_limits(&broker),
            Some(RetentionLimits::default())
        );
        let compacted = topic_with(&[("cleanup.policy", "compact")]);
        assert_eq!(compacted.retention_limits(&broker), None);
        let both = topic_with(&[("cleanup.policy", "compact,delete")]);
        assert!(both.retention_limits(&broker).is_some());
    }
}
