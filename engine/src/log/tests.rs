//! Tests of the partition log on a real file system, in both I/O modes: appends and
//! reads, restart and recovery (clean and torn), segment roll, retention, record deletion,
//! truncation, timestamps, flush policies, and bad input.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::batch::{BatchBuilder, BatchError, RecordBatch, TimestampType};
use crate::rt;
use crate::storage::fault::FaultStorage;
use crate::storage::{DiskStorage, Storage, StorageFile};
use crate::testing::offsets_and_values as values;
use crate::topic::IoMode;

fn id() -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("orders"),
        partition: 3,
    }
}

fn config(io_mode: IoMode) -> TopicConfig {
    TopicConfig::builder().io_mode(io_mode).build().unwrap()
}

/// A batch of `count` records whose values are `"{tag}-{i}"`, timestamps from `time`.
fn batch(tag: u32, count: usize, time: i64) -> Bytes {
    let mut builder = BatchBuilder::new()
        .base_timestamp(time)
        .max_timestamp(time + count as i64 - 1);
    for i in 0..count {
        let value = format!("{tag}-{i}");
        builder
            .push(i as i64, Some(b"key"), Some(value.as_bytes()), &[])
            .unwrap();
    }
    Bytes::from(builder.build())
}

async fn open(dir: &Path, config: TopicConfig) -> PartitionLog<DiskStorage> {
    PartitionLog::open(DiskStorage, dir, id(), config)
        .await
        .unwrap()
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    rt::block_on(future).unwrap()
}

/// Runs `test` buffered, then direct without and with the batch cache (reads from the
/// files, then from memory and chunks read into it).
fn both_modes(test: impl Fn(IoMode)) {
    test(IoMode::Buffered);
    cache::init_for_this_thread(0);
    test(IoMode::Direct);
    cache::init_for_this_thread(64 << 20);
    test(IoMode::Direct);
    cache::init_for_this_thread(0);
}

#[test]
fn appends_get_dense_offsets_and_read_back_exactly() {
    both_modes(|mode| {
        let dir = tempfile::tempdir().unwrap();
        run(async {
            let log = open(dir.path(), config(mode)).await;
            for tag in 0..50 {
                let appended = log
                    .append(batch(tag, 10, 1000), Ack::Written)
                    .await
                    .unwrap();
                assert_eq!(appended.offset_first, i64::from(tag) * 10, "{mode:?}");
                assert_eq!(appended.offset_next, i64::from(tag) * 10 + 10);
            }
            assert_eq!(log.offsets().log_end, 500);
            let all = values(&log.read_bytes(0, 1 << 20).await.unwrap());
            assert_eq!(all.len(), 500, "{mode:?}");
            for (index, (offset, value)) in all.iter().enumerate() {
                assert_eq!(*offset, index as i64);
                assert_eq!(value, &format!("{}-{}", index / 10, index % 10));
            }
            // A read inside a batch starts at that batch; at the end it is empty.
            let from_middle = values(&log.read_bytes(255, 1).await.unwrap());
            assert_eq!(from_middle.first().map(|(o, _)| *o), Some(250));
            assert_eq!(
                from_middle.len(),
                10,
                "at least one whole batch, even over max_bytes"
            );
            assert!(log.read(500, 1 << 20).await.unwrap().ranges.is_empty());
            let beyond = log.read(501, 1 << 20).await.unwrap_err();
            assert!(matches!(
                beyond,
                LogError::OffsetOutOfRange { offset: 501, .. }
            ));
            log.close().await.unwrap();
        });
    });
}

#[test]
fn restart_keeps_everything_and_offsets_continue() {
    both_modes(|mode| {
        let dir = tempfile::tempdir().unwrap();
        run(async {
            let log = open(dir.path(), config(mode)).await;
            for tag in 0..20 {
                log.append(batch(tag, 5, 0), Ack::Durable).await.unwrap();
            }
            log.close().await.unwrap();
            let log = open(dir.path(), config(mode)).await;
            assert_eq!(log.offsets().log_end, 100, "{mode:?}");
            assert_eq!(log.offsets().durable_end, 100);
            let appended = log.append(batch(99, 5, 0), Ack::Durable).await.unwrap();
            assert_eq!(appended.offset_first, 100);
            let all = values(&log.read_bytes(0, 1 << 20).await.unwrap());
            assert_eq!(all.len(), 105);
            assert_eq!(all[100], (100, "99-0".to_owned()));
            log.close().await.unwrap();
        });
    });
}

/// Found while writing the `recovery` fuzz target: a `.log` file named with a base offset
/// past `SEGMENT_BASE_OFFSET_MAX` (which ringlog never writes) made opening the partition
/// panic in the index's range assertion. It is not a segment name.
#[test]
fn a_segment_name_beyond_the_index_range_is_not_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join(format!("{:020}.log", i64::MAX));
    std::fs::write(&foreign, batch(0, 1, 0)).unwrap();
    run(async {
        let log = open(dir.path(), config(IoMode::Buffered)).await;
        assert_eq!(log.offsets().log_end, 0);
        let appended = log.append(batch(1, 2, 0), Ack::Durable).await.unwrap();
        assert_eq!(appended.offset_first, 0);
        log.close().await.unwrap();
    });
    assert!(
        foreign.exists(),
        "a file that is not a segment is left alone"
    );
}

#[test]
fn unclean_stop_with_garbage_tail_recovers_every_acknowledged_batch() {
    both_modes(|mode| {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("00000000000000000000.log");
        run(async {
            let log = open(dir.path(), config(mode)).await;
            for tag in 0..30 {
                log.append(batch(tag, 4, 0), Ack::Durable).await.unwrap();
            }
            // No close: the process "dies" here, leaving preallocated space.
        });
        let valid = {
            use std::io::{Seek, SeekFrom, Write};
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap();
            let bytes = std::fs::read(&segment).unwrap();
            let valid = find_valid_end(&bytes);
            file.seek(SeekFrom::Start(valid as u64)).unwrap();
            file.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 9, 1, 2, 3])
                .unwrap();
            valid
        };
        run(async {
            let log = open(dir.path(), config(mode)).await;
            assert_eq!(log.offsets().log_end, 120, "{mode:?}");
            assert_eq!(
                std::fs::metadata(&segment).unwrap().len(),
                valid as u64,
                "tail cut"
            );
            let appended = log.append(batch(7, 1, 0), Ack::Durable).await.unwrap();
            assert_eq!(appended.offset_first, 120);
            assert_eq!(
                values(&log.read_bytes(0, 1 << 20).await.unwrap()).len(),
                121
            );
            log.close().await.unwrap();
        });
    });
}

/// The segments in `dir` by base offset, with the bytes of whole valid batches in each.
fn segment_sizes(dir: &Path) -> Vec<(i64, usize)> {
    let mut segments: Vec<(i64, usize)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension() == Some("log".as_ref()))
        .map(|path| {
            let base = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (base, find_valid_end(&std::fs::read(&path).unwrap()))
        })
        .collect();
    segments.sort_unstable();
    segments
}

/// Bytes of whole valid batches at the front of a segment file.
fn find_valid_end(bytes: &[u8]) -> usize {
    crate::batch::validate_prefix(bytes, crate::limits::BATCH_SIZE_BYTES_MAX)
        .valid
        .size_bytes
}

#[test]
fn segments_roll_and_retention_drops_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let config = TopicConfig::builder()
            .segment_bytes(8192)
            .retention_bytes(Some(16384))
            .build()
            .unwrap();
        let log = open(dir.path(), config.clone()).await;
        // Recent records, so the time limit (7 days by default) deletes nothing.
        let now = appender::now_ms();
        for tag in 0..60 {
            log.append(batch(tag, 40, now), Ack::Written).await.unwrap();
        }
        // By size: segments go oldest first while the rest still hold retention.bytes; the active
        // one never goes.
        let segments = segment_sizes(dir.path());
        assert!(
            segments.len() >= 4,
            "only {} segments for ~48 KiB at 8 KiB each",
            segments.len()
        );
        let mut rest: usize = segments.iter().map(|(_, size)| size).sum();
        let mut survivors = &segments[..];
        while survivors.len() > 1 && rest - survivors[0].1 >= 16384 {
            rest -= survivors[0].1;
            survivors = &survivors[1..];
        }
        assert!(
            survivors.len() >= 2,
            "a closed segment survives: {segments:?}"
        );
        let expected: Vec<i64> = survivors.iter().map(|(base, _)| *base).collect();
        // A fetch's range of the first segment, held while retention deletes the file.
        let held = log.read(0, 1 << 20).await.unwrap();
        let deleted = log.enforce_retention().await.unwrap();
        assert_eq!(deleted, segments.len() - expected.len());
        let kept: Vec<i64> = segment_sizes(dir.path()).iter().map(|(b, _)| *b).collect();
        assert_eq!(kept, expected, "{segments:?}");
        let [ReadRange::File(range)] = &held.ranges[..] else {
            panic!("one file range of a buffered log");
        };
        let bytes = range.file.read_at(range.position, range.len as usize).await;
        let sent = values(&bytes.unwrap());
        let first_segment_records = segments[1].0;
        assert_eq!(
            sent.len() as i64,
            first_segment_records,
            "the first segment, intact"
        );
        let last = (
            first_segment_records - 1,
            format!("{}-39", first_segment_records / 40 - 1),
        );
        assert_eq!(sent.last(), Some(&last));
        let offsets = log.offsets();
        assert_eq!(offsets.log_start, expected[0], "log start moved");
        assert!(matches!(
            log.read(0, 100).await.unwrap_err(),
            LogError::OffsetOutOfRange { .. }
        ));
        let kept = values(&log.read_bytes(offsets.log_start, 1 << 20).await.unwrap());
        assert_eq!(kept.first().map(|(o, _)| *o), Some(offsets.log_start));
        log.close().await.unwrap();
        let reopened = open(dir.path(), config).await;
        assert_eq!(reopened.offsets().log_start, offsets.log_start, "persisted");
        assert_eq!(reopened.offsets().log_end, 2400);
        reopened.close().await.unwrap();
    });
}

/// Appends 30 batches of 40 records an hour old, then 30 recent ones, to a log of 8 KiB
/// segments; returns the offset of the first recent record.
async fn old_then_recent(log: &PartitionLog<DiskStorage>) -> i64 {
    let now = appender::now_ms();
    for tag in 0..30 {
        let hour_ago = now - 3_600_000;
        log.append(batch(tag, 40, hour_ago), Ack::Written)
            .await
            .unwrap();
    }
    let first_recent = log.offsets().log_end;
    for tag in 30..60 {
        log.append(batch(tag, 40, now), Ack::Written).await.unwrap();
    }
    first_recent
}

/// A minute of time retention and 8 KiB segments.
fn minute_retention() -> TopicConfig {
    TopicConfig::builder()
        .segment_bytes(8192)
        .retention_ms(Some(60_000))
        .build()
        .unwrap()
}

/// The base offsets of the segments time retention keeps: every segment from the one
/// holding `first_recent` on (the ones before hold only records an hour old).
fn kept_by_time(segments: &[(i64, usize)], first_recent: i64) -> Vec<i64> {
    let holding = segments
        .iter()
        .rposition(|(base, _)| *base <= first_recent)
        .unwrap();
    assert!(holding >= 2, "two segments of old records: {segments:?}");
    segments[holding..].iter().map(|(base, _)| *base).collect()
}

#[test]
fn time_retention_deletes_the_segments_whose_newest_record_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path(), minute_retention()).await;
        let first_recent = old_then_recent(&log).await;
        let segments = segment_sizes(dir.path());
        let expected = kept_by_time(&segments, first_recent);
        let deleted = log.enforce_retention().await.unwrap();
        assert_eq!(deleted, segments.len() - expected.len());
        let kept: Vec<i64> = segment_sizes(dir.path()).iter().map(|(b, _)| *b).collect();
        assert_eq!(kept, expected);
        assert_eq!(log.offsets().log_start, expected[0]);
        let first = values(&log.read_bytes(expected[0], 1).await.unwrap());
        assert_eq!(first.first().map(|(offset, _)| *offset), Some(expected[0]));
        assert_eq!(
            log.enforce_retention().await.unwrap(),
            0,
            "nothing more is old"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn the_appender_applies_retention_on_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    retention::set_check_interval_for_this_thread(Some(std::time::Duration::from_millis(100)));
    run(async {
        let log = open(dir.path(), minute_retention()).await;
        let first_recent = old_then_recent(&log).await;
        let expected = kept_by_time(&segment_sizes(dir.path()), first_recent);
        // Nothing but the appender's timer applies retention here; the bound only keeps a
        // regression from hanging the run.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while log.offsets().log_start == 0 {
            assert!(std::time::Instant::now() < deadline, "no retention in 30 s");
            rt::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The log start moves before the files go; a command queued now runs after the
        // timer's work is done (and, below the log start, changes nothing).
        let log_start = log.delete_records_before(0).await.unwrap();
        assert_eq!(log_start, expected[0]);
        let kept: Vec<i64> = segment_sizes(dir.path()).iter().map(|(b, _)| *b).collect();
        assert_eq!(kept, expected);
        log.close().await.unwrap();
    });
    retention::set_check_interval_for_this_thread(None);
}

#[test]
fn delete_records_and_truncate_move_the_ends() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let config = TopicConfig::builder().segment_bytes(8192).build().unwrap();
        let log = open(dir.path(), config.clone()).await;
        for tag in 0..40 {
            log.append(batch(tag, 10, 0), Ack::Written).await.unwrap();
        }
        assert_eq!(log.delete_records_before(125).await.unwrap(), 125);
        assert_eq!(log.offsets().log_start, 125);
        let past = log.delete_records_before(401).await.unwrap_err();
        assert!(
            matches!(
                past,
                LogError::OffsetOutOfRange {
                    offset: 401,
                    log_start: 125,
                    high_watermark: 400,
                    ..
                }
            ),
            "past the high watermark: {past}"
        );
        log.truncate_to(300).await.unwrap();
        assert_eq!(log.offsets().log_end, 300);
        let appended = log.append(batch(77, 10, 0), Ack::Durable).await.unwrap();
        assert_eq!(appended.offset_first, 300);
        log.close().await.unwrap();
        let log = open(dir.path(), config).await;
        assert_eq!(log.offsets().log_end, 310);
        let all = values(&log.read_bytes(290, 1 << 20).await.unwrap());
        assert_eq!(all[10], (300, "77-0".to_owned()));
        log.close().await.unwrap();
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path(), config(IoMode::Buffered)).await;
        for tag in 0..10 {
            // Records of batch `tag` have timestamps 1000*tag + i.
            log.append(batch(tag, 10, 1000 * i64::from(tag)), Ack::Written)
                .await
                .unwrap();
        }
        assert_eq!(
            log.offset_for_timestamp(0).await.unwrap().map(|f| f.pair()),
            Some((0, 0))
        );
        assert_eq!(
            log.offset_for_timestamp(3005)
                .await
                .unwrap()
                .map(|f| f.pair()),
            Some((35, 3005))
        );
        assert_eq!(
            log.offset_for_timestamp(3010)
                .await
                .unwrap()
                .map(|f| f.pair()),
            Some((40, 4000))
        );
        assert_eq!(
            log.offset_for_timestamp(1_000_000)
                .await
                .unwrap()
                .map(|f| f.pair()),
            None
        );
        log.close().await.unwrap();
    });
}

#[test]
fn the_largest_timestamp_is_found_record_exactly() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path(), config(IoMode::Buffered)).await;
        assert_eq!(
            log.max_timestamp_offset().await.unwrap().map(|f| f.pair()),
            None,
            "empty log"
        );
        // Batch timestamps 1000*t + i for t in [3, 9, 2]: the largest, 9009, is the last
        // record of the second batch, offset 19.
        for (tag, time) in [(0, 3000), (1, 9000), (2, 2000)] {
            log.append(batch(tag, 10, time), Ack::Written)
                .await
                .unwrap();
        }
        assert_eq!(
            log.max_timestamp_offset().await.unwrap().map(|f| f.pair()),
            Some((19, 9009))
        );
        log.close().await.unwrap();
        let log = open(dir.path(), config(IoMode::Buffered)).await;
        assert_eq!(
            log.max_timestamp_offset().await.unwrap().map(|f| f.pair()),
            Some((19, 9009)),
            "after restart"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn flush_policies_and_acks_decide_the_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let never = TopicConfig::builder()
            .flush(FlushPolicy::Never)
            .build()
            .unwrap();
        let log = open(&dir.path().join("never"), never).await;
        log.append(batch(0, 3, 0), Ack::Written).await.unwrap();
        let offsets = log.offsets();
        assert_eq!(
            (offsets.log_end, offsets.durable_end, offsets.high_watermark),
            (3, 0, 3)
        );
        log.append(batch(1, 3, 0), Ack::Durable).await.unwrap();
        assert_eq!(
            log.offsets().durable_end,
            6,
            "acks=all waits for an fdatasync"
        );
        log.close().await.unwrap();

        let always = TopicConfig::builder()
            .flush(FlushPolicy::Always)
            .build()
            .unwrap();
        let log = open(&dir.path().join("always"), always).await;
        log.append(batch(0, 3, 0), Ack::Written).await.unwrap();
        assert_eq!(log.offsets().log_end, 3, "acks=1 returns once written");
        log.append(batch(1, 3, 0), Ack::Durable).await.unwrap();
        let offsets = log.offsets();
        assert_eq!((offsets.durable_end, offsets.high_watermark), (6, 6));
        log.close().await.unwrap();
    });
}

/// Waits until the syncs in flight of `log` have completed: a command on the appender's
/// queue runs only after them (DeleteRecords below the log start changes nothing).
async fn settle<S: Storage>(log: &PartitionLog<S>) {
    let log_start = log.offsets().log_start;
    assert_eq!(log.delete_records_before(0).await.unwrap(), log_start);
}

#[test]
fn periodic_flush_by_bytes_syncs_the_group_that_reaches_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let batch_bytes = batch(0, 10, 0).len() as u64;
        let periodic = TopicConfig::builder()
            .flush(FlushPolicy::periodic(None, Some(batch_bytes * 5 / 2)))
            .build()
            .unwrap();
        let log = open(dir.path(), periodic).await;
        let mut durable_ends = Vec::new();
        for tag in 0..4 {
            log.append(batch(tag, 10, 0), Ack::Written).await.unwrap();
            settle(&log).await;
            durable_ends.push(log.offsets().durable_end);
        }
        assert_eq!(
            durable_ends,
            [0, 0, 30, 30],
            "the third batch brings the unsynced bytes to 2.5 batches"
        );
        assert_eq!(
            log.offsets().high_watermark,
            40,
            "not flush=always: all is readable"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn periodic_flush_by_time_syncs_an_interval_after_the_last_sync() {
    const INTERVAL: std::time::Duration = std::time::Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let interval_ms = INTERVAL.as_millis() as u64;
        let periodic = TopicConfig::builder()
            .flush(FlushPolicy::periodic(Some(interval_ms), None))
            .build()
            .unwrap();
        // The appender starts counting the interval when it starts, after this.
        let opened = std::time::Instant::now();
        let log = open(dir.path(), periodic).await;
        log.append(batch(0, 10, 0), Ack::Written).await.unwrap();
        log.append(batch(1, 10, 0), Ack::Written).await.unwrap();
        let durable_at = durable_by(&log, 20).await;
        assert!(
            durable_at >= opened + INTERVAL,
            "synced {:?} after opening, before the interval",
            durable_at - opened
        );
        log.close().await.unwrap();
    });
}

/// Waits (on the log's change notification) until the durable end reaches `offset`;
/// returns when it saw it. The bound only keeps a regression from hanging the run.
async fn durable_by<S: Storage>(log: &PartitionLog<S>, offset: i64) -> std::time::Instant {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let version = log.version();
        if log.offsets().durable_end >= offset {
            return std::time::Instant::now();
        }
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let changed = rt::timeout(remaining, log.changed_since(version)).await;
        assert!(
            changed.is_ok(),
            "durable end {:?}, not {offset}, after 30 s",
            log.offsets()
        );
    }
}

/// A `flush = always` log whose last write's fdatasync is held back: the bytes are in the
/// segment, but neither the high watermark nor a read reaches past the durable position;
/// once the sync completes, both do (and a long-polling reader waiting on the log wakes).
#[test]
fn flush_always_reads_stop_at_the_durable_position() {
    both_modes(|mode| {
        let dir = Path::new("/data/orders-3");
        run(async {
            let storage = FaultStorage::new();
            let always = TopicConfig::builder()
                .flush(FlushPolicy::Always)
                .io_mode(mode)
                .build()
                .unwrap();
            let log = PartitionLog::open(storage.clone(), dir, id(), always)
                .await
                .unwrap();
            log.append(batch(0, 3, 0), Ack::Durable).await.unwrap();
            storage.hold_syncs();
            log.append(batch(1, 3, 0), Ack::Written).await.unwrap();
            let offsets = log.offsets();
            assert_eq!(
                (offsets.log_end, offsets.durable_end, offsets.high_watermark),
                (6, 3, 3),
                "{mode:?}"
            );
            let segment = storage
                .file_bytes(&dir.join("00000000000000000000.log"))
                .unwrap();
            let written = values(&segment[..find_valid_end(&segment)]);
            assert_eq!(written.len(), 6, "the second batch is in the file");
            let durable = [(0, "0-0"), (1, "0-1"), (2, "0-2")].map(|(o, v)| (o, v.to_owned()));
            let visible = values(&log.read_bytes(0, 1 << 20).await.unwrap());
            assert_eq!(
                visible, durable,
                "{mode:?}: nothing past the durable position"
            );
            assert!(log.read(3, 1 << 20).await.unwrap().ranges.is_empty());
            assert!(matches!(
                log.read(4, 1 << 20).await.unwrap_err(),
                LogError::OffsetOutOfRange {
                    offset: 4,
                    high_watermark: 3,
                    ..
                }
            ));

            let version = log.version();
            let waiter = {
                let log = log.clone();
                rt::spawn_local(async move { log.changed_since(version).await })
            };
            for _ in 0..10 {
                rt::yield_now().await;
            }
            assert_eq!(
                log.version(),
                version,
                "nothing moves while the sync is held"
            );
            storage.release_syncs();
            rt::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("the completed sync wakes the waiter")
                .unwrap();
            let offsets = log.offsets();
            assert_eq!((offsets.durable_end, offsets.high_watermark), (6, 6));
            let visible = values(&log.read_bytes(0, 1 << 20).await.unwrap());
            assert_eq!(visible, written, "{mode:?}: everything durable is readable");
            log.close().await.unwrap();
        });
    });
}

#[test]
fn log_append_time_topics_stamp_the_broker_clock() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let config = TopicConfig::builder()
            .timestamp_type(TimestampType::LogAppendTime)
            .build()
            .unwrap();
        let log = open(dir.path(), config).await;
        let before = appender::now_ms();
        let appended = log.append(batch(0, 2, 5), Ack::Written).await.unwrap();
        let stamped = appended.log_append_time_ms.unwrap();
        assert!(stamped >= before && stamped <= appender::now_ms());
        let bytes = log.read_bytes(0, 1 << 20).await.unwrap();
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(batch.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(batch.max_timestamp(), stamped, "and the CRC still verifies");
        log.close().await.unwrap();
    });
}

/// A batch of `count` records with `value_bytes`-byte values, all bytes `tag as u8`.
fn large_batch(tag: u32, count: usize, value_bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::new().base_timestamp(1_000);
    let value = vec![tag as u8; value_bytes];
    for _ in 0..count {
        builder.push(0, None, Some(&value), &[]).unwrap();
    }
    Bytes::from(builder.build())
}

#[test]
fn a_group_of_more_batches_than_one_write_takes_iovecs_is_written_exactly() {
    let cases = [
        (IoMode::Buffered, TimestampType::CreateTime),
        (IoMode::Buffered, TimestampType::LogAppendTime),
        (IoMode::Direct, TimestampType::CreateTime),
    ];
    for (mode, timestamp_type) in cases {
        let dir = tempfile::tempdir().unwrap();
        run(async {
            let config = TopicConfig::builder()
                .io_mode(mode)
                .timestamp_type(timestamp_type)
                .build()
                .unwrap();
            let log = open(dir.path(), config).await;
            // Queued in one poll, before the appender runs: one group of 1,300 batches,
            // whose large records sections alone would take 1,733 iovecs if each were
            // written from the producer's buffer (the kernel takes 1,024).
            let batches: Vec<Bytes> = (0..1_300)
                .map(|tag| {
                    if tag % 3 == 0 {
                        batch(tag, 2, 0)
                    } else {
                        large_batch(tag, 5, 1_000)
                    }
                })
                .collect();
            let appends = batches
                .iter()
                .map(|batches| log.append(batches.clone(), Ack::Written));
            let appended = futures::future::join_all(appends).await;
            let bytes = log.read_bytes(0, 64 << 20).await.unwrap();
            let mut rest = &bytes[..];
            let mut offset_next = 0;
            for (original, appended) in batches.iter().zip(appended) {
                let appended = appended.unwrap();
                assert_eq!(appended.offset_first, offset_next, "{mode:?}");
                offset_next = appended.offset_next;
                // Parsing checks the CRC (recomputed for LogAppendTime).
                let (written, after) = RecordBatch::parse(rest).unwrap();
                rest = after;
                assert_eq!(written.base_offset(), appended.offset_first);
                assert_eq!(written.timestamp_type(), timestamp_type);
                if timestamp_type == TimestampType::CreateTime {
                    assert_eq!(&written.as_bytes()[8..], &original[8..], "{mode:?}");
                } else {
                    assert_eq!(
                        written.records_section(),
                        &original[crate::batch::HEADER_SIZE_BYTES..]
                    );
                }
            }
            assert!(rest.is_empty(), "{mode:?}: nothing but the batches");
            assert_eq!(log.offsets().log_end, offset_next);
            log.close().await.unwrap();
            // And so it reads after a restart (recovery validates every batch's CRC).
            let log = open(dir.path(), TopicConfig::default()).await;
            assert_eq!(log.offsets().log_end, offset_next, "{mode:?}");
            log.close().await.unwrap();
        });
    }
}

#[test]
fn invalid_batches_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open(dir.path(), config(IoMode::Buffered)).await;
        let mut bad = batch(0, 3, 0).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let error = log.append(bad.into(), Ack::Written).await.unwrap_err();
        assert!(
            matches!(
                error,
                LogError::InvalidBatch {
                    log_end: 0,
                    source: BatchError::CrcMismatch { .. },
                    ..
                }
            ),
            "{error}"
        );
        let mut good_then_bad = batch(1, 2, 0).to_vec();
        good_then_bad.extend_from_slice(&batch(2, 2, 0)[..30]);
        let error = log
            .append(good_then_bad.into(), Ack::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                LogError::InvalidBatch {
                    log_end: 0,
                    source: BatchError::Truncated { have: 30, .. },
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(matches!(
            log.append(Bytes::new(), Ack::Written).await.unwrap_err(),
            LogError::Empty { .. }
        ));
        assert_eq!(log.offsets().log_end, 0);
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_appends_are_grouped_and_stay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let always = TopicConfig::builder()
            .flush(FlushPolicy::Always)
            .build()
            .unwrap();
        let log = open(dir.path(), always).await;
        let tasks: Vec<_> = (0..64u32)
            .map(|tag| {
                let log = log.clone();
                rt::spawn_local(async move { log.append(batch(tag, 2, 0), Ack::Durable).await })
            })
            .collect();
        let mut firsts = Vec::new();
        for task in tasks {
            firsts.push(task.await.unwrap().unwrap().offset_first);
        }
        assert_eq!(
            firsts,
            (0..64).map(|i| i * 2).collect::<Vec<_>>(),
            "queue order"
        );
        let all = values(&log.read_bytes(0, 1 << 20).await.unwrap());
        assert_eq!(all.len(), 128);
        log.close().await.unwrap();
    });
}

/// Group commit across partitions: the groups of many partitions of one shard, formed in
/// the same turn of its executor, go to the kernel in one `io_uring_enter`, each write with
/// its linked fdatasync.
#[test]
fn the_groups_of_many_partitions_go_to_the_kernel_in_one_submission() {
    const PARTITIONS: u32 = 64;
    both_modes(|io_mode| {
        let dir = tempfile::tempdir().unwrap();
        run(async {
            let always = TopicConfig::builder()
                .io_mode(io_mode)
                .flush(FlushPolicy::Always)
                .build()
                .unwrap();
            let mut logs = Vec::new();
            for partition in 0..PARTITIONS {
                let id = PartitionId {
                    topic: std::sync::Arc::from("orders"),
                    partition,
                };
                let path = dir.path().join(partition.to_string());
                let log = PartitionLog::open(DiskStorage, &path, id, always.clone());
                logs.push(log.await.unwrap());
            }
            // A first group each preallocates its segment file: the round measured below
            // is of writes and fdatasyncs alone.
            append_to_each(&logs, 0).await;
            let before = rt::driver_stats();
            append_to_each(&logs, 1).await;
            let after = rt::driver_stats();
            let entries = after.entries_submitted - before.entries_submitted;
            let submits = after.submit_calls - before.submit_calls;
            assert!(
                entries >= 2 * u64::from(PARTITIONS),
                "{io_mode:?}: {entries} entries for {PARTITIONS} writes and fdatasyncs"
            );
            assert_eq!(
                submits, 1,
                "{io_mode:?}: {entries} entries in {submits} submissions"
            );
            for log in logs {
                let all = values(&log.read_bytes(0, 1 << 20).await.unwrap());
                assert_eq!(all.len(), 4, "{io_mode:?}: both groups read back");
                log.close().await.unwrap();
            }
        });
    });
}

/// Appends a durable batch of two records to each log, all at once, and waits for every
/// answer.
async fn append_to_each(logs: &[PartitionLog<DiskStorage>], tag: u32) {
    let tasks: Vec<_> = logs
        .iter()
        .map(|log| {
            let log = log.clone();
            rt::spawn_local(async move { log.append(batch(tag, 2, 0), Ack::Durable).await })
        })
        .collect();
    for task in tasks {
        let appended = task.await.unwrap().unwrap();
        assert_eq!(appended.offset_first, i64::from(tag) * 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any cut of the active segment recovers to exactly the whole batches before the cut;
    /// any corrupted byte to exactly the batches before the damaged one.
    #[test]
    fn any_truncation_or_corruption_recovers_the_longest_valid_prefix(
        cut_fraction in 0.0f64..1.0,
        corrupt in proptest::bool::ANY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("00000000000000000000.log");
        let mut boundaries = vec![0u64];
        run(async {
            let log = open(dir.path(), config(IoMode::Buffered)).await;
            for tag in 0..12 {
                log.append(batch(tag, 3, 0), Ack::Written).await.unwrap();
            }
            log.close().await.unwrap();
        });
        // As after an unclean stop before any checkpoint: recovery scans the whole segment.
        std::fs::remove_file(dir.path().join("recovery-checkpoint")).unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let mut rest = &bytes[..];
        while let Ok((batch, next)) = RecordBatch::parse(rest) {
            boundaries.push(boundaries.last().unwrap() + batch.size_bytes() as u64);
            rest = next;
        }
        let at = ((bytes.len() as f64) * cut_fraction) as usize;
        let whole_before = boundaries.iter().filter(|&&end| end <= at as u64).count() - 1;
        let expected_batches = if corrupt {
            // Bytes 0..8 and 12..16 of a batch are outside the CRC: damage there is not
            // detectable by design (the offset check catches 0..8 unless it keeps offsets).
            let start = boundaries[whole_before];
            let within = at as u64 - start;
            prop_assume!(within >= 16 || (8..12).contains(&within));
            bytes[at] ^= 0x5a;
            std::fs::write(&segment, &bytes).unwrap();
            whole_before
        } else {
            bytes.truncate(at);
            std::fs::write(&segment, &bytes).unwrap();
            whole_before
        };
        let log_end = run(async {
            let log = open(dir.path(), config(IoMode::Buffered)).await;
            let end = log.offsets().log_end;
            let readable = values(&log.read_bytes(0, 1 << 20).await.unwrap()).len();
            prop_assert_eq!(readable as i64, end);
            log.close().await.unwrap();
            Ok(end)
        })?;
        prop_assert_eq!(log_end, expected_batches as i64 * 3);
    }
}

#[test]
fn recovery_scans_only_what_follows_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("00000000000000000000.log");
    run(async {
        let log = open(dir.path(), config(IoMode::Buffered)).await;
        for tag in 0..10 {
            log.append(batch(tag, 4, 0), Ack::Durable).await.unwrap();
        }
        log.checkpoint().await.unwrap();
        for tag in 10..15 {
            log.append(batch(tag, 4, 0), Ack::Durable).await.unwrap();
        }
        // Unclean stop: no close.
    });
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut starts = Vec::new();
    let mut at = 0;
    while let Ok((batch, _)) = RecordBatch::parse(&bytes[at..]) {
        starts.push(at);
        at += batch.size_bytes();
    }
    assert_eq!(starts.len(), 15);
    // Damage inside the checkpointed prefix goes unseen by recovery, which trusts the
    // checkpoint and does not rescan it; the first fetch that reads it finds it, and
    // refuses the damaged batch instead of serving it. Damage after the checkpoint is found
    // by recovery, and the log is cut there.
    bytes[starts[1] + 30] ^= 0xff;
    bytes[starts[14] + 40] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    run(async {
        let log = open(dir.path(), config(IoMode::Buffered)).await;
        assert_eq!(
            log.offsets().log_end,
            14 * 4,
            "prefix trusted, damaged last batch cut"
        );
        let first = log.read_bytes(0, 1 << 20).await.unwrap();
        assert_eq!(
            values(&first).len(),
            4,
            "served up to the damaged batch, not past it"
        );
        assert_eq!(first.len(), starts[1]);
        let refused = log.read_bytes(4, 1 << 20).await.unwrap_err();
        assert!(
            matches!(refused, LogError::Damaged { offset: 4, .. }),
            "{refused}"
        );
        log.close().await.unwrap();
    });
}
