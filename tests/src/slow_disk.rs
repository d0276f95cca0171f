//! Slow disks for real processes: a cgroup whose block I/O on one device is throttled by
//! the kernel, into which a test moves a `ringlog serve` process for the length of a fault
//! and out of which it moves it back.
//!
//! The throttle is the kernel's own: cgroup v1's `blkio.throttle.write_iops_device` and
//! `write_bps_device`, or cgroup v2's `io.max` (`wiops`, `wbps`). Moving a process
//! (`cgroup.procs`) moves all its threads, io_uring's workers included, so every write the
//! node issues to the device (its segments with O_DIRECT, its fdatasyncs' flushes, its Raft
//! journal) waits its turn. Buffered writes are throttled only under v2 (v1 charges
//! writeback to the root group), which is why the tests' nodes run with their default
//! O_DIRECT segments. [`SlowDisk::written_bytes`] says how much went through the throttle,
//! so a test can check the fault took effect.
//!
//! Root only, and only where the machine mounts one of the two hierarchies with the
//! controller in it; [`SlowDisk::create`] says why not otherwise.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy throttles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    V1,
    V2,
}

/// A throttled cgroup on the device holding a directory. Dropping it moves any process
/// still in it back where it came from and removes it.
#[derive(Debug)]
pub struct SlowDisk {
    hierarchy: Hierarchy,
    /// The cgroup's directory.
    dir: PathBuf,
    /// `major:minor` of the throttled (whole) disk.
    device: String,
    /// The processes in it, each with the cgroup directory it came from.
    moved: Vec<(u32, PathBuf)>,
}

const V1_ROOT: &str = "/sys/fs/cgroup/blkio";
const V2_ROOT: &str = "/sys/fs/cgroup";

impl SlowDisk {
    /// A cgroup named `name` letting its processes write at most `write_iops` requests and
    /// `write_bytes_per_s` bytes a second to the disk holding `data_dir`.
    pub fn create(
        data_dir: &Path,
        name: &str,
        write_iops: u32,
        write_bytes_per_s: u64,
    ) -> Result<SlowDisk, String> {
        let device = disk_of(data_dir)?;
        let (hierarchy, root) = if Path::new(V1_ROOT).join("cgroup.procs").exists() {
            (Hierarchy::V1, PathBuf::from(V1_ROOT))
        } else {
            let controllers = fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"))
                .map_err(|error| format!("no cgroup v1 blkio nor v2 hierarchy: {error}"))?;
            if !controllers.split_whitespace().any(|c| c == "io") {
                return Err(format!(
                    "cgroup v2 without the io controller ({controllers:?})"
                ));
            }
            write(&Path::new(V2_ROOT).join("cgroup.subtree_control"), "+io")?;
            (Hierarchy::V2, PathBuf::from(V2_ROOT))
        };
        let dir = root.join(name);
        fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let disk = SlowDisk {
            hierarchy,
            dir,
            device,
            moved: Vec::new(),
        };
        match hierarchy {
            Hierarchy::V1 => {
                let iops = format!("{} {write_iops}", disk.device);
                write(&disk.dir.join("blkio.throttle.write_iops_device"), &iops)?;
                let bps = format!("{} {write_bytes_per_s}", disk.device);
                write(&disk.dir.join("blkio.throttle.write_bps_device"), &bps)?;
            }
            Hierarchy::V2 => {
                let max = format!(
                    "{} wiops={write_iops} wbps={write_bytes_per_s}",
                    disk.device
                );
                write(&disk.dir.join("io.max"), &max)?;
            }
        }
        Ok(disk)
    }

    /// Moves process `pid` (all its threads) into the throttled cgroup.
    pub fn slow(&mut self, pid: u32) -> Result<(), String> {
        let from = cgroup_of(pid, self.hierarchy)?;
        write(&self.dir.join("cgroup.procs"), &pid.to_string())?;
        self.moved.push((pid, from));
        Ok(())
    }

    /// Moves process `pid` back to the cgroup it came from (nothing if it is not in this
    /// one, or is gone).
    pub fn restore(&mut self, pid: u32) {
        let Some(at) = self.moved.iter().position(|(moved, _)| *moved == pid) else {
            return;
        };
        let (_, from) = self.moved.remove(at);
        if Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(error) = write(&from.join("cgroup.procs"), &pid.to_string()) {
                eprintln!("slow disk: moving {pid} back: {error}");
            }
        }
    }

    /// Bytes the processes wrote to the disk while in the cgroup, all told.
    pub fn written_bytes(&self) -> u64 {
        match self.hierarchy {
            // Lines "MAJ:MIN Write N".
            Hierarchy::V1 => {
                let stats = fs::read_to_string(self.dir.join("blkio.throttle.io_service_bytes"))
                    .unwrap_or_default();
                (stats.lines())
                    .filter_map(|line| {
                        let mut fields = line.split_whitespace();
                        let device = fields.next()?;
                        let kind = fields.next()?;
                        let bytes = fields.next()?.parse::<u64>().ok()?;
                        (device == self.device && kind == "Write").then_some(bytes)
                    })
                    .sum()
            }
            // Lines "MAJ:MIN rbytes=… wbytes=… …".
            Hierarchy::V2 => {
                let stats = fs::read_to_string(self.dir.join("io.stat")).unwrap_or_default();
                (stats.lines())
                    .filter(|line| line.starts_with(&format!("{} ", self.device)))
                    .flat_map(str::split_whitespace)
                    .filter_map(|field| field.strip_prefix("wbytes=")?.parse::<u64>().ok())
                    .sum()
            }
        }
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.moved.iter().map(|(pid, _)| *pid).collect();
        for pid in pids {
            self.restore(pid);
        }
        if let Err(error) = fs::remove_dir(&self.dir) {
            eprintln!("slow disk: removing {}: {error}", self.dir.display());
        }
    }
}

/// `major:minor` of the whole disk holding `path` (a partition's disk, if it is on one).
fn disk_of(path: &Path) -> Result<String, String> {
    let dev = fs::metadata(path)
        .map_err(|error| format!("{}: {error}", path.display()))?
        .dev();
    let device = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{device}"));
    if !sys.exists() {
        return Err(format!(
            "{} is not on a block device ({device}: no {})",
            path.display(),
            sys.display()
        ));
    }
    if sys.join("partition").exists() {
        let parent = fs::read_to_string(sys.join("../dev"))
            .map_err(|error| format!("the disk of partition {device}: {error}"))?;
        return Ok(parent.trim().to_owned());
    }
    Ok(device)
}

/// The cgroup directory process `pid` is in, in `hierarchy`.
fn cgroup_of(pid: u32, hierarchy: Hierarchy) -> Result<PathBuf, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|error| format!("process {pid}: {error}"))?;
    // Lines "ID:CONTROLLERS:PATH"; v2's is "0::PATH".
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let root = match hierarchy {
            Hierarchy::V1 if controllers.split(',').any(|c| c == "blkio") => V1_ROOT,
            Hierarchy::V2 if controllers.is_empty() => V2_ROOT,
            _ => continue,
        };
        return Ok(Path::new(root).join(path.trim_start_matches('/')));
    }
    Err(format!(
        "process {pid} is in no {hierarchy:?} blkio/io cgroup"
    ))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text)
        .map_err(|error| format!("writing {text:?} to {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_moved_in_writes_through_the_throttle() {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = format!("ringlog-slow-disk-test-{}", std::process::id());
        let mut disk = match SlowDisk::create(dir.path(), &name, 100, 4 << 20) {
            Ok(disk) => disk,
            Err(reason) => {
                println!("skipped: {reason}");
                return;
            }
        };
        // dd with O_DIRECT, held until it is in the cgroup: 40 writes of 64 KiB.
        let file = dir.path().join("written");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "read go; exec dd if=/dev/zero of={} bs=64k count=40 oflag=direct",
                file.display()
            ))
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh");
        disk.slow(child.id()).expect("moved into the cgroup");
        let mut go = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut go, b"go\n").expect("released");
        drop(go);
        assert!(child.wait().expect("dd ran").success());
        disk.restore(child.id());
        assert!(
            disk.written_bytes() >= 40 * 64 * 1024,
            "dd's writes did not all go through the throttle: {} bytes",
            disk.written_bytes()
        );
    }
}
