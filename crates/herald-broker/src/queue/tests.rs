//! Work-queue scenarios on a real broker in a temporary directory: real record batches
//! in the log, real redb state, close and reopen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record};

use super::*;
use crate::config::BrokerConfig;
use crate::test_util;

fn open(dir: &std::path::Path) -> Arc<Broker> {
    Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap()
}

/// Reopen after a drop; background tasks may hold the broker for one timer pass.
async fn reopen(dir: &std::path::Path) -> Arc<Broker> {
    for _ in 0..100 {
        if let Ok(b) = Broker::open(BrokerConfig::new(dir.to_path_buf())) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker did not reopen");
}

fn rec(key: &str, value: &str, headers: &[(&str, &str)]) -> Record {
    let mut r = test_util::record(key, Some(value.as_bytes()), now_ms());
    for (k, v) in headers {
        r.headers.insert(
            StrBytes::from_string(k.to_string()),
            Some(Bytes::from(v.to_string())),
        );
    }
    r
}

async fn publish(broker: &Broker, topic: &str, partition: i32, records: &[Record]) {
    let t = broker.topic(topic).unwrap();
    let batch = test_util::batch(records, -1, Compression::None);
    t.append(partition, &batch, now_ms())
        .unwrap()
        .durable()
        .await
        .unwrap();
}

/// Every record of stored batches, read with the Kafka codec (as a consumer would).
fn decode(bytes: Bytes) -> Result<Vec<Record>> {
    let mut buf = bytes;
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf)
        .map_err(|e| BrokerError::CorruptLog(e.to_string()))?;
    Ok(sets.into_iter().flat_map(|s| s.records).collect())
}

fn header<'a>(r: &'a ReceivedRecord, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn fast() -> SubscriptionSettings {
    SubscriptionSettings {
        backoff_base_ms: 20,
        backoff_factor: 2.0,
        backoff_max_ms: 10_000,
        backoff_jitter: 0.0,
        max_deliveries: 3,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_after_max_deliveries_with_growing_backoff_and_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("orders", Some(1), BTreeMap::new(), false)
        .unwrap();
    broker
        .create_subscription("orders", "billing", fast())
        .await
        .unwrap();
    publish(
        &broker,
        "orders",
        0,
        &[rec("o-1", "OrderPlaced", &[("trace", "t1")])],
    )
    .await;

    let mut delivered_at = Vec::new();
    for attempt in 1..=3u32 {
        let got = broker
            .receive("orders", "billing", 10, 5_000)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].delivery_count, attempt);
        assert_eq!(got[0].value.as_deref(), Some(&b"OrderPlaced"[..]));
        delivered_at.push(now_ms());
        let dead = broker
            .nack(&got[0].receipt, Some(format!("card declined #{attempt}")))
            .await
            .unwrap();
        assert_eq!(dead, attempt == 3);
        // A nacked receipt is spent.
        assert!(broker.ack(&got[0].receipt).await.is_err());
    }
    // Backoff before retry 1 is >= 20 ms, before retry 2 >= 40 ms.
    assert!(delivered_at[1] - delivered_at[0] >= 20);
    assert!(delivered_at[2] - delivered_at[1] >= 40);
    assert!(
        broker
            .receive("orders", "billing", 10, 200)
            .await
            .unwrap()
            .is_empty()
    );

    let stats = broker.subscription_stats("orders", "billing").unwrap();
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stats.redeliveries, 2);
    assert_eq!(stats.in_flight + stats.depth + stats.delayed, 0);

    let dlq = broker.list_dead_letters("orders.billing.dlq", 100).unwrap();
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.key.as_deref(), Some(&b"o-1"[..]));
    assert_eq!(d.value.as_deref(), Some(&b"OrderPlaced"[..]));
    assert_eq!(header(d, "trace"), Some("t1"));
    assert_eq!(header(d, "herald-dlq-source-topic"), Some("orders"));
    assert_eq!(header(d, "herald-dlq-source-partition"), Some("0"));
    assert_eq!(header(d, "herald-dlq-source-offset"), Some("0"));
    assert_eq!(header(d, "herald-dlq-delivery-count"), Some("3"));
    assert_eq!(header(d, "herald-dlq-last-error"), Some("card declined #3"));
    let first: i64 = header(d, "herald-dlq-first-delivery-at")
        .unwrap()
        .parse()
        .unwrap();
    let dead: i64 = header(d, "herald-dlq-dead-lettered-at")
        .unwrap()
        .parse()
        .unwrap();
    assert!(first <= dead);

    // Redrive: back in the source topic with the original headers only, gone from the DLQ.
    assert_eq!(broker.redrive("orders.billing.dlq").await.unwrap(), 1);
    assert!(
        broker
            .list_dead_letters("orders.billing.dlq", 100)
            .unwrap()
            .is_empty()
    );
    let again = broker
        .receive("orders", "billing", 10, 5_000)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].offset, 1);
    assert_eq!(again[0].value.as_deref(), Some(&b"OrderPlaced"[..]));
    assert_eq!(header(&again[0], "trace"), Some("t1"));
    assert!(header(&again[0], "herald-dlq-source-topic").is_none());
    broker.ack(&again[0].receipt).await.unwrap();
    // The redrive floor is durable.
    drop(broker);
    let broker = reopen(dir.path()).await;
    assert!(
        broker
            .list_dead_letters("orders.billing.dlq", 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(broker.redrive("orders.billing.dlq").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_redelivers_and_the_old_receipt_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("jobs", Some(1), BTreeMap::new(), false)
        .unwrap();
    let settings = SubscriptionSettings {
        lease_ms: 100,
        ..fast()
    };
    broker
        .create_subscription("jobs", "w", settings)
        .await
        .unwrap();
    publish(&broker, "jobs", 0, &[rec("k", "v", &[])]).await;
    let first = broker.receive("jobs", "w", 1, 0).await.unwrap();
    assert_eq!(first[0].delivery_count, 1);
    // The lease is short, so on a loaded machine it may lapse again before the
    // extension: then take the next delivery and try again.
    let second = loop {
        let got = broker.receive("jobs", "w", 1, 10_000).await.unwrap();
        assert_eq!(got[0].offset, first[0].offset);
        assert!(got[0].delivery_count >= 2);
        match broker.extend_lease(&got[0].receipt, Some(60_000)).await {
            Ok(deadline) => {
                assert!(deadline > now_ms() + 50_000);
                break got;
            }
            Err(BrokerError::ReceiptNotLeased { .. } | BrokerError::StaleReceipt { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert!(matches!(
        broker.ack(&first[0].receipt).await,
        Err(BrokerError::StaleReceipt { current_attempt, .. }) if current_attempt == second[0].delivery_count
    ));
    assert!(matches!(
        broker.ack("nonsense").await,
        Err(BrokerError::InvalidReceipt(_))
    ));
    broker.ack(&second[0].receipt).await.unwrap();
    assert!(matches!(
        broker.ack(&second[0].receipt).await,
        Err(BrokerError::ReceiptNotLeased { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_consume_ten_thousand_records_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("tasks", Some(2), BTreeMap::new(), false)
        .unwrap();
    let settings = SubscriptionSettings {
        max_deliveries: 10,
        ..fast()
    };
    broker
        .create_subscription("tasks", "pool", settings)
        .await
        .unwrap();
    const TOTAL: usize = 10_000;
    for b in 0..(TOTAL / 100) {
        let records: Vec<Record> = (0..100)
            .map(|i| {
                rec(
                    &format!("k{}", b * 100 + i),
                    &format!("{}", b * 100 + i),
                    &[],
                )
            })
            .collect();
        publish(&broker, "tasks", (b % 2) as i32, &records).await;
    }
    // Each worker fails the first delivery of every record whose value is divisible by 97.
    let deliveries = Arc::new(std::sync::Mutex::new(HashMap::<String, u32>::new()));
    let acked = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let broker = broker.clone();
        let deliveries = deliveries.clone();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            loop {
                if acked.lock().unwrap().len() >= TOTAL {
                    return;
                }
                let got = broker.receive("tasks", "pool", 100, 200).await.unwrap();
                let mut to_ack = Vec::new();
                for r in got {
                    let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                    *deliveries.lock().unwrap().entry(value.clone()).or_default() += 1;
                    let n: usize = value.parse().unwrap();
                    if n.is_multiple_of(97) && r.delivery_count == 1 {
                        broker.nack(&r.receipt, Some("flaky".into())).await.unwrap();
                    } else {
                        to_ack.push((value, r.receipt));
                    }
                }
                let receipts: Vec<String> = to_ack.iter().map(|(_, r)| r.clone()).collect();
                for ((value, _), outcome) in to_ack.iter().zip(broker.ack_many(&receipts).await) {
                    outcome.unwrap();
                    assert!(
                        acked.lock().unwrap().insert(value.clone()),
                        "{value} acked twice"
                    );
                }
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("workers did not finish")
            .unwrap();
    }
    let deliveries = deliveries.lock().unwrap();
    assert_eq!(acked.lock().unwrap().len(), TOTAL);
    for (value, count) in deliveries.iter() {
        let n: usize = value.parse().unwrap();
        let expected = if n.is_multiple_of(97) { 2 } else { 1 };
        assert_eq!(*count, expected, "record {value}");
    }
    let stats = broker.subscription_stats("tasks", "pool").unwrap();
    assert_eq!(stats.depth + stats.in_flight + stats.delayed, 0);
    assert_eq!(stats.redeliveries, (TOTAL as u64).div_ceil(97));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_records_are_not_delivered_early_and_bad_delays_do_not_wedge() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("later", Some(1), BTreeMap::new(), false)
        .unwrap();
    broker
        .create_subscription("later", "s", fast())
        .await
        .unwrap();
    let at = now_ms() + 2_000;
    publish(
        &broker,
        "later",
        0,
        &[
            rec("a", "delayed", &[(DELIVER_AT_HEADER, &at.to_string())]),
            rec("b", "bad", &[(DELIVER_AT_HEADER, "tomorrow")]),
            rec("c", "now", &[]),
        ],
    )
    .await;
    let got = broker.receive("later", "s", 10, 0).await.unwrap();
    let values: Vec<_> = got.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, vec![Bytes::from("bad"), Bytes::from("now")]);
    let stats = broker.subscription_stats("later", "s").unwrap();
    assert_eq!(
        (stats.delayed, stats.bad_deliver_at, stats.in_flight),
        (1, 1, 2)
    );
    let late = broker.receive("later", "s", 10, 10_000).await.unwrap();
    assert!(now_ms() >= at);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].value.as_deref(), Some(&b"delayed"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_and_reopening_mid_lease_loses_nothing_and_acks_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SubscriptionSettings {
        lease_ms: 1_000,
        ..fast()
    };
    let acked: HashSet<i64>;
    {
        let broker = open(dir.path());
        broker
            .create_topic("q", Some(1), BTreeMap::new(), false)
            .unwrap();
        broker
            .create_subscription("q", "s", settings.clone())
            .await
            .unwrap();
        let records: Vec<Record> = (0..10).map(|i| rec("k", &i.to_string(), &[])).collect();
        publish(&broker, "q", 0, &records).await;
        let got = broker.receive("q", "s", 5, 0).await.unwrap();
        assert_eq!(got.len(), 5);
        broker.ack(&got[0].receipt).await.unwrap();
        broker.ack(&got[3].receipt).await.unwrap();
        acked = [got[0].offset, got[3].offset].into();
        broker.shutdown();
    }
    let broker = reopen(dir.path()).await;
    assert_eq!(broker.subscription_settings("q", "s").unwrap(), settings);
    let stats = broker.subscription_stats("q", "s").unwrap();
    assert_eq!(stats.in_flight + stats.depth + stats.delayed, 8);
    let mut seen: HashMap<i64, u32> = HashMap::new();
    while seen.len() < 8 {
        let got = broker.receive("q", "s", 10, 10_000).await.unwrap();
        assert!(!got.is_empty(), "records lost after reopen: saw {seen:?}");
        for r in got {
            assert!(
                !acked.contains(&r.offset),
                "acked offset {} delivered again",
                r.offset
            );
            seen.insert(r.offset, r.delivery_count);
            broker.ack(&r.receipt).await.unwrap();
        }
    }
    // The three leased before the restart came back after their lease expired.
    assert_eq!(seen.values().filter(|c| **c == 2).count(), 3);
    assert_eq!(broker.subscription_stats("q", "s").unwrap().depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_per_key_and_max_unacked_bound_what_is_leased() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("acct", Some(1), BTreeMap::new(), false)
        .unwrap();
    let settings = SubscriptionSettings {
        ordered_by_key: true,
        max_unacked: 4,
        ..fast()
    };
    broker
        .create_subscription("acct", "s", settings)
        .await
        .unwrap();
    let keys = ["a", "a", "b", "c", "d", "e"];
    let records: Vec<Record> = keys.iter().map(|k| rec(k, k, &[])).collect();
    publish(&broker, "acct", 0, &records).await;
    let got = broker.receive("acct", "s", 10, 0).await.unwrap();
    // Window of 4 (offsets 0-3), and offset 1 waits for offset 0 (same key).
    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![0, 2, 3]);
    broker.nack(&got[0].receipt, None).await.unwrap();
    let retry = broker.receive("acct", "s", 10, 5_000).await.unwrap();
    assert_eq!(retry.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0]);
    broker.ack(&retry[0].receipt).await.unwrap();
    let next = broker.receive("acct", "s", 10, 0).await.unwrap();
    assert_eq!(
        next.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![1, 4]
    );
    assert!(matches!(
        broker.create_subscription("acct", "s", fast()).await,
        Err(BrokerError::SubscriptionExists { .. })
    ));
    assert_eq!(broker.list_subscriptions().len(), 1);
    broker.delete_subscription("acct", "s").await.unwrap();
    assert!(matches!(
        broker.receive("acct", "s", 1, 0).await,
        Err(BrokerError::UnknownSubscription { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_message_id_is_not_appended_again_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let batch = test_util::batch(&[rec("k", "PaymentTaken", &[])], -1, Compression::None);
    {
        let broker = open(dir.path());
        broker
            .create_topic("pay", Some(2), BTreeMap::new(), false)
            .unwrap();
        let first = broker
            .publish_dedup("pay", 1, &batch, "m-1", None)
            .await
            .unwrap();
        assert_eq!(
            (first.partition, first.offset, first.duplicate),
            (1, 0, false)
        );
        let again = broker
            .publish_dedup("pay", 0, &batch, "m-1", None)
            .await
            .unwrap();
        assert_eq!(
            (again.partition, again.offset, again.duplicate),
            (1, 0, true)
        );
        let other = broker
            .publish_dedup("pay", 1, &batch, "m-2", None)
            .await
            .unwrap();
        assert_eq!((other.offset, other.duplicate), (1, false));
        assert!(
            broker
                .publish_dedup("pay", 1, &batch, "", None)
                .await
                .is_err()
        );
    }
    let broker = reopen(dir.path()).await;
    let again = broker
        .publish_dedup("pay", 1, &batch, "m-1", None)
        .await
        .unwrap();
    assert!(again.duplicate);
    // A zero window dedups nothing.
    let fresh = broker
        .publish_dedup("pay", 1, &batch, "m-1", Some(0))
        .await
        .unwrap();
    assert_eq!((fresh.offset, fresh.duplicate), (2, false));
    let t = broker.topic("pay").unwrap();
    assert_eq!(t.partition(0).unwrap().high_watermark(), 0);
    assert_eq!(t.partition(1).unwrap().high_watermark(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_returns_many_records_to_their_source_partitions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("src", Some(2), BTreeMap::new(), false)
        .unwrap();
    broker
        .create_topic("src.sub.dlq", Some(1), BTreeMap::new(), false)
        .unwrap();
    // 30 dead letters alternating between the two source partitions, plus one whose
    // source topic no longer exists.
    let mut dead: Vec<Record> = (0..30)
        .map(|i| {
            let partition = (i % 2).to_string();
            rec(
                "k",
                &format!("v{i}"),
                &[
                    (DLQ_SOURCE_TOPIC_HEADER, "src"),
                    (DLQ_SOURCE_PARTITION_HEADER, &partition),
                    ("herald-dlq-last-error", "boom"),
                    ("trace", "t"),
                ],
            )
        })
        .collect();
    dead.push(rec("k", "orphan", &[(DLQ_SOURCE_TOPIC_HEADER, "gone")]));
    publish(&broker, "src.sub.dlq", 0, &dead).await;

    assert_eq!(broker.redrive("src.sub.dlq").await.unwrap(), 30);
    for partition in 0..2 {
        let read = broker
            .topic("src")
            .unwrap()
            .partition(partition)
            .unwrap()
            .read(0, usize::MAX)
            .unwrap();
        let records = decode(read.records).unwrap();
        let values: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..30)
            .filter(|i| i % 2 == partition)
            .map(|i| format!("v{i}"))
            .collect();
        assert_eq!(values, expected);
        for r in &records {
            assert!(r.headers.keys().all(|k| !k.starts_with(DLQ_HEADER_PREFIX)));
            assert!(header_value(r, "trace").is_some());
        }
    }
    assert!(
        broker
            .list_dead_letters("src.sub.dlq", 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(broker.redrive("src.sub.dlq").await.unwrap(), 0);
}

/// A topic deleted and created again under its name starts clean: no subscription, no
/// redrive floor (as a dead-letter topic), no remembered message ids, also after reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_takes_its_subscriptions_floors_and_message_ids_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SubscriptionSettings {
        max_deliveries: 1,
        ..fast()
    };
    let batch = test_util::batch(&[rec("k", "v", &[])], -1, Compression::None);
    {
        let broker = open(dir.path());
        broker
            .create_topic("jobs", Some(1), BTreeMap::new(), false)
            .unwrap();
        broker
            .create_subscription("jobs", "w", settings.clone())
            .await
            .unwrap();
        for id in ["a", "b"] {
            broker
                .publish_dedup("jobs", 0, &batch, id, None)
                .await
                .unwrap();
        }
        for r in broker.receive("jobs", "w", 10, 5_000).await.unwrap() {
            assert!(broker.nack(&r.receipt, None).await.unwrap());
        }
        assert_eq!(broker.redrive("jobs.w.dlq").await.unwrap(), 2);
        broker.delete_topic("jobs").unwrap();
        broker.delete_topic("jobs.w.dlq").unwrap();
        assert!(broker.list_subscriptions().is_empty());
        assert!(matches!(
            broker.receive("jobs", "w", 1, 0).await,
            Err(BrokerError::UnknownSubscription { .. })
        ));
        broker.shutdown();
    }
    let broker = reopen(dir.path()).await;
    assert!(
        broker.list_subscriptions().is_empty(),
        "a subscription outlived its topic"
    );
    broker
        .create_topic("jobs", Some(1), BTreeMap::new(), false)
        .unwrap();
    let again = broker
        .publish_dedup("jobs", 0, &batch, "a", None)
        .await
        .unwrap();
    assert_eq!((again.offset, again.duplicate), (0, false));
    broker
        .create_subscription("jobs", "w", settings)
        .await
        .unwrap();
    let got = broker.receive("jobs", "w", 10, 5_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(broker.nack(&got[0].receipt, None).await.unwrap());
    // The new dead-letter topic is listed from its start, not the old topic's floor.
    assert_eq!(broker.list_dead_letters("jobs.w.dlq", 10).unwrap().len(), 1);
}

fn header_value<'a>(r: &'a Record, name: &str) -> Option<&'a Option<Bytes>> {
    super::header(r, name)
}

/// A state with every entry kind, as a worker leaves it mid-flight.
fn busy_state() -> PartitionQueue {
    let policy = state::Policy {
        lease_ms: 30_000,
        max_deliveries: 2,
        max_unacked: 100,
        ordered_by_key: false,
    };
    let mut q = PartitionQueue::new(10);
    for offset in 10..20 {
        q.track(offset, (offset % 3 != 0).then_some(offset as u64 * 7), 0);
    }
    q.track(20, None, 9_000_000_000_000);
    let leased = q.lease(1_000, 6, &policy);
    assert_eq!(leased.len(), 6);
    q.ack(12, 1).unwrap();
    q.nack(13, 1, Some("card declined".into()), &policy, |_| 5_000)
        .unwrap();
    q.dead_lettered = 3;
    q.expired_leases = 2;
    q
}

/// Store `changes` into a model of the meta store's rows: (header, entries by offset).
fn apply(rows: &mut (Vec<u8>, BTreeMap<i64, Vec<u8>>), changes: &Changes) -> usize {
    let (header, entries) = encode_changes(changes).unwrap();
    if let Some(below) = changes.remove_below {
        rows.1.retain(|o, _| *o >= below);
    }
    let written = header.len() + entries.iter().map(|(_, e)| e.len()).sum::<usize>();
    rows.0 = header;
    rows.1.extend(entries);
    written
}

fn load(rows: &(Vec<u8>, BTreeMap<i64, Vec<u8>>)) -> PartitionQueue {
    let Ok(Stored::Header(header)) = decode_state(&rows.0) else {
        panic!("a header")
    };
    let entries = rows
        .1
        .iter()
        .map(|(o, e)| (*o, decode_entry(e).unwrap()))
        .collect();
    PartitionQueue::from_stored(header, entries)
}

#[test]
fn stored_state_round_trips_and_a_commit_writes_only_what_changed() {
    let mut q = busy_state();
    let mut rows = (Vec::new(), BTreeMap::new());
    let first = apply(&mut rows, &q.take_changes());
    assert_eq!(rows.0[0], HEADER_POSTCARD_V2);
    let back = load(&rows);
    assert_eq!((back.floor, back.scan_next), (q.floor, q.scan_next));
    assert_eq!(back.entries, q.entries);
    assert_eq!((back.dead_lettered, back.expired_leases), (3, 2));
    // One ack later, a commit writes the header and that one entry, not the window.
    q.ack(14, 1).unwrap();
    let changes = q.take_changes();
    assert_eq!(changes.entries.len(), 1);
    let second = apply(&mut rows, &changes);
    assert!(second * 4 < first, "{second} vs {first} bytes");
    assert_eq!(load(&rows).entries, q.entries);
    // Nothing changed: nothing but the header.
    assert!(q.take_changes().entries.is_empty());
}

#[test]
fn states_stored_whole_before_entry_rows_still_load() {
    let q = busy_state();
    for bytes in [
        postcard::to_extend(&q, vec![STATE_POSTCARD_V1]).unwrap(),
        serde_json::to_vec(&q).unwrap(),
    ] {
        let Ok(Stored::Whole(mut back)) = decode_state(&bytes) else {
            panic!("a whole state")
        };
        assert_eq!(back.entries, q.entries);
        // The first commit after loading one writes every entry, and clears below.
        back.mark_all_changed();
        let mut rows = (Vec::new(), BTreeMap::new());
        let changes = back.take_changes();
        assert!(changes.remove_below.is_some());
        apply(&mut rows, &changes);
        assert_eq!(load(&rows).entries, q.entries);
    }
    assert!(decode_state(&[]).is_err());
    assert!(
        decode_state(&[7, 1, 2])
            .err()
            .unwrap()
            .contains("unknown state format")
    );
    // Truncated postcard is an error, not a panic or a partial state.
    let mut q = busy_state();
    let (header, entries) = encode_changes(&q.take_changes()).unwrap();
    for cut in 1..header.len() {
        assert!(decode_state(&header[..cut]).is_err(), "cut at {cut}");
    }
    let entry = &entries[0].1;
    for cut in 0..entry.len() {
        assert!(decode_entry(&entry[..cut]).is_err(), "cut at {cut}");
    }
}

/// The timer's pass over records left half dead-lettered (flagged at start-up and for a
/// new subscription) ran while a nack was writing the same record's dead-letter copy,
/// and wrote a second copy (seen in CI: a DLQ with source offsets [0, 0, 1, 2]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_dead_lettered_once_when_the_timer_races_the_nack() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("orders", Some(1), BTreeMap::new(), false)
        .unwrap();
    for round in 0..20 {
        let name = format!("billing-{round}");
        let settings = SubscriptionSettings {
            max_deliveries: 1,
            ..fast()
        };
        broker
            .create_subscription("orders", &name, settings)
            .await
            .unwrap();
        if round == 0 {
            publish(&broker, "orders", 0, &[rec("o-1", "OrderPlaced", &[])]).await;
        }
        let got = broker.receive("orders", &name, 1, 5_000).await.unwrap();
        assert_eq!(got.len(), 1);
        // The subscription is new, so the timer pass looks for half-done dead letters.
        let (dead, tick) = tokio::join!(broker.nack(&got[0].receipt, None), broker.queue_tick());
        assert!(dead.unwrap());
        tick.unwrap();
        let dlq = format!("orders.{name}.dlq");
        let letters = broker.list_dead_letters(&dlq, 10).unwrap();
        assert_eq!(letters.len(), 1, "round {round}: {} copies", letters.len());
    }
}

#[tokio::test]
async fn a_filtered_subscription_takes_only_passing_records_and_revive_hands_one_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("t", Some(1), BTreeMap::new(), false)
        .unwrap();
    let mut records = Vec::new();
    for i in 0..2_000 {
        let key = if i % 500 == 7 { "wanted" } else { "other" };
        records.push(rec(key, &format!("v{i}"), &[]));
    }
    publish(&broker, "t", 0, &records).await;
    let settings = SubscriptionSettings {
        filter: Some(filter::RecordFilter::key("wanted")),
        ..Default::default()
    };
    broker
        .create_subscription("t", "s", settings)
        .await
        .unwrap();
    let got = broker.receive("t", "s", 100, 2_000).await.unwrap();
    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![7, 507, 1007, 1507]);
    for r in &got {
        broker.ack(&r.receipt).await.unwrap();
    }
    assert!(broker.receive("t", "s", 100, 0).await.unwrap().is_empty());
    // Everything before the end is finished: the filter's skips count as done.
    assert_eq!(broker.subscription_floor("t", "s", 0).unwrap(), 2_000);
    // A finished record handed out again, as new, once.
    assert_eq!(
        broker
            .revive("t", "s", 0, &[507, 507, 5_000])
            .await
            .unwrap(),
        1
    );
    let again = broker.receive("t", "s", 100, 0).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|r| (r.offset, r.delivery_count))
            .collect::<Vec<_>>(),
        vec![(507, 1)]
    );
    assert_eq!(broker.subscription_floor("t", "s", 0).unwrap(), 507);
    broker.ack(&again[0].receipt).await.unwrap();
    assert_eq!(broker.subscription_floor("t", "s", 0).unwrap(), 2_000);
    // The revived state survives a restart.
    assert_eq!(broker.revive("t", "s", 0, &[1007]).await.unwrap(), 1);
    drop(broker);
    let broker = reopen(dir.path()).await;
    let after = broker.receive("t", "s", 100, 0).await.unwrap();
    assert_eq!(
        after.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![1007]
    );
}

#[tokio::test]
async fn a_filter_that_passes_nothing_scans_a_long_log_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("t", Some(1), BTreeMap::new(), false)
        .unwrap();
    // About 12 MiB of records, more than one receive scans (FILL_SCAN_BYTES_MAX).
    let value = "x".repeat(1_000);
    for _ in 0..12 {
        let batch: Vec<Record> = (0..1_000).map(|_| rec("other", &value, &[])).collect();
        publish(&broker, "t", 0, &batch).await;
    }
    publish(&broker, "t", 0, &[rec("wanted", "last", &[])]).await;
    let settings = SubscriptionSettings {
        filter: Some(filter::RecordFilter::key("wanted")),
        ..Default::default()
    };
    broker
        .create_subscription("t", "s", settings)
        .await
        .unwrap();
    let got = broker.receive("t", "s", 10, 5_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].offset, 12_000);
}
