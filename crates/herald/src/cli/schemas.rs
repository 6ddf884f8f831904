//! `herald schemas register|get|list|check|config|delete`: the schema registry's REST
//! API (Confluent's), from the command line. `check` exits non-zero when the schema is
//! incompatible, so a build can fail on a breaking change.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Output;
use super::queue::{Api, HttpArgs, encode, over_http};

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register a schema under a subject; prints its id (the same id for the same schema).
    Register(SchemaArgs),
    /// Print a version of a subject (`--version latest` by default), or a schema by id.
    Get(GetArgs),
    /// List the subjects, or the versions of one subject.
    List(ListArgs),
    /// Check a schema against a version of a subject under the subject's compatibility
    /// level; exits 1 when it is incompatible, printing why.
    Check(CheckArgs),
    /// Print the compatibility level (global, or of a subject), or set it with `--set`.
    Config(ConfigArgs),
    /// Delete a subject, or one version of it (soft; `--permanent` after a soft delete).
    Delete(DeleteArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// The schema registry: a URL, or HOST:PORT.
    #[arg(
        long,
        env = "HERALD_REGISTRY",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    pub registry: String,
}

impl RegistryArgs {
    fn api(&self) -> Api {
        Api::new(
            &HttpArgs {
                http: self.registry.clone(),
            },
            0,
        )
    }
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    pub subject: String,
    /// The schema's file (`-` for standard input).
    #[arg(long, short = 'f')]
    pub file: String,
    /// AVRO, JSON or PROTOBUF.
    #[arg(long = "type", default_value = "AVRO")]
    pub schema_type: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The subject (or use `--id`).
    pub subject: Option<String>,
    #[arg(long, default_value = "latest")]
    pub version: String,
    /// A schema id instead of a subject.
    #[arg(long, conflicts_with = "subject")]
    pub id: Option<u32>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List this subject's versions instead of the subjects.
    pub subject: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub schema: SchemaArgs,
    #[arg(long, default_value = "latest")]
    pub version: String,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    pub subject: Option<String>,
    /// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or
    /// FULL_TRANSITIVE.
    #[arg(long)]
    pub set: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub subject: String,
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long)]
    pub permanent: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(command: SchemasCommand) -> anyhow::Result<()> {
    over_http("schemas", move || run_blocking(command)).await
}

fn read_schema(args: &SchemaArgs) -> anyhow::Result<Value> {
    let text = if args.file == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the schema from stdin")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read the schema file {}", args.file))?
    };
    Ok(json!({"schema": text, "schemaType": args.schema_type.to_ascii_uppercase()}))
}

fn pretty(out: &mut Output, value: &Value) -> anyhow::Result<()> {
    out.line(serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run_blocking(command: SchemasCommand) -> anyhow::Result<Output> {
    let mut out = Output::default();
    match command {
        SchemasCommand::Register(args) => {
            let body = read_schema(&args)?;
            let path = format!("/subjects/{}/versions", encode(&args.subject));
            let answer = args.registry.api().call("POST", &path, Some(&body))?;
            out.line(answer["id"].to_string());
        }
        SchemasCommand::Get(args) => {
            let path = match (&args.id, &args.subject) {
                (Some(id), _) => format!("/schemas/ids/{id}"),
                (None, Some(subject)) => format!(
                    "/subjects/{}/versions/{}",
                    encode(subject),
                    encode(&args.version)
                ),
                (None, None) => bail!("give a subject or --id"),
            };
            pretty(&mut out, &args.registry.api().call("GET", &path, None)?)?;
        }
        SchemasCommand::List(args) => {
            let path = match &args.subject {
                Some(s) => format!("/subjects/{}/versions", encode(s)),
                None => "/subjects".to_string(),
            };
            let listed = args.registry.api().call("GET", &path, None)?;
            for item in listed.as_array().into_iter().flatten() {
                out.line(
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_string),
                );
            }
        }
        SchemasCommand::Check(args) => {
            let body = read_schema(&args.schema)?;
            let path = format!(
                "/compatibility/subjects/{}/versions/{}?verbose=true",
                encode(&args.schema.subject),
                encode(&args.version)
            );
            let answer = args
                .schema
                .registry
                .api()
                .call("POST", &path, Some(&body))?;
            if answer["is_compatible"].as_bool() == Some(true) {
                out.line("compatible");
            } else {
                let why: Vec<String> = answer["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                    .collect();
                bail!(
                    "incompatible with {} version {}:\n{}",
                    args.schema.subject,
                    args.version,
                    why.join("\n")
                );
            }
        }
        SchemasCommand::Config(args) => {
            let path = match &args.subject {
                Some(s) => format!("/config/{}", encode(s)),
                None => "/config".to_string(),
            };
            let api = args.registry.api();
            let answer = match &args.set {
                Some(level) => api.call(
                    "PUT",
                    &path,
                    Some(&json!({"compatibility": level.to_ascii_uppercase()})),
                )?,
                None => api.call("GET", &path, None)?,
            };
            let level = answer["compatibilityLevel"]
                .as_str()
                .or(answer["compatibility"].as_str())
                .unwrap_or_default();
            out.line(level);
        }
        SchemasCommand::Delete(args) => {
            let mut path = format!("/subjects/{}", encode(&args.subject));
            if let Some(v) = &args.version {
                path.push_str(&format!("/versions/{}", encode(v)));
            }
            if args.permanent {
                path.push_str("?permanent=true");
            }
            let answer = args.registry.api().call("DELETE", &path, None)?;
            for v in answer.as_array().into_iter().flatten() {
                out.line(v.to_string());
            }
            if let Some(n) = answer.as_u64() {
                out.line(n.to_string());
            }
        }
    }
    Ok(out)
}
