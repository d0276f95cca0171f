//! `RecordBatch`: a checked, zero-copy view of one `RecordBatch` v2 in a byte buffer.
//!
//! Invariants of a `RecordBatch` (established by `parse`, never re-checked by accessors):
//! its bytes are exactly one whole batch of at most the size limit; the magic byte is 2; the
//! CRC-32C matches; the compression codec is one Kafka defines; `recordCount` and
//! `lastOffsetDelta` are non-negative and, when the batch holds records, agree; and for an
//! uncompressed batch the records section is well formed and holds exactly `recordCount`
//! records. Compressed records are never decompressed.
//!
//! The header layout is the byte table in `layout.rs`.

use std::fmt;

use super::error::BatchError;
use super::layout::{
    self, Compression, TimestampType, ATTRIBUTES_AT, BASE_OFFSET_AT, BASE_SEQUENCE_AT,
    BASE_TIMESTAMP_AT, BATCH_LENGTH_AT, BATCH_LENGTH_MIN, CRC_AT, HEADER_SIZE_BYTES,
    LAST_OFFSET_DELTA_AT, LOG_OVERHEAD_BYTES, MAGIC_AT, MAGIC_V2, MAX_TIMESTAMP_AT,
    PARTITION_LEADER_EPOCH_AT, PRODUCER_EPOCH_AT, PRODUCER_ID_AT, RECORD_COUNT_AT,
};
use super::record::{count_records, Records};
use super::BATCH_SIZE_BYTES_MAX;

/// A validated `RecordBatch` v2 borrowed from a buffer.
///
/// ```
/// use ringlog_engine::batch::{BatchBuilder, RecordBatch};
///
/// let mut builder = BatchBuilder::new();
/// builder.push(0, Some(b"key"), Some(b"value"), &[]).unwrap();
/// let bytes = builder.build();
/// let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
/// assert!(rest.is_empty());
/// assert_eq!(batch.record_count(), 1);
/// ```
#[derive(Clone, Copy)]
pub struct RecordBatch<'a> {
    bytes: &'a [u8],
    compression: Compression,
}

impl<'a> RecordBatch<'a> {
    /// Checks the batch at the front of `bytes` against `BATCH_SIZE_BYTES_MAX` and returns it
    /// with the bytes that follow it.
    pub fn parse(bytes: &'a [u8]) -> Result<(RecordBatch<'a>, &'a [u8]), BatchError> {
        RecordBatch::parse_limited(bytes, BATCH_SIZE_BYTES_MAX)
    }

    /// Like `parse`, with a smaller size limit (a topic's `max.message.bytes`); a limit above
    /// `BATCH_SIZE_BYTES_MAX` is lowered to it.
    pub fn parse_limited(
        bytes: &'a [u8],
        batch_size_bytes_max: usize,
    ) -> Result<(RecordBatch<'a>, &'a [u8]), BatchError> {
        let size = frame(bytes, batch_size_bytes_max)?;
        let (bytes, rest) = bytes.split_at(size);
        let stored = layout::read_u32(bytes, CRC_AT);
        let computed = layout::crc_of(bytes);
        if stored != computed {
            return Err(BatchError::CrcMismatch { stored, computed });
        }
        let attributes = layout::read_i16(bytes, ATTRIBUTES_AT);
        let compression = Compression::from_attributes(attributes).ok_or(
            BatchError::UnknownCompression(Compression::code_of(attributes)),
        )?;
        let batch = RecordBatch { bytes, compression };
        batch.check_counts()?;
        Ok((batch, rest))
    }

    fn check_counts(&self) -> Result<(), BatchError> {
        let record_count = self.record_count();
        let last_offset_delta = self.last_offset_delta();
        // An empty batch (recordCount 0) is what log compaction leaves behind; its
        // lastOffsetDelta keeps the offsets its records had.
        let consistent = record_count >= 0
            && last_offset_delta >= 0
            && (record_count == 0 || i64::from(record_count) == i64::from(last_offset_delta) + 1);
        if !consistent {
            return Err(BatchError::RecordCountMismatch {
                record_count,
                last_offset_delta,
            });
        }
        if self.compression == Compression::None {
            let decoded = count_records(self.records_section())?;
            if decoded != record_count as usize {
                return Err(BatchError::RecordsDecodedMismatch {
                    record_count,
                    decoded,
                });
            }
        }
        Ok(())
    }

    /// The whole batch, header included, as it sits in the buffer.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Size of the whole batch: `LOG_OVERHEAD_BYTES + batchLength`.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes after the header: the records, or the compressed blob holding them.
    pub fn records_section(&self) -> &'a [u8] {
        &self.bytes[HEADER_SIZE_BYTES..]
    }

    /// The records of an uncompressed batch; `Err(Compressed)` for a compressed one.
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        match self.compression {
            Compression::None => Ok(Records::new(self.records_section())),
            compressed => Err(BatchError::Compressed(compressed)),
        }
    }

    pub fn base_offset(&self) -> i64 {
        layout::read_i64(self.bytes, BASE_OFFSET_AT)
    }

    pub fn batch_length(&self) -> i32 {
        layout::read_i32(self.bytes, BATCH_LENGTH_AT)
    }

    pub fn partition_leader_epoch(&self) -> i32 {
        layout::read_i32(self.bytes, PARTITION_LEADER_EPOCH_AT)
    }

    pub fn magic(&self) -> i8 {
        i8::from_be_bytes([self.bytes[MAGIC_AT]])
    }

    pub fn crc(&self) -> u32 {
        layout::read_u32(self.bytes, CRC_AT)
    }

    pub fn attributes(&self) -> i16 {
        layout::read_i16(self.bytes, ATTRIBUTES_AT)
    }

    pub fn last_offset_delta(&self) -> i32 {
        layout::read_i32(self.bytes, LAST_OFFSET_DELTA_AT)
    }

    pub fn base_timestamp(&self) -> i64 {
        layout::read_i64(self.bytes, BASE_TIMESTAMP_AT)
    }

    pub fn max_timestamp(&self) -> i64 {
        layout::read_i64(self.bytes, MAX_TIMESTAMP_AT)
    }

    pub fn producer_id(&self) -> i64 {
        layout::read_i64(self.bytes, PRODUCER_ID_AT)
    }

    pub fn producer_epoch(&self) -> i16 {
        layout::read_i16(self.bytes, PRODUCER_EPOCH_AT)
    }

    pub fn base_sequence(&self) -> i32 {
        layout::read_i32(self.bytes, BASE_SEQUENCE_AT)
    }

    pub fn record_count(&self) -> i32 {
        layout::read_i32(self.bytes, RECORD_COUNT_AT)
    }

    /// How many offsets the batch takes in the log: `lastOffsetDelta + 1`.
    pub fn offset_count(&self) -> u64 {
        // `parse` checked lastOffsetDelta >= 0.
        u64::from(self.last_offset_delta().unsigned_abs()) + 1
    }

    /// Attributes bits 0-2; always a defined codec, `parse` refuses the others.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Attributes bit 3.
    pub fn timestamp_type(&self) -> TimestampType {
        TimestampType::from_attributes(self.attributes())
    }

    /// Attributes bit 4.
    pub fn is_transactional(&self) -> bool {
        layout::is_transactional(self.attributes())
    }

    /// Attributes bit 5.
    pub fn is_control(&self) -> bool {
        layout::is_control(self.attributes())
    }
}

impl fmt::Debug for RecordBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBatch")
            .field("base_offset", &self.base_offset())
            .field("size_bytes", &self.size_bytes())
            .field("record_count", &self.record_count())
            .field("last_offset_delta", &self.last_offset_delta())
            .field("compression", &self.compression)
            .field("attributes", &self.attributes())
            .field("max_timestamp", &self.max_timestamp())
            .finish_non_exhaustive()
    }
}

/// The header fields of a batch that was validated already (by a leader when it accepted
/// the batch, or about to be by the log's append), read without computing its CRC again:
/// only the frame is checked (magic, length bounds, the whole batch present).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    /// `lastOffsetDelta + 1`, as [`RecordBatch::offset_count`]; a negative delta reads as
    /// one offset (validation refuses such a batch).
    pub offset_count: u64,
    pub size_bytes: usize,
}

impl FrameHeader {
    /// The header of the batch at the front of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, BatchError> {
        let size_bytes = frame(bytes, BATCH_SIZE_BYTES_MAX)?;
        let last_offset_delta = layout::read_i32(bytes, LAST_OFFSET_DELTA_AT);
        Ok(FrameHeader {
            base_offset: layout::read_i64(bytes, BASE_OFFSET_AT),
            partition_leader_epoch: layout::read_i32(bytes, PARTITION_LEADER_EPOCH_AT),
            offset_count: u64::try_from(last_offset_delta).map_or(1, |delta| delta + 1),
            size_bytes,
        })
    }

    /// The offset after the batch.
    pub fn offset_next(&self) -> i64 {
        self.base_offset + self.offset_count as i64
    }
}

/// Finds the size of the batch at the front of `bytes` from its header alone: checks that the
/// magic byte is 2, that `batchLength` is within bounds and the size limit, and that the whole
/// batch is present. Everything that touches a batch in place starts here.
pub(crate) fn frame(bytes: &[u8], batch_size_bytes_max: usize) -> Result<usize, BatchError> {
    let have = bytes.len();
    // The magic byte sits at the same offset in the legacy v0/v1 formats, so checking it
    // before the length gives old clients a precise error.
    if have <= MAGIC_AT {
        return Err(BatchError::Truncated {
            need: HEADER_SIZE_BYTES,
            have,
        });
    }
    let magic = i8::from_be_bytes([bytes[MAGIC_AT]]);
    if magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(magic));
    }
    let batch_length = layout::read_i32(bytes, BATCH_LENGTH_AT);
    let size = match usize::try_from(batch_length) {
        Ok(len) if len >= BATCH_LENGTH_MIN => len + LOG_OVERHEAD_BYTES,
        _ => return Err(BatchError::LengthOutOfBounds { batch_length }),
    };
    let max = batch_size_bytes_max.min(BATCH_SIZE_BYTES_MAX);
    if size > max {
        return Err(BatchError::TooLarge { len: size, max });
    }
    if size > have {
        return Err(BatchError::Truncated { need: size, have });
    }
    Ok(size)
}
