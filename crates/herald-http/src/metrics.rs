//! `/metrics`: Prometheus text, built at scrape time from the broker's own state, so
//! nothing on the produce or fetch path pays for it. Names follow kafka_exporter where
//! one fits (`kafka_consumergroup_lag`, `kafka_topic_partition_current_offset`, ...),
//! so existing dashboards and alerts work; Herald's own figures are `herald_*`.

use axum::http::Method;
use herald_broker::Broker;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter family (the exposition adds `_total` to the name).
fn counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

/// Labels of an HTTP request's latency: the method and the route pattern it matched
/// (`/topics/{name}/records`, not the concrete path, so the label set stays bounded;
/// requests that matched no route are `unmatched`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
}

/// Smallest bucket bound of the request latency histograms, in seconds (100 µs).
pub const LATENCY_BUCKET_START_SECS: f64 = 0.0001;
/// Factor between consecutive latency bucket bounds.
pub const LATENCY_BUCKET_FACTOR: f64 = 4.0;
/// Number of latency buckets (100 µs .. ~26 s, then +Inf).
pub const LATENCY_BUCKETS: u16 = 10;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_BUCKET_START_SECS,
        LATENCY_BUCKET_FACTOR,
        LATENCY_BUCKETS,
    ))
}

/// Request latency per HTTP route; lives as long as the server (unlike the scrape-time
/// registry below) and is shared with every handler through `AppState`.
pub type RouteLatency = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub fn route_latency() -> RouteLatency {
    Family::new_with_constructor(latency_histogram)
}

/// A method as a static label value (the standard ones by name, anything else `OTHER`).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The HTTP listener's connections: shared by the accept loop and every connection
/// (the metrics are `Arc`s inside), shown through a `MetricsHook`.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    refused: Counter,
    closed_header_timeout: Counter,
    closed_idle: Counter,
    closed_send_timeout: Counter,
    body_timeouts: Counter,
}

impl ConnectionMetrics {
    /// Add these metrics (handles onto the live values) to a registry being rendered.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_http_connections_open",
            "HTTP client connections open now",
            self.open.clone(),
        );
        registry.register(
            "herald_http_connections_accepted",
            "HTTP client connections accepted since the broker started",
            self.accepted.clone(),
        );
        registry.register(
            "herald_http_connections_refused",
            "HTTP client connections refused because http_connections_max (or \
             connections_max_per_ip from one address) were open",
            self.refused.clone(),
        );
        registry.register(
            "herald_http_connections_closed_header_timeout",
            "HTTP connections closed because a request head did not arrive whole within \
             http_header_read_timeout_ms",
            self.closed_header_timeout.clone(),
        );
        registry.register(
            "herald_http_connections_closed_idle",
            "HTTP keep-alive connections closed after http_keep_alive_idle_ms with no \
             request in progress",
            self.closed_idle.clone(),
        );
        registry.register(
            "herald_http_connections_closed_send_timeout",
            "HTTP connections closed because a response made no progress into the socket \
             for send_timeout_ms (the client stopped reading)",
            self.closed_send_timeout.clone(),
        );
        registry.register(
            "herald_http_requests_body_timeout",
            "HTTP requests answered 408 because their body did not arrive within \
             http_body_read_timeout_ms (the connection is then closed)",
            self.body_timeouts.clone(),
        );
    }

    /// Counts a connection as open until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> OpenConnection {
        self.accepted.inc();
        self.open.inc();
        OpenConnection(self.open.clone())
    }

    pub(crate) fn connection_refused(&self) {
        self.refused.inc();
    }

    pub(crate) fn closed_header_timeout(&self) {
        self.closed_header_timeout.inc();
    }

    pub(crate) fn closed_idle(&self) {
        self.closed_idle.inc();
    }

    pub(crate) fn closed_send_timeout(&self) {
        self.closed_send_timeout.inc();
    }

    pub(crate) fn body_timeout(&self) {
        self.body_timeouts.inc();
    }
}

/// One open connection in `herald_http_connections_open`.
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Adds another component's live metrics to a scrape's registry (the binary wires the
/// Kafka front end's request latencies and connection counts in this way, so this crate
/// does not depend on that one).
pub type MetricsHook = std::sync::Arc<dyn Fn(&mut Registry) + Send + Sync>;

/// The exposition text for everything the broker knows now, the HTTP request latencies
/// recorded so far, and whatever the hooks add.
pub fn render(
    broker: &Broker,
    http_latency: &RouteLatency,
    hooks: &[MetricsHook],
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    for hook in hooks {
        hook(&mut registry);
    }
    registry.register(
        "herald_http_request_duration_seconds",
        "Time from an HTTP request's arrival to its response head, per method and route \
         (for an SSE tail: until the stream starts)",
        http_latency.clone(),
    );
    let partitions = gauges(
        &mut registry,
        "kafka_topic_partitions",
        "Number of partitions of a topic",
    );
    let current = gauges(
        &mut registry,
        "kafka_topic_partition_current_offset",
        "High watermark of a partition: the offset the next committed record gets",
    );
    let oldest = gauges(
        &mut registry,
        "kafka_topic_partition_oldest_offset",
        "Log start offset of a partition: the oldest offset still readable",
    );
    let size = gauges(
        &mut registry,
        "herald_partition_size_bytes",
        "Bytes of log segments a partition keeps on disk",
    );
    let appended = counters(
        &mut registry,
        "herald_partition_appended_bytes",
        "Bytes of record batches appended to a partition since the broker started",
    );
    let appended_records = counters(
        &mut registry,
        "herald_partition_appended_records",
        "Records appended to a partition since the broker started (Kafka and HTTP producers)",
    );
    let read_bytes = counters(
        &mut registry,
        "herald_partition_read_bytes",
        "Bytes of record batches served from a partition (Kafka fetches, HTTP reads and tails) since the broker started",
    );
    let read_records = counters(
        &mut registry,
        "herald_partition_read_records",
        "Records in the batches served from a partition since the broker started (whole batches)",
    );
    let group_offset = gauges(
        &mut registry,
        "kafka_consumergroup_current_offset",
        "Committed offset of a consumer group on a partition",
    );
    let group_lag = gauges(
        &mut registry,
        "kafka_consumergroup_lag",
        "Records a consumer group has not committed yet on a partition (high watermark - committed)",
    );
    let group_members = gauges(
        &mut registry,
        "kafka_consumergroup_members",
        "Members of a consumer group",
    );

    for topic in broker.topics() {
        let name = topic.name.to_string();
        partitions
            .get_or_create(&vec![("topic", name.clone())])
            .set(topic.partitions.len() as i64);
        for p in &topic.partitions {
            let labels = vec![("topic", name.clone()), ("partition", p.index.to_string())];
            current.get_or_create(&labels).set(p.high_watermark());
            oldest.get_or_create(&labels).set(p.log_start_offset());
            size.get_or_create(&labels).set(p.size_bytes() as i64);
            appended.get_or_create(&labels).inc_by(p.appended_bytes());
            appended_records
                .get_or_create(&labels)
                .inc_by(p.appended_records());
            read_bytes.get_or_create(&labels).inc_by(p.read_bytes());
            read_records.get_or_create(&labels).inc_by(p.read_records());
        }
    }
    subscription_metrics(broker, &mut registry);
    memory_metrics(broker, &mut registry);
    let skipped = Counter::<u64>::default();
    skipped.inc_by(broker.oversized_batches_skipped());
    registry.register(
        "herald_batches_skipped_oversized",
        "Times a reader (HTTP read or tail, work queue, cleaner, ListOffsets by timestamp) \
         stepped over a stored batch that decompresses past batch_decompressed_bytes_max",
        skipped,
    );
    for group in broker.groups.list() {
        if let Some(description) = broker.groups.describe(&group.group_id) {
            group_members
                .get_or_create(&vec![("consumergroup", group.group_id.clone())])
                .set(description.members.len() as i64);
        }
        for p in broker.group_lag(&group.group_id) {
            let labels = vec![
                ("consumergroup", group.group_id.clone()),
                ("topic", p.topic),
                ("partition", p.partition.to_string()),
            ];
            group_offset.get_or_create(&labels).set(p.committed);
            if let Some(lag) = p.lag {
                group_lag.get_or_create(&labels).set(lag);
            }
        }
    }
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// The broker-wide memory budget of request and response buffers, per pool.
fn memory_metrics(broker: &Broker, registry: &mut Registry) {
    let total = gauges(
        registry,
        "herald_memory_budget_bytes",
        "Bytes of request or response buffers all listeners may hold (half of \
         memory_budget_bytes each)",
    );
    let used = gauges(
        registry,
        "herald_memory_budget_used_bytes",
        "Bytes of the memory budget held now by requests being read or handled, or by \
         responses being built or written",
    );
    let waits = counters(
        registry,
        "herald_memory_budget_waits",
        "Times a socket was not read because the request pool was used up",
    );
    let pools = broker.memory();
    for (name, pool) in [
        ("requests", &pools.requests),
        ("responses", &pools.responses),
    ] {
        let labels = vec![("pool", name.to_string())];
        total
            .get_or_create(&labels)
            .set(i64::try_from(pool.total()).unwrap_or(i64::MAX));
        used.get_or_create(&labels)
            .set(i64::try_from(pool.used()).unwrap_or(i64::MAX));
        waits.get_or_create(&labels).inc_by(pool.waits());
    }
}

/// Work-queue subscriptions: read from the broker at scrape time like the partitions.
fn subscription_metrics(broker: &Broker, registry: &mut Registry) {
    let depth = gauges(
        registry,
        "herald_subscription_depth",
        "Records a subscription could hand out now (including ones not read from the log yet)",
    );
    let in_flight = gauges(
        registry,
        "herald_subscription_in_flight",
        "Records leased to consumers and not yet acked, nacked or expired",
    );
    let delayed = gauges(
        registry,
        "herald_subscription_delayed",
        "Records waiting for their deliver-at time or a retry backoff",
    );
    let dlq_depth = gauges(
        registry,
        "herald_subscription_dlq_depth",
        "Records in a subscription's dead-letter topic not redriven yet",
    );
    let redeliveries = counters(
        registry,
        "herald_subscription_redeliveries",
        "Deliveries after a record's first (retries after nacks, expired leases, releases)",
    );
    let dead_lettered = counters(
        registry,
        "herald_subscription_dead_lettered",
        "Records a subscription moved to its dead-letter topic",
    );
    let expired = counters(
        registry,
        "herald_subscription_expired_leases",
        "Leases that ran out without an ack (each a failed delivery)",
    );
    for (topic, name, settings) in broker.list_subscriptions() {
        let Ok(stats) = broker.subscription_stats(&topic, &name) else {
            continue;
        };
        let labels = vec![("topic", topic.clone()), ("subscription", name.clone())];
        depth.get_or_create(&labels).set(stats.depth as i64);
        in_flight.get_or_create(&labels).set(stats.in_flight as i64);
        delayed.get_or_create(&labels).set(stats.delayed as i64);
        redeliveries
            .get_or_create(&labels)
            .inc_by(stats.redeliveries);
        dead_lettered
            .get_or_create(&labels)
            .inc_by(stats.dead_lettered);
        expired.get_or_create(&labels).inc_by(stats.expired_leases);
        if let Ok(d) = broker.dead_letter_depth(&settings.dead_letter_topic(&topic, &name)) {
            dlq_depth.get_or_create(&labels).set(d as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_are_named_and_others_are_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_label(&custom), "OTHER");
    }

    #[test]
    fn connection_metrics_follow_opens_and_closes() {
        let metrics = ConnectionMetrics::default();
        let open = metrics.connection_opened();
        let _still_open = metrics.connection_opened();
        drop(open);
        metrics.connection_refused();
        metrics.closed_idle();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "herald_http_connections_open 1",
            "herald_http_connections_accepted_total 2",
            "herald_http_connections_refused_total 1",
            "herald_http_connections_closed_idle_total 1",
            "herald_http_connections_closed_header_timeout_total 0",
            "herald_http_requests_body_timeout_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn latency_buckets_span_100us_to_seconds() {
        let bounds: Vec<f64> = exponential_buckets(
            LATENCY_BUCKET_START_SECS,
            LATENCY_BUCKET_FACTOR,
            LATENCY_BUCKETS,
        )
        .collect();
        assert_eq!(bounds.len(), usize::from(LATENCY_BUCKETS));
        assert!(bounds[0] <= 0.0001 && *bounds.last().unwrap() > 10.0);
    }
}
