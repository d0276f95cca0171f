//! Consumer groups with real clients at their default settings (kafka-python 3,
//! confluent-kafka / librdkafka, aiokafka, kafkajs), against the `ringlog` binary:
//!
//! - two consumers of one group split a 4-partition topic between them (disjoint
//!   assignments covering every partition) and together read every record exactly once;
//!   a second group reads everything again, independently;
//! - committed offsets survive a clean restart and a `kill -9` of the broker: the group
//!   resumes after its last commit and reads only what came after;
//! - a member that leaves, or is killed and times out, is taken over by the other;
//! - librdkafka's cooperative-sticky assignor and static members (`group.instance.id`).

use std::collections::BTreeSet;
use std::path::Path;

use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::{node, python};
use serde_json::Value;

const TOPIC: &str = "shared";
const PARTITIONS: usize = 4;

/// Runs `command` of the group script of `client` (`tests/js/groups.js` for kafkajs,
/// `tests/python/groups.py` for the others) with the bootstrap address, the topic and
/// `rest`.
fn script(client: &str, command: &str, server: &Server, rest: &[&str]) -> Value {
    let bootstrap = server.bootstrap();
    if client == "kafkajs" {
        let mut args = vec![command, &bootstrap, TOPIC];
        args.extend_from_slice(rest);
        return node::run_script("groups.js", &args);
    }
    let mut args = vec![command, client, &bootstrap, TOPIC];
    args.extend_from_slice(rest);
    python::run_script("groups.py", &args)
}

fn start(data_dir: &Path) -> Server {
    let options = ServerOptions::default().with("--default-partitions", "4");
    Server::start(data_dir, &options)
}

fn produce(client: &str, server: &Server, count: usize, tag: &str) {
    let sent = script(client, "produce", server, &[&count.to_string(), tag]);
    assert_eq!(sent["sent"], count, "{client} produce {tag}");
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .collect()
}

fn partitions(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// The values `tag-0 .. tag-(count-1)`, sorted.
fn expected(tag: &str, count: usize) -> Vec<String> {
    let mut values: Vec<String> = (0..count).map(|i| format!("{tag}-{i}")).collect();
    values.sort();
    values
}

/// Asserts the values are exactly `want` (each once), whatever their order.
fn assert_exactly(mut got: Vec<String>, want: &[String], context: &str) {
    got.sort();
    assert_eq!(got.len(), want.len(), "{context}: count");
    assert_eq!(got, want, "{context}: every record exactly once");
}

/// Two consumers of `group` read the topic; their assignments must split it.
fn share(client: &str, server: &Server, group: &str, want: &[String], config: &str) {
    let count = want.len().to_string();
    let mut args = vec![group, count.as_str()];
    if !config.is_empty() {
        args.push(config);
    }
    let shared = script(client, "share", server, &args);
    let consumers = shared["consumers"].as_array().expect("consumers");
    assert_eq!(consumers.len(), 2);
    let (a, b) = (
        partitions(&consumers[0]["assignment"]),
        partitions(&consumers[1]["assignment"]),
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "{client}: both got partitions: {a:?} {b:?}"
    );
    let union: BTreeSet<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(
        union.len(),
        a.len() + b.len(),
        "{client}: disjoint: {a:?} {b:?}"
    );
    assert_eq!(
        union.len(),
        PARTITIONS,
        "{client}: every partition: {a:?} {b:?}"
    );
    let mut values = strings(&consumers[0]["values"]);
    values.extend(strings(&consumers[1]["values"]));
    assert_exactly(values, want, &format!("{client} group {group}"));
}

fn consume(client: &str, server: &Server, group: &str, want: &[String]) {
    let count = want.len().to_string();
    let read = script(client, "consume", server, &[group, &count]);
    assert_exactly(
        strings(&read["values"]),
        want,
        &format!("{client} resumes {group}"),
    );
}

fn committed(client: &str, server: &Server, group: &str) -> Vec<u64> {
    let answer = script(
        client,
        "committed",
        server,
        &[group, &PARTITIONS.to_string()],
    );
    partitions(&answer["committed"])
}

/// The whole life of two groups with one client, across a clean restart and a crash.
fn groups_share_resume_and_survive_restarts(client: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data);
    produce(client, &server, 200, "first");
    let first = expected("first", 200);
    share(client, &server, "readers", &first, "");
    // A second group is independent of the first.
    consume(client, &server, "auditors", &first);

    produce(client, &server, 20, "second");
    server.stop_cleanly();
    let server = start(&data);
    consume(client, &server, "readers", &expected("second", 20));

    let before_crash = committed(client, &server, "readers");
    assert_eq!(before_crash.iter().sum::<u64>(), 220, "{before_crash:?}");
    server.kill();
    let server = start(&data);
    assert_eq!(
        committed(client, &server, "readers"),
        before_crash,
        "commits survive kill -9"
    );
    produce(client, &server, 5, "third");
    consume(client, &server, "readers", &expected("third", 5));
    server.stop_cleanly();
}

#[test]
fn kafka_python_groups_share_resume_and_survive_restarts() {
    groups_share_resume_and_survive_restarts("kafka-python");
}

#[test]
fn confluent_groups_share_resume_and_survive_restarts() {
    groups_share_resume_and_survive_restarts("confluent");
}

#[test]
fn aiokafka_groups_share_resume_and_survive_restarts() {
    groups_share_resume_and_survive_restarts("aiokafka");
}

#[test]
fn kafkajs_groups_share_resume_and_survive_restarts() {
    groups_share_resume_and_survive_restarts("kafkajs");
}

fn takeover(client: &str, how: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"));
    produce("confluent", &server, 8, "seed");
    let group = format!("takeover-{how}");
    let answer = script(client, "takeover", &server, &[&group, how]);
    let survivor_before = partitions(&answer["before"][0]);
    assert!(
        !survivor_before.is_empty() && survivor_before.len() < PARTITIONS,
        "{client} {how}: shared first: {answer}"
    );
    assert_eq!(
        partitions(&answer["after"]),
        [0, 1, 2, 3],
        "{client} {how}: the survivor takes every partition"
    );
    server.stop_cleanly();
}

#[test]
fn a_member_that_leaves_is_taken_over() {
    takeover("kafka-python", "leave");
    takeover("confluent", "leave");
}

#[test]
fn a_killed_member_is_taken_over_after_its_session_times_out() {
    takeover("kafka-python", "kill");
}

#[test]
fn librdkafka_cooperative_sticky_and_static_members_share_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"));
    produce("confluent", &server, 100, "coop");
    let want = expected("coop", 100);
    let cooperative = r#"{"partition.assignment.strategy": "cooperative-sticky"}"#;
    share("confluent", &server, "cooperative", &want, cooperative);
    let stable = r#"{"group.instance.id": "static-{i}"}"#;
    share("confluent", &server, "static", &want, stable);
    // The static members come back under the same instance ids and read only what is new.
    produce("confluent", &server, 10, "later");
    share(
        "confluent",
        &server,
        "static",
        &expected("later", 10),
        stable,
    );
    server.stop_cleanly();
}
