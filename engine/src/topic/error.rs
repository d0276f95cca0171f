//! Why a topic registry operation failed.
//!
//! [`TopicError`] is what the registry returns: operating errors a caller maps to Kafka
//! error codes (`AlreadyExists` to TOPIC_ALREADY_EXISTS, `Collides` to INVALID_TOPIC_EXCEPTION,
//! `NotFound` to UNKNOWN_TOPIC_OR_PARTITION, `PartitionCount` and `PartitionsNotIncreased`
//! to INVALID_PARTITIONS), and environmental stops at startup (`NotADataDirectory`,
//! `NotADirectory`, `DataDirLocked`, `UnsupportedFormat`, `CorruptMetadata`, `Io`) whose
//! messages name the path and the way out. [`MetadataError`] says what is wrong inside a damaged metadata file and is kept as
//! the `source()` of `CorruptMetadata`.

use std::io;
use std::path::PathBuf;

use super::{ConfigError, TopicNameError};
use crate::limits::PARTITIONS_PER_TOPIC_MAX;

/// A failed topic registry operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// A file system call failed; `op` says what was being done to `path`.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The data directory holds files but no ringlog marker: it belongs to something else.
    #[error(
        "{} is not a ringlog data directory: it is not empty and has no ringlog.meta; \
         point the data directory at an empty or missing directory, or at one ringlog made",
        path.display()
    )]
    NotADataDirectory { path: PathBuf },
    /// The data directory path names something that is not a directory.
    #[error(
        "the data directory {} is not a directory; point the data directory at a directory \
         (it is created if missing)",
        path.display()
    )]
    NotADirectory { path: PathBuf },
    /// Another process (or another engine in this one) holds the data directory's lock.
    #[error(
        "the data directory {} is in use by another ringlog ({}); stop that one first, or \
         give this one another data directory",
        path.display(),
        holder_pid.map_or_else(|| "PID unknown".to_owned(), |pid| format!("PID {pid}"))
    )]
    DataDirLocked {
        path: PathBuf,
        holder_pid: Option<u32>,
    },
    /// A metadata file was written by a format this build does not read.
    #[error(
        "{} has format {found:?}; this ringlog reads {expected:?} (was it written by a newer \
         ringlog?)",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// A metadata file is damaged; it is never read as empty.
    #[error(
        "{} is damaged and cannot be loaded; restore it from a backup (the file is left \
         untouched)",
        path.display()
    )]
    CorruptMetadata {
        path: PathBuf,
        // Boxed: the rare case should not make every `Result` of the registry larger.
        #[source]
        source: Box<MetadataError>,
    },
    /// A topic of this name exists already.
    #[error("topic {name} already exists")]
    AlreadyExists { name: String },
    /// The topic id asked for is nil or another topic's.
    #[error("topic {name} cannot take id {id}: it is nil or another topic's")]
    IdTaken { name: String, id: String },
    /// A different topic has the same name once '.' and '_' are treated alike.
    #[error("topic {name} collides with existing topic {existing} ('.' and '_' are alike)")]
    Collides { name: String, existing: String },
    /// No topic of this name exists.
    #[error("topic {name} does not exist")]
    NotFound { name: String },
    /// A partition count outside 1..=PARTITIONS_PER_TOPIC_MAX.
    #[error(
        "topic {name}: {count} partitions is out of range 1..={max}",
        max = PARTITIONS_PER_TOPIC_MAX
    )]
    PartitionCount { name: String, count: u32 },
    /// CreatePartitions may only add partitions.
    #[error("topic {name} has {current} partitions; the new count {requested} must be larger")]
    PartitionsNotIncreased {
        name: String,
        current: u32,
        requested: u32,
    },
    /// A directory for a partition about to be created exists already, left by a topic of
    /// the same name whose deletion was interrupted. ringlog never reuses or deletes data
    /// it has no record of.
    #[error(
        "{} exists but belongs to no topic (left by an interrupted delete?); remove it, \
         then retry",
        path.display()
    )]
    LeftoverPartitionDir { path: PathBuf },
    /// An earlier write of the metadata file failed after the rename, so what is on disk is
    /// not known; the registry refuses changes until it is reopened.
    #[error(
        "the topic registry refuses changes after a failed metadata write to {}; restart to \
         reload it",
        path.display()
    )]
    Poisoned { path: PathBuf },
}

impl TopicError {
    /// `CorruptMetadata` for the file at `path`.
    pub(crate) fn corrupt(path: &std::path::Path, source: MetadataError) -> TopicError {
        TopicError::CorruptMetadata {
            path: path.to_owned(),
            source: Box::new(source),
        }
    }
}

/// What is wrong inside a damaged metadata file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The file is larger than any metadata file ringlog writes.
    #[error("{len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    /// The file is not the JSON document ringlog writes.
    #[error("not a ringlog metadata document")]
    Json(#[from] serde_json::Error),
    /// The marker file is not `ringlog-data-dir <version>`.
    #[error("marker text {0:?} is not \"ringlog-data-dir <version>\"")]
    Marker(String),
    /// A stored topic name is not legal.
    #[error("stored topic name {name:?} is not legal")]
    Name {
        name: String,
        #[source]
        source: TopicNameError,
    },
    /// A stored topic id is not a UUID.
    #[error("topic {topic}: stored id {id:?} is not a UUID")]
    Id {
        topic: String,
        id: String,
        #[source]
        source: uuid::Error,
    },
    /// Two stored topics share an id.
    #[error("topics {topic} and {other} share the id {id}")]
    DuplicateId {
        topic: String,
        other: String,
        id: String,
    },
    /// A stored partition count is out of bounds.
    #[error("topic {topic}: stored partition count {count} is out of range")]
    PartitionCount { topic: String, count: u32 },
    /// A stored config key or value is refused.
    #[error("topic {topic}: stored config is refused")]
    Config {
        topic: String,
        #[source]
        source: ConfigError,
    },
    /// The producer-id reservation is not the 20-byte record ringlog writes (size, magic,
    /// version, CRC or a negative id).
    #[error("not a producer-id reservation")]
    ProducerIds,
    /// Two stored topics have the same name or collide.
    #[error("topic {topic} is stored twice, or collides with {other}")]
    Duplicate { topic: String, other: String },
}
