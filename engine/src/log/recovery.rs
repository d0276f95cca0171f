//! Opening a partition log: finding its segments, trusting what the checkpoint says is
//! valid and durable, and validating everything after it.
//!
//! Closed segments keep their index files (rebuilt by a scan if missing or damaged). The
//! active segment is scanned from the checkpointed position — the whole segment if there
//! is no usable checkpoint — batch by batch with the one batch validator (length, magic,
//! CRC, record count) plus offset contiguity; the file is cut after the last whole valid
//! batch. A torn or garbage tail is therefore never served. Recovery time grows with the
//! bytes written since the last checkpoint, not with the size of the log.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;

use super::checkpoint::{self, Checkpoint};
use super::segment::{parse_segment_name, segment_path, BatchHeader, Segment};
use super::{LogError, PartitionId, Shared, State};
use crate::batch;
use crate::limits::{BATCH_SIZE_BYTES_MAX, BUF_ALIGN_BYTES, RECOVERY_READ_CHUNK_BYTES};
use crate::storage::{Storage, StorageFile};
use crate::topic::{IoMode, TopicConfig};

/// A mapper of an I/O error of `operation` on partition `id` to the log's error.
fn io_error(id: &PartitionId, operation: &'static str) -> impl FnOnce(std::io::Error) -> LogError {
    let partition = id.clone();
    move |source| LogError::Io {
        partition,
        operation,
        source,
    }
}

/// What the scan of one segment found.
#[derive(Debug, Default)]
struct Scan {
    valid_bytes: u64,
    batches: u64,
    stopped_by: Option<String>,
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
    let (mut segments, bases) = open_closed_segments(&storage, dir, bases, interval, &id).await?;
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
        stopped_by = scan.stopped_by.as_deref().unwrap_or("end of segment"),
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
    };
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

/// Opens every segment but the last as a closed one. Where the log breaks off inside a
/// closed segment (a crash lost its unsynced tail after a later segment was created), that
/// segment becomes the last one and the later ones are removed. Returns the closed
/// segments and the bases that remain (the last is the active segment's).
async fn open_closed_segments<S: Storage>(
    storage: &S,
    dir: &Path,
    mut bases: Vec<i64>,
    interval: u32,
    id: &PartitionId,
) -> Result<(BTreeMap<i64, Segment<S>>, Vec<i64>), LogError> {
    let io = |operation| io_error(id, operation);
    let mut segments = BTreeMap::new();
    let mut index = 0;
    while index + 1 < bases.len() {
        let (base, next_base) = (bases[index], bases[index + 1]);
        let segment = open_closed(storage, dir, base, interval, id).await?;
        if segment.offset_next == next_base {
            segments.insert(base, segment);
            index += 1;
            continue;
        }
        tracing::warn!(
            partition = %id,
            segment = base,
            valid_until = segment.offset_next,
            next_segment = next_base,
            "log ends inside a closed segment; dropping the segments after it"
        );
        for &later in &bases[index + 1..] {
            remove_segment(storage, dir, later)
                .await
                .map_err(io("remove segment"))?;
        }
        storage.sync_dir(dir).await.map_err(io("fsync directory"))?;
        bases.truncate(index + 1);
    }
    Ok((segments, bases))
}

/// Opens a closed segment. Its index files say where its last indexed batch starts; the
/// scan from there to the end of the file finds where its valid bytes end (a few KiB for
/// a sealed segment). A segment a crash caught before its seal completed (preallocated
/// zeros, or an index from a checkpoint that covers only a prefix) is cut at its last
/// valid batch and sealed again. Without index files, the whole segment is scanned.
async fn open_closed<S: Storage>(
    storage: &S,
    dir: &Path,
    base: i64,
    interval: u32,
    id: &PartitionId,
) -> Result<Segment<S>, LogError> {
    let io = |operation| io_error(id, operation);
    let mut segment = Segment::open_read_only(storage, dir, base, interval)
        .await
        .map_err(io("open segment"))?;
    let mut start = 0;
    if let Some(mut index) = checkpoint::read_index_files(storage, dir, base, interval).await {
        let (offset, position) = index.lookup_offset(i64::MAX);
        if u64::from(position) <= segment.allocated_bytes {
            index.truncate_to(offset, position);
            segment.index = index;
            segment.offset_next = offset;
            start = u64::from(position);
        }
    } else {
        tracing::warn!(partition = %id, segment = base, "index files unusable; rebuilding");
    }
    let scan = scan_and_index(&mut segment, start, id).await?;
    if let crate::index::MaxTimestamp::Known { timestamp_ms, .. } =
        segment.index.time_index().max_timestamp()
    {
        segment.max_timestamp = segment.max_timestamp.max(timestamp_ms);
    }
    if scan.valid_bytes != segment.allocated_bytes || start == 0 {
        reseal(storage, dir, &mut segment)
            .await
            .map_err(io("seal segment"))?;
    }
    Ok(segment)
}

/// Cuts a closed segment at its valid bytes, fdatasyncs it and rewrites its index files.
async fn reseal<S: Storage>(
    storage: &S,
    dir: &Path,
    segment: &mut Segment<S>,
) -> std::io::Result<()> {
    let path = segment_path(dir, segment.base_offset, "log");
    let writer = storage
        .open(&path, crate::storage::OpenFlags::WRITE)
        .await?;
    writer.set_len(segment.size_bytes).await?;
    writer.sync_data().await?;
    segment.allocated_bytes = segment.size_bytes;
    checkpoint::write_segment_index(storage, dir, segment.base_offset, &segment.index).await
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
        if let Some(index) =
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
    let scan = scan_and_index(active, start, id).await?;
    let valid = scan.valid_bytes;
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
/// batch that fails validation or breaks offset contiguity.
async fn scan_and_index<S: Storage>(
    segment: &mut Segment<S>,
    start: u64,
    id: &PartitionId,
) -> Result<Scan, LogError> {
    let file_end = segment.allocated_bytes;
    let mut scan = Scan {
        valid_bytes: start,
        ..Scan::default()
    };
    // One buffer for the whole scan: the unconsumed tail of a chunk (a batch cut by the
    // chunk's end) stays at its front and the next read appends after it.
    let mut pending: Vec<u8> = Vec::with_capacity(RECOVERY_READ_CHUNK_BYTES);
    let mut read_at = start;
    loop {
        // Room for the batch at the front (however large) and at least half a chunk more.
        let need = pending_need(&pending).max(pending.len() + RECOVERY_READ_CHUNK_BYTES / 2);
        pending.reserve(need.saturating_sub(pending.len()));
        let (read, filled) = segment
            .reader
            .read_append(read_at, std::mem::take(&mut pending))
            .await;
        pending = filled;
        let read = read.map_err(|source| LogError::Io {
            partition: id.clone(),
            operation: "read segment",
            source,
        })?;
        read_at += read as u64;
        let at_end = read_at >= file_end || read == 0;
        let consumed = index_valid_prefix(segment, &pending, &mut scan, at_end);
        pending.drain(..consumed);
        if scan.stopped_by.is_some() || at_end {
            break;
        }
    }
    if scan.stopped_by.is_none() && !pending.is_empty() {
        scan.stopped_by = Some(format!("{} trailing bytes", pending.len()));
    }
    segment.size_bytes = scan.valid_bytes;
    Ok(scan)
}

/// Bytes needed to hold the batch `pending` starts with, if its length field is readable.
fn pending_need(pending: &[u8]) -> usize {
    pending
        .get(8..12)
        .and_then(|field| field.try_into().ok())
        .map(i32::from_be_bytes)
        .and_then(|length| usize::try_from(length).ok())
        .map_or(0, |length| (12 + length).min(BATCH_SIZE_BYTES_MAX))
}

/// Indexes the whole valid batches at the front of `bytes`; returns the bytes consumed.
/// Stops the scan (sets `stopped_by`) at an invalid batch, or at a truncated one if no more
/// bytes will come.
fn index_valid_prefix<S: Storage>(
    segment: &mut Segment<S>,
    bytes: &[u8],
    scan: &mut Scan,
    at_end: bool,
) -> usize {
    let prefix = batch::validate_prefix(bytes, BATCH_SIZE_BYTES_MAX);
    let mut at = 0usize;
    while at < prefix.valid.size_bytes {
        let Some(header) = BatchHeader::parse(&bytes[at..]) else {
            break;
        };
        if header.base_offset != segment.offset_next {
            scan.stopped_by = Some(format!(
                "batch at byte {} has offset {}, expected {}",
                scan.valid_bytes, header.base_offset, segment.offset_next
            ));
            return at;
        }
        segment.on_batch_written(&header, scan.valid_bytes);
        scan.valid_bytes += header.size_bytes;
        scan.batches += 1;
        at += header.size_bytes as usize;
    }
    match prefix.error {
        Some(batch::BatchError::Truncated { .. }) if !at_end => {}
        Some(error) => scan.stopped_by = Some(error.to_string()),
        None => {}
    }
    at
}
