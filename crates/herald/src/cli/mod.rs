//! Client subcommands: the `herald` CLI talking to a broker over the Kafka protocol,
//! like any other client.

use clap::Subcommand;

/// Subcommands that act as a network client of a running broker.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {}

pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {}
}
