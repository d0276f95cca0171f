//! `ringlog-tune check`: is this node ready to run ringlog? One line per item, `ok`, `warn`
//! or `fail`, with what was found and, when it is not `ok`, the fix.
//!
//! Everything is read from the kernel's own interfaces (`uname`, `/proc/sys`, sysfs,
//! `getrlimit`, `statfs`) or tried for real on the data directory (a ring set up, an
//! O_DIRECT write, an fallocate), never guessed from names. An item that cannot be read
//! (sysfs absent in a container, say) is a `warn` saying so, never a `fail`: only what is
//! known to stop ringlog or lose its speed by an order of magnitude fails.

use std::fmt;
use std::path::{Path, PathBuf};

use ringlog_engine::storage::{probe_direct_io, refuses_direct_io};

pub(crate) mod disk;
mod system;

/// io_uring features ringlog's runtime uses need this kernel (see the runtime's driver).
const KERNEL_MIN: (u32, u32) = (5, 19);
/// Free space below this fails: a 1 GiB segment and its preallocation must fit.
const FREE_BYTES_FAIL: u64 = 2 << 30;
/// Free space below this warns.
const FREE_BYTES_WARN: u64 = 20 << 30;
/// Open files below this warn: each partition keeps its segment and index files open and
/// each connection is a descriptor (Kafka asks for 100,000 or more).
const OPEN_FILES_WARN: u64 = 65_536;
/// Open files below this fail: not even a few hundred partitions and connections fit.
const OPEN_FILES_FAIL: u64 = 4_096;
/// Locked memory below this warns on kernels before 5.12, which charge ring memory to it.
const MEMLOCK_WARN_BYTES: u64 = 64 << 20;

/// How an item stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: the check's lines align the status with `{:<4}`.
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One line of the check.
#[derive(Clone, Debug)]
pub struct Item {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do about it (empty when `ok`).
    pub fix: String,
}

impl Item {
    fn ok(name: &'static str, found: impl Into<String>) -> Item {
        Item {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: String::new(),
        }
    }

    fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Item {
        Item {
            name,
            status: Status::Warn,
            found: found.into(),
            fix: fix.into(),
        }
    }

    fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Item {
        Item {
            name,
            status: Status::Fail,
            found: found.into(),
            fix: fix.into(),
        }
    }

    /// `ok` when `good`, else `status` with the fix.
    fn judged(name: &'static str, good: bool, status: Status, found: String, fix: &str) -> Item {
        if good {
            Item::ok(name, found)
        } else {
            Item {
                name,
                status,
                found,
                fix: fix.into(),
            }
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {:<24} {}", self.status, self.name, self.found)?;
        if !self.fix.is_empty() {
            write!(f, "\n      {:<24} fix: {}", "", self.fix)?;
        }
        Ok(())
    }
}

/// Every item, for the data directory `data_dir` (created if missing, as `ringlog serve`
/// would; the probe files it writes there are removed).
pub fn run(data_dir: &Path) -> Vec<Item> {
    let mut items = vec![system::kernel(), system::io_uring(), system::memlock()];
    items.extend(data_dir_items(data_dir));
    items.extend([
        system::open_files(),
        system::cores(),
        system::cpu_governor(),
        system::transparent_huge_pages(),
        system::dirty_settings(),
    ]);
    items
}

/// The data directory: file system, O_DIRECT, fallocate, free space, and its disk's
/// scheduler and write cache.
fn data_dir_items(data_dir: &Path) -> Vec<Item> {
    if let Err(error) = std::fs::create_dir_all(data_dir) {
        return vec![Item::fail(
            "data directory",
            format!("{}: cannot be created: {error}", data_dir.display()),
            "choose a writable directory on a local disk (--data-dir)",
        )];
    }
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let mut items = vec![disk::file_system(&data_dir), direct_io(&data_dir)];
    items.push(disk::fallocate(&data_dir));
    items.push(free_space(&data_dir));
    items.extend(disk::device_items(&data_dir));
    items
}

fn direct_io(data_dir: &Path) -> Item {
    const NAME: &str = "O_DIRECT";
    match probe_direct_io(data_dir) {
        Ok(()) => Item::ok(NAME, "an aligned O_DIRECT write succeeded"),
        Err(error) if refuses_direct_io(&error) => Item::warn(
            NAME,
            format!("refused: {error}"),
            "ringlog falls back to buffered I/O (the page cache); for direct I/O and its \
             batch cache, put the data directory on a disk file system (ext4, xfs)",
        ),
        Err(error) => Item::fail(
            NAME,
            format!("the probe write failed: {error}"),
            "check the directory's permissions and the device",
        ),
    }
}

fn free_space(data_dir: &Path) -> Item {
    const NAME: &str = "free space";
    match disk::free_bytes(data_dir) {
        Ok(None) => Item::warn(
            NAME,
            "the file system reports no size (ramfs: memory without a limit)",
            "put the data directory on a disk file system (ext4, xfs)",
        ),
        Ok(Some(free)) => {
            let found = format!("{} free", human_bytes(free));
            if free < FREE_BYTES_FAIL {
                Item::fail(
                    NAME,
                    found,
                    "at least 2 GiB: a 1 GiB segment and its preallocation must fit",
                )
            } else {
                Item::judged(
                    NAME,
                    free >= FREE_BYTES_WARN,
                    Status::Warn,
                    found,
                    "under 20 GiB: size retention.bytes × partitions to fit, or use a \
                     larger disk",
                )
            }
        }
        Err(error) => Item::warn(NAME, format!("statvfs failed: {error}"), "check the path"),
    }
}

/// `bytes` with a binary unit: `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Reads a small text file from /proc or sysfs, trimmed.
fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path.as_ref())
        .ok()
        .map(|text| text.trim().to_owned())
}

/// Parses `5.19.0-…` into (5, 19).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The path's mount, from /proc/self/mountinfo: the longest mount point that is a prefix
/// of `path`, with its file system type and source device.
fn mount_of(path: &Path) -> Option<Mount> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(Mount::parse)
        .filter(|mount| path.starts_with(&mount.point))
        .max_by_key(|mount| mount.point.as_os_str().len())
}

/// One line of /proc/self/mountinfo, the fields the check needs.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    /// `major:minor` of the device.
    device: String,
    fs_type: String,
    source: String,
}

impl Mount {
    /// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let device = (*fields.get(2)?).to_owned();
        let point = unescape_mount_path(fields.get(4)?);
        let mut after = after.split(' ');
        let fs_type = after.next()?.to_owned();
        let source = after.next()?.to_owned();
        Some(Mount {
            point: PathBuf::from(point),
            device,
            fs_type,
            source,
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(index) = rest.find('\\') {
        out.push_str(&rest[..index]);
        let code = rest.get(index + 1..index + 4);
        if let Some(byte) = code.and_then(|code| u8::from_str_radix(code, 8).ok()) {
            out.push(char::from(byte));
            rest = &rest[index + 4..];
        } else {
            out.push('\\');
            rest = &rest[index + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("5.19.17"), Some((5, 19)));
        assert_eq!(parse_kernel_version("4.9+"), Some((4, 9)));
        assert_eq!(parse_kernel_version("linux"), None);
        assert!((5, 4) < KERNEL_MIN && (6, 1) >= KERNEL_MIN && (5, 19) >= KERNEL_MIN);
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let line = "36 35 259:2 / /mnt/my\\040disk rw,noatime shared:1 - ext4 /dev/nvme0n1p2 rw";
        let mount = Mount::parse(line).unwrap();
        assert_eq!(mount.point, PathBuf::from("/mnt/my disk"));
        assert_eq!(mount.device, "259:2");
        assert_eq!(mount.fs_type, "ext4");
        assert_eq!(mount.source, "/dev/nvme0n1p2");
        assert_eq!(Mount::parse("garbage"), None);
    }

    #[test]
    fn the_longest_mount_prefix_wins_for_a_real_path() {
        let mount = mount_of(Path::new("/proc/self")).unwrap();
        assert_eq!(mount.fs_type, "proc");
    }

    #[test]
    fn bytes_print_with_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(1536 << 10), "1.5 MiB");
    }

    #[test]
    fn a_data_directory_that_cannot_be_created_fails_and_a_writable_one_is_checked() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let items = data_dir_items(&file.path().join("below-a-file"));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].status, Status::Fail);
        let dir = tempfile::tempdir().unwrap();
        let items = data_dir_items(dir.path());
        let names: Vec<_> = items.iter().map(|item| item.name).collect();
        for name in ["file system", "O_DIRECT", "fallocate", "free space"] {
            assert!(names.contains(&name), "{names:?}");
        }
        let fallocate = items.iter().find(|item| item.name == "fallocate").unwrap();
        assert_eq!(fallocate.status, Status::Ok, "{fallocate}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probes removed"
        );
    }
}
