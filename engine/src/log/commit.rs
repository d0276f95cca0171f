//! The commit end of a replicated partition log: the offset below which its partition's
//! Raft group (`ringlog-cluster`) has committed its batches, and so what consumers may read.
//!
//! A log is replicated from its replica's first [`PartitionLog::set_commit_end`] on (the
//! mark is in memory: the replica sets it again each time it opens the log). From then on:
//! - its high watermark is the commit end, which `read`, `offsets`, the batch cache and the
//!   long-polling waiters all follow;
//! - reads never serve a byte of a batch at or past the commit end. A segment wholly below
//!   it is served whole, one wholly at or above it not at all, and the segment holding it
//!   only up to where the batch starting at the commit end begins ([`Commit::visible_end`]);
//! - ordinary appends are refused ([`LogError::Replicated`]): only the replica writes, with
//!   [`PartitionLog::append_replicated`], so nothing bypasses Raft;
//! - truncation below the commit end is refused ([`CommitRefusal::TruncateCommitted`]).
//!
//! Invariants: `log_start <= end <= log_end`; `end` never moves back and lies where a
//! batch starts or at the log end; `above` holds, in offset order, where batches written
//! above `end` end, each in the segment it was written to.
//!
//! Positions are found cheaply: each group commit records the ends of its batches in
//! `above` (`group::finish`), and moving the commit end pops them. A commit end they do not
//! cover (after the log was opened, batches recovered above it; or past
//! [`BATCH_ENDS_MAX`]) is found once with the segment's index and a header scan. A scan
//! that ran while the log was being truncated is not trusted: it is done again.

use std::collections::VecDeque;

use super::scan::ScanStop;
use super::segment::{find_batch, Segment};
use super::{LogError, PartitionId, PartitionLog, Shared, State};
use crate::storage::Storage;

/// The most batch ends a replicated log keeps above its commit end (24 bytes each): a
/// replica whose commit end lags further finds the position by a header scan instead.
const BATCH_ENDS_MAX: usize = 4096;

/// Why a replicated log refused to move its commit end or to cut its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitRefusal {
    /// The commit end asked for is outside `log_start..=log_end`.
    #[error("commit end {commit_end} outside the log {log_start}..={log_end}")]
    OutsideLog {
        commit_end: i64,
        log_start: i64,
        log_end: i64,
    },
    /// The commit end asked for is below the current one: committed batches stay committed.
    #[error("commit end {commit_end} behind the current commit end {current}")]
    Backwards { commit_end: i64, current: i64 },
    /// The commit end asked for lies inside the batch at `batch_offset`, not where one
    /// starts: a batch is committed whole or not at all.
    #[error("commit end {commit_end} inside the batch at offset {batch_offset}")]
    InsideBatch { commit_end: i64, batch_offset: i64 },
    /// A truncation to `offset` would cut committed batches.
    #[error("truncation to offset {offset} would cut committed batches (commit end {commit_end})")]
    TruncateCommitted { offset: i64, commit_end: i64 },
}

/// A replicated log's commit end and what reads need to know of it.
pub(crate) struct Commit {
    /// The offset below which batches are committed: the high watermark.
    pub(crate) end: i64,
    /// Where the batch starting at `end` begins: its segment's base offset and byte
    /// position. Read only for the segment holding `end` past its first batch.
    position: (i64, u64),
    /// Where batches written above `end` end, in offset order.
    above: VecDeque<BatchEnd>,
}

/// The end of one batch written above the commit end.
#[derive(Debug, Clone, Copy)]
struct BatchEnd {
    offset_next: i64,
    segment_base: i64,
    position_end: u64,
}

impl Commit {
    /// Bytes of `segment` a read may serve: all of a segment below the commit end, none of
    /// one at or above it, and in the one holding it, those before the batch starting at it.
    pub(crate) fn visible_end<S: Storage>(&self, segment: &Segment<S>) -> u64 {
        if segment.offset_next <= self.end {
            return segment.size_bytes;
        }
        if segment.base_offset >= self.end {
            return 0;
        }
        let (base, position) = self.position;
        assert_eq!(
            base, segment.base_offset,
            "commit end {} lies in segment {} but its position was found in segment {base}",
            self.end, segment.base_offset
        );
        position.min(segment.size_bytes)
    }

    /// Records where the batches a group commit wrote to segment `segment_base` end, as
    /// `(offset_next, position_end)` pairs in offset order, while there is room.
    pub(crate) fn on_batches_written(
        &mut self,
        segment_base: i64,
        ends: impl Iterator<Item = (i64, u64)>,
    ) {
        for (offset_next, position_end) in ends {
            if self.above.len() >= BATCH_ENDS_MAX {
                return;
            }
            debug_assert!(self
                .above
                .back()
                .is_none_or(|b| b.offset_next < offset_next));
            self.above.push_back(BatchEnd {
                offset_next,
                segment_base,
                position_end,
            });
        }
    }

    /// Forgets the ends of batches a truncation cut (those past the new `log_end`).
    pub(crate) fn on_truncated(&mut self, log_end: i64) {
        while self.above.back().is_some_and(|b| b.offset_next > log_end) {
            self.above.pop_back();
        }
        assert!(self.end <= log_end, "a truncation cut committed batches");
    }

    /// The log was emptied and starts again at `offset`, past everything it held
    /// ([`PartitionLog::restart_at`]): nothing is above the commit end, which is `offset`
    /// at the start of the new segment.
    pub(crate) fn on_restarted(&mut self, offset: i64) {
        assert!(offset >= self.end, "a restart moved the commit end back");
        self.end = offset;
        self.position = (offset, 0);
        self.above.clear();
    }

    /// Drops the batch ends at or below `commit_end`; the position of the batch starting
    /// at `commit_end` if one of them ends there.
    fn pass(&mut self, commit_end: i64) -> Option<(i64, u64)> {
        while let Some(first) = self.above.pop_front() {
            if first.offset_next == commit_end {
                return Some((first.segment_base, first.position_end));
            }
            if first.offset_next > commit_end {
                self.above.push_front(first);
                break;
            }
        }
        None
    }
}

impl<S: Storage> State<S> {
    /// Refuses an ordinary append to a replicated log.
    pub(crate) fn refuse_if_replicated(&self, partition: &PartitionId) -> Result<(), LogError> {
        match self.commit {
            Some(_) => Err(LogError::Replicated {
                partition: partition.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Refuses a truncation to `offset` that would cut committed batches.
    pub(crate) fn refuse_cutting_committed(
        &self,
        partition: &PartitionId,
        offset: i64,
    ) -> Result<(), LogError> {
        match &self.commit {
            Some(commit) if offset < commit.end => Err(refused(
                partition,
                CommitRefusal::TruncateCommitted {
                    offset,
                    commit_end: commit.end,
                },
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a commit end outside the log or behind the current one.
    fn check_commit_end(&self, partition: &PartitionId, commit_end: i64) -> Result<(), LogError> {
        if commit_end < self.log_start || commit_end > self.log_end {
            let refusal = CommitRefusal::OutsideLog {
                commit_end,
                log_start: self.log_start,
                log_end: self.log_end,
            };
            return Err(refused(partition, refusal));
        }
        match &self.commit {
            Some(commit) if commit_end < commit.end => Err(refused(
                partition,
                CommitRefusal::Backwards {
                    commit_end,
                    current: commit.end,
                },
            )),
            _ => Ok(()),
        }
    }
}

fn refused(partition: &PartitionId, refusal: CommitRefusal) -> LogError {
    LogError::CommitRefused {
        partition: partition.clone(),
        refusal,
    }
}

/// How to find where the batch starting at the commit end begins.
enum Lookup<F> {
    /// Known without reading: (segment base offset, byte position).
    Known((i64, u64)),
    /// By a header scan of segment `base` from `start` (an index entry at or before the
    /// commit end) to `end`.
    Scan {
        base: i64,
        reader: F,
        start: u64,
        end: u64,
    },
}

impl<S: Storage> PartitionLog<S> {
    /// Sets the offset below which this replicated log's batches are committed; the first
    /// call marks the log replicated (see `log/commit.rs`). From then on its high watermark
    /// is `commit_end`, reads serve nothing at or past it, ordinary appends are refused
    /// ([`LogError::Replicated`]), and waiters of [`PartitionLog::changed_since`] are woken
    /// when it moves.
    ///
    /// `commit_end` must lie in `log_start..=log_end`, where a batch starts, and not behind
    /// the current commit end; otherwise [`LogError::CommitRefused`] says why, and nothing
    /// changes. (The replica commits only what this log holds durably.) Usually answered
    /// from memory; when the position of the batch at `commit_end` is not known (batches
    /// recovered at open), it is found by reading batch headers of its segment.
    pub async fn set_commit_end(&self, commit_end: i64) -> Result<(), LogError> {
        let shared = &self.shared;
        loop {
            let truncations = self.truncation_settled().await;
            let Some(lookup) = plan(shared, commit_end)? else {
                return Ok(());
            };
            let found = match lookup {
                Lookup::Known(position) => Ok(position),
                Lookup::Scan {
                    base,
                    reader,
                    start,
                    end,
                } => scan(shared, commit_end, base, (&reader, start, end)).await,
            };
            // A truncation ran while the segment was scanned: what it read may be gone.
            if shared.state.borrow().truncations != truncations {
                continue;
            }
            let position = found?;
            {
                let mut state = shared.state.borrow_mut();
                // Another call may have moved the commit end meanwhile.
                state.check_commit_end(&shared.id, commit_end)?;
                let commit = state.commit.get_or_insert_with(|| Commit {
                    end: commit_end,
                    position,
                    above: VecDeque::new(),
                });
                commit.end = commit_end;
                commit.position = position;
                state.assert_offsets_ordered();
            }
            shared.notify_waiters();
            return Ok(());
        }
    }

    /// Waits until no truncation runs; the truncation count then.
    async fn truncation_settled(&self) -> u64 {
        loop {
            let version = self.version();
            let truncations = self.shared.state.borrow().truncations;
            if truncations % 2 == 0 {
                return truncations;
            }
            // A truncation's end always notifies the waiters.
            self.changed_since(version).await;
        }
    }
}

/// Checks `commit_end` and says how to find where the batch starting at it begins; `None`
/// when it is the commit end already.
fn plan<S: Storage>(
    shared: &Shared<S>,
    commit_end: i64,
) -> Result<Option<Lookup<S::File>>, LogError> {
    let mut state = shared.state.borrow_mut();
    state.check_commit_end(&shared.id, commit_end)?;
    if let Some(commit) = state.commit.as_mut() {
        if commit.end == commit_end {
            return Ok(None);
        }
        if let Some(position) = commit.pass(commit_end) {
            return Ok(Some(Lookup::Known(position)));
        }
    }
    let Some((_, segment)) = state.segments.range(..=commit_end).next_back() else {
        unreachable!("a segment holds the log start, and the commit end is at or past it");
    };
    if segment.offset_next <= commit_end {
        // The log end: the next batch goes where the active segment ends (or starts the
        // next segment, whose base is the commit end).
        return Ok(Some(Lookup::Known((
            segment.base_offset,
            segment.size_bytes,
        ))));
    }
    if segment.base_offset == commit_end {
        return Ok(Some(Lookup::Known((commit_end, 0))));
    }
    let (_, start) = segment.index.lookup_offset(commit_end);
    Ok(Some(Lookup::Scan {
        base: segment.base_offset,
        reader: segment.reader.clone(),
        start: u64::from(start),
        end: segment.size_bytes,
    }))
}

/// Finds the batch starting at `commit_end` in segment `base` by its headers.
async fn scan<S: Storage>(
    shared: &Shared<S>,
    commit_end: i64,
    base: i64,
    (reader, start, end): (&S::File, u64, u64),
) -> Result<(i64, u64), LogError> {
    let found = find_batch(reader, start, end, commit_end)
        .await
        .map_err(|e| shared.error_io("read segment", e))?;
    match found {
        Some((header, position)) if header.base_offset == commit_end => Ok((base, position)),
        Some((header, _)) => Err(refused(
            &shared.id,
            CommitRefusal::InsideBatch {
                commit_end,
                batch_offset: header.base_offset,
            },
        )),
        // The segment holds every offset below its next one's base: its bytes end early.
        None => Err(LogError::Damaged {
            partition: shared.id.clone(),
            segment: base,
            offset: commit_end,
            source: ScanStop::EndOfFile,
        }),
    }
}
