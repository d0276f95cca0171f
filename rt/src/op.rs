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

use std::any::Any;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use io_uring::{opcode, squeue, types};

use super::context;
use super::driver::{Completion, ResultKind};
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

    /// Submits the operation, or hands its data back with the error if it cannot be pushed
    /// (for data that must not be dropped with a failed operation, such as a descriptor to
    /// close).
    pub(crate) fn try_submit(self) -> Result<Op<T>, (io::Error, T)> {
        match context::with(|ctx| ctx.driver.borrow_mut().push(self.entry, T::RESULT)) {
            Ok(key) => Ok(Op::from_push(self.data, Ok(key))),
            Err(error) => Err((error, self.data)),
        }
    }

    /// Submits the operation (it goes to the kernel with the next batch).
    pub fn submit(self) -> Op<T> {
        let pushed = context::with(|ctx| ctx.driver.borrow_mut().push(self.entry, T::RESULT));
        Op::from_push(self.data, pushed)
    }

    /// Submits the operation with a deadline: if it has not completed after `timeout`,
    /// the kernel cancels it and it completes with ECANCELED.
    pub fn submit_with_timeout(self, timeout: Duration) -> Op<T> {
        let timespec = Box::new(types::Timespec::from(timeout));
        let deadline = opcode::LinkTimeout::new(&raw const *timespec).build();
        let pushed = context::with(|ctx| {
            let mut driver = ctx.driver.borrow_mut();
            let keys =
                driver.push_linked([(self.entry, T::RESULT), (deadline, ResultKind::Count)])?;
            // Nobody awaits the timer's own completion; its slot keeps the timespec alive
            // until the kernel posts it.
            driver.abandon(keys[1], Some(timespec), false);
            Ok(keys[0])
        });
        Op::from_push(self.data, pushed)
    }
}

/// A submitted operation; awaiting it yields the operation's output.
///
/// An operation belongs to the runtime that submitted it: its slot is in that runtime's
/// ring, and the kernel may hold pointers into its data. So it is `!Send`, and polling it
/// on another runtime of the same thread (kept across two [`block_on`](crate::block_on)
/// calls) panics; dropping it there leaks its data rather than free memory the kernel may
/// still use or touch the other runtime's slots.
///
/// ```compile_fail,E0277
/// fn require_send<T: Send>(_: &T) {}
/// let _ = ringlog_rt::block_on(async {
///     let op = ringlog_rt::nop();
///     require_send(&op);
///     op.await
/// });
/// ```
#[must_use = "an operation is submitted already; await it to learn its result"]
pub struct Op<T: Operation> {
    key: Option<usize>,
    data: Option<T>,
    failed: Option<Completion>,
    /// The id of the runtime whose ring holds `key`.
    owner: usize,
    _not_send: PhantomData<*const ()>,
}

impl<T: Operation> Op<T> {
    fn from_push(data: T, pushed: io::Result<usize>) -> Op<T> {
        let (key, failed) = match pushed {
            Ok(key) => (Some(key), None),
            Err(error) => (None, Some(Completion::from_error(&error))),
        };
        Op {
            key,
            data: Some(data),
            failed,
            owner: context::current_id(),
            _not_send: PhantomData,
        }
    }

    /// An operation that failed before submission with `errno`; awaiting it yields that
    /// error and hands the data back.
    pub(crate) fn failed(data: T, errno: i32) -> Op<T> {
        Op::from_push(data, Err(io::Error::from_raw_os_error(errno)))
    }

    /// Asks the kernel to cancel the operation; it then completes with ECANCELED (or with
    /// its result, if it finished first).
    pub fn cancel(&self) {
        if let Some(key) = self.key {
            context::assert_current(self.owner, "an operation");
            let entry = opcode::AsyncCancel::new(key as u64).build();
            context::with(|ctx| {
                // Only fails if the ring is unusable, when the operation cannot be cancelled
                // anyway; its completion still arrives.
                let _ = ctx.driver.borrow_mut().push_untracked(entry);
            });
        }
    }
}

impl<T: Operation> Future for Op<T> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<T::Output> {
        let this = self.get_mut();
        let completion = if let Some(failed) = this.failed.take() {
            failed
        } else {
            let Some(key) = this.key else {
                unreachable!("operation polled after completion")
            };
            context::assert_current(this.owner, "an operation");
            match context::with(|ctx| ctx.driver.borrow_mut().poll_completion(key, cx)) {
                Poll::Ready(completion) => {
                    this.key = None;
                    completion
                }
                Poll::Pending => return Poll::Pending,
            }
        };
        let Some(data) = this.data.take() else {
            unreachable!("operation data taken twice")
        };
        Poll::Ready(data.complete(completion))
    }
}

impl<T: Operation> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        abandon(self.owner, key, self.data.take());
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
/// fdatasync after a write, say) is still in flight.
pub fn link_split<A: Operation, B: Operation>(
    first: Prepared<A>,
    second: Prepared<B>,
) -> (Op<A>, Op<B>) {
    let pushed = context::with(|ctx| {
        ctx.driver
            .borrow_mut()
            .push_linked([(first.entry, A::RESULT), (second.entry, B::RESULT)])
    });
    match pushed {
        Ok([key_first, key_second]) => (
            Op::from_push(first.data, Ok(key_first)),
            Op::from_push(second.data, Ok(key_second)),
        ),
        Err(error) => {
            let errno = error.raw_os_error().unwrap_or(libc::EIO);
            (
                Op::from_push(first.data, Err(error)),
                Op::failed(second.data, errno),
            )
        }
    }
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
    /// failed push hands the data back with the error.
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
