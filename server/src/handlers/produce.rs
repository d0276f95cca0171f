//! Produce: each partition's batches go to the owning shard's appender, all partitions of
//! a topic at once (topic after topic); the response waits for every part. acks=-1 waits for the fdatasync covering the
//! batches, acks=1 for the write, acks=0 for nothing the client sees (the broker still
//! appends, and sends no response). Record data is never decoded here: the engine
//! validates the batches (CRC, sizes, counts) without opening them. Any other acks value
//! is refused for every partition with INVALID_REQUIRED_ACKS, and nothing is appended (nor
//! is a missing topic auto-created).
//!
//! Idempotent producers' batches (producer id ≥ 0, one batch per partition) are checked by
//! the partition log in append order: a retry is answered with the original base offset
//! and not stored again; a gap is OUT_OF_ORDER_SEQUENCE_NUMBER, an older epoch
//! INVALID_PRODUCER_EPOCH (see `errors.rs` and the engine's `log/producers.rs`).
//!
//! In a cluster, a replicated partition's batches are proposed to its Raft group and
//! answered at commit for acks=all, at the leader's durable write for acks=1 (see
//! [`replicated`]). A node that does not lead the partition answers
//! NOT_LEADER_OR_FOLLOWER, and from version 10 on (KIP-951) says where the leader is: the
//! partition's `CurrentLeader` (the leader this node knows and its epoch, the Raft term)
//! and that leader's address in the response's `NodeEndpoints`, so the client retries
//! there without waiting for a metadata refresh. Without a known leader (an election) the
//! hint is absent. A single node leads every partition itself and never gives one.
//!
//! acks=all to a replicated partition with fewer in-sync replicas than the topic's
//! `min.insync.replicas` is refused with NOT_ENOUGH_REPLICAS before anything is proposed,
//! as Kafka refuses it (Raft's majority would refuse to commit without one anyway; the
//! setting asks for more than a majority, or fails fast rather than at the timeout).
//!
//! Version 11 allows TRANSACTION_ABORTABLE, and ringlog has no transactions. Version 13
//! names topics by id; 12 and 13 are not implemented.

use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_cluster::node::ClusterError;
use ringlog_cluster::replica::AnswerAt;
use ringlog_engine::log::Ack;

use ringlog_cluster::node::GroupStatus;

use crate::broker::{wants_leader_hint, Broker};
use crate::errors;

pub async fn handle(broker: &Broker, request: ProduceRequest, version: i16) -> ProduceResponse {
    let acks = request.acks;
    let ack = match request.acks {
        -1 => Ack::Durable,
        0 | 1 => Ack::Written,
        _ => return refuse_all(request, ResponseError::InvalidRequiredAcks),
    };
    // A replicated partition's answer waits at most this long (for the commit, or the leader's
    // write for acks=1).
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.as_str().to_owned();
        if crate::group::is_internal(&name) {
            // Only the group coordinator appends to its log (Kafka: "cannot append to an
            // internal topic").
            topics.push(refuse_topic(topic, ResponseError::InvalidTopicException));
            continue;
        }
        let exists = broker.topic_or_create(&name).await.is_some();
        let parts = topic.partition_data.into_iter().map(|partition| {
            let name = name.clone();
            async move {
                let index = partition.index;
                let response = PartitionProduceResponse::default().with_index(index);
                if !exists {
                    let code = ResponseError::UnknownTopicOrPartition.code();
                    return response.with_error_code(code);
                }
                let Ok(partition_id) = u32::try_from(index) else {
                    return response.with_error_code(ResponseError::UnknownTopicOrPartition.code());
                };
                // A slice of the request's buffer: the engine validates it, stamps copies of
                // the batch headers and writes the records from it, with no copy here.
                let batches = partition.records.unwrap_or_default();
                if let Some(cluster) = broker.replicated(&name) {
                    if acks == -1 {
                        let refused = refuse_below_min_insync(broker, cluster, &name, partition_id);
                        if let Some(refused) = refused {
                            return refused.with_index(index);
                        }
                    }
                    // acks=0 is not answered at all: it holds the request no longer than
                    // acks=1 does.
                    let answer = if acks == -1 {
                        AnswerAt::Commit
                    } else {
                        AnswerAt::LeaderWrite
                    };
                    let proposed = (partition_id, batches, answer, timeout);
                    return replicated(broker, cluster, &name, proposed, version)
                        .await
                        .with_index(index);
                }
                match broker
                    .engine
                    .append(&name, partition_id, batches, ack)
                    .await
                {
                    Ok(appended) => response
                        .with_base_offset(appended.offset_first)
                        .with_log_append_time_ms(appended.log_append_time_ms.unwrap_or(-1)),
                    Err(error) => {
                        tracing::debug!(topic = %name, partition = index, %error, "produce failed");
                        // Error messages are in responses from version 8 on.
                        let message =
                            (version >= 8).then(|| StrBytes::from_string(error.to_string()));
                        response
                            .with_error_code(errors::code(&error))
                            .with_base_offset(-1)
                            .with_error_message(message)
                    }
                }
            }
        });
        let partition_responses = join_all(parts).await;
        topics.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partition_responses),
        );
    }
    let response = ProduceResponse::default().with_responses(topics);
    if version >= LEADER_HINT_VERSION {
        with_leader_hints(broker, response)
    } else {
        response
    }
}

/// The first version with KIP-951's leader hints.
const LEADER_HINT_VERSION: i16 = 10;

/// Adds KIP-951's hints to the partitions told to look for their leader: the leader and its
/// epoch in the partition, its address once in `node_endpoints`.
fn with_leader_hints(broker: &Broker, mut response: ProduceResponse) -> ProduceResponse {
    let mut endpoints: Vec<NodeEndpoint> = Vec::new();
    for topic in &mut response.responses {
        for partition in &mut topic.partition_responses {
            if !wants_leader_hint(partition.error_code) {
                continue;
            }
            let Ok(index) = u32::try_from(partition.index) else {
                continue;
            };
            let Some(hint) = broker.leader_hint(topic.name.0.as_str(), index) else {
                continue;
            };
            partition.current_leader = LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(hint.leader_id))
                .with_leader_epoch(hint.leader_epoch);
            if !endpoints.iter().any(|e| e.node_id.0 == hint.leader_id) {
                endpoints.push(
                    NodeEndpoint::default()
                        .with_node_id(BrokerId(hint.leader_id))
                        .with_host(StrBytes::from_string(hint.host))
                        .with_port(i32::from(hint.port))
                        .with_rack(None),
                );
            }
        }
    }
    response.with_node_endpoints(endpoints)
}

/// Refuses an acks=all produce to a partition this node leads with fewer in-sync voters
/// than the topic's `min.insync.replicas`: NOT_ENOUGH_REPLICAS, with the message Kafka's
/// broker gives, and nothing proposed. A node that does not lead the partition passes:
/// proposing there answers NOT_LEADER_OR_FOLLOWER, which the client needs to find the
/// leader.
fn refuse_below_min_insync(
    broker: &Broker,
    cluster: &ringlog_cluster::node::Cluster,
    topic: &str,
    partition: u32,
) -> Option<PartitionProduceResponse> {
    let status = cluster.status(topic, partition)?;
    let min_insync =
        (broker.engine.topic(topic)).map_or(1, |meta| meta.config.min_insync_replicas());
    let message = below_min_insync(&status, cluster.node_id(), min_insync)?;
    tracing::debug!(topic, partition, %message, "produce refused");
    Some(
        PartitionProduceResponse::default()
            .with_error_code(ResponseError::NotEnoughReplicas.code())
            .with_base_offset(-1)
            .with_error_message(Some(StrBytes::from_string(message))),
    )
}

/// Why a produce with acks=all is refused at `node` by `status` under `min_insync`, if it
/// is: only where `node` leads.
fn below_min_insync(status: &GroupStatus, node: u64, min_insync: u32) -> Option<String> {
    let in_sync = status.in_sync.len();
    if status.leader != Some(node) || in_sync >= min_insync as usize {
        return None;
    }
    Some(format!(
        "the size of the current ISR {:?} ({in_sync}) is below min.insync.replicas \
         ({min_insync}) for this partition",
        status.in_sync
    ))
}

/// A replicated partition's batches: proposed to its group, answered when committed (a
/// majority holds them durably) for acks=all, once the leader's own write of them is
/// durable for acks=1 (acks=0 is not answered at all). A node that does not lead the
/// partition answers NOT_LEADER_OR_FOLLOWER, so the client refreshes its
/// metadata and retries at the leader. Past the request's `timeout_ms` it answers
/// REQUEST_TIMED_OUT (the batches may still commit, as in Kafka), as it does when the
/// partition's replica has no room for another proposal.
async fn replicated(
    broker: &Broker,
    cluster: &ringlog_cluster::node::Cluster,
    topic: &str,
    (partition, batches, answer, timeout): (u32, bytes::Bytes, AnswerAt, Duration),
    version: i16,
) -> PartitionProduceResponse {
    let max_message_bytes = broker
        .engine
        .topic(topic)
        .map_or(0, |meta| meta.config.max_message_bytes() as usize);
    let response = PartitionProduceResponse::default();
    match cluster
        .propose(
            topic,
            partition,
            batches,
            max_message_bytes,
            None,
            answer,
            timeout,
        )
        .await
    {
        Ok(appended) => response
            .with_base_offset(appended.offset_first)
            .with_log_append_time_ms(appended.log_append_time_ms.unwrap_or(-1)),
        Err(error) => {
            tracing::debug!(topic, partition, %error, "replicated produce failed");
            let message = (version >= 8).then(|| StrBytes::from_string(error.to_string()));
            let code = match error {
                ClusterError::ProposalTimedOut { .. } | ClusterError::InboxFull { .. } => {
                    ResponseError::RequestTimedOut.code()
                }
                _ => errors::cluster_code(&error),
            };
            response
                .with_error_code(code)
                .with_base_offset(-1)
                .with_error_message(message)
        }
    }
}

/// The same error for every partition of `request`.
fn refuse_all(request: ProduceRequest, error: ResponseError) -> ProduceResponse {
    let topics = request
        .topic_data
        .into_iter()
        .map(|topic| refuse_topic(topic, error))
        .collect();
    ProduceResponse::default().with_responses(topics)
}

/// The same error for every partition of one topic.
fn refuse_topic(topic: TopicProduceData, error: ResponseError) -> TopicProduceResponse {
    let partitions = topic
        .partition_data
        .iter()
        .map(|partition| {
            PartitionProduceResponse::default()
                .with_index(partition.index)
                .with_error_code(error.code())
                .with_base_offset(-1)
        })
        .collect();
    TopicProduceResponse::default()
        .with_name(topic.name)
        .with_partition_responses(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_all_needs_min_insync_replicas_at_the_leader_only() {
        let status = |leader, in_sync: &[u64]| GroupStatus {
            leader: Some(leader),
            term: 3,
            in_sync: in_sync.to_vec(),
            ..GroupStatus::default()
        };
        assert_eq!(below_min_insync(&status(1, &[1, 2, 3]), 1, 3), None);
        assert_eq!(below_min_insync(&status(1, &[1, 2]), 1, 2), None);
        let refused = below_min_insync(&status(1, &[1, 2]), 1, 3).unwrap();
        assert!(
            refused.contains("(2) is below min.insync.replicas (3)"),
            "{refused}"
        );
        assert_eq!(
            below_min_insync(&status(2, &[2]), 1, 3),
            None,
            "not the leader"
        );
    }
}
