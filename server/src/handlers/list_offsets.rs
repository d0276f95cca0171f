//! ListOffsets: the earliest offset (timestamp -2), the latest (-1: the high watermark,
//! which for read_committed is also the last stable offset, as ringlog has no
//! transactions), or the first offset whose record is at or after a timestamp.
//!
//! Versions 8 and 9 name two timestamps for tiered storage, answered as Kafka answers them
//! for a topic without it, which every ringlog topic is: the earliest local offset (-4) is
//! the log start offset, and the latest tiered offset (-5) is -1, nothing being tiered.
//! From version 7, -3 asks for the record with the largest timestamp (its offset and
//! timestamp; -1 and -1 for an empty partition).

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

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
                // A single node's partitions are at leader epoch 0; a replicated one's is
                // its group's term (the current one, not the term of the batch found).
                let epoch = match u32::try_from(index) {
                    Ok(partition) => leader_epoch(broker, &name, partition),
                    Err(_) => 0,
                };
                let found = match u32::try_from(index) {
                    Ok(partition) => broker.check_leader(&name, partition, client_epoch),
                    Err(_) => Ok(()),
                };
                let found = match found {
                    Ok(()) => lookup(broker, &name, index, timestamp).await,
                    Err(code) => Err(code),
                };
                match found {
                    // An offset of -1 (none found) has no epoch, and the field is there
                    // from version 4 on.
                    Ok((offset, timestamp)) => entry
                        .with_offset(offset)
                        .with_timestamp(timestamp)
                        .with_leader_epoch(if version >= 4 && offset >= 0 {
                            epoch
                        } else {
                            -1
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

/// The partition's leader epoch: its group's term in a cluster, else 0.
pub fn leader_epoch(broker: &Broker, topic: &str, partition: u32) -> i32 {
    broker
        .replicated(topic)
        .and_then(|cluster| cluster.status(topic, partition))
        .map_or(0, |status| i32::try_from(status.term).unwrap_or(i32::MAX))
}

async fn lookup(
    broker: &Broker,
    topic: &str,
    index: i32,
    timestamp: i64,
) -> Result<(i64, i64), i16> {
    let partition =
        u32::try_from(index).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
    let engine = &broker.engine;
    match timestamp {
        LATEST | EARLIEST | EARLIEST_LOCAL | LATEST_TIERED => {
            let offsets = engine
                .offsets(topic, partition)
                .await
                .map_err(|e| errors::code(&e))?;
            let offset = match timestamp {
                LATEST => offsets.high_watermark,
                LATEST_TIERED => -1,
                _ => offsets.log_start,
            };
            Ok((offset, -1))
        }
        MAX_TIMESTAMP => {
            let found = engine.max_timestamp_offset(topic, partition).await;
            Ok(found.map_err(|e| errors::code(&e))?.unwrap_or((-1, -1)))
        }
        timestamp if timestamp >= 0 => {
            let found = engine
                .offset_for_timestamp(topic, partition, timestamp)
                .await;
            Ok(found.map_err(|e| errors::code(&e))?.unwrap_or((-1, -1)))
        }
        _ => Err(ResponseError::UnsupportedVersion.code()),
    }
}
