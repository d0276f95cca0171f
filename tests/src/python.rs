//! Real Kafka clients: a Python virtualenv with kafka-python, confluent-kafka (librdkafka)
//! and aiokafka, and a runner for the scripts in `tests/python/`.
//!
//! The venv lives in `target/e2e-venv`, made once with `python3 -m venv` and the pinned
//! wheels from PyPI; a marker file inside records the requirements it was made with, so a
//! changed pin rebuilds it and an unchanged one costs nothing. Test processes (and the
//! threads in one) take an exclusive `flock` on `target/e2e-venv.lock` while they check or
//! build it, so parallel tests never install twice or use a half-made venv.
//!
//! A script gets the bootstrap address and its parameters as arguments, prints one JSON
//! document on stdout, and exits non-zero (with the reason on stderr) when something it
//! checks itself fails.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::profile_dir;

/// The clients the tests use, pinned: wheels for CPython 3.11 on x86_64 Linux exist for
/// each (kafka-python is pure Python; confluent-kafka bundles librdkafka).
pub const REQUIREMENTS: &[&str] = &[
    "kafka-python==3.0.12",
    "confluent-kafka==2.16.1",
    "aiokafka==0.14.0",
];

/// The longest a script may run before it is killed and the test fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The venv's interpreter, the venv made first if needed.
pub fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let target = profile_dir()
            .parent()
            .expect("target/<profile>")
            .to_path_buf();
        let venv = target.join("e2e-venv");
        let lock = File::create(target.join("e2e-venv.lock")).expect("venv lock file");
        // SAFETY: flock on a descriptor we own; it is released when `lock` is dropped.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
        let marker = venv.join("ringlog-requirements.txt");
        let wanted = REQUIREMENTS.join("\n");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
            make_venv(&venv);
            std::fs::write(&marker, &wanted).expect("venv marker");
        }
        drop(lock);
        venv.join("bin").join("python")
    })
}

fn make_venv(venv: &Path) {
    if venv.exists() {
        std::fs::remove_dir_all(venv).expect("remove the old venv");
    }
    let python = std::env::var("RINGLOG_E2E_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    run(Command::new(&python).args(["-m", "venv"]).arg(venv));
    run(Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
        ])
        .args(REQUIREMENTS));
}

fn run(command: &mut Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The path of `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs `tests/python/<name>` with `args` and returns the JSON it printed; panics with its
/// output if it fails, prints something else, or runs too long.
pub fn run_script(name: &str, args: &[&str]) -> serde_json::Value {
    let mut child = Command::new(venv_python())
        .arg(script(name))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        // No __pycache__ in the source tree (lab.py imports clients.py).
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python starts");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
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
                "{name} {args:?} ran longer than {SCRIPT_TIMEOUT:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "{name} {args:?} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|error| {
        panic!("{name} printed no JSON ({error})\nstdout:\n{stdout}\nstderr:\n{stderr}")
    })
}
