//! One consumer group's membership: Kafka's classic group protocol as a state machine.
//!
//! States (Kafka's names, which DescribeGroups and ListGroups report):
//!
//! | state | meaning | leaves for |
//! | --- | --- | --- |
//! | Empty | no members (committed offsets may remain) | PreparingRebalance on a join |
//! | PreparingRebalance | the join phase: members (re)join until all have or the rebalance timeout ends | CompletingRebalance, or Empty if no member is left |
//! | CompletingRebalance | members have their join answers; waiting for the leader's assignment | Stable after it is persisted; PreparingRebalance on a change |
//! | Stable | every member has its assignment and heartbeats | PreparingRebalance on a join, leave or expiry |
//! | Dead | deleted | — |
//!
//! Invariants:
//! - The generation only grows; every completed join phase takes the next one.
//! - A member awaiting its JoinGroup answer holds a `join_waiter`; one awaiting SyncGroup
//!   holds a `sync_waiter`. Every waiter is answered exactly once: by the phase that
//!   completes, by an error when the phase is abandoned, or by dropping it when its
//!   member is removed (the client has left or is fenced).
//! - A static member (`group.instance.id`) has exactly one member id at a time; a join
//!   under the same instance id replaces it and fences the old id.
//! - The broker never reads assignments; it relays the leader's, so every assignor works.
//!
//! Time is passed in (`now`), so the machine is deterministic and tested without
//! sleeping; the coordinator ticks it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;

use super::records::{GroupValue, MemberValue, OffsetValue};

/// Kafka's `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
pub const SESSION_TIMEOUT_MS_MIN: i32 = 6_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// Kafka's `group.initial.rebalance.delay.ms` default: how long a group leaving Empty
/// waits for more members before it completes the first join phase.
pub const INITIAL_REBALANCE_DELAY: Duration = Duration::from_secs(3);
/// Members of one group (Kafka's `group.max.size` is unbounded; a bound keeps one group
/// from taking the coordinator's memory).
pub const MEMBERS_PER_GROUP_MAX: usize = 10_000;

/// A group's state; see the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a JoinGroup asks.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// Protocol names with their metadata, in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a dynamic member without an id is given one and must join again.
    pub require_known_member_id: bool,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol: for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinOutcome {
    pub fn error(error: ResponseError, member_id: String) -> JoinOutcome {
        JoinOutcome {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id,
            members: Vec::new(),
        }
    }
}

/// One member in the leader's JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// A SyncGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    fn error(error: ResponseError) -> SyncOutcome {
        SyncOutcome {
            error: Some(error),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer now, or one that comes when a phase completes.
#[derive(Debug)]
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// What a SyncGroup needs next.
#[derive(Debug)]
pub enum SyncStep {
    Reply(Reply<SyncOutcome>),
    /// The leader's assignment is in: persist the group at this generation, then call
    /// [`Group::finish_sync`]; the leader's answer comes through the receiver.
    Persist {
        generation: i32,
        answer: oneshot::Receiver<SyncOutcome>,
    },
}

/// One member.
#[derive(Debug)]
pub struct Member {
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
    session_deadline: Instant,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata(&self, protocol: Option<&str>) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| Some(name.as_str()) == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

/// The join phase's deadline, and for a group leaving Empty, how far new members may
/// still push it.
#[derive(Debug, Clone, Copy)]
struct JoinPhase {
    deadline: Instant,
    initial_delay_max: Option<Instant>,
}

/// One consumer group.
#[derive(Debug)]
pub struct Group {
    pub id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join or expire.
    pending: HashMap<String, Instant>,
    static_members: HashMap<String, String>,
    join_phase: Option<JoinPhase>,
    /// Committed offsets by topic and partition.
    pub offsets: BTreeMap<(String, i32), OffsetValue>,
    /// Set when the membership changed in a way the log must record (the group became
    /// Empty); the coordinator persists and clears it.
    pub membership_dirty: bool,
    /// Since when (ms since the epoch) the group has been Empty, as the coordinator saw it;
    /// a consumer group's offsets expire that long after it emptied (Kafka's
    /// `currentStateTimestamp`).
    pub empty_since_ms: Option<i64>,
    initial_delay: Duration,
}

impl Group {
    /// An Empty group; `initial_delay` is its `group.initial.rebalance.delay.ms`.
    pub fn new(id: String, initial_delay: Duration) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            join_phase: None,
            offsets: BTreeMap::new(),
            membership_dirty: false,
            empty_since_ms: None,
            initial_delay,
        }
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub fn members(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter()
    }

    /// Whether the group holds nothing worth keeping: Empty, no committed offsets, no
    /// member id handed out and awaited.
    pub fn is_idle(&self) -> bool {
        self.state == GroupState::Empty && self.offsets.is_empty() && self.pending.is_empty()
    }

    /// Marks the group deleted: every waiter is answered with `error`.
    pub fn kill(&mut self, error: ResponseError) {
        for member in self.members.values_mut() {
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(JoinOutcome::error(error, String::new()));
            }
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncOutcome::error(error));
            }
        }
        self.members.clear();
        self.pending.clear();
        self.static_members.clear();
        self.state = GroupState::Dead;
    }

    /// Handles a JoinGroup. `new_member_id` makes an id from a prefix (client or
    /// instance id).
    pub fn join(
        &mut self,
        request: &JoinRequest,
        now: Instant,
        new_member_id: &mut dyn FnMut(&str) -> String,
    ) -> Reply<JoinOutcome> {
        let refuse =
            |error, member_id: &str| Reply::Now(JoinOutcome::error(error, member_id.to_owned()));
        if self.state == GroupState::Dead {
            return refuse(ResponseError::CoordinatorNotAvailable, &request.member_id);
        }
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&request.session_timeout_ms)
        {
            return refuse(ResponseError::InvalidSessionTimeout, &request.member_id);
        }
        if !self.protocols_compatible(request) {
            return refuse(ResponseError::InconsistentGroupProtocol, &request.member_id);
        }
        if request.member_id.is_empty() {
            return self.join_unknown(request, now, new_member_id);
        }
        if self.pending.remove(&request.member_id).is_some() {
            let member_id = request.member_id.clone();
            return self.add_member_and_join(member_id, request, now);
        }
        if let Some(instance_id) = &request.instance_id {
            match self.static_members.get(instance_id) {
                Some(current) if *current != request.member_id => {
                    return refuse(ResponseError::FencedInstanceId, &request.member_id);
                }
                _ => {}
            }
        }
        if !self.members.contains_key(&request.member_id) {
            return refuse(ResponseError::UnknownMemberId, &request.member_id);
        }
        self.join_known(&request.member_id, request, now)
    }

    /// A join without a member id: a static member replacing its old id, a new static
    /// member, or a dynamic member (told its id first from v4 on).
    fn join_unknown(
        &mut self,
        request: &JoinRequest,
        now: Instant,
        new_member_id: &mut dyn FnMut(&str) -> String,
    ) -> Reply<JoinOutcome> {
        if let Some(instance_id) = request.instance_id.clone() {
            let member_id = new_member_id(&instance_id);
            let Some(old_id) = self.static_members.get(&instance_id).cloned() else {
                return self.add_member_and_join(member_id, request, now);
            };
            self.replace_static_member(&old_id, &member_id);
            let unchanged = self.members.get(&member_id).is_some_and(|member| {
                member.protocols == request.protocols
                    && member.protocol_type == request.protocol_type
            });
            let is_leader = self.leader.as_deref() == Some(member_id.as_str());
            if self.state == GroupState::Stable && unchanged && !is_leader {
                // The member keeps its assignment under its new id without a rebalance;
                // the log must know the new id before the member is told it, or a restart
                // would fence it.
                self.update_member(&member_id, request, now);
                self.membership_dirty = true;
                return Reply::Now(self.outcome_for(&member_id));
            }
            if self.state == GroupState::CompletingRebalance {
                // The leader is assigning to the old id: that assignment cannot reach the
                // new one, so the group joins again.
                self.prepare_rebalance(now);
            }
            return self.join_known(&member_id, request, now);
        }
        let member_id = new_member_id(&request.client_id);
        if request.require_known_member_id {
            let deadline = now + timeout(request.session_timeout_ms);
            self.pending.insert(member_id.clone(), deadline);
            return Reply::Now(JoinOutcome::error(
                ResponseError::MemberIdRequired,
                member_id,
            ));
        }
        self.add_member_and_join(member_id, request, now)
    }

    fn add_member_and_join(
        &mut self,
        member_id: String,
        request: &JoinRequest,
        now: Instant,
    ) -> Reply<JoinOutcome> {
        if self.members.len() >= MEMBERS_PER_GROUP_MAX {
            return Reply::Now(JoinOutcome::error(
                ResponseError::GroupMaxSizeReached,
                member_id,
            ));
        }
        if let Some(instance_id) = &request.instance_id {
            self.static_members
                .insert(instance_id.clone(), member_id.clone());
        }
        self.members.insert(
            member_id.clone(),
            Member {
                instance_id: request.instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocol_type: request.protocol_type.clone(),
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                join_waiter: None,
                sync_waiter: None,
                session_deadline: now + timeout(request.session_timeout_ms),
            },
        );
        if let Some(phase) = &mut self.join_phase {
            // A new member during the initial delay pushes the phase's end out.
            if let Some(max) = phase.initial_delay_max {
                phase.deadline = (now + self.initial_delay).min(max);
            }
        }
        let (waiter, answer) = oneshot::channel();
        if let Some(member) = self.members.get_mut(&member_id) {
            member.join_waiter = Some(waiter);
        }
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.try_complete_join(now);
        Reply::Later(answer)
    }

    /// A join of a current member.
    fn join_known(
        &mut self,
        member_id: &str,
        request: &JoinRequest,
        now: Instant,
    ) -> Reply<JoinOutcome> {
        let unchanged = self.members.get(member_id).is_some_and(|member| {
            member.protocols == request.protocols && member.protocol_type == request.protocol_type
        });
        let is_leader = self.leader.as_deref() == Some(member_id);
        self.update_member(member_id, request, now);
        match self.state {
            // The member missed its answer: send it again.
            GroupState::CompletingRebalance if unchanged => {
                return Reply::Now(self.outcome_for(member_id));
            }
            GroupState::Stable if unchanged && !is_leader => {
                return Reply::Now(self.outcome_for(member_id));
            }
            GroupState::PreparingRebalance => {}
            _ => self.prepare_rebalance(now),
        }
        let (waiter, answer) = oneshot::channel();
        if let Some(member) = self.members.get_mut(member_id) {
            member.join_waiter = Some(waiter);
        }
        self.try_complete_join(now);
        Reply::Later(answer)
    }

    fn update_member(&mut self, member_id: &str, request: &JoinRequest, now: Instant) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.protocols.clone_from(&request.protocols);
            member.protocol_type.clone_from(&request.protocol_type);
            member.session_timeout_ms = request.session_timeout_ms;
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
            member.client_id.clone_from(&request.client_id);
            member.client_host.clone_from(&request.client_host);
            member.session_deadline = now + timeout(request.session_timeout_ms);
        }
    }

    /// Moves a static member to a new id; the old id's waiters learn they are fenced.
    fn replace_static_member(&mut self, old_id: &str, new_id: &str) {
        let Some(mut member) = self.members.remove(old_id) else {
            return;
        };
        if let Some(waiter) = member.join_waiter.take() {
            let _ = waiter.send(JoinOutcome::error(
                ResponseError::FencedInstanceId,
                old_id.to_owned(),
            ));
        }
        if let Some(waiter) = member.sync_waiter.take() {
            let _ = waiter.send(SyncOutcome::error(ResponseError::FencedInstanceId));
        }
        if let Some(instance_id) = &member.instance_id {
            self.static_members
                .insert(instance_id.clone(), new_id.to_owned());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_owned());
        }
        self.members.insert(new_id.to_owned(), member);
    }

    /// Whether a join's protocol type and protocols fit the group's current members.
    fn protocols_compatible(&self, request: &JoinRequest) -> bool {
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, _)| **id != request.member_id)
            .map(|(_, member)| member)
            .collect();
        if others.is_empty() {
            return true;
        }
        if self
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != request.protocol_type)
        {
            return false;
        }
        request.protocols.iter().any(|(name, _)| {
            others
                .iter()
                .all(|member| member.protocols.iter().any(|(other, _)| other == name))
        })
    }

    /// Starts a join phase: members awaiting SyncGroup learn that it was abandoned.
    fn prepare_rebalance(&mut self, now: Instant) {
        for member in self.members.values_mut() {
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncOutcome::error(ResponseError::RebalanceInProgress));
            }
        }
        let rebalance_timeout = timeout(
            self.members
                .values()
                .map(|member| member.rebalance_timeout_ms)
                .max()
                .unwrap_or(0),
        );
        self.join_phase = Some(if self.state == GroupState::Empty {
            JoinPhase {
                deadline: now + self.initial_delay.min(rebalance_timeout),
                initial_delay_max: Some(now + rebalance_timeout),
            }
        } else {
            JoinPhase {
                deadline: now + rebalance_timeout,
                initial_delay_max: None,
            }
        });
        self.state = GroupState::PreparingRebalance;
    }

    /// Completes the join phase once every member has joined (outside the initial delay)
    /// or its time is up.
    fn try_complete_join(&mut self, now: Instant) {
        let Some(phase) = self.join_phase else {
            return;
        };
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.pending.is_empty()
            && self
                .members
                .values()
                .all(|member| member.join_waiter.is_some());
        let delaying = phase.initial_delay_max.is_some();
        if (all_joined && !delaying) || now >= phase.deadline {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| member.join_waiter.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.join_phase = None;
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            // The protocol type stays, as in Kafka: it tells a consumer group that has
            // become empty (whose offsets expire from that moment) from a group that only
            // ever had manual commits.
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.membership_dirty = true;
            return;
        }
        self.protocol = self.choose_protocol();
        self.protocol_type = self
            .members
            .values()
            .next()
            .map(|member| member.protocol_type.clone());
        let leader_present = self
            .leader
            .as_ref()
            .is_some_and(|leader| self.members.contains_key(leader));
        if !leader_present {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.outcome_for(&id);
            if let Some(member) = self.members.get_mut(&id) {
                member.session_deadline = now + timeout(member.session_timeout_ms);
                if let Some(waiter) = member.join_waiter.take() {
                    let _ = waiter.send(outcome);
                }
            }
        }
    }

    /// The protocol every member supports that most members prefer (ties go to the
    /// earlier-listed protocol of the leader candidate).
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|member| member.protocols.iter().any(|(other, _)| other == *name))
            })
            .collect();
        let votes = |candidate: &String| {
            self.members
                .values()
                .filter(|member| {
                    member
                        .protocols
                        .iter()
                        .find(|(name, _)| candidates.contains(&name))
                        .is_some_and(|(name, _)| name == candidate)
                })
                .count()
        };
        let mut best: Option<(&String, usize)> = None;
        for candidate in &candidates {
            let count = votes(candidate);
            if best.is_none_or(|(_, most)| count > most) {
                best = Some((candidate, count));
            }
        }
        best.map(|(name, _)| name.clone())
    }

    /// The JoinGroup answer of the current generation for `member_id`.
    fn outcome_for(&self, member_id: &str) -> JoinOutcome {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, member)| JoinedMember {
                    member_id: id.clone(),
                    instance_id: member.instance_id.clone(),
                    metadata: member.metadata(self.protocol.as_deref()),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(member) = self.members.remove(member_id) {
            if let Some(instance_id) = member.instance_id {
                if self.static_members.get(&instance_id).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(&instance_id);
                }
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
    }

    /// Checks a request's member, instance and generation against the group.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(instance_id) = instance_id {
            if let Some(current) = self.static_members.get(instance_id) {
                if current != member_id {
                    return Err(ResponseError::FencedInstanceId);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Handles a SyncGroup. `assignments` is what the leader sends (others send none).
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> SyncStep {
        let now_reply = |error| SyncStep::Reply(Reply::Now(SyncOutcome::error(error)));
        if let Err(error) = self.check_member(member_id, instance_id, generation) {
            return now_reply(error);
        }
        match self.state {
            GroupState::CompletingRebalance => {}
            GroupState::Stable => {
                self.touch(member_id, now);
                return SyncStep::Reply(Reply::Now(self.sync_outcome_for(member_id)));
            }
            _ => return now_reply(ResponseError::RebalanceInProgress),
        }
        let (waiter, answer) = oneshot::channel();
        if let Some(member) = self.members.get_mut(member_id) {
            member.sync_waiter = Some(waiter);
            member.session_deadline = now + timeout(member.session_timeout_ms);
        }
        if self.leader.as_deref() != Some(member_id) {
            return SyncStep::Reply(Reply::Later(answer));
        }
        let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
        for (id, member) in &mut self.members {
            member.assignment = assignments.remove(id).unwrap_or_default();
        }
        SyncStep::Persist {
            generation: self.generation,
            answer,
        }
    }

    /// Ends the sync phase of `generation` once the group's record is persisted (or failed
    /// to be, with the error the members get before they rejoin).
    pub fn finish_sync(
        &mut self,
        generation: i32,
        persisted: Result<(), ResponseError>,
        now: Instant,
    ) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return;
        }
        match persisted {
            Ok(()) => {
                self.state = GroupState::Stable;
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let outcome = self.sync_outcome_for(&id);
                    if let Some(waiter) =
                        self.members.get_mut(&id).and_then(|m| m.sync_waiter.take())
                    {
                        let _ = waiter.send(outcome);
                    }
                }
            }
            Err(error) => {
                for member in self.members.values_mut() {
                    member.assignment = Bytes::new();
                    if let Some(waiter) = member.sync_waiter.take() {
                        let _ = waiter.send(SyncOutcome::error(error));
                    }
                }
                self.prepare_rebalance(now);
            }
        }
    }

    fn sync_outcome_for(&self, member_id: &str) -> SyncOutcome {
        SyncOutcome {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|member| member.assignment.clone())
                .unwrap_or_default(),
        }
    }

    fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.session_deadline = now + timeout(member.session_timeout_ms);
        }
    }

    /// Handles a Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Empty {
            return Some(ResponseError::UnknownMemberId);
        }
        if let Err(error) = self.check_member(member_id, instance_id, generation) {
            return Some(error);
        }
        self.touch(member_id, now);
        match self.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// Handles one member of a LeaveGroup.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Dead {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let member_id = match instance_id {
            Some(instance_id) => match self.static_members.get(instance_id) {
                None => return Some(ResponseError::UnknownMemberId),
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return Some(ResponseError::FencedInstanceId);
                }
                Some(current) => current.clone(),
            },
            None => member_id.to_owned(),
        };
        if self.pending.remove(&member_id).is_some() {
            self.try_complete_join(now);
            return None;
        }
        if !self.members.contains_key(&member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        self.remove_member(&member_id);
        self.on_members_changed(now);
        None
    }

    fn on_members_changed(&mut self, now: Instant) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now),
            _ => {}
        }
        self.try_complete_join(now);
    }

    /// Whether an OffsetCommit from this member at this generation may commit.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if generation < 0 && member_id.is_empty() && self.state == GroupState::Empty {
            // Manual assignment (`assign()`, kcat): the group has no members to check.
            return Ok(());
        }
        self.check_member(member_id, instance_id, generation)?;
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        self.touch(member_id, now);
        Ok(())
    }

    /// Expires members whose session ended and pending ids never used, and ends a join
    /// phase whose time is up.
    pub fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| {
                member.join_waiter.is_none()
                    && member.sync_waiter.is_none()
                    && member.session_deadline <= now
            })
            .map(|(id, _)| id.clone())
            .collect();
        let any_expired = !expired.is_empty();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member's session expired");
            if let Some(waiter) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                let _ = waiter.send(SyncOutcome::error(ResponseError::UnknownMemberId));
            }
            self.remove_member(&id);
        }
        if any_expired {
            self.on_members_changed(now);
        } else {
            self.try_complete_join(now);
        }
    }

    /// The group's record for `__consumer_offsets`.
    pub fn to_record(&self, now_ms: i64) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: match self.state {
                GroupState::Empty => self.empty_since_ms.unwrap_or(now_ms),
                _ => now_ms,
            },
            members: self
                .members
                .iter()
                .map(|(id, member)| MemberValue {
                    member_id: id.clone(),
                    instance_id: member.instance_id.clone(),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    rebalance_timeout_ms: member.rebalance_timeout_ms,
                    session_timeout_ms: member.session_timeout_ms,
                    subscription: member.metadata(self.protocol.as_deref()),
                    assignment: member.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Restores the membership a record holds (at startup): Stable with those members,
    /// whose sessions start now, or Empty.
    pub fn restore(&mut self, value: GroupValue, now: Instant) {
        self.generation = value.generation;
        self.members.clear();
        self.static_members.clear();
        self.pending.clear();
        self.join_phase = None;
        if value.members.is_empty() {
            self.state = GroupState::Empty;
            self.empty_since_ms = Some(value.state_timestamp_ms).filter(|ms| *ms >= 0);
            self.protocol = None;
            self.protocol_type = Some(value.protocol_type).filter(|t| !t.is_empty());
            self.leader = None;
            return;
        }
        self.state = GroupState::Stable;
        self.protocol_type = Some(value.protocol_type.clone());
        self.protocol.clone_from(&value.protocol);
        self.leader = value.leader;
        for member in value.members {
            if let Some(instance_id) = &member.instance_id {
                self.static_members
                    .insert(instance_id.clone(), member.member_id.clone());
            }
            let protocols = value
                .protocol
                .clone()
                .map(|name| vec![(name, member.subscription.clone())])
                .unwrap_or_default();
            self.members.insert(
                member.member_id,
                Member {
                    instance_id: member.instance_id,
                    client_id: member.client_id,
                    client_host: member.client_host,
                    session_timeout_ms: member.session_timeout_ms,
                    rebalance_timeout_ms: member.rebalance_timeout_ms,
                    protocol_type: value.protocol_type.clone(),
                    protocols,
                    assignment: member.assignment,
                    join_waiter: None,
                    sync_waiter: None,
                    session_deadline: now + timeout(member.session_timeout_ms),
                },
            );
        }
    }
}

/// A timeout in milliseconds from the wire (negative means none).
fn timeout(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests;
