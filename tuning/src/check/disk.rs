//! The data directory's items: its file system, fallocate, free space, and the block
//! device under it (I/O scheduler, volatile write cache) from sysfs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{mount_of, read_trimmed, Item, Status};

/// File systems ringlog is tested on, and that do O_DIRECT and fallocate well.
const FILE_SYSTEMS_GOOD: [&str; 2] = ["ext4", "xfs"];
/// Bytes the fallocate probe asks for.
const FALLOCATE_PROBE_BYTES: i64 = 1 << 20;

pub fn file_system(data_dir: &Path) -> Item {
    const NAME: &str = "file system";
    let Some(mount) = mount_of(data_dir) else {
        return Item::warn(NAME, "not found in /proc/self/mountinfo", "");
    };
    let found = format!(
        "{} on {} (mounted at {})",
        mount.fs_type,
        mount.source,
        mount.point.display()
    );
    let fix = match mount.fs_type.as_str() {
        "tmpfs" | "ramfs" => {
            "memory, not a disk: everything is lost at power off; put the data directory on \
             ext4 or xfs"
        }
        "nfs" | "nfs4" | "cifs" | "fuse" | "9p" | "virtiofs" => {
            "a network or user-space file system: fsync and O_DIRECT semantics vary; use a \
             local disk with ext4 or xfs"
        }
        _ => "ringlog is tested on ext4 and xfs",
    };
    Item::judged(
        NAME,
        FILE_SYSTEMS_GOOD.contains(&mount.fs_type.as_str()),
        Status::Warn,
        found,
        fix,
    )
}

/// Tries fallocate on a probe file (segments are preallocated with it).
pub fn fallocate(data_dir: &Path) -> Item {
    const NAME: &str = "fallocate";
    let path = data_dir.join(format!(".ringlog-tune-fallocate-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|file| {
            // SAFETY: the descriptor is open for the whole call; fallocate touches no memory
            // of ours.
            let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, FALLOCATE_PROBE_BYTES) };
            if result == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(()) => Item::ok(NAME, "a 1 MiB fallocate succeeded"),
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => Item::warn(
            NAME,
            "not supported by this file system",
            "segments are then written without preallocation (metadata updates on every \
             extending write); use ext4 or xfs",
        ),
        Err(error) => Item::fail(
            NAME,
            format!("failed: {error}"),
            "check the directory's permissions and free space",
        ),
    }
}

/// Free bytes for an unprivileged writer, from statvfs; `None` when the file system reports
/// no size at all (ramfs grows in memory without a limit).
pub fn free_bytes(data_dir: &Path) -> std::io::Result<Option<u64>> {
    let path = CString::new(data_dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value that the call overwrites.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &raw mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if stat.f_blocks == 0 {
        return Ok(None);
    }
    Ok(Some(stat.f_bavail.saturating_mul(stat.f_frsize)))
}

/// The I/O scheduler and write cache of the disk under `data_dir` (its whole disk, for a
/// partition): none when the data directory is not on a block device.
pub fn device_items(data_dir: &Path) -> Vec<Item> {
    let Some(mount) = mount_of(data_dir) else {
        return Vec::new();
    };
    let Some(queue) = queue_dir(&mount.device) else {
        return vec![Item::ok(
            "block device",
            format!(
                "{} ({}) has no block device queue in sysfs: scheduler and write cache \
                 not checked",
                mount.source, mount.device
            ),
        )];
    };
    vec![scheduler(&queue), write_cache(&queue)]
}

/// `/sys/dev/block/MAJ:MIN/queue`, or the parent disk's queue for a partition.
fn queue_dir(device: &str) -> Option<PathBuf> {
    let block = Path::new("/sys/dev/block").join(device);
    let resolved = block.canonicalize().ok()?;
    [resolved.join("queue"), resolved.parent()?.join("queue")]
        .into_iter()
        .find(|queue| queue.join("scheduler").exists())
}

fn scheduler(queue: &Path) -> Item {
    const NAME: &str = "I/O scheduler";
    let Some(setting) = read_trimmed(queue.join("scheduler")) else {
        return Item::warn(NAME, "cannot read the queue's scheduler", "");
    };
    let rotational = read_trimmed(queue.join("rotational")).is_some_and(|value| value == "1");
    let chosen = super::system::selected_choice(&setting).unwrap_or(&setting);
    let found = format!(
        "{chosen} ({})",
        if rotational {
            "rotational"
        } else {
            "solid-state"
        }
    );
    // A solid-state disk wants no reordering: `none` (or `mq-deadline`, which costs
    // little); `bfq` and `kyber` add CPU per request and latency to sequential writers.
    let good = rotational || matches!(chosen, "none" | "mq-deadline" | "noop");
    Item::judged(
        NAME,
        good,
        Status::Warn,
        found,
        "for SSD/NVMe: `echo none > /sys/block/DEV/queue/scheduler`",
    )
}

fn write_cache(queue: &Path) -> Item {
    const NAME: &str = "disk write cache";
    let Some(mode) = read_trimmed(queue.join("write_cache")) else {
        return Item::warn(NAME, "cannot read the queue's write_cache", "");
    };
    match mode.as_str() {
        "write back" => Item::ok(
            NAME,
            "write back: the disk has a volatile cache, so fdatasync sends a cache flush \
             (the durability contract holds; the flush is what acks=all pays)",
        ),
        "write through" => Item::ok(
            NAME,
            "write through: no volatile cache (or a power-loss-protected one): fdatasync is \
             as cheap as the write",
        ),
        other => Item::warn(NAME, format!("unrecognised: {other}"), ""),
    }
}
