//! Fetched or stored RecordBatch v2 bytes -> records.

use bytes::{Buf, Bytes};
use kafka_protocol::records::RecordBatchDecoder;

/// RecordBatch v2 header layout (offsets from the start of the batch).
const BATCH_PREFIX_BYTES: usize = 12; // base offset + batch length
const BATCH_HEADER_BYTES: usize = 61;
const BATCH_MAGIC_AT: usize = 16;
const BATCH_ATTRIBUTES_AT: usize = 21;
const BATCH_LAST_OFFSET_DELTA_AT: usize = 23;
const BATCH_RECORD_COUNT_AT: usize = 57;
const BATCH_ATTRIBUTE_CONTROL: i16 = 1 << 5;
/// The smallest encoded record (length, attributes, deltas, null key and value,
/// no headers) is 7 bytes; a count beyond what the bytes can hold is a corrupt batch
/// and must not size an allocation.
const RECORD_BYTES_MIN: usize = 7;
/// Bound on records per batch for compressed batches, whose size says nothing.
const BATCH_RECORDS_MAX: usize = 4 * 1024 * 1024;

/// One record as a reader sees it: its offset, time, key, value and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl From<kafka_protocol::records::Record> for ConsumedRecord {
    fn from(r: kafka_protocol::records::Record) -> ConsumedRecord {
        ConsumedRecord {
            offset: r.offset,
            timestamp_ms: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(name, value)| (name.as_str().to_owned(), value))
                .collect(),
        }
    }
}

/// What is wrong with the batches given to [`decode_records`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes the record batches of one fetched partition, keeping records at or after
/// `from_offset`. A fetch may start with a batch that begins before the requested
/// offset (batches are returned whole) and may end with a batch cut short by the
/// size limit (it is dropped; the next fetch gets it whole). Returns the records and
/// the offset after the last complete batch (`from_offset` if there was none).
pub fn decode_records(
    mut data: Bytes,
    from_offset: i64,
) -> Result<(Vec<ConsumedRecord>, i64), DecodeError> {
    let error = DecodeError;
    let mut records = Vec::new();
    let mut next_offset = from_offset;
    while data.len() >= BATCH_PREFIX_BYTES {
        let base_offset = (&data[0..8]).get_i64();
        let batch_length = (&data[8..12]).get_i32();
        let batch_bytes = usize::try_from(batch_length)
            .map_err(|_| {
                error(format!(
                    "batch at offset {base_offset} has negative length {batch_length}"
                ))
            })?
            .saturating_add(BATCH_PREFIX_BYTES);
        if data.len() < batch_bytes {
            break;
        }
        let mut batch = data.split_to(batch_bytes);
        if batch_bytes < BATCH_HEADER_BYTES {
            return Err(error(format!(
                "batch at offset {base_offset} is only {batch_bytes} bytes"
            )));
        }
        let magic = batch[BATCH_MAGIC_AT];
        if magic != 2 {
            return Err(error(format!(
                "batch at offset {base_offset} uses message format v{magic}; only v2 is supported"
            )));
        }
        let attributes = (&batch[BATCH_ATTRIBUTES_AT..]).get_i16();
        let last_offset_delta = (&batch[BATCH_LAST_OFFSET_DELTA_AT..]).get_i32();
        let record_count = (&batch[BATCH_RECORD_COUNT_AT..]).get_i32();
        let last_offset = base_offset.saturating_add(i64::from(last_offset_delta));
        let record_count = usize::try_from(record_count).map_err(|_| {
            error(format!(
                "batch at offset {base_offset} has {record_count} records"
            ))
        })?;
        let compressed = attributes & 0x7 != 0;
        let records_max = if compressed {
            BATCH_RECORDS_MAX
        } else {
            (batch_bytes - BATCH_HEADER_BYTES) / RECORD_BYTES_MIN
        };
        if record_count > records_max {
            return Err(error(format!(
                "batch at offset {base_offset} claims {record_count} records, more than fit"
            )));
        }
        next_offset = next_offset.max(last_offset.saturating_add(1));
        if attributes & BATCH_ATTRIBUTE_CONTROL != 0 || last_offset < from_offset {
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| error(format!("batch at offset {base_offset}: {e:#}")))?;
        records.extend(
            set.records
                .into_iter()
                .filter(|r| r.offset >= from_offset && !r.control)
                .map(ConsumedRecord::from),
        );
    }
    if next_offset == from_offset && !data.is_empty() && records.is_empty() {
        // Nothing complete came back: the next batch is larger than the fetch allows.
        return Err(error(format!(
            "the record batch at offset {from_offset} is larger than the fetch size limit"
        )));
    }
    Ok((records, next_offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{Compression, ProduceRecord, encode_record_batch};
    use bytes::BytesMut;

    fn batch_at(base_offset: i64, values: &[&str]) -> Bytes {
        let records: Vec<ProduceRecord> = values
            .iter()
            .map(|v| ProduceRecord::new(None, Some(Bytes::from(v.to_string()))))
            .collect();
        let mut bytes = BytesMut::from(
            &encode_record_batch(&records, Compression::None, 1).expect("encode")[..],
        );
        // The broker writes the assigned base offset into the batch; the CRC does not
        // cover it.
        bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
        bytes.freeze()
    }

    fn values(records: &[ConsumedRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    #[test]
    fn records_before_the_requested_offset_are_skipped() {
        let mut data = BytesMut::new();
        data.extend_from_slice(&batch_at(10, &["a", "b", "c"]));
        data.extend_from_slice(&batch_at(13, &["d", "e"]));
        let (records, next) = decode_records(data.freeze(), 11).expect("decode");
        assert_eq!(values(&records), ["b", "c", "d", "e"]);
        assert_eq!(records[0].offset, 11);
        assert_eq!(next, 15);
    }

    #[test]
    fn a_truncated_last_batch_is_left_for_the_next_fetch() {
        let whole = batch_at(0, &["a", "b"]);
        let next_batch = batch_at(2, &["c"]);
        let mut data = BytesMut::new();
        data.extend_from_slice(&whole);
        data.extend_from_slice(&next_batch[..next_batch.len() - 3]);
        let (records, next) = decode_records(data.freeze(), 0).expect("decode");
        assert_eq!(values(&records), ["a", "b"]);
        assert_eq!(next, 2);
    }

    #[test]
    fn only_a_truncated_batch_is_an_error() {
        let batch = batch_at(0, &["a"]);
        let result = decode_records(batch.slice(..batch.len() - 1), 0);
        assert!(result.is_err());
    }

    #[test]
    fn corrupt_batches_are_errors_not_panics() {
        let mut batch = BytesMut::from(&batch_at(0, &["a"])[..]);
        batch[BATCH_MAGIC_AT] = 1;
        assert!(decode_records(batch.clone().freeze(), 0).is_err());
        batch[BATCH_MAGIC_AT] = 2;
        let count_at = BATCH_RECORD_COUNT_AT..BATCH_RECORD_COUNT_AT + 4;
        let count: Vec<u8> = batch[count_at.clone()].to_vec();
        batch[count_at.clone()].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_records(batch.clone().freeze(), 0).is_err());
        batch[count_at].copy_from_slice(&count);
        assert!(decode_records(batch.clone().freeze(), 0).is_ok());
        let last = batch.len() - 1;
        batch[last] ^= 0xff; // CRC mismatch
        assert!(decode_records(batch.freeze(), 0).is_err());
        assert_eq!(decode_records(Bytes::new(), 5).expect("empty").1, 5);
    }
}
