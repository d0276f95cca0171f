//! In-flight bytes: what a connection, and all connections of a shard together, hold
//! between reading a request and writing the last byte of its response.
//!
//! A request's frame is charged as soon as its size prefix is read (before its body is
//! received into memory) and stays charged until its response is written; the response's
//! bytes (encoded, plus the record bytes of a fetch) are charged from the moment the
//! handler produces them until they are written. A connection reads its next request
//! only while both its own bytes and its shard's are below their limits
//! ([`Budget::admit`]): over either, it stops reading — backpressure, not an error — until
//! responses drain. A client that never reads its responses therefore stops being read
//! once it holds its connection's limit, and holds no more than that (plus one request
//! and, for a fetch, one batch: see below) until the idle timeout closes it.
//!
//! A fetch asks [`Budget::room`] before it reads and reads no more than that, so the bytes
//! it brings into memory are charged before they exist; with no room left it still gets
//! its first batch, as Kafka promises. A connection answers one Fetch at a time
//! ([`FetchTurn`]: the reader holds a second Fetch until the first one's response is
//! written, as Kafka answers one request per connection at a time and Kafka clients keep
//! one Fetch in flight per broker), so a connection is over its limit by at most one
//! batch. Handlers never wait for room (only the reader does, before the next request),
//! so a handler cannot wait for bytes that only its own connection's later responses
//! would free.
//!
//! Everything here is shard-local (`Rc`, `Cell`): a connection stays on the shard that
//! accepted it, and so do its charges.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};

/// Bytes in flight on all shards of the process together (the metrics' gauge).
pub static IN_FLIGHT_BYTES: AtomicU64 = AtomicU64::new(0);
/// Times a connection stopped reading requests until responses drained: its own or its
/// shard's in-flight bytes were over their limit, or a Fetch waited for the one before it
/// ([`FetchTurn`]).
pub static READS_PAUSED: AtomicU64 = AtomicU64::new(0);

/// Bytes held against one limit, and the readers waiting for them to fall below it.
#[derive(Debug)]
struct Pool {
    used: Cell<u64>,
    limit: u64,
    waiting: RefCell<Vec<Waker>>,
}

impl Pool {
    fn new(limit: u64) -> Rc<Pool> {
        Rc::new(Pool {
            used: Cell::new(0),
            limit,
            waiting: RefCell::new(Vec::new()),
        })
    }

    fn over(&self) -> bool {
        self.used.get() >= self.limit
    }

    fn room(&self) -> u64 {
        self.limit.saturating_sub(self.used.get())
    }

    fn add(&self, bytes: u64) {
        self.used.set(self.used.get() + bytes);
    }

    fn release(&self, bytes: u64) {
        let used = self.used.get();
        assert!(bytes <= used, "releasing {bytes} of {used} bytes charged");
        self.used.set(used - bytes);
        if !self.over() {
            for waker in self.waiting.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }
}

thread_local! {
    /// This shard's pool, made by its first connection with the server's limit.
    static SHARD_POOL: RefCell<Option<Rc<Pool>>> = const { RefCell::new(None) };
}

/// Which limit a reader waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// None: it was under both.
    No,
    /// Its own connection's (it has responses not yet written).
    Connection,
    /// Only its shard's: other connections hold the bytes.
    Shard,
}

/// One connection's limit and its shard's (a clone shares both).
#[derive(Debug, Clone)]
pub struct Budget {
    connection: Rc<Pool>,
    shard: Rc<Pool>,
}

impl Budget {
    /// A connection's budget of `per_connection` bytes, on this shard's pool of
    /// `per_shard` (set by the first connection of the shard; every connection of a server
    /// passes the same).
    pub fn new(per_connection: u64, per_shard: u64) -> Budget {
        let shard = SHARD_POOL.with(|slot| {
            slot.borrow_mut()
                .get_or_insert_with(|| Pool::new(per_shard))
                .clone()
        });
        Budget {
            connection: Pool::new(per_connection),
            shard,
        }
    }

    /// Waits until the connection's and the shard's bytes are both below their limits;
    /// says which one it waited for (the connection's, if both). `on_wait` is called once
    /// if it has to wait, with the same answer, before it does.
    pub async fn admit(&self, on_wait: impl FnOnce(Waited)) -> Waited {
        let mut waited = Waited::No;
        let mut on_wait = Some(on_wait);
        std::future::poll_fn(|cx| {
            let pool = if self.connection.over() {
                (&self.connection, Waited::Connection)
            } else if self.shard.over() {
                (&self.shard, Waited::Shard)
            } else {
                return Poll::Ready(());
            };
            if waited == Waited::No {
                READS_PAUSED.fetch_add(1, Ordering::Relaxed);
            }
            if waited != pool.1 {
                waited = pool.1;
                if let Some(on_wait) = on_wait.take() {
                    on_wait(waited);
                }
            }
            pool.0.waiting.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        waited
    }

    /// The bytes that may still be charged before either limit is reached.
    pub fn room(&self) -> u64 {
        self.connection.room().min(self.shard.room())
    }

    /// Charges `bytes` to the connection and the shard until the charge is dropped.
    pub fn charge(&self, bytes: u64) -> Charge {
        let charge = Charge {
            connection: self.connection.clone(),
            shard: self.shard.clone(),
            bytes: 0,
        };
        charge.resized(bytes)
    }
}

/// A connection's turn to answer a Fetch: one at a time, from the moment its handler
/// starts until its response is written.
#[derive(Debug, Clone, Default)]
pub struct FetchTurn(Rc<Turn>);

#[derive(Debug, Default)]
struct Turn {
    taken: Cell<bool>,
    /// The reader, waiting for the turn.
    waiting: RefCell<Option<Waker>>,
}

impl FetchTurn {
    /// Waits until no Fetch of the connection is being answered, and takes the turn.
    pub async fn take(&self) -> FetchTurnHeld {
        std::future::poll_fn(|cx| {
            if self.0.taken.get() {
                *self.0.waiting.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.0.taken.set(true);
            Poll::Ready(())
        })
        .await;
        FetchTurnHeld(self.0.clone())
    }

    /// Whether a Fetch holds the turn.
    pub fn is_taken(&self) -> bool {
        self.0.taken.get()
    }
}

/// The turn, given back when dropped.
#[derive(Debug)]
pub struct FetchTurnHeld(Rc<Turn>);

impl Drop for FetchTurnHeld {
    fn drop(&mut self) {
        self.0.taken.set(false);
        if let Some(waker) = self.0.waiting.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Bytes charged to a connection and its shard; released when dropped.
#[derive(Debug)]
pub struct Charge {
    connection: Rc<Pool>,
    shard: Rc<Pool>,
    bytes: u64,
}

impl Charge {
    /// The charge made `bytes`: more is charged at once, less released (waking readers
    /// whose limit it brings below).
    #[must_use]
    pub fn resized(mut self, bytes: u64) -> Charge {
        self.resize(bytes);
        self
    }

    fn resize(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            let more = bytes - self.bytes;
            self.connection.add(more);
            self.shard.add(more);
            IN_FLIGHT_BYTES.fetch_add(more, Ordering::Relaxed);
        } else {
            let less = self.bytes - bytes;
            self.connection.release(less);
            self.shard.release(less);
            IN_FLIGHT_BYTES.fetch_sub(less, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }

    /// The bytes charged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.resize(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_reader_waits_while_its_connection_or_shard_is_over_and_resumes_when_bytes_drain() {
        // Each test runs on its own thread, so it has its own shard pool.
        let a = Budget::new(100, 150);
        let b = Budget::new(100, 150);
        assert_eq!(a.admit(|_| {}).now_or_never(), Some(Waited::No));
        let first = a.charge(60);
        assert_eq!(a.room(), 40);
        let second = a.charge(60);
        assert_eq!((a.room(), b.room()), (0, 30));
        // `a` is over its own limit: its reader waits; `b` is not, and the shard is not.
        let mut waiting_a = Box::pin(a.admit(|waited| assert_eq!(waited, Waited::Connection)));
        assert!((&mut waiting_a).now_or_never().is_none());
        assert_eq!(b.admit(|_| {}).now_or_never(), Some(Waited::No));
        let third = b.charge(40);
        // Now the shard is over: `b` waits for it alone.
        let mut waiting_b = Box::pin(b.admit(|waited| assert_eq!(waited, Waited::Shard)));
        assert!((&mut waiting_b).now_or_never().is_none());
        drop(second);
        assert_eq!(waiting_a.now_or_never(), Some(Waited::Connection));
        assert_eq!(waiting_b.now_or_never(), Some(Waited::Shard));
        let third = third.resized(10);
        assert_eq!((a.room(), b.room()), (40, 80));
        drop((first, third));
        assert_eq!((a.room(), b.room()), (100, 100));
    }

    #[test]
    fn one_fetch_at_a_time() {
        let turn = FetchTurn::default();
        let held = turn.take().now_or_never().unwrap();
        assert!(turn.is_taken());
        let mut second = Box::pin(turn.take());
        assert!((&mut second).now_or_never().is_none());
        drop(held);
        let held = second
            .now_or_never()
            .expect("the turn passes on when given back");
        assert!(turn.is_taken());
        drop(held);
        assert!(!turn.is_taken());
    }
}
