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

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use kafka_protocol::ResponseError;
use ringlog_engine::batch::{BatchBuilder, RecordBatch};
use ringlog_engine::log::Ack;
use ringlog_engine::rt;
use ringlog_engine::shard::{Engine, EngineError};
use ringlog_engine::topic::{shard_for, FlushPolicy, TopicConfig, TopicName};

use super::records::{self, GroupValue, OffsetValue, RecordKey};
use super::state::Group;
use super::{partition_for, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS};
use crate::broker::Broker;
use ringlog_cluster::node::Cluster;

/// Writes queued for one partition of `__consumer_offsets` before writers wait.
const GROUP_WRITES_QUEUED_MAX: usize = 1024;
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
/// Bytes read per step while replaying a partition.
const REPLAY_READ_BYTES: u64 = 1 << 20;
/// A batch of group records is closed at this size and the next one begun.
const RECORD_BATCH_BYTES_MAX: usize = 512 * 1024;
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
    /// In a cluster: the cluster layer, through which records are written.
    cluster: RefCell<Option<Cluster>>,
    /// In a cluster: the partitions this shard serves groups of, each with the term it
    /// was loaded in (the term in which this node leads it).
    loaded: RefCell<HashMap<u32, u64>>,
}

/// Records waiting for their partition's writer, and who waits for them.
struct Write {
    records: WriteRecords,
    reply: oneshot::Sender<Result<(), ResponseError>>,
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
) -> Result<(), EngineError> {
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
                cluster: RefCell::new(None),
                loaded: RefCell::new(HashMap::new()),
            });
            for partition in 0..partitions {
                if offsets_shard(partition, shards) == index {
                    if replay_at_start {
                        coordinator.replay(partition).await?;
                    }
                    let (queue, queued) = mpsc::channel(GROUP_WRITES_QUEUED_MAX);
                    let queue = Rc::new(futures::lock::Mutex::new(queue));
                    coordinator.writers.borrow_mut().insert(partition, queue);
                    let writer = write_loop(Rc::downgrade(&coordinator), partition, queued);
                    rt::spawn_local(writer).detach();
                }
            }
            COORDINATOR.with(|slot| *slot.borrow_mut() = Some(coordinator.clone()));
            rt::spawn_local(tick_loop(coordinator)).detach();
            Ok::<(), EngineError>(())
        }));
        match loaded {
            Ok(result) => result?,
            Err(_) => {
                return Err(EngineError::ShardStopped {
                    topic: OFFSETS_TOPIC.to_owned(),
                    partition: 0,
                })
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

    /// In a cluster, loads the groups of the partitions this node has come to lead, and
    /// forgets those of the partitions it no longer leads (their next coordinator loads
    /// them from the log). Called on every tick.
    async fn follow_leadership(&self) {
        let Some(cluster) = self.cluster.borrow().clone() else {
            return;
        };
        // The partitions this shard owns are those it has a writer for.
        let here: Vec<u32> = self.writers.borrow().keys().copied().collect();
        for partition in here {
            let status = cluster.status(OFFSETS_TOPIC, partition).unwrap_or_default();
            let leads = status.leader == Some(cluster.node_id());
            let loaded = self.loaded.borrow().get(&partition).copied();
            if leads && status.leads_with_own_commit && loaded != Some(status.term) {
                self.forget(partition);
                match self.replay(partition).await {
                    Ok(()) => {
                        self.loaded.borrow_mut().insert(partition, status.term);
                        tracing::info!(
                            partition,
                            term = status.term,
                            "now coordinating the groups of {OFFSETS_TOPIC}-{partition}"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(partition, %error, "loading groups failed; tried again at the next tick");
                    }
                }
            } else if !leads && loaded.is_some() {
                self.forget(partition);
                self.loaded.borrow_mut().remove(&partition);
                tracing::info!(
                    partition,
                    "no longer coordinating the groups of {OFFSETS_TOPIC}-{partition}"
                );
            }
        }
    }

    /// Drops the groups of `partition` from memory; their members are told
    /// NOT_COORDINATOR and find the new coordinator.
    fn forget(&self, partition: u32) {
        let mut groups = self.groups.borrow_mut();
        let gone: Vec<String> = groups
            .keys()
            .filter(|id| partition_for(id, self.partitions) == partition)
            .cloned()
            .collect();
        let mut memberships = self.memberships.borrow_mut();
        for id in gone {
            if let Some(mut group) = groups.remove(&id) {
                group.kill(ResponseError::NotCoordinator);
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
        let (reply, answer) = oneshot::channel();
        let records = WriteRecords::Given(records);
        // Waits while the queue is full: backpressure on the clients that commit.
        let queued = queue.lock().await.send(Write { records, reply }).await;
        queued.map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        answer
            .await
            .unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
    }

    /// Writes everything queued for `partition` as one append (a group commit of the
    /// coordinator's records), applies it to memory, answers its writers, and compacts
    /// when due.
    async fn write_queued(&self, partition: u32, writes: Vec<Write>) {
        let mut records: Vec<GroupRecord> = Vec::new();
        for write in &writes {
            match &write.records {
                WriteRecords::Given(given) => records.extend(given.iter().cloned()),
                WriteRecords::Expired { now_ms } => {
                    records.extend(self.expired_records(partition, *now_ms));
                }
            }
        }
        let written = if records.is_empty() {
            Ok(())
        } else {
            self.append(partition, &records).await.map(|_| ())
        };
        if written.is_ok() {
            for (key, value) in records {
                self.apply(key, value.as_deref(), false);
            }
        }
        for write in writes {
            let _ = write.reply.send(written);
        }
        if written.is_ok() {
            if let Err(error) = self.compact_if_due(partition).await {
                tracing::warn!(partition, ?error, "compaction of {OFFSETS_TOPIC} failed");
            }
        }
    }

    /// Appends `records` to `partition` durably; returns the first record's offset.
    async fn append(&self, partition: u32, records: &[GroupRecord]) -> Result<i64, ResponseError> {
        let batches = encode_batches(records).map_err(|error| {
            tracing::warn!(partition, %error, "could not encode group records");
            ResponseError::UnknownServerError
        })?;
        let cluster = self.cluster.borrow().clone();
        if let Some(cluster) = cluster {
            // Answered once a majority holds the records.
            let proposed = cluster
                .propose(OFFSETS_TOPIC, partition, batches, usize::MAX)
                .await;
            return proposed.map(|a| a.offset_first).map_err(|error| {
                tracing::warn!(partition, %error, "could not replicate group records");
                ResponseError::NotCoordinator
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
    /// the partition's writer calls this, so memory is exactly what the log says.
    async fn compact_if_due(&self, partition: u32) -> Result<(), EngineError> {
        if self.cluster.borrow().is_some() {
            // A replicated log's start cannot move yet (that needs snapshots).
            return Ok(());
        }
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
            match self.append(partition, &live).await {
                Ok(first) => first,
                Err(_) => return Ok(()),
            }
        };
        let start = self
            .engine
            .delete_records_before(OFFSETS_TOPIC, partition, new_start)
            .await?;
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

    /// Reads one partition from its start to its end into memory.
    async fn replay(&self, partition: u32) -> Result<(), EngineError> {
        let offsets = self.engine.offsets(OFFSETS_TOPIC, partition).await?;
        let mut offset = offsets.log_start;
        let mut applied = 0_u64;
        // The high watermark: everything at start alone; what committed in a cluster.
        while offset < offsets.high_watermark {
            let read = self
                .engine
                .read(OFFSETS_TOPIC, partition, offset, REPLAY_READ_BYTES)
                .await?;
            let next = self.apply_batches(&read.bytes, partition, &mut applied);
            if next <= offset {
                break;
            }
            offset = next;
        }
        if applied > 0 {
            tracing::info!(partition, records = applied, "consumer groups loaded");
        }
        Ok(())
    }

    /// Applies every record of the batches in `bytes`; returns the offset after the last
    /// whole batch.
    fn apply_batches(&self, mut bytes: &[u8], partition: u32, applied: &mut u64) -> i64 {
        let mut next = -1;
        while let Ok((batch, rest)) = RecordBatch::parse(bytes) {
            bytes = rest;
            next = batch.base_offset() + i64::from(batch.last_offset_delta()) + 1;
            let Ok(records) = batch.records() else {
                tracing::warn!(
                    partition,
                    offset = batch.base_offset(),
                    "unreadable group batch"
                );
                continue;
            };
            for record in records.flatten() {
                let Some(key) = record.key else { continue };
                match records::decode_key(key) {
                    Ok(key) => {
                        self.apply(key, record.value, true);
                        *applied += 1;
                    }
                    Err(error) => tracing::warn!(partition, %error, "skipping a group record"),
                }
            }
        }
        next
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
        for group in groups.values_mut() {
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
    mut queued: mpsc::Receiver<Write>,
) {
    while let Some(first) = queued.next().await {
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        let mut writes = vec![first];
        while let Ok(write) = queued.try_recv() {
            writes.push(write);
        }
        coordinator.write_queued(partition, writes).await;
    }
}

/// Ticks the shard's groups until the shard stops.
async fn tick_loop(coordinator: Rc<Coordinator>) {
    let retention_check = RETENTION_CHECK.min(coordinator.settings.offsets_retention);
    let mut next_retention = Instant::now() + retention_check;
    loop {
        rt::sleep(TICK).await;
        coordinator.follow_leadership().await;
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
            let queues: Vec<_> = coordinator.writers.borrow().values().cloned().collect();
            for queue in queues {
                // Not awaited: the writer answers whenever it gets there; a full or busy
                // queue is asked again at the next check.
                let (reply, _) = oneshot::channel();
                let records = WriteRecords::Expired { now_ms: now_ms() };
                if let Some(mut queue) = queue.try_lock() {
                    let _ = queue.try_send(Write { records, reply });
                }
            }
        }
    }
}

/// The records as uncompressed record batches, each at most `RECORD_BATCH_BYTES_MAX`.
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
        if builder.record_count() > 0 && builder.size_bytes() >= RECORD_BATCH_BYTES_MAX {
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
    use super::*;
    use crate::group::state::{JoinRequest, INITIAL_REBALANCE_DELAY};

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
