use std::fs;
use std::path::Path;

use super::*;
use crate::log::LogConfig;
use crate::test_util::batch_at;

/// One-record batches are 71 bytes: two fit in a 200-byte segment.
const BATCH_BYTES: u64 = 71;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 200,
        index_interval_bytes: 0,
        ..LogConfig::default()
    }
}

/// Appends one-record batches with the given timestamps (also used as append times).
fn append_at(log: &mut PartitionLog, timestamps: &[i64]) {
    for &ts in timestamps {
        let bytes = batch_at(1, ts);
        log.append(&bytes, ts).unwrap();
    }
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log") || n.ends_with("index"))
        .collect();
    names.sort();
    names
}

fn advance(log: &mut PartitionLog, offset: i64) -> usize {
    let persisted = PartitionLog::persist_start_offset(log.dir(), offset).unwrap();
    let removed = log.advance_start_offset(persisted).unwrap();
    let count = removed.len();
    removed.delete().unwrap();
    count
}

fn out_of_range(log: &PartitionLog, offset: i64) -> bool {
    matches!(
        log.read(offset, 1_000),
        Err(LogError::OffsetOutOfRange { .. })
    )
}

#[test]
fn time_retention_deletes_closed_segments_older_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    // Segments [0,1] [2,3] [4,5] [6]: newest timestamps 1_001, 1_003, 5_000, 5_001.
    append_at(&mut log, &[1_000, 1_001, 1_002, 1_003, 4_000, 5_000, 5_001]);
    assert_eq!(log.segment_count(), 4);
    let limits = RetentionLimits {
        retention_ms: Some(1_000),
        retention_bytes: None,
    };
    // At 2_002 only the first segment's newest record (1_001) is older than 1_002.
    assert_eq!(log.retention_start_offset(limits, 2_002), Some(2));
    // At 9_000 every closed segment is past the limit; the active one is never deleted.
    assert_eq!(log.retention_start_offset(limits, 9_000), Some(6));
    // Stopping at the first segment that must be kept, even if a later one could go.
    assert_eq!(log.retention_start_offset(limits, 1_500), None);

    assert_eq!(advance(&mut log, 4), 2);
    assert_eq!(log.log_start_offset(), 4);
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.size_bytes(), 3 * BATCH_BYTES);
    assert!(out_of_range(&log, 3));
    assert_eq!(
        log.read(4, usize::MAX).unwrap().len() as u64,
        3 * BATCH_BYTES
    );
    assert!(!dir.path().join(file_name(0, LOG_SUFFIX)).exists());
    assert!(!dir.path().join(file_name(2, TIME_INDEX_SUFFIX)).exists());
    // Already deleted: nothing more to ask for at the same time.
    assert_eq!(log.retention_start_offset(limits, 4_500), None);
}

#[test]
fn size_retention_keeps_at_least_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    append_at(&mut log, &[1, 2, 3, 4, 5, 6, 7]); // 4 segments, 7 * 71 bytes
    let limits = |bytes| RetentionLimits {
        retention_ms: None,
        retention_bytes: Some(bytes),
    };
    assert_eq!(log.retention_start_offset(limits(7 * BATCH_BYTES), 0), None);
    // Deleting the first segment would leave 5 batches, fewer than 6: keep it.
    assert_eq!(log.retention_start_offset(limits(6 * BATCH_BYTES), 0), None);
    assert_eq!(
        log.retention_start_offset(limits(5 * BATCH_BYTES), 0),
        Some(2)
    );
    assert_eq!(log.retention_start_offset(limits(BATCH_BYTES), 0), Some(6));
    assert_eq!(log.retention_start_offset(limits(0), 0), Some(6));
    // Whichever limit removes more wins.
    let both = RetentionLimits {
        retention_ms: Some(1),
        retention_bytes: Some(5 * BATCH_BYTES),
    };
    assert_eq!(log.retention_start_offset(both, 4), Some(2));
    assert_eq!(log.retention_start_offset(both, 6), Some(4));
    advance(&mut log, 6);
    assert_eq!(log.size_bytes(), BATCH_BYTES);
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn the_start_offset_survives_reopen_even_inside_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    append_at(&mut log, &[1, 2, 3, 4, 5]); // [0,1] [2,3] [4]
    // Offset 3 is inside the second segment: only the first segment goes.
    assert_eq!(advance(&mut log, 3), 1);
    assert_eq!(log.log_start_offset(), 3);
    assert!(out_of_range(&log, 2));
    let before = log.read(3, usize::MAX).unwrap();
    drop(log); // unclean

    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_start_offset(), 3);
    assert!(out_of_range(&log, 2));
    assert_eq!(log.read(3, usize::MAX).unwrap(), before);
    log.close().unwrap();
    drop(log);

    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    assert!(log.recovery_info().clean_shutdown);
    assert_eq!(log.log_start_offset(), 3);
    // Moving backwards is a no-op; moving to the end empties the log but keeps the
    // active segment, and new appends continue the offsets.
    assert_eq!(advance(&mut log, 1), 0);
    assert_eq!(log.log_start_offset(), 3);
    advance(&mut log, 5);
    assert_eq!(log.log_start_offset(), 5);
    assert!(log.read(5, 100).unwrap().is_empty());
    append_at(&mut log, &[6]);
    assert_eq!(log.next_offset(), 6);
    drop(log);
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_start_offset(), 5);
    assert_eq!(log.next_offset(), 6);
}

#[test]
fn an_offset_past_the_end_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    append_at(&mut log, &[1, 2, 3]);
    let persisted = PartitionLog::persist_start_offset(dir.path(), 4).unwrap();
    assert!(matches!(
        log.advance_start_offset(persisted),
        Err(LogError::OffsetOutOfRange {
            offset: 4,
            log_start: 0,
            log_end: 3
        })
    ));
    assert_eq!(log.log_start_offset(), 0);
    let other = tempfile::tempdir().unwrap();
    let persisted = PartitionLog::persist_start_offset(other.path(), 1).unwrap();
    assert!(log.advance_start_offset(persisted).is_err());
    assert_eq!(log.log_start_offset(), 0);
}

#[test]
fn a_crash_between_checkpoint_and_deletion_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    append_at(&mut log, &[1, 2, 3, 4, 5, 6, 7]); // [0,1] [2,3] [4,5] [6]
    PartitionLog::persist_start_offset(dir.path(), 5).unwrap();
    drop(log); // crashed before advance_start_offset
    // And an index file left without its .log by an interrupted deletion before that.
    fs::write(dir.path().join(file_name(0, OFFSET_INDEX_SUFFIX)), []).unwrap();

    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_start_offset(), 5);
    assert_eq!(log.segment_count(), 2);
    assert_eq!(
        log_files(dir.path()),
        [
            file_name(4, OFFSET_INDEX_SUFFIX),
            file_name(4, LOG_SUFFIX),
            file_name(4, TIME_INDEX_SUFFIX),
            file_name(6, OFFSET_INDEX_SUFFIX),
            file_name(6, LOG_SUFFIX),
            file_name(6, TIME_INDEX_SUFFIX),
        ]
    );
    assert_eq!(log.size_bytes(), 3 * BATCH_BYTES);
}

#[test]
fn a_corrupt_checkpoint_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    append_at(&mut log, &[1]);
    drop(log);
    for bad in ["", "1\n", "2\n5\n", "1\nfive\n", "1\n-3\n"] {
        fs::write(dir.path().join(START_OFFSET_CHECKPOINT_FILE), bad).unwrap();
        match PartitionLog::open(dir.path(), config()) {
            Err(LogError::Corrupt { path, .. }) => {
                assert!(path.ends_with(START_OFFSET_CHECKPOINT_FILE), "{bad:?}")
            }
            Err(e) => panic!("{bad:?}: {e}"),
            Ok(_) => panic!("{bad:?}: opened"),
        }
    }
    fs::write(
        dir.path().join(START_OFFSET_CHECKPOINT_FILE),
        "x".repeat(100),
    )
    .unwrap();
    assert!(PartitionLog::open(dir.path(), config()).is_err());
}

#[test]
fn a_checkpoint_past_the_end_starts_the_log_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    append_at(&mut log, &[1, 2, 3]);
    drop(log);
    // As if the data the checkpoint covered was lost with the page cache.
    PartitionLog::persist_start_offset(dir.path(), 10).unwrap();
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_start_offset(), 3);
    assert_eq!(log.next_offset(), 3);
}

#[test]
fn the_active_segment_rolls_when_old_or_expired_so_retention_can_delete_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms_max: 1_000,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    let keep = RetentionLimits::default();
    assert!(!log.roll_for_retention(keep, 100_000).unwrap(), "empty");
    append_at(&mut log, &[10_000]);
    assert!(!log.roll_for_retention(keep, 10_500).unwrap(), "young");
    assert!(
        log.roll_for_retention(keep, 11_001).unwrap(),
        "older than segment.ms"
    );
    assert_eq!(log.segment_count(), 2);
    assert!(
        !log.roll_for_retention(keep, 50_000).unwrap(),
        "new active is empty"
    );

    // Expired by retention.ms although younger than segment.ms.
    append_at(&mut log, &[20_000]);
    let limits = RetentionLimits {
        retention_ms: Some(100),
        retention_bytes: None,
    };
    assert!(!log.roll_for_retention(limits, 20_050).unwrap());
    assert!(log.roll_for_retention(limits, 20_101).unwrap());
    assert_eq!(log.retention_start_offset(limits, 20_101), Some(2));
    advance(&mut log, 2);
    assert_eq!(log.log_start_offset(), 2);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.size_bytes(), 0);
    assert!(log.read(2, 100).unwrap().is_empty());

    // Rolling after close withdraws the clean-shutdown marker first.
    append_at(&mut log, &[30_000]);
    log.close().unwrap();
    assert!(log.roll_for_retention(keep, 40_000).unwrap());
    assert!(!dir.path().join(crate::log::CLEAN_SHUTDOWN_FILE).exists());
}

#[test]
fn records_without_timestamps_use_the_file_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config()).unwrap();
    for _ in 0..3 {
        // Timestamps of -1 (a v2 batch whose producer set none), with a fixed CRC.
        let mut bytes = batch_at(1, 0);
        bytes[27..43].copy_from_slice(&[0xff; 16]);
        let crc = crate::batch::batch_crc(&bytes);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        log.append(&bytes, 0).unwrap();
    }
    let limits = RetentionLimits {
        retention_ms: Some(60_000),
        retention_bytes: None,
    };
    let now = wall_clock_ms();
    assert_eq!(log.retention_start_offset(limits, now), None);
    assert_eq!(log.retention_start_offset(limits, now + 120_000), Some(2));
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
