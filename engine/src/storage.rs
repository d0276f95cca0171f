//! Where a partition's bytes live: the interface the log is written against, and the real
//! backend behind it.
//!
//! [`DiskStorage`] keeps files on a real file system through the io_uring runtime. The
//! fault-injecting backend (`storage::fault`, for tests) implements the same traits in
//! memory, keeping written and durable bytes apart so crash tests can drop what was never
//! fsynced. The log never learns which one it runs on.
//!
//! Contract of every backend: `write_at` with `sync_after` set makes the written bytes
//! durable before it returns `Ok`; bytes written without a later successful `sync_data`
//! may be lost (or torn) by a crash; a file or a rename is durable only after `sync_dir`
//! of its directory.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;

use crate::rt::{self, IoBuf, PooledBuf};

#[cfg(any(test, feature = "fuzzing"))]
pub mod fault;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open for writing too (otherwise read-only).
    pub write: bool,
    /// Create the file if it is missing.
    pub create: bool,
    /// Bypass the page cache (O_DIRECT): writes must be block-aligned in offset, length and
    /// memory.
    pub direct: bool,
}

impl OpenFlags {
    /// Read-only, existing file.
    pub const READ: OpenFlags = OpenFlags {
        write: false,
        create: false,
        direct: false,
    };
    /// Read-write, created if missing.
    pub const WRITE: OpenFlags = OpenFlags {
        write: true,
        create: true,
        direct: false,
    };
}

/// An fdatasync in flight, from [`StorageFile::write_then_sync`].
pub type PendingSync = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// A storage backend: files in directories.
#[allow(
    async_fn_in_trait,
    reason = "the runtime is single-threaded: futures need not be Send"
)]
pub trait Storage: Clone + 'static {
    type File: StorageFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<Self::File>;
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir` (not recursive). Runs at startup only.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// An open file of a [`Storage`].
#[allow(
    async_fn_in_trait,
    reason = "the runtime is single-threaded: futures need not be Send"
)]
pub trait StorageFile: Clone + 'static {
    /// The file's size in bytes.
    async fn size(&self) -> io::Result<u64>;
    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Reads from `offset` into `buf`'s spare capacity, appending what it read (fewer bytes
    /// only at the end of the file): a reused buffer, for scans that read a lot.
    async fn read_append(&self, offset: u64, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Reads from `offset` into `buf` until its capacity is full (fewer bytes only at the
    /// end of the file); returns how many bytes it read. On an O_DIRECT file `offset` and
    /// the capacity must be block-aligned (pooled buffers are).
    async fn read_aligned(&self, offset: u64, buf: PooledBuf) -> (io::Result<usize>, PooledBuf);
    /// Writes all of `bufs`, in order, at `offset`; with `sync_after`, an fdatasync follows
    /// (linked in the same submission where the backend can) and `Ok` means durable.
    async fn write_at<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
        sync_after: bool,
    ) -> (io::Result<()>, Vec<B>);
    /// Writes all of `bufs` at `offset` with an fdatasync linked after it (one submission
    /// where the backend can), and returns once the WRITE has completed, with the sync
    /// still in flight: the caller may start its next write meanwhile, and must await the
    /// sync before it calls the bytes durable.
    async fn write_then_sync<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> (io::Result<()>, Vec<B>, PendingSync);
    /// fdatasync.
    async fn sync_data(&self) -> io::Result<()>;
    /// Reserves `len` bytes from `offset` (fallocate mode 0: the size grows, the new range
    /// reads as zeros).
    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Truncates (or extends with zeros) to `len` bytes.
    async fn set_len(&self, len: u64) -> io::Result<()>;
    /// The runtime file behind this one, for zero-copy sends; `None` for in-memory backends.
    fn runtime_file(&self) -> Option<&rt::File>;
}

/// Name of the file [`probe_direct_io`] writes and removes.
const DIRECT_IO_PROBE_FILE: &str = ".ringlog-direct-io-probe";

/// Whether files in `dir` can be written with O_DIRECT: creates a probe file there with
/// O_DIRECT, writes one aligned block, and removes it. ramfs, for one, refuses the open
/// (EINVAL); tmpfs accepts it since Linux 6.6. Runs once at startup, with plain system
/// calls, in a directory the caller owns.
pub fn probe_direct_io(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(DIRECT_IO_PROBE_FILE);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .and_then(|mut file| {
            let mut block = rt::AlignedBuf::with_capacity(crate::limits::BUF_ALIGN_BYTES);
            block.set_len(crate::limits::BUF_ALIGN_BYTES);
            file.write_all(rt::initialized(&block))
        });
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

/// Whether an error of [`probe_direct_io`] means the file system refuses O_DIRECT (EINVAL,
/// as ramfs and older tmpfs answer the open, or EOPNOTSUPP), rather than that the probe
/// could not be written at all: a full disk (ENOSPC), a failing one (EIO) or a read-only
/// one says nothing about O_DIRECT, and must not turn a disk's topics to buffered I/O.
pub fn refuses_direct_io(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

/// Files on the local file system, through the io_uring runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStorage;

/// A file of [`DiskStorage`].
#[derive(Debug, Clone)]
pub struct DiskFile {
    file: rt::File,
}

impl Storage for DiskStorage {
    type File = DiskFile;

    async fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<DiskFile> {
        let mut options = rt::OpenOptions::new();
        options
            .read(true)
            .write(flags.write)
            .create(flags.create)
            .direct(flags.direct);
        Ok(DiskFile {
            file: options.open(path).await?,
        })
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        rt::remove_file(path).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        rt::rename(from, to).await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        rt::create_dir_all(dir).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        rt::sync_dir(dir).await
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }
}

impl StorageFile for DiskFile {
    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata().await?.len)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let chunk = Vec::with_capacity(len - out.len());
            let (read, chunk) = self.file.read_at(chunk, offset + out.len() as u64).await;
            if read? == 0 {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn read_append(&self, offset: u64, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let start = buf.len();
        let mut buf = buf;
        while buf.len() < buf.capacity() {
            let (len, capacity) = (buf.len(), buf.capacity());
            let at = offset + (len - start) as u64;
            let (read, slice) = self.file.read_at(buf.slice(len..capacity), at).await;
            buf = slice.into_inner();
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => return (Err(error), buf),
            }
        }
        let appended = buf.len() - start;
        (Ok(appended), buf)
    }

    async fn read_aligned(&self, offset: u64, buf: PooledBuf) -> (io::Result<usize>, PooledBuf) {
        let mut buf = buf;
        buf.clear();
        while buf.bytes_init() < buf.capacity() {
            let (len, capacity) = (buf.bytes_init(), buf.capacity());
            let (read, slice) = self
                .file
                .read_at(buf.slice(len..capacity), offset + len as u64)
                .await;
            buf = slice.into_inner();
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => return (Err(error), buf),
            }
        }
        let read = buf.bytes_init();
        (Ok(read), buf)
    }

    async fn write_at<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
        sync_after: bool,
    ) -> (io::Result<()>, Vec<B>) {
        let total: usize = bufs.iter().map(IoBuf::bytes_init).sum();
        let ((written, bufs), synced) = if sync_after {
            self.file.writev_at_and_sync_data(bufs, offset).await
        } else {
            (self.file.writev_at(bufs, offset).await, Ok(()))
        };
        let written = match written {
            Ok(written) => written,
            Err(error) => return (Err(error), bufs),
        };
        if written == total {
            return (synced, bufs);
        }
        // A short write broke the chain (the sync was cancelled): finish buffer by buffer,
        // then sync on its own.
        let (finished, bufs) = self.write_rest(bufs, offset, written).await;
        if let Err(error) = finished {
            return (Err(error), bufs);
        }
        let synced = if sync_after {
            self.file.sync_data().await
        } else {
            Ok(())
        };
        (synced, bufs)
    }

    async fn write_then_sync<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> (io::Result<()>, Vec<B>, PendingSync) {
        let total: usize = bufs.iter().map(IoBuf::bytes_init).sum();
        let (write, sync) = self.file.writev_at_then_sync_data(bufs, offset);
        let (written, bufs) = write.await;
        match written {
            Ok(written) if written == total => (Ok(()), bufs, Box::pin(sync)),
            Ok(written) => {
                // A short write broke the chain (the kernel cancels the sync): finish the
                // write, then sync on its own.
                drop(sync);
                let (finished, bufs) = self.write_rest(bufs, offset, written).await;
                let file = self.file.clone();
                (
                    finished,
                    bufs,
                    Box::pin(async move { file.sync_data().await }),
                )
            }
            Err(error) => (Err(error), bufs, Box::pin(sync)),
        }
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data().await
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.file.allocate(offset, len, 0).await
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn runtime_file(&self) -> Option<&rt::File> {
        Some(&self.file)
    }
}

impl DiskFile {
    /// Writes what a short vectored write left: the bytes of `bufs` after the first
    /// `written`, at their places after `offset`.
    async fn write_rest<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
        written: usize,
    ) -> (io::Result<()>, Vec<B>) {
        let mut returned = Vec::with_capacity(bufs.len());
        let mut position = 0usize;
        let mut result = Ok(());
        for buf in bufs {
            let len = buf.bytes_init();
            let skip = written.saturating_sub(position).min(len);
            if result.is_err() || skip == len {
                position += len;
                returned.push(buf);
                continue;
            }
            let at = offset + (position + skip) as u64;
            let (outcome, slice) = self.file.write_all_at(buf.slice(skip..len), at).await;
            result = outcome;
            position += len;
            returned.push(slice.into_inner());
        }
        (result, returned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_einval_and_eopnotsupp_from_the_probe_mean_o_direct_is_refused() {
        let refused = |errno| refuses_direct_io(&io::Error::from_raw_os_error(errno));
        assert!(refused(libc::EINVAL) && refused(libc::EOPNOTSUPP));
        for errno in [
            libc::ENOSPC,
            libc::EIO,
            libc::EROFS,
            libc::EDQUOT,
            libc::EACCES,
        ] {
            assert!(!refused(errno), "errno {errno} says nothing about O_DIRECT");
        }
        let dir = tempfile::tempdir().unwrap();
        probe_direct_io(dir.path()).unwrap();
    }
}
