//! Which records of a topic a subscription takes: all of them, or those whose key (or
//! one header) is a given text, starts with a prefix or matches a regular expression.
//! Records that do not pass are stepped over as the window fills, never tracked; an
//! event store's persistent subscription to one stream, a category or an event type is
//! a filtered subscription of the event store topic.

use kafka_protocol::records::Record;
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// Longest regular expression a filter may carry, in bytes.
pub const FILTER_REGEX_BYTES_MAX: usize = 1_024;
/// Most prefixes a filter may carry.
pub const FILTER_PREFIXES_MAX: usize = 1_000;
/// Backtracking steps one match may take; a costlier match does not pass.
const BACKTRACK_LIMIT: usize = 100_000;

/// What a filter looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterField {
    /// The record's key, as UTF-8.
    Key,
    /// The value of the named header, as UTF-8.
    Header(String),
}

/// A record passes when the field equals `exact`, starts with one of `prefixes`, or
/// matches `regex`; a filter with none of the three passes everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFilter {
    pub on: FilterField,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub regex: String,
}

impl RecordFilter {
    /// Records whose key is exactly `key`.
    pub fn key(key: &str) -> RecordFilter {
        RecordFilter {
            on: FilterField::Key,
            exact: Some(key.to_string()),
            prefixes: Vec::new(),
            regex: String::new(),
        }
    }

    /// The filter ready to run; a bad or oversized one is an invalid subscription.
    pub fn compile(&self) -> Result<CompiledFilter> {
        let bad = |m: String| BrokerError::InvalidSubscription(m);
        if self.prefixes.len() > FILTER_PREFIXES_MAX {
            return Err(bad(format!(
                "{} filter prefixes; at most {FILTER_PREFIXES_MAX}",
                self.prefixes.len()
            )));
        }
        if self.regex.len() > FILTER_REGEX_BYTES_MAX {
            return Err(bad(format!(
                "filter expression of {} bytes; at most {FILTER_REGEX_BYTES_MAX}",
                self.regex.len()
            )));
        }
        let regex = if self.regex.is_empty() {
            None
        } else {
            Some(
                fancy_regex::RegexBuilder::new(&self.regex)
                    .backtrack_limit(BACKTRACK_LIMIT)
                    .build()
                    .map_err(|e| bad(format!("bad filter expression {:?}: {e}", self.regex)))?,
            )
        };
        Ok(CompiledFilter {
            filter: self.clone(),
            regex,
        })
    }
}

/// A [`RecordFilter`] with its expression compiled.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    filter: RecordFilter,
    regex: Option<fancy_regex::Regex>,
}

impl CompiledFilter {
    pub fn passes(&self, record: &Record) -> bool {
        let text = match &self.filter.on {
            FilterField::Key => record.key.as_deref(),
            FilterField::Header(name) => record
                .headers
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .and_then(|(_, v)| v.as_deref()),
        };
        let Some(text) = text.and_then(|t| std::str::from_utf8(t).ok()) else {
            return false;
        };
        let f = &self.filter;
        if f.exact.is_none() && f.prefixes.is_empty() && self.regex.is_none() {
            return true;
        }
        f.exact.as_deref() == Some(text)
            || f.prefixes.iter().any(|p| text.starts_with(p.as_str()))
            // An expression too costly to decide does not match.
            || self
                .regex
                .as_ref()
                .is_some_and(|r| r.is_match(text).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::protocol::StrBytes;

    fn record(key: &str, header: (&str, &str)) -> Record {
        let mut headers = kafka_protocol::indexmap::IndexMap::new();
        headers.insert(
            StrBytes::from_string(header.0.to_string()),
            Some(Bytes::from(header.1.to_string())),
        );
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from(key.to_string())),
            value: None,
            headers,
            delete_horizon: false,
        }
    }

    #[test]
    fn exact_prefix_and_regex_each_let_a_record_through() {
        let r = record("orders-1", ("es-type", "OrderPlaced"));
        let pass = |f: RecordFilter| f.compile().unwrap().passes(&r);
        assert!(pass(RecordFilter::key("orders-1")));
        assert!(!pass(RecordFilter::key("orders-2")));
        let by_type = |exact: Option<&str>, prefixes: &[&str], regex: &str| RecordFilter {
            on: FilterField::Header("es-type".into()),
            exact: exact.map(str::to_string),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            regex: regex.to_string(),
        };
        assert!(pass(by_type(None, &[], "")), "an empty filter passes all");
        assert!(pass(by_type(Some("OrderPlaced"), &[], "")));
        assert!(pass(by_type(None, &["Order"], "")));
        assert!(!pass(by_type(None, &["Payment"], "")));
        assert!(pass(by_type(None, &["Payment"], "^Order.*d$")));
        assert!(!pass(by_type(None, &[], "^Payment")));
        let missing = RecordFilter {
            on: FilterField::Header("es-nope".into()),
            exact: None,
            prefixes: Vec::new(),
            regex: String::new(),
        };
        assert!(!pass(missing), "a record without the header does not pass");
        assert!(by_type(None, &[], "(").compile().is_err());
        assert!(by_type(None, &[], &"a".repeat(2_000)).compile().is_err());
    }
}
