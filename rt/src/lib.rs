//! ringlog's thread-per-core runtime on io_uring.
//!
//! Each shard is one OS thread pinned to a core, with its own ring ([`driver`]), a
//! single-threaded executor for `!Send` tasks ([`spawn_local`]), timers ([`sleep`],
//! [`timeout`]), a pool of aligned buffers ([`BufPool`]) and a bounded mailbox other
//! threads send work to ([`ShardHandle`]). Nothing on the hot path is shared between
//! shards.
//!
//! I/O goes through [`File`], [`TcpListener`], [`TcpStream`] and [`Pipe`]: every
//! operation takes its buffers by value and returns them with the result, so the kernel
//! never sees memory that was freed or moved. [`link`] chains two operations in one
//! submission (a write and its fdatasync).
//!
//! [`block_on`] runs a future on the current thread with a runtime of its own (tests,
//! tools, embedded use); [`Runtime::start`] starts the shards.
//!
//! The runtime is its own crate so that Cargo keeps it ignorant of logs and of Kafka: its
//! limits are in [`limits`], and all of ringlog's code that talks to the kernel through
//! raw pointers is here, to be reviewed and tested in one place.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod buf;
mod context;
mod driver;
mod error;
mod executor;
mod fd;
mod fs;
mod kernel;
pub mod limits;
mod mailbox;
mod net;
mod op;
mod path;
mod pipe;
pub mod seccomp;
mod shard;
mod sync;
mod time;
mod transfer;

#[cfg(test)]
mod tests;

pub use buf::{initialized, AlignedBuf, BufPool, IoBuf, IoBufMut, PoolStats, PooledBuf, Slice};
pub use driver::DriverStats;
pub use error::{
    cqe_result, DriverError, Error, RingSetupError, UnavailableCause,
    EXIT_CODE_IO_URING_UNAVAILABLE,
};
pub use executor::{block_on, spawn_local, yield_now, Cancelled, JoinHandle};
pub use fs::{File, Metadata, OpenOptions};
pub use kernel::Features;
pub use mailbox::TrySendError;
pub use net::{Incoming, SendZc, TcpListener, TcpStream};
pub use op::{kernel_timer, link, link_split, nop, Link, Op, Prepared};
pub use path::{create_dir, create_dir_all, free_space_bytes, remove_file, rename, sync_dir};
pub use pipe::{send_file, Pipe};
pub use shard::{allowed_cpus, Runtime, RuntimeConfig, ShardHandle, ShardStopped, Work};
pub use time::{sleep, sleep_until, timeout, Elapsed, Sleep};

/// The current executor's buffer pool.
///
/// # Panics
/// Outside a ringlog runtime.
pub fn buf_pool() -> BufPool {
    context::with(|ctx| ctx.pool.clone())
}

/// The current shard's buffer pool, or `None` outside a runtime.
pub fn try_buf_pool() -> Option<BufPool> {
    context::try_with(|ctx| ctx.pool.clone())
}

/// Counters of the current executor's driver.
pub fn driver_stats() -> DriverStats {
    context::with(|ctx| ctx.driver.borrow().stats())
}

/// Optional kernel features the current executor's ring has.
pub fn features() -> Features {
    context::with(|ctx| ctx.driver.borrow().features())
}

/// Operations submitted whose completion (or result) is still held by the driver.
pub fn operations_in_flight() -> usize {
    context::with(|ctx| ctx.driver.borrow().slots_in_use())
}
