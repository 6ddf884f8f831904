//! `herald bench end-to-end`: producers publish at a paced rate while `--consumers`
//! consumers read the same topic from its end; each record's value starts with the
//! time it was put into a batch (nanoseconds since the UNIX epoch, little-endian), so
//! the consumers measure publish-to-delivery latency. Every acknowledged record must
//! arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use herald_client::{Client, FetchOptions, ProduceOptions, ProduceRecord, TopicPartition};
use indicatif::ProgressBar;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{
    BenchArgs, BenchMode, EndToEnd, ProduceRequest, Report, Stop, drain_requests, ensure_topic,
    join_producers, new_histogram, record_done,
};

/// Bytes at the start of each value that carry the send time.
pub const TIMESTAMP_BYTES: usize = 8;
/// After the producers finish, how long the consumer may take to see the last records.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one fetch may wait at the broker for new records.
const FETCH_WAIT: Duration = Duration::from_millis(100);

/// When batch `k` (0-based) of a paced producer is due: when the last of its `records_per_batch`
/// records would have been created at `rate` records/s. Absolute offsets from the start,
/// so a late batch does not push back the ones after it.
pub fn batch_due(k: u64, records_per_batch: usize, rate: f64) -> Duration {
    if rate <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64((k + 1) as f64 * records_per_batch as f64 / rate)
}

/// Records per batch: `by_size` (`--batch-size`, or what `--batch-bytes` holds), and at
/// a paced rate no more than `linger` worth of records, so a slow producer sends small
/// batches often.
pub fn records_per_batch(by_size: usize, rate: f64, linger: Duration) -> usize {
    let by_size = by_size.max(1);
    if rate <= 0.0 {
        return by_size;
    }
    let by_linger = (rate * linger.as_secs_f64()).floor().max(1.0) as usize;
    by_size.min(by_linger)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The send time a value carries, if it is long enough to carry one.
pub fn stamped_at(value: &[u8]) -> Option<u64> {
    let bytes: [u8; TIMESTAMP_BYTES] = value.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

pub async fn run(
    client: &Client,
    args: &BenchArgs,
    progress: &ProgressBar,
    stop: &Stop,
) -> anyhow::Result<Report> {
    if (args.message_bytes as usize) < TIMESTAMP_BYTES {
        bail!("end-to-end needs --message-bytes of at least {TIMESTAMP_BYTES} (the send time)");
    }
    ensure_topic(client, args).await?;
    let topic = client
        .topic(&args.topic)
        .await
        .with_context(|| format!("cannot read the metadata of {}", args.topic))?;
    let partitions = topic.partitions.len().max(1) as i32;
    // The consumer starts at the end: only this run's records are measured.
    let ends = client
        .offset_range(&topic)
        .await
        .context("cannot list the topic's offsets")?;
    let positions: Vec<(TopicPartition, i64)> = topic
        .partitions
        .iter()
        .map(|p| {
            let end = ends.get(&p.partition).map_or(0, |(_, end)| *end);
            (TopicPartition::new(&args.topic, p.partition), end)
        })
        .collect();
    check_consumers(args, positions.len())?;

    let (total_tx, total_rx) = watch::channel(None::<u64>);
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut consumers = JoinSet::new();
    for share in share_partitions(positions, args.consumers as usize) {
        let client = Client::new(&args.connect.bootstrap).await?;
        consumers.spawn(consume(
            client,
            share,
            args.fetch_bytes,
            total_rx.clone(),
            received.clone(),
            stop.clone(),
        ));
    }

    let rate_per_producer = args.rate as f64 / f64::from(args.producers);
    let per_batch = records_per_batch(
        args.batch_records(),
        rate_per_producer,
        Duration::from_millis(args.linger_ms),
    );
    let template = Bytes::from(vec![b'x'; args.message_bytes as usize]);
    let options = Arc::new(ProduceOptions {
        acks: args.acks,
        compression: args.compression.into(),
        ..ProduceOptions::default()
    });
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let mut producers = JoinSet::new();
    for producer in 0..args.producers {
        let client = Client::new(&args.connect.bootstrap).await?;
        let (topic, options, template, progress) = (
            args.topic.clone(),
            options.clone(),
            template.clone(),
            progress.clone(),
        );
        let mine = args.count / u64::from(args.producers)
            + u64::from(u64::from(producer) < args.count % u64::from(args.producers));
        let in_flight = args.in_flight as usize;
        let stop = stop.clone();
        producers.spawn(async move {
            let permits = Arc::new(Semaphore::new(in_flight));
            let mut requests = JoinSet::new();
            let mut histogram = new_histogram();
            let (mut acked, mut errors, mut sent) = (0u64, 0u64, 0u64);
            let mut k = 0u64;
            while sent < mine && Instant::now() < deadline && !stop.is_stopped() {
                let due = started + batch_due(k, per_batch, rate_per_producer);
                let permit = tokio::select! {
                    permit = async {
                        tokio::time::sleep_until(due.into()).await;
                        permits.clone().acquire_owned().await
                    } => permit,
                    () = stop.stopped() => break,
                };
                let Ok(permit) = permit else {
                    break;
                };
                let n = per_batch.min((mine - sent) as usize);
                let stamp = now_nanos().to_le_bytes();
                let records: Arc<Vec<ProduceRecord>> = Arc::new(
                    (0..n)
                        .map(|_| {
                            let mut value = BytesMut::from(&template[..]);
                            value[..TIMESTAMP_BYTES].copy_from_slice(&stamp);
                            ProduceRecord::new(None, Some(value.freeze()))
                        })
                        .collect(),
                );
                let partition = ((u64::from(producer) + k) % partitions as u64) as i32;
                let request = ProduceRequest {
                    client: client.clone(),
                    topic: topic.clone(),
                    batches: vec![(partition, records)],
                    options: options.clone(),
                    progress: progress.clone(),
                    stop: stop.clone(),
                };
                requests.spawn(request.send(permit));
                sent += n as u64;
                k += 1;
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
    let (histogram, acked, errors) = join_producers(producers).await?;
    let elapsed = started.elapsed();
    let _ = total_tx.send(Some(acked));
    let mut e2e_us = new_histogram();
    let mut last_received = started;
    while let Some(done) = consumers.join_next().await {
        let (h, last) = done.context("a consumer task failed")??;
        e2e_us.add(&h).context("merging latency histograms")?;
        last_received = last_received.max(last);
    }
    let received = received.load(Ordering::Relaxed);
    Ok(Report {
        mode: BenchMode::EndToEnd,
        records: acked,
        bytes: acked * u64::from(args.message_bytes),
        elapsed,
        errors,
        latency_us: (args.acks != herald_client::Acks::None).then_some(histogram),
        end_to_end: Some(EndToEnd {
            latency_us: e2e_us,
            received,
            missing: acked.saturating_sub(received),
            elapsed: last_received - started,
        }),
        rss: None,
        stopped: None,
    })
}

/// At most one consumer per partition: a consumer without a partition would measure
/// nothing.
pub fn check_consumers(args: &BenchArgs, partitions: usize) -> anyhow::Result<()> {
    if args.consumers as usize > partitions {
        bail!(
            "--consumers {} is more than the {} partitions of {}",
            args.consumers,
            partitions,
            args.topic
        );
    }
    Ok(())
}

/// Deal `positions` out to `consumers` consumers, round robin (none left empty when
/// there are at least as many partitions as consumers).
pub fn share_partitions<T>(positions: Vec<T>, consumers: usize) -> Vec<Vec<T>> {
    let mut shares: Vec<Vec<T>> = (0..consumers.max(1)).map(|_| Vec::new()).collect();
    let n = shares.len();
    for (i, position) in positions.into_iter().enumerate() {
        shares[i % n].push(position);
    }
    shares.retain(|share| !share.is_empty());
    shares
}

/// Read from `positions` until all consumers together received `total` records (known
/// once the producers finish and say how many were acknowledged), or the drain timeout
/// passed. Returns the latency histogram (microseconds) and when the last record
/// arrived.
async fn consume(
    client: Client,
    mut positions: Vec<(TopicPartition, i64)>,
    fetch_bytes: i32,
    mut total: watch::Receiver<Option<u64>>,
    received: Arc<AtomicU64>,
    stop: Stop,
) -> anyhow::Result<(Histogram<u64>, Instant)> {
    let options = FetchOptions {
        max_wait: FETCH_WAIT,
        partition_max_bytes: fetch_bytes,
        ..FetchOptions::default()
    };
    let mut histogram = new_histogram();
    let mut last = Instant::now();
    let mut drain_deadline = None;
    loop {
        if stop.is_stopped() {
            break;
        }
        if let Some(expected) = *total.borrow_and_update() {
            if received.load(Ordering::Relaxed) >= expected {
                break;
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if Instant::now() >= deadline {
                break;
            }
        }
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
                return Err(error).context("end-to-end consumer fetch failed");
            }
        };
        let now = now_nanos();
        for part in fetched {
            if let Some(error) = part.error {
                bail!("end-to-end consumer: partition {}: {error}", part.partition);
            }
            if part.records.is_empty() {
                continue;
            }
            last = Instant::now();
            for record in &part.records {
                if let Some(sent) = record.value.as_deref().and_then(stamped_at) {
                    let _ = histogram.record((now.saturating_sub(sent) / 1_000).max(1));
                }
            }
            received.fetch_add(part.records.len() as u64, Ordering::Relaxed);
            if let Some(position) = positions
                .iter_mut()
                .find(|(tp, _)| tp.partition == part.partition)
            {
                position.1 = position.1.max(part.next_offset);
            }
        }
    }
    Ok((histogram, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_absolute_and_batches_respect_linger() {
        // 50,000 records/s, linger 5 ms: 250 records per batch, one batch every 5 ms.
        let n = records_per_batch(655, 50_000.0, Duration::from_millis(5));
        assert_eq!(n, 250);
        assert_eq!(batch_due(0, n, 50_000.0), Duration::from_millis(5));
        assert_eq!(batch_due(199, n, 50_000.0), Duration::from_secs(1));
        // No drift: batch k is due at (k + 1) * 5 ms however many came before.
        assert_eq!(
            batch_due(200 * 3_600 - 1, n, 50_000.0),
            Duration::from_secs(3_600)
        );
        // Size wins when the linger would allow more than a batch holds.
        assert_eq!(
            records_per_batch(64, 50_000.0, Duration::from_millis(5)),
            64
        );
        assert_eq!(batch_due(0, 64, 50_000.0), Duration::from_micros(1_280));
        // Unpaced: as fast as possible, full batches.
        assert_eq!(batch_due(1_000, 64, 0.0), Duration::ZERO);
        assert_eq!(records_per_batch(64, 0.0, Duration::from_millis(5)), 64);
        // A slow rate still sends one record at a time, not none.
        assert_eq!(records_per_batch(64, 10.0, Duration::from_millis(5)), 1);
        assert_eq!(records_per_batch(0, 0.0, Duration::ZERO), 1);
    }

    #[test]
    fn consumers_share_the_partitions() {
        assert_eq!(
            share_partitions((0..5).collect(), 2),
            vec![vec![0, 2, 4], vec![1, 3]]
        );
        assert_eq!(share_partitions((0..3).collect(), 1), vec![vec![0, 1, 2]]);
        // More consumers than partitions: nobody gets an empty share.
        assert_eq!(
            share_partitions((0..2).collect(), 3),
            vec![vec![0], vec![1]]
        );
    }

    #[test]
    fn values_carry_their_send_time() {
        let mut value = vec![b'x'; 32];
        value[..8].copy_from_slice(&1_234_567_890u64.to_le_bytes());
        assert_eq!(stamped_at(&value), Some(1_234_567_890));
        assert_eq!(stamped_at(b"short"), None);
    }
}
