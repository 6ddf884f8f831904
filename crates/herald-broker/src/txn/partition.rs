//! What one partition knows of transactions: which producers have a transaction open in
//! it (from its first transactional batch to its commit or abort marker), the aborted
//! transactions (for `read_committed` fetches, which need the aborted ranges to drop
//! those records), and the control batches that end a transaction.
//!
//! Like the idempotent-producer state, all of it is derived from the log (a batch's
//! header says transactional or control; a control record's key says commit or abort),
//! so it is rebuilt at start-up by replaying the log and never stored apart from it.

use std::collections::{HashMap, VecDeque};

use herald_log::{BATCH_HEADER_BYTES, BatchHeader, encode_batch};

/// Batch attribute bits (Kafka's RecordBatch v2).
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
/// Control record types (the second int16 of the control record's key).
const CONTROL_ABORT: i16 = 0;
const CONTROL_COMMIT: i16 = 1;

/// A transaction that ended with an abort marker: its records from `first_offset` on
/// (those of `producer_id`) up to the marker at `last_offset` are not to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// The transactions of one partition.
#[derive(Debug, Default)]
pub struct PartitionTxns {
    /// Producer id -> offset of its open transaction's first batch here.
    ongoing: HashMap<i64, i64>,
    /// Aborted transactions in marker order (so by `last_offset`).
    aborted: VecDeque<AbortedTxn>,
}

impl PartitionTxns {
    /// Note a batch appended at `base_offset`; `control` is what a control batch's
    /// record says (`Some(true)` commit, `Some(false)` abort). Non-transactional
    /// batches change nothing.
    pub fn note(&mut self, header: &BatchHeader, base_offset: i64, control: Option<bool>) {
        if !header.is_transactional() {
            return;
        }
        let pid = header.producer_id;
        if header.is_control() {
            let Some(commit) = control else { return };
            // A marker for a producer with nothing open here (a marker written again
            // after a crash, or for a partition it never wrote to) ends nothing.
            if let Some(first_offset) = self.ongoing.remove(&pid)
                && !commit
            {
                self.aborted.push_back(AbortedTxn {
                    producer_id: pid,
                    first_offset,
                    last_offset: base_offset,
                });
            }
            return;
        }
        self.ongoing.entry(pid).or_insert(base_offset);
    }

    /// The first offset of the oldest open transaction: the last stable offset, if it
    /// is below the high watermark.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.values().copied().min()
    }

    /// Producers with a transaction open here, with its first offset.
    pub fn ongoing(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ongoing.iter().map(|(p, o)| (*p, *o))
    }

    /// The aborted transactions that overlap offsets `from..to`, oldest first.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .iter()
            .skip(start)
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Whether the transactional batch of `producer_id` at `offset` was aborted.
    pub fn is_aborted(&self, producer_id: i64, offset: i64) -> bool {
        let start = self.aborted.partition_point(|a| a.last_offset < offset);
        self.aborted
            .iter()
            .skip(start)
            .any(|a| a.producer_id == producer_id && a.first_offset <= offset)
    }

    /// Forget aborted transactions wholly below `log_start` (retention removed them).
    pub fn forget_before(&mut self, log_start: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
    }

    pub fn aborted_count(&self) -> usize {
        self.aborted.len()
    }
}

/// A control batch (commit or abort marker) of `producer_id` at `epoch`, as Kafka
/// writes it: uncompressed, one record whose key is (version 0, type) and whose value
/// is (version 0, coordinator epoch).
pub fn marker_batch(producer_id: i64, epoch: i16, commit: bool, now_ms: i64) -> Vec<u8> {
    let kind = if commit {
        CONTROL_COMMIT
    } else {
        CONTROL_ABORT
    };
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&kind.to_be_bytes());
    let value = [0u8; 6];
    // Record body (after its length): attributes, timestamp delta, offset delta, key,
    // value, header count. Every varint here is one byte (zigzag of small numbers).
    let mut body = vec![0u8, 0, 0, (key.len() as u8) << 1];
    body.extend_from_slice(&key);
    body.push((value.len() as u8) << 1);
    body.extend_from_slice(&value);
    body.push(0);
    let mut records = vec![(body.len() as u8) << 1];
    records.extend_from_slice(&body);
    let header = BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: herald_log::MAGIC_V2,
        crc: 0,
        attributes: ATTR_TRANSACTIONAL | ATTR_CONTROL,
        last_offset_delta: 0,
        base_timestamp: now_ms,
        max_timestamp: now_ms,
        producer_id,
        producer_epoch: epoch,
        base_sequence: -1,
        records_count: 1,
    };
    encode_batch(&header, &records)
}

/// What a stored control batch says: `Some(true)` commit, `Some(false)` abort, `None`
/// when it is not a marker Herald can read (compressed, another control type).
pub fn control_kind(batch: &[u8]) -> Option<bool> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.compression() != 0 {
        return None;
    }
    let mut rest = batch.get(BATCH_HEADER_BYTES..)?;
    let _length = read_varint(&mut rest)?;
    let _attributes = take(&mut rest, 1)?;
    let _timestamp_delta = read_varint(&mut rest)?;
    let _offset_delta = read_varint(&mut rest)?;
    let key_len = usize::try_from(read_varint(&mut rest)?).ok()?;
    let key = take(&mut rest, key_len)?;
    let kind = i16::from_be_bytes([*key.get(2)?, *key.get(3)?]);
    match kind {
        CONTROL_COMMIT => Some(true),
        CONTROL_ABORT => Some(false),
        _ => None,
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

/// A zigzag varint (at most 10 bytes).
fn read_varint(rest: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *take(rest, 1)?.first()?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let decoded = (value >> 1) as i64 ^ -((value & 1) as i64);
            return Some(decoded);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pid: i64) -> BatchHeader {
        let mut h = BatchHeader::parse(&marker_batch(pid, 0, true, 0)).unwrap();
        h.attributes = ATTR_TRANSACTIONAL;
        h
    }

    fn marker(pid: i64) -> BatchHeader {
        BatchHeader::parse(&marker_batch(pid, 0, true, 0)).unwrap()
    }

    #[test]
    fn markers_round_trip_and_validate() {
        for commit in [true, false] {
            let batch = marker_batch(7, 3, commit, 1_000);
            let headers = herald_log::validate_batches(&batch).unwrap();
            assert_eq!(headers.len(), 1);
            assert!(headers[0].is_control() && headers[0].is_transactional());
            assert_eq!(headers[0].producer_id, 7);
            assert_eq!(headers[0].producer_epoch, 3);
            assert_eq!(control_kind(&batch), Some(commit));
        }
        assert_eq!(control_kind(&[0u8; 10]), None);
    }

    #[test]
    fn the_kafka_decoder_reads_a_marker() {
        let mut bytes = bytes::Bytes::from(marker_batch(9, 1, false, 5));
        let records = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
        let record = &records.records[0];
        assert!(record.control && record.transactional);
        assert_eq!(record.producer_id, 9);
        assert_eq!(record.key.as_deref(), Some(&[0u8, 0, 0, 0][..]));
    }

    #[test]
    fn open_transactions_bound_the_stable_offset_and_aborts_are_listed() {
        let mut t = PartitionTxns::default();
        t.note(&data(1), 10, None);
        t.note(&data(2), 12, None);
        t.note(&data(1), 14, None);
        assert_eq!(t.first_unstable_offset(), Some(10));
        t.note(&marker(1), 15, Some(false));
        assert_eq!(t.first_unstable_offset(), Some(12));
        t.note(&marker(2), 16, Some(true));
        assert_eq!(t.first_unstable_offset(), None);
        let aborted = t.aborted_between(0, 100);
        assert_eq!(
            aborted,
            vec![AbortedTxn {
                producer_id: 1,
                first_offset: 10,
                last_offset: 15
            }]
        );
        assert!(t.aborted_between(16, 100).is_empty());
        assert!(t.aborted_between(0, 10).is_empty());
        assert!(t.is_aborted(1, 14));
        assert!(!t.is_aborted(2, 12));
        assert!(!t.is_aborted(1, 16));
        // A marker written again (after a crash) ends nothing more.
        t.note(&marker(1), 17, Some(false));
        assert_eq!(t.aborted_count(), 1);
        t.forget_before(16);
        assert_eq!(t.aborted_count(), 0);
    }
}
