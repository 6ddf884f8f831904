//! Publish `--count` messages of `--size` bytes to one system with up to `--in-flight`
//! unacknowledged at a time (publish-ack latency in an HDR histogram), then read them
//! all back; print one JSON object. Durability settings live in the server configs that
//! bench/compare.sh writes; here each client asks for the strongest acknowledgement its
//! protocol has (JetStream publish acks, RabbitMQ publisher confirms of persistent
//! messages, Redis replies, which `appendfsync always` holds back until the fsync).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum System {
    Nats,
    Rabbitmq,
    Redis,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(value_enum)]
    system: System,
    /// nats://127.0.0.1:4222, amqp://127.0.0.1:5672/%2f or redis://127.0.0.1:6379
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Publishes awaiting their acknowledgement at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Give up on a phase after this long.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

type Ack = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Publishes with at most `in_flight` unacknowledged; `publish` sends one message and
/// returns the future of its acknowledgement.
async fn publish_all<F, Fut>(args: &Args, mut publish: F) -> anyhow::Result<(f64, Histogram<u64>)>
where
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = anyhow::Result<Ack>>,
{
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut pending = FuturesUnordered::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.count || !pending.is_empty() {
        if Instant::now() > deadline {
            bail!("publishing took longer than {} s", args.timeout_secs);
        }
        if sent < args.count && pending.len() < args.in_flight {
            let at = Instant::now();
            let ack = publish(payload.clone()).await?;
            pending.push(async move { ack.await.map(|()| at.elapsed()) });
            sent += 1;
            continue;
        }
        if let Some(done) = pending.next().await {
            histogram.record(done?.as_micros().max(1) as u64)?;
        }
    }
    Ok((started.elapsed().as_secs_f64(), histogram))
}

fn report(args: &Args, publish_secs: f64, h: &Histogram<u64>, consume_secs: f64, consumed: u64) {
    let mb = (args.count as f64) * (args.size as f64) / 1_000_000.0;
    println!(
        "{}",
        serde_json::json!({
            "system": format!("{:?}", args.system).to_lowercase(),
            "publish": {
                "records_per_sec": args.count as f64 / publish_secs,
                "mb_per_sec": mb / publish_secs,
                "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
                "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            },
            "consume": {
                "records": consumed,
                "records_per_sec": consumed as f64 / consume_secs,
            },
        })
    );
}

async fn nats(args: &Args) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = async_nats::connect(&args.url).await.context("connect to NATS")?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("bench").await;
    let stream = js
        .create_stream(stream::Config {
            name: "bench".into(),
            subjects: vec!["bench".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("create the JetStream stream")?;
    let (publish_secs, h) = publish_all(args, |payload| {
        let js = js.clone();
        async move {
            let ack = js.publish("bench", payload).await?;
            Ok(Box::pin(async move { ack.await.map(|_| ()).map_err(anyhow::Error::from) }) as Ack)
        }
    })
    .await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut consumed = 0u64;
    while consumed < args.count {
        let mut batch = consumer.fetch().max_messages(1000).messages().await?;
        while let Some(message) = batch.next().await {
            message.map_err(|e| anyhow::anyhow!("{e}"))?;
            consumed += 1;
        }
    }
    report(args, publish_secs, &h, started.elapsed().as_secs_f64(), consumed);
    Ok(())
}

async fn rabbitmq(args: &Args) -> anyhow::Result<()> {
    use lapin::options::*;
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let connection = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    let _ = channel.queue_delete("bench", QueueDeleteOptions::default()).await;
    channel
        .queue_declare(
            "bench",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let (publish_secs, h) = publish_all(args, |payload| {
        let (channel, properties) = (channel.clone(), persistent.clone());
        async move {
            let confirm = channel
                .basic_publish("", "bench", BasicPublishOptions::default(), &payload, properties)
                .await?;
            Ok(Box::pin(async move {
                match confirm.await? {
                    lapin::publisher_confirm::Confirmation::Nack(_) => bail!("publish nacked"),
                    _ => Ok(()),
                }
            }) as Ack)
        }
    })
    .await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume("bench", "reader", BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let started = Instant::now();
    let mut consumed = 0u64;
    while consumed < args.count {
        let Some(delivery) = consumer.next().await else { break };
        let delivery = delivery?;
        consumed += 1;
        if consumed % 100 == 0 || consumed == args.count {
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    report(args, publish_secs, &h, started.elapsed().as_secs_f64(), consumed);
    Ok(())
}

async fn redis(args: &Args) -> anyhow::Result<()> {
    let client = redis::Client::open(args.url.as_str())?;
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .context("connect to Redis")?;
    let _: () = redis::cmd("DEL").arg("bench").query_async(&mut connection.clone()).await?;
    let (publish_secs, h) = publish_all(args, |payload| {
        let mut connection = connection.clone();
        async move {
            // The multiplexed connection pipelines concurrent commands on one socket.
            let reply = tokio::spawn(async move {
                redis::cmd("XADD")
                    .arg("bench")
                    .arg("*")
                    .arg("v")
                    .arg(payload.as_ref())
                    .query_async::<String>(&mut connection)
                    .await
            });
            Ok(Box::pin(async move {
                reply.await??;
                Ok(())
            }) as Ack)
        }
    })
    .await?;
    let started = Instant::now();
    let mut consumed = 0u64;
    let mut from = "-".to_string();
    let mut reader = connection.clone();
    while consumed < args.count {
        let entries: Vec<(String, Vec<(String, Vec<u8>)>)> = redis::cmd("XRANGE")
            .arg("bench")
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut reader)
            .await?;
        let Some((last, _)) = entries.last() else { break };
        from = format!("({last}");
        consumed += entries.len() as u64;
    }
    report(args, publish_secs, &h, started.elapsed().as_secs_f64(), consumed);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.system {
        System::Nats => nats(&args).await,
        System::Rabbitmq => rabbitmq(&args).await,
        System::Redis => redis(&args).await,
    }
}
