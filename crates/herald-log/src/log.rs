//! The partition log: an ordered list of segments in one directory, with offsets
//! assigned densely across them.
//!
//! This is the only type the broker uses. It owns the policy decisions that span
//! segments (when to roll, where a read starts, what recovery trusts) and leaves the
//! byte-level work to `segment`, `index` and `scan`.
//!
//! Durability model: `append` hands bytes to the OS and returns; nothing is fsynced
//! there, so the broker chooses its flush policy. `sync_point` gives it a handle to
//! fsync without holding the log (group commit). A clean-shutdown marker, removed by
//! `open` and written by `close`, tells the next `open` whether the active segment can
//! be trusted or must be rescanned.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::batch::{BATCH_HEADER_BYTES, BatchError, BatchHeader};
use crate::error::{IoContext, LogError};
use crate::segment::{Segment, parse_log_file_name, sync_dir};

/// Written by `close`, removed by `open`: its presence means the last run ended cleanly.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// Index positions are u32, so no segment may be larger.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment before one would grow past this (<= u32::MAX).
    pub segment_bytes_max: u64,
    /// Roll to a new segment once the active one is older than this.
    pub segment_ms_max: i64,
    /// Bytes of batches between two offset-index entries.
    pub index_interval_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: 7 * 24 * 60 * 60 * 1000,
            index_interval_bytes: 4096,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), LogError> {
        if !(BATCH_HEADER_BYTES as u64..=SEGMENT_BYTES_LIMIT).contains(&self.segment_bytes_max) {
            return Err(LogError::InvalidConfig(format!(
                "segment_bytes_max {} must be between {BATCH_HEADER_BYTES} and {SEGMENT_BYTES_LIMIT} (index positions are u32)",
                self.segment_bytes_max
            )));
        }
        if self.segment_ms_max <= 0 {
            return Err(LogError::InvalidConfig(format!(
                "segment_ms_max {} must be positive",
                self.segment_ms_max
            )));
        }
        Ok(())
    }
}

/// Offsets assigned by one `append`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub batch_count: usize,
}

/// What `open` found and did, for start-up logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The clean-shutdown marker was present.
    pub clean_shutdown: bool,
    /// Bytes of segment data read to validate tails or rebuild indexes.
    pub scanned_bytes: u64,
    /// Bytes cut off the active segment as torn or corrupt.
    pub truncated_bytes: u64,
    /// Segments whose indexes were rebuilt.
    pub rebuilt_indexes: usize,
    /// Batches in sealed segments whose CRC is wrong: kept in place, so offsets stay
    /// dense, but never served.
    pub corrupt_batches: usize,
}

/// A handle to fsync what was written up to a moment, without holding the log.
#[derive(Debug, Clone)]
pub struct SyncPoint {
    files: Vec<Arc<File>>,
    next_offset: i64,
}

impl SyncPoint {
    /// fsync the files that may hold unsynced data. Afterwards every offset below
    /// `next_offset()` is durable.
    pub fn sync(&self) -> std::io::Result<()> {
        for file in &self.files {
            crate::fault::sync_data(file)?;
        }
        Ok(())
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
}

pub struct PartitionLog {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// Ordered by base offset; never empty; the last one is active.
    pub(crate) segments: Vec<Segment>,
    /// The first offset a reader may ask for: at or after the first segment's base
    /// (DeleteRecords can move it inside a segment), never past `next_offset()`, never
    /// backwards. Kept across restarts by the checkpoint in `retention`.
    log_start_offset: i64,
    pub(crate) size_bytes: u64,
    recovery: RecoveryInfo,
    /// The clean-shutdown marker is on disk (written by `close`, or left from the last
    /// run until the first write); a write must remove it first.
    closed: bool,
}

impl PartitionLog {
    /// Open the log in `dir` (creating the directory if missing) and recover it; see
    /// `Segment::open_active` and `Segment::open_sealed` for what is checked.
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, LogError> {
        config.validate()?;
        fs::create_dir_all(dir).at("create directory", dir)?;
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        // The marker stays until the first write after open (`reopen_for_writes`): a
        // partition nobody writes to costs no fsync to open or to close again.
        let clean_shutdown = marker.try_exists().at("stat", &marker)?;
        let mut recovery = RecoveryInfo {
            clean_shutdown,
            ..RecoveryInfo::default()
        };
        crate::compact::recover_cleaner_files(dir)?;
        let bases = list_segments(dir)?;
        let checkpoint = retention::read_start_offset_checkpoint(dir)?;
        let bases = retention::drop_segments_below(dir, bases, checkpoint)?;
        let interval = config.index_interval_bytes;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            let segment = match bases.get(i + 1) {
                Some(&next_base) => {
                    Segment::open_sealed(dir, base, next_base, interval, &mut recovery)?
                }
                None => Segment::open_active(dir, base, clean_shutdown, interval, &mut recovery)?,
            };
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0, interval)?);
        }
        let size_bytes = segments.iter().map(Segment::size_bytes).sum();
        let log_start_offset = retention::start_offset_at_open(dir, &segments, checkpoint);
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            size_bytes,
            recovery,
            closed: clean_shutdown,
        };
        // A directory with no segment yet is a new partition, not a recovery.
        let fresh = bases.is_empty();
        if !fresh && !clean_shutdown
            || log.recovery.truncated_bytes > 0
            || log.recovery.rebuilt_indexes > 0
            || log.recovery.corrupt_batches > 0
        {
            info!(
                dir = %log.dir.display(),
                clean_shutdown,
                log_start_offset = log.log_start_offset(),
                next_offset = log.next_offset(),
                scanned_bytes = log.recovery.scanned_bytes,
                truncated_bytes = log.recovery.truncated_bytes,
                rebuilt_indexes = log.recovery.rebuilt_indexes,
                corrupt_batches = log.recovery.corrupt_batches,
                "recovered partition log"
            );
        }
        Ok(log)
    }

    /// Append one or more already-validated batches, held back to back in `batches`.
    /// Each batch's base offset is written in place, then all of them go to the OS in
    /// one write (no fsync). On error nothing was appended, though base offsets in
    /// `batches` may have been rewritten.
    pub fn append(&mut self, batches: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        if batches.is_empty() {
            return Err(BatchError::Empty.into());
        }
        let bytes = batches.len() as u64;
        if bytes > self.config.segment_bytes_max {
            return Err(LogError::AppendTooLarge {
                bytes,
                segment_bytes_max: self.config.segment_bytes_max,
            });
        }
        let base_offset = self.next_offset();
        let placed = assign_offsets(batches, base_offset)?;
        let Some((_, last)) = placed.last() else {
            return Err(BatchError::Empty.into());
        };
        let last_base_offset = last.base_offset;
        let next_offset = last.last_offset() + 1;
        let max_timestamp = placed
            .iter()
            .map(|(_, h)| h.max_timestamp)
            .max()
            .unwrap_or(i64::MIN);

        self.reopen_for_writes()?;
        if self.should_roll(bytes, last_base_offset, now_ms) {
            self.roll()?;
        }
        let active = self.active();
        if last_base_offset - active.base_offset() > i64::from(u32::MAX) {
            // Only reachable with an empty segment and absurd lastOffsetDeltas.
            return Err(LogError::OffsetOverflow {
                next_offset: base_offset,
                batch_offsets: next_offset - base_offset,
            });
        }
        self.active_mut().append(batches, &placed, now_ms)?;
        self.size_bytes += bytes;
        debug_assert_eq!(self.next_offset(), next_offset, "offsets must stay dense");
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            max_timestamp,
            batch_count: placed.len(),
        })
    }

    fn should_roll(&self, bytes: u64, last_base_offset: i64, now_ms: i64) -> bool {
        let active = self.active();
        if active.is_empty() {
            return false;
        }
        let full = active.size_bytes() + bytes > self.config.segment_bytes_max;
        let old = active
            .first_append_ms()
            .is_some_and(|first| now_ms.saturating_sub(first) > self.config.segment_ms_max);
        let offsets_out_of_reach = last_base_offset - active.base_offset() > i64::from(u32::MAX);
        full || old || offsets_out_of_reach
    }

    /// Seal the active segment (fsynced before the new one takes data) and start a new
    /// one at the next offset.
    fn roll(&mut self) -> Result<(), LogError> {
        self.active_mut().seal()?;
        self.active().unpin_file();
        let segment = Segment::create(
            &self.dir,
            self.next_offset(),
            self.config.index_interval_bytes,
        )?;
        self.segments.push(segment);
        Ok(())
    }

    /// Whole batches starting at the batch that contains `offset`, continuing across
    /// segments while the total stays <= `max_bytes`; the first batch is returned whole
    /// even if larger. `offset == next_offset()` gives an empty Vec.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<u8>, LogError> {
        self.check_range(offset)?;
        let mut out = Vec::new();
        if offset == self.next_offset() {
            return Ok(out);
        }
        // Compaction may have emptied the rest of a segment: then the first batch at or
        // after `offset` is in a later one.
        let mut first = self.segment_for(offset);
        let position = loop {
            let Some(segment) = self.segments.get(first) else {
                return Ok(out);
            };
            if let Some(position) = segment.locate(offset)? {
                break position;
            }
            first += 1;
        };
        // Sealed segments are CRC-checked on every read (see `Segment::read_into`); the
        // active one was checked when its batches arrived or were recovered.
        let active = self.segments.len() - 1;
        let mut at_segment_end =
            self.segments[first].read_into(position, &mut out, max_bytes, true, first < active)?;
        for (i, segment) in self.segments.iter().enumerate().skip(first + 1) {
            if !at_segment_end || out.len() >= max_bytes {
                break;
            }
            at_segment_end = segment.read_into(0, &mut out, max_bytes, false, i < active)?;
        }
        Ok(out)
    }

    /// The first batch whose max timestamp is >= `ts_ms`: its base offset and bytes.
    pub fn batch_for_timestamp(&self, ts_ms: i64) -> Result<Option<(i64, Vec<u8>)>, LogError> {
        for segment in &self.segments {
            if let Some((position, header)) = segment.find_timestamp(ts_ms)? {
                let bytes = segment.read_batch(position, &header)?;
                return Ok(Some((header.base_offset, bytes)));
            }
        }
        Ok(None)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The log end offset: the offset the next appended record gets.
    pub fn next_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// A handle to fsync everything written so far, usable without holding the log.
    pub fn sync_point(&self) -> SyncPoint {
        let active = self.active();
        let files = if active.is_dirty() {
            // The active segment's file is pinned open: this never opens a file.
            active.open_file().into_iter().collect()
        } else {
            Vec::new()
        };
        SyncPoint {
            files,
            next_offset: self.next_offset(),
        }
    }

    /// fsync everything now. (Sealed segments were fsynced when rolled.)
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.active_mut().flush()
    }

    /// Flush and write the clean-shutdown marker, so the next `open` trusts the indexes.
    /// Takes `&mut self` so an owner behind a lock can close in place; the log stays
    /// readable, and a later `append` removes the marker again before writing.
    pub fn close(&mut self) -> Result<(), LogError> {
        if self.closed {
            return Ok(());
        }
        self.active_mut().seal()?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .at("write", &marker)?;
        sync_dir(&self.dir)?;
        self.closed = true;
        Ok(())
    }

    /// Undo `close` before new data lands, so the marker never vouches for writes
    /// made after it.
    fn reopen_for_writes(&mut self) -> Result<(), LogError> {
        if self.closed {
            let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
            fs::remove_file(&marker).at("remove", &marker)?;
            sync_dir(&self.dir)?;
            self.closed = false;
        }
        Ok(())
    }

    /// Headers of every batch, oldest first, read without the batch bodies.
    pub fn batch_headers(&self) -> Result<Vec<BatchHeader>, LogError> {
        let mut headers = Vec::new();
        for segment in &self.segments {
            segment.headers(&mut headers)?;
        }
        Ok(headers)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// What the last `open` found and did.
    pub fn recovery_info(&self) -> &RecoveryInfo {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Change the rolling policy (a topic's segment.bytes / segment.ms was altered); it
    /// applies from the next append on, existing segments stay as they are.
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), LogError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    fn check_range(&self, offset: i64) -> Result<(), LogError> {
        let (log_start, log_end) = (self.log_start_offset(), self.next_offset());
        if offset < log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        Ok(())
    }

    /// Index of the segment holding `offset` (log_start <= offset < next_offset).
    fn segment_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1)
    }

    fn active(&self) -> &Segment {
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }
}

/// Dense base offsets for each batch of `batches`, starting at `base_offset`; the bytes
/// are not touched (the segment writes each batch's new base offset in front of the
/// rest of it). Only framing is re-checked (enough to never index out of bounds): the
/// caller ran `validate_batches`. Returns each batch's position in the buffer and its
/// header with the assigned base offset.
fn assign_offsets(batches: &[u8], base_offset: i64) -> Result<Vec<(u64, BatchHeader)>, LogError> {
    let mut placed = Vec::new();
    let mut position = 0usize;
    let mut next_offset = base_offset;
    while position < batches.len() {
        let rest = &batches[position..];
        let mut header = BatchHeader::parse(rest)?;
        let total = header.check_length(rest.len())?;
        if header.last_offset_delta < 0 {
            return Err(BatchError::OffsetDeltaMismatch {
                last_offset_delta: header.last_offset_delta,
                records_count: header.records_count,
            }
            .into());
        }
        header.base_offset = next_offset;
        let batch_offsets = i64::from(header.last_offset_delta) + 1;
        next_offset = next_offset
            .checked_add(batch_offsets)
            .ok_or(LogError::OffsetOverflow {
                next_offset,
                batch_offsets,
            })?;
        placed.push((position as u64, header));
        position += total;
    }
    Ok(placed)
}

/// Base offsets of the segments in `dir`, ascending. Other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<i64>, LogError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).at("list", dir)? {
        let entry = entry.at("list", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_log_file_name(name) {
            Some(base) => bases.push(base),
            None if name.ends_with(".log") => {
                warn!(dir = %dir.display(), file = name, "ignoring a .log file that is not named by a base offset");
            }
            None => {}
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

mod retention;
pub use retention::*;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
