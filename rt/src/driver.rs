//! The io_uring driver of one shard: submission, completion, and the ownership of every
//! in-flight operation's resources.
//!
//! Every submitted entry has a slot in a slab, keyed by the entry's `user_data`. The slot
//! outlives the future that asked for the operation: when that future is dropped while the
//! kernel still works on it, the future hands the operation's buffers and descriptors to
//! the slot ([`SlotState::Abandoned`]) and they are freed only when the completion arrives. No
//! memory the kernel may still read or write is ever released early.
//!
//! Submissions are batched: entries accumulate in the submission queue and go to the
//! kernel in one `io_uring_enter` when the executor runs out of work ([`Driver::park`]) or
//! the queue is full. A full queue is submitted and retried; EBUSY/EAGAIN from the kernel
//! (short of memory, or its completion backlog is full) is answered by reaping or waiting
//! for a completion and retrying, at most [`RING_ENTER_BUSY_RETRIES_MAX`] times, after
//! which the submission fails with [`DriverError::Busy`].
//!
//! Dropping the driver cancels everything in flight and waits for every completion before
//! the ring and the slots go away.
//!
//! A lost completion is fatal. The ring is set up with `IORING_FEAT_NODROP`, so a full
//! completion queue makes the kernel keep the overflow; only when it cannot allocate for it
//! does it drop a completion, count it in the queue's overflow counter and answer the next
//! `io_uring_enter` with EBADR. Either sign fails the driver ([`DriverError::CompletionsLost`]),
//! as does an `io_uring_enter` error it has no answer for: the slot whose completion was
//! lost would wait forever, and nothing tells which one it was, so no slot's memory can be
//! known to be free of the kernel. A failed driver refuses new operations, never frees an
//! abandoned operation's resources, and on drop leaks its ring and every slot
//! ([`Driver::leak_in_flight`]); the executor stops its runtime with the error.
//!
//! At most [`OPS_IN_FLIGHT_MAX`] operations are in the kernel at once (a static budget per
//! shard). A submitter that finds no room waits in a first-come line ([`Driver::poll_room`])
//! and is woken when it is first and completions have made room; one that arrives while
//! others wait queues behind them. The count covers what the kernel holds — submitted,
//! not yet completed, including abandoned operations — not completed results waiting for
//! their owner, so a task that awaits its operations out of order cannot wait on itself.
//! The executor's own eventfd read is exempt: a full shard must still hear other threads.
//!
//! A completion can carry a resource of its own: accept and openat return a new file
//! descriptor. Each slot knows whether its result is one ([`ResultKind`]), so a descriptor
//! nobody will take — the owner was dropped, or a multishot stream was dropped with
//! results still queued — is closed by the driver instead of leaking.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, OwnedFd};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use slab::Slab;

use super::error::{DriverError, RingSetupError};
use super::kernel::{check_release, check_ring, kernel_release, Features};
use crate::limits::{
    OPS_IN_FLIGHT_MAX, RING_CQ_ENTRIES_FACTOR, RING_ENTER_BUSY_RETRIES_MAX,
    RING_ENTER_BUSY_WAIT_MS, RING_SQ_ENTRIES, TEARDOWN_CANCEL_REPEAT_ROUNDS,
    TEARDOWN_WAIT_ROUND_MS,
};

/// The `user_data` of entries whose completions nobody waits for (cancellations issued on
/// behalf of dropped operations).
const USER_DATA_IGNORED: u64 = u64::MAX;

/// One completion queue entry, as the owner of an operation sees it.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Completion {
    /// A completion standing for an error that happened before the kernel saw the entry.
    pub(crate) fn from_error(error: &io::Error) -> Completion {
        let errno = error.raw_os_error().unwrap_or(libc::EIO);
        Completion {
            result: -errno,
            flags: 0,
        }
    }
}

/// What a successful completion's result is, for the driver to release what nobody takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// A count, or zero for success: nothing to release.
    Count,
    /// A new file descriptor (accept, openat), owned by whoever takes the completion; the
    /// driver closes it when nobody will.
    Fd,
}

/// One in-flight operation: its state, what its completions carry, and whether it counts
/// toward [`OPS_IN_FLIGHT_MAX`] (all but the executor's eventfd read do).
struct Slot {
    state: SlotState,
    result: ResultKind,
    counted: bool,
}

/// The state of one in-flight operation.
enum SlotState {
    /// Submitted; holds the waker of the future waiting for it, once polled.
    Waiting(Option<Waker>),
    /// The single completion arrived and waits for its owner.
    Completed(Completion),
    /// An operation with several completions (multishot accept, zero-copy send): those not
    /// yet taken by the owner, and whether the kernel has posted the last one.
    Streaming {
        waker: Option<Waker>,
        queue: VecDeque<Completion>,
        finished: bool,
    },
    /// The owner was dropped; the slot keeps its resources until the kernel is done.
    Abandoned { _resources: Option<Box<dyn Any>> },
}

/// Counters of the driver's work, for benchmarks and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverStats {
    /// Entries pushed to the submission queue.
    pub entries_submitted: u64,
    /// Completions reaped.
    pub completions_reaped: u64,
    /// `io_uring_enter` calls made.
    pub enter_calls: u64,
    /// `io_uring_enter` calls that submitted entries: `entries_submitted / submit_calls` is
    /// how many operations (of every task of the shard) share one system call.
    pub submit_calls: u64,
    /// Operations the kernel holds now, of those counted toward [`OPS_IN_FLIGHT_MAX`].
    pub ops_in_flight: u64,
    /// The most operations the kernel held at once, of those counted.
    pub ops_in_flight_peak: u64,
}

/// Submitters waiting for room in the kernel, first come first served: each has a ticket
/// number (ascending along the line), the operations it wants to push at once, and its waker.
#[derive(Default)]
struct Line {
    waiting: VecDeque<(u64, usize, Waker)>,
    ticket_next: u64,
}

impl Line {
    fn first(&self) -> Option<(u64, usize)> {
        self.waiting
            .front()
            .map(|(ticket, count, _)| (*ticket, *count))
    }

    /// Joins the line, or updates the waker of a submitter already in it.
    fn wait(&mut self, ticket: &mut Option<u64>, count: usize, waker: &Waker) {
        if let Some(number) = *ticket {
            if let Ok(index) = self.waiting.binary_search_by_key(&number, |entry| entry.0) {
                let (_, wanted, registered) = &mut self.waiting[index];
                *wanted = count;
                if !registered.will_wake(waker) {
                    registered.clone_from(waker);
                }
                return;
            }
        }
        let number = self.ticket_next;
        self.ticket_next += 1;
        self.waiting.push_back((number, count, waker.clone()));
        *ticket = Some(number);
    }

    fn leave(&mut self, ticket: u64) {
        if let Ok(index) = self.waiting.binary_search_by_key(&ticket, |entry| entry.0) {
            self.waiting.remove(index);
        }
    }
}

pub(crate) struct Driver {
    /// Dropped only if the driver did not fail; a failed driver leaks it, since the kernel
    /// may still use memory its operations point to.
    ring: ManuallyDrop<IoUring>,
    slots: Slab<Slot>,
    /// Counted operations the kernel holds: slots waiting, streaming or abandoned.
    in_kernel: usize,
    /// The bound on `in_kernel`: [`OPS_IN_FLIGHT_MAX`] (tests lower it).
    in_kernel_max: usize,
    /// Submitters waiting for room.
    line: Line,
    features: Features,
    stats: DriverStats,
    /// Set for good when the ring fails (see the module documentation).
    failed: Option<DriverError>,
    /// Whether the executor has been told of `failed` ([`Driver::take_failure`]).
    failure_reported: bool,
    #[cfg(test)]
    pub(crate) faults: Faults,
}

/// Faults tests make the driver see, for what the kernel will not do on demand. Only in
/// test builds.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// The next push fails with this errno before anything reaches the ring.
    pub(crate) push_errno: Option<i32>,
    /// The next `io_uring_enter` calls answer these errnos, in order, instead of entering.
    pub(crate) enter_errnos: VecDeque<i32>,
    /// Added to the completion queue's overflow counter: completions the kernel "dropped".
    pub(crate) completions_dropped: u32,
}

impl Driver {
    /// Sets up a ring for the calling thread. The ring is single-issuer: only this thread
    /// may submit to it.
    ///
    /// A kernel below the floor, or a ring without a feature or opcode the runtime uses, is
    /// refused here (see [`super::kernel`]), before any work starts.
    pub(crate) fn new() -> Result<Driver, RingSetupError> {
        check_release(kernel_release().as_deref())?;
        let ring = build_ring().map_err(RingSetupError::from_setup)?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(RingSetupError::from_setup)?;
        let features = check_ring(
            ring.params().is_feature_ext_arg(),
            ring.params().is_feature_nodrop(),
            |code| probe.is_supported(code),
        )?;
        Ok(Driver {
            ring: ManuallyDrop::new(ring),
            slots: Slab::with_capacity(256),
            in_kernel: 0,
            in_kernel_max: OPS_IN_FLIGHT_MAX,
            line: Line::default(),
            features,
            stats: DriverStats::default(),
            failed: None,
            failure_reported: false,
            #[cfg(test)]
            faults: Faults::default(),
        })
    }

    pub(crate) fn features(&self) -> Features {
        self.features
    }

    pub(crate) fn stats(&self) -> DriverStats {
        DriverStats {
            ops_in_flight: self.in_kernel as u64,
            ..self.stats
        }
    }

    /// Operations submitted or completed whose owners have not yet taken the result.
    pub(crate) fn slots_in_use(&self) -> usize {
        self.slots.len()
    }

    /// Whether `count` more operations may go to the kernel now, for a submitter that is
    /// not in the line: there is room, and nobody is waiting for it.
    pub(crate) fn has_room(&self, count: usize) -> bool {
        self.line.waiting.is_empty() && self.in_kernel + count <= self.in_kernel_max
    }

    /// Room for `count` more operations, for a submitter holding `ticket` (its place in
    /// the line, `None` if it has none yet). Ready when it may push now — it must push
    /// before it yields, and its ticket is used up; otherwise Pending, with the submitter
    /// in the line (taking a ticket) and `waker` woken when it is first and there is room.
    pub(crate) fn poll_room(
        &mut self,
        count: usize,
        ticket: &mut Option<u64>,
        waker: &Waker,
    ) -> Poll<()> {
        assert!(
            (1..=self.in_kernel_max).contains(&count),
            "{count} operations at once"
        );
        let first = match *ticket {
            None => self.line.waiting.is_empty(),
            Some(number) => self.line.first().is_some_and(|(first, _)| first == number),
        };
        if first && self.in_kernel + count <= self.in_kernel_max {
            if let Some(number) = ticket.take() {
                self.line.leave(number);
                // Room may be left for the next in line too.
                self.wake_first_in_line(count);
            }
            return Poll::Ready(());
        }
        self.line.wait(ticket, count, waker);
        Poll::Pending
    }

    /// A submitter in the line now wants room for `count` operations (one of a queued pair
    /// was withdrawn); it is woken if that fits and it is first.
    pub(crate) fn resize_in_line(&mut self, ticket: u64, count: usize) {
        let line = &mut self.line.waiting;
        if let Ok(index) = line.binary_search_by_key(&ticket, |entry| entry.0) {
            line[index].1 = count;
        }
        self.wake_first_in_line(0);
    }

    /// A submitter leaves the line without pushing (it was dropped or cancelled); the next
    /// one is woken if there is room for it.
    pub(crate) fn leave_line(&mut self, ticket: u64) {
        self.line.leave(ticket);
        self.wake_first_in_line(0);
    }

    /// Wakes the first in line if its operations fit beside `reserved` more (pushed by a
    /// submitter that was just let through).
    fn wake_first_in_line(&self, reserved: usize) {
        if let Some((_, count, waker)) = self.line.waiting.front() {
            if self.in_kernel + reserved + count <= self.in_kernel_max {
                waker.wake_by_ref();
            }
        }
    }

    /// Pushes one entry for a single-shot operation; returns its key. The caller made sure
    /// there is room ([`Driver::has_room`], [`Driver::poll_room`]).
    pub(crate) fn push(&mut self, entry: squeue::Entry, result: ResultKind) -> io::Result<usize> {
        self.push_linked([(entry, result)]).map(|[key]| key)
    }

    /// Pushes an entry that does not count toward the bound and needs no room: the
    /// executor's eventfd read, which must stay armed for other threads to wake a full
    /// shard.
    pub(crate) fn push_exempt(
        &mut self,
        entry: squeue::Entry,
        result: ResultKind,
    ) -> io::Result<usize> {
        self.fault_before_push()?;
        self.reserve_submission_space(1)?;
        let slot = Slot {
            state: SlotState::Waiting(None),
            result,
            counted: false,
        };
        Ok(self.push_reserved(entry, slot, false))
    }

    /// Pushes one entry for an operation with several completions; returns its key. The
    /// caller made sure there is room.
    pub(crate) fn push_streaming(
        &mut self,
        entry: squeue::Entry,
        result: ResultKind,
    ) -> io::Result<usize> {
        self.fault_before_push()?;
        self.reserve_submission_space(1)?;
        let state = SlotState::Streaming {
            waker: None,
            queue: VecDeque::new(),
            finished: false,
        };
        let slot = Slot {
            state,
            result,
            counted: true,
        };
        Ok(self.push_reserved(entry, slot, false))
    }

    /// Pushes `entries` as one linked chain (IOSQE_IO_LINK on all but the last), contiguous
    /// in the submission queue, and returns the key of each, in order. The caller made sure
    /// there is room for all of them.
    pub(crate) fn push_linked<const N: usize>(
        &mut self,
        entries: [(squeue::Entry, ResultKind); N],
    ) -> io::Result<[usize; N]> {
        const { assert!(N > 0 && N <= RING_SQ_ENTRIES as usize) };
        self.fault_before_push()?;
        self.reserve_submission_space(N)?;
        let mut keys = [0; N];
        for (position, (entry, result)) in entries.into_iter().enumerate() {
            let slot = Slot {
                state: SlotState::Waiting(None),
                result,
                counted: true,
            };
            keys[position] = self.push_reserved(entry, slot, position + 1 < N);
        }
        Ok(keys)
    }

    /// Lowers the bound on operations in the kernel, so a test can exceed it cheaply.
    #[cfg(test)]
    pub(crate) fn set_ops_in_flight_max_for_test(&mut self, max: usize) {
        assert!(max >= 2, "a linked pair needs two");
        self.in_kernel_max = max;
    }

    /// Submits what is queued without reaping, so a test can drop an operation whose
    /// completion is posted but not yet seen.
    #[cfg(test)]
    pub(crate) fn submit_only_for_test(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Whether the driver has failed (see the module documentation).
    #[cfg(test)]
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Fails a push as a test asked (see [`Faults`]).
    #[cfg(test)]
    fn fault_before_push(&mut self) -> io::Result<()> {
        match self.faults.push_errno.take() {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    #[allow(
        clippy::unused_self,
        clippy::unnecessary_wraps,
        reason = "the test build's hook"
    )]
    fn fault_before_push(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn push_reserved(&mut self, entry: squeue::Entry, slot: Slot, link: bool) -> usize {
        if slot.counted {
            assert!(
                self.in_kernel < self.in_kernel_max,
                "pushed past OPS_IN_FLIGHT_MAX"
            );
            self.in_kernel += 1;
            self.stats.ops_in_flight_peak =
                self.stats.ops_in_flight_peak.max(self.in_kernel as u64);
        }
        let key = self.slots.insert(slot);
        let mut entry = entry.user_data(key as u64);
        if link {
            entry = entry.flags(squeue::Flags::IO_LINK);
        }
        // SAFETY: every pointer in the entry refers to heap memory owned by the operation's
        // data, which its owner keeps alive until the completion for `key` is reaped, hands
        // to this slot, or leaks (away from its runtime, or after a ring failure); the
        // caller reserved room in the queue.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        assert!(
            pushed.is_ok(),
            "submission queue full after reserving space"
        );
        self.stats.entries_submitted += 1;
        key
    }

    /// Makes room for `count` entries, submitting what is queued if needed.
    /// Makes room for `count` entries, submitting what is queued if needed. Refuses once
    /// the driver has failed.
    fn reserve_submission_space(&mut self, count: usize) -> io::Result<()> {
        let refused = |error: &DriverError| io::Error::from_raw_os_error(error.errno());
        if let Some(error) = &self.failed {
            return Err(refused(error));
        }
        loop {
            let free = {
                let queue = self.ring.submission();
                queue.capacity() - queue.len()
            };
            if free >= count {
                return Ok(());
            }
            self.enter(0, None).map_err(|error| refused(&error))?;
        }
    }

    /// Submits queued entries and reaps completions without waiting.
    pub(crate) fn submit_and_reap(&mut self) -> Result<usize, DriverError> {
        self.enter(0, None)?;
        Ok(self.reap())
    }

    /// Submits queued entries and waits until at least one completion arrives or `timeout`
    /// passes; then reaps. Returns the number of completions reaped.
    pub(crate) fn park(&mut self, timeout: Option<Duration>) -> Result<usize, DriverError> {
        if self.ring.completion().is_empty() {
            self.enter(1, timeout)?;
        }
        Ok(self.reap())
    }

    /// Submits what is queued and waits for `want` completions (up to `timeout`).
    ///
    /// EINTR is retried and ETIME (the wait timed out) is no error. EBUSY/EAGAIN mean the
    /// kernel cannot take the entries now: the driver reaps, or if there is nothing to
    /// reap waits for one completion (at most [`RING_ENTER_BUSY_WAIT_MS`]), and retries,
    /// up to [`RING_ENTER_BUSY_RETRIES_MAX`] times before answering
    /// [`DriverError::Busy`]. EBADR (completions were dropped) and any other error fail
    /// the driver.
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> Result<(), DriverError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let busy_wait = Duration::from_millis(RING_ENTER_BUSY_WAIT_MS);
        let mut busy_answers = 0;
        let mut waiting_out_busy = false;
        loop {
            let (want_now, timeout_now) = if waiting_out_busy {
                (
                    want.max(1),
                    Some(timeout.map_or(busy_wait, |t| t.min(busy_wait))),
                )
            } else {
                (want, timeout)
            };
            let Err(errno) = self.enter_once(want_now, timeout_now) else {
                return Ok(());
            };
            match errno {
                libc::EINTR => {}
                // The caller's own wait timed out, or a wait for room found everything
                // submitted (ETIME is only answered when nothing was).
                libc::ETIME if !waiting_out_busy || self.ring.submission().is_empty() => {
                    return Ok(());
                }
                libc::ETIME | libc::EBUSY | libc::EAGAIN => {
                    busy_answers += 1;
                    if busy_answers > RING_ENTER_BUSY_RETRIES_MAX {
                        return Err(DriverError::Busy {
                            retries: RING_ENTER_BUSY_RETRIES_MAX,
                        });
                    }
                    waiting_out_busy = self.reap() == 0;
                }
                libc::EBADR => {
                    let count = self.completions_dropped().max(1);
                    return Err(self.fail(DriverError::CompletionsLost { count }));
                }
                _ => {
                    let source = std::sync::Arc::new(io::Error::from_raw_os_error(errno));
                    return Err(self.fail(DriverError::Enter { source }));
                }
            }
        }
    }

    /// One `io_uring_enter`; the errno if it failed.
    fn enter_once(&mut self, want: usize, timeout: Option<Duration>) -> Result<(), i32> {
        // Nothing to submit, nothing to wait for: the completions are read from the shared
        // queue without the kernel, unless it holds some back: completions overflowed, or
        // finished operations whose completion work is deferred to this thread (the ring is
        // set up with DEFER_TASKRUN: the kernel raises TASKRUN and posts them only in an
        // enter that asks for events, which `submit_and_wait` then does).
        let (queued, held_back) = {
            let submission = self.ring.submission();
            let held_back = submission.cq_overflow() || submission.taskrun();
            (submission.len(), held_back)
        };
        #[cfg(test)]
        if let Some(errno) = self.faults.enter_errnos.pop_front() {
            self.stats.enter_calls += 1;
            return Err(errno);
        }
        if queued == 0 && want == 0 && !held_back {
            return Ok(());
        }
        self.stats.enter_calls += 1;
        let result = match timeout {
            Some(timeout) if want > 0 => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(want, &args)
            }
            _ => self.ring.submitter().submit_and_wait(want),
        };
        if result.is_ok() && queued > 0 {
            self.stats.submit_calls += 1;
        }
        result
            .map(drop)
            .map_err(|error| error.raw_os_error().unwrap_or(libc::EIO))
    }

    /// Takes every completion off the queue and hands it to its slot, waking the owner;
    /// then fails the driver if the kernel reports completions it dropped.
    fn reap(&mut self) -> usize {
        let mut reaped = 0;
        loop {
            let Some(entry) = self.ring.completion().next() else {
                break;
            };
            reaped += 1;
            self.complete(&entry);
        }
        self.stats.completions_reaped += reaped as u64;
        if reaped > 0 {
            self.wake_first_in_line(0);
        }
        let dropped = self.completions_dropped();
        if dropped > 0 && self.failed.is_none() {
            self.fail(DriverError::CompletionsLost { count: dropped });
        }
        reaped
    }

    /// Completions the kernel dropped since the ring was set up (the completion queue's
    /// overflow counter, which under `IORING_FEAT_NODROP` counts only dropped ones).
    fn completions_dropped(&mut self) -> u32 {
        let dropped = self.ring.completion().overflow();
        #[cfg(test)]
        let dropped = dropped.saturating_add(self.faults.completions_dropped);
        dropped
    }

    /// Fails the driver for good with `error` (the first failure is the one kept); returns
    /// it for the caller to pass on.
    fn fail(&mut self, error: DriverError) -> DriverError {
        debug_assert!(error.is_fatal());
        if self.failed.is_none() {
            self.failed = Some(error.clone());
        }
        error
    }

    /// The failure the executor has not been told of yet, once.
    pub(crate) fn take_failure(&mut self) -> Option<DriverError> {
        if self.failure_reported {
            return None;
        }
        let failure = self.failed.clone()?;
        self.failure_reported = true;
        Some(failure)
    }

    /// Keeps the ring and every slot's resources forever. For a failed driver: the kernel
    /// may still read or write memory the slots own and will never say when it stopped,
    /// so freeing any of it could hand the kernel memory that is reused.
    fn leak_in_flight(&mut self) {
        let slots = std::mem::take(&mut self.slots);
        tracing::error!(
            operations = slots.len(),
            "the ring failed: leaking it and the memory of its operations in flight"
        );
        std::mem::forget(slots);
    }

    fn complete(&mut self, entry: &cqueue::Entry) {
        if entry.user_data() == USER_DATA_IGNORED {
            return;
        }
        let key = entry.user_data() as usize;
        let completion = Completion {
            result: entry.result(),
            flags: entry.flags(),
        };
        let more = cqueue::more(completion.flags);
        let Some(Slot {
            state,
            result,
            counted,
        }) = self.slots.get_mut(key)
        else {
            unreachable!("completion for unknown slot {key}");
        };
        let left_kernel = *counted && !more;
        match state {
            SlotState::Waiting(waker) => {
                let waker = waker.take();
                *state = SlotState::Completed(completion);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            SlotState::Streaming {
                waker,
                queue,
                finished,
            } => {
                queue.push_back(completion);
                *finished = !more;
                if let Some(waker) = waker.take() {
                    waker.wake();
                }
            }
            SlotState::Abandoned { .. } => {
                discard(completion, *result);
                if !more {
                    // The kernel is done with the resources: free them now.
                    drop(self.slots.remove(key));
                }
            }
            SlotState::Completed(_) => {
                unreachable!("second completion for single-shot slot {key}")
            }
        }
        if left_kernel {
            assert!(
                self.in_kernel > 0,
                "more completions than operations counted"
            );
            self.in_kernel -= 1;
        }
    }

    /// Polls a single-shot operation.
    pub(crate) fn poll_completion(&mut self, key: usize, cx: &mut Context<'_>) -> Poll<Completion> {
        match &mut self.slots[key].state {
            SlotState::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            SlotState::Completed(completion) => {
                let completion = *completion;
                self.slots.remove(key);
                Poll::Ready(completion)
            }
            SlotState::Streaming { .. } | SlotState::Abandoned { .. } => {
                unreachable!("slot {key} misused")
            }
        }
    }

    /// Polls an operation with several completions: `Some` for the next one, `None` after
    /// the last (the slot is then released).
    pub(crate) fn poll_stream(
        &mut self,
        key: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Completion>> {
        let SlotState::Streaming {
            waker,
            queue,
            finished,
        } = &mut self.slots[key].state
        else {
            unreachable!("slot {key} is not streaming");
        };
        if let Some(completion) = queue.pop_front() {
            return Poll::Ready(Some(completion));
        }
        if *finished {
            self.slots.remove(key);
            return Poll::Ready(None);
        }
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The owner of `key` is gone. Completions it never took are discarded (closing the
    /// descriptors they carry). If the kernel is done, the slot and `resources` are freed
    /// now; otherwise the slot keeps `resources` until the last completion, and a
    /// cancellation is requested when `cancel` is set.
    ///
    /// On a failed driver the slot is left as it is and `resources` are leaked: its
    /// completion may never come, and the kernel may still use them.
    pub(crate) fn abandon(&mut self, key: usize, resources: Option<Box<dyn Any>>, cancel: bool) {
        if self.failed.is_some() {
            std::mem::forget(resources);
            return;
        }
        let Slot { state, result, .. } = &mut self.slots[key];
        let done = match state {
            SlotState::Completed(completion) => {
                discard(*completion, *result);
                true
            }
            SlotState::Streaming {
                queue, finished, ..
            } => {
                for completion in queue.drain(..) {
                    discard(completion, *result);
                }
                *finished
            }
            SlotState::Waiting(_) => false,
            SlotState::Abandoned { .. } => unreachable!("slot {key} abandoned twice"),
        };
        if done {
            drop(self.slots.remove(key));
            return;
        }
        *state = SlotState::Abandoned {
            _resources: resources,
        };
        if cancel {
            let entry = opcode::AsyncCancel::new(key as u64)
                .build()
                .user_data(USER_DATA_IGNORED);
            if self.reserve_submission_space(1).is_ok() {
                // SAFETY: a cancellation carries no pointers.
                let pushed = unsafe { self.ring.submission().push(&entry) };
                debug_assert!(pushed.is_ok());
            }
        }
    }

    /// Discards the completions that arrived for owners that never took them (operations
    /// kept past their runtime), closing the descriptors they carry.
    fn discard_unclaimed(&mut self) {
        for (_, Slot { state, result, .. }) in &mut self.slots {
            match state {
                SlotState::Completed(completion) => discard(*completion, *result),
                SlotState::Streaming { queue, .. } => {
                    for completion in queue.drain(..) {
                        discard(completion, *result);
                    }
                }
                SlotState::Waiting(_) | SlotState::Abandoned { .. } => {}
            }
        }
    }

    /// Cancels every operation in flight and waits for all their completions, so no
    /// resource the kernel uses is freed with the driver. Woken owners see ECANCELED. A
    /// failed driver (already, or while waiting) waits for nothing: its completions may
    /// never come.
    pub(crate) fn cancel_all_and_wait(&mut self) {
        let pending = |slots: &Slab<Slot>| {
            slots.iter().any(|(_, slot)| match &slot.state {
                SlotState::Waiting(_) | SlotState::Abandoned { .. } => true,
                SlotState::Streaming { finished, .. } => !finished,
                SlotState::Completed(_) => false,
            })
        };
        let cancel_any = opcode::AsyncCancel2::new(types::CancelBuilder::any().all())
            .build()
            .user_data(USER_DATA_IGNORED);
        let round = Duration::from_millis(TEARDOWN_WAIT_ROUND_MS);
        let mut rounds = 0u32;
        while self.failed.is_none() && pending(&self.slots) {
            if rounds % TEARDOWN_CANCEL_REPEAT_ROUNDS == 0
                && self.reserve_submission_space(1).is_ok()
            {
                // SAFETY: a cancellation carries no pointers.
                let _ = unsafe { self.ring.submission().push(&cancel_any) };
            }
            rounds = rounds.wrapping_add(1);
            if let Err(error) = self.park(Some(round)) {
                tracing::warn!(%error, "waiting for cancelled operations at shutdown");
            }
        }
    }

    /// Pushes a fire-and-forget entry (no slot). Only for entries that carry no pointers.
    pub(crate) fn push_untracked(&mut self, entry: squeue::Entry) -> io::Result<()> {
        self.reserve_submission_space(1)?;
        let entry = entry.user_data(USER_DATA_IGNORED);
        // SAFETY: callers pass only entries without pointers into user memory.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok());
        Ok(())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.cancel_all_and_wait();
        self.discard_unclaimed();
        if self.failed.is_some() {
            self.leak_in_flight();
            return;
        }
        // SAFETY: `ring` is dropped only here, once. The driver has not failed, so the wait
        // above ended because every operation's last completion arrived: the kernel holds
        // no pointer into memory the slots own when the ring goes.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}

/// Releases what a completion nobody will take carries: the descriptor of a successful
/// accept or openat is closed.
fn discard(completion: Completion, result: ResultKind) {
    if result == ResultKind::Fd && completion.result >= 0 {
        // SAFETY: the kernel created this descriptor for the operation and reported it only
        // in this completion, which nobody took: nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(completion.result) });
    }
}

/// Builds the ring with the flags that suit one thread owning it, falling back for older
/// kernels: single issuer and deferred task work (6.1), cooperative task work (5.19, the
/// floor), and no flags should a kernel past the floor still refuse those.
fn build_ring() -> io::Result<IoUring> {
    let cq_entries = RING_SQ_ENTRIES * RING_CQ_ENTRIES_FACTOR;
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        },
        |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        },
        |_| {},
    ];
    let mut last_error = None;
    for configure in attempts {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq_entries).setup_clamp();
        configure(&mut builder);
        match builder.build(RING_SQ_ENTRIES) {
            Ok(ring) => return Ok(ring),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}
