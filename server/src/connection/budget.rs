//! In-flight bytes: what a connection, and all connections of a shard together, hold
//! between reading a request and writing the last byte of its response.
//!
//! A request's frame is charged once its 4-byte size is read, before its body is received
//! into memory, and stays charged until its response is written; a response's bytes
//! (encoded, plus the record bytes of a fetch) are charged from the moment its handler
//! produced them until they are written. A connection receives the body of its next
//! request only when that request fits ([`Budget::admit`]); until then it stops reading —
//! backpressure, not an error — and waits for responses to drain. A request fits when:
//!
//! - the connection's own bytes stay within `max_in_flight_bytes_per_connection` with it
//!   (or the connection holds nothing: a request larger than the limit is read alone);
//! - and the shard's bytes stay within `max_in_flight_bytes_per_shard` with it (or the
//!   shard holds nothing), *or* the connection's bytes stay within its fair share of the
//!   shard's limit (the limit divided by the connections on the shard). The fair share
//!   means that connections which stopped reading their responses can fill their own
//!   limits and the shard's, but not take every other connection's share: a client that
//!   reads its responses keeps being served. It also bounds the shard: the connections
//!   over the shard's limit each hold at most their share, so the shard holds at most
//!   twice its limit (and one request read alone).
//!
//! A client that never reads its responses therefore stops being read once it holds its
//! connection's limit, and holds no more than that (plus one batch, see below) until the
//! idle timeout closes it as stalled.
//!
//! A fetch asks [`Budget::room`] before it reads and reads no more than that, so the bytes
//! it brings into memory are charged before they exist; with no room left it still gets
//! its first batch, as Kafka promises. A connection answers one Fetch at a time
//! ([`FetchTurn`]: the reader holds a second Fetch until the first one's response is
//! written, as Kafka answers one request per connection at a time and Kafka clients keep
//! one Fetch in flight per broker), so a connection is over its limit by at most one
//! batch. Handlers never wait for room (only the reader does, before the next request's
//! body), so a handler cannot wait for bytes that only its own connection's later
//! responses would free.
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
/// shard's in-flight bytes had no room for the next request, or a Fetch waited for the
/// one before it ([`FetchTurn`]).
pub static READS_PAUSED: AtomicU64 = AtomicU64::new(0);

/// Bytes held against one limit, and the readers waiting for them to drain.
#[derive(Debug)]
struct Pool {
    used: Cell<u64>,
    limit: u64,
    waiting: RefCell<Vec<Waker>>,
}

impl Pool {
    fn new(limit: u64) -> Pool {
        Pool {
            used: Cell::new(0),
            limit,
            waiting: RefCell::new(Vec::new()),
        }
    }

    /// Whether `bytes` more stay within the limit, or nothing is held (so a request
    /// larger than the limit is read alone rather than never).
    fn fits(&self, bytes: u64) -> bool {
        self.used.get() == 0 || self.used.get() + bytes <= self.limit
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
        for waker in self.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// A shard's pool and the connections sharing it.
#[derive(Debug)]
struct Shard {
    pool: Pool,
    connections: Cell<u64>,
}

impl Shard {
    /// A connection's fair share of the shard's limit.
    fn share(&self) -> u64 {
        self.pool.limit / self.connections.get().max(1)
    }
}

thread_local! {
    /// This shard's pool, made by its first connection with the server's limit.
    static SHARD: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// One connection's pool, counted among its shard's connections while it lives.
#[derive(Debug)]
struct Connection {
    pool: Pool,
    shard: Rc<Shard>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shard.connections.set(self.shard.connections.get() - 1);
    }
}

/// Which limit a reader waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// None: the request fit.
    No,
    /// Its own connection's (it has responses not yet written).
    Connection,
    /// Its shard's: other connections hold the bytes, and the connection holds its share.
    Shard,
}

/// One connection's limit and its shard's (a clone shares both).
#[derive(Debug, Clone)]
pub struct Budget(Rc<Connection>);

impl Budget {
    /// A connection's budget of `per_connection` bytes, on this shard's pool of
    /// `per_shard` (set by the first connection of the shard; every connection of a server
    /// passes the same).
    pub fn new(per_connection: u64, per_shard: u64) -> Budget {
        let shard = SHARD.with(|slot| {
            let mut slot = slot.borrow_mut();
            let shard = slot.get_or_insert_with(|| {
                Rc::new(Shard {
                    pool: Pool::new(per_shard),
                    connections: Cell::new(0),
                })
            });
            shard.clone()
        });
        shard.connections.set(shard.connections.get() + 1);
        Budget(Rc::new(Connection {
            pool: Pool::new(per_connection),
            shard,
        }))
    }

    /// Whether a request of `bytes` fits now (see the module doc), or which limit it
    /// waits for.
    fn fits(&self, bytes: u64) -> Waited {
        let (connection, shard) = (&self.0.pool, &self.0.shard);
        if !connection.fits(bytes) {
            return Waited::Connection;
        }
        if shard.pool.fits(bytes) || connection.used.get() + bytes <= shard.share() {
            return Waited::No;
        }
        Waited::Shard
    }

    /// Waits until a request of `bytes` fits; says which limit it waited for last (none
    /// if it fit at once). `on_wait` is called each time the limit it waits for changes,
    /// before it waits.
    pub async fn admit(&self, bytes: u64, mut on_wait: impl FnMut(Waited)) -> Waited {
        let mut waited = Waited::No;
        std::future::poll_fn(|cx| {
            let now = self.fits(bytes);
            if now == Waited::No {
                return Poll::Ready(());
            }
            if waited == Waited::No {
                READS_PAUSED.fetch_add(1, Ordering::Relaxed);
            }
            if waited != now {
                waited = now;
                on_wait(now);
            }
            // Either pool's bytes draining may let it in (its own share grows as its own
            // bytes drain).
            self.0.pool.waiting.borrow_mut().push(cx.waker().clone());
            let shard = &self.0.shard.pool;
            shard.waiting.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        waited
    }

    /// The bytes that may still be charged: what the connection's limit leaves, and no
    /// more than the shard's limit or the connection's fair share leaves.
    pub fn room(&self) -> u64 {
        let (connection, shard) = (&self.0.pool, &self.0.shard);
        let share = shard.share().saturating_sub(connection.used.get());
        connection.room().min(shard.pool.room().max(share))
    }

    /// Charges `bytes` to the connection and the shard until the charge is dropped.
    pub fn charge(&self, bytes: u64) -> Charge {
        let charge = Charge {
            budget: self.0.clone(),
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
    budget: Rc<Connection>,
    bytes: u64,
}

impl Charge {
    /// The charge made `bytes`: more is charged at once, less released (waking readers
    /// waiting for room).
    #[must_use]
    pub fn resized(mut self, bytes: u64) -> Charge {
        self.resize(bytes);
        self
    }

    fn resize(&mut self, bytes: u64) {
        let (connection, shard) = (&self.budget.pool, &self.budget.shard.pool);
        if bytes >= self.bytes {
            let more = bytes - self.bytes;
            connection.add(more);
            shard.add(more);
            IN_FLIGHT_BYTES.fetch_add(more, Ordering::Relaxed);
        } else {
            let less = self.bytes - bytes;
            connection.release(less);
            shard.release(less);
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
    fn a_request_waits_until_it_fits_its_connection_and_its_shard_or_its_share() {
        // Each test runs on its own thread, so it has its own shard.
        let a = Budget::new(100, 150);
        let b = Budget::new(100, 150);
        // Two connections: a share of 75 each.
        assert_eq!(a.fits(100), Waited::No);
        let first = a.charge(60);
        assert_eq!(a.room(), 40);
        assert_eq!(a.fits(41), Waited::Connection);
        let second = a.charge(40);
        assert_eq!((a.room(), b.room()), (0, 75));
        // `a` is at its own limit: its reader waits.
        let mut waiting_a = Box::pin(a.admit(10, |waited| assert_eq!(waited, Waited::Connection)));
        assert!((&mut waiting_a).now_or_never().is_none());
        let third = b.charge(50);
        // The shard is full, but `b` holds less than its share of 75: it is still read.
        assert_eq!(b.fits(25), Waited::No);
        assert_eq!(b.room(), 25);
        assert_eq!(b.fits(26), Waited::Shard);
        let mut waiting_b = Box::pin(b.admit(30, |waited| assert_eq!(waited, Waited::Shard)));
        assert!((&mut waiting_b).now_or_never().is_none());
        drop(second);
        assert_eq!(waiting_a.now_or_never(), Some(Waited::Connection));
        assert_eq!(waiting_b.now_or_never(), Some(Waited::Shard));
        let third = third.resized(10);
        assert_eq!((a.room(), b.room()), (40, 80));
        drop((first, third));
        assert_eq!((a.room(), b.room()), (100, 100));
        // A request larger than every limit is read when nothing is held.
        assert_eq!(a.fits(1000), Waited::No);
        // A connection gone leaves its share to the others.
        drop(a);
        assert_eq!(b.0.shard.share(), 150);
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
