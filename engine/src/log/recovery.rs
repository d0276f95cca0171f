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
    let direct = config.io_mode() == IoMode::Direct;
    let interval = config.index_interval_bytes();

    let mut segments = BTreeMap::new();
    let active_base = bases
        .last()
        .copied()
        .unwrap_or(checkpoint.map_or(0, |c| c.log_start));
    for (index, &base) in bases.iter().enumerate() {
        if Some(&base) == bases.last() {
            break;
        }
        let next_base = bases[index + 1];
        let segment = open_closed(&storage, dir, base, next_base, interval, &id).await?;
        segments.insert(base, segment);
    }
    let created = bases.is_empty();
    let mut active = Segment::open(&storage, dir, active_base, direct, interval)
        .await
        .map_err(io("open active segment"))?;
    if created {
        storage.sync_dir(dir).await.map_err(io("fsync directory"))?;
    }
    let scan = recover_active(&storage, dir, &mut active, checkpoint, &id).await?;
    let log_end = active.offset_next;
    let log_start = checkpoint
        .map_or(
            segments.keys().next().copied().unwrap_or(active_base),
            |c| c.log_start,
        )
        .clamp(
            segments.keys().next().copied().unwrap_or(active_base),
            log_end,
        );
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
    };
    Ok(Shared {
        id,
        dir: dir.to_path_buf(),
        storage,
        state: RefCell::new(state),
        version: Cell::new(0),
        waiters: RefCell::new(Vec::new()),
    })
}

/// Opens a closed segment, with its index files or, if they are unusable, a rebuild.
async fn open_closed<S: Storage>(
    storage: &S,
    dir: &Path,
    base: i64,
    next_base: i64,
    interval: u32,
    id: &PartitionId,
) -> Result<Segment<S>, LogError> {
    let io = |operation| io_error(id, operation);
    let mut segment = Segment::open_read_only(storage, dir, base, interval)
        .await
        .map_err(io("open segment"))?;
    segment.size_bytes = segment.allocated_bytes;
    segment.offset_next = next_base;
    if let Some(index) = checkpoint::read_index_files(storage, dir, base, interval).await {
        segment.index = index;
        segment.max_timestamp = match segment.index.time_index().max_timestamp() {
            crate::index::MaxTimestamp::Known { timestamp_ms, .. } => timestamp_ms,
            _ => i64::MIN,
        };
        return Ok(segment);
    }
    tracing::warn!(partition = %id, segment = base, "index files unusable; rebuilding");
    let scan = scan_and_index(&mut segment, 0, id).await?;
    if scan.valid_bytes != segment.size_bytes {
        return Err(LogError::Corrupt {
            partition: id.clone(),
            detail: format!(
                "closed segment {base} is damaged at byte {} ({})",
                scan.valid_bytes,
                scan.stopped_by.unwrap_or_default()
            ),
        });
    }
    Ok(segment)
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
    if active.allocated_bytes != valid {
        active
            .writer
            .set_len(valid)
            .await
            .map_err(io("truncate active segment"))?;
        active
            .writer
            .sync_data()
            .await
            .map_err(io("fdatasync active segment"))?;
        active.allocated_bytes = valid;
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
    let _ = segment_path;
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
    let mut pending: Vec<u8> = Vec::new();
    let mut read_at = start;
    loop {
        let want = RECOVERY_READ_CHUNK_BYTES.max(pending_need(&pending));
        let chunk = segment
            .reader
            .read_at(read_at, want.min((file_end - read_at) as usize))
            .await
            .map_err(|source| LogError::Io {
                partition: id.clone(),
                operation: "read segment",
                source,
            })?;
        read_at += chunk.len() as u64;
        let at_end = read_at >= file_end || chunk.is_empty();
        pending.extend_from_slice(&chunk);
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
