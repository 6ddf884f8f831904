//! Builders for valid batches in tests: the 61-byte header, fake uncompressed records
//! and a correct CRC. Records are opaque filler bytes; nothing here decodes them.

use crate::batch::{BATCH_HEADER_BYTES, BATCH_LENGTH_OVERHEAD_BYTES, RECORD_BYTES_MIN, batch_crc};

#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub records: usize,
    /// Bytes per fake record (at least `RECORD_BYTES_MIN`).
    pub record_bytes: usize,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub attributes: i16,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            records: 1,
            record_bytes: 10,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
        }
    }
}

pub fn make_batch(spec: &BatchSpec) -> Vec<u8> {
    assert!(spec.records >= 1 && spec.record_bytes >= RECORD_BYTES_MIN);
    let total = BATCH_HEADER_BYTES + spec.records * spec.record_bytes;
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((total - BATCH_LENGTH_OVERHEAD_BYTES) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
    b.extend_from_slice(&spec.attributes.to_be_bytes());
    b.extend_from_slice(&(spec.records as i32 - 1).to_be_bytes());
    b.extend_from_slice(&spec.base_timestamp.to_be_bytes());
    b.extend_from_slice(&spec.max_timestamp.to_be_bytes());
    b.extend_from_slice(&spec.producer_id.to_be_bytes());
    b.extend_from_slice(&spec.producer_epoch.to_be_bytes());
    b.extend_from_slice(&spec.base_sequence.to_be_bytes());
    b.extend_from_slice(&(spec.records as i32).to_be_bytes());
    assert_eq!(b.len(), BATCH_HEADER_BYTES);
    for r in 0..spec.records {
        for i in 0..spec.record_bytes {
            b.push((r * 31 + i * 7 + spec.max_timestamp as usize) as u8);
        }
    }
    let crc = batch_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A batch of `records` records of 10 bytes with the given max timestamp.
pub fn batch_at(records: usize, max_timestamp: i64) -> Vec<u8> {
    make_batch(&BatchSpec {
        records,
        base_timestamp: max_timestamp,
        max_timestamp,
        ..BatchSpec::default()
    })
}

/// `batches` with dense base offsets from `base_offset` written in, as the log stores
/// them; checks they end at `last_offset`.
pub fn stored_as(batches: &[u8], base_offset: i64, last_offset: i64) -> Vec<u8> {
    let mut stored = batches.to_vec();
    let (mut next, mut position) = (base_offset, 0);
    for header in crate::batch::validate_batches(batches).unwrap() {
        crate::batch::set_base_offset(&mut stored[position..], next);
        next += i64::from(header.last_offset_delta) + 1;
        position += header.total_bytes();
    }
    assert_eq!(next - 1, last_offset);
    stored
}
