//! Hibernation (`hibernation.rs`) on three real replicas exchanging messages in memory
//! (`tests.rs`): an idle group falls asleep and then sends nothing, a proposal wakes it,
//! a dead leader's followers wake and elect, a restarted follower wakes the group without
//! an election.

use std::path::Path;

use ringlog_engine::rt;
use ringlog_engine::storage::DiskStorage;

use crate::replica::{Replica, ReplicaConfig};
use crate::tests::{answered, assert_identical, config, id, topic, Cluster, NODES};

fn hibernating(node: u64) -> ReplicaConfig {
    ReplicaConfig {
        hibernate: true,
        ..config(node)
    }
}

async fn open(dir: &Path) -> Cluster {
    Cluster::open_with(dir, hibernating).await
}

/// A group with a leader and two committed records on every replica.
async fn with_records(dir: &Path) -> (Cluster, u64) {
    let mut cluster = open(dir).await;
    let leader = cluster.elect(|_| true).await;
    let mut answer = cluster.propose(leader, "before", 2);
    cluster.settle().await;
    assert!(answered(&mut answer).unwrap().is_ok());
    (cluster, leader)
}

/// Ticks (settling after each) until every replica sleeps; how many ticks it took.
async fn sleep(cluster: &mut Cluster) -> usize {
    for ticks in 1..=100 {
        cluster.tick();
        cluster.settle().await;
        if cluster.replicas.values().all(Replica::asleep) {
            return ticks;
        }
    }
    panic!("the idle group never fell asleep");
}

/// Ticks `count` times, asserting that nothing is sent and everyone stays asleep.
async fn assert_silent(cluster: &mut Cluster, count: usize) {
    for _ in 0..count {
        cluster.tick();
        let sent = cluster
            .settle_until(|cluster| !cluster.in_flight.is_empty() || !cluster.signals.is_empty())
            .await;
        assert!(!sent, "a sleeping group sent something");
        assert!(cluster.replicas.values().all(Replica::asleep));
    }
}

#[test]
fn an_idle_group_sleeps_sends_nothing_and_a_proposal_wakes_it_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let (mut cluster, leader) = with_records(dir.path()).await;

        // Quiet for an election timeout (10 ticks), then one round of asking.
        let ticks = sleep(&mut cluster).await;
        assert!((10..=14).contains(&ticks), "asleep after {ticks} ticks");
        let term = cluster.replicas[&leader].term();
        assert_silent(&mut cluster, 100).await;

        // A proposal wakes the leader, its appends the followers; it commits everywhere.
        let mut answer = cluster.propose(leader, "woken", 3);
        assert!(!cluster.replicas[&leader].asleep());
        cluster.settle().await;
        assert_eq!(answered(&mut answer).unwrap().unwrap().offset_first, 2);
        assert!(cluster.replicas.values().all(|replica| !replica.asleep()));
        let values = assert_identical(&cluster).await;
        assert_eq!(values.len(), 5);

        // And it sleeps again, under the same leader in the same term.
        sleep(&mut cluster).await;
        assert_eq!(cluster.replicas[&leader].term(), term);
        assert!(cluster
            .replicas
            .values()
            .all(|r| r.leader() == Some(leader)));
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_group_with_a_follower_behind_does_not_sleep() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        let behind = NODES.into_iter().find(|&node| node != leader).unwrap();
        cluster.isolated.insert(behind);
        let mut answer = cluster.propose(leader, "two-of-three", 2);
        cluster.settle().await;
        assert!(answered(&mut answer).unwrap().is_ok(), "a majority commits");
        for _ in 0..50 {
            cluster.tick();
            cluster.settle().await;
            assert!(
                !cluster.replicas[&leader].asleep(),
                "a leader sleeps with a follower missing entries"
            );
        }
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_sleeping_groups_followers_wake_and_elect_when_the_leaders_node_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let (mut cluster, old_leader) = with_records(dir.path()).await;
        sleep(&mut cluster).await;

        // The leader's node is cut off: nothing tells the sleeping followers but the
        // node's liveness (its connections closed, or a silence of an election timeout).
        cluster.isolated.insert(old_leader);
        assert_silent(&mut cluster, 30).await;
        let followers: Vec<u64> = NODES.into_iter().filter(|&n| n != old_leader).collect();
        for &follower in &followers {
            cluster
                .replicas
                .get_mut(&follower)
                .unwrap()
                .peer_gone(old_leader);
            assert!(!cluster.replicas[&follower].asleep(), "woken");
        }
        let new_leader = cluster.elect(|leader| leader != old_leader).await;
        let mut answer = cluster.propose(new_leader, "after", 1);
        cluster.settle().await;
        assert_eq!(answered(&mut answer).unwrap().unwrap().offset_first, 2);

        // Healed, the old leader (asleep all along) learns the new term when woken.
        cluster.isolated.clear();
        for _ in 0..30 {
            cluster.tick();
            cluster.settle().await;
        }
        assert_eq!(cluster.replicas[&old_leader].leader(), Some(new_leader));
        assert_identical(&cluster).await;
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_restarted_follower_wakes_the_group_and_rejoins_without_an_election() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let (mut cluster, leader) = with_records(dir.path()).await;
        sleep(&mut cluster).await;
        let term = cluster.replicas[&leader].term();

        // A follower's process restarts (its peers are not told here): awake and knowing
        // no leader, it times out and asks for a pre-vote, which wakes whoever hears it;
        // the woken follower wakes the leader, whose heartbeats it then follows.
        let restarted = NODES.into_iter().find(|&node| node != leader).unwrap();
        let replica = cluster.replicas.remove(&restarted).unwrap();
        replica.close().await.unwrap();
        let node_dir = dir.path().join(format!("node-{restarted}"));
        let replica = Replica::open(
            DiskStorage,
            &node_dir,
            id(),
            topic(),
            &hibernating(restarted),
        )
        .await
        .unwrap();
        cluster.replicas.insert(restarted, replica);
        for _ in 0..60 {
            cluster.tick();
            cluster.settle().await;
            if cluster.replicas[&restarted].leader() == Some(leader) {
                break;
            }
        }
        assert_eq!(cluster.replicas[&restarted].leader(), Some(leader));
        assert_eq!(cluster.replicas[&leader].term(), term, "no election");
        sleep(&mut cluster).await;
        cluster.close().await;
    })
    .unwrap();
}
