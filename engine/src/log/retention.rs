//! Dropping data from a partition log: retention by time and size (whole closed segments,
//! oldest first, never past a Raft group's bound), deletion of records below an offset
//! (DeleteRecords), truncation of the end (after a failed write is recovered, by an
//! operator, or by a replica), and a restart of an emptied log at a later offset (a
//! replica catching up with peers whose retention deleted what it lacks). Producer
//! snapshots go with the segments below them; truncation rebuilds the producer state.
//!
//! All of them run on the appender task, between group commits. Files are removed only
//! after the new log start offset is in the checkpoint, and the directory is fsynced after,
//! so a crash in between leaves either the old or the new log start, never a hole.

use std::time::Duration;

use super::checkpoint;
use super::segment::{segment_path, Segment};
use super::{LogError, Shared};
use crate::limits::RETENTION_CHECK_INTERVAL_MS;
use crate::storage::{Storage, StorageFile};

/// How often a log's appender applies retention: what [`set_check_interval_for_this_thread`]
/// set for the thread it runs on (the engine sets each shard's from
/// `EngineConfig::retention_check_interval`), else [`RETENTION_CHECK_INTERVAL_MS`].
pub(crate) fn check_interval() -> Duration {
    CHECK_INTERVAL
        .get()
        .unwrap_or(Duration::from_millis(RETENTION_CHECK_INTERVAL_MS))
}

thread_local! {
    static CHECK_INTERVAL: std::cell::Cell<Option<Duration>> =
        const { std::cell::Cell::new(None) };
}

/// Makes the appenders running on this thread schedule their retention checks `interval`
/// apart, from the next one they schedule (`None`: [`RETENTION_CHECK_INTERVAL_MS`], Kafka's
/// `log.retention.check.interval.ms` default).
pub fn set_check_interval_for_this_thread(interval: Option<Duration>) {
    CHECK_INTERVAL.set(interval);
}

/// Deletes closed segments past the topic's retention; returns how many.
pub(crate) async fn apply<S: Storage>(shared: &Shared<S>, now_ms: i64) -> Result<usize, LogError> {
    let expired: Vec<i64> = {
        let state = shared.state.borrow();
        let retention_ms = state.config.retention_ms();
        let retention_bytes = state.config.retention_bytes();
        let bound = state.retention_bound.unwrap_or(i64::MAX);
        let mut total: u64 = state.segments.values().map(|s| s.size_bytes).sum();
        let closed = state.segments.len().saturating_sub(1);
        let mut expired = Vec::new();
        for segment in state.segments.values().take(closed) {
            if segment.offset_next > bound {
                break;
            }
            let too_old = retention_ms.is_some_and(|ms| {
                segment.max_timestamp != i64::MIN
                    && segment.max_timestamp
                        < now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX))
            });
            let too_big = retention_bytes.is_some_and(|bytes| total - segment.size_bytes >= bytes);
            if !(too_old || too_big) {
                break;
            }
            total -= segment.size_bytes;
            expired.push(segment.base_offset);
        }
        expired
    };
    let Some(&last) = expired.last() else {
        return Ok(0);
    };
    let new_start = shared
        .state
        .borrow()
        .segments
        .range(last + 1..)
        .next()
        .map(|(base, _)| *base);
    if let Some(new_start) = new_start {
        delete_before(shared, new_start).await?;
    }
    Ok(expired.len())
}

/// Moves the log start offset to `offset` (at most the high watermark) and deletes the
/// segments wholly below it. Returns the new log start offset.
pub(crate) async fn delete_before<S: Storage>(
    shared: &Shared<S>,
    offset: i64,
) -> Result<i64, LogError> {
    let (removed, log_start) = {
        let mut state = shared.state.borrow_mut();
        let high_watermark = state.high_watermark();
        if offset > high_watermark {
            return Err(LogError::OffsetOutOfRange {
                partition: shared.id.clone(),
                offset,
                log_start: state.log_start,
                high_watermark,
            });
        }
        if offset <= state.log_start {
            return Ok(state.log_start);
        }
        state.log_start = offset;
        let keep_from = state
            .segments
            .range(..=offset)
            .next_back()
            .map_or(offset, |(base, _)| *base);
        let removed: Vec<i64> = state
            .segments
            .range(..keep_from)
            .map(|(base, _)| *base)
            .collect();
        for base in &removed {
            state.segments.remove(base);
        }
        state.assert_offsets_ordered();
        (removed, state.log_start)
    };
    if let Some(key) = shared.cache_key.get() {
        shared.cache.remove_below(key, log_start);
    }
    checkpoint::write(shared, false).await?;
    remove_segment_files(shared, &removed).await?;
    // Snapshots go with the segments they summarise; the one at the first remaining
    // segment's base (written when it was rolled in) stays.
    let first_base = shared.state.borrow().segments.keys().next().copied();
    if let Some(first_base) = first_base {
        super::producer_snapshot::remove_outside(shared, first_base..=i64::MAX).await?;
    }
    Ok(log_start)
}

/// Empties the log and starts it again at `offset`, past its end
/// ([`super::PartitionLog::restart_at`]). The new segment is created and the directory
/// synced before the checkpoint names the new log start, and the old files go only after.
/// A crash before the old files are gone leaves the old log and an empty segment after a
/// gap, which recovery takes for an unfinished roll: it drops the new segment and opens
/// the old log (whether the checkpoint names the new start or not; the recovered start is
/// clamped to what the segments hold). A Raft replica's journal still holds the fill that
/// asked for the restart, so the fill runs again and restarts the log again.
pub(crate) async fn restart_at<S: Storage>(
    shared: &Shared<S>,
    offset: i64,
) -> Result<i64, LogError> {
    let (log_start, log_end, direct, interval) = {
        let state = shared.state.borrow();
        (
            state.log_start,
            state.log_end,
            state.config.io_mode() == crate::topic::IoMode::Direct,
            state.config.index_interval_bytes(),
        )
    };
    if offset <= log_end {
        return Err(LogError::OffsetOutOfRange {
            partition: shared.id.clone(),
            offset,
            log_start,
            high_watermark: log_end,
        });
    }
    let segment = Segment::open(&shared.storage, &shared.dir, offset, direct, interval)
        .await
        .map_err(|e| shared.error_io("create segment", e))?;
    shared
        .storage
        .sync_dir(&shared.dir)
        .await
        .map_err(|e| shared.error_io("fsync directory", e))?;
    // Right before the state changes: a cache read finishing meanwhile must not keep what
    // goes.
    if let Some(key) = shared.cache_key.get() {
        shared.cache.remove_from(key, log_start);
    }
    let removed: Vec<i64> = {
        let mut state = shared.state.borrow_mut();
        let removed = state.segments.keys().copied().collect();
        state.segments.clear();
        // The old active segment's preallocation goes with its file.
        shared.prealloc.release_all();
        state.segments.insert(offset, segment);
        state.log_start = offset;
        state.log_end = offset;
        state.offset_assign_next = offset;
        state.durable_end = offset;
        state.durable_position = Some(0);
        state.producers = super::producers::Producers::default();
        state.epochs = super::epochs::Epochs::new(offset);
        if let Some(commit) = state.commit.as_mut() {
            commit.on_restarted(offset);
        }
        // A whole cut, made without an await: a commit end looked up before it is looked
        // up again (`log/commit.rs`).
        state.truncations += 2;
        state.assert_at_rest();
        removed
    };
    shared.notify_waiters();
    checkpoint::write(shared, false).await?;
    remove_segment_files(shared, &removed).await?;
    super::producer_snapshot::remove_outside(shared, offset..=i64::MAX).await?;
    Ok(offset)
}

async fn remove_segment_files<S: Storage>(
    shared: &Shared<S>,
    bases: &[i64],
) -> Result<(), LogError> {
    if bases.is_empty() {
        return Ok(());
    }
    for &base in bases {
        for extension in ["log", "index", "timeindex"] {
            let path = segment_path(&shared.dir, base, extension);
            match shared.storage.remove_file(&path).await {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(shared.error_io("remove segment file", error));
                }
                _ => {}
            }
        }
    }
    shared
        .storage
        .sync_dir(&shared.dir)
        .await
        .map_err(|e| shared.error_io("fsync directory", e))
}

/// Cuts the log so it ends before the batch holding `offset`; a replicated log refuses to
/// cut below its commit end. While the cut runs, the log's truncation count is odd, so a
/// commit end is not set from a log half cut (`log/commit.rs`).
pub(crate) async fn truncate_to<S: Storage>(
    shared: &Shared<S>,
    offset: i64,
) -> Result<(), LogError> {
    {
        let mut state = shared.state.borrow_mut();
        state.refuse_cutting_committed(&shared.id, offset)?;
        state.truncations += 1;
    }
    let cut = cut_from(shared, offset).await;
    {
        let mut state = shared.state.borrow_mut();
        state.truncations += 1;
        let log_end = state.log_end;
        if let Some(commit) = state.commit.as_mut() {
            commit.on_truncated(log_end);
        }
        state.epochs.on_truncated(log_end);
    }
    shared.notify_waiters();
    cut
}

/// The cut of [`truncate_to`].
async fn cut_from<S: Storage>(shared: &Shared<S>, offset: i64) -> Result<(), LogError> {
    let (log_start, log_end) = {
        let state = shared.state.borrow();
        (state.log_start, state.log_end)
    };
    if offset >= log_end {
        return Ok(());
    }
    let offset = offset.max(log_start);
    // Before anything changes: a cache read finishing meanwhile must not keep what goes.
    if let Some(key) = shared.cache_key.get() {
        shared.cache.remove_from(key, offset);
    }
    // Whole segments at or after the cut go (but the first segment always stays).
    let removed: Vec<i64> = {
        let mut state = shared.state.borrow_mut();
        let first = state.segments.keys().next().copied().unwrap_or(0);
        let removed: Vec<i64> = state
            .segments
            .range(offset.max(first + 1)..)
            .map(|(base, _)| *base)
            .collect();
        for base in &removed {
            state.segments.remove(base);
        }
        if !removed.is_empty() {
            // The active segment went with them, and its preallocation with its file.
            shared.prealloc.release_all();
        }
        removed
    };
    remove_segment_files(shared, &removed).await?;
    if !removed.is_empty() {
        reopen_active(shared).await?;
    }
    cut_active_segment(shared, offset).await?;
    reload_tail_block(shared).await?;
    // The producer state may hold batches that are gone: rebuild it from the latest
    // snapshot at or below the new end (later ones are removed) and the log after it.
    super::producers::load(shared).await?;
    checkpoint::write(shared, false).await?;
    shared.state.borrow().assert_at_rest();
    Ok(())
}

/// Cuts the active segment before the batch holding `offset` (file, index, log end).
async fn cut_active_segment<S: Storage>(shared: &Shared<S>, offset: i64) -> Result<(), LogError> {
    let (reader, writer, start, end) = {
        let state = shared.state.borrow();
        let Some(active) = state.segments.values().next_back() else {
            unreachable!("the first segment is never removed")
        };
        let (_, start) = active.index.lookup_offset(offset);
        (
            active.reader.clone(),
            active.writer.clone(),
            u64::from(start),
            active.size_bytes,
        )
    };
    let found = super::segment::find_batch(&reader, start, end, offset)
        .await
        .map_err(|e| shared.error_io("read segment", e))?;
    let (cut_offset, cut_position) = found.map_or((offset, end), |(header, position)| {
        (header.base_offset, position)
    });
    writer
        .set_len(cut_position)
        .await
        .map_err(|e| shared.error_io("truncate segment", e))?;
    writer
        .sync_data()
        .await
        .map_err(|e| shared.error_io("fdatasync", e))?;
    {
        let mut state = shared.state.borrow_mut();
        let Some(active) = state.segments.values_mut().next_back() else {
            unreachable!("the first segment is never removed")
        };
        active.index.truncate_to(cut_offset, cut_position as u32);
        active.unverified.truncate(cut_position);
        active.size_bytes = cut_position;
        active.allocated_bytes = cut_position;
        shared.prealloc.release_all();
        active.offset_next = cut_offset;
        if let Some(tail) = active.tail_block.as_mut() {
            tail.clear();
        }
        state.log_end = cut_offset;
        state.offset_assign_next = cut_offset;
        state.durable_end = state.durable_end.min(cut_offset);
        state.durable_position = state.durable_position.map(|p| p.min(cut_position));
        state.assert_offsets_ordered();
    }
    Ok(())
}

/// Makes the new last segment writable after truncation removed those after it.
async fn reopen_active<S: Storage>(shared: &Shared<S>) -> Result<(), LogError> {
    let (base, direct) = {
        let state = shared.state.borrow();
        let Some(active) = state.segments.values().next_back() else {
            return Ok(());
        };
        (
            active.base_offset,
            state.config.io_mode() == crate::topic::IoMode::Direct,
        )
    };
    let mut segment = shared.state.borrow_mut().segments.remove(&base);
    let result = match segment.as_mut() {
        Some(segment) => {
            segment
                .reopen_writable(&shared.storage, &shared.dir, direct)
                .await
        }
        None => Ok(()),
    };
    if let Some(segment) = segment {
        shared.state.borrow_mut().segments.insert(base, segment);
    }
    result.map_err(|e| shared.error_io("reopen segment", e))
}

/// Direct mode: reads the partial last block of the active segment back into memory.
async fn reload_tail_block<S: Storage>(shared: &Shared<S>) -> Result<(), LogError> {
    let (reader, size, direct) = {
        let state = shared.state.borrow();
        let Some(active) = state.segments.values().next_back() else {
            return Ok(());
        };
        (
            active.reader.clone(),
            active.size_bytes,
            active.tail_block.is_some(),
        )
    };
    if !direct {
        return Ok(());
    }
    let block = crate::limits::BUF_ALIGN_BYTES as u64;
    let start = size - size % block;
    let bytes = reader.read_at(start, (size - start) as usize).await;
    let bytes = bytes.map_err(|e| shared.error_io("read tail block", e))?;
    if let Some(tail) = shared
        .state
        .borrow_mut()
        .segments
        .values_mut()
        .next_back()
        .and_then(|s| s.tail_block.as_mut())
    {
        tail.clear();
        tail.extend_from_slice(&bytes);
    }
    Ok(())
}
