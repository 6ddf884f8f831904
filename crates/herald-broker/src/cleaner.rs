//! The log cleaner: compaction of topics with `cleanup.policy=compact`, like Kafka's
//! log cleaner. It keeps, for every key, the latest record, and removes tombstones
//! (null values) once their delete horizon has passed.
//!
//! Why it works the way it does:
//! - **Only sealed segments, never under the write lock.** Sealed segments never
//!   change in place, so the cleaner reads them through their open files without any
//!   lock, writes a cleaned copy of one segment at a time, and takes the partition's
//!   write lock only for the rename that swaps it in (`herald_log::compact` has the
//!   crash-safe protocol). Appends go to the active segment meanwhile; reads keep
//!   seeing either the old or the new segment, both of which hold the latest records.
//! - **Offset map over the dirty section** (Kafka's OffsetMap): key -> latest offset,
//!   built from the segments the cleaner has not cleaned yet (from the checkpoint's
//!   first dirty offset), segment by segment, until `compaction_map_bytes_max` is
//!   used up. Every sealed segment fully below that point is then cleaned: a record
//!   is dropped when the map holds a later offset for its key. A segment that did not
//!   fit waits for the next pass, which is how a large dirty section is cleaned in
//!   several passes. Keys are stored whole (compared as bytes), not hashed, so a
//!   collision can never drop a live record.
//! - **Offsets are kept.** A batch that loses records is re-encoded with its base
//!   offset, last offset delta, producer id/epoch, base sequence, attributes and codec
//!   (Kafka keeps the last offset so the producer's sequence state stays right); each
//!   kept record keeps its offset delta and timestamp. An emptied batch is dropped.
//! - **Tombstones live for `delete.retention.ms` after their first cleaning** (KIP-534):
//!   that cleaning marks the batch with a delete horizon (`now + delete.retention.ms`
//!   in `baseTimestamp`, record timestamp deltas rewritten so timestamps stay the same),
//!   and the first cleaning after the horizon removes them. Consumers that were behind
//!   by less than that still see the delete. The checkpoint keeps the earliest pending
//!   horizon so a cleaning runs then even if nothing new is dirty.
//! - **A batch that decompresses past `batch_decompressed_bytes_max` is kept as is**
//!   (logged and counted as skipped): its keys are not in the map and none of its
//!   records is dropped, so it costs compaction, never data, and the cleaner never
//!   holds more than the bound of one batch.
//! - **Keyless records are dropped** by cleaning (Kafka does the same); produce refuses
//!   them on compacted topics, so they exist only if a topic became compacted later.
//!
//! Not done: Kafka keeps the last (possibly emptied) batch of each idempotent producer
//! so its sequence state survives cleaning. Herald drops empty batches; after a restart
//! such a producer is unknown, its next batch is accepted at any sequence, and a retry
//! of a batch whose records were all compacted away would be appended again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_log::{
    ATTR_DELETE_HORIZON, BatchHeader, CleanerCheckpoint, Replaced, SealedSegment, SegmentRewriter,
    encode_batch,
};

use crate::error::{BrokerError, Result};
use crate::partition::Partition;
use crate::records::{DecodedBatch, RecordView, decode_records};
use crate::reencode::put_varlong;
use crate::{Broker, now_ms};

/// What one offset-map entry costs beyond its key bytes: the Vec header, the offset
/// and the hash table's slot and slack, rounded up.
pub const MAP_ENTRY_OVERHEAD_BYTES: usize = 64;

/// What decides one cleaning of one partition.
#[derive(Debug, Clone, Copy)]
pub struct CleanerSettings {
    pub map_bytes_max: usize,
    pub delete_retention_ms: i64,
    pub min_dirty_ratio: f64,
}

/// What one cleaning did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanStats {
    /// False when the partition did not need cleaning.
    pub ran: bool,
    pub segments_rewritten: usize,
    pub segments_removed: usize,
    pub records_removed: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Where the next cleaning's offset map starts.
    pub first_dirty_offset: i64,
    /// The map filled up before the dirty section ended: another pass is due.
    pub map_full: bool,
}

/// Start the broker's cleaner task: every `compaction_check_interval_ms` it visits
/// the partitions of compacted topics, one at a time, and cleans those that need it.
pub fn spawn(broker: Weak<Broker>) {
    let Some(interval_ms) = broker
        .upgrade()
        .map(|b| b.config.compaction_check_interval_ms)
    else {
        return;
    };
    if interval_ms == 0 {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            let Some(b) = broker.upgrade() else { return };
            let map_bytes_max = b.config.compaction_map_bytes_max;
            let work: Vec<(Arc<Partition>, CleanerSettings)> = b
                .topics()
                .iter()
                .filter(|t| t.compacted())
                .flat_map(|t| {
                    let settings = CleanerSettings {
                        map_bytes_max,
                        delete_retention_ms: t.delete_retention_ms(),
                        min_dirty_ratio: t.min_cleanable_dirty_ratio(),
                    };
                    t.partitions.iter().map(move |p| (p.clone(), settings))
                })
                .collect();
            drop(b);
            for (partition, settings) in work {
                let topic = partition.topic.clone();
                let index = partition.index;
                let outcome = tokio::task::spawn_blocking(move || {
                    clean_partition(&partition, &settings, now_ms(), false)
                })
                .await;
                match outcome {
                    Ok(Ok(stats)) if stats.ran => tracing::info!(
                        topic = %topic,
                        partition = index,
                        segments_rewritten = stats.segments_rewritten,
                        segments_removed = stats.segments_removed,
                        records_removed = stats.records_removed,
                        bytes_before = stats.bytes_before,
                        bytes_after = stats.bytes_after,
                        map_full = stats.map_full,
                        "compacted partition"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(BrokerError::ShuttingDown)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(topic = %topic, partition = index, error = %e, "compaction failed")
                    }
                    Err(e) => {
                        tracing::error!(topic = %topic, partition = index, error = %e, "compaction task failed")
                    }
                }
            }
        }
    });
}

/// Clean one partition if it needs it (dirty ratio reached, or a tombstone horizon
/// passed), or always with `force`. Blocking: call it off the async runtime.
pub fn clean_partition(
    partition: &Partition,
    settings: &CleanerSettings,
    now_ms: i64,
    force: bool,
) -> Result<CleanStats> {
    let (dir, mut sealed, active_base, index_interval_bytes) = partition.with_log(|log| {
        (
            log.dir().to_path_buf(),
            log.sealed_segments(),
            log.active_base_offset(),
            log.config().index_interval_bytes,
        )
    })?;
    // Only below the last stable offset: an open transaction's records may still be
    // aborted, so they neither enter the map nor are cleaned (Kafka's rule too).
    let stable = partition.last_stable_offset();
    let below_stable = (0..sealed.len())
        .take_while(|&i| sealed.get(i + 1).map_or(active_base, |s| s.base_offset()) <= stable)
        .count();
    let active_base = sealed
        .get(below_stable)
        .map_or(active_base, |s| s.base_offset());
    sealed.truncate(below_stable);
    let mut stats = CleanStats::default();
    let Some(first) = sealed.first() else {
        return Ok(stats);
    };
    let checkpoint = CleanerCheckpoint::load(&dir);
    let first_dirty = checkpoint.first_dirty_offset.max(first.base_offset());
    stats.first_dirty_offset = first_dirty;
    let total_bytes: u64 = sealed.iter().map(SealedSegment::size_bytes).sum();
    let dirty_bytes: u64 = sealed
        .iter()
        .filter(|s| s.base_offset() >= first_dirty)
        .map(SealedSegment::size_bytes)
        .sum();
    let ratio = if total_bytes == 0 {
        0.0
    } else {
        dirty_bytes as f64 / total_bytes as f64
    };
    let horizon_due = checkpoint.tombstone_horizon_ms.is_some_and(|h| now_ms >= h);
    let dirty_due = dirty_bytes > 0 && ratio >= settings.min_dirty_ratio;
    if !(force || dirty_due || horizon_due) {
        return Ok(stats);
    }
    stats.ran = true;

    let next_base = |i: usize| sealed.get(i + 1).map_or(active_base, |s| s.base_offset());
    let limit = partition.bounds().batch_decompressed_bytes_max;
    let aborted = |h: &BatchHeader| aborted_batch(partition, h);
    let map = build_offset_map(
        &sealed,
        first_dirty,
        settings.map_bytes_max,
        limit,
        &next_base,
        &aborted,
    )?;
    stats.map_full = map.full;
    if map.full && map.end_offset == first_dirty && dirty_bytes > 0 {
        tracing::warn!(
            dir = %dir.display(),
            first_dirty,
            compaction_map_bytes_max = settings.map_bytes_max,
            "the keys of one segment do not fit in compaction_map_bytes_max; raise it to compact this partition"
        );
    }

    let mut horizon: Option<i64> = None;
    for segment in sealed.iter().filter(|s| s.base_offset() < map.end_offset) {
        clean_segment(
            partition,
            &dir,
            segment,
            &map.latest,
            settings,
            now_ms,
            index_interval_bytes,
            &mut stats,
            &mut horizon,
        )?;
    }
    let checkpoint = CleanerCheckpoint {
        first_dirty_offset: map.end_offset,
        tombstone_horizon_ms: horizon,
    };
    checkpoint.store(&dir)?;
    stats.first_dirty_offset = map.end_offset;
    Ok(stats)
}

/// Whether `header` is a data batch of an aborted transaction.
fn aborted_batch(partition: &Partition, header: &BatchHeader) -> bool {
    header.is_transactional()
        && !header.is_control()
        && partition.is_aborted(header.producer_id, header.base_offset)
}

struct OffsetMap {
    latest: HashMap<Vec<u8>, i64>,
    /// Every record below this offset (from the first dirty one) is in the map.
    end_offset: i64,
    full: bool,
}

/// Map every key of the dirty segments to its latest offset, segment by segment,
/// until `bytes_max` is used. The entries of a segment that did not fit stay in the
/// map: each still names a real, later record of its key, so using it is safe. A batch
/// over the decompression bound adds nothing (cleaning keeps it whole).
fn build_offset_map(
    sealed: &[SealedSegment],
    first_dirty: i64,
    bytes_max: usize,
    batch_limit: usize,
    next_base: &dyn Fn(usize) -> i64,
    aborted: &dyn Fn(&BatchHeader) -> bool,
) -> Result<OffsetMap> {
    let mut map = OffsetMap {
        latest: HashMap::new(),
        end_offset: first_dirty,
        full: false,
    };
    let mut bytes = 0usize;
    for (i, segment) in sealed.iter().enumerate() {
        if segment.base_offset() < first_dirty {
            continue;
        }
        segment.for_each_batch(|header, batch| {
            // Markers have no key to keep; an aborted transaction's records never
            // supersede a committed record of their key.
            if header.is_control() || aborted(header) {
                return Ok(true);
            }
            let decoded = match decode_records(batch, batch_limit) {
                // Counted once, by the cleaning pass that keeps it.
                Err(BrokerError::BatchDecompressedTooLarge { .. }) => return Ok(true),
                other => other?,
            };
            for record in decoded.records() {
                let record = record?;
                let Some(key) = decoded.key(&record) else {
                    continue;
                };
                if let Some(offset) = map.latest.get_mut(key) {
                    *offset = (*offset).max(record.offset);
                    continue;
                }
                let cost = key.len() + MAP_ENTRY_OVERHEAD_BYTES;
                if bytes + cost > bytes_max {
                    map.full = true;
                    return Ok::<bool, BrokerError>(false);
                }
                map.latest.insert(key.to_vec(), record.offset);
                bytes += cost;
            }
            Ok(true)
        })?;
        if map.full {
            break;
        }
        map.end_offset = next_base(i);
    }
    Ok(map)
}

/// Clean one sealed segment: a first pass decides whether anything changes (most
/// already-clean segments do not, and are left alone), a second writes the copy.
#[allow(clippy::too_many_arguments)]
fn clean_segment(
    partition: &Partition,
    dir: &Path,
    segment: &SealedSegment,
    latest: &HashMap<Vec<u8>, i64>,
    settings: &CleanerSettings,
    now_ms: i64,
    index_interval_bytes: u64,
    stats: &mut CleanStats,
    horizon: &mut Option<i64>,
) -> Result<()> {
    let mut changed = false;
    let mut segment_horizon: Option<i64> = None;
    let mut removed = 0usize;
    let limit = partition.bounds().batch_decompressed_bytes_max;
    let aborted = |h: &BatchHeader| aborted_batch(partition, h);
    segment.for_each_batch(|header, batch| {
        let filtered = filter_batch(header, batch, latest, settings, now_ms, limit, &aborted)?;
        if let Some(reason) = &filtered.oversized {
            partition.note_oversized(header, reason, "cleaner");
        }
        if let Some(h) = filtered.tombstone_horizon_ms {
            segment_horizon = Some(segment_horizon.map_or(h, |m: i64| m.min(h)));
        }
        removed += filtered.removed;
        changed |= !matches!(filtered.outcome, Outcome::Keep);
        Ok::<bool, BrokerError>(true)
    })?;
    let note_horizon = |horizon: &mut Option<i64>| {
        if let Some(h) = segment_horizon {
            *horizon = Some(horizon.map_or(h, |m| m.min(h)));
        }
    };
    if !changed {
        note_horizon(horizon);
        return Ok(());
    }

    let mut rewriter = SegmentRewriter::create(dir, segment, index_interval_bytes)?;
    let written = segment.for_each_batch(|header, batch| {
        match filter_batch(header, batch, latest, settings, now_ms, limit, &aborted)?.outcome {
            Outcome::Keep => rewriter.push(batch)?,
            Outcome::Rewrite(bytes) => rewriter.push(&bytes)?,
            Outcome::Drop => {}
        }
        Ok::<bool, BrokerError>(true)
    });
    if let Err(e) = written {
        if let Err(d) = rewriter.discard() {
            tracing::warn!(error = %d, "cannot remove an abandoned cleaned segment");
        }
        return Err(e);
    }
    let cleaned = rewriter.finish()?;
    let size_after = cleaned.size_bytes();
    let (replaced, dir_sync) = partition.with_log_mut(|log| log.replace_sealed(cleaned))??;
    dir_sync.sync()?;
    match replaced {
        Replaced::Swapped => stats.segments_rewritten += 1,
        Replaced::Removed => stats.segments_removed += 1,
        // Deleted meanwhile (retention, topic deletion): nothing of it is left to track.
        Replaced::Stale => return Ok(()),
    }
    note_horizon(horizon);
    stats.records_removed += removed;
    stats.bytes_before += segment.size_bytes();
    stats.bytes_after += size_after;
    Ok(())
}

enum Outcome {
    Keep,
    Drop,
    Rewrite(Vec<u8>),
}

struct Filtered {
    outcome: Outcome,
    removed: usize,
    /// The delete horizon of tombstones this batch still holds afterwards.
    tombstone_horizon_ms: Option<i64>,
    /// Kept whole because it decompresses past the bound: why.
    oversized: Option<String>,
}

/// Decide what happens to one batch: kept as is, dropped, or re-encoded with fewer
/// records and/or a delete horizon.
fn filter_batch(
    header: &BatchHeader,
    batch: &[u8],
    latest: &HashMap<Vec<u8>, i64>,
    settings: &CleanerSettings,
    now_ms: i64,
    batch_limit: usize,
    aborted: &dyn Fn(&BatchHeader) -> bool,
) -> Result<Filtered> {
    let keep_whole = |oversized| Filtered {
        outcome: Outcome::Keep,
        removed: 0,
        tombstone_horizon_ms: None,
        oversized,
    };
    // Markers stay (the aborted ranges they end are what read_committed readers need).
    if header.is_control() {
        return Ok(keep_whole(None));
    }
    // Nobody may read an aborted transaction's records: cleaning removes them.
    if aborted(header) {
        return Ok(Filtered {
            outcome: Outcome::Drop,
            removed: usize::try_from(header.records_count).unwrap_or(0),
            tombstone_horizon_ms: None,
            oversized: None,
        });
    }
    let decoded = match decode_records(batch, batch_limit) {
        Err(e @ BrokerError::BatchDecompressedTooLarge { .. }) => {
            return Ok(keep_whole(Some(e.to_string())));
        }
        other => other?,
    };
    let horizon = header.delete_horizon_ms();
    let deletes_expired = horizon.is_some_and(|h| now_ms >= h);
    // Records are walked twice (count, then copy) rather than collected: nothing here
    // grows with the record count.
    let keep = |record: &RecordView| {
        let Some(key) = decoded.key(record) else {
            return false;
        };
        if latest.get(key).is_some_and(|&o| o > record.offset) {
            return false;
        }
        !(record.value.is_none() && deletes_expired)
    };
    let (mut total, mut kept) = (0usize, 0usize);
    let mut tombstones = false;
    for record in decoded.records() {
        let record = record?;
        total += 1;
        if keep(&record) {
            kept += 1;
            tombstones |= record.value.is_none();
        }
    }
    let removed = total - kept;
    if kept == 0 {
        return Ok(Filtered {
            outcome: Outcome::Drop,
            removed,
            tombstone_horizon_ms: None,
            oversized: None,
        });
    }
    let new_horizon = match horizon {
        Some(h) => h,
        None => now_ms.saturating_add(settings.delete_retention_ms),
    };
    let tombstone_horizon_ms = tombstones.then_some(new_horizon);
    let set_horizon = tombstones && horizon.is_none();
    if removed == 0 && !set_horizon {
        return Ok(Filtered {
            outcome: Outcome::Keep,
            removed,
            tombstone_horizon_ms,
            oversized: None,
        });
    }
    let base_timestamp = if set_horizon {
        new_horizon
    } else {
        header.base_timestamp
    };
    let bytes = reencode(&decoded, &keep, kept, base_timestamp, set_horizon)?;
    Ok(Filtered {
        outcome: Outcome::Rewrite(bytes),
        removed,
        tombstone_horizon_ms,
        oversized: None,
    })
}

/// Build a batch holding only the `kept` records of `decoded` that `keep` says, keeping
/// the header's base offset, last offset delta, producer fields, attributes and codec.
fn reencode(
    decoded: &DecodedBatch,
    keep: &dyn Fn(&RecordView) -> bool,
    kept: usize,
    base_timestamp: i64,
    set_horizon: bool,
) -> Result<Vec<u8>> {
    let original = &decoded.header;
    let mut plain = Vec::with_capacity(decoded.plain.len());
    let mut max_timestamp = i64::MIN;
    for record in decoded.records() {
        let record = record?;
        if !keep(&record) {
            continue;
        }
        let timestamp = original
            .base_timestamp
            .saturating_add(record.timestamp_delta);
        max_timestamp = max_timestamp.max(timestamp);
        let tail = &decoded.plain[record.tail.clone()];
        let mut head = Vec::with_capacity(11);
        head.push(record.attributes);
        put_varlong(&mut head, timestamp.saturating_sub(base_timestamp));
        let length = i64::try_from(head.len() + tail.len())
            .map_err(|_| BrokerError::Storage("record too large to re-encode".into()))?;
        put_varlong(&mut plain, length);
        plain.extend_from_slice(&head);
        plain.extend_from_slice(tail);
    }
    let mut header = *original;
    header.base_timestamp = base_timestamp;
    if !original.is_log_append_time() {
        header.max_timestamp = max_timestamp;
    }
    header.records_count = i32::try_from(kept)
        .map_err(|_| BrokerError::Storage("too many records to re-encode".into()))?;
    if set_horizon {
        header.attributes |= ATTR_DELETE_HORIZON;
    }
    let body = crate::reencode::compress(crate::reencode::Codec::of(original), &plain)?;
    Ok(encode_batch(&header, &body))
}

#[cfg(test)]
mod tests;
