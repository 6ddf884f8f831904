//! Kafka RecordBatch v2 headers: parsing, validation and the two in-place edits the
//! broker makes before storing a batch.
//!
//! Herald stores batches exactly as the client sent them so that a fetch can return
//! stored bytes without re-encoding. That makes this module the one place that
//! understands the batch layout. Everything here works on the 61-byte header and the
//! CRC; records are never decoded (per-record work on the append path is what the
//! design avoids), so the only record-level check is a byte-count bound for
//! uncompressed batches.
//!
//! `baseOffset` and `partitionLeaderEpoch` sit outside the CRC on purpose (that is
//! Kafka's design): the broker writes the base offset without recomputing it.

use std::fmt;

/// Size of the fixed RecordBatch v2 header, up to the first record.
pub const BATCH_HEADER_BYTES: usize = 61;

/// Bytes before `batchLength`'s coverage starts: `baseOffset` (8) + `batchLength` (4).
/// A batch's total size is `batch_length + BATCH_LENGTH_OVERHEAD_BYTES`.
pub const BATCH_LENGTH_OVERHEAD_BYTES: usize = 12;

/// The smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - BATCH_LENGTH_OVERHEAD_BYTES) as i32;

/// The only record batch format Herald stores.
pub const MAGIC_V2: i8 = 2;

/// An uncompressed record is at least 7 bytes (length, attributes, timestamp delta,
/// offset delta, key length, value length, header count: one varint byte each), so a
/// count larger than `body bytes / 7` is a lie.
pub const RECORD_BYTES_MIN: usize = 7;

// Field positions (big-endian). Only the ones this crate reads or writes are named.
const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers everything from `attributes` to the end of the batch.
const CRC_COVERED_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
/// KIP-534: `baseTimestamp` holds the time after which the cleaner may drop this
/// batch's tombstones (record timestamps stay `baseTimestamp + delta`).
pub const ATTR_DELETE_HORIZON: i16 = 0x40;

/// Highest compression codec Kafka defines (zstd); 5..=7 are reserved.
const COMPRESSION_CODEC_MAX: u8 = 4;

/// Why a batch was refused. Every variant names what was wrong so the broker can log
/// it and map it to the Kafka error code the client expects (`CORRUPT_MESSAGE` /
/// `INVALID_RECORD`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch buffer is empty")]
    Empty,
    #[error("record batch truncated: fewer than {BATCH_HEADER_BYTES} header bytes left")]
    Truncated,
    #[error("record batch magic {0} is not supported (only magic 2 / RecordBatch v2)")]
    BadMagic(i8),
    #[error(
        "record batch CRC-32C mismatch: header says {expected:#010x}, bytes give {actual:#010x}"
    )]
    CorruptCrc { expected: u32, actual: u32 },
    #[error("record batch length {0} is invalid (minimum {BATCH_LENGTH_MIN})")]
    InvalidLength(i32),
    #[error(
        "record batch length {batch_length} runs past the end of the buffer ({available} bytes left)"
    )]
    LengthPastEnd { batch_length: i32, available: usize },
    #[error("record batch claims {0} records, which the batch cannot hold")]
    InvalidRecordCount(i32),
    #[error(
        "record batch lastOffsetDelta {last_offset_delta} does not match recordsCount {records_count}"
    )]
    OffsetDeltaMismatch {
        last_offset_delta: i32,
        records_count: i32,
    },
    #[error("record batch uses unknown compression codec {0}")]
    UnknownCompression(u8),
}

/// The decoded 61-byte RecordBatch v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decode the header at the start of `bytes`. Only the header is read; the caller
    /// checks that the rest of the batch is present (see [`BatchHeader::check_length`]).
    /// Refuses anything but magic 2, because the v2 field layout means nothing for the
    /// older message formats.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        let Some(h) = bytes.first_chunk::<BATCH_HEADER_BYTES>() else {
            return Err(BatchError::Truncated);
        };
        let magic = h[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: i64_at(h, BASE_OFFSET_AT),
            batch_length: i32_at(h, BATCH_LENGTH_AT),
            partition_leader_epoch: i32_at(h, PARTITION_LEADER_EPOCH_AT),
            magic,
            crc: u32::from_be_bytes(array_at(h, CRC_AT)),
            attributes: i16::from_be_bytes(array_at(h, ATTRIBUTES_AT)),
            last_offset_delta: i32_at(h, LAST_OFFSET_DELTA_AT),
            base_timestamp: i64_at(h, BASE_TIMESTAMP_AT),
            max_timestamp: i64_at(h, MAX_TIMESTAMP_AT),
            producer_id: i64_at(h, PRODUCER_ID_AT),
            producer_epoch: i16::from_be_bytes(array_at(h, PRODUCER_EPOCH_AT)),
            base_sequence: i32_at(h, BASE_SEQUENCE_AT),
            records_count: i32_at(h, RECORDS_COUNT_AT),
        })
    }

    /// Size of the whole batch in bytes. Only meaningful once the length was checked
    /// (a negative `batch_length` saturates to 0 + 12 rather than wrapping).
    pub fn total_bytes(&self) -> usize {
        usize::try_from(self.batch_length).unwrap_or(0) + BATCH_LENGTH_OVERHEAD_BYTES
    }

    /// Offset of the last record. Saturates instead of overflowing on absurd values;
    /// callers that assign offsets use checked arithmetic of their own.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    /// The tombstone delete horizon the cleaner set (KIP-534), if any.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & ATTR_DELETE_HORIZON != 0).then_some(self.base_timestamp)
    }

    /// Check `batch_length` against the `available` bytes (counted from the start of
    /// this batch) and return the batch's total size. This is the guard that keeps a
    /// length read from the wire or disk from ever indexing or allocating past the
    /// bytes actually present.
    pub fn check_length(&self, available: usize) -> Result<usize, BatchError> {
        if self.batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::InvalidLength(self.batch_length));
        }
        let total = self.total_bytes();
        if total > available {
            return Err(BatchError::LengthPastEnd {
                batch_length: self.batch_length,
                available,
            });
        }
        Ok(total)
    }

    /// The client-facing record count rules: at least one record, a
    /// `lastOffsetDelta` that matches the count (so offsets stay dense), a known codec,
    /// and for uncompressed batches a count the body bytes can actually hold.
    fn check_records(&self) -> Result<(), BatchError> {
        if self.records_count <= 0 {
            return Err(BatchError::InvalidRecordCount(self.records_count));
        }
        if i64::from(self.last_offset_delta) != i64::from(self.records_count) - 1 {
            return Err(BatchError::OffsetDeltaMismatch {
                last_offset_delta: self.last_offset_delta,
                records_count: self.records_count,
            });
        }
        let codec = self.compression();
        if codec > COMPRESSION_CODEC_MAX {
            return Err(BatchError::UnknownCompression(codec));
        }
        if codec == 0 {
            let body_bytes = self.total_bytes().saturating_sub(BATCH_HEADER_BYTES);
            let count = usize::try_from(self.records_count).unwrap_or(usize::MAX);
            let needed = count.saturating_mul(RECORD_BYTES_MIN);
            if needed > body_bytes {
                return Err(BatchError::InvalidRecordCount(self.records_count));
            }
        }
        Ok(())
    }
}

impl fmt::Display for BatchHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch[offsets {}..={}, {} bytes, {} records]",
            self.base_offset,
            self.last_offset(),
            self.total_bytes(),
            self.records_count
        )
    }
}

/// CRC-32C over the CRC-covered part of one whole batch (`batch` must be exactly the
/// batch, at least a header long).
pub fn batch_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_COVERED_FROM..])
}

/// Check the stored CRC of one whole batch against its bytes.
pub fn check_crc(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    let actual = batch_crc(batch);
    if actual != header.crc {
        return Err(BatchError::CorruptCrc {
            expected: header.crc,
            actual,
        });
    }
    Ok(())
}

/// Validate a byte buffer holding one or more complete batches (a Produce request's
/// `records`): each batch must have magic 2, a `batch_length` that fits inside the
/// buffer and is >= 49, a correct CRC-32C, `records_count` >= 1 with
/// `last_offset_delta == records_count - 1`, a known compression codec, and, for
/// uncompressed batches, a `records_count` bounded by the bytes present. Nothing is
/// allocated by a count read from the wire. Returns the headers in order.
///
/// An empty buffer is an error: there is nothing to append, and Kafka refuses it too.
/// Compressed batches' record counts are not checked against their contents (that
/// would need decompression); the broker must do so if it decompresses.
pub fn validate_batches(buf: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let header = BatchHeader::parse(rest)?;
        let total = header.check_length(rest.len())?;
        let (batch, tail) = rest.split_at(total);
        check_crc(&header, batch)?;
        header.check_records()?;
        headers.push(header);
        rest = tail;
    }
    Ok(headers)
}

/// Encode a whole batch from `header` and its (already compressed, if the codec says
/// so) `records` body. `batch_length` and the CRC are computed; every other field is
/// taken from `header`. Used only by the cleaner, the one place that re-encodes.
pub fn encode_batch(header: &BatchHeader, records: &[u8]) -> Vec<u8> {
    let total = BATCH_HEADER_BYTES + records.len();
    let batch_length = i32::try_from(total - BATCH_LENGTH_OVERHEAD_BYTES).unwrap_or(i32::MAX);
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&header.base_offset.to_be_bytes());
    b.extend_from_slice(&batch_length.to_be_bytes());
    b.extend_from_slice(&header.partition_leader_epoch.to_be_bytes());
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&header.attributes.to_be_bytes());
    b.extend_from_slice(&header.last_offset_delta.to_be_bytes());
    b.extend_from_slice(&header.base_timestamp.to_be_bytes());
    b.extend_from_slice(&header.max_timestamp.to_be_bytes());
    b.extend_from_slice(&header.producer_id.to_be_bytes());
    b.extend_from_slice(&header.producer_epoch.to_be_bytes());
    b.extend_from_slice(&header.base_sequence.to_be_bytes());
    b.extend_from_slice(&header.records_count.to_be_bytes());
    debug_assert_eq!(b.len(), BATCH_HEADER_BYTES);
    b.extend_from_slice(records);
    let crc = batch_crc(&b);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Write `base_offset` into a batch in place. The field is outside the CRC, so the CRC
/// stays valid. Panics if `batch` is shorter than 8 bytes (a caller bug, never data).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Turn a batch into LogAppendTime: set the timestamp-type attribute bit, set
/// `max_timestamp` to `now_ms`, and recompute the CRC (both fields are covered by it).
/// `batch` starts at the batch and holds at least all of it (it may continue with
/// further batches; only this one is touched). Panics if it is shorter than its own
/// header says, which validated input never is.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let header = BatchHeader::parse(batch).expect("set_log_append_time needs a v2 batch header");
    let total = header.total_bytes();
    assert!(
        header.batch_length >= BATCH_LENGTH_MIN && total <= batch.len(),
        "set_log_append_time needs one whole, validated batch"
    );
    let attributes = header.attributes | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = batch_crc(&batch[..total]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

fn array_at<const N: usize>(h: &[u8; BATCH_HEADER_BYTES], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&h[at..at + N]);
    out
}

fn i64_at(h: &[u8; BATCH_HEADER_BYTES], at: usize) -> i64 {
    i64::from_be_bytes(array_at(h, at))
}

fn i32_at(h: &[u8; BATCH_HEADER_BYTES], at: usize) -> i32 {
    i32::from_be_bytes(array_at(h, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{BatchSpec, make_batch};

    fn batch(records: usize) -> Vec<u8> {
        make_batch(&BatchSpec {
            records,
            ..BatchSpec::default()
        })
    }

    fn put_i32(buf: &mut [u8], at: usize, v: i32) {
        buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn fix_crc(buf: &mut [u8]) {
        let crc = batch_crc(buf);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn parse_reads_every_field() {
        let b = make_batch(&BatchSpec {
            records: 3,
            record_bytes: 10,
            base_timestamp: 1_000,
            max_timestamp: 1_002,
            producer_id: 77,
            producer_epoch: 5,
            base_sequence: 9,
            attributes: ATTR_TRANSACTIONAL,
        });
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.total_bytes(), b.len());
        assert_eq!(h.magic, 2);
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_002);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (77, 5, 9)
        );
        assert!(h.is_transactional() && !h.is_control() && !h.is_log_append_time());
        assert_eq!(h.compression(), 0);
        assert_eq!(h.last_offset(), 2);
    }

    #[test]
    fn validate_accepts_back_to_back_batches() {
        let mut buf = batch(1);
        buf.extend(batch(5));
        buf.extend(batch(2));
        let headers = validate_batches(&buf).unwrap();
        let counts: Vec<i32> = headers.iter().map(|h| h.records_count).collect();
        assert_eq!(counts, [1, 5, 2]);
    }

    #[test]
    fn validate_rejects_empty_and_short_buffers() {
        assert_eq!(validate_batches(&[]), Err(BatchError::Empty));
        let b = batch(1);
        assert_eq!(validate_batches(&b[..60]), Err(BatchError::Truncated));
        let mut two = b.clone();
        two.extend_from_slice(&b[..30]);
        assert_eq!(validate_batches(&two), Err(BatchError::Truncated));
    }

    #[test]
    fn validate_rejects_crc_mismatch() {
        let mut b = batch(2);
        let last = b.len() - 1;
        b[last] ^= 0x40;
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::CorruptCrc { .. })
        ));
    }

    #[test]
    fn validate_rejects_bad_magic() {
        let mut b = batch(1);
        b[MAGIC_AT] = 1;
        assert_eq!(validate_batches(&b), Err(BatchError::BadMagic(1)));
    }

    #[test]
    fn validate_rejects_oversized_and_negative_lengths() {
        let mut b = batch(1);
        put_i32(&mut b, BATCH_LENGTH_AT, i32::MAX);
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::LengthPastEnd { .. })
        ));
        put_i32(&mut b, BATCH_LENGTH_AT, -5);
        assert_eq!(validate_batches(&b), Err(BatchError::InvalidLength(-5)));
        put_i32(&mut b, BATCH_LENGTH_AT, BATCH_LENGTH_MIN - 1);
        assert_eq!(
            validate_batches(&b),
            Err(BatchError::InvalidLength(BATCH_LENGTH_MIN - 1))
        );
        // A length one byte short of the real batch leaves a tail that is not a batch.
        let mut b = batch(2);
        let len = i32_at(b.first_chunk().unwrap(), BATCH_LENGTH_AT);
        put_i32(&mut b, BATCH_LENGTH_AT, len - 1);
        assert!(validate_batches(&b).is_err());
    }

    #[test]
    fn validate_rejects_record_count_lies() {
        // More records than 7-byte minimums fit in the body.
        let mut b = batch(2);
        put_i32(&mut b, RECORDS_COUNT_AT, 1_000_000);
        put_i32(&mut b, LAST_OFFSET_DELTA_AT, 999_999);
        fix_crc(&mut b);
        assert_eq!(
            validate_batches(&b),
            Err(BatchError::InvalidRecordCount(1_000_000))
        );
        // Negative and zero counts.
        for count in [-1, 0, i32::MIN] {
            let mut b = batch(2);
            put_i32(&mut b, RECORDS_COUNT_AT, count);
            fix_crc(&mut b);
            assert_eq!(
                validate_batches(&b),
                Err(BatchError::InvalidRecordCount(count))
            );
        }
        // lastOffsetDelta that disagrees with the count.
        let mut b = batch(3);
        put_i32(&mut b, LAST_OFFSET_DELTA_AT, 7);
        fix_crc(&mut b);
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::OffsetDeltaMismatch {
                last_offset_delta: 7,
                records_count: 3
            })
        ));
    }

    #[test]
    fn validate_bounds_counts_only_for_uncompressed() {
        // A compressed batch may hold many records in few bytes.
        let mut b = make_batch(&BatchSpec {
            records: 1,
            record_bytes: 8,
            attributes: 4, // zstd
            ..BatchSpec::default()
        });
        put_i32(&mut b, RECORDS_COUNT_AT, 50);
        put_i32(&mut b, LAST_OFFSET_DELTA_AT, 49);
        fix_crc(&mut b);
        assert_eq!(validate_batches(&b).unwrap()[0].records_count, 50);
        let mut b = make_batch(&BatchSpec {
            attributes: 6,
            ..BatchSpec::default()
        });
        fix_crc(&mut b);
        assert_eq!(validate_batches(&b), Err(BatchError::UnknownCompression(6)));
    }

    #[test]
    fn set_base_offset_keeps_crc_valid() {
        let mut b = batch(4);
        set_base_offset(&mut b, 123_456);
        let h = validate_batches(&b).unwrap()[0];
        assert_eq!(h.base_offset, 123_456);
        assert_eq!(h.last_offset(), 123_459);
    }

    #[test]
    fn set_log_append_time_rewrites_and_reseals() {
        let mut buf = batch(2);
        let second = batch(1);
        buf.extend_from_slice(&second);
        set_log_append_time(&mut buf, 99_999);
        let headers = validate_batches(&buf).unwrap();
        assert!(headers[0].is_log_append_time());
        assert_eq!(headers[0].max_timestamp, 99_999);
        assert!(!headers[1].is_log_append_time());
        assert_eq!(&buf[headers[0].total_bytes()..], &second[..]);
    }
}
