//! Tests of the idempotent-producer rules through the partition log (duplicates answered
//! with the original offsets and written once, gaps, fenced and new epochs, unknown
//! producers, sequence wrap, expiry, in-flight retries), of the check a replicated
//! partition's leader makes before proposing (the same rules, over batches proposed and not
//! yet appended too), and of the producer state's survival: reopen after a clean close (snapshot), after a crash without a snapshot, with
//! a damaged snapshot, across segment rolls, and after truncation.

use std::path::Path;

use bytes::Bytes;

use super::producer_snapshot::{parse_snapshot_name, snapshot_path};
use super::*;
use crate::batch::BatchBuilder;
use crate::limits::PRODUCER_ID_EXPIRATION_MS;
use crate::rt;
use crate::storage::fault::FaultStorage;
use crate::storage::DiskStorage;
use crate::testing::{offsets_and_values, tagged_batch as plain};

fn id() -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("idem"),
        partition: 0,
    }
}

fn config() -> TopicConfig {
    TopicConfig::default()
}

/// A batch of `count` records of producer `pid` at `epoch` from `sequence`; values are
/// `"{pid}/{epoch}/{sequence + i}"`.
fn idempotent(pid: i64, epoch: i16, sequence: i32, count: i32) -> Bytes {
    let mut builder = BatchBuilder::new()
        .producer(pid, epoch, sequence)
        .base_timestamp(1_700_000_000_000)
        .max_timestamp(1_700_000_000_000);
    for i in 0..count {
        let value = format!("{pid}/{epoch}/{}", sequence.wrapping_add(i));
        builder
            .push(i64::from(i), None, Some(value.as_bytes()), &[])
            .unwrap();
    }
    Bytes::from(builder.build())
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    rt::block_on(future).unwrap()
}

async fn open_disk(dir: &Path, config: TopicConfig) -> PartitionLog<DiskStorage> {
    PartitionLog::open(DiskStorage, dir, id(), config)
        .await
        .unwrap()
}

async fn all_records<S: Storage>(log: &PartitionLog<S>) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = Vec::new();
    let mut offset = log.offsets().log_start;
    while offset < log.offsets().log_end {
        let got = offsets_and_values(&log.read_bytes(offset, 1 << 20).await.unwrap());
        let Some(last) = got.last() else { break };
        offset = last.0 + 1;
        let seen = out.last().map_or(i64::MIN, |(o, _)| *o);
        out.extend(got.into_iter().filter(|(o, _)| *o > seen));
    }
    out
}

fn producer_error(result: Result<Appended, LogError>) -> ProducerError {
    match result {
        Err(LogError::Producer { source, .. }) => source,
        other => panic!("expected a producer error, got {other:?}"),
    }
}

/// Each producer's epoch and kept batches: what the rules use (the idle time differs by
/// design between the broker's clock at append and the batch timestamps a replay sees).
fn rules_view(producers: &producers::Producers) -> Vec<(i64, i16, Vec<producers::KeptBatch>)> {
    let mut view: Vec<_> = producers
        .entries
        .iter()
        .map(|(id, entry)| (*id, entry.epoch, entry.batches.iter().copied().collect()))
        .collect();
    view.sort_by_key(|(id, ..)| *id);
    view
}

fn range(appended: Appended) -> (i64, i64) {
    (appended.offset_first, appended.offset_next)
}

#[test]
fn a_duplicate_gets_the_original_offsets_and_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        log.append(plain("a", 2), Ack::Written).await.unwrap();
        let first = log
            .append(idempotent(7, 0, 0, 3), Ack::Durable)
            .await
            .unwrap();
        assert_eq!(range(first), (2, 5));
        log.append(plain("b", 1), Ack::Written).await.unwrap();
        for ack in [Ack::Written, Ack::Durable] {
            let again = log.append(idempotent(7, 0, 0, 3), ack).await.unwrap();
            assert_eq!(range(again), (2, 5), "{ack:?}");
        }
        assert_eq!(log.offsets().log_end, 6, "the retries took no offsets");
        let records = all_records(&log).await;
        let values: Vec<&str> = records.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            values,
            ["a-0", "a-1", "7/0/0", "7/0/1", "7/0/2", "b-0"],
            "one copy of the idempotent batch"
        );
        let next = log
            .append(idempotent(7, 0, 3, 1), Ack::Written)
            .await
            .unwrap();
        assert_eq!(
            range(next),
            (6, 7),
            "the sequence continues after the retries"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn the_last_five_batches_are_recognised_and_older_ones_are_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        for n in 0..6 {
            let appended = log.append(idempotent(1, 0, n * 2, 2), Ack::Written).await;
            assert_eq!(appended.unwrap().offset_first, i64::from(n) * 2);
        }
        for n in 1..6 {
            let again = log.append(idempotent(1, 0, n * 2, 2), Ack::Written).await;
            assert_eq!(
                range(again.unwrap()),
                (i64::from(n) * 2, i64::from(n) * 2 + 2)
            );
        }
        let forgotten = producer_error(log.append(idempotent(1, 0, 0, 2), Ack::Written).await);
        assert_eq!(
            forgotten,
            ProducerError::OutOfOrder {
                producer_id: 1,
                epoch: 0,
                sequence: 0,
                expected: 12
            }
        );
        assert_eq!(log.offsets().log_end, 12);
        log.close().await.unwrap();
    });
}

#[test]
fn a_gap_in_the_sequence_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        log.append(idempotent(3, 0, 0, 4), Ack::Written)
            .await
            .unwrap();
        let gap = producer_error(log.append(idempotent(3, 0, 5, 1), Ack::Written).await);
        assert!(matches!(
            gap,
            ProducerError::OutOfOrder {
                expected: 4,
                sequence: 5,
                ..
            }
        ));
        // A batch overlapping the last one without being it is no duplicate either.
        let overlap = producer_error(log.append(idempotent(3, 0, 2, 2), Ack::Written).await);
        assert!(matches!(
            overlap,
            ProducerError::OutOfOrder { expected: 4, .. }
        ));
        assert_eq!(log.offsets().log_end, 4);
        log.append(idempotent(3, 0, 4, 1), Ack::Written)
            .await
            .unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn epochs_fence_older_producers_and_a_new_epoch_starts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        log.append(idempotent(5, 2, 0, 2), Ack::Written)
            .await
            .unwrap();
        let old = producer_error(log.append(idempotent(5, 1, 2, 1), Ack::Written).await);
        assert_eq!(
            old,
            ProducerError::EpochFenced {
                producer_id: 5,
                epoch: 1,
                current: 2
            }
        );
        let not_zero = producer_error(log.append(idempotent(5, 3, 2, 1), Ack::Written).await);
        assert!(matches!(
            not_zero,
            ProducerError::OutOfOrder {
                expected: 0,
                epoch: 3,
                ..
            }
        ));
        let bumped = log
            .append(idempotent(5, 3, 0, 1), Ack::Written)
            .await
            .unwrap();
        assert_eq!(range(bumped), (2, 3));
        // The old epoch's batches are forgotten: its retry is fenced, not a duplicate.
        let retry = producer_error(log.append(idempotent(5, 2, 0, 2), Ack::Written).await);
        assert!(matches!(
            retry,
            ProducerError::EpochFenced { current: 3, .. }
        ));
        assert_eq!(log.offsets().log_end, 3);
        log.close().await.unwrap();
    });
}

#[test]
fn an_unknown_producer_may_start_anywhere_and_others_are_untracked() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        let first = log.append(idempotent(9, 4, 1234, 2), Ack::Written).await;
        assert_eq!(range(first.unwrap()), (0, 2));
        log.append(idempotent(9, 4, 1236, 1), Ack::Written)
            .await
            .unwrap();
        // Batches without a producer id are never duplicates of each other.
        for _ in 0..2 {
            log.append(plain("same", 1), Ack::Written).await.unwrap();
        }
        assert_eq!(log.offsets().log_end, 5);
        assert!(!log
            .shared
            .state
            .borrow()
            .producers
            .entries
            .contains_key(&-1));
        log.close().await.unwrap();
    });
}

#[test]
fn sequences_wrap_from_i32_max_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        let start = i32::MAX - 1;
        let wrapped = log.append(idempotent(11, 0, start, 3), Ack::Written).await;
        assert_eq!(range(wrapped.unwrap()), (0, 3), "sequences MAX-1, MAX, 0");
        let again = log.append(idempotent(11, 0, start, 3), Ack::Written).await;
        assert_eq!(
            range(again.unwrap()),
            (0, 3),
            "the wrapped batch is recognised"
        );
        let not_next = producer_error(log.append(idempotent(11, 0, 0, 1), Ack::Written).await);
        assert!(matches!(
            not_next,
            ProducerError::OutOfOrder { expected: 1, .. }
        ));
        let next = log
            .append(idempotent(11, 0, 1, 1), Ack::Written)
            .await
            .unwrap();
        assert_eq!(range(next), (3, 4));
        log.close().await.unwrap();
    });
}

#[test]
fn an_expired_producer_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        log.append(idempotent(13, 0, 0, 1), Ack::Written)
            .await
            .unwrap();
        let now = appender::now_ms();
        let producers = || log.shared.state.borrow().producers.clone();
        let early = now + PRODUCER_ID_EXPIRATION_MS - 60_000;
        assert_eq!(
            producers().expire(early, PRODUCER_ID_EXPIRATION_MS),
            0,
            "not idle long enough"
        );
        let expired = (log.shared.state.borrow_mut().producers).expire(
            now + PRODUCER_ID_EXPIRATION_MS + 1,
            PRODUCER_ID_EXPIRATION_MS,
        );
        assert_eq!(expired, 1);
        // Unknown again: a retry is no longer recognised, and any sequence is accepted.
        let retry = log
            .append(idempotent(13, 0, 0, 1), Ack::Written)
            .await
            .unwrap();
        assert_eq!(range(retry), (1, 2));
        log.close().await.unwrap();
    });
}

#[test]
fn several_batches_of_an_idempotent_producer_in_one_request_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        let mut two = idempotent(2, 0, 0, 1).to_vec();
        two.extend_from_slice(&idempotent(2, 0, 1, 1));
        let refused = producer_error(log.append(Bytes::from(two), Ack::Written).await);
        assert!(matches!(
            refused,
            ProducerError::MultipleBatches { batch_count: 2, .. }
        ));
        let mut builder = BatchBuilder::new().producer(2, -1, 0);
        builder.push(0, None, Some(b"v"), &[]).unwrap();
        let invalid = log.append(Bytes::from(builder.build()), Ack::Written).await;
        assert!(matches!(
            producer_error(invalid),
            ProducerError::Invalid { epoch: -1, .. }
        ));
        assert_eq!(log.offsets().log_end, 0);
        log.close().await.unwrap();
    });
}

#[test]
fn a_retry_of_a_batch_in_flight_waits_for_it_and_gets_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let flush_never = TopicConfig::builder()
            .flush(FlushPolicy::Never)
            .build()
            .unwrap();
        let log = open_disk(dir.path(), flush_never).await;
        let batch = idempotent(21, 0, 0, 2);
        // Queued together: the retry is checked after the original was recorded, in the
        // same group, and an acks=all retry of an acks=1 original waits for a sync.
        let (original, retry) = futures::join!(
            log.append(batch.clone(), Ack::Written),
            log.append(batch.clone(), Ack::Durable)
        );
        assert_eq!(range(original.unwrap()), (0, 2));
        assert_eq!(range(retry.unwrap()), (0, 2));
        assert_eq!(
            log.offsets().durable_end,
            2,
            "the acks=all answer came after a sync"
        );
        assert_eq!(all_records(&log).await.len(), 2);
        log.close().await.unwrap();
    });
}

fn refusal(checked: Result<ProducerCheck, LogError>) -> ProducerError {
    match checked {
        Err(LogError::Producer { source, .. }) => source,
        other => panic!("expected a producer error, got {other:?}"),
    }
}

/// The producer fields of a request's one idempotent batch.
fn producer_batch(bytes: &[u8]) -> ProducerBatch {
    ProducerBatch::of_request(bytes).unwrap().unwrap()
}

#[test]
fn the_check_before_proposing_applies_the_rules_over_proposed_batches_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        for n in 0..5 {
            let appended = log.append(idempotent(1, 0, n * 2, 2), Ack::Written).await;
            assert_eq!(appended.unwrap().offset_first, i64::from(n) * 2);
        }
        let before = rules_view(&log.shared.state.borrow().producers);
        let check = |pid, epoch, sequence, count, proposed: &[(ProducerBatch, i64)]| {
            let batch = producer_batch(&idempotent(pid, epoch, sequence, count));
            log.check_producer_batch(&batch, proposed)
        };
        let duplicate = |offset_first, offset_next| ProducerCheck::Duplicate {
            offset_first,
            offset_next,
        };

        // Against the log alone: as `append` would answer.
        assert_eq!(check(1, 0, 0, 2, &[]).unwrap(), duplicate(0, 2));
        assert_eq!(check(1, 0, 10, 1, &[]).unwrap(), ProducerCheck::Append);
        assert_eq!(check(2, 0, 7, 1, &[]).unwrap(), ProducerCheck::Append);
        let gap = refusal(check(1, 0, 11, 1, &[]));
        assert!(
            matches!(gap, ProducerError::OutOfOrder { expected: 10, .. }),
            "{gap:?}"
        );

        // With batches proposed after the log: stamped at 10 and 12, not appended.
        let proposed = [
            (producer_batch(&idempotent(1, 0, 10, 2)), 10),
            (producer_batch(&idempotent(9, 0, 0, 1)), 12),
            (producer_batch(&idempotent(1, 0, 12, 1)), 13),
        ];
        assert_eq!(check(1, 0, 10, 2, &proposed).unwrap(), duplicate(10, 12));
        assert_eq!(check(1, 0, 12, 1, &proposed).unwrap(), duplicate(13, 14));
        assert_eq!(
            check(1, 0, 13, 1, &proposed).unwrap(),
            ProducerCheck::Append
        );
        let bumped = [(producer_batch(&idempotent(1, 2, 0, 1)), 10)];
        let fenced = refusal(check(1, 1, 0, 1, &bumped));
        assert!(
            matches!(fenced, ProducerError::EpochFenced { current: 2, .. }),
            "{fenced:?}"
        );
        // Two proposed batches push the log's two oldest out of the producer's window.
        let forgotten = refusal(check(1, 0, 0, 2, &proposed));
        assert!(
            matches!(forgotten, ProducerError::OutOfOrder { expected: 13, .. }),
            "{forgotten:?}"
        );
        assert_eq!(check(1, 0, 4, 2, &proposed).unwrap(), duplicate(4, 6));

        // A proposed batch the log holds already is not counted twice: the oldest batch
        // stays in the window.
        let appended = [(producer_batch(&idempotent(1, 0, 8, 2)), 8)];
        assert_eq!(check(1, 0, 0, 2, &appended).unwrap(), duplicate(0, 2));

        assert_eq!(
            rules_view(&log.shared.state.borrow().producers),
            before,
            "the check changed nothing"
        );
        assert_eq!(log.offsets().log_end, 10);
        log.close().await.unwrap();
    });
}

fn snapshots(dir: &Path) -> Vec<i64> {
    let mut found: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| parse_snapshot_name(entry.unwrap().file_name().to_str()?))
        .collect();
    found.sort_unstable();
    found
}

#[test]
fn a_retry_is_recognised_after_a_clean_reopen_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        log.append(plain("x", 3), Ack::Written).await.unwrap();
        log.append(idempotent(4, 1, 0, 2), Ack::Durable)
            .await
            .unwrap();
        let state = log.shared.state.borrow().producers.clone();
        log.close().await.unwrap();
        assert_eq!(
            snapshots(dir.path()),
            [5],
            "a snapshot at the log end on close"
        );
        let log = open_disk(dir.path(), config()).await;
        assert_eq!(log.shared.state.borrow().producers, state);
        let retry = log
            .append(idempotent(4, 1, 0, 2), Ack::Durable)
            .await
            .unwrap();
        assert_eq!(range(retry), (3, 5));
        let gap = producer_error(log.append(idempotent(4, 1, 3, 1), Ack::Written).await);
        assert!(matches!(gap, ProducerError::OutOfOrder { expected: 2, .. }));
        assert_eq!(log.offsets().log_end, 5);
        log.close().await.unwrap();
    });
}

#[test]
fn a_damaged_snapshot_is_ignored_and_the_state_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        log.append(idempotent(4, 0, 0, 2), Ack::Durable)
            .await
            .unwrap();
        log.append(idempotent(4, 0, 2, 2), Ack::Durable)
            .await
            .unwrap();
        log.close().await.unwrap();
        let path = snapshot_path(dir.path(), 4);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let log = open_disk(dir.path(), config()).await;
        assert!(!path.exists(), "the damaged snapshot is removed");
        for (sequence, offset) in [(0, 0), (2, 2)] {
            let retry = log
                .append(idempotent(4, 0, sequence, 2), Ack::Written)
                .await;
            assert_eq!(range(retry.unwrap()), (offset, offset + 2));
        }
        assert_eq!(log.offsets().log_end, 4);
        log.close().await.unwrap();
    });
}

/// Appends `count` idempotent batches of producer 8 (two records each) with acks=all.
async fn produce_idempotent(log: &PartitionLog<FaultStorage>, count: i32) {
    for n in 0..count {
        let appended = log.append(idempotent(8, 0, n * 2, 2), Ack::Durable).await;
        assert_eq!(appended.unwrap().offset_first, i64::from(n) * 2);
    }
}

#[test]
fn a_retry_is_recognised_after_a_crash_without_any_snapshot() {
    let dir = Path::new("/data/idem-crash-0");
    run(async {
        let storage = FaultStorage::new();
        let log = PartitionLog::open(storage.clone(), dir, id(), config())
            .await
            .unwrap();
        produce_idempotent(&log, 3).await;
        let state = log.shared.state.borrow().producers.clone();
        drop(log);
        let after = storage.crash_clean();
        let named = after.files().iter().any(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            parse_snapshot_name(name).is_some()
        });
        assert!(
            !named,
            "no snapshot: the state comes from the segments alone"
        );
        let log = PartitionLog::open(after, dir, id(), config())
            .await
            .unwrap();
        assert_eq!(
            rules_view(&log.shared.state.borrow().producers),
            rules_view(&state)
        );
        let retry = log
            .append(idempotent(8, 0, 4, 2), Ack::Durable)
            .await
            .unwrap();
        assert_eq!(range(retry), (4, 6));
        assert_eq!(log.offsets().log_end, 6);
        log.close().await.unwrap();
    });
}

#[test]
fn rolls_write_snapshots_and_a_crash_replays_only_what_follows_the_latest() {
    let dir = Path::new("/data/idem-roll-0");
    run(async {
        let storage = FaultStorage::new();
        let small = TopicConfig::builder()
            .segment_bytes(4096)
            .preallocate_bytes(4096)
            .build()
            .unwrap();
        let log = PartitionLog::open(storage.clone(), dir, id(), small.clone())
            .await
            .unwrap();
        produce_idempotent(&log, 200).await;
        let state = log.shared.state.borrow().producers.clone();
        let segments: Vec<i64> = log.shared.state.borrow().segments.keys().copied().collect();
        assert!(segments.len() > 2, "the workload rolls: {segments:?}");
        drop(log);
        let after = storage.crash_clean();
        let mut taken: Vec<i64> = after
            .files()
            .iter()
            .filter_map(|p| parse_snapshot_name(p.file_name()?.to_str()?))
            .collect();
        taken.sort_unstable();
        assert_eq!(
            taken,
            segments[1..],
            "one snapshot per roll, at the new base"
        );
        // A snapshot claiming no producers at all: if it is used (and it must be, as the
        // latest), only the batches after it are replayed, so producer 8's earlier batches
        // are unknown and a retry of the first batch after the snapshot is still found.
        let last = *taken.last().unwrap();
        let empty = producer_snapshot::encode(last, &producers::Producers::default());
        after.put_file(&snapshot_path(dir, last), &empty);
        let log = PartitionLog::open(after, dir, id(), small).await.unwrap();
        let rebuilt = log.shared.state.borrow().producers.clone();
        let kept = &rebuilt.entries[&8].batches;
        assert!(
            kept.iter().all(|b| b.offset_first >= last),
            "replayed from {last} only"
        );
        assert_eq!(kept.back(), state.entries[&8].batches.back());
        let retry = log
            .append(idempotent(8, 0, 398, 2), Ack::Durable)
            .await
            .unwrap();
        assert_eq!(range(retry), (398, 400));
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_forgets_the_batches_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_disk(dir.path(), config()).await;
        log.append(plain("keep", 2), Ack::Durable).await.unwrap();
        log.close().await.unwrap();
        let log = open_disk(dir.path(), config()).await;
        log.append(idempotent(6, 0, 0, 2), Ack::Durable)
            .await
            .unwrap();
        log.close().await.unwrap();
        assert_eq!(snapshots(dir.path()), [2, 4]);
        let log = open_disk(dir.path(), config()).await;
        log.truncate_to(2).await.unwrap();
        assert_eq!(
            snapshots(dir.path()),
            [2],
            "the snapshot past the new end is removed"
        );
        assert!(log.shared.state.borrow().producers.entries.is_empty());
        // The producer is unknown again: its batch is written anew, not answered as a dup.
        let again = log
            .append(idempotent(6, 0, 0, 2), Ack::Durable)
            .await
            .unwrap();
        assert_eq!(range(again), (2, 4));
        assert_eq!(all_records(&log).await.len(), 4);
        log.close().await.unwrap();
    });
}

#[test]
fn snapshots_go_with_the_segments_deleted_below_them() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let small = TopicConfig::builder()
            .segment_bytes(4096)
            .preallocate_bytes(4096)
            .build()
            .unwrap();
        let log = open_disk(dir.path(), small.clone()).await;
        for n in 0..200 {
            let batch = idempotent(8, 0, n * 2, 2);
            log.append(batch, Ack::Durable).await.unwrap();
        }
        let bases: Vec<i64> = log.shared.state.borrow().segments.keys().copied().collect();
        assert!(bases.len() > 3, "{bases:?}");
        assert_eq!(snapshots(dir.path()), bases[1..]);
        log.delete_records_before(bases[2] + 1).await.unwrap();
        assert_eq!(
            snapshots(dir.path()),
            bases[2..],
            "the first kept segment's stays"
        );
        log.close().await.unwrap();
        let log = open_disk(dir.path(), small).await;
        let retry = log.append(idempotent(8, 0, 398, 2), Ack::Written).await;
        assert_eq!(range(retry.unwrap()), (398, 400));
        log.close().await.unwrap();
    });
}
