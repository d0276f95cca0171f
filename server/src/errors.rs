//! Mapping engine and topic errors to the Kafka error codes clients act on.
//!
//! One place decides which code a failure gets, so every API answers alike.

use kafka_protocol::ResponseError;
use ringlog_cluster::node::ClusterError;
use ringlog_cluster::replica::ReplicaError;
use ringlog_engine::batch::BatchError;
use ringlog_engine::log::{LogError, ProducerError};
use ringlog_engine::shard::EngineError;
use ringlog_engine::topic::{ConfigError, TopicError};

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
        // Damaged bytes on disk answer a fetch as Kafka's own broker does when a segment's
        // batches do not parse: the Java consumer surfaces CORRUPT_MESSAGE to the
        // application (which can seek past), where KAFKA_STORAGE_ERROR would be retried
        // silently forever.
        LogError::InvalidBatch { .. } | LogError::Empty { .. } | LogError::Damaged { .. } => {
            ResponseError::CorruptMessage
        }
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Io { .. } | LogError::StorageFailed { .. } => ResponseError::KafkaStorageError,
        // Only its replica writes a replicated log; a produce reaching the log directly
        // did not go through the partition's leader, so the client looks for it again.
        LogError::Closed { .. } | LogError::Replicated { .. } => ResponseError::NotLeaderOrFollower,
        LogError::Producer { source, .. } => return producer_code(source),
        _ => ResponseError::UnknownServerError,
    };
    kind.code()
}

/// Idempotent producers' refusals, as Kafka's `ProducerAppendInfo` answers them; a batch
/// no client builds (several per request, negative epoch or sequence) is INVALID_RECORD.
fn producer_code(error: &ProducerError) -> i16 {
    let kind = match error {
        ProducerError::EpochFenced { .. } => ResponseError::InvalidProducerEpoch,
        ProducerError::OutOfOrder { .. } => ResponseError::OutOfOrderSequenceNumber,
        _ => ResponseError::InvalidRecord,
    };
    kind.code()
}

fn topic_code(error: &TopicError) -> i16 {
    let kind = match error {
        TopicError::AlreadyExists { .. } | TopicError::IdTaken { .. } => {
            ResponseError::TopicAlreadyExists
        }
        TopicError::Collides { .. } => ResponseError::InvalidTopicException,
        TopicError::NotFound { .. } => ResponseError::UnknownTopicOrPartition,
        TopicError::PartitionCount { .. } | TopicError::PartitionsNotIncreased { .. } => {
            ResponseError::InvalidPartitions
        }
        _ => ResponseError::KafkaStorageError,
    };
    kind.code()
}

/// The Kafka error code for a refused topic configuration: INVALID_CONFIG, whatever the
/// reason (the message, which names the key, tells them apart).
pub fn config_code(_error: &ConfigError) -> i16 {
    ResponseError::InvalidConfig.code()
}

/// Kafka's name of an error code, as its documentation and tools print it
/// (`UNKNOWN_TOPIC_OR_PARTITION`); `NONE` for 0, `UNKNOWN_ERROR_CODE_<n>` for a code this
/// build does not know.
pub fn name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_owned(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_ERROR_CODE_{code}"),
        Some(error) => screaming_snake(&format!("{error:?}")),
    }
}

/// `UnknownTopicOrPartition` → `UNKNOWN_TOPIC_OR_PARTITION`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (index, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The Kafka error code for a failure of the cluster layer: a node that does not lead the
/// partition (or the controller) says so, so the client refreshes its metadata and goes to
/// the leader. A replica that failed answers as Kafka's broker answers for a partition it
/// cannot serve: KAFKA_STORAGE_ERROR where its storage failed (the partition's log or its
/// Raft journal), NOT_LEADER_OR_FOLLOWER otherwise (a stopped replica, a Raft error, an
/// inconsistency): both are retriable, so a Java producer looks for the leader again rather
/// than failing its records, which UNKNOWN_SERVER_ERROR would make it do.
pub fn cluster_code(error: &ClusterError) -> i16 {
    let kind = match error {
        ClusterError::Engine(engine) => return code(engine),
        ClusterError::Replica(replica) => return replica_code(replica),
        ClusterError::NotController { .. } => ResponseError::NotController,
        ClusterError::TopicExists { .. } => ResponseError::TopicAlreadyExists,
        ClusterError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        ClusterError::InvalidTopicConfig(_) => ResponseError::InvalidConfig,
        ClusterError::InvalidPartitions(_) | ClusterError::PartitionsNotIncreased { .. } => {
            ResponseError::InvalidPartitions
        }
        ClusterError::UnknownTopic { .. } | ClusterError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        ClusterError::NoReassignment { .. } => ResponseError::NoReassignmentInProgress,
        // A factor out of range is refused by the handlers before this (as
        // INVALID_REPLICATION_FACTOR): what the cluster refuses is an assignment.
        ClusterError::InvalidReplication(_) => ResponseError::InvalidReplicaAssignment,
        // A full inbox or a proposal past its deadline: the client retries later.
        ClusterError::ApplyTimedOut { .. }
        | ClusterError::InboxFull { .. }
        | ClusterError::ProposalTimedOut { .. } => ResponseError::RequestTimedOut,
        // No replica here, or its task or the controller's applier stopped on this node
        // (logged): the client goes to another (CreateTopics answers NOT_CONTROLLER).
        ClusterError::NoReplica { .. }
        | ClusterError::ShardStopped
        | ClusterError::InboxClosed { .. }
        | ClusterError::ControllerStopped => ResponseError::NotLeaderOrFollower,
        ClusterError::ControllerDir { .. } | ClusterError::AppliedFile(_) => {
            ResponseError::KafkaStorageError
        }
        _ => ResponseError::UnknownServerError,
    };
    kind.code()
}

/// A replica's failure (see [`cluster_code`]).
fn replica_code(error: &ReplicaError) -> i16 {
    let kind = match error {
        ReplicaError::Log { source, .. } => return log_code(source),
        ReplicaError::Journal { .. } => ResponseError::KafkaStorageError,
        _ => ResponseError::NotLeaderOrFollower,
    };
    kind.code()
}

/// The Kafka error code for a CreateTopics refused by the cluster layer: where any other
/// request would answer NOT_LEADER_OR_FOLLOWER (this node does not lead the controller, its
/// replica of the controller stopped), CreateTopics answers NOT_CONTROLLER, the code its
/// clients retry on after refreshing the controller id; NOT_LEADER_OR_FOLLOWER is not a
/// CreateTopics error.
pub fn create_topic_code(error: &ClusterError) -> i16 {
    let code = cluster_code(error);
    if code == ResponseError::NotLeaderOrFollower.code() {
        ResponseError::NotController.code()
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every kind of engine error maps to. `error_examples` names the kinds by an
    /// exhaustive match, so a new variant cannot compile without a name there, and this
    /// table must then say what it maps to.
    const CODES: [(&str, ResponseError); 42] = {
        use ResponseError::{
            CorruptMessage as Corrupt, InvalidPartitions, InvalidProducerEpoch, InvalidRecord,
            InvalidTopicException, KafkaStorageError as Storage, MessageTooLarge,
            NotLeaderOrFollower, OffsetOutOfRange, OutOfOrderSequenceNumber, TopicAlreadyExists,
            UnknownServerError, UnknownTopicOrPartition,
        };
        [
            ("Topic::Io", Storage),
            ("Topic::NotADataDirectory", Storage),
            ("Topic::NotADirectory", Storage),
            ("Topic::DataDirLocked", Storage),
            ("Topic::UnsupportedFormat", Storage),
            ("Topic::CorruptMetadata", Storage),
            ("Topic::AlreadyExists", TopicAlreadyExists),
            ("Topic::Collides", InvalidTopicException),
            ("Topic::IdTaken", TopicAlreadyExists),
            ("Topic::NotFound", UnknownTopicOrPartition),
            ("Topic::PartitionCount", InvalidPartitions),
            ("Topic::PartitionsNotIncreased", InvalidPartitions),
            ("Topic::LeftoverPartitionDir", Storage),
            ("Topic::Poisoned", Storage),
            ("TopicName", InvalidTopicException),
            ("Log::InvalidBatch::Truncated", Corrupt),
            ("Log::InvalidBatch::LengthOutOfBounds", Corrupt),
            ("Log::InvalidBatch::TooLarge", MessageTooLarge),
            ("Log::InvalidBatch::BadMagic", Corrupt),
            ("Log::InvalidBatch::CrcMismatch", Corrupt),
            ("Log::InvalidBatch::UnknownCompression", Corrupt),
            ("Log::InvalidBatch::RecordCountMismatch", Corrupt),
            ("Log::InvalidBatch::RecordsDecodedMismatch", Corrupt),
            ("Log::InvalidBatch::Empty", Corrupt),
            ("Log::InvalidBatch::InvalidRecord", Corrupt),
            ("Log::InvalidBatch::Compressed", Corrupt),
            ("Log::Empty", Corrupt),
            ("Log::Io", Storage),
            ("Log::StorageFailed", Storage),
            ("Log::OffsetOutOfRange", OffsetOutOfRange),
            ("Log::Closed", NotLeaderOrFollower),
            ("Log::NotContiguous", UnknownServerError),
            ("Log::Replicated", NotLeaderOrFollower),
            ("Log::CommitRefused", UnknownServerError),
            ("Log::Producer::EpochFenced", InvalidProducerEpoch),
            ("Log::Producer::OutOfOrder", OutOfOrderSequenceNumber),
            ("Log::Producer::Invalid", InvalidRecord),
            ("Log::Producer::MultipleBatches", InvalidRecord),
            ("Log::Damaged", Corrupt),
            ("UnknownTopicOrPartition", UnknownTopicOrPartition),
            ("Runtime", UnknownServerError),
            ("ShardStopped", NotLeaderOrFollower),
        ]
    };

    #[test]
    fn every_kind_of_engine_error_maps_to_its_kafka_code() {
        let examples = ringlog_engine::error_examples::examples();
        let named: Vec<&str> = examples.iter().map(|(name, _)| *name).collect();
        let tabled: Vec<&str> = CODES.iter().map(|(name, _)| *name).collect();
        assert_eq!(named, tabled, "one row per kind of engine error, in order");
        for ((kind, error), (_, expected)) in examples.iter().zip(CODES) {
            assert_eq!(
                (*kind, name(code(error))),
                (*kind, name(expected.code())),
                "{error}"
            );
        }
    }

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

    #[test]
    fn producer_refusals_get_the_codes_idempotent_clients_act_on() {
        let partition = ringlog_engine::log::PartitionId {
            topic: std::sync::Arc::from("t"),
            partition: 0,
        };
        let refused = |source| {
            EngineError::Log(LogError::Producer {
                partition: partition.clone(),
                source,
            })
        };
        let fenced = ProducerError::EpochFenced {
            producer_id: 1,
            epoch: 0,
            current: 1,
        };
        assert_eq!(code(&refused(fenced)), 47);
        let gap = ProducerError::OutOfOrder {
            producer_id: 1,
            epoch: 0,
            sequence: 5,
            expected: 3,
        };
        assert_eq!(code(&refused(gap)), 45);
        let two = ProducerError::MultipleBatches {
            producer_id: 1,
            batch_count: 2,
        };
        assert_eq!(code(&refused(two)), 87);
        assert_eq!(name(45), "OUT_OF_ORDER_SEQUENCE_NUMBER");
    }

    #[test]
    fn codes_are_named_as_kafka_names_them() {
        assert_eq!(name(0), "NONE");
        assert_eq!(name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(name(17), "INVALID_TOPIC_EXCEPTION");
        assert_eq!(name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(name(40), "INVALID_CONFIG");
        assert_eq!(name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(name(31_000), "UNKNOWN_ERROR_CODE_31000");
    }

    #[test]
    fn every_config_error_is_invalid_config() {
        let unknown = ConfigError::UnknownKey { key: "nope".into() };
        assert_eq!(config_code(&unknown), 40);
    }

    #[test]
    fn a_poisoned_partition_is_a_storage_error_whatever_its_errno() {
        let partition = ringlog_engine::log::PartitionId {
            topic: std::sync::Arc::from("t"),
            partition: 0,
        };
        for errno in [libc::ENOSPC, libc::EIO] {
            let source = std::io::Error::from_raw_os_error(errno);
            let failed = LogError::StorageFailed {
                partition: partition.clone(),
                source: ringlog_engine::log::StorageFailure::new("write", source),
            };
            assert_eq!(code(&EngineError::Log(failed)), 56, "errno {errno}");
        }
    }

    #[test]
    fn a_failed_replica_answers_a_retriable_code() {
        let partition = ringlog_engine::log::PartitionId {
            topic: std::sync::Arc::from("t"),
            partition: 0,
        };
        let replica = |error| ClusterError::Replica(error);
        let inconsistent = replica(ReplicaError::Inconsistent {
            partition: partition.clone(),
            reason: "test".into(),
        });
        let unsupported = replica(ReplicaError::Unsupported {
            partition: partition.clone(),
            what: "test",
        });
        let not_leader = replica(ReplicaError::NotLeader {
            partition: partition.clone(),
            leader: Some(2),
        });
        for error in [&inconsistent, &unsupported, &not_leader] {
            assert_eq!(
                name(cluster_code(error)),
                "NOT_LEADER_OR_FOLLOWER",
                "{error}"
            );
            assert_eq!(name(create_topic_code(error)), "NOT_CONTROLLER", "{error}");
        }
        let failed = LogError::StorageFailed {
            partition: partition.clone(),
            source: ringlog_engine::log::StorageFailure::new(
                "write",
                std::io::Error::from_raw_os_error(libc::EIO),
            ),
        };
        let log = replica(ReplicaError::Log {
            partition,
            source: failed,
        });
        assert_eq!(name(cluster_code(&log)), "KAFKA_STORAGE_ERROR");
        assert_eq!(name(create_topic_code(&log)), "KAFKA_STORAGE_ERROR");
        for error in [
            ClusterError::NoReplica {
                topic: "t".into(),
                partition: 0,
            },
            ClusterError::ShardStopped,
        ] {
            assert_eq!(name(cluster_code(&error)), "NOT_LEADER_OR_FOLLOWER");
            assert_eq!(name(create_topic_code(&error)), "NOT_CONTROLLER");
        }
        let full = ClusterError::InboxFull {
            topic: "t".into(),
            partition: 0,
        };
        assert_eq!(name(cluster_code(&full)), "REQUEST_TIMED_OUT");
        assert_eq!(name(create_topic_code(&full)), "REQUEST_TIMED_OUT");
        let stopped = ClusterError::ControllerStopped;
        assert_eq!(name(create_topic_code(&stopped)), "NOT_CONTROLLER");
        let closed = ClusterError::InboxClosed {
            topic: "t".into(),
            partition: 0,
        };
        assert_eq!(name(cluster_code(&closed)), "NOT_LEADER_OR_FOLLOWER");
        let exists = ClusterError::TopicExists { name: "t".into() };
        assert_eq!(name(create_topic_code(&exists)), "TOPIC_ALREADY_EXISTS");
    }
}
