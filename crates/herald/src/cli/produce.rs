//! `herald produce TOPIC`: one event per line of standard input.
//!
//! A thread reads stdin (blocking reads are cheapest there) and hands over whatever
//! lines are available at once; the async side groups them per partition and sends
//! one batch per partition per flush. A flush happens when a batch is full or when
//! no new line arrived for a moment, so piped files go out in large batches and
//! typed lines go out at once. One flush is in flight while the next is read, and a
//! flush completes (retries included) before the next is sent, so records of a
//! partition keep the order of the input.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use herald_client::partitioner::partition_for_key;
use herald_client::{Acks, Client, Compression, ProduceOptions, ProduceRecord};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ConnectArgs, parse_key_value};

/// Bound on the bytes of one partition's batch (the broker's default message size
/// limit is 1 MiB; stay under it with room for the request around it).
const BATCH_BYTES_MAX: usize = 900 * 1024;
/// Bound on the records of one flush across partitions.
const FLUSH_RECORDS_MAX: usize = 50_000;
/// How long to wait for more input before sending what is buffered.
const LINGER: Duration = Duration::from_millis(5);
/// Lines the reader thread hands over at once, and chunks it may queue ahead.
const READ_CHUNK_LINES_MAX: usize = 4096;
const READ_CHUNKS_QUEUED_MAX: usize = 16;
const STDIN_BUFFER_BYTES: usize = 256 * 1024;
/// Attempts per batch for errors the broker says are retriable.
const PRODUCE_ATTEMPTS: u32 = 3;
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic to write to (created if the broker auto-creates topics).
    pub topic: String,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header added to every event (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Send every event to this partition (default: by key hash, or spread when unkeyed).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Replicas that must have an event before it counts as written: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    /// Compress each batch with this codec.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(value: CompressionArg) -> Self {
        match value {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

pub fn parse_acks(input: &str) -> Result<Acks, String> {
    match input {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("expected 0, 1 or all, got {other:?}")),
    }
}

/// Splits a line (without its line ending) into key and value.
pub fn split_line(line: &[u8], separator: Option<&[u8]>) -> Option<(Option<Bytes>, Bytes)> {
    let Some(separator) = separator else {
        return Some((None, Bytes::copy_from_slice(line)));
    };
    let at = line.windows(separator.len()).position(|w| w == separator)?;
    Some((
        Some(Bytes::copy_from_slice(&line[..at])),
        Bytes::copy_from_slice(&line[at + separator.len()..]),
    ))
}

fn strip_line_ending(mut line: &[u8]) -> &[u8] {
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest;
    }
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Chooses partitions: a fixed one, the key's murmur2 hash, or for unkeyed events
/// one partition per flush, moving on at each flush (the Java client's "sticky"
/// behaviour: big batches, spread over time).
struct Partitioner {
    fixed: Option<i32>,
    partitions: i32,
    sticky: i32,
}

impl Partitioner {
    fn partition(&self, key: Option<&[u8]>) -> i32 {
        match (self.fixed, key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, self.partitions),
            (None, None) => self.sticky,
        }
    }

    fn next_batch(&mut self) {
        self.sticky = (self.sticky + 1) % self.partitions;
    }
}

#[derive(Default)]
struct Pending {
    batches: BTreeMap<i32, Vec<ProduceRecord>>,
    batch_bytes: BTreeMap<i32, usize>,
    records: usize,
}

impl Pending {
    /// Adds a record; true when a batch is full and the flush should happen now.
    fn push(&mut self, partition: i32, record: ProduceRecord) -> bool {
        let bytes = record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
            + 16;
        self.batches.entry(partition).or_default().push(record);
        let batch_bytes = self.batch_bytes.entry(partition).or_default();
        *batch_bytes += bytes;
        self.records += 1;
        *batch_bytes >= BATCH_BYTES_MAX || self.records >= FLUSH_RECORDS_MAX
    }
}

/// What a flush reports: failed batches as (partition, records, error).
type FlushFailures = Vec<(i32, usize, herald_client::Error)>;

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let separator = match &args.key_separator {
        Some(sep) if sep.is_empty() => bail!("--key-separator must not be empty"),
        Some(sep) => Some(sep.clone().into_bytes()),
        None => None,
    };
    let client = args.connect.connect().await?;
    let topic = client
        .topic_or_create(&args.topic)
        .await
        .with_context(|| format!("cannot produce to topic {}", args.topic))?;
    let partitions = topic.partition_count();
    if partitions == 0 {
        bail!("topic {} has no partitions", args.topic);
    }
    if let Some(partition) = args.partition
        && partition >= partitions
    {
        bail!(
            "topic {} has {partitions} partitions, 0 to {}; there is no partition {partition}",
            args.topic,
            partitions - 1
        );
    }
    let mut partitioner = Partitioner {
        fixed: args.partition,
        partitions,
        sticky: rand::random_range(0..partitions),
    };
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    let options = ProduceOptions {
        acks: args.acks,
        compression: args.compression.into(),
        ..ProduceOptions::default()
    };

    let mut lines = spawn_stdin_reader();
    let mut pending = Pending::default();
    let mut in_flight: Option<JoinHandle<FlushFailures>> = None;
    let mut line_number: u64 = 0;
    let mut total: u64 = 0;
    let mut failed: u64 = 0;
    loop {
        let chunk = if pending.records == 0 {
            lines.recv().await
        } else {
            match tokio::time::timeout(LINGER, lines.recv()).await {
                Ok(chunk) => chunk,
                Err(_) => {
                    failed +=
                        flush(&client, &args.topic, &options, &mut pending, &mut in_flight).await;
                    partitioner.next_batch();
                    continue;
                }
            }
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.context("cannot read standard input")?;
        for line in chunk {
            line_number += 1;
            total += 1;
            let Some((key, value)) = split_line(strip_line_ending(&line), separator.as_deref())
            else {
                eprintln!(
                    "error: line {line_number} has no key separator {:?}; not produced",
                    args.key_separator.as_deref().unwrap_or_default()
                );
                failed += 1;
                continue;
            };
            let partition = partitioner.partition(key.as_deref());
            let record = ProduceRecord {
                key,
                value: Some(value),
                headers: headers.clone(),
                timestamp_ms: None,
            };
            if pending.push(partition, record) {
                failed += flush(&client, &args.topic, &options, &mut pending, &mut in_flight).await;
                partitioner.next_batch();
            }
        }
    }
    failed += flush(&client, &args.topic, &options, &mut pending, &mut in_flight).await;
    if let Some(last) = in_flight.take() {
        failed += report(last.await.context("produce task failed")?, &args.topic);
    }
    if args.acks == Acks::None {
        // Nothing was acknowledged; at least make sure the broker read every request.
        client
            .flush()
            .await
            .context("cannot confirm the events reached the broker")?;
    }
    if failed > 0 {
        bail!(
            "{failed} of {total} events were not produced to {}",
            args.topic
        );
    }
    let mut out = super::Output::default();
    let events = if total == 1 { "event" } else { "events" };
    out.line(if args.acks == Acks::None {
        format!(
            "sent {total} {events} to {} (acks=0: not confirmed)",
            args.topic
        )
    } else {
        format!("produced {total} {events} to {}", args.topic)
    });
    out.emit()
}

/// Waits for the previous flush, then starts sending `pending`. Returns how many
/// records the previous flush failed to write.
async fn flush(
    client: &Client,
    topic: &str,
    options: &ProduceOptions,
    pending: &mut Pending,
    in_flight: &mut Option<JoinHandle<FlushFailures>>,
) -> u64 {
    let mut failed = 0;
    if let Some(previous) = in_flight.take() {
        failed += match previous.await {
            Ok(failures) => report(failures, topic),
            Err(error) => {
                eprintln!("error: produce task failed: {error}");
                0
            }
        };
    }
    if pending.records == 0 {
        return failed;
    }
    let batches = std::mem::take(pending).batches;
    let client = client.clone();
    let topic = topic.to_owned();
    let options = options.clone();
    *in_flight = Some(tokio::spawn(async move {
        let mut sends = tokio::task::JoinSet::new();
        for (partition, records) in batches {
            let client = client.clone();
            let topic = topic.clone();
            let options = options.clone();
            sends.spawn(async move {
                let result =
                    produce_with_retry(&client, &topic, partition, &records, &options).await;
                (partition, records.len(), result)
            });
        }
        let mut failures = Vec::new();
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok((partition, count, Err(error))) => failures.push((partition, count, error)),
                Ok(_) => {}
                Err(error) => failures.push((
                    -1,
                    0,
                    herald_client::Error::UnexpectedResponse(format!(
                        "produce task failed: {error}"
                    )),
                )),
            }
        }
        failures
    }));
    failed
}

async fn produce_with_retry(
    client: &Client,
    topic: &str,
    partition: i32,
    records: &[ProduceRecord],
    options: &ProduceOptions,
) -> Result<(), herald_client::Error> {
    let mut attempt = 1;
    loop {
        match client.produce(topic, partition, records, options).await {
            Ok(_) => return Ok(()),
            Err(error) if error.is_retriable() && attempt < PRODUCE_ATTEMPTS => {
                tracing::debug!(%error, attempt, "retrying produce");
                attempt += 1;
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            Err(error) => return Err(error),
        }
    }
}

fn report(failures: FlushFailures, topic: &str) -> u64 {
    let mut failed = 0;
    for (partition, count, error) in failures {
        eprintln!("error: {count} events to {topic}-{partition} were not produced: {error}");
        failed += count as u64;
    }
    failed
}

/// Reads stdin on a thread, sending every line available without blocking as one
/// chunk, so a fast pipe yields big chunks and a terminal yields single lines.
fn spawn_stdin_reader() -> mpsc::Receiver<std::io::Result<Vec<Vec<u8>>>> {
    let (tx, rx) = mpsc::channel(READ_CHUNKS_QUEUED_MAX);
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::with_capacity(STDIN_BUFFER_BYTES, std::io::stdin());
        loop {
            let mut chunk = Vec::new();
            let mut eof = false;
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => chunk.push(line),
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        let _ = tx.blocking_send(Err(error));
                        return;
                    }
                }
                if reader.buffer().is_empty() || chunk.len() >= READ_CHUNK_LINES_MAX {
                    break;
                }
            }
            if !chunk.is_empty() && tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
            if eof {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::super::ClientCommand;
    use super::super::tests::parse;
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        let (key, value) = split_line(b"customer-7\tOrderPlaced\t42", Some(b"\t")).expect("split");
        assert_eq!(key.as_deref(), Some(&b"customer-7"[..]));
        assert_eq!(&value[..], b"OrderPlaced\t42");
        let (key, value) = split_line(b"k::v", Some(b"::")).expect("split");
        assert_eq!(key.as_deref(), Some(&b"k"[..]));
        assert_eq!(&value[..], b"v");
        assert!(split_line(b"no separator", Some(b"\t")).is_none());
        let (key, value) = split_line(b"plain", None).expect("no separator needed");
        assert_eq!((key, &value[..]), (None, &b"plain"[..]));
    }

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
        assert_eq!(strip_line_ending(b"a\n"), b"a");
        assert_eq!(strip_line_ending(b"a"), b"a");
        assert_eq!(strip_line_ending(b"\n"), b"");
    }

    #[test]
    fn keyed_events_follow_the_java_partitioner_and_unkeyed_ones_stick() {
        let mut partitioner = Partitioner {
            fixed: None,
            partitions: 4,
            sticky: 3,
        };
        assert_eq!(
            partitioner.partition(Some(b"21")),
            partition_for_key(b"21", 4)
        );
        assert_eq!(partitioner.partition(None), 3);
        assert_eq!(partitioner.partition(None), 3);
        partitioner.next_batch();
        assert_eq!(partitioner.partition(None), 0);
        partitioner.fixed = Some(2);
        assert_eq!(partitioner.partition(Some(b"21")), 2);
    }

    #[test]
    fn acks_accept_kafka_spellings() {
        assert_eq!(parse_acks("0"), Ok(Acks::None));
        assert_eq!(parse_acks("1"), Ok(Acks::Leader));
        assert_eq!(parse_acks("all"), Ok(Acks::All));
        assert_eq!(parse_acks("-1"), Ok(Acks::All));
        assert!(parse_acks("2").is_err());
    }

    #[test]
    fn produce_arguments_parse() {
        let Ok(ClientCommand::Produce(args)) = parse(&[
            "produce",
            "orders",
            "--key-separator",
            ":",
            "--header",
            "source=cli",
            "--acks",
            "1",
            "--compression",
            "zstd",
        ]) else {
            panic!("did not parse");
        };
        assert_eq!(args.topic, "orders");
        assert_eq!(args.key_separator.as_deref(), Some(":"));
        assert_eq!(args.headers, vec![("source".to_owned(), "cli".to_owned())]);
        assert_eq!(args.acks, Acks::Leader);
        assert_eq!(args.compression, CompressionArg::Zstd);
        assert_eq!(args.partition, None);

        let Ok(ClientCommand::Produce(args)) = parse(&["produce", "orders"]) else {
            panic!("did not parse");
        };
        assert_eq!(args.acks, Acks::All);
        assert_eq!(args.compression, CompressionArg::None);

        assert!(parse(&["produce", "orders", "--compression", "brotli"]).is_err());
        assert!(parse(&["produce", "orders", "--partition", "-1"]).is_err());
        assert!(parse(&["produce", "orders", "--acks", "2"]).is_err());
    }

    #[test]
    fn a_full_batch_asks_for_a_flush() {
        let mut pending = Pending::default();
        let big = Bytes::from(vec![b'x'; BATCH_BYTES_MAX / 2]);
        assert!(!pending.push(0, ProduceRecord::new(None, Some(big.clone()))));
        assert!(!pending.push(1, ProduceRecord::new(None, Some(big.clone()))));
        assert!(pending.push(0, ProduceRecord::new(None, Some(big))));
    }
}
