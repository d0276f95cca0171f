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
    ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest,
    GroupId, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::topic::{
    cluster_view, host_port, metadata, offsets_at_leaders, topic_name, CONTROLLER_ATTEMPTS,
    CONTROLLER_RETRY, LATEST,
};
use super::{AdminClient, AdminError};
use crate::cli::{GroupCommand, ResetTo};

/// The first FindCoordinator version that takes `coordinator_keys`.
const FIND_COORDINATOR_KEYS_VERSION: i16 = 4;
/// NON_EMPTY_GROUP, the code Kafka's tools report for a reset of an active group.
const NON_EMPTY_GROUP: i16 = 68;
/// The first OffsetFetch version that takes a `groups` array.
const OFFSET_FETCH_GROUPS_VERSION: i16 = 8;
/// ListOffsets' "the earliest offset".
const EARLIEST: i64 = -2;

/// Runs one `ringlog group` command; returns what it prints.
pub fn run(client: &mut AdminClient, command: &GroupCommand) -> Result<String, AdminError> {
    match command {
        GroupCommand::List => list_everywhere(client),
        GroupCommand::Describe { group } => {
            at_coordinator(client, group, |client| describe(client, group))
        }
        GroupCommand::ResetOffsets { group, topic, to } => {
            at_coordinator(client, group, |c| reset_offsets(c, group, topic, *to))
        }
        GroupCommand::Delete { group } => at_coordinator(client, group, |c| delete(c, group)),
    }
}

/// Coordinator errors a request is sent again after (the group's coordinator moved, or is
/// loading the group): NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS,
/// COORDINATOR_NOT_AVAILABLE.
const COORDINATOR_MOVED: [i16; 3] = [16, 14, 15];

/// Runs `request` at `group`'s coordinator, as Kafka's admin clients send a group's
/// requests: in a cluster, the node FindCoordinator names (connected to for the purpose),
/// asked again while the coordinator moves or loads; alone, the broker `client` is
/// connected to.
fn at_coordinator(
    client: &mut AdminClient,
    group: &str,
    mut request: impl FnMut(&mut AdminClient) -> Result<String, AdminError>,
) -> Result<String, AdminError> {
    let mut attempt = 1;
    loop {
        let answered = match coordinator(client, group) {
            Ok(Some(address)) => AdminClient::connect(&address).and_then(|mut at| request(&mut at)),
            Ok(None) => request(client),
            Err(error) => Err(error),
        };
        match answered {
            Err(AdminError::Kafka { code, .. })
                if COORDINATOR_MOVED.contains(&code) && attempt < CONTROLLER_ATTEMPTS =>
            {
                attempt += 1;
                std::thread::sleep(CONTROLLER_RETRY);
            }
            other => return other,
        }
    }
}

/// The address of `group`'s coordinator if the connected broker is one of a cluster's;
/// `None` alone.
fn coordinator(client: &mut AdminClient, group: &str) -> Result<Option<String>, AdminError> {
    if cluster_view(client)?.brokers.len() <= 1 {
        return Ok(None);
    }
    let version = client.version::<FindCoordinatorRequest>()?;
    let request = if version >= FIND_COORDINATOR_KEYS_VERSION {
        FindCoordinatorRequest::default().with_coordinator_keys(vec![text(group)])
    } else {
        FindCoordinatorRequest::default().with_key(text(group))
    };
    let response = client.call(&request, version)?;
    let context = format!("find the coordinator of group {group}");
    let (code, message, host, port) = match response.coordinators.first() {
        Some(found) if version >= FIND_COORDINATOR_KEYS_VERSION => (
            found.error_code,
            found.error_message.clone(),
            found.host.clone(),
            found.port,
        ),
        _ => (
            response.error_code,
            response.error_message.clone(),
            response.host.clone(),
            response.port,
        ),
    };
    AdminError::check(&context, code, message.as_ref())?;
    Ok(Some(host_port(&host, port)))
}

/// ListGroups of every broker (each lists the groups it coordinates), merged.
fn list_everywhere(client: &mut AdminClient) -> Result<String, AdminError> {
    let view = cluster_view(client)?;
    if view.brokers.len() <= 1 {
        return list(client);
    }
    let mut lines = std::collections::BTreeSet::new();
    for address in view.brokers.values() {
        let listed = AdminClient::connect(address).and_then(|mut at| list(&mut at))?;
        lines.extend(listed.lines().map(str::to_owned));
    }
    Ok(lines.into_iter().map(|line| line + "\n").collect())
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
        let ends = offsets_at_leaders(client, &topic, &partitions, LATEST)?;
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
        ResetTo::Earliest => offsets_at_leaders(client, topic, &partitions, EARLIEST)?,
        ResetTo::Latest => offsets_at_leaders(client, topic, &partitions, LATEST)?,
        ResetTo::Timestamp(ms) => {
            let found = offsets_at_leaders(client, topic, &partitions, ms)?;
            // No record at or after the time: the partition's end.
            let ends = offsets_at_leaders(client, topic, &partitions, LATEST)?;
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
