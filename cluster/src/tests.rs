//! Three replicas of one partition in one thread, on real files through the real io_uring
//! runtime, exchanging raft-rs's messages in memory: elections, replication, a leader cut
//! off while it still takes proposals, healing (its uncommitted entries replaced), and a
//! restart of every replica from disk. After each phase every replica's partition log
//! must be the same bytes, offsets dense from 0, and nothing committed lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use futures::channel::oneshot;
use raft::eraftpb::{Message, MessageType};
use ringlog_engine::batch::{RecordBatch, TimestampType};
use ringlog_engine::log::{Appended, PartitionId, PartitionLog};
use ringlog_engine::rt;
use ringlog_engine::storage::DiskStorage;
pub(crate) use ringlog_engine::testing::tagged_batch as batch;
use ringlog_engine::topic::TopicConfig;

use crate::hibernation::Signal;
use crate::replica::{now_ms, AnswerAt, Replica, ReplicaConfig, ReplicaError};
use crate::snapshot::Fetched;

pub(crate) const NODES: [u64; 3] = [1, 2, 3];
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 20;

pub(crate) fn id() -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("replicated"),
        partition: 0,
    }
}

/// A topic without retention, as a replicated partition needs until snapshots exist.
pub(crate) fn topic() -> TopicConfig {
    TopicConfig::builder()
        .retention_ms(None)
        .retention_bytes(None)
        .build()
        .unwrap()
}

pub(crate) fn config(node_id: u64) -> ReplicaConfig {
    ReplicaConfig {
        node_id,
        voters: NODES.to_vec(),
        election_ticks: 10,
        heartbeat_ticks: 2,
        hibernate: false,
        anchor_sync_ticks: 0,
        entry_cache_bytes_max: crate::limits::ENTRY_CACHE_BYTES_MAX,
        window_entries_keep: crate::limits::WINDOW_ENTRIES_KEEP,
        window_entries_max: crate::limits::WINDOW_ENTRIES_MAX,
    }
}

pub(crate) type Answer = oneshot::Receiver<Result<Appended, ReplicaError>>;

/// The replicas, and which of them (or which links between them) the network cuts off.
pub(crate) struct Cluster {
    dir: PathBuf,
    pub(crate) replicas: BTreeMap<u64, Replica<DiskStorage>>,
    pub(crate) isolated: BTreeSet<u64>,
    /// Links `(from, to)` whose messages are dropped, one way only.
    pub(crate) blocked: BTreeSet<(u64, u64)>,
    /// Messages sent and not yet delivered.
    pub(crate) in_flight: Vec<Message>,
    /// Hibernation signals sent and not yet delivered: (from, to, signal).
    pub(crate) signals: Vec<(u64, u64, Signal)>,
}

impl Cluster {
    pub(crate) async fn open(dir: &Path) -> Cluster {
        Self::open_with(dir, config).await
    }

    /// Opens the replicas with the configuration `config` gives each node.
    pub(crate) async fn open_with(dir: &Path, config: impl Fn(u64) -> ReplicaConfig) -> Cluster {
        Self::open_with_topic(dir, config, topic()).await
    }

    /// Opens the replicas with the configuration `config` gives each node, of a partition
    /// configured as `topic`.
    pub(crate) async fn open_with_topic(
        dir: &Path,
        config: impl Fn(u64) -> ReplicaConfig,
        topic: TopicConfig,
    ) -> Cluster {
        let mut replicas = BTreeMap::new();
        for node in NODES {
            let replica = Replica::open(
                DiskStorage,
                &dir.join(format!("node-{node}")),
                id(),
                topic.clone(),
                &config(node),
            )
            .await
            .unwrap();
            replicas.insert(node, replica);
        }
        Cluster {
            dir: dir.to_path_buf(),
            replicas,
            isolated: BTreeSet::new(),
            blocked: BTreeSet::new(),
            in_flight: Vec::new(),
            signals: Vec::new(),
        }
    }

    fn cut_off(&self, from: u64, to: u64) -> bool {
        self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.blocked.contains(&(from, to))
    }

    /// Processes every replica's Ready and delivers messages until the cluster is quiet.
    pub(crate) async fn settle(&mut self) {
        self.settle_until(|_| false).await;
    }

    /// [`Cluster::settle`], stopping early (true) once `stop` holds after the replicas
    /// processed their Ready: the messages they just sent are then still in flight.
    pub(crate) async fn settle_until(&mut self, stop: impl Fn(&Cluster) -> bool) -> bool {
        for _ in 0..1000 {
            for (&node, replica) in &mut self.replicas {
                if replica.has_ready() {
                    let sent = replica.process_ready().await.unwrap();
                    self.in_flight.extend(sent);
                }
                let signals = replica.take_hibernation_signals();
                (self.signals).extend(signals.into_iter().map(|(to, signal)| (node, to, signal)));
            }
            if stop(self) {
                return true;
            }
            if self.in_flight.is_empty()
                && self.signals.is_empty()
                && self.replicas.values().all(|replica| !replica.has_ready())
            {
                return false;
            }
            for message in std::mem::take(&mut self.in_flight) {
                if self.cut_off(message.from, message.to) {
                    continue;
                }
                if let Some(replica) = self.replicas.get_mut(&message.to) {
                    match replica.step(message) {
                        // A response from a peer the configuration no longer (or does not
                        // yet) count: the node drops it too (`node::is_ignorable`).
                        Err(ReplicaError::Raft {
                            source: raft::Error::StepPeerNotFound,
                            ..
                        }) => {}
                        other => other.unwrap(),
                    }
                }
            }
            // After the messages, as the node sends them after a Ready's messages on the
            // same connection.
            for (from, to, signal) in std::mem::take(&mut self.signals) {
                if !self.cut_off(from, to) {
                    if let Some(replica) = self.replicas.get_mut(&to) {
                        replica.hibernation_signal(from, signal);
                    }
                }
            }
        }
        panic!("the cluster did not settle");
    }

    /// Ticks every replica (settling after each tick) until `node_ok` holds of the leader
    /// the connected replicas agree on; returns that leader.
    pub(crate) async fn elect(&mut self, node_ok: impl Fn(u64) -> bool) -> u64 {
        for _ in 0..200 {
            self.tick();
            self.settle().await;
            let leaders: Vec<u64> = self
                .replicas
                .iter()
                .filter(|(node, replica)| replica.is_leader() && !self.isolated.contains(node))
                .map(|(node, _)| *node)
                .collect();
            if let [leader] = leaders[..] {
                let agreed = self
                    .replicas
                    .iter()
                    .filter(|(node, _)| !self.isolated.contains(node))
                    .all(|(_, replica)| replica.leader() == Some(leader));
                if agreed && node_ok(leader) {
                    return leader;
                }
            }
        }
        panic!("no leader was elected");
    }

    /// Ticks every replica. A rejoining replica's questions (`rejoin.rs`) are answered at
    /// once by the replicas it can reach, as the node's transport would carry them.
    pub(crate) fn tick(&mut self) {
        let nodes: Vec<u64> = self.replicas.keys().copied().collect();
        for node in nodes {
            let replica = self.replicas.get_mut(&node).unwrap();
            replica.tick();
            for peer in replica.rejoin_asks() {
                if self.cut_off(node, peer) || self.cut_off(peer, node) {
                    continue;
                }
                if let Some(state) = self.replicas.get(&peer).map(Replica::log_state) {
                    let replica = self.replicas.get_mut(&node).unwrap();
                    replica.rejoin_answer(peer, state);
                }
            }
        }
    }

    pub(crate) fn propose(&mut self, node: u64, tag: &str, count: usize) -> Answer {
        self.replicas
            .get_mut(&node)
            .unwrap()
            .propose(&batch(tag, count), MAX_MESSAGE_BYTES)
            .unwrap()
    }

    /// Every replica's partition log, as bytes.
    pub(crate) async fn logs(&self) -> BTreeMap<u64, Vec<u8>> {
        let mut logs = BTreeMap::new();
        for (node, replica) in &self.replicas {
            let bytes = replica.log().read_bytes(0, 64 << 20).await.unwrap();
            logs.insert(*node, bytes);
        }
        logs
    }

    /// The directory under which each replica has its own (`node-{id}`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) async fn close(self) -> PathBuf {
        for replica in self.replicas.into_values() {
            replica.close().await.unwrap();
        }
        self.dir
    }
}

/// The values of a log's records in offset order, checking offsets are dense from 0 and
/// each batch carries a leader epoch.
pub(crate) fn values(log: &[u8]) -> Vec<String> {
    values_from(log, 0)
}

/// [`values`] of batches that start at `offset`.
pub(crate) fn values_from(log: &[u8], offset: i64) -> Vec<String> {
    let mut values = Vec::new();
    let mut rest = log;
    let mut offset = offset;
    while !rest.is_empty() {
        let (batch, after) = RecordBatch::parse(rest).unwrap();
        assert_eq!(batch.base_offset(), offset, "offsets are dense");
        assert!(batch.partition_leader_epoch() > 0, "stamped with the term");
        for record in batch.records().unwrap() {
            let record = record.unwrap();
            values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
        }
        offset += batch.offset_count() as i64;
        rest = after;
    }
    values
}

/// What a peer serves a fill: up to `chunk_bytes` of batches from `offset`, from the first
/// of `logs` that holds the offset (committed batches are the same bytes on every replica);
/// failing that, the lowest start of those that start past it (their retention deleted
/// it).
pub(crate) async fn read_from_first(
    logs: Vec<PartitionLog<DiskStorage>>,
    offset: i64,
    chunk_bytes: u64,
) -> Fetched {
    let mut starts = None;
    for log in logs {
        let chunk_bytes = u32::try_from(chunk_bytes).unwrap_or(u32::MAX);
        match crate::fill::read_for_fill(&log, offset, chunk_bytes).await {
            Some(batches @ Fetched::Batches { .. }) => return batches,
            Some(Fetched::StartsAt(start)) => {
                starts = Some(starts.map_or(start, |s: i64| s.min(start)));
            }
            None => {}
        }
    }
    match starts {
        Some(start) => Fetched::StartsAt(start),
        None => panic!("no other replica's log holds offset {offset}"),
    }
}

pub(crate) fn answered(answer: &mut Answer) -> Option<Result<Appended, ReplicaError>> {
    answer.try_recv().unwrap()
}

pub(crate) async fn assert_identical(cluster: &Cluster) -> Vec<String> {
    let logs = cluster.logs().await;
    let first = logs.values().next().unwrap();
    for (node, log) in &logs {
        assert_eq!(log, first, "node {node}'s log differs from node 1's");
    }
    let high_watermarks: BTreeSet<i64> = cluster
        .replicas
        .values()
        .map(Replica::high_watermark)
        .collect();
    assert_eq!(high_watermarks.len(), 1, "every replica commits as far");
    values(first)
}

#[test]
fn three_replicas_elect_replicate_fail_over_heal_and_restart_with_identical_logs() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let first_leader = cluster.elect(|_| true).await;

        // Replication: proposals commit on a majority and land on every replica.
        let mut answers: Vec<Answer> = (0..5)
            .map(|round| cluster.propose(first_leader, &format!("a{round}"), round + 1))
            .collect();
        cluster.settle().await;
        let offsets: Vec<(i64, i64)> = answers
            .iter_mut()
            .map(|answer| {
                let appended = answered(answer).unwrap().unwrap();
                (appended.offset_first, appended.offset_next)
            })
            .collect();
        assert_eq!(offsets, [(0, 1), (1, 3), (3, 6), (6, 10), (10, 15)]);
        let committed = assert_identical(&cluster).await;
        assert_eq!(committed.len(), 15);
        assert_eq!(cluster.replicas[&first_leader].high_watermark(), 15);

        // The leader is cut off and still takes a proposal, which cannot commit.
        cluster.isolated.insert(first_leader);
        let mut lost = cluster.propose(first_leader, "lost", 4);
        cluster.settle().await;
        let cut_off_log = cluster.replicas[&first_leader].log().offsets();
        assert_eq!(
            cut_off_log.log_end, 19,
            "the cut-off leader wrote its entry"
        );
        assert!(answered(&mut lost).is_none(), "and cannot commit it");
        let second_leader = cluster.elect(|leader| leader != first_leader).await;
        assert!(cluster.replicas[&second_leader].term() > 1);
        let mut kept = cluster.propose(second_leader, "kept", 3);
        cluster.settle().await;
        assert_eq!(answered(&mut kept).unwrap().unwrap().offset_first, 15);

        // Healed: the old leader learns the new term, its entry is replaced and its
        // proposal refused; every log is the same again.
        cluster.isolated.clear();
        for _ in 0..30 {
            for replica in cluster.replicas.values_mut() {
                replica.tick();
            }
            cluster.settle().await;
        }
        match answered(&mut lost) {
            Some(Err(ReplicaError::NotLeader { .. })) => {}
            other => panic!("the cut-off leader's proposal: {other:?}"),
        }
        let healed = assert_identical(&cluster).await;
        assert_eq!(&healed[..15], &committed[..]);
        assert_eq!(&healed[15..], ["kept-0", "kept-1", "kept-2"]);

        // Restart: every replica rebuilds its window from its files and goes on.
        let before: BTreeMap<u64, (u64, u64)> = cluster
            .replicas
            .iter()
            .map(|(node, replica)| (*node, replica.last_index_and_term()))
            .collect();
        let dir = cluster.close().await;
        let mut cluster = Cluster::open(&dir).await;
        let after: BTreeMap<u64, (u64, u64)> = cluster
            .replicas
            .iter()
            .map(|(node, replica)| (*node, replica.last_index_and_term()))
            .collect();
        assert_eq!(after, before, "the windows rebuilt from disk");
        let leader = cluster.elect(|_| true).await;
        let mut more = cluster.propose(leader, "after-restart", 2);
        cluster.settle().await;
        assert_eq!(answered(&mut more).unwrap().unwrap().offset_first, 18);
        let restarted = assert_identical(&cluster).await;
        assert_eq!(&restarted[..18], &healed[..]);
        assert_eq!(restarted.len(), 20);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_restarted_leaders_followers_elect_a_successor_at_once_without_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let old_leader = cluster.elect(|_| true).await;
        let mut answer = cluster.propose(old_leader, "before", 3);
        cluster.settle().await;
        assert!(answered(&mut answer).unwrap().is_ok());
        let term = cluster.replicas[&old_leader].term();

        // Its process restarts: the replica comes back a follower, knowing no leader.
        let replica = cluster.replicas.remove(&old_leader).unwrap();
        replica.close().await.unwrap();
        let node_dir = dir.path().join(format!("node-{old_leader}"));
        let replica = Replica::open(DiskStorage, &node_dir, id(), topic(), &config(old_leader))
            .await
            .unwrap();
        cluster.replicas.insert(old_leader, replica);
        cluster.settle().await;
        let followers: Vec<u64> = NODES.into_iter().filter(|n| *n != old_leader).collect();
        for follower in &followers {
            assert_eq!(cluster.replicas[follower].leader(), Some(old_leader));
        }

        // The followers hear of the restart (a new incarnation in its hello): they forget
        // their leader, and the lower-numbered campaigns now, not an election timeout later.
        for follower in &followers {
            let replica = cluster.replicas.get_mut(follower).unwrap();
            replica.peer_restarted(old_leader);
        }
        cluster.settle().await;
        let successor = followers[0];
        assert!(cluster.replicas[&successor].is_leader());
        assert_eq!(cluster.replicas[&successor].term(), term + 1);
        for replica in cluster.replicas.values() {
            assert_eq!(replica.leader(), Some(successor));
        }
        let mut answer = cluster.propose(successor, "after", 2);
        cluster.settle().await;
        assert_eq!(answered(&mut answer).unwrap().unwrap().offset_first, 3);
        assert_eq!(assert_identical(&cluster).await.len(), 5);

        // A restart of a node that leads nothing changes no follower's leader.
        cluster
            .replicas
            .get_mut(&followers[1])
            .unwrap()
            .peer_restarted(old_leader);
        cluster.settle().await;
        assert!(cluster.replicas[&successor].is_leader());
        assert_eq!(cluster.replicas[&followers[1]].leader(), Some(successor));
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn when_a_leaders_connections_close_its_followers_elect_at_the_next_tick() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        let term = cluster.replicas[&leader].term();
        let followers: Vec<u64> = NODES.into_iter().filter(|n| *n != leader).collect();
        let successor = followers[0];

        // Connections can close with the leader alive: told alone, the successor's
        // pre-vote is refused by the other follower, which still heard the leader lately.
        cluster
            .replicas
            .get_mut(&successor)
            .unwrap()
            .peer_gone(leader);
        assert_eq!(cluster.replicas[&successor].leader(), None);
        for _ in 0..3 {
            cluster.tick();
            cluster.settle().await;
        }
        assert!(cluster.replicas[&leader].is_leader());
        assert_eq!(cluster.replicas[&leader].term(), term);
        for replica in cluster.replicas.values() {
            assert_eq!(
                replica.leader(),
                Some(leader),
                "the leader's heartbeats go on"
            );
        }

        // The leader dies: both followers see its connections close and forget it; the
        // successor campaigns at the next tick, not an election timeout later.
        cluster.isolated.insert(leader);
        for follower in &followers {
            cluster
                .replicas
                .get_mut(follower)
                .unwrap()
                .peer_gone(leader);
        }
        for follower in &followers {
            assert_eq!(cluster.replicas[follower].leader(), None);
        }
        cluster.tick();
        cluster.settle().await;
        assert!(cluster.replicas[&successor].is_leader());
        assert_eq!(cluster.replicas[&successor].term(), term + 1);
        assert_eq!(cluster.replicas[&followers[1]].leader(), Some(successor));
        let mut answer = cluster.propose(successor, "after", 2);
        cluster.settle().await;
        assert_eq!(answered(&mut answer).unwrap().unwrap().offset_first, 0);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_request_of_several_batches_is_one_proposal_and_an_empty_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        let mut request = batch("x", 2).to_vec();
        request.extend_from_slice(&batch("y", 3));
        let replica = cluster.replicas.get_mut(&leader).unwrap();
        let empty = replica.propose(&[], MAX_MESSAGE_BYTES).unwrap_err();
        assert!(matches!(empty, ReplicaError::Log { .. }), "{empty:?}");
        let mut answer = replica.propose(&request, MAX_MESSAGE_BYTES).unwrap();
        cluster.settle().await;
        let appended = answered(&mut answer).unwrap().unwrap();
        assert_eq!((appended.offset_first, appended.offset_next), (0, 5));
        let values = assert_identical(&cluster).await;
        assert_eq!(values, ["x-0", "x-1", "y-0", "y-1", "y-2"]);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_replica_refuses_a_log_whose_journal_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let open = |topic: TopicConfig| {
            let dir = dir.path().join("node-1");
            async move { Replica::open(DiskStorage, &dir, id(), topic, &config(1)).await }
        };
        // A single voter commits alone: a log with one record.
        let mut alone = Replica::open(
            DiskStorage,
            &dir.path().join("node-1"),
            id(),
            topic(),
            &ReplicaConfig {
                voters: vec![1],
                ..config(1)
            },
        )
        .await
        .unwrap();
        alone.campaign().unwrap();
        while alone.has_ready() {
            alone.process_ready().await.unwrap();
        }
        let mut answer = alone.propose(&batch("only", 1), MAX_MESSAGE_BYTES).unwrap();
        while alone.has_ready() {
            alone.process_ready().await.unwrap();
        }
        assert_eq!(answered(&mut answer).unwrap().unwrap().offset_next, 1);
        alone.close().await.unwrap();
        std::fs::remove_file(dir.path().join("node-1/raft.journal")).unwrap();
        let orphan = open(topic()).await.err().unwrap();
        assert!(
            matches!(orphan, ReplicaError::Inconsistent { .. }),
            "{orphan:?}"
        );
    })
    .unwrap();
}

#[test]
fn a_log_append_time_topic_carries_the_leaders_clock_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut topic = topic();
        topic
            .apply_all([("message.timestamp.type", "LogAppendTime")])
            .unwrap();
        let mut cluster = Cluster::open_with_topic(dir.path(), config, topic).await;
        let leader = cluster.elect(|_| true).await;
        let before = now_ms();
        let mut answer = cluster.propose(leader, "stamped", 3);
        cluster.settle().await;
        let after = now_ms();
        let appended = answered(&mut answer).unwrap().unwrap();
        let stamped = appended
            .log_append_time_ms
            .expect("the leader's time is answered");
        assert!(
            (before..=after).contains(&stamped),
            "{before} ≤ {stamped} ≤ {after}"
        );
        // The same bytes everywhere (a replica stamping its own clock would differ), and
        // the batch reads as LogAppendTime at the answered time (its CRC checked).
        assert_identical(&cluster).await;
        let log = cluster.logs().await.remove(&leader).unwrap();
        let (batch, _) = RecordBatch::parse(&log).unwrap();
        assert_eq!(batch.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(batch.max_timestamp(), stamped);
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn a_leader_hands_its_appends_over_before_its_own_log_holds_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        let log = cluster.replicas[&leader].log().clone();
        let log_end = log.offsets().log_end;
        let mut answer = cluster.propose(leader, "early", 2);
        // (log end when handed over, appends carrying entries)
        let mut handed = Vec::new();
        let replica = cluster.replicas.get_mut(&leader).unwrap();
        replica
            .process_ready_sending(|messages| {
                let appends = (messages.iter())
                    .filter(|m| m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty())
                    .count();
                handed.push((log.offsets().log_end, appends));
                cluster.in_flight.extend(messages);
            })
            .await
            .unwrap();
        assert_eq!(
            handed.first(),
            Some(&(log_end, 2)),
            "both followers' appends go before the leader writes: {handed:?}"
        );
        assert_eq!(log.offsets().log_end, log_end + 2, "then the leader writes");
        cluster.settle().await;
        assert_eq!(
            answered(&mut answer).unwrap().unwrap().offset_next,
            log_end + 2
        );
        assert_identical(&cluster).await;
        cluster.close().await;
    })
    .unwrap();
}

#[test]
fn an_acks_1_proposal_is_answered_at_the_leaders_write_and_acks_all_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    rt::block_on(async {
        let mut cluster = Cluster::open(dir.path()).await;
        let leader = cluster.elect(|_| true).await;
        let high_watermark = cluster.replicas[&leader].high_watermark();
        // Both followers cut off: nothing can commit.
        for node in NODES.iter().filter(|node| **node != leader) {
            cluster.isolated.insert(*node);
        }
        let replica = cluster.replicas.get_mut(&leader).unwrap();
        let mut at_write = replica
            .propose_answered(&batch("one", 2), MAX_MESSAGE_BYTES, AnswerAt::LeaderWrite)
            .unwrap();
        let mut at_commit = replica
            .propose_answered(&batch("all", 3), MAX_MESSAGE_BYTES, AnswerAt::Commit)
            .unwrap();
        cluster.settle().await;
        let written = answered(&mut at_write).expect("answered at the leader's write");
        let written = written.unwrap();
        assert_eq!(
            (written.offset_first, written.offset_next),
            (high_watermark, high_watermark + 2)
        );
        assert_eq!(
            cluster.replicas[&leader].high_watermark(),
            high_watermark,
            "nothing committed"
        );
        assert!(
            answered(&mut at_commit).is_none(),
            "acks=all waits for a commit"
        );
        // The followers are back: both commit, and the acks=all proposal is answered.
        cluster.isolated.clear();
        for _ in 0..20 {
            cluster.tick();
            cluster.settle().await;
        }
        let committed = answered(&mut at_commit)
            .expect("answered at commit")
            .unwrap();
        assert_eq!(committed.offset_next, high_watermark + 5);
        assert_eq!(assert_identical(&cluster).await.len(), 5);
        cluster.close().await;
    })
    .unwrap();
}
