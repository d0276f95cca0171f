//! A consumer-group member on the [`wire`](crate::wire) client: it joins a group as its only
//! member, assigns itself every partition of one topic, commits offsets with its generation
//! and fetches the committed ones back, all at the highest versions ringlog supports.
//!
//! Every refusal is an error (with the Kafka error code in its message), never a panic, so
//! a test that kills the broker under a member can drop the connection and join again, as a
//! real consumer does. (The version matrix in `tests/protocol_versions/groups.rs` checks
//! each API at every version instead.)

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, GroupId, JoinGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::wire::{max_version, topic_name, Connection};

/// JoinGroup's answer to a member id the group does not know.
const UNKNOWN_MEMBER_ID: i16 = 25;
/// JoinGroup's answer to a first join without a member id (from version 4 on).
const MEMBER_ID_REQUIRED: i16 = 79;
/// The session timeout a member asks for: longer than any pause of the tests using it, so
/// the group never expires a member that is still committing.
const SESSION_TIMEOUT_MS: i32 = 60_000;

/// A member that joined and synced: the group's only member and so its leader.
pub struct Member {
    group: String,
    topic: String,
    partitions: Vec<i32>,
    id: String,
    generation: i32,
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

impl Member {
    /// Joins `group` (through MEMBER_ID_REQUIRED), assigns itself `partitions` of `topic`
    /// and syncs. `member_id` is the id of an earlier join, as a consumer rejoining after a
    /// lost connection passes it (so the group need not wait for that member's session to
    /// expire), or "" for a new member; an id the group no longer knows joins as new. The
    /// server should run with `--group-initial-rebalance-delay-ms 0`, or the first join
    /// waits for that delay.
    pub fn join(
        c: &mut Connection,
        group: &str,
        topic: &str,
        partitions: &[i32],
        member_id: &str,
    ) -> anyhow::Result<Member> {
        let version = max_version(ApiKey::JoinGroup);
        let request = |member_id: &str| {
            JoinGroupRequest::default()
                .with_group_id(GroupId(text(group)))
                .with_session_timeout_ms(SESSION_TIMEOUT_MS)
                .with_rebalance_timeout_ms(SESSION_TIMEOUT_MS)
                .with_member_id(text(member_id))
                .with_protocol_type(text("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(text("range"))
                    .with_metadata(Bytes::from(topic.as_bytes().to_vec()))])
        };
        let mut answer = c.call(&request(member_id), version)?;
        if answer.error_code == UNKNOWN_MEMBER_ID {
            answer = c.call(&request(""), version)?;
        }
        if answer.error_code == MEMBER_ID_REQUIRED {
            let member_id = answer.member_id.to_string();
            answer = c.call(&request(&member_id), version)?;
        }
        ensure!(
            answer.error_code == 0,
            "JoinGroup error {}",
            answer.error_code
        );
        ensure!(
            answer.leader == answer.member_id,
            "another member leads {group}"
        );
        let member = Member {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions: partitions.to_vec(),
            id: answer.member_id.to_string(),
            generation: answer.generation_id,
        };
        let assignment = Bytes::from(format!("{topic}:{partitions:?}"));
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id(member.generation)
            .with_member_id(text(&member.id))
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")))
            .with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(text(&member.id))
                .with_assignment(assignment.clone())]);
        let synced = c.call(&sync, max_version(ApiKey::SyncGroup))?;
        ensure!(
            synced.error_code == 0,
            "SyncGroup error {}",
            synced.error_code
        );
        ensure!(synced.assignment == assignment, "the assignment came back");
        Ok(member)
    }

    /// The id the group gave this member.
    pub fn member_id(&self) -> &str {
        &self.id
    }

    /// Commits `offsets` (one per partition, in the order given to [`Member::join`]) with
    /// this member's id and generation.
    pub fn commit(&self, c: &mut Connection, offsets: &[i64]) -> anyhow::Result<()> {
        ensure!(
            offsets.len() == self.partitions.len(),
            "one offset per partition"
        );
        let partitions = self
            .partitions
            .iter()
            .zip(offsets)
            .map(|(&partition, &offset)| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
            })
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(text(&self.id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(&self.topic))
                .with_partitions(partitions)]);
        let answer = c.call(&request, max_version(ApiKey::OffsetCommit))?;
        for topic in &answer.topics {
            for partition in &topic.partitions {
                ensure!(
                    partition.error_code == 0,
                    "OffsetCommit error {} for partition {}",
                    partition.error_code,
                    partition.partition_index
                );
            }
        }
        Ok(())
    }

    /// The group's committed offsets, one per partition in the order given to
    /// [`Member::join`]; −1 where nothing was committed.
    pub fn committed(&self, c: &mut Connection) -> anyhow::Result<Vec<i64>> {
        let request =
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(text(&self.group)))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(topic_name(&self.topic))
                    .with_partition_indexes(self.partitions.clone())]))]);
        let answer = c.call(&request, max_version(ApiKey::OffsetFetch))?;
        let group = answer
            .groups
            .first()
            .context("OffsetFetch answered no group")?;
        ensure!(
            group.error_code == 0,
            "OffsetFetch error {}",
            group.error_code
        );
        let topic = group
            .topics
            .first()
            .context("OffsetFetch answered no topic")?;
        self.partitions
            .iter()
            .map(|&index| {
                let Some(partition) = topic.partitions.iter().find(|p| p.partition_index == index)
                else {
                    bail!("OffsetFetch left out partition {index}");
                };
                ensure!(
                    partition.error_code == 0,
                    "OffsetFetch error {} for partition {index}",
                    partition.error_code
                );
                Ok(partition.committed_offset)
            })
            .collect()
    }
}
