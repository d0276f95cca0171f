//! Producing to a real broker whose partitions are poisoned: each client must stop at once
//! with an error that names the broker's code, `KAFKA_STORAGE_ERROR (56)`.
//!
//! The storage failure is real, not faked: the test binary runs the client's test again
//! in a child process under a file size limit (`ulimit -f`, with SIGXFSZ ignored so the
//! kernel fails the call instead of killing the process). The embedded broker's
//! preallocation of a segment (1 MiB steps at first, see `log/prealloc.rs`) then fails
//! with EFBIG at the latest once the segment passes the limit, the engine poisons the
//! partition, and every Produce to it is answered with KAFKA_STORAGE_ERROR.
//! The child's tests are `#[ignore]`d and do nothing unless [`CHILD_ENV`] is set, so the
//! limit never applies to the rest of the suite.

use std::process::Command;

use super::parse_args;
use super::produce::{produce, ProduceArgs};
use super::Target;

/// Set in the child process, which runs under the file size limit.
const CHILD_ENV: &str = "RINGLOG_BENCH_POISONED_CHILD";
/// `ulimit -f` in the shell's blocks (512 or 1024 bytes): at most the first preallocation
/// step, far below what a run writes, far above the broker's metadata files.
const FILE_SIZE_LIMIT_BLOCKS: u32 = 1024;
/// Runs `$0 "$@"` (the test binary and its arguments) under the limit.
const UNDER_LIMIT: &str = "ulimit -f \"$LIMIT\" && trap '' XFSZ && exec \"$0\" \"$@\"";

/// Runs the ignored test `name` in a child process under the file size limit; checks
/// that it ran and passed.
fn run_child(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("sh")
        .args(["-c", UNDER_LIMIT])
        .arg(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LIMIT", FILE_SIZE_LIMIT_BLOCKS.to_string())
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} in the child: {}\n{stdout}\n{stderr}",
        output.status
    );
}

/// In the child: produces to a fresh embedded broker with `client`; returns the error.
fn produce_poisoned(client: &str) -> Option<String> {
    std::env::var_os(CHILD_ENV)?;
    let parent = tempfile::tempdir().unwrap();
    let parent = parent.path().to_str().unwrap();
    let args: ProduceArgs = parse_args(&[
        "produce",
        "--embedded",
        "--data-parent",
        parent,
        "--duration",
        "60",
        "--record-size",
        "100",
        "--partitions",
        "3",
        "--client",
        client,
    ])
    .unwrap();
    let target = Target::start(&args.target).unwrap();
    let outcome = match args.client {
        super::rdkafka::ClientArg::Native => produce(&args, &target),
        super::rdkafka::ClientArg::Rdkafka => super::rdkafka::produce(&args, &target),
    };
    // Stopping reports the poisoned partitions: the broker's business, not this test's.
    drop(target);
    Some(outcome.unwrap_err().to_string())
}

#[test]
fn a_poisoned_partition_stops_the_native_run_naming_the_code() {
    run_child("broker::poisoned::native_child");
}

#[test]
fn a_poisoned_partition_stops_the_rdkafka_run_naming_the_code() {
    run_child("broker::poisoned::rdkafka_child");
}

#[test]
#[ignore = "run by a_poisoned_partition_stops_the_native_run_naming_the_code"]
fn native_child() {
    if let Some(error) = produce_poisoned("native") {
        assert!(
            error.contains("acks errors: KAFKA_STORAGE_ERROR (56) from partition"),
            "{error}"
        );
    }
}

#[test]
#[ignore = "run by a_poisoned_partition_stops_the_rdkafka_run_naming_the_code"]
fn rdkafka_child() {
    if let Some(error) = produce_poisoned("rdkafka") {
        assert!(
            error.contains("acks errors: KAFKA_STORAGE_ERROR (56) from partition"),
            "{error}"
        );
    }
}
