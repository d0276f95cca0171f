//! A group's voters changed under load ([`Replica::reconfigure`]): a replica new to the
//! group joins with no configuration, takes a snapshot that carries it, catches up as a
//! learner, becomes a voter, and a replica leaves, the leader among them (it hands its
//! leadership over first). Every replica of the new set then holds the same log, and
//! commits go on without the one that left.

use std::path::Path;

use ringlog_engine::rt;
use ringlog_engine::storage::DiskStorage;

use crate::replica::{Reconfiguring, Replica, ReplicaConfig};
use crate::snapshot_tests::fill_from_peers;
use crate::tests::{answered, assert_identical, config, id, topic, values, Cluster};

/// Ticks, lets the leader take its next step towards `target`, and settles, until a
/// leader says it is done; returns how many rounds that took. Proposes a batch now and
/// then, so the change happens while the group takes writes.
async fn reconfigure(cluster: &mut Cluster, target: &[u64], proposed: &mut usize) -> usize {
    for round in 0..400 {
        cluster.tick();
        let leader = (cluster.replicas.iter())
            .find(|(node, replica)| replica.is_leader() && !cluster.isolated.contains(node))
            .map(|(node, _)| *node);
        if let Some(leader) = leader {
            let replica = cluster.replicas.get_mut(&leader).unwrap();
            if replica.reconfigure(target).await.unwrap() == Reconfiguring::Done {
                return round;
            }
            if round % 5 == 0 && replica.leads_with_own_commit() {
                let mut answer = cluster.propose(leader, &format!("during{proposed}"), 2);
                *proposed += 1;
                cluster.settle().await;
                // Committed, or lost to a leadership change (the client would retry).
                if let Some(Ok(_)) = answered(&mut answer) {
                    continue;
                }
                *proposed -= 1;
            }
        }
        cluster.settle().await;
    }
    panic!("the group's voters did not become {target:?}");
}

/// Node 4's replica, opened (in `dir/node-4`) with no configuration of its own.
async fn open_joining(dir: &Path) -> Replica<DiskStorage> {
    open_joining_as(dir, 4).await
}

/// Node `node`'s replica, opened (in `dir/node-N`) with no configuration of its own.
async fn open_joining_as(dir: &Path, node: u64) -> Replica<DiskStorage> {
    let joining = ReplicaConfig {
        voters: Vec::new(),
        ..config(node)
    };
    let path = dir.join(format!("node-{node}"));
    Replica::open(DiskStorage, &path, id(), topic(), &joining)
        .await
        .unwrap()
}

/// Proposes `count` records tagged `tag` at `node` and waits until they commit.
async fn commit(cluster: &mut Cluster, node: u64, tag: &str, count: usize) {
    let mut answer = cluster.propose(node, tag, count);
    cluster.settle().await;
    assert!(answered(&mut answer).unwrap().is_ok(), "{tag} committed");
}

/// Every replica of `target` has it as the group's voters, and no learner.
fn assert_members(cluster: &Cluster, target: &[u64]) {
    for &node in target {
        let members = cluster.replicas[&node].members();
        assert_eq!(members, (target.to_vec(), vec![]), "node {node}");
    }
}

/// Closes the replicas of `gone`; the others elect a leader, commit `count` records
/// tagged "after" without them, and catch up. Returns the records they all hold.
async fn commit_without(cluster: &mut Cluster, gone: &[u64], count: usize) -> Vec<String> {
    for node in gone {
        let left = cluster.replicas.remove(node).unwrap();
        left.close().await.unwrap();
    }
    let leader = cluster.elect(|_| true).await;
    commit(cluster, leader, "after", count).await;
    for _ in 0..20 {
        cluster.tick();
        cluster.settle().await;
    }
    assert_identical(cluster).await
}

#[test]
fn a_new_replica_joins_by_snapshot_and_the_leader_leaves_the_group() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        // The set leaves out the leader: it must hand its leadership over before it goes.
        let mut target: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&n| n != leader).collect();
        target.sort_unstable();
        let gone = leader;
        for round in 0..4 {
            commit(&mut cluster, leader, &format!("before{round}"), 3).await;
        }
        // Node 4 opens with no configuration: it may not vote or campaign until the
        // group's snapshot tells it what the group is.
        let replica = open_joining(dir.path()).await;
        assert_eq!(replica.members(), (vec![], vec![]));
        cluster.replicas.insert(4, replica);
        let fetches = fill_from_peers(&mut cluster, 4, None);

        let mut proposed = 0;
        reconfigure(&mut cluster, &target, &mut proposed).await;
        assert!(fetches.get() > 0, "node 4 filled its log from a snapshot");
        assert_members(&cluster, &target);
        assert!(
            !cluster.replicas[&gone].is_leader(),
            "the leader left the group"
        );

        // The old leader is gone: the group commits without it, and the new set holds
        // one log.
        let read = commit_without(&mut cluster, &[gone], 3).await;
        let mut expected: Vec<String> = (0..4)
            .flat_map(|round| (0..3).map(move |i| format!("before{round}-{i}")))
            .collect();
        expected.extend((0..proposed).flat_map(|n| (0..2).map(move |i| format!("during{n}-{i}"))));
        expected.extend((0..3).map(|i| format!("after-{i}")));
        let mut sorted = read.clone();
        sorted.sort();
        expected.sort();
        assert_eq!(
            sorted, expected,
            "every committed record once, on every replica"
        );
        assert_eq!(read, values(&cluster.logs().await[&4]));

        // The configuration is durable: node 4 reopens as a voter of the new set.
        let node4 = cluster.replicas.remove(&4).unwrap();
        node4.close().await.unwrap();
        let reopened = open_joining(dir.path()).await;
        assert_eq!(reopened.members(), (target, vec![]));
    })
    .unwrap();
}

#[test]
fn a_reassignment_cancelled_once_its_new_replica_joined_takes_the_learner_out() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        commit(&mut cluster, leader, "before", 3).await;
        let replica = open_joining(dir.path()).await;
        cluster.replicas.insert(4, replica);
        let _fetches = fill_from_peers(&mut cluster, 4, None);
        // Towards 1..=4 until node 4 is a learner of the group.
        let mut joined = false;
        for _ in 0..100 {
            cluster.tick();
            let replica = cluster.replicas.get_mut(&leader).unwrap();
            replica.reconfigure(&[1, 2, 3, 4]).await.unwrap();
            cluster.settle().await;
            joined = cluster.replicas[&leader].members().1 == [4];
            if joined {
                break;
            }
        }
        assert!(joined, "node 4 never joined as a learner");
        // Cancelled: the target is the set again, and the learner leaves.
        let mut proposed = 0;
        reconfigure(&mut cluster, &[1, 2, 3], &mut proposed).await;
        assert_members(&cluster, &[1, 2, 3]);
        let leader = cluster.elect(|node| node != 4).await;
        commit(&mut cluster, leader, "after", 2).await;
    })
    .unwrap();
}

#[test]
fn two_replicas_join_at_once_through_joint_consensus() {
    // Two learners added in one change enter a joint configuration, which raft-rs leaves
    // by a second change: a snapshot taken between the two must not carry a configuration
    // newer than its index (the joiner would replay the change on a configuration that
    // holds it already, and stop).
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        for round in 0..3 {
            commit(&mut cluster, leader, &format!("before{round}"), 3).await;
        }
        for node in [4, 5] {
            let replica = open_joining_as(dir.path(), node).await;
            cluster.replicas.insert(node, replica);
        }
        let _fills = [4, 5].map(|node| fill_from_peers(&mut cluster, node, None));
        let staying = (1..=3).find(|&n| n != leader).unwrap();
        let mut target = vec![staying, 4, 5];
        target.sort_unstable();
        let mut proposed = 0;
        reconfigure(&mut cluster, &target, &mut proposed).await;
        assert_members(&cluster, &target);
        for _ in 0..20 {
            cluster.tick();
            cluster.settle().await;
        }
        let gone: Vec<u64> = (1..=3).filter(|n| !target.contains(n)).collect();
        let read = commit_without(&mut cluster, &gone, 2).await;
        assert_eq!(read.len(), 3 * 3 + 2 * proposed + 2, "{read:?}");
    })
    .unwrap();
}
