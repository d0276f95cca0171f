//! The data directory's owner lock: one process at a time opens a data directory.
//!
//! Two brokers on one directory would both recover the live partitions and write over each
//! other's tails, losing acknowledged records without a word to any client. So the first
//! thing done to a data directory is taking an exclusive `flock(2)` on
//! `{data_dir}/ringlog.lock`, held until the [`DataDirLock`] is dropped, which happens
//! when the engine is dropped or the process ends.
//!
//! Why `flock` and a file:
//! - The kernel drops the lock when the last descriptor of the open file goes, on every
//!   exit path (a clean stop, a panic, `kill -9`): a dead holder never blocks the next
//!   start, and there is no stale-PID guessing.
//! - `flock` locks belong to the open file description, so a second open in the same
//!   process conflicts too (unlike POSIX record locks, which a process shares with itself
//!   and loses when it closes any descriptor of the file).
//!
//! The file holds the holder's PID as decimal text and a newline, written after the lock
//! is taken; it is only read to name the holder in the error. Its content is never
//! trusted: a file emptied or changed by hand only makes the error say "PID unknown".

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::TopicError;

/// The name of the lock file in a data directory.
pub const LOCK_FILE_NAME: &str = "ringlog.lock";
/// More than any PID's decimal text and newline; a longer file is not ours to parse.
const LOCK_FILE_BYTES_MAX: u64 = 32;

/// An exclusive hold on a data directory, released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    // Held only for its descriptor: the lock lives as long as it is open.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (which must exist) without waiting, and records this
    /// process's PID in it. Fails with [`TopicError::DataDirLocked`] if another open
    /// holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, TopicError> {
        let path = data_dir.join(LOCK_FILE_NAME);
        let io_error = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| TopicError::Io { op, path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io_error("opening the data directory's lock file", &path))?;
        // SAFETY: flock only reads the descriptor number, which `file` keeps open for the
        // duration of the call.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(TopicError::DataDirLocked {
                    path: data_dir.to_owned(),
                    holder_pid: read_holder_pid(&mut file),
                });
            }
            return Err(io_error("locking", &path)(error));
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(io_error("writing the PID to", &path))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID a holder wrote, if the file holds one (it may not yet: the holder writes it
/// just after taking the lock).
fn read_holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(LOCK_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .ok()?;
    text.trim_end().parse().ok().filter(|&pid| pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        let error = DataDirLock::acquire(dir.path()).unwrap_err();
        match &error {
            TopicError::DataDirLocked { path, holder_pid } => {
                assert_eq!(path, dir.path());
                assert_eq!(*holder_pid, Some(std::process::id()));
            }
            other => panic!("expected DataDirLocked, got {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("PID {}", std::process::id())),
            "{message}"
        );
    }

    #[test]
    fn dropping_the_holder_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDirLock::acquire(dir.path()).unwrap());
        let again = DataDirLock::acquire(dir.path()).unwrap();
        assert!(again.path().exists());
    }

    #[test]
    fn a_pid_that_is_not_one_is_reported_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDirLock::acquire(dir.path()).unwrap();
        std::fs::write(dir.path().join(LOCK_FILE_NAME), "not a pid\n").unwrap();
        let error = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                TopicError::DataDirLocked {
                    holder_pid: None,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("PID unknown"), "{error}");
    }
}
