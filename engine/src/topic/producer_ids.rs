//! The data directory's producer-id allocator: ids for InitProducerId that are never handed
//! out twice, across restarts and crashes.
//!
//! Invariant: every id handed out is below the reservation end recorded durably in
//! `{data_dir}/producer-ids`. The allocator reserves [`PRODUCER_ID_BLOCK_SIZE`] ids at a
//! time: before it hands out the first id of a block, the file is replaced atomically and
//! fsynced (`atomic_file::replace`) with the block's end. On open, it starts at the recorded
//! end, so ids of a block a previous run had reserved but not used are skipped, never
//! reused. The file is written once per block, not once per producer.
//!
//! A damaged file stops the start ([`TopicError::CorruptMetadata`]): which ids were handed
//! out is then unknown, and guessing could give two producers one id. If a replace fails
//! after its rename, what the file holds is unknown too, and the allocator refuses further
//! ids until the process restarts and reads it back.
//!
//! `producer-ids` layout (little-endian, our own format):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `RLPI` |
//! | 4 | 2 | format version (1) |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 8 | reservation end: every id handed out so far is below it (≥ 0) |
//! | 16 | 4 | CRC-32C of bytes 0..16 |

use std::path::{Path, PathBuf};

use super::atomic_file::{self, tmp_path};
use super::{MetadataError, TopicError};
use crate::limits::PRODUCER_ID_BLOCK_SIZE;

/// The allocator's file in the data directory.
pub const PRODUCER_IDS_FILE_NAME: &str = "producer-ids";

const MAGIC: &[u8; 4] = b"RLPI";
const VERSION: u16 = 1;
const VERSION_AT: usize = 4;
const END_AT: usize = 8;
const CRC_AT: usize = 16;
const SIZE_BYTES: usize = 20;
const _: () = assert!(END_AT + 8 == CRC_AT && CRC_AT + 4 == SIZE_BYTES);

/// Hands out producer ids; see the module doc. Control path: one per engine, behind a
/// mutex, synchronous file I/O once per block.
#[derive(Debug)]
pub struct ProducerIdAllocator {
    path: PathBuf,
    id_next: i64,
    reserved_end: i64,
    poisoned: bool,
}

impl ProducerIdAllocator {
    /// Reads the reservation of `data_dir` (which the caller has locked); no file means no
    /// id was ever handed out.
    pub fn open(data_dir: &Path) -> Result<ProducerIdAllocator, TopicError> {
        let path = data_dir.join(PRODUCER_IDS_FILE_NAME);
        atomic_file::remove_if_exists(&tmp_path(&path))?;
        let reserved_end = match atomic_file::read_bounded(&path, SIZE_BYTES as u64)? {
            None => 0,
            Some(bytes) => decode(&bytes)
                .ok_or_else(|| TopicError::corrupt(&path, MetadataError::ProducerIds))?,
        };
        Ok(ProducerIdAllocator {
            path,
            id_next: reserved_end,
            reserved_end,
            poisoned: false,
        })
    }

    /// A producer id no one has had, reserving the next block first if needed.
    pub fn allocate(&mut self) -> Result<i64, TopicError> {
        if self.poisoned {
            return Err(TopicError::Poisoned {
                path: self.path.clone(),
            });
        }
        if self.id_next == self.reserved_end {
            let end = self.reserved_end.saturating_add(PRODUCER_ID_BLOCK_SIZE);
            if end == self.reserved_end {
                return Err(TopicError::corrupt(&self.path, MetadataError::ProducerIds));
            }
            if let Err(failure) = atomic_file::replace(&self.path, &encode(end)) {
                self.poisoned = failure.renamed;
                return Err(failure.error);
            }
            self.reserved_end = end;
        }
        let id = self.id_next;
        self.id_next += 1;
        debug_assert!(self.id_next <= self.reserved_end);
        Ok(id)
    }
}

fn encode(reserved_end: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&reserved_end.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<i64> {
    if bytes.len() != SIZE_BYTES || &bytes[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[CRC_AT..].try_into().ok()?);
    let version = u16::from_le_bytes(bytes[VERSION_AT..VERSION_AT + 2].try_into().ok()?);
    if crc != crc32c::crc32c(&bytes[..CRC_AT]) || version != VERSION {
        return None;
    }
    let end = i64::from_le_bytes(bytes[END_AT..CRC_AT].try_into().ok()?);
    (end >= 0).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_reopens_and_the_file_is_written_once_per_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PRODUCER_IDS_FILE_NAME);
        let mut allocator = ProducerIdAllocator::open(dir.path()).unwrap();
        assert!(!path.exists(), "nothing reserved before the first id");
        let first: Vec<i64> = (0..3).map(|_| allocator.allocate().unwrap()).collect();
        assert_eq!(first, [0, 1, 2]);
        assert_eq!(
            decode(&std::fs::read(&path).unwrap()),
            Some(PRODUCER_ID_BLOCK_SIZE)
        );
        drop(allocator);
        // A restart skips the rest of the block: no id of the last run comes back.
        let mut allocator = ProducerIdAllocator::open(dir.path()).unwrap();
        let block = PRODUCER_ID_BLOCK_SIZE;
        let next: Vec<i64> = (0..=block).map(|_| allocator.allocate().unwrap()).collect();
        assert_eq!(next[0], block);
        assert_eq!(next[block as usize], 2 * block);
        assert_eq!(decode(&std::fs::read(&path).unwrap()), Some(3 * block));
    }

    #[test]
    fn a_damaged_reservation_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PRODUCER_IDS_FILE_NAME);
        let bytes = encode(5000);
        assert_eq!(decode(&bytes), Some(5000));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x04;
            std::fs::write(&path, &damaged).unwrap();
            let error = ProducerIdAllocator::open(dir.path()).unwrap_err();
            assert!(
                matches!(error, TopicError::CorruptMetadata { .. }),
                "flip at {at}: {error}"
            );
        }
        let refused = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let error = ProducerIdAllocator::open(dir.path()).unwrap_err();
            let TopicError::CorruptMetadata {
                path: named,
                source,
            } = &error
            else {
                panic!("{error:?}");
            };
            assert_eq!(named, &path);
            assert!(matches!(**source, MetadataError::ProducerIds), "{source:?}");
        };
        refused(&bytes[..SIZE_BYTES - 1]);
        refused(&encode(-1));
    }
}
