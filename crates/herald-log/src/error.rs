//! The log's error type. Corrupt data on disk is an error value that names the file,
//! the byte position and what was wrong, never a panic: the broker decides whether a
//! partition can go on, and the operator needs to know where to look.

use std::io;
use std::path::{Path, PathBuf};

use crate::batch::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("cannot {op} {}: {source}", path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("offset {offset} is out of range: the log holds offsets {log_start}..{log_end}")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("corrupt log data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("invalid record batch: {0}")]
    Batch(#[from] BatchError),
    #[error("invalid log config: {0}")]
    InvalidConfig(String),
    #[error(
        "append of {bytes} bytes cannot fit in a segment (segment_bytes_max is {segment_bytes_max})"
    )]
    AppendTooLarge { bytes: u64, segment_bytes_max: u64 },
    #[error(
        "offsets would overflow: cannot assign {batch_offsets} more offsets after {next_offset}"
    )]
    OffsetOverflow {
        next_offset: i64,
        batch_offsets: i64,
    },
}

/// Attach the operation and path to an I/O error, so "No such file or directory" says
/// which file.
pub(crate) trait IoContext<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, LogError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, LogError> {
        self.map_err(|source| LogError::File {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
