//! The `ringlog` binary as an operator meets it: its version, its log (plain text unless
//! stderr is a terminal, checked on a pipe and on a pseudo-terminal), and what it says and
//! how it exits when io_uring is unavailable (reproduced with a seccomp filter, as in a
//! container whose profile denies io_uring).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// How long `ringlog serve` may take to start listening, or to stop after SIGTERM.
const SERVE_TIMEOUT: Duration = Duration::from_secs(60);
/// What starts every ANSI escape sequence (colours included).
const ANSI_ESCAPE: &str = "\x1b[";

/// Runs `ringlog serve` on a fresh data directory and a free port, its stderr a pseudo-
/// terminal or a pipe and `NO_COLOR` as given (removed when `None`), waits until it logs
/// that it serves, stops it with SIGTERM and returns everything it logged.
fn serve_and_stop(on_terminal: bool, no_color: Option<&str>) -> String {
    let (stderr, terminal) = if on_terminal {
        let (master, slave) = pseudo_terminal();
        (Stdio::from(slave), Some(master))
    } else {
        (Stdio::piped(), None)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut command = ringlog();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let mut child = command.spawn().unwrap();
    // The parent's copy of the terminal goes with the command, so the reader sees the end of
    // the log once the child exits.
    drop(command);
    let mut log: Box<dyn Read + Send> = match terminal {
        Some(master) => Box::new(master),
        None => Box::new(child.stderr.take().unwrap()),
    };
    let text = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            // A pseudo-terminal's master reads EIO, not 0, once the child has closed it.
            while let Ok(read @ 1..) = log.read(&mut chunk) {
                let mut text = text.lock().unwrap_or_else(PoisonError::into_inner);
                text.extend_from_slice(&chunk[..read]);
            }
        })
    };
    let logged = || {
        let text = text.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&text).into_owned()
    };
    let deadline = Instant::now() + SERVE_TIMEOUT;
    while !logged().contains("ringlog serving") {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "ringlog serve did not start ({exited:?}); its log:\n{}",
            logged()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not reaped yet, so the pid still names it.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let logged = logged();
    assert!(status.success(), "{status}; its log:\n{logged}");
    assert!(logged.contains("ringlog stopped"), "{logged}");
    logged
}

/// A pseudo-terminal: its master, read by the test, and its slave, a terminal for the child.
fn pseudo_terminal() -> (File, OwnedFd) {
    // SAFETY: posix_openpt has no preconditions; the result is checked before use.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(
        master >= 0,
        "posix_openpt: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `master` is a descriptor just opened and owned by nothing else.
    let master = unsafe { File::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `master` is an open pseudo-terminal master; `name` is writable for its length.
    unsafe {
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0
        );
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name.to_str().unwrap())
        .unwrap();
    (master, slave.into())
}

#[test]
fn the_log_has_no_colours_off_a_terminal_or_with_no_color() {
    let piped = serve_and_stop(false, None);
    assert!(!piped.contains(ANSI_ESCAPE), "{piped:?}");

    // On a terminal the same lines are coloured (so the check above can fail), unless
    // NO_COLOR says otherwise.
    let terminal = serve_and_stop(true, None);
    assert!(terminal.contains(ANSI_ESCAPE), "{terminal:?}");
    let no_color = serve_and_stop(true, Some("1"));
    assert!(no_color.contains("ringlog serving"), "{no_color:?}");
    assert!(!no_color.contains(ANSI_ESCAPE), "{no_color:?}");
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
