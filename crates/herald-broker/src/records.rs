//! Just enough of the record format to look inside a stored batch: walk its records to
//! find offsets and timestamps. The broker never re-encodes records; this is read-only,
//! bounds every length by the bytes present, and never trusts a count from the batch.

use bytes::Bytes;
use herald_log::{BATCH_HEADER_BYTES, BatchHeader};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::error::{BrokerError, Result};

/// Offset and timestamp of each record of one batch, in order.
pub fn record_offsets_and_timestamps(batch: &[u8]) -> Result<Vec<(i64, i64)>> {
    let header = BatchHeader::parse(batch)?;
    let end = header.total_bytes().min(batch.len());
    let body = &batch[BATCH_HEADER_BYTES.min(end)..end];
    let plain = decompress(header.compression(), body)?;
    let mut out = Vec::new();
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
        cursor.byte()?; // attributes
        let timestamp_delta = cursor.varlong()?;
        let offset_delta = cursor.varint()?;
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.saturating_add(timestamp_delta)
        };
        out.push((
            header.base_offset.saturating_add(i64::from(offset_delta)),
            timestamp,
        ));
        cursor.position = record_end;
    }
    Ok(out)
}

/// The first record in `batch` with timestamp >= `timestamp_ms`.
pub fn first_record_at_or_after(batch: &[u8], timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
    Ok(record_offsets_and_timestamps(batch)?
        .into_iter()
        .find(|(_, ts)| *ts >= timestamp_ms))
}

fn decompress(codec: u8, body: &[u8]) -> Result<Vec<u8>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32, // keeps all five records in one batch
                timestamp: 1_000 + i * 10,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'x'; 100])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        let mut out = buf.to_vec();
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
