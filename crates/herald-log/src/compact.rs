//! The log's half of compaction: reading sealed segments without the log's lock,
//! writing a cleaned copy of one segment, swapping it in crash-safely, and the
//! cleaner's checkpoint. Which records to keep is the broker's decision (it knows
//! keys, tombstones and topic configs); this module only moves whole batches.
//!
//! Why one segment at a time (Kafka merges several into one): replacing exactly one
//! segment keeps the commit a single atomic `rename` of its `.log`, so recovery never
//! has to work out which of several originals a half-finished swap replaced, and a
//! crash always leaves either the old or the new segment, never a mix. Segments that
//! clean down to nothing are deleted (except the first, which holds the log start
//! offset), so heavily compacted logs do not pile up empty files.
//!
//! The swap protocol for segment `B`:
//! 1. Write `B.log.cleaned`, `B.index.cleaned`, `B.timeindex.cleaned`; fsync them and
//!    the directory (outside any lock: this is the slow part).
//! 2. Under the partition's write lock, with no fsync: rename the two indexes over
//!    `B.index`/`B.timeindex`, then `B.log.cleaned` over `B.log` (the commit), and
//!    reopen the segment. Readers holding the old segment keep reading its open file.
//! 3. fsync the directory (after the lock is released).
//!
//! Recovery at open ([`recover_cleaner_files`]): if `B.log.cleaned` still exists the
//! commit did not happen, so every `B.*.cleaned` is deleted and so are `B.index` and
//! `B.timeindex` (they may already be the new ones; the old log's indexes are rebuilt
//! from its data). If only index `.cleaned` files are left, the commit happened, so
//! they are renamed into place. Either way the result is the old or the new segment.
//! A segment that cleans to nothing is removed by unlinking its indexes, then its log
//! (the commit), then the `.cleaned` files, `.log.cleaned` last.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::batch::{BatchError, BatchHeader};
use crate::error::{IoContext, LogError};
use crate::file_cache::SegmentFile;
use crate::log::{PartitionLog, RecoveryInfo};
use crate::scan::{BatchCursor, Step};
use crate::segment::{LOG_SUFFIX, Segment, file_name, sync_dir};

/// Per-partition file recording how far the cleaner got.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";

/// Suffix of the files a cleaning in progress writes.
pub const CLEANED_SUFFIX: &str = ".cleaned";

/// The cleaner buffers this many bytes of batches before one write.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// A sealed segment as the cleaner sees it. Sealed segments never change in place, so
/// it can be read without the log's lock. Its file is opened through the descriptor
/// cache for each read, so a cleaner's snapshot of many segments does not hold many
/// descriptors; the handle also identifies the segment for `replace_sealed`.
#[derive(Clone)]
pub struct SealedSegment {
    base_offset: i64,
    next_offset: i64,
    size_bytes: u64,
    file: Arc<SegmentFile>,
    path: PathBuf,
}

impl SealedSegment {
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// One past the last offset stored here.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Call `f` with every batch (header and bytes, CRC-checked), oldest first, until
    /// it returns false.
    pub fn for_each_batch<E: From<LogError>>(
        &self,
        mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<bool, E>,
    ) -> Result<(), E> {
        let file = self.file.get().map_err(|source| LogError::File {
            op: "open segment",
            path: self.path.clone(),
            source,
        })?;
        let mut cursor = BatchCursor::new(
            &file,
            self.base_offset,
            0,
            self.base_offset,
            self.size_bytes,
            true,
        )
        .allow_gaps();
        loop {
            match cursor.step().at("read", &self.path)? {
                Step::Batch { position, header } => {
                    let bytes = cursor
                        .batch_bytes(position, header.total_bytes())
                        .at("read", &self.path)?;
                    if !f(&header, bytes)? {
                        return Ok(());
                    }
                }
                Step::End => return Ok(()),
                Step::Bad(reason) => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: cursor.position(),
                        reason,
                    }
                    .into());
                }
            }
        }
    }
}

/// Writes the cleaned copy of one sealed segment into `.cleaned` files.
pub struct SegmentRewriter {
    dir: PathBuf,
    source: SealedSegment,
    segment: Segment,
    buffer: Vec<u8>,
    placed: Vec<(u64, BatchHeader)>,
    next_offset: i64,
}

impl SegmentRewriter {
    /// Start the cleaned copy of `source`, a sealed segment of the log in `dir`. Any
    /// leftover `.cleaned` files of an earlier, abandoned attempt are replaced.
    pub fn create(
        dir: &Path,
        source: &SealedSegment,
        index_interval_bytes: u64,
    ) -> Result<SegmentRewriter, LogError> {
        remove_cleaned_files(dir, source.base_offset)?;
        let segment = Segment::create_named(
            dir,
            source.base_offset,
            index_interval_bytes,
            CLEANED_SUFFIX,
        )?;
        Ok(SegmentRewriter {
            dir: dir.to_path_buf(),
            source: source.clone(),
            segment,
            buffer: Vec::new(),
            placed: Vec::new(),
            next_offset: source.base_offset,
        })
    }

    /// Append one whole batch. Offsets must increase and stay inside the source
    /// segment's range: the cleaner may drop records, never move or add them.
    pub fn push(&mut self, batch: &[u8]) -> Result<(), LogError> {
        let header = BatchHeader::parse(batch)?;
        let total = header.check_length(batch.len())?;
        if total != batch.len() {
            return Err(LogError::Batch(BatchError::InvalidLength(
                header.batch_length,
            )));
        }
        if header.base_offset < self.next_offset || header.last_offset() >= self.source.next_offset
        {
            return Err(LogError::Corrupt {
                path: self.segment.log_path().to_path_buf(),
                position: self.segment.size_bytes() + self.buffer.len() as u64,
                reason: format!(
                    "cleaned batch at offsets {}..={} is out of order or outside the original segment {}..{}",
                    header.base_offset,
                    header.last_offset(),
                    self.source.base_offset,
                    self.source.next_offset
                ),
            });
        }
        self.placed.push((self.buffer.len() as u64, header));
        self.buffer.extend_from_slice(batch);
        self.next_offset = header.last_offset() + 1;
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), LogError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.segment.size_bytes() + self.buffer.len() as u64 > u64::from(u32::MAX) {
            return Err(LogError::AppendTooLarge {
                bytes: self.buffer.len() as u64,
                segment_bytes_max: u64::from(u32::MAX),
            });
        }
        self.segment.append(&self.buffer, &self.placed, 0)?;
        self.buffer.clear();
        self.placed.clear();
        Ok(())
    }

    /// Write what is buffered, fsync the files and the directory: afterwards the
    /// cleaned segment survives a crash and may be swapped in.
    pub fn finish(mut self) -> Result<CleanedSegment, LogError> {
        self.write_buffer()?;
        self.segment.seal()?;
        sync_dir(&self.dir)?;
        Ok(CleanedSegment {
            dir: self.dir,
            base_offset: self.source.base_offset,
            source_file: self.source.file,
            size_bytes: self.segment.size_bytes(),
        })
    }

    /// Give up: delete the `.cleaned` files.
    pub fn discard(self) -> Result<(), LogError> {
        let (dir, base) = (self.dir.clone(), self.source.base_offset);
        drop(self);
        remove_cleaned_files(&dir, base)
    }
}

/// A finished, durable cleaned copy of one segment, ready for
/// [`PartitionLog::replace_sealed`].
pub struct CleanedSegment {
    dir: PathBuf,
    base_offset: i64,
    source_file: Arc<SegmentFile>,
    size_bytes: u64,
}

impl CleanedSegment {
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn discard(self) -> Result<(), LogError> {
        remove_cleaned_files(&self.dir, self.base_offset)
    }
}

/// What [`PartitionLog::replace_sealed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The cleaned segment took the original's place.
    Swapped,
    /// The cleaned segment was empty and not the first: the segment is gone.
    Removed,
    /// The original is no longer in the log (deleted or replaced meanwhile); the
    /// cleaned copy was discarded.
    Stale,
}

/// fsyncs the log directory after a swap, without holding the log.
#[derive(Debug, Clone)]
pub struct DirSync(PathBuf);

impl DirSync {
    pub fn sync(&self) -> Result<(), LogError> {
        sync_dir(&self.0)
    }
}

impl PartitionLog {
    /// Every sealed segment (all but the active one), oldest first.
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        let sealed = self.segments.len().saturating_sub(1);
        self.segments[..sealed]
            .iter()
            .map(|s| SealedSegment {
                base_offset: s.base_offset(),
                next_offset: s.next_offset(),
                size_bytes: s.size_bytes(),
                file: Arc::clone(s.log_file()),
                path: s.log_path().to_path_buf(),
            })
            .collect()
    }

    /// Base offset of the active segment: the cleaner never goes past it.
    pub fn active_base_offset(&self) -> i64 {
        self.segments[self.segments.len() - 1].base_offset()
    }

    /// Swap a cleaned segment in for its original (see the module docs). Does no
    /// fsync: call [`DirSync::sync`] on the returned handle after releasing the lock.
    pub fn replace_sealed(
        &mut self,
        cleaned: CleanedSegment,
    ) -> Result<(Replaced, DirSync), LogError> {
        let dir_sync = DirSync(self.dir.clone());
        let base = cleaned.base_offset;
        let found = self.segments.iter().position(|s| s.base_offset() == base);
        let index = match found {
            Some(i)
                if i + 1 < self.segments.len()
                    && Arc::ptr_eq(self.segments[i].log_file(), &cleaned.source_file) =>
            {
                i
            }
            _ => {
                cleaned.discard()?;
                return Ok((Replaced::Stale, dir_sync));
            }
        };
        let old_size = self.segments[index].size_bytes();
        let next_base = self.segments[index + 1].base_offset();
        if cleaned.size_bytes == 0 && index > 0 {
            for suffix in ["index", "timeindex", LOG_SUFFIX] {
                remove_if_exists(&self.dir.join(file_name(base, suffix)))?;
            }
            self.segments.remove(index);
            self.size_bytes -= old_size;
            remove_cleaned_files(&self.dir, base)?;
            return Ok((Replaced::Removed, dir_sync));
        }
        // Indexes first, the log last: the log's rename is the commit.
        for suffix in ["index", "timeindex", LOG_SUFFIX] {
            let to = self.dir.join(file_name(base, suffix));
            let from = self
                .dir
                .join(file_name(base, &format!("{suffix}{CLEANED_SUFFIX}")));
            fs::rename(&from, &to).at("rename", &from)?;
        }
        let mut info = RecoveryInfo::default();
        let segment = Segment::open_sealed(
            &self.dir,
            base,
            next_base,
            self.config.index_interval_bytes,
            &mut info,
        )?;
        self.size_bytes = self.size_bytes - old_size + segment.size_bytes();
        self.segments[index] = segment;
        Ok((Replaced::Swapped, dir_sync))
    }
}

/// The cleaner's progress in one partition, kept in [`CLEANER_CHECKPOINT_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanerCheckpoint {
    /// Offsets below this were cleaned: their keys are unique among themselves.
    pub first_dirty_offset: i64,
    /// The earliest delete horizon of a tombstone still kept, if any: a cleaning is
    /// due then even if nothing is dirty.
    pub tombstone_horizon_ms: Option<i64>,
}

impl CleanerCheckpoint {
    /// Read the checkpoint of the log in `dir`. A missing or unreadable file means
    /// "nothing cleaned yet", which only costs a cleaning that finds little to do.
    pub fn load(dir: &Path) -> CleanerCheckpoint {
        let path = dir.join(CLEANER_CHECKPOINT_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return CleanerCheckpoint::default();
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the cleaner checkpoint; starting over");
                return CleanerCheckpoint::default();
            }
        };
        let mut checkpoint = CleanerCheckpoint::default();
        for line in text.lines() {
            let parsed = match line.split_once('=') {
                Some(("first_dirty_offset", v)) => {
                    v.parse().map(|v| checkpoint.first_dirty_offset = v).is_ok()
                }
                Some(("tombstone_horizon_ms", v)) => v
                    .parse()
                    .map(|v| checkpoint.tombstone_horizon_ms = Some(v))
                    .is_ok(),
                _ => line.trim().is_empty(),
            };
            if !parsed {
                warn!(path = %path.display(), line, "unreadable cleaner checkpoint line; starting over");
                return CleanerCheckpoint::default();
            }
        }
        checkpoint
    }

    /// Write the checkpoint atomically (temporary file, fsync, rename, fsync dir).
    pub fn store(&self, dir: &Path) -> Result<(), LogError> {
        let path = dir.join(CLEANER_CHECKPOINT_FILE);
        let tmp = dir.join(format!("{CLEANER_CHECKPOINT_FILE}.tmp"));
        let mut text = format!("first_dirty_offset={}\n", self.first_dirty_offset);
        if let Some(h) = self.tombstone_horizon_ms {
            text.push_str(&format!("tombstone_horizon_ms={h}\n"));
        }
        let mut file = File::create(&tmp).at("create", &tmp)?;
        file.write_all(text.as_bytes()).at("write", &tmp)?;
        file.sync_all().at("fsync", &tmp)?;
        fs::rename(&tmp, &path).at("rename", &tmp)?;
        sync_dir(dir)
    }
}

/// Finish or roll back whatever a cleaning interrupted by a crash left in `dir` (see
/// the module docs). Runs at open, before the segments are listed.
pub(crate) fn recover_cleaner_files(dir: &Path) -> Result<(), LogError> {
    let mut bases = BTreeSet::new();
    for entry in fs::read_dir(dir).at("list", dir)? {
        let entry = entry.at("list", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(CLEANED_SUFFIX) {
            match stem
                .split_once('.')
                .and_then(|(digits, _)| digits.parse::<i64>().ok())
            {
                Some(base) => {
                    bases.insert(base);
                }
                None => {
                    warn!(dir = %dir.display(), file = name, "ignoring an unknown .cleaned file")
                }
            }
        }
    }
    for &base in &bases {
        let cleaned =
            |suffix: &str| dir.join(file_name(base, &format!("{suffix}{CLEANED_SUFFIX}")));
        let live = |suffix: &str| dir.join(file_name(base, suffix));
        if cleaned(LOG_SUFFIX).exists() {
            info!(dir = %dir.display(), base_offset = base, "rolling back an unfinished segment cleaning");
            // The indexes may already be the new ones; the old log's are rebuilt.
            for suffix in ["index", "timeindex"] {
                remove_if_exists(&live(suffix))?;
            }
            remove_cleaned_files(dir, base)?;
        } else {
            info!(dir = %dir.display(), base_offset = base, "finishing an interrupted segment swap");
            let log_exists = live(LOG_SUFFIX).exists();
            for suffix in ["index", "timeindex"] {
                let from = cleaned(suffix);
                if !from.exists() {
                    continue;
                }
                if log_exists {
                    fs::rename(&from, live(suffix)).at("rename", &from)?;
                } else {
                    remove_if_exists(&from)?;
                }
            }
        }
    }
    if !bases.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Delete the `.cleaned` files of segment `base`, the log's last (its presence is
/// what tells recovery to roll back).
fn remove_cleaned_files(dir: &Path, base: i64) -> Result<(), LogError> {
    for suffix in ["index", "timeindex", LOG_SUFFIX] {
        remove_if_exists(&dir.join(file_name(base, &format!("{suffix}{CLEANED_SUFFIX}"))))?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::File {
            op: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests;
