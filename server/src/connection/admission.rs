//! Which connections the broker takes, decided as each is accepted: at most
//! `max_connections` in all, `max_connections_per_ip` from one address, and
//! [`CONNECTIONS_PER_SHARD_MAX`] on the shard that accepted it (each connection keeps a
//! receive in its shard's ring, see `limits.rs`). A connection over a limit is closed at
//! once, before a byte of it is read; every refusal is counted by reason
//! (`ringlog_connections_refused_total`), and logged at most once per
//! [`REFUSALS_LOG_INTERVAL_MS`] with the counts so far, so a client retrying in a loop
//! cannot flood the log.
//!
//! An [`Admitted`] connection holds its place until it is dropped, on the shard that
//! accepted it. The process-wide count is an atomic; the per-address counts are a map
//! behind a mutex, taken once per accept and once per close and only when
//! `max_connections_per_ip` is set; the shard's count is the shard's own.

use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::limits::{CONNECTIONS_PER_SHARD_MAX, REFUSALS_LOG_INTERVAL_MS};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` connections are open.
    MaxConnections,
    /// `max_connections_per_ip` connections from its address are open.
    MaxConnectionsPerIp,
    /// The shard that accepted it holds [`CONNECTIONS_PER_SHARD_MAX`] connections.
    ShardFull,
}

impl Refusal {
    /// Every reason, in the order of [`REFUSED`].
    pub const ALL: [Refusal; 3] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerIp,
        Refusal::ShardFull,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
            Refusal::ShardFull => "shard_full",
        }
    }

    /// Refusals so far for this reason, all servers of the process together.
    pub fn count(self) -> u64 {
        REFUSED[self as usize].load(Ordering::Relaxed)
    }
}

/// Refusals per reason ([`Refusal::ALL`] order).
static REFUSED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// Connections open, all servers of the process together (the metrics' gauge).
pub static CONNECTIONS_OPEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Connections this shard holds.
    static SHARD_CONNECTIONS: Cell<usize> = const { Cell::new(0) };
}

/// The limits and counts of one server.
#[derive(Debug)]
pub struct ConnectionLimits {
    max: usize,
    max_per_ip: Option<usize>,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// When the next refusal may be logged, in ms since `started`.
    next_log_ms: AtomicU64,
    started: Instant,
}

impl ConnectionLimits {
    pub fn new(max: usize, max_per_ip: Option<usize>) -> ConnectionLimits {
        ConnectionLimits {
            max,
            max_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            next_log_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The most connections held at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a place for a connection from `ip` on the calling shard, or says which limit
    /// refuses it (counted and, at most once per interval, logged).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let admitted = self.try_admit(ip);
        if let Err(refusal) = admitted {
            REFUSED[refusal as usize].fetch_add(1, Ordering::Relaxed);
            self.log_refusal(refusal, ip);
        }
        admitted
    }

    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        if SHARD_CONNECTIONS.get() >= CONNECTIONS_PER_SHARD_MAX {
            return Err(Refusal::ShardFull);
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::MaxConnections);
        }
        if let Some(max_per_ip) = self.max_per_ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= max_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::MaxConnectionsPerIp);
            }
            *count += 1;
        }
        SHARD_CONNECTIONS.set(SHARD_CONNECTIONS.get() + 1);
        CONNECTIONS_OPEN.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            limits: self.clone(),
            ip,
            shard_local: PhantomData,
        })
    }

    /// Logs a refusal unless one was logged less than an interval ago.
    fn log_refusal(&self, refusal: Refusal, ip: IpAddr) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let next = self.next_log_ms.load(Ordering::Relaxed);
        let won = now_ms >= next
            && self
                .next_log_ms
                .compare_exchange(
                    next,
                    now_ms + REFUSALS_LOG_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if !won {
            return;
        }
        let limit = match refusal {
            Refusal::MaxConnections => self.max,
            Refusal::MaxConnectionsPerIp => self.max_per_ip.unwrap_or(usize::MAX),
            Refusal::ShardFull => CONNECTIONS_PER_SHARD_MAX,
        };
        tracing::warn!(
            reason = refusal.label(),
            limit,
            %ip,
            refused_max_connections = Refusal::MaxConnections.count(),
            refused_max_connections_per_ip = Refusal::MaxConnectionsPerIp.count(),
            refused_shard_full = Refusal::ShardFull.count(),
            "connection refused: a connection limit is reached (logged at most every {} s; \
             ringlog_connections_refused_total counts every refusal)",
            REFUSALS_LOG_INTERVAL_MS / 1000
        );
    }
}

/// A connection's place, given back when dropped. It stays on the shard that accepted the
/// connection (it is `!Send`), whose count it is part of.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
    shard_local: PhantomData<*const ()>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        SHARD_CONNECTIONS.set(SHARD_CONNECTIONS.get().saturating_sub(1));
        CONNECTIONS_OPEN.fetch_sub(1, Ordering::Relaxed);
        if self.limits.max_per_ip.is_some() {
            let mut per_ip = self
                .limits
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_total_and_per_address_limits_refuse_and_free_their_places() {
        let limits = Arc::new(ConnectionLimits::new(3, Some(2)));
        let refused_before = Refusal::MaxConnectionsPerIp.count();
        let a1 = limits.admit(A).unwrap();
        let _a2 = limits.admit(A).unwrap();
        assert_eq!(limits.admit(A).unwrap_err(), Refusal::MaxConnectionsPerIp);
        assert!(Refusal::MaxConnectionsPerIp.count() > refused_before);
        let b1 = limits.admit(B).unwrap();
        assert_eq!(limits.admit(B).unwrap_err(), Refusal::MaxConnections);
        drop(a1);
        let _a3 = limits.admit(A).unwrap();
        drop(b1);
        assert_eq!(limits.open.load(Ordering::Relaxed), 2);
        assert_eq!(
            limits.per_ip.lock().unwrap().get(&B),
            None,
            "emptied entries go"
        );
        assert_eq!(SHARD_CONNECTIONS.get(), 2);
    }

    #[test]
    fn a_full_shard_refuses_whatever_the_total_allows() {
        let limits = Arc::new(ConnectionLimits::new(usize::MAX, None));
        let held: Vec<Admitted> = (0..CONNECTIONS_PER_SHARD_MAX)
            .map(|_| limits.admit(A).unwrap())
            .collect();
        assert_eq!(limits.admit(B).unwrap_err(), Refusal::ShardFull);
        drop(held);
        assert!(limits.admit(B).is_ok());
    }
}
