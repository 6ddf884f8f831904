//! `herald bench eventstore`: the event store's targets measured from outside, through
//! its gRPC API, the way a KurrentDB client uses it.
//!
//! The default run has three phases over one set of streams: appends (`--writers`
//! connections, each keeping `--in-flight` streams going, every append a `--batch` of
//! events with the exact expected revision), reads of one whole stream of
//! `--read-events` events (`--reads` times), and a catch-up subscription to `$all` from
//! its start until it is caught up. `--streams N` runs the load instead: N new streams
//! of `--events-per-stream` events each, then the data directory's size and the
//! broker's memory. Start-up times need the broker restarted, which
//! `bench/eventstore.sh` does around this.
//!
//! The client is the generated tonic stub (`herald_eventstore::proto`) over one hyper
//! HTTP/2 connection per writer: no connection pool or balancer between the bench and
//! the broker.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use herald_eventstore::proto::shared::{Empty, StreamIdentifier, Uuid as ProtoUuid};
use herald_eventstore::proto::streams::append_req::options::ExpectedStreamRevision;
use herald_eventstore::proto::streams::append_req::{self, ProposedMessage};
use herald_eventstore::proto::streams::append_resp::{self, success};
use herald_eventstore::proto::streams::read_req::options::{
    self as read_options, AllOptions, CountOption, FilterOption, ReadDirection, StreamOption,
    StreamOptions, SubscriptionOptions, UuidOption, all_options, stream_options,
};
use herald_eventstore::proto::streams::read_resp::Content;
use herald_eventstore::proto::streams::streams_client::StreamsClient;
use herald_eventstore::proto::streams::{AppendReq, ReadReq, read_req};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinSet;

use super::{BenchArgs, Stop, new_histogram, percentiles_json, percentiles_text, rss};

/// The event store mode's own flags; `--count` (events the append phase writes),
/// `--in-flight`, `--duration-secs`, `--broker-pid`, `--json` and `--quiet` are shared
/// with the Kafka modes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Event store mode (herald bench eventstore)")]
pub struct EventStoreArgs {
    /// The event store's gRPC address (`herald serve --eventstore-listen`).
    #[arg(long, default_value = "http://127.0.0.1:2113")]
    pub url: String,
    /// Concurrent writers, each with its own HTTP/2 connection; each keeps
    /// `--in-flight` appends going, one per stream it is writing.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub writers: u32,
    /// Events per append (one Append call), each with the stream's exact expected
    /// revision.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub event_bytes: u32,
    /// Events per stream in the append phase (a writer moves to a new stream after
    /// that many), and so the length of the stream the read phase reads.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub read_events: u32,
    /// Whole-stream reads in the read phase.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub reads: u32,
    /// Load mode: create this many streams (instead of the three phases).
    #[arg(long, default_value_t = 0)]
    pub streams: u64,
    /// Load mode: events in each new stream (one append with no-stream expected).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub events_per_stream: u32,
    /// The broker's data directory, to report its size (log and meta store) after
    /// the run; only when the bench runs on the broker's machine.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Bytes of one gRPC message a read may return: a page of events, with room.
const READ_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// How long connecting to the event store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one append or one whole-stream read may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A `tower::Service` over one hyper HTTP/2 connection, which is all tonic's generated
/// client needs.
#[derive(Clone)]
pub struct H2(SendRequest<tonic::body::Body>);

type ResponseFuture =
    Pin<Box<dyn Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<hyper::Result<()>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> ResponseFuture {
        Box::pin(self.0.send_request(request))
    }
}

type Client = StreamsClient<H2>;

/// `http://host:port` (or `host:port`): the address to dial and the URI origin.
fn parse_url(url: &str) -> anyhow::Result<(String, http::Uri)> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .with_context(|| format!("--url {url:?} is not a URL such as http://127.0.0.1:2113"))?;
    if uri.scheme_str() != Some("http") {
        bail!(
            "--url {url:?}: only plain http:// is supported (the bench speaks HTTP/2 without TLS)"
        );
    }
    let authority = uri
        .authority()
        .with_context(|| format!("--url {url:?} names no host"))?;
    let port = authority.port_u16().unwrap_or(2113);
    Ok((format!("{}:{port}", authority.host()), uri))
}

/// One HTTP/2 connection to the event store.
async fn connect(url: &str) -> anyhow::Result<Client> {
    let (address, origin) = parse_url(url)?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address))
        .await
        .with_context(|| format!("connecting to the event store at {address} timed out"))?
        .with_context(|| format!("cannot connect to the event store at {address}"))?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .with_context(|| format!("HTTP/2 handshake with {address} failed"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "event store connection closed");
        }
    });
    Ok(StreamsClient::with_origin(H2(send), origin)
        .max_decoding_message_size(READ_MESSAGE_BYTES_MAX))
}

fn stream_id(name: &str) -> Option<StreamIdentifier> {
    Some(StreamIdentifier {
        stream_name: Bytes::copy_from_slice(name.as_bytes()),
    })
}

fn structured_uuid(id: uuid::Uuid) -> ProtoUuid {
    herald_eventstore::uuid::to_proto(id, true)
}

/// What every event of a run carries: its type, content type and data.
struct EventTemplate {
    metadata: HashMap<String, String>,
    data: Bytes,
}

impl EventTemplate {
    fn new(event_bytes: u32) -> EventTemplate {
        let metadata = HashMap::from([
            ("type".to_string(), "BenchEvent".to_string()),
            (
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            ),
        ]);
        EventTemplate {
            metadata,
            data: Bytes::from(vec![b'x'; event_bytes as usize]),
        }
    }

    /// The messages of one Append: the options, then `n` events with fresh ids.
    fn append(&self, stream: &str, expected: ExpectedStreamRevision, n: u32) -> Vec<AppendReq> {
        let mut out = Vec::with_capacity(n as usize + 1);
        out.push(AppendReq {
            content: Some(append_req::Content::Options(append_req::Options {
                stream_identifier: stream_id(stream),
                expected_stream_revision: Some(expected),
            })),
        });
        for _ in 0..n {
            out.push(AppendReq {
                content: Some(append_req::Content::ProposedMessage(ProposedMessage {
                    id: Some(structured_uuid(uuid::Uuid::new_v4())),
                    metadata: self.metadata.clone(),
                    custom_metadata: Bytes::new(),
                    data: self.data.clone(),
                })),
            });
        }
        out
    }
}

/// A successful append's new last revision and commit position.
async fn append(
    client: &mut Client,
    messages: Vec<AppendReq>,
) -> anyhow::Result<(u64, Option<u64>)> {
    let call = client.append(tokio_stream::iter(messages));
    let response = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .context("append timed out")?
        .context("append failed")?
        .into_inner();
    match response.result {
        Some(append_resp::Result::Success(s)) => {
            let Some(success::CurrentRevisionOption::CurrentRevision(revision)) =
                s.current_revision_option
            else {
                bail!("append succeeded without a current revision");
            };
            let position = match s.position_option {
                Some(success::PositionOption::Position(p)) => Some(p.commit_position),
                _ => None,
            };
            Ok((revision, position))
        }
        Some(append_resp::Result::WrongExpectedVersion(w)) => {
            bail!("wrong expected version: {w:?}")
        }
        None => bail!("append answered with neither success nor wrong expected version"),
    }
}

fn read_options(stream: StreamOption, count: CountOption) -> ReadReq {
    ReadReq {
        options: Some(read_req::Options {
            read_direction: ReadDirection::Forwards as i32,
            resolve_links: false,
            uuid_option: Some(UuidOption {
                content: Some(read_options::uuid_option::Content::Structured(Empty {})),
            }),
            control_option: Some(read_options::ControlOption { compatibility: 1 }),
            stream_option: Some(stream),
            count_option: Some(count),
            filter_option: Some(FilterOption::NoFilter(Empty {})),
        }),
    }
}

/// Read all of `stream` from its start; the revisions read, which must be 0, 1, ...
async fn read_stream(client: &mut Client, stream: &str, count: u64) -> anyhow::Result<u64> {
    let request = read_options(
        StreamOption::Stream(StreamOptions {
            stream_identifier: stream_id(stream),
            revision_option: Some(stream_options::RevisionOption::Start(Empty {})),
        }),
        CountOption::Count(count),
    );
    let read = async {
        let mut events = client
            .read(request)
            .await
            .context("read failed")?
            .into_inner();
        let mut next = 0u64;
        while let Some(message) = events.message().await.context("read failed")? {
            match message.content {
                Some(Content::Event(e)) => {
                    let revision = e.event.map(|e| e.stream_revision);
                    if revision != Some(next) {
                        bail!("{stream}: expected revision {next}, read {revision:?}");
                    }
                    next += 1;
                }
                Some(Content::StreamNotFound(_)) => bail!("{stream}: stream not found"),
                _ => {}
            }
        }
        Ok(next)
    };
    tokio::time::timeout(CALL_TIMEOUT, read)
        .await
        .with_context(|| format!("reading {stream} timed out"))?
}

/// Take up to `want` from `remaining`; 0 once it is used up.
fn claim(remaining: &AtomicU64, want: u64) -> u64 {
    let mut current = remaining.load(Ordering::Relaxed);
    loop {
        let take = current.min(want);
        if take == 0 {
            return 0;
        }
        match remaining.compare_exchange_weak(
            current,
            current - take,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return take,
            Err(now) => current = now,
        }
    }
}

/// What one appending chain (one stream after another) measured.
struct ChainResult {
    latency_us: Histogram<u64>,
    events: u64,
    errors: u64,
    first_error: Option<String>,
    /// Streams this chain filled to their length.
    full_streams: Vec<String>,
    last_position: u64,
}

/// How a chain picks its streams and expected revisions.
#[derive(Clone, Copy)]
enum Shape {
    /// Streams of `stream_events`, `batch` events per append, exact revisions.
    Phases { batch: u32, stream_events: u32 },
    /// New streams of `events` each, one append with no-stream expected.
    Load { events: u32 },
}

struct Work {
    template: EventTemplate,
    remaining: AtomicU64,
    next_stream: AtomicU64,
    prefix: String,
    shape: Shape,
    deadline: Instant,
    stop: Stop,
}

async fn chain(mut client: Client, work: Arc<Work>) -> ChainResult {
    let mut result = ChainResult {
        latency_us: new_histogram(),
        events: 0,
        errors: 0,
        first_error: None,
        full_streams: Vec::new(),
        last_position: 0,
    };
    let new_stream = |work: &Work| {
        let n = work.next_stream.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", work.prefix)
    };
    let mut stream = new_stream(&work);
    // The stream's last revision; None before its first append.
    let mut last: Option<u64> = None;
    while !work.stop.is_stopped() && Instant::now() < work.deadline {
        let (n, expected) = match work.shape {
            Shape::Phases {
                batch,
                stream_events,
            } => {
                let written = last.map_or(0, |l| l + 1);
                let room = u64::from(stream_events) - written;
                let n = claim(&work.remaining, room.min(u64::from(batch)));
                let expected = match last {
                    Some(l) => ExpectedStreamRevision::Revision(l),
                    None => ExpectedStreamRevision::NoStream(Empty {}),
                };
                (n, expected)
            }
            Shape::Load { events } => (
                claim(&work.remaining, u64::from(events)),
                ExpectedStreamRevision::NoStream(Empty {}),
            ),
        };
        if n == 0 {
            break;
        }
        let messages = work.template.append(&stream, expected, n as u32);
        let started = Instant::now();
        match append(&mut client, messages).await {
            Ok((revision, position)) => {
                let want = last.map_or(n - 1, |l| l + n);
                if revision != want {
                    result.errors += 1;
                    result.first_error.get_or_insert_with(|| {
                        format!("{stream}: appended up to revision {revision}, expected {want}")
                    });
                    break;
                }
                let _ = result
                    .latency_us
                    .record(started.elapsed().as_micros() as u64);
                result.events += n;
                result.last_position = result.last_position.max(position.unwrap_or(0));
                last = Some(revision);
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| format!("{e:#}"));
                // The stream's revision is unknown now; carry on with a fresh one.
                stream = new_stream(&work);
                last = None;
                continue;
            }
        }
        let full = match work.shape {
            Shape::Phases { stream_events, .. } => {
                last.is_some_and(|l| l + 1 >= u64::from(stream_events))
            }
            Shape::Load { .. } => true,
        };
        if full {
            if matches!(work.shape, Shape::Phases { .. }) {
                result.full_streams.push(stream);
            }
            stream = new_stream(&work);
            last = None;
        }
    }
    result
}

/// The appends of either shape: `writers` connections, `in_flight` chains each.
struct Appends {
    events: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    full_streams: Vec<String>,
    last_position: u64,
}

impl Appends {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `writers` connections with `in_flight` chains each.
struct Concurrency {
    writers: u32,
    in_flight: u32,
}

async fn run_appends(
    args: &BenchArgs,
    es: &EventStoreArgs,
    shape: Shape,
    total_events: u64,
    concurrency: Concurrency,
    stop: &Stop,
) -> anyhow::Result<Appends> {
    let work = Arc::new(Work {
        template: EventTemplate::new(es.event_bytes),
        remaining: AtomicU64::new(total_events),
        next_stream: AtomicU64::new(0),
        prefix: format!("bench_{}", uuid::Uuid::new_v4().simple()),
        shape,
        deadline: Instant::now() + Duration::from_secs(args.duration_secs),
        stop: stop.clone(),
    });
    let mut clients = Vec::with_capacity(concurrency.writers as usize);
    for _ in 0..concurrency.writers {
        clients.push(connect(&es.url).await?);
    }
    let started = Instant::now();
    let mut chains = JoinSet::new();
    for client in clients {
        for _ in 0..concurrency.in_flight {
            chains.spawn(chain(client.clone(), work.clone()));
        }
    }
    let mut total = Appends {
        events: 0,
        elapsed: Duration::ZERO,
        latency_us: new_histogram(),
        errors: 0,
        first_error: None,
        full_streams: Vec::new(),
        last_position: 0,
    };
    while let Some(done) = chains.join_next().await {
        let r = done.context("an append task failed")?;
        total.events += r.events;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        let _ = total.latency_us.add(&r.latency_us);
        total.full_streams.extend(r.full_streams);
        total.last_position = total.last_position.max(r.last_position);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Whole-stream reads of one stream.
struct Reads {
    stream: String,
    events: u64,
    reads: u64,
    latency_us: Histogram<u64>,
}

async fn run_reads(es: &EventStoreArgs, stream: &str, stop: &Stop) -> anyhow::Result<Reads> {
    let mut client = connect(&es.url).await?;
    let mut out = Reads {
        stream: stream.to_string(),
        events: u64::from(es.read_events),
        reads: 0,
        latency_us: new_histogram(),
    };
    for _ in 0..es.reads {
        if stop.is_stopped() {
            break;
        }
        let started = Instant::now();
        let got = read_stream(&mut client, stream, u64::from(es.read_events)).await?;
        let _ = out.latency_us.record(started.elapsed().as_micros() as u64);
        if got != u64::from(es.read_events) {
            bail!(
                "{stream}: read {got} events, {} were appended",
                es.read_events
            );
        }
        out.reads += 1;
    }
    Ok(out)
}

/// A catch-up subscription to `$all` from its start, until caught up.
struct CatchUp {
    events: u64,
    elapsed: Duration,
}

async fn run_catch_up(
    es: &EventStoreArgs,
    args: &BenchArgs,
    stop: &Stop,
) -> anyhow::Result<CatchUp> {
    let mut client = connect(&es.url).await?;
    let request = read_options(
        StreamOption::All(AllOptions {
            all_option: Some(all_options::AllOption::Start(Empty {})),
        }),
        CountOption::Subscription(SubscriptionOptions {}),
    );
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.duration_secs);
    let mut events = client
        .read(request)
        .await
        .context("subscribing to $all failed")?
        .into_inner();
    let mut count = 0u64;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, events.message()) => next,
            () = stop.stopped() => break,
        };
        let message = next
            .context("the $all subscription did not catch up within --duration-secs")?
            .context("the $all subscription failed")?;
        match message.and_then(|m| m.content) {
            Some(Content::Event(_)) => count += 1,
            Some(Content::CaughtUp(_)) => break,
            Some(_) => {}
            None => bail!("the $all subscription ended before it caught up"),
        }
    }
    Ok(CatchUp {
        events: count,
        elapsed: started.elapsed(),
    })
}

/// Bytes of the files under a directory: their length and what they take on disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirBytes {
    pub apparent: u64,
    pub allocated: u64,
}

fn dir_bytes(path: &Path, out: &mut DirBytes, skip: &dyn Fn(&Path) -> bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let path = entry.path();
        if skip(&path) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_dir() {
            dir_bytes(&path, out, skip)?;
        } else {
            out.apparent += meta.len();
            out.allocated += meta.blocks() * 512;
        }
    }
    Ok(())
}

/// The meta store (where the stream index lives) and everything else (the log).
struct DataDir {
    meta: DirBytes,
    rest: DirBytes,
}

/// The meta store's file in a data directory.
const META_FILE: &str = "meta.redb";

fn measure_data_dir(dir: &Path) -> anyhow::Result<DataDir> {
    use std::os::unix::fs::MetadataExt;
    let meta_path = dir.join(META_FILE);
    let m = std::fs::metadata(&meta_path)
        .with_context(|| format!("cannot read {}", meta_path.display()))?;
    let mut rest = DirBytes::default();
    dir_bytes(dir, &mut rest, &|p| p == meta_path)
        .with_context(|| format!("cannot walk {}", dir.display()))?;
    Ok(DataDir {
        meta: DirBytes {
            apparent: m.len(),
            allocated: m.blocks() * 512,
        },
        rest,
    })
}

/// What an event store run measured.
struct Report {
    appends: Appends,
    load: bool,
    reads: Option<Reads>,
    catch_up: Option<CatchUp>,
    data_dir: Option<DataDir>,
    rss: Option<rss::RssStats>,
    stopped: Option<String>,
}

const MB: f64 = 1_000_000.0;

impl Report {
    fn to_json(&self, args: &BenchArgs, es: &EventStoreArgs) -> serde_json::Value {
        let a = &self.appends;
        let mut json = serde_json::json!({
            "mode": "eventstore",
            "load": self.load,
            "writers": es.writers,
            "in_flight": args.in_flight,
            "batch": if self.load { es.events_per_stream } else { es.batch },
            "event_bytes": es.event_bytes,
            "append": {
                "events": a.events,
                "appends": a.latency_us.len(),
                "seconds": a.elapsed.as_secs_f64(),
                "events_per_sec": a.events_per_sec(),
                "errors": a.errors,
                "first_error": a.first_error,
                "latency": percentiles_json(Some(&a.latency_us)),
            },
            "stopped": self.stopped,
        });
        if self.load {
            json["streams"] = serde_json::json!(es.streams);
            json["events_per_stream"] = serde_json::json!(es.events_per_stream);
        }
        if let Some(r) = &self.reads {
            json["read"] = serde_json::json!({
                "stream": r.stream,
                "events": r.events,
                "reads": r.reads,
                "latency": percentiles_json(Some(&r.latency_us)),
            });
        }
        if let Some(c) = &self.catch_up {
            json["catch_up_all"] = serde_json::json!({
                "events": c.events,
                "seconds": c.elapsed.as_secs_f64(),
                "events_per_sec": c.events as f64 / c.elapsed.as_secs_f64().max(1e-9),
            });
        }
        if let Some(d) = &self.data_dir {
            json["data_dir_bytes"] = serde_json::json!({
                "meta_apparent": d.meta.apparent,
                "meta_allocated": d.meta.allocated,
                "log_apparent": d.rest.apparent,
                "log_allocated": d.rest.allocated,
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

    fn to_text(&self, args: &BenchArgs, es: &EventStoreArgs) -> String {
        let mut out = match &self.stopped {
            Some(reason) => format!("partial report, the run stopped early: {reason}\n"),
            None => String::new(),
        };
        let a = &self.appends;
        let what = if self.load {
            format!(
                "{} streams of {} events (no-stream expected)",
                es.streams, es.events_per_stream
            )
        } else {
            format!("{}-event appends with exact expected revisions", es.batch)
        };
        out.push_str(&format!(
            "append: {} events in {:.2} s: {:.0} events/s, {} writers x {} in flight, {what}, {} errors",
            a.events,
            a.elapsed.as_secs_f64(),
            a.events_per_sec(),
            es.writers,
            args.in_flight,
            a.errors,
        ));
        if let Some(e) = &a.first_error {
            out.push_str(&format!(" (first: {e})"));
        }
        out.push_str(&percentiles_text("append latency", &a.latency_us));
        if let Some(r) = &self.reads {
            out.push_str(&format!(
                "\nread: {} reads of the {}-event stream {}",
                r.reads, r.events, r.stream
            ));
            out.push_str(&percentiles_text(
                "whole-stream read latency",
                &r.latency_us,
            ));
        }
        if let Some(c) = &self.catch_up {
            out.push_str(&format!(
                "\ncatch-up subscription to $all: {} events in {:.2} s: {:.0} events/s",
                c.events,
                c.elapsed.as_secs_f64(),
                c.events as f64 / c.elapsed.as_secs_f64().max(1e-9)
            ));
        }
        if let Some(d) = &self.data_dir {
            out.push_str(&format!(
                "\ndata dir: meta store (index) {:.1} MB ({:.1} MB on disk), log and the rest {:.1} MB ({:.1} MB on disk)",
                d.meta.apparent as f64 / MB,
                d.meta.allocated as f64 / MB,
                d.rest.apparent as f64 / MB,
                d.rest.allocated as f64 / MB,
            ));
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

pub async fn run(args: &BenchArgs, stop: &Stop) -> anyhow::Result<()> {
    let es = &args.eventstore;
    // Fail on a bad address before any phase starts.
    drop(connect(&es.url).await?);
    let sampler = args.broker_pid.map(rss::Sampler::start).transpose()?;
    let load = es.streams > 0;
    let (appends, reads, catch_up) = if load {
        let total = es.streams.saturating_mul(u64::from(es.events_per_stream));
        let shape = Shape::Load {
            events: es.events_per_stream,
        };
        let concurrency = Concurrency {
            writers: es.writers,
            in_flight: args.in_flight,
        };
        let appends = run_appends(args, es, shape, total, concurrency, stop).await?;
        (appends, None, None)
    } else {
        let shape = Shape::Phases {
            batch: es.batch,
            stream_events: es.read_events,
        };
        let concurrency = Concurrency {
            writers: es.writers,
            in_flight: args.in_flight,
        };
        let appends = run_appends(args, es, shape, args.count, concurrency, stop).await?;
        let mut read_stream = appends.full_streams.first().cloned();
        if read_stream.is_none() && !stop.is_stopped() {
            // `--count` was spread too thin for any stream to reach `--read-events`:
            // one writer fills one, outside the append figures.
            let one = Concurrency {
                writers: 1,
                in_flight: 1,
            };
            let filled = run_appends(args, es, shape, u64::from(es.read_events), one, stop).await?;
            if let Some(e) = filled.first_error {
                bail!("cannot write the stream the read phase reads: {e}");
            }
            read_stream = filled.full_streams.into_iter().next();
        }
        let reads = match &read_stream {
            Some(stream) if !stop.is_stopped() => Some(run_reads(es, stream, stop).await?),
            _ => None,
        };
        let catch_up = if stop.is_stopped() {
            None
        } else {
            Some(run_catch_up(es, args, stop).await?)
        };
        (appends, reads, catch_up)
    };
    let data_dir = es.data_dir.as_deref().map(measure_data_dir).transpose()?;
    let rss = match sampler {
        Some(s) => s.stop().await,
        None => None,
    };
    let report = Report {
        appends,
        load,
        reads,
        catch_up,
        data_dir,
        rss,
        stopped: stop.reason(),
    };
    if args.json {
        println!("{}", report.to_json(args, es));
    } else {
        println!("{}", report.to_text(args, es));
    }
    if let Some(reason) = &report.stopped {
        bail!("the run stopped early: {reason}");
    }
    if report.appends.errors > 0 {
        bail!("{} appends failed", report.appends.errors);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_a_scheme() {
        let (address, origin) = parse_url("http://127.0.0.1:2113").unwrap();
        assert_eq!(address, "127.0.0.1:2113");
        assert_eq!(origin.to_string(), "http://127.0.0.1:2113/");
        assert_eq!(parse_url("localhost:7").unwrap().0, "localhost:7");
        assert_eq!(parse_url("http://localhost").unwrap().0, "localhost:2113");
        assert!(parse_url("https://localhost:2113").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn claims_share_out_exactly() {
        let remaining = AtomicU64::new(25);
        assert_eq!(claim(&remaining, 10), 10);
        assert_eq!(claim(&remaining, 10), 10);
        assert_eq!(claim(&remaining, 10), 5);
        assert_eq!(claim(&remaining, 10), 0);
    }
}
