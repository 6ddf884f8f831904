//! Test-only fault injection for the log's writes and fsyncs.
//!
//! Why it exists: the integration tests must show that a failed write (a full disk, an
//! I/O error) leaves no torn bytes, is reported as a storage error, and that writes
//! resume once the fault is gone, and that a failed fsync fences the partition. Real
//! disks cannot be made to fail on cue, so the log's write and fsync calls go through
//! this module.
//!
//! It is compiled in but inert: unless the environment variable
//! `HERALD_FAULT_INJECT_FILE` names a file when the process starts, every call is the
//! plain system call (the only cost is one read of a `OnceLock`). When it is set, each
//! segment write and log fsync reads that file (a missing or empty file means no fault)
//! for one rule:
//!
//! - `write_fail_after_bytes:<N>`: each segment write puts at most `N` bytes of its data
//!   into the file and then fails with `ENOSPC`, like a disk that fills mid-write.
//! - `fsync_fail`: each fsync of a segment fails with `EIO`.
//!
//! Never set it in production; it exists for tests/python/test_disk_faults.py.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Names the file whose content is the current fault rule (tests only).
pub const FAULT_INJECT_ENV: &str = "HERALD_FAULT_INJECT_FILE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    WriteFailAfterBytes(u64),
    FsyncFail,
}

fn control_file() -> Option<&'static PathBuf> {
    static CONTROL: OnceLock<Option<PathBuf>> = OnceLock::new();
    CONTROL
        .get_or_init(|| std::env::var_os(FAULT_INJECT_ENV).map(PathBuf::from))
        .as_ref()
}

/// The rule in force now, if fault injection is on and the control file holds one.
fn current() -> Option<Fault> {
    #[cfg(test)]
    if let Some(rule) = TEST_RULE.with(|r| r.borrow().clone()) {
        return parse(&rule);
    }
    let path = control_file()?;
    let text = std::fs::read_to_string(path).ok()?;
    parse(&text)
}

fn parse(text: &str) -> Option<Fault> {
    let rule = text.trim();
    if rule.is_empty() {
        return None;
    }
    if rule == "fsync_fail" {
        return Some(Fault::FsyncFail);
    }
    match rule
        .strip_prefix("write_fail_after_bytes:")
        .map(str::parse::<u64>)
    {
        Some(Ok(n)) => Some(Fault::WriteFailAfterBytes(n)),
        _ => {
            tracing::warn!(rule, "ignoring an unknown fault-injection rule");
            None
        }
    }
}

/// `write_all_at`, unless a `write_fail_after_bytes` rule is in force.
pub(crate) fn write_all_at(file: &File, bytes: &[u8], position: u64) -> io::Result<()> {
    if let Some(Fault::WriteFailAfterBytes(n)) = current() {
        let landed = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
        if landed < bytes.len() {
            file.write_all_at(&bytes[..landed], position)?;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "No space left on device (injected by {FAULT_INJECT_ENV} after {landed} bytes)"
                ),
            ));
        }
    }
    file.write_all_at(bytes, position)
}

/// Most buffers one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// `write_all_at` of the concatenation of `slices` (advanced as they are written),
/// unless a `write_fail_after_bytes` rule is in force.
pub(crate) fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut position: u64,
) -> io::Result<()> {
    if let Some(Fault::WriteFailAfterBytes(_)) = current() {
        let joined: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        return write_all_at(file, &joined, position);
    }
    while !slices.is_empty() {
        let batch = &slices[..slices.len().min(IOV_MAX)];
        let written = match rustix::io::pwritev(file, batch, position) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        position += written as u64;
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// `sync_data`, unless an `fsync_fail` rule is in force.
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    if current() == Some(Fault::FsyncFail) {
        return Err(io::Error::other(format!(
            "Input/output error (fsync failure injected by {FAULT_INJECT_ENV})"
        )));
    }
    file.sync_data()
}

#[cfg(test)]
thread_local! {
    /// Unit tests set a rule for their own thread instead of the process-wide file.
    static TEST_RULE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Put `rule` (as the control file would hold it) in force for this thread; `None` lifts it.
#[cfg(test)]
pub(crate) fn set_for_test(rule: Option<&str>) {
    TEST_RULE.with(|r| *r.borrow_mut() = rule.map(str::to_string));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("  \n"), None);
        assert_eq!(parse("fsync_fail\n"), Some(Fault::FsyncFail));
        assert_eq!(
            parse("write_fail_after_bytes:10"),
            Some(Fault::WriteFailAfterBytes(10))
        );
        assert_eq!(parse("write_fail_after_bytes:x"), None);
        assert_eq!(parse("flaky"), None);
    }
}
