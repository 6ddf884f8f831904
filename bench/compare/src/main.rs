//! Publish `--count` messages of `--size` bytes to one system with up to `--in-flight`
//! unacknowledged at a time (publish-ack latency in an HDR histogram), then read them
//! all back; print one JSON object. Durability settings live in the server configs that
//! bench/compare.sh writes; here each client asks for the strongest acknowledgement its
//! protocol has (JetStream publish acks, RabbitMQ publisher confirms of persistent
//! messages, Redis replies, which `appendfsync always` holds back until the fsync).
//!
//! `rabbitmq` speaks AMQP 0-9-1 (lapin) to any broker at `--url`, so bench/compare.sh
//! points it at RabbitMQ and at Herald's AMQP listener alike (`--system herald-amqp`
//! names the row). Its consumer acks each message (`--ack-every 1`, the default: one
//! `basic.ack` per delivery, awaited as a lapin application does) or every N-th with
//! `multiple` set, under a `basic.qos` prefetch of `--prefetch`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
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
    /// The "system" name in the JSON line (default: the mode's name), e.g. herald-amqp.
    #[arg(long = "system", value_name = "NAME")]
    system_name: Option<String>,
    /// Start each publish without waiting for the previous one's send call to return,
    /// and with `--ack-every 1` send each basic.ack without waiting for it to be written
    /// before taking the next delivery. lapin's `basic_publish` and `ack` return once
    /// its I/O thread wrote the frame, so awaiting each one (the default, what most
    /// applications do) serialises the client on that handoff. Still at most
    /// `--in-flight` unconfirmed and `--prefetch` unacked.
    #[arg(long)]
    pipeline: bool,
    /// AMQP: the consumer acks every N-th delivery with `multiple` set; 1 (the default)
    /// sends one `basic.ack` per message, each awaited before the next delivery.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    ack_every: u64,
    /// AMQP: the consumer's `basic.qos` prefetch count (unacked deliveries at a time).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// AMQP: the durable queue to publish to and consume from (deleted and declared
    /// first; give each run its own against a broker that keeps running).
    #[arg(long, default_value = "bench")]
    queue: String,
    /// The broker's process id (on this machine): its CPU time, with its descendants',
    /// is read around each phase and reported as `server_cpu_secs`.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// CPU time (user + system, seconds) a `/proc/<pid>/stat` line reports, with the
/// parent's pid.
fn stat_cpu(stat: &str) -> Option<(u32, f64)> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, the line's 14th and 15th fields, in USER_HZ (100 on Linux).
    Some((ppid, (ticks(11) + ticks(12)) / 100.0))
}

/// This process's CPU time so far, all threads: tells whether the client, not the
/// broker, is what limits a phase.
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu(&s))
        .map_or(0.0, |(_, cpu)| cpu)
}

/// CPU time so far of process `root` and its descendants (RabbitMQ's beam.smp runs
/// under the rabbitmq-server wrapper), or 0 without one.
fn tree_cpu_secs(root: Option<u32>) -> f64 {
    let Some(root) = root else { return 0.0 };
    let mut processes = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, cpu)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| stat_cpu(&s))
            {
                processes.push((pid, ppid, cpu));
            }
        }
    }
    let (mut total, mut todo) = (0.0, vec![root]);
    while let Some(pid) = todo.pop() {
        for &(p, ppid, cpu) in &processes {
            if p == pid {
                total += cpu;
            }
            if ppid == pid {
                todo.push(p);
            }
        }
    }
    total
}

type Ack = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What publishing took: wall seconds, the acknowledgement latencies, and the seconds
/// spent inside the client's send calls (a client that spends most of the phase there,
/// not waiting for acknowledgements, is what limits the rate).
struct Published {
    secs: f64,
    histogram: Histogram<u64>,
    send_secs: f64,
}

/// Publishes with at most `in_flight` unacknowledged; `publish` sends one message and
/// returns the future of its acknowledgement.
async fn publish_all<F, Fut>(args: &Args, mut publish: F) -> anyhow::Result<Published>
where
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = anyhow::Result<Ack>> + Send + 'static,
{
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut pending = FuturesUnordered::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut send_secs = 0.0;
    while sent < args.count || !pending.is_empty() {
        if Instant::now() > deadline {
            bail!("publishing took longer than {} s", args.timeout_secs);
        }
        if sent < args.count && pending.len() < args.in_flight {
            let at = Instant::now();
            if args.pipeline {
                // Sent when `pending` is next polled, together with the others queued.
                let send = publish(payload.clone());
                pending.push(
                    Box::pin(async move { send.await?.await.map(|()| at.elapsed()) })
                        as Pin<Box<dyn Future<Output = anyhow::Result<Duration>> + Send>>,
                );
            } else {
                let ack = publish(payload.clone()).await?;
                send_secs += at.elapsed().as_secs_f64();
                pending.push(Box::pin(async move { ack.await.map(|()| at.elapsed()) }));
            }
            sent += 1;
            continue;
        }
        if let Some(done) = pending.next().await {
            histogram.record(done?.as_micros().max(1) as u64)?;
        }
    }
    Ok(Published {
        secs: started.elapsed().as_secs_f64(),
        histogram,
        send_secs,
    })
}

/// What one run measured; `report` prints it as the JSON line bench/compare.sh reads.
struct Run {
    published: Published,
    publish_cpu_secs: f64,
    publish_server_cpu_secs: f64,
    consume_secs: f64,
    consume_cpu_secs: f64,
    consume_server_cpu_secs: f64,
    consumed: u64,
}

fn report(args: &Args, run: Run, consume_extra: serde_json::Value) {
    let mb = (args.count as f64) * (args.size as f64) / 1_000_000.0;
    let h = &run.published.histogram;
    let publish_secs = run.published.secs;
    let mut consume = serde_json::json!({
        "records": run.consumed,
        "records_per_sec": run.consumed as f64 / run.consume_secs,
        "secs": run.consume_secs,
        "client_cpu_secs": run.consume_cpu_secs,
        "server_cpu_secs": run.consume_server_cpu_secs,
    });
    if let (Some(consume), Some(extra)) = (consume.as_object_mut(), consume_extra.as_object()) {
        consume.extend(extra.clone());
    }
    println!(
        "{}",
        serde_json::json!({
            "system": args.system_name.clone()
                .unwrap_or_else(|| format!("{:?}", args.system).to_lowercase()),
            "count": args.count,
            "size": args.size,
            "in_flight": args.in_flight,
            "client": if args.pipeline { "pipelined" } else { "awaited" },
            "publish": {
                "records_per_sec": args.count as f64 / publish_secs,
                "mb_per_sec": mb / publish_secs,
                "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
                "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
                "secs": publish_secs,
                "client_send_secs": run.published.send_secs,
                "client_cpu_secs": run.publish_cpu_secs,
                "server_cpu_secs": run.publish_server_cpu_secs,
            },
            "consume": consume,
        })
    );
}

async fn nats(args: &Args) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = async_nats::connect(&args.url)
        .await
        .context("connect to NATS")?;
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
    let (cpu, server_cpu) = (cpu_secs(), tree_cpu_secs(args.server_pid));
    let published = publish_all(args, |payload| {
        let js = js.clone();
        async move {
            let ack = js.publish("bench", payload).await?;
            Ok(Box::pin(async move { ack.await.map(|_| ()).map_err(anyhow::Error::from) }) as Ack)
        }
    })
    .await?;
    let publish_cpu_secs = cpu_secs() - cpu;
    let publish_server_cpu_secs = tree_cpu_secs(args.server_pid) - server_cpu;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let (started, cpu, server_cpu) = (Instant::now(), cpu_secs(), tree_cpu_secs(args.server_pid));
    let mut consumed = 0u64;
    while consumed < args.count {
        let mut batch = consumer.fetch().max_messages(1000).messages().await?;
        while let Some(message) = batch.next().await {
            message.map_err(|e| anyhow::anyhow!("{e}"))?;
            consumed += 1;
        }
    }
    let run = Run {
        published,
        publish_cpu_secs,
        publish_server_cpu_secs,
        consume_secs: started.elapsed().as_secs_f64(),
        consume_cpu_secs: cpu_secs() - cpu,
        consume_server_cpu_secs: tree_cpu_secs(args.server_pid) - server_cpu,
        consumed,
    };
    report(args, run, serde_json::json!({"acks": "none"}));
    Ok(())
}

async fn rabbitmq(args: &Args) -> anyhow::Result<()> {
    use lapin::options::*;
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let connection = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to the AMQP broker at {}", args.url))?;
    let channel = connection.create_channel().await?;
    let queue = args.queue.as_str();
    let _ = channel
        .queue_delete(queue, QueueDeleteOptions::default())
        .await;
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let (cpu, server_cpu) = (cpu_secs(), tree_cpu_secs(args.server_pid));
    let route: std::sync::Arc<str> = queue.into();
    let published = publish_all(args, |payload| {
        let (channel, properties, route) = (channel.clone(), persistent.clone(), route.clone());
        async move {
            let confirm = channel
                .basic_publish(
                    "",
                    &route,
                    BasicPublishOptions::default(),
                    &payload,
                    properties,
                )
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
    let publish_cpu_secs = cpu_secs() - cpu;
    let publish_server_cpu_secs = tree_cpu_secs(args.server_pid) - server_cpu;
    channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue,
            "reader",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let (started, cpu, server_cpu) = (Instant::now(), cpu_secs(), tree_cpu_secs(args.server_pid));
    let mut acks = FuturesUnordered::new();
    let mut consumed = 0u64;
    while consumed < args.count {
        let delivery = match tokio::time::timeout_at(deadline.into(), consumer.next()).await {
            Ok(Some(delivery)) => delivery?,
            Ok(None) => break,
            Err(_) => bail!(
                "consuming took longer than {} s ({consumed} read)",
                args.timeout_secs
            ),
        };
        consumed += 1;
        if args.ack_every == 1 && args.pipeline {
            // Still one basic.ack per message, but not waiting for lapin to have written
            // it before taking the next delivery; polled once here (which queues the
            // frame), finished at the end.
            acks.push(async move { delivery.ack(BasicAckOptions { multiple: false }).await });
            while let Some(Some(done)) = acks.next().now_or_never() {
                done?;
            }
        } else if args.ack_every == 1 {
            // What "manual acks" means for most applications: one basic.ack per message.
            delivery.ack(BasicAckOptions { multiple: false }).await?;
        } else if consumed % args.ack_every == 0 || consumed == args.count {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    while let Some(done) = acks.next().await {
        done?;
    }
    let run = Run {
        published,
        publish_cpu_secs,
        publish_server_cpu_secs,
        consume_secs: started.elapsed().as_secs_f64(),
        consume_cpu_secs: cpu_secs() - cpu,
        consume_server_cpu_secs: tree_cpu_secs(args.server_pid) - server_cpu,
        consumed,
    };
    let acks = if args.ack_every == 1 {
        "each".to_string()
    } else {
        format!("multiple every {}", args.ack_every)
    };
    report(
        args,
        run,
        serde_json::json!({"acks": acks, "ack_every": args.ack_every, "prefetch": args.prefetch}),
    );
    // Leave the broker as it was: a closed connection, no bench queue left behind.
    let _ = channel
        .queue_delete(queue, QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bye").await;
    Ok(())
}

async fn redis(args: &Args) -> anyhow::Result<()> {
    let client = redis::Client::open(args.url.as_str())?;
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .context("connect to Redis")?;
    let _: () = redis::cmd("DEL")
        .arg("bench")
        .query_async(&mut connection.clone())
        .await?;
    let (cpu, server_cpu) = (cpu_secs(), tree_cpu_secs(args.server_pid));
    let published = publish_all(args, |payload| {
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
    let publish_cpu_secs = cpu_secs() - cpu;
    let publish_server_cpu_secs = tree_cpu_secs(args.server_pid) - server_cpu;
    let (started, cpu, server_cpu) = (Instant::now(), cpu_secs(), tree_cpu_secs(args.server_pid));
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
        let Some((last, _)) = entries.last() else {
            break;
        };
        from = format!("({last}");
        consumed += entries.len() as u64;
    }
    let run = Run {
        published,
        publish_cpu_secs,
        publish_server_cpu_secs,
        consume_secs: started.elapsed().as_secs_f64(),
        consume_cpu_secs: cpu_secs() - cpu,
        consume_server_cpu_secs: tree_cpu_secs(args.server_pid) - server_cpu,
        consumed,
    };
    report(args, run, serde_json::json!({"acks": "none"}));
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
