//! Files through the ring: open, positional and vectored reads and writes, fsync and
//! fdatasync (alone or linked after a write), fallocate, statx and close.
//!
//! Every method submits at once and returns a future of the result; buffers are taken by
//! value and handed back with it. Writes may be short (as `pwrite` may be);
//! [`File::write_all_at`] loops until the whole buffer is written.

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use io_uring::{opcode, types};

use super::buf::{IoBuf, IoBufMut};
use super::driver::{Completion, ResultKind};
use super::error::cqe_result;
use super::fd::SharedFd;
use super::op::{link, wait_for_room, Link, Op, Operation, Prepared};
use super::transfer::{
    len_u32, transfer_all, ReadInto, ReadVectored, Unit, Vectored, WriteFrom, WriteVectored,
};

/// Offset meaning "the current file position" (for pipes, sockets, eventfds).
const OFFSET_CURRENT: u64 = u64::MAX;

/// How to open a file; mirrors `std::fs::OpenOptions`, plus O_DIRECT.
#[derive(Debug, Clone)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one flag per open(2) option, as in std"
)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    create_new: bool,
    truncate: bool,
    append: bool,
    direct: bool,
    directory: bool,
    mode: libc::mode_t,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions::new()
    }
}

impl OpenOptions {
    /// Nothing set; at least `read` or `write` must be.
    pub fn new() -> OpenOptions {
        OpenOptions {
            read: false,
            write: false,
            create: false,
            create_new: false,
            truncate: false,
            append: false,
            direct: false,
            directory: false,
            mode: 0o644,
        }
    }
    pub fn read(&mut self, read: bool) -> &mut Self {
        self.read = read;
        self
    }
    pub fn write(&mut self, write: bool) -> &mut Self {
        self.write = write;
        self
    }
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.create = create;
        self
    }
    pub fn create_new(&mut self, create_new: bool) -> &mut Self {
        self.create_new = create_new;
        self
    }
    pub fn truncate(&mut self, truncate: bool) -> &mut Self {
        self.truncate = truncate;
        self
    }
    pub fn append(&mut self, append: bool) -> &mut Self {
        self.append = append;
        self
    }
    /// O_DIRECT: bypass the page cache. Buffers, offsets and lengths must then be aligned
    /// to the device's logical block size (pooled buffers are page-aligned).
    pub fn direct(&mut self, direct: bool) -> &mut Self {
        self.direct = direct;
        self
    }
    /// O_DIRECTORY: open a directory (read-only), to fsync it.
    pub fn directory(&mut self, directory: bool) -> &mut Self {
        self.directory = directory;
        self
    }
    /// Permission bits of a created file (default 0o644).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    fn flags(&self) -> io::Result<i32> {
        let mut flags = match (self.read, self.write || self.append) {
            (true, true) => libc::O_RDWR,
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (false, false) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        flags |= libc::O_CLOEXEC;
        if self.create_new {
            flags |= libc::O_CREAT | libc::O_EXCL;
        } else if self.create {
            flags |= libc::O_CREAT;
        }
        if self.truncate {
            flags |= libc::O_TRUNC;
        }
        if self.append {
            flags |= libc::O_APPEND;
        }
        if self.direct {
            flags |= libc::O_DIRECT;
        }
        if self.directory {
            flags |= libc::O_DIRECTORY;
        }
        Ok(flags)
    }

    /// Opens `path` through the ring.
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let fd = self.prepare_open(path.as_ref())?.submit().await?;
        Ok(File {
            fd: SharedFd::new(fd),
        })
    }

    pub(crate) fn prepare_open(&self, path: &Path) -> io::Result<Prepared<OpenAt>> {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let flags = self.flags()?;
        let mode = self.mode;
        Ok(Prepared::new(OpenAt { path }, |data| {
            opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), data.path.as_ptr())
                .flags(flags)
                .mode(mode)
                .build()
        }))
    }
}

pub(crate) struct OpenAt {
    path: CString,
}

impl Operation for OpenAt {
    type Output = io::Result<OwnedFd>;
    const RESULT: ResultKind = ResultKind::Fd;
    fn complete(self, completion: Completion) -> io::Result<OwnedFd> {
        let raw = cqe_result(completion.result)?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
    }
}

/// File metadata from statx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Size in bytes.
    pub len: u64,
    /// Bytes allocated on disk (512-byte blocks × 512).
    pub allocated_bytes: u64,
    /// The file system's preferred I/O size.
    pub block_size_bytes: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u16,
}

struct Statx {
    fd: SharedFd,
    statx: Box<libc::statx>,
}

impl Operation for Statx {
    type Output = io::Result<Metadata>;
    fn complete(self, completion: Completion) -> io::Result<Metadata> {
        drop(self.fd);
        cqe_result(completion.result)?;
        let statx = &self.statx;
        Ok(Metadata {
            len: statx.stx_size,
            allocated_bytes: statx.stx_blocks * 512,
            block_size_bytes: statx.stx_blksize,
            mode: statx.stx_mode,
        })
    }
}

/// An open file. Cloning is cheap and shares the descriptor.
#[derive(Clone, Debug)]
pub struct File {
    fd: SharedFd,
}

impl File {
    /// Opens `path` for reading.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path).await
    }

    /// Creates (or truncates) `path` for writing and reading.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await
    }

    /// Takes over a descriptor opened elsewhere.
    pub fn from_owned_fd(fd: OwnedFd) -> File {
        File {
            fd: SharedFd::new(fd),
        }
    }

    pub(crate) fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// A new descriptor for the same open file (`dup`), which another thread may own: a
    /// shard hands segment files to the shard that sends them.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.owned().try_clone()
    }

    /// The raw descriptor, for system calls the ring does not offer.
    pub fn as_raw_fd(&self) -> i32 {
        self.fd.raw()
    }

    /// Reads into `buf` from `offset`; returns how many bytes were read (0 at end of file).
    pub fn read_at<B: IoBufMut>(&self, buf: B, offset: u64) -> Op<ReadInto<B>> {
        self.prepare_read_at(buf, offset).submit()
    }

    /// A read at `offset`, to submit later (for example with a timeout).
    pub fn prepare_read_at<B: IoBufMut>(&self, buf: B, offset: u64) -> Prepared<ReadInto<B>> {
        Prepared::new(
            ReadInto {
                fd: self.fd.clone(),
                buf,
            },
            |data| {
                let len = len_u32(data.buf.bytes_total());
                opcode::Read::new(data.fd.target(), data.buf.stable_mut_ptr(), len)
                    .offset(offset)
                    .build()
            },
        )
    }

    /// Writes the initialized bytes of `buf` at `offset`; returns how many were written.
    pub fn write_at<B: IoBuf>(&self, buf: B, offset: u64) -> Op<WriteFrom<B>> {
        self.prepare_write_at(buf, offset).submit()
    }

    /// A write at `offset`, to submit later or to [`link`] with a sync.
    pub fn prepare_write_at<B: IoBuf>(&self, buf: B, offset: u64) -> Prepared<WriteFrom<B>> {
        Prepared::new(
            WriteFrom {
                fd: self.fd.clone(),
                buf,
            },
            |data| {
                let len = len_u32(data.buf.bytes_init());
                opcode::Write::new(data.fd.target(), data.buf.stable_ptr(), len)
                    .offset(offset)
                    .build()
            },
        )
    }

    /// Writes all of `buf` at `offset`, continuing after short writes.
    pub async fn write_all_at<B: IoBuf>(&self, buf: B, offset: u64) -> (io::Result<()>, B) {
        transfer_all(buf, |slice, written| {
            self.write_at(slice, offset + written as u64)
        })
        .await
    }

    /// Writes the initialized bytes of `bufs`, in order, at `offset` (one `pwritev`).
    pub fn writev_at<B: IoBuf>(&self, bufs: Vec<B>, offset: u64) -> Op<WriteVectored<B>> {
        let vectored = Vectored::for_write(self.fd.clone(), bufs);
        if !vectored.count_valid() {
            return Op::failed(WriteVectored(vectored), libc::EINVAL);
        }
        prepare_vectored_write(vectored, offset).submit()
    }

    /// Reads into `bufs`, filling each to capacity in order, from `offset` (one `preadv`).
    pub fn readv_at<B: IoBufMut>(&self, bufs: Vec<B>, offset: u64) -> Op<ReadVectored<B>> {
        let vectored = Vectored::for_read(self.fd.clone(), bufs);
        if !vectored.count_valid() {
            return Op::failed(ReadVectored(vectored), libc::EINVAL);
        }
        Prepared::new(ReadVectored(vectored), |data| {
            let count = data.0.iovec_count();
            opcode::Readv::new(data.0.fd.target(), data.0.iovecs.as_ptr(), count)
                .offset(offset)
                .build()
        })
        .submit()
    }

    /// fsync: data and metadata reach stable storage.
    pub fn sync_all(&self) -> Op<Unit<SharedFd>> {
        self.prepare_sync(false).submit()
    }

    /// fdatasync: data (and the metadata needed to read it back) reach stable storage.
    pub fn sync_data(&self) -> Op<Unit<SharedFd>> {
        self.prepare_sync(true).submit()
    }

    /// An fsync (`data_only = false`) or fdatasync, to [`link`] after a write.
    pub fn prepare_sync(&self, data_only: bool) -> Prepared<Unit<SharedFd>> {
        let flags = if data_only {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        Prepared::new(
            Unit {
                held: self.fd.clone(),
            },
            |data| opcode::Fsync::new(data.held.target()).flags(flags).build(),
        )
    }

    /// Writes `buf` at `offset` and, linked in the same submission, fdatasyncs the file.
    /// The sync runs only if the write succeeded in full; otherwise it reports ECANCELED.
    pub fn write_at_and_sync_data<B: IoBuf>(
        &self,
        buf: B,
        offset: u64,
    ) -> impl Future<Output = ((io::Result<usize>, B), io::Result<()>)> {
        link(self.prepare_write_at(buf, offset), self.prepare_sync(true))
    }

    /// `writev_at` and a linked fdatasync, in one submission: a group commit.
    pub fn writev_at_and_sync_data<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> Link<WriteVectored<B>, Unit<SharedFd>> {
        let vectored = Vectored::for_write(self.fd.clone(), bufs);
        let sync = self.prepare_sync(true);
        if !vectored.count_valid() {
            let write = Op::failed(WriteVectored(vectored), libc::EINVAL);
            return futures::future::join(write, sync.fail(libc::ECANCELED));
        }
        link(prepare_vectored_write(vectored, offset), sync)
    }

    /// `writev_at` and a linked fdatasync in one submission, returned apart: the write's
    /// completion first, the sync's to await separately (see [`super::op::link_split`]).
    pub fn writev_at_then_sync_data<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> (Op<WriteVectored<B>>, Op<Unit<SharedFd>>) {
        let vectored = Vectored::for_write(self.fd.clone(), bufs);
        let sync = self.prepare_sync(true);
        if !vectored.count_valid() {
            let write = Op::failed(WriteVectored(vectored), libc::EINVAL);
            return (write, sync.fail(libc::ECANCELED));
        }
        super::op::link_split(prepare_vectored_write(vectored, offset), sync)
    }

    /// fallocate(`mode`, `offset`, `len`): reserve (mode 0) or punch/zero ranges.
    pub fn allocate(&self, offset: u64, len: u64, mode: i32) -> Op<Unit<SharedFd>> {
        Prepared::new(
            Unit {
                held: self.fd.clone(),
            },
            |data| {
                opcode::Fallocate::new(data.held.target(), len)
                    .offset(offset)
                    .mode(mode)
                    .build()
            },
        )
        .submit()
    }

    /// Sets the file's size (truncating or extending with zeros). A plain `ftruncate`:
    /// io_uring has it only from Linux 6.9, and it runs at recovery and segment roll, not
    /// per write.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let len = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: ftruncate on a descriptor we own; no memory arguments.
        if unsafe { libc::ftruncate(self.fd.raw(), len) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Size and allocation of the file, from statx.
    pub async fn metadata(&self) -> io::Result<Metadata> {
        // SAFETY: statx is plain old data; all-zero is a valid value.
        let statx: Box<libc::statx> = Box::new(unsafe { std::mem::zeroed() });
        Prepared::new(
            Statx {
                fd: self.fd.clone(),
                statx,
            },
            |data| {
                let statx_ptr = (&raw mut *data.statx).cast::<types::statx>();
                opcode::Statx::new(data.fd.target(), c"".as_ptr(), statx_ptr)
                    .flags(libc::AT_EMPTY_PATH)
                    .mask(libc::STATX_SIZE | libc::STATX_BLOCKS | libc::STATX_MODE)
                    .build()
            },
        )
        .submit()
        .await
    }

    /// Closes the file through the ring and reports close's error (which can carry a
    /// deferred write error on some file systems). If operations still hold the
    /// descriptor, it is closed when the last of them completes instead.
    pub async fn close(self) -> io::Result<()> {
        match self.fd.try_unwrap() {
            Ok(fd) => close_fd(fd).await,
            Err(_still_in_use) => Ok(()),
        }
    }
}

fn prepare_vectored_write<B: IoBuf>(
    vectored: Vectored<B>,
    offset: u64,
) -> Prepared<WriteVectored<B>> {
    Prepared::new(WriteVectored(vectored), |data| {
        let count = data.0.iovec_count();
        opcode::Writev::new(data.0.fd.target(), data.0.iovecs.as_ptr(), count)
            .offset(offset)
            .build()
    })
}

/// Closes `fd` through the ring; if the close cannot be pushed (the ring failed), closes
/// it at once with a plain `close`, so the descriptor is never lost.
pub(crate) async fn close_fd(fd: OwnedFd) -> io::Result<()> {
    // Until pushed the descriptor stays an OwnedFd: a close dropped while it waits for
    // room closes it on the spot.
    wait_for_room().await;
    let raw = fd.as_raw_fd();
    let close = Prepared::new(Unit { held: () }, |_| {
        opcode::Close::new(types::Fd(raw)).build()
    });
    match close.try_submit() {
        Ok(op) => {
            // The kernel closes it now; the OwnedFd must not close it a second time.
            let _ = fd.into_raw_fd();
            op.await
        }
        Err((error, _)) => {
            tracing::debug!(%error, fd = raw, "could not push a close; closing synchronously");
            close_now(fd)
        }
    }
}

/// `close(2)`, reporting its error (which can carry a deferred write error). The
/// descriptor is released even when close fails, so it is never retried.
fn close_now(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: the descriptor comes out of an OwnedFd, so it is ours and closed once, here.
    if unsafe { libc::close(fd.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Consumes wake-ups of the executor's eventfd, forever: each completed read is what woke
/// the ring's wait, and the next read is queued at once.
pub(crate) async fn read_eventfd(eventfd: Rc<OwnedFd>) {
    let fd = SharedFd::from_rc(eventfd);
    let mut buf = Vec::with_capacity(8);
    loop {
        let read = Prepared::new(
            ReadInto {
                fd: fd.clone(),
                buf,
            },
            |data| {
                opcode::Read::new(data.fd.target(), data.buf.stable_mut_ptr(), 8)
                    .offset(OFFSET_CURRENT)
                    .build()
            },
        );
        let (result, returned) = read.submit_exempt().await;
        buf = returned;
        buf.clear();
        if let Err(error) = result {
            if error.raw_os_error() == Some(libc::ECANCELED) {
                return;
            }
            tracing::warn!(%error, "reading the executor's eventfd failed");
        }
    }
}
