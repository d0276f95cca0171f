//! Metadata: the one broker (this node, at its advertised address), and the topics asked
//! for (all when none are named), each partition led by this node. Missing topics are
//! created when the request and the server both allow it. The top-level error of version
//! 13 (KIP-1102: a broker telling the client to bootstrap again) is always NONE.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_engine::topic::TopicMeta;
use uuid::Uuid;

use crate::broker::{node_id_i32, Broker, NODE_ID};

pub async fn handle(broker: &Broker, request: MetadataRequest, version: i16) -> MetadataResponse {
    let nodes = brokers(broker);
    // Before version 4 a Metadata request always allows auto-creation.
    let allow_create = version < 4 || request.allow_auto_topic_creation;
    let topics = match request.topics {
        None => (broker.engine.topics().iter())
            .map(|meta| topic_entry(broker, meta))
            .collect(),
        Some(requested) => {
            let mut entries = Vec::with_capacity(requested.len());
            for topic in requested {
                entries
                    .push(requested_topic(broker, topic.name, topic.topic_id, allow_create).await);
            }
            entries
        }
    };
    let cluster_id = (version >= 2).then(|| StrBytes::from_string(broker.cluster_id.clone()));
    let controller = match &broker.cluster {
        Some(cluster) => cluster.controller().map_or(-1, node_id_i32),
        None => NODE_ID,
    };
    MetadataResponse::default()
        .with_brokers(nodes)
        .with_cluster_id(cluster_id)
        .with_controller_id(BrokerId(controller))
        .with_topics(
            topics
                .into_iter()
                .map(|topic| for_version(topic, version))
                .collect(),
        )
}

async fn requested_topic(
    broker: &Broker,
    name: Option<TopicName>,
    id: Uuid,
    allow_create: bool,
) -> MetadataResponseTopic {
    let Some(name) = name else {
        let found = broker
            .engine
            .topics()
            .into_iter()
            .find(|meta| Uuid::from_bytes(meta.id) == id);
        return match found {
            Some(meta) => topic_entry(broker, &meta),
            None => MetadataResponseTopic::default()
                .with_topic_id(id)
                .with_error_code(ResponseError::UnknownTopicId.code()),
        };
    };
    let text = name.0.as_str().to_owned();
    if ringlog_engine::topic::TopicName::new(text.as_str()).is_err() {
        return MetadataResponseTopic::default()
            .with_name(Some(name))
            .with_error_code(ResponseError::InvalidTopicException.code());
    }
    let meta = if allow_create {
        broker.topic_or_create(&text).await
    } else {
        broker.engine.topic(&text)
    };
    match meta {
        Some(meta) => topic_entry(broker, &meta),
        None => MetadataResponseTopic::default()
            .with_name(Some(name))
            .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
    }
}

/// Clears the fields `version` does not have (topic ids from 10, leader epochs from 7).
fn for_version(topic: MetadataResponseTopic, version: i16) -> MetadataResponseTopic {
    let topic = if version < 10 {
        topic.with_topic_id(Uuid::nil())
    } else {
        topic
    };
    if version >= 7 {
        return topic;
    }
    let partitions = topic
        .partitions
        .iter()
        .cloned()
        .map(|p| p.with_leader_epoch(-1))
        .collect();
    topic.with_partitions(partitions)
}

/// The brokers clients may connect to: this node alone, or the live nodes of the cluster
/// (itself, and every peer connected to it now: `Cluster::live_brokers`), at their
/// advertised Kafka addresses. A killed node drops out within milliseconds, so clients
/// stop choosing it for their next request (kafka-python 3.0.12 raises out of `poll` when
/// the node it picks for a metadata refresh refuses the connection).
fn brokers(broker: &Broker) -> Vec<MetadataResponseBroker> {
    let entry = |id: i32, host: String, port: u16| {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(host))
            .with_port(i32::from(port))
    };
    if let Some(cluster) = &broker.cluster {
        (cluster.live_brokers().into_iter())
            .map(|(id, (host, port))| entry(node_id_i32(id), host, port))
            .collect()
    } else {
        let address = broker.config.advertised_listener;
        vec![entry(NODE_ID, address.ip().to_string(), address.port())]
    }
}

fn topic_entry(broker: &Broker, meta: &TopicMeta) -> MetadataResponseTopic {
    let live = broker
        .cluster
        .as_ref()
        .map(ringlog_cluster::node::Cluster::live_brokers);
    let partitions = (0..meta.partitions)
        .map(|partition| {
            let entry = MetadataResponsePartition::default()
                .with_partition_index(i32::try_from(partition).unwrap_or(i32::MAX));
            let Some(cluster) = broker.replicated(meta.name.as_str()) else {
                return entry
                    .with_leader_id(BrokerId(broker.node_id()))
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![BrokerId(broker.node_id())])
                    .with_isr_nodes(vec![BrokerId(broker.node_id())]);
            };
            let ids = |ids: &[u64]| -> Vec<BrokerId> {
                ids.iter().map(|&id| BrokerId(node_id_i32(id))).collect()
            };
            let replicas = cluster.replicas(meta, partition);
            let is_live = |id: &u64| live.as_ref().is_some_and(|live| live.contains_key(id));
            let offline: Vec<u64> = (replicas.iter().copied())
                .filter(|id| !is_live(id))
                .collect();
            let status = cluster
                .status(meta.name.as_str(), partition)
                .unwrap_or_default();
            let entry = entry
                .with_leader_epoch(i32::try_from(status.term).unwrap_or(i32::MAX))
                .with_replica_nodes(ids(&replicas))
                .with_isr_nodes(ids(&status.in_sync))
                .with_offline_replicas(ids(&offline));
            match status.leader {
                Some(leader) if is_live(&leader) => {
                    entry.with_leader_id(BrokerId(node_id_i32(leader)))
                }
                // During an election, or while the leader this node knows of is gone (its
                // connections closed): clients wait and ask again.
                _ => entry
                    .with_leader_id(BrokerId(-1))
                    .with_error_code(ResponseError::LeaderNotAvailable.code()),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(
            meta.name.as_str().to_owned(),
        ))))
        .with_topic_id(Uuid::from_bytes(meta.id))
        .with_is_internal(crate::group::is_internal(meta.name.as_str()))
        .with_partitions(partitions)
}
