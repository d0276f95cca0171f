use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 60_000;

fn request(member_id: &str, instance_id: Option<&str>, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_owned(),
        instance_id: instance_id.map(str::to_owned),
        client_id: "client".to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".to_owned(),
        protocols: protocols
            .iter()
            .map(|name| ((*name).to_owned(), Bytes::from(format!("{name}-meta"))))
            .collect(),
        require_known_member_id: true,
    }
}

/// An Empty group with the default initial delay, an id maker, and the time.
fn fresh() -> (Group, Ids, Instant) {
    (
        Group::new("g".into(), INITIAL_REBALANCE_DELAY),
        Ids(0),
        Instant::now(),
    )
}

struct Ids(u32);

impl Ids {
    fn make(&mut self) -> impl FnMut(&str) -> String + '_ {
        |prefix: &str| {
            self.0 += 1;
            format!("{prefix}-{}", self.0)
        }
    }
}

fn now_answer<T: std::fmt::Debug>(reply: Reply<T>) -> T {
    match reply {
        Reply::Now(answer) => answer,
        Reply::Later(_) => panic!("expected an answer now"),
    }
}

fn later<T>(reply: Reply<T>) -> oneshot::Receiver<T> {
    match reply {
        Reply::Later(answer) => answer,
        Reply::Now(_) => panic!("expected an answer later"),
    }
}

fn ready<T>(answer: &mut oneshot::Receiver<T>) -> Option<T> {
    answer.try_recv().expect("the waiter is not dropped")
}

/// Joins a dynamic member the v4 way (MEMBER_ID_REQUIRED, then again with the id).
fn join_dynamic(
    group: &mut Group,
    ids: &mut Ids,
    now: Instant,
) -> (String, oneshot::Receiver<JoinOutcome>) {
    let first = now_answer(group.join(&request("", None, &["range"]), now, &mut ids.make()));
    assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
    let member_id = first.member_id;
    let answer = later(group.join(&request(&member_id, None, &["range"]), now, &mut ids.make()));
    (member_id, answer)
}

/// Two members through the initial delay to Stable; returns (leader, follower).
fn stable_pair(group: &mut Group, ids: &mut Ids, now: Instant) -> (String, String) {
    let (a, mut a_join) = join_dynamic(group, ids, now);
    let (b, mut b_join) = join_dynamic(group, ids, now);
    group.tick(now + INITIAL_REBALANCE_DELAY);
    let (a_out, b_out) = (ready(&mut a_join).unwrap(), ready(&mut b_join).unwrap());
    let leader = a_out.leader.clone();
    let follower = if leader == a { b.clone() } else { a.clone() };
    let generation = a_out.generation;
    assert_eq!(b_out.generation, generation);
    let assignments = vec![
        (leader.clone(), Bytes::from_static(b"L")),
        (follower.clone(), Bytes::from_static(b"F")),
    ];
    let SyncStep::Reply(reply) = group.sync(&follower, None, generation, Vec::new(), now) else {
        panic!("a follower's sync never persists");
    };
    let mut follower_sync = later(reply);
    let SyncStep::Persist {
        generation: persisted,
        answer: mut leader_sync,
    } = group.sync(&leader, None, generation, assignments, now)
    else {
        panic!("the leader's sync persists the group");
    };
    group.finish_sync(persisted, Ok(()), now);
    assert_eq!(group.state(), GroupState::Stable);
    assert_eq!(ready(&mut leader_sync).unwrap().assignment, "L");
    assert_eq!(ready(&mut follower_sync).unwrap().assignment, "F");
    (leader, follower)
}

#[test]
fn two_members_join_after_the_initial_delay_and_get_the_leaders_assignment() {
    let (mut group, mut ids, now) = fresh();
    let (a, mut a_join) = join_dynamic(&mut group, &mut ids, now);
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    // Everyone has joined, but a group leaving Empty waits for more members.
    group.tick(now + Duration::from_millis(100));
    assert!(ready(&mut a_join).is_none());
    let (b, mut b_join) = join_dynamic(&mut group, &mut ids, now + Duration::from_secs(1));
    group.tick(now + INITIAL_REBALANCE_DELAY);
    assert!(
        ready(&mut a_join).is_none(),
        "b's join pushed the delay out"
    );
    group.tick(now + Duration::from_secs(1) + INITIAL_REBALANCE_DELAY);
    let a_out = ready(&mut a_join).unwrap();
    let b_out = ready(&mut b_join).unwrap();
    assert_eq!((a_out.generation, b_out.generation), (1, 1));
    assert_eq!(a_out.protocol.as_deref(), Some("range"));
    assert_eq!(a_out.leader, b_out.leader);
    let (leader_out, follower_out) = if a_out.leader == a {
        (a_out, b_out)
    } else {
        (b_out, a_out)
    };
    let mut listed: Vec<&str> = leader_out
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    listed.sort_unstable();
    let mut expected = [a.as_str(), b.as_str()];
    expected.sort_unstable();
    assert_eq!(listed, expected, "the leader sees every member");
    assert!(follower_out.members.is_empty(), "followers see none");
    assert_eq!(group.state(), GroupState::CompletingRebalance);
}

#[test]
fn a_member_whose_session_expires_is_removed_and_the_rest_rebalance() {
    let (mut group, mut ids, now) = fresh();
    let (leader, follower) = stable_pair(&mut group, &mut ids, now);
    let later_now = now + Duration::from_millis(u64::try_from(SESSION_MS).unwrap() - 1);
    assert_eq!(group.heartbeat(&leader, None, 1, later_now), None);
    group.tick(now + Duration::from_millis(u64::try_from(SESSION_MS).unwrap()));
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    assert_eq!(
        group.heartbeat(&leader, None, 1, later_now),
        Some(ResponseError::RebalanceInProgress)
    );
    assert_eq!(
        group.heartbeat(&follower, None, 1, later_now),
        Some(ResponseError::UnknownMemberId)
    );
    // The survivor rejoins; not leaving Empty, so no delay.
    let mut rejoin = later(group.join(
        &request(&leader, None, &["range"]),
        later_now,
        &mut ids.make(),
    ));
    let out = ready(&mut rejoin).unwrap();
    assert_eq!((out.generation, out.members.len()), (2, 1));
}

#[test]
fn the_last_member_leaving_empties_the_group_at_a_new_generation() {
    let (mut group, mut ids, now) = fresh();
    let (leader, follower) = stable_pair(&mut group, &mut ids, now);
    assert_eq!(group.leave(&follower, None, now), None);
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    assert_eq!(
        group.leave("nobody", None, now),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(group.leave(&leader, None, now), None);
    assert_eq!(group.state(), GroupState::Empty);
    assert_eq!(group.generation(), 2);
    assert!(group.membership_dirty);
}

#[test]
fn a_static_member_rejoining_takes_a_new_id_without_a_rebalance_and_fences_the_old() {
    let (mut group, mut ids, now) = fresh();
    let mut a_join = later(group.join(&request("", Some("i-a"), &["range"]), now, &mut ids.make()));
    let mut b_join = later(group.join(&request("", Some("i-b"), &["range"]), now, &mut ids.make()));
    group.tick(now + INITIAL_REBALANCE_DELAY);
    let (a_out, b_out) = (ready(&mut a_join).unwrap(), ready(&mut b_join).unwrap());
    let (leader, follower) = if a_out.leader == a_out.member_id {
        (a_out, b_out)
    } else {
        (b_out, a_out)
    };
    let SyncStep::Persist { generation, .. } = group.sync(
        &leader.member_id,
        None,
        1,
        vec![(follower.member_id.clone(), Bytes::from_static(b"F"))],
        now,
    ) else {
        panic!("the leader's sync persists");
    };
    group.finish_sync(generation, Ok(()), now);
    let instance = if follower.member_id.starts_with("i-a") {
        "i-a"
    } else {
        "i-b"
    };
    let again = now_answer(group.join(
        &request("", Some(instance), &["range"]),
        now,
        &mut ids.make(),
    ));
    assert_eq!(again.error, None);
    assert_eq!(again.generation, 1, "no rebalance");
    assert_ne!(again.member_id, follower.member_id);
    assert_eq!(group.state(), GroupState::Stable);
    assert_eq!(
        group.heartbeat(&follower.member_id, Some(instance), 1, now),
        Some(ResponseError::FencedInstanceId)
    );
    let SyncStep::Reply(Reply::Now(sync)) =
        group.sync(&again.member_id, Some(instance), 1, vec![], now)
    else {
        panic!("a stable group answers at once");
    };
    assert_eq!(sync.assignment, "F", "the assignment moved to the new id");
}

#[test]
fn bad_joins_are_refused() {
    let (mut group, mut ids, now) = fresh();
    let mut short = request("", None, &["range"]);
    short.session_timeout_ms = SESSION_TIMEOUT_MS_MIN - 1;
    let out = now_answer(group.join(&short, now, &mut ids.make()));
    assert_eq!(out.error, Some(ResponseError::InvalidSessionTimeout));
    let out = now_answer(group.join(&request("ghost", None, &["range"]), now, &mut ids.make()));
    assert_eq!(out.error, Some(ResponseError::UnknownMemberId));
    let _ = join_dynamic(&mut group, &mut ids, now);
    let out = now_answer(group.join(&request("", None, &["sticky"]), now, &mut ids.make()));
    assert_eq!(out.error, Some(ResponseError::InconsistentGroupProtocol));
}

#[test]
fn the_protocol_most_members_prefer_among_common_ones_wins() {
    let (mut group, mut ids, now) = fresh();
    let mut joins = Vec::new();
    for protocols in [
        &["roundrobin", "range"][..],
        &["range", "roundrobin"][..],
        &["range", "roundrobin", "sticky"][..],
    ] {
        let first = now_answer(group.join(&request("", None, protocols), now, &mut ids.make()));
        joins.push(later(group.join(
            &request(&first.member_id, None, protocols),
            now,
            &mut ids.make(),
        )));
    }
    group.tick(now + INITIAL_REBALANCE_DELAY);
    for join in &mut joins {
        assert_eq!(ready(join).unwrap().protocol.as_deref(), Some("range"));
    }
}

#[test]
fn commits_are_checked_against_membership_and_generation() {
    let (mut group, mut ids, now) = fresh();
    assert_eq!(
        group.check_commit("", None, -1, now),
        Ok(()),
        "manual commit"
    );
    let (leader, _) = stable_pair(&mut group, &mut ids, now);
    assert_eq!(group.check_commit(&leader, None, 1, now), Ok(()));
    assert_eq!(
        group.check_commit(&leader, None, 0, now),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        group.check_commit("", None, -1, now),
        Err(ResponseError::UnknownMemberId),
        "a group with members takes no manual commits"
    );
}

#[test]
fn a_failed_persist_answers_the_sync_with_the_error_and_rebalances() {
    let (mut group, mut ids, now) = fresh();
    let (mut a_join, mut b_join) = (
        join_dynamic(&mut group, &mut ids, now),
        join_dynamic(&mut group, &mut ids, now),
    );
    group.tick(now + INITIAL_REBALANCE_DELAY);
    let leader = ready(&mut a_join.1).unwrap().leader;
    let _ = ready(&mut b_join.1);
    let SyncStep::Persist {
        generation,
        mut answer,
    } = group.sync(&leader, None, 1, vec![], now)
    else {
        panic!("the leader's sync persists");
    };
    group.finish_sync(generation, Err(ResponseError::CoordinatorNotAvailable), now);
    assert_eq!(
        ready(&mut answer).unwrap().error,
        Some(ResponseError::CoordinatorNotAvailable)
    );
    assert_eq!(group.state(), GroupState::PreparingRebalance);
}

#[test]
fn a_record_restores_the_membership() {
    let (mut group, mut ids, now) = fresh();
    let (leader, follower) = stable_pair(&mut group, &mut ids, now);
    let record = group.to_record(1);
    let mut restored = Group::new("g".into(), INITIAL_REBALANCE_DELAY);
    restored.restore(record.clone(), now);
    assert_eq!(restored.state(), GroupState::Stable);
    assert_eq!(restored.generation(), 1);
    assert_eq!(restored.to_record(1), record);
    assert_eq!(restored.heartbeat(&follower, None, 1, now), None);
    let SyncStep::Reply(Reply::Now(sync)) = restored.sync(&leader, None, 1, vec![], now) else {
        panic!("a stable group answers at once");
    };
    assert_eq!(sync.assignment, "L");
}

#[test]
fn a_static_member_replaced_while_the_leader_assigns_makes_the_group_join_again() {
    let (mut group, mut ids, now) = fresh();
    let mut a_join = later(group.join(&request("", Some("i-a"), &["range"]), now, &mut ids.make()));
    let mut b_join = later(group.join(&request("", Some("i-b"), &["range"]), now, &mut ids.make()));
    group.tick(now + INITIAL_REBALANCE_DELAY);
    let (a, _) = (ready(&mut a_join).unwrap(), ready(&mut b_join).unwrap());
    assert_eq!(group.state(), GroupState::CompletingRebalance);
    let follower = if a.leader == a.member_id {
        "i-b"
    } else {
        "i-a"
    };
    // The follower restarts before the leader's assignment (keyed by its old id) is in.
    let rejoin = group.join(
        &request("", Some(follower), &["range"]),
        now,
        &mut ids.make(),
    );
    assert!(
        matches!(rejoin, Reply::Later(_)),
        "no answer from the old generation"
    );
    assert_eq!(group.state(), GroupState::PreparingRebalance);
}
