use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::BrokerConfig;

fn open(dir: &std::path::Path) -> Arc<Broker> {
    Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap()
}

async fn reopen(dir: &std::path::Path) -> Arc<Broker> {
    for _ in 0..100 {
        if let Ok(b) = Broker::open(BrokerConfig::new(dir.to_path_buf())) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker did not reopen");
}

fn who() -> Principal {
    Principal::anonymous()
}

fn event(t: &str, data: &str) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::new_v4(),
        event_type: t.into(),
        content_type: "application/json".into(),
        custom_metadata: Bytes::new(),
        data: Bytes::from(data.to_string()),
    }
}

fn with_meta(mut e: NewEvent, meta: &str) -> NewEvent {
    e.custom_metadata = Bytes::from(meta.to_string());
    e
}

fn events(read: StreamRead) -> Vec<RecordedEvent> {
    match read {
        StreamRead::Events(e) => e.into_iter().map(|e| e.event).collect(),
        StreamRead::NotFound => panic!("stream not found"),
    }
}

fn datas(read: StreamRead) -> Vec<String> {
    events(read)
        .into_iter()
        .map(|e| String::from_utf8(e.data.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn expected_revisions_are_checked_and_a_conflict_names_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    let s = "order-1";
    let r = b
        .stream_append(
            &w,
            s,
            Expected::NoStream,
            vec![event("OrderPlaced", "a"), event("OrderPaid", "b")],
        )
        .await
        .unwrap();
    assert_eq!((r.current_revision, r.position), (1, 2));
    let err = b
        .stream_append(&w, s, Expected::NoStream, vec![event("X", "c")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::WrongExpectedVersion {
                current: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "WrongExpectedVersion. Stream: order-1, Expected version: -1, Actual version: 1"
    );
    let err = b
        .stream_append(&w, s, Expected::Revision(0), vec![event("X", "c")])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StreamError::WrongExpectedVersion {
            current: Some(1),
            ..
        }
    ));
    let err = b
        .stream_append(&w, "order-2", Expected::StreamExists, vec![event("X", "c")])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StreamError::WrongExpectedVersion { current: None, .. }
    ));
    let r = b
        .stream_append(
            &w,
            s,
            Expected::Revision(1),
            vec![event("OrderShipped", "c")],
        )
        .await
        .unwrap();
    assert_eq!(r.current_revision, 2);
    let r = b
        .stream_append(&w, s, Expected::StreamExists, vec![event("X", "d")])
        .await
        .unwrap();
    assert_eq!(r.current_revision, 3);
    let r = b
        .stream_append(&w, s, Expected::Any, vec![event("X", "e")])
        .await
        .unwrap();
    assert_eq!(r.current_revision, 4);
    let all = datas(
        b.stream_read(&w, s, ReadFrom::Start, true, 100, false)
            .await
            .unwrap(),
    );
    assert_eq!(all, ["a", "b", "c", "d", "e"]);
    let back = datas(
        b.stream_read(&w, s, ReadFrom::Revision(3), false, 2, false)
            .await
            .unwrap(),
    );
    assert_eq!(back, ["d", "c"]);
    let end = events(
        b.stream_read(&w, s, ReadFrom::End, false, 1, false)
            .await
            .unwrap(),
    );
    assert_eq!((end[0].revision, end[0].position), (4, 5));
    assert_eq!(
        b.stream_read(&w, "order-9", ReadFrom::Start, true, 10, false)
            .await
            .unwrap(),
        StreamRead::NotFound
    );
}

#[tokio::test]
async fn a_retried_append_succeeds_without_a_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    let batch = vec![event("A", "1"), event("B", "2")];
    let first = b
        .stream_append(&w, "cart-1", Expected::NoStream, batch.clone())
        .await
        .unwrap();
    b.stream_append(&w, "cart-2", Expected::Any, vec![event("Other", "x")])
        .await
        .unwrap();
    let again = b
        .stream_append(&w, "cart-1", Expected::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    let any = b
        .stream_append(&w, "cart-1", Expected::Any, batch.clone())
        .await
        .unwrap();
    assert_eq!(any, first);
    // Other ids at the same expected revision are a conflict.
    assert!(
        b.stream_append(&w, "cart-1", Expected::NoStream, vec![event("A", "1")])
            .await
            .is_err()
    );
    assert_eq!(
        datas(
            b.stream_read(&w, "cart-1", ReadFrom::Start, true, 10, false)
                .await
                .unwrap()
        ),
        ["1", "2"]
    );
}

#[tokio::test]
async fn an_append_is_one_record_batch() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.stream_append(
        &who(),
        "batch-1",
        Expected::Any,
        (0..5).map(|i| event("E", &i.to_string())).collect(),
    )
    .await
    .unwrap();
    let p = b.topic(EVENTSTORE_TOPIC).unwrap();
    let read = p.partition(0).unwrap().read(0, 1 << 20).unwrap();
    let batches: Vec<_> = p
        .partition(0)
        .unwrap()
        .stored_batches(read.records, "test")
        .collect();
    assert_eq!(batches.len(), 1);
}

#[tokio::test]
async fn system_streams_link_events_by_category_type_and_correlation() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    let corr = r#"{"$correlationId":"saga-7"}"#;
    b.stream_append(
        &w,
        "order-1",
        Expected::Any,
        vec![with_meta(event("OrderPlaced", "o"), corr)],
    )
    .await
    .unwrap();
    b.stream_append(
        &w,
        "payment-1",
        Expected::Any,
        vec![with_meta(event("PaymentCaptured", "p"), corr)],
    )
    .await
    .unwrap();
    b.stream_append(
        &w,
        "order-2",
        Expected::Any,
        vec![event("OrderPlaced", "o2")],
    )
    .await
    .unwrap();
    b.stream_append(
        &w,
        "inventory-1",
        Expected::Any,
        vec![with_meta(event("InventoryReserved", "i"), corr)],
    )
    .await
    .unwrap();
    let ce = events(
        b.stream_read(&w, "$ce-order", ReadFrom::Start, true, 10, false)
            .await
            .unwrap(),
    );
    let links: Vec<_> = ce
        .iter()
        .map(|e| {
            (
                e.revision,
                e.event_type.as_str(),
                String::from_utf8(e.data.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        links,
        [
            (0, LINK_TYPE, "0@order-1".to_string()),
            (1, LINK_TYPE, "0@order-2".to_string())
        ]
    );
    let saga = b
        .stream_read(&w, "$bc-saga-7", ReadFrom::Start, true, 10, true)
        .await
        .unwrap();
    let StreamRead::Events(saga) = saga else {
        panic!()
    };
    let chain: Vec<_> = saga.iter().map(|e| e.event.stream.as_str()).collect();
    assert_eq!(chain, ["order-1", "payment-1", "inventory-1"]);
    assert!(
        saga.iter()
            .all(|e| e.link.as_ref().is_some_and(|l| l.stream == "$bc-saga-7"))
    );
    let et = events(
        b.stream_read(&w, "$et-OrderPlaced", ReadFrom::Start, true, 10, true)
            .await
            .unwrap(),
    );
    assert_eq!(
        et.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
        ["order-1", "order-2"]
    );
    let streams = events(
        b.stream_read(&w, "$streams", ReadFrom::Start, true, 10, true)
            .await
            .unwrap(),
    );
    assert_eq!(streams.len(), 4);
    assert!(
        b.stream_append(&w, "$ce-order", Expected::Any, vec![event("X", "x")])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn soft_delete_hides_a_stream_until_its_next_append_and_a_tombstone_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    b.stream_append(
        &w,
        "user-1",
        Expected::NoStream,
        vec![event("A", "1"), event("B", "2")],
    )
    .await
    .unwrap();
    b.stream_delete(&w, "user-1", Expected::Revision(1), false)
        .await
        .unwrap();
    assert_eq!(
        b.stream_read(&w, "user-1", ReadFrom::Start, true, 10, false)
            .await
            .unwrap(),
        StreamRead::NotFound
    );
    let r = b
        .stream_append(&w, "user-1", Expected::NoStream, vec![event("C", "3")])
        .await
        .unwrap();
    assert_eq!(r.current_revision, 2);
    let back = events(
        b.stream_read(&w, "user-1", ReadFrom::Start, true, 10, false)
            .await
            .unwrap(),
    );
    assert_eq!(back.iter().map(|e| e.revision).collect::<Vec<_>>(), [2]);

    b.stream_delete(&w, "user-1", Expected::Any, true)
        .await
        .unwrap();
    assert!(matches!(
        b.stream_read(&w, "user-1", ReadFrom::Start, true, 10, false)
            .await,
        Err(StreamError::Deleted(_))
    ));
    assert!(matches!(
        b.stream_append(&w, "user-1", Expected::Any, vec![event("D", "4")])
            .await,
        Err(StreamError::Deleted(_))
    ));
    assert!(matches!(
        b.stream_delete(&w, "user-1", Expected::Any, true).await,
        Err(StreamError::Deleted(_))
    ));
}

#[tokio::test]
async fn metadata_max_count_and_truncate_before_limit_reads() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    let five: Vec<_> = (0..5).map(|i| event("E", &i.to_string())).collect();
    b.stream_append(&w, "log-1", Expected::NoStream, five)
        .await
        .unwrap();
    b.stream_append(
        &w,
        "$$log-1",
        Expected::Any,
        vec![event(METADATA_TYPE, r#"{"$maxCount":3,"owner":"x"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(
        datas(
            b.stream_read(&w, "log-1", ReadFrom::Start, true, 10, false)
                .await
                .unwrap()
        ),
        ["2", "3", "4"]
    );
    b.stream_append(
        &w,
        "$$log-1",
        Expected::Any,
        vec![event(METADATA_TYPE, r#"{"$tb":4}"#)],
    )
    .await
    .unwrap();
    assert_eq!(
        datas(
            b.stream_read(&w, "log-1", ReadFrom::End, false, 10, false)
                .await
                .unwrap()
        ),
        ["4"]
    );
}

#[tokio::test]
async fn all_reads_forwards_and_backwards_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    for i in 0..6 {
        let s = if i % 2 == 0 { "order-a" } else { "user-b" };
        b.stream_append(
            &w,
            s,
            Expected::Any,
            vec![event(
                if i % 3 == 0 { "Big" } else { "Small" },
                &i.to_string(),
            )],
        )
        .await
        .unwrap();
    }
    let page = b.read_all(&w, 0, true, 100, 1000, None).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(page.end);
    let from3 = b.read_all(&w, 3, true, 2, 1000, None).await.unwrap();
    assert_eq!(
        from3.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(from3.next, 5);
    let back = b.read_all(&w, 0, false, 2, 1000, None).await.unwrap();
    assert_eq!(
        back.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [6, 5]
    );
    let before4 = b.read_all(&w, 4, false, 10, 1000, None).await.unwrap();
    assert_eq!(
        before4
            .events
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        [3, 2, 1]
    );
    let users = AllFilter::new(FilterOn::StreamName, vec!["user-".into()], "").unwrap();
    let got = b
        .read_all(&w, 0, true, 100, 1000, Some(&users))
        .await
        .unwrap();
    assert_eq!(
        got.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [2, 4, 6]
    );
    // The exclude filter KurrentDB's Python client sends with every read_all().
    let exclude = AllFilter::new(FilterOn::EventType, vec![], r"^(?!(\$.+$|Small$))").unwrap();
    let got = b
        .read_all(&w, 0, true, 100, 1000, Some(&exclude))
        .await
        .unwrap();
    assert_eq!(
        got.events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Big", "Big"]
    );
    // A filter passing nothing still says where it got to.
    let none = AllFilter::new(FilterOn::EventType, vec!["Nothing".into()], "").unwrap();
    let got = b.read_all(&w, 0, true, 100, 4, Some(&none)).await.unwrap();
    assert!(got.events.is_empty());
    assert_eq!(got.next, 5);
    assert!(AllFilter::new(FilterOn::EventType, vec![], "(").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_get_one_winner_per_revision() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for _ in 0..20 {
                let (current, _) = b.stream_revision("race-1").await.unwrap();
                let expected = current.map_or(Expected::NoStream, Expected::Revision);
                if let Ok(r) = b
                    .stream_append(
                        &who(),
                        "race-1",
                        expected,
                        vec![event("W", &writer.to_string())],
                    )
                    .await
                {
                    won.push(r.current_revision);
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap());
    }
    won.sort_unstable();
    let n = won.len() as u64;
    assert_eq!(
        won,
        (0..n).collect::<Vec<_>>(),
        "one winner per revision, no gaps"
    );
    let read = events(
        b.stream_read(&who(), "race-1", ReadFrom::Start, true, 1000, false)
            .await
            .unwrap(),
    );
    assert_eq!(read.len() as u64, n);
}

#[tokio::test]
async fn the_index_is_rebuilt_from_the_log_when_it_lost_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path());
        for i in 0..10 {
            b.stream_append(
                &who(),
                &format!("acct-{}", i % 3),
                Expected::Any,
                vec![event("T", &i.to_string())],
            )
            .await
            .unwrap();
        }
        // As after a crash before the index was durable: the mark and rows are gone
        // (once the indexer is done with them, so it writes no mark after this).
        b.stream_index_settled().await.unwrap();
        b.meta.clear_stream_index().unwrap();
    }
    let b = reopen(dir.path()).await;
    let got = datas(
        b.stream_read(&who(), "acct-1", ReadFrom::Start, true, 10, false)
            .await
            .unwrap(),
    );
    assert_eq!(got, ["1", "4", "7"]);
    let ce = events(
        b.stream_read(&who(), "$ce-acct", ReadFrom::Start, true, 100, false)
            .await
            .unwrap(),
    );
    assert_eq!(ce.len(), 10);
    let r = b
        .stream_append(
            &who(),
            "acct-1",
            Expected::Revision(2),
            vec![event("T", "10")],
        )
        .await
        .unwrap();
    assert_eq!(r.current_revision, 3);
}

fn pause_indexer(b: &Broker, paused: bool) {
    b.eventstore
        .indexer_paused
        .store(paused, std::sync::atomic::Ordering::SeqCst);
}

/// Appends are answered once durable, before the indexer runs: with it held back, the
/// next appends still check their expected revisions exactly (against the heads the
/// unindexed appends left), deletes and metadata still apply, and once it runs the
/// index agrees and nothing is left unindexed.
#[tokio::test]
async fn appends_answered_before_indexing_check_revisions_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    b.stream_append(&w, "warmup-1", Expected::Any, vec![event("W", "0")])
        .await
        .unwrap();
    pause_indexer(&b, true);
    let first = b
        .stream_append(&w, "acct-1", Expected::NoStream, vec![event("A", "0")])
        .await
        .unwrap();
    assert_eq!(first.current_revision, 0);
    for r in 0..5u64 {
        let done = b
            .stream_append(
                &w,
                "acct-1",
                Expected::Revision(r),
                vec![event("B", &(r + 1).to_string())],
            )
            .await
            .unwrap();
        assert_eq!(done.current_revision, r + 1);
    }
    // A stale expected revision could be a retry: that check reads the stored ids
    // from the index, so it waits for the indexer, then refuses with the current one.
    let stale = {
        let b = b.clone();
        tokio::spawn(async move {
            let w = who();
            let at_2 = b
                .stream_append(&w, "acct-1", Expected::Revision(2), vec![event("C", "x")])
                .await;
            let none = b
                .stream_append(&w, "acct-1", Expected::NoStream, vec![event("C", "x")])
                .await;
            (at_2, none)
        })
    };
    // A tombstone, unindexed, refuses the next append.
    b.stream_append(&w, "acct-2", Expected::NoStream, vec![event("A", "0")])
        .await
        .unwrap();
    b.stream_delete(&w, "acct-2", Expected::Revision(0), true)
        .await
        .unwrap();
    assert!(matches!(
        b.stream_append(&w, "acct-2", Expected::Any, vec![event("A", "2")])
            .await,
        Err(StreamError::Deleted(_))
    ));
    // Metadata written to `$$<stream>` (a soft delete by `$tb`) applies to the next
    // append's check.
    b.stream_append(&w, "acct-3", Expected::NoStream, vec![event("A", "0")])
        .await
        .unwrap();
    b.stream_append(
        &w,
        "$$acct-3",
        Expected::Any,
        vec![event(
            METADATA_TYPE,
            &format!(r#"{{"$tb":{DELETED_TRUNCATE_BEFORE}}}"#),
        )],
    )
    .await
    .unwrap();
    assert!(matches!(
        b.stream_append(&w, "acct-3", Expected::StreamExists, vec![event("A", "1")])
            .await,
        Err(StreamError::WrongExpectedVersion { .. })
    ));
    // A soft delete, unindexed; the re-append after it reads the metadata stream from
    // the index, so it waits for the indexer.
    b.stream_append(&w, "acct-4", Expected::NoStream, vec![event("A", "0")])
        .await
        .unwrap();
    b.stream_delete(&w, "acct-4", Expected::Revision(0), false)
        .await
        .unwrap();
    assert!(matches!(
        b.stream_append(&w, "acct-4", Expected::StreamExists, vec![event("A", "1")])
            .await,
        Err(StreamError::WrongExpectedVersion { .. })
    ));
    let reappend = {
        let b = b.clone();
        tokio::spawn(async move {
            b.stream_append(&who(), "acct-4", Expected::NoStream, vec![event("A", "1")])
                .await
        })
    };
    assert!(
        *b.eventstore.indexed.borrow() <= 1,
        "the indexer ran while paused"
    );
    assert!(b.eventstore.unindexed.lock().unwrap().len() > 0);

    pause_indexer(&b, false);
    assert_eq!(reappend.await.unwrap().unwrap().current_revision, 1);
    let (at_2, none) = stale.await.unwrap();
    assert!(
        matches!(
            at_2,
            Err(StreamError::WrongExpectedVersion {
                current: Some(5),
                ..
            })
        ),
        "{at_2:?}"
    );
    assert!(matches!(
        none,
        Err(StreamError::WrongExpectedVersion { .. })
    ));
    let acct = events(
        b.stream_read(&w, "acct-1", ReadFrom::Start, true, 100, false)
            .await
            .unwrap(),
    );
    assert_eq!(
        acct.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert!(matches!(
        b.stream_read(&w, "acct-2", ReadFrom::Start, true, 10, false)
            .await,
        Err(StreamError::Deleted(_))
    ));
    assert_eq!(
        b.stream_read(&w, "acct-3", ReadFrom::Start, true, 10, false)
            .await
            .unwrap(),
        StreamRead::NotFound
    );
    let acct4 = events(
        b.stream_read(&w, "acct-4", ReadFrom::Start, true, 10, false)
            .await
            .unwrap(),
    );
    assert_eq!(acct4.iter().map(|e| e.revision).collect::<Vec<_>>(), [1]);
    b.stream_index_settled().await.unwrap();
    assert_eq!(b.eventstore.unindexed.lock().unwrap().len(), 0);
}

/// Read-your-writes: a read that starts after an append was answered sees it, though
/// the indexer had not run when the answer went out (the read waits for it).
#[tokio::test]
async fn a_read_after_an_answered_append_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    b.stream_append(
        &w,
        "order-0",
        Expected::Any,
        vec![event("OrderPlaced", "0")],
    )
    .await
    .unwrap();
    pause_indexer(&b, true);
    let appended = b
        .stream_append(
            &w,
            "order-1",
            Expected::NoStream,
            vec![event("OrderPlaced", "1")],
        )
        .await
        .unwrap();
    let reads = {
        let b = b.clone();
        tokio::spawn(async move {
            let w = who();
            let stream = events(
                b.stream_read(&w, "order-1", ReadFrom::Start, true, 10, false)
                    .await
                    .unwrap(),
            );
            let all = b.read_all(&w, 0, true, 100, 100, None).await.unwrap();
            let category = b
                .stream_read(&w, "$ce-order", ReadFrom::Start, true, 10, true)
                .await
                .unwrap();
            let revision = b.stream_revision("order-1").await.unwrap();
            (stream, all, category, revision)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!reads.is_finished(), "a read did not wait for the index");
    pause_indexer(&b, false);
    let (stream, all, category, revision) = reads.await.unwrap();
    assert_eq!(stream.len(), 1);
    assert_eq!(stream[0].position, appended.position);
    assert!(all.events.iter().any(|e| e.position == appended.position));
    assert_eq!(events(category).len(), 2);
    assert_eq!(revision, (Some(0), false));

    // And without holding the indexer back, over and over.
    for i in 0..200u64 {
        let stream = format!("race-{}", i % 7);
        let done = b
            .stream_append(&w, &stream, Expected::Any, vec![event("Raced", "x")])
            .await
            .unwrap();
        let read = events(
            b.stream_read(&w, &stream, ReadFrom::End, false, 1, false)
                .await
                .unwrap(),
        );
        assert_eq!(read[0].position, done.position);
        let all = b
            .read_all(&w, done.position, true, 1, 1, None)
            .await
            .unwrap();
        assert_eq!(all.events[0].position, done.position);
        let category = events(
            b.stream_read(&w, "$ce-race", ReadFrom::End, false, 1, true)
                .await
                .unwrap(),
        );
        assert_eq!(category[0].position, done.position);
    }
}

/// A retry of an append not indexed yet is still recognised (it waits for the index).
#[tokio::test]
async fn a_retry_of_an_unindexed_append_succeeds_without_a_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    let batch = vec![event("A", "1"), event("B", "2")];
    pause_indexer(&b, true);
    let first = b
        .stream_append(&w, "cart-9", Expected::NoStream, batch.clone())
        .await
        .unwrap();
    let retry = {
        let b = b.clone();
        let batch = batch.clone();
        tokio::spawn(async move {
            b.stream_append(&who(), "cart-9", Expected::NoStream, batch)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    pause_indexer(&b, false);
    assert_eq!(retry.await.unwrap().unwrap(), first);
    let any = b
        .stream_append(&w, "cart-9", Expected::Any, batch)
        .await
        .unwrap();
    assert_eq!(any, first);
    assert_eq!(
        datas(
            b.stream_read(&w, "cart-9", ReadFrom::Start, true, 10, false)
                .await
                .unwrap()
        ),
        ["1", "2"]
    );
}

/// `eventstore_index_lag_max` bounds how far appends run ahead of the index.
#[tokio::test]
async fn appends_wait_for_the_indexer_past_the_lag_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new(dir.path().to_path_buf());
    config.eventstore_index_lag_max = 5;
    let b = Broker::open(config).unwrap();
    let w = who();
    b.stream_append(&w, "lag-0", Expected::Any, vec![event("E", "0")])
        .await
        .unwrap();
    pause_indexer(&b, true);
    b.stream_append(&w, "lag-1", Expected::Any, vec![event("E", "1")])
        .await
        .unwrap();
    let over = {
        let b = b.clone();
        tokio::spawn(async move {
            let ten = (0..10).map(|i| event("E", &i.to_string())).collect();
            b.stream_append(&who(), "lag-2", Expected::Any, ten).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!over.is_finished(), "an append ran past the lag limit");
    pause_indexer(&b, false);
    assert_eq!(over.await.unwrap().unwrap().current_revision, 9);
}

/// `$all` reads decode events straight from the stored batch; that gives the same
/// events as decoding the whole record.
#[tokio::test]
async fn all_reads_decode_the_same_events_as_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let w = who();
    b.stream_append(
        &w,
        "ship-1",
        Expected::NoStream,
        vec![
            with_meta(event("Shipped", "1"), r#"{"$correlationId":"c-1"}"#),
            event("Delivered", "2"),
        ],
    )
    .await
    .unwrap();
    b.stream_delete(&w, "ship-1", Expected::Any, true)
        .await
        .unwrap();
    let topic = b.topic(EVENTSTORE_TOPIC).unwrap();
    let partition = topic.partition(0).unwrap();
    let hw = partition.high_watermark();
    let whole = partition
        .records_from(0, hw, 100, 1 << 20, "test")
        .unwrap()
        .records;
    let direct = partition
        .records_from_as(0, hw, 100, 1 << 20, "test", read::recorded_in)
        .unwrap()
        .records;
    assert_eq!(whole.len(), 3);
    assert_eq!(
        whole
            .iter()
            .map(|r| (r.offset, read::recorded(r)))
            .collect::<Vec<_>>(),
        direct
    );
}
