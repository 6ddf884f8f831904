//! Broker-level tests of retention, DeleteRecords and config changes: real partitions
//! on a temporary directory, driven through the broker's API.

use std::collections::BTreeMap;

use kafka_protocol::records::Compression;

use super::*;

/// One uncompressed batch of `count` records stamped `timestamp_ms` (about 90 bytes
/// for one record).
fn batch(count: i32, timestamp_ms: i64) -> Vec<u8> {
    let records: Vec<_> = (0..count)
        .map(|i| crate::test_util::record(&format!("k{i}"), Some(b"OrderPlaced"), timestamp_ms))
        .collect();
    crate::test_util::batch(&records, -1, Compression::None)
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Appends one-record batches with the given timestamps and waits until durable.
async fn produce(p: &Partition, timestamps: &[i64]) {
    for &ts in timestamps {
        p.append(&batch(1, ts), false, 1 << 20, now_ms())
            .unwrap()
            .durable()
            .await
            .unwrap();
    }
}

fn out_of_range(p: &Partition, offset: i64) -> bool {
    matches!(
        p.read(offset, 1 << 20),
        Err(BrokerError::OffsetOutOfRange { .. })
    )
}

/// Segment files (`.log`) in a partition directory.
fn segment_count(dir: &std::path::Path, topic: &str, partition: u32) -> usize {
    std::fs::read_dir(dir.join("log").join(format!("{topic}-{partition}")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}

#[tokio::test]
async fn time_retention_deletes_expired_segments_and_rolls_a_quiet_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
    let topic = broker
        .create_topic(
            "events",
            Some(1),
            configs(&[("retention.ms", "60000"), ("segment.bytes", "100")]),
            false,
        )
        .unwrap();
    let p = topic.partition(0).unwrap();
    let now = now_ms();
    // Four old records (one batch per segment), then two recent ones.
    produce(
        p,
        &[now - 600_000, now - 500_000, now - 400_000, now - 300_000],
    )
    .await;
    produce(p, &[now - 1_000, now]).await;
    assert_eq!(segment_count(dir.path(), "events", 0), 6);

    assert_eq!(broker.enforce_retention(now), 4);
    assert_eq!(p.log_start_offset(), 4);
    assert_eq!(segment_count(dir.path(), "events", 0), 2);
    assert!(out_of_range(p, 3));
    assert!(!p.read(4, 1 << 20).unwrap().records.is_empty());
    // Nothing more is due now; an hour later everything is, including the active
    // segment, which is rolled so that it can go.
    assert_eq!(broker.enforce_retention(now), 0);
    assert_eq!(broker.enforce_retention(now + 3_600_000), 2);
    assert_eq!(p.log_start_offset(), 6);
    assert_eq!(p.high_watermark(), 6);
    assert!(p.read(6, 1 << 20).unwrap().records.is_empty());
    // New produces continue the offsets.
    produce(p, &[now]).await;
    assert_eq!(p.high_watermark(), 7);
    assert!(!p.read(6, 1 << 20).unwrap().records.is_empty());
}

#[tokio::test]
async fn size_retention_keeps_the_newest_segments_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
    let one = batch(1, now_ms()).len() as u64;
    let topic = broker
        .create_topic(
            "sized",
            Some(1),
            configs(&[
                ("retention.bytes", &(3 * one).to_string()),
                ("segment.bytes", "100"),
            ]),
            false,
        )
        .unwrap();
    let p = topic.partition(0).unwrap();
    let now = now_ms();
    produce(p, &[now; 10]).await;
    assert_eq!(p.size_bytes(), 10 * one);
    assert_eq!(broker.enforce_retention(now), 7);
    assert_eq!(p.size_bytes(), 3 * one);
    assert_eq!(p.log_start_offset(), 7);
    assert!(out_of_range(p, 6));
}

#[tokio::test]
async fn compacted_topics_and_unlimited_retention_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
    let compacted = broker
        .create_topic(
            "compacted",
            Some(1),
            configs(&[
                ("cleanup.policy", "compact"),
                ("retention.ms", "1"),
                ("segment.bytes", "100"),
            ]),
            false,
        )
        .unwrap();
    let forever = broker
        .create_topic(
            "forever",
            Some(1),
            configs(&[
                ("retention.ms", "-1"),
                ("retention.bytes", "-1"),
                ("segment.bytes", "100"),
            ]),
            false,
        )
        .unwrap();
    for topic in [&compacted, &forever] {
        produce(topic.partition(0).unwrap(), &[1_000, 2_000, 3_000]).await;
    }
    assert_eq!(broker.enforce_retention(now_ms()), 0);
    assert_eq!(compacted.partition(0).unwrap().log_start_offset(), 0);
    assert_eq!(forever.partition(0).unwrap().log_start_offset(), 0);
}

#[tokio::test]
async fn the_broker_default_applies_when_the_topic_has_no_override() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new(dir.path().to_path_buf());
    config.retention_ms = 10_000;
    config.operator_topic_defaults.insert("retention.ms");
    config.log.segment_bytes_max = 100;
    let broker = Broker::open(config).unwrap();
    let topic = broker
        .create_topic("defaults", Some(1), BTreeMap::new(), false)
        .unwrap();
    let p = topic.partition(0).unwrap();
    let now = now_ms();
    produce(p, &[now - 20_000, now - 15_000, now]).await;
    assert_eq!(broker.enforce_retention(now), 2);
    assert_eq!(p.log_start_offset(), 2);
    let described = topic.all_configs(&broker.config);
    let ms = described.iter().find(|c| c.name == "retention.ms").unwrap();
    assert_eq!(ms.value, "10000");
    assert_eq!(ms.source, ConfigSource::StaticBroker);
}

#[tokio::test]
async fn delete_records_moves_the_start_offset_and_it_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::new(dir.path().to_path_buf());
    let now = now_ms();
    {
        let broker = Broker::open(config.clone()).unwrap();
        let topic = broker
            .create_topic(
                "orders",
                Some(1),
                configs(&[("segment.bytes", "300")]),
                false,
            )
            .unwrap();
        let p = topic.partition(0).unwrap();
        // Three one-record batches per segment: [0,1,2] [3,4,5] [6,7,8] [9].
        produce(p, &[now; 10]).await;
        assert_eq!(segment_count(dir.path(), "orders", 0), 4);
        // Above the high watermark, or negative other than -1: out of range.
        for bad in [11, -2] {
            assert!(matches!(
                p.delete_records_before(bad),
                Err(BrokerError::OffsetOutOfRange { .. })
            ));
        }
        // Inside the second segment: the first segment goes, offset 3 is unreadable.
        assert_eq!(p.delete_records_before(4).unwrap(), 4);
        assert_eq!(segment_count(dir.path(), "orders", 0), 3);
        assert!(out_of_range(p, 3));
        assert!(!p.read(4, 1 << 20).unwrap().records.is_empty());
        // Never backwards.
        assert_eq!(p.delete_records_before(2).unwrap(), 4);
        assert_eq!(p.log_start_offset(), 4);
        // A timestamp lookup skips the deleted records.
        assert_eq!(p.offset_for_timestamp(now).unwrap(), Some((4, now)));
        broker.shutdown();
    }
    {
        let broker = Broker::open(config.clone()).unwrap();
        let p = broker
            .topic("orders")
            .unwrap()
            .partition(0)
            .unwrap()
            .clone();
        assert_eq!(p.log_start_offset(), 4);
        assert!(out_of_range(&p, 3));
        // -1 means the high watermark: everything goes but the active segment.
        assert_eq!(p.delete_records_before(-1).unwrap(), 10);
        assert_eq!(segment_count(dir.path(), "orders", 0), 1);
        produce(&p, &[now]).await;
        // No clean shutdown this time.
    }
    let broker = Broker::open(config).unwrap();
    let p = broker
        .topic("orders")
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    assert_eq!(p.log_start_offset(), 10);
    assert_eq!(p.high_watermark(), 11);
    assert!(out_of_range(&p, 9));
}

#[tokio::test]
async fn altered_configs_take_effect_at_once_and_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::new(dir.path().to_path_buf());
    {
        let broker = Broker::open(config.clone()).unwrap();
        let topic = broker
            .create_topic(
                "orders",
                Some(1),
                configs(&[("retention.ms", "1000")]),
                false,
            )
            .unwrap();
        let p = topic.partition(0).unwrap().clone();
        let set = |name: &str, value: &str| (name.to_string(), ConfigOp::Set(value.to_string()));

        // validate_only changes nothing.
        broker
            .alter_topic_configs(
                "orders",
                ConfigChange::Incremental(vec![set("max.message.bytes", "10")]),
                true,
            )
            .unwrap();
        assert_eq!(
            broker.topic("orders").unwrap().max_message_bytes(),
            1_048_588
        );

        let altered = broker
            .alter_topic_configs(
                "orders",
                ConfigChange::Incremental(vec![
                    set("max.message.bytes", "50"),
                    set("segment.bytes", "100"),
                    ("retention.ms".to_string(), ConfigOp::Delete),
                ]),
                false,
            )
            .unwrap();
        assert_eq!(
            altered.configs,
            configs(&[("max.message.bytes", "50"), ("segment.bytes", "100")])
        );
        // The produce path looks the topic up per request: the new limit applies now.
        let current = broker.topic("orders").unwrap();
        assert_eq!(current.max_message_bytes(), 50);
        assert!(
            p.append(
                &batch(1, now_ms()),
                false,
                current.max_message_bytes(),
                now_ms()
            )
            .is_err()
        );
        // New segments use the new segment.bytes.
        produce(&p, &[now_ms(); 3]).await;
        assert_eq!(segment_count(dir.path(), "orders", 0), 3);

        // Bad input is refused and changes nothing.
        for bad in [
            ConfigChange::Incremental(vec![set("retention.mss", "1")]),
            ConfigChange::Incremental(vec![set("segment.bytes", "20")]),
            ConfigChange::Incremental(vec![(
                "retention.ms".to_string(),
                ConfigOp::Append("1".to_string()),
            )]),
            ConfigChange::Replace(configs(&[("cleanup.policy", "sometimes")])),
        ] {
            assert!(matches!(
                broker.alter_topic_configs("orders", bad, false),
                Err(BrokerError::InvalidConfig { .. })
            ));
        }
        assert!(matches!(
            broker.alter_topic_configs("nope", ConfigChange::Replace(BTreeMap::new()), false),
            Err(BrokerError::UnknownTopic(_))
        ));
        // AlterConfigs replaces the whole set of overrides.
        broker
            .alter_topic_configs(
                "orders",
                ConfigChange::Replace(configs(&[("message.timestamp.type", "LogAppendTime")])),
                false,
            )
            .unwrap();
        assert!(broker.topic("orders").unwrap().log_append_time());
        broker.shutdown();
    }
    let broker = Broker::open(config).unwrap();
    let topic = broker.topic("orders").unwrap();
    assert_eq!(
        topic.configs,
        configs(&[("message.timestamp.type", "LogAppendTime")])
    );
}
