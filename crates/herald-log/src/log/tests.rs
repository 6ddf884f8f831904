use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::batch::{set_log_append_time, validate_batches};
use crate::test_util::{BatchSpec, batch_at, make_batch};

fn config(segment_bytes_max: u64, index_interval_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes_max,
        index_interval_bytes,
        ..LogConfig::default()
    }
}

/// Appends `batch` and returns the bytes as stored (base offset written in).
fn append(log: &mut PartitionLog, batch: &[u8], now_ms: i64) -> Vec<u8> {
    let info = log.append(batch, now_ms).unwrap();
    crate::test_util::stored_as(batch, info.base_offset, info.last_offset)
}

/// Appends `n` batches of 1..=3 records with timestamps 1000 + i, returns them as stored.
fn fill(log: &mut PartitionLog, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| append(log, &batch_at(i % 3 + 1, 1_000 + i as i64), 0))
        .collect()
}

fn read_all(log: &PartitionLog) -> Vec<u8> {
    log.read(log.log_start_offset(), usize::MAX).unwrap()
}

fn headers_of(bytes: &[u8]) -> Vec<BatchHeader> {
    validate_batches(bytes).unwrap()
}

fn segment_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    files.sort();
    files
}

fn active_segment(dir: &Path) -> PathBuf {
    segment_files(dir, "log").pop().unwrap()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[test]
fn append_and_read_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(300, 100)).unwrap();
    let stored = fill(&mut log, 40);
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(log.next_offset(), 79); // 40 batches of 1, 2, 3, 1, 2, 3... records
    assert_eq!(
        log.size_bytes(),
        stored.iter().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(read_all(&log), stored.concat());
    // Every offset reads back from the batch holding it.
    for batch in &stored {
        let h = headers_of(batch)[0];
        for offset in h.base_offset..=h.last_offset() {
            let got = log.read(offset, 1).unwrap();
            assert_eq!(&got, batch, "offset {offset}");
        }
    }
    for (i, file) in segment_files(dir.path(), "log").iter().enumerate() {
        assert!(
            file_len(file) <= 300,
            "segment {i} is {} bytes",
            file_len(file)
        );
    }
}

#[test]
fn append_assigns_dense_offsets_to_multi_batch_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    append(&mut log, &batch_at(2, 5), 0);
    let buf = [batch_at(3, 7), batch_at(1, 9), batch_at(4, 8)].concat();
    let info = log.append(&buf, 0).unwrap();
    assert_eq!(
        info,
        AppendInfo {
            base_offset: 2,
            last_offset: 9,
            max_timestamp: 9,
            batch_count: 3
        }
    );
    let buf = crate::test_util::stored_as(&buf, info.base_offset, info.last_offset);
    let bases: Vec<i64> = headers_of(&buf).iter().map(|h| h.base_offset).collect();
    assert_eq!(bases, [2, 5, 6]);
    assert_eq!(log.next_offset(), 10);
    let third = headers_of(&buf)[..2]
        .iter()
        .map(BatchHeader::total_bytes)
        .sum::<usize>();
    assert_eq!(log.read(6, usize::MAX).unwrap(), buf[third..]);
    assert_eq!(
        log.read(5, 0).unwrap(),
        buf[headers_of(&buf)[0].total_bytes()..third]
    );
}

#[test]
fn read_from_the_middle_of_a_batch_returns_that_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let a = append(&mut log, &batch_at(5, 1), 0);
    let b = append(&mut log, &batch_at(5, 2), 0);
    assert_eq!(
        log.read(3, usize::MAX).unwrap(),
        [a.clone(), b.clone()].concat()
    );
    assert_eq!(log.read(7, usize::MAX).unwrap(), b);
    assert_eq!(log.read(9, 0).unwrap(), b);
}

#[test]
fn max_bytes_is_respected_but_the_first_batch_is_always_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(400, 0)).unwrap();
    let stored = fill(&mut log, 12);
    assert!(log.segment_count() > 2);
    assert_eq!(log.read(0, 0).unwrap(), stored[0]);
    assert_eq!(log.read(0, stored[0].len() - 1).unwrap(), stored[0]);
    let two = stored[0].len() + stored[1].len();
    assert_eq!(log.read(0, two).unwrap(), stored[..2].concat());
    assert_eq!(
        log.read(0, two + stored[2].len() - 1).unwrap(),
        stored[..2].concat()
    );
    // Across segment boundaries, from every batch, with every budget.
    let mut start = 0usize;
    for first in 0..stored.len() {
        let offset = headers_of(&stored[first])[0].base_offset;
        for max_bytes in [0, 100, 200, 500, 1_000, usize::MAX] {
            let got = log.read(offset, max_bytes).unwrap();
            let mut expected = stored[first].clone();
            for next in &stored[first + 1..] {
                if expected.len() + next.len() > max_bytes {
                    break;
                }
                expected.extend_from_slice(next);
            }
            assert_eq!(got, expected, "offset {offset}, max_bytes {max_bytes}");
        }
        start += stored[first].len();
    }
    assert_eq!(start as u64, log.size_bytes());
}

#[test]
fn reads_outside_the_log_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert!(log.read(0, 100).unwrap().is_empty());
    fill(&mut log, 3);
    assert!(log.read(6, 100).unwrap().is_empty());
    for offset in [-1, 7, i64::MAX] {
        match log.read(offset, 100) {
            Err(LogError::OffsetOutOfRange {
                offset: o,
                log_start: 0,
                log_end: 6,
            }) => assert_eq!(o, offset),
            other => panic!("offset {offset}: {other:?}"),
        }
    }
}

#[test]
fn index_lookups_work_after_a_clean_reopen_without_rescanning() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(2_000, 150);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 100);
    let segments = log.segment_count();
    let size = log.size_bytes();
    log.close().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_FILE).exists());

    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    // An idle reopened log keeps its marker: closing it again costs nothing.
    assert!(dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
    let info = log.recovery_info().clone();
    assert!(info.clean_shutdown);
    assert_eq!((info.truncated_bytes, info.rebuilt_indexes), (0, 0));
    // Only the bytes after each segment's last index entry are re-read.
    let max_batch = stored.iter().map(Vec::len).max().unwrap() as u64;
    assert!(
        info.scanned_bytes <= segments as u64 * (150 + 2 * max_batch),
        "clean open scanned {} of {size} bytes",
        info.scanned_bytes
    );
    assert_eq!(log.segment_count(), segments);
    assert_eq!(log.size_bytes(), size);
    assert_eq!(log.next_offset(), 199); // 33 * (1 + 2 + 3) + 1
    for batch in &stored {
        let h = headers_of(batch)[0];
        assert_eq!(&log.read(h.last_offset(), 0).unwrap(), batch);
    }
    assert_eq!(read_all(&log), stored.concat());
    // The first write removes the marker before any byte lands.
    fill(&mut log, 1);
    assert!(!dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
}

#[test]
fn unclean_reopen_rescans_the_active_segment_and_keeps_everything_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(2_000, 150);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 60);
    drop(log); // a crash: no marker
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    let info = log.recovery_info().clone();
    assert!(!info.clean_shutdown);
    assert_eq!(info.truncated_bytes, 0);
    assert_eq!(info.rebuilt_indexes, 1);
    assert_eq!(read_all(&log), stored.concat());
    assert_eq!(log.next_offset(), 120);
}

/// Crash, damage the tail of the active segment with `damage`, reopen: every batch
/// before the last one survives byte for byte, the last is dropped (if `drops_last`),
/// and offsets continue densely from there.
fn check_torn_tail(damage: impl FnOnce(&Path, &[u8]), drops_last: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1_000, 120);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let mut stored = fill(&mut log, 30);
    assert!(log.segment_count() > 1);
    drop(log);
    let active = active_segment(dir.path());
    damage(&active, stored.last().unwrap());
    let before = file_len(&active);

    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    if drops_last {
        stored.pop();
    }
    let kept: usize = stored.iter().map(Vec::len).sum();
    assert_eq!(read_all(&log), stored.concat());
    assert_eq!(log.size_bytes(), kept as u64);
    let next = stored
        .last()
        .map_or(0, |b| headers_of(b)[0].last_offset() + 1);
    assert_eq!(log.next_offset(), next);
    assert_eq!(
        log.recovery_info().truncated_bytes,
        before - file_len(&active)
    );
    assert!(log.recovery_info().truncated_bytes > 0);

    // Offsets stay dense through further appends and another reopen.
    let more = append(&mut log, &batch_at(2, 5_000), 0);
    assert_eq!(headers_of(&more)[0].base_offset, next);
    stored.push(more);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(read_all(&log), stored.concat());
    assert_eq!(log.next_offset(), next + 2);
}

#[test]
fn recovery_truncates_a_torn_last_batch() {
    for cut in [1u64, 5, 30, 60] {
        check_torn_tail(
            |path, _| {
                let f = OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(file_len(path) - cut).unwrap();
            },
            true,
        );
    }
}

#[test]
fn recovery_drops_trailing_garbage() {
    for garbage in [
        vec![0u8; 1],
        vec![0xAB; 60],
        vec![0u8; 200],
        vec![0xFF; 500],
    ] {
        check_torn_tail(
            |path, _| {
                OpenOptions::new()
                    .append(true)
                    .open(path)
                    .unwrap()
                    .write_all(&garbage)
                    .unwrap();
            },
            false,
        );
    }
}

#[test]
fn recovery_drops_a_last_batch_with_a_flipped_byte() {
    // Anywhere but partitionLeaderEpoch (@12..16), which no check covers.
    for at in [0usize, 7, 9, 11, 16, 17, 22, 40, 60, 70] {
        check_torn_tail(
            |path, last| {
                let mut bytes = fs::read(path).unwrap();
                let i = bytes.len() - last.len() + at.min(last.len() - 1);
                bytes[i] ^= 0x10;
                fs::write(path, bytes).unwrap();
            },
            true,
        );
    }
}

#[test]
fn recovery_drops_a_last_batch_whose_length_points_past_the_end() {
    for length in [i32::MAX, 10_000, -1, 0, 48] {
        check_torn_tail(
            |path, last| {
                let mut bytes = fs::read(path).unwrap();
                let i = bytes.len() - last.len() + 8;
                bytes[i..i + 4].copy_from_slice(&length.to_be_bytes());
                fs::write(path, bytes).unwrap();
            },
            true,
        );
    }
}

#[test]
fn recovery_handles_a_zero_length_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(500, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let mut stored = fill(&mut log, 20);
    drop(log);
    // The crash hit right after a roll: the new segment exists but holds nothing.
    let active = active_segment(dir.path());
    let lost = fs::read(&active).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(0)
        .unwrap();
    let lost_batches = headers_of(&lost).len();
    stored.truncate(stored.len() - lost_batches);

    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(read_all(&log), stored.concat());
    let next = headers_of(stored.last().unwrap())[0].last_offset() + 1;
    assert_eq!(log.next_offset(), next);
    let more = append(&mut log, &batch_at(1, 1), 0);
    assert_eq!(headers_of(&more)[0].base_offset, next);
}

#[test]
fn a_damaged_tail_is_found_even_with_a_clean_shutdown_marker() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1_000, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 25);
    log.close().unwrap();
    let active = active_segment(dir.path());
    OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap()
        .write_all(&[9u8; 77])
        .unwrap();
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.recovery_info().truncated_bytes, 77);
    assert_eq!(read_all(&log), stored.concat());
}

#[test]
fn bad_or_missing_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1_000, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 50);
    log.close().unwrap();
    let indexes = segment_files(dir.path(), "index");
    let times = segment_files(dir.path(), "timeindex");
    assert!(indexes.len() >= 4);
    fs::remove_file(&indexes[0]).unwrap(); // missing
    fs::write(&indexes[1], [1u8; 13]).unwrap(); // not whole entries
    // An entry pointing past the end of the segment.
    let mut past_end = fs::read(&indexes[2]).unwrap();
    past_end.extend_from_slice(&[0, 0, 0, 90, 0, 0, 0x7f, 0]);
    fs::write(&indexes[2], past_end).unwrap();
    // Non-increasing time entries.
    let t = fs::read(&times[3]).unwrap();
    fs::write(&times[3], [t.clone(), t].concat()).unwrap();

    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    assert_eq!(log.recovery_info().rebuilt_indexes, 4);
    assert_eq!(read_all(&log), stored.concat());
    for batch in &stored {
        let h = headers_of(batch)[0];
        assert_eq!(&log.read(h.base_offset, 0).unwrap(), batch);
        let (offset, bytes) = log.batch_for_timestamp(h.max_timestamp).unwrap().unwrap();
        assert_eq!((offset, &bytes), (h.base_offset, batch));
    }
    log.close().unwrap();
    // The rebuilt files are good on the next open.
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.recovery_info().rebuilt_indexes, 0);
}

#[test]
fn corrupt_data_in_a_sealed_segment_is_reported_at_open_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1_000, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 30);
    log.close().unwrap();
    let first = &segment_files(dir.path(), "log")[0];
    let mut bytes = fs::read(first).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    fs::write(first, bytes).unwrap();
    // The segment opens (the rest of the partition stays available), the bad batch is
    // counted, and a read that reaches it stops before it; at it, it is an error.
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.recovery_info().corrupt_batches, 1);
    let got = read_all(&log);
    let bad = headers_of(&got).len();
    assert_eq!(got, stored[..bad].concat());
    let bad_offset = headers_of(&stored[bad])[0].base_offset;
    match log.read(bad_offset, usize::MAX) {
        Err(LogError::Corrupt { path, reason, .. }) => {
            assert_eq!(&path, first);
            assert!(reason.contains("CRC"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("corrupt sealed batch served"),
    }
    let next = headers_of(&stored[bad + 1])[0].base_offset;
    assert_eq!(
        log.read(next, usize::MAX).unwrap(),
        stored[bad + 1..].concat()
    );
}

#[test]
fn time_index_finds_the_first_batch_at_or_after_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(400, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    // Not monotonic: producers' clocks disagree.
    let timestamps = [10, 5, 20, 15, 30, 30, 25, 40, 35, 50, 45, 60];
    let stored: Vec<Vec<u8>> = timestamps
        .iter()
        .map(|&ts| append(&mut log, &batch_at(2, ts), 0))
        .collect();
    assert!(log.segment_count() > 2);
    let check = |log: &PartitionLog| {
        for target in 0..=60 {
            let expected = timestamps.iter().position(|&ts| ts >= target);
            let got = log.batch_for_timestamp(target).unwrap();
            match expected {
                None => assert!(got.is_none(), "ts {target}"),
                Some(i) => {
                    let (offset, bytes) = got.unwrap();
                    assert_eq!(offset, 2 * i as i64, "ts {target}");
                    assert_eq!(bytes, stored[i], "ts {target}");
                }
            }
        }
    };
    check(&log);
    assert_eq!(log.batch_for_timestamp(61).unwrap(), None);
    log.close().unwrap();
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    check(&log);
    assert_eq!(log.batch_for_timestamp(61).unwrap(), None);
    // More appends after a clean reopen, then a crash.
    let more = append(&mut log, &batch_at(1, 70), 0);
    assert_eq!(log.batch_for_timestamp(61).unwrap(), Some((24, more)));
    drop(log);
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    check(&log);
    assert_eq!(log.batch_for_timestamp(71).unwrap(), None);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms_max: 1_000,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    append(&mut log, &batch_at(1, 0), 10_000);
    append(&mut log, &batch_at(1, 0), 10_500);
    append(&mut log, &batch_at(1, 0), 11_000);
    assert_eq!(log.segment_count(), 1);
    append(&mut log, &batch_at(1, 0), 11_001);
    assert_eq!(log.segment_count(), 2);
    append(&mut log, &batch_at(1, 0), 11_900);
    assert_eq!(log.segment_count(), 2);
    append(&mut log, &batch_at(1, 0), 12_002);
    assert_eq!(log.segment_count(), 3);
    // After a reopen the age is taken from the first batch's timestamp.
    log.close().unwrap();
    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    append(&mut log, &batch_at(1, 20_000), 20_000);
    assert_eq!(log.segment_count(), 4);
    append(&mut log, &batch_at(1, 20_000), 20_900);
    assert_eq!(log.segment_count(), 4);
    assert_eq!(log.next_offset(), 8);
}

#[test]
fn rolled_segments_are_named_by_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(200, 100)).unwrap();
    fill(&mut log, 6);
    let names: Vec<String> = segment_files(dir.path(), "log")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[0], "00000000000000000000.log");
    for name in &names[1..] {
        let base: i64 = name.trim_end_matches(".log").parse().unwrap();
        assert_eq!(log.read(base, 0).unwrap()[..8], base.to_be_bytes());
    }
    assert_eq!(segment_files(dir.path(), "index").len(), names.len());
    assert_eq!(segment_files(dir.path(), "timeindex").len(), names.len());
}

#[test]
fn oversized_appends_and_bad_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(100, 100)).unwrap();
    let big = batch_at(10, 0);
    assert!(matches!(
        log.append(&big, 0),
        Err(LogError::AppendTooLarge { .. })
    ));
    assert!(matches!(
        log.append(&[], 0),
        Err(LogError::Batch(BatchError::Empty))
    ));
    let mut torn = batch_at(1, 0);
    torn.truncate(50);
    assert!(matches!(
        log.append(&torn, 0),
        Err(LogError::Batch(BatchError::Truncated))
    ));
    assert_eq!(log.next_offset(), 0);
    assert_eq!(log.size_bytes(), 0);

    for bad in [
        config(u64::from(u32::MAX) + 1, 100),
        config(10, 100),
        LogConfig {
            segment_ms_max: 0,
            ..LogConfig::default()
        },
    ] {
        let err = PartitionLog::open(dir.path(), bad).err().unwrap();
        assert!(matches!(err, LogError::InvalidConfig(_)), "{err}");
    }
    assert!(config(u64::from(u32::MAX), 100).validate().is_ok());
}

#[test]
fn batch_headers_lists_every_batch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(300, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let producer_batch = make_batch(&BatchSpec {
        records: 2,
        producer_id: 42,
        producer_epoch: 3,
        base_sequence: 10,
        ..BatchSpec::default()
    });
    let mut stored = fill(&mut log, 10);
    stored.push(append(&mut log, &producer_batch, 0));
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    let headers = log.batch_headers().unwrap();
    let expected: Vec<BatchHeader> = stored.iter().map(|b| headers_of(b)[0]).collect();
    assert_eq!(headers, expected);
    let last = headers.last().unwrap();
    assert_eq!(
        (last.producer_id, last.producer_epoch, last.base_sequence),
        (42, 3, 10)
    );
}

#[test]
fn sync_point_covers_unsynced_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.sync_point().files.len(), 0);
    fill(&mut log, 3);
    let point = log.sync_point();
    assert_eq!(point.next_offset(), 6);
    assert_eq!(point.files.len(), 1);
    fill(&mut log, 1);
    point.sync().unwrap(); // without the log
    log.flush().unwrap();
    let point = log.sync_point();
    assert_eq!((point.files.len(), point.next_offset()), (0, 7));
    point.sync().unwrap();
}

#[test]
fn log_append_time_batches_are_stored_as_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut batch = batch_at(3, 5);
    set_log_append_time(&mut batch, 123_456);
    let info = log.append(&batch, 123_456).unwrap();
    assert_eq!(info.max_timestamp, 123_456);
    let read = log.read(0, 0).unwrap();
    let h = validate_batches(&read).unwrap()[0];
    assert!(h.is_log_append_time());
    assert_eq!(log.batch_for_timestamp(100_000).unwrap().unwrap().0, 0);
}

#[test]
fn stray_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), "hi").unwrap();
    fs::write(dir.path().join("abc.log"), "hi").unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let stored = fill(&mut log, 2);
    drop(log);
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(read_all(&log), stored.concat());
}

#[test]
fn appending_after_close_withdraws_the_clean_shutdown_marker() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(500, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let mut stored = fill(&mut log, 5);
    log.close().unwrap();
    log.close().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
    stored.extend(fill(&mut log, 5));
    assert!(!dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
    drop(log);
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert!(!log.recovery_info().clean_shutdown);
    assert_eq!(read_all(&log), stored.concat());
}

#[test]
fn reads_are_whole_when_sealed_files_are_closed_and_reopened_by_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(600, 150);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 60);
    assert!(log.segment_count() > 5);
    // A bound far below the segment count: every read reopens files the cache closed.
    crate::set_open_sealed_files_max(1);
    for _ in 0..3 {
        assert_eq!(read_all(&log), stored.concat());
        for batch in &stored {
            let h = headers_of(batch)[0];
            assert_eq!(&log.read(h.base_offset, 0).unwrap(), batch);
        }
    }
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(read_all(&log), stored.concat());
    crate::set_open_sealed_files_max(crate::OPEN_SEALED_FILES_MAX_DEFAULT);
}
