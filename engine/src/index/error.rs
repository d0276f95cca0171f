//! Why an index file was refused, or a batch could not be indexed.
//!
//! The decode errors (`Truncated` … `IndexesDisagree`) all mean the same thing to a caller:
//! the index file is damaged or foreign, and the segment's indexes are rebuilt from its log
//! (`SegmentIndex::rebuild_from`). They differ so that the log line says what was wrong.
//! The batch errors come from `SegmentIndex::check_batch`: `SegmentRangeExceeded` asks the
//! caller to roll the segment before writing the batch; the others, met while rebuilding from
//! a log scan, mean the log itself is damaged at that batch.

use std::fmt;

/// Which of a segment's two index files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// The sparse offset index, `{base_offset:020}.index`.
    Offset,
    /// The time index, `{base_offset:020}.timeindex`.
    Time,
}

impl IndexKind {
    /// The extension of this kind's file.
    pub fn extension(self) -> &'static str {
        match self {
            IndexKind::Offset => "index",
            IndexKind::Time => "timeindex",
        }
    }
}

impl fmt::Display for IndexKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IndexKind::Offset => "offset index",
            IndexKind::Time => "time index",
        })
    }
}

/// A damaged index file, or a batch that does not fit the segment's index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The file is shorter than its fixed header.
    #[error("{kind} truncated: need {need} bytes, have {have}")]
    Truncated {
        kind: IndexKind,
        need: usize,
        have: usize,
    },

    /// The file does not start with this kind's magic bytes.
    #[error("{kind} has magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        kind: IndexKind,
        found: [u8; 4],
        expected: [u8; 4],
    },

    /// The format version is not one this build reads.
    #[error("{kind} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        kind: IndexKind,
        found: u16,
        supported: u16,
    },

    /// The header declares more entries than `INDEX_ENTRIES_PER_SEGMENT_MAX`.
    #[error("{kind} declares {count} entries, above the limit of {max}")]
    TooManyEntries {
        kind: IndexKind,
        count: u32,
        max: usize,
    },

    /// The file's length is not the header plus the declared entries.
    #[error("{kind} declares {count} entries, which take {expected} bytes; the file has {len}")]
    LengthMismatch {
        kind: IndexKind,
        count: u32,
        expected: usize,
        len: usize,
    },

    /// The stored CRC-32C does not match the file's other bytes.
    #[error("{kind} CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        kind: IndexKind,
        stored: u32,
        computed: u32,
    },

    /// The file belongs to another segment (its base offset is not the file name's).
    #[error("{kind} is for base offset {found}, but the segment's is {expected}")]
    BaseOffsetMismatch {
        kind: IndexKind,
        expected: i64,
        found: i64,
    },

    /// A header field holds a value the format does not allow.
    #[error("{kind} header field {field} holds invalid value {value}")]
    InvalidHeaderField {
        kind: IndexKind,
        field: &'static str,
        value: i64,
    },

    /// An entry's offset, position or timestamp does not strictly exceed the previous one's.
    #[error("{kind} entry {entry_index} does not strictly follow the entry before it")]
    EntriesNotIncreasing { kind: IndexKind, entry_index: usize },

    /// The time index knows of a batch at `offset` that the offset index has no entry for,
    /// so the two files were not written from the same index.
    #[error("the time index and the offset index disagree at offset {offset}")]
    IndexesDisagree { offset: i64 },

    /// A batch's offsets are inverted (`last_offset < base_offset`) or its size is zero.
    #[error("batch {base_offset}..={last_offset} of {size_bytes} bytes is malformed")]
    InvalidBatch {
        base_offset: i64,
        last_offset: i64,
        size_bytes: u32,
    },

    /// A batch starts before the end of the previous one, in offsets or in bytes.
    #[error(
        "batch at offset {base_offset}, position {position} overlaps the previous batch \
         (next offset at least {offset_next_min}, next position at least {position_next_min})"
    )]
    BatchOutOfOrder {
        base_offset: i64,
        position: u32,
        offset_next_min: i64,
        position_next_min: u64,
    },

    /// A batch's last offset is more than `u32::MAX` past the segment's base offset, or it
    /// ends past byte 2^32: an index entry could not hold it. The segment must roll first.
    #[error(
        "batch ending at offset {last_offset}, byte {position_end} is beyond what the index \
         of the segment at base offset {base_offset} can address"
    )]
    SegmentRangeExceeded {
        base_offset: i64,
        last_offset: i64,
        position_end: u64,
    },
}

impl IndexError {
    /// The index file the error is about; `None` for an error about both (they disagree)
    /// or about a batch.
    pub fn kind(&self) -> Option<IndexKind> {
        match self {
            IndexError::Truncated { kind, .. }
            | IndexError::BadMagic { kind, .. }
            | IndexError::UnsupportedVersion { kind, .. }
            | IndexError::TooManyEntries { kind, .. }
            | IndexError::LengthMismatch { kind, .. }
            | IndexError::CrcMismatch { kind, .. }
            | IndexError::BaseOffsetMismatch { kind, .. }
            | IndexError::InvalidHeaderField { kind, .. }
            | IndexError::EntriesNotIncreasing { kind, .. } => Some(*kind),
            IndexError::IndexesDisagree { .. }
            | IndexError::InvalidBatch { .. }
            | IndexError::BatchOutOfOrder { .. }
            | IndexError::SegmentRangeExceeded { .. } => None,
        }
    }
}
