//! `ringlog-tune`: is this node ready for ringlog (`check`), and which flush policy, I/O
//! mode and producer batching suit its disk and a latency budget (`sweep`)? The sweep is
//! built on the load generator's library (`ringlog-bench`): its probes measure the node's
//! limits and its native producer drives a broker embedded in this process.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod check;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Checks a node for ringlog and tunes its settings.
#[derive(Debug, Parser)]
#[command(name = "ringlog-tune", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node's readiness, one line per item (ok / warn / fail) with the fix; exits 1 if
    /// any item fails.
    Check {
        /// The data directory ringlog will use (created if missing).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Measure the node's limits, sweep the broker's and producers' settings on the data
    /// directory's file system, and write report.md, throughput-latency.svg and
    /// recommended.toml.
    Sweep(Box<sweep::SweepArgs>),
}

/// Why `ringlog-tune` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("cannot write to --out {}", dir.display())]
    OutUnwritable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {}", dir.display())]
    DataDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not enough free space in {} for {what}: {} needed, {} free",
        dir.display(),
        check::human_bytes(*needed),
        check::human_bytes(*free)
    )]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
        what: &'static str,
    },
    #[error(transparent)]
    Bench(#[from] ringlog_bench::error::BenchError),
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Chart(String),
    #[error("{0}")]
    NoRecommendation(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { data_dir } => {
            let items = check::run(&data_dir);
            for item in &items {
                println!("{item}");
            }
            let worst = items.iter().map(|item| item.status).max();
            if worst == Some(check::Status::Fail) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Sweep(args) => match sweep::run(&args) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("ringlog-tune: {error}");
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    eprintln!("  caused by: {cause}");
                    source = cause.source();
                }
                ExitCode::FAILURE
            }
        },
    }
}
