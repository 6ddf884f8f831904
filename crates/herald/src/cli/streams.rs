//! `herald streams append|read|subscribe|delete|metadata`: the event store over the
//! broker's HTTP API (`/streams/...`). Events print as one JSON object per line, the
//! objects the API returns, so they pipe into `jq`; `subscribe` follows the API's
//! Server-Sent Events and prints each event as it arrives.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Output;
use super::queue::{Api, HttpArgs, base_url, encode, over_http};

/// Longest SSE line `subscribe` takes (an event's JSON, base64 data included).
const SSE_LINE_BYTES_MAX: u64 = 16 << 20;
/// How long `subscribe` waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most events one `read` request asks for (the API's default bound).
const READ_PAGE_EVENTS: u64 = 1_000;

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Append one event to a stream; prints the stream's revision and the position.
    Append(Box<AppendArgs>),
    /// Print a stream's events (or `$all`'s), one JSON object per line.
    Read(Box<ReadArgs>),
    /// Follow a stream (or `$all`): its history, then new events as they come, one
    /// JSON object per line.
    Subscribe(Box<SubscribeArgs>),
    /// Soft-delete a stream (`--hard`: tombstone it for good).
    Delete(DeleteArgs),
    /// Print a stream's metadata, or set it with `--set`.
    Metadata(MetadataArgs),
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    pub stream: String,
    /// The event type, e.g. OrderPlaced.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// The data as JSON text (content type application/json).
    #[arg(long, conflicts_with = "data_base64")]
    pub data: Option<String>,
    /// The data as standard base64 (content type application/octet-stream).
    #[arg(long)]
    pub data_base64: Option<String>,
    /// Custom metadata as JSON text.
    #[arg(long)]
    pub metadata: Option<String>,
    /// The event id (a UUID; generated when left out). Retrying with the same id
    /// writes nothing twice.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub content_type: Option<String>,
    /// any, no_stream, stream_exists or the stream's current revision.
    #[arg(long, default_value = "any")]
    pub expected_revision: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// A stream, a system stream (`$ce-<category>`, `$et-<type>`) or `$all`.
    pub stream: String,
    /// start, end, or a revision (`$all`: a position).
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub backwards: bool,
    /// Most events to print.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub count: u64,
    /// Read a system stream's `$>` link events instead of the events they point at.
    #[arg(long)]
    pub no_resolve_links: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// A `$all` filter (on stream names or on event types, not both).
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// `$all` only: streams starting with one of these (comma-separated).
    #[arg(long)]
    pub stream_prefix: Option<String>,
    /// `$all` only: streams matching this regular expression.
    #[arg(long)]
    pub stream_regex: Option<String>,
    /// `$all` only: event types starting with one of these (comma-separated).
    #[arg(long)]
    pub type_prefix: Option<String>,
    /// `$all` only: event types matching this regular expression.
    #[arg(long)]
    pub type_regex: Option<String>,
}

impl FilterArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("stream_prefix", &self.stream_prefix),
            ("stream_regex", &self.stream_regex),
            ("type_prefix", &self.type_prefix),
            ("type_regex", &self.type_regex),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// A stream or `$all`.
    pub stream: String,
    /// First revision (`$all`: position) to print: start (default), end, or a number.
    #[arg(long)]
    pub from: Option<String>,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub stream: String,
    /// any, stream_exists or the stream's current revision.
    #[arg(long, default_value = "any")]
    pub expected_revision: String,
    /// Tombstone: the stream can never be written or read again.
    #[arg(long)]
    pub hard: bool,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Args)]
pub struct MetadataArgs {
    pub stream: String,
    /// Replace the metadata with this JSON object, e.g. '{"$maxCount": 100}'.
    #[arg(long)]
    pub set: Option<String>,
    /// With --set: the expected revision of the metadata stream `$$<stream>`.
    #[arg(long, default_value = "any", requires = "set")]
    pub expected_revision: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

pub async fn run(command: StreamsCommand) -> anyhow::Result<()> {
    match command {
        // Subscribe prints as events arrive, not in one go at the end.
        StreamsCommand::Subscribe(args) => tokio::task::spawn_blocking(move || subscribe(&args))
            .await
            .context("the subscribe command panicked")?,
        StreamsCommand::Append(args) => over_http("streams append", move || append(&args)).await,
        StreamsCommand::Read(args) => over_http("streams read", move || read(&args)).await,
        StreamsCommand::Delete(args) => over_http("streams delete", move || delete(args)).await,
        StreamsCommand::Metadata(args) => {
            over_http("streams metadata", move || metadata(args)).await
        }
    }
}

/// `?k=v&...` with the values percent-encoded (empty when there are none).
fn query_string(pairs: &[(&str, String)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn parse_json(flag: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{flag} is not JSON: {text}"))
}

fn append(args: &AppendArgs) -> anyhow::Result<Output> {
    let mut event = json!({"type": args.event_type});
    if let Some(data) = &args.data {
        event["data"] = parse_json("--data", data)?;
    }
    if let Some(data) = &args.data_base64 {
        event["data_base64"] = json!(data);
    }
    if let Some(metadata) = &args.metadata {
        event["metadata"] = parse_json("--metadata", metadata)?;
    }
    if let Some(id) = &args.id {
        event["id"] = json!(id);
    }
    if let Some(content_type) = &args.content_type {
        event["content_type"] = json!(content_type);
    }
    let body = json!({"expected_revision": args.expected_revision, "events": [event]});
    let path = format!("/streams/{}", encode(&args.stream));
    let appended = Api::new(&args.http, 0)
        .call("POST", &path, Some(&body))
        .with_context(|| format!("cannot append to {}", args.stream))?;
    let mut out = Output::default();
    out.line(appended.to_string());
    Ok(out)
}

fn delete(args: DeleteArgs) -> anyhow::Result<Output> {
    let query = query_string(&[
        ("expected_revision", args.expected_revision.clone()),
        ("hard", args.hard.to_string()),
    ]);
    let path = format!("/streams/{}{query}", encode(&args.stream));
    let deleted = Api::new(&args.http, 0)
        .call("DELETE", &path, None)
        .with_context(|| format!("cannot delete {}", args.stream))?;
    let mut out = Output::default();
    out.line(deleted.to_string());
    Ok(out)
}

fn metadata(args: MetadataArgs) -> anyhow::Result<Output> {
    let api = Api::new(&args.http, 0);
    let answer = match &args.set {
        None => {
            let path = format!("/streams/{}/metadata", encode(&args.stream));
            api.call("GET", &path, None)
        }
        Some(text) => {
            let metadata = parse_json("--set", text)?;
            let query = query_string(&[("expected_revision", args.expected_revision.clone())]);
            let path = format!("/streams/{}/metadata{query}", encode(&args.stream));
            api.call("PUT", &path, Some(&metadata))
        }
    }
    .with_context(|| format!("cannot reach the metadata of {}", args.stream))?;
    let mut out = Output::default();
    out.line(answer.to_string());
    Ok(out)
}

/// Reads page after page (the API answers at most about a megabyte at once) until
/// `count` events are printed or the stream has no more.
fn read(args: &ReadArgs) -> anyhow::Result<Output> {
    let mut out = Output::default();
    let all = args.stream == "$all";
    let api = Api::new(&args.http, 0);
    let mut from = args.from.clone();
    let mut printed = 0u64;
    while printed < args.count {
        let mut pairs = vec![(
            "count",
            (args.count - printed).min(READ_PAGE_EVENTS).to_string(),
        )];
        if args.backwards {
            pairs.push(("direction", "backwards".to_owned()));
        }
        if let Some(from) = &from {
            pairs.push((if all { "position" } else { "from" }, from.clone()));
        }
        if args.no_resolve_links && !all {
            pairs.push(("resolve_links", "false".to_owned()));
        }
        pairs.extend(args.filter.query());
        let path = format!("/streams/{}{}", encode(&args.stream), query_string(&pairs));
        let page = api
            .call("GET", &path, None)
            .with_context(|| format!("cannot read {}", args.stream))?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            out.line(e.to_string());
        }
        printed += events.len() as u64;
        let next = if all {
            (!page["end"].as_bool().unwrap_or(true)).then(|| page["next_position"].to_string())
        } else {
            page["next_revision"].as_u64().map(|n| n.to_string())
        };
        match next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    Ok(out)
}

/// Follows the SSE stream, printing each `event`'s data as one line.
fn subscribe(args: &SubscribeArgs) -> anyhow::Result<()> {
    let all = args.stream == "$all";
    let mut pairs = Vec::new();
    if let Some(from) = &args.from {
        pairs.push((if all { "position" } else { "from" }, from.clone()));
    }
    pairs.extend(args.filter.query());
    let url = format!(
        "{}/streams/{}/subscribe{}",
        base_url(&args.http.http),
        encode(&args.stream),
        query_string(&pairs)
    );
    // No overall timeout: a subscription lasts as long as the user wants it to.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .build()
        .into();
    let response = agent
        .get(&url)
        .header("accept", "text/event-stream")
        .call()
        .with_context(|| format!("cannot reach the HTTP API at {url}"))?;
    let status = response.status();
    let body = response.into_body().into_reader();
    if !status.is_success() {
        let mut text = String::new();
        body.take(SSE_LINE_BYTES_MAX)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read the answer of {url}"))?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = json["message"].as_str().unwrap_or(&text);
        let code = json["error"].as_str().unwrap_or("error");
        bail!("{message} (HTTP {status}, {code})");
    }
    let mut reader = BufReader::new(body);
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut kind = String::new();
    let mut data = String::new();
    let mut line = Vec::new();
    while args.count.is_none_or(|c| printed < c) {
        line.clear();
        let n = (&mut reader)
            .take(SSE_LINE_BYTES_MAX + 1)
            .read_until(b'\n', &mut line)
            .context("the subscription broke off")?;
        if n == 0 {
            bail!("the broker ended the subscription");
        }
        if n as u64 > SSE_LINE_BYTES_MAX {
            bail!("an event line is over {SSE_LINE_BYTES_MAX} bytes");
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            // The end of one SSE event.
            match kind.as_str() {
                "event" => {
                    // One line per event, whatever line breaks the stored JSON has.
                    let event = serde_json::from_str::<Value>(&data)
                        .map_or_else(|_| data.replace('\n', " "), |v| v.to_string());
                    let written = writeln!(stdout, "{event}").and_then(|()| stdout.flush());
                    match written {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        other => other.context("cannot write to standard output")?,
                    }
                    printed += 1;
                }
                "error" => bail!("the subscription failed: {data}"),
                _ => {}
            }
            kind.clear();
            data.clear();
        } else if let Some(v) = text.strip_prefix("event:") {
            kind = v.trim_start().to_owned();
        } else if let Some(v) = text.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
        // `id:` lines and `:` comments (heartbeats) need nothing.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ClientCommand;
    use crate::cli::tests::parse;

    #[test]
    fn append_takes_a_type_and_data_and_an_expected_revision() {
        let Ok(ClientCommand::Streams(StreamsCommand::Append(args))) = parse(&[
            "streams",
            "append",
            "order-1",
            "--type",
            "OrderPlaced",
            "--data",
            r#"{"total": 5}"#,
            "--expected-revision",
            "no_stream",
        ]) else {
            panic!("streams append did not parse");
        };
        assert_eq!(args.stream, "order-1");
        assert_eq!(args.event_type, "OrderPlaced");
        assert_eq!(args.expected_revision, "no_stream");
        assert!(
            parse(&[
                "streams",
                "append",
                "s",
                "--type",
                "T",
                "--data",
                "{}",
                "--data-base64",
                "AA=="
            ])
            .is_err(),
            "data and data-base64 together"
        );
        assert!(parse(&["streams", "append", "s"]).is_err(), "no type");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_string(&[]), "");
        assert_eq!(
            query_string(&[
                ("stream_regex", "^order-(1|2)$".into()),
                ("count", "5".into())
            ]),
            "?stream_regex=%5Eorder-%281%7C2%29%24&count=5"
        );
    }
}
