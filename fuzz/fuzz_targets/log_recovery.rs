//! Any bytes as the active segment of a partition that was not closed cleanly: opening
//! recovers (truncating what is torn) or reports corruption, never panics, and whatever
//! it keeps reads back as whole, valid batches.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let segment = dir.path().join("00000000000000000000.log");
    if std::fs::write(&segment, data).is_err() {
        return;
    }
    let Ok(log) = herald_log::PartitionLog::open(dir.path(), herald_log::LogConfig::default()) else {
        return;
    };
    let mut offset = log.log_start_offset();
    while offset < log.next_offset() {
        let Ok(bytes) = log.read(offset, 1 << 20) else { break };
        let headers = herald_log::validate_batches(&bytes).expect("recovered log served an invalid batch");
        let Some(last) = headers.last() else { break };
        offset = last.last_offset() + 1;
    }
});
