//! Just enough of the record format to look inside a stored batch: walk its records to
//! find offsets, timestamps and keys. Read-only: it bounds every length by the bytes
//! present and never trusts a count from the batch. The cleaner (the one place that
//! re-encodes) uses the byte ranges it returns to copy records it keeps.

use std::ops::Range;

use bytes::Bytes;
use herald_log::{BATCH_HEADER_BYTES, BatchHeader};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::error::{BrokerError, Result};

/// One record of a batch, as ranges into [`DecodedBatch::plain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    pub offset: i64,
    pub timestamp: i64,
    /// The stored delta from the batch's base timestamp.
    pub timestamp_delta: i64,
    /// The key's bytes; None for a null key.
    pub key: Option<Range<usize>>,
    /// A null value: a tombstone in a compacted topic.
    pub value_is_null: bool,
    pub attributes: u8,
    /// From the offset delta to the end of the record: what re-encoding copies as is.
    pub tail: Range<usize>,
}

/// The records of one batch, decompressed.
pub struct DecodedBatch {
    pub header: BatchHeader,
    pub plain: Vec<u8>,
    pub records: Vec<RecordView>,
}

impl DecodedBatch {
    pub fn key(&self, record: &RecordView) -> Option<&[u8]> {
        record.key.clone().map(|r| &self.plain[r])
    }
}

/// Decompress `batch` (one whole batch) and walk its records.
pub fn decode_records(batch: &[u8]) -> Result<DecodedBatch> {
    let header = BatchHeader::parse(batch)?;
    let end = header.total_bytes().min(batch.len());
    let body = &batch[BATCH_HEADER_BYTES.min(end)..end];
    let plain = decompress(header.compression(), body)?;
    let mut records = Vec::new();
    let mut cursor = Cursor {
        bytes: &plain,
        position: 0,
    };
    while cursor.position < plain.len() {
        let length = cursor.varint()?;
        let length = usize::try_from(length).map_err(|_| bad("negative record length"))?;
        let record_end = cursor
            .position
            .checked_add(length)
            .filter(|e| *e <= plain.len())
            .ok_or_else(|| bad("record length past the end of the batch"))?;
        let attributes = cursor.byte()?;
        let timestamp_delta = cursor.varlong()?;
        let tail_start = cursor.position;
        let offset_delta = cursor.varint()?;
        let key = cursor.bytes_field(record_end)?;
        let value = cursor.bytes_field(record_end)?;
        if cursor.position > record_end {
            return Err(bad("record fields run past the record length"));
        }
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.saturating_add(timestamp_delta)
        };
        records.push(RecordView {
            offset: header.base_offset.saturating_add(i64::from(offset_delta)),
            timestamp,
            timestamp_delta,
            key,
            value_is_null: value.is_none(),
            attributes,
            tail: tail_start..record_end,
        });
        cursor.position = record_end;
    }
    Ok(DecodedBatch {
        header,
        plain,
        records,
    })
}

/// Offset and timestamp of each record of one batch, in order.
pub fn record_offsets_and_timestamps(batch: &[u8]) -> Result<Vec<(i64, i64)>> {
    Ok(decode_records(batch)?
        .records
        .into_iter()
        .map(|r| (r.offset, r.timestamp))
        .collect())
}

/// Refuse records without a key, as Kafka does for compacted topics (a keyless
/// record could never be superseded, so compaction could never remove it).
/// `records` are whole, already validated batches.
pub fn require_keys(records: &[u8]) -> Result<()> {
    let mut rest = records;
    while !rest.is_empty() {
        let header = BatchHeader::parse(rest)?;
        let total = header.check_length(rest.len())?;
        let (batch, tail) = rest.split_at(total);
        if decode_records(batch)?
            .records
            .iter()
            .any(|r| r.key.is_none())
        {
            return Err(BrokerError::InvalidRecord(
                "Compacted topic cannot accept message without key".into(),
            ));
        }
        rest = tail;
    }
    Ok(())
}

/// The first record in `batch` with timestamp >= `timestamp_ms`.
pub fn first_record_at_or_after(batch: &[u8], timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
    Ok(record_offsets_and_timestamps(batch)?
        .into_iter()
        .find(|(_, ts)| *ts >= timestamp_ms))
}

pub(crate) fn decompress(codec: u8, body: &[u8]) -> Result<Vec<u8>> {
    let mut input = Bytes::copy_from_slice(body);
    let take = |b: &mut Bytes| -> anyhow::Result<Vec<u8>> { Ok(b.to_vec()) };
    let result = match codec {
        0 => return Ok(body.to_vec()),
        1 => Gzip::decompress(&mut input, take),
        2 => Snappy::decompress(&mut input, take),
        3 => Lz4::decompress(&mut input, take),
        4 => Zstd::decompress(&mut input, take),
        other => return Err(bad(&format!("unknown compression codec {other}"))),
    };
    result.map_err(|e| bad(&format!("cannot decompress batch: {e}")))
}

fn bad(reason: &str) -> BrokerError {
    BrokerError::InvalidRecord(reason.to_string())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.position)
            .ok_or_else(|| bad("record truncated"))?;
        self.position += 1;
        Ok(b)
    }

    fn varlong(&mut self) -> Result<i64> {
        let mut raw: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            raw |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // zig-zag
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn varint(&mut self) -> Result<i32> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| bad("varint out of i32 range"))
    }

    /// A varint length then that many bytes (-1: null), inside `end`.
    fn bytes_field(&mut self, end: usize) -> Result<Option<Range<usize>>> {
        let length = self.varint()?;
        if length < 0 {
            return Ok(None);
        }
        let start = self.position;
        let stop = start
            .checked_add(length as usize)
            .filter(|e| *e <= end)
            .ok_or_else(|| bad("record field length past the end of the record"))?;
        self.position = stop;
        Ok(Some(start..stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;

    fn batch(compression: Compression) -> Vec<u8> {
        let records: Vec<_> = (0..5)
            .map(|i| crate::test_util::record(&format!("k{i}"), Some(&[b'x'; 100]), 1_000 + i * 10))
            .collect();
        let mut out = crate::test_util::batch(&records, 0, compression);
        out[..8].copy_from_slice(&40i64.to_be_bytes());
        out
    }

    #[test]
    fn finds_records_by_timestamp_in_every_codec() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(codec);
            let all = record_offsets_and_timestamps(&b).unwrap();
            assert_eq!(all.len(), 5, "{codec:?}");
            assert_eq!(all[0], (40, 1000));
            assert_eq!(
                first_record_at_or_after(&b, 1015).unwrap(),
                Some((42, 1020))
            );
            assert_eq!(first_record_at_or_after(&b, 5000).unwrap(), None);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut b = batch(Compression::None);
        let len = b.len();
        b.truncate(len - 30);
        // The header still claims the full length; the walk must stop cleanly.
        assert!(record_offsets_and_timestamps(&b).is_err());
        let mut g = batch(Compression::Gzip);
        for byte in g.iter_mut().skip(BATCH_HEADER_BYTES) {
            *byte = 0xff;
        }
        assert!(record_offsets_and_timestamps(&g).is_err());
    }
}
