//! OffsetForLeaderEpoch (API key 23), as consumers send it (librdkafka at version 2, the
//! Java client from 3) after a leader change or when they restore a committed position
//! with its epoch: for each partition, where the requested leader epoch ends in the
//! leader's log, so the client can tell whether the data it read was truncated away.
//!
//! The answer is Kafka's (`LeaderEpochFileCache.endOffsetFor`): the end offset of epoch E
//! is the start offset of the first larger epoch in the log, or the log end if E is the
//! leader's current epoch; the epoch answered is the largest at or below E (see the
//! engine's `log/epochs.rs`, which keeps each epoch's first offset). Only the leader
//! answers, checked like Fetch: NOT_LEADER_OR_FOLLOWER elsewhere, `CurrentLeaderEpoch`
//! older than the group's term FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH. A single
//! node is the leader of its partitions at epoch 0, and its batches carry the epochs their
//! clients wrote.
//!
//! Raft never truncates committed entries, and consumers read only committed ones, so the
//! end offset of any epoch a consumer saw lies at or past its position: a consumer's check
//! never finds a truncation here. Followers do not use this API (they replicate through
//! Raft), so `ReplicaId` (version 3 on) is not consulted.

use futures::future::join_all;
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::errors;

pub async fn handle(
    broker: &Broker,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.topic.0.as_str().to_owned();
        let exists = broker.engine.topic(&name).is_some();
        let partitions = topic
            .partitions
            .iter()
            .map(|partition| answer(broker, &name, exists, partition));
        let partitions = join_all(partitions).await;
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// One partition's epoch and end offset, or its error (with epoch and offset -1).
async fn answer(
    broker: &Broker,
    topic: &str,
    exists: bool,
    partition: &OffsetForLeaderPartition,
) -> EpochEndOffset {
    let entry = EpochEndOffset::default()
        .with_partition(partition.partition)
        .with_leader_epoch(-1)
        .with_end_offset(-1);
    let found = end_offset(broker, topic, exists, partition).await;
    match found {
        Ok((epoch, end_offset)) => entry.with_leader_epoch(epoch).with_end_offset(end_offset),
        Err(code) => entry.with_error_code(code),
    }
}

async fn end_offset(
    broker: &Broker,
    topic: &str,
    exists: bool,
    partition: &OffsetForLeaderPartition,
) -> Result<(i32, i64), i16> {
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    let index = u32::try_from(partition.partition).map_err(|_| unknown)?;
    if !exists {
        return Err(unknown);
    }
    let status = broker.leader_status(topic, index, partition.current_leader_epoch)?;
    // The status checked is the one whose term counts as the current epoch.
    let current = status.map_or(0, |status| i32::try_from(status.term).unwrap_or(i32::MAX));
    broker
        .engine
        .epoch_end_offset(topic, index, partition.leader_epoch, current)
        .await
        .map_err(|error| errors::code(&error))
}
