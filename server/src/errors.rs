//! Mapping engine and topic errors to the Kafka error codes clients act on.
//!
//! One place decides which code a failure gets, so every API answers alike.

use kafka_protocol::ResponseError;
use ringlog_engine::batch::BatchError;
use ringlog_engine::log::LogError;
use ringlog_engine::shard::EngineError;
use ringlog_engine::topic::TopicError;

/// The Kafka error code for `error`.
pub fn code(error: &EngineError) -> i16 {
    let kind = match error {
        EngineError::Log(log) => return log_code(log),
        EngineError::Topic(topic) => return topic_code(topic),
        EngineError::TopicName(_) => ResponseError::InvalidTopicException,
        EngineError::UnknownTopicOrPartition { .. } => ResponseError::UnknownTopicOrPartition,
        EngineError::ShardStopped { .. } => ResponseError::NotLeaderOrFollower,
        _ => ResponseError::UnknownServerError,
    };
    kind.code()
}

fn log_code(error: &LogError) -> i16 {
    let kind = match error {
        LogError::InvalidBatch {
            source: BatchError::TooLarge { .. },
            ..
        } => ResponseError::MessageTooLarge,
        LogError::InvalidBatch { .. } | LogError::Empty { .. } => ResponseError::CorruptMessage,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Io { .. } | LogError::StorageFailed { .. } | LogError::Corrupt { .. } => {
            ResponseError::KafkaStorageError
        }
        LogError::Closed { .. } => ResponseError::NotLeaderOrFollower,
        _ => ResponseError::UnknownServerError,
    };
    kind.code()
}

fn topic_code(error: &TopicError) -> i16 {
    let kind = match error {
        TopicError::AlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        TopicError::Collides { .. } => ResponseError::InvalidTopicException,
        TopicError::NotFound { .. } => ResponseError::UnknownTopicOrPartition,
        TopicError::PartitionCount { .. } | TopicError::PartitionsNotIncreased { .. } => {
            ResponseError::InvalidPartitions
        }
        _ => ResponseError::KafkaStorageError,
    };
    kind.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_get_the_codes_clients_expect() {
        let unknown = EngineError::UnknownTopicOrPartition {
            topic: "t".into(),
            partition: 9,
        };
        assert_eq!(code(&unknown), 3);
        let name = ringlog_engine::topic::TopicName::new("bad/name").unwrap_err();
        assert_eq!(code(&EngineError::TopicName(name)), 17);
        let exists = TopicError::AlreadyExists { name: "t".into() };
        assert_eq!(code(&EngineError::Topic(exists)), 36);
    }
}
