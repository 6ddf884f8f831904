//! `herald serve`: open the broker, start the listeners, and shut down cleanly on
//! SIGINT/SIGTERM (stop accepting, flush every partition, mark logs cleanly closed).

use anyhow::Context;
use herald_broker::Broker;
use herald_kafka::KafkaServer;

use crate::config::{ServeSettings, unknown_env_vars};

pub async fn run(settings: ServeSettings) -> anyhow::Result<()> {
    for name in unknown_env_vars() {
        tracing::warn!(variable = %name, "ignoring unknown HERALD_ environment variable");
    }
    let settings = settings.with_file()?;
    let broker_config = settings.broker_config()?;
    let kafka_config = settings.kafka_config()?;
    let data_dir = broker_config.data_dir.clone();
    let flush = broker_config.flush;
    let broker = Broker::open(broker_config)
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    let server = KafkaServer::bind(kafka_config.clone(), broker.clone())
        .await
        .with_context(|| format!("cannot listen on {}", kafka_config.listen))?;
    tracing::info!(
        kafka = %server.local_addr(),
        advertised = %format!("{}:{}", server.config.advertised_host, server.config.advertised_port),
        data_dir = %data_dir.display(),
        flush = ?flush,
        "herald is ready"
    );
    let accept = tokio::spawn(server.run());
    shutdown_signal().await;
    tracing::info!("shutting down");
    accept.abort();
    let _ = accept.await;
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .context("shutdown task failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
