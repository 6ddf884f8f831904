//! Walking the batches of a segment file, batch by batch, without trusting them.
//!
//! Recovery, index rebuilds, offset and timestamp lookups and start-up header scans all
//! need the same walk: read a header, check its length against the bytes really
//! present, optionally check the CRC, check the base offset continues the previous
//! batch, and move on by the batch's length. Keeping that walk in one place means
//! every path that reads the disk applies the same checks, and a bad batch is always
//! reported (as [`Step::Bad`], with the reason) rather than panicking or allocating by
//! a length read from disk.
//!
//! Reads go through [`ChunkReader`], which fetches 64 KiB windows with positioned reads
//! (`read_at`), so a header walk over small batches costs few syscalls and needs only
//! `&File` (readers share the log under a read lock).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader, check_crc};

/// Size of one positioned read while walking a segment.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A window over a file, refilled by positioned reads.
pub(crate) struct ChunkReader<'a> {
    file: &'a File,
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'a> ChunkReader<'a> {
    pub fn new(file: &'a File) -> Self {
        ChunkReader {
            file,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// Bytes `[position, position + len)`. The caller guarantees the range lies below
    /// `end` (a size it knows the file has), which also bounds every allocation here
    /// by bytes actually present.
    pub fn read(&mut self, position: u64, len: usize, end: u64) -> io::Result<&[u8]> {
        let buf_end = self.buf_at + self.buf.len() as u64;
        let wanted_end = position + len as u64;
        debug_assert!(wanted_end <= end);
        if position < self.buf_at || wanted_end > buf_end {
            let window = (len.max(READ_CHUNK_BYTES) as u64).min(end - position);
            self.buf.resize(window as usize, 0);
            self.file.read_exact_at(&mut self.buf, position)?;
            self.buf_at = position;
        }
        let from = (position - self.buf_at) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// One step of a [`BatchCursor`].
#[derive(Debug)]
pub(crate) enum Step {
    /// A sound batch starting at `position`.
    Batch { position: u64, header: BatchHeader },
    /// The walk reached `end` exactly, on a batch boundary.
    End,
    /// The bytes at the cursor's position are not a sound batch; nothing past it can
    /// be trusted.
    Bad(String),
}

/// Walks batches from a known (position, base offset) to `end`.
pub(crate) struct BatchCursor<'a> {
    reader: ChunkReader<'a>,
    segment_base_offset: i64,
    position: u64,
    next_offset: i64,
    end: u64,
    verify_crc: bool,
    /// Accept a base offset above the expected one (never below): compaction leaves
    /// gaps in sealed segments, while the active segment must stay dense.
    gaps_allowed: bool,
}

impl<'a> BatchCursor<'a> {
    /// `position` must be a batch boundary whose batch has base offset `offset`;
    /// the cursor checks that, and that every following batch continues densely.
    pub fn new(
        file: &'a File,
        segment_base_offset: i64,
        position: u64,
        offset: i64,
        end: u64,
        verify_crc: bool,
    ) -> Self {
        BatchCursor {
            reader: ChunkReader::new(file),
            segment_base_offset,
            position,
            next_offset: offset,
            end,
            verify_crc,
            gaps_allowed: false,
        }
    }

    /// Let base offsets skip ahead (sealed segments, which compaction may thin out).
    pub fn allow_gaps(mut self) -> Self {
        self.gaps_allowed = true;
        self
    }

    /// The bytes of the batch the last `Batch` step returned (`position`, `total`
    /// bytes), usually still in the read window.
    pub fn batch_bytes(&mut self, position: u64, total: usize) -> io::Result<&[u8]> {
        self.reader.read(position, total, self.end)
    }

    /// Position of the next batch (after `End`, the end; after `Bad`, the bad batch).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Base offset the next batch must have.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn step(&mut self) -> io::Result<Step> {
        if self.position >= self.end {
            return Ok(Step::End);
        }
        let remaining = self.end - self.position;
        if remaining < BATCH_HEADER_BYTES as u64 {
            return Ok(Step::Bad(format!(
                "{remaining} trailing bytes are too few for a batch header"
            )));
        }
        let header_bytes = self
            .reader
            .read(self.position, BATCH_HEADER_BYTES, self.end)?;
        let header = match BatchHeader::parse(header_bytes) {
            Ok(h) => h,
            Err(e) => return Ok(Step::Bad(e.to_string())),
        };
        let total = match header.check_length(usize::try_from(remaining).unwrap_or(usize::MAX)) {
            Ok(t) => t,
            Err(e) => return Ok(Step::Bad(e.to_string())),
        };
        if self.verify_crc {
            let bytes = self.reader.read(self.position, total, self.end)?;
            if let Err(e) = check_crc(&header, bytes) {
                return Ok(Step::Bad(e.to_string()));
            }
        }
        let offset_ok = if self.gaps_allowed {
            header.base_offset >= self.next_offset
        } else {
            header.base_offset == self.next_offset
        };
        if !offset_ok {
            return Ok(Step::Bad(format!(
                "batch has base offset {} where {} was expected",
                header.base_offset, self.next_offset
            )));
        }
        if header.last_offset_delta < 0 {
            return Ok(Step::Bad(format!(
                "batch has negative lastOffsetDelta {}",
                header.last_offset_delta
            )));
        }
        let relative = header.base_offset - self.segment_base_offset;
        if !(0..=i64::from(u32::MAX)).contains(&relative) {
            return Ok(Step::Bad(format!(
                "batch offset {} is out of reach of segment base offset {}",
                header.base_offset, self.segment_base_offset
            )));
        }
        let Some(next) = header
            .base_offset
            .checked_add(i64::from(header.last_offset_delta) + 1)
        else {
            return Ok(Step::Bad("batch offsets overflow i64".to_string()));
        };
        let position = self.position;
        self.position += total as u64;
        self.next_offset = next;
        Ok(Step::Batch { position, header })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::set_base_offset;
    use crate::test_util::batch_at;
    use std::io::Write;

    fn file_with(batches: &[Vec<u8>], tail: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for (offset, b) in batches.iter().enumerate() {
            let mut b = b.clone();
            set_base_offset(&mut b, offset as i64);
            f.write_all(&b).unwrap();
        }
        f.write_all(tail).unwrap();
        let len = f.as_file().metadata().unwrap().len();
        (f, len)
    }

    #[test]
    fn walks_sound_batches_then_reports_garbage() {
        let (f, len) = file_with(&[batch_at(1, 1), batch_at(1, 2)], &[7u8; 70]);
        let mut c = BatchCursor::new(f.as_file(), 0, 0, 0, len, true);
        assert!(matches!(c.step().unwrap(), Step::Batch { position: 0, .. }));
        assert!(matches!(c.step().unwrap(), Step::Batch { .. }));
        let Step::Bad(reason) = c.step().unwrap() else {
            panic!("garbage accepted")
        };
        assert!(reason.contains("magic"), "{reason}");
        assert_eq!(c.next_offset(), 2);
        assert_eq!(c.position(), len - 70);
    }

    #[test]
    fn reports_offset_gaps() {
        let (f, len) = file_with(&[batch_at(1, 1)], &[]);
        let mut c = BatchCursor::new(f.as_file(), 0, 0, 5, len, false);
        let Step::Bad(reason) = c.step().unwrap() else {
            panic!("gap accepted")
        };
        assert!(reason.contains("expected"), "{reason}");
    }
}
