//! Accept loop: one task per connection, bounded by `connections_max` in all and by
//! `connections_max_per_ip` from one client address.

use std::sync::Arc;

use herald_broker::{Broker, ConnectionGate};
use tokio::net::TcpListener;

use crate::KafkaConfig;
use crate::connection::Connection;
use crate::metrics::KafkaMetrics;

pub struct KafkaServer {
    listener: TcpListener,
    pub config: Arc<KafkaConfig>,
    broker: Arc<Broker>,
    metrics: KafkaMetrics,
}

impl KafkaServer {
    /// Bind the listener. A listen port of 0 picks a free port; the advertised port then
    /// follows the bound one unless it was set explicitly (never advertise port 0).
    pub async fn bind(
        mut config: KafkaConfig,
        broker: Arc<Broker>,
    ) -> std::io::Result<KafkaServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let bound = listener.local_addr()?;
        if config.advertised_port == 0 {
            config.advertised_port = i32::from(bound.port());
        }
        if config.advertised_host.is_empty()
            || config.advertised_host == "0.0.0.0"
            || config.advertised_host == "::"
        {
            config.advertised_host = "127.0.0.1".to_string();
        }
        config.listen = bound;
        Ok(KafkaServer {
            listener,
            config: Arc::new(config),
            broker,
            metrics: KafkaMetrics::default(),
        })
    }

    /// Live handles onto the server's request latency and connection metrics.
    pub fn metrics(&self) -> KafkaMetrics {
        self.metrics.clone()
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.config.listen
    }

    /// Serve until the task is dropped or aborted.
    pub async fn run(self) {
        let gate = ConnectionGate::new(
            self.config.connections_max,
            self.config.connections_max_per_ip,
        );
        loop {
            let (socket, peer, permit) = gate
                .accept(&self.listener, "Kafka", || {
                    self.metrics.connection_refused()
                })
                .await;
            let open = self.metrics.connection_opened();
            let connection = Connection::new(
                socket,
                peer,
                self.broker.clone(),
                self.config.clone(),
                self.metrics.clone(),
            );
            tokio::spawn(async move {
                connection.run().await;
                drop(open);
                drop(permit);
            });
        }
    }
}
