//! `herald bench`: measure a Kafka-protocol broker (Herald or any other) from outside,
//! the way users measure Kafka: N producers sending fixed-size records in batches with
//! a bounded number of requests in flight, acknowledgement latency in an HDR
//! histogram; one consumer reading a topic from its start; or both at once with
//! publish-to-delivery latency (`end-to-end`, in `bench/e2e.rs`). A progress bar runs
//! on a terminal; `--broker-pid` samples the broker's memory (`bench/rss.rs`).
//! `herald bench eventstore` measures the event store over its gRPC API instead
//! (`bench/eventstore.rs`).

mod e2e;
mod eventstore;
mod rss;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use herald_client::{
    Acks, Client, FetchOptions, NewTopic, ProduceOptions, ProduceRecord, TopicPartition,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::ConnectArgs;
use super::produce::{CompressionArg, parse_acks};

/// Why a run ends before its `--count` or `--duration-secs`: Ctrl-C (or SIGTERM), or
/// the broker went away. Every loop of the run checks it; the first reason given is
/// the one reported, with what was measured until then.
#[derive(Clone)]
pub struct Stop(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for Stop {
    fn default() -> Self {
        Stop(Arc::new(tokio::sync::watch::Sender::new(None)))
    }
}

impl Stop {
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    pub fn is_stopped(&self) -> bool {
        self.0.borrow().is_some()
    }

    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves once the run is told to stop.
    pub async fn stopped(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// An error that means the broker is gone (not a Kafka error code it answered)
    /// stops the run.
    fn on_error(&self, error: &herald_client::Error) {
        use herald_client::Error as E;
        if matches!(
            error,
            E::Connect { .. } | E::ConnectionClosed { .. } | E::Timeout { .. }
        ) {
            self.stop(format!("lost the broker: {error}"));
        }
    }
}

/// After a stop, how long requests already sent may take to be answered before the
/// report is printed without them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Stop the run on Ctrl-C or SIGTERM.
fn stop_on_signals(stop: &Stop) {
    let on_interrupt = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.stop("interrupted (Ctrl-C)");
        }
    });
    #[cfg(unix)]
    {
        let on_term = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                term.recv().await;
                on_term.stop("terminated (SIGTERM)");
            }
        });
    }
}

/// Wait for the produce requests still in flight: all of them, or, once the run is
/// stopped, those answered within [`STOP_GRACE`] (the rest are dropped uncounted).
async fn drain_requests(
    requests: &mut JoinSet<((bool, Duration), usize)>,
    stop: &Stop,
    histogram: &mut Histogram<u64>,
    acked: &mut u64,
    errors: &mut u64,
) {
    let mut grace_until: Option<tokio::time::Instant> = None;
    loop {
        if stop.is_stopped() && grace_until.is_none() {
            grace_until = Some(tokio::time::Instant::now() + STOP_GRACE);
        }
        let next = match grace_until {
            Some(until) => match tokio::time::timeout_at(until, requests.join_next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => tokio::select! {
                next = requests.join_next() => next,
                () = stop.stopped() => continue,
            },
        };
        let Some(done) = next else { break };
        record_done(done, histogram, acked, errors);
    }
    requests.abort_all();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Send records and time each acknowledgement.
    Produce,
    /// Read a topic from its start as fast as the broker serves it.
    Consume,
    /// Produce at `--rate` while one consumer reads along; time each record from the
    /// moment it was batched to the moment the consumer has it.
    #[value(name = "end-to-end", alias = "e2e")]
    EndToEnd,
    /// The event store over gRPC (`--url`): appends with exact expected revisions,
    /// whole-stream reads, a catch-up subscription to `$all`; or `--streams N` new
    /// streams as a load.
    Eventstore,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// Topic to use; created with `--partitions` if missing.
    #[arg(long, default_value = "herald-bench")]
    pub topic: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub message_bytes: u32,
    /// Bytes of record values per batch (records per batch = batch bytes / message
    /// bytes, at least 1), as a Kafka producer's `batch.size`. `--batch-size` instead
    /// gives the record count directly.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=67_108_864))]
    pub batch_bytes: u32,
    /// Records per batch; overrides `--batch-bytes`.
    /// End-to-end with a `--rate`: a batch goes out when it holds this many records or
    /// `--linger-ms` worth of them, whichever comes first.
    #[arg(long, conflicts_with = "batch_bytes", value_parser = clap::value_parser!(u32).range(1..=BATCH_RECORDS_MAX))]
    pub batch_size: Option<u32>,
    /// Produce requests each producer keeps in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub in_flight: u32,
    /// Produce: the most record bytes one request carries (Kafka's `max.request.size`).
    /// Like a Kafka producer, a request holds one batch for each of as many partitions
    /// as fit (a producer cycles through all partitions); set it to `--batch-bytes` for
    /// one batch per request.
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(1..=268_435_456))]
    pub max_request_bytes: u32,
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Records to send (produce) or read (consume).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Stop after this many seconds even if `--count` is not reached.
    #[arg(long, default_value_t = 300)]
    pub duration_secs: u64,
    /// End-to-end: records per second over all producers (0: as fast as they can).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// End-to-end with a `--rate`: a batch is sent once it holds this many
    /// milliseconds' worth of records (or is full), like a producer's `linger.ms`.
    /// Produce mode sends full batches as fast as `--in-flight` allows and ignores it.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Consume and end-to-end: consumers, each with its own connection reading every
    /// `--consumers`-th partition (at most one per partition).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumers: u32,
    /// Sample this process's resident memory (the broker's) once a second and report
    /// its start, minimum, maximum and end.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Consume: the most bytes one fetch may return per partition (the Kafka
    /// consumer's `max.partition.fetch.bytes`, default 1 MiB).
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(i32).range(1..))]
    pub fetch_bytes: i32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub eventstore: Box<eventstore::EventStoreArgs>,
}

/// The most records `--batch-size` may put in one batch.
pub const BATCH_RECORDS_MAX: i64 = 1_000_000;

impl BenchArgs {
    /// Records per batch: `--batch-size`, else as many `--message-bytes` records as
    /// `--batch-bytes` holds (at least one).
    pub fn batch_records(&self) -> usize {
        match self.batch_size {
            Some(n) => n as usize,
            None => (self.batch_bytes / self.message_bytes).max(1) as usize,
        }
    }

    /// Produce: batches (each to its own partition) per request, so a request stays
    /// within `--max-request-bytes` and names no partition twice.
    pub fn batches_per_request(&self, partitions: i32) -> usize {
        let batch_bytes = (self.batch_records() as u64 * u64::from(self.message_bytes)).max(1);
        (u64::from(self.max_request_bytes) / batch_bytes).clamp(1, partitions.max(1) as u64)
            as usize
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub mode: BenchMode,
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub errors: u64,
    /// Acknowledgement latency of each produce request, microseconds.
    pub latency_us: Option<Histogram<u64>>,
    pub end_to_end: Option<EndToEnd>,
    pub rss: Option<rss::RssStats>,
    /// Set when the run ended early ([`Stop`]): the figures are what was measured
    /// until then.
    pub stopped: Option<String>,
}

/// What the consumer of an end-to-end run saw.
#[derive(Debug)]
pub struct EndToEnd {
    /// From a record's send time (in its value) to its arrival, microseconds.
    pub latency_us: Histogram<u64>,
    pub received: u64,
    /// Acknowledged records the consumer never received.
    pub missing: u64,
    /// From the start of the run to the last record received.
    pub elapsed: Duration,
}

impl EndToEnd {
    fn records_per_sec(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Latency percentiles in milliseconds, then the maximum.
fn percentiles_ms(h: &Histogram<u64>) -> Vec<(&'static str, f64)> {
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)]
        .into_iter()
        .map(|(name, q)| (name, h.value_at_quantile(q / 100.0) as f64 / 1000.0))
        .chain([("max", h.max() as f64 / 1000.0)])
        .collect()
}

fn percentiles_json(h: Option<&Histogram<u64>>) -> serde_json::Map<String, serde_json::Value> {
    h.map(percentiles_ms)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ms)| (format!("{name}_ms"), serde_json::json!(ms)))
        .collect()
}

fn percentiles_text(label: &str, h: &Histogram<u64>) -> String {
    let mut out = format!("\n{label} ms:");
    for (name, ms) in percentiles_ms(h) {
        out.push_str(&format!(" {name} {ms:.2}"));
    }
    out
}

const MB: f64 = 1_000_000.0;

impl Report {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1_000_000.0 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let latency = percentiles_json(self.latency_us.as_ref());
        let mut json = serde_json::json!({
            "mode": self.mode.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string()),
            "records": self.records,
            "bytes": self.bytes,
            "seconds": self.elapsed.as_secs_f64(),
            "records_per_sec": self.records_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "errors": self.errors,
            "latency": latency,
            "stopped": self.stopped,
        });
        if let Some(e2e) = &self.end_to_end {
            json["end_to_end"] = serde_json::json!({
                "received": e2e.received,
                "missing": e2e.missing,
                "seconds": e2e.elapsed.as_secs_f64(),
                "records_per_sec": e2e.records_per_sec(),
                "latency": percentiles_json(Some(&e2e.latency_us)),
            });
        }
        if let Some(rss) = &self.rss {
            json["broker_rss_mb"] = serde_json::json!({
                "start": rss.start as f64 / MB,
                "min": rss.min as f64 / MB,
                "max": rss.max as f64 / MB,
                "end": rss.end as f64 / MB,
                "samples": rss.samples,
            });
        }
        json
    }

    pub fn to_text(&self) -> String {
        let mut out = match &self.stopped {
            Some(reason) => format!("partial report, the run stopped early: {reason}\n"),
            None => String::new(),
        };
        out.push_str(&format!(
            "{} records, {:.1} MB in {:.2} s: {:.0} records/s, {:.1} MB/s, {} errors",
            self.records,
            self.bytes as f64 / 1_000_000.0,
            self.elapsed.as_secs_f64(),
            self.records_per_sec(),
            self.mb_per_sec(),
            self.errors
        ));
        if let Some(h) = &self.latency_us {
            out.push_str(&percentiles_text("ack latency", h));
        }
        if let Some(e2e) = &self.end_to_end {
            let missing = if self.stopped.is_some() {
                "missing records not checked (stopped early)".to_owned()
            } else {
                format!("{} acknowledged records missing", e2e.missing)
            };
            out.push_str(&format!(
                "\nconsumers received {} records in {:.2} s: {:.0} records/s, {missing}",
                e2e.received,
                e2e.elapsed.as_secs_f64(),
                e2e.records_per_sec(),
            ));
            out.push_str(&percentiles_text("end-to-end latency", &e2e.latency_us));
        }
        if let Some(rss) = &self.rss {
            out.push_str(&format!(
                "\nbroker RSS MB: start {:.1} min {:.1} max {:.1} end {:.1} ({} samples)",
                rss.start as f64 / MB,
                rss.min as f64 / MB,
                rss.max as f64 / MB,
                rss.end as f64 / MB,
                rss.samples
            ));
        }
        out
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.mode == BenchMode::Eventstore {
        let stop = Stop::default();
        stop_on_signals(&stop);
        return eventstore::run(&args, &stop).await;
    }
    let client = args.connect.connect().await?;
    let sampler = args.broker_pid.map(rss::Sampler::start).transpose()?;
    let progress = progress_bar(&args);
    let stop = Stop::default();
    stop_on_signals(&stop);
    let result = match args.mode {
        BenchMode::Produce => produce(&client, &args, &progress, &stop).await,
        BenchMode::Consume => consume(&client, &args, &progress, &stop).await,
        BenchMode::EndToEnd => e2e::run(&client, &args, &progress, &stop).await,
        // Returned above, before a Kafka connection is made.
        BenchMode::Eventstore => bail!("the event store mode runs on its own"),
    };
    progress.finish_and_clear();
    let mut report = result?;
    report.stopped = stop.reason();
    if let Some(sampler) = sampler {
        report.rss = sampler.stop().await;
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_text());
    }
    if let Some(reason) = &report.stopped {
        bail!("the run stopped early: {reason}");
    }
    if report.errors > 0 {
        bail!("{} requests failed", report.errors);
    }
    if let Some(e2e) = &report.end_to_end
        && e2e.missing > 0
    {
        bail!(
            "{} acknowledged records never reached the consumer",
            e2e.missing
        );
    }
    Ok(())
}

/// Records done out of `--count`, with the current rate; drawn on stderr only when it
/// is a terminal and the output is for a person.
fn progress_bar(args: &BenchArgs) -> ProgressBar {
    if args.json || args.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(args.count), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise}/{msg} [{bar:40}] {human_pos}/{human_len} records, {rate}",
    ) {
        let style = style.with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} records/s", state.per_sec());
            },
        );
        bar.set_style(style.progress_chars("=> "));
    }
    // The run also stops at `--duration-secs`, whichever limit comes first.
    bar.set_message(format_hms(args.duration_secs));
    bar.enable_steady_tick(PROGRESS_TICK);
    bar
}

/// How often the progress bar redraws when no record arrived (so the clock moves).
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Seconds as `HH:MM:SS`, like the bar's `{elapsed_precise}`.
fn format_hms(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("3 significant digits is valid")
}

/// Create the topic with `--partitions` unless it exists; its partition count.
async fn ensure_topic(client: &Client, args: &BenchArgs) -> anyhow::Result<i32> {
    let mut topic = NewTopic::new(args.topic.clone());
    topic.partitions = args.partitions;
    if let Err(e) = client.create_topic(&topic).await
        && e.kafka_code() != Some(kafka_protocol::ResponseError::TopicAlreadyExists)
    {
        return Err(e).with_context(|| format!("cannot create topic {}", args.topic));
    }
    let metadata = client
        .topic(&args.topic)
        .await
        .with_context(|| format!("cannot read the metadata of {}", args.topic))?;
    Ok(metadata.partitions.len().max(1) as i32)
}

async fn produce(
    client: &Client,
    args: &BenchArgs,
    progress: &ProgressBar,
    stop: &Stop,
) -> anyhow::Result<Report> {
    let partitions = ensure_topic(client, args).await?;
    let per_batch = args
        .batch_records()
        .min(usize::try_from(args.count.max(1)).unwrap_or(usize::MAX));
    let value = Bytes::from(vec![b'x'; args.message_bytes as usize]);
    let batch: Arc<Vec<ProduceRecord>> = Arc::new(
        (0..per_batch)
            .map(|_| ProduceRecord::new(None, Some(value.clone())))
            .collect(),
    );
    let options = Arc::new(ProduceOptions {
        acks: args.acks,
        compression: args.compression.into(),
        ..ProduceOptions::default()
    });
    let per_request = args.batches_per_request(partitions);
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let started = Instant::now();
    let mut producers = JoinSet::new();
    for producer in 0..args.producers {
        let client = Client::new(&args.connect.bootstrap).await?;
        let topic = args.topic.clone();
        let (batch, options, progress) = (batch.clone(), options.clone(), progress.clone());
        // Records are shared out so the producers send exactly `count` between them;
        // a producer's last batch may be short.
        let mine = args.count / u64::from(args.producers)
            + u64::from(u64::from(producer) < args.count % u64::from(args.producers));
        let in_flight = args.in_flight as usize;
        let stop = stop.clone();
        producers.spawn(async move {
            let permits = Arc::new(Semaphore::new(in_flight));
            let mut requests = JoinSet::new();
            let mut histogram = new_histogram();
            let (mut acked, mut errors, mut queued) = (0u64, 0u64, 0u64);
            let mut i = 0u64;
            while queued < mine && Instant::now() < deadline && !stop.is_stopped() {
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => permit,
                    () = stop.stopped() => break,
                };
                let Ok(permit) = permit else {
                    break;
                };
                // The next `per_request` partitions in this producer's cycle over all of
                // them, a full batch each until the producer's share runs out.
                let mut batches = Vec::with_capacity(per_request);
                while batches.len() < per_request && queued < mine {
                    let n = batch.len().min((mine - queued) as usize);
                    let records = if n == batch.len() {
                        batch.clone()
                    } else {
                        Arc::new(batch[..n].to_vec())
                    };
                    let partition = ((u64::from(producer) + i) % partitions as u64) as i32;
                    batches.push((partition, records));
                    queued += n as u64;
                    i += 1;
                }
                let request = ProduceRequest {
                    client: client.clone(),
                    topic: topic.clone(),
                    batches,
                    options: options.clone(),
                    progress: progress.clone(),
                    stop: stop.clone(),
                };
                requests.spawn(request.send(permit));
                while let Some(done) = requests.try_join_next() {
                    record_done(done, &mut histogram, &mut acked, &mut errors);
                }
            }
            drain_requests(
                &mut requests,
                &stop,
                &mut histogram,
                &mut acked,
                &mut errors,
            )
            .await;
            (histogram, acked, errors)
        });
    }
    let (histogram, records, errors) = join_producers(producers).await?;
    Ok(Report {
        mode: BenchMode::Produce,
        records,
        bytes: records * u64::from(args.message_bytes),
        elapsed: started.elapsed(),
        errors,
        latency_us: (args.acks != Acks::None).then_some(histogram),
        end_to_end: None,
        rss: None,
        stopped: None,
    })
}

/// Count one finished produce request task (its outcome and how many records it
/// carried) into the run's totals.
/// One produce request of a bench producer (a batch for each of one or more
/// partitions), sent on its own task.
struct ProduceRequest {
    client: Client,
    topic: String,
    batches: Vec<(i32, Arc<Vec<ProduceRecord>>)>,
    options: Arc<ProduceOptions>,
    progress: ProgressBar,
    stop: Stop,
}

impl ProduceRequest {
    /// Send, release `permit` (a request-in-flight slot) when answered, and give the
    /// outcome with its latency and the number of records for [`record_done`].
    async fn send(self, permit: tokio::sync::OwnedSemaphorePermit) -> ((bool, Duration), usize) {
        let at = Instant::now();
        let batches: Vec<(i32, &[ProduceRecord])> = self
            .batches
            .iter()
            .map(|(partition, records)| (*partition, records.as_slice()))
            .collect();
        let result = self
            .client
            .produce_partitions(&self.topic, &batches, &self.options)
            .await;
        drop(permit);
        let records: usize = self.batches.iter().map(|(_, r)| r.len()).sum();
        match &result {
            Ok(_) => self.progress.inc(records as u64),
            Err(error) => self.stop.on_error(error),
        }
        ((result.is_ok(), at.elapsed()), records)
    }
}

/// Wait for every producer task; their latency histograms merged, acked records and
/// failed requests summed.
async fn join_producers(
    mut producers: JoinSet<(Histogram<u64>, u64, u64)>,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut histogram = new_histogram();
    let (mut acked, mut errors) = (0u64, 0u64);
    while let Some(done) = producers.join_next().await {
        let (h, sent, failed) = done.context("a producer task failed")?;
        histogram.add(&h).context("merging latency histograms")?;
        acked += sent;
        errors += failed;
    }
    Ok((histogram, acked, errors))
}

fn record_done(
    done: Result<((bool, Duration), usize), tokio::task::JoinError>,
    histogram: &mut Histogram<u64>,
    acked: &mut u64,
    errors: &mut u64,
) {
    let (outcome, records) = match done {
        Ok((outcome, records)) => (Ok(outcome), records),
        Err(e) => (Err(e), 0),
    };
    record_ack(outcome, histogram, acked, errors, records);
}

/// Count one finished produce request of `batch_len` records into the run's totals.
fn record_ack(
    done: Result<(bool, Duration), tokio::task::JoinError>,
    histogram: &mut Histogram<u64>,
    sent: &mut u64,
    errors: &mut u64,
    batch_len: usize,
) {
    match done {
        Ok((true, latency)) => {
            *sent += batch_len as u64;
            let _ = histogram.record(latency.as_micros().max(1) as u64);
        }
        _ => *errors += 1,
    }
}

async fn consume(
    client: &Client,
    args: &BenchArgs,
    progress: &ProgressBar,
    stop: &Stop,
) -> anyhow::Result<Report> {
    let topic = client
        .topic(&args.topic)
        .await
        .with_context(|| format!("topic {} does not exist", args.topic))?;
    // From each partition's log start: retention may have moved it past 0.
    let ranges = client
        .offset_range(&topic)
        .await
        .context("cannot list the topic's offsets")?;
    let positions: Vec<(TopicPartition, i64)> = topic
        .partitions
        .iter()
        .map(|p| {
            let start = ranges.get(&p.partition).map_or(0, |(start, _)| *start);
            (TopicPartition::new(&args.topic, p.partition), start)
        })
        .collect();
    e2e::check_consumers(args, positions.len())?;
    let options = FetchOptions {
        max_wait: Duration::from_millis(100),
        partition_max_bytes: args.fetch_bytes,
        ..FetchOptions::default()
    };
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut consumers = JoinSet::new();
    for share in e2e::share_partitions(positions, args.consumers as usize) {
        let client = Client::new(&args.connect.bootstrap).await?;
        consumers.spawn(read_to_end(
            client,
            share,
            options.clone(),
            (args.count, deadline),
            received.clone(),
            progress.clone(),
            stop.clone(),
        ));
    }
    let (mut records, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    while let Some(done) = consumers.join_next().await {
        let (r, b, e) = done.context("a consumer task failed")??;
        records += r;
        bytes += b;
        errors += e;
    }
    Ok(Report {
        mode: BenchMode::Consume,
        records,
        bytes,
        elapsed: started.elapsed(),
        errors,
        latency_us: None,
        end_to_end: None,
        rss: None,
        stopped: None,
    })
}

/// One consumer of `consume`: fetch `positions` until each partition is at its end, all
/// consumers together received `count` records, or the deadline. Returns its records,
/// value bytes and fetch errors.
async fn read_to_end(
    client: Client,
    mut positions: Vec<(TopicPartition, i64)>,
    options: FetchOptions,
    (count, deadline): (u64, Instant),
    received: Arc<AtomicU64>,
    progress: ProgressBar,
    stop: Stop,
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut records, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    while received.load(Ordering::Relaxed) < count
        && Instant::now() < deadline
        && !stop.is_stopped()
    {
        let fetched = tokio::select! {
            fetched = client.fetch_many(&positions, &options) => fetched,
            () = stop.stopped() => break,
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                stop.on_error(&error);
                if stop.is_stopped() {
                    break;
                }
                return Err(error.into());
            }
        };
        let mut progressed = false;
        for part in fetched {
            if part.error.is_some() {
                errors += 1;
                continue;
            }
            let n = part.records.len() as u64;
            records += n;
            received.fetch_add(n, Ordering::Relaxed);
            progress.inc(n);
            bytes += part
                .records
                .iter()
                .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
                .sum::<u64>();
            if let Some(position) = positions
                .iter_mut()
                .find(|(tp, _)| tp.partition == part.partition)
                && part.next_offset > position.1
            {
                position.1 = part.next_offset;
                progressed = true;
            }
        }
        if !progressed {
            // Every partition of this consumer is at its end.
            break;
        }
    }
    Ok((records, bytes, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_gives_rates_and_percentiles() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let report = Report {
            mode: BenchMode::Produce,
            records: 2_000,
            bytes: 2_000_000,
            elapsed: Duration::from_secs(2),
            errors: 0,
            latency_us: Some(h),
            end_to_end: None,
            rss: None,
            stopped: None,
        };
        let json = report.to_json();
        assert_eq!(json["records_per_sec"], 1000.0);
        assert_eq!(json["mb_per_sec"], 1.0);
        let p50 = json["latency"]["p50_ms"].as_f64().unwrap();
        assert!((0.49..=0.51).contains(&p50), "{p50}");
        assert!((json["latency"]["max_ms"].as_f64().unwrap() - 1.0).abs() < 0.01);
        assert!(report.to_text().contains("1000 records/s"));
        let consume = Report {
            mode: BenchMode::Consume,
            latency_us: None,
            ..report
        };
        assert!(consume.to_json()["latency"].as_object().unwrap().is_empty());
    }

    #[test]
    fn end_to_end_report_has_consumer_rate_latency_and_rss() {
        let mut e2e = Histogram::<u64>::new(3).unwrap();
        for us in [500, 700, 900, 20_000] {
            e2e.record(us).unwrap();
        }
        let report = Report {
            mode: BenchMode::EndToEnd,
            records: 1_000,
            bytes: 64_000,
            elapsed: Duration::from_secs(1),
            errors: 0,
            latency_us: Some(Histogram::<u64>::new(3).unwrap()),
            end_to_end: Some(EndToEnd {
                latency_us: e2e,
                received: 1_000,
                missing: 0,
                elapsed: Duration::from_millis(500),
            }),
            rss: Some(rss::RssStats {
                start: 20_000_000,
                min: 19_000_000,
                max: 25_000_000,
                end: 21_000_000,
                samples: 3,
            }),
            stopped: None,
        };
        let json = report.to_json();
        assert_eq!(json["mode"], "end-to-end");
        assert_eq!(json["end_to_end"]["records_per_sec"], 2000.0);
        assert_eq!(json["end_to_end"]["missing"], 0);
        let lat = &json["end_to_end"]["latency"];
        for key in ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"] {
            assert!(lat[key].as_f64().unwrap() > 0.0, "{key}");
        }
        assert!((lat["max_ms"].as_f64().unwrap() - 20.0).abs() < 0.05);
        assert_eq!(json["broker_rss_mb"]["max"], 25.0);
        let text = report.to_text();
        assert!(
            text.contains(
                "received 1000 records in 0.50 s: 2000 records/s, 0 acknowledged records missing"
            ),
            "{text}"
        );
        assert!(text.contains("end-to-end latency ms: p50 0.70"), "{text}");
        assert!(
            text.contains("broker RSS MB: start 20.0 min 19.0 max 25.0 end 21.0 (3 samples)"),
            "{text}"
        );
    }

    #[test]
    fn batch_size_is_records_and_overrides_batch_bytes() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(["herald", "produce"].iter().chain(extra)).map(|c| c.bench)
        };
        assert_eq!(parse(&[]).unwrap().batch_records(), 64);
        assert_eq!(
            parse(&["--batch-bytes", "1000", "--message-bytes", "100"])
                .unwrap()
                .batch_records(),
            10
        );
        assert_eq!(
            parse(&["--batch-bytes", "10", "--message-bytes", "100"])
                .unwrap()
                .batch_records(),
            1
        );
        assert_eq!(
            parse(&["--batch-size", "500"]).unwrap().batch_records(),
            500
        );
        assert!(parse(&["--batch-size", "5", "--batch-bytes", "100"]).is_err());
        assert!(parse(&["--batch-size", "0"]).is_err());
        let e2e = parse(&["--consumers", "2"]).unwrap();
        assert_eq!((e2e.consumers, e2e.linger_ms), (2, 5));
        // Like a Kafka producer: a 1 MiB request holds a 64 KiB batch for each of up to
        // 16 partitions, never two for one partition, at least one batch.
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.batches_per_request(8), 8);
        assert_eq!(defaults.batches_per_request(100), 16);
        assert_eq!(defaults.batches_per_request(1), 1);
        let small = parse(&["--max-request-bytes", "65536"]).unwrap();
        assert_eq!(small.batches_per_request(8), 1);
        let tiny = parse(&["--max-request-bytes", "10"]).unwrap();
        assert_eq!(tiny.batches_per_request(8), 1);
    }

    #[test]
    fn duration_limit_reads_like_elapsed_time() {
        assert_eq!(format_hms(300), "00:05:00");
        assert_eq!(format_hms(3_725), "01:02:05");
    }
}
