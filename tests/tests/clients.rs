//! Real Kafka clients against the `ringlog` binary: kafka-python (pure Python) and
//! confluent-kafka (librdkafka) produce keyed and unkeyed records to a multi-partition
//! topic, and both clients read them back from the beginning. Every record must come back
//! exactly (key, value, headers, timestamp) at the offset its acknowledgement named, each
//! partition's offsets must run 0, 1, 2, … in send order, and records with the same key
//! must share a partition. The admin clients create, list, describe and delete topics.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::ApiKey;
use ringlog_server::protocol::supported;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::python::run_script;
use ringlog_tests::wire::Connection;
use ringlog_tests::{hex, TestRng};
use serde_json::{json, Value};

const PARTITIONS: usize = 4;
const KEYS: usize = 8;
const CLIENTS: [&str; 2] = ["kafka-python", "confluent"];

/// One record as the producer script takes it.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

impl Sent {
    fn to_json(&self) -> Value {
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(name, value)| json!([name, value.as_deref().map(hex)]))
            .collect();
        json!({
            "key": self.key.as_deref().map(hex),
            "value": self.value.as_deref().map(hex),
            "headers": headers,
            "timestamp": self.timestamp,
        })
    }
}

/// Keyed and unkeyed records with the values clients trip on: empty, null (a tombstone),
/// non-UTF-8, large (more than one fetch's worth together), and headers that repeat a
/// name, are empty, or are null.
fn records(seed: u64) -> Vec<Sent> {
    let mut rng = TestRng::new(seed);
    let mut sent = Vec::new();
    for index in 0..240usize {
        let keyed = index % 4 != 3;
        let key = keyed.then(|| format!("key-{}", index % KEYS).into_bytes());
        let value = match index {
            5 => Some(Vec::new()),
            9 => None,
            13 => Some(vec![0xff, 0xfe, 0x00, 0x80, 0xc3]),
            17 | 101 => Some(rng.bytes(300_000)),
            _ => Some(format!("value {index} {}", rng.next_u64()).into_bytes()),
        };
        let mut headers = vec![("index".to_owned(), Some(index.to_string().into_bytes()))];
        if index % 5 == 0 {
            headers.push(("dup".to_owned(), Some(b"first".to_vec())));
            headers.push(("dup".to_owned(), Some(b"second".to_vec())));
            headers.push(("empty".to_owned(), Some(Vec::new())));
        }
        sent.push(Sent {
            key,
            value,
            headers,
            timestamp: 1_700_000_000_000 + (index as i64) * 7,
        });
    }
    sent
}

fn produce(server: &Server, client: &str, topic: &str, sent: &[Sent]) -> Vec<(usize, i64)> {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("records.json");
    let records: Vec<Value> = sent.iter().map(Sent::to_json).collect();
    std::fs::write(&spec, serde_json::to_vec(&records).unwrap()).unwrap();
    let output = run_script(
        "clients.py",
        &[
            "produce",
            client,
            &server.bootstrap(),
            topic,
            spec.to_str().unwrap(),
        ],
    );
    output["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .map(|ack| {
            let partition = ack["partition"].as_u64().expect("partition") as usize;
            (partition, ack["offset"].as_i64().expect("offset"))
        })
        .collect()
}

/// What a consumer script read: high watermarks, and `(partition, offset, record)` in the
/// order it arrived.
fn consume(server: &Server, client: &str, topic: &str) -> (Vec<i64>, Vec<(usize, i64, Sent)>) {
    let partitions = PARTITIONS.to_string();
    let output = run_script(
        "clients.py",
        &["consume", client, &server.bootstrap(), topic, &partitions],
    );
    let high_watermarks = output["high_watermarks"]
        .as_array()
        .expect("high watermarks")
        .iter()
        .map(|h| h.as_i64().expect("a number"))
        .collect();
    let bytes = |value: &Value| {
        value
            .as_str()
            .map(|text| ringlog_tests::unhex(text).unwrap())
    };
    let records = output["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            assert_eq!(
                r["timestamp_type"], 0,
                "create time, as the producer set it: {r}"
            );
            let headers = r["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .map(|h| (h[0].as_str().expect("name").to_owned(), bytes(&h[1])))
                .collect();
            let record = Sent {
                key: bytes(&r["key"]),
                value: bytes(&r["value"]),
                headers,
                timestamp: r["timestamp"].as_i64().expect("timestamp"),
            };
            let partition = r["partition"].as_u64().expect("partition") as usize;
            (partition, r["offset"].as_i64().expect("offset"), record)
        })
        .collect();
    (high_watermarks, records)
}

/// The acknowledgements: each partition's offsets are 0, 1, 2, … in send order, and a key
/// always goes to the same partition.
fn check_acks(client: &str, sent: &[Sent], acks: &[(usize, i64)]) {
    assert_eq!(acks.len(), sent.len(), "{client}: one ack per record");
    let mut next = [0i64; PARTITIONS];
    let mut key_partition: BTreeMap<&[u8], usize> = BTreeMap::new();
    for (record, &(partition, offset)) in sent.iter().zip(acks) {
        assert!(partition < PARTITIONS, "{client}: partition {partition}");
        assert_eq!(
            offset, next[partition],
            "{client}: partition {partition} in order"
        );
        next[partition] += 1;
        if let Some(key) = &record.key {
            let first = *key_partition.entry(key).or_insert(partition);
            assert_eq!(first, partition, "{client}: key {key:?} changed partition");
        }
    }
    let used: BTreeSet<usize> = key_partition.values().copied().collect();
    assert!(
        used.len() > 1,
        "{client}: {KEYS} keys all hashed to one partition"
    );
}

/// What a consumer read is exactly what was acknowledged, each partition in order.
fn check_consumed(
    producer: &str,
    consumer: &str,
    sent: &[Sent],
    acks: &[(usize, i64)],
    high_watermarks: &[i64],
    consumed: &[(usize, i64, Sent)],
) {
    let context = format!("{producer} -> {consumer}");
    let mut expected_high = vec![0i64; PARTITIONS];
    for &(partition, offset) in acks {
        expected_high[partition] = expected_high[partition].max(offset + 1);
    }
    assert_eq!(high_watermarks, expected_high, "{context}: high watermarks");
    assert_eq!(consumed.len(), sent.len(), "{context}: every record, once");
    let mut last = [-1i64; PARTITIONS];
    let mut by_position = BTreeMap::new();
    for (partition, offset, record) in consumed {
        assert!(
            *offset > last[*partition],
            "{context}: partition {partition} out of order"
        );
        last[*partition] = *offset;
        by_position.insert((*partition, *offset), record);
    }
    for (index, (record, position)) in sent.iter().zip(acks).enumerate() {
        let got = by_position
            .get(position)
            .unwrap_or_else(|| panic!("{context}: record {index} at {position:?} not read"));
        assert_eq!(*got, record, "{context}: record {index} at {position:?}");
    }
}

/// Produces with `producer` to a topic of four partitions and reads it back with both
/// clients. `create`: make the topic first (else the producer's metadata request creates
/// it with the server's default partition count).
fn round_trip(producer: &str, topic: &str, create: bool, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default().with("--default-partitions", &PARTITIONS.to_string());
    let mut server = Server::start(&dir.path().join("data"), &options);
    if create {
        let mut connection = Connection::connect(server.address());
        assert_eq!(connection.create_topic(topic, PARTITIONS as i32), 0);
    }
    let sent = records(seed);
    let acks = produce(&server, producer, topic, &sent);
    check_acks(producer, &sent, &acks);
    for consumer in CLIENTS {
        let (high_watermarks, consumed) = consume(&server, consumer, topic);
        check_consumed(
            producer,
            consumer,
            &sent,
            &acks,
            &high_watermarks,
            &consumed,
        );
    }
    server.assert_running();
    server.stop_cleanly();
}

#[test]
fn kafka_python_records_come_back_exactly_through_both_clients() {
    round_trip("kafka-python", "from-kafka-python", true, 1);
}

#[test]
fn confluent_records_come_back_exactly_through_both_clients_on_an_auto_created_topic() {
    round_trip("confluent", "from-confluent", false, 2);
}

/// The error a failed admin step reported, by the client's own name for it.
fn admin_error(step: &Value) -> &str {
    assert_eq!(step["ok"], false, "expected a failure: {step}");
    step["error"].as_str().expect("an error name")
}

#[test]
fn admin_clients_create_list_describe_and_delete_topics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &ServerOptions::default());
    let describe_configs_supported = supported(ApiKey::DescribeConfigs).is_some();
    for (client, already_exists, unknown) in [
        (
            "kafka-python",
            "TopicAlreadyExistsError",
            "UnknownTopicOrPartitionError",
        ),
        ("confluent", "TOPIC_ALREADY_EXISTS", "UNKNOWN_TOPIC_OR_PART"),
    ] {
        let topic = format!("admin-{client}");
        let out = run_script(
            "clients.py",
            &["admin", client, &server.bootstrap(), &topic, "3"],
        );
        let context = format!("{client}: {out:#}");
        assert_eq!(out["create"]["ok"], true, "{context}");
        let listed = out["list_after_create"]["result"].as_array().expect("list");
        assert!(listed.contains(&json!(topic)), "{context}");
        let described = &out["describe"]["result"][0];
        assert_eq!(described["error_code"], 0, "{context}");
        assert_eq!(described["partitions"], 3, "{context}");
        assert_eq!(
            admin_error(&out["create_again"]),
            already_exists,
            "{context}"
        );
        assert_eq!(out["delete"]["ok"], true, "{context}");
        let listed = out["list_after_delete"]["result"].as_array().expect("list");
        assert!(!listed.contains(&json!(topic)), "{context}");
        assert_eq!(admin_error(&out["delete_again"]), unknown, "{context}");
        let configs = &out["describe_configs"];
        if describe_configs_supported {
            assert_eq!(
                configs["ok"], true,
                "DescribeConfigs is advertised: {context}"
            );
            let configs = &configs["result"];
            assert_eq!(
                configs["retention.ms"], "123456789",
                "the config the topic was created with: {context}"
            );
            assert!(
                configs.get("segment.bytes").is_some(),
                "defaults too: {context}"
            );
        } else {
            // Until ringlog implements DescribeConfigs, the clients must see it is not
            // advertised (and say so), rather than a broken answer.
            let unsupported = ["IncompatibleBrokerVersion", "_UNSUPPORTED_FEATURE"];
            assert!(
                unsupported.contains(&admin_error(configs)),
                "DescribeConfigs is not advertised: {context}"
            );
            eprintln!("NOTE: DescribeConfigs is not supported yet; {client} reports it so");
        }
    }
    server.stop_cleanly();
}
