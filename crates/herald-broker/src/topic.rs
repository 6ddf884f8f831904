//! Topics: a name, a stable id, partitions, and per-topic configs.

use std::collections::BTreeMap;
use std::sync::Arc;

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
        "delete, compact, or compact,delete (compact keeps the latest record per key; see README)",
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
        "how long to keep data (stored; enforcement arrives with retention)",
        long_at_least(-1)
    ),
    spec!(
        "retention.bytes",
        "-1",
        "how many bytes per partition to keep (stored; enforcement arrives with retention)",
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
            Ok(n) if (14..=i64::from(u32::MAX)).contains(&n) => Ok(()),
            _ => Err("must be an integer between 14 and 4294967295".to_string()),
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
        "stored batches keep the producer's codec (only 'producer' is supported)",
        one_of(&["producer"])
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
    pub is_default: bool,
    pub doc: &'static str,
}

pub struct Topic {
    pub name: Arc<str>,
    pub id: uuid::Uuid,
    pub partitions: Vec<Arc<Partition>>,
    pub configs: BTreeMap<String, String>,
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

    pub fn all_configs(&self) -> Vec<ConfigValue> {
        TOPIC_CONFIGS
            .iter()
            .map(|spec| match self.configs.get(spec.name) {
                Some(v) => ConfigValue {
                    name: spec.name,
                    value: v.clone(),
                    is_default: false,
                    doc: spec.doc,
                },
                None => ConfigValue {
                    name: spec.name,
                    value: spec.default.to_string(),
                    is_default: true,
                    doc: spec.doc,
                },
            })
            .collect()
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
    /// (timestamp type, size limit, and keys required when compacted).
    pub fn append(&self, partition: i32, records: &[u8], now_ms: i64) -> Result<PendingAppend> {
        let partition = self.partition(partition)?;
        if self.compacted() && records.len() <= self.max_message_bytes() {
            // Validate first so a corrupt batch gets CORRUPT_MESSAGE, not a key error.
            herald_log::validate_batches(records)?;
            crate::records::require_keys(records)?;
        }
        partition.append(
            records,
            self.log_append_time(),
            self.max_message_bytes(),
            now_ms,
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
}
