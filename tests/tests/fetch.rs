//! Fetch against the real binary, where the behaviour is about the wire: long polling
//! (a request waits up to `max_wait_ms` for data, and is answered as soon as data arrives,
//! on a `flush.policy=always` topic as soon as it is durable), the request-level
//! `max_bytes` (the first partition with data always gets a batch; later ones are dropped
//! once the budget is spent), and DeleteRecords removing the segment a response is being
//! sent from (the client still receives the batches intact).
//!
//! Times are asserted as lower bounds (a long poll does not answer before `max_wait_ms`),
//! or against half of a long `max_wait_ms` for "answered early": generous bounds that only
//! a request nothing woke can miss.

use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, DeleteRecordsRequest, FetchRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::wire::{
    decode_batches, max_version, record, topic_name, Connection, EARLIEST, LATEST,
};

const NONE: i16 = 0;

fn start(data: &Path, io_mode: &str) -> Server {
    let options = ServerOptions::default()
        .with("--auto-create-topics", "false")
        .with("--io-mode", io_mode);
    Server::start(data, &options)
}

fn create_topic(c: &mut Connection, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let configs = configs
        .iter()
        .map(|(key, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string((*key).to_owned()))
                .with_value(Some(StrBytes::from_string((*value).to_owned())))
        })
        .collect();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(configs)]);
    let response = c
        .call(&request, max_version(ApiKey::CreateTopics))
        .expect("create topics");
    assert_eq!(response.topics[0].error_code, NONE, "create {name}");
}

/// A Fetch of `partitions` of `topic` from offset 0, each up to 1 MiB.
fn fetch(topic: &str, partitions: &[i32], max_wait_ms: i32, max_bytes: i32) -> FetchRequest {
    let partitions = partitions
        .iter()
        .map(|&partition| {
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(partitions)])
}

/// The partitions of the only topic of a Fetch at the highest version.
fn fetched(c: &mut Connection, request: &FetchRequest) -> Vec<PartitionData> {
    let request = c.with_topic_ids(request.clone()).expect("topic ids");
    let mut response = c.call(&request, max_version(ApiKey::Fetch)).expect("fetch");
    assert_eq!(response.error_code, NONE);
    response.responses.remove(0).partitions
}

fn values(partition: &PartitionData) -> Vec<String> {
    let records = decode_batches(partition.records.clone().unwrap_or_default())
        .expect("fetched batches decode");
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

fn one(value: &str) -> [Record; 1] {
    [record(None, Some(value.as_bytes()), &[], 1_000)]
}

/// A long poll of `topic`-0 sent on its own connection while this thread produces `value`
/// (acks=1) on another: the answer holds the record, long before `max_wait_ms`.
fn a_long_poll_wakes_for(server: &Server, topic: &str, value: &str) {
    const MAX_WAIT: Duration = Duration::from_secs(60);
    let address = server.address();
    let request = fetch(topic, &[0], MAX_WAIT.as_millis() as i32, 1 << 20);
    let polling = std::thread::spawn(move || {
        let mut c = Connection::connect(address);
        let request = c.with_topic_ids(request).expect("topic ids");
        let started = Instant::now();
        let response = c.call(&request, max_version(ApiKey::Fetch));
        (response, started.elapsed())
    });
    // Time for the request to reach the broker and wait; if it were late, it would find the
    // record at once and the test would pass without testing the wake-up, never fail.
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Connection::connect(address);
    assert_eq!(c.produce(topic, 0, &one(value), 1).error_code, NONE);
    let (response, waited) = polling.join().expect("the polling thread");
    let response = response.unwrap_or_else(|error| {
        panic!("{topic}: no answer to the long poll after {waited:?}: {error:#}")
    });
    let partitions = &response.responses[0].partitions;
    assert_eq!(partitions[0].error_code, NONE);
    assert_eq!(values(&partitions[0]), [value], "{topic}");
    assert_eq!(partitions[0].high_watermark, 1, "{topic}");
    assert!(
        waited < MAX_WAIT / 2,
        "{topic}: answered after {waited:?}, as if the append did not wake it"
    );
}

#[test]
fn long_polls_wait_out_max_wait_and_wake_when_data_arrives_or_becomes_durable() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), "buffered");
    let mut c = Connection::connect(server.address());
    create_topic(&mut c, "quiet", 1, &[]);
    create_topic(&mut c, "written", 1, &[]);
    create_topic(&mut c, "durable", 1, &[("flush.policy", "always")]);

    let max_wait = Duration::from_millis(500);
    let started = Instant::now();
    let partitions = fetched(&mut c, &fetch("quiet", &[0], 500, 1 << 20));
    let waited = started.elapsed();
    assert!(
        waited >= max_wait,
        "answered after {waited:?}, before max_wait_ms"
    );
    assert_eq!(partitions[0].error_code, NONE);
    assert_eq!(partitions[0].high_watermark, 0);
    assert!(values(&partitions[0]).is_empty());

    a_long_poll_wakes_for(&server, "written", "arrived");
    // The high watermark of a flush=always topic is its durable end: the append's write
    // wakes the request too early, and only the completed fdatasync lets it answer.
    a_long_poll_wakes_for(&server, "durable", "synced");
    server.stop_cleanly();
}

#[test]
fn the_request_max_bytes_drops_later_partitions_but_never_the_first_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), "buffered");
    let mut c = Connection::connect(server.address());
    create_topic(&mut c, "budget", 4, &[]);
    // About 1 KiB per batch; partition 1 stays empty.
    let value = |partition: i32| format!("p{partition}-{}", "v".repeat(1000));
    for partition in [0, 2, 3] {
        let answer = c.produce("budget", partition, &one(&value(partition)), -1);
        assert_eq!(answer.error_code, NONE);
    }
    let got = |c: &mut Connection, max_bytes: i32| -> Vec<(i32, i16, i64, Vec<String>)> {
        let request = fetch("budget", &[1, 0, 2, 3], 0, max_bytes);
        fetched(c, &request)
            .iter()
            .map(|p| (p.partition_index, p.error_code, p.high_watermark, values(p)))
            .collect()
    };
    let answer = |partition: i32, sent: bool| {
        let hw = i64::from(partition != 1);
        let values = if sent { vec![value(partition)] } else { vec![] };
        (partition, NONE, hw, values)
    };
    assert_eq!(
        got(&mut c, 1 << 20),
        [
            answer(1, false),
            answer(0, true),
            answer(2, true),
            answer(3, true)
        ],
        "a budget for everything"
    );
    assert_eq!(
        got(&mut c, 2500),
        [
            answer(1, false),
            answer(0, true),
            answer(2, true),
            answer(3, false)
        ],
        "two batches fit 2500 bytes, the third does not"
    );
    assert_eq!(
        got(&mut c, 1500),
        [
            answer(1, false),
            answer(0, true),
            answer(2, false),
            answer(3, false)
        ],
        "one batch fits"
    );
    assert_eq!(
        got(&mut c, 10),
        [
            answer(1, false),
            answer(0, true),
            answer(2, false),
            answer(3, false)
        ],
        "the first partition with data gets its batch even over the budget"
    );
    server.stop_cleanly();
}

/// Produces about `bytes` in batches just under 1 MiB (the default max.message.bytes) to
/// `topic`-0; returns the values in order.
fn fill(c: &mut Connection, topic: &str, bytes: usize) -> Vec<String> {
    let mut values = Vec::new();
    for batch in 0..bytes >> 20 {
        let records: Vec<Record> = (0..60)
            .map(|i| {
                let value = format!("{batch:03}-{i:02}-{}", "x".repeat(16 << 10));
                record(None, Some(value.as_bytes()), &[], 1_000)
            })
            .collect();
        let answer = c.produce(topic, 0, &records, 1);
        assert_eq!(answer.error_code, NONE);
        values.extend(
            records.iter().map(|r| {
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
            }),
        );
    }
    values
}

/// A response of a whole 16 MiB segment, more than loopback socket buffers hold, is left
/// unread by the client while DeleteRecords removes that segment on another connection;
/// then the client reads it: every batch, intact. (Buffered topics send from the file;
/// direct ones from the batch cache, which DeleteRecords trims too.)
fn delete_records_during_a_send_leaves_it_intact(io_mode: &str) {
    const SEGMENT_BYTES: usize = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, io_mode);
    let mut c = Connection::connect(server.address());
    let segment_bytes = SEGMENT_BYTES.to_string();
    create_topic(&mut c, "trimmed", 1, &[("segment.bytes", &segment_bytes)]);
    let produced = fill(&mut c, "trimmed", SEGMENT_BYTES + (4 << 20));
    let (error, end) = c.list_offset("trimmed", 0, LATEST);
    assert_eq!((error, end), (NONE, produced.len() as i64));

    let mut reader = Connection::connect(server.address());
    let mut request = fetch("trimmed", &[0], 0, 64 << 20);
    request.topics[0].partitions[0].partition_max_bytes = 32 << 20;
    let request = reader.with_topic_ids(request).expect("topic ids");
    let version = max_version(ApiKey::Fetch);
    let correlation_id = reader
        .send(ApiKey::Fetch, version, &request)
        .expect("send the fetch");
    // Time for the broker to start sending and fill the socket buffers.
    std::thread::sleep(Duration::from_millis(500));

    let delete = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name("trimmed"))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(end)])]);
    let deleted = c
        .call(&delete, max_version(ApiKey::DeleteRecords))
        .expect("delete records");
    let answer = &deleted.topics[0].partitions[0];
    assert_eq!((answer.error_code, answer.low_watermark), (NONE, end));
    assert_eq!(c.list_offset("trimmed", 0, EARLIEST), (NONE, end));
    let first_segment = data.join("trimmed-0/00000000000000000000.log");
    assert!(!first_segment.exists(), "the segment being sent is deleted");

    let response = reader
        .receive::<FetchRequest>(version, correlation_id)
        .expect("the fetch is answered");
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, NONE);
    let sent = values(partition);
    assert!(
        sent.len() > produced.len() / 2,
        "{io_mode}: at least the first segment's records, not {} of {}",
        sent.len(),
        produced.len()
    );
    assert_eq!(sent, produced[..sent.len()], "{io_mode}: intact");
    server.stop_cleanly();
}

#[test]
fn delete_records_removing_the_segment_being_sent_leaves_the_response_intact_buffered() {
    delete_records_during_a_send_leaves_it_intact("buffered");
}

#[test]
fn delete_records_removing_the_segment_being_sent_leaves_the_response_intact_direct() {
    delete_records_during_a_send_leaves_it_intact("direct");
}

/// A Fetch whose `min_bytes` is more than the partition holds waits out `max_wait_ms`
/// without spinning. One small record is there: a broker that went back to reading
/// whenever the partition had anything past the fetch offset would re-read it until the
/// deadline, a core busy for the whole wait.
#[test]
fn a_fetch_short_of_min_bytes_waits_without_spinning() {
    const MAX_WAIT: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), "direct");
    let mut c = Connection::connect(server.address());
    create_topic(&mut c, "trickle", 1, &[]);
    assert_eq!(c.produce("trickle", 0, &one("small"), 1).error_code, NONE);
    let request =
        fetch("trickle", &[0], MAX_WAIT.as_millis() as i32, 1 << 20).with_min_bytes(1 << 20);
    let cpu_before = process_cpu(server.pid());
    let started = Instant::now();
    let partitions = fetched(&mut c, &request);
    let waited = started.elapsed();
    let cpu = process_cpu(server.pid()).saturating_sub(cpu_before);
    assert!(
        waited >= MAX_WAIT,
        "answered after {waited:?}, before max_wait_ms"
    );
    assert_eq!(values(&partitions[0]), ["small"]);
    assert!(
        cpu < MAX_WAIT / 4,
        "the broker used {cpu:?} of CPU time while the fetch waited {waited:?}"
    );
}

/// CPU time (user and system) the process `pid` has used so far, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the broker's stat");
    // The command name is in parentheses and may hold spaces: count fields after it. The
    // first is the state (field 3); utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<u64> = after
        .split(' ')
        .skip(11)
        .take(2)
        .map(|field| field.parse().expect("clock ticks"))
        .collect();
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(fields.iter().sum::<u64>() * 1_000 / ticks_per_second)
}
