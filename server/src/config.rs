//! The server's configuration: `ringlog.toml` and the command-line flags that override it.
//!
//! Every key has a default, so `ringlog serve` runs with no file and no flags: data in
//! `./data`, the Kafka listener on `127.0.0.1:9092`, one shard per available core. An
//! unknown key or a bad value is an error naming the key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use ringlog_engine::limits::BATCH_CACHE_MEMORY_FRACTION_DEFAULT;
use ringlog_engine::topic::{keys, ConfigError, IoMode, TopicConfig};
use serde::Deserialize;

use crate::limits::{CONNECTIONS_PER_SHARD_MAX, OPEN_FILES_RESERVED_DIVISOR};

/// The configuration file's name when none is given.
pub const CONFIG_FILE_DEFAULT: &str = "ringlog.toml";

/// Everything `ringlog serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The address clients are told to connect to (Metadata); default: `listen`.
    pub advertised_listener: SocketAddr,
    /// Shards (threads pinned to cores); default: one per available core.
    pub shards: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// The largest request frame accepted (Kafka's `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// The configuration new topics get unless a request says otherwise. Its I/O mode is
    /// `direct` unless the file or a flag says otherwise; the server falls back to
    /// `buffered` where the data directory's file system refuses O_DIRECT.
    pub topic_defaults: TopicConfig,
    /// Whether the file or a flag chose the I/O mode (then a refused O_DIRECT is an error,
    /// not a fallback).
    pub io_mode_chosen: bool,
    /// Memory for the batch caches of direct-I/O partitions, all shards together; 0 turns
    /// them off. Default: an eighth of the machine's memory.
    pub batch_cache_bytes: u64,
    /// How long a group leaving Empty waits for more members before its first rebalance
    /// completes (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// How long the committed offsets of a group without members are kept after their last
    /// commit (Kafka's `offsets.retention.minutes`).
    pub offsets_retention_minutes: u64,
    /// How often each partition applies its topic's retention (Kafka's
    /// `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// Connections held at once, all shards together (Kafka's `max.connections`); a
    /// connection over it is closed as it is accepted. `None`: the default, as many as the
    /// shards' bound ([`CONNECTIONS_PER_SHARD_MAX`] each) and three quarters of the
    /// open-file limit allow (see [`ServerConfig::max_connections_or_default`]).
    pub max_connections: Option<usize>,
    /// Connections held at once from one IP address (Kafka's `max.connections.per.ip`);
    /// `None`: no limit of its own.
    pub max_connections_per_ip: Option<usize>,
    /// A connection that completed no request and was answered nothing for this long, with
    /// no request being handled, is closed (Kafka's `connections.max.idle.ms`). That
    /// includes one that sends nothing, one whose request never completes, and one that does
    /// not read its responses.
    pub connections_max_idle_ms: u64,
    /// A request frame must arrive whole within this long of its first byte, or the
    /// connection is closed: a frame sent a byte at a time cannot hold a connection open.
    pub request_read_timeout_ms: u64,
    /// Request and response bytes one connection may have in flight (read and not yet
    /// answered to the last byte) before it stops reading requests until its responses
    /// drain.
    pub max_in_flight_bytes_per_connection: u64,
    /// The same, for all connections of one shard together.
    pub max_in_flight_bytes_per_shard: u64,
    /// The most record bytes one Fetch response carries, whatever the request asks (Kafka's
    /// `fetch.max.bytes`); as in Kafka, the first partition with data still gets one whole
    /// batch.
    pub fetch_max_bytes: u64,
    /// This node's place in a cluster (`node_id`, `peers`, `internal_listen`), or `None`
    /// for a single node.
    pub cluster: Option<ClusterMembership>,
    /// In a cluster: whether idle partitions' Raft groups sleep (no ticks, no heartbeats)
    /// until something happens to them. Off only to compare or to rule it out.
    pub raft_hibernate: bool,
}

/// A node's place in a cluster, as the file or the flags give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMembership {
    /// This node's id (1 or more, unique in the cluster).
    pub node_id: u64,
    /// Every node of the cluster, this one included: id and internal listener.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Where this node listens for its peers.
    pub internal_listen: SocketAddr,
}

/// The cluster keys as the file or the flags give them; each `None` leaves the value
/// before it.
#[derive(Debug, Default, Clone)]
pub struct ClusterKeys {
    pub node_id: Option<u64>,
    pub peers: Option<Vec<String>>,
    pub internal_listen: Option<SocketAddr>,
}

impl ClusterKeys {
    /// The keys of a membership already loaded (the file's), to lay flags over.
    pub fn of(membership: Option<&ClusterMembership>) -> ClusterKeys {
        let Some(membership) = membership else {
            return ClusterKeys::default();
        };
        ClusterKeys {
            node_id: Some(membership.node_id),
            peers: Some(
                (membership.peers.iter())
                    .map(|(id, address)| format!("{id}@{address}"))
                    .collect(),
            ),
            internal_listen: Some(membership.internal_listen),
        }
    }

    /// These keys where given, `earlier`'s where not.
    #[must_use]
    pub fn or(self, earlier: ClusterKeys) -> ClusterKeys {
        ClusterKeys {
            node_id: self.node_id.or(earlier.node_id),
            peers: self.peers.or(earlier.peers),
            internal_listen: self.internal_listen.or(earlier.internal_listen),
        }
    }

    /// The membership the keys describe: all three keys or none.
    pub fn membership(self) -> Result<Option<ClusterMembership>, LoadError> {
        let invalid = |key, value: String, reason| LoadError::Invalid { key, value, reason };
        let (node_id, peers, internal_listen) =
            match (self.node_id, self.peers, self.internal_listen) {
                (None, None, None) => return Ok(None),
                (Some(node_id), Some(peers), Some(internal_listen)) => {
                    (node_id, peers, internal_listen)
                }
                (node_id, peers, internal_listen) => {
                    let given = [
                        node_id.map(|_| "node_id"),
                        peers.map(|_| "peers"),
                        internal_listen.map(|_| "internal_listen"),
                    ];
                    let given: Vec<_> = given.into_iter().flatten().collect();
                    return Err(invalid(
                        "node_id, peers, internal_listen",
                        given.join(", "),
                        "a cluster node needs all three (only these were given)",
                    ));
                }
            };
        if !(1..=NODE_ID_MAX).contains(&node_id) {
            let reason = "must be 1 to 2147483647 (Kafka's broker ids are 32-bit)";
            return Err(invalid("node_id", node_id.to_string(), reason));
        }
        let mut parsed: Vec<(u64, SocketAddr)> = Vec::with_capacity(peers.len());
        for peer in &peers {
            let peer = peer.trim();
            let reason = "each peer is ID@HOST:PORT, with a node id of 1 to 2147483647 and \
                          the node's internal listener";
            let (id, address) = peer
                .split_once('@')
                .ok_or_else(|| invalid("peers", peer.to_owned(), reason))?;
            let id: u64 = id
                .parse()
                .ok()
                .filter(|id| (1..=NODE_ID_MAX).contains(id))
                .ok_or_else(|| invalid("peers", peer.to_owned(), reason))?;
            let address = address
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next())
                .ok_or_else(|| invalid("peers", peer.to_owned(), reason))?;
            if parsed.iter().any(|&(other, _)| other == id) {
                return Err(invalid(
                    "peers",
                    peer.to_owned(),
                    "a node id is given twice",
                ));
            }
            parsed.push((id, address));
        }
        if !parsed.iter().any(|&(id, _)| id == node_id) {
            return Err(invalid(
                "peers",
                peers.join(","),
                "must include this node (node_id) with its internal listener",
            ));
        }
        if parsed.len() > CLUSTER_NODES_MAX {
            return Err(invalid(
                "peers",
                parsed.len().to_string(),
                "at most 64 nodes (every node is a voter of every partition)",
            ));
        }
        Ok(Some(ClusterMembership {
            node_id,
            peers: parsed,
            internal_listen,
        }))
    }
}

/// The largest node id: Kafka's broker ids are `i32`.
const NODE_ID_MAX: u64 = i32::MAX as u64;
/// The most nodes a cluster has while every node replicates every partition.
const CLUSTER_NODES_MAX: usize = 64;

/// The longest `offsets_retention_minutes`: 100 years (also keeps it far from overflowing
/// when turned into seconds).
const OFFSETS_RETENTION_MINUTES_MAX: u64 = 100 * 366 * 24 * 60;
/// The bounds of `retention_check_interval_ms`: 10 ms (tests) to a day.
const RETENTION_CHECK_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400_000;
/// The longest `group_initial_rebalance_delay_ms`: a group's first rebalance waits no more
/// than 5 minutes.
const GROUP_INITIAL_REBALANCE_DELAY_MS_MAX: u64 = 300_000;
/// The shortest `connections_max_idle_ms` and `request_read_timeout_ms`: tests set them
/// small; below this a connection would be closed between two packets of one request.
const CONNECTION_TIMEOUT_MS_MIN: u64 = 10;
/// The longest `connections_max_idle_ms` and `request_read_timeout_ms`: a year (far from
/// overflowing an `Instant`).
const CONNECTION_TIMEOUT_MS_MAX: u64 = 366 * 24 * 60 * 60 * 1000;
/// The smallest in-flight byte limit: one small request must fit.
const IN_FLIGHT_BYTES_MIN: u64 = 1024;
/// Kafka's `connections.max.idle.ms`: 10 minutes.
pub const CONNECTIONS_MAX_IDLE_MS_DEFAULT: u64 = 10 * 60 * 1000;
/// A request frame's bytes must all arrive within 30 s of its first: Kafka clients give up
/// on a request after `request.timeout.ms` (30 s), sending included, so a frame slower than
/// that is one no client still waits for.
pub const REQUEST_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Kafka's `fetch.max.bytes`: 55 MiB.
pub const FETCH_MAX_BYTES_DEFAULT: u64 = 55 << 20;
/// The largest `fetch_max_bytes`: what Fetch's 32-bit `max_bytes` can ask.
const FETCH_MAX_BYTES_MAX: u64 = i32::MAX as u64;
/// In flight per connection by default: a consumer's whole 50 MiB fetch (Kafka clients'
/// `fetch.max.bytes`) or a producer's five pipelined 1 MiB requests fit with room to
/// spare.
pub const MAX_IN_FLIGHT_BYTES_PER_CONNECTION_DEFAULT: u64 = 64 << 20;
/// In flight per shard by default: 512 requests of 1 MiB, about what Kafka's
/// `queued.max.requests` (500) admits for the whole broker.
pub const MAX_IN_FLIGHT_BYTES_PER_SHARD_DEFAULT: u64 = 512 << 20;

/// The limits on clients as the file or the flags give them: each `None` leaves the value
/// before it (the default, or the file's) as it is.
#[derive(Debug, Default)]
pub struct ClientLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub connections_max_idle_ms: Option<u64>,
    pub request_read_timeout_ms: Option<u64>,
    pub max_in_flight_bytes_per_connection: Option<u64>,
    pub max_in_flight_bytes_per_shard: Option<u64>,
    pub fetch_max_bytes: Option<u64>,
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub advertised_listener: Option<SocketAddr>,
    pub shards: Option<usize>,
    pub metrics_listen: Option<SocketAddr>,
    pub auto_create_topics: Option<bool>,
    pub default_partitions: Option<u32>,
    pub max_request_bytes: Option<usize>,
    pub group_initial_rebalance_delay_ms: Option<u64>,
    pub offsets_retention_minutes: Option<u64>,
    pub retention_check_interval_ms: Option<u64>,
    pub batch_cache_bytes: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub connections_max_idle_ms: Option<u64>,
    pub request_read_timeout_ms: Option<u64>,
    pub max_in_flight_bytes_per_connection: Option<u64>,
    pub max_in_flight_bytes_per_shard: Option<u64>,
    pub fetch_max_bytes: Option<u64>,
    /// This node's id in a cluster.
    pub node_id: Option<u64>,
    /// Every node of the cluster as `ID@HOST:PORT` (its internal listener).
    pub peers: Option<Vec<String>>,
    /// Where this node listens for its peers.
    pub internal_listen: Option<SocketAddr>,
    pub raft_hibernate: Option<bool>,
    /// Topic defaults as Kafka-style keys: `flush.policy = "always"`, `segment.bytes = …`.
    #[serde(default)]
    pub topic: toml::Table,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("topic default {key}: {source}")]
    TopicDefault {
        key: String,
        #[source]
        source: ConfigError,
    },
    #[error("topic default {key}: value must be a string, integer or boolean")]
    TopicDefaultType { key: String },
    #[error("{key} = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl Default for ServerConfig {
    fn default() -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], 9092));
        ServerConfig {
            data_dir: PathBuf::from("data"),
            listen,
            advertised_listener: listen,
            shards: ringlog_engine::rt::allowed_cpus().len().max(1),
            metrics_listen: None,
            auto_create_topics: true,
            raft_hibernate: true,
            default_partitions: 1,
            max_request_bytes: 100 << 20,
            topic_defaults: direct_by_default(),
            io_mode_chosen: false,
            batch_cache_bytes: memory_bytes() / BATCH_CACHE_MEMORY_FRACTION_DEFAULT,
            group_initial_rebalance_delay_ms: 3000,
            offsets_retention_minutes: 7 * 24 * 60,
            retention_check_interval_ms: ringlog_engine::limits::RETENTION_CHECK_INTERVAL_MS,
            max_connections: None,
            max_connections_per_ip: None,
            connections_max_idle_ms: CONNECTIONS_MAX_IDLE_MS_DEFAULT,
            request_read_timeout_ms: REQUEST_READ_TIMEOUT_MS_DEFAULT,
            max_in_flight_bytes_per_connection: MAX_IN_FLIGHT_BYTES_PER_CONNECTION_DEFAULT,
            max_in_flight_bytes_per_shard: MAX_IN_FLIGHT_BYTES_PER_SHARD_DEFAULT,
            fetch_max_bytes: FETCH_MAX_BYTES_DEFAULT,
            cluster: None,
        }
    }
}

impl ServerConfig {
    /// The defaults with `data_dir`, a listener on a free loopback port (the kernel picks
    /// it; `Server::address` tells which) and two shards: a server for tests and embedding.
    pub fn ephemeral(data_dir: PathBuf) -> ServerConfig {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        ServerConfig {
            data_dir,
            listen: any_port,
            advertised_listener: any_port,
            shards: 2,
            ..ServerConfig::default()
        }
    }
}

impl FileConfig {
    /// Reads `path`; a missing default file is an empty configuration.
    pub fn load(path: &Path, required: bool) -> Result<FileConfig, LoadError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileConfig::default());
            }
            Err(source) => {
                return Err(LoadError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|source| LoadError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl ServerConfig {
    /// The defaults overridden by the file's keys.
    pub fn from_file(file: FileConfig) -> Result<ServerConfig, LoadError> {
        let mut config = ServerConfig::default();
        let FileConfig {
            data_dir,
            listen,
            advertised_listener,
            shards,
            metrics_listen,
            auto_create_topics,
            default_partitions,
            max_request_bytes,
            group_initial_rebalance_delay_ms,
            offsets_retention_minutes,
            retention_check_interval_ms,
            batch_cache_bytes,
            max_connections,
            max_connections_per_ip,
            connections_max_idle_ms,
            request_read_timeout_ms,
            max_in_flight_bytes_per_connection,
            max_in_flight_bytes_per_shard,
            fetch_max_bytes,
            node_id,
            peers,
            internal_listen,
            raft_hibernate,
            topic,
        } = file;
        config.cluster = ClusterKeys {
            node_id,
            peers,
            internal_listen,
        }
        .membership()?;
        if let Some(listen) = listen {
            config.listen = listen;
            config.advertised_listener = listen;
        }
        config.data_dir = data_dir.unwrap_or(config.data_dir);
        config.advertised_listener = advertised_listener.unwrap_or(config.advertised_listener);
        config.shards = shards.unwrap_or(config.shards);
        config.metrics_listen = metrics_listen.or(config.metrics_listen);
        config.auto_create_topics = auto_create_topics.unwrap_or(config.auto_create_topics);
        config.raft_hibernate = raft_hibernate.unwrap_or(config.raft_hibernate);
        config.default_partitions = default_partitions.unwrap_or(config.default_partitions);
        config.max_request_bytes = max_request_bytes.unwrap_or(config.max_request_bytes);
        config.group_initial_rebalance_delay_ms =
            group_initial_rebalance_delay_ms.unwrap_or(config.group_initial_rebalance_delay_ms);
        config.offsets_retention_minutes =
            offsets_retention_minutes.unwrap_or(config.offsets_retention_minutes);
        config.retention_check_interval_ms =
            retention_check_interval_ms.unwrap_or(config.retention_check_interval_ms);
        config.batch_cache_bytes = batch_cache_bytes.unwrap_or(config.batch_cache_bytes);
        config.set_client_limits(&ClientLimits {
            max_connections,
            max_connections_per_ip,
            connections_max_idle_ms,
            request_read_timeout_ms,
            max_in_flight_bytes_per_connection,
            max_in_flight_bytes_per_shard,
            fetch_max_bytes,
        });
        for (key, value) in &topic {
            let value = match value {
                toml::Value::String(text) => text.clone(),
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                _ => return Err(LoadError::TopicDefaultType { key: key.clone() }),
            };
            config.set_topic_default(key, &value)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Overrides the limits on clients that `limits` sets.
    pub fn set_client_limits(&mut self, limits: &ClientLimits) {
        self.max_connections = limits.max_connections.or(self.max_connections);
        self.max_connections_per_ip = limits
            .max_connections_per_ip
            .or(self.max_connections_per_ip);
        self.connections_max_idle_ms = limits
            .connections_max_idle_ms
            .unwrap_or(self.connections_max_idle_ms);
        self.request_read_timeout_ms = limits
            .request_read_timeout_ms
            .unwrap_or(self.request_read_timeout_ms);
        self.max_in_flight_bytes_per_connection = limits
            .max_in_flight_bytes_per_connection
            .unwrap_or(self.max_in_flight_bytes_per_connection);
        self.max_in_flight_bytes_per_shard = limits
            .max_in_flight_bytes_per_shard
            .unwrap_or(self.max_in_flight_bytes_per_shard);
        self.fetch_max_bytes = limits.fetch_max_bytes.unwrap_or(self.fetch_max_bytes);
    }

    /// `max_connections`, or its default for a process that may open `open_files_max`
    /// descriptors: the shards' bound, and no more than leaves a quarter of the descriptors
    /// ([`OPEN_FILES_RESERVED_DIVISOR`]) for files, pipes and fetches (at least one
    /// connection).
    pub fn max_connections_or_default(&self, open_files_max: u64) -> usize {
        if let Some(max) = self.max_connections {
            return max;
        }
        let for_connections = open_files_max - open_files_max / OPEN_FILES_RESERVED_DIVISOR;
        let for_connections = usize::try_from(for_connections).unwrap_or(usize::MAX);
        self.connections_max_static().min(for_connections).max(1)
    }

    /// The most connections the shards hold: [`CONNECTIONS_PER_SHARD_MAX`] each.
    pub fn connections_max_static(&self) -> usize {
        self.shards.saturating_mul(CONNECTIONS_PER_SHARD_MAX)
    }

    /// Sets one topic default (`flush.policy`, `segment.bytes`, …).
    pub fn set_topic_default(&mut self, key: &str, value: &str) -> Result<(), LoadError> {
        if key == keys::IO_MODE {
            self.io_mode_chosen = true;
        }
        self.topic_defaults
            .apply(key, value)
            .map_err(|source| LoadError::TopicDefault {
                key: key.to_owned(),
                source,
            })
    }

    /// Checks the values no type can.
    pub fn validate(&self) -> Result<(), LoadError> {
        if !(1..=1024).contains(&self.shards) {
            let value = self.shards.to_string();
            return Err(LoadError::Invalid {
                key: "shards",
                value,
                reason: "must be 1 to 1024",
            });
        }
        if !(1..=ringlog_engine::limits::PARTITIONS_PER_TOPIC_MAX)
            .contains(&self.default_partitions)
        {
            let value = self.default_partitions.to_string();
            let reason = "must be at least 1 and at most the partition limit";
            return Err(LoadError::Invalid {
                key: "default_partitions",
                value,
                reason,
            });
        }
        if !(1024..=(1 << 30)).contains(&self.max_request_bytes) {
            let value = self.max_request_bytes.to_string();
            let reason = "must be 1 KiB to 1 GiB";
            return Err(LoadError::Invalid {
                key: "max_request_bytes",
                value,
                reason,
            });
        }
        if !(1..=OFFSETS_RETENTION_MINUTES_MAX).contains(&self.offsets_retention_minutes) {
            return Err(LoadError::Invalid {
                key: "offsets_retention_minutes",
                value: self.offsets_retention_minutes.to_string(),
                reason: "must be 1 minute to 100 years",
            });
        }
        if !RETENTION_CHECK_INTERVAL_MS_RANGE.contains(&self.retention_check_interval_ms) {
            return Err(LoadError::Invalid {
                key: "retention_check_interval_ms",
                value: self.retention_check_interval_ms.to_string(),
                reason: "must be 10 to 86400000 (a day)",
            });
        }
        if self.batch_cache_bytes > memory_bytes() {
            return Err(LoadError::Invalid {
                key: "batch_cache_bytes",
                value: self.batch_cache_bytes.to_string(),
                reason: "must not exceed the machine's memory (0 turns the cache off)",
            });
        }
        if self.group_initial_rebalance_delay_ms > GROUP_INITIAL_REBALANCE_DELAY_MS_MAX {
            return Err(LoadError::Invalid {
                key: "group_initial_rebalance_delay_ms",
                value: self.group_initial_rebalance_delay_ms.to_string(),
                reason: "must be at most 300000 (5 minutes)",
            });
        }
        self.validate_client_limits()
    }

    /// Checks the limits on clients against each other and the broker's static bounds.
    fn validate_client_limits(&self) -> Result<(), LoadError> {
        let invalid = |key, value: &dyn ToString, reason| {
            Err(LoadError::Invalid {
                key,
                value: value.to_string(),
                reason,
            })
        };
        if let Some(max) = self.max_connections {
            if !(1..=self.connections_max_static()).contains(&max) {
                let reason = "must be at least 1 and at most 16384 per shard (each connection \
                              keeps a receive in its shard's io_uring)";
                return invalid("max_connections", &max, reason);
            }
        }
        if self.max_connections_per_ip == Some(0) {
            return invalid("max_connections_per_ip", &0, "must be at least 1");
        }
        let timeouts = [
            ("connections_max_idle_ms", self.connections_max_idle_ms),
            ("request_read_timeout_ms", self.request_read_timeout_ms),
        ];
        for (key, value) in timeouts {
            if !(CONNECTION_TIMEOUT_MS_MIN..=CONNECTION_TIMEOUT_MS_MAX).contains(&value) {
                return invalid(key, &value, "must be 10 ms to a year");
            }
        }
        if self.max_in_flight_bytes_per_shard < IN_FLIGHT_BYTES_MIN {
            let value = self.max_in_flight_bytes_per_shard;
            return invalid(
                "max_in_flight_bytes_per_shard",
                &value,
                "must be at least 1 KiB",
            );
        }
        let per_connection = self.max_in_flight_bytes_per_connection;
        if !(IN_FLIGHT_BYTES_MIN..=self.max_in_flight_bytes_per_shard).contains(&per_connection) {
            let reason = "must be at least 1 KiB and at most max_in_flight_bytes_per_shard";
            return invalid(
                "max_in_flight_bytes_per_connection",
                &per_connection,
                reason,
            );
        }
        if !(1024..=FETCH_MAX_BYTES_MAX).contains(&self.fetch_max_bytes) {
            let reason = "must be 1 KiB to 2147483647 (Fetch's largest max_bytes)";
            return invalid("fetch_max_bytes", &self.fetch_max_bytes, reason);
        }
        Ok(())
    }
}

/// Topic defaults with direct I/O (see [`ServerConfig::topic_defaults`]).
fn direct_by_default() -> TopicConfig {
    let mut defaults = TopicConfig::default();
    defaults.set_io_mode(IoMode::Direct);
    defaults
}

/// The machine's memory in bytes, from `MemTotal` in /proc/meminfo (0 if it cannot be read).
pub fn memory_bytes() -> u64 {
    meminfo_bytes("MemTotal")
}

/// One `kB` field of /proc/meminfo (`MemTotal`, `MemAvailable`, …) in bytes; 0 if it cannot
/// be read.
pub fn meminfo_bytes(field: &str) -> u64 {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_engine::topic::FlushPolicy;

    fn parse(text: &str) -> Result<ServerConfig, LoadError> {
        let file: FileConfig = toml::from_str(text).map_err(|source| LoadError::Parse {
            path: PathBuf::from("test.toml"),
            source,
        })?;
        ServerConfig::from_file(file)
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 9092)));
        assert_eq!(config.data_dir, PathBuf::from("data"));
        assert!(config.auto_create_topics);
        assert_eq!(config.default_partitions, 1);
        assert_eq!(config.max_request_bytes, 100 << 20);
        assert_eq!(config.topic_defaults.io_mode(), IoMode::Direct);
        assert!(!config.io_mode_chosen);
        assert_eq!(config.batch_cache_bytes, memory_bytes() / 8);
        let available = meminfo_bytes("MemAvailable");
        assert!(available > 0 && available <= memory_bytes());
        assert_eq!(meminfo_bytes("Mem"), 0, "a whole field name, not a prefix");
    }

    #[test]
    fn client_limits_default_as_kafka_and_within_the_static_bounds() {
        let config = parse("shards = 2").unwrap();
        assert_eq!(config.connections_max_idle_ms, 600_000);
        assert_eq!(config.request_read_timeout_ms, 30_000);
        assert_eq!(config.fetch_max_bytes, 57_671_680);
        assert_eq!(config.max_connections_per_ip, None);
        assert_eq!(config.max_in_flight_bytes_per_connection, 64 << 20);
        assert_eq!(config.max_in_flight_bytes_per_shard, 512 << 20);
        // The default leaves a quarter of the descriptors, and never passes the shards'
        // bound.
        assert_eq!(config.max_connections_or_default(20_000), 15_000);
        assert_eq!(config.max_connections_or_default(1 << 20), 2 * 16_384);
        assert_eq!(config.max_connections_or_default(1), 1);
        let set = parse(
            "max_connections = 100\nmax_connections_per_ip = 10\nconnections_max_idle_ms = 50\n\
             request_read_timeout_ms = 40\nmax_in_flight_bytes_per_connection = 4096\n\
             max_in_flight_bytes_per_shard = 8192\nfetch_max_bytes = 2048\n",
        )
        .unwrap();
        assert_eq!(set.max_connections_or_default(20_000), 100);
        assert_eq!(set.max_connections_per_ip, Some(10));
        assert_eq!(
            (set.connections_max_idle_ms, set.request_read_timeout_ms),
            (50, 40)
        );
        assert_eq!(
            (
                set.max_in_flight_bytes_per_connection,
                set.max_in_flight_bytes_per_shard,
                set.fetch_max_bytes
            ),
            (4096, 8192, 2048)
        );
    }

    #[test]
    fn client_limits_outside_their_bounds_are_refused_naming_the_key() {
        for (text, key) in [
            ("max_connections = 0", "max_connections"),
            ("shards = 1\nmax_connections = 16385", "max_connections"),
            ("max_connections_per_ip = 0", "max_connections_per_ip"),
            ("connections_max_idle_ms = 9", "connections_max_idle_ms"),
            ("request_read_timeout_ms = 0", "request_read_timeout_ms"),
            (
                "max_in_flight_bytes_per_connection = 1023",
                "max_in_flight_bytes_per_connection",
            ),
            (
                "max_in_flight_bytes_per_connection = 2048\nmax_in_flight_bytes_per_shard = 1024",
                "max_in_flight_bytes_per_connection",
            ),
            (
                "max_in_flight_bytes_per_shard = 10",
                "max_in_flight_bytes_per_shard",
            ),
            ("fetch_max_bytes = 1023", "fetch_max_bytes"),
            ("fetch_max_bytes = 2147483648", "fetch_max_bytes"),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        assert!(parse("shards = 1\nmax_connections = 16384").is_ok());
    }

    #[test]
    fn the_cache_budget_is_bounded_by_memory_and_the_io_mode_can_be_chosen() {
        let too_big = format!("batch_cache_bytes = {}", memory_bytes() + 1);
        let error = parse(&too_big).unwrap_err().to_string();
        assert!(error.contains("batch_cache_bytes"), "{error}");
        assert_eq!(parse("batch_cache_bytes = 0").unwrap().batch_cache_bytes, 0);
        let chosen = parse("[topic]\n\"ringlog.io.mode\" = \"buffered\"\n").unwrap();
        assert_eq!(chosen.topic_defaults.io_mode(), IoMode::Buffered);
        assert!(chosen.io_mode_chosen);
    }

    #[test]
    fn keys_override_and_topic_defaults_apply() {
        let config = parse(
            "listen = \"0.0.0.0:19092\"\nshards = 2\n[topic]\n\"flush.policy\" = \"always\"\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.advertised_listener.port(), 19092, "follows listen");
        assert_eq!(config.shards, 2);
        assert_eq!(config.topic_defaults.flush(), FlushPolicy::Always);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let unknown = parse("lisen = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(unknown.contains("lisen"), "{unknown}");
        let zero = parse("shards = 0").unwrap_err().to_string();
        assert!(zero.contains("shards"), "{zero}");
        let topic = parse("[topic]\n\"segment.bytes\" = -5")
            .unwrap_err()
            .to_string();
        assert!(topic.contains("segment.bytes"), "{topic}");
        let bad_addr = parse("listen = \"nowhere\"").unwrap_err().to_string();
        assert!(bad_addr.contains("listen"), "{bad_addr}");
        for (text, key) in [
            ("offsets_retention_minutes = 0", "offsets_retention_minutes"),
            (
                "offsets_retention_minutes = 99999999999",
                "offsets_retention_minutes",
            ),
            (
                "group_initial_rebalance_delay_ms = 300001",
                "group_initial_rebalance_delay_ms",
            ),
            (
                "retention_check_interval_ms = 9",
                "retention_check_interval_ms",
            ),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        let groups =
            parse("offsets_retention_minutes = 60\ngroup_initial_rebalance_delay_ms = 0").unwrap();
        assert_eq!(groups.offsets_retention_minutes, 60);
        assert_eq!(groups.group_initial_rebalance_delay_ms, 0);
    }

    /// The sample configuration the systemd unit reads (deploy/ringlog.toml).
    const DEPLOYED_SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/ringlog.toml");

    /// Every key `FileConfig` accepts, as its derived `Deserialize` names them to the
    /// deserializer: a field added to the struct is in this list without anyone updating it.
    fn file_config_keys() -> &'static [&'static str] {
        use serde::de::{self, Visitor};

        /// A deserializer that records the field names a struct asks for, then stops.
        struct FieldNames<'a>(&'a mut &'static [&'static str]);

        impl<'de> de::Deserializer<'de> for FieldNames<'_> {
            type Error = de::value::Error;

            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("FileConfig is not read as a struct"))
            }

            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("only the field names were wanted"))
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                enum identifier ignored_any
            }
        }

        let mut fields: &'static [&'static str] = &[];
        assert!(FileConfig::deserialize(FieldNames(&mut fields)).is_err());
        assert!(
            fields.contains(&"data_dir") && fields.contains(&"topic"),
            "{fields:?}"
        );
        fields
    }

    /// `text` with every commented-out setting uncommented: a comment line whose text is a
    /// whole TOML `key = value` line (prose comments never parse as one).
    fn uncomment_settings(text: &str) -> String {
        let mut uncommented = String::with_capacity(text.len());
        for line in text.lines() {
            let setting = line.strip_prefix('#').map(str::trim).filter(|rest| {
                toml::from_str::<toml::Table>(rest).is_ok_and(|table| {
                    table.len() == 1 && table.values().all(|value| !value.is_table())
                })
            });
            uncommented.push_str(setting.unwrap_or(line));
            uncommented.push('\n');
        }
        uncommented
    }

    #[test]
    fn cluster_keys_come_all_three_or_none_and_name_this_node() {
        let keys =
            |node_id: Option<u64>, peers: Option<&[&str]>, internal: Option<&str>| ClusterKeys {
                node_id,
                peers: peers.map(|peers| peers.iter().map(|p| (*p).to_owned()).collect()),
                internal_listen: internal.map(|a| a.parse().unwrap()),
            };
        let peers = ["1@127.0.0.1:9191", "2@127.0.0.1:9192", "3@127.0.0.1:9193"];
        let membership = keys(Some(2), Some(&peers), Some("127.0.0.1:9192"))
            .membership()
            .unwrap()
            .unwrap();
        assert_eq!(membership.node_id, 2);
        assert_eq!(membership.peers.len(), 3);
        assert_eq!(membership.peers[2], (3, "127.0.0.1:9193".parse().unwrap()));
        assert_eq!(keys(None, None, None).membership().unwrap(), None);

        let refused = |keys: ClusterKeys| match keys.membership() {
            Err(LoadError::Invalid { key, .. }) => key,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            refused(keys(Some(2), Some(&peers), None)),
            "node_id, peers, internal_listen"
        );
        assert_eq!(
            refused(keys(Some(4), Some(&peers), Some("127.0.0.1:9194"))),
            "peers",
            "this node is not among the peers"
        );
        assert_eq!(
            refused(keys(Some(0), Some(&peers), Some("127.0.0.1:9191"))),
            "node_id"
        );
        let twice = ["1@127.0.0.1:9191", "1@127.0.0.1:9192"];
        assert_eq!(
            refused(keys(Some(1), Some(&twice), Some("127.0.0.1:9191"))),
            "peers"
        );
        for bad in [
            "127.0.0.1:9191",
            "x@127.0.0.1:9191",
            "1@nowhere",
            "0@127.0.0.1:1",
        ] {
            assert_eq!(
                refused(keys(Some(1), Some(&[bad]), Some("127.0.0.1:9191"))),
                "peers",
                "{bad}"
            );
        }
    }

    #[test]
    fn cluster_flags_override_the_files_keys() {
        let file = parse(
            "node_id = 1\npeers = [\"1@127.0.0.1:9191\", \"2@127.0.0.1:9192\"]\n\
             internal_listen = \"127.0.0.1:9191\"\n",
        )
        .unwrap();
        let flags = ClusterKeys {
            node_id: Some(2),
            internal_listen: Some("127.0.0.1:9192".parse().unwrap()),
            ..ClusterKeys::default()
        };
        let merged = flags
            .or(ClusterKeys::of(file.cluster.as_ref()))
            .membership()
            .unwrap()
            .unwrap();
        assert_eq!(merged.node_id, 2);
        assert_eq!(
            merged.peers,
            file.cluster.unwrap().peers,
            "peers from the file"
        );
    }

    #[test]
    fn the_deployed_sample_names_every_key_at_its_default() {
        let path = Path::new(DEPLOYED_SAMPLE);
        let loaded = ServerConfig::from_file(FileConfig::load(path, true).unwrap()).unwrap();
        let defaults = ServerConfig {
            data_dir: PathBuf::from("/var/lib/ringlog"),
            ..ServerConfig::default()
        };
        assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));
        assert!(
            !loaded.io_mode_chosen,
            "direct I/O falls back where it must"
        );

        // The keys set and the examples commented out together name every key once (TOML
        // refuses a key given twice), and the examples are valid values too.
        let text = std::fs::read_to_string(path).unwrap();
        let every_setting = uncomment_settings(&text);
        let table: toml::Table = toml::from_str(&every_setting).unwrap();
        let mut named: Vec<&str> = table.keys().map(String::as_str).collect();
        named.sort_unstable();
        let mut accepted = file_config_keys().to_vec();
        accepted.sort_unstable();
        assert_eq!(named, accepted, "the keys of {DEPLOYED_SAMPLE}");
        let topic = table.get("topic").and_then(toml::Value::as_table).unwrap();
        let mut named: Vec<&str> = topic.keys().map(String::as_str).collect();
        let mut topic_keys = keys::ALL.to_vec();
        named.sort_unstable();
        topic_keys.sort_unstable();
        assert_eq!(named, topic_keys, "the [topic] keys of {DEPLOYED_SAMPLE}");
        let examples: FileConfig = toml::from_str(&every_setting).unwrap();
        let examples = ServerConfig::from_file(examples).unwrap();
        assert!(examples.io_mode_chosen && examples.metrics_listen.is_some());
    }
}
