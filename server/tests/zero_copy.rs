//! Fetch responses send record bytes to the socket without copying them: from segment files
//! (splice) for buffered topics, from the batch cache's buffers for direct-I/O ones. The
//! counters prove it, and the bytes a client decodes are exactly the batches produced, at
//! every Fetch version ringlog speaks (by topic name up to version 12, by topic id from 13
//! on).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ApiVersionsRequest;
use kafka_protocol::messages::{
    CreateTopicsRequest, FetchRequest, MetadataRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ringlog_engine::batch::{BatchBuilder, RecordBatch};
use ringlog_engine::topic::IoMode;
use ringlog_server::admin::AdminClient;
use ringlog_server::config::ServerConfig;
use ringlog_server::protocol::supported;
use ringlog_server::server::Server;
use ringlog_server::zero_copy::{BYTES_SENT_COPIED, BYTES_SENT_FROM_CACHE, BYTES_SENT_ZERO_COPY};
use uuid::Uuid;

/// The first Fetch version that names topics by id.
const FETCH_TOPIC_ID_VERSION: i16 = 13;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

fn produce(client: &mut AdminClient, partition: i32, values: &[String]) {
    let mut builder = BatchBuilder::new();
    for value in values {
        builder
            .push(0, Some(b"key"), Some(value.as_bytes()), &[])
            .unwrap();
    }
    let data = PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(Bytes::from(builder.build())));
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name("zc"))
            .with_partition_data(vec![data])]);
    let response = client.call(&request, 9).unwrap();
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
}

/// The id of topic `text`, from Metadata.
fn topic_id(client: &mut AdminClient, text: &str) -> Uuid {
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(name(text))),
    ]));
    let response = client.call(&request, 12).unwrap();
    let id = response.topics[0].topic_id;
    assert!(!id.is_nil(), "{text} has a topic id");
    id
}

/// Record values in `bytes` (whole batches), with their offsets.
fn values(bytes: &[u8]) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok((batch, next)) = RecordBatch::parse(rest) {
        for record in batch.records().unwrap() {
            let record = record.unwrap();
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            out.push((batch.base_offset() + i64::from(record.offset_delta), value));
        }
        rest = next;
    }
    out
}

/// The tests compare process-wide counters before and after: one at a time.
static COUNTING: Mutex<()> = Mutex::new(());

#[test]
fn buffered_records_are_spliced_from_the_segment_files_at_every_version() {
    fetched_without_copies_at_every_version(IoMode::Buffered, &BYTES_SENT_ZERO_COPY);
}

#[test]
fn direct_records_are_sent_from_the_batch_cache_at_every_version() {
    fetched_without_copies_at_every_version(IoMode::Direct, &BYTES_SENT_FROM_CACHE);
}

/// Fetches at every version from a server whose topics use `io_mode`; every record byte
/// must be counted by `sent_by` (the way that mode sends).
fn fetched_without_copies_at_every_version(io_mode: IoMode, sent_by: &AtomicU64) {
    let _alone = COUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path().join("data"));
    config.topic_defaults.set_io_mode(io_mode);
    let server = Server::start(config).unwrap();
    let mut client = AdminClient::connect(&server.address().to_string()).unwrap();
    let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name("zc"))
        .with_num_partitions(2)
        .with_replication_factor(1)]);
    assert_eq!(client.call(&create, 7).unwrap().topics[0].error_code, 0);
    let mut expected = [Vec::new(), Vec::new()];
    for partition in 0..2 {
        for batch in 0..3 {
            let values: Vec<String> = (0..20)
                .map(|i| format!("p{partition}-b{batch}-{i}-{}", "v".repeat(50)))
                .collect();
            produce(&mut client, partition, &values);
            expected[partition as usize].extend(values);
        }
    }
    let id = topic_id(&mut client, "zc");
    let (min, max) = supported(kafka_protocol::messages::ApiKey::Fetch).unwrap();
    assert!(max >= FETCH_TOPIC_ID_VERSION, "fetch by topic id is tested");
    for version in min..=max {
        let before = sent_by.load(Ordering::SeqCst);
        let partitions = (0..2)
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect();
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 24)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name("zc"))
                .with_topic_id(id)
                .with_partitions(partitions)]);
        let response = client.call(&request, version).unwrap();
        if version >= FETCH_TOPIC_ID_VERSION {
            assert_eq!(response.responses[0].topic_id, id, "v{version}");
        } else {
            assert_eq!(response.responses[0].topic.0.as_str(), "zc", "v{version}");
        }
        let mut received = 0u64;
        for (index, partition) in response.responses[0].partitions.iter().enumerate() {
            assert_eq!(partition.error_code, 0, "v{version}");
            assert_eq!(partition.high_watermark, 60, "v{version}");
            let records = partition.records.clone().unwrap();
            received += records.len() as u64;
            let got: Vec<String> = values(&records)
                .into_iter()
                .map(|(_, value)| value)
                .collect();
            assert_eq!(got, expected[index], "v{version} partition {index}");
        }
        // Up to version 11 a response ends with the last partition's records, so the client
        // can hold every byte before the server counts the last splice. A connection reads
        // its next request only once the previous response is sent and counted: one more
        // round trip on it makes the count complete.
        client.call(&ApiVersionsRequest::default(), 0).unwrap();
        let sent = sent_by.load(Ordering::SeqCst) - before;
        assert_eq!(
            sent, received,
            "v{version} {io_mode:?}: every record byte was sent without a copy"
        );
    }
    assert_eq!(
        BYTES_SENT_COPIED.load(Ordering::SeqCst),
        0,
        "nothing was copied"
    );
    server.stop().unwrap();
}
