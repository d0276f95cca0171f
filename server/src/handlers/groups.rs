//! The classic group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! ListGroups, DescribeGroups and DeleteGroups. Each runs on the shard owning the group
//! (see `group::coordinator`); the group state machine decides, these functions only
//! translate between Kafka's messages and it.
//!
//! A single node coordinates every group; in a cluster, the leader of the group's
//! partition of `__consumer_offsets` does (see `group::coordinator`). Transactions are not
//! supported: a FindCoordinator for a transactional id is answered with
//! COORDINATOR_NOT_AVAILABLE and a message saying so.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::{node_id_i32, Broker};
use crate::group::coordinator::{offset_key, Coordinator, GroupRecord};
use crate::group::records::RecordKey;
use crate::group::state::{
    GroupState, JoinOutcome, JoinRequest, Reply, SyncOutcome, SyncStep, SESSION_TIMEOUT_MS_MAX,
    SESSION_TIMEOUT_MS_MIN,
};
use crate::group::{
    on_coordinator, GROUP_STRING_BYTES_MAX, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS,
};

/// FindCoordinator `key_type` of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;
/// The first JoinGroup version whose response may carry a null protocol name.
const JOIN_NULLABLE_PROTOCOL_VERSION: i16 = 7;

fn code(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |error| error.code())
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

pub fn find_coordinator(
    broker: &Broker,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let unsupported =
        (request.key_type != KEY_TYPE_GROUP).then_some(ResponseError::CoordinatorNotAvailable);
    let message = unsupported
        .map(|_| text("ringlog coordinates consumer groups only; transactions are not supported"));
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let entry = CoordinatorEntry::default().with_key(key.clone());
                if let Some(error) = unsupported {
                    return entry
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(error.code())
                        .with_error_message(message.clone());
                }
                match coordinator_of(broker, key.as_str()) {
                    Ok((id, host, port)) => entry
                        .with_node_id(BrokerId(id))
                        .with_host(text(&host))
                        .with_port(port),
                    Err(error) => entry
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(error.code()),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let response = FindCoordinatorResponse::default()
        .with_error_code(code(unsupported))
        .with_error_message(message);
    if unsupported.is_some() {
        return response.with_node_id(BrokerId(-1)).with_port(-1);
    }
    match coordinator_of(broker, request.key.as_str()) {
        Ok((id, host, port)) => response
            .with_node_id(BrokerId(id))
            .with_host(text(&host))
            .with_port(port),
        Err(error) => response
            .with_error_code(error.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}

/// The node coordinating `group`: this one alone; in a cluster, the leader of the group's
/// partition of `__consumer_offsets` (COORDINATOR_NOT_AVAILABLE while it has none, or
/// while that leader is not live here: `Cluster::live_brokers`).
fn coordinator_of(broker: &Broker, group: &str) -> Result<(i32, String, i32), ResponseError> {
    let Some(cluster) = broker.replicated(OFFSETS_TOPIC) else {
        let address = broker.config.advertised_listener;
        let port = i32::from(address.port());
        return Ok((broker.node_id(), address.ip().to_string(), port));
    };
    let partitions = broker
        .engine
        .topic(OFFSETS_TOPIC)
        .map_or(OFFSETS_TOPIC_PARTITIONS, |meta| meta.partitions);
    let partition = crate::group::partition_for(group, partitions);
    let leader = cluster
        .status(OFFSETS_TOPIC, partition)
        .and_then(|status| status.leader)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let (host, port) = cluster
        .live_brokers()
        .remove(&leader)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    Ok((node_id_i32(leader), host, i32::from(port)))
}

pub async fn join(
    broker: &Broker,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
    peer: SocketAddr,
) -> JoinGroupResponse {
    let group_id = request.group_id.0.to_string();
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|id| id.to_string()),
        client_id,
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: request.session_timeout_ms,
        // Version 0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = join.member_id.clone();
    if let Err(error) = check_join(&group_id, &join) {
        return join_error(error, &member_id, version);
    }
    let outcome = on_coordinator(broker, &group_id.clone(), move |coordinator| async move {
        let mut make_id = |prefix: &str| format!("{prefix}-{}", uuid::Uuid::new_v4());
        let joined = coordinator.with_group(&group_id, true, |group| {
            let reply = group.join(&join, Instant::now(), &mut make_id);
            // A change the member is told about at once (a static member's new id) is
            // recorded before the answer.
            let answered_now = matches!(&reply, Reply::Now(outcome) if outcome.error.is_none());
            let record_first = answered_now && std::mem::take(&mut group.membership_dirty);
            (reply, record_first)
        });
        let (reply, record_first) = joined?;
        if record_first {
            if let Err(error) = coordinator.persist_membership(&group_id).await {
                return Some(JoinOutcome::error(error, String::new()));
            }
        }
        // Not held while waiting: the group holds this task's waker through the answer's
        // sender, and a task that held the coordinator would keep both alive at shutdown.
        drop(coordinator);
        match reply {
            Reply::Now(outcome) => Some(outcome),
            Reply::Later(answer) => answer.await.ok(),
        }
    })
    .await;
    let outcome = match outcome {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return join_error(ResponseError::UnknownMemberId, &member_id, version),
        Err(error) => return join_error(error, &member_id, version),
    };
    join_response(outcome, version)
}

/// What a join must satisfy before it may create a group: a group id, a session timeout
/// in bounds, a protocol, and strings short enough to be stored.
fn check_join(group_id: &str, join: &JoinRequest) -> Result<(), ResponseError> {
    if group_id.is_empty() || group_id.len() > GROUP_STRING_BYTES_MAX {
        return Err(ResponseError::InvalidGroupId);
    }
    if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&join.session_timeout_ms) {
        return Err(ResponseError::InvalidSessionTimeout);
    }
    if join.protocol_type.is_empty() || join.protocols.is_empty() {
        return Err(ResponseError::InconsistentGroupProtocol);
    }
    let strings = [&join.member_id, &join.client_id, &join.protocol_type]
        .into_iter()
        .chain(join.instance_id.as_ref())
        .chain(join.protocols.iter().map(|(name, _)| name));
    if strings
        .into_iter()
        .any(|s| s.len() > GROUP_STRING_BYTES_MAX)
    {
        return Err(ResponseError::InvalidRequest);
    }
    Ok(())
}

fn join_error(error: ResponseError, member_id: &str, version: i16) -> JoinGroupResponse {
    join_response(JoinOutcome::error(error, member_id.to_owned()), version)
}

fn join_response(outcome: JoinOutcome, version: i16) -> JoinGroupResponse {
    // The protocol name is nullable only from version 7; before, "" stands for none (the
    // Java client cannot read a null there).
    let protocol = match outcome.protocol.as_deref() {
        None if version < JOIN_NULLABLE_PROTOCOL_VERSION => Some(text("")),
        name => name.map(text),
    };
    JoinGroupResponse::default()
        .with_error_code(code(outcome.error))
        .with_generation_id(outcome.generation)
        .with_protocol_type(outcome.protocol_type.as_deref().map(text))
        .with_protocol_name(protocol)
        .with_leader(text(&outcome.leader))
        .with_member_id(text(&outcome.member_id))
        .with_members(
            outcome
                .members
                .into_iter()
                .map(|member| {
                    JoinGroupResponseMember::default()
                        .with_member_id(text(&member.member_id))
                        .with_group_instance_id(member.instance_id.as_deref().map(text))
                        .with_metadata(member.metadata)
                })
                .collect(),
        )
}

pub async fn sync(broker: &Broker, request: SyncGroupRequest) -> SyncGroupResponse {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.map(|id| id.to_string());
    let generation = request.generation_id;
    let (protocol_type, protocol) = (
        request.protocol_type.map(|p| p.to_string()),
        request.protocol_name.map(|p| p.to_string()),
    );
    let assignments: Vec<(String, Bytes)> = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let outcome = on_coordinator(broker, &group_id.clone(), move |coordinator| async move {
        let step = coordinator.with_group(&group_id, false, |group| {
            let mismatch = |asked: &Option<String>, have: Option<&str>| {
                asked
                    .as_deref()
                    .is_some_and(|asked| have.is_some_and(|have| have != asked))
            };
            if mismatch(&protocol_type, group.protocol_type())
                || mismatch(&protocol, group.protocol())
            {
                return SyncStep::Reply(Reply::Now(sync_error(
                    ResponseError::InconsistentGroupProtocol,
                )));
            }
            group.sync(
                &member_id,
                instance_id.as_deref(),
                generation,
                assignments,
                Instant::now(),
            )
        });
        match step {
            None => sync_error(ResponseError::UnknownMemberId),
            Some(SyncStep::Reply(Reply::Now(outcome))) => outcome,
            Some(SyncStep::Reply(Reply::Later(answer))) => {
                // Not held while waiting (see `join`).
                drop(coordinator);
                answer
                    .await
                    .unwrap_or_else(|_| sync_error(ResponseError::UnknownMemberId))
            }
            Some(SyncStep::Persist { generation, answer }) => {
                let persisted = coordinator.persist_membership(&group_id).await;
                coordinator.with_group(&group_id, false, |group| {
                    group.finish_sync(generation, persisted, Instant::now());
                });
                drop(coordinator);
                answer
                    .await
                    .unwrap_or_else(|_| sync_error(ResponseError::UnknownMemberId))
            }
        }
    })
    .await;
    let outcome = outcome.unwrap_or_else(sync_error);
    SyncGroupResponse::default()
        .with_error_code(code(outcome.error))
        .with_protocol_type(outcome.protocol_type.as_deref().map(text))
        .with_protocol_name(outcome.protocol.as_deref().map(text))
        .with_assignment(outcome.assignment)
}

fn sync_error(error: ResponseError) -> SyncOutcome {
    SyncOutcome {
        error: Some(error),
        protocol_type: None,
        protocol: None,
        assignment: Bytes::new(),
    }
}

pub async fn heartbeat(broker: &Broker, request: HeartbeatRequest) -> HeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.map(|id| id.to_string());
    let generation = request.generation_id;
    let error = on_coordinator(broker, &group_id.clone(), move |coordinator| async move {
        coordinator
            .with_group(&group_id, false, |group| {
                group.heartbeat(
                    &member_id,
                    instance_id.as_deref(),
                    generation,
                    Instant::now(),
                )
            })
            .unwrap_or(Some(ResponseError::UnknownMemberId))
    })
    .await
    .unwrap_or_else(Some);
    HeartbeatResponse::default().with_error_code(code(error))
}

pub async fn leave(
    broker: &Broker,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group_id = request.group_id.0.to_string();
    // Before version 3 one member leaves, named by the request's member id.
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(ToString::to_string),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let asked = leaving.clone();
    let errors = on_coordinator(broker, &group_id.clone(), move |coordinator| async move {
        let now = Instant::now();
        let errors: Vec<Option<ResponseError>> = leaving
            .iter()
            .map(|(member_id, instance_id)| {
                coordinator
                    .with_group(&group_id, false, |group| {
                        group.leave(member_id, instance_id.as_deref(), now)
                    })
                    .unwrap_or(Some(ResponseError::UnknownMemberId))
            })
            .collect();
        // The last member gone, the group is Empty: recorded before the answer, so that a
        // coordinator taking over after this one dies does not load the members that left
        // and hold a new member's join until their sessions expire. A write that fails is
        // left to the coordinator's tick, which tries again (the flag stays set).
        let emptied = coordinator
            .with_group(&group_id, false, |group| {
                std::mem::take(&mut group.membership_dirty)
            })
            .unwrap_or(false);
        if emptied && coordinator.persist_membership(&group_id).await.is_err() {
            coordinator.with_group(&group_id, false, |group| group.membership_dirty = true);
        }
        errors
    })
    .await;
    let errors = match errors {
        Ok(errors) => errors,
        Err(error) => return LeaveGroupResponse::default().with_error_code(error.code()),
    };
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(code(errors[0]));
    }
    let members = asked
        .into_iter()
        .zip(errors)
        .map(|((member_id, instance_id), error)| {
            MemberResponse::default()
                .with_member_id(text(&member_id))
                .with_group_instance_id(instance_id.as_deref().map(text))
                .with_error_code(code(error))
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

pub async fn list(broker: &Broker, request: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let mut groups = Vec::new();
    for shard in broker.engine.shard_handles() {
        let listed = shard
            .spawn(|| async {
                crate::group::coordinator::with_local(Coordinator::list).unwrap_or_default()
            })
            .await;
        groups.extend(listed.unwrap_or_default());
    }
    groups.sort();
    let listed = groups
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.contains(&state.to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(text(&id)))
                .with_protocol_type(text(&protocol_type))
                .with_group_state(text(state))
                .with_group_type(text("classic"))
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

pub async fn describe(broker: &Broker, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let id = group_id.0.to_string();
        let answer = on_coordinator(broker, &id, {
            let id = id.clone();
            move |coordinator| async move {
                coordinator.with_group(&id, false, |group| describe_one(group))
            }
        })
        .await;
        let entry = match answer {
            Ok(Some(entry)) => entry,
            // Kafka describes a group it does not know as Dead, without an error.
            Ok(None) => DescribedGroup::default().with_group_state(text(GroupState::Dead.name())),
            Err(error) => DescribedGroup::default().with_error_code(error.code()),
        };
        described.push(entry.with_group_id(group_id));
    }
    DescribeGroupsResponse::default().with_groups(described)
}

fn describe_one(group: &crate::group::state::Group) -> DescribedGroup {
    let stable = group.state() == GroupState::Stable;
    let members = group
        .members()
        .map(|(id, member)| {
            DescribedGroupMember::default()
                .with_member_id(text(id))
                .with_group_instance_id(member.instance_id.as_deref().map(text))
                .with_client_id(text(&member.client_id))
                .with_client_host(text(&member.client_host))
                .with_member_metadata(member.metadata(group.protocol()))
                .with_member_assignment(if stable {
                    member.assignment.clone()
                } else {
                    Bytes::new()
                })
        })
        .collect();
    DescribedGroup::default()
        .with_group_state(text(group.state().name()))
        .with_protocol_type(text(group.protocol_type().unwrap_or_default()))
        .with_protocol_data(text(group.protocol().unwrap_or_default()))
        .with_members(members)
}

pub async fn delete(broker: &Broker, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let id = group_id.0.to_string();
        let error = on_coordinator(broker, &id, {
            let id = id.clone();
            move |coordinator| async move {
                let tombstones = coordinator.with_group(&id, false, |group| {
                    if group.state() != GroupState::Empty {
                        return Err(ResponseError::NonEmptyGroup);
                    }
                    let mut records: Vec<GroupRecord> = group
                        .offsets
                        .keys()
                        .map(|(topic, partition)| (offset_key(&id, topic, *partition), None))
                        .collect();
                    records.push((RecordKey::Group { group: id.clone() }, None));
                    Ok(records)
                });
                match tombstones {
                    None => Some(ResponseError::GroupIdNotFound),
                    Some(Err(error)) => Some(error),
                    // The group's tombstone kills and forgets it once durable.
                    Some(Ok(records)) => coordinator.persist(&id, records).await.err(),
                }
            }
        })
        .await
        .unwrap_or_else(Some);
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code(error)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
