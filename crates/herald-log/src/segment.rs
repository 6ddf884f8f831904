//! One segment: a `.log` file of whole batches plus its two sparse indexes, named by
//! the segment's base offset.
//!
//! Why segments: retention and compaction work by dropping or rewriting whole files,
//! and the u32 positions and relative offsets in the indexes stay small because a
//! segment never grows past `segment_bytes_max` (<= u32::MAX) bytes or u32::MAX
//! offsets.
//!
//! A segment is *sealed* once a newer one exists: its data and indexes were fsynced
//! when it was rolled, so on open only its tail is re-checked. The last segment is
//! *active*: it takes appends, and after an unclean shutdown it is rescanned batch by
//! batch and truncated at the first torn or corrupt batch.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, warn};

use crate::batch::{BATCH_HEADER_BYTES, BatchError, BatchHeader, check_crc};
use crate::error::{IoContext, LogError};
use crate::fault;
use crate::file_cache::SegmentFile;
use crate::index::{IndexFile, OffsetEntry, TimeEntry};
use crate::log::RecoveryInfo;
use crate::scan::{BatchCursor, Step};

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const OFFSET_INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Digits in a segment file name: enough for any non-negative i64.
const FILE_NAME_DIGITS: usize = 20;

/// `00000000000000000042.log` for base offset 42.
pub(crate) fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:0FILE_NAME_DIGITS$}.{suffix}")
}

/// The base offset of a segment log file name, or None for any other file.
pub(crate) fn parse_log_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(LOG_SUFFIX)?.strip_suffix('.')?;
    if digits.len() != FILE_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

const ZERO_ENTRY: OffsetEntry = OffsetEntry {
    relative_offset: 0,
    position: 0,
};

pub(crate) struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    /// Open while the segment is active; opened on demand once sealed (`file_cache`).
    file: Arc<SegmentFile>,
    /// Bytes of whole batches; the file is exactly this long except during a failed write.
    size_bytes: u64,
    /// One past the last offset stored here (== base_offset when empty).
    next_offset: i64,
    offset_index: IndexFile<OffsetEntry>,
    time_index: IndexFile<TimeEntry>,
    index_interval_bytes: u64,
    // Indexing state of the active segment: what the next index entry depends on.
    max_timestamp_ms: Option<i64>,
    last_batch_offset: Option<i64>,
    bytes_since_index_entry: u64,
    /// When the segment took its first batch, for rolling by age. After a reopen this is
    /// the first batch's max timestamp (the wall-clock time was not kept).
    first_append_ms: Option<i64>,
    /// Written since the last fsync.
    dirty: bool,
    /// A failed append may have left bytes past `size_bytes` that could not be cut off
    /// yet; the next write or flush cuts them first.
    torn_tail: bool,
    /// Bytes at the start of the segment that were trusted at open without a CRC check
    /// (an active segment after a clean shutdown): reads of them check CRCs, as reads
    /// of sealed segments do.
    unchecked_bytes: u64,
}

impl Segment {
    /// Create the files of a new, empty segment and make their names durable.
    pub fn create(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
    ) -> Result<Segment, LogError> {
        Segment::create_named(dir, base_offset, index_interval_bytes, "")
    }

    /// Create a segment whose three file names end in `extra` after the usual suffix
    /// (the cleaner writes `.log.cleaned` etc. next to the segment it replaces).
    pub fn create_named(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        extra: &str,
    ) -> Result<Segment, LogError> {
        let name = |suffix: &str| file_name(base_offset, &format!("{suffix}{extra}"));
        let log_path = dir.join(name(LOG_SUFFIX));
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&log_path)
            .at("create segment", &log_path)?;
        let index_path = dir.join(name(OFFSET_INDEX_SUFFIX));
        let time_path = dir.join(name(TIME_INDEX_SUFFIX));
        let indexes = IndexFile::create(&index_path)
            .at("create index", &index_path)
            .and_then(|offsets| {
                let times = IndexFile::create(&time_path).at("create time index", &time_path)?;
                sync_dir(dir)?;
                Ok((offsets, times))
            });
        let (offset_index, time_index) = match indexes {
            Ok(indexes) => indexes,
            Err(e) => {
                // Remove what was created (a full disk, say), so a later roll to the
                // same base offset can try again instead of finding the name taken.
                for path in [&log_path, &index_path, &time_path] {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        Ok(Segment {
            base_offset,
            file: SegmentFile::active(&log_path, log),
            log_path,
            size_bytes: 0,
            next_offset: base_offset,
            offset_index,
            time_index,
            index_interval_bytes,
            max_timestamp_ms: None,
            last_batch_offset: None,
            bytes_since_index_entry: 0,
            first_append_ms: None,
            dirty: false,
            torn_tail: false,
            unchecked_bytes: 0,
        })
    }

    /// Open a segment that has a successor starting at `next_base_offset`. Its tail is
    /// checked (from the last index entry, with CRCs); a bad index is rebuilt; bad
    /// *data* is an error, because sealed segments were fsynced and are not expected
    /// to tear. Offsets may have gaps (compaction removes records), so the segment
    /// may end before `next_base_offset`, never after it.
    pub fn open_sealed(
        dir: &Path,
        base_offset: i64,
        next_base_offset: i64,
        index_interval_bytes: u64,
        info: &mut RecoveryInfo,
    ) -> Result<Segment, LogError> {
        let (mut segment, problem) = Segment::open_files(dir, base_offset, index_interval_bytes)?;
        let problem = match problem {
            Some(p) => Some(p),
            None => match segment.walk_tail(false, info)? {
                Some(p) => Some(p),
                None if segment.next_offset > next_base_offset => Some(format!(
                    "segment ends before offset {} but the next segment starts at {next_base_offset}",
                    segment.next_offset
                )),
                None => None,
            },
        };
        if let Some(problem) = problem {
            warn!(segment = %segment.log_path.display(), %problem, "rebuilding the indexes of a sealed segment");
            segment.rebuild_sealed(next_base_offset, info)?;
        }
        segment.unpin_file();
        Ok(segment)
    }

    /// Open the last segment. After a clean shutdown its indexes are trusted and only
    /// the bytes after the last index entry are walked; otherwise (or if that walk or
    /// the indexes look wrong) the whole segment is rescanned and truncated at the
    /// first unsound batch.
    pub fn open_active(
        dir: &Path,
        base_offset: i64,
        clean_shutdown: bool,
        index_interval_bytes: u64,
        info: &mut RecoveryInfo,
    ) -> Result<Segment, LogError> {
        let (mut segment, problem) = Segment::open_files(dir, base_offset, index_interval_bytes)?;
        if clean_shutdown {
            let problem = match problem {
                Some(p) => Some(p),
                None => segment.walk_tail(true, info)?,
            };
            match problem {
                None => {
                    segment.first_append_ms =
                        segment.time_index.entries().first().map(|t| t.timestamp_ms);
                    segment.unchecked_bytes = segment.size_bytes;
                    return Ok(segment);
                }
                Some(problem) => {
                    warn!(segment = %segment.log_path.display(), %problem, "active segment is unsound despite a clean shutdown; rescanning it");
                }
            }
        }
        segment.recover(info)?;
        Ok(segment)
    }

    /// Open the files of an existing segment and load its indexes; the second value
    /// says why the indexes cannot be trusted, if they cannot.
    fn open_files(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
    ) -> Result<(Segment, Option<String>), LogError> {
        let log_path = dir.join(file_name(base_offset, LOG_SUFFIX));
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .at("open segment", &log_path)?;
        let size_bytes = log.metadata().at("stat", &log_path)?.len();
        if size_bytes > u64::from(u32::MAX) {
            return Err(LogError::Corrupt {
                path: log_path,
                position: u64::from(u32::MAX),
                reason:
                    "segment is larger than u32::MAX bytes, which index positions cannot address"
                        .to_string(),
            });
        }
        // No segment holds more batches than whole headers fit in it.
        let entries_max = (size_bytes / BATCH_HEADER_BYTES as u64) as usize;
        let index_path = dir.join(file_name(base_offset, OFFSET_INDEX_SUFFIX));
        let offsets = IndexFile::load(&index_path, entries_max).at("load index", &index_path)?;
        let time_path = dir.join(file_name(base_offset, TIME_INDEX_SUFFIX));
        let times = IndexFile::load(&time_path, entries_max).at("load time index", &time_path)?;
        let load_problem = offsets
            .problem
            .map(|p| format!("{}: {p}", index_path.display()))
            .or_else(|| {
                times
                    .problem
                    .map(|p| format!("{}: {p}", time_path.display()))
            });
        let segment = Segment {
            base_offset,
            file: SegmentFile::active(&log_path, log),
            log_path,
            size_bytes,
            next_offset: base_offset,
            offset_index: offsets.index,
            time_index: times.index,
            index_interval_bytes,
            max_timestamp_ms: None,
            last_batch_offset: None,
            bytes_since_index_entry: 0,
            first_append_ms: None,
            dirty: false,
            torn_tail: false,
            unchecked_bytes: 0,
        };
        let problem = load_problem.or_else(|| segment.index_bounds_problem());
        Ok((segment, problem))
    }

    /// Checks of the loaded indexes against the segment size. Entries past the last
    /// index entry are checked by the tail walk, which must find a batch with the
    /// right offset exactly where the last entry points.
    fn index_bounds_problem(&self) -> Option<String> {
        let offsets = self.offset_index.entries();
        let times = self.time_index.entries();
        if self.size_bytes == 0 {
            return (!offsets.is_empty() || !times.is_empty())
                .then(|| "index has entries but the segment is empty".to_string());
        }
        // The first batch is at position 0; its offset is the base offset unless
        // compaction removed the records before it.
        let Some(first) = offsets.first().filter(|e| e.position == 0) else {
            return Some("offset index does not start at the first batch".to_string());
        };
        if offsets
            .last()
            .is_some_and(|e| u64::from(e.position) >= self.size_bytes)
        {
            return Some("offset index points past the end of the segment".to_string());
        }
        if times
            .first()
            .is_none_or(|t| t.relative_offset != first.relative_offset)
        {
            return Some("time index does not start at the first batch".to_string());
        }
        None
    }

    /// Walk (with CRCs) from the last offset-index entry to the end of the file,
    /// setting `next_offset` and the indexing state. With `replay`, batches after the
    /// entry go through the indexing policy as appends would. Returns a problem if
    /// the tail is unsound or an index points past the last batch.
    fn walk_tail(
        &mut self,
        replay: bool,
        info: &mut RecoveryInfo,
    ) -> Result<Option<String>, LogError> {
        let start = self.offset_index.last().copied().unwrap_or(ZERO_ENTRY);
        let start_position = u64::from(start.position);
        let log = self.open_file()?;
        let mut cursor = BatchCursor::new(
            &log,
            self.base_offset,
            start_position,
            self.offset_of(start.relative_offset),
            self.size_bytes,
            true,
        );
        if !replay {
            // Sealed: compaction may have left gaps. The active segment stays dense.
            cursor = cursor.allow_gaps();
        }
        self.max_timestamp_ms = self.time_index.last().map(|t| t.timestamp_ms);
        self.last_batch_offset = None;
        self.bytes_since_index_entry = 0;
        loop {
            match cursor.step().at("read", &self.log_path)? {
                Step::Batch { position, header } => {
                    // The batch the last entry points at was indexed already.
                    if replay && position != start_position {
                        self.observe(position, &header);
                    } else {
                        self.note_batch(&header);
                    }
                }
                Step::End => break,
                Step::Bad(reason) => {
                    return Ok(Some(format!("byte {}: {reason}", cursor.position())));
                }
            }
        }
        info.scanned_bytes += self.size_bytes - start_position;
        self.next_offset = cursor.next_offset();
        let last_time = self
            .time_index
            .last()
            .map(|t| self.offset_of(t.relative_offset));
        if let (Some(time_offset), Some(last_batch)) = (last_time, self.last_batch_offset)
            && time_offset > last_batch
        {
            return Ok(Some("time index points past the last batch".to_string()));
        }
        Ok(None)
    }

    /// Rescan the whole active segment, truncate it at the first unsound batch and
    /// rebuild both indexes.
    fn recover(&mut self, info: &mut RecoveryInfo) -> Result<(), LogError> {
        self.clear_indexes()?;
        let log = self.open_file()?;
        let end = self.size_bytes;
        let mut cursor = BatchCursor::new(&log, self.base_offset, 0, self.base_offset, end, true);
        loop {
            match cursor.step().at("read", &self.log_path)? {
                Step::Batch { position, header } => self.observe(position, &header),
                Step::End => break,
                Step::Bad(reason) => {
                    let position = cursor.position();
                    let dropped_bytes = end - position;
                    warn!(
                        segment = %self.log_path.display(),
                        position,
                        dropped_bytes,
                        %reason,
                        "truncating a torn or corrupt tail of the active segment"
                    );
                    log.set_len(position).at("truncate", &self.log_path)?;
                    log.sync_all().at("fsync", &self.log_path)?;
                    info.truncated_bytes += dropped_bytes;
                    break;
                }
            }
        }
        info.scanned_bytes += end;
        info.rebuilt_indexes += 1;
        self.size_bytes = cursor.position();
        self.next_offset = cursor.next_offset();
        self.first_append_ms = self.time_index.entries().first().map(|t| t.timestamp_ms);
        self.flush()
    }

    /// Rebuild a sealed segment's indexes from its batches, which must all be sound
    /// and end exactly where the next segment begins.
    fn rebuild_sealed(
        &mut self,
        next_base_offset: i64,
        info: &mut RecoveryInfo,
    ) -> Result<(), LogError> {
        self.clear_indexes()?;
        let log = self.open_file()?;
        // The structure is walked without CRCs so that one rotten batch does not hide the
        // sound ones after it; CRCs are checked batch by batch below.
        let mut cursor = BatchCursor::new(
            &log,
            self.base_offset,
            0,
            self.base_offset,
            self.size_bytes,
            false,
        )
        .allow_gaps();
        loop {
            match cursor.step().at("read", &self.log_path)? {
                Step::Batch { position, header } => {
                    self.check_sealed_crc(position, &header, info)?;
                    self.observe(position, &header);
                }
                Step::End => break,
                Step::Bad(reason) => return Err(self.corrupt(cursor.position(), reason)),
            }
        }
        info.scanned_bytes += self.size_bytes;
        info.rebuilt_indexes += 1;
        self.next_offset = cursor.next_offset();
        if self.next_offset > next_base_offset {
            return Err(self.corrupt(
                self.size_bytes,
                format!(
                    "segment ends before offset {} but the next segment starts at {next_base_offset}",
                    self.next_offset
                ),
            ));
        }
        self.seal()
    }

    /// A batch of a sealed segment whose CRC is wrong stays where it is (cutting it out
    /// would leave a hole in the offsets, and cutting everything after it would lose
    /// sound data); it is reported here and refused by every read (`read_into`).
    fn check_sealed_crc(
        &self,
        position: u64,
        header: &BatchHeader,
        info: &mut RecoveryInfo,
    ) -> Result<(), LogError> {
        let bytes = self.read_batch(position, header)?;
        if let Err(e) = check_crc(header, &bytes) {
            error!(
                segment = %self.log_path.display(),
                position,
                base_offset = header.base_offset,
                reason = %e,
                "corrupt batch in a sealed segment: it will not be served"
            );
            info.corrupt_batches += 1;
        }
        Ok(())
    }

    fn clear_indexes(&mut self) -> Result<(), LogError> {
        self.offset_index
            .clear()
            .at("truncate", self.offset_index.path())?;
        self.time_index
            .clear()
            .at("truncate", self.time_index.path())?;
        self.max_timestamp_ms = None;
        self.last_batch_offset = None;
        self.bytes_since_index_entry = 0;
        Ok(())
    }

    /// The indexing policy, shared by appends and rebuilds so both produce the same
    /// kind of index: an offset entry for the first batch and then after every
    /// `index_interval_bytes`; with it, a time entry if the running max timestamp grew.
    fn observe(&mut self, position: u64, header: &BatchHeader) {
        let max_timestamp_ms = self
            .max_timestamp_ms
            .map_or(header.max_timestamp, |m| m.max(header.max_timestamp));
        self.max_timestamp_ms = Some(max_timestamp_ms);
        if self.offset_index.last().is_none()
            || self.bytes_since_index_entry >= self.index_interval_bytes
        {
            let relative_offset = self.relative(header.base_offset);
            debug_assert!(position <= u64::from(u32::MAX));
            self.offset_index.push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            if self
                .time_index
                .last()
                .is_none_or(|t| max_timestamp_ms > t.timestamp_ms)
            {
                self.time_index.push(TimeEntry {
                    timestamp_ms: max_timestamp_ms,
                    relative_offset,
                });
            }
            self.bytes_since_index_entry = 0;
        }
        self.note_batch(header);
    }

    /// Indexing state for a batch that gets no index entry of its own.
    fn note_batch(&mut self, header: &BatchHeader) {
        self.max_timestamp_ms = Some(
            self.max_timestamp_ms
                .map_or(header.max_timestamp, |m| m.max(header.max_timestamp)),
        );
        self.bytes_since_index_entry += header.total_bytes() as u64;
        self.last_batch_offset = Some(header.base_offset);
    }

    /// Write `bytes` (whole batches; `batches` gives each one's position within `bytes`
    /// and its header with the base offset assigned to it) with one positioned, vectored
    /// write: each batch goes out as its new base offset followed by the rest of its
    /// bytes, so the caller's buffer is neither copied nor changed.
    pub fn append(
        &mut self,
        bytes: &[u8],
        batches: &[(u64, BatchHeader)],
        now_ms: i64,
    ) -> Result<(), LogError> {
        self.cut_torn_tail()?;
        let start = self.size_bytes;
        let log = self.open_file()?;
        let base_offsets: Vec<[u8; 8]> = batches
            .iter()
            .map(|(_, header)| header.base_offset.to_be_bytes())
            .collect();
        let mut slices = Vec::with_capacity(batches.len() * 2);
        for ((at, header), base_offset) in batches.iter().zip(&base_offsets) {
            let at = *at as usize;
            slices.push(IoSlice::new(base_offset));
            slices.push(IoSlice::new(&bytes[at + 8..at + header.total_bytes()]));
        }
        if let Err(source) = fault::write_all_vectored_at(&log, &mut slices, start) {
            // Drop whatever part landed so the file stays whole batches; nothing in
            // memory changed, so the segment is exactly as it was before the call.
            self.torn_tail = true;
            if let Err(e) = self.cut_torn_tail() {
                warn!(segment = %self.log_path.display(), error = %e, "cannot cut a failed append back off the segment; will retry before the next write");
            }
            return Err(LogError::File {
                op: "append to",
                path: self.log_path.clone(),
                source,
            });
        }
        for (at, header) in batches {
            debug_assert!(header.base_offset >= self.next_offset);
            self.observe(start + at, header);
            self.next_offset = header.last_offset() + 1;
        }
        self.size_bytes += bytes.len() as u64;
        self.first_append_ms.get_or_insert(now_ms);
        self.dirty = true;
        Ok(())
    }

    /// Cut the file back to `size_bytes` if a failed write may have left bytes past it,
    /// so no torn batch is ever followed by a good one or vouched for by a clean close.
    fn cut_torn_tail(&mut self) -> Result<(), LogError> {
        if self.torn_tail {
            self.open_file()?
                .set_len(self.size_bytes)
                .at("truncate a failed append off", &self.log_path)?;
            self.torn_tail = false;
        }
        Ok(())
    }

    /// Finish the segment: a last time-index entry so its final entry holds the
    /// segment's max timestamp, then write and fsync everything.
    pub fn seal(&mut self) -> Result<(), LogError> {
        if let (Some(max_timestamp_ms), Some(last_batch)) =
            (self.max_timestamp_ms, self.last_batch_offset)
        {
            let relative_offset = self.relative(last_batch);
            if self.time_index.last().is_none_or(|t| {
                max_timestamp_ms > t.timestamp_ms && relative_offset > t.relative_offset
            }) {
                self.time_index.push(TimeEntry {
                    timestamp_ms: max_timestamp_ms,
                    relative_offset,
                });
            }
        }
        self.flush()
    }

    /// Write pending index entries and fsync the log and both indexes.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.cut_torn_tail()?;
        self.offset_index
            .persist()
            .at("write", self.offset_index.path())?;
        self.time_index
            .persist()
            .at("write", self.time_index.path())?;
        if self.dirty {
            let log = self.open_file()?;
            fault::sync_data(&log).at("fsync", &self.log_path)?;
        }
        self.offset_index
            .sync()
            .at("fsync", self.offset_index.path())?;
        self.time_index.sync().at("fsync", self.time_index.path())?;
        self.dirty = false;
        Ok(())
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    pub fn first_append_ms(&self) -> Option<i64> {
        self.first_append_ms
    }

    /// The largest batch max timestamp stored here (None while empty).
    pub fn max_timestamp_ms(&self) -> Option<i64> {
        self.max_timestamp_ms
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// This segment's file handle; the same `Arc` for the segment's whole life, so it
    /// also identifies the segment (the cleaner checks it before a swap).
    pub fn log_file(&self) -> &Arc<SegmentFile> {
        &self.file
    }

    /// The open file, opened now if the cache had closed it.
    pub fn open_file(&self) -> Result<Arc<File>, LogError> {
        self.file.get().at("open segment", &self.log_path)
    }

    /// The segment is sealed: its descriptor may be closed when not in use.
    pub fn unpin_file(&self) {
        self.file.unpin();
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Position of the first batch whose last offset is >= `offset`: the batch that
    /// holds it, or (where compaction left a gap) the next one. None if no batch of
    /// this segment reaches `offset`.
    pub fn locate(&self, offset: i64) -> Result<Option<u64>, LogError> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let start = if offset <= self.base_offset {
            ZERO_ENTRY
        } else {
            self.offset_index
                .floor(self.relative(offset))
                .unwrap_or(ZERO_ENTRY)
        };
        let log = self.open_file()?;
        let mut cursor = self.header_cursor(&log, start);
        loop {
            match cursor.step().at("read", &self.log_path)? {
                Step::Batch { position, header } if header.last_offset() >= offset => {
                    return Ok(Some(position));
                }
                Step::Batch { .. } => {}
                Step::End => {
                    return Err(self.corrupt(
                        self.size_bytes,
                        format!(
                            "offset {offset} is below next offset {} but no batch reaches it",
                            self.next_offset
                        ),
                    ));
                }
                Step::Bad(reason) => return Err(self.corrupt(cursor.position(), reason)),
            }
        }
    }

    /// Append to `out` the whole batches from `position` on, stopping before the first
    /// that would take `out` past `max_bytes`; with `first_whole` the first batch is
    /// taken even so. Costs one positioned read for the window (plus one for the first
    /// header). Returns whether it stopped at the end of the segment.
    ///
    /// With `verify_crc` every batch's CRC-32C is checked before it is served (the log
    /// asks for it on sealed segments, whose bytes have sat on disk; it is implied for
    /// bytes this run has not checked, see `unchecked_bytes`). Bad bytes are never
    /// returned: the sound batches before them are, and a read that would start at them
    /// is a `Corrupt` error, so a consumer stops exactly there and the operator is told.
    pub fn read_into(
        &self,
        position: u64,
        out: &mut Vec<u8>,
        max_bytes: usize,
        first_whole: bool,
        verify_crc: bool,
    ) -> Result<bool, LogError> {
        let verify_crc = verify_crc || position < self.unchecked_bytes;
        let log = self.open_file()?;
        let available = self.size_bytes - position;
        let room = max_bytes.saturating_sub(out.len()) as u64;
        let mut window = room.min(available);
        if first_whole && available > 0 {
            if available < BATCH_HEADER_BYTES as u64 {
                return Err(self.corrupt(position, BatchError::Truncated.to_string()));
            }
            let mut header_bytes = [0u8; BATCH_HEADER_BYTES];
            log.read_exact_at(&mut header_bytes, position)
                .at("read", &self.log_path)?;
            let header = BatchHeader::parse(&header_bytes)
                .map_err(|e| self.corrupt(position, e.to_string()))?;
            let total = header
                .check_length(usize::try_from(available).unwrap_or(usize::MAX))
                .map_err(|e| self.corrupt(position, e.to_string()))?;
            window = window.max(total as u64);
        }
        let start = out.len();
        out.resize(start + window as usize, 0);
        if let Err(e) = log.read_exact_at(&mut out[start..], position) {
            out.truncate(start);
            return Err(LogError::File {
                op: "read",
                path: self.log_path.clone(),
                source: e,
            });
        }
        let kept = self.whole_batches(&out[start..], position, window == available, verify_crc);
        out.truncate(start + kept.as_ref().copied().unwrap_or(0));
        match kept {
            Ok(kept) => Ok(position + kept as u64 == self.size_bytes),
            // Earlier segments already gave sound batches: serve those; the next read
            // starts here and reports the error.
            Err(LogError::Corrupt { .. }) if start > 0 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Length of the prefix of `window` (read from `position`) made of whole batches.
    /// `to_end` says the window reaches the segment end, where a partial batch is
    /// corruption rather than a batch that did not fit. With `verify_crc`, the prefix
    /// ends before the first batch whose CRC is wrong (an error if that is the first).
    fn whole_batches(
        &self,
        window: &[u8],
        position: u64,
        to_end: bool,
        verify_crc: bool,
    ) -> Result<usize, LogError> {
        let mut kept = 0usize;
        let mut next_offset = None;
        while kept < window.len() {
            let rest = &window[kept..];
            let at = position + kept as u64;
            let header = match BatchHeader::parse(rest) {
                Ok(h) => h,
                Err(BatchError::Truncated) if !to_end => break,
                Err(e) => return Err(self.corrupt(at, e.to_string())),
            };
            let total = match header.check_length(rest.len()) {
                Ok(t) => t,
                Err(BatchError::LengthPastEnd { .. }) if !to_end => break,
                Err(e) => return Err(self.corrupt(at, e.to_string())),
            };
            // Increasing, not dense: compaction leaves gaps in sealed segments.
            if next_offset.is_some_and(|n| header.base_offset < n) {
                return Err(self.corrupt(
                    at,
                    format!(
                        "batch base offset {} breaks the offset sequence",
                        header.base_offset
                    ),
                ));
            }
            if verify_crc && let Err(e) = check_crc(&header, &rest[..total]) {
                error!(
                    segment = %self.log_path.display(),
                    position = at,
                    base_offset = header.base_offset,
                    reason = %e,
                    "corrupt batch in a sealed segment: refusing to serve it"
                );
                if kept == 0 {
                    return Err(self.corrupt(at, e.to_string()));
                }
                break;
            }
            next_offset = Some(header.last_offset().saturating_add(1));
            kept += total;
        }
        Ok(kept)
    }

    /// The first batch whose max timestamp is >= `timestamp_ms`, with its position.
    pub fn find_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let start = self
            .time_index
            .last_before(timestamp_ms)
            .and_then(|t| self.offset_index.floor(t.relative_offset))
            .unwrap_or(ZERO_ENTRY);
        let log = self.open_file()?;
        let mut cursor = self.header_cursor(&log, start);
        loop {
            match cursor.step().at("read", &self.log_path)? {
                Step::Batch { position, header } if header.max_timestamp >= timestamp_ms => {
                    return Ok(Some((position, header)));
                }
                Step::Batch { .. } => {}
                Step::End => return Ok(None),
                Step::Bad(reason) => return Err(self.corrupt(cursor.position(), reason)),
            }
        }
    }

    /// The bytes of one batch the cursor already found whole at `position`.
    pub fn read_batch(&self, position: u64, header: &BatchHeader) -> Result<Vec<u8>, LogError> {
        let total = header.total_bytes();
        if position + total as u64 > self.size_bytes {
            return Err(self.corrupt(
                position,
                "batch runs past the end of the segment".to_string(),
            ));
        }
        let mut bytes = vec![0u8; total];
        self.open_file()?
            .read_exact_at(&mut bytes, position)
            .at("read", &self.log_path)?;
        Ok(bytes)
    }

    /// Push the header of every batch, oldest first.
    pub fn headers(&self, out: &mut Vec<BatchHeader>) -> Result<(), LogError> {
        let log = self.open_file()?;
        let mut cursor = self.header_cursor(&log, ZERO_ENTRY);
        loop {
            match cursor.step().at("read", &self.log_path)? {
                Step::Batch { header, .. } => out.push(header),
                Step::End => return Ok(()),
                Step::Bad(reason) => return Err(self.corrupt(cursor.position(), reason)),
            }
        }
    }

    /// A header-only walk from an index entry to the end of the segment.
    fn header_cursor<'a>(&self, log: &'a File, start: OffsetEntry) -> BatchCursor<'a> {
        BatchCursor::new(
            log,
            self.base_offset,
            u64::from(start.position),
            self.offset_of(start.relative_offset),
            self.size_bytes,
            false,
        )
        .allow_gaps()
    }

    fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        debug_assert!((0..=i64::from(u32::MAX)).contains(&relative));
        relative as u32
    }

    fn offset_of(&self, relative_offset: u32) -> i64 {
        self.base_offset + i64::from(relative_offset)
    }

    fn corrupt(&self, position: u64, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.log_path.clone(),
            position,
            reason,
        }
    }
}

/// fsync a directory so that file creations, removals and renames in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync directory", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(42, LOG_SUFFIX), "00000000000000000042.log");
        assert_eq!(parse_log_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(
            parse_log_file_name(&file_name(i64::MAX, LOG_SUFFIX)),
            Some(i64::MAX)
        );
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_log_file_name("0000000000000000042.log"), None);
        assert_eq!(parse_log_file_name("99999999999999999999.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000004x.log"), None);
    }
}
