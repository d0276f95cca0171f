//! Every (API, version) ringlog advertises, exercised with `kafka-protocol`'s client side:
//! a reasonable request encoded at that version, sent to the binary, and the response
//! decoded at that version and checked for sense (error codes, offsets, counts).
//!
//! A response field set at a version that lacks it makes the broker's encoder fail and the
//! connection close; a request field the broker expects at a version that lacks it makes it
//! answer nonsense. Both show up here as a failure naming the API and version. Every pair
//! runs on a fresh connection, and every failure is collected, so one run lists them all.
//! An API added to `SUPPORTED_VERSIONS` without a request here fails the test until one
//! is written.

use std::net::SocketAddr;

#[path = "protocol_versions/groups.rs"]
mod groups;

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_response::LeaderIdAndEpoch;
use kafka_protocol::messages::{
    alter_configs_request, incremental_alter_configs_request, AlterConfigsRequest,
    AlterPartitionReassignmentsRequest, ApiKey, BrokerId, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteRecordsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, ListOffsetsRequest,
    ListPartitionReassignmentsRequest, MetadataRequest, OffsetForLeaderEpochRequest,
};
use kafka_protocol::protocol::StrBytes;
use ringlog_server::protocol::SUPPORTED_VERSIONS;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::wire::{
    self, decode_batches, encode_batch, fetch_request, max_version, produce_request, record,
    topic_name, Connection, EARLIEST, FETCH_BY_NAME_VERSION_MAX, LATEST,
};
use uuid::Uuid;

/// The topic most checks read and write; two partitions.
const TOPIC: &str = "matrix";
/// ConfigResource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
/// ListOffsets' "the record with the largest timestamp" (version 7 on).
const MAX_TIMESTAMP: i64 = -3;
/// ListOffsets' timestamps for tiered storage (versions 8 and 9).
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;
const UNKNOWN_TOPIC_ID: i16 = 100;

struct Matrix {
    address: SocketAddr,
}

impl Matrix {
    fn connect(&self) -> Connection {
        Connection::connect(self.address)
    }

    /// The high watermark of `TOPIC`-0, asked at ListOffsets' highest version.
    fn high_watermark(&self, topic: &str, partition: i32) -> anyhow::Result<i64> {
        let (error, offset) = self.connect().list_offset(topic, partition, LATEST);
        ensure!(
            error == NONE,
            "ListOffsets of {topic}-{partition}: error {error}"
        );
        Ok(offset)
    }

    fn check(&self, api: ApiKey, version: i16) -> anyhow::Result<()> {
        let mut c = self.connect();
        match api {
            ApiKey::Produce => self.produce(&mut c, version),
            ApiKey::Fetch => self.fetch(&mut c, version),
            ApiKey::ListOffsets => self.list_offsets(&mut c, version),
            ApiKey::Metadata => self.metadata(&mut c, version),
            ApiKey::ApiVersions => api_versions(&mut c, version),
            ApiKey::CreateTopics => create_topics(&mut c, version),
            ApiKey::DeleteTopics => delete_topics(&mut c, version),
            ApiKey::CreatePartitions => create_partitions(&mut c, version),
            ApiKey::DescribeConfigs => describe_configs(&mut c, version),
            ApiKey::AlterConfigs => alter_configs(&mut c, version),
            ApiKey::IncrementalAlterConfigs => incremental_alter_configs(&mut c, version),
            ApiKey::DescribeCluster => self.describe_cluster(&mut c, version),
            ApiKey::DeleteRecords => delete_records(&mut c, version),
            ApiKey::FindCoordinator => {
                groups::find_coordinator(&mut c, version, self.address.port())
            }
            ApiKey::JoinGroup => groups::join_group(&mut c, version),
            ApiKey::SyncGroup => groups::sync_group(&mut c, version),
            ApiKey::Heartbeat => groups::heartbeat(&mut c, version),
            ApiKey::LeaveGroup => groups::leave_group(&mut c, version),
            ApiKey::OffsetCommit => groups::offset_commit(&mut c, version),
            ApiKey::OffsetFetch => groups::offset_fetch(&mut c, version),
            ApiKey::ListGroups => groups::list_groups(&mut c, version),
            ApiKey::DescribeGroups => groups::describe_groups(&mut c, version),
            ApiKey::DeleteGroups => groups::delete_groups(&mut c, version),
            ApiKey::OffsetDelete => groups::offset_delete(&mut c, version),
            ApiKey::InitProducerId => init_producer_id(&mut c, version),
            ApiKey::OffsetForLeaderEpoch => self.offset_for_leader_epoch(&mut c, version),
            ApiKey::AlterPartitionReassignments => alter_reassignments(&mut c, version),
            ApiKey::ListPartitionReassignments => list_reassignments(&mut c, version),
            other => bail!("no request for {other:?} in the version matrix: add one"),
        }
    }

    fn produce(&self, c: &mut Connection, version: i16) -> anyhow::Result<()> {
        let before = self.high_watermark(TOPIC, 0)?;
        let value = format!("produce v{version}");
        let records = [
            record(
                Some(b"k"),
                Some(value.as_bytes()),
                &[("h", Some(b"v"))],
                1_000,
            ),
            record(None, Some(value.as_bytes()), &[], 1_001),
        ];
        let request = produce_request(TOPIC, 0, encode_batch(&records), -1);
        let response = c.call(&request, version)?;
        let topic = single(&response.responses, "topic")?;
        ensure!(
            topic.name.0.as_str() == TOPIC,
            "topic name {:?}",
            topic.name
        );
        let partition = single(&topic.partition_responses, "partition")?;
        ensure!(partition.index == 0, "partition index {}", partition.index);
        ensure!(
            partition.error_code == NONE,
            "error {}",
            partition.error_code
        );
        ensure!(
            partition.base_offset == before,
            "base offset {}, want {before}",
            partition.base_offset
        );
        ensure!(
            partition.log_append_time_ms == -1,
            "CreateTime topic: log append time -1"
        );
        // KIP-951's leader hints come only with NOT_LEADER_OR_FOLLOWER.
        if version >= 10 {
            ensure!(
                partition.current_leader == LeaderIdAndEpoch::default()
                    && response.node_endpoints.is_empty(),
                "leader hints on success: {response:?}"
            );
        }
        let after = self.high_watermark(TOPIC, 0)?;
        ensure!(
            after == before + 2,
            "high watermark {after} after two records at {before}"
        );
        Ok(())
    }

    fn fetch(&self, c: &mut Connection, version: i16) -> anyhow::Result<()> {
        let high_watermark = self.high_watermark(TOPIC, 0)?;
        let topic_id = single(&c.topic_ids(&[TOPIC])?, "topic id")?.to_owned();
        let mut request = fetch_request(TOPIC, 0, 0);
        if version > FETCH_BY_NAME_VERSION_MAX {
            request.topics[0].topic_id = topic_id;
        }
        // A partition that does not exist, and an offset past the end.
        request.topics[0].partitions.push(
            FetchPartition::default()
                .with_partition(7)
                .with_partition_max_bytes(1 << 20),
        );
        request.topics[0].partitions.push(
            FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(1_000_000)
                .with_partition_max_bytes(1 << 20),
        );
        let response = c.call(&request, version)?;
        ensure!(
            response.error_code == NONE && response.session_id == 0,
            "no session: {response:?}"
        );
        let topic = single(&response.responses, "topic")?;
        if version > FETCH_BY_NAME_VERSION_MAX {
            ensure!(
                topic.topic_id == topic_id && topic.topic.0.is_empty(),
                "topic id {} and name {:?}, want {topic_id} and none",
                topic.topic_id,
                topic.topic
            );
        } else {
            ensure!(
                topic.topic.0.as_str() == TOPIC,
                "topic name {:?}",
                topic.topic
            );
        }
        let [first, missing, beyond] = topic.partitions.as_slice() else {
            bail!(
                "{} partitions in the response, want 3",
                topic.partitions.len()
            );
        };
        ensure!(
            first.partition_index == 0 && first.error_code == NONE,
            "partition 0: {first:?}"
        );
        ensure!(
            first.high_watermark == high_watermark,
            "high watermark {}",
            first.high_watermark
        );
        if version >= 5 {
            ensure!(
                first.log_start_offset == 0,
                "log start {}",
                first.log_start_offset
            );
        }
        let records = decode_batches(first.records.clone().unwrap_or_default())?;
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        let want: Vec<i64> = (0..high_watermark).collect();
        ensure!(
            offsets == want,
            "offsets {offsets:?}, want 0..{high_watermark}"
        );
        let seed = records.first().and_then(|r| r.value.clone());
        ensure!(
            seed.as_deref() == Some(&b"seed"[..]),
            "first record {seed:?}"
        );
        ensure!(
            missing.partition_index == 7,
            "second partition {}",
            missing.partition_index
        );
        ensure!(
            missing.error_code == UNKNOWN_TOPIC_OR_PARTITION,
            "partition 7: {missing:?}"
        );
        ensure!(
            beyond.error_code == OFFSET_OUT_OF_RANGE,
            "offset past the end: {beyond:?}"
        );
        if version > FETCH_BY_NAME_VERSION_MAX {
            fetch_unknown_topic_id(c, version, topic_id)?;
        }
        if version >= 7 {
            fetch_sessions(c, version)?;
        }
        Ok(())
    }

    fn list_offsets(&self, c: &mut Connection, version: i16) -> anyhow::Result<()> {
        let high_watermark = self.high_watermark(TOPIC, 0)?;
        let partition = |index, timestamp| {
            ListOffsetsPartition::default()
                .with_partition_index(index)
                .with_timestamp(timestamp)
        };
        let mut partitions = vec![
            partition(0, LATEST),
            partition(0, EARLIEST),
            partition(0, 2),
            partition(9, LATEST),
        ];
        // The seed batch's second record (offset 1) is the first at or after time 2.
        let mut want = vec![
            (0, NONE, high_watermark),
            (0, NONE, 0),
            (0, NONE, 1),
            (9, UNKNOWN_TOPIC_OR_PARTITION, -1),
        ];
        // Tiered storage's timestamps, answered as for a topic without it: the earliest
        // local offset is the log start, and nothing is tiered.
        if version >= 8 {
            partitions.push(partition(0, EARLIEST_LOCAL));
            want.push((0, NONE, 0));
        }
        if version >= 9 {
            partitions.push(partition(0, LATEST_TIERED));
            want.push((0, NONE, -1));
        }
        let max_timestamp_checked = version >= 7;
        if max_timestamp_checked {
            partitions.push(partition(0, MAX_TIMESTAMP));
        }
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(TOPIC))
                .with_partitions(partitions)]);
        let response = c.call(&request, version)?;
        let topic = single(&response.topics, "topic")?;
        let mut got: Vec<(i32, i16, i64)> = topic
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code, p.offset))
            .collect();
        // The record with the largest timestamp: the seed's middle one (the Produce
        // checks append timestamps 1000 and 1001 after it).
        if max_timestamp_checked {
            let Some((_, error, offset)) = got.pop() else {
                anyhow::bail!("no answer for -3")
            };
            let timestamp = topic.partitions.last().map_or(-1, |p| p.timestamp);
            ensure!(
                (error, offset, timestamp) == (NONE, 1, 5_000) && high_watermark > 2,
                "MAX_TIMESTAMP: error {error}, offset {offset}, timestamp {timestamp}, \
                 want offset 1 (timestamp 5000) below the high watermark {high_watermark}"
            );
        }
        ensure!(
            got == want,
            "(partition, error, offset) {got:?}, want {want:?}"
        );
        Ok(())
    }

    /// A single node leads at epoch 0: epoch 0 ends at the log end (its current epoch),
    /// epoch -1 (none) has no answer, and an unknown partition is refused.
    fn offset_for_leader_epoch(&self, c: &mut Connection, version: i16) -> anyhow::Result<()> {
        let high_watermark = self.high_watermark(TOPIC, 0)?;
        let partition = |index, epoch| {
            OffsetForLeaderPartition::default()
                .with_partition(index)
                .with_current_leader_epoch(0)
                .with_leader_epoch(epoch)
        };
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(topic_name(TOPIC))
                .with_partitions(vec![
                    partition(0, 0),
                    partition(0, -1),
                    partition(9, 0),
                ])]);
        let response = c.call(&request, version)?;
        let topic = single(&response.topics, "topic")?;
        let got: Vec<(i32, i16, i32, i64)> = topic
            .partitions
            .iter()
            .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        let want = vec![
            (0, NONE, 0, high_watermark),
            (0, NONE, -1, -1),
            (9, UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
        ];
        ensure!(
            got == want,
            "(partition, error, epoch, end offset) {got:?}, want {want:?}"
        );
        Ok(())
    }

    fn metadata(&self, c: &mut Connection, version: i16) -> anyhow::Result<()> {
        let missing = format!("matrix-missing-v{version}");
        let names = [TOPIC, missing.as_str()];
        let topics = names
            .iter()
            .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
            .collect();
        let mut request = MetadataRequest::default().with_topics(Some(topics));
        if version >= 4 {
            request = request.with_allow_auto_topic_creation(false);
        }
        let response = c.call(&request, version)?;
        let broker = single(&response.brokers, "broker")?;
        let port = i32::from(self.address.port());
        ensure!(broker.node_id.0 == 0, "node id {:?}", broker.node_id);
        ensure!(
            broker.host.as_str() == "127.0.0.1" && broker.port == port,
            "{broker:?}"
        );
        ensure!(
            response.controller_id.0 == 0,
            "controller {:?}",
            response.controller_id
        );
        if version >= 2 {
            let cluster = response
                .cluster_id
                .as_ref()
                .map(|id| id.as_str().to_owned());
            ensure!(
                cluster.as_ref().is_some_and(|id| !id.is_empty()),
                "cluster id {cluster:?}"
            );
        }
        let [found, absent] = response.topics.as_slice() else {
            bail!("{} topics, want 2", response.topics.len());
        };
        ensure!(
            found.error_code == NONE && found.partitions.len() == 2,
            "{found:?}"
        );
        for (index, partition) in found.partitions.iter().enumerate() {
            ensure!(partition.partition_index == index as i32, "{partition:?}");
            ensure!(partition.leader_id.0 == 0, "leader {partition:?}");
            ensure!(
                partition.replica_nodes.iter().map(|n| n.0).eq([0]),
                "{partition:?}"
            );
        }
        if version >= 10 {
            ensure!(found.topic_id != Uuid::nil(), "topic id from version 10");
        }
        if version >= 13 {
            ensure!(
                response.error_code == NONE,
                "top-level error {}",
                response.error_code
            );
        }
        // Before version 4 a request cannot refuse auto-creation; the server has it off.
        ensure!(
            absent.error_code == UNKNOWN_TOPIC_OR_PARTITION,
            "{absent:?}"
        );
        let all = c.call(&MetadataRequest::default().with_topics(None), version)?;
        let listed = all
            .topics
            .iter()
            .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == TOPIC));
        ensure!(listed, "all topics (a null list) includes {TOPIC}");
        Ok(())
    }

    fn describe_cluster(&self, c: &mut Connection, version: i16) -> anyhow::Result<()> {
        let response = c.call(&DescribeClusterRequest::default(), version)?;
        ensure!(response.error_code == NONE, "error {}", response.error_code);
        ensure!(!response.cluster_id.is_empty(), "a cluster id");
        ensure!(
            response.controller_id.0 == 0,
            "controller {:?}",
            response.controller_id
        );
        let broker = single(&response.brokers, "broker")?;
        let port = i32::from(self.address.port());
        ensure!(broker.broker_id.0 == 0 && broker.port == port, "{broker:?}");
        ensure!(broker.host.as_str() == "127.0.0.1", "{broker:?}");
        Ok(())
    }
}

/// A Fetch by topic id naming a known topic and one no topic has: the known one answers,
/// each partition of the unknown one is UNKNOWN_TOPIC_ID, under the id it was asked by.
fn fetch_unknown_topic_id(c: &mut Connection, version: i16, known: Uuid) -> anyhow::Result<()> {
    let unknown = Uuid::new_v4();
    let partitions = |indexes: &[i32]| {
        indexes
            .iter()
            .map(|&index| {
                FetchPartition::default()
                    .with_partition(index)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect::<Vec<_>>()
    };
    let mut request = fetch_request(TOPIC, 0, 0);
    request.topics = vec![
        FetchTopic::default()
            .with_topic_id(unknown)
            .with_partitions(partitions(&[0, 1])),
        FetchTopic::default()
            .with_topic_id(known)
            .with_partitions(partitions(&[1])),
    ];
    let response = c.call(&request, version)?;
    let got: Vec<(Uuid, Vec<(i32, i16)>)> = response
        .responses
        .iter()
        .map(|topic| {
            let partitions = topic.partitions.iter();
            let codes = partitions
                .map(|p| (p.partition_index, p.error_code))
                .collect();
            (topic.topic_id, codes)
        })
        .collect();
    let want = vec![
        (unknown, vec![(0, UNKNOWN_TOPIC_ID), (1, UNKNOWN_TOPIC_ID)]),
        (known, vec![(1, NONE)]),
    ];
    ensure!(
        got == want,
        "(topic id, [(partition, error)]) {got:?}, want {want:?}"
    );
    Ok(())
}

/// ringlog makes no fetch sessions: a request asking for one (epoch 0) gets a full answer
/// with session id 0, its forgotten topics ignored; a request continuing one (epoch above
/// 0) gets FETCH_SESSION_ID_NOT_FOUND and no data.
fn fetch_sessions(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let forgotten = ForgottenTopic::default()
        .with_topic(topic_name(TOPIC))
        .with_partitions(vec![0]);
    let create = fetch_request(TOPIC, 0, 0)
        .with_session_id(0)
        .with_session_epoch(0)
        .with_forgotten_topics_data(vec![forgotten]);
    let create = c.with_topic_ids(create)?;
    let response = c.call(&create, version)?;
    let partition = single(&response.responses, "topic")
        .and_then(|topic| single(&topic.partitions, "partition"))?;
    ensure!(
        response.error_code == NONE && response.session_id == 0,
        "session-creating request: error {}, session {}",
        response.error_code,
        response.session_id
    );
    let records = partition.records.as_ref().map_or(0, bytes::Bytes::len);
    ensure!(
        partition.error_code == NONE && records > 0,
        "session-creating request: {partition:?}"
    );
    let incremental = fetch_request(TOPIC, 0, 0)
        .with_session_id(12_345)
        .with_session_epoch(1);
    let incremental = c.with_topic_ids(incremental)?;
    let response = c.call(&incremental, version)?;
    ensure!(
        response.error_code == FETCH_SESSION_ID_NOT_FOUND
            && response.session_id == 0
            && response.responses.is_empty(),
        "incremental request: {response:?}"
    );
    Ok(())
}

/// A single node keeps each partition's only replica: a move elsewhere is refused, a
/// cancellation finds none under way, a partition it lacks is unknown.
fn alter_reassignments(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    let partition = |index: i32, replicas: Option<Vec<i32>>| {
        ReassignablePartition::default()
            .with_partition_index(index)
            .with_replicas(replicas.map(|ids| ids.into_iter().map(BrokerId).collect()))
    };
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(topic_name(TOPIC))
            .with_partitions(vec![
                partition(0, Some(vec![5])),
                partition(1, None),
                partition(9, Some(vec![0])),
            ])]);
    let response = c.call(&request, version)?;
    ensure!(response.error_code == NONE, "{response:?}");
    let result = single(&response.responses, "topic")?;
    let got: Vec<(i32, i16)> = (result.partitions.iter())
        .map(|p| (p.partition_index, p.error_code))
        .collect();
    let expected = [
        (0, INVALID_REPLICA_ASSIGNMENT),
        (1, NO_REASSIGNMENT_IN_PROGRESS),
        (9, UNKNOWN_TOPIC_OR_PARTITION),
    ];
    ensure!(got == expected, "(partition, error) {got:?}");
    Ok(())
}

/// Nothing is being reassigned on a single node.
fn list_reassignments(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let request = ListPartitionReassignmentsRequest::default().with_timeout_ms(10_000);
    let response = c.call(&request, version)?;
    ensure!(
        response.error_code == NONE && response.topics.is_empty(),
        "{response:?}"
    );
    Ok(())
}

fn delete_records(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let topic = format!("matrix-trim-v{version}");
    ensure!(c.create_topic(&topic, 1) == NONE, "create {topic}");
    let records: Vec<_> = (0..5).map(|i| record(None, Some(b"x"), &[], i)).collect();
    ensure!(
        c.produce(&topic, 0, &records, -1).error_code == NONE,
        "produce to {topic}"
    );
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name(&topic))
            .with_partitions(vec![
                DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(2),
                DeleteRecordsPartition::default()
                    .with_partition_index(4)
                    .with_offset(0),
            ])]);
    let response = c.call(&request, version)?;
    let result = single(&response.topics, "topic")?;
    let got: Vec<(i32, i16, i64)> = result
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code, p.low_watermark))
        .collect();
    ensure!(got.len() == 2, "{got:?}");
    ensure!(
        got[0] == (0, NONE, 2),
        "(partition, error, low watermark) {:?}",
        got[0]
    );
    ensure!(
        got[1].0 == 4 && got[1].1 == UNKNOWN_TOPIC_OR_PARTITION,
        "{:?}",
        got[1]
    );
    let earliest = c.list_offset(&topic, 0, EARLIEST);
    ensure!(
        earliest == (NONE, 2),
        "log start after DeleteRecords: {earliest:?}"
    );
    Ok(())
}

/// A fresh producer id at epoch 0, also when a v3+ producer passes its current id and
/// epoch; an idempotent batch with it is accepted and its retry gets the same offset.
fn init_producer_id(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    // The crate's default transactional id is "", not null: the idempotent producer's is
    // null (an empty one is INVALID_REQUEST, as in Kafka).
    let mut request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    let first = c.call(&request, version)?;
    ensure!(first.error_code == NONE, "error {}", first.error_code);
    ensure!(
        first.producer_id.0 >= 0 && first.producer_epoch == 0,
        "{first:?}"
    );
    if version >= 3 {
        request = request
            .with_producer_id(first.producer_id)
            .with_producer_epoch(first.producer_epoch);
    }
    let second = c.call(&request, version)?;
    ensure!(
        second.error_code == NONE && second.producer_epoch == 0,
        "{second:?}"
    );
    ensure!(
        second.producer_id.0 > first.producer_id.0,
        "ids {:?} then {:?}",
        first.producer_id,
        second.producer_id
    );
    let batch = wire::idempotent_batch(second.producer_id.0, 0, 0, &[b"once"]);
    let written = c.produce_raw(TOPIC, 1, batch.clone(), -1);
    let retried = c.produce_raw(TOPIC, 1, batch, -1);
    ensure!(
        written.error_code == NONE && retried.error_code == NONE,
        "produce {written:?}, retry {retried:?}"
    );
    ensure!(
        retried.base_offset == written.base_offset,
        "retry at {} after {}",
        retried.base_offset,
        written.base_offset
    );
    Ok(())
}

fn single<'a, T>(items: &'a [T], what: &str) -> anyhow::Result<&'a T> {
    match items {
        [item] => Ok(item),
        _ => bail!("{} {what}s in the response, want 1", items.len()),
    }
}

fn api_versions(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let mut request = ApiVersionsRequest::default();
    if version >= 3 {
        request = request
            .with_client_software_name(StrBytes::from_static_str("ringlog-e2e"))
            .with_client_software_version(StrBytes::from_static_str("1"));
    }
    let response = c.call(&request, version)?;
    ensure!(response.error_code == NONE, "error {}", response.error_code);
    let mut got: Vec<(i16, i16, i16)> = response
        .api_keys
        .iter()
        .map(|a| (a.api_key, a.min_version, a.max_version))
        .collect();
    let mut want: Vec<(i16, i16, i16)> = SUPPORTED_VERSIONS
        .iter()
        .map(|&(api, min, max)| (api as i16, min, max))
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    ensure!(got == want, "advertised {got:?}, supported {want:?}");
    Ok(())
}

fn creatable(name: &str, partitions: i32) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
}

fn create_topics(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let name = format!("matrix-create-v{version}");
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![creatable(&name, 3), creatable(TOPIC, 1)]);
    let response = c.call(&request, version)?;
    let [created, existing] = response.topics.as_slice() else {
        bail!("{} results, want 2", response.topics.len());
    };
    ensure!(
        created.name.0.as_str() == name && created.error_code == NONE,
        "{created:?}"
    );
    if version >= 5 {
        ensure!(
            created.num_partitions == 3 && created.replication_factor == 1,
            "{created:?}"
        );
    }
    ensure!(existing.error_code == TOPIC_ALREADY_EXISTS, "{existing:?}");
    let validate = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_validate_only(true)
        .with_topics(vec![creatable(&format!("matrix-validate-v{version}"), 2)]);
    let validated = c.call(&validate, version)?;
    ensure!(
        single(&validated.topics, "topic")?.error_code == NONE,
        "{validated:?}"
    );
    let (error, _) = c.list_offset(&format!("matrix-validate-v{version}"), 0, LATEST);
    ensure!(
        error == UNKNOWN_TOPIC_OR_PARTITION,
        "validate_only created the topic"
    );
    let (error, offset) = c.list_offset(&name, 2, LATEST);
    ensure!(
        (error, offset) == (NONE, 0),
        "the created topic's third partition"
    );
    Ok(())
}

fn delete_topics(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let name = format!("matrix-delete-v{version}");
    ensure!(c.create_topic(&name, 1) == NONE, "create {name}");
    let request = wire::delete_topics_request(&name, version);
    let response = c.call(&request, version)?;
    let result = single(&response.responses, "topic")?;
    ensure!(result.error_code == NONE, "{result:?}");
    let named = result.name.as_ref().map(|n| n.0.as_str().to_owned());
    ensure!(named.as_deref() == Some(name.as_str()), "name {named:?}");
    let again = c.call(&request, version)?;
    let result = single(&again.responses, "topic")?;
    ensure!(
        result.error_code == UNKNOWN_TOPIC_OR_PARTITION,
        "second delete {result:?}"
    );
    Ok(())
}

fn create_partitions(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let name = format!("matrix-grow-v{version}");
    ensure!(c.create_topic(&name, 1) == NONE, "create {name}");
    let grow = |count| {
        CreatePartitionsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(&name))
                .with_count(count)
                .with_assignments(None)])
    };
    let response = c.call(&grow(3), version)?;
    let result = single(&response.results, "topic")?;
    ensure!(result.error_code == NONE, "grow to 3: {result:?}");
    let (error, offset) = c.list_offset(&name, 2, LATEST);
    ensure!(
        (error, offset) == (NONE, 0),
        "the new third partition: {error}"
    );
    let response = c.call(&grow(2), version)?;
    let result = single(&response.results, "topic")?;
    ensure!(
        result.error_code == INVALID_PARTITIONS,
        "shrink to 2: {result:?}"
    );
    Ok(())
}

/// The configs DescribeConfigs reports for topic `name` at `version`.
fn topic_configs(
    c: &mut Connection,
    name: &str,
    version: i16,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(name.to_owned()))
            .with_configuration_keys(None)]);
    let response = c.call(&request, version)?;
    let result = single(&response.results, "resource")?;
    ensure!(result.error_code == NONE, "describe {name}: {result:?}");
    ensure!(result.resource_name.as_str() == name, "{result:?}");
    Ok(result
        .configs
        .iter()
        .map(|entry| {
            let value = entry.value.as_ref().map(|v| v.as_str().to_owned());
            (entry.name.as_str().to_owned(), value)
        })
        .collect())
}

fn config_value(configs: &[(String, Option<String>)], key: &str) -> Option<String> {
    configs
        .iter()
        .find(|(name, _)| name == key)
        .and_then(|(_, value)| value.clone())
}

fn describe_configs(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    let configs = topic_configs(c, TOPIC, version)?;
    let retention = config_value(&configs, "retention.ms");
    ensure!(retention.is_some(), "retention.ms among {configs:?}");
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_static_str("matrix-no-such-topic"))
            .with_configuration_keys(None)]);
    let response = c.call(&request, version)?;
    let result = single(&response.results, "resource")?;
    ensure!(
        result.error_code == UNKNOWN_TOPIC_OR_PARTITION,
        "unknown topic: {result:?}"
    );
    Ok(())
}

fn alter_configs(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    use alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let name = format!("matrix-alter-v{version}");
    ensure!(c.create_topic(&name, 1) == NONE, "create {name}");
    let request =
        AlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(name.clone()))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_value(Some(StrBytes::from_static_str("86400000")))])]);
    let response = c.call(&request, version)?;
    let result = single(&response.responses, "resource")?;
    ensure!(result.error_code == NONE, "{result:?}");
    let configs = topic_configs(c, &name, max_version(ApiKey::DescribeConfigs))?;
    let retention = config_value(&configs, "retention.ms");
    ensure!(
        retention.as_deref() == Some("86400000"),
        "retention.ms {retention:?}"
    );
    Ok(())
}

fn incremental_alter_configs(c: &mut Connection, version: i16) -> anyhow::Result<()> {
    use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    const SET: i8 = 0;
    let name = format!("matrix-incremental-v{version}");
    ensure!(c.create_topic(&name, 1) == NONE, "create {name}");
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(name.clone()))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_config_operation(SET)
                .with_value(Some(StrBytes::from_static_str("172800000")))]),
    ]);
    let response = c.call(&request, version)?;
    let result = single(&response.responses, "resource")?;
    ensure!(result.error_code == NONE, "{result:?}");
    let configs = topic_configs(c, &name, max_version(ApiKey::DescribeConfigs))?;
    let retention = config_value(&configs, "retention.ms");
    ensure!(
        retention.as_deref() == Some("172800000"),
        "retention.ms {retention:?}"
    );
    Ok(())
}

#[test]
fn every_supported_api_version_round_trips_with_a_sane_answer() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default()
        .with("--auto-create-topics", "false")
        .with("--group-initial-rebalance-delay-ms", "0");
    let mut server = Server::start(&dir.path().join("data"), &options);
    let matrix = Matrix {
        address: server.address(),
    };
    let mut c = matrix.connect();
    assert_eq!(c.create_topic(TOPIC, 2), NONE);
    // The largest timestamp (5000) is the middle record's, below records with smaller
    // ones: ListOffsets' MAX_TIMESTAMP must name offset 1, not the last offset.
    let seed = [
        record(None, Some(b"seed"), &[], 1),
        record(None, Some(b"later"), &[], 5_000),
        record(None, Some(b"earlier"), &[], 3),
    ];
    assert_eq!(c.produce(TOPIC, 0, &seed, -1).error_code, NONE);
    let mut failures = Vec::new();
    let mut checked = 0;
    for &(api, min, max) in SUPPORTED_VERSIONS {
        assert!(min <= max, "{api:?}: versions {min}..={max}");
        for version in min..=max {
            checked += 1;
            if let Err(error) = matrix
                .check(api, version)
                .with_context(|| format!("{api:?} v{version}"))
            {
                failures.push(format!("{error:#}"));
            }
        }
    }
    server.assert_running();
    assert!(
        failures.is_empty(),
        "{} of {checked} (API, version) pairs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    server.stop_cleanly();
}
