//! The sparse offset index of one segment: which byte of the `.log` to start reading at to
//! find a given offset.
//!
//! An entry maps a batch's base offset (relative to the segment's) to the byte position of
//! that batch. The first batch of a segment always gets an entry; a later batch gets one
//! when it starts at least `index_interval_bytes` after the batch of the last entry, so a
//! scan from an entry's position reads less than the interval before reaching any batch
//! that has no entry of its own.
//!
//! Invariants: entries strictly increase in relative offset and in position; there are at
//! most `INDEX_ENTRIES_PER_SEGMENT_MAX` of them (past that the index stops adding entries
//! and [`OffsetIndex::is_full`] says so); batches are appended in strictly increasing
//! offset and position order, which is asserted (an appender that breaks it has a bug).
//!
//! The index of a sealed segment says so ([`OffsetIndex::mark_sealed`]): the seal writes
//! it only after the segment file was trimmed to its last batch and fdatasynced, so a
//! recovery that finds the flag knows every byte of the file was durable and whole once,
//! and that damage found there is damage, not a write a crash interrupted. Appending to
//! or truncating an index clears the flag.
//!
//! On disk (`{base_offset:020}.index`), little-endian:
//!
//! | offset | size | field       | type    | notes                                         |
//! | -----: | ---: | ----------- | ------- | --------------------------------------------- |
//! |      0 |    4 | magic       | [u8; 4] | `RLOI`                                        |
//! |      4 |    2 | version     | u16     | 1                                             |
//! |      6 |    2 | flags       | u16     | bit 0: sealed; the other bits 0               |
//! |      8 |    8 | base_offset | i64     | the segment's base offset, as in its name     |
//! |     16 |    4 | entry_count | u32     | at most `INDEX_ENTRIES_PER_SEGMENT_MAX`       |
//! |     20 |    4 | crc         | u32     | CRC-32C of bytes 0..20 followed by 24..end    |
//! |     24 | 8×n  | entries     |         | `entry_count` entries, as below               |
//!
//! | entry offset | size | field           | type | notes                                 |
//! | -----------: | ---: | --------------- | ---- | ------------------------------------- |
//! |            0 |    4 | relative_offset | u32  | batch base offset - segment base      |
//! |            4 |    4 | position        | u32  | byte position of the batch in `.log`  |

use super::codec::{
    self, Format, BASE_OFFSET_AT, COMMON_HEADER_SIZE_BYTES, CRC_SIZE, ENTRY_COUNT_SIZE,
    KIND_FIELD_AT,
};
use super::error::{IndexError, IndexKind};
use crate::limits::INDEX_ENTRIES_PER_SEGMENT_MAX;

const MAGIC: [u8; 4] = *b"RLOI";
const FLAGS_AT: usize = KIND_FIELD_AT;
/// `flags` bit: the index was written by the seal of its segment.
const FLAG_SEALED: u16 = 1;
const ENTRY_COUNT_AT: usize = COMMON_HEADER_SIZE_BYTES;
const CRC_AT: usize = ENTRY_COUNT_AT + ENTRY_COUNT_SIZE;
/// Size of the `.index` header; entries start here.
pub const OFFSET_INDEX_HEADER_SIZE_BYTES: usize = CRC_AT + CRC_SIZE;

const ENTRY_RELATIVE_OFFSET_AT: usize = 0;
const ENTRY_POSITION_AT: usize = ENTRY_RELATIVE_OFFSET_AT + 4;
/// Size of one `.index` entry.
pub const OFFSET_INDEX_ENTRY_SIZE_BYTES: usize = ENTRY_POSITION_AT + 4;

const _: () = assert!(FLAGS_AT == 6);
const _: () = assert!(BASE_OFFSET_AT == 8);
const _: () = assert!(ENTRY_COUNT_AT == 16);
const _: () = assert!(CRC_AT == 20);
const _: () = assert!(OFFSET_INDEX_HEADER_SIZE_BYTES == 24);
const _: () = assert!(ENTRY_POSITION_AT == 4);
const _: () = assert!(OFFSET_INDEX_ENTRY_SIZE_BYTES == 8);

const FORMAT: Format = Format {
    kind: IndexKind::Offset,
    magic: MAGIC,
    entry_count_at: ENTRY_COUNT_AT,
    crc_at: CRC_AT,
    header_size_bytes: OFFSET_INDEX_HEADER_SIZE_BYTES,
    entry_size_bytes: OFFSET_INDEX_ENTRY_SIZE_BYTES,
};

/// The largest segment base offset an index takes: every offset of the segment, and the one
/// after its last, is then representable. The code that parses segment file names checks it.
pub const SEGMENT_BASE_OFFSET_MAX: i64 = i64::MAX - (1 << 32);

/// One offset index entry: the batch at `base_offset + relative_offset` starts at byte
/// `position` of the segment's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl OffsetEntry {
    /// The entry's absolute offset in a segment based at `base_offset`.
    pub fn offset(self, base_offset: i64) -> i64 {
        base_offset + i64::from(self.relative_offset)
    }
}

/// The sparse offset index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetIndex {
    base_offset: i64,
    index_interval_bytes: u32,
    entries: Vec<OffsetEntry>,
    /// Lower bounds on where the next batch may start, for the ordering assertions. Exact
    /// after an append; after a decode or a truncation only what the entries imply.
    offset_next_min: i64,
    position_next_min: u64,
    /// Written (or read back) as the index of a sealed segment; see the module doc.
    sealed: bool,
}

impl OffsetIndex {
    /// An empty index of the segment whose first offset is `base_offset`, which is within
    /// `0..=SEGMENT_BASE_OFFSET_MAX`.
    pub fn new(base_offset: i64, index_interval_bytes: u32) -> Self {
        assert!(
            (0..=SEGMENT_BASE_OFFSET_MAX).contains(&base_offset),
            "segment base offset {base_offset} out of range"
        );
        OffsetIndex {
            base_offset,
            index_interval_bytes,
            entries: Vec::new(),
            offset_next_min: base_offset,
            position_next_min: 0,
            sealed: false,
        }
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Whether this is the index of a sealed segment (see the module doc).
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Marks the index as its segment's seal writes it: the segment is complete.
    pub fn mark_sealed(&mut self) {
        self.sealed = true;
    }

    pub fn index_interval_bytes(&self) -> u32 {
        self.index_interval_bytes
    }

    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the index holds `INDEX_ENTRIES_PER_SEGMENT_MAX` entries and adds no more: the
    /// segment should roll.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= INDEX_ENTRIES_PER_SEGMENT_MAX
    }

    /// Records that the batch with base offset `batch_base_offset` was appended at
    /// `position`, adding an entry for it if one is due; returns whether it got one.
    ///
    /// Panics if the batch does not start after the previous one in offsets and in bytes,
    /// or if its offset is not within `u32::MAX` of the base offset: the appender checks
    /// these before writing (`SegmentIndex::check_batch`).
    pub fn on_append(
        &mut self,
        batch_base_offset: i64,
        position: u32,
        batch_size_bytes: u32,
    ) -> bool {
        assert!(
            batch_base_offset >= self.offset_next_min,
            "batch offset {batch_base_offset} below the next offset {}",
            self.offset_next_min
        );
        assert!(
            u64::from(position) >= self.position_next_min,
            "batch position {position} below the next position {}",
            self.position_next_min
        );
        assert!(batch_size_bytes > 0, "empty batch at position {position}");
        self.sealed = false;
        let relative_offset = relative_offset_of(self.base_offset, batch_base_offset);
        self.offset_next_min = batch_base_offset.saturating_add(1);
        self.position_next_min = u64::from(position) + u64::from(batch_size_bytes);
        let due = self
            .entries
            .last()
            .is_none_or(|last| position - last.position >= self.index_interval_bytes);
        if !due || self.is_full() {
            return false;
        }
        self.entries.push(OffsetEntry {
            relative_offset,
            position,
        });
        true
    }

    /// Where to start scanning the log for `target_offset`: the last entry whose offset is
    /// at most the target, as `(offset, position)`, or `(base_offset, 0)` if there is none.
    pub fn lookup(&self, target_offset: i64) -> (i64, u32) {
        let base_offset = self.base_offset;
        let after = self
            .entries
            .partition_point(|e| e.offset(base_offset) <= target_offset);
        match after.checked_sub(1) {
            Some(at) => (
                self.entries[at].offset(base_offset),
                self.entries[at].position,
            ),
            None => (base_offset, 0),
        }
    }

    /// Removes the entries whose offset is `offset` or more, as when the log is truncated to
    /// end before `offset`.
    pub fn truncate_to(&mut self, offset: i64) {
        let base_offset = self.base_offset;
        let keep = self
            .entries
            .partition_point(|e| e.offset(base_offset) < offset);
        self.entries.truncate(keep);
        self.sealed = false;
        self.offset_next_min = self.offset_next_min.min(offset.max(self.base_offset));
        self.position_next_min = self.position_next_min.min(self.position_after_last_entry());
    }

    /// Removes the entries whose position is `position` or more, as when the log is truncated
    /// to `position` bytes.
    pub fn truncate_to_position(&mut self, position: u32) {
        let keep = self.entries.partition_point(|e| e.position < position);
        self.entries.truncate(keep);
        self.sealed = false;
        self.position_next_min = self.position_next_min.min(u64::from(position));
        self.offset_next_min = self.offset_next_min.min(self.offset_after_last_entry());
    }

    /// Sets where the next batch may start, when the caller knows it exactly (after a
    /// truncation to a batch boundary).
    pub(super) fn set_next_min(&mut self, offset_next_min: i64, position_next_min: u64) {
        self.offset_next_min = offset_next_min;
        self.position_next_min = position_next_min;
    }

    /// Appends this index in its on-disk format to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = FORMAT.begin(out, self.base_offset, self.entries.len());
        let flags = if self.sealed { FLAG_SEALED } else { 0 };
        codec::write_at(&mut out[start..], FLAGS_AT, &flags.to_le_bytes());
        out.reserve(self.entries.len() * OFFSET_INDEX_ENTRY_SIZE_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
            out.extend_from_slice(&entry.position.to_le_bytes());
        }
        FORMAT.finish(out, start);
    }

    /// Reads an index written by [`OffsetIndex::encode`] for the segment based at
    /// `base_offset`, checking every field; any error means the file is damaged and the
    /// index is rebuilt from the log.
    pub fn decode(
        base_offset: i64,
        index_interval_bytes: u32,
        bytes: &[u8],
    ) -> Result<Self, IndexError> {
        let kind = IndexKind::Offset;
        let frame = FORMAT.check(bytes, base_offset)?;
        let flags = codec::read_u16(frame.header, FLAGS_AT);
        if flags & !FLAG_SEALED != 0 {
            let (field, value) = ("flags", i64::from(flags));
            return Err(IndexError::InvalidHeaderField { kind, field, value });
        }
        let mut index = OffsetIndex::new(base_offset, index_interval_bytes);
        index.sealed = flags & FLAG_SEALED != 0;
        index.entries.reserve_exact(frame.entry_count);
        for (entry_index, raw) in frame
            .entries
            .chunks_exact(OFFSET_INDEX_ENTRY_SIZE_BYTES)
            .enumerate()
        {
            let entry = OffsetEntry {
                relative_offset: codec::read_u32(raw, ENTRY_RELATIVE_OFFSET_AT),
                position: codec::read_u32(raw, ENTRY_POSITION_AT),
            };
            if let Some(last) = index.entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
                {
                    return Err(IndexError::EntriesNotIncreasing { kind, entry_index });
                }
            }
            index.entries.push(entry);
        }
        index.offset_next_min = index.offset_after_last_entry();
        index.position_next_min = index.position_after_last_entry();
        Ok(index)
    }

    /// The smallest offset a batch after the last entry's can have.
    fn offset_after_last_entry(&self) -> i64 {
        self.entries
            .last()
            .map_or(self.base_offset, |last| last.offset(self.base_offset) + 1)
    }

    /// The smallest position a batch after the last entry's can have.
    fn position_after_last_entry(&self) -> u64 {
        self.entries
            .last()
            .map_or(0, |last| u64::from(last.position) + 1)
    }
}

/// `offset - base_offset` as a `u32`; panics (a bug in the appender) if it does not fit.
pub(super) fn relative_offset_of(base_offset: i64, offset: i64) -> u32 {
    offset
        .checked_sub(base_offset)
        .and_then(|relative| u32::try_from(relative).ok())
        .unwrap_or_else(|| panic!("offset {offset} outside the segment at {base_offset}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: i64 = 1000;

    /// An index with interval 100 fed batches of `sizes`, one offset each, back to back.
    fn index_of(sizes: &[u32]) -> OffsetIndex {
        let mut index = OffsetIndex::new(BASE, 100);
        let mut position = 0;
        for (i, &size) in sizes.iter().enumerate() {
            index.on_append(BASE + i as i64, position, size);
            position += size;
        }
        index
    }

    fn entry(relative_offset: u32, position: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn first_batch_is_always_indexed() {
        let mut index = OffsetIndex::new(BASE, u32::MAX);
        assert!(index.on_append(BASE, 0, 70));
        assert!(!index.on_append(BASE + 1, 70, 70));
        assert_eq!(index.entries(), [entry(0, 0)]);
    }

    #[test]
    fn entry_added_once_interval_bytes_follow_the_last_entry() {
        // Positions 0, 40, 80, 120, 160, 200, 240: entries at 0, 120 (>= 100 after 0), 240.
        let index = index_of(&[40; 7]);
        assert_eq!(index.entries(), [entry(0, 0), entry(3, 120), entry(6, 240)]);
        // Exactly the interval is enough.
        let index = index_of(&[50; 5]);
        assert_eq!(index.entries(), [entry(0, 0), entry(2, 100), entry(4, 200)]);
    }

    #[test]
    fn interval_zero_indexes_every_batch() {
        let mut index = OffsetIndex::new(0, 0);
        for i in 0..5 {
            assert!(index.on_append(i * 10, i as u32 * 61, 61));
        }
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn lookup_below_between_at_and_beyond_entries() {
        let index = index_of(&[40; 7]);
        assert_eq!(index.lookup(0), (BASE, 0), "below the segment");
        assert_eq!(index.lookup(BASE), (BASE, 0));
        assert_eq!(index.lookup(BASE + 2), (BASE, 0), "between entries");
        assert_eq!(index.lookup(BASE + 3), (BASE + 3, 120), "at an entry");
        assert_eq!(index.lookup(BASE + 5), (BASE + 3, 120));
        assert_eq!(index.lookup(BASE + 6), (BASE + 6, 240));
        assert_eq!(index.lookup(i64::MAX), (BASE + 6, 240), "beyond the last");
        assert_eq!(
            OffsetIndex::new(BASE, 1).lookup(BASE + 9),
            (BASE, 0),
            "empty"
        );
    }

    #[test]
    fn truncate_to_offset_removes_entries_at_and_after() {
        let mut index = index_of(&[40; 7]);
        index.truncate_to(BASE + 7);
        assert_eq!(index.len(), 3, "past the end: nothing to remove");
        index.truncate_to(BASE + 6);
        assert_eq!(index.entries(), [entry(0, 0), entry(3, 120)]);
        index.truncate_to(BASE + 4);
        assert_eq!(index.entries(), [entry(0, 0), entry(3, 120)]);
        // The log now ends before offset 4 (at byte 160); appending continues from there.
        assert!(
            !index.on_append(BASE + 4, 160, 100),
            "40 bytes after the entry at 120"
        );
        index.truncate_to(BASE);
        assert!(index.is_empty());
        assert!(index.on_append(BASE, 0, 10), "the first batch again");
    }

    #[test]
    fn truncate_to_position_removes_entries_at_and_after() {
        let mut index = index_of(&[40; 7]);
        index.truncate_to_position(121);
        assert_eq!(index.entries(), [entry(0, 0), entry(3, 120)]);
        index.truncate_to_position(120);
        assert_eq!(index.entries(), [entry(0, 0)]);
        index.truncate_to_position(0);
        assert!(index.is_empty());
    }

    #[test]
    #[should_panic(expected = "below the next offset")]
    fn offsets_must_increase() {
        let mut index = index_of(&[40; 3]);
        index.on_append(BASE + 2, 200, 40);
    }

    #[test]
    #[should_panic(expected = "below the next position")]
    fn batches_must_not_overlap() {
        let mut index = index_of(&[40; 3]);
        index.on_append(BASE + 3, 119, 40);
    }

    #[test]
    #[should_panic(expected = "outside the segment")]
    fn relative_offset_must_fit() {
        let mut index = OffsetIndex::new(BASE, 1);
        index.on_append(BASE + (1 << 32), 0, 40);
    }

    #[test]
    fn round_trip() {
        let index = index_of(&[40; 30]);
        let mut bytes = vec![0xAA]; // encode appends
        index.encode(&mut bytes);
        assert_eq!(
            bytes.len(),
            1 + OFFSET_INDEX_HEADER_SIZE_BYTES + 8 * index.len()
        );
        assert_eq!(&bytes[1..5], b"RLOI");
        let decoded = OffsetIndex::decode(BASE, 100, &bytes[1..]).unwrap();
        assert_eq!(decoded.entries(), index.entries());
        let mut empty = Vec::new();
        OffsetIndex::new(0, 5).encode(&mut empty);
        assert!(OffsetIndex::decode(0, 5, &empty).unwrap().is_empty());
    }

    #[test]
    fn decoded_index_keeps_appending_after_its_entries() {
        let index = index_of(&[40; 7]);
        let mut bytes = Vec::new();
        index.encode(&mut bytes);
        let mut decoded = OffsetIndex::decode(BASE, 100, &bytes).unwrap();
        assert!(
            decoded.on_append(BASE + 7, 340, 40),
            "100 bytes after the entry at 240"
        );
    }

    /// Encodes `entries` with a correct header and CRC, so decode must judge the entries.
    fn encode_raw(base_offset: i64, entries: &[OffsetEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = FORMAT.begin(&mut out, base_offset, entries.len());
        for e in entries {
            out.extend_from_slice(&e.relative_offset.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
        }
        FORMAT.finish(&mut out, start);
        out
    }

    #[test]
    fn decode_rejects_each_kind_of_damage() {
        let kind = IndexKind::Offset;
        let good = encode_raw(BASE, &[entry(0, 0), entry(5, 300)]);
        let decode = |bytes: &[u8]| OffsetIndex::decode(BASE, 100, bytes).unwrap_err();
        assert!(matches!(
            decode(&good[..10]),
            IndexError::Truncated { need: 24, .. }
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), IndexError::BadMagic { .. }));
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(matches!(
            decode(&bad),
            IndexError::UnsupportedVersion { found: 2, .. }
        ));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            IndexError::LengthMismatch { .. }
        ));
        let mut bad = good.clone();
        bad[ENTRY_COUNT_AT..CRC_AT].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bad),
            IndexError::TooManyEntries {
                count: u32::MAX,
                ..
            }
        ));
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(&bad), IndexError::CrcMismatch { .. }));
        let found = OffsetIndex::decode(BASE + 1, 100, &good).unwrap_err();
        let expected = IndexError::BaseOffsetMismatch {
            kind,
            expected: BASE + 1,
            found: BASE,
        };
        assert_eq!(found, expected);
        let unordered = encode_raw(BASE, &[entry(0, 0), entry(5, 300), entry(5, 400)]);
        let expected = IndexError::EntriesNotIncreasing {
            kind,
            entry_index: 2,
        };
        assert_eq!(decode(&unordered), expected);
        let unordered = encode_raw(BASE, &[entry(0, 10), entry(5, 10)]);
        let expected = IndexError::EntriesNotIncreasing {
            kind,
            entry_index: 1,
        };
        assert_eq!(decode(&unordered), expected);
        let mut unknown_flag = encode_raw(BASE, &[]);
        unknown_flag[FLAGS_AT] = 2;
        FORMAT.finish(&mut unknown_flag, 0);
        assert!(matches!(
            decode(&unknown_flag),
            IndexError::InvalidHeaderField {
                field: "flags",
                value: 2,
                ..
            }
        ));
    }

    #[test]
    fn the_sealed_flag_round_trips_and_any_change_clears_it() {
        let mut index = index_of(&[40; 7]);
        let decode = |index: &OffsetIndex| {
            let mut bytes = Vec::new();
            index.encode(&mut bytes);
            OffsetIndex::decode(BASE, 100, &bytes).unwrap()
        };
        assert!(
            !decode(&index).is_sealed(),
            "an index is not sealed by default"
        );
        index.mark_sealed();
        let decoded = decode(&index);
        assert!(decoded.is_sealed());
        assert_eq!(decoded.entries(), index.entries());
        let mut appended = decoded.clone();
        appended.on_append(BASE + 7, 280, 40);
        assert!(!appended.is_sealed(), "an append reopens the segment");
        let mut truncated = decoded;
        truncated.truncate_to(BASE + 3);
        assert!(!truncated.is_sealed(), "a truncation reopens the segment");
    }

    #[test]
    fn stops_indexing_when_full() {
        let mut index = OffsetIndex::new(0, 0);
        for i in 0..INDEX_ENTRIES_PER_SEGMENT_MAX {
            index.on_append(i as i64, i as u32, 1);
        }
        assert!(index.is_full());
        let next = INDEX_ENTRIES_PER_SEGMENT_MAX;
        assert!(!index.on_append(next as i64, next as u32, 1));
        assert_eq!(index.len(), INDEX_ENTRIES_PER_SEGMENT_MAX);
        let mut bytes = Vec::new();
        index.encode(&mut bytes);
        assert_eq!(OffsetIndex::decode(0, 0, &bytes).unwrap().len(), next);
    }
}
