//! The `ringlog` command line: subcommands, their flags, and how flags override
//! `ringlog.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{FileConfig, LoadError, ServerConfig, CONFIG_FILE_DEFAULT};

/// Exit status of a subcommand that exists but whose work is not implemented yet.
pub const EXIT_CODE_NOT_IMPLEMENTED: i32 = 3;
/// Exit status when the configuration is wrong (`EX_CONFIG`).
pub const EXIT_CODE_CONFIG: i32 = 78;

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

/// `--flush`: the default flush policy of new topics.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FlushArg {
    /// fdatasync every group commit.
    Always,
    /// Leave writeback to the OS (unless --flush-interval-ms or --flush-bytes is set).
    Never,
}

/// `--io-mode`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IoModeArg {
    Buffered,
    Direct,
}

/// Flags of `ringlog serve`; each overrides the same key of the configuration file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML). Default: ./ringlog.toml if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (default ./data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener (default 127.0.0.1:9092).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Address clients are told to connect to (default: the listener's).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised_listener: Option<SocketAddr>,
    /// Number of shards (threads pinned to cores); default: one per available core.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Default flush policy of new topics.
    #[arg(long, value_enum)]
    pub flush: Option<FlushArg>,
    /// Default: fdatasync when this many ms passed since the last one.
    #[arg(long, value_name = "N")]
    pub flush_interval_ms: Option<u64>,
    /// Default: fdatasync when this many bytes are unsynced.
    #[arg(long, value_name = "N")]
    pub flush_bytes: Option<u64>,
    /// Default I/O mode of new topics.
    #[arg(long, value_enum)]
    pub io_mode: Option<IoModeArg>,
    /// Prometheus metrics listener (not implemented yet; refused if set).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Create topics on first produce or metadata request (default true).
    #[arg(long, value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics (default 1).
    #[arg(long, value_name = "N")]
    pub default_partitions: Option<u32>,
    /// Largest request frame accepted, in bytes (default 100 MiB).
    #[arg(long, value_name = "N")]
    pub max_request_bytes: Option<usize>,
}

impl ServeArgs {
    /// The configuration: defaults, then the file, then these flags.
    pub fn load(&self) -> Result<ServerConfig, LoadError> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(CONFIG_FILE_DEFAULT), false),
        };
        let mut config = ServerConfig::from_file(FileConfig::load(&path, required)?)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
            config.advertised_listener = listen;
        }
        config.data_dir = self.data_dir.clone().unwrap_or(config.data_dir);
        config.advertised_listener = self
            .advertised_listener
            .unwrap_or(config.advertised_listener);
        config.shards = self.shards.unwrap_or(config.shards);
        config.metrics_listen = self.metrics_listen.or(config.metrics_listen);
        config.auto_create_topics = self.auto_create_topics.unwrap_or(config.auto_create_topics);
        config.default_partitions = self.default_partitions.unwrap_or(config.default_partitions);
        config.max_request_bytes = self.max_request_bytes.unwrap_or(config.max_request_bytes);
        self.apply_topic_flags(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_topic_flags(&self, config: &mut ServerConfig) -> Result<(), LoadError> {
        if let Some(flush) = self.flush {
            let policy = match flush {
                FlushArg::Always => "always",
                FlushArg::Never => "never",
            };
            config.set_topic_default("flush.policy", policy)?;
        }
        if let Some(interval) = self.flush_interval_ms {
            config.set_topic_default("flush.ms", &interval.to_string())?;
        }
        if let Some(bytes) = self.flush_bytes {
            config.set_topic_default("flush.bytes", &bytes.to_string())?;
        }
        if let Some(mode) = self.io_mode {
            let mode = match mode {
                IoModeArg::Buffered => "buffered",
                IoModeArg::Direct => "direct",
            };
            config.set_topic_default("ringlog.io.mode", mode)?;
        }
        Ok(())
    }
}
