//! `probe write`: sequential writes through the runtime, the way a segment is appended to.
//!
//! `queue_depth` tasks share one file and one offset counter; each takes the next
//! `block_bytes` range, writes it from its own pooled, page-aligned buffer (filled once and
//! reused: no allocation per write) and takes the next, so `queue_depth` writes are in flight
//! at all times until the end. Optional fdatasync every N writes, optional fallocate of the
//! whole file first (timed apart), and by default one fsync after the last write inside the
//! timed region — what fio's `--end_fsync=1` does, so the two are compared like for like.
//! The file is new (`O_EXCL`) and is deleted at the end, also after a failure.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{ArgAction, Args};
use ringlog_engine::rt::{self, File, OpenOptions};
use serde::Serialize;

use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::{gb_per_s, mib_per_s, Report};
use crate::size::parse_size_bytes;

/// Alignment O_DIRECT transfers need here (the pool's buffers are aligned to it too).
const DIRECT_ALIGN_BYTES: u64 = 4096;

/// Parameters of `probe write`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct WriteArgs {
    /// Directory for the probe's file (created and deleted by the probe).
    #[arg(long)]
    pub path: PathBuf,
    /// Open the file with O_DIRECT (bypass the page cache).
    #[arg(long)]
    pub direct: bool,
    /// Bytes per write, e.g. 1MiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_size_bytes)]
    pub block_bytes: u64,
    /// Writes kept in flight.
    #[arg(long, default_value_t = 8)]
    pub queue_depth: usize,
    /// Bytes to write in all, e.g. 4GiB.
    #[arg(long, default_value = "4GiB", value_parser = parse_size_bytes)]
    pub total_bytes: u64,
    /// fdatasync after every N completed writes (0: never), like fio's `--fdatasync=N`.
    #[arg(long, default_value_t = 0)]
    pub fdatasync_every: u64,
    /// fallocate the whole file before the timed writes (fio's default `fallocate=native`).
    #[arg(long)]
    pub preallocate: bool,
    /// fsync once after the last write, inside the timed region (fio's `--end_fsync=1`).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub end_fsync: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
}

/// What `probe write` measured.
#[derive(Debug, Serialize)]
pub struct WriteResults {
    pub bytes_written: u64,
    pub write_ops: u64,
    pub fdatasync_ops: u64,
    /// Seconds from the first write to the end fsync's completion (or the last write's).
    pub elapsed_s: f64,
    /// Seconds from the first write to the last write's completion (before the end fsync).
    pub writes_elapsed_s: f64,
    /// Seconds the fallocate took (0 without `--preallocate`); not in `elapsed_s`.
    pub preallocate_s: f64,
    /// Throughput over `elapsed_s`, 2^20 bytes per second.
    pub mib_per_s: f64,
    /// Throughput over `elapsed_s`, 10^9 bytes per second.
    pub gb_per_s: f64,
    /// `io_uring_enter` calls in the timed region, per write.
    pub enter_calls_per_write: f64,
    /// Buffers the pool had to allocate (one per task when nothing is allocated per write).
    pub buffers_allocated: u64,
}

/// Offsets handed out and work done, shared by the writer tasks of one shard.
#[derive(Default)]
struct Progress {
    offset_next: Cell<u64>,
    writes_done: Cell<u64>,
    fdatasyncs_done: Cell<u64>,
}

/// Runs the probe, prints its results and writes the JSON report if asked.
pub fn run(args: &WriteArgs) -> Result<(), BenchError> {
    let results = measure(args)?;
    println!(
        "probe write: {} {} B x {} at QD {} ({}): {:.1} MiB/s = {:.3} GB/s, {:.3} s \
         (writes {:.3} s, fallocate {:.3} s untimed), {:.3} enters/write, {} fdatasyncs",
        if args.direct { "O_DIRECT" } else { "buffered" },
        args.block_bytes,
        results.write_ops,
        args.queue_depth,
        if args.end_fsync {
            "end fsync"
        } else {
            "no end fsync"
        },
        results.mib_per_s,
        results.gb_per_s,
        results.elapsed_s,
        results.writes_elapsed_s,
        results.preallocate_s,
        results.enter_calls_per_write,
        results.fdatasync_ops,
    );
    let report = Report {
        probe: "write",
        parameters: args,
        results,
        machine: MachineInfo::gather(Some(&args.path)),
    };
    report.write_json(args.json.as_deref())
}

/// Runs the probe and returns what it measured (nothing printed); the file is deleted,
/// also after a failure.
pub fn measure(args: &WriteArgs) -> Result<WriteResults, BenchError> {
    validate(args)?;
    let file_path = args
        .path
        .join(format!("ringlog-probe-write-{}.dat", std::process::id()));
    let outcome = rt::block_on(write_file(args, &file_path))?;
    let removed =
        std::fs::remove_file(&file_path).context(|| format!("deleting {}", file_path.display()));
    let results = outcome?;
    removed?;
    Ok(results)
}

fn validate(args: &WriteArgs) -> Result<(), BenchError> {
    let invalid = |message: String| Err(BenchError::InvalidArguments(message));
    if args.block_bytes == 0 || args.queue_depth == 0 || args.total_bytes == 0 {
        return invalid("block, queue depth and total must be positive".into());
    }
    if args.block_bytes > 8 << 20 {
        return invalid(format!("--block-bytes {} exceeds 8 MiB", args.block_bytes));
    }
    let aligned = |value: u64| value % DIRECT_ALIGN_BYTES == 0;
    if args.direct && !(aligned(args.block_bytes) && aligned(args.total_bytes)) {
        return invalid(format!(
            "O_DIRECT needs block and total to be multiples of {DIRECT_ALIGN_BYTES} bytes"
        ));
    }
    Ok(())
}

async fn write_file(args: &WriteArgs, file_path: &Path) -> Result<WriteResults, BenchError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .direct(args.direct)
        .open(file_path)
        .await
        .context(|| format!("creating {}", file_path.display()))?;
    let mut preallocate = Duration::ZERO;
    if args.preallocate {
        let start = Instant::now();
        file.allocate(0, args.total_bytes, 0)
            .await
            .context(|| format!("fallocating {} bytes", args.total_bytes))?;
        preallocate = start.elapsed();
    }
    let enters_before = rt::driver_stats().enter_calls;
    let pool_before = rt::buf_pool().stats().allocated;
    let progress = Rc::new(Progress::default());
    let start = Instant::now();
    let writers: Vec<_> = (0..args.queue_depth)
        .map(|_| rt::spawn_local(write_blocks(file.clone(), progress.clone(), args.clone())))
        .collect();
    for writer in writers {
        writer.await??;
    }
    let writes_elapsed = start.elapsed();
    if args.end_fsync {
        file.sync_all().await.context(|| "end fsync".into())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let enter_calls = rt::driver_stats().enter_calls - enters_before;
    let buffers_allocated = rt::buf_pool().stats().allocated - pool_before;
    file.close()
        .await
        .context(|| "closing the probe file".into())?;
    let write_ops = progress.writes_done.get();
    Ok(WriteResults {
        bytes_written: args.total_bytes,
        write_ops,
        fdatasync_ops: progress.fdatasyncs_done.get(),
        elapsed_s: elapsed,
        writes_elapsed_s: writes_elapsed.as_secs_f64(),
        preallocate_s: preallocate.as_secs_f64(),
        mib_per_s: mib_per_s(args.total_bytes, elapsed),
        gb_per_s: gb_per_s(args.total_bytes, elapsed),
        enter_calls_per_write: enter_calls as f64 / write_ops.max(1) as f64,
        buffers_allocated,
    })
}

/// One writer task: takes the next range until the file is written, reusing one buffer.
async fn write_blocks(
    file: File,
    progress: Rc<Progress>,
    args: WriteArgs,
) -> Result<(), BenchError> {
    let block_bytes = args.block_bytes as usize;
    let mut buf = rt::buf_pool().get(block_bytes);
    for (index, byte) in buf.full_mut().iter_mut().enumerate() {
        *byte = (index % 251) as u8;
    }
    loop {
        let offset = progress.offset_next.get();
        if offset >= args.total_bytes {
            return Ok(());
        }
        let len = (args.total_bytes - offset).min(args.block_bytes);
        progress.offset_next.set(offset + len);
        buf.set_len(len as usize);
        let (result, returned) = file.write_all_at(buf, offset).await;
        buf = returned;
        result.context(|| format!("writing {len} bytes at offset {offset}"))?;
        let writes_done = progress.writes_done.get() + 1;
        progress.writes_done.set(writes_done);
        if args.fdatasync_every > 0 && writes_done % args.fdatasync_every == 0 {
            file.sync_data()
                .await
                .context(|| format!("fdatasync after write {writes_done}"))?;
            progress
                .fdatasyncs_done
                .set(progress.fdatasyncs_done.get() + 1);
        }
    }
}
