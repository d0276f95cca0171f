//! One process per data directory and per listen address, with the real binary: a second
//! `ringlog serve` on a data directory in use, or on an address another ringlog serves,
//! exits non-zero with one line that says why (naming the directory and the holder's
//! PID); the first keeps serving and loses nothing; a holder killed with SIGKILL does not
//! block the next start.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use ringlog_tests::process::{run_to_exit, Server, ServerOptions};
use ringlog_tests::wire::{record, Connection};

const TOPIC: &str = "owned";
/// How long a second server may take to refuse (a loaded machine).
const REFUSE_TIMEOUT: Duration = Duration::from_secs(60);

fn serve_args<'a>(data_dir: &'a Path, listen: &'a str) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("serve"),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new(listen),
        OsStr::new("--shards"),
        OsStr::new("2"),
    ]
}

/// Runs `ringlog ARGS`, which must refuse to start: asserts a non-zero exit and exactly
/// one error line, and returns that line with the whole log.
fn refused(args: &[&OsStr]) -> (String, String) {
    let (status, log) = run_to_exit(args, REFUSE_TIMEOUT);
    assert!(!status.success(), "ringlog exited {status}; log:\n{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one error line; log:\n{log}");
    (errors[0].to_owned(), log)
}

/// The lines of `log` that are an error report (`ringlog: …`), for the one-line promise.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.starts_with("ringlog: "))
        .collect()
}

/// Produces `count` records (acks=all) and returns the offset of the first.
fn produce(server: &Server, count: usize, tag: &str) -> i64 {
    let mut connection = Connection::connect(server.address());
    let records: Vec<_> = (0..count)
        .map(|index| {
            let value = format!("{tag}-{index}");
            record(None, Some(value.as_bytes()), &[], 1_700_000_000_000)
        })
        .collect();
    let answer = connection.produce(TOPIC, 0, &records, -1);
    assert_eq!(answer.error_code, 0, "produce {tag}");
    answer.base_offset
}

fn values(server: &Server) -> Vec<String> {
    let mut connection = Connection::connect(server.address());
    connection
        .fetch_all(TOPIC, 0, 0)
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value.clone().unwrap_or_default()).into_owned())
        .collect()
}

#[test]
fn a_second_server_on_a_data_dir_in_use_exits_naming_the_holder_whatever_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), &ServerOptions::default());
    assert_eq!(produce(&first, 3, "before"), 0);

    let (error, log) = refused(&serve_args(dir.path(), "127.0.0.1:0"));
    assert!(
        error.contains(&dir.path().display().to_string())
            && error.contains(&format!("PID {}", first.pid())),
        "the error names the directory and the holder: {error}"
    );
    assert!(
        !log.contains("ringlog serving"),
        "the second never served; log:\n{log}"
    );

    assert_eq!(produce(&first, 2, "after"), 3, "the first still serves");
    assert_eq!(
        values(&first),
        ["before-0", "before-1", "before-2", "after-0", "after-1"]
    );
    first.stop_cleanly();
}

#[test]
fn a_second_server_on_an_address_in_use_exits_naming_the_holder() {
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let first = Server::start(first_dir.path(), &ServerOptions::default());
    let listen = first.bootstrap();
    let (error, _) = refused(&serve_args(second_dir.path(), &listen));
    assert!(
        error.contains(&listen)
            && error.contains("already served by")
            && error.contains(&format!("PID {}", first.pid())),
        "the error names the address and the holder: {error}"
    );
    // Every connection reaches the first server (the second's sockets are gone): each
    // sees the records the ones before it wrote.
    for round in 0..8 {
        assert_eq!(produce(&first, 1, "r"), round, "connection {round}");
    }
    first.stop_cleanly();
}

#[test]
fn a_holder_killed_with_sigkill_does_not_block_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), &ServerOptions::default());
    assert_eq!(produce(&first, 4, "acked"), 0);
    first.kill();
    let second = Server::start(dir.path(), &ServerOptions::default());
    assert_eq!(
        values(&second),
        ["acked-0", "acked-1", "acked-2", "acked-3"]
    );
    second.stop_cleanly();
    let third = Server::start(dir.path(), &ServerOptions::default());
    assert_eq!(
        values(&third).len(),
        4,
        "a clean stop releases the lock too"
    );
    third.stop_cleanly();
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_as_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a directory").unwrap();
    let (error, _) = refused(&serve_args(&file, "127.0.0.1:0"));
    assert!(
        error.contains("is not a directory") && !error.contains("File exists"),
        "{error}"
    );
}
