//! The time index of one segment: from which offset to scan the log for the first batch
//! whose max timestamp is at or after a given time.
//!
//! An entry `(timestamp_ms, relative_offset)` is added alongside an offset index entry (same
//! offset), and only when the largest batch max timestamp seen so far exceeds the last
//! entry's, so timestamps and offsets both strictly increase even when producers' clocks do
//! not. An entry's timestamp is the largest max timestamp of every batch up to and including
//! the one at its offset: so, for a target time `t`, every batch at or before the offset of
//! the last entry with a timestamp below `t` is too early, and a scan from there (the offset
//! index has an entry at that very offset) finds the first batch at or after `t`.
//!
//! The index also keeps the largest max timestamp seen and the base offset of the batch that
//! first reached it (for ListOffsets' MAX_TIMESTAMP). A truncation that removes that batch
//! leaves the maximum unknown: the index then adds no entries (their timestamps could be
//! too low) and never rules a time out, until it is rebuilt from the log.
//!
//! Invariants: entries strictly increase in timestamp and in relative offset; each entry's
//! offset has an offset index entry; a known maximum is at least the last entry's timestamp.
//!
//! On disk (`{base_offset:020}.timeindex`), little-endian:
//!
//! | offset | size | field           | type    | notes                                     |
//! | -----: | ---: | --------------- | ------- | ----------------------------------------- |
//! |      0 |    4 | magic           | [u8; 4] | `RLTI`                                    |
//! |      4 |    2 | version         | u16     | 1                                         |
//! |      6 |    2 | max_state       | u16     | 0 no batch, 1 known, 2 unknown            |
//! |      8 |    8 | base_offset     | i64     | the segment's base offset, as in its name |
//! |     16 |    8 | max_timestamp   | i64     | largest batch max timestamp (ms); 0 if    |
//! |        |      |                 |         | max_state is not 1                        |
//! |     24 |    4 | max_relative    | u32     | its batch's base offset - segment base;   |
//! |        |      |                 |         | 0 if max_state is not 1                   |
//! |     28 |    4 | entry_count     | u32     | at most `INDEX_ENTRIES_PER_SEGMENT_MAX`   |
//! |     32 |    4 | crc             | u32     | CRC-32C of bytes 0..32 followed by 36..end |
//! |     36 | 12×n | entries         |         | `entry_count` entries, as below           |
//!
//! | entry offset | size | field           | type | notes                                  |
//! | -----------: | ---: | --------------- | ---- | -------------------------------------- |
//! |            0 |    8 | timestamp_ms    | i64  | largest max timestamp up to the offset |
//! |            8 |    4 | relative_offset | u32  | batch base offset - segment base       |

use super::codec::{
    self, Format, BASE_OFFSET_AT, COMMON_HEADER_SIZE_BYTES, CRC_SIZE, ENTRY_COUNT_SIZE,
    KIND_FIELD_AT,
};
use super::error::{IndexError, IndexKind};
use super::offset::{relative_offset_of, SEGMENT_BASE_OFFSET_MAX};
use crate::limits::INDEX_ENTRIES_PER_SEGMENT_MAX;

const MAGIC: [u8; 4] = *b"RLTI";
const MAX_STATE_AT: usize = KIND_FIELD_AT;
const MAX_TIMESTAMP_AT: usize = COMMON_HEADER_SIZE_BYTES;
const MAX_RELATIVE_AT: usize = MAX_TIMESTAMP_AT + 8;
const ENTRY_COUNT_AT: usize = MAX_RELATIVE_AT + 4;
const CRC_AT: usize = ENTRY_COUNT_AT + ENTRY_COUNT_SIZE;
/// Size of the `.timeindex` header; entries start here.
pub const TIME_INDEX_HEADER_SIZE_BYTES: usize = CRC_AT + CRC_SIZE;

const ENTRY_TIMESTAMP_AT: usize = 0;
const ENTRY_RELATIVE_OFFSET_AT: usize = ENTRY_TIMESTAMP_AT + 8;
/// Size of one `.timeindex` entry.
pub const TIME_INDEX_ENTRY_SIZE_BYTES: usize = ENTRY_RELATIVE_OFFSET_AT + 4;

const _: () = assert!(MAX_STATE_AT == 6);
const _: () = assert!(BASE_OFFSET_AT == 8);
const _: () = assert!(MAX_TIMESTAMP_AT == 16);
const _: () = assert!(MAX_RELATIVE_AT == 24);
const _: () = assert!(ENTRY_COUNT_AT == 28);
const _: () = assert!(CRC_AT == 32);
const _: () = assert!(TIME_INDEX_HEADER_SIZE_BYTES == 36);
const _: () = assert!(ENTRY_RELATIVE_OFFSET_AT == 8);
const _: () = assert!(TIME_INDEX_ENTRY_SIZE_BYTES == 12);

const MAX_STATE_NO_BATCH: u16 = 0;
const MAX_STATE_KNOWN: u16 = 1;
const MAX_STATE_UNKNOWN: u16 = 2;

const FORMAT: Format = Format {
    kind: IndexKind::Time,
    magic: MAGIC,
    entry_count_at: ENTRY_COUNT_AT,
    crc_at: CRC_AT,
    header_size_bytes: TIME_INDEX_HEADER_SIZE_BYTES,
    entry_size_bytes: TIME_INDEX_ENTRY_SIZE_BYTES,
};

/// One time index entry: every batch up to and including the one at
/// `base_offset + relative_offset` has a max timestamp of at most `timestamp_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

impl TimeEntry {
    /// The entry's absolute offset in a segment based at `base_offset`.
    pub fn offset(self, base_offset: i64) -> i64 {
        base_offset + i64::from(self.relative_offset)
    }
}

/// The largest batch max timestamp of a segment, as far as its time index knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxTimestamp {
    /// The segment holds no batch.
    NoBatch,
    /// The largest max timestamp, and the base offset of the first batch that has it.
    Known { timestamp_ms: i64, offset: i64 },
    /// A truncation removed the batch that had it; rebuilding the index finds it again.
    Unknown,
}

/// The time index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeIndex {
    base_offset: i64,
    entries: Vec<TimeEntry>,
    max_timestamp: MaxTimestamp,
    /// Lower bound on the next batch's offset, for the ordering assertion.
    offset_next_min: i64,
}

impl TimeIndex {
    /// An empty index of the segment whose first offset is `base_offset`, which is within
    /// `0..=SEGMENT_BASE_OFFSET_MAX`.
    pub fn new(base_offset: i64) -> Self {
        assert!(
            (0..=SEGMENT_BASE_OFFSET_MAX).contains(&base_offset),
            "segment base offset {base_offset} out of range"
        );
        TimeIndex {
            base_offset,
            entries: Vec::new(),
            max_timestamp: MaxTimestamp::NoBatch,
            offset_next_min: base_offset,
        }
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_timestamp(&self) -> MaxTimestamp {
        self.max_timestamp
    }

    /// Records a batch appended to the segment: every batch goes through here, with
    /// `indexed` telling whether the offset index just gave it an entry. Panics if the batch
    /// does not follow the previous one or lies outside the segment's offset range.
    pub fn on_append(
        &mut self,
        batch_base_offset: i64,
        batch_max_timestamp_ms: i64,
        indexed: bool,
    ) {
        assert!(
            batch_base_offset >= self.offset_next_min,
            "batch offset {batch_base_offset} below the next offset {}",
            self.offset_next_min
        );
        let relative_offset = relative_offset_of(self.base_offset, batch_base_offset);
        self.offset_next_min = batch_base_offset.saturating_add(1);
        self.max_timestamp = match self.max_timestamp {
            MaxTimestamp::Known { timestamp_ms, .. } if timestamp_ms >= batch_max_timestamp_ms => {
                self.max_timestamp
            }
            MaxTimestamp::NoBatch | MaxTimestamp::Known { .. } => MaxTimestamp::Known {
                timestamp_ms: batch_max_timestamp_ms,
                offset: batch_base_offset,
            },
            MaxTimestamp::Unknown => MaxTimestamp::Unknown,
        };
        let MaxTimestamp::Known { timestamp_ms, .. } = self.max_timestamp else {
            return;
        };
        let due = indexed
            && self.entries.len() < INDEX_ENTRIES_PER_SEGMENT_MAX
            && self
                .entries
                .last()
                .is_none_or(|last| timestamp_ms > last.timestamp_ms);
        if due {
            self.entries.push(TimeEntry {
                timestamp_ms,
                relative_offset,
            });
        }
    }

    /// The offset to start scanning the log from for the first batch whose max timestamp is
    /// `timestamp_ms` or later: the offset of the last entry with an earlier timestamp (every
    /// batch up to it is earlier), or the segment's base offset if there is none. `None` when
    /// no batch of the segment can qualify: it is empty, or `timestamp_ms` is past its known
    /// maximum.
    ///
    /// The answer is a lower bound, not the batch itself: a batch without an entry may be the
    /// first to reach the time, so callers scan batch headers from the offset index's
    /// position for the returned offset (which is an offset index entry).
    pub fn lookup(&self, timestamp_ms: i64) -> Option<i64> {
        match self.max_timestamp {
            MaxTimestamp::NoBatch => return None,
            MaxTimestamp::Known {
                timestamp_ms: max, ..
            } if timestamp_ms > max => return None,
            MaxTimestamp::Known { .. } | MaxTimestamp::Unknown => {}
        }
        let below = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        Some(match below.checked_sub(1) {
            Some(at) => self.entries[at].offset(self.base_offset),
            None => self.base_offset,
        })
    }

    /// Removes the entries whose offset is `offset` or more, as when the log is truncated to
    /// end before `offset`.
    pub fn truncate_to(&mut self, offset: i64) {
        let base_offset = self.base_offset;
        let keep = self
            .entries
            .partition_point(|e| e.offset(base_offset) < offset);
        self.entries.truncate(keep);
        if offset <= base_offset {
            self.max_timestamp = MaxTimestamp::NoBatch;
        } else if let MaxTimestamp::Known {
            offset: max_offset, ..
        } = self.max_timestamp
        {
            if max_offset >= offset {
                self.max_timestamp = MaxTimestamp::Unknown;
            }
        }
        self.offset_next_min = self.offset_next_min.min(offset.max(base_offset));
    }

    /// Sets the smallest offset the next batch may have, when the caller knows it exactly.
    pub(super) fn set_offset_next_min(&mut self, offset_next_min: i64) {
        self.offset_next_min = offset_next_min;
    }

    /// Appends this index in its on-disk format to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = FORMAT.begin(out, self.base_offset, self.entries.len());
        let (state, timestamp_ms, relative) = match self.max_timestamp {
            MaxTimestamp::NoBatch => (MAX_STATE_NO_BATCH, 0, 0),
            MaxTimestamp::Known {
                timestamp_ms,
                offset,
            } => {
                let relative = relative_offset_of(self.base_offset, offset);
                (MAX_STATE_KNOWN, timestamp_ms, relative)
            }
            MaxTimestamp::Unknown => (MAX_STATE_UNKNOWN, 0, 0),
        };
        let header = &mut out[start..];
        codec::write_at(header, MAX_STATE_AT, &state.to_le_bytes());
        codec::write_at(header, MAX_TIMESTAMP_AT, &timestamp_ms.to_le_bytes());
        codec::write_at(header, MAX_RELATIVE_AT, &relative.to_le_bytes());
        out.reserve(self.entries.len() * TIME_INDEX_ENTRY_SIZE_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
        }
        FORMAT.finish(out, start);
    }

    /// Reads an index written by [`TimeIndex::encode`] for the segment based at
    /// `base_offset`, checking every field; any error means the file is damaged and the
    /// index is rebuilt from the log.
    pub fn decode(base_offset: i64, bytes: &[u8]) -> Result<Self, IndexError> {
        let kind = IndexKind::Time;
        let frame = FORMAT.check(bytes, base_offset)?;
        let mut index = TimeIndex::new(base_offset);
        index.entries.reserve_exact(frame.entry_count);
        for (entry_index, raw) in frame
            .entries
            .chunks_exact(TIME_INDEX_ENTRY_SIZE_BYTES)
            .enumerate()
        {
            let entry = TimeEntry {
                timestamp_ms: codec::read_i64(raw, ENTRY_TIMESTAMP_AT),
                relative_offset: codec::read_u32(raw, ENTRY_RELATIVE_OFFSET_AT),
            };
            if let Some(last) = index.entries.last() {
                if entry.timestamp_ms <= last.timestamp_ms
                    || entry.relative_offset <= last.relative_offset
                {
                    return Err(IndexError::EntriesNotIncreasing { kind, entry_index });
                }
            }
            index.entries.push(entry);
        }
        index.max_timestamp = index.decode_max_timestamp(frame.header)?;
        index.offset_next_min = index.offset_after_known_batches();
        Ok(index)
    }

    /// Reads the maximum from a checked header and checks it against the decoded entries.
    fn decode_max_timestamp(&self, header: &[u8]) -> Result<MaxTimestamp, IndexError> {
        let kind = IndexKind::Time;
        let state = codec::read_u16(header, MAX_STATE_AT);
        let timestamp_ms = codec::read_i64(header, MAX_TIMESTAMP_AT);
        let relative = codec::read_u32(header, MAX_RELATIVE_AT);
        let invalid = |field, value| Err(IndexError::InvalidHeaderField { kind, field, value });
        let max_timestamp = match state {
            MAX_STATE_NO_BATCH if !self.entries.is_empty() => {
                return invalid("max_state", i64::from(state))
            }
            MAX_STATE_NO_BATCH => MaxTimestamp::NoBatch,
            MAX_STATE_UNKNOWN => MaxTimestamp::Unknown,
            MAX_STATE_KNOWN => {
                let offset = self.base_offset + i64::from(relative);
                if !self.max_fits_entries(timestamp_ms, offset) {
                    return invalid("max_timestamp", timestamp_ms);
                }
                return Ok(MaxTimestamp::Known {
                    timestamp_ms,
                    offset,
                });
            }
            _ => return invalid("max_state", i64::from(state)),
        };
        if timestamp_ms != 0 {
            return invalid("max_timestamp", timestamp_ms);
        }
        if relative != 0 {
            return invalid("max_relative", i64::from(relative));
        }
        Ok(max_timestamp)
    }

    /// Whether a known maximum agrees with the entries: it is at least the last entry's
    /// timestamp; its batch comes after every entry with an earlier timestamp and, if the
    /// last entry has the maximum's timestamp, no later than that entry.
    fn max_fits_entries(&self, timestamp_ms: i64, offset: i64) -> bool {
        // A standalone index may know batches none of which got an entry.
        let Some(last) = self.entries.last() else {
            return true;
        };
        let below = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        let after_earlier = below
            .checked_sub(1)
            .is_none_or(|at| offset > self.entries[at].offset(self.base_offset));
        let within_equal =
            last.timestamp_ms < timestamp_ms || offset <= last.offset(self.base_offset);
        last.timestamp_ms <= timestamp_ms && after_earlier && within_equal
    }

    /// The smallest offset a batch after every batch the index knows of can have.
    fn offset_after_known_batches(&self) -> i64 {
        let after_entries = self
            .entries
            .last()
            .map_or(self.base_offset, |last| last.offset(self.base_offset) + 1);
        match self.max_timestamp {
            MaxTimestamp::Known { offset, .. } => after_entries.max(offset + 1),
            MaxTimestamp::NoBatch | MaxTimestamp::Unknown => after_entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: i64 = 500;

    fn entry(timestamp_ms: i64, relative_offset: u32) -> TimeEntry {
        TimeEntry {
            timestamp_ms,
            relative_offset,
        }
    }

    /// An index fed one batch per `(max timestamp, indexed)`, one offset each.
    fn index_of(batches: &[(i64, bool)]) -> TimeIndex {
        let mut index = TimeIndex::new(BASE);
        for (i, &(timestamp_ms, indexed)) in batches.iter().enumerate() {
            index.on_append(BASE + i as i64, timestamp_ms, indexed);
        }
        index
    }

    #[test]
    fn entries_only_when_indexed_and_the_maximum_grows() {
        let index = index_of(&[
            (100, true),  // first: entry
            (90, true),   // max still 100: no entry
            (150, false), // not indexed: no entry, but the max is 150
            (120, true),  // entry (150 at offset 3): every batch up to 3 is at most 150
            (150, true),  // max unchanged: no entry
            (149, true),
            (151, true), // entry
        ]);
        assert_eq!(
            index.entries(),
            [entry(100, 0), entry(150, 3), entry(151, 6)]
        );
        let max = MaxTimestamp::Known {
            timestamp_ms: 151,
            offset: BASE + 6,
        };
        assert_eq!(index.max_timestamp(), max);
    }

    #[test]
    fn max_timestamp_keeps_the_first_batch_that_reached_it() {
        let index = index_of(&[(10, true), (30, false), (30, false), (20, true)]);
        let max = MaxTimestamp::Known {
            timestamp_ms: 30,
            offset: BASE + 1,
        };
        assert_eq!(index.max_timestamp(), max);
        assert_eq!(index.entries(), [entry(10, 0), entry(30, 3)]);
    }

    #[test]
    fn lookup_returns_a_scan_start_before_the_first_batch_at_or_after_the_time() {
        let index = index_of(&[
            (100, true),
            (90, true),
            (150, false),
            (120, true),
            (151, true),
        ]);
        assert_eq!(TimeIndex::new(BASE).lookup(0), None, "empty segment");
        assert_eq!(index.lookup(i64::MIN), Some(BASE));
        assert_eq!(index.lookup(100), Some(BASE), "the first entry reaches 100");
        // Entry (100, 0) says batches up to 0 are at most 100, so 101 is after offset 0;
        // the batch at offset 2 (150) is the answer, found by scanning from offset 0.
        assert_eq!(index.lookup(101), Some(BASE));
        assert_eq!(index.lookup(150), Some(BASE));
        assert_eq!(index.lookup(151), Some(BASE + 3));
        assert_eq!(index.lookup(152), None, "past the maximum");
    }

    #[test]
    fn truncation_keeps_a_surviving_maximum_and_forgets_a_removed_one() {
        let batches = [(100, true), (300, false), (200, true), (250, true)];
        let mut index = index_of(&batches);
        assert_eq!(index.entries(), [entry(100, 0), entry(300, 2)]);
        index.truncate_to(BASE + 3);
        assert_eq!(index.entries(), [entry(100, 0), entry(300, 2)]);
        let max = MaxTimestamp::Known {
            timestamp_ms: 300,
            offset: BASE + 1,
        };
        assert_eq!(
            index.max_timestamp(),
            max,
            "the batch at offset 1 is still there"
        );

        index.truncate_to(BASE + 1);
        assert_eq!(index.entries(), [entry(100, 0)]);
        assert_eq!(index.max_timestamp(), MaxTimestamp::Unknown);
        assert_eq!(
            index.lookup(1_000),
            Some(BASE),
            "an unknown maximum rules nothing out"
        );
        index.on_append(BASE + 1, 400, true);
        assert_eq!(index.len(), 1, "no entries while the maximum is unknown");

        index.truncate_to(BASE);
        assert!(index.is_empty());
        assert_eq!(index.max_timestamp(), MaxTimestamp::NoBatch);
        index.on_append(BASE, 7, true);
        assert_eq!(index.entries(), [entry(7, 0)]);
    }

    #[test]
    #[should_panic(expected = "below the next offset")]
    fn offsets_must_increase() {
        let mut index = index_of(&[(1, true), (2, true)]);
        index.on_append(BASE + 1, 3, true);
    }

    #[test]
    fn round_trip_in_every_max_state() {
        let mut unknown = index_of(&[(100, true), (300, false), (200, true)]);
        unknown.truncate_to(BASE + 1);
        for index in [
            TimeIndex::new(BASE),
            index_of(&[(5, true), (9, true)]),
            unknown,
        ] {
            let mut bytes = Vec::new();
            index.encode(&mut bytes);
            assert_eq!(&bytes[..4], b"RLTI");
            assert_eq!(TimeIndex::decode(BASE, &bytes).unwrap(), index);
        }
    }

    /// Encodes a header with the given maximum fields and entries, with a correct CRC.
    fn encode_raw(state: u16, max_ms: i64, max_relative: u32, entries: &[TimeEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = FORMAT.begin(&mut out, BASE, entries.len());
        codec::write_at(&mut out, MAX_STATE_AT, &state.to_le_bytes());
        codec::write_at(&mut out, MAX_TIMESTAMP_AT, &max_ms.to_le_bytes());
        codec::write_at(&mut out, MAX_RELATIVE_AT, &max_relative.to_le_bytes());
        for e in entries {
            out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&e.relative_offset.to_le_bytes());
        }
        FORMAT.finish(&mut out, start);
        out
    }

    #[test]
    fn decode_checks_entries_and_the_maximum_against_each_other() {
        let kind = IndexKind::Time;
        let decode = |bytes: Vec<u8>| TimeIndex::decode(BASE, &bytes);
        let two = [entry(10, 0), entry(20, 4)];
        assert!(decode(encode_raw(MAX_STATE_KNOWN, 20, 3, &two)).is_ok());
        assert!(decode(encode_raw(MAX_STATE_KNOWN, 25, 9, &two)).is_ok());
        let not_increasing = [entry(10, 0), entry(10, 4)];
        let expected = Err(IndexError::EntriesNotIncreasing {
            kind,
            entry_index: 1,
        });
        assert_eq!(
            decode(encode_raw(MAX_STATE_KNOWN, 20, 3, &not_increasing)),
            expected
        );
        let not_increasing = [entry(10, 4), entry(20, 4)];
        assert_eq!(
            decode(encode_raw(MAX_STATE_KNOWN, 20, 3, &not_increasing)),
            expected
        );
        let invalid = |field: &str, bytes| {
            let found = decode(bytes);
            assert!(
                matches!(found, Err(IndexError::InvalidHeaderField { field: f, .. }) if f == field),
                "{field}: {found:?}"
            );
        };
        invalid("max_timestamp", encode_raw(MAX_STATE_KNOWN, 19, 3, &two)); // below an entry
        invalid("max_timestamp", encode_raw(MAX_STATE_KNOWN, 20, 5, &two)); // after its entry
        invalid("max_timestamp", encode_raw(MAX_STATE_KNOWN, 25, 4, &two)); // not after 20's
        invalid("max_timestamp", encode_raw(MAX_STATE_KNOWN, 20, 0, &two)); // at 10's entry
        invalid("max_state", encode_raw(MAX_STATE_NO_BATCH, 0, 0, &two));
        invalid("max_state", encode_raw(3, 0, 0, &[]));
        invalid("max_timestamp", encode_raw(MAX_STATE_NO_BATCH, 1, 0, &[]));
        invalid("max_relative", encode_raw(MAX_STATE_UNKNOWN, 0, 1, &two));
    }
}
