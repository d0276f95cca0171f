//! Crash and fault tests of the partition log on the fault-injecting storage backend:
//! crashing at every fsync point loses nothing acknowledged as durable, and a failed write
//! or fdatasync poisons the partition instead of being retried as success.

use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::batch::{BatchBuilder, RecordBatch};
use crate::rt;
use crate::storage::fault::FaultStorage;
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

#[test]
fn crashing_at_every_fsync_point_loses_nothing_acknowledged() {
    let dir = Path::new("/data/crash-0");
    rt::block_on(async {
        let dry = FaultStorage::new();
        let all = workload(&dry, dir).await;
        assert_eq!(
            all.len(),
            BATCHES as usize,
            "the workload succeeds without faults"
        );
        let sync_points = dry.sync_count();
        assert!(
            sync_points > u64::from(BATCHES),
            "every durable append syncs"
        );
        for k in 0..=sync_points {
            for seed in 0..4 {
                let storage = FaultStorage::new();
                storage.crash_at_sync(k);
                let acknowledged = workload(&storage, dir).await;
                let after = storage.crash_with(seed);
                let log = PartitionLog::open(after, dir, id(), config())
                    .await
                    .unwrap();
                let end = log.offsets().log_end;
                let values = read_all(&log).await;
                assert_eq!(
                    values.len() as i64,
                    end,
                    "k={k} seed={seed}: readable = log end"
                );
                let expected: Vec<String> = (0..BATCHES)
                    .flat_map(|tag| {
                        (0..RECORDS_PER_BATCH)
                            .map(move |i| format!("{tag:04}-{i}-{}", "x".repeat(40)))
                    })
                    .collect();
                assert_eq!(
                    values[..],
                    expected[..values.len()],
                    "k={k}: in order, no dups"
                );
                let durable_records = acknowledged.len() * RECORDS_PER_BATCH;
                assert!(
                    values.len() >= durable_records,
                    "k={k} seed={seed}: {} acknowledged records, {} recovered",
                    durable_records,
                    values.len()
                );
                log.close().await.unwrap();
            }
        }
    })
    .unwrap();
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
        let LogError::StorageFailed { reason, .. } = &failed else {
            panic!("EIO from the sync: {failed:?}");
        };
        assert!(reason.contains("Input/output error"), "{reason}");
        let refused = log.append(batch(2), Ack::Durable).await.unwrap_err();
        assert!(
            matches!(&refused, LogError::StorageFailed { reason: again, .. } if again == reason),
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
