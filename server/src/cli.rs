//! The `ringlog` command line: subcommands, their flags, and how flags override
//! `ringlog.toml`; the exit statuses of each.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::admin::{AdminError, BOOTSTRAP_DEFAULT};
use crate::config::{
    ClientLimits, ClusterKeys, FileConfig, LoadError, ServerConfig, CONFIG_FILE_DEFAULT,
};

/// Exit status of a subcommand that exists but whose work is not implemented yet.
pub const EXIT_CODE_NOT_IMPLEMENTED: i32 = 3;
/// Exit status when the configuration is wrong (`EX_CONFIG`).
pub const EXIT_CODE_CONFIG: i32 = 78;
/// Exit status of an admin command the broker refused with a Kafka error code.
pub const EXIT_CODE_BROKER_ERROR: i32 = 1;
/// Exit status of an admin command that could not reach the broker (`EX_TEMPFAIL`: try
/// again once it runs).
pub const EXIT_CODE_BROKER_UNREACHABLE: i32 = 75;
/// Exit status of an admin command whose broker does not speak the protocol as expected
/// (`EX_PROTOCOL`).
pub const EXIT_CODE_PROTOCOL: i32 = 76;

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
    Serve(Box<ServeArgs>),
    /// Create, list, describe, delete and reassign topics of a running broker (Kafka admin
    /// API).
    Topic(TopicArgs),
    /// List, describe, reset the offsets of and delete consumer groups (Kafka admin API).
    Group(GroupArgs),
}

/// `ringlog group …`.
#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    /// The broker to talk to.
    #[arg(long, value_name = "HOST:PORT", default_value = BOOTSTRAP_DEFAULT, global = true)]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: GroupCommand,
}

/// The subcommands of `ringlog group`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List the groups, one `NAME STATE` a line.
    List,
    /// Show a group's state, members and assignments, and its committed offsets with the
    /// partitions' ends and the lag.
    Describe {
        /// The group id.
        group: String,
    },
    /// Set a group's committed offsets on every partition of a topic (only while the group
    /// has no members).
    ResetOffsets {
        /// The group id.
        group: String,
        /// The topic whose partitions are reset.
        #[arg(long)]
        topic: String,
        /// `earliest`, `latest`, `offset:N` or `timestamp:MS` (the first record at or
        /// after that time, or the end).
        #[arg(long, value_name = "TARGET", value_parser = parse_reset_to)]
        to: ResetTo,
    },
    /// Delete a group and its committed offsets (only while it has no members).
    Delete {
        /// The group id.
        group: String,
    },
}

/// Where `ringlog group reset-offsets --to` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
}

fn parse_reset_to(text: &str) -> Result<ResetTo, String> {
    let number = |value: &str| {
        value
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("expected a non-negative number, got {value:?}"))
    };
    match text.split_once(':') {
        None if text == "earliest" => Ok(ResetTo::Earliest),
        None if text == "latest" => Ok(ResetTo::Latest),
        Some(("offset", value)) => number(value).map(ResetTo::Offset),
        Some(("timestamp", value)) => number(value).map(ResetTo::Timestamp),
        _ => Err(format!(
            "expected earliest, latest, offset:N or timestamp:MS, got {text:?}"
        )),
    }
}

/// `ringlog topic …`.
#[derive(Debug, clap::Args)]
pub struct TopicArgs {
    /// The broker to talk to.
    #[arg(long, value_name = "HOST:PORT", default_value = BOOTSTRAP_DEFAULT, global = true)]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: TopicCommand,
}

/// The subcommands of `ringlog topic`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// The topic's name.
        name: String,
        /// Number of partitions.
        #[arg(long, value_name = "N", value_parser = parse_partition_count)]
        partitions: u32,
        /// Replicas per partition, in a cluster (default: 3, or the cluster's size if
        /// smaller); a single node keeps one.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i16).range(1..))]
        replication_factor: Option<i16>,
        /// A topic config (repeatable), e.g. `--config retention.ms=86400000`.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List the topics, one name a line.
    List,
    /// Show a topic's partitions with their log start and end offsets, and its configs.
    Describe {
        /// The topic's name.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// The topic's name.
        name: String,
    },
    /// Move partitions of a topic to other nodes (in a cluster), or cancel a move.
    ///
    /// Answers once the broker accepted the move; the new replicas then catch up on their
    /// own (`topic reassignments` lists the partitions until they are done). A single node
    /// keeps every partition on itself, node 0.
    Reassign {
        /// The topic's name.
        name: String,
        /// The partitions to move (repeatable, or comma-separated: `--partition 0,2`).
        #[arg(
            long = "partition",
            value_name = "P",
            value_delimiter = ',',
            required = true,
            value_parser = clap::value_parser!(i32).range(0..)
        )]
        partitions: Vec<i32>,
        /// The node ids of the partitions' new replicas, comma-separated (`--replicas 2,3`).
        #[arg(
            long,
            value_name = "ID,...",
            value_delimiter = ',',
            required_unless_present = "cancel",
            conflicts_with = "cancel",
            value_parser = clap::value_parser!(i32).range(0..)
        )]
        replicas: Vec<i32>,
        /// Cancel the move under way instead: the partitions go back to the replicas they
        /// had before it.
        #[arg(long)]
        cancel: bool,
    },
    /// List the partitions being moved, one `TOPIC PARTITION REPLICAS ADDING REMOVING` a line.
    ///
    /// Node ids are comma-separated, `-` for none; REPLICAS holds the target's nodes, then
    /// those leaving.
    Reassignments {
        /// Only this topic's partitions (default: every topic's).
        name: Option<String>,
    },
}

/// A partition count: 1 up to what the protocol's 32-bit signed field can carry.
fn parse_partition_count(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|&count| count >= 1 && i32::try_from(count).is_ok())
        .ok_or_else(|| format!("expected a partition count 1..={}, got {text:?}", i32::MAX))
}

/// `KEY=VALUE` (the value may contain `=`).
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// The exit status of a failed admin command.
pub fn admin_exit_code(error: &AdminError) -> i32 {
    match error {
        AdminError::Kafka { .. } => EXIT_CODE_BROKER_ERROR,
        AdminError::Resolve { .. } | AdminError::Connect { .. } | AdminError::Io { .. } => {
            EXIT_CODE_BROKER_UNREACHABLE
        }
        _ => EXIT_CODE_PROTOCOL,
    }
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
    /// Default I/O mode of new topics (default: direct where the data directory's file
    /// system supports O_DIRECT, else buffered).
    #[arg(long, value_enum)]
    pub io_mode: Option<IoModeArg>,
    /// Memory for the batch caches of direct-I/O partitions, in bytes, all shards together;
    /// 0 turns them off (default: an eighth of the machine's memory).
    #[arg(long, value_name = "BYTES")]
    pub batch_cache_bytes: Option<u64>,
    /// Serve Prometheus metrics over HTTP (`GET /metrics`) on this address (default: off).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Create topics on first produce or metadata request (default true).
    #[arg(long, value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics (default 1).
    #[arg(long, value_name = "N")]
    pub default_partitions: Option<u32>,
    /// Largest request frame accepted, in bytes; a larger one closes its connection before
    /// it is read (Kafka's socket.request.max.bytes; default 100 MiB).
    #[arg(long, value_name = "N")]
    pub max_request_bytes: Option<usize>,
    /// How long a consumer group leaving Empty waits for more members before its first
    /// rebalance completes, in ms (Kafka's group.initial.rebalance.delay.ms; default 3000).
    #[arg(long, value_name = "MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// How long the committed offsets of a consumer group without members are kept after
    /// their last commit, in minutes (Kafka's offsets.retention.minutes; default 7 days).
    #[arg(long, value_name = "MINUTES")]
    pub offsets_retention_minutes: Option<u64>,
    /// How often each partition applies its topic's retention, in ms (Kafka's
    /// log.retention.check.interval.ms; default 300000, 5 minutes).
    #[arg(long, value_name = "MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Connections held at once, all shards together; more are closed as they are accepted
    /// (Kafka's max.connections; default: 16384 per shard, at most three quarters of the
    /// open-file limit).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections held at once from one IP address (Kafka's max.connections.per.ip;
    /// default: no limit of its own).
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Close a connection that completed no request and was answered nothing for this
    /// long, in ms (Kafka's connections.max.idle.ms; default 600000, 10 minutes).
    #[arg(long, value_name = "MS")]
    pub connections_max_idle_ms: Option<u64>,
    /// Close a connection whose request frame has not arrived whole this long after its
    /// first byte, in ms (default 30000).
    #[arg(long, value_name = "MS")]
    pub request_read_timeout_ms: Option<u64>,
    /// Request and response bytes one connection may have in flight before it stops
    /// reading requests until its responses drain (default 64 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_in_flight_bytes_per_connection: Option<u64>,
    /// The same for all connections of one shard together (default 512 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_in_flight_bytes_per_shard: Option<u64>,
    /// The most record bytes one Fetch response carries, whatever the request asks
    /// (Kafka's fetch.max.bytes; default 57671680, 55 MiB).
    #[arg(long, value_name = "BYTES")]
    pub fetch_max_bytes: Option<u64>,
    /// This node's id in a cluster (1 or more); needs --peers and --internal-listen.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,
    /// Every node of the cluster, this one included, as ID@HOST:PORT (their internal
    /// listeners), comma-separated.
    #[arg(long, value_name = "ID@HOST:PORT,...", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Where this node listens for its peers.
    #[arg(long, value_name = "HOST:PORT")]
    pub internal_listen: Option<SocketAddr>,
    /// In a cluster, let idle partitions' Raft groups sleep: no ticks, no heartbeats
    /// until a write, a peer's message or a node's failure wakes them (default true).
    #[arg(long, value_name = "BOOL")]
    pub raft_hibernate: Option<bool>,
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
        config.raft_hibernate = self.raft_hibernate.unwrap_or(config.raft_hibernate);
        config.default_partitions = self.default_partitions.unwrap_or(config.default_partitions);
        config.max_request_bytes = self.max_request_bytes.unwrap_or(config.max_request_bytes);
        config.group_initial_rebalance_delay_ms = self
            .group_initial_rebalance_delay_ms
            .unwrap_or(config.group_initial_rebalance_delay_ms);
        config.offsets_retention_minutes = self
            .offsets_retention_minutes
            .unwrap_or(config.offsets_retention_minutes);
        config.retention_check_interval_ms = self
            .retention_check_interval_ms
            .unwrap_or(config.retention_check_interval_ms);
        config.batch_cache_bytes = self.batch_cache_bytes.unwrap_or(config.batch_cache_bytes);
        config.set_client_limits(&ClientLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            connections_max_idle_ms: self.connections_max_idle_ms,
            request_read_timeout_ms: self.request_read_timeout_ms,
            max_in_flight_bytes_per_connection: self.max_in_flight_bytes_per_connection,
            max_in_flight_bytes_per_shard: self.max_in_flight_bytes_per_shard,
            fetch_max_bytes: self.fetch_max_bytes,
        });
        let flags = ClusterKeys {
            node_id: self.node_id,
            peers: self.peers.clone(),
            internal_listen: self.internal_listen,
        };
        config.cluster = flags
            .or(ClusterKeys::of(config.cluster.as_ref()))
            .membership()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringlog.toml");
        std::fs::write(&path, "max_connections = 3\nfetch_max_bytes = 4096\n").unwrap();
        let cli = Cli::try_parse_from([
            "ringlog",
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--max-connections",
            "7",
            "--max-connections-per-ip",
            "2",
            "--connections-max-idle-ms",
            "1500",
            "--request-read-timeout-ms",
            "700",
            "--max-in-flight-bytes-per-connection",
            "65536",
            "--max-in-flight-bytes-per-shard",
            "131072",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let config = args.load().unwrap();
        assert_eq!(config.max_connections, Some(7), "the flag wins");
        assert_eq!(config.fetch_max_bytes, 4096, "the file's key stays");
        assert_eq!(config.max_connections_per_ip, Some(2));
        assert_eq!(config.connections_max_idle_ms, 1500);
        assert_eq!(config.request_read_timeout_ms, 700);
        assert_eq!(config.max_in_flight_bytes_per_connection, 65536);
        assert_eq!(config.max_in_flight_bytes_per_shard, 131_072);
    }

    #[test]
    fn config_flags_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_owned(), "b=c".to_owned()))
        );
        assert_eq!(parse_key_value("k="), Ok(("k".to_owned(), String::new())));
        for bad in ["novalue", "=v"] {
            let refused = Err(format!("expected KEY=VALUE, got {bad:?}"));
            assert_eq!(parse_key_value(bad), refused);
        }
    }

    #[test]
    fn a_replication_factor_is_a_positive_count() {
        let factor = |value: &str| {
            let cli = Cli::try_parse_from([
                "ringlog",
                "topic",
                "create",
                "t",
                "--partitions",
                "1",
                "--replication-factor",
                value,
            ]);
            match cli.map(|cli| cli.command) {
                Ok(Command::Topic(TopicArgs {
                    command:
                        TopicCommand::Create {
                            replication_factor, ..
                        },
                    ..
                })) => Some(replication_factor),
                _ => None,
            }
        };
        assert_eq!(factor("2"), Some(Some(2)));
        assert_eq!(factor("0"), None);
        assert_eq!(factor("-1"), None);
    }

    #[test]
    fn reassign_takes_partitions_repeated_or_comma_separated_and_replicas_or_cancel() {
        use clap::error::ErrorKind;
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["ringlog", "topic", "reassign", "t"], args].concat());
            match cli.map(|cli| cli.command) {
                Ok(Command::Topic(TopicArgs {
                    command:
                        TopicCommand::Reassign {
                            partitions,
                            replicas,
                            cancel,
                            ..
                        },
                    ..
                })) => Ok((partitions, replicas, cancel)),
                Ok(other) => panic!("not reassign: {other:?}"),
                Err(error) => Err(error.kind()),
            }
        };
        let moved = parse(&[
            "--partition",
            "0,2",
            "--partition",
            "5",
            "--replicas",
            "3,1",
        ]);
        assert_eq!(moved, Ok((vec![0, 2, 5], vec![3, 1], false)));
        let cancelled = parse(&["--partition", "1", "--cancel"]);
        assert_eq!(cancelled, Ok((vec![1], Vec::new(), true)));
        let refused = [
            (
                &["--partition", "1"][..],
                ErrorKind::MissingRequiredArgument,
            ),
            (&["--replicas", "1"], ErrorKind::MissingRequiredArgument),
            (
                &["--partition", "1", "--replicas", "1", "--cancel"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--partition=-1", "--replicas", "1"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--partition", "0", "--replicas", "1,-2"],
                ErrorKind::ValueValidation,
            ),
        ];
        for (args, kind) in refused {
            assert_eq!(parse(args), Err(kind), "{args:?}");
        }
    }

    #[test]
    fn topic_flags_parse_in_either_position() {
        let cli = Cli::try_parse_from([
            "ringlog",
            "topic",
            "create",
            "t",
            "--partitions",
            "3",
            "--config",
            "a=1",
            "--config",
            "b=2",
            "--bootstrap",
            "h:1",
        ])
        .unwrap();
        let Command::Topic(args) = cli.command else {
            panic!("not a topic command");
        };
        assert_eq!(args.bootstrap, "h:1");
        let TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } = args.command
        else {
            panic!("not create");
        };
        assert_eq!((name.as_str(), partitions, configs.len()), ("t", 3, 2));
        assert_eq!(replication_factor, None);
        let cli = Cli::try_parse_from([
            "ringlog",
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "offset:7",
        ])
        .unwrap();
        let Command::Group(args) = cli.command else {
            panic!("not a group command");
        };
        let GroupCommand::ResetOffsets { group, topic, to } = args.command else {
            panic!("not reset-offsets");
        };
        assert_eq!(
            (group.as_str(), topic.as_str(), to),
            ("g", "t", ResetTo::Offset(7))
        );
        let not_a_number = |value: &str| format!("expected a non-negative number, got {value:?}");
        let not_a_target = |text: &str| {
            format!("expected earliest, latest, offset:N or timestamp:MS, got {text:?}")
        };
        let refusals = [
            ("offset:-1", not_a_number("-1")),
            ("timestamp:x", not_a_number("x")),
            ("soon", not_a_target("soon")),
            ("offset", not_a_target("offset")),
        ];
        for (bad, refusal) in refusals {
            assert_eq!(parse_reset_to(bad), Err(refusal), "{bad}");
        }
        assert_eq!(parse_reset_to("timestamp:5"), Ok(ResetTo::Timestamp(5)));
        assert_eq!(parse_reset_to("earliest"), Ok(ResetTo::Earliest));
        let cli = Cli::try_parse_from(["ringlog", "topic", "list"]).unwrap();
        let Command::Topic(args) = cli.command else {
            panic!("not a topic command");
        };
        assert_eq!(args.bootstrap, BOOTSTRAP_DEFAULT);
        let zero = Cli::try_parse_from(["ringlog", "topic", "create", "t", "--partitions", "0"]);
        assert_eq!(
            zero.map(|_| ()).unwrap_err().kind(),
            clap::error::ErrorKind::ValueValidation
        );
    }
}
