//! `engine recovery`: how long `PartitionLog::open` takes after an unclean stop, when it
//! must validate every batch of the active segment (length, magic, CRC, record count), and
//! after a clean one, when the checkpoint lets it scan nothing.
//!
//! One partition is filled with `--data-bytes` of 64 KiB batches (`flush = never`, all in
//! the one active segment: the data must stay below `--segment-bytes`). The unclean stop is
//! a runtime torn down without `close()`: the fill runs in its own `rt::block_on`, which
//! returns with the log still open, so no index files and no checkpoint are written (a
//! `recovery-checkpoint` found anyway is deleted). What the page cache holds at reopen is
//! chosen with `--before-reopen`: `none` (a process crash: the data is cached and partly
//! dirty, and recovery's truncate-and-fdatasync writes the dirty part back), `sync` (cached
//! and clean: the scan alone), `drop-caches` (a machine restart: read from the disk).
//! Then the log is closed and opened again (clean), each open in a fresh runtime.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ringlog_engine::log::Ack;
use ringlog_engine::rt;
use ringlog_engine::topic::TopicConfig;
use serde::Serialize;

use super::batches::PrebuiltBatches;
use super::load::{self, Limit, Load};
use super::{close_logs, keep_freed_heap, open_logs, partition_dir, FlushArg, IoModeArg, LogArgs};
use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::{gb_per_s, Report};
use crate::size::parse_size_bytes;

/// Name of the checkpoint file a clean close writes (`engine/src/log/checkpoint.rs`).
const CHECKPOINT_FILE_NAME: &str = "recovery-checkpoint";
/// Value bytes per record and batch size of the fill.
const RECORD_BYTES: usize = 1024;
const BATCH_BYTES: usize = 64 << 10;
/// Appends in flight during the fill.
const FILL_IN_FLIGHT: usize = 32;

/// `--before-reopen`: what the page cache holds when the log is reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BeforeReopen {
    /// Nothing: cached, partly dirty (a process crash).
    None,
    /// `sync(2)`: cached and clean (the scan alone).
    Sync,
    /// `sync(2)` and drop the page cache (needs root): read from the disk.
    DropCaches,
}

/// Parameters of `engine recovery`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct RecoveryArgs {
    /// Directory for the partition (`p-0`, created; deleted at the end unless --keep).
    #[arg(long)]
    pub path: PathBuf,
    /// Segment size; the data must fit in one segment.
    #[arg(long, default_value = "1GiB", value_parser = parse_size_bytes)]
    pub segment_bytes: u64,
    /// Bytes of batches to write before the unclean stop.
    #[arg(long, default_value = "1000MiB", value_parser = parse_size_bytes)]
    pub data_bytes: u64,
    /// `buffered` or `direct` segment writes.
    #[arg(long, value_enum, default_value_t = IoModeArg::Buffered)]
    pub io_mode: IoModeArg,
    /// What the page cache holds at the unclean reopen: none, sync, drop-caches.
    #[arg(long, value_enum, default_value_t = BeforeReopen::None)]
    pub before_reopen: BeforeReopen,
    /// Keep the partition directory afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
}

/// What `engine recovery` measured. GB/s is 10^9 bytes per second.
#[derive(Debug, Serialize)]
pub struct RecoveryResults {
    /// Bytes of whole batches appended (at most `--data-bytes`).
    pub data_bytes: u64,
    pub records: u64,
    /// Seconds the fill took (not part of any figure below).
    pub fill_s: f64,
    /// A stale checkpoint was found and deleted before the unclean reopen.
    pub checkpoint_deleted: bool,
    /// Seconds `sync`/drop-caches took before the unclean reopen.
    pub before_reopen_s: f64,
    /// `PartitionLog::open` after the unclean stop: scan of the whole active segment.
    pub unclean_open_s: f64,
    pub unclean_scan_gb_per_s: f64,
    /// Closing the recovered log (fdatasync, indexes, checkpoint).
    pub close_s: f64,
    /// `PartitionLog::open` after that clean close.
    pub clean_open_s: f64,
}

/// Runs the command, prints its results and writes the JSON report if asked.
pub fn run(args: &RecoveryArgs) -> Result<(), BenchError> {
    validate(args)?;
    keep_freed_heap();
    let log_args = LogArgs {
        path: args.path.clone(),
        partitions: 1,
        flush: FlushArg::Never,
        io_mode: args.io_mode,
        segment_bytes: args.segment_bytes,
        preallocate_bytes: TopicConfig::default().preallocate_bytes(),
    };
    let config = log_args.config()?;
    let outcome = measure(args, &config);
    if !args.keep {
        let dir = partition_dir(&args.path, 0);
        std::fs::remove_dir_all(&dir).context(|| format!("deleting {}", dir.display()))?;
    }
    let results = outcome?;
    print(args, &results);
    let report = Report {
        probe: "engine-recovery",
        parameters: args,
        results,
        machine: MachineInfo::gather(Some(&args.path)),
    };
    report.write_json(args.json.as_deref())
}

fn validate(args: &RecoveryArgs) -> Result<(), BenchError> {
    let dir = partition_dir(&args.path, 0);
    if dir.exists() {
        return Err(BenchError::InvalidArguments(format!(
            "{} exists; recovery starts from an empty log",
            dir.display()
        )));
    }
    let headroom = (FILL_IN_FLIGHT * BATCH_BYTES) as u64;
    if args.data_bytes == 0 || args.data_bytes + headroom > args.segment_bytes {
        return Err(BenchError::InvalidArguments(format!(
            "--data-bytes must be positive and leave {headroom} bytes of --segment-bytes free \
             (one group commit), so that everything stays in the active segment"
        )));
    }
    Ok(())
}

/// Fill, unclean stop, unclean reopen and close, clean reopen; each in its own runtime.
fn measure(args: &RecoveryArgs, config: &TopicConfig) -> Result<RecoveryResults, BenchError> {
    let batches = Rc::new(PrebuiltBatches::new(RECORD_BYTES, BATCH_BYTES)?);
    let (bytes, records, fill) = rt::block_on(fill(&args.path, config, batches, args.data_bytes))??;
    let checkpoint = partition_dir(&args.path, 0).join(CHECKPOINT_FILE_NAME);
    let checkpoint_deleted = checkpoint.exists();
    if checkpoint_deleted {
        std::fs::remove_file(&checkpoint)
            .context(|| format!("deleting {}", checkpoint.display()))?;
    }
    let before_reopen = prepare_page_cache(args.before_reopen)?;
    let (unclean_open, close) = rt::block_on(timed_open(&args.path, config, records))??;
    let (clean_open, _) = rt::block_on(timed_open(&args.path, config, records))??;
    Ok(RecoveryResults {
        data_bytes: bytes,
        records,
        fill_s: fill.as_secs_f64(),
        checkpoint_deleted,
        before_reopen_s: before_reopen.as_secs_f64(),
        unclean_open_s: unclean_open.as_secs_f64(),
        unclean_scan_gb_per_s: gb_per_s(bytes, unclean_open.as_secs_f64()),
        close_s: close.as_secs_f64(),
        clean_open_s: clean_open.as_secs_f64(),
    })
}

/// Appends the whole batches that fit in `data_bytes` and returns with the log still open
/// (the unclean stop); returns bytes and records appended and the time taken.
async fn fill(
    path: &Path,
    config: &TopicConfig,
    batches: Rc<PrebuiltBatches>,
    data_bytes: u64,
) -> Result<(u64, u64, Duration), BenchError> {
    let logs = open_logs(path, 1, config).await?;
    let load = Load {
        batches,
        ack: Ack::Written,
        limit: Limit::Bytes(data_bytes),
        in_flight: FILL_IN_FLIGHT,
    };
    let outcome = load::run(&logs, &load).await?;
    Ok((outcome.bytes, outcome.records, outcome.elapsed))
}

/// Opens the log (timed), checks it holds `records`, closes it (timed).
async fn timed_open(
    path: &Path,
    config: &TopicConfig,
    records: u64,
) -> Result<(Duration, Duration), BenchError> {
    let start = Instant::now();
    let logs = open_logs(path, 1, config).await?;
    let open = start.elapsed();
    let offsets = logs[0].offsets();
    let held = offsets.log_end - offsets.log_start;
    if held != records as i64 {
        return Err(BenchError::Inconsistent(format!(
            "the reopened log holds {held} records, {records} were appended"
        )));
    }
    let close = close_logs(&logs).await?;
    Ok((open, close))
}

/// Brings the page cache into the state `--before-reopen` asks for; returns the time taken.
fn prepare_page_cache(before_reopen: BeforeReopen) -> Result<Duration, BenchError> {
    let start = Instant::now();
    if before_reopen != BeforeReopen::None {
        let status = std::process::Command::new("sync")
            .status()
            .context(|| "running sync".into())?;
        if !status.success() {
            return Err(BenchError::io(
                "running sync",
                std::io::Error::other(status.to_string()),
            ));
        }
    }
    if before_reopen == BeforeReopen::DropCaches {
        std::fs::write("/proc/sys/vm/drop_caches", "3\n")
            .context(|| "dropping the page cache (needs root)".into())?;
    }
    Ok(start.elapsed())
}

fn print(args: &RecoveryArgs, results: &RecoveryResults) {
    println!(
        "engine recovery: {} bytes ({} records) in one active segment, {:?}, before reopen \
         {:?} ({:.3} s): unclean open {:.3} s = {:.3} GB/s scanned; close {:.3} s; clean \
         open {:.4} s",
        results.data_bytes,
        results.records,
        args.io_mode,
        args.before_reopen,
        results.before_reopen_s,
        results.unclean_open_s,
        results.unclean_scan_gb_per_s,
        results.close_s,
        results.clean_open_s,
    );
}

#[cfg(test)]
mod tests {
    use super::{measure, BeforeReopen, RecoveryArgs};
    use crate::engine::{FlushArg, IoModeArg, LogArgs};

    #[test]
    fn an_unclean_stop_is_recovered_by_a_full_scan_and_a_clean_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let args = RecoveryArgs {
            path: dir.path().to_path_buf(),
            segment_bytes: 8 << 20,
            data_bytes: 2 << 20,
            io_mode: IoModeArg::Buffered,
            before_reopen: BeforeReopen::None,
            keep: false,
            json: None,
        };
        let log_args = LogArgs {
            path: args.path.clone(),
            partitions: 1,
            flush: FlushArg::Never,
            io_mode: args.io_mode,
            segment_bytes: args.segment_bytes,
            preallocate_bytes: 1 << 20,
        };
        let results = measure(&args, &log_args.config().unwrap()).unwrap();
        assert!(results.data_bytes > (2 << 20) - (64 << 10) && results.data_bytes <= 2 << 20);
        assert!(!results.checkpoint_deleted);
        assert!(results.records > 0);
    }
}
