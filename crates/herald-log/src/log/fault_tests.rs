//! Disk faults: a write that fails partway, a failed fsync, and bytes that rot in a
//! sealed segment. Faults are injected per test thread with `fault::set_for_test`.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::batch::validate_batches;
use crate::fault;
use crate::test_util::batch_at;

fn config(segment_bytes_max: u64, index_interval_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes_max,
        index_interval_bytes,
        ..LogConfig::default()
    }
}

fn fill(log: &mut PartitionLog, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let bytes = batch_at(i % 3 + 1, 1_000 + i as i64);
            let info = log.append(&bytes, 0).unwrap();
            crate::test_util::stored_as(&bytes, info.base_offset, info.last_offset)
        })
        .collect()
}

fn read_all(log: &PartitionLog) -> Vec<u8> {
    log.read(log.log_start_offset(), usize::MAX).unwrap()
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Lifts the injected fault even when an assertion fails, so it cannot leak into
/// another test that reuses this thread.
struct Fault;

impl Fault {
    fn inject(rule: &str) -> Fault {
        fault::set_for_test(Some(rule));
        Fault
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        fault::set_for_test(None);
    }
}

#[test]
fn an_append_that_fails_partway_leaves_the_segment_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(1 << 20, 100)).unwrap();
    let stored = fill(&mut log, 10);
    let segment = log_files(dir.path()).pop().unwrap();
    let (len_before, next_before, size_before) = (
        fs::metadata(&segment).unwrap().len(),
        log.next_offset(),
        log.size_bytes(),
    );

    let fault = Fault::inject("write_fail_after_bytes:25");
    let batch = batch_at(2, 5_000);
    let err = log.append(&batch, 0).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    // No torn bytes in the file, nothing changed in memory.
    assert_eq!(fs::metadata(&segment).unwrap().len(), len_before);
    assert_eq!(log.next_offset(), next_before);
    assert_eq!(log.size_bytes(), size_before);
    assert_eq!(read_all(&log), stored.concat());
    drop(fault);

    // Writes resume at the same offset once the fault is gone.
    let batch = batch_at(2, 5_000);
    let info = log.append(&batch, 0).unwrap();
    let batch = crate::test_util::stored_as(&batch, info.base_offset, info.last_offset);
    assert_eq!(info.base_offset, next_before);
    assert_eq!(read_all(&log), [stored.concat(), batch.clone()].concat());

    // A crash now: recovery finds nothing torn to cut.
    drop(log);
    let log = PartitionLog::open(dir.path(), config(1 << 20, 100)).unwrap();
    assert_eq!(log.recovery_info().truncated_bytes, 0);
    assert_eq!(read_all(&log), [stored.concat(), batch].concat());
}

#[test]
fn a_failed_roll_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(300, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 3);
    let segments_before = log.segment_count();
    {
        let _fault = Fault::inject("write_fail_after_bytes:0");
        for _ in 0..3 {
            let batch = batch_at(3, 7_000);
            assert!(log.append(&batch, 0).is_err());
        }
    }
    let batch = batch_at(3, 7_000);
    let info = log.append(&batch, 0).unwrap();
    let batch = crate::test_util::stored_as(&batch, info.base_offset, info.last_offset);
    assert!(log.segment_count() > segments_before);
    assert_eq!(read_all(&log), [stored.concat(), batch].concat());
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.recovery_info().truncated_bytes, 0);
    assert_eq!(log.recovery_info().rebuilt_indexes, 0);
}

#[test]
fn fsync_failures_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(1 << 20, 100)).unwrap();
    fill(&mut log, 2);
    let _fault = Fault::inject("fsync_fail");
    let err = log.sync_point().sync().unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(log.flush().is_err());
    assert!(
        log.close().is_err(),
        "a close whose fsync failed must not succeed"
    );
    assert!(!dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
}

/// Flip one byte inside the records of batch `batch_index` (counted in the first segment).
fn rot_batch(dir: &Path, batch_index: usize) -> i64 {
    let first = &log_files(dir)[0];
    let mut bytes = fs::read(first).unwrap();
    let headers = validate_batches(&bytes).unwrap();
    let position: usize = headers[..batch_index].iter().map(|h| h.total_bytes()).sum();
    bytes[position + BATCH_HEADER_BYTES + 3] ^= 0x40;
    fs::write(first, bytes).unwrap();
    headers[batch_index].base_offset
}

#[test]
fn a_rotten_batch_in_a_sealed_segment_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    // Index entries every 100 bytes: the rotten batch is far from the segment's tail,
    // where only a read can find it.
    let cfg = config(1_000, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 40);
    assert!(log.segment_count() >= 3);
    log.close().unwrap();
    let bad_offset = rot_batch(dir.path(), 2);
    let log = PartitionLog::open(dir.path(), cfg).unwrap();

    // From the start: the two sound batches before it, and nothing after.
    let got = log.read(0, usize::MAX).unwrap();
    assert_eq!(got, stored[..2].concat());
    // At the rotten batch (or an offset inside it): an error naming file and CRC.
    for offset in [bad_offset, bad_offset + 1] {
        match log.read(offset, usize::MAX) {
            Err(LogError::Corrupt { reason, .. }) => assert!(reason.contains("CRC"), "{reason}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(bytes) => panic!("served {} bytes of a rotten batch", bytes.len()),
        }
    }
    // Past it, everything is served.
    let after = stored[3..].concat();
    let after_offset = validate_batches(&stored[3])
        .map(|h| h[0].base_offset)
        .unwrap();
    assert_eq!(log.read(after_offset, usize::MAX).unwrap(), after);
}

#[test]
fn a_rotten_first_batch_of_the_next_segment_ends_a_read_at_the_segment_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1_000, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    fill(&mut log, 40);
    log.close().unwrap();
    let files = log_files(dir.path());
    assert!(files.len() >= 3);
    let first_segment = fs::read(&files[0]).unwrap();
    let second = &files[1];
    let mut bytes = fs::read(second).unwrap();
    bytes[BATCH_HEADER_BYTES + 1] ^= 0x01;
    fs::write(second, bytes).unwrap();
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.read(0, usize::MAX).unwrap(), first_segment);
}

#[test]
fn a_rotten_batch_in_the_active_segment_after_a_clean_restart_is_never_served() {
    // A clean start trusts the active segment up to its last index entry; its bytes have
    // sat on disk like a sealed segment's, so reads check them.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 100);
    let mut log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let stored = fill(&mut log, 20);
    log.close().unwrap();
    let bad_offset = rot_batch(dir.path(), 2);
    let mut log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert!(log.recovery_info().clean_shutdown);
    assert_eq!(log.read(0, usize::MAX).unwrap(), stored[..2].concat());
    assert!(matches!(
        log.read(bad_offset, usize::MAX),
        Err(LogError::Corrupt { .. })
    ));
    // New appends are readable as usual.
    let batch = batch_at(1, 9_000);
    let info = log.append(&batch, 0).unwrap();
    let batch = crate::test_util::stored_as(&batch, info.base_offset, info.last_offset);
    assert_eq!(log.read(info.base_offset, usize::MAX).unwrap(), batch);
}

/// What the CRC check costs a read of sealed segments (run it yourself:
/// `cargo test --release -p herald-log crc_cost -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn crc_cost_of_reading_sealed_segments() {
    use crate::test_util::{BatchSpec, make_batch};
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(64 << 20, 4096)).unwrap();
    // 16 KiB batches (a typical producer batch), 64 MiB in all, in one sealed segment.
    let batch = make_batch(&BatchSpec {
        records: 100,
        record_bytes: 160,
        ..BatchSpec::default()
    });
    let mut total = 0usize;
    while total < 63 << 20 {
        let b = batch.clone();
        log.append(&b, 0).unwrap();
        total += b.len();
    }
    let b = batch.clone();
    log.append(&b, 0).unwrap(); // rolls: the first segment is sealed
    let sealed = &log.segments[0];
    let (size, window) = (sealed.size_bytes(), 1usize << 20);
    let mut timings = Vec::new();
    for verify in [false, true, false, true] {
        let started = Instant::now();
        for _ in 0..5 {
            let mut position = 0;
            while position < size {
                let mut out = Vec::with_capacity(window + batch.len());
                sealed
                    .read_into(position, &mut out, window, true, verify)
                    .unwrap();
                position += out.len() as u64;
            }
        }
        let mib_s = (5 * size) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64();
        timings.push((verify, mib_s));
    }
    for (verify, mib_s) in timings {
        println!("1 MiB fetches from page cache, CRC check {verify}: {mib_s:.0} MiB/s");
    }
}
