//! The shard's cache of recent batches, for logs written with direct I/O.
//!
//! O_DIRECT writes leave the page cache out, so without this a tailing consumer would read
//! from the disk what was written a moment ago. Every group a direct-I/O log writes is
//! kept here (its aligned staging buffer itself, no copy), and so is every chunk a fetch
//! reads from the disk on a miss or ahead of a catching-up consumer (`log/cached_read.rs`).
//! Fetches take the batches from memory and the broker sends them as they are.
//!
//! Layout: one [`BatchCache`] per shard (thread-local, see [`for_this_thread`]), shared by
//! the shard's logs. A log's entries are runs of whole, consecutive batches, keyed by their
//! first offset in a map per log; a run knows where each of its batches starts. A run is
//! charged its whole buffer's allocation, since that is the memory it holds.
//!
//! Eviction resists scans. Runs read from the disk (a consumer catching up, its misses and
//! read-ahead) go on probation, in the order they were read; written groups are protected,
//! in least-recently-used order. When the charged bytes pass the budget, the oldest run on
//! probation goes first while the runs on probation hold more than their floor, the least
//! recently used protected one otherwise; a run is never evicted by its own insert. The
//! floor is a quarter of the budget, raised to the read-ahead windows of four partitions
//! catching up at once (72 MiB) where the budget allows, but at most half of it. A run on
//! probation is protected once a fetch reads again from an offset of it already served: a
//! second reader, not the scan that brought it in, whose fetches move forward; a scan's own
//! reads leave a run where it was, so what a scan has read goes before what it read ahead.
//! So consumers replaying old data hold about the floor, and tailing consumers keep finding
//! the recent batches. Both orders are ticks in a `BTreeMap`.
//!
//! Invariants: runs of one log never overlap (an insert keeps only batches no entry holds);
//! every run starts and ends at batch boundaries; `used_bytes` is the sum of the entries'
//! charges and at most the budget after every insert. Entries are removed when the log is
//! truncated (and a read that started before a truncation inserts nothing, see
//! [`BatchCache::generation`]), when records are deleted below an offset, and when the log
//! goes away. Bytes handed to a send stay valid after eviction: they hold a reference to
//! the buffer, which returns to the shard's pool only when no send holds it any more.
//!
//! The cache is bookkeeping only: it never reads or writes a file, so it is tested without
//! a disk.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::limits::{BATCH_CACHE_READAHEAD_BYTES, BATCH_CACHE_READ_CHUNK_BYTES};
use crate::rt::{self, AlignedBuf};

/// Record bytes fetches found in the cache.
pub static CACHE_HIT_BYTES: AtomicU64 = AtomicU64::new(0);
/// Record bytes fetches did not find in the cache (read from the segment file for them).
pub static CACHE_MISS_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes read from segment files into the cache, for fetch misses and read-ahead.
pub static CACHE_READ_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes of buffers evicted to stay within the budget.
pub static CACHE_EVICTED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes the caches of all shards hold now (their buffers' allocations).
pub static CACHE_USED_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SHARD_CACHE: RefCell<Option<Rc<BatchCache>>> = const { RefCell::new(None) };
}

/// Gives this thread (a shard) a cache of `budget_bytes`; 0 turns caching off. Logs opened
/// on the thread afterwards use it.
pub fn init_for_this_thread(budget_bytes: u64) {
    let cache = Rc::new(BatchCache::new(budget_bytes));
    SHARD_CACHE.with(|slot| *slot.borrow_mut() = Some(cache));
}

/// This thread's cache: the one [`init_for_this_thread`] set up, else a disabled one.
pub(crate) fn for_this_thread() -> Rc<BatchCache> {
    SHARD_CACHE.with(|slot| {
        slot.borrow_mut()
            .get_or_insert_with(|| Rc::new(BatchCache::new(0)))
            .clone()
    })
}

/// Whole consecutive batches in one aligned buffer, as written by a group commit or read
/// from a segment file.
pub(crate) struct Run {
    /// The memory; the batches are `range` of its initialized bytes.
    pub(crate) buf: AlignedBuf,
    pub(crate) range: Range<usize>,
    /// Each batch's base offset and where it starts, relative to `range.start`, ascending.
    pub(crate) batches: Vec<(i64, usize)>,
    /// The offset after the last batch.
    pub(crate) offset_next: i64,
}

/// A run as the cache keeps it: its bytes shareable with sends on any thread.
struct Entry {
    bytes: Bytes,
    buf: Arc<AlignedBuf>,
    batches: Box<[(i64, usize)]>,
    offset_next: i64,
    charge_bytes: u64,
    tick: u64,
    /// On probation (read from the disk): the offset after the furthest batch of it a
    /// fetch was served. `None` once protected (written, or read again).
    probation: Option<i64>,
}

impl Entry {
    /// The index of the batch holding `offset` (which the entry must hold).
    fn batch_holding(&self, offset: i64) -> usize {
        self.batches.partition_point(|(base, _)| *base <= offset) - 1
    }

    /// Where batch `index` ends in `bytes`.
    fn batch_end(&self, index: usize) -> usize {
        self.batches
            .get(index + 1)
            .map_or(self.bytes.len(), |(_, at)| *at)
    }
}

/// The owner behind an entry's `Bytes`: the buffer, alive while a send holds its bytes.
struct SharedBuf(Arc<AlignedBuf>);

impl AsRef<[u8]> for SharedBuf {
    fn as_ref(&self) -> &[u8] {
        rt::initialized(&*self.0)
    }
}

#[derive(Default)]
struct LogEntries {
    entries: BTreeMap<i64, Entry>,
    /// Bumped by every truncation: reads that started before it insert nothing.
    generation: u64,
}

/// What a cache holds, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub budget_bytes: u64,
    pub used_bytes: u64,
    pub entries: usize,
}

/// A shard's cache of recent batches; see the module doc.
pub struct BatchCache {
    inner: RefCell<Inner>,
}

struct Inner {
    budget_bytes: u64,
    used_bytes: u64,
    tick_next: u64,
    log_key_next: u64,
    logs: HashMap<u64, LogEntries>,
    /// Protected entries from least to most recently used: tick → (log, first offset).
    lru: BTreeMap<u64, (u64, i64)>,
    /// Entries on probation, the same way.
    probation: BTreeMap<u64, (u64, i64)>,
    /// The charges of the entries on probation.
    probation_bytes: u64,
}

/// Runs on probation are evicted first only while they hold more than their floor (see
/// [`Inner::probation_floor`]); below it, protected runs go first.
const PROBATION_SHARE_DIVISOR: u64 = 4;
/// The floor is at least the read-ahead windows (the distance and the chunk being read) of
/// this many partitions catching up at once on a shard, budget permitting.
const PROBATION_READERS_MIN: u64 = 4;

impl Drop for BatchCache {
    fn drop(&mut self) {
        let used = self.inner.get_mut().used_bytes;
        CACHE_USED_BYTES.fetch_sub(used, Ordering::Relaxed);
    }
}

impl BatchCache {
    /// An empty cache holding at most `budget_bytes`; 0 disables it.
    pub fn new(budget_bytes: u64) -> BatchCache {
        BatchCache {
            inner: RefCell::new(Inner {
                budget_bytes,
                used_bytes: 0,
                tick_next: 0,
                log_key_next: 0,
                logs: HashMap::new(),
                lru: BTreeMap::new(),
                probation: BTreeMap::new(),
                probation_bytes: 0,
            }),
        }
    }

    /// Whether the cache keeps anything at all.
    pub fn enabled(&self) -> bool {
        self.inner.borrow().budget_bytes > 0
    }

    /// What the cache holds now.
    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.borrow();
        CacheStats {
            budget_bytes: inner.budget_bytes,
            used_bytes: inner.used_bytes,
            entries: inner.lru.len() + inner.probation.len(),
        }
    }

    /// A key for a new log's entries.
    pub(crate) fn register(&self) -> u64 {
        let mut inner = self.inner.borrow_mut();
        let key = inner.log_key_next;
        inner.log_key_next += 1;
        inner.logs.insert(key, LogEntries::default());
        key
    }

    /// The log's truncation count; a read passes what it saw to [`BatchCache::insert`].
    pub(crate) fn generation(&self, log: u64) -> u64 {
        self.inner
            .borrow()
            .logs
            .get(&log)
            .map_or(0, |entries| entries.generation)
    }

    /// Keeps the batches of a written group (protected), as [`BatchCache::insert_read`]
    /// does those read from the disk.
    pub(crate) fn insert(&self, log: u64, generation: u64, run: Run) -> bool {
        self.insert_as(log, generation, run, false)
    }

    /// Keeps the batches of `run` that no entry holds yet (the first run of them), on
    /// probation, unless the log was truncated since `generation` or the run alone exceeds
    /// the budget; then evicts entries until the budget holds (see the module doc). False
    /// when it kept nothing because of the truncation or the budget (so reading more cannot
    /// fill the cache); true when it kept the batches or they were all cached already.
    pub(crate) fn insert_read(&self, log: u64, generation: u64, run: Run) -> bool {
        self.insert_as(log, generation, run, true)
    }

    fn insert_as(&self, log: u64, generation: u64, run: Run, read: bool) -> bool {
        let mut inner = self.inner.borrow_mut();
        let charge_bytes = run.buf.allocated_bytes() as u64;
        let current = inner.logs.get(&log).map(|entries| entries.generation);
        if current != Some(generation) || charge_bytes > inner.budget_bytes {
            drop(inner);
            recycle(Arc::new(run.buf));
            return false;
        }
        let Some(batches) = inner.uncovered(log, &run) else {
            drop(inner);
            recycle(Arc::new(run.buf));
            return true;
        };
        let start = run.range.start + batches.first().map_or(0, |(_, at)| *at);
        let end = match run
            .batches
            .iter()
            .find(|(base, _)| *base > batches.last_offset)
        {
            Some((_, at)) => run.range.start + at,
            None => run.range.end,
        };
        let offset_next = batches.offset_next.unwrap_or(run.offset_next);
        let rebased: Box<[(i64, usize)]> = batches
            .list
            .iter()
            .map(|(base, at)| (*base, run.range.start + at - start))
            .collect();
        let buf = Arc::new(run.buf);
        let bytes = Bytes::from_owner(SharedBuf(buf.clone())).slice(start..end);
        let tick = inner.tick();
        let first = rebased[0].0;
        let entry = Entry {
            bytes,
            buf,
            batches: rebased,
            offset_next,
            charge_bytes,
            tick,
            probation: read.then_some(first),
        };
        inner.used_bytes += charge_bytes;
        CACHE_USED_BYTES.fetch_add(charge_bytes, Ordering::Relaxed);
        if read {
            inner.probation_bytes += charge_bytes;
        }
        if let Some(entries) = inner.logs.get_mut(&log) {
            entries.entries.insert(first, entry);
        }
        // The new run is in neither order yet, so the eviction it causes never takes it.
        let evicted = inner.evict_to_budget();
        if read {
            inner.probation.insert(tick, (log, first));
        } else {
            inner.lru.insert(tick, (log, first));
        }
        drop(inner);
        for buf in evicted {
            recycle(buf);
        }
        true
    }

    /// The batches from the one holding `offset` on, as far as the log's entries hold them
    /// without a gap: whole batches, at least the first, then while they fit `max_bytes`,
    /// and none at or past `offset_limit` (the high watermark); with the offset after the
    /// last one. `None` if no entry holds `offset`.
    pub(crate) fn get(
        &self,
        log: u64,
        offset: i64,
        max_bytes: u64,
        offset_limit: i64,
    ) -> Option<(Vec<Bytes>, i64)> {
        let mut inner = self.inner.borrow_mut();
        let mut pieces = Vec::new();
        let mut touched = Vec::new();
        let mut total = 0u64;
        let mut next = offset;
        let entries = &inner.logs.get(&log)?.entries;
        while let Some((first, entry)) = entries.range(..=next).next_back() {
            if next >= entry.offset_next || (next != offset && *first != next) {
                break;
            }
            let served_from = next;
            let from = entry.batch_holding(next);
            let start = entry.batches[from].1;
            let mut end = start;
            let mut stopped = false;
            for index in from..entry.batches.len() {
                let batch_end = entry.batch_end(index);
                let first_batch = total == 0 && end == start;
                let fits = total + (batch_end - start) as u64 <= max_bytes;
                if entry.batches[index].0 >= offset_limit || !(first_batch || fits) {
                    next = entry.batches[index].0;
                    stopped = true;
                    break;
                }
                end = batch_end;
            }
            if end > start {
                total += (end - start) as u64;
                pieces.push(entry.bytes.slice(start..end));
            }
            if !stopped {
                next = entry.offset_next;
            }
            touched.push((*first, served_from, next));
            if stopped {
                break;
            }
        }
        for (first, served_from, served_next) in touched {
            inner.touch(log, first, served_from, served_next);
        }
        (!pieces.is_empty()).then_some((pieces, next))
    }

    /// Where the entries holding `offset` and after it, without a gap, stop covering the
    /// log within `bytes_wanted` bytes: the first offset that is not cached, or `None` if at
    /// least `bytes_wanted` bytes from `offset` on are.
    pub(crate) fn first_gap(&self, log: u64, offset: i64, bytes_wanted: u64) -> Option<i64> {
        let inner = self.inner.borrow();
        let entries = &inner.logs.get(&log)?.entries;
        let mut covered = 0u64;
        let mut next = offset;
        while covered < bytes_wanted {
            match entries.range(..=next).next_back() {
                Some((_, entry)) if next < entry.offset_next => {
                    let start = entry.batches[entry.batch_holding(next)].1;
                    covered += (entry.bytes.len() - start) as u64;
                    next = entry.offset_next;
                }
                _ => return Some(next),
            }
        }
        None
    }

    /// Drops the entries holding `offset` or later (the log is being cut there), and makes
    /// reads that started before this insert nothing.
    pub(crate) fn remove_from(&self, log: u64, offset: i64) {
        let evicted = {
            let mut inner = self.inner.borrow_mut();
            let Some(entries) = inner.logs.get_mut(&log) else {
                return;
            };
            entries.generation += 1;
            let mut firsts: Vec<i64> = entries.entries.range(offset..).map(|(k, _)| *k).collect();
            if let Some((first, entry)) = entries.entries.range(..offset).next_back() {
                if entry.offset_next > offset {
                    firsts.push(*first);
                }
            }
            inner.remove(log, &firsts)
        };
        evicted.into_iter().for_each(recycle);
    }

    /// Drops the entries wholly below `offset` (the log's new start).
    pub(crate) fn remove_below(&self, log: u64, offset: i64) {
        let evicted = {
            let mut inner = self.inner.borrow_mut();
            let Some(entries) = inner.logs.get(&log) else {
                return;
            };
            let firsts: Vec<i64> = entries
                .entries
                .range(..offset)
                .filter(|(_, entry)| entry.offset_next <= offset)
                .map(|(first, _)| *first)
                .collect();
            inner.remove(log, &firsts)
        };
        evicted.into_iter().for_each(recycle);
    }

    /// Drops every entry of the log and its key (the log was closed or dropped).
    pub(crate) fn forget(&self, log: u64) {
        let evicted = {
            let mut inner = self.inner.borrow_mut();
            let firsts: Vec<i64> = inner
                .logs
                .get(&log)
                .map(|entries| entries.entries.keys().copied().collect())
                .unwrap_or_default();
            let evicted = inner.remove(log, &firsts);
            inner.logs.remove(&log);
            evicted
        };
        evicted.into_iter().for_each(recycle);
    }
}

/// The batches of a run to keep: the first stretch of them no entry holds.
struct Uncovered {
    list: Vec<(i64, usize)>,
    last_offset: i64,
    /// Where the stretch stops before an entry (else the run's end).
    offset_next: Option<i64>,
}

impl Uncovered {
    fn first(&self) -> Option<&(i64, usize)> {
        self.list.first()
    }
}

impl Inner {
    fn tick(&mut self) -> u64 {
        let tick = self.tick_next;
        self.tick_next += 1;
        tick
    }

    /// The first stretch of `run`'s batches that no entry of `log` holds, if any.
    fn uncovered(&self, log: u64, run: &Run) -> Option<Uncovered> {
        let entries = &self.logs.get(&log)?.entries;
        let held = |offset: i64| {
            entries
                .range(..=offset)
                .next_back()
                .is_some_and(|(_, entry)| offset < entry.offset_next)
        };
        let from = run.batches.iter().position(|(base, _)| !held(*base))?;
        let first = run.batches[from].0;
        let stop = entries.range(first + 1..).next().map(|(k, _)| *k);
        let mut list = Vec::new();
        for &(base, at) in &run.batches[from..] {
            if stop.is_some_and(|stop| base >= stop) {
                break;
            }
            list.push((base, at));
        }
        let last_offset = list.last().map_or(first, |(base, _)| *base);
        let offset_next = stop.filter(|stop| *stop < run.offset_next);
        Some(Uncovered {
            list,
            last_offset,
            offset_next,
        })
    }

    /// Marks an entry as just used by a fetch served from `served_from` up to
    /// `served_next`. A protected entry becomes the most recently used. One on probation
    /// that served an offset before is protected (a second reader); otherwise it keeps its
    /// place in the probation order, which is the order runs were read in: the runs a scan
    /// has read go before those it read ahead and has not reached yet.
    fn touch(&mut self, log: u64, first: i64, served_from: i64, served_next: i64) {
        let tick = self.tick();
        let Some(entry) = self
            .logs
            .get_mut(&log)
            .and_then(|entries| entries.entries.get_mut(&first))
        else {
            return;
        };
        match entry.probation {
            Some(furthest) if served_from >= furthest => {
                entry.probation = Some(furthest.max(served_next));
            }
            Some(_) => {
                entry.probation = None;
                let old = std::mem::replace(&mut entry.tick, tick);
                self.probation_bytes -= entry.charge_bytes;
                self.probation.remove(&old);
                self.lru.insert(tick, (log, first));
            }
            None => {
                let old = std::mem::replace(&mut entry.tick, tick);
                self.lru.remove(&old);
                self.lru.insert(tick, (log, first));
            }
        }
    }

    /// What runs on probation may hold before they are evicted first: a quarter of the
    /// budget, or the read-ahead windows of `PROBATION_READERS_MIN` partitions catching up
    /// if that is more, but at most half the budget.
    fn probation_floor(&self) -> u64 {
        let window = BATCH_CACHE_READAHEAD_BYTES + BATCH_CACHE_READ_CHUNK_BYTES as u64;
        let readers = PROBATION_READERS_MIN * window;
        (self.budget_bytes / PROBATION_SHARE_DIVISOR)
            .max(readers)
            .min(self.budget_bytes / 2)
    }

    /// Removes the entries of `log` starting at `firsts`; returns their buffers.
    fn remove(&mut self, log: u64, firsts: &[i64]) -> Vec<Arc<AlignedBuf>> {
        let mut freed = Vec::with_capacity(firsts.len());
        for first in firsts {
            let Some(entry) = self
                .logs
                .get_mut(&log)
                .and_then(|entries| entries.entries.remove(first))
            else {
                continue;
            };
            if entry.probation.is_some() {
                self.probation.remove(&entry.tick);
                self.probation_bytes -= entry.charge_bytes;
            } else {
                self.lru.remove(&entry.tick);
            }
            self.used_bytes -= entry.charge_bytes;
            CACHE_USED_BYTES.fetch_sub(entry.charge_bytes, Ordering::Relaxed);
            freed.push(release(entry));
        }
        freed
    }

    /// Evicts entries until the charges fit the budget: the least recently used on
    /// probation while they hold more than their share, else the least recently used
    /// protected one (see the module doc).
    fn evict_to_budget(&mut self) -> Vec<Arc<AlignedBuf>> {
        let mut freed = Vec::new();
        while self.used_bytes > self.budget_bytes {
            let probation_first = self.probation_bytes > self.probation_floor();
            let oldest = if probation_first {
                self.probation
                    .first_key_value()
                    .or_else(|| self.lru.first_key_value())
            } else {
                self.lru
                    .first_key_value()
                    .or_else(|| self.probation.first_key_value())
            };
            let Some((log, first)) = oldest.map(|(_, v)| *v) else {
                break;
            };
            let before = freed.len();
            freed.extend(self.remove(log, &[first]));
            if freed.len() == before {
                // An LRU record without its entry would loop forever: a bug.
                unreachable!("batch cache LRU names a missing entry");
            }
            CACHE_EVICTED_BYTES.fetch_add(
                freed.last().map_or(0, |buf| buf.allocated_bytes() as u64),
                Ordering::Relaxed,
            );
        }
        freed
    }
}

/// The entry's buffer, with the entry's own view of it released first.
fn release(entry: Entry) -> Arc<AlignedBuf> {
    let Entry { bytes, buf, .. } = entry;
    drop(bytes);
    buf
}

/// Returns a buffer to the shard's pool if nothing else (a send in flight) holds it.
fn recycle(buf: Arc<AlignedBuf>) {
    if let (Ok(buf), Some(pool)) = (Arc::try_unwrap(buf), rt::try_buf_pool()) {
        pool.recycle(buf);
    }
}

#[cfg(test)]
mod tests;
