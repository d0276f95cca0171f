//! Kafka `RecordBatch` v2: zero-copy checking, in-place stamping, and building.
//!
//! Producers send record batches; the broker stores them as they came. This module is the
//! engine's whole knowledge of that format: `validate` decides whether a Produce request's
//! records may be written (and recovery uses the same checks, through `validate_prefix`, to
//! find the end of a log), the `stamp_*` functions make the few changes Kafka allows a broker
//! to make in place, `RecordBatch` reads a checked batch's header and records without
//! copying, and `BatchBuilder` writes batches for tests and the load generator.
//!
//! Invariants: every length read from a batch is checked against the bytes present and
//! against `BATCH_SIZE_BYTES_MAX` before it is used; malformed input yields a `BatchError`,
//! never a panic; compressed records are never decompressed, only passed through.
//!
//! The header's byte table is in `batch/layout.rs`, the record format's in `batch/record.rs`.

mod builder;
mod error;
mod layout;
mod record;
mod stamp;
mod validate;
mod view;

#[cfg(test)]
mod tests;

pub use builder::BatchBuilder;
pub use error::{BatchError, RecordError};
pub use layout::{Compression, TimestampType, HEADER_SIZE_BYTES, LOG_OVERHEAD_BYTES, MAGIC_V2};
// The header table's offsets and readers, for the log's reading of headers it wrote
// (`log/segment.rs`) and recovery's chunked scan: one layout for the whole engine.
pub(crate) use layout::{
    declared_size_bytes, read_i16, read_i32, read_i64, BASE_OFFSET_AT, BASE_SEQUENCE_AT,
    LAST_OFFSET_DELTA_AT, MAX_TIMESTAMP_AT, PARTITION_LEADER_EPOCH_AT, PRODUCER_EPOCH_AT,
    PRODUCER_ID_AT, RECORD_COUNT_AT,
};
pub use record::{Header, Record, Records};
pub use stamp::{
    restamp_create_time, set_partition_leader_epoch, stamp_base_offset, stamp_log_append_time,
    stamp_split,
};
pub use validate::{validate, validate_prefix, BatchInfo, ValidPrefix};
pub use view::{FrameHeader, RecordBatch};

pub use crate::limits::BATCH_SIZE_BYTES_MAX;
