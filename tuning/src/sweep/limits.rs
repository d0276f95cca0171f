//! The node's limits, measured before the sweep with the load generator's probes on the
//! data directory's file system, so that every point can be read as a ratio to what the
//! hardware allows in the same run; and the memory warm-up before the first point.
//!
//! - sequential writes, 1 MiB blocks at queue depth 8, O_DIRECT and buffered (each ends
//!   with one fsync, as fio's `end_fsync=1`);
//! - write + fdatasync at several sizes, O_DIRECT, one sync per write, with as many writers
//!   as the sweep has partitions: the limit of a configuration that fdatasyncs every group
//!   commit, at the group size it writes;
//! - loopback TCP, one way, 64 KiB messages: the limit of any produce over the network.

use std::path::Path;

use ringlog_bench::error::BenchError;
use ringlog_bench::probe::tcp_echo::{self, ClientPlacement, TcpEchoArgs};
use ringlog_bench::probe::write::{self, WriteArgs};
use ringlog_engine::topic::IoMode;
use serde::Serialize;

/// Bytes each sequential-write probe writes.
const SEQUENTIAL_PROBE_BYTES: u64 = 1 << 30;
/// The write+fdatasync probe's sizes, from a small group commit to a large one.
pub const SYNC_PROBE_SIZES_BYTES: [u64; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
/// fdatasyncs per write+fdatasync probe size (enough for a stable mean, about a second on
/// a disk whose cache flush takes a few ms) ...
const SYNC_PROBE_SYNCS: u64 = 192;
/// ... and at least this many bytes, so that the small sizes are not over before the disk
/// settles (64 KiB × 1,024 syncs).
const SYNC_PROBE_BYTES_MIN: u64 = 64 << 20;
/// How long the loopback TCP probe sends.
const TCP_PROBE_SECONDS: f64 = 2.0;
/// The most memory the warm-up touches, and what it leaves the kernel.
const WARM_RESERVE_BYTES: u64 = 1 << 30;

/// What the probes measured. MB are 10^6 bytes.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    pub direct_write_mb_per_s: Option<f64>,
    pub buffered_write_mb_per_s: f64,
    /// Write + fdatasync at each of [`SYNC_PROBE_SIZES_BYTES`], O_DIRECT (or buffered where
    /// O_DIRECT is refused).
    pub sync_writes: Vec<SyncWrite>,
    pub tcp_one_way_mb_per_s: f64,
    /// Bytes the warm-up touched.
    pub warmed_bytes: u64,
}

/// One write+fdatasync probe.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SyncWrite {
    pub size_bytes: u64,
    pub mb_per_s: f64,
    /// Mean time of one write and its fdatasync, per writer.
    pub latency_ms: f64,
}

impl Limits {
    /// Runs every probe in `dir` (on the data directory's file system); `writers` is the
    /// sweep's partition count; `(direct, fallocate)` whether O_DIRECT and fallocate work
    /// there.
    pub fn measure(
        dir: &Path,
        writers: u32,
        (direct, fallocate): (bool, bool),
        step: &mut dyn FnMut(&str),
    ) -> Result<Limits, BenchError> {
        step("probe: O_DIRECT sequential writes");
        let direct_write_mb_per_s = if direct {
            Some(sequential(dir, true)?)
        } else {
            None
        };
        step("probe: buffered sequential writes");
        let buffered_write_mb_per_s = sequential(dir, false)?;
        let mut sync_writes = Vec::new();
        for size_bytes in SYNC_PROBE_SIZES_BYTES {
            step(&format!(
                "probe: write+fdatasync of {}",
                super::grid::size_label(size_bytes)
            ));
            sync_writes.push(sync_write(dir, (direct, fallocate), size_bytes, writers)?);
        }
        step("probe: loopback TCP");
        let tcp = tcp_echo::measure(&TcpEchoArgs {
            message_bytes: 64 << 10,
            seconds: TCP_PROBE_SECONDS,
            client: ClientPlacement::Thread,
            json: None,
        })?;
        Ok(Limits {
            direct_write_mb_per_s,
            buffered_write_mb_per_s,
            sync_writes,
            tcp_one_way_mb_per_s: tcp.one_way_gb_per_s * 1e3,
            warmed_bytes: 0,
        })
    }

    /// The sequential write limit of `io_mode`.
    pub fn write_mb_per_s(&self, io_mode: IoMode) -> f64 {
        match io_mode {
            IoMode::Direct => self
                .direct_write_mb_per_s
                .unwrap_or(self.buffered_write_mb_per_s),
            IoMode::Buffered => self.buffered_write_mb_per_s,
        }
    }

    /// The write+fdatasync limit at `group_bytes` per sync: interpolated between the probed
    /// sizes on a log scale, the end values beyond them.
    pub fn sync_mb_per_s(&self, group_bytes: f64) -> f64 {
        let probes = &self.sync_writes;
        let (Some(first), Some(last)) = (probes.first(), probes.last()) else {
            return f64::NAN;
        };
        if group_bytes <= first.size_bytes as f64 {
            return first.mb_per_s;
        }
        for pair in probes.windows(2) {
            let (low, high) = (pair[0], pair[1]);
            if group_bytes <= high.size_bytes as f64 {
                let span = (high.size_bytes as f64).ln() - (low.size_bytes as f64).ln();
                let at = (group_bytes.ln() - (low.size_bytes as f64).ln()) / span;
                return low.mb_per_s + at * (high.mb_per_s - low.mb_per_s);
            }
        }
        last.mb_per_s
    }

    /// Bytes the sweep needs free, given the fastest write probe: every point writes at
    /// most that fast for `seconds` (its data is deleted before the next point starts),
    /// doubled for the broker's preallocation and rounding, plus 1 GiB.
    pub fn space_needed_bytes(&self, seconds: f64) -> u64 {
        let fastest = self
            .buffered_write_mb_per_s
            .max(self.direct_write_mb_per_s.unwrap_or(0.0));
        (fastest * 1e6 * seconds * 2.0) as u64 + (1 << 30)
    }
}

fn sequential(dir: &Path, direct: bool) -> Result<f64, BenchError> {
    let results = write::measure(&WriteArgs {
        path: dir.to_path_buf(),
        direct,
        block_bytes: 1 << 20,
        queue_depth: 8,
        total_bytes: SEQUENTIAL_PROBE_BYTES,
        fdatasync_every: 0,
        preallocate: false,
        end_fsync: true,
        json: None,
    })?;
    Ok(results.gb_per_s * 1e3)
}

fn sync_write(
    dir: &Path,
    (direct, preallocate): (bool, bool),
    size_bytes: u64,
    writers: u32,
) -> Result<SyncWrite, BenchError> {
    let writers = writers.clamp(1, 8);
    let total_bytes = (size_bytes * SYNC_PROBE_SYNCS).max(SYNC_PROBE_BYTES_MIN);
    let results = write::measure(&WriteArgs {
        path: dir.to_path_buf(),
        direct,
        block_bytes: size_bytes,
        queue_depth: writers as usize,
        total_bytes,
        fdatasync_every: 1,
        preallocate,
        end_fsync: false,
        json: None,
    })?;
    let per_writer_syncs = results.fdatasync_ops.max(1) as f64 / f64::from(writers);
    Ok(SyncWrite {
        size_bytes,
        mb_per_s: results.gb_per_s * 1e3,
        latency_ms: results.elapsed_s * 1e3 / per_writer_syncs,
    })
}

/// Writes one byte into every page of up to `wanted` bytes of fresh anonymous memory (no
/// more than the kernel reports available, less a reserve), then frees it: on a VM whose
/// freed memory goes back to the host, the first touch of a page is slow, and the broker's
/// cache would pay it inside the first points. Returns the bytes touched.
pub fn warm_memory(wanted: u64) -> u64 {
    let available = ringlog_server::config::meminfo_bytes("MemAvailable");
    let bytes = wanted.min(available.saturating_sub(WARM_RESERVE_BYTES));
    let page = 4096;
    let pages = bytes / page;
    if pages == 0 {
        return 0;
    }
    let mut memory = vec![0u8; (pages * page) as usize];
    for index in (0..memory.len()).step_by(page as usize) {
        memory[index] = 1;
    }
    std::hint::black_box(&memory);
    pages * page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(sync: &[(u64, f64)]) -> Limits {
        Limits {
            direct_write_mb_per_s: Some(800.0),
            buffered_write_mb_per_s: 1200.0,
            sync_writes: sync
                .iter()
                .map(|&(size_bytes, mb_per_s)| SyncWrite {
                    size_bytes,
                    mb_per_s,
                    latency_ms: 1.0,
                })
                .collect(),
            tcp_one_way_mb_per_s: 5000.0,
            warmed_bytes: 0,
        }
    }

    #[test]
    #[allow(clippy::float_cmp)] // the clamped ends are the probes' values exactly
    fn the_sync_limit_interpolates_on_a_log_scale_and_clamps_at_the_ends() {
        let limits = limits(&[(64 << 10, 100.0), (256 << 10, 300.0), (1 << 20, 500.0)]);
        assert_eq!(limits.sync_mb_per_s(1000.0), 100.0);
        assert_eq!(limits.sync_mb_per_s(f64::from(64 << 10)), 100.0);
        // 128 KiB is half way between 64 KiB and 256 KiB on a log scale.
        assert!((limits.sync_mb_per_s(f64::from(128 << 10)) - 200.0).abs() < 1e-9);
        assert_eq!(limits.sync_mb_per_s(f64::from(16 << 20)), 500.0);
        assert!(super::super::grid::size_label(1 << 20).contains("MiB"));
    }

    #[test]
    #[allow(clippy::float_cmp)]
    fn space_needed_follows_the_fastest_write() {
        let limits = limits(&[]);
        // 1,200 MB/s for 3 s, doubled, plus 1 GiB.
        assert_eq!(limits.space_needed_bytes(3.0), 7_200_000_000 + (1 << 30));
        assert_eq!(limits.write_mb_per_s(IoMode::Direct), 800.0);
    }

    #[test]
    fn warming_touches_what_it_says_within_what_is_available() {
        assert_eq!(warm_memory(64 << 20), 64 << 20);
        assert_eq!(warm_memory(0), 0);
    }
}
