//! DeleteRecords: moves partitions' log start offsets forward (the engine drops whole
//! segments below the new start). Offset -1 means "up to the high watermark"; an offset past
//! the high watermark, or below -1, is OFFSET_OUT_OF_RANGE; an offset at or below the
//! current log start changes nothing. The answer is the new log start (low watermark).
//! A single node has no replicas to wait for, so `timeout_ms` is not needed. In a cluster
//! the partition's leader proposes the new start to its group; every replica moves its
//! log's start once its Raft window is past it, and the leader answers once its own has
//! (within `timeout_ms`, else REQUEST_TIMED_OUT; the move may still happen), as Kafka's
//! leader answers once the low watermark moved.

use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::errors;

/// DeleteRecords' "delete up to the high watermark".
const HIGH_WATERMARK: i64 = -1;
/// The bounds of the time a replicated partition's leader waits for its log start to move.
const TIMEOUT_MIN: Duration = Duration::from_millis(100);
const TIMEOUT_MAX: Duration = Duration::from_secs(60);

pub async fn handle(broker: &Broker, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0))
        .clamp(TIMEOUT_MIN, TIMEOUT_MAX);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_owned();
        let partitions = topic.partitions.iter().map(|partition| {
            let name = name.as_str();
            let index = partition.partition_index;
            let offset = partition.offset;
            async move {
                let result = DeleteRecordsPartitionResult::default().with_partition_index(index);
                match delete_before(broker, name, index, offset, timeout).await {
                    Ok(low_watermark) => result.with_low_watermark(low_watermark),
                    Err(code) => result.with_error_code(code).with_low_watermark(-1),
                }
            }
        });
        let partitions = join_all(partitions).await;
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// The new log start of one partition, or the error code.
async fn delete_before(
    broker: &Broker,
    topic: &str,
    index: i32,
    offset: i64,
    timeout: Duration,
) -> Result<i64, i16> {
    if crate::group::is_internal(topic) {
        // Moving its log start would drop group records from the next replay.
        return Err(ResponseError::InvalidTopicException.code());
    }
    let partition =
        u32::try_from(index).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
    let engine = &broker.engine;
    // Checked first in a cluster: a partition with no replica here would answer NOT_LEADER,
    // which a client retries until its timeout.
    let unknown = engine
        .topic(topic)
        .is_none_or(|meta| partition >= meta.partitions);
    if broker.replicated(topic).is_some() && unknown {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    }
    let offset = match offset {
        HIGH_WATERMARK => {
            // A leader's high watermark is all that is committed only once it committed an
            // entry of its term; before, "up to the high watermark" would delete too little.
            let settled = |cluster: &ringlog_cluster::node::Cluster| {
                cluster
                    .status(topic, partition)
                    .is_some_and(|status| status.leads_with_own_commit)
            };
            if broker
                .replicated(topic)
                .is_some_and(|cluster| !settled(cluster))
            {
                return Err(ResponseError::NotLeaderOrFollower.code());
            }
            let offsets = engine
                .offsets(topic, partition)
                .await
                .map_err(|e| errors::code(&e))?;
            offsets.high_watermark
        }
        offset if offset < 0 => return Err(ResponseError::OffsetOutOfRange.code()),
        offset => offset,
    };
    if let Some(cluster) = broker.replicated(topic) {
        let moved = cluster.move_log_start(topic, partition, offset, timeout);
        return moved.await.map_err(|e| errors::cluster_code(&e));
    }
    engine
        .delete_records_before(topic, partition, offset)
        .await
        .map_err(|e| errors::code(&e))
}
