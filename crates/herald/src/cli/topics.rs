//! `herald topics create|list|describe|delete`.

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_client::{Error as ClientError, NewTopic};

use super::table::Table;
use super::{ConnectArgs, Output, parse_key_value};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topic names.
    List(ListArgs),
    /// Show a topic's partitions, offsets and configuration.
    Describe(DescribeArgs),
    /// Delete a topic and all its events.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The topic to create.
    pub name: String,
    /// Number of partitions (default: the broker's).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: Option<i32>,
    /// Copies of each partition (default: the broker's).
    #[arg(long, value_parser = clap::value_parser!(i16).range(1..))]
    pub replication_factor: Option<i16>,
    /// A topic config, e.g. retention.ms=86400000 (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The topic to describe.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The topic to delete.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Create(args) => create(args).await,
        TopicsCommand::List(args) => list(args).await,
        TopicsCommand::Describe(args) => describe(args).await,
        TopicsCommand::Delete(args) => delete(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let topic = NewTopic {
        name: args.name.clone(),
        partitions: args.partitions.unwrap_or(-1),
        replication_factor: args.replication_factor.unwrap_or(-1),
        configs: args.configs,
    };
    let partitions = client
        .create_topic(&topic)
        .await
        .with_context(|| format!("cannot create topic {}", args.name))?;
    let mut out = Output::default();
    out.line(match partitions {
        Some(1) => format!("created topic {} with 1 partition", args.name),
        Some(n) => format!("created topic {} with {n} partitions", args.name),
        None => format!("created topic {}", args.name),
    });
    out.emit()
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let topics = client.list_topics().await.context("cannot list topics")?;
    let mut out = Output::default();
    for topic in topics.iter().filter(|t| t.error.is_none()) {
        out.line(&topic.name);
    }
    out.emit()
}

async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let topic = client
        .describe_topic(&args.name)
        .await
        .with_context(|| format!("cannot describe topic {}", args.name))?;
    let offsets = client
        .offset_range(&topic)
        .await
        .with_context(|| format!("cannot read offsets of topic {}", args.name))?;

    let topic_id = if topic.topic_id.is_nil() {
        "-".to_owned()
    } else {
        topic.topic_id.to_string()
    };
    let mut out = Output::default();
    out.line(format!("Topic: {}", topic.name));
    out.line(format!("TopicId: {topic_id}"));
    out.line(format!("Partitions: {}", topic.partitions.len()));
    out.line("");
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "LOG-START",
        "LOG-END",
    ]);
    let join = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    for partition in &topic.partitions {
        let (start, end) = offsets
            .get(&partition.partition)
            .map(|(s, e)| (s.to_string(), e.to_string()))
            .unwrap_or_else(|| ("-".to_owned(), "-".to_owned()));
        table.row(vec![
            partition.partition.to_string(),
            partition.leader.to_string(),
            join(&partition.replicas),
            join(&partition.isr),
            start,
            end,
        ]);
    }
    out.table(&table);

    // Configs are extra information: a broker without DescribeConfigs still gets
    // the partition table above.
    match client.describe_topic_configs(&args.name).await {
        Ok(configs) if !configs.is_empty() => {
            out.line("");
            let mut table = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
            for config in configs {
                let value = match (&config.value, config.is_sensitive) {
                    (_, true) => "(sensitive)".to_owned(),
                    (Some(value), false) => value.clone(),
                    (None, false) => "-".to_owned(),
                };
                table.row(vec![config.name, value, config.source.name().to_owned()]);
            }
            out.table(&table);
        }
        Ok(_) => {}
        Err(ClientError::UnsupportedApi { .. }) => {}
        Err(error) => eprintln!(
            "warning: cannot read configs of topic {}: {error}",
            args.name
        ),
    }
    out.emit()
}

async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    client
        .delete_topic(&args.name)
        .await
        .with_context(|| format!("cannot delete topic {}", args.name))?;
    let mut out = Output::default();
    out.line(format!("deleted topic {} and its events", args.name));
    out.emit()
}

#[cfg(test)]
mod tests {
    use super::super::ClientCommand;
    use super::super::tests::parse;
    use super::*;

    #[test]
    fn create_defaults_to_the_broker_partition_count() {
        let Ok(ClientCommand::Topics(TopicsCommand::Create(args))) =
            parse(&["topics", "create", "orders"])
        else {
            panic!("did not parse");
        };
        assert_eq!(args.name, "orders");
        assert_eq!(args.partitions, None);
        assert!(args.configs.is_empty());
    }

    #[test]
    fn create_takes_partitions_and_configs() {
        let Ok(ClientCommand::Topics(TopicsCommand::Create(args))) = parse(&[
            "topics",
            "create",
            "orders",
            "--partitions",
            "6",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=1000",
            "--config",
            "cleanup.policy=compact",
        ]) else {
            panic!("did not parse");
        };
        assert_eq!(args.partitions, Some(6));
        assert_eq!(args.replication_factor, Some(1));
        assert_eq!(
            args.configs,
            vec![
                ("retention.ms".to_owned(), "1000".to_owned()),
                ("cleanup.policy".to_owned(), "compact".to_owned())
            ]
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(parse(&["topics", "create", "orders", "--partitions", "0"]).is_err());
        assert!(parse(&["topics", "create", "orders", "--partitions", "many"]).is_err());
        assert!(parse(&["topics", "create", "orders", "--config", "novalue"]).is_err());
        assert!(parse(&["topics", "describe"]).is_err());
    }
}
