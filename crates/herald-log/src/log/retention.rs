//! Moving the log start offset: retention by time and by size, DeleteRecords, and the
//! checkpoint that keeps the start offset across restarts.
//!
//! Data leaves a partition only as whole segments, oldest first, and never the active
//! one. The start offset can still lie inside a segment (DeleteRecords asks for any
//! offset), so it is not derivable from the files: a small checkpoint file in the
//! partition directory remembers it. The order of operations makes crashes harmless:
//!
//! 1. `persist_start_offset` writes the checkpoint (tmp + fsync + rename + directory
//!    fsync), without any lock of the log, because it fsyncs;
//! 2. `advance_start_offset` (under the caller's write lock, no I/O) moves the start
//!    offset in memory and detaches the segments that lie wholly below it;
//! 3. `RemovedSegments::delete` unlinks their files after the lock is dropped: no
//!    reader can reach a detached segment any more.
//!
//! A crash after 1 leaves files that `open` deletes (everything wholly below the
//! checkpoint); a crash inside 3 leaves index files without a `.log`, which `open`
//! deletes as well. The start offset never moves backwards.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::PartitionLog;
use crate::error::{IoContext, LogError};
use crate::segment::{
    LOG_SUFFIX, OFFSET_INDEX_SUFFIX, Segment, TIME_INDEX_SUFFIX, file_name, sync_dir,
};

/// The checkpoint of the log start offset, in the partition directory.
pub const START_OFFSET_CHECKPOINT_FILE: &str = "log-start-offset";
/// Written next to the checkpoint and renamed over it.
const START_OFFSET_CHECKPOINT_TMP: &str = "log-start-offset.tmp";
/// First line of the checkpoint: the format version.
const CHECKPOINT_VERSION: &str = "1";
/// A checkpoint is two short lines; anything longer is not one.
const CHECKPOINT_BYTES_MAX: u64 = 64;

/// What retention may delete. Both limits apply; whichever removes more wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionLimits {
    /// Delete closed segments whose newest record is older than now - this (None: keep).
    pub retention_ms: Option<i64>,
    /// Delete the oldest closed segments as long as what remains holds at least this
    /// many bytes (Kafka's rule: a partition never shrinks below its limit). None: keep.
    pub retention_bytes: Option<u64>,
}

/// Proof that a start offset is on disk: only `PartitionLog::persist_start_offset`
/// makes one, and only `advance_start_offset` takes it.
#[derive(Debug)]
pub struct PersistedStartOffset {
    dir: PathBuf,
    offset: i64,
}

impl PersistedStartOffset {
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

/// Segments cut off the front of the log, whose files are not yet deleted.
#[must_use = "the files of removed segments stay on disk until `delete` is called"]
pub struct RemovedSegments {
    dir: PathBuf,
    segments: Vec<Segment>,
}

impl RemovedSegments {
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size_bytes).sum()
    }

    /// Delete the segments' files (the `.log` first, so a crash midway leaves only
    /// index files, which `open` removes) and make the removal durable. Call it
    /// without holding the log's lock.
    pub fn delete(self) -> Result<(), LogError> {
        if self.segments.is_empty() {
            return Ok(());
        }
        for segment in &self.segments {
            remove_segment_files(&self.dir, segment.base_offset())?;
        }
        sync_dir(&self.dir)
    }
}

impl PartitionLog {
    /// Write the checkpoint of a new start offset. Runs without the log (it fsyncs):
    /// the caller then hands the result to `advance_start_offset` under its lock.
    /// Callers serialise their start-offset moves, so checkpoints only go forward.
    pub fn persist_start_offset(dir: &Path, offset: i64) -> Result<PersistedStartOffset, LogError> {
        write_start_offset_checkpoint(dir, offset)?;
        Ok(PersistedStartOffset {
            dir: dir.to_path_buf(),
            offset,
        })
    }

    /// Move the start offset to a persisted one and detach every segment that lies
    /// wholly below it (never the active segment). No I/O: safe under a write lock.
    /// An offset at or below the current start changes nothing; one past the end is
    /// out of range.
    pub fn advance_start_offset(
        &mut self,
        persisted: PersistedStartOffset,
    ) -> Result<RemovedSegments, LogError> {
        let offset = persisted.offset;
        let (log_start, log_end) = (self.log_start_offset, self.next_offset());
        if persisted.dir != self.dir {
            return Err(LogError::InvalidConfig(format!(
                "start offset was persisted in {}, not in this log's {}",
                persisted.dir.display(),
                self.dir.display()
            )));
        }
        if offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        let mut removed = RemovedSegments {
            dir: self.dir.clone(),
            segments: Vec::new(),
        };
        if offset <= log_start {
            return Ok(removed);
        }
        self.log_start_offset = offset;
        let closed = self.segments.len() - 1;
        let below = self.segments[..closed]
            .iter()
            .take_while(|s| s.next_offset() <= offset)
            .count();
        removed.segments = self.segments.drain(..below).collect();
        self.size_bytes -= removed.size_bytes();
        debug_assert!(self.segments[0].base_offset() <= self.log_start_offset);
        Ok(removed)
    }

    /// Roll the active segment if it holds data and is due: older than segment.ms, or
    /// (with a time limit) its newest record is already past retention. Without this a
    /// quiet partition would keep its data for as long as the active segment lives.
    /// Returns whether it rolled.
    pub fn roll_for_retention(
        &mut self,
        limits: RetentionLimits,
        now_ms: i64,
    ) -> Result<bool, LogError> {
        let active = self.active();
        if active.is_empty() {
            return Ok(false);
        }
        let aged = active
            .first_append_ms()
            .is_some_and(|first| now_ms.saturating_sub(first) > self.config.segment_ms_max);
        let expired = match limits.retention_ms {
            Some(retention_ms) => newest_timestamp_ms(active) < now_ms.saturating_sub(retention_ms),
            None => false,
        };
        if !(aged || expired) {
            return Ok(false);
        }
        self.reopen_for_writes()?;
        self.roll()?;
        Ok(true)
    }

    /// The start offset retention asks for: the base offset of the first closed
    /// segment to keep, if that is past the current start. Only closed segments are
    /// candidates; time retention deletes the oldest ones whose newest record is older
    /// than `now_ms - retention_ms` (stopping at the first that is not), size retention
    /// deletes oldest first while what remains is still at least `retention_bytes`.
    pub fn retention_start_offset(&self, limits: RetentionLimits, now_ms: i64) -> Option<i64> {
        let closed = &self.segments[..self.segments.len() - 1];
        let mut keep_from = match limits.retention_ms {
            Some(retention_ms) => {
                let cutoff = now_ms.saturating_sub(retention_ms);
                closed
                    .iter()
                    .take_while(|s| newest_timestamp_ms(s) < cutoff)
                    .count()
            }
            None => 0,
        };
        if let Some(retention_bytes) = limits.retention_bytes {
            let mut remaining: u64 = self.segments[keep_from..]
                .iter()
                .map(Segment::size_bytes)
                .sum();
            while let Some(segment) = closed.get(keep_from) {
                match remaining.checked_sub(segment.size_bytes()) {
                    Some(rest) if rest >= retention_bytes => {
                        remaining = rest;
                        keep_from += 1;
                    }
                    _ => break,
                }
            }
        }
        let start = self.segments[keep_from].base_offset();
        (keep_from > 0 && start > self.log_start_offset).then_some(start)
    }
}

/// The newest timestamp of a segment for time retention: its largest record timestamp,
/// or, if no record carried one (-1), when the file was last written (as Kafka does).
fn newest_timestamp_ms(segment: &Segment) -> i64 {
    match segment.max_timestamp_ms() {
        Some(ts) if ts >= 0 => ts,
        _ => std::fs::metadata(segment.log_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| d.as_millis() as i64),
    }
}

fn write_start_offset_checkpoint(dir: &Path, offset: i64) -> Result<(), LogError> {
    let tmp = dir.join(START_OFFSET_CHECKPOINT_TMP);
    let path = dir.join(START_OFFSET_CHECKPOINT_FILE);
    let mut file = File::create(&tmp).at("create", &tmp)?;
    file.write_all(format!("{CHECKPOINT_VERSION}\n{offset}\n").as_bytes())
        .at("write", &tmp)?;
    file.sync_all().at("fsync", &tmp)?;
    drop(file);
    fs::rename(&tmp, &path).at("rename into place", &path)?;
    sync_dir(dir)
}

/// The checkpointed start offset, or None if there is no checkpoint. A checkpoint that
/// cannot be read is an error: guessing could serve records a client deleted.
pub(super) fn read_start_offset_checkpoint(dir: &Path) -> Result<Option<i64>, LogError> {
    let path = dir.join(START_OFFSET_CHECKPOINT_FILE);
    let len = match fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at("stat", &path),
    };
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.clone(),
        position: 0,
        reason,
    };
    if len > CHECKPOINT_BYTES_MAX {
        return Err(corrupt(format!(
            "start offset checkpoint is {len} bytes, more than {CHECKPOINT_BYTES_MAX}"
        )));
    }
    let text = fs::read_to_string(&path).at("read", &path)?;
    let mut lines = text.lines();
    if lines.next() != Some(CHECKPOINT_VERSION) {
        return Err(corrupt(format!(
            "start offset checkpoint does not begin with version {CHECKPOINT_VERSION}"
        )));
    }
    match lines.next().map(str::parse::<i64>) {
        Some(Ok(offset)) if offset >= 0 => Ok(Some(offset)),
        _ => Err(corrupt(
            "start offset checkpoint has no valid offset on its second line".to_string(),
        )),
    }
}

/// At open: delete the segments that lie wholly below the checkpointed start offset
/// (a crash came between the checkpoint and their deletion) and index files left
/// without their `.log`. Returns the base offsets that remain; the last segment is
/// always kept.
pub(super) fn drop_segments_below(
    dir: &Path,
    bases: Vec<i64>,
    checkpoint: Option<i64>,
) -> Result<Vec<i64>, LogError> {
    let Some(start) = checkpoint else {
        return Ok(bases);
    };
    let below = (0..bases.len())
        .take_while(|&i| bases.get(i + 1).is_some_and(|&next| next <= start))
        .count();
    let first_kept = bases.get(below).copied();
    let mut removed = 0;
    for &base in &bases[..below] {
        remove_segment_files(dir, base)?;
        removed += 1;
    }
    if let Some(first_kept) = first_kept {
        for entry in fs::read_dir(dir).at("list", dir)? {
            let entry = entry.at("list", dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if orphan_index_base(name).is_some_and(|base| base < first_kept) {
                let path = entry.path();
                fs::remove_file(&path).at("remove", &path)?;
                removed += 1;
            }
        }
    }
    if removed > 0 {
        info!(dir = %dir.display(), start, removed, "removed files below the log start offset");
        sync_dir(dir)?;
    }
    Ok(bases[below..].to_vec())
}

/// The start offset after open: the checkpoint if there is one (at least the first
/// segment's base), but never past the end of the log. The end can only be below the
/// checkpoint if data the checkpoint covered was lost (a machine crash under the `os`
/// or `interval` flush policy); then the log starts at its end.
pub(super) fn start_offset_at_open(
    dir: &Path,
    segments: &[Segment],
    checkpoint: Option<i64>,
) -> i64 {
    let first_base = segments.first().map_or(0, Segment::base_offset);
    let next_offset = segments.last().map_or(0, Segment::next_offset);
    let start = checkpoint.map_or(first_base, |c| c.max(first_base));
    if start > next_offset {
        warn!(
            dir = %dir.display(),
            checkpoint = start,
            next_offset,
            "the start offset checkpoint is past the end of the log; starting at the end"
        );
        return next_offset;
    }
    start
}

/// Remove the three files of a segment; a file already gone is fine.
fn remove_segment_files(dir: &Path, base_offset: i64) -> Result<(), LogError> {
    for suffix in [LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = dir.join(file_name(base_offset, suffix));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).at("remove", &path),
        }
    }
    Ok(())
}

/// The base offset of an index or time-index file name.
fn orphan_index_base(name: &str) -> Option<i64> {
    [OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX]
        .iter()
        .find_map(|suffix| {
            let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
            crate::segment::parse_log_file_name(&format!("{stem}.{LOG_SUFFIX}"))
        })
}

#[cfg(test)]
mod tests;
