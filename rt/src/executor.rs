//! The single-threaded executor: spawning local tasks and the loop that runs them,
//! submits their I/O, fires their timers and sleeps in the ring when there is nothing to do.
//!
//! Tasks are `!Send` and stay on the thread that spawned them. A task woken from another
//! thread (a cross-core reply, say) is sent back to its own executor through the remote
//! run queue, which wakes that executor if it sleeps. Each turn of the loop runs at most
//! [`TASKS_PER_TICK_MAX`] tasks, then looks at the ring, so completions are never starved.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Wake;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use async_task::Runnable;

use super::context::{self, Context, Remote};
use super::error::{DriverError, RingSetupError};
use super::fs::read_eventfd;
use super::sync::{Arc, AtomicBool, Ordering};
use crate::limits::TASKS_PER_TICK_MAX;

/// Runs `future` to completion on the current thread, inside a fresh runtime (ring,
/// executor, timers, pool). Tasks it spawns run while it does; those still alive when it
/// completes are dropped, their I/O cancelled and waited for.
///
/// # Panics
/// If the ring fails in a way the runtime cannot recover from (a fatal [`DriverError`]:
/// the kernel dropped completions). The runtime first drops its tasks and leaks the ring
/// and the memory of its operations in flight, which the kernel may still use.
///
/// ```
/// let sum = ringlog_rt::block_on(async {
///     let task = ringlog_rt::spawn_local(async { 40 });
///     task.await.unwrap() + 2
/// })
/// .expect("io_uring is available");
/// assert_eq!(sum, 42);
/// ```
pub fn block_on<F: Future>(future: F) -> Result<F::Output, RingSetupError> {
    let context = Context::new()?;
    let _guard = Context::enter(context.clone());
    match run(&context, future) {
        Ok(output) => Ok(output),
        Err(error) => panic!("the ringlog runtime stopped: {error}"),
    }
}

/// Wakes the root future of a `block_on` or shard loop.
struct RootWaker {
    woken: AtomicBool,
    owner: usize,
    remote: Arc<Remote>,
}

impl Wake for RootWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if context::current_id() != self.owner {
            self.remote.parker.unpark();
        }
    }
}

/// Runs `future` and the tasks of `ctx` until `future` completes, or until the ring fails
/// (the error is logged and returned; the future is dropped, and the caller's teardown
/// leaks what the kernel may still use).
pub(crate) fn run<F: Future>(ctx: &Context, future: F) -> Result<F::Output, DriverError> {
    spawn_local(read_eventfd(ctx.eventfd.clone())).detach();
    let root = std::sync::Arc::new(RootWaker {
        woken: AtomicBool::new(true),
        owner: ctx.id,
        remote: ctx.remote.clone(),
    });
    let waker = Waker::from(root.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if root.woken.swap(false, Ordering::SeqCst) {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return Ok(output);
            }
        }
        run_tasks(ctx);
        take_remote_work(ctx);
        ctx.timers.borrow_mut().fire(Instant::now());
        let busy = !ctx.run_queue.borrow().is_empty() || root.woken.load(Ordering::SeqCst);
        let result = if busy {
            ctx.driver.borrow_mut().submit_and_reap()
        } else {
            park(ctx, &root.woken)
        };
        match result {
            Ok(_) => {}
            // Fatal errors are kept by the driver and taken below.
            Err(error) if error.is_fatal() => {}
            Err(error) => {
                // The kernel stayed short of room through the driver's retries; back off
                // rather than spin, and try again.
                tracing::warn!(%error, "io_uring_enter busy; backing off");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // A failure can also come from a push inside a task, so the driver is asked.
        let failure = ctx.driver.borrow_mut().take_failure();
        if let Some(error) = failure {
            tracing::error!(%error, runtime = ctx.id, "the ring failed; the runtime stops");
            return Err(error);
        }
    }
}

fn run_tasks(ctx: &Context) {
    for _ in 0..TASKS_PER_TICK_MAX {
        let next = ctx.run_queue.borrow_mut().pop_front();
        let Some(runnable) = next else { return };
        runnable.run();
    }
}

fn take_remote_work(ctx: &Context) {
    if ctx.remote.runnables.has_items() {
        let mut woken = ctx.inbox_runnables.borrow_mut();
        ctx.remote.runnables.drain_into(&mut woken);
        ctx.run_queue.borrow_mut().extend(woken.drain(..));
    }
    if ctx.remote.messages.has_items() {
        let mut messages = std::mem::take(&mut *ctx.inbox_messages.borrow_mut());
        ctx.remote.messages.drain_into(&mut messages);
        for message in messages.drain(..) {
            message();
        }
        *ctx.inbox_messages.borrow_mut() = messages;
    }
}

/// Sleeps in the ring until a completion, the nearest timer, or a wake-up from another
/// thread.
fn park(ctx: &Context, root_woken: &AtomicBool) -> Result<usize, DriverError> {
    let timeout = ctx.timers.borrow_mut().next_timeout(Instant::now());
    if timeout == Some(Duration::ZERO) {
        return ctx.driver.borrow_mut().submit_and_reap();
    }
    let slept = ctx.remote.parker.park(
        || ctx.has_remote_work() || root_woken.load(Ordering::SeqCst),
        || ctx.driver.borrow_mut().park(timeout),
    );
    match slept {
        Some(result) => result,
        None => ctx.driver.borrow_mut().submit_and_reap(),
    }
}

/// Puts a woken task on its executor's run queue: the local one when woken on the owning
/// thread, the remote one (with a wake-up) otherwise.
fn schedule(owner: usize, remote: &Remote, runnable: Runnable) {
    if context::current_id() == owner {
        let queued = context::try_with(|ctx| ctx.run_queue.borrow_mut().push_back(runnable));
        debug_assert!(queued.is_some());
        return;
    }
    if let Err(refused) = remote.runnables.try_send(runnable) {
        // The owning executor has stopped. Dropping the task here would run its destructor
        // on a foreign thread, which a `!Send` task must never see; leak it instead (only
        // at shutdown).
        std::mem::forget(refused);
    }
}

/// Spawns a `!Send` task on the current executor. The task runs concurrently with the
/// caller; dropping the handle detaches it.
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let (owner, remote) = context::with(|ctx| (ctx.id, ctx.remote.clone()));
    let schedule = move |runnable| schedule(owner, &remote, runnable);
    let (runnable, task) = async_task::spawn_local(future, schedule);
    runnable.schedule();
    JoinHandle {
        task: Some(task.fallible()),
    }
}

/// The task was dropped before it completed (its executor stopped, or it was aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task cancelled before completion")]
pub struct Cancelled;

/// Awaits a spawned task's output. Dropping it lets the task run on, detached.
pub struct JoinHandle<T> {
    task: Option<async_task::FallibleTask<T>>,
}

impl<T> JoinHandle<T> {
    /// Lets the task run to completion on its own.
    pub fn detach(mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }

    /// Stops the task: its future is dropped at the next opportunity.
    pub fn abort(mut self) {
        drop(self.task.take());
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Err(Cancelled));
        };
        match Pin::new(task).poll(cx) {
            Poll::Ready(Some(output)) => Poll::Ready(Ok(output)),
            Poll::Ready(None) => Poll::Ready(Err(Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Lets other tasks run before the caller continues.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}
