//! `engine read`: reads every partition under `--path` back, from its log start to its high
//! watermark, the way a consumer's fetches would: `PartitionLog::read(offset, max_bytes)`
//! returns a file range of the segment holding `offset`; the bench reads that range with one
//! io_uring read into a buffer reused for the whole run (the page cache copy is the cost
//! measured, not an allocation per fetch), walks the whole batches in it to find the next
//! offset, and fetches again. A range's last batch may be cut short by `max_bytes`; it is
//! not counted and is fetched again from its start, as a Kafka client does.
//!
//! Each pass must see exactly the records the logs hold, or the command fails.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ringlog_engine::batch::{HEADER_SIZE_BYTES, LOG_OVERHEAD_BYTES};
use ringlog_engine::log::{PartitionLog, ReadRange};
use ringlog_engine::rt::{self, IoBuf, PooledBuf};
use ringlog_engine::storage::{DiskStorage, StorageFile};
use ringlog_engine::topic::TopicConfig;
use serde::Serialize;

use super::{close_logs, open_logs};
use crate::error::{BenchError, IoContext};
use crate::machine::MachineInfo;
use crate::report::{gb_per_s, mib_per_s, Report};
use crate::size::parse_size_bytes;

/// The batch header fields the walk reads, from Kafka's RecordBatch v2 layout (the table is
/// in `engine/src/batch/layout.rs`; the engine's own header reader is crate-private, and
/// `RecordBatch::parse` checks the CRC, which is not what a read benchmark should time):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | baseOffset |
/// | 8 | 4 | batchLength (bytes after this field) |
/// | 16 | 1 | magic (2) |
/// | 23 | 4 | lastOffsetDelta |
/// | 57 | 4 | recordCount |
const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const LAST_OFFSET_DELTA_AT: usize = 23;
const RECORD_COUNT_AT: usize = 57;
const _: () = assert!(RECORD_COUNT_AT + 4 == HEADER_SIZE_BYTES);
const _: () = assert!(BATCH_LENGTH_AT + 4 == LOG_OVERHEAD_BYTES);

/// How the logs are read back.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ReadPhaseArgs {
    /// `max_bytes` of each fetch (Kafka's max.partition.fetch.bytes defaults to 1 MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size_bytes)]
    pub read_bytes: u64,
    /// Passes over all partitions; each is reported.
    #[arg(long, default_value_t = 2)]
    pub read_passes: u32,
}

/// Parameters of `engine read`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ReadArgs {
    /// Directory of the partitions (`p-0`, `p-1`, …) an `engine append` left.
    #[arg(long)]
    pub path: PathBuf,
    /// Partitions to read.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    #[command(flatten)]
    pub read: ReadPhaseArgs,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
}

/// One pass over every partition. GB/s is 10^9 bytes per second, MiB/s 2^20.
#[derive(Debug, Clone, Serialize)]
pub struct ReadPass {
    pub pass: u32,
    pub bytes: u64,
    pub records: u64,
    pub batches: u64,
    pub fetches: u64,
    pub elapsed_s: f64,
    pub gb_per_s: f64,
    pub mib_per_s: f64,
    #[serde(rename = "records_per_sec")]
    pub records_per_s: f64,
}

/// What one pass has counted so far.
#[derive(Debug, Default)]
struct Tally {
    bytes: u64,
    records: u64,
    batches: u64,
    fetches: u64,
}

/// Runs the command, prints its results and writes the JSON report if asked.
pub fn run(args: &ReadArgs) -> Result<(), BenchError> {
    if args.partitions == 0 || args.read.read_passes == 0 || args.read.read_bytes == 0 {
        return Err(BenchError::InvalidArguments(
            "--partitions, --read-passes and --read-bytes must be positive".into(),
        ));
    }
    let passes = rt::block_on(async {
        let logs = open_logs(&args.path, args.partitions, &TopicConfig::default()).await?;
        let records: i64 = logs
            .iter()
            .map(|log| log.offsets().high_watermark - log.offsets().log_start)
            .sum();
        let passes = read_logs(&logs, &args.read, records as u64).await?;
        close_logs(&logs).await?;
        Ok::<_, BenchError>(passes)
    })??;
    for pass in &passes {
        print_pass(pass);
    }
    let report = Report {
        probe: "engine-read",
        parameters: args,
        results: passes,
        machine: MachineInfo::gather(Some(&args.path)),
    };
    report.write_json(args.json.as_deref())
}

/// Prints one pass.
pub fn print_pass(pass: &ReadPass) {
    println!(
        "engine read pass {}: {} records in {} batches, {} fetches: {:.3} GB/s \
         ({:.1} MiB/s), {:.0} records/s, {:.3} s",
        pass.pass,
        pass.records,
        pass.batches,
        pass.fetches,
        pass.gb_per_s,
        pass.mib_per_s,
        pass.records_per_s,
        pass.elapsed_s,
    );
}

/// Reads every log from start to high watermark `passes` times; each pass must count
/// `records_expected` records.
pub async fn read_logs(
    logs: &[PartitionLog<DiskStorage>],
    args: &ReadPhaseArgs,
    records_expected: u64,
) -> Result<Vec<ReadPass>, BenchError> {
    let mut buf = rt::buf_pool().get(args.read_bytes as usize);
    let mut passes = Vec::new();
    for pass in 1..=args.read_passes {
        let mut tally = Tally::default();
        let start = Instant::now();
        for log in logs {
            buf = read_partition(log, args.read_bytes, buf, &mut tally).await?;
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        if tally.records != records_expected {
            return Err(BenchError::Inconsistent(format!(
                "read pass {pass} saw {} records, the logs hold {records_expected}",
                tally.records
            )));
        }
        passes.push(ReadPass {
            pass,
            bytes: tally.bytes,
            records: tally.records,
            batches: tally.batches,
            fetches: tally.fetches,
            elapsed_s,
            gb_per_s: gb_per_s(tally.bytes, elapsed_s),
            mib_per_s: mib_per_s(tally.bytes, elapsed_s),
            records_per_s: tally.records as f64 / elapsed_s,
        });
    }
    Ok(passes)
}

/// Fetches one log from its start to its high watermark; returns the buffer for reuse.
async fn read_partition(
    log: &PartitionLog<DiskStorage>,
    max_bytes: u64,
    mut buf: PooledBuf,
    tally: &mut Tally,
) -> Result<PooledBuf, BenchError> {
    let offsets = log.offsets();
    let mut offset = offsets.log_start;
    while offset < offsets.high_watermark {
        let slice = log.read(offset, max_bytes).await?;
        if slice.ranges.is_empty() {
            return Err(BenchError::Inconsistent(format!(
                "{}: read at {offset} below the high watermark returned nothing",
                log.id()
            )));
        }
        let mut offset_next = None;
        for range in &slice.ranges {
            let walk = match range {
                ReadRange::Memory(bytes) => walk_batches(bytes),
                ReadRange::File(range) => {
                    let Some(file) = range.file.runtime_file() else {
                        unreachable!("DiskStorage files are runtime files")
                    };
                    let len = usize::try_from(range.len).unwrap_or(usize::MAX);
                    if len > buf.capacity() {
                        buf = rt::buf_pool().get(len);
                    }
                    buf = read_range(file, range.position, len, buf).await?;
                    walk_batches(rt::initialized(&buf))
                }
            };
            offset_next = walk.offset_next.or(offset_next);
            tally.bytes += walk.bytes;
            tally.records += walk.records;
            tally.batches += walk.batches;
        }
        match offset_next {
            Some(next) if next > offset => offset = next,
            _ => {
                return Err(BenchError::Inconsistent(format!(
                    "{}: the range read at offset {offset} holds no whole batch",
                    log.id()
                )))
            }
        }
        tally.fetches += 1;
    }
    Ok(buf)
}

/// Reads `len` bytes at `position` into `buf` (cleared first), continuing after short reads.
async fn read_range(
    file: &rt::File,
    position: u64,
    len: usize,
    mut buf: PooledBuf,
) -> Result<PooledBuf, BenchError> {
    buf.clear();
    let mut filled = 0;
    while filled < len {
        let (result, slice) = file
            .read_at(buf.slice(filled..len), position + filled as u64)
            .await;
        buf = slice.into_inner();
        let read = result.context(|| format!("reading {len} bytes at {position}"))?;
        if read == 0 {
            return Err(BenchError::Inconsistent(format!(
                "segment ends {filled} bytes into a range of {len} at {position}"
            )));
        }
        filled += read;
    }
    Ok(buf)
}

/// What the whole batches at the front of a buffer hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Walk {
    pub offset_next: Option<i64>,
    pub records: u64,
    pub batches: u64,
    pub bytes: u64,
    /// Where the walk stopped at a batch that cannot be one (a length shorter than the
    /// header, or a magic byte other than 2), if it did.
    pub bad_framing_at: Option<usize>,
}

/// Walks the whole batches at the front of `bytes` (a cut-short last batch is left out).
pub(crate) fn walk_batches(bytes: &[u8]) -> Walk {
    let field = |at: usize, len: usize| bytes.get(at..at + len);
    let mut walk = Walk::default();
    let mut at = 0usize;
    while let Some(length) = field(at + BATCH_LENGTH_AT, 4) {
        let length = i32::from_be_bytes(length.try_into().unwrap_or_default());
        let size = LOG_OVERHEAD_BYTES + usize::try_from(length).unwrap_or(0);
        if size < HEADER_SIZE_BYTES || bytes.get(at + MAGIC_AT).is_some_and(|&magic| magic != 2) {
            walk.bad_framing_at = Some(at);
            break;
        }
        if at + size > bytes.len() {
            break;
        }
        let read_i64 = |offset: usize| {
            i64::from_be_bytes(
                bytes[at + offset..at + offset + 8]
                    .try_into()
                    .unwrap_or_default(),
            )
        };
        let read_i32 = |offset: usize| {
            i32::from_be_bytes(
                bytes[at + offset..at + offset + 4]
                    .try_into()
                    .unwrap_or_default(),
            )
        };
        let last_offset = read_i64(BASE_OFFSET_AT) + i64::from(read_i32(LAST_OFFSET_DELTA_AT));
        walk.offset_next = Some(last_offset + 1);
        walk.records += u64::from(read_i32(RECORD_COUNT_AT).unsigned_abs());
        walk.batches += 1;
        walk.bytes += size as u64;
        at += size;
    }
    walk
}

#[cfg(test)]
mod tests {
    use ringlog_engine::batch::BatchBuilder;

    use super::walk_batches;

    #[test]
    fn walk_counts_whole_batches_and_leaves_a_cut_one_out() {
        let mut bytes = Vec::new();
        for base_offset in [10, 13] {
            let mut builder = BatchBuilder::new().base_offset(base_offset);
            for _ in 0..3 {
                builder.push(0, None, Some(b"value"), &[]).unwrap();
            }
            bytes.extend_from_slice(&builder.build());
        }
        let whole = walk_batches(&bytes);
        assert_eq!(
            (whole.offset_next, whole.records, whole.batches),
            (Some(16), 6, 2)
        );
        assert_eq!(whole.bytes, bytes.len() as u64);
        let cut = walk_batches(&bytes[..bytes.len() - 1]);
        assert_eq!(
            (cut.offset_next, cut.records, cut.batches),
            (Some(13), 3, 1)
        );
        assert_eq!(walk_batches(&bytes[..5]).offset_next, None);
    }
}
