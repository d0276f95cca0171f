//! The groups of one shard: their state in memory, their records in the shard's
//! partitions of `__consumer_offsets`.
//!
//! Invariants:
//! - A group's state is touched only on the shard owning its `__consumer_offsets`
//!   partition ([`on_coordinator`] runs every request there), and never across an
//!   `.await` while borrowed.
//! - What a client is told was committed is durable first: offset commits, deletions and
//!   the group record of a completed rebalance are appended with acks=all before the
//!   answer. The in-memory state is what the log says, once replayed: at start each
//!   partition is read from its log start to its end, the last record of a key wins and a
//!   tombstone deletes it.
//! - `__consumer_offsets` is compacted by rewriting: when a partition holds many more records
//!   than live keys, the live keys' latest records are appended again and the log start
//!   moved past everything older (see `compact_if_due`).
//! - A tick (every [`TICK`]) expires sessions, ends join phases whose time is up, records
//!   groups that became Empty, and expires the committed offsets of groups without
//!   members after `offsets.retention.minutes` (7 days by default).
//! - In a cluster a partition's groups are loaded by a task of their own (the tick of the
//!   shard's other groups goes on meanwhile), all or nothing: a read that ends below the
//!   high watermark or a batch that does not decode fails the load, and the partition
//!   stays COORDINATOR_LOAD_IN_PROGRESS until a later load succeeds.
//! - **Writes are fenced by the load they were decided under.** Each partition has a load
//!   epoch, moved by every load and every `forget`. A write carries the epoch (and, in a
//!   cluster, the term the partition was loaded in) it was made under: a write of an older
//!   epoch is refused with NOT_COORDINATOR before it is proposed, the replica refuses a
//!   proposal of another term, and a write is applied to memory only if the epoch is
//!   still the same once it committed. `forget` fails the writes queued.
//! - A group write that does not commit within `GROUP_WRITE_TIMEOUT_MS` is answered
//!   COORDINATOR_NOT_AVAILABLE. It may still commit, so the partition is forgotten and
//!   loaded again, and a load waits until everything in the log is committed.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use kafka_protocol::ResponseError;
use ringlog_engine::batch::{BatchBuilder, BatchError, FrameHeader, RecordBatch};
use ringlog_engine::log::{Ack, LogError};
use ringlog_engine::rt;
use ringlog_engine::shard::{Engine, EngineError};
use ringlog_engine::topic::{shard_for, FlushPolicy, TopicConfig, TopicName};

use super::records::{self, GroupValue, OffsetValue, RecordKey};
use super::state::Group;
use super::{partition_for, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS};
use crate::broker::Broker;
use crate::limits::{
    GROUP_RECORD_BATCH_BYTES_MAX, GROUP_REPLAY_READ_BYTES, GROUP_WRITES_QUEUED_MAX,
    GROUP_WRITE_TIMEOUT_MS,
};
use ringlog_cluster::node::{Cluster, ClusterError};
use ringlog_cluster::replica::{AnswerAt, ReplicaError};

/// How often a shard's groups are ticked.
pub const TICK: Duration = Duration::from_millis(100);
/// What the coordinator is configured with.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// Kafka's `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay: Duration,
    /// Kafka's `offsets.retention.minutes`: offsets of a group without members are deleted
    /// this long after their last commit.
    pub offsets_retention: Duration,
}
/// How often offsets are checked for expiry.
const RETENTION_CHECK: Duration = Duration::from_secs(60);
/// Segment size of `__consumer_offsets`. Smaller than Kafka's 100 MiB: compaction frees a
/// segment only once the log start has passed all of it.
const OFFSETS_SEGMENT_BYTES: u64 = 16 << 20;
/// A partition is compacted once it holds more records than this …
const COMPACT_RECORDS_MIN: i64 = 1000;
/// … and more than this many times its live keys.
const COMPACT_LIVE_FACTOR: i64 = 4;
/// Preallocation of its segments: the topic is small and written rarely.
const OFFSETS_PREALLOCATE_BYTES: u64 = 1 << 20;

thread_local! {
    /// This shard's coordinator, set at start.
    static COORDINATOR: RefCell<Option<Rc<Coordinator>>> = const { RefCell::new(None) };
}

/// A record to append: its key and value (`None`: a tombstone).
pub type GroupRecord = (RecordKey, Option<Bytes>);

/// The groups of one shard.
pub struct Coordinator {
    engine: Engine,
    partitions: u32,
    settings: GroupSettings,
    groups: RefCell<HashMap<String, Group>>,
    /// The newest membership record persisted per group, with its generation: what
    /// compaction rewrites (the in-memory membership may be mid-rebalance). Two records of
    /// one group can reach the log out of generation order (each is built before its turn
    /// to write); the older generation is ignored, on replay too.
    memberships: RefCell<HashMap<String, (i32, Bytes)>>,
    /// The queue of each of this shard's partitions' writer (see [`write_loop`]).
    /// One sender per queue, shared behind an async lock: a clone per write would get a
    /// guaranteed slot of its own and make the bound meaningless.
    writers: RefCell<HashMap<u32, Rc<futures::lock::Mutex<mpsc::Sender<Write>>>>>,
    /// The other end of each writer's queue, shared with its writer so that `forget` can
    /// fail what is queued (borrowed only inside a poll, never across an `.await`).
    queued: RefCell<HashMap<u32, Rc<RefCell<mpsc::Receiver<Write>>>>>,
    /// Each partition's load epoch (0 until the first load or `forget`): see the module
    /// doc.
    load_epochs: RefCell<HashMap<u32, u64>>,
    /// In a cluster: the partitions whose load task runs.
    loading: RefCell<HashSet<u32>>,
    /// In a cluster: the cluster layer, through which records are written.
    cluster: RefCell<Option<Cluster>>,
    /// In a cluster: the partitions this shard serves groups of, each with the term it
    /// was loaded in (the term in which this node leads it).
    loaded: RefCell<HashMap<u32, u64>>,
}

/// Records waiting for their partition's writer, and who waits for them.
struct Write {
    records: WriteRecords,
    /// What the write was decided under.
    fence: Fence,
    reply: oneshot::Sender<Result<(), ResponseError>>,
}

/// The load a write was decided under: the partition's load epoch, and in a cluster the
/// term it was loaded in (the term the write must be proposed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fence {
    epoch: u64,
    term: Option<u64>,
}

/// Why a partition's groups could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupLoadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A whole batch of the log does not decode: damage, or a bug that wrote it.
    #[error("{OFFSETS_TOPIC}-{partition}: the batch at offset {offset} does not decode")]
    Damaged {
        partition: u32,
        offset: i64,
        #[source]
        source: BatchError,
    },
    /// A read below the high watermark returned no whole batch.
    #[error(
        "{OFFSETS_TOPIC}-{partition}: reading stopped at offset {offset}, below the high \
         watermark {high_watermark}"
    )]
    Short {
        partition: u32,
        offset: i64,
        high_watermark: i64,
    },
    /// The log holds entries not committed yet (a write that timed out may still commit):
    /// loading waits until it has none.
    #[error(
        "{OFFSETS_TOPIC}-{partition}: offsets {high_watermark} to {log_end} are not \
         committed yet"
    )]
    Uncommitted {
        partition: u32,
        high_watermark: i64,
        log_end: i64,
    },
    /// The partition was forgotten (leadership moved) while it loaded.
    #[error("{OFFSETS_TOPIC}-{partition}: forgotten while loading")]
    Forgotten { partition: u32 },
}

/// What a queued write appends.
enum WriteRecords {
    /// These records.
    Given(Vec<GroupRecord>),
    /// Tombstones for whatever of the partition has expired at `now_ms`, decided by the
    /// writer when it gets there, so that a commit queued meanwhile is seen (and kept).
    Expired { now_ms: i64 },
}

/// Creates `__consumer_offsets` if it does not exist, and on every shard replays the
/// partitions it owns and starts its tick. Blocks until every shard has loaded.
///
/// A node of a cluster passes `cluster_topic_id`, the topic id every node of the cluster
/// gives `__consumer_offsets` (its partitions are replicated, so every node must create
/// the same topic); its partitions are then loaded only where and when this node leads
/// them (see [`attach_cluster`]), not here.
pub fn start(
    engine: &Engine,
    settings: GroupSettings,
    cluster_topic_id: Option<[u8; 16]>,
) -> Result<(), GroupLoadError> {
    let partitions = if let Some(meta) = engine.topic(OFFSETS_TOPIC) {
        meta.partitions
    } else {
        let config = offsets_topic_config();
        let created = match cluster_topic_id {
            Some(id) => futures::executor::block_on(engine.create_topic_with_id(
                OFFSETS_TOPIC,
                id,
                OFFSETS_TOPIC_PARTITIONS,
                config,
            )),
            None => futures::executor::block_on(engine.create_topic(
                OFFSETS_TOPIC,
                OFFSETS_TOPIC_PARTITIONS,
                config,
            )),
        };
        created?.partitions
    };
    let replay_at_start = cluster_topic_id.is_none();
    let shards = engine.shard_count();
    for (index, shard) in engine.shard_handles().iter().enumerate() {
        let engine = engine.clone();
        let loaded = futures::executor::block_on(shard.spawn(move || async move {
            let coordinator = Rc::new(Coordinator {
                engine,
                partitions,
                settings,
                groups: RefCell::new(HashMap::new()),
                memberships: RefCell::new(HashMap::new()),
                writers: RefCell::new(HashMap::new()),
                queued: RefCell::new(HashMap::new()),
                load_epochs: RefCell::new(HashMap::new()),
                loading: RefCell::new(HashSet::new()),
                cluster: RefCell::new(None),
                loaded: RefCell::new(HashMap::new()),
            });
            for partition in 0..partitions {
                if offsets_shard(partition, shards) == index {
                    if replay_at_start {
                        coordinator.replay(partition, 0).await?;
                    }
                    coordinator.start_writer(partition);
                }
            }
            COORDINATOR.with(|slot| *slot.borrow_mut() = Some(coordinator.clone()));
            rt::spawn_local(tick_loop(coordinator)).detach();
            Ok::<(), GroupLoadError>(())
        }));
        match loaded {
            Ok(result) => result?,
            Err(_) => {
                return Err(GroupLoadError::Engine(EngineError::ShardStopped {
                    topic: OFFSETS_TOPIC.to_owned(),
                    partition: 0,
                }))
            }
        }
    }
    Ok(())
}

/// The configuration of `__consumer_offsets`: every commit fdatasynced, no time or size
/// retention (records expire through tombstones the coordinator writes).
fn offsets_topic_config() -> TopicConfig {
    TopicConfig::builder()
        .flush(FlushPolicy::Always)
        .segment_bytes(OFFSETS_SEGMENT_BYTES)
        .preallocate_bytes(OFFSETS_PREALLOCATE_BYTES)
        .retention_ms(None)
        .retention_bytes(None)
        .build()
        .unwrap_or_default()
}

/// The shard owning partition `partition` of `__consumer_offsets`.
fn offsets_shard(partition: u32, shards: usize) -> usize {
    let Ok(name) = TopicName::new(OFFSETS_TOPIC) else {
        unreachable!("{OFFSETS_TOPIC} is a legal topic name");
    };
    shard_for(&name, partition, shards)
}

/// Runs `work` with this shard's coordinator, if it has started.
pub fn with_local<T>(work: impl FnOnce(&Coordinator) -> T) -> Option<T> {
    let coordinator = COORDINATOR.with(|slot| slot.borrow().clone())?;
    Some(work(&coordinator))
}

/// Runs `work` with the coordinator of `group` on the shard that owns it.
pub async fn on_coordinator<F, Fut, T>(
    broker: &Broker,
    group: &str,
    work: F,
) -> Result<T, ResponseError>
where
    F: FnOnce(Rc<Coordinator>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let Some(meta) = broker.engine.topic(OFFSETS_TOPIC) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let partition = partition_for(group, meta.partitions);
    let shard = offsets_shard(partition, broker.engine.shard_count());
    let Some(handle) = broker.engine.shard_handles().get(shard) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let result = handle
        .spawn(move || async move {
            let coordinator = COORDINATOR.with(|slot| slot.borrow().clone());
            match coordinator {
                Some(coordinator) => match coordinator.serves(partition) {
                    Ok(()) => Ok(work(coordinator).await),
                    Err(error) => Err(error),
                },
                None => Err(ResponseError::CoordinatorNotAvailable),
            }
        })
        .await;
    match result {
        Ok(answer) => answer,
        // The shard is stopping: the client finds the coordinator again.
        Err(_) => Err(ResponseError::CoordinatorNotAvailable),
    }
}

/// In a cluster, gives every shard's coordinator the cluster layer: from then on it
/// writes through the partitions' Raft groups, and serves the groups of a partition of
/// `__consumer_offsets` only while this node leads it — loaded from the partition's log
/// once the leader has committed an entry of its own term (so the log holds everything
/// committed before), dropped when leadership moves (the tick does both).
pub fn attach_cluster(engine: &Engine, cluster: &Cluster) -> Result<(), EngineError> {
    for shard in engine.shard_handles() {
        let cluster = cluster.clone();
        let attached = futures::executor::block_on(shard.spawn(move || async move {
            if let Some(coordinator) = COORDINATOR.with(|slot| slot.borrow().clone()) {
                *coordinator.cluster.borrow_mut() = Some(cluster);
            }
        }));
        if attached.is_err() {
            return Err(EngineError::ShardStopped {
                topic: OFFSETS_TOPIC.to_owned(),
                partition: 0,
            });
        }
    }
    Ok(())
}

impl Coordinator {
    /// Whether this shard answers for the groups of `partition`: always alone; in a
    /// cluster, only while this node leads the partition and has loaded it
    /// (NOT_COORDINATOR elsewhere, COORDINATOR_LOAD_IN_PROGRESS until loaded), as Kafka's
    /// coordinators answer.
    fn serves(&self, partition: u32) -> Result<(), ResponseError> {
        let cluster = self.cluster.borrow();
        let Some(cluster) = cluster.as_ref() else {
            return Ok(());
        };
        let status = cluster.status(OFFSETS_TOPIC, partition).unwrap_or_default();
        if status.leader != Some(cluster.node_id()) {
            return Err(ResponseError::NotCoordinator);
        }
        match self.loaded.borrow().get(&partition) {
            Some(&term) if term == status.term => Ok(()),
            _ => Err(ResponseError::CoordinatorLoadInProgress),
        }
    }

    /// In a cluster, starts loading the groups of the partitions this node has come to
    /// lead (each in a task of its own, see [`Self::load`]), and forgets those of the
    /// partitions it no longer leads (their next coordinator loads them from the log).
    /// Called on every tick.
    fn follow_leadership(self: &Rc<Self>) {
        let Some(cluster) = self.cluster.borrow().clone() else {
            return;
        };
        // The partitions this shard owns are those it has a writer for.
        let here: Vec<u32> = self.writers.borrow().keys().copied().collect();
        for partition in here {
            let status = cluster.status(OFFSETS_TOPIC, partition).unwrap_or_default();
            let leads = status.leader == Some(cluster.node_id());
            let loaded = self.loaded.borrow().get(&partition).copied();
            let loading = self.loading.borrow().contains(&partition);
            if leads && status.leads_with_own_commit && loaded != Some(status.term) && !loading {
                self.forget(partition);
                self.loading.borrow_mut().insert(partition);
                rt::spawn_local(self.clone().load(partition, status.term)).detach();
            } else if !leads && (loaded.is_some() || loading) {
                // A load under way finds its epoch moved and gives up.
                self.forget(partition);
                tracing::info!(
                    partition,
                    "no longer coordinating the groups of {OFFSETS_TOPIC}-{partition}"
                );
            }
        }
    }

    /// Loads `partition`'s groups from its log, for `term`; serves them only if all of the
    /// log up to its high watermark was read and nothing forgot the partition meanwhile.
    async fn load(self: Rc<Self>, partition: u32, term: u64) {
        let epoch = self.load_epoch(partition);
        let loaded = self.replay(partition, epoch).await;
        self.loading.borrow_mut().remove(&partition);
        let forgotten = self.load_epoch(partition) != epoch;
        match loaded {
            Ok(()) if !forgotten => {
                self.loaded.borrow_mut().insert(partition, term);
                tracing::info!(
                    partition,
                    term,
                    "now coordinating the groups of {OFFSETS_TOPIC}-{partition}"
                );
            }
            outcome => {
                // Partial state is never served: dropped (`forget` dropped what was
                // applied before it; this drops what was applied after).
                self.drop_groups(partition, ResponseError::CoordinatorLoadInProgress);
                if let Err(error) = outcome {
                    tracing::warn!(
                        partition,
                        %error,
                        "loading groups failed; tried again at the next tick"
                    );
                }
            }
        }
    }

    /// The load epoch of `partition` (module doc).
    fn load_epoch(&self, partition: u32) -> u64 {
        self.load_epochs
            .borrow()
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// What a write to `partition` made now is decided under; in a cluster, only while
    /// the partition is loaded (NOT_COORDINATOR otherwise: this node does not serve it).
    fn fence(&self, partition: u32) -> Result<Fence, ResponseError> {
        let epoch = self.load_epoch(partition);
        if self.cluster.borrow().is_none() {
            return Ok(Fence { epoch, term: None });
        }
        match self.loaded.borrow().get(&partition) {
            Some(&term) => Ok(Fence {
                epoch,
                term: Some(term),
            }),
            None => Err(ResponseError::NotCoordinator),
        }
    }

    /// Starts the one writer of `partition` (see [`write_loop`]).
    fn start_writer(self: &Rc<Self>, partition: u32) {
        let (queue, queued) = mpsc::channel(GROUP_WRITES_QUEUED_MAX);
        let queue = Rc::new(futures::lock::Mutex::new(queue));
        let queued = Rc::new(RefCell::new(queued));
        self.writers.borrow_mut().insert(partition, queue);
        self.queued.borrow_mut().insert(partition, queued.clone());
        let writer = write_loop(Rc::downgrade(self), partition, queued);
        rt::spawn_local(writer).detach();
    }

    /// Whether memory holds `partition`'s groups as its log says: always alone; in a
    /// cluster, once loaded.
    fn holds(&self, partition: u32) -> bool {
        self.cluster.borrow().is_none() || self.loaded.borrow().contains_key(&partition)
    }

    /// Ends this load of `partition`: moves its load epoch, fails the writes queued for
    /// it, and drops its groups from memory (their members are told NOT_COORDINATOR and
    /// find the new coordinator). Writes in flight are not applied when they complete.
    fn forget(&self, partition: u32) {
        *self.load_epochs.borrow_mut().entry(partition).or_insert(0) += 1;
        self.loaded.borrow_mut().remove(&partition);
        let queued = self.queued.borrow().get(&partition).cloned();
        if let Some(queued) = queued {
            while let Ok(write) = queued.borrow_mut().try_recv() {
                let _ = write.reply.send(Err(ResponseError::NotCoordinator));
            }
        }
        self.drop_groups(partition, ResponseError::NotCoordinator);
    }

    /// Drops the groups of `partition` from memory, telling their members `error`.
    fn drop_groups(&self, partition: u32, error: ResponseError) {
        let mut groups = self.groups.borrow_mut();
        let gone: Vec<String> = groups
            .keys()
            .filter(|id| partition_for(id, self.partitions) == partition)
            .cloned()
            .collect();
        let mut memberships = self.memberships.borrow_mut();
        for id in gone {
            if let Some(mut group) = groups.remove(&id) {
                group.kill(error);
            }
            memberships.remove(&id);
        }
    }

    /// Runs `change` on the group named `id` (created Empty if missing and `create`),
    /// without holding the borrow past it.
    pub fn with_group<T>(
        &self,
        id: &str,
        create: bool,
        change: impl FnOnce(&mut Group) -> T,
    ) -> Option<T> {
        let mut groups = self.groups.borrow_mut();
        if create && !groups.contains_key(id) {
            groups.insert(
                id.to_owned(),
                Group::new(id.to_owned(), self.settings.initial_rebalance_delay),
            );
        }
        groups.get_mut(id).map(change)
    }

    /// Every group of this shard: (id, protocol type, state name).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        self.groups
            .borrow()
            .values()
            .map(|group| {
                (
                    group.id.clone(),
                    group.protocol_type().unwrap_or_default().to_owned(),
                    group.state().name(),
                )
            })
            .collect()
    }

    /// Every committed offset of this shard's groups: (group, topic, partition, offset).
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let groups = self.groups.borrow();
        let mut offsets = Vec::new();
        for group in groups.values() {
            for ((topic, partition), value) in &group.offsets {
                offsets.push((group.id.clone(), topic.clone(), *partition, value.offset));
            }
        }
        offsets
    }

    /// Appends `records` of `group` to its partition durably, and then applies them to
    /// memory as a replay would (a tombstoned group is killed and forgotten); see
    /// [`write_loop`].
    pub async fn persist(
        &self,
        group: &str,
        records: Vec<GroupRecord>,
    ) -> Result<(), ResponseError> {
        if records.is_empty() {
            return Ok(());
        }
        let partition = partition_for(group, self.partitions);
        let queue = self.writers.borrow().get(&partition).cloned();
        let Some(queue) = queue else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        // Decided now, against memory as it is now: fenced by this load.
        let fence = self.fence(partition)?;
        let (reply, answer) = oneshot::channel();
        let records = WriteRecords::Given(records);
        let write = Write {
            records,
            fence,
            reply,
        };
        // Waits while the queue is full: backpressure on the clients that commit.
        let queued = queue.lock().await.send(write).await;
        queued.map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        answer
            .await
            .unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
    }

    /// Writes everything queued for `partition` as one append (a group commit of the
    /// coordinator's records), applies it to memory, answers its writers, and compacts
    /// when due. Writes of another load epoch are refused unwritten; what is written is
    /// applied only if the epoch did not move meanwhile (module doc).
    async fn write_queued(&self, partition: u32, mut writes: Vec<Write>) {
        let epoch = self.load_epoch(partition);
        let (current, stale): (Vec<Write>, Vec<Write>) = writes
            .drain(..)
            .partition(|write| write.fence.epoch == epoch);
        for write in stale {
            let _ = write.reply.send(Err(ResponseError::NotCoordinator));
        }
        let writes = current;
        // One epoch is one load: its writes share the term it was loaded in.
        let Some(fence) = writes.first().map(|write| write.fence) else {
            return;
        };
        let mut records: Vec<GroupRecord> = Vec::new();
        for write in &writes {
            match &write.records {
                WriteRecords::Given(given) => records.extend(given.iter().cloned()),
                WriteRecords::Expired { now_ms } => {
                    records.extend(self.expired_records(partition, *now_ms));
                }
            }
        }
        let mut written = if records.is_empty() {
            Ok(())
        } else {
            self.append(partition, &records, fence.term)
                .await
                .map(|_| ())
        };
        if written.is_ok() && self.load_epoch(partition) != epoch {
            // Committed, but memory is no longer of the load it was decided under: the
            // partition's next load reads it from the log.
            written = Err(ResponseError::NotCoordinator);
        }
        if written.is_ok() {
            for (key, value) in records {
                self.apply(key, value.as_deref(), false);
            }
        }
        for write in writes {
            let _ = write.reply.send(written);
        }
        if written.is_ok() {
            if let Err(error) = self.compact_if_due(partition, fence.term).await {
                tracing::warn!(partition, ?error, "compaction of {OFFSETS_TOPIC} failed");
            }
        }
    }

    /// Appends `records` to `partition` durably; returns the first record's offset. In a
    /// cluster they are proposed in `term` (the term the partition was loaded in) and
    /// answered once a majority holds them, or after `GROUP_WRITE_TIMEOUT_MS`.
    async fn append(
        &self,
        partition: u32,
        records: &[GroupRecord],
        term: Option<u64>,
    ) -> Result<i64, ResponseError> {
        let batches = encode_batches(records).map_err(|error| {
            tracing::warn!(partition, %error, "could not encode group records");
            ResponseError::UnknownServerError
        })?;
        let cluster = self.cluster.borrow().clone();
        if let Some(cluster) = cluster {
            let timeout = Duration::from_millis(GROUP_WRITE_TIMEOUT_MS);
            let proposed = cluster
                .propose(
                    OFFSETS_TOPIC,
                    partition,
                    batches,
                    usize::MAX,
                    term,
                    AnswerAt::Commit,
                    timeout,
                )
                .await;
            return proposed.map(|a| a.offset_first).map_err(|error| {
                tracing::warn!(partition, %error, "could not replicate group records");
                if matches!(error, ClusterError::ProposalTimedOut { .. }) {
                    // It may still commit, and memory would then be behind the log: the
                    // partition is loaded again (once nothing in its log is uncommitted).
                    self.forget(partition);
                }
                write_refusal(&error)
            });
        }
        let appended = self
            .engine
            .append(OFFSETS_TOPIC, partition, batches, Ack::Durable)
            .await;
        appended.map(|a| a.offset_first).map_err(|error| {
            tracing::warn!(partition, %error, "could not persist group records");
            ResponseError::CoordinatorNotAvailable
        })
    }

    /// Compaction by rewriting: once a partition holds many more records than live keys,
    /// every live key's latest record (committed offsets, the last persisted membership) is
    /// appended again and the log start moved to the first of them, so whole segments
    /// before it are deleted and a replay reads only the rewrite and what followed. Only
    /// the partition's writer calls this, so memory is exactly what the log says. In a
    /// cluster the rewrite is proposed in `term` (the load's) and the log start moves on
    /// every replica by the group's decision (`Cluster::move_log_start`).
    async fn compact_if_due(&self, partition: u32, term: Option<u64>) -> Result<(), EngineError> {
        let offsets = self.engine.offsets(OFFSETS_TOPIC, partition).await?;
        let held = offsets.log_end - offsets.log_start;
        // Cheap checks first: this runs after every write of the partition.
        if held <= COMPACT_RECORDS_MIN
            || held <= COMPACT_LIVE_FACTOR * self.live_count(partition) as i64
        {
            return Ok(());
        }
        let live = self.live_records(partition);
        let new_start = if live.is_empty() {
            offsets.log_end
        } else {
            match self.append(partition, &live, term).await {
                Ok(first) => first,
                Err(_) => return Ok(()),
            }
        };
        let cluster = self.cluster.borrow().clone();
        let start = match cluster {
            Some(cluster) => {
                let timeout = Duration::from_millis(GROUP_WRITE_TIMEOUT_MS);
                let moved = cluster.move_log_start(OFFSETS_TOPIC, partition, new_start, timeout);
                match moved.await {
                    Ok(start) => start,
                    Err(error) => {
                        // The rewrite is in the log; the next compaction moves the start.
                        tracing::warn!(partition, %error, "{OFFSETS_TOPIC}'s log start not moved");
                        return Ok(());
                    }
                }
            }
            None => {
                (self.engine)
                    .delete_records_before(OFFSETS_TOPIC, partition, new_start)
                    .await?
            }
        };
        tracing::info!(
            partition,
            records_before = held,
            live = live.len(),
            log_start = start,
            "compacted {OFFSETS_TOPIC}"
        );
        Ok(())
    }

    /// How many live keys `partition`'s groups have (what [`Self::live_records`] would
    /// return, without building it).
    fn live_count(&self, partition: u32) -> usize {
        let groups = self.groups.borrow();
        let memberships = self.memberships.borrow();
        groups
            .values()
            .filter(|group| partition_for(&group.id, self.partitions) == partition)
            .map(|group| group.offsets.len() + usize::from(memberships.contains_key(&group.id)))
            .sum()
    }

    /// The latest record of every live key of `partition`'s groups.
    fn live_records(&self, partition: u32) -> Vec<GroupRecord> {
        let groups = self.groups.borrow();
        let memberships = self.memberships.borrow();
        let mut live = Vec::new();
        for group in groups.values() {
            if partition_for(&group.id, self.partitions) != partition {
                continue;
            }
            if let Some((_, value)) = memberships.get(&group.id) {
                let key = RecordKey::Group {
                    group: group.id.clone(),
                };
                live.push((key, Some(value.clone())));
            }
            for ((topic, index), value) in &group.offsets {
                let key = offset_key(&group.id, topic, *index);
                live.push((key, Some(records::encode_offset(value))));
            }
        }
        live
    }

    /// Persists the group's membership record as it is now.
    pub async fn persist_membership(&self, group: &str) -> Result<(), ResponseError> {
        let record = self.with_group(group, false, |g| g.to_record(now_ms()));
        let Some(record) = record else {
            return Ok(());
        };
        let key = RecordKey::Group {
            group: group.to_owned(),
        };
        self.persist(group, vec![(key, Some(records::encode_group(&record)))])
            .await
    }

    /// Reads one partition from its start to its high watermark into memory, all of it or
    /// an error: a read that ends below the high watermark, a batch that does not decode,
    /// entries above the high watermark (not committed yet), or the partition forgotten
    /// (its load epoch no longer `epoch`) while it reads.
    async fn replay(&self, partition: u32, epoch: u64) -> Result<(), GroupLoadError> {
        let offsets = self.engine.offsets(OFFSETS_TOPIC, partition).await?;
        if offsets.high_watermark < offsets.log_end {
            return Err(GroupLoadError::Uncommitted {
                partition,
                high_watermark: offsets.high_watermark,
                log_end: offsets.log_end,
            });
        }
        let mut offset = offsets.log_start;
        let mut applied = 0_u64;
        // The high watermark: everything at start alone; what committed in a cluster.
        while offset < offsets.high_watermark {
            let read = self
                .engine
                .read(OFFSETS_TOPIC, partition, offset, GROUP_REPLAY_READ_BYTES)
                .await?;
            if self.load_epoch(partition) != epoch {
                return Err(GroupLoadError::Forgotten { partition });
            }
            let next = decode_batches(&read.bytes, partition, offset, |key, value| {
                match records::decode_key(key) {
                    Ok(key) => {
                        self.apply(key, value, true);
                        applied += 1;
                    }
                    // A kind of record this version does not know (a newer one wrote it).
                    Err(error) => tracing::warn!(partition, %error, "skipping a group record"),
                }
            })?;
            if next <= offset {
                return Err(GroupLoadError::Short {
                    partition,
                    offset,
                    high_watermark: offsets.high_watermark,
                });
            }
            offset = next;
        }
        if applied > 0 {
            tracing::info!(partition, records = applied, "consumer groups loaded");
        }
        Ok(())
    }

    /// Applies one record to memory: the last record of a key wins, a tombstone deletes it.
    /// A membership record replaces the group's members only when `replaying` (a live
    /// group's members are newer than any record of them).
    fn apply(&self, key: RecordKey, value: Option<&[u8]>, replaying: bool) {
        let now = Instant::now();
        let mut groups = self.groups.borrow_mut();
        let group = groups.entry(key.group().to_owned()).or_insert_with(|| {
            Group::new(
                key.group().to_owned(),
                self.settings.initial_rebalance_delay,
            )
        });
        match (key, value) {
            (
                RecordKey::Offset {
                    topic, partition, ..
                },
                Some(value),
            ) => match records::decode_offset(value) {
                Ok(value) => {
                    group.offsets.insert((topic, partition), value);
                }
                Err(error) => tracing::warn!(group = %group.id, %error, "bad offset record"),
            },
            (
                RecordKey::Offset {
                    topic, partition, ..
                },
                None,
            ) => {
                group.offsets.remove(&(topic, partition));
            }
            (RecordKey::Group { group: id }, Some(value)) => {
                let decoded = match records::decode_group(value) {
                    Ok(decoded) => decoded,
                    Err(error) => {
                        tracing::warn!(group = %group.id, %error, "bad group record");
                        return;
                    }
                };
                let mut memberships = self.memberships.borrow_mut();
                if memberships
                    .get(&id)
                    .is_some_and(|(generation, _)| *generation > decoded.generation)
                {
                    return;
                }
                memberships.insert(id, (decoded.generation, Bytes::copy_from_slice(value)));
                if replaying {
                    group.restore(decoded, now);
                }
            }
            (RecordKey::Group { group: id }, None) => {
                group.kill(ResponseError::CoordinatorNotAvailable);
                groups.remove(&id);
                self.memberships.borrow_mut().remove(&id);
            }
        }
    }

    /// Ticks every group; returns the membership records to write, built now (the group
    /// may have moved on by the time its record is written).
    fn tick(&self, now: Instant, now_ms: i64) -> Vec<(String, GroupValue)> {
        let mut groups = self.groups.borrow_mut();
        let mut dirty = Vec::new();
        // A partition being loaded holds part of its groups: not ticked until whole.
        let held = |group: &&mut Group| self.holds(partition_for(&group.id, self.partitions));
        for group in groups.values_mut().filter(held) {
            group.tick(now);
            if group.state() == super::state::GroupState::Empty {
                group.empty_since_ms.get_or_insert(now_ms);
            } else {
                group.empty_since_ms = None;
            }
            if group.membership_dirty {
                group.membership_dirty = false;
                dirty.push((group.id.clone(), group.to_record(now_ms)));
            }
        }
        dirty
    }

    /// Tombstones for what of `partition` has expired at `now_ms`: the offsets of groups
    /// without members (see [`expired_offsets`]), and idle groups themselves (Empty, no
    /// offsets left). Idle groups that never had a record are only forgotten.
    fn expired_records(&self, partition: u32, now_ms: i64) -> Vec<GroupRecord> {
        let retention_ms = self.settings.offsets_retention.as_millis() as i64;
        let mut groups = self.groups.borrow_mut();
        let memberships = self.memberships.borrow();
        let mine = |group: &&Group| partition_for(&group.id, self.partitions) == partition;
        let mut records: Vec<GroupRecord> =
            expired_offsets(groups.values().filter(mine), now_ms, retention_ms)
                .into_iter()
                .flat_map(|(_, tombstones)| tombstones)
                .collect();
        if !records.is_empty() {
            tracing::info!(
                partition,
                offsets = records.len(),
                "committed offsets expired"
            );
        }
        // A group whose offsets all expire now is idle at the next pass.
        let idle: Vec<String> = groups
            .values()
            .filter(mine)
            .filter(|group| group.is_idle())
            .map(|group| group.id.clone())
            .collect();
        for id in idle {
            if memberships.contains_key(&id) {
                records.push((RecordKey::Group { group: id }, None));
            } else {
                groups.remove(&id);
            }
        }
        records
    }
}

/// Tombstones, by group, for the offsets of groups without members, as Kafka expires
/// them: all of a consumer group's offsets once it has been Empty for `retention_ms`; for a
/// group that only ever had manual commits (no protocol type), each offset `retention_ms`
/// after its commit. A group with members keeps its offsets: it is using them.
fn expired_offsets<'a>(
    groups: impl Iterator<Item = &'a Group>,
    now_ms: i64,
    retention_ms: i64,
) -> Vec<(String, Vec<GroupRecord>)> {
    let mut expired = Vec::new();
    for group in groups {
        if group.state() != super::state::GroupState::Empty {
            continue;
        }
        let emptied_long_ago = group
            .empty_since_ms
            .is_some_and(|since| since.saturating_add(retention_ms) <= now_ms);
        let consumer_group = group.protocol_type().is_some();
        let tombstones: Vec<GroupRecord> = group
            .offsets
            .iter()
            .filter(|(_, value)| {
                if consumer_group {
                    emptied_long_ago
                } else {
                    value.commit_timestamp_ms.saturating_add(retention_ms) <= now_ms
                }
            })
            .map(|((topic, partition), _)| (offset_key(&group.id, topic, *partition), None))
            .collect();
        if !tombstones.is_empty() {
            expired.push((group.id.clone(), tombstones));
        }
    }
    expired
}

/// What a group write the cluster layer refused is answered, as Kafka's coordinator maps
/// its append errors: NOT_COORDINATOR when another node leads (or will), so the client
/// finds the coordinator again; COORDINATOR_NOT_AVAILABLE when this one is busy, timed out
/// or its replica failed (the client retries; a replica that stopped gives up leading);
/// UNKNOWN_SERVER_ERROR for records the log refuses (a bug here, not a client's to fix).
fn write_refusal(error: &ClusterError) -> ResponseError {
    match error {
        ClusterError::Replica(
            ReplicaError::NotLeader { .. } | ReplicaError::TermChanged { .. },
        )
        | ClusterError::NoReplica { .. }
        | ClusterError::ShardStopped => ResponseError::NotCoordinator,
        ClusterError::Replica(ReplicaError::Log { source, .. }) if is_refusal(source) => {
            ResponseError::UnknownServerError
        }
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

/// Whether the log refused the records themselves (rather than failed to store them).
fn is_refusal(error: &LogError) -> bool {
    matches!(
        error,
        LogError::InvalidBatch { .. } | LogError::Empty { .. } | LogError::Producer { .. }
    )
}

/// The key of a committed offset.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> RecordKey {
    RecordKey::Offset {
        group: group.to_owned(),
        topic: topic.to_owned(),
        partition,
    }
}

/// A committed offset's record value.
pub fn offset_record(value: &OffsetValue) -> Bytes {
    records::encode_offset(value)
}

/// The one writer of a partition of `__consumer_offsets`: takes everything queued at once
/// (so concurrent commits share one append and one fdatasync) and writes it before it
/// takes the next, so what is in memory is exactly what the log says whenever compaction
/// reads it.
///
/// The loop holds its coordinator weakly: the coordinator owns the queue's senders, whose
/// channel holds this task's waker, so a strong reference would keep both alive forever
/// (and with them the engine and its data-directory lock).
async fn write_loop(
    coordinator: Weak<Coordinator>,
    partition: u32,
    queued: Rc<RefCell<mpsc::Receiver<Write>>>,
) {
    loop {
        // Borrowed only while polled: `forget` takes from the queue between polls.
        let first = std::future::poll_fn(|cx| queued.borrow_mut().poll_next_unpin(cx)).await;
        let Some(first) = first else {
            return;
        };
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        let mut writes = vec![first];
        while let Ok(write) = queued.borrow_mut().try_recv() {
            writes.push(write);
        }
        coordinator.write_queued(partition, writes).await;
    }
}

/// Hands `each` the key and value of every keyed record of the whole batches at the front
/// of `bytes` (read from `offset` of `partition`); returns the offset after the last whole
/// batch (`offset` if there is none: the read ended inside the first). A batch that is
/// whole but does not decode is damage.
fn decode_batches<'a>(
    mut bytes: &'a [u8],
    partition: u32,
    offset: i64,
    mut each: impl FnMut(&'a [u8], Option<&'a [u8]>),
) -> Result<i64, GroupLoadError> {
    let mut next = offset;
    let damaged = |offset, source| GroupLoadError::Damaged {
        partition,
        offset,
        source,
    };
    loop {
        match FrameHeader::parse(bytes) {
            Ok(_) => {}
            // The end of the read, which may cut the last batch short.
            Err(BatchError::Truncated { .. }) => return Ok(next),
            Err(source) => return Err(damaged(next, source)),
        }
        let (batch, rest) = RecordBatch::parse(bytes).map_err(|source| damaged(next, source))?;
        let base_offset = batch.base_offset();
        let records = batch
            .records()
            .map_err(|source| damaged(base_offset, source))?;
        for record in records {
            let record = record.map_err(|source| damaged(base_offset, source))?;
            if let Some(key) = record.key {
                each(key, record.value);
            }
        }
        bytes = rest;
        next = base_offset + i64::from(batch.last_offset_delta()) + 1;
    }
}

/// Ticks the shard's groups until the shard stops.
async fn tick_loop(coordinator: Rc<Coordinator>) {
    let retention_check = RETENTION_CHECK.min(coordinator.settings.offsets_retention);
    let mut next_retention = Instant::now() + retention_check;
    loop {
        rt::sleep(TICK).await;
        coordinator.follow_leadership();
        let now = Instant::now();
        for (group, record) in coordinator.tick(now, now_ms()) {
            let coordinator = coordinator.clone();
            rt::spawn_local(async move {
                let key = RecordKey::Group {
                    group: group.clone(),
                };
                let value = records::encode_group(&record);
                if coordinator
                    .persist(&group, vec![(key, Some(value))])
                    .await
                    .is_err()
                {
                    // Tried again at the next tick.
                    coordinator.with_group(&group, false, |g| g.membership_dirty = true);
                }
            })
            .detach();
        }
        if now >= next_retention {
            next_retention = now + retention_check;
            let queues: Vec<_> = coordinator.writers.borrow().clone().into_iter().collect();
            for (partition, queue) in queues {
                // Only what memory holds whole can be judged expired.
                let Ok(fence) = coordinator.fence(partition) else {
                    continue;
                };
                // Not awaited: the writer answers whenever it gets there; a full or busy
                // queue is asked again at the next check.
                let (reply, _) = oneshot::channel();
                let records = WriteRecords::Expired { now_ms: now_ms() };
                if let Some(mut queue) = queue.try_lock() {
                    let _ = queue.try_send(Write {
                        records,
                        fence,
                        reply,
                    });
                }
            }
        }
    }
}

/// The records as uncompressed record batches, each at most `GROUP_RECORD_BATCH_BYTES_MAX`.
fn encode_batches(records: &[GroupRecord]) -> Result<Bytes, ringlog_engine::batch::BatchError> {
    let timestamp = now_ms();
    let new_builder = || {
        BatchBuilder::new()
            .base_timestamp(timestamp)
            .max_timestamp(timestamp)
    };
    let mut out = Vec::new();
    let mut builder = new_builder();
    for (key, value) in records {
        let key = records::encode_key(key);
        if builder.record_count() > 0 && builder.size_bytes() >= GROUP_RECORD_BATCH_BYTES_MAX {
            out.extend_from_slice(&std::mem::replace(&mut builder, new_builder()).build());
        }
        builder.push(0, Some(&key), value.as_deref(), &[])?;
    }
    out.extend_from_slice(&builder.build());
    Ok(Bytes::from(out))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::Arc;

    use super::*;
    use crate::group::state::{JoinRequest, INITIAL_REBALANCE_DELAY};
    use ringlog_engine::log::PartitionId;
    use ringlog_engine::rt::RuntimeConfig;
    use ringlog_engine::shard::EngineConfig;

    /// An engine of one shard in `dir` with the coordinator started (alone, not in a
    /// cluster: the fences work the same way).
    fn started(dir: &std::path::Path) -> Engine {
        let config = EngineConfig {
            data_dir: dir.to_path_buf(),
            runtime: RuntimeConfig {
                shards: 1,
                pin_threads: false,
            },
            batch_cache_bytes: 0,
            retention_check_interval: None,
        };
        let engine = Engine::open(&config).unwrap();
        let settings = GroupSettings {
            initial_rebalance_delay: INITIAL_REBALANCE_DELAY,
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
        };
        start(&engine, settings, None).unwrap();
        engine
    }

    /// Runs `work` with the shard's coordinator, on the shard.
    fn on_shard<T: Send + 'static, F: Future<Output = T> + 'static>(
        engine: &Engine,
        work: impl FnOnce(Rc<Coordinator>) -> F + Send + 'static,
    ) -> T {
        let handle = engine.shard_handles()[0].clone();
        futures::executor::block_on(handle.spawn(move || async move {
            let coordinator = COORDINATOR.with(|slot| slot.borrow().clone()).unwrap();
            work(coordinator).await
        }))
        .unwrap()
    }

    fn commit(group: &str, offset: i64) -> Vec<GroupRecord> {
        let value = OffsetValue {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
        };
        vec![(offset_key(group, "t", 0), Some(offset_record(&value)))]
    }

    #[test]
    fn a_write_queued_when_its_partition_is_forgotten_fails_and_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let engine = started(dir.path());
        let (answer, in_memory) = on_shard(&engine, |coordinator| async move {
            let partition = partition_for("g", coordinator.partitions);
            let mut persisted = pin!(coordinator.persist("g", commit("g", 5)));
            // Queued: its writer has not run yet.
            assert!(futures::poll!(persisted.as_mut()).is_pending());
            coordinator.forget(partition);
            let answer = persisted.await;
            let in_memory = coordinator.with_group("g", false, |_| ()).is_some();
            (answer, in_memory)
        });
        assert_eq!(answer, Err(ResponseError::NotCoordinator));
        assert!(!in_memory, "a forgotten partition's group came back");
    }

    #[test]
    fn a_write_in_flight_when_its_partition_is_forgotten_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let engine = started(dir.path());
        let (answer, in_memory) = on_shard(&engine, |coordinator| async move {
            let partition = partition_for("g", coordinator.partitions);
            let (reply, mut answer) = oneshot::channel();
            let write = Write {
                records: WriteRecords::Given(commit("g", 5)),
                fence: coordinator.fence(partition).unwrap(),
                reply,
            };
            let mut written = pin!(coordinator.write_queued(partition, vec![write]));
            assert!(futures::poll!(written.as_mut()).is_pending());
            assert_eq!(answer.try_recv(), Ok(None), "the append is in flight");
            coordinator.forget(partition);
            written.await;
            let in_memory = coordinator.with_group("g", false, |_| ()).is_some();
            (answer.await.unwrap(), in_memory)
        });
        assert_eq!(answer, Err(ResponseError::NotCoordinator));
        assert!(
            !in_memory,
            "applied to a partition this node no longer serves"
        );
    }

    #[test]
    fn a_write_of_an_older_load_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let engine = started(dir.path());
        let (answer, log_end) = on_shard(&engine, |coordinator| async move {
            let partition = partition_for("g", coordinator.partitions);
            let fence = coordinator.fence(partition).unwrap();
            coordinator.forget(partition);
            let (reply, answer) = oneshot::channel();
            let records = WriteRecords::Given(commit("g", 5));
            let write = Write {
                records,
                fence,
                reply,
            };
            coordinator.write_queued(partition, vec![write]).await;
            let offsets = coordinator.engine.offsets(OFFSETS_TOPIC, partition).await;
            (answer.await.unwrap(), offsets.unwrap().log_end)
        });
        assert_eq!(answer, Err(ResponseError::NotCoordinator));
        assert_eq!(log_end, 0, "nothing was written");
    }

    #[test]
    fn a_load_stops_at_a_batch_that_does_not_decode_and_at_a_read_cut_short() {
        let first = encode_batches(&commit("g", 1)).unwrap();
        let second = encode_batches(&commit("g", 2)).unwrap();
        let mut keys = 0;
        let whole = [&first[..], &second[..]].concat();
        let next = decode_batches(&whole, 0, 0, |_, _| keys += 1).unwrap();
        assert_eq!((next, keys), (1, 2), "both batches start at 0 here");
        // The read ends inside the second batch: it is read again from where it starts.
        let cut = &whole[..whole.len() - 1];
        assert_eq!(decode_batches(cut, 0, 0, |_, _| {}).unwrap(), 1);
        assert_eq!(
            decode_batches(&first[..20], 0, 7, |_, _| {}).unwrap(),
            7,
            "no batch"
        );
        let mut damaged = whole.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let error = decode_batches(&damaged, 0, 0, |_, _| {}).unwrap_err();
        assert!(
            matches!(error, GroupLoadError::Damaged { offset: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn a_refused_group_write_sends_the_client_elsewhere_only_when_another_node_leads() {
        let partition = PartitionId {
            topic: Arc::from(OFFSETS_TOPIC),
            partition: 0,
        };
        let not_leader = ClusterError::Replica(ReplicaError::NotLeader {
            partition: partition.clone(),
            leader: Some(2),
        });
        assert_eq!(write_refusal(&not_leader), ResponseError::NotCoordinator);
        let timed_out = ClusterError::ProposalTimedOut {
            topic: OFFSETS_TOPIC.to_owned(),
            partition: 0,
            ms: 5_000,
        };
        assert_eq!(
            write_refusal(&timed_out),
            ResponseError::CoordinatorNotAvailable
        );
        let failed = ClusterError::Replica(ReplicaError::Inconsistent {
            partition: partition.clone(),
            reason: "damage".to_owned(),
        });
        assert_eq!(
            write_refusal(&failed),
            ResponseError::CoordinatorNotAvailable
        );
        let refused = ClusterError::Replica(ReplicaError::Log {
            partition: partition.clone(),
            source: LogError::Empty { partition },
        });
        assert_eq!(write_refusal(&refused), ResponseError::UnknownServerError);
    }

    fn committed_at(group: &mut Group, topic: &str, commit_timestamp_ms: i64) {
        let value = OffsetValue {
            offset: 5,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms,
        };
        group.offsets.insert((topic.to_owned(), 0), value);
    }

    #[test]
    fn a_consumer_groups_offsets_expire_with_the_time_it_has_been_empty() {
        let day_ms = 24 * 3600 * 1000;
        let emptied = |id: &str, since_ms: i64| {
            let mut group = Group::new(id.into(), INITIAL_REBALANCE_DELAY);
            group.restore(
                GroupValue {
                    protocol_type: "consumer".into(),
                    generation: 3,
                    protocol: None,
                    leader: None,
                    state_timestamp_ms: since_ms,
                    members: Vec::new(),
                },
                Instant::now(),
            );
            // Committed long ago, never again (a partition that received nothing).
            committed_at(&mut group, "quiet", 0);
            group
        };
        let recently = emptied("recently", 9 * day_ms);
        let long_ago = emptied("long-ago", 2 * day_ms);
        let expired = expired_offsets([&recently, &long_ago].into_iter(), 10 * day_ms, 7 * day_ms);
        let groups: Vec<&str> = expired.iter().map(|(group, _)| group.as_str()).collect();
        assert_eq!(
            groups,
            ["long-ago"],
            "old commits of a recently emptied group stay"
        );
    }

    #[test]
    fn only_old_offsets_of_groups_without_members_expire() {
        let day_ms = 24 * 3600 * 1000;
        let mut idle = Group::new("idle".into(), INITIAL_REBALANCE_DELAY);
        committed_at(&mut idle, "old", 0);
        committed_at(&mut idle, "recent", 6 * day_ms);
        let mut busy = Group::new("busy".into(), INITIAL_REBALANCE_DELAY);
        committed_at(&mut busy, "old", 0);
        let join = JoinRequest {
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: false,
        };
        let _ = busy.join(&join, Instant::now(), &mut |prefix| format!("{prefix}-1"));
        let expired = expired_offsets([&idle, &busy].into_iter(), 7 * day_ms, 7 * day_ms);
        assert_eq!(expired.len(), 1, "{expired:?}");
        let (group, tombstones) = &expired[0];
        assert_eq!(group, "idle");
        assert_eq!(tombstones.len(), 1);
        assert_eq!(tombstones[0].0, offset_key("idle", "old", 0));
        assert!(tombstones[0].1.is_none(), "a tombstone");
    }
}
