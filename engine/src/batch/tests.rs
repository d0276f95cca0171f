//! Tests of the batch module as a whole: a hand-written known-good batch that does not depend
//! on `BatchBuilder`, each refusal `parse` and `validate` can make, the stamping functions, and
//! property tests (round trip, single-byte corruption, truncation, arbitrary bytes).

use proptest::prelude::*;

use super::layout::{
    ATTRIBUTES_AT, BASE_OFFSET_AT, BATCH_LENGTH_AT, CRC_AT, LAST_OFFSET_DELTA_AT, MAGIC_AT,
    PARTITION_LEADER_EPOCH_AT, RECORD_COUNT_AT,
};
use super::*;

/// A one-record batch written byte by byte from Kafka's format description: base offset 7,
/// leader epoch 3, `CreateTime`, base and max timestamp 0x0102030405, no producer, one record
/// with a null key, value "hi" and no headers. The CRC is computed here with `crc32c` directly.
fn hand_written_batch() -> Vec<u8> {
    let mut bytes = vec![
        0, 0, 0, 0, 0, 0, 0, 7, // baseOffset
        0, 0, 0, 58, // batchLength: 70 - 12
        0, 0, 0, 3, // partitionLeaderEpoch
        2, // magic
        0, 0, 0, 0, // crc, filled in below
        0, 0, // attributes
        0, 0, 0, 0, // lastOffsetDelta
        0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, // baseTimestamp
        0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, // maxTimestamp
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // producerId -1
        0xff, 0xff, // producerEpoch -1
        0xff, 0xff, 0xff, 0xff, // baseSequence -1
        0, 0, 0, 1, // recordCount
        // record: length 8, attributes, timestampDelta 0, offsetDelta 0, key -1,
        // value length 2, "hi", header count 0
        0x10, 0, 0, 0, 0x01, 0x04, b'h', b'i', 0,
    ];
    assert_eq!(bytes.len(), 70);
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Rewrites the CRC after a test has edited a covered field on purpose.
fn fix_crc(bytes: &mut [u8]) {
    let crc = crc32c::crc32c(&bytes[ATTRIBUTES_AT..]);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

fn one_record_batch(value: &[u8]) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    builder.push(0, None, Some(value), &[]).unwrap();
    builder.build()
}

#[test]
fn hand_written_batch_parses_with_every_field() {
    let bytes = hand_written_batch();
    let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
    assert!(rest.is_empty());
    assert_eq!(batch.base_offset(), 7);
    assert_eq!(batch.batch_length(), 58);
    assert_eq!(batch.partition_leader_epoch(), 3);
    assert_eq!(batch.magic(), 2);
    assert_eq!(batch.crc(), crc32c::crc32c(&bytes[21..]));
    assert_eq!(batch.attributes(), 0);
    assert_eq!(batch.last_offset_delta(), 0);
    assert_eq!(batch.base_timestamp(), 0x01_0203_0405);
    assert_eq!(batch.max_timestamp(), 0x01_0203_0405);
    assert_eq!(
        (
            batch.producer_id(),
            batch.producer_epoch(),
            batch.base_sequence()
        ),
        (-1, -1, -1)
    );
    assert_eq!(batch.record_count(), 1);
    assert_eq!(batch.offset_count(), 1);
    assert_eq!(batch.compression(), Compression::None);
    assert_eq!(batch.timestamp_type(), TimestampType::CreateTime);
    assert!(!batch.is_transactional() && !batch.is_control());
    assert_eq!(batch.size_bytes(), 70);
    let records: Vec<_> = batch.records().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].key, records[0].value),
        (None, Some(b"hi".as_slice()))
    );
}

#[test]
fn builder_writes_the_hand_written_batch_byte_for_byte() {
    let mut builder = BatchBuilder::new()
        .base_offset(7)
        .partition_leader_epoch(3)
        .base_timestamp(0x01_0203_0405);
    builder.push(0, None, Some(b"hi"), &[]).unwrap();
    assert_eq!(builder.build(), hand_written_batch());
}

#[test]
fn parse_returns_the_bytes_after_the_batch() {
    let mut bytes = hand_written_batch();
    bytes.extend_from_slice(b"next");
    let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!((batch.size_bytes(), rest), (70, b"next".as_slice()));
}

#[test]
fn parse_refuses_truncated_buffers() {
    let bytes = hand_written_batch();
    let need_header = BatchError::Truncated {
        need: HEADER_SIZE_BYTES,
        have: 10,
    };
    assert_eq!(RecordBatch::parse(&bytes[..10]).unwrap_err(), need_header);
    let need_all = BatchError::Truncated { need: 70, have: 69 };
    assert_eq!(RecordBatch::parse(&bytes[..69]).unwrap_err(), need_all);
    let need_all = BatchError::Truncated { need: 70, have: 30 };
    assert_eq!(RecordBatch::parse(&bytes[..30]).unwrap_err(), need_all);
}

#[test]
fn parse_refuses_other_magic_bytes() {
    for magic in [0u8, 1, 3, 0xff] {
        let mut bytes = hand_written_batch();
        bytes[MAGIC_AT] = magic;
        let expected = BatchError::BadMagic(i8::from_be_bytes([magic]));
        assert_eq!(RecordBatch::parse(&bytes).unwrap_err(), expected);
    }
}

#[test]
fn parse_refuses_lengths_below_a_header_or_above_the_limit() {
    for batch_length in [-1, 0, 48, i32::MIN] {
        let mut bytes = hand_written_batch();
        bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        let expected = BatchError::LengthOutOfBounds { batch_length };
        assert_eq!(RecordBatch::parse(&bytes).unwrap_err(), expected);
    }
    let mut bytes = hand_written_batch();
    bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    let too_large = BatchError::TooLarge {
        len: 12 + i32::MAX as usize,
        max: BATCH_SIZE_BYTES_MAX,
    };
    assert_eq!(RecordBatch::parse(&bytes).unwrap_err(), too_large);
    let bytes = hand_written_batch();
    let too_large = BatchError::TooLarge { len: 70, max: 69 };
    assert_eq!(
        RecordBatch::parse_limited(&bytes, 69).unwrap_err(),
        too_large
    );
    assert!(RecordBatch::parse_limited(&bytes, 70).is_ok());
}

#[test]
fn parse_refuses_a_crc_mismatch() {
    let mut bytes = hand_written_batch();
    let stored = crc32c::crc32c(&bytes[21..]);
    bytes[69] ^= 1; // the header count of the record
    let computed = crc32c::crc32c(&bytes[21..]);
    let expected = BatchError::CrcMismatch { stored, computed };
    assert_eq!(RecordBatch::parse(&bytes).unwrap_err(), expected);
}

#[test]
fn parse_refuses_undefined_compression_codes() {
    for code in 5..8u8 {
        let mut bytes = hand_written_batch();
        bytes[ATTRIBUTES_AT + 1] = code;
        fix_crc(&mut bytes);
        assert_eq!(
            RecordBatch::parse(&bytes).unwrap_err(),
            BatchError::UnknownCompression(code)
        );
    }
}

#[test]
fn parse_refuses_a_record_count_that_disagrees_with_the_last_offset_delta() {
    let mut bytes = hand_written_batch();
    bytes[LAST_OFFSET_DELTA_AT + 3] = 1;
    fix_crc(&mut bytes);
    let expected = BatchError::RecordCountMismatch {
        record_count: 1,
        last_offset_delta: 1,
    };
    assert_eq!(RecordBatch::parse(&bytes).unwrap_err(), expected);

    let mut negative = hand_written_batch();
    negative[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
    fix_crc(&mut negative);
    let expected = BatchError::RecordCountMismatch {
        record_count: -1,
        last_offset_delta: 0,
    };
    assert_eq!(RecordBatch::parse(&negative).unwrap_err(), expected);

    // Compressed batches are held to the same header rule without being decompressed.
    let gzip = BatchBuilder::new()
        .build_opaque(Compression::Gzip, 3, b"opaque")
        .unwrap();
    let mut gzip = gzip;
    gzip[LAST_OFFSET_DELTA_AT + 3] = 5;
    fix_crc(&mut gzip);
    let expected = BatchError::RecordCountMismatch {
        record_count: 3,
        last_offset_delta: 5,
    };
    assert_eq!(RecordBatch::parse(&gzip).unwrap_err(), expected);
}

#[test]
fn parse_refuses_a_records_section_holding_another_count() {
    let mut builder = BatchBuilder::new();
    builder.push(0, None, Some(b"a"), &[]).unwrap();
    builder.push(1, None, Some(b"b"), &[]).unwrap();
    let mut bytes = builder.build();
    bytes[RECORD_COUNT_AT + 3] = 1;
    bytes[LAST_OFFSET_DELTA_AT + 3] = 0;
    fix_crc(&mut bytes);
    let expected = BatchError::RecordsDecodedMismatch {
        record_count: 1,
        decoded: 2,
    };
    assert_eq!(RecordBatch::parse(&bytes).unwrap_err(), expected);
}

#[test]
fn parse_refuses_malformed_records_in_an_uncompressed_batch() {
    let bytes = BatchBuilder::new()
        .build_opaque(Compression::None, 1, &[0x7f])
        .unwrap();
    let error = RecordBatch::parse(&bytes).unwrap_err();
    assert!(
        matches!(error, BatchError::InvalidRecord { index: 0, .. }),
        "{error}"
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn compressed_batches_pass_through_untouched() {
    let payload = b"\x28\xb5\x2f\xfd not really zstd";
    let bytes = BatchBuilder::new()
        .base_timestamp(1_000)
        .max_timestamp(1_500)
        .build_opaque(Compression::Zstd, 4, payload)
        .unwrap();
    let (batch, _) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(batch.compression(), Compression::Zstd);
    assert_eq!((batch.record_count(), batch.last_offset_delta()), (4, 3));
    assert_eq!(batch.records_section(), payload);
    assert_eq!(
        batch.records().unwrap_err(),
        BatchError::Compressed(Compression::Zstd)
    );
    let info = validate(&bytes, BATCH_SIZE_BYTES_MAX).unwrap();
    assert_eq!(
        (info.record_count, info.offset_count, info.max_timestamp),
        (4, 4, Some(1_500))
    );
}

#[test]
fn empty_batches_parse_but_validate_refuses_them() {
    let none = BatchBuilder::new().build();
    let lz4 = BatchBuilder::new()
        .build_opaque(Compression::Lz4, 0, b"")
        .unwrap();
    for bytes in [none, lz4] {
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(batch.record_count(), 0);
        assert_eq!(
            validate(&bytes, BATCH_SIZE_BYTES_MAX).unwrap_err(),
            BatchError::Empty
        );
    }
}

#[test]
fn builder_sets_every_header_field() {
    let mut builder = BatchBuilder::new()
        .base_offset(1 << 40)
        .partition_leader_epoch(9)
        .base_timestamp(100)
        .producer(77, 3, 1_000)
        .transactional(true)
        .control(true)
        .timestamp_type(TimestampType::LogAppendTime);
    builder.push(20, None, None, &[]).unwrap();
    builder.push(-5, Some(b""), Some(b""), &[]).unwrap();
    let bytes = builder.build();
    let (batch, _) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(
        (batch.base_offset(), batch.partition_leader_epoch()),
        (1 << 40, 9)
    );
    assert_eq!((batch.base_timestamp(), batch.max_timestamp()), (100, 120));
    assert_eq!(
        (
            batch.producer_id(),
            batch.producer_epoch(),
            batch.base_sequence()
        ),
        (77, 3, 1_000)
    );
    assert!(batch.is_transactional() && batch.is_control());
    assert_eq!(batch.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!((batch.record_count(), batch.last_offset_delta()), (2, 1));
}

#[test]
fn validate_sums_concatenated_batches() {
    let mut first = BatchBuilder::new().base_timestamp(50);
    first.push(0, None, Some(b"a"), &[]).unwrap();
    first.push(9, None, Some(b"b"), &[]).unwrap();
    let mut bytes = first.build();
    let mut second = BatchBuilder::new().base_timestamp(40);
    second.push(0, None, Some(b"c"), &[]).unwrap();
    bytes.extend_from_slice(&second.build());
    let info = validate(&bytes, BATCH_SIZE_BYTES_MAX).unwrap();
    let expected = BatchInfo {
        batch_count: 2,
        record_count: 3,
        offset_count: 3,
        max_timestamp: Some(59),
        size_bytes: bytes.len(),
    };
    assert_eq!(info, expected);
    assert_eq!(
        validate(&[], BATCH_SIZE_BYTES_MAX),
        Ok(BatchInfo::default())
    );
}

#[test]
fn validate_prefix_stops_at_the_first_bad_batch() {
    let good = one_record_batch(b"good");
    let mut bad = one_record_batch(b"bad");
    bad[MAGIC_AT] = 1;
    let bytes = [good.clone(), good.clone(), bad, good.clone()].concat();
    let prefix = validate_prefix(&bytes, BATCH_SIZE_BYTES_MAX);
    assert_eq!(prefix.valid.batch_count, 2);
    assert_eq!(prefix.valid.size_bytes, 2 * good.len());
    assert_eq!(prefix.error, Some(BatchError::BadMagic(1)));
    assert_eq!(
        validate(&bytes, BATCH_SIZE_BYTES_MAX),
        Err(BatchError::BadMagic(1))
    );
    let limit = good.len() - 1;
    let too_large = BatchError::TooLarge {
        len: good.len(),
        max: limit,
    };
    assert_eq!(validate(&good, limit), Err(too_large));
}

#[test]
fn stamping_offset_and_epoch_leaves_the_crc_valid_and_untouched() {
    let mut bytes = one_record_batch(b"v");
    let crc = bytes[CRC_AT..CRC_AT + 4].to_vec();
    stamp_base_offset(&mut bytes, 123_456).unwrap();
    set_partition_leader_epoch(&mut bytes, 17).unwrap();
    assert_eq!(&bytes[CRC_AT..CRC_AT + 4], crc.as_slice());
    let (batch, _) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(
        (batch.base_offset(), batch.partition_leader_epoch()),
        (123_456, 17)
    );
    assert_eq!(&bytes[BASE_OFFSET_AT..8], &123_456i64.to_be_bytes());
    assert_eq!(&bytes[PARTITION_LEADER_EPOCH_AT..16], &17i32.to_be_bytes());
}

#[test]
fn stamping_log_append_time_sets_type_and_max_and_recomputes_the_crc() {
    let mut builder = BatchBuilder::new()
        .base_timestamp(1_000)
        .transactional(true);
    builder.push(7, Some(b"k"), Some(b"v"), &[]).unwrap();
    let mut bytes = builder.build();
    let tail = b"next batch";
    bytes.extend_from_slice(tail);
    stamp_log_append_time(&mut bytes, 99_999).unwrap();
    let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(rest, tail, "stamping wrote past the batch");
    assert_eq!(batch.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(
        (batch.base_timestamp(), batch.max_timestamp()),
        (1_000, 99_999)
    );
    assert!(
        batch.is_transactional(),
        "other attribute bits must survive"
    );
}

#[test]
fn restamping_create_time_moves_both_timestamps_and_reseals_rewritten_values() {
    let mut builder = BatchBuilder::new().base_timestamp(1_000);
    builder.push(0, None, Some(b"aaaa"), &[]).unwrap();
    builder.push(25, None, Some(b"bbbb"), &[]).unwrap();
    let mut bytes = builder.build();
    let tail = b"next batch";
    bytes.extend_from_slice(tail);
    let at = bytes.len() - tail.len() - 5;
    assert_eq!(&bytes[at..at + 4], b"bbbb");
    bytes[at..at + 4].copy_from_slice(b"cccc");
    assert!(
        matches!(
            validate(&bytes[..at + 5], BATCH_SIZE_BYTES_MAX),
            Err(BatchError::CrcMismatch { .. })
        ),
        "the CRC no longer covers the rewritten value"
    );
    restamp_create_time(&mut bytes, 50_000).unwrap();
    let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(rest, tail, "restamping wrote past the batch");
    assert_eq!(
        (batch.base_timestamp(), batch.max_timestamp()),
        (50_000, 50_025)
    );
    assert_eq!(batch.timestamp_type(), TimestampType::CreateTime);
    let values: Vec<_> = batch.records().unwrap().map(|r| r.unwrap().value).collect();
    assert_eq!(values, [Some(&b"aaaa"[..]), Some(&b"cccc"[..])]);
}

/// Found by the `batch` fuzz target: a batch whose `maxTimestamp - baseTimestamp`
/// overflowed an i64 panicked (debug) or wrapped to a wrong `maxTimestamp` (release).
#[test]
fn restamping_saturates_a_span_beyond_i64() {
    for (base, max, new_base, expected_max) in [
        (i64::MIN, i64::MAX, 1_000, i64::MAX),
        (i64::MAX, i64::MIN, -1_000, i64::MIN),
        (0, 10, i64::MAX - 5, i64::MAX),
    ] {
        let mut builder = BatchBuilder::new().base_timestamp(base).max_timestamp(max);
        builder.push(0, None, Some(b"v"), &[]).unwrap();
        let mut bytes = builder.build();
        restamp_create_time(&mut bytes, new_base).unwrap();
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(
            (batch.base_timestamp(), batch.max_timestamp()),
            (new_base, expected_max)
        );
    }
}

#[test]
fn stamping_refuses_buffers_that_do_not_hold_a_whole_batch() {
    let mut bytes = one_record_batch(b"value");
    let short = bytes.len() - 1;
    let before = bytes.clone();
    assert!(matches!(
        stamp_base_offset(&mut bytes[..short], 1),
        Err(BatchError::Truncated { .. })
    ));
    assert_eq!(
        stamp_log_append_time(&mut bytes[..short], 1),
        Err(BatchError::Truncated {
            need: short + 1,
            have: short
        })
    );
    assert_eq!(
        set_partition_leader_epoch(&mut bytes[..5], 1),
        Err(BatchError::Truncated {
            need: HEADER_SIZE_BYTES,
            have: 5
        })
    );
    assert_eq!(bytes, before);
    bytes[MAGIC_AT] = 1;
    assert_eq!(
        stamp_base_offset(&mut bytes, 1),
        Err(BatchError::BadMagic(1))
    );
}

#[test]
fn error_messages_name_the_numbers() {
    let crc = BatchError::CrcMismatch {
        stored: 0xab,
        computed: 0x1234_5678,
    };
    assert_eq!(
        crc.to_string(),
        "record batch CRC-32C mismatch: stored 0x000000ab, computed 0x12345678"
    );
    let length = BatchError::LengthOutOfBounds { batch_length: 3 };
    assert_eq!(
        length.to_string(),
        "record batch declares batchLength 3, below the minimum of 49 bytes"
    );
    let record = BatchError::InvalidRecord {
        index: 4,
        source: RecordError::Truncated {
            field: "value",
            need: 10,
            have: 2,
        },
    };
    assert_eq!(
        record.to_string(),
        "record 4 of the batch is malformed: value needs 10 bytes but only 2 remain"
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// An owned record, as a test generates it.
#[derive(Clone, Debug, PartialEq)]
struct OwnedRecord {
    timestamp_delta: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn bytes_strategy(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=len_max)
}

fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
    let header = (bytes_strategy(8), proptest::option::of(bytes_strategy(8)));
    (
        any::<i64>(),
        proptest::option::of(bytes_strategy(40)),
        proptest::option::of(bytes_strategy(200)),
        proptest::collection::vec(header, 0..4),
    )
        .prop_map(|(timestamp_delta, key, value, headers)| OwnedRecord {
            timestamp_delta,
            key,
            value,
            headers,
        })
}

fn build(base_offset: i64, base_timestamp: i64, records: &[OwnedRecord]) -> Vec<u8> {
    let mut builder = BatchBuilder::new()
        .base_offset(base_offset)
        .base_timestamp(base_timestamp);
    for record in records {
        let headers: Vec<Header<'_>> = record
            .headers
            .iter()
            .map(|(key, value)| Header {
                key,
                value: value.as_deref(),
            })
            .collect();
        builder
            .push(
                record.timestamp_delta,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            )
            .unwrap();
    }
    builder.build()
}

fn owned(record: &Record<'_>) -> OwnedRecord {
    OwnedRecord {
        timestamp_delta: record.timestamp_delta,
        key: record.key.map(<[u8]>::to_vec),
        value: record.value.map(<[u8]>::to_vec),
        headers: record
            .headers
            .iter()
            .map(|header| (header.key.to_vec(), header.value.map(<[u8]>::to_vec)))
            .collect(),
    }
}

/// Either an uncompressed batch of records or an opaque "compressed" one.
fn any_batch() -> impl Strategy<Value = Vec<u8>> {
    let plain = proptest::collection::vec(record_strategy(), 1..6)
        .prop_map(|records| build(0, 1_700_000_000_000, &records));
    let opaque = (1..4u8, 1..50i32, bytes_strategy(100)).prop_map(|(codec, count, payload)| {
        let codec = Compression::from_attributes(i16::from(codec)).unwrap();
        BatchBuilder::new()
            .build_opaque(codec, count, &payload)
            .unwrap()
    });
    prop_oneof![3 => plain, 1 => opaque]
}

proptest! {
    #[test]
    fn builder_parse_records_round_trip(
        base_offset in any::<i64>(),
        base_timestamp in any::<i64>(),
        records in proptest::collection::vec(record_strategy(), 0..8),
    ) {
        let bytes = build(base_offset, base_timestamp, &records);
        let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(batch.base_offset(), base_offset);
        prop_assert_eq!(batch.base_timestamp(), base_timestamp);
        prop_assert_eq!(batch.record_count() as usize, records.len());
        let decoded: Vec<Record<'_>> =
            batch.records().unwrap().collect::<Result<_, _>>().unwrap();
        for (index, record) in decoded.iter().enumerate() {
            prop_assert_eq!(record.offset_delta as usize, index);
        }
        let decoded: Vec<OwnedRecord> = decoded.iter().map(owned).collect();
        prop_assert_eq!(decoded, records);
    }

    #[test]
    fn any_single_byte_corruption_outside_the_stamped_fields_is_detected(
        bytes in any_batch(),
        position in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        // baseOffset (0..8) and partitionLeaderEpoch (12..16) lie outside the CRC by design.
        let covered: Vec<usize> =
            (8..12).chain(16..bytes.len()).collect();
        let at = covered[position.index(covered.len())];
        let mut corrupt = bytes.clone();
        corrupt[at] ^= flip;
        prop_assert!(RecordBatch::parse(&corrupt).is_err(), "corruption at byte {} missed", at);
        prop_assert!(validate(&corrupt, BATCH_SIZE_BYTES_MAX).is_err());
    }

    #[test]
    fn truncation_keeps_exactly_the_whole_batches_before_the_cut(
        batches in proptest::collection::vec(any_batch(), 1..5),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = batches.concat();
        let cut = cut.index(bytes.len() + 1);
        let mut ends = Vec::new();
        let mut end = 0;
        for batch in &batches {
            end += batch.len();
            ends.push(end);
        }
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        let at_boundary = cut == 0 || ends.contains(&cut);
        let prefix = validate_prefix(&bytes[..cut], BATCH_SIZE_BYTES_MAX);
        prop_assert_eq!(prefix.valid.batch_count, whole);
        prop_assert_eq!(prefix.valid.size_bytes, if whole == 0 { 0 } else { ends[whole - 1] });
        match (&prefix.error, at_boundary) {
            (None, true) | (Some(BatchError::Truncated { .. }), false) => {}
            (error, _) => prop_assert!(false, "cut at {}: unexpected {:?}", cut, error),
        }
        let validated = validate(&bytes[..cut], BATCH_SIZE_BYTES_MAX);
        prop_assert_eq!(validated.is_ok(), at_boundary);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes_strategy(300)) {
        let _ = RecordBatch::parse(&bytes);
        let _ = validate_prefix(&bytes, BATCH_SIZE_BYTES_MAX);
        let mut copy = bytes.clone();
        let _ = stamp_log_append_time(&mut copy, 1);
    }

    #[test]
    fn arbitrary_records_sections_with_a_valid_crc_never_panic(
        payload in bytes_strategy(300),
        count in 0..20i32,
    ) {
        let bytes = BatchBuilder::new().build_opaque(Compression::None, count, &payload).unwrap();
        if let Ok((batch, _)) = RecordBatch::parse(&bytes) {
            let records: Result<Vec<_>, _> = batch.records().unwrap().collect();
            prop_assert_eq!(records.unwrap().len(), count as usize);
        }
    }
}
