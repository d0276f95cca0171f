//! The data of operations that move bytes between a buffer and a descriptor — file reads
//! and writes, socket receives and sends, plain and vectored — and how their completions
//! hand the buffers back.

use std::future::Future;
use std::io;

use super::buf::{IoBuf, IoBufMut, Slice};
use super::context;
use super::driver::Completion;
use super::error::cqe_result;
use super::fd::SharedFd;
use super::op::Operation;
use crate::limits::IOVECS_PER_OP_MAX;

/// Length argument for a single-buffer operation: the kernel takes a u32, and transfers
/// at most that much (the caller sees a short count and continues).
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Bytes moved from a descriptor into a buffer.
pub struct ReadInto<B> {
    pub(crate) fd: SharedFd,
    pub(crate) buf: B,
}

impl<B: IoBufMut> Operation for ReadInto<B> {
    type Output = (io::Result<usize>, B);

    fn complete(mut self, completion: Completion) -> Self::Output {
        drop(self.fd);
        let result = cqe_result(completion.result).map(|count| count as usize);
        if let Ok(count) = result {
            // SAFETY: the kernel initialized `count` bytes at the start of the buffer.
            unsafe { self.buf.set_init(count) };
        }
        (result, self.buf)
    }
}

/// Bytes moved from a buffer to a descriptor.
pub struct WriteFrom<B> {
    pub(crate) fd: SharedFd,
    pub(crate) buf: B,
}

impl<B: IoBuf> Operation for WriteFrom<B> {
    type Output = (io::Result<usize>, B);

    fn complete(self, completion: Completion) -> Self::Output {
        drop(self.fd);
        (
            cqe_result(completion.result).map(|count| count as usize),
            self.buf,
        )
    }
}

/// A vectored transfer: the buffers and the iovec array the kernel reads them through.
pub struct Vectored<B> {
    pub(crate) fd: SharedFd,
    pub(crate) bufs: Vec<B>,
    pub(crate) iovecs: Vec<libc::iovec>,
    reading: bool,
}

impl<B: IoBuf> Vectored<B> {
    /// Describes the initialized bytes of `bufs`, for the kernel to read (a write).
    pub(crate) fn for_write(fd: SharedFd, bufs: Vec<B>) -> Self {
        let mut iovecs = context::with(super::context::Context::take_iovecs);
        for buf in &bufs {
            // The kernel only reads through this pointer; `iovec` has no const variant.
            iovecs.push(libc::iovec {
                iov_base: buf.stable_ptr().cast_mut().cast(),
                iov_len: buf.bytes_init(),
            });
        }
        Vectored {
            fd,
            bufs,
            iovecs,
            reading: false,
        }
    }

    /// Whether the kernel accepts this many buffers in one operation (1 to
    /// [`IOVECS_PER_OP_MAX`]).
    pub(crate) fn count_valid(&self) -> bool {
        (1..=IOVECS_PER_OP_MAX).contains(&self.bufs.len())
    }

    pub(crate) fn iovec_count(&self) -> u32 {
        self.iovecs.len() as u32
    }
}

impl<B: IoBufMut> Vectored<B> {
    /// Describes the whole capacity of `bufs`, for the kernel to write into (a read). The
    /// pointers come from `stable_mut_ptr`, which borrows each buffer mutably, so the
    /// kernel's writes go through a pointer that is allowed to write.
    pub(crate) fn for_read(fd: SharedFd, mut bufs: Vec<B>) -> Self {
        let mut iovecs = context::with(super::context::Context::take_iovecs);
        for buf in &mut bufs {
            iovecs.push(libc::iovec {
                iov_base: buf.stable_mut_ptr().cast(),
                iov_len: buf.bytes_total(),
            });
        }
        Vectored {
            fd,
            bufs,
            iovecs,
            reading: true,
        }
    }

    /// Records that the kernel filled `count` bytes, buffer after buffer.
    fn set_init_across(&mut self, mut count: usize) {
        for buf in &mut self.bufs {
            let filled = count.min(buf.bytes_total());
            // SAFETY: the kernel filled the buffers in order; `filled` bytes of this one.
            unsafe { buf.set_init(filled) };
            count -= filled;
        }
    }
}

/// The output of a vectored operation.
pub type VectoredOutput<B> = (io::Result<usize>, Vec<B>);

fn finish_vectored<B>(
    vectored: Vectored<B>,
    completion: Completion,
) -> (io::Result<usize>, Vec<B>) {
    let Vectored {
        fd, bufs, iovecs, ..
    } = vectored;
    drop(fd);
    let _ = context::try_with(|ctx| ctx.recycle_iovecs(iovecs));
    (
        cqe_result(completion.result).map(|count| count as usize),
        bufs,
    )
}

/// A vectored write.
pub struct WriteVectored<B>(pub(crate) Vectored<B>);

impl<B: IoBuf> Operation for WriteVectored<B> {
    type Output = VectoredOutput<B>;
    fn complete(self, completion: Completion) -> Self::Output {
        debug_assert!(!self.0.reading);
        finish_vectored(self.0, completion)
    }
}

/// A vectored read.
pub struct ReadVectored<B>(pub(crate) Vectored<B>);

impl<B: IoBufMut> Operation for ReadVectored<B> {
    type Output = VectoredOutput<B>;
    fn complete(mut self, completion: Completion) -> Self::Output {
        debug_assert!(self.0.reading);
        if let Ok(count) = cqe_result(completion.result) {
            self.0.set_init_across(count as usize);
        }
        finish_vectored(self.0, completion)
    }
}

/// An operation whose only output is success or the error (fsync, fallocate, connect,
/// close, …); it holds the descriptor (and any other data) until completion.
pub struct Unit<D> {
    pub(crate) held: D,
}

impl<D: Unpin + 'static> Operation for Unit<D> {
    type Output = io::Result<()>;
    fn complete(self, completion: Completion) -> io::Result<()> {
        cqe_result(completion.result).map(drop)
    }
}

/// An operation whose output is the kernel's count (splice).
pub struct Count<D> {
    pub(crate) held: D,
}

impl<D: Unpin + 'static> Operation for Count<D> {
    type Output = io::Result<usize>;
    fn complete(self, completion: Completion) -> io::Result<usize> {
        cqe_result(completion.result).map(|count| count as usize)
    }
}

/// Transfers all of `buf`'s initialized bytes with `step` (a write or a send given the
/// remaining slice and how much is done), continuing after short transfers and EINTR. A
/// step that moves nothing is `WriteZero`.
pub(crate) async fn transfer_all<B, F, Fut>(buf: B, mut step: F) -> (io::Result<()>, B)
where
    B: IoBuf,
    F: FnMut(Slice<B>, usize) -> Fut,
    Fut: Future<Output = (io::Result<usize>, Slice<B>)>,
{
    let len = buf.bytes_init();
    let mut done = 0;
    let mut slice = buf.slice(0..len);
    while done < len {
        let (result, returned) = step(slice, done).await;
        let buf = returned.into_inner();
        match result {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(count) => done += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return (Err(error), buf),
        }
        slice = buf.slice(done..len);
    }
    (Ok(()), slice.into_inner())
}
