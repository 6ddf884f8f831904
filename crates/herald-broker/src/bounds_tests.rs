//! The decompression bounds on a real broker: a zstd bomb is refused at produce on plain
//! and compacted topics, and batches stored before a bound was lowered are stepped over
//! (logged and counted) by the work queue, the cleaner and ListOffsets, never decoded
//! whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::records::{Compression, Record};

use crate::cleaner::{CleanerSettings, clean_partition};
use crate::queue::SubscriptionSettings;
use crate::{Broker, BrokerConfig, BrokerError, FlushPolicy, now_ms, test_util};

const MIB: usize = 1 << 20;

fn config(dir: &std::path::Path, batch_max: usize) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir.to_path_buf());
    config.compaction_check_interval_ms = 0;
    config.flush = FlushPolicy::Os;
    config.batch_decompressed_bytes_max = batch_max;
    config.record_bytes_max = batch_max / 2;
    config
}

/// Open, waiting for a dropped broker's background tasks to let go of the directory.
async fn open(config: BrokerConfig) -> Arc<Broker> {
    for _ in 0..100 {
        if let Ok(b) = Broker::open(config.clone()) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker did not reopen");
}

fn record(key: &str, value_bytes: usize, timestamp: i64) -> Record {
    test_util::record(key, Some(&vec![0u8; value_bytes]), timestamp)
}

/// One zstd batch of `count` records of `value_bytes` zeros each.
fn zstd_batch(key: &str, count: usize, value_bytes: usize, timestamp: i64) -> Vec<u8> {
    let records: Vec<_> = (0..count)
        .map(|i| record(&format!("{key}{i}"), value_bytes, timestamp))
        .collect();
    test_util::batch(&records, 0, Compression::Zstd)
}

fn topic_configs(compacted: bool) -> BTreeMap<String, String> {
    let mut configs = BTreeMap::from([("segment.bytes".to_string(), "4096".to_string())]);
    if compacted {
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
    }
    configs
}

#[tokio::test]
async fn a_zstd_bomb_is_refused_at_produce_on_plain_and_compacted_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(config(dir.path(), 4 * MIB)).await;
    // Three 1.5 MiB records of zeros: 4.5 MiB decompressed, a few hundred bytes stored.
    let bomb = zstd_batch("k", 3, 3 * MIB / 2, 1_000);
    assert!(bomb.len() < 4096, "{} bytes is not a bomb", bomb.len());
    for (name, compacted) in [("plain", false), ("compacted", true)] {
        let topic = broker
            .create_topic(name, Some(1), topic_configs(compacted), false)
            .unwrap();
        let refused = topic.append(0, &bomb, now_ms());
        assert!(
            matches!(
                refused,
                Err(BrokerError::BatchDecompressedTooLarge { max }) if max == 4 * MIB
            ),
            "{name}: {:?}",
            refused.map(|p| p.base_offset)
        );
        // One record over record_bytes_max (2 MiB) in a batch under the batch bound.
        let big_record = zstd_batch("k", 1, 3 * MIB, 1_000);
        assert!(matches!(
            topic.append(0, &big_record, now_ms()),
            Err(BrokerError::RecordTooLarge { max, .. }) if max == 2 * MIB
        ));
        // Under both bounds: stored.
        let fine = zstd_batch("k", 3, MIB, 1_000);
        assert_eq!(topic.append(0, &fine, now_ms()).unwrap().base_offset, 0);
        assert_eq!(topic.partition(0).unwrap().high_watermark(), 3);
    }
}

/// Writes, with the default bounds, a small batch, a 9 MiB zstd batch, a small batch
/// (offsets 0-1, 2-4, 5-6) and two fillers (7, 8) into `name`; then reopens with a 1 MiB
/// bound.
async fn stored_bomb(dir: &std::path::Path, name: &str, compacted: bool) -> Arc<Broker> {
    let broker = open(config(dir, 64 * MIB)).await;
    let topic = broker
        .create_topic(name, Some(1), topic_configs(compacted), false)
        .unwrap();
    for batch in [
        zstd_batch("a", 2, 10, 1_000),
        zstd_batch("b", 3, 3 * MIB, 2_000),
        zstd_batch("c", 2, 10, 3_000),
        // Past segment.bytes: the batches above are in sealed segments.
        test_util::batch(&[record("d", 3_000, 4_000)], 0, Compression::None),
        test_util::batch(&[record("e", 3_000, 4_000)], 0, Compression::None),
    ] {
        topic.append(0, &batch, now_ms()).unwrap();
    }
    broker.shutdown();
    drop((topic, broker));
    let broker = open(config(dir, MIB)).await;
    assert_eq!(broker.oversized_batches_skipped(), 0);
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_queue_steps_over_a_stored_batch_past_a_lowered_bound() {
    let dir = tempfile::tempdir().unwrap();
    let broker = stored_bomb(dir.path(), "jobs", false).await;
    broker
        .create_subscription("jobs", "workers", SubscriptionSettings::default())
        .await
        .unwrap();
    let got = broker.receive("jobs", "workers", 100, 0).await.unwrap();
    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 5, 6, 7, 8]);
    assert!(broker.oversized_batches_skipped() >= 1);
    for r in &got {
        broker.ack(&r.receipt).await.unwrap();
    }
    let stats = broker.subscription_stats("jobs", "workers").unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn the_cleaner_keeps_a_stored_batch_past_a_lowered_bound_whole() {
    let dir = tempfile::tempdir().unwrap();
    let broker = stored_bomb(dir.path(), "latest", true).await;
    let topic = broker.topic("latest").unwrap();
    let p = topic.partition(0).unwrap();
    // A later value for a key of the first batch, so cleaning has work to do.
    for batch in [
        zstd_batch("a", 1, 10, 5_000),
        // Seals the segment holding it: only sealed segments feed the offset map.
        test_util::batch(&[record("f", 3_000, 5_000)], 0, Compression::None),
        test_util::batch(&[record("g", 3_000, 5_000)], 0, Compression::None),
    ] {
        topic.append(0, &batch, now_ms()).unwrap();
    }
    let settings = CleanerSettings {
        map_bytes_max: MIB,
        delete_retention_ms: 0,
        min_dirty_ratio: 0.0,
    };
    let stats = clean_partition(p, &settings, now_ms(), true).unwrap();
    assert!(stats.ran);
    assert!(broker.oversized_batches_skipped() >= 1);
    // The oversized batch is still there, byte for byte the stored one.
    let read = p.read(2, 1).unwrap().records;
    let header = herald_log::BatchHeader::parse(&read).unwrap();
    assert_eq!((header.base_offset, header.records_count), (2, 3));
    // Offset 0 ("a0") was superseded by offset 9 and is gone.
    let first = herald_log::BatchHeader::parse(&p.read(0, 1).unwrap().records).unwrap();
    assert_eq!((first.base_offset, first.records_count), (0, 1));
}

#[tokio::test]
async fn list_offsets_by_timestamp_answers_with_an_oversized_batch_itself() {
    let dir = tempfile::tempdir().unwrap();
    let broker = stored_bomb(dir.path(), "t", false).await;
    let p = broker.topic("t").unwrap().partition(0).unwrap().clone();
    assert_eq!(p.offset_for_timestamp(1_500).unwrap(), Some((2, 1_500)));
    assert_eq!(broker.oversized_batches_skipped(), 1);
    assert_eq!(p.offset_for_timestamp(2_500).unwrap(), Some((5, 3_000)));
}
