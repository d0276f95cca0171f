//! The `ringlog` binary.

use std::process::ExitCode;

use clap::Parser;
use ringlog_engine::rt::{self, Runtime, RuntimeConfig};
use ringlog_server::cli::{Cli, Command, ServeArgs, EXIT_CODE_NOT_IMPLEMENTED};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
    }
}

/// Starts the per-core runtime (which proves io_uring works here) and stops: the Kafka
/// listener arrives with the broker issue.
fn serve(args: &ServeArgs) -> ExitCode {
    let mut config = RuntimeConfig::default();
    if let Some(shards) = args.shards {
        config.shards = usize::from(shards);
    }
    let runtime = match Runtime::start(&config, |_shard| async {}) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ringlog: {error}");
            let code = if error.ring_setup().is_some() {
                rt::EXIT_CODE_IO_URING_UNAVAILABLE
            } else {
                1
            };
            return ExitCode::from(code as u8);
        }
    };
    let shards = runtime.shards().len();
    if let Err(error) = runtime.shutdown() {
        eprintln!("ringlog: {error}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "ringlog {}: the io_uring runtime started {shards} shard(s) and stopped cleanly; \
         the Kafka listener is not implemented yet, so `serve` exits here.",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(EXIT_CODE_NOT_IMPLEMENTED as u8)
}
