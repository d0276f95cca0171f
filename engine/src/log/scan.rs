//! Walking a segment's batches with the one batch validator (`batch/validate.rs`: length,
//! magic, CRC, codec, record count) plus offset contiguity. Recovery walks what follows
//! its checkpoint (`recovery.rs`); a fetch walks the bytes no one has checked since the log
//! was opened before it sends them (`read.rs`), so a batch damaged on disk is never served.
//! Why a walk stopped is a [`ScanStop`].
//!
//! Which bytes of a segment are checked is kept per segment as [`Unverified`] ranges: what
//! recovery trusted without reading (the prefix its index files or the checkpoint vouch
//! for) until a fetch walks it, and what a walk found damaged, for good.

use std::fmt;
use std::ops::Range;

use super::segment::BatchHeader;
use crate::batch::{self, BatchError};
use crate::index::IndexError;
use crate::limits::BATCH_SIZE_BYTES_MAX;
use crate::storage::StorageFile;

/// Why the walk of a segment stopped where it did. Positions are byte positions in the
/// segment file; everything before them is whole, valid batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Whole valid batches up to the end of the bytes walked.
    EndOfFile,
    /// Zeros where the next batch would start: bytes preallocated (or, in direct mode,
    /// padding) past the last write. The usual end of an active segment after a crash.
    Zeros { position: u64 },
    /// The bytes at `position` are not a valid batch: a torn write, a batch cut short by
    /// the end of the file, or damage.
    Invalid { position: u64, error: BatchError },
    /// A valid batch at `position` whose base offset is not the one that follows the batch
    /// before it.
    OffsetGap {
        position: u64,
        offset: i64,
        expected: i64,
    },
    /// A valid batch at `position` that the segment's index cannot address (its offsets or
    /// bytes reach past what one segment holds): the appender rolls the segment before it
    /// would write one, so it is damage. Only recovery, which indexes, stops here.
    Unindexable { position: u64, error: IndexError },
}

impl ScanStop {
    /// Whether the stop means damage rather than the end of what was written.
    pub fn is_damage(&self) -> bool {
        match self {
            ScanStop::EndOfFile | ScanStop::Zeros { .. } => false,
            ScanStop::Invalid { error, .. } => !matches!(error, BatchError::Truncated { .. }),
            ScanStop::OffsetGap { .. } | ScanStop::Unindexable { .. } => true,
        }
    }
}

impl fmt::Display for ScanStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanStop::EndOfFile => f.write_str("end of file"),
            ScanStop::Zeros { position } => write!(f, "zeros from byte {position}"),
            ScanStop::Invalid { position, error } => {
                write!(f, "invalid batch at byte {position}: {error}")
            }
            ScanStop::OffsetGap {
                position,
                offset,
                expected,
            } => write!(
                f,
                "batch at byte {position} has offset {offset}, expected {expected}"
            ),
            ScanStop::Unindexable { position, error } => {
                write!(f, "batch at byte {position} cannot be indexed: {error}")
            }
        }
    }
}

impl std::error::Error for ScanStop {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScanStop::Invalid { error, .. } => Some(error),
            ScanStop::Unindexable { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Where a walk ended.
#[derive(Debug)]
pub(crate) struct Walk {
    /// The end of the last whole valid batch walked.
    pub(crate) valid_end: u64,
    /// The offset after that batch.
    pub(crate) offset_next: i64,
    pub(crate) batches: u64,
    /// Why the walk stopped; `None` if the visitor stopped it.
    pub(crate) stop: Option<ScanStop>,
}

/// Walks the batches of `reader` from `start` (a batch boundary where the batch with base
/// offset `offset` begins) up to `end`, reading `chunk_bytes` at a time (more for a larger
/// batch), and calls `visit` with each whole valid batch and its position until it returns
/// false, the bytes end, or a batch fails validation or breaks offset contiguity.
pub(crate) async fn walk<F: StorageFile>(
    reader: &F,
    (start, end): (u64, u64),
    offset: i64,
    chunk_bytes: usize,
    mut visit: impl FnMut(&BatchHeader, u64) -> bool,
) -> std::io::Result<Walk> {
    let mut walk = Walk {
        valid_end: start,
        offset_next: offset,
        batches: 0,
        stop: None,
    };
    // One buffer for the whole walk: the unconsumed tail of a chunk (a batch cut by the
    // chunk's end) stays at its front and the next read appends after it.
    let mut pending: Vec<u8> = Vec::with_capacity(chunk_bytes);
    let mut read_at = start;
    loop {
        // Room for the batch at the front (however large) and at least half a chunk more.
        let need = pending_need(&pending).max(pending.len() + chunk_bytes / 2);
        pending.reserve(need.saturating_sub(pending.len()));
        let (read, filled) = reader
            .read_append(read_at, std::mem::take(&mut pending))
            .await;
        pending = filled;
        let mut read = read? as u64;
        if read_at + read > end {
            // Bytes past `end` (preallocated, or not yet durable) are not judged.
            let past = read_at + read - end;
            pending.truncate(pending.len() - past as usize);
            read -= past;
        }
        read_at += read;
        let at_end = read_at >= end || read == 0;
        let (consumed, step) = walk_prefix(&pending, &mut walk, at_end, &mut visit);
        pending.drain(..consumed);
        match step {
            Step::Continue if !at_end => {}
            Step::Continue => {
                // The validator consumes every byte or names the batch it stopped at.
                assert!(
                    pending.is_empty(),
                    "a walk ended with bytes it did not judge"
                );
                walk.stop = Some(ScanStop::EndOfFile);
                return Ok(walk);
            }
            Step::Stop(stop) => {
                walk.stop = Some(stop);
                return Ok(walk);
            }
            Step::Visited => return Ok(walk),
        }
    }
}

/// Walks the whole valid batches at the front of `bytes`, which lie at byte `position` of a
/// segment where the batch with base offset `offset` begins, as [`walk`] does but without
/// reading: `stop` is `None` if the bytes end at or inside a batch (more bytes may complete
/// it) or the visitor stopped the walk.
pub(crate) fn walk_bytes(
    bytes: &[u8],
    position: u64,
    offset: i64,
    mut visit: impl FnMut(&BatchHeader, u64) -> bool,
) -> Walk {
    let mut walk = Walk {
        valid_end: position,
        offset_next: offset,
        batches: 0,
        stop: None,
    };
    if let (_, Step::Stop(stop)) = walk_prefix(bytes, &mut walk, false, &mut visit) {
        walk.stop = Some(stop);
    }
    walk
}

/// Bytes needed to hold the batch `pending` starts with, if its length field is readable.
pub(crate) fn pending_need(pending: &[u8]) -> usize {
    batch::declared_size_bytes(pending).map_or(0, |size| size.min(BATCH_SIZE_BYTES_MAX))
}

/// What a walk does after the bytes at hand.
enum Step {
    /// Read more: every whole batch was valid and visited.
    Continue,
    /// Stop there, for this reason.
    Stop(ScanStop),
    /// The visitor asked to stop.
    Visited,
}

/// Visits the whole valid batches at the front of `bytes`; returns the bytes consumed and
/// what to do next: stop at an invalid batch, a break in offsets, or a truncated batch if
/// no more bytes will come (`at_end`).
fn walk_prefix(
    bytes: &[u8],
    walk: &mut Walk,
    at_end: bool,
    visit: &mut impl FnMut(&BatchHeader, u64) -> bool,
) -> (usize, Step) {
    let prefix = batch::validate_prefix(bytes, BATCH_SIZE_BYTES_MAX);
    let mut at = 0usize;
    while at < prefix.valid.size_bytes {
        let Some(header) = BatchHeader::parse(&bytes[at..]) else {
            unreachable!("a batch the validator accepted has a whole header");
        };
        if header.base_offset != walk.offset_next {
            let stop = ScanStop::OffsetGap {
                position: walk.valid_end,
                offset: header.base_offset,
                expected: walk.offset_next,
            };
            return (at, Step::Stop(stop));
        }
        let position = walk.valid_end;
        walk.valid_end += header.size_bytes;
        walk.offset_next = header.last_offset + 1;
        walk.batches += 1;
        at += header.size_bytes as usize;
        if !visit(&header, position) {
            return (at, Step::Visited);
        }
    }
    assert_eq!(
        at, prefix.valid.size_bytes,
        "walked exactly the valid prefix"
    );
    let position = walk.valid_end;
    let rest = &bytes[at..];
    let step = match prefix.error {
        None => Step::Continue,
        Some(BatchError::Truncated { .. }) if !at_end => Step::Continue,
        // Zeros are judged on a header's worth of bytes, so that where a read chunk ended
        // cannot make damage behind a few zeros pass for preallocated space.
        Some(_) if !at_end && rest.len() < batch::HEADER_SIZE_BYTES && is_zeros(rest) => {
            Step::Continue
        }
        Some(_) if is_zeros(rest) => Step::Stop(ScanStop::Zeros { position }),
        Some(error) => Step::Stop(ScanStop::Invalid { position, error }),
    };
    (at, step)
}

/// Whether `rest` starts with a header's worth of zeros (or is all zeros, if shorter): no
/// batch does, since its length and magic are never zero.
fn is_zeros(rest: &[u8]) -> bool {
    !rest.is_empty()
        && rest
            .iter()
            .take(batch::HEADER_SIZE_BYTES)
            .all(|&byte| byte == 0)
}

/// Byte ranges of a segment file that no walk has checked since the log was opened:
/// sorted, disjoint, not adjacent. Bytes a walk found damaged stay in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Unverified(Vec<Range<u64>>);

impl Unverified {
    /// Adds `range`, merging what it touches.
    pub(crate) fn add(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut merged = range;
        let mut kept = Vec::with_capacity(self.0.len() + 1);
        for old in self.0.drain(..) {
            if old.end < merged.start || merged.end < old.start {
                kept.push(old);
            } else {
                merged = merged.start.min(old.start)..merged.end.max(old.end);
            }
        }
        let at = kept.partition_point(|old| old.start < merged.start);
        kept.insert(at, merged);
        self.0 = kept;
    }

    /// Removes `range`: a walk checked it.
    pub(crate) fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(self.0.len() + 1);
        for old in self.0.drain(..) {
            if old.end <= range.start || range.end <= old.start {
                kept.push(old);
                continue;
            }
            if old.start < range.start {
                kept.push(old.start..range.start);
            }
            if range.end < old.end {
                kept.push(range.end..old.end);
            }
        }
        self.0 = kept;
    }

    /// Forgets what lies at or past `len` (the file was cut there).
    pub(crate) fn truncate(&mut self, len: u64) {
        for range in &mut self.0 {
            range.end = range.end.min(len);
        }
        self.0.retain(|range| !range.is_empty());
    }

    /// Whether any byte of `range` is unchecked.
    pub(crate) fn overlaps(&self, range: &Range<u64>) -> bool {
        self.0
            .iter()
            .any(|old| old.start < range.end && range.start < old.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_ranges_merge_split_and_truncate() {
        let mut unverified = Unverified::default();
        unverified.add(0..100);
        unverified.add(200..300);
        unverified.add(100..150);
        assert_eq!(unverified.0, [0..150, 200..300]);
        assert!(unverified.overlaps(&(149..160)));
        assert!(!unverified.overlaps(&(150..200)));
        unverified.remove(50..250);
        assert_eq!(unverified.0, [0..50, 250..300]);
        unverified.remove(0..10);
        assert_eq!(unverified.0, [10..50, 250..300]);
        unverified.truncate(260);
        assert_eq!(unverified.0, [10..50, 250..260]);
        unverified.truncate(20);
        assert_eq!(unverified.0, vec![10..20; 1]);
        unverified.remove(0..1000);
        assert!(!unverified.overlaps(&(0..u64::MAX)));
    }
}
