//! The appender: one task per partition that turns queued appends into group commits.
//!
//! Everything queued while the previous write was in flight becomes one group: offsets are
//! stamped in order and the group goes to the segment tail in one write (`group.rs`), with
//! an fdatasync linked after it when the flush policy or an `Ack::Durable` waiter needs
//! one. The appender goes on to the next group as soon as the write completes; the sync
//! completes in the background, in order (`durability.rs`). `Ack::Written` waiters are
//! answered when the write completes, `Ack::Durable` ones when the sync does.
//!
//! Commands reach the task through a bounded queue (`queue.rs`) of at most
//! `COMMANDS_QUEUED_PER_PARTITION_MAX`: an append that finds it full waits for room, so a
//! partition that cannot keep up slows its producers instead of growing without bound. The
//! task never waits on a sender, so whatever it waits for (a sync, a write), it then takes
//! the queue, which makes room.
//!
//! Truncation, retention, record deletion, checkpoints and close are commands on the same
//! queue, so they never race an append (they wait for syncs in flight first). The task
//! also runs the periodic flush (`flush = periodic` with an interval), the periodic
//! recovery checkpoint and the retention check.
//!
//! Before a group is stamped, its idempotent batches are checked in queue order against the
//! producers' state (`producers.rs`) and recorded in it with the offsets they will get, so
//! the next batch of the same producer, in this group or a later one, is checked against
//! them. A refused batch is answered at once; a duplicate is answered with its original's
//! offsets once they are as durable as its ack asks, and never written.
//!
//! A failed write or fdatasync poisons the log: the waiters get `StorageFailed` with the
//! typed failure (operation and I/O error) as its source, and so does every later append;
//! nothing is retried as if it had succeeded.

use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::FutureExt;

use super::durability::{self, Durability};
use super::group;
use super::producers::{ProducerBatch, Verdict};
use super::queue;
use super::segment::BatchHeader;
use super::{
    checkpoint, producer_snapshot, retention, Ack, Appended, LogError, Shared, StorageFailure,
};
use crate::batch::BatchInfo;
use crate::limits::{CHECKPOINT_INTERVAL_MS, PRODUCER_ID_EXPIRATION_MS};
use crate::rt;
use crate::storage::Storage;
use crate::topic::FlushPolicy;

/// One queued append.
pub(crate) struct Pending {
    pub(crate) batches: Bytes,
    pub(crate) info: BatchInfo,
    /// The idempotent producer's batch, if the request holds one (then it is the only one).
    pub(crate) producer: Option<ProducerBatch>,
    pub(crate) ack: Ack,
    /// Batches another replica stamped (see [`PartitionLog::append_replicated`]): written
    /// as they are, at the offsets they carry, which must continue the log.
    ///
    /// [`PartitionLog::append_replicated`]: super::PartitionLog::append_replicated
    pub(crate) replicated: bool,
    pub(crate) reply: oneshot::Sender<Result<Appended, LogError>>,
}

/// A retried idempotent batch: answered with its original's offsets, never written.
struct Duplicate {
    appended: Appended,
    ack: Ack,
    reply: oneshot::Sender<Result<Appended, LogError>>,
}

pub(crate) type Reply = oneshot::Sender<Result<(), LogError>>;

pub(crate) enum Command {
    Append(Pending),
    Truncate {
        offset: i64,
        reply: Reply,
    },
    DeleteBefore {
        offset: i64,
        reply: oneshot::Sender<Result<i64, LogError>>,
    },
    RestartAt {
        offset: i64,
        reply: oneshot::Sender<Result<i64, LogError>>,
    },
    Retention {
        reply: oneshot::Sender<Result<usize, LogError>>,
    },
    Checkpoint {
        reply: Reply,
    },
    Close {
        reply: Reply,
    },
}

/// The appender's state between groups.
struct Appender<S: Storage> {
    shared: Rc<Shared<S>>,
    durability: Durability,
    next_retention: Instant,
    next_checkpoint: Instant,
    /// The durable end the last checkpoint recorded.
    checkpointed_durable_end: i64,
}

/// What woke the appender.
enum Event {
    Command(Option<Command>),
    SyncCompleted,
    Timer,
}

pub(crate) async fn run<S: Storage>(shared: Rc<Shared<S>>, mut commands: queue::Receiver<Command>) {
    let now = Instant::now();
    let checkpointed_durable_end = shared.state.borrow().durable_end;
    let mut appender = Appender {
        shared,
        durability: Durability::new(),
        next_retention: now + retention::check_interval(),
        next_checkpoint: now + Duration::from_millis(CHECKPOINT_INTERVAL_MS),
        checkpointed_durable_end,
    };
    let mut queued = Vec::new();
    // One sleep for the appender's life, moved when the next deadline moves: a sleep made
    // per turn would register (and leave in the timers' heap) a deadline per turn.
    let mut timer = pin!(rt::sleep_until(appender.next_deadline()));
    loop {
        timer.as_mut().reset(appender.next_deadline());
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(true) = appender.durability.poll_oldest(&appender.shared, cx) {
                return Poll::Ready(Event::SyncCompleted);
            }
            // While the group syncs in flight are at their limit, appends stay queued: the
            // next group takes everything that arrived meanwhile (group commit grows with
            // load) instead of a group formed before the sync finished.
            if !appender.durability.is_full() {
                if let Poll::Ready(command) = commands.poll_recv(cx) {
                    return Poll::Ready(Event::Command(command));
                }
            }
            timer.poll_unpin(cx).map(|()| Event::Timer)
        })
        .await;
        match event {
            // The waiters just answered are likely to append again at once: let them run
            // first, so the next group gathers them too.
            Event::SyncCompleted => rt::yield_now().await,
            Event::Timer => appender.on_timer().await,
            Event::Command(None) => break,
            Event::Command(Some(first)) => {
                queued.push(first);
                while let Some(command) = commands.try_recv() {
                    queued.push(command);
                }
                if appender.process(&mut queued).await {
                    break;
                }
            }
        }
    }
}

impl<S: Storage> Appender<S> {
    /// When the periodic flush, checkpoint or retention check is due next.
    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_retention;
        let state = self.shared.state.borrow();
        if state.durable_end != self.checkpointed_durable_end {
            deadline = deadline.min(self.next_checkpoint);
        }
        if self.durability.unsynced_bytes() > 0 {
            if let FlushPolicy::Periodic {
                interval_ms: Some(interval_ms),
                ..
            } = state.config.flush()
            {
                let due = self.durability.last_sync + Duration::from_millis(interval_ms);
                deadline = deadline.min(due);
            }
        }
        deadline
    }

    async fn on_timer(&mut self) {
        let shared = self.shared.clone();
        let interval = match shared.state.borrow().config.flush() {
            FlushPolicy::Periodic {
                interval_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(ms)),
            _ => None,
        };
        let flush_due = interval.is_some_and(|i| self.durability.last_sync.elapsed() >= i);
        if self.durability.unsynced_bytes() > 0 && flush_due && !self.durability.is_full() {
            durability::sync_now(&shared, &mut self.durability);
        }
        let durable_end = shared.state.borrow().durable_end;
        let now = Instant::now();
        if now >= self.next_checkpoint && durable_end != self.checkpointed_durable_end {
            self.next_checkpoint = now + Duration::from_millis(CHECKPOINT_INTERVAL_MS);
            match checkpoint::write(&shared, false).await {
                Ok(()) => self.checkpointed_durable_end = durable_end,
                Err(error) => tracing::warn!(partition = %shared.id, %error, "checkpoint failed"),
            }
        }
        if now >= self.next_retention {
            self.next_retention = now + retention::check_interval();
            self.durability.drain(&shared).await;
            if let Err(error) = retention::apply(&shared, now_ms()).await {
                tracing::warn!(partition = %shared.id, %error, "retention check failed");
            }
            let expired =
                (shared.state.borrow_mut().producers).expire(now_ms(), PRODUCER_ID_EXPIRATION_MS);
            if expired > 0 {
                tracing::info!(partition = %shared.id, expired, "idle producer ids expired");
            }
        }
    }

    /// Runs the queued commands in order, grouping consecutive appends. True on close.
    async fn process(&mut self, queued: &mut Vec<Command>) -> bool {
        let shared = self.shared.clone();
        let mut group = Vec::new();
        for command in queued.drain(..) {
            if let Command::Append(pending) = command {
                group.push(pending);
                continue;
            }
            self.commit(std::mem::take(&mut group)).await;
            self.durability.drain(&shared).await;
            match command {
                Command::Append(_) => unreachable!("handled above"),
                Command::Truncate { offset, reply } => {
                    let _ = reply.send(retention::truncate_to(&shared, offset).await);
                }
                Command::DeleteBefore { offset, reply } => {
                    let _ = reply.send(retention::delete_before(&shared, offset).await);
                }
                Command::RestartAt { offset, reply } => {
                    let _ = reply.send(retention::restart_at(&shared, offset).await);
                }
                Command::Retention { reply } => {
                    let _ = reply.send(retention::apply(&shared, now_ms()).await);
                }
                Command::Checkpoint { reply } => {
                    let durable_end = shared.state.borrow().durable_end;
                    let written = checkpoint::write(&shared, false).await;
                    if written.is_ok() {
                        self.checkpointed_durable_end = durable_end;
                    }
                    let _ = reply.send(written);
                }
                Command::Close { reply } => {
                    let _ = reply.send(self.close().await);
                    return true;
                }
            }
        }
        self.commit(group).await;
        false
    }

    /// Writes one group and answers (or queues) its waiters.
    async fn commit(&mut self, group: Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let poisoned = shared.state.borrow().poisoned.clone();
        if let Some(failure) = poisoned {
            fail_all(
                &shared,
                &failure,
                group.into_iter().map(|pending| pending.reply),
            );
            return;
        }
        while self.durability.is_full() {
            self.durability.wait_oldest(&shared).await;
        }
        // The roll comes before the producer checks: the producer snapshot it writes must
        // cover exactly the batches below the new segment's base offset.
        let bytes_asked: u64 = group.iter().map(|p| p.batches.len() as u64).sum();
        if let Err(failure) =
            durability::roll_if_needed(&shared, &mut self.durability, bytes_asked).await
        {
            poison(&shared, &failure);
            fail_all(
                &shared,
                &failure,
                group.into_iter().map(|pending| pending.reply),
            );
            return;
        }
        let (group, duplicates, offset_next) = admit(&shared, group);
        if !group.is_empty() {
            if let Err(failure) = self.write_group(group, offset_next).await {
                let replies = duplicates.into_iter().map(|duplicate| duplicate.reply);
                fail_all(&shared, &failure, replies);
                return;
            }
        }
        self.answer_duplicates(duplicates);
    }

    /// Stamps and writes admitted appends, which `admit` recorded as ending at
    /// `offset_next`; on failure the log is poisoned, their waiters failed, and the failure
    /// returned.
    async fn write_group(
        &mut self,
        group: Vec<Pending>,
        offset_next: i64,
    ) -> Result<(), StorageFailure> {
        let shared = self.shared.clone();
        shared.state.borrow().assert_at_rest();
        let group_bytes: u64 = group
            .iter()
            .map(|pending| pending.batches.len() as u64)
            .sum();
        let records: u64 = group.iter().map(|pending| pending.info.record_count).sum();
        let must_sync = self.needs_sync(&group, group_bytes);
        let acks: Vec<Ack> = group.iter().map(|pending| pending.ack).collect();
        let stamped = group::stamp(&shared, group);
        // The producers' state recorded the admitted batches at the offsets they were
        // just stamped with.
        assert_eq!(
            shared.state.borrow().offset_assign_next,
            offset_next,
            "stamped offsets differ from those admitted"
        );
        let position = active_size(&shared);
        let started = Instant::now();
        match group::write_at_tail(&shared, stamped.buffers, position, must_sync).await {
            Ok(written) => {
                let sync = written.sync;
                group::finish(
                    &shared,
                    &stamped.headers,
                    position,
                    group_bytes,
                    written.staged,
                );
                super::metrics::on_group_commit(
                    group_bytes,
                    acks.len(),
                    records,
                    started.elapsed(),
                );
                self.durability.written_total += group_bytes;
                self.answer(stamped.replies, &acks, sync, position + group_bytes);
                Ok(())
            }
            Err(failure) => {
                poison(&shared, &failure);
                fail_all(
                    &shared,
                    &failure,
                    stamped.replies.into_iter().map(|(_, reply)| reply),
                );
                Err(failure)
            }
        }
    }

    /// Answers retried batches whose originals are written: `Ack::Written` now,
    /// `Ack::Durable` once an fdatasync covers the original.
    fn answer_duplicates(&mut self, duplicates: Vec<Duplicate>) {
        for duplicate in duplicates {
            debug_assert!(duplicate.appended.offset_next <= self.shared.state.borrow().log_end);
            match duplicate.ack {
                Ack::Written => {
                    let _ = duplicate.reply.send(Ok(duplicate.appended));
                }
                Ack::Durable => {
                    let waiter = (duplicate.appended, duplicate.reply);
                    self.durability.wait_durable(&self.shared, waiter);
                }
            }
        }
    }

    /// Answers `Ack::Written` waiters now; queues the rest behind the group's sync.
    fn answer(
        &mut self,
        replies: Vec<(Appended, oneshot::Sender<Result<Appended, LogError>>)>,
        acks: &[Ack],
        sync: Option<crate::storage::PendingSync>,
        position_end: u64,
    ) {
        let mut durable = Vec::new();
        for ((appended, reply), ack) in replies.into_iter().zip(acks) {
            if *ack == Ack::Durable && sync.is_some() {
                durable.push((appended, reply));
            } else {
                let _ = reply.send(Ok(appended));
            }
        }
        if let Some(sync) = sync {
            let (log_end, base) = {
                let state = self.shared.state.borrow();
                (
                    state.log_end,
                    state.segments.keys().next_back().copied().unwrap_or(0),
                )
            };
            self.durability
                .push(sync, log_end, base, position_end, durable);
        }
    }

    /// Whether this group's write must be followed by an fdatasync.
    fn needs_sync(&self, group: &[Pending], group_bytes: u64) -> bool {
        let policy = self.shared.state.borrow().config.flush();
        let by_policy = match policy {
            FlushPolicy::Always => true,
            FlushPolicy::Never => false,
            FlushPolicy::Periodic { bytes, .. } => {
                bytes.is_some_and(|bytes| self.durability.unsynced_bytes() + group_bytes >= bytes)
            }
        };
        by_policy || group.iter().any(|pending| pending.ack == Ack::Durable)
    }

    /// Clean stop: everything written is synced, indexes and the recovery checkpoint written.
    async fn close(&mut self) -> Result<(), LogError> {
        let shared = self.shared.clone();
        // A closed log serves no fetch: its cached batches go now, not when the last
        // handle (a read-ahead task, say) lets go.
        if let Some(key) = shared.cache_key.take() {
            shared.cache.forget(key);
        }
        durability::seal_active(&shared, &mut self.durability).await?;
        let (log_end, assigned) = {
            let state = shared.state.borrow();
            (state.log_end, state.offset_assign_next)
        };
        assert_eq!(log_end, assigned, "nothing is in flight at close");
        if let Err(error) = producer_snapshot::write(&shared, log_end).await {
            // The next open rebuilds the state from an older snapshot and the log instead.
            tracing::warn!(partition = %shared.id, %error, "producer snapshot at close failed");
        }
        checkpoint::write(&shared, true).await
    }
}

/// Applies the idempotent-producer rules to `group` in queue order (see the module doc):
/// returns the appends to write, the duplicates to answer, and the offset after the
/// admitted appends; refused appends are answered here. Admitted batches are recorded with
/// the offsets `group::stamp` will give them.
fn admit<S: Storage>(
    shared: &Shared<S>,
    group: Vec<Pending>,
) -> (Vec<Pending>, Vec<Duplicate>, i64) {
    let mut state = shared.state.borrow_mut();
    let mut offset_next = state.offset_assign_next;
    let now = now_ms();
    let mut admitted = Vec::with_capacity(group.len());
    let mut duplicates = Vec::new();
    for pending in group {
        if pending.replicated {
            if let Err(error) = admit_replicated(shared, &mut state, &pending, offset_next) {
                let _ = pending.reply.send(Err(error));
                continue;
            }
        } else if let Err(error) = state.refuse_if_replicated(&shared.id) {
            // Queued before the log became replicated: still, only its replica writes it.
            let _ = pending.reply.send(Err(error));
            continue;
        } else if let Some(batch) = pending.producer {
            match state.producers.check(&batch) {
                Ok(Verdict::Append) => state.producers.record(&batch, offset_next, now),
                Ok(Verdict::Duplicate {
                    offset_first,
                    offset_next,
                }) => {
                    let appended = Appended {
                        offset_first,
                        offset_next,
                        log_append_time_ms: None,
                    };
                    duplicates.push(Duplicate {
                        appended,
                        ack: pending.ack,
                        reply: pending.reply,
                    });
                    continue;
                }
                Err(source) => {
                    let partition = shared.id.clone();
                    let _ = pending
                        .reply
                        .send(Err(LogError::Producer { partition, source }));
                    continue;
                }
            }
        }
        offset_next += i64::try_from(pending.info.offset_count).unwrap_or(i64::MAX);
        admitted.push(pending);
    }
    (admitted, duplicates, offset_next)
}

/// Checks that replicated batches continue the log at `offset_next` without a gap or an
/// overlap, and records their idempotent producers as recovery does: the leader applied
/// the rules when it accepted them, and a replica keeps what the leader wrote.
fn admit_replicated<S: Storage>(
    shared: &Shared<S>,
    state: &mut super::State<S>,
    pending: &Pending,
    offset_next: i64,
) -> Result<(), LogError> {
    let mut headers = Vec::with_capacity(pending.info.batch_count);
    let mut expected = offset_next;
    let mut at = 0usize;
    while at < pending.batches.len() {
        let Some(header) = BatchHeader::parse(&pending.batches[at..]) else {
            unreachable!("a validated batch at byte {at} of an append does not parse");
        };
        if header.base_offset != expected {
            return Err(LogError::NotContiguous {
                partition: shared.id.clone(),
                expected,
                found: header.base_offset,
            });
        }
        expected = header.last_offset + 1;
        at += header.size_bytes as usize;
        headers.push(header);
    }
    for header in &headers {
        state.producers.replay(header);
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, the unit of Kafka timestamps.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn active_size<S: Storage>(shared: &Shared<S>) -> u64 {
    let state = shared.state.borrow();
    state
        .segments
        .values()
        .next_back()
        .map_or(0, |segment| segment.size_bytes)
}

/// Marks the log poisoned by `failure`, which later appends and syncs will fail with. A log
/// already poisoned keeps its first failure: that is the cause, and what follows (the seal
/// at close on a dead disk, say) only its consequence.
pub(crate) fn poison<S: Storage>(shared: &Shared<S>, failure: &StorageFailure) {
    let mut state = shared.state.borrow_mut();
    if let Some(first) = &state.poisoned {
        tracing::warn!(
            partition = %shared.id,
            operation = failure.operation(),
            error = %failure.io_error(),
            poisoned_by = first.operation(),
            "storage failed again on a poisoned partition"
        );
        return;
    }
    tracing::error!(
        partition = %shared.id,
        operation = failure.operation(),
        error = %failure.io_error(),
        "storage failed; partition poisoned"
    );
    state.poisoned = Some(failure.clone());
}

/// Fails every waiter of `replies` with `failure`, the typed cause kept as the source.
pub(crate) fn fail_all<S: Storage, T>(
    shared: &Shared<S>,
    failure: &StorageFailure,
    replies: impl Iterator<Item = oneshot::Sender<Result<T, LogError>>>,
) {
    for reply in replies {
        let _ = reply.send(Err(shared.storage_failed(failure)));
    }
}
