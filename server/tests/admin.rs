//! The admin APIs (CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs,
//! DescribeCluster, DeleteRecords, AlterPartitionReassignments, ListPartitionReassignments)
//! at every version ringlog advertises, and the `ringlog topic` commands, against a real
//! server started in-process on a free port with a temporary data directory. Requests are
//! encoded with `kafka-protocol`'s client side and sent over a plain TCP connection
//! (`ringlog_server::admin::AdminClient`).

use std::net::SocketAddr;
use std::process::{Command, Output};

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    alter_configs_request, alter_partition_reassignments_request,
    incremental_alter_configs_request, list_partition_reassignments_request, AlterConfigsRequest,
    AlterPartitionReassignmentsRequest, ApiKey, ApiVersionsRequest, BrokerId,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteRecordsRequest, DescribeClusterRequest,
    DescribeConfigsRequest, IncrementalAlterConfigsRequest, ListOffsetsRequest,
    ListPartitionReassignmentsRequest, MetadataRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ringlog_engine::batch::BatchBuilder;
use ringlog_server::admin::AdminClient;
use ringlog_server::config::ServerConfig;
use ringlog_server::server::Server;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;

const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;

/// A server on a free port over a temporary directory; stopped when dropped.
struct Running {
    server: Option<Server>,
    config: ServerConfig,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            auto_create_topics: false,
            ..ServerConfig::ephemeral(dir.path().join("data"))
        };
        let server = Server::start(config.clone()).unwrap();
        Running {
            server: Some(server),
            config,
            _dir: dir,
        }
    }

    /// Stops the server and starts it again on the same data directory (a new port).
    fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().unwrap();
        }
        self.server = Some(Server::start(self.config.clone()).unwrap());
    }

    fn address(&self) -> SocketAddr {
        self.server.as_ref().unwrap().address()
    }

    fn client(&self) -> AdminClient {
        AdminClient::connect(&self.address().to_string()).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().unwrap();
        }
    }
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn name(s: &str) -> TopicName {
    TopicName(text(s))
}

fn create_topic(client: &mut AdminClient, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(text(k))
                .with_value(Some(text(v)))
        })
        .collect();
    let request = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(configs)]);
    let response = client.call(&request, 7).unwrap();
    assert_eq!(response.topics[0].error_code, NONE, "{response:?}");
}

fn partition_count(client: &mut AdminClient, topic: &str) -> usize {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    let response = client.call(&request, 12).unwrap();
    assert_eq!(response.topics[0].error_code, NONE);
    response.topics[0].partitions.len()
}

fn produce(client: &mut AdminClient, topic: &str, partition: i32, count: usize) {
    let mut builder = BatchBuilder::new();
    for index in 0..count {
        let value = format!("record-{index}");
        builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
    }
    let data = PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(Bytes::from(builder.build())));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![data])]);
    let response = client.call(&request, 9).unwrap();
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, NONE, "{response:?}");
}

fn earliest_offset(client: &mut AdminClient, topic: &str, partition: i32) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-2)])]);
    let response = client.call(&request, 7).unwrap();
    let answer = &response.topics[0].partitions[0];
    assert_eq!(answer.error_code, NONE);
    answer.offset
}

fn describe_configs(
    client: &mut AdminClient,
    version: i16,
    resource_type: i8,
    resource: &str,
    keys: Option<&[&str]>,
    synonyms: bool,
) -> DescribeConfigsResult {
    let keys = keys.map(|keys| keys.iter().map(|k| text(k)).collect());
    let request = DescribeConfigsRequest::default()
        .with_include_synonyms(synonyms)
        .with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(text(resource))
            .with_configuration_keys(keys)]);
    let mut response = client.call(&request, version).unwrap();
    assert_eq!(response.results.len(), 1);
    response.results.remove(0)
}

fn entry<'a>(result: &'a DescribeConfigsResult, key: &str) -> &'a DescribeConfigsResourceResult {
    result
        .configs
        .iter()
        .find(|c| c.name.as_str() == key)
        .unwrap_or_else(|| panic!("no {key} in {result:?}"))
}

fn value(client: &mut AdminClient, topic: &str, key: &str) -> (String, i8) {
    let result = describe_configs(client, 4, TOPIC, topic, Some(&[key]), false);
    assert_eq!(result.error_code, NONE, "{result:?}");
    let found = entry(&result, key);
    (
        found.value.as_ref().unwrap().to_string(),
        found.config_source,
    )
}

#[test]
fn api_versions_advertise_exactly_the_admin_versions_implemented() {
    let running = Running::start();
    let mut client = running.client();
    let response = client.call(&ApiVersionsRequest::default(), 3).unwrap();
    let range = |api: ApiKey| {
        response
            .api_keys
            .iter()
            .find(|k| k.api_key == api as i16)
            .map(|k| (k.min_version, k.max_version))
    };
    assert_eq!(range(ApiKey::CreatePartitions), Some((0, 3)));
    assert_eq!(range(ApiKey::DescribeConfigs), Some((1, 4)));
    assert_eq!(range(ApiKey::AlterConfigs), Some((0, 2)));
    assert_eq!(range(ApiKey::IncrementalAlterConfigs), Some((0, 1)));
    assert_eq!(range(ApiKey::DescribeCluster), Some((0, 2)));
    assert_eq!(range(ApiKey::DeleteRecords), Some((0, 2)));
    assert_eq!(range(ApiKey::AlterPartitionReassignments), Some((0, 1)));
    assert_eq!(range(ApiKey::ListPartitionReassignments), Some((0, 0)));
}

fn create_partitions(
    client: &mut AdminClient,
    version: i16,
    topics: Vec<CreatePartitionsTopic>,
    validate_only: bool,
) -> Vec<(String, i16, Option<String>)> {
    let request = CreatePartitionsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(10_000)
        .with_validate_only(validate_only);
    let response = client.call(&request, version).unwrap();
    response
        .results
        .iter()
        .map(|r| {
            let message = r.error_message.as_ref().map(ToString::to_string);
            (r.name.0.to_string(), r.error_code, message)
        })
        .collect()
}

fn grow(topic: &str, count: i32) -> CreatePartitionsTopic {
    CreatePartitionsTopic::default()
        .with_name(name(topic))
        .with_count(count)
        .with_assignments(None)
}

#[test]
fn create_partitions_grows_topics_at_every_version() {
    let running = Running::start();
    let mut client = running.client();
    for version in 0..=3 {
        let topic = format!("grow-{version}");
        create_topic(&mut client, &topic, 1, &[]);
        let validated = create_partitions(&mut client, version, vec![grow(&topic, 5)], true);
        assert_eq!(validated[0].1, NONE, "v{version}: {validated:?}");
        assert_eq!(
            partition_count(&mut client, &topic),
            1,
            "validate_only changes nothing"
        );
        let grown = create_partitions(&mut client, version, vec![grow(&topic, 3)], false);
        assert_eq!(grown, vec![(topic.clone(), NONE, None)], "v{version}");
        assert_eq!(partition_count(&mut client, &topic), 3);
        produce(&mut client, &topic, 2, 1);
        let shrink = create_partitions(&mut client, version, vec![grow(&topic, 2)], false);
        assert_eq!(shrink[0].1, INVALID_PARTITIONS, "v{version}");
        assert!(shrink[0].2.as_deref().unwrap().contains('3'), "{shrink:?}");
        let missing = create_partitions(&mut client, version, vec![grow("nope", 2)], false);
        assert_eq!(missing[0].1, UNKNOWN_TOPIC_OR_PARTITION, "v{version}");
        let elsewhere = grow(&topic, 4).with_assignments(Some(vec![
            CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(3)]),
        ]));
        let refused = create_partitions(&mut client, version, vec![elsewhere], false);
        assert_eq!(refused[0].1, INVALID_REPLICA_ASSIGNMENT, "v{version}");
        let here = grow(&topic, 4).with_assignments(Some(vec![
            CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(0)]),
        ]));
        assert_eq!(
            create_partitions(&mut client, version, vec![here], false)[0].1,
            NONE
        );
        assert_eq!(partition_count(&mut client, &topic), 4);
        let twice = create_partitions(
            &mut client,
            version,
            vec![grow(&topic, 9), grow(&topic, 9)],
            false,
        );
        assert!(twice.iter().all(|r| r.1 == INVALID_REQUEST), "{twice:?}");
        assert_eq!(partition_count(&mut client, &topic), 4);
    }
}

#[test]
fn describe_configs_shows_values_and_sources_at_every_version() {
    let running = Running::start();
    let mut client = running.client();
    create_topic(&mut client, "described", 1, &[("retention.ms", "1000")]);
    for version in 1..=4 {
        let all = describe_configs(&mut client, version, TOPIC, "described", None, false);
        assert_eq!(all.error_code, NONE, "v{version}");
        assert_eq!(all.resource_name.as_str(), "described");
        assert_eq!(all.configs.len(), 14, "every key ringlog knows");
        let insync = entry(&all, "min.insync.replicas");
        assert_eq!(insync.value.as_deref(), Some("1"), "Kafka's default");
        let retention = entry(&all, "retention.ms");
        assert_eq!(retention.value.as_deref(), Some("1000"));
        assert_eq!(retention.config_source, DYNAMIC_TOPIC_CONFIG, "v{version}");
        assert!(!retention.read_only);
        assert!(
            retention.synonyms.is_empty(),
            "synonyms only when asked for"
        );
        let expected_type = if version >= 3 { 5 } else { 0 };
        assert_eq!(retention.config_type, expected_type, "LONG from version 3");
        let segment = entry(&all, "segment.bytes");
        assert_eq!(segment.value.as_deref(), Some("1073741824"));
        assert_eq!(segment.config_source, DEFAULT_CONFIG);
        let some = describe_configs(
            &mut client,
            version,
            TOPIC,
            "described",
            Some(&["retention.ms", "no.such.key"]),
            true,
        );
        assert_eq!(some.configs.len(), 1, "only the keys asked for");
        let synonyms: Vec<(String, i8)> = some.configs[0]
            .synonyms
            .iter()
            .map(|s| (s.value.as_ref().unwrap().to_string(), s.source))
            .collect();
        assert_eq!(
            synonyms,
            vec![
                ("1000".to_owned(), DYNAMIC_TOPIC_CONFIG),
                ("604800000".to_owned(), DEFAULT_CONFIG)
            ]
        );
        let missing = describe_configs(&mut client, version, TOPIC, "nope", None, false);
        assert_eq!(missing.error_code, UNKNOWN_TOPIC_OR_PARTITION, "v{version}");
        assert!(missing.configs.is_empty());
        let broker = describe_configs(&mut client, version, BROKER, "0", None, false);
        assert_eq!(broker.error_code, NONE);
        let node = entry(&broker, "node.id");
        assert_eq!(node.value.as_deref(), Some("0"));
        assert!(node.read_only);
        assert_eq!(node.config_source, STATIC_BROKER_CONFIG);
        let auto_create = entry(&broker, "auto.create.topics.enable");
        assert_eq!(
            auto_create.value.as_deref(),
            Some("false"),
            "this server's setting"
        );
        let other = describe_configs(&mut client, version, BROKER, "7", None, false);
        assert_eq!(other.error_code, INVALID_REQUEST);
    }
}

fn alter_configs(
    client: &mut AdminClient,
    version: i16,
    resource_type: i8,
    resource: &str,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> (i16, Option<String>) {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            alter_configs_request::AlterableConfig::default()
                .with_name(text(k))
                .with_value(Some(text(v)))
        })
        .collect();
    let request = AlterConfigsRequest::default()
        .with_validate_only(validate_only)
        .with_resources(vec![alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(text(resource))
            .with_configs(configs)]);
    let response = client.call(&request, version).unwrap();
    let answer = &response.responses[0];
    assert_eq!(answer.resource_name.as_str(), resource);
    let message = answer.error_message.as_ref().map(ToString::to_string);
    (answer.error_code, message)
}

#[test]
fn alter_configs_replaces_the_whole_config_at_every_version() {
    let running = Running::start();
    let mut client = running.client();
    for version in 0..=2 {
        let topic = format!("replaced-{version}");
        create_topic(&mut client, &topic, 2, &[("retention.ms", "1000")]);
        let set = [("segment.bytes", "1048576")];
        assert_eq!(
            alter_configs(&mut client, version, TOPIC, &topic, &set, false).0,
            NONE
        );
        assert_eq!(
            value(&mut client, &topic, "segment.bytes"),
            ("1048576".to_owned(), 1)
        );
        assert_eq!(
            value(&mut client, &topic, "retention.ms"),
            ("604800000".to_owned(), DEFAULT_CONFIG),
            "v{version}: keys not given revert to the default"
        );
        let probe = [("max.message.bytes", "2000")];
        assert_eq!(
            alter_configs(&mut client, version, TOPIC, &topic, &probe, true).0,
            NONE
        );
        assert_eq!(
            value(&mut client, &topic, "max.message.bytes").1,
            DEFAULT_CONFIG
        );
        assert_eq!(value(&mut client, &topic, "segment.bytes").0, "1048576");
        let bad = alter_configs(
            &mut client,
            version,
            TOPIC,
            &topic,
            &[("segment.ms", "x")],
            false,
        );
        assert_eq!(bad.0, INVALID_CONFIG);
        assert!(bad.1.unwrap().contains("segment.ms"));
        assert_eq!(
            value(&mut client, &topic, "segment.bytes").0,
            "1048576",
            "unchanged"
        );
        let missing = alter_configs(&mut client, version, TOPIC, "nope", &set, false);
        assert_eq!(missing.0, UNKNOWN_TOPIC_OR_PARTITION);
        let broker = alter_configs(&mut client, version, BROKER, "0", &set, false);
        assert_eq!(broker.0, INVALID_REQUEST);
    }
}

fn incremental(
    client: &mut AdminClient,
    version: i16,
    topic: &str,
    ops: &[(&str, i8, Option<&str>)],
    validate_only: bool,
) -> (i16, Option<String>) {
    let configs = ops
        .iter()
        .map(|(k, op, v)| {
            incremental_alter_configs_request::AlterableConfig::default()
                .with_name(text(k))
                .with_config_operation(*op)
                .with_value(v.map(text))
        })
        .collect();
    let request = IncrementalAlterConfigsRequest::default()
        .with_validate_only(validate_only)
        .with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(TOPIC)
                .with_resource_name(text(topic))
                .with_configs(configs),
        ]);
    let response = client.call(&request, version).unwrap();
    let answer = &response.responses[0];
    let message = answer.error_message.as_ref().map(ToString::to_string);
    (answer.error_code, message)
}

#[test]
fn incremental_alter_configs_sets_and_reverts_single_keys_at_every_version() {
    let running = Running::start();
    let mut client = running.client();
    for version in 0..=1 {
        let topic = format!("edited-{version}");
        create_topic(&mut client, &topic, 1, &[("retention.ms", "1000")]);
        let set_segment = [("segment.bytes", SET, Some("1048576"))];
        assert_eq!(
            incremental(&mut client, version, &topic, &set_segment, false).0,
            NONE
        );
        assert_eq!(value(&mut client, &topic, "segment.bytes").0, "1048576");
        assert_eq!(
            value(&mut client, &topic, "retention.ms"),
            ("1000".to_owned(), DYNAMIC_TOPIC_CONFIG),
            "v{version}: other keys keep their values"
        );
        let revert = [("retention.ms", DELETE, None)];
        assert_eq!(
            incremental(&mut client, version, &topic, &revert, false).0,
            NONE
        );
        assert_eq!(
            value(&mut client, &topic, "retention.ms"),
            ("604800000".to_owned(), DEFAULT_CONFIG)
        );
        assert_eq!(value(&mut client, &topic, "segment.bytes").0, "1048576");
        let probe = [("retention.ms", SET, Some("5"))];
        assert_eq!(
            incremental(&mut client, version, &topic, &probe, true).0,
            NONE
        );
        assert_eq!(value(&mut client, &topic, "retention.ms").1, DEFAULT_CONFIG);
        let append = [("retention.ms", APPEND, Some("5"))];
        let refused = incremental(&mut client, version, &topic, &append, false);
        assert_eq!(refused.0, INVALID_CONFIG, "v{version}");
        assert!(refused.1.unwrap().contains("retention.ms"));
        let unknown = [("retention.weeks", SET, Some("1"))];
        let refused = incremental(&mut client, version, &topic, &unknown, false);
        assert_eq!(refused.0, INVALID_CONFIG);
        assert!(refused.1.unwrap().contains("retention.weeks"));
        let missing = incremental(&mut client, version, "nope", &set_segment, false);
        assert_eq!(missing.0, UNKNOWN_TOPIC_OR_PARTITION);
    }
}

/// Produces one record holding `value` to `topic`-`partition`; the partition's answer.
fn produce_value(
    client: &mut AdminClient,
    topic: &str,
    partition: i32,
    value: &[u8],
) -> PartitionProduceResponse {
    let mut builder = BatchBuilder::new();
    builder.push(0, None, Some(value), &[]).unwrap();
    let data = PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(Bytes::from(builder.build())));
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![data])]);
    let mut response = client.call(&request, 9).unwrap();
    response.responses.remove(0).partition_responses.remove(0)
}

#[test]
fn config_changes_reach_partitions_already_open() {
    let running = Running::start();
    let mut client = running.client();
    create_topic(&mut client, "live", 2, &[]);
    for partition in 0..2 {
        produce(&mut client, "live", partition, 1);
    }
    let big = vec![b'x'; 2000];
    assert_eq!(produce_value(&mut client, "live", 1, &big).error_code, NONE);
    let limit = [("max.message.bytes", "1000")];
    assert_eq!(
        alter_configs(&mut client, 2, TOPIC, "live", &limit, false).0,
        NONE
    );
    for partition in 0..2 {
        let refused = produce_value(&mut client, "live", partition, &big);
        assert_eq!(
            refused.error_code, MESSAGE_TOO_LARGE,
            "partition {partition} applies the new max.message.bytes"
        );
        let small = produce_value(&mut client, "live", partition, b"small");
        assert_eq!(small.error_code, NONE);
        assert_eq!(small.log_append_time_ms, -1, "CreateTime");
    }
    let stamp = [("message.timestamp.type", SET, Some("LogAppendTime"))];
    assert_eq!(incremental(&mut client, 1, "live", &stamp, false).0, NONE);
    let stamped = produce_value(&mut client, "live", 0, b"stamped");
    assert_eq!(stamped.error_code, NONE);
    assert!(
        stamped.log_append_time_ms > 0,
        "the open partition stamps the broker's time: {stamped:?}"
    );
    let still_limited = produce_value(&mut client, "live", 0, &big);
    assert_eq!(
        still_limited.error_code, MESSAGE_TOO_LARGE,
        "an incremental change keeps the other keys"
    );
}

#[test]
fn altered_configs_and_added_partitions_survive_a_restart() {
    let mut running = Running::start();
    let mut client = running.client();
    create_topic(&mut client, "kept", 1, &[]);
    let ops = [("retention.ms", SET, Some("1234"))];
    assert_eq!(incremental(&mut client, 1, "kept", &ops, false).0, NONE);
    assert_eq!(
        create_partitions(&mut client, 3, vec![grow("kept", 2)], false)[0].1,
        NONE
    );
    drop(client);
    running.restart();
    let mut client = running.client();
    assert_eq!(
        value(&mut client, "kept", "retention.ms"),
        ("1234".to_owned(), DYNAMIC_TOPIC_CONFIG)
    );
    assert_eq!(partition_count(&mut client, "kept"), 2);
}

#[test]
fn describe_cluster_names_this_node_at_every_version() {
    let running = Running::start();
    let mut client = running.client();
    let metadata = client.call(&MetadataRequest::default(), 12).unwrap();
    let cluster_id = metadata.cluster_id.unwrap().to_string();
    for version in 0..=2 {
        let request = DescribeClusterRequest::default();
        let response = client.call(&request, version).unwrap();
        assert_eq!(response.error_code, NONE, "v{version}");
        assert_eq!(response.cluster_id.as_str(), cluster_id, "as Metadata says");
        assert_eq!(response.controller_id, BrokerId(0));
        assert_eq!(response.brokers.len(), 1);
        let node = &response.brokers[0];
        assert_eq!(node.broker_id, BrokerId(0));
        assert_eq!(node.host.as_str(), "127.0.0.1");
        assert_eq!(node.port, i32::from(running.address().port()));
        assert!(!node.is_fenced);
        assert_eq!(
            response.cluster_authorized_operations,
            i32::MIN,
            "not asked for"
        );
        let asked = request.with_include_cluster_authorized_operations(true);
        let response = client.call(&asked, version).unwrap();
        let describe_configs_bit = 1 << 10;
        assert_ne!(
            response.cluster_authorized_operations & describe_configs_bit,
            0
        );
        if version >= 1 {
            let controllers = DescribeClusterRequest::default().with_endpoint_type(2);
            let response = client.call(&controllers, version).unwrap();
            assert_eq!(response.error_code, UNSUPPORTED_ENDPOINT_TYPE);
            assert_eq!(response.endpoint_type, 2);
        }
    }
}

fn delete_records(
    client: &mut AdminClient,
    version: i16,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (i64, i16) {
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(partition)
                .with_offset(offset)])]);
    let response = client.call(&request, version).unwrap();
    let answer = &response.topics[0].partitions[0];
    assert_eq!(answer.partition_index, partition);
    (answer.low_watermark, answer.error_code)
}

#[test]
fn delete_records_moves_the_log_start_at_every_version() {
    let running = Running::start();
    let mut client = running.client();
    for version in 0..=2 {
        let topic = format!("trimmed-{version}");
        create_topic(&mut client, &topic, 2, &[]);
        produce(&mut client, &topic, 1, 10);
        assert_eq!(
            delete_records(&mut client, version, &topic, 1, 4),
            (4, NONE)
        );
        assert_eq!(earliest_offset(&mut client, &topic, 1), 4);
        assert_eq!(
            delete_records(&mut client, version, &topic, 1, 2),
            (4, NONE),
            "no going back"
        );
        let past_end = delete_records(&mut client, version, &topic, 1, 11);
        assert_eq!(past_end.1, OFFSET_OUT_OF_RANGE, "v{version}");
        assert_eq!(earliest_offset(&mut client, &topic, 1), 4);
        assert_eq!(
            delete_records(&mut client, version, &topic, 1, -1),
            (10, NONE),
            "to the HW"
        );
        assert_eq!(earliest_offset(&mut client, &topic, 1), 10);
        assert_eq!(
            earliest_offset(&mut client, &topic, 0),
            0,
            "other partitions untouched"
        );
        assert_eq!(
            delete_records(&mut client, version, &topic, 7, 0).1,
            UNKNOWN_TOPIC_OR_PARTITION
        );
        assert_eq!(
            delete_records(&mut client, version, "nope", 0, 0).1,
            UNKNOWN_TOPIC_OR_PARTITION
        );
    }
}

/// One topic's AlterPartitionReassignments at `version`: `(partition, replicas)` each (no
/// replicas: cancel), the replication factor's change allowed or not (from version 1).
/// Answers `(partition, error code, message)` in the request's order.
fn reassign(
    client: &mut AdminClient,
    version: i16,
    topic: &str,
    partitions: &[(i32, Option<&[i32]>)],
    allow_factor_change: bool,
) -> Vec<(i32, i16, Option<String>)> {
    use alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
    let partitions = (partitions.iter())
        .map(|&(index, replicas)| {
            let replicas = replicas.map(|ids| ids.iter().copied().map(BrokerId).collect());
            ReassignablePartition::default()
                .with_partition_index(index)
                .with_replicas(replicas)
        })
        .collect();
    // Version 0 has no such field (it means true there, and false cannot be encoded).
    let allow_factor_change = allow_factor_change || version == 0;
    let request = AlterPartitionReassignmentsRequest::default()
        .with_allow_replication_factor_change(allow_factor_change)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(name(topic))
            .with_partitions(partitions)]);
    let response = client.call(&request, version).unwrap();
    assert_eq!(response.error_code, NONE, "v{version}: {response:?}");
    if version >= 1 {
        assert_eq!(
            response.allow_replication_factor_change, allow_factor_change,
            "echoed"
        );
    }
    assert_eq!(response.responses.len(), 1, "{response:?}");
    assert_eq!(response.responses[0].name, name(topic));
    (response.responses[0].partitions.iter())
        .map(|p| {
            let message = p.error_message.as_ref().map(ToString::to_string);
            (p.partition_index, p.error_code, message)
        })
        .collect()
}

#[test]
fn a_single_node_answers_reassignments_as_a_one_broker_cluster_at_every_version() {
    let running = Running::start();
    let mut client = running.client();
    create_topic(&mut client, "moves", 2, &[]);
    for version in 0..=1 {
        let answered = reassign(
            &mut client,
            version,
            "moves",
            &[
                (0, Some(&[1][..])),
                (1, None),
                (2, Some(&[0][..])),
                (-1, Some(&[0][..])),
            ],
            true,
        );
        let codes: Vec<(i32, i16)> = answered.iter().map(|(p, code, _)| (*p, *code)).collect();
        assert_eq!(
            codes,
            vec![
                (0, INVALID_REPLICA_ASSIGNMENT),
                (1, NO_REASSIGNMENT_IN_PROGRESS),
                (2, UNKNOWN_TOPIC_OR_PARTITION),
                (-1, UNKNOWN_TOPIC_OR_PARTITION),
            ],
            "v{version}: {answered:?}"
        );
        let message = answered[0].2.as_deref().unwrap();
        assert!(message.contains("single ringlog node"), "{message}");
        // Where the partitions are already: nothing to move, as at a one-broker Kafka.
        let kept = reassign(&mut client, version, "moves", &[(0, Some(&[0][..]))], false);
        assert_eq!(kept, vec![(0, NONE, None)], "v{version}");
        let bad_ids: [&[i32]; 4] = [&[0, -1], &[0, 0], &[], &[0; 16]];
        for ids in bad_ids {
            let refused = reassign(&mut client, version, "moves", &[(1, Some(ids))], true);
            assert_eq!(
                refused[0].1, INVALID_REPLICA_ASSIGNMENT,
                "{ids:?}: {refused:?}"
            );
        }
        let twice = reassign(
            &mut client,
            version,
            "moves",
            &[(1, Some(&[0][..])), (0, Some(&[0][..])), (1, None)],
            true,
        );
        let codes: Vec<i16> = twice.iter().map(|(_, code, _)| *code).collect();
        assert_eq!(
            codes,
            vec![INVALID_REQUEST, NONE, INVALID_REQUEST],
            "{twice:?}"
        );
        let unknown = reassign(&mut client, version, "nope", &[(0, None)], true);
        assert_eq!(unknown[0].1, UNKNOWN_TOPIC_OR_PARTITION, "{unknown:?}");
    }
}

#[test]
fn a_single_node_lists_no_reassignments() {
    use list_partition_reassignments_request::ListPartitionReassignmentsTopics;
    let running = Running::start();
    let mut client = running.client();
    create_topic(&mut client, "moves", 2, &[]);
    let asked = ListPartitionReassignmentsTopics::default()
        .with_name(name("moves"))
        .with_partition_indexes(vec![0, 1, 9]);
    for topics in [None, Some(vec![asked])] {
        let request = ListPartitionReassignmentsRequest::default().with_topics(topics);
        let response = client.call(&request, 0).unwrap();
        assert_eq!(response.error_code, NONE, "{response:?}");
        assert_eq!(response.error_message, None);
        assert!(response.topics.is_empty(), "{response:?}");
    }
}

fn ringlog(running: &Running, args: &[&str]) -> Output {
    let bootstrap = running.address().to_string();
    Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .arg("topic")
        .args(args)
        .args(["--bootstrap", &bootstrap])
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn cli_creates_lists_describes_and_deletes_topics() {
    let running = Running::start();
    let created = ringlog(
        &running,
        &[
            "create",
            "events",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    assert_eq!(stdout(&created), "created topic events with 3 partitions\n");
    assert!(ringlog(&running, &["create", "alpha", "--partitions", "1"])
        .status
        .success());
    let again = ringlog(&running, &["create", "events", "--partitions", "1"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("TOPIC_ALREADY_EXISTS"),
        "{}",
        stderr(&again)
    );

    let mut client = running.client();
    produce(&mut client, "events", 1, 5);
    assert_eq!(delete_records(&mut client, 2, "events", 1, 2), (2, NONE));

    let listed = ringlog(&running, &["list"]);
    assert!(listed.status.success());
    assert_eq!(stdout(&listed), "alpha\nevents\n");

    let described = ringlog(&running, &["describe", "events"]);
    assert!(described.status.success(), "{}", stderr(&described));
    let text = stdout(&described);
    assert!(text.starts_with("topic: events\n"), "{text}");
    assert!(text.contains("partitions: 3\n"), "{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.len() == 5 && words[0].parse::<u32>().is_ok())
        .collect();
    // Partition, log start, log end, leader and replicas: a single node (id 0) holds all.
    assert_eq!(
        rows,
        vec![
            vec!["0", "0", "0", "0", "0"],
            vec!["1", "2", "5", "0", "0"],
            vec!["2", "0", "0", "0", "0"]
        ]
    );
    assert!(text.contains("  retention.ms=3600000 (topic)\n"), "{text}");
    assert!(
        text.contains("  segment.bytes=1073741824 (default)\n"),
        "{text}"
    );

    let deleted = ringlog(&running, &["delete", "events"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(stdout(&deleted), "deleted topic events\n");
    let gone = ringlog(&running, &["describe", "events"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        stderr(&gone)
    );
    let again = ringlog(&running, &["delete", "events"]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(stdout(&ringlog(&running, &["list"])), "alpha\n");
}

#[test]
fn cli_reassign_on_a_single_node_names_the_refusal_and_exits_1() {
    let running = Running::start();
    let mut client = running.client();
    create_topic(&mut client, "moves", 2, &[]);
    let moved = ringlog(
        &running,
        &["reassign", "moves", "--partition", "0", "--replicas", "1,2"],
    );
    assert_eq!(moved.status.code(), Some(1), "{}", stderr(&moved));
    let message = stderr(&moved);
    assert!(
        message.contains("reassign moves-0: INVALID_REPLICA_ASSIGNMENT (39)"),
        "{message}"
    );
    assert!(message.contains("single ringlog node"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    let cancelled = ringlog(
        &running,
        &["reassign", "moves", "--partition", "1", "--cancel"],
    );
    assert_eq!(cancelled.status.code(), Some(1));
    let message = stderr(&cancelled);
    assert!(
        message.contains("cancel the reassignment of moves-1: NO_REASSIGNMENT_IN_PROGRESS"),
        "{message}"
    );
    let kept = ringlog(
        &running,
        &["reassign", "moves", "--partition", "0,1", "--replicas", "0"],
    );
    assert!(kept.status.success(), "{}", stderr(&kept));
    assert_eq!(
        stdout(&kept),
        "reassigning moves-0 to replicas 0\nreassigning moves-1 to replicas 0\n"
    );
    let partly = ringlog(
        &running,
        &[
            "reassign",
            "moves",
            "--partition",
            "0",
            "--partition",
            "7",
            "--replicas",
            "0",
        ],
    );
    assert_eq!(partly.status.code(), Some(1));
    let message = stderr(&partly);
    assert!(
        message.contains("reassign moves-7 (accepted: moves-0): UNKNOWN_TOPIC_OR_PARTITION"),
        "{message}"
    );
    for args in [&["reassignments"][..], &["reassignments", "moves"]] {
        let listed = ringlog(&running, args);
        assert!(listed.status.success(), "{args:?}: {}", stderr(&listed));
        assert_eq!(stdout(&listed), "", "{args:?}: nothing is being moved");
    }
    let unknown = ringlog(&running, &["reassignments", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("UNKNOWN_TOPIC_OR_PARTITION"));
    let neither = ringlog(&running, &["reassign", "moves", "--partition", "0"]);
    assert_eq!(
        neither.status.code(),
        Some(2),
        "clap: --replicas or --cancel"
    );
    let both = ringlog(
        &running,
        &[
            "reassign",
            "moves",
            "--partition",
            "0",
            "--replicas",
            "0",
            "--cancel",
        ],
    );
    assert_eq!(both.status.code(), Some(2), "clap: not both");
}

#[test]
fn cli_refuses_bad_configs_naming_the_key() {
    let running = Running::start();
    let refused = ringlog(
        &running,
        &[
            "create",
            "t",
            "--partitions",
            "1",
            "--config",
            "retention.fortnights=2",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(message.contains("INVALID_CONFIG"), "{message}");
    assert!(message.contains("retention.fortnights"), "{message}");
    assert_eq!(
        stdout(&ringlog(&running, &["list"])),
        "",
        "nothing was created"
    );
}

#[test]
fn cli_names_an_unreachable_broker_and_exits_75() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let output = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["topic", "list", "--bootstrap", &address])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(ringlog_server::cli::EXIT_CODE_BROKER_UNREACHABLE)
    );
    let message = stderr(&output);
    assert!(message.contains(&address), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
}
