//! ListOffsets: the earliest offset (timestamp -2), the latest (-1: the high watermark,
//! which for read_committed is also the last stable offset, as ringlog has no
//! transactions), or the first offset whose record is at or after a timestamp.
//!
//! Versions 8 and 9 name two timestamps for tiered storage, answered as Kafka answers them
//! for a topic without it, which every ringlog topic is: the earliest local offset (-4) is
//! the log start offset, and the latest tiered offset (-5) is -1, nothing being tiered.
//! From version 7, -3 asks for the record with the largest timestamp (its offset and
//! timestamp; -1 and -1 for an empty partition), among the committed records of a
//! replicated partition.
//!
//! The leader epoch answered (version 4 on) is the epoch of the batch holding the offset
//! found (its `partitionLeaderEpoch`, -1 where it carries none, as the Java client's
//! batches on a single node), and the current one for LATEST. In a cluster only the leader
//! answers (see `Broker::leader_status`), and a leader that has not yet committed an entry
//! of its own term answers LATEST with OFFSET_NOT_AVAILABLE (see [`answer`]).

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use ringlog_engine::log::FoundOffset;
use ringlog_engine::shard::EngineError;

use crate::broker::Broker;
use crate::errors;

/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn handle(
    broker: &Broker,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_owned();
        let partitions = topic.partitions.iter().map(|partition| {
            let name = name.clone();
            let index = partition.partition_index;
            let timestamp = partition.timestamp;
            let client_epoch = partition.current_leader_epoch;
            async move {
                let entry = ListOffsetsPartitionResponse::default().with_partition_index(index);
                match answer(broker, &name, index, timestamp, client_epoch).await {
                    // The leader epoch is in responses from version 4 on.
                    Ok(found) => entry
                        .with_offset(found.offset)
                        .with_timestamp(found.timestamp)
                        .with_leader_epoch(match found.leader_epoch {
                            Some(epoch) if version >= 4 => epoch,
                            _ => -1,
                        }),
                    Err(code) => entry
                        .with_error_code(code)
                        .with_offset(-1)
                        .with_timestamp(-1),
                }
            }
        });
        let partitions = join_all(partitions).await;
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// What ListOffsets finds when there is nothing: offset and timestamp -1, no epoch.
const NOT_FOUND: FoundOffset = FoundOffset {
    offset: -1,
    timestamp: -1,
    leader_epoch: None,
};

/// One partition's answer: the offset, its timestamp (-1 for the special timestamps) and
/// the leader epoch of the batch holding it (the current one for LATEST, as Kafka answers).
///
/// The group's status is read once: the epoch answered for LATEST is the term that was
/// checked. A leader that has not yet committed an entry of its own term has a commit end
/// that may lie below what the previous leader already handed out (Raft commits earlier
/// terms' entries only with one of the current term), so LATEST, and a lookup that finds
/// nothing below its commit end, are OFFSET_NOT_AVAILABLE until it has, as Kafka answers
/// while a new leader's high watermark lags its epoch's start; the client retries.
async fn answer(
    broker: &Broker,
    topic: &str,
    index: i32,
    timestamp: i64,
    client_epoch: i32,
) -> Result<FoundOffset, i16> {
    let partition =
        u32::try_from(index).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
    let status = broker.leader_status(topic, partition, client_epoch)?;
    // A single node's partitions are at leader epoch 0.
    let current_epoch = status
        .as_ref()
        .map_or(0, |status| i32::try_from(status.term).unwrap_or(i32::MAX));
    let lagging = status
        .as_ref()
        .is_some_and(|status| !status.leads_with_own_commit);
    let not_available = ResponseError::OffsetNotAvailable.code();
    let engine = &broker.engine;
    let code = |error: EngineError| errors::code(&error);
    let found = match timestamp {
        LATEST if lagging => return Err(not_available),
        LATEST => FoundOffset {
            offset: engine
                .offsets(topic, partition)
                .await
                .map_err(code)?
                .high_watermark,
            timestamp: -1,
            leader_epoch: Some(current_epoch),
        },
        EARLIEST | EARLIEST_LOCAL => {
            let log_start = engine
                .offsets(topic, partition)
                .await
                .map_err(code)?
                .log_start;
            let epoch = engine.epoch_at(topic, partition, log_start).await;
            FoundOffset {
                offset: log_start,
                timestamp: -1,
                leader_epoch: epoch.map_err(code)?,
            }
        }
        LATEST_TIERED => NOT_FOUND,
        MAX_TIMESTAMP => {
            let found = engine.max_timestamp_offset(topic, partition).await;
            nothing_below_commit(found.map_err(code)?, lagging)?
        }
        timestamp if timestamp >= 0 => {
            let found = engine
                .offset_for_timestamp(topic, partition, timestamp)
                .await;
            nothing_below_commit(found.map_err(code)?, lagging)?
        }
        _ => return Err(ResponseError::UnsupportedVersion.code()),
    };
    Ok(found)
}

/// A lookup's result; nothing found by a leader whose commit end may lag is
/// OFFSET_NOT_AVAILABLE (see [`answer`]).
fn nothing_below_commit(found: Option<FoundOffset>, lagging: bool) -> Result<FoundOffset, i16> {
    match found {
        Some(found) => Ok(found),
        None if lagging => Err(ResponseError::OffsetNotAvailable.code()),
        None => Ok(NOT_FOUND),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_found_by_a_lagging_leader_is_not_available() {
        let found = FoundOffset {
            offset: 7,
            timestamp: 70,
            leader_epoch: Some(3),
        };
        assert_eq!(nothing_below_commit(Some(found), true), Ok(found));
        assert_eq!(nothing_below_commit(None, false), Ok(NOT_FOUND));
        assert_eq!(nothing_below_commit(None, true), Err(78));
    }
}
