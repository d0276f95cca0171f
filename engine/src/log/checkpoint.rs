//! The recovery checkpoint of a partition, and the index files of its segments.
//!
//! The checkpoint says how much of the active segment is known to be valid and durable, so
//! recovery scans only what came after it; it also holds the log start offset (which moves
//! with retention and record deletion). It is replaced atomically: written to a temporary
//! file, fdatasynced, renamed over the old one, and the directory fsynced.
//!
//! `recovery-checkpoint` layout (little-endian, our own format):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `RLCP` |
//! | 4 | 2 | format version (1) |
//! | 6 | 2 | flags: bit 0 = clean shutdown |
//! | 8 | 8 | base offset of the active segment |
//! | 16 | 8 | valid, durable bytes at the front of the active segment |
//! | 24 | 8 | offset after the last batch in those bytes |
//! | 32 | 8 | log start offset |
//! | 40 | 4 | CRC-32C of bytes 0..40 |

use std::path::{Path, PathBuf};

use super::segment::segment_path;
use super::{LogError, Shared};
use crate::index::{IndexError, IndexKind, SegmentIndex};
use crate::storage::{OpenFlags, Storage, StorageFile};

const FILE_NAME: &str = "recovery-checkpoint";
const FILE_NAME_TEMP: &str = "recovery-checkpoint.tmp";
const MAGIC: &[u8; 4] = b"RLCP";
const VERSION: u16 = 1;
const FLAGS_AT: usize = 6;
const ACTIVE_BASE_AT: usize = 8;
const POSITION_AT: usize = 16;
const OFFSET_NEXT_AT: usize = 24;
const LOG_START_AT: usize = 32;
const CRC_AT: usize = 40;
const SIZE_BYTES: usize = 44;
const _: () = assert!(CRC_AT + 4 == SIZE_BYTES);
const FLAG_CLEAN: u16 = 1;

/// What the checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) active_base_offset: i64,
    pub(crate) position: u64,
    pub(crate) offset_next: i64,
    pub(crate) log_start: i64,
    pub(crate) clean: bool,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIZE_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(if self.clean { FLAG_CLEAN } else { 0 }).to_le_bytes());
        out.extend_from_slice(&self.active_base_offset.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.offset_next.to_le_bytes());
        out.extend_from_slice(&self.log_start.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != SIZE_BYTES || &bytes[..4] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| bytes[at..at + 8].try_into().ok().map(u64::from_le_bytes);
        let i64_at = |at: usize| bytes[at..at + 8].try_into().ok().map(i64::from_le_bytes);
        let crc = u32::from_le_bytes(bytes[CRC_AT..].try_into().ok()?);
        let version = u16::from_le_bytes(bytes[4..6].try_into().ok()?);
        if crc != crc32c::crc32c(&bytes[..CRC_AT]) || version != VERSION {
            return None;
        }
        let flags = u16::from_le_bytes(bytes[FLAGS_AT..FLAGS_AT + 2].try_into().ok()?);
        Some(Checkpoint {
            active_base_offset: i64_at(ACTIVE_BASE_AT)?,
            position: u64_at(POSITION_AT)?,
            offset_next: i64_at(OFFSET_NEXT_AT)?,
            log_start: i64_at(LOG_START_AT)?,
            clean: flags & FLAG_CLEAN != 0,
        })
    }
}

/// Reads the checkpoint; `None` if it is missing or damaged (recovery then scans the whole
/// active segment).
pub(crate) async fn read<S: Storage>(storage: &S, dir: &Path) -> Option<Checkpoint> {
    let file = storage
        .open(&dir.join(FILE_NAME), OpenFlags::READ)
        .await
        .ok()?;
    let bytes = file.read_at(0, SIZE_BYTES + 1).await.ok()?;
    let checkpoint = Checkpoint::decode(&bytes);
    if checkpoint.is_none() {
        tracing::warn!(
            path = %dir.join(FILE_NAME).display(),
            len = bytes.len(),
            "recovery checkpoint damaged (size, magic, version or CRC); ignoring it and \
             scanning the whole active segment"
        );
    }
    checkpoint
}

/// The durable prefix of the active segment: bytes and the offset after them.
fn durable_cut<S: Storage>(shared: &Shared<S>) -> Option<(i64, u64, i64)> {
    let state = shared.state.borrow();
    let active = state.segments.values().next_back()?;
    let cut = if state.durable_end >= active.offset_next {
        (active.size_bytes, active.offset_next)
    } else {
        match state.durable_position {
            Some(position) if state.durable_end >= active.base_offset => {
                (position, state.durable_end)
            }
            _ => (0, active.base_offset),
        }
    };
    Some((active.base_offset, cut.0, cut.1))
}

/// Writes the active segment's indexes up to its durable prefix, then the checkpoint for
/// that prefix (`clean` after a full close), so recovery scans only what follows it.
pub(crate) async fn write<S: Storage>(shared: &Shared<S>, clean: bool) -> Result<(), LogError> {
    let Some((active_base_offset, position, offset_next)) = durable_cut(shared) else {
        return Ok(());
    };
    write_index_files(shared, Some((offset_next, position))).await?;
    let (log_start, complete) = {
        let state = shared.state.borrow();
        (state.log_start, state.log_end == offset_next)
    };
    let checkpoint = Checkpoint {
        active_base_offset,
        position,
        offset_next,
        log_start,
        clean: clean && complete,
    };
    let storage = &shared.storage;
    let temp = shared.dir.join(FILE_NAME_TEMP);
    let io = |operation| move |error| shared.error_io(operation, error);
    let file = storage
        .open(&temp, OpenFlags::WRITE)
        .await
        .map_err(io("create checkpoint"))?;
    file.set_len(0).await.map_err(io("truncate checkpoint"))?;
    let (written, _) = file.write_at(vec![checkpoint.encode()], 0, true).await;
    written.map_err(io("write checkpoint"))?;
    storage
        .rename(&temp, &shared.dir.join(FILE_NAME))
        .await
        .map_err(io("rename checkpoint"))?;
    storage
        .sync_dir(&shared.dir)
        .await
        .map_err(io("fsync directory"))
}

/// Writes the active segment's `.index` and `.timeindex` files and fdatasyncs them; with
/// `cut = (offset, position)`, only the entries below it.
pub(crate) async fn write_index_files<S: Storage>(
    shared: &Shared<S>,
    cut: Option<(i64, u64)>,
) -> Result<(), LogError> {
    let (base_offset, index) = {
        let state = shared.state.borrow();
        let Some(active) = state.segments.values().next_back() else {
            return Ok(());
        };
        let mut index = active.index.clone();
        if let Some((offset, position)) = cut {
            if offset < active.offset_next {
                index.truncate_to(offset, u32::try_from(position).unwrap_or(u32::MAX));
            }
        }
        (active.base_offset, index)
    };
    write_segment_index(&shared.storage, &shared.dir, base_offset, &index)
        .await
        .map_err(|e| shared.error_io("write index files", e))
}

/// Writes segment `base_offset`'s `.index` and `.timeindex` files, fdatasyncs them and
/// the directory.
pub(crate) async fn write_segment_index<S: Storage>(
    storage: &S,
    dir: &Path,
    base_offset: i64,
    index: &SegmentIndex,
) -> std::io::Result<()> {
    let mut offsets = Vec::new();
    index.offset_index().encode(&mut offsets);
    let mut times = Vec::new();
    index.time_index().encode(&mut times);
    for (extension, bytes) in [("index", offsets), ("timeindex", times)] {
        let path = segment_path(dir, base_offset, extension);
        let file = storage.open(&path, OpenFlags::WRITE).await?;
        file.set_len(0).await?;
        let (written, _) = file.write_at(vec![bytes], 0, true).await;
        written?;
    }
    storage.sync_dir(dir).await
}

/// Why a segment's index files cannot be used (recovery then rebuilds them from the log).
#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexFilesUnusable {
    /// A file is missing or could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is damaged (`path` names it), or the two disagree (`path` is the segment's).
    #[error("{}: {source}", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: IndexError,
    },
}

/// Reads the index files of segment `base_offset`, or says why they cannot be used.
pub(crate) async fn read_index_files<S: Storage>(
    storage: &S,
    dir: &Path,
    base_offset: i64,
    index_interval_bytes: u32,
) -> Result<SegmentIndex, IndexFilesUnusable> {
    let mut contents = Vec::with_capacity(2);
    for extension in ["index", "timeindex"] {
        let path = segment_path(dir, base_offset, extension);
        let read = async {
            let file = storage.open(&path, OpenFlags::READ).await?;
            let size = file.size().await?;
            // A file larger than memory is damaged anyway; its size is checked on decode.
            let len = usize::try_from(size).unwrap_or(usize::MAX);
            file.read_at(0, len).await
        };
        match read.await {
            Ok(bytes) => contents.push(bytes),
            Err(source) => return Err(IndexFilesUnusable::Read { path, source }),
        }
    }
    SegmentIndex::decode(
        base_offset,
        index_interval_bytes,
        &contents[0],
        &contents[1],
    )
    .map_err(|source| {
        let extension = source.kind().map_or("log", IndexKind::extension);
        let path = segment_path(dir, base_offset, extension);
        IndexFilesUnusable::Damaged { path, source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_any_damage_is_detected() {
        let checkpoint = Checkpoint {
            active_base_offset: 1000,
            position: 65536,
            offset_next: 1234,
            log_start: 17,
            clean: true,
        };
        let bytes = checkpoint.encode();
        assert_eq!(bytes.len(), SIZE_BYTES);
        assert_eq!(Checkpoint::decode(&bytes), Some(checkpoint));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert_eq!(
                Checkpoint::decode(&damaged),
                None,
                "flip at byte {at} undetected"
            );
        }
        assert_eq!(Checkpoint::decode(&bytes[..SIZE_BYTES - 1]), None);
    }
}
