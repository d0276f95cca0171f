//! The byte layout of a Kafka `RecordBatch` v2 header, written down once.
//!
//! Every offset used elsewhere in `batch` comes from the constants here, which are derived from
//! the field sizes in the table below and pinned to Kafka's published offsets by `const`
//! asserts, so a typo in one place cannot silently shift every field after it.
//!
//! All integers are big-endian, as Kafka specifies.
//!
//! | offset | size | field                | type | notes                                    |
//! | -----: | ---: | -------------------- | ---- | ---------------------------------------- |
//! |      0 |    8 | baseOffset           | i64  | stamped by the broker, outside the CRC   |
//! |      8 |    4 | batchLength          | i32  | bytes after this field: total = 12 + len |
//! |     12 |    4 | partitionLeaderEpoch | i32  | stamped by the broker, outside the CRC   |
//! |     16 |    1 | magic                | i8   | always 2                                 |
//! |     17 |    4 | crc                  | u32  | CRC-32C of bytes 21 .. end of the batch  |
//! |     21 |    2 | attributes           | i16  | see the bit table below                  |
//! |     23 |    4 | lastOffsetDelta      | i32  | offset of the last record - baseOffset   |
//! |     27 |    8 | baseTimestamp        | i64  | first record's timestamp (ms)            |
//! |     35 |    8 | maxTimestamp         | i64  | largest record timestamp (ms)            |
//! |     43 |    8 | producerId           | i64  | -1 when not idempotent                   |
//! |     51 |    2 | producerEpoch        | i16  | -1 when not idempotent                   |
//! |     53 |    4 | baseSequence         | i32  | -1 when not idempotent                   |
//! |     57 |    4 | recordCount          | i32  | number of records that follow            |
//! |     61 |    … | records              |      | possibly compressed as a whole           |
//!
//! | attributes bits | meaning                                                      |
//! | --------------- | ------------------------------------------------------------ |
//! | 0-2             | compression: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd; 5-7 invalid |
//! | 3               | timestamp type: 0 `CreateTime`, 1 `LogAppendTime`                |
//! | 4               | transactional                                                |
//! | 5               | control batch                                                |
//! | 6               | delete horizon set (written by log compaction)               |
//! | 7-15            | unused; preserved as they came                               |

use std::fmt;

// Field sizes, in table order.
const BASE_OFFSET_SIZE: usize = 8;
const BATCH_LENGTH_SIZE: usize = 4;
const PARTITION_LEADER_EPOCH_SIZE: usize = 4;
const MAGIC_SIZE: usize = 1;
const CRC_SIZE: usize = 4;
const ATTRIBUTES_SIZE: usize = 2;
const LAST_OFFSET_DELTA_SIZE: usize = 4;
const BASE_TIMESTAMP_SIZE: usize = 8;
const MAX_TIMESTAMP_SIZE: usize = 8;
const PRODUCER_ID_SIZE: usize = 8;
const PRODUCER_EPOCH_SIZE: usize = 2;
const BASE_SEQUENCE_SIZE: usize = 4;
const RECORD_COUNT_SIZE: usize = 4;

// Field offsets, each the previous offset plus the previous size.
pub(crate) const BASE_OFFSET_AT: usize = 0;
pub(crate) const BATCH_LENGTH_AT: usize = BASE_OFFSET_AT + BASE_OFFSET_SIZE;
pub(crate) const PARTITION_LEADER_EPOCH_AT: usize = BATCH_LENGTH_AT + BATCH_LENGTH_SIZE;
pub(crate) const MAGIC_AT: usize = PARTITION_LEADER_EPOCH_AT + PARTITION_LEADER_EPOCH_SIZE;
pub(crate) const CRC_AT: usize = MAGIC_AT + MAGIC_SIZE;
pub(crate) const ATTRIBUTES_AT: usize = CRC_AT + CRC_SIZE;
pub(crate) const LAST_OFFSET_DELTA_AT: usize = ATTRIBUTES_AT + ATTRIBUTES_SIZE;
pub(crate) const BASE_TIMESTAMP_AT: usize = LAST_OFFSET_DELTA_AT + LAST_OFFSET_DELTA_SIZE;
pub(crate) const MAX_TIMESTAMP_AT: usize = BASE_TIMESTAMP_AT + BASE_TIMESTAMP_SIZE;
pub(crate) const PRODUCER_ID_AT: usize = MAX_TIMESTAMP_AT + MAX_TIMESTAMP_SIZE;
pub(crate) const PRODUCER_EPOCH_AT: usize = PRODUCER_ID_AT + PRODUCER_ID_SIZE;
pub(crate) const BASE_SEQUENCE_AT: usize = PRODUCER_EPOCH_AT + PRODUCER_EPOCH_SIZE;
pub(crate) const RECORD_COUNT_AT: usize = BASE_SEQUENCE_AT + BASE_SEQUENCE_SIZE;

/// Size of the fixed `RecordBatch` v2 header; the records start here.
pub const HEADER_SIZE_BYTES: usize = RECORD_COUNT_AT + RECORD_COUNT_SIZE;

/// Bytes before the part that `batchLength` counts (baseOffset and batchLength itself).
pub const LOG_OVERHEAD_BYTES: usize = BATCH_LENGTH_AT + BATCH_LENGTH_SIZE;

/// The smallest `batchLength` a well-formed batch can declare: a header with no records.
pub(crate) const BATCH_LENGTH_MIN: usize = HEADER_SIZE_BYTES - LOG_OVERHEAD_BYTES;

/// The only magic byte (format version) this module accepts.
pub const MAGIC_V2: i8 = 2;

// Pinned to the offsets Kafka publishes (DefaultRecordBatch.java), so the derivation above
// cannot drift from the table.
const _: () = assert!(BATCH_LENGTH_AT == 8);
const _: () = assert!(PARTITION_LEADER_EPOCH_AT == 12);
const _: () = assert!(MAGIC_AT == 16);
const _: () = assert!(CRC_AT == 17);
const _: () = assert!(ATTRIBUTES_AT == 21);
const _: () = assert!(LAST_OFFSET_DELTA_AT == 23);
const _: () = assert!(BASE_TIMESTAMP_AT == 27);
const _: () = assert!(MAX_TIMESTAMP_AT == 35);
const _: () = assert!(PRODUCER_ID_AT == 43);
const _: () = assert!(PRODUCER_EPOCH_AT == 51);
const _: () = assert!(BASE_SEQUENCE_AT == 53);
const _: () = assert!(RECORD_COUNT_AT == 57);
const _: () = assert!(HEADER_SIZE_BYTES == 61);
const _: () = assert!(LOG_OVERHEAD_BYTES == 12);
const _: () = assert!(BATCH_LENGTH_MIN == 49);

const COMPRESSION_MASK: i16 = 0b111;
pub(crate) const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

/// How the records section of a batch is compressed (attributes bits 0-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Compression {
    /// Reads bits 0-2 of `attributes`; codes 5-7 are not defined by Kafka.
    pub fn from_attributes(attributes: i16) -> Option<Compression> {
        match attributes & COMPRESSION_MASK {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The attribute bits for this codec.
    pub fn attribute_bits(self) -> i16 {
        self as i16
    }

    /// The codec number in attributes bits 0-2 of `attributes`, valid or not.
    pub(crate) fn code_of(attributes: i16) -> u8 {
        (attributes & COMPRESSION_MASK) as u8
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        };
        f.write_str(name)
    }
}

/// Whose clock the timestamps of a batch come from (attributes bit 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// The producer's clock; each record's time is `baseTimestamp + timestampDelta`.
    CreateTime,
    /// The broker's clock at append; every record's time is `maxTimestamp`.
    LogAppendTime,
}

impl TimestampType {
    pub(crate) fn from_attributes(attributes: i16) -> TimestampType {
        if attributes & TIMESTAMP_TYPE_BIT == 0 {
            TimestampType::CreateTime
        } else {
            TimestampType::LogAppendTime
        }
    }
}

pub(crate) fn is_transactional(attributes: i16) -> bool {
    attributes & TRANSACTIONAL_BIT != 0
}

pub(crate) fn is_control(attributes: i16) -> bool {
    attributes & CONTROL_BIT != 0
}

/// Builds an attributes value from its parts; bits 6-15 are left clear.
pub(crate) fn attributes_of(
    compression: Compression,
    timestamp_type: TimestampType,
    transactional: bool,
    control: bool,
) -> i16 {
    let mut attributes = compression.attribute_bits();
    if timestamp_type == TimestampType::LogAppendTime {
        attributes |= TIMESTAMP_TYPE_BIT;
    }
    if transactional {
        attributes |= TRANSACTIONAL_BIT;
    }
    if control {
        attributes |= CONTROL_BIT;
    }
    attributes
}

// Fixed-width big-endian accessors. Callers pass offsets from the table above on buffers
// already checked to hold a whole header, so the indexing here cannot fail on input; an
// out-of-range offset is a bug in this module and panics.

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[at..at + N]);
    array
}

pub(crate) fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(array_at(bytes, at))
}

pub(crate) fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(array_at(bytes, at))
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array_at(bytes, at))
}

pub(crate) fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(array_at(bytes, at))
}

pub(crate) fn write_i16(bytes: &mut [u8], at: usize, value: i16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn write_i32(bytes: &mut [u8], at: usize, value: i32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn write_i64(bytes: &mut [u8], at: usize, value: i64) {
    bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// The size of the batch at the front of `bytes` as its `batchLength` declares it
/// (`LOG_OVERHEAD_BYTES + batchLength`), nothing else checked; `None` if the field is not
/// all there or is negative. For code that must know how many bytes to read before it can
/// validate a batch (recovery's chunked scan).
pub(crate) fn declared_size_bytes(bytes: &[u8]) -> Option<usize> {
    let field = bytes.get(BATCH_LENGTH_AT..LOG_OVERHEAD_BYTES)?;
    let batch_length = read_i32(field, 0);
    Some(LOG_OVERHEAD_BYTES + usize::try_from(batch_length).ok()?)
}

/// The CRC-32C a batch must carry: over everything from `attributes` to its end.
pub(crate) fn crc_of(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_AT..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_codes_round_trip_and_5_to_7_are_invalid() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert_eq!(
                Compression::from_attributes(codec.attribute_bits()),
                Some(codec)
            );
        }
        for code in 5..8 {
            assert_eq!(Compression::from_attributes(code), None);
        }
        // Higher bits do not disturb the codec.
        assert_eq!(
            Compression::from_attributes(0x7f_f3),
            Some(Compression::Lz4)
        );
    }

    #[test]
    fn attribute_bits_are_where_kafka_puts_them() {
        let attributes = attributes_of(Compression::Zstd, TimestampType::LogAppendTime, true, true);
        assert_eq!(attributes, 0b11_1100);
        assert_eq!(
            TimestampType::from_attributes(attributes),
            TimestampType::LogAppendTime
        );
        assert_eq!(TimestampType::from_attributes(0), TimestampType::CreateTime);
        assert!(is_transactional(attributes) && is_control(attributes));
        assert!(!is_transactional(0) && !is_control(0));
    }

    #[test]
    fn big_endian_accessors_round_trip() {
        let mut bytes = [0u8; HEADER_SIZE_BYTES];
        write_i64(&mut bytes, BASE_OFFSET_AT, -2);
        write_i32(&mut bytes, BATCH_LENGTH_AT, 0x0102_0304);
        write_i16(&mut bytes, ATTRIBUTES_AT, -3);
        write_u32(&mut bytes, CRC_AT, 0xdead_beef);
        assert_eq!(read_i64(&bytes, BASE_OFFSET_AT), -2);
        assert_eq!(&bytes[8..12], &[1, 2, 3, 4]);
        assert_eq!(read_i32(&bytes, BATCH_LENGTH_AT), 0x0102_0304);
        assert_eq!(read_i16(&bytes, ATTRIBUTES_AT), -3);
        assert_eq!(read_u32(&bytes, CRC_AT), 0xdead_beef);
    }

    #[test]
    fn the_declared_size_counts_the_log_overhead_and_needs_the_whole_field() {
        let mut bytes = [0u8; HEADER_SIZE_BYTES];
        write_i32(&mut bytes, BATCH_LENGTH_AT, 100);
        assert_eq!(declared_size_bytes(&bytes), Some(112));
        assert_eq!(declared_size_bytes(&bytes[..LOG_OVERHEAD_BYTES]), Some(112));
        assert_eq!(declared_size_bytes(&bytes[..LOG_OVERHEAD_BYTES - 1]), None);
        write_i32(&mut bytes, BATCH_LENGTH_AT, -1);
        assert_eq!(declared_size_bytes(&bytes), None);
    }
}
