//! The `ringlog` binary as an operator meets it: its version, and what it says and how it
//! exits when io_uring is unavailable (reproduced with a seccomp filter, as in a
//! container whose profile denies io_uring).

use std::os::unix::process::CommandExt;
use std::process::Command;

use ringlog_engine::rt::{seccomp, EXIT_CODE_IO_URING_UNAVAILABLE};
use ringlog_server::cli::EXIT_CODE_CONFIG;

fn ringlog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringlog"))
}

#[test]
fn version_is_printed() {
    let output = ringlog().arg("--version").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("ringlog {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn serve_without_io_uring_names_cause_and_remedy_and_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = ringlog();
    command
        .arg("serve")
        .arg("--shards")
        .arg("1")
        .arg("--data-dir")
        .arg(dir.path().join("d"));
    // SAFETY: the closure runs in the forked child before exec and only makes system
    // calls (prctl), which is async-signal-safe.
    unsafe {
        command.pre_exec(seccomp::deny_io_uring_setup_for_current_thread);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(EXIT_CODE_IO_URING_UNAVAILABLE),
        "{stderr}"
    );
    assert!(stderr.contains("io_uring is unavailable"), "{stderr}");
    assert!(stderr.contains("seccomp"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !dir.path().join("d").exists(),
        "nothing written without io_uring"
    );
}

#[test]
fn bad_flags_and_config_keys_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let output = ringlog()
        .args(["serve", "--data-dir", data, "--shards", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_CODE_CONFIG));
    assert!(String::from_utf8_lossy(&output.stderr).contains("shards"));
    let output = ringlog()
        .args(["serve", "--io-mode", "sideways"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--io-mode"));
    let config = dir.path().join("ringlog.toml");
    std::fs::write(&config, "lissen = \"127.0.0.1:1\"\n").unwrap();
    let output = ringlog()
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_CODE_CONFIG));
    assert!(String::from_utf8_lossy(&output.stderr).contains("lissen"));
    assert!(
        !std::path::Path::new(data).exists(),
        "nothing written on a config error"
    );
}
