//! One partition: its log, its idempotent-producer state, and what consumers may see.
//!
//! Appends take the write lock only for the page-cache write; the fsync that makes them
//! durable runs outside any lock in this partition's flusher task, so many concurrent
//! produce requests share one fsync (group commit). Under the `always` flush policy the
//! high watermark (what fetches return and acknowledgements promise) only moves after
//! that fsync, so a consumer never sees a record that a crash could take back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use herald_log::{BatchHeader, LogConfig, PartitionLog, RetentionLimits, validate_batches};
use tokio::sync::{Notify, watch};

use crate::config::FlushPolicy;
use crate::error::{BrokerError, Result};
use crate::producer::{ProducerStates, SequenceCheck};
use crate::records::{RecordBounds, StoredBatch};
use crate::txn::partition::{AbortedTxn, PartitionTxns, control_kind, marker_batch};

struct PartitionState {
    log: PartitionLog,
    producers: ProducerStates,
    txns: PartitionTxns,
}

/// How far the partition is on disk, and how many fsyncs have failed so far.
#[derive(Debug, Clone, Copy, Default)]
struct Durable {
    next_offset: i64,
    failures: u64,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub index: i32,
    dir: PathBuf,
    state: RwLock<PartitionState>,
    /// Serialises moves of the log start offset (retention, DeleteRecords), so their
    /// checkpoints are written in order. Held while the checkpoint is fsynced; appends
    /// and reads never take it.
    start_offset_moves: Mutex<()>,
    flush: FlushPolicy,
    /// Offsets below this are visible to consumers.
    high_watermark: AtomicI64,
    durable: watch::Sender<Durable>,
    flush_wanted: Arc<Notify>,
    /// Set at shutdown: appends fail, the flusher stops.
    closed: AtomicBool,
    /// Set when an fsync failed. After a failed fsync the kernel may have dropped the
    /// dirty pages and a later fsync can succeed without them, so nothing written since
    /// the last good fsync can be vouched for: appends are refused (KAFKA_STORAGE_ERROR)
    /// and the high watermark stays where the last good fsync put it, until a restart
    /// recovers the partition from what is really on disk.
    fenced: AtomicBool,
    /// Bumped whenever any partition's high watermark moves; long-polling fetches wait on it.
    data_changed: Arc<watch::Sender<u64>>,
    /// This partition's high watermark, for readers of this partition alone (AMQP stream
    /// consumers), so that an append elsewhere does not wake them. Moves with
    /// `high_watermark`, in `advance_high_watermark`.
    high_watermark_changed: watch::Sender<i64>,
    appended_bytes: AtomicU64,
    appended_records: AtomicU64,
    read_bytes: AtomicU64,
    read_records: AtomicU64,
    /// How far batches may decompress (the broker's, shared).
    bounds: Arc<RecordBounds>,
}

/// The outcome of an append, before it is durable.
pub struct PendingAppend {
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    wait: Option<DurableWait>,
}

struct DurableWait {
    receiver: watch::Receiver<Durable>,
    target: i64,
}

impl PendingAppend {
    fn settled(base_offset: i64, log_append_time_ms: i64, log_start_offset: i64) -> Self {
        PendingAppend {
            base_offset,
            log_append_time_ms,
            log_start_offset,
            wait: None,
        }
    }

    /// Wait until the appended batches are durable as the flush policy promises.
    pub async fn durable(self) -> Result<PendingAppend> {
        if let Some(mut wait) = self.wait {
            loop {
                {
                    let d = *wait.receiver.borrow_and_update();
                    if d.next_offset >= wait.target {
                        break;
                    }
                    // Fencing is for good, so any failure fails every wait that is
                    // still short of its target, whenever it subscribed.
                    if d.failures > 0 {
                        return Err(BrokerError::Storage(
                            "fsync failed; the write may not be durable".into(),
                        ));
                    }
                }
                if wait.receiver.changed().await.is_err() {
                    return Err(BrokerError::ShuttingDown);
                }
            }
        }
        Ok(PendingAppend { wait: None, ..self })
    }
}

/// What one move of the log start offset did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartOffsetMove {
    /// The log start offset afterwards.
    pub log_start_offset: i64,
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
}

/// What [`Partition::records_from`] got.
#[derive(Debug)]
pub struct RecordsRead<T = kafka_protocol::records::Record> {
    pub records: Vec<T>,
    /// Where to read next.
    pub next: i64,
    pub skipped: Vec<SkippedRange>,
}

/// Offsets a read stepped over: their batch decompresses past the bound. The records
/// are still in the log (raising the bound makes them readable).
#[derive(Debug, Clone)]
pub struct SkippedRange {
    pub first_offset: i64,
    pub last_offset: i64,
    pub reason: String,
}

/// What a fetch got from one partition.
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    /// Below the first open transaction (and the high watermark): what `read_committed`
    /// readers may see.
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// For a `read_committed` read: the aborted transactions its records overlap.
    pub aborted: Vec<AbortedTxn>,
}

/// What a reader may see of transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Everything below the high watermark, aborted transactions included.
    ReadUncommitted,
    /// Only below the last stable offset, with the aborted ranges listed.
    ReadCommitted,
}

impl Partition {
    pub fn open(
        topic: Arc<str>,
        index: i32,
        dir: &Path,
        log_config: LogConfig,
        flush: FlushPolicy,
        data_changed: Arc<watch::Sender<u64>>,
        bounds: Arc<RecordBounds>,
    ) -> Result<Arc<Partition>> {
        let mut log = PartitionLog::open(dir, log_config)?;
        if !log.recovery_info().clean_shutdown {
            // Whatever recovery found may sit only in the page cache (the process died,
            // not the machine): make it durable before anyone can read it.
            log.flush()?;
        }
        let mut producers = ProducerStates::default();
        let mut txns = PartitionTxns::default();
        for header in log.batch_headers()? {
            producers.record(&header, header.base_offset);
            if header.is_transactional() {
                let control = if header.is_control() {
                    control_kind(&log.read(header.base_offset, 1)?)
                } else {
                    None
                };
                txns.note(&header, header.base_offset, control);
            }
        }
        let next_offset = log.next_offset();
        let partition = Arc::new(Partition {
            topic,
            index,
            dir: dir.to_path_buf(),
            state: RwLock::new(PartitionState {
                log,
                producers,
                txns,
            }),
            start_offset_moves: Mutex::new(()),
            flush,
            high_watermark: AtomicI64::new(next_offset),
            durable: watch::Sender::new(Durable {
                next_offset,
                failures: 0,
            }),
            flush_wanted: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            data_changed,
            high_watermark_changed: watch::Sender::new(next_offset),
            appended_bytes: AtomicU64::new(0),
            appended_records: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            read_records: AtomicU64::new(0),
            bounds,
        });
        if flush != FlushPolicy::Os {
            tokio::spawn(flusher(
                Arc::downgrade(&partition),
                partition.flush_wanted.clone(),
                flush,
            ));
        }
        Ok(partition)
    }

    /// Validate and append `records` (one or more RecordBatch v2, as a producer sent them).
    /// Returns once the batches are in the OS; `PendingAppend::durable` waits for the disk.
    /// Transactional batches are refused (see [`Partition::append_with`]).
    pub fn append(
        &self,
        records: &[u8],
        log_append_time: bool,
        max_message_bytes: usize,
        now_ms: i64,
    ) -> Result<PendingAppend> {
        self.append_with(records, log_append_time, max_message_bytes, now_ms, &|_| {
            Err(BrokerError::TransactionsUnsupported)
        })
    }

    /// [`Partition::append`], with `verify_txn` deciding whether a transactional batch
    /// may be appended (its producer's transaction is open, at this epoch, with this
    /// partition added). It runs under the partition's write lock, so a marker that ends
    /// the transaction (written under the same lock) comes after every batch it allowed.
    pub fn append_with(
        &self,
        records: &[u8],
        log_append_time: bool,
        max_message_bytes: usize,
        now_ms: i64,
        verify_txn: &dyn Fn(&BatchHeader) -> Result<()>,
    ) -> Result<PendingAppend> {
        if records.len() > max_message_bytes {
            return Err(BrokerError::MessageTooLarge {
                bytes: records.len(),
                max: max_message_bytes,
            });
        }
        let headers = validate_batches(records)?;
        if headers.is_empty() {
            return Err(BrokerError::InvalidRecord(
                "no record batch in the request".into(),
            ));
        }
        if headers.iter().any(|h| h.is_control()) {
            return Err(BrokerError::InvalidRecord(
                "control batches are written by the transaction coordinator, not producers".into(),
            ));
        }
        let transactional = headers[0].is_transactional();
        if headers
            .iter()
            .any(|h| h.is_transactional() != transactional)
        {
            return Err(BrokerError::InvalidRecord(
                "transactional and non-transactional batches in one request".into(),
            ));
        }
        // Stored as sent (the log writes the base offsets in front of each batch without
        // copying), unless LogAppendTime rewrites timestamps and CRCs in a copy.
        let batches = if log_append_time {
            let mut copy = records.to_vec();
            let mut position = 0;
            for header in &headers {
                let end = position + header.total_bytes();
                herald_log::set_log_append_time(&mut copy[position..end], now_ms);
                position = end;
            }
            std::borrow::Cow::Owned(copy)
        } else {
            std::borrow::Cow::Borrowed(records)
        };

        let mut state = self.state.write().map_err(|_| poisoned())?;
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        if self.fenced.load(Ordering::Acquire) {
            return Err(fenced_error());
        }
        if transactional {
            verify_txn(&headers[0])?;
        }
        match check_sequences(&state.producers, &headers)? {
            SequenceCheck::Duplicate { base_offset } => {
                let log_start = state.log.log_start_offset();
                drop(state);
                // The original append may not be durable yet: the retry waits for it too.
                return Ok(self.pending(base_offset, -1, log_start, base_offset + 1));
            }
            SequenceCheck::Append => {}
        }
        let info = state.log.append(&batches, now_ms)?;
        let mut base = info.base_offset;
        for header in &headers {
            state.producers.record(header, base);
            state.txns.note(header, base, None);
            base += i64::from(header.last_offset_delta) + 1;
        }
        let log_start = state.log.log_start_offset();
        drop(state);

        self.appended_bytes
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let appended_records: u64 = headers
            .iter()
            .map(|h| u64::try_from(h.records_count).unwrap_or(0))
            .sum();
        self.appended_records
            .fetch_add(appended_records, Ordering::Relaxed);
        let append_time = if log_append_time { now_ms } else { -1 };
        Ok(self.appended(info.base_offset, info.last_offset, append_time, log_start))
    }

    /// After an append of offsets `base..=last`: the wait for it to be durable (or,
    /// under a flush policy that does not wait, the high watermark moved now).
    fn appended(&self, base: i64, last: i64, append_time: i64, log_start: i64) -> PendingAppend {
        match self.flush {
            FlushPolicy::Always => {
                self.flush_wanted.notify_one();
                self.pending(base, append_time, log_start, last + 1)
            }
            FlushPolicy::Interval { .. } | FlushPolicy::Os => {
                self.advance_high_watermark(last + 1);
                PendingAppend::settled(base, append_time, log_start)
            }
        }
    }

    /// Append a transaction marker (commit or abort) for `producer_id` at `epoch`: it
    /// ends that producer's open transaction here. Written by the transaction
    /// coordinator only; a marker with nothing open is harmless (it ends nothing).
    pub fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<PendingAppend> {
        let batch = marker_batch(producer_id, epoch, commit, now_ms);
        let header = BatchHeader::parse(&batch)?;
        let mut state = self.state.write().map_err(|_| poisoned())?;
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        if self.fenced.load(Ordering::Acquire) {
            return Err(fenced_error());
        }
        let info = state.log.append(&batch, now_ms)?;
        state.producers.record(&header, info.base_offset);
        state.txns.note(&header, info.base_offset, Some(commit));
        let log_start = state.log.log_start_offset();
        drop(state);
        self.appended_bytes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(self.appended(info.base_offset, info.last_offset, -1, log_start))
    }

    /// The last stable offset: below the first open transaction and the high watermark.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.state
            .read()
            .ok()
            .and_then(|s| s.txns.first_unstable_offset())
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Producers with state in this partition: id, epoch, last sequence, and the first
    /// offset of the transaction each has open here (-1 if none).
    pub fn producers(&self) -> Vec<(i64, i16, i32, i64)> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let open: std::collections::HashMap<i64, i64> = state.txns.ongoing().collect();
        state
            .producers
            .describe()
            .into_iter()
            .map(|(id, epoch, seq)| (id, epoch, seq, open.get(&id).copied().unwrap_or(-1)))
            .collect()
    }

    /// Producer ids with a transaction open here, with its first offset.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.state
            .read()
            .map(|s| s.txns.ongoing().collect())
            .unwrap_or_default()
    }

    fn pending(
        &self,
        base_offset: i64,
        append_time: i64,
        log_start: i64,
        target: i64,
    ) -> PendingAppend {
        let receiver = self.durable.subscribe();
        PendingAppend {
            base_offset,
            log_append_time_ms: append_time,
            log_start_offset: log_start,
            wait: Some(DurableWait { receiver, target }),
        }
    }

    fn advance_high_watermark(&self, next_offset: i64) {
        let previous = self.high_watermark.fetch_max(next_offset, Ordering::AcqRel);
        if next_offset > previous {
            self.high_watermark_changed.send_if_modified(|hw| {
                // Two advances may race: the watch keeps the larger, like the atomic.
                let moved = next_offset > *hw;
                *hw = (*hw).max(next_offset);
                moved
            });
            self.data_changed.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// Whole batches from the one containing `offset`, at most `max_bytes` after the first,
    /// and never past the high watermark.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.read_isolated(offset, max_bytes, Isolation::ReadUncommitted)
    }

    /// [`Partition::read`] as `isolation` allows: `ReadCommitted` stops at the last
    /// stable offset and lists the aborted transactions the records overlap (the
    /// client drops their records, as Kafka's clients do).
    pub fn read_isolated(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadResult> {
        let state = self.state.read().map_err(|_| poisoned())?;
        let high_watermark = self.high_watermark();
        let last_stable_offset = state
            .txns
            .first_unstable_offset()
            .map_or(high_watermark, |f| f.min(high_watermark));
        let limit = match isolation {
            Isolation::ReadUncommitted => high_watermark,
            Isolation::ReadCommitted => last_stable_offset,
        };
        let log_start_offset = state.log.log_start_offset();
        let log_end = state.log.next_offset();
        if offset < log_start_offset || offset > log_end {
            return Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start: log_start_offset,
                log_end,
            });
        }
        if offset >= limit {
            return Ok(ReadResult {
                records: Bytes::new(),
                high_watermark,
                last_stable_offset,
                log_start_offset,
                aborted: Vec::new(),
            });
        }
        let mut bytes = state.log.read(offset, max_bytes)?;
        let (records_read, end) = truncate_at_offset(&mut bytes, limit);
        let aborted = match isolation {
            Isolation::ReadCommitted if end > offset => state.txns.aborted_between(offset, end),
            _ => Vec::new(),
        };
        drop(state);
        self.read_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.read_records.fetch_add(records_read, Ordering::Relaxed);
        Ok(ReadResult {
            records: Bytes::from(bytes),
            high_watermark,
            last_stable_offset,
            log_start_offset,
            aborted,
        })
    }

    /// How far batches may decompress, at produce and for readers.
    pub fn bounds(&self) -> &RecordBounds {
        &self.bounds
    }

    /// The batches of `bytes` (what [`Partition::read`] returned), decoded one at a time
    /// within the bounds. A batch that decompresses past them is not decoded: it is
    /// logged (naming `reader`), counted, and handed back as [`StoredBatch::Oversized`]
    /// for the reader to step over. Corrupt bytes are an error.
    pub fn stored_batches(
        &self,
        bytes: Bytes,
        reader: &'static str,
    ) -> impl Iterator<Item = Result<StoredBatch>> + '_ {
        crate::records::stored_batches(bytes, self.bounds.batch_decompressed_bytes_max).inspect(
            move |batch| {
                if let Ok(StoredBatch::Oversized { header, reason }) = batch {
                    self.note_oversized(header, reason, reader);
                }
            },
        )
    }

    /// Up to `max_records` data records from offset `from`, none at or past
    /// `high_watermark` or the last stable offset (control records and the records of
    /// aborted transactions skipped: every face but Kafka's `read_uncommitted` sees
    /// committed data only), and the offset to read next. Each log
    /// read takes at most `read_bytes_max` bytes of whole batches, decoded one batch at
    /// a time; a batch past the decompression bound is stepped over and reported in
    /// `skipped`. Every reader of records by offset (HTTP reads, AMQP streams) uses it.
    pub fn records_from(
        &self,
        from: i64,
        high_watermark: i64,
        max_records: usize,
        read_bytes_max: usize,
        reader: &'static str,
    ) -> Result<RecordsRead> {
        self.records_from_as(
            from,
            high_watermark,
            max_records,
            read_bytes_max,
            reader,
            |decoded, view| decoded.record(view),
        )
    }

    /// [`Partition::records_from`], each record made by `make` from its batch and its
    /// place in it (a reader that needs a few fields skips building the whole record).
    pub fn records_from_as<T>(
        &self,
        from: i64,
        high_watermark: i64,
        max_records: usize,
        read_bytes_max: usize,
        reader: &'static str,
        mut make: impl FnMut(&crate::records::DecodedBatch, &crate::records::RecordView) -> Result<T>,
    ) -> Result<RecordsRead<T>> {
        let mut out = RecordsRead {
            records: Vec::new(),
            next: from,
            skipped: Vec::new(),
        };
        let high_watermark = high_watermark.min(self.last_stable_offset());
        // Whole batches come back; keep reading until enough records or the end.
        while out.records.len() < max_records && out.next < high_watermark {
            let before = out.next;
            let read = self.read(out.next, read_bytes_max)?;
            if read.records.is_empty() {
                break;
            }
            for batch in self.stored_batches(read.records, reader) {
                if out.records.len() == max_records {
                    break;
                }
                let decoded = match batch? {
                    StoredBatch::Oversized { header, reason } => {
                        let last = header.last_offset();
                        if last >= out.next && header.base_offset < high_watermark {
                            out.skipped.push(SkippedRange {
                                first_offset: header.base_offset.max(out.next),
                                last_offset: last,
                                reason,
                            });
                            out.next = last.saturating_add(1).min(high_watermark);
                        }
                        continue;
                    }
                    StoredBatch::Decoded(decoded) => decoded,
                };
                let aborted = decoded.header.is_transactional()
                    && !decoded.header.is_control()
                    && self.is_aborted(decoded.header.producer_id, decoded.header.base_offset);
                for view in decoded.records() {
                    if aborted {
                        break;
                    }
                    let view = view?;
                    if view.offset < out.next || decoded.header.is_control() {
                        continue;
                    }
                    if out.records.len() == max_records || view.offset >= high_watermark {
                        break;
                    }
                    out.next = view.offset + 1;
                    out.records.push(make(&decoded, &view)?);
                }
                if out.records.len() < max_records {
                    // Past the whole batch, compaction gaps and all.
                    let after = decoded.header.last_offset().saturating_add(1);
                    out.next = out.next.max(after.min(high_watermark));
                }
            }
            if out.next <= before {
                break;
            }
        }
        Ok(out)
    }

    /// Whether the transactional batch of `producer_id` at `offset` was aborted.
    pub fn is_aborted(&self, producer_id: i64, offset: i64) -> bool {
        self.state
            .read()
            .is_ok_and(|s| s.txns.is_aborted(producer_id, offset))
    }

    /// Log and count a stored batch a reader steps over because it expands too far.
    pub fn note_oversized(&self, header: &BatchHeader, reason: &str, reader: &str) {
        self.bounds.note_skipped();
        tracing::warn!(
            topic = %self.topic,
            partition = self.index,
            offset = header.base_offset,
            last_offset = header.last_offset(),
            reader,
            "stored batch skipped: {reason}"
        );
    }

    /// The first offset whose record timestamp is >= `timestamp_ms`, with that timestamp.
    /// Records below the log start offset do not count, even where their batch is
    /// still on disk.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        let (found, log_start) = {
            let state = self.state.read().map_err(|_| poisoned())?;
            (
                state.log.batch_for_timestamp(timestamp_ms)?,
                state.log.log_start_offset(),
            )
        };
        let Some((base_offset, batch)) = found else {
            return Ok(None);
        };
        let high_watermark = self.high_watermark();
        if base_offset >= high_watermark {
            return Ok(None);
        }
        if let Some(found) = self.first_record_from(&batch, log_start, timestamp_ms)? {
            return Ok(Some(found));
        }
        if base_offset >= log_start {
            // The batch qualifies by its max timestamp, so some record in it does.
            return Ok(Some((base_offset, timestamp_ms)));
        }
        // The records that qualify lie below the start offset (DeleteRecords cut into
        // this segment): walk on from the start offset, one batch at a time.
        let mut offset = (BatchHeader::parse(&batch)?.last_offset() + 1).max(log_start);
        while offset < high_watermark {
            let batch = self.read(offset, 0)?.records;
            if batch.is_empty() {
                break;
            }
            let header = BatchHeader::parse(&batch)?;
            if let Some(found) = self.first_record_from(&batch, log_start, timestamp_ms)? {
                return Ok(Some(found));
            }
            offset = header.last_offset() + 1;
        }
        Ok(None)
    }

    /// The offset and timestamp of the record with the largest timestamp (ListOffsets -3).
    /// Reads every batch header: meant for the rare admin call, not a hot path.
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>> {
        let high_watermark = self.high_watermark();
        let state = self.state.read().map_err(|_| poisoned())?;
        let log_start = state.log.log_start_offset();
        let best = state
            .log
            .batch_headers()?
            .into_iter()
            .filter(|h| h.base_offset < high_watermark && h.last_offset() >= log_start)
            .fold(None::<BatchHeader>, |best, h| match best {
                Some(b) if b.max_timestamp >= h.max_timestamp => Some(b),
                _ => Some(h),
            });
        let Some(best) = best else { return Ok(None) };
        let batch = state.log.read(best.base_offset.max(log_start), 1)?;
        drop(state);
        Ok(self
            .first_record_from(&batch, log_start, best.max_timestamp)?
            .or(Some((best.last_offset(), best.max_timestamp))))
    }

    /// The first record of `batch` at or after `log_start` whose timestamp is >=
    /// `timestamp_ms`. A batch too big to decode has none found here: callers then
    /// answer with the batch itself, which qualifies by its max timestamp.
    fn first_record_from(
        &self,
        batch: &[u8],
        log_start: i64,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, i64)>> {
        let limit = self.bounds.batch_decompressed_bytes_max;
        let decoded = match crate::records::decode_records(batch, limit) {
            Err(e @ BrokerError::BatchDecompressedTooLarge { .. }) => {
                let header = BatchHeader::parse(batch)?;
                self.note_oversized(&header, &e.to_string(), "list offsets");
                return Ok(None);
            }
            other => other?,
        };
        for record in decoded.records() {
            let record = record?;
            if record.offset >= log_start && record.timestamp >= timestamp_ms {
                return Ok(Some((record.offset, record.timestamp)));
            }
        }
        Ok(None)
    }

    /// The next offset the log will assign: past the high watermark by what is
    /// appended but not yet durable.
    pub fn log_end_offset(&self) -> i64 {
        self.state
            .read()
            .map(|s| s.log.next_offset())
            .unwrap_or_else(|_| self.high_watermark())
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// A watch of this partition's high watermark: it changes only when this
    /// partition's data becomes visible (the broker's `data_changes` is any partition).
    pub fn high_watermark_changes(&self) -> watch::Receiver<i64> {
        self.high_watermark_changed.subscribe()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state
            .read()
            .map(|s| s.log.log_start_offset())
            .unwrap_or(0)
    }

    pub fn size_bytes(&self) -> u64 {
        self.state.read().map(|s| s.log.size_bytes()).unwrap_or(0)
    }

    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes.load(Ordering::Relaxed)
    }

    /// Records appended since the broker started (the batches' record counts).
    pub fn appended_records(&self) -> u64 {
        self.appended_records.load(Ordering::Relaxed)
    }

    /// Bytes of batches served by reads (Kafka fetches, HTTP reads and tails) since the
    /// broker started. A record read twice counts twice.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Records in the batches served by reads since the broker started (whole batches,
    /// as served: a batch that starts before the requested offset counts in full).
    pub fn read_records(&self) -> u64 {
        self.read_records.load(Ordering::Relaxed)
    }

    /// DeleteRecords: make every offset below `offset` unreadable (-1 means the high
    /// watermark), deleting the segments that lie wholly below it. An offset at or
    /// below the current start changes nothing; one past the high watermark is out of
    /// range. Returns the log start offset afterwards (the "low watermark"). Blocks on
    /// an fsync: call it from a blocking context.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let high_watermark = self.high_watermark();
        let target = if offset == -1 { high_watermark } else { offset };
        if target < 0 || target > high_watermark {
            return Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset(),
                log_end: high_watermark,
            });
        }
        Ok(self.advance_log_start(target)?.log_start_offset)
    }

    /// One retention pass: roll the active segment if it is due (so that a quiet
    /// partition's data can expire), then delete the closed segments that `limits`
    /// let go. Never deletes data consumers cannot see yet (at or past the high
    /// watermark). Blocks on fsyncs: call it from a blocking context.
    pub fn enforce_retention(
        &self,
        limits: RetentionLimits,
        now_ms: i64,
    ) -> Result<Option<StartOffsetMove>> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        {
            let mut state = self.state.write().map_err(|_| poisoned())?;
            if self.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            // Sealing fsyncs under the lock, exactly as a roll on append does; it
            // happens at most once per segment.
            state.log.roll_for_retention(limits, now_ms)?;
        }
        let wanted = {
            let state = self.state.read().map_err(|_| poisoned())?;
            state.log.retention_start_offset(limits, now_ms)
        };
        let Some(wanted) = wanted else {
            return Ok(None);
        };
        let target = wanted.min(self.high_watermark());
        let moved = self.advance_log_start(target)?;
        Ok((moved.deleted_segments > 0).then_some(moved))
    }

    /// Persist a new start offset, then move it and drop the segments below it; the
    /// checkpoint is written before anyone can observe the new start (so it is never
    /// acknowledged and then lost) and without the state lock (it fsyncs).
    fn advance_log_start(&self, offset: i64) -> Result<StartOffsetMove> {
        let _serial = self.start_offset_moves.lock().map_err(|_| poisoned())?;
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        let current = self.log_start_offset();
        if offset <= current {
            return Ok(StartOffsetMove {
                log_start_offset: current,
                deleted_segments: 0,
                deleted_bytes: 0,
            });
        }
        let persisted = PartitionLog::persist_start_offset(&self.dir, offset)?;
        let removed = {
            let mut state = self.state.write().map_err(|_| poisoned())?;
            state.txns.forget_before(offset);
            state.log.advance_start_offset(persisted)?
        };
        let moved = StartOffsetMove {
            log_start_offset: offset,
            deleted_segments: removed.len(),
            deleted_bytes: removed.size_bytes(),
        };
        // No reader can reach the detached segments any more: delete their files
        // outside the lock.
        removed.delete()?;
        Ok(moved)
    }

    /// Apply a changed segment.bytes / segment.ms to the segments rolled from now on.
    pub fn set_log_config(&self, config: LogConfig) -> Result<()> {
        let mut state = self.state.write().map_err(|_| poisoned())?;
        state.log.set_config(config)?;
        Ok(())
    }

    /// After a failed fsync: refuse appends and fail every wait for durability (see
    /// `fenced`). The flusher stops; the high watermark never moves again in this run.
    fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
        self.durable.send_modify(|d| d.failures += 1);
    }

    /// Flush, mark the log cleanly closed and refuse further appends (shutdown, delete).
    pub fn close(&self) -> Result<()> {
        let mut state = self.state.write().map_err(|_| poisoned())?;
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let closed = state.log.close();
        let next_offset = state.log.next_offset();
        drop(state);
        // Answer every produce still waiting for durability: the close flushed the log
        // (unless it failed, or an earlier fsync failure fenced the partition), and the
        // flusher is about to end, so nobody else will.
        if closed.is_ok() && !self.fenced.load(Ordering::Acquire) {
            self.durable
                .send_modify(|d| d.next_offset = d.next_offset.max(next_offset));
        } else {
            self.durable.send_modify(|d| d.failures += 1);
        }
        // Wake the flusher so it sees `closed` and ends.
        self.flush_wanted.notify_one();
        closed.map_err(BrokerError::from)
    }
}

impl Partition {
    /// The cleaner's view of the log: `f` runs under the read lock, so keep it short.
    pub(crate) fn with_log<R>(&self, f: impl FnOnce(&PartitionLog) -> R) -> Result<R> {
        let state = self.state.read().map_err(|_| poisoned())?;
        Ok(f(&state.log))
    }

    /// The cleaner's swap: `f` runs under the write lock (no fsync in it), and not at
    /// all once the partition is closed.
    pub(crate) fn with_log_mut<R>(&self, f: impl FnOnce(&mut PartitionLog) -> R) -> Result<R> {
        let mut state = self.state.write().map_err(|_| poisoned())?;
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        Ok(f(&mut state.log))
    }
}

fn fenced_error() -> BrokerError {
    BrokerError::Storage(
        "an fsync of this partition failed, so writes are refused until the broker restarts and recovers it from disk".into(),
    )
}

fn poisoned() -> BrokerError {
    BrokerError::Storage("partition lock poisoned by an earlier panic".into())
}

/// Sequence-check every batch of one request; all must agree (several batches from one
/// idempotent producer are checked in order, and a duplicate must stand alone).
fn check_sequences(producers: &ProducerStates, headers: &[BatchHeader]) -> Result<SequenceCheck> {
    let first = producers.check(&headers[0])?;
    if headers.len() == 1 || headers[0].producer_id < 0 {
        return Ok(first);
    }
    if matches!(first, SequenceCheck::Duplicate { .. }) {
        return Err(BrokerError::InvalidRecord(
            "a retried batch must be sent alone".into(),
        ));
    }
    for pair in headers.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let expected = a.base_sequence.wrapping_add(a.last_offset_delta + 1);
        if b.producer_id != a.producer_id
            || b.producer_epoch != a.producer_epoch
            || b.base_sequence != expected
        {
            return Err(BrokerError::OutOfOrderSequence {
                producer_id: b.producer_id,
                expected,
                got: b.base_sequence,
            });
        }
    }
    Ok(SequenceCheck::Append)
}

/// Drop whole batches at or past `limit` (not yet visible).
/// Cuts `bytes` before the first batch at or past `limit`; returns the record count of
/// the batches kept and the offset after the last of them.
fn truncate_at_offset(bytes: &mut Vec<u8>, limit: i64) -> (u64, i64) {
    let mut position = 0;
    let mut records = 0u64;
    let mut end = i64::MIN;
    while position + herald_log::BATCH_HEADER_BYTES <= bytes.len() {
        let Ok(header) = BatchHeader::parse(&bytes[position..]) else {
            break;
        };
        if header.base_offset >= limit {
            break;
        }
        position += header.total_bytes();
        records += u64::try_from(header.records_count).unwrap_or(0);
        end = header.last_offset().saturating_add(1);
    }
    bytes.truncate(position.min(bytes.len()));
    (records, end)
}

/// Makes appended data durable: one fsync for everything appended since the last one.
/// Holds only a weak reference so a deleted or closed partition's task ends by itself.
async fn flusher(partition: std::sync::Weak<Partition>, wanted: Arc<Notify>, policy: FlushPolicy) {
    loop {
        match policy {
            FlushPolicy::Interval { interval_ms } => {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await
            }
            FlushPolicy::Always => wanted.notified().await,
            FlushPolicy::Os => return,
        }
        let Some(p) = partition.upgrade() else { return };
        if p.closed.load(Ordering::Acquire) || p.fenced.load(Ordering::Acquire) {
            return;
        }
        let sync_point = match p.state.read() {
            Ok(state) => state.log.sync_point(),
            Err(_) => return,
        };
        let next = sync_point.next_offset();
        if next <= p.durable.borrow().next_offset {
            continue;
        }
        match tokio::task::spawn_blocking(move || sync_point.sync()).await {
            Ok(Ok(())) => {
                // The high watermark first: a producer told "durable" can then read
                // (or receive from a subscription) what it wrote.
                if policy == FlushPolicy::Always {
                    p.advance_high_watermark(next);
                }
                p.durable
                    .send_modify(|d| d.next_offset = d.next_offset.max(next));
            }
            Ok(Err(e)) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "fsync failed; refusing writes to this partition until restart");
                p.fence();
                return;
            }
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "fsync task failed; refusing writes to this partition until restart");
                p.fence();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_batches_below_the_limit() {
        let mut bytes = Vec::new();
        for base in [0i64, 3, 6] {
            let mut batch = vec![0u8; 70];
            batch[..8].copy_from_slice(&base.to_be_bytes());
            batch[8..12].copy_from_slice(&58i32.to_be_bytes());
            batch[16] = 2;
            bytes.extend_from_slice(&batch);
        }
        let mut copy = bytes.clone();
        let _ = truncate_at_offset(&mut copy, 6);
        assert_eq!(copy.len(), 140);
        let mut copy = bytes.clone();
        let _ = truncate_at_offset(&mut copy, 100);
        assert_eq!(copy.len(), 210);
        let _ = truncate_at_offset(&mut bytes, 0);
        assert!(bytes.is_empty());
    }

    #[tokio::test]
    async fn the_high_watermark_watch_moves_with_its_partition_only() {
        use std::collections::BTreeMap;

        let dir = tempfile::tempdir().unwrap();
        let broker =
            crate::Broker::open(crate::BrokerConfig::new(dir.path().to_path_buf())).unwrap();
        let topic = broker
            .create_topic("orders", Some(2), BTreeMap::new(), false)
            .unwrap();
        let (p0, p1) = (topic.partition(0).unwrap(), topic.partition(1).unwrap());
        let mut watch0 = p0.high_watermark_changes();
        let mut watch1 = p1.high_watermark_changes();
        let any = broker.data_changes();
        let records: Vec<_> = (0..3)
            .map(|_| crate::test_util::record("k", Some(b"OrderPlaced"), 1_000))
            .collect();
        let batch =
            crate::test_util::batch(&records, 0, kafka_protocol::records::Compression::None);
        let now_ms = crate::now_ms();

        p1.append(&batch, false, 1 << 20, now_ms)
            .unwrap()
            .durable()
            .await
            .unwrap();
        assert!(
            any.has_changed().unwrap(),
            "the broker-wide watch sees every append"
        );
        assert!(watch1.has_changed().unwrap());
        assert_eq!(*watch1.borrow_and_update(), 3);
        assert!(!watch0.has_changed().unwrap(), "partition 0 did not move");

        p0.append(&batch, false, 1 << 20, now_ms)
            .unwrap()
            .durable()
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch0.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*watch0.borrow(), p0.high_watermark());
        assert!(!watch1.has_changed().unwrap());
    }
}
