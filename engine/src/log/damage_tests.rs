//! Damage on disk found with the broker stopped, on the fault-injecting storage: bytes
//! flipped in closed segments (in the middle, where only a fetch finds them, and in the
//! tail, where recovery does), index files cut short, a checkpoint lost. What recovery
//! keeps, what fetches are refused, and that no byte of a damaged batch is ever served
//! while every other acknowledged batch is, in both I/O modes.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::segment::segment_path;
use super::*;
use crate::batch::{BatchBuilder, RecordBatch};
use crate::rt;
use crate::storage::fault::FaultStorage;
use crate::testing::offsets_and_values;
use crate::topic::IoMode;

const RECORDS_PER_BATCH: i64 = 4;
const BATCHES: u32 = 60;

fn id() -> PartitionId {
    PartitionId {
        topic: std::sync::Arc::from("damage"),
        partition: 0,
    }
}

/// Segments of about 10 batches, an index entry every 2 or 3 batches.
fn config(io_mode: IoMode) -> TopicConfig {
    TopicConfig::builder()
        .io_mode(io_mode)
        .segment_bytes(4096)
        .index_interval_bytes(1024)
        .preallocate_bytes(4096)
        .build()
        .unwrap()
}

fn batch(tag: u32) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..RECORDS_PER_BATCH {
        let value = format!("{tag:04}-{i}-{}", "v".repeat(60));
        builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
    }
    Bytes::from(builder.build())
}

fn dir() -> &'static Path {
    Path::new("/data/damage-0")
}

/// A log of [`BATCHES`] durable batches, closed cleanly (sealed segments, index files, a
/// clean checkpoint); returns the segment bases.
async fn written(storage: &FaultStorage, io_mode: IoMode) -> Vec<i64> {
    let log = PartitionLog::open(storage.clone(), dir(), id(), config(io_mode))
        .await
        .unwrap();
    for tag in 0..BATCHES {
        log.append(batch(tag), Ack::Durable).await.unwrap();
    }
    let bases: Vec<i64> = log.shared.state.borrow().segments.keys().copied().collect();
    log.close().await.unwrap();
    assert!(bases.len() >= 4, "several segments: {bases:?}");
    bases
}

fn log_path(base: i64) -> PathBuf {
    segment_path(dir(), base, "log")
}

/// The start of every batch of segment `base` and its base offset.
fn batch_starts(storage: &FaultStorage, base: i64) -> Vec<(usize, i64)> {
    let bytes = storage.file_bytes(&log_path(base)).unwrap();
    let mut starts = Vec::new();
    let mut at = 0;
    while let Ok((batch, _)) = RecordBatch::parse(&bytes[at..]) {
        starts.push((at, batch.base_offset()));
        at += batch.size_bytes();
    }
    assert_eq!(at, bytes.len(), "a sealed segment holds whole batches only");
    starts
}

/// Flips one byte of segment `base`, `within` bytes into the batch at `start` (inside its
/// records, which the CRC covers).
fn flip(storage: &FaultStorage, base: i64, start: usize, within: usize) {
    let mut bytes = storage.file_bytes(&log_path(base)).unwrap();
    bytes[start + within] ^= 0x20;
    storage.put_file(&log_path(base), &bytes);
}

/// What a read at `offset` gives: the offsets of the records served (every batch served
/// must pass its CRC), or the damage that refused it.
async fn read(log: &PartitionLog<FaultStorage>, offset: i64) -> Result<Vec<i64>, ScanStop> {
    match log.read_bytes(offset, 1 << 20).await {
        Ok(bytes) => {
            let mut rest = &bytes[..];
            let mut offsets = Vec::new();
            while !rest.is_empty() {
                let Ok((batch, next)) = RecordBatch::parse(rest) else {
                    panic!("a read at {offset} served bytes that are not a valid batch");
                };
                offsets.extend(
                    offsets_and_values(&rest[..batch.size_bytes()])
                        .iter()
                        .map(|r| r.0),
                );
                rest = next;
            }
            Ok(offsets)
        }
        Err(LogError::Damaged {
            source, offset: at, ..
        }) => {
            assert_eq!(at, offset, "the error names the offset asked for");
            Err(source)
        }
        Err(other) => panic!("read at {offset}: {other}"),
    }
}

/// Reads every offset of the log one by one: returns those served and those refused.
async fn read_each(log: &PartitionLog<FaultStorage>) -> (Vec<i64>, Vec<i64>) {
    let (mut served, mut refused) = (Vec::new(), Vec::new());
    for offset in 0..log.offsets().high_watermark {
        match read(log, offset).await {
            Ok(offsets) => {
                assert!(offsets.contains(&offset), "a read at {offset} serves it");
                served.push(offset);
            }
            Err(_) => refused.push(offset),
        }
    }
    (served, refused)
}

/// Runs `test` with buffered I/O, and with direct I/O without the batch cache, with it,
/// and with one too small to keep a read (whose fetches fall back to the file).
fn both_modes(test: impl Fn(IoMode)) {
    let modes = [
        (IoMode::Buffered, 0),
        (IoMode::Direct, 0),
        (IoMode::Direct, 64 << 20),
        (IoMode::Direct, 4096),
    ];
    for (mode, cache_bytes) in modes {
        super::cache::init_for_this_thread(cache_bytes);
        test(mode);
    }
}

/// A flipped byte in the middle of a sealed segment (before its last index entry, so
/// recovery does not read it): the log opens whole, the damaged batch's offsets (and at
/// most those after it up to the next index entry) are refused, every other offset of
/// every segment is served, and no read serves a byte of the damaged batch.
#[test]
fn a_damaged_batch_in_the_middle_of_a_sealed_segment_is_refused_and_nothing_else() {
    both_modes(|io_mode| {
        rt::block_on(async {
            let storage = FaultStorage::new();
            let bases = written(&storage, io_mode).await;
            let starts = batch_starts(&storage, bases[1]);
            let (damaged_at, damaged_offset) = starts[2];
            flip(&storage, bases[1], damaged_at, 80);
            let log = PartitionLog::open(storage.clone(), dir(), id(), config(io_mode))
                .await
                .unwrap();
            let end = i64::from(BATCHES) * RECORDS_PER_BATCH;
            assert_eq!(log.offsets().log_end, end, "{io_mode:?}: nothing cut");
            let (served, refused) = read_each(&log).await;
            let damaged = damaged_offset..damaged_offset + RECORDS_PER_BATCH;
            assert!(
                damaged.clone().all(|offset| refused.contains(&offset)),
                "{io_mode:?}: the damaged batch is refused: {refused:?}"
            );
            // Offsets after the damaged batch are refused only up to the next index entry
            // (a fetch walks from an entry, and cannot step over the damage).
            let next_entry = {
                let state = log.shared.state.borrow();
                let index = state.segments[&bases[1]].index.offset_index();
                let entries: Vec<i64> =
                    index.entries().iter().map(|e| e.offset(bases[1])).collect();
                entries
                    .into_iter()
                    .find(|&offset| offset > damaged.start)
                    .unwrap_or(bases[2])
            };
            assert!(
                refused
                    .iter()
                    .all(|&o| o >= damaged.start && o < next_entry),
                "{io_mode:?}: refused only up to the next index entry {next_entry}: {refused:?}"
            );
            assert_eq!(served.len() + refused.len(), end as usize);
            let Err(ScanStop::Invalid { position, .. }) = read(&log, damaged.start).await else {
                panic!("{io_mode:?}: the refusal names the damaged batch");
            };
            assert_eq!(position, damaged_at as u64);
            // Appends go on.
            log.append(batch(BATCHES), Ack::Durable).await.unwrap();
            log.close().await.unwrap();
        })
        .unwrap();
    });
}

/// A flipped byte in the last batch of a sealed closed segment: recovery finds it (after
/// the last index entry), keeps the segment whole and every segment after it (the crash
/// case would cut there and drop them), and refuses only the damaged offsets.
#[test]
fn damage_in_the_tail_of_a_sealed_segment_keeps_every_later_segment() {
    both_modes(|io_mode| {
        rt::block_on(async {
            let storage = FaultStorage::new();
            let bases = written(&storage, io_mode).await;
            let starts = batch_starts(&storage, bases[0]);
            let &(damaged_at, damaged_offset) = starts.last().unwrap();
            flip(&storage, bases[0], damaged_at, 90);
            let log = PartitionLog::open(storage.clone(), dir(), id(), config(io_mode))
                .await
                .unwrap();
            let end = i64::from(BATCHES) * RECORDS_PER_BATCH;
            assert_eq!(
                log.offsets().log_end,
                end,
                "{io_mode:?}: later segments kept"
            );
            let kept: Vec<i64> = log.shared.state.borrow().segments.keys().copied().collect();
            assert_eq!(kept, bases);
            let (served, refused) = read_each(&log).await;
            let damaged: Vec<i64> = (damaged_offset..bases[1]).collect();
            assert_eq!(refused, damaged, "{io_mode:?}");
            assert_eq!(served.len() + refused.len(), end as usize);
            assert_eq!(
                storage.file_bytes(&log_path(bases[0])).unwrap().len(),
                starts.len() * batch(0).len(),
                "{io_mode:?}: the damaged segment is not cut"
            );
            log.close().await.unwrap();
            // A second start finds the same: nothing was cut or rewritten meanwhile.
            let again = PartitionLog::open(storage.clone(), dir(), id(), config(io_mode))
                .await
                .unwrap();
            assert_eq!(again.offsets().log_end, end);
            assert_eq!(read_each(&again).await.1, damaged);
            again.close().await.unwrap();
        })
        .unwrap();
    });
}

/// The evidence that a segment was sealed survives the loss of its own index files and of
/// the checkpoint: a later segment's sealed index proves it. Only with none of them left
/// does recovery take the damage for a crash that interrupted the seal, and cut there.
#[test]
fn a_later_sealed_segment_proves_a_damaged_one_was_sealed() {
    rt::block_on(async {
        let storage = FaultStorage::new();
        let bases = written(&storage, IoMode::Buffered).await;
        let starts = batch_starts(&storage, bases[0]);
        let &(damaged_at, damaged_offset) = starts.last().unwrap();
        flip(&storage, bases[0], damaged_at, 90);
        let remove = |path: PathBuf| {
            let storage = storage.clone();
            async move { storage.remove_file(&path).await.unwrap() }
        };
        remove(segment_path(dir(), bases[0], "index")).await;
        remove(dir().join("recovery-checkpoint")).await;
        let end = i64::from(BATCHES) * RECORDS_PER_BATCH;
        let config = config(IoMode::Buffered);
        let log = PartitionLog::open(storage.clone(), dir(), id(), config.clone())
            .await
            .unwrap();
        assert_eq!(log.offsets().log_end, end, "kept on a later segment's word");
        drop(log);
        // No evidence left: every index file and the checkpoint gone.
        for base in &bases {
            for extension in ["index", "timeindex"] {
                let _ = storage
                    .remove_file(&segment_path(dir(), *base, extension))
                    .await;
            }
        }
        let _ = storage
            .remove_file(&dir().join("recovery-checkpoint"))
            .await;
        let log = PartitionLog::open(storage.clone(), dir(), id(), config)
            .await
            .unwrap();
        assert_eq!(
            log.offsets().log_end,
            damaged_offset,
            "without evidence of a seal, the crash case: cut at the damage"
        );
        log.close().await.unwrap();
    })
    .unwrap();
}

/// Index files cut short or lost, and a checkpoint lost or damaged, cost only a scan:
/// every batch is served, and the rebuilt index files are sealed again.
#[test]
fn damaged_index_files_and_checkpoint_are_rebuilt_from_the_segments() {
    rt::block_on(async {
        let storage = FaultStorage::new();
        let bases = written(&storage, IoMode::Buffered).await;
        let index = segment_path(dir(), bases[1], "index");
        let bytes = storage.file_bytes(&index).unwrap();
        storage.put_file(&index, &bytes[..bytes.len() - 3]);
        let time_index = segment_path(dir(), bases[2], "timeindex");
        storage.put_file(&time_index, &[]);
        let checkpoint = dir().join("recovery-checkpoint");
        let mut bytes = storage.file_bytes(&checkpoint).unwrap();
        bytes[20] ^= 1;
        storage.put_file(&checkpoint, &bytes);
        let log = PartitionLog::open(storage.clone(), dir(), id(), config(IoMode::Buffered))
            .await
            .unwrap();
        let end = i64::from(BATCHES) * RECORDS_PER_BATCH;
        assert_eq!(log.offsets().log_end, end);
        let (served, refused) = read_each(&log).await;
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(served.len(), end as usize);
        for base in &bases[1..3] {
            let rebuilt = checkpoint::read_index_files(&storage, dir(), *base, 1024).await;
            assert!(rebuilt.unwrap().is_sealed(), "segment {base} indexed again");
        }
        log.close().await.unwrap();
    })
    .unwrap();
}

/// A segment file cut short after its seal (a truncated copy, a lost extent): the
/// offsets it no longer holds are refused, not served as an empty answer that would
/// leave a consumer asking forever, and the segments after it serve.
#[test]
fn a_sealed_segment_cut_short_refuses_the_offsets_it_lost() {
    rt::block_on(async {
        let storage = FaultStorage::new();
        let bases = written(&storage, IoMode::Buffered).await;
        let starts = batch_starts(&storage, bases[1]);
        let (cut_at, first_lost) = starts[starts.len() - 2];
        let bytes = storage.file_bytes(&log_path(bases[1])).unwrap();
        storage.put_file(&log_path(bases[1]), &bytes[..cut_at + 10]);
        let log = PartitionLog::open(storage.clone(), dir(), id(), config(IoMode::Buffered))
            .await
            .unwrap();
        let (served, refused) = read_each(&log).await;
        assert_eq!(refused, (first_lost..bases[2]).collect::<Vec<_>>());
        let end = i64::from(BATCHES) * RECORDS_PER_BATCH;
        assert_eq!(served.len() + refused.len(), end as usize);
        log.close().await.unwrap();
    })
    .unwrap();
}

/// Index files lost on a disk with no byte free: the rebuilt index cannot be written, which
/// costs the next start a scan, not this start the partition: it opens and serves all.
#[test]
fn index_files_that_cannot_be_rewritten_do_not_keep_the_log_closed() {
    rt::block_on(async {
        let storage = FaultStorage::new();
        let bases = written(&storage, IoMode::Buffered).await;
        for extension in ["index", "timeindex"] {
            let path = segment_path(dir(), bases[1], extension);
            storage.remove_file(&path).await.unwrap();
        }
        storage.limit_capacity(u64::MAX);
        let used = u64::MAX - storage.free_bytes().unwrap();
        storage.limit_capacity(used);
        let log = PartitionLog::open(storage.clone(), dir(), id(), config(IoMode::Buffered))
            .await
            .unwrap();
        let end = i64::from(BATCHES) * RECORDS_PER_BATCH;
        assert_eq!(log.offsets().log_end, end);
        let (served, refused) = read_each(&log).await;
        assert!(refused.is_empty());
        assert_eq!(served.len(), end as usize);
        drop(log);
        storage.limit_capacity(u64::MAX);
        let log = PartitionLog::open(storage.clone(), dir(), id(), config(IoMode::Buffered))
            .await
            .unwrap();
        let rebuilt = checkpoint::read_index_files(&storage, dir(), bases[1], 1024).await;
        assert!(rebuilt.unwrap().is_sealed(), "written once there is room");
        log.close().await.unwrap();
    })
    .unwrap();
}
