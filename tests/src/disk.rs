//! Small file systems a test makes and breaks (root only): a size-limited tmpfs, and an
//! ext4 on a loop device whose writes can be made to fail with EIO, whose file system can
//! be shut down as if its device vanished, and which can be repaired and mounted again.
//! Shared by the disk-fault tests of one node and the cluster's.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `program args` to its end: `Err` with its status and stderr if it failed.
pub fn run(program: &str, args: &[&OsStr]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
        Ok(output) => Err(format!(
            "{program} {args:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Err(format!("{program}: {error}")),
    }
}

/// Whether `program` is an executable file in one of the folders of `PATH`.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the mount at `point` is read-only, from /proc/self/mounts.
pub fn is_read_only(point: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let point = point.to_string_lossy();
    mounts.lines().rev().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1] == point && fields[3].split(',').any(|o| o == "ro")
    })
}

/// A tmpfs of a given size on a temporary directory, unmounted on drop.
pub struct TmpFs {
    dir: tempfile::TempDir,
}

impl TmpFs {
    /// Mounts one on a new directory under `parent`, or says why not and returns `None`.
    pub fn mount(parent: &Path, size_bytes: u64) -> Option<TmpFs> {
        if !is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir_in(parent).expect("a directory for the tmpfs");
        let size = format!("size={size_bytes}");
        let args = [
            OsStr::new("-t"),
            OsStr::new("tmpfs"),
            OsStr::new("-o"),
            OsStr::new(&size),
            OsStr::new("ringlog-full"),
            dir.path().as_os_str(),
        ];
        match run("mount", &args) {
            Ok(_) => Some(TmpFs { dir }),
            Err(error) => {
                eprintln!("SKIPPED: cannot mount a tmpfs: {error}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the file system a new size (frees space when larger).
    pub fn resize(&self, size_bytes: u64) {
        let options = format!("remount,size={size_bytes}");
        let args = [
            OsStr::new("-o"),
            OsStr::new(&options),
            self.dir.path().as_os_str(),
        ];
        run("mount", &args).expect("resizing the tmpfs");
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

/// Unmounts `point`, lazily if it is still busy (a test that panicked with files open).
pub fn unmount(point: &Path) {
    if run("umount", &[point.as_os_str()]).is_err() {
        let _ = run("umount", &[OsStr::new("-l"), point.as_os_str()]);
    }
}

/// An ext4 file system on a loop device over an image file, mounted on a temporary
/// directory. Making the image file immutable makes every write of the loop device fail
/// with EIO (the loop driver gets EPERM from the backing file and reports an I/O error);
/// clearing the flag heals it. Dropping it unmounts, heals and detaches everything.
pub struct Ext4 {
    work: tempfile::TempDir,
    device: String,
    mounted: bool,
}

impl Ext4 {
    /// Creates, attaches and mounts one of `size_bytes` (its image and mount point in a new
    /// directory under `parent`), or says why not and returns `None`.
    pub fn create(parent: &Path, size_bytes: u64) -> Option<Ext4> {
        if !is_root() {
            eprintln!("SKIPPED: a loop-mounted ext4 image needs root");
            return None;
        }
        let tools = [
            "mkfs.ext4",
            "losetup",
            "e2fsck",
            "chattr",
            "mount",
            "umount",
        ];
        if let Some(missing) = tools.into_iter().find(|tool| !on_path(tool)) {
            eprintln!("SKIPPED: {missing} is not installed");
            return None;
        }
        let work = tempfile::tempdir_in(parent).expect("a directory for the ext4 image");
        let image = work.path().join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(size_bytes))
            .expect("the ext4 image file");
        std::fs::create_dir(work.path().join("mnt")).expect("the mount point");
        let attached = run(
            "mkfs.ext4",
            &[OsStr::new("-q"), OsStr::new("-F"), image.as_os_str()],
        )
        .and_then(|_| {
            let args = [
                OsStr::new("--find"),
                OsStr::new("--show"),
                image.as_os_str(),
            ];
            run("losetup", &args)
        });
        let device = match attached {
            Ok(device) => device,
            Err(error) => {
                eprintln!("SKIPPED: cannot make a loop-mounted ext4 image: {error}");
                return None;
            }
        };
        let mut ext4 = Ext4 {
            work,
            device,
            mounted: false,
        };
        if let Err(error) = ext4.try_mount() {
            eprintln!("SKIPPED: cannot mount the ext4 image: {error}");
            return None;
        }
        Some(ext4)
    }

    pub fn image(&self) -> PathBuf {
        self.work.path().join("ext4.img")
    }

    /// The mount point.
    pub fn path(&self) -> PathBuf {
        self.work.path().join("mnt")
    }

    pub fn try_mount(&mut self) -> Result<(), String> {
        let point = self.path();
        run("mount", &[OsStr::new(&self.device), point.as_os_str()])?;
        self.mounted = true;
        Ok(())
    }

    /// Every write of the device fails with EIO from now on.
    pub fn fail_writes(&self) {
        run("chattr", &[OsStr::new("+i"), self.image().as_os_str()]).expect("failing the device");
    }

    /// The device takes writes again.
    pub fn heal(&self) {
        run("chattr", &[OsStr::new("-i"), self.image().as_os_str()]).expect("healing the device");
    }

    /// Unmounts, checks and repairs the file system (replaying its journal), and mounts it
    /// again read-write.
    pub fn remount_repaired(&mut self) {
        run("umount", &[self.path().as_os_str()]).expect("unmounting the ext4");
        self.mounted = false;
        // e2fsck exits 1 or 2 when it corrected something: not a failure here.
        let checked = Command::new("e2fsck")
            .args([OsStr::new("-f"), OsStr::new("-y"), OsStr::new(&self.device)])
            .output()
            .expect("e2fsck runs");
        assert!(
            matches!(checked.status.code(), Some(0..=2)),
            "e2fsck: {}",
            String::from_utf8_lossy(&checked.stdout)
        );
        self.try_mount().expect("mounting the ext4 again");
    }

    /// Shuts the file system down as if its device vanished (`EXT4_IOC_SHUTDOWN` without
    /// flushing the journal, like a power cut): from now on every read, write and sync on
    /// it fails with EIO, page cache or not, until it is unmounted and mounted again.
    pub fn shut_down(&self) {
        /// `_IOR('X', 125, __u32)`, from linux/fs/ext4/ext4.h.
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
        let dir = std::fs::File::open(self.path()).expect("the mount point opens");
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the descriptor is open for the whole call, and the ioctl reads one u32
        // from the pointer, which points at a live local.
        let result = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                EXT4_IOC_SHUTDOWN,
                &raw const flags,
            )
        };
        assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
    }

    /// Unmounts and mounts the file system again (replaying its journal).
    pub fn remount_fresh(&mut self) {
        run("umount", &[self.path().as_os_str()]).expect("unmounting the ext4");
        self.mounted = false;
        self.try_mount().expect("mounting the ext4 again");
    }

    /// `mount -o remount,<options>`.
    pub fn remount(&self, options: &str) -> Result<String, String> {
        let options = format!("remount,{options}");
        let point = self.path();
        run(
            "mount",
            &[OsStr::new("-o"), OsStr::new(&options), point.as_os_str()],
        )
    }

    pub fn is_read_only(&self) -> bool {
        is_read_only(&self.path())
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted {
            unmount(&self.path());
        }
        let _ = run("chattr", &[OsStr::new("-i"), self.image().as_os_str()]);
        let _ = run("losetup", &[OsStr::new("-d"), OsStr::new(&self.device)]);
    }
}
