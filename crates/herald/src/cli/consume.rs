//! `herald consume TOPIC`: print events, one per line.
//!
//! Without a group it reads the chosen partitions itself, from the end (or the
//! beginning, or an offset). With `--group` it joins the consumer group, reads what
//! the group assigns it from the committed offsets, and commits what it printed, so
//! a second run continues where the first stopped. It stops after `--count` events,
//! after `--timeout-ms` without new events, or on Ctrl-C, leaving the group cleanly.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use herald_client::{
    Client, ConsumedRecord, FetchOptions, FetchedPartition, GroupMember, GroupOptions, OffsetSpec,
    ResponseError, TopicPartition,
};

use super::ConnectArgs;

/// How long one fetch may wait for new events; also how often Ctrl-C, the idle
/// timeout and rebalances are noticed at the latest.
const FETCH_WAIT_MAX: Duration = Duration::from_millis(500);
const FETCH_WAIT_MIN: Duration = Duration::from_millis(10);
/// Pause after a partition error the broker calls retriable.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,
    /// Consume as a member of this consumer group, committing offsets.
    #[arg(long)]
    pub group: Option<String>,
    /// Start at the oldest event (for a group: where it has no committed offset).
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Read only this partition.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..), conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Start at this offset (in every partition read).
    #[arg(
        long,
        value_parser = clap::value_parser!(i64).range(0..),
        conflicts_with_all = ["group", "from_beginning"]
    )]
    pub offset: Option<i64>,
    /// Print the key before the value.
    #[arg(long)]
    pub print_key: bool,
    /// Print headers (k=v,k=v) before the key and value.
    #[arg(long)]
    pub print_headers: bool,
    /// Separates headers, key and value [default: tab].
    #[arg(
        long,
        value_name = "SEP",
        default_value = "\t",
        hide_default_value = true
    )]
    pub key_separator: String,
    /// Stop after this many milliseconds without new events.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Formats records as lines.
pub struct Format {
    pub print_key: bool,
    pub print_headers: bool,
    pub separator: Vec<u8>,
}

impl Format {
    pub fn write(&self, out: &mut Vec<u8>, record: &ConsumedRecord) {
        if self.print_headers {
            for (index, (name, value)) in record.headers.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                if let Some(value) = value {
                    out.push(b'=');
                    out.extend_from_slice(value);
                }
            }
            out.extend_from_slice(&self.separator);
        }
        if self.print_key {
            out.extend_from_slice(record.key.as_deref().unwrap_or(b"null"));
            out.extend_from_slice(&self.separator);
        }
        out.extend_from_slice(record.value.as_deref().unwrap_or(b"null"));
        out.push(b'\n');
    }
}

/// When to stop: after a number of events, or after a quiet period.
struct Stop {
    remaining: Option<u64>,
    idle: Option<Duration>,
    last_event: Instant,
}

impl Stop {
    fn done(&self) -> bool {
        self.remaining == Some(0)
            || self
                .idle
                .is_some_and(|idle| self.last_event.elapsed() >= idle)
    }
}

/// What the consume loop reads and prints, shared by both modes.
struct Reader {
    client: Client,
    format: Format,
    stop: Stop,
    fetch: FetchOptions,
    /// Where a partition with no usable offset starts.
    reset: OffsetSpec,
    /// Next offset to print per partition.
    positions: BTreeMap<TopicPartition, i64>,
    /// Whether the last fetch failed (a retry streak is reported once).
    fetch_failing: bool,
}

enum Step {
    Continue,
    /// Count reached, idle timeout, or stdout closed.
    Finished,
}

impl Reader {
    /// One fetch round: print what arrived, move positions past it.
    async fn step(&mut self) -> anyhow::Result<Step> {
        if self.stop.done() {
            return Ok(Step::Finished);
        }
        if self.positions.is_empty() {
            tokio::time::sleep(self.fetch.max_wait).await;
            return Ok(Step::Continue);
        }
        let wanted: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .map(|(tp, &o)| (tp.clone(), o))
            .collect();
        let fetched = match self.client.fetch_many(&wanted, &self.fetch).await {
            Ok(fetched) => fetched,
            // The broker restarting or a leader moving: try again shortly.
            Err(error) if error.is_retriable() => {
                if !self.fetch_failing {
                    eprintln!("warning: fetch failed, retrying: {error}");
                }
                self.fetch_failing = true;
                tokio::time::sleep(RETRY_BACKOFF).await;
                return Ok(Step::Continue);
            }
            Err(error) => return Err(error).context("fetch failed"),
        };
        self.fetch_failing = false;
        let mut out = Vec::new();
        let mut backoff = false;
        for partition in fetched {
            backoff |= self.take(partition, &mut out).await?;
        }
        if !out.is_empty() {
            self.stop.last_event = Instant::now();
            let stdout = std::io::stdout();
            let mut stdout = stdout.lock();
            match stdout.write_all(&out).and_then(|()| stdout.flush()) {
                Ok(()) => {}
                // The reader went away (`| head`): a normal way to stop.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(Step::Finished);
                }
                Err(error) => return Err(error).context("cannot write to standard output"),
            }
        }
        if backoff {
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
        Ok(if self.stop.done() {
            Step::Finished
        } else {
            Step::Continue
        })
    }

    /// Prints a partition's records and advances its position. Returns whether to
    /// back off before the next fetch.
    async fn take(&mut self, fetched: FetchedPartition, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        let tp = TopicPartition::new(fetched.topic, fetched.partition);
        if let Some(error) = fetched.error {
            if error.kafka_code() == Some(ResponseError::OffsetOutOfRange) {
                let offsets = self
                    .client
                    .list_offsets(&tp.topic, &[tp.partition], self.reset)
                    .await
                    .with_context(|| format!("cannot reset the offset of {tp}"))?;
                if let Some(&offset) = offsets.get(&tp.partition) {
                    eprintln!(
                        "warning: offset {} is out of range for {tp}; continuing at {offset}",
                        self.positions.get(&tp).copied().unwrap_or_default()
                    );
                    self.positions.insert(tp, offset);
                }
                return Ok(false);
            }
            if error.is_retriable() {
                tracing::debug!(%error, "retrying fetch");
                return Ok(true);
            }
            return Err(error).with_context(|| format!("cannot read {tp}"));
        }
        let mut position = fetched.next_offset;
        for record in &fetched.records {
            if self.stop.remaining == Some(0) {
                position = record.offset;
                break;
            }
            self.format.write(out, record);
            if let Some(remaining) = &mut self.stop.remaining {
                *remaining -= 1;
            }
        }
        if let Some(current) = self.positions.get_mut(&tp) {
            *current = position.max(*current);
        }
        Ok(false)
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    if args.key_separator.is_empty() {
        bail!("--key-separator must not be empty");
    }
    let client = args.connect.connect().await?;
    let topic = client
        .topic(&args.topic)
        .await
        .with_context(|| format!("cannot consume topic {}", args.topic))?;
    let max_wait = args
        .timeout_ms
        .map(Duration::from_millis)
        .map_or(FETCH_WAIT_MAX, |t| t.clamp(FETCH_WAIT_MIN, FETCH_WAIT_MAX));
    let mut reader = Reader {
        client: client.clone(),
        format: Format {
            print_key: args.print_key,
            print_headers: args.print_headers,
            separator: args.key_separator.clone().into_bytes(),
        },
        stop: Stop {
            remaining: args.count,
            idle: args.timeout_ms.map(Duration::from_millis),
            last_event: Instant::now(),
        },
        fetch: FetchOptions {
            max_wait,
            ..FetchOptions::default()
        },
        reset: if args.from_beginning {
            OffsetSpec::Earliest
        } else {
            OffsetSpec::Latest
        },
        positions: BTreeMap::new(),
        fetch_failing: false,
    };

    match &args.group {
        Some(group) => consume_in_group(&mut reader, group, &args.topic).await,
        None => {
            let partitions: Vec<i32> = match args.partition {
                Some(p) if topic.partition(p).is_none() => bail!(
                    "topic {} has {} partitions; there is no partition {p}",
                    args.topic,
                    topic.partitions.len()
                ),
                Some(p) => vec![p],
                None => topic.partitions.iter().map(|p| p.partition).collect(),
            };
            let starts: BTreeMap<i32, i64> = match args.offset {
                Some(offset) => partitions.iter().map(|&p| (p, offset)).collect(),
                None => client
                    .list_offsets(&args.topic, &partitions, reader.reset)
                    .await
                    .with_context(|| format!("cannot find where to start in {}", args.topic))?,
            };
            reader.positions = starts
                .into_iter()
                .map(|(p, offset)| (TopicPartition::new(args.topic.clone(), p), offset))
                .collect();
            consume_alone(&mut reader).await
        }
    }
}

async fn consume_alone(reader: &mut Reader) -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            step = reader.step() => match step? {
                Step::Continue => {}
                Step::Finished => return Ok(()),
            },
        }
    }
}

async fn consume_in_group(reader: &mut Reader, group: &str, topic: &str) -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let topics = [topic.to_owned()];
    let joined = tokio::select! {
        _ = &mut ctrl_c => return Ok(()),
        joined = reader.client.join_group(group, &topics, GroupOptions::default()) => joined,
    };
    let mut member = joined.with_context(|| format!("cannot join group {group}"))?;
    let mut committed = start_positions(reader, &member).await?;

    let result = loop {
        if member.rejoin_needed() {
            commit(&member, &reader.positions, &mut committed).await;
            let rejoined = tokio::select! {
                _ = &mut ctrl_c => break Ok(()),
                rejoined = member.rejoin() => rejoined,
            };
            if let Err(error) = rejoined {
                break Err(error).with_context(|| format!("cannot rejoin group {group}"));
            }
            committed = match start_positions(reader, &member).await {
                Ok(committed) => committed,
                Err(error) => break Err(error),
            };
        }
        let step = tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            step = reader.step() => step,
        };
        match step {
            Ok(Step::Continue) => commit(&member, &reader.positions, &mut committed).await,
            Ok(Step::Finished) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    commit(&member, &reader.positions, &mut committed).await;
    if let Err(error) = member.leave().await {
        eprintln!("warning: cannot leave group {group} cleanly: {error}");
    }
    result
}

/// Positions for a new assignment: committed offsets, else the reset policy.
/// Returns the committed offsets, to commit only what changes.
async fn start_positions(
    reader: &mut Reader,
    member: &GroupMember,
) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let committed = member.committed_offsets().await.with_context(|| {
        format!(
            "cannot read committed offsets of group {}",
            member.group_id()
        )
    })?;
    let mut positions = BTreeMap::new();
    for (topic, partitions) in member.assignment() {
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|&p| !committed.contains_key(&TopicPartition::new(topic.clone(), p)))
            .collect();
        let reset = if missing.is_empty() {
            BTreeMap::new()
        } else {
            reader
                .client
                .list_offsets(topic, &missing, reader.reset)
                .await
                .with_context(|| format!("cannot find where to start in {topic}"))?
        };
        for &partition in partitions {
            let tp = TopicPartition::new(topic.clone(), partition);
            let offset = committed
                .get(&tp)
                .or_else(|| reset.get(&partition))
                .copied();
            if let Some(offset) = offset {
                positions.insert(tp, offset);
            }
        }
    }
    reader.positions = positions;
    // Waiting for the group is not idleness: the quiet period starts now.
    reader.stop.last_event = Instant::now();
    Ok(committed)
}

/// Commits positions that moved since the last commit. A failed commit is reported
/// and retried with the next one; the events stay printed (at-least-once).
async fn commit(
    member: &GroupMember,
    positions: &BTreeMap<TopicPartition, i64>,
    committed: &mut BTreeMap<TopicPartition, i64>,
) {
    let changed: BTreeMap<TopicPartition, i64> = positions
        .iter()
        .filter(|(tp, offset)| committed.get(*tp) != Some(*offset))
        .map(|(tp, &offset)| (tp.clone(), offset))
        .collect();
    if changed.is_empty() {
        return;
    }
    match member.commit(&changed).await {
        Ok(()) => committed.extend(changed),
        Err(error) if member.rejoin_needed() => {
            tracing::debug!(%error, "commit refused during a rebalance");
        }
        Err(error) => eprintln!(
            "warning: cannot commit offsets of group {}: {error}",
            member.group_id()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ClientCommand;
    use super::super::tests::parse;
    use super::*;
    use bytes::Bytes;

    fn record(key: Option<&'static [u8]>, value: Option<&'static [u8]>) -> ConsumedRecord {
        ConsumedRecord {
            offset: 0,
            timestamp_ms: 0,
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers: vec![
                ("trace".to_owned(), Some(Bytes::from_static(b"t1"))),
                ("flag".to_owned(), None),
            ],
        }
    }

    #[test]
    fn values_print_alone_by_default() {
        let format = Format {
            print_key: false,
            print_headers: false,
            separator: b"\t".to_vec(),
        };
        let mut out = Vec::new();
        format.write(&mut out, &record(Some(b"k"), Some(b"OrderPlaced")));
        format.write(&mut out, &record(None, None));
        assert_eq!(out, b"OrderPlaced\nnull\n");
    }

    #[test]
    fn keys_and_headers_come_first() {
        let format = Format {
            print_key: true,
            print_headers: true,
            separator: b" | ".to_vec(),
        };
        let mut out = Vec::new();
        format.write(&mut out, &record(Some(b"customer-7"), Some(b"OrderPlaced")));
        assert_eq!(out, b"trace=t1,flag | customer-7 | OrderPlaced\n");
    }

    #[test]
    fn stop_after_count_or_idle() {
        let mut stop = Stop {
            remaining: Some(1),
            idle: None,
            last_event: Instant::now(),
        };
        assert!(!stop.done());
        stop.remaining = Some(0);
        assert!(stop.done());
        let stop = Stop {
            remaining: None,
            idle: Some(Duration::ZERO),
            last_event: Instant::now(),
        };
        assert!(stop.done());
    }

    #[test]
    fn consume_arguments_parse() {
        let Ok(ClientCommand::Consume(args)) = parse(&["consume", "orders"]) else {
            panic!("did not parse");
        };
        assert_eq!(args.key_separator, "\t");
        assert!(args.group.is_none() && !args.from_beginning && args.count.is_none());

        let Ok(ClientCommand::Consume(args)) = parse(&[
            "consume",
            "orders",
            "--group",
            "billing",
            "--from-beginning",
            "--count",
            "10",
            "--print-key",
            "--timeout-ms",
            "2000",
        ]) else {
            panic!("did not parse");
        };
        assert_eq!(args.group.as_deref(), Some("billing"));
        assert_eq!(args.count, Some(10));
        assert_eq!(args.timeout_ms, Some(2000));

        assert!(parse(&["consume", "orders", "--group", "g", "--partition", "1"]).is_err());
        assert!(parse(&["consume", "orders", "--offset", "5", "--from-beginning"]).is_err());
        assert!(parse(&["consume", "orders", "--count", "0"]).is_err());
        assert!(parse(&["consume", "orders", "--offset", "-3"]).is_err());
        assert!(parse(&["consume", "orders", "--partition", "2", "--offset", "5"]).is_ok());
    }
}
