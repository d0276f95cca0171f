//! `ringlog group list|describe|reset-offsets|delete`: consumer-group administration over
//! the Kafka admin API (ListGroups, DescribeGroups, OffsetFetch, ListOffsets, OffsetCommit,
//! DeleteGroups), so it works against any Kafka-compatible broker, not only ringlog.
//!
//! `describe` shows the state, the members with the partitions the leader assigned them
//! (decoded from the consumer protocol's assignment), and for every committed offset the
//! partition's end and the lag. `reset-offsets` is refused unless the group has no
//! members (its consumers would overwrite the new offsets at their next commit), as Kafka's
//! `kafka-consumer-groups.sh` refuses it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Buf;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::topic::{log_offsets, metadata, topic_name, LATEST};
use super::{AdminClient, AdminError};
use crate::cli::{GroupCommand, ResetTo};

/// NON_EMPTY_GROUP, the code Kafka's tools report for a reset of an active group.
const NON_EMPTY_GROUP: i16 = 68;
/// The first OffsetFetch version that takes a `groups` array.
const OFFSET_FETCH_GROUPS_VERSION: i16 = 8;
/// ListOffsets' "the earliest offset".
const EARLIEST: i64 = -2;

/// Runs one `ringlog group` command; returns what it prints.
pub fn run(client: &mut AdminClient, command: &GroupCommand) -> Result<String, AdminError> {
    match command {
        GroupCommand::List => list(client),
        GroupCommand::Describe { group } => describe(client, group),
        GroupCommand::ResetOffsets { group, topic, to } => reset_offsets(client, group, topic, *to),
        GroupCommand::Delete { group } => delete(client, group),
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn list(client: &mut AdminClient) -> Result<String, AdminError> {
    let version = client.version::<ListGroupsRequest>()?;
    let response = client.call(&ListGroupsRequest::default(), version)?;
    AdminError::check("list groups", response.error_code, None)?;
    let mut groups: Vec<_> = response.groups.into_iter().collect();
    groups.sort_by(|a, b| a.group_id.0.cmp(&b.group_id.0));
    let mut out = String::new();
    for group in groups {
        let state = if group.group_state.is_empty() {
            "-"
        } else {
            group.group_state.as_str()
        };
        let _ = writeln!(out, "{} {state}", group.group_id.0.as_str());
    }
    Ok(out)
}

/// A group's state and members: (member id, client id, host, assigned topic-partitions).
type Described = (
    String,
    String,
    Vec<(String, String, String, Vec<(String, i32)>)>,
);

fn describe_group(client: &mut AdminClient, group: &str) -> Result<Described, AdminError> {
    let version = client.version::<DescribeGroupsRequest>()?;
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(text(group))]);
    let response = client.call(&request, version)?;
    let context = format!("describe group {group}");
    let Some(described) = response.groups.into_iter().next() else {
        return Err(AdminError::Protocol {
            address: client.address().to_owned(),
            api: kafka_protocol::messages::ApiKey::DescribeGroups,
            version,
            detail: "no group in the response".to_owned(),
        });
    };
    AdminError::check(
        &context,
        described.error_code,
        described.error_message.as_ref(),
    )?;
    let protocol = format!(
        "{}/{}",
        described.protocol_type.as_str(),
        described.protocol_data.as_str()
    );
    let members = described
        .members
        .iter()
        .map(|member| {
            (
                member.member_id.to_string(),
                member.client_id.to_string(),
                member.client_host.to_string(),
                assigned(&member.member_assignment),
            )
        })
        .collect();
    Ok((described.group_state.to_string(), protocol, members))
}

/// The partitions in a consumer-protocol assignment (none if it is not one).
fn assigned(assignment: &bytes::Bytes) -> Vec<(String, i32)> {
    let mut bytes = assignment.clone();
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = bytes.get_i16().clamp(0, 3);
    let Ok(decoded) = ConsumerProtocolAssignment::decode(&mut bytes, version) else {
        return Vec::new();
    };
    decoded
        .assigned_partitions
        .iter()
        .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.0.to_string(), *p)))
        .collect()
}

/// Every committed offset of `group`, by topic and partition.
fn committed(
    client: &mut AdminClient,
    group: &str,
) -> Result<BTreeMap<(String, i32), i64>, AdminError> {
    let version = client.version::<OffsetFetchRequest>()?;
    let context = format!("fetch the offsets of group {group}");
    let mut offsets = BTreeMap::new();
    if version >= OFFSET_FETCH_GROUPS_VERSION {
        let request =
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(text(group)))
                .with_topics(None)]);
        let response = client.call(&request, version)?;
        for found in response.groups {
            AdminError::check(&context, found.error_code, None)?;
            for topic in found.topics {
                for p in topic.partitions {
                    offsets.insert(
                        (topic.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
    } else {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_topics(None);
        let response = client.call(&request, version)?;
        AdminError::check(&context, response.error_code, None)?;
        for topic in response.topics {
            for p in topic.partitions {
                offsets.insert(
                    (topic.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    offsets.retain(|_, offset| *offset >= 0);
    Ok(offsets)
}

fn describe(client: &mut AdminClient, group: &str) -> Result<String, AdminError> {
    let (state, protocol, members) = describe_group(client, group)?;
    let offsets = committed(client, group)?;
    let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
    let mut out = format!("group: {group}\nstate: {state}\nprotocol: {protocol}\n");
    let _ = writeln!(out, "members: {}", members.len());
    for (member_id, client_id, host, partitions) in &members {
        let list: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}-{p}")).collect();
        let _ = writeln!(
            out,
            "  {member_id} client={client_id} host={host} [{}]",
            list.join(",")
        );
        for key in partitions {
            owners.insert(key.clone(), member_id.clone());
        }
    }
    let _ = writeln!(
        out,
        "offsets:\n  {:<24} {:>9} {:>14} {:>14} {:>10}  member",
        "topic", "partition", "committed", "log-end", "lag"
    );
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in offsets.keys().chain(owners.keys()) {
        by_topic.entry(topic.clone()).or_default().push(*partition);
    }
    for (topic, mut partitions) in by_topic {
        partitions.sort_unstable();
        partitions.dedup();
        let ends = log_offsets(client, &topic, &partitions, LATEST)?;
        for (partition, end) in partitions.iter().zip(ends) {
            let key = (topic.clone(), *partition);
            let committed = offsets.get(&key).copied();
            let lag = committed.map_or_else(|| "-".to_owned(), |c| (end - c).max(0).to_string());
            let shown = committed.map_or_else(|| "-".to_owned(), |c| c.to_string());
            let owner = owners.get(&key).map_or("-", String::as_str);
            let _ = writeln!(
                out,
                "  {topic:<24} {partition:>9} {shown:>14} {end:>14} {lag:>10}  {owner}"
            );
        }
    }
    Ok(out)
}

fn reset_offsets(
    client: &mut AdminClient,
    group: &str,
    topic: &str,
    to: ResetTo,
) -> Result<String, AdminError> {
    let (state, _, members) = describe_group(client, group)?;
    if !members.is_empty() || !(state == "Empty" || state == "Dead") {
        let message = text(&format!(
            "group {group} is {state} with {} members; stop its consumers first",
            members.len()
        ));
        AdminError::check(
            &format!("reset offsets of {group}"),
            NON_EMPTY_GROUP,
            Some(&message),
        )?;
    }
    let meta = metadata(client, topic)?;
    let mut partitions: Vec<i32> = meta.partitions.iter().map(|p| p.partition_index).collect();
    partitions.sort_unstable();
    let targets = match to {
        ResetTo::Earliest => log_offsets(client, topic, &partitions, EARLIEST)?,
        ResetTo::Latest => log_offsets(client, topic, &partitions, LATEST)?,
        ResetTo::Timestamp(ms) => {
            let found = log_offsets(client, topic, &partitions, ms)?;
            // No record at or after the time: the partition's end.
            let ends = log_offsets(client, topic, &partitions, LATEST)?;
            found
                .into_iter()
                .zip(ends)
                .map(|(f, e)| if f < 0 { e } else { f })
                .collect()
        }
        ResetTo::Offset(offset) => vec![offset; partitions.len()],
    };
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(text(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .zip(&targets)
                    .map(|(&p, &offset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                    })
                    .collect(),
            )]);
    let version = client.version::<OffsetCommitRequest>()?;
    let response = client.call(&request, version)?;
    let mut out = String::new();
    for answered in response.topics {
        for p in answered.partitions {
            let context = format!("reset {group} on {topic}-{}", p.partition_index);
            AdminError::check(&context, p.error_code, None)?;
        }
    }
    for (partition, offset) in partitions.iter().zip(&targets) {
        let _ = writeln!(out, "{topic}-{partition} {offset}");
    }
    Ok(out)
}

fn delete(client: &mut AdminClient, group: &str) -> Result<String, AdminError> {
    let version = client.version::<DeleteGroupsRequest>()?;
    let request = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(text(group))]);
    let response = client.call(&request, version)?;
    for result in response.results {
        AdminError::check(&format!("delete group {group}"), result.error_code, None)?;
    }
    Ok(format!("deleted group {group}\n"))
}
