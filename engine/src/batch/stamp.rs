//! In-place changes the broker makes to a batch it has accepted.
//!
//! Kafka lets a broker change three things in a produced batch: the base offset and the
//! partition leader epoch, which lie outside the CRC and so are written without touching it,
//! and, for `LogAppendTime` topics, the timestamp type and `maxTimestamp`, after which the CRC is
//! recomputed. Nothing else in a batch is ever rewritten.
//!
//! Each function takes a buffer whose front is one batch, checks its frame (magic, length,
//! that the whole batch is present) before writing, and never writes past that batch.
//! They do not re-verify the CRC: callers stamp batches that `validate` or `RecordBatch::parse`
//! has just accepted. Because `stamp_log_append_time` recomputes the CRC over the bytes as they
//! are, stamping a batch that was never validated would make its corruption undetectable.

use super::error::BatchError;
use super::layout::{
    self, ATTRIBUTES_AT, BASE_OFFSET_AT, BASE_TIMESTAMP_AT, CRC_AT, MAX_TIMESTAMP_AT,
    PARTITION_LEADER_EPOCH_AT, TIMESTAMP_TYPE_BIT,
};
use super::view::frame;
use super::{BATCH_SIZE_BYTES_MAX, HEADER_SIZE_BYTES};

/// Writes the batch's `baseOffset`; outside the CRC, so the CRC stays as it is.
pub fn stamp_base_offset(batch: &mut [u8], base_offset: i64) -> Result<(), BatchError> {
    frame(batch, BATCH_SIZE_BYTES_MAX)?;
    layout::write_i64(batch, BASE_OFFSET_AT, base_offset);
    Ok(())
}

/// Writes the batch's `partitionLeaderEpoch`; outside the CRC, so the CRC stays as it is.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) -> Result<(), BatchError> {
    frame(batch, BATCH_SIZE_BYTES_MAX)?;
    layout::write_i32(batch, PARTITION_LEADER_EPOCH_AT, epoch);
    Ok(())
}

/// Marks the batch `LogAppendTime` (attributes bit 3), sets `maxTimestamp` to `timestamp_ms` and
/// recomputes the CRC, as Kafka's broker does (`DefaultRecordBatch.setMaxTimestamp`).
///
/// `baseTimestamp` and the records' deltas are left alone: a `LogAppendTime` batch's records
/// all read as `maxTimestamp`, and Kafka keeps the producer's base timestamp in place.
pub fn stamp_log_append_time(batch: &mut [u8], timestamp_ms: i64) -> Result<(), BatchError> {
    let size = frame(batch, BATCH_SIZE_BYTES_MAX)?;
    let batch = &mut batch[..size];
    let attributes = layout::read_i16(batch, ATTRIBUTES_AT) | TIMESTAMP_TYPE_BIT;
    layout::write_i16(batch, ATTRIBUTES_AT, attributes);
    layout::write_i64(batch, MAX_TIMESTAMP_AT, timestamp_ms);
    let crc = layout::crc_of(batch);
    layout::write_u32(batch, CRC_AT, crc);
    Ok(())
}

/// Stamps a batch whose header and records lie apart, as the write path keeps them: the
/// producer's buffer stays untouched and shared, and the group write sends a stamped copy
/// of each header followed by the records straight from that buffer. `header` is the copy
/// (exactly [`HEADER_SIZE_BYTES`]), `records` the rest of the batch. Writes `baseOffset`
/// and, with `log_append_time`, what [`stamp_log_append_time`] writes (the CRC is then
/// computed over the header copy and the records).
///
/// ```
/// use ringlog_engine::batch::{stamp_split, BatchBuilder, RecordBatch, HEADER_SIZE_BYTES};
///
/// let mut builder = BatchBuilder::new();
/// builder.push(0, None, Some(b"value"), &[]).unwrap();
/// let batch = builder.build();
/// let mut header = batch[..HEADER_SIZE_BYTES].to_vec();
/// stamp_split(&mut header, &batch[HEADER_SIZE_BYTES..], 42, Some(7)).unwrap();
/// header.extend_from_slice(&batch[HEADER_SIZE_BYTES..]);
/// let (stamped, _) = RecordBatch::parse(&header).unwrap(); // checks the CRC
/// assert_eq!((stamped.base_offset(), stamped.max_timestamp()), (42, 7));
/// ```
pub fn stamp_split(
    header: &mut [u8],
    records: &[u8],
    base_offset: i64,
    log_append_time: Option<i64>,
) -> Result<(), BatchError> {
    if header.len() != HEADER_SIZE_BYTES {
        return Err(BatchError::Truncated {
            need: HEADER_SIZE_BYTES,
            have: header.len(),
        });
    }
    // Given the header alone, `frame` checks magic, length bounds and the size limit, and
    // then reports the batch as truncated at the size it declares.
    let size = match frame(header, BATCH_SIZE_BYTES_MAX) {
        Ok(size) => size,
        Err(BatchError::Truncated { need, .. }) => need,
        Err(error) => return Err(error),
    };
    if size != HEADER_SIZE_BYTES + records.len() {
        return Err(BatchError::Truncated {
            need: size,
            have: HEADER_SIZE_BYTES + records.len(),
        });
    }
    layout::write_i64(header, BASE_OFFSET_AT, base_offset);
    if let Some(timestamp_ms) = log_append_time {
        let attributes = layout::read_i16(header, ATTRIBUTES_AT) | TIMESTAMP_TYPE_BIT;
        layout::write_i16(header, ATTRIBUTES_AT, attributes);
        layout::write_i64(header, MAX_TIMESTAMP_AT, timestamp_ms);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[ATTRIBUTES_AT..]), records);
        layout::write_u32(header, CRC_AT, crc);
    }
    Ok(())
}

/// For a producer that sends one built batch many times (the load generator): moves the
/// batch's `CreateTime` timestamps to start at `base_timestamp_ms` (`maxTimestamp` keeps its
/// distance from `baseTimestamp`, saturating at the ends of `i64`; the records' deltas are
/// untouched) and recomputes the CRC, which also covers any record bytes the caller
/// rewrote in place (same lengths) before.
pub fn restamp_create_time(batch: &mut [u8], base_timestamp_ms: i64) -> Result<(), BatchError> {
    let size = frame(batch, BATCH_SIZE_BYTES_MAX)?;
    let batch = &mut batch[..size];
    // Any two i64 are less than 2^64 apart, so the sums below cannot overflow an i128.
    let span = i128::from(layout::read_i64(batch, MAX_TIMESTAMP_AT))
        - i128::from(layout::read_i64(batch, BASE_TIMESTAMP_AT));
    let max_timestamp_ms = (i128::from(base_timestamp_ms) + span)
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    layout::write_i64(batch, BASE_TIMESTAMP_AT, base_timestamp_ms);
    layout::write_i64(batch, MAX_TIMESTAMP_AT, max_timestamp_ms);
    let crc = layout::crc_of(batch);
    layout::write_u32(batch, CRC_AT, crc);
    Ok(())
}
