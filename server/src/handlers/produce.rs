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
//! Versions 10 and 11 change nothing ringlog answers. 10 adds leader hints (KIP-951) that
//! come only with NOT_LEADER_OR_FOLLOWER; ringlog leads every partition itself, so a hint
//! would name this node at the epoch the client already has and change nothing, and those
//! tagged fields stay absent. 11 allows TRANSACTION_ABORTABLE, and ringlog has no
//! transactions. Version 13 names topics by id; 12 and 13 are not implemented.

use futures::future::join_all;
use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_engine::log::Ack;

use crate::broker::Broker;
use crate::errors;

pub async fn handle(broker: &Broker, request: ProduceRequest, version: i16) -> ProduceResponse {
    let ack = match request.acks {
        -1 => Ack::Durable,
        0 | 1 => Ack::Written,
        _ => return refuse_all(request, ResponseError::InvalidRequiredAcks),
    };
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
                    return replicated(broker, cluster, &name, partition_id, batches, version)
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
    ProduceResponse::default().with_responses(topics)
}

/// A replicated partition's batches: proposed to its group, answered when committed (a
/// majority holds them durably), whatever the acks asked (acks=1 is answered at commit
/// too, until the leader's own durable write is reported per proposal). A node that does
/// not lead the partition answers NOT_LEADER_OR_FOLLOWER, so the client refreshes its
/// metadata and retries at the leader.
async fn replicated(
    broker: &Broker,
    cluster: &ringlog_cluster::node::Cluster,
    topic: &str,
    partition: u32,
    batches: bytes::Bytes,
    version: i16,
) -> PartitionProduceResponse {
    let max_message_bytes = broker
        .engine
        .topic(topic)
        .map_or(0, |meta| meta.config.max_message_bytes() as usize);
    let response = PartitionProduceResponse::default();
    match cluster
        .propose(topic, partition, batches, max_message_bytes)
        .await
    {
        Ok(appended) => response
            .with_base_offset(appended.offset_first)
            .with_log_append_time_ms(-1),
        Err(error) => {
            tracing::debug!(topic, partition, %error, "replicated produce failed");
            let message = (version >= 8).then(|| StrBytes::from_string(error.to_string()));
            response
                .with_error_code(errors::cluster_code(&error))
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
