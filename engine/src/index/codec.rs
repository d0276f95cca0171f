//! The framing both index files share: magic, version, base offset, entry count and a
//! CRC-32C over everything else, checked before any entry is read.
//!
//! Each file's full byte table is in its own module (`offset.rs`, `time.rs`); the first 16
//! bytes are common to both and described here:
//!
//! | offset | size | field       | type    | notes                                        |
//! | -----: | ---: | ----------- | ------- | -------------------------------------------- |
//! |      0 |    4 | magic       | [u8; 4] | names the kind of index (`RLOI`, `RLTI`)     |
//! |      4 |    2 | version     | u16     | [`FORMAT_VERSION`]                           |
//! |      6 |    2 | (per kind)  | u16     | flags (offset index), max state (time)       |
//! |      8 |    8 | base_offset | i64     | the segment's base offset, as in its name    |
//!
//! Invariants: a frame that passes [`Format::check`] has exactly `entry_count` entries after
//! its header, no more than `INDEX_ENTRIES_PER_SEGMENT_MAX`, and a matching CRC. All
//! integers are little-endian.

use super::error::{IndexError, IndexKind};
use crate::limits::INDEX_ENTRIES_PER_SEGMENT_MAX;

pub(super) const MAGIC_AT: usize = 0;
pub(super) const MAGIC_SIZE: usize = 4;
pub(super) const VERSION_AT: usize = MAGIC_AT + MAGIC_SIZE;
pub(super) const VERSION_SIZE: usize = 2;
pub(super) const KIND_FIELD_AT: usize = VERSION_AT + VERSION_SIZE;
pub(super) const KIND_FIELD_SIZE: usize = 2;
pub(super) const BASE_OFFSET_AT: usize = KIND_FIELD_AT + KIND_FIELD_SIZE;
pub(super) const BASE_OFFSET_SIZE: usize = 8;
/// Where the kind-specific header fields start.
pub(super) const COMMON_HEADER_SIZE_BYTES: usize = BASE_OFFSET_AT + BASE_OFFSET_SIZE;
pub(super) const ENTRY_COUNT_SIZE: usize = 4;
pub(super) const CRC_SIZE: usize = 4;

const _: () = assert!(VERSION_AT == 4);
const _: () = assert!(KIND_FIELD_AT == 6);
const _: () = assert!(BASE_OFFSET_AT == 8);
const _: () = assert!(COMMON_HEADER_SIZE_BYTES == 16);

/// The only format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Where one kind of index file keeps its fields.
pub(super) struct Format {
    pub kind: IndexKind,
    pub magic: [u8; 4],
    pub entry_count_at: usize,
    pub crc_at: usize,
    pub header_size_bytes: usize,
    pub entry_size_bytes: usize,
}

/// A frame that passed [`Format::check`].
pub(super) struct Frame<'a> {
    pub header: &'a [u8],
    pub entries: &'a [u8],
    pub entry_count: usize,
}

impl Format {
    /// Checks length, magic, version, entry count and CRC, in that order, and then that the
    /// base offset is `base_offset_expected`.
    pub fn check<'a>(
        &self,
        bytes: &'a [u8],
        base_offset_expected: i64,
    ) -> Result<Frame<'a>, IndexError> {
        let kind = self.kind;
        if bytes.len() < self.header_size_bytes {
            let (need, have) = (self.header_size_bytes, bytes.len());
            return Err(IndexError::Truncated { kind, need, have });
        }
        let found = read_array::<MAGIC_SIZE>(bytes, MAGIC_AT);
        if found != self.magic {
            let expected = self.magic;
            return Err(IndexError::BadMagic {
                kind,
                found,
                expected,
            });
        }
        let version = read_u16(bytes, VERSION_AT);
        if version != FORMAT_VERSION {
            let supported = FORMAT_VERSION;
            return Err(IndexError::UnsupportedVersion {
                kind,
                found: version,
                supported,
            });
        }
        let count = read_u32(bytes, self.entry_count_at);
        let entry_count = count as usize;
        if entry_count > INDEX_ENTRIES_PER_SEGMENT_MAX {
            let max = INDEX_ENTRIES_PER_SEGMENT_MAX;
            return Err(IndexError::TooManyEntries { kind, count, max });
        }
        // No overflow: entry_count is bounded above, and so is the entry size.
        let expected = self.header_size_bytes + entry_count * self.entry_size_bytes;
        if bytes.len() != expected {
            let len = bytes.len();
            return Err(IndexError::LengthMismatch {
                kind,
                count,
                expected,
                len,
            });
        }
        let stored = read_u32(bytes, self.crc_at);
        let computed = self.crc(bytes);
        if stored != computed {
            return Err(IndexError::CrcMismatch {
                kind,
                stored,
                computed,
            });
        }
        let found = read_i64(bytes, BASE_OFFSET_AT);
        if found != base_offset_expected {
            let expected = base_offset_expected;
            return Err(IndexError::BaseOffsetMismatch {
                kind,
                expected,
                found,
            });
        }
        let (header, entries) = bytes.split_at(self.header_size_bytes);
        Ok(Frame {
            header,
            entries,
            entry_count,
        })
    }

    /// Appends a header to `out` with the common fields and the entry count set, the
    /// kind-specific fields and the CRC zero; returns where the frame starts in `out`.
    pub fn begin(&self, out: &mut Vec<u8>, base_offset: i64, entry_count: usize) -> usize {
        assert!(
            entry_count <= INDEX_ENTRIES_PER_SEGMENT_MAX,
            "index over its entry limit"
        );
        let start = out.len();
        out.resize(start + self.header_size_bytes, 0);
        let header = &mut out[start..];
        header[MAGIC_AT..VERSION_AT].copy_from_slice(&self.magic);
        write_at(header, VERSION_AT, &FORMAT_VERSION.to_le_bytes());
        write_at(header, BASE_OFFSET_AT, &base_offset.to_le_bytes());
        write_at(
            header,
            self.entry_count_at,
            &(entry_count as u32).to_le_bytes(),
        );
        start
    }

    /// Computes the CRC of the frame starting at `start` (header and entries all written)
    /// and stores it.
    pub fn finish(&self, out: &mut [u8], start: usize) {
        let frame = &mut out[start..];
        let crc = self.crc(frame);
        write_at(frame, self.crc_at, &crc.to_le_bytes());
    }

    /// CRC-32C of every byte of the frame except the CRC field itself.
    fn crc(&self, frame: &[u8]) -> u32 {
        let crc = crc32c::crc32c(&frame[..self.crc_at]);
        crc32c::crc32c_append(crc, &frame[self.crc_at + CRC_SIZE..])
    }
}

/// Copies `N` bytes at `at`; the caller has checked the length.
pub(super) fn read_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(&bytes[at..at + N]);
    array
}

pub(super) fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(read_array(bytes, at))
}

pub(super) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(read_array(bytes, at))
}

pub(super) fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(read_array(bytes, at))
}

pub(super) fn write_at(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}
