//! `herald groups list|describe`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_client::{Client, GroupDescription, OffsetSpec, TopicPartition};

use super::table::Table;
use super::{ConnectArgs, Output};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups.
    List(ListArgs),
    /// Show a group's state, members, and per-partition committed offsets and lag.
    Describe(DescribeArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The group to describe.
    pub group: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List(args) => list(args).await,
        GroupsCommand::Describe(args) => describe(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let groups = client.list_groups().await.context("cannot list groups")?;
    let mut table = Table::new(&["GROUP", "TYPE", "STATE"]);
    for group in groups {
        let protocol_type = if group.protocol_type.is_empty() {
            "-".to_owned()
        } else {
            group.protocol_type
        };
        table.row(vec![
            group.group_id,
            protocol_type,
            group.state.unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut out = Output::default();
    out.table(&table);
    out.emit()
}

/// One line of the partition table.
#[derive(Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: TopicPartition,
    pub committed: Option<i64>,
    pub end: Option<i64>,
    pub member: Option<String>,
}

impl PartitionLag {
    /// Events not yet consumed; unknown without both offsets. Never negative (an end
    /// offset read a moment before the commit may be behind it).
    pub fn lag(&self) -> Option<i64> {
        Some((self.end? - self.committed?).max(0))
    }
}

/// Every partition the group has committed or a member owns, with its owner.
pub fn partition_lags(
    group: &GroupDescription,
    committed: &BTreeMap<TopicPartition, i64>,
    ends: &BTreeMap<TopicPartition, i64>,
) -> Vec<PartitionLag> {
    let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
    for member in &group.members {
        for (topic, partitions) in &member.assignment {
            for &partition in partitions {
                owners.insert(
                    TopicPartition::new(topic.clone(), partition),
                    member.member_id.clone(),
                );
            }
        }
    }
    let all: BTreeSet<&TopicPartition> = committed.keys().chain(owners.keys()).collect();
    all.into_iter()
        .map(|tp| PartitionLag {
            partition: tp.clone(),
            committed: committed.get(tp).copied(),
            end: ends.get(tp).copied(),
            member: owners.get(tp).cloned(),
        })
        .collect()
}

async fn end_offsets(
    client: &Client,
    partitions: &[TopicPartition],
) -> BTreeMap<TopicPartition, i64> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let mut ends = BTreeMap::new();
    for (topic, partitions) in by_topic {
        match client
            .list_offsets(topic, &partitions, OffsetSpec::Latest)
            .await
        {
            Ok(offsets) => ends.extend(
                offsets
                    .into_iter()
                    .map(|(p, offset)| (TopicPartition::new(topic, p), offset)),
            ),
            // A deleted topic still has commits; show them without an end offset.
            Err(error) => eprintln!("warning: cannot read end offsets of {topic}: {error}"),
        }
    }
    ends
}

async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let group = client
        .describe_group(&args.group)
        .await
        .with_context(|| format!("cannot describe group {}", args.group))?;
    let committed = client
        .committed_offsets(&args.group, None)
        .await
        .with_context(|| format!("cannot read committed offsets of group {}", args.group))?;

    let mut out = Output::default();
    out.line(format!("Group: {}", group.group_id));
    out.line(format!("State: {}", group.state));
    if !group.protocol_type.is_empty() {
        out.line(if group.protocol.is_empty() {
            format!("Protocol: {}", group.protocol_type)
        } else {
            format!("Protocol: {}/{}", group.protocol_type, group.protocol)
        });
    }
    out.line(format!("Members: {}", group.members.len()));
    if !group.members.is_empty() {
        out.line("");
        let mut members = Table::new(&["MEMBER", "CLIENT-ID", "HOST", "PARTITIONS"]);
        for member in &group.members {
            let assigned = member
                .assignment
                .iter()
                .map(|(topic, partitions)| {
                    let partitions: Vec<String> = partitions.iter().map(i32::to_string).collect();
                    format!("{topic}:{}", partitions.join(","))
                })
                .collect::<Vec<_>>()
                .join(" ");
            members.row(vec![
                member.member_id.clone(),
                member.client_id.clone(),
                member.client_host.clone(),
                if assigned.is_empty() {
                    "-".to_owned()
                } else {
                    assigned
                },
            ]);
        }
        out.table(&members);
    }

    let partitions: Vec<TopicPartition> = partition_lags(&group, &committed, &BTreeMap::new())
        .into_iter()
        .map(|lag| lag.partition)
        .collect();
    let ends = end_offsets(&client, &partitions).await;
    let lags = partition_lags(&group, &committed, &ends);
    if lags.is_empty() {
        out.line("");
        out.line("No committed offsets.");
        return out.emit();
    }
    out.line("");
    let mut table = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"]);
    let or_dash = |value: Option<i64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for lag in &lags {
        table.row(vec![
            lag.partition.topic.clone(),
            lag.partition.partition.to_string(),
            or_dash(lag.committed),
            or_dash(lag.end),
            or_dash(lag.lag()),
            lag.member.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.table(&table);
    out.emit()
}

#[cfg(test)]
mod tests {
    use super::super::ClientCommand;
    use super::super::tests::parse;
    use super::*;
    use herald_client::MemberDescription;

    #[test]
    fn lag_covers_committed_and_owned_partitions() {
        let group = GroupDescription {
            group_id: "billing".to_owned(),
            state: "Stable".to_owned(),
            protocol_type: "consumer".to_owned(),
            protocol: "range".to_owned(),
            members: vec![MemberDescription {
                member_id: "m1".to_owned(),
                group_instance_id: None,
                client_id: "herald".to_owned(),
                client_host: "/127.0.0.1".to_owned(),
                assignment: [("orders".to_owned(), vec![0, 1])].into_iter().collect(),
            }],
        };
        let committed: BTreeMap<TopicPartition, i64> = [
            (TopicPartition::new("orders", 0), 5),
            (TopicPartition::new("old", 0), 9),
        ]
        .into_iter()
        .collect();
        let ends: BTreeMap<TopicPartition, i64> = [
            (TopicPartition::new("orders", 0), 12),
            (TopicPartition::new("orders", 1), 3),
            (TopicPartition::new("old", 0), 7),
        ]
        .into_iter()
        .collect();
        let lags = partition_lags(&group, &committed, &ends);
        let summary: Vec<(String, Option<i64>, Option<String>)> = lags
            .iter()
            .map(|l| (l.partition.to_string(), l.lag(), l.member.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("old-0".to_owned(), Some(0), None),
                ("orders-0".to_owned(), Some(7), Some("m1".to_owned())),
                ("orders-1".to_owned(), None, Some("m1".to_owned())),
            ]
        );
    }

    #[test]
    fn describe_needs_a_group() {
        assert!(parse(&["groups", "describe"]).is_err());
        let Ok(ClientCommand::Groups(GroupsCommand::Describe(args))) =
            parse(&["groups", "describe", "billing"])
        else {
            panic!("did not parse");
        };
        assert_eq!(args.group, "billing");
    }
}
