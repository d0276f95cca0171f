//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455): moving partitions of
//! a replicated topic to new replica sets, cancelling such a move, and listing the moves
//! under way.
//!
//! In a cluster each partition of a request is checked here
//! (`Cluster::check_reassignment`: the topic and partition exist, the target names 1 to
//! `REPLICATION_FACTOR_MAX` distinct nodes of the cluster, a cancellation finds a move under
//! way), then each topic's valid partitions go to the controller as one command, from any
//! node: the cluster forwards it to the node leading the controller, so a client never
//! hears NOT_CONTROLLER from a node that merely follows it. A refusal of that command
//! answers every valid partition of its topic. A partition named more than once in one
//! request is refused (INVALID_REQUEST) rather than given two targets. Node ids are checked
//! as they come off the wire (their count first, then negative and repeated ids), before
//! anything is built from them. From version 1 a request may forbid changing a partition's
//! replica count (KIP-860): a target of another size is then INVALID_REPLICATION_FACTOR,
//! the size being the target of a move under way, else the partition's replica set.
//!
//! A single node answers as a one-broker Kafka cluster (broker 0) does: an unknown topic or
//! partition is UNKNOWN_TOPIC_OR_PARTITION; a cancellation finds no move under way
//! (NO_REASSIGNMENT_IN_PROGRESS, as none ever is); a target naming any other broker is
//! INVALID_REPLICA_ASSIGNMENT, as Kafka refuses brokers it does not have; and a target of
//! broker 0 alone, where the partition already is, succeeds with nothing to move, as Kafka
//! completes such a move at once. Not NOT_CONTROLLER: the node is its own controller, and
//! that code would send a client looking for another one for ever. Its list of moves is
//! always empty.

use std::collections::HashSet;

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::{node_id_i32, Broker, NODE_ID};
use crate::errors;
use crate::handlers::topics::Refusal;
use ringlog_cluster::controller::REPLICATION_FACTOR_MAX;
use ringlog_cluster::node::{Cluster, ClusterError};

/// A partition's checked request: `Some((partition, target))` to propose, `None` when there
/// is nothing to move (a single node asked to keep a partition where it is).
type Checked = Option<(u32, Vec<u64>)>;

/// AlterPartitionReassignments: every partition answered on its own; the top-level error
/// code is always 0.
pub async fn alter(
    broker: &Broker,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    // Version 0 has no such field: it decodes as true, Kafka's meaning for version 0.
    let allow_factor_change = request.allow_replication_factor_change;
    let repeated = repeated_partitions(&request.topics);
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        responses.push(alter_topic(broker, topic, &repeated, allow_factor_change).await);
    }
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_factor_change)
        .with_error_message(None)
        .with_responses(responses)
}

/// The `(topic, partition)` pairs a request names more than once, in one topic entry or in
/// two entries of the same topic.
fn repeated_partitions(topics: &[ReassignableTopic]) -> HashSet<(&str, i32)> {
    let mut seen = HashSet::new();
    let mut repeated = HashSet::new();
    for topic in topics {
        for partition in &topic.partitions {
            let key = (topic.name.0.as_str(), partition.partition_index);
            if !seen.insert(key) {
                repeated.insert(key);
            }
        }
    }
    repeated
}

/// One topic's partitions: each checked, the valid ones proposed together.
async fn alter_topic(
    broker: &Broker,
    topic: &ReassignableTopic,
    repeated: &HashSet<(&str, i32)>,
    allow_factor_change: bool,
) -> ReassignableTopicResponse {
    let name = topic.name.0.as_str();
    let checked: Vec<(i32, Result<Checked, Refusal>)> = (topic.partitions.iter())
        .map(|partition| {
            let index = partition.partition_index;
            let outcome = if repeated.contains(&(name, index)) {
                let message = format!("partition {name}-{index} appears more than once");
                Err(Refusal(ResponseError::InvalidRequest.code(), message))
            } else {
                check_partition(broker, name, partition, allow_factor_change)
            };
            (index, outcome)
        })
        .collect();
    let targets: Vec<(u32, Vec<u64>)> = (checked.iter())
        .filter_map(|(_, outcome)| outcome.as_ref().ok()?.clone())
        .collect();
    let proposed = match &broker.cluster {
        Some(cluster) if !targets.is_empty() => {
            (cluster.reassign_partitions(name, targets).await).map_err(|error| refused(&error))
        }
        _ => Ok(()),
    };
    let partitions = (checked.into_iter())
        .map(|(index, outcome)| {
            let response = ReassignablePartitionResponse::default().with_partition_index(index);
            match outcome.and_then(|_| proposed.clone()) {
                Ok(()) => response.with_error_message(None),
                Err(Refusal(code, message)) => response
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(message))),
            }
        })
        .collect();
    ReassignableTopicResponse::default()
        .with_name(topic.name.clone())
        .with_partitions(partitions)
}

/// One partition's request, checked on this node (see the module doc).
fn check_partition(
    broker: &Broker,
    name: &str,
    partition: &ReassignablePartition,
    allow_factor_change: bool,
) -> Result<Checked, Refusal> {
    let target = partition.replicas.as_deref().map(node_ids).transpose()?;
    let Ok(index) = u32::try_from(partition.partition_index) else {
        let message = format!("unknown partition {name}-{}", partition.partition_index);
        return Err(Refusal(
            ResponseError::UnknownTopicOrPartition.code(),
            message,
        ));
    };
    let Some(cluster) = &broker.cluster else {
        return check_alone(broker, name, index, target.as_deref()).map(|()| None);
    };
    let resolved = (cluster.check_reassignment(name, index, target.clone()))
        .map_err(|error| refused(&error))?;
    if let Some(target) = &target {
        if !allow_factor_change {
            check_factor_kept(broker, cluster, (name, index), target.len())?;
        }
    }
    Ok(Some((index, resolved)))
}

/// A target's node ids as they come off the wire: 1 to `REPLICATION_FACTOR_MAX` of them
/// (counted before anything is built from them), none negative, none twice.
fn node_ids(replicas: &[BrokerId]) -> Result<Vec<u64>, Refusal> {
    let invalid =
        |message: String| Refusal(ResponseError::InvalidReplicaAssignment.code(), message);
    if replicas.is_empty() || replicas.len() > REPLICATION_FACTOR_MAX {
        return Err(invalid(format!(
            "{} replicas given: 1 to {REPLICATION_FACTOR_MAX} allowed",
            replicas.len()
        )));
    }
    let mut ids = Vec::with_capacity(replicas.len());
    for id in replicas {
        let Ok(node) = u64::try_from(id.0) else {
            return Err(invalid(format!(
                "negative broker id {} in the replicas",
                id.0
            )));
        };
        if ids.contains(&node) {
            return Err(invalid(format!(
                "broker {node} appears twice in the replicas"
            )));
        }
        ids.push(node);
    }
    Ok(ids)
}

/// A single node's answer, as a one-broker Kafka cluster's (see the module doc), with the
/// cluster's errors so both read alike.
fn check_alone(
    broker: &Broker,
    name: &str,
    partition: u32,
    target: Option<&[u64]>,
) -> Result<(), Refusal> {
    let Some(meta) = broker.engine.topic(name) else {
        let name = name.to_owned();
        return Err(refused(&ClusterError::UnknownTopic { name }));
    };
    let name = name.to_owned();
    if partition >= meta.partitions {
        return Err(refused(&ClusterError::UnknownPartition { name, partition }));
    }
    let alone = u64::try_from(NODE_ID).ok();
    match target {
        None => Err(refused(&ClusterError::NoReassignment { name, partition })),
        Some([only]) if Some(*only) == alone => Ok(()),
        Some(target) => Err(refused(&ClusterError::InvalidReplication(format!(
            "replicas {target:?}: a single ringlog node keeps each partition's only replica, \
             on broker {NODE_ID}"
        )))),
    }
}

/// With `allow_replication_factor_change` false, a target of `target_len` must keep the
/// partition's replica count: that of the target of a move under way, else of its set.
fn check_factor_kept(
    broker: &Broker,
    cluster: &Cluster,
    (name, partition): (&str, u32),
    target_len: usize,
) -> Result<(), Refusal> {
    let moving = (cluster.reassignments().into_iter())
        .find(|moving| moving.topic == name && moving.partition == partition);
    let current = match moving {
        Some(moving) => moving.replicas.len().saturating_sub(moving.removing.len()),
        None => (broker.engine.topic(name))
            .map_or(target_len, |meta| cluster.replicas(&meta, partition).len()),
    };
    if current == target_len {
        return Ok(());
    }
    Err(Refusal(
        ResponseError::InvalidReplicationFactor.code(),
        format!("the replication factor would change from {current} to {target_len}"),
    ))
}

/// A cluster error as a partition's refusal.
fn refused(error: &ClusterError) -> Refusal {
    Refusal(errors::cluster_code(error), error.to_string())
}

/// ListPartitionReassignments: the partitions under reassignment, all of them or those
/// asked for (a partition asked for that is not being moved, or does not exist, is left
/// out, as Kafka does), grouped by topic; a partition's `replicas` are the target's nodes,
/// then those leaving.
pub fn list(
    broker: &Broker,
    request: &ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let response = ListPartitionReassignmentsResponse::default().with_error_message(None);
    // A single node never moves a partition.
    let Some(cluster) = &broker.cluster else {
        return response;
    };
    let asked: Option<HashSet<(&str, i32)>> = request.topics.as_ref().map(|topics| {
        (topics.iter())
            .flat_map(|topic| {
                let name = topic.name.0.as_str();
                topic
                    .partition_indexes
                    .iter()
                    .map(move |&index| (name, index))
            })
            .collect()
    });
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for moving in cluster.reassignments() {
        // A target of the partition's own nodes (a cancelled move, a new order) adds and
        // removes nothing: Kafka completes it at once and never lists it, while the cluster
        // keeps it until the group reports back.
        if moving.adding.is_empty() && moving.removing.is_empty() {
            continue;
        }
        let index = i32::try_from(moving.partition).unwrap_or(i32::MAX);
        if asked
            .as_ref()
            .is_some_and(|asked| !asked.contains(&(&moving.topic, index)))
        {
            continue;
        }
        let ids = |nodes: &[u64]| nodes.iter().map(|&id| BrokerId(node_id_i32(id))).collect();
        let partition = OngoingPartitionReassignment::default()
            .with_partition_index(index)
            .with_replicas(ids(&moving.replicas))
            .with_adding_replicas(ids(&moving.adding))
            .with_removing_replicas(ids(&moving.removing));
        // `reassignments` lists them by topic: a topic's partitions come together.
        match topics.last_mut() {
            Some(last) if moving.topic == last.name.0.as_str() => last.partitions.push(partition),
            _ => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(StrBytes::from_string(moving.topic)))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    response.with_topics(topics)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::alter_partition_reassignments_request::ReassignablePartition;

    use super::*;

    fn ids(ids: &[i32]) -> Vec<BrokerId> {
        ids.iter().copied().map(BrokerId).collect()
    }

    #[test]
    fn node_ids_are_counted_then_refused_if_negative_or_repeated() {
        assert_eq!(
            node_ids(&ids(&[3, 1, 2])),
            Ok(vec![3, 1, 2]),
            "in the order given"
        );
        let code = ResponseError::InvalidReplicaAssignment.code();
        let too_many: Vec<i32> = (1..=16).collect();
        for bad in [&[][..], &[1, -1], &[2, 2], &too_many] {
            let refusal = node_ids(&ids(bad)).unwrap_err();
            assert_eq!(refusal.0, code, "{bad:?}");
        }
        assert!(node_ids(&ids(&[1, -7])).unwrap_err().1.contains("-7"));
        assert!(node_ids(&ids(&[4, 4])).unwrap_err().1.contains("broker 4"));
    }

    #[test]
    fn partitions_named_twice_are_found_across_entries_of_a_topic() {
        let topic = |name: &str, partitions: &[i32]| {
            ReassignableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                .with_partitions(
                    (partitions.iter())
                        .map(|&index| ReassignablePartition::default().with_partition_index(index))
                        .collect(),
                )
        };
        let topics = [
            topic("a", &[0, 1, 0]),
            topic("b", &[1]),
            topic("a", &[2, 1]),
        ];
        let repeated = repeated_partitions(&topics);
        let mut found: Vec<(&str, i32)> = repeated.into_iter().collect();
        found.sort_unstable();
        assert_eq!(found, vec![("a", 0), ("a", 1)]);
    }
}
