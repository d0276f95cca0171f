//! `ringlog-bench`: the command line of ringlog's benchmarks (see the library, `lib.rs`,
//! for what each measures).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringlog_bench::{broker, engine, probe};

/// ringlog's benchmarks and machine-limit probes.
#[derive(Debug, Parser)]
#[command(name = "ringlog-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the machine's limits through the runtime.
    #[command(subcommand)]
    Probe(probe::Probe),
    /// Measure the storage engine alone: appends, reads, recovery.
    #[command(subcommand)]
    Engine(engine::Engine),
    /// Produce to a broker over the Kafka protocol (`--embedded`: one started in process).
    Produce(broker::produce::ProduceArgs),
    /// Consume a topic from a broker over the Kafka protocol.
    Consume(broker::consume::ConsumeArgs),
    /// Produce and consume at once: end-to-end latency from a time stamp in each record.
    E2e(broker::e2e::E2eArgs),
    /// Hold a hostile or excessive client load against a broker (idle connections, slow
    /// frames, clients that never read, fetches of everything).
    Hostile(broker::hostile::HostileArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Probe(probe) => probe.run(),
        Command::Engine(engine) => engine.run(),
        Command::Produce(args) => broker::produce::run(args),
        Command::Consume(args) => broker::consume::run(args),
        Command::E2e(args) => broker::e2e::run(args),
        Command::Hostile(args) => broker::hostile::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringlog-bench: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(error.exit_code() as u8)
        }
    }
}
