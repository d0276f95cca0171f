//! Preallocation fitted to the disk: a node-wide budget of bytes preallocated ahead of
//! segment tails but not yet written ([`PreallocBudget`]), and each partition's step,
//! which grows with the partition's write rate and shrinks under the budget (`Prealloc`).
//!
//! Preallocating (`fallocate`) ahead of the tail spares each write the file system's block
//! allocation, but every byte preallocated is taken from the disk until it is written, or
//! trimmed when its segment is sealed. A fixed step does not fit a node with many
//! partitions: 2,000 partitions at 64 MiB each ask for 128 GB.
//!
//! **The budget.** Over all partitions of a node, preallocated-but-unwritten bytes are held
//! to the *cap*: the data directory's free space plus those bytes (which the file system
//! already counts as used), divided by [`PREALLOCATE_BUDGET_FREE_SPACE_DIVISOR`]. The free
//! space is read (statvfs) at most every [`FREE_SPACE_REFRESH_MS`], by the grant that finds
//! the figure stale. A grant is the least of what the partition asks, the room left under
//! the cap, and the partition's fair share (the cap divided by the logs holding the
//! budget), but never less than what the group being written needs: those bytes are
//! written at once, and only the disk may refuse them. Since a log asks again only once it
//! has written through its last grant, the fair share alone keeps the total near the cap;
//! the room check keeps it there when the cap falls. The ledger is one atomic counter,
//! charged by compare-and-swap so that two shards cannot both take the last room: no lock
//! on the append path.
//!
//! **The step**, per partition. It starts at [`PREALLOCATE_STEP_MIN_BYTES`]. A partition
//! that needs its next preallocation within [`PREALLOCATE_STEP_GROW_WITHIN_MS`] of the
//! previous one is writing fast: its step doubles, up to the topic's
//! `ringlog.preallocate.bytes`. A grant smaller than asked halves it, down to the minimum.
//! A new segment's first preallocation is the partition's current step; no preallocation
//! reaches past `segment.bytes`, where the segment rolls. A `ringlog.preallocate.bytes` of
//! 0 preallocates only what each group needs.
//!
//! **The accounting.** A log's charge is exactly its active segment's preallocated bytes
//! past the end of what it has written: a grant adds to it, each group takes its own bytes
//! out as its write is issued, and sealing the segment (roll, close) or cutting it
//! (truncation) returns the rest, as does dropping the log. Closed segments were trimmed at
//! their seal, so deleting them (retention, DeleteRecords) owes the budget nothing. A
//! failed fallocate returns its grant.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::{
    FREE_SPACE_REFRESH_MS, PREALLOCATE_BUDGET_FREE_SPACE_DIVISOR, PREALLOCATE_STEP_GROW_WITHIN_MS,
    PREALLOCATE_STEP_MIN_BYTES,
};

/// Reads the free bytes of the file system the logs live on.
type FreeSpace = Box<dyn Fn() -> io::Result<u64> + Send + Sync>;

/// The node-wide budget of preallocated, unwritten bytes (see the module doc). Clones
/// share one ledger; it is `Send + Sync`, so the logs of every shard hold clones of one.
///
/// ```
/// use ringlog_engine::log::PreallocBudget;
///
/// // A disk with 1 GiB free: a quarter of it may be preallocated ahead of the tails.
/// let budget = PreallocBudget::with_free_space(|| Ok(1 << 30));
/// assert_eq!(budget.cap_bytes(), 256 << 20);
/// assert_eq!(budget.reserved_bytes(), 0);
/// ```
#[derive(Clone)]
pub struct PreallocBudget {
    ledger: Arc<Ledger>,
}

struct Ledger {
    /// Bytes granted and neither written nor returned yet, over all logs.
    reserved_bytes: AtomicU64,
    /// The most `reserved_bytes` may reach through grants beyond what groups need.
    cap_bytes: AtomicU64,
    /// Logs holding the budget; the fair share of one is the cap divided by them.
    logs: AtomicU64,
    /// When the cap was last computed, in milliseconds since `epoch`.
    refreshed_ms: AtomicU64,
    epoch: Instant,
    /// `None` for a budget without a cap.
    free_space: Option<FreeSpace>,
}

impl fmt::Debug for PreallocBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreallocBudget")
            .field("reserved_bytes", &self.reserved_bytes())
            .field("cap_bytes", &self.cap_bytes())
            .field("logs", &self.logs())
            .finish_non_exhaustive()
    }
}

impl PreallocBudget {
    /// A budget over the free space of the file system holding `data_dir`.
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> PreallocBudget {
        let data_dir = data_dir.into();
        PreallocBudget::with_free_space(move || crate::rt::free_space_bytes(&data_dir))
    }

    /// A budget over the free space `free_space` reports, read now and then at most every
    /// [`FREE_SPACE_REFRESH_MS`]. Until a read succeeds the cap is 0: every partition then
    /// preallocates only what its groups need.
    pub fn with_free_space(
        free_space: impl Fn() -> io::Result<u64> + Send + Sync + 'static,
    ) -> PreallocBudget {
        let budget = PreallocBudget::new(Some(Box::new(free_space)), 0);
        budget.refresh();
        budget
    }

    /// A budget without a cap, for a log opened on its own: its step still adapts, and its
    /// charge is still counted.
    pub fn unlimited() -> PreallocBudget {
        PreallocBudget::new(None, u64::MAX)
    }

    fn new(free_space: Option<FreeSpace>, cap_bytes: u64) -> PreallocBudget {
        PreallocBudget {
            ledger: Arc::new(Ledger {
                reserved_bytes: AtomicU64::new(0),
                cap_bytes: AtomicU64::new(cap_bytes),
                logs: AtomicU64::new(0),
                refreshed_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                free_space,
            }),
        }
    }

    /// Bytes preallocated and not yet written, over every log holding the budget.
    pub fn reserved_bytes(&self) -> u64 {
        self.ledger.reserved_bytes.load(Relaxed)
    }

    /// The most that grants beyond what groups need may bring
    /// [`reserved_bytes`](Self::reserved_bytes) to.
    pub fn cap_bytes(&self) -> u64 {
        self.ledger.cap_bytes.load(Relaxed)
    }

    /// Logs holding the budget.
    pub fn logs(&self) -> u64 {
        self.ledger.logs.load(Relaxed)
    }

    /// Reads the free space now and recomputes the cap. A failed read keeps the cap as it
    /// was: a stale figure is closer to the truth than none.
    pub fn refresh(&self) {
        let Some(free_space) = &self.ledger.free_space else {
            return;
        };
        match free_space() {
            Ok(free_bytes) => {
                let usable = free_bytes.saturating_add(self.reserved_bytes());
                let cap = usable / PREALLOCATE_BUDGET_FREE_SPACE_DIVISOR;
                self.ledger.cap_bytes.store(cap, Relaxed);
            }
            Err(error) => {
                tracing::warn!(%error, "free space unknown; preallocation budget not refreshed");
            }
        }
    }

    /// Refreshes the cap if the last refresh is older than [`FREE_SPACE_REFRESH_MS`]; of
    /// two shards that notice at once, one does it.
    fn refresh_if_due(&self) {
        if self.ledger.free_space.is_none() {
            return;
        }
        let now_ms = u64::try_from(self.ledger.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last_ms = self.ledger.refreshed_ms.load(Relaxed);
        if now_ms.saturating_sub(last_ms) < FREE_SPACE_REFRESH_MS {
            return;
        }
        let refreshed = self
            .ledger
            .refreshed_ms
            .compare_exchange(last_ms, now_ms, Relaxed, Relaxed);
        if refreshed.is_ok() {
            self.refresh();
        }
    }

    /// Charges and returns between `need` and `want` bytes: `want` if the room under the
    /// cap and the fair share allow it, less if not, but never less than `need`.
    fn grant(&self, want: u64, need: u64) -> u64 {
        assert!(need <= want, "a grant asks for at least what it needs");
        self.refresh_if_due();
        let cap = self.cap_bytes();
        let share = cap / self.logs().max(1);
        let ledger = &self.ledger.reserved_bytes;
        let mut reserved = ledger.load(Relaxed);
        loop {
            let room = cap.saturating_sub(reserved);
            let granted = want.min(room).min(share).max(need);
            let Some(charged) = reserved.checked_add(granted) else {
                unreachable!("the ledger counts bytes of files: it cannot reach 2^64");
            };
            match ledger.compare_exchange_weak(reserved, charged, Relaxed, Relaxed) {
                Ok(_) => return granted,
                Err(now) => reserved = now,
            }
        }
    }

    /// Charges `bytes` that no grant covered.
    fn charge(&self, bytes: u64) {
        self.ledger.reserved_bytes.fetch_add(bytes, Relaxed);
    }

    /// Returns `bytes` that were charged and are now written or gone.
    fn release(&self, bytes: u64) {
        let before = self.ledger.reserved_bytes.fetch_sub(bytes, Relaxed);
        assert!(
            before >= bytes,
            "released {bytes} bytes of a ledger holding {before}"
        );
    }
}

/// One log's side of the budget: its step and its charge (see the module doc). It lives
/// in the log's `Shared`, on the log's shard.
pub(crate) struct Prealloc {
    budget: PreallocBudget,
    /// The step the next preallocation asks for (before the topic's maximum caps it).
    step_bytes: Cell<u64>,
    /// What this log holds of the budget's reserved bytes.
    charged_bytes: Cell<u64>,
    /// When this log was last granted a preallocation.
    granted_last: Cell<Option<Instant>>,
}

impl Prealloc {
    pub(crate) fn new(budget: PreallocBudget) -> Prealloc {
        budget.ledger.logs.fetch_add(1, Relaxed);
        Prealloc {
            budget,
            step_bytes: Cell::new(PREALLOCATE_STEP_MIN_BYTES),
            charged_bytes: Cell::new(0),
            granted_last: Cell::new(None),
        }
    }

    /// The bytes to preallocate now, charged to the budget: the current step (at most
    /// `step_max`, the topic's `ringlog.preallocate.bytes`, and at most `room_in_segment`)
    /// as far as the budget grants it, but at least `need`. Then adapts the step.
    pub(crate) fn grant(
        &self,
        need: u64,
        step_max: u64,
        room_in_segment: u64,
        now: Instant,
    ) -> u64 {
        let step = step_clamped(self.step_bytes.get(), step_max);
        let want = step.min(room_in_segment).max(need);
        let granted = self.budget.grant(want, need);
        self.charged_bytes.set(self.charged_bytes.get() + granted);
        let within = Duration::from_millis(PREALLOCATE_STEP_GROW_WITHIN_MS);
        let granted_last = self.granted_last.replace(Some(now));
        let fast = granted_last.is_some_and(|last| now.duration_since(last) <= within);
        self.step_bytes
            .set(step_next(step, step_max, granted < want, fast));
        granted
    }

    /// Returns `bytes` of this log's charge: a grant the disk refused, or bytes written.
    pub(crate) fn give_back(&self, bytes: u64) {
        let charged = self.charged_bytes.get();
        assert!(
            bytes <= charged,
            "gave back {bytes} bytes of a charge of {charged}"
        );
        self.charged_bytes.set(charged - bytes);
        self.budget.release(bytes);
    }

    /// Brings the charge to the active segment's `allocated` bytes past `written_end`, the
    /// end of what has been written (or is being written) to it.
    pub(crate) fn settle(&self, allocated: u64, written_end: u64) {
        let beyond = allocated.saturating_sub(written_end);
        let charged = self.charged_bytes.get();
        if beyond <= charged {
            self.give_back(charged - beyond);
            return;
        }
        // Grants grow `allocated` and the charge alike, so only a file that was longer
        // than the log made it (a segment file that a failed removal left at the base of
        // a new segment) gets here: its bytes are preallocated all the same.
        self.budget.charge(beyond - charged);
        self.charged_bytes.set(beyond);
    }

    /// The active segment was cut to what it holds (sealed, truncated): the whole charge
    /// goes back.
    pub(crate) fn release_all(&self) {
        self.give_back(self.charged_bytes.get());
    }

    #[cfg(test)]
    pub(crate) fn step_bytes(&self) -> u64 {
        self.step_bytes.get()
    }

    #[cfg(test)]
    pub(crate) fn charged_bytes(&self) -> u64 {
        self.charged_bytes.get()
    }
}

impl Drop for Prealloc {
    fn drop(&mut self) {
        // A log dropped without a close (or whose seal failed) still owes its charge.
        self.release_all();
        self.budget.ledger.logs.fetch_sub(1, Relaxed);
    }
}

/// `step` within what the topic allows: at most `step_max`, at least the minimum step
/// (or `step_max`, if that is smaller).
fn step_clamped(step: u64, step_max: u64) -> u64 {
    step.clamp(PREALLOCATE_STEP_MIN_BYTES.min(step_max), step_max)
}

/// The step after a grant of `step`: halved if the budget granted less than asked
/// (`pressed`), doubled if the grant came soon after the previous one (`fast`).
fn step_next(step: u64, step_max: u64, pressed: bool, fast: bool) -> u64 {
    let next = if pressed {
        step / 2
    } else if fast {
        step.saturating_mul(2)
    } else {
        step
    };
    step_clamped(next, step_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn budget_of(free_bytes: u64) -> PreallocBudget {
        PreallocBudget::with_free_space(move || Ok(free_bytes))
    }

    #[test]
    fn the_cap_is_a_fraction_of_free_space_and_reserved_bytes() {
        let free = Arc::new(AtomicU64::new(400 * MIB));
        let budget = {
            let free = free.clone();
            PreallocBudget::with_free_space(move || Ok(free.load(Relaxed)))
        };
        assert_eq!(
            budget.cap_bytes(),
            400 * MIB / PREALLOCATE_BUDGET_FREE_SPACE_DIVISOR
        );
        let log = Prealloc::new(budget.clone());
        let granted = log.grant(4096, 64 * MIB, u64::MAX, Instant::now());
        assert_eq!(granted, PREALLOCATE_STEP_MIN_BYTES);
        // The file system counts the granted bytes as used; the cap does not shrink by them.
        free.store(400 * MIB - granted, Relaxed);
        budget.refresh();
        assert_eq!(
            budget.cap_bytes(),
            400 * MIB / PREALLOCATE_BUDGET_FREE_SPACE_DIVISOR
        );
        // A failed read keeps the last cap.
        let failing = PreallocBudget::with_free_space(|| Err(io::Error::other("no statvfs")));
        assert_eq!(failing.cap_bytes(), 0);
    }

    #[test]
    fn a_grant_is_capped_by_room_and_share_but_never_below_need() {
        let budget = budget_of(16 * MIB);
        let cap = budget.cap_bytes();
        assert_eq!(cap, 4 * MIB);
        let logs: Vec<Prealloc> = (0..3).map(|_| Prealloc::new(budget.clone())).collect();
        assert_eq!(budget.logs(), 3);
        let now = Instant::now();
        // The share is a third of the cap, below the 1 MiB step only for 4 logs or more.
        assert_eq!(logs[0].grant(4096, 64 * MIB, u64::MAX, now), MIB);
        // The room in the segment limits what is asked.
        assert_eq!(logs[1].grant(4096, 64 * MIB, 8192, now), 8192);
        let big = 3 * MIB;
        assert_eq!(
            logs[2].grant(big, 64 * MIB, u64::MAX, now),
            big,
            "need always"
        );
        assert_eq!(budget.reserved_bytes(), MIB + 8192 + big);
        // The cap is passed; only needs are granted now.
        assert_eq!(logs[1].grant(4096, 64 * MIB, u64::MAX, now), 4096);
        drop(logs);
        assert_eq!(
            budget.reserved_bytes(),
            0,
            "dropped logs return their charge"
        );
        assert_eq!(budget.logs(), 0);
    }

    #[test]
    fn many_logs_share_a_small_cap() {
        let budget = budget_of(64 * MIB);
        let logs: Vec<Prealloc> = (0..2000).map(|_| Prealloc::new(budget.clone())).collect();
        let now = Instant::now();
        for log in &logs {
            let granted = log.grant(512, 64 * MIB, u64::MAX, now);
            assert!((512..MIB).contains(&granted), "{granted}");
        }
        assert!(budget.reserved_bytes() <= budget.cap_bytes());
        assert!(
            budget.reserved_bytes() > budget.cap_bytes() / 2,
            "{budget:?}"
        );
    }

    #[test]
    fn the_step_doubles_when_written_through_fast_and_halves_under_pressure() {
        let budget = PreallocBudget::unlimited();
        let log = Prealloc::new(budget.clone());
        let start = Instant::now();
        let slow = Duration::from_millis(PREALLOCATE_STEP_GROW_WITHIN_MS + 1);
        let fast = Duration::from_millis(PREALLOCATE_STEP_GROW_WITHIN_MS / 4);
        let max = 8 * MIB;
        let mut now = start;
        assert_eq!(
            log.grant(4096, max, u64::MAX, now),
            MIB,
            "the first step is small"
        );
        for expected in [2 * MIB, 4 * MIB, 8 * MIB, 8 * MIB] {
            now += fast;
            log.grant(4096, max, u64::MAX, now);
            assert_eq!(log.step_bytes(), expected);
        }
        now += slow;
        log.grant(4096, max, u64::MAX, now);
        assert_eq!(log.step_bytes(), max, "a slow partition keeps its step");
        // Pressure halves, down to the minimum.
        for expected in [4 * MIB, 2 * MIB, MIB, MIB] {
            assert_eq!(step_next(log.step_bytes(), max, true, true), expected);
            log.step_bytes.set(expected);
        }
        // The topic's maximum bounds the step, and 0 turns preallocation off.
        assert_eq!(log.grant(4096, 512 << 10, u64::MAX, now), 512 << 10);
        assert_eq!(log.grant(100, 0, u64::MAX, now), 100);
        assert_eq!(
            log.grant(4096, max, u64::MAX, now),
            MIB,
            "back to the minimum step"
        );
        assert_eq!(log.charged_bytes(), budget.reserved_bytes());
    }

    #[test]
    fn settling_returns_written_bytes_and_release_returns_the_rest() {
        let budget = budget_of(1 << 40);
        let log = Prealloc::new(budget.clone());
        let granted = log.grant(4096, 64 * MIB, u64::MAX, Instant::now());
        log.settle(granted, 1000);
        assert_eq!(budget.reserved_bytes(), granted - 1000);
        log.settle(granted, granted - 10);
        assert_eq!(budget.reserved_bytes(), 10);
        // A file longer than the grants made it: its bytes past the end count too.
        log.settle(granted + 4096, granted - 10);
        assert_eq!(budget.reserved_bytes(), 4106);
        log.release_all();
        assert_eq!((budget.reserved_bytes(), log.charged_bytes()), (0, 0));
    }

    #[test]
    fn concurrent_grants_from_two_threads_stay_under_the_cap() {
        let budget = budget_of(64 * MIB);
        let cap = budget.cap_bytes();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let logs: Vec<Prealloc> =
                        (0..64).map(|_| Prealloc::new(budget.clone())).collect();
                    for log in &logs {
                        log.grant(0, 64 * MIB, u64::MAX, Instant::now());
                    }
                    let most = budget.reserved_bytes();
                    drop(logs);
                    most
                })
            })
            .collect();
        for thread in threads {
            let most = thread.join().unwrap();
            assert!(most <= cap, "{most} reserved over a cap of {cap}");
        }
        assert_eq!(budget.reserved_bytes(), 0);
    }
}
