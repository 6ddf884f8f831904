//! Idempotent-producer state of one partition: for each producer id, its epoch and the
//! sequence ranges of its last few batches. A retried batch whose sequences match one of
//! them is a duplicate and is answered with the offset it got the first time, instead
//! of being appended again; a batch that skips sequences is refused.
//!
//! The state is derived from the log (batch headers carry producer id, epoch and base
//! sequence), so it is rebuilt at start-up by replaying headers and never stored apart
//! from the data it describes.

use std::collections::{HashMap, VecDeque};

use herald_log::BatchHeader;

use crate::error::{BrokerError, Result};

/// Kafka clients keep at most 5 batches in flight per partition, so remembering the last 5
/// is enough to recognise any retry.
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSequences {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSequences>,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data: append it.
    Append,
    /// Already appended at `base_offset`: acknowledge without appending.
    Duplicate { base_offset: i64 },
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

/// Sequences wrap to 0 after i32::MAX, as in the Kafka client.
fn seq_add(seq: i32, delta: i32) -> i32 {
    let room = i32::MAX - seq;
    if delta > room {
        delta - room - 1
    } else {
        seq + delta
    }
}

fn last_seq(header: &BatchHeader) -> i32 {
    seq_add(header.base_sequence, header.last_offset_delta.max(0))
}

impl ProducerStates {
    /// Decide whether `header` is new, a duplicate, or out of order. Batches without a
    /// producer id (non-idempotent producers) are always appended.
    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck> {
        if header.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            // Unknown producer (new, or its state was lost with deleted segments):
            // accept any starting sequence, as Kafka does since KIP-360.
            return Ok(SequenceCheck::Append);
        };
        if header.producer_epoch < entry.epoch {
            return Err(BrokerError::InvalidProducerEpoch {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                current: entry.epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            // A bumped epoch restarts the sequence at 0.
            return if header.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(BrokerError::OutOfOrderSequence {
                    producer_id: header.producer_id,
                    expected: 0,
                    got: header.base_sequence,
                })
            };
        }
        let last = last_seq(header);
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == header.base_sequence && b.last_seq == last)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: dup.base_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map(|b| seq_add(b.last_seq, 1))
            .unwrap_or(header.base_sequence);
        if header.base_sequence != expected {
            return Err(BrokerError::OutOfOrderSequence {
                producer_id: header.producer_id,
                expected,
                got: header.base_sequence,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// Remember a batch that was appended at `base_offset`.
    pub fn record(&mut self, header: &BatchHeader, base_offset: i64) {
        if header.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.is_control() {
            // A transaction marker has no sequence: the producer's next batch continues
            // from its last data batch. A marker at a newer epoch (an abort that fenced
            // the producer) makes that epoch current.
            if header.producer_epoch > entry.epoch {
                entry.epoch = header.producer_epoch;
                entry.batches.clear();
            }
            return;
        }
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == PRODUCER_BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchSequences {
            first_seq: header.base_sequence,
            last_seq: last_seq(header),
            base_offset,
        });
    }

    /// Every producer with state here: id, epoch and last sequence (-1 if none since
    /// its epoch began).
    pub fn describe(&self) -> Vec<(i64, i16, i32)> {
        let mut out: Vec<(i64, i16, i32)> = self
            .producers
            .iter()
            .map(|(id, e)| (*id, e.epoch, e.batches.back().map_or(-1, |b| b.last_seq)))
            .collect();
        out.sort_unstable();
        out
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut states = ProducerStates::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(states.check(&first).unwrap(), SequenceCheck::Append);
        states.record(&first, 100);
        let second = header(7, 0, 3, 2);
        assert_eq!(states.check(&second).unwrap(), SequenceCheck::Append);
        states.record(&second, 103);
        assert_eq!(
            states.check(&first).unwrap(),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            states.check(&second).unwrap(),
            SequenceCheck::Duplicate { base_offset: 103 }
        );
    }

    #[test]
    fn a_gap_is_out_of_order() {
        let mut states = ProducerStates::default();
        let first = header(7, 0, 0, 3);
        states.record(&first, 0);
        let err = states.check(&header(7, 0, 5, 1)).unwrap_err();
        assert!(matches!(
            err,
            BrokerError::OutOfOrderSequence {
                expected: 3,
                got: 5,
                ..
            }
        ));
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut states = ProducerStates::default();
        states.record(&header(7, 2, 0, 1), 0);
        assert!(matches!(
            states.check(&header(7, 1, 1, 1)),
            Err(BrokerError::InvalidProducerEpoch { .. })
        ));
        assert_eq!(
            states.check(&header(7, 3, 0, 1)).unwrap(),
            SequenceCheck::Append
        );
        assert!(states.check(&header(7, 3, 4, 1)).is_err());
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut states = ProducerStates::default();
        let near_end = header(1, 0, i32::MAX - 1, 2);
        states.record(&near_end, 0);
        assert_eq!(
            states.check(&header(1, 0, 0, 1)).unwrap(),
            SequenceCheck::Append
        );
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(5, 3), 8);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for i in 0..7 {
            states.record(&header(1, 0, i, 1), i as i64);
        }
        assert_eq!(
            states.check(&header(1, 0, 6, 1)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 6 }
        );
        // Sequence 0 fell out of the window: no longer recognised as a duplicate.
        assert!(states.check(&header(1, 0, 0, 1)).is_err());
        assert_eq!(states.len(), 1);
    }

    #[test]
    fn non_idempotent_batches_always_append() {
        let states = ProducerStates::default();
        assert_eq!(
            states.check(&header(-1, -1, -1, 5)).unwrap(),
            SequenceCheck::Append
        );
    }
}
