//! The appender: one task per partition that turns queued appends into group commits.
//!
//! Everything queued while the previous write was in flight becomes one group: offsets are
//! stamped in order, the group goes to the segment tail in one vectored write (buffered) or
//! one aligned staging write (direct), and an fdatasync is linked after it when the flush
//! policy or an `Ack::Durable` waiter needs one. Truncation, retention, record deletion and
//! close are commands on the same queue, so they never race an append. The task also runs
//! the periodic flush (`flush = periodic` with an interval) and the retention check.
//!
//! A failed write or fdatasync poisons the log: the group's waiters get the I/O error,
//! every later append gets `StorageFailed`; nothing is retried as if it had succeeded.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;

use super::segment::{BatchHeader, Segment};
use super::{checkpoint, retention, Ack, Appended, LogError, Shared};
use crate::batch::{self, BatchInfo, TimestampType};
use crate::limits::{BUF_ALIGN_BYTES, CHECKPOINT_INTERVAL_MS, RETENTION_CHECK_INTERVAL_MS};
use crate::rt;
use crate::storage::{Storage, StorageFile};
use crate::topic::{FlushPolicy, IoMode};

/// One queued append.
pub(crate) struct Pending {
    pub(crate) batches: BytesMut,
    pub(crate) info: BatchInfo,
    pub(crate) ack: Ack,
    pub(crate) reply: oneshot::Sender<Result<Appended, LogError>>,
}

pub(crate) type Reply = oneshot::Sender<Result<(), LogError>>;

pub(crate) enum Command {
    Append(Pending),
    Truncate {
        offset: i64,
        reply: Reply,
    },
    DeleteBefore {
        offset: i64,
        reply: oneshot::Sender<Result<i64, LogError>>,
    },
    Retention {
        reply: oneshot::Sender<Result<usize, LogError>>,
    },
    Checkpoint {
        reply: Reply,
    },
    Close {
        reply: Reply,
    },
}

/// What the appender remembers between groups about unsynced data.
struct FlushState {
    unsynced_bytes: u64,
    last_sync: Instant,
    next_retention: Instant,
    next_checkpoint: Instant,
    /// The durable end the last checkpoint recorded.
    checkpointed_durable_end: i64,
}

pub(crate) async fn run<S: Storage>(
    shared: Rc<Shared<S>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let retention_interval = Duration::from_millis(RETENTION_CHECK_INTERVAL_MS);
    let mut flush = FlushState {
        unsynced_bytes: 0,
        last_sync: Instant::now(),
        next_retention: Instant::now() + retention_interval,
        next_checkpoint: Instant::now() + Duration::from_millis(CHECKPOINT_INTERVAL_MS),
        checkpointed_durable_end: shared.state.borrow().durable_end,
    };
    let mut queued = Vec::new();
    loop {
        let deadline = next_deadline(&shared, &flush);
        let first = match rt::timeout(
            deadline.saturating_duration_since(Instant::now()),
            commands.next(),
        )
        .await
        {
            Ok(Some(command)) => command,
            Ok(None) => break,
            Err(rt::Elapsed) => {
                on_timer(&shared, &mut flush).await;
                continue;
            }
        };
        queued.push(first);
        while let Ok(command) = commands.try_recv() {
            queued.push(command);
        }
        if process(&shared, &mut flush, &mut queued).await {
            break;
        }
    }
}

/// When the periodic flush or the retention check is due next.
fn next_deadline<S: Storage>(shared: &Shared<S>, flush: &FlushState) -> Instant {
    let mut deadline = flush.next_retention;
    if shared.state.borrow().durable_end != flush.checkpointed_durable_end {
        deadline = deadline.min(flush.next_checkpoint);
    }
    if flush.unsynced_bytes > 0 {
        if let FlushPolicy::Periodic {
            interval_ms: Some(interval_ms),
            ..
        } = shared.state.borrow().config.flush()
        {
            deadline = deadline.min(flush.last_sync + Duration::from_millis(interval_ms));
        }
    }
    deadline
}

async fn on_timer<S: Storage>(shared: &Shared<S>, flush: &mut FlushState) {
    if flush.unsynced_bytes > 0 {
        let _ = sync(shared, flush).await;
    }
    let durable_end = shared.state.borrow().durable_end;
    if Instant::now() >= flush.next_checkpoint && durable_end != flush.checkpointed_durable_end {
        flush.next_checkpoint = Instant::now() + Duration::from_millis(CHECKPOINT_INTERVAL_MS);
        match checkpoint::write(shared, false).await {
            Ok(()) => flush.checkpointed_durable_end = durable_end,
            Err(error) => tracing::warn!(partition = %shared.id, %error, "checkpoint failed"),
        }
    }
    if Instant::now() >= flush.next_retention {
        flush.next_retention = Instant::now() + Duration::from_millis(RETENTION_CHECK_INTERVAL_MS);
        if let Err(error) = retention::apply(shared, now_ms()).await {
            tracing::warn!(partition = %shared.id, %error, "retention check failed");
        }
    }
}

/// Runs the queued commands in order, grouping consecutive appends. Returns true on close.
async fn process<S: Storage>(
    shared: &Shared<S>,
    flush: &mut FlushState,
    queued: &mut Vec<Command>,
) -> bool {
    let mut group = Vec::new();
    for command in queued.drain(..) {
        if let Command::Append(pending) = command {
            group.push(pending);
            continue;
        }
        commit(shared, flush, std::mem::take(&mut group)).await;
        match command {
            Command::Append(_) => unreachable!("handled above"),
            Command::Truncate { offset, reply } => {
                let _ = reply.send(retention::truncate_to(shared, offset).await);
                flush.unsynced_bytes = 0;
            }
            Command::DeleteBefore { offset, reply } => {
                let _ = reply.send(retention::delete_before(shared, offset).await);
            }
            Command::Retention { reply } => {
                let _ = reply.send(retention::apply(shared, now_ms()).await);
            }
            Command::Checkpoint { reply } => {
                let durable_end = shared.state.borrow().durable_end;
                let written = checkpoint::write(shared, false).await;
                if written.is_ok() {
                    flush.checkpointed_durable_end = durable_end;
                }
                let _ = reply.send(written);
            }
            Command::Close { reply } => {
                let _ = reply.send(close(shared, flush).await);
                return true;
            }
        }
    }
    commit(shared, flush, group).await;
    false
}

/// Milliseconds since the Unix epoch, the unit of Kafka timestamps.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Writes one group and answers its waiters.
async fn commit<S: Storage>(shared: &Shared<S>, flush: &mut FlushState, group: Vec<Pending>) {
    if group.is_empty() {
        return;
    }
    let poisoned = shared.state.borrow().poisoned.clone();
    if let Some(reason) = poisoned {
        fail_all(
            shared,
            &reason,
            group.into_iter().map(|pending| pending.reply),
        );
        return;
    }
    let group_bytes: u64 = group
        .iter()
        .map(|pending| pending.batches.len() as u64)
        .sum();
    let must_sync = needs_sync(shared, flush, &group, group_bytes);
    if let Err(error) = roll_if_needed(shared, flush, group_bytes).await {
        let reason = poison(shared, &error);
        fail_all(
            shared,
            &reason,
            group.into_iter().map(|pending| pending.reply),
        );
        return;
    }
    let stamped = stamp(shared, group);
    let position = active_size(shared);
    let written = write_at_tail(shared, stamped.buffers, position, must_sync).await;
    match written {
        Ok(()) => {
            finish_group(
                shared,
                flush,
                &stamped.headers,
                position,
                group_bytes,
                must_sync,
            );
            for (appended, reply) in stamped.replies {
                let _ = reply.send(Ok(appended));
            }
        }
        Err(error) => {
            let reason = poison(shared, &error);
            fail_all(
                shared,
                &reason,
                stamped.replies.into_iter().map(|(_, reply)| reply),
            );
        }
    }
}

fn active_size<S: Storage>(shared: &Shared<S>) -> u64 {
    let state = shared.state.borrow();
    state
        .segments
        .values()
        .next_back()
        .map_or(0, |segment| segment.size_bytes)
}

/// Marks the log poisoned after `error`; returns the reason later appends will see.
pub(crate) fn poison<S: Storage>(shared: &Shared<S>, error: &LogError) -> String {
    let reason = match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    };
    tracing::error!(partition = %shared.id, reason, "storage failed; partition poisoned");
    shared.state.borrow_mut().poisoned = Some(reason.clone());
    reason
}

fn fail_all<S: Storage>(
    shared: &Shared<S>,
    reason: &str,
    replies: impl Iterator<Item = oneshot::Sender<Result<Appended, LogError>>>,
) {
    for reply in replies {
        let error = LogError::StorageFailed {
            partition: shared.id.clone(),
            reason: reason.to_owned(),
        };
        let _ = reply.send(Err(error));
    }
}

/// Whether this group's write must be followed by an fdatasync.
fn needs_sync<S: Storage>(
    shared: &Shared<S>,
    flush: &FlushState,
    group: &[Pending],
    group_bytes: u64,
) -> bool {
    let policy = shared.state.borrow().config.flush();
    let by_policy = match policy {
        FlushPolicy::Always => true,
        FlushPolicy::Never => false,
        FlushPolicy::Periodic { bytes, .. } => {
            bytes.is_some_and(|bytes| flush.unsynced_bytes + group_bytes >= bytes)
        }
    };
    by_policy || group.iter().any(|pending| pending.ack == Ack::Durable)
}

/// The group's buffers with offsets stamped, the headers for the index, and the waiters
/// with what to tell them.
struct Stamped {
    buffers: Vec<Bytes>,
    headers: Vec<(BatchHeader, u64)>,
    replies: Vec<(Appended, oneshot::Sender<Result<Appended, LogError>>)>,
}

/// Assigns offsets to the group, in queue order, and stamps them (and LogAppendTime) into
/// the batches. Batches were validated on the way in, so their headers parse.
fn stamp<S: Storage>(shared: &Shared<S>, group: Vec<Pending>) -> Stamped {
    let mut state = shared.state.borrow_mut();
    let append_time = (state.config.timestamp_type() == TimestampType::LogAppendTime).then(now_ms);
    let mut stamped = Stamped {
        buffers: Vec::new(),
        headers: Vec::new(),
        replies: Vec::new(),
    };
    let mut position_in_group = 0u64;
    for pending in group {
        let mut batches = pending.batches;
        let offset_first = state.offset_assign_next;
        let mut at = 0usize;
        while at < batches.len() {
            let Some(header) = BatchHeader::parse(&batches[at..]) else {
                break;
            };
            let end = at + header.size_bytes as usize;
            let slice = &mut batches[at..end];
            let stamped_ok = batch::stamp_base_offset(slice, state.offset_assign_next).is_ok()
                && append_time.is_none_or(|time| batch::stamp_log_append_time(slice, time).is_ok());
            assert!(stamped_ok, "a validated batch could not be stamped");
            let count = header.last_offset - header.base_offset + 1;
            let header = BatchHeader {
                base_offset: state.offset_assign_next,
                last_offset: state.offset_assign_next + count - 1,
                max_timestamp: append_time.unwrap_or(header.max_timestamp),
                ..header
            };
            stamped
                .headers
                .push((header, position_in_group + at as u64));
            state.offset_assign_next += count;
            at = end;
        }
        debug_assert_eq!(pending.info.size_bytes, batches.len());
        position_in_group += batches.len() as u64;
        let appended = Appended {
            offset_first,
            offset_next: state.offset_assign_next,
            log_append_time_ms: append_time,
        };
        stamped.buffers.push(batches.freeze());
        stamped.replies.push((appended, pending.reply));
    }
    stamped
}

/// Writes the stamped buffers at `position` of the active segment, preallocating ahead and,
/// in direct mode, going through an aligned staging buffer with the tail block in front.
async fn write_at_tail<S: Storage>(
    shared: &Shared<S>,
    buffers: Vec<Bytes>,
    position: u64,
    sync_after: bool,
) -> Result<(), LogError> {
    let (writer, direct, allocated, step) = {
        let state = shared.state.borrow();
        let Some(segment) = state.segments.values().next_back() else {
            unreachable!("a log always has an active segment");
        };
        (
            segment.writer.clone(),
            segment.direct,
            segment.allocated_bytes,
            state.config.preallocate_bytes(),
        )
    };
    let group_bytes: u64 = buffers.iter().map(|b| b.len() as u64).sum();
    let needed = (position + group_bytes).next_multiple_of(BUF_ALIGN_BYTES as u64);
    if needed > allocated {
        let grow = (needed - allocated).max(step);
        writer
            .allocate(allocated, grow)
            .await
            .map_err(|e| shared.error_io("fallocate", e))?;
        if let Some(segment) = shared.state.borrow_mut().segments.values_mut().next_back() {
            segment.allocated_bytes = allocated + grow;
        }
    }
    if !direct {
        let (result, _) = writer.write_at(buffers, position, sync_after).await;
        return result.map_err(|e| {
            shared.error_io(
                if sync_after {
                    "write+fdatasync"
                } else {
                    "write"
                },
                e,
            )
        });
    }
    write_direct(shared, &writer, &buffers, position, sync_after).await
}

/// O_DIRECT append: the partial last block (kept in memory) and the new bytes are copied
/// into one aligned buffer, zero-padded to whole blocks, and written at the block where
/// the tail starts. The padding lies past the log's end and is overwritten next time.
async fn write_direct<S: Storage>(
    shared: &Shared<S>,
    writer: &S::File,
    buffers: &[Bytes],
    position: u64,
    sync_after: bool,
) -> Result<(), LogError> {
    let block = BUF_ALIGN_BYTES as u64;
    let aligned_start = position - position % block;
    let tail_len = (position - aligned_start) as usize;
    let group_bytes: usize = buffers.iter().map(Bytes::len).sum();
    let padded = (tail_len + group_bytes).next_multiple_of(BUF_ALIGN_BYTES);
    let mut staging = rt::buf_pool().get(padded);
    {
        let state = shared.state.borrow();
        let tail = state
            .segments
            .values()
            .next_back()
            .and_then(|s| s.tail_block.as_ref());
        let Some(tail) = tail else {
            unreachable!("direct segments keep a tail block")
        };
        staging.extend_from_slice(&tail[..tail_len]);
    }
    for buffer in buffers {
        staging.extend_from_slice(buffer);
    }
    let data_end = staging.len();
    staging.full_mut()[data_end..padded].fill(0);
    staging.set_len(padded);
    let new_tail_len = (tail_len + group_bytes) % BUF_ALIGN_BYTES;
    let new_tail_start = tail_len + group_bytes - new_tail_len;
    let (result, staging) = writer
        .write_at(vec![staging], aligned_start, sync_after)
        .await;
    result.map_err(|e| {
        shared.error_io(
            if sync_after {
                "write+fdatasync"
            } else {
                "write"
            },
            e,
        )
    })?;
    let mut state = shared.state.borrow_mut();
    if let Some(tail) = state
        .segments
        .values_mut()
        .next_back()
        .and_then(|s| s.tail_block.as_mut())
    {
        tail.clear();
        tail.extend_from_slice(
            &rt::initialized(&staging[0])[new_tail_start..new_tail_start + new_tail_len],
        );
    }
    Ok(())
}

/// Records a written group: segment size, index entries, log end, durable end.
fn finish_group<S: Storage>(
    shared: &Shared<S>,
    flush: &mut FlushState,
    headers: &[(BatchHeader, u64)],
    position: u64,
    group_bytes: u64,
    synced: bool,
) {
    {
        let mut state = shared.state.borrow_mut();
        let log_end = state.offset_assign_next;
        let Some(segment) = state.segments.values_mut().next_back() else {
            unreachable!("a log always has an active segment");
        };
        for (header, position_in_group) in headers {
            segment.on_batch_written(header, position + position_in_group);
        }
        segment.size_bytes = position + group_bytes;
        state.log_end = log_end;
        if synced {
            state.durable_end = log_end;
            state.durable_position = Some(position + group_bytes);
        }
    }
    if synced {
        flush.unsynced_bytes = 0;
        flush.last_sync = Instant::now();
    } else {
        flush.unsynced_bytes += group_bytes;
    }
    shared.notify_waiters();
}

/// fdatasyncs the active segment; the durable end catches up with the log end.
async fn sync<S: Storage>(shared: &Shared<S>, flush: &mut FlushState) -> Result<(), LogError> {
    let (writer, log_end, size) = {
        let state = shared.state.borrow();
        if state.poisoned.is_some() {
            return Ok(());
        }
        let Some(segment) = state.segments.values().next_back() else {
            return Ok(());
        };
        (segment.writer.clone(), state.log_end, segment.size_bytes)
    };
    if let Err(error) = writer.sync_data().await {
        let error = shared.error_io("fdatasync", error);
        poison(shared, &error);
        return Err(error);
    }
    {
        let mut state = shared.state.borrow_mut();
        state.durable_end = log_end;
        state.durable_position = Some(size);
    }
    flush.unsynced_bytes = 0;
    flush.last_sync = Instant::now();
    shared.notify_waiters();
    Ok(())
}

/// Closes the active segment and opens a new one when the group would overflow it or it
/// is older than `segment_ms`.
async fn roll_if_needed<S: Storage>(
    shared: &Shared<S>,
    flush: &mut FlushState,
    group_bytes: u64,
) -> Result<(), LogError> {
    let (due, base_offset_next, direct, interval) = {
        let state = shared.state.borrow();
        let Some(segment) = state.segments.values().next_back() else {
            unreachable!("a log always has an active segment");
        };
        let too_big = segment.size_bytes + group_bytes > state.config.segment_bytes();
        let too_old = state
            .config
            .segment_ms()
            .is_some_and(|ms| segment.created.elapsed() >= Duration::from_millis(ms));
        (
            segment.size_bytes > 0 && (too_big || too_old),
            state.offset_assign_next,
            state.config.io_mode() == IoMode::Direct,
            state.config.index_interval_bytes(),
        )
    };
    if !due {
        return Ok(());
    }
    seal_active(shared, flush).await?;
    let segment = Segment::open(
        &shared.storage,
        &shared.dir,
        base_offset_next,
        direct,
        interval,
    )
    .await
    .map_err(|e| shared.error_io("create segment", e))?;
    shared
        .storage
        .sync_dir(&shared.dir)
        .await
        .map_err(|e| shared.error_io("fsync directory", e))?;
    let mut state = shared.state.borrow_mut();
    state.segments.insert(base_offset_next, segment);
    state.durable_position = Some(0);
    Ok(())
}

/// Makes the active segment final: trims preallocated bytes, fdatasyncs, writes its index
/// files. The durable end reaches the log end.
async fn seal_active<S: Storage>(
    shared: &Shared<S>,
    flush: &mut FlushState,
) -> Result<(), LogError> {
    let (writer, size) = {
        let state = shared.state.borrow();
        let Some(segment) = state.segments.values().next_back() else {
            return Ok(());
        };
        (segment.writer.clone(), segment.size_bytes)
    };
    writer
        .set_len(size)
        .await
        .map_err(|e| shared.error_io("truncate", e))?;
    if let Some(segment) = shared.state.borrow_mut().segments.values_mut().next_back() {
        segment.allocated_bytes = size;
    }
    sync(shared, flush).await?;
    checkpoint::write_index_files(shared, None).await
}

/// Clean stop: everything written is synced, indexes and the recovery checkpoint written.
async fn close<S: Storage>(shared: &Shared<S>, flush: &mut FlushState) -> Result<(), LogError> {
    if let Some(reason) = shared.state.borrow().poisoned.clone() {
        return Err(LogError::StorageFailed {
            partition: shared.id.clone(),
            reason,
        });
    }
    seal_active(shared, flush).await?;
    checkpoint::write(shared, true).await
}
