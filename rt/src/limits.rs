//! Every length, count and queue bound of the runtime, in one place.
//!
//! A limit is checked before the value it bounds is used; code names the constant rather
//! than repeating the number. The runtime knows nothing of logs: the storage engine's
//! limits are its own.

/// Submission queue entries of each shard's io_uring (the completion queue is larger, see
/// [`RING_CQ_ENTRIES_FACTOR`]).
pub const RING_SQ_ENTRIES: u32 = 1024;
/// The completion queue holds this many times the submission queue's entries, so a burst
/// of completions (multishot accepts, many small writes) does not overflow it.
pub const RING_CQ_ENTRIES_FACTOR: u32 = 4;
/// Times in a row `io_uring_enter` may answer EAGAIN or EBUSY (the kernel is short of
/// memory, or its completion backlog is full) before the driver gives up on that submission
/// with `DriverError::Busy`: the operation being pushed fails with EAGAIN, and the executor
/// backs off and goes on. Between answers the driver reaps, or waits for a completion up to
/// [`RING_ENTER_BUSY_WAIT_MS`].
pub const RING_ENTER_BUSY_RETRIES_MAX: u32 = 64;
/// The longest one wait for a completion lasts while `io_uring_enter` answers busy, so the
/// whole retry takes at most `RING_ENTER_BUSY_RETRIES_MAX` times this.
pub const RING_ENTER_BUSY_WAIT_MS: u64 = 10;
/// A stopping driver waits for its cancelled operations' completions in rounds of this
/// length, so it sees promptly when the last one arrives.
pub const TEARDOWN_WAIT_ROUND_MS: u64 = 10;
/// Every this many rounds of that wait the stopping driver asks the kernel again to cancel
/// everything in flight (an operation submitted after the first request, or one the kernel
/// could not cancel yet).
pub const TEARDOWN_CANCEL_REPEAT_ROUNDS: u32 = 64;
/// Passes a stopping executor makes over its I/O and tasks (cancel and wait, drop the
/// tasks that woke, again) until no task and no operation is left; dropping a task can
/// start new I/O in its destructors, so one pass may not be enough.
pub const TEARDOWN_PASSES_MAX: u32 = 16;
/// Empty iovec arrays an executor keeps for reuse by vectored operations.
pub const IOVEC_ARRAYS_RETAINED_MAX: usize = 1024;
/// Operations one shard may have in the kernel at once (submitted and not yet completed,
/// abandoned ones included; the executor's own eventfd read excepted). A submission beyond
/// it waits, first come first served, until completions make room. Every connection keeps
/// a receive in flight all the time, so this is also far above the connections a shard is
/// expected to hold: with that many idle connections, every other operation of the shard
/// (its disk writes included) would wait for one of them to receive something. It bounds
/// the driver's slab of in-kernel operations at a few MiB.
pub const OPS_IN_FLIGHT_MAX: usize = 1 << 16;
const _: () = assert!(
    OPS_IN_FLIGHT_MAX >= 2,
    "a linked pair enters the kernel at once"
);
/// Messages a shard's cross-core mailbox holds before senders must wait.
pub const MAILBOX_CAPACITY: usize = 4096;
/// Tasks one executor runs before it looks at the ring and the mailbox again, so I/O
/// completions are not starved by a busy run queue.
pub const TASKS_PER_TICK_MAX: usize = 256;
/// The smallest buffer size class of a shard's pool: one page, the O_DIRECT alignment.
pub const BUF_SIZE_CLASS_MIN_BYTES: usize = 4096;
/// The largest pooled buffer; larger requests are allocated (aligned) and freed on drop.
pub const BUF_SIZE_CLASS_MAX_BYTES: usize = 8 << 20;
/// Bytes of idle buffers one shard's pool keeps for reuse, all size classes together; the
/// rest are freed. Idle buffers are resident memory no budget charges: at 64 MiB a class
/// (19 classes) the pools of a broker under load held some 300 MiB beside the batch
/// cache's budget (BENCHMARKS.md), where a pool-wide bound keeps it to this per shard.
pub const BUF_POOL_RETAINED_BYTES_MAX: usize = 64 << 20;
/// Alignment of every pooled buffer: the page size, which satisfies O_DIRECT on the
/// logical block sizes of common disks (512 B, 4 KiB).
pub const BUF_ALIGN_BYTES: usize = 4096;
/// Buffers of at least this size are backed by transparent huge pages (2 MiB aligned,
/// `MADV_HUGEPAGE` before first touch): a physically contiguous 1 MiB buffer is one
/// segment for the block layer, so an O_DIRECT write of it is one request that can merge
/// with its neighbours, where 256 scattered 4 KiB pages exceed virtio's 254 segments.
pub const BUF_HUGE_PAGE_THRESHOLD_BYTES: usize = 1 << 20;
/// Buffers of at least this size are mapped from the kernel (`mmap`) rather than taken
/// from malloc: page-aligned with no slack, and given back (`munmap`) when freed. From
/// glibc's heaps, page-aligned buffers of mixed sizes churned through the batch cache left
/// holes too small for the next aligned request (it needs size + alignment free): 26 %
/// of resident memory was free heap (BENCHMARKS.md).
pub const BUF_MMAP_THRESHOLD_BYTES: usize = 64 << 10;
/// The x86-64 and aarch64 (4 KiB base pages) transparent huge page size.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Buffers in one vectored read or write (Linux's `IOV_MAX`).
pub const IOVECS_PER_OP_MAX: usize = 1024;
/// Bytes one pipe used for `splice` holds (`F_SETPIPE_SZ`); a larger pipe moves more per
/// splice call.
pub const PIPE_SIZE_BYTES: usize = 1 << 20;
