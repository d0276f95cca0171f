//! Real idempotent producers whose acknowledgement is lost after the broker wrote the
//! batch: a proxy in the client's process drops the broker's answer to one Produce request
//! and cuts the connection (tests/python/idempotence.py). The client retries, and every
//! record must end up in the partition exactly once, in order, at the offset the client was
//! finally told — with the retry reaching the same broker, one restarted cleanly in
//! between, and one killed with SIGKILL in between.

use ringlog_tests::process::{free_port, wait_for, Server, ServerOptions};
use ringlog_tests::python::run_script;
use ringlog_tests::wire::Connection;

const TOPIC: &str = "exactly-once";
const COUNT: usize = 30;
/// The Produce request whose answer is lost (after the first few went through).
const CUT_AT: usize = 12;

/// How the broker fares between the lost answer and the retry.
#[derive(Clone, Copy, PartialEq)]
enum Between {
    Nothing,
    CleanRestart,
    Kill,
}

fn retried_batches_are_written_once(client: &str, between: Between) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let (proxy_port, broker_port) = (free_port(), free_port());
    let mut options =
        ServerOptions::default().with("--advertised-listener", &format!("127.0.0.1:{proxy_port}"));
    options.listen = format!("127.0.0.1:{broker_port}");
    let mut server = Server::start(&data, &options);
    let mode = if between == Between::Nothing {
        "cut"
    } else {
        "restart"
    };
    let args: Vec<String> = [
        "run",
        client,
        &proxy_port.to_string(),
        &broker_port.to_string(),
        TOPIC,
        &COUNT.to_string(),
        &CUT_AT.to_string(),
        work.to_str().unwrap(),
        mode,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let producer = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script("idempotence.py", &args)
    });
    if between != Between::Nothing {
        wait_for(&work.join("cut"));
        if between == Between::Kill {
            server.kill();
        } else {
            server.stop_cleanly();
        }
        server = Server::start(&data, &options);
        std::fs::write(work.join("restarted"), b"").unwrap();
    }
    let answer = producer.join().expect("the producer script");
    assert_eq!(answer["cut"], true, "the proxy lost an answer: {answer}");
    let offsets: Vec<i64> = answer["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (0..COUNT as i64).collect();
    assert_eq!(
        offsets, want,
        "{client}: acknowledged offsets in order, no gap"
    );
    let mut connection = Connection::connect(server.address());
    let values: Vec<String> = connection
        .fetch_all(TOPIC, 0, 0)
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value.clone().unwrap_or_default()).into_owned())
        .collect();
    let want: Vec<String> = (0..COUNT).map(|i| format!("r{i}")).collect();
    assert_eq!(values, want, "{client}: each record once, in order");
    server.stop_cleanly();
}

#[test]
fn kafka_python_retries_after_a_lost_answer_are_written_once() {
    retried_batches_are_written_once("kafka-python", Between::Nothing);
}

#[test]
fn kafka_python_retries_after_a_clean_restart_are_written_once() {
    retried_batches_are_written_once("kafka-python", Between::CleanRestart);
}

#[test]
fn kafka_python_retries_after_a_broker_kill_are_written_once() {
    retried_batches_are_written_once("kafka-python", Between::Kill);
}

#[test]
fn librdkafka_retries_after_a_lost_answer_are_written_once() {
    retried_batches_are_written_once("confluent", Between::Nothing);
}
