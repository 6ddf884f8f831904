//! herald-log: the storage layer. A per-partition, segmented, append-only log of Kafka
//! RecordBatch v2 bytes, stored exactly as the client sent them with the
//! broker-assigned base offset written in, so a fetch serves stored bytes without
//! re-encoding.
//!
//! It knows bytes, offsets and segments; it never sees a socket or a topic name.
//!
//! - `batch`: the RecordBatch v2 header, validation, the in-place edits.
//! - `log`: [`PartitionLog`], the only type the broker holds.
//! - `compact`: the log's half of compaction (reading sealed segments without the
//!   lock, writing a cleaned segment, the crash-safe swap, the cleaner checkpoint).
//! - `segment`, `index`, `scan`: one segment's files, its sparse indexes, and the
//!   checked walk over batches on disk that recovery and lookups share.
//! - `file_cache`: segment descriptors; sealed ones are opened on demand and bounded.

mod batch;
mod compact;
mod error;
mod fault;
mod file_cache;
mod index;
mod log;
mod scan;
mod segment;
#[cfg(test)]
mod test_util;

pub use batch::*;
pub use compact::*;
pub use error::LogError;
pub use fault::FAULT_INJECT_ENV;
pub use file_cache::{OPEN_SEALED_FILES_MAX_DEFAULT, open_sealed_files, set_open_sealed_files_max};
pub use log::*;

/// Bytes in all and bytes free to unprivileged writers on the file system holding
/// `path` (what DescribeLogDirs reports as total and usable bytes).
pub fn disk_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path)?;
    Ok((
        s.f_blocks.saturating_mul(s.f_frsize),
        s.f_bavail.saturating_mul(s.f_frsize),
    ))
}
