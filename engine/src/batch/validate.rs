//! The batch validator: the one place that decides whether bytes are acceptable batches.
//!
//! The write path hands it a Produce request's records field (one or more concatenated
//! batches) and writes nothing unless every batch passes (`validate`); recovery walks a
//! segment's tail with the same checks and keeps the longest valid prefix (`validate_prefix`).
//!
//! Each batch must pass `RecordBatch::parse_limited` (frame, size limit, magic, CRC, codec,
//! record count consistency, and for uncompressed batches a well-formed records section) and
//! hold at least one record, as Kafka requires of produced batches.

use super::error::BatchError;
use super::view::RecordBatch;

/// What a run of valid batches holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchInfo {
    /// Number of whole, valid batches.
    pub batch_count: usize,
    /// Sum of their `recordCount`s.
    pub record_count: u64,
    /// Offsets they take in the log: the sum of `lastOffsetDelta + 1`.
    pub offset_count: u64,
    /// The largest `maxTimestamp` among them; `None` when there are no batches.
    pub max_timestamp: Option<i64>,
    /// Bytes they span, from the start of the buffer.
    pub size_bytes: usize,
}

impl BatchInfo {
    fn add(&mut self, batch: &RecordBatch<'_>) {
        self.batch_count += 1;
        self.record_count += u64::from(batch.record_count().unsigned_abs());
        self.offset_count += batch.offset_count();
        let max = batch.max_timestamp();
        self.max_timestamp = Some(self.max_timestamp.map_or(max, |seen| seen.max(max)));
        self.size_bytes += batch.size_bytes();
    }
}

/// The longest valid prefix of a buffer, and why it stopped short of the end, if it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidPrefix {
    /// The whole, valid batches at the front of the buffer.
    pub valid: BatchInfo,
    /// The error of the first batch that did not pass; `None` if the prefix is the buffer.
    pub error: Option<BatchError>,
}

/// Validates every batch in `bytes`, each against `batch_size_bytes_max` (lowered to
/// `BATCH_SIZE_BYTES_MAX` if larger); fails on the first bad one. An empty buffer is valid and
/// holds no batches.
///
/// ```
/// use ringlog_engine::batch::{validate, BatchBuilder, BATCH_SIZE_BYTES_MAX};
///
/// let mut builder = BatchBuilder::new();
/// builder.push(0, None, Some(b"v"), &[]).unwrap();
/// let mut bytes = builder.build();
/// bytes.extend_from_slice(&bytes.clone());
/// let info = validate(&bytes, BATCH_SIZE_BYTES_MAX).unwrap();
/// assert_eq!((info.batch_count, info.record_count), (2, 2));
/// ```
pub fn validate(bytes: &[u8], batch_size_bytes_max: usize) -> Result<BatchInfo, BatchError> {
    let prefix = validate_prefix(bytes, batch_size_bytes_max);
    match prefix.error {
        None => Ok(prefix.valid),
        Some(error) => Err(error),
    }
}

/// Validates batches from the front of `bytes` until the end or the first bad batch.
pub fn validate_prefix(bytes: &[u8], batch_size_bytes_max: usize) -> ValidPrefix {
    let mut valid = BatchInfo::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match validate_one(rest, batch_size_bytes_max) {
            Ok((batch, next)) => {
                valid.add(&batch);
                rest = next;
            }
            Err(error) => {
                return ValidPrefix {
                    valid,
                    error: Some(error),
                }
            }
        }
    }
    ValidPrefix { valid, error: None }
}

fn validate_one(
    bytes: &[u8],
    batch_size_bytes_max: usize,
) -> Result<(RecordBatch<'_>, &[u8]), BatchError> {
    let (batch, rest) = RecordBatch::parse_limited(bytes, batch_size_bytes_max)?;
    if batch.record_count() == 0 {
        return Err(BatchError::Empty);
    }
    Ok((batch, rest))
}
