//! Buffers handed to the kernel, and the per-shard pool that recycles them.
//!
//! An operation takes its buffer by value and gives it back with the result, so the buffer
//! cannot be touched, moved or freed while the kernel uses it. [`IoBuf`] and [`IoBufMut`]
//! promise that a buffer's memory stays put when the buffer value moves (it lives on the
//! heap) — that is what makes handing its address to the kernel sound.
//!
//! [`BufPool`] keeps freed buffers by power-of-two size class, every one aligned to
//! [`BUF_ALIGN_BYTES`] so any of them can serve an O_DIRECT transfer. Getting a buffer of a
//! class that has a free one allocates nothing; the pool keeps at most
//! [`BUF_POOL_RETAINED_BYTES_MAX`] bytes idle, all classes together. A buffer freed into a
//! full pool displaces idle ones of the class holding the most, so what stays idle follows
//! the sizes in use now.
//! The pool is per shard (`!Send`).

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

use crate::limits::{
    BUF_ALIGN_BYTES, BUF_HUGE_PAGE_THRESHOLD_BYTES, BUF_MMAP_THRESHOLD_BYTES,
    BUF_POOL_RETAINED_BYTES_MAX, BUF_SIZE_CLASS_MAX_BYTES, BUF_SIZE_CLASS_MIN_BYTES,
    HUGE_PAGE_BYTES,
};

/// A buffer the kernel may read from.
///
/// # Safety
/// `stable_ptr()` must point to `bytes_total()` bytes that stay valid and in place while
/// the value is moved, until it is dropped or mutated through its own methods; the first
/// `bytes_init()` of them must be initialized.
pub unsafe trait IoBuf: Unpin + 'static {
    /// Start of the buffer's memory.
    fn stable_ptr(&self) -> *const u8;
    /// Bytes holding data (what a write sends).
    fn bytes_init(&self) -> usize;
    /// Bytes of memory (what a read may fill).
    fn bytes_total(&self) -> usize;

    /// A view of `range` of the initialized bytes, owning the buffer.
    fn slice(self, range: Range<usize>) -> Slice<Self>
    where
        Self: Sized,
    {
        assert!(range.start <= range.end && range.end <= self.bytes_total());
        Slice { buf: self, range }
    }
}

/// A buffer the kernel may write into.
///
/// The kernel writes only through pointers from [`IoBufMut::stable_mut_ptr`], never through
/// [`IoBuf::stable_ptr`], which may come from a shared reference.
///
/// # Safety
/// As for [`IoBuf`]; `stable_mut_ptr()` must point to the same memory as `stable_ptr()` and
/// allow writes to all `bytes_total()` bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the buffer's memory, for writing.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Records that the first `len` bytes are initialized: `bytes_init()` becomes
    /// `max(bytes_init(), len)`.
    ///
    /// It never shrinks the initialized part. A read fills the buffer from its start and
    /// calls this with the count it read; if the buffer already held more bytes, the ones
    /// after the count keep their old contents and still count as initialized. Pass an empty
    /// buffer (or clear it first) to see only what the read returned.
    ///
    /// # Safety
    /// The first `len` bytes must really be initialized, and `len <= bytes_total()`.
    unsafe fn set_init(&mut self, len: usize);
}

// SAFETY: a Vec's elements live on the heap and do not move with the Vec.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as above; the whole capacity is writable.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        assert!(len <= self.capacity(), "{len} bytes beyond the capacity");
        if len > self.len() {
            // SAFETY: the caller promises the first `len` bytes are initialized, and
            // `len <= capacity` (checked above).
            unsafe { self.set_len(len) };
        }
    }
}

// SAFETY: `Bytes` is an immutable view of reference-counted heap memory (or a static).
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: `BytesMut` owns heap memory that does not move with the handle.
unsafe impl IoBuf for bytes::BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as above; the spare capacity is writable.
unsafe impl IoBufMut for bytes::BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        assert!(len <= self.capacity(), "{len} bytes beyond the capacity");
        if len > self.len() {
            // SAFETY: the caller promises the first `len` bytes are initialized, and
            // `len <= capacity` (checked above).
            unsafe { self.set_len(len) };
        }
    }
}

// SAFETY: static memory never moves or goes away.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

/// The initialized bytes of `buf`, as a slice.
pub fn initialized<B: IoBuf>(buf: &B) -> &[u8] {
    // SAFETY: the IoBuf contract: `bytes_init()` bytes at `stable_ptr()` are initialized
    // and live as long as `buf` is borrowed.
    unsafe { std::slice::from_raw_parts(buf.stable_ptr(), buf.bytes_init()) }
}

/// A range of a buffer, owning the buffer: write part of a buffer, or read into part.
pub struct Slice<B> {
    buf: B,
    range: Range<usize>,
}

impl<B> Slice<B> {
    /// The whole buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }
    /// The range of the buffer this slice covers.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

// SAFETY: a sub-range of a stable buffer is stable; it is within bounds by construction.
unsafe impl<B: IoBuf> IoBuf for Slice<B> {
    fn stable_ptr(&self) -> *const u8 {
        // SAFETY: `range.start <= bytes_total()`, checked in `IoBuf::slice`.
        unsafe { self.buf.stable_ptr().add(self.range.start) }
    }
    fn bytes_init(&self) -> usize {
        self.buf
            .bytes_init()
            .clamp(self.range.start, self.range.end)
            - self.range.start
    }
    fn bytes_total(&self) -> usize {
        self.range.len()
    }
}

// SAFETY: as above.
unsafe impl<B: IoBufMut> IoBufMut for Slice<B> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `range.start <= bytes_total()`, checked in `IoBuf::slice`.
        unsafe { self.buf.stable_mut_ptr().add(self.range.start) }
    }
    /// Records `len` initialized bytes from the slice's start. If the slice starts past
    /// the buffer's initialized part, nothing is recorded: the buffer can only count an
    /// initialized prefix, and the gap before the slice was never written. The bytes read
    /// are then in the buffer's memory but not part of its initialized bytes.
    unsafe fn set_init(&mut self, len: usize) {
        assert!(len <= self.range.len(), "{len} bytes beyond the slice");
        if self.range.start <= self.buf.bytes_init() {
            // SAFETY: the bytes before `range.start` are initialized (checked above) and
            // the caller promises the `len` bytes from `range.start` are; `range.end` is
            // within the buffer's `bytes_total()` (checked in `IoBuf::slice`).
            unsafe { self.buf.set_init(self.range.start + len) };
        }
    }
}

/// Heap memory aligned to [`BUF_ALIGN_BYTES`], zero-filled at allocation, with a length
/// (initialized, meaningful bytes) and a fixed capacity. Buffers of
/// [`BUF_HUGE_PAGE_THRESHOLD_BYTES`] and more are placed on transparent huge pages.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    /// Bytes actually allocated: the capacity rounded up to the alignment's granule.
    allocated: usize,
}

// SAFETY: AlignedBuf owns its memory exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `capacity` zeroed bytes (rounded up to a multiple of the alignment).
    ///
    /// # Panics
    /// With "capacity overflow", as `Vec` does, if the rounded-up size exceeds `isize::MAX`
    /// bytes. Every caller sizes its buffers from a bounded length (a limit, a batch size
    /// already checked), so a size this large is a bug, not an input to handle; memory
    /// that cannot be had aborts through `handle_alloc_error`, also like `Vec`.
    pub fn with_capacity(capacity: usize) -> AlignedBuf {
        let Some((capacity, allocated)) = Self::rounded_sizes(capacity) else {
            panic!("capacity overflow: an aligned buffer of {capacity} bytes")
        };
        let huge = allocated >= BUF_HUGE_PAGE_THRESHOLD_BYTES;
        let ptr = if Self::mapped(allocated) {
            // An anonymous mapping reads as zeros, each page zeroed by the kernel when it
            // is first touched: writing zeros here would fault in (and zero twice) pages
            // the buffer may never use, the tail of its size class past the batch it holds.
            Self::map(allocated)
        } else {
            let layout = Self::layout(allocated);
            // SAFETY: the layout has a non-zero size (`rounded_sizes` gives at least one
            // alignment granule), as `alloc_zeroed` requires; it answers zeroed memory of
            // that layout, or null, which is checked below.
            let ptr = unsafe { alloc::alloc_zeroed(layout) };
            let Some(ptr) = NonNull::new(ptr) else {
                alloc::handle_alloc_error(layout)
            };
            ptr
        };
        // Miri has no madvise; the advice changes nothing it checks.
        #[cfg(not(miri))]
        if huge {
            // SAFETY: advises on memory we just allocated, 2 MiB aligned and sized; the
            // advice is a hint, so its failure (THP disabled) changes nothing but speed.
            unsafe { libc::madvise(ptr.as_ptr().cast(), allocated, libc::MADV_HUGEPAGE) };
        }
        AlignedBuf {
            ptr,
            len: 0,
            capacity,
            allocated,
        }
    }

    /// The capacity rounded up to the alignment, and the bytes to allocate for it (whole
    /// huge pages from the threshold on); `None` if either exceeds `isize::MAX`, the most
    /// a `Layout` may describe.
    fn rounded_sizes(capacity: usize) -> Option<(usize, usize)> {
        let capacity = capacity.max(1).checked_next_multiple_of(BUF_ALIGN_BYTES)?;
        let allocated = if capacity >= BUF_HUGE_PAGE_THRESHOLD_BYTES {
            capacity.checked_next_multiple_of(HUGE_PAGE_BYTES)?
        } else {
            capacity
        };
        isize::try_from(allocated)
            .is_ok()
            .then_some((capacity, allocated))
    }

    /// Whether a buffer of `allocated` bytes is mapped from the kernel, not malloc'd.
    fn mapped(allocated: usize) -> bool {
        !cfg!(miri) && allocated >= BUF_MMAP_THRESHOLD_BYTES
    }

    /// Maps `allocated` bytes aligned as [`AlignedBuf::layout`] says: mmap is page-aligned;
    /// for huge-page buffers a huge page more is mapped and the ends cut off.
    fn map(allocated: usize) -> NonNull<u8> {
        let align = Self::layout(allocated).align();
        let reserve = if align > BUF_ALIGN_BYTES {
            allocated + align
        } else {
            allocated
        };
        // SAFETY: an anonymous private mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            alloc::handle_alloc_error(Self::layout(allocated))
        }
        let base = base as usize;
        let start = base.next_multiple_of(align);
        let (head, tail) = (start - base, base + reserve - (start + allocated));
        // SAFETY: both ranges lie within the mapping just made, outside the buffer, and
        // are page multiples (align and allocated are).
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + allocated) as *mut libc::c_void, tail);
            }
        }
        match NonNull::new(start as *mut u8) {
            Some(ptr) => ptr,
            None => unreachable!("mmap returned a null mapping"),
        }
    }

    fn layout(allocated: usize) -> Layout {
        let align = if allocated >= BUF_HUGE_PAGE_THRESHOLD_BYTES {
            HUGE_PAGE_BYTES
        } else {
            BUF_ALIGN_BYTES
        };
        match Layout::from_size_align(allocated, align) {
            Ok(layout) => layout,
            Err(error) => panic!("buffer of {allocated} bytes cannot be laid out: {error}"),
        }
    }

    /// Bytes of memory.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes allocated for the buffer: its capacity, rounded up to whole huge pages for a
    /// huge-page buffer. What holding the buffer costs.
    pub fn allocated_bytes(&self) -> usize {
        self.allocated
    }

    /// Sets the length; the memory is always initialized (zeroed at allocation).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "length {len} beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `bytes`; panics if they do not fit (callers size buffers first).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(
            end <= self.capacity,
            "{end} bytes do not fit in {}",
            self.capacity
        );
        let start = self.len;
        self.full_mut()[start..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// All `capacity` bytes, for filling before `set_len`.
    pub fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: the memory is allocated, zero-initialized and exclusively ours.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if Self::mapped(self.allocated) {
            // SAFETY: mapped in `with_capacity` with exactly this address and length.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.allocated) };
            return;
        }
        // SAFETY: allocated in `with_capacity` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.allocated)) };
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are allocated and initialized.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the buffer is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: the memory is a heap allocation that does not move with the value.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.capacity
    }
}

// SAFETY: as above; all of the capacity is writable.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        assert!(len <= self.capacity, "{len} bytes beyond the capacity");
        self.len = self.len.max(len);
    }
}

/// The capacities of the pool's size classes, ascending. Below the huge-page threshold the
/// classes go in steps of ×1.5 and ×4/3 (powers of two and the halfway points between
/// them, every one a multiple of the alignment), so a buffer wastes at most a third of
/// itself, not half: the batch cache keeps group buffers for long and is charged for all
/// of them. From the threshold on a buffer is allocated in whole huge pages anyway, so
/// the classes are multiples of the huge page.
const CLASS_CAPACITIES: [usize; 19] = [
    4 << 10,
    8 << 10,
    12 << 10,
    16 << 10,
    24 << 10,
    32 << 10,
    48 << 10,
    64 << 10,
    96 << 10,
    128 << 10,
    192 << 10,
    256 << 10,
    384 << 10,
    512 << 10,
    768 << 10,
    2 << 20,
    4 << 20,
    6 << 20,
    8 << 20,
];
const SIZE_CLASSES: usize = CLASS_CAPACITIES.len();
/// How much larger than the size asked an idle buffer [`BufPool::get_for_write`] hands out
/// may be.
const BUF_POOL_LARGER_SERVED_FACTOR: usize = 2;
const _: () = assert!(CLASS_CAPACITIES[0] == BUF_SIZE_CLASS_MIN_BYTES);
const _: () = assert!(CLASS_CAPACITIES[SIZE_CLASSES - 1] == BUF_SIZE_CLASS_MAX_BYTES);
const _: () = assert!(BUF_SIZE_CLASS_MIN_BYTES % BUF_ALIGN_BYTES == 0);
const _: () = assert!(CLASS_CAPACITIES[14] < BUF_HUGE_PAGE_THRESHOLD_BYTES);
const _: () = assert!(CLASS_CAPACITIES[15] % HUGE_PAGE_BYTES == 0);

/// Counters of a pool's work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out from a free list, without allocating.
    pub reused: u64,
    /// Buffers allocated because their class had none free (or was too large to pool).
    pub allocated: u64,
    /// Bytes of the buffers kept idle for reuse now.
    pub idle_bytes: u64,
}

struct PoolInner {
    free: RefCell<[Vec<AlignedBuf>; SIZE_CLASSES]>,
    stats: RefCell<PoolStats>,
}

/// A shard's pool of aligned, reusable buffers.
#[derive(Clone)]
pub struct BufPool {
    inner: Rc<PoolInner>,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool::new()
    }
}

impl BufPool {
    /// An empty pool; buffers are allocated on first use and recycled after.
    pub fn new() -> BufPool {
        let inner = PoolInner {
            free: RefCell::new(std::array::from_fn(|_| Vec::new())),
            stats: RefCell::new(PoolStats::default()),
        };
        BufPool {
            inner: Rc::new(inner),
        }
    }

    /// A buffer with at least `capacity` bytes and length 0, of the smallest class that
    /// holds them (a read that fills the buffer reads that class's capacity).
    pub fn get(&self, capacity: usize) -> PooledBuf {
        self.get_from(capacity, 0)
    }

    /// Like [`get`](Self::get), but when the class asked for has no idle buffer, an idle
    /// one of a larger class serves if it is at most twice the size asked: for data written
    /// by its length, where an unused tail of less than half the buffer costs less than
    /// mapping a new buffer and unmapping an idle one.
    pub fn get_for_write(&self, capacity: usize) -> PooledBuf {
        self.get_from(
            capacity,
            capacity.saturating_mul(BUF_POOL_LARGER_SERVED_FACTOR),
        )
    }

    /// A buffer of the class holding `capacity`, or an idle one of a larger class of at
    /// most `capacity_max` bytes.
    fn get_from(&self, capacity: usize, capacity_max: usize) -> PooledBuf {
        let Some(class) = size_class(capacity) else {
            self.inner.stats.borrow_mut().allocated += 1;
            return PooledBuf {
                buf: Some(AlignedBuf::with_capacity(capacity)),
                pool: Weak::new(),
            };
        };
        let reused = {
            let mut free = self.inner.free.borrow_mut();
            let mut classes = (class..SIZE_CLASSES)
                .take_while(|&larger| larger == class || class_capacity(larger) <= capacity_max);
            classes.find_map(|larger| free[larger].pop())
        };
        let buf = if let Some(mut buf) = reused {
            let mut stats = self.inner.stats.borrow_mut();
            stats.reused += 1;
            stats.idle_bytes -= buf.capacity() as u64;
            drop(stats);
            buf.clear();
            buf
        } else {
            self.inner.stats.borrow_mut().allocated += 1;
            AlignedBuf::with_capacity(class_capacity(class))
        };
        PooledBuf {
            buf: Some(buf),
            pool: Rc::downgrade(&self.inner),
        }
    }

    /// How many buffers were reused and allocated so far.
    pub fn stats(&self) -> PoolStats {
        *self.inner.stats.borrow()
    }

    /// Takes back a buffer that left a pool through [`PooledBuf::detach`] (this pool's or
    /// another shard's). A buffer whose capacity is not exactly a size class is freed.
    pub fn recycle(&self, buf: AlignedBuf) {
        self.inner.put(buf);
    }
}

impl PoolInner {
    /// Keeps `buf` for reuse in the class of its own capacity. The capacity is checked here,
    /// not trusted from where the buffer came from: a `PooledBuf` can have another buffer
    /// swapped in through `DerefMut`, and a buffer handed to `recycle` may come from
    /// anywhere. One whose capacity is not exactly a class's is freed.
    fn put(&self, buf: AlignedBuf) {
        let Some(class) = size_class(buf.capacity()) else {
            return;
        };
        if class_capacity(class) != buf.capacity() {
            return;
        }
        let capacity = buf.capacity() as u64;
        let mut stats = self.stats.borrow_mut();
        let mut free = self.free.borrow_mut();
        let own_class_bytes = free[class].len() as u64 * capacity;
        if own_class_bytes + capacity > BUF_POOL_RETAINED_BYTES_MAX as u64 {
            // Even with every other class displaced it would not fit.
            return;
        }
        // The idle buffers follow what is freed now: one coming back to a full pool
        // displaces idle buffers of the class holding the most idle bytes. Refusing it
        // instead would leave the pool full of a class nobody asks for any more while
        // every buffer of the class in use is mapped anew (46 % of a produce run's
        // buffers were, before).
        while stats.idle_bytes + capacity > BUF_POOL_RETAINED_BYTES_MAX as u64 {
            let fullest = (0..SIZE_CLASSES)
                .filter(|&other| other != class && !free[other].is_empty())
                .max_by_key(|&other| free[other].len() * class_capacity(other));
            let Some(displaced) = fullest.and_then(|other| free[other].pop()) else {
                // Only its own class is idle: the pool already has plenty of these.
                return;
            };
            stats.idle_bytes -= displaced.capacity() as u64;
        }
        stats.idle_bytes += capacity;
        free[class].push(buf);
    }
}

/// The smallest class holding `capacity` bytes; `None` above the largest.
fn size_class(capacity: usize) -> Option<usize> {
    let class = CLASS_CAPACITIES.partition_point(|&class| class < capacity);
    (class < SIZE_CLASSES).then_some(class)
}

fn class_capacity(class: usize) -> usize {
    CLASS_CAPACITIES[class]
}

/// A buffer from a [`BufPool`]; it goes back to the pool when dropped.
pub struct PooledBuf {
    buf: Option<AlignedBuf>,
    pool: Weak<PoolInner>,
}

impl PooledBuf {
    fn inner(&self) -> &AlignedBuf {
        match &self.buf {
            Some(buf) => buf,
            None => unreachable!("pooled buffer used after drop"),
        }
    }

    fn inner_mut(&mut self) -> &mut AlignedBuf {
        match &mut self.buf {
            Some(buf) => buf,
            None => unreachable!("pooled buffer used after drop"),
        }
    }

    /// Takes the buffer out of the pool's care, to keep it longer than a pooled buffer
    /// lives or to move it to another thread: it is freed when dropped, unless it is
    /// handed back with [`BufPool::recycle`].
    pub fn detach(mut self) -> AlignedBuf {
        match self.buf.take() {
            Some(buf) => buf,
            None => unreachable!("pooled buffer used after drop"),
        }
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let (Some(buf), Some(pool)) = (self.buf.take(), self.pool.upgrade()) {
            pool.put(buf);
        }
    }
}

impl Deref for PooledBuf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.inner()
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.inner_mut()
    }
}

// SAFETY: forwards to the inner AlignedBuf, whose memory is stable.
unsafe impl IoBuf for PooledBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.inner().stable_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.inner().bytes_init()
    }
    fn bytes_total(&self) -> usize {
        self.inner().bytes_total()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for PooledBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.inner_mut().stable_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        // SAFETY: forwarded with the caller's promise.
        unsafe { self.inner_mut().set_init(len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_freed_buffers_without_allocating() {
        let pool = BufPool::new();
        let first = pool.get(10_000);
        assert_eq!(first.capacity(), 12288, "rounded up to its class");
        assert_eq!(first.stable_ptr() as usize % BUF_ALIGN_BYTES, 0);
        let address = first.stable_ptr();
        drop(first);
        let second = pool.get(12288);
        assert_eq!(second.stable_ptr(), address, "the freed buffer came back");
        assert!(second.is_empty(), "a reused buffer starts empty");
        assert_eq!(
            pool.stats(),
            PoolStats {
                reused: 1,
                allocated: 1,
                idle_bytes: 0,
            }
        );
    }

    #[test]
    // Hundreds of MiB, zeroed byte by byte in the interpreter; the mapped path is not
    // compiled under Miri anyway.
    #[cfg_attr(miri, ignore)]
    fn the_pool_keeps_a_bounded_number_of_idle_bytes_over_all_classes() {
        let pool = BufPool::new();
        // More than the bound in each of three classes, all freed at once.
        let sizes = [64 << 10, 1 << 20, 8 << 20];
        let held: Vec<PooledBuf> = sizes
            .iter()
            .flat_map(|&size| (0..BUF_POOL_RETAINED_BYTES_MAX / size + 2).map(move |_| size))
            .map(|size| pool.get(size))
            .collect();
        drop(held);
        let idle = pool.stats().idle_bytes;
        assert!(idle <= BUF_POOL_RETAINED_BYTES_MAX as u64, "{idle} idle");
        assert!(idle > 0);
        let kept: usize = pool
            .inner
            .free
            .borrow()
            .iter()
            .flatten()
            .map(AlignedBuf::capacity)
            .sum();
        assert_eq!(kept as u64, idle, "the count matches the free lists");
        // Taking one back out lowers the count by its capacity (the class freed last is
        // the one idle now).
        let again = pool.get(8 << 20);
        assert_eq!(pool.stats().idle_bytes, idle - again.capacity() as u64);
    }

    #[test]
    // Hundreds of MiB, zeroed byte by byte in the interpreter; the mapped path is not
    // compiled under Miri anyway.
    #[cfg_attr(miri, ignore)]
    fn a_buffer_freed_into_a_full_pool_displaces_the_class_holding_the_most() {
        let pool = BufPool::new();
        let old_size = 1 << 20;
        let new_size = 192 << 10;
        let old: Vec<PooledBuf> = (0..BUF_POOL_RETAINED_BYTES_MAX / old_size)
            .map(|_| pool.get(old_size))
            .collect();
        drop(old);
        assert_eq!(pool.stats().idle_bytes, BUF_POOL_RETAINED_BYTES_MAX as u64);
        // The sizes in use change: the new class's buffers are kept as they come back...
        let new: Vec<PooledBuf> = (0..8).map(|_| pool.get(new_size)).collect();
        let allocated = pool.stats().allocated;
        drop(new);
        let idle = pool.stats().idle_bytes;
        assert!(idle <= BUF_POOL_RETAINED_BYTES_MAX as u64, "{idle} idle");
        // ...and handed out again without allocating.
        let again: Vec<PooledBuf> = (0..8).map(|_| pool.get(new_size)).collect();
        assert_eq!(pool.stats().allocated, allocated, "all 8 reused");
        drop(again);
        // A class alone in a full pool is not displaced by its own kind.
        let idle_before = pool.stats().idle_bytes;
        let spare: Vec<PooledBuf> = (0..=BUF_POOL_RETAINED_BYTES_MAX / old_size)
            .map(|_| pool.get(old_size))
            .collect();
        drop(spare);
        assert!(pool.stats().idle_bytes <= BUF_POOL_RETAINED_BYTES_MAX as u64);
        assert!(pool.stats().idle_bytes >= idle_before);
    }

    #[test]
    // Hundreds of MiB, zeroed byte by byte in the interpreter; the mapped path is not
    // compiled under Miri anyway.
    #[cfg_attr(miri, ignore)]
    fn mapped_buffers_are_aligned_whole_and_writable_to_the_last_byte() {
        for capacity in [
            BUF_MMAP_THRESHOLD_BYTES - BUF_ALIGN_BYTES,
            BUF_MMAP_THRESHOLD_BYTES,
            BUF_HUGE_PAGE_THRESHOLD_BYTES - BUF_ALIGN_BYTES,
            BUF_HUGE_PAGE_THRESHOLD_BYTES,
            3 * HUGE_PAGE_BYTES + BUF_ALIGN_BYTES,
        ] {
            let mut buf = AlignedBuf::with_capacity(capacity);
            let align = if capacity >= BUF_HUGE_PAGE_THRESHOLD_BYTES {
                HUGE_PAGE_BYTES
            } else {
                BUF_ALIGN_BYTES
            };
            assert_eq!(buf.stable_ptr() as usize % align, 0, "{capacity}");
            let full = buf.full_mut();
            assert!(full.iter().all(|&byte| byte == 0), "{capacity}: zeroed");
            full.fill(0xA5);
            assert!(full.iter().all(|&byte| byte == 0xA5));
        }
    }

    #[test]
    fn a_write_buffer_may_come_from_a_larger_idle_class_a_read_buffer_not() {
        let pool = BufPool::new();
        let idle = pool.get(128 << 10);
        let idle_address = idle.stable_ptr();
        drop(idle);
        // Filled to its capacity, a read buffer must be of the class asked for.
        let read = pool.get(96 << 10);
        assert_eq!(read.capacity(), 96 << 10);
        drop(read);
        // The 96 KiB one just freed is taken first...
        let write = pool.get_for_write(96 << 10);
        assert_eq!(write.capacity(), 96 << 10);
        // ...then the 128 KiB one, one class up, rather than a new buffer.
        let allocated = pool.stats().allocated;
        let larger = pool.get_for_write(96 << 10);
        assert_eq!(larger.stable_ptr(), idle_address);
        assert_eq!(pool.stats().allocated, allocated);
        // More than twice the size asked is too large: a new buffer of the class asked for.
        drop(larger);
        drop(write);
        drop(pool.get(256 << 10));
        let held = [pool.get_for_write(96 << 10), pool.get_for_write(96 << 10)];
        assert_eq!(held[1].capacity(), 128 << 10);
        let small = pool.get_for_write(100 << 10);
        assert_eq!(
            small.capacity(),
            128 << 10,
            "256 KiB is more than twice 100 KiB"
        );
        // The 256 KiB buffer and this one were allocated.
        assert_eq!(pool.stats().allocated, allocated + 2);
    }

    #[test]
    fn oversized_requests_are_aligned_and_not_retained() {
        let pool = BufPool::new();
        let big = pool.get(BUF_SIZE_CLASS_MAX_BYTES + 1);
        assert!(big.capacity() > BUF_SIZE_CLASS_MAX_BYTES);
        assert_eq!(big.stable_ptr() as usize % BUF_ALIGN_BYTES, 0);
        drop(big);
        let _again = pool.get(BUF_SIZE_CLASS_MAX_BYTES + 1);
        assert_eq!(pool.stats().allocated, 2);
    }

    #[test]
    fn large_buffers_are_huge_page_aligned_and_zeroed() {
        let buf = AlignedBuf::with_capacity(BUF_HUGE_PAGE_THRESHOLD_BYTES);
        assert_eq!(buf.stable_ptr() as usize % HUGE_PAGE_BYTES, 0);
        assert_eq!(
            buf.capacity(),
            BUF_HUGE_PAGE_THRESHOLD_BYTES,
            "capacity is what was asked"
        );
        let mut buf = buf;
        assert!(buf.full_mut().iter().all(|&b| b == 0));
    }

    #[test]
    fn size_classes_cover_min_to_max() {
        assert_eq!(size_class(0), Some(0));
        assert_eq!(size_class(4096), Some(0));
        assert_eq!(size_class(4097), Some(1));
        assert_eq!(size_class(BUF_SIZE_CLASS_MAX_BYTES), Some(SIZE_CLASSES - 1));
        assert_eq!(size_class(BUF_SIZE_CLASS_MAX_BYTES + 1), None);
        // From 8 KiB up to the huge-page threshold a class wastes at most a third of itself.
        for size in (8192..BUF_HUGE_PAGE_THRESHOLD_BYTES * 3 / 4).step_by(4096) {
            let capacity = class_capacity(size_class(size + 1).unwrap());
            assert!(
                capacity > size && capacity * 2 <= (size + 1) * 3,
                "{size}: {capacity}"
            );
            assert_eq!(capacity % BUF_ALIGN_BYTES, 0);
        }
    }

    #[test]
    fn aligned_buffers_refuse_sizes_that_overflow_when_rounded_up() {
        let too_large = [
            usize::MAX,
            // Rounds up to a whole page fine, then overflows rounding to a huge page.
            usize::MAX - (BUF_ALIGN_BYTES - 1),
            isize::MAX as usize,
            isize::MAX as usize + 1,
        ];
        for capacity in too_large {
            let Err(panic) = std::panic::catch_unwind(|| AlignedBuf::with_capacity(capacity))
            else {
                panic!("{capacity}: an impossible size must not allocate");
            };
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                message.contains("capacity overflow"),
                "{capacity}: {message}"
            );
        }
        assert_eq!(AlignedBuf::rounded_sizes(0), Some((4096, 4096)));
        assert_eq!(
            AlignedBuf::rounded_sizes(BUF_HUGE_PAGE_THRESHOLD_BYTES + 1),
            Some((BUF_HUGE_PAGE_THRESHOLD_BYTES + 4096, HUGE_PAGE_BYTES))
        );
    }

    #[test]
    fn a_buffer_swapped_into_a_pooled_one_returns_to_its_own_class() {
        let pool = BufPool::new();
        let mut pooled = pool.get(12 << 10);
        let mut larger = AlignedBuf::with_capacity(16 << 10);
        let larger_address = larger.stable_ptr();
        std::mem::swap(&mut *pooled, &mut larger);
        drop(larger);
        drop(pooled);
        let small = pool.get(12 << 10);
        assert_ne!(
            small.stable_ptr(),
            larger_address,
            "a 16 KiB buffer served 12 KiB"
        );
        assert_eq!(small.capacity(), 12 << 10);
        let large = pool.get(16 << 10);
        assert_eq!(
            large.stable_ptr(),
            larger_address,
            "kept in the 16 KiB class"
        );

        // A capacity that is no class's is freed, not pooled.
        let mut pooled = pool.get(4096);
        let mut odd = AlignedBuf::with_capacity(20 << 10);
        std::mem::swap(&mut *pooled, &mut odd);
        drop(pooled);
        let before = pool.stats();
        drop(pool.get(20 << 10));
        assert_eq!(pool.stats().allocated, before.allocated + 1);
    }

    #[test]
    fn set_init_only_ever_grows_the_initialized_part() {
        fn check<B: IoBufMut>(mut buf: B, name: &str) {
            let init = buf.bytes_init();
            assert!(init >= 8 && buf.bytes_total() > init + 8, "{name}");
            // SAFETY: every buffer checked here is fully initialized memory; no byte is
            // read that was not written.
            unsafe { buf.set_init(4) };
            assert_eq!(buf.bytes_init(), init, "{name}: shrank");
            // SAFETY: as above.
            unsafe { buf.set_init(init + 8) };
            assert_eq!(buf.bytes_init(), init + 8, "{name}: did not grow");
        }
        let mut vec = vec![0u8; 64];
        vec.truncate(16);
        check(vec, "Vec");
        let mut bytes = bytes::BytesMut::zeroed(64);
        bytes.truncate(16);
        check(bytes, "BytesMut");
        let mut aligned = AlignedBuf::with_capacity(4096);
        aligned.set_len(16);
        check(aligned, "AlignedBuf");
        let pool = BufPool::new();
        let mut pooled = pool.get(4096);
        pooled.set_len(16);
        check(pooled, "PooledBuf");
        let mut vec = vec![0u8; 64];
        vec.truncate(16);
        check(vec.slice(4..64), "Slice");
    }

    #[test]
    fn a_slice_past_the_initialized_part_records_nothing() {
        let mut buf = AlignedBuf::with_capacity(4096);
        buf.set_len(8);
        let mut slice = buf.slice(16..32);
        // SAFETY: AlignedBuf memory is zeroed at allocation, so it is initialized; the
        // test checks only the bookkeeping.
        unsafe { slice.set_init(4) };
        assert_eq!(slice.bytes_init(), 0);
        assert_eq!(
            slice.into_inner().bytes_init(),
            8,
            "bytes 8..16 were never written and must not count as initialized"
        );

        // Starting right at the initialized end is fine.
        let mut buf = AlignedBuf::with_capacity(4096);
        buf.set_len(8);
        let mut slice = buf.slice(8..32);
        // SAFETY: as above.
        unsafe { slice.set_init(4) };
        assert_eq!(slice.into_inner().bytes_init(), 12);
    }

    #[test]
    fn slice_views_part_of_a_buffer() {
        let slice = b"hello world".to_vec().slice(6..11);
        assert_eq!(slice.bytes_init(), 5);
        // SAFETY: reading 5 initialized bytes of a live buffer.
        let bytes = unsafe { std::slice::from_raw_parts(slice.stable_ptr(), 5) };
        assert_eq!(bytes, b"world");
        assert_eq!(slice.into_inner(), b"hello world");
    }
}
