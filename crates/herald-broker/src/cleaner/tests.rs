//! The cleaner against a real broker: what a consumer reading from the start sees
//! after cleaning (latest value per key, original offsets, tombstones until their
//! horizon), in every codec, in several passes, and while reads run concurrently.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

use super::*;
use crate::{BrokerConfig, FlushPolicy, Topic};

const DAY_MS: i64 = 86_400_000;

fn broker(dir: &Path) -> Arc<Broker> {
    let mut config = BrokerConfig::new(dir.to_path_buf());
    // Tests drive the cleaner themselves; `os` makes appends visible at once.
    config.compaction_check_interval_ms = 0;
    config.flush = FlushPolicy::Os;
    Broker::open(config).unwrap()
}

fn compact_topic(broker: &Broker, name: &str, segment_bytes: u32) -> Arc<Topic> {
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
    ]);
    broker.create_topic(name, Some(1), configs, false).unwrap()
}

fn record(key: &str, value: Option<&str>, timestamp: i64) -> Record {
    crate::test_util::record(key, value.map(str::as_bytes), timestamp)
}

/// One batch holding `records` (offsets and sequences numbered so they stay together).
fn batch(records: &[Record], compression: Compression) -> Vec<u8> {
    crate::test_util::batch(records, 0, compression)
}

fn put(topic: &Topic, key: &str, value: Option<&str>, timestamp: i64) -> i64 {
    topic
        .append(
            0,
            &batch(&[record(key, value, timestamp)], Compression::None),
            now_ms(),
        )
        .unwrap()
        .base_offset
}

/// (offset, key, value, timestamp) of every record, decoded the way a client does.
type Seen = (i64, String, Option<String>, i64);

fn read_all(topic: &Topic) -> Vec<Seen> {
    let p = topic.partition(0).unwrap();
    let mut bytes = p.read(p.log_start_offset(), usize::MAX).unwrap().records;
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut bytes).unwrap() {
        for r in set.records {
            let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
            out.push((
                r.offset,
                text(r.key.as_ref().unwrap()),
                r.value.as_ref().map(text),
                r.timestamp,
            ));
        }
    }
    out
}

fn settings() -> CleanerSettings {
    CleanerSettings {
        map_bytes_max: 1 << 20,
        delete_retention_ms: DAY_MS,
        min_dirty_ratio: 0.5,
    }
}

fn clean(topic: &Topic, settings: &CleanerSettings, now: i64) -> CleanStats {
    clean_partition(topic.partition(0).unwrap(), settings, now, true).unwrap()
}

/// Below the active segment (which is never cleaned), each key appears at most
/// once, at its latest offset there; nothing at or after it changed; the latest
/// record of every key is still there (or was a tombstone).
fn assert_compacted(before: &[Seen], after: &[Seen], active_base: i64) {
    let latest_of = |records: &mut dyn Iterator<Item = &Seen>| {
        records.fold(HashMap::new(), |mut m: HashMap<String, i64>, r| {
            m.insert(r.1.clone(), r.0);
            m
        })
    };
    let latest = latest_of(&mut before.iter());
    let latest_sealed = latest_of(&mut before.iter().filter(|r| r.0 < active_base));
    for r in after {
        assert!(before.contains(r), "record {r:?} was not produced as such");
        if r.0 < active_base {
            assert_eq!(
                latest_sealed[&r.1], r.0,
                "{r:?} is not the latest of its key"
            );
        }
    }
    let tail = |records: &[Seen]| -> Vec<Seen> {
        records
            .iter()
            .filter(|r| r.0 >= active_base)
            .cloned()
            .collect()
    };
    assert_eq!(
        tail(before),
        tail(after),
        "the active segment must not change"
    );
    for (key, offset) in &latest {
        let kept = after.iter().any(|r| r.0 == *offset);
        let tombstone = before.iter().any(|r| r.0 == *offset && r.2.is_none());
        assert!(
            kept || tombstone,
            "latest record of {key} at {offset} is gone"
        );
    }
    assert!(
        after.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets must increase"
    );
}

#[tokio::test]
async fn keeps_the_latest_record_per_key_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let t = compact_topic(&b, "accounts", 1024);
    for i in 0..200 {
        put(
            &t,
            &format!("account-{}", i % 5),
            Some(&format!("balance-{i}")),
            1_000 + i,
        );
    }
    let before = read_all(&t);
    let p = t.partition(0).unwrap();
    let active = p.with_log(|l| l.active_base_offset()).unwrap();
    let size_before = p.size_bytes();
    let stats = clean(&t, &settings(), now_ms());
    assert!(stats.ran && stats.records_removed > 100, "{stats:?}");
    assert_eq!(stats.first_dirty_offset, active);
    let after = read_all(&t);
    assert_compacted(&before, &after, active);
    assert!(p.size_bytes() < size_before / 2);
    assert_eq!(p.high_watermark(), 200);
    // Cleaning again changes nothing.
    let again = clean(&t, &settings(), now_ms());
    assert_eq!(again.segments_rewritten + again.segments_removed, 0);
    assert_eq!(read_all(&t), after);
}

#[tokio::test]
async fn batches_in_every_codec_keep_offsets_timestamps_and_producer_fields() {
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path());
        let t = compact_topic(&b, "prices", 2048);
        for round in 0..30i64 {
            let records: Vec<Record> = (0..4)
                .map(|i| {
                    record(
                        &format!("sku-{}", (round + i) % 7),
                        Some(&format!("{round}-{i}")),
                        5_000 + round * 10 + i,
                    )
                })
                .collect();
            t.append(0, &batch(&records, codec), now_ms()).unwrap();
        }
        let before = read_all(&t);
        let p = t.partition(0).unwrap();
        let active = p.with_log(|l| l.active_base_offset()).unwrap();
        let originals: Vec<BatchHeader> = p.with_log(|l| l.batch_headers().unwrap()).unwrap();
        clean(&t, &settings(), now_ms());
        let after = read_all(&t);
        assert_compacted(&before, &after, active);
        assert!(after.len() < before.len(), "{codec:?}");
        for h in p.with_log(|l| l.batch_headers().unwrap()).unwrap() {
            let original = originals
                .iter()
                .find(|o| o.base_offset == h.base_offset)
                .unwrap();
            assert_eq!(h.last_offset_delta, original.last_offset_delta, "{codec:?}");
            assert_eq!(h.compression(), original.compression(), "{codec:?}");
            assert_eq!(h.base_sequence, original.base_sequence);
            assert!(h.records_count >= 1 && h.records_count <= original.records_count);
        }
    }
}

#[tokio::test]
async fn tombstones_stay_until_the_delete_horizon_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let t = compact_topic(&b, "users", 1024);
    for i in 0..20 {
        put(&t, &format!("user-{}", i % 4), Some("profile"), 1_000 + i);
    }
    let deleted = put(&t, "user-1", None, 2_000);
    for i in 0..20 {
        put(&t, "user-2", Some(&format!("v{i}")), 3_000 + i);
    }
    let now = 10_000_000;
    let stats = clean(&t, &settings(), now);
    assert!(stats.ran);
    let after = read_all(&t);
    assert!(
        after.contains(&(deleted, "user-1".into(), None, 2_000)),
        "{after:?}"
    );
    assert_eq!(after.iter().filter(|r| r.1 == "user-1").count(), 1);
    let checkpoint = CleanerCheckpoint::load(
        t.partition(0)
            .unwrap()
            .with_log(|l| l.dir().to_path_buf())
            .unwrap()
            .as_path(),
    );
    assert_eq!(checkpoint.tombstone_horizon_ms, Some(now + DAY_MS));

    // Not due yet: nothing is dirty and the horizon has not passed.
    let p = t.partition(0).unwrap();
    assert!(
        !clean_partition(p, &settings(), now + DAY_MS - 1, false)
            .unwrap()
            .ran
    );
    clean(&t, &settings(), now + DAY_MS - 1);
    assert!(read_all(&t).iter().any(|r| r.0 == deleted));
    // Due once the horizon passes, and the tombstone goes.
    let stats = clean_partition(p, &settings(), now + DAY_MS, false).unwrap();
    assert!(stats.ran);
    let after = read_all(&t);
    assert!(after.iter().all(|r| r.1 != "user-1"), "{after:?}");
    let active = p.with_log(|l| l.active_base_offset()).unwrap();
    assert_eq!(
        after
            .iter()
            .filter(|r| r.1 == "user-2" && r.0 < active)
            .count(),
        1
    );
    assert_eq!(
        CleanerCheckpoint::load(p.with_log(|l| l.dir().to_path_buf()).unwrap().as_path())
            .tombstone_horizon_ms,
        None
    );
}

#[tokio::test]
async fn a_small_map_cleans_in_several_passes() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let t = compact_topic(&b, "inventory", 1024);
    // 60 keys, each written three times, spread over many segments.
    for round in 0..3 {
        for k in 0..60 {
            put(
                &t,
                &format!("item-{k:03}"),
                Some(&format!("r{round}")),
                1_000,
            );
        }
    }
    let before = read_all(&t);
    let p = t.partition(0).unwrap();
    let active = p.with_log(|l| l.active_base_offset()).unwrap();
    // Room for about 25 keys: one segment's worth at a time.
    let small = CleanerSettings {
        map_bytes_max: 25 * (8 + MAP_ENTRY_OVERHEAD_BYTES),
        ..settings()
    };
    let first = clean(&t, &small, now_ms());
    assert!(
        first.map_full && first.first_dirty_offset < active,
        "{first:?}"
    );
    let mut passes = 1;
    loop {
        let stats = clean(&t, &small, now_ms());
        passes += 1;
        assert!(passes < 40, "cleaning never finished");
        if !stats.map_full {
            assert_eq!(stats.first_dirty_offset, active);
            break;
        }
    }
    assert!(passes > 2);
    assert_compacted(&before, &read_all(&t), active);
}

#[tokio::test]
async fn not_dirty_enough_means_no_cleaning() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let t = compact_topic(&b, "config", 1024);
    for i in 0..40 {
        put(&t, &format!("k{}", i % 3), Some("v"), 1_000 + i);
    }
    let p = t.partition(0).unwrap();
    assert!(
        clean_partition(p, &settings(), now_ms(), false)
            .unwrap()
            .ran
    );
    // One more segment's worth: a small share of the now mostly clean log.
    let never = CleanerSettings {
        min_dirty_ratio: 1.0,
        ..settings()
    };
    for i in 0..15 {
        put(&t, &format!("k{}", i % 3), Some("v"), 2_000 + i);
    }
    assert!(!clean_partition(p, &never, now_ms(), false).unwrap().ran);
    assert!(
        clean_partition(p, &settings(), now_ms(), false)
            .unwrap()
            .ran
    );
}

#[tokio::test]
async fn records_without_a_key_are_refused_on_compacted_topics_only() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let t = compact_topic(&b, "keyed", 1024);
    let mut keyless = record("x", Some("v"), 1);
    keyless.key = None;
    let mixed = batch(
        &[record("a", Some("v"), 1), keyless.clone()],
        Compression::Lz4,
    );
    match t.append(0, &mixed, now_ms()) {
        Err(BrokerError::InvalidRecords(e)) => {
            // Only the keyless one (index 1) is named: the client fails just that record.
            assert_eq!(e.total, 1);
            assert_eq!(e.records[0].0, 1);
            assert!(e.message().contains("without key"), "{}", e.message());
        }
        other => panic!(
            "keyless record accepted: {:?}",
            other.map(|p| p.base_offset)
        ),
    }
    assert_eq!(t.partition(0).unwrap().high_watermark(), 0);
    let plain = b
        .create_topic("plain", Some(1), BTreeMap::new(), false)
        .unwrap();
    assert!(
        plain
            .append(0, &batch(&[keyless], Compression::None), now_ms())
            .is_ok()
    );
}

#[tokio::test]
async fn compacted_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (after, active) = {
        let b = broker(dir.path());
        let t = compact_topic(&b, "orders", 1024);
        for i in 0..100 {
            put(
                &t,
                &format!("order-{}", i % 6),
                Some(&format!("state-{i}")),
                1_000 + i,
            );
        }
        clean(&t, &settings(), now_ms());
        let active = t
            .partition(0)
            .unwrap()
            .with_log(|l| l.active_base_offset())
            .unwrap();
        let after = read_all(&t);
        b.shutdown();
        (after, active)
    };
    let b = broker(dir.path());
    let t = b.topic("orders").unwrap();
    assert_eq!(read_all(&t), after);
    // Nothing new is dirty: the checkpoint survived too.
    let stats = clean(&t, &settings(), now_ms());
    assert_eq!(stats.first_dirty_offset, active);
    assert_eq!(stats.segments_rewritten, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_appends_during_cleaning_stay_correct() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let t = compact_topic(&b, "live", 1024);
    for i in 0..100 {
        put(&t, &format!("k{}", i % 5), Some(&format!("{i}")), i);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let t = t.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 10 {
                let seen = read_all(&t);
                assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
                // Every key's latest value as of the read is there: k0..k4 all present.
                for k in 0..5 {
                    assert!(seen.iter().any(|r| r.1 == format!("k{k}")), "k{k} missing");
                }
                reads += 1;
            }
            reads
        })
    };
    for round in 0..5 {
        for i in 0..60 {
            put(
                &t,
                &format!("k{}", i % 5),
                Some(&format!("{round}-{i}")),
                1_000 + i,
            );
        }
        let t2 = t.clone();
        tokio::task::spawn_blocking(move || clean(&t2, &settings(), now_ms()))
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() >= 10);
    let latest = read_all(&t);
    for k in 0..5 {
        let last = latest.iter().rfind(|r| r.1 == format!("k{k}")).unwrap();
        assert_eq!(last.2.as_deref(), Some(format!("4-{}", 55 + k).as_str()));
    }
}

/// A transactional batch holding `records` from `pid`.
fn txn_put(topic: &Topic, pid: i64, seq: i32, key: &str, value: &str) {
    let r = Record {
        producer_id: pid,
        producer_epoch: 0,
        transactional: true,
        ..record(key, Some(value), 1_000)
    };
    topic
        .append(
            0,
            &crate::test_util::batch(&[r], seq, Compression::None),
            now_ms(),
        )
        .unwrap();
}

#[tokio::test]
async fn aborted_records_never_replace_committed_ones_and_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let topic = compact_topic(&broker, "t", 200);
    let who = crate::Principal::anonymous();
    let (pid, epoch) = broker
        .init_transactional_producer(&who, "tx", 60_000, None)
        .await
        .unwrap();
    let add = [("t".to_string(), 0)];
    broker
        .add_partitions_to_txn(&who, "tx", pid, epoch, &add)
        .await
        .unwrap();
    txn_put(&topic, pid, 0, "k", "committed");
    broker.end_txn(&who, "tx", pid, epoch, true).await.unwrap();
    broker
        .add_partitions_to_txn(&who, "tx", pid, epoch, &add)
        .await
        .unwrap();
    txn_put(&topic, pid, 1, "k", "aborted");
    broker.end_txn(&who, "tx", pid, epoch, false).await.unwrap();
    // An open transaction past them: its record is above the LSO and stays as it is.
    broker
        .add_partitions_to_txn(&who, "tx", pid, epoch, &add)
        .await
        .unwrap();
    txn_put(&topic, pid, 2, "k", "open");
    for i in 0..20 {
        put(&topic, &format!("filler{i}"), Some("x"), 1_000);
    }
    let p = topic.partition(0).unwrap();
    assert_eq!(p.last_stable_offset(), 4);
    let stats = clean(&topic, &settings(), now_ms());
    assert!(stats.ran);
    let seen: Vec<(i64, Option<String>)> = read_all(&topic)
        .into_iter()
        .filter(|(_, k, _, _)| k == "k")
        .map(|(o, _, v, _)| (o, v))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, Some("committed".to_string())),
            (4, Some("open".to_string()))
        ],
        "the aborted record is gone, the committed one stays, the open one is untouched"
    );
    // The markers stay: the control batches at 1 and 3 are still in the log.
    let mut bytes = p.read(0, usize::MAX).unwrap().records;
    let controls = RecordBatchDecoder::decode_all(&mut bytes)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.records)
        .filter(|r| r.control)
        .count();
    assert_eq!(controls, 2);
}
