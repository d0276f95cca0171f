//! Committed offsets: OffsetCommit, OffsetFetch and OffsetDelete, on the shard owning the
//! group. A commit is answered only once its records are durable in
//! `__consumer_offsets`; what OffsetFetch returns is what was made durable.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Buf;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::group::coordinator::{now_ms, offset_key, offset_record, GroupRecord};
use crate::group::records::OffsetValue;
use crate::group::state::{Group, GroupState};
use crate::group::{on_coordinator, GROUP_STRING_BYTES_MAX};

/// Kafka's `offset.metadata.max.bytes`.
const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// One partition's commit, checked or refused before the coordinator sees it.
type Commit = (String, i32, Result<OffsetValue, ResponseError>);

pub async fn commit(broker: &Broker, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.map(|id| id.to_string());
    let generation = request.generation_id_or_member_epoch;
    let mut commits = check_commits(broker, request.topics);
    if group_id.is_empty() || group_id.len() > GROUP_STRING_BYTES_MAX {
        for (_, _, checked) in &mut commits {
            *checked = Err(ResponseError::InvalidGroupId);
        }
    }
    let asked: Vec<(String, i32)> = commits.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
    // A manual commit creates its group, but only if something in it can be committed.
    let create = generation < 0 && commits.iter().any(|(_, _, checked)| checked.is_ok());
    let answered = on_coordinator(broker, &group_id.clone(), move |coordinator| async move {
        let allowed = coordinator.with_group(&group_id, create, |group| {
            group.check_commit(
                &member_id,
                instance_id.as_deref(),
                generation,
                Instant::now(),
            )
        });
        let allowed = allowed.unwrap_or(Err(ResponseError::UnknownMemberId));
        let records: Vec<GroupRecord> = commits
            .iter()
            .filter_map(|(topic, partition, checked)| {
                let value = checked.as_ref().ok()?;
                Some((
                    offset_key(&group_id, topic, *partition),
                    Some(offset_record(value)),
                ))
            })
            .collect();
        let written = match allowed {
            Ok(()) => coordinator.persist(&group_id, records).await,
            Err(error) => Err(error),
        };
        commits
            .into_iter()
            .map(|(topic, partition, checked)| {
                let error = match (&written, checked) {
                    (_, Err(error)) => error.code(),
                    (Err(error), _) => error.code(),
                    (Ok(()), Ok(_)) => 0,
                };
                (topic, partition, error)
            })
            .collect::<Vec<_>>()
    })
    .await;
    // A coordinator that could not be reached fails every partition alike.
    let answered = answered.unwrap_or_else(|error| {
        asked
            .into_iter()
            .map(|(topic, partition)| (topic, partition, error.code()))
            .collect()
    });
    let mut topics: BTreeMap<String, Vec<OffsetCommitResponsePartition>> = BTreeMap::new();
    for (topic, partition, error) in answered {
        topics.entry(topic).or_default().push(
            OffsetCommitResponsePartition::default()
                .with_partition_index(partition)
                .with_error_code(error),
        );
    }
    OffsetCommitResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(name, partitions)| {
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(partitions)
            })
            .collect(),
    )
}

/// Each partition's commit as an offset record, or the error that refuses it (a topic or
/// partition that does not exist, metadata too large).
fn check_commits(broker: &Broker, topics: Vec<OffsetCommitRequestTopic>) -> Vec<Commit> {
    let now = now_ms();
    let mut commits = Vec::new();
    for topic in topics {
        let name = topic.name.0.to_string();
        let partitions = broker.engine.topic(&name).map(|meta| meta.partitions);
        for partition in topic.partitions {
            let index = partition.partition_index;
            let known =
                partitions.is_some_and(|count| u32::try_from(index).is_ok_and(|i| i < count));
            let metadata = partition
                .committed_metadata
                .map(|m| m.to_string())
                .unwrap_or_default();
            let checked = if !known || crate::group::is_internal(&name) {
                Err(ResponseError::UnknownTopicOrPartition)
            } else if metadata.len() > OFFSET_METADATA_BYTES_MAX {
                Err(ResponseError::OffsetMetadataTooLarge)
            } else {
                Ok(OffsetValue {
                    offset: partition.committed_offset,
                    leader_epoch: partition.committed_leader_epoch,
                    metadata,
                    commit_timestamp_ms: now,
                })
            };
            commits.push((name.clone(), index, checked));
        }
    }
    commits
}

/// What one group's fetch asks: `None` for every committed offset.
type Wanted = Option<Vec<(String, Vec<i32>)>>;
/// Committed offsets found: topic, partition, offset value (`None`: nothing committed).
type Found = Vec<(String, i32, Option<OffsetValue>)>;

async fn fetch_group(
    broker: &Broker,
    group_id: String,
    wanted: Wanted,
) -> Result<Found, ResponseError> {
    on_coordinator(broker, &group_id.clone(), move |coordinator| async move {
        let found =
            coordinator.with_group(&group_id, false, |group| lookup(group, wanted.as_ref()));
        found.unwrap_or_else(|| {
            wanted
                .unwrap_or_default()
                .into_iter()
                .flat_map(|(topic, partitions)| {
                    partitions
                        .into_iter()
                        .map(move |p| (topic.clone(), p, None))
                })
                .collect()
        })
    })
    .await
}

fn lookup(group: &Group, wanted: Option<&Vec<(String, Vec<i32>)>>) -> Found {
    match wanted {
        None => group
            .offsets
            .iter()
            .map(|((topic, partition), value)| (topic.clone(), *partition, Some(value.clone())))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions.iter().map(|partition| {
                    let value = group.offsets.get(&(topic.clone(), *partition)).cloned();
                    (topic.clone(), *partition, value)
                })
            })
            .collect(),
    }
}

pub async fn fetch(
    broker: &Broker,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version < 8 {
        let wanted = request.topics.map(|topics| {
            let topics = topics.into_iter().map(|t| (t.name, t.partition_indexes));
            wanted_topics(topics)
        });
        let group_id = request.group_id.0.to_string();
        let (error, found) = fetch_or_error(broker, group_id, wanted).await;
        let topics = group_by_topic(found, |partition, value| {
            let (offset, epoch, metadata) = committed(value);
            OffsetFetchResponsePartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(epoch)
                .with_metadata(metadata)
        })
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        });
        return OffsetFetchResponse::default()
            .with_topics(topics.collect())
            .with_error_code(error);
    }
    let mut groups = Vec::with_capacity(request.groups.len());
    for group in request.groups {
        let wanted = group.topics.map(|topics| {
            let topics = topics.into_iter().map(|t| (t.name, t.partition_indexes));
            wanted_topics(topics)
        });
        let group_id = group.group_id.0.to_string();
        let (error, found) = fetch_or_error(broker, group_id, wanted).await;
        let topics = group_by_topic(found, |partition, value| {
            let (offset, epoch, metadata) = committed(value);
            OffsetFetchResponsePartitions::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(epoch)
                .with_metadata(metadata)
        })
        .map(|(name, partitions)| {
            OffsetFetchResponseTopics::default()
                .with_name(name)
                .with_partitions(partitions)
        });
        groups.push(
            OffsetFetchResponseGroup::default()
                .with_group_id(group.group_id)
                .with_topics(topics.collect())
                .with_error_code(error),
        );
    }
    OffsetFetchResponse::default().with_groups(groups)
}

/// The topics and partitions a fetch names, as the coordinator takes them.
fn wanted_topics(topics: impl Iterator<Item = (TopicName, Vec<i32>)>) -> Vec<(String, Vec<i32>)> {
    topics
        .map(|(name, partitions)| (name.0.to_string(), partitions))
        .collect()
}

/// The group's committed offsets, or an error code and nothing.
async fn fetch_or_error(broker: &Broker, group_id: String, wanted: Wanted) -> (i16, Found) {
    match fetch_group(broker, group_id, wanted).await {
        Ok(found) => (0, found),
        Err(error) => (error.code(), Vec::new()),
    }
}

/// A committed offset's fields as OffsetFetch returns them (`-1`s when none).
fn committed(value: Option<OffsetValue>) -> (i64, i32, Option<StrBytes>) {
    match value {
        Some(value) => (
            value.offset,
            value.leader_epoch,
            Some(StrBytes::from_string(value.metadata)),
        ),
        None => (-1, -1, Some(StrBytes::default())),
    }
}

/// The found offsets as `partition` builds them, by topic name.
fn group_by_topic<P>(
    found: Found,
    mut partition: impl FnMut(i32, Option<OffsetValue>) -> P,
) -> impl Iterator<Item = (TopicName, Vec<P>)> {
    let mut topics: BTreeMap<String, Vec<P>> = BTreeMap::new();
    for (topic, index, value) in found {
        topics
            .entry(topic)
            .or_default()
            .push(partition(index, value));
    }
    topics
        .into_iter()
        .map(|(name, partitions)| (TopicName(StrBytes::from_string(name)), partitions))
}

pub async fn delete(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.to_string();
    let asked: Vec<(String, Vec<i32>)> = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t.partitions.iter().map(|p| p.partition_index).collect();
            (t.name.0.to_string(), partitions)
        })
        .collect();
    let answered = on_coordinator(broker, &group_id.clone(), {
        let asked = asked.clone();
        move |coordinator| async move {
            let plan = coordinator.with_group(&group_id, false, |group| {
                asked
                    .iter()
                    .map(|(topic, partitions)| {
                        let refused = (group.state() != GroupState::Empty
                            && subscribed(group, topic))
                        .then_some(ResponseError::GroupSubscribedToTopic);
                        (topic.clone(), partitions.clone(), refused)
                    })
                    .collect::<Vec<_>>()
            });
            let Some(plan) = plan else {
                return Err(ResponseError::GroupIdNotFound);
            };
            let records: Vec<GroupRecord> = plan
                .iter()
                .filter(|(_, _, refused)| refused.is_none())
                .flat_map(|(topic, partitions, _)| {
                    partitions
                        .iter()
                        .map(|p| (offset_key(&group_id, topic, *p), None))
                })
                .collect();
            coordinator.persist(&group_id, records).await?;
            Ok(plan)
        }
    })
    .await;
    let plan = match answered {
        Ok(Ok(plan)) => plan,
        Ok(Err(error)) | Err(error) => {
            return OffsetDeleteResponse::default().with_error_code(error.code())
        }
    };
    let topics = plan
        .into_iter()
        .map(|(topic, partitions, refused)| {
            let partitions = partitions
                .into_iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(refused.map_or(0, |error| error.code()))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}

/// Whether any member of a consumer group subscribes to `topic`. A subscription that does
/// not decode counts as subscribing (refusing a delete is the safe side).
fn subscribed(group: &Group, topic: &str) -> bool {
    group.members().any(|(_, member)| {
        let mut metadata = member.metadata(group.protocol());
        if metadata.len() < 2 {
            return true;
        }
        let version = metadata.get_i16();
        match ConsumerProtocolSubscription::decode(&mut metadata, version.clamp(0, 3)) {
            Ok(subscription) => subscription.topics.iter().any(|t| t.as_str() == topic),
            Err(_) => true,
        }
    })
}
