//! The swap protocol and its recovery: every point a crash can interrupt a cleaning
//! leaves, after `open`, exactly the old or the new segment, with no offset lost,
//! duplicated or out of order. Records are opaque here; which ones to keep is the
//! broker's business, so these tests keep batches by offset.

use std::fs;

use super::*;
use crate::batch::validate_batches;
use crate::log::LogConfig;
use crate::test_util::batch_at;

/// One-record batches of 71 bytes: four per 300-byte segment.
fn open(dir: &Path) -> PartitionLog {
    PartitionLog::open(
        dir,
        LogConfig {
            segment_bytes_max: 300,
            index_interval_bytes: 100,
            ..LogConfig::default()
        },
    )
    .unwrap()
}

fn filled(dir: &Path, batches: i64) -> PartitionLog {
    let mut log = open(dir);
    for i in 0..batches {
        let b = batch_at(1, 1_000 + i);
        log.append(&b, 0).unwrap();
    }
    log
}

/// Base offsets of every batch, read through the log from its start.
fn offsets(log: &PartitionLog) -> Vec<i64> {
    let bytes = log.read(log.log_start_offset(), usize::MAX).unwrap();
    validate_batches(&bytes)
        .map(|hs| hs.iter().map(|h| h.base_offset).collect())
        .unwrap_or_default()
}

/// A cleaned copy of `segment` keeping the batches whose offset passes `keep`.
fn rewrite(
    log: &PartitionLog,
    segment: &SealedSegment,
    keep: impl Fn(i64) -> bool,
) -> CleanedSegment {
    let mut w = SegmentRewriter::create(log.dir(), segment, 100).unwrap();
    segment
        .for_each_batch(|h, bytes| {
            if keep(h.base_offset) {
                w.push(bytes)?;
            }
            Ok::<bool, LogError>(true)
        })
        .unwrap();
    w.finish().unwrap()
}

fn cleaned_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(CLEANED_SUFFIX))
        .collect()
}

fn path(dir: &Path, base: i64, suffix: &str) -> PathBuf {
    dir.join(file_name(base, suffix))
}

#[test]
fn swap_keeps_offsets_and_reads_skip_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), 10);
    let sealed = log.sealed_segments();
    assert_eq!(sealed.len(), 2);
    assert_eq!((sealed[0].base_offset(), sealed[0].next_offset()), (0, 4));
    let cleaned = rewrite(&log, &sealed[0], |o| o == 1 || o == 3);
    let (replaced, sync) = log.replace_sealed(cleaned).unwrap();
    sync.sync().unwrap();
    assert_eq!(replaced, Replaced::Swapped);
    assert_eq!(offsets(&log), [1, 3, 4, 5, 6, 7, 8, 9]);
    // An offset in a gap reads from the next batch that holds a later offset.
    let from_two = log.read(2, usize::MAX).unwrap();
    assert_eq!(validate_batches(&from_two).unwrap()[0].base_offset, 3);
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(log.next_offset(), 10);
    assert_eq!(log.size_bytes(), 8 * 71);
    assert!(cleaned_files(dir.path()).is_empty());
    drop(log);
    // Reopening (unclean: the log was never closed) finds the same.
    let mut log = open(dir.path());
    assert_eq!(offsets(&log), [1, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(log.next_offset(), 10);
    // The cleaned segment's indexes (first batch at offset 1) are trusted as written.
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.recovery_info().rebuilt_indexes, 0);
    assert_eq!(offsets(&log), [1, 3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn emptied_segments_are_removed_but_the_first_stays_for_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), 13);
    let sealed = log.sealed_segments();
    assert_eq!(sealed.len(), 3);
    let middle = rewrite(&log, &sealed[1], |_| false);
    assert_eq!(log.replace_sealed(middle).unwrap().0, Replaced::Removed);
    let first = rewrite(&log, &sealed[0], |_| false);
    assert_eq!(log.replace_sealed(first).unwrap().0, Replaced::Swapped);
    assert_eq!(log.segment_count(), 3);
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(offsets(&log), (8..13).collect::<Vec<_>>());
    assert_eq!(
        validate_batches(&log.read(2, 1).unwrap()).unwrap()[0].base_offset,
        8
    );
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(offsets(&log), (8..13).collect::<Vec<_>>());
    assert!(!path(dir.path(), 4, "log").exists());
}

#[test]
fn a_segment_replaced_or_gone_meanwhile_is_not_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), 10);
    let snapshot = log.sealed_segments();
    let first = rewrite(&log, &snapshot[0], |o| o == 0);
    log.replace_sealed(first).unwrap();
    // A second cleaning that read the original before the first swap is stale.
    let stale = rewrite(&log, &snapshot[0], |_| true);
    assert_eq!(log.replace_sealed(stale).unwrap().0, Replaced::Stale);
    assert_eq!(offsets(&log), [0, 4, 5, 6, 7, 8, 9]);
    assert!(cleaned_files(dir.path()).is_empty());
    // The old snapshot still reads the original data (a read in progress).
    let mut seen = Vec::new();
    snapshot[0]
        .for_each_batch(|h, _| {
            seen.push(h.base_offset);
            Ok::<bool, LogError>(true)
        })
        .unwrap();
    assert_eq!(seen, [0, 1, 2, 3]);
}

#[test]
fn crash_before_the_commit_keeps_the_original() {
    for renamed_indexes in 0..=2 {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path(), 10);
        let sealed = log.sealed_segments();
        let cleaned = rewrite(&log, &sealed[0], |o| o == 2);
        // The crash: some index renames done, the log's rename (the commit) not.
        for suffix in ["index", "timeindex"].iter().take(renamed_indexes) {
            fs::rename(
                path(dir.path(), 0, &format!("{suffix}{CLEANED_SUFFIX}")),
                path(dir.path(), 0, suffix),
            )
            .unwrap();
        }
        drop(cleaned);
        drop(log);
        let log = open(dir.path());
        assert_eq!(
            offsets(&log),
            (0..10).collect::<Vec<_>>(),
            "{renamed_indexes}"
        );
        assert!(cleaned_files(dir.path()).is_empty());
        // The old segment's indexes were rebuilt, not taken from the cleaned copy.
        assert_eq!(
            validate_batches(&log.read(3, 1).unwrap()).unwrap()[0].base_offset,
            3
        );
    }
}

#[test]
fn crash_while_writing_the_cleaned_copy_keeps_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 10);
    let sealed = log.sealed_segments();
    let mut w = SegmentRewriter::create(log.dir(), &sealed[0], 100).unwrap();
    sealed[0]
        .for_each_batch(|_, bytes| {
            w.push(bytes)?;
            Ok::<bool, LogError>(false)
        })
        .unwrap();
    drop(w); // never finished
    fs::write(path(dir.path(), 0, "log.cleaned"), b"torn").unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(offsets(&log), (0..10).collect::<Vec<_>>());
    assert!(cleaned_files(dir.path()).is_empty());
}

#[test]
fn crash_after_the_commit_finishes_the_swap() {
    for leftover_indexes in 0..=2 {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path(), 10);
        let sealed = log.sealed_segments();
        let cleaned = rewrite(&log, &sealed[0], |o| o == 1 || o == 2);
        let suffixes = ["index", "timeindex"];
        // Renames in an order a file system may persist them: the log's first.
        fs::rename(
            path(dir.path(), 0, "log.cleaned"),
            path(dir.path(), 0, "log"),
        )
        .unwrap();
        for suffix in &suffixes[leftover_indexes..] {
            fs::rename(
                path(dir.path(), 0, &format!("{suffix}{CLEANED_SUFFIX}")),
                path(dir.path(), 0, suffix),
            )
            .unwrap();
        }
        drop(cleaned);
        drop(log);
        let log = open(dir.path());
        assert_eq!(
            offsets(&log),
            [1, 2, 4, 5, 6, 7, 8, 9],
            "{leftover_indexes}"
        );
        assert!(cleaned_files(dir.path()).is_empty());
        assert_eq!(
            validate_batches(&log.read(0, 1).unwrap()).unwrap()[0].base_offset,
            1
        );
    }
}

#[test]
fn crash_while_removing_an_emptied_segment() {
    // The log was unlinked (the commit), the .cleaned files were not.
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 13);
    let sealed = log.sealed_segments();
    let cleaned = rewrite(&log, &sealed[1], |_| false);
    for suffix in ["index", "timeindex", "log"] {
        fs::remove_file(path(dir.path(), 4, suffix)).unwrap();
    }
    drop(cleaned);
    drop(log);
    let log = open(dir.path());
    let mut expected: Vec<i64> = (0..4).collect();
    expected.extend(8..13);
    assert_eq!(offsets(&log), expected);
    assert!(cleaned_files(dir.path()).is_empty());
    assert!(!path(dir.path(), 4, "index").exists());
}

#[test]
fn rewriter_refuses_moved_or_reordered_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 10);
    let sealed = log.sealed_segments();
    let mut w = SegmentRewriter::create(log.dir(), &sealed[0], 100).unwrap();
    let mut b = batch_at(1, 5);
    crate::batch::set_base_offset(&mut b, 2);
    w.push(&b).unwrap();
    crate::batch::set_base_offset(&mut b, 1);
    assert!(w.push(&b).is_err(), "offsets must increase");
    crate::batch::set_base_offset(&mut b, 4);
    assert!(w.push(&b).is_err(), "offset 4 belongs to the next segment");
    w.discard().unwrap();
    assert!(cleaned_files(dir.path()).is_empty());
}

#[test]
fn checkpoint_round_trips_and_garbage_means_start_over() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        CleanerCheckpoint::load(dir.path()),
        CleanerCheckpoint::default()
    );
    let c = CleanerCheckpoint {
        first_dirty_offset: 42,
        tombstone_horizon_ms: Some(9_000),
    };
    c.store(dir.path()).unwrap();
    assert_eq!(CleanerCheckpoint::load(dir.path()), c);
    fs::write(
        dir.path().join(CLEANER_CHECKPOINT_FILE),
        "first_dirty_offset=x\n",
    )
    .unwrap();
    assert_eq!(
        CleanerCheckpoint::load(dir.path()),
        CleanerCheckpoint::default()
    );
}
