//! The cross-core mailbox: a bounded multi-producer queue into one shard, with a wake-up of
//! that shard when it sleeps in `io_uring_enter`.
//!
//! Any thread may send; only the owning shard receives. Items move by ownership (boxed
//! closures, `Bytes`), never by copy. A full mailbox makes senders wait (backpressure)
//! rather than grow; [`Mailbox::unbounded`] exists only for task wake-ups, which must never
//! fail and are bounded by the number of tasks anyway.
//!
//! Wake-ups follow the classic "flag then check" protocol, checked by the loom tests below:
//! the receiver sets `sleeping` and then looks at its queues; a sender pushes and then
//! swaps `sleeping` to false, signalling the receiver if it was set. Whichever runs second
//! sees the other's write, so a message is never left behind a sleeping shard, and a busy
//! shard costs its senders no system call. The receiver's side is [`Parker::park`], which
//! the executor calls to sleep in its ring and the loom tests call to wait on a modelled
//! eventfd, so what loom checks is the code that runs.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use super::sync::{lock, Arc, AtomicBool, AtomicUsize, Mutex, Ordering};

/// How a sender wakes a sleeping receiver (an eventfd write for shards).
pub(crate) trait Signal: std::marker::Send + Sync + 'static {
    fn signal(&self);
}

/// The sleep/wake handshake of one receiver, shared by all its mailboxes.
pub(crate) struct Parker<S> {
    sleeping: AtomicBool,
    signal: S,
}

impl<S: Signal> Parker<S> {
    pub(crate) fn new(signal: S) -> Parker<S> {
        Parker {
            sleeping: AtomicBool::new(false),
            signal,
        }
    }

    /// Receiver: sleeps by calling `sleep` (which returns once the signal arrives, or for
    /// other reasons), unless `has_work` finds work once the sleep is announced. Returns
    /// `sleep`'s result, or `None` when it did not sleep. `has_work` must look at every
    /// queue whose senders `unpark` this parker.
    pub(crate) fn park<R>(
        &self,
        has_work: impl FnOnce() -> bool,
        sleep: impl FnOnce() -> R,
    ) -> Option<R> {
        self.prepare_park();
        if has_work() {
            self.finish_park();
            return None;
        }
        let slept = sleep();
        self.finish_park();
        Some(slept)
    }

    /// Receiver: announces that it is about to sleep. It must check its queues afterwards
    /// and only sleep if they are empty.
    ///
    /// A read-modify-write rather than a store: it reads from the last sender's `unpark`
    /// swap, so everything that sender queued before is visible to the check that follows.
    /// That holds under acquire/release alone, not only under sequential consistency.
    fn prepare_park(&self) {
        self.sleeping.swap(true, Ordering::SeqCst);
    }

    /// Receiver: it is awake again (or decided not to sleep).
    fn finish_park(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Sender: wakes the receiver if it is sleeping or about to.
    pub(crate) fn unpark(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.signal.signal();
        }
    }
}

/// Why a send failed; the item comes back to the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The mailbox holds its capacity of items; try again later (or use `send`).
    Full(T),
    /// The receiving shard has stopped.
    Closed(T),
}

struct State<T> {
    queue: VecDeque<T>,
    senders_waiting: Vec<Waker>,
    closed: bool,
}

/// A mailbox into one receiver.
pub(crate) struct Mailbox<T, S> {
    state: Mutex<State<T>>,
    /// Items queued, readable without the lock so an idle receiver checks cheaply.
    len: AtomicUsize,
    capacity: usize,
    parker: Arc<Parker<S>>,
}

impl<T, S: Signal> Mailbox<T, S> {
    pub(crate) fn bounded(capacity: usize, parker: Arc<Parker<S>>) -> Mailbox<T, S> {
        assert!(capacity > 0, "a mailbox needs room for at least one item");
        let state = State {
            queue: VecDeque::new(),
            senders_waiting: Vec::new(),
            closed: false,
        };
        Mailbox {
            state: Mutex::new(state),
            len: AtomicUsize::new(0),
            capacity,
            parker,
        }
    }

    pub(crate) fn unbounded(parker: Arc<Parker<S>>) -> Mailbox<T, S> {
        Mailbox::bounded(usize::MAX, parker)
    }

    /// Queues `item` if there is room, and wakes the receiver.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.push(item, None)
    }

    /// Queues `item`; if the mailbox is full, registers `cx`'s waker to be woken when the
    /// receiver makes room, atomically with the check, and gives the item back.
    pub(crate) fn poll_send(&self, item: T, cx: &mut Context<'_>) -> Result<(), TrySendError<T>> {
        self.push(item, Some(cx.waker()))
    }

    fn push(&self, item: T, waiter: Option<&Waker>) -> Result<(), TrySendError<T>> {
        {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(TrySendError::Closed(item));
            }
            if state.queue.len() >= self.capacity {
                if let Some(waker) = waiter {
                    state.senders_waiting.push(waker.clone());
                }
                return Err(TrySendError::Full(item));
            }
            state.queue.push_back(item);
            self.len.fetch_add(1, Ordering::SeqCst);
        }
        self.parker.unpark();
        Ok(())
    }

    /// Whether items are waiting; the receiver checks this after `prepare_park`.
    pub(crate) fn has_items(&self) -> bool {
        self.len.load(Ordering::SeqCst) > 0
    }

    /// Receiver: moves every queued item into `out` (swapping buffers, so the lock is held
    /// only for the swap) and wakes senders that waited for room.
    pub(crate) fn drain_into(&self, out: &mut VecDeque<T>) {
        debug_assert!(out.is_empty());
        let waiting = {
            let mut state = lock(&self.state);
            std::mem::swap(&mut state.queue, out);
            self.len.store(0, Ordering::SeqCst);
            std::mem::take(&mut state.senders_waiting)
        };
        for waker in waiting {
            waker.wake();
        }
    }

    /// Receiver: refuses further items and returns those still queued.
    pub(crate) fn close(&self) -> VecDeque<T> {
        let (items, waiting) = {
            let mut state = lock(&self.state);
            state.closed = true;
            self.len.store(0, Ordering::SeqCst);
            (
                std::mem::take(&mut state.queue),
                std::mem::take(&mut state.senders_waiting),
            )
        };
        for waker in waiting {
            waker.wake();
        }
        items
    }
}

/// A future that sends one item, waiting while the mailbox is full.
pub(crate) struct Send<'a, T, S> {
    mailbox: &'a Mailbox<T, S>,
    item: Option<T>,
}

impl<T, S> Send<'_, T, S> {
    pub(crate) fn new(mailbox: &Mailbox<T, S>, item: T) -> Send<'_, T, S> {
        Send {
            mailbox,
            item: Some(item),
        }
    }
}

impl<T: Unpin, S: Signal> std::future::Future for Send<'_, T, S> {
    type Output = Result<(), T>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(item) = self.item.take() else {
            unreachable!("mailbox send polled after completion");
        };
        match self.mailbox.poll_send(item, cx) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(TrySendError::Closed(item)) => Poll::Ready(Err(item)),
            Err(TrySendError::Full(item)) => {
                self.item = Some(item);
                Poll::Pending
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;

    #[derive(Default)]
    struct Counter(StdAtomicUsize);

    impl Signal for Arc<Counter> {
        fn signal(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn full_mailbox_refuses_then_accepts_after_drain() {
        let counter = Arc::new(Counter::default());
        let parker = Arc::new(Parker::new(counter.clone()));
        let mailbox = Mailbox::bounded(2, parker.clone());
        mailbox.try_send(1).unwrap();
        mailbox.try_send(2).unwrap();
        assert_eq!(mailbox.try_send(3), Err(TrySendError::Full(3)));
        let mut out = VecDeque::new();
        mailbox.drain_into(&mut out);
        assert_eq!(out, [1, 2]);
        mailbox.try_send(3).unwrap();
        // The receiver never slept, so no signal (system call) was spent.
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        parker.prepare_park();
        mailbox.try_send(4).unwrap();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "a sleeping receiver is signalled"
        );
        out.clear();
        mailbox.drain_into(&mut out);
        assert_eq!(out, [3, 4]);
        mailbox.try_send(5).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one signal per sleep");
        assert_eq!(mailbox.close().into_iter().collect::<Vec<_>>(), [5]);
        assert_eq!(mailbox.try_send(6), Err(TrySendError::Closed(6)));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Notify;
    use loom::thread;

    /// The eventfd, modelled: a signal leaves a permit; waiting consumes one or blocks.
    struct EventFd(Notify);

    impl Signal for Arc<EventFd> {
        fn signal(&self) {
            self.0.notify();
        }
    }

    type TestMailbox = Mailbox<u32, Arc<EventFd>>;

    /// The receiver's loop, as the executor's: drain every mailbox, then park, sleeping
    /// (waiting for a signal) only if no mailbox has items once the sleep is announced. If
    /// a wake-up could be lost, loom finds the interleaving where the receiver waits
    /// forever and reports a deadlock.
    fn receive(mailboxes: &[&TestMailbox], eventfd: &EventFd, want: usize) -> Vec<u32> {
        let mut got = Vec::new();
        let mut out = VecDeque::new();
        loop {
            for mailbox in mailboxes {
                mailbox.drain_into(&mut out);
                got.extend(out.drain(..));
            }
            if got.len() == want {
                return got;
            }
            let has_work = || mailboxes.iter().any(|mailbox| mailbox.has_items());
            mailboxes[0].parker.park(has_work, || eventfd.0.wait());
        }
    }

    fn mailbox(capacity: usize) -> (Arc<TestMailbox>, Arc<EventFd>) {
        let eventfd = Arc::new(EventFd(Notify::new()));
        let parker = Arc::new(Parker::new(eventfd.clone()));
        (Arc::new(Mailbox::bounded(capacity, parker)), eventfd)
    }

    #[test]
    fn no_lost_wakeup_with_two_senders() {
        loom::model(|| {
            let (mailbox, eventfd) = mailbox(4);
            let senders: Vec<_> = (0..2)
                .map(|i| {
                    let mailbox = mailbox.clone();
                    thread::spawn(move || mailbox.try_send(i).unwrap())
                })
                .collect();
            let mut got = receive(&[&mailbox], &eventfd, 2);
            for sender in senders {
                sender.join().unwrap();
            }
            got.sort_unstable();
            assert_eq!(got, [0, 1]);
        });
    }

    #[test]
    fn a_full_mailbox_makes_the_sender_wait_and_loses_nothing() {
        loom::model(|| {
            let (mailbox, eventfd) = mailbox(1);
            let sender = {
                let mailbox = mailbox.clone();
                thread::spawn(move || {
                    for item in 0..2 {
                        loom::future::block_on(Send::new(&mailbox, item)).unwrap();
                    }
                })
            };
            let got = receive(&[&mailbox], &eventfd, 2);
            assert_eq!(got, [0, 1], "one sender's items arrive in order");
            sender.join().unwrap();
        });
    }

    /// Two mailboxes behind one parker, as a shard's woken tasks and messages are: an item
    /// in either wakes the receiver.
    #[test]
    fn no_lost_wakeup_across_two_mailboxes_of_one_receiver() {
        loom::model(|| {
            let eventfd = Arc::new(EventFd(Notify::new()));
            let parker = Arc::new(Parker::new(eventfd.clone()));
            let runnables: Arc<TestMailbox> = Arc::new(Mailbox::unbounded(parker.clone()));
            let messages: Arc<TestMailbox> = Arc::new(Mailbox::bounded(4, parker));
            let senders: Vec<_> = [(runnables.clone(), 0), (messages.clone(), 1)]
                .into_iter()
                .map(|(mailbox, item)| thread::spawn(move || mailbox.try_send(item).unwrap()))
                .collect();
            let mut got = receive(&[&runnables, &messages], &eventfd, 2);
            for sender in senders {
                sender.join().unwrap();
            }
            got.sort_unstable();
            assert_eq!(got, [0, 1]);
        });
    }
}
