//! Idempotent producers through a replicated partition: three replicas in one thread, on
//! real files through the real runtime, exchanging raft-rs's messages in memory (the
//! harness of `tests.rs`). A retried batch must be written once and answered with the
//! original's offsets — at the leader that took it (in flight, persisted or committed), and
//! at a new leader after a fail-over, whether the old leader's batch had committed or not;
//! a sequence gap and an older epoch are refused with nothing written; a retry waiting for
//! its original is refused with `NotLeader` when the leader steps down.

use bytes::Bytes;
use ringlog_engine::batch::BatchBuilder;
use ringlog_engine::log::{Appended, LogError, ProducerError};
use ringlog_engine::rt;

use crate::replica::ReplicaError;
use crate::tests::{answered, assert_identical, Answer, Cluster, MAX_MESSAGE_BYTES, NODES};

/// A batch of `count` records of producer `pid` at `epoch` from `sequence`; values are
/// `"{pid}/{epoch}/{sequence + i}"`.
fn idempotent(pid: i64, epoch: i16, sequence: i32, count: i32) -> Bytes {
    let mut builder = BatchBuilder::new().producer(pid, epoch, sequence);
    for i in 0..count {
        let value = format!("{pid}/{epoch}/{}", sequence + i);
        builder
            .push(i64::from(i), None, Some(value.as_bytes()), &[])
            .unwrap();
    }
    Bytes::from(builder.build())
}

fn propose(cluster: &mut Cluster, node: u64, batches: &[u8]) -> Result<Answer, ReplicaError> {
    let replica = cluster.replicas.get_mut(&node).unwrap();
    replica.propose(batches, MAX_MESSAGE_BYTES)
}

/// The offsets of an answer that must have come, and succeeded.
fn range(answer: &mut Answer) -> (i64, i64) {
    let appended: Appended = answered(answer).expect("answered").unwrap();
    (appended.offset_first, appended.offset_next)
}

/// The producer error a proposal was refused with.
fn producer_error(proposed: Result<Answer, ReplicaError>) -> ProducerError {
    match proposed {
        Err(ReplicaError::Log {
            source: LogError::Producer { source, .. },
            ..
        }) => source,
        Err(other) => panic!("expected a producer error, got {other:?}"),
        Ok(_) => panic!("expected a producer error, the batch was proposed"),
    }
}

/// Ticks every replica and settles until `done` holds.
async fn tick_until(cluster: &mut Cluster, done: impl Fn(&Cluster) -> bool) {
    for _ in 0..200 {
        if done(cluster) {
            return;
        }
        for replica in cluster.replicas.values_mut() {
            replica.tick();
        }
        cluster.settle().await;
    }
    panic!("the cluster never got there");
}

/// Ticks until `node` leads, and stops right there: the new leader's first entries are
/// persisted on it and on nothing else yet, so nothing of its term is committed.
async fn elect_and_stop(cluster: &mut Cluster, node: u64) {
    for _ in 0..200 {
        for replica in cluster.replicas.values_mut() {
            replica.tick();
        }
        if cluster
            .settle_until(|cluster| cluster.replicas[&node].is_leader())
            .await
        {
            return;
        }
    }
    panic!("node {node} was not elected");
}

fn log_end(cluster: &Cluster, node: u64) -> i64 {
    cluster.replicas[&node].log().offsets().log_end
}

#[test]
fn a_retry_at_the_leader_is_written_once_and_answered_with_the_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        let mut plain = cluster.propose(leader, "a", 2);
        let produced = idempotent(7, 0, 0, 3);
        let mut original = propose(&mut cluster, leader, &produced).unwrap();
        // Retried while the original is proposed but not yet persisted anywhere.
        let mut proposed = propose(&mut cluster, leader, &produced).unwrap();
        cluster.settle().await;
        assert_eq!(range(&mut plain), (0, 2));
        assert_eq!(range(&mut original), (2, 5));
        assert_eq!(range(&mut proposed), (2, 5), "retried while proposed");
        // Retried once committed: answered at once, nothing proposed.
        let mut committed = propose(&mut cluster, leader, &produced).unwrap();
        assert_eq!(range(&mut committed), (2, 5), "retried once committed");
        assert!(
            !cluster.replicas[&leader].has_ready(),
            "nothing was proposed"
        );

        // Retried once persisted on the leader, before it commits.
        let next = idempotent(7, 0, 3, 1);
        let mut original = propose(&mut cluster, leader, &next).unwrap();
        let replica = cluster.replicas.get_mut(&leader).unwrap();
        let sent = replica.process_ready().await.unwrap();
        cluster.in_flight.extend(sent);
        assert_eq!(log_end(&cluster, leader), 6, "persisted on the leader");
        assert_eq!(
            cluster.replicas[&leader].high_watermark(),
            5,
            "not committed"
        );
        let mut persisted = propose(&mut cluster, leader, &next).unwrap();
        assert!(answered(&mut persisted).is_none(), "waits for the commit");
        cluster.settle().await;
        assert_eq!(range(&mut original), (5, 6));
        assert_eq!(range(&mut persisted), (5, 6), "retried while persisted");

        let values = assert_identical(&cluster).await;
        assert_eq!(
            values,
            ["a-0", "a-1", "7/0/0", "7/0/1", "7/0/2", "7/0/3"],
            "each idempotent batch once"
        );
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_sequence_gap_and_an_older_epoch_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        let mut first = propose(&mut cluster, leader, &idempotent(7, 1, 0, 2)).unwrap();
        cluster.settle().await;
        assert_eq!(range(&mut first), (0, 2));

        // Against the committed batch.
        let gap = producer_error(propose(&mut cluster, leader, &idempotent(7, 1, 5, 1)));
        assert!(
            matches!(
                gap,
                ProducerError::OutOfOrder {
                    sequence: 5,
                    expected: 2,
                    ..
                }
            ),
            "{gap:?}"
        );
        let fenced = producer_error(propose(&mut cluster, leader, &idempotent(7, 0, 2, 1)));
        assert!(
            matches!(
                fenced,
                ProducerError::EpochFenced {
                    epoch: 0,
                    current: 1,
                    ..
                }
            ),
            "{fenced:?}"
        );
        let new_epoch = producer_error(propose(&mut cluster, leader, &idempotent(7, 2, 3, 1)));
        assert!(
            matches!(new_epoch, ProducerError::OutOfOrder { expected: 0, .. }),
            "a new epoch starts at sequence 0: {new_epoch:?}"
        );
        assert!(
            !cluster.replicas[&leader].has_ready(),
            "nothing was proposed"
        );

        // Against batches proposed and not yet persisted.
        let mut second = propose(&mut cluster, leader, &idempotent(7, 1, 2, 1)).unwrap();
        let gap = producer_error(propose(&mut cluster, leader, &idempotent(7, 1, 4, 1)));
        assert!(
            matches!(
                gap,
                ProducerError::OutOfOrder {
                    sequence: 4,
                    expected: 3,
                    ..
                }
            ),
            "checked against the batch in flight: {gap:?}"
        );
        let mut third = propose(&mut cluster, leader, &idempotent(7, 1, 3, 1)).unwrap();
        let mut bumped = propose(&mut cluster, leader, &idempotent(7, 2, 0, 1)).unwrap();
        let fenced = producer_error(propose(&mut cluster, leader, &idempotent(7, 1, 4, 1)));
        assert!(
            matches!(
                fenced,
                ProducerError::EpochFenced {
                    epoch: 1,
                    current: 2,
                    ..
                }
            ),
            "fenced by the epoch in flight: {fenced:?}"
        );
        // An idempotent producer sends one batch per partition and request.
        let mut two = idempotent(8, 0, 0, 1).to_vec();
        two.extend_from_slice(&crate::tests::batch("x", 1));
        let several = producer_error(propose(&mut cluster, leader, &two));
        assert!(
            matches!(
                several,
                ProducerError::MultipleBatches { batch_count: 2, .. }
            ),
            "{several:?}"
        );
        cluster.settle().await;
        assert_eq!(range(&mut second), (2, 3));
        assert_eq!(range(&mut third), (3, 4));
        assert_eq!(range(&mut bumped), (4, 5));
        let values = assert_identical(&cluster).await;
        assert_eq!(values, ["7/1/0", "7/1/1", "7/1/2", "7/1/3", "7/2/0"]);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_retry_at_a_new_leader_of_a_committed_batch_gets_the_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let first_leader = cluster.elect(|_| true).await;
        let mut plain = cluster.propose(first_leader, "a", 2);
        let produced = idempotent(7, 0, 0, 3);
        let mut original = propose(&mut cluster, first_leader, &produced).unwrap();
        cluster.settle().await;
        assert_eq!(range(&mut plain), (0, 2));
        assert_eq!(range(&mut original), (2, 5));

        // The leader dies with the acknowledgement lost; the producer retries at the next.
        cluster.isolated.insert(first_leader);
        let second_leader = cluster.elect(|leader| leader != first_leader).await;
        let mut retry = propose(&mut cluster, second_leader, &produced).unwrap();
        let at_once = answered(&mut retry).map(|answer| {
            let appended = answer.unwrap();
            (appended.offset_first, appended.offset_next)
        });
        cluster.settle().await;
        assert_eq!(
            log_end(&cluster, second_leader),
            5,
            "the retry is not written"
        );
        assert_eq!(at_once, Some((2, 5)), "answered at once, as committed");
        let mut next = propose(&mut cluster, second_leader, &idempotent(7, 0, 3, 1)).unwrap();
        cluster.settle().await;
        assert_eq!(range(&mut next), (5, 6), "the sequence goes on");

        cluster.isolated.clear();
        // Every replica has the records and knows they committed (its reads stop at
        // its commit end).
        tick_until(&mut cluster, |cluster| {
            NODES.iter().all(|node| {
                log_end(cluster, *node) == 6 && cluster.replicas[node].high_watermark() == 6
            })
        })
        .await;
        cluster.settle().await;
        let values = assert_identical(&cluster).await;
        assert_eq!(values, ["a-0", "a-1", "7/0/0", "7/0/1", "7/0/2", "7/0/3"]);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_retry_at_a_new_leader_of_a_batch_not_yet_committed_waits_for_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let first_leader = cluster.elect(|_| true).await;
        let mut plain = cluster.propose(first_leader, "a", 2);
        cluster.settle().await;
        assert_eq!(range(&mut plain), (0, 2));
        let others: Vec<u64> = NODES.into_iter().filter(|n| *n != first_leader).collect();
        let (next_leader, third) = (others[0], others[1]);

        // The old leader's batch reaches one follower, whose acknowledgement is lost: it
        // is on two replicas of three, committed nowhere.
        cluster.isolated.insert(third);
        cluster.blocked.insert((next_leader, first_leader));
        let produced = idempotent(7, 0, 0, 3);
        let mut original = propose(&mut cluster, first_leader, &produced).unwrap();
        cluster.settle().await;
        assert_eq!(log_end(&cluster, first_leader), 5);
        assert_eq!(log_end(&cluster, next_leader), 5);
        assert!(answered(&mut original).is_none());

        // The old leader dies; the follower holding the batch is elected and commits
        // nothing of its term yet: the third replica is cut off the moment it leads.
        cluster.isolated = [first_leader].into();
        cluster.blocked.clear();
        elect_and_stop(&mut cluster, next_leader).await;
        cluster.isolated.insert(third);
        assert_eq!(cluster.replicas[&next_leader].high_watermark(), 2);
        let mut retry = propose(&mut cluster, next_leader, &produced).unwrap();
        cluster.settle().await;
        assert!(
            answered(&mut retry).is_none(),
            "waits for the original's commit"
        );
        assert_eq!(
            log_end(&cluster, next_leader),
            5,
            "the retry is not written"
        );

        // The third replica is back: the new leader commits the old leader's batch.
        cluster.isolated.remove(&third);
        tick_until(&mut cluster, |cluster| {
            cluster.replicas[&next_leader].high_watermark() >= 5
        })
        .await;
        assert_eq!(range(&mut retry), (2, 5), "the original's offsets");
        let mut next = propose(&mut cluster, next_leader, &idempotent(7, 0, 3, 1)).unwrap();
        cluster.settle().await;
        assert_eq!(range(&mut next), (5, 6), "the sequence goes on");

        cluster.isolated.clear();
        // Every replica has the records and knows they committed (its reads stop at
        // its commit end).
        tick_until(&mut cluster, |cluster| {
            NODES.iter().all(|node| {
                log_end(cluster, *node) == 6 && cluster.replicas[node].high_watermark() == 6
            })
        })
        .await;
        cluster.settle().await;
        let values = assert_identical(&cluster).await;
        assert_eq!(values, ["a-0", "a-1", "7/0/0", "7/0/1", "7/0/2", "7/0/3"]);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_retry_waiting_at_a_leader_that_steps_down_is_refused_and_goes_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let first_leader = cluster.elect(|_| true).await;
        // Cut off, the leader still takes the batch and its retry, and commits neither.
        cluster.isolated.insert(first_leader);
        let produced = idempotent(7, 0, 0, 3);
        let mut original = propose(&mut cluster, first_leader, &produced).unwrap();
        let mut retry = propose(&mut cluster, first_leader, &produced).unwrap();
        cluster.settle().await;
        assert_eq!(
            log_end(&cluster, first_leader),
            3,
            "the retry is not written"
        );
        assert!(answered(&mut retry).is_none());

        let second_leader = cluster.elect(|leader| leader != first_leader).await;
        cluster.isolated.clear();
        tick_until(&mut cluster, |cluster| {
            !cluster.replicas[&first_leader].is_leader()
        })
        .await;
        for answer in [&mut original, &mut retry] {
            match answered(answer) {
                Some(Err(ReplicaError::NotLeader { .. })) => {}
                other => panic!("a proposal or retry at a deposed leader: {other:?}"),
            }
        }
        // The batch never left the old leader: at the new one, the retry is new.
        let mut moved = propose(&mut cluster, second_leader, &produced).unwrap();
        cluster.settle().await;
        assert_eq!(range(&mut moved), (0, 3));
        // Every replica has the records and knows they committed (its reads stop at
        // its commit end).
        tick_until(&mut cluster, |cluster| {
            NODES.iter().all(|node| {
                log_end(cluster, *node) == 3 && cluster.replicas[node].high_watermark() == 3
            })
        })
        .await;
        let values = assert_identical(&cluster).await;
        assert_eq!(values, ["7/0/0", "7/0/1", "7/0/2"]);
        cluster.close().await;
    })
    .unwrap();
}
