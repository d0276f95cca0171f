//! Tests of replicated appends (`PartitionLog::append_replicated`): a replica's log is the
//! leader's bytes, at the leader's offsets; a batch that would leave a gap or overlap is
//! refused whole; and a replica keeps the idempotent producers' state, so it answers a
//! producer's retry as the leader would once it leads.
//!
//! And of the commit end (`PartitionLog::set_commit_end`, `log/commit.rs`): readers of a
//! replicated log see exactly the committed batches — for batches written in this process
//! (positions kept as groups commit) and after reopening (positions found by a header
//! scan), with the commit end in an older segment or at a segment's base — in every way a
//! read is served (buffered file ranges, direct-I/O file ranges, the batch cache); waiters
//! wake when it moves; ordinary appends, a commit end moving back, past the log or into a
//! batch, and truncation below it are refused.
//!
//! And of what a Raft group's replica needs of retention: a log whose directory holds a
//! Raft journal deletes nothing until its replica bounds retention, never a segment past
//! the bound; and a log emptied and started again past its end (`restart_at`) takes the
//! leader's batches from there, keeps its commit end, and reopens as it was left.

use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::batch::{BatchBuilder, TimestampType};
use crate::rt;
use crate::storage::DiskStorage;
use crate::testing::tagged_batch as batch;
use crate::topic::IoMode;

fn id(partition: u32) -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("replicated"),
        partition,
    }
}

/// A batch of `count` records of idempotent producer `pid` (epoch 0) from `sequence`.
fn idempotent(pid: i64, sequence: i32, count: usize) -> Bytes {
    let mut builder = BatchBuilder::new().producer(pid, 0, sequence);
    for i in 0..count {
        builder
            .push(i as i64, None, Some(b"idempotent"), &[])
            .unwrap();
    }
    Bytes::from(builder.build())
}

async fn open(dir: &Path, partition: u32, config: TopicConfig) -> PartitionLog<DiskStorage> {
    PartitionLog::open(DiskStorage, dir, id(partition), config)
        .await
        .unwrap()
}

async fn everything(log: &PartitionLog<DiskStorage>) -> Vec<u8> {
    log.read_bytes(0, 64 << 20).await.unwrap()
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    rt::block_on(future).unwrap()
}

#[test]
fn a_replica_writes_the_leaders_bytes_at_the_leaders_offsets() {
    for io_mode in [IoMode::Buffered, IoMode::Direct] {
        let dir = tempfile::tempdir().unwrap();
        // LogAppendTime: the leader stamps its clock; a replica must not stamp its own.
        let config = TopicConfig::builder()
            .io_mode(io_mode)
            .timestamp_type(TimestampType::LogAppendTime)
            .build()
            .unwrap();
        run(async {
            let leader = open(&dir.path().join("leader"), 0, config.clone()).await;
            let replica = open(&dir.path().join("replica"), 0, config).await;
            for (round, count) in [3, 1, 7].into_iter().enumerate() {
                leader
                    .append(batch(&format!("r{round}"), count), Ack::Durable)
                    .await
                    .unwrap();
            }
            let bytes = Bytes::from(everything(&leader).await);
            // Let the leader's clock move, so a replica stamping its own would differ.
            rt::sleep(std::time::Duration::from_millis(5)).await;
            let appended = replica
                .append_replicated(bytes.clone(), Ack::Durable)
                .await
                .unwrap();
            assert_eq!((appended.offset_first, appended.offset_next), (0, 11));
            assert_eq!(appended.log_append_time_ms, None);
            assert_eq!(everything(&replica).await, bytes);
            assert_eq!(replica.offsets().durable_end, 11);
            leader.close().await.unwrap();
            replica.close().await.unwrap();
        });
    }
}

#[test]
fn a_replicated_batch_must_continue_the_log() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let leader = open(&dir.path().join("leader"), 0, TopicConfig::default()).await;
        let replica = open(&dir.path().join("replica"), 0, TopicConfig::default()).await;
        leader.append(batch("a", 2), Ack::Written).await.unwrap();
        leader.append(batch("b", 3), Ack::Written).await.unwrap();
        leader.append(batch("c", 1), Ack::Written).await.unwrap();
        let bytes = Bytes::from(everything(&leader).await);
        let second = second_batch(&bytes);
        // The second batch alone leaves a gap at 0..2: refused, nothing written.
        let gap = replica
            .append_replicated(bytes.slice(second.clone()), Ack::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(
                gap,
                LogError::NotContiguous {
                    expected: 0,
                    found: 2,
                    ..
                }
            ),
            "{gap:?}"
        );
        assert_eq!(replica.offsets().log_end, 0);
        // The first batch, then the first again (an overlap), then the rest.
        let head = bytes.slice(..second.start);
        replica
            .append_replicated(head.clone(), Ack::Written)
            .await
            .unwrap();
        let overlap = replica
            .append_replicated(head, Ack::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(
                overlap,
                LogError::NotContiguous {
                    expected: 2,
                    found: 0,
                    ..
                }
            ),
            "{overlap:?}"
        );
        replica
            .append_replicated(bytes.slice(second.start..), Ack::Written)
            .await
            .unwrap();
        assert_eq!(everything(&replica).await, bytes);
    });
}

#[test]
fn a_replica_answers_a_producers_retry_with_the_leaders_offsets() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let leader = open(&dir.path().join("leader"), 0, TopicConfig::default()).await;
        let replica = open(&dir.path().join("replica"), 0, TopicConfig::default()).await;
        leader
            .append(batch("plain", 4), Ack::Written)
            .await
            .unwrap();
        let produced = idempotent(77, 0, 3);
        let original = leader.append(produced.clone(), Ack::Written).await.unwrap();
        let bytes = Bytes::from(everything(&leader).await);
        replica
            .append_replicated(bytes, Ack::Written)
            .await
            .unwrap();
        // The replica now leads; the producer retries its batch there.
        let retried = replica.append(produced, Ack::Written).await.unwrap();
        assert_eq!(retried, original);
        assert_eq!(
            replica.offsets().log_end,
            7,
            "the retry is not written twice"
        );
        // Its next batch continues the sequence, its gap is refused.
        replica
            .append(idempotent(77, 3, 1), Ack::Written)
            .await
            .unwrap();
        let gap = replica
            .append(idempotent(77, 9, 1), Ack::Written)
            .await
            .unwrap_err();
        assert!(matches!(gap, LogError::Producer { .. }), "{gap:?}");
    });
}

/// The byte range of the second batch of `bytes`.
fn second_batch(bytes: &[u8]) -> std::ops::Range<usize> {
    let size = |at: usize| {
        segment::BatchHeader::parse(&bytes[at..])
            .unwrap()
            .size_bytes as usize
    };
    let start = size(0);
    start..start + size(start)
}

/// How a test's log is read: buffered file ranges, direct-I/O file ranges (no batch cache),
/// or the batch cache of a direct-I/O log.
const READ_PATHS: [(IoMode, u64); 3] = [
    (IoMode::Buffered, 0),
    (IoMode::Direct, 0),
    (IoMode::Direct, 64 << 20),
];

/// Runs `test` once per read path, each with a new directory (and this thread's batch
/// cache set up as the path needs, before the test opens its log).
fn for_each_read_path(test: impl Fn(&Path, TopicConfig)) {
    for (io_mode, cache_bytes) in READ_PATHS {
        super::cache::init_for_this_thread(cache_bytes);
        let dir = tempfile::tempdir().unwrap();
        let config = TopicConfig::builder().io_mode(io_mode).build().unwrap();
        test(dir.path(), config);
    }
}

/// A batch of `count` records of `value_bytes` bytes each at `base_offset`, as a leader
/// stamped it.
fn batch_at(base_offset: i64, count: usize, value_bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::new().base_offset(base_offset);
    for i in 0..count {
        let value = vec![b'a' + (base_offset + i as i64).rem_euclid(26) as u8; value_bytes];
        builder.push(i as i64, None, Some(&value), &[]).unwrap();
    }
    Bytes::from(builder.build())
}

/// Appends batches of the given record counts from `offset` on, each its own replicated
/// append (so its own group); returns their bytes.
async fn replicate(
    log: &PartitionLog<DiskStorage>,
    offset: i64,
    counts: &[usize],
    value_bytes: usize,
) -> Vec<Bytes> {
    let mut offset = offset;
    let mut batches = Vec::new();
    for &count in counts {
        let bytes = batch_at(offset, count, value_bytes);
        let appended = log
            .append_replicated(bytes.clone(), Ack::Durable)
            .await
            .unwrap();
        assert_eq!(appended.offset_first, offset);
        offset = appended.offset_next;
        batches.push(bytes);
    }
    batches
}

/// Everything readers see, fetch by fetch from the log start: a read past what the
/// previous one returned is refused if it lies past the high watermark, so a read that
/// serves uncommitted bytes fails here.
async fn visible(log: &PartitionLog<DiskStorage>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.offsets().log_start;
    loop {
        let bytes = log.read_bytes(offset, 64 << 20).await.unwrap();
        if bytes.is_empty() {
            return out;
        }
        let mut at = 0;
        while at < bytes.len() {
            let header = segment::BatchHeader::parse(&bytes[at..]).unwrap();
            offset = header.last_offset + 1;
            at += header.size_bytes as usize;
        }
        assert_eq!(at, bytes.len(), "a read serves whole batches");
        out.extend_from_slice(&bytes);
    }
}

fn concat(batches: &[Bytes]) -> Vec<u8> {
    batches.concat()
}

fn refusal(error: LogError) -> CommitRefusal {
    match error {
        LogError::CommitRefused { refusal, .. } => refusal,
        other => panic!("expected a commit refusal, got {other:?}"),
    }
}

/// Asserts that readers see exactly `committed`, up to `commit_end`.
async fn assert_visible(log: &PartitionLog<DiskStorage>, commit_end: i64, committed: &[u8]) {
    assert_eq!(log.offsets().high_watermark, commit_end);
    let at_end = log.read(commit_end, 64 << 20).await.unwrap();
    assert!(
        at_end.ranges.is_empty(),
        "nothing is served at the commit end"
    );
    assert_eq!(at_end.high_watermark, commit_end);
    if commit_end < log.offsets().log_end {
        let past = log.read(commit_end + 1, 64 << 20).await.unwrap_err();
        assert!(
            matches!(past, LogError::OffsetOutOfRange { high_watermark, .. }
                if high_watermark == commit_end),
            "{past:?}"
        );
    }
    assert_eq!(visible(log).await, committed, "commit end {commit_end}");
}

#[test]
fn uncommitted_batches_written_here_are_invisible() {
    for_each_read_path(|dir, config| {
        run(async {
            let log = open(dir, 0, config).await;
            log.set_commit_end(0).await.unwrap();
            let batches = replicate(&log, 0, &[3, 2, 4], 100).await;
            assert_eq!(log.offsets().log_end, 9);
            assert_visible(&log, 0, &[]).await;
            assert!(log.read_bytes(0, 64 << 20).await.unwrap().is_empty());
            log.set_commit_end(5).await.unwrap();
            assert_visible(&log, 5, &concat(&batches[..2])).await;
            assert_eq!(
                log.read_bytes(0, 64 << 20).await.unwrap(),
                concat(&batches[..2])
            );
            assert_eq!(log.read_bytes(3, 64 << 20).await.unwrap(), batches[1]);
            // More written above the commit end stays invisible too.
            let more = replicate(&log, 9, &[1, 5], 100).await;
            assert_visible(&log, 5, &concat(&batches[..2])).await;
            log.set_commit_end(10).await.unwrap();
            let mut committed = concat(&batches);
            committed.extend_from_slice(&more[0]);
            assert_visible(&log, 10, &committed).await;
            log.set_commit_end(15).await.unwrap();
            committed.extend_from_slice(&more[1]);
            assert_visible(&log, 15, &committed).await;
            log.close().await.unwrap();
        });
    });
}

#[test]
fn uncommitted_batches_recovered_at_open_are_invisible() {
    for_each_read_path(|dir, config| {
        run(async {
            let log = open(dir, 0, config.clone()).await;
            let batches = replicate(&log, 0, &[3, 2, 4], 100).await;
            log.close().await.unwrap();
            // Reopened, the log knows no position above any commit end: it scans.
            let log = open(dir, 0, config).await;
            assert_eq!(log.offsets().high_watermark, 9, "not replicated yet");
            log.set_commit_end(3).await.unwrap();
            assert_visible(&log, 3, &batches[0]).await;
            log.set_commit_end(5).await.unwrap();
            assert_visible(&log, 5, &concat(&batches[..2])).await;
            // Batches written now, above recovered ones still uncommitted.
            let more = replicate(&log, 9, &[2, 2], 100).await;
            assert_visible(&log, 5, &concat(&batches[..2])).await;
            log.set_commit_end(11).await.unwrap();
            let mut committed = concat(&batches);
            committed.extend_from_slice(&more[0]);
            assert_visible(&log, 11, &committed).await;
            log.close().await.unwrap();
        });
    });
}

#[test]
fn a_commit_end_in_an_older_segment_cuts_that_segment_only() {
    // Marked replicated before the batches are written (positions kept as groups commit),
    // or after (positions found by scanning).
    for mark_first in [true, false] {
        for_each_read_path(|dir, config| {
            let config = TopicConfig::builder()
                .io_mode(config.io_mode())
                .segment_bytes(crate::limits::SEGMENT_SIZE_BYTES_MIN)
                .build()
                .unwrap();
            run(async {
                let log = open(dir, 0, config).await;
                if mark_first {
                    log.set_commit_end(0).await.unwrap();
                }
                // About 1 KiB per batch: three or so per 4 KiB segment.
                let batches = replicate(&log, 0, &[1; 14], 1000).await;
                let bases: Vec<i64> = log.shared.state.borrow().segments.keys().copied().collect();
                assert!(bases.len() >= 4, "segments {bases:?}");
                let (second, third) = (bases[1], bases[2]);
                assert!(second >= 2 && third >= second + 2, "segments {bases:?}");
                // Inside the first segment, after its first batch.
                log.set_commit_end(1).await.unwrap();
                assert_visible(&log, 1, &batches[0]).await;
                // At the second segment's base: the first whole, the second not at all.
                let up_to = |end: i64| concat(&batches[..end as usize]);
                log.set_commit_end(second).await.unwrap();
                assert_visible(&log, second, &up_to(second)).await;
                // Inside the second (an older, closed segment).
                log.set_commit_end(second + 1).await.unwrap();
                assert_visible(&log, second + 1, &up_to(second + 1)).await;
                log.set_commit_end(third + 1).await.unwrap();
                assert_visible(&log, third + 1, &up_to(third + 1)).await;
                log.set_commit_end(14).await.unwrap();
                assert_visible(&log, 14, &up_to(14)).await;
                log.close().await.unwrap();
            });
        });
    }
}

#[test]
fn an_ordinary_append_to_a_replicated_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path(), 0, TopicConfig::default()).await;
        log.append(batch("before", 2), Ack::Written).await.unwrap();
        // An append queued before the log becomes replicated is refused when its group
        // forms.
        let mut queued = std::pin::pin!(log.append(batch("queued", 1), Ack::Written));
        assert!(futures::poll!(queued.as_mut()).is_pending(), "queued");
        log.set_commit_end(2).await.unwrap();
        let queued = queued.await;
        assert!(
            matches!(queued, Err(LogError::Replicated { .. })),
            "{queued:?}"
        );
        assert_eq!(log.offsets().log_end, 2, "nothing written");
        // Once it is, appends are refused at once.
        let refused = log.append(batch("after", 1), Ack::Written).await;
        assert!(
            matches!(refused, Err(LogError::Replicated { .. })),
            "{refused:?}"
        );
        // Before anything else is looked at: the batches are not the log's to judge.
        let empty = log.append(Bytes::new(), Ack::Written).await;
        assert!(
            matches!(empty, Err(LogError::Replicated { .. })),
            "{empty:?}"
        );
        assert_eq!(log.offsets().log_end, 2, "nothing written");
        // The replica's own appends go on.
        replicate(&log, 2, &[1], 10).await;
        assert_eq!(log.offsets().log_end, 3);
        log.close().await.unwrap();
    });
}

#[test]
fn a_commit_end_moving_back_past_the_log_or_into_a_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path(), 0, TopicConfig::default()).await;
        let batches = replicate(&log, 0, &[3, 2, 4], 100).await;
        // A refused first call leaves the log as it was: not replicated.
        let past = refusal(log.set_commit_end(10).await.unwrap_err());
        assert_eq!(
            past,
            CommitRefusal::OutsideLog {
                commit_end: 10,
                log_start: 0,
                log_end: 9
            }
        );
        assert_eq!(log.offsets().high_watermark, 9);
        log.set_commit_end(5).await.unwrap();
        let back = refusal(log.set_commit_end(3).await.unwrap_err());
        assert_eq!(
            back,
            CommitRefusal::Backwards {
                commit_end: 3,
                current: 5
            }
        );
        let past = refusal(log.set_commit_end(10).await.unwrap_err());
        assert!(matches!(
            past,
            CommitRefusal::OutsideLog { commit_end: 10, .. }
        ));
        let below = refusal(log.set_commit_end(-1).await.unwrap_err());
        assert!(matches!(
            below,
            CommitRefusal::OutsideLog { commit_end: -1, .. }
        ));
        let inside = refusal(log.set_commit_end(7).await.unwrap_err());
        assert_eq!(
            inside,
            CommitRefusal::InsideBatch {
                commit_end: 7,
                batch_offset: 5
            }
        );
        // None of them moved it; setting it where it is changes nothing.
        log.set_commit_end(5).await.unwrap();
        assert_visible(&log, 5, &concat(&batches[..2])).await;
        log.set_commit_end(9).await.unwrap();
        assert_visible(&log, 9, &concat(&batches)).await;
    });
}

/// Waits until the log's high watermark passes `offset`, as the broker's long-polling
/// fetch does (`Engine::wait_beyond`).
async fn wait_beyond(log: &PartitionLog<DiskStorage>, offset: i64) {
    loop {
        let version = log.version();
        if log.offsets().high_watermark > offset {
            return;
        }
        log.changed_since(version).await;
    }
}

#[test]
fn a_waiter_wakes_when_the_commit_end_moves() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path(), 0, TopicConfig::default()).await;
        log.set_commit_end(0).await.unwrap();
        let woken = std::rc::Rc::new(std::cell::Cell::new(false));
        let waiter = rt::spawn_local({
            let (log, woken) = (log.clone(), woken.clone());
            async move {
                wait_beyond(&log, 0).await;
                woken.set(true);
            }
        });
        // Batches written above the commit end move the log end, not the high watermark.
        replicate(&log, 0, &[2, 3], 10).await;
        for _ in 0..10 {
            rt::yield_now().await;
        }
        assert!(!woken.get(), "woken before anything was committed");
        log.set_commit_end(2).await.unwrap();
        let waited = rt::timeout(std::time::Duration::from_secs(10), waiter).await;
        assert!(
            matches!(waited, Ok(Ok(()))),
            "the waiter was not woken by the commit end moving"
        );
        assert!(woken.get());
    });
}

#[test]
fn truncation_cuts_above_the_commit_end_only() {
    for_each_read_path(|dir, config| {
        run(async {
            let log = open(dir, 0, config).await;
            log.set_commit_end(0).await.unwrap();
            let batches = replicate(&log, 0, &[3, 2, 4, 1], 100).await;
            log.set_commit_end(5).await.unwrap();
            let below = refusal(log.truncate_to(3).await.unwrap_err());
            assert_eq!(
                below,
                CommitRefusal::TruncateCommitted {
                    offset: 3,
                    commit_end: 5
                }
            );
            assert_eq!(log.offsets().log_end, 10, "nothing cut");
            assert_visible(&log, 5, &concat(&batches[..2])).await;
            log.truncate_to(5).await.unwrap();
            assert_eq!(log.offsets().log_end, 5);
            assert_visible(&log, 5, &concat(&batches[..2])).await;
            // A new leader's batches at the same offsets, of other sizes: the ends of the
            // ones cut must not be taken for theirs.
            let replaced = replicate(&log, 5, &[4, 1], 300).await;
            log.set_commit_end(9).await.unwrap();
            let mut committed = concat(&batches[..2]);
            committed.extend_from_slice(&replaced[0]);
            assert_visible(&log, 9, &committed).await;
            log.set_commit_end(10).await.unwrap();
            committed.extend_from_slice(&replaced[1]);
            assert_visible(&log, 10, &committed).await;
            log.close().await.unwrap();
        });
    });
}

/// Small segments and retention of everything (a byte kept is too many): what retention
/// may delete, only the bound decides.
fn retain_nothing(config: TopicConfig) -> TopicConfig {
    let mut config = config;
    config
        .apply_all([("segment.bytes", "4096"), ("retention.bytes", "0")])
        .unwrap();
    config
}

/// The base offsets of the log's segment files.
fn segment_bases(dir: &Path) -> Vec<i64> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

#[test]
fn retention_of_a_raft_groups_log_stops_at_its_bound() {
    for_each_read_path(|dir, config| {
        run(async {
            let config = retain_nothing(config);
            let log = open(dir, 0, config.clone()).await;
            log.set_commit_end(0).await.unwrap();
            // Ten segments of one 3,000-byte batch each (a batch larger than what is left
            // of a segment rolls it).
            let batches = replicate(&log, 0, &[1; 10], 3000).await;
            log.set_commit_end(10).await.unwrap();
            log.close().await.unwrap();
            std::fs::write(dir.join(RAFT_JOURNAL_FILE), b"").unwrap();

            // Reopened as the engine opens every log at start: a Raft group's, not yet
            // wrapped by its replica. Retention deletes nothing.
            let log = open(dir, 0, config).await;
            assert_eq!(log.enforce_retention().await.unwrap(), 0);
            assert_eq!(segment_bases(dir), (0..10).collect::<Vec<_>>());

            // Bounded at offset 4: segments 0..=3 end at or below it and go.
            log.bound_retention(4);
            assert_eq!(log.enforce_retention().await.unwrap(), 4);
            assert_eq!(log.offsets().log_start, 4);
            assert_eq!(segment_bases(dir), (4..10).collect::<Vec<_>>());
            // The bound never moves back.
            log.bound_retention(2);
            assert_eq!(log.enforce_retention().await.unwrap(), 0);
            log.bound_retention(7);
            assert_eq!(log.enforce_retention().await.unwrap(), 3);
            assert_eq!(segment_bases(dir), (7..10).collect::<Vec<_>>());
            log.set_commit_end(10).await.unwrap();
            assert_visible(&log, 10, &concat(&batches[7..])).await;
            // The active segment is never deleted, whatever the bound.
            log.bound_retention(i64::MAX);
            assert_eq!(log.enforce_retention().await.unwrap(), 2);
            assert_eq!(segment_bases(dir), [9]);
            log.close().await.unwrap();
        });
    });
}

#[test]
fn a_log_restarted_past_its_end_takes_batches_from_there_and_reopens_so() {
    for_each_read_path(|dir, config| {
        run(async {
            let log = open(dir, 0, config.clone()).await;
            log.set_commit_end(0).await.unwrap();
            replicate(&log, 0, &[3, 2], 100).await;
            log.set_commit_end(3).await.unwrap();

            // Not past the end: refused, nothing changes.
            let refused = log.restart_at(5).await.unwrap_err();
            assert!(matches!(
                refused,
                LogError::OffsetOutOfRange { offset: 5, .. }
            ));
            assert_eq!(log.offsets().log_end, 5);

            assert_eq!(log.restart_at(40).await.unwrap(), 40);
            let offsets = log.offsets();
            assert_eq!(
                (offsets.log_start, offsets.log_end, offsets.high_watermark),
                (40, 40, 40)
            );
            assert_eq!(segment_bases(dir), [40]);
            assert!(
                log.read(3, 1024).await.is_err(),
                "nothing below the new start"
            );
            // A batch that does not start at the new end is refused; the leader's are taken.
            assert!(log
                .append_replicated(batch_at(41, 1, 10), Ack::Durable)
                .await
                .is_err());
            let batches = replicate(&log, 40, &[2, 4], 100).await;
            log.set_commit_end(42).await.unwrap();
            assert_visible(&log, 42, &batches[0]).await;
            log.close().await.unwrap();

            let log = open(dir, 0, config).await;
            log.set_commit_end(46).await.unwrap();
            assert_eq!(log.offsets().log_start, 40);
            assert_visible(&log, 46, &concat(&batches)).await;
            log.close().await.unwrap();
        });
    });
}
