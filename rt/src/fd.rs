//! A file descriptor shared by its handle and the operations in flight on it.
//!
//! Every operation keeps a clone, so the descriptor is closed only when the handle and all
//! its operations are gone: the kernel never sees a number reused for another file while
//! an operation on the old one is queued.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use io_uring::types;

#[derive(Clone, Debug)]
pub struct SharedFd(Rc<OwnedFd>);

impl SharedFd {
    pub(crate) fn new(fd: OwnedFd) -> SharedFd {
        SharedFd(Rc::new(fd))
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// The descriptor as an io_uring target.
    pub(crate) fn target(&self) -> types::Fd {
        types::Fd(self.raw())
    }

    /// The descriptor itself, if no operation holds it any more.
    pub(crate) fn try_unwrap(self) -> Result<OwnedFd, SharedFd> {
        Rc::try_unwrap(self.0).map_err(SharedFd)
    }

    pub(crate) fn from_rc(fd: Rc<OwnedFd>) -> SharedFd {
        SharedFd(fd)
    }
}

impl SharedFd {
    pub(crate) fn owned(&self) -> &OwnedFd {
        &self.0
    }
}
