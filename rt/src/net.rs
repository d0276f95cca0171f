//! TCP through the ring: listeners (one per shard with SO_REUSEPORT), single and multishot
//! accept, connect, receive, send, and zero-copy send.
//!
//! Sockets are created and configured with plain system calls (they are not on the hot
//! path); everything that waits — accept, connect, receive, send — goes through the ring.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use io_uring::{cqueue, opcode};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::buf::{IoBuf, IoBufMut};
use super::context;
use super::driver::{Completion, ResultKind};
use super::error::cqe_result;
use super::fd::SharedFd;
use super::op::{wait_for_room, MultiOp, Op, Operation, Prepared, RoomWait};
use super::transfer::{len_u32, transfer_all, ReadInto, Vectored, WriteFrom, WriteVectored};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

/// A listening TCP socket.
#[derive(Debug)]
pub struct TcpListener {
    fd: SharedFd,
    local_addr: SocketAddr,
}

impl TcpListener {
    /// Binds and listens on `addr` (SO_REUSEADDR set).
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with(addr, false)
    }

    /// Binds with SO_REUSEPORT as well, so every shard can listen on the same address and
    /// the kernel spreads connections among them.
    pub fn bind_reuse_port(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with(addr, true)
    }

    fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let local_addr = socket
            .local_addr()?
            .as_socket()
            .ok_or(io::ErrorKind::InvalidInput)?;
        Ok(TcpListener {
            fd: SharedFd::new(socket.into()),
            local_addr,
        })
    }

    /// The address the listener is bound to (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The socket's inode number, as `/proc/net/tcp` and `/proc/<pid>/fd` name it: what
    /// tells this listener apart from another process's on the same address.
    pub fn socket_inode(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::from(self.fd.owned().try_clone()?);
        Ok(file.metadata()?.ino())
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        self.prepare_accept().submit().await
    }

    pub(crate) fn prepare_accept(&self) -> Prepared<Accept> {
        Prepared::new(
            Accept {
                held_fd: self.fd.clone(),
            },
            |data| {
                opcode::Accept::new(
                    data.held_fd.target(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
                .flags(libc::SOCK_CLOEXEC)
                .build()
            },
        )
    }

    /// A stream of accepted connections from one multishot accept, re-armed when the
    /// kernel ends it. Dropping the stream cancels the accept.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            fd: self.fd.clone(),
            op: None,
            room: None,
        }
    }
}

pub(crate) struct Accept {
    held_fd: SharedFd,
}

fn stream_from_result(result: i32) -> io::Result<TcpStream> {
    let raw = cqe_result(result)?;
    // SAFETY: accept returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    Ok(TcpStream {
        fd: SharedFd::new(fd),
    })
}

impl Operation for Accept {
    type Output = io::Result<TcpStream>;
    const RESULT: ResultKind = ResultKind::Fd;
    fn complete(self, completion: Completion) -> io::Result<TcpStream> {
        stream_from_result(completion.result)
    }
}

/// Connections accepted by a multishot accept; see [`TcpListener::incoming`].
pub struct Incoming {
    fd: SharedFd,
    op: Option<MultiOp<SharedFd>>,
    /// The wait for room in the kernel before (re-)arming the accept.
    room: Option<RoomWait>,
}

impl Stream for Incoming {
    type Item = io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.op.is_none() {
                let room = this.room.get_or_insert_with(wait_for_room);
                if Pin::new(room).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.room = None;
                let submitted = MultiOp::submit(this.fd.clone(), ResultKind::Fd, |fd| {
                    opcode::AcceptMulti::new(fd.target())
                        .flags(libc::SOCK_CLOEXEC)
                        .build()
                });
                match submitted {
                    Ok(op) => this.op = Some(op),
                    Err((error, _)) => return Poll::Ready(Some(Err(error))),
                }
            }
            let Some(op) = this.op.as_mut() else {
                unreachable!("armed above")
            };
            match op.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(completion)) => {
                    return Poll::Ready(Some(stream_from_result(completion.result)));
                }
                // The kernel ended the multishot (it does on some errors); arm a new one.
                Poll::Ready(None) => this.op = None,
            }
        }
    }
}

/// A connected TCP socket.
#[derive(Debug, Clone)]
pub struct TcpStream {
    fd: SharedFd,
}

struct Connect {
    held_fd: SharedFd,
    addr: Box<SockAddr>,
}

impl Operation for Connect {
    type Output = io::Result<()>;
    fn complete(self, completion: Completion) -> io::Result<()> {
        drop(self.addr);
        cqe_result(completion.result).map(drop)
    }
}

impl TcpStream {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        let fd = SharedFd::new(socket.into());
        let data = Connect {
            held_fd: fd.clone(),
            addr: Box::new(addr.into()),
        };
        Prepared::new(data, |data| {
            opcode::Connect::new(
                data.held_fd.target(),
                data.addr.as_ptr().cast(),
                data.addr.len(),
            )
            .build()
        })
        .submit()
        .await?;
        Ok(TcpStream { fd })
    }

    pub(crate) fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    fn socket(&self) -> SockRef<'_> {
        SockRef::from(self.fd.owned())
    }

    /// Disables (or enables) Nagle's algorithm.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.socket().set_tcp_nodelay(nodelay)
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket()
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::ErrorKind::InvalidInput.into())
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::ErrorKind::InvalidInput.into())
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket().shutdown(how)
    }

    /// Receives into `buf`'s capacity; 0 bytes means the peer closed its side.
    pub fn recv<B: IoBufMut>(&self, buf: B) -> Op<ReadInto<B>> {
        self.prepare_recv(buf).submit()
    }

    /// A receive, to submit later (for example with a timeout).
    pub fn prepare_recv<B: IoBufMut>(&self, buf: B) -> Prepared<ReadInto<B>> {
        Prepared::new(
            ReadInto {
                fd: self.fd.clone(),
                buf,
            },
            |data| {
                let len = len_u32(data.buf.bytes_total());
                opcode::Recv::new(data.fd.target(), data.buf.stable_mut_ptr(), len).build()
            },
        )
    }

    /// Sends `buf`'s initialized bytes; returns how many were sent.
    pub fn send<B: IoBuf>(&self, buf: B) -> Op<WriteFrom<B>> {
        Prepared::new(
            WriteFrom {
                fd: self.fd.clone(),
                buf,
            },
            |data| {
                let len = len_u32(data.buf.bytes_init());
                opcode::Send::new(data.fd.target(), data.buf.stable_ptr(), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            },
        )
        .submit()
    }

    /// Sends all of `buf`, continuing after short sends.
    pub async fn send_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        transfer_all(buf, |slice, _sent| self.send(slice)).await
    }

    /// Sends the initialized bytes of `bufs`, in order, with one `writev` (1 to
    /// `IOVECS_PER_OP_MAX` buffers); returns how many bytes were sent, which is fewer than
    /// all when the socket's buffer filled. A closed peer gives EPIPE (Rust programs
    /// ignore SIGPIPE).
    pub fn send_vectored<B: IoBuf>(&self, bufs: Vec<B>) -> Op<WriteVectored<B>> {
        let vectored = Vectored::for_write(self.fd.clone(), bufs);
        if !vectored.count_valid() {
            return Op::failed(WriteVectored(vectored), libc::EINVAL);
        }
        Prepared::new(WriteVectored(vectored), |data| {
            let count = data.0.iovec_count();
            opcode::Writev::new(data.0.fd.target(), data.0.iovecs.as_ptr(), count).build()
        })
        .submit()
    }

    /// Sends `buf` without copying it into the kernel (`IORING_OP_SEND_ZC`): the buffer
    /// comes back only once the network stack is done with it. Falls back to a plain send
    /// on kernels without it. Pays off for large buffers (tens of KiB and up).
    ///
    /// While the shard has no room for another operation in the kernel, the buffer goes
    /// with a plain send, which waits for room like any operation.
    pub fn send_zc<B: IoBuf>(&self, buf: B) -> SendZc<B> {
        let zero_copy = context::with(|ctx| {
            let driver = ctx.driver.borrow();
            driver.features().send_zc && driver.has_room(1)
        });
        if !zero_copy {
            return SendZc::Copied(self.send(buf));
        }
        let data = WriteFrom {
            fd: self.fd.clone(),
            buf,
        };
        let submitted = MultiOp::submit(data, ResultKind::Count, |data| {
            let len = len_u32(data.buf.bytes_init());
            opcode::SendZc::new(data.fd.target(), data.buf.stable_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        });
        match submitted {
            Ok(op) => SendZc::ZeroCopy {
                op: Some(op),
                result: None,
            },
            Err((error, data)) => SendZc::Failed(Some((error, data.buf))),
        }
    }
}

/// The future of [`TcpStream::send_zc`].
pub enum SendZc<B: IoBuf> {
    #[doc(hidden)]
    ZeroCopy {
        op: Option<MultiOp<WriteFrom<B>>>,
        result: Option<io::Result<usize>>,
    },
    #[doc(hidden)]
    Copied(Op<WriteFrom<B>>),
    #[doc(hidden)]
    Failed(Option<(io::Error, B)>),
}

impl<B: IoBuf> Future for SendZc<B> {
    type Output = (io::Result<usize>, B);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            SendZc::Copied(op) => Pin::new(op).poll(cx),
            SendZc::Failed(failed) => match failed.take() {
                Some((error, buf)) => Poll::Ready((Err(error), buf)),
                None => unreachable!("send_zc polled after completion"),
            },
            SendZc::ZeroCopy { op, result } => loop {
                let Some(running) = op.as_mut() else {
                    unreachable!("send_zc polled after completion");
                };
                match running.poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(completion)) => {
                        if !cqueue::notif(completion.flags) {
                            *result = Some(cqe_result(completion.result).map(|n| n as usize));
                        }
                    }
                    Poll::Ready(None) => {
                        let finished = op.take().and_then(MultiOp::into_data);
                        let Some(data) = finished else {
                            unreachable!("send_zc data lost")
                        };
                        let result = result
                            .take()
                            .unwrap_or_else(|| Err(io::ErrorKind::Other.into()));
                        return Poll::Ready((result, data.buf));
                    }
                }
            },
        }
    }
}

#[cfg(test)]
impl TcpStream {
    /// Wraps any connected stream socket (a Unix socket pair in tests).
    pub(crate) fn from_owned_fd_for_test(fd: OwnedFd) -> TcpStream {
        TcpStream {
            fd: SharedFd::new(fd),
        }
    }
}
