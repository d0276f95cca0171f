//! What machine a result was measured on: cores, memory, kernel, CPU model, and the file
//! system and block devices under the probed path. Gathered from /proc and from the same
//! commands a reader would run (`nproc`, `uname -a`, `df -T`, `lsblk`), so a report can be
//! checked by hand. A command that is missing or fails leaves its field empty rather than
//! stopping the probe.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// The machine a probe ran on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// `nproc`: CPUs this process may use.
    pub cores: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `MemTotal` from /proc/meminfo.
    pub memory_total: String,
    /// `uname -a`.
    pub kernel: String,
    /// `df -T PATH` (data line only), when the probe has a path.
    pub filesystem: Option<String>,
    /// `lsblk -o NAME,TYPE,SIZE,ROTA,MODEL,MOUNTPOINTS`.
    pub block_devices: String,
}

impl MachineInfo {
    /// Describes this machine, and the file system holding `path` if given.
    pub fn gather(path: Option<&Path>) -> MachineInfo {
        let filesystem = path.map(|path| {
            let output = command_output("df", &["-T", &path.to_string_lossy()]);
            output.lines().last().unwrap_or_default().to_owned()
        });
        MachineInfo {
            cores: command_output("nproc", &[]),
            cpu_model: proc_field("/proc/cpuinfo", "model name"),
            memory_total: proc_field("/proc/meminfo", "MemTotal"),
            kernel: command_output("uname", &["-a"]),
            filesystem,
            block_devices: command_output(
                "lsblk",
                &["-o", "NAME,TYPE,SIZE,ROTA,MODEL,MOUNTPOINTS"],
            ),
        }
    }
}

/// The trimmed standard output of `program args`, or an empty string if it fails.
fn command_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        _ => String::new(),
    }
}

/// The value of the first `key: value` line of a /proc file, or an empty string.
fn proc_field(file: &str, key: &str) -> String {
    let Ok(text) = std::fs::read_to_string(file) else {
        return String::new();
    };
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim() == key)
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default()
}
