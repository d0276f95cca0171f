//! `ringlog-tune sweep` as an operator runs it: the real binary on a real file system,
//! with a tiny grid. It must write the three files, the chart must be well-formed SVG with
//! the series it claims, and the recommended configuration must start a broker. Bad input
//! (no room, an unwritable `--out`, a file system without O_DIRECT) gets a clear refusal
//! or a note, never a crash.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use ringlog_server::config::{FileConfig, ServerConfig};
use ringlog_server::server::Server;

fn tune(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlog-tune"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tiny grid: two flush policies, `io_modes`, one batch size, acks=1, then one stage-2
/// point; half a second each.
fn tiny_grid<'a>(data_dir: &'a Path, out: &'a Path, io_modes: &'a str) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![
        "sweep".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    for arg in [
        "--flush",
        "always,interval:5",
        "--io-mode",
        io_modes,
        "--batch-bytes",
        "64KiB",
        "--acks",
        "1",
        "--linger-ms",
        "1",
        "--stage2-batch-bytes",
        "64KiB",
        "--duration-per-point",
        "0.5",
        // A budget no point misses, so the test does not depend on this machine's noise.
        "--p99-ms",
        "10000",
        "--durability",
        "bounded-ms:10000",
    ] {
        args.push(arg.as_ref());
    }
    args
}

#[test]
fn a_tiny_sweep_writes_its_report_chart_and_a_configuration_that_starts_a_broker() {
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let output = tune(&tiny_grid(data_dir.path(), out.path(), "direct"));
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("recommended: flush "), "{stdout}");
    let leftovers: Vec<_> = std::fs::read_dir(data_dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "the sweep left {leftovers:?}");

    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for heading in [
        "## The node's limits",
        "## Recommendation",
        "## Stage 1",
        "## Stage 2",
        "write + fdatasync, 64 KiB",
        "loopback TCP",
        "| librdkafka",
    ] {
        assert!(report.contains(heading), "{heading} missing:\n{report}");
    }
    for row in [
        "| always | direct | 64 KiB | 1 |",
        "| interval 5 ms | direct |",
    ] {
        assert!(report.contains(row), "{row} missing:\n{report}");
    }

    check_chart(&out.path().join("throughput-latency.svg"));
    check_configuration(&out.path().join("recommended.toml"), data_dir.path());
}

/// The chart parses as XML, is an SVG, and draws a legend entry per policy, the budget and
/// the recommended point, with a marker per point.
fn check_chart(path: &Path) {
    let svg = std::fs::read_to_string(path).unwrap();
    let document = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .filter_map(|node| node.text().map(str::trim))
        .collect();
    for label in [
        "flush always",
        "flush interval 5 ms",
        "recommended",
        "p99 budget 10000 ms",
        "throughput (million records/s)",
        "produce p99 (ms, log scale)",
    ] {
        assert!(texts.contains(&label), "{label} not in {texts:?}");
    }
    let circles = document
        .descendants()
        .filter(|node| node.has_tag_name("circle"))
        .count();
    // Two points, their two legend markers, the ring and its legend marker.
    assert!(circles >= 6, "{circles} circles");
}

/// The configuration loads through the server's own loader, sets a policy the grid had
/// and direct I/O, and a broker starts with it.
fn check_configuration(path: &Path, data_dir: &Path) {
    let file = FileConfig::load(path, true).unwrap();
    let mut config = ServerConfig::from_file(file).unwrap();
    assert_eq!(config.data_dir, data_dir.canonicalize().unwrap());
    assert_eq!(
        config.topic_defaults.io_mode(),
        ringlog_engine::topic::IoMode::Direct
    );
    let policy = format!("{:?}", config.topic_defaults.flush());
    assert!(
        policy == "Always" || policy.contains("interval_ms: Some(5)"),
        "{policy}"
    );
    // The file says where the data goes; the test only moves the listener off 9092.
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen = any_port;
    config.advertised_listener = any_port;
    let server = Server::start(config).unwrap();
    server.stop().unwrap();
}

#[test]
fn an_unwritable_out_is_refused_before_measuring() {
    let file = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = file.path().join("report");
    let output = tune(&tiny_grid(data_dir.path(), &out, "direct"));
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot write to --out"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A file system of `fs_type` mounted on a temporary directory, unmounted on drop.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(fs_type: &str, options: &str) -> Option<Mounted> {
        if !is_root() {
            eprintln!("SKIPPED: mounting a {fs_type} needs root");
            return None;
        }
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let status = Command::new("mount")
            .args(["-t", fs_type, "-o", options, "ringlog-tune-test"])
            .arg(dir.path())
            .status()
            .unwrap();
        if !status.success() {
            eprintln!("SKIPPED: cannot mount a {fs_type}: {status}");
            return None;
        }
        Some(Mounted { dir })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn too_little_space_is_refused_up_front_saying_how_much_is_needed() {
    let Some(small) = Mounted::new("tmpfs", "size=64m") else {
        return;
    };
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let output = tune(&tiny_grid(small.dir.path(), out.path(), "direct"));
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not enough free space") && stderr.contains("needed"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn a_file_system_without_o_direct_skips_the_direct_points_with_a_note() {
    // ramfs refuses O_DIRECT and fallocate, and reports no size.
    let Some(ramfs) = Mounted::new("ramfs", "mode=0755") else {
        return;
    };
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut args = tiny_grid(ramfs.dir.path(), out.path(), "direct,buffered");
    args.push("--no-stage2".as_ref());
    let output = tune(&args);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        report.contains("skipped 2 direct-I/O points: the file system refuses O_DIRECT"),
        "{report}"
    );
    assert!(report.contains("| always | buffered |"), "{report}");
    assert!(!report.contains("| always | direct |"), "{report}");
    assert!(report.contains("refused by this file system"), "{report}");
    assert!(out.path().join("recommended.toml").exists());
}
