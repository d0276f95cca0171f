//! CreateTopics, DeleteTopics and CreatePartitions. A single node keeps one replica of
//! everything, so a replication factor other than 1 (or -1, "the default") is refused;
//! explicit replica assignments are refused likewise, except CreatePartitions' assignments
//! that name exactly this node once per new partition (what a Kafka tool sends for a
//! one-node cluster). In a cluster all three go through the controller, and a node that
//! does not lead it answers NOT_CONTROLLER (the client asks Metadata for the controller
//! and sends the request there, as it does with Kafka). A topic's replication factor is 1
//! to the cluster's size (-1: three, or the cluster's size if smaller), its partitions
//! placed by the controller; or its replicas are assigned, partition by partition, the
//! same count for each, as Kafka takes them. New partitions get the topic's factor.

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::broker::{Broker, NODE_ID};
use crate::errors;
use ringlog_cluster::controller::REPLICATION_FACTOR_MAX;
use ringlog_cluster::node::{ClusterError, Replication, DEFAULT_REPLICATION_FACTOR};
use ringlog_engine::limits::PARTITIONS_PER_TOPIC_MAX;
use ringlog_engine::topic::TopicConfig;

pub async fn create(
    broker: &Broker,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let name = topic.name.0.as_str().to_owned();
        if crate::broker::is_reserved(&name) {
            let message = format!("{name} is reserved for the cluster's metadata log");
            results.push(failed(
                result,
                ResponseError::InvalidTopicException,
                &message,
            ));
            continue;
        }
        let (partitions, config, replication) = match checked_topic(broker, &topic) {
            Ok(checked) => checked,
            Err((error, message)) => {
                results.push(failed(result, error, &message));
                continue;
            }
        };
        if let Some(cluster) = broker.replicated(&name) {
            results.push(
                create_replicated(
                    cluster,
                    result,
                    (&name, partitions, replication),
                    config,
                    request.validate_only,
                )
                .await,
            );
            continue;
        }
        if request.validate_only {
            let valid = ringlog_engine::topic::TopicName::new(name.as_str()).is_ok();
            results.push(if valid {
                result
                    .with_num_partitions(partitions as i32)
                    .with_replication_factor(1)
            } else {
                failed(
                    result,
                    ResponseError::InvalidTopicException,
                    "invalid topic name",
                )
            });
            continue;
        }
        results.push(
            match broker.engine.create_topic(&name, partitions, config).await {
                Ok(meta) => result
                    .with_topic_id(Uuid::from_bytes(meta.id))
                    .with_num_partitions(i32::try_from(meta.partitions).unwrap_or(i32::MAX))
                    .with_replication_factor(1),
                Err(error) => result
                    .with_error_code(errors::code(&error))
                    .with_error_message(Some(StrBytes::from_string(error.to_string()))),
            },
        );
    }
    let results = results
        .into_iter()
        .map(|result| created_for_version(result, version))
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}

/// Creates a replicated topic through the controller, or with `validate_only` checks what
/// creating it would check, this node leading the controller included (a request another
/// node would refuse is not reported valid), and answers the replication factor it gets.
async fn create_replicated(
    cluster: &ringlog_cluster::node::Cluster,
    result: CreatableTopicResult,
    (name, partitions, replication): (&str, u32, Replication),
    config: TopicConfig,
    validate_only: bool,
) -> CreatableTopicResult {
    let factor = factor_of(&replication, cluster.voters().len());
    let factor = i16::try_from(factor).unwrap_or(i16::MAX);
    let outcome = if validate_only {
        let leads = cluster.controller() == Some(cluster.node_id());
        let checked = if leads {
            (cluster.check_new_topic(name, partitions))
                .and_then(|_| cluster.check_placement(partitions, replication))
        } else {
            Err(ClusterError::NotController {
                leader: cluster.controller(),
            })
        };
        checked.map(|()| (None, partitions))
    } else {
        (cluster
            .create_topic(name, partitions, replication, config)
            .await)
            .map(|meta| (Some(Uuid::from_bytes(meta.id)), meta.partitions))
    };
    match outcome {
        Ok((id, partitions)) => result
            .with_topic_id(id.unwrap_or_else(Uuid::nil))
            .with_num_partitions(i32::try_from(partitions).unwrap_or(i32::MAX))
            .with_replication_factor(factor),
        Err(error) => result
            .with_error_code(errors::create_topic_code(&error))
            .with_error_message(Some(StrBytes::from_string(error.to_string()))),
    }
}

/// The replication factor a topic placed as `replication` says gets in a cluster of
/// `nodes`.
fn factor_of(replication: &Replication, nodes: usize) -> usize {
    match replication {
        Replication::Factor(Some(factor)) => *factor,
        Replication::Factor(None) => DEFAULT_REPLICATION_FACTOR.min(nodes),
        Replication::Assigned(sets) => sets.first().map_or(0, Vec::len),
    }
}

/// A creatable topic's partition count (-1: the server default), configuration (the
/// server's topic defaults with the request's keys) and placement, or why it is refused.
fn checked_topic(
    broker: &Broker,
    topic: &CreatableTopic,
) -> Result<(u32, TopicConfig, Replication), (ResponseError, String)> {
    let (partitions, replication) = if let Some(cluster) = broker.replicated(topic.name.0.as_str())
    {
        checked_replication(topic, cluster.voters().len())?
    } else {
        let alone = topic.replication_factor == -1 || topic.replication_factor == 1;
        if !alone || !topic.assignments.is_empty() {
            let message = "a single ringlog node keeps one replica".to_owned();
            return Err((ResponseError::InvalidReplicationFactor, message));
        }
        (topic.num_partitions, Replication::Factor(Some(1)))
    };
    let partitions = if partitions == -1 {
        Some(broker.config.default_partitions)
    } else {
        u32::try_from(partitions).ok().filter(|&n| n > 0)
    };
    let Some(partitions) = partitions else {
        return Err((
            ResponseError::InvalidPartitions,
            "partitions must be >= 1".to_owned(),
        ));
    };
    let factor = broker
        .replicated(topic.name.0.as_str())
        .map(|cluster| factor_of(&replication, cluster.voters().len()));
    let mut config = broker.config.topic_defaults.clone();
    let pairs: Vec<(&str, &str)> = topic
        .configs
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.value.as_ref()?.as_str())))
        .collect();
    config
        .apply_all(pairs)
        .map_err(|error| (ResponseError::InvalidConfig, error.to_string()))?;
    check_min_insync(&config, factor)?;
    Ok((partitions, config, replication))
}

/// A replicated topic's partition count (-1: the server default) and placement, as Kafka
/// takes them: a replication factor (-1: the default) and a count, or assignments (one
/// per partition, numbered from 0, each naming its replicas) with both left at -1.
fn checked_replication(
    topic: &CreatableTopic,
    nodes: usize,
) -> Result<(i32, Replication), (ResponseError, String)> {
    if topic.assignments.is_empty() {
        let factor = match topic.replication_factor {
            -1 => None,
            asked => Some(usize::try_from(asked).unwrap_or(0)),
        };
        let most = nodes.min(REPLICATION_FACTOR_MAX);
        if factor.is_some_and(|factor| factor == 0 || factor > most) {
            let message = format!(
                "replication factor {} is out of range 1..={most} (the cluster's nodes, at \
                 most {REPLICATION_FACTOR_MAX})",
                topic.replication_factor
            );
            return Err((ResponseError::InvalidReplicationFactor, message));
        }
        return Ok((topic.num_partitions, Replication::Factor(factor)));
    }
    if topic.num_partitions != -1 || topic.replication_factor != -1 {
        let message = "with replica assignments, the partition count and replication factor \
                       must be -1"
            .to_owned();
        return Err((ResponseError::InvalidRequest, message));
    }
    let invalid = |message: String| Err((ResponseError::InvalidReplicaAssignment, message));
    let mut sets: Vec<Option<Vec<u64>>> = vec![None; topic.assignments.len()];
    for assignment in &topic.assignments {
        let index = usize::try_from(assignment.partition_index).ok();
        let Some(slot) = index.and_then(|index| sets.get_mut(index)) else {
            return invalid(format!(
                "partition {} of {} assigned: partitions are numbered from 0",
                assignment.partition_index,
                topic.assignments.len()
            ));
        };
        if slot.is_some() {
            return invalid(format!(
                "partition {} assigned twice",
                assignment.partition_index
            ));
        }
        let ids = assignment.broker_ids.iter().map(|id| u64::try_from(id.0));
        let Ok(ids) = ids.collect::<Result<Vec<u64>, _>>() else {
            return invalid(format!(
                "a negative broker id in {:?}",
                assignment.broker_ids
            ));
        };
        *slot = Some(ids);
    }
    let sets: Vec<Vec<u64>> = sets.into_iter().flatten().collect();
    let count = i32::try_from(sets.len()).unwrap_or(i32::MAX);
    Ok((count, Replication::Assigned(sets)))
}

/// In a cluster, `min.insync.replicas` above the replication factor would refuse every
/// acks=all produce: refused at creation (INVALID_CONFIG). A single node is its partitions'
/// only replica and ignores the setting.
pub(crate) fn check_min_insync(
    config: &TopicConfig,
    factor: Option<usize>,
) -> Result<(), (ResponseError, String)> {
    let min_insync = config.min_insync_replicas();
    match factor {
        Some(factor) if min_insync as usize > factor => Err((
            ResponseError::InvalidConfig,
            format!(
                "min.insync.replicas={min_insync} is above the replication factor {factor}: \
                 no produce with acks=all could succeed"
            ),
        )),
        _ => Ok(()),
    }
}

/// Clears the fields `version` does not have (counts from 5, topic ids from 7).
fn created_for_version(result: CreatableTopicResult, version: i16) -> CreatableTopicResult {
    let result = if version < 7 {
        result.with_topic_id(Uuid::nil())
    } else {
        result
    };
    if version >= 5 {
        return result;
    }
    result.with_num_partitions(-1).with_replication_factor(-1)
}

fn failed(
    result: CreatableTopicResult,
    error: ResponseError,
    message: &str,
) -> CreatableTopicResult {
    result
        .with_error_code(error.code())
        .with_error_message(Some(StrBytes::from_string(message.to_owned())))
}

pub async fn delete(
    broker: &Broker,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // Versions before 6 name the topics in `topic_names`; 6 and later in `topics`.
    let names: Vec<Option<TopicName>> = if version >= 6 {
        request.topics.into_iter().map(|topic| topic.name).collect()
    } else {
        request.topic_names.into_iter().map(Some).collect()
    };
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let Some(name) = name else {
            let code = ResponseError::UnsupportedVersion.code();
            results.push(DeletableTopicResult::default().with_error_code(code));
            continue;
        };
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        if crate::group::is_internal(name.0.as_str()) {
            // The group coordinator's own log: deleting it would lose every group's offsets.
            let code = ResponseError::InvalidTopicException.code();
            let message = (version >= 5).then(|| StrBytes::from_static_str("internal topic"));
            results.push(result.with_error_code(code).with_error_message(message));
            continue;
        }
        let deleted = match broker.replicated(name.0.as_str()) {
            Some(cluster) => (cluster.delete_topic(name.0.as_str()).await)
                .map_err(|error| (errors::create_topic_code(&error), error.to_string())),
            None => (broker.engine.delete_topic(name.0.as_str()).await)
                .map_err(|error| (errors::code(&error), error.to_string())),
        };
        results.push(match deleted {
            Ok(meta) if version >= 6 => result.with_topic_id(Uuid::from_bytes(meta.id)),
            Ok(_) => result,
            Err((code, message)) => {
                // Error messages are in responses from version 5 on.
                let message = (version >= 5).then(|| StrBytes::from_string(message));
                result.with_error_code(code).with_error_message(message)
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}

/// CreatePartitions: raises each topic's partition count to the requested total.
pub async fn create_partitions(
    broker: &Broker,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let twice = request
            .topics
            .iter()
            .filter(|other| other.name == topic.name)
            .count()
            > 1;
        let outcome = if twice {
            Err(Refusal(
                ResponseError::InvalidRequest.code(),
                format!(
                    "topic {} appears more than once in the request",
                    *topic.name
                ),
            ))
        } else if crate::group::is_internal(topic.name.0.as_str()) {
            // Groups are placed by the partition count: a new count would move them.
            Err(Refusal(
                ResponseError::InvalidTopicException.code(),
                "the internal topic's partition count is fixed".to_owned(),
            ))
        } else if let Some(cluster) = broker.replicated(topic.name.0.as_str()) {
            add_replicated_partitions(cluster, topic, request.validate_only).await
        } else {
            add_partitions(broker, topic, request.validate_only).await
        };
        results.push(match outcome {
            Ok(()) => result.with_error_message(None),
            Err(Refusal(code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// An error code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal(pub(crate) i16, pub(crate) String);

async fn add_partitions(
    broker: &Broker,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), Refusal> {
    let name = topic.name.0.as_str();
    let Some(meta) = broker.engine.topic(name) else {
        let code = ResponseError::UnknownTopicOrPartition.code();
        return Err(Refusal(code, format!("topic {name} does not exist")));
    };
    let count = check_partition_count(meta.partitions, topic.count)?;
    check_assignments(topic, count - meta.partitions, &[BrokerId(NODE_ID)])?;
    if validate_only {
        return Ok(());
    }
    match broker.engine.add_partitions(name, count).await {
        Ok(_) => Ok(()),
        Err(error) => Err(Refusal(errors::code(&error), error.to_string())),
    }
}

/// CreatePartitions of a replicated topic: through the controller, which this node must
/// lead (with `validate_only` too: a request another node would refuse is not valid).
async fn add_replicated_partitions(
    cluster: &ringlog_cluster::node::Cluster,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), Refusal> {
    let name = topic.name.0.as_str();
    let refused =
        |error: ClusterError| Refusal(errors::create_topic_code(&error), error.to_string());
    let current = cluster.partition_count(name).ok_or_else(|| {
        refused(ClusterError::UnknownTopic {
            name: name.to_owned(),
        })
    })?;
    let count = check_partition_count(current, topic.count)?;
    let assigned = assigned_replicas(topic, count - current)?;
    if validate_only {
        if cluster.controller() != Some(cluster.node_id()) {
            let leader = cluster.controller();
            return Err(refused(ClusterError::NotController { leader }));
        }
        return cluster
            .check_create_partitions(name, count)
            .map_err(refused);
    }
    cluster
        .create_partitions(name, count, assigned)
        .await
        .map(|_| ())
        .map_err(refused)
}

/// A replicated topic's new partitions' assignments, if given: one per new partition,
/// each naming its replicas (the cluster checks they are its nodes, and as many as the
/// topic's other partitions have).
fn assigned_replicas(
    topic: &CreatePartitionsTopic,
    added: u32,
) -> Result<Option<Vec<Vec<u64>>>, Refusal> {
    let Some(assignments) = &topic.assignments else {
        return Ok(None);
    };
    let code = ResponseError::InvalidReplicaAssignment.code();
    if assignments.len() != added as usize {
        let message = format!(
            "{} assignments given for {added} new partitions",
            assignments.len()
        );
        return Err(Refusal(code, message));
    }
    let sets = assignments.iter().map(|assignment| {
        let ids = assignment.broker_ids.iter().map(|id| u64::try_from(id.0));
        ids.collect::<Result<Vec<u64>, _>>().map_err(|_| {
            Refusal(
                code,
                format!("a negative broker id in {:?}", assignment.broker_ids),
            )
        })
    });
    Ok(Some(sets.collect::<Result<Vec<_>, _>>()?))
}

/// The new partition count, if it is larger than `current` and within the limit.
fn check_partition_count(current: u32, requested: i32) -> Result<u32, Refusal> {
    let invalid = |message| Err(Refusal(ResponseError::InvalidPartitions.code(), message));
    let Some(count) = u32::try_from(requested)
        .ok()
        .filter(|&count| count <= PARTITIONS_PER_TOPIC_MAX)
    else {
        return invalid(format!(
            "{requested} partitions is out of range 1..={PARTITIONS_PER_TOPIC_MAX}"
        ));
    };
    if count <= current {
        return invalid(format!(
            "topic has {current} partitions; the new count {count} must be larger"
        ));
    }
    Ok(count)
}

/// Assignments, when given, name `replicas` (sorted), in any order, for each new partition
/// (a single node: itself alone, what a Kafka tool sends for a one-node cluster).
fn check_assignments(
    topic: &CreatePartitionsTopic,
    added: u32,
    replicas: &[BrokerId],
) -> Result<(), Refusal> {
    let Some(sets) = assigned_replicas(topic, added)? else {
        return Ok(());
    };
    let mut wanted: Vec<u64> = (replicas.iter())
        .filter_map(|id| u64::try_from(id.0).ok())
        .collect();
    wanted.sort_unstable();
    let as_placed = sets.into_iter().all(|mut named| {
        named.sort_unstable();
        named == wanted
    });
    if !as_placed {
        let named: Vec<i32> = replicas.iter().map(|id| id.0).collect();
        let message = format!("every partition has one replica on each of brokers {named:?}");
        return Err(Refusal(
            ResponseError::InvalidReplicaAssignment.code(),
            message,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment;

    use super::*;

    #[test]
    fn a_cluster_takes_a_factor_within_its_size_or_assignments_alone() {
        use kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment;
        let topic = |partitions: i32, factor: i16| {
            CreatableTopic::default()
                .with_num_partitions(partitions)
                .with_replication_factor(factor)
        };
        assert_eq!(
            checked_replication(&topic(4, -1), 3),
            Ok((4, Replication::Factor(None)))
        );
        assert_eq!(
            checked_replication(&topic(-1, 2), 3),
            Ok((-1, Replication::Factor(Some(2))))
        );
        for (factor, nodes) in [(0, 3), (4, 3), (-2, 3), (16, 20)] {
            let (code, _) = checked_replication(&topic(1, factor), nodes).unwrap_err();
            assert_eq!(code, ResponseError::InvalidReplicationFactor, "{factor}");
        }
        assert!(checked_replication(&topic(1, 15), 20).is_ok());
        let assign = |index: i32, ids: &[i32]| {
            CreatableReplicaAssignment::default()
                .with_partition_index(index)
                .with_broker_ids(ids.iter().map(|&id| BrokerId(id)).collect())
        };
        let assigned = topic(-1, -1).with_assignments(vec![assign(1, &[3, 1]), assign(0, &[2, 3])]);
        assert_eq!(
            checked_replication(&assigned, 3),
            Ok((2, Replication::Assigned(vec![vec![2, 3], vec![3, 1]]))),
            "in partition order, each set in the order given"
        );
        let with_count = topic(2, -1).with_assignments(assigned.assignments.clone());
        let (code, _) = checked_replication(&with_count, 3).unwrap_err();
        assert_eq!(code, ResponseError::InvalidRequest);
        for bad in [
            vec![assign(0, &[1]), assign(0, &[2])],
            vec![assign(0, &[1]), assign(2, &[2])],
            vec![assign(0, &[-1])],
        ] {
            let (code, _) =
                checked_replication(&topic(-1, -1).with_assignments(bad), 3).unwrap_err();
            assert_eq!(code, ResponseError::InvalidReplicaAssignment);
        }
    }

    #[test]
    fn min_insync_replicas_may_not_exceed_a_clusters_replication_factor() {
        let config = |n| {
            TopicConfig::builder()
                .min_insync_replicas(n)
                .build()
                .unwrap()
        };
        assert!(check_min_insync(&config(3), Some(3)).is_ok());
        assert!(check_min_insync(&config(2), Some(3)).is_ok());
        let (code, message) = check_min_insync(&config(4), Some(3)).unwrap_err();
        assert_eq!(code, ResponseError::InvalidConfig);
        assert!(message.contains("min.insync.replicas=4"), "{message}");
        assert!(
            check_min_insync(&config(4), None).is_ok(),
            "a single node ignores it"
        );
    }

    #[test]
    fn partition_counts_must_grow_and_stay_within_the_limit() {
        assert_eq!(check_partition_count(3, 5), Ok(5));
        let code = ResponseError::InvalidPartitions.code();
        for (current, requested) in [(3, 3), (3, 2), (1, 0), (1, -1), (1, 100_001)] {
            let refusal = check_partition_count(current, requested).unwrap_err();
            assert_eq!(refusal.0, code, "{current} -> {requested}");
            assert!(refusal.1.contains(&requested.to_string()), "{}", refusal.1);
        }
    }

    #[test]
    fn assignments_must_name_the_replicas_once_per_new_partition() {
        let on = |ids: &[i32]| {
            CreatePartitionsAssignment::default()
                .with_broker_ids(ids.iter().copied().map(BrokerId).collect())
        };
        let topic = |assignments| CreatePartitionsTopic::default().with_assignments(assignments);
        let alone = [BrokerId(0)];
        assert!(check_assignments(&topic(None), 2, &alone).is_ok());
        assert!(check_assignments(&topic(Some(vec![on(&[0]), on(&[0])])), 2, &alone).is_ok());
        let code = ResponseError::InvalidReplicaAssignment.code();
        let short = check_assignments(&topic(Some(vec![on(&[0])])), 2, &alone).unwrap_err();
        assert_eq!(short.0, code);
        let elsewhere = check_assignments(&topic(Some(vec![on(&[1])])), 1, &alone).unwrap_err();
        assert_eq!(elsewhere.0, code);
        let replicated = check_assignments(&topic(Some(vec![on(&[0, 1])])), 1, &alone).unwrap_err();
        assert_eq!(replicated.0, code);
        // A cluster's: every node, in any order; a subset or a repeat is refused.
        let cluster = [BrokerId(1), BrokerId(2), BrokerId(3)];
        assert!(check_assignments(&topic(Some(vec![on(&[3, 1, 2])])), 1, &cluster).is_ok());
        for wrong in [&[1, 2][..], &[1, 2, 2], &[1, 2, 3, 4]] {
            let refusal = check_assignments(&topic(Some(vec![on(wrong)])), 1, &cluster);
            assert_eq!(refusal.unwrap_err().0, code, "{wrong:?}");
        }
    }
}
