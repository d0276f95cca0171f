//! The append load: `in_flight` tasks on the current shard, task `i` appending to partition
//! `i % partitions` (so `in_flight` is the total across partitions, spread round-robin), each
//! looping copy → append → await until the byte budget or the deadline is reached.
//!
//! Per append a task copies one prebuilt batch into a fresh `BytesMut` (allocation and
//! memcpy, what a broker pays reading a request off a socket; timed apart and reported) and
//! awaits `PartitionLog::append`, whose latency (from the call to the ack, copy excluded)
//! goes into the histogram. Group commits are counted by the engine's process-wide
//! `GROUP_COMMIT_APPENDS` histogram (one observation per group), read before and after.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringlog_engine::log::metrics::GROUP_COMMIT_APPENDS;
use ringlog_engine::log::{Ack, PartitionLog};
use ringlog_engine::rt::{self, DriverStats};
use ringlog_engine::storage::DiskStorage;

use super::batches::PrebuiltBatches;
use super::latency::Latencies;
use crate::error::BenchError;

/// When a load stops issuing appends.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many bytes of batches have been issued (whole batches only).
    Bytes(u64),
    /// At this instant (appends in flight then still complete).
    Until(Instant),
}

/// What to append, how, and how much.
pub struct Load {
    pub batches: Rc<PrebuiltBatches>,
    pub ack: Ack,
    pub limit: Limit,
    pub in_flight: usize,
}

/// What a load did.
#[derive(Debug)]
pub struct LoadOutcome {
    pub appends: u64,
    pub records: u64,
    pub bytes: u64,
    /// From the first append issued to the last acknowledged.
    pub elapsed: Duration,
    /// Time the tasks spent copying batches into fresh buffers (inside `elapsed`).
    pub copy: Duration,
    pub latencies: Latencies,
    /// Group commits (the engine's process-wide group-commit counter, so the logs of
    /// this load only).
    pub groups: u64,
    /// The shard's driver counters over the load.
    pub driver: DriverStats,
}

/// Counters the tasks of one load share (one thread: `Cell`s suffice).
struct Tally {
    batches: Rc<PrebuiltBatches>,
    ack: Ack,
    limit: Limit,
    issued_bytes: Cell<u64>,
    appends: Cell<u64>,
    records: Cell<u64>,
    bytes: Cell<u64>,
    copy: Cell<Duration>,
    latencies: RefCell<Latencies>,
}

impl Tally {
    /// Whether another append may be issued; counts it against a byte budget.
    fn take_next(&self) -> bool {
        match self.limit {
            Limit::Bytes(total) => {
                let len = self.batches.batch_len_bytes() as u64;
                let issued = self.issued_bytes.get();
                if issued + len > total {
                    return false;
                }
                self.issued_bytes.set(issued + len);
                true
            }
            Limit::Until(deadline) => Instant::now() < deadline,
        }
    }
}

/// Runs `load` against `logs` on the current shard and waits for every append.
pub async fn run(
    logs: &[PartitionLog<DiskStorage>],
    load: &Load,
) -> Result<LoadOutcome, BenchError> {
    if logs.is_empty() || load.in_flight == 0 {
        return Err(BenchError::InvalidArguments(
            "a load needs partitions and appends in flight".into(),
        ));
    }
    let tally = Rc::new(Tally {
        batches: load.batches.clone(),
        ack: load.ack,
        limit: load.limit,
        issued_bytes: Cell::new(0),
        appends: Cell::new(0),
        records: Cell::new(0),
        bytes: Cell::new(0),
        copy: Cell::new(Duration::ZERO),
        latencies: RefCell::new(Latencies::new()),
    });
    let groups_before = GROUP_COMMIT_APPENDS.snapshot().count;
    let driver_before = rt::driver_stats();
    let start = Instant::now();
    let tasks: Vec<_> = (0..load.in_flight)
        .map(|task| {
            let log = logs[task % logs.len()].clone();
            rt::spawn_local(append_loop(log, tally.clone(), task))
        })
        .collect();
    let mut first_error = None;
    for task in tasks {
        if let Err(error) = task.await.map_err(BenchError::from).and_then(|done| done) {
            first_error.get_or_insert(error);
        }
    }
    let elapsed = start.elapsed();
    if let Some(error) = first_error {
        return Err(error);
    }
    let groups_after = GROUP_COMMIT_APPENDS.snapshot().count;
    let latencies = tally.latencies.borrow().clone();
    Ok(LoadOutcome {
        appends: tally.appends.get(),
        records: tally.records.get(),
        bytes: tally.bytes.get(),
        elapsed,
        copy: tally.copy.get(),
        latencies,
        groups: groups_after - groups_before,
        driver: driver_delta(driver_before, rt::driver_stats()),
    })
}

/// One task: copy the next batch, append it, await the ack, repeat.
async fn append_loop(
    log: PartitionLog<DiskStorage>,
    tally: Rc<Tally>,
    task: usize,
) -> Result<(), BenchError> {
    let mut batch_index = task;
    while tally.take_next() {
        let copy_start = Instant::now();
        let source = tally.batches.get(batch_index);
        let len_bytes = source.len() as u64;
        let mut batch = BytesMut::with_capacity(source.len());
        batch.extend_from_slice(source);
        batch_index += 1;
        let append_start = Instant::now();
        tally
            .copy
            .set(tally.copy.get() + (append_start - copy_start));
        let appended = log.append(batch.freeze(), tally.ack).await?;
        tally.latencies.borrow_mut().record(append_start.elapsed());
        let records = appended.offset_next - appended.offset_first;
        tally.appends.set(tally.appends.get() + 1);
        tally.records.set(tally.records.get() + records as u64);
        tally.bytes.set(tally.bytes.get() + len_bytes);
    }
    Ok(())
}

/// The counters' growth between two readings; gauges (operations in flight now, and the
/// peak) are `after`'s.
fn driver_delta(before: DriverStats, after: DriverStats) -> DriverStats {
    DriverStats {
        entries_submitted: after.entries_submitted - before.entries_submitted,
        completions_reaped: after.completions_reaped - before.completions_reaped,
        enter_calls: after.enter_calls - before.enter_calls,
        ..after
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use ringlog_engine::log::Ack;
    use ringlog_engine::rt;
    use ringlog_engine::topic::TopicConfig;

    use super::{run, Limit, Load};
    use crate::engine::batches::PrebuiltBatches;
    use crate::engine::read::{read_logs, ReadPhaseArgs};
    use crate::engine::{close_logs, open_logs};

    #[test]
    fn appends_a_few_mib_to_two_partitions_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let batches = Rc::new(PrebuiltBatches::new(1024, 64 << 10).unwrap());
        let batch_len = batches.batch_len_bytes() as u64;
        rt::block_on(async {
            let logs = open_logs(dir.path(), 2, &TopicConfig::default())
                .await
                .unwrap();
            let load = Load {
                batches: batches.clone(),
                ack: Ack::Durable,
                limit: Limit::Bytes(4 << 20),
                in_flight: 8,
            };
            let outcome = run(&logs, &load).await.unwrap();
            let appends = (4 << 20) / batch_len;
            assert_eq!(outcome.appends, appends);
            assert_eq!(outcome.bytes, appends * batch_len);
            assert_eq!(outcome.records, appends * batches.records_per_batch());
            // The group counter is process-wide: other tests' groups may add to it.
            assert!(outcome.groups > 0);
            assert_eq!(outcome.latencies.summary().count, appends);
            let read = ReadPhaseArgs {
                read_bytes: 200 << 10,
                read_passes: 1,
            };
            let passes = read_logs(&logs, &read, outcome.records).await.unwrap();
            assert_eq!(passes[0].bytes, outcome.bytes);
            close_logs(&logs).await.unwrap();
        })
        .unwrap();
    }
}
