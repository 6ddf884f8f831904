//! `herald serve`: open the broker, start the listeners, and shut down cleanly on
//! SIGINT/SIGTERM (stop accepting, flush every partition, mark logs cleanly closed).

use anyhow::Context;
use herald_broker::Broker;
use herald_kafka::KafkaServer;

use crate::config::{ServeSettings, unknown_env_vars};

pub async fn run(settings: ServeSettings) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting up must still shut down cleanly.
    let shutdown = shutdown_signal()?;
    for name in unknown_env_vars() {
        tracing::warn!(variable = %name, "ignoring unknown HERALD_ environment variable");
    }
    if let Some(file) = std::env::var_os(herald_log::FAULT_INJECT_ENV) {
        tracing::warn!(control_file = %std::path::Path::new(&file).display(), "TEST-ONLY fault injection is on: the log's writes and fsyncs fail when that file says so");
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
    shutdown.await;
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

/// Register SIGINT and SIGTERM handlers now; the returned future ends at the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
