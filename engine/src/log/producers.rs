//! Idempotent producers' state in one partition: the rules that make a producer's retried
//! batch land exactly once (Kafka's `ProducerStateManager` / `ProducerAppendInfo`).
//!
//! For every producer id seen in the partition (and not expired) the log keeps the
//! producer's epoch and its last [`BATCHES_PER_PRODUCER_MAX`] batches: first and last
//! sequence, first and last offset. The appender checks each idempotent batch against it in
//! queue order, on the partition's shard, before offsets are stamped (`Producers::check`),
//! and records it with the offsets it will get (`Producers::record`) before the next batch
//! of the queue is checked, so two in-flight appends of one producer cannot race.
//!
//! Rules, for a batch of producer `p` at epoch `e` covering sequences `first..=last`:
//! - batches without a producer id (-1) are not tracked;
//! - `p` unknown: accepted at any sequence;
//! - `e` equal to `p`'s epoch and `first..=last` equal to one of the kept batches: a
//!   duplicate, answered with that batch's offsets and not written again;
//! - `e` lower than `p`'s epoch: [`ProducerError::EpochFenced`] (INVALID_PRODUCER_EPOCH);
//! - `e` higher: the batch must start at sequence 0, else [`ProducerError::OutOfOrder`];
//! - `e` equal: `first` must follow the last kept sequence (wrapping from `i32::MAX` to
//!   0), else [`ProducerError::OutOfOrder`] (OUT_OF_ORDER_SEQUENCE_NUMBER).
//!
//! Invariants: an entry holds 1..=`BATCHES_PER_PRODUCER_MAX` batches, oldest first, all of
//! its epoch, with increasing offsets; the map holds at most `PRODUCERS_PER_PARTITION_MAX`
//! producers (past it the one idle longest is dropped, as if it had expired).
//!
//! The state is rebuilt on open from the latest producer snapshot and the batch headers
//! after it (`producer_snapshot.rs`, `load` below), never from anything a client says.
//!
//! A replicated partition's leader applies the same rules before it proposes a batch
//! (`PartitionLog::check_producer_batch`, `Producers::check_after`): against this state
//! followed by the batches it proposed that the log does not hold yet, recorded on a copy of
//! the one producer's entry, so the rules are these and nowhere else.

use std::collections::{HashMap, VecDeque};

use super::producer_snapshot;
use super::scan::{self, ScanStop};
use super::segment::BatchHeader;
use super::{LogError, Shared};
use crate::limits::{
    BATCHES_PER_PRODUCER_MAX, PRODUCERS_PER_PARTITION_MAX, RECOVERY_READ_CHUNK_BYTES,
};
use crate::storage::Storage;

/// Why an idempotent producer's batch was refused. Nothing of the request was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// A newer epoch of the producer has written to the partition: this one is a zombie.
    #[error("producer {producer_id}: epoch {epoch} is older than the current epoch {current}")]
    EpochFenced {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// The batch does not continue the producer's sequence (a batch was lost in between).
    #[error(
        "producer {producer_id} epoch {epoch}: batch starts at sequence {sequence}, \
         expected {expected}"
    )]
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        sequence: i32,
        expected: i32,
    },
    /// A producer id with a negative epoch or sequence: not a batch a client builds.
    #[error("producer {producer_id}: invalid epoch {epoch} or base sequence {sequence}")]
    Invalid {
        producer_id: i64,
        epoch: i16,
        sequence: i32,
    },
    /// An idempotent producer sent more than one batch for the partition in one request,
    /// which Kafka refuses: the sequence check is per batch, and a partial failure would
    /// leave the producer unable to tell what was written.
    #[error("producer {producer_id}: {batch_count} batches in one request; idempotent needs 1")]
    MultipleBatches {
        producer_id: i64,
        batch_count: usize,
    },
}

/// Sequence numbers wrap from `i32::MAX` to 0, as Kafka's do.
pub(crate) fn sequence_after(sequence: i32, increment: i32) -> i32 {
    debug_assert!(sequence >= 0 && increment >= 0);
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// The producer fields of one idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) sequence_first: i32,
    pub(crate) sequence_last: i32,
    /// `lastOffsetDelta`: the batch takes offsets `first..=first + offset_delta`.
    pub(crate) offset_delta: i32,
}

impl ProducerBatch {
    /// The batch's producer fields; `None` for a batch without a producer id.
    pub(crate) fn of(header: &BatchHeader) -> Result<Option<ProducerBatch>, ProducerError> {
        if header.producer_id < 0 {
            return Ok(None);
        }
        let delta = header.last_offset - header.base_offset;
        let delta = i32::try_from(delta).ok().filter(|d| *d >= 0);
        match delta {
            Some(delta) if header.producer_epoch >= 0 && header.base_sequence >= 0 => {
                Ok(Some(ProducerBatch {
                    producer_id: header.producer_id,
                    epoch: header.producer_epoch,
                    sequence_first: header.base_sequence,
                    sequence_last: sequence_after(header.base_sequence, delta),
                    offset_delta: delta,
                }))
            }
            _ => Err(ProducerError::Invalid {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                sequence: header.base_sequence,
            }),
        }
    }

    /// The producer batch of a request's records (validated batches): `None` if no batch
    /// has a producer id; refused if one has and the request holds more than one batch, or
    /// its epoch or sequence is negative.
    pub fn of_request(batches: &[u8]) -> Result<Option<ProducerBatch>, ProducerError> {
        let mut at = 0usize;
        let mut count = 0usize;
        let mut found = None;
        while let Some(header) = batches.get(at..).and_then(BatchHeader::parse) {
            count += 1;
            if let Some(batch) = ProducerBatch::of(&header)? {
                found.get_or_insert(batch);
            }
            at += usize::try_from(header.size_bytes).unwrap_or(usize::MAX);
        }
        match found {
            Some(batch) if count > 1 => Err(ProducerError::MultipleBatches {
                producer_id: batch.producer_id,
                batch_count: count,
            }),
            found => Ok(found),
        }
    }

    /// The producer's id (never negative).
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }
}

/// One kept batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeptBatch {
    pub(crate) sequence_first: i32,
    pub(crate) sequence_last: i32,
    pub(crate) offset_first: i64,
    pub(crate) offset_last: i64,
}

/// What the log keeps of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub(crate) epoch: i16,
    /// Oldest first; never empty.
    pub(crate) batches: VecDeque<KeptBatch>,
    /// When the producer last wrote: the broker's clock at append, or the batch's max
    /// timestamp when the state was rebuilt from the log (all the log keeps).
    pub(crate) last_timestamp_ms: i64,
}

/// What to do with a batch that passed the rules (public as `log::ProducerCheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Append,
    /// Answer with the original's offsets, `offset_first..offset_next`; write nothing.
    Duplicate { offset_first: i64, offset_next: i64 },
}

/// Every producer's entry in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Producers {
    pub(crate) entries: HashMap<i64, ProducerEntry>,
}

impl Producers {
    /// Applies the rules of the module doc to `batch`.
    pub(crate) fn check(&self, batch: &ProducerBatch) -> Result<Verdict, ProducerError> {
        let Some(entry) = self.entries.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        if batch.epoch == entry.epoch {
            let same = |kept: &&KeptBatch| {
                kept.sequence_first == batch.sequence_first
                    && kept.sequence_last == batch.sequence_last
            };
            if let Some(kept) = entry.batches.iter().find(same) {
                return Ok(Verdict::Duplicate {
                    offset_first: kept.offset_first,
                    offset_next: kept.offset_last + 1,
                });
            }
        }
        let out_of_order = |expected| ProducerError::OutOfOrder {
            producer_id: batch.producer_id,
            epoch: batch.epoch,
            sequence: batch.sequence_first,
            expected,
        };
        if batch.epoch < entry.epoch {
            return Err(ProducerError::EpochFenced {
                producer_id: batch.producer_id,
                epoch: batch.epoch,
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            return match batch.sequence_first {
                0 => Ok(Verdict::Append),
                _ => Err(out_of_order(0)),
            };
        }
        let Some(last) = entry.batches.back() else {
            unreachable!("a producer entry keeps at least one batch");
        };
        let expected = sequence_after(last.sequence_last, 1);
        if batch.sequence_first != expected {
            return Err(out_of_order(expected));
        }
        Ok(Verdict::Append)
    }

    /// Applies the rules to `batch` as if the batches of `proposed` (each with the offset
    /// it was stamped with, in offset order) were recorded first: those of the same
    /// producer at or past `offset_assign_next`, which this state does not cover yet (the
    /// others it does). They are recorded on a copy of the producer's entry; `self` is not
    /// changed.
    pub(crate) fn check_after(
        &self,
        batch: &ProducerBatch,
        proposed: &[(ProducerBatch, i64)],
        offset_assign_next: i64,
    ) -> Result<Verdict, ProducerError> {
        let mut ahead = proposed
            .iter()
            .filter(|(earlier, offset_first)| {
                earlier.producer_id == batch.producer_id && *offset_first >= offset_assign_next
            })
            .peekable();
        if ahead.peek().is_none() {
            return self.check(batch);
        }
        let mut producer = Producers::default();
        if let Some(entry) = self.entries.get(&batch.producer_id) {
            producer.entries.insert(batch.producer_id, entry.clone());
        }
        for (earlier, offset_first) in ahead {
            // The idle time decides nothing in the rules.
            producer.record(earlier, *offset_first, 0);
        }
        debug_assert_eq!(producer.entries.len(), 1);
        producer.check(batch)
    }

    /// Records `batch`, written (or about to be) at `offset_first`, at `timestamp_ms`.
    pub(crate) fn record(&mut self, batch: &ProducerBatch, offset_first: i64, timestamp_ms: i64) {
        if !self.entries.contains_key(&batch.producer_id)
            && self.entries.len() >= PRODUCERS_PER_PARTITION_MAX
        {
            self.evict_idlest();
        }
        let entry = self
            .entries
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::with_capacity(BATCHES_PER_PRODUCER_MAX),
                last_timestamp_ms: timestamp_ms,
            });
        if entry.epoch != batch.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(KeptBatch {
            sequence_first: batch.sequence_first,
            sequence_last: batch.sequence_last,
            offset_first,
            offset_last: offset_first + i64::from(batch.offset_delta),
        });
        if entry.batches.len() > BATCHES_PER_PRODUCER_MAX {
            entry.batches.pop_front();
        }
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(timestamp_ms);
        debug_assert!(!entry.batches.is_empty() && entry.batches.len() <= BATCHES_PER_PRODUCER_MAX);
    }

    /// Records a batch read back from the log (recovery), without the rules: what the log
    /// holds was accepted when it was written.
    pub(crate) fn replay(&mut self, header: &BatchHeader) {
        if let Ok(Some(batch)) = ProducerBatch::of(header) {
            self.record(&batch, header.base_offset, header.max_timestamp);
        }
    }

    /// Drops producers idle for `expiration_ms` or longer at `now_ms` (Kafka's
    /// `producer.id.expiration.ms`); returns how many.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, entry| now_ms.saturating_sub(entry.last_timestamp_ms) < expiration_ms);
        before - self.entries.len()
    }

    fn evict_idlest(&mut self) {
        let idlest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_timestamp_ms)
            .map(|(id, _)| *id);
        if let Some(id) = idlest {
            tracing::warn!(
                producer_id = id,
                limit = PRODUCERS_PER_PARTITION_MAX,
                "too many producers in one partition: dropping the one idle longest"
            );
            self.entries.remove(&id);
        }
    }
}

/// Rebuilds the partition's producer state: the latest valid snapshot at or below the log
/// end (and not below the first segment), then every batch after it, walked with the batch
/// validator. Snapshots outside that range, and damaged ones, are removed. A segment found
/// damaged is replayed up to the damage, with a warning: the producers whose batches lay
/// past it are forgotten, and a retry of one of those batches would be written again.
pub(crate) async fn load<S: Storage>(shared: &Shared<S>) -> Result<(), LogError> {
    let (first_base, log_end) = {
        let state = shared.state.borrow();
        let first = state
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(state.log_start);
        (first, state.log_end)
    };
    let loaded = producer_snapshot::load_latest(shared, first_base, log_end).await?;
    let (mut producers, from) = loaded.unwrap_or((Producers::default(), first_base));
    let spans: Vec<_> = {
        let state = shared.state.borrow();
        state
            .segments
            .values()
            .filter(|segment| segment.offset_next > from)
            .map(|segment| {
                let (offset, start) = if from > segment.base_offset {
                    segment.index.lookup_offset(from)
                } else {
                    (segment.base_offset, 0)
                };
                let span = (u64::from(start), segment.size_bytes);
                (segment.base_offset, segment.reader.clone(), span, offset)
            })
            .collect()
    };
    let mut replayed = 0u64;
    for (base, reader, span, offset) in spans {
        let walk = scan::walk(
            &reader,
            span,
            offset,
            RECOVERY_READ_CHUNK_BYTES,
            |header, _| {
                if header.base_offset >= from {
                    producers.replay(header);
                    replayed += 1;
                }
                true
            },
        )
        .await
        .map_err(|e| shared.error_io("read segment for producer state", e))?;
        if let Some(segment) = shared.state.borrow_mut().segments.get_mut(&base) {
            segment.unverified.remove(span.0..walk.valid_end);
        }
        if let Some(stop) = walk.stop.filter(|stop| *stop != ScanStop::EndOfFile) {
            tracing::warn!(
                partition = %shared.id,
                segment = base,
                stopped_by = %stop,
                "producer state replayed only up to a damaged batch; idempotent producers \
                 whose batches lie past it are forgotten"
            );
        }
    }
    tracing::debug!(
        partition = %shared.id,
        snapshot_offset = from,
        replayed,
        producers = producers.entries.len(),
        "producer state loaded"
    );
    shared.state.borrow_mut().producers = producers;
    Ok(())
}
