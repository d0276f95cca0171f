//! Fetches of a direct-I/O log, served from the shard's batch cache (`log/cache.rs`).
//!
//! A fetch takes whole batches from the cache when it holds the offset asked for: what
//! the log wrote recently is there (every group commit of a direct-I/O log is inserted as
//! it completes, see `log/group.rs`). On a miss the log reads a large aligned chunk of the
//! segment with O_DIRECT, from the index entry at or before the offset, into a pooled
//! buffer; the whole batches in it go into the cache and the fetch is served from them.
//!
//! Read-ahead: after every fetch that did not reach the high watermark, if fewer than
//! [`BATCH_CACHE_READAHEAD_BYTES`] after it are cached, one task per log reads the next
//! chunks into the cache, so a catching-up consumer's next fetches find their batches in
//! memory while the disk is already reading further. The task stops at the high watermark,
//! on any error (the fetch that needs the bytes reports it), or once enough is cached. A
//! fetch that misses while the task runs waits for the task's next chunk (a few times at
//! most) before it reads the disk itself: the chunk is most likely the one it needs, and
//! reading it twice would halve what the disk gives the consumer.
//!
//! Nothing read here changes the log: a read that finishes after a truncation inserts
//! nothing (the cache's generation check), and bytes past the high watermark or the
//! visible end of the active segment are never kept.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::cache::{Run, CACHE_HIT_BYTES, CACHE_MISS_BYTES, CACHE_READ_BYTES};
use super::read::{read_target, ReadTarget};
use super::scan::{walk_bytes, ScanStop, Walk};
use super::segment::{segment_path, BatchHeader, HEADER_PREFIX_BYTES};
use super::{LogError, PartitionLog, Shared};
use crate::limits::{BATCH_CACHE_READAHEAD_BYTES, BATCH_CACHE_READ_CHUNK_BYTES, BUF_ALIGN_BYTES};
use crate::rt;
use crate::storage::{OpenFlags, Storage, StorageFile};
use crate::topic::IoMode;

impl<S: Storage> PartitionLog<S> {
    /// The batches from the one holding `offset`, up to `max_bytes` (at least one), from the
    /// batch cache, reading them from the disk into it on a miss; `None` when the log does
    /// not read through the cache (buffered I/O, or the cache is off).
    pub(super) async fn read_cached(
        &self,
        offset: i64,
        max_bytes: u64,
    ) -> Result<Option<Vec<Bytes>>, LogError> {
        let shared = &self.shared;
        if !uses_cache(shared) {
            return Ok(None);
        }
        let key = cache_key(shared);
        let high_watermark = shared.offsets().high_watermark;
        let hit = shared.cache.get(key, offset, max_bytes, high_watermark);
        let counter = if hit.is_some() {
            &CACHE_HIT_BYTES
        } else {
            &CACHE_MISS_BYTES
        };
        let found = if let Some(found) = hit {
            found
        } else if let Some(found) = after_read_ahead(shared, offset, max_bytes).await {
            found
        } else {
            load(shared, offset, max_bytes).await?;
            let Some(found) = shared.cache.get(key, offset, max_bytes, high_watermark) else {
                // The cache could not keep the chunk (a budget smaller than one read): the
                // fetch is answered from the file.
                return Ok(None);
            };
            found
        };
        let (pieces, served_next) = found;
        let bytes: usize = pieces.iter().map(Bytes::len).sum();
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
        read_ahead(shared, served_next);
        Ok(Some(pieces))
    }
}

/// How many read-ahead chunks a missing fetch waits for before it reads the disk itself.
const READAHEAD_WAITS_MAX: usize = 4;

/// Waits for the running read-ahead task's next chunks (at most
/// [`READAHEAD_WAITS_MAX`]) until the cache holds `offset`; what it then holds, or `None`.
async fn after_read_ahead<S: Storage>(
    shared: &Shared<S>,
    offset: i64,
    max_bytes: u64,
) -> Option<(Vec<Bytes>, i64)> {
    let key = cache_key(shared);
    for _ in 0..READAHEAD_WAITS_MAX {
        if !shared.reading_ahead.get() {
            return None;
        }
        let seen = shared.readahead_steps.get();
        std::future::poll_fn(|cx| {
            if shared.readahead_steps.get() != seen {
                return std::task::Poll::Ready(());
            }
            shared
                .readahead_waiters
                .borrow_mut()
                .push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        let high_watermark = shared.offsets().high_watermark;
        if let Some(found) = shared.cache.get(key, offset, max_bytes, high_watermark) {
            return Some(found);
        }
    }
    None
}

/// The read-ahead task finished a chunk (or stopped): wakes the fetches waiting for it.
fn read_ahead_stepped<S: Storage>(shared: &Shared<S>) {
    shared.readahead_steps.set(shared.readahead_steps.get() + 1);
    for waker in shared.readahead_waiters.borrow_mut().drain(..) {
        waker.wake();
    }
}

/// Whether fetches of the log go through the batch cache.
fn uses_cache<S: Storage>(shared: &Shared<S>) -> bool {
    shared.cache.enabled() && shared.state.borrow().config.io_mode() == IoMode::Direct
}

/// The log's key in the shard's cache, registered on first use.
pub(super) fn cache_key<S: Storage>(shared: &Shared<S>) -> u64 {
    if let Some(key) = shared.cache_key.get() {
        return key;
    }
    let key = shared.cache.register();
    shared.cache_key.set(Some(key));
    key
}

/// Starts the log's read-ahead task if fewer than [`BATCH_CACHE_READAHEAD_BYTES`] from
/// `offset` on are cached and none is running.
fn read_ahead<S: Storage>(shared: &Rc<Shared<S>>, offset: i64) {
    if shared.reading_ahead.get() || gap_before_high_watermark(shared, offset).is_none() {
        return;
    }
    shared.reading_ahead.set(true);
    let shared = shared.clone();
    let task = rt::spawn_local(async move {
        // Each chunk must move the first gap forward: a cache too small for the
        // read-ahead distance evicts what the task read before, and one too small for a
        // chunk keeps nothing, and either would make the task read forever.
        let mut gap_before = None;
        while let Some(gap) = gap_before_high_watermark(&shared, offset) {
            if gap_before.is_some_and(|before| gap <= before) {
                break;
            }
            gap_before = Some(gap);
            let loaded = load(&shared, gap, 0).await;
            read_ahead_stepped(&shared);
            match loaded {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    tracing::debug!(partition = %shared.id, %error, "read-ahead stopped");
                    break;
                }
            }
        }
        shared.reading_ahead.set(false);
        read_ahead_stepped(&shared);
    });
    task.detach();
}

/// The first offset after `offset` within the read-ahead distance that the cache lacks, if
/// it is below the high watermark.
fn gap_before_high_watermark<S: Storage>(shared: &Shared<S>, offset: i64) -> Option<i64> {
    let high_watermark = shared.offsets().high_watermark;
    if offset >= high_watermark {
        return None;
    }
    let gap = shared
        .cache
        .first_gap(cache_key(shared), offset, BATCH_CACHE_READAHEAD_BYTES)?;
    (gap < high_watermark).then_some(gap)
}

/// Reads the batches from the one holding `offset` into the cache: one aligned O_DIRECT
/// read of at least [`BATCH_CACHE_READ_CHUNK_BYTES`] (more if `bytes_wanted` asks, or if
/// the batch is larger), from the index entry at or before the offset. True if it read
/// any batch and the cache kept it (or held it already).
async fn load<S: Storage>(
    shared: &Shared<S>,
    offset: i64,
    bytes_wanted: u64,
) -> Result<bool, LogError> {
    let key = cache_key(shared);
    let generation = shared.cache.generation(key);
    let high_watermark = shared.offsets().high_watermark;
    let Some(target) = read_target(shared, offset) else {
        return Ok(false);
    };
    let file = direct_reader(shared, &target).await?;
    let block = BUF_ALIGN_BYTES as u64;
    let from = target.start - target.start % block;
    let readable = target.end.next_multiple_of(block).saturating_sub(from);
    // One pooled size class: the chunk, or what the fetch asks plus the bytes before it.
    let mut want = (bytes_wanted + (target.start - from)).max(BATCH_CACHE_READ_CHUNK_BYTES as u64);
    loop {
        let len = want.min(readable).next_multiple_of(block);
        if len == 0 {
            return Ok(false);
        }
        let buf = rt::buf_pool().get(len as usize);
        let (read, buf) = file.read_aligned(from, buf).await;
        let read = read.map_err(|e| shared.error_io("read segment", e))? as u64;
        CACHE_READ_BYTES.fetch_add(read, Ordering::Relaxed);
        let valid = read.min(target.end - from) as usize;
        let skip = (target.start - from) as usize;
        let found = whole_batches(
            &rt::initialized(&buf)[..valid],
            (skip, target.start_offset),
            offset,
            high_watermark,
        );
        let (damaged_at, stop) = match found {
            Batches::Run(batches, range, offset_next) => {
                // The batches from the index entry to the run's end were walked: checked
                // for the file too (not what follows the run, which may be damaged).
                let checked = target.start..from + range.end as u64;
                let run = Run {
                    buf: buf.detach(),
                    range,
                    batches,
                    offset_next,
                };
                let kept = shared.cache.insert_read(key, generation, run);
                if let Some(segment) = shared
                    .state
                    .borrow_mut()
                    .segments
                    .get_mut(&target.base_offset)
                {
                    segment.unverified.remove(checked);
                }
                return Ok(kept);
            }
            Batches::None => return Ok(false),
            // More of the segment is visible: read again, larger.
            Batches::Cut { needed } if len < readable => {
                want = needed.max(want * 2);
                continue;
            }
            // Everything visible is read and no batch holding the offset ends in it.
            Batches::Cut { .. } if read < len => return Ok(false),
            Batches::Cut { .. } => (valid as u64, ScanStop::EndOfFile),
            Batches::Damaged(walked) => {
                (walked.valid_end, walked.stop.unwrap_or(ScanStop::EndOfFile))
            }
        };
        let position = from + damaged_at;
        return Err(super::read::damaged(
            shared, &target, offset, position, stop,
        ));
    }
}

/// The segment's O_DIRECT descriptor, opened (and kept in the segment) on first use.
async fn direct_reader<S: Storage>(
    shared: &Shared<S>,
    target: &ReadTarget<S::File>,
) -> Result<S::File, LogError> {
    if let Some(file) = &target.direct_reader {
        return Ok(file.clone());
    }
    let path = segment_path(&shared.dir, target.base_offset, "log");
    let flags = OpenFlags {
        direct: true,
        ..OpenFlags::READ
    };
    let file = shared
        .storage
        .open(&path, flags)
        .await
        .map_err(|e| shared.error_io("open segment for direct reads", e))?;
    let mut state = shared.state.borrow_mut();
    if let Some(segment) = state.segments.get_mut(&target.base_offset) {
        segment.direct_reader = Some(file.clone());
    }
    Ok(file)
}

/// What a chunk read from a segment holds.
enum Batches {
    /// Whole batches: each one's base offset and start (relative to the range's start),
    /// the range in the chunk, and the offset after the last.
    Run(Vec<(i64, usize)>, std::ops::Range<usize>, i64),
    /// No batch at or after the offset below the limit.
    None,
    /// The batch holding the offset does not end within the chunk: it needs `needed` bytes.
    Cut { needed: u64 },
    /// The batches fail the batch checks before the one holding the offset: where the
    /// valid ones end (relative to the chunk) and why.
    Damaged(Walk),
}

/// The whole batches of `chunk` from the one holding `offset` on, walking them with the
/// batch validator from `skip` (an index position, where the batch with base offset
/// `skip_offset` begins), and none at or past `offset_limit`. Damage after the batch
/// holding `offset` ends the run before it.
fn whole_batches(
    chunk: &[u8],
    (skip, skip_offset): (usize, i64),
    offset: i64,
    offset_limit: i64,
) -> Batches {
    let mut batches = Vec::new();
    let mut range = None::<std::ops::Range<usize>>;
    let mut offset_next = offset;
    let mut limited = false;
    let bytes = chunk.get(skip..).unwrap_or_default();
    let walked = walk_bytes(bytes, skip as u64, skip_offset, |header, position| {
        if header.base_offset >= offset_limit {
            limited = true;
            return false;
        }
        if header.last_offset >= offset {
            let (at, end) = (position as usize, (position + header.size_bytes) as usize);
            let first = range.as_ref().map_or(at, |range| range.start);
            batches.push((header.base_offset, at - first));
            range = Some(first..end);
            offset_next = header.last_offset + 1;
        }
        true
    });
    if let Some(range) = range {
        return Batches::Run(batches, range, offset_next);
    }
    if limited {
        return Batches::None;
    }
    // Within the visible bytes, anything but more of a batch is damage (zeros included).
    if walked.stop.is_some() {
        return Batches::Damaged(walked);
    }
    // The chunk ran out before or inside the batch holding the offset.
    let at = walked.valid_end as usize;
    let needed = chunk
        .get(at..)
        .and_then(BatchHeader::parse)
        .map_or(at + HEADER_PREFIX_BYTES, |header| {
            at + header.size_bytes as usize
        });
    Batches::Cut {
        needed: needed as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;

    fn batch(base_offset: i64, records: usize) -> Vec<u8> {
        let mut builder = BatchBuilder::new().base_offset(base_offset);
        for _ in 0..records {
            builder.push(0, None, Some(&[7u8; 100]), &[]).unwrap();
        }
        builder.build().clone()
    }

    #[test]
    fn a_chunk_yields_the_whole_batches_from_the_one_holding_the_offset() {
        let mut chunk = Vec::new();
        let mut starts = Vec::new();
        for base in [0i64, 3, 6, 9] {
            starts.push(chunk.len());
            chunk.extend_from_slice(&batch(base, 3));
        }
        let Batches::Run(batches, range, next) = whole_batches(&chunk, (0, 0), 4, i64::MAX) else {
            panic!("expected a run");
        };
        assert_eq!(batches.iter().map(|b| b.0).collect::<Vec<_>>(), [3, 6, 9]);
        assert_eq!((range.start, range.end, next), (starts[1], chunk.len(), 12));
        // The limit (high watermark) keeps later batches out.
        let Batches::Run(batches, range, next) = whole_batches(&chunk, (0, 0), 4, 9) else {
            panic!("expected a run");
        };
        assert_eq!((batches.len(), range.end, next), (2, starts[3], 9));
        // A chunk that ends inside the batch holding the offset asks for more.
        let cut = &chunk[..starts[2] + 80];
        assert!(matches!(
            whole_batches(cut, (0, 0), 7, i64::MAX),
            Batches::Cut { needed } if needed as usize == starts[3]
        ));
        // So does one that ends inside its header.
        let cut = &chunk[..starts[2] + 10];
        assert!(matches!(
            whole_batches(cut, (0, 0), 7, i64::MAX),
            Batches::Cut { needed } if needed as usize == starts[2] + HEADER_PREFIX_BYTES
        ));
        // Zeros are not a batch.
        let zeros = vec![0u8; 4096];
        assert!(matches!(
            whole_batches(&zeros, (0, 0), 0, i64::MAX),
            Batches::Damaged(Walk {
                valid_end: 0,
                stop: Some(ScanStop::Zeros { position: 0 }),
                ..
            })
        ));
        // Scanning from an index entry: the batch there must have the entry's offset.
        let Batches::Run(batches, ..) = whole_batches(&chunk, (starts[2], 6), 7, i64::MAX) else {
            panic!("expected a run");
        };
        assert_eq!(batches.len(), 2);
        assert!(matches!(
            whole_batches(&chunk, (starts[2], 5), 7, i64::MAX),
            Batches::Damaged(Walk {
                stop: Some(ScanStop::OffsetGap {
                    offset: 6,
                    expected: 5,
                    ..
                }),
                ..
            })
        ));
    }

    #[test]
    fn a_damaged_batch_is_never_part_of_a_run() {
        let mut chunk = Vec::new();
        let mut starts = Vec::new();
        for base in [0i64, 3, 6, 9] {
            starts.push(chunk.len());
            chunk.extend_from_slice(&batch(base, 3));
        }
        // A flipped bit in the records of the batch at offset 6.
        chunk[starts[2] + 100] ^= 0x10;
        let Batches::Run(batches, range, next) = whole_batches(&chunk, (0, 0), 1, i64::MAX) else {
            panic!("expected a run");
        };
        assert_eq!(batches.iter().map(|b| b.0).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(
            (range.end, next),
            (starts[2], 6),
            "the run ends before the damage"
        );
        for offset in [6, 7, 10] {
            let Batches::Damaged(walked) = whole_batches(&chunk, (0, 0), offset, i64::MAX) else {
                panic!("offset {offset} lies in or behind the damage");
            };
            assert_eq!(walked.valid_end, starts[2] as u64);
            assert!(
                matches!(walked.stop, Some(ScanStop::Invalid { .. })),
                "{:?}",
                walked.stop
            );
        }
        // From an index entry past the damage, the later batches are served.
        let Batches::Run(batches, ..) = whole_batches(&chunk, (starts[3], 9), 10, i64::MAX) else {
            panic!("expected a run");
        };
        assert_eq!(batches, [(9, 0)]);
    }
}
