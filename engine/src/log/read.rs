//! Reading a partition log: the file ranges a fetch sends (zero-copy), and the offset for
//! a timestamp. A direct-I/O log serves fetches from the shard's batch cache instead
//! (`log/cached_read.rs`), falling back to file ranges only when the cache is off.
//!
//! A fetch at `offset` finds the segment holding it, asks the sparse offset index where to
//! start, scans batch headers from there to the batch holding `offset`, and returns the
//! byte range from that batch on: up to `max_bytes`, but always the whole first batch (as
//! Kafka does, so a consumer can make progress past a batch larger than its limit), and
//! never past the high watermark (for a replicated log, the commit end: no byte of a batch
//! at or past it) or the segment's end. The last batch of a range may be cut short by
//! `max_bytes`; Kafka clients discard such a partial batch and fetch it again.
//!
//! Bytes nobody checked since the log was opened (what recovery trusted to its index files
//! and checkpoint, see `Segment::unverified`) are walked with the batch validator from the
//! index entry on before they are sent, once: a batch the disk damaged is never sent. The
//! fetch is answered up to the damage, or, if the offset asked for lies in or behind it
//! (before the next index entry), refused with [`LogError::Damaged`] (CORRUPT_MESSAGE),
//! naming the segment and byte, logged once per damaged batch.

use super::scan::{self, ScanStop};
use super::segment::{find_batch, scan_headers, segment_path, BatchHeader};
use super::{LogError, PartitionLog, Shared};
use crate::batch::{Compression, RecordBatch};
use crate::limits::FETCH_CHECK_READ_CHUNK_BYTES;
use crate::storage::{Storage, StorageFile};
use crate::topic::FlushPolicy;

/// A byte range of a segment file.
#[derive(Debug, Clone)]
pub struct FileRange<F> {
    pub file: F,
    pub position: u64,
    pub len: u64,
}

/// A piece of a fetch's record bytes.
#[derive(Debug, Clone)]
pub enum ReadRange<F> {
    /// Bytes of a segment file, to send from the file.
    File(FileRange<F>),
    /// Whole batches held by the batch cache, to send as they are.
    Memory(bytes::Bytes),
}

impl<F> ReadRange<F> {
    /// Bytes in the piece.
    pub fn len(&self) -> u64 {
        match self {
            ReadRange::File(range) => range.len,
            ReadRange::Memory(bytes) => bytes.len() as u64,
        }
    }

    /// Whether the piece has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answer to a fetch.
#[derive(Debug, Clone)]
pub struct FetchSlice<F> {
    /// The record bytes, in order (empty when the fetch is at the high watermark).
    pub ranges: Vec<ReadRange<F>>,
    pub high_watermark: i64,
    pub log_start: i64,
    pub log_end: i64,
}

impl<F> FetchSlice<F> {
    /// Bytes in all ranges.
    pub fn len_bytes(&self) -> u64 {
        self.ranges.iter().map(ReadRange::len).sum()
    }
}

/// A record found by timestamp (Kafka's ListOffsets): its offset, its timestamp, and the
/// leader epoch of its batch (`None` where the batch carries none, as the Java client
/// writes -1 on a single node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundOffset {
    pub offset: i64,
    pub timestamp: i64,
    pub leader_epoch: Option<i32>,
}

impl FoundOffset {
    /// The offset and timestamp.
    pub fn pair(&self) -> (i64, i64) {
        (self.offset, self.timestamp)
    }

    /// The record at or after `timestamp_ms` in the batch `bytes` (see
    /// `first_record_at_or_after`), with its batch's epoch.
    fn in_batch(bytes: &[u8], header: &BatchHeader, timestamp_ms: i64) -> FoundOffset {
        let (offset, timestamp) = first_record_at_or_after(bytes, header, timestamp_ms);
        FoundOffset {
            offset,
            timestamp,
            leader_epoch: (header.leader_epoch >= 0).then_some(header.leader_epoch),
        }
    }
}

/// Where the bytes of one segment that a read may see end.
pub(super) struct ReadTarget<F> {
    pub(super) base_offset: i64,
    pub(super) reader: F,
    /// The segment's O_DIRECT descriptor, if it has one open.
    pub(super) direct_reader: Option<F>,
    /// An index position at or before the batch wanted, and the base offset of the batch
    /// there.
    pub(super) start: u64,
    pub(super) start_offset: i64,
    pub(super) end: u64,
    /// The offset after the segment's last batch (for a closed segment, the next one's
    /// base).
    pub(super) offset_end: i64,
    pub(super) is_active: bool,
    /// Whether bytes between `start` and `end` are unchecked (see the module doc).
    pub(super) unchecked: bool,
}

/// The segment holding `offset`, where to start scanning it, and where its visible bytes
/// end: the segment's size, but no further than the high watermark's position in the active
/// segment of a `flush = always` topic, nor, in a replicated log, than the batch at the
/// commit end (`log/commit.rs`).
pub(super) fn read_target<S: Storage>(
    shared: &Shared<S>,
    offset: i64,
) -> Option<ReadTarget<S::File>> {
    let state = shared.state.borrow();
    let (_, segment) = state.segments.range(..=offset).next_back()?;
    let (start_offset, start) = segment.index.lookup_offset(offset);
    let start = u64::from(start);
    let is_active = state.segments.keys().next_back() == Some(&segment.base_offset);
    let mut end = segment.size_bytes;
    if is_active && state.config.flush() == FlushPolicy::Always {
        end = end.min(state.durable_position.unwrap_or(end));
    }
    if let Some(commit) = &state.commit {
        end = end.min(commit.visible_end(segment));
    }
    Some(ReadTarget {
        base_offset: segment.base_offset,
        reader: segment.reader.clone(),
        direct_reader: segment.direct_reader.clone(),
        start,
        start_offset,
        end,
        offset_end: segment.offset_next,
        is_active,
        unchecked: segment.unverified.overlaps(&(start..end)),
    })
}

impl<S: Storage> PartitionLog<S> {
    /// The batches from the one holding `offset`, up to `max_bytes` (see the module doc).
    pub async fn read(&self, offset: i64, max_bytes: u64) -> Result<FetchSlice<S::File>, LogError> {
        let offsets = self.offsets();
        let mut slice = FetchSlice {
            ranges: Vec::new(),
            high_watermark: offsets.high_watermark,
            log_start: offsets.log_start,
            log_end: offsets.log_end,
        };
        if offset < offsets.log_start || offset > offsets.high_watermark {
            return Err(LogError::OffsetOutOfRange {
                partition: self.id().clone(),
                offset,
                log_start: offsets.log_start,
                high_watermark: offsets.high_watermark,
            });
        }
        if offset == offsets.high_watermark {
            return Ok(slice);
        }
        if let Some(pieces) = self.read_cached(offset, max_bytes).await? {
            slice.ranges = pieces.into_iter().map(ReadRange::Memory).collect();
            return Ok(slice);
        }
        let Some(target) = read_target(&self.shared, offset) else {
            return Ok(slice);
        };
        let found = if target.unchecked {
            check_and_find(&self.shared, &target, offset, max_bytes).await?
        } else {
            find_batch(&target.reader, target.start, target.end, offset)
                .await
                .map_err(|e| self.shared.error_io("read segment", e))?
                .map(|(header, position)| (header, position, target.end))
        };
        match found {
            Some((header, position, valid_end)) => {
                let len = max_bytes.max(header.size_bytes).min(valid_end - position);
                slice.ranges.push(ReadRange::File(FileRange {
                    file: target.reader,
                    position,
                    len,
                }));
            }
            // A closed segment holds every offset below the next one's base: if its bytes
            // end before the offset, they were lost.
            None if !target.is_active && offset < target.offset_end => {
                let stop = ScanStop::EndOfFile;
                return Err(damaged(&self.shared, &target, offset, target.end, stop));
            }
            None => {}
        }
        Ok(slice)
    }

    /// Reads the ranges of a fetch into memory (tools, tests; the broker sends them
    /// zero-copy instead).
    pub async fn read_bytes(&self, offset: i64, max_bytes: u64) -> Result<Vec<u8>, LogError> {
        let slice = self.read(offset, max_bytes).await?;
        let mut out = Vec::new();
        for range in slice.ranges {
            let range = match range {
                ReadRange::File(range) => range,
                ReadRange::Memory(bytes) => {
                    out.extend_from_slice(&bytes);
                    continue;
                }
            };
            let len = usize::try_from(range.len).unwrap_or(usize::MAX);
            let bytes = range.file.read_at(range.position, len).await;
            out.extend_from_slice(&bytes.map_err(|e| self.shared.error_io("read segment", e))?);
        }
        Ok(out)
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, with that
    /// timestamp; `None` if every record is older (Kafka's ListOffsets by timestamp).
    pub async fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<FoundOffset>, LogError> {
        let hw = self.offsets().high_watermark;
        let candidates: Vec<(S::File, u64, u64)> = {
            let state = self.shared.state.borrow();
            state
                .segments
                .values()
                .filter(|segment| segment.max_timestamp >= timestamp_ms)
                .map(|segment| {
                    let start = segment
                        .index
                        .lookup_timestamp(timestamp_ms)
                        .map_or(0, |(_, p)| p);
                    (segment.reader.clone(), u64::from(start), segment.size_bytes)
                })
                .collect()
        };
        for (reader, start, end) in candidates {
            let mut found: Option<(BatchHeader, u64)> = None;
            scan_headers(&reader, start, end, |header, position| {
                if header.base_offset >= hw {
                    return false;
                }
                if header.max_timestamp >= timestamp_ms {
                    found = Some((*header, position));
                    return false;
                }
                true
            })
            .await
            .map_err(|e| self.shared.error_io("read segment", e))?;
            if let Some((header, position)) = found {
                let bytes = reader.read_at(position, header.size_bytes as usize).await;
                let bytes = bytes.map_err(|e| self.shared.error_io("read segment", e))?;
                return Ok(Some(FoundOffset::in_batch(&bytes, &header, timestamp_ms)));
            }
        }
        Ok(None)
    }
}

/// Finds the batch holding `offset` by walking the batches of `target` from its index
/// entry with the batch validator, and goes on through the batches a fetch of `max_bytes`
/// sends: the header and position of that batch and the end of the valid bytes walked,
/// or `None` if the segment's visible bytes end first. What was walked is checked from
/// then on; damage before the batch holding `offset` refuses the read.
pub(super) async fn check_and_find<S: Storage>(
    shared: &Shared<S>,
    target: &ReadTarget<S::File>,
    offset: i64,
    max_bytes: u64,
) -> Result<Option<(BatchHeader, u64, u64)>, LogError> {
    let mut found: Option<(BatchHeader, u64)> = None;
    let span = (target.start, target.end);
    let walk = scan::walk(
        &target.reader,
        span,
        target.start_offset,
        FETCH_CHECK_READ_CHUNK_BYTES,
        |header, position| {
            if found.is_none() && header.last_offset >= offset {
                found = Some((*header, position));
            }
            found.is_none_or(|(first, at)| {
                position + header.size_bytes < at + max_bytes.max(first.size_bytes)
            })
        },
    )
    .await
    .map_err(|e| shared.error_io("read segment", e))?;
    if let Some(segment) = shared
        .state
        .borrow_mut()
        .segments
        .get_mut(&target.base_offset)
    {
        segment.unverified.remove(target.start..walk.valid_end);
    }
    let damage = walk.stop.filter(|stop| *stop != ScanStop::EndOfFile);
    match (found, damage) {
        (Some((header, position)), damage) => {
            if let Some(stop) = damage {
                // Served up to it; logged now, refused when a fetch reaches it.
                let _ = damaged(shared, target, walk.offset_next, walk.valid_end, stop);
            }
            Ok(Some((header, position, walk.valid_end)))
        }
        (None, Some(stop)) => Err(damaged(shared, target, offset, walk.valid_end, stop)),
        (None, None) => Ok(None),
    }
}

/// The error of a read of `offset` that found the segment of `target` damaged at byte
/// `position`; the first time that batch is found damaged, it is logged.
pub(super) fn damaged<S: Storage>(
    shared: &Shared<S>,
    target: &ReadTarget<S::File>,
    offset: i64,
    position: u64,
    stop: ScanStop,
) -> LogError {
    let mut state = shared.state.borrow_mut();
    let first_time = state
        .segments
        .get_mut(&target.base_offset)
        .is_some_and(|segment| {
            let new = !segment.damage_logged.contains(&position);
            if new {
                segment.damage_logged.push(position);
            }
            new
        });
    if first_time {
        tracing::error!(
            partition = %shared.id,
            segment = %segment_path(&shared.dir, target.base_offset, "log").display(),
            position,
            offset,
            stopped_by = %stop,
            "segment damaged: its batches from this byte fail their checks and are not \
             served; fetches of their offsets answer CORRUPT_MESSAGE"
        );
    }
    LogError::Damaged {
        partition: shared.id.clone(),
        segment: target.base_offset,
        offset,
        source: stop,
    }
}

impl<S: Storage> PartitionLog<S> {
    /// The record with the largest timestamp below the high watermark, with its offset,
    /// timestamp and batch epoch; the first such record if several share it; `None` for an
    /// empty log (Kafka's ListOffsets MAX_TIMESTAMP). For a compressed batch, its first
    /// offset.
    ///
    /// A segment's `max_timestamp` counts every batch written to it, and in a replicated
    /// log batches above the commit end (the high watermark) are written but not committed:
    /// the segment holding the high watermark may owe its maximum to one of those. Segments
    /// wholly below the high watermark are judged by their maximum; the one holding it is
    /// scanned over its committed batches, when its maximum could beat theirs.
    pub async fn max_timestamp_offset(&self) -> Result<Option<FoundOffset>, LogError> {
        let hw = self.offsets().high_watermark;
        let (whole, straddling) = {
            let state = self.shared.state.borrow();
            let mut whole: Option<(i64, S::File, u64, u64)> = None;
            let mut straddling = None;
            for segment in state.segments.values() {
                if segment.max_timestamp == i64::MIN || segment.base_offset >= hw {
                    continue;
                }
                if segment.offset_next > hw {
                    straddling = Some((
                        segment.max_timestamp,
                        segment.reader.clone(),
                        segment.size_bytes,
                    ));
                    continue;
                }
                if whole
                    .as_ref()
                    .is_none_or(|(ts, ..)| segment.max_timestamp > *ts)
                {
                    let (_, start) = segment
                        .index
                        .lookup_timestamp(segment.max_timestamp)
                        .unwrap_or((0, 0));
                    let reader = segment.reader.clone();
                    whole = Some((
                        segment.max_timestamp,
                        reader,
                        u64::from(start),
                        segment.size_bytes,
                    ));
                }
            }
            (whole, straddling)
        };
        let mut found: Option<(BatchHeader, u64, S::File)> = None;
        if let Some((max_timestamp, reader, start, end)) = whole {
            let mut hit = None;
            scan_headers(&reader, start, end, |header, position| {
                if header.max_timestamp == max_timestamp && header.base_offset < hw {
                    hit = Some((*header, position));
                    return false;
                }
                true
            })
            .await
            .map_err(|e| self.shared.error_io("read segment", e))?;
            found = hit.map(|(header, position)| (header, position, reader));
        }
        if let Some((segment_max, reader, end)) = straddling {
            let best = found.as_ref().map(|(header, ..)| header.max_timestamp);
            if best.is_none_or(|best| segment_max > best) {
                let mut hit: Option<(BatchHeader, u64)> = None;
                scan_headers(&reader, 0, end, |header, position| {
                    if header.base_offset >= hw {
                        return false;
                    }
                    let top = hit.map_or(best, |(top, _)| Some(top.max_timestamp));
                    if top.is_none_or(|top| header.max_timestamp > top) {
                        hit = Some((*header, position));
                    }
                    true
                })
                .await
                .map_err(|e| self.shared.error_io("read segment", e))?;
                if let Some((header, position)) = hit {
                    found = Some((header, position, reader));
                }
            }
        }
        let Some((header, position, reader)) = found else {
            return Ok(None);
        };
        let bytes = reader.read_at(position, header.size_bytes as usize).await;
        let bytes = bytes.map_err(|e| self.shared.error_io("read segment", e))?;
        Ok(Some(FoundOffset::in_batch(
            &bytes,
            &header,
            header.max_timestamp,
        )))
    }
}

/// Within a batch whose max timestamp is at or after `timestamp_ms`, the first record that
/// is; for compressed batches (not decompressed here) the batch's first offset and max.
fn first_record_at_or_after(bytes: &[u8], header: &BatchHeader, timestamp_ms: i64) -> (i64, i64) {
    let fallback = (header.base_offset, header.max_timestamp);
    let Ok((batch, _)) = RecordBatch::parse(bytes) else {
        return fallback;
    };
    if batch.compression() != Compression::None
        || batch.timestamp_type() == crate::batch::TimestampType::LogAppendTime
    {
        return fallback;
    }
    let Ok(records) = batch.records() else {
        return fallback;
    };
    for record in records.flatten() {
        let timestamp = batch.base_timestamp() + record.timestamp_delta;
        if timestamp >= timestamp_ms {
            return (
                batch.base_offset() + i64::from(record.offset_delta),
                timestamp,
            );
        }
    }
    fallback
}
