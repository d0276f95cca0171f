//! Producer-state snapshots: a partition's idempotent-producer state as of one offset, so
//! opening a log replays only the batch headers after the latest snapshot instead of the
//! whole log (recovery time independent of the log's length).
//!
//! A snapshot is written when a segment rolls (at the new segment's base offset) and at a
//! clean close (at the log end), named `{offset:020}.snapshot` as Kafka names them. It is
//! written to `{offset:020}.snapshot.tmp`, fdatasynced, renamed, and the directory fsynced,
//! so a snapshot file is whole or absent. It is never trusted: a snapshot whose offset is
//! past the recovered log end (a crash lost the tail it covered), below the first segment
//! (retention removed what it summarises), or that fails any check below is removed with a
//! warning and the state is rebuilt from the segments instead.
//!
//! Layout (little-endian, our own format). Header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `RLPS` |
//! | 4 | 2 | format version (1) |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 8 | offset: the state covers every batch below it (the name's number) |
//! | 16 | 4 | producer count `n`, at most `PRODUCERS_PER_PARTITION_MAX` |
//! | 20 | n × 140 | producer entries, by increasing producer id |
//! | 20 + n × 140 | 4 | CRC-32C of every byte before it |
//!
//! Producer entry (140 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | producer id, ≥ 0 |
//! | 8 | 2 | producer epoch, ≥ 0 |
//! | 10 | 1 | kept batches `b`, 1..=`BATCHES_PER_PRODUCER_MAX` (5) |
//! | 11 | 1 | reserved, 0 |
//! | 12 | 8 | last timestamp (ms) |
//! | 20 | 5 × 24 | batch slots, oldest first; the first `b` used, the rest zero |
//!
//! Batch slot (24 bytes): first sequence (i32 @0), last sequence (i32 @4), first offset
//! (i64 @8), last offset (i64 @16); offsets increase from slot to slot and lie below the
//! snapshot's offset.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::producers::{KeptBatch, ProducerEntry, Producers};
use super::{LogError, Shared};
use crate::limits::{BATCHES_PER_PRODUCER_MAX, PRODUCERS_PER_PARTITION_MAX};
use crate::storage::{OpenFlags, Storage, StorageFile};

const MAGIC: &[u8; 4] = b"RLPS";
const VERSION: u16 = 1;
const VERSION_AT: usize = 4;
const OFFSET_AT: usize = 8;
const COUNT_AT: usize = 16;
const HEADER_SIZE_BYTES: usize = 20;
const CRC_SIZE_BYTES: usize = 4;

const ENTRY_EPOCH_AT: usize = 8;
const ENTRY_BATCH_COUNT_AT: usize = 10;
const ENTRY_TIMESTAMP_AT: usize = 12;
const ENTRY_BATCHES_AT: usize = 20;
const BATCH_SLOT_SIZE_BYTES: usize = 24;
const ENTRY_SIZE_BYTES: usize = ENTRY_BATCHES_AT + BATCHES_PER_PRODUCER_MAX * BATCH_SLOT_SIZE_BYTES;

const _: () = assert!(COUNT_AT + 4 == HEADER_SIZE_BYTES);
const _: () = assert!(ENTRY_TIMESTAMP_AT + 8 == ENTRY_BATCHES_AT);
const _: () = assert!(ENTRY_SIZE_BYTES == 140);
const _: () = assert!(BATCHES_PER_PRODUCER_MAX <= u8::MAX as usize);

/// The largest snapshot file: every producer the limit allows.
const FILE_SIZE_BYTES_MAX: usize =
    HEADER_SIZE_BYTES + PRODUCERS_PER_PARTITION_MAX * ENTRY_SIZE_BYTES + CRC_SIZE_BYTES;

const EXTENSION: &str = ".snapshot";
const TEMP_EXTENSION: &str = ".snapshot.tmp";

/// What is wrong with a snapshot file (for the warning that it is ignored).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SnapshotError {
    #[error("{len} bytes is not a snapshot's size")]
    Size { len: usize },
    #[error("bad magic or format version")]
    Format,
    #[error("CRC-32C mismatch")]
    Crc,
    #[error("offset {found} differs from the file name's {named}")]
    Offset { found: i64, named: i64 },
    #[error("producer entry {index} is inconsistent")]
    Entry { index: usize },
}

/// `{dir}/{offset:020}.snapshot`.
pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{EXTENSION}"))
}

fn temp_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{TEMP_EXTENSION}"))
}

/// `00000000000000000042.snapshot` → 42.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(EXTENSION)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The snapshot file's bytes for `producers` as of `offset`.
pub(crate) fn encode(offset: i64, producers: &Producers) -> Vec<u8> {
    let mut ids: Vec<i64> = producers.entries.keys().copied().collect();
    ids.sort_unstable();
    assert!(
        ids.len() <= PRODUCERS_PER_PARTITION_MAX,
        "producer limit kept on insert"
    );
    let size = HEADER_SIZE_BYTES + ids.len() * ENTRY_SIZE_BYTES + CRC_SIZE_BYTES;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        let entry = &producers.entries[&id];
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&entry.epoch.to_le_bytes());
        out.push(entry.batches.len() as u8);
        out.push(0);
        out.extend_from_slice(&entry.last_timestamp_ms.to_le_bytes());
        for slot in 0..BATCHES_PER_PRODUCER_MAX {
            let kept = entry.batches.get(slot).copied().unwrap_or(KeptBatch {
                sequence_first: 0,
                sequence_last: 0,
                offset_first: 0,
                offset_last: 0,
            });
            out.extend_from_slice(&kept.sequence_first.to_le_bytes());
            out.extend_from_slice(&kept.sequence_last.to_le_bytes());
            out.extend_from_slice(&kept.offset_first.to_le_bytes());
            out.extend_from_slice(&kept.offset_last.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len(), size);
    out
}

fn i16_at(bytes: &[u8], at: usize) -> i16 {
    i16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn i32_at(bytes: &[u8], at: usize) -> i32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    i32::from_le_bytes(field)
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    i64::from_le_bytes(field)
}

/// Checks and decodes a snapshot named `named`; see the module doc for what is checked.
pub(crate) fn decode(bytes: &[u8], named: i64) -> Result<Producers, SnapshotError> {
    let len = bytes.len();
    if !(HEADER_SIZE_BYTES + CRC_SIZE_BYTES..=FILE_SIZE_BYTES_MAX).contains(&len) {
        return Err(SnapshotError::Size { len });
    }
    let (body, crc) = bytes.split_at(len - CRC_SIZE_BYTES);
    if u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) != crc32c::crc32c(body) {
        return Err(SnapshotError::Crc);
    }
    let version = u16::from_le_bytes([body[VERSION_AT], body[VERSION_AT + 1]]);
    if &body[..4] != MAGIC || version != VERSION {
        return Err(SnapshotError::Format);
    }
    let offset = i64_at(body, OFFSET_AT);
    if offset != named {
        return Err(SnapshotError::Offset {
            found: offset,
            named,
        });
    }
    let count = usize::try_from(u32::from_le_bytes([body[16], body[17], body[18], body[19]]))
        .unwrap_or(usize::MAX);
    let expected = count
        .checked_mul(ENTRY_SIZE_BYTES)
        .and_then(|entries| entries.checked_add(HEADER_SIZE_BYTES));
    if count > PRODUCERS_PER_PARTITION_MAX || expected != Some(body.len()) {
        return Err(SnapshotError::Size { len });
    }
    let mut producers = Producers::default();
    for (index, entry) in body[HEADER_SIZE_BYTES..]
        .chunks_exact(ENTRY_SIZE_BYTES)
        .enumerate()
    {
        let (id, decoded) = decode_entry(entry, offset).ok_or(SnapshotError::Entry { index })?;
        if producers.entries.insert(id, decoded).is_some() {
            return Err(SnapshotError::Entry { index });
        }
    }
    Ok(producers)
}

fn decode_entry(entry: &[u8], snapshot_offset: i64) -> Option<(i64, ProducerEntry)> {
    let id = i64_at(entry, 0);
    let epoch = i16_at(entry, ENTRY_EPOCH_AT);
    let batch_count = usize::from(entry[ENTRY_BATCH_COUNT_AT]);
    if id < 0 || epoch < 0 || !(1..=BATCHES_PER_PRODUCER_MAX).contains(&batch_count) {
        return None;
    }
    let mut batches = VecDeque::with_capacity(BATCHES_PER_PRODUCER_MAX);
    let mut offset_floor = i64::MIN;
    for slot in entry[ENTRY_BATCHES_AT..]
        .chunks_exact(BATCH_SLOT_SIZE_BYTES)
        .take(batch_count)
    {
        let kept = KeptBatch {
            sequence_first: i32_at(slot, 0),
            sequence_last: i32_at(slot, 4),
            offset_first: i64_at(slot, 8),
            offset_last: i64_at(slot, 16),
        };
        let sane = kept.sequence_first >= 0
            && kept.sequence_last >= 0
            && kept.offset_first > offset_floor
            && kept.offset_first <= kept.offset_last
            && kept.offset_last < snapshot_offset;
        if !sane {
            return None;
        }
        offset_floor = kept.offset_last;
        batches.push_back(kept);
    }
    let last_timestamp_ms = i64_at(entry, ENTRY_TIMESTAMP_AT);
    Some((
        id,
        ProducerEntry {
            epoch,
            batches,
            last_timestamp_ms,
        },
    ))
}

/// Writes the partition's producer state as the snapshot at `offset` (the state must
/// cover exactly the batches below it), durably; see the module doc.
pub(crate) async fn write<S: Storage>(shared: &Shared<S>, offset: i64) -> Result<(), LogError> {
    let bytes = encode(offset, &shared.state.borrow().producers);
    let storage = &shared.storage;
    let temp = temp_path(&shared.dir, offset);
    let io = |operation| move |error| shared.error_io(operation, error);
    let file = storage
        .open(&temp, OpenFlags::WRITE)
        .await
        .map_err(io("create producer snapshot"))?;
    file.set_len(0)
        .await
        .map_err(io("truncate producer snapshot"))?;
    let (written, _) = file.write_at(vec![bytes], 0, true).await;
    written.map_err(io("write producer snapshot"))?;
    storage
        .rename(&temp, &snapshot_path(&shared.dir, offset))
        .await
        .map_err(io("rename producer snapshot"))?;
    storage
        .sync_dir(&shared.dir)
        .await
        .map_err(io("fsync directory"))
}

/// Removes every snapshot whose offset is outside `keep` (and any temporary file left by
/// an interrupted write).
pub(crate) async fn remove_outside<S: Storage>(
    shared: &Shared<S>,
    keep: std::ops::RangeInclusive<i64>,
) -> Result<(), LogError> {
    let names = shared
        .storage
        .list_dir(&shared.dir)
        .map_err(|e| shared.error_io("list partition directory", e))?;
    let mut removed = false;
    for name in names {
        let stale = match parse_snapshot_name(&name) {
            Some(offset) => !keep.contains(&offset),
            None => name.ends_with(TEMP_EXTENSION),
        };
        if stale {
            remove(shared, &shared.dir.join(&name)).await?;
            removed = true;
        }
    }
    if removed {
        shared
            .storage
            .sync_dir(&shared.dir)
            .await
            .map_err(|e| shared.error_io("fsync directory", e))?;
    }
    Ok(())
}

async fn remove<S: Storage>(shared: &Shared<S>, path: &Path) -> Result<(), LogError> {
    match shared.storage.remove_file(path).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(shared.error_io("remove producer snapshot", error))
        }
        _ => Ok(()),
    }
}

/// The newest valid snapshot in `first_base..=log_end`, with its offset, after removing
/// those outside the range; damaged ones are removed with a warning.
pub(crate) async fn load_latest<S: Storage>(
    shared: &Shared<S>,
    first_base: i64,
    log_end: i64,
) -> Result<Option<(Producers, i64)>, LogError> {
    remove_outside(shared, first_base..=log_end).await?;
    let names = shared
        .storage
        .list_dir(&shared.dir)
        .map_err(|e| shared.error_io("list partition directory", e))?;
    let mut offsets: Vec<i64> = names
        .iter()
        .filter_map(|n| parse_snapshot_name(n))
        .collect();
    offsets.sort_unstable();
    while let Some(offset) = offsets.pop() {
        let path = snapshot_path(&shared.dir, offset);
        match read(shared, &path).await.and_then(|bytes| {
            decode(&bytes, offset)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }) {
            Ok(producers) => return Ok(Some((producers, offset))),
            Err(error) => {
                tracing::warn!(
                    partition = %shared.id,
                    path = %path.display(),
                    %error,
                    "producer snapshot ignored; rebuilding the state from the log"
                );
                remove(shared, &path).await?;
            }
        }
    }
    Ok(None)
}

async fn read<S: Storage>(shared: &Shared<S>, path: &Path) -> std::io::Result<Vec<u8>> {
    let file = shared.storage.open(path, OpenFlags::READ).await?;
    let size = usize::try_from(file.size().await?).unwrap_or(usize::MAX);
    if size > FILE_SIZE_BYTES_MAX {
        let error = SnapshotError::Size { len: size };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
    }
    file.read_at(0, size).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::producers::ProducerBatch;

    fn sample() -> Producers {
        let mut producers = Producers::default();
        for id in [3i64, 1, 2] {
            for n in 0..(id as i32 + 4) {
                let batch = ProducerBatch {
                    producer_id: id,
                    epoch: 1,
                    sequence_first: n * 2,
                    sequence_last: n * 2 + 1,
                    offset_delta: 1,
                };
                producers.record(&batch, id * 100 + i64::from(n) * 2, 1_700_000_000_000);
            }
        }
        producers
    }

    #[test]
    fn snapshot_round_trips_and_any_damage_is_detected() {
        let producers = sample();
        let bytes = encode(1000, &producers);
        assert_eq!(
            bytes.len(),
            HEADER_SIZE_BYTES + 3 * ENTRY_SIZE_BYTES + CRC_SIZE_BYTES
        );
        assert_eq!(decode(&bytes, 1000).unwrap(), producers);
        assert_eq!(
            decode(&bytes, 999),
            Err(SnapshotError::Offset {
                found: 1000,
                named: 999
            })
        );
        for at in (0..bytes.len()).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(
                decode(&damaged, 1000),
                Err(SnapshotError::Crc),
                "flip at byte {at}"
            );
        }
        let cut = bytes.len() - 1;
        let short = [
            (0, SnapshotError::Size { len: 0 }),
            (10, SnapshotError::Size { len: 10 }),
            (cut, SnapshotError::Crc),
        ];
        for (len, error) in short {
            assert_eq!(decode(&bytes[..len], 1000), Err(error), "{len} bytes");
        }
    }

    #[test]
    fn entries_past_the_snapshot_offset_are_refused_even_with_a_good_crc() {
        // Producer 3 (the third entry) kept batches up to offset 313, above the snapshot's
        // offset 300: well-formed bytes, inconsistent content.
        let bytes = encode(300, &sample());
        assert_eq!(decode(&bytes, 300), Err(SnapshotError::Entry { index: 2 }));
    }

    #[test]
    fn snapshot_names_round_trip() {
        let path = snapshot_path(Path::new("/d"), 42);
        assert_eq!(path, Path::new("/d/00000000000000000042.snapshot"));
        assert_eq!(
            parse_snapshot_name("00000000000000000042.snapshot"),
            Some(42)
        );
        assert_eq!(
            parse_snapshot_name("00000000000000000042.snapshot.tmp"),
            None
        );
        assert_eq!(parse_snapshot_name("42.snapshot"), None);
    }
}
