//! Stopping and starting `ringlog serve` on the same data directory: SIGTERM must end the
//! process with status 0 (also while a consumer is long-polling and another connection
//! idles), and the next server must have every topic, every acknowledged record, and the
//! same offsets, with new records continuing where the old ones ended. A topic deleted
//! before the stop stays deleted.

use std::collections::BTreeMap;
use std::path::Path;

use kafka_protocol::messages::{ApiKey, MetadataRequest};
use kafka_protocol::records::Record;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::wire::{self, fetch_request, max_version, record, Connection, EARLIEST, LATEST};

const TOPIC: &str = "durable";
const PARTITIONS: i32 = 3;

/// What each partition of `TOPIC` holds: `(key, value, timestamp)` in offset order.
type Expected = BTreeMap<i32, Vec<(Vec<u8>, Vec<u8>, i64)>>;

/// Appends `batches` batches of a few records to every partition, alternating acks=-1
/// (durable) and acks=1 (written), and records what each acknowledgement promised.
fn produce_round(connection: &mut Connection, expected: &mut Expected, round: u32, batches: u32) {
    for partition in 0..PARTITIONS {
        for batch in 0..batches {
            let held = expected.entry(partition).or_default();
            let records: Vec<Record> = (0..3)
                .map(|index| {
                    let key = format!("r{round}-p{partition}-b{batch}-{index}");
                    let value = format!("value of {key}").repeat(1 + index);
                    let timestamp = 1_600_000_000_000 + i64::from(round * 1000 + batch);
                    record(Some(key.as_bytes()), Some(value.as_bytes()), &[], timestamp)
                })
                .collect();
            let acks = if batch % 2 == 0 { -1 } else { 1 };
            let answer = connection.produce(TOPIC, partition, &records, acks);
            assert_eq!(answer.error_code, 0, "produce to {TOPIC}-{partition}");
            assert_eq!(
                answer.base_offset,
                held.len() as i64,
                "{TOPIC}-{partition}: offsets continue without a gap"
            );
            for r in records {
                let (key, value) = (r.key.unwrap(), r.value.unwrap());
                held.push((key.to_vec(), value.to_vec(), r.timestamp));
            }
        }
    }
}

/// Every partition holds exactly `expected`, from offset 0, and ListOffsets agrees.
fn check_contents(connection: &mut Connection, expected: &Expected, context: &str) {
    for (&partition, held) in expected {
        let records = connection.fetch_all(TOPIC, partition, 0);
        let got: Vec<(Vec<u8>, Vec<u8>, i64)> = records
            .iter()
            .map(|r| {
                let key = r.key.clone().unwrap_or_default().to_vec();
                let value = r.value.clone().unwrap_or_default().to_vec();
                (key, value, r.timestamp)
            })
            .collect();
        assert_eq!(&got, held, "{context}: {TOPIC}-{partition} contents");
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        let want: Vec<i64> = (0..held.len() as i64).collect();
        assert_eq!(offsets, want, "{context}: {TOPIC}-{partition} offsets");
        let latest = connection.list_offset(TOPIC, partition, LATEST);
        assert_eq!(latest, (0, held.len() as i64), "{context}: high watermark");
        let earliest = connection.list_offset(TOPIC, partition, EARLIEST);
        assert_eq!(earliest, (0, 0), "{context}: log start");
    }
}

/// The topics the server knows, with their partition counts.
/// The user topics (not `__consumer_offsets`) with their partition counts.
fn topics(connection: &mut Connection) -> BTreeMap<String, usize> {
    let request = MetadataRequest::default().with_topics(None);
    let response = connection
        .call(&request, max_version(ApiKey::Metadata))
        .expect("metadata");
    response
        .topics
        .iter()
        .filter(|topic| !topic.is_internal)
        .map(|topic| {
            let name = topic.name.as_ref().expect("a topic name").0.to_string();
            (name, topic.partitions.len())
        })
        .collect()
}

fn start(data: &Path) -> Server {
    // No auto-creation: a topic that comes back must come from the data directory.
    let options = ServerOptions::default().with("--auto-create-topics", "false");
    Server::start(data, &options)
}

#[test]
fn a_restarted_server_has_every_topic_record_and_offset_and_continues_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut expected = Expected::new();

    let server = start(&data);
    let mut connection = Connection::connect(server.address());
    assert_eq!(connection.create_topic(TOPIC, PARTITIONS), 0);
    assert_eq!(connection.create_topic("doomed", 1), 0);
    produce_round(&mut connection, &mut expected, 0, 6);
    let doomed = [record(None, Some(b"gone"), &[], 1)];
    assert_eq!(connection.produce("doomed", 0, &doomed, -1).error_code, 0);
    let version = max_version(ApiKey::DeleteTopics);
    let request = wire::delete_topics_request("doomed", version);
    let deleted = connection.call(&request, version);
    assert_eq!(deleted.expect("delete topics").responses[0].error_code, 0);
    check_contents(&mut connection, &expected, "before the stop");
    // A consumer waiting at the end of the log, and an idle connection, must not keep the
    // server from stopping cleanly.
    let mut polling = Connection::connect(server.address());
    let end = expected[&0].len() as i64;
    let long_poll = fetch_request(TOPIC, 0, end).with_max_wait_ms(20_000);
    polling
        .send(ApiKey::Fetch, max_version(ApiKey::Fetch), &long_poll)
        .expect("send a long poll");
    let log = server.stop_cleanly();
    assert!(
        log.contains("ringlog stopped"),
        "graceful stop logged:\n{log}"
    );
    drop((connection, polling));

    let server = start(&data);
    let mut connection = Connection::connect(server.address());
    let want = BTreeMap::from([(TOPIC.to_owned(), PARTITIONS as usize)]);
    assert_eq!(topics(&mut connection), want, "topics after the restart");
    check_contents(&mut connection, &expected, "after the first restart");
    produce_round(&mut connection, &mut expected, 1, 4);
    check_contents(
        &mut connection,
        &expected,
        "after appending to the restarted server",
    );
    // The deleted topic's name is free again, and the new topic starts empty.
    assert_eq!(connection.create_topic("doomed", 1), 0);
    assert_eq!(connection.list_offset("doomed", 0, LATEST), (0, 0));
    server.stop_cleanly();

    let server = start(&data);
    let mut connection = Connection::connect(server.address());
    check_contents(&mut connection, &expected, "after the second restart");
    produce_round(&mut connection, &mut expected, 2, 1);
    check_contents(&mut connection, &expected, "after the last appends");
    server.stop_cleanly();
}
