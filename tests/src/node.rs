//! kafkajs, the most used Node.js Kafka client, for the scripts in `tests/js/`: installed
//! once from the npm registry into `target/e2e-node` at a pinned version, with the
//! machine's Node.js (see `script::prepared_dir`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::script::{prepared_dir, run, run_json};

/// The client the tests use, pinned.
pub const REQUIREMENTS: &[&str] = &["kafkajs@2.2.4"];

/// `target/e2e-node/node_modules`, installed first if needed.
pub fn node_modules() -> &'static Path {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES.get_or_init(|| {
        let dir = prepared_dir("e2e-node", &REQUIREMENTS.join("\n"), |dir| {
            run(Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(dir)
                .args(REQUIREMENTS));
        });
        dir.join("node_modules")
    })
}

/// Runs `tests/js/<name>` with `args` under `node` and returns the JSON it printed.
pub fn run_script(name: &str, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("js").join(name);
    let mut command = Command::new("node");
    command
        .arg(script)
        .args(args)
        .env("NODE_PATH", node_modules())
        .env("KAFKAJS_NO_PARTITIONER_WARNING", "1");
    run_json(command, &format!("{name} {args:?}"))
}
