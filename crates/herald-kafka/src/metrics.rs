//! What the Kafka front end measures about itself: request latency per API and the
//! connections it holds. Kept as live prometheus-client metrics (an atomic add or a
//! histogram observation per request); the HTTP front end's `/metrics` renders them
//! through the hook the binary wires up.

use std::fmt::Write;
use std::time::Instant;

use kafka_protocol::messages::ApiKey;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Smallest bucket bound of the Kafka request latency histogram: 50 µs (a metadata or
/// heartbeat request on loopback takes tens of microseconds).
pub const LATENCY_BUCKET_START_SECS: f64 = 0.000_05;
/// Factor between consecutive bucket bounds.
pub const LATENCY_BUCKET_FACTOR: f64 = 2.0;
/// Buckets: 50 µs .. ~26 s, then +Inf (long-poll fetches wait up to their max wait).
pub const LATENCY_BUCKETS: u16 = 20;

/// A Kafka API named as Kafka names it (`Produce`, `Fetch`, ...), written only when a
/// scrape encodes it, so a request pays for no string.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ApiName(pub i16);

impl EncodeLabelValue for ApiName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match ApiKey::try_from(self.0) {
            Ok(key) => write!(encoder, "{key:?}"),
            Err(()) => write!(encoder, "Unknown{}", self.0),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: ApiName,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_BUCKET_START_SECS,
        LATENCY_BUCKET_FACTOR,
        LATENCY_BUCKETS,
    ))
}

/// Shared by the accept loop and every connection (the families are `Arc`s inside).
#[derive(Clone, Debug)]
pub struct KafkaMetrics {
    latency: Family<ApiLabels, Histogram, fn() -> Histogram>,
    connections: Gauge,
    accepted: Counter,
    refused: Counter,
    closed_idle: Counter,
    closed_send_timeout: Counter,
}

impl Default for KafkaMetrics {
    fn default() -> Self {
        KafkaMetrics {
            latency: Family::new_with_constructor(latency_histogram),
            connections: Gauge::default(),
            accepted: Counter::default(),
            refused: Counter::default(),
            closed_idle: Counter::default(),
            closed_send_timeout: Counter::default(),
        }
    }
}

impl KafkaMetrics {
    /// Add these metrics (handles onto the live values) to a registry being rendered.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_kafka_request_duration_seconds",
            "Time from a Kafka request's arrival to its response being ready to write, per \
             API (a produce includes its fsync under acks=all; a fetch its long-poll wait)",
            self.latency.clone(),
        );
        registry.register(
            "herald_kafka_connections",
            "Kafka client connections open now",
            self.connections.clone(),
        );
        registry.register(
            "herald_kafka_connections_accepted",
            "Kafka client connections accepted since the broker started",
            self.accepted.clone(),
        );
        registry.register(
            "herald_kafka_connections_refused",
            "Kafka client connections refused because connections_max (or \
             connections_max_per_ip from one address) were open",
            self.refused.clone(),
        );
        registry.register(
            "herald_kafka_connections_closed_idle",
            "Kafka connections closed after connections_max_idle_ms with nothing in flight",
            self.closed_idle.clone(),
        );
        registry.register(
            "herald_kafka_connections_closed_send_timeout",
            "Kafka connections closed because a response made no progress into the socket \
             for send_timeout_ms (the client stopped reading)",
            self.closed_send_timeout.clone(),
        );
    }

    pub(crate) fn observe(&self, api_key: i16, since: Instant) {
        self.latency
            .get_or_create(&ApiLabels {
                api: ApiName(api_key),
            })
            .observe(since.elapsed().as_secs_f64());
    }

    /// Counts a connection as open until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        self.accepted.inc();
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    pub(crate) fn connection_refused(&self) {
        self.refused.inc();
    }

    pub(crate) fn closed_idle(&self) {
        self.closed_idle.inc();
    }

    pub(crate) fn closed_send_timeout(&self) {
        self.closed_send_timeout.inc();
    }
}

/// Decrements the open-connections gauge when the connection's task ends.
pub(crate) struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn apis_are_named_connections_counted_and_latency_observed() {
        let metrics = KafkaMetrics::default();
        metrics.observe(0, Instant::now());
        metrics.observe(1, Instant::now());
        metrics.observe(999, Instant::now());
        let guard = metrics.connection_opened();
        let _second = metrics.connection_opened();
        drop(guard);
        metrics.connection_refused();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "herald_kafka_request_duration_seconds_count{api=\"Produce\"} 1",
            "herald_kafka_request_duration_seconds_count{api=\"Fetch\"} 1",
            "herald_kafka_request_duration_seconds_count{api=\"Unknown999\"} 1",
            "herald_kafka_connections 1",
            "herald_kafka_connections_accepted_total 2",
            "herald_kafka_connections_refused_total 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
