//! Tests of what ListOffsets and OffsetForLeaderEpoch read from a log: the leader epochs
//! of its batches (`log/epochs.rs`) — kept by each group commit, scanned on the first
//! question after reopening and the same, cut by a truncation — and the record
//! with the largest timestamp, which in a replicated log counts committed batches only.

use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::batch::BatchBuilder;
use crate::rt;
use crate::storage::DiskStorage;

fn id() -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("epochs"),
        partition: 0,
    }
}

async fn open(dir: &Path) -> PartitionLog<DiskStorage> {
    let config = TopicConfig::builder().segment_bytes(4096).build().unwrap();
    PartitionLog::open(DiskStorage, dir, id(), config)
        .await
        .unwrap()
}

/// A batch of `count` records at `base_offset`, of leader epoch `epoch`, with timestamps
/// from `timestamp`.
fn batch(base_offset: i64, epoch: i32, count: usize, timestamp: i64) -> Bytes {
    let mut builder = BatchBuilder::new()
        .base_offset(base_offset)
        .partition_leader_epoch(epoch);
    for i in 0..count {
        let value = [b'e'; 300];
        let at = timestamp + i as i64;
        builder.push(at, None, Some(&value), &[]).unwrap();
    }
    Bytes::from(builder.build())
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    rt::block_on(future).unwrap()
}

/// Epochs (what the client wrote, on a single node) -1, 0, 0, 3, 2, 5 in batches of 4
/// records from offset 0: 0 starts at 4, 3 at 12, 5 at 20 (2 starts nothing).
const EPOCHS: [i32; 6] = [-1, 0, 0, 3, 2, 5];

async fn assert_epochs(log: &PartitionLog<DiskStorage>) {
    assert_eq!(log.epoch_end_offset(0, 5).await.unwrap(), (0, 12));
    assert_eq!(log.epoch_end_offset(1, 5).await.unwrap(), (0, 12));
    assert_eq!(log.epoch_end_offset(3, 5).await.unwrap(), (3, 20));
    assert_eq!(log.epoch_end_offset(4, 5).await.unwrap(), (3, 20));
    assert_eq!(log.epoch_end_offset(5, 5).await.unwrap(), (5, 24));
    assert_eq!(log.epoch_at(0).await.unwrap(), None);
    assert_eq!(
        log.epoch_at(17).await.unwrap(),
        Some(3),
        "the batch of epoch 2"
    );
    assert_eq!(log.epoch_at(23).await.unwrap(), Some(5));
}

#[test]
fn epochs_are_kept_by_appends_and_scanned_once_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path()).await;
        for (index, epoch) in EPOCHS.into_iter().enumerate() {
            let bytes = batch(0, epoch, 4, index as i64 * 100);
            log.append(bytes, Ack::Written).await.unwrap();
        }
        assert!(
            log.shared.state.borrow().segments.len() > 1,
            "several segments"
        );
        // A new log's table is kept by its appends from the first: no scan.
        assert_eq!(log.shared.state.borrow().epochs.scanned_to_for_tests(), 24);
        assert_epochs(&log).await;
        assert_eq!(log.epoch_end_offset(6, 5).await.unwrap(), EPOCH_UNDEFINED);
        log.append(batch(0, 7, 2, 900), Ack::Written).await.unwrap();
        assert_eq!(log.shared.state.borrow().epochs.scanned_to_for_tests(), 26);
        assert_eq!(log.epoch_end_offset(5, 7).await.unwrap(), (5, 24));
        assert_eq!(log.epoch_end_offset(7, 7).await.unwrap(), (7, 26));
        log.close().await.unwrap();
        // Reopened, the table is scanned from the batches on the first question.
        let log = open(dir.path()).await;
        assert_eq!(log.shared.state.borrow().epochs.scanned_to_for_tests(), 0);
        assert_epochs(&log).await;
        assert_eq!(log.shared.state.borrow().epochs.scanned_to_for_tests(), 26);
        assert_eq!(log.epoch_end_offset(6, 7).await.unwrap(), (5, 24));
        assert_eq!(log.epoch_end_offset(7, 7).await.unwrap(), (7, 26));
        log.close().await.unwrap();
    });
}

#[test]
fn a_truncation_forgets_the_epochs_it_cut() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path()).await;
        log.set_commit_end(0).await.unwrap();
        for (base, epoch) in [(0, 1), (3, 1), (6, 2), (9, 3)] {
            let bytes = batch(base, epoch, 3, 0);
            log.append_replicated(bytes, Ack::Durable).await.unwrap();
        }
        log.set_commit_end(6).await.unwrap();
        assert_eq!(log.epoch_end_offset(2, 3).await.unwrap(), (2, 9));
        // A new leader of term 4 replaced the uncommitted entries from offset 6.
        log.truncate_to(6).await.unwrap();
        assert_eq!(log.epoch_end_offset(1, 4).await.unwrap(), (1, 6));
        assert_eq!(
            log.epoch_end_offset(2, 4).await.unwrap(),
            (1, 6),
            "2 was cut"
        );
        assert_eq!(log.epoch_end_offset(4, 4).await.unwrap(), (4, 6));
        log.append_replicated(batch(6, 4, 2, 0), Ack::Durable)
            .await
            .unwrap();
        assert_eq!(log.epoch_end_offset(3, 4).await.unwrap(), (1, 6));
        assert_eq!(log.epoch_end_offset(4, 4).await.unwrap(), (4, 8));
        assert_eq!(log.epoch_at(7).await.unwrap(), Some(4));
        log.close().await.unwrap();
    });
}

#[test]
fn the_largest_timestamp_counts_committed_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path()).await;
        log.set_commit_end(0).await.unwrap();
        // One segment: committed batches up to timestamp 2002, then uncommitted later ones.
        let batches = [(0, 1000), (3, 2000), (6, 9000), (9, 8000)];
        for (base, timestamp) in batches {
            let bytes = batch(base, 1, 3, timestamp);
            log.append_replicated(bytes, Ack::Durable).await.unwrap();
        }
        assert_eq!(log.max_timestamp_offset().await.unwrap(), None);
        log.set_commit_end(6).await.unwrap();
        let found = log.max_timestamp_offset().await.unwrap().unwrap();
        assert_eq!((found.pair(), found.leader_epoch), ((5, 2002), Some(1)));
        log.set_commit_end(9).await.unwrap();
        let found = log.max_timestamp_offset().await.unwrap().unwrap();
        assert_eq!(found.pair(), (8, 9002));
        log.close().await.unwrap();
    });
}
