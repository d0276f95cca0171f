//! Pipes and `splice`: moving file bytes to a socket without copying them through user
//! space (file → pipe → socket, both steps in the kernel).
//!
//! This is ringlog's zero-copy fetch path: [`send_file`] streams a range of a segment file
//! to a consumer's socket; the bytes stay in the page cache and are referenced, not copied,
//! by the pipe.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use io_uring::opcode;

use super::fd::SharedFd;
use super::fs::File;
use super::net::TcpStream;
use super::op::{Op, Prepared};
use super::transfer::{len_u32, Count};
use crate::limits::PIPE_SIZE_BYTES;

/// `off_in`/`off_out` value meaning "no offset" (pipes and sockets).
const SPLICE_OFFSET_NONE: i64 = -1;

/// A pipe used as the kernel-side buffer of splice.
#[derive(Debug)]
pub struct Pipe {
    reader: SharedFd,
    writer: SharedFd,
    capacity: usize,
}

impl Pipe {
    /// Creates a pipe and grows it to [`PIPE_SIZE_BYTES`] (or as far as
    /// `/proc/sys/fs/pipe-max-size` allows).
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded; both descriptors are new and ours.
        let (reader, writer) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ takes an int; failure leaves the default size.
        let grown = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE_BYTES as i32) };
        let capacity = if grown > 0 {
            grown
        } else {
            // SAFETY: F_GETPIPE_SZ has no arguments.
            unsafe { libc::fcntl(fds[1], libc::F_GETPIPE_SZ) }
        };
        Ok(Pipe {
            reader: SharedFd::new(reader),
            writer: SharedFd::new(writer),
            capacity: usize::try_from(capacity).unwrap_or(65536),
        })
    }

    /// Bytes the pipe holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Moves up to `len` bytes of `file` at `offset` into the pipe.
    pub fn fill_from_file(&self, file: &File, offset: u64, len: usize) -> Op<Count<[SharedFd; 2]>> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        splice(
            file.shared_fd(),
            offset,
            &self.writer,
            SPLICE_OFFSET_NONE,
            len,
        )
    }

    /// Moves up to `len` bytes from the pipe to `stream`.
    pub fn drain_to_stream(&self, stream: &TcpStream, len: usize) -> Op<Count<[SharedFd; 2]>> {
        splice(
            &self.reader,
            SPLICE_OFFSET_NONE,
            stream.shared_fd(),
            SPLICE_OFFSET_NONE,
            len,
        )
    }

    /// Moves up to `len` bytes from the pipe to `file` at `offset`.
    pub fn drain_to_file(&self, file: &File, offset: u64, len: usize) -> Op<Count<[SharedFd; 2]>> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        splice(
            &self.reader,
            SPLICE_OFFSET_NONE,
            file.shared_fd(),
            offset,
            len,
        )
    }
}

fn splice(
    from: &SharedFd,
    offset_from: i64,
    to: &SharedFd,
    offset_to: i64,
    len: usize,
) -> Op<Count<[SharedFd; 2]>> {
    let len = len_u32(len);
    Prepared::new(
        Count {
            held: [from.clone(), to.clone()],
        },
        |data| {
            let [from, to] = &data.held;
            opcode::Splice::new(from.target(), offset_from, to.target(), offset_to, len).build()
        },
    )
    .submit()
}

/// Sends `len` bytes of `file` from `offset` to `stream` through `pipe`, without copying
/// them into user space. Returns early with the error of the first failed step; a file
/// shorter than asked is an `UnexpectedEof` error. After an error the pipe may still hold
/// bytes of this transfer: drop it rather than reuse it.
pub async fn send_file(
    stream: &TcpStream,
    file: &File,
    offset: u64,
    len: usize,
    pipe: &Pipe,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < len {
        let chunk = (len - sent).min(pipe.capacity());
        let filled = pipe
            .fill_from_file(file, offset + sent as u64, chunk)
            .await?;
        if filled == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut drained = 0;
        while drained < filled {
            let count = pipe.drain_to_stream(stream, filled - drained).await?;
            if count == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            drained += count;
        }
        sent += filled;
    }
    Ok(())
}

#[cfg(test)]
impl Pipe {
    pub(crate) fn writer_fd_for_test(&self) -> OwnedFd {
        self.writer
            .owned()
            .try_clone()
            .expect("dup of the pipe's write end")
    }
    pub(crate) fn reader_fd_for_test(&self) -> OwnedFd {
        self.reader
            .owned()
            .try_clone()
            .expect("dup of the pipe's read end")
    }
}
