//! The sparse indexes of one segment, in memory, and their on-disk encoding (no I/O here).
//!
//! A segment `{base_offset:020}.log` holds record batches back to back. Its offset index
//! ([`OffsetIndex`], `.index`) maps an offset to the byte position to start reading at; its
//! time index ([`TimeIndex`], `.timeindex`) maps a timestamp to the offset to start scanning
//! at. Both are sparse — an entry every `index_interval_bytes` of log — and binary-searched;
//! the precise answer comes from scanning batch headers forward from where they point.
//! [`SegmentIndex`] keeps the two in step: the segment appender feeds it each batch it
//! writes, and recovery rebuilds it from a scan of the log when the files are missing or
//! damaged (any [`IndexError`] from a decode).
//!
//! Invariants: batches are fed in strictly increasing offset and position order, each
//! within the index's reach (a relative offset within `u32::MAX`, an end within 2^32
//! bytes); every time index entry's offset is an offset index entry's; neither index holds
//! more than `INDEX_ENTRIES_PER_SEGMENT_MAX` entries. Decoding checks all of these.
//!
//! The byte tables are in `index/codec.rs` (the shared header prefix), `index/offset.rs`
//! and `index/time.rs`.

mod codec;
mod error;
mod offset;
mod time;

#[cfg(test)]
mod tests;

pub use codec::FORMAT_VERSION;
pub use error::{IndexError, IndexKind};
pub use offset::{
    OffsetEntry, OffsetIndex, OFFSET_INDEX_ENTRY_SIZE_BYTES, OFFSET_INDEX_HEADER_SIZE_BYTES,
    SEGMENT_BASE_OFFSET_MAX,
};
pub use time::{
    MaxTimestamp, TimeEntry, TimeIndex, TIME_INDEX_ENTRY_SIZE_BYTES, TIME_INDEX_HEADER_SIZE_BYTES,
};

pub use crate::limits::INDEX_ENTRIES_PER_SEGMENT_MAX;

/// What the indexes need to know of one batch in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchMeta {
    pub base_offset: i64,
    /// `base_offset + lastOffsetDelta`.
    pub last_offset: i64,
    /// The batch header's maxTimestamp.
    pub max_timestamp_ms: i64,
    /// Byte position of the batch in the segment's log.
    pub position: u32,
    /// The whole batch, `LOG_OVERHEAD_BYTES + batchLength`.
    pub size_bytes: u32,
}

/// The offset and time indexes of one segment, kept in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    offsets: OffsetIndex,
    times: TimeIndex,
    /// Where the next batch may start. Exact after an append or a truncation; after a decode
    /// only what the entries imply.
    offset_next_min: i64,
    position_next_min: u64,
}

impl SegmentIndex {
    /// Empty indexes of the segment whose first offset is `base_offset`, which is within
    /// `0..=SEGMENT_BASE_OFFSET_MAX`.
    pub fn new(base_offset: i64, index_interval_bytes: u32) -> Self {
        SegmentIndex {
            offsets: OffsetIndex::new(base_offset, index_interval_bytes),
            times: TimeIndex::new(base_offset),
            offset_next_min: base_offset,
            position_next_min: 0,
        }
    }

    /// Reads both index files of the segment based at `base_offset` and checks that they
    /// agree; any error means the files are damaged and the indexes are rebuilt from the log.
    pub fn decode(
        base_offset: i64,
        index_interval_bytes: u32,
        offset_index_bytes: &[u8],
        time_index_bytes: &[u8],
    ) -> Result<Self, IndexError> {
        let offsets = OffsetIndex::decode(base_offset, index_interval_bytes, offset_index_bytes)?;
        let times = TimeIndex::decode(base_offset, time_index_bytes)?;
        check_agreement(&offsets, &times)?;
        let after_entry = |offset: i64| offset + 1;
        let offset_next_min = [
            offsets
                .entries()
                .last()
                .map(|e| after_entry(e.offset(base_offset))),
            times
                .entries()
                .last()
                .map(|e| after_entry(e.offset(base_offset))),
            match times.max_timestamp() {
                MaxTimestamp::Known { offset, .. } => Some(after_entry(offset)),
                MaxTimestamp::NoBatch | MaxTimestamp::Unknown => None,
            },
        ]
        .into_iter()
        .flatten()
        .fold(base_offset, i64::max);
        let position_next_min = offsets
            .entries()
            .last()
            .map_or(0, |e| u64::from(e.position) + 1);
        Ok(SegmentIndex {
            offsets,
            times,
            offset_next_min,
            position_next_min,
        })
    }

    pub fn base_offset(&self) -> i64 {
        self.offsets.base_offset()
    }

    /// Whether the segment's seal wrote these indexes (see [`OffsetIndex::mark_sealed`]).
    pub fn is_sealed(&self) -> bool {
        self.offsets.is_sealed()
    }

    /// Marks the indexes as the seal of their segment writes them.
    pub fn mark_sealed(&mut self) {
        self.offsets.mark_sealed();
    }

    pub fn offset_index(&self) -> &OffsetIndex {
        &self.offsets
    }

    pub fn time_index(&self) -> &TimeIndex {
        &self.times
    }

    /// The smallest offset the next batch may have: the log end offset after appends and
    /// truncations, a lower bound of it after a decode.
    pub fn offset_next_min(&self) -> i64 {
        self.offset_next_min
    }

    /// The smallest position the next batch may start at (as [`Self::offset_next_min`]).
    pub fn position_next_min(&self) -> u64 {
        self.position_next_min
    }

    /// Whether the offset index is full: later batches get no entries, so the segment
    /// should roll.
    pub fn is_full(&self) -> bool {
        self.offsets.is_full()
    }

    /// Checks that `batch` can be appended next: it is well formed, follows the previous
    /// batch in offsets and bytes, and lies within the index's reach. An appender calls this
    /// before writing, and rolls the segment on [`IndexError::SegmentRangeExceeded`].
    pub fn check_batch(&self, batch: &BatchMeta) -> Result<(), IndexError> {
        let BatchMeta {
            base_offset,
            last_offset,
            position,
            size_bytes,
            ..
        } = *batch;
        if last_offset < base_offset || size_bytes == 0 {
            return Err(IndexError::InvalidBatch {
                base_offset,
                last_offset,
                size_bytes,
            });
        }
        if base_offset < self.offset_next_min || u64::from(position) < self.position_next_min {
            return Err(IndexError::BatchOutOfOrder {
                base_offset,
                position,
                offset_next_min: self.offset_next_min,
                position_next_min: self.position_next_min,
            });
        }
        let position_end = u64::from(position) + u64::from(size_bytes);
        // No overflow: base_offset() is at most SEGMENT_BASE_OFFSET_MAX.
        let last_offset_max = self.base_offset() + i64::from(u32::MAX);
        if last_offset > last_offset_max || position_end > 1 << 32 {
            let base_offset = self.base_offset();
            return Err(IndexError::SegmentRangeExceeded {
                base_offset,
                last_offset,
                position_end,
            });
        }
        Ok(())
    }

    /// Records a batch just written to the segment's log. Panics if
    /// [`SegmentIndex::check_batch`] would refuse it: the appender checks before writing.
    pub fn on_batch_appended(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        max_timestamp_ms: i64,
        position: u32,
        size_bytes: u32,
    ) {
        let batch = BatchMeta {
            base_offset,
            last_offset,
            max_timestamp_ms,
            position,
            size_bytes,
        };
        if let Err(error) = self.check_batch(&batch) {
            panic!("bug: appended a batch the index refuses: {error}");
        }
        self.append_checked(&batch);
    }

    /// Replaces both indexes with ones built from `batches`, a scan of the whole log in
    /// order. On an error the indexes cover the batches before the one named in it, which is
    /// where the log is damaged.
    pub fn rebuild_from(
        &mut self,
        batches: impl IntoIterator<Item = BatchMeta>,
    ) -> Result<(), IndexError> {
        *self = SegmentIndex::new(self.base_offset(), self.offsets.index_interval_bytes());
        for batch in batches {
            self.check_batch(&batch)?;
            self.append_checked(&batch);
        }
        Ok(())
    }

    /// Forgets every batch at `offset` or later, as when the log is truncated to its first
    /// `position` bytes, `position` being where the batch with `offset` began (or the end).
    ///
    /// Panics if an entry below `offset` lies at or past `position`: the two do not
    /// describe the same cut.
    pub fn truncate_to(&mut self, offset: i64, position: u32) {
        self.offsets.truncate_to(offset);
        let entries_before = self.offsets.len();
        self.offsets.truncate_to_position(position);
        assert_eq!(
            self.offsets.len(),
            entries_before,
            "truncation to offset {offset} and position {position} disagree"
        );
        if self.offsets.is_empty() {
            // The first batch always has an entry, so no batch is left.
            self.times = TimeIndex::new(self.base_offset());
        } else {
            self.times.truncate_to(offset);
        }
        self.offset_next_min = self.offset_next_min.min(offset.max(self.base_offset()));
        self.position_next_min = self.position_next_min.min(u64::from(position));
        self.offsets
            .set_next_min(self.offset_next_min, self.position_next_min);
        self.times.set_offset_next_min(self.offset_next_min);
    }

    /// Records where the segment's batches end, as a scan of its log found them: the next
    /// batch starts exactly at `offset_next` and `position_next`. After a decode the index
    /// knows only a lower bound ([`Self::position_next_min`]); this makes it exact again.
    ///
    /// Panics if that end lies below what the entries already imply: the scan and the
    /// index do not describe the same log.
    pub fn set_end(&mut self, offset_next: i64, position_next: u64) {
        assert!(
            offset_next >= self.offset_next_min && position_next >= self.position_next_min,
            "end ({offset_next}, byte {position_next}) below the indexed batches' \
             ({}, byte {})",
            self.offset_next_min,
            self.position_next_min
        );
        self.offset_next_min = offset_next;
        self.position_next_min = position_next;
        self.offsets.set_next_min(offset_next, position_next);
        self.times.set_offset_next_min(offset_next);
    }

    /// Where to start scanning the log for `target_offset`: `(offset, position)` of the last
    /// entry at or before it, or `(base_offset, 0)`.
    pub fn lookup_offset(&self, target_offset: i64) -> (i64, u32) {
        self.offsets.lookup(target_offset)
    }

    /// Where to start scanning the log for the first batch whose max timestamp is at or
    /// after `timestamp_ms`, as `(offset, position)`; `None` if no batch of the segment can
    /// be (see [`TimeIndex::lookup`]).
    pub fn lookup_timestamp(&self, timestamp_ms: i64) -> Option<(i64, u32)> {
        self.times
            .lookup(timestamp_ms)
            .map(|offset| self.offsets.lookup(offset))
    }

    fn append_checked(&mut self, batch: &BatchMeta) {
        let indexed = self
            .offsets
            .on_append(batch.base_offset, batch.position, batch.size_bytes);
        self.times
            .on_append(batch.base_offset, batch.max_timestamp_ms, indexed);
        self.offset_next_min = batch.last_offset + 1;
        self.position_next_min = u64::from(batch.position) + u64::from(batch.size_bytes);
    }
}

/// Checks that every time index entry's offset has an offset index entry (both lists are
/// sorted, so one merge pass), and that the time index knows of no batch when the offset
/// index has no entry (the first batch always gets one).
fn check_agreement(offsets: &OffsetIndex, times: &TimeIndex) -> Result<(), IndexError> {
    if offsets.is_empty() && times.max_timestamp() != MaxTimestamp::NoBatch {
        return Err(IndexError::IndexesDisagree {
            offset: offsets.base_offset(),
        });
    }
    let mut offset_entries = offsets.entries().iter().peekable();
    for time_entry in times.entries() {
        while offset_entries
            .next_if(|o| o.relative_offset < time_entry.relative_offset)
            .is_some()
        {}
        if offset_entries
            .next_if(|o| o.relative_offset == time_entry.relative_offset)
            .is_none()
        {
            let offset = time_entry.offset(times.base_offset());
            return Err(IndexError::IndexesDisagree { offset });
        }
    }
    Ok(())
}
