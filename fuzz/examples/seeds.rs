//! Writes seed corpora for the fuzz targets, made of valid inputs of the kinds the tests use
//! (batches from `BatchBuilder`, segments of contiguous batches, index files of built
//! indexes, requests of every API and version the broker advertises), each behind the
//! choice bytes its target reads first, so that fuzzing starts deep.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus`

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use ringlog_engine::batch::{BatchBuilder, Compression, Header, TimestampType};
use ringlog_engine::index::SegmentIndex;
use ringlog_server::protocol::SUPPORTED_VERSIONS;

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let batches = batches();
    write(&root.join("batch"), batches.iter().map(|b| [&[0u8][..], b].concat()));
    write(&root.join("recovery"), segments());
    write(&root.join("index"), index_files());
    let requests = requests();
    write(&root.join("request"), requests.iter().map(|(choice, bytes)| {
        [&choice[..], &bytes[..]].concat()
    }));
    write(&root.join("frame"), frames(&requests));
}

fn write(dir: &Path, inputs: impl IntoIterator<Item = Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut count = 0;
    for (n, input) in inputs.into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{n:04}")), input).unwrap();
        count += 1;
    }
    println!("{}: {count} seeds", dir.display());
}

/// Valid batches of every shape the builder makes, and runs of them.
fn batches() -> Vec<Vec<u8>> {
    let header = [Header {
        key: b"trace",
        value: Some(b"abc"),
    }];
    let null_header = [Header {
        key: b"k",
        value: None,
    }];
    let mut out = Vec::new();
    for records in [1, 2, 5] {
        let mut builder = BatchBuilder::new().base_timestamp(1_700_000_000_000);
        for i in 0..records {
            let value = format!("value-{i}");
            builder.push(i, Some(b"key"), Some(value.as_bytes()), &header).unwrap();
        }
        out.push(builder.build());
    }
    let mut builder = BatchBuilder::new()
        .base_offset(42)
        .producer(7, 1, 10)
        .transactional(true)
        .timestamp_type(TimestampType::LogAppendTime)
        .max_timestamp(99);
    builder.push(-3, None, None, &null_header).unwrap();
    builder.push(0, Some(b""), Some(&[0u8; 300]), &[]).unwrap();
    out.push(builder.build());
    let mut control = BatchBuilder::new().control(true);
    control.push(0, Some(&[0, 0, 0, 0]), Some(&[0, 0, 0, 0, 0, 0]), &[]).unwrap();
    out.push(control.build());
    for compression in [Compression::Gzip, Compression::Zstd] {
        let batch = BatchBuilder::new()
            .build_opaque(compression, 3, b"not really compressed")
            .unwrap();
        out.push(batch);
    }
    let two = [out[0].clone(), out[1].clone()].concat();
    out.push(two);
    out
}

/// Segments: contiguous batches from a base offset, clean, with preallocated zeros, torn,
/// with an offset gap; each behind a chunk size and flags (interval choice).
fn segments() -> Vec<Vec<u8>> {
    let at = |base: i64, records: i64| {
        let mut builder = BatchBuilder::new().base_offset(base);
        for i in 0..records {
            builder.push(i, None, Some(format!("v{i}").as_bytes()), &[]).unwrap();
        }
        builder.build()
    };
    let clean = [at(0, 3), at(3, 1), at(4, 2)].concat();
    let based = [at(1000, 2), at(1002, 5)].concat();
    let compressed = [
        at(0, 1),
        BatchBuilder::new()
            .base_offset(1)
            .build_opaque(Compression::Lz4, 4, b"opaque")
            .unwrap(),
        at(5, 1),
    ]
    .concat();
    let bodies = [
        clean.clone(),
        [clean.clone(), vec![0; 200]].concat(),
        [clean.clone(), at(6, 2)[..40].to_vec()].concat(),
        [at(0, 2), at(5, 1)].concat(),
        based,
        compressed,
    ];
    let mut out = Vec::new();
    for (n, body) in bodies.into_iter().enumerate() {
        for chunk in [0u8, 61, 255] {
            let flags = (n as u8 % 4) << 1;
            out.push([&[chunk, flags][..], &body].concat());
        }
    }
    out
}

/// Index files of built indexes (mode 0: decode), and a few structured inputs (mode 2).
fn index_files() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (base, interval, count) in [(0, 0, 0), (0, 0, 3), (100, 64, 20), (5, 4096, 50)] {
        let mut index = SegmentIndex::new(base, interval);
        let mut position = 0;
        for i in 0..count {
            let offset = base + 2 * i64::from(i);
            let timestamp = 1000 + i64::from(i % 7) * 10;
            index.on_batch_appended(offset, offset + 1, timestamp, position, 70);
            position += 70;
        }
        let mode = match interval {
            0 => 0,
            64 => 1,
            _ => 2,
        } << 2;
        let mut files = vec![mode];
        let mut offsets = Vec::new();
        index.offset_index().encode(&mut offsets);
        files.extend_from_slice(&(offsets.len() as u16).to_le_bytes());
        files.extend_from_slice(&offsets);
        index.time_index().encode(&mut files);
        out.push(files);
        if count > 1 {
            index.truncate_to(base + 2, 70);
            let mut files = vec![mode];
            let mut offsets = Vec::new();
            index.offset_index().encode(&mut offsets);
            files.extend_from_slice(&(offsets.len() as u16).to_le_bytes());
            files.extend_from_slice(&offsets);
            index.time_index().encode(&mut files);
            out.push(files);
        }
    }
    for seed in 0u8..4 {
        let bytes: Vec<u8> = (0..200u16).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        out.push([&[0b10 | seed << 2][..], &bytes].concat());
    }
    out
}

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

/// Every advertised (API, version) with a default request, and richer Produce, Fetch and
/// Metadata requests: `([api choice, version choice], frame after api key and version)`.
fn requests() -> Vec<([u8; 2], Vec<u8>)> {
    let records = Bytes::from(batches()[1].clone());
    let mut out = Vec::new();
    for (api_index, &(api, min, max)) in SUPPORTED_VERSIONS.iter().enumerate() {
        for version in min..=max {
            let mut bodies = vec![default_request(api)];
            match api {
                ApiKey::Produce => bodies.push(RequestKind::Produce(
                    ProduceRequest::default()
                        .with_acks(-1)
                        .with_timeout_ms(1000)
                        .with_topic_data(vec![TopicProduceData::default()
                            .with_name(name("orders"))
                            .with_partition_data(vec![PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(records.clone()))])]),
                )),
                ApiKey::Fetch => bodies.push(RequestKind::Fetch(
                    FetchRequest::default()
                        .with_max_wait_ms(500)
                        .with_min_bytes(1)
                        .with_max_bytes(1 << 20)
                        .with_topics(vec![FetchTopic::default()
                            .with_topic(name("orders"))
                            .with_partitions(vec![FetchPartition::default()
                                .with_partition(1)
                                .with_fetch_offset(10)
                                .with_partition_max_bytes(1 << 16)])]),
                )),
                ApiKey::Metadata => bodies.push(RequestKind::Metadata(
                    MetadataRequest::default().with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(name("orders"))),
                    ])),
                )),
                _ => {}
            }
            for body in bodies {
                let header = RequestHeader::default()
                    .with_request_api_key(api as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(7)
                    .with_client_id(Some(StrBytes::from_static_str("seed")));
                let mut bytes = BytesMut::new();
                if header
                    .encode(&mut bytes, api.request_header_version(version))
                    .is_err()
                    || body.encode(&mut bytes, version).is_err()
                {
                    continue;
                }
                let choice = [api_index as u8, (version - min) as u8];
                out.push((choice, bytes[4..].to_vec()));
            }
        }
    }
    out
}

fn default_request(api: ApiKey) -> RequestKind {
    match api {
        ApiKey::Produce => RequestKind::Produce(Default::default()),
        ApiKey::Fetch => RequestKind::Fetch(Default::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::Metadata => RequestKind::Metadata(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(Default::default()),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(Default::default()),
        ApiKey::IncrementalAlterConfigs => {
            RequestKind::IncrementalAlterConfigs(Default::default())
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(Default::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(Default::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(Default::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(Default::default()),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(Default::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
        other => panic!("no seed request for {other:?}: add one"),
    }
}

/// Streams of frames: the max choice (the broker's default limit, or 64 bytes), a piece
/// size, then size-prefixed frames.
fn frames(requests: &[([u8; 2], Vec<u8>)]) -> Vec<Vec<u8>> {
    let frame_of = |(choice, rest): &([u8; 2], Vec<u8>)| {
        let (api, min, _) = SUPPORTED_VERSIONS[usize::from(choice[0])];
        let mut frame = BytesMut::new();
        frame.put_i32(4 + rest.len() as i32);
        frame.put_i16(api as i16);
        frame.put_i16(min + i16::from(choice[1]));
        frame.put_slice(rest);
        frame.to_vec()
    };
    let mut out = Vec::new();
    for group in requests.chunks(17) {
        let stream: Vec<u8> = group.iter().take(3).flat_map(frame_of).collect();
        out.push([&[5u8, 0][..], &stream].concat());
        out.push([&[3u8, 7][..], &stream].concat());
    }
    out
}
