//! The delivery state of one (subscription, partition): pure transitions, no IO.
//!
//! Every offset below `floor` is finished (acked or dead-lettered). Offsets in
//! `[floor, scan_next)` are tracked in `entries`, or finished (or not records the
//! subscription takes) when absent; offsets from `scan_next` on have not been read from
//! the log yet. The floor only moves over finished records, so a record is never
//! skipped; reading the log tracks no more than the subscription's `max_unacked`
//! (only a replay of finished records, `revive`, can add past it).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};

use serde::{Deserialize, Serialize};

/// Where one tracked record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    /// Can be handed out from `not_before_ms` on (a delay or a retry backoff).
    Available { not_before_ms: i64 },
    /// Handed out; comes back if not acked by `deadline_ms`.
    Leased { deadline_ms: i64 },
    /// Failed `max_deliveries` times: waiting for its copy in the dead-letter topic.
    DeadLettering,
    /// Acked or dead-lettered; removed once the floor passes it.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub state: EntryState,
    /// Times handed out (each one is a new attempt; receipts name it).
    pub deliveries: u32,
    /// Failed deliveries (nacks and expired leases); releases do not count.
    pub failures: u32,
    /// A hash of the record's key, for ordering per key; None for a null key.
    pub key_hash: Option<u64>,
    pub first_delivery_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// What a transition refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such record is tracked (already finished, or never handed out).
    NotTracked,
    /// The receipt names an earlier delivery: the record was handed out again since.
    Stale { current_attempt: u32 },
    /// The record is not leased now (its lease expired).
    NotLeased,
    /// The receipt names a delivery that never happened (a later attempt than the
    /// record's): it was not issued by this broker.
    NeverIssued,
}

/// The settings transitions need, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub lease_ms: i64,
    pub max_deliveries: u32,
    pub max_unacked: usize,
    pub ordered_by_key: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionQueue {
    pub floor: i64,
    pub scan_next: i64,
    pub entries: BTreeMap<i64, Entry>,
    /// Counters for stats, kept with the state so they survive restarts.
    pub dead_lettered: u64,
    pub redeliveries: u64,
    pub lost_to_retention: u64,
    pub bad_deliver_at: u64,
    /// Leases that expired (each counted as a failed delivery).
    #[serde(default)]
    pub expired_leases: u64,
    /// (deadline, offset) of leases, earliest first; stale pairs are skipped when popped.
    #[serde(skip)]
    deadlines: BinaryHeap<std::cmp::Reverse<(i64, i64)>>,
    /// Records whose dead-letter copy is being written right now. One writer per record:
    /// the nack (or expiry) that dead-lettered it and the timer's pass over records left
    /// half dead-lettered must not both append a copy.
    #[serde(skip)]
    dead_letter_claims: HashSet<i64>,
    /// Offsets whose entry may have changed since the last [`PartitionQueue::take_changes`]
    /// (entries removed below the floor are not listed: the floor says they are gone).
    #[serde(skip)]
    changed: BTreeSet<i64>,
    /// The floor the last taken changes carried; None: not known to be stored, so the
    /// next changes clear everything below their floor.
    #[serde(skip)]
    stored_floor: Option<i64>,
    /// Value bytes of tracked records, where known (see [`PartitionQueue::track_sized`]).
    /// In memory only: after a restart they are read again when first asked for.
    #[serde(skip)]
    value_bytes: BTreeMap<i64, u32>,
    /// Value bytes of the records in `[scan_next, tail.counted_to)`: counted from the
    /// log, not tracked yet (see [`PartitionQueue::tail`]).
    #[serde(skip)]
    tail: Tail,
}

/// Value bytes counted ahead of the scan, so asking for a partition's ready bytes
/// costs the records appended since it was last asked, not the whole backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tail {
    pub counted_to: i64,
    pub bytes: u64,
}

/// What is stored about a partition besides its entries: the floor, the scan position
/// and the counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub floor: i64,
    pub scan_next: i64,
    pub dead_lettered: u64,
    pub redeliveries: u64,
    pub lost_to_retention: u64,
    pub bad_deliver_at: u64,
    pub expired_leases: u64,
}

/// A partition's changes since the last taken, for the meta store: write `header`,
/// write `entries` by offset, and, with `remove_below`, delete every stored entry below
/// that offset (the floor moved over them). A commit costs what changed, not every
/// tracked entry.
#[derive(Debug, Clone)]
pub struct Changes {
    pub header: Header,
    pub entries: Vec<(i64, Entry)>,
    pub remove_below: Option<i64>,
}

/// Counts of the partition's tracked records at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub available: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl PartitionQueue {
    pub fn new(start: i64) -> Self {
        PartitionQueue {
            floor: start,
            scan_next: start,
            ..Default::default()
        }
    }

    /// Rebuild a partition from its stored header and entries.
    pub fn from_stored(header: Header, entries: BTreeMap<i64, Entry>) -> Self {
        let mut q = PartitionQueue {
            floor: header.floor,
            scan_next: header.scan_next,
            entries,
            dead_lettered: header.dead_lettered,
            redeliveries: header.redeliveries,
            lost_to_retention: header.lost_to_retention,
            bad_deliver_at: header.bad_deliver_at,
            expired_leases: header.expired_leases,
            ..Default::default()
        };
        q.stored_floor = Some(q.floor);
        q.restore();
        q
    }

    /// Take what changed since the last call (see [`Changes`]). Give it back with
    /// [`PartitionQueue::untake_changes`] if it could not be stored.
    pub fn take_changes(&mut self) -> Changes {
        let changed = std::mem::take(&mut self.changed);
        let entries = changed
            .into_iter()
            .filter_map(|o| self.entries.get(&o).map(|e| (o, e.clone())))
            .collect();
        let remove_below = (self.stored_floor != Some(self.floor)).then_some(self.floor);
        self.stored_floor = Some(self.floor);
        Changes {
            header: Header {
                floor: self.floor,
                scan_next: self.scan_next,
                dead_lettered: self.dead_lettered,
                redeliveries: self.redeliveries,
                lost_to_retention: self.lost_to_retention,
                bad_deliver_at: self.bad_deliver_at,
                expired_leases: self.expired_leases,
            },
            entries,
            remove_below,
        }
    }

    /// Changes taken but not stored (their commit failed): the next take carries them
    /// again, and clears below the floor again.
    pub fn untake_changes(&mut self, changes: &Changes) {
        self.changed.extend(changes.entries.iter().map(|(o, _)| *o));
        self.stored_floor = None;
    }

    /// Every entry counts as changed and nothing as stored (a state loaded from a format
    /// that stored it whole).
    pub fn mark_all_changed(&mut self) {
        self.changed = self.entries.keys().copied().collect();
        self.stored_floor = None;
    }

    /// Rebuild what is not stored (the deadline heap) after loading.
    pub fn restore(&mut self) {
        self.deadlines.clear();
        for (offset, e) in &self.entries {
            if let EntryState::Leased { deadline_ms } = e.state {
                self.deadlines
                    .push(std::cmp::Reverse((deadline_ms, *offset)));
            }
        }
    }

    /// Room for more records from the log.
    pub fn room(&self, policy: &Policy) -> usize {
        policy.max_unacked.saturating_sub(self.entries.len())
    }

    /// Track a record read from the log at `offset` (must be `scan_next`, or later when
    /// the log has holes such as compacted-away offsets).
    pub fn track(&mut self, offset: i64, key_hash: Option<u64>, not_before_ms: i64) {
        debug_assert!(offset >= self.scan_next);
        self.entries.insert(
            offset,
            Entry {
                state: EntryState::Available { not_before_ms },
                deliveries: 0,
                failures: 0,
                key_hash,
                first_delivery_ms: None,
                last_error: None,
            },
        );
        self.changed.insert(offset);
        self.scan_next = offset + 1;
        self.advance_floor();
    }

    /// [`PartitionQueue::track`] a record whose value is `value_bytes` long, for
    /// [`PartitionQueue::ready_value_bytes`]: the IO shell tracks this way.
    pub fn track_sized(
        &mut self,
        offset: i64,
        key_hash: Option<u64>,
        not_before_ms: i64,
        value_bytes: u32,
    ) {
        self.track(offset, key_hash, not_before_ms);
        self.value_bytes.insert(offset, value_bytes);
        if offset < self.tail.counted_to {
            // Counted ahead of the scan: it moves from the tail to the tracked.
            self.tail.bytes = self.tail.bytes.saturating_sub(u64::from(value_bytes));
        }
    }

    /// Track again a record already finished (below `scan_next`, not tracked): it
    /// becomes available as if new (no deliveries, no failures). The floor comes down
    /// to it; finished offsets between stay finished (they are not in `entries`).
    /// False if it is still tracked or not read from the log yet.
    pub fn revive(&mut self, offset: i64) -> bool {
        if offset >= self.scan_next || self.entries.contains_key(&offset) {
            return false;
        }
        self.entries.insert(
            offset,
            Entry {
                state: EntryState::Available { not_before_ms: 0 },
                deliveries: 0,
                failures: 0,
                key_hash: None,
                first_delivery_ms: None,
                last_error: None,
            },
        );
        self.changed.insert(offset);
        self.floor = self.floor.min(offset);
        true
    }

    /// The log has no record in `[scan_next, to)` (end of a batch, compaction gaps, or
    /// a batch past the decompression bound, which the tail counts as empty too).
    pub fn skip_to(&mut self, to: i64) {
        if to > self.scan_next {
            self.scan_next = to;
            self.tail.counted_to = self.tail.counted_to.max(to);
            self.advance_floor();
        }
    }

    /// Available tracked records whose value size is not known (tracked before a
    /// restart): read them and give their sizes with [`PartitionQueue::set_value_bytes`].
    pub fn unsized_available(&self) -> Vec<i64> {
        self.entries
            .iter()
            .filter(|(o, e)| {
                matches!(e.state, EntryState::Available { .. }) && !self.value_bytes.contains_key(o)
            })
            .map(|(o, _)| *o)
            .collect()
    }

    pub fn set_value_bytes(&mut self, offset: i64, value_bytes: u32) {
        if self.entries.contains_key(&offset) {
            self.value_bytes.insert(offset, value_bytes);
        }
    }

    /// Where the tail's count stands; counting continues from `counted_to` (never
    /// behind the scan).
    pub fn tail(&mut self) -> Tail {
        if self.tail.counted_to < self.scan_next {
            self.tail = Tail {
                counted_to: self.scan_next,
                bytes: 0,
            };
        }
        self.tail
    }

    /// The records in `[tail().counted_to, to)` hold `bytes` of values.
    pub fn count_tail(&mut self, to: i64, bytes: u64) {
        let tail = self.tail();
        if to > tail.counted_to {
            self.tail = Tail {
                counted_to: to,
                bytes: tail.bytes.saturating_add(bytes),
            };
        }
    }

    /// Value bytes of the records waiting to be handed out: tracked and available
    /// (sizes not known count 0; see `unsized_available`) plus the counted tail. What
    /// AMQP's `x-max-length-bytes` limits.
    pub fn ready_value_bytes(&mut self) -> u64 {
        let tracked: u64 = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Available { .. }))
            .map(|(o, _)| u64::from(self.value_bytes.get(o).copied().unwrap_or(0)))
            .sum();
        tracked + self.tail().bytes
    }

    /// A tracked record whose batch can no longer be read within the decompression
    /// bound (the bound was lowered after it was tracked): finished undelivered, as the
    /// scan steps over the records of such a batch (see the queue module's doc).
    pub fn abandon(&mut self, offset: i64) {
        if let Some(e) = self.entries.get_mut(&offset) {
            e.state = EntryState::Done;
            self.changed.insert(offset);
            self.dead_letter_claims.remove(&offset);
        }
        self.advance_floor();
    }

    /// Finish undelivered every record not handed out, up to `log_end` (a queue
    /// purge); leased records stay with their holders. Returns how many were purged.
    pub fn purge(&mut self, log_end: i64) -> u64 {
        let mut purged = 0;
        for (offset, e) in self.entries.iter_mut() {
            if matches!(e.state, EntryState::Available { .. }) {
                e.state = EntryState::Done;
                self.changed.insert(*offset);
                purged += 1;
            }
        }
        purged += (log_end - self.scan_next).max(0) as u64;
        // What the tail counted is purged too.
        self.tail = Tail::default();
        self.skip_to(log_end);
        self.advance_floor();
        purged
    }

    /// Retention deleted the log below `log_start`: records there cannot be delivered
    /// any more; they are counted as lost and the subscription moves on.
    pub fn truncate_below(&mut self, log_start: i64) {
        if log_start <= self.floor {
            return;
        }
        let kept = self.entries.split_off(&log_start);
        let lost = self
            .entries
            .values()
            .filter(|e| e.state != EntryState::Done)
            .count() as u64;
        let untracked = (log_start - self.scan_next).max(0);
        self.lost_to_retention += lost + untracked as u64;
        self.entries = kept;
        self.value_bytes = self.value_bytes.split_off(&log_start);
        if log_start > self.scan_next {
            // The tail counted records that are gone.
            self.tail = Tail::default();
        }
        self.scan_next = self.scan_next.max(log_start);
        self.floor = log_start;
        self.advance_floor();
    }

    /// Lease up to `max` records ready at `now_ms`, in offset order. With ordering per key,
    /// a record is skipped while an earlier record with its key is not finished.
    /// Returns (offset, attempt) pairs.
    pub fn lease(&mut self, now_ms: i64, max: usize, policy: &Policy) -> Vec<(i64, u32)> {
        let mut out = Vec::new();
        let mut blocked_keys: HashSet<u64> = HashSet::new();
        for (offset, e) in self.entries.iter_mut() {
            if out.len() >= max {
                break;
            }
            let ready = matches!(e.state, EntryState::Available { not_before_ms } if not_before_ms <= now_ms);
            if policy.ordered_by_key
                && let Some(k) = e.key_hash
            {
                if blocked_keys.contains(&k) {
                    continue;
                }
                if e.state != EntryState::Done {
                    blocked_keys.insert(k);
                }
            }
            if !ready {
                continue;
            }
            if e.deliveries > 0 {
                self.redeliveries += 1;
            }
            e.deliveries += 1;
            e.first_delivery_ms.get_or_insert(now_ms);
            let deadline_ms = now_ms.saturating_add(policy.lease_ms);
            e.state = EntryState::Leased { deadline_ms };
            self.deadlines
                .push(std::cmp::Reverse((deadline_ms, *offset)));
            self.changed.insert(*offset);
            out.push((*offset, e.deliveries));
        }
        out
    }

    /// The entry a transition on a lease changes (marked changed: a refused one is
    /// written unchanged, which is harmless).
    fn leased(&mut self, offset: i64, attempt: u32) -> Result<&mut Entry, Refusal> {
        let e = self.entries.get_mut(&offset).ok_or(Refusal::NotTracked)?;
        self.changed.insert(offset);
        if attempt > e.deliveries || attempt == 0 {
            return Err(Refusal::NeverIssued);
        }
        if e.deliveries != attempt {
            return Err(Refusal::Stale {
                current_attempt: e.deliveries,
            });
        }
        if !matches!(e.state, EntryState::Leased { .. }) {
            return Err(Refusal::NotLeased);
        }
        Ok(e)
    }

    pub fn ack(&mut self, offset: i64, attempt: u32) -> Result<(), Refusal> {
        self.leased(offset, attempt)?.state = EntryState::Done;
        self.advance_floor();
        Ok(())
    }

    /// Put a leased record back now, without counting a failure.
    pub fn release(&mut self, offset: i64, attempt: u32, now_ms: i64) -> Result<(), Refusal> {
        self.leased(offset, attempt)?.state = EntryState::Available {
            not_before_ms: now_ms,
        };
        Ok(())
    }

    /// Every leased record back to available now (their holders are gone: a broker
    /// restart for a protocol whose deliveries die with the connection). Returns how
    /// many; their delivery counts stay, so they come back as redeliveries.
    pub fn release_all(&mut self, now_ms: i64) -> usize {
        let mut released = 0;
        for (offset, e) in self.entries.iter_mut() {
            if matches!(e.state, EntryState::Leased { .. }) {
                e.state = EntryState::Available {
                    not_before_ms: now_ms,
                };
                self.changed.insert(*offset);
                released += 1;
            }
        }
        released
    }

    /// Undo a lease as if it never happened (the hand-out is not counted): for a
    /// reader that looked at a record without delivering it (AMQP's expiry sweep).
    pub fn unlease(&mut self, offset: i64, attempt: u32) -> Result<(), Refusal> {
        let e = self.leased(offset, attempt)?;
        e.state = EntryState::Available { not_before_ms: 0 };
        e.deliveries -= 1;
        let redelivery = e.deliveries > 0;
        if e.deliveries == 0 {
            e.first_delivery_ms = None;
        }
        if redelivery {
            self.redeliveries = self.redeliveries.saturating_sub(1);
        }
        Ok(())
    }

    pub fn extend(&mut self, offset: i64, attempt: u32, deadline_ms: i64) -> Result<(), Refusal> {
        self.leased(offset, attempt)?.state = EntryState::Leased { deadline_ms };
        self.deadlines
            .push(std::cmp::Reverse((deadline_ms, offset)));
        Ok(())
    }

    /// A failed delivery. `retry_at_ms(failures)` gives when to try again. Returns true
    /// when the record has now failed `max_deliveries` times and must be dead-lettered.
    pub fn nack(
        &mut self,
        offset: i64,
        attempt: u32,
        error: Option<String>,
        policy: &Policy,
        retry_at_ms: impl FnOnce(u32) -> i64,
    ) -> Result<bool, Refusal> {
        let e = self.leased(offset, attempt)?;
        Ok(fail(e, error, policy, retry_at_ms))
    }

    /// Expire leases whose deadline is at or before `now_ms`; each counts as a failure.
    /// Returns the offsets that must now be dead-lettered. Costs O(expired · log n).
    pub fn expire(
        &mut self,
        now_ms: i64,
        policy: &Policy,
        mut retry_at_ms: impl FnMut(u32) -> i64,
    ) -> Vec<i64> {
        let mut dead = Vec::new();
        while let Some(std::cmp::Reverse((deadline, offset))) = self.deadlines.peek().copied() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.pop();
            let Some(e) = self.entries.get_mut(&offset) else {
                continue;
            };
            // A pair left behind by an ack, an extension or a newer lease.
            if e.state
                != (EntryState::Leased {
                    deadline_ms: deadline,
                })
            {
                continue;
            }
            self.expired_leases += 1;
            self.changed.insert(offset);
            if fail(e, Some("lease expired".into()), policy, &mut retry_at_ms) {
                dead.push(offset);
            }
        }
        dead
    }

    /// Offsets waiting for their dead-letter copy (also after a restart).
    pub fn dead_lettering(&self) -> Vec<i64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.state == EntryState::DeadLettering)
            .map(|(o, _)| *o)
            .collect()
    }

    /// Take the writing of `offset`'s dead-letter copy: its entry, if it is waiting for
    /// one and nobody else is writing it. Give it back with `release_dead_letter`.
    pub fn claim_dead_letter(&mut self, offset: i64) -> Option<Entry> {
        let entry = self
            .entries
            .get(&offset)
            .filter(|e| e.state == EntryState::DeadLettering)?
            .clone();
        self.dead_letter_claims.insert(offset).then_some(entry)
    }

    pub fn release_dead_letter(&mut self, offset: i64) {
        self.dead_letter_claims.remove(&offset);
    }

    /// The dead-letter copy of `offset` is durable.
    pub fn dead_lettered(&mut self, offset: i64) {
        if let Some(e) = self.entries.get_mut(&offset)
            && e.state == EntryState::DeadLettering
        {
            e.state = EntryState::Done;
            self.changed.insert(offset);
            self.dead_lettered += 1;
        }
        self.advance_floor();
    }

    pub fn counts(&self, now_ms: i64) -> Counts {
        let mut c = Counts::default();
        for e in self.entries.values() {
            match e.state {
                EntryState::Available { not_before_ms } if not_before_ms <= now_ms => {
                    c.available += 1
                }
                EntryState::Available { .. } => c.delayed += 1,
                EntryState::Leased { .. } | EntryState::DeadLettering => c.in_flight += 1,
                EntryState::Done => {}
            }
        }
        c
    }

    /// The earliest time an available record becomes ready, for long polls.
    pub fn next_ready_ms(&self) -> Option<i64> {
        let avail = self.entries.values().filter_map(|e| match e.state {
            EntryState::Available { not_before_ms } => Some(not_before_ms),
            _ => None,
        });
        let lease = self.deadlines.peek().map(|r| r.0.0);
        avail.chain(lease).min()
    }

    fn advance_floor(&mut self) {
        while let Some((&offset, e)) = self.entries.first_key_value() {
            if e.state != EntryState::Done {
                break;
            }
            self.entries.remove(&offset);
            self.value_bytes.remove(&offset);
        }
        self.floor = self
            .entries
            .first_key_value()
            .map(|(o, _)| *o)
            .unwrap_or(self.scan_next);
    }
}

fn fail(
    e: &mut Entry,
    error: Option<String>,
    policy: &Policy,
    retry_at_ms: impl FnOnce(u32) -> i64,
) -> bool {
    e.failures += 1;
    if error.is_some() {
        e.last_error = error;
    }
    if e.failures >= policy.max_deliveries {
        e.state = EntryState::DeadLettering;
        true
    } else {
        e.state = EntryState::Available {
            not_before_ms: retry_at_ms(e.failures),
        };
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: Policy = Policy {
        lease_ms: 100,
        max_deliveries: 3,
        max_unacked: 8,
        ordered_by_key: true,
    };

    #[test]
    fn a_record_fails_max_deliveries_times_then_is_dead_lettered() {
        let mut q = PartitionQueue::new(0);
        q.track(0, None, 0);
        for attempt in 1..=3 {
            let got = q.lease(1_000 * attempt as i64, 10, &POLICY);
            assert_eq!(got, vec![(0, attempt)]);
            let dead = q
                .nack(0, attempt, Some("boom".into()), &POLICY, |f| {
                    1_000 * (f as i64 + 1)
                })
                .unwrap();
            assert_eq!(dead, attempt == 3);
        }
        assert_eq!(q.dead_lettering(), vec![0]);
        assert!(q.lease(i64::MAX / 2, 10, &POLICY).is_empty());
        q.dead_lettered(0);
        assert_eq!(q.floor, 1);
        assert!(q.entries.is_empty());
    }

    #[test]
    fn stale_receipts_are_refused() {
        let mut q = PartitionQueue::new(0);
        q.track(0, None, 0);
        q.lease(0, 1, &POLICY);
        assert!(q.expire(100, &POLICY, |_| 100).is_empty());
        q.lease(100, 1, &POLICY);
        assert_eq!(q.ack(0, 1), Err(Refusal::Stale { current_attempt: 2 }));
        // Receipts for deliveries that never happened are not stale: never issued.
        assert_eq!(q.ack(0, 3), Err(Refusal::NeverIssued));
        assert_eq!(q.ack(0, 0), Err(Refusal::NeverIssued));
        assert_eq!(q.ack(0, 2), Ok(()));
        assert_eq!(q.ack(0, 2), Err(Refusal::NotTracked));
    }

    #[test]
    fn retention_past_unfinished_records_counts_them_lost_and_moves_on() {
        let mut q = PartitionQueue::new(0);
        for o in 0..4 {
            q.track(o, None, 0);
        }
        let got = q.lease(0, 1, &POLICY);
        q.ack(got[0].0, got[0].1).unwrap();
        // Offsets 1..3 unfinished and tracked, 4..9 never read: retention cuts at 10.
        q.truncate_below(10);
        assert_eq!(q.lost_to_retention, 9);
        assert_eq!((q.floor, q.scan_next), (10, 10));
        assert!(q.entries.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Track(u8),
        Lease(u8),
        Ack(u8),
        Nack(u8),
        Release(u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Track),
            (1u8..4).prop_map(Op::Lease),
            any::<u8>().prop_map(Op::Ack),
            any::<u8>().prop_map(Op::Nack),
            any::<u8>().prop_map(Op::Release),
            (0u16..300).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// No finished record is handed out again; with ordering per key no two records
        /// of one key are leased at once, and a key's records are first delivered in
        /// offset order; draining ends with every record acked or dead-lettered.
        #[test]
        fn transitions_keep_the_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let mut q = PartitionQueue::new(0);
            let mut now = 0i64;
            let mut leased: Vec<(i64, u32)> = Vec::new();
            let mut finished = std::collections::HashSet::new();
            let mut first_delivered: BTreeMap<u64, i64> = BTreeMap::new();
            let mut tracked = 0i64;
            for op in ops {
                match op {
                    Op::Track(k) if q.room(&POLICY) > 0 => {
                        q.track(tracked, Some(u64::from(k)), now);
                        tracked += 1;
                    }
                    Op::Lease(n) => {
                        for (o, a) in q.lease(now, n as usize, &POLICY) {
                            prop_assert!(!finished.contains(&o));
                            let key = q.entries[&o].key_hash.unwrap();
                            for (lo, _) in &leased {
                                if let Some(e) = q.entries.get(lo)
                                    && matches!(e.state, EntryState::Leased { .. })
                                    && *lo != o
                                {
                                    prop_assert_ne!(e.key_hash, Some(key));
                                }
                            }
                            if a == 1
                                && let Some(prev) = first_delivered.insert(key, o)
                            {
                                prop_assert!(prev < o);
                            }
                            leased.push((o, a));
                        }
                    }
                    Op::Ack(i) | Op::Nack(i) | Op::Release(i) if !leased.is_empty() => {
                        let (o, a) = leased[i as usize % leased.len()];
                        let r = match op {
                            Op::Ack(_) => q.ack(o, a).map(|_| { finished.insert(o); }),
                            Op::Nack(_) => q.nack(o, a, None, &POLICY, |f| now + i64::from(f) * 10)
                                .map(|dead| if dead { q.dead_lettered(o); finished.insert(o); }),
                            _ => q.release(o, a, now),
                        };
                        let _ = r;
                    }
                    Op::Tick(ms) => {
                        now += i64::from(ms);
                        for o in q.expire(now, &POLICY, |f| now + i64::from(f) * 10) {
                            q.dead_lettered(o);
                            finished.insert(o);
                        }
                    }
                    _ => {}
                }
                prop_assert!(q.entries.len() <= POLICY.max_unacked);
                prop_assert!(q.floor <= q.scan_next);
            }
            // Drain: ack everything handed out until nothing is left.
            for _ in 0..10_000 {
                now += 1_000;
                for o in q.expire(now, &POLICY, |_| now) { q.dead_lettered(o); }
                let got = q.lease(now, 100, &POLICY);
                if got.is_empty() && q.entries.is_empty() { break; }
                for (o, a) in got { prop_assert!(q.ack(o, a).is_ok()); }
            }
            prop_assert!(q.entries.is_empty());
            prop_assert_eq!(q.floor, tracked);
        }
    }

    #[derive(Debug, Clone)]
    enum StoreOp {
        Step(Op),
        Unlease(u8),
        Extend(u8),
        Abandon(u8),
        ReleaseAll,
        Purge(u8),
        Truncate(u8),
        /// Take the changes and store them, or (false) fail to store them.
        Commit(bool),
    }

    fn store_op() -> impl Strategy<Value = StoreOp> {
        prop_oneof![
            6 => op().prop_map(StoreOp::Step),
            1 => any::<u8>().prop_map(StoreOp::Unlease),
            1 => any::<u8>().prop_map(StoreOp::Extend),
            1 => any::<u8>().prop_map(StoreOp::Abandon),
            1 => Just(StoreOp::ReleaseAll),
            1 => (0u8..4).prop_map(StoreOp::Purge),
            1 => (0u8..4).prop_map(StoreOp::Truncate),
            3 => proptest::bool::weighted(0.8).prop_map(StoreOp::Commit),
        ]
    }

    proptest! {
        /// Storing only what changed rebuilds exactly the state: after any transitions
        /// and commits (some of which fail and are given back), a partition rebuilt from
        /// the stored header and entries equals the live one.
        #[test]
        fn stored_changes_rebuild_the_state(ops in proptest::collection::vec(store_op(), 1..300)) {
            let mut q = PartitionQueue::new(0);
            let mut stored: BTreeMap<i64, Entry> = BTreeMap::new();
            let mut header = None;
            let (mut now, mut tracked, mut log_end) = (0i64, 0i64, 0i64);
            let pick = |q: &PartitionQueue, i: u8| {
                let leased: Vec<(i64, u32)> = q.entries.iter()
                    .filter(|(_, e)| matches!(e.state, EntryState::Leased { .. }))
                    .map(|(o, e)| (*o, e.deliveries)).collect();
                (!leased.is_empty()).then(|| leased[i as usize % leased.len()])
            };
            for op in ops {
                match op {
                    StoreOp::Step(Op::Track(k)) if q.room(&POLICY) > 0 => {
                        tracked = tracked.max(q.scan_next);
                        q.track(tracked, Some(u64::from(k)), now);
                        tracked += 1;
                        log_end = log_end.max(tracked);
                    }
                    StoreOp::Step(Op::Lease(n)) => { q.lease(now, n as usize, &POLICY); }
                    StoreOp::Step(Op::Ack(i)) => if let Some((o, a)) = pick(&q, i) { q.ack(o, a).unwrap(); },
                    StoreOp::Step(Op::Nack(i)) => if let Some((o, a)) = pick(&q, i)
                        && q.nack(o, a, Some(format!("e{i}")), &POLICY, |f| now + i64::from(f)).unwrap()
                    {
                        q.dead_lettered(o);
                    },
                    StoreOp::Step(Op::Release(i)) => if let Some((o, a)) = pick(&q, i) { q.release(o, a, now).unwrap(); },
                    StoreOp::Step(Op::Tick(ms)) => {
                        now += i64::from(ms);
                        for o in q.expire(now, &POLICY, |f| now + i64::from(f)) { q.dead_lettered(o); }
                    }
                    StoreOp::Step(Op::Track(_)) => {}
                    StoreOp::Unlease(i) => if let Some((o, a)) = pick(&q, i) { q.unlease(o, a).unwrap(); },
                    StoreOp::Extend(i) => if let Some((o, a)) = pick(&q, i) { q.extend(o, a, now + 500).unwrap(); },
                    StoreOp::Abandon(i) => if let Some((o, _)) = pick(&q, i) { q.abandon(o); },
                    StoreOp::ReleaseAll => { q.release_all(now); }
                    StoreOp::Purge(more) => {
                        log_end = log_end.max(q.scan_next) + i64::from(more);
                        q.purge(log_end);
                    }
                    StoreOp::Truncate(by) => q.truncate_below(q.floor + i64::from(by)),
                    StoreOp::Commit(ok) => {
                        let changes = q.take_changes();
                        if ok {
                            if let Some(below) = changes.remove_below {
                                stored.retain(|o, _| *o >= below);
                            }
                            stored.extend(changes.entries.iter().cloned());
                            header = Some(changes.header.clone());
                            let back = PartitionQueue::from_stored(changes.header, stored.clone());
                            prop_assert_eq!(&back.entries, &q.entries);
                            prop_assert_eq!((back.floor, back.scan_next, back.redeliveries, back.dead_lettered),
                                (q.floor, q.scan_next, q.redeliveries, q.dead_lettered));
                        } else {
                            q.untake_changes(&changes);
                        }
                    }
                }
                tracked = tracked.max(q.scan_next);
            }
            // Whatever the last commit left behind, one more stores the rest.
            let changes = q.take_changes();
            if let Some(below) = changes.remove_below {
                stored.retain(|o, _| *o >= below);
            }
            stored.extend(changes.entries.iter().cloned());
            let _ = header;
            let back = PartitionQueue::from_stored(changes.header, stored);
            prop_assert_eq!(&back.entries, &q.entries);
            prop_assert_eq!((back.floor, back.scan_next, back.lost_to_retention, back.expired_leases),
                (q.floor, q.scan_next, q.lost_to_retention, q.expired_leases));
        }
    }
}
