//! The batch validator's fuzz properties: `validate_prefix` over arbitrary bytes, and what
//! may be done with the batches it accepts.

use arbitrary::Unstructured;

use super::fix_batch_crcs;
use crate::batch::{
    restamp_create_time, set_partition_leader_epoch, stamp_base_offset, stamp_log_append_time,
    stamp_split, validate, validate_prefix, BatchBuilder, Compression, Record, RecordBatch,
    TimestampType, BATCH_SIZE_BYTES_MAX, HEADER_SIZE_BYTES, MAGIC_V2,
};

/// The batch size limits an input runs with: the engine's, and small ones (a topic's
/// `max.message.bytes`) that cut through batches.
const SIZE_LIMITS: [usize; 4] = [BATCH_SIZE_BYTES_MAX, HEADER_SIZE_BYTES, 128, 1024];

/// Where the CRC-32C a batch carries starts, and where what it covers starts
/// (`batch/layout.rs`), restated so the check does not trust the code it checks.
const CRC_AT: usize = 17;
const CRC_COVERS_FROM: usize = 21;

/// Validates the bytes after a byte of choices (the size limit, whether to give every
/// batch a correct CRC first so that the fuzzer gets past it) and checks the longest valid
/// prefix: it re-validates to the same result, the first bad batch is refused for itself,
/// every accepted batch has the right CRC and consistent counts, its records decode and
/// encode again to equal records, and the broker's in-place stamps keep it valid.
pub fn batch_validator(data: &[u8]) {
    let mut choices = Unstructured::new(data);
    let Ok(choice) = choices.arbitrary::<u8>() else {
        return;
    };
    let limit = SIZE_LIMITS[usize::from(choice & 0b11)];
    let mut bytes = choices.take_rest().to_vec();
    if choice & 0b100 != 0 {
        fix_batch_crcs(&mut bytes);
    }
    let prefix = validate_prefix(&bytes, limit);
    let valid_bytes = prefix.valid.size_bytes;
    assert!(
        valid_bytes <= bytes.len(),
        "the valid prefix is past the input"
    );
    assert_eq!(prefix.error.is_none(), valid_bytes == bytes.len());
    assert_eq!(validate(&bytes[..valid_bytes], limit), Ok(prefix.valid));
    if let Some(error) = &prefix.error {
        let rest = validate_prefix(&bytes[valid_bytes..], limit);
        assert_eq!(rest.valid.batch_count, 0, "a refused batch accepted alone");
        assert_eq!(
            rest.error.as_ref(),
            Some(error),
            "a batch judged by what precedes it"
        );
    }
    let mut rest = &bytes[..valid_bytes];
    let (mut batch_count, mut record_count, mut offset_count) = (0, 0, 0);
    let mut max_timestamp = None;
    while !rest.is_empty() {
        let Ok((batch, next)) = RecordBatch::parse_limited(rest, limit) else {
            panic!("a batch of the valid prefix does not parse");
        };
        check_batch(&batch, limit);
        check_round_trip(&batch);
        check_stamps(batch.as_bytes());
        batch_count += 1;
        record_count += u64::from(batch.record_count().unsigned_abs());
        offset_count += batch.offset_count();
        max_timestamp = Some(max_timestamp.map_or(batch.max_timestamp(), |max: i64| {
            max.max(batch.max_timestamp())
        }));
        rest = next;
    }
    assert_eq!(batch_count, prefix.valid.batch_count);
    assert_eq!(record_count, prefix.valid.record_count);
    assert_eq!(offset_count, prefix.valid.offset_count);
    assert_eq!(max_timestamp, prefix.valid.max_timestamp);
}

/// What `parse` promises of a batch, checked from its bytes.
fn check_batch(batch: &RecordBatch<'_>, limit: usize) {
    let bytes = batch.as_bytes();
    assert!(
        bytes.len() <= limit.min(BATCH_SIZE_BYTES_MAX),
        "a batch over the limit"
    );
    assert_eq!(bytes.len(), 12 + batch.batch_length() as usize);
    assert_eq!(batch.magic(), MAGIC_V2);
    let stored = u32::from_be_bytes([
        bytes[CRC_AT],
        bytes[CRC_AT + 1],
        bytes[CRC_AT + 2],
        bytes[CRC_AT + 3],
    ]);
    assert_eq!(
        stored,
        crc32c::crc32c(&bytes[CRC_COVERS_FROM..]),
        "wrong CRC accepted"
    );
    assert_eq!(batch.crc(), stored);
    assert!(batch.record_count() > 0, "an empty batch accepted");
    assert_eq!(
        i64::from(batch.record_count()),
        i64::from(batch.last_offset_delta()) + 1
    );
    assert_eq!(
        batch.compression(),
        Compression::from_attributes(batch.attributes()).unwrap_or(Compression::None)
    );
}

/// Decodes an uncompressed batch's records, builds a batch of them again, and checks that
/// it decodes to the same records (the builder numbers offsets itself and writes zero
/// record attributes, so those are not compared).
fn check_round_trip(batch: &RecordBatch<'_>) {
    let Ok(records) = batch.records() else {
        assert_ne!(batch.compression(), Compression::None);
        return;
    };
    let records: Vec<Record<'_>> = records
        .map(|record| match record {
            Ok(record) => record,
            Err(error) => panic!("a record of a valid batch does not decode: {error}"),
        })
        .collect();
    assert_eq!(records.len(), batch.record_count() as usize);
    let mut builder = BatchBuilder::new()
        .base_offset(batch.base_offset())
        .partition_leader_epoch(batch.partition_leader_epoch())
        .base_timestamp(batch.base_timestamp())
        .max_timestamp(batch.max_timestamp())
        .producer(
            batch.producer_id(),
            batch.producer_epoch(),
            batch.base_sequence(),
        )
        .timestamp_type(batch.timestamp_type())
        .transactional(batch.is_transactional())
        .control(batch.is_control());
    for record in &records {
        let pushed = builder.push(
            record.timestamp_delta,
            record.key,
            record.value,
            &record.headers,
        );
        if let Err(error) = pushed {
            panic!("a decoded record does not encode: {error}");
        }
    }
    let rebuilt = builder.build();
    assert!(
        rebuilt.len() <= batch.size_bytes(),
        "re-encoding grew the batch"
    );
    let Ok((again, rest)) = RecordBatch::parse(&rebuilt) else {
        panic!("a rebuilt batch does not parse");
    };
    assert!(rest.is_empty());
    let fields = |b: &RecordBatch<'_>| {
        (
            b.base_offset(),
            b.partition_leader_epoch(),
            b.base_timestamp(),
            b.max_timestamp(),
            (b.producer_id(), b.producer_epoch(), b.base_sequence()),
            (b.timestamp_type(), b.is_transactional(), b.is_control()),
            b.record_count(),
        )
    };
    assert_eq!(fields(&again), fields(batch));
    let Ok(decoded) = again.records() else {
        panic!("a rebuilt batch is compressed");
    };
    for (record, again) in records.iter().zip(decoded) {
        let Ok(again) = again else {
            panic!("a rebuilt record does not decode");
        };
        assert_eq!(
            (
                again.timestamp_delta,
                again.key,
                again.value,
                &again.headers
            ),
            (
                record.timestamp_delta,
                record.key,
                record.value,
                &record.headers
            ),
            "record round trip"
        );
    }
}

/// Applies each in-place stamp the broker makes to a copy of a valid batch and checks that
/// the result is still a valid batch (right CRC) that differs only where the stamp writes.
fn check_stamps(original: &[u8]) {
    let parse = |bytes: &[u8]| -> (i64, i32, i64, i64, TimestampType) {
        let Ok((batch, rest)) = RecordBatch::parse(bytes) else {
            panic!("a stamped batch does not parse");
        };
        assert!(rest.is_empty());
        (
            batch.base_offset(),
            batch.partition_leader_epoch(),
            batch.base_timestamp(),
            batch.max_timestamp(),
            batch.timestamp_type(),
        )
    };
    let (base_offset, _, base_timestamp, max_timestamp, _) = parse(original);

    let mut copy = original.to_vec();
    assert_eq!(stamp_base_offset(&mut copy, 7), Ok(()));
    assert_eq!(set_partition_leader_epoch(&mut copy, 3), Ok(()));
    assert_eq!(parse(&copy).0, 7);
    assert_eq!(parse(&copy).1, 3);
    assert_eq!(
        copy[MAGIC_AT..],
        original[MAGIC_AT..],
        "a stamp wrote inside the CRC"
    );

    let mut copy = original.to_vec();
    assert_eq!(stamp_log_append_time(&mut copy, 1_234), Ok(()));
    let stamped = parse(&copy);
    assert_eq!(stamped.3, 1_234);
    assert_eq!(stamped.4, TimestampType::LogAppendTime);
    assert_eq!((stamped.0, stamped.2), (base_offset, base_timestamp));
    assert_eq!(
        unchanged(
            &copy,
            &[CRC_AT..CRC_AT + 4, ATTRIBUTES_LOW_AT..ATTRIBUTES_LOW_AT + 1]
        ),
        unchanged(
            original,
            &[CRC_AT..CRC_AT + 4, ATTRIBUTES_LOW_AT..ATTRIBUTES_LOW_AT + 1]
        ),
    );

    let mut header = original[..HEADER_SIZE_BYTES].to_vec();
    let records = &original[HEADER_SIZE_BYTES..];
    assert_eq!(stamp_split(&mut header, records, 7, Some(1_234)), Ok(()));
    header.extend_from_slice(records);
    assert_eq!(stamp_base_offset(&mut copy, 7), Ok(()));
    assert_eq!(
        header, copy,
        "split stamping differs from stamping in place"
    );

    let mut copy = original.to_vec();
    assert_eq!(restamp_create_time(&mut copy, 1_000), Ok(()));
    let restamped = parse(&copy);
    assert_eq!(restamped.2, 1_000);
    let span = i128::from(max_timestamp) - i128::from(base_timestamp);
    let expected = (1_000 + span).clamp(i128::from(i64::MIN), i128::from(i64::MAX));
    assert_eq!(i128::from(restamped.3), expected, "restamped maxTimestamp");
}

/// Where a stamp writes, besides the CRC: the attributes' low byte (the timestamp type
/// bit) and `maxTimestamp`; stamps of the base offset and epoch write before `MAGIC_AT`.
const MAGIC_AT: usize = 16;
const ATTRIBUTES_LOW_AT: usize = 22;
const MAX_TIMESTAMP_AT: usize = 35;

/// `bytes` with `ranges` and `maxTimestamp` zeroed.
fn unchanged(bytes: &[u8], ranges: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].fill(0);
    for range in ranges {
        bytes[range.clone()].fill(0);
    }
    bytes
}
