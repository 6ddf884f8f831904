//! Client subcommands: the `herald` CLI talking to a broker over the Kafka protocol,
//! like any other client (`queue`, `amqp` and `streams` over the HTTP API). Each command lives in its own file; this one holds what
//! they share (the bootstrap address, argument parsers, table output).

mod amqp;
mod bench;
mod consume;
mod groups;
mod produce;
mod queue;
mod schemas;
mod streams;
mod table;
mod topics;

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_client::Client;

/// Subcommands that act as a network client of a running broker.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Publish one event per line of standard input.
    Produce(produce::ProduceArgs),
    /// Print events of a topic, one per line.
    Consume(consume::ConsumeArgs),
    /// List and describe consumer groups.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// Measure a broker: produce throughput and ack latency, or consume throughput.
    Bench(bench::BenchArgs),
    /// Work queues: subscriptions with leases, acks, retries and dead letters (over the
    /// HTTP API).
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// AMQP 0-9-1 definitions: list exchanges, queues and bindings (over the HTTP API).
    #[command(subcommand)]
    Amqp(amqp::AmqpCommand),
    /// The event store: append to, read, follow and delete streams, stream metadata
    /// (over the HTTP API).
    #[command(subcommand)]
    Streams(streams::StreamsCommand),
    /// The schema registry: register, get, list, check compatibility, set the
    /// compatibility level, delete (over the registry's REST API).
    #[command(subcommand)]
    Schemas(schemas::SchemasCommand),
}

pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Topics(command) => topics::run(command).await,
        ClientCommand::Produce(args) => produce::run(args).await,
        ClientCommand::Consume(args) => consume::run(args).await,
        ClientCommand::Groups(command) => groups::run(command).await,
        ClientCommand::Bench(args) => bench::run(args).await,
        ClientCommand::Queue(command) => queue::run(command).await,
        ClientCommand::Amqp(command) => amqp::run(command).await,
        ClientCommand::Streams(command) => streams::run(command).await,
        ClientCommand::Schemas(command) => schemas::run(command).await,
    }
}

/// Where the broker is; shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker address(es), HOST[:PORT][,HOST[:PORT]...]; the port is 9092 when left
    /// out, and a host name is tried at every address it resolves to.
    #[arg(
        long,
        env = "HERALD_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT"
    )]
    pub bootstrap: String,
}

impl ConnectArgs {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Client::new(&self.bootstrap)
            .await
            .with_context(|| format!("cannot reach a broker at {}", self.bootstrap))
    }
}

/// What a command prints, written to stdout in one go at the end. A reader that
/// closed the pipe early (`| head`) is not an error.
#[derive(Default)]
#[must_use = "output is only written by emit()"]
pub struct Output(String);

impl Output {
    pub fn line(&mut self, text: impl AsRef<str>) {
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }

    pub fn table(&mut self, table: &table::Table) {
        self.0.push_str(&table.render());
    }

    pub fn emit(self) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(self.0.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            result => result.context("cannot write to standard output"),
        }
    }
}

/// Parses `key=value` (the value may contain `=`; the key may not be empty).
pub fn parse_key_value(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {input:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    pub(crate) fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn key_values_split_at_the_first_equals() {
        assert_eq!(
            parse_key_value("retention.ms=1000"),
            Ok(("retention.ms".to_owned(), "1000".to_owned()))
        );
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_owned(), "b=c".to_owned()))
        );
        assert_eq!(parse_key_value("k="), Ok(("k".to_owned(), String::new())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn bootstrap_has_a_default_and_a_flag() {
        // The env var would override the default; make sure the test does not see one.
        if std::env::var_os("HERALD_BOOTSTRAP").is_some() {
            return;
        }
        let Ok(ClientCommand::Groups(groups::GroupsCommand::List(args))) =
            parse(&["groups", "list"])
        else {
            panic!("groups list did not parse");
        };
        assert_eq!(args.connect.bootstrap, "127.0.0.1:9092");
        let Ok(ClientCommand::Groups(groups::GroupsCommand::List(args))) =
            parse(&["groups", "list", "--bootstrap", "localhost:19092"])
        else {
            panic!("groups list --bootstrap did not parse");
        };
        assert_eq!(args.connect.bootstrap, "localhost:19092");
    }
}
