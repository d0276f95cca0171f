//! The metrics endpoint, end to end in-process: produce and fetch through the Kafka
//! listener, then scrape `GET /metrics` over plain HTTP and check that every counter moved
//! by exactly what was done (deltas between two scrapes, since the counters are
//! process-wide), and that other paths, methods and oversized heads are refused.

// The samples compared exactly are counts and offsets: integers, exact in an f64 far
// beyond what a test reaches.
#![allow(clippy::float_cmp)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, CreateTopicsRequest, FetchRequest, GroupId, OffsetCommitRequest,
    ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ringlog_engine::batch::BatchBuilder;
use ringlog_engine::topic::IoMode;
use ringlog_server::admin::AdminClient;
use ringlog_server::config::ServerConfig;
use ringlog_server::metrics::HTTP_HEAD_BYTES_MAX;
use ringlog_server::server::Server;

const TOPIC: &str = "metered";
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

/// Sends one HTTP request; returns the status line, the headers and the body.
fn http(address: SocketAddr, request: &[u8]) -> (String, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// Every sample of a scrape, by its name and labels as written.
fn scrape(address: SocketAddr) -> HashMap<String, f64> {
    let (status, headers, body) = http(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (sample, value) = line.rsplit_once(' ').unwrap();
            (sample.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, sample: &str) -> f64 {
    let value = |scrape: &HashMap<String, f64>| scrape.get(sample).copied().unwrap_or(0.0);
    assert!(after.contains_key(sample), "no sample {sample}");
    value(after) - value(before)
}

/// Produces `records` records in one batch with acks=all; returns the response's error
/// code and the batch's size.
fn produce(client: &mut AdminClient, partition: i32, records: usize) -> (i16, usize) {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        let value = format!("value-{i}");
        builder
            .push(0, Some(b"key"), Some(value.as_bytes()), &[])
            .unwrap();
    }
    let batch = Bytes::from(builder.build());
    let size = batch.len();
    let data = PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(batch));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(TOPIC))
            .with_partition_data(vec![data])]);
    let response = client.call(&request, 9).unwrap();
    (
        response.responses[0].partition_responses[0].error_code,
        size,
    )
}

/// Fetches partition 0 from offset 0; returns the record bytes received.
fn fetch(client: &mut AdminClient) -> u64 {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(TOPIC))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response = client.call(&request, 12).unwrap();
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    partition.records.as_ref().unwrap().len() as u64
}

fn start(io_mode: IoMode) -> (tempfile::TempDir, Server, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..ServerConfig::ephemeral(dir.path().join("data"))
    };
    config.topic_defaults.set_io_mode(io_mode);
    let server = Server::start(config).unwrap();
    let metrics = server.metrics_address().unwrap();
    assert_ne!(metrics.port(), 0);
    (dir, server, metrics)
}

/// The counter tests compare process-wide counters before and after: one at a time.
static COUNTING: Mutex<()> = Mutex::new(());

#[test]
fn counters_move_by_what_clients_did_with_direct_io() {
    counters_move_by_what_clients_did(IoMode::Direct);
}

#[test]
fn counters_move_by_what_clients_did_with_buffered_io() {
    counters_move_by_what_clients_did(IoMode::Buffered);
}

fn counters_move_by_what_clients_did(io_mode: IoMode) {
    let _alone = COUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (_dir, server, metrics) = start(io_mode);
    let mut client = AdminClient::connect(&server.address().to_string()).unwrap();
    let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name(TOPIC))
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    assert_eq!(client.call(&create, 7).unwrap().topics[0].error_code, 0);
    let before = scrape(metrics);

    let mut batch_bytes = 0;
    for records in [5, 6, 7] {
        let (error_code, size) = produce(&mut client, 0, records);
        assert_eq!(error_code, 0);
        batch_bytes += size;
    }
    let (error_code, _) = produce(&mut client, 9, 1);
    assert_eq!(
        error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "partition 9 does not exist"
    );
    let fetched = fetch(&mut client);
    // A connection answers in order and counts each request before reading the next, so
    // once this answer is back, everything above is counted.
    client.call(&ApiVersionsRequest::default(), 3).unwrap();
    let after = scrape(metrics);
    let moved = |sample: &str| delta(&before, &after, sample);

    assert_eq!(moved("ringlog_requests_total{api=\"Produce\"}"), 4.0);
    assert_eq!(moved("ringlog_request_errors_total{api=\"Produce\"}"), 1.0);
    assert_eq!(moved("ringlog_requests_total{api=\"Fetch\"}"), 1.0);
    assert_eq!(moved("ringlog_request_errors_total{api=\"Fetch\"}"), 0.0);
    assert!(moved("ringlog_request_bytes_total{api=\"Produce\"}") > batch_bytes as f64);
    let fetch_out = moved("ringlog_response_bytes_total{api=\"Fetch\"}");
    assert!(fetch_out > fetched as f64, "{fetch_out}");
    assert_eq!(moved("ringlog_records_appended_total"), 18.0);
    assert!(fetched > 0);
    // Direct I/O: the fetch is served from the batch cache (the groups just written);
    // buffered: spliced from the segment file.
    let (from_cache, spliced) = match io_mode {
        IoMode::Direct => (fetched as f64, 0.0),
        IoMode::Buffered => (0.0, fetched as f64),
    };
    assert_eq!(moved("ringlog_fetch_cache_bytes_total"), from_cache);
    assert_eq!(moved("ringlog_batch_cache_hit_bytes_total"), from_cache);
    assert_eq!(moved("ringlog_batch_cache_miss_bytes_total"), 0.0);
    assert_eq!(moved("ringlog_fetch_zero_copy_bytes_total"), spliced);
    if io_mode == IoMode::Direct {
        assert!(after["ringlog_batch_cache_bytes"] > 0.0);
    }
    let end = "{topic=\"metered\",partition=\"0\"}";
    assert_eq!(
        after[&format!("ringlog_partition_log_end_offset{end}")],
        18.0
    );
    assert_eq!(
        after[&format!("ringlog_partition_high_watermark{end}")],
        18.0
    );
    assert_eq!(
        after[&format!("ringlog_partition_log_start_offset{end}")],
        0.0
    );

    assert_eq!(moved("ringlog_produce_latency_seconds_count"), 4.0);
    assert_eq!(
        moved("ringlog_produce_latency_seconds_bucket{le=\"+Inf\"}"),
        4.0
    );
    assert!(moved("ringlog_produce_latency_seconds_sum") > 0.0);
    assert_eq!(moved("ringlog_fetch_latency_seconds_count"), 1.0);
    // Each acks=all produce waited for its own group's sync: three groups, one append each.
    assert_eq!(moved("ringlog_group_commit_appends_count"), 3.0);
    assert_eq!(moved("ringlog_group_commit_appends_bucket{le=\"1\"}"), 3.0);
    assert_eq!(moved("ringlog_group_commit_bytes_sum"), batch_bytes as f64);
    assert!(moved("ringlog_fdatasync_latency_seconds_count") >= 3.0);
    assert!(moved("ringlog_fdatasync_latency_seconds_sum") > 0.0);

    // A group's committed offset, and its lag behind the high watermark of 18.
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("auditors")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(name(TOPIC))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(11)])]);
    let answer = client.call(&commit, 8).unwrap();
    assert_eq!(answer.topics[0].partitions[0].error_code, 0);
    let groups = scrape(metrics);
    let labels = "{group=\"auditors\",topic=\"metered\",partition=\"0\"}";
    assert_eq!(
        groups[&format!("ringlog_group_committed_offset{labels}")],
        11.0
    );
    assert_eq!(groups[&format!("ringlog_group_lag{labels}")], 7.0);
    server.stop().unwrap();
}

#[test]
fn only_get_metrics_is_served() {
    let (_dir, server, metrics) = start(IoMode::Direct);
    let (status, headers, _) = http(metrics, b"GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(headers.contains("Connection: close"), "{headers}");
    let (status, _, _) = http(metrics, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    // Exactly the limit and no end of head: the server reads it all before refusing, so
    // closing leaves no unread bytes (which would reset the connection under the reply).
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    huge.resize(HTTP_HEAD_BYTES_MAX, b'a');
    let (status, _, _) = http(metrics, &huge);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    let (status, _, body) = http(metrics, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("# TYPE ringlog_requests_total counter"));
    server.stop().unwrap();
}
