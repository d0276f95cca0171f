//! Why a record batch was refused.
//!
//! `BatchError` is what every function in `batch` returns; the server maps it to Kafka's error
//! codes (`Truncated`, `CrcMismatch`, `InvalidRecord` … to `CORRUPT_MESSAGE`, `TooLarge` to
//! `MESSAGE_TOO_LARGE`, `BadMagic` to `UNSUPPORTED_VERSION` or `CORRUPT_MESSAGE`). `RecordError`
//! says what is wrong inside one record and is kept as the `source()` of
//! `BatchError::InvalidRecord`.

use super::layout::Compression;

/// A record batch that is malformed, too large, or not in the v2 format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The buffer ends before the batch does (a torn write, or a short read).
    #[error("record batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },

    /// `batchLength` is smaller than a header without records, or negative.
    #[error(
        "record batch declares batchLength {batch_length}, below the minimum of {min} bytes",
        min = super::layout::BATCH_LENGTH_MIN
    )]
    LengthOutOfBounds { batch_length: i32 },

    /// The whole batch (12 + batchLength bytes) is larger than the configured limit.
    #[error("record batch of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },

    /// The magic byte is not 2: a legacy (v0/v1) message set, or garbage.
    #[error("record batch has magic byte {0}; only RecordBatch v2 (magic 2) is supported")]
    BadMagic(i8),

    /// The stored CRC-32C does not match the bytes from `attributes` to the end.
    #[error("record batch CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },

    /// Attributes bits 0-2 hold a compression codec Kafka does not define (5-7).
    #[error("record batch attributes name unknown compression codec {0} (0-4 are defined)")]
    UnknownCompression(u8),

    /// `recordCount` and `lastOffsetDelta` disagree, or one of them is negative.
    #[error(
        "record batch recordCount {record_count} does not match \
         lastOffsetDelta {last_offset_delta} + 1"
    )]
    RecordCountMismatch {
        record_count: i32,
        last_offset_delta: i32,
    },

    /// The records section of an uncompressed batch holds a different number of records than
    /// `recordCount` says.
    #[error("record batch recordCount is {record_count} but its records section holds {decoded}")]
    RecordsDecodedMismatch { record_count: i32, decoded: usize },

    /// A produced batch holds no records; Kafka refuses these from producers.
    #[error("record batch holds no records (recordCount 0)")]
    Empty,

    /// One record of an uncompressed batch is malformed.
    #[error("record {index} of the batch is malformed: {source}")]
    InvalidRecord {
        index: usize,
        #[source]
        source: RecordError,
    },

    /// Records were asked of a compressed batch; this module never decompresses.
    #[error(
        "record batch is compressed with {0}; its records cannot be read without decompressing"
    )]
    Compressed(Compression),
}

/// What is wrong inside one record (the record format of `RecordBatch` v2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A field runs past the end of the record or of the records section.
    #[error("{field} needs {need} bytes but only {have} remain")]
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },

    /// A varint has more bytes, or a larger value, than its 32- or 64-bit type allows.
    #[error("{field} is a varint that overflows its type")]
    VarintOverflow { field: &'static str },

    /// A length or count is negative where only -1 (null) or nothing negative is allowed.
    #[error("{field} is {value}, which is not a valid length")]
    InvalidLength { field: &'static str, value: i32 },

    /// The record's length prefix disagrees with the bytes its fields take.
    #[error("record declares {declared} bytes but its fields take {consumed}")]
    SizeMismatch { declared: usize, consumed: usize },
}
