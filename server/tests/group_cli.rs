//! The `ringlog group` commands against a real server started in-process: list, describe
//! (members, decoded assignments, committed offsets, log ends and lag), reset-offsets (to
//! an offset, earliest, latest, a timestamp; refused while the group has members) and
//! delete (refused while it has members).

use std::process::{Command, Output};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, CreateTopicsRequest, GroupId, JoinGroupRequest, LeaveGroupRequest,
    ProduceRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use ringlog_engine::batch::BatchBuilder;
use ringlog_server::admin::AdminClient;
use ringlog_server::config::ServerConfig;
use ringlog_server::server::Server;

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
const INVALID_TOPIC_EXCEPTION: i16 = 17;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn ringlog(address: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .arg("group")
        .args(args)
        .args(["--bootstrap", address])
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Creates `TOPIC` with two partitions, and writes `counts[p]` records to partition p with
/// timestamps 1000, 2000, … so a reset by time has something to find.
fn seed(client: &mut AdminClient, counts: [usize; 2]) {
    let topic = CreatableTopic::default()
        .with_name(TopicName(text(TOPIC)))
        .with_num_partitions(2)
        .with_replication_factor(1);
    let request = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(10_000);
    let response = client.call(&request, 4).unwrap();
    assert_eq!(response.topics[0].error_code, 0);
    for (partition, count) in counts.into_iter().enumerate() {
        let mut builder = BatchBuilder::new().base_timestamp(1000);
        for index in 0..count {
            builder
                .push(1000 * index as i64, None, Some(b"value"), &[])
                .unwrap();
        }
        let data = PartitionProduceData::default()
            .with_index(partition as i32)
            .with_records(Some(Bytes::from(builder.build())));
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(text(TOPIC)))
                .with_partition_data(vec![data])]);
        let response = client.call(&request, 9).unwrap();
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
}

/// Joins `GROUP` as its only member and assigns it both partitions; returns its id.
fn join_and_assign(client: &mut AdminClient) -> String {
    let join = |member_id: &str| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(text(GROUP)))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(text(member_id))
            .with_protocol_type(text("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(text("range"))
                .with_metadata(Bytes::new())])
    };
    let first = client.call(&join(""), 5).unwrap();
    let member_id = first.member_id.to_string();
    let joined = client.call(&join(&member_id), 5).unwrap();
    assert_eq!(joined.error_code, 0, "{joined:?}");
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
        TopicPartition::default()
            .with_topic(TopicName(text(TOPIC)))
            .with_partitions(vec![0, 1]),
    ]);
    let mut encoded = BytesMut::new();
    encoded.put_i16(0);
    assignment.encode(&mut encoded, 0).unwrap();
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(text(GROUP)))
        .with_generation_id(joined.generation_id)
        .with_member_id(text(&member_id))
        .with_assignments(vec![SyncGroupRequestAssignment::default()
            .with_member_id(text(&member_id))
            .with_assignment(encoded.freeze())]);
    assert_eq!(client.call(&sync, 3).unwrap().error_code, 0);
    member_id
}

#[test]
fn group_commands_list_describe_reset_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        group_initial_rebalance_delay_ms: 0,
        ..ServerConfig::ephemeral(dir.path().join("data"))
    };
    let server = Server::start(config).unwrap();
    let address = server.address().to_string();
    let mut client = AdminClient::connect(&address).unwrap();
    seed(&mut client, [5, 3]);

    let reset = ok(&ringlog(
        &address,
        &["reset-offsets", GROUP, "--topic", TOPIC, "--to", "offset:1"],
    ));
    assert_eq!(reset, "orders-0 1\norders-1 1\n");
    assert!(ok(&ringlog(&address, &["list"])).contains("billing Empty"));
    let described = ok(&ringlog(&address, &["describe", GROUP]));
    assert!(described.contains("state: Empty"), "{described}");
    let row = |partition: i32, committed: i64, end: i64| {
        let lag = end - committed;
        format!("  {TOPIC:<24} {partition:>9} {committed:>14} {end:>14} {lag:>10}")
    };
    assert!(described.contains(&row(0, 1, 5)), "{described}");
    assert!(described.contains(&row(1, 1, 3)), "{described}");

    let latest = ok(&ringlog(
        &address,
        &["reset-offsets", GROUP, "--topic", TOPIC, "--to", "latest"],
    ));
    assert_eq!(latest, "orders-0 5\norders-1 3\n");
    let earliest = ok(&ringlog(
        &address,
        &["reset-offsets", GROUP, "--topic", TOPIC, "--to", "earliest"],
    ));
    assert_eq!(earliest, "orders-0 0\norders-1 0\n");
    // The first record at or after 2500 ms: offset 2 of partition 0; partition 1's
    // records (1000, 2000, 3000 ms) give offset 2 as well.
    let by_time = ok(&ringlog(
        &address,
        &[
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to",
            "timestamp:2500",
        ],
    ));
    assert_eq!(by_time, "orders-0 2\norders-1 2\n");

    let member_id = join_and_assign(&mut client);
    let described = ok(&ringlog(&address, &["describe", GROUP]));
    assert!(described.contains("state: Stable"), "{described}");
    assert!(
        described.contains(&format!("{member_id} client="))
            && described.contains("[orders-0,orders-1]"),
        "{described}"
    );
    for refused in [
        ringlog(
            &address,
            &["reset-offsets", GROUP, "--topic", TOPIC, "--to", "earliest"],
        ),
        ringlog(&address, &["delete", GROUP]),
    ] {
        assert_eq!(refused.status.code(), Some(1));
        let message = String::from_utf8_lossy(&refused.stderr);
        assert!(message.contains("NON_EMPTY_GROUP"), "{message}");
    }
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(text(GROUP)))
        .with_members(vec![
            MemberIdentity::default().with_member_id(text(&member_id))
        ]);
    assert_eq!(client.call(&leave, 3).unwrap().members[0].error_code, 0);
    assert_eq!(
        ok(&ringlog(&address, &["delete", GROUP])),
        "deleted group billing\n"
    );
    assert!(!ok(&ringlog(&address, &["list"])).contains("billing"));
    server.stop().unwrap();
}

#[test]
fn the_offsets_topic_is_internal_listed_as_such_and_not_writable_or_deletable() {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::{
        CreatePartitionsRequest, DeleteRecordsRequest, DeleteTopicsRequest, MetadataRequest,
    };

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::ephemeral(dir.path().join("data"))).unwrap();
    let address = server.address().to_string();
    let mut client = AdminClient::connect(&address).unwrap();
    let metadata = client
        .call(&MetadataRequest::default().with_topics(None), 12)
        .unwrap();
    let offsets = metadata
        .topics
        .iter()
        .find(|t| {
            t.name
                .as_ref()
                .is_some_and(|n| n.0.as_str() == "__consumer_offsets")
        })
        .expect("__consumer_offsets in Metadata");
    assert!(offsets.is_internal);
    assert_eq!(offsets.partitions.len(), 8);

    let mut builder = BatchBuilder::new();
    builder
        .push(0, Some(b"forged"), Some(b"offset"), &[])
        .unwrap();
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(text("__consumer_offsets")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(builder.build())))])]);
    let answer = client.call(&produce, 9).unwrap();
    assert_eq!(
        answer.responses[0].partition_responses[0].error_code,
        INVALID_TOPIC_EXCEPTION
    );
    let delete = DeleteTopicsRequest::default()
        .with_topics(vec![
            DeleteTopicState::default().with_name(Some(TopicName(text("__consumer_offsets"))))
        ])
        .with_timeout_ms(10_000);
    let answer = client.call(&delete, 6).unwrap();
    assert_eq!(answer.responses[0].error_code, INVALID_TOPIC_EXCEPTION);
    let grow = CreatePartitionsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(TopicName(text("__consumer_offsets")))
            .with_count(16)
            .with_assignments(None)]);
    let answer = client.call(&grow, 3).unwrap();
    assert_eq!(answer.results[0].error_code, INVALID_TOPIC_EXCEPTION);
    let trim = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(TopicName(text("__consumer_offsets")))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(-1)])]);
    let answer = client.call(&trim, 2).unwrap();
    assert_eq!(
        answer.topics[0].partitions[0].error_code,
        INVALID_TOPIC_EXCEPTION
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["topic", "list", "--bootstrap", &address])
        .output()
        .unwrap();
    assert_eq!(ok(&listed), "", "internal topics are not listed");
    server.stop().unwrap();
}
