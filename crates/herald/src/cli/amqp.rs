//! `herald amqp exchanges|queues|bindings`: the AMQP definitions the broker holds, as
//! the HTTP API lists them (`GET /amqp/...`). AMQP clients change them; this only
//! reads. `--json` prints the API's answer as it came, for `jq`.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::Output;
use super::queue::{Api, HttpArgs, over_http, text};
use super::table::Table;

#[derive(Debug, Subcommand)]
pub enum AmqpCommand {
    /// List the exchanges (the predeclared ones too) with their type and flags.
    Exchanges(ListArgs),
    /// List the queues with their topic, ready messages and consumers.
    Queues(ListArgs),
    /// List the bindings: queue bindings and exchange-to-exchange bindings.
    Bindings(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Print the HTTP API's JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How the default exchange (named "") is shown, as RabbitMQ's management UI does.
const DEFAULT_EXCHANGE: &str = "(AMQP default)";

pub async fn run(command: AmqpCommand) -> anyhow::Result<()> {
    over_http("amqp", move || run_blocking(command)).await
}

fn run_blocking(command: AmqpCommand) -> anyhow::Result<Output> {
    let (args, listing) = match command {
        AmqpCommand::Exchanges(args) => (args, &EXCHANGES),
        AmqpCommand::Queues(args) => (args, &QUEUES),
        AmqpCommand::Bindings(args) => (args, &BINDINGS),
    };
    let listed = Api::new(&args.http, 0)
        .call("GET", listing.path, None)
        .with_context(|| format!("cannot list {}", listing.path))?;
    let mut out = Output::default();
    if args.json {
        out.line(serde_json::to_string_pretty(&listed)?);
    } else {
        out.table(&listing.table(&listed));
    }
    Ok(out)
}

/// One listing of the HTTP API and the table made of it: (header, field, how shown).
struct Listing {
    path: &'static str,
    columns: &'static [(&'static str, &'static str, Cell)],
}

#[derive(Clone, Copy)]
enum Cell {
    Text,
    /// An exchange name: the default exchange ("") by the name RabbitMQ shows.
    Exchange,
    /// A field table, as compact JSON; none as an empty cell.
    Arguments,
}

const EXCHANGES: Listing = Listing {
    path: "/amqp/exchanges",
    columns: &[
        ("NAME", "name", Cell::Exchange),
        ("TYPE", "kind", Cell::Text),
        ("DURABLE", "durable", Cell::Text),
        ("AUTO-DELETE", "auto_delete", Cell::Text),
        ("INTERNAL", "internal", Cell::Text),
        ("ARGUMENTS", "arguments", Cell::Arguments),
    ],
};

const QUEUES: Listing = Listing {
    path: "/amqp/queues",
    columns: &[
        ("NAME", "name", Cell::Text),
        ("TOPIC", "topic", Cell::Text),
        ("MESSAGES", "messages", Cell::Text),
        ("CONSUMERS", "consumers", Cell::Text),
        ("DURABLE", "durable", Cell::Text),
        ("EXCLUSIVE", "exclusive", Cell::Text),
        ("AUTO-DELETE", "auto_delete", Cell::Text),
        ("ARGUMENTS", "arguments", Cell::Arguments),
    ],
};

const BINDINGS: Listing = Listing {
    path: "/amqp/bindings",
    columns: &[
        ("SOURCE", "source", Cell::Exchange),
        ("DESTINATION", "destination", Cell::Text),
        ("DESTINATION-TYPE", "destination_type", Cell::Text),
        ("ROUTING-KEY", "routing_key", Cell::Text),
        ("ARGUMENTS", "arguments", Cell::Arguments),
    ],
};

impl Listing {
    fn table(&self, listed: &Value) -> Table {
        let headers: Vec<&str> = self.columns.iter().map(|(header, ..)| *header).collect();
        let mut table = Table::new(&headers);
        for row in listed.as_array().into_iter().flatten() {
            table.row(
                self.columns
                    .iter()
                    .map(|(_, field, cell)| match cell {
                        Cell::Text => text(&row[*field]),
                        Cell::Exchange => exchange_name(&row[*field]),
                        Cell::Arguments => arguments(&row[*field]),
                    })
                    .collect(),
            );
        }
        table
    }
}

fn exchange_name(name: &Value) -> String {
    match name.as_str() {
        Some("") => DEFAULT_EXCHANGE.to_owned(),
        _ => text(name),
    }
}

/// Arguments as compact JSON; none as an empty cell.
fn arguments(arguments: &Value) -> String {
    match arguments.as_object() {
        Some(table) if table.is_empty() => String::new(),
        None if arguments.is_null() => String::new(),
        _ => arguments.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cli::ClientCommand;
    use crate::cli::tests::parse;

    #[test]
    fn each_listing_parses_with_json_and_http() {
        let Ok(ClientCommand::Amqp(AmqpCommand::Queues(args))) =
            parse(&["amqp", "queues", "--json", "--http", "127.0.0.1:18080"])
        else {
            panic!("amqp queues did not parse");
        };
        assert!(args.json);
        assert_eq!(args.http.http, "127.0.0.1:18080");
        assert!(matches!(
            parse(&["amqp", "exchanges"]),
            Ok(ClientCommand::Amqp(AmqpCommand::Exchanges(ListArgs {
                json: false,
                ..
            })))
        ));
        assert!(matches!(
            parse(&["amqp", "bindings"]),
            Ok(ClientCommand::Amqp(AmqpCommand::Bindings(_)))
        ));
        assert!(parse(&["amqp", "channels"]).is_err());
    }

    #[test]
    fn tables_name_the_default_exchange_and_show_arguments_compactly() {
        let listed = json!([
            {"source": "", "destination": "orders", "destination_type": "queue",
             "routing_key": "orders", "arguments": {}},
            {"source": "events", "destination": "audit", "destination_type": "exchange",
             "routing_key": "#", "arguments": {"x-match": "any"}}
        ]);
        let text = BINDINGS.table(&listed).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SOURCE"));
        assert!(lines[1].starts_with("(AMQP default)  orders"), "{text}");
        assert!(
            lines[1].ends_with("orders"),
            "no arguments: an empty cell: {text}"
        );
        assert!(lines[2].ends_with(r#"{"x-match":"any"}"#), "{text}");
    }

    #[test]
    fn queue_rows_carry_counts_and_flags() {
        let listed = json!([{"name": "notifications", "topic": "notifications",
            "durable": true, "exclusive": false, "auto_delete": false,
            "arguments": {"x-message-ttl": 60000}, "messages": 3, "consumers": 1}]);
        let text = QUEUES.table(&listed).render();
        let row = text.lines().nth(1).unwrap_or_default();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "notifications",
                "notifications",
                "3",
                "1",
                "true",
                "false",
                "false",
                r#"{"x-message-ttl":60000}"#
            ]
        );
        assert_eq!(EXCHANGES.table(&json!(null)).render().lines().count(), 1);
    }
}
