//! What the client scripts of every language share: a tool folder under `target/` made
//! once (under an exclusive `flock`, so parallel tests never install twice or use a
//! half-made one, and made again when its pinned requirements change), and a runner that
//! takes the one JSON document a script prints.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::profile_dir;

/// The longest a script may run before it is killed and the test fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// The file in a tool folder recording the requirements it was made with.
const MARKER_FILE_NAME: &str = "ringlog-requirements.txt";

/// `target/<name>`, made by `make` unless its marker already records `wanted`.
pub fn prepared_dir(name: &str, wanted: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let target = profile_dir()
        .parent()
        .expect("target/<profile>")
        .to_path_buf();
    let dir = target.join(name);
    let lock = File::create(target.join(format!("{name}.lock"))).expect("lock file");
    // SAFETY: flock on a descriptor we own; it is released when `lock` is dropped.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    let marker = dir.join(MARKER_FILE_NAME);
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the old tool folder");
        }
        std::fs::create_dir_all(&dir).expect("tool folder");
        make(&dir);
        std::fs::write(&marker, wanted).expect("marker");
    }
    drop(lock);
    dir
}

/// Runs `command` to completion and asserts it succeeded.
pub fn run(command: &mut Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a script and returns the JSON it printed; panics with its output if it fails,
/// prints something else, or runs too long. `what` names it in messages.
pub fn run_json(command: Command, what: &str) -> serde_json::Value {
    run_json_within(command, what, SCRIPT_TIMEOUT)
}

/// [`run_json`] for a script that may run up to `timeout` (a soak).
pub fn run_json_within(mut command: Command, what: &str, timeout: Duration) -> serde_json::Value {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{what} does not start: {error}"));
    let deadline = Instant::now() + timeout;
    // The pipes are read by threads so a chatty script cannot block on a full pipe.
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} ran longer than {timeout:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "{what} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|error| {
        panic!("{what} printed no JSON ({error})\nstdout:\n{stdout}\nstderr:\n{stderr}")
    })
}
