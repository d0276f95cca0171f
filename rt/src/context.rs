//! The state of one executor thread: its driver, run queue, timers, buffer pool and the
//! queues other threads fill. Reached through a thread-local set while the executor runs.
//!
//! Invariants: one context per thread at a time; only the owning thread touches the
//! `RefCell`s; other threads reach the context only through [`Remote`] (mailboxes and the
//! eventfd), which is `Send + Sync`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::AtomicUsize as StdAtomicUsize;

use async_task::Runnable;

use super::buf::BufPool;
use super::driver::Driver;
use super::error::RingSetupError;
use super::mailbox::{Mailbox, Parker, Signal};
use super::sync::{Arc, Ordering};
use super::time::Timers;
use crate::limits::{IOVEC_ARRAYS_RETAINED_MAX, MAILBOX_CAPACITY, TEARDOWN_PASSES_MAX};

/// A unit of work sent to a shard from another thread.
pub(crate) type Message = Box<dyn FnOnce() + Send>;

/// Wakes a sleeping executor by writing to its eventfd, whose pending read in the ring
/// then completes.
pub(crate) struct EventFdSignal(OwnedFd);

impl Signal for EventFdSignal {
    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A failure can only be
        // EAGAIN (the counter is saturated, so a wake-up is pending anyway).
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// The part of a context other threads may use.
pub(crate) struct Remote {
    pub(crate) parker: Arc<Parker<EventFdSignal>>,
    /// Tasks of this executor woken by other threads.
    pub(crate) runnables: Mailbox<Runnable, EventFdSignal>,
    /// Work sent to this executor (cross-core requests).
    pub(crate) messages: Mailbox<Message, EventFdSignal>,
}

pub(crate) struct Context {
    pub(crate) id: usize,
    pub(crate) driver: RefCell<Driver>,
    pub(crate) run_queue: RefCell<VecDeque<Runnable>>,
    pub(crate) timers: RefCell<Timers>,
    pub(crate) remote: Arc<Remote>,
    pub(crate) eventfd: Rc<OwnedFd>,
    pub(crate) pool: BufPool,
    /// Recycled iovec arrays for vectored operations, so they allocate nothing.
    pub(crate) iovecs: RefCell<Vec<Vec<libc::iovec>>>,
    /// Scratch queues the remote mailboxes are drained into.
    pub(crate) inbox_runnables: RefCell<VecDeque<Runnable>>,
    pub(crate) inbox_messages: RefCell<VecDeque<Message>>,
}

static CONTEXT_ID_NEXT: StdAtomicUsize = StdAtomicUsize::new(1);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Context>>> = const { RefCell::new(None) };
    static CURRENT_ID: Cell<usize> = const { Cell::new(0) };
}

impl Context {
    pub(crate) fn new() -> Result<Rc<Context>, RingSetupError> {
        let driver = Driver::new()?;
        // SAFETY: eventfd has no memory arguments; the result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(RingSetupError::from_setup(io::Error::last_os_error()));
        }
        // SAFETY: eventfd returned a new descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let signal = EventFdSignal(eventfd.try_clone().map_err(RingSetupError::from_setup)?);
        let parker = Arc::new(Parker::new(signal));
        let remote = Arc::new(Remote {
            runnables: Mailbox::unbounded(parker.clone()),
            messages: Mailbox::bounded(MAILBOX_CAPACITY, parker.clone()),
            parker,
        });
        Ok(Rc::new(Context {
            id: CONTEXT_ID_NEXT.fetch_add(1, Ordering::Relaxed),
            driver: RefCell::new(driver),
            run_queue: RefCell::new(VecDeque::with_capacity(256)),
            timers: RefCell::new(Timers::default()),
            remote,
            eventfd: Rc::new(eventfd),
            pool: BufPool::new(),
            iovecs: RefCell::new(Vec::new()),
            inbox_runnables: RefCell::new(VecDeque::new()),
            inbox_messages: RefCell::new(VecDeque::new()),
        }))
    }

    /// Makes `context` the current thread's; returns a guard that tears it down on drop.
    pub(crate) fn enter(context: Rc<Context>) -> EnterGuard {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            assert!(
                current.is_none(),
                "a ringlog runtime is already running on this thread"
            );
            CURRENT_ID.with(|id| id.set(context.id));
            *current = Some(context);
        });
        EnterGuard {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether other threads left work (woken tasks or messages).
    pub(crate) fn has_remote_work(&self) -> bool {
        self.remote.runnables.has_items() || self.remote.messages.has_items()
    }

    /// A recycled, empty iovec array.
    pub(crate) fn take_iovecs(&self) -> Vec<libc::iovec> {
        self.iovecs.borrow_mut().pop().unwrap_or_default()
    }

    pub(crate) fn recycle_iovecs(&self, mut iovecs: Vec<libc::iovec>) {
        iovecs.clear();
        let mut pool = self.iovecs.borrow_mut();
        if pool.len() < IOVEC_ARRAYS_RETAINED_MAX {
            pool.push(iovecs);
        }
    }

    /// Cancels all I/O, drops every task and timer, and refuses further remote work, so
    /// nothing the kernel uses outlives the driver and no task is dropped on a foreign
    /// thread. After a ring failure nothing is cancelled or waited for: the tasks are
    /// dropped, and their operations' memory stays with the kernel (see `Driver::abandon`).
    fn teardown(&self) {
        for _ in 0..TEARDOWN_PASSES_MAX {
            self.driver.borrow_mut().cancel_all_and_wait();
            self.timers.borrow_mut().clear();
            let mut dropped_any = false;
            loop {
                let next = self.run_queue.borrow_mut().pop_front();
                let Some(runnable) = next else { break };
                dropped_any = true;
                drop(runnable);
            }
            let mut woken = VecDeque::new();
            self.remote.runnables.drain_into(&mut woken);
            dropped_any |= !woken.is_empty();
            drop(woken);
            if !dropped_any && self.driver.borrow().slots_in_use() == 0 {
                break;
            }
        }
        drop(self.remote.runnables.close());
        drop(self.remote.messages.close());
    }
}

/// Tears the current context down when the executor leaves.
pub(crate) struct EnterGuard {
    _not_send: std::marker::PhantomData<Rc<()>>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let context = CURRENT.with(|current| current.borrow().clone());
        if let Some(context) = context {
            context.teardown();
        }
        CURRENT.with(|current| current.borrow_mut().take());
        CURRENT_ID.with(|id| id.set(0));
    }
}

/// Runs `f` with the current thread's context. Panics outside a ringlog runtime: calling
/// runtime functions there is a bug in the caller.
pub(crate) fn with<R>(f: impl FnOnce(&Context) -> R) -> R {
    CURRENT.with(|current| match current.borrow().as_ref() {
        Some(context) => f(context),
        None => panic!("not inside a ringlog runtime (rt::block_on or a shard)"),
    })
}

/// Runs `f` with the current context, if there is one (and the thread is not exiting).
pub(crate) fn try_with<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| current.borrow().as_ref().map(|ctx| f(ctx)))
        .ok()
        .flatten()
}

/// The id of the context running on this thread, 0 if none. Ids are unique for the life
/// of the process, so an id names one runtime even after it has gone.
pub(crate) fn current_id() -> usize {
    CURRENT_ID.try_with(Cell::get).unwrap_or(0)
}

/// Whether the runtime with id `owner` is the one running on this thread.
pub(crate) fn is_current(owner: usize) -> bool {
    owner != 0 && current_id() == owner
}

/// Refuses to use something registered with runtime `owner` (a slot in its ring, a timer,
/// a place in its queue) from another runtime: the key would name an unrelated entry there.
/// An operation is `!Send`, so this is a second runtime on the same thread, after the first
/// one ended (two `block_on` calls in a row).
pub(crate) fn assert_current(owner: usize, what: &str) {
    assert!(
        is_current(owner),
        "{what} used outside the runtime that registered it (runtime {owner}, current {})",
        current_id()
    );
}
