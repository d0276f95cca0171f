//! `ringlog-bench engine …`: the storage engine alone, in process, with no network. One
//! `rt::block_on` thread (one shard) drives `PartitionLog<DiskStorage>`s in `DIR/p-{i}`:
//! `append` measures appends (group commit, flush policy, I/O mode), `read` reads a log back
//! through `PartitionLog::read`, `recovery` times `PartitionLog::open` after an unclean and
//! a clean stop. The arguments every command shares (where the partitions live and how
//! their topic is configured) are here, with opening and closing the logs.

pub mod append;
pub mod batches;
pub mod latency;
pub mod load;
pub mod read;
pub mod recovery;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use ringlog_engine::log::{PartitionId, PartitionLog};
use ringlog_engine::storage::DiskStorage;
use ringlog_engine::topic::{FlushPolicy, IoMode, TopicConfig};
use serde::Serialize;

use crate::error::BenchError;
use crate::size::parse_size_bytes;

/// The topic name the bench's partitions carry.
const TOPIC: &str = "bench";

/// `ringlog-bench engine …`.
#[derive(Debug, Subcommand)]
pub enum Engine {
    /// Append prebuilt batches to N partitions, keeping appends in flight.
    Append(append::AppendArgs),
    /// Read every partition under --path back through the log (page cache).
    Read(read::ReadArgs),
    /// Time opening a log after an unclean stop (full scan) and after a clean one.
    Recovery(recovery::RecoveryArgs),
}

impl Engine {
    /// Runs the chosen command.
    pub fn run(&self) -> Result<(), BenchError> {
        match self {
            Engine::Append(args) => append::run(args),
            Engine::Read(args) => read::run(args),
            Engine::Recovery(args) => recovery::run(args),
        }
    }
}

/// `--flush`: the topic's flush policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushArg {
    /// Leave writeback to the OS; appends ack when written (acks=1).
    Never,
    /// fdatasync every group commit; appends ack when durable (acks=all).
    Always,
}

/// `--io-mode`: page cache or O_DIRECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoModeArg {
    Buffered,
    Direct,
}

/// Where the partitions live and how their topic is configured.
#[derive(Debug, Clone, Args, Serialize)]
pub struct LogArgs {
    /// Directory of the partitions (`p-0`, `p-1`, …); ext4 on the real disk, not tmpfs.
    #[arg(long)]
    pub path: PathBuf,
    /// Partitions, all on this one shard.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Flush policy: `never` or `always` (fdatasync per group commit).
    #[arg(long, value_enum, default_value_t = FlushArg::Never)]
    pub flush: FlushArg,
    /// `buffered` (page cache) or `direct` (O_DIRECT through aligned staging buffers).
    #[arg(long, value_enum, default_value_t = IoModeArg::Buffered)]
    pub io_mode: IoModeArg,
    /// Size at which the active segment rolls.
    #[arg(long, default_value = "1GiB", value_parser = parse_size_bytes)]
    pub segment_bytes: u64,
    /// fallocate step of a segment file (`0`: no preallocation).
    #[arg(long, default_value = "64MiB", value_parser = parse_size_bytes)]
    pub preallocate_bytes: u64,
}

impl LogArgs {
    /// The topic configuration these arguments describe.
    pub fn config(&self) -> Result<TopicConfig, BenchError> {
        let flush = match self.flush {
            FlushArg::Never => FlushPolicy::Never,
            FlushArg::Always => FlushPolicy::Always,
        };
        let io_mode = match self.io_mode {
            IoModeArg::Buffered => IoMode::Buffered,
            IoModeArg::Direct => IoMode::Direct,
        };
        let config = TopicConfig::builder()
            .flush(flush)
            .io_mode(io_mode)
            .segment_bytes(self.segment_bytes)
            .preallocate_bytes(self.preallocate_bytes)
            .build()?;
        Ok(config)
    }

    /// The directory of partition `partition`.
    pub fn partition_dir(&self, partition: u32) -> PathBuf {
        partition_dir(&self.path, partition)
    }
}

/// The directory of partition `partition` under `path`.
pub fn partition_dir(path: &Path, partition: u32) -> PathBuf {
    path.join(format!("p-{partition}"))
}

/// Opens (recovering, or creating) partitions `0..partitions` under `path`.
pub async fn open_logs(
    path: &Path,
    partitions: u32,
    config: &TopicConfig,
) -> Result<Vec<PartitionLog<DiskStorage>>, BenchError> {
    let mut logs = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let id = PartitionId {
            topic: TOPIC.into(),
            partition,
        };
        let dir = partition_dir(path, partition);
        logs.push(PartitionLog::open(DiskStorage, &dir, id, config.clone()).await?);
    }
    Ok(logs)
}

/// Closes every log (fdatasync, indexes, clean checkpoint); returns how long it took.
pub async fn close_logs(logs: &[PartitionLog<DiskStorage>]) -> Result<Duration, BenchError> {
    let start = Instant::now();
    for log in logs {
        log.close().await?;
    }
    Ok(start.elapsed())
}

/// glibc's heap tuning for the engine commands: freed memory stays in the heap instead of
/// being returned to the kernel whenever the top of the heap is free.
///
/// Each append copies a batch into a fresh 64 KiB `BytesMut` that is freed when its group
/// is written, so the heap's top empties after every group. With glibc's default trim
/// threshold (128 KiB) that memory goes back to the kernel and the next copies fault it in
/// again, zeroed: in a first run that was a third of the shard's CPU time, and halved
/// flush=never throughput. A broker reads requests into reused buffers; the bench should
/// not charge the engine for an allocator artifact. `--glibc-default-heap` keeps glibc's
/// defaults, to see that cost.
pub fn keep_freed_heap() {
    const TRIM_THRESHOLD_BYTES: i32 = 1 << 30;
    const TOP_PAD_BYTES: i32 = 64 << 20;
    // SAFETY: mallopt only changes glibc's allocator parameters; it is called on the main
    // thread before the runtime or any other thread of ours exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD_BYTES);
    }
}
