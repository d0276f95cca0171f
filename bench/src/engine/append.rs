//! `engine append`: appends to N fresh partitions on one shard and reports records/s, MiB/s,
//! append latency percentiles and how the appends were grouped into commits.
//!
//! `flush = always` appends wait for the fdatasync (`Ack::Durable`, acks=all), `flush =
//! never` ones for the write (`Ack::Written`, acks=1); `--ack` overrides. The timed region
//! ends when the last append is acknowledged; closing the logs (which fdatasyncs whatever
//! `flush = never` left unsynced) is timed apart as `close_s`. With `--read-back`, every
//! partition is then read back from the page cache before the close (see `engine read`).

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ringlog_engine::log::Ack;
use ringlog_engine::rt;
use serde::Serialize;

use super::batches::PrebuiltBatches;
use super::latency::LatencySummary;
use super::load::{self, Limit, Load, LoadOutcome};
use super::read::{self, ReadPass, ReadPhaseArgs};
use super::{close_logs, keep_freed_heap, open_logs, FlushArg, LogArgs};
use crate::error::BenchError;
use crate::machine::MachineInfo;
use crate::report::{mib_per_s, Report};
use crate::size::parse_size_bytes;

/// Bytes appended when neither `--total-bytes` nor `--seconds` is given: 4 GiB.
const TOTAL_BYTES_DEFAULT: u64 = 4 << 30;

/// `--ack`: what an append waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckArg {
    /// The write (acks=1).
    Written,
    /// The fdatasync covering the batch (acks=all).
    Durable,
}

/// Parameters of `engine append`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct AppendArgs {
    #[command(flatten)]
    pub log: LogArgs,
    /// Bytes of each record's value (no key, no headers).
    #[arg(long, default_value = "1024", value_parser = parse_size_bytes)]
    pub record_bytes: u64,
    /// Largest size of a batch, header included; as many records as fit.
    #[arg(long, default_value = "64KiB", value_parser = parse_size_bytes)]
    pub batch_bytes: u64,
    /// Appends in flight in total, spread round-robin over the partitions.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Bytes to append in all (whole batches); default 4GiB unless --seconds is given.
    #[arg(long, value_parser = parse_size_bytes, conflicts_with = "seconds")]
    pub total_bytes: Option<u64>,
    /// Append for this many seconds instead of a byte count.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Override what appends wait for (default: durable for flush=always, else written).
    #[arg(long, value_enum)]
    pub ack: Option<AckArg>,
    /// Read every partition back (page cache) after appending, before closing.
    #[arg(long)]
    pub read_back: bool,
    #[command(flatten)]
    pub read: ReadPhaseArgs,
    /// Keep glibc's default heap trimming (see `keep_freed_heap`): every batch copy then
    /// page-faults fresh memory.
    #[arg(long)]
    pub glibc_default_heap: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
}

/// What `engine append` measured. MiB/s is 2^20 bytes per second, MB/s 10^6.
#[derive(Debug, Serialize)]
pub struct AppendResults {
    pub ack: AckArg,
    pub records_per_batch: u64,
    pub batch_len_bytes: u64,
    pub appends: u64,
    pub records: u64,
    pub bytes: u64,
    /// From the first append to the last ack.
    pub elapsed_s: f64,
    #[serde(rename = "records_per_sec")]
    pub records_per_s: f64,
    pub mib_per_s: f64,
    #[serde(rename = "mb_per_sec")]
    pub mb_per_s: f64,
    /// From `append` being called to its ack (the copy before it excluded).
    #[serde(rename = "latency_us")]
    pub latency: LatencySummary,
    /// Time spent copying batches into fresh `BytesMut`s (inside `elapsed_s`), and its share.
    pub copy_s: f64,
    pub copy_share: f64,
    /// Group commits (log version increments) and what one held on average.
    pub groups: u64,
    pub appends_per_group: f64,
    pub group_mib_mean: f64,
    /// fdatasyncs the groups asked for: one per group when appends wait for durability.
    pub fdatasyncs: u64,
    pub sqes_submitted: u64,
    pub enter_calls: u64,
    pub sqes_per_group: f64,
    /// Closing every log (final fdatasync, indexes, checkpoint); not in `elapsed_s`.
    pub close_s: f64,
    /// The read-back passes, with `--read-back`.
    pub read_back: Vec<ReadPass>,
}

/// Runs the command, prints its results and writes the JSON report if asked.
pub fn run(args: &AppendArgs) -> Result<(), BenchError> {
    validate(args)?;
    if !args.glibc_default_heap {
        keep_freed_heap();
    }
    let batches = PrebuiltBatches::new(args.record_bytes as usize, args.batch_bytes as usize)?;
    let results = rt::block_on(append(args, Rc::new(batches)))??;
    print(args, &results);
    let report = Report {
        probe: "engine-append",
        parameters: args,
        results,
        machine: MachineInfo::gather(Some(&args.log.path)),
    };
    report.write_json(args.json.as_deref())
}

fn validate(args: &AppendArgs) -> Result<(), BenchError> {
    let invalid = |message: String| Err(BenchError::InvalidArguments(message));
    if args.log.partitions == 0 || args.in_flight == 0 {
        return invalid("--partitions and --in-flight must be positive".into());
    }
    if args
        .seconds
        .is_some_and(|seconds| !seconds.is_finite() || seconds <= 0.0)
    {
        return invalid("--seconds must be positive".into());
    }
    for partition in 0..args.log.partitions {
        let dir = args.log.partition_dir(partition);
        if dir.exists() {
            return invalid(format!(
                "{} exists; append starts from empty logs",
                dir.display()
            ));
        }
    }
    Ok(())
}

fn ack_of(args: &AppendArgs) -> AckArg {
    args.ack.unwrap_or(match args.log.flush {
        FlushArg::Always => AckArg::Durable,
        FlushArg::Never => AckArg::Written,
    })
}

async fn append(
    args: &AppendArgs,
    batches: Rc<PrebuiltBatches>,
) -> Result<AppendResults, BenchError> {
    let config = args.log.config()?;
    let logs = open_logs(&args.log.path, args.log.partitions, &config).await?;
    let ack = ack_of(args);
    let limit = match args.seconds {
        Some(seconds) => Limit::Until(Instant::now() + Duration::from_secs_f64(seconds)),
        None => Limit::Bytes(args.total_bytes.unwrap_or(TOTAL_BYTES_DEFAULT)),
    };
    let load = Load {
        batches: batches.clone(),
        ack: match ack {
            AckArg::Written => Ack::Written,
            AckArg::Durable => Ack::Durable,
        },
        limit,
        in_flight: args.in_flight,
    };
    let outcome = load::run(&logs, &load).await?;
    let read_back = if args.read_back {
        read::read_logs(&logs, &args.read, outcome.records).await?
    } else {
        Vec::new()
    };
    let close = close_logs(&logs).await?;
    Ok(results(ack, &batches, &outcome, close, read_back))
}

fn results(
    ack: AckArg,
    batches: &PrebuiltBatches,
    outcome: &LoadOutcome,
    close: Duration,
    read_back: Vec<ReadPass>,
) -> AppendResults {
    let elapsed_s = outcome.elapsed.as_secs_f64();
    let copy_s = outcome.copy.as_secs_f64();
    let groups = outcome.groups.max(1) as f64;
    AppendResults {
        ack,
        records_per_batch: batches.records_per_batch(),
        batch_len_bytes: batches.batch_len_bytes() as u64,
        appends: outcome.appends,
        records: outcome.records,
        bytes: outcome.bytes,
        elapsed_s,
        records_per_s: outcome.records as f64 / elapsed_s,
        mib_per_s: mib_per_s(outcome.bytes, elapsed_s),
        mb_per_s: outcome.bytes as f64 / 1e6 / elapsed_s,
        latency: outcome.latencies.summary(),
        copy_s,
        copy_share: copy_s / elapsed_s,
        groups: outcome.groups,
        appends_per_group: outcome.appends as f64 / groups,
        group_mib_mean: outcome.bytes as f64 / f64::from(1u32 << 20) / groups,
        fdatasyncs: if ack == AckArg::Durable {
            outcome.groups
        } else {
            0
        },
        sqes_submitted: outcome.driver.entries_submitted,
        enter_calls: outcome.driver.enter_calls,
        sqes_per_group: outcome.driver.entries_submitted as f64 / groups,
        close_s: close.as_secs_f64(),
        read_back,
    }
}

fn print(args: &AppendArgs, results: &AppendResults) {
    let latency = &results.latency;
    println!(
        "engine append: {} partition(s), flush {:?}, {:?}, ack {:?}, {} in flight: \
         {:.0} records/s, {:.1} MiB/s ({:.1} MB/s), {:.3} s; latency p50 {:.0} us, \
         p99 {:.0} us, p99.9 {:.0} us; {} groups ({:.1} appends, {:.2} MiB each, \
         {:.2} SQEs), {} fdatasyncs; copy {:.1}% of elapsed; close {:.3} s",
        args.log.partitions,
        args.log.flush,
        args.log.io_mode,
        results.ack,
        args.in_flight,
        results.records_per_s,
        results.mib_per_s,
        results.mb_per_s,
        results.elapsed_s,
        latency.p50_us,
        latency.p99_us,
        latency.p999_us,
        results.groups,
        results.appends_per_group,
        results.group_mib_mean,
        results.sqes_per_group,
        results.fdatasyncs,
        results.copy_share * 100.0,
        results.close_s,
    );
    for pass in &results.read_back {
        read::print_pass(pass);
    }
}
