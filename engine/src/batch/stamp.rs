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
    self, ATTRIBUTES_AT, BASE_OFFSET_AT, CRC_AT, MAX_TIMESTAMP_AT, PARTITION_LEADER_EPOCH_AT,
    TIMESTAMP_TYPE_BIT,
};
use super::view::frame;
use super::BATCH_SIZE_BYTES_MAX;

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
