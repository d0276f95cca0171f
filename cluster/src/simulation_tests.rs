//! A seeded simulation of one partition's three replicas, on real files: random ticks,
//! proposals to whoever leads, messages dropped, delayed and reordered, nodes cut off and
//! healed, and replicas restarted from disk. Throughout, at most one leader per term; at
//! the end, after healing, every replica holds the same bytes, offsets dense, every
//! acknowledged record present exactly once and in the order acknowledged.
//!
//! Seeds divisible by 3 run with a window of a few entries, so lagging replicas catch up
//! by snapshots, filled from whichever other replica's log serves the batches. Even seeds
//! let idle groups sleep (`hibernation.rs`) during quiet stretches; their signals are lost and delayed as Raft's
//! messages are, and the node's liveness is modelled as the node tells it: a replica cut
//! off, and those it is cut off from, hear that the other is gone, and a restarted
//! replica's peers hear that it restarted.
//!
//! The seed is printed; `RINGLOG_SIM_SEED` replays one, `RINGLOG_SIM_STEPS` lengthens the
//! run (a soak), `RINGLOG_SIM_SEEDS` runs more seeds.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use raft::eraftpb::Message;
use ringlog_engine::log::{Appended, PartitionId, PartitionLog};
use ringlog_engine::rt;
use ringlog_engine::storage::DiskStorage;
use ringlog_engine::testing::Rng;

use crate::hibernation::Signal;
use crate::replica::{Replica, ReplicaConfig, ReplicaError};
use crate::snapshot::{Fetched, FillSource};
use crate::tests::{batch, config, id, read_from_first, topic, values, MAX_MESSAGE_BYTES, NODES};

/// True with probability `percent` in 100.
fn chance(rng: &mut Rng, percent: u64) -> bool {
    rng.below(100) < percent
}

/// One of `items`.
fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

type Answer = oneshot::Receiver<Result<Appended, ReplicaError>>;

struct Simulation {
    dir: std::path::PathBuf,
    rng: Rng,
    replicas: BTreeMap<u64, Replica<DiskStorage>>,
    isolated: BTreeSet<u64>,
    /// Messages sent and not delivered yet, in the order sent.
    network: Vec<Message>,
    /// Hibernation signals sent and not delivered yet: (from, to, signal).
    signals: Vec<(u64, u64, Signal)>,
    hibernate: bool,
    /// Rounds that ended with some replica asleep.
    rounds_asleep: u64,
    /// Percent of messages lost in flight while the network is lossy.
    loss_percent: u64,
    /// The leader seen in each term.
    leaders: BTreeMap<u64, u64>,
    /// Proposals not answered yet, by the tag of their records.
    waiting: Vec<(String, usize, Answer)>,
    /// Acknowledged proposals: tag, record count, offsets.
    acknowledged: Vec<(String, usize, Appended)>,
    proposals: usize,
    /// Zero on odd seeds: every entry applied (and on every follower) leaves memory, so
    /// lagging followers are served entries read back from the partition log.
    entry_cache_bytes_max: u64,
    /// `window_entries_keep` and `window_entries_max`.
    window: (u64, u64),
    /// The open replicas' logs, which fills read from.
    logs: Logs,
    snapshots_installed: u64,
}

type Logs = Rc<RefCell<BTreeMap<u64, PartitionLog<DiskStorage>>>>;

/// Fills a replica's snapshot from the first other open replica whose committed log holds
/// the offset (committed batches are the same bytes everywhere).
struct OtherLogs {
    node: u64,
    logs: Logs,
}

impl FillSource for OtherLogs {
    fn fetch(
        &self,
        _partition: &PartitionId,
        offset: i64,
        _offset_end: i64,
    ) -> LocalBoxFuture<'static, Option<Fetched>> {
        let others: Vec<_> = (self.logs.borrow().iter())
            .filter(|(node, _)| **node != self.node)
            .map(|(_, log)| log.clone())
            .collect();
        Box::pin(async move { Some(read_from_first(others, offset, 4096).await) })
    }
}

impl Simulation {
    async fn open_replica(&self, node: u64) -> Replica<DiskStorage> {
        let mut replica = Replica::open(
            DiskStorage,
            &self.dir.join(format!("node-{node}")),
            id(),
            topic(),
            &ReplicaConfig {
                entry_cache_bytes_max: self.entry_cache_bytes_max,
                window_entries_keep: self.window.0,
                window_entries_max: self.window.1,
                hibernate: self.hibernate,
                ..config(node)
            },
        )
        .await
        .unwrap();
        let logs = self.logs.clone();
        replica.set_fill_source(Rc::new(OtherLogs { node, logs }));
        self.logs.borrow_mut().insert(node, replica.log().clone());
        replica
    }

    async fn close_replica(&mut self, node: u64) {
        let replica = self.replicas.remove(&node).unwrap();
        self.logs.borrow_mut().remove(&node);
        self.snapshots_installed += replica.snapshot_stats().installed;
        replica.close().await.unwrap();
    }

    /// One round: every replica processes its Ready, then part of the network delivers.
    async fn round(&mut self) {
        for (&node, replica) in &mut self.replicas {
            if replica.has_ready() {
                let sent = replica.process_ready().await.unwrap();
                self.network.extend(sent);
            }
            let signals = replica.take_hibernation_signals();
            (self.signals).extend(signals.into_iter().map(|(to, signal)| (node, to, signal)));
        }
        self.observe_leaders();
        let mut kept = Vec::new();
        for (from, to, signal) in std::mem::take(&mut self.signals) {
            if chance(&mut self.rng, 20) {
                kept.push((from, to, signal));
                continue;
            }
            let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
            if cut || chance(&mut self.rng, self.loss_percent) {
                continue;
            }
            if let Some(replica) = self.replicas.get_mut(&to) {
                replica.hibernation_signal(from, signal);
            }
        }
        self.signals = kept;
        if self.replicas.values().any(Replica::asleep) {
            self.rounds_asleep += 1;
        }
        let mut kept = Vec::new();
        for message in std::mem::take(&mut self.network) {
            // Some messages wait a round or more: delivery order changes.
            if chance(&mut self.rng, 20) {
                kept.push(message);
                continue;
            }
            let cut = self.isolated.contains(&message.from) || self.isolated.contains(&message.to);
            if cut || chance(&mut self.rng, self.loss_percent) {
                continue;
            }
            if let Some(replica) = self.replicas.get_mut(&message.to) {
                // A message of a term the replica has left behind is refused by raft-rs
                // itself; any other error is a bug.
                replica.step(message).unwrap();
            }
        }
        self.network = kept;
        self.collect_answers();
    }

    /// At most one leader per term, ever.
    fn observe_leaders(&mut self) {
        for (node, replica) in &self.replicas {
            if replica.is_leader() {
                let seen = *self.leaders.entry(replica.term()).or_insert(*node);
                assert_eq!(seen, *node, "two leaders in term {}", replica.term());
            }
        }
    }

    fn collect_answers(&mut self) {
        let mut still = Vec::new();
        for (tag, count, mut answer) in std::mem::take(&mut self.waiting) {
            match answer.try_recv() {
                Ok(Some(Ok(appended))) => self.acknowledged.push((tag, count, appended)),
                // Refused (leadership lost) or dropped with a restarted replica: the
                // client would retry; the simulation only checks what was acknowledged.
                Ok(Some(Err(_))) | Err(_) => {}
                Ok(None) => still.push((tag, count, answer)),
            }
        }
        self.waiting = still;
    }

    async fn step(&mut self) {
        match self.rng.below(100) {
            0..=49 => {
                for replica in self.replicas.values_mut() {
                    replica.tick();
                }
            }
            50..=79 => {
                let leaders: Vec<u64> = self
                    .replicas
                    .iter()
                    .filter(|(_, replica)| replica.is_leader())
                    .map(|(node, _)| *node)
                    .collect();
                if let Some(&leader) =
                    leaders.get(self.rng.below(leaders.len().max(1) as u64) as usize)
                {
                    let tag = format!("p{}", self.proposals);
                    let count = 1 + self.rng.below(4) as usize;
                    self.proposals += 1;
                    let replica = self.replicas.get_mut(&leader).unwrap();
                    if let Ok(answer) = replica.propose(&batch(&tag, count), MAX_MESSAGE_BYTES) {
                        self.waiting.push((tag, count, answer));
                    }
                }
            }
            80..=87 => {
                let node = pick(&mut self.rng, &NODES);
                if !self.isolated.remove(&node) && self.isolated.is_empty() {
                    self.isolated.insert(node);
                    self.tell_gone(node);
                }
            }
            88..=93 => self.loss_percent = pick(&mut self.rng, &[0, 0, 10, 30]),
            // A quiet stretch: nothing proposed for long enough that an idle group sleeps.
            94..=95 => {
                for _ in 0..20 {
                    for replica in self.replicas.values_mut() {
                        replica.tick();
                    }
                    self.round().await;
                }
            }
            _ => {
                let node = pick(&mut self.rng, &NODES);
                self.close_replica(node).await;
                let reopened = self.open_replica(node).await;
                self.replicas.insert(node, reopened);
                for (&peer, replica) in &mut self.replicas {
                    if peer != node {
                        replica.peer_restarted(node);
                    }
                }
            }
        }
        self.round().await;
    }

    /// What the nodes' liveness tells when `node` is cut off: its peers that `node` is
    /// gone, and `node` that they are.
    fn tell_gone(&mut self, node: u64) {
        for (&peer, replica) in &mut self.replicas {
            if peer == node {
                for other in NODES.into_iter().filter(|&other| other != node) {
                    replica.peer_gone(other);
                }
            } else {
                replica.peer_gone(node);
            }
        }
    }

    /// Heals the network and runs until every replica holds the same log.
    async fn heal(&mut self) {
        self.isolated.clear();
        self.loss_percent = 0;
        for _ in 0..400 {
            for replica in self.replicas.values_mut() {
                replica.tick();
            }
            for _ in 0..4 {
                self.round().await;
            }
            let leader = self.replicas.values().find(|replica| replica.is_leader());
            let Some(leader) = leader else { continue };
            let target = leader.last_index_and_term();
            let caught_up = self.replicas.values().all(|replica| {
                replica.last_index_and_term() == target
                    && replica.high_watermark() == leader.high_watermark()
            });
            if caught_up && self.waiting.is_empty() {
                return;
            }
        }
        panic!("the healed cluster did not converge");
    }
}

async fn simulate(dir: &std::path::Path, seed: u64, steps: usize) {
    let mut simulation = Simulation {
        dir: dir.to_path_buf(),
        rng: Rng(seed),
        replicas: BTreeMap::new(),
        isolated: BTreeSet::new(),
        network: Vec::new(),
        signals: Vec::new(),
        hibernate: seed % 2 == 0,
        rounds_asleep: 0,
        loss_percent: 0,
        leaders: BTreeMap::new(),
        waiting: Vec::new(),
        acknowledged: Vec::new(),
        proposals: 0,
        entry_cache_bytes_max: if seed % 2 == 1 {
            0
        } else {
            crate::limits::ENTRY_CACHE_BYTES_MAX
        },
        window: if seed % 3 == 0 {
            (4, 16)
        } else {
            (
                crate::limits::WINDOW_ENTRIES_KEEP,
                crate::limits::WINDOW_ENTRIES_MAX,
            )
        },
        logs: Rc::default(),
        snapshots_installed: 0,
    };
    for node in NODES {
        let replica = simulation.open_replica(node).await;
        simulation.replicas.insert(node, replica);
    }
    for _ in 0..steps {
        simulation.step().await;
    }
    simulation.heal().await;

    let mut logs = BTreeMap::new();
    for (node, replica) in &simulation.replicas {
        logs.insert(*node, replica.log().read_bytes(0, 256 << 20).await.unwrap());
    }
    let first = logs[&NODES[0]].clone();
    for (node, log) in &logs {
        assert!(
            *log == first,
            "seed {seed}: node {node}'s log differs from node 1's"
        );
    }
    let values = values(&first);
    let mut seen = BTreeSet::new();
    for value in &values {
        assert!(
            seen.insert(value.clone()),
            "seed {seed}: {value} appears twice"
        );
    }
    for (tag, count, appended) in &simulation.acknowledged {
        for i in 0..*count {
            let offset = appended.offset_first as usize + i;
            assert_eq!(
                values.get(offset).map(String::as_str),
                Some(format!("{tag}-{i}").as_str()),
                "seed {seed}: acknowledged record {tag}-{i} is not at offset {offset}"
            );
        }
    }
    assert!(
        !simulation.acknowledged.is_empty(),
        "seed {seed}: nothing was acknowledged"
    );
    for node in NODES {
        simulation.close_replica(node).await;
    }
    eprintln!(
        "seed {seed}: {steps} steps, {} proposals, {} acknowledged, {} records, {} terms, \
         {} snapshots installed, {} rounds with a replica asleep",
        simulation.proposals,
        simulation.acknowledged.len(),
        values.len(),
        simulation.leaders.len(),
        simulation.snapshots_installed,
        simulation.rounds_asleep
    );
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
fn seeded_faults_never_lose_an_acknowledged_record_and_replicas_converge() {
    let steps = env_number("RINGLOG_SIM_STEPS").unwrap_or(300) as usize;
    let seeds: Vec<u64> = if let Some(seed) = env_number("RINGLOG_SIM_SEED") {
        vec![seed]
    } else {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64);
        let count = env_number("RINGLOG_SIM_SEEDS").unwrap_or(3);
        (0..count).map(|i| base.wrapping_add(i)).collect()
    };
    for seed in seeds {
        eprintln!("simulating seed {seed} (replay: RINGLOG_SIM_SEED={seed})");
        let dir = tempfile::tempdir().unwrap();
        rt::block_on(simulate(dir.path(), seed, steps)).unwrap();
    }
}
