//! A subscription's settings, as stored in the meta store and sent by front ends.

use serde::{Deserialize, Serialize};

use super::filter::RecordFilter;
use super::state::Policy;
use crate::error::{BrokerError, Result};

/// Longest lease (visibility timeout) a subscription or an extension may ask for: 12 h.
pub const LEASE_MS_MAX: u64 = 12 * 60 * 60 * 1000;
/// Most tracked (unacked) records per partition a subscription may configure.
pub const MAX_UNACKED_MAX: usize = 100_000;
/// Longest last-error text kept from a nack.
pub const LAST_ERROR_CHARS_MAX: usize = 4_096;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionSettings {
    /// Visibility timeout: a leased record comes back after this long without an ack.
    pub lease_ms: u64,
    /// Failed deliveries (nacks, expired leases) before dead-lettering.
    pub max_deliveries: u32,
    pub backoff_base_ms: u64,
    pub backoff_factor: f64,
    pub backoff_max_ms: u64,
    /// Up to this fraction of the delay is added at random (0 = none).
    pub backoff_jitter: f64,
    /// None means `<topic>.<subscription>.dlq`, created on first use.
    pub dead_letter_topic: Option<String>,
    pub ordered_by_key: bool,
    pub start: StartPosition,
    /// Tracked records per partition; receive hands out nothing more beyond it.
    pub max_unacked: usize,
    /// Only records that pass are delivered (None: all); see `filter.rs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<RecordFilter>,
    /// Dead letters become link events of this event stream instead of copies in a
    /// dead-letter topic (an event store persistent subscription's parked stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<String>,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            lease_ms: 30_000,
            max_deliveries: 5,
            backoff_base_ms: 1_000,
            backoff_factor: 2.0,
            backoff_max_ms: 300_000,
            backoff_jitter: 0.2,
            dead_letter_topic: None,
            ordered_by_key: false,
            start: StartPosition::Earliest,
            max_unacked: 1_000,
            filter: None,
            dead_letter_stream: None,
        }
    }
}

impl SubscriptionSettings {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(BrokerError::InvalidSubscription(m.to_string()));
        if self.lease_ms == 0 || self.lease_ms > LEASE_MS_MAX {
            return bad("lease_ms must be 1 to 43200000 (12 hours)");
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1");
        }
        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            return bad("backoff_factor must be >= 1");
        }
        if !(0.0..=1.0).contains(&self.backoff_jitter) {
            return bad("backoff_jitter must be between 0 and 1");
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return bad("backoff_max_ms must be >= backoff_base_ms");
        }
        if self.max_unacked == 0 || self.max_unacked > MAX_UNACKED_MAX {
            return bad("max_unacked must be 1 to 100000");
        }
        if let Some(t) = &self.dead_letter_topic {
            crate::topic::validate_topic_name(t)?;
        }
        if let Some(f) = &self.filter {
            f.compile()?;
        }
        Ok(())
    }

    pub fn policy(&self) -> Policy {
        Policy {
            lease_ms: self.lease_ms as i64,
            max_deliveries: self.max_deliveries,
            max_unacked: self.max_unacked,
            ordered_by_key: self.ordered_by_key,
        }
    }

    pub fn dead_letter_topic(&self, topic: &str, name: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{topic}.{name}.dlq"))
    }

    /// The backoff before retry number `failures` (1 = after the first failure), without
    /// jitter: base * factor^(failures-1), capped at the max.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        let exp = self
            .backoff_factor
            .powi(failures.saturating_sub(1).min(64) as i32);
        let ms = (self.backoff_base_ms as f64 * exp).min(self.backoff_max_ms as f64);
        ms as u64
    }

    /// When to retry after `failures` failures: the backoff plus up to `jitter` of it.
    pub fn retry_at_ms(&self, now_ms: i64, failures: u32) -> i64 {
        let base = self.backoff_ms(failures);
        let extra = if self.backoff_jitter > 0.0 {
            (base as f64 * self.backoff_jitter * rand::random::<f64>()) as u64
        } else {
            0
        };
        now_ms.saturating_add(base.saturating_add(extra).min(self.backoff_max_ms) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_factor_up_to_the_max_and_jitter_only_adds() {
        let s = SubscriptionSettings {
            backoff_base_ms: 100,
            backoff_factor: 3.0,
            backoff_max_ms: 1_000,
            backoff_jitter: 0.5,
            ..Default::default()
        };
        assert_eq!(
            (1..=4).map(|f| s.backoff_ms(f)).collect::<Vec<_>>(),
            vec![100, 300, 900, 1_000]
        );
        for f in 1..=4 {
            for _ in 0..100 {
                let wait = s.retry_at_ms(0, f);
                assert!(
                    wait >= s.backoff_ms(f) as i64 && wait <= 1_000,
                    "{f}: {wait}"
                );
            }
        }
        assert!(s.validate().is_ok());
        let bad = SubscriptionSettings {
            backoff_factor: 0.5,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
