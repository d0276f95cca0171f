//! Real Kafka clients: a Python virtualenv with kafka-python, confluent-kafka (librdkafka)
//! and aiokafka, and a runner for the scripts in `tests/python/`.
//!
//! The venv lives in `target/e2e-venv`, made once with `python3 -m venv` and the pinned
//! wheels from PyPI (see `script::prepared_dir`: a changed pin rebuilds it, an unchanged
//! one costs nothing, parallel tests never install twice).
//!
//! A script gets the bootstrap address and its parameters as arguments, prints one JSON
//! document on stdout, and exits non-zero (with the reason on stderr) when something it
//! checks itself fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::script::{prepared_dir, run, run_json, run_json_within};

/// The clients the tests use, pinned: wheels for CPython 3.11 on x86_64 Linux exist for
/// each (kafka-python is pure Python; confluent-kafka bundles librdkafka).
pub const REQUIREMENTS: &[&str] = &[
    "kafka-python==3.0.12",
    "confluent-kafka==2.16.1",
    "aiokafka==0.14.0",
];

/// The venv's interpreter, the venv made first if needed.
pub fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = prepared_dir("e2e-venv", &REQUIREMENTS.join("\n"), make_venv);
        venv.join("bin").join("python")
    })
}

fn make_venv(venv: &Path) {
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

/// The path of `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs `tests/python/<name>` with `args` and returns the JSON it printed; panics with its
/// output if it fails, prints something else, or runs too long.
pub fn run_script(name: &str, args: &[&str]) -> serde_json::Value {
    run_json(script_command(name, args), &format!("{name} {args:?}"))
}

/// [`run_script`] for a script that may run up to `timeout` (a soak).
pub fn run_script_within(name: &str, args: &[&str], timeout: Duration) -> serde_json::Value {
    run_json_within(
        script_command(name, args),
        &format!("{name} {args:?}"),
        timeout,
    )
}

fn script_command(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(venv_python());
    command
        .arg(script(name))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        // No __pycache__ in the source tree (lab.py imports clients.py).
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}
