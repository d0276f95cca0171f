//! The leader epochs of a partition log: for each epoch, the offset of its first batch, as
//! Kafka's leader-epoch cache keeps them, so that OffsetForLeaderEpoch can answer where an
//! epoch ended and ListOffsets which epoch a batch was written in.
//!
//! A batch carries its epoch in its header (`partitionLeaderEpoch`): in a replicated log the
//! Raft term its leader stamped; on a single node what the client wrote (librdkafka 0, the
//! Java client -1), since a single node reports epoch 0 and does not stamp. As in Kafka, a
//! batch starts a new epoch only if its epoch is larger than every earlier batch's; a
//! negative epoch (none) or a smaller one starts nothing.
//!
//! The table is in memory and built from the batches themselves, not from a checkpoint
//! file: opening reads nothing for it. It covers the batches below `scanned_to`. The first
//! question asked of a log scans the headers of its batches from the log start once
//! ([`PartitionLog::catch_up_epochs`]); from then on each group commit extends it as it
//! records its batches (`group::finish`), without I/O, as long as it is caught up, and a
//! truncation drops what it cut. A scan that ran while the log was truncated, or while
//! another scan moved the table, is not trusted: it is done again from the table's end.
//!
//! Invariants: epochs and start offsets strictly increase; every start lies below
//! `scanned_to`; at most [`LEADER_EPOCHS_MAX`] entries (the oldest go first, which makes the
//! answer for an epoch older than every entry the start of the first one, as Kafka answers
//! for an epoch whose batches were deleted).

use std::collections::VecDeque;

use super::read::read_target;
use super::segment::{find_batch, scan_headers};
use super::{LogError, PartitionLog};
use crate::limits::LEADER_EPOCHS_MAX;
use crate::storage::Storage;

/// Kafka's UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET: no answer.
pub const EPOCH_UNDEFINED: (i32, i64) = (-1, -1);

/// Each epoch's first offset, for the batches below `scanned_to` (see the module doc).
#[derive(Debug)]
pub(crate) struct Epochs {
    /// `(epoch, offset of its first batch)`, both strictly increasing.
    starts: VecDeque<(i32, i64)>,
    /// The batches below this offset are reflected in `starts`.
    scanned_to: i64,
}

impl Epochs {
    /// A table that has seen nothing yet of a log starting at `log_start`.
    pub(crate) fn new(log_start: i64) -> Epochs {
        Epochs {
            starts: VecDeque::new(),
            scanned_to: log_start,
        }
    }

    /// Where the table's view of the log ends (tests).
    #[cfg(test)]
    pub(crate) fn scanned_to_for_tests(&self) -> i64 {
        self.scanned_to
    }

    fn latest(&self) -> Option<i32> {
        self.starts.back().map(|&(epoch, _)| epoch)
    }

    /// Records a batch of `epoch` at `base_offset` (the next batch after `scanned_to`).
    fn on_batch(&mut self, epoch: i32, base_offset: i64) {
        if epoch < 0 || self.latest().is_some_and(|latest| epoch <= latest) {
            return;
        }
        if self.starts.len() >= LEADER_EPOCHS_MAX {
            self.starts.pop_front();
        }
        self.starts.push_back((epoch, base_offset));
    }

    /// Records the batches a group commit wrote, `(epoch, base_offset, offset_next)` in
    /// order from `log_end_before`, if the table has seen everything before them; a table
    /// behind the log is left to the next scan.
    pub(crate) fn on_group_written(
        &mut self,
        log_end_before: i64,
        batches: impl Iterator<Item = (i32, i64, i64)>,
    ) {
        if self.scanned_to != log_end_before {
            return;
        }
        for (epoch, base_offset, offset_next) in batches {
            debug_assert_eq!(
                base_offset, self.scanned_to,
                "a group's batches are contiguous"
            );
            self.on_batch(epoch, base_offset);
            self.scanned_to = offset_next;
        }
    }

    /// Forgets what a truncation to `log_end` cut.
    pub(crate) fn on_truncated(&mut self, log_end: i64) {
        while self
            .starts
            .back()
            .is_some_and(|&(_, start)| start >= log_end)
        {
            self.starts.pop_back();
        }
        self.scanned_to = self.scanned_to.min(log_end);
    }

    /// The epoch of the batch holding `offset`: the last epoch starting at or before it.
    pub(crate) fn epoch_at(&self, offset: i64) -> Option<i32> {
        let index = self.starts.partition_point(|&(_, start)| start <= offset);
        index
            .checked_sub(1)
            .and_then(|index| self.starts.get(index))
            .map(|&(epoch, _)| epoch)
    }

    /// Kafka's answer to OffsetForLeaderEpoch for `requested` at the leader, whose own
    /// epoch is `current` and whose log ends at `log_end`: `(epoch, end offset)`, where the
    /// end offset of an epoch is the start of the first larger epoch (the log end for the
    /// latest), and the epoch answered is the largest at or below `requested`. The leader's
    /// current epoch counts as starting at the log end if no batch carries it yet (a new
    /// leader has written none, or a single node whose clients write -1). An epoch older
    /// than every known one answers the first one's start, one newer than every known one
    /// [`EPOCH_UNDEFINED`] — both as Kafka's `LeaderEpochFileCache.endOffsetFor`.
    pub(crate) fn end_offset_for(&self, requested: i32, current: i32, log_end: i64) -> (i32, i64) {
        if requested < 0 {
            return EPOCH_UNDEFINED;
        }
        let pending = (current >= 0 && self.latest().is_none_or(|latest| current > latest))
            .then_some((current, log_end));
        let starts = || self.starts.iter().copied().chain(pending);
        let Some((latest, _)) = starts().last() else {
            return EPOCH_UNDEFINED;
        };
        if requested == latest {
            return (requested, log_end);
        }
        let Some((_, next_start)) = starts().find(|&(epoch, _)| epoch > requested) else {
            return EPOCH_UNDEFINED;
        };
        let floor = starts()
            .take_while(|&(epoch, _)| epoch <= requested)
            .last()
            .map_or(requested, |(epoch, _)| epoch);
        (floor, next_start)
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Brings the epoch table up to the log end, scanning the batch headers it has not seen
    /// (see the module doc).
    pub(crate) async fn catch_up_epochs(&self) -> Result<(), LogError> {
        loop {
            let (from, log_end, truncations, latest, targets) = {
                let state = self.shared.state.borrow();
                let from = state.epochs.scanned_to.max(state.log_start);
                if from >= state.log_end {
                    return Ok(());
                }
                let holding = state
                    .segments
                    .range(..=from)
                    .next_back()
                    .map(|(&base, _)| base);
                let targets: Vec<(S::File, u64, u64)> = state
                    .segments
                    .range(holding.unwrap_or(from)..)
                    .map(|(_, segment)| {
                        let (_, start) = segment.index.lookup_offset(from);
                        let start = if segment.base_offset <= from {
                            start
                        } else {
                            0
                        };
                        (segment.reader.clone(), u64::from(start), segment.size_bytes)
                    })
                    .collect();
                let latest = state.epochs.latest();
                (from, state.log_end, state.truncations, latest, targets)
            };
            let mut found: Vec<(i32, i64)> = Vec::new();
            let mut top = latest;
            for (reader, start, end) in targets {
                scan_headers(&reader, start, end, |header, _| {
                    if header.base_offset >= log_end {
                        return false;
                    }
                    let epoch = header.leader_epoch;
                    if header.last_offset >= from && epoch >= 0 && top.is_none_or(|t| epoch > t) {
                        found.push((epoch, header.base_offset.max(from)));
                        top = Some(epoch);
                    }
                    true
                })
                .await
                .map_err(|e| self.shared.error_io("read segment", e))?;
            }
            let installed = {
                let mut state = self.shared.state.borrow_mut();
                let moved = state.epochs.scanned_to.max(state.log_start) != from;
                let stale = state.truncations != truncations || truncations % 2 == 1 || moved;
                if !stale {
                    for (epoch, start) in found {
                        state.epochs.on_batch(epoch, start);
                    }
                    state.epochs.scanned_to = log_end;
                }
                !stale
            };
            if !installed {
                // Cut or extended meanwhile: what was read may be stale; read again once
                // the truncation under way (if one is) had a chance to finish.
                crate::rt::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }

    /// OffsetForLeaderEpoch at this log as its leader at epoch `current` (see
    /// [`Epochs::end_offset_for`]): `(epoch, end offset)`.
    pub async fn epoch_end_offset(
        &self,
        requested: i32,
        current: i32,
    ) -> Result<(i32, i64), LogError> {
        self.catch_up_epochs().await?;
        let state = self.shared.state.borrow();
        Ok(state
            .epochs
            .end_offset_for(requested, current, state.log_end))
    }

    /// The epoch of the batch holding `offset` (ListOffsets): from the table where it has
    /// seen that batch, else from the batch's own header, one read, so that a question
    /// about the log start after opening does not scan the whole log. `None` where the
    /// batch carries no epoch (or no visible batch holds `offset`).
    pub async fn epoch_at(&self, offset: i64) -> Result<Option<i32>, LogError> {
        let target = {
            let state = self.shared.state.borrow();
            if offset < state.epochs.scanned_to {
                return Ok(state.epochs.epoch_at(offset));
            }
            drop(state);
            read_target(&self.shared, offset)
        };
        let Some(target) = target else {
            return Ok(None);
        };
        let found = find_batch(&target.reader, target.start, target.end, offset).await;
        let found = found.map_err(|e| self.shared.error_io("read segment", e))?;
        Ok(found
            .map(|(header, _)| header.leader_epoch)
            .filter(|&epoch| epoch >= 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(starts: &[(i32, i64)], scanned_to: i64) -> Epochs {
        Epochs {
            starts: starts.iter().copied().collect(),
            scanned_to,
        }
    }

    #[test]
    fn an_epoch_ends_where_the_next_larger_one_starts() {
        // Epochs 1 [0, 10), 3 [10, 25), 4 [25, 40): the leader is at epoch 4.
        let epochs = table(&[(1, 0), (3, 10), (4, 25)], 40);
        assert_eq!(epochs.end_offset_for(1, 4, 40), (1, 10));
        assert_eq!(
            epochs.end_offset_for(2, 4, 40),
            (1, 10),
            "2 never led: 1's end"
        );
        assert_eq!(epochs.end_offset_for(3, 4, 40), (3, 25));
        assert_eq!(
            epochs.end_offset_for(4, 4, 40),
            (4, 40),
            "the latest: the log end"
        );
        assert_eq!(
            epochs.end_offset_for(0, 4, 40),
            (0, 0),
            "older than all: first start"
        );
        assert_eq!(
            epochs.end_offset_for(5, 4, 40),
            EPOCH_UNDEFINED,
            "newer than all"
        );
        assert_eq!(epochs.end_offset_for(-1, 4, 40), EPOCH_UNDEFINED);
    }

    #[test]
    fn a_leader_that_wrote_nothing_yet_owns_the_log_end() {
        // A new leader at epoch 6 (Raft's empty entry takes no offset).
        let epochs = table(&[(1, 0), (3, 10)], 25);
        assert_eq!(epochs.end_offset_for(3, 6, 25), (3, 25));
        assert_eq!(epochs.end_offset_for(5, 6, 25), (3, 25));
        assert_eq!(epochs.end_offset_for(6, 6, 25), (6, 25));
        // A single node whose clients write -1: nothing cached, epoch 0 is the log end.
        let empty = table(&[], 7);
        assert_eq!(empty.end_offset_for(0, 0, 7), (0, 7));
        assert_eq!(empty.end_offset_for(1, 0, 7), EPOCH_UNDEFINED);
    }

    #[test]
    fn only_a_larger_epoch_starts_one_and_truncation_forgets_what_it_cut() {
        let mut epochs = Epochs::new(0);
        let batches = [(-1, 0, 2), (2, 2, 5), (1, 5, 6), (2, 6, 9), (4, 9, 12)];
        epochs.on_group_written(0, batches.into_iter());
        assert_eq!(epochs.starts, [(2, 2), (4, 9)]);
        assert_eq!(epochs.scanned_to, 12);
        assert_eq!(epochs.epoch_at(1), None);
        assert_eq!(epochs.epoch_at(8), Some(2));
        assert_eq!(epochs.epoch_at(9), Some(4));
        // A group after a gap the table has not seen is left to the next scan.
        epochs.on_group_written(20, [(7, 20, 21)].into_iter());
        assert_eq!(epochs.scanned_to, 12);
        epochs.on_truncated(9);
        assert_eq!((epochs.starts.len(), epochs.scanned_to), (1, 9));
        epochs.on_group_written(9, [(5, 9, 10)].into_iter());
        assert_eq!(epochs.starts, [(2, 2), (5, 9)]);
    }

    #[test]
    fn the_table_is_bounded_and_drops_its_oldest_epoch() {
        let mut epochs = Epochs::new(0);
        let count = LEADER_EPOCHS_MAX as i32 + 2;
        epochs.on_group_written(0, (0..count).map(|e| (e, i64::from(e), i64::from(e) + 1)));
        assert_eq!(epochs.starts.len(), LEADER_EPOCHS_MAX);
        assert_eq!(epochs.starts.front(), Some(&(2, 2)));
        assert_eq!(
            epochs.end_offset_for(0, count - 1, i64::from(count)),
            (0, 2)
        );
    }
}
