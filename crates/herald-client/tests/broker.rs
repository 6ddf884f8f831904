//! The client against the real broker, started in process on an ephemeral port with
//! a temporary data directory: the same bytes on the same socket as with the
//! `herald serve` binary, without needing the binary built first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, BrokerConfig};
use herald_client::{
    Acks, Client, Compression, Connection, FetchOptions, GroupOptions, NewTopic, OffsetSpec,
    ProduceOptions, ProduceRecord, ResponseError, TopicPartition,
};
use herald_kafka::{KafkaConfig, KafkaServer};
use kafka_protocol::messages::{ApiKey, MetadataRequest};

struct TestBroker {
    addr: String,
    server: tokio::task::JoinHandle<()>,
    _data: tempfile::TempDir,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start_broker() -> TestBroker {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = BrokerConfig::new(data.path().to_path_buf());
    // Tests join groups one member at a time; waiting for stragglers only slows them.
    config.group_initial_rebalance_delay_ms = 0;
    let broker: std::sync::Arc<Broker> = Broker::open(config).expect("open broker");
    let listen = "127.0.0.1:0".parse().expect("address");
    let server = KafkaServer::bind(KafkaConfig::new(listen), broker)
        .await
        .expect("bind");
    let addr = server.local_addr().to_string();
    TestBroker {
        addr,
        server: tokio::spawn(server.run()),
        _data: data,
    }
}

fn record(key: &str, value: &str) -> ProduceRecord {
    ProduceRecord {
        key: Some(Bytes::from(key.to_owned())),
        value: Some(Bytes::from(value.to_owned())),
        headers: vec![("source".to_owned(), Some(Bytes::from_static(b"test")))],
        timestamp_ms: None,
    }
}

async fn create(client: &Client, name: &str, partitions: i32) {
    let mut topic = NewTopic::new(name);
    topic.partitions = partitions;
    client.create_topic(&topic).await.expect("create topic");
}

#[tokio::test]
async fn connection_negotiates_versions_and_pipelines_requests() {
    let broker = start_broker().await;
    let connection = Connection::connect(&broker.addr).await.expect("connect");
    assert!(connection.supports(ApiKey::Metadata));
    assert!(connection.supports(ApiKey::Produce));

    // Many requests in flight on one socket; each answer reaches its own caller.
    let connection = std::sync::Arc::new(connection);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..200 {
        let connection = std::sync::Arc::clone(&connection);
        requests.spawn(async move {
            let request = MetadataRequest::default().with_topics(Some(Vec::new()));
            (i, connection.send(&request).await)
        });
    }
    let mut ok = 0;
    while let Some(joined) = requests.join_next().await {
        let (_, response) = joined.expect("task");
        assert_eq!(response.expect("metadata").brokers.len(), 1);
        ok += 1;
    }
    assert_eq!(ok, 200);
}

#[tokio::test]
async fn pipelined_produces_get_distinct_contiguous_offsets() {
    let broker = start_broker().await;
    let client = Client::new(&broker.addr).await.expect("client");
    create(&client, "orders", 1).await;
    let options = ProduceOptions::default();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        let options = options.clone();
        sends.spawn(async move {
            let records = vec![record("k", &format!("a{i}")), record("k", &format!("b{i}"))];
            client.produce("orders", 0, &records, &options).await
        });
    }
    let mut offsets = BTreeSet::new();
    while let Some(sent) = sends.join_next().await {
        let base = sent
            .expect("task")
            .expect("produce")
            .expect("acks=all answers");
        offsets.insert(base);
    }
    assert_eq!(offsets, (0..50).map(|i| i * 2).collect());
}

#[tokio::test]
async fn topics_are_created_described_and_deleted() {
    let broker = start_broker().await;
    let client = Client::new(&broker.addr).await.expect("client");
    let mut topic = NewTopic::new("payments");
    topic.partitions = 3;
    topic.configs = vec![("retention.ms".to_owned(), "60000".to_owned())];
    client.create_topic(&topic).await.expect("create");

    let again = client.create_topic(&topic).await.expect_err("duplicate");
    assert_eq!(again.kafka_code(), Some(ResponseError::TopicAlreadyExists));

    let names: Vec<String> = client
        .list_topics()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"payments".to_owned()));

    let described = client.describe_topic("payments").await.expect("describe");
    assert_eq!(described.partitions.len(), 3);
    assert!(described.partitions.iter().all(|p| p.leader >= 0));

    let configs = client
        .describe_topic_configs("payments")
        .await
        .expect("configs");
    let retention = configs
        .iter()
        .find(|c| c.name == "retention.ms")
        .expect("retention.ms listed");
    assert_eq!(retention.value.as_deref(), Some("60000"));

    client.delete_topic("payments").await.expect("delete");
    let gone = client
        .describe_topic("payments")
        .await
        .expect_err("deleted");
    assert!(herald_client::is_unknown_topic(&gone), "{gone}");
}

#[tokio::test]
async fn produced_records_come_back_from_the_requested_offset() {
    let broker = start_broker().await;
    let client = Client::new(&broker.addr).await.expect("client");
    create(&client, "events", 2).await;
    let compressions = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    let mut expected = Vec::new();
    for (batch, compression) in compressions.into_iter().enumerate() {
        let records: Vec<ProduceRecord> = (0..3)
            .map(|i| record(&format!("k{i}"), &format!("OrderPlaced-{batch}-{i}")))
            .collect();
        expected.extend(records.iter().map(|r| r.value.clone()));
        let options = ProduceOptions {
            acks: Acks::Leader,
            compression,
            ..ProduceOptions::default()
        };
        let base = client
            .produce("events", 1, &records, &options)
            .await
            .expect("produce");
        assert_eq!(base, Some(i64::try_from(batch * 3).expect("small")));
    }

    let ends = client
        .list_offsets("events", &[0, 1], OffsetSpec::Latest)
        .await
        .expect("latest");
    assert_eq!(ends, BTreeMap::from([(0, 0), (1, 15)]));
    let starts = client
        .list_offsets("events", &[1], OffsetSpec::Earliest)
        .await
        .expect("earliest");
    assert_eq!(starts, BTreeMap::from([(1, 0)]));

    // Offset 4 is inside the second batch: the broker returns that batch whole and
    // the client drops the record before it.
    let fetched = client
        .fetch("events", 1, 4, &FetchOptions::default())
        .await
        .expect("fetch");
    let values: Vec<Option<Bytes>> = fetched.records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, expected[4..]);
    assert_eq!(fetched.records[0].offset, 4);
    assert_eq!(fetched.next_offset, 15);
    assert_eq!(fetched.high_watermark, 15);
    assert_eq!(
        fetched.records[0].headers,
        vec![("source".to_owned(), Some(Bytes::from_static(b"test")))]
    );

    let out_of_range = client
        .fetch("events", 1, 99, &FetchOptions::default())
        .await
        .expect_err("past the end");
    assert_eq!(
        out_of_range.kafka_code(),
        Some(ResponseError::OffsetOutOfRange)
    );
}

#[tokio::test]
async fn acks_none_records_arrive_after_flush() {
    let broker = start_broker().await;
    let client = Client::new(&broker.addr).await.expect("client");
    create(&client, "fire", 1).await;
    let options = ProduceOptions {
        acks: Acks::None,
        ..ProduceOptions::default()
    };
    for i in 0..10 {
        let answer = client
            .produce("fire", 0, &[record("k", &i.to_string())], &options)
            .await
            .expect("queued");
        assert_eq!(answer, None);
    }
    client.flush().await.expect("flush");
    // The broker has handled every request; Herald exposes records once they are
    // durable, which for unacknowledged ones happens in the background.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ends = client
            .list_offsets("fire", &[0], OffsetSpec::Latest)
            .await
            .expect("latest");
        if ends[&0] == 10 || tokio::time::Instant::now() > deadline {
            assert_eq!(ends[&0], 10);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_group() -> GroupOptions {
    GroupOptions {
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn group_members_split_partitions_commit_and_hand_over_on_leave() {
    let broker = start_broker().await;
    let client = Client::new(&broker.addr).await.expect("client");
    create(&client, "work", 4).await;
    let topics = vec!["work".to_owned()];

    let mut first = client
        .join_group("workers", &topics, fast_group())
        .await
        .expect("first join");
    assert!(first.is_leader());
    assert_eq!(first.assignment()["work"], vec![0, 1, 2, 3]);

    // A second member joins; the first learns of the rebalance by heartbeat and
    // rejoins while the second waits in its JoinGroup.
    let second_client = Client::new(&broker.addr).await.expect("client");
    let joining = tokio::spawn(async move {
        second_client
            .join_group("workers", &["work".to_owned()], fast_group())
            .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !first.rejoin_needed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebalance noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.rejoin().await.expect("rejoin");
    let second = joining.await.expect("task").expect("second join");
    assert_eq!(first.generation_id(), second.generation_id());

    let mine: BTreeSet<TopicPartition> = first.assigned_partitions().into_iter().collect();
    let theirs: BTreeSet<TopicPartition> = second.assigned_partitions().into_iter().collect();
    assert_eq!(mine.len(), 2);
    assert_eq!(theirs.len(), 2);
    assert!(mine.is_disjoint(&theirs));

    let description = client.describe_group("workers").await.expect("describe");
    assert_eq!(description.state, "Stable");
    assert_eq!(description.protocol, "range");
    assert_eq!(description.members.len(), 2);

    let commits: BTreeMap<TopicPartition, i64> = mine.iter().map(|tp| (tp.clone(), 7)).collect();
    first.commit(&commits).await.expect("commit");
    assert_eq!(first.committed_offsets().await.expect("committed"), commits);
    assert_eq!(
        client
            .committed_offsets("workers", None)
            .await
            .expect("all committed"),
        commits
    );

    let listed = client.list_groups().await.expect("list");
    assert!(listed.iter().any(|g| g.group_id == "workers"));

    first.leave().await.expect("leave");
    let mut second = second;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !second.rejoin_needed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "leave did not trigger a rebalance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.rejoin().await.expect("rejoin alone");
    assert_eq!(second.assignment()["work"], vec![0, 1, 2, 3]);
    second.leave().await.expect("leave");
}
