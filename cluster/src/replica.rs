//! One replica of a replicated partition: the partition log, its Raft journal, and the
//! raft-rs node whose log they are, driven by the shard that owns the partition.
//!
//! The driver calls [`Replica::tick`] on a timer, [`Replica::step`] for each message from a
//! peer, and [`Replica::process_ready`] after either (and after proposals); it sends what
//! `process_ready` returns. Proposals ([`Replica::propose`]) are answered when their
//! entries commit.
//!
//! - **The leader stamps.** A proposed batch gets the next Kafka offset and the leader's
//!   term as `partitionLeaderEpoch` before it becomes an entry; one batch is one entry.
//! - **Persistence in order.** A Ready's entries are persisted in index order: runs of data
//!   entries through the partition log's group commit (`append_replicated`, durable),
//!   internal entries in the journal (fdatasynced) — a later entry is never written before
//!   an earlier one is durable, so a crash leaves a prefix of the log. Entries that replace
//!   ones already persisted (a new leader's) first cut the partition log and record a
//!   truncation in the journal.
//! - **Hard state** is written to the journal before the messages that depend on it are
//!   returned, fdatasynced when the term or vote changed (a commit index alone is
//!   rebuilt by the leader after a crash, so it is written without a sync).
//! - **Commit** moves the high watermark to the end of the last committed data entry;
//!   consumers of a replicated partition read below it.
//! - A replica that stops leading fails its proposals not yet committed with
//!   [`ReplicaError::NotLeader`]; a client retries them at the new leader.
//! - **The window moves.** Once applied, entries leave the window in steps
//!   ([`Replica::compact`]): the anchor follows the applied index, held back on a leader
//!   for followers that are catching up, up to a bound. A follower that needs entries
//!   below its leader's anchor gets a snapshot and copies the batches below it from a peer
//!   in bulk (`snapshot.rs`).
//! - **Idempotent producers.** Before it stamps a batch of an idempotent producer, the
//!   leader checks it with the partition log's rules (`PartitionLog::check_producer_batch`)
//!   against the log's producer state (every batch it holds, committed or not, whoever
//!   proposed it) followed by the producer's batches it proposed that the log does not hold
//!   yet. A retry is not proposed again: it is answered with the original's offsets at once
//!   if they are committed, else when the high watermark reaches them (or refused with
//!   `NotLeader` if leadership is lost first); a gap or an older epoch is refused with the
//!   log's `LogError::Producer`. An idempotent producer's request holds one batch, as Kafka
//!   requires.
//! - **The log start moves by the group's decision** ([`Replica::propose_log_start`]:
//!   DeleteRecords, a compaction of `__consumer_offsets`). The leader proposes an internal
//!   entry (empty data, the offset in its context), so it takes no Kafka offset. Every
//!   replica that applies it records the offset in its journal (synced: raft-rs applies an
//!   entry once) and moves its anchor to its applied index at once, the window's entries
//!   all applied; once the anchor is at or past the offset and durable, it moves its
//!   partition log's start there (`PartitionLog::delete_records_before`). Never before: a
//!   window reopened after a crash must not reach below the log's start. A follower that
//!   then needs entries below its leader's anchor gets a snapshot, and its fill starts its
//!   log where its peers' start. The leader answers once its own log start moved.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use ringlog_engine::batch::{self, FrameHeader, TimestampType};
use ringlog_engine::limits::BATCHES_PER_PRODUCER_MAX;
use ringlog_engine::log::{
    Ack, Appended, LogError, PartitionId, PartitionLog, ProducerBatch, ProducerCheck,
};
use ringlog_engine::storage::Storage;
use ringlog_engine::topic::TopicConfig;

use crate::entries::{EntryTable, Kind, Meta};
use crate::hibernation::{Hibernation, Signal};
use crate::journal::{Anchor, Internal, Journal, JournalError, Record};
use crate::limits::{
    APPEND_MESSAGES_IN_FLIGHT_MAX, APPEND_MESSAGE_BYTES_MAX, ENTRY_FETCH_BYTES_MAX,
    LEARNER_CAUGHT_UP_ENTRIES, REJOIN_ASK_TICKS, SNAPSHOT_SILENCE_TICKS_MAX,
};
use crate::rejoin::{LogState, Rejoin};
use crate::snapshot::{self, Fetched, FillSource};
use crate::storage::{self, RaftStorage};

/// Where a change of a group's voters stands ([`Replica::reconfigure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconfiguring {
    /// The voters are the target, and no learner is left.
    Done,
    /// A step is under way (what it waits for): call again.
    Waiting(&'static str),
    /// This replica does not lead the group: its leader drives the change.
    NotLeader,
}

/// How a replica takes part in its group.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's node id (never 0).
    pub node_id: u64,
    /// The group's voters, this node included, when the group is created.
    pub voters: Vec<u64>,
    /// Ticks without a leader's word before a follower campaigns (randomized up to twice
    /// this), and between a leader's heartbeats.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Bytes of data entries kept in memory beyond those that must be (see
    /// `ENTRY_CACHE_BYTES_MAX`, the usual value).
    pub entry_cache_bytes_max: u64,
    /// Applied entries the window keeps (the anchor moves in steps of this), and the most
    /// a leader keeps for followers catching up (see [`Replica::compact`];
    /// `WINDOW_ENTRIES_KEEP` and `WINDOW_ENTRIES_MAX`, the usual values).
    pub window_entries_keep: u64,
    pub window_entries_max: u64,
    /// Whether the group may sleep while idle (`hibernation.rs`).
    pub hibernate: bool,
    /// The fewest ticks between two syncs of the anchor that bound the log's retention
    /// (`ANCHOR_SYNC_TICKS`, the usual value; 0: every move of the anchor is synced).
    pub anchor_sync_ticks: usize,
}

/// What a replica did with snapshots, for the node's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots this replica installed as a follower.
    pub installed: u64,
    /// Bytes of batches it copied from peers to fill them.
    pub fill_bytes: u64,
}

/// Errors of a replica.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// This replica does not lead the partition; `leader` is the one it knows, if any.
    #[error("partition {partition}: not the leader (leader: {leader:?})")]
    NotLeader {
        partition: PartitionId,
        leader: Option<u64>,
    },
    /// A proposal made for one term (what its proposer decided under) reached the replica
    /// in another: refused, as Kafka's coordinator epoch fences a former leader's writes.
    #[error("partition {partition}: proposed for term {expected}, the term is {term}")]
    TermChanged {
        partition: PartitionId,
        expected: u64,
        term: u64,
    },
    #[error("partition {partition}: partition log")]
    Log {
        partition: PartitionId,
        #[source]
        source: LogError,
    },
    #[error("partition {partition}: raft journal")]
    Journal {
        partition: PartitionId,
        #[source]
        source: JournalError,
    },
    #[error("partition {partition}: raft")]
    Raft {
        partition: PartitionId,
        #[source]
        source: raft::Error,
    },
    /// The replica cannot run with this configuration yet.
    #[error("partition {partition}: not supported yet: {what}")]
    Unsupported {
        partition: PartitionId,
        what: &'static str,
    },
    /// The partition log and the journal disagree, or an entry's data is not a batch of
    /// its term at the next offset: a bug or damage, never repaired by guessing.
    #[error("partition {partition}: replicated log is inconsistent: {reason}")]
    Inconsistent {
        partition: PartitionId,
        reason: String,
    },
}

/// A proposal waiting for its last entry to commit, or a retried idempotent batch waiting
/// for its original to commit (then `term` is the term the retry was taken in).
struct Proposal {
    term: u64,
    appended: Appended,
    /// Answered once the leader's own write of its entries is durable (acks=1), not at
    /// commit.
    at_leader_write: bool,
    reply: oneshot::Sender<Result<Appended, ReplicaError>>,
}

/// When a proposal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerAt {
    /// Once its entries commit: a majority holds them durably (acks=all).
    Commit,
    /// Once the leader's own write of its entries is durable (Kafka's acks=1): a leader
    /// that fails before the entries reach a majority may lose them, as acks=1 allows.
    LeaderWrite,
}

/// One replica of a partition's Raft group.
pub struct Replica<S: Storage> {
    id: PartitionId,
    log: PartitionLog<S>,
    journal: Journal<S>,
    storage: RaftStorage,
    node: RawNode<RaftStorage>,
    /// Proposals by the index of their last entry.
    proposals: BTreeMap<u64, Proposal>,
    /// Retries of idempotent batches whose original is not committed yet: answered when
    /// the high watermark reaches its end. Bounded, as `proposals` are, by the produce
    /// requests in flight.
    retries: Vec<Proposal>,
    /// The idempotent batches this leader proposed that the partition log does not hold
    /// yet (not persisted), by producer, each with its first offset: a proposed batch is
    /// checked against the log's producer state followed by these. The last
    /// `BATCHES_PER_PRODUCER_MAX` of a producer only, as the log keeps (the rules look no
    /// further back). Batches go once persisted, so it holds at most those proposed in one
    /// turn of the driver, and all go when leadership is lost.
    producers_proposed: HashMap<i64, Vec<(ProducerBatch, i64)>>,
    high_watermark: i64,
    entry_cache_bytes_max: u64,
    window_entries_keep: u64,
    window_entries_max: u64,
    /// Ticks since the anchor was last made durable, and the fewest between two syncs
    /// ([`Replica::compact`]).
    ticks_since_anchor_sync: usize,
    /// Configurations taken in since the replica opened (changes applied, snapshots
    /// installed): what a caller compares to learn that the members changed.
    configurations: u64,
    anchor_sync_ticks: usize,
    /// Set while a snapshot's fill is to be done (`snapshot.rs`): the offset the log is
    /// trusted to. Nothing else happens until it is done.
    fill_from: Option<i64>,
    fill_source: Option<Rc<dyn FillSource>>,
    /// On a leader: ticks each follower has spent waiting for a snapshot it was sent. The
    /// transport may lose the message, and raft-rs waits for it until told it failed.
    snapshot_ticks: HashMap<u64, usize>,
    snapshot_stats: SnapshotStats,
    /// Set while the replica rejoins its group with no memory of it (`rejoin.rs`).
    rejoin: Option<Rejoin>,
    /// Set when the leader's connections all closed and this replica is to campaign, with
    /// pre-vote, at its next tick ([`Replica::peer_gone`]).
    campaign_at_tick: bool,
    /// Whether the group sleeps, and the agreement to (`hibernation.rs`).
    hibernation: Hibernation,
    /// A log start the group decided that this log's start has not reached yet.
    pending_log_start: Option<i64>,
    /// On a leader: those waiting for the log start to reach an offset they proposed.
    /// Bounded by the DeleteRecords requests (and compactions) in flight.
    start_waiters: Vec<(i64, oneshot::Sender<Result<i64, ReplicaError>>)>,
}

/// The context of an internal entry that moves the log start: this prefix, then the offset
/// (8 bytes, big-endian).
const LOG_START_CONTEXT: &[u8] = b"ringlog.log-start:";

/// The log start an internal entry decides, if it is one that does.
fn log_start_of(entry: &Entry) -> Option<i64> {
    log_start_in(&entry.context)
}

/// The log start an internal entry's context decides, if it does.
fn log_start_in(context: &[u8]) -> Option<i64> {
    let offset = context.strip_prefix(LOG_START_CONTEXT)?;
    Some(i64::from_be_bytes(offset.try_into().ok()?))
}

impl<S: Storage> Replica<S> {
    /// Opens the replica in `dir`: the partition log (recovered), the journal, and the
    /// window of entries rebuilt from both.
    pub async fn open(
        storage: S,
        dir: &Path,
        id: PartitionId,
        topic: TopicConfig,
        config: &ReplicaConfig,
    ) -> Result<Replica<S>, ReplicaError> {
        let log = PartitionLog::open(storage.clone(), dir, id.clone(), topic)
            .await
            .map_err(|source| log_error(&id, source))?;
        Self::open_with_log(log, storage, dir, config).await
    }

    /// Opens the replica of `log`, a partition log already opened (and recovered) in
    /// `dir` (the engine opens every partition's log when it starts; the replica wraps
    /// it rather than opening it twice): the journal, and the window of entries rebuilt
    /// from both. From then on the log is written only through this replica, its readers
    /// see only committed batches, and its retention deletes nothing the window holds.
    pub async fn open_with_log(
        log: PartitionLog<S>,
        storage: S,
        dir: &Path,
        config: &ReplicaConfig,
    ) -> Result<Replica<S>, ReplicaError> {
        let id = log.id().clone();
        let journal_error = |source| ReplicaError::Journal {
            partition: id.clone(),
            source,
        };
        let (mut journal, mut state) = Journal::open(storage, dir).await.map_err(journal_error)?;
        if state.conf_state.voters.is_empty() {
            start_group(&id, &log, &mut journal, &mut state, &config.voters).await?;
        }
        let (table, high_watermark) = open_window(&id, &log, &mut journal, &state).await?;
        bound_retention_at_open(&log, &mut journal, &state)
            .await
            .map_err(journal_error)?;
        let applied = state.hard_state.commit.min(table.last_index());
        // The latest start decided: recorded when applied, or decided by an entry that the
        // hard state says committed, hence applied, but whose application a crash cut short
        // (the commit index may reach the journal first). Such an entry is still in the
        // window: the anchor passes no entry before the start it decides has moved.
        let decided = (state.internals.values())
            .filter(|internal| internal.index <= applied)
            .filter_map(|internal| log_start_in(&internal.context))
            .fold(state.log_start, i64::max);
        let pending_log_start = (decided > log.offsets().log_start).then_some(decided);
        if pending_log_start.is_some() && decided > state.log_start {
            // Recorded before the anchor may pass the entry that decided it.
            journal
                .append(&[Record::LogStart { offset: decided }], true)
                .await
                .map_err(journal_error)?;
        }
        let conf_index = last_conf_change(&state, applied);
        let storage = RaftStorage::new(storage::State {
            table,
            hard_state: state.hard_state.clone(),
            conf_state: state.conf_state.clone(),
            conf_index,
            snapshot_waits_for_anchor: std::cell::Cell::new(false),
            log_start: decided.max(log.offsets().log_start),
            fetches: Vec::new(),
        });
        let raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: APPEND_MESSAGE_BYTES_MAX,
            max_inflight_msgs: APPEND_MESSAGES_IN_FLIGHT_MAX,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        let logger = crate::logger::logger(&id.to_string());
        let node = RawNode::new(&raft_config, storage.clone(), &logger).map_err(|source| {
            ReplicaError::Raft {
                partition: id.clone(),
                source,
            }
        })?;
        let mut replica = Replica {
            id,
            log,
            journal,
            storage,
            node,
            proposals: BTreeMap::new(),
            retries: Vec::new(),
            producers_proposed: HashMap::new(),
            high_watermark,
            entry_cache_bytes_max: config.entry_cache_bytes_max,
            window_entries_keep: config.window_entries_keep.max(1),
            window_entries_max: config.window_entries_max.max(config.window_entries_keep),
            // The first move of the anchor after opening is synced.
            ticks_since_anchor_sync: config.anchor_sync_ticks,
            configurations: 0,
            anchor_sync_ticks: config.anchor_sync_ticks,
            fill_from: state.fill_from.map(|_| high_watermark),
            fill_source: None,
            snapshot_ticks: HashMap::new(),
            snapshot_stats: SnapshotStats::default(),
            rejoin: None,
            campaign_at_tick: false,
            hibernation: Hibernation::new(
                config.hibernate,
                config.election_ticks,
                config.heartbeat_ticks,
            ),
            pending_log_start,
            start_waiters: Vec::new(),
        };
        // raft-rs reads entries it has yet to apply without waiting: they must be cached.
        replica.read_back_from(applied + 1).await?;
        // Only then is the log marked replicated: its readers stop at the commit end, and
        // the entries just read back lie above it.
        replica
            .log
            .set_commit_end(high_watermark)
            .await
            .map_err(|source| log_error(&replica.id, source))?;
        // A start decided before a crash, if the anchor had reached it.
        replica.move_log_start().await?;
        Ok(replica)
    }

    /// The partition's name.
    pub fn id(&self) -> &PartitionId {
        &self.id
    }

    /// The partition log this replica's entries are written to.
    pub fn log(&self) -> &PartitionLog<S> {
        &self.log
    }

    /// Whether this replica leads its group now.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    /// The current term: the partition's leader epoch.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Whether this replica leads and has applied an entry of its own term: only then does
    /// its log hold, below the high watermark, every entry any leader committed (Raft's
    /// leader completeness), so state rebuilt from the log (consumer groups) is whole.
    pub fn leads_with_own_commit(&self) -> bool {
        let log = &self.node.raft.raft_log;
        self.is_leader()
            && log.applied >= log.committed
            && log
                .term(log.committed)
                .is_ok_and(|term| term == self.node.raft.term)
    }

    /// The voters in sync, as Kafka's ISR: on the leader, those that acknowledged every
    /// committed entry and were heard from within the last election timeout; elsewhere
    /// (a follower does not know), every voter.
    pub fn in_sync(&self) -> Vec<u64> {
        let raft = &self.node.raft;
        let mut voters: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        if !self.is_leader() {
            return voters;
        }
        let committed = raft.raft_log.committed;
        voters.retain(|&id| {
            id == raft.id
                || raft
                    .prs()
                    .get(id)
                    .is_some_and(|progress| progress.recent_active && progress.matched >= committed)
        });
        voters
    }

    /// The offset below which records are committed (on a majority, durably): what
    /// consumers may read.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The last Raft index this replica holds durably, and its term.
    pub fn last_index_and_term(&self) -> (u64, u64) {
        let state = self.storage.state.borrow();
        let last = state.table.last_index();
        (last, state.table.term(last).unwrap_or(0))
    }

    /// Where this replica fetches the batches of a snapshot it installs (needed before
    /// a snapshot arrives or a fill left undone is resumed).
    pub fn set_fill_source(&mut self, source: Rc<dyn FillSource>) {
        self.fill_source = Some(source);
    }

    /// What this replica did with snapshots.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        self.snapshot_stats
    }

    /// The anchor: the last index below the window (`snapshot.rs`).
    pub fn anchor(&self) -> Anchor {
        self.storage.state.borrow().table.anchor()
    }

    /// Advances the group's clock by one tick. A replica filling a snapshot stands still:
    /// it must not campaign with a log it does not hold yet; nor does one rejoining; nor
    /// one asleep (`hibernation.rs`). A quiet leader asks its followers to sleep.
    pub fn tick(&mut self) {
        self.ticks_since_anchor_sync = self.ticks_since_anchor_sync.saturating_add(1);
        if self.fill_from.is_some() || self.rejoin.is_some() || self.hibernation.asleep() {
            return;
        }
        if std::mem::take(&mut self.campaign_at_tick) && self.leader().is_none() {
            tracing::info!(
                partition = %self.id,
                "the leader's connections all closed: campaigning (pre-vote)"
            );
            if let Err(error) = self.campaign() {
                tracing::warn!(partition = %self.id, %error, "campaigning failed");
            }
        }
        self.node.tick();
        self.retry_silent_snapshots();
        if self.is_leader() {
            let quiet = self.quiet_at();
            let followers = self.other_voters();
            self.hibernation.leader_tick(quiet, &followers);
        }
    }

    /// Whether the group sleeps (its ticks skipped, `hibernation.rs`).
    pub fn asleep(&self) -> bool {
        self.hibernation.asleep()
    }

    /// On a leader with nothing to do, its term and last index: its log is persisted,
    /// committed, applied and on every voter, which replicates; nothing is proposed,
    /// waiting, being filled or read back, and no configuration change or leadership
    /// transfer is pending. (Messages waiting to be sent, such as heartbeats, do not
    /// count: they say nothing new.)
    fn quiet_at(&self) -> Option<(u64, u64)> {
        let raft = &self.node.raft;
        let log = &raft.raft_log;
        let last = log.last_index();
        let busy = !self.is_leader()
            || self.fill_from.is_some()
            || self.rejoin.is_some()
            || !self.proposals.is_empty()
            || !self.retries.is_empty()
            || !self.snapshot_ticks.is_empty()
            || raft.lead_transferee.is_some()
            || raft.pending_conf_index > log.applied
            || !self.storage.state.borrow().fetches.is_empty();
        if busy || log.committed != last || log.applied != last || log.persisted != last {
            return None;
        }
        let caught_up = (raft.prs().iter()).all(|(&id, progress)| {
            id == raft.id
                || (progress.matched == last && progress.state == ProgressState::Replicate)
        });
        caught_up.then_some((raft.term, last))
    }

    /// Takes a peer's word about sleeping (`hibernation.rs`).
    pub fn hibernation_signal(&mut self, from: u64, signal: Signal) {
        match signal {
            Signal::Ask { term, index } => {
                if self.settled_at(from, term, index) {
                    self.hibernation.agree(from, term, index);
                }
            }
            Signal::Agree { term, index } => {
                let quiet = self.quiet_at();
                let followers = self.other_voters();
                if self
                    .hibernation
                    .agreed(from, term, index, quiet, &followers)
                {
                    tracing::debug!(partition = %self.id, term, index, "asleep");
                }
            }
            Signal::Wake { .. } => self.wake(None),
        }
    }

    /// Whether this replica follows `leader` in `term` and holds (persisted), has committed
    /// and has applied its log to exactly `index`, with nothing being filled or read back:
    /// it may sleep.
    fn settled_at(&self, leader: u64, term: u64, index: u64) -> bool {
        let raft = &self.node.raft;
        let log = &raft.raft_log;
        raft.state == StateRole::Follower
            && raft.term == term
            && raft.leader_id == leader
            && log.last_index() == index
            && log.committed == index
            && log.applied == index
            && log.persisted == index
            && self.storage.state.borrow().fetches.is_empty()
            && self.fill_from.is_none()
            && self.rejoin.is_none()
    }

    /// Whether `message` is a follower's answer, in this leader's term, to a heartbeat or
    /// an append it already counted (a late one: every follower had the whole log when
    /// the group fell asleep): stepped without waking the leader.
    fn is_plain_acknowledgement(&self, message: &Message) -> bool {
        let answer = match message.get_msg_type() {
            MessageType::MsgHeartbeatResponse => true,
            MessageType::MsgAppendResponse => !message.reject,
            _ => false,
        };
        let raft = &self.node.raft;
        answer
            && self.is_leader()
            && message.term == raft.term
            && message.index <= raft.raft_log.last_index()
    }

    /// Wakes the group here if it sleeps; `tell`: also wake its leader (the replica is a
    /// follower woken by something else than that leader).
    fn wake(&mut self, tell: Option<u64>) {
        let term = self.node.raft.term;
        if self.hibernation.wake(tell.map(|leader| (leader, term))) {
            tracing::debug!(partition = %self.id, "awake");
        }
    }

    /// The signals about sleeping to send now, by recipient (`hibernation.rs`).
    pub fn take_hibernation_signals(&mut self) -> Vec<(u64, Signal)> {
        self.hibernation.take_outbox()
    }

    /// On a leader, tells raft-rs a snapshot failed once its follower has been silent
    /// about it for `SNAPSHOT_SILENCE_TICKS_MAX`: the message may have been lost, and
    /// raft-rs sends nothing more to that follower until told. A follower still filling
    /// gets the snapshot again and ignores it once done (it is no newer than its commit).
    fn retry_silent_snapshots(&mut self) {
        if !self.is_leader() {
            self.snapshot_ticks.clear();
            return;
        }
        let waiting: Vec<u64> = (self.node.raft.prs().iter())
            .filter(|(_, progress)| progress.state == ProgressState::Snapshot)
            .map(|(&id, _)| id)
            .collect();
        self.snapshot_ticks.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let ticks = self.snapshot_ticks.entry(id).or_insert(0);
            *ticks += 1;
            if *ticks >= SNAPSHOT_SILENCE_TICKS_MAX {
                self.snapshot_ticks.remove(&id);
                self.node.report_snapshot(id, SnapshotStatus::Failure);
            }
        }
    }

    /// `peer`'s process restarted, and every leadership it held ended with that process: a
    /// replica starts as a follower and leads again only by winning an election.
    ///
    /// - If this replica leads, it forgets what the peer acknowledged before (the peer may
    ///   have lost its unsynced tail, or all of its data with its directory) and probes for
    ///   its log's end again, from its own last entry down; a peer that lost everything is
    ///   then sent a snapshot.
    /// - If it follows the peer, it forgets that leader at once rather than an election
    ///   timeout later: Metadata then answers LEADER_NOT_AVAILABLE instead of naming a node
    ///   that refuses every request with NOT_LEADER_OR_FOLLOWER (kafka-python 3.0.12 asks
    ///   ListOffsets of a stale leader again and again without refreshing its metadata), and
    ///   the leader's lease no longer refuses another voter's campaign. The lowest-numbered
    ///   of the other voters campaigns now, as the old leader's leadership transfer would
    ///   have made it (no pre-vote round: the leader is known to be gone); if its log is
    ///   not up to date the others refuse it and elect on their own timeout, as without.
    pub fn peer_restarted(&mut self, peer: u64) {
        let own = self.node.raft.id;
        if peer == own {
            return;
        }
        if self.is_leader() {
            self.wake(None);
            let last = self.node.raft.raft_log.last_index();
            if let Some(progress) = self.node.raft.mut_prs().get_mut(peer) {
                progress.matched = 0;
                progress.become_probe();
                progress.next_idx = last + 1;
            }
            return;
        }
        if !self.forget_leader(peer) {
            return;
        }
        tracing::info!(
            partition = %self.id,
            leader = peer,
            "the leader's process restarted: campaigning now"
        );
        let mut transfer = Message::default();
        transfer.set_msg_type(MessageType::MsgTimeoutNow);
        transfer.from = own;
        transfer.to = own;
        // A message of term 0 is raft-rs's own, stepped whatever the replica's term.
        if let Err(error) = self.node.step(transfer) {
            tracing::warn!(partition = %self.id, %error, "campaigning after a leader's restart failed");
        }
    }

    /// Every connection `peer` had to this node closed: its process most likely died (the
    /// kernel closes a dead process's sockets at once), though a connection can also drop
    /// with the peer alive. A follower of `peer` forgets that leader at once (Metadata
    /// answers LEADER_NOT_AVAILABLE, and its lease no longer refuses a vote), and the
    /// lowest-numbered other voter campaigns at its next tick, with pre-vote, rather than
    /// an election timeout after the last heartbeat. The tick's delay lets the other
    /// voters hear of the closed connections first, so that their leases do not refuse
    /// the pre-vote. A voter that still hears from a live `peer` learns it is the leader
    /// again from its next heartbeat, and refuses the pre-vote if it did not forget.
    ///
    /// The node also calls this for a peer it has not heard from for an election timeout
    /// (a network partition leaves connections open). A sleeping group wakes for it when
    /// `peer` is one of its voters and this replica leads (its in-sync set and quorum check
    /// must see the silence), or when `peer` leads it.
    pub fn peer_gone(&mut self, peer: u64) {
        if peer == self.node.raft.id {
            return;
        }
        if self.is_leader() {
            if self.other_voters().contains(&peer) {
                self.wake(None);
            }
            return;
        }
        if self.forget_leader(peer) {
            self.campaign_at_tick = true;
        }
    }

    /// Forgets the leader if it is `peer`, waking the group (it must tick to elect);
    /// whether this replica should then campaign: it is the lowest-numbered of the other
    /// voters, and holds its log (neither filling a snapshot nor rejoining, see `tick`).
    fn forget_leader(&mut self, peer: u64) -> bool {
        if self.node.raft.leader_id != peer {
            return false;
        }
        self.node.raft.leader_id = raft::INVALID_ID;
        self.wake(None);
        let successor = (self.node.raft.prs().conf().voters().ids().iter())
            .filter(|&id| id != peer)
            .min();
        successor == Some(self.node.raft.id) && self.fill_from.is_none() && self.rejoin.is_none()
    }

    /// Makes this replica rejoin its group before it votes again (`rejoin.rs`): its node
    /// lost its data directory, or is new and cannot tell. Called before the replica
    /// takes any message.
    pub fn start_rejoin(&mut self) {
        tracing::info!(
            partition = %self.id,
            "rejoining: asking every other voter for its term and log before taking part"
        );
        self.rejoin = Some(Rejoin::default());
    }

    /// Whether this replica is still rejoining its group (it withholds its vote).
    pub fn rejoining(&self) -> bool {
        self.rejoin.is_some()
    }

    /// On a tick, the voters a rejoining replica asks for their term and log now (every
    /// `REJOIN_ASK_TICKS`, those that have not answered).
    pub fn rejoin_asks(&mut self) -> Vec<u64> {
        let others = self.other_voters();
        match &mut self.rejoin {
            Some(rejoin) => rejoin.due(&others, REJOIN_ASK_TICKS),
            None => Vec::new(),
        }
    }

    /// What this replica answers a rejoining peer: its term and the last entry it holds.
    pub fn log_state(&self) -> LogState {
        let (last_index, last_term) = self.last_index_and_term();
        LogState {
            term: self.node.raft.term,
            last_index,
            last_term,
        }
    }

    /// Takes a voter's answer to this replica's rejoin question. The last one moves it to
    /// the highest term its peers know, with a vote for itself (written with the next
    /// Ready, before anything is sent), and sets the floor its log must reach.
    pub fn rejoin_answer(&mut self, from: u64, state: LogState) {
        let others = self.other_voters();
        let Some(adopted) =
            (self.rejoin.as_mut()).and_then(|rejoin| rejoin.answer(from, state, &others))
        else {
            return;
        };
        let raft = &mut self.node.raft;
        if adopted.term > raft.term {
            raft.become_follower(adopted.term, raft::INVALID_ID);
            raft.vote = raft.id;
        }
        tracing::info!(
            partition = %self.id,
            term = raft.term,
            floor_term = adopted.floor_term,
            floor_index = adopted.floor_index,
            "rejoining: every voter answered; following, without a vote until the log reaches the floor"
        );
        self.check_rejoined();
    }

    /// Ends the rejoin once the log (filled, if a snapshot is being filled) reaches the
    /// floor.
    fn check_rejoined(&mut self) {
        let Some(rejoin) = &self.rejoin else { return };
        let (last_index, last_term) = self.last_index_and_term();
        if self.fill_from.is_none() && rejoin.reached(last_term, last_index) {
            self.rejoin = None;
            tracing::info!(partition = %self.id, last_index, last_term, "rejoined: votes again");
        }
    }

    /// The group's voters and learners, each sorted, as its configuration says now.
    pub fn members(&self) -> (Vec<u64>, Vec<u64>) {
        let conf = self.node.raft.prs().conf().to_conf_state();
        let (mut voters, mut learners) = (conf.voters, conf.learners);
        voters.sort_unstable();
        learners.sort_unstable();
        (voters, learners)
    }

    /// How many configurations the replica took in since it opened (changes applied,
    /// snapshots installed): cheap to compare, to learn that [`Replica::members`] changed.
    pub fn configurations(&self) -> u64 {
        self.configurations
    }

    /// The group's other voters, as its configuration says now.
    pub fn other_voters(&self) -> Vec<u64> {
        let raft = &self.node.raft;
        let mut voters: Vec<u64> = (raft.prs().conf().voters().ids().iter())
            .filter(|&id| id != raft.id)
            .collect();
        voters.sort_unstable();
        voters
    }

    /// Takes the group's voters one step towards `target` (a reassignment), on its leader;
    /// called again on every tick until it answers [`Reconfiguring::Done`]. The steps, each
    /// proposed once the one before applied (raft-rs takes one configuration change at a
    /// time):
    /// 1. the replicas new to the group join as learners: they vote on nothing while they
    ///    catch up. The first of them starts from a snapshot, which carries the
    ///    configuration (they open with none, `ReplicaConfig::voters` empty): if the window
    ///    still starts at the group's first entry, the anchor moves to the applied index
    ///    first, so no joiner replays entries from the start without it;
    /// 2. once each is caught up (active, within `LEARNER_CAUGHT_UP_ENTRIES` of the commit
    ///    index: under a steady load the latest entry's acknowledgement is always a round
    ///    trip away), they become voters (several at once through
    ///    joint consensus, which raft-rs leaves on its own);
    /// 3. a leader that is not in the target hands its leadership to the target's voter
    ///    furthest along (raft-rs does not handle a leader removing itself);
    /// 4. the replicas not in the target leave.
    ///
    /// Safe to call again at any step and on any leader: each step is read from the
    /// configuration as applied, so a new leader takes over where the old one stopped.
    pub async fn reconfigure(&mut self, target: &[u64]) -> Result<Reconfiguring, ReplicaError> {
        let conf = self.node.raft.prs().conf().to_conf_state();
        let voters: BTreeSet<u64> = conf.voters.iter().copied().collect();
        let learners: BTreeSet<u64> = conf.learners.iter().copied().collect();
        let target: BTreeSet<u64> = target.iter().copied().collect();
        let joint = !conf.voters_outgoing.is_empty();
        if voters == target && learners.is_empty() && !joint {
            return Ok(Reconfiguring::Done);
        }
        if !self.is_leader() {
            return Ok(Reconfiguring::NotLeader);
        }
        // A sleeping leader ticks no heartbeats: the change needs its group awake.
        self.wake(None);
        if joint || self.node.raft.has_pending_conf() || !self.leads_with_own_commit() {
            return Ok(Reconfiguring::Waiting("a configuration change is applying"));
        }
        let joining: Vec<u64> = (target.iter().copied())
            .filter(|id| !voters.contains(id) && !learners.contains(id))
            .collect();
        if !joining.is_empty() {
            let applied = self.node.raft.raft_log.applied;
            if self.anchor().index == 0 && applied > 0 {
                self.move_anchor(applied, true).await?;
            }
            self.propose_voters(&joining, ConfChangeType::AddLearnerNode)?;
            return Ok(Reconfiguring::Waiting("new replicas join as learners"));
        }
        let committed = self.node.raft.raft_log.committed;
        let raft = &self.node.raft;
        let promoted: Vec<u64> = (learners.iter().copied())
            .filter(|id| target.contains(id))
            .collect();
        let behind = (promoted.iter()).any(|id| {
            raft.prs().get(*id).is_none_or(|progress| {
                // Replicating: it took the snapshot (or the entries) and acknowledged them;
                // a learner just added starts "active" with nothing.
                progress.state != ProgressState::Replicate
                    || !progress.recent_active
                    || progress.matched.saturating_add(LEARNER_CAUGHT_UP_ENTRIES) < committed
            })
        });
        if behind {
            return Ok(Reconfiguring::Waiting("learners catch up"));
        }
        if !promoted.is_empty() {
            self.propose_voters(&promoted, ConfChangeType::AddNode)?;
            return Ok(Reconfiguring::Waiting("learners become voters"));
        }
        if !target.contains(&raft.id) {
            // One transfer at a time (raft-rs drops proposals while one is pending, and
            // gives it up after an election timeout), to a live voter replicating.
            if raft.lead_transferee.is_none() {
                let successor = (target.iter().copied())
                    .filter(|id| voters.contains(id))
                    .filter_map(|id| Some((id, raft.prs().get(id)?)))
                    .filter(|(_, progress)| {
                        progress.recent_active && progress.state == ProgressState::Replicate
                    })
                    .max_by_key(|(_, progress)| progress.matched);
                if let Some((successor, _)) = successor {
                    self.node.transfer_leader(successor);
                }
            }
            return Ok(Reconfiguring::Waiting("leadership moves into the target"));
        }
        let leaving: Vec<u64> = (voters.iter().chain(&learners).copied())
            .filter(|id| !target.contains(id))
            .collect();
        self.propose_voters(&leaving, ConfChangeType::RemoveNode)?;
        Ok(Reconfiguring::Waiting("replicas leave"))
    }

    /// Proposes one configuration change: `change` for each of `ids`, through joint
    /// consensus if there are several (left by raft-rs on its own).
    fn propose_voters(&mut self, ids: &[u64], change: ConfChangeType) -> Result<(), ReplicaError> {
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        for &id in ids {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(change);
            single.node_id = id;
            cc.mut_changes().push(single);
        }
        tracing::info!(partition = %self.id, ?ids, ?change, "proposing a configuration change");
        self.node
            .propose_conf_change(Vec::new(), cc)
            .map_err(|source| self.raft_error(source))
    }

    /// Starts an election now (an operator's or a test's choice; followers campaign on
    /// their own when the leader goes quiet).
    pub fn campaign(&mut self) -> Result<(), ReplicaError> {
        self.node
            .campaign()
            .map_err(|source| self.raft_error(source))
    }

    /// Takes a message from a peer. A heartbeat whose commit index lies past this
    /// replica's log (its leader still counts entries this replica lost with its data
    /// directory, until it learns of the restart, [`Replica::peer_restarted`]) commits only
    /// what the log holds: raft-rs would otherwise stop on it.
    ///
    /// A replica rejoining takes nothing while it asks its peers, and grants no vote
    /// after (`rejoin.rs`).
    pub fn step(&mut self, mut message: Message) -> Result<(), ReplicaError> {
        if self.hibernation.asleep() && !self.is_plain_acknowledgement(&message) {
            let leader = self.leader().filter(|&leader| leader != message.from);
            self.wake(leader.filter(|_| !self.is_leader()));
        }
        if let Some(rejoin) = &self.rejoin {
            let votes = matches!(
                message.get_msg_type(),
                MessageType::MsgRequestVote
                    | MessageType::MsgRequestPreVote
                    | MessageType::MsgTimeoutNow
            );
            if !rejoin.takes_messages() || votes {
                return Ok(());
            }
        }
        if message.get_msg_type() == MessageType::MsgHeartbeat {
            let (last, _) = self.last_index_and_term();
            if message.commit > last {
                tracing::debug!(
                    partition = %self.id,
                    commit = message.commit,
                    last,
                    "a heartbeat commits past this log's end; committing to its end"
                );
                message.commit = last;
            }
        }
        self.node
            .step(message)
            .map_err(|source| self.raft_error(source))
    }

    /// [`Replica::propose`], refused with [`ReplicaError::TermChanged`] when the replica's
    /// term is not `expected_term` (if given): a proposer that decided what to write under
    /// one term (a group coordinator loaded in it) never has it written in another.
    pub fn propose_in_term(
        &mut self,
        batches: &[u8],
        max_message_bytes: usize,
        expected_term: Option<u64>,
        answer: AnswerAt,
    ) -> Result<oneshot::Receiver<Result<Appended, ReplicaError>>, ReplicaError> {
        match expected_term {
            Some(expected) if expected != self.term() => Err(ReplicaError::TermChanged {
                partition: self.id.clone(),
                expected,
                term: self.term(),
            }),
            _ => self.propose_answered(batches, max_message_bytes, answer),
        }
    }

    /// Proposes the record batches of a produce request: each batch is stamped with its
    /// offsets and the leader's term and becomes one entry. The answer comes when the last
    /// entry commits, with the offsets the batches got. An idempotent producer's batch (the
    /// only one of its request) is checked first (module doc): a retry is not proposed, and
    /// is answered with its original's offsets once they are committed.
    pub fn propose(
        &mut self,
        batches: &[u8],
        max_message_bytes: usize,
    ) -> Result<oneshot::Receiver<Result<Appended, ReplicaError>>, ReplicaError> {
        self.propose_answered(batches, max_message_bytes, AnswerAt::Commit)
    }

    /// [`Replica::propose`], answered when `answer` says: at commit, or once the leader's
    /// own write is durable. A retry of an idempotent producer's batch is answered at
    /// commit either way.
    pub fn propose_answered(
        &mut self,
        batches: &[u8],
        max_message_bytes: usize,
        answer: AnswerAt,
    ) -> Result<oneshot::Receiver<Result<Appended, ReplicaError>>, ReplicaError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.wake(None);
        let info = batch::validate(batches, max_message_bytes).map_err(|source| {
            log_error(
                &self.id,
                LogError::InvalidBatch {
                    partition: self.id.clone(),
                    log_end: self.offset_next(),
                    source,
                },
            )
        })?;
        if info.batch_count == 0 {
            let partition = self.id.clone();
            return Err(log_error(&self.id, LogError::Empty { partition }));
        }
        let producer = ProducerBatch::of_request(batches).map_err(|source| {
            let partition = self.id.clone();
            log_error(&self.id, LogError::Producer { partition, source })
        })?;
        if let Some(batch) = &producer {
            match self.check_producer(batch)? {
                ProducerCheck::Append => {}
                ProducerCheck::Duplicate {
                    offset_first,
                    offset_next,
                } => {
                    return Ok(self.answer_retry(Appended {
                        offset_first,
                        offset_next,
                        log_append_time_ms: None,
                    }));
                }
            }
        }
        let term = self.term();
        let epoch = i32::try_from(term).map_err(|_| self.inconsistent("term past i32"))?;
        // A LogAppendTime topic's batches carry the leader's clock, stamped once here: the
        // replicas write the bytes as they are.
        let append_time =
            (self.log.config().timestamp_type() == TimestampType::LogAppendTime).then(now_ms);
        let offset_first = self.offset_next();
        let (entries, offset) = stamp_entries(batches, offset_first, epoch, append_time);
        // One proposal of every batch: raft-rs appends all of them or none.
        // (`RawNode::propose` takes one entry's data as a `Vec`; stepping the proposal
        // keeps the stamped `Bytes` as they are.)
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgPropose);
        message.from = self.node.raft.id;
        message.entries = entries.into();
        self.node
            .raft
            .step(message)
            .map_err(|source| self.raft_error(source))?;
        let (reply, answered) = oneshot::channel();
        let appended = Appended {
            offset_first,
            offset_next: offset,
            log_append_time_ms: append_time,
        };
        if let Some(batch) = producer {
            // `of_request` found it the request's only batch: it starts at `offset_first`.
            assert_eq!(info.batch_count, 1, "an idempotent request holds one batch");
            let proposed = self
                .producers_proposed
                .entry(batch.producer_id())
                .or_default();
            proposed.push((batch, offset_first));
            if proposed.len() > BATCHES_PER_PRODUCER_MAX {
                proposed.remove(0);
            }
        }
        let last_index = self.node.raft.raft_log.last_index();
        self.proposals.insert(
            last_index,
            Proposal {
                term,
                appended,
                at_leader_write: answer == AnswerAt::LeaderWrite,
                reply,
            },
        );
        Ok(answered)
    }

    /// Proposes that the partition's log start at `offset` (at most the high watermark) on
    /// every replica (module doc): answered with this log's new start once it moved, or at
    /// once if it is there already; refused if this replica stops leading first.
    pub fn propose_log_start(
        &mut self,
        offset: i64,
    ) -> Result<oneshot::Receiver<Result<i64, ReplicaError>>, ReplicaError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let log_start = self.log.offsets().log_start;
        if offset > self.high_watermark && !self.leads_with_own_commit() {
            // A new leader's high watermark may trail what its predecessor committed until
            // it commits an entry of its term: ask again then (NOT_LEADER is retriable).
            return Err(self.not_leader());
        }
        if offset > self.high_watermark || offset < 0 {
            let partition = self.id.clone();
            let high_watermark = self.high_watermark;
            return Err(log_error(
                &self.id,
                LogError::OffsetOutOfRange {
                    partition,
                    offset,
                    log_start,
                    high_watermark,
                },
            ));
        }
        let (reply, answered) = oneshot::channel();
        if offset <= log_start {
            let _ = reply.send(Ok(log_start));
            return Ok(answered);
        }
        self.wake(None);
        let mut context = LOG_START_CONTEXT.to_vec();
        context.extend_from_slice(&offset.to_be_bytes());
        self.node
            .propose(context, Vec::new())
            .map_err(|source| self.raft_error(source))?;
        self.start_waiters.push((offset, reply));
        Ok(answered)
    }

    /// Checks an idempotent producer's batch against the log's producer state followed by
    /// the producer's batches proposed and not yet persisted.
    fn check_producer(&self, batch: &ProducerBatch) -> Result<ProducerCheck, ReplicaError> {
        let proposed = self
            .producers_proposed
            .get(&batch.producer_id())
            .map_or(&[][..], Vec::as_slice);
        self.log
            .check_producer_batch(batch, proposed)
            .map_err(|source| log_error(&self.id, source))
    }

    /// The answer to a retried batch whose original lies at `appended`: now if it is
    /// committed, else when the high watermark reaches its end (the original is in this
    /// leader's log or proposed by it, so it commits unless leadership is lost).
    fn answer_retry(
        &mut self,
        appended: Appended,
    ) -> oneshot::Receiver<Result<Appended, ReplicaError>> {
        assert!(
            appended.offset_first < appended.offset_next
                && appended.offset_next <= self.offset_next(),
            "a retry's original {}..{} lies in the log or among the proposals (end {})",
            appended.offset_first,
            appended.offset_next,
            self.offset_next()
        );
        let (reply, answer) = oneshot::channel();
        if appended.offset_next <= self.high_watermark {
            let _ = reply.send(Ok(appended));
        } else {
            let term = self.term();
            self.retries.push(Proposal {
                term,
                appended,
                at_leader_write: false,
                reply,
            });
        }
        answer
    }

    /// Whether [`Replica::process_ready`] has work.
    pub fn has_ready(&self) -> bool {
        self.fill_from.is_some()
            || self.node.has_ready()
            || !self.storage.state.borrow().fetches.is_empty()
    }

    /// Persists what raft-rs has ready, applies what committed, and returns the messages
    /// to send to peers, in order.
    pub async fn process_ready(&mut self) -> Result<Vec<Message>, ReplicaError> {
        let mut out = Vec::new();
        self.process_ready_sending(|messages| out.extend(messages))
            .await?;
        Ok(out)
    }

    /// [`Replica::process_ready`], handing the messages to `send` as soon as they may go:
    /// a leader's appends and heartbeats (raft-rs's `messages`) before its own write of
    /// the entries, so its followers write them while it does (raft's leader may append
    /// to its followers before its own log holds the entries; it counts itself only once
    /// they are durable), and what depends on this replica's durable state (raft-rs's
    /// `persisted_messages`: votes, a follower's answers) only after it is.
    pub async fn process_ready_sending(
        &mut self,
        mut send: impl FnMut(Vec<Message>),
    ) -> Result<(), ReplicaError> {
        self.fill().await?;
        self.serve_fetches().await?;
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        send(ready.take_messages());
        let mut out = Vec::new();
        if ready.snapshot().get_metadata().index != 0 {
            self.install(ready.snapshot()).await?;
        }
        self.apply(ready.take_committed_entries()).await?;
        let entries = ready.take_entries();
        let written = entries.last().map(|entry| (entry.index, entry.term));
        self.persist_entries(entries).await?;
        if let Some((index, term)) = written {
            self.answer_leader_writes(index, term);
        }
        self.forget_persisted_producers();
        if let Some(hard_state) = ready.hs() {
            self.persist_hard_state(hard_state.clone()).await?;
        }
        out.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.state.borrow_mut().hard_state.commit = commit;
        }
        out.extend(light.take_messages());
        self.apply(light.take_committed_entries()).await?;
        self.node.advance_apply();
        if !self.is_leader() {
            self.fail_proposals();
        }
        self.compact().await?;
        self.check_rejoined();
        let keep_from = self.keep_cached_from();
        (self.storage.state.borrow_mut().table).evict(keep_from, self.entry_cache_bytes_max);
        send(out);
        Ok(())
    }

    /// Moves the anchor forward once `window_entries_keep` more entries were applied
    /// behind it, keeping `window_entries_keep` applied entries in the window. A leader
    /// keeps, besides, the entries its followers that are in touch still need, up to
    /// `window_entries_max` behind the applied index; a follower further behind (or out
    /// of touch) gets a snapshot. The anchor is written without a sync: one lost in a
    /// crash leaves a longer window, which is only slower to open. At most every
    /// `anchor_sync_ticks`, though, it is synced, and the log's retention may then delete
    /// what lies below it: never below an anchor a crash could lose, or the window would
    /// reopen reaching into deleted segments.
    async fn compact(&mut self) -> Result<(), ReplicaError> {
        let applied = self.node.raft.raft_log.applied;
        let anchor = self.anchor();
        // A log start decided past the anchor: every applied entry leaves the window, which
        // then starts at or past it (a follower that still needs them gets a snapshot).
        let start_waits = self
            .pending_log_start
            .is_some_and(|offset| offset > anchor.offset);
        if start_waits && applied > anchor.index {
            self.move_anchor(applied, true).await?;
            return self.move_log_start().await;
        }
        // A snapshot was refused: the anchor lies below the last configuration change.
        let conf_index = self.storage.state.borrow().conf_index;
        let refused = (self.storage.state.borrow().snapshot_waits_for_anchor).replace(false);
        if refused && conf_index > anchor.index && applied >= conf_index {
            self.move_anchor(applied, true).await?;
            return self.move_log_start().await;
        }
        let mut target = applied.saturating_sub(self.window_entries_keep);
        if self.is_leader() {
            let raft = &self.node.raft;
            let needed = (raft.prs().iter())
                .filter(|(&id, progress)| id != raft.id && progress.recent_active)
                .map(|(_, progress)| progress.matched)
                .min();
            if let Some(needed) = needed {
                target = target.min(needed.max(applied.saturating_sub(self.window_entries_max)));
            }
        }
        if target >= anchor.index + self.window_entries_keep {
            let sync = self.ticks_since_anchor_sync >= self.anchor_sync_ticks;
            self.move_anchor(target, sync).await?;
        }
        self.move_log_start().await
    }

    /// Moves the anchor to `target` (applied), synced if `sync`; a synced anchor bounds the
    /// log's retention.
    async fn move_anchor(&mut self, target: u64, sync: bool) -> Result<(), ReplicaError> {
        let moved = {
            let table = &self.storage.state.borrow().table;
            let Some(term) = table.term(target) else {
                return Err(self.inconsistent(&format!("applied entry {target} has no term")));
            };
            Anchor {
                index: target,
                term,
                offset: table.offset_at(target + 1),
            }
        };
        self.journal
            .append(&[Record::Anchor(moved)], sync)
            .await
            .map_err(|source| self.journal_error(source))?;
        self.storage.state.borrow_mut().table.compact_to(moved);
        if sync {
            self.ticks_since_anchor_sync = 0;
            self.log.bound_retention(moved.offset);
        }
        Ok(())
    }

    /// Installs a leader's snapshot (`snapshot.rs`): records the new anchor and the offset
    /// this log is trusted to (its commit end: committed bytes are the leader's too) with
    /// the hard state and configuration that go with it, empties the window, and fills
    /// the log up to the anchor's offset.
    async fn install(&mut self, snapshot: &Snapshot) -> Result<(), ReplicaError> {
        let metadata = snapshot.get_metadata();
        let Some(data) = snapshot::decode_data(&snapshot.data) else {
            return Err(self.inconsistent("a snapshot's data does not decode"));
        };
        let offset = data.offset;
        let fill_from = self.high_watermark;
        if offset < fill_from {
            return Err(self.inconsistent(&format!(
                "a snapshot ends at offset {offset}, below the commit end {fill_from}"
            )));
        }
        let anchor = Anchor {
            index: metadata.index,
            term: metadata.term,
            offset,
        };
        let mut hard_state = self.node.raft.hard_state();
        hard_state.commit = hard_state.commit.max(anchor.index);
        let conf_state = metadata.get_conf_state().clone();
        let records = [
            Record::Snapshot { anchor, fill_from },
            Record::ConfState(conf_state.clone()),
            Record::HardState(hard_state.clone()),
        ];
        self.journal
            .append(&records, true)
            .await
            .map_err(|source| self.journal_error(source))?;
        {
            let mut state = self.storage.state.borrow_mut();
            state.table = EntryTable::new(anchor);
            state.conf_state = conf_state;
            state.hard_state = hard_state;
        }
        self.configurations += 1;
        self.fail_proposals();
        tracing::info!(
            partition = %self.id,
            index = anchor.index,
            offset_from = fill_from,
            offset_to = offset,
            "installing a snapshot: copying the batches below it from a peer"
        );
        self.fill_from = Some(fill_from);
        // The group's decisions below the anchor are never applied here: the leader's word
        // for them (recorded before the fill, which moves the log there once done).
        self.decide_log_start(data.log_start).await?;
        self.fill().await?;
        self.snapshot_stats.installed += 1;
        Ok(())
    }

    /// Does the fill a snapshot left, if any: cuts the log to the offset it trusts,
    /// copies the batches up to the anchor's offset from peers, and records that it is
    /// done. The batches are validated and written as a follower writes entries.
    async fn fill(&mut self) -> Result<(), ReplicaError> {
        let Some(fill_from) = self.fill_from else {
            return Ok(());
        };
        let Some(source) = self.fill_source.clone() else {
            return Err(ReplicaError::Unsupported {
                partition: self.id.clone(),
                what: "a snapshot to install, without a source to fill it from",
            });
        };
        let anchor = self.anchor();
        if self.log.offsets().log_end > fill_from {
            self.log
                .truncate_to(fill_from)
                .await
                .map_err(|source| log_error(&self.id, source))?;
        }
        // The latest log start a peer named: the group may have moved it inside a batch.
        let mut peers_start = 0;
        loop {
            let log_end = self.log.offsets().log_end;
            if log_end >= anchor.offset {
                break;
            }
            let Some(fetched) = source.fetch(&self.id, log_end, anchor.offset).await else {
                return Err(ReplicaError::Unsupported {
                    partition: self.id.clone(),
                    what: "a snapshot's fill, stopped with the node",
                });
            };
            let chunk = match fetched {
                Fetched::Batches { batches, log_start } => {
                    peers_start = peers_start.max(log_start);
                    batches
                }
                Fetched::StartsAt(start) if start > log_end => {
                    self.restart_log(start.min(anchor.offset)).await?;
                    continue;
                }
                Fetched::StartsAt(start) => {
                    return Err(self.inconsistent(&format!(
                        "a fill source named log start {start}, not past the offset {log_end} \
                         asked for"
                    )));
                }
            };
            let batches = snapshot::whole_batches(&chunk, log_end, anchor.offset)
                .map_err(|reason| self.inconsistent(&reason))?;
            if batches.is_empty() {
                continue;
            }
            let len = batches.len() as u64;
            self.log
                .append_replicated(batches, Ack::Durable)
                .await
                .map_err(|source| log_error(&self.id, source))?;
            self.snapshot_stats.fill_bytes += len;
        }
        if self.log.offsets().log_end != anchor.offset {
            return Err(self.inconsistent("a snapshot's fill went past the anchor's offset"));
        }
        self.journal
            .append(&[Record::Anchor(anchor)], true)
            .await
            .map_err(|source| self.journal_error(source))?;
        self.fill_from = None;
        self.high_watermark = anchor.offset;
        self.log
            .set_commit_end(anchor.offset)
            .await
            .map_err(|source| log_error(&self.id, source))?;
        self.ticks_since_anchor_sync = 0;
        self.log.bound_retention(anchor.offset);
        tracing::info!(partition = %self.id, offset = anchor.offset, "snapshot installed");
        // The group's decisions below the anchor are not applied here: its start is theirs.
        self.decide_log_start(peers_start).await?;
        self.move_log_start().await
    }

    /// Empties the log being filled and starts it again at `offset`: no peer asked for
    /// the batches from this log's end has them, their retention having deleted them
    /// (the source asks every peer before it says so). A crash before the fill is done
    /// reopens the log at its start, or at its old end, and the fill asks again.
    async fn restart_log(&mut self, offset: i64) -> Result<(), ReplicaError> {
        tracing::info!(
            partition = %self.id,
            log_end = self.log.offsets().log_end,
            offset,
            "a peer's log starts past this one's end (retention there): starting this \
             log again at its start"
        );
        self.log
            .restart_at(offset)
            .await
            .map_err(|source| log_error(&self.id, source))?;
        // The log is trusted to its new start: what a later cut must not go below.
        self.fill_from = Some(offset);
        self.high_watermark = offset;
        Ok(())
    }

    /// Closes the partition log (everything written is synced).
    pub async fn close(self) -> Result<(), ReplicaError> {
        self.log
            .close()
            .await
            .map_err(|source| log_error(&self.id, source))
    }

    /// The Kafka offset the next proposed batch gets: after the last data entry of the
    /// whole Raft log, entries not yet persisted included.
    fn offset_next(&self) -> i64 {
        let unstable = &self.node.raft.raft_log.unstable.entries;
        unstable
            .iter()
            .rev()
            .filter(|entry| is_data(entry))
            .find_map(|entry| FrameHeader::parse(&entry.data).ok())
            .map_or_else(
                || self.storage.state.borrow().table.offset_next(),
                |header| header.offset_next(),
            )
    }

    /// Writes `entries` after cutting whatever they replace, in index order (module doc).
    async fn persist_entries(&mut self, entries: Vec<Entry>) -> Result<(), ReplicaError> {
        let Some(first) = entries.first().map(|entry| entry.index) else {
            return Ok(());
        };
        let last_index = self.storage.state.borrow().table.last_index();
        if first <= last_index {
            self.truncate_from(first).await?;
        }
        let mut at = 0;
        while at < entries.len() {
            let run = entries[at..]
                .iter()
                .take_while(|entry| is_data(entry) == is_data(&entries[at]))
                .count();
            if is_data(&entries[at]) {
                self.persist_data(&entries[at..at + run]).await?;
            } else {
                self.persist_internal(&entries[at..at + run]).await?;
            }
            at += run;
        }
        Ok(())
    }

    /// Writes a run of data entries in one group commit, durable on return.
    async fn persist_data(&mut self, entries: &[Entry]) -> Result<(), ReplicaError> {
        let mut metas = Vec::with_capacity(entries.len());
        let mut offset = self.storage.state.borrow().table.offset_next();
        for entry in entries {
            // The frame and fields only: `append_replicated` below validates the whole
            // batch (CRC included) before anything is written.
            let header = match FrameHeader::parse(&entry.data) {
                Ok(header) if header.size_bytes == entry.data.len() => header,
                _ => return Err(self.inconsistent("a data entry is not one record batch")),
            };
            if header.base_offset != offset
                || u64::try_from(header.partition_leader_epoch) != Ok(entry.term)
            {
                return Err(self.inconsistent(&format!(
                    "entry {} of term {} holds a batch at offset {} of epoch {}, expected \
                     offset {offset}",
                    entry.index, entry.term, header.base_offset, header.partition_leader_epoch
                )));
            }
            let offset_next = header.offset_next();
            metas.push(Meta {
                term: entry.term,
                kind: Kind::Data {
                    offset_first: offset,
                    offset_next,
                    bytes: Some(entry.data.clone()),
                },
            });
            offset = offset_next;
        }
        // Queued together, the appends leave in one group commit.
        let appends = entries
            .iter()
            .map(|entry| self.log.append_replicated(entry.data.clone(), Ack::Durable));
        for appended in futures::future::join_all(appends).await {
            appended.map_err(|source| log_error(&self.id, source))?;
        }
        let mut state = self.storage.state.borrow_mut();
        for (entry, meta) in entries.iter().zip(metas) {
            state.table.push(entry.index, meta);
        }
        Ok(())
    }

    /// Writes a run of internal entries to the journal, durable on return.
    async fn persist_internal(&mut self, entries: &[Entry]) -> Result<(), ReplicaError> {
        let offset = self.storage.state.borrow().table.offset_next();
        let internals: Vec<Internal> = entries
            .iter()
            .map(|entry| Internal {
                index: entry.index,
                term: entry.term,
                offset,
                entry_type: entry.get_entry_type(),
                context: entry.context.clone(),
                data: entry.data.clone(),
            })
            .collect();
        let records: Vec<Record> = internals.iter().cloned().map(Record::Internal).collect();
        self.journal
            .append(&records, true)
            .await
            .map_err(|source| self.journal_error(source))?;
        let mut state = self.storage.state.borrow_mut();
        for internal in &internals {
            state.table.push_internal(internal);
        }
        Ok(())
    }

    /// Drops every entry from `index` on: the partition log is cut first, then the
    /// journal records the truncation, so a crash between leaves an older log, not a mix.
    async fn truncate_from(&mut self, index: u64) -> Result<(), ReplicaError> {
        let offset = self.storage.state.borrow().table.offset_at(index);
        if offset < self.high_watermark {
            return Err(self.inconsistent(&format!(
                "entries from index {index} (offset {offset}) would be cut below the high \
                 watermark {}",
                self.high_watermark
            )));
        }
        if offset < self.log.offsets().log_end {
            self.log
                .truncate_to(offset)
                .await
                .map_err(|source| log_error(&self.id, source))?;
        }
        self.journal
            .append(&[Record::Truncation { index }], true)
            .await
            .map_err(|source| self.journal_error(source))?;
        self.storage.state.borrow_mut().table.truncate_from(index);
        Ok(())
    }

    async fn persist_hard_state(
        &mut self,
        mut hard_state: raft::eraftpb::HardState,
    ) -> Result<(), ReplicaError> {
        // Never a commit index past a configuration change not applied yet: reopened, the
        // replica takes every entry up to the commit index as applied, and a change skipped
        // so would leave it on an old configuration for good. (A lower commit index is
        // always safe: the leader tells it again.) The next hard state written after the
        // change applied carries the rest.
        let applied = self.node.raft.raft_log.applied;
        let unapplied_change = {
            let state = self.storage.state.borrow();
            (applied + 1..=hard_state.commit).find(|&index| {
                state.table.get(index).is_some_and(|meta| {
                    matches!(
                        meta.kind,
                        Kind::Internal {
                            entry_type: EntryType::EntryConfChange | EntryType::EntryConfChangeV2,
                            ..
                        }
                    )
                })
            })
        };
        if let Some(change) = unapplied_change {
            hard_state.commit = change - 1;
        }
        // The storage's hard state is the one last written (its commit index alone may be
        // ahead): sync only when the term or vote changes.
        let sync = {
            let persisted = &self.storage.state.borrow().hard_state;
            (hard_state.term, hard_state.vote) != (persisted.term, persisted.vote)
        };
        self.journal
            .append(&[Record::HardState(hard_state.clone())], sync)
            .await
            .map_err(|source| self.journal_error(source))?;
        self.storage.state.borrow_mut().hard_state = hard_state;
        Ok(())
    }

    /// Applies committed entries: data moves the high watermark, configuration changes
    /// take effect and are recorded; proposals up to the last are answered.
    async fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ReplicaError> {
        let Some(last) = entries.last().map(|entry| (entry.index, entry.term)) else {
            return Ok(());
        };
        let high_watermark_before = self.high_watermark;
        for entry in &entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if is_data(entry) => {
                    if let Ok(header) = FrameHeader::parse(&entry.data) {
                        self.high_watermark = header.offset_next();
                    }
                }
                EntryType::EntryNormal => {
                    if let Some(offset) = log_start_of(entry) {
                        self.decide_log_start(offset).await?;
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(entry).await?;
                }
            }
        }
        if self.high_watermark != high_watermark_before {
            // Committed entries are persisted here (raft-rs hands over none that are not),
            // so the commit end lies within the log.
            self.log
                .set_commit_end(self.high_watermark)
                .await
                .map_err(|source| log_error(&self.id, source))?;
        }
        self.answer_proposals(last.0, last.1);
        self.answer_retries();
        Ok(())
    }

    /// Records a log start the group decided (synced: raft-rs does not apply an entry
    /// again after a restart); [`Replica::compact`] moves the log there.
    async fn decide_log_start(&mut self, offset: i64) -> Result<(), ReplicaError> {
        {
            let known = &mut self.storage.state.borrow_mut().log_start;
            *known = (*known).max(offset);
        }
        if offset <= self.log.offsets().log_start || self.pending_log_start >= Some(offset) {
            return Ok(());
        }
        self.journal
            .append(&[Record::LogStart { offset }], true)
            .await
            .map_err(|source| self.journal_error(source))?;
        self.pending_log_start = Some(offset);
        Ok(())
    }

    /// Moves the partition log's start to the one the group decided, once the anchor is at
    /// or past it (and durable: a window reopened after a crash must not reach below the
    /// start); answers the leader's waiters it satisfies.
    async fn move_log_start(&mut self) -> Result<(), ReplicaError> {
        let Some(offset) = self.pending_log_start else {
            return Ok(());
        };
        let anchor = self.anchor();
        if offset > anchor.offset || self.fill_from.is_some() {
            return Ok(());
        }
        self.journal
            .sync()
            .await
            .map_err(|source| self.journal_error(source))?;
        self.ticks_since_anchor_sync = 0;
        self.log.bound_retention(anchor.offset);
        let start = self
            .log
            .delete_records_before(offset)
            .await
            .map_err(|source| log_error(&self.id, source))?;
        self.pending_log_start = None;
        tracing::info!(partition = %self.id, log_start = start, "log start moved by the group");
        for (wanted, reply) in std::mem::take(&mut self.start_waiters) {
            if wanted <= start {
                let _ = reply.send(Ok(start));
            } else {
                self.start_waiters.push((wanted, reply));
            }
        }
        Ok(())
    }

    async fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), ReplicaError> {
        let conf_state = if entry.get_entry_type() == EntryType::EntryConfChange {
            let change: ConfChange = protobuf::Message::parse_from_bytes(&entry.data)
                .map_err(|_| self.inconsistent("a configuration change does not decode"))?;
            self.node.apply_conf_change(&change)
        } else {
            let change: ConfChangeV2 = protobuf::Message::parse_from_bytes(&entry.data)
                .map_err(|_| self.inconsistent("a configuration change does not decode"))?;
            self.node.apply_conf_change(&change)
        }
        .map_err(|source| self.raft_error(source))?;
        // With the commit index through the change, after it: a hard state written before
        // stops short of it (`persist_hard_state`), so a reopened replica never takes the
        // change as applied without its configuration.
        // Exactly through it: a later change committed with it is not applied yet.
        let mut hard_state = self.storage.state.borrow().hard_state.clone();
        hard_state.commit = entry.index;
        let records = [
            Record::ConfState(conf_state.clone()),
            Record::HardState(hard_state),
        ];
        self.journal
            .append(&records, true)
            .await
            .map_err(|source| self.journal_error(source))?;
        let mut state = self.storage.state.borrow_mut();
        state.conf_state = conf_state;
        state.conf_index = entry.index;
        self.configurations += 1;
        Ok(())
    }

    /// Answers the proposals whose last entry is at or below `index` (which committed in
    /// `term`): committed if their entry is still the one proposed (same term), else lost
    /// to a new leader.
    fn answer_proposals(&mut self, index: u64, term_of_index: u64) {
        let later = self.proposals.split_off(&(index + 1));
        let answered = std::mem::replace(&mut self.proposals, later);
        for (proposal_index, proposal) in answered {
            let term = if proposal_index == index {
                Some(term_of_index)
            } else {
                self.storage.state.borrow().table.term(proposal_index)
            };
            let outcome = if term == Some(proposal.term) {
                Ok(proposal.appended)
            } else {
                Err(self.not_leader())
            };
            let _ = proposal.reply.send(outcome);
        }
    }

    /// Answers the acks=1 proposals whose entries this leader's write just made durable
    /// (up to `index`, written in `term`): those proposed in that term, while it still
    /// leads in it. One proposed in an earlier term waits for its commit as any other (its
    /// entries may have been replaced), and a replica that stepped down in the meantime
    /// (its entries will likely be cut) fails them with the rest (`fail_proposals`).
    fn answer_leader_writes(&mut self, index: u64, term: u64) {
        if !self.is_leader() || self.term() != term {
            return;
        }
        let written: Vec<u64> = (self.proposals.range(..=index))
            .filter(|(_, proposal)| proposal.at_leader_write && proposal.term == term)
            .map(|(&at, _)| at)
            .collect();
        for at in written {
            if let Some(proposal) = self.proposals.remove(&at) {
                let _ = proposal.reply.send(Ok(proposal.appended));
            }
        }
    }

    /// Answers the retries whose original the high watermark now covers. One taken in an
    /// earlier term is refused instead: the batch at its offsets may have been replaced
    /// since (in the term it was taken in, this replica led and its log was not cut).
    fn answer_retries(&mut self) {
        let term = self.term();
        let high_watermark = self.high_watermark;
        let (done, waiting): (Vec<Proposal>, Vec<Proposal>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|retry| retry.term != term || retry.appended.offset_next <= high_watermark);
        self.retries = waiting;
        for retry in done {
            let outcome = if retry.term == term {
                Ok(retry.appended)
            } else {
                Err(self.not_leader())
            };
            let _ = retry.reply.send(outcome);
        }
    }

    /// Drops the proposed idempotent batches the partition log now holds: its producer
    /// state covers them.
    fn forget_persisted_producers(&mut self) {
        let persisted_end = self.storage.state.borrow().table.offset_next();
        self.producers_proposed.retain(|_, proposed| {
            proposed.retain(|(_, offset_first)| *offset_first >= persisted_end);
            !proposed.is_empty()
        });
    }

    /// Refuses the proposals and retries not yet answered, and forgets the batches
    /// proposed: this replica no longer leads.
    fn fail_proposals(&mut self) {
        for (_, proposal) in std::mem::take(&mut self.proposals) {
            let _ = proposal.reply.send(Err(self.not_leader()));
        }
        for (_, reply) in std::mem::take(&mut self.start_waiters) {
            let _ = reply.send(Err(self.not_leader()));
        }
        for retry in std::mem::take(&mut self.retries) {
            let _ = retry.reply.send(Err(self.not_leader()));
        }
        self.producers_proposed.clear();
    }

    /// Reads back the data entries raft-rs asked for that are no longer cached, then
    /// tells it to ask again.
    async fn serve_fetches(&mut self) -> Result<(), ReplicaError> {
        let fetches = std::mem::take(&mut self.storage.state.borrow_mut().fetches);
        for fetch in fetches {
            // The first missing entry on, one read of at most `ENTRY_FETCH_BYTES_MAX`:
            // raft-rs sends what is cached from `low` on and asks again for the rest.
            let missing = (fetch.low..fetch.high)
                .find_map(|index| self.uncached_offset(index).map(|offset| (index, offset)));
            if let Some((index, offset)) = missing {
                self.read_back(index, offset).await?;
            }
            self.node.on_entries_fetched(fetch.context);
        }
        Ok(())
    }

    /// Caches the data of every entry from `index` to the last.
    async fn read_back_from(&mut self, index: u64) -> Result<(), ReplicaError> {
        let last = self.storage.state.borrow().table.last_index();
        for index in index..=last {
            let missing = self.uncached_offset(index);
            if let Some(offset) = missing {
                self.read_back(index, offset).await?;
            }
        }
        Ok(())
    }

    /// The offset of the data entry at `index` if its bytes are not cached.
    fn uncached_offset(&self, index: u64) -> Option<i64> {
        let state = self.storage.state.borrow();
        match state.table.get(index).map(|meta| &meta.kind) {
            Some(Kind::Data {
                offset_first,
                bytes: None,
                ..
            }) => Some(*offset_first),
            _ => None,
        }
    }

    /// Reads the batches from the data entry `index` (at `offset`) on, up to
    /// `ENTRY_FETCH_BYTES_MAX`, into the table.
    async fn read_back(&mut self, index: u64, offset: i64) -> Result<(), ReplicaError> {
        let bytes = self
            .log
            .read_bytes(offset, ENTRY_FETCH_BYTES_MAX)
            .await
            .map_err(|source| log_error(&self.id, source))?;
        let bytes = Bytes::from(bytes);
        let mut state = self.storage.state.borrow_mut();
        let mut at = 0;
        let mut index = index;
        while let Ok(header) = FrameHeader::parse(&bytes[at..]) {
            let size = header.size_bytes;
            while matches!(
                state.table.get(index).map(|meta| &meta.kind),
                Some(Kind::Internal { .. })
            ) {
                index += 1;
            }
            match state.table.get(index).map(|meta| &meta.kind) {
                Some(Kind::Data { offset_first, .. }) if *offset_first == header.base_offset => {
                    state.table.fill(index, bytes.slice(at..at + size));
                }
                _ => break,
            }
            index += 1;
            at += size;
        }
        Ok(())
    }

    /// The first index whose cached bytes must stay: those not applied yet, which raft-rs
    /// reads without waiting. A follower that lags is served entries read back from the
    /// log, so a follower that is down pins nothing in memory.
    fn keep_cached_from(&self) -> u64 {
        self.node.raft.raft_log.applied + 1
    }

    fn not_leader(&self) -> ReplicaError {
        ReplicaError::NotLeader {
            partition: self.id.clone(),
            leader: self.leader(),
        }
    }

    fn raft_error(&self, source: raft::Error) -> ReplicaError {
        if matches!(source, raft::Error::ProposalDropped) {
            return self.not_leader();
        }
        ReplicaError::Raft {
            partition: self.id.clone(),
            source,
        }
    }

    fn journal_error(&self, source: JournalError) -> ReplicaError {
        ReplicaError::Journal {
            partition: self.id.clone(),
            source,
        }
    }

    fn inconsistent(&self, reason: &str) -> ReplicaError {
        ReplicaError::Inconsistent {
            partition: self.id.clone(),
            reason: reason.to_string(),
        }
    }
}

/// A validated request's batches as entries, each stamped with its offsets from
/// `offset_first`, the leader's `epoch` and, on a LogAppendTime topic, `append_time`;
/// with the offset after the last.
fn stamp_entries(
    batches: &[u8],
    offset_first: i64,
    epoch: i32,
    append_time: Option<i64>,
) -> (Vec<Entry>, i64) {
    let mut offset = offset_first;
    let mut rest = batches;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let Ok(header) = FrameHeader::parse(rest) else {
            unreachable!("a validated request holds whole batches");
        };
        let (this, after) = rest.split_at(header.size_bytes);
        let mut stamped = BytesMut::from(this);
        let stamped_ok = batch::stamp_base_offset(&mut stamped, offset)
            .and_then(|()| batch::set_partition_leader_epoch(&mut stamped, epoch))
            .and_then(|()| match append_time {
                Some(time) => batch::stamp_log_append_time(&mut stamped, time),
                None => Ok(()),
            });
        assert!(stamped_ok.is_ok(), "a validated batch could not be stamped");
        offset += header.offset_count as i64;
        entries.push(Entry {
            data: stamped.freeze(),
            ..Entry::default()
        });
        rest = after;
    }
    (entries, offset)
}

/// The wall clock in milliseconds since the Unix epoch, as Kafka's brokers stamp
/// LogAppendTime (0 for a clock before the epoch).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Whether an entry is a record batch (a normal entry with data) rather than one of
/// Raft's own (a new leader's empty entry, a configuration change).
fn is_data(entry: &Entry) -> bool {
    entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty()
}

fn log_error(partition: &PartitionId, source: LogError) -> ReplicaError {
    ReplicaError::Log {
        partition: partition.clone(),
        source,
    }
}

/// Makes a new group's journal: its voters are the configured ones, from the partition's
/// start. A log with records but no journal lost its journal: starting it as a new group
/// would renumber its entries and forget its votes.
/// The last configuration change applied (at or below `applied`) that the window still
/// holds: one below the anchor is in every snapshot's configuration already.
fn last_conf_change(state: &crate::journal::JournalState, applied: u64) -> u64 {
    (state.internals.values())
        .filter(|internal| internal.index <= applied)
        .filter(|internal| {
            matches!(
                internal.entry_type,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            )
        })
        .map(|internal| internal.index)
        .max()
        .unwrap_or(0)
}

async fn start_group<S: Storage>(
    id: &PartitionId,
    log: &PartitionLog<S>,
    journal: &mut Journal<S>,
    state: &mut crate::journal::JournalState,
    voters: &[u64],
) -> Result<(), ReplicaError> {
    let offsets = log.offsets();
    if offsets.log_end > offsets.log_start {
        return Err(ReplicaError::Inconsistent {
            partition: id.clone(),
            reason: "the partition log holds records but its raft journal is missing \
                         or empty"
                .to_string(),
        });
    }
    let conf_state = ConfState {
        voters: voters.to_vec(),
        ..ConfState::default()
    };
    let anchor = Anchor {
        index: 0,
        term: 0,
        offset: log.offsets().log_start,
    };
    let records = [Record::ConfState(conf_state), Record::Anchor(anchor)];
    journal
        .append(&records, true)
        .await
        .map_err(|source| ReplicaError::Journal {
            partition: id.clone(),
            source,
        })?;
    for record in &records {
        state.apply(record);
    }
    Ok(())
}

/// Lets retention have what lies below the anchor of a log just opened, if its topic has
/// retention and no fill is pending: everything there is committed and out of the window.
/// The anchor read back is first made sure to survive a power loss (one fdatasync per
/// such partition whose anchor moved).
async fn bound_retention_at_open<S: Storage>(
    log: &PartitionLog<S>,
    journal: &mut Journal<S>,
    state: &crate::journal::JournalState,
) -> Result<(), JournalError> {
    let topic = log.config();
    let retained = topic.retention_ms().is_some() || topic.retention_bytes().is_some();
    if state.fill_from.is_some() || !retained {
        return Ok(());
    }
    if state.anchor.offset > log.offsets().log_start {
        journal.sync().await?;
    }
    log.bound_retention(state.anchor.offset);
    Ok(())
}

/// The window a replica opens with, and its high watermark. If a snapshot's fill was not
/// done, the log is cut back to what it trusted and the window is empty after the
/// snapshot's anchor (the fill is done again before anything else, `process_ready`).
async fn open_window<S: Storage>(
    id: &PartitionId,
    log: &PartitionLog<S>,
    journal: &mut Journal<S>,
    state: &crate::journal::JournalState,
) -> Result<(EntryTable, i64), ReplicaError> {
    if let Some(fill_from) = state.fill_from {
        if log.offsets().log_end > fill_from {
            log.truncate_to(fill_from)
                .await
                .map_err(|source| log_error(id, source))?;
        }
        // The log may start past what it trusted (the fill started it again there,
        // `Replica::restart_log`): a cut stops at its start.
        return Ok((EntryTable::new(state.anchor), log.offsets().log_end));
    }
    let table = rebuild(id, log, journal, state).await?;
    // Applying an entry only moves the high watermark (configuration changes are recorded
    // as they apply), so what the hard state says committed is applied.
    let applied = state.hard_state.commit.min(table.last_index());
    let high_watermark = table.offset_at(applied + 1);
    Ok((table, high_watermark))
}

/// Rebuilds the window from the anchor: the batches of the partition log from the
/// anchor's offset, with the journal's internal entries placed at their offsets. Internal
/// entries past the end of the batches (their data was lost in a crash before they were
/// relied on) are dropped, and the journal records that.
async fn rebuild<S: Storage>(
    id: &PartitionId,
    log: &PartitionLog<S>,
    journal: &mut Journal<S>,
    state: &crate::journal::JournalState,
) -> Result<EntryTable, ReplicaError> {
    let inconsistent = |reason: String| ReplicaError::Inconsistent {
        partition: id.clone(),
        reason,
    };
    let mut table = EntryTable::new(state.anchor);
    let mut internals = state.internals.values().peekable();
    let mut offset = state.anchor.offset;
    let log_end = log.offsets().log_end;
    while offset < log_end {
        let bytes = log
            .read_bytes(offset, ENTRY_FETCH_BYTES_MAX)
            .await
            .map_err(|source| log_error(id, source))?;
        let mut rest = &bytes[..];
        let before = offset;
        // `read_bytes` checks every batch it serves that nobody checked since the log was
        // opened; the headers are all the window needs.
        while let Ok(header) = FrameHeader::parse(rest) {
            while let Some(internal) = internals
                .next_if(|i| i.offset <= header.base_offset && i.index == table.last_index() + 1)
            {
                table.push_internal(internal);
            }
            if header.base_offset != offset {
                return Err(inconsistent(format!(
                    "batch at offset {} where {offset} was expected",
                    header.base_offset
                )));
            }
            let term = u64::try_from(header.partition_leader_epoch).unwrap_or(0);
            let offset_next = header.offset_next();
            table.push(
                table.last_index() + 1,
                Meta {
                    term,
                    kind: Kind::Data {
                        offset_first: offset,
                        offset_next,
                        bytes: None,
                    },
                },
            );
            offset = offset_next;
            rest = &rest[header.size_bytes..];
        }
        if offset == before {
            return Err(inconsistent(format!("no whole batch at offset {offset}")));
        }
    }
    while let Some(internal) =
        internals.next_if(|i| i.offset == offset && i.index == table.last_index() + 1)
    {
        table.push_internal(internal);
    }
    if let Some(lost) = internals.next() {
        tracing::warn!(
            partition = %id,
            index = lost.index,
            offset = lost.offset,
            log_end = offset,
            "raft journal holds entries past the partition log's end; dropping them"
        );
        let index = table.last_index() + 1;
        journal
            .append(&[Record::Truncation { index }], true)
            .await
            .map_err(|source| ReplicaError::Journal {
                partition: id.clone(),
                source,
            })?;
    }
    Ok(table)
}
