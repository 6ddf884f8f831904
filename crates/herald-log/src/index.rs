//! Sparse per-segment indexes: offset -> file position (`.index`) and
//! max timestamp -> offset (`.timeindex`).
//!
//! Why sparse: an entry every `index_interval_bytes` keeps the index small enough to
//! hold in memory (about 2 MiB per GiB of log at the default 4 KiB interval) while a
//! lookup scans at most one interval of batch headers.
//!
//! Why entries live in memory and reach the file lazily: the append path then costs one
//! write syscall (the log data); index entries are written at flush, roll and close.
//! That is safe because an index is never trusted after an unclean shutdown: the
//! active segment's indexes are rebuilt from its batches, and sealed segments' indexes
//! were written and fsynced when they were sealed. Any index that fails its structural
//! checks on open is rebuilt too, so a bad index file costs time, never correctness.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A fixed-size index entry. Two implementations: [`OffsetEntry`] and [`TimeEntry`].
pub(crate) trait IndexEntry: Copy {
    const BYTES: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
    /// Whether `self` may follow `prev` in the file (keys strictly increase).
    fn follows(&self, prev: &Self) -> bool;
}

/// The batch starting at `position` in the segment has base offset
/// `segment base + relative_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// Every batch up to and including the one at `segment base + relative_offset` has a
/// max timestamp <= `timestamp_ms`. Entries are only written when that running
/// maximum grows, so timestamps strictly increase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

impl IndexEntry for OffsetEntry {
    const BYTES: usize = 8;

    fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32_from(&bytes[..4]),
            position: u32_from(&bytes[4..8]),
        }
    }

    fn follows(&self, prev: &Self) -> bool {
        self.relative_offset > prev.relative_offset && self.position > prev.position
    }
}

impl IndexEntry for TimeEntry {
    const BYTES: usize = 12;

    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[..8]);
        TimeEntry {
            timestamp_ms: i64::from_be_bytes(ts),
            relative_offset: u32_from(&bytes[8..12]),
        }
    }

    fn follows(&self, prev: &Self) -> bool {
        self.timestamp_ms > prev.timestamp_ms && self.relative_offset > prev.relative_offset
    }
}

fn u32_from(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    u32::from_be_bytes(b)
}

/// An index file and its entries, all held in memory; `persisted` entries are on disk.
/// An index lives in memory; its file is opened only to load, persist or sync it, so a
/// broker with many partitions does not hold two index descriptors per segment.
pub(crate) struct IndexFile<E> {
    path: PathBuf,
    entries: Vec<E>,
    persisted: usize,
    /// Written since the last sync.
    unsynced: bool,
}

fn open_for_write(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// What [`IndexFile::load`] found. A `problem` means the file cannot be trusted and
/// the index was left empty for the caller to rebuild.
pub(crate) struct Loaded<E> {
    pub index: IndexFile<E>,
    pub problem: Option<String>,
}

impl<E: IndexEntry> IndexFile<E> {
    /// Create (or empty) the index file for a new segment.
    pub fn create(path: &Path) -> io::Result<Self> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(IndexFile {
            path: path.to_path_buf(),
            entries: Vec::new(),
            persisted: 0,
            unsynced: false,
        })
    }

    /// Load an existing index, checking only what the file alone can tell: its size
    /// is a whole number of entries, no larger than `entries_max` (so a garbage file
    /// cannot make us allocate more than the segment could need), and keys strictly
    /// increase. The segment checks entries against its own bounds afterwards.
    pub fn load(path: &Path, entries_max: usize) -> io::Result<Loaded<E>> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            entries: Vec::new(),
            persisted: 0,
            unsynced: false,
        };
        if !existed {
            return Ok(Loaded {
                index,
                problem: Some("index file is missing".to_string()),
            });
        }
        let len_bytes = file.metadata()?.len();
        let problem = if len_bytes % E::BYTES as u64 != 0 {
            Some(format!(
                "size {len_bytes} is not a multiple of the {}-byte entry",
                E::BYTES
            ))
        } else if len_bytes / E::BYTES as u64 > entries_max as u64 {
            Some(format!(
                "{} entries is more than the segment could need ({entries_max})",
                len_bytes / E::BYTES as u64
            ))
        } else {
            // Bounded just above by entries_max, which the segment derives from its size.
            let mut bytes = vec![0u8; len_bytes as usize];
            file.read_exact_at(&mut bytes, 0)?;
            let entries: Vec<E> = bytes.chunks_exact(E::BYTES).map(E::decode).collect();
            match entries.windows(2).position(|w| !w[1].follows(&w[0])) {
                Some(i) => Some(format!("entry {} does not increase", i + 1)),
                None => {
                    index.persisted = entries.len();
                    index.entries = entries;
                    None
                }
            }
        };
        Ok(Loaded { index, problem })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    pub fn last(&self) -> Option<&E> {
        self.entries.last()
    }

    pub fn push(&mut self, entry: E) {
        debug_assert!(self.entries.last().is_none_or(|prev| entry.follows(prev)));
        self.entries.push(entry);
    }

    /// Drop all entries in memory and on disk, before a rebuild.
    pub fn clear(&mut self) -> io::Result<()> {
        self.entries.clear();
        self.persisted = 0;
        self.unsynced = true;
        open_for_write(&self.path)?.set_len(0)
    }

    /// Write the entries not yet on disk, in one write.
    pub fn persist(&mut self) -> io::Result<()> {
        if self.persisted == self.entries.len() {
            return Ok(());
        }
        let pending = &self.entries[self.persisted..];
        let mut bytes = vec![0u8; pending.len() * E::BYTES];
        for (entry, out) in pending.iter().zip(bytes.chunks_exact_mut(E::BYTES)) {
            entry.encode(out);
        }
        let at = (self.persisted * E::BYTES) as u64;
        open_for_write(&self.path)?.write_all_at(&bytes, at)?;
        self.persisted = self.entries.len();
        self.unsynced = true;
        Ok(())
    }

    /// fsync what `persist` wrote (fsync makes the file durable, whichever descriptor
    /// wrote it).
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        open_for_write(&self.path)?.sync_data()?;
        self.unsynced = false;
        Ok(())
    }
}

impl IndexFile<OffsetEntry> {
    /// The last entry at or before `relative_offset`.
    pub fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }
}

impl IndexFile<TimeEntry> {
    /// The last entry whose timestamp is below `timestamp_ms`: every batch up to it is
    /// known to be too old, so a search for `timestamp_ms` may start there.
    pub fn last_before(&self, timestamp_ms: i64) -> Option<TimeEntry> {
        let after = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        after.checked_sub(1).map(|i| self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut idx = IndexFile::<OffsetEntry>::create(&path).unwrap();
        for i in 0..5u32 {
            idx.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 100,
            });
            if i == 2 {
                idx.persist().unwrap();
            }
        }
        idx.persist().unwrap();
        let loaded = IndexFile::<OffsetEntry>::load(&path, 100).unwrap();
        assert!(loaded.problem.is_none());
        assert_eq!(loaded.index.entries(), idx.entries());
        assert_eq!(loaded.index.floor(25).unwrap().position, 200);
        assert_eq!(loaded.index.floor(0).unwrap().position, 0);
    }

    #[test]
    fn load_reports_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.timeindex");
        let loaded = IndexFile::<TimeEntry>::load(&path, 10).unwrap();
        assert!(loaded.problem.unwrap().contains("missing"));

        std::fs::write(&path, [0u8; 13]).unwrap();
        let loaded = IndexFile::<TimeEntry>::load(&path, 10).unwrap();
        assert!(loaded.problem.unwrap().contains("multiple"));

        std::fs::write(&path, [0u8; 24]).unwrap();
        let loaded = IndexFile::<TimeEntry>::load(&path, 10).unwrap();
        assert!(loaded.problem.unwrap().contains("does not increase"));

        std::fs::write(&path, [0u8; 12 * 11]).unwrap();
        let loaded = IndexFile::<TimeEntry>::load(&path, 10).unwrap();
        assert!(loaded.problem.unwrap().contains("more than"));
        assert!(loaded.index.entries().is_empty());
    }

    #[test]
    fn time_lookup_finds_last_entry_below() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = IndexFile::<TimeEntry>::create(&dir.path().join("t")).unwrap();
        for (ts, rel) in [(10, 0), (20, 4), (30, 9)] {
            idx.push(TimeEntry {
                timestamp_ms: ts,
                relative_offset: rel,
            });
        }
        assert_eq!(idx.last_before(10), None);
        assert_eq!(idx.last_before(11).unwrap().relative_offset, 0);
        assert_eq!(idx.last_before(30).unwrap().relative_offset, 4);
        assert_eq!(idx.last_before(1_000).unwrap().relative_offset, 9);
    }
}
