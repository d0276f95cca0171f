//! Process-wide counters of the partition logs, read by the broker's metrics endpoint:
//! records appended, group-commit sizes (bytes and appends per group), write and fdatasync
//! latency; and [`Histogram`], the fixed-bucket histogram they and the broker's request
//! latencies are kept in.
//!
//! The appenders of every shard update these with a few relaxed atomic adds per group
//! commit or sync: no lock, no allocation. A reader sees each counter at some recent value;
//! counters are not a consistent snapshot of one another, and a histogram's `_sum` may run
//! a few observations ahead of or behind its buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::storage::PendingSync;

/// Upper bounds of the latency buckets, in nanoseconds: 50 µs to 10 s, about three per
/// decade (Prometheus' usual 1-2.5-5 steps), wide enough for a page-cache write and for
/// a long-polling fetch.
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the group-commit size buckets, in bytes: 512 B to 64 MiB, powers of 4.
pub const GROUP_BYTES_BOUNDS: [u64; 10] = [
    512,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// Upper bounds of the appends-per-group buckets: 1 to 1024, powers of 2.
pub const GROUP_APPENDS_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Records written to partition logs: the batches' record counts, counted when their group
/// commit's write completed.
pub static RECORDS_APPENDED: AtomicU64 = AtomicU64::new(0);
/// Bytes of record batches per group commit.
pub static GROUP_COMMIT_BYTES: Histogram<10> = Histogram::new(GROUP_BYTES_BOUNDS);
/// Appends (produce requests' partition data) per group commit.
pub static GROUP_COMMIT_APPENDS: Histogram<11> = Histogram::new(GROUP_APPENDS_BOUNDS);
/// Time a group commit's write took, in nanoseconds: from the group's stamping (the
/// preallocation and the copy into an aligned buffer included) to the write's completion.
pub static GROUP_COMMIT_WRITE_NS: Histogram<17> = Histogram::new(LATENCY_BOUNDS_NS);
/// Time from issuing a group commit's (or a periodic flush's) fdatasync to its completion,
/// in nanoseconds. Segment seals (trim, fdatasync, index files) are not counted.
pub static FDATASYNC_LATENCY_NS: Histogram<17> = Histogram::new(LATENCY_BOUNDS_NS);

/// A histogram with fixed upper bounds (`N` buckets and one above the last bound) kept in
/// atomics: observing a value is two relaxed atomic adds.
///
/// ```
/// use ringlog_engine::log::metrics::Histogram;
/// let sizes = Histogram::new([10, 100]);
/// sizes.observe(7);
/// sizes.observe(100);
/// sizes.observe(1000);
/// let snapshot = sizes.snapshot();
/// assert_eq!(snapshot.cumulative, vec![1, 2]);
/// assert_eq!((snapshot.count, snapshot.sum), (3, 1107));
/// ```
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    /// Observations in `(bounds[i - 1], bounds[i]]`, not cumulative.
    buckets: [AtomicU64; N],
    /// Observations above the last bound.
    overflow: AtomicU64,
    sum: AtomicU64,
}

/// A histogram's counts at one moment, as Prometheus exposes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending.
    pub bounds: Vec<u64>,
    /// Observations at or below each bound.
    pub cumulative: Vec<u64>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observed values (wrapping after 2^64, some 584 years of nanoseconds).
    pub sum: u64,
}

impl<const N: usize> Histogram<N> {
    /// A histogram with these upper bounds, which must be strictly ascending.
    pub const fn new(bounds: [u64; N]) -> Self {
        let mut index = 1;
        while index < N {
            assert!(bounds[index - 1] < bounds[index], "bounds must ascend");
            index += 1;
        }
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one value in the first bucket whose bound is at least `value`.
    pub fn observe(&self, value: u64) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        let bucket = self.buckets.get(index).unwrap_or(&self.overflow);
        bucket.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts a duration in nanoseconds (saturating at `u64::MAX`).
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The counts now, cumulative per bound.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0u64;
        let cumulative = self
            .buckets
            .iter()
            .map(|bucket| {
                running += bucket.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            cumulative,
            count: running + self.overflow.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// Counts a group commit whose write completed after `write`.
pub(crate) fn on_group_commit(bytes: u64, appends: usize, records: u64, write: Duration) {
    RECORDS_APPENDED.fetch_add(records, Ordering::Relaxed);
    GROUP_COMMIT_WRITE_NS.observe_duration(write);
    GROUP_COMMIT_BYTES.observe(bytes);
    GROUP_COMMIT_APPENDS.observe(appends as u64);
}

/// Wraps an fdatasync issued now so its completion records the latency. The sync is
/// already submitted (linked after its write), so "now" is when it started.
pub(crate) fn timed_fdatasync(sync: PendingSync) -> PendingSync {
    timed(sync, &FDATASYNC_LATENCY_NS)
}

/// Wraps `sync` so its completion records in `histogram` the time since this call.
fn timed<const N: usize>(sync: PendingSync, histogram: &'static Histogram<N>) -> PendingSync {
    let issued = Instant::now();
    Box::pin(async move {
        let result = sync.await;
        histogram.observe_duration(issued.elapsed());
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_at_or_above_them() {
        let histogram = Histogram::new([1, 10, 100]);
        for value in [0, 1, 2, 10, 11, 100, 101, u64::MAX / 2] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.bounds, vec![1, 10, 100]);
        assert_eq!(snapshot.cumulative, vec![2, 4, 6]);
        assert_eq!(snapshot.count, 8);
        assert_eq!(snapshot.sum, 225 + u64::MAX / 2);
    }

    #[test]
    fn durations_count_in_nanoseconds() {
        let histogram = Histogram::new(LATENCY_BOUNDS_NS);
        histogram.observe_duration(Duration::from_micros(70));
        histogram.observe_duration(Duration::from_secs(100));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative[0], 0);
        assert_eq!(snapshot.cumulative[1], 1, "70 µs is in the 100 µs bucket");
        assert_eq!(snapshot.cumulative[16], 1, "100 s is above every bound");
        assert_eq!(snapshot.count, 2);
        assert_eq!(snapshot.sum, 100_000_070_000);
    }

    /// A histogram of its own, so observations of the process-wide one by other tests
    /// running at the same time cannot make this pass or fail.
    static TIMED: Histogram<17> = Histogram::new(LATENCY_BOUNDS_NS);

    #[test]
    fn a_timed_sync_records_its_latency_from_issue_and_passes_its_result_on() {
        let failing: PendingSync = Box::pin(async { Err(std::io::ErrorKind::Other.into()) });
        let timed_failing = timed(failing, &TIMED);
        assert_eq!(
            TIMED.snapshot().count,
            0,
            "nothing is recorded before completion"
        );
        // The sync was submitted when it was wrapped: time before its first poll counts.
        std::thread::sleep(Duration::from_millis(20));
        let result = futures::executor::block_on(timed_failing);
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::Other);
        let snapshot = TIMED.snapshot();
        assert_eq!(snapshot.count, 1);
        assert!(snapshot.sum >= 20_000_000, "{} ns", snapshot.sum);
        assert_eq!(snapshot.bounds[7], 10_000_000);
        assert_eq!(snapshot.cumulative[7], 0, "20 ms is above the 10 ms bucket");

        let succeeding: PendingSync = Box::pin(async { Ok(()) });
        futures::executor::block_on(timed(succeeding, &TIMED)).unwrap();
        assert_eq!(
            TIMED.snapshot().count,
            2,
            "a successful sync is counted too"
        );
    }
}
