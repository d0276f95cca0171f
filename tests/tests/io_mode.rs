//! The I/O mode `ringlog serve` picks with no flags, against the real binary: direct I/O
//! (with the batch cache) on a disk file system, buffered with a warning saying why on a
//! file system that refuses O_DIRECT, a `direct` chosen explicitly there refused naming
//! the key, and a cache budget larger than the machine refused naming its key. Records
//! produced read back in every case.
//!
//! The file system that refuses O_DIRECT is a ramfs the test mounts (root only; skipped
//! with a message otherwise). tmpfs is no such file system any more: since Linux 6.6 it
//! accepts O_DIRECT, and ringlog then uses direct I/O on it like on a disk.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringlog_tests::process::{run_to_exit, Server, ServerOptions};
use ringlog_tests::wire::{record, Connection};

const TOPIC: &str = "modes";
const REFUSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A ramfs mounted on a temporary directory (it refuses O_DIRECT and fallocate), unmounted
/// on drop.
struct RamFs {
    dir: tempfile::TempDir,
}

impl RamFs {
    /// Mounts one, or says why not and returns `None` (not root, no ramfs).
    fn mount() -> Option<RamFs> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(RamFs { dir }),
            other => {
                eprintln!("SKIPPED: cannot mount a ramfs (root needed): {other:?}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RamFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Produces `count` records with acks=all, then reads the partition back.
fn round_trip(server: &Server, count: usize) -> Vec<String> {
    let mut connection = Connection::connect(server.address());
    let records: Vec<_> = (0..count)
        .map(|index| {
            let value = format!("record-{index}");
            record(None, Some(value.as_bytes()), &[], 1_700_000_000_000)
        })
        .collect();
    assert_eq!(connection.produce(TOPIC, 0, &records, -1).error_code, 0);
    connection
        .fetch_all(TOPIC, 0, 0)
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value.clone().unwrap_or_default()).into_owned())
        .collect()
}

fn expected(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("record-{index}")).collect()
}

/// The I/O mode the data directory's `topics.json` stored for the test topic.
fn stored_io_mode(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("topics.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let topic = json["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|topic| topic["name"] == TOPIC)
        .unwrap();
    topic["config"]["ringlog.io.mode"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn with_no_flags_a_disk_data_directory_gets_direct_io() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let server = Server::start(dir.path(), &ServerOptions::default());
    assert_eq!(round_trip(&server, 500), expected(500));
    let log = server.stop_cleanly();
    let serving = log.lines().find(|l| l.contains("ringlog serving")).unwrap();
    assert!(serving.contains("io_mode=Direct"), "{serving}");
    assert!(!serving.contains("batch_cache_mib=0"), "{serving}");
    assert_eq!(stored_io_mode(dir.path()), "direct");
}

#[test]
fn with_no_flags_a_data_directory_refusing_o_direct_falls_back_to_buffered_and_says_why() {
    let Some(dir) = RamFs::mount() else { return };
    let server = Server::start(dir.path(), &ServerOptions::default());
    assert_eq!(round_trip(&server, 500), expected(500));
    let log = server.stop_cleanly();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("refuses O_DIRECT")),
        "a warning says why; log:\n{log}"
    );
    let serving = log.lines().find(|l| l.contains("ringlog serving")).unwrap();
    assert!(serving.contains("io_mode=Buffered"), "{serving}");
    assert_eq!(stored_io_mode(dir.path()), "buffered");
}

/// Runs `ringlog serve` on `data_dir` with `flag value`, which must refuse to start:
/// asserts a non-zero exit and no serving line, and returns the log.
fn refused_start(data_dir: &Path, flag: &str, value: &str) -> String {
    let args = [
        OsStr::new("serve"),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new(flag),
        OsStr::new(value),
    ];
    let (status, log) = run_to_exit(&args, REFUSE_TIMEOUT);
    assert!(!status.success(), "{log}");
    assert!(!log.contains("ringlog serving"), "{log}");
    log
}

#[test]
fn direct_io_chosen_where_o_direct_is_refused_is_refused_naming_the_key() {
    let Some(dir) = RamFs::mount() else { return };
    let log = refused_start(dir.path(), "--io-mode", "direct");
    let error = log.lines().find(|l| l.starts_with("ringlog: ")).unwrap();
    assert!(
        error.contains("ringlog.io.mode = direct")
            && error.contains(&dir.path().display().to_string()),
        "{error}"
    );
}

#[test]
fn a_cache_budget_beyond_the_machines_memory_is_refused_naming_the_key() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = refused_start(dir.path(), "--batch-cache-bytes", "1000000000000000000");
    assert!(log.contains("batch_cache_bytes"), "{log}");
}

#[test]
fn with_the_cache_off_direct_io_still_serves_every_record() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let options = ServerOptions::default().with("--batch-cache-bytes", "0");
    let server = Server::start(dir.path(), &options);
    assert_eq!(round_trip(&server, 300), expected(300));
    let log = server.stop_cleanly();
    let serving = log.lines().find(|l| l.contains("ringlog serving")).unwrap();
    assert!(serving.contains("batch_cache_mib=0"), "{serving}");
}
