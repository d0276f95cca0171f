//! Tests of preallocation against the node's budget (`log/prealloc.rs`), through whole logs:
//! 2,000 partitions at default settings on a disk far smaller than their full steps (the
//! fault backend's small disk), new segments starting with the current step, steps that
//! grow with the write rate and are held down by the budget, and a ledger that always
//! equals the preallocated bytes past the logs' tails on disk and returns to zero after
//! rolls, retention, truncation, close, a poisoned log and a dropped one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;

use super::*;
use crate::batch::BatchBuilder;
use crate::limits::{BUF_ALIGN_BYTES, PREALLOCATE_STEP_MIN_BYTES};
use crate::rt;
use crate::storage::fault::FaultStorage;
use crate::storage::{DiskStorage, StorageFile};
use crate::topic::IoMode;

const MIB: u64 = 1 << 20;

fn id(partition: u32) -> PartitionId {
    PartitionId {
        topic: Arc::from("prealloc"),
        partition,
    }
}

/// A batch of one record whose value is `size` bytes of `tag`.
fn batch(tag: u32, size: usize) -> Bytes {
    let mut builder = BatchBuilder::new();
    let value = vec![b'a' + (tag % 26) as u8; size];
    builder.push(0, None, Some(&value), &[]).unwrap();
    Bytes::from(builder.build())
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    rt::block_on(future).unwrap()
}

/// A budget over a disk with `free_bytes` free.
fn budget_of(free_bytes: u64) -> PreallocBudget {
    PreallocBudget::with_free_space(move || Ok(free_bytes))
}

async fn open<S: Storage>(
    storage: S,
    dir: &Path,
    partition: u32,
    config: TopicConfig,
    budget: &PreallocBudget,
) -> PartitionLog<S> {
    PartitionLog::open_with_budget(storage, dir, id(partition), config, budget.clone())
        .await
        .unwrap()
}

fn segment_count<S: Storage>(log: &PartitionLog<S>) -> usize {
    log.shared.state.borrow().segments.len()
}

/// The active segment's file length and the bytes the log has written to it.
async fn active_file<S: Storage>(log: &PartitionLog<S>) -> (u64, u64) {
    let (writer, size) = {
        let state = log.shared.state.borrow();
        let active = state.segments.values().next_back().unwrap();
        (active.writer.clone(), active.size_bytes)
    };
    (writer.size().await.unwrap(), size)
}

/// Checks what the budget counts against the files: each log's charge is its active
/// segment's bytes past its written end, and every closed segment is trimmed to what it
/// holds. Returns the bytes preallocated past the tails, over all `logs`.
async fn preallocated_past_tails<S: Storage>(logs: &[PartitionLog<S>]) -> u64 {
    let mut total = 0;
    for log in logs {
        let (len, size) = active_file(log).await;
        assert_eq!(
            log.shared.prealloc.charged_bytes(),
            len - size,
            "{}",
            log.id()
        );
        total += len - size;
        let closed: Vec<_> = {
            let state = log.shared.state.borrow();
            let count = state.segments.len() - 1;
            let closed = state.segments.values().take(count);
            closed
                .map(|s| (s.base_offset, s.reader.clone(), s.size_bytes))
                .collect()
        };
        for (base, reader, size) in closed {
            assert_eq!(
                reader.size().await.unwrap(),
                size,
                "segment {base} is trimmed"
            );
        }
    }
    total
}

/// Lets the executor run until every log holding `budget` is gone (a dropped log's appender
/// ends once it sees its queue closed).
async fn until_released(budget: &PreallocBudget) {
    for _ in 0..100 {
        if budget.logs() == 0 {
            break;
        }
        rt::yield_now().await;
    }
    assert_eq!(budget.logs(), 0, "every log was dropped");
    assert_eq!(budget.reserved_bytes(), 0, "{budget:?}");
}

#[test]
fn two_thousand_partitions_with_default_settings_fit_a_small_disk() {
    const PARTITIONS: u32 = 2000;
    const DISK_BYTES: u64 = 256 * MIB;
    let config = TopicConfig::default();
    // At their full step the partitions would ask for 500 times the disk, and even at the
    // first step for 8 times it.
    assert!(u64::from(PARTITIONS) * config.preallocate_bytes() >= 500 * DISK_BYTES);
    assert!(u64::from(PARTITIONS) * PREALLOCATE_STEP_MIN_BYTES > 7 * DISK_BYTES);
    run(async {
        let storage = FaultStorage::new();
        storage.limit_capacity(DISK_BYTES);
        // statvfs of the fault backend's disk, read when the budget refreshes.
        let free = Arc::new(AtomicU64::new(DISK_BYTES));
        let budget = {
            let free = free.clone();
            PreallocBudget::with_free_space(move || Ok(free.load(Relaxed)))
        };
        let mut logs = Vec::new();
        for partition in 0..PARTITIONS {
            let dir = PathBuf::from(format!("/data/prealloc-{partition}"));
            logs.push(open(storage.clone(), &dir, partition, config.clone(), &budget).await);
        }
        for round in 0..3 {
            let appends = logs
                .iter()
                .map(|log| log.append(batch(round, 1000), Ack::Written));
            for (partition, appended) in join_all(appends).await.into_iter().enumerate() {
                let appended = appended.unwrap_or_else(|e| panic!("partition {partition}: {e}"));
                assert_eq!(appended.offset_first, i64::from(round));
            }
            free.store(storage.free_bytes().unwrap(), Relaxed);
            budget.refresh();
            let reserved = budget.reserved_bytes();
            // Beyond the cap, only the ends of groups' last blocks.
            let slack = u64::from(PARTITIONS) * BUF_ALIGN_BYTES as u64;
            assert!(
                reserved <= budget.cap_bytes() + slack,
                "round {round}: {budget:?}"
            );
            assert_eq!(reserved, preallocated_past_tails(&logs).await);
        }
        for log in &logs {
            log.close().await.unwrap();
        }
        assert_eq!(budget.reserved_bytes(), 0);
        drop(logs);
        until_released(&budget).await;
    });
}

#[test]
fn segments_start_with_the_current_step_which_grows_with_the_write_rate() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let budget = budget_of(1 << 40);
        let config = TopicConfig::default();
        let log = open(DiskStorage, dir.path(), 0, config.clone(), &budget).await;
        log.append(batch(0, 1000), Ack::Written).await.unwrap();
        let first = active_file(&log).await.0;
        assert_eq!(first, PREALLOCATE_STEP_MIN_BYTES, "not the 64 MiB maximum");
        // 8 MiB written as fast as the disk takes them: each step is written through
        // within milliseconds of the previous, far inside the growth window.
        for tag in 1..=32 {
            log.append(batch(tag, 256 << 10), Ack::Written)
                .await
                .unwrap();
        }
        let step = log.shared.prealloc.step_bytes();
        assert!(step > PREALLOCATE_STEP_MIN_BYTES, "the step grew: {step}");
        assert!(step <= config.preallocate_bytes());
        // A roll (by age): the new segment's first preallocation is the current step.
        let step = log.shared.prealloc.step_bytes();
        roll_by_age(&log, 99).await;
        assert_eq!(active_file(&log).await.0, step);
        assert_eq!(
            budget.reserved_bytes(),
            preallocated_past_tails(std::slice::from_ref(&log)).await
        );
        log.close().await.unwrap();
        assert_eq!(budget.reserved_bytes(), 0);
    });
}

/// Makes the active segment old enough to roll, then appends batch `tag`: the log has
/// rolled into a second segment.
async fn roll_by_age(log: &PartitionLog<DiskStorage>, tag: u32) {
    let aged = TopicConfig::builder().segment_ms(Some(1)).build().unwrap();
    log.set_config(aged);
    rt::sleep(std::time::Duration::from_millis(5)).await;
    log.append(batch(tag, 1000), Ack::Written).await.unwrap();
    assert_eq!(segment_count(log), 2);
}

#[test]
fn a_roll_returns_the_old_segments_preallocation_before_the_new_one_asks() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        // 6 MiB free: a cap of 1.5 MiB, too little for two first steps at once.
        let budget = budget_of(6 * MIB);
        let log = open(DiskStorage, dir.path(), 0, TopicConfig::default(), &budget).await;
        log.append(batch(0, 1000), Ack::Written).await.unwrap();
        assert_eq!(active_file(&log).await.0, PREALLOCATE_STEP_MIN_BYTES);
        roll_by_age(&log, 1).await;
        assert_eq!(active_file(&log).await.0, PREALLOCATE_STEP_MIN_BYTES);
        assert_eq!(
            budget.reserved_bytes(),
            preallocated_past_tails(std::slice::from_ref(&log)).await
        );
        log.close().await.unwrap();
        assert_eq!(budget.reserved_bytes(), 0);
    });
}

#[test]
fn the_budget_holds_a_fast_log_to_its_share_and_leaves_room_for_others() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        // 16 MiB free: a 4 MiB cap, 2 MiB for each of the two logs.
        let budget = budget_of(16 * MIB);
        let cap = budget.cap_bytes();
        let config = TopicConfig::default();
        let hot = open(
            DiskStorage,
            &dir.path().join("hot"),
            0,
            config.clone(),
            &budget,
        )
        .await;
        let cold = open(DiskStorage, &dir.path().join("cold"), 1, config, &budget).await;
        let mut step_most = 0;
        for tag in 0..128 {
            hot.append(batch(tag, 128 << 10), Ack::Written)
                .await
                .unwrap();
            step_most = step_most.max(hot.shared.prealloc.step_bytes());
            assert!(hot.shared.prealloc.charged_bytes() <= cap / 2, "{budget:?}");
        }
        assert!(
            step_most <= cap,
            "the step shrinks whenever it outgrows the share"
        );
        let small = batch(0, 1000);
        let small_bytes = small.len() as u64;
        cold.append(small, Ack::Written).await.unwrap();
        let charged = cold.shared.prealloc.charged_bytes();
        assert_eq!(
            charged + small_bytes,
            PREALLOCATE_STEP_MIN_BYTES,
            "a whole first step"
        );
        let logs = [hot.clone(), cold.clone()];
        assert_eq!(
            budget.reserved_bytes(),
            preallocated_past_tails(&logs).await
        );
        assert!(budget.reserved_bytes() <= cap);
        hot.close().await.unwrap();
        cold.close().await.unwrap();
        assert_eq!(budget.reserved_bytes(), 0);
    });
}

#[test]
fn the_ledger_follows_the_files_through_roll_retention_truncation_and_close() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        let dir = tempfile::tempdir().unwrap();
        run(ledger_through_a_log_lifetime(dir.path(), mode));
    }
}

async fn ledger_through_a_log_lifetime(dir: &Path, mode: IoMode) {
    let budget = budget_of(1 << 40);
    let config = || {
        TopicConfig::builder()
            .io_mode(mode)
            .segment_bytes(256 << 10)
    };
    let log = open(DiskStorage, dir, 0, config().build().unwrap(), &budget).await;
    let logs = [log.clone()];
    // One record per batch, so offsets count batches; about 12 batches per segment.
    for tag in 0..60 {
        log.append(batch(tag, 20_000), Ack::Durable).await.unwrap();
        let past_tails = preallocated_past_tails(&logs).await;
        assert_eq!(budget.reserved_bytes(), past_tails, "{mode:?}, batch {tag}");
    }
    assert!(segment_count(&log) >= 4, "{mode:?}: rolled");
    assert!(
        budget.reserved_bytes() > 0,
        "{mode:?}: the active segment is preallocated"
    );
    // By size only: the batches' timestamps (0) are older than any retention.ms.
    let retained = config().retention_ms(None).retention_bytes(Some(500 << 10));
    let retained = retained.build().unwrap();
    log.set_config(retained);
    assert!(log.enforce_retention().await.unwrap() > 0, "{mode:?}");
    assert_eq!(
        budget.reserved_bytes(),
        preallocated_past_tails(&logs).await
    );
    // A cut 15 batches back lands in a closed segment, which becomes the active one.
    let segments = segment_count(&log);
    log.truncate_to(log.offsets().log_end - 15).await.unwrap();
    assert!(segment_count(&log) < segments, "{mode:?}");
    assert_eq!(budget.reserved_bytes(), 0, "{mode:?}: cut to what it holds");
    assert_eq!(preallocated_past_tails(&logs).await, 0);
    for tag in 60..70 {
        log.append(batch(tag, 20_000), Ack::Durable).await.unwrap();
        let past_tails = preallocated_past_tails(&logs).await;
        assert_eq!(budget.reserved_bytes(), past_tails, "{mode:?}, batch {tag}");
    }
    assert!(budget.reserved_bytes() > 0, "{mode:?}");
    // A cut inside the active segment trims its preallocation too.
    let segments = segment_count(&log);
    log.truncate_to(log.offsets().log_end - 1).await.unwrap();
    assert_eq!(segment_count(&log), segments, "{mode:?}");
    assert_eq!(budget.reserved_bytes(), 0, "{mode:?}: cut to what it holds");
    log.append(batch(70, 20_000), Ack::Durable).await.unwrap();
    assert_eq!(
        budget.reserved_bytes(),
        preallocated_past_tails(&logs).await
    );
    assert!(budget.reserved_bytes() > 0, "{mode:?}");
    log.close().await.unwrap();
    assert_eq!(budget.reserved_bytes(), 0, "{mode:?}: sealed at close");
    drop(logs);
    drop(log);
    until_released(&budget).await;
}

#[test]
fn a_poisoned_log_and_a_dropped_one_return_their_charge() {
    run(async {
        let storage = FaultStorage::new();
        let budget = budget_of(1 << 40);
        let config = TopicConfig::default();
        let dir = Path::new("/data/prealloc-poisoned");
        let poisoned = open(storage.clone(), dir, 0, config.clone(), &budget).await;
        poisoned.append(batch(0, 1000), Ack::Written).await.unwrap();
        // The next group fits the preallocation: its write is the next mutating operation.
        storage.fail_nth(1, libc::EIO);
        poisoned
            .append(batch(1, 1000), Ack::Written)
            .await
            .unwrap_err();
        assert!(poisoned.poisoned().is_some());
        assert!(budget.reserved_bytes() > 0);
        let closed = poisoned.close().await.unwrap_err();
        assert!(matches!(closed, LogError::StorageFailed { .. }), "{closed}");
        assert_eq!(
            budget.reserved_bytes(),
            0,
            "a poisoned log's close returns its charge"
        );
        let dir = Path::new("/data/prealloc-dropped");
        let dropped = open(storage.clone(), dir, 1, config, &budget).await;
        dropped.append(batch(0, 1000), Ack::Written).await.unwrap();
        assert!(budget.reserved_bytes() > 0);
        drop((poisoned, dropped));
        until_released(&budget).await;
    });
}
