//! One segment of a partition log: the `.log` file holding batches back to back exactly as
//! they came from producers (offsets stamped), its sparse offset and time indexes, and the
//! staging of the tail block for O_DIRECT writes.
//!
//! Invariants: `size_bytes` is the number of valid bytes at the front of the file (the file
//! may be longer: preallocated zeros); batches are contiguous in offset from `base_offset`
//! to `offset_next`; only the active (last) segment of a log is written. The exception is a
//! closed segment that recovery found damaged although it was sealed: it keeps its whole
//! file and its place in the log (`offset_next` is the next segment's base), and the bytes
//! from the damage on stay in `unverified`, which no fetch sends unchecked.
//!
//! File names: `{base_offset:020}.log`, `.index`, `.timeindex`, as Kafka names them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::scan::Unverified;
use crate::batch;
use crate::index::{SegmentIndex, SEGMENT_BASE_OFFSET_MAX};
use crate::limits::BUF_ALIGN_BYTES;
use crate::rt::AlignedBuf;
use crate::storage::{OpenFlags, Storage, StorageFile};

/// Bytes of the batch header fields the log reads without parsing a whole batch: every
/// field before `recordCount` in the table of `batch/layout.rs` (base offset, batch length,
/// last offset delta, max timestamp, producer id, epoch, base sequence). Every valid batch
/// is longer (61 bytes at least).
pub(crate) const HEADER_PREFIX_BYTES: usize = batch::RECORD_COUNT_AT;
const _: () = assert!(HEADER_PREFIX_BYTES <= batch::HEADER_SIZE_BYTES);

/// The file of segment `base_offset` with `extension` in `dir`.
pub(crate) fn segment_path(dir: &Path, base_offset: i64, extension: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{extension}"))
}

/// Parses `00000000000000000042.log` into 42. A base offset past
/// `SEGMENT_BASE_OFFSET_MAX` is not one ringlog writes (its index could not address the
/// segment), so such a name is not a segment's.
pub(crate) fn parse_segment_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|&base| base <= SEGMENT_BASE_OFFSET_MAX)
}

/// The fields of one batch header the log needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) base_offset: i64,
    pub(crate) size_bytes: u64,
    pub(crate) last_offset: i64,
    pub(crate) max_timestamp: i64,
    /// The idempotent producer's id, -1 for a batch of a producer that is not idempotent.
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) base_sequence: i32,
    /// The batch's `partitionLeaderEpoch`: a replicated log's Raft term; on a single node,
    /// what the client wrote (librdkafka 0, the Java client -1).
    pub(crate) leader_epoch: i32,
}

impl BatchHeader {
    /// Reads the header fields from the first [`HEADER_PREFIX_BYTES`] of a batch that was
    /// validated when it was written (or at recovery).
    pub(crate) fn parse(bytes: &[u8]) -> Option<BatchHeader> {
        let header = bytes.get(..HEADER_PREFIX_BYTES)?;
        let size_bytes = batch::declared_size_bytes(header)? as u64;
        let base_offset = batch::read_i64(header, batch::BASE_OFFSET_AT);
        let last_offset_delta = batch::read_i32(header, batch::LAST_OFFSET_DELTA_AT);
        Some(BatchHeader {
            base_offset,
            size_bytes,
            last_offset: base_offset.saturating_add(i64::from(last_offset_delta)),
            max_timestamp: batch::read_i64(header, batch::MAX_TIMESTAMP_AT),
            producer_id: batch::read_i64(header, batch::PRODUCER_ID_AT),
            producer_epoch: batch::read_i16(header, batch::PRODUCER_EPOCH_AT),
            base_sequence: batch::read_i32(header, batch::BASE_SEQUENCE_AT),
            leader_epoch: batch::read_i32(header, batch::PARTITION_LEADER_EPOCH_AT),
        })
    }
}

pub(crate) struct Segment<S: Storage> {
    pub(crate) base_offset: i64,
    /// The file appends go to (opened O_DIRECT in direct mode).
    pub(crate) writer: S::File,
    /// The file reads and zero-copy sends use (buffered).
    pub(crate) reader: S::File,
    pub(crate) size_bytes: u64,
    /// Bytes the file has (preallocated zeros included).
    pub(crate) allocated_bytes: u64,
    pub(crate) offset_next: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) index: SegmentIndex,
    pub(crate) created: Instant,
    /// Direct mode: the bytes of the last, partial block, rewritten with the next append.
    pub(crate) tail_block: Option<AlignedBuf>,
    pub(crate) direct: bool,
    /// An O_DIRECT descriptor for reading into the batch cache: the writer while the
    /// segment is written with direct I/O, else opened on the first such read.
    pub(crate) direct_reader: Option<S::File>,
    /// Bytes nobody checked since the log was opened (see `log/scan.rs`): a fetch walks
    /// them with the batch validator before it sends them.
    pub(crate) unverified: Unverified,
    /// Positions of damaged batches already logged, so a consumer retrying one does not
    /// flood the log.
    pub(crate) damage_logged: Vec<u64>,
}

impl<S: Storage> Segment<S> {
    /// Opens (creating if missing) the segment `base_offset` in `dir`.
    pub(crate) async fn open(
        storage: &S,
        dir: &Path,
        base_offset: i64,
        direct: bool,
        index_interval_bytes: u32,
    ) -> io::Result<Segment<S>> {
        let path = segment_path(dir, base_offset, "log");
        let writer = storage
            .open(
                &path,
                OpenFlags {
                    direct,
                    ..OpenFlags::WRITE
                },
            )
            .await?;
        let reader = if direct {
            storage.open(&path, OpenFlags::READ).await?
        } else {
            writer.clone()
        };
        let allocated_bytes = writer.size().await?;
        Ok(Segment::new(
            base_offset,
            writer,
            reader,
            allocated_bytes,
            index_interval_bytes,
            direct,
        ))
    }

    /// Opens the closed segment `base_offset` for reading only.
    pub(crate) async fn open_read_only(
        storage: &S,
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u32,
    ) -> io::Result<Segment<S>> {
        let path = segment_path(dir, base_offset, "log");
        let reader = storage.open(&path, OpenFlags::READ).await?;
        let allocated_bytes = reader.size().await?;
        let writer = reader.clone();
        Ok(Segment::new(
            base_offset,
            writer,
            reader,
            allocated_bytes,
            index_interval_bytes,
            false,
        ))
    }

    fn new(
        base_offset: i64,
        writer: S::File,
        reader: S::File,
        allocated_bytes: u64,
        index_interval_bytes: u32,
        direct: bool,
    ) -> Segment<S> {
        Segment {
            base_offset,
            reader,
            size_bytes: 0,
            allocated_bytes,
            offset_next: base_offset,
            max_timestamp: i64::MIN,
            index: SegmentIndex::new(base_offset, index_interval_bytes),
            created: Instant::now(),
            tail_block: direct.then(|| AlignedBuf::with_capacity(BUF_ALIGN_BYTES)),
            direct,
            direct_reader: direct.then(|| writer.clone()),
            writer,
            unverified: Unverified::default(),
            damage_logged: Vec::new(),
        }
    }

    /// Records a batch written at `position`.
    pub(crate) fn on_batch_written(&mut self, header: &BatchHeader, position: u64) {
        self.index.on_batch_appended(
            header.base_offset,
            header.last_offset,
            header.max_timestamp,
            position as u32,
            header.size_bytes as u32,
        );
        self.offset_next = header.last_offset + 1;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
    }

    /// Makes a segment opened read-only (closed) the writable active one again, as after
    /// truncation removed the segments after it.
    pub(crate) async fn reopen_writable(
        &mut self,
        storage: &S,
        dir: &Path,
        direct: bool,
    ) -> io::Result<()> {
        let path = segment_path(dir, self.base_offset, "log");
        self.writer = storage
            .open(
                &path,
                OpenFlags {
                    direct,
                    ..OpenFlags::WRITE
                },
            )
            .await?;
        if !direct {
            self.reader = self.writer.clone();
        }
        self.direct = direct;
        self.tail_block = direct.then(|| AlignedBuf::with_capacity(BUF_ALIGN_BYTES));
        self.direct_reader = direct.then(|| self.writer.clone());
        Ok(())
    }
}

/// Reads batch headers of `reader` from `position` on, up to `end`, calling `visit` with
/// each header and its position until it returns false. Reads in chunks, so a scan over
/// many small batches costs few reads.
pub(crate) async fn scan_headers<F: StorageFile>(
    reader: &F,
    mut position: u64,
    end: u64,
    mut visit: impl FnMut(&BatchHeader, u64) -> bool,
) -> io::Result<()> {
    const CHUNK_BYTES: usize = 64 * 1024;
    while position + HEADER_PREFIX_BYTES as u64 <= end {
        let want = (end - position).min(CHUNK_BYTES as u64) as usize;
        let chunk = reader.read_at(position, want).await?;
        let mut at = 0u64;
        while let Some(header) = chunk.get(at as usize..).and_then(BatchHeader::parse) {
            if header.size_bytes < HEADER_PREFIX_BYTES as u64 {
                return Err(corrupt(position + at));
            }
            if !visit(&header, position + at) {
                return Ok(());
            }
            at += header.size_bytes;
            if at >= chunk.len() as u64 {
                break;
            }
        }
        if at == 0 {
            return Err(corrupt(position));
        }
        position += at;
    }
    Ok(())
}

/// Finds the batch of `reader` holding `offset`, scanning from `start` (an index position
/// at or before it) up to `end`: its header and position, or `None` past the end.
pub(crate) async fn find_batch<F: StorageFile>(
    reader: &F,
    start: u64,
    end: u64,
    offset: i64,
) -> io::Result<Option<(BatchHeader, u64)>> {
    let mut found = None;
    scan_headers(reader, start, end, |header, position| {
        if header.last_offset >= offset {
            found = Some((*header, position));
            return false;
        }
        true
    })
    .await?;
    Ok(found)
}

fn corrupt(position: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed batch header at byte {position} of a segment"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        let path = segment_path(Path::new("/d"), 42, "log");
        assert_eq!(path, Path::new("/d/00000000000000000042.log"));
        assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.index"), None);
        let last = format!("{SEGMENT_BASE_OFFSET_MAX:020}.log");
        assert_eq!(parse_segment_name(&last), Some(SEGMENT_BASE_OFFSET_MAX));
        let past = format!("{:020}.log", SEGMENT_BASE_OFFSET_MAX + 1);
        assert_eq!(parse_segment_name(&past), None);
    }

    #[test]
    fn header_fields_come_from_their_offsets() {
        let mut builder = crate::batch::BatchBuilder::new()
            .base_offset(100)
            .max_timestamp(77)
            .producer(9, 2, 40);
        builder.push(0, None, Some(b"a"), &[]).unwrap();
        builder.push(0, None, Some(b"b"), &[]).unwrap();
        let bytes = builder.build();
        let header = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(header.base_offset, 100);
        assert_eq!(header.last_offset, 101);
        assert_eq!(header.size_bytes, bytes.len() as u64);
        assert_eq!(header.max_timestamp, 77);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (9, 2, 40)
        );
        assert_eq!(BatchHeader::parse(&bytes[..HEADER_PREFIX_BYTES - 1]), None);
    }
}
