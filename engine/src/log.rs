//! The partition log: an append-only, segmented, durable sequence of record batches
//! addressed by dense offsets.
//!
//! One [`PartitionLog`] belongs to one shard and is used only from it. Appends go to a
//! per-partition appender task that forms group commits (see `log/appender.rs`); reads
//! return file ranges for zero-copy sends (`log/read.rs`); opening a log recovers it
//! (`log/recovery.rs`); retention and record deletion drop whole segments from the front
//! (`log/retention.rs`). Segment files are preallocated ahead of the tail in steps fitted to
//! the disk by a budget shared by every log of the node (`log/prealloc.rs`).
//!
//! Offsets: `log_start_offset ≤ high_watermark ≤ log_end_offset`. The log end is the
//! offset after the last batch whose write completed; the durable end is the offset below
//! which everything is fdatasynced; the high watermark (what consumers may read) is the
//! durable end for `flush = always` topics and the log end otherwise. A replicated log (one
//! whose partition is a Raft group, `ringlog-cluster`) is marked so by its first
//! [`PartitionLog::set_commit_end`]: its high watermark is then the commit end its replica
//! sets, reads never serve a byte at or past it, and only the replica writes to it
//! (`log/commit.rs`). After a failed write or fdatasync the log is poisoned: the waiters
//! of the failing group and every later append fail with [`LogError::StorageFailed`], whose
//! source is the [`StorageFailure`] (operation and I/O error) that poisoned it, until the
//! partition is reopened and recovered.
//!
//! Idempotent producers: the log keeps each producer's epoch and last batches
//! (`log/producers.rs`), checks every idempotent batch against them in queue order, and
//! answers a retried batch with its original offsets instead of writing it twice. The state
//! survives restarts through snapshots written at segment roll and clean close
//! (`log/producer_snapshot.rs`) plus a replay of the batch headers after the latest one.

mod appender;
pub mod cache;
mod cached_read;
mod checkpoint;
mod commit;
mod durability;
mod epochs;
mod group;
pub mod metrics;
mod prealloc;
mod producer_snapshot;
mod producers;
mod queue;
mod read;
mod recovery;
mod retention;
mod scan;
mod segment;

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod epoch_tests;
#[cfg(test)]
mod invariant_tests;
#[cfg(test)]
mod prealloc_tests;
#[cfg(test)]
mod producer_tests;
#[cfg(test)]
mod replicated_tests;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;

use crate::batch::BatchError;
use crate::limits::COMMANDS_QUEUED_PER_PARTITION_MAX;
use crate::rt::JoinHandle;
use crate::storage::Storage;
use crate::topic::{FlushPolicy, TopicConfig};

pub use commit::CommitRefusal;
pub use epochs::EPOCH_UNDEFINED;
pub use prealloc::PreallocBudget;
pub use producers::{ProducerBatch, ProducerError, Verdict as ProducerCheck};
pub use read::{FetchSlice, FileRange, FoundOffset, ReadRange};
pub use retention::set_check_interval_for_this_thread as set_retention_check_interval_for_this_thread;
pub use scan::ScanStop;

/// The file in which `ringlog-cluster` keeps a partition's Raft journal, beside its
/// segments. The engine only looks for it: a log whose directory holds one is a Raft
/// group's, and retention deletes nothing of it until its replica bounds it
/// ([`PartitionLog::bound_retention`]).
pub const RAFT_JOURNAL_FILE: &str = "raft.journal";

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use recovery::{scan_segment, SegmentScan};

use appender::{Command, Pending};
use segment::Segment;

/// A partition's name: topic and index, shown as Kafka names its directory (`orders-3`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionId {
    pub topic: Arc<str>,
    pub partition: u32,
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Errors of a partition log. Each names the partition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A batch failed validation; nothing of the request was written.
    #[error("partition {partition}: invalid record batch at log end offset {log_end}")]
    InvalidBatch {
        partition: PartitionId,
        log_end: i64,
        #[source]
        source: BatchError,
    },
    /// The request holds no batch.
    #[error("partition {partition}: no record batch to append")]
    Empty { partition: PartitionId },
    /// An I/O operation failed. For writes and syncs the log is poisoned from then on.
    #[error("partition {partition}: {operation} failed")]
    Io {
        partition: PartitionId,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    /// A write, fdatasync, fallocate or segment creation failed, for this append or an
    /// earlier one: the partition is poisoned and refuses appends until it is reopened and
    /// recovered (Kafka's KAFKA_STORAGE_ERROR). The source is the failure that poisoned it,
    /// whose own source is the I/O error (ENOSPC and EIO stay apart).
    #[error("partition {partition}: storage failed ({source}); reopen to recover")]
    StorageFailed {
        partition: PartitionId,
        #[source]
        source: StorageFailure,
    },
    /// The offset is outside `log_start..=high_watermark`.
    #[error("partition {partition}: offset {offset} out of range {log_start}..={high_watermark}")]
    OffsetOutOfRange {
        partition: PartitionId,
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
    /// A replicated append does not continue the log: its batch at `found` is where the
    /// log expected `expected`. Nothing of the request was written.
    #[error("partition {partition}: replicated batch at offset {found}, log end {expected}")]
    NotContiguous {
        partition: PartitionId,
        expected: i64,
        found: i64,
    },
    /// The log's appender has stopped (the log was closed).
    #[error("partition {partition}: log is closed")]
    Closed { partition: PartitionId },
    /// An ordinary append to a replicated log: such a log is written only through its
    /// replica ([`PartitionLog::append_replicated`]), so nothing bypasses its Raft group.
    /// Nothing was written.
    #[error("partition {partition}: the log is replicated, written only through its replica")]
    Replicated { partition: PartitionId },
    /// A replicated log refused to move its commit end, or to cut batches below it; the log
    /// is as it was.
    #[error("partition {partition}: {refusal}")]
    CommitRefused {
        partition: PartitionId,
        refusal: CommitRefusal,
    },
    /// An idempotent producer's batch broke the sequence rules (see `log/producers.rs`);
    /// nothing of the request was written.
    #[error("partition {partition}: idempotent batch refused")]
    Producer {
        partition: PartitionId,
        #[source]
        source: ProducerError,
    },
    /// The bytes of a segment where batches were acknowledged fail the batch checks (CRC,
    /// framing, offsets): the disk damaged them. Nothing of them is served (Kafka's
    /// CORRUPT_MESSAGE); the source says where and why the valid batches stopped.
    #[error("partition {partition}: segment {segment} is damaged where offset {offset} is")]
    Damaged {
        partition: PartitionId,
        /// The damaged segment's base offset.
        segment: i64,
        /// The offset asked for.
        offset: i64,
        #[source]
        source: ScanStop,
    },
}

/// The failure that poisoned a partition: the operation and the I/O error it got. One is
/// shared by every waiter it fails and every later append refused, so it is cheap to clone;
/// its [`source`](std::error::Error::source) is the `io::Error` itself, so a caller walking
/// the chain can tell a full disk (ENOSPC) from a failing one (EIO).
#[derive(Debug, Clone)]
pub struct StorageFailure {
    operation: &'static str,
    source: Arc<io::Error>,
}

impl StorageFailure {
    /// The failure of `operation` with `source`.
    pub fn new(operation: &'static str, source: io::Error) -> StorageFailure {
        StorageFailure {
            operation,
            source: Arc::new(source),
        }
    }

    /// What failed: "write", "fdatasync", "fallocate", "create segment", ...
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The I/O error the operation got.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.operation)
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl LogError {
    /// The error of a failed I/O `operation` on `partition`, keeping the I/O error as its
    /// source: the one constructor of [`LogError::Io`].
    pub(crate) fn io(partition: &PartitionId, operation: &'static str, source: io::Error) -> Self {
        LogError::Io {
            partition: partition.clone(),
            operation,
            source,
        }
    }
}

/// How long an append waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Until the write completes (Kafka acks=1).
    Written,
    /// Until an fdatasync covering the batches completes (Kafka acks=all).
    Durable,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record appended.
    pub offset_first: i64,
    /// Offset after the last record appended.
    pub offset_next: i64,
    /// The broker's time stamped into LogAppendTime batches, else `None`.
    pub log_append_time_ms: Option<i64>,
}

/// The log's offsets, as clients see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub log_start: i64,
    pub high_watermark: i64,
    pub log_end: i64,
    pub durable_end: i64,
}

pub(crate) struct State<S: Storage> {
    pub(crate) segments: BTreeMap<i64, Segment<S>>,
    pub(crate) log_start: i64,
    /// The next offset to assign (ahead of `log_end` while a write is in flight).
    pub(crate) offset_assign_next: i64,
    pub(crate) log_end: i64,
    pub(crate) durable_end: i64,
    /// Bytes of the active segment below the durable end (what `flush = always` readers
    /// may see); `None` when unknown, meaning all of it.
    pub(crate) durable_position: Option<u64>,
    /// The failure that poisoned the log, if one did.
    pub(crate) poisoned: Option<StorageFailure>,
    pub(crate) config: TopicConfig,
    /// Idempotent producers' state, covering every batch below `offset_assign_next`.
    pub(crate) producers: producers::Producers,
    /// The commit end and what reads need of it, once the log is replicated
    /// (`log/commit.rs`); `None` for a log that is not.
    pub(crate) commit: Option<commit::Commit>,
    /// Bumped when a truncation starts and again when it ends (odd while one runs), so a
    /// commit end looked up across one is looked up again (`log/commit.rs`).
    pub(crate) truncations: u64,
    /// Each leader epoch's first offset, as far as the log was scanned (`log/epochs.rs`).
    pub(crate) epochs: epochs::Epochs,
    /// For a Raft group's log: retention deletes no segment that does not end at or below
    /// this offset (its replica's durable anchor, [`PartitionLog::bound_retention`]).
    /// `None`: retention is bounded only by the topic's configuration.
    pub(crate) retention_bound: Option<i64>,
}

impl<S: Storage> State<S> {
    /// Asserts the order of the log's offsets, which holds at every step:
    /// `log_start <= log_end` and `durable_end <= log_end <= offset_assign_next`. Integer
    /// comparisons only; a violation means the log would be written or acknowledged wrong,
    /// so it stops the shard rather than go on.
    pub(crate) fn assert_offsets_ordered(&self) {
        assert!(
            self.log_start <= self.log_end
                && self.durable_end <= self.log_end
                && self.log_end <= self.offset_assign_next,
            "offsets out of order: log start {}, durable end {}, log end {}, next to assign {}",
            self.log_start,
            self.durable_end,
            self.log_end,
            self.offset_assign_next
        );
        if let Some(commit) = &self.commit {
            assert!(
                self.log_start <= commit.end && commit.end <= self.log_end,
                "commit end {} outside the log {}..={}",
                commit.end,
                self.log_start,
                self.log_end
            );
        }
    }

    /// Asserts what holds between group commits, when no write is in flight: the offsets
    /// in order and caught up (`log_end == offset_assign_next`), and the active segment
    /// ending exactly where the log does — its next offset is the log end, and its size is
    /// where its index expects the next batch (the write position). Once per group: a map
    /// lookup and a few integer comparisons.
    pub(crate) fn assert_at_rest(&self) {
        self.assert_offsets_ordered();
        assert_eq!(
            self.log_end, self.offset_assign_next,
            "an offset is assigned but not written between groups"
        );
        let Some(active) = self.segments.values().next_back() else {
            unreachable!("a log always has an active segment");
        };
        assert!(
            active.offset_next == self.log_end
                && active.index.offset_next_min() == self.log_end
                && active.index.position_next_min() == active.size_bytes,
            "active segment {} ends at offset {} (index {}), byte {} (index {}); log end {}",
            active.base_offset,
            active.offset_next,
            active.index.offset_next_min(),
            active.size_bytes,
            active.index.position_next_min(),
            self.log_end
        );
        if let Some(tail) = &active.tail_block {
            assert_eq!(
                tail.len() as u64,
                active.size_bytes % crate::limits::BUF_ALIGN_BYTES as u64,
                "the direct-I/O tail block is the segment's partial last block"
            );
        }
        if let Some(durable_position) = self.durable_position {
            assert!(
                durable_position <= active.size_bytes,
                "durable past the end"
            );
        }
    }

    /// What consumers may read up to: the commit end of a replicated log, else the durable
    /// end for `flush = always` and the log end otherwise.
    pub(crate) fn high_watermark(&self) -> i64 {
        if let Some(commit) = &self.commit {
            commit.end
        } else if self.config.flush() == FlushPolicy::Always {
            self.durable_end
        } else {
            self.log_end
        }
    }
}

pub(crate) struct Shared<S: Storage> {
    pub(crate) id: PartitionId,
    pub(crate) dir: PathBuf,
    pub(crate) storage: S,
    pub(crate) state: RefCell<State<S>>,
    /// The active segment's preallocation: its step and its charge on the node's budget.
    pub(crate) prealloc: prealloc::Prealloc,
    /// Bumped on every change of the log end, durable end or commit end; long-polling
    /// fetches wait on it.
    pub(crate) version: Cell<u64>,
    pub(crate) waiters: RefCell<Vec<std::task::Waker>>,
    /// The shard's batch cache (used by direct-I/O logs, see `log/cached_read.rs`) and
    /// this log's key in it, taken on first use.
    pub(crate) cache: Rc<cache::BatchCache>,
    pub(crate) cache_key: Cell<Option<u64>>,
    /// Whether a read-ahead task is filling the cache for this log.
    pub(crate) reading_ahead: Cell<bool>,
    /// Chunks the read-ahead task finished (or gave up on), and the fetches waiting for
    /// the next one.
    pub(crate) readahead_steps: Cell<u64>,
    pub(crate) readahead_waiters: RefCell<Vec<std::task::Waker>>,
}

impl<S: Storage> Drop for Shared<S> {
    fn drop(&mut self) {
        if let Some(key) = self.cache_key.take() {
            self.cache.forget(key);
        }
    }
}

impl<S: Storage> Shared<S> {
    pub(crate) fn error_io(&self, operation: &'static str, source: io::Error) -> LogError {
        LogError::io(&self.id, operation, source)
    }

    /// The error a waiter failed by `failure` (which poisoned the log) gets.
    pub(crate) fn storage_failed(&self, failure: &StorageFailure) -> LogError {
        LogError::StorageFailed {
            partition: self.id.clone(),
            source: failure.clone(),
        }
    }

    /// The log's offsets now.
    pub(crate) fn offsets(&self) -> Offsets {
        let state = self.state.borrow();
        Offsets {
            log_start: state.log_start,
            high_watermark: state.high_watermark(),
            log_end: state.log_end,
            durable_end: state.durable_end,
        }
    }

    pub(crate) fn notify_waiters(&self) {
        self.version.set(self.version.get() + 1);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// A partition's log. Cheap to clone (all clones are the same log); `!Send`: it lives on
/// its shard.
pub struct PartitionLog<S: Storage> {
    shared: Rc<Shared<S>>,
    commands: queue::Sender<Command>,
    appender: Rc<RefCell<Option<JoinHandle<()>>>>,
}

impl<S: Storage> Clone for PartitionLog<S> {
    fn clone(&self) -> Self {
        PartitionLog {
            shared: self.shared.clone(),
            commands: self.commands.clone(),
            appender: self.appender.clone(),
        }
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Opens the log in `dir` (creating it if missing), recovering whatever an unclean stop
    /// left, and starts its appender task on the current shard. Its preallocation answers
    /// to no node-wide budget (see [`PartitionLog::open_with_budget`]).
    pub async fn open(
        storage: S,
        dir: &Path,
        id: PartitionId,
        config: TopicConfig,
    ) -> Result<PartitionLog<S>, LogError> {
        Self::open_with_budget(storage, dir, id, config, PreallocBudget::unlimited()).await
    }

    /// [`PartitionLog::open`], with the log's preallocation charged to `budget`, which the
    /// other logs of the node share.
    pub async fn open_with_budget(
        storage: S,
        dir: &Path,
        id: PartitionId,
        config: TopicConfig,
        budget: PreallocBudget,
    ) -> Result<PartitionLog<S>, LogError> {
        let shared = recovery::open(storage, dir, id, config, budget).await?;
        producers::load(&shared).await?;
        let shared = Rc::new(shared);
        let (commands, receiver) = queue::bounded(COMMANDS_QUEUED_PER_PARTITION_MAX);
        let task = crate::rt::spawn_local(appender::run(shared.clone(), receiver));
        Ok(PartitionLog {
            shared,
            commands,
            appender: Rc::new(RefCell::new(Some(task))),
        })
    }

    /// The partition's name.
    pub fn id(&self) -> &PartitionId {
        &self.shared.id
    }

    /// Appends the batches in `batches` (one or more, as in a Produce request's records):
    /// validates each, stamps offsets (and LogAppendTime if the topic uses it), and waits
    /// as `ack` says. A batch of an idempotent producer (one per request) is checked against
    /// the producer's state first: a retry of one of its last batches is answered with the
    /// original offsets (once they are as durable as `ack` asks) and not written again.
    /// Nothing is written if any batch is invalid. While the appender's queue is full
    /// (`COMMANDS_QUEUED_PER_PARTITION_MAX`), the append waits for room, behind every
    /// append already waiting. `batches` is not changed
    /// (it may be a slice of a shared request buffer): the stamps go into copies of the
    /// headers, and the records are written from it.
    ///
    /// A replicated log (see [`PartitionLog::set_commit_end`]) refuses it with
    /// [`LogError::Replicated`]: it is written only through its replica.
    pub async fn append(&self, batches: Bytes, ack: Ack) -> Result<Appended, LogError> {
        let max_message_bytes = {
            let state = self.shared.state.borrow();
            state.refuse_if_replicated(&self.shared.id)?;
            state.config.max_message_bytes() as usize
        };
        let info = self.validate(&batches, max_message_bytes)?;
        let producer = producers::ProducerBatch::of_request(&batches).map_err(|source| {
            LogError::Producer {
                partition: self.shared.id.clone(),
                source,
            }
        })?;
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            batches,
            info,
            producer,
            ack,
            replicated: false,
            reply,
        };
        self.send(Command::Append(pending)).await?;
        outcome.await.map_err(|_| self.closed())?
    }

    /// Appends batches another replica stamped: the leader of a replicated partition gave
    /// them their offsets, leader epoch and timestamps, and this replica writes them byte
    /// for byte, so every replica's log is the same bytes. The first batch's base offset
    /// must be this log's end, and each next batch must start where the previous one
    /// ended ([`LogError::NotContiguous`] otherwise, and nothing is written). Batches are
    /// validated (CRC and framing) as any append's; idempotent producers' batches are
    /// recorded in the producers' state without the sequence rules, which the leader
    /// applied, so this replica can take over deduplication when it leads. The size limit
    /// is the engine's, not the topic's `max.message.bytes`: the leader applied that when
    /// it accepted the batch, and a replica configured lower must still copy it.
    pub async fn append_replicated(&self, batches: Bytes, ack: Ack) -> Result<Appended, LogError> {
        let info = self.validate(&batches, crate::limits::BATCH_SIZE_BYTES_MAX)?;
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            batches,
            info,
            producer: None,
            ack,
            replicated: true,
            reply,
        };
        self.send(Command::Append(pending)).await?;
        outcome.await.map_err(|_| self.closed())?
    }

    /// Checks an idempotent producer's batch as the append path would check it next, and
    /// changes nothing: against the producers' state, which covers every batch below the
    /// next offset to assign (written or queued), followed by `proposed` — batches already
    /// stamped, each with its first offset, in offset order, but not yet appended (a
    /// replicated partition's leader passes those it proposed; those the state covers
    /// already and other producers' are skipped). A retry of one of the producer's last
    /// batches is [`ProducerCheck::Duplicate`] with the original's offsets; a gap, a new
    /// epoch not at sequence 0 or an older epoch is [`LogError::Producer`].
    pub fn check_producer_batch(
        &self,
        batch: &ProducerBatch,
        proposed: &[(ProducerBatch, i64)],
    ) -> Result<ProducerCheck, LogError> {
        let state = self.shared.state.borrow();
        (state.producers)
            .check_after(batch, proposed, state.offset_assign_next)
            .map_err(|source| LogError::Producer {
                partition: self.shared.id.clone(),
                source,
            })
    }

    /// Validates the batches of an append: the one check every way in goes through.
    fn validate(
        &self,
        batches: &[u8],
        max_message_bytes: usize,
    ) -> Result<crate::batch::BatchInfo, LogError> {
        let info = crate::batch::validate(batches, max_message_bytes).map_err(|source| {
            LogError::InvalidBatch {
                partition: self.shared.id.clone(),
                log_end: self.offsets().log_end,
                source,
            }
        })?;
        if info.batch_count == 0 {
            return Err(LogError::Empty {
                partition: self.shared.id.clone(),
            });
        }
        Ok(info)
    }

    /// The log's offsets now.
    pub fn offsets(&self) -> Offsets {
        self.shared.offsets()
    }

    /// The topic configuration the log runs with.
    pub fn config(&self) -> TopicConfig {
        self.shared.state.borrow().config.clone()
    }

    /// Replaces the configuration (flush policy, retention, segment size, …); it applies
    /// from the next group commit on.
    pub fn set_config(&self, config: TopicConfig) {
        self.shared.state.borrow_mut().config = config;
    }

    /// The failure that poisoned the log, if a write, fdatasync, fallocate or segment
    /// creation failed.
    pub fn poisoned(&self) -> Option<StorageFailure> {
        self.shared.state.borrow().poisoned.clone()
    }

    /// Truncates the log so `offset` is its new end (dropping every batch at or after the
    /// batch holding `offset`; `offset` should be a batch boundary). Waits for appends
    /// queued before it. A replicated log refuses an offset below its commit end
    /// ([`CommitRefusal::TruncateCommitted`]): committed batches are never cut.
    pub async fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Truncate { offset, reply }).await?;
        done.await.map_err(|_| self.closed())?
    }

    /// Deletes closed segments past the topic's retention now (the appender also does
    /// this periodically); returns how many were deleted.
    pub async fn enforce_retention(&self) -> Result<usize, LogError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Retention { reply }).await?;
        done.await.map_err(|_| self.closed())?
    }

    /// Lets retention delete the segments of this log that end at or below `offset`, and
    /// none beyond: a Raft group's replica keeps the entries of its window (from its
    /// durable anchor's offset on) out of retention's reach. The bound only moves forward.
    pub fn bound_retention(&self, offset: i64) {
        let mut state = self.shared.state.borrow_mut();
        state.retention_bound = Some(state.retention_bound.map_or(offset, |b| b.max(offset)));
    }

    /// Empties the log and starts it again at `offset`, past its end (Kafka's "truncate
    /// fully and start at"): every segment and producer snapshot is deleted and a new, empty
    /// segment begins at `offset`; the producer state and leader epochs start empty, and a
    /// replicated log's commit end moves to `offset`. For a replica whose snapshot's fill
    /// finds its peers' logs starting past its own end, because retention there deleted
    /// what it lacks. Returns the new log start offset.
    pub async fn restart_at(&self, offset: i64) -> Result<i64, LogError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::RestartAt { offset, reply }).await?;
        done.await.map_err(|_| self.closed())?
    }

    /// Moves the log start offset to `offset` (Kafka's DeleteRecords) and deletes the
    /// segments wholly below it; returns the new log start offset.
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, LogError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::DeleteBefore { offset, reply }).await?;
        done.await.map_err(|_| self.closed())?
    }

    /// Writes the recovery checkpoint (and the active segment's indexes) for the durable
    /// prefix now, as the appender does every `CHECKPOINT_INTERVAL_MS`.
    pub async fn checkpoint(&self) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Checkpoint { reply }).await?;
        done.await.map_err(|_| self.closed())?
    }

    /// Flushes and fdatasyncs everything written, writes the indexes and the recovery
    /// checkpoint (so the next open scans nothing), and stops the appender.
    pub async fn close(&self) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Close { reply }).await?;
        let result = done.await.map_err(|_| self.closed())?;
        let task = self.appender.borrow_mut().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }

    /// Waits until the log moves past `version` (see [`PartitionLog::version`]) or the
    /// future is dropped; for long-polling fetches.
    pub async fn changed_since(&self, version: u64) {
        std::future::poll_fn(|cx| {
            if self.shared.version.get() != version {
                return std::task::Poll::Ready(());
            }
            self.shared.waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
    }

    /// A number that changes whenever the log end, durable end or (for a replicated log)
    /// commit end moves.
    pub fn version(&self) -> u64 {
        self.shared.version.get()
    }

    /// Queues `command` for the appender, waiting for room while the queue is full (the
    /// backpressure that reaches the producer's connection).
    async fn send(&self, command: Command) -> Result<(), LogError> {
        self.commands.send(command).await.map_err(|_| self.closed())
    }

    /// The most commands the appender's queue ever held at once.
    #[cfg(test)]
    pub(crate) fn commands_queued_max(&self) -> usize {
        self.commands.len_max()
    }

    fn closed(&self) -> LogError {
        LogError::Closed {
            partition: self.shared.id.clone(),
        }
    }
}
