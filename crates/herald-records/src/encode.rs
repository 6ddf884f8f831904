//! Records -> RecordBatch v2 bytes, through `kafka-protocol`'s encoder.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, Record, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

pub use kafka_protocol::records::Compression;

/// A record to produce: what a producer sets; the batch supplies the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Kept in order; a repeated name keeps its last value (Kafka's record format
    /// allows repeats, the encoder this crate uses does not).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Creation time; `None` stamps the time of encoding.
    pub timestamp_ms: Option<i64>,
}

impl ProduceRecord {
    pub fn new(key: Option<Bytes>, value: Option<Bytes>) -> Self {
        Self {
            key,
            value,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }
}

/// Why records could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A batch holds at least one record.
    #[error("cannot encode records: no records")]
    NoRecords,
    /// More records than a batch's offset deltas can number.
    #[error("cannot encode records: too many records")]
    TooManyRecords,
    /// `kafka-protocol`'s encoder refused them (a batch past i32::MAX bytes, a
    /// compression failure); the error and its causes.
    #[error("cannot encode records: {0:#}")]
    Codec(anyhow::Error),
}

/// Encodes records as one RecordBatch v2 with no producer id (not idempotent).
pub fn encode_record_batch(
    records: &[ProduceRecord],
    compression: Compression,
    now_ms: i64,
) -> Result<Bytes, EncodeError> {
    if records.is_empty() {
        return Err(EncodeError::NoRecords);
    }
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            let offset = i64::try_from(index).map_err(|_| EncodeError::TooManyRecords)?;
            Ok(Record {
                transactional: false,
                control: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                timestamp_type: TimestampType::Creation,
                offset,
                // The encoder starts a new batch whenever offset - sequence changes and
                // writes the first record's sequence as the batch's base sequence, so
                // this keeps one batch whose base sequence is -1 (no sequence).
                sequence: (offset as i32).wrapping_sub(1),
                timestamp: record.timestamp_ms.unwrap_or(now_ms),
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record
                    .headers
                    .iter()
                    .map(|(name, value)| (StrBytes::from_string(name.clone()), value.clone()))
                    .collect(),
                delete_horizon: false,
            })
        })
        .collect::<Result<_, EncodeError>>()?;
    encode_records(&records, compression)
}

/// Encodes `kafka-protocol` records exactly as given, as RecordBatch v2 with
/// `compression`: the encoder starts a new batch wherever a record's producer, epoch,
/// partition leader epoch, flags or `offset - sequence` differ from the batch's first,
/// so the bytes may hold several batches (none for no records). Offsets, sequences and
/// timestamps are the records' own.
pub fn encode_records(records: &[Record], compression: Compression) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(EncodeError::Codec)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn record(key: &str, value: &str) -> ProduceRecord {
        ProduceRecord {
            key: Some(Bytes::from(key.to_owned())),
            value: Some(Bytes::from(value.to_owned())),
            headers: vec![("trace".to_owned(), Some(Bytes::from_static(b"t1")))],
            timestamp_ms: None,
        }
    }

    #[test]
    fn batch_is_one_v2_batch_without_sequence() {
        let records = vec![
            record("a", "OrderPlaced"),
            record("b", "OrderShipped"),
            record("c", "x"),
        ];
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes =
                encode_record_batch(&records, compression, 1_700_000_000_000).expect("encode");
            // Base sequence sits at byte 53 of the batch header.
            let base_sequence = i32::from_be_bytes([bytes[53], bytes[54], bytes[55], bytes[56]]);
            assert_eq!(base_sequence, -1);
            let sets = RecordBatchDecoder::decode_all(&mut bytes).expect("decode");
            assert_eq!(sets.len(), 1, "{compression:?} made more than one batch");
            let decoded = &sets[0].records;
            assert_eq!(decoded.len(), 3);
            assert_eq!(decoded[1].offset, 1);
            assert_eq!(decoded[1].value.as_deref(), Some(&b"OrderShipped"[..]));
            assert_eq!(decoded[2].key.as_deref(), Some(&b"c"[..]));
            assert_eq!(decoded[0].timestamp, 1_700_000_000_000);
            assert_eq!(decoded[0].headers.len(), 1);
        }
    }

    #[test]
    fn empty_batch_is_rejected() {
        assert!(encode_record_batch(&[], Compression::None, 0).is_err());
    }
}
