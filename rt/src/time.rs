//! Timers: `sleep`, `sleep_until` and `timeout`, cheap by the many thousand.
//!
//! Each executor keeps one binary heap of deadlines; the ring's wait is bounded by the
//! nearest one, so no kernel timer exists per sleep. A registration is a slab entry with a
//! sequence number; the heap may hold stale deadlines of dropped sleeps, which are skipped
//! when they surface (each costs O(log n) once). Registering, firing and dropping are all
//! O(log n), amortized.
//!
//! Stale deadlines are counted, and once they outnumber the live registrations (and a
//! floor), the heap is rebuilt from the live ones. Without that, a loop that creates and
//! drops a far sleep per turn (a partition's appender waiting for a command or its
//! 5-minute retention check) would grow the heap by one entry per turn until the far
//! deadline passed: millions of entries, hundreds of MiB, under a fast producer. With it
//! the heap holds at most twice the live registrations plus the floor, and each rebuild,
//! O(n), is paid for by the n/2 drops before it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use super::context;

struct Registration {
    sequence: u64,
    waker: Option<Waker>,
    fired: bool,
}

/// The timers of one executor.
#[derive(Default)]
pub(crate) struct Timers {
    deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    registrations: Slab<Registration>,
    sequence_next: u64,
    /// Deadlines in the heap whose registration was dropped before it fired.
    stale: usize,
}

/// Stale deadlines the heap may hold whatever the live count (a rebuild of a small heap
/// is not worth it).
const STALE_DEADLINES_FLOOR: usize = 1024;

impl Timers {
    fn register(&mut self, deadline: Instant, waker: Waker) -> (usize, u64) {
        let sequence = self.sequence_next;
        self.sequence_next += 1;
        let key = self.registrations.insert(Registration {
            sequence,
            waker: Some(waker),
            fired: false,
        });
        self.deadlines.push(Reverse((deadline, sequence, key)));
        (key, sequence)
    }

    fn entry(&mut self, key: usize, sequence: u64) -> Option<&mut Registration> {
        self.registrations
            .get_mut(key)
            .filter(|entry| entry.sequence == sequence)
    }

    fn deregister(&mut self, key: usize, sequence: u64) {
        let Some(entry) = self.entry(key, sequence) else {
            return;
        };
        // A fired registration's deadline has left the heap already.
        let in_heap = !entry.fired;
        self.registrations.remove(key);
        if in_heap {
            self.stale += 1;
            if self.stale > STALE_DEADLINES_FLOOR.max(self.registrations.len()) {
                self.compact();
            }
        }
    }

    /// Rebuilds the heap from the live registrations' deadlines.
    fn compact(&mut self) {
        let registrations = &self.registrations;
        self.deadlines.retain(|&Reverse((_, sequence, key))| {
            registrations
                .get(key)
                .is_some_and(|entry| entry.sequence == sequence && !entry.fired)
        });
        self.stale = 0;
    }

    /// Deadlines held, live and stale.
    #[cfg(test)]
    pub(crate) fn deadlines_held(&self) -> usize {
        self.deadlines.len()
    }

    /// Wakes every sleep whose deadline is at or before `now`.
    pub(crate) fn fire(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, sequence, key))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if let Some(entry) = self.entry(key, sequence) {
                entry.fired = true;
                if let Some(waker) = entry.waker.take() {
                    waker.wake();
                }
            } else {
                self.stale = self.stale.saturating_sub(1);
            }
        }
    }

    /// How long until the nearest live deadline, if any.
    pub(crate) fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        while let Some(&Reverse((deadline, sequence, key))) = self.deadlines.peek() {
            if self.entry(key, sequence).is_some_and(|entry| !entry.fired) {
                return Some(deadline.saturating_duration_since(now));
            }
            self.deadlines.pop();
            self.stale = self.stale.saturating_sub(1);
        }
        None
    }

    /// Drops every registration (and its waker), for teardown.
    pub(crate) fn clear(&mut self) {
        self.deadlines.clear();
        self.stale = 0;
        let registrations = std::mem::take(&mut self.registrations);
        drop(registrations);
    }
}

/// A future that completes at a deadline. Created by [`sleep`] and [`sleep_until`].
///
/// Once polled it is registered with the current runtime's timers, so it is `!Send`, and
/// polling it on another runtime afterwards panics (its key would name another timer
/// there).
///
/// ```compile_fail,E0277
/// fn require_send<T: Send>(_: &T) {}
/// let sleep = ringlog_rt::sleep(std::time::Duration::from_millis(1));
/// require_send(&sleep);
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    registration: Option<Registered>,
    _not_send: PhantomData<*const ()>,
}

/// Where a polled sleep is registered: the runtime, and the key and sequence number in its
/// timers.
#[derive(Clone, Copy)]
struct Registered {
    owner: usize,
    key: usize,
    sequence: u64,
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Completes at `deadline` (at once if it has passed).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        registration: None,
        _not_send: PhantomData,
    }
}

impl Sleep {
    /// When this sleep completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline, so that a loop can keep one sleep instead of creating one per
    /// turn. A sleep that has completed can be reset and awaited again. Resetting to the
    /// deadline it has changes nothing (its registration stays); another deadline drops the
    /// registration, and the next poll registers the new one.
    pub fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        if self.deadline == deadline {
            return;
        }
        self.deadline = deadline;
        self.unregister();
    }

    /// Drops the registration, if any. Another runtime's timers are left alone: the
    /// owner's are gone with it, and a stale registration there only wakes nobody.
    fn unregister(&mut self) {
        if let Some(registered) = self.registration.take() {
            if context::is_current(registered.owner) {
                context::try_with(|ctx| {
                    let mut timers = ctx.timers.borrow_mut();
                    timers.deregister(registered.key, registered.sequence);
                });
            }
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let registration = self.registration;
        if let Some(registered) = registration {
            context::assert_current(registered.owner, "a sleep");
        }
        let ready = context::with(|ctx| {
            let mut timers = ctx.timers.borrow_mut();
            if let Some(Registered { key, sequence, .. }) = registration {
                match timers.entry(key, sequence) {
                    Some(entry) if !entry.fired => {
                        if !entry
                            .waker
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            entry.waker = Some(cx.waker().clone());
                        }
                        return None;
                    }
                    _ => return Some(None),
                }
            }
            if Instant::now() >= deadline {
                return Some(None);
            }
            let (key, sequence) = timers.register(deadline, cx.waker().clone());
            Some(Some(Registered {
                owner: ctx.id,
                key,
                sequence,
            }))
        });
        match ready {
            None => Poll::Pending,
            Some(Some(registration)) => {
                self.registration = Some(registration);
                Poll::Pending
            }
            Some(None) => {
                if let Some(Registered { key, sequence, .. }) = self.registration.take() {
                    context::with(|ctx| ctx.timers.borrow_mut().deregister(key, sequence));
                }
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// The deadline of a [`timeout`] passed before its future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Runs `future` until it completes or `duration` passes, whichever is first. On timeout
/// the future is dropped (its in-flight operations are abandoned safely).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let deadline = sleep(duration);
    let mut future = std::pin::pin!(future);
    let mut deadline = std::pin::pin!(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        deadline.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use super::{context, sleep, sleep_until, STALE_DEADLINES_FLOOR};

    fn deadlines_held() -> usize {
        context::with(|ctx| ctx.timers.borrow().deadlines_held())
    }

    /// Registers `sleep` with the timers (one poll) and drops it.
    fn register_and_drop(sleep: super::Sleep) {
        let mut sleep = pin!(sleep);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Pending);
    }

    #[test]
    fn sleeps_dropped_before_their_deadline_do_not_pile_up_in_the_heap() {
        crate::block_on(async {
            let far = Instant::now() + Duration::from_secs(300);
            // A few live sleeps stay registered throughout, as other tasks' timers would.
            let mut live: Vec<_> = (0..10)
                .map(|_| Box::pin(sleep(Duration::from_secs(600))))
                .collect();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            for sleep in &mut live {
                assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Pending);
            }
            // An appender's loop: a far sleep created and dropped per turn, 200,000 turns.
            for _ in 0..200_000 {
                register_and_drop(sleep_until(far));
            }
            let held = deadlines_held();
            assert!(
                held <= 2 * live.len() + STALE_DEADLINES_FLOOR + 1,
                "{held} deadlines held for {} live sleeps",
                live.len()
            );
            // The live ones still fire: compaction kept their deadlines.
            drop(live);
            let started = Instant::now();
            sleep(Duration::from_millis(20)).await;
            assert!(started.elapsed() >= Duration::from_millis(20));
        })
        .unwrap();
    }

    #[test]
    fn a_reset_sleep_keeps_one_registration_and_fires_at_its_new_deadline() {
        crate::block_on(async {
            let far = Instant::now() + Duration::from_secs(300);
            let mut sleep = pin!(sleep_until(far));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let held_before = deadlines_held();
            for _ in 0..10_000 {
                // The same deadline each turn: no new registration.
                sleep.as_mut().reset(far);
                assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Pending);
            }
            assert_eq!(deadlines_held(), held_before + 1);
            let soon = Instant::now() + Duration::from_millis(20);
            sleep.as_mut().reset(soon);
            assert_eq!(sleep.deadline(), soon);
            sleep.as_mut().await;
            assert!(Instant::now() >= soon);
            // Completed, then reset: it sleeps again.
            let again = Instant::now() + Duration::from_millis(10);
            sleep.as_mut().reset(again);
            assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Pending);
            sleep.as_mut().await;
            assert!(Instant::now() >= again);
        })
        .unwrap();
    }

    #[test]
    fn compaction_keeps_every_live_deadline() {
        crate::block_on(async {
            // Interleave live sleeps with many dropped ones, so that compactions happen
            // while live deadlines sit deep in the heap; each live one must still fire.
            let mut live = Vec::new();
            for index in 0..50u64 {
                live.push(Box::pin(sleep(Duration::from_millis(5 + index % 7))));
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let last = live.last_mut().unwrap();
                assert_eq!(last.as_mut().poll(&mut cx), Poll::Pending);
                for _ in 0..100 {
                    register_and_drop(sleep(Duration::from_secs(60)));
                }
            }
            for sleep in live {
                sleep.await;
            }
            assert!(deadlines_held() <= STALE_DEADLINES_FLOOR + 1);
        })
        .unwrap();
    }
}
