//! An in-flight operation as a future, and the pieces that build one.
//!
//! An operation is its data (buffers, descriptors, addresses: everything the kernel will
//! touch, all on the heap) and a submission entry pointing into that data. [`Prepared`]
//! holds both before submission; [`Op`] after. When an `Op` is dropped before its
//! completion, its data moves into the driver's slot and lives until the kernel is done
//! with it, and a cancellation is requested.
//!
//! [`link`] submits two prepared operations as one chain (`IOSQE_IO_LINK`): the second
//! starts only after the first succeeds in full, and fails with ECANCELED otherwise — how a
//! write and the fdatasync that makes it durable go to the kernel in one submission.
//!
//! When the shard already has [`OPS_IN_FLIGHT_MAX`](crate::limits::OPS_IN_FLIGHT_MAX)
//! operations in the kernel, a submitted operation is queued instead ([`State::Queued`]):
//! it keeps its entry and data, and is pushed when it is awaited, first in the driver's
//! line, and completions have made room. The two operations of a linked pair share one
//! queued [`Chain`] and go to the kernel together, pushed by whichever is awaited first.
//!
//! An operation belongs to the runtime that submitted it. It is `!Send`, records that
//! runtime's id, and refuses any other: polling panics, dropping leaks the data (see
//! [`Op`]).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, squeue, types};

use super::context;
use super::driver::{Completion, Driver, ResultKind};
use super::error::cqe_result;

/// What an operation does with its completion: turn the data and the kernel's result into
/// the operation's output (typically the result plus the buffers, handed back).
pub trait Operation: Unpin + 'static {
    type Output;
    /// What a successful completion's result is; [`ResultKind::Fd`] makes the driver close
    /// the descriptor if the operation is dropped before it takes it.
    const RESULT: ResultKind = ResultKind::Count;
    fn complete(self, completion: Completion) -> Self::Output;
}

/// An operation ready to submit: its data and the entry that points into it.
pub struct Prepared<T> {
    data: T,
    entry: squeue::Entry,
}

impl<T: Operation> Prepared<T> {
    /// Builds the entry from the data. The entry may point only at heap memory owned by
    /// `data`, which does not move when `data` does.
    pub(crate) fn new(mut data: T, entry: impl FnOnce(&mut T) -> squeue::Entry) -> Prepared<T> {
        let entry = entry(&mut data);
        Prepared { data, entry }
    }

    /// Fails the operation without submitting it: awaiting the result yields `errno` and
    /// hands the data back.
    pub(crate) fn fail(self, errno: i32) -> Op<T> {
        Op::failed(self.data, errno)
    }

    /// Pushes the operation now, or hands its data back with the error if the push fails
    /// (for data that must not be dropped with a failed operation, such as a descriptor to
    /// close). The caller made sure there is room ([`wait_for_room`]).
    pub(crate) fn try_submit(self) -> Result<Op<T>, (io::Error, T)> {
        match context::with(|ctx| ctx.driver.borrow_mut().push(self.entry, T::RESULT)) {
            Ok(key) => Ok(Op::new(State::Submitted(key), self.data)),
            Err(error) => Err((error, self.data)),
        }
    }

    /// Pushes the operation now, outside the bound on operations in flight: only for the
    /// executor's eventfd read, which must always be armed.
    pub(crate) fn submit_exempt(self) -> Op<T> {
        let pushed =
            context::with(|ctx| ctx.driver.borrow_mut().push_exempt(self.entry, T::RESULT));
        let state = match pushed {
            Ok(key) => State::Submitted(key),
            Err(error) => State::Failed(Completion::from_error(&error)),
        };
        Op::new(state, self.data)
    }

    /// Submits the operation: it goes to the kernel with the next batch, or, if the shard
    /// has [`OPS_IN_FLIGHT_MAX`](crate::limits::OPS_IN_FLIGHT_MAX) operations there
    /// already, when awaiting it finds room.
    pub fn submit(self) -> Op<T> {
        let [state, _] = submit_chain(Chain::new([Some((self.entry, T::RESULT)), None], None));
        Op::new(state, self.data)
    }

    /// Submits the operation with a deadline: if it has not completed after `timeout`,
    /// the kernel cancels it and it completes with ECANCELED.
    pub fn submit_with_timeout(self, timeout: Duration) -> Op<T> {
        let timespec = Box::new(types::Timespec::from(timeout));
        let deadline = opcode::LinkTimeout::new(&raw const *timespec).build();
        // Nobody awaits the timer's own completion: once pushed, its slot keeps the timespec
        // alive until the kernel posts it.
        let chain = Chain::new(
            [
                Some((self.entry, T::RESULT)),
                Some((deadline, ResultKind::Count)),
            ],
            Some(timespec),
        );
        let [state, _] = submit_chain(chain);
        Op::new(state, self.data)
    }
}

/// Where an operation stands.
enum State {
    /// Waiting for room in the kernel: its entry is in `chain` (shared with the other
    /// operation of a linked pair) at `position`.
    Queued {
        chain: Rc<RefCell<Chain>>,
        position: usize,
    },
    /// In the ring under this slot key.
    Submitted(usize),
    /// Failed before the kernel saw it.
    Failed(Completion),
    /// The output was taken.
    Done,
}

impl State {
    fn from_outcome(outcome: Outcome) -> State {
        match outcome {
            Outcome::Pushed(key) => State::Submitted(key),
            Outcome::Failed(completion) => State::Failed(completion),
        }
    }
}

/// What became of a queued position.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Pushed(usize),
    Failed(Completion),
}

/// Entries that go to the ring together — one operation's, or the two of a linked pair —
/// while they wait for room there. Whichever operation of the chain is polled first pushes
/// every entry still wanted, in order, and records each position's outcome for its
/// operation to take. A pair's second entry runs only after its first: if the first
/// operation is dropped before the push, the second fails with ECANCELED, as the kernel
/// fails the rest of a broken chain.
pub(crate) struct Chain {
    /// Entries not pushed yet, with what their results are; `None` once pushed or withdrawn.
    entries: [Option<(squeue::Entry, ResultKind)>; 2],
    /// The data of a second position no operation awaits (a deadline's timespec), handed
    /// to its slot once pushed.
    detached: Option<Box<dyn Any>>,
    /// What became of each position, until its operation takes it.
    outcomes: [Option<Outcome>; 2],
    /// The chain's place in the driver's line of submitters waiting for room.
    ticket: Option<u64>,
}

impl Chain {
    fn new(
        entries: [Option<(squeue::Entry, ResultKind)>; 2],
        detached: Option<Box<dyn Any>>,
    ) -> Chain {
        debug_assert!(entries[0].is_some() && (detached.is_none() || entries[1].is_some()));
        Chain {
            entries,
            detached,
            outcomes: [None, None],
            ticket: None,
        }
    }

    fn count(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// Pushes the entries still wanted (the caller found room for them) and records each
    /// position's outcome.
    fn push(&mut self, driver: &mut Driver) {
        match (self.entries[0].take(), self.entries[1].take()) {
            (Some(first), Some(second)) => match driver.push_linked([first, second]) {
                Ok([key_first, key_second]) => {
                    self.outcomes[0] = Some(Outcome::Pushed(key_first));
                    match self.detached.take() {
                        Some(detached) => driver.abandon(key_second, Some(detached), false),
                        None => self.outcomes[1] = Some(Outcome::Pushed(key_second)),
                    }
                }
                Err(error) => {
                    let failed = Outcome::Failed(Completion::from_error(&error));
                    self.outcomes = [Some(failed), Some(failed)];
                }
            },
            (Some(only), None) => {
                self.outcomes[0] = Some(match driver.push(only.0, only.1) {
                    Ok(key) => Outcome::Pushed(key),
                    Err(error) => Outcome::Failed(Completion::from_error(&error)),
                });
            }
            (None, _) => unreachable!("a chain without its first entry was pushed"),
        }
    }

    /// The outcome of `position` once the chain is pushed, pushing it if there is room;
    /// otherwise Pending, with the chain in the driver's line.
    fn poll_push(&mut self, position: usize, driver: &mut Driver, waker: &Waker) -> Poll<Outcome> {
        if let Some(outcome) = self.outcomes[position].take() {
            return Poll::Ready(outcome);
        }
        debug_assert!(
            self.entries[position].is_some(),
            "queued position {position} lost"
        );
        if driver
            .poll_room(self.count(), &mut self.ticket, waker)
            .is_pending()
        {
            return Poll::Pending;
        }
        self.push(driver);
        match self.outcomes[position].take() {
            Some(outcome) => Poll::Ready(outcome),
            None => unreachable!("position {position} pushed without an outcome"),
        }
    }

    /// The operation at `position` no longer wants to be pushed (dropped, or cancelled
    /// while queued). Returns its outcome if the chain was pushed already. Leaves the line
    /// once nothing is left to push.
    fn withdraw(&mut self, position: usize, driver: &mut Driver) -> Option<Outcome> {
        if let Some(outcome) = self.outcomes[position].take() {
            return Some(outcome);
        }
        self.entries[position] = None;
        if position == 0 && self.entries[1].take().is_some() {
            // The first never ran, so the second must not: it fails as in a broken chain.
            // A detached deadline never reached the kernel and goes with it.
            self.detached = None;
            let cancelled = io::Error::from_raw_os_error(libc::ECANCELED);
            self.outcomes[1] = Some(Outcome::Failed(Completion::from_error(&cancelled)));
        }
        match (self.ticket, self.count()) {
            (Some(ticket), 0) => {
                self.ticket = None;
                driver.leave_line(ticket);
            }
            (Some(ticket), count) => driver.resize_in_line(ticket, count),
            (None, _) => {}
        }
        None
    }
}

/// Pushes `chain` now if the kernel has room for it and nobody waits for room; otherwise
/// queues it, shared by the operations of its positions. Returns each position's state.
fn submit_chain(mut chain: Chain) -> [State; 2] {
    context::with(|ctx| {
        let mut driver = ctx.driver.borrow_mut();
        if driver.has_room(chain.count()) {
            chain.push(&mut driver);
            return chain
                .outcomes
                .map(|outcome| outcome.map_or(State::Done, State::from_outcome));
        }
        let chain = Rc::new(RefCell::new(chain));
        [0, 1].map(|position| State::Queued {
            chain: chain.clone(),
            position,
        })
    })
}

/// A submitted operation; awaiting it yields the operation's output.
///
/// An operation belongs to the runtime that submitted it: its slot is in that runtime's
/// ring, and the kernel may hold pointers into its data. So it is `!Send`, and polling it
/// on another runtime of the same thread (kept across two [`block_on`](crate::block_on)
/// calls) panics; dropping it there leaks its data rather than free memory the kernel may
/// still use or touch the other runtime's slots.
///
/// While the shard has [`OPS_IN_FLIGHT_MAX`](crate::limits::OPS_IN_FLIGHT_MAX) operations
/// in the kernel, a new one waits for room when it is awaited (first come, first served).
///
/// ```compile_fail,E0277
/// fn require_send<T: Send>(_: &T) {}
/// let _ = ringlog_rt::block_on(async {
///     let op = ringlog_rt::nop();
///     require_send(&op);
///     op.await
/// });
/// ```
#[must_use = "an operation is submitted (or queued for room) already; await it to learn its result"]
pub struct Op<T: Operation> {
    state: State,
    data: Option<T>,
    /// The id of the runtime whose ring holds (or will hold) the operation.
    owner: usize,
    /// `cancel` was called while the operation was queued; the next poll acts on it.
    cancel_requested: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Operation> Op<T> {
    fn new(state: State, data: T) -> Op<T> {
        Op {
            state,
            data: Some(data),
            owner: context::current_id(),
            cancel_requested: Cell::new(false),
            _not_send: PhantomData,
        }
    }

    /// An operation that failed before submission with `errno`; awaiting it yields that
    /// error and hands the data back.
    pub(crate) fn failed(data: T, errno: i32) -> Op<T> {
        let error = io::Error::from_raw_os_error(errno);
        Op::new(State::Failed(Completion::from_error(&error)), data)
    }

    /// Asks the kernel to cancel the operation; it then completes with ECANCELED (or with
    /// its result, if it finished first). One still waiting for room completes with
    /// ECANCELED without reaching the kernel.
    pub fn cancel(&self) {
        match &self.state {
            State::Submitted(key) => {
                context::assert_current(self.owner, "an operation");
                cancel_in_kernel(*key);
            }
            State::Queued { .. } => {
                context::assert_current(self.owner, "an operation");
                self.cancel_requested.set(true);
            }
            State::Failed(_) | State::Done => {}
        }
    }

    /// Moves a queued operation on: pushed (or failed) once there is room, or withdrawn if
    /// it was cancelled meanwhile. Pending while it waits for room.
    fn poll_queued(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let State::Queued { chain, position } = &self.state else {
            return Poll::Ready(());
        };
        let cancelled = self.cancel_requested.get();
        let outcome = context::with(|ctx| {
            let mut driver = ctx.driver.borrow_mut();
            let mut chain = chain.borrow_mut();
            if cancelled {
                let cancelled = io::Error::from_raw_os_error(libc::ECANCELED);
                let outcome = chain.withdraw(*position, &mut driver);
                Poll::Ready(outcome.unwrap_or(Outcome::Failed(Completion::from_error(&cancelled))))
            } else {
                chain.poll_push(*position, &mut driver, cx.waker())
            }
        });
        let Poll::Ready(outcome) = outcome else {
            return Poll::Pending;
        };
        self.state = State::from_outcome(outcome);
        if let (true, State::Submitted(key)) = (cancelled, &self.state) {
            // The other operation of its chain pushed it before the cancellation was seen.
            cancel_in_kernel(*key);
        }
        Poll::Ready(())
    }
}

/// Asks the kernel to cancel the operation in slot `key` of the current runtime.
fn cancel_in_kernel(key: usize) {
    let entry = opcode::AsyncCancel::new(key as u64).build();
    context::with(|ctx| {
        // Only fails if the ring is unusable, when the operation cannot be cancelled
        // anyway; its completion still arrives.
        let _ = ctx.driver.borrow_mut().push_untracked(entry);
    });
}

impl<T: Operation> Future for Op<T> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<T::Output> {
        let this = self.get_mut();
        // Before anything changes: a refused operation must still own its slot (and data)
        // when it is dropped, so the drop leaks rather than frees.
        if let State::Submitted(_) | State::Queued { .. } = this.state {
            context::assert_current(this.owner, "an operation");
        }
        if this.poll_queued(cx).is_pending() {
            return Poll::Pending;
        }
        let completion = match std::mem::replace(&mut this.state, State::Done) {
            State::Failed(completion) => completion,
            State::Submitted(key) => {
                match context::with(|ctx| ctx.driver.borrow_mut().poll_completion(key, cx)) {
                    Poll::Ready(completion) => completion,
                    Poll::Pending => {
                        this.state = State::Submitted(key);
                        return Poll::Pending;
                    }
                }
            }
            State::Done => unreachable!("operation polled after completion"),
            State::Queued { .. } => unreachable!("queued operation moved on above"),
        };
        let Some(data) = this.data.take() else {
            unreachable!("operation data taken twice")
        };
        Poll::Ready(data.complete(completion))
    }
}

impl<T: Operation> Drop for Op<T> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Submitted(key) => abandon(self.owner, key, self.data.take()),
            State::Queued { chain, position } => {
                if !context::is_current(self.owner) {
                    // The other operation of its chain may have pushed this one while the
                    // owner ran, so the kernel may have seen the data: leak it, as
                    // `abandon` does.
                    std::mem::forget(self.data.take());
                    return;
                }
                let outcome = context::try_with(|ctx| {
                    let mut driver = ctx.driver.borrow_mut();
                    chain.borrow_mut().withdraw(position, &mut driver)
                });
                match outcome {
                    // The other operation of the chain pushed this one meanwhile.
                    Some(Some(Outcome::Pushed(key))) => abandon(self.owner, key, self.data.take()),
                    // Never reached the kernel: the data goes with the operation.
                    Some(Some(Outcome::Failed(_)) | None) => {}
                    // No runtime to ask (the thread is exiting): keep the data forever.
                    None => std::mem::forget(self.data.take()),
                }
            }
            State::Failed(_) | State::Done => {}
        }
    }
}

/// Hands the data of an operation dropped before its completion to its slot, which frees
/// it when the kernel is done. Away from the owning runtime (it has ended, or this is
/// another one) nothing can tell whether the kernel is done, so the data is leaked: never
/// freed while the kernel might use it, and the current runtime's slots are not touched.
fn abandon<D: 'static>(owner: usize, key: usize, data: Option<D>) {
    if !context::is_current(owner) {
        std::mem::forget(data);
        return;
    }
    let data = data.map(|data| Box::new(data) as Box<dyn Any>);
    let abandoned = context::try_with(|ctx| ctx.driver.borrow_mut().abandon(key, data, true));
    debug_assert!(abandoned.is_some(), "the owning runtime is current");
}

/// Waits until the current runtime has room for `count` more operations in the kernel and
/// this caller is first in line; the caller must push them before it next yields. For
/// submitters that cannot be queued as an [`Op`] (a multishot accept, a close that owns its
/// descriptor until pushed).
pub(crate) struct RoomWait {
    count: usize,
    owner: usize,
    ticket: Option<u64>,
}

impl RoomWait {
    pub(crate) fn new(count: usize) -> RoomWait {
        RoomWait {
            count,
            owner: context::current_id(),
            ticket: None,
        }
    }
}

impl Future for RoomWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        context::assert_current(this.owner, "a wait for room");
        context::with(|ctx| {
            let mut driver = ctx.driver.borrow_mut();
            driver.poll_room(this.count, &mut this.ticket, cx.waker())
        })
    }
}

impl Drop for RoomWait {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            if context::is_current(self.owner) {
                context::try_with(|ctx| ctx.driver.borrow_mut().leave_line(ticket));
            }
        }
    }
}

/// Waits for room for one more operation in the kernel (see [`RoomWait`]).
pub(crate) fn wait_for_room() -> RoomWait {
    RoomWait::new(1)
}

/// The future of two linked operations: both outputs, once both completed.
pub type Link<A, B> = futures::future::Join<Op<A>, Op<B>>;

/// Submits `first` and `second` as one linked chain; completes when both have.
///
/// If `first` fails or transfers fewer bytes than asked, `second` is not run and
/// completes with ECANCELED.
pub fn link<A: Operation, B: Operation>(first: Prepared<A>, second: Prepared<B>) -> Link<A, B> {
    let (op_first, op_second) = link_split(first, second);
    futures::future::join(op_first, op_second)
}

/// Submits `first` and `second` as one linked chain, like [`link`], but returns the two
/// operations apart: a caller can go on when the first completes while the second (an
/// fdatasync after a write, say) is still in flight. If the shard has no room for both,
/// the pair waits for it together, pushed by whichever is awaited first.
pub fn link_split<A: Operation, B: Operation>(
    first: Prepared<A>,
    second: Prepared<B>,
) -> (Op<A>, Op<B>) {
    let chain = Chain::new(
        [
            Some((first.entry, A::RESULT)),
            Some((second.entry, B::RESULT)),
        ],
        None,
    );
    let [state_first, state_second] = submit_chain(chain);
    (
        Op::new(state_first, first.data),
        Op::new(state_second, second.data),
    )
}

/// An operation that does nothing: measures the cost of the runtime itself.
pub struct Nop;

impl Operation for Nop {
    type Output = io::Result<()>;
    fn complete(self, completion: Completion) -> io::Result<()> {
        cqe_result(completion.result).map(drop)
    }
}

/// Submits a no-op.
pub fn nop() -> Op<Nop> {
    Prepared::new(Nop, |_| opcode::Nop::new().build()).submit()
}

/// A kernel timer (`IORING_OP_TIMEOUT`).
pub struct KernelTimer {
    timespec: Box<types::Timespec>,
}

impl Operation for KernelTimer {
    type Output = io::Result<()>;
    fn complete(self, completion: Completion) -> io::Result<()> {
        drop(self.timespec);
        match cqe_result(completion.result) {
            Err(error) if error.raw_os_error() == Some(libc::ETIME) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// Completes after `duration`, timed by the kernel. [`super::time::sleep`] is cheaper for
/// many timers; this is for tests and for chaining a delay into the ring.
pub fn kernel_timer(duration: Duration) -> Op<KernelTimer> {
    let data = KernelTimer {
        timespec: Box::new(types::Timespec::from(duration)),
    };
    Prepared::new(data, |data| {
        opcode::Timeout::new(&raw const *data.timespec).build()
    })
    .submit()
}

/// An operation with several completions (multishot accept, zero-copy send). Its data
/// stays with it until the kernel posts the last completion; dropping it early cancels the
/// operation and hands the data to the driver's slot. Like [`Op`], it is `!Send` and
/// refuses any runtime but the one that submitted it.
pub struct MultiOp<D: 'static> {
    key: Option<usize>,
    data: Option<D>,
    owner: usize,
    _not_send: PhantomData<*const ()>,
}

impl<D: 'static> MultiOp<D> {
    /// Submits the entry built from `data`, whose completions' results are `result`s; a
    /// failed push hands the data back with the error. The caller made sure there is room
    /// ([`RoomWait`], [`Driver::has_room`]).
    pub(crate) fn submit(
        mut data: D,
        result: ResultKind,
        entry: impl FnOnce(&mut D) -> squeue::Entry,
    ) -> Result<MultiOp<D>, (io::Error, D)> {
        let entry = entry(&mut data);
        match context::with(|ctx| ctx.driver.borrow_mut().push_streaming(entry, result)) {
            Ok(key) => Ok(MultiOp {
                key: Some(key),
                data: Some(data),
                owner: context::current_id(),
                _not_send: PhantomData,
            }),
            Err(error) => Err((error, data)),
        }
    }

    /// The next completion, or `None` after the last.
    pub(crate) fn poll_next(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Completion>> {
        let Some(key) = self.key else {
            return Poll::Ready(None);
        };
        context::assert_current(self.owner, "an operation");
        let next = context::with(|ctx| ctx.driver.borrow_mut().poll_stream(key, cx));
        if let Poll::Ready(None) = next {
            self.key = None;
        }
        next
    }

    /// The data back, once the last completion has been taken.
    pub(crate) fn into_data(mut self) -> Option<D> {
        if self.key.is_some() {
            return None;
        }
        self.data.take()
    }
}

impl<D: 'static> Drop for MultiOp<D> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        abandon(self.owner, key, self.data.take());
    }
}
