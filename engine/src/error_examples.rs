//! One error of every kind the engine's API returns, each with a name, for the tests of
//! code that maps engine errors to something else (the broker's Kafka error codes, in
//! `server/src/errors.rs`). Built for tests only: the engine's own, and crates that enable
//! the `testing` feature.
//!
//! A kind is a variant of [`EngineError`], with the variant of the [`LogError`],
//! [`TopicError`], [`BatchError`] or [`ProducerError`] inside it where it has one. [`kind`]
//! names an error by an exhaustive match, so a variant added to any of these enums does
//! not compile until it is named here; [`examples`] must then get one of it (a test below
//! checks every example carries its own kind's name), and the mapping's table test fails
//! until it says what the new name maps to.

use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::{BatchError, Compression, RecordError};
use crate::log::{LogError, PartitionId, ProducerError};
use crate::shard::EngineError;
use crate::topic::{MetadataError, TopicError, TopicName};

/// The name of `error`'s kind: `Variant`, or `Variant::Inner` for an error that wraps one
/// of the engine's own enums, e.g. `Log::InvalidBatch::TooLarge`.
pub fn kind(error: &EngineError) -> &'static str {
    match error {
        EngineError::Topic(topic) => topic_kind(topic),
        EngineError::TopicName(_) => "TopicName",
        EngineError::Log(log) => log_kind(log),
        EngineError::UnknownTopicOrPartition { .. } => "UnknownTopicOrPartition",
        EngineError::Runtime(_) => "Runtime",
        EngineError::ShardStopped { .. } => "ShardStopped",
    }
}

fn topic_kind(error: &TopicError) -> &'static str {
    match error {
        TopicError::Io { .. } => "Topic::Io",
        TopicError::NotADataDirectory { .. } => "Topic::NotADataDirectory",
        TopicError::NotADirectory { .. } => "Topic::NotADirectory",
        TopicError::DataDirLocked { .. } => "Topic::DataDirLocked",
        TopicError::UnsupportedFormat { .. } => "Topic::UnsupportedFormat",
        TopicError::CorruptMetadata { .. } => "Topic::CorruptMetadata",
        TopicError::AlreadyExists { .. } => "Topic::AlreadyExists",
        TopicError::Collides { .. } => "Topic::Collides",
        TopicError::IdTaken { .. } => "Topic::IdTaken",
        TopicError::NotFound { .. } => "Topic::NotFound",
        TopicError::PartitionCount { .. } => "Topic::PartitionCount",
        TopicError::PartitionsNotIncreased { .. } => "Topic::PartitionsNotIncreased",
        TopicError::LeftoverPartitionDir { .. } => "Topic::LeftoverPartitionDir",
        TopicError::Poisoned { .. } => "Topic::Poisoned",
    }
}

fn log_kind(error: &LogError) -> &'static str {
    match error {
        LogError::InvalidBatch { source, .. } => batch_kind(source),
        LogError::Empty { .. } => "Log::Empty",
        LogError::Io { .. } => "Log::Io",
        LogError::StorageFailed { .. } => "Log::StorageFailed",
        LogError::OffsetOutOfRange { .. } => "Log::OffsetOutOfRange",
        LogError::Closed { .. } => "Log::Closed",
        LogError::NotContiguous { .. } => "Log::NotContiguous",
        LogError::Replicated { .. } => "Log::Replicated",
        LogError::CommitRefused { .. } => "Log::CommitRefused",
        LogError::Producer { source, .. } => producer_kind(source),
        LogError::Damaged { .. } => "Log::Damaged",
    }
}

fn batch_kind(error: &BatchError) -> &'static str {
    match error {
        BatchError::Truncated { .. } => "Log::InvalidBatch::Truncated",
        BatchError::LengthOutOfBounds { .. } => "Log::InvalidBatch::LengthOutOfBounds",
        BatchError::TooLarge { .. } => "Log::InvalidBatch::TooLarge",
        BatchError::BadMagic(_) => "Log::InvalidBatch::BadMagic",
        BatchError::CrcMismatch { .. } => "Log::InvalidBatch::CrcMismatch",
        BatchError::UnknownCompression(_) => "Log::InvalidBatch::UnknownCompression",
        BatchError::RecordCountMismatch { .. } => "Log::InvalidBatch::RecordCountMismatch",
        BatchError::RecordsDecodedMismatch { .. } => "Log::InvalidBatch::RecordsDecodedMismatch",
        BatchError::Empty => "Log::InvalidBatch::Empty",
        BatchError::InvalidRecord { .. } => "Log::InvalidBatch::InvalidRecord",
        BatchError::Compressed(_) => "Log::InvalidBatch::Compressed",
    }
}

fn producer_kind(error: &ProducerError) -> &'static str {
    match error {
        ProducerError::EpochFenced { .. } => "Log::Producer::EpochFenced",
        ProducerError::OutOfOrder { .. } => "Log::Producer::OutOfOrder",
        ProducerError::Invalid { .. } => "Log::Producer::Invalid",
        ProducerError::MultipleBatches { .. } => "Log::Producer::MultipleBatches",
    }
}

/// One error of every kind [`kind`] names, with its name, in the order of the enums.
pub fn examples() -> Vec<(&'static str, EngineError)> {
    let mut errors: Vec<EngineError> = topic_examples().into_iter().map(Into::into).collect();
    if let Err(name) = TopicName::new("") {
        errors.push(name.into());
    }
    errors.extend(log_examples().into_iter().map(EngineError::from));
    errors.push(EngineError::UnknownTopicOrPartition {
        topic: "t".into(),
        partition: 9,
    });
    errors.push(crate::rt::Error::ShardPanicked { shard: 0 }.into());
    errors.push(EngineError::ShardStopped {
        topic: "t".into(),
        partition: 0,
    });
    errors
        .into_iter()
        .map(|error| (kind(&error), error))
        .collect()
}

fn topic_examples() -> Vec<TopicError> {
    let path = || PathBuf::from("/data");
    let name = || "t".to_owned();
    vec![
        TopicError::Io {
            op: "open",
            path: path(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        },
        TopicError::NotADataDirectory { path: path() },
        TopicError::NotADirectory { path: path() },
        TopicError::DataDirLocked {
            path: path(),
            holder_pid: Some(1),
        },
        TopicError::UnsupportedFormat {
            path: path(),
            found: "2".into(),
            expected: "1".into(),
        },
        TopicError::CorruptMetadata {
            path: path(),
            source: Box::new(MetadataError::Marker("?".into())),
        },
        TopicError::AlreadyExists { name: name() },
        TopicError::Collides {
            name: name(),
            existing: "u".into(),
        },
        TopicError::IdTaken {
            name: name(),
            id: "00000000-0000-0000-0000-000000000000".into(),
        },
        TopicError::NotFound { name: name() },
        TopicError::PartitionCount {
            name: name(),
            count: 0,
        },
        TopicError::PartitionsNotIncreased {
            name: name(),
            current: 2,
            requested: 1,
        },
        TopicError::LeftoverPartitionDir { path: path() },
        TopicError::Poisoned { path: path() },
    ]
}

fn log_examples() -> Vec<LogError> {
    let partition = || PartitionId {
        topic: Arc::from("t"),
        partition: 0,
    };
    let invalid = |source| LogError::InvalidBatch {
        partition: partition(),
        log_end: 0,
        source,
    };
    let refused = |source| LogError::Producer {
        partition: partition(),
        source,
    };
    let mut errors: Vec<LogError> = batch_examples().into_iter().map(invalid).collect();
    errors.extend([
        LogError::Empty {
            partition: partition(),
        },
        LogError::Io {
            partition: partition(),
            operation: "write",
            source: std::io::ErrorKind::Other.into(),
        },
        LogError::StorageFailed {
            partition: partition(),
            source: crate::log::StorageFailure::new(
                "fdatasync",
                std::io::Error::from_raw_os_error(libc::EIO),
            ),
        },
        LogError::OffsetOutOfRange {
            partition: partition(),
            offset: 9,
            log_start: 0,
            high_watermark: 3,
        },
        LogError::Closed {
            partition: partition(),
        },
        LogError::NotContiguous {
            partition: partition(),
            expected: 10,
            found: 12,
        },
        LogError::Replicated {
            partition: partition(),
        },
        LogError::CommitRefused {
            partition: partition(),
            refusal: crate::log::CommitRefusal::Backwards {
                commit_end: 3,
                current: 5,
            },
        },
    ]);
    errors.extend(producer_examples().into_iter().map(refused));
    errors.push(LogError::Damaged {
        partition: partition(),
        segment: 0,
        offset: 7,
        source: crate::log::ScanStop::Invalid {
            position: 4096,
            error: BatchError::CrcMismatch {
                stored: 1,
                computed: 2,
            },
        },
    });
    errors
}

fn batch_examples() -> Vec<BatchError> {
    vec![
        BatchError::Truncated { need: 61, have: 3 },
        BatchError::LengthOutOfBounds { batch_length: 1 },
        BatchError::TooLarge { len: 2, max: 1 },
        BatchError::BadMagic(1),
        BatchError::CrcMismatch {
            stored: 1,
            computed: 2,
        },
        BatchError::UnknownCompression(7),
        BatchError::RecordCountMismatch {
            record_count: 2,
            last_offset_delta: 0,
        },
        BatchError::RecordsDecodedMismatch {
            record_count: 2,
            decoded: 1,
        },
        BatchError::Empty,
        BatchError::InvalidRecord {
            index: 0,
            source: RecordError::VarintOverflow { field: "length" },
        },
        BatchError::Compressed(Compression::Gzip),
    ]
}

fn producer_examples() -> Vec<ProducerError> {
    vec![
        ProducerError::EpochFenced {
            producer_id: 1,
            epoch: 0,
            current: 1,
        },
        ProducerError::OutOfOrder {
            producer_id: 1,
            epoch: 0,
            sequence: 5,
            expected: 3,
        },
        ProducerError::Invalid {
            producer_id: 1,
            epoch: -1,
            sequence: 0,
        },
        ProducerError::MultipleBatches {
            producer_id: 1,
            batch_count: 2,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_example() {
        let examples = examples();
        let mut names: Vec<&str> = examples.iter().map(|(name, _)| *name).collect();
        // As many as `kind` has arms.
        assert_eq!(names.len(), 42, "{names:?}");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 42, "each kind once");
        let kinds_named = [
            "TopicName",
            "UnknownTopicOrPartition",
            "Runtime",
            "ShardStopped",
            "Log::Empty",
            "Log::NotContiguous",
            "Log::Replicated",
            "Log::CommitRefused",
            "Log::InvalidBatch::TooLarge",
            "Log::Producer::MultipleBatches",
            "Topic::Poisoned",
        ];
        for name in kinds_named {
            assert!(names.contains(&name), "{name}");
        }
    }
}
