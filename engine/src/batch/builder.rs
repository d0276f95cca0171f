//! `BatchBuilder`: writes valid `RecordBatch` v2 bytes, for tests and the load generator.
//!
//! Records are encoded straight into the one output buffer: each record's size is computed
//! before it is written, so its length prefix goes first and nothing is staged elsewhere.
//! The header is filled in and the CRC-32C computed once, by `build`.
//!
//! Invariants: a built batch never exceeds `BATCH_SIZE_BYTES_MAX` (`push` refuses a record that
//! would cross it, which also keeps every length and the record count within `i32`); a batch
//! built with `build` always passes `RecordBatch::parse`. `build_opaque` writes whatever
//! compression code, record count and payload it is given, so tests can make batches that
//! pass through untouched or that `parse` must refuse.

use super::error::BatchError;
use super::layout::{
    self, attributes_of, Compression, TimestampType, ATTRIBUTES_AT, BASE_OFFSET_AT,
    BASE_SEQUENCE_AT, BASE_TIMESTAMP_AT, BATCH_LENGTH_AT, CRC_AT, HEADER_SIZE_BYTES,
    LAST_OFFSET_DELTA_AT, LOG_OVERHEAD_BYTES, MAGIC_AT, MAGIC_V2, MAX_TIMESTAMP_AT,
    PARTITION_LEADER_EPOCH_AT, PRODUCER_EPOCH_AT, PRODUCER_ID_AT, RECORD_COUNT_AT,
};
use super::record::Header;
use super::BATCH_SIZE_BYTES_MAX;

/// Kafka's "no producer id / epoch / sequence" for a producer that is not idempotent.
const NO_PRODUCER: i64 = -1;

/// Builds one `RecordBatch` v2.
///
/// ```
/// use ringlog_engine::batch::{BatchBuilder, Header, RecordBatch};
///
/// let mut builder = BatchBuilder::new().base_offset(42).base_timestamp(1_700_000_000_000);
/// let headers = [Header { key: b"trace", value: Some(b"abc") }];
/// builder.push(0, None, Some(b"first"), &headers).unwrap();
/// builder.push(5, Some(b"k"), Some(b"second"), &[]).unwrap();
/// let bytes = builder.build();
/// let (batch, _) = RecordBatch::parse(&bytes).unwrap();
/// assert_eq!(batch.max_timestamp(), 1_700_000_000_005);
/// ```
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    /// The header's bytes (filled by `build`) followed by the encoded records.
    buf: Vec<u8>,
    base_offset: i64,
    partition_leader_epoch: i32,
    base_timestamp: i64,
    max_timestamp: Option<i64>,
    timestamp_delta_max: Option<i64>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    timestamp_type: TimestampType,
    transactional: bool,
    control: bool,
    record_count: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty builder: base offset 0, leader epoch -1, timestamps 0, `CreateTime`, no
    /// producer id (-1), not transactional.
    pub fn new() -> BatchBuilder {
        BatchBuilder::with_capacity(0)
    }

    /// Like `new`, with room for `records_size_bytes` of encoded records before reallocating.
    pub fn with_capacity(records_size_bytes: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(HEADER_SIZE_BYTES + records_size_bytes);
        buf.resize(HEADER_SIZE_BYTES, 0);
        BatchBuilder {
            buf,
            base_offset: 0,
            partition_leader_epoch: -1,
            base_timestamp: 0,
            max_timestamp: None,
            timestamp_delta_max: None,
            producer_id: NO_PRODUCER,
            producer_epoch: NO_PRODUCER as i16,
            base_sequence: NO_PRODUCER as i32,
            timestamp_type: TimestampType::CreateTime,
            transactional: false,
            control: false,
            record_count: 0,
        }
    }

    #[must_use]
    pub fn base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }

    #[must_use]
    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// The time records' `timestamp_delta`s are relative to.
    #[must_use]
    pub fn base_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.base_timestamp = timestamp_ms;
        self
    }

    /// Overrides `maxTimestamp`, which otherwise is the base plus the largest record delta
    /// (or the base timestamp for a batch without decoded records).
    #[must_use]
    pub fn max_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.max_timestamp = Some(timestamp_ms);
        self
    }

    /// Producer id, epoch and the sequence number of the first record (idempotent producers).
    #[must_use]
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    #[must_use]
    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.timestamp_type = timestamp_type;
        self
    }

    #[must_use]
    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    #[must_use]
    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    /// Number of records pushed so far.
    pub fn record_count(&self) -> i32 {
        self.record_count
    }

    /// Size the batch would have if built now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record with the next offset delta. Refuses (and leaves the builder as it
    /// was) a record that would make the batch larger than `BATCH_SIZE_BYTES_MAX`.
    pub fn push(
        &mut self,
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) -> Result<(), BatchError> {
        let offset_delta = self.record_count;
        let body_size = record_body_size(timestamp_delta, offset_delta, key, value, headers);
        let size = self
            .buf
            .len()
            .saturating_add(varint_size(body_size as i32))
            .saturating_add(body_size);
        if size > BATCH_SIZE_BYTES_MAX {
            return Err(BatchError::TooLarge {
                len: size,
                max: BATCH_SIZE_BYTES_MAX,
            });
        }
        // Within the limit, every length below fits an i32 and the count cannot overflow.
        let buf = &mut self.buf;
        put_varint(buf, body_size as i32);
        buf.push(0); // record attributes, unused
        put_varlong(buf, timestamp_delta);
        put_varint(buf, offset_delta);
        put_nullable_bytes(buf, key);
        put_nullable_bytes(buf, value);
        put_varint(buf, headers.len() as i32);
        for header in headers {
            put_varint(buf, header.key.len() as i32);
            buf.extend_from_slice(header.key);
            put_nullable_bytes(buf, header.value);
        }
        self.record_count += 1;
        let delta_max = self
            .timestamp_delta_max
            .map_or(timestamp_delta, |m| m.max(timestamp_delta));
        self.timestamp_delta_max = Some(delta_max);
        Ok(())
    }

    /// Fills in the header and CRC and returns the batch.
    pub fn build(self) -> Vec<u8> {
        let last_offset_delta = (self.record_count - 1).max(0);
        let compression = Compression::None;
        let record_count = self.record_count;
        self.finish(compression, record_count, last_offset_delta)
    }

    /// Builds a batch whose records section is `payload`, taken as already compressed with
    /// `compression`, claiming `record_count` records (`lastOffsetDelta` = count - 1, or 0).
    /// Nothing checks that the payload matches; this is for batches that must pass through
    /// untouched and for batches the validator must refuse.
    ///
    /// # Panics
    /// If records were pushed first: the two ways of building a batch do not mix.
    pub fn build_opaque(
        mut self,
        compression: Compression,
        record_count: i32,
        payload: &[u8],
    ) -> Result<Vec<u8>, BatchError> {
        assert_eq!(
            self.record_count, 0,
            "build_opaque on a builder with pushed records"
        );
        let size = HEADER_SIZE_BYTES.saturating_add(payload.len());
        if size > BATCH_SIZE_BYTES_MAX {
            return Err(BatchError::TooLarge {
                len: size,
                max: BATCH_SIZE_BYTES_MAX,
            });
        }
        self.buf.extend_from_slice(payload);
        let last_offset_delta = record_count.saturating_sub(1).max(0);
        Ok(self.finish(compression, record_count, last_offset_delta))
    }

    fn finish(mut self, compression: Compression, record_count: i32, last_delta: i32) -> Vec<u8> {
        let max_timestamp = self.max_timestamp.unwrap_or_else(|| {
            let delta_max = self.timestamp_delta_max.unwrap_or(0);
            self.base_timestamp.saturating_add(delta_max)
        });
        let attributes = attributes_of(
            compression,
            self.timestamp_type,
            self.transactional,
            self.control,
        );
        let batch_length = (self.buf.len() - LOG_OVERHEAD_BYTES) as i32;
        let buf = &mut self.buf;
        layout::write_i64(buf, BASE_OFFSET_AT, self.base_offset);
        layout::write_i32(buf, BATCH_LENGTH_AT, batch_length);
        layout::write_i32(buf, PARTITION_LEADER_EPOCH_AT, self.partition_leader_epoch);
        buf[MAGIC_AT] = MAGIC_V2.to_be_bytes()[0];
        layout::write_i16(buf, ATTRIBUTES_AT, attributes);
        layout::write_i32(buf, LAST_OFFSET_DELTA_AT, last_delta);
        layout::write_i64(buf, BASE_TIMESTAMP_AT, self.base_timestamp);
        layout::write_i64(buf, MAX_TIMESTAMP_AT, max_timestamp);
        layout::write_i64(buf, PRODUCER_ID_AT, self.producer_id);
        layout::write_i16(buf, PRODUCER_EPOCH_AT, self.producer_epoch);
        layout::write_i32(buf, BASE_SEQUENCE_AT, self.base_sequence);
        layout::write_i32(buf, RECORD_COUNT_AT, record_count);
        let crc = layout::crc_of(buf);
        layout::write_u32(buf, CRC_AT, crc);
        self.buf
    }
}

/// Bytes a record takes after its length prefix. Saturates instead of overflowing, so an
/// absurd input shows up as a size over the limit.
fn record_body_size(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header<'_>],
) -> usize {
    let fixed = 1 + varlong_size(timestamp_delta) + varint_size(offset_delta);
    let headers_size = headers.iter().fold(0usize, |sum, header| {
        sum.saturating_add(length_size(Some(header.key)))
            .saturating_add(length_size(header.value))
    });
    fixed
        .saturating_add(length_size(key))
        .saturating_add(length_size(value))
        .saturating_add(varint_size(headers.len().try_into().unwrap_or(i32::MAX)))
        .saturating_add(headers_size)
}

/// Size of a length-prefixed, nullable byte string.
fn length_size(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_size(-1),
        Some(bytes) => {
            let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
            varint_size(len).saturating_add(bytes.len())
        }
    }
}

fn zigzag32(value: i32) -> u64 {
    u64::from(((value << 1) ^ (value >> 31)) as u32)
}

fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unsigned_size(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub(crate) fn varint_size(value: i32) -> usize {
    unsigned_size(zigzag32(value))
}

pub(crate) fn varlong_size(value: i64) -> usize {
    unsigned_size(zigzag64(value))
}

fn put_unsigned(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, value: i32) {
    put_unsigned(buf, zigzag32(value));
}

pub(crate) fn put_varlong(buf: &mut Vec<u8>, value: i64) {
    put_unsigned(buf, zigzag64(value));
}

fn put_nullable_bytes(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(bytes) => {
            put_varint(buf, bytes.len() as i32);
            buf.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_as_kafka_expects() {
        let cases: [(i32, &[u8]); 6] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (150, &[0xac, 0x02]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (value, encoded) in cases {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf, encoded, "varint {value}");
            assert_eq!(varint_size(value), encoded.len());
        }
        // The longest encodings: 5 bytes for 32 bits, 10 for 64.
        assert_eq!(varint_size(i32::MIN), 5);
        assert_eq!(varlong_size(i64::MIN), 10);
        assert_eq!(varlong_size(i64::MAX), 10);
    }

    #[test]
    fn push_refuses_a_record_over_the_limit_and_leaves_the_builder_unchanged() {
        let mut builder = BatchBuilder::new();
        builder.push(0, None, Some(b"v"), &[]).unwrap();
        let size = builder.size_bytes();
        let huge = vec![0u8; BATCH_SIZE_BYTES_MAX];
        let result = builder.push(0, None, Some(&huge), &[]);
        assert!(matches!(
            result,
            Err(BatchError::TooLarge {
                max: BATCH_SIZE_BYTES_MAX,
                ..
            })
        ));
        assert_eq!((builder.size_bytes(), builder.record_count()), (size, 1));
    }

    #[test]
    fn record_size_prediction_matches_what_is_written() {
        let headers = [
            Header {
                key: b"h",
                value: None,
            },
            Header {
                key: b"",
                value: Some(b"x"),
            },
        ];
        let mut builder = BatchBuilder::new();
        builder.push(-300, Some(&[7; 200]), None, &headers).unwrap();
        let body = record_body_size(-300, 0, Some(&[7; 200]), None, &headers);
        assert_eq!(
            builder.size_bytes(),
            HEADER_SIZE_BYTES + varint_size(body as i32) + body
        );
    }
}
