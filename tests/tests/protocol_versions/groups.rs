//! The consumer-group APIs at every advertised version: a member joins (through
//! MEMBER_ID_REQUIRED from JoinGroup v4 on), syncs its own assignment, heartbeats and
//! leaves; offsets are committed (manually, generation −1) and fetched back; groups are
//! listed, described and deleted. The server runs with a zero initial rebalance delay, so
//! a lone member's join completes at once.

use anyhow::{ensure, Context};
use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use ringlog_tests::wire::{max_version, topic_name, Connection};

use super::{NONE, TOPIC, UNKNOWN_TOPIC_OR_PARTITION};

const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const GROUP_ID_NOT_FOUND: i16 = 69;
const NON_EMPTY_GROUP: i16 = 68;
const MEMBER_ID_REQUIRED: i16 = 79;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn group_id(name: &str) -> GroupId {
    GroupId(text(name))
}

/// A member that joined and synced: its id and generation.
struct Joined {
    member_id: String,
    generation: i32,
}

fn join_request(group: &str, member_id: &str, session_ms: i32) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(group_id(group))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(30_000)
        .with_member_id(text(member_id))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(text("range"))
            .with_metadata(Bytes::from_static(b"subscription"))])
}

/// Joins `group` alone at JoinGroup `version` and checks the answer a lone leader gets.
fn join(c: &mut Connection, group: &str, version: i16) -> anyhow::Result<Joined> {
    let mut answer = c.call(&join_request(group, "", 10_000), version)?;
    if version >= 4 {
        ensure!(
            answer.error_code == MEMBER_ID_REQUIRED,
            "first join: {answer:?}"
        );
        let member_id = answer.member_id.to_string();
        ensure!(!member_id.is_empty(), "no member id given");
        answer = c.call(&join_request(group, &member_id, 10_000), version)?;
    }
    ensure!(answer.error_code == NONE, "join: {answer:?}");
    ensure!(
        answer.generation_id >= 1,
        "generation {}",
        answer.generation_id
    );
    ensure!(answer.leader == answer.member_id, "a lone member leads");
    let protocol = answer.protocol_name.as_ref().map(ToString::to_string);
    ensure!(
        protocol.as_deref() == Some("range"),
        "protocol {protocol:?}"
    );
    let [member] = answer.members.as_slice() else {
        anyhow::bail!("the leader sees {} members", answer.members.len());
    };
    ensure!(
        member.metadata.as_ref() == b"subscription",
        "metadata echoed"
    );
    Ok(Joined {
        member_id: answer.member_id.to_string(),
        generation: answer.generation_id,
    })
}

/// Syncs a lone leader's own assignment at SyncGroup `version`.
fn sync(c: &mut Connection, group: &str, joined: &Joined, version: i16) -> anyhow::Result<()> {
    let mut request = SyncGroupRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id(joined.generation)
        .with_member_id(text(&joined.member_id))
        .with_assignments(vec![SyncGroupRequestAssignment::default()
            .with_member_id(text(&joined.member_id))
            .with_assignment(Bytes::from_static(b"assigned"))]);
    if version >= 5 {
        request = request
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")));
    }
    let answer = c.call(&request, version)?;
    ensure!(answer.error_code == NONE, "sync: {answer:?}");
    ensure!(answer.assignment.as_ref() == b"assigned", "{answer:?}");
    Ok(())
}

fn joined_and_synced(c: &mut Connection, group: &str) -> anyhow::Result<Joined> {
    let joined = join(c, group, max_version(ApiKey::JoinGroup))?;
    sync(c, group, &joined, max_version(ApiKey::SyncGroup))?;
    Ok(joined)
}

pub fn find_coordinator(c: &mut Connection, version: i16, port: u16) -> anyhow::Result<()> {
    if version >= 4 {
        let request =
            FindCoordinatorRequest::default().with_coordinator_keys(vec![text("g1"), text("g2")]);
        let answer = c.call(&request, version)?;
        ensure!(answer.coordinators.len() == 2, "{answer:?}");
        for entry in &answer.coordinators {
            ensure!(
                entry.error_code == NONE && entry.port == i32::from(port),
                "{entry:?}"
            );
        }
    } else {
        let answer = c.call(
            &FindCoordinatorRequest::default().with_key(text("g")),
            version,
        )?;
        ensure!(answer.error_code == NONE, "{answer:?}");
        ensure!(answer.port == i32::from(port), "port {}", answer.port);
    }
    if version >= 1 {
        // A transactional id: ringlog has no transaction coordinator.
        let mut request = FindCoordinatorRequest::default().with_key_type(1);
        request = if version >= 4 {
            request.with_coordinator_keys(vec![text("tx")])
        } else {
            request.with_key(text("tx"))
        };
        let answer = c.call(&request, version)?;
        let code = answer
            .coordinators
            .first()
            .map_or(answer.error_code, |entry| entry.error_code);
        ensure!(
            code == COORDINATOR_NOT_AVAILABLE,
            "transactional: {answer:?}"
        );
    }
    Ok(())
}

pub fn join_group(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-join-v{version}");
    let joined = join(c, &group, version)?;
    sync(c, &group, &joined, max_version(ApiKey::SyncGroup))?;
    let bad = c.call(&join_request(&group, "", 1_000), version)?;
    ensure!(bad.error_code == INVALID_SESSION_TIMEOUT, "{bad:?}");
    Ok(())
}

pub fn sync_group(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-sync-v{version}");
    let joined = join(c, &group, max_version(ApiKey::JoinGroup))?;
    sync(c, &group, &joined, version)?;
    // Once Stable, a sync answers the member's assignment again.
    sync(c, &group, &joined, version)
}

pub fn heartbeat(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-heartbeat-v{version}");
    let joined = joined_and_synced(c, &group)?;
    let beat = |generation| {
        HeartbeatRequest::default()
            .with_group_id(group_id(&group))
            .with_generation_id(generation)
            .with_member_id(text(&joined.member_id))
    };
    let answer = c.call(&beat(joined.generation), version)?;
    ensure!(answer.error_code == NONE, "{answer:?}");
    let answer = c.call(&beat(joined.generation + 1), version)?;
    ensure!(answer.error_code == ILLEGAL_GENERATION, "{answer:?}");
    Ok(())
}

pub fn leave_group(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-leave-v{version}");
    let joined = joined_and_synced(c, &group)?;
    let leave = |member: &str| {
        let request = LeaveGroupRequest::default().with_group_id(group_id(&group));
        if version >= 3 {
            request.with_members(vec![MemberIdentity::default().with_member_id(text(member))])
        } else {
            request.with_member_id(text(member))
        }
    };
    let code = |answer: &kafka_protocol::messages::LeaveGroupResponse| {
        answer
            .members
            .first()
            .map_or(answer.error_code, |m| m.error_code)
    };
    let answer = c.call(&leave(&joined.member_id), version)?;
    ensure!(code(&answer) == NONE, "{answer:?}");
    let answer = c.call(&leave(&joined.member_id), version)?;
    ensure!(code(&answer) == UNKNOWN_MEMBER_ID, "again: {answer:?}");
    Ok(())
}

/// Commits `offset` for `TOPIC`-0 (and `missing`-0, which does not exist) as a manual
/// (group-less) consumer; returns the per-partition codes.
fn commit(c: &mut Connection, group: &str, offset: i64, version: i16) -> anyhow::Result<Vec<i16>> {
    let partition = OffsetCommitRequestPartition::default()
        .with_partition_index(0)
        .with_committed_offset(offset)
        .with_committed_metadata(Some(text("meta")));
    let topics = [TOPIC, "matrix-missing"]
        .iter()
        .map(|name| {
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(name))
                .with_partitions(vec![partition.clone()])
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(text(""))
        .with_topics(topics);
    let answer = c.call(&request, version)?;
    Ok(answer
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect())
}

/// The committed offset of `TOPIC`-0 in `group`, fetched at OffsetFetch `version`.
fn fetch_committed(c: &mut Connection, group: &str, version: i16) -> anyhow::Result<i64> {
    let answer = if version >= 8 {
        let request =
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(group_id(group))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(topic_name(TOPIC))
                    .with_partition_indexes(vec![0])]))]);
        let answer = c.call(&request, version)?;
        let group = answer.groups.first().context("no group")?;
        ensure!(group.error_code == NONE, "{group:?}");
        let partition = group
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .context("no partition")?;
        partition.committed_offset
    } else {
        let request = OffsetFetchRequest::default()
            .with_group_id(group_id(group))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(TOPIC))
                .with_partition_indexes(vec![0])]));
        let answer = c.call(&request, version)?;
        ensure!(answer.error_code == NONE, "{answer:?}");
        let partition = answer
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .context("no partition")?;
        partition.committed_offset
    };
    Ok(answer)
}

pub fn offset_commit(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-commit-v{version}");
    let codes = commit(c, &group, 1, version)?;
    ensure!(
        codes == [NONE, UNKNOWN_TOPIC_OR_PARTITION],
        "codes {codes:?}"
    );
    let committed = fetch_committed(c, &group, max_version(ApiKey::OffsetFetch))?;
    ensure!(committed == 1, "committed {committed}");
    Ok(())
}

pub fn offset_fetch(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-fetch-v{version}");
    ensure!(
        fetch_committed(c, &group, version)? == -1,
        "nothing committed yet"
    );
    commit(c, &group, 2, max_version(ApiKey::OffsetCommit))?;
    let committed = fetch_committed(c, &group, version)?;
    ensure!(committed == 2, "committed {committed}");
    Ok(())
}

pub fn list_groups(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-list-v{version}");
    commit(c, &group, 0, max_version(ApiKey::OffsetCommit))?;
    let mut request = ListGroupsRequest::default();
    if version >= 4 {
        request = request.with_states_filter(vec![text("Empty")]);
    }
    let answer = c.call(&request, version)?;
    ensure!(answer.error_code == NONE, "{answer:?}");
    let listed = answer
        .groups
        .iter()
        .find(|g| g.group_id.0.as_str() == group)
        .with_context(|| format!("{group} not listed"))?;
    if version >= 4 {
        ensure!(listed.group_state.as_str() == "Empty", "{listed:?}");
    }
    Ok(())
}

pub fn describe_groups(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-describe-v{version}");
    let joined = joined_and_synced(c, &group)?;
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(&group)]);
    let answer = c.call(&request, version)?;
    let described = answer.groups.first().context("no group")?;
    ensure!(described.error_code == NONE, "{described:?}");
    ensure!(described.group_state.as_str() == "Stable", "{described:?}");
    ensure!(described.protocol_data.as_str() == "range", "{described:?}");
    let [member] = described.members.as_slice() else {
        anyhow::bail!("{} members described", described.members.len());
    };
    ensure!(member.member_id.as_str() == joined.member_id, "{member:?}");
    ensure!(
        member.member_assignment.as_ref() == b"assigned",
        "{member:?}"
    );
    Ok(())
}

pub fn delete_groups(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let empty = format!("matrix-delete-v{version}");
    let busy = format!("matrix-delete-busy-v{version}");
    commit(c, &empty, 3, max_version(ApiKey::OffsetCommit))?;
    joined_and_synced(c, &busy)?;
    let request = DeleteGroupsRequest::default().with_groups_names(vec![
        group_id(&empty),
        group_id(&busy),
        group_id("matrix-never-existed"),
    ]);
    let answer = c.call(&request, version)?;
    let codes: Vec<i16> = answer.results.iter().map(|r| r.error_code).collect();
    ensure!(
        codes == [NONE, NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND],
        "codes {codes:?}"
    );
    let committed = fetch_committed(c, &empty, max_version(ApiKey::OffsetFetch))?;
    ensure!(committed == -1, "the deleted group's offset: {committed}");
    Ok(())
}

pub fn offset_delete(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let group = format!("matrix-offset-delete-v{version}");
    commit(c, &group, 4, max_version(ApiKey::OffsetCommit))?;
    let request = OffsetDeleteRequest::default()
        .with_group_id(group_id(&group))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(topic_name(TOPIC))
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(0)
            ])]);
    let answer = c.call(&request, version)?;
    ensure!(answer.error_code == NONE, "{answer:?}");
    let code = answer
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .map(|p| p.error_code);
    ensure!(code == Some(NONE), "{answer:?}");
    let committed = fetch_committed(c, &group, max_version(ApiKey::OffsetFetch))?;
    ensure!(committed == -1, "after delete: {committed}");
    Ok(())
}
