//! The batch cache with real direct-I/O logs on a real file system: tailing reads served
//! from memory, reads after a restart filled from the disk (and ahead), invalidation on
//! truncation and record deletion, eviction under the budget, and the fallback to file
//! ranges when the cache cannot hold a read.

use std::path::Path;

use bytes::Bytes;

use super::cache::{self, CacheStats};
use super::*;
use crate::batch::BatchBuilder;
use crate::rt;
use crate::storage::{DiskStorage, StorageFile};
use crate::testing::offsets_and_values as values;
use crate::topic::IoMode;

/// A batch of `count` records of about `value_bytes` each, tagged `"{tag}-{i}"`.
fn batch(tag: u32, count: usize, value_bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let mut value = format!("{tag}-{i}-").into_bytes();
        value.resize(value_bytes.max(value.len()), b'x');
        builder.push(i as i64, None, Some(&value), &[]).unwrap();
    }
    Bytes::from(builder.build())
}

fn direct(segment_bytes: u64) -> TopicConfig {
    TopicConfig::builder()
        .io_mode(IoMode::Direct)
        .segment_bytes(segment_bytes)
        .build()
        .unwrap()
}

async fn open(dir: &Path, config: TopicConfig) -> PartitionLog<DiskStorage> {
    let id = PartitionId {
        topic: std::sync::Arc::from("cached"),
        partition: 0,
    };
    PartitionLog::open(DiskStorage, dir, id, config)
        .await
        .unwrap()
}

fn stats() -> CacheStats {
    cache::for_this_thread().stats()
}

/// Reads the whole log fetch by fetch, checking each piece kind; returns the values.
async fn read_all(log: &PartitionLog<DiskStorage>, max_bytes: u64) -> (Vec<(i64, String)>, bool) {
    let mut all = Vec::new();
    let mut only_memory = true;
    let mut offset = log.offsets().log_start;
    while offset < log.offsets().high_watermark {
        let slice = log.read(offset, max_bytes).await.unwrap();
        let mut bytes = Vec::new();
        for range in &slice.ranges {
            match range {
                ReadRange::Memory(piece) => bytes.extend_from_slice(piece),
                ReadRange::File(range) => {
                    only_memory = false;
                    let read = range.file.read_at(range.position, range.len as usize);
                    bytes.extend_from_slice(&read.await.unwrap());
                }
            }
        }
        let got = values(&bytes);
        let next = got.last().map(|(o, _)| o + 1).unwrap();
        all.extend(got.into_iter().filter(|(o, _)| *o >= offset));
        offset = next;
    }
    (all, only_memory)
}

fn expected(batches: u32, per_batch: usize) -> Vec<(i64, String)> {
    (0..batches)
        .flat_map(|tag| (0..per_batch).map(move |i| (tag, i)))
        .enumerate()
        .map(|(offset, (tag, i))| (offset as i64, format!("{tag}-{i}-")))
        .collect()
}

fn trimmed(values: Vec<(i64, String)>) -> Vec<(i64, String)> {
    values
        .into_iter()
        .map(|(offset, value)| (offset, value.trim_end_matches('x').to_owned()))
        .collect()
}

#[test]
fn tailing_reads_come_from_memory_and_match_the_file() {
    let dir = tempfile::tempdir().unwrap();
    cache::init_for_this_thread(64 << 20);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 30)).await;
        for tag in 0..40 {
            log.append(batch(tag, 10, 200), Ack::Written).await.unwrap();
        }
        let (cached, only_memory) = read_all(&log, 16 << 10).await;
        assert!(only_memory, "every group written is in the cache");
        assert_eq!(trimmed(cached), expected(40, 10));
        assert!(stats().entries > 0);
        log.close().await.unwrap();
        assert_eq!(
            stats().used_bytes,
            0,
            "a closed log's batches leave the cache"
        );
    })
    .unwrap();
    // The same log read from its file with the cache off holds the same bytes.
    cache::init_for_this_thread(0);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 30)).await;
        let (from_file, only_memory) = read_all(&log, 16 << 10).await;
        assert!(!only_memory);
        assert_eq!(trimmed(from_file), expected(40, 10));
    })
    .unwrap();
}

#[test]
fn after_a_restart_reads_fill_the_cache_from_disk_and_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    cache::init_for_this_thread(0);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 20)).await;
        for tag in 0..600 {
            log.append(batch(tag, 8, 1000), Ack::Written).await.unwrap();
        }
        log.close().await.unwrap();
    })
    .unwrap();
    cache::init_for_this_thread(256 << 20);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 20)).await;
        assert_eq!(
            stats().entries,
            0,
            "a reopened log starts with nothing cached"
        );
        let first = log.read(0, 64 << 10).await.unwrap();
        assert!(
            matches!(first.ranges[0], ReadRange::Memory(_)),
            "a miss reads into memory"
        );
        // The read-ahead task runs while this one waits.
        rt::sleep(std::time::Duration::from_millis(200)).await;
        let ahead = stats().used_bytes;
        assert!(
            ahead >= 4 << 20,
            "read ahead of the consumer: {ahead} bytes cached"
        );
        let (all, only_memory) = read_all(&log, 64 << 10).await;
        assert!(
            only_memory,
            "every fetch, across segments, served from memory"
        );
        assert_eq!(trimmed(all), expected(600, 8));
    })
    .unwrap();
}

#[test]
fn truncation_drops_the_cached_batches_it_cuts() {
    let dir = tempfile::tempdir().unwrap();
    cache::init_for_this_thread(64 << 20);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 30)).await;
        for tag in 0..10 {
            log.append(batch(tag, 10, 100), Ack::Written).await.unwrap();
        }
        let (before, _) = read_all(&log, 1 << 20).await;
        assert_eq!(before.len(), 100);
        log.truncate_to(50).await.unwrap();
        for tag in 100..103 {
            log.append(batch(tag, 10, 100), Ack::Written).await.unwrap();
        }
        let (after, _) = read_all(&log, 1 << 20).await;
        let after = trimmed(after);
        assert_eq!(after.len(), 80);
        assert_eq!(after[49], (49, "4-9-".to_owned()));
        assert_eq!(
            after[50],
            (50, "100-0-".to_owned()),
            "not the cut batch's bytes"
        );
    })
    .unwrap();
}

#[test]
fn deleting_records_frees_the_cached_batches_below_the_new_start() {
    let dir = tempfile::tempdir().unwrap();
    cache::init_for_this_thread(64 << 20);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 30)).await;
        for tag in 0..20 {
            log.append(batch(tag, 10, 1000), Ack::Written)
                .await
                .unwrap();
        }
        let before = stats();
        log.delete_records_before(150).await.unwrap();
        let after = stats();
        assert!(after.entries < before.entries, "{before:?} → {after:?}");
        assert!(after.used_bytes < before.used_bytes);
        let (rest, _) = read_all(&log, 1 << 20).await;
        assert_eq!(rest.first().map(|(o, _)| *o), Some(150));
    })
    .unwrap();
}

#[test]
fn the_cache_stays_within_its_budget_and_misses_read_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 3 << 20;
    cache::init_for_this_thread(budget);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 30)).await;
        for tag in 0..400 {
            log.append(batch(tag, 16, 1000), Ack::Written)
                .await
                .unwrap();
            assert!(stats().used_bytes <= budget);
        }
        let (all, only_memory) = read_all(&log, 256 << 10).await;
        assert!(
            only_memory,
            "misses are read into the cache and served from it"
        );
        assert_eq!(trimmed(all), expected(400, 16));
        assert!(stats().used_bytes <= budget);
    })
    .unwrap();
}

#[test]
fn a_cache_too_small_for_a_read_answers_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    cache::init_for_this_thread(4096);
    rt::block_on(async {
        let log = open(dir.path(), direct(1 << 30)).await;
        for tag in 0..5 {
            log.append(batch(tag, 10, 1000), Ack::Written)
                .await
                .unwrap();
        }
        assert_eq!(stats().used_bytes, 0, "no group fits 4 KiB");
        let (all, only_memory) = read_all(&log, 1 << 20).await;
        assert!(!only_memory);
        assert_eq!(trimmed(all), expected(5, 10));
    })
    .unwrap();
}

/// A cache smaller than one read keeps nothing, and one smaller than the read-ahead
/// distance evicts what the read-ahead task read before: either way the task stops once a
/// chunk does not move the first gap forward, instead of reading the disk forever, and
/// every fetch is still answered (from the file when the cache cannot hold it).
#[test]
fn read_ahead_stops_when_the_cache_cannot_keep_what_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    cache::init_for_this_thread(0);
    rt::block_on(async {
        let log = open(dir.path(), direct(64 << 20)).await;
        for tag in 0..300 {
            log.append(batch(tag, 10, 10_000), Ack::Written)
                .await
                .unwrap();
        }
        log.close().await.unwrap();
    })
    .unwrap();
    for budget in [4096, 3 << 20] {
        cache::init_for_this_thread(budget);
        rt::block_on(async {
            let log = open(dir.path(), direct(64 << 20)).await;
            let (read, _) = read_all(&log, 1 << 20).await;
            assert_eq!(trimmed(read), expected(300, 10), "budget {budget}");
            let mut turns = 0;
            while log.shared.reading_ahead.get() {
                assert!(turns < 2_000, "budget {budget}: the read-ahead never stops");
                rt::sleep(std::time::Duration::from_millis(1)).await;
                turns += 1;
            }
            log.close().await.unwrap();
        })
        .unwrap();
    }
}
