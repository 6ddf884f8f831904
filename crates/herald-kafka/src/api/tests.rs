//! Handlers called directly on a real broker: the answers' shapes and codes for the
//! admin APIs whose clients hide the details (paging, several groups at once).

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_broker::group::OffsetCommit;
use herald_broker::{Broker, BrokerConfig};
use herald_meta::OffsetRecord;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::*;

use super::{str, topic_name};
use crate::KafkaConfig;
use crate::dispatch::Context;

fn context(dir: &std::path::Path) -> Context {
    let broker = Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap();
    let mut config = KafkaConfig::new("127.0.0.1:9092".parse().unwrap());
    config.describe_topic_partitions_max = 3;
    Context {
        broker,
        config: Arc::new(config),
        peer: "127.0.0.1:1".parse().unwrap(),
        who: herald_broker::Principal::anonymous(),
    }
}

fn header(version: i16) -> RequestHeader {
    RequestHeader::default().with_request_api_version(version)
}

fn topic(ctx: &Context, name: &str, partitions: i64) {
    ctx.broker
        .create_topic(name, Some(partitions), BTreeMap::new(), false)
        .unwrap();
}

#[tokio::test]
async fn describe_topic_partitions_pages_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    topic(&ctx, "a", 2);
    topic(&ctx, "b", 4);
    // All topics, at most 3 partitions per answer (the listener's cap beats the 100 asked).
    let request = DescribeTopicPartitionsRequest::default().with_response_partition_limit(100);
    let page = super::describe_topic_partitions::handle(&ctx, &header(0), request).await;
    let shown: Vec<(String, Vec<i32>)> = page
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().unwrap().0.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![("a".to_string(), vec![0, 1]), ("b".to_string(), vec![0])]
    );
    let cursor = page.next_cursor.unwrap();
    assert_eq!(
        (cursor.topic_name.0.as_str(), cursor.partition_index),
        ("b", 1)
    );
    let request = DescribeTopicPartitionsRequest::default()
        .with_response_partition_limit(3)
        .with_cursor(Some(
            Cursor::default()
                .with_topic_name(topic_name("b"))
                .with_partition_index(1),
        ));
    let page = super::describe_topic_partitions::handle(&ctx, &header(0), request).await;
    assert_eq!(page.topics.len(), 1);
    let indexes: Vec<i32> = page.topics[0]
        .partitions
        .iter()
        .map(|p| p.partition_index)
        .collect();
    assert_eq!(indexes, vec![1, 2, 3]);
    assert!(page.next_cursor.is_none());
    assert_eq!(page.topics[0].partitions[0].leader_id.0, 1);
    // A named topic that does not exist is answered, not created.
    let request = DescribeTopicPartitionsRequest::default().with_topics(vec![
        TopicRequest::default().with_name(topic_name("nope")),
        TopicRequest::default().with_name(topic_name("a")),
    ]);
    let page = super::describe_topic_partitions::handle(&ctx, &header(0), request).await;
    assert_eq!(page.topics.len(), 2);
    assert_eq!(page.topics[0].partitions.len(), 2);
    assert_eq!(
        page.topics[1].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert!(ctx.broker.topic("nope").is_none());
}

#[tokio::test]
async fn offset_fetch_v8_answers_several_groups_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    topic(&ctx, "orders", 2);
    for (group, offset) in [("g1", 5), ("g2", 9)] {
        let commit = OffsetCommit {
            topic: "orders".into(),
            partition: 1,
            record: OffsetRecord {
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            },
        };
        ctx.broker
            .groups
            .commit_offsets(group, -1, "", vec![commit])
            .await
            .unwrap();
    }
    let request = OffsetFetchRequest::default().with_groups(vec![
        // No topics (null): every committed offset of the group.
        OffsetFetchRequestGroup::default()
            .with_group_id(super::group_id("g1"))
            .with_topics(None),
        OffsetFetchRequestGroup::default()
            .with_group_id(super::group_id("g2"))
            .with_topics(None),
        OffsetFetchRequestGroup::default()
            .with_group_id(super::group_id("none"))
            .with_topics(None),
    ]);
    let response = super::offset_fetch::handle(&ctx, &header(8), request).await;
    let offsets: Vec<(String, Vec<i64>)> = response
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.committed_offset))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        offsets,
        vec![
            ("g1".to_string(), vec![5]),
            ("g2".to_string(), vec![9]),
            ("none".to_string(), vec![])
        ]
    );
}

#[tokio::test]
async fn create_partitions_checks_assignments_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    topic(&ctx, "t", 1);
    let grow = |name: &str, count: i32, assignments: Option<Vec<Vec<i32>>>| {
        CreatePartitionsTopic::default()
            .with_name(topic_name(name))
            .with_count(count)
            .with_assignments(assignments.map(|a| {
                a.into_iter()
                    .map(|ids| {
                        CreatePartitionsAssignment::default()
                            .with_broker_ids(ids.into_iter().map(BrokerId).collect())
                    })
                    .collect()
            }))
    };
    let codes = |r: &CreatePartitionsResponse| -> Vec<i16> {
        r.results.iter().map(|t| t.error_code).collect()
    };
    let request = CreatePartitionsRequest::default().with_topics(vec![
        grow("t", 3, Some(vec![vec![1]])),
        grow("t", 3, Some(vec![vec![1], vec![2]])),
    ]);
    let response = super::create_partitions::handle(&ctx, &header(3), request).await;
    // Named twice: both refused, nothing changed.
    assert_eq!(
        codes(&response),
        vec![ResponseError::InvalidRequest.code(); 2]
    );
    assert_eq!(ctx.broker.topic("t").unwrap().partitions.len(), 1);
    let request = CreatePartitionsRequest::default().with_topics(vec![grow(
        "t",
        3,
        Some(vec![vec![1], vec![2]]),
    )]);
    let response = super::create_partitions::handle(&ctx, &header(3), request).await;
    assert_eq!(
        codes(&response),
        vec![ResponseError::InvalidReplicaAssignment.code()]
    );
    let request =
        CreatePartitionsRequest::default().with_topics(vec![grow("t", 3, Some(vec![vec![1]]))]);
    let response = super::create_partitions::handle(&ctx, &header(3), request).await;
    assert_eq!(
        codes(&response),
        vec![ResponseError::InvalidReplicaAssignment.code()]
    );
    let request = CreatePartitionsRequest::default().with_topics(vec![grow(
        "t",
        3,
        Some(vec![vec![1], vec![1]]),
    )]);
    let response = super::create_partitions::handle(&ctx, &header(3), request).await;
    assert_eq!(codes(&response), vec![0]);
    assert_eq!(ctx.broker.topic("t").unwrap().partitions.len(), 3);
    let request = CreatePartitionsRequest::default().with_topics(vec![grow("t", 2, None)]);
    let response = super::create_partitions::handle(&ctx, &header(3), request).await;
    assert_eq!(
        codes(&response),
        vec![ResponseError::InvalidPartitions.code()]
    );
    assert!(
        response.results[0]
            .error_message
            .as_ref()
            .is_some_and(|m| m.contains("has 3 partitions"))
    );
}

#[tokio::test]
async fn elect_leaders_and_log_dirs_answer_for_this_node() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    topic(&ctx, "t", 2);
    let request = ElectLeadersRequest::default().with_topic_partitions(Some(vec![
        elect_leaders_request::TopicPartitions::default()
            .with_topic(topic_name("t"))
            .with_partitions(vec![0, 5]),
    ]));
    let response = super::elect_leaders::handle(&ctx, &header(2), request).await;
    let codes: Vec<i16> = response.replica_election_results[0]
        .partition_result
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(
        codes,
        vec![
            ResponseError::ElectionNotNeeded.code(),
            ResponseError::UnknownTopicOrPartition.code()
        ]
    );
    let all = super::elect_leaders::handle(&ctx, &header(2), ElectLeadersRequest::default()).await;
    assert!(all.replica_election_results.is_empty());

    // Null: every topic.
    let all = DescribeLogDirsRequest::default().with_topics(None);
    let response = super::describe_log_dirs::handle(&ctx, &header(4), all).await;
    assert_eq!(response.results.len(), 1);
    let result = &response.results[0];
    assert!(result.log_dir.ends_with("log"));
    assert!(result.total_bytes > 0 && result.usable_bytes >= 0);
    assert!(result.topics.iter().any(|t| t.name.0.as_str() == "t"));

    let move_request = AlterReplicaLogDirsRequest::default().with_dirs(vec![
        alter_replica_log_dirs_request::AlterReplicaLogDir::default()
            .with_path(str("/elsewhere"))
            .with_topics(vec![
                alter_replica_log_dirs_request::AlterReplicaLogDirTopic::default()
                    .with_name(topic_name("t"))
                    .with_partitions(vec![0, 7]),
            ]),
    ]);
    let response = super::alter_replica_log_dirs::handle(&ctx, &header(2), move_request).await;
    let codes: Vec<i16> = response.results[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(
        codes,
        vec![
            ResponseError::LogDirNotFound.code(),
            ResponseError::UnknownTopicOrPartition.code()
        ]
    );
}
