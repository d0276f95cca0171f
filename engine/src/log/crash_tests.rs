//! Crash and fault tests of the partition log on the fault-injecting storage backend:
//! crashing at every fsync point loses nothing acknowledged as durable, and a failed write
//! or fdatasync poisons the partition instead of being retried as success.

use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::batch::{BatchBuilder, RecordBatch};
use crate::rt;
use crate::storage::fault::{FaultStats, FaultStorage};
use crate::testing::values as record_values;

const BATCHES: u32 = 16;
const RECORDS_PER_BATCH: usize = 8;

fn id() -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("crash"),
        partition: 0,
    }
}

fn config() -> TopicConfig {
    TopicConfig::builder()
        .flush(FlushPolicy::Always)
        .segment_bytes(4096)
        .preallocate_bytes(4096)
        .build()
        .unwrap()
}

fn batch(tag: u32) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..RECORDS_PER_BATCH {
        let value = format!("{tag:04}-{i}-{}", "x".repeat(40));
        builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
    }
    Bytes::from(builder.build())
}

/// Every record value of the log, reading segment after segment up to the high watermark.
async fn read_all(log: &PartitionLog<FaultStorage>) -> Vec<String> {
    let mut values = Vec::new();
    let mut offset = log.offsets().log_start;
    while offset < log.offsets().high_watermark {
        let bytes = log.read_bytes(offset, 1 << 20).await.unwrap();
        let mut rest = &bytes[..];
        while let Ok((batch, next)) = RecordBatch::parse(rest) {
            offset = batch.base_offset() + i64::from(batch.last_offset_delta()) + 1;
            rest = next;
        }
        let before = values.len();
        values.extend(record_values(&bytes));
        assert!(
            values.len() > before,
            "no progress reading at offset {offset}: {:?}, {} bytes",
            log.offsets(),
            bytes.len()
        );
    }
    values
}

/// Appends the batches one by one with `Ack::Durable`; returns the tags acknowledged
/// before the first failure.
async fn workload(storage: &FaultStorage, dir: &Path) -> Vec<u32> {
    let Ok(log) = PartitionLog::open(storage.clone(), dir, id(), config()).await else {
        return Vec::new();
    };
    let mut acknowledged = Vec::new();
    for tag in 0..BATCHES {
        match log.append(batch(tag), Ack::Durable).await {
            Ok(appended) => {
                assert_eq!(
                    appended.offset_first,
                    i64::from(tag) * RECORDS_PER_BATCH as i64
                );
                acknowledged.push(tag);
            }
            Err(_) => break,
        }
    }
    let _ = log.close().await;
    acknowledged
}

/// Appends the batches as concurrent tasks, one arriving per executor turn, to a log that
/// fsyncs only for acks=all (`flush = never`): most appends `Ack::Written`, every fourth
/// `Ack::Durable`. Groups of several appends form while others are written, and under
/// latency the seal of a rolled segment is in flight while groups go to the next one.
/// Returns the tags acknowledged as durable.
async fn workload_mixed(storage: &FaultStorage, dir: &Path) -> Vec<u32> {
    let config = TopicConfig::builder()
        .flush(FlushPolicy::Never)
        .segment_bytes(4096)
        .preallocate_bytes(4096)
        .build()
        .unwrap();
    let Ok(log) = PartitionLog::open(storage.clone(), dir, id(), config).await else {
        return Vec::new();
    };
    // A task, not the root future: tasks take turns with the appender one by one, while
    // the root future of `block_on` runs only between rounds of many task turns.
    let producer = {
        let log = log.clone();
        rt::spawn_local(async move {
            let mut appends = Vec::new();
            for tag in 0..BATCHES {
                let log = log.clone();
                let ack = if tag % 4 == 3 {
                    Ack::Durable
                } else {
                    Ack::Written
                };
                appends.push(rt::spawn_local(async move {
                    (tag, ack, log.append(batch(tag), ack).await)
                }));
                for _ in 0..ARRIVAL_TURNS {
                    rt::yield_now().await;
                }
            }
            appends
        })
    };
    let Ok(appends) = producer.await else {
        unreachable!("the producer task runs to completion");
    };
    let mut acknowledged = Vec::new();
    for append in appends {
        let Ok((tag, ack, Ok(appended))) = append.await else {
            continue;
        };
        assert_eq!(
            appended.offset_first,
            i64::from(tag) * RECORDS_PER_BATCH as i64
        );
        if ack == Ack::Durable {
            acknowledged.push(tag);
        }
    }
    let _ = log.close().await;
    acknowledged
}

/// Executor turns between two appends of the mixed workload: about as long as an
/// operation takes under latency, so appends trickle in while groups, syncs and seals run.
const ARRIVAL_TURNS: usize = 24;

/// How a crash test runs: the storage's latency, and the workload.
#[derive(Clone, Copy)]
struct CrashRun {
    /// `None`: every operation completes at once; `Some(seed)`: seeded latency.
    latency_seed: Option<u64>,
    /// `workload_mixed` rather than `workload`.
    mixed: bool,
}

/// Executor turns an operation takes at most under latency: enough for a write to still
/// be running while a sync is issued, and for a seal to overlap the next group.
const LATENCY_TURNS_MAX: u64 = 12;

impl CrashRun {
    fn storage(self) -> FaultStorage {
        let storage = FaultStorage::new();
        match self.latency_seed {
            Some(seed) => storage.with_latency(seed, LATENCY_TURNS_MAX),
            None => storage,
        }
    }

    async fn workload(self, storage: &FaultStorage, dir: &Path) -> Vec<u32> {
        if self.mixed {
            workload_mixed(storage, dir).await
        } else {
            workload(storage, dir).await
        }
    }
}

/// Runs the workload once to count its sync points, then crashes it at every one with
/// seeded power loss and checks that the recovered log holds everything acknowledged, in
/// order, and nothing but whole appended batches. Every assertion names the seeds.
/// Returns the dry run's counters.
fn crash_at_every_sync_point(run: CrashRun, dir: &Path) -> FaultStats {
    let latency = run.latency_seed;
    rt::block_on(async {
        let dry = run.storage();
        let all = run.workload(&dry, dir).await;
        let durable = if run.mixed { BATCHES / 4 } else { BATCHES };
        assert_eq!(
            all.len(),
            durable as usize,
            "latency seed {latency:?}: the workload succeeds without faults"
        );
        let sync_points = dry.sync_count();
        assert!(
            sync_points > u64::from(BATCHES) / 4,
            "latency seed {latency:?}: durable appends sync"
        );
        let expected: Vec<String> = (0..BATCHES)
            .flat_map(|tag| {
                (0..RECORDS_PER_BATCH).map(move |i| format!("{tag:04}-{i}-{}", "x".repeat(40)))
            })
            .collect();
        for k in 0..=sync_points {
            for seed in 0..4 {
                let at = format!("latency seed {latency:?}, k={k}, crash seed {seed}");
                let storage = run.storage();
                storage.crash_at_sync(k);
                let acknowledged = run.workload(&storage, dir).await;
                let after = storage.crash_with(seed);
                let log = PartitionLog::open(after, dir, id(), config())
                    .await
                    .unwrap();
                let end = log.offsets().log_end;
                let values = read_all(&log).await;
                assert_eq!(values.len() as i64, end, "{at}: readable = log end");
                assert_eq!(
                    values[..],
                    expected[..values.len()],
                    "{at}: in order, no dups"
                );
                let durable_records = acknowledged
                    .iter()
                    .map(|tag| (*tag as usize + 1) * RECORDS_PER_BATCH)
                    .max()
                    .unwrap_or(0);
                assert!(
                    values.len() >= durable_records,
                    "{at}: records up to {durable_records} acknowledged, {} recovered",
                    values.len()
                );
                log.close().await.unwrap();
            }
        }
        dry.stats()
    })
    .unwrap()
}

#[test]
fn crashing_at_every_fsync_point_loses_nothing_acknowledged() {
    let run = CrashRun {
        latency_seed: None,
        mixed: false,
    };
    crash_at_every_sync_point(run, Path::new("/data/crash-0"));
}

/// The same crashes with operations completing out of order after seeded delays, with
/// the sequential durable workload and the mixed one: writes are in flight while syncs run,
/// and a sync covers only what completed before it was issued. The runs must actually
/// overlap writes and syncs and reorder completions, or the test proves little.
#[test]
fn crashing_at_every_fsync_point_under_latency_loses_nothing_acknowledged() {
    let (mut overlaps, mut reordered) = (0, 0);
    for latency_seed in 1..=4 {
        for mixed in [false, true] {
            let run = CrashRun {
                latency_seed: Some(latency_seed),
                mixed,
            };
            let stats = crash_at_every_sync_point(run, Path::new("/data/crash-latency-0"));
            overlaps += stats.sync_write_overlaps;
            reordered += stats.completions_reordered;
        }
    }
    assert!(
        overlaps > 0 && reordered > 0,
        "the runs overlapped {overlaps} writes and syncs and reordered {reordered} completions"
    );
}

#[test]
fn a_nearly_full_disk_preallocates_only_what_appends_need() {
    let dir = Path::new("/data/nearly-full-0");
    rt::block_on(async {
        let storage = FaultStorage::new();
        let config = TopicConfig::builder()
            .flush(FlushPolicy::Always)
            .preallocate_bytes(64 << 20)
            .build()
            .unwrap();
        let log = PartitionLog::open(storage.clone(), dir, id(), config.clone())
            .await
            .unwrap();
        // Room for each group, not for 64 MiB of preallocation.
        storage.limit_allocations(64 << 10);
        for tag in 0..20 {
            log.append(batch(tag), Ack::Durable).await.unwrap();
        }
        assert!(log.poisoned().is_none());
        assert_eq!(log.offsets().durable_end, 20 * RECORDS_PER_BATCH as i64);
        // A full disk: even the group's own bytes do not fit.
        storage.limit_allocations(0);
        let mut failed = None;
        for tag in 20..2_000 {
            if let Err(error) = log.append(batch(tag), Ack::Durable).await {
                failed = Some(error);
                break;
            }
        }
        let failed = failed.expect("the segment's last allocation runs out");
        assert!(matches!(failed, LogError::StorageFailed { .. }), "{failed}");
        drop(log);
        let reopened = PartitionLog::open(storage.crash_clean(), dir, id(), config)
            .await
            .unwrap();
        assert!(reopened.offsets().log_end >= 20 * RECORDS_PER_BATCH as i64);
        reopened.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn a_failed_write_poisons_the_partition_until_it_is_recovered() {
    let dir = Path::new("/data/poison-0");
    rt::block_on(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config())
            .await
            .unwrap();
        log.append(batch(0), Ack::Durable).await.unwrap();
        storage.fail_nth(1, libc::EIO);
        let failed = log.append(batch(1), Ack::Durable).await.unwrap_err();
        assert!(matches!(failed, LogError::StorageFailed { .. }), "{failed}");
        let refused = log.append(batch(2), Ack::Written).await.unwrap_err();
        assert!(
            matches!(refused, LogError::StorageFailed { .. }),
            "no retry as success"
        );
        assert!(log.poisoned().is_some());
        drop(log);
        let reopened = PartitionLog::open(storage.clone(), dir, id(), config())
            .await
            .unwrap();
        assert_eq!(reopened.offsets().log_end, RECORDS_PER_BATCH as i64);
        reopened.append(batch(3), Ack::Durable).await.unwrap();
        reopened.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn a_lost_fdatasync_is_never_acknowledged() {
    let dir = Path::new("/data/fsyncgate-0");
    rt::block_on(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config())
            .await
            .unwrap();
        log.append(batch(0), Ack::Durable).await.unwrap();
        storage.fail_nth_after_write(1);
        let failed = log.append(batch(1), Ack::Durable).await.unwrap_err();
        let LogError::StorageFailed { source, .. } = &failed else {
            panic!("EIO from the sync: {failed:?}");
        };
        assert_eq!(
            source.io_error().raw_os_error(),
            Some(libc::EIO),
            "{source}"
        );
        let refused = log.append(batch(2), Ack::Durable).await.unwrap_err();
        assert!(
            matches!(&refused, LogError::StorageFailed { source: again, .. }
                if again.io_error().raw_os_error() == Some(libc::EIO)
                    && again.operation() == source.operation()),
            "poisoned, not retried: {refused:?}"
        );
        assert_eq!(log.offsets().durable_end, RECORDS_PER_BATCH as i64);
    })
    .unwrap();
}

/// A process that died after writing (acks=1) but before any fdatasync leaves its batches
/// in the page cache: the next start finds them valid and counts them as durable, so a
/// `flush = always` topic shows them to consumers at once. Recovery must therefore make
/// them durable itself, or a power loss right after the restart takes back records that
/// consumers have already seen. The segment is not preallocated here, so its file ends
/// exactly at its valid bytes and no truncation happens to sync it as a side effect.
#[test]
fn what_recovery_counts_as_durable_survives_a_power_loss_right_after() {
    let dir = Path::new("/data/page-cache-0");
    let config_with = |flush| {
        TopicConfig::builder()
            .flush(flush)
            .segment_bytes(1 << 20)
            .preallocate_bytes(0)
            .build()
            .unwrap()
    };
    rt::block_on(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config_with(FlushPolicy::Never))
            .await
            .unwrap();
        for tag in 0..3 {
            log.append(batch(tag), Ack::Written).await.unwrap();
        }
        // The process dies: no close, no fdatasync; what it wrote stays in the page cache.
        drop(log);
        let restarted =
            PartitionLog::open(storage.clone(), dir, id(), config_with(FlushPolicy::Always))
                .await
                .unwrap();
        let visible = restarted.offsets().high_watermark;
        assert_eq!(
            visible,
            3 * RECORDS_PER_BATCH as i64,
            "consumers see all three"
        );
        drop(restarted);
        // Power loss: only what was made durable is left.
        let after = PartitionLog::open(
            storage.crash_clean(),
            dir,
            id(),
            config_with(FlushPolicy::Always),
        )
        .await
        .unwrap();
        assert_eq!(
            after.offsets().log_end,
            visible,
            "records consumers saw after the restart survive the power loss"
        );
        assert_eq!(read_all(&after).await.len(), visible as usize);
        after.close().await.unwrap();
    })
    .unwrap();
}

/// The errno of the first I/O error in `error`'s source chain.
fn errno_in_chain(error: &LogError) -> Option<i32> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        next = error.source();
    }
    None
}

/// The failure that poisons a partition reaches the waiters of the failing group, and every
/// later append, typed: a full disk (ENOSPC) and a failing one (EIO) stay apart.
#[test]
fn the_errno_that_poisoned_a_partition_reaches_its_waiters_through_the_source_chain() {
    rt::block_on(async {
        // Nothing preallocated ahead: the group's first operation is its fallocate or its
        // write, and either one failing with ENOSPC poisons the log.
        let config = TopicConfig::builder()
            .flush(FlushPolicy::Always)
            .preallocate_bytes(0)
            .build()
            .unwrap();
        let storage = FaultStorage::new();
        let dir = Path::new("/data/typed-poison-0");
        let log = PartitionLog::open(storage.clone(), dir, id(), config.clone())
            .await
            .unwrap();
        log.append(batch(0), Ack::Durable).await.unwrap();
        storage.fail_nth(1, libc::ENOSPC);
        let failed = log.append(batch(1), Ack::Durable).await.unwrap_err();
        assert!(matches!(failed, LogError::StorageFailed { .. }), "{failed}");
        assert_eq!(errno_in_chain(&failed), Some(libc::ENOSPC), "{failed}");
        let refused = log.append(batch(2), Ack::Written).await.unwrap_err();
        assert_eq!(errno_in_chain(&refused), Some(libc::ENOSPC), "{refused}");
        let poisoned = log.poisoned().expect("the log is poisoned");
        assert_eq!(poisoned.io_error().raw_os_error(), Some(libc::ENOSPC));
        drop(log);

        let dir = Path::new("/data/typed-poison-1");
        let log = PartitionLog::open(storage.clone(), dir, id(), config)
            .await
            .unwrap();
        log.append(batch(0), Ack::Durable).await.unwrap();
        storage.fail_nth_after_write(2);
        let failed = log.append(batch(1), Ack::Durable).await.unwrap_err();
        assert_eq!(errno_in_chain(&failed), Some(libc::EIO), "{failed}");
        assert_eq!(log.poisoned().unwrap().operation(), "fdatasync");
    })
    .unwrap();
}

/// A read that returns wrong bytes without an error looks like damage to recovery: the
/// scan stops at the batch whose CRC no longer matches and the log ends before it, so no
/// byte of it (or after it) is served as a record.
#[test]
fn recovery_stops_at_a_batch_a_corrupted_read_returns() {
    let dir = Path::new("/data/corrupt-read-0");
    rt::block_on(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config())
            .await
            .unwrap();
        for tag in 0..3 {
            log.append(batch(tag), Ack::Durable).await.unwrap();
        }
        // The process dies: no checkpoint names the segment's end, so recovery scans it.
        drop(log);
        let after = storage.crash_clean();
        let second_at = batch(0).len() as u64;
        let segment = super::segment::segment_path(dir, 0, "log");
        after.corrupt_reads(&segment, second_at + 30..second_at + 31);
        let log = PartitionLog::open(after, dir, id(), config())
            .await
            .unwrap();
        assert_eq!(log.offsets().log_end, RECORDS_PER_BATCH as i64);
        let values = read_all(&log).await;
        assert_eq!(
            values.len(),
            RECORDS_PER_BATCH,
            "only the batch before the damage"
        );
        assert!(values.iter().all(|value| value.starts_with("0000-")));
        log.close().await.unwrap();
    })
    .unwrap();
}

/// Every record value the workload's first `batches` batches hold, in order.
fn expected_values(batches: u32) -> Vec<String> {
    (0..batches)
        .flat_map(|tag| {
            (0..RECORDS_PER_BATCH).map(move |i| format!("{tag:04}-{i}-{}", "x".repeat(40)))
        })
        .collect()
}

/// A bounded-loss topic: periodic flush with `policy`, and one large segment, so that
/// only the policy's own fdatasyncs make records durable (no roll seals a segment).
fn bounded_config(policy: FlushPolicy) -> TopicConfig {
    TopicConfig::builder()
        .flush(policy)
        .segment_bytes(16 << 20)
        .preallocate_bytes(1 << 20)
        .build()
        .unwrap()
}

/// Recovers the log a power loss left on `after` and checks it holds a clean prefix of
/// the workload: whole batches in append order, nothing else. Returns the batches kept.
async fn recover_prefix(after: FaultStorage, dir: &Path, config: &TopicConfig, at: &str) -> u32 {
    let log = PartitionLog::open(after, dir, id(), config.clone())
        .await
        .unwrap();
    let values = read_all(&log).await;
    log.close().await.unwrap();
    assert_eq!(
        values.len() % RECORDS_PER_BATCH,
        0,
        "{at}: whole batches only"
    );
    let kept = (values.len() / RECORDS_PER_BATCH) as u32;
    assert_eq!(
        values,
        expected_values(kept),
        "{at}: a clean prefix, in order"
    );
    kept
}

/// flush.bytes = B with acks=1: a power loss right after any acknowledgement (keeping only
/// the synced bytes, or seeded choices of unsynced sectors too) keeps a clean prefix
/// and loses at most B bytes of acknowledged batches plus the last one written (the
/// policy syncs once B bytes are unsynced, after the group that crossed B is acknowledged).
#[test]
fn a_power_loss_under_flush_bytes_loses_at_most_the_window() {
    let dir = Path::new("/data/window-bytes-0");
    let batch_bytes = batch(0).len() as u64;
    let window = 3 * batch_bytes;
    let config = bounded_config(FlushPolicy::periodic(None, Some(window)));
    rt::block_on(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config.clone())
            .await
            .unwrap();
        let mut lost_most = 0;
        for tag in 0..BATCHES * 2 {
            log.append(batch(tag), Ack::Written).await.unwrap();
            // Seeded losses keep some unsynced sectors; `None` keeps only synced bytes.
            for seed in [None, Some(0), Some(1), Some(2)] {
                let at = format!("acknowledged {} batches, crash seed {seed:?}", tag + 1);
                let after = match seed {
                    Some(seed) => storage.crash_with(u64::from(tag) * 4 + seed),
                    None => storage.crash_clean(),
                };
                let kept = recover_prefix(after, dir, &config, &at).await;
                let lost_bytes = u64::from(tag + 1 - kept) * batch_bytes;
                assert!(
                    lost_bytes <= window + batch_bytes,
                    "{at}: lost {lost_bytes} bytes of acknowledged batches, window {window}"
                );
                lost_most = lost_most.max(lost_bytes);
            }
        }
        log.close().await.unwrap();
        assert!(
            lost_most > 0,
            "some power loss took unsynced batches, or the test proves little"
        );
    })
    .unwrap();
}

/// How late the periodic flush may be, beyond its interval, before the time-window test
/// fails: generous, since the test runs on a loaded machine. The test shows that the timer
/// bounds the loss at all (without it every record since the open would be lost); the
/// window's size on a quiet machine is for benchmarks to measure.
const FLUSH_LATE_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// flush.ms = 10 with acks=1: batches appended every millisecond or so for about a second;
/// power losses at every 37th acknowledgement of the second half keep a clean prefix; one
/// keeping only the synced bytes holds every batch acknowledged more than the interval
/// (plus [`FLUSH_LATE_MAX`]) before the loss, and one keeping seeded unsynced sectors too
/// holds at least as much.
#[test]
fn a_power_loss_under_flush_ms_keeps_what_was_acknowledged_before_the_window() {
    use std::time::{Duration, Instant};
    const INTERVAL_MS: u64 = 10;
    const TIMED_BATCHES: u32 = 600;
    let dir = Path::new("/data/window-ms-0");
    let config = bounded_config(FlushPolicy::periodic(Some(INTERVAL_MS), None));
    let window = Duration::from_millis(INTERVAL_MS) + FLUSH_LATE_MAX;
    rt::block_on(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config.clone())
            .await
            .unwrap();
        let mut acknowledged_at: Vec<Instant> = Vec::new();
        let mut checked = 0;
        for tag in 0..TIMED_BATCHES {
            log.append(batch(tag), Ack::Written).await.unwrap();
            acknowledged_at.push(Instant::now());
            rt::sleep(Duration::from_millis(1)).await;
            if tag < TIMED_BATCHES / 2 || tag % 37 != 0 {
                continue;
            }
            let crashed_at = Instant::now();
            let seed = u64::from(tag);
            // A loss that keeps only what was synced: the worst case the window bounds.
            let at = format!("power loss after {} batches, durable bytes only", tag + 1);
            let kept = recover_prefix(storage.crash_clean(), dir, &config, &at).await;
            let at = format!("power loss after {} batches, crash seed {seed}", tag + 1);
            let kept_seeded = recover_prefix(storage.crash_with(seed), dir, &config, &at).await;
            assert!(
                kept_seeded >= kept,
                "{at}: a loss keeping some unsynced sectors keeps more"
            );
            let old_enough = acknowledged_at
                .iter()
                .filter(|&&acknowledged| crashed_at.duration_since(acknowledged) > window)
                .count() as u32;
            assert!(
                kept >= old_enough,
                "{at}: {old_enough} batches were acknowledged more than {window:?} before the \
                 loss, {kept} survived"
            );
            checked += 1;
        }
        log.close().await.unwrap();
        assert!(checked > 0, "the seeded moments include some power losses");
    })
    .unwrap();
}

/// Two partitions on one small disk: the one that fills it is poisoned with ENOSPC, the
/// other keeps taking appends in the space it had already preallocated, and after a crash
/// both hold everything acknowledged.
#[test]
fn a_full_disk_poisons_only_the_partition_that_needs_space() {
    let config_with = |preallocate| {
        TopicConfig::builder()
            .flush(FlushPolicy::Always)
            .preallocate_bytes(preallocate)
            .build()
            .unwrap()
    };
    let other_id = PartitionId {
        topic: std::sync::Arc::from("other"),
        partition: 0,
    };
    let (filler_dir, other_dir) = (Path::new("/data/full-0"), Path::new("/data/other-0"));
    rt::block_on(async {
        let storage = FaultStorage::new();
        let filler = PartitionLog::open(storage.clone(), filler_dir, id(), config_with(0))
            .await
            .unwrap();
        let other = PartitionLog::open(
            storage.clone(),
            other_dir,
            other_id.clone(),
            config_with(64 << 10),
        )
        .await
        .unwrap();
        other.append(batch(0), Ack::Durable).await.unwrap();
        // Room for 96 KiB more than the files hold now.
        storage.limit_capacity(u64::MAX);
        let used = u64::MAX - storage.free_bytes().unwrap();
        storage.limit_capacity(used + (96 << 10));
        let mut filled = 0;
        let failed = loop {
            match filler.append(batch(filled), Ack::Durable).await {
                Ok(_) => filled += 1,
                Err(error) => break error,
            }
        };
        assert!(filled > 10, "the disk took {filled} batches first");
        assert_eq!(errno_in_chain(&failed), Some(libc::ENOSPC), "{failed}");
        assert!(filler.poisoned().is_some());
        // The other partition writes into what it holds: no new space needed.
        for tag in 1..20 {
            other.append(batch(tag), Ack::Durable).await.unwrap();
        }
        assert!(other.poisoned().is_none());
        drop((filler, other));
        let after = storage.crash_clean();
        after.limit_capacity(u64::MAX);
        let filler = PartitionLog::open(after.clone(), filler_dir, id(), config_with(0))
            .await
            .unwrap();
        assert_eq!(
            read_all(&filler).await.len(),
            filled as usize * RECORDS_PER_BATCH
        );
        filler.append(batch(filled), Ack::Durable).await.unwrap();
        let other = PartitionLog::open(after, other_dir, other_id, config_with(64 << 10))
            .await
            .unwrap();
        assert_eq!(read_all(&other).await.len(), 20 * RECORDS_PER_BATCH);
        filler.close().await.unwrap();
        other.close().await.unwrap();
    })
    .unwrap();
}

/// EIO on one partition's write poisons that partition only: another on the same storage
/// keeps appending, and a restart recovers the failed one with everything acknowledged.
#[test]
fn eio_on_one_partition_leaves_the_others_writing() {
    let other_id = PartitionId {
        topic: std::sync::Arc::from("other"),
        partition: 0,
    };
    let (failing_dir, other_dir) = (Path::new("/data/eio-0"), Path::new("/data/eio-other-0"));
    rt::block_on(async {
        let storage = FaultStorage::new();
        let failing = PartitionLog::open(storage.clone(), failing_dir, id(), config())
            .await
            .unwrap();
        let other = PartitionLog::open(storage.clone(), other_dir, other_id.clone(), config())
            .await
            .unwrap();
        for tag in 0..3 {
            failing.append(batch(tag), Ack::Durable).await.unwrap();
            other.append(batch(tag), Ack::Durable).await.unwrap();
        }
        storage.fail_nth(1, libc::EIO);
        let failed = failing.append(batch(3), Ack::Durable).await.unwrap_err();
        assert_eq!(errno_in_chain(&failed), Some(libc::EIO), "{failed}");
        for tag in 3..10 {
            other.append(batch(tag), Ack::Durable).await.unwrap();
        }
        let refused = failing.append(batch(4), Ack::Written).await.unwrap_err();
        assert!(
            matches!(refused, LogError::StorageFailed { .. }),
            "{refused}"
        );
        // The seal at close fails too (the next operation is its trim): the partition keeps
        // the failure that poisoned it, not the one that followed.
        storage.fail_nth(1, libc::ENOSPC);
        assert!(failing.close().await.is_err());
        let poisoned = failing.poisoned().unwrap();
        assert_eq!(
            (poisoned.operation(), poisoned.io_error().raw_os_error()),
            ("write", Some(libc::EIO))
        );
        drop((failing, other));
        let after = storage.crash_clean();
        let failing = PartitionLog::open(after.clone(), failing_dir, id(), config())
            .await
            .unwrap();
        assert_eq!(read_all(&failing).await.len(), 3 * RECORDS_PER_BATCH);
        failing.append(batch(5), Ack::Durable).await.unwrap();
        let other = PartitionLog::open(after, other_dir, other_id, config())
            .await
            .unwrap();
        assert_eq!(read_all(&other).await.len(), 10 * RECORDS_PER_BATCH);
    })
    .unwrap();
}

/// A short write (part of a group lands, then the disk is full) poisons the partition; the
/// partial batch it left is cut by recovery, and nothing acknowledged is lost.
#[test]
fn a_short_write_then_a_full_disk_loses_nothing_acknowledged() {
    for landed in [1, 40, 100, 300] {
        let dir = Path::new("/data/short-0");
        rt::block_on(async {
            let storage = FaultStorage::new();
            let log = PartitionLog::open(storage.clone(), dir, id(), config())
                .await
                .unwrap();
            for tag in 0..3 {
                log.append(batch(tag), Ack::Durable).await.unwrap();
            }
            let written_before = storage.stats().bytes_written;
            // The group's write is its first mutating operation (4 KiB preallocated).
            storage.fail_nth_partially(1, landed, libc::ENOSPC);
            let failed = log.append(batch(3), Ack::Durable).await.unwrap_err();
            assert_eq!(errno_in_chain(&failed), Some(libc::ENOSPC), "{failed}");
            assert_eq!(
                storage.stats().bytes_written - written_before,
                landed,
                "part of the batch landed"
            );
            drop(log);
            for after in [storage.crash_clean(), storage.clone()] {
                let log = PartitionLog::open(after, dir, id(), config())
                    .await
                    .unwrap();
                assert_eq!(
                    log.offsets().log_end,
                    3 * RECORDS_PER_BATCH as i64,
                    "landed {landed}"
                );
                assert_eq!(read_all(&log).await.len(), 3 * RECORDS_PER_BATCH);
                log.append(batch(4), Ack::Durable).await.unwrap();
            }
        })
        .unwrap();
    }
}

/// A read that fails with EIO answers that fetch with the error, typed, and harms nothing
/// else: appends go on, and the partition is not poisoned.
#[test]
fn a_failed_read_is_an_error_for_that_read_only() {
    let dir = Path::new("/data/read-eio-0");
    rt::block_on(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config())
            .await
            .unwrap();
        for tag in 0..3 {
            log.append(batch(tag), Ack::Durable).await.unwrap();
        }
        storage.fail_reads(&super::segment::segment_path(dir, 0, "log"));
        let failed = log.read_bytes(0, 1 << 20).await.unwrap_err();
        assert!(matches!(failed, LogError::Io { .. }), "{failed}");
        assert_eq!(errno_in_chain(&failed), Some(libc::EIO));
        log.append(batch(3), Ack::Durable).await.unwrap();
        assert!(log.poisoned().is_none());
        assert_eq!(log.offsets().durable_end, 4 * RECORDS_PER_BATCH as i64);
    })
    .unwrap();
}
