//! Operations on paths through the ring: rename, remove, create a directory, and the
//! directory fsync that makes such changes (and new files) durable.
//!
//! A file created, renamed or removed is durable only after its directory is fsynced;
//! [`sync_dir`] is that step.
//!
//! [`free_space_bytes`] is the exception that does not go through the ring: io_uring has no
//! statfs operation, and statvfs only reads counters the kernel keeps in memory.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use io_uring::{opcode, types};

use super::driver::Completion;
use super::error::cqe_result;
use super::fs::OpenOptions;
use super::op::{Operation, Prepared};

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))
}

/// Paths an operation holds until the kernel is done with them.
struct Paths {
    first: CString,
    second: Option<CString>,
}

impl Operation for Paths {
    type Output = io::Result<()>;
    fn complete(self, completion: Completion) -> io::Result<()> {
        cqe_result(completion.result).map(drop)
    }
}

/// Renames `from` to `to`, replacing `to` atomically if it exists.
pub async fn rename(from: &Path, to: &Path) -> io::Result<()> {
    let paths = Paths {
        first: c_path(from)?,
        second: Some(c_path(to)?),
    };
    Prepared::new(paths, |paths| {
        let to = paths
            .second
            .as_ref()
            .map_or(std::ptr::null(), |to| to.as_ptr());
        let cwd = types::Fd(libc::AT_FDCWD);
        opcode::RenameAt::new(cwd, paths.first.as_ptr(), cwd, to).build()
    })
    .submit()
    .await
}

/// Removes the file at `path`.
///
/// The future holds the path the kernel reads, in an operation that belongs to the runtime
/// that submitted it, so it cannot move to another thread:
///
/// ```compile_fail,E0277
/// fn require_send<T: Send>(_: T) {}
/// require_send(ringlog_rt::remove_file(std::path::Path::new("/tmp/x")));
/// ```
pub async fn remove_file(path: &Path) -> io::Result<()> {
    let paths = Paths {
        first: c_path(path)?,
        second: None,
    };
    Prepared::new(paths, |paths| {
        opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), paths.first.as_ptr()).build()
    })
    .submit()
    .await
}

/// Creates the directory `path` (mode 0o755); its parent must exist.
pub async fn create_dir(path: &Path) -> io::Result<()> {
    let paths = Paths {
        first: c_path(path)?,
        second: None,
    };
    Prepared::new(paths, |paths| {
        opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), paths.first.as_ptr())
            .mode(0o755)
            .build()
    })
    .submit()
    .await
}

/// Creates `path` and any missing parents.
pub async fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(path);
    while let Some(dir) = current {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            break;
        }
        missing.push(dir.to_path_buf());
        current = dir.parent();
    }
    for dir in missing.iter().rev() {
        match create_dir(dir).await {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Fsyncs the directory `dir`, making the creation, renaming and removal of its entries
/// durable.
pub async fn sync_dir(dir: &Path) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.read(true).directory(true);
    let directory = options.open(dir).await?;
    directory.sync_all().await?;
    directory.close().await
}

/// Bytes an unprivileged process may still write on the file system holding `path`
/// (statvfs: available blocks times the fragment size).
pub fn free_space_bytes(path: &Path) -> io::Result<u64> {
    let path = c_path(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is
    // writable memory of the size and alignment of `statvfs`, which the call fills.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised every field of `stat`.
    let stat = unsafe { stat.assume_init() };
    // Both fields are u64 on the 64-bit Linux targets ringlog runs on.
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}
