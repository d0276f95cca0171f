//! `probe nop`: what one operation costs the runtime itself, with no I/O behind it.
//!
//! A task (as engine work runs) submits `batch` no-ops, awaits them all, and repeats until
//! `ops` have completed. Each round goes through everything a real operation does — a
//! driver slot, a submission entry, one `io_uring_enter` for the batch, the completion
//! reaped, the task woken and polled — so ns/op is the floor under every read and write.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ringlog_engine::rt;
use serde::Serialize;

use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::Report;

/// Parameters of `probe nop`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct NopArgs {
    /// No-ops to complete in all.
    #[arg(long, default_value_t = 10_000_000)]
    pub ops: u64,
    /// No-ops submitted together before awaiting them.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
}

/// What `probe nop` measured.
#[derive(Debug, Serialize)]
pub struct NopResults {
    pub ops: u64,
    pub elapsed_s: f64,
    pub ns_per_op: f64,
    pub ops_per_s: f64,
    /// Driver counters over the timed region.
    pub entries_submitted: u64,
    pub completions_reaped: u64,
    pub enter_calls: u64,
    pub enter_calls_per_op: f64,
}

/// Runs the probe, prints its results and writes the JSON report if asked.
pub fn run(args: &NopArgs) -> Result<(), BenchError> {
    if args.ops == 0 || args.batch == 0 {
        return Err(BenchError::InvalidArguments(
            "--ops and --batch must be positive".into(),
        ));
    }
    let results = rt::block_on(measure(args.ops, args.batch))??;
    println!(
        "probe nop: {} ops in batches of {}: {:.1} ns/op, {:.0} ops/s, {:.4} enters/op",
        results.ops, args.batch, results.ns_per_op, results.ops_per_s, results.enter_calls_per_op,
    );
    let report = Report {
        probe: "nop",
        parameters: args,
        results,
        machine: MachineInfo::gather(None),
    };
    report.write_json(args.json.as_deref())
}

async fn measure(ops: u64, batch: usize) -> Result<NopResults, BenchError> {
    let before = rt::driver_stats();
    let start = Instant::now();
    rt::spawn_local(nop_rounds(ops, batch)).await??;
    let elapsed_s = start.elapsed().as_secs_f64();
    let after = rt::driver_stats();
    let enter_calls = after.enter_calls - before.enter_calls;
    Ok(NopResults {
        ops,
        elapsed_s,
        ns_per_op: elapsed_s * 1e9 / ops as f64,
        ops_per_s: ops as f64 / elapsed_s,
        entries_submitted: after.entries_submitted - before.entries_submitted,
        completions_reaped: after.completions_reaped - before.completions_reaped,
        enter_calls,
        enter_calls_per_op: enter_calls as f64 / ops as f64,
    })
}

/// Submits `batch` no-ops, awaits them in order, repeats; the vector is reused.
async fn nop_rounds(ops: u64, batch: usize) -> Result<(), BenchError> {
    let mut in_flight = Vec::with_capacity(batch);
    let mut done = 0u64;
    while done < ops {
        let count = (ops - done).min(batch as u64);
        in_flight.extend((0..count).map(|_| rt::nop()));
        for op in in_flight.drain(..) {
            op.await.context(|| "no-op".into())?;
        }
        done += count;
    }
    Ok(())
}
