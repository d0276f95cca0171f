//! One point of the sweep: a broker started in this process on the data directory's file
//! system with the point's topic settings, the load generator's native producer against
//! it over loopback for the point's duration, and what came out. The broker and its data
//! are gone before the next point starts, so no point reads another's page cache or
//! preallocation.

use std::path::Path;

use ringlog_bench::broker::produce::{self, ProduceArgs};
use ringlog_bench::broker::{parse_args, Target};
use ringlog_bench::error::BenchError;
use ringlog_engine::topic::TopicConfig;
use serde::Serialize;

use super::grid::{acks_name, Flush, Point};
use super::limits::Limits;

/// The load of every point: what `--record-size`, `--partitions` and
/// `--duration-per-point` set.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub record_bytes: u64,
    pub partitions: u32,
    pub seconds: f64,
    /// Runs per point (the median by records/s is kept).
    pub repeat: u32,
}

/// What one point measured. MB are 10^6 bytes.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// Produce latency, a request's send to its response.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub fdatasyncs_per_s: f64,
    pub fdatasync_mean_ms: f64,
    /// The engine's latency bucket bound that holds the 99th percentile of the syncs.
    pub fdatasync_p99_bound_ms: f64,
    /// Mean bytes per group commit.
    pub group_bytes: f64,
    /// The limit this point is held to: the fdatasync-per-group probe at `group_bytes` for
    /// a point that syncs every group, else the I/O mode's sequential write, and never more
    /// than loopback TCP.
    pub limit_mb_per_s: f64,
    pub ratio_to_limit: f64,
    /// The most acknowledged data a power loss can take, in ms of writes; 0 when every
    /// acknowledged record was fdatasynced first; `None` when nothing bounds it.
    pub at_risk_ms: Option<f64>,
}

impl Measurement {
    /// `412 fdatasyncs/s of mean 1.20 ms`, or `no fdatasyncs`.
    pub fn syncs_phrase(&self) -> String {
        if self.fdatasyncs_per_s > 0.0 {
            format!(
                "{:.0} fdatasyncs/s of mean {:.2} ms",
                self.fdatasyncs_per_s, self.fdatasync_mean_ms
            )
        } else {
            "no fdatasyncs".into()
        }
    }
}

/// Runs `point` and measures it.
pub fn run(
    point: &Point,
    load: &Load,
    data_dir: &Path,
    limits: &Limits,
) -> Result<Measurement, BenchError> {
    let topic_defaults = TopicConfig::builder()
        .flush(point.flush.policy())
        .io_mode(point.io_mode)
        .build()?;
    let target = Target::embedded(data_dir, |config| {
        config.shards = ringlog_engine::rt::allowed_cpus().len().max(1);
        config.topic_defaults = topic_defaults;
        config.io_mode_chosen = true;
    })?;
    let args = produce_args(point, load, &target)?;
    let produced = produce::produce(&args, &target);
    let stopped = target.stop();
    let results = produced?;
    stopped?;
    let commits = results.group_commits.ok_or_else(|| {
        BenchError::Broker("the embedded broker reported no group commits".into())
    })?;
    let group_bytes = commits.mib_per_group * f64::from(1u32 << 20);
    let disk_mb_per_s = if point.syncs_every_group() {
        limits.sync_mb_per_s(group_bytes)
    } else {
        limits.write_mb_per_s(point.io_mode)
    };
    let limit_mb_per_s = disk_mb_per_s.min(limits.tcp_one_way_mb_per_s);
    let fdatasync_p99_bound_ms = commits.fdatasync_p99_bound_us / 1e3;
    Ok(Measurement {
        records_per_s: results.records_per_s,
        mb_per_s: results.mb_per_s,
        p50_ms: results.latency.p50_us / 1e3,
        p99_ms: results.latency.p99_us / 1e3,
        p999_ms: results.latency.p999_us / 1e3,
        fdatasyncs_per_s: commits.fdatasyncs as f64 / results.elapsed_s,
        fdatasync_mean_ms: commits.fdatasync_mean_us / 1e3,
        fdatasync_p99_bound_ms,
        group_bytes,
        limit_mb_per_s,
        ratio_to_limit: results.mb_per_s / limit_mb_per_s,
        at_risk_ms: at_risk_ms(point, results.mb_per_s, fdatasync_p99_bound_ms),
    })
}

fn produce_args(point: &Point, load: &Load, target: &Target) -> Result<ProduceArgs, BenchError> {
    let address = target.address.to_string();
    let record_size = load.record_bytes.to_string();
    let partitions = load.partitions.to_string();
    let duration = load.seconds.to_string();
    let batch_bytes = point.batch_bytes.to_string();
    let linger = point.linger_ms.unwrap_or(0.0).to_string();
    let mut argv = vec![
        "produce",
        "--bootstrap",
        &address,
        "--topic",
        "tune",
        "--partitions",
        &partitions,
        "--record-size",
        &record_size,
        "--duration",
        &duration,
        "--batch-bytes",
        &batch_bytes,
        "--linger-ms",
        &linger,
        "--acks",
        acks_name(point.acks),
    ];
    let rate = point.rate.map(|rate| rate.to_string());
    if let Some(rate) = &rate {
        argv.extend(["--rate", rate]);
    }
    let mut args: ProduceArgs = parse_args(&argv)?;
    args.quiet = true;
    Ok(args)
}

/// How much acknowledged data a power loss can take from `point`, in ms of writes at the
/// measured `mb_per_s`: nothing for acks=all (answered after its fdatasync); for acks=1,
/// what is written between two fdatasyncs plus one fdatasync's time (the bound of its
/// latency bucket) — the sync that would cover the last acknowledged write.
fn at_risk_ms(point: &Point, mb_per_s: f64, fdatasync_p99_bound_ms: f64) -> Option<f64> {
    if point.acks == ringlog_bench::broker::produce::AcksArg::All {
        return Some(0.0);
    }
    match point.flush {
        Flush::Always => Some(fdatasync_p99_bound_ms),
        Flush::IntervalMs(interval_ms) => Some(interval_ms as f64 + fdatasync_p99_bound_ms),
        Flush::Bytes(bytes) if mb_per_s > 0.0 => {
            Some(bytes as f64 / (mb_per_s * 1e3) + fdatasync_p99_bound_ms)
        }
        Flush::Bytes(_) | Flush::Never => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_bench::broker::produce::AcksArg;
    use ringlog_engine::topic::IoMode;

    fn point(flush: Flush, acks: AcksArg) -> Point {
        Point {
            flush,
            io_mode: IoMode::Direct,
            batch_bytes: 64 << 10,
            acks,
            linger_ms: None,
            rate: None,
        }
    }

    #[test]
    fn the_window_at_risk_follows_acks_and_the_flush_policy() {
        assert_eq!(
            at_risk_ms(&point(Flush::Never, AcksArg::All), 500.0, 2.0),
            Some(0.0)
        );
        assert_eq!(
            at_risk_ms(&point(Flush::Always, AcksArg::Leader), 500.0, 2.0),
            Some(2.0)
        );
        assert_eq!(
            at_risk_ms(&point(Flush::IntervalMs(5), AcksArg::Leader), 500.0, 2.0),
            Some(7.0)
        );
        // 4 MB unsynced at 500 MB/s is 8 ms of writes.
        assert_eq!(
            at_risk_ms(&point(Flush::Bytes(4_000_000), AcksArg::Leader), 500.0, 2.0),
            Some(10.0)
        );
        assert_eq!(
            at_risk_ms(&point(Flush::Never, AcksArg::Leader), 500.0, 2.0),
            None
        );
    }
}
