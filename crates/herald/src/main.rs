//! The `herald` binary: configuration, CLI, wiring and signals.

mod cli;
mod config;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: an event broker that speaks Kafka"
)]
struct Cli {
    /// How log lines are written to stderr: text (coloured only on a terminal, and
    /// never when NO_COLOR is set) or json (one object per line, for log shippers)
    #[arg(long, global = true, value_enum, env = "HERALD_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr: colour only when it is a terminal and NO_COLOR is not set.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = std::env::var("HERALD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init();
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(Box<config::ServeSettings>),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// mimalloc keeps freed large buffers (fetch responses, produce requests) for reuse;
/// glibc maps and unmaps each one above its mmap threshold, paying page faults.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(settings) => serve::run(*settings).await,
            Command::Client(command) => cli::run(command).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
