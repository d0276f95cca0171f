//! The `ringlog` binary as a child process: where it is, how it starts, how it stops.
//!
//! The binary is `target/<profile>/ringlog`, next to the `deps/` folder the test executable
//! runs from (cargo builds it there for `cargo test --workspace`, which compiles the
//! server's integration tests). When it is missing, or older than the newest
//! `libringlog_server` library cargo built for these tests (so the server's code changed
//! since), it is built with `cargo build` in the same profile. `RINGLOG_BIN` overrides all
//! of this.
//!
//! A server listens on `127.0.0.1:0`; the port the kernel picked is read from the
//! `ringlog serving listen=…` line it logs on stderr once every shard accepts. Its stderr
//! is collected (and printed if the test panics). Dropping a running server sends SIGTERM
//! and, if it has not exited after a grace period, SIGKILL: no test leaves one behind.
//! A server may run under a command prefix that ends by exec'ing the binary (`ip netns
//! exec NAME`, to run it in a network namespace), so its process id is still the server's.
//!
//! Also here, for tests that coordinate with servers and scripts: a free port on loopback
//! and waiting for a marker file.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a server may take to start listening (a debug build on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`wait_for`] waits for a marker file.
const MARKER_TIMEOUT: Duration = Duration::from_secs(120);

/// A port on 127.0.0.1 that was free a moment ago, for a server that must be told its port
/// before it starts (a cluster node's internal listener, which its peers are given).
///
/// Drawn below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where no
/// listener bound to port 0 and no outgoing connection gets a port: a port the kernel
/// picked would be free again the moment it is returned, and another test's listener on
/// port 0 could take it before the server binds it. Each draw is checked bindable; a
/// process-wide counter keeps this process's draws apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_start.max(10_001));
    let span = high - low;
    // Different processes start at different places (their pid), and step by a prime.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let draw = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (start + draw.wrapping_mul(131)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Waits until `path` exists (a marker file a script or a test thread writes); panics after
/// two minutes.
pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + MARKER_TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `target/<profile>` folder the running test executable was built into.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash>
    let deps = exe.parent().expect("the test executable is in a folder");
    deps.parent()
        .expect("the test executable is in target/<profile>/deps")
        .to_path_buf()
}

/// The `ringlog` binary to test, built first if needed (see the module documentation).
pub fn ringlog_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("RINGLOG_BIN") {
            return PathBuf::from(path);
        }
        let profile_dir = profile_dir();
        let binary = profile_dir.join("ringlog");
        if !is_fresh(&binary, &profile_dir.join("deps")) {
            build_binary(&profile_dir);
        }
        assert!(
            binary.exists(),
            "{} missing after cargo build",
            binary.display()
        );
        binary
    })
}

/// Whether `binary` exists and is at least as new as every `libringlog_server` in `deps`.
fn is_fresh(binary: &Path, deps: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(built) = modified(binary) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(deps) else {
        return true;
    };
    entries.flatten().all(|entry| {
        let name = entry.file_name();
        let is_server_lib = name.to_string_lossy().starts_with("libringlog_server-");
        !is_server_lib || modified(&entry.path()).is_none_or(|lib| lib <= built)
    })
}

fn build_binary(profile_dir: &Path) {
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(name) => name.to_owned(),
        None => panic!("no profile in {}", profile_dir.display()),
    };
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "ringlog-server",
            "--bin",
            "ringlog",
            "--profile",
        ])
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace)
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "cargo build of the ringlog binary: {status}"
    );
}

/// A running `ringlog serve`.
pub struct Server {
    child: Child,
    address: SocketAddr,
    log: Arc<Mutex<String>>,
    log_reader: Option<JoinHandle<()>>,
}

/// How to start a server; `Default` is two shards, auto-creation on, one partition.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub shards: usize,
    /// The listen address; default `127.0.0.1:0` (a port the kernel picks).
    pub listen: String,
    /// Extra `ringlog serve` flags, e.g. `["--auto-create-topics", "false"]`.
    pub args: Vec<String>,
    /// A command the binary is run under, which must exec it (so the child's process id
    /// is the server's, and SIGKILL reaches it): e.g. `["ip", "netns", "exec", "ns1"]`.
    /// Empty by default.
    pub command_prefix: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            shards: 2,
            listen: "127.0.0.1:0".to_owned(),
            args: Vec::new(),
            command_prefix: Vec::new(),
        }
    }
}

impl ServerOptions {
    /// These options with `flag value` appended.
    #[must_use]
    pub fn with(mut self, flag: &str, value: &str) -> ServerOptions {
        self.args.push(flag.to_owned());
        self.args.push(value.to_owned());
        self
    }
}

impl Server {
    /// Starts `ringlog serve` on `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path, options: &ServerOptions) -> Server {
        let mut child = ringlog_command_under(&options.command_prefix)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &options.listen])
            .args(["--shards", &options.shards.to_string()])
            .args(&options.args)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("ringlog starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let log_reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    {
                        let mut log = log
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        log.push_str(&line);
                        log.push('\n');
                    }
                    // After the line is in the log, so the test finds it there.
                    if let Some(address) = listen_address(&line) {
                        let _ = address_tx.send(address);
                    }
                }
            })
        };
        let address = address_rx.recv_timeout(START_TIMEOUT);
        let mut server = Server {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            log_reader: Some(log_reader),
        };
        if let Ok(address) = address {
            server.address = address;
        } else {
            let status = server.child.try_wait().ok().flatten();
            panic!(
                "ringlog did not start listening (exit status {status:?}); its log:\n{}",
                server.log()
            );
        }
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The metrics endpoint's address, from the `ringlog serving … metrics_listen=…` line
    /// (a server started with `--metrics-listen`).
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        let log = self.log();
        let line = log.lines().find(|line| line.contains("ringlog serving"))?;
        let (_, rest) = line.split_once("metrics_listen=")?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// The process's memory from `/proc/<pid>/status`: resident now and its peak
    /// (`VmRSS`, `VmHWM`), in KiB.
    pub fn memory_kib(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in the server's status"))
        };
        Memory {
            resident_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Kills the process with SIGKILL (no chance to close anything) and waits for it.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        self.log()
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `host:port`, as clients take a bootstrap server.
    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Panics (with the log) unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("ringlog exited ({status}); its log:\n{}", self.log());
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status and full log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let status = self.terminate();
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        (status, self.log())
    }

    /// Stops the server and asserts the graceful stop's promise: exit status 0.
    pub fn stop_cleanly(self) -> String {
        let (status, log) = self.stop();
        assert_eq!(
            status.code(),
            Some(0),
            "ringlog exit status {status}; log:\n{log}"
        );
        log
    }

    fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped (try_wait said it is
        // running), so the pid still names it.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    return self
                        .child
                        .wait()
                        .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let status = self.terminate();
        if std::thread::panicking() {
            eprintln!("ringlog ({status}) log:\n{}", self.log());
        }
    }
}

/// A process's memory, as `/proc/<pid>/status` tells it.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub resident_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_kib: u64,
}

/// Raises this process's soft open-file limit to its hard limit (servers it starts
/// inherit it); the limit now in force, or why it is below `needed`, for a test that opens
/// that many sockets to skip visibly.
pub fn raise_open_file_limit(needed: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit that the call only reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    if limit.rlim_cur < needed {
        return Err(format!(
            "the hard open-file limit is {}, and this test needs {needed}",
            limit.rlim_cur
        ));
    }
    Ok(limit.rlim_cur)
}

/// The `ringlog` binary as a command: no input, no colours, stdout discarded, stderr piped
/// (the log the tests read).
fn ringlog_command() -> Command {
    ringlog_command_under(&[])
}

/// [`ringlog_command`] run under `prefix` (see [`ServerOptions::command_prefix`]).
fn ringlog_command_under(prefix: &[String]) -> Command {
    let mut command = match prefix.split_first() {
        None => Command::new(ringlog_binary()),
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(ringlog_binary());
            command
        }
    };
    command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs `ringlog ARGS` to its end and returns its status and stderr; a process still
/// running after `timeout` is killed and the test fails (a `serve` that should have
/// refused to start, say).
pub fn run_to_exit(args: &[&std::ffi::OsStr], timeout: Duration) -> (ExitStatus, String) {
    let mut child = ringlog_command()
        .args(args)
        .spawn()
        .expect("ringlog starts");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ringlog") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = reader.join().unwrap_or_default();
            panic!("ringlog {args:?} still ran after {timeout:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap_or_default())
}

/// The address in a `ringlog serving listen=HOST:PORT …` line.
fn listen_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("ringlog serving") {
        return None;
    }
    let (_, rest) = line.split_once("listen=")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `line` without ANSI escape sequences (`ESC [ … letter`), in case the log is coloured.
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_address_is_read_from_the_serving_line() {
        let line = "\u{1b}[2m2026-11-26T03:05:14Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                    ringlog_server::server: ringlog serving \u{1b}[3mlisten\u{1b}[0m\
                    \u{1b}[2m=\u{1b}[0m127.0.0.1:35847 \u{1b}[3madvertised\u{1b}[0m=x";
        let plain = strip_ansi(line);
        assert_eq!(
            listen_address(&plain),
            Some(SocketAddr::from(([127, 0, 0, 1], 35847)))
        );
        assert_eq!(listen_address("topic auto-created listen=1.2.3.4:5"), None);
    }
}
