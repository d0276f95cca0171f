//! Hostile and broken input at a running `ringlog serve`, over raw TCP: garbage, truncated
//! and oversized frames, length fields and counts that lie, unknown APIs and versions,
//! record batches that fail their CRC or are not batches at all, invalid topic names,
//! absurd partition counts and offsets, and produce to a missing topic with auto-creation
//! off.
//!
//! What must hold: a frame that cannot be a request closes only its own connection (after
//! answering every complete request before it); a request that decodes but asks for
//! something wrong gets the Kafka error code for it and changes nothing; the server keeps
//! running; every record acknowledged before the storm is still there, byte for byte, at
//! its offset; and real clients still produce and consume afterwards.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, MetadataRequest,
    ProduceRequest,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::Record;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::python::run_script;
use ringlog_tests::wire::{
    encode_batch, fetch_request, max_version, produce_request, record, topic_name, Connection,
    LATEST,
};
use ringlog_tests::{hex, TestRng};
use serde_json::json;

/// The server's request size limit in these tests.
const MAX_REQUEST_BYTES: usize = 32 << 20;
/// The engine's batch size limit (`ringlog_engine::limits::BATCH_SIZE_BYTES_MAX`).
const BATCH_SIZE_BYTES_MAX: usize = ringlog_engine::limits::BATCH_SIZE_BYTES_MAX;

const TOPIC: &str = "precious";
const PARTITIONS: i32 = 2;

// Kafka error codes.
const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_REQUIRED_ACKS: i16 = 21;
const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default()
        .with("--auto-create-topics", "false")
        .with("--max-request-bytes", &MAX_REQUEST_BYTES.to_string());
    let server = Server::start(&dir.path().join("data"), &options);
    (dir, server)
}

/// Acknowledged records the storm must not touch: `[partition] -> records`.
fn seed(server: &Server) -> Vec<Vec<Record>> {
    let mut c = Connection::connect(server.address());
    assert_eq!(c.create_topic(TOPIC, PARTITIONS), 0);
    let mut rng = TestRng::new(42);
    (0..PARTITIONS)
        .map(|partition| {
            let mut held = Vec::new();
            for batch in 0..5 {
                let records: Vec<Record> = (0..4)
                    .map(|i| {
                        let key = format!("p{partition}-b{batch}-{i}");
                        let len = 100 + rng.below(2000) as usize;
                        let value = rng.bytes(len);
                        record(Some(key.as_bytes()), Some(&value), &[("n", Some(b"1"))], 7)
                    })
                    .collect();
                let answer = c.produce(TOPIC, partition, &records, -1);
                assert_eq!(answer.error_code, 0);
                assert_eq!(answer.base_offset, held.len() as i64);
                held.extend(records);
            }
            held
        })
        .collect()
}

/// Every seeded record is where it was, and nothing was added after it.
fn assert_intact(server: &mut Server, seeded: &[Vec<Record>]) {
    server.assert_running();
    let mut c = Connection::connect(server.address());
    for (partition, held) in seeded.iter().enumerate() {
        let partition = partition as i32;
        let got = c.fetch_all(TOPIC, partition, 0);
        let summary = |r: &Record| (r.offset, r.key.clone(), r.value.clone(), r.headers.clone());
        let want: Vec<_> = held
            .iter()
            .enumerate()
            .map(|(offset, r)| {
                (
                    offset as i64,
                    r.key.clone(),
                    r.value.clone(),
                    r.headers.clone(),
                )
            })
            .collect();
        let got: Vec<_> = got.iter().map(summary).collect();
        assert!(got == want, "{TOPIC}-{partition} changed");
        let latest = c.list_offset(TOPIC, partition, LATEST);
        assert_eq!(
            latest,
            (0, held.len() as i64),
            "{TOPIC}-{partition} high watermark"
        );
    }
}

/// Real clients still work: confluent-kafka produces to a new topic, kafka-python reads it
/// back, and confluent-kafka reads the seeded topic as it was.
fn assert_real_clients_work(server: &Server, seeded: &[Vec<Record>]) {
    let mut c = Connection::connect(server.address());
    assert_eq!(c.create_topic("after-the-storm", 1), 0);
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("records.json");
    let records: Vec<_> = (0..20)
        .map(|i| json!({"key": null, "value": hex(format!("calm {i}").as_bytes()), "headers": [], "timestamp": 1000 + i}))
        .collect();
    std::fs::write(&spec, serde_json::to_vec(&records).unwrap()).unwrap();
    let bootstrap = server.bootstrap();
    let spec = spec.to_str().unwrap();
    let produced = run_script(
        "clients.py",
        &["produce", "confluent", &bootstrap, "after-the-storm", spec],
    );
    assert_eq!(produced["acks"].as_array().map(Vec::len), Some(20));
    let consumed = run_script(
        "clients.py",
        &[
            "consume",
            "kafka-python",
            &bootstrap,
            "after-the-storm",
            "1",
        ],
    );
    let values: Vec<_> = consumed["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    let want: Vec<_> = records.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(
        values, want,
        "kafka-python reads what confluent-kafka wrote"
    );
    let partitions = PARTITIONS.to_string();
    let consumed = run_script(
        "clients.py",
        &["consume", "confluent", &bootstrap, TOPIC, &partitions],
    );
    for (partition, held) in seeded.iter().enumerate() {
        let values: Vec<_> = consumed["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["partition"] == partition)
            .map(|r| r["value"].as_str().unwrap_or_default().to_owned())
            .collect();
        let want: Vec<_> = held
            .iter()
            .map(|r| hex(r.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            values, want,
            "confluent-kafka reads {TOPIC}-{partition} as seeded"
        );
    }
}

/// A request header (v1: API key, version, correlation id, null client id), unframed.
fn header_v1(api: i16, version: i16) -> BytesMut {
    let mut bytes = BytesMut::new();
    bytes.put_i16(api);
    bytes.put_i16(version);
    bytes.put_i32(77);
    bytes.put_i16(-1);
    bytes
}

/// `body` behind its size prefix.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// The start of a Produce v3 body (null transactional id, acks=-1, timeout) after its header.
fn produce_v3_start() -> BytesMut {
    let mut bytes = header_v1(ApiKey::Produce as i16, 3);
    bytes.put_i16(-1);
    bytes.put_i16(-1);
    bytes.put_i32(10_000);
    bytes
}

/// Frames that cannot be a request, each sent on its own connection: the broker must close
/// that connection without answering.
fn unreadable_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut frames = vec![
        ("a negative frame size", (-1i32).to_be_bytes().to_vec()),
        ("a frame size of i32::MIN", i32::MIN.to_be_bytes().to_vec()),
        // Only the prefix is sent: the broker must refuse before reading (or allocating).
        (
            "a frame over max_request_bytes",
            ((MAX_REQUEST_BYTES + 1) as i32).to_be_bytes().to_vec(),
        ),
        ("an empty frame", framed(&[])),
        ("a frame shorter than a header", framed(&[0, 0, 0])),
        ("an unknown API key", framed(&header_v1(31_337, 0))),
        (
            "an API ringlog does not serve",
            framed(&header_v1(ApiKey::JoinGroup as i16, 5)),
        ),
        (
            "Produce at version 99",
            framed(&header_v1(ApiKey::Produce as i16, 99)),
        ),
        (
            "Produce at version -1",
            framed(&header_v1(ApiKey::Produce as i16, -1)),
        ),
        ("a header whose client id overruns the frame", {
            let mut bytes = header_v1(ApiKey::Metadata as i16, 1);
            bytes.truncate(8);
            bytes.put_i16(30_000);
            bytes.put_slice(b"short");
            framed(&bytes)
        }),
    ];
    let mut lying = |what, tail: &dyn Fn(&mut BytesMut)| {
        let mut bytes = produce_v3_start();
        tail(&mut bytes);
        frames.push((what, framed(&bytes)));
    };
    lying("a topic count of -2", &|b| b.put_i32(-2));
    lying("a topic name longer than the frame", &|b| {
        b.put_i32(1);
        b.put_i16(30_000);
        b.put_slice(b"precious");
    });
    lying("records longer than the frame", &|b| {
        b.put_i32(1);
        b.put_i16(8);
        b.put_slice(TOPIC.as_bytes());
        b.put_i32(1);
        b.put_i32(0);
        b.put_i32(i32::MAX);
        b.put_slice(&[0; 64]);
    });
    frames
}

#[test]
fn unreadable_frames_close_only_their_connection_and_lose_nothing() {
    let (_dir, mut server) = start();
    let seeded = seed(&server);
    // A connection that stays open through the storm keeps working.
    let mut bystander = Connection::connect(server.address());
    for (what, frame) in unreadable_frames() {
        let mut c = Connection::connect(server.address());
        c.send_raw(&frame).unwrap();
        c.assert_closed_by_broker(what);
    }
    // Garbage of every size, and a valid request cut short, then end of stream.
    let mut rng = TestRng::new(9);
    for round in 0..24 {
        let len = 1 + rng.below(if round % 2 == 0 { 64 } else { 70_000 }) as usize;
        let garbage = rng.bytes(len);
        let mut c = Connection::connect(server.address());
        let _ = c.send_raw(&garbage);
        c.shutdown_write();
        c.assert_closed_by_broker(&format!("{len} random bytes"));
    }
    let request = produce_request(
        TOPIC,
        0,
        encode_batch(&[record(None, Some(b"cut"), &[], 1)]),
        -1,
    );
    let whole = encode_frame(ApiKey::Produce, max_version(ApiKey::Produce), &request);
    for cut in [3, 4, 10, whole.len() / 2, whole.len() - 1] {
        let mut c = Connection::connect(server.address());
        c.send_raw(&whole[..cut]).unwrap();
        c.shutdown_write();
        c.assert_closed_by_broker(&format!("a produce frame cut at {cut} of {}", whole.len()));
    }
    // A valid request pipelined with garbage: the request is answered, then the close.
    let mut c = Connection::connect(server.address());
    let mut bytes = encode_frame(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
    bytes.extend_from_slice(&framed(&header_v1(31_337, 0)));
    c.send_raw(&bytes).unwrap();
    let mut answer = c
        .read_frame()
        .unwrap()
        .expect("the ApiVersions answer comes first");
    let _correlation_id = bytes::Buf::get_i32(&mut answer);
    let versions = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(versions.error_code, 0);
    c.assert_closed_by_broker("garbage after a valid request");
    // An ApiVersions version from the future gets UNSUPPORTED_VERSION and the list, at v0.
    let mut c = Connection::connect(server.address());
    c.send_raw(&framed(&header_v1(ApiKey::ApiVersions as i16, 99)))
        .unwrap();
    let mut answer = c
        .read_frame()
        .unwrap()
        .expect("an answer to ApiVersions v99");
    assert_eq!(bytes::Buf::get_i32(&mut answer), 77, "correlation id");
    let versions = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(versions.error_code, UNSUPPORTED_VERSION);
    assert!(versions
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));

    let metadata = bystander
        .call(
            &MetadataRequest::default().with_topics(None),
            max_version(ApiKey::Metadata),
        )
        .expect("the bystander's connection still works");
    let user_topics = metadata.topics.iter().filter(|t| !t.is_internal).count();
    assert_eq!(user_topics, 1);
    assert_intact(&mut server, &seeded);
    assert_real_clients_work(&server, &seeded);
    server.stop_cleanly();
}

/// Requests whose array counts promise far more elements than the frame has bytes: a
/// decoder that sizes its vectors by the count before reading the elements asks for
/// gigabytes, and an allocation failure aborts the process.
fn absurd_counts() -> Vec<(&'static str, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut produce = |what, tail: &dyn Fn(&mut BytesMut)| {
        let mut bytes = produce_v3_start();
        tail(&mut bytes);
        frames.push((what, framed(&bytes)));
    };
    produce("a topic count of i32::MAX", &|b| b.put_i32(i32::MAX));
    produce("a partition count of 1 << 30", &|b| {
        b.put_i32(1);
        b.put_i16(8);
        b.put_slice(TOPIC.as_bytes());
        b.put_i32(1 << 30);
    });
    // Metadata v9+ is flexible: a compact array's count is an unsigned varint (N + 1).
    let mut metadata = BytesMut::new();
    metadata.put_i16(ApiKey::Metadata as i16);
    metadata.put_i16(12);
    metadata.put_i32(78);
    metadata.put_i16(-1);
    metadata.put_u8(0);
    metadata.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    frames.push(("a compact topic count of u32::MAX - 1", framed(&metadata)));
    frames
}

#[test]
fn absurd_array_counts_close_the_connection_and_do_not_crash_the_server() {
    let (_dir, mut server) = start();
    let seeded = seed(&server);
    for (what, frame) in absurd_counts() {
        let mut c = Connection::connect(server.address());
        c.send_raw(&frame).unwrap();
        c.assert_closed_by_broker(what);
        server.assert_running();
    }
    assert_intact(&mut server, &seeded);
    server.stop_cleanly();
}

fn encode_frame<R: kafka_protocol::protocol::Encodable>(
    api: ApiKey,
    version: i16,
    request: &R,
) -> Vec<u8> {
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::Encodable;
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(5)
        .encode(&mut body, api.request_header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    framed(&body)
}

/// A valid batch of `records` with `damage` applied to its bytes.
fn damaged_batch(records: &[Record], damage: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut bytes = encode_batch(records).to_vec();
    damage(&mut bytes);
    Bytes::from(bytes)
}

/// Record batches the broker must refuse, each with the error code it must give.
fn bad_batches() -> Vec<(&'static str, Bytes, i16)> {
    let records = [
        record(Some(b"k"), Some(b"a value that will be damaged"), &[], 5),
        record(None, Some(b"second"), &[], 6),
    ];
    // RecordBatch v2 byte positions: baseOffset 0..8, batchLength 8..12, epoch 12..16,
    // magic 16, crc 17..21, attributes 21..23, lastOffsetDelta 23..27, …, recordCount 57..61.
    vec![
        (
            "a flipped value byte (CRC mismatch)",
            damaged_batch(&records, |b| {
                let last = b.len() - 3;
                b[last] ^= 0x40;
            }),
            CORRUPT_MESSAGE,
        ),
        (
            "a flipped CRC byte",
            damaged_batch(&records, |b| b[18] ^= 0x01),
            CORRUPT_MESSAGE,
        ),
        (
            "magic byte 1",
            damaged_batch(&records, |b| b[16] = 1),
            CORRUPT_MESSAGE,
        ),
        (
            "a batchLength past the end",
            damaged_batch(&records, |b| {
                let past = i32::from_be_bytes([b[8], b[9], b[10], b[11]]) + 100;
                b[8..12].copy_from_slice(&past.to_be_bytes());
            }),
            CORRUPT_MESSAGE,
        ),
        (
            "a batchLength of i32::MAX",
            damaged_batch(&records, |b| {
                b[8..12].copy_from_slice(&(i32::MAX).to_be_bytes());
            }),
            MESSAGE_TOO_LARGE,
        ),
        (
            "a negative batchLength",
            damaged_batch(&records, |b| {
                b[8..12].copy_from_slice(&(-5i32).to_be_bytes());
            }),
            CORRUPT_MESSAGE,
        ),
        (
            "a truncated batch",
            damaged_batch(&records, |b| b.truncate(b.len() - 10)),
            CORRUPT_MESSAGE,
        ),
        (
            "a valid batch followed by junk",
            damaged_batch(&records, |b| b.extend_from_slice(&[1, 2, 3])),
            CORRUPT_MESSAGE,
        ),
        (
            "bytes that are no batch",
            Bytes::from_static(b"this is not a record batch at all, not even close"),
            CORRUPT_MESSAGE,
        ),
        ("no records at all", Bytes::new(), CORRUPT_MESSAGE),
    ]
}

#[test]
fn invalid_requests_get_kafka_error_codes_and_change_nothing() {
    let (_dir, mut server) = start();
    let seeded = seed(&server);
    let mut c = Connection::connect(server.address());
    bad_produces(&mut c);
    bad_topics(&mut c);
    bad_offsets_and_sizes(&mut c, seeded[0].len() as i64);
    assert_intact(&mut server, &seeded);
    assert_real_clients_work(&server, &seeded);
    let log = server.stop_cleanly();
    assert!(!log.contains("panicked"), "no panic in the server:\n{log}");
}

/// Batches that are no valid batch, places that do not exist, acks that mean nothing.
fn bad_produces(c: &mut Connection) {
    for (what, batch, code) in bad_batches() {
        let answer = c.produce_raw(TOPIC, 0, batch, -1);
        assert_eq!(answer.error_code, code, "{what}");
        assert_eq!(answer.base_offset, -1, "{what}: nothing appended");
    }
    // A batch over the engine's size limit (the request itself is within the server's).
    let huge = vec![0x5a; BATCH_SIZE_BYTES_MAX + 1024];
    let answer = c.produce(TOPIC, 1, &[record(None, Some(&huge), &[], 1)], -1);
    assert_eq!(
        answer.error_code, MESSAGE_TOO_LARGE,
        "a batch over the size limit"
    );

    // Wrong places to produce to, and wrong acks.
    let one = [record(None, Some(b"lost"), &[], 1)];
    let missing = c.produce("no-such-topic", 0, &one, -1);
    assert_eq!(
        missing.error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "auto-creation is off"
    );
    for partition in [-1, PARTITIONS, 1_000_000, i32::MAX] {
        let answer = c.produce(TOPIC, partition, &one, -1);
        assert_eq!(
            answer.error_code, UNKNOWN_TOPIC_OR_PARTITION,
            "partition {partition}"
        );
    }
    for acks in [2, -2, i16::MAX] {
        let request: ProduceRequest = produce_request(TOPIC, 0, encode_batch(&one), acks);
        let response = c
            .call(&request, max_version(ApiKey::Produce))
            .expect("an answer");
        let answer = &response.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, INVALID_REQUIRED_ACKS, "acks={acks}");
    }
}

/// Invalid topic names, absurd partition counts and replication factors.
fn bad_topics(c: &mut Connection) {
    let long = "x".repeat(250);
    let creatable = |name: &str, partitions: i32, replication: i16| {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(replication)
    };
    let cases = [
        (creatable("", 1, 1), INVALID_TOPIC_EXCEPTION),
        (creatable(".", 1, 1), INVALID_TOPIC_EXCEPTION),
        (creatable("..", 1, 1), INVALID_TOPIC_EXCEPTION),
        (creatable("a/b", 1, 1), INVALID_TOPIC_EXCEPTION),
        (creatable("has space", 1, 1), INVALID_TOPIC_EXCEPTION),
        (creatable("nul\0byte", 1, 1), INVALID_TOPIC_EXCEPTION),
        (creatable(&long, 1, 1), INVALID_TOPIC_EXCEPTION),
        (creatable("zero-partitions", 0, 1), INVALID_PARTITIONS),
        (creatable("negative-partitions", -5, 1), INVALID_PARTITIONS),
        (
            creatable("too-many-partitions", i32::MAX, 1),
            INVALID_PARTITIONS,
        ),
        (
            creatable("three-replicas", 1, 3),
            INVALID_REPLICATION_FACTOR,
        ),
        (
            creatable("negative-replicas", 1, -7),
            INVALID_REPLICATION_FACTOR,
        ),
    ];
    for (topic, code) in cases {
        let name = topic.name.0.to_string();
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![topic]);
        let response = c
            .call(&request, max_version(ApiKey::CreateTopics))
            .expect("an answer");
        assert_eq!(response.topics[0].error_code, code, "create {name:?}");
    }
    let topics = ["a/b", "no-such-topic", "..", ""]
        .iter()
        .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
        .collect();
    let request = MetadataRequest::default()
        .with_topics(Some(topics))
        .with_allow_auto_topic_creation(true);
    let response = c
        .call(&request, max_version(ApiKey::Metadata))
        .expect("metadata");
    let codes: Vec<i16> = response.topics.iter().map(|t| t.error_code).collect();
    let want = [
        INVALID_TOPIC_EXCEPTION,
        UNKNOWN_TOPIC_OR_PARTITION,
        INVALID_TOPIC_EXCEPTION,
        INVALID_TOPIC_EXCEPTION,
    ];
    assert_eq!(codes, want, "metadata for invalid and missing topics");
    let all = c
        .call(
            &MetadataRequest::default().with_topics(None),
            max_version(ApiKey::Metadata),
        )
        .expect("metadata");
    let names: Vec<String> = all
        .topics
        .iter()
        .filter(|t| !t.is_internal)
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    assert_eq!(names, [TOPIC], "nothing was created by the bad requests");
}

/// Offsets and sizes that make no sense; `end` is partition 0's high watermark.
fn bad_offsets_and_sizes(c: &mut Connection, end: i64) {
    for offset in [-5, i64::MIN, end + 1, i64::MAX] {
        let (error, _, records) = c.fetch_once(TOPIC, 0, offset);
        assert_eq!(
            (error, records.len()),
            (OFFSET_OUT_OF_RANGE, 0),
            "fetch at {offset}"
        );
    }
    let (error, ..) = c.fetch_once("no-such-topic", 0, 0);
    assert_eq!(error, UNKNOWN_TOPIC_OR_PARTITION);
    let mut odd = fetch_request(TOPIC, 0, 0)
        .with_max_bytes(i32::MIN)
        .with_max_wait_ms(-1)
        .with_min_bytes(i32::MIN);
    odd.topics[0].partitions[0].partition_max_bytes = -1;
    let response = c
        .call(&odd, max_version(ApiKey::Fetch))
        .expect("negative sizes get an answer");
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    // min_bytes beyond what exists and no wait: answered at once, with what there is.
    let greedy = fetch_request(TOPIC, 0, 0)
        .with_min_bytes(i32::MAX)
        .with_max_wait_ms(0);
    let response = c
        .call(&greedy, max_version(ApiKey::Fetch))
        .expect("an answer");
    assert_eq!(response.responses[0].partitions[0].high_watermark, end);
    // -3 (the largest timestamp) is a real question from version 7 on; these are not.
    for timestamp in [-6, -7, i64::MIN] {
        let (error, _) = c.list_offset(TOPIC, 0, timestamp);
        assert_ne!(error, 0, "ListOffsets at timestamp {timestamp}");
    }
    let (error, _) = c.list_offset("no-such-topic", 0, LATEST);
    assert_eq!(error, UNKNOWN_TOPIC_OR_PARTITION);
}
