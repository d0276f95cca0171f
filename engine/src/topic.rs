//! Topics: their names, configurations, placement on shards, and the registry that
//! persists them in the data directory.
//!
//! - [`name`]: [`TopicName`], validated as Kafka validates topic names.
//! - [`config`]: [`TopicConfig`], per-topic durability, I/O mode, rolling, retention and
//!   limits, with the Kafka-style `key=value` codec CreateTopics, DescribeConfigs and
//!   AlterConfigs use.
//! - [`placement`]: [`shard_for`], the stable partition-to-shard mapping.
//! - [`metadata`]: the on-disk form of the registry (`ringlog.meta`, `topics.json`).
//! - [`lock`]: [`DataDirLock`], one process at a time on a data directory.
//! - [`producer_ids`]: [`ProducerIdAllocator`], idempotent producers' ids, never reused.
//! - [`registry`]: [`TopicRegistry`], create / delete / add partitions / alter config,
//!   each made durable before it is visible.
//!
//! Everything here is control path: it runs on startup and on admin requests, uses
//! synchronous `std::fs`, and needs no I/O runtime. Shards receive the resulting
//! `TopicMeta`s; nothing here is touched on the append or fetch path.

mod atomic_file;
pub mod config;
mod error;
pub mod lock;
pub mod metadata;
pub mod name;
pub mod placement;
pub mod producer_ids;
pub mod registry;

pub use config::{keys, ConfigError, FlushPolicy, IoMode, TopicConfig, TopicConfigBuilder};
pub use error::{MetadataError, TopicError};
pub use lock::DataDirLock;
pub use metadata::TopicMeta;
pub use name::{TopicName, TopicNameError};
pub use placement::shard_for;
pub use producer_ids::ProducerIdAllocator;
pub use registry::TopicRegistry;
