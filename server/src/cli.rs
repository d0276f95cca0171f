//! The `ringlog` command line: subcommands, their flags, and the exit codes they end with.

use clap::{Parser, Subcommand};

/// Exit status of a subcommand that exists but whose work is not implemented yet.
pub const EXIT_CODE_NOT_IMPLEMENTED: i32 = 3;

/// ringlog: a Kafka-compatible streaming log on io_uring, one shard per core.
#[derive(Debug, Parser)]
#[command(name = "ringlog", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
}

/// Flags of `ringlog serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Number of shards (threads pinned to cores); default: one per available core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,
}
