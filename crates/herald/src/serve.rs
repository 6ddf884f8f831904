//! `herald serve`: open the broker, start the listeners, and shut down cleanly on
//! SIGINT/SIGTERM (stop accepting, flush every partition, mark logs cleanly closed).

use anyhow::Context;
use herald_amqp::AmqpServer;
use herald_broker::Broker;
use herald_eventstore::EventStoreServer;
use herald_http::HttpServer;
use herald_kafka::KafkaServer;
use herald_registry::RegistryServer;

/// How long HTTP requests in progress may take to finish at shutdown.
const HTTP_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    let http_config = settings.http_config()?;
    let amqp_config = settings.amqp_config()?;
    let eventstore_config = settings.eventstore_config()?;
    let registry_config = settings.registry_config()?;
    let data_dir = broker_config.data_dir.clone();
    let flush = broker_config.flush;
    let broker = Broker::open(broker_config)
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    let mut server = KafkaServer::bind(kafka_config.clone(), broker.clone())
        .await
        .with_context(|| format!("cannot listen on {}", kafka_config.listen))?;
    let amqp = match amqp_config {
        Some(config) => {
            let listen = config.listen;
            Some(
                AmqpServer::bind(config, broker.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen for AMQP on {listen} (another AMQP broker there? \
                             set --amqp-listen to another address, or off)"
                        )
                    })?,
            )
        }
        None => None,
    };
    let registry = match registry_config {
        Some(config) => Some(
            RegistryServer::bind(&config, broker.clone())
                .await
                .with_context(|| {
                    format!(
                        "cannot start the schema registry on {} (another registry there? \
                         set --registry-listen to another address, or off)",
                        config.listen
                    )
                })?,
        ),
        None => None,
    };
    // Topics with schema validation on ask the registry (see schema_check.rs).
    let validator = registry
        .as_ref()
        .map(|r| std::sync::Arc::new(herald_registry::validate::Validator::new(r.registry())));
    if let Some(v) = &validator {
        broker.set_record_validator(v.clone());
    }
    let registry_addr = match &registry {
        Some(r) => r
            .local_addr()
            .context("schema registry listener address")?
            .to_string(),
        None => "off".to_string(),
    };
    let eventstore = match eventstore_config {
        Some(config) => {
            let listen = config.listen;
            Some(
                EventStoreServer::bind(config, broker.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen for the event store on {listen} (a KurrentDB there? \
                             set --eventstore-listen to another address, or off)"
                        )
                    })?,
            )
        }
        None => None,
    };
    let eventstore_addr = match &eventstore {
        Some(e) => e.local_addr().to_string(),
        None => "off".to_string(),
    };
    let mut metrics_hooks: Vec<herald_http::MetricsHook> = vec![kafka_metrics_hook(&server)];
    if let Some(amqp) = &amqp {
        let metrics = amqp.metrics();
        metrics_hooks.push(std::sync::Arc::new(move |registry| {
            metrics.register(registry)
        }));
    }
    if let Some(v) = validator {
        metrics_hooks.push(std::sync::Arc::new(move |registry| v.register(registry)));
    }
    let http = match &http_config {
        Some(config) => {
            // A Kafka client on the HTTP port is told where Kafka is.
            let mut config = config.clone();
            config.kafka_address = Some(server.local_addr().to_string());
            Some(
                HttpServer::bind(&config, broker.clone(), metrics_hooks)
                    .await
                    .with_context(|| format!("cannot listen for HTTP on {}", config.listen))?,
            )
        }
        None => None,
    };
    let http_addr = match &http {
        Some(h) => h.local_addr().context("HTTP listener address")?.to_string(),
        None => "off".to_string(),
    };
    // An HTTP client on the Kafka port is told where HTTP is.
    let mut with_http = (*server.config).clone();
    with_http.http_address = http.is_some().then(|| http_addr.clone());
    with_http.amqp_address = amqp.as_ref().map(|a| a.local_addr().to_string());
    server.config = std::sync::Arc::new(with_http);
    let amqp_addr = match &amqp {
        Some(a) => a.local_addr().to_string(),
        None => "off".to_string(),
    };
    tracing::info!(
        kafka = %server.local_addr(),
        http = %http_addr,
        amqp = %amqp_addr,
        eventstore = %eventstore_addr,
        registry = %registry_addr,
        advertised = %format!("{}:{}", server.config.advertised_host, server.config.advertised_port),
        data_dir = %data_dir.display(),
        flush = ?flush,
        "herald is ready"
    );
    let accept = tokio::spawn(server.run());
    let amqp_accept = amqp.map(|a| tokio::spawn(a.run()));
    let eventstore_accept = eventstore.map(|e| tokio::spawn(e.run()));
    let (registry_stop, registry_stopped) = tokio::sync::oneshot::channel::<()>();
    let registry_task = registry.map(|r| {
        tokio::spawn(r.run(async move {
            let _ = registry_stopped.await;
        }))
    });
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = http.map(|h| {
        h.set_ready();
        tokio::spawn(h.run(async move {
            let _ = http_stopped.await;
        }))
    });
    shutdown.await;
    tracing::info!("shutting down");
    accept.abort();
    let _ = accept.await;
    if let Some(task) = amqp_accept {
        task.abort();
        let _ = task.await;
    }
    if let Some(task) = eventstore_accept {
        task.abort();
        let _ = task.await;
    }
    let _ = registry_stop.send(());
    if let Some(task) = registry_task
        && tokio::time::timeout(HTTP_DRAIN_TIMEOUT, task)
            .await
            .is_err()
    {
        tracing::warn!("schema registry connections still open at shutdown; closing them");
    }
    let _ = http_stop.send(());
    if let Some(task) = http_task {
        // Requests in progress finish; a client holding a connection open does not
        // hold up the shutdown for longer than this.
        if tokio::time::timeout(HTTP_DRAIN_TIMEOUT, task)
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open at shutdown; closing them");
        }
    }
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

/// The Kafka front end's request latencies and connection counts, shown by `/metrics`.
fn kafka_metrics_hook(server: &KafkaServer) -> herald_http::MetricsHook {
    let metrics = server.metrics();
    std::sync::Arc::new(move |registry| metrics.register(registry))
}
