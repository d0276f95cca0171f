//! `ringlog-tune sweep`: measure the node's limits, then the broker under each
//! configuration of the grid on the data directory's file system, and write the report,
//! the chart and the recommended configuration.
//!
//! Everything that can make the sweep useless is checked before anything is measured: the
//! output directory must take a file, the data directory must exist or be creatable, and
//! there must be room for the probes. Once the probes have measured how fast the disk
//! writes, the room for the points themselves is checked against it, before the first
//! point. Points this file system cannot run (direct I/O where O_DIRECT or fallocate is
//! refused) are skipped with a note in the report; a point that fails is recorded with its
//! error and the sweep goes on.

pub mod chart;
pub mod grid;
pub mod limits;
pub mod point;
pub mod recommend;
pub mod report;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ringlog_bench::broker::produce::AcksArg;
use ringlog_bench::size::parse_size_bytes;
use ringlog_engine::topic::IoMode;

use self::grid::{Flush, Grid, Point};
use self::limits::Limits;
use self::point::{Load, Measurement};
use self::recommend::{Durability, Recommendation};
use crate::check::{self, Status};
use crate::TuneError;

/// Free space the probes need: a 1 GiB sequential file, then up to 768 MiB of synced
/// writes, with room to spare.
const PROBE_SPACE_BYTES: u64 = 3 << 30;
/// Stage 2 holds the recommended configuration at this fraction of its throughput.
const STAGE2_LOAD_FRACTION: f64 = 0.5;
/// A stage-2 point keeps up when it sends at least this fraction of the offered rate.
const STAGE2_KEPT_UP_FRACTION: f64 = 0.95;

/// Parameters of `sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// A directory on the file system to tune (created if missing). The sweep's brokers
    /// write below it and delete what they wrote.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where report.md, throughput-latency.svg and recommended.toml go (created if
    /// missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The whole grid: 9 flush policies × 2 I/O modes × 4 batch sizes × 2 acks, then 4
    /// batch sizes × 5 lingers (about 25 minutes at the default duration).
    #[arg(long)]
    pub full: bool,
    /// Seconds each point runs.
    #[arg(long, default_value_t = 3.0)]
    pub duration_per_point: f64,
    /// Runs per point; the point's figures are those of its median run by records/s. On a
    /// shared or noisy machine 3 is worth the time (the default grid then takes about 8
    /// minutes).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Value bytes per record.
    #[arg(long, default_value = "1KiB", value_parser = parse_size_bytes)]
    pub record_size: u64,
    /// Partitions of the sweep's topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// The produce p99 the recommendation must keep, in ms.
    #[arg(long, default_value_t = 10.0)]
    pub p99_ms: f64,
    /// `always` (every acknowledged record fdatasynced), `bounded-ms:N` (at most N ms of
    /// acknowledged records at risk on power loss) or `none`.
    #[arg(long, default_value = "always", value_parser = Durability::parse)]
    pub durability: Durability,
    /// Override the flush policies: comma-separated `always`, `interval:MS`, `bytes:SIZE`,
    /// `never`.
    #[arg(long, value_delimiter = ',', value_parser = Flush::parse)]
    pub flush: Option<Vec<Flush>>,
    /// Override the I/O modes: `direct`, `buffered` or both, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_io_mode)]
    pub io_mode: Option<Vec<IoMode>>,
    /// Override stage 1's producer batch sizes, comma-separated (`64KiB,256KiB`).
    #[arg(long, value_delimiter = ',', value_parser = parse_size_bytes)]
    pub batch_bytes: Option<Vec<u64>>,
    /// Override the acks: `1`, `all` or both, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_acks)]
    pub acks: Option<Vec<AcksArg>>,
    /// Override stage 2's lingers in ms, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_linger)]
    pub linger_ms: Option<Vec<f64>>,
    /// Override stage 2's batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_size_bytes)]
    pub stage2_batch_bytes: Option<Vec<u64>>,
    /// Run stage 1 only (no producer batching at half load).
    #[arg(long)]
    pub no_stage2: bool,
}

fn parse_io_mode(text: &str) -> Result<IoMode, String> {
    match text {
        "direct" => Ok(IoMode::Direct),
        "buffered" => Ok(IoMode::Buffered),
        _ => Err(format!("`{text}`: expected direct or buffered")),
    }
}

fn parse_acks(text: &str) -> Result<AcksArg, String> {
    match text {
        "1" => Ok(AcksArg::Leader),
        "all" | "-1" => Ok(AcksArg::All),
        _ => Err(format!(
            "`{text}`: expected 1 or all (acks=0 has no latency to tune)"
        )),
    }
}

fn parse_linger(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms >= 0.0 => Ok(ms),
        _ => Err(format!("`{text}`: a linger is a number of ms, 0 or more")),
    }
}

impl SweepArgs {
    fn grid(&self) -> Grid {
        let mut grid = if self.full {
            Grid::full()
        } else {
            Grid::short()
        };
        let overrides = [
            self.flush.clone().map(|flush| grid.flush = flush),
            self.io_mode.clone().map(|modes| grid.io_modes = modes),
            self.batch_bytes
                .clone()
                .map(|sizes| grid.batch_bytes = sizes),
            self.acks.clone().map(|acks| grid.acks = acks),
            self.linger_ms
                .clone()
                .map(|lingers| grid.linger_ms = lingers),
            self.stage2_batch_bytes
                .clone()
                .map(|sizes| grid.stage2_batch_bytes = sizes),
        ];
        // An explicit list is run as given, acks=all with every policy listed.
        if overrides.iter().any(Option::is_some) {
            grid.acks_all_every_policy = true;
        }
        if self.no_stage2 {
            grid.linger_ms.clear();
        }
        grid
    }

    fn validate(&self) -> Result<(), TuneError> {
        let invalid = |message: &str| Err(TuneError::InvalidArguments(message.into()));
        if !(self.duration_per_point.is_finite() && self.duration_per_point > 0.0) {
            return invalid("--duration-per-point must be a positive number of seconds");
        }
        if !(self.p99_ms.is_finite() && self.p99_ms > 0.0) {
            return invalid("--p99-ms must be positive");
        }
        if !(1..=9).contains(&self.repeat) {
            return invalid("--repeat must be 1 to 9");
        }
        if self.partitions == 0 || self.partitions > 10_000 {
            return invalid("--partitions must be 1 to 10000");
        }
        if self.record_size == 0 || self.record_size > 1 << 20 {
            return invalid("--record-size must be 1 B to 1 MiB");
        }
        Ok(())
    }
}

/// What every point shares, for the report.
pub struct Sweep {
    pub data_dir: PathBuf,
    pub file_system: String,
    pub load: Load,
    pub shards: usize,
}

/// A point and what became of it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub point: Point,
    pub result: Result<Measurement, String>,
}

/// Runs the sweep; returns the summary printed on stdout.
pub fn run(args: &SweepArgs) -> Result<String, TuneError> {
    args.validate()?;
    let started = Instant::now();
    check_out_dir(&args.out)?;
    let data_dir = prepare_data_dir(&args.data_dir)?;
    let free = check::disk::free_bytes(&data_dir).map_err(|source| TuneError::DataDir {
        dir: data_dir.clone(),
        source,
    })?;
    if let Some(free) = free.filter(|&free| free < PROBE_SPACE_BYTES) {
        return Err(TuneError::NoSpace {
            dir: data_dir,
            needed: PROBE_SPACE_BYTES,
            free,
            what: "the probes",
        });
    }
    let sweep = Sweep {
        file_system: check::disk::file_system(&data_dir).found,
        load: Load {
            record_bytes: args.record_size,
            partitions: args.partitions,
            seconds: args.duration_per_point,
            repeat: args.repeat,
        },
        shards: ringlog_engine::rt::allowed_cpus().len().max(1),
        data_dir,
    };
    let grid = args.grid();
    let mut stage1_points = grid.stage1();
    let mut notes = Vec::new();
    let direct_refused = ringlog_engine::storage::probe_direct_io(&sweep.data_dir).err();
    if let Some(error) = &direct_refused {
        let before = stage1_points.len();
        stage1_points.retain(|point| point.io_mode != IoMode::Direct);
        notes.push(format!(
            "skipped {} direct-I/O points: the file system refuses O_DIRECT ({error})",
            before - stage1_points.len()
        ));
    }
    let fallocate = check::disk::fallocate(&sweep.data_dir);
    let fallocate_ok = fallocate.status == Status::Ok;
    if !fallocate_ok {
        notes.push(format!(
            "fallocate: {}; the broker then extends its files as it writes (slower per \
             write) and the probes write without preallocating",
            fallocate.found
        ));
    }
    if free.is_none() {
        notes.push(
            "the file system reports no free space (ramfs): the space needed was not checked"
                .into(),
        );
    }
    let stage2_count = grid.stage2_batch_bytes.len() * grid.linger_ms.len();
    let bar = progress_bar((stage1_points.len() + stage2_count) * args.repeat as usize);
    let probes = ProbeSetup {
        direct: direct_refused.is_none(),
        fallocate: fallocate_ok,
        free,
    };
    let limits = measure_limits(&sweep, &probes, &bar, args.duration_per_point)?;
    let stage1 = run_points(&stage1_points, &sweep, &limits, &bar);
    let choice = recommend::choose(&stage1, args.durability, args.p99_ms);
    let stage2 = match &choice {
        Some(choice) if stage2_count > 0 => {
            let base = &stage1[choice.index];
            let rate = base.result.as_ref().map_or(0.0, |measured| {
                measured.records_per_s * STAGE2_LOAD_FRACTION
            });
            run_points(&grid.stage2(&base.point, rate), &sweep, &limits, &bar)
        }
        _ => Vec::new(),
    };
    bar.finish_and_clear();
    let client_choice = choice
        .as_ref()
        .and_then(|choice| choose_client(&stage2, stage1[choice.index].point.batch_bytes));
    let input = report::ReportInput {
        sweep: &sweep,
        limits: &limits,
        stage1: &stage1,
        stage2: &stage2,
        choice: choice.as_ref(),
        client_choice,
        durability: args.durability,
        p99_ms: args.p99_ms,
        notes: &notes,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    write_outputs(args, &input)
}

/// The output directory must take a file before anything is measured.
fn check_out_dir(out: &Path) -> Result<(), TuneError> {
    let unwritable = |source| TuneError::OutUnwritable {
        dir: out.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out).map_err(unwritable)?;
    let probe = out.join(format!(".ringlog-tune-{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(unwritable)?;
    std::fs::remove_file(&probe).map_err(unwritable)
}

fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf, TuneError> {
    let failed = |source| TuneError::DataDir {
        dir: data_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(failed)?;
    data_dir.canonicalize().map_err(failed)
}

/// What the probes may use on the data directory's file system, and its free space.
struct ProbeSetup {
    direct: bool,
    fallocate: bool,
    free: Option<u64>,
}

fn progress_bar(points: usize) -> ProgressBar {
    let bar = ProgressBar::new(points as u64);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} points, ~{eta} left  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn measure_limits(
    sweep: &Sweep,
    probes: &ProbeSetup,
    bar: &ProgressBar,
    seconds: f64,
) -> Result<Limits, TuneError> {
    let mut step = |message: &str| {
        if !std::io::stderr().is_terminal() {
            eprintln!("{message}");
        }
        bar.set_message(message.to_owned());
    };
    let mut limits = Limits::measure(
        &sweep.data_dir,
        sweep.load.partitions,
        (probes.direct, probes.fallocate),
        &mut step,
    )?;
    let needed = limits.space_needed_bytes(seconds);
    if let Some(free) = probes.free.filter(|&free| free < needed) {
        return Err(TuneError::NoSpace {
            dir: sweep.data_dir.clone(),
            needed,
            free,
            what: "the sweep's points (the fastest probed write for one point's duration, \
                   doubled, plus 1 GiB)",
        });
    }
    bar.set_message("warming memory");
    // The broker's batch cache (an eighth of memory by default) plus a gigabyte for the
    // rest of the process.
    limits.warmed_bytes =
        limits::warm_memory(ringlog_server::config::memory_bytes() / 8 + (1 << 30));
    Ok(limits)
}

/// Runs every point `--repeat` times; a point's figures are its median run's by records/s,
/// and a point fails if any of its runs does.
fn run_points(points: &[Point], sweep: &Sweep, limits: &Limits, bar: &ProgressBar) -> Vec<Outcome> {
    points
        .iter()
        .map(|point| {
            bar.set_message(point.to_string());
            let mut runs = Vec::new();
            let mut failure = None;
            for _ in 0..sweep.load.repeat {
                match point::run(point, &sweep.load, &sweep.data_dir, limits) {
                    Ok(measured) => runs.push(measured),
                    Err(error) => {
                        let error = error_chain(&error);
                        bar.println(format!("point failed: {point}: {error}"));
                        failure = Some(error);
                    }
                }
                bar.inc(1);
            }
            let result = match failure {
                Some(error) => Err(error),
                None => Ok(median_run(runs)),
            };
            if !std::io::stderr().is_terminal() {
                // No bar is drawn off a terminal: a line per point, for logs.
                log_point(bar, point, &result);
            }
            Outcome {
                point: *point,
                result,
            }
        })
        .collect()
}

fn log_point(bar: &ProgressBar, point: &Point, result: &Result<Measurement, String>) {
    let position = bar.position();
    let total = bar.length().unwrap_or(position);
    match result {
        Ok(measured) => eprintln!(
            "[{position}/{total}] {point}: {:.0} records/s, p99 {:.2} ms",
            measured.records_per_s, measured.p99_ms
        ),
        Err(error) => eprintln!("[{position}/{total}] {point}: failed: {error}"),
    }
}

/// The run with the median records/s (the upper one of an even count).
fn median_run(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.records_per_s.total_cmp(&b.records_per_s));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

/// The error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Stage 2's pick: among the points that kept up with the offered rate, the lowest bound
/// on a record's p99 (the request's p99 plus the linger it may wait), at stage 1's batch
/// size `batch_bytes` if any point there kept up. `batch.size` is a cap: at full load
/// batches fill to it, so stage 1 chooses it; below full load the linger decides.
fn choose_client(stage2: &[Outcome], batch_bytes: u64) -> Option<usize> {
    let kept_up: Vec<(usize, &Outcome, f64)> = stage2
        .iter()
        .enumerate()
        .filter_map(|(index, outcome)| {
            let measured = outcome.result.as_ref().ok()?;
            let offered = outcome.point.rate?;
            let kept_up = measured.records_per_s >= offered * STAGE2_KEPT_UP_FRACTION;
            let bound_ms = measured.p99_ms + outcome.point.linger_ms.unwrap_or(0.0);
            kept_up.then_some((index, outcome, bound_ms))
        })
        .collect();
    let same_batch = kept_up
        .iter()
        .any(|(_, outcome, _)| outcome.point.batch_bytes == batch_bytes);
    kept_up
        .into_iter()
        .filter(|(_, outcome, _)| !same_batch || outcome.point.batch_bytes == batch_bytes)
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .map(|(index, _, _)| index)
}

fn write_outputs(args: &SweepArgs, input: &report::ReportInput<'_>) -> Result<String, TuneError> {
    let write = |name: &str, text: &str| {
        let path = args.out.join(name);
        std::fs::write(&path, text).map_err(|source| TuneError::Write { path, source })
    };
    write("report.md", &input.markdown())?;
    let chart_path = args.out.join("throughput-latency.svg");
    chart::draw(
        &chart_path,
        input.stage1,
        args.p99_ms,
        input.choice.map(|choice| choice.index),
    )
    .map_err(TuneError::Chart)?;
    let mut summary = format!(
        "ringlog-tune sweep: {} points in {:.0} s on {}\n",
        input.stage1.len() + input.stage2.len(),
        input.elapsed_s,
        input.sweep.data_dir.display()
    );
    let Some(choice) = input.choice else {
        summary.push_str("no point kept the durability asked: no recommended.toml\n");
        return Err(TuneError::NoRecommendation(summary));
    };
    let outcome = &input.stage1[choice.index];
    let Ok(measured) = &outcome.result else {
        unreachable!("a chosen point has a measurement");
    };
    let recommendation = Recommendation {
        point: &outcome.point,
        measured,
        within_budget: choice.within_budget,
        durability: args.durability,
        p99_ms: args.p99_ms,
        data_dir: &input.sweep.data_dir,
        shards: input.sweep.shards,
        linger_ms: input
            .client_choice
            .and_then(|index| input.stage2.get(index))
            .and_then(|outcome| outcome.point.linger_ms),
    };
    write("recommended.toml", &recommendation.toml())?;
    let _ = write!(
        summary,
        "recommended{}: {} — {:.0} records/s, {:.1} MB/s ({:.2} of the limit), p99 {:.2} ms\n\
         wrote {}/report.md, throughput-latency.svg, recommended.toml\n",
        if choice.within_budget {
            ""
        } else {
            " (over the p99 budget: nothing durable met it)"
        },
        outcome.point,
        measured.records_per_s,
        measured.mb_per_s,
        measured.ratio_to_limit,
        measured.p99_ms,
        args.out.display()
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: SweepArgs,
    }

    fn parse(argv: &[&str]) -> Result<SweepArgs, clap::Error> {
        let mut full = vec!["sweep", "--data-dir", "d", "--out", "o"];
        full.extend(argv);
        Command::try_parse_from(full).map(|command| command.args)
    }

    #[test]
    fn axis_lists_override_the_grid_and_bad_values_are_named() {
        let args = parse(&[
            "--flush",
            "always,interval:5,bytes:1MiB",
            "--io-mode",
            "buffered",
            "--batch-bytes",
            "16KiB,1MiB",
            "--acks",
            "all",
            "--linger-ms",
            "0,2.5",
        ])
        .unwrap();
        let grid = args.grid();
        assert_eq!(
            grid.flush,
            vec![Flush::Always, Flush::IntervalMs(5), Flush::Bytes(1 << 20)]
        );
        assert_eq!(grid.io_modes, vec![IoMode::Buffered]);
        assert_eq!(grid.batch_bytes, vec![16 << 10, 1 << 20]);
        assert_eq!(grid.linger_ms, vec![0.0, 2.5]);
        // Listed explicitly, acks=all runs with every policy listed.
        assert_eq!(grid.stage1().len(), 3 * 2);
        assert_eq!(parse(&[]).unwrap().grid(), Grid::short());
        assert!(parse(&["--no-stage2"]).unwrap().grid().linger_ms.is_empty());
        for bad in [
            ["--flush", "always,sometimes"],
            ["--acks", "0"],
            ["--io-mode", "mmap"],
            ["--linger-ms=-1", "x"],
            ["--durability", "bounded-ms:0"],
        ] {
            let argv: Vec<&str> = bad.into_iter().filter(|arg| *arg != "x").collect();
            let error = parse(&argv).err().unwrap().to_string();
            let flag = bad[0].split('=').next().unwrap();
            assert!(error.contains(flag), "{bad:?}: {error}");
        }
    }

    #[test]
    fn an_unwritable_out_is_refused_before_anything_is_measured() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let args = parse(&[]).map(|mut args| {
            args.out = file.path().join("report");
            args.data_dir = std::env::temp_dir().join("ringlog-tune-never-created");
            args
        });
        let error = run(&args.unwrap()).unwrap_err();
        assert!(matches!(error, TuneError::OutUnwritable { .. }), "{error}");
        assert!(!std::env::temp_dir()
            .join("ringlog-tune-never-created")
            .exists());
    }

    #[test]
    fn the_client_pick_is_the_lowest_record_bound_that_kept_up() {
        let outcome = |linger_ms: f64, records_per_s: f64, p99_ms: f64| {
            let mut point = Grid::short().stage1()[0];
            point.linger_ms = Some(linger_ms);
            point.rate = Some(1000.0);
            Outcome {
                point,
                result: Ok(Measurement {
                    records_per_s,
                    mb_per_s: 1.0,
                    p50_ms: 1.0,
                    p99_ms,
                    p999_ms: p99_ms,
                    fdatasyncs_per_s: 0.0,
                    fdatasync_mean_ms: 0.0,
                    fdatasync_p99_bound_ms: 0.0,
                    group_bytes: 1.0,
                    limit_mb_per_s: 1.0,
                    ratio_to_limit: 1.0,
                    at_risk_ms: None,
                }),
            }
        };
        let stage2 = [
            outcome(0.0, 500.0, 1.0),  // fell behind the offered 1,000 records/s
            outcome(1.0, 990.0, 3.0),  // 3 + 1 = 4
            outcome(5.0, 1000.0, 0.5), // 0.5 + 5 = 5.5
        ];
        let batch_bytes = stage2[0].point.batch_bytes;
        assert_eq!(choose_client(&stage2, batch_bytes), Some(1));
        assert_eq!(choose_client(&stage2[..1], batch_bytes), None);
        // Stage 1's batch size first, if a point with it kept up.
        let mut other_batch = stage2.clone();
        other_batch[1].point.batch_bytes = batch_bytes * 4;
        assert_eq!(choose_client(&other_batch, batch_bytes), Some(2));
        assert_eq!(choose_client(&other_batch[..2], batch_bytes), Some(1));
    }
}
