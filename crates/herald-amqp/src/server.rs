//! Accept loop: one task per connection, bounded by `connections_max` in all and by
//! `connections_max_per_ip` from one client address.

use std::sync::Arc;

use herald_broker::{Broker, ConnectionGate};
use tokio::net::TcpListener;

use crate::AmqpConfig;
use crate::connection::Connection;
use crate::metrics::AmqpMetrics;

pub struct AmqpServer {
    listener: TcpListener,
    pub config: Arc<AmqpConfig>,
    broker: Arc<Broker>,
    metrics: AmqpMetrics,
    reply_to: crate::reply_to::ReplyTo,
}

impl AmqpServer {
    pub async fn bind(mut config: AmqpConfig, broker: Arc<Broker>) -> std::io::Result<AmqpServer> {
        let listener = TcpListener::bind(config.listen).await?;
        config.listen = listener.local_addr()?;
        Ok(AmqpServer {
            listener,
            config: Arc::new(config),
            broker,
            metrics: AmqpMetrics::default(),
            reply_to: Default::default(),
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.config.listen
    }

    pub fn metrics(&self) -> AmqpMetrics {
        self.metrics.clone()
    }

    /// Serve until the task is dropped or aborted.
    pub async fn run(self) {
        let gate = ConnectionGate::new(
            self.config.connections_max,
            self.config.connections_max_per_ip,
        );
        loop {
            let (socket, peer, permit) = gate
                .accept(&self.listener, "AMQP", || self.metrics.connection_refused())
                .await;
            let connection = Connection::new(
                self.config.clone(),
                self.broker.clone(),
                self.metrics.clone(),
                peer,
                self.reply_to.clone(),
            );
            tokio::spawn(async move {
                connection.run(socket).await;
                drop(permit);
            });
        }
    }
}
