//! Snapshots by segment shipping: how a replica that fell behind its leader's window
//! catches up by copying the leader's batches in bulk rather than entry by entry.
//!
//! **What a snapshot is.** A replica's window starts after its *anchor* (`journal.rs`):
//! the Raft index and term of the last entry it no longer keeps as an entry, and the Kafka
//! offset where the batches after it start. Everything below the anchor is committed, so it
//! is the same bytes in every replica's partition log. raft-rs's snapshot of a partition is
//! therefore just the anchor: its metadata carries the index, term and configuration, its
//! data the anchor's offset (the byte table below). No state is serialized: the partition
//! log *is* the state.
//!
//! **Installing one** (a follower, `Replica::process_ready`): the replica records the new
//! anchor and the offset its own log is trusted to (its high watermark: committed, so the
//! leader's bytes too) in one journal record, cuts its log there, and *fills* it up to the
//! anchor's offset with batches fetched from a peer through a [`FillSource`] — chunks of
//! whole batches read from the peer's committed log (the internal transport carries them,
//! `transport.rs`), each validated as any append and written through the group commit. A
//! later anchor record says the fill is done. A crash in between leaves the fill to do:
//! opening cuts the log back to the trusted offset and the fill starts again, so a half
//! filled log is never taken for a whole one. While a fill is pending the replica neither
//! campaigns nor answers its leader.
//!
//! **Any peer may serve a fill**: bytes below a replica's commit end are committed, hence
//! the same on every replica, so a fill does not depend on who leads now.
//!
//! Snapshot data (little-endian, as the project's own formats are):
//!
//! | offset | size | field                                               |
//! |-------:|-----:|-----------------------------------------------------|
//! |      0 |    1 | version: 2 (1: without the log start, read as 0)    |
//! |      1 |    8 | the anchor's offset: where the window's data starts |
//! |      9 |    8 | the log start the group decided, as the leader knows it (`Replica::propose_log_start`): a follower whose window the snapshot replaces never applies the entries that decided it |

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use ringlog_engine::batch::FrameHeader;
use ringlog_engine::log::PartitionId;

const VERSION: u8 = 2;
const VERSION_WITHOUT_START: u8 = 1;
const VERSION_AT: usize = 0;
const OFFSET_AT: usize = VERSION_AT + 1;
const LOG_START_AT: usize = OFFSET_AT + 8;
const DATA_BYTES: usize = LOG_START_AT + 8;
const _: () = assert!(DATA_BYTES == 17);

/// What a partition's snapshot carries besides its index, term and configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotData {
    /// The anchor's offset: where the batches after the snapshot start.
    pub offset: i64,
    /// The log start the group decided (0: none).
    pub log_start: i64,
}

/// The data of a partition's snapshot (see the module doc).
pub fn encode_data(data: SnapshotData) -> Bytes {
    let mut out = Vec::with_capacity(DATA_BYTES);
    out.push(VERSION);
    out.extend_from_slice(&data.offset.to_le_bytes());
    out.extend_from_slice(&data.log_start.to_le_bytes());
    Bytes::from(out)
}

/// What a snapshot's data says; `None` if it is not data this version or the one before
/// wrote.
pub fn decode_data(data: &[u8]) -> Option<SnapshotData> {
    let read = |at: usize| Some(i64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?));
    let decoded = match (data.first(), data.len()) {
        (Some(&VERSION), DATA_BYTES) => SnapshotData {
            offset: read(OFFSET_AT)?,
            log_start: read(LOG_START_AT)?,
        },
        (Some(&VERSION_WITHOUT_START), LOG_START_AT) => SnapshotData {
            offset: read(OFFSET_AT)?,
            log_start: 0,
        },
        _ => return None,
    };
    (decoded.offset >= 0 && decoded.log_start >= 0).then_some(decoded)
}

/// What a peer answered a fill with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Whole batches from the offset asked for on (a cut last batch is allowed; the
    /// replica drops it), and the peer's log start (which may lie inside the first batch:
    /// the group moved it there, `Replica::propose_log_start`).
    Batches { batches: Bytes, log_start: i64 },
    /// The peer's first batch starts at this offset, past the one asked for: its
    /// retention, or the group's decision, deleted the batches before it.
    StartsAt(i64),
}

/// Where a replica fetches the batches a snapshot's fill needs.
pub trait FillSource {
    /// Whole batches of `partition`'s committed log from the one at `offset` on, ending at
    /// or before `offset_end`, or where a peer's log starts if that is past `offset`.
    /// Waits and retries (other peers, with a backoff) until some peer answers with at
    /// least one batch or its log's start; `None` only when the node is stopping or the
    /// partition's group was closed (its topic deleted).
    fn fetch(
        &self,
        partition: &PartitionId,
        offset: i64,
        offset_end: i64,
    ) -> LocalBoxFuture<'static, Option<Fetched>>;
}

/// The whole batches at the front of `bytes`: the first at `offset`, each next where the
/// previous ended, none past `offset_end`. Empty if the first is cut; an error naming what
/// is wrong if a batch is misplaced (a peer serving another log is a bug or damage).
pub fn whole_batches(bytes: &Bytes, offset: i64, offset_end: i64) -> Result<Bytes, String> {
    let mut at = 0;
    let mut next = offset;
    while next < offset_end {
        let Ok(header) = FrameHeader::parse(&bytes[at..]) else {
            break;
        };
        if header.base_offset != next {
            return Err(format!(
                "a fill chunk holds a batch at offset {} where {next} was expected",
                header.base_offset
            ));
        }
        if header.offset_next() > offset_end {
            return Err(format!(
                "a fill chunk's batch at offset {next} ends at {}, past the snapshot's {offset_end}",
                header.offset_next()
            ));
        }
        if bytes.len() - at < header.size_bytes {
            break;
        }
        at += header.size_bytes;
        next = header.offset_next();
    }
    Ok(bytes.slice(..at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_engine::batch::BatchBuilder;

    fn batch_at(base_offset: i64, count: usize) -> Bytes {
        let mut builder = BatchBuilder::new().base_offset(base_offset);
        for i in 0..count {
            builder.push(i as i64, None, Some(b"value"), &[]).unwrap();
        }
        Bytes::from(builder.build())
    }

    #[test]
    fn snapshot_data_reads_back_and_refuses_what_it_did_not_write() {
        let data = |offset, log_start| SnapshotData { offset, log_start };
        for sent in [data(0, 0), data(123_456, 100_000), data(77, 77)] {
            assert_eq!(decode_data(&encode_data(sent)), Some(sent));
        }
        let encoded = encode_data(data(77, 30));
        for cut in 0..encoded.len() {
            let decoded = decode_data(&encoded[..cut]);
            assert!(decoded.is_none(), "cut at {cut}: {decoded:?}");
        }
        let mut longer = encoded.to_vec();
        longer.push(0);
        assert_eq!(decode_data(&longer), None);
        let mut other_version = encoded.to_vec();
        other_version[VERSION_AT] = 3;
        assert_eq!(decode_data(&other_version), None);
        assert_eq!(decode_data(&encode_data(data(-1, 0))), None);
        assert_eq!(decode_data(&encode_data(data(5, -1))), None);
        // The version before: the anchor's offset alone.
        let mut first = vec![VERSION_WITHOUT_START];
        first.extend_from_slice(&77_i64.to_le_bytes());
        assert_eq!(decode_data(&first), Some(data(77, 0)));
    }

    #[test]
    fn a_chunk_is_taken_up_to_its_last_whole_batch_within_the_snapshot() {
        let batches: Vec<Bytes> = [(10, 3), (13, 2), (15, 5)]
            .into_iter()
            .map(|(base, count)| batch_at(base, count))
            .collect();
        let all = Bytes::from(batches.concat());
        let first_two = batches[0].len() + batches[1].len();
        assert_eq!(whole_batches(&all, 10, 20).unwrap(), all);
        // The last batch cut short: dropped.
        let cut = all.slice(..all.len() - 1);
        assert_eq!(whole_batches(&cut, 10, 20).unwrap().len(), first_two);
        // Nothing whole at all.
        assert!(whole_batches(&all.slice(..5), 10, 20).unwrap().is_empty());
        // Up to the snapshot's end only: exactly at a batch boundary is fine.
        assert_eq!(whole_batches(&all, 10, 15).unwrap().len(), first_two);
        // A batch straddling the snapshot's end, or one at the wrong offset, is refused.
        assert!(whole_batches(&all, 10, 14).is_err());
        assert!(whole_batches(&all, 11, 20).is_err());
    }
}
