//! `__consumer_offsets` stays small: after many commits of the same keys, the partition is
//! compacted (its log start moves past everything but the live keys' latest records), and
//! a restart still finds every group's latest committed offset, while a deleted group's
//! offsets stay deleted.

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteGroupsRequest, GroupId, ListOffsetsRequest,
    OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ringlog_server::admin::AdminClient;
use ringlog_server::config::ServerConfig;
use ringlog_server::group::{partition_for, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS};
use ringlog_server::server::Server;

const TOPIC: &str = "tracked";
const COMMITS: i64 = 1500;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn commit(client: &mut AdminClient, group: &str, offset: i64) {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])]);
    let answer = client.call(&request, 8).unwrap();
    assert_eq!(answer.topics[0].partitions[0].error_code, 0);
}

fn committed(client: &mut AdminClient, group: &str) -> i64 {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partition_indexes(vec![0])]));
    let answer = client.call(&request, 7).unwrap();
    answer.topics[0].partitions[0].committed_offset
}

/// The log start and end of the `__consumer_offsets` partition holding `group`.
fn offsets_partition_range(client: &mut AdminClient, group: &str) -> (i64, i64) {
    let partition = partition_for(group, OFFSETS_TOPIC_PARTITIONS) as i32;
    let mut ask = |timestamp| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(text(OFFSETS_TOPIC)))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        client.call(&request, 7).unwrap().topics[0].partitions[0].offset
    };
    (ask(-2), ask(-1))
}

#[test]
fn commits_of_the_same_keys_are_compacted_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::ephemeral(dir.path().join("data"));
    let server = Server::start(config.clone()).unwrap();
    let mut client = AdminClient::connect(&server.address().to_string()).unwrap();
    let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(TopicName(text(TOPIC)))
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    assert_eq!(client.call(&create, 7).unwrap().topics[0].error_code, 0);

    commit(&mut client, "deleted", 7);
    let delete = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(text("deleted"))]);
    assert_eq!(client.call(&delete, 2).unwrap().results[0].error_code, 0);
    for offset in 1..=COMMITS {
        commit(&mut client, "busy", offset);
        commit(&mut client, "steady", 42);
    }
    let (start, end) = offsets_partition_range(&mut client, "busy");
    assert!(
        start > 0,
        "the partition was compacted: log start {start}, end {end}"
    );
    assert!(
        end - start <= 1000 + 4,
        "what is kept is bounded: {start}..{end}"
    );
    assert_eq!(committed(&mut client, "busy"), COMMITS);
    server.stop().unwrap();

    let server = Server::start(config).unwrap();
    let mut client = AdminClient::connect(&server.address().to_string()).unwrap();
    assert_eq!(
        committed(&mut client, "busy"),
        COMMITS,
        "the latest survives"
    );
    assert_eq!(committed(&mut client, "steady"), 42);
    assert_eq!(
        committed(&mut client, "deleted"),
        -1,
        "a deleted group stays deleted"
    );
    server.stop().unwrap();
}
