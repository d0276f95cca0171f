//! The README's kafka-python example, run exactly as printed, twice, against `ringlog
//! serve` on the address it names (127.0.0.1:9092). So that the fixed port cannot collide
//! with anything on the machine, the server and the example run in a network namespace of
//! their own (`unshare --net`, with its loopback brought up), which needs root; without
//! root the test runs them on the machine's own loopback and says so.
//!
//! The first run prints the record it sent; the second prints only its own record, because
//! the group resumes after the offset the first run committed.

use std::path::Path;
use std::process::Command;

use ringlog_tests::process::ringlog_binary;
use ringlog_tests::python::venv_python;

/// The first ```python block of the README.
fn readme_example() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let start = text
        .find("```python\n")
        .expect("a python block in the README")
        + 10;
    let len = text[start..].find("```").expect("the python block ends");
    text[start..start + len].to_owned()
}

/// Starts the server, waits until it serves, runs the example twice, stops the server.
const SCRIPT: &str = r#"
set -eu
if [ "$ISOLATED" = 1 ]; then ip link set lo up; fi
"$RINGLOG" serve --data-dir "$WORK/data" --shards 2 >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    grep -q "ringlog serving" "$WORK/server.log" && break
    kill -0 $server
    sleep 0.1
done
grep -q "ringlog serving" "$WORK/server.log"
"$PYTHON" "$WORK/example.py" >"$WORK/first.txt"
"$PYTHON" "$WORK/example.py" >"$WORK/second.txt"
kill -TERM $server
wait $server
"#;

#[test]
fn the_readme_python_example_runs_as_printed_and_its_group_resumes() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("example.py"), readme_example()).unwrap();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut unshare = Command::new("unshare");
        unshare.args(["--net", "sh", "-c", SCRIPT]);
        unshare
    } else {
        eprintln!("not root: the README example runs on this machine's 127.0.0.1:9092");
        let mut sh = Command::new("sh");
        sh.args(["-c", SCRIPT]);
        sh
    };
    let output = command
        .env("ISOLATED", if root { "1" } else { "0" })
        .env("RINGLOG", ringlog_binary())
        .env("PYTHON", venv_python())
        .env("WORK", work.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("sh runs");
    let read = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    assert!(
        output.status.success(),
        "{}\n{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        read("server.log")
    );
    assert_eq!(read("first.txt"), "0 0 b'k3' b'durable'\n");
    assert_eq!(
        read("second.txt"),
        "0 1 b'k3' b'durable'\n",
        "the group resumes after its commit"
    );
}
