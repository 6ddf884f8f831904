//! The "range" assignor of the "consumer" group protocol, and the subscription and
//! assignment blobs group members exchange through the coordinator.
//!
//! The blobs are Kafka's ConsumerProtocolSubscription / ConsumerProtocolAssignment:
//! an i16 version followed by the struct at that version. Members written by other
//! clients may use newer versions; they only add fields, so decoding reads the
//! fields this crate knows.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use crate::error::{Error, Result};

pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
pub const RANGE_ASSIGNOR: &str = "range";

/// Versions written. Version 0 has every field this client uses and is read by every
/// consumer that speaks the protocol.
const SUBSCRIPTION_VERSION: i16 = 0;
const ASSIGNMENT_VERSION: i16 = 0;

/// Topic -> partitions, both sorted.
pub type Assignment = BTreeMap<String, Vec<i32>>;

/// Assigns partitions like Kafka's RangeAssignor: for each topic, the members
/// subscribed to it, sorted by member id, get consecutive ranges, and the first
/// `partitions % members` of them one extra partition.
///
/// `subscriptions`: member id -> topics; `partition_counts`: topic -> partitions
/// (topics missing here are not assigned). Every member gets an entry.
pub fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Assignment> {
    let mut assignments: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|member| (member.clone(), Assignment::new()))
        .collect();
    let topics: BTreeSet<&String> = subscriptions.values().flatten().collect();
    for topic in topics {
        let Some(&partitions) = partition_counts.get(topic) else {
            continue;
        };
        // BTreeMap keys are already sorted by member id.
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(member, _)| member)
            .collect();
        if members.is_empty() || partitions <= 0 {
            continue;
        }
        let member_count = i32::try_from(members.len()).unwrap_or(i32::MAX);
        let per_member = partitions / member_count;
        let with_extra = partitions % member_count;
        for (index, member) in (0..).zip(members) {
            let start = per_member * index + index.min(with_extra);
            let length = per_member + i32::from(index < with_extra);
            if length == 0 {
                continue;
            }
            if let Some(assignment) = assignments.get_mut(member) {
                assignment.insert(topic.clone(), (start..start + length).collect());
            }
        }
    }
    assignments
}

pub fn encode_subscription(topics: &[String]) -> Result<Bytes> {
    let subscription = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.clone()))
            .collect(),
    );
    encode_versioned(&subscription, SUBSCRIPTION_VERSION)
}

/// The topics a member subscribed to.
pub fn decode_subscription(data: &[u8]) -> Result<Vec<String>> {
    let subscription: ConsumerProtocolSubscription = decode_versioned(data, "subscription")?;
    Ok(subscription
        .topics
        .into_iter()
        .map(|t| t.as_str().to_owned())
        .collect())
}

pub fn encode_assignment(assignment: &Assignment) -> Result<Bytes> {
    let message = ConsumerProtocolAssignment::default().with_assigned_partitions(
        assignment
            .iter()
            .map(|(topic, partitions)| {
                AssignedPartitions::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(partitions.clone())
            })
            .collect(),
    );
    encode_versioned(&message, ASSIGNMENT_VERSION)
}

/// An empty blob is an empty assignment (what a member gets before any sync).
pub fn decode_assignment(data: &[u8]) -> Result<Assignment> {
    if data.is_empty() {
        return Ok(Assignment::new());
    }
    let message: ConsumerProtocolAssignment = decode_versioned(data, "assignment")?;
    let mut assignment = Assignment::new();
    for topic in message.assigned_partitions {
        let partitions = assignment
            .entry(topic.topic.0.as_str().to_owned())
            .or_default();
        partitions.extend(topic.partitions);
        partitions.sort_unstable();
        partitions.dedup();
    }
    Ok(assignment)
}

fn encode_versioned<M: Encodable>(message: &M, version: i16) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message.encode(&mut buf, version).map_err(|e| {
        Error::InvalidArgument(format!("cannot encode consumer protocol data: {e:#}"))
    })?;
    Ok(buf.freeze())
}

fn decode_versioned<M: Decodable + Message>(data: &[u8], what: &str) -> Result<M> {
    let invalid = |message: String| {
        Error::UnexpectedResponse(format!("invalid consumer protocol {what}: {message}"))
    };
    let mut buf = Bytes::copy_from_slice(data);
    if buf.len() < 2 {
        return Err(invalid(format!("{} bytes", buf.len())));
    }
    let version = buf.get_i16();
    if version < 0 {
        return Err(invalid(format!("version {version}")));
    }
    M::decode(&mut buf, version.min(M::VERSIONS.max)).map_err(|e| invalid(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriptions(members: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        members
            .iter()
            .map(|(m, topics)| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(topics: &[(&str, i32)]) -> BTreeMap<String, i32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_gives_the_first_members_the_extra_partitions() {
        let result = range_assign(
            &subscriptions(&[
                ("c1", &["orders"]),
                ("c0", &["orders"]),
                ("c2", &["orders"]),
            ]),
            &counts(&[("orders", 7)]),
        );
        assert_eq!(result["c0"]["orders"], vec![0, 1, 2]);
        assert_eq!(result["c1"]["orders"], vec![3, 4]);
        assert_eq!(result["c2"]["orders"], vec![5, 6]);
    }

    #[test]
    fn range_works_per_topic_and_leaves_extra_members_empty() {
        let result = range_assign(
            &subscriptions(&[("a", &["t1", "t2"]), ("b", &["t1"]), ("c", &["t1"])]),
            &counts(&[("t1", 2), ("t2", 3)]),
        );
        assert_eq!(result["a"]["t1"], vec![0]);
        assert_eq!(result["b"]["t1"], vec![1]);
        assert!(result["c"].is_empty());
        assert_eq!(result["a"]["t2"], vec![0, 1, 2]);
    }

    #[test]
    fn range_skips_unknown_topics() {
        let result = range_assign(&subscriptions(&[("a", &["gone"])]), &counts(&[]));
        assert_eq!(result.len(), 1);
        assert!(result["a"].is_empty());
    }

    #[test]
    fn range_assigns_every_partition_exactly_once() {
        for members in 1..6 {
            for partitions in 0..13 {
                let subs: BTreeMap<String, Vec<String>> = (0..members)
                    .map(|m| (format!("m{m}"), vec!["t".to_string()]))
                    .collect();
                let result = range_assign(&subs, &counts(&[("t", partitions)]));
                let mut all: Vec<i32> = result
                    .values()
                    .flat_map(|a| a.values().flatten().copied())
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn protocol_blobs_round_trip() {
        let topics = vec!["orders".to_string(), "payments".to_string()];
        let blob = encode_subscription(&topics).expect("encode");
        assert_eq!(&blob[..2], &[0, 0]);
        assert_eq!(decode_subscription(&blob).expect("decode"), topics);

        let assignment: Assignment = [("orders".to_string(), vec![0, 2])].into_iter().collect();
        let blob = encode_assignment(&assignment).expect("encode");
        assert_eq!(decode_assignment(&blob).expect("decode"), assignment);
        assert!(decode_assignment(&[]).expect("empty").is_empty());
        assert!(decode_assignment(&[0]).is_err());
        assert!(decode_subscription(&[0, 0, 0xff]).is_err());
    }

    #[test]
    fn newer_versions_are_read_with_known_fields() {
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("orders")])
            .with_generation_id(4);
        let mut buf = BytesMut::new();
        buf.put_i16(3);
        subscription.encode(&mut buf, 3).expect("encode v3");
        assert_eq!(
            decode_subscription(&buf).expect("decode"),
            vec!["orders".to_string()]
        );
    }
}
