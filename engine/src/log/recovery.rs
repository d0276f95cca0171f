//! Opening a partition log: finding its segments, trusting what the checkpoint says is
//! valid and durable, and validating everything after it.
//!
//! Closed segments keep their index files (rebuilt by a scan if missing or damaged); the
//! scan of a closed segment starts at its last indexed batch. The active segment is
//! scanned from the checkpointed position — the whole segment if there is no usable
//! checkpoint. Scans walk batch by batch with the one batch validator (length, magic, CRC,
//! record count) plus offset contiguity (`scan.rs`). Why a scan stopped is a [`ScanStop`],
//! named in the "partition recovered" line; a stop that means damage (a bad batch that is
//! not merely cut short, or a break in offsets) is also logged, naming the segment file,
//! the byte and the offset. Recovery time grows with the bytes written since the last
//! checkpoint, not with the size of the log. What recovery trusted without reading (the
//! prefix the index files or the checkpoint vouch for) is checked by the first fetch that
//! reads it (`Segment::unverified`).
//!
//! What a damaged segment costs:
//! - The active segment is cut after its last valid batch, so a torn or garbage tail is
//!   never served; nothing later depends on its bytes.
//! - A closed segment that breaks off before the next segment's base offset is either the
//!   remains of a crash that interrupted its seal (then nothing after it was acknowledged
//!   as durable: the seal comes before every later sync) or damage to sealed bytes. It is
//!   damage when the segment is known to have been sealed: its own index files say so, a
//!   later segment's do (seals run one after another, in log order), or the checkpoint
//!   recorded a durable end past it. A damaged sealed segment is kept whole, and so are the
//!   segments after it: only the offsets it can no longer serve are refused to fetches
//!   (CORRUPT_MESSAGE), and the error names them. Without such evidence, it is the crash:
//!   the segment is cut after its last valid batch and the later segments are removed,
//!   with a warning naming what was dropped.
//!
//! Batch lengths and header fields are read through the layout of `batch/layout.rs`, and
//! every I/O error becomes a [`LogError`] through `LogError::io`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;

use super::checkpoint::{self, Checkpoint};
pub(crate) use super::scan::ScanStop;
use super::scan::{self as walker};
use super::segment::{parse_segment_name, segment_path, BatchHeader, Segment};
use super::{LogError, PartitionId, Shared, State};
use crate::index::{BatchMeta, IndexError, SegmentIndex};
use crate::limits::{BUF_ALIGN_BYTES, RECOVERY_READ_CHUNK_BYTES};
use crate::storage::{Storage, StorageFile};
use crate::topic::{IoMode, TopicConfig};

/// Recovery's mapper of an I/O error of `operation` on partition `id` to the log's error
/// (through [`LogError::io`], the one constructor), for `map_err`.
fn io_error<'a>(
    id: &'a PartitionId,
    operation: &'static str,
) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::io(id, operation, source)
}

/// What the scan of one segment found.
#[derive(Debug)]
struct Scan {
    valid_bytes: u64,
    batches: u64,
    stop: ScanStop,
}

pub(crate) async fn open<S: Storage>(
    storage: S,
    dir: &Path,
    id: PartitionId,
    config: TopicConfig,
    budget: super::PreallocBudget,
) -> Result<Shared<S>, LogError> {
    let io = |operation| io_error(&id, operation);
    storage
        .create_dir_all(dir)
        .await
        .map_err(io("create partition directory"))?;
    let names = storage
        .list_dir(dir)
        .map_err(io("list partition directory"))?;
    let bases: Vec<i64> = names
        .iter()
        .filter_map(|name| parse_segment_name(name))
        .collect();
    let checkpoint = checkpoint::read(&storage, dir).await;
    let interval = config.index_interval_bytes();
    if checkpoint.is_none() && !bases.is_empty() {
        tracing::info!(
            partition = %id,
            "no usable recovery checkpoint; scanning the whole active segment"
        );
    }
    let (mut segments, bases) =
        open_closed_segments(&storage, dir, bases, (interval, checkpoint), &id).await?;
    let active_base = bases
        .last()
        .copied()
        .unwrap_or(checkpoint.map_or(0, |c| c.log_start));
    let direct = config.io_mode() == IoMode::Direct;
    let mut active = Segment::open(&storage, dir, active_base, direct, interval)
        .await
        .map_err(io("open active segment"))?;
    if bases.is_empty() {
        storage.sync_dir(dir).await.map_err(io("fsync directory"))?;
    }
    let scan = recover_active(&storage, dir, &mut active, checkpoint, &id).await?;
    let log_end = active.offset_next;
    let first_base = segments.keys().next().copied().unwrap_or(active_base);
    let log_start = checkpoint
        .map_or(first_base, |c| c.log_start)
        .clamp(first_base, log_end);
    tracing::info!(
        partition = %id,
        segments = segments.len() + 1,
        log_start,
        log_end,
        scanned_batches = scan.batches,
        valid_bytes = scan.valid_bytes,
        stopped_by = %scan.stop,
        "partition recovered"
    );
    // The log starts with no charge on the preallocation budget: nothing past the valid
    // bytes is left preallocated.
    assert_eq!(
        active.allocated_bytes, active.size_bytes,
        "the active segment was cut"
    );
    segments.insert(active_base, active);
    let state = State {
        segments,
        log_start,
        offset_assign_next: log_end,
        log_end,
        durable_end: log_end,
        durable_position: None,
        poisoned: None,
        config,
        producers: super::producers::Producers::default(),
        commit: None,
        truncations: 0,
        epochs: super::epochs::Epochs::new(log_start),
        // A Raft group's log deletes nothing by retention until its replica says how far
        // its window leaves the log to retention: the engine opens every partition when it
        // starts, before the replica wraps it.
        retention_bound: (names.iter())
            .any(|name| name == super::RAFT_JOURNAL_FILE)
            .then_some(log_start),
    };
    state.assert_at_rest();
    Ok(Shared {
        id,
        dir: dir.to_path_buf(),
        storage,
        state: RefCell::new(state),
        prealloc: super::prealloc::Prealloc::new(budget),
        version: Cell::new(0),
        waiters: RefCell::new(Vec::new()),
        cache: super::cache::for_this_thread(),
        cache_key: Cell::new(None),
        reading_ahead: Cell::new(false),
        readahead_steps: Cell::new(0),
        readahead_waiters: RefCell::new(Vec::new()),
    })
}

/// A closed segment as its scan left it, before recovery decides whether it is whole.
struct Opened<S: Storage> {
    segment: Segment<S>,
    scan: Scan,
    /// Where the scan started: the last indexed batch, or 0 without usable index files.
    start: u64,
    /// Whether its index files say its seal wrote them.
    sealed: bool,
}

/// Opens every segment but the last as a closed one, and decides what a closed segment
/// that breaks off before the next one's base offset is (see the module doc): damage to a
/// sealed segment, kept with the segments after it; or a crash that interrupted its seal,
/// in which case that segment becomes the last one and the later ones are removed.
/// Returns the closed segments and the bases that remain (the last is the active one's).
async fn open_closed_segments<S: Storage>(
    storage: &S,
    dir: &Path,
    mut bases: Vec<i64>,
    (interval, checkpoint): (u32, Option<Checkpoint>),
    id: &PartitionId,
) -> Result<(BTreeMap<i64, Segment<S>>, Vec<i64>), LogError> {
    let io = |operation| io_error(id, operation);
    let closed = bases.len().saturating_sub(1);
    let mut opened = Vec::with_capacity(closed);
    for &base in &bases[..closed] {
        opened.push(open_closed(storage, dir, base, interval, id).await?);
    }
    // A segment is known sealed if it or any later one was (seals complete in log order),
    // or the checkpoint recorded a durable end that only its seal could let pass it.
    let mut known_sealed = vec![false; closed];
    let mut sealed_after = false;
    for index in (0..closed).rev() {
        sealed_after |= opened[index].sealed || durable_past(checkpoint, bases[index + 1]);
        known_sealed[index] = sealed_after;
    }
    let mut segments = BTreeMap::new();
    for (index, mut closed) in opened.into_iter().enumerate() {
        let (base, next_base) = (bases[index], bases[index + 1]);
        if closed.segment.offset_next == next_base {
            let trimmed = closed.scan.valid_bytes == closed.segment.allocated_bytes;
            if !trimmed || closed.start == 0 {
                reseal(storage, dir, &mut closed.segment, true, id)
                    .await
                    .map_err(io("seal segment"))?;
            }
            segments.insert(base, closed.segment);
            continue;
        }
        if known_sealed[index] {
            keep_damaged(dir, &mut closed, next_base, id);
            segments.insert(base, closed.segment);
            continue;
        }
        tracing::warn!(
            partition = %id,
            segment = base,
            valid_until = closed.segment.offset_next,
            next_segment = next_base,
            stopped_by = %closed.scan.stop,
            dropped_segments = ?&bases[index + 1..],
            "log ends inside a closed segment whose seal a crash interrupted; \
             dropping the segments after it"
        );
        reseal(storage, dir, &mut closed.segment, false, id)
            .await
            .map_err(io("seal segment"))?;
        for &later in &bases[index + 1..] {
            remove_segment(storage, dir, later)
                .await
                .map_err(io("remove segment"))?;
        }
        storage.sync_dir(dir).await.map_err(io("fsync directory"))?;
        bases.truncate(index + 1);
        break;
    }
    Ok((segments, bases))
}

/// Whether `checkpoint` recorded a durable end past `offset` that proves the seal of the
/// segment ending there completed: syncs complete in log order, and that segment's seal
/// comes before any sync of a later offset. A checkpoint of an empty active prefix
/// records the active segment's base without vouching for it; a clean one vouches for
/// everything it names.
fn durable_past(checkpoint: Option<Checkpoint>, offset: i64) -> bool {
    checkpoint.is_some_and(|c| {
        (c.position > 0 && c.offset_next > offset) || (c.clean && c.offset_next >= offset)
    })
}

/// Keeps a sealed segment whose batches break off before `next_base` as it is: the whole
/// file, and its place in the log. The bytes from the damage on stay unverified, so every
/// fetch of the offsets they held walks into the damage and is refused; the segments
/// after it serve as usual.
fn keep_damaged<S: Storage>(dir: &Path, closed: &mut Opened<S>, next_base: i64, id: &PartitionId) {
    let segment = &mut closed.segment;
    let damaged_at = closed.scan.valid_bytes;
    tracing::error!(
        partition = %id,
        segment = %segment_path(dir, segment.base_offset, "log").display(),
        position = damaged_at,
        offsets = %format_args!("{}..{next_base}", segment.offset_next),
        stopped_by = %closed.scan.stop,
        "sealed segment damaged; kept as it is, with the segments after it: fetches of \
         these offsets answer CORRUPT_MESSAGE"
    );
    segment.unverified.add(damaged_at..segment.allocated_bytes);
    segment.damage_logged.push(damaged_at);
    segment.size_bytes = segment.allocated_bytes;
    segment.offset_next = next_base;
}

/// Opens a closed segment. Its index files say where its last indexed batch starts; the
/// scan from there to the end of the file finds where its valid bytes end (a few KiB for
/// a sealed segment); the bytes before it are left for fetches to check. Without usable
/// index files, the whole segment is scanned.
async fn open_closed<S: Storage>(
    storage: &S,
    dir: &Path,
    base: i64,
    interval: u32,
    id: &PartitionId,
) -> Result<Opened<S>, LogError> {
    let io = |operation| io_error(id, operation);
    let mut segment = Segment::open_read_only(storage, dir, base, interval)
        .await
        .map_err(io("open segment"))?;
    let (mut start, mut sealed) = (0, false);
    match checkpoint::read_index_files(storage, dir, base, interval).await {
        Ok(mut index) => {
            sealed = index.is_sealed();
            let (offset, position) = index.lookup_offset(i64::MAX);
            if u64::from(position) <= segment.allocated_bytes {
                index.truncate_to(offset, position);
                segment.index = index;
                segment.offset_next = offset;
                start = u64::from(position);
            } else {
                tracing::warn!(
                    partition = %id,
                    segment = %segment_path(dir, base, "log").display(),
                    size_bytes = segment.allocated_bytes,
                    indexed_position = position,
                    "segment shorter than its index; rebuilding the index from the segment"
                );
            }
        }
        Err(unusable) => tracing::warn!(
            partition = %id,
            %unusable,
            "index files unusable; rebuilding them from the segment"
        ),
    }
    segment.unverified.add(0..start);
    let scan = scan_and_index(&mut segment, start, id).await?;
    if let crate::index::MaxTimestamp::Known { timestamp_ms, .. } =
        segment.index.time_index().max_timestamp()
    {
        segment.max_timestamp = segment.max_timestamp.max(timestamp_ms);
    }
    Ok(Opened {
        segment,
        scan,
        start,
        sealed,
    })
}

/// Cuts a closed segment at its valid bytes, fdatasyncs it and rewrites its index files,
/// marked sealed if `sealed` (not for a segment about to become the active one). The index
/// files only save the next recovery a scan: if they cannot be written (a disk with no
/// byte free), the log opens with the index in memory, and the failure is logged.
async fn reseal<S: Storage>(
    storage: &S,
    dir: &Path,
    segment: &mut Segment<S>,
    sealed: bool,
    id: &PartitionId,
) -> std::io::Result<()> {
    let path = segment_path(dir, segment.base_offset, "log");
    let writer = storage
        .open(&path, crate::storage::OpenFlags::WRITE)
        .await?;
    writer.set_len(segment.size_bytes).await?;
    writer.sync_data().await?;
    segment.allocated_bytes = segment.size_bytes;
    let mut index = segment.index.clone();
    if sealed {
        index.mark_sealed();
    }
    let written = checkpoint::write_segment_index(storage, dir, segment.base_offset, &index).await;
    if let Err(error) = written {
        tracing::warn!(
            partition = %id,
            segment = %path.display(),
            %error,
            "could not write the segment's index files; the next start scans it again"
        );
    }
    Ok(())
}

/// Removes a segment's files.
async fn remove_segment<S: Storage>(storage: &S, dir: &Path, base: i64) -> std::io::Result<()> {
    for extension in ["log", "index", "timeindex"] {
        match storage
            .remove_file(&segment_path(dir, base, extension))
            .await
        {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Validates the active segment after its checkpoint, cuts it after the last valid batch,
/// and (direct mode) reloads the tail block.
async fn recover_active<S: Storage>(
    storage: &S,
    dir: &Path,
    active: &mut Segment<S>,
    checkpoint: Option<Checkpoint>,
    id: &PartitionId,
) -> Result<Scan, LogError> {
    let io = |operation| io_error(id, operation);
    let interval = active.index.offset_index().index_interval_bytes();
    let usable = checkpoint.filter(|c| {
        c.active_base_offset == active.base_offset && c.position <= active.allocated_bytes
    });
    let mut start = 0;
    if let Some(checkpoint) = usable {
        if let Ok(index) =
            checkpoint::read_index_files(storage, dir, active.base_offset, interval).await
        {
            if index.position_next_min() <= checkpoint.position {
                if let crate::index::MaxTimestamp::Known { timestamp_ms, .. } =
                    index.time_index().max_timestamp()
                {
                    active.max_timestamp = timestamp_ms;
                }
                active.index = index;
                active.size_bytes = checkpoint.position;
                active.offset_next = checkpoint.offset_next;
                start = checkpoint.position;
            }
        }
    }
    active.unverified.add(0..start);
    let scan = scan_and_index(active, start, id).await?;
    let valid = scan.valid_bytes;
    if scan.stop.is_damage() {
        tracing::error!(
            partition = %id,
            segment = %segment_path(dir, active.base_offset, "log").display(),
            position = valid,
            offset = active.offset_next,
            cut_bytes = active.allocated_bytes - valid,
            stopped_by = %scan.stop,
            "active segment damaged; cut after its last valid batch"
        );
    }
    let truncated = active.allocated_bytes != valid;
    if truncated {
        active
            .writer
            .set_len(valid)
            .await
            .map_err(io("truncate active segment"))?;
        active.allocated_bytes = valid;
    }
    // The log counts everything valid as durable from now on, but the bytes past the
    // checkpoint may be only in the page cache (a process that died before its fdatasync):
    // make them durable before anyone is told they are.
    if truncated || valid > start {
        active
            .writer
            .sync_data()
            .await
            .map_err(io("fdatasync active segment"))?;
    }
    if let Some(tail) = active.tail_block.as_mut() {
        let block = BUF_ALIGN_BYTES as u64;
        let tail_start = valid - valid % block;
        let bytes = active
            .reader
            .read_at(tail_start, (valid - tail_start) as usize)
            .await;
        tail.clear();
        tail.extend_from_slice(&bytes.map_err(io("read tail block"))?);
    }
    Ok(scan)
}

/// Scans the segment from `start` (a batch boundary, with `segment.offset_next` the offset
/// expected there), indexing every valid batch, until the end of the file or the first
/// batch that fails validation or breaks offset contiguity (see [`ScanStop`]).
async fn scan_and_index<S: Storage>(
    segment: &mut Segment<S>,
    start: u64,
    id: &PartitionId,
) -> Result<Scan, LogError> {
    scan_in_chunks(segment, start, id, RECOVERY_READ_CHUNK_BYTES).await
}

/// [`scan_and_index`], reading the file about `chunk_bytes` at a time (more for a larger
/// batch). The result does not depend on the chunk size; the `recovery` fuzz target checks
/// that with small chunks.
async fn scan_in_chunks<S: Storage>(
    segment: &mut Segment<S>,
    start: u64,
    id: &PartitionId,
    chunk_bytes: usize,
) -> Result<Scan, LogError> {
    let reader = segment.reader.clone();
    let span = (start, segment.allocated_bytes);
    let mut refused = None;
    let mut walk = walker::walk(
        &reader,
        span,
        segment.offset_next,
        chunk_bytes,
        |header, position| {
            if let Some(error) = index_refusal(&segment.index, header, position) {
                refused = Some(ScanStop::Unindexable { position, error });
                return false;
            }
            segment.on_batch_written(header, position);
            true
        },
    )
    .await
    .map_err(io_error(id, "read segment"))?;
    let stop = match (refused, walk.stop) {
        // The walk counted the refused batch before its visitor refused it: it is not kept.
        (Some(ScanStop::Unindexable { position, error }), None) => {
            walk.valid_end = position;
            walk.batches -= 1;
            ScanStop::Unindexable { position, error }
        }
        (None, Some(stop)) => stop,
        (refused, stop) => {
            unreachable!("the recovery scan stopped by {refused:?} and {stop:?}")
        }
    };
    segment.size_bytes = walk.valid_end;
    // The next batch goes exactly where the scan stopped, whatever the index files knew.
    segment.index.set_end(segment.offset_next, walk.valid_end);
    Ok(Scan {
        valid_bytes: walk.valid_end,
        batches: walk.batches,
        stop,
    })
}

/// Why the segment's index refuses the valid batch `header` at byte `position`, if it does:
/// offsets or bytes past what one segment addresses, which the appender rolls before
/// writing (indexing it anyway would panic on the index's assertions).
fn index_refusal(index: &SegmentIndex, header: &BatchHeader, position: u64) -> Option<IndexError> {
    let batch = BatchMeta {
        base_offset: header.base_offset,
        last_offset: header.last_offset,
        max_timestamp_ms: header.max_timestamp,
        // A position past u32 makes the batch end past 2^32, which the index refuses.
        position: u32::try_from(position).unwrap_or(u32::MAX),
        // A valid batch is at most BATCH_SIZE_BYTES_MAX, far below 2^32.
        size_bytes: u32::try_from(header.size_bytes).unwrap_or(u32::MAX),
    };
    index.check_batch(&batch).err()
}

/// What the scan of a whole segment found, and the segment's state after it, for the
/// fuzz target and its regression tests (`crate::fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentScan {
    pub(crate) valid_bytes: u64,
    pub(crate) batches: u64,
    pub(crate) stop: ScanStop,
    pub(crate) size_bytes: u64,
    pub(crate) offset_next: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) index: crate::index::SegmentIndex,
}

/// Scans, from its start, the segment based at `base_offset` whose file holds `bytes`,
/// with the real scan reading `chunk_bytes` at a time from an in-memory file.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn scan_segment(
    base_offset: i64,
    index_interval_bytes: u32,
    bytes: &[u8],
    chunk_bytes: usize,
) -> SegmentScan {
    let storage = crate::storage::fault::FaultStorage::new();
    let dir = Path::new("/fuzz/scan-0");
    storage.put_file(&segment_path(dir, base_offset, "log"), bytes);
    let id = PartitionId {
        topic: std::sync::Arc::from("scan"),
        partition: 0,
    };
    // Without latency the in-memory storage completes every operation at once, so the
    // scan needs no runtime and fuzzing starts no io_uring.
    let scanned = futures::executor::block_on(async {
        let mut segment = Segment::open_read_only(&storage, dir, base_offset, index_interval_bytes)
            .await
            .map_err(io_error(&id, "open segment"))?;
        let scan = scan_in_chunks(&mut segment, 0, &id, chunk_bytes).await?;
        Ok::<_, LogError>(SegmentScan {
            valid_bytes: scan.valid_bytes,
            batches: scan.batches,
            stop: scan.stop,
            size_bytes: segment.size_bytes,
            offset_next: segment.offset_next,
            max_timestamp: segment.max_timestamp,
            index: segment.index,
        })
    });
    match scanned {
        Ok(scanned) => scanned,
        Err(error) => panic!("an in-memory segment could not be scanned: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::walker::pending_need;
    use super::*;
    use crate::batch::{self, BatchBuilder, BatchError};
    use crate::rt;
    use crate::storage::fault::FaultStorage;

    const DIR: &str = "/data/scan-0";

    fn id() -> PartitionId {
        PartitionId {
            topic: std::sync::Arc::from("scan"),
            partition: 0,
        }
    }

    /// A batch of `records` records at `base_offset`.
    fn batch_at(base_offset: i64, records: usize) -> Vec<u8> {
        let mut builder = BatchBuilder::new().base_offset(base_offset);
        for i in 0..records {
            let value = format!("value-{i}");
            builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
        }
        builder.build()
    }

    /// Scans, from its start, segment 0 holding `bytes`.
    fn scan(bytes: &[u8]) -> Scan {
        rt::block_on(async {
            let storage = FaultStorage::new();
            let dir = Path::new(DIR);
            storage.put_file(&segment_path(dir, 0, "log"), bytes);
            let mut segment = Segment::open_read_only(&storage, dir, 0, 4096)
                .await
                .unwrap();
            let scan = scan_and_index(&mut segment, 0, &id()).await.unwrap();
            assert_eq!(segment.size_bytes, scan.valid_bytes);
            scan
        })
        .unwrap()
    }

    #[test]
    fn a_scan_says_why_it_stopped() {
        let (first, second) = (batch_at(0, 3), batch_at(3, 2));
        let whole = [first.clone(), second.clone()].concat();
        let len = whole.len() as u64;

        let clean = scan(&whole);
        assert_eq!((clean.batches, clean.valid_bytes), (2, len));
        assert_eq!(clean.stop, ScanStop::EndOfFile);

        let preallocated = scan(&[whole.clone(), vec![0; 4096]].concat());
        assert_eq!(preallocated.stop, ScanStop::Zeros { position: len });
        assert!(!preallocated.stop.is_damage());

        let torn = scan(&[whole.clone(), batch_at(5, 1)[..40].to_vec()].concat());
        assert!(
            matches!(
                torn.stop,
                ScanStop::Invalid { position, error: BatchError::Truncated { .. } }
                    if position == len
            ),
            "{}",
            torn.stop
        );
        assert!(!torn.stop.is_damage(), "a torn last write is no damage");

        let mut damaged = whole.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let damaged = scan(&damaged);
        assert_eq!(damaged.valid_bytes, first.len() as u64);
        assert!(
            matches!(
                damaged.stop,
                ScanStop::Invalid { position, error: BatchError::CrcMismatch { .. } }
                    if position == first.len() as u64
            ),
            "{}",
            damaged.stop
        );
        assert!(damaged.stop.is_damage());

        let gap = scan(&[first.clone(), batch_at(7, 2)].concat());
        let expected = ScanStop::OffsetGap {
            position: first.len() as u64,
            offset: 7,
            expected: 3,
        };
        assert_eq!(gap.stop, expected);
        assert!(gap.stop.is_damage());
        assert_eq!(
            gap.stop.to_string(),
            format!("batch at byte {} has offset 7, expected 3", first.len())
        );
    }

    /// Found by the `recovery` fuzz target: with a read chunk ending a few zeros after the
    /// last batch, garbage behind those zeros was reported as preallocated space (no damage)
    /// while a larger chunk reported it as an invalid batch.
    #[test]
    fn zeros_are_judged_whatever_the_chunk_size() {
        let valid = batch_at(0, 2);
        let mut bytes = [valid.clone(), vec![0; 20]].concat();
        bytes.extend_from_slice(&[1; 100]);
        // Reads grow with the buffer, so where a chunk ends depends on the chunk size in
        // ways that are easier to cover than to aim at.
        for chunk_bytes in (2..=512).chain([RECOVERY_READ_CHUNK_BYTES]) {
            let scan = scan_segment(0, 4096, &bytes, chunk_bytes);
            assert_eq!(scan.valid_bytes, valid.len() as u64);
            assert!(
                matches!(
                    scan.stop,
                    ScanStop::Invalid {
                        error: BatchError::BadMagic(0),
                        ..
                    }
                ),
                "chunk of {chunk_bytes} bytes: {}",
                scan.stop
            );
        }
    }

    /// Found while writing the `recovery` fuzz target (confirmed with a crafted input
    /// before the fuzzer reached it): valid compressed batches whose offsets run past what
    /// the segment's index addresses made recovery panic in the index's assertion.
    #[test]
    fn a_batch_beyond_the_index_stops_the_scan() {
        let huge = |base_offset| {
            BatchBuilder::new()
                .base_offset(base_offset)
                .build_opaque(crate::batch::Compression::Gzip, i32::MAX, b"opaque")
                .unwrap()
        };
        let per_batch = i64::from(i32::MAX);
        let kept = [huge(0), huge(per_batch)].concat();
        let scanned = scan(&[kept.clone(), huge(2 * per_batch)].concat());
        assert_eq!(scanned.batches, 2);
        assert_eq!(scanned.valid_bytes, kept.len() as u64);
        assert!(
            matches!(
                scanned.stop,
                ScanStop::Unindexable {
                    position,
                    error: IndexError::SegmentRangeExceeded { .. },
                } if position == kept.len() as u64
            ),
            "{}",
            scanned.stop
        );
        assert!(scanned.stop.is_damage());
    }

    #[test]
    fn a_scan_reads_a_batch_larger_than_its_chunk_whole() {
        let values = RECOVERY_READ_CHUNK_BYTES / 1000 + 1;
        let mut builder = BatchBuilder::new();
        for _ in 0..values {
            builder.push(0, None, Some(&[7; 1000]), &[]).unwrap();
        }
        let large = builder.build();
        assert!(large.len() > RECOVERY_READ_CHUNK_BYTES);
        let whole = [large.clone(), batch_at(values as i64, 1)].concat();
        let scanned = scan(&whole);
        assert_eq!((scanned.batches, scanned.stop), (2, ScanStop::EndOfFile));
        assert_eq!(
            pending_need(&large[..batch::LOG_OVERHEAD_BYTES]),
            large.len()
        );
        assert_eq!(pending_need(&large[..batch::LOG_OVERHEAD_BYTES - 1]), 0);
    }
}
