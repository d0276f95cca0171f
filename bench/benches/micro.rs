//! Criterion micro-benchmarks of the data path's hot pieces, each measured alone, in
//! process, with no I/O, so that a change to one of them shows its cost before and after
//! (STYLE.md: a change that claims a speed-up shows the benchmark). The batches are Kafka
//! `RecordBatch` v2, uncompressed, of 1 KiB values without keys or headers, built with
//! `BatchBuilder`: "64x1KiB" is 64 records (about 64.6 KiB), "1x1KiB" one record.
//!
//! Groups, and what each measures:
//! - `batch_validate`: `batch::validate`, the write path's whole check of a produced batch
//!   (frame, CRC-32C, record count, a walk over every record), beside a bare `crc32c` over
//!   the same bytes, the floor validation cannot go below. Bytes/s.
//! - `batch_stamp`: the in-place changes the broker makes to an accepted batch:
//!   `stamp_base_offset` (constant work, batches/s) and `stamp_log_append_time` (recomputes
//!   the CRC, bytes/s).
//! - `record_iteration`: `RecordBatch::parse` then `records()` over every record, and the
//!   iteration alone on a batch parsed beforehand. Records/s.
//! - `index_lookup`: a segment's offset and time indexes filled as a 1 GiB segment of
//!   64x1KiB batches fills them (`SegmentIndex::on_batch_appended`, Kafka's default
//!   `index.interval.bytes` of 4096, so every batch gets an entry), then lookups of
//!   pseudo-random offsets and timestamps. Lookups/s.
//! - `protocol`: the broker's own `decode_request` and `encode_response`
//!   (`ringlog_server::protocol`): a Produce v9 request carrying one 64x1KiB batch to one
//!   partition, encoded as a client does and decoded (header and body); a Fetch v12
//!   response of one partition encoded the way the server sends it (a records marker, then
//!   `zero_copy::Parts::split`) and with the batch copied inline; a Metadata v12 request for
//!   one topic decoded. Frames are measured without their 4-byte size prefix, as
//!   `decode_request` takes them.
//!
//! Run all with `cargo bench -p ringlog-bench --bench micro` (just under two minutes on a
//! loaded 2-core VM), or one group by naming it:
//! `cargo bench -p ringlog-bench --bench micro -- index_lookup`.
//! Every benchmark's inputs are built and checked outside its timed closure.

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchResponse, MetadataRequest, ProduceRequest, RequestHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use ringlog_engine::batch::{self, BatchBuilder, RecordBatch, BATCH_SIZE_BYTES_MAX};
use ringlog_engine::index::SegmentIndex;
use ringlog_engine::shard::{SendablePiece, SendableRange};
use ringlog_engine::topic::config::INDEX_INTERVAL_BYTES_DEFAULT;
use ringlog_server::protocol::{decode_request, encode_response};
use ringlog_server::zero_copy::{self, Parts};

/// Size of every record's value.
const VALUE_SIZE_BYTES: usize = 1024;
/// Records of the "64x1KiB" batch.
const RECORDS_PER_BATCH: usize = 64;
/// The segment whose indexes `index_lookup` searches.
const SEGMENT_SIZE_BYTES: u64 = 1 << 30;
/// Lookups per timed iteration of `index_lookup`.
const LOOKUP_COUNT: usize = 1024;
/// The batches' base timestamp; the indexed segment's batches are 1 ms apart from it.
const BASE_TIMESTAMP_MS: i64 = 1_700_000_000_000;
const TOPIC: &str = "micro-bench";
const CLIENT_ID: &str = "micro-bench";
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 12;

/// A batch of `record_count` records of 1 KiB values, one millisecond apart.
fn batch_of(record_count: usize) -> Vec<u8> {
    let value: Vec<u8> = (0..VALUE_SIZE_BYTES)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let mut builder = BatchBuilder::with_capacity(record_count * (VALUE_SIZE_BYTES + 16))
        .base_timestamp(BASE_TIMESTAMP_MS);
    for timestamp_delta in 0..record_count as i64 {
        builder
            .push(timestamp_delta, None, Some(&value), &[])
            .expect("1 KiB records fit a batch");
    }
    let bytes = builder.build();
    assert!(batch::validate(&bytes, BATCH_SIZE_BYTES_MAX).is_ok());
    bytes
}

fn size_of(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

fn batch_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_validate");
    for record_count in [RECORDS_PER_BATCH, 1] {
        let bytes = batch_of(record_count);
        group.throughput(Throughput::Bytes(size_of(&bytes)));
        group.bench_function(format!("validate/{record_count}x1KiB"), |b| {
            b.iter(|| batch::validate(black_box(&bytes), BATCH_SIZE_BYTES_MAX));
        });
        group.bench_function(format!("crc32c/{record_count}x1KiB"), |b| {
            b.iter(|| crc32c::crc32c(black_box(&bytes)));
        });
    }
    group.finish();
}

fn stamping(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_stamp");
    let mut bytes = batch_of(RECORDS_PER_BATCH);
    group.throughput(Throughput::Elements(1));
    group.bench_function("base_offset/64x1KiB", |b| {
        b.iter(|| batch::stamp_base_offset(black_box(&mut bytes), black_box(1 << 20)));
    });
    group.throughput(Throughput::Bytes(size_of(&bytes)));
    group.bench_function("log_append_time/64x1KiB", |b| {
        b.iter(|| {
            batch::stamp_log_append_time(black_box(&mut bytes), black_box(BASE_TIMESTAMP_MS))
        });
    });
    group.finish();
    // Stamping must leave a batch the validator still accepts, or the figures above
    // measured an error path.
    assert!(batch::validate(&bytes, BATCH_SIZE_BYTES_MAX).is_ok());
}

/// Decodes every record of `batch`, handing each to the optimizer's black box.
fn iterate_records(batch: RecordBatch<'_>) -> usize {
    let mut record_count = 0;
    for record in batch.records().expect("an uncompressed batch") {
        black_box(record.expect("a well-formed record"));
        record_count += 1;
    }
    record_count
}

fn record_iteration(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_iteration");
    let bytes = batch_of(RECORDS_PER_BATCH);
    let (parsed, _) = RecordBatch::parse(&bytes).expect("a valid batch");
    assert_eq!(iterate_records(parsed), RECORDS_PER_BATCH);
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    group.bench_function("parse_and_iterate/64x1KiB", |b| {
        b.iter(|| {
            let (batch, _) = RecordBatch::parse(black_box(&bytes)).expect("a valid batch");
            iterate_records(batch)
        });
    });
    group.bench_function("iterate_parsed/64x1KiB", |b| {
        b.iter(|| iterate_records(black_box(parsed)));
    });
    group.finish();
}

/// The indexes of a 1 GiB segment of back-to-back batches of `batch_size_bytes`, each of
/// `RECORDS_PER_BATCH` offsets, timestamps 1 ms apart; and how many batches it holds.
fn segment_index_of(batch_size_bytes: u32) -> (SegmentIndex, u64) {
    let mut index = SegmentIndex::new(0, INDEX_INTERVAL_BYTES_DEFAULT);
    let batch_count = SEGMENT_SIZE_BYTES / u64::from(batch_size_bytes);
    let offsets_per_batch = RECORDS_PER_BATCH as i64;
    for batch_index in 0..batch_count {
        let base_offset = batch_index as i64 * offsets_per_batch;
        let position = u32::try_from(batch_index * u64::from(batch_size_bytes))
            .expect("a 1 GiB segment's positions fit 32 bits");
        index.on_batch_appended(
            base_offset,
            base_offset + offsets_per_batch - 1,
            BASE_TIMESTAMP_MS + batch_index as i64,
            position,
            batch_size_bytes,
        );
    }
    (index, batch_count)
}

/// `count` pseudo-random values in `0..bound` (SplitMix64: deterministic, no dependency).
fn spread(count: usize, bound: u64) -> Vec<i64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % bound) as i64
        })
        .collect()
}

fn index_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_lookup");
    let batch_size_bytes = u32::try_from(batch_of(RECORDS_PER_BATCH).len()).expect("64 KiB");
    let (index, batch_count) = segment_index_of(batch_size_bytes);
    let offsets = index.offset_index();
    let times = index.time_index();
    let offset_count = batch_count * RECORDS_PER_BATCH as u64;
    let target_offsets = spread(LOOKUP_COUNT, offset_count);
    let target_timestamps: Vec<i64> = spread(LOOKUP_COUNT, batch_count)
        .into_iter()
        .map(|delta| BASE_TIMESTAMP_MS + delta)
        .collect();
    assert!(target_timestamps.iter().all(|&t| times.lookup(t).is_some()));
    group.throughput(Throughput::Elements(LOOKUP_COUNT as u64));
    group.bench_function(format!("offset/{}_entries", offsets.len()), |b| {
        b.iter(|| {
            for &target in black_box(&target_offsets) {
                black_box(offsets.lookup(target));
            }
        });
    });
    group.bench_function(format!("time/{}_entries", times.len()), |b| {
        b.iter(|| {
            for &target in black_box(&target_timestamps) {
                black_box(times.lookup(target));
            }
        });
    });
    group.finish();
}

/// Encodes a request's header and body (the frame `decode_request` takes) into `out`, as a
/// client does.
fn encode_request(api: ApiKey, version: i16, body: &impl Encodable, out: &mut BytesMut) {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    header
        .encode(out, api.request_header_version(version))
        .expect("a request header encodes");
    body.encode(out, version).expect("a request body encodes");
}

fn produce_request(records: Bytes) -> ProduceRequest {
    let partition = PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(records));
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
        .with_partition_data(vec![partition]);
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![topic])
}

/// A Fetch response of one partition whose records field holds `records`.
fn fetch_response(records: Bytes) -> ResponseKind {
    let high_watermark = RECORDS_PER_BATCH as i64;
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_high_watermark(high_watermark)
        .with_last_stable_offset(high_watermark)
        .with_log_start_offset(0)
        .with_records(Some(records));
    let topic = FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
        .with_partitions(vec![partition]);
    ResponseKind::Fetch(FetchResponse::default().with_responses(vec![topic]))
}

fn produce_codec(group: &mut BenchmarkGroup<'_, WallTime>) {
    let request = produce_request(Bytes::from(batch_of(RECORDS_PER_BATCH)));
    let mut out = BytesMut::new();
    encode_request(ApiKey::Produce, PRODUCE_VERSION, &request, &mut out);
    let frame = out.clone().freeze();
    assert!(decode_request(frame.clone()).is_ok());
    group.throughput(Throughput::Bytes(size_of(&frame)));
    group.bench_function("produce_v9_encode/64x1KiB", |b| {
        b.iter(|| {
            out.clear();
            encode_request(
                ApiKey::Produce,
                PRODUCE_VERSION,
                black_box(&request),
                &mut out,
            );
        });
    });
    group.bench_function("produce_v9_decode/64x1KiB", |b| {
        b.iter(|| decode_request(black_box(frame.clone())));
    });
}

fn fetch_encode(group: &mut BenchmarkGroup<'_, WallTime>) {
    let bytes = Bytes::from(batch_of(RECORDS_PER_BATCH));
    let records_size_bytes = size_of(&bytes);
    let file = tempfile::tempfile().expect("a temporary file for the records' range");
    let range = || SendableRange {
        file: OwnedFd::from(file.try_clone().expect("a duplicate descriptor")),
        position: 0,
        len: records_size_bytes,
    };
    let zero_copy = fetch_response(zero_copy::marker(0));
    let inline = fetch_response(bytes);
    let mut out = BytesMut::new();
    let encode = |response: &ResponseKind, out: &mut BytesMut| {
        out.clear();
        encode_response(ApiKey::Fetch, FETCH_VERSION, 1, response, out)
            .expect("a fetch response encodes");
    };
    encode(&zero_copy, &mut out);
    assert!(Parts::split(
        &out,
        vec![vec![SendablePiece::File(range())]],
        FETCH_VERSION
    )
    .is_some());
    group.throughput(Throughput::Elements(1));
    // Each iteration's parts hold a duplicated descriptor; small batches keep few open,
    // and criterion drops them outside the timed part.
    group.bench_function("fetch_v12_encode/zero_copy_64x1KiB", |b| {
        b.iter_batched(
            range,
            |range| {
                encode(black_box(&zero_copy), &mut out);
                Parts::split(&out, vec![vec![SendablePiece::File(range)]], FETCH_VERSION)
            },
            BatchSize::NumIterations(64),
        );
    });
    encode(&inline, &mut out);
    group.throughput(Throughput::Bytes(size_of(&out)));
    group.bench_function("fetch_v12_encode/inline_64x1KiB", |b| {
        b.iter(|| encode(black_box(&inline), &mut out));
    });
}

fn metadata_decode(group: &mut BenchmarkGroup<'_, WallTime>) {
    let topic = MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![topic]))
        .with_allow_auto_topic_creation(false);
    let mut out = BytesMut::new();
    encode_request(ApiKey::Metadata, METADATA_VERSION, &request, &mut out);
    let frame = out.freeze();
    assert!(decode_request(frame.clone()).is_ok());
    group.throughput(Throughput::Elements(1));
    group.bench_function("metadata_v12_decode/1_topic", |b| {
        b.iter(|| decode_request(black_box(frame.clone())));
    });
}

/// The Kafka codec benchmarks share one group.
fn protocol(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol");
    produce_codec(&mut group);
    fetch_encode(&mut group);
    metadata_decode(&mut group);
    group.finish();
}

/// Short warm-up and measurement keep the whole suite under two minutes; plots are off (the
/// workspace builds criterion without them).
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
}

criterion_group! {
    name = micro;
    config = config();
    targets = batch_validation, stamping, record_iteration, index_lookup, protocol
}
criterion_main!(micro);
