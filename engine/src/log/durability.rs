//! Durability: the fdatasyncs in flight, completed in order, and what completing one means.
//!
//! A group commit's write completes first; its linked fdatasync may still be in flight
//! while the appender forms and writes the next group (the next write only starts after
//! this one completed, so the sync, issued after the write, covers it), up to
//! `SYNCS_IN_FLIGHT_MAX` group syncs. Syncs complete in
//! submission order as far as the log is concerned: the durable end moves to a sync's log
//! end only when it and every earlier sync succeeded, and only then are its `Ack::Durable`
//! waiters answered. A failed sync poisons the log and fails its waiters and every later
//! one's: nothing after a failed fdatasync is ever called durable.
//!
//! Segment rolls go through the same queue: the old segment is trimmed, fdatasynced and
//! its indexes written in the background, so a roll does not stall appends.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::appender::{fail_all, poison};
use super::segment::Segment;
use super::{checkpoint, Appended, LogError, Shared, StorageFailure};
use crate::limits::SYNCS_IN_FLIGHT_MAX;
use crate::storage::{PendingSync, Storage, StorageFile};
use crate::topic::IoMode;

type Waiter = (Appended, oneshot::Sender<Result<Appended, LogError>>);

/// One fdatasync in flight.
pub(crate) struct InFlightSync {
    sync: PendingSync,
    /// Everything below this offset is durable once this sync (and all before it) succeed.
    log_end: i64,
    /// The segment and how many of its bytes that is.
    segment_base: i64,
    position: u64,
    /// Bytes written in all when this sync was issued.
    written_total: u64,
    waiters: Vec<Waiter>,
    /// A group commit's sync (counted against the limit), or a segment seal (not counted:
    /// sealing a large unsynced segment must not hold up appends to the next one).
    group: bool,
}

/// The syncs in flight, oldest first, and the byte counts of written vs synced data.
pub(crate) struct Durability {
    in_flight: VecDeque<InFlightSync>,
    pub(crate) written_total: u64,
    synced_total: u64,
    pub(crate) last_sync: Instant,
}

impl Durability {
    pub(crate) fn new() -> Durability {
        Durability {
            in_flight: VecDeque::new(),
            written_total: 0,
            synced_total: 0,
            last_sync: Instant::now(),
        }
    }

    /// Written bytes no sync (completed or in flight) covers yet.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        let covered = self
            .in_flight
            .back()
            .map_or(self.synced_total, |s| s.written_total);
        self.written_total - covered
    }

    /// Whether as many group syncs are in flight as allowed: the next group waits.
    pub(crate) fn is_full(&self) -> bool {
        self.in_flight.iter().filter(|sync| sync.group).count() >= SYNCS_IN_FLIGHT_MAX
    }

    /// Queues a sync covering the log up to `log_end` (`position` bytes of segment
    /// `segment_base`), with the waiters it answers.
    pub(crate) fn push(
        &mut self,
        sync: PendingSync,
        log_end: i64,
        segment_base: i64,
        position: u64,
        waiters: Vec<Waiter>,
    ) {
        let sync = super::metrics::timed_fdatasync(sync);
        self.push_kind(sync, log_end, segment_base, position, waiters, true);
    }

    fn push_kind(
        &mut self,
        sync: PendingSync,
        log_end: i64,
        segment_base: i64,
        position: u64,
        waiters: Vec<Waiter>,
        group: bool,
    ) {
        let written_total = self.written_total;
        self.in_flight.push_back(InFlightSync {
            sync,
            log_end,
            segment_base,
            position,
            written_total,
            waiters,
            group,
        });
    }

    /// Answers `waiter` once everything below its `offset_next` is durable: now if it is,
    /// else with the sync in flight that covers it, else with a new sync of the log.
    pub(crate) fn wait_durable<S: Storage>(&mut self, shared: &Shared<S>, waiter: Waiter) {
        let offset_next = waiter.0.offset_next;
        let (durable_end, log_end) = {
            let state = shared.state.borrow();
            (state.durable_end, state.log_end)
        };
        assert!(
            offset_next <= log_end,
            "only written batches are waited for"
        );
        if offset_next <= durable_end {
            let _ = waiter.1.send(Ok(waiter.0));
            return;
        }
        let covered = |sync: &InFlightSync| sync.log_end >= offset_next;
        if !self.in_flight.back().is_some_and(covered) {
            sync_now(shared, self);
        }
        match self.in_flight.back_mut() {
            Some(sync) if covered(sync) => sync.waiters.push(waiter),
            _ => {
                let Some(failure) = shared.state.borrow().poisoned.clone() else {
                    unreachable!("`sync_now` queues a covering sync unless the log is poisoned");
                };
                let _ = waiter.1.send(Err(shared.storage_failed(&failure)));
            }
        }
    }

    /// Polls the oldest sync; `Ready(true)` when one completed (and was applied).
    pub(crate) fn poll_oldest<S: Storage>(
        &mut self,
        shared: &Shared<S>,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        let Some(oldest) = self.in_flight.front_mut() else {
            return Poll::Ready(false);
        };
        let Poll::Ready(result) = oldest.sync.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        let Some(done) = self.in_flight.pop_front() else {
            unreachable!("polled above")
        };
        self.complete(shared, done, result);
        Poll::Ready(true)
    }

    /// Waits for every sync in flight.
    pub(crate) async fn drain<S: Storage>(&mut self, shared: &Shared<S>) {
        while !self.in_flight.is_empty() {
            std::future::poll_fn(|cx| self.poll_oldest(shared, cx)).await;
        }
    }

    /// Waits for the oldest sync.
    pub(crate) async fn wait_oldest<S: Storage>(&mut self, shared: &Shared<S>) {
        std::future::poll_fn(|cx| self.poll_oldest(shared, cx)).await;
    }

    fn complete<S: Storage>(
        &mut self,
        shared: &Shared<S>,
        done: InFlightSync,
        result: io::Result<()>,
    ) {
        if let Err(source) = result {
            // A seal trims, fdatasyncs and writes index files; a group sync only syncs.
            let operation = if done.group {
                "fdatasync"
            } else {
                "seal segment"
            };
            let failure = StorageFailure::new(operation, source);
            poison(shared, &failure);
            let later = self.in_flight.drain(..).flat_map(|sync| sync.waiters);
            let replies = done
                .waiters
                .into_iter()
                .chain(later)
                .map(|(_, reply)| reply);
            fail_all(shared, &failure, replies);
            return;
        }
        {
            let mut state = shared.state.borrow_mut();
            assert!(
                done.log_end <= state.log_end,
                "a sync covers offsets below {} past the log end {}",
                done.log_end,
                state.log_end
            );
            if done.log_end > state.durable_end {
                state.durable_end = done.log_end;
                let active = state.segments.keys().next_back().copied();
                state.durable_position = if active == Some(done.segment_base) {
                    Some(done.position)
                } else {
                    Some(0)
                };
            }
            state.assert_offsets_ordered();
        }
        self.synced_total = done.written_total;
        self.last_sync = Instant::now();
        shared.notify_waiters();
        for (appended, reply) in done.waiters {
            let _ = reply.send(Ok(appended));
        }
    }
}

/// Queues an fdatasync of the active segment covering everything written so far.
pub(crate) fn sync_now<S: Storage>(shared: &Shared<S>, durability: &mut Durability) {
    let (writer, log_end, base, size) = {
        let state = shared.state.borrow();
        if state.poisoned.is_some() {
            return;
        }
        let Some(active) = state.segments.values().next_back() else {
            return;
        };
        (
            active.writer.clone(),
            state.log_end,
            active.base_offset,
            active.size_bytes,
        )
    };
    let sync = Box::pin(async move { writer.sync_data().await });
    durability.push(sync, log_end, base, size, Vec::new());
}

/// Closes the active segment and opens a new one when a group of `group_bytes` would
/// overflow it or it is older than `segment_ms`. The old segment is sealed in the
/// background (see the module doc). A failure poisons the log (the caller does it).
pub(crate) async fn roll_if_needed<S: Storage>(
    shared: &Rc<Shared<S>>,
    durability: &mut Durability,
    group_bytes: u64,
) -> Result<(), StorageFailure> {
    let (due, base_next, direct, interval) = {
        let state = shared.state.borrow();
        let Some(segment) = state.segments.values().next_back() else {
            unreachable!("a log always has an active segment");
        };
        let too_big = segment.size_bytes + group_bytes > state.config.segment_bytes();
        let too_old = state
            .config
            .segment_ms()
            .is_some_and(|ms| segment.created.elapsed() >= Duration::from_millis(ms));
        let full = segment.index.is_full();
        (
            segment.size_bytes > 0 && (too_big || too_old || full),
            state.offset_assign_next,
            state.config.io_mode() == IoMode::Direct,
            state.config.index_interval_bytes(),
        )
    };
    if !due {
        return Ok(());
    }
    shared.state.borrow().assert_at_rest();
    let segment = Segment::open(&shared.storage, &shared.dir, base_next, direct, interval)
        .await
        .map_err(|e| StorageFailure::new("create segment", e))?;
    shared
        .storage
        .sync_dir(&shared.dir)
        .await
        .map_err(|e| StorageFailure::new("fsync directory", e))?;
    let (seal, log_end, old_base, old_size) = {
        let mut state = shared.state.borrow_mut();
        let log_end = state.log_end;
        let Some(old) = state.segments.values_mut().next_back() else {
            unreachable!("a log always has an active segment");
        };
        // The seal trims the old segment's preallocated tail: it leaves the budget now, and
        // the new segment starts with the partition's current step (`group.rs`).
        old.allocated_bytes = old.size_bytes;
        shared.prealloc.release_all();
        let seal = seal_future(shared, old);
        let (old_base, old_size) = (old.base_offset, old.size_bytes);
        assert_eq!(
            old.offset_next, base_next,
            "a new segment starts where the old one ends"
        );
        state.segments.insert(base_next, segment);
        // Nothing of the new active segment is durable yet; the durable position of the
        // old one must not cap (or open) reads of the new one.
        state.durable_position = Some(0);
        state.assert_at_rest();
        (seal, log_end, old_base, old_size)
    };
    durability.push_kind(seal, log_end, old_base, old_size, Vec::new(), false);
    // The producer state covers exactly the batches below the new segment: nothing of the
    // group that triggered the roll has been admitted yet (see `appender.rs`).
    if let Err(error) = super::producer_snapshot::write(shared, base_next).await {
        // Only recovery time is at stake: the next open replays from an older snapshot.
        tracing::warn!(partition = %shared.id, %error, "producer snapshot at roll failed");
    }
    Ok(())
}

/// Trims a segment's preallocated bytes, fdatasyncs it and writes its index files.
fn seal_future<S: Storage>(shared: &Rc<Shared<S>>, segment: &Segment<S>) -> PendingSync {
    let writer = segment.writer.clone();
    let size = segment.size_bytes;
    let base = segment.base_offset;
    let mut index = segment.index.clone();
    // Written after the trim and the fdatasync: a recovery that finds the flag knows the
    // segment was whole and durable.
    index.mark_sealed();
    let storage = shared.storage.clone();
    let dir = shared.dir.clone();
    Box::pin(async move {
        writer.set_len(size).await?;
        writer.sync_data().await?;
        checkpoint::write_segment_index(&storage, &dir, base, &index).await
    })
}

/// Seals the active segment inline (clean close): trim, fdatasync, index files.
pub(crate) async fn seal_active<S: Storage>(
    shared: &Rc<Shared<S>>,
    durability: &mut Durability,
) -> Result<(), LogError> {
    durability.drain(shared).await;
    let seal = {
        let mut state = shared.state.borrow_mut();
        let log_end = state.log_end;
        let Some(active) = state.segments.values_mut().next_back() else {
            return Ok(());
        };
        active.allocated_bytes = active.size_bytes;
        shared.prealloc.release_all();
        let seal = seal_future(shared, active);
        (seal, log_end, active.base_offset, active.size_bytes)
    };
    durability.push_kind(seal.0, seal.1, seal.2, seal.3, Vec::new(), false);
    durability.drain(shared).await;
    match shared.state.borrow().poisoned.clone() {
        Some(failure) => Err(shared.storage_failed(&failure)),
        None => Ok(()),
    }
}
