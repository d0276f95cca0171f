//! Fetch responses send record bytes from segment files to the socket without copying them
//! (splice): the counters prove it, and the bytes a client decodes are exactly the batches
//! produced, at every Fetch version ringlog speaks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringlog_engine::batch::{BatchBuilder, RecordBatch};
use ringlog_server::admin::AdminClient;
use ringlog_server::config::ServerConfig;
use ringlog_server::protocol::supported;
use ringlog_server::server::Server;
use ringlog_server::zero_copy::{BYTES_SENT_COPIED, BYTES_SENT_ZERO_COPY};

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

#[test]
fn fetched_records_are_spliced_from_the_segment_files_at_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = ServerConfig {
        data_dir: dir.path().join("data"),
        listen: any_port,
        advertised_listener: any_port,
        shards: 2,
        ..ServerConfig::default()
    };
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
    let (min, max) = supported(kafka_protocol::messages::ApiKey::Fetch).unwrap();
    for version in min..=max {
        let before = BYTES_SENT_ZERO_COPY.load(Ordering::SeqCst);
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
                .with_partitions(partitions)]);
        let response = client.call(&request, version).unwrap();
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
        let spliced = BYTES_SENT_ZERO_COPY.load(Ordering::SeqCst) - before;
        assert_eq!(
            spliced, received,
            "v{version}: every record byte came from a splice"
        );
    }
    assert_eq!(
        BYTES_SENT_COPIED.load(Ordering::SeqCst),
        0,
        "nothing was copied"
    );
    server.stop().unwrap();
}
