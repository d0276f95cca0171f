//! How far this node applied the controller's log (`node.rs`), for those who wait on it
//! (creating a topic answers once this node applied the command). The applier advances it,
//! or marks it stopped when it fails; either wakes every waiter, none of which polls. It
//! lives on shard 0 with the controller, so nothing here is shared between threads.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

/// The controller log's offset applied on this node, and whether its applier stopped.
pub(crate) struct Applied {
    offset: Cell<i64>,
    stopped: Cell<bool>,
    /// Those waiting in [`Applied::wait`]: one entry per waiting future (a future woken
    /// spuriously replaces its own entry), taken at each advance. Bounded by the requests
    /// that wait (CreateTopics in flight on this node).
    waiters: RefCell<Vec<Waker>>,
}

/// The applier stopped before it reached the offset waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

impl Applied {
    pub(crate) fn new() -> Applied {
        Applied {
            offset: Cell::new(0),
            stopped: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Everything below `offset` is applied.
    pub(crate) fn advance(&self, offset: i64) {
        assert!(
            offset >= self.offset.get(),
            "the applied offset never goes back"
        );
        self.offset.set(offset);
        self.wake_all();
    }

    /// The applier stopped: nothing more is applied until the node restarts.
    pub(crate) fn stop(&self) {
        self.stopped.set(true);
        self.wake_all();
    }

    /// Waits until everything below `offset` is applied, or the applier stopped.
    pub(crate) async fn wait(&self, offset: i64) -> Result<(), Stopped> {
        std::future::poll_fn(|cx| {
            if self.offset.get() >= offset {
                return Poll::Ready(Ok(()));
            }
            if self.stopped.get() {
                return Poll::Ready(Err(Stopped));
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|waiter| waiter.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waiter in waiters {
            waiter.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use futures::FutureExt;

    use super::{Applied, Stopped};

    #[test]
    fn a_waiter_is_answered_when_the_applier_gets_there_or_stops() {
        let applied = Applied::new();
        let mut reached = pin!(applied.wait(5));
        let mut never = pin!(applied.wait(9));
        assert!(reached.as_mut().now_or_never().is_none());
        assert!(never.as_mut().now_or_never().is_none());
        applied.advance(3);
        assert!(reached.as_mut().now_or_never().is_none(), "not there yet");
        applied.advance(5);
        assert_eq!(reached.now_or_never(), Some(Ok(())));
        applied.stop();
        assert_eq!(
            never.now_or_never(),
            Some(Err(Stopped)),
            "not a timeout: stopped"
        );
        assert_eq!(
            applied.wait(4).now_or_never(),
            Some(Ok(())),
            "applied before it stopped"
        );
    }
}
