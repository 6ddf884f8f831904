//! AMQP counters for `/metrics`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct AmqpMetrics(Arc<Inner>);

#[derive(Default)]
struct Inner {
    connections: Gauge,
    connections_refused: Counter,
    channels: Gauge,
    consumers: Gauge,
    published: Counter,
    unroutable: Counter,
    delivered: Counter,
    redelivered: Counter,
    acked: Counter,
    requeued: Counter,
    rejected: Counter,
    exceptions: Counter,
}

/// Decrements its gauge when dropped.
pub struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl AmqpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.0;
        registry.register(
            "herald_amqp_connections",
            "AMQP connections open",
            m.connections.clone(),
        );
        registry.register(
            "herald_amqp_connections_refused",
            "AMQP connections refused by a connection limit",
            m.connections_refused.clone(),
        );
        registry.register(
            "herald_amqp_channels",
            "AMQP channels open",
            m.channels.clone(),
        );
        registry.register(
            "herald_amqp_consumers",
            "AMQP consumers (basic.consume) active",
            m.consumers.clone(),
        );
        registry.register(
            "herald_amqp_published",
            "Messages published over AMQP",
            m.published.clone(),
        );
        registry.register(
            "herald_amqp_unroutable",
            "Messages published over AMQP that no queue took",
            m.unroutable.clone(),
        );
        registry.register(
            "herald_amqp_delivered",
            "Messages delivered over AMQP (deliver and get-ok)",
            m.delivered.clone(),
        );
        registry.register(
            "herald_amqp_redelivered",
            "Deliveries with the redelivered flag",
            m.redelivered.clone(),
        );
        registry.register(
            "herald_amqp_acked",
            "Deliveries acknowledged",
            m.acked.clone(),
        );
        registry.register(
            "herald_amqp_requeued",
            "Deliveries nacked or rejected with requeue, or returned by a closed channel",
            m.requeued.clone(),
        );
        registry.register(
            "herald_amqp_rejected",
            "Deliveries nacked or rejected without requeue",
            m.rejected.clone(),
        );
        registry.register(
            "herald_amqp_exceptions",
            "Channel and connection exceptions sent",
            m.exceptions.clone(),
        );
    }

    pub fn connection_refused(&self) {
        self.0.connections_refused.inc();
    }
    pub fn connection(&self) -> Held {
        self.0.connections.inc();
        Held(self.0.connections.clone())
    }
    pub fn channel(&self) -> Held {
        self.0.channels.inc();
        Held(self.0.channels.clone())
    }
    pub fn consumer(&self) -> Held {
        self.0.consumers.inc();
        Held(self.0.consumers.clone())
    }
    pub fn published(&self, routed: bool) {
        self.0.published.inc();
        if !routed {
            self.0.unroutable.inc();
        }
    }
    pub fn delivered(&self, redelivered: bool) {
        self.0.delivered.inc();
        if redelivered {
            self.0.redelivered.inc();
        }
    }
    pub fn acked(&self, n: u64) {
        self.0.acked.inc_by(n);
    }
    pub fn requeued(&self, n: u64) {
        self.0.requeued.inc_by(n);
    }
    pub fn rejected(&self, n: u64) {
        self.0.rejected.inc_by(n);
    }
    pub fn exception(&self) {
        self.0.exceptions.inc();
    }
}
