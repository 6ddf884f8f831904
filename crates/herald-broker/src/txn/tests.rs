use std::collections::BTreeMap;
use std::sync::Arc;

use herald_records::Compression;
use kafka_protocol::records::Record;

use super::*;
use crate::partition::Isolation;
use crate::{BrokerConfig, test_util};

fn open(dir: &std::path::Path) -> Arc<Broker> {
    Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap()
}

/// A transactional batch of `count` records from `pid` at `epoch`.
fn txn_batch(pid: i64, epoch: i16, base_sequence: i32, count: i32) -> Vec<u8> {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            producer_id: pid,
            producer_epoch: epoch,
            transactional: true,
            ..test_util::record(&format!("k{i}"), Some(b"v"), 1_000)
        })
        .collect();
    test_util::batch(&records, base_sequence, Compression::None)
}

fn who() -> Principal {
    Principal::anonymous()
}

async fn begin(broker: &Broker, id: &str) -> (i64, i16) {
    let (pid, epoch) = broker
        .init_transactional_producer(&who(), id, 60_000, None)
        .await
        .unwrap();
    broker
        .add_partitions_to_txn(&who(), id, pid, epoch, &[("t".to_string(), 0)])
        .await
        .unwrap();
    (pid, epoch)
}

#[tokio::test]
async fn a_commit_makes_records_stable_and_an_abort_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("t", Some(1), BTreeMap::new(), false)
        .unwrap();
    let topic = broker.topic("t").unwrap();
    let p = topic.partition(0).unwrap().clone();

    let (pid, epoch) = begin(&broker, "tx").await;
    topic
        .append(0, &txn_batch(pid, epoch, 0, 3), now_ms())
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!(p.high_watermark(), 3);
    assert_eq!(
        p.last_stable_offset(),
        0,
        "an open transaction holds the LSO"
    );
    let read = p
        .read_isolated(0, 1 << 20, Isolation::ReadCommitted)
        .unwrap();
    assert!(read.records.is_empty());
    assert_eq!(
        p.records_from(0, 3, 10, 1 << 20, "test")
            .unwrap()
            .records
            .len(),
        0
    );

    broker
        .end_txn(&who(), "tx", pid, epoch, true)
        .await
        .unwrap();
    // A retried commit succeeds; an abort after it does not.
    broker
        .end_txn(&who(), "tx", pid, epoch, true)
        .await
        .unwrap();
    assert!(matches!(
        broker.end_txn(&who(), "tx", pid, epoch, false).await,
        Err(BrokerError::InvalidTxnState(_))
    ));
    assert_eq!(p.high_watermark(), 4, "the marker takes an offset");
    assert_eq!(p.last_stable_offset(), 4);
    assert_eq!(
        p.records_from(0, 4, 10, 1 << 20, "test")
            .unwrap()
            .records
            .len(),
        3
    );

    // The next transaction of the same producer continues its sequence, then aborts.
    broker
        .add_partitions_to_txn(&who(), "tx", pid, epoch, &[("t".to_string(), 0)])
        .await
        .unwrap();
    topic
        .append(0, &txn_batch(pid, epoch, 3, 2), now_ms())
        .unwrap()
        .durable()
        .await
        .unwrap();
    broker
        .end_txn(&who(), "tx", pid, epoch, false)
        .await
        .unwrap();
    let read = p
        .read_isolated(0, 1 << 20, Isolation::ReadCommitted)
        .unwrap();
    assert_eq!(read.last_stable_offset, 7);
    assert_eq!(
        read.aborted,
        vec![partition::AbortedTxn {
            producer_id: pid,
            first_offset: 4,
            last_offset: 6
        }]
    );
    // Other faces see the committed records only.
    assert_eq!(
        p.records_from(0, 7, 10, 1 << 20, "test")
            .unwrap()
            .records
            .len(),
        3
    );

    // Everything survives a restart: the log says what was aborted.
    drop((p, topic));
    broker.shutdown();
    drop(broker);
    let broker = open(dir.path());
    let p = broker.topic("t").unwrap().partition(0).unwrap().clone();
    assert_eq!(p.last_stable_offset(), 7);
    let read = p
        .read_isolated(0, 1 << 20, Isolation::ReadCommitted)
        .unwrap();
    assert_eq!(read.aborted.len(), 1);
    assert_eq!(
        broker.transactions().state("tx").unwrap().status,
        TxnStatus::CompleteAbort
    );
}

#[tokio::test]
async fn produce_needs_the_partition_added_and_the_current_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("t", Some(2), BTreeMap::new(), false)
        .unwrap();
    let topic = broker.topic("t").unwrap();
    let (pid, epoch) = begin(&broker, "tx").await;
    // Partition 1 was not added.
    assert!(matches!(
        topic.append(1, &txn_batch(pid, epoch, 0, 1), now_ms()),
        Err(BrokerError::InvalidTxnState(_))
    ));
    // A new instance fences the old one and aborts its open transaction.
    topic
        .append(0, &txn_batch(pid, epoch, 0, 1), now_ms())
        .unwrap()
        .durable()
        .await
        .unwrap();
    let (pid2, epoch2) = broker
        .init_transactional_producer(&who(), "tx", 60_000, None)
        .await
        .unwrap();
    assert_eq!(pid2, pid);
    assert_eq!(epoch2, epoch + 1);
    let p = topic.partition(0).unwrap();
    assert_eq!(p.last_stable_offset(), p.high_watermark());
    assert!(p.is_aborted(pid, 0));
    assert!(matches!(
        topic.append(0, &txn_batch(pid, epoch, 1, 1), now_ms()),
        Err(BrokerError::InvalidProducerEpoch { .. })
    ));
    assert!(matches!(
        broker
            .add_partitions_to_txn(&who(), "tx", pid, epoch, &[("t".to_string(), 0)])
            .await,
        Err(BrokerError::ProducerFenced { .. })
    ));
    assert!(matches!(
        broker.end_txn(&who(), "tx", pid, epoch, true).await,
        Err(BrokerError::ProducerFenced { .. })
    ));
    // Unknown partitions are refused whole.
    assert!(matches!(
        broker
            .add_partitions_to_txn(
                &who(),
                "tx",
                pid2,
                epoch2,
                &[("t".to_string(), 0), ("nope".to_string(), 0)]
            )
            .await,
        Err(BrokerError::UnknownTopic(_))
    ));
    assert!(
        broker
            .transactions()
            .state("tx")
            .unwrap()
            .partitions
            .is_empty()
    );
    // Timeouts are bounded.
    assert!(matches!(
        broker
            .init_transactional_producer(&who(), "tx2", 900_001, None)
            .await,
        Err(BrokerError::InvalidTransactionTimeout { .. })
    ));
}

#[tokio::test]
async fn offsets_are_invisible_until_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("t", Some(1), BTreeMap::new(), false)
        .unwrap();
    let (pid, epoch) = begin(&broker, "tx").await;
    broker
        .add_offsets_to_txn(&who(), "tx", pid, epoch, "g")
        .await
        .unwrap();
    let commit = OffsetCommit {
        topic: "t".into(),
        partition: 0,
        record: OffsetRecord {
            offset: 42,
            leader_epoch: -1,
            metadata: None,
            commit_ms: now_ms(),
        },
    };
    broker
        .txn_offset_commit(&who(), "tx", pid, epoch, "g", -1, "", vec![commit])
        .await
        .unwrap();
    let wanted = [("t".to_string(), 0)];
    assert!(broker.groups.committed("g", Some(&wanted))[0].1.is_none());
    assert!(broker.transactions().pending_offset("g", "t", 0));
    broker
        .end_txn(&who(), "tx", pid, epoch, true)
        .await
        .unwrap();
    assert!(!broker.transactions().pending_offset("g", "t", 0));
    let committed = broker.groups.committed("g", Some(&wanted));
    assert_eq!(committed[0].1.as_ref().map(|r| r.offset), Some(42));
}

#[tokio::test]
async fn a_transaction_past_its_timeout_is_aborted_and_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("t", Some(1), BTreeMap::new(), false)
        .unwrap();
    let (pid, epoch) = broker
        .init_transactional_producer(&who(), "tx", 1, None)
        .await
        .unwrap();
    broker
        .add_partitions_to_txn(&who(), "tx", pid, epoch, &[("t".to_string(), 0)])
        .await
        .unwrap();
    let topic = broker.topic("t").unwrap();
    topic
        .append(0, &txn_batch(pid, epoch, 0, 2), now_ms())
        .unwrap()
        .durable()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    broker.txn_tick().await;
    let state = broker.transactions().state("tx").unwrap();
    assert_eq!(state.status, TxnStatus::CompleteAbort);
    assert_eq!(state.epoch, epoch + 1);
    let p = topic.partition(0).unwrap();
    assert_eq!(p.last_stable_offset(), 3);
    assert!(matches!(
        broker.end_txn(&who(), "tx", pid, epoch, true).await,
        Err(BrokerError::ProducerFenced { .. })
    ));
    // KIP-360: the fenced producer may re-initialise with the epoch it had.
    let (pid2, epoch2) = broker
        .init_transactional_producer(&who(), "tx", 60_000, Some((pid, epoch)))
        .await
        .unwrap();
    assert_eq!((pid2, epoch2), (pid, epoch + 2));
}
