//! `herald queue ...`: work-queue subscriptions over the broker's HTTP API (the Kafka
//! protocol has no such thing). Records and dead letters print as one JSON object per
//! line, the same objects the HTTP API returns, so they pipe into `jq`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};

use super::Output;
use super::table::Table;

/// How long one HTTP call may take beyond a long poll's own wait.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List every subscription with its counters.
    List(HttpArgs),
    /// Create a subscription on a topic.
    Create(Box<CreateArgs>),
    /// Show a subscription's settings and counters.
    Stats(SubscriptionArgs),
    /// Delete a subscription (the topic's records stay).
    Delete(SubscriptionArgs),
    /// Lease records; prints one JSON object per record (with its receipt).
    Receive(ReceiveArgs),
    /// Mark records done.
    Ack(AckArgs),
    /// Report a failed delivery: retried after the backoff, or dead-lettered.
    Nack(NackArgs),
    /// Put a record back now without counting a failure.
    Release(ReceiptArgs),
    /// Extend a record's lease.
    Extend(ExtendArgs),
    /// Print the dead letters not redriven yet, one JSON object per line.
    Dlq(DlqArgs),
    /// Publish the dead letters back to their source topic.
    Redrive(SubscriptionArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// The broker's HTTP API: a URL, or HOST:PORT.
    #[arg(
        long,
        env = "HERALD_HTTP",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub http: String,
}

#[derive(Debug, Args)]
pub struct SubscriptionArgs {
    pub topic: String,
    pub subscription: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Settings of a new subscription; the broker's defaults for those not given.
#[derive(Debug, Args, Serialize)]
pub struct SettingsArgs {
    /// Visibility timeout of a lease.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Failed deliveries before a record is dead-lettered.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_max_ms: Option<u64>,
    /// Fraction of each delay added at random, 0..=1.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_jitter: Option<f64>,
    /// Default: <topic>.<subscription>.dlq.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Never lease two records with the same key at once.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ordered_by_key: bool,
    /// earliest (default) or latest.
    #[arg(long, value_parser = ["earliest", "latest"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Tracked records per partition.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unacked: Option<usize>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub sub: SubscriptionArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub sub: SubscriptionArgs,
    /// Most records to lease.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub max_records: usize,
    /// Wait up to this long for a record to arrive.
    #[arg(long, default_value_t = 0)]
    pub wait_ms: u64,
}

#[derive(Debug, Args)]
pub struct AckArgs {
    #[command(flatten)]
    pub sub: SubscriptionArgs,
    /// Receipts printed by `receive`.
    #[arg(required = true)]
    pub receipts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReceiptArgs {
    #[command(flatten)]
    pub sub: SubscriptionArgs,
    pub receipt: String,
}

#[derive(Debug, Args)]
pub struct NackArgs {
    #[command(flatten)]
    pub receipt: ReceiptArgs,
    /// What went wrong (kept on the dead letter as herald-dlq-last-error).
    #[arg(long)]
    pub error: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub receipt: ReceiptArgs,
    /// New lease length from now (default: the subscription's).
    #[arg(long)]
    pub lease_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub sub: SubscriptionArgs,
    #[arg(long, short = 'n', default_value_t = 100)]
    pub max_records: usize,
}

/// A blocking JSON client of the HTTP API; the async CLI runs it on a blocking thread.
/// `herald amqp` uses it too.
pub(super) struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    pub(super) fn new(http: &HttpArgs, extra_wait_ms: u64) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT + Duration::from_millis(extra_wait_ms)))
            .build()
            .into();
        Api {
            base: base_url(&http.http),
            agent,
        }
    }

    /// `/topics/{topic}/subscriptions/{name}` plus `suffix`, names percent-encoded.
    fn sub_path(sub: &SubscriptionArgs, suffix: &str) -> String {
        format!(
            "/topics/{}/subscriptions/{}{suffix}",
            encode(&sub.topic),
            encode(&sub.subscription)
        )
    }

    /// Sends the request; a non-2xx answer becomes an error carrying the API's code and
    /// message. An empty 2xx body is `null`.
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        // Compact JSON (ureq's send_json pretty-prints): an event's data is stored as
        // the JSON text sent.
        let json = |body: &Value| serde_json::to_vec(body);
        const JSON: &str = "application/json";
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            ("POST", Some(body)) => self
                .agent
                .post(&url)
                .content_type(JSON)
                .send(&json(body)?[..]),
            ("POST", None) => self.agent.post(&url).send_empty(),
            ("PUT", Some(body)) => self
                .agent
                .put(&url)
                .content_type(JSON)
                .send(&json(body)?[..]),
            (other, _) => bail!("unsupported method {other}"),
        };
        let mut response = sent.with_context(|| format!("cannot reach the HTTP API at {url}"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the answer of {url}"))?;
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{url} answered {status} with non-JSON: {text}"))?
        };
        if !status.is_success() {
            let code = json["error"].as_str().unwrap_or("error");
            let message = json["message"].as_str().unwrap_or(&text);
            bail!("{message} (HTTP {status}, {code})");
        }
        Ok(json)
    }
}

/// The API's base URL: `--http` may be a URL or a bare HOST:PORT (then http://).
pub(super) fn base_url(http: &str) -> String {
    let trimmed = http.trim_end_matches('/');
    if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(super) fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub async fn run(command: QueueCommand) -> anyhow::Result<()> {
    over_http("queue", move || run_blocking(command)).await
}

/// Runs a command of the blocking HTTP client on a blocking thread, then prints what
/// it made.
pub(super) async fn over_http(
    name: &str,
    command: impl FnOnce() -> anyhow::Result<Output> + Send + 'static,
) -> anyhow::Result<()> {
    let out = tokio::task::spawn_blocking(command)
        .await
        .with_context(|| format!("the {name} command panicked"))??;
    out.emit()
}

fn run_blocking(command: QueueCommand) -> anyhow::Result<Output> {
    let mut out = Output::default();
    match command {
        QueueCommand::List(http) => {
            let subs = Api::new(&http, 0).call("GET", "/subscriptions", None)?;
            let mut table = Table::new(&[
                "TOPIC",
                "NAME",
                "DEPTH",
                "IN-FLIGHT",
                "DELAYED",
                "DLQ",
                "DLQ-TOPIC",
            ]);
            for s in subs.as_array().into_iter().flatten() {
                let stat = |k: &str| s["stats"][k].to_string();
                table.row(vec![
                    text(&s["topic"]),
                    text(&s["name"]),
                    stat("depth"),
                    stat("in_flight"),
                    stat("delayed"),
                    stat("dead_letter_depth"),
                    text(&s["dead_letter_topic"]),
                ]);
            }
            out.table(&table);
        }
        QueueCommand::Create(args) => {
            let mut body = serde_json::to_value(&args.settings)?;
            body["name"] = json!(args.sub.subscription);
            let path = format!("/topics/{}/subscriptions", encode(&args.sub.topic));
            let created = Api::new(&args.sub.http, 0)
                .call("POST", &path, Some(&body))
                .with_context(|| {
                    format!(
                        "cannot create subscription {} on {}",
                        args.sub.subscription, args.sub.topic
                    )
                })?;
            describe(&mut out, &created);
        }
        QueueCommand::Stats(sub) => {
            let detail = Api::new(&sub.http, 0)
                .call("GET", &Api::sub_path(&sub, ""), None)
                .with_context(|| {
                    format!(
                        "cannot read subscription {} of {}",
                        sub.subscription, sub.topic
                    )
                })?;
            describe(&mut out, &detail);
        }
        QueueCommand::Delete(sub) => {
            Api::new(&sub.http, 0)
                .call("DELETE", &Api::sub_path(&sub, ""), None)
                .with_context(|| {
                    format!(
                        "cannot delete subscription {} of {}",
                        sub.subscription, sub.topic
                    )
                })?;
            out.line(format!(
                "deleted subscription {} of {}",
                sub.subscription, sub.topic
            ));
        }
        QueueCommand::Receive(args) => {
            let body = json!({"max_records": args.max_records, "wait_ms": args.wait_ms});
            let got = Api::new(&args.sub.http, args.wait_ms).call(
                "POST",
                &Api::sub_path(&args.sub, "/receive"),
                Some(&body),
            )?;
            json_lines(&mut out, &got["records"]);
        }
        QueueCommand::Ack(args) => {
            let body = json!({"receipts": args.receipts});
            let answer = Api::new(&args.sub.http, 0).call(
                "POST",
                &Api::sub_path(&args.sub, "/ack"),
                Some(&body),
            )?;
            out.line(format!("acked {}", answer["acked"]));
            let failed = answer["failed"].as_array().cloned().unwrap_or_default();
            if let Some(first) = failed.first() {
                std::mem::take(&mut out).emit()?;
                for f in &failed {
                    eprintln!(
                        "{}: {}: {}",
                        text(&f["receipt"]),
                        text(&f["error"]),
                        text(&f["message"])
                    );
                }
                bail!(
                    "{} of the receipts were not acked (first: {})",
                    failed.len(),
                    text(&first["error"])
                );
            }
        }
        QueueCommand::Nack(args) => {
            let r = &args.receipt;
            let body = json!({"receipt": r.receipt, "error": args.error});
            let answer = Api::new(&r.sub.http, 0).call(
                "POST",
                &Api::sub_path(&r.sub, "/nack"),
                Some(&body),
            )?;
            out.line(if answer["dead_lettered"] == json!(true) {
                "dead-lettered"
            } else {
                "will be retried after the backoff"
            });
        }
        QueueCommand::Release(r) => {
            let body = json!({"receipt": r.receipt});
            Api::new(&r.sub.http, 0).call(
                "POST",
                &Api::sub_path(&r.sub, "/release"),
                Some(&body),
            )?;
            out.line("released");
        }
        QueueCommand::Extend(args) => {
            let r = &args.receipt;
            let body = json!({"receipt": r.receipt, "lease_ms": args.lease_ms});
            let answer = Api::new(&r.sub.http, 0).call(
                "POST",
                &Api::sub_path(&r.sub, "/extend"),
                Some(&body),
            )?;
            out.line(format!(
                "lease ends at {} (ms since the epoch)",
                answer["lease_deadline_ms"]
            ));
        }
        QueueCommand::Dlq(args) => {
            let path = Api::sub_path(
                &args.sub,
                &format!("/dead-letters?max_records={}", args.max_records),
            );
            let answer = Api::new(&args.sub.http, 0).call("GET", &path, None)?;
            json_lines(&mut out, &answer["records"]);
        }
        QueueCommand::Redrive(sub) => {
            let answer =
                Api::new(&sub.http, 0).call("POST", &Api::sub_path(&sub, "/redrive"), None)?;
            let moved = answer["moved"].as_u64().unwrap_or(0);
            let records = if moved == 1 { "record" } else { "records" };
            out.line(format!("moved {moved} {records} back to {}", sub.topic));
        }
    }
    Ok(out)
}

/// A JSON string without quotes; anything else as JSON text.
pub(super) fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn json_lines(out: &mut Output, records: &Value) {
    for r in records.as_array().into_iter().flatten() {
        out.line(r.to_string());
    }
}

fn describe(out: &mut Output, detail: &Value) {
    out.line(format!(
        "subscription {} of {}",
        text(&detail["name"]),
        text(&detail["topic"])
    ));
    out.line(format!(
        "dead_letter_topic: {}",
        text(&detail["dead_letter_topic"])
    ));
    for section in ["settings", "stats"] {
        out.line(format!("{section}:"));
        for (k, v) in detail[section].as_object().into_iter().flatten() {
            out.line(format!("  {k}: {}", text(v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ClientCommand;
    use crate::cli::tests::parse;

    #[test]
    fn names_are_percent_encoded_in_paths() {
        assert_eq!(encode("orders.v1_x-y~"), "orders.v1_x-y~");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn create_sends_only_the_settings_given() {
        let Ok(ClientCommand::Queue(QueueCommand::Create(args))) = parse(&[
            "queue",
            "create",
            "orders",
            "billing",
            "--max-deliveries",
            "3",
            "--ordered-by-key",
        ]) else {
            panic!("queue create did not parse");
        };
        assert_eq!(
            serde_json::to_value(&args.settings).unwrap(),
            json!({"max_deliveries": 3, "ordered_by_key": true})
        );
    }
}
