//! One group commit's data path: stamping offsets into copies of the queued batches'
//! headers (the records stay in the producers' buffers), and writing them at the tail of
//! the active segment — one vectored write (buffered), or one aligned staging write with
//! the tail block in front (direct) — with an fdatasync linked after it when the group
//! must be durable. The sync is returned in flight; `durability.rs` awaits it.

use std::io;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;

use super::appender::{now_ms, Pending};
use super::cache::Run;
use super::segment::BatchHeader;
use super::{Appended, LogError, Shared, StorageFailure};
use crate::batch::{self, TimestampType};
use crate::limits::{BUF_ALIGN_BYTES, IOVECS_PER_OP_MAX};
use crate::rt::{self, IoBuf};
use crate::storage::{PendingSync, Storage, StorageFile};

/// The group's buffers with offsets stamped, the headers for the index, and the waiters
/// with what to tell them.
pub(crate) struct Stamped {
    pub(crate) buffers: Vec<Bytes>,
    pub(crate) headers: Vec<(BatchHeader, u64)>,
    pub(crate) replies: Vec<(Appended, oneshot::Sender<Result<Appended, LogError>>)>,
}

/// Records sections shorter than this are copied next to their header rather than written
/// from the producer's buffer as an iovec of their own: copying a few KiB costs less than
/// the kernel's per-iovec work, and it keeps a group of many small batches to few iovecs.
const SHARE_RECORDS_FROM_BYTES: usize = 4096;

/// The group's write as a list of buffers, at most [`IOVECS_PER_OP_MAX`]: stamped header
/// copies (and small records sections) packed into one buffer of the group's own, large
/// records sections shared from the producers' buffers without a copy. Once the list is
/// one short of the limit, everything else is copied into the packed buffer.
struct GroupBuffers {
    buffers: Vec<Bytes>,
    packed: BytesMut,
}

impl GroupBuffers {
    fn new() -> GroupBuffers {
        GroupBuffers {
            buffers: Vec::new(),
            packed: BytesMut::new(),
        }
    }

    /// Copies `bytes` to the end of the packed buffer; returns where they start in it.
    fn copy(&mut self, bytes: &[u8]) -> usize {
        let at = self.packed.len();
        self.packed.extend_from_slice(bytes);
        at
    }

    /// Appends `bytes` without copying them if they are large and the list has room
    /// (closing the packed buffer before them).
    fn share(&mut self, bytes: Bytes) {
        // Sharing adds up to two buffers (the packed one and `bytes`), and `finish` one.
        let room = self.buffers.len() + 3 <= IOVECS_PER_OP_MAX;
        if bytes.len() < SHARE_RECORDS_FROM_BYTES || !room {
            self.packed.extend_from_slice(&bytes);
            return;
        }
        if !self.packed.is_empty() {
            self.buffers.push(self.packed.split().freeze());
        }
        self.buffers.push(bytes);
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.packed.is_empty() {
            self.buffers.push(self.packed.freeze());
        }
        self.buffers
    }
}

/// Assigns offsets to the group, in queue order, and stamps them (and LogAppendTime) into
/// copies of the batches' headers; the records sections are written from the producers'
/// buffers (see `GroupBuffers`). Batches were validated on the way in, so their headers
/// parse and stamp.
pub(crate) fn stamp<S: Storage>(shared: &Shared<S>, group: Vec<Pending>) -> Stamped {
    let mut state = shared.state.borrow_mut();
    let append_time = (state.config.timestamp_type() == TimestampType::LogAppendTime).then(now_ms);
    let mut out = GroupBuffers::new();
    let mut stamped = Stamped {
        buffers: Vec::new(),
        headers: Vec::new(),
        replies: Vec::new(),
    };
    let mut position_in_group = 0u64;
    for pending in group {
        let batches = pending.batches;
        let offset_first = state.offset_assign_next;
        // A replicated batch carries the leader's offsets, which `admit` checked continue
        // the log (stamping them again writes the same bytes), and the leader's time.
        let append_time = if pending.replicated {
            None
        } else {
            append_time
        };
        let mut at = 0usize;
        while at < batches.len() {
            // The batches were validated on the way in: one that does not parse now is a
            // bug, and skipping it would write the request short while its waiter is told
            // every offset was written.
            let Some(header) = BatchHeader::parse(&batches[at..]) else {
                unreachable!("a validated batch at byte {at} of an append does not parse");
            };
            let end = at + header.size_bytes as usize;
            assert!(
                header.size_bytes >= batch::HEADER_SIZE_BYTES as u64 && end <= batches.len(),
                "a validated batch at byte {at} has size {}",
                header.size_bytes
            );
            let records_at = at + batch::HEADER_SIZE_BYTES;
            let header_at = out.copy(&batches[at..records_at]);
            let stamped_ok = batch::stamp_split(
                &mut out.packed[header_at..],
                &batches[records_at..end],
                state.offset_assign_next,
                append_time,
            );
            assert!(stamped_ok.is_ok(), "a validated batch could not be stamped");
            out.share(Bytes::slice(&batches, records_at..end));
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
        assert_eq!(
            (pending.info.size_bytes, pending.info.offset_count),
            (
                batches.len(),
                (state.offset_assign_next - offset_first) as u64
            ),
            "an append's batches stamped other bytes or offsets than were validated"
        );
        position_in_group += batches.len() as u64;
        let appended = Appended {
            offset_first,
            offset_next: state.offset_assign_next,
            log_append_time_ms: append_time,
        };
        stamped.replies.push((appended, pending.reply));
    }
    stamped.buffers = out.finish();
    stamped
}

/// A group's completed write: its fdatasync, if one is in flight, and in direct mode the
/// staging buffer it was written from, for the batch cache.
pub(crate) struct Written {
    pub(crate) sync: Option<PendingSync>,
    pub(crate) staged: Option<Staged>,
}

/// The aligned buffer a direct-mode group was written from; the group's bytes are `data`.
pub(crate) struct Staged {
    buf: rt::PooledBuf,
    data: Range<usize>,
}

/// Writes the stamped buffers at `position` of the active segment, preallocating ahead and,
/// in direct mode, going through an aligned staging buffer with the tail block in front.
pub(crate) async fn write_at_tail<S: Storage>(
    shared: &Shared<S>,
    buffers: Vec<Bytes>,
    position: u64,
    sync_after: bool,
) -> Result<Written, StorageFailure> {
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
    let mut allocated = allocated;
    if needed > allocated {
        allocated += preallocate(shared, &writer, allocated, needed - allocated, step).await?;
        if let Some(segment) = shared.state.borrow_mut().segments.values_mut().next_back() {
            segment.allocated_bytes = allocated;
        }
    }
    // The group's bytes leave the budget as its write is issued; if the write fails, the
    // log is poisoned and its close (or drop) returns what it still holds.
    shared.prealloc.settle(allocated, position + group_bytes);
    if !direct {
        let (written, _, sync) = write_buffers(&writer, buffers, position, sync_after).await;
        written.map_err(|e| StorageFailure::new("write", e))?;
        return Ok(Written { sync, staged: None });
    }
    write_direct(shared, &writer, &buffers, position, sync_after).await
}

/// Grows the segment file at `allocated` by at least `needed` bytes, and by the
/// partition's preallocation step (at most `step_max`, the topic's) as far as the node's
/// budget grants it (`log/prealloc.rs`); returns the bytes added. Preallocating ahead only
/// saves work, so on a nearly full disk (ENOSPC) it falls back to what this group needs
/// (only if that fails too is the disk full for the log), and on a file system without
/// fallocate (EOPNOTSUPP: ramfs, for one) it adds nothing and the writes extend the file.
async fn preallocate<S: Storage>(
    shared: &Shared<S>,
    writer: &S::File,
    allocated: u64,
    needed: u64,
    step_max: u64,
) -> Result<u64, StorageFailure> {
    let segment_bytes = shared.state.borrow().config.segment_bytes();
    // Past `segment.bytes` the segment rolls: bytes preallocated there would be trimmed.
    let room_in_segment = segment_bytes.saturating_sub(allocated);
    let now = std::time::Instant::now();
    let grow = shared
        .prealloc
        .grant(needed, step_max, room_in_segment, now);
    let error = match writer.allocate(allocated, grow).await {
        Ok(()) => return Ok(grow),
        Err(error) => error,
    };
    if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
        shared.prealloc.give_back(grow);
        tracing::debug!(partition = %shared.id, "no fallocate on this file system");
        return Ok(0);
    }
    if grow > needed && error.raw_os_error() == Some(libc::ENOSPC) {
        shared.prealloc.give_back(grow - needed);
        // Every group on a nearly full disk takes this path: not a warning each time.
        tracing::debug!(
            partition = %shared.id,
            grow,
            "disk nearly full: preallocating only what the append needs"
        );
        match writer.allocate(allocated, needed).await {
            Ok(()) => return Ok(needed),
            Err(error) => {
                shared.prealloc.give_back(needed);
                return Err(StorageFailure::new("fallocate", error));
            }
        }
    }
    shared.prealloc.give_back(grow);
    Err(StorageFailure::new("fallocate", error))
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
) -> Result<Written, StorageFailure> {
    let block = BUF_ALIGN_BYTES as u64;
    let aligned_start = position - position % block;
    let tail_len = (position - aligned_start) as usize;
    let group_bytes: usize = buffers.iter().map(Bytes::len).sum();
    let padded = (tail_len + group_bytes).next_multiple_of(BUF_ALIGN_BYTES);
    let mut staging = rt::buf_pool().get_for_write(padded);
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
    let (written, mut staging, sync) =
        write_buffers(writer, vec![staging], aligned_start, sync_after).await;
    written.map_err(|e| StorageFailure::new("write", e))?;
    let Some(staging) = staging.pop() else {
        unreachable!("a write returns the buffers it was given");
    };
    let mut state = shared.state.borrow_mut();
    if let Some(tail) = state
        .segments
        .values_mut()
        .next_back()
        .and_then(|s| s.tail_block.as_mut())
    {
        tail.clear();
        tail.extend_from_slice(
            &rt::initialized(&staging)[new_tail_start..new_tail_start + new_tail_len],
        );
    }
    Ok(Written {
        sync,
        staged: Some(Staged {
            buf: staging,
            data: tail_len..tail_len + group_bytes,
        }),
    })
}

/// Writes `buffers` at `position`, with a linked fdatasync left in flight if `sync_after`.
async fn write_buffers<F: StorageFile, B: IoBuf>(
    writer: &F,
    buffers: Vec<B>,
    position: u64,
    sync_after: bool,
) -> (io::Result<()>, Vec<B>, Option<PendingSync>) {
    if sync_after {
        let (written, buffers, sync) = writer.write_then_sync(buffers, position).await;
        (written, buffers, Some(sync))
    } else {
        let (written, buffers) = writer.write_at(buffers, position, false).await;
        (written, buffers, None)
    }
}

/// Records a written group: segment size, index entries, log end, and for a replicated log
/// where its batches end (`log/commit.rs`); and keeps a direct-mode group's staging buffer
/// in the batch cache, where fetches find it (no copy).
pub(crate) fn finish<S: Storage>(
    shared: &Shared<S>,
    headers: &[(BatchHeader, u64)],
    position: u64,
    group_bytes: u64,
    staged: Option<Staged>,
) {
    if let (Some(staged), Some(last)) = (staged, headers.last()) {
        if shared.cache.enabled() {
            let key = super::cached_read::cache_key(shared);
            let run = Run {
                batches: headers
                    .iter()
                    .map(|(header, at)| (header.base_offset, *at as usize))
                    .collect(),
                offset_next: last.0.last_offset + 1,
                range: staged.data,
                buf: staged.buf.detach(),
            };
            shared.cache.insert(key, shared.cache.generation(key), run);
        }
    }
    {
        let mut state = shared.state.borrow_mut();
        assert_stamped_contiguous(
            headers,
            state.log_end,
            state.offset_assign_next,
            group_bytes,
        );
        let log_end = state.offset_assign_next;
        let state = &mut *state;
        let Some(segment) = state.segments.values_mut().next_back() else {
            unreachable!("a log always has an active segment");
        };
        assert_eq!(
            segment.size_bytes, position,
            "the active segment's end moved while its group was written"
        );
        for (header, position_in_group) in headers {
            segment.on_batch_written(header, position + position_in_group);
        }
        segment.size_bytes = position + group_bytes;
        // A replicated log's reads stop where the batch at its commit end begins: keep
        // where these batches (all above it) end, for when the commit end reaches them.
        if let Some(commit) = state.commit.as_mut() {
            let ends = headers.iter().map(|(header, position_in_group)| {
                let position_end = position + position_in_group + header.size_bytes;
                (header.last_offset + 1, position_end)
            });
            commit.on_batches_written(segment.base_offset, ends);
        }
        let epochs = headers.iter().map(|(header, _)| {
            (
                header.leader_epoch,
                header.base_offset,
                header.last_offset + 1,
            )
        });
        state.epochs.on_group_written(state.log_end, epochs);
        state.log_end = log_end;
        state.assert_at_rest();
    }
    shared.notify_waiters();
}

/// Asserts that a group's stamped batches follow each other without gaps, in offsets from
/// `log_end` (where the log ended before the group) to `offset_assign_next`, and in bytes
/// from the group's start to its `group_bytes`.
fn assert_stamped_contiguous(
    headers: &[(BatchHeader, u64)],
    log_end: i64,
    offset_assign_next: i64,
    group_bytes: u64,
) {
    let (mut offset_next, mut position_next) = (log_end, 0);
    for (header, position_in_group) in headers {
        assert!(
            header.base_offset == offset_next && *position_in_group == position_next,
            "stamped batch at offset {} and group byte {position_in_group}, expected \
             {offset_next} and {position_next}",
            header.base_offset
        );
        offset_next = header.last_offset + 1;
        position_next += header.size_bytes;
    }
    assert_eq!(
        (offset_next, position_next),
        (offset_assign_next, group_bytes),
        "a group's batches end where its offsets and bytes do"
    );
}
