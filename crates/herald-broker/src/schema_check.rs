//! Schemas enforced on produce. A topic with `confluent.value.schema.validation` (or
//! `.key.`) set to `true` refuses, on every protocol, a record whose value (key) does not
//! start with the Confluent wire format's magic byte and the id of a schema registered
//! under the topic's subject; `herald.schema.validation.level=payload` also decodes the
//! payload with that schema. The checks need the schema registry, which sits above the
//! broker: it hands the broker a [`RecordValidator`] at start-up, and a topic asks it
//! through the one slot every topic shares ([`ValidatorSlot`]). With validation on and no
//! registry, every record is refused (said in the error), as Confluent Server refuses
//! what it cannot check.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::error::{BrokerError, Result};

pub const VALUE_VALIDATION: &str = "confluent.value.schema.validation";
pub const KEY_VALIDATION: &str = "confluent.key.schema.validation";
pub const VALUE_STRATEGY: &str = "confluent.value.subject.name.strategy";
pub const KEY_STRATEGY: &str = "confluent.key.subject.name.strategy";
pub const LEVEL: &str = "herald.schema.validation.level";

/// How a record's subject is named (Confluent's subject name strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectStrategy {
    /// `<topic>-key` / `<topic>-value`.
    TopicName,
    /// The record type's full name.
    RecordName,
    /// `<topic>-<record type's full name>`.
    TopicRecordName,
}

impl SubjectStrategy {
    /// The short name or Confluent's class name.
    pub fn parse(text: &str) -> Option<SubjectStrategy> {
        let short = text.rsplit('.').next().unwrap_or(text);
        match short {
            "TopicNameStrategy" => Some(SubjectStrategy::TopicName),
            "RecordNameStrategy" => Some(SubjectStrategy::RecordName),
            "TopicRecordNameStrategy" => Some(SubjectStrategy::TopicRecordName),
            _ => None,
        }
    }
}

/// What one record is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub is_key: bool,
    pub strategy: SubjectStrategy,
    /// Decode the payload with the schema, not only check its id.
    pub payload: bool,
}

/// The registry's side: Ok, or why the bytes are refused.
pub trait RecordValidator: Send + Sync {
    fn validate(
        &self,
        topic: &str,
        rule: &Rule,
        bytes: Option<&[u8]>,
    ) -> std::result::Result<(), String>;
    /// A refusal happened on `topic` (for the registry's metrics).
    fn refused(&self, topic: &str);
}

/// The validator every topic asks, set once the registry is up.
pub type ValidatorSlot = Arc<OnceLock<Arc<dyn RecordValidator>>>;

/// Whether a topic's overrides set either validation config (their defaults are off).
pub fn configured(overrides: &std::collections::BTreeMap<String, String>) -> bool {
    overrides.contains_key(VALUE_VALIDATION) || overrides.contains_key(KEY_VALIDATION)
}

/// The rules a topic's configs ask for (none: nothing to check).
pub fn rules(config: impl Fn(&str) -> Option<String>) -> Vec<Rule> {
    let on = |name: &str| config(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let strategy = |name: &str| {
        config(name)
            .and_then(|v| SubjectStrategy::parse(&v))
            .unwrap_or(SubjectStrategy::TopicName)
    };
    let payload = config(LEVEL).is_some_and(|v| v.eq_ignore_ascii_case("payload"));
    let mut out = Vec::new();
    if on(KEY_VALIDATION) {
        out.push(Rule {
            is_key: true,
            strategy: strategy(KEY_STRATEGY),
            payload,
        });
    }
    if on(VALUE_VALIDATION) {
        out.push(Rule {
            is_key: false,
            strategy: strategy(VALUE_STRATEGY),
            payload,
        });
    }
    out
}

/// Check every record of produced `batches` against `rules`; refused records are an
/// `InvalidRecords` naming each (its index in the batch and why).
pub fn check(slot: &ValidatorSlot, topic: &str, rules: &[Rule], batches: &[u8]) -> Result<()> {
    let Some(validator) = slot.get() else {
        return Err(BrokerError::InvalidRecord(format!(
            "topic {topic} validates schemas ({VALUE_VALIDATION} / {KEY_VALIDATION}) but the \
             schema registry is off"
        )));
    };
    let mut buf = Bytes::copy_from_slice(batches);
    let sets = RecordBatchDecoder::decode_all(&mut buf)
        .map_err(|e| BrokerError::InvalidRecord(format!("cannot decode the batch: {e}")))?;
    // Every record is checked and each refused one listed (KIP-467), so a client fails
    // only those; a record is listed once, for the first rule it breaks.
    let mut refused = crate::error::RecordErrors::default();
    for (index, record) in sets.iter().flat_map(|s| s.records.iter()).enumerate() {
        for rule in rules {
            if let Err(why) = validator.validate(topic, rule, part(record, rule)) {
                validator.refused(topic);
                refused.push(
                    i32::try_from(index).unwrap_or(i32::MAX),
                    format!("its {} {why}", if rule.is_key { "key" } else { "value" }),
                );
                break;
            }
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(BrokerError::InvalidRecords(refused))
    }
}

fn part<'a>(record: &'a Record, rule: &Rule) -> Option<&'a [u8]> {
    if rule.is_key {
        record.key.as_deref()
    } else {
        record.value.as_deref()
    }
}

/// The checks on a config's value.
pub(crate) fn check_bool(v: &str) -> std::result::Result<(), String> {
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        Ok(())
    } else {
        Err("must be true or false".to_string())
    }
}

pub(crate) fn check_strategy(v: &str) -> std::result::Result<(), String> {
    SubjectStrategy::parse(v).map(|_| ()).ok_or_else(|| {
        "must be TopicNameStrategy, RecordNameStrategy or TopicRecordNameStrategy (or \
         Confluent's class name for one)"
            .to_string()
    })
}

pub(crate) fn check_level(v: &str) -> std::result::Result<(), String> {
    match v {
        "id" | "payload" => Ok(()),
        _ => Err(
            "must be id (the schema id is registered under the subject) or payload \
                  (also decoded with the schema)"
                .to_string(),
        ),
    }
}
