//! Descriptors of segment files. The active segment of each partition keeps its file
//! open (it is written all the time); a sealed segment's file is opened when a read
//! needs it and at most `open_sealed_files_max` sealed files stay open at once across
//! the process, the least recently used being closed first. A reader holds an
//! `Arc<File>` for the length of its read, so closing a cached entry never breaks a read
//! in progress: the descriptor goes away when the last reader drops it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Default bound on open sealed-segment files (process-wide).
pub const OPEN_SEALED_FILES_MAX_DEFAULT: usize = 4096;

static OPEN_SEALED_FILES_MAX: AtomicUsize = AtomicUsize::new(OPEN_SEALED_FILES_MAX_DEFAULT);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static LRU: Mutex<Lru> = Mutex::new(Lru {
    tick: 0,
    by_tick: BTreeMap::new(),
    ticks: None,
});

/// Set the process-wide bound on open sealed-segment files (at least 1).
pub fn set_open_sealed_files_max(max: usize) {
    OPEN_SEALED_FILES_MAX.store(max.max(1), Ordering::Relaxed);
}

/// How many sealed-segment files are open in the cache now.
pub fn open_sealed_files() -> usize {
    lock_lru().by_tick.len()
}

struct Lru {
    tick: u64,
    /// Least recently used first.
    by_tick: BTreeMap<u64, (u64, Weak<SegmentFile>)>,
    /// Segment id -> its tick in `by_tick` (a map made lazily: `HashMap::new` is not const).
    ticks: Option<HashMap<u64, u64>>,
}

fn lock_lru() -> std::sync::MutexGuard<'static, Lru> {
    LRU.lock().unwrap_or_else(|p| p.into_inner())
}

/// One segment's `.log` file: always open while the segment is active, opened on
/// demand (and closable by the cache) once it is sealed.
pub(crate) struct SegmentFile {
    id: u64,
    path: PathBuf,
    slot: Mutex<Option<Arc<File>>>,
    /// Active segments are never closed by the cache.
    pinned: AtomicBool,
}

impl SegmentFile {
    /// An open file of an active segment (pinned).
    pub fn active(path: &Path, file: File) -> Arc<SegmentFile> {
        Arc::new(SegmentFile {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            slot: Mutex::new(Some(Arc::new(file))),
            pinned: AtomicBool::new(true),
        })
    }

    /// A sealed segment's file, opened on first use.
    #[cfg(test)]
    pub fn sealed(path: &Path) -> Arc<SegmentFile> {
        Arc::new(SegmentFile {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            slot: Mutex::new(None),
            pinned: AtomicBool::new(false),
        })
    }

    fn lock_slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<File>>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open file, opening it (and perhaps closing the least recently used sealed
    /// file) if needed.
    pub fn get(self: &Arc<Self>) -> io::Result<Arc<File>> {
        let file = {
            let mut slot = self.lock_slot();
            match &*slot {
                Some(f) => Arc::clone(f),
                None => {
                    let f = Arc::new(OpenOptions::new().read(true).write(true).open(&self.path)?);
                    *slot = Some(Arc::clone(&f));
                    f
                }
            }
        };
        if !self.pinned.load(Ordering::Acquire) {
            self.touch();
        }
        Ok(file)
    }

    /// The segment was sealed: from now on the cache may close its file.
    pub fn unpin(self: &Arc<Self>) {
        if self.pinned.swap(false, Ordering::AcqRel) && self.lock_slot().is_some() {
            self.touch();
        }
    }

    /// Mark this file most recently used, closing the least recently used ones beyond
    /// the bound.
    fn touch(self: &Arc<Self>) {
        let evicted = {
            let mut lru = lock_lru();
            lru.tick += 1;
            let tick = lru.tick;
            let previous = lru
                .ticks
                .get_or_insert_with(HashMap::new)
                .insert(self.id, tick);
            if let Some(previous) = previous {
                lru.by_tick.remove(&previous);
            }
            lru.by_tick.insert(tick, (self.id, Arc::downgrade(self)));
            let max = OPEN_SEALED_FILES_MAX.load(Ordering::Relaxed);
            let mut evicted = Vec::new();
            while lru.by_tick.len() > max {
                let Some((_, (id, weak))) = lru.by_tick.pop_first() else {
                    break;
                };
                if let Some(ticks) = lru.ticks.as_mut() {
                    ticks.remove(&id);
                }
                evicted.push(weak);
            }
            evicted
        };
        // Close outside the LRU lock; a reader holding its Arc keeps the descriptor.
        for weak in evicted {
            if let Some(file) = weak.upgrade()
                && !file.pinned.load(Ordering::Acquire)
            {
                file.lock_slot().take();
            }
        }
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        let mut lru = lock_lru();
        if let Some(tick) = lru.ticks.as_mut().and_then(|t| t.remove(&self.id)) {
            lru.by_tick.remove(&tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_are_bounded_and_reopened_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        set_open_sealed_files_max(2);
        let files: Vec<Arc<SegmentFile>> = (0..4)
            .map(|i| {
                let path = dir.path().join(format!("{i}.log"));
                std::fs::write(&path, [i as u8; 8]).unwrap();
                SegmentFile::sealed(&path)
            })
            .collect();
        let held = files[0].get().unwrap();
        for f in &files[1..] {
            f.get().unwrap();
        }
        let open = files.iter().filter(|f| f.lock_slot().is_some()).count();
        assert!(open <= 2, "{open} sealed files open");
        // The evicted first file still reads through the Arc its reader holds...
        let mut byte = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&*held, &mut byte, 0).unwrap();
        assert_eq!(byte[0], 0);
        // ...and opens again on the next read.
        let again = files[0].get().unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&*again, &mut byte, 7).unwrap();
        assert_eq!(byte[0], 0);
        set_open_sealed_files_max(OPEN_SEALED_FILES_MAX_DEFAULT);
    }
}
