//! Record batches for tests, built with the record codec (herald-records) the way a
//! producer would.

use bytes::Bytes;
use herald_records::Compression;
use kafka_protocol::records::{Record, TimestampType};

/// A record from a non-idempotent producer with a string key and value.
pub fn record(key: &str, value: Option<&[u8]>, timestamp: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp,
        key: Some(Bytes::from(key.to_string())),
        value: value.map(Bytes::copy_from_slice),
        headers: Default::default(),
    }
}

/// One batch holding `records`, numbered from offset 0. Sequences follow the offsets
/// from `base_sequence`, which keeps the records in one batch (the encoder starts a
/// new batch whenever offset - sequence changes).
pub fn batch(records: &[Record], base_sequence: i32, compression: Compression) -> Vec<u8> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            offset: i as i64,
            sequence: base_sequence + i as i32,
            ..r.clone()
        })
        .collect();
    herald_records::encode_records(&records, compression)
        .expect("test records encode")
        .to_vec()
}
