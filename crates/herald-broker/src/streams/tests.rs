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
            .unwrap(),
    );
    assert_eq!(all, ["a", "b", "c", "d", "e"]);
    let back = datas(
        b.stream_read(&w, s, ReadFrom::Revision(3), false, 2, false)
            .unwrap(),
    );
    assert_eq!(back, ["d", "c"]);
    let end = events(
        b.stream_read(&w, s, ReadFrom::End, false, 1, false)
            .unwrap(),
    );
    assert_eq!((end[0].revision, end[0].position), (4, 5));
    assert_eq!(
        b.stream_read(&w, "order-9", ReadFrom::Start, true, 10, false)
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
            .unwrap(),
    );
    assert_eq!(
        et.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
        ["order-1", "order-2"]
    );
    let streams = events(
        b.stream_read(&w, "$streams", ReadFrom::Start, true, 10, true)
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
            .unwrap(),
    );
    assert_eq!(back.iter().map(|e| e.revision).collect::<Vec<_>>(), [2]);

    b.stream_delete(&w, "user-1", Expected::Any, true)
        .await
        .unwrap();
    assert!(matches!(
        b.stream_read(&w, "user-1", ReadFrom::Start, true, 10, false),
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
    let page = b.read_all(&w, 0, true, 100, 1000, None).unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(page.end);
    let from3 = b.read_all(&w, 3, true, 2, 1000, None).unwrap();
    assert_eq!(
        from3.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(from3.next, 5);
    let back = b.read_all(&w, 0, false, 2, 1000, None).unwrap();
    assert_eq!(
        back.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [6, 5]
    );
    let before4 = b.read_all(&w, 4, false, 10, 1000, None).unwrap();
    assert_eq!(
        before4
            .events
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        [3, 2, 1]
    );
    let users = AllFilter::new(FilterOn::StreamName, vec!["user-".into()], "").unwrap();
    let got = b.read_all(&w, 0, true, 100, 1000, Some(&users)).unwrap();
    assert_eq!(
        got.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [2, 4, 6]
    );
    // The exclude filter KurrentDB's Python client sends with every read_all().
    let exclude = AllFilter::new(FilterOn::EventType, vec![], r"^(?!(\$.+$|Small$))").unwrap();
    let got = b.read_all(&w, 0, true, 100, 1000, Some(&exclude)).unwrap();
    assert_eq!(
        got.events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Big", "Big"]
    );
    // A filter passing nothing still says where it got to.
    let none = AllFilter::new(FilterOn::EventType, vec!["Nothing".into()], "").unwrap();
    let got = b.read_all(&w, 0, true, 100, 4, Some(&none)).unwrap();
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
                let (current, _) = b.stream_revision("race-1").unwrap();
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
        // As after a crash before the index was durable: the mark and rows are gone.
        b.meta.clear_stream_index().unwrap();
    }
    let b = reopen(dir.path()).await;
    let got = datas(
        b.stream_read(&who(), "acct-1", ReadFrom::Start, true, 10, false)
            .unwrap(),
    );
    assert_eq!(got, ["1", "4", "7"]);
    let ce = events(
        b.stream_read(&who(), "$ce-acct", ReadFrom::Start, true, 100, false)
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
